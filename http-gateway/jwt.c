/* http-gateway/jwt.c: see jwt.h. */
#include "http-gateway/jwt.h"

#include "core/alloc.h"
#include "core/errlist.h"
#include "core/json.h"
#include "core/log.h"
#include "core/uuid.h"

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PEM text from configuration may carry literal "\n" sequences (env files). */
static unsigned char *pem_text(const char *s, size_t *len)
{
    size_t n = strlen(s);
    unsigned char *out = xmalloc(n + 2);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && s[i + 1] == 'n') {
            out[k++] = '\n';
            i++;
        } else {
            out[k++] = (unsigned char)s[i];
        }
    }
    if (k && out[k - 1] != '\n')
        out[k++] = '\n';
    out[k] = '\0';
    *len = k;
    return out;
}

static void kid_of(const unsigned char *key, size_t len, char out[17])
{
    unsigned char md[32];
    unsigned n = 0;
    EVP_Digest(key, len, md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
}

int jwtk_init(jwtk_t *k, const config_t *cfg, char **errors)
{
    memset(k, 0, sizeof *k);
    errlist_t el = {0};
    k->iss = xstrdup(cfg->jwt_issuer);
    k->aud = xstrdup(cfg->jwt_audience);
    if (cfg->jwt_secret[0]) {
        k->alg = JWT_ALG_HS256;
        k->verify_len = k->sign_len = strlen(cfg->jwt_secret);
        k->verify_key = (unsigned char *)xstrdup(cfg->jwt_secret);
        k->sign_key = (unsigned char *)xstrdup(cfg->jwt_secret);
        if (k->verify_len < 32) {
            if (config_is_dev(cfg))
                log_warn("JWT_SECRET is %zu bytes: accepted only because APP_ENV=development; use 32 or more",
                         k->verify_len);
            else
                errlist_add(&el, "JWT_SECRET: at least 32 bytes are required outside development");
        }
    } else if (cfg->jwt_private_key_pem[0] && cfg->jwt_public_key_pem[0]) {
        k->verify_key = pem_text(cfg->jwt_public_key_pem, &k->verify_len);
        k->sign_key = pem_text(cfg->jwt_private_key_pem, &k->sign_len);
        BIO *bio = BIO_new_mem_buf(k->verify_key, (int)k->verify_len);
        EVP_PKEY *pub = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
        BIO_free(bio);
        bio = BIO_new_mem_buf(k->sign_key, (int)k->sign_len);
        EVP_PKEY *priv = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
        if (!pub)
            errlist_add(&el, "JWT_PUBLIC_KEY_PEM: not a PEM public key");
        if (!priv)
            errlist_add(&el, "JWT_PRIVATE_KEY_PEM: not a PEM private key");
        if (pub && priv && EVP_PKEY_get_base_id(pub) != EVP_PKEY_get_base_id(priv))
            errlist_add(&el, "JWT: the private and public keys are of different types");
        else if (pub && priv && EVP_PKEY_eq(pub, priv) != 1) /* tokens we sign would never verify */
            errlist_add(&el, "JWT: JWT_PRIVATE_KEY_PEM and JWT_PUBLIC_KEY_PEM are not one key pair");
        if (pub) {
            int type = EVP_PKEY_get_base_id(pub);
            if (type == EVP_PKEY_RSA) {
                k->alg = JWT_ALG_RS256;
                if (EVP_PKEY_get_bits(pub) < 2048)
                    errlist_add(&el, "JWT_PUBLIC_KEY_PEM: RSA keys need at least 2048 bits (has %d)",
                            EVP_PKEY_get_bits(pub));
            } else if (type == EVP_PKEY_EC) {
                k->alg = JWT_ALG_ES256;
                char curve[64] = "";
                size_t cl = 0;
                if (!EVP_PKEY_get_utf8_string_param(pub, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof curve, &cl) ||
                    strcmp(curve, "prime256v1") != 0)
                    errlist_add(&el, "JWT_PUBLIC_KEY_PEM: EC keys must be on P-256 (has %s)", curve[0] ? curve : "?");
            } else {
                errlist_add(&el, "JWT_PUBLIC_KEY_PEM: only RSA (RS256) and EC P-256 (ES256) keys are supported");
            }
        }
        EVP_PKEY_free(pub);
        EVP_PKEY_free(priv);
    } else {
        errlist_add(&el, "JWT: set JWT_SECRET, or both JWT_PRIVATE_KEY_PEM and JWT_PUBLIC_KEY_PEM");
    }
    snprintf(k->alg_name, sizeof k->alg_name, "%s", jwt_alg_str(k->alg));
    if (k->verify_key)
        kid_of(k->verify_key, k->verify_len, k->kid);
    *errors = el.s;
    if (el.s) {
        jwtk_free(k);
        return -1;
    }
    return 0;
}

void jwtk_free(jwtk_t *k)
{
    if (k->verify_key)
        OPENSSL_cleanse(k->verify_key, k->verify_len);
    if (k->sign_key)
        OPENSSL_cleanse(k->sign_key, k->sign_len);
    free(k->verify_key);
    free(k->sign_key);
    free(k->iss);
    free(k->aud);
    memset(k, 0, sizeof *k);
}

/* base64url (no padding) to bytes; NULL on bad input. */
static char *b64url_decode(const char *s, size_t n, size_t *out_len)
{
    size_t cap = n + 4;
    char *std = xmalloc(cap + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-')
            c = '+';
        else if (c == '_')
            c = '/';
        else if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            free(std);
            return NULL;
        }
        std[k++] = c;
    }
    if (k % 4 == 1) {
        free(std);
        return NULL;
    }
    while (k % 4)
        std[k++] = '=';
    char *out = xmalloc(k + 1);
    int len = EVP_DecodeBlock((unsigned char *)out, (unsigned char *)std, (int)k);
    free(std);
    if (len < 0) {
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts padding bytes as zeros */
    size_t pad = n % 4 == 2 ? 2 : n % 4 == 3 ? 1 : 0;
    *out_len = (size_t)len - pad;
    out[*out_len] = '\0';
    return out;
}

static json_object *decode_part(const char *s, size_t n)
{
    size_t len = 0;
    char *raw = b64url_decode(s, n, &len);
    if (!raw)
        return NULL;
    json_object *o = NULL;
    const char *why;
    if (json_parse_strict(raw, len, &o, &why) != 0 || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        o = NULL;
    }
    free(raw);
    return o;
}

static bool claim_int(json_object *o, const char *k, int64_t *v, bool *present)
{
    json_object *x;
    *present = json_object_object_get_ex(o, k, &x);
    if (!*present)
        return true;
    if (!json_object_is_type(x, json_type_int))
        return false;
    *v = json_object_get_int64(x);
    return true;
}

static void copy_str(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s ? s : "");
}

