/* http-gateway/gw.h: the gateway's request, threads and shared state, private
 * to http-gateway/. A gw_req_t lives from the evhttp callback until it has been
 * answered and no asynchronous step (database pipeline, cache wait, chaos
 * delay, background refresh) still refers to it; it owns everything it points
 * to except the route, the thread and the shared state. Freed, it goes back to
 * its thread's spares (gw_req_new hands it out again, zeroed).
 * Handlers answer with gw_respond (or a problem through gw_problem_or_reply);
 * the pipeline then serialises, stores in the cache or the idempotency record,
 * and sends. */
#ifndef ECOM_GW_H
#define ECOM_GW_H

#include "bus/outbox.h"
#include "core/config.h"
#include "core/db.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/strmap.h"
#include "core/breaker.h"
#include "http-gateway/authx/policy.h"
#include "http-gateway/authx/policy_sync.h"
#include "http-gateway/cache.h"
#include "http-gateway/chaos.h"
#include "http-gateway/http1.h"
#include "http-gateway/idem.h"
#include "http-gateway/jwt.h"
#include "http-gateway/pgasync.h"
#include "http-gateway/reqctx.h"
#include "http-gateway/route.h"

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <pthread.h>
#include <stdatomic.h>

#define GW_MAX_BODY (1024 * 1024)     /* per request; larger bodies get 413 */
#define GW_MAX_HEADERS 16384 /* request line and fields; more is a 431 */
#define GW_IDLE_TIMEOUT_S 60 /* an idle keep-alive connection, a request's arrival */
#define GW_REQUEST_TIMEOUT_MS 10000
#define GW_MAX_OUTBOX 8 /* outbox messages one command may append */
#define GW_IDEM_TTL_S (24 * 3600)
/* freed requests a thread keeps: no 8 KB calloc per request (none under
 * AddressSanitizer, which then still sees every use after free) */
#if defined(__SANITIZE_ADDRESS__)
#define GW_SPARE_REQS 0
#else
#define GW_SPARE_REQS 16
#endif
#define GW_HDR_ARENA 512 /* bytes of response header text a request holds inline */

typedef struct gw_shared gw_shared_t;
typedef struct gw_thread gw_thread_t;

struct gw_shared {
    const config_t *cfg;
    bool dev;
    memstore_t *mem; /* memory mode */
    router_t *router;
    const route_t *rows;
    size_t nrows;
    breaker_t **breakers; /* per row, NULL when the row has none */
    hedge_tracker_t **hedge_trackers; /* per row with hedging, else NULL */
    hedge_budget_t *hedge_budgets;    /* per row */
    metric_t *m_hedges_sent, *m_hedge_wins;
    metric_t *m_handed_over; /* connections moved between threads (server.c) */
    cache_t *cache;
    chaos_t chaos;
    jwtk_t keys;
    policy_t *policy;          /* roles, bindings, tuples, revoked sessions */
    rl_t *rl;                  /* rate-limit state; NULL with RATE_LIMITS=false */
    policy_sync_t *policy_sync; /* PostgreSQL mode: follows the store */
    json_object *authx_boot;    /* the bootstrap document, or NULL */
    atomic_bool *stop;
    atomic_bool draining;
    gw_thread_t *threads;
    int nthreads;
    metric_t *m_cache_hit, *m_cache_miss, *m_cache_stale, *m_idem_replay, *m_idem_conflict, *m_idem_inflight;
    metric_t *m_latency, *m_breaker_rejected, *m_chaos;
    metric_t *m_group_retries; /* command groups sent again with their claims (command.c) */
    metric_t *m_writes_merged; /* domain writes sent in one statement with others (command.c) */
    atomic_int commit_inflight; /* command groups on their way, all threads (command.c) */
};

struct gw_thread {
    int index;
    pthread_t thread;
    gw_shared_t *sh;
    struct event_base *base;
    h1_server_t *http;
    pga_pool_t *pg; /* PostgreSQL mode */
    struct gw_cmd_queue *cmd_queue; /* commands waiting to commit in a group (command.c) */
    struct event *commit_kick; /* another thread's group came back: this one's may go (command.c) */
    db_t *memdb;    /* memory mode */
    chaos_rng_t rng;
    struct event *tick;
    strmap_t req_counters; /* "route|method|status" -> metric_t*, this thread's lookups */
    jwt_cache_t jwt_cache;  /* tokens this thread verified */
    policy_cache_t authz_cache; /* relation checks this thread answered */
    int active;            /* requests alive on this thread */
    struct gw_req *spare;  /* freed requests kept for reuse (gw_req_new), at most GW_SPARE_REQS */
    int nspare;
    int64_t drain_until; /* shutting down: leave when idle or at this time */
    /* connection balance (server.c): what this thread serves, and what other
     * threads accepted and handed to it */
    atomic_int conns_open;   /* kept by its HTTP server */
    atomic_int conns_coming; /* handed over, not yet adopted */
    pthread_mutex_t handoff_mu;
    struct gw_handoff *handoff; /* GW_HANDOFF_MAX slots, nhandoff used */
    int nhandoff;
    bool handoff_closed; /* draining: takes no more (guarded by handoff_mu) */
    struct event *handoff_ev;
};

