/* http-gateway/routes.c: the route table (DESIGN §5) and its handlers. A new
 * route is one row and one handler. The analytics routes are the original
 * runbook's: GET/POST /events, GET /me, GET /flaky. */
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/uuid.h"
#include "http-gateway/routes_auth.h"
#include "http-gateway/routes_payments.h"
#include "services/analytics/analytics.h"

#include <event2/buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVENTS_LIMIT_DEFAULT 50
#define EVENTS_LIMIT_MAX 200

/* ---- GET /api/v1/analytics/events ---- */

/* The runbook's key function: "events:" + JSON of the query. */
static char *events_key(gw_req_t *r)
{
    /* xasprintf("events:%s", query) without printf: it runs on every cache hit */
    static const char prefix[] = "events:";
    const char *q = r->query ? r->query : "";
    size_t n = strlen(q);
    char *key = xmalloc(sizeof prefix + n);
    memcpy(key, prefix, sizeof prefix - 1);
    memcpy(key + sizeof prefix - 1, q, n + 1);
    return key;
}

typedef struct events_q {
    char type[ENV_NAME_MAX + 1];
    bool has_type;
    char cursor[UUID_STR_LEN];
    bool has_cursor;
    size_t limit;
    char aggregate[POLICY_REF_MAX + 1]; /* only this aggregate's events ("" = all) */
    char since[UUID_STR_LEN];           /* the smallest UUIDv7 of the since instant ("" = none) */
} events_q_t;

/* since: Unix milliseconds, or RFC 3339 UTC ("2026-11-26T17:00:00Z", with an
 * optional fraction). Event ids are UUIDv7 minted when the event was recorded,
 * so "recorded at or after since" is "id >= the smallest id of that
 * millisecond", one range of the (tenant, id) index. -1 when malformed. */
static int since_bound(const char *v, char out[UUID_STR_LEN])
{
    int64_t ms = -1;
    size_t n = strlen(v);
    if (n > 0 && n <= 15 && strspn(v, "0123456789") == n) {
        ms = strtoll(v, NULL, 10);
    } else {
        struct tm tm = {0};
        const char *rest = strptime(v, "%Y-%m-%dT%H:%M:%S", &tm);
        int frac = 0, digits = 0;
        if (rest && *rest == '.')
            for (rest++; *rest >= '0' && *rest <= '9'; rest++, digits++)
                if (digits < 3)
                    frac = frac * 10 + (*rest - '0');
        for (; digits > 0 && digits < 3; digits++)
            frac *= 10;
        if (rest && (strcmp(rest, "Z") == 0 || strcmp(rest, "z") == 0)) {
            time_t t = timegm(&tm);
            if (t >= 0)
                ms = (int64_t)t * 1000 + frac;
        }
    }
    if (ms < 0 || ms >= (1LL << 48))
        return -1;
    snprintf(out, UUID_STR_LEN, "%08llx-%04llx-7000-8000-000000000000", (unsigned long long)(ms >> 16),
             (unsigned long long)(ms & 0xffff));
    return 0;
}

static bool events_query_or_reply(gw_req_t *r, events_q_t *q)
{
    char buf[256];
    memset(q, 0, sizeof *q);
    q->limit = EVENTS_LIMIT_DEFAULT;
    const char *v;
    if ((v = gw_query_arg(r, "type", buf, sizeof buf))) {
        if (!envelope_name_valid(v)) {
            gw_problem(r, 400, "validation-error", "type must match [A-Za-z0-9._:-]{1,128}");
            return false;
        }
        snprintf(q->type, sizeof q->type, "%s", v);
        q->has_type = true;
    }
    if ((v = gw_query_arg(r, "limit", buf, sizeof buf))) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > EVENTS_LIMIT_MAX) {
            gw_problem(r, 400, "validation-error", "limit must be an integer from 1 to 200");
            return false;
        }
        q->limit = (size_t)n;
    }
    if ((v = gw_query_arg(r, "since", buf, sizeof buf)) && since_bound(v, q->since) != 0) {
        gw_problem(r, 400, "validation-error", "since must be Unix milliseconds or an RFC 3339 UTC time");
        return false;
    }
    if ((v = gw_query_arg(r, "cursor", buf, sizeof buf))) {
        if (!uuid_valid(v)) {
            gw_problem(r, 400, "validation-error", "cursor must be the nextCursor of a previous page");
            return false;
        }
        snprintf(q->cursor, sizeof q->cursor, "%s", v);
        q->has_cursor = true;
    }
    return true;
}

