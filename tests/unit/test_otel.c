/* tests/unit/test_otel.c: the OTLP/HTTP JSON trace exporter against a fake
 * collector (an evhttp server on 127.0.0.1 in its own thread that records every
 * request and answers a scripted sequence of statuses), and the sampler. */
#include "core/otel.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/metrics.h"
#include "core/uuid.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <json-c/json.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- the fake collector ------------------------------------------------- */

#define COL_MAX_REQ 64
#define COL_MAX_SCRIPT 16

typedef struct creq {
    char *path;
    char **hk, **hv;
    size_t nh;
    char *body;
    size_t len;
    int64_t at_us; /* monotonic arrival time */
} creq_t;

typedef struct step {
    int status;
    const char *retry_after; /* NULL: no header */
    const char *body;        /* NULL: {} */
} step_t;

static struct {
    pthread_t thread;
    struct event_base *base;
    struct evhttp *http;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    creq_t req[COL_MAX_REQ];
    size_t n;
    step_t script[COL_MAX_SCRIPT];
    size_t nscript, next;
} col = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_collect(struct evhttp_request *req, void *arg)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    pthread_mutex_lock(&col.mu);
    step_t step = {200, NULL, NULL};
    if (col.next < col.nscript)
        step = col.script[col.next++];
    if (col.n < COL_MAX_REQ) {
        creq_t *r = &col.req[col.n];
        r->path = xstrdup(evhttp_request_get_uri(req));
        r->body = xmalloc(len + 1);
        evbuffer_copyout(in, r->body, len);
        r->body[len] = '\0';
        r->len = len;
        r->at_us = now_us();
        struct evkeyval *h;
        TAILQ_FOREACH(h, evhttp_request_get_input_headers(req), next)
        {
            r->hk = xrealloc(r->hk, (r->nh + 1) * sizeof *r->hk);
            r->hv = xrealloc(r->hv, (r->nh + 1) * sizeof *r->hv);
            r->hk[r->nh] = xstrdup(h->key);
            r->hv[r->nh] = xstrdup(h->value);
            r->nh++;
        }
        col.n++;
    }
    pthread_cond_broadcast(&col.cv);
    pthread_mutex_unlock(&col.mu);
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "%s", step.body ? step.body : "{}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    if (step.retry_after)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", step.retry_after);
    evhttp_send_reply(req, step.status, "Scripted", out);
    evbuffer_free(out);
}

static void *collector_main(void *arg)
{
    event_base_dispatch(col.base);
    return NULL;
}

static void collector_clear(void)
{
    for (size_t i = 0; i < col.n; i++) {
        creq_t *r = &col.req[i];
        free(r->path);
        free(r->body);
        for (size_t j = 0; j < r->nh; j++) {
            free(r->hk[j]);
            free(r->hv[j]);
        }
        free(r->hk);
        free(r->hv);
        memset(r, 0, sizeof *r);
    }
    col.n = 0;
}

/* Forgets recorded requests and installs a script (steps, then 200s). */
static void collector_reset(const step_t *steps, size_t n)
{
    pthread_mutex_lock(&col.mu);
    collector_clear();
    for (size_t i = 0; i < n && i < COL_MAX_SCRIPT; i++)
        col.script[i] = steps[i];
    col.nscript = n;
    col.next = 0;
    pthread_mutex_unlock(&col.mu);
}

/* Waits until at least n requests arrived or timeout_ms passed; returns the count. */
static size_t collector_wait(size_t n, int timeout_ms)
{
    struct timespec dl;
    clock_deadline(&dl, CLOCK_REALTIME, timeout_ms);
    pthread_mutex_lock(&col.mu);
    while (col.n < n && pthread_cond_timedwait(&col.cv, &col.mu, &dl) == 0)
        ;
    size_t got = col.n;
    pthread_mutex_unlock(&col.mu);
    return got;
}

static size_t collector_count(void)
{
    pthread_mutex_lock(&col.mu);
    size_t n = col.n;
    pthread_mutex_unlock(&col.mu);
    return n;
}

/* Borrowed; valid until the next reset (the exporter is stopped when tests read it). */
static const char *req_header(size_t i, const char *name)
{
    for (size_t j = 0; j < col.req[i].nh; j++)
        if (strcasecmp(col.req[i].hk[j], name) == 0)
            return col.req[i].hv[j];
    return NULL;
}

static int collector_start(void)
{
    evthread_use_pthreads();
    col.base = event_base_new();
    col.http = evhttp_new(col.base);
    evhttp_set_gencb(col.http, on_collect, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(col.http, "127.0.0.1", 0);
    if (!bs)
        return -1;
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &sl) != 0)
        return -1;
    col.port = ntohs(sin.sin_port);
    return pthread_create(&col.thread, NULL, collector_main, NULL) == 0 ? 0 : -1;
}

static int collector_stop(void)
{
    otel_shutdown();
    event_base_loopbreak(col.base);
    pthread_join(col.thread, NULL);
    evhttp_free(col.http);
    event_base_free(col.base);
    pthread_mutex_lock(&col.mu);
    collector_clear();
    pthread_mutex_unlock(&col.mu);
    return 0;
}

/* A loopback socket on a free port: listening (a collector that accepts
 * connections but never answers) or closed (nothing listens). Returns the port;
 * *fd is the listening socket (caller closes) or -1. */
static int loopback_port(bool listening, int *fd)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    CU_ASSERT_FATAL(bind(s, (struct sockaddr *)&sin, sizeof sin) == 0);
    CU_ASSERT_FATAL(getsockname(s, (struct sockaddr *)&sin, &sl) == 0);
    if (listening) {
        CU_ASSERT_FATAL(listen(s, 16) == 0);
        *fd = s;
    } else {
        close(s);
        *fd = -1;
    }
    return ntohs(sin.sin_port);
}

