/* http-gateway/pipeline.c: the fixed order in which a route row's policies
 * apply: request context (server.c) -> route -> flag -> authentication ->
 * tenant -> rate limit -> body -> authorization (RBAC, ReBAC, then ABAC on
 * the parsed body) -> idempotency (writes) or cache (reads) ->
 * breaker -> chaos -> handler -> breaker outcome -> schema -> cache store ->
 * send. Chaos sits at the upstream-call layer, inside the breaker, so injected
 * faults exercise the breaker and stale-if-error; a cached answer never meets
 * chaos or the breaker. */
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "http-gateway/flags.h"
#include "http-gateway/problem.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void run_upstream(gw_req_t *r);
static void after_authentication(gw_req_t *r);

/* snprintf(dst, cap, "%s", s) without printf: these run on every request. */
static void copy_str(char *dst, size_t cap, const char *s)
{
    size_t n = strnlen(s, cap - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* The decimal digits of v (>= 0) into out[24]. */
static void fmt_age(char out[24], int64_t v)
{
    char d[24];
    size_t n = 0;
    do {
        d[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        out[i] = d[n - 1 - i];
    out[n] = '\0';
}

static const char *in_header(gw_req_t *r, const char *name)
{
    return r->ev ? h1_req_header(r->ev, name) : NULL;
}

/* ---- authentication, tenant, authorization ---- */

static bool authenticate_or_reply(gw_req_t *r)
{
    gw_shared_t *sh = r->sh;
    const char *auth = in_header(r, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        const char *why = NULL;
        int64_t now_ms = clock_now_ms();
        const char *tok = auth + 7;
        bool ok = jwt_cache_get(&r->th->jwt_cache, tok, now_ms / 1000, &r->principal);
        if (!ok && (ok = jwtk_verify(&sh->keys, tok, now_ms / 1000, &r->principal, &why) == 0))
            jwt_cache_put(&r->th->jwt_cache, tok, &r->principal);
        if (ok && policy_sid_revoked(sh->policy, r->principal.sid, now_ms)) {
            ok = false;
            why = "the session was revoked";
        }
        if (ok && r->principal.sid[0] && !policy_fresh(sh->policy, clock_mono_ms())) {
            /* the list of revoked sessions may be stale: fail closed on every
             * route, not only on those that need a permission */
            gw_add_header(r, "Retry-After", "1");
            gw_problem(r, 503, "authorization-unavailable", "the authorization store is unreachable");
            return false;
        }
        if (!ok) {
            memset(&r->principal, 0, sizeof r->principal);
            gw_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
            gw_problem(r, 401, "invalid-token", why ? why : "invalid token");
            return false;
        }
        return true;
    }
    if (auth) {
        gw_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        gw_problem(r, 401, "invalid-token", "the Authorization header must carry a Bearer token");
        return false;
    }
    if (sh->dev) {
        /* development only: the runbook's token-less curls act as a dev principal */
        r->principal.present = true;
        r->principal.dev = true;
        copy_str(r->principal.sub, sizeof r->principal.sub, "dev");
        return true;
    }
    if (r->route->anonymous)
        return true;
    gw_add_header(r, "WWW-Authenticate", "Bearer");
    gw_problem(r, 401, "invalid-token", "a Bearer token is required");
    return false;
}

static bool tenant_or_reply(gw_req_t *r)
{
    const char *h = in_header(r, "x-tenant-id");
    const principal_t *p = &r->principal;
    if (h && !reqctx_tenant_valid(h)) {
        gw_problem(r, 400, "invalid-tenant", "x-tenant-id must match [A-Za-z0-9_-]{1,64}");
        return false;
    }
    if (h && p->present && !p->dev && p->tid[0] && strcmp(h, p->tid) != 0 &&
        !policy_is_member(r->sh->policy, h, p->sub)) { /* a member of that tenant may act there */
        gw_problem(r, 403, "tenant-mismatch", "x-tenant-id differs from the token's tenant");
        return false;
    }
    const char *t = h ? h : (p->present && p->tid[0]) ? p->tid : "default";
    copy_str(r->tenant, sizeof r->tenant, t);
    if (p->dev)
        copy_str(r->principal.tid, sizeof r->principal.tid, t);
    return true;
}

typedef enum { AUTHZ_OK, AUTHZ_REPLIED, AUTHZ_WAIT } authz_t;

#define AUTHZ_WAIT_MS 1000 /* longest wait for the snapshot to reach a requested revision */

static bool has_perm(gw_req_t *r, const char *perm)
{
    const principal_t *p = &r->principal;
    for (int k = 0; k < p->nperms; k++) /* granted by a token we signed */
        if (strcmp(p->perms[k], perm) == 0)
            return true;
    return policy_allows(r->sh->policy, r->tenant, p->sub, perm);
}

/* RBAC (the route's permissions), ReBAC (its relation on the object named by a
 * path parameter), then ABAC (its predicate). The snapshot must be fresh
 * (fail closed) and, when the request names a revision (x-authz-revision, as
 * returned by a policy write), at least that recent: the request waits for it
 * up to AUTHZ_WAIT_MS. */
static authz_t authorize(gw_req_t *r)
{
    const principal_t *p = &r->principal;
    const route_t *rt = r->route;
    policy_t *pol = r->sh->policy;
    bool needs_policy = rt->permissions[0] || rt->rebac.relation;
    if (p->dev || !needs_policy)
        goto abac;
    int64_t now = clock_mono_ms();
    if (!policy_fresh(pol, now)) {
        gw_add_header(r, "Retry-After", "1");
        gw_problem(r, 503, "authorization-unavailable", "the authorization store is unreachable");
        return AUTHZ_REPLIED;
    }
    const char *want = in_header(r, "x-authz-revision");
    if (want && !r->authz_min_rev) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(want, &end, 10);
        /* digits only: strtoll would take " 5", "+5" and clamp an overflow to
         * a revision no policy write ever returned */
        if (!(*want >= '0' && *want <= '9') || *end || errno) {
            gw_problem(r, 400, "invalid-revision", "x-authz-revision must be a revision number a policy write returned");
            return AUTHZ_REPLIED;
        }
        r->authz_min_rev = v;
        r->authz_deadline_ms = clock_mono_ms() + AUTHZ_WAIT_MS;
    }
    if (r->authz_min_rev && policy_revision(pol) < r->authz_min_rev) {
        if (clock_mono_ms() >= r->authz_deadline_ms) {
            gw_add_header(r, "Retry-After", "1");
            gw_problem(r, 503, "revision-unavailable", "the requested authorization revision is not visible yet");
            return AUTHZ_REPLIED;
        }
        policy_poke(pol);
        return AUTHZ_WAIT;
    }
    for (int i = 0; i < ROUTE_MAX_PERMS && rt->permissions[i]; i++) {
        if (!has_perm(r, rt->permissions[i])) {
            char detail[128];
            snprintf(detail, sizeof detail, "requires the permission %s", rt->permissions[i]);
            gw_problem(r, 403, "insufficient-scope", detail);
            return AUTHZ_REPLIED;
        }
    }
    const char *body_id = NULL;
    if (rt->rebac.object_body && r->json && json_object_is_type(r->json, json_type_object)) {
        body_id = json_get_str(r->json, rt->rebac.object_body);
        if (!body_id && json_object_object_get_ex(r->json, rt->rebac.object_body, NULL)) {
            /* there, but no plain string (a number, a "\u0000"): never "absent",
             * which would skip the check */
            char detail[128];
            snprintf(detail, sizeof detail, "\"%s\" must be a string", rt->rebac.object_body);
            gw_problem(r, 400, "validation-error", detail);
            return AUTHZ_REPLIED;
        }
    }
    if (rt->rebac.relation && (rt->rebac.object_param || body_id)) {
        const char *id = rt->rebac.object_param ? route_param(&r->params, rt->rebac.object_param) : body_id;
        char object[POLICY_REF_MAX + 2], subject[sizeof p->sub + 8];
        snprintf(object, sizeof object, "%s:%s", rt->rebac.object_type, id ? id : "");
        snprintf(subject, sizeof subject, "user:%s", p->sub);
        if (!policy_ref_valid(object, false)) {
            if (body_id) /* the handler says what a valid id is */
                goto abac;
            gw_problem(r, 404, NULL, "no such object");
            return AUTHZ_REPLIED;
        }
        if (!policy_ref_valid(subject, false) ||
            policy_check_cached(pol, &r->th->authz_cache, r->tenant, object, rt->rebac.relation, subject) !=
                POLICY_ALLOW) {
            char detail[POLICY_REF_MAX + 96];
            snprintf(detail, sizeof detail, "requires the relation %s on %s", rt->rebac.relation, object);
            gw_problem(r, 403, "forbidden", detail);
            return AUTHZ_REPLIED;
        }
    }
abac:
    if (rt->abac && !rt->abac(r)) {
        gw_problem(r, 403, "forbidden", "the request's attributes do not satisfy the route's policy");
        return AUTHZ_REPLIED;
    }
    return AUTHZ_OK;
}

/* The route's rate limit, per (tenant, principal) or per client address:
 * RateLimit-Policy and RateLimit on every answer of a limited route, 429 with
 * Retry-After over it. */
/* A query string the handlers could not read (a part without "=", an empty
 * name) would drop every filter it holds: 400, not an answer without them. */
static bool query_or_reply(gw_req_t *r)
{
    if (gw_query_valid(r))
        return true;
    gw_problem(r, 400, "invalid-query", "the query string is malformed: each part must be name=value, without %00");
    return false;
}

static bool rate_or_reply(gw_req_t *r)
{
    const route_rate_t *rate = &r->route->rate;
    if (rate->limit.count <= 0 || !r->sh->rl || !r->ev)
        return true;
    char key[REQCTX_TENANT_MAX + sizeof r->principal.sub + 160];
    if (rate->by_address) {
        snprintf(key, sizeof key, "a|%s|%s", route_id(r->route), h1_req_peer(r->ev));
    } else {
        snprintf(key, sizeof key, "p|%s|%s|%s", route_id(r->route), r->tenant, r->principal.sub);
    }
    rl_result_t res;
    rl_take(r->sh->rl, key, &rate->limit, clock_now_ms(), &res);
    char v[96];
    snprintf(v, sizeof v, "\"default\";q=%d;w=%lld", rate->limit.count, (long long)(rate->limit.period_ms / 1000));
    gw_add_header(r, "RateLimit-Policy", v);
    snprintf(v, sizeof v, "\"default\";r=%d;t=%lld", res.remaining, (long long)((res.reset_ms + 999) / 1000));
    gw_add_header(r, "RateLimit", v);
    if (res.allowed)
        return true;
    snprintf(v, sizeof v, "%lld", (long long)((res.retry_after_ms + 999) / 1000));
    gw_add_header(r, "Retry-After", v);
    gw_problem(r, 429, "rate-limited", "too many requests for this route; retry after Retry-After seconds");
    return false;
}

static bool body_or_reply(gw_req_t *r)
{
    bool writes = r->method & (ROUTE_POST | ROUTE_PUT | ROUTE_PATCH);
    if (!writes || r->body_len == 0)
        return true;
    const char *ct = in_header(r, "Content-Type");
    size_t n = ct ? strcspn(ct, "; ") : 0;
    if (!ct || !((n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
                 (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0))) {
        gw_problem(r, 415, "unsupported-media-type", "send the body as application/json");
        return false;
    }
    const char *why = NULL;
    if (json_parse_strict(r->body, r->body_len, &r->json, &why) != 0) {
        gw_problem(r, 400, "malformed-json", why);
        return false;
    }
    return true;
}

/* ---- cache ---- */

static void release_body(const void *data, size_t len, void *arg)
{
    (void)data;
    (void)len;
    cache_entry_release(arg);
}

static void serve_entry(gw_req_t *r, cache_entry_t *e, cache_out_t kind, bool collapsed)
{
    cache_policy_t pol;
    route_cache_policy(r->route, &pol);
    char v[CACHE_STATUS_MAX], age[24];
    cache_status_value(v, sizeof v, kind, cache_ttl_s(e, &pol), false, collapsed);
    gw_add_header(r, "Cache-Status", v);
    gw_add_header(r, "X-Cache-Status", cache_x_status(kind));
    gw_add_header(r, "ETag", e->etag);
    fmt_age(age, cache_age_s(e)); /* never negative */
    gw_add_header(r, "Age", age);
    const char *inm = in_header(r, "If-None-Match");
    r->answered = true;
    if (inm && cache_etag_match(inm, e->etag)) {
        r->status = 304;
        r->content_type = NULL;
    } else {
        r->status = e->status;
        r->content_type = e->content_type ? e->content_type : "application/json";
        /* the body by reference (no copy), the entry held until the bytes are written */
        cache_entry_ref(e);
        if (evbuffer_add_reference(r->out, e->body, e->body_len, release_body, e) != 0) {
            cache_entry_release(e);
            evbuffer_add(r->out, e->body, e->body_len);
        }
        /* content_type must outlive the entry reference: keep the reference until free */
    }
    gw_finish(r);
}

typedef struct wait_msg {
    gw_req_t *r;
    cache_wait_outcome_t outcome;
    cache_entry_t *entry;
} wait_msg_t;

static void on_wait_local(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wait_msg_t *m = arg;
    gw_req_t *r = m->r;
    log_ctx_set(&r->log);
    if (r->cache_waiting) {
        event_del(&r->cache_wait_ev);
        r->cache_waiting = false;
    }
    if (r->answered) {
        cache_entry_release(m->entry);
    } else if (m->outcome == CACHE_WAIT_BYPASS || !m->entry) {
        cache_entry_release(m->entry);
        r->cache_out = CACHE_OUT_BYPASS;
        run_upstream(r);
    } else {
        cache_entry_release(r->lk.entry);
        r->lk.entry = m->entry; /* released with the request */
        serve_entry(r, m->entry, m->outcome == CACHE_WAIT_STALE ? CACHE_OUT_STALE : CACHE_OUT_MISS, true);
    }
    free(m);
    gw_unref(r);
    log_ctx_set(NULL);
}

/* Called on the filling request's thread: hop to the waiter's. */
static void on_wait(void *arg, cache_wait_outcome_t outcome, cache_entry_t *entry)
{
    gw_req_t *r = arg;
    wait_msg_t *m = xmalloc(sizeof *m);
    *m = (wait_msg_t){r, outcome, entry};
    if (event_base_once(r->th->base, -1, EV_TIMEOUT, on_wait_local, m, NULL) != 0)
        on_wait_local(-1, 0, m); /* same thread at shutdown: deliver now */
}

static void on_wait_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    r->cache_waiting = false;
    if (cache_wait_cancel(r->sh->cache, r->cache_key, r->cache_ticket) != 0)
        return; /* already handed over: the callback is on its way */
    log_ctx_set(&r->log);
    r->cache_out = CACHE_OUT_BYPASS;
    run_upstream(r);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void start_refresh(gw_req_t *r);

static void cache_stage(gw_req_t *r)
{
    gw_shared_t *sh = r->sh;
    const route_t *rt = r->route;
    char *custom = rt->cache.key ? rt->cache.key(r) : NULL;
    cache_key_parts_t parts = {.route_id = route_id(rt),
                               .method = r->method_name,
                               .path = r->path,
                               .query = r->query,
                               .custom = custom,
                               .tenant = r->tenant,
                               .principal = r->principal.sub,
                               .shared = rt->cache.shared};
    r->cache_key = cache_key_build(&parts);
    free(custom);
    cache_policy_t pol;
    route_cache_policy(rt, &pol);
    for (int tries = 0; tries < 3; tries++) {
        cache_lookup(sh->cache, r->cache_key, &pol, &r->lk);
        switch (r->lk.result) {
        case CACHE_HIT:
            metrics_add(sh->m_cache_hit, 1);
            serve_entry(r, r->lk.entry, CACHE_OUT_HIT, false);
            return;
        case CACHE_STALE:
            metrics_add(sh->m_cache_stale, 1);
            if (r->lk.refresh_owner)
                start_refresh(r);
            serve_entry(r, r->lk.entry, CACHE_OUT_STALE, false);
            return;
        case CACHE_MISS:
            metrics_add(sh->m_cache_miss, 1);
            r->cache_leader = true;
            r->cache_out = r->lk.entry ? CACHE_OUT_REFRESH : CACHE_OUT_MISS;
            run_upstream(r);
            return;
        case CACHE_MISS_WAIT:
            gw_ref(r);
            if (cache_wait_register(sh->cache, r->cache_key, on_wait, r, &r->cache_ticket) != 0) {
                gw_unref(r);
                cache_entry_release(r->lk.entry);
                r->lk.entry = NULL;
                continue; /* the fill ended meanwhile: look again */
            }
            metrics_add(sh->m_cache_miss, 1);
            evtimer_assign(&r->cache_wait_ev, r->th->base, on_wait_timeout, r);
            gw_timer_add(&r->cache_wait_ev, pol.lock_timeout_ms);
            r->cache_waiting = true;
            return;
        }
    }
    r->cache_out = CACHE_OUT_BYPASS;
    run_upstream(r);
}

static void on_bg_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    r->timeout_armed = false;
    if (!r->answered)
        gw_problem(r, 504, "upstream-timeout", "background refresh timed out");
}

/* A stale-while-revalidate refresh: the same request again, with no client,
 * whose answer only goes into the cache. */
static void start_refresh(gw_req_t *r)
{
    gw_req_t *bg = gw_req_new(r->th);
    bg->background = true;
    bg->start_us = clock_mono_us();
    bg->out = evbuffer_new();
    bg->route = r->route;
    bg->route_index = r->route_index;
    bg->params = r->params;
    bg->method = ROUTE_GET;
    bg->method_name = "GET";
    bg->path = xstrdup(r->path);
    bg->query = r->query ? xstrdup(r->query) : NULL;
    memcpy(bg->request_id, r->request_id, sizeof bg->request_id);
    bg->trace = r->trace;
    memcpy(bg->traceparent, r->traceparent, sizeof bg->traceparent);
    memcpy(bg->tenant, r->tenant, sizeof bg->tenant);
    bg->principal = r->principal;
    bg->cache_key = xstrdup(r->cache_key);
    bg->lk.fill = r->lk.fill;
    bg->lk.entry = cache_entry_ref(r->lk.entry);
    bg->cache_refresh = true;
    bg->log = (log_ctx_t){.request_id = bg->request_id, .trace_id = bg->trace.trace_id};
    evtimer_assign(&bg->timeout_ev, bg->th->base, on_bg_timeout, bg);
    gw_timer_add(&bg->timeout_ev, GW_REQUEST_TIMEOUT_MS);
    bg->timeout_armed = true;
    gw_ref(bg);
    run_upstream(bg);
    gw_unref(bg);
}

/* ---- breaker, chaos, handler ---- */

static void after_chaos_delay(gw_req_t *r)
{
    if (r->answered)
        return;
    if (r->chaos.abort) {
        char detail[96];
        snprintf(detail, sizeof detail, "injected upstream failure (chaos, status %d)", r->chaos.status);
        gw_problem(r, r->chaos.status, "upstream-error", detail);
        return;
    }
    gw_run_handler(r);
}

static void on_chaos_delay(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    r->chaos_armed = false;
    log_ctx_set(&r->log);
    after_chaos_delay(r);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void run_upstream(gw_req_t *r)
{
    gw_shared_t *sh = r->sh;
    breaker_t *b = sh->breakers[r->route_index];
    if (b) {
        if (!breaker_acquire(b, &r->permit)) {
            metrics_add(sh->m_breaker_rejected, 1);
            if (r->lk.entry && !r->background) {
                /* the breaker is open but a copy exists: serve it stale rather than fail */
                serve_entry(r, r->lk.entry, CACHE_OUT_STALE, false);
                if (r->cache_leader || r->cache_refresh) {
                    cache_waiters_t *w = cache_fill_failed(sh->cache, r->cache_key, r->lk.fill, true);
                    cache_waiters_run(w);
                }
                return;
            }
            char ra[24];
            snprintf(ra, sizeof ra, "%lld", (long long)((r->permit.retry_after_ms + 999) / 1000));
            gw_add_header(r, "Retry-After", ra);
            gw_problem(r, 503, "circuit-open", "the circuit breaker for this route is open");
            return;
        }
        r->has_permit = true;
    }
    r->upstream_start_us = clock_mono_us();
    chaos_decide(&sh->chaos, &r->th->rng, &r->route->chaos, &r->chaos);
    if (r->chaos.delay || r->chaos.abort)
        metrics_add(sh->m_chaos, 1);
    if (r->chaos.delay && r->chaos.delay_ms > 0) {
        evtimer_assign(&r->chaos_ev, r->th->base, on_chaos_delay, r);
        gw_timer_add(&r->chaos_ev, r->chaos.delay_ms);
        r->chaos_armed = true;
        gw_ref(r);
        return;
    }
    after_chaos_delay(r);
}

void gw_pipeline_upstream(gw_req_t *r)
{
    run_upstream(r);
}

void gw_pipeline_start(gw_req_t *r)
{
    gw_shared_t *sh = r->sh;
    const route_t *rt = NULL;
    switch (router_match(sh->router, r->method, r->path, &r->params, &rt)) {
    case ROUTE_NOT_FOUND:
        gw_problem(r, 404, NULL, "no route matches this path");
        return;
    case ROUTE_METHOD_NOT_ALLOWED:
        gw_add_header(r, "Allow", r->params.allow);
        gw_problem(r, 405, NULL, "this path does not accept that method");
        return;
    case ROUTE_MATCH:
        break;
    }
    r->route = rt;
    r->route_index = (size_t)(rt - sh->rows);
    if (rt->flag.name) {
        flag_eval_t fe;
        flags_eval(sh->cfg, rt->flag.name, rt->flag.default_on, &fe);
        if (!fe.value) {
            gw_problem(r, 404, NULL, "no route matches this path");
            return;
        }
    }
    if (!query_or_reply(r) || !authenticate_or_reply(r) || !tenant_or_reply(r) || !rate_or_reply(r) ||
        !body_or_reply(r))
        return;
    after_authentication(r);
}

static void on_authz_wait(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = arg;
    r->authz_armed = false;
    log_ctx_set(&r->log);
    if (!r->answered)
        after_authentication(r);
    gw_unref(r);
    log_ctx_set(NULL);
}

/* Authorization (perhaps after waiting for the snapshot), then idempotency or
 * cache, then the upstream stages. */
static void after_authentication(gw_req_t *r)
{
    const route_t *rt = r->route;
    switch (authorize(r)) {
    case AUTHZ_REPLIED:
        return;
    case AUTHZ_WAIT:
        evtimer_assign(&r->authz_ev, r->th->base, on_authz_wait, r);
        gw_timer_add(&r->authz_ev, 2);
        r->authz_armed = true;
        gw_ref(r);
        return;
    case AUTHZ_OK:
        break;
    }
    if ((r->method & (ROUTE_POST | ROUTE_PATCH)) && rt->idem.enabled) {
        const char *key = in_header(r, "Idempotency-Key");
        if (!key && rt->idem.required) {
            gw_problem(r, 400, "idempotency-key-missing", "this route requires an Idempotency-Key header");
            return;
        }
        if (key) {
            if (idem_key_parse(key, r->idem_key) != 0) {
                gw_problem(r, 400, "idempotency-key-invalid",
                           "Idempotency-Key must be 1-255 visible characters or an sf-string");
                return;
            }
            if (idem_fingerprint(r->method_name, r->path, r->query, r->body, r->body_len, r->fingerprint) != 0) {
                gw_problem(r, 500, NULL, "fingerprint failed");
                return;
            }
            r->idem_store = idem_store_key(r->tenant, r->principal.sub, r->method_name, rt->path, r->idem_key);
            gw_idem_claim(r);
            return;
        }
    }
    if ((r->method & (ROUTE_GET | ROUTE_HEAD)) && rt->cache.ttl_ms > 0) {
        cache_stage(r);
        return;
    }
    run_upstream(r);
}

/* The handler has answered: apply the post-handler policies and send. */
void gw_pipeline_answered(gw_req_t *r)
{
    gw_shared_t *sh = r->sh;
    if (r->has_permit) {
        r->has_permit = false;
        breaker_outcome_t o = r->status >= 500 ? BREAKER_FAILURE : r->status >= 400 ? BREAKER_IGNORED : BREAKER_SUCCESS;
        breaker_record(sh->breakers[r->route_index], &r->permit, o,
                       (clock_mono_us() - r->upstream_start_us) / 1000);
    }
    if (r->chaos.delay || r->chaos.abort) {
        gw_add_header(r, CHAOS_HEADER, chaos_header_value(&r->chaos));
        chaos_done(&sh->chaos, &r->chaos);
        memset(&r->chaos, 0, sizeof r->chaos);
    }
    if (r->cache_leader || r->cache_refresh) {
        r->cache_leader = r->cache_refresh = false;
        size_t len = evbuffer_get_length(r->out);
        cache_waiters_t *w;
        /* what the handler said of its answer counts (private, no-store, a cookie) */
        const char *cc = NULL;
        bool cookie = false;
        for (int i = 0; i < r->nheaders; i++) {
            if (strcasecmp(r->headers[i].name, "Cache-Control") == 0)
                cc = r->headers[i].value;
            cookie = cookie || strcasecmp(r->headers[i].name, "Set-Cookie") == 0;
        }
        bool stored = cache_storable(r->status, cc, cookie);
        if (stored)
            w = cache_store(sh->cache, r->cache_key, r->lk.fill, r->status, r->content_type, evbuffer_pullup(r->out, -1),
                            len);
        else
            w = cache_fill_failed(sh->cache, r->cache_key, r->lk.fill, r->status >= 500);
        if (!r->background) {
            if (!stored && r->status >= 500 && r->lk.entry) {
                /* stale-if-error: the refresh failed, a copy is still allowed */
                cache_waiters_run(w);
                evbuffer_drain(r->out, len);
                gw_clear_headers(r);
                serve_entry(r, r->lk.entry, CACHE_OUT_STALE, false);
                return;
            }
            char v[CACHE_STATUS_MAX];
            cache_status_value(v, sizeof v, r->cache_out, 0, stored, false);
            gw_add_header(r, "Cache-Status", v);
            gw_add_header(r, "X-Cache-Status", cache_x_status(r->cache_out));
            if (stored) {
                char etag[CACHE_ETAG_BUF];
                cache_etag(evbuffer_pullup(r->out, -1), len, etag);
                gw_add_header(r, "ETag", etag);
                gw_add_header(r, "Age", "0");
            }
        }
        cache_waiters_run(w);
    }
    /* answered without committing: nothing of it stays, in memory not the
     * key's claim either (PostgreSQL writes none for such an answer) */
    if (r->pg || r->mem_tx || (r->th->memdb && r->idem_active))
        gw_tx_abort(r);
    gw_finish(r);
}
