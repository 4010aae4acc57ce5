/* core/otel.c: see otel.h.
 *
 * Threads: producers (any thread) only touch the queue under `qmu`; the
 * exporter thread owns the event base, the HTTP connection and the batch in
 * flight; otel_init/otel_shutdown build and tear down everything else while no
 * exporter runs. Timing uses CLOCK_MONOTONIC directly rather than core/clock.h,
 * whose fake clock would desynchronise our deadlines from libevent's timers. */
#include "core/otel.h"

#include "core/errlist.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/uuid.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* ---- limits ---------------------------------------------------------- */

#define MAX_ATTEMPTS 5       /* one request and up to four retries */
#define BACKOFF_FIRST_MS 500 /* jittered in [b/2, b], doubling per attempt */
#define BACKOFF_MAX_MS 8000
#define RETRY_AFTER_MAX_S 3600 /* longer hints are cut (the deadline wins anyway) */
#define RESPONSE_BODY_MAX (1024 * 1024)
#define RESPONSE_HEADERS_MAX (64 * 1024)
#define MAX_HEADERS 32
#define HEADER_VALUE_MAX 4096
#define RESOURCE_ATTRS_MAX 64
#define RESOURCE_INPUT_MAX 4096 /* bytes of OTEL_RESOURCE_ATTRIBUTES plus service name */

/* Worst-case JSON per span: every string byte may become a 6-byte escape
 * (\u00XX or \ufffd); the fixed parts are generous upper bounds. */
#define SPAN_JSON_FIXED 320
#define ATTR_JSON_FIXED 96
#define SPAN_JSON_MAX                                                                                                  \
    (SPAN_JSON_FIXED + 6 * (OTEL_NAME_MAX + OTEL_STATUS_MSG_MAX) +                                                     \
     OTEL_MAX_ATTRS * (ATTR_JSON_FIXED + 6 * (OTEL_ATTR_KEY_MAX + OTEL_ATTR_STR_MAX)))
#define RESOURCE_JSON_MAX (256 + 64 * RESOURCE_ATTRS_MAX + 6 * RESOURCE_INPUT_MAX)
_Static_assert(RESOURCE_JSON_MAX + (long long)OTEL_BATCH_MAX * SPAN_JSON_MAX <= OTEL_BODY_MAX,
               "a full batch must fit the OTLP/HTTP body limit");

/* ---- error list -------------------------------------------------------- */

/* ---- settings (written by otel_init before the exporter starts) -------- */

typedef struct settings {
    char *url;         /* for log lines */
    char *host;        /* what we connect to (localhost -> 127.0.0.1) */
    char *host_header; /* Host: as written in the URL */
    int port;
    char *uri;    /* path and query */
    bool resolve; /* host is a name: resolve with evdns */
    char **hdr_k, **hdr_v;
    size_t nhdr;
    char *prefix; /* body up to the spans array */
    int64_t schedule_ms, export_timeout_ms;
    size_t queue_max, batch_max;
} settings_t;

static settings_t set;

typedef enum { ROOT_ON, ROOT_OFF, ROOT_RATIO } root_t;

static struct {
    bool parent_based;
    root_t root;
    double ratio;
    uint64_t bound; /* ROOT_RATIO with 0 < ratio < 1: sample when id < bound */
} sampler;

static void settings_free(settings_t *s)
{
    free(s->url);
    free(s->host);
    free(s->host_header);
    free(s->uri);
    for (size_t i = 0; i < s->nhdr; i++) {
        free(s->hdr_k[i]);
        free(s->hdr_v[i]);
    }
    free(s->hdr_k);
    free(s->hdr_v);
    free(s->prefix);
    memset(s, 0, sizeof *s);
}

/* ---- the queue ------------------------------------------------------------ */

typedef struct qattr {
    const char *key; /* into the span's tail */
    uint8_t type;
    union {
        const char *s;
        int64_t i;
        bool b;
        double d;
    } v;
} qattr_t;

typedef struct qspan {
    char trace_id[OTEL_TRACE_ID_HEX + 1];
    char span_id[OTEL_SPAN_ID_HEX + 1];
    char parent_span_id[OTEL_SPAN_ID_HEX + 1];
    uint8_t kind, status;
    size_t nattrs;
    int64_t start_ns, end_ns;
    const char *name;       /* into the tail */
    const char *status_msg; /* into the tail, or NULL */
    qattr_t attrs[OTEL_MAX_ATTRS];
    char tail[]; /* the strings, each NUL-terminated */
} qspan_t;

static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    qspan_t **slot;
    size_t cap, head, count;
    size_t batch;  /* wake the exporter when count reaches this */
    bool open;     /* accepting spans */
    bool stopping; /* otel_shutdown asked the exporter to flush and exit */
    int64_t stop_deadline_ms;
    int wake_wr; /* write end of the exporter's wake-up pipe */
} q = {.wake_wr = -1};

static atomic_bool enabled;
static atomic_size_t qlen; /* mirrors q.count for a lock-free "full" check */
static atomic_size_t qcap; /* mirrors q.cap */
static atomic_bool drop_warned;
static metric_t *m_exported, *m_dropped, *m_failures;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t otel_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timeval ms_tv(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* Takes up to max spans off the head of the queue (owned by the caller). */
static size_t queue_take(qspan_t **out, size_t max)
{
    pthread_mutex_lock(&qmu);
    size_t n = q.count < max ? q.count : max;
    for (size_t i = 0; i < n; i++) {
        out[i] = q.slot[q.head];
        q.slot[q.head] = NULL;
        q.head = (q.head + 1) % q.cap;
    }
    q.count -= n;
    atomic_store_explicit(&qlen, q.count, memory_order_relaxed);
    pthread_mutex_unlock(&qmu);
    return n;
}

/* ---- copying a span ---------------------------------------------------- */

static bool hex_id(const char *s, size_t n, bool allow_empty)
{
    if (!s)
        return false;
    size_t len = strnlen(s, n + 1);
    if (len == 0)
        return allow_empty;
    if (len != n)
        return false;
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return false;
        nonzero |= s[i] != '0';
    }
    return nonzero;
}

