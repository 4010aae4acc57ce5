/* http-gateway/server.c: threads, listeners and the request lifecycle
 * (see gateway.h and gw.h). Every request is answered exactly once, from a
 * per-request context bounded by our own timer (armed once the request waits
 * on something: an answer given within the request callback needs none). */
#include "http-gateway/gateway.h"
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/health.h"
#include "core/janitor.h"
#include "core/log.h"
#include "core/otel.h"
#include "http-gateway/authx/otp.h"
#include "http-gateway/flags.h"
#include "http-gateway/problem.h"
#include "http-gateway/routes_auth.h"
#include "http-gateway/schema.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- responses ---- */

/* A copy of s in the request's header arena, or on the heap when it is full. */
static char *hdr_copy(gw_req_t *r, const char *s)
{
    size_t n = strlen(s) + 1;
    if (n > sizeof r->hdr_arena - r->hdr_used)
        return xstrdup(s);
    char *p = r->hdr_arena + r->hdr_used;
    memcpy(p, s, n);
    r->hdr_used += n;
    return p;
}

static void hdr_free(gw_req_t *r, char *p)
{
    if (p < r->hdr_arena || p >= r->hdr_arena + sizeof r->hdr_arena)
        free(p);
}

void gw_add_header(gw_req_t *r, const char *name, const char *value)
{
    if (r->nheaders == (int)ECOM_ARRAY_LEN(r->headers))
        return;
    r->headers[r->nheaders].name = hdr_copy(r, name);
    r->headers[r->nheaders].value = hdr_copy(r, value);
    r->nheaders++;
}

void gw_clear_headers(gw_req_t *r)
{
    for (int i = 0; i < r->nheaders; i++) {
        hdr_free(r, r->headers[i].name);
        hdr_free(r, r->headers[i].value);
    }
    r->nheaders = 0;
    r->hdr_used = 0;
}

static void set_body(gw_req_t *r, int status, const char *ctype, const void *body, size_t len)
{
    r->status = status;
    r->content_type = ctype;
    evbuffer_drain(r->out, evbuffer_get_length(r->out));
    if (len)
        evbuffer_add(r->out, body, len);
}

void gw_respond(gw_req_t *r, int status, const char *content_type, const void *body, size_t len)
{
    if (r->answered)
        return; /* already answered (timeout): the late result only finishes its own work */
    set_body(r, status, content_type, body, len);
    r->answered = true;
    if (r->idem_active && gw_idem_settle(r))
        return; /* the deferred idempotency claim decides what is sent */
    gw_pipeline_answered(r);
}

void gw_respond_json(gw_req_t *r, int status, json_object *body)
{
    const schema_t *schema = r->route ? r->route->response_schema : NULL;
    if (schema && status >= 200 && status < 300) {
        /* written from the declared schema: undeclared fields dropped, types coerced */
        struct evbuffer *b = evbuffer_new();
        const char *err = NULL;
        if (schema_write(schema, body, b, &err) != 0) {
            log_error("response of %s does not fit its schema: %s", route_id(r->route), err);
            gw_problem(r, 500, NULL, "the response could not be serialised");
        } else {
            size_t len = evbuffer_get_length(b);
            gw_respond(r, status, "application/json", evbuffer_pullup(b, -1), len);
        }
        evbuffer_free(b);
        json_object_put(body);
        return;
    }
    const char *s = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    gw_respond(r, status, "application/json", s, strlen(s));
    json_object_put(body);
}

void gw_problem(gw_req_t *r, int status, const char *slug, const char *detail)
{
    if (r->answered)
        return;
    struct evbuffer *b = evbuffer_new();
    problem_render(b, status, slug, NULL, detail, r->path, r->request_id,
                   r->trace.trace_id[0] ? r->trace.trace_id : NULL);
    size_t len = evbuffer_get_length(b);
    gw_respond(r, status, PROBLEM_CONTENT_TYPE, evbuffer_pullup(b, -1), len);
    evbuffer_free(b);
}

bool gw_query_valid(gw_req_t *r)
{
    if (!r->query || !*r->query)
        return true;
    if (strstr(r->query, "%00"))
        return false; /* a decoded value ends at its NUL: a handler would read a prefix */
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    int rc = evhttp_parse_query_str(r->query, &q);
    evhttp_clear_headers(&q);
    return rc == 0;
}

const char *gw_query_arg(gw_req_t *r, const char *name, char *buf, size_t cap)
{
    if (!r->query)
        return NULL;
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (evhttp_parse_query_str(r->query, &q) != 0) {
        evhttp_clear_headers(&q);
        return NULL;
    }
    const char *v = evhttp_find_header(&q, name);
    const char *res = NULL;
    if (v) {
        snprintf(buf, cap, "%s", v);
        res = buf;
    }
    evhttp_clear_headers(&q);
    return res;
}

