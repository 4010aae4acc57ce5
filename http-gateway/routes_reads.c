/* http-gateway/routes_reads.c: the services' read models over HTTP (issue 5).
 *
 * GET /api/v1/notifications/deliveries?subject=&limit=&cursor=
 *   The tenant's deliveries to one subject (notification.deliveries, or the
 *   notification service's memory table), newest first, in keyset pages: the
 *   order is (created time, message id, channel), all descending, and the
 *   opaque cursor is the key of a page's last row, so deliveries recorded
 *   while a client pages never make it see a row twice or miss one that was
 *   there. nextCursor is null exactly when no row follows (one row more than
 *   the page is read to know).
 *
 * GET /api/v1/analytics/stats?window=&type=
 *   Counts per event type of the tenant's events over the last window seconds,
 *   from the analytics service's per-minute counters
 *   (analytics.counts_by_minute; in memory mode, its events). The window is
 *   counted in whole minutes: from the start of the minute holding
 *   now - window (the answer's `since`) up to now, so it spans window to
 *   window + 59 s and `since` says exactly where it starts. The answer is
 *   cached like the events list (5 s fresh, then 25 s stale-while-revalidate).
 *
 * PostgreSQL reads run on the thread's asynchronous pool (one statement each);
 * memory mode reads through r->th->memdb. */
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/uuid.h"
#include "services/analytics/analytics.h"
#include "services/notification/notification.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DELIVERIES_LIMIT_DEFAULT 50
#define DELIVERIES_LIMIT_MAX 200
#define SUBJECT_MAX 256 /* bytes of a notification's subject (an OTP subject is at most 128) */
#define STATS_WINDOW_DEFAULT 3600
#define STATS_WINDOW_MIN 60
#define STATS_WINDOW_MAX 86400

/* ---- shared ---- */

static void iso_time(int64_t ms, char *out, size_t cap)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03dZ", (int)(ms % 1000));
}