/* ---- helpers --------------------------------------------------------------- */

static const char *const otel_vars[] = {
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
};

/* Sets exactly the given OTEL_* variables (NULL-terminated name, value pairs),
 * loads the configuration and calls otel_init. *err as otel_init. */
static int start_otel(char **err, ...)
{
    for (size_t i = 0; i < ECOM_ARRAY_LEN(otel_vars); i++)
        unsetenv(otel_vars[i]);
    va_list ap;
    va_start(ap, err);
    for (const char *k; (k = va_arg(ap, const char *));)
        setenv(k, va_arg(ap, const char *), 1);
    va_end(ap);
    config_t cfg;
    char *cerr = NULL;
    int rc = config_load(&cfg, NULL, CFG_ROLE_TOOL, &cerr);
    CU_ASSERT_EQUAL(rc, 0);
    if (cerr)
        fprintf(stderr, "config: %s", cerr);
    free(cerr);
    *err = NULL;
    if (rc == 0)
        rc = otel_init(&cfg, err);
    config_free(&cfg);
    return rc;
}

/* head:port tail, in one of a few rotating static buffers. */
static char *url(const char *head, int port, const char *tail)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s:%d%s", head, port, tail);
    return b;
}

/* Starts export to the collector at path /v1/traces with extra variables. */
#define START(...)                                                                                                     \
    do {                                                                                                               \
        char *err_ = NULL;                                                                                             \
        int rc_ =                                                                                                      \
            start_otel(&err_, "OTEL_EXPORTER_OTLP_ENDPOINT", url("http://127.0.0.1", col.port, ""), __VA_ARGS__);      \
        if (err_)                                                                                                      \
            fprintf(stderr, "otel_init: %s", err_);                                                                    \
        free(err_);                                                                                                    \
        CU_ASSERT_EQUAL_FATAL(rc_, 0);                                                                                 \
        CU_ASSERT_TRUE_FATAL(otel_enabled());                                                                          \
    } while (0)

static uint64_t counter(const char *name)
{
    return metrics_value(metrics_counter(name, "", ""));
}

#define EXPORTED() counter("ecom_otel_spans_exported_total")
#define DROPPED() counter("ecom_otel_spans_dropped_total")
#define FAILURES() counter("ecom_otel_export_failures_total")

static void make_span(otel_span_t *s, const char *name)
{
    memset(s, 0, sizeof *s);
    random_fast_hex(s->trace_id, 16);
    random_fast_hex(s->span_id, 8);
    s->name = name;
    s->kind = OTEL_KIND_SERVER;
    s->start_ns = otel_now_ns();
    s->end_ns = s->start_ns + 1500000;
    s->status = OTEL_STATUS_OK;
}

static void send_spans(int n)
{
    for (int i = 0; i < n; i++) {
        otel_span_t s;
        make_span(&s, "GET /x");
        otel_span_end(&s);
    }
}

/* Parsed body of request i (owned; json_object_put). */
static json_object *req_json(size_t i)
{
    json_object *o = json_tokener_parse(col.req[i].body);
    CU_ASSERT_PTR_NOT_NULL(o);
    return o;
}

static json_object *path_get(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!o || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

static json_object *idx(json_object *a, size_t i)
{
    if (!a || !json_object_is_type(a, json_type_array) || i >= json_object_array_length(a))
        return NULL;
    return json_object_array_get_idx(a, i);
}

static json_object *spans_of(json_object *root)
{
    return path_get(idx(path_get(idx(path_get(root, "resourceSpans"), 0), "scopeSpans"), 0), "spans");
}

static size_t span_count(size_t i)
{
    json_object *o = req_json(i);
    json_object *spans = spans_of(o);
    size_t n = spans ? json_object_array_length(spans) : 0;
    json_object_put(o);
    return n;
}

/* The value object of attribute key in an attributes array, or NULL. */
static json_object *attr_value(json_object *attrs, const char *key)
{
    for (size_t i = 0; attrs && i < json_object_array_length(attrs); i++) {
        json_object *a = json_object_array_get_idx(attrs, i);
        json_object *k = path_get(a, "key");
        if (k && strcmp(json_object_get_string(k), key) == 0)
            return path_get(a, "value");
    }
    return NULL;
}

static const char *resource_str(json_object *root, const char *key)
{
    json_object *attrs = path_get(path_get(idx(path_get(root, "resourceSpans"), 0), "resource"), "attributes");
    json_object *s = path_get(attr_value(attrs, key), "stringValue");
    return s ? json_object_get_string(s) : NULL;
}

static bool is_hex(const char *s, size_t n)
{
    if (!s || strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdef", s[i]))
            return false;
    return true;
}

static bool is_decimal(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* ---- tests: activation and endpoints ----------------------------------- */

static void test_inactive_without_endpoint(void)
{
    collector_reset(NULL, 0);
    uint64_t d0 = DROPPED(), e0 = EXPORTED();
    char *err = NULL;
    ASSERT_OK(start_otel(&err, "OTEL_SERVICE_NAME", "svc", NULL));
    CU_ASSERT_PTR_NULL(err);
    CU_ASSERT_FALSE(otel_enabled());
    send_spans(10);
    /* without export the parent's flag is kept and roots are not sampled */
    CU_ASSERT_TRUE(otel_should_sample("4bf92f3577b34da6a3ce929d0e0e4736", true, true));
    CU_ASSERT_FALSE(otel_should_sample("4bf92f3577b34da6a3ce929d0e0e4736", true, false));
    CU_ASSERT_FALSE(otel_should_sample("4bf92f3577b34da6a3ce929d0e0e4736", false, false));
    otel_shutdown();
    CU_ASSERT_EQUAL(DROPPED(), d0);
    CU_ASSERT_EQUAL(EXPORTED(), e0);

    /* OTEL_SDK_DISABLED=true wins over a configured endpoint */
    ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", url("http://127.0.0.1", col.port, ""),
                         "OTEL_SDK_DISABLED", "TRUE", NULL));
    CU_ASSERT_FALSE(otel_enabled());
    send_spans(3);
    otel_shutdown();
    CU_ASSERT_EQUAL(collector_wait(1, 300), 0);
    CU_ASSERT_EQUAL(EXPORTED(), e0);
}

static void test_traces_endpoint_used_as_given(void)
{
    collector_reset(NULL, 0);
    char *err = NULL;
    ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                         url("http://127.0.0.1", col.port, "/custom/traces?tenant=a"), "OTEL_EXPORTER_OTLP_ENDPOINT",
                         "http://127.0.0.1:1", NULL));
    CU_ASSERT_TRUE_FATAL(otel_enabled());
    send_spans(1);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    CU_ASSERT_STRING_EQUAL(col.req[0].path, "/custom/traces?tenant=a");
    CU_ASSERT_STRING_EQUAL(req_header(0, "Content-Type"), "application/json");
    CU_ASSERT_STRING_EQUAL(req_header(0, "Host"), url("127.0.0.1", col.port, ""));
}