void gw_timer_add(struct event *ev, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

/* ---- lifecycle ---- */

gw_req_t *gw_req_new(gw_thread_t *th)
{
    gw_req_t *r = th->spare;
    if (r) {
        th->spare = r->next_spare;
        th->nspare--;
        memset(r, 0, sizeof *r);
    } else {
        r = xcalloc(1, sizeof *r);
    }
    th->active++;
    r->th = th;
    r->sh = th->sh;
    return r;
}

static void req_free(gw_req_t *r)
{
    ECOM_ASSERT(!r->pg && !r->mem_tx);
    if (r->timeout_armed)
        event_del(&r->timeout_ev);
    if (r->chaos_armed)
        event_del(&r->chaos_ev);
    if (r->authz_armed)
        event_del(&r->authz_ev);
    if (r->cache_waiting)
        event_del(&r->cache_wait_ev);
    cache_entry_release(r->lk.entry);
    gw_clear_headers(r);
    evbuffer_free(r->out);
    json_object_put(r->json);
    free(r->path);
    free(r->query);
    free(r->body);
    free(r->cache_key);
    free(r->idem_store);
    gw_cmd_free(&r->cmd);
    if (r->handler_state_free)
        r->handler_state_free(r->handler_state);
    gw_thread_t *th = r->th;
    th->active--;
    if (th->nspare < GW_SPARE_REQS) {
        r->next_spare = th->spare;
        th->spare = r;
        th->nspare++;
    } else {
        free(r);
    }
}

void gw_ref(gw_req_t *r)
{
    r->pending++;
}

void gw_unref(gw_req_t *r)
{
    ECOM_ASSERT(r->pending > 0);
    r->pending--;
    if (r->pending == 0 && (r->sent || (r->background && r->answered)))
        req_free(r);
}

/* The Date header's value, formatted once a second per thread. */
static const char *http_date(void)
{
    static _Thread_local time_t sec = -1;
    static _Thread_local char date[40];
    time_t now = time(NULL);
    if (now != sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        if (strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
            date[0] = '\0';
        sec = now;
    }
    return date;
}

/* An answer made here rather than by the pipeline: /health, /ready, /metrics
 * and what the HTTP layer refused. */
static void reply_plain(h1_req_t *q, int status, const char *ctype, bool no_store, const char *request_id,
                        struct evbuffer *body)
{
    h1_field_t f[4] = {{"Date", http_date()}, {"Content-Type", ctype}, {"x-request-id", request_id}};
    size_t n = 3;
    if (no_store)
        f[n++] = (h1_field_t){"Cache-Control", "no-store"};
    h1_reply(q, status, http_reason(status), f, n, body);
}

/* The request counter of (route, method, status): a per-thread memo in front of
 * the thread's map, so a request neither formats nor hashes a key. */
typedef struct ctr_memo {
    const route_t *route;
    const char *method; /* one of method_name()'s literals */
    int status;
    metric_t *metric;
} ctr_memo_t;

#define CTR_MEMO 64

static metric_t *request_counter(gw_req_t *r)
{
    static _Thread_local ctr_memo_t memo[CTR_MEMO];
    const char *mname = r->method_name ? r->method_name : "?";
    uintptr_t hv = ((uintptr_t)r->route >> 4) ^ ((uintptr_t)mname >> 2) ^ ((uintptr_t)r->status * 31u);
    ctr_memo_t *m = &memo[hv % CTR_MEMO];
    if (m->metric && m->route == r->route && m->method == mname && m->status == r->status)
        return m->metric;
    /* the registry is searched once per series and thread, then the pointer is kept */
    const char *rid = r->route ? route_id(r->route) : "unmatched";
    char key[192];
    int kl = snprintf(key, sizeof key, "%s|%s|%d", rid, mname, r->status);
    void **slot = strmap_put(&r->th->req_counters, key, (size_t)kl < sizeof key ? (size_t)kl : sizeof key - 1, NULL);
    if (!*slot) {
        char labels[256];
        snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%d\"", rid, mname, r->status);
        *slot = metrics_counter("ecom_http_requests_total", "HTTP requests by route, method and status", labels);
    }
    *m = (ctr_memo_t){r->route, mname, r->status, *slot};
    return *slot;
}

static void send_now(gw_req_t *r)
{
    h1_field_t f[3 + ECOM_ARRAY_LEN(r->headers)];
    size_t n = 0;
    f[n++] = (h1_field_t){"Date", http_date()};
    f[n++] = (h1_field_t){"x-request-id", r->request_id};
    if (r->content_type)
        f[n++] = (h1_field_t){"Content-Type", r->content_type};
    for (int i = 0; i < r->nheaders; i++)
        f[n++] = (h1_field_t){r->headers[i].name, r->headers[i].value};
    h1_reply(r->ev, r->status, http_reason(r->status), f, n, r->out);
    r->ev = NULL;
    r->sent = true;
    gw_shared_t *sh = r->sh;
    double secs = (double)(clock_mono_us() - r->start_us) / 1e6;
    metrics_observe(sh->m_latency, secs);
    metrics_add(request_counter(r), 1);
    const char *mname = r->method_name ? r->method_name : "?";
    if (r->sampled && otel_enabled()) {
        otel_span_t sp = {.kind = OTEL_KIND_SERVER, .start_ns = r->start_ns, .end_ns = otel_now_ns()};
        memcpy(sp.trace_id, r->trace.trace_id, sizeof sp.trace_id);
        memcpy(sp.span_id, r->span_id, sizeof sp.span_id);
        memcpy(sp.parent_span_id, r->parent_span_id, sizeof sp.parent_span_id);
        char name[160];
        snprintf(name, sizeof name, "%s %s", mname, r->route ? r->route->path : "unmatched");
        sp.name = name;
        sp.status = r->status >= 500 ? OTEL_STATUS_ERROR : OTEL_STATUS_UNSET;
        otel_attr_t a[] = {
            {.key = "http.request.method", .type = OTEL_ATTR_STRING, .v.s = mname},
            {.key = "url.path", .type = OTEL_ATTR_STRING, .v.s = r->path},
            {.key = "http.route", .type = OTEL_ATTR_STRING, .v.s = r->route ? r->route->path : ""},
            {.key = "http.response.status_code", .type = OTEL_ATTR_INT, .v.i = r->status},
            {.key = "ecom.request_id", .type = OTEL_ATTR_STRING, .v.s = r->request_id},
            {.key = "ecom.tenant", .type = OTEL_ATTR_STRING, .v.s = r->tenant},
        };
        memcpy(sp.attrs, a, sizeof a);
        sp.nattrs = ECOM_ARRAY_LEN(a);
        otel_span_end(&sp);
    }
    if (r->status >= 500)
        log_warn("%s %s -> %d (%.1f ms)", r->method_name, r->path, r->status, secs * 1000);
    else
        log_debug("%s %s -> %d (%.1f ms)", r->method_name, r->path, r->status, secs * 1000);
}

void gw_finish(gw_req_t *r)
{
    if (r->background) {
        if (r->pending == 0)
            req_free(r);
        return;
    }
    if (!r->sent && r->answered && r->ev)
        send_now(r);
    if (r->sent && r->pending == 0)
        req_free(r);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    r->timeout_armed = false;
    if (r->answered)
        return;
    log_ctx_set(&r->log);
    gw_ref(r);
    if (r->method == ROUTE_GET || r->method == ROUTE_HEAD)
        gw_problem(r, 504, "upstream-timeout", "the request did not complete in time");
    else /* its transaction may have committed all the same */
        gw_problem(r, 504, "upstream-timeout",
                   "the request did not complete in time; a write may still have been stored: send it again with"
                   " the same Idempotency-Key to learn its outcome");
    gw_unref(r);
    log_ctx_set(NULL);
}

/* The method's name as a static literal (the metrics' label), and its route bit. */
static const char *method_name(const char *m, unsigned *bit)
{
    static const struct {
        const char *name;
        unsigned bit;
    } known[] = {{"GET", ROUTE_GET},       {"POST", ROUTE_POST},     {"HEAD", ROUTE_HEAD}, {"PUT", ROUTE_PUT},
                 {"PATCH", ROUTE_PATCH},   {"DELETE", ROUTE_DELETE}, {"OPTIONS", 0}};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(known); i++)
        if (strcmp(m, known[i].name) == 0) {
            *bit = known[i].bit;
            return known[i].name;
        }
    *bit = 0;
    return "OTHER";
}

