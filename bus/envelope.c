/* bus/envelope.c: see envelope.h. */
#include "bus/envelope.h"

#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[ENV_NFIELDS] = {"id", "type", "topic", "tenant", "aggregate_id", "seq",
                                                "ts", "v", "traceparent", "request_id", "payload"};

void envelope_clear(envelope_t *e)
{
    free(e->type);
    free(e->topic);
    free(e->tenant);
    free(e->aggregate_id);
    free(e->traceparent);
    free(e->request_id);
    free(e->payload);
    memset(e, 0, sizeof *e);
}

static char *dup_or_empty(const char *s)
{
    return xstrdup(s ? s : "");
}

void envelope_copy(envelope_t *dst, const envelope_t *src)
{
    memcpy(dst->id, src->id, sizeof dst->id);
    dst->type = dup_or_empty(src->type);
    dst->topic = dup_or_empty(src->topic);
    dst->tenant = dup_or_empty(src->tenant);
    dst->aggregate_id = dup_or_empty(src->aggregate_id);
    dst->seq = src->seq;
    dst->ts = src->ts;
    dst->v = src->v;
    dst->traceparent = dup_or_empty(src->traceparent);
    dst->request_id = dup_or_empty(src->request_id);
    dst->payload = dup_or_empty(src->payload);
}

void envelope_stream_name(const char *topic, char *buf, size_t cap)
{
    snprintf(buf, cap, "ecom:%s", topic);
}

const char *envelope_field_name(int i)
{
    return names[i];
}

const char *envelope_field_value(const envelope_t *e, int i, char tmp[32])
{
    switch (i) {
    case 0: return e->id;
    case 1: return e->type;
    case 2: return e->topic;
    case 3: return e->tenant;
    case 4: return e->aggregate_id;
    case 5: snprintf(tmp, 32, "%lld", (long long)e->seq); return tmp;
    case 6: snprintf(tmp, 32, "%lld", (long long)e->ts); return tmp;
    case 7: snprintf(tmp, 32, "%d", e->v); return tmp;
    case 8: return e->traceparent ? e->traceparent : "";
    case 9: return e->request_id ? e->request_id : "";
    default: return e->payload;
    }
}

bool envelope_name_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == ':' || c == '-'))
            return false;
    }
    return n >= 1 && n <= ENV_NAME_MAX;
}

static bool parse_i64(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    char buf[24];
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (*end)
        return false;
    *out = v;
    return true;
}

int envelope_from_fields(envelope_t *e, const char *const *fnames, const size_t *nlens,
                         const char *const *vals, const size_t *vlens, size_t n, const char **why)
{
    memset(e, 0, sizeof *e);
    unsigned seen = 0;
    for (size_t i = 0; i < n; i++) {
        int f = -1;
        for (int k = 0; k < ENV_NFIELDS; k++)
            if (strlen(names[k]) == nlens[i] && memcmp(names[k], fnames[i], nlens[i]) == 0) {
                f = k;
                break;
            }
        if (f < 0 || (seen & (1u << f)))
            continue; /* unknown fields are ignored; a repeated one keeps the first */
        seen |= 1u << f;
        const char *v = vals[i];
        size_t vl = vlens[i];
        int64_t num = 0;
        switch (f) {
        case 0:
            if (vl != 36) {
                *why = "invalid id";
                return -1;
            }
            memcpy(e->id, v, 36);
            e->id[36] = '\0';
            if (!uuid_valid(e->id)) {
                *why = "invalid id";
                return -1;
            }
            break;
        case 1: e->type = xstrndup(v, vl); break;
        case 2: e->topic = xstrndup(v, vl); break;
        case 3: e->tenant = xstrndup(v, vl); break;
        case 4: e->aggregate_id = xstrndup(v, vl); break;
        case 5:
        case 6:
        case 7:
            if (!parse_i64(v, vl, &num)) {
                *why = f == 5 ? "invalid seq" : f == 6 ? "invalid ts" : "invalid v";
                return -1;
            }
            if (f == 5)
                e->seq = num;
            else if (f == 6)
                e->ts = num;
            else
                e->v = (int)num;
            break;
        case 8: e->traceparent = xstrndup(v, vl); break;
        case 9: e->request_id = xstrndup(v, vl); break;
        default: e->payload = xstrndup(v, vl); break;
        }
    }
    static const char *const missing[] = {"missing field id", "missing field type", "missing field topic",
                                          "missing field tenant", "missing field aggregate_id"};
    for (int k = 0; k < 5; k++)
        if (!(seen & (1u << k))) {
            *why = missing[k];
            return -1;
        }
    if (!(seen & (1u << 10))) {
        *why = "missing field payload";
        return -1;
    }
    if (!e->traceparent)
        e->traceparent = xstrdup("");
    if (!e->request_id)
        e->request_id = xstrdup("");
    if (!envelope_name_valid(e->type) || !envelope_name_valid(e->tenant) || !envelope_name_valid(e->topic)) {
        *why = "invalid type, topic or tenant";
        return -1;
    }
    return 0;
}