static void copy_id(char *dst, const char *src, size_t n)
{
    size_t len = strnlen(src, n);
    for (size_t i = 0; i < len; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[len] = '\0';
}

/* Length of s cut to at most max bytes without splitting a UTF-8 character. */
static size_t cut_len(const char *s, size_t max)
{
    size_t n = strnlen(s, max + 1);
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

static char *put_tail(char **tail, const char *s, size_t n)
{
    char *dst = *tail;
    memcpy(dst, s, n);
    dst[n] = '\0';
    *tail += n + 1;
    return dst;
}

static qspan_t *span_copy(const otel_span_t *s)
{
    size_t nattrs = s->nattrs < OTEL_MAX_ATTRS ? s->nattrs : OTEL_MAX_ATTRS;
    const char *name = s->name ? s->name : "";
    const char *msg = s->status == OTEL_STATUS_ERROR && s->status_message ? s->status_message : NULL;
    size_t name_n = cut_len(name, OTEL_NAME_MAX);
    size_t msg_n = msg ? cut_len(msg, OTEL_STATUS_MSG_MAX) : 0;
    size_t key_n[OTEL_MAX_ATTRS], val_n[OTEL_MAX_ATTRS];
    size_t total = name_n + 1 + (msg ? msg_n + 1 : 0);
    for (size_t i = 0; i < nattrs; i++) {
        const otel_attr_t *a = &s->attrs[i];
        key_n[i] = a->key ? cut_len(a->key, OTEL_ATTR_KEY_MAX) : 0;
        val_n[i] = a->type == OTEL_ATTR_STRING && a->v.s ? cut_len(a->v.s, OTEL_ATTR_STR_MAX) : 0;
        total += key_n[i] + 1 + val_n[i] + 1;
    }
    qspan_t *c = xmalloc(sizeof *c + total);
    char *tail = c->tail;
    copy_id(c->trace_id, s->trace_id, OTEL_TRACE_ID_HEX);
    copy_id(c->span_id, s->span_id, OTEL_SPAN_ID_HEX);
    copy_id(c->parent_span_id, s->parent_span_id, OTEL_SPAN_ID_HEX);
    c->kind = s->kind >= OTEL_KIND_INTERNAL && s->kind <= OTEL_KIND_CONSUMER ? (uint8_t)s->kind : OTEL_KIND_INTERNAL;
    c->status = s->status <= OTEL_STATUS_ERROR ? (uint8_t)s->status : OTEL_STATUS_UNSET;
    c->start_ns = s->start_ns;
    c->end_ns = s->end_ns;
    c->name = put_tail(&tail, name, name_n);
    c->status_msg = msg ? put_tail(&tail, msg, msg_n) : NULL;
    c->nattrs = 0;
    for (size_t i = 0; i < nattrs; i++) {
        const otel_attr_t *a = &s->attrs[i];
        if (!a->key || a->type > OTEL_ATTR_DOUBLE)
            continue;
        qattr_t *d = &c->attrs[c->nattrs++];
        d->key = put_tail(&tail, a->key, key_n[i]);
        d->type = (uint8_t)a->type;
        switch (a->type) {
        case OTEL_ATTR_STRING: d->v.s = put_tail(&tail, a->v.s ? a->v.s : "", val_n[i]); break;
        case OTEL_ATTR_INT: d->v.i = a->v.i; break;
        case OTEL_ATTR_BOOL: d->v.b = a->v.b; break;
        case OTEL_ATTR_DOUBLE: d->v.d = a->v.d; break;
        }
    }
    return c;
}

static void count_drop(size_t n)
{
    metrics_add(m_dropped, n);
    if (!atomic_exchange(&drop_warned, true))
        log_warn("otel: span queue full or span invalid; dropping spans (see "
                 "ecom_otel_spans_dropped_total)");
}

void otel_span_end(const otel_span_t *s)
{
    if (!atomic_load_explicit(&enabled, memory_order_acquire))
        return;
    if (!hex_id(s->trace_id, OTEL_TRACE_ID_HEX, false) || !hex_id(s->span_id, OTEL_SPAN_ID_HEX, false) ||
        !hex_id(s->parent_span_id, OTEL_SPAN_ID_HEX, true)) {
        count_drop(1);
        return;
    }
    /* cheap early answer when full, before copying anything */
    if (atomic_load_explicit(&qlen, memory_order_relaxed) >= atomic_load_explicit(&qcap, memory_order_relaxed)) {
        count_drop(1);
        return;
    }
    qspan_t *c = span_copy(s);
    bool queued = false;
    pthread_mutex_lock(&qmu);
    if (q.open && q.count < q.cap) {
        q.slot[(q.head + q.count) % q.cap] = c;
        q.count++;
        atomic_store_explicit(&qlen, q.count, memory_order_relaxed);
        queued = true;
        if (q.count == q.batch) {
            /* a full batch: wake the exporter (non-blocking; a full pipe
             * already holds a wake-up) */
            ssize_t w = write(q.wake_wr, "b", 1);
            (void)w;
        }
    }
    pthread_mutex_unlock(&qmu);
    if (!queued) {
        free(c);
        count_drop(1);
    }
}

/* ---- sampling ------------------------------------------------------------- */

static bool ratio_sample(const char *trace_id_hex)
{
    if (sampler.ratio >= 1.0)
        return true;
    if (sampler.ratio <= 0.0 || !trace_id_hex || strnlen(trace_id_hex, 33) != OTEL_TRACE_ID_HEX)
        return false;
    uint64_t v = 0;
    for (int i = 16; i < OTEL_TRACE_ID_HEX; i++) {
        int c = (unsigned char)trace_id_hex[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return false;
        v = v << 4 | (uint64_t)d;
    }
    return v < sampler.bound;
}

bool otel_should_sample(const char *trace_id_hex, bool has_parent, bool parent_sampled)
{
    if (!atomic_load_explicit(&enabled, memory_order_acquire))
        return has_parent && parent_sampled;
    if (sampler.parent_based && has_parent)
        return parent_sampled;
    switch (sampler.root) {
    case ROOT_ON: return true;
    case ROOT_OFF: return false;
    case ROOT_RATIO: return ratio_sample(trace_id_hex);
    }
    return false;
}

bool otel_enabled(void)
{
    return atomic_load_explicit(&enabled, memory_order_acquire);
}

/* ---- OTLP/JSON -------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes available), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* A JSON string literal; invalid UTF-8 bytes become U+FFFD. */
static void put_str(struct evbuffer *b, const char *str)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str), run = 0, i = 0;
    evbuffer_add(b, "\"", 1);
    while (i < n) {
        unsigned char c = s[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        size_t seq = c >= 0x80 ? utf8_seq(s + i, n - i) : 0;
        if (seq) {
            i += seq;
            continue;
        }
        evbuffer_add(b, s + run, i - run);
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            evbuffer_add(b, esc, 2);
        } else if (c == '\n') {
            evbuffer_add(b, "\\n", 2);
        } else if (c == '\r') {
            evbuffer_add(b, "\\r", 2);
        } else if (c == '\t') {
            evbuffer_add(b, "\\t", 2);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            evbuffer_add(b, esc, 6);
        } else {
            evbuffer_add(b, "\\ufffd", 6);
        }
        i++;
        run = i;
    }
    evbuffer_add(b, s + run, i - run);
    evbuffer_add(b, "\"", 1);
}

static void put_kv_str(struct evbuffer *b, const char *key, const char *val)
{
    evbuffer_add_printf(b, "{\"key\":");
    put_str(b, key);
    evbuffer_add_printf(b, ",\"value\":{\"stringValue\":");
    put_str(b, val);
    evbuffer_add_printf(b, "}}");
}

static void put_attr(struct evbuffer *b, const qattr_t *a)
{
    evbuffer_add_printf(b, "{\"key\":");
    put_str(b, a->key);
    evbuffer_add_printf(b, ",\"value\":{");
    switch (a->type) {
    case OTEL_ATTR_STRING:
        evbuffer_add_printf(b, "\"stringValue\":");
        put_str(b, a->v.s);
        break;
    case OTEL_ATTR_INT: evbuffer_add_printf(b, "\"intValue\":\"%" PRId64 "\"", a->v.i); break;
    case OTEL_ATTR_BOOL: evbuffer_add_printf(b, "\"boolValue\":%s", a->v.b ? "true" : "false"); break;
    case OTEL_ATTR_DOUBLE:
        if (isnan(a->v.d))
            evbuffer_add_printf(b, "\"doubleValue\":\"NaN\"");
        else if (isinf(a->v.d))
            evbuffer_add_printf(b, "\"doubleValue\":\"%sInfinity\"", a->v.d < 0 ? "-" : "");
        else
            evbuffer_add_printf(b, "\"doubleValue\":%.17g", a->v.d);
        break;
    }
    evbuffer_add_printf(b, "}}");
}

static void put_span(struct evbuffer *b, const qspan_t *s)
{
    evbuffer_add_printf(b, "{\"traceId\":\"%s\",\"spanId\":\"%s\"", s->trace_id, s->span_id);
    if (s->parent_span_id[0])
        evbuffer_add_printf(b, ",\"parentSpanId\":\"%s\"", s->parent_span_id);
    evbuffer_add_printf(b, ",\"name\":");
    put_str(b, s->name);
    evbuffer_add_printf(
        b, ",\"kind\":%d,\"startTimeUnixNano\":\"%" PRId64 "\",\"endTimeUnixNano\":\"%" PRId64 "\",\"attributes\":[",
        s->kind, s->start_ns > 0 ? s->start_ns : 0, s->end_ns > 0 ? s->end_ns : 0);
    for (size_t i = 0; i < s->nattrs; i++) {
        if (i)
            evbuffer_add(b, ",", 1);
        put_attr(b, &s->attrs[i]);
    }
    evbuffer_add_printf(b, "],\"status\":{\"code\":%d", s->status);
    if (s->status_msg) {
        evbuffer_add_printf(b, ",\"message\":");
        put_str(b, s->status_msg);
    }
    evbuffer_add_printf(b, "}}");
}

/* The request body for n spans; frees the spans. */
static struct evbuffer *build_body(qspan_t **spans, size_t n)
{
    ECOM_ASSERT(n <= OTEL_BATCH_MAX);
    struct evbuffer *b = evbuffer_new();
    ECOM_ASSERT(b);
    evbuffer_add(b, set.prefix, strlen(set.prefix));
    for (size_t i = 0; i < n; i++) {
        if (i)
            evbuffer_add(b, ",", 1);
        put_span(b, spans[i]);
        free(spans[i]);
    }
    evbuffer_add_printf(b, "]}]}]}");
    ECOM_ASSERT(evbuffer_get_length(b) <= OTEL_BODY_MAX);
    return b;
}

/* ---- the exporter thread ----------------------------------------------- */

typedef struct exporter {
    struct event_base *base;
    struct evdns_base *dns;
    struct evhttp_connection *conn;
    int wake_rd;
    struct event wake_ev;    /* the pipe: a full batch, or shutdown */
    struct event tick_ev;    /* every schedule_ms */
    struct event timeout_ev; /* bounds the attempt in flight */
    struct event retry_ev;   /* backoff before the next attempt */
    struct event done_ev;    /* activated when an attempt has an outcome */
    struct event stop_ev;    /* the shutdown bound */
    bool events_ready;
    bool stop_armed;
    /* the batch being exported */
    bool busy;
    struct evbuffer *body;
    size_t batch_n;
    int attempt;
    int64_t deadline_ms;
    struct evhttp_request *req; /* in flight; libevent owns it */
    int status;                 /* outcome: HTTP status, 0 connection error, -1 timed out */
    int64_t retry_after_ms;     /* -1: no usable Retry-After */
    int64_t rejected;           /* partial success: spans the collector refused */
} exporter_t;

static exporter_t ex;
static pthread_t ex_thread;
static bool ex_running;

static bool stopping(int64_t *deadline_ms)
{
    pthread_mutex_lock(&qmu);
    bool s = q.stopping;
    if (deadline_ms)
        *deadline_ms = q.stop_deadline_ms;
    pthread_mutex_unlock(&qmu);
    return s;
}

static int64_t backoff_ms(int attempt)
{
    int64_t b = BACKOFF_FIRST_MS;
    for (int i = 1; i < attempt && b < BACKOFF_MAX_MS; i++)
        b *= 2;
    if (b > BACKOFF_MAX_MS)
        b = BACKOFF_MAX_MS;
    uint32_t r;
    random_fast_bytes(&r, sizeof r);
    return b / 2 + (int64_t)(r % (uint32_t)(b / 2 + 1));
}

/* Retry-After: delta-seconds or an HTTP-date; -1 when absent or unreadable. */
static int64_t parse_retry_after(const char *v)
{
    if (!v)
        return -1;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        char *end;
        errno = 0;
        long long s = strtoll(v, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end || errno)
            return errno == ERANGE ? (int64_t)RETRY_AFTER_MAX_S * 1000 : -1;
        return (s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : s) * 1000;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (!end || *end)
        return -1;
    int64_t at = (int64_t)timegm(&tm) * 1000;
    int64_t now = otel_now_ns() / 1000000;
    int64_t d = at - now;
    if (d < 0)
        d = 0;
    return d > (int64_t)RETRY_AFTER_MAX_S * 1000 ? (int64_t)RETRY_AFTER_MAX_S * 1000 : d;
}

/* Spans a 2xx response says it rejected (ExportTraceServiceResponse.partialSuccess). */
static int64_t partial_rejected(struct evbuffer *in, size_t batch_n)
{
    size_t len = evbuffer_get_length(in);
    if (len == 0)
        return 0;
    json_object *o = NULL, *ps, *r;
    const char *why;
    int64_t n = 0;
    if (json_parse_strict((const char *)evbuffer_pullup(in, -1), len, &o, &why) != 0)
        return 0;
    if (json_object_object_get_ex(o, "partialSuccess", &ps) && json_object_object_get_ex(ps, "rejectedSpans", &r)) {
        if (json_object_is_type(r, json_type_string))
            n = strtoll(json_object_get_string(r), NULL, 10);
        else if (json_object_is_type(r, json_type_int))
            n = json_object_get_int64(r);
        const char *msg = json_get_str(ps, "errorMessage");
        if (n > 0) {
            char clean[201];
            size_t k = 0;
            for (const char *p = msg ? msg : ""; *p && k < sizeof clean - 1; p++)
                clean[k++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
            clean[k] = '\0';
            log_warn("otel: collector rejected %" PRId64 " of %zu spans: %s", n, batch_n, clean);
        }
    }
    json_object_put(o);
    if (n < 0)
        n = 0;
    return n > (int64_t)batch_n ? (int64_t)batch_n : n;
}

static void start_batch(exporter_t *x);

static void resp_cb(struct evhttp_request *req, void *arg)
{
    exporter_t *x = arg;
    if (!x->req)
        return; /* the attempt was already given up (timeout) */
    x->req = NULL;
    evtimer_del(&x->timeout_ev);
    x->status = req ? evhttp_request_get_response_code(req) : 0;
    x->retry_after_ms = -1;
    x->rejected = 0;
    if (x->status > 0) {
        x->retry_after_ms = parse_retry_after(evhttp_find_header(evhttp_request_get_input_headers(req), "Retry-After"));
        if (x->status >= 200 && x->status < 300)
            x->rejected = partial_rejected(evhttp_request_get_input_buffer(req), x->batch_n);
    }
    /* decide outside libevent's HTTP callback: it still holds the connection */
    event_active(&x->done_ev, EV_TIMEOUT, 1);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    exporter_t *x = arg;
    if (!x->req)
        return;
    struct evhttp_request *req = x->req;
    x->req = NULL;
    x->status = -1;
    evhttp_cancel_request(req); /* frees req; resp_cb is not called */
    event_active(&x->done_ev, EV_TIMEOUT, 1);
}

static void send_attempt(exporter_t *x)
{
    x->attempt++;
    int64_t left = x->deadline_ms - mono_ms();
    struct evhttp_request *req = left > 0 ? evhttp_request_new(resp_cb, x) : NULL;
    if (!req) {
        x->status = -1;
        event_active(&x->done_ev, EV_TIMEOUT, 1);
        return;
    }
    struct timeval tv = ms_tv(left);
    evhttp_connection_set_timeout_tv(x->conn, &tv);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", set.host_header);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "ecom-otlp-exporter/1.0");
    for (size_t i = 0; i < set.nhdr; i++)
        evhttp_add_header(h, set.hdr_k[i], set.hdr_v[i]);
    size_t len = evbuffer_get_length(x->body);
    evbuffer_add(evhttp_request_get_output_buffer(req), evbuffer_pullup(x->body, -1), len);
    x->req = req;
    evtimer_add(&x->timeout_ev, &tv);
    /* resp_cb may run before this returns (a connect that fails at once) */
    if (evhttp_make_request(x->conn, req, EVHTTP_REQ_POST, set.uri) != 0 && x->req) {
        /* libevent has dropped the request (out of memory or no socket) */
        x->req = NULL;
        evtimer_del(&x->timeout_ev);
        x->status = 0;
        event_active(&x->done_ev, EV_TIMEOUT, 1);
    }
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    send_attempt(arg);
}

static void end_batch(exporter_t *x)
{
    evbuffer_free(x->body);
    x->body = NULL;
    x->busy = false;
    if (stopping(NULL) || atomic_load_explicit(&qlen, memory_order_relaxed) >= set.batch_max)
        start_batch(x);
}

static const char *status_text(int status, char *buf, size_t n)
{
    if (status == 0)
        return "connection error";
    if (status < 0)
        return "export timeout";
    snprintf(buf, n, "HTTP %d", status);
    return buf;
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    exporter_t *x = arg;
    int st = x->status;
    char buf[32];
    if (st >= 200 && st < 300) {
        metrics_add(m_exported, x->batch_n - (size_t)x->rejected);
        atomic_store(&drop_warned, false);
        end_batch(x);
        return;
    }
    bool retryable = st == 0 || st == 429 || st == 502 || st == 503 || st == 504;
    if (retryable && x->attempt < MAX_ATTEMPTS) {
        int64_t delay = x->retry_after_ms >= 0 ? x->retry_after_ms : backoff_ms(x->attempt);
        if (mono_ms() + delay < x->deadline_ms) {
            log_debug("otel: export of %zu spans: %s, retry %d in %" PRId64 " ms", x->batch_n,
                      status_text(st, buf, sizeof buf), x->attempt, delay);
            struct timeval tv = ms_tv(delay);
            evtimer_add(&x->retry_ev, &tv);
            return;
        }
    }
    metrics_add(m_failures, 1);
    log_warn("otel: export of %zu spans to %s failed: %s after %d attempt(s)", x->batch_n, set.url,
             status_text(st, buf, sizeof buf), x->attempt);
    end_batch(x);
}

static void start_batch(exporter_t *x)
{
    if (x->busy)
        return;
    qspan_t *batch[OTEL_BATCH_MAX];
    size_t n = queue_take(batch, set.batch_max);
    if (n == 0) {
        if (stopping(NULL))
            event_base_loopbreak(x->base);
        return;
    }
    x->busy = true;
    x->body = build_body(batch, n);
    x->batch_n = n;
    x->attempt = 0;
    x->deadline_ms = mono_ms() + set.export_timeout_ms;
    send_attempt(x);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    exporter_t *x = arg;
    if (!x->busy && atomic_load_explicit(&qlen, memory_order_relaxed) > 0)
        start_batch(x);
}

/* The shutdown bound ran out: abandon the batch in flight; otel_shutdown
 * counts what is still queued as dropped. */
static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    exporter_t *x = arg;
    if (x->busy) {
        if (x->req) {
            struct evhttp_request *req = x->req;
            x->req = NULL;
            evhttp_cancel_request(req);
        }
        evtimer_del(&x->timeout_ev);
        evtimer_del(&x->retry_ev);
        event_del(&x->done_ev);
        metrics_add(m_failures, 1);
        log_warn("otel: shutdown bound reached; abandoning a batch of %zu spans", x->batch_n);
        evbuffer_free(x->body);
        x->body = NULL;
        x->busy = false;
    }
    event_base_loopbreak(x->base);
}

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    exporter_t *x = arg;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    int64_t deadline;
    bool stop = stopping(&deadline);
    if (stop && !x->stop_armed) {
        x->stop_armed = true;
        struct timeval tv = ms_tv(deadline - mono_ms());
        evtimer_add(&x->stop_ev, &tv);
    }
    if (!x->busy && (stop || atomic_load_explicit(&qlen, memory_order_relaxed) >= set.batch_max))
        start_batch(x);
}