static json_object *event_json(const char *id, const char *type, const char *topic, const char *aggregate,
                               int64_t seq, int64_t occurred_ms, const char *payload)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(id));
    json_object_object_add(o, "type", json_object_new_string(type));
    json_object_object_add(o, "topic", json_object_new_string(topic));
    json_object_object_add(o, "aggregateId", json_object_new_string(aggregate));
    json_object_object_add(o, "seq", json_object_new_int64(seq));
    char ts[40];
    time_t secs = (time_t)(occurred_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(occurred_ms % 1000));
    json_object_object_add(o, "occurredAt", json_object_new_string(ts));
    json_object *p = json_tokener_parse(payload);
    json_object_object_add(o, "payload", p);
    return o;
}

static void events_answer(gw_req_t *r, json_object *data, size_t limit)
{
    /* the reads fetch one row more than the page: a next page exists exactly when it came */
    size_t n = json_object_array_length(data);
    json_object *body = json_object_new_object();
    json_object *next = NULL;
    if (n > limit) {
        json_object_array_del_idx(data, limit, n - limit);
        n = limit;
        json_object *last = json_object_array_get_idx(data, n - 1);
        json_object *id;
        if (json_object_object_get_ex(last, "id", &id))
            next = json_object_new_string(json_object_get_string(id));
    }
    json_object_object_add(body, "data", data);
    json_object_object_add(body, "count", json_object_new_int64((int64_t)n));
    json_object_object_add(body, "nextCursor", next);
    gw_respond_json(r, 200, body);
}

/* One GET /events read, possibly hedged: the primary query, and after the
 * route's p95 (or at once when the primary fails) a second one on another
 * connection, within the hedge budget and never while the breaker is not
 * closed. The first good answer wins; a late one is read and dropped. */
typedef struct events_ctx {
    gw_req_t *r;
    events_q_t q;
    int inflight;  /* attempts not finished */
    int attempts;  /* attempts started */
    bool done;     /* answered */
    struct event hedge_ev;
    bool hedge_armed;
} events_ctx_t;

typedef struct attempt {
    events_ctx_t *ec;
    int n; /* 0 = primary */
    int64_t start_us;
} attempt_t;

static void start_attempt(events_ctx_t *ec);

static void ec_maybe_free(events_ctx_t *ec)
{
    if (ec->inflight > 0 || ec->hedge_armed)
        return;
    gw_req_t *r = ec->r;
    free(ec);
    gw_unref(r);
}

static bool may_hedge(events_ctx_t *ec)
{
    gw_req_t *r = ec->r;
    gw_shared_t *sh = r->sh;
    const hedge_params_t *hp = &r->route->resilience.hedge;
    breaker_t *b = sh->breakers[r->route_index];
    return hp->enabled && !ec->done && ec->attempts < hedge_max_attempts(hp) &&
           hedge_budget_allows(&sh->hedge_budgets[r->route_index]) && (!b || breaker_state(b) == BREAKER_CLOSED);
}

static void on_hedge_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    events_ctx_t *ec = arg;
    ec->hedge_armed = false;
    if (may_hedge(ec)) {
        metrics_add(ec->r->sh->m_hedges_sent, 1);
        start_attempt(ec);
    }
    ec_maybe_free(ec);
}

static void arm_hedge(events_ctx_t *ec)
{
    gw_req_t *r = ec->r;
    if (!may_hedge(ec) || ec->hedge_armed)
        return;
    int64_t delay = hedge_delay_ms(r->sh->hedge_trackers[r->route_index], &r->route->resilience.hedge);
    if (delay < 0)
        return; /* not enough samples for a p95 yet */
    evtimer_assign(&ec->hedge_ev, r->th->base, on_hedge_timer, ec);
    gw_timer_add(&ec->hedge_ev, delay);
    ec->hedge_armed = true;
}