static void test_base_endpoint_gets_v1_traces(void)
{
    const char *heads[] = {"http://127.0.0.1", "http://localhost", "http://127.0.0.1"};
    const char *tails[] = {"", "/", "/otlp"};
    const char *paths[] = {"/v1/traces", "/v1/traces", "/otlp/v1/traces"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(heads); i++) {
        collector_reset(NULL, 0);
        char *err = NULL;
        ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", url(heads[i], col.port, tails[i]), NULL));
        send_spans(1);
        otel_shutdown();
        CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
        CU_ASSERT_STRING_EQUAL(col.req[0].path, paths[i]);
    }
}

static void test_headers_added(void)
{
    collector_reset(NULL, 0);
    START("OTEL_EXPORTER_OTLP_HEADERS", "api-key=secret%20value, x-tenant = t1 ,", NULL);
    send_spans(1);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    CU_ASSERT_STRING_EQUAL(req_header(0, "api-key"), "secret value");
    CU_ASSERT_STRING_EQUAL(req_header(0, "x-tenant"), "t1");
    CU_ASSERT_STRING_EQUAL(req_header(0, "Content-Type"), "application/json");

    /* the traces-specific variable replaces the generic one */
    collector_reset(NULL, 0);
    START("OTEL_EXPORTER_OTLP_HEADERS", "api-key=generic", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-only=1", NULL);
    send_spans(1);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    CU_ASSERT_STRING_EQUAL(req_header(0, "x-only"), "1");
    CU_ASSERT_PTR_NULL(req_header(0, "api-key"));
}

static void test_service_name_precedence(void)
{
    struct {
        const char *svc, *attrs, *want;
    } cases[] = {
        {NULL, NULL, "unknown_service"},
        {NULL, "service.name=from-attrs,deployment.environment=prod%2Ceu", "from-attrs"},
        {"from-env", "service.name=from-attrs,deployment.environment=prod%2Ceu", "from-env"},
        {"from-env", NULL, "from-env"},
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(cases); i++) {
        collector_reset(NULL, 0);
        START(cases[i].svc ? "OTEL_SERVICE_NAME" : "OTEL_SDK_DISABLED", cases[i].svc ? cases[i].svc : "false",
              "OTEL_RESOURCE_ATTRIBUTES", cases[i].attrs ? cases[i].attrs : "", NULL);
        send_spans(1);
        otel_shutdown();
        CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
        json_object *o = req_json(0);
        const char *got = resource_str(o, "service.name");
        CU_ASSERT_PTR_NOT_NULL(got);
        if (got)
            CU_ASSERT_STRING_EQUAL(got, cases[i].want);
        json_object *attrs = path_get(path_get(idx(path_get(o, "resourceSpans"), 0), "resource"), "attributes");
        size_t named = 0;
        for (size_t j = 0; attrs && j < json_object_array_length(attrs); j++)
            named += strcmp(json_object_get_string(path_get(idx(attrs, j), "key")), "service.name") == 0;
        CU_ASSERT_EQUAL(named, 1); /* service.name appears exactly once */
        if (cases[i].attrs) {
            const char *env = resource_str(o, "deployment.environment");
            CU_ASSERT_PTR_NOT_NULL(env);
            if (env)
                CU_ASSERT_STRING_EQUAL(env, "prod,eu"); /* percent-decoded */
        }
        json_object_put(o);
    }
}

/* ---- tests: the body ----------------------------------------------------- */

static void test_batch_of_three_has_the_documented_shape(void)
{
    collector_reset(NULL, 0);
    uint64_t e0 = EXPORTED();
    START("OTEL_SERVICE_NAME", "gateway", NULL);
    otel_span_t s[3];
    make_span(&s[0], "GET /api/v1/orders");
    s[0].start_ns = 1700000000123456789;
    s[0].end_ns = 1700000000223456789;
    s[0].attrs[0] = (otel_attr_t){.key = "http.request.method", .type = OTEL_ATTR_STRING, .v.s = "GET"};
    s[0].attrs[1] = (otel_attr_t){.key = "http.response.status_code", .type = OTEL_ATTR_INT, .v.i = 200};
    s[0].attrs[2] = (otel_attr_t){.key = "feature_flag.result.value", .type = OTEL_ATTR_BOOL, .v.b = true};
    s[0].attrs[3] = (otel_attr_t){.key = "ratio", .type = OTEL_ATTR_DOUBLE, .v.d = 0.25};
    s[0].nattrs = 4;
    make_span(&s[1], "pg query");
    memcpy(s[1].trace_id, s[0].trace_id, sizeof s[1].trace_id);
    memcpy(s[1].parent_span_id, s[0].span_id, sizeof s[1].parent_span_id);
    s[1].kind = OTEL_KIND_CLIENT;
    make_span(&s[2], "publish");
    s[2].kind = OTEL_KIND_PRODUCER;
    s[2].status = OTEL_STATUS_ERROR;
    s[2].status_message = "broker down";
    for (int i = 0; i < 3; i++)
        otel_span_end(&s[i]);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 3);
    CU_ASSERT_STRING_EQUAL(col.req[0].path, "/v1/traces");

    json_object *root = req_json(0);
    CU_ASSERT_EQUAL_FATAL(json_object_object_length(root), 1);
    json_object *rs = path_get(root, "resourceSpans");
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(rs), 1);
    json_object *res_attrs = path_get(path_get(idx(rs, 0), "resource"), "attributes");
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(idx(res_attrs, 0), "key")), "service.name");
    CU_ASSERT_STRING_EQUAL(resource_str(root, "service.name"), "gateway");
    json_object *ss = path_get(idx(rs, 0), "scopeSpans");
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(ss), 1);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(path_get(idx(ss, 0), "scope"), "name")), "ecom");
    json_object *spans = path_get(idx(ss, 0), "spans");
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(spans), 3);

    for (size_t i = 0; i < 3; i++) {
        json_object *sp = idx(spans, i);
        json_object *tid = path_get(sp, "traceId"), *sid = path_get(sp, "spanId");
        CU_ASSERT_TRUE(json_object_is_type(tid, json_type_string));
        CU_ASSERT_TRUE(is_hex(json_object_get_string(tid), 32));
        CU_ASSERT_STRING_EQUAL(json_object_get_string(tid), s[i].trace_id);
        CU_ASSERT_TRUE(is_hex(json_object_get_string(sid), 16));
        CU_ASSERT_STRING_EQUAL(json_object_get_string(sid), s[i].span_id);
        CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(sp, "name")), s[i].name);
        json_object *kind = path_get(sp, "kind");
        CU_ASSERT_TRUE(json_object_is_type(kind, json_type_int));
        CU_ASSERT_EQUAL(json_object_get_int(kind), (int)s[i].kind);
        json_object *st = path_get(sp, "startTimeUnixNano"), *en = path_get(sp, "endTimeUnixNano");
        CU_ASSERT_TRUE(json_object_is_type(st, json_type_string));
        CU_ASSERT_TRUE(json_object_is_type(en, json_type_string));
        CU_ASSERT_TRUE(is_decimal(json_object_get_string(st)));
        CU_ASSERT_EQUAL(strtoll(json_object_get_string(st), NULL, 10), s[i].start_ns);
        CU_ASSERT_EQUAL(strtoll(json_object_get_string(en), NULL, 10), s[i].end_ns);
        json_object *code = path_get(path_get(sp, "status"), "code");
        CU_ASSERT_TRUE(json_object_is_type(code, json_type_int));
        CU_ASSERT_EQUAL(json_object_get_int(code), (int)s[i].status);
        CU_ASSERT_TRUE(json_object_is_type(path_get(sp, "attributes"), json_type_array));
    }
    json_object *sp0 = idx(spans, 0);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(sp0, "startTimeUnixNano")), "1700000000123456789");
    CU_ASSERT_EQUAL(json_object_get_int(path_get(sp0, "kind")), 2);
    CU_ASSERT_PTR_NULL(path_get(sp0, "parentSpanId")); /* a root span */
    json_object *attrs = path_get(sp0, "attributes");
    CU_ASSERT_EQUAL(json_object_array_length(attrs), 4);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(idx(attrs, 0), "key")), "http.request.method");
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(attr_value(attrs, "http.request.method"), "stringValue")),
                           "GET");
    json_object *iv = path_get(attr_value(attrs, "http.response.status_code"), "intValue");
    CU_ASSERT_TRUE(json_object_is_type(iv, json_type_string)); /* int64 is a string in OTLP/JSON */
    CU_ASSERT_STRING_EQUAL(json_object_get_string(iv), "200");
    json_object *bv = path_get(attr_value(attrs, "feature_flag.result.value"), "boolValue");
    CU_ASSERT_TRUE(json_object_is_type(bv, json_type_boolean));
    CU_ASSERT_TRUE(json_object_get_boolean(bv));
    json_object *dv = path_get(attr_value(attrs, "ratio"), "doubleValue");
    CU_ASSERT_TRUE(json_object_is_type(dv, json_type_double));
    CU_ASSERT_DOUBLE_EQUAL(json_object_get_double(dv), 0.25, 1e-12);
    json_object *sp1 = idx(spans, 1);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(sp1, "parentSpanId")), s[0].span_id);
    CU_ASSERT_EQUAL(json_object_get_int(path_get(sp1, "kind")), 3);
    json_object *st2 = path_get(idx(spans, 2), "status");
    CU_ASSERT_EQUAL(json_object_get_int(path_get(st2, "code")), 2);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(st2, "message")), "broker down");
    json_object_put(root);
}