static void *exporter_main(void *arg)
{
    exporter_t *x = arg;
    log_set_role("otel");
    event_base_dispatch(x->base);
    return NULL;
}

static void exporter_free(exporter_t *x)
{
    if (x->events_ready) {
        event_del(&x->wake_ev);
        event_del(&x->tick_ev);
        event_del(&x->timeout_ev);
        event_del(&x->retry_ev);
        event_del(&x->done_ev);
        event_del(&x->stop_ev);
    }
    if (x->conn)
        evhttp_connection_free(x->conn);
    if (x->dns)
        evdns_base_free(x->dns, 0);
    if (x->base)
        event_base_free(x->base);
    if (x->body)
        evbuffer_free(x->body);
    if (x->wake_rd >= 0)
        close(x->wake_rd);
    memset(x, 0, sizeof *x);
    x->wake_rd = -1;
}

static int exporter_start(exporter_t *x, errlist_t *e)
{
    memset(x, 0, sizeof *x);
    x->wake_rd = -1;
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        errlist_add(e, "otel: pipe: %s", strerror(errno));
        return -1;
    }
    x->wake_rd = fds[0];
    q.wake_wr = fds[1];
    /* precise timers: a Retry-After of N seconds must never fire early */
    struct event_config *ec = event_config_new();
    if (ec) {
        event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
        x->base = event_base_new_with_config(ec);
        event_config_free(ec);
    }
    if (!x->base) {
        errlist_add(e, "otel: cannot create an event base");
        return -1;
    }
    if (set.resolve) {
        x->dns = evdns_base_new(x->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        if (!x->dns) {
            errlist_add(e, "otel: cannot read the resolver configuration to resolve '%s'", set.host);
            return -1;
        }
    }
    x->conn = evhttp_connection_base_new(x->base, x->dns, set.host, (ev_uint16_t)set.port);
    if (!x->conn) {
        errlist_add(e, "otel: cannot create an HTTP connection to %s", set.url);
        return -1;
    }
    evhttp_connection_set_retries(x->conn, 0);
    evhttp_connection_set_max_body_size(x->conn, RESPONSE_BODY_MAX);
    evhttp_connection_set_max_headers_size(x->conn, RESPONSE_HEADERS_MAX);
    event_assign(&x->wake_ev, x->base, x->wake_rd, EV_READ | EV_PERSIST, wake_cb, x);
    event_assign(&x->tick_ev, x->base, -1, EV_PERSIST, tick_cb, x);
    evtimer_assign(&x->timeout_ev, x->base, timeout_cb, x);
    evtimer_assign(&x->retry_ev, x->base, retry_cb, x);
    evtimer_assign(&x->done_ev, x->base, done_cb, x);
    evtimer_assign(&x->stop_ev, x->base, stop_cb, x);
    x->events_ready = true;
    struct timeval tick = ms_tv(set.schedule_ms);
    event_add(&x->wake_ev, NULL);
    evtimer_add(&x->tick_ev, &tick);

    /* the thread takes no signals: they stay with the process's main thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&ex_thread, NULL, exporter_main, x);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        errlist_add(e, "otel: cannot start the exporter thread: %s", strerror(rc));
        return -1;
    }
    ex_running = true;
    return 0;
}

/* ---- configuration ----------------------------------------------------- */

typedef struct kv {
    char **k, **v;
    size_t n;
} kv_t;

static void kv_free(kv_t *kv)
{
    for (size_t i = 0; i < kv->n; i++) {
        free(kv->k[i]);
        free(kv->v[i]);
    }
    free(kv->k);
    free(kv->v);
    memset(kv, 0, sizeof *kv);
}

static void kv_put(kv_t *kv, char *k, char *v)
{
    for (size_t i = 0; i < kv->n; i++)
        if (strcmp(kv->k[i], k) == 0) { /* a repeated key: the last one wins */
            free(kv->k[i]);
            free(kv->v[i]);
            kv->k[i] = k;
            kv->v[i] = v;
            return;
        }
    kv->k = xrealloc(kv->k, (kv->n + 1) * sizeof *kv->k);
    kv->v = xrealloc(kv->v, (kv->n + 1) * sizeof *kv->v);
    kv->k[kv->n] = k;
    kv->v[kv->n] = v;
    kv->n++;
}

/* Percent-decodes n bytes of s into a new string (owned); NULL on a bad escape. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[k++] = s[i];
            continue;
        }
        if (i + 2 >= n) {
            free(out);
            return NULL;
        }
        int a = hex_digit((unsigned char)s[i + 1]), b = hex_digit((unsigned char)s[i + 2]);
        if (a < 0 || b < 0) {
            free(out);
            return NULL;
        }
        out[k++] = (char)(a << 4 | b);
        i += 2;
    }
    out[k] = '\0';
    return out;
}

static void trim(const char **s, size_t *n)
{
    while (*n && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* "k=v,k2=v2": blanks around keys and values dropped, values percent-decoded,
 * empty entries skipped. Problems name the entry by position, never by value
 * (header values are often credentials). */
static void kv_parse(const char *name, const char *s, kv_t *out, errlist_t *e)
{
    int entry = 0;
    for (const char *p = s; p;) {
        const char *comma = strchr(p, ',');
        const char *it = p;
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        p = comma ? comma + 1 : NULL;
        trim(&it, &n);
        if (n == 0)
            continue;
        entry++;
        const char *eq = memchr(it, '=', n);
        if (!eq) {
            errlist_add(e, "%s: entry %d is not key=value", name, entry);
            continue;
        }
        const char *k = it, *v = eq + 1;
        size_t kn = (size_t)(eq - it), vn = n - kn - 1;
        trim(&k, &kn);
        trim(&v, &vn);
        if (kn == 0) {
            errlist_add(e, "%s: entry %d has an empty key", name, entry);
            continue;
        }
        char *val = pct_decode(v, vn);
        if (!val) {
            errlist_add(e, "%s: entry %d has an invalid percent-encoding in its value", name, entry);
            continue;
        }
        kv_put(out, xstrndup(k, kn), val);
    }
}

static bool http_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

static void parse_headers(const config_t *cfg, settings_t *s, errlist_t *e)
{
    const char *name = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    const char *v = config_raw(cfg, name);
    if (!v || !*v) {
        name = "OTEL_EXPORTER_OTLP_HEADERS";
        v = config_raw(cfg, name);
    }
    if (!v || !*v)
        return;
    static const char *const reserved[] = {"host", "content-type", "content-length", "transfer-encoding", "connection"};
    kv_t kv = {0};
    kv_parse(name, v, &kv, e);
    if (kv.n > MAX_HEADERS)
        errlist_add(e, "%s: %zu headers; at most %d are allowed", name, kv.n, MAX_HEADERS);
    for (size_t i = 0; i < kv.n; i++) {
        bool ok = true;
        if (!http_token(kv.k[i])) {
            errlist_add(e, "%s: '%.64s' is not a valid header name", name, kv.k[i]);
            ok = false;
        }
        for (size_t r = 0; ok && r < ECOM_ARRAY_LEN(reserved); r++)
            if (strcasecmp(kv.k[i], reserved[r]) == 0) {
                errlist_add(e, "%s: '%s' is set by the exporter and cannot be overridden", name, kv.k[i]);
                ok = false;
            }
        size_t vl = strlen(kv.v[i]);
        if (vl > HEADER_VALUE_MAX) {
            errlist_add(e, "%s: the value of '%.64s' is longer than %d bytes", name, kv.k[i], HEADER_VALUE_MAX);
            ok = false;
        }
        for (size_t c = 0; ok && c < vl; c++) {
            unsigned char ch = (unsigned char)kv.v[i][c];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
                errlist_add(e, "%s: the value of '%.64s' contains a control character", name, kv.k[i]);
                ok = false;
            }
        }
    }
    s->hdr_k = kv.k;
    s->hdr_v = kv.v;
    s->nhdr = kv.n;
}