static void health_reply(h1_req_t *q, const char *request_id, bool ready)
{
    struct evbuffer *b = evbuffer_new();
    bool ok = true;
    if (ready)
        ok = health_render(b, "1");
    else
        evbuffer_add(b, "{\"status\":\"pass\"}", 17);
    reply_plain(q, ok ? 200 : 503, "application/health+json", true, request_id, b);
    evbuffer_free(b);
}

/* A request the HTTP layer refused (http1.h): its problem+json, then the
 * connection closes. */
static void refused_reply(h1_req_t *q, const char *request_id, int status)
{
    const char *slug = "bad-request", *detail = "the request is not valid HTTP/1.1";
    switch (status) {
    case 413: slug = "payload-too-large"; detail = "the request body is larger than 1 MiB"; break;
    case 417: slug = "expectation-failed"; detail = "the only expectation supported is 100-continue"; break;
    case 431: slug = "request-header-fields-too-large"; detail = "the request line and header fields exceed 16 KiB"; break;
    case 501: slug = "not-implemented"; detail = "the only transfer coding supported is chunked"; break;
    case 505: slug = "http-version-not-supported"; detail = "only HTTP/1.0 and HTTP/1.1 are served"; break;
    default: break;
    }
    struct evbuffer *b = evbuffer_new();
    const char *target = h1_req_target(q);
    problem_render(b, status, slug, NULL, detail, *target ? target : NULL, request_id, NULL);
    reply_plain(q, status, PROBLEM_CONTENT_TYPE, false, request_id, b);
    evbuffer_free(b);
}