static void test_strings_escaped_cut_and_ids_checked(void)
{
    collector_reset(NULL, 0);
    uint64_t d0 = DROPPED();
    START(NULL, NULL);
    char longv[1000];
    memset(longv, 'v', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    otel_span_t s;
    make_span(&s, "q\"uote\\ new\nline \x01 bad\xff utf8 caf\xc3\xa9");
    s.attrs[0] = (otel_attr_t){.key = "long", .type = OTEL_ATTR_STRING, .v.s = longv};
    s.attrs[1] = (otel_attr_t){.key = "nan", .type = OTEL_ATTR_DOUBLE, .v.d = 0.0 / 0.0};
    s.attrs[2] = (otel_attr_t){.key = "neg", .type = OTEL_ATTR_INT, .v.i = -42};
    s.nattrs = 3;
    otel_span_end(&s);
    /* malformed ids are dropped (and counted) rather than poisoning a batch */
    otel_span_t bad;
    make_span(&bad, "bad");
    strcpy(bad.trace_id, "00000000000000000000000000000000");
    otel_span_end(&bad);
    make_span(&bad, "bad");
    strcpy(bad.span_id, "xyz");
    otel_span_end(&bad);
    otel_shutdown();
    CU_ASSERT_EQUAL(DROPPED(), d0 + 2);
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    json_object *root = req_json(0);
    json_object *sp = idx(spans_of(root), 0);
    CU_ASSERT_EQUAL(json_object_array_length(spans_of(root)), 1);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(sp, "name")),
                           "q\"uote\\ new\nline \x01 bad\xef\xbf\xbd utf8 caf\xc3\xa9");
    json_object *attrs = path_get(sp, "attributes");
    CU_ASSERT_EQUAL(strlen(json_object_get_string(path_get(attr_value(attrs, "long"), "stringValue"))),
                    OTEL_ATTR_STR_MAX);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(attr_value(attrs, "nan"), "doubleValue")), "NaN");
    CU_ASSERT_STRING_EQUAL(json_object_get_string(path_get(attr_value(attrs, "neg"), "intValue")), "-42");
    json_object_put(root);
}