static void parse_resource(const config_t *cfg, settings_t *s, errlist_t *e)
{
    const char *attrs = config_raw(cfg, "OTEL_RESOURCE_ATTRIBUTES");
    const char *svc = config_raw(cfg, "OTEL_SERVICE_NAME");
    kv_t kv = {0};
    if (attrs && *attrs)
        kv_parse("OTEL_RESOURCE_ATTRIBUTES", attrs, &kv, e);
    size_t input = (attrs ? strlen(attrs) : 0) + (svc ? strlen(svc) : 0);
    if (input > RESOURCE_INPUT_MAX)
        errlist_add(e, "OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME: %zu bytes together; at most %d", input,
                    RESOURCE_INPUT_MAX);
    if (kv.n + 1 > RESOURCE_ATTRS_MAX)
        errlist_add(e, "OTEL_RESOURCE_ATTRIBUTES: %zu attributes; at most %d", kv.n, RESOURCE_ATTRS_MAX - 1);
    const char *service = "unknown_service";
    if (svc && *svc)
        service = svc;
    else
        for (size_t i = 0; i < kv.n; i++)
            if (strcmp(kv.k[i], "service.name") == 0 && kv.v[i][0])
                service = kv.v[i];
    struct evbuffer *b = evbuffer_new();
    ECOM_ASSERT(b);
    evbuffer_add_printf(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    put_kv_str(b, "service.name", service);
    for (size_t i = 0; i < kv.n; i++) {
        if (strcmp(kv.k[i], "service.name") == 0)
            continue;
        evbuffer_add(b, ",", 1);
        put_kv_str(b, kv.k[i], kv.v[i]);
    }
    evbuffer_add_printf(b, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"ecom\"},\"spans\":[");
    size_t len = evbuffer_get_length(b);
    s->prefix = xmalloc(len + 1);
    evbuffer_remove(b, s->prefix, len);
    s->prefix[len] = '\0';
    evbuffer_free(b);
    kv_free(&kv);
}

static void parse_sampler(const config_t *cfg, errlist_t *e)
{
    static const struct {
        const char *name;
        bool parent_based;
        root_t root;
    } names[] = {
        {"always_on", false, ROOT_ON},
        {"always_off", false, ROOT_OFF},
        {"traceidratio", false, ROOT_RATIO},
        {"parentbased_always_on", true, ROOT_ON},
        {"parentbased_always_off", true, ROOT_OFF},
        {"parentbased_traceidratio", true, ROOT_RATIO},
    };
    const char *v = config_raw(cfg, "OTEL_TRACES_SAMPLER");
    if (!v || !*v)
        v = "parentbased_always_on";
    size_t i;
    for (i = 0; i < ECOM_ARRAY_LEN(names); i++)
        if (strcasecmp(v, names[i].name) == 0)
            break;
    if (i == ECOM_ARRAY_LEN(names)) {
        errlist_add(e,
                    "OTEL_TRACES_SAMPLER: '%.64s' is not one of always_on, always_off, traceidratio, "
                    "parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
                    v);
        return;
    }
    sampler.parent_based = names[i].parent_based;
    sampler.root = names[i].root;
    sampler.ratio = 1.0;
    sampler.bound = UINT64_MAX;
    if (sampler.root != ROOT_RATIO)
        return;
    const char *arg = config_raw(cfg, "OTEL_TRACES_SAMPLER_ARG");
    if (arg && *arg) {
        char *end;
        errno = 0;
        double r = strtod(arg, &end);
        if (end == arg || *end || errno || !isfinite(r) || r < 0.0 || r > 1.0) {
            errlist_add(e, "OTEL_TRACES_SAMPLER_ARG: '%.64s' is not a ratio between 0 and 1", arg);
            return;
        }
        sampler.ratio = r;
    }
    if (sampler.ratio > 0.0 && sampler.ratio < 1.0)
        sampler.bound = (uint64_t)(sampler.ratio * 18446744073709551616.0); /* ratio * 2^64 < 2^64 */
    else
        sampler.bound = sampler.ratio <= 0.0 ? 0 : UINT64_MAX;
}

static void parse_long(const config_t *cfg, const char *name, long def, long min, long max, long *out, errlist_t *e)
{
    const char *v = config_raw(cfg, name);
    *out = def;
    if (!v || !*v)
        return;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end || errno)
        errlist_add(e, "%s: '%.64s' is not an integer", name, v);
    else if (n < min || n > max)
        errlist_add(e, "%s: %ld is outside %ld..%ld", name, n, min, max);
    else
        *out = n;
}