/* A decimal integer of digits only, in [lo, hi]; -1 otherwise. */
static long bounded_int(const char *s, long lo, long hi)
{
    size_t n = strlen(s);
    if (n == 0 || n > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v < lo || v > hi ? -1 : v;
}

static void unavailable(gw_req_t *r, const char *what)
{
    gw_add_header(r, "Retry-After", "1");
    gw_problem(r, 503, "storage-unavailable", what);
}

/* One statement on a connection of the thread's pool. done gets its result
 * (borrowed, valid during the call), or NULL when it could not be read; the
 * handler's query is in r->handler_state. */
typedef void (*read_done_fn)(gw_req_t *r, PGresult *res);

#define READ_MAX_PARAMS 6

typedef struct pg_read {
    gw_req_t *r;
    const char *name, *sql; /* static */
    int nparams;
    char *params[READ_MAX_PARAMS]; /* owned; NULL = SQL NULL */
    read_done_fn done;
} pg_read_t;

static void pg_read_free(pg_read_t *rd)
{
    for (int i = 0; i < rd->nparams; i++)
        free(rd->params[i]);
    free(rd);
}

static void on_read_result(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    pg_read_t *rd = arg;
    gw_req_t *r = rd->r;
    log_ctx_set(&r->log);
    if (err)
        log_warn("%s failed: %s", rd->name, err);
    rd->done(r, err || n < 1 ? NULL : res[0]);
    pga_release(c, false);
    pg_read_free(rd);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void on_read_conn(pga_conn_t *c, const char *err, void *arg)
{
    pg_read_t *rd = arg;
    gw_req_t *r = rd->r;
    log_ctx_set(&r->log);
    if (!c) {
        log_warn("no database connection for %s: %s", rd->name, err ? err : "?");
        rd->done(r, NULL);
        pg_read_free(rd);
        gw_unref(r);
        log_ctx_set(NULL);
        return;
    }
    const pga_stmt_t st = {
        .name = rd->name, .sql = rd->sql, .nparams = rd->nparams, .params = (const char *const *)rd->params};
    if (pga_pipeline(c, &st, 1, on_read_result, rd) != 0) {
        pga_release(c, true);
        rd->done(r, NULL);
        pg_read_free(rd);
        gw_unref(r);
    }
    log_ctx_set(NULL);
}

static void pg_read(gw_req_t *r, const char *name, const char *sql, int nparams, const char *const *params,
                    read_done_fn done)
{
    ECOM_ASSERT(nparams <= READ_MAX_PARAMS);
    pg_read_t *rd = xcalloc(1, sizeof *rd);
    rd->r = r;
    rd->name = name;
    rd->sql = sql;
    rd->nparams = nparams;
    for (int i = 0; i < nparams; i++)
        rd->params[i] = params[i] ? xstrdup(params[i]) : NULL;
    rd->done = done;
    gw_ref(r);
    if (pga_acquire(r->th->pg, on_read_conn, rd) != 0) {
        pg_read_free(rd);
        done(r, NULL); /* the waiter queue is full */
        gw_unref(r);
    }
}

/* ---- the deliveries cursor ----
 * base64url (no padding) of "<created µs>:<message id>:<channel>". Clients
 * only hand it back; decoding checks every part. */

#define CURSOR_US_DIGITS 16 /* created µs up to 9999999999999999 (year 2286): always a valid timestamptz */
#define CURSOR_MAX 128      /* encoded, with NUL: the text is at most 16 + 1 + 36 + 1 + 15 = 69 bytes */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64url_encode(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = b64url[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
}

/* Strict: only the alphabet, no padding, unused trailing bits zero (one text
 * per cursor). The decoded length, or -1. */
static int b64url_decode(const char *in, unsigned char *out, size_t cap)
{
    size_t n = strlen(in), o = 0;
    if (n % 4 == 1)
        return -1;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = memchr(b64url, in[i], 64);
        if (!p)
            return -1;
        acc = (acc << 6) | (unsigned)(p - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (int)o;
}

static void cursor_encode(const notification_key_t *k, char out[CURSOR_MAX])
{
    char text[96];
    int n = snprintf(text, sizeof text, "%lld:%s:%s", (long long)k->created_us, k->message_id, k->channel);
    ECOM_ASSERT(n > 0 && (size_t)n < sizeof text && ((size_t)n + 2) / 3 * 4 < CURSOR_MAX);
    b64url_encode((const unsigned char *)text, (size_t)n, out);
}

static bool cursor_decode(const char *s, notification_key_t *k)
{
    unsigned char text[96];
    int n = b64url_decode(s, text, sizeof text - 1);
    if (n < 0)
        return false;
    text[n] = '\0';
    if (memchr(text, '\0', (size_t)n))
        return false;
    const char *t = (const char *)text;
    const char *c1 = strchr(t, ':');
    const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c1 || !c2)
        return false;
    /* created µs */
    size_t dl = (size_t)(c1 - t);
    if (dl == 0 || dl > CURSOR_US_DIGITS)
        return false;
    int64_t us = 0;
    for (size_t i = 0; i < dl; i++) {
        if (t[i] < '0' || t[i] > '9')
            return false;
        us = us * 10 + (t[i] - '0');
    }
    /* message id: a UUID, lowercase as stored and printed */
    size_t ul = (size_t)(c2 - c1 - 1);
    if (ul != UUID_STR_LEN - 1)
        return false;
    char id[UUID_STR_LEN];
    memcpy(id, c1 + 1, ul);
    id[ul] = '\0';
    if (!uuid_valid(id))
        return false;
    for (char *p = id; *p; p++)
        if (*p >= 'A' && *p <= 'F')
            *p = (char)(*p - 'A' + 'a');
    /* channel: [a-z]{1,15} */
    const char *ch = c2 + 1;
    size_t cl = strlen(ch);
    if (cl == 0 || cl >= sizeof k->channel)
        return false;
    for (size_t i = 0; i < cl; i++)
        if (ch[i] < 'a' || ch[i] > 'z')
            return false;
    k->created_us = us;
    memcpy(k->message_id, id, sizeof k->message_id);
    memcpy(k->channel, ch, cl + 1);
    return true;
}

/* ---- GET /api/v1/notifications/deliveries ---- */

typedef struct deliveries_q {
    char subject[SUBJECT_MAX + 2]; /* one byte more than allowed: a longer value shows */
    size_t limit;
    bool has_cursor;
    notification_key_t after;
} deliveries_q_t;

/* Well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points
 * past U+10FFFF) without control characters: PostgreSQL refuses other text,
 * and a client's bad input must be its 400, not our 503. */
static bool utf8_text(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (len == 0 || i + len > n)
            return false;
        unsigned lo = 0x80, hi = 0xbf; /* the second byte's range */
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        else if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += len;
    }
    return true;
}

