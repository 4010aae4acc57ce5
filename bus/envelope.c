/* bus/envelope.c: see envelope.h. */
#include "bus/envelope.h"

#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The stream entry's field names and their lengths (every entry decoded
 * compares its field names with them). */
#define FIELD(s)                                                                                                       \
    {                                                                                                                  \
        s, sizeof s - 1                                                                                                \
    }
static const struct {
    const char *name;
    size_t len;
} fields[ENV_NFIELDS] = {FIELD("id"),           FIELD("type"),       FIELD("topic"),  FIELD("tenant"),
                         FIELD("aggregate_id"), FIELD("seq"),        FIELD("ts"),     FIELD("v"),
                         FIELD("traceparent"),  FIELD("request_id"), FIELD("payload")};

void envelope_clear(envelope_t *e)
{
    if (e->strings) {
        free(e->strings);
        memset(e, 0, sizeof *e);
        return;
    }
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
    dst->strings = NULL;
}

void envelope_stream_name(const char *topic, char *buf, size_t cap)
{
    snprintf(buf, cap, "ecom:%s", topic);
}

const char *envelope_field_name(int i)
{
    return fields[i].name;
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

static bool reserved_topic(const char *s)
{
    return strncmp(s, "dlq:", 4) == 0 || strncmp(s, "replay:", 7) == 0;
}

bool envelope_topic_valid(const char *s)
{
    return envelope_name_valid(s) && !reserved_topic(s);
}

bool envelope_stream_is_topic(const char *stream)
{
    return strncmp(stream, "ecom:", 5) == 0 && !reserved_topic(stream + 5);
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

/* The string fields' values into one allocation (e->strings): those in
 * `have` (a bit per slot of sv/sl, in the order of dst); the others NULL. */
static void strings_fill(envelope_t *e, const char *const *sv, const size_t *sl, int nslots, unsigned have)
{
    char **dst[] = {&e->type, &e->topic, &e->tenant, &e->aggregate_id, &e->traceparent, &e->request_id,
                    &e->payload};
    size_t total = 0;
    for (int k = 0; k < nslots; k++)
        if (have & (1u << k))
            total += sl[k] + 1;
    if (total == 0)
        return;
    char *p = e->strings = xmalloc(total);
    for (int k = 0; k < nslots; k++) {
        if (!(have & (1u << k)))
            continue;
        memcpy(p, sv[k], sl[k]);
        p[sl[k]] = '\0';
        *dst[k] = p;
        p += sl[k] + 1;
    }
}

int envelope_from_fields(envelope_t *e, const char *const *fnames, const size_t *nlens,
                         const char *const *vals, const size_t *vlens, size_t n, const char **why)
{
    memset(e, 0, sizeof *e);
    unsigned seen = 0;
    /* the string fields' values, copied into one allocation at the end */
    enum { S_TYPE, S_TOPIC, S_TENANT, S_AGGREGATE, S_TRACEPARENT, S_REQUEST_ID, S_PAYLOAD, S_N };
    const char *sv[S_N] = {"", "", "", "", "", "", ""};
    size_t sl[S_N] = {0};
    unsigned have = 0; /* slots seen */
    for (size_t i = 0; i < n; i++) {
        int f = -1;
        for (int k = 0; k < ENV_NFIELDS; k++)
            if (fields[k].len == nlens[i] && memcmp(fields[k].name, fnames[i], nlens[i]) == 0) {
                f = k;
                break;
            }
        if (f < 0 || (seen & (1u << f)))
            continue; /* unknown fields are ignored; a repeated one keeps the first */
        seen |= 1u << f;
        const char *v = vals[i];
        size_t vl = vlens[i];
        int64_t num = 0;
        int slot = -1;
        switch (f) {
        case 0:
            if (vl != 36) {
                *why = "invalid id";
                goto fail;
            }
            memcpy(e->id, v, 36);
            e->id[36] = '\0';
            if (!uuid_valid(e->id)) {
                *why = "invalid id";
                goto fail;
            }
            break;
        case 1: slot = S_TYPE; break;
        case 2: slot = S_TOPIC; break;
        case 3: slot = S_TENANT; break;
        case 4: slot = S_AGGREGATE; break;
        case 5:
        case 6:
        case 7:
            if (!parse_i64(v, vl, &num)) {
                *why = f == 5 ? "invalid seq" : f == 6 ? "invalid ts" : "invalid v";
                goto fail;
            }
            if (f == 5)
                e->seq = num;
            else if (f == 6)
                e->ts = num;
            else
                e->v = (int)num;
            break;
        case 8: slot = S_TRACEPARENT; break;
        case 9: slot = S_REQUEST_ID; break;
        default: slot = S_PAYLOAD; break;
        }
        if (slot >= 0) {
            sv[slot] = v;
            sl[slot] = vl;
            have |= 1u << slot;
        }
    }
    static const char *const missing[] = {"missing field id", "missing field type", "missing field topic",
                                          "missing field tenant", "missing field aggregate_id"};
    for (int k = 0; k < 5; k++)
        if (!(seen & (1u << k))) {
            *why = missing[k];
            goto fail;
        }
    if (!(seen & (1u << 10))) {
        *why = "missing field payload";
        goto fail;
    }
    /* absent traceparent and request id are "" */
    strings_fill(e, sv, sl, S_N, have | 1u << S_TRACEPARENT | 1u << S_REQUEST_ID);
    if (!envelope_name_valid(e->type) || !envelope_name_valid(e->tenant) || !envelope_name_valid(e->topic)) {
        *why = "invalid type, topic or tenant";
        return -1;
    }
    return 0;
fail:
    strings_fill(e, sv, sl, S_N, have); /* what decoded, for a dead letter */
    return -1;
}

bool envelope_type_in(const char *const *types, const char *type)
{
    for (const char *const *t = types; t && *t; t++)
        if (strcmp(*t, type) == 0)
            return true;
    return false;
}