static void on_request(h1_req_t *ev, void *arg)
{
    gw_thread_t *th = arg;
    gw_shared_t *sh = th->sh;
    const char *uri = h1_req_target(ev);
    char rid[REQCTX_ID_BUF];
    reqctx_request_id(h1_req_header(ev, "x-request-id"), rid);
    int refused = h1_req_error(ev);
    if (refused) {
        refused_reply(ev, rid, refused);
        return;
    }

    size_t plen = strcspn(uri, "?#");
    if ((plen == 7 && strncmp(uri, "/health", 7) == 0) || (plen == 6 && strncmp(uri, "/ready", 6) == 0)) {
        health_reply(ev, rid, plen == 6);
        return;
    }
    if (plen == 8 && strncmp(uri, "/metrics", 8) == 0) {
        struct evbuffer *b = evbuffer_new();
        metrics_render(b);
        reply_plain(ev, 200, "text/plain; version=0.0.4", false, rid, b);
        evbuffer_free(b);
        return;
    }

    gw_req_t *r = gw_req_new(th);
    r->ev = ev;
    r->start_us = clock_mono_us();
    r->out = evbuffer_new();
    memcpy(r->request_id, rid, sizeof rid);
    r->method_name = method_name(h1_req_method(ev), &r->method);
    r->path = xstrndup(uri, plen);
    if (uri[plen] == '?') {
        const char *q = uri + plen + 1;
        r->query = xstrndup(q, strcspn(q, "#"));
    }
    const char *tp = h1_req_header(ev, "traceparent");
    bool has_parent = tp && reqctx_traceparent_parse(tp, &r->trace) == 0;
    if (!has_parent)
        reqctx_traceparent_new(&r->trace, true);
    r->sampled = otel_should_sample(r->trace.trace_id, has_parent, reqctx_traceparent_sampled(&r->trace));
    if (has_parent)
        memcpy(r->parent_span_id, r->trace.span_id, sizeof r->parent_span_id);
    /* our span: a child of the caller's, carried into the outbox */
    traceparent_t mine;
    reqctx_traceparent_child(&r->trace, &mine);
    mine.flags = (uint8_t)((mine.flags & ~1u) | (r->sampled ? 1u : 0u));
    reqctx_traceparent_format(&mine, r->traceparent);
    memcpy(r->span_id, mine.span_id, sizeof r->span_id);
    if (r->sampled)
        r->start_ns = otel_now_ns(); /* read only for the span of a sampled request */
    r->log = (log_ctx_t){.request_id = r->request_id, .trace_id = r->trace.trace_id};
    log_ctx_set(&r->log);

    gw_ref(r);
    if (atomic_load(&sh->draining)) {
        gw_add_header(r, "Retry-After", "1");
        gw_problem(r, 503, "shutting-down", "the gateway is shutting down");
    } else {
        size_t blen = 0;
        const char *body = h1_req_body(ev, &blen); /* at most GW_MAX_BODY: http1 refuses more */
        r->body = xmalloc(blen + 1);
        if (blen)
            memcpy(r->body, body, blen);
        r->body[blen] = '\0';
        r->body_len = blen;
        gw_pipeline_start(r);
    }
    if (!r->sent) {
        /* still waiting on something: bound it. Armed only now, as a request
         * answered within this call (a cache hit) cannot time out. */
        evtimer_assign(&r->timeout_ev, th->base, on_timeout, r);
        gw_timer_add(&r->timeout_ev, GW_REQUEST_TIMEOUT_MS);
        r->timeout_armed = true;
    }
    gw_unref(r);
    log_ctx_set(NULL);
}

