/* http-gateway/idem.c: see idem.h. */
#include "http-gateway/idem.h"

#include "core/alloc.h"
#include "http-gateway/route.h"

#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool token_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != ',';
}

int idem_key_parse(const char *header, char out[IDEM_KEY_BUF])
{
    if (!header)
        return -1;
    const char *s = header;
    while (*s == ' ' || *s == '\t')
        s++;
    size_t len = strlen(s);
    while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    size_t n = 0;
    if (len >= 1 && s[0] == '"') {
        /* sf-string: DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE */
        size_t i = 1;
        for (; i < len && s[i] != '"'; i++) {
            unsigned char c = (unsigned char)s[i];
            if (c == '\\') {
                if (i + 1 >= len || (s[i + 1] != '"' && s[i + 1] != '\\'))
                    return -1;
                c = (unsigned char)s[++i];
            } else if (c < 0x20 || c > 0x7e) {
                return -1;
            }
            if (n == IDEM_KEY_MAX)
                return -1;
            out[n++] = (char)c;
        }
        if (i != len - 1) /* no closing quote, or something after it */
            return -1;
    } else {
        for (size_t i = 0; i < len; i++) {
            if (!token_char((unsigned char)s[i]) || n == IDEM_KEY_MAX)
                return -1;
            out[n++] = s[i];
        }
    }
    if (n == 0)
        return -1;
    out[n] = '\0';
    return 0;
}

static int digest_part(EVP_MD_CTX *ctx, const void *data, size_t len)
{
    char prefix[24];
    int w = snprintf(prefix, sizeof prefix, "%zu:", len);
    if (EVP_DigestUpdate(ctx, prefix, (size_t)w) != 1)
        return -1;
    if (len && EVP_DigestUpdate(ctx, data, len) != 1)
        return -1;
    return 0;
}

int idem_fingerprint(const char *method, const char *path, const char *query, const void *body,
                     size_t len, char out[IDEM_FINGERPRINT_BUF])
{
    static const char hex[] = "0123456789abcdef";
    char *npath = route_norm_path(path ? path : "");
    char *nquery = route_norm_query(query);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int rc = -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        goto out;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        digest_part(ctx, method ? method : "", method ? strlen(method) : 0) != 0 ||
        digest_part(ctx, npath, strlen(npath)) != 0 ||
        digest_part(ctx, nquery, strlen(nquery)) != 0 || digest_part(ctx, body, len) != 0 ||
        EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
        goto out;
    for (unsigned i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[2 * mdlen] = '\0';
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    free(npath);
    free(nquery);
    return rc;
}

char *idem_store_key(const char *tenant, const char *principal, const char *method,
                     const char *route_template, const char *key)
{
    const char *parts[5] = {tenant, principal, method, route_template, key};
    size_t cap = 16;
    for (int i = 0; i < 5; i++)
        cap += (parts[i] ? strlen(parts[i]) : 0) + 24;
    char *buf = xmalloc(cap);
    size_t len = (size_t)snprintf(buf, cap, "idem:v1:");
    for (int i = 0; i < 5; i++) {
        const char *p = parts[i] ? parts[i] : "";
        len += (size_t)snprintf(buf + len, cap - len, "%zu:%s;", strlen(p), p);
    }
    return buf;
}