/* 1..256 bytes of text (the recipients the notification service records: a
 * principal's subject, an OTP subject, or the tenant). */
static bool subject_valid(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= SUBJECT_MAX && utf8_text((const unsigned char *)s, n);
}

static bool deliveries_query_or_reply(gw_req_t *r, deliveries_q_t *q)
{
    char buf[CURSOR_MAX + 1];
    memset(q, 0, sizeof *q);
    q->limit = DELIVERIES_LIMIT_DEFAULT;
    if (!gw_query_arg(r, "subject", q->subject, sizeof q->subject)) {
        gw_problem(r, 400, "validation-error", "the query parameter subject is required");
        return false;
    }
    if (!subject_valid(q->subject)) {
        gw_problem(r, 400, "validation-error",
                   "subject must be 1 to 256 bytes of UTF-8 text without control characters");
        return false;
    }
    const char *v;
    if ((v = gw_query_arg(r, "limit", buf, sizeof buf))) {
        long n = bounded_int(v, 1, DELIVERIES_LIMIT_MAX);
        if (n < 0) {
            gw_problem(r, 400, "validation-error", "limit must be an integer from 1 to 200");
            return false;
        }
        q->limit = (size_t)n;
    }
    if ((v = gw_query_arg(r, "cursor", buf, sizeof buf))) {
        if (strlen(v) >= CURSOR_MAX || !cursor_decode(v, &q->after)) {
            gw_problem(r, 400, "validation-error", "cursor must be the nextCursor of a previous page");
            return false;
        }
        q->has_cursor = true;
    }
    return true;
}

static json_object *delivery_json(const notification_page_row_t *row)
{
    const notification_delivery_t *d = &row->d;
    json_object *o = json_object_new_object();
    char t[40];
    json_object_object_add(o, "messageId", json_object_new_string(d->message_id));
    json_object_object_add(o, "channel", json_object_new_string(d->channel));
    json_object_object_add(o, "subject", json_object_new_string(d->subject));
    json_object_object_add(o, "type", json_object_new_string(d->type));
    json_object_object_add(o, "status", json_object_new_string(d->status));
    json_object_object_add(o, "detail", json_object_new_string(d->detail));
    iso_time(d->created_ms, t, sizeof t);
    json_object_object_add(o, "createdAt", json_object_new_string(t));
    return o;
}

/* rows: up to limit + 1 in page order; the extra one only says a page follows. */
static void deliveries_answer(gw_req_t *r, const notification_page_row_t *rows, size_t n, size_t limit)
{
    size_t shown = n > limit ? limit : n;
    json_object *data = json_object_new_array();
    for (size_t i = 0; i < shown; i++)
        json_object_array_add(data, delivery_json(&rows[i]));
    json_object *next = NULL;
    if (n > limit) {
        char cur[CURSOR_MAX];
        cursor_encode(&rows[limit - 1].key, cur);
        next = json_object_new_string(cur);
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "data", data);
    json_object_object_add(body, "count", json_object_new_int64((int64_t)shown));
    json_object_object_add(body, "nextCursor", next);
    gw_respond_json(r, 200, body);
}

static void on_deliveries(gw_req_t *r, PGresult *res)
{
    const deliveries_q_t *q = r->handler_state;
    if (!res) {
        unavailable(r, "the deliveries could not be read");
        return;
    }
    size_t n = (size_t)PQntuples(res);
    notification_page_row_t *rows = xcalloc(n + 1, sizeof *rows);
    for (size_t i = 0; i < n; i++)
        notification_page_row_from(res, (int)i, &rows[i]);
    deliveries_answer(r, rows, n, q->limit);
    notification_page_free(rows, n);
}