/* ---- tests: batching ------------------------------------------------------ */

static void test_513_spans_make_two_requests(void)
{
    collector_reset(NULL, 0);
    uint64_t e0 = EXPORTED();
    START(NULL, NULL); /* default schedule: 5000 ms */
    int64_t t0 = now_us();
    send_spans(513);
    /* a full batch goes at once, long before the 5 s timer */
    CU_ASSERT_EQUAL_FATAL(collector_wait(1, 4000), 1);
    CU_ASSERT_TRUE((now_us() - t0) < 4000000);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 2);
    CU_ASSERT_EQUAL(span_count(0), 512);
    CU_ASSERT_EQUAL(span_count(1), 1);
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 513);
}

static void test_schedule_delay_default_5000ms(void)
{
    collector_reset(NULL, 0);
    START(NULL, NULL);
    int64_t t0 = now_us();
    send_spans(3);
    CU_ASSERT_EQUAL_FATAL(collector_wait(1, 8000), 1);
    int64_t waited = col.req[0].at_us - t0;
    CU_ASSERT_TRUE(waited >= 4500000 && waited <= 6500000);
    CU_ASSERT_EQUAL(span_count(0), 3);
    otel_shutdown();
    CU_ASSERT_EQUAL(collector_count(), 1);

    /* OTEL_BSP_SCHEDULE_DELAY shortens it */
    collector_reset(NULL, 0);
    START("OTEL_BSP_SCHEDULE_DELAY", "100", NULL);
    t0 = now_us();
    send_spans(2);
    CU_ASSERT_EQUAL_FATAL(collector_wait(1, 2000), 1);
    CU_ASSERT_TRUE(col.req[0].at_us - t0 < 1000000);
    otel_shutdown();
}

static void test_shutdown_flushes_pending_spans(void)
{
    collector_reset(NULL, 0);
    uint64_t e0 = EXPORTED();
    START(NULL, NULL);
    send_spans(10);
    CU_ASSERT_EQUAL(collector_count(), 0); /* nothing due yet (5 s schedule) */
    int64_t t0 = now_us();
    otel_shutdown();
    CU_ASSERT_TRUE(now_us() - t0 < 2000000);
    CU_ASSERT_FALSE(otel_enabled());
    CU_ASSERT_EQUAL_FATAL(collector_count(), 1);
    CU_ASSERT_EQUAL(span_count(0), 10);
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 10);
    otel_shutdown(); /* a second call is a no-op */
    send_spans(1);   /* and spans after shutdown go nowhere */
    CU_ASSERT_EQUAL(collector_count(), 1);
}

static void test_init_shutdown_rerunnable(void)
{
    collector_reset(NULL, 0);
    for (size_t round = 1; round <= 3; round++) {
        START(NULL, NULL);
        char *err = NULL;
        CU_ASSERT_EQUAL(otel_init(NULL, &err), -1); /* already running */
        CU_ASSERT_PTR_NOT_NULL(err);
        free(err);
        send_spans(2);
        otel_shutdown();
        CU_ASSERT_EQUAL(collector_count(), round);
    }
}

/* ---- tests: retries ------------------------------------------------------- */

static void test_503_then_200_retried_after_retry_after(void)
{
    step_t steps[] = {{503, "1", NULL}, {200, NULL, NULL}};
    collector_reset(steps, 2);
    uint64_t e0 = EXPORTED(), f0 = FAILURES();
    START("OTEL_BSP_SCHEDULE_DELAY", "50", NULL);
    send_spans(2);
    CU_ASSERT_EQUAL_FATAL(collector_wait(2, 5000), 2);
    otel_shutdown();
    CU_ASSERT_EQUAL_FATAL(collector_count(), 2);
    CU_ASSERT_TRUE(col.req[1].at_us - col.req[0].at_us >= 1000000); /* Retry-After: 1 */
    CU_ASSERT_EQUAL(col.req[0].len, col.req[1].len);
    CU_ASSERT_STRING_EQUAL(col.req[0].body, col.req[1].body);
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 2); /* delivered once */
    CU_ASSERT_EQUAL(FAILURES(), f0);
}