static void attempt_done(attempt_t *at, bool ok)
{
    events_ctx_t *ec = at->ec;
    gw_req_t *r = ec->r;
    gw_shared_t *sh = r->sh;
    if (sh->hedge_trackers[r->route_index] && ok)
        hedge_tracker_observe(sh->hedge_trackers[r->route_index], clock_mono_us() - at->start_us);
    hedge_budget_record(&sh->hedge_budgets[r->route_index], ok);
    ec->inflight--;
    free(at);
}

static void on_events(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)n;
    attempt_t *at = arg;
    events_ctx_t *ec = at->ec;
    gw_req_t *r = ec->r;
    int which = at->n;
    log_ctx_set(&r->log);
    attempt_done(at, err == NULL);
    if (ec->done) {
        pga_release(c, false); /* another attempt answered first */
    } else if (err) {
        log_warn("events query failed: %s", err);
        pga_release(c, false);
        if (may_hedge(ec)) { /* a failure sends the next attempt at once */
            metrics_add(r->sh->m_hedges_sent, 1);
            start_attempt(ec);
        } else if (ec->inflight == 0) {
            ec->done = true;
            gw_problem(r, 503, "storage-unavailable", "the events could not be read");
        }
    } else {
        ec->done = true;
        if (ec->hedge_armed) {
            event_del(&ec->hedge_ev);
            ec->hedge_armed = false;
        }
        if (which > 0)
            metrics_add(r->sh->m_hedge_wins, 1);
        PGresult *q = res[0];
        json_object *data = json_object_new_array();
        for (int i = 0; i < PQntuples(q); i++)
            json_object_array_add(data, event_json(PQgetvalue(q, i, 0), PQgetvalue(q, i, 1), PQgetvalue(q, i, 2),
                                                   PQgetvalue(q, i, 3), strtoll(PQgetvalue(q, i, 4), NULL, 10),
                                                   strtoll(PQgetvalue(q, i, 5), NULL, 10), PQgetvalue(q, i, 6)));
        pga_release(c, false);
        events_answer(r, data, ec->q.limit);
    }
    ec_maybe_free(ec);
    log_ctx_set(NULL);
}