/* The endpoint URL: http://host[:port][/path][?query]. */
static void parse_endpoint(const char *name, const char *url, settings_t *s, errlist_t *e)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    if (!u || !scheme || !host || !*host) {
        errlist_add(e, "%s: '%.128s' is not an absolute http:// URL", name, url);
        goto out;
    }
    if (strcasecmp(scheme, "https") == 0) {
        errlist_add(e,
                    "%s: https endpoints are not supported: this build has no TLS client; point it at an "
                    "http:// collector or agent (e.g. a local OpenTelemetry Collector that forwards over TLS)",
                    name);
        goto out;
    }
    if (strcasecmp(scheme, "http") != 0) {
        errlist_add(e, "%s: scheme '%.16s' is not supported; use http://", name, scheme);
        goto out;
    }
    if (evhttp_uri_get_userinfo(u)) {
        errlist_add(e, "%s: credentials in the URL are not supported; use OTEL_EXPORTER_OTLP_HEADERS", name);
        goto out;
    }
    int port = evhttp_uri_get_port(u);
    if (port == 0) {
        errlist_add(e, "%s: port 0 is not valid", name);
        goto out;
    }
    size_t hl = strlen(host);
    bool v6 = host[0] == '[' && hl > 2 && host[hl - 1] == ']';
    char *bare = v6 ? xstrndup(host + 1, hl - 2) : xstrdup(host);
    unsigned char addr[16];
    bool literal = inet_pton(AF_INET, bare, addr) == 1 || inet_pton(AF_INET6, bare, addr) == 1;
    if (strcasecmp(bare, "localhost") == 0) {
        free(bare);
        bare = xstrdup("127.0.0.1");
        literal = true;
    }
    s->host = bare;
    s->resolve = !literal;
    s->port = port > 0 ? port : 80;
    s->host_header = port > 0 ? xasprintf("%s:%d", host, port) : xstrdup(host);
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    s->uri = xasprintf("%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");
    s->url = xstrdup(url);