static void test_429_502_504_retried_with_backoff(void)
{
    step_t steps[] = {{502, NULL, NULL}, {504, NULL, NULL}, {429, NULL, NULL}, {200, NULL, NULL}};
    collector_reset(steps, 4);
    uint64_t e0 = EXPORTED(), f0 = FAILURES();
    START(NULL, NULL);
    send_spans(1);
    otel_shutdown(); /* flushes through the retries */
    CU_ASSERT_EQUAL_FATAL(collector_count(), 4);
    for (size_t i = 1; i < 4; i++) /* jittered backoff, at least half of 500 ms doubling */
        CU_ASSERT_TRUE(col.req[i].at_us - col.req[i - 1].at_us >= (int64_t)(250000 << (i - 1)));
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 1);
    CU_ASSERT_EQUAL(FAILURES(), f0);
}

static void test_400_and_413_not_retried(void)
{
    int codes[] = {400, 413};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(codes); i++) {
        step_t steps[] = {{codes[i], "0", NULL}};
        collector_reset(steps, 1);
        uint64_t e0 = EXPORTED(), f0 = FAILURES();
        START(NULL, NULL);
        send_spans(2);
        otel_shutdown();
        CU_ASSERT_EQUAL(collector_wait(2, 700), 1); /* exactly one request */
        CU_ASSERT_EQUAL(FAILURES(), f0 + 1);
        CU_ASSERT_EQUAL(EXPORTED(), e0);
    }
}

static void test_partial_success_not_retried(void)
{
    step_t steps[] = {{200, NULL, "{\"partialSuccess\":{\"rejectedSpans\":\"1\",\"errorMessage\":\"bad span\"}}"}};
    collector_reset(steps, 1);
    uint64_t e0 = EXPORTED(), f0 = FAILURES();
    START(NULL, NULL);
    send_spans(3);
    otel_shutdown();
    CU_ASSERT_EQUAL(collector_wait(2, 700), 1);
    CU_ASSERT_EQUAL(EXPORTED(), e0 + 2);
    CU_ASSERT_EQUAL(FAILURES(), f0);
}

static void test_retries_are_bounded(void)
{
    /* attempts: five, then the batch is given up */
    step_t steps[] = {{503, "0", NULL}, {503, "0", NULL}, {503, "0", NULL},
                      {503, "0", NULL}, {503, "0", NULL}, {200, NULL, NULL}};
    collector_reset(steps, 6);
    uint64_t e0 = EXPORTED(), f0 = FAILURES();
    START(NULL, NULL);
    send_spans(1);
    otel_shutdown();
    CU_ASSERT_EQUAL(collector_wait(6, 700), 5);
    CU_ASSERT_EQUAL(FAILURES(), f0 + 1);
    CU_ASSERT_EQUAL(EXPORTED(), e0);

    /* time: a Retry-After beyond the export timeout ends the export at once */
    step_t late[] = {{503, "5", NULL}};
    collector_reset(late, 1);
    f0 = FAILURES();
    START("OTEL_BSP_EXPORT_TIMEOUT", "1500", NULL);
    send_spans(1);
    int64_t t0 = now_us();
    otel_shutdown();
    CU_ASSERT_TRUE(now_us() - t0 < 1500000);
    CU_ASSERT_EQUAL(collector_count(), 1);
    CU_ASSERT_EQUAL(FAILURES(), f0 + 1);
}

/* ---- tests: back-pressure ------------------------------------------------ */

static void test_full_queue_drops_without_blocking(void)
{
    /* a collector that takes the connection and never answers (a listening
     * socket nobody accepts on) and a 3 s export timeout: the exporter is
     * stuck in its first export while the queue fills. Every span_end call
     * must return without it: all 5,000 end before that export does (no
     * failure and no export counted yet), an order rather than a time (the
     * loop takes milliseconds; the export's end is 3 s away). */
    char *err = NULL;
    int fd;
    int port = loopback_port(true, &fd);
    uint64_t d0 = DROPPED(), e0 = EXPORTED(), f0 = FAILURES();
    ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url("http://127.0.0.1", port, "/v1/traces"),
                         "OTEL_BSP_EXPORT_TIMEOUT", "3000", NULL));
    CU_ASSERT_TRUE_FATAL(otel_enabled());
    for (int i = 0; i < 5000; i++) {
        otel_span_t s;
        make_span(&s, "GET /x");
        otel_span_end(&s);
    }
    CU_ASSERT_EQUAL(FAILURES(), f0); /* the first export is still waiting for its answer */
    CU_ASSERT_EQUAL(EXPORTED(), e0);
    /* at most the queue (2048) plus the batch in the exporter's hands got in */
    uint64_t dropped = DROPPED() - d0;
    CU_ASSERT_TRUE(dropped >= 5000 - 2048 - 512);
    CU_ASSERT_TRUE(dropped <= 5000 - 2048);
    close(fd); /* the collector goes away */
    otel_shutdown(); /* bounded by the export timeout */
    CU_ASSERT_TRUE(FAILURES() > f0);
    CU_ASSERT_EQUAL(EXPORTED(), e0);
    /* every span was either dropped or part of a failed batch (<= 512 each) */
    CU_ASSERT_TRUE(DROPPED() - d0 + 512 * (FAILURES() - f0) >= 5000);
}