int jwtk_verify(const jwtk_t *k, const char *token, int64_t now_s, principal_t *out, const char **why)
{
    memset(out, 0, sizeof *out);
    const char *d1 = strchr(token, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (!d1 || !d2 || strchr(d2 + 1, '.') || strlen(token) > 8192) {
        *why = "malformed token";
        return -1;
    }
    json_object *hdr = decode_part(token, (size_t)(d1 - token));
    json_object *pl = decode_part(d1 + 1, (size_t)(d2 - d1 - 1));
    jwt_t *jwt = NULL;
    int rc = -1;
    if (!hdr || !pl) {
        *why = "malformed token";
        goto out;
    }
    const char *alg = json_get_str(hdr, "alg");
    if (!alg || strcmp(alg, k->alg_name) != 0) {
        *why = "unexpected algorithm";
        goto out;
    }
    const char *kid = json_get_str(hdr, "kid");
    if (!kid || strcmp(kid, k->kid) != 0) {
        *why = "unknown key id";
        goto out;
    }
    if (jwt_decode(&jwt, token, k->verify_key, (int)k->verify_len) != 0 || !jwt) {
        *why = "bad signature";
        goto out;
    }
    if (jwt_get_alg(jwt) != k->alg) {
        *why = "unexpected algorithm";
        goto out;
    }
    int64_t exp = 0, nbf = 0, iat = 0;
    bool has_exp, has_nbf, has_iat;
    if (!claim_int(pl, "exp", &exp, &has_exp) || !has_exp) {
        *why = "exp missing or not an integer";
        goto out;
    }
    if (!claim_int(pl, "nbf", &nbf, &has_nbf) || !claim_int(pl, "iat", &iat, &has_iat)) {
        *why = "nbf or iat not an integer";
        goto out;
    }
    if (exp + JWT_SKEW_S <= now_s) {
        *why = "token expired";
        goto out;
    }
    if ((has_nbf && nbf > now_s + JWT_SKEW_S) || (has_iat && iat > now_s + JWT_SKEW_S)) {
        *why = "token not yet valid";
        goto out;
    }
    const char *iss = json_get_str(pl, "iss");
    if (!iss || strcmp(iss, k->iss) != 0) {
        *why = "wrong issuer";
        goto out;
    }
    json_object *aud;
    bool aud_ok = false;
    if (json_object_object_get_ex(pl, "aud", &aud)) {
        if (json_object_is_type(aud, json_type_string))
            aud_ok = strcmp(json_object_get_string(aud), k->aud) == 0;
        else if (json_object_is_type(aud, json_type_array))
            for (size_t i = 0; i < json_object_array_length(aud); i++) {
                json_object *a = json_object_array_get_idx(aud, i);
                aud_ok |= json_object_is_type(a, json_type_string) && strcmp(json_object_get_string(a), k->aud) == 0;
            }
    }
    if (!aud_ok) {
        *why = "wrong audience";
        goto out;
    }
    const char *use = json_get_str(pl, "token_use");
    if (!use || strcmp(use, "access") != 0) {
        *why = "not an access token";
        goto out;
    }
    const char *sub = json_get_str(pl, "sub");
    if (!sub || !sub[0] || strlen(sub) >= sizeof out->sub) {
        *why = "sub missing";
        goto out;
    }
    copy_str(out->sub, sizeof out->sub, sub);
    /* an optional claim that is there must read whole: a tid or sid read as
     * "" would drop the token's tenant binding or session check */
    static const char *const optional[] = {"tid", "sid", "jti"};
    char *const dst[] = {out->tid, out->sid, out->jti};
    const size_t cap[] = {sizeof out->tid, sizeof out->sid, sizeof out->jti};
    for (int i = 0; i < 3; i++) {
        const char *v = json_get_str(pl, optional[i]);
        if (!v && json_object_object_get_ex(pl, optional[i], NULL)) {
            *why = "a claim is not a plain string";
            goto out;
        }
        copy_str(dst[i], cap[i], v);
    }
    out->exp = exp;
    json_object *arr;
    if (json_object_object_get_ex(pl, "roles", &arr) && json_object_is_type(arr, json_type_array))
        for (size_t i = 0; i < json_object_array_length(arr) && out->nroles < PRINCIPAL_MAX_ROLES; i++) {
            json_object *r = json_object_array_get_idx(arr, i);
            if (json_object_is_type(r, json_type_string))
                copy_str(out->roles[out->nroles++], sizeof out->roles[0], json_object_get_string(r));
        }
    if (json_object_object_get_ex(pl, "perms", &arr) && json_object_is_type(arr, json_type_array))
        for (size_t i = 0; i < json_object_array_length(arr) && out->nperms < PRINCIPAL_MAX_PERMS; i++) {
            json_object *r = json_object_array_get_idx(arr, i);
            if (json_object_is_type(r, json_type_string))
                copy_str(out->perms[out->nperms++], sizeof out->perms[0], json_object_get_string(r));
        }
    out->present = true;
    rc = 0;
out:
    jwt_free(jwt);
    json_object_put(hdr);
    json_object_put(pl);
    return rc;
}

int jwtk_sign(const jwtk_t *k, const principal_t *p, int64_t now_s, int ttl_s, char **token)
{
    *token = NULL;
    jwt_t *jwt = NULL;
    if (jwt_new(&jwt) != 0)
        return -1;
    json_object *c = json_object_new_object();
    json_object_object_add(c, "iss", json_object_new_string(k->iss));
    json_object_object_add(c, "aud", json_object_new_string(k->aud));
    json_object_object_add(c, "sub", json_object_new_string(p->sub));
    json_object_object_add(c, "tid", json_object_new_string(p->tid[0] ? p->tid : "default"));
    if (p->sid[0])
        json_object_object_add(c, "sid", json_object_new_string(p->sid));
    char jti[33];
    random_hex(jti, 16);
    json_object_object_add(c, "jti", json_object_new_string(jti));
    json_object_object_add(c, "iat", json_object_new_int64(now_s));
    json_object_object_add(c, "nbf", json_object_new_int64(now_s));
    json_object_object_add(c, "exp", json_object_new_int64(now_s + ttl_s));
    json_object_object_add(c, "token_use", json_object_new_string("access"));
    json_object *roles = json_object_new_array();
    for (int i = 0; i < p->nroles; i++)
        json_object_array_add(roles, json_object_new_string(p->roles[i]));
    json_object_object_add(c, "roles", roles);
    json_object *perms = json_object_new_array();
    for (int i = 0; i < p->nperms; i++)
        json_object_array_add(perms, json_object_new_string(p->perms[i]));
    json_object_object_add(c, "perms", perms);
    int rc = -1;
    if (jwt_add_grants_json(jwt, json_object_to_json_string_ext(c, JSON_C_TO_STRING_PLAIN)) != 0 ||
        jwt_add_header(jwt, "kid", k->kid) != 0 || jwt_set_alg(jwt, k->alg, k->sign_key, (int)k->sign_len) != 0)
        goto out;
    char *s = jwt_encode_str(jwt);
    if (!s)
        goto out;
    *token = xstrdup(s);
    free(s);
    rc = 0;
out:
    json_object_put(c);
    jwt_free(jwt);
    return rc;
}

/* ---- the verified-token cache ---- */

static size_t token_slot(const char *t, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)t[i]) * 1099511628211ull;
    return (size_t)(h % JWT_CACHE_SLOTS);
}

bool jwt_cache_get(jwt_cache_t *c, const char *token, int64_t now_s, principal_t *out)
{
    size_t n = strlen(token);
    jwt_cache_entry_t *e = c->slot[token_slot(token, n)];
    if (!e || e->len != n || memcmp(e->token, token, n) != 0 || now_s >= e->p.exp)
        return false;
    *out = e->p;
    return true;
}

void jwt_cache_put(jwt_cache_t *c, const char *token, const principal_t *p)
{
    size_t n = strlen(token);
    jwt_cache_entry_t **s = &c->slot[token_slot(token, n)];
    if (!*s)
        *s = xcalloc(1, sizeof **s);
    free((*s)->token);
    (*s)->token = xstrndup(token, n);
    (*s)->len = n;
    (*s)->p = *p;
}

void jwt_cache_free(jwt_cache_t *c)
{
    for (size_t i = 0; i < JWT_CACHE_SLOTS; i++)
        if (c->slot[i]) {
            free(c->slot[i]->token);
            free(c->slot[i]);
            c->slot[i] = NULL;
        }
}