typedef struct gw_header {
    char *name, *value;
} gw_header_t;

#define GW_MAX_OPS 4
#define GW_OP_PARAMS 12

/* A domain write a route queues for its commands (static storage). */
typedef struct gw_op_def {
    const char *name; /* prepared-statement name */
    const char *sql;  /* one command's write, parameters $1..$nparams (text) */
    int nparams;
    /* Optional: the same write for several commands of a commit group in one
     * statement: $k is a text[] holding parameter k of each command, in
     * order (commands with a NULL parameter, or more than one write, use sql). */
    const char *many_name, *many_sql;
} gw_op_def_t;

/* A domain write of a command: one SQL statement (PostgreSQL) and the same
 * change on the memory store (mem runs inside the memory transaction; -1 rolls
 * it back). */
typedef struct gw_op {
    const gw_op_def_t *def;
    char *params[GW_OP_PARAMS]; /* owned copies; NULL = SQL NULL */
    int (*mem)(db_t *tx, void *arg);
    void *arg;
    void (*free_arg)(void *arg);
} gw_op_t;

/* A command: what one write request commits, in one transaction: its domain
 * writes, then its outbox messages, then (with a key) its idempotency record. */
typedef struct gw_cmd {
    gw_op_t ops[GW_MAX_OPS];
    size_t nops;
    outbox_msg_t msgs[GW_MAX_OUTBOX]; /* strings owned (copied by gw_cmd_outbox) */
    outbox_params_t params[GW_MAX_OUTBOX];
    size_t n;
} gw_cmd_t;

struct gw_req {
    gw_thread_t *th;
    gw_shared_t *sh;
    h1_req_t *ev; /* NULL once answered, and for background refreshes */
    const route_t *route;
    size_t route_index;
    route_params_t params;
    unsigned method;
    const char *method_name;
    char *path;  /* owned */
    char *query; /* owned, without '?', or NULL */
    char request_id[REQCTX_ID_BUF];
    traceparent_t trace;
    char traceparent[REQCTX_TRACEPARENT_BUF]; /* ours: the caller's trace, our span */
    char span_id[REQCTX_SPAN_ID_BUF];          /* our span */
    char parent_span_id[REQCTX_SPAN_ID_BUF];   /* the caller's span, "" when we started the trace */
    bool sampled;
    int64_t start_ns;
    char tenant[REQCTX_TENANT_MAX + 1];
    principal_t principal;
    char *body; /* owned, NUL-terminated copy of the request body */
    size_t body_len;
    json_object *json; /* strictly parsed body, when JSON */
    int64_t start_us;
    log_ctx_t log;

    /* response */
    int status;
    struct evbuffer *out; /* body */
    const char *content_type;
    gw_header_t headers[12]; /* name and value in hdr_arena, or owned when it was full */
    int nheaders;
    size_t hdr_used;
    char hdr_arena[GW_HDR_ARENA];
    bool answered;  /* the handler (or a stage) produced the response */
    bool sent;      /* evhttp reply sent (or the client is gone) */
    int pending;    /* asynchronous steps still referring to the request */
    struct event timeout_ev;
    bool timeout_armed;

    /* policies in progress */
    bool has_permit;
    breaker_permit_t permit;
    int64_t upstream_start_us;
    chaos_decision_t chaos;
    struct event chaos_ev;
    bool chaos_armed;
    struct event authz_ev; /* waiting for the policy snapshot to reach authz_min_rev */
    bool authz_armed;
    int64_t authz_min_rev;
    int64_t authz_deadline_ms;
    char *cache_key;
    cache_lookup_t lk;
    cache_out_t cache_out;
    bool cache_leader, cache_refresh, cache_collapsed;
    uint64_t cache_ticket;
    bool cache_waiting;
    struct event cache_wait_ev;
    bool background; /* a stale-while-revalidate refresh with no client */
    char idem_key[IDEM_KEY_BUF];
    char fingerprint[IDEM_FINGERPRINT_BUF];
    char *idem_store;
    bool idem_active; /* the key is claimed in the open transaction */
    pga_conn_t *pg;   /* leased connection (PostgreSQL mode) */
    bool mem_tx;      /* memory transaction open */
    gw_cmd_t cmd;
    void *handler_state; /* a handler's own state across its asynchronous steps */
    void (*handler_state_free)(void *);
    /* Runs once the command committed, before the answer is sent (e.g. a
     * policy write applied to this process's authorization snapshot). */
    void (*on_committed)(gw_req_t *r);
    struct gw_req *next_spare; /* on th->spare once freed */
};

typedef struct gw_req gw_req_t;

/* ---- request lifecycle (server.c) ---- */
/* A zeroed request of thread th (counted in th->active), with th and sh set; freed
 * by gw_unref/gw_finish. Taken from the thread's spares when it has one. */