static void test_unanswered_export_times_out(void)
{
    int fd;
    int port = loopback_port(true, &fd);
    uint64_t e0 = EXPORTED(), f0 = FAILURES();
    char *err = NULL;
    ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url("http://127.0.0.1", port, "/v1/traces"),
                         "OTEL_BSP_EXPORT_TIMEOUT", "500", "OTEL_BSP_SCHEDULE_DELAY", "20", NULL));
    send_spans(3);
    int64_t t0 = now_us();
    while (FAILURES() == f0 && now_us() - t0 < 3000000)
        usleep(10000);
    int64_t waited = now_us() - t0;
    CU_ASSERT_EQUAL(FAILURES(), f0 + 1);
    CU_ASSERT_TRUE(waited >= 400000 && waited < 1500000);
    otel_shutdown();
    CU_ASSERT_EQUAL(EXPORTED(), e0);
    close(fd);
}

static void test_host_names_resolved_with_evdns(void)
{
    /* a name the resolver maps to 127.0.0.1 (evdns reads /etc/hosts): the host name */
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    bool loopback = host[0] && getaddrinfo(host, NULL, &hints, &ai) == 0 &&
                    ((struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
    if (ai)
        freeaddrinfo(ai);
    char head[300];
    if (loopback) {
        collector_reset(NULL, 0);
        snprintf(head, sizeof head, "http://%s", host);
        char *err = NULL;
        ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", url(head, col.port, ""), NULL));
        send_spans(1);
        otel_shutdown();
        CU_ASSERT_EQUAL(collector_count(), 1);
    } else {
        fprintf(stderr, "(host name %s is not a loopback name here; evdns success path not run) ", host);
    }
    /* a name that does not resolve fails the export within its timeout */
    uint64_t f0 = FAILURES();
    char *err = NULL;
    ASSERT_OK(start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://no-such-host.invalid:4318",
                         "OTEL_BSP_EXPORT_TIMEOUT", "1000", NULL));
    send_spans(1);
    int64_t t0 = now_us();
    otel_shutdown();
    CU_ASSERT_TRUE(now_us() - t0 < 2500000);
    CU_ASSERT_EQUAL(FAILURES(), f0 + 1);
}

/* ---- tests: sampling -------------------------------------------------------- */

static void start_sampler(const char *name, const char *arg)
{
    char *err = NULL;
    int rc = start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", url("http://127.0.0.1", col.port, ""),
                        name ? "OTEL_TRACES_SAMPLER" : "OTEL_SDK_DISABLED", name ? name : "false",
                        "OTEL_TRACES_SAMPLER_ARG", arg ? arg : "", NULL);
    if (err)
        fprintf(stderr, "otel_init: %s", err);
    free(err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static int sampled_of(int n, bool has_parent, bool parent_sampled)
{
    int k = 0;
    char id[33];
    for (int i = 0; i < n; i++) {
        random_fast_hex(id, 16);
        k += otel_should_sample(id, has_parent, parent_sampled);
    }
    return k;
}

static void test_sampler_always_off_and_on(void)
{
    collector_reset(NULL, 0);
    start_sampler("always_off", NULL);
    CU_ASSERT_EQUAL(sampled_of(1000, false, false), 0);
    CU_ASSERT_EQUAL(sampled_of(1000, true, true), 0); /* not parent-based */
    otel_shutdown();
    start_sampler("always_on", NULL);
    CU_ASSERT_EQUAL(sampled_of(1000, false, false), 1000);
    CU_ASSERT_EQUAL(sampled_of(1000, true, false), 1000);
    otel_shutdown();
}

static void test_sampler_traceidratio(void)
{
    collector_reset(NULL, 0);
    start_sampler("traceidratio", "0.5");
    int k = sampled_of(10000, false, false);
    CU_ASSERT_TRUE(k >= 4500 && k <= 5500);
    /* the lower 8 bytes against ratio * 2^64 */
    CU_ASSERT_TRUE(otel_should_sample("ffffffffffffffff0000000000000000", false, false));
    CU_ASSERT_TRUE(otel_should_sample("ffffffffffffffff7fffffffffffffff", false, false));
    CU_ASSERT_FALSE(otel_should_sample("00000000000000008000000000000000", false, false));
    CU_ASSERT_FALSE(otel_should_sample("0000000000000000ffffffffffffffff", false, false));
    int kp = sampled_of(10000, true, false); /* not parent-based: the parent's flag is ignored */
    CU_ASSERT_TRUE(kp >= 4500 && kp <= 5500);
    otel_shutdown();
    start_sampler("traceidratio", "0");
    CU_ASSERT_EQUAL(sampled_of(1000, false, false), 0);
    otel_shutdown();
    start_sampler("traceidratio", "1");
    CU_ASSERT_EQUAL(sampled_of(1000, false, false), 1000);
    otel_shutdown();
    start_sampler("traceidratio", NULL); /* no argument: 1 */
    CU_ASSERT_EQUAL(sampled_of(1000, false, false), 1000);
    otel_shutdown();
}

static void test_sampler_parentbased(void)
{
    collector_reset(NULL, 0);
    start_sampler(NULL, NULL); /* default: parentbased_always_on */
    CU_ASSERT_EQUAL(sampled_of(100, false, false), 100);
    CU_ASSERT_EQUAL(sampled_of(100, true, false), 0);
    CU_ASSERT_EQUAL(sampled_of(100, true, true), 100);
    otel_shutdown();
    start_sampler("parentbased_always_off", NULL);
    CU_ASSERT_EQUAL(sampled_of(100, false, false), 0);
    CU_ASSERT_EQUAL(sampled_of(100, true, true), 100);
    CU_ASSERT_EQUAL(sampled_of(100, true, false), 0);
    otel_shutdown();
    start_sampler("parentbased_traceidratio", "0");
    CU_ASSERT_EQUAL(sampled_of(100, false, false), 0);
    CU_ASSERT_EQUAL(sampled_of(100, true, true), 100);
    otel_shutdown();
    start_sampler("ParentBased_TraceIdRatio", "0.5"); /* names are case-insensitive */
    int k = sampled_of(10000, false, true);
    CU_ASSERT_TRUE(k >= 4500 && k <= 5500);
    CU_ASSERT_EQUAL(sampled_of(100, true, false), 0);
    otel_shutdown();
}

/* ---- tests: configuration errors ------------------------------------------ */

static void test_invalid_settings_listed_together(void)
{
    char *err = NULL;
    int rc = start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", url("http://127.0.0.1", col.port, ""),
                        "OTEL_TRACES_SAMPLER", "sometimes", "OTEL_EXPORTER_OTLP_HEADERS",
                        "Authorization=Bearer%zzsecret,noequals", "OTEL_RESOURCE_ATTRIBUTES", "a=%4",
                        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000", "OTEL_BSP_SCHEDULE_DELAY", "soon", NULL);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_FALSE(otel_enabled());
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    const char *want[] = {"OTEL_TRACES_SAMPLER: 'sometimes'",    "OTEL_EXPORTER_OTLP_HEADERS: entry 1",
                          "OTEL_EXPORTER_OTLP_HEADERS: entry 2", "OTEL_RESOURCE_ATTRIBUTES",
                          "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",      "OTEL_BSP_SCHEDULE_DELAY"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(want); i++) {
        CU_ASSERT_PTR_NOT_NULL(strstr(err, want[i]));
        if (!strstr(err, want[i]))
            fprintf(stderr, "missing '%s' in:\n%s", want[i], err);
    }
    CU_ASSERT_PTR_NULL(strstr(err, "secret")); /* header values never echoed */
    free(err);

    rc = start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", "OTEL_TRACES_SAMPLER", "traceidratio",
                    "OTEL_TRACES_SAMPLER_ARG", "1.5", NULL);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_TRUE(err && strstr(err, "OTEL_TRACES_SAMPLER_ARG"));
    free(err);

    rc = start_otel(&err, "OTEL_EXPORTER_OTLP_HEADERS", "content-type=text/plain", "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://127.0.0.1:4318", NULL);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_TRUE(err && strstr(err, "content-type"));
    free(err);

    /* after failures, a valid configuration still starts */
    collector_reset(NULL, 0);
    START(NULL, NULL);
    send_spans(1);
    otel_shutdown();
    CU_ASSERT_EQUAL(collector_count(), 1);
}

static void test_endpoint_errors(void)
{
    char *err = NULL;
    int rc = start_otel(&err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector.example:4318/v1/traces", NULL);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_FALSE(otel_enabled());
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "https"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "TLS"));
    free(err);
    rc = start_otel(&err, "OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example", NULL);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_TRUE(err && strstr(err, "OTEL_EXPORTER_OTLP_ENDPOINT"));
    free(err);
    const char *bad[] = {"ftp://127.0.0.1/x", "not a url", "collector:4318", "http://user:pw@127.0.0.1:4318"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad); i++) {
        rc = start_otel(&err, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", bad[i], NULL);
        CU_ASSERT_EQUAL(rc, -1);
        CU_ASSERT_PTR_NOT_NULL(err);
        CU_ASSERT_FALSE(otel_enabled());
        free(err);
    }
}