/* ---- threads ---- */

static void on_handoff(evutil_socket_t fd, short what, void *arg);

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_thread_t *th = arg;
    gw_shared_t *sh = th->sh;
    if (atomic_load(sh->stop)) {
        /* /ready turns 503 first; requests in flight finish (bounded by their timers) */
        if (!atomic_exchange(&sh->draining, true))
            health_set_shutting_down(true);
        /* no more hand-overs to this thread; those already queued are
         * adopted now, so that they are served (and closed) as its own */
        pthread_mutex_lock(&th->handoff_mu);
        th->handoff_closed = true;
        bool queued = th->nhandoff > 0;
        pthread_mutex_unlock(&th->handoff_mu);
        if (queued)
            on_handoff(-1, 0, th);
        h1_server_set_closing(th->http); /* answers close their connections from now on */
        h1_server_sweep(th->http);       /* idle ones close now, timeouts go on */
        int64_t now = clock_mono_ms();
        if (!th->drain_until)
            th->drain_until = now + GW_REQUEST_TIMEOUT_MS + 1000;
        if ((th->active == 0 && !h1_server_waiting(th->http)) || now >= th->drain_until) {
            /* stop accepting here: the kernel hands new connections to the
             * listeners of threads still draining (they answer 503) */
            h1_server_stop_accepting(th->http);
            event_base_loopexit(th->base, NULL);
        }
        return;
    }
    h1_server_sweep(th->http);
    gw_cmd_kick(th); /* commands waiting on another thread's group: never longer than a tick */
    if (th->index == 0) {
        if (th->pg) {
            int connected = 0, busy = 0, waiting = 0;
            if (pga_pool_stats(th->pg, &connected, &busy, &waiting) == 0)
                health_report("postgres", connected > 0, 0);
        } else {
            health_report("memory-store", true, 0);
        }
    }
}

static void on_commit_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_cmd_kick(arg);
}

/* ---- connection balance ----
 * SO_REUSEPORT hands each new connection to a thread's listener by a hash of
 * its addresses, so a few long-lived connections can load one thread more
 * than another (38 / 29 of wrk's 64 was seen; with a proxy's pool of a few
 * busy connections, one thread can get most of the load). A thread that accepts a connection while another serves
 * fewer hands it over to the one serving the fewest (counting those handed to
 * it and not yet adopted): the thread that takes it answers every request on
 * it. Keep-alive connections pay the hand-over once. */

struct gw_handoff {
    int fd;
    int salen;
    struct sockaddr_storage sa;
};
#define GW_HANDOFF_MAX 256

static int conns_load(gw_thread_t *th)
{
    return atomic_load(&th->conns_open) + atomic_load(&th->conns_coming);
}

static bool offer_connection(int fd, const struct sockaddr *sa, int salen, void *arg)
{
    gw_thread_t *th = arg;
    gw_shared_t *sh = th->sh;
    if (sh->nthreads < 2 || atomic_load(&sh->draining) || salen <= 0 || (size_t)salen > sizeof(struct sockaddr_storage))
        return false;
    int mine = conns_load(th);
    gw_thread_t *to = NULL;
    int least = mine; /* only to a thread serving fewer than this one */
    for (int i = 0; i < sh->nthreads; i++) {
        gw_thread_t *o = &sh->threads[i];
        int l = conns_load(o);
        if (o != th && l < least) {
            least = l;
            to = o;
        }
    }
    if (!to)
        return false;
    pthread_mutex_lock(&to->handoff_mu);
    bool room = !to->handoff_closed && to->nhandoff < GW_HANDOFF_MAX;
    if (room) {
        struct gw_handoff *h = &to->handoff[to->nhandoff++];
        h->fd = fd;
        h->salen = salen;
        memcpy(&h->sa, sa, (size_t)salen);
        atomic_fetch_add(&to->conns_coming, 1);
    }
    pthread_mutex_unlock(&to->handoff_mu);
    if (!room)
        return false;
    metrics_add(sh->m_handed_over, 1);
    event_active(to->handoff_ev, EV_READ, 1);
    return true;
}

static void on_handoff(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_thread_t *th = arg;
    struct gw_handoff got[32];
    for (;;) {
        int n = 0;
        pthread_mutex_lock(&th->handoff_mu);
        while (n < 32 && th->nhandoff > 0)
            got[n++] = th->handoff[--th->nhandoff];
        pthread_mutex_unlock(&th->handoff_mu);
        if (n == 0)
            return;
        for (int i = 0; i < n; i++) {
            h1_server_adopt(th->http, got[i].fd, (const struct sockaddr *)&got[i].sa, got[i].salen);
            atomic_fetch_sub(&th->conns_coming, 1); /* after: counted in conns_open now */
        }
    }
}