static void get_deliveries(gw_req_t *r)
{
    deliveries_q_t *q = xmalloc(sizeof *q);
    if (!deliveries_query_or_reply(r, q)) {
        free(q);
        return;
    }
    if (r->th->memdb) {
        notification_page_row_t *rows = NULL;
        size_t n = 0;
        if (notification_page(r->th->memdb, r->tenant, q->subject, q->has_cursor ? &q->after : NULL, q->limit + 1,
                              &rows, &n) != 0)
            unavailable(r, "the deliveries could not be read");
        else
            deliveries_answer(r, rows, n, q->limit);
        notification_page_free(rows, n);
        free(q);
        return;
    }
    r->handler_state = q;
    r->handler_state_free = free;
    char lim[24], us[24];
    snprintf(lim, sizeof lim, "%zu", q->limit + 1);
    if (q->has_cursor) {
        snprintf(us, sizeof us, "%lld", (long long)q->after.created_us);
        const char *p[] = {r->tenant, q->subject, lim, us, q->after.message_id, q->after.channel};
        pg_read(r, "gw_reads_deliveries_after", notification_sql_page_after, 6, p, on_deliveries);
    } else {
        const char *p[] = {r->tenant, q->subject, lim};
        pg_read(r, "gw_reads_deliveries", notification_sql_page, 3, p, on_deliveries);
    }
}

/* ---- GET /api/v1/analytics/stats ---- */

typedef struct stats_q {
    long window_s;
    char type[ENV_NAME_MAX + 2];
    bool has_type;
    int64_t since_ms; /* a whole minute */
} stats_q_t;

/* The cache key's own part: the normalised query (parameter order does not matter). */
static char *stats_key(gw_req_t *r)
{
    char *q = route_norm_query(r->query);
    char *k = xasprintf("stats:%s", q);
    free(q);
    return k;
}

static bool stats_query_or_reply(gw_req_t *r, stats_q_t *q)
{
    char buf[32];
    memset(q, 0, sizeof *q);
    q->window_s = STATS_WINDOW_DEFAULT;
    const char *v;
    if ((v = gw_query_arg(r, "window", buf, sizeof buf))) {
        q->window_s = bounded_int(v, STATS_WINDOW_MIN, STATS_WINDOW_MAX);
        if (q->window_s < 0) {
            gw_problem(r, 400, "validation-error", "window must be an integer number of seconds from 60 to 86400");
            return false;
        }
    }
    if (gw_query_arg(r, "type", q->type, sizeof q->type)) {
        if (!envelope_name_valid(q->type)) {
            gw_problem(r, 400, "validation-error", "type must match [A-Za-z0-9._:-]{1,128}");
            return false;
        }
        q->has_type = true;
    }
    int64_t start = clock_now_ms() - (int64_t)q->window_s * 1000;
    q->since_ms = start - start % 60000;
    return true;
}

static void stats_answer(gw_req_t *r, const stats_q_t *q, const analytics_type_count_t *c, size_t n)
{
    json_object *data = json_object_new_array();
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "type", json_object_new_string(c[i].type));
        json_object_object_add(o, "count", json_object_new_int64(c[i].count));
        json_object_array_add(data, o);
        total += c[i].count;
    }
    char since[40];
    iso_time(q->since_ms, since, sizeof since);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "window", json_object_new_int64(q->window_s));
    json_object_object_add(body, "since", json_object_new_string(since));
    json_object_object_add(body, "data", data);
    json_object_object_add(body, "total", json_object_new_int64(total));
    gw_respond_json(r, 200, body);
}

static void on_stats(gw_req_t *r, PGresult *res)
{
    const stats_q_t *q = r->handler_state;
    if (!res) {
        unavailable(r, "the stats could not be read");
        return;
    }
    size_t n = (size_t)PQntuples(res);
    analytics_type_count_t *c = xcalloc(n + 1, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        c[i].type = xstrdup(PQgetvalue(res, (int)i, 0));
        c[i].count = strtoll(PQgetvalue(res, (int)i, 1), NULL, 10);
    }
    stats_answer(r, q, c, n);
    analytics_type_counts_free(c, n);
}

