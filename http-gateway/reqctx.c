/* http-gateway/reqctx.c: see reqctx.h. */
#include "http-gateway/reqctx.h"

#include "core/uuid.h"

#include <stdio.h>
#include <string.h>

static bool id_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '-';
}

bool reqctx_request_id_valid(const char *s)
{
    if (!s)
        return false;
    size_t n = 0;
    for (; s[n]; n++)
        if (n == REQCTX_ID_MAX || !id_char(s[n]))
            return false;
    return n > 0;
}

bool reqctx_request_id(const char *inbound, char out[REQCTX_ID_BUF])
{
    if (reqctx_request_id_valid(inbound)) {
        strcpy(out, inbound);
        return true;
    }
    random_fast_hex(out, 16);
    return false;
}

static int lchex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* n lowercase hex digits at s, copied to out (NUL-terminated) when out is not NULL;
 * false when any is not lowercase hex or (when nonzero) all are zero. */
static bool hex_field(const char *s, size_t n, bool nonzero, char *out)
{
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        int v = lchex(s[i]);
        if (v < 0)
            return false;
        any |= v != 0;
    }
    if (nonzero && !any)
        return false;
    if (out) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return true;
}

int reqctx_traceparent_parse(const char *h, traceparent_t *out)
{
    if (!h)
        return -1;
    size_t len = strnlen(h, 512);
    /* version(2) - trace(32) - span(16) - flags(2) = 55 */
    if (len < 55 || h[2] != '-' || h[35] != '-' || h[52] != '-')
        return -1;
    if (!hex_field(h, 2, false, NULL))
        return -1;
    int version = lchex(h[0]) * 16 + lchex(h[1]);
    if (version == 0xff)
        return -1;
    if (version == 0 && len != 55)
        return -1;
    if (version > 0 && len > 55 && h[55] != '-')
        return -1;
    if (!hex_field(h + 3, 32, true, out->trace_id) || !hex_field(h + 36, 16, true, out->span_id) ||
        !hex_field(h + 53, 2, false, NULL))
        return -1;
    out->version = (uint8_t)version;
    out->flags = (uint8_t)(lchex(h[53]) * 16 + lchex(h[54]));
    return 0;
}

static void random_nonzero_hex(char *out, size_t nbytes)
{
    do
        random_fast_hex(out, nbytes);
    while (strspn(out, "0") == 2 * nbytes);
}

void reqctx_span_id_new(char out[REQCTX_SPAN_ID_BUF])
{
    random_nonzero_hex(out, 8);
}

void reqctx_traceparent_new(traceparent_t *out, bool sampled)
{
    out->version = 0;
    random_nonzero_hex(out->trace_id, 16);
    reqctx_span_id_new(out->span_id);
    out->flags = sampled ? 1 : 0;
}

void reqctx_traceparent_child(const traceparent_t *parent, traceparent_t *out)
{
    traceparent_t child;
    child.version = 0;
    memcpy(child.trace_id, parent->trace_id, sizeof child.trace_id);
    reqctx_span_id_new(child.span_id);
    child.flags = parent->flags & 1;
    *out = child;
}

void reqctx_traceparent_format(const traceparent_t *tp, char out[REQCTX_TRACEPARENT_BUF])
{
    /* "00-%.32s-%.16s-%02x", without printf: this runs on every request */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    memcpy(o, "00-", 3);
    o += 3;
    size_t n = strnlen(tp->trace_id, 32);
    memcpy(o, tp->trace_id, n);
    o += n;
    *o++ = '-';
    n = strnlen(tp->span_id, 16);
    memcpy(o, tp->span_id, n);
    o += n;
    *o++ = '-';
    *o++ = hex[tp->flags >> 4];
    *o++ = hex[tp->flags & 15];
    *o = '\0';
}

bool reqctx_traceparent_sampled(const traceparent_t *tp)
{
    return (tp->flags & 1) != 0;
}

bool reqctx_tenant_valid(const char *s)
{
    if (!s)
        return false;
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        if (n == REQCTX_TENANT_MAX || !ok)
            return false;
    }
    return n > 0;
}