static void on_events_conn(pga_conn_t *c, const char *err, void *arg)
{
    attempt_t *at = arg;
    events_ctx_t *ec = at->ec;
    gw_req_t *r = ec->r;
    log_ctx_set(&r->log);
    if (!c || ec->done) {
        if (c)
            pga_release(c, false);
        else
            log_warn("no database connection for events: %s", err ? err : "?");
        attempt_done(at, c != NULL);
        if (!ec->done && ec->inflight == 0) {
            ec->done = true;
            gw_problem(r, 503, "storage-unavailable", "the database is unavailable");
        }
        ec_maybe_free(ec);
        log_ctx_set(NULL);
        return;
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%zu", ec->q.limit + 1);
    const char *since = ec->q.since[0] ? ec->q.since : NULL;
    const char *p[] = {r->tenant, ec->q.has_type ? ec->q.type : NULL, ec->q.has_cursor ? ec->q.cursor : NULL, lim,
                       since, ec->q.aggregate};
    const pga_stmt_t all = {.name = "gw_events",
                            .sql = "SELECT id, type, topic, aggregate_id, seq,"
                                   " (extract(epoch FROM occurred_at) * 1000)::bigint, payload::text"
                                   " FROM analytics.events WHERE tenant = $1 AND ($2::text IS NULL OR type = $2)"
                                   " AND ($3::uuid IS NULL OR id < $3::uuid) AND ($5::uuid IS NULL OR id >= $5::uuid)"
                                   " ORDER BY id DESC LIMIT $4",
                            .nparams = 5,
                            .params = p};
    const pga_stmt_t one = {.name = "gw_aggregate_events",
                            .sql = "SELECT id, type, topic, aggregate_id, seq,"
                                   " (extract(epoch FROM occurred_at) * 1000)::bigint, payload::text"
                                   " FROM analytics.events WHERE tenant = $1 AND aggregate_id = $6"
                                   /* the partial index of project feeds (analytics/006) */
                                   " AND aggregate_id LIKE 'project:%'"
                                   " AND ($2::text IS NULL OR type = $2) AND ($3::uuid IS NULL OR id < $3::uuid)"
                                   " AND ($5::uuid IS NULL OR id >= $5::uuid) ORDER BY id DESC LIMIT $4",
                            .nparams = 6,
                            .params = p};
    const pga_stmt_t st[] = {ec->q.aggregate[0] ? one : all};
    if (pga_pipeline(c, st, 1, on_events, at) != 0) {
        pga_release(c, true);
        attempt_done(at, false);
        if (!ec->done && ec->inflight == 0) {
            ec->done = true;
            gw_problem(r, 503, "storage-unavailable", "the database is unavailable");
        }
        ec_maybe_free(ec);
    }
    log_ctx_set(NULL);
}

static void start_attempt(events_ctx_t *ec)
{
    attempt_t *at = xmalloc(sizeof *at);
    *at = (attempt_t){ec, ec->attempts, clock_mono_us()};
    ec->attempts++;
    ec->inflight++;
    if (pga_acquire(ec->r->th->pg, on_events_conn, at) != 0) {
        ec->inflight--;
        free(at);
        if (!ec->done && ec->inflight == 0) {
            ec->done = true;
            gw_add_header(ec->r, "Retry-After", "1");
            gw_problem(ec->r, 503, "storage-unavailable", "too many requests are waiting for the database");
        }
        return;
    }
    arm_hedge(ec);
}

static void list_events(gw_req_t *r, const events_q_t *qp)
{
    events_q_t q = *qp;
    if (r->th->memdb) {
        analytics_event_t *ev = NULL;
        size_t n = 0;
        if (analytics_list_filtered(r->th->memdb, r->tenant, q.has_type ? q.type : NULL,
                                    q.aggregate[0] ? q.aggregate : NULL, q.has_cursor ? q.cursor : NULL, q.limit + 1,
                                    &ev, &n) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the events could not be read");
            return;
        }
        json_object *data = json_object_new_array();
        for (size_t i = 0; i < n && (!q.since[0] || strcmp(ev[i].id, q.since) >= 0); i++) /* newest first */
            json_object_array_add(data, event_json(ev[i].id, ev[i].type, ev[i].topic, ev[i].aggregate_id, ev[i].seq,
                                                   ev[i].occurred_ms, ev[i].payload));
        analytics_events_free(ev, n);
        events_answer(r, data, q.limit);
        return;
    }
    events_ctx_t *ec = xcalloc(1, sizeof *ec);
    ec->r = r;
    ec->q = q;
    gw_ref(r);
    start_attempt(ec);
    ec_maybe_free(ec);
}

static void get_events(gw_req_t *r)
{
    events_q_t q;
    if (events_query_or_reply(r, &q))
        list_events(r, &q);
}

/* ---- GET /api/v1/analytics/projects/:projectId/events: ReBAC viewer ---- */

/* The project's events (those posted with its projectId), newest first, with
 * the filters of GET /events; the pipeline checked viewer on the project. */
static void get_project_events(gw_req_t *r)
{
    events_q_t q;
    if (!events_query_or_reply(r, &q))
        return;
    /* checked here too: a development request without a token skips the
     * ReBAC stage that refuses such an id (a %FF was PostgreSQL's 503) */
    int n = snprintf(q.aggregate, sizeof q.aggregate, "project:%s", route_param(&r->params, "projectId"));
    if (n < 0 || (size_t)n >= sizeof q.aggregate || !policy_ref_valid(q.aggregate, false)) {
        gw_problem(r, 404, NULL, "no such object");
        return;
    }
    list_events(r, &q);
}

/* ---- POST /api/v1/analytics/events ---- */

static void post_event(gw_req_t *r)
{
    const char *type = json_object_is_type(r->json, json_type_object) ? json_get_str(r->json, "type") : NULL;
    if (!type || !envelope_name_valid(type)) {
        gw_problem(r, 400, "validation-error",
                   "the body must be a JSON object with a \"type\" string matching [A-Za-z0-9._:-]{1,128}");
        return;
    }
    /* the aggregate orders a stream of events: a project's, a user's, or the event alone */
    char aggregate[POLICY_REF_MAX + 16];
    const char *project = json_get_str(r->json, "projectId");
    json_object *pv = NULL;
    if (json_object_object_get_ex(r->json, "projectId", &pv) &&
        (!project || (snprintf(aggregate, sizeof aggregate, "project:%s", project), !policy_ref_valid(aggregate, false)))) {
        gw_problem(r, 400, "validation-error", "projectId must be an id of [A-Za-z0-9_.@|:+=-], at most 120 bytes");
        return;
    }
    bool fresh = false; /* an aggregate made for this event alone */
    if (!project && r->route->abac) {
        snprintf(aggregate, sizeof aggregate, "user:%s", r->principal.sub);
    } else if (!project) {
        char uuid[UUID_STR_LEN];
        uuid_v7(uuid);
        snprintf(aggregate, sizeof aggregate, "event:%s", uuid);
        fresh = true;
    }
    outbox_msg_t m = {.topic = "analytics",
                      .type = r->route->publish,
                      .tenant = r->tenant,
                      .aggregate_id = aggregate,
                      .traceparent = r->traceparent,
                      .request_id = r->request_id,
                      .payload = r->body,
                      .sole = fresh};
    char id[UUID_STR_LEN];
    const char *why = NULL;
    if (gw_cmd_outbox(r, &m, id, &why) != 0) {
        gw_problem(r, 400, "validation-error", why);
        return;
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "id", json_object_new_string(id));
    json_object_object_add(body, "status", json_object_new_string("accepted"));
    json_object_object_add(body, "type", json_object_new_string(type));
    gw_cmd_commit(r, 202, body);
}

/* ---- POST /api/v1/analytics/me/events: ABAC ---- */

/* The runbook's predicate principal.userId === body.userId: the body's userId
 * must be a string equal, byte for byte, to the caller's id (a number, a
 * missing field or an embedded NUL never matches). The body was parsed
 * strictly (duplicate keys and trailing data refused), so the handler sees
 * exactly the value checked here. */
static bool abac_body_user_is_principal(gw_req_t *r)
{
    json_object *v;
    if (!r->principal.present || !json_object_is_type(r->json, json_type_object) ||
        !json_object_object_get_ex(r->json, "userId", &v) || !json_object_is_type(v, json_type_string))
        return false;
    size_t n = (size_t)json_object_get_string_len(v);
    return n == strlen(r->principal.sub) && memcmp(json_object_get_string(v), r->principal.sub, n) == 0;
}

/* ---- GET /api/v1/analytics/me ---- */

static void get_me(gw_req_t *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "requestId", json_object_new_string(r->request_id));
    json_object_object_add(o, "traceId", json_object_new_string(r->trace.trace_id));
    json_object_object_add(o, "tenant", json_object_new_string(r->tenant));
    const principal_t *p = &r->principal;
    if (p->present) {
        json_object *pj = json_object_new_object();
        json_object_object_add(pj, "userId", json_object_new_string(p->sub));
        json_object_object_add(pj, "tenantId", json_object_new_string(p->tid[0] ? p->tid : r->tenant));
        if (p->sid[0])
            json_object_object_add(pj, "sessionId", json_object_new_string(p->sid));
        /* roles as the policy holds them now (a token carries none of its own) */
        json_object *roles = p->dev ? json_object_new_array() : policy_roles_of(r->sh->policy, r->tenant, p->sub);
        for (int i = 0; i < p->nroles; i++)
            json_object_array_add(roles, json_object_new_string(p->roles[i]));
        json_object_object_add(pj, "roles", roles);
        if (p->dev)
            json_object_object_add(pj, "dev", json_object_new_boolean(1));
        json_object_object_add(o, "principal", pj);
    } else {
        json_object_object_add(o, "principal", NULL);
    }
    gw_respond_json(r, 200, o);
}