gw_req_t *gw_req_new(gw_thread_t *th);
/* The response: status and a body (a JSON string, copied) with content type. */
void gw_respond(gw_req_t *r, int status, const char *content_type, const void *body, size_t len);
/* JSON object response (json_object consumed). */
void gw_respond_json(gw_req_t *r, int status, json_object *body);
/* A problem+json response (RFC 9457). */
void gw_problem(gw_req_t *r, int status, const char *slug, const char *detail);
void gw_add_header(gw_req_t *r, const char *name, const char *value);
void gw_clear_headers(gw_req_t *r);
/* Sends what is answered (once), then frees when nothing refers to it. */
void gw_finish(gw_req_t *r);
void gw_ref(gw_req_t *r);
void gw_unref(gw_req_t *r);
const char *gw_query_arg(gw_req_t *r, const char *name, char *buf, size_t cap);
/* Whether the query string reads as name=value parts without a %00 (none:
 * true); the pipeline answers 400 before any handler when it does not. */
bool gw_query_valid(gw_req_t *r);
/* Arms a one-shot timer (an event assigned with evtimer_assign) for ms. */
void gw_timer_add(struct event *ev, int64_t ms);

/* ---- the pipeline (pipeline.c) ---- */
void gw_pipeline_start(gw_req_t *r);
/* Breaker, chaos, handler: after the idempotency claim. */
void gw_pipeline_upstream(gw_req_t *r);
/* Called when the handler answered: breaker outcome, schema, cache, idempotency, send. */
void gw_pipeline_answered(gw_req_t *r);

/* ---- commands (command.c) ---- */
/* Idempotency claim before the handler: continues with gw_run_handler, or answers
 * (replay, 409, 422). In PostgreSQL mode the claim is deferred into the commit's
 * pipeline (command.c), and r->idem_active means "claim still to run". */
void gw_idem_claim(gw_req_t *r);
/* The handler answered without committing while the claim was deferred: true
 * when the claim now runs and then sends the answer (or a replay, 409, 422 in its
 * place); false when there is nothing to settle. Called by gw_respond. */
bool gw_idem_settle(gw_req_t *r);
/* Queues a domain write (see gw_op_t); params are copied. -1 when full. */
int gw_cmd_op(gw_req_t *r, const gw_op_def_t *def, const char *const *params, int (*mem)(db_t *tx, void *arg),
              void *arg, void (*free_arg)(void *arg));
/* Queues an outbox message in the request's command; fills id. -1 with *why. */
int gw_cmd_outbox(gw_req_t *r, const outbox_msg_t *m, char id[UUID_STR_LEN], const char **why);
void gw_cmd_free(gw_cmd_t *c);
/* Runs statements inside the request's transaction (opening it on a leased
 * connection first when there is none), then cb with their results (borrowed,
 * valid during cb; err NULL on success). The transaction stays open for
 * gw_cmd_commit, or is rolled back when the request is answered otherwise.
 * PostgreSQL mode only. */
typedef void (*gw_tx_cb)(gw_req_t *r, PGresult *const *res, int n, const char *err);
void gw_tx_exec(gw_req_t *r, const pga_stmt_t *stmts, int n, gw_tx_cb cb);
/* Commits the command with its response (status, JSON body consumed): the
 * outbox rows, the idempotency record and the response in one transaction. */
void gw_cmd_commit(gw_req_t *r, int status, json_object *body);
/* Ends an open transaction without writing (error answers, replays). */
void gw_tx_abort(gw_req_t *r);
/* The login's rows are kept this long after they ended (gw_auth_cleanup). */
#define GW_AUTH_RETAIN_S 86400
/* The gateway's janitor (core/janitor.h), every minute: expired idempotency
 * records and the login's rows retain_s after they ended, up to limit rows
 * of each table per call, in PostgreSQL or the memory store. 0 or -1. */
int gw_retention_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted);
/* Deletes up to limit expired idempotency records, in PostgreSQL or the
 * memory store, sets *deleted (retain_s is unused: each record carries its
 * expiry). The gateway's janitor (core/janitor.h) runs it, chunk after chunk
 * until none is left: one chunk of 1,000 a minute, as before, let the table
 * grow under any steady flow above 17 new keys a second. 0 or -1. */
int gw_idem_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted);
/* After pga_pool_free (which answers every queued command): frees th->cmd_queue. */
void gw_cmd_queue_free(gw_thread_t *th);
/* The thread's waiting commands may go now (its commit_kick event). */
void gw_cmd_kick(gw_thread_t *th);

/* ---- handlers (routes.c) ---- */
/* The route table; production: without the runbook's demo routes (route_t.demo). */
const route_t *gw_routes(bool production, size_t *n);
/* The route modules' own tables, joined by gw_routes: AuthX sessions and
 * administration (routes_authx.c), read models of the services (routes_reads.c). */
extern const route_t *const gw_routes_authx;
extern const size_t gw_routes_authx_n;
extern const route_t *const gw_routes_reads;
extern const size_t gw_routes_reads_n;
void gw_run_handler(gw_req_t *r);

#endif