static int suite_init(void)
{
    signal(SIGPIPE, SIG_IGN); /* a peer closing mid-write must not end the test */
    return collector_start();
}

static int suite_clean(void)
{
    for (size_t i = 0; i < ECOM_ARRAY_LEN(otel_vars); i++)
        unsetenv(otel_vars[i]);
    return collector_stop();
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"inactive without an endpoint", test_inactive_without_endpoint},
        {"traces endpoint used as given", test_traces_endpoint_used_as_given},
        {"base endpoint gets /v1/traces", test_base_endpoint_gets_v1_traces},
        {"headers added", test_headers_added},
        {"service name precedence", test_service_name_precedence},
        {"batch of three has the documented shape", test_batch_of_three_has_the_documented_shape},
        {"strings escaped, cut; ids checked", test_strings_escaped_cut_and_ids_checked},
        {"513 spans make two requests", test_513_spans_make_two_requests},
        {"schedule delay 5000 ms by default", test_schedule_delay_default_5000ms},
        {"shutdown flushes pending spans", test_shutdown_flushes_pending_spans},
        {"init and shutdown re-runnable", test_init_shutdown_rerunnable},
        {"503 then 200 retried after Retry-After", test_503_then_200_retried_after_retry_after},
        {"429, 502, 504 retried with backoff", test_429_502_504_retried_with_backoff},
        {"400 and 413 not retried", test_400_and_413_not_retried},
        {"partial success not retried", test_partial_success_not_retried},
        {"retries are bounded", test_retries_are_bounded},
        {"full queue drops without blocking", test_full_queue_drops_without_blocking},
        {"unanswered export times out", test_unanswered_export_times_out},
        {"host names resolved with evdns", test_host_names_resolved_with_evdns},
        {"sampler always_off and always_on", test_sampler_always_off_and_on},
        {"sampler traceidratio", test_sampler_traceidratio},
        {"sampler parentbased", test_sampler_parentbased},
        {"invalid settings listed together", test_invalid_settings_listed_together},
        {"endpoint errors", test_endpoint_errors},
        CU_TEST_INFO_NULL,
    };
    return test_main("otel", tests, suite_init, suite_clean);
}