static int bind_reuseport(gw_thread_t *th, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1024) != 0) {
        close(fd);
        return -1;
    }
    /* per thread: SO_REUSEPORT spreads connections by a hash of their
     * addresses, so a few long-lived ones can load one thread more than another */
    char labels[32];
    snprintf(labels, sizeof labels, "thread=\"%d\"", th->index);
    h1_limits_t lim = {.max_head = GW_MAX_HEADERS,
                       .max_body = GW_MAX_BODY,
                       .timeout_s = GW_IDLE_TIMEOUT_S,
                       .accepted = metrics_counter("ecom_http_connections_accepted_total",
                                                   "Connections taken, by the gateway thread that serves them", labels),
                       .open = &th->conns_open,
                       .offer = offer_connection,
                       .offer_arg = th};
    th->http = h1_server_new(th->base, fd, &lim, on_request, th);
    return th->http ? 0 : -1;
}

/* The thread's event loop, one pass at a time, giving up the rest of its time
 * slice after each pass (sched_yield). The gateway shares its cores with its
 * clients, PostgreSQL and Redis on a small host: a thread that always has
 * work otherwise keeps its core until the scheduler's tick takes it away (4 ms
 * at HZ=250), while the clients that would read its answers and send the
 * next requests wait, and a request's latency becomes a count of ticks. After
 * a pass the answers are written; the yield lets whoever waits for them run
 * now. With nothing else runnable on the core, the yield returns at once.
 * In alternating runs of bench/gateway.sh the cached GET's p99 was 2.53 and
 * 2.69 ms at 85,000 req/s, against 8.05 and 6.57 ms at 58,787 and 80,743
 * req/s without it (docs/benchmarks.md, session 16). */
static void *thread_main(void *arg)
{
    gw_thread_t *th = arg;
    char role[16];
    snprintf(role, sizeof role, "gateway-%d", th->index);
    log_set_role("gateway");
    while (event_base_loop(th->base, EVLOOP_ONCE) == 0 && !event_base_got_exit(th->base) &&
           !event_base_got_break(th->base))
        sched_yield();
    return NULL;
}

static int thread_init(gw_thread_t *th, gw_shared_t *sh, int index)
{
    const config_t *cfg = sh->cfg;
    th->index = index;
    th->sh = sh;
    strmap_init(&th->req_counters);
    /* the changelist folds an event's delete and re-add within one loop pass
     * (a connection's write event, the database connections') into at most one
     * epoll_ctl */
    struct event_config *ec = event_config_new();
    event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    th->base = event_base_new_with_config(ec);
    event_config_free(ec);
    chaos_rng_seed(&th->rng, (uint64_t)strtoull(config_raw(cfg, "CHAOS_SEED") ? config_raw(cfg, "CHAOS_SEED") : "0",
                                               NULL, 10),
                   (uint64_t)index);
    if (sh->mem)
        th->memdb = db_open_memory(sh->mem);
    else
        th->pg = pga_pool_new(th->base, cfg->database_url, 4, 1024, 5000);
    if (bind_reuseport(th, (int)cfg->port) != 0) {
        fprintf(stderr, "ecom gateway: cannot listen on port %ld: %s\n", cfg->port, strerror(errno));
        return -1;
    }
    pthread_mutex_init(&th->handoff_mu, NULL);
    th->handoff = xcalloc(GW_HANDOFF_MAX, sizeof *th->handoff);
    th->handoff_ev = event_new(th->base, -1, 0, on_handoff, th);
    th->commit_kick = event_new(th->base, -1, 0, on_commit_kick, th);
    th->tick = event_new(th->base, -1, EV_PERSIST, on_tick, th);
    event_add(th->tick, &(struct timeval){0, 100000});
    return 0;
}

static void thread_free(gw_thread_t *th)
{
    if (th->tick)
        event_free(th->tick);
    if (th->commit_kick)
        event_free(th->commit_kick);
    if (th->handoff_ev) {
        event_free(th->handoff_ev);
        /* none after the first draining tick (handoff_closed); this is
         * for a thread whose loop never ran */
        for (int i = 0; i < th->nhandoff; i++)
            close(th->handoff[i].fd);
        free(th->handoff);
        pthread_mutex_destroy(&th->handoff_mu);
    }
    if (th->pg)
        pga_pool_free(th->pg); /* pending database work calls back (and answers) first */
    gw_cmd_queue_free(th);
    h1_server_free(th->http); /* after the pool: its callbacks answer their requests */
    db_close(th->memdb);
    while (th->spare) {
        gw_req_t *r = th->spare;
        th->spare = r->next_spare;
        free(r);
    }
    strmap_free(&th->req_counters);
    jwt_cache_free(&th->jwt_cache);
    policy_cache_free(&th->authz_cache);
    if (th->base)
        event_base_free(th->base);
}