out:
    if (u)
        evhttp_uri_free(u);
}

/* ---- init / shutdown --------------------------------------------------- */

int otel_init(const config_t *cfg, char **err)
{
    *err = NULL;
    errlist_t e = {0};
    if (atomic_load(&enabled) || ex_running) {
        *err = xstrdup("otel: already initialised; call otel_shutdown first\n");
        return -1;
    }
    memset(&sampler, 0, sizeof sampler);
    settings_free(&set);

    const char *disabled = config_raw(cfg, "OTEL_SDK_DISABLED");
    if (disabled && strcasecmp(disabled, "true") == 0)
        return 0;
    if (disabled && *disabled && strcasecmp(disabled, "false") != 0)
        log_warn("otel: OTEL_SDK_DISABLED='%.32s' is neither true nor false; treated as false", disabled);

    parse_sampler(cfg, &e);
    parse_resource(cfg, &set, &e);
    parse_headers(cfg, &set, &e);
    long schedule, timeout, queue, batch;
    parse_long(cfg, "OTEL_BSP_SCHEDULE_DELAY", 5000, 1, 3600000, &schedule, &e);
    parse_long(cfg, "OTEL_BSP_EXPORT_TIMEOUT", 30000, 1, 600000, &timeout, &e);
    parse_long(cfg, "OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1, 1 << 20, &queue, &e);
    parse_long(cfg, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", OTEL_BATCH_MAX, 1, OTEL_BATCH_MAX, &batch, &e);
    if (batch > queue)
        errlist_add(&e, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: %ld is larger than OTEL_BSP_MAX_QUEUE_SIZE (%ld)", batch,
                    queue);
    set.schedule_ms = schedule;
    set.export_timeout_ms = timeout;
    set.queue_max = (size_t)queue;
    set.batch_max = (size_t)batch;

    const char *traces = cfg->otel_traces_endpoint, *base = cfg->otel_endpoint;
    if (traces && *traces) {
        parse_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces, &set, &e);
    } else if (base && *base) {
        size_t n = strlen(base);
        while (n && base[n - 1] == '/')
            n--;
        char *url = xasprintf("%.*s/v1/traces", (int)n, base);
        parse_endpoint("OTEL_EXPORTER_OTLP_ENDPOINT", url, &set, &e);
        free(url);
    }
    if (e.s) {
        settings_free(&set);
        *err = e.s;
        return -1;
    }
    if (!set.url) { /* no endpoint: export stays off */
        settings_free(&set);
        return 0;
    }

    m_exported = metrics_counter("ecom_otel_spans_exported_total", "Spans accepted by the OTLP collector", "");
    m_dropped = metrics_counter("ecom_otel_spans_dropped_total",
                                "Spans dropped before export (queue full, invalid, shutdown)", "");
    m_failures = metrics_counter("ecom_otel_export_failures_total", "OTLP export batches given up on", "");
    atomic_store(&drop_warned, false);

    pthread_mutex_lock(&qmu);
    q.slot = xcalloc(set.queue_max, sizeof *q.slot);
    q.cap = set.queue_max;
    q.batch = set.batch_max;
    q.head = q.count = 0;
    q.stopping = false;
    q.stop_deadline_ms = 0;
    pthread_mutex_unlock(&qmu);
    atomic_store(&qlen, 0);
    atomic_store(&qcap, set.queue_max);

    if (exporter_start(&ex, &e) != 0) {
        exporter_free(&ex);
        pthread_mutex_lock(&qmu);
        if (q.wake_wr >= 0)
            close(q.wake_wr);
        q.wake_wr = -1;
        free(q.slot);
        q.slot = NULL;
        q.cap = 0;
        pthread_mutex_unlock(&qmu);
        settings_free(&set);
        *err = e.s;
        return -1;
    }
    pthread_mutex_lock(&qmu);
    q.open = true;
    pthread_mutex_unlock(&qmu);
    atomic_store_explicit(&enabled, true, memory_order_release);
    log_info("otel: exporting traces to %s (batch %zu, every %" PRId64 " ms, queue %zu)", set.url, set.batch_max,
             set.schedule_ms, set.queue_max);
    return 0;
}

void otel_shutdown(void)
{
    atomic_store_explicit(&enabled, false, memory_order_release);
    if (!ex_running) {
        settings_free(&set);
        return;
    }
    pthread_mutex_lock(&qmu);
    q.open = false;
    q.stopping = true;
    q.stop_deadline_ms = mono_ms() + set.export_timeout_ms;
    ssize_t w = write(q.wake_wr, "s", 1);
    (void)w;
    pthread_mutex_unlock(&qmu);

    pthread_join(ex_thread, NULL);
    ex_running = false;
    exporter_free(&ex);

    pthread_mutex_lock(&qmu);
    size_t left = q.count;
    for (size_t i = 0; i < q.count; i++)
        free(q.slot[(q.head + i) % q.cap]);
    free(q.slot);
    q.slot = NULL;
    q.cap = q.head = q.count = 0;
    q.stopping = false;
    close(q.wake_wr);
    q.wake_wr = -1;
    pthread_mutex_unlock(&qmu);
    atomic_store(&qlen, 0);
    if (left) {
        metrics_add(m_dropped, left);
        log_warn("otel: %zu spans still queued at shutdown were dropped", left);
    }
    settings_free(&set);
}