static void get_stats(gw_req_t *r)
{
    stats_q_t *q = xmalloc(sizeof *q);
    if (!stats_query_or_reply(r, q)) {
        free(q);
        return;
    }
    if (r->th->memdb) {
        analytics_type_count_t *c = NULL;
        size_t n = 0;
        if (analytics_stats(r->th->memdb, r->tenant, q->has_type ? q->type : NULL, q->since_ms, &c, &n) != 0)
            unavailable(r, "the stats could not be read");
        else
            stats_answer(r, q, c, n);
        analytics_type_counts_free(c, n);
        free(q);
        return;
    }
    r->handler_state = q;
    r->handler_state_free = free;
    char since[24];
    snprintf(since, sizeof since, "%lld", (long long)(q->since_ms / 1000));
    const char *p[] = {r->tenant, since, q->has_type ? q->type : NULL};
    pg_read(r, "gw_reads_stats", analytics_sql_stats, 3, p, on_stats);
}

/* ---- the table ---- */

static const schema_t nullable_string = {.type = SCHEMA_STRING, .nullable = true};

static const schema_prop_t delivery_props[] = {
    {"messageId", &schema_string, true}, {"channel", &schema_string, true},
    {"subject", &schema_string, true},   {"type", &schema_string, true},
    {"status", &schema_string, true},    {"detail", &schema_string, true},
    {"createdAt", &schema_string, true}, {NULL, NULL, false},
};
static const schema_t delivery_item = {.type = SCHEMA_OBJECT, .props = delivery_props};
static const schema_t delivery_list = {.type = SCHEMA_ARRAY, .items = &delivery_item};
static const schema_prop_t deliveries_props[] = {
    {"data", &delivery_list, true},
    {"count", &schema_integer, true},
    {"nextCursor", &nullable_string, true},
    {NULL, NULL, false},
};
static const schema_t deliveries_response = {.type = SCHEMA_OBJECT, .props = deliveries_props};

static const schema_prop_t count_props[] = {
    {"type", &schema_string, true},
    {"count", &schema_integer, true},
    {NULL, NULL, false},
};
static const schema_t count_item = {.type = SCHEMA_OBJECT, .props = count_props};
static const schema_t count_list = {.type = SCHEMA_ARRAY, .items = &count_item};
static const schema_prop_t stats_props[] = {
    {"window", &schema_integer, true},
    {"since", &schema_string, true},
    {"data", &count_list, true},
    {"total", &schema_integer, true},
    {NULL, NULL, false},
};
static const schema_t stats_response = {.type = SCHEMA_OBJECT, .props = stats_props};

/* Around the store, as the other reads: trips at 50% failures over 30 s once
 * 20 calls were seen. */
#define READ_BREAKER                                                                                                   \
    {                                                                                                                  \
        .breaker = true, .breaker_params = {                                                                           \
            .failure_rate_threshold = 50,                                                                              \
            .window_ms = 30000,                                                                                        \
            .minimum_calls = 20,                                                                                       \
            .open_duration_ms = 20000,                                                                                 \
            .half_open_max_calls = 5                                                                                   \
        }                                                                                                              \
    }

static const route_t rows[] = {
    {
        .id = "notifications.deliveries.list",
        .methods = ROUTE_GET | ROUTE_HEAD,
        .path = "/api/v1/notifications/deliveries",
        .handler = get_deliveries,
        .permissions = {"notifications:read"},
        .resilience = READ_BREAKER,
        .response_schema = &deliveries_response,
    },
    {
        .id = "analytics.stats",
        .methods = ROUTE_GET | ROUTE_HEAD,
        .path = "/api/v1/analytics/stats",
        .handler = get_stats,
        .cache = {.ttl_ms = 5000, .swr_ms = 25000, .stale_if_error_ms = 60000, .key = stats_key},
        .permissions = {"events:read"},
        .resilience = READ_BREAKER,
        .response_schema = &stats_response,
    },
};

const route_t *const gw_routes_reads = rows;
const size_t gw_routes_reads_n = ECOM_ARRAY_LEN(rows);