static int shared_init(gw_shared_t *sh, const config_t *cfg, memstore_t *mem, atomic_bool *stop)
{
    memset(sh, 0, sizeof *sh);
    sh->cfg = cfg;
    sh->dev = config_is_dev(cfg);
    sh->mem = mem;
    sh->stop = stop;
    char *errors = NULL;
    int problems = 0;
    sh->rows = gw_routes(strcmp(cfg->app_env, "production") == 0, &sh->nrows);
    if (router_new(sh->rows, sh->nrows, &sh->router, &errors) != 0) {
        fprintf(stderr, "ecom gateway: route table problems:\n%s", errors);
        free(errors);
        errors = NULL;
        problems++;
    }
    if (flags_validate(cfg, &errors) != 0) {
        fprintf(stderr, "ecom gateway: %s", errors);
        free(errors);
        errors = NULL;
        problems++;
    }
    char selftest[256];
    if (otp_self_test(selftest, sizeof selftest) != 0) {
        /* RFC 4226 / 6238 known answers: a broken HMAC build must not issue codes */
        fprintf(stderr, "ecom gateway: OTP self-test failed: %s\n", selftest);
        problems++;
    }
    if (jwtk_init(&sh->keys, cfg, &errors) != 0) {
        fprintf(stderr, "ecom gateway: %s", errors);
        free(errors);
        errors = NULL;
        problems++;
    }
    sh->policy = policy_new(cfg->authx_schema, mem != NULL, &errors);
    if (!sh->policy) {
        fprintf(stderr, "ecom gateway: AUTHX_SCHEMA: %s", errors);
        free(errors);
        errors = NULL;
        problems++;
    }
    if (cfg->authx_bootstrap_file[0] && policy_bootstrap_load(cfg->authx_bootstrap_file, &sh->authx_boot, &errors) != 0) {
        fprintf(stderr, "ecom gateway: %s", errors);
        free(errors);
        problems++;
    }
    if (problems)
        return -1;
    sh->breakers = xcalloc(sh->nrows, sizeof *sh->breakers);
    sh->hedge_trackers = xcalloc(sh->nrows, sizeof *sh->hedge_trackers);
    sh->hedge_budgets = xcalloc(sh->nrows, sizeof *sh->hedge_budgets);
    for (size_t i = 0; i < sh->nrows; i++) {
        if (sh->rows[i].resilience.breaker)
            sh->breakers[i] = breaker_new(&sh->rows[i].resilience.breaker_params);
        if (sh->rows[i].resilience.hedge.enabled)
            sh->hedge_trackers[i] = hedge_tracker_new();
        hedge_budget_init(&sh->hedge_budgets[i], 0, 0);
    }
    sh->m_hedges_sent = metrics_counter("ecom_hedges_sent_total", "Hedged attempts sent", "");
    sh->m_handed_over = metrics_counter("ecom_http_connections_handed_over_total",
                                        "Connections a gateway thread accepted and handed to one serving fewer", "");
    sh->m_hedge_wins = metrics_counter("ecom_hedge_wins_total", "Requests answered by a hedged attempt", "");
    sh->cache = cache_new(64u << 20, 1u << 20);
    sh->rl = cfg->rate_limits ? rl_new(1u << 20) : NULL;
    chaos_init(&sh->chaos, 64);
    sh->m_cache_hit = metrics_counter("ecom_cache_requests_total", "Cache lookups by result", "result=\"hit\"");
    sh->m_cache_miss = metrics_counter("ecom_cache_requests_total", "Cache lookups by result", "result=\"miss\"");
    sh->m_cache_stale = metrics_counter("ecom_cache_requests_total", "Cache lookups by result", "result=\"stale\"");
    sh->m_idem_replay = metrics_counter("ecom_idempotency_total", "Idempotency outcomes", "outcome=\"replayed\"");
    sh->m_idem_conflict = metrics_counter("ecom_idempotency_total", "Idempotency outcomes", "outcome=\"conflict\"");
    sh->m_idem_inflight = metrics_counter("ecom_idempotency_total", "Idempotency outcomes", "outcome=\"in_flight\"");
    sh->m_latency = metrics_histogram("ecom_http_request_duration_seconds", "Request latency", "");
    sh->m_breaker_rejected = metrics_counter("ecom_breaker_rejected_total", "Calls refused by open breakers", "");
    sh->m_chaos = metrics_counter("ecom_chaos_injected_total", "Requests that got a chaos fault", "");
    sh->m_group_retries = metrics_counter("ecom_command_group_retries_total",
                                          "Command groups sent again with their claims: a key in them was not new", "");
    sh->m_writes_merged =
        metrics_counter("ecom_command_writes_merged_total",
                        "Domain writes of a command group sent in one statement with others of their kind", "");
    return 0;
}