/* ---- GET /api/v1/analytics/flaky ---- */

static void get_flaky(gw_req_t *r)
{
    /* reached only when chaos lets the call through */
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(1));
    gw_respond_json(r, 200, o);
}

/* ---- the table ---- */

/* The runbook's EventsResponse: data (array of objects) and count, both required. */
static const schema_t event_item = {.type = SCHEMA_OBJECT, .additional_properties = true};
static const schema_t event_list = {.type = SCHEMA_ARRAY, .items = &event_item};
static const schema_t cursor_schema = {.type = SCHEMA_STRING, .nullable = true};
static const schema_prop_t events_props[] = {
    {"data", &event_list, true},
    {"count", &schema_number, true},
    {"nextCursor", &cursor_schema, false},
    {NULL, NULL, false},
};
static const schema_t events_response = {.type = SCHEMA_OBJECT, .props = events_props};

/* Around the store: trips at 50% failures over 30 s once 20 calls were seen. */
#define STORE_BREAKER                                                                                              \
    {                                                                                                              \
        .breaker = true, .breaker_params = {.failure_rate_threshold = 50, .window_ms = 30000, .minimum_calls = 20, \
                                            .open_duration_ms = 20000, .half_open_max_calls = 5 }                   \
    }

/* Reads also hedge: a second query after the route's p95, within budget. */
#define STORE_READ_RESILIENCE                                                                                      \
    {                                                                                                              \
        .breaker = true,                                                                                           \
        .breaker_params = {.failure_rate_threshold = 50, .window_ms = 30000, .minimum_calls = 20,                  \
                           .open_duration_ms = 20000, .half_open_max_calls = 5},                                   \
        .hedge = {.enabled = true, .max_attempts = 2 }                                                             \
    }