static double breaker_state_gauge(void *arg)
{
    return (double)breaker_state((breaker_t *)arg);
}

static void shared_free(gw_shared_t *sh)
{
    for (size_t i = 0; sh->breakers && i < sh->nrows; i++) {
        if (sh->breakers[i])
            breaker_free(sh->breakers[i]);
        if (sh->hedge_trackers[i])
            hedge_tracker_free(sh->hedge_trackers[i]);
    }
    free(sh->breakers);
    free(sh->hedge_trackers);
    free(sh->hedge_budgets);
    if (sh->cache)
        cache_free(sh->cache);
    router_free(sh->router);
    jwtk_free(&sh->keys);
    rl_free(sh->rl);
    policy_sync_stop(sh->policy_sync);
    policy_free(sh->policy);
    json_object_put(sh->authx_boot);
}

int gateway_check(const config_t *cfg)
{
    gw_shared_t sh;
    atomic_bool stop = false;
    int rc = shared_init(&sh, cfg, NULL, &stop);
    shared_free(&sh);
    return rc;
}

int gw_retention_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    size_t idem = 0, auth = 0;
    int rc = gw_idem_cleanup(db, 0, limit, &idem) == 0 && gw_auth_cleanup(db, retain_s, limit, &auth) == 0 ? 0 : -1;
    *deleted = idem + auth;
    return rc;
}

int gateway_run(const config_t *cfg, memstore_t *mem, atomic_bool *stop)
{
    evthread_use_pthreads();
    gw_shared_t sh;
    if (shared_init(&sh, cfg, mem, stop) != 0) {
        shared_free(&sh);
        return -1;
    }
    for (size_t i = 0; i < sh.nrows; i++)
        if (sh.breakers[i]) {
            char labels[160];
            snprintf(labels, sizeof labels, "route=\"%s\"", route_id(&sh.rows[i]));
            metrics_gauge_fn("ecom_breaker_state", "Breaker state (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled)",
                             labels, breaker_state_gauge, sh.breakers[i]);
        }
    long n = cfg->gateway_threads > 0 ? cfg->gateway_threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    health_require(mem ? "memory-store" : "postgres");
    if (mem) {
        if (sh.authx_boot)
            policy_bootstrap_apply(sh.policy, sh.authx_boot);
    } else if (!(sh.policy_sync = policy_sync_start(sh.policy, cfg->database_url, sh.authx_boot))) {
        fprintf(stderr, "ecom gateway: the policy follower could not start\n");
        shared_free(&sh);
        return -1;
    }
    /* expired idempotency records and the login's ended rows, on a thread
     * and connection (or memory-store handle) of their own */
    janitor_t *janitor = janitor_start(&(janitor_opts_t){.database_url = cfg->database_url,
                                                         .memory = mem,
                                                         .app_name = "ecom-gateway-cleanup",
                                                         .what = "gateway",
                                                         .cleanup = gw_retention_cleanup,
                                                         .retain_s = GW_AUTH_RETAIN_S,
                                                         .every_ms = 60000});
    sh.nthreads = (int)n;
    sh.threads = xcalloc((size_t)n, sizeof *sh.threads);
    int rc = 0;
    for (int i = 0; i < sh.nthreads && rc == 0; i++)
        rc = thread_init(&sh.threads[i], &sh, i);
    if (rc == 0) {
        log_info("gateway listening on port %ld (%d threads, %s store, %s mode)", cfg->port, sh.nthreads,
                 mem ? "memory" : "postgres", sh.dev ? "development" : "production");
        for (int i = 0; i < sh.nthreads; i++)
            pthread_create(&sh.threads[i].thread, NULL, thread_main, &sh.threads[i]);
        for (int i = 0; i < sh.nthreads; i++)
            pthread_join(sh.threads[i].thread, NULL);
        log_info("gateway stopped");
    }
    janitor_stop(janitor);
    for (int i = 0; i < sh.nthreads; i++)
        thread_free(&sh.threads[i]);
    free(sh.threads);
    shared_free(&sh);
    return rc == 0 ? 0 : -1;
}