static const route_t routes[] = {
    {
        .id = "analytics.events.list",
        .methods = ROUTE_GET | ROUTE_HEAD,
        .path = "/api/v1/analytics/events",
        .handler = get_events,
        .cache = {.ttl_ms = 5000, .swr_ms = 25000, .stale_if_error_ms = 60000, .key = events_key},
        .permissions = {"events:read"},
        .resilience = STORE_READ_RESILIENCE,
        .response_schema = &events_response,
    },
    {
        .id = "analytics.projects.events",
        .methods = ROUTE_GET | ROUTE_HEAD,
        .path = "/api/v1/analytics/projects/:projectId/events",
        .handler = get_project_events,
        .permissions = {"events:read"},
        .rebac = {.relation = "viewer", .object_param = "projectId", .object_type = "project"},
        .resilience = STORE_READ_RESILIENCE,
        .response_schema = &events_response,
    },
    {
        .id = "analytics.events.create",
        .methods = ROUTE_POST,
        .path = "/api/v1/analytics/events",
        .handler = post_event,
        .idem = {.enabled = true},
        .permissions = {"events:write"},
        /* an event posted into a project: its editors (owners are editors) */
        .rebac = {.relation = "editor", .object_body = "projectId", .object_type = "project"},
        .resilience = STORE_BREAKER,
        .publish = "analytics.track",
    },
    {
        .id = "analytics.me.events.create",
        .methods = ROUTE_POST,
        .path = "/api/v1/analytics/me/events",
        .handler = post_event,
        .idem = {.enabled = true},
        .permissions = {"events:write"},
        /* an event posted into a project: its editors (owners are editors) */
        .rebac = {.relation = "editor", .object_body = "projectId", .object_type = "project"},
        .abac = abac_body_user_is_principal,
        .resilience = STORE_BREAKER,
        .publish = "analytics.track",
    },
    {
        .id = "analytics.me",
        .methods = ROUTE_GET,
        .path = "/api/v1/analytics/me",
        .handler = get_me,
    },
    {
        /* the runbook's breaker demo: the upstream always fails (chaos), and the
         * breaker opens after 2 calls at >= 50% failures, so 5 calls answer
         * 500, 500, then fast 503 circuit-open */
        .id = "analytics.flaky",
        .demo = true, /* an endpoint that always fails has no place in production */
        .methods = ROUTE_GET,
        .path = "/api/v1/analytics/flaky",
        .handler = get_flaky,
        .chaos = {.probability = 1.0, .error_rate = 1.0, .error_status = 500},
        .resilience = {.breaker = true,
                       .breaker_params = {.failure_rate_threshold = 0.5,
                                          .window_ms = 30000,
                                          .minimum_calls = 2,
                                          .open_duration_ms = 20000,
                                          .half_open_max_calls = 5}},
    },
    {
        .id = "payments.create",
        .methods = ROUTE_POST,
        .path = "/api/v1/payments/payments",
        .handler = gw_post_payment,
        .idem = {.enabled = true, .required = true},
        .permissions = {"payments:write"},
        .resilience = STORE_BREAKER,
        .publish = "payment.requested",
    },
    {
        .id = "payments.get",
        .methods = ROUTE_GET | ROUTE_HEAD,
        .path = "/api/v1/payments/payments/:id",
        .handler = gw_get_payment,
        .permissions = {"payments:read"},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "payments.refund",
        .methods = ROUTE_POST,
        .path = "/api/v1/payments/payments/:id/refund",
        .handler = gw_post_refund,
        .idem = {.enabled = true, .required = true},
        .permissions = {"payments:write"},
        .resilience = STORE_BREAKER,
        .publish = "payment.refund.requested",
    },
    {
        .id = "analytics.auth.otp.request",
        .methods = ROUTE_POST,
        .path = "/api/v1/analytics/auth/otp/request",
        .handler = gw_otp_request,
        .anonymous = true,
        .rate = {.limit = {.count = 20, .period_ms = 60000, .burst = 10}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "analytics.auth.otp.verify",
        .methods = ROUTE_POST,
        .path = "/api/v1/analytics/auth/otp/verify",
        .handler = gw_otp_verify,
        .anonymous = true,
        .rate = {.limit = {.count = 60, .period_ms = 60000, .burst = 20}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "payments.auth.otp.request",
        .methods = ROUTE_POST,
        .path = "/api/v1/payments/auth/otp/request",
        .handler = gw_otp_request,
        .anonymous = true,
        .rate = {.limit = {.count = 20, .period_ms = 60000, .burst = 10}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "payments.auth.otp.verify",
        .methods = ROUTE_POST,
        .path = "/api/v1/payments/auth/otp/verify",
        .handler = gw_otp_verify,
        .anonymous = true,
        .rate = {.limit = {.count = 60, .period_ms = 60000, .burst = 20}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "notifications.auth.otp.request",
        .methods = ROUTE_POST,
        .path = "/api/v1/notifications/auth/otp/request",
        .handler = gw_otp_request,
        .anonymous = true,
        .rate = {.limit = {.count = 20, .period_ms = 60000, .burst = 10}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
    {
        .id = "notifications.auth.otp.verify",
        .methods = ROUTE_POST,
        .path = "/api/v1/notifications/auth/otp/verify",
        .handler = gw_otp_verify,
        .anonymous = true,
        .rate = {.limit = {.count = 60, .period_ms = 60000, .burst = 20}, .by_address = true},
        .resilience = STORE_BREAKER,
    },
};

/* The tables of the route modules, joined once into one array (the pipeline
 * indexes rows by their position). */
static const route_t *all_rows, *prod_rows; /* prod: without the demo routes */
static size_t all_n, prod_n;
static pthread_once_t all_once = PTHREAD_ONCE_INIT;

static void join_tables(void)
{
    struct {
        const route_t *rows;
        size_t n;
    } t[] = {
        {routes, ECOM_ARRAY_LEN(routes)},
        {gw_routes_authx, gw_routes_authx_n},
        {gw_routes_reads, gw_routes_reads_n},
    };
    size_t n = 0;
    for (size_t i = 0; i < ECOM_ARRAY_LEN(t); i++)
        n += t[i].n;
    route_t *rows = xcalloc(n, sizeof *rows), *prod = xcalloc(n, sizeof *prod);
    size_t k = 0, kp = 0;
    for (size_t i = 0; i < ECOM_ARRAY_LEN(t); i++)
        for (size_t j = 0; j < t[i].n; j++) {
            rows[k++] = t[i].rows[j];
            if (!t[i].rows[j].demo)
                prod[kp++] = t[i].rows[j];
        }
    all_rows = rows;
    all_n = n;
    prod_rows = prod;
    prod_n = kp;
}

const route_t *gw_routes(bool production, size_t *n)
{
    pthread_once(&all_once, join_tables);
    *n = production ? prod_n : all_n;
    return production ? prod_rows : all_rows;
}

void gw_run_handler(gw_req_t *r)
{
    r->route->handler(r);
}
