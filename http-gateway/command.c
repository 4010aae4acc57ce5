/* http-gateway/command.c: write requests. A command's outbox rows, its
 * idempotency record and the response it answers commit in ONE transaction, so
 * a replay can never duplicate a command and a crash can never leave a key
 * without its command.
 *
 * PostgreSQL: the claim is deferred to the commit, so a command is ONE pipeline
 * (one round trip, one implicit transaction ended by the pipeline's Sync):
 *   1. claim: pg_try_advisory_xact_lock on the key (a concurrent request with
 *      the key is refused with 409), an expired record dropped, the live record
 *      returned (replay, or 422 on a different fingerprint);
 *   2. guard: the record with the response, inserted only while the lock is held
 *      and no live record exists; otherwise the statement divides by zero, which
 *      aborts the pipeline, so nothing after it runs and nothing commits;
 *   3. the domain writes, the outbox rows.
 * The handler runs before the claim and has no effect until the commit. When it
 * answers without committing (a validation error, a state check), the claim
 * alone runs before that answer goes out, so a completed key still replays and
 * a key in flight still gets 409, as if the claim had come first. A handler that
 * opened the request's transaction (gw_tx_exec) gets the same statements inside
 * it, followed by COMMIT. Without a key the command is one pipeline too.
 *
 * Memory: the claim marks the key in flight in a short transaction before the
 * handler; the commit appends the outbox rows and completes the record in a
 * second one. The store lock is never held while the request waits for anything. */
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/strmap.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory records ---- */

typedef struct mem_rec {
    bool done;
    char fingerprint[IDEM_FINGERPRINT_BUF];
    int status;
    char *content_type;
    char *body;
    size_t body_len;
    int64_t expires_ms;
} mem_rec_t;

typedef struct mem_idem {
    strmap_t recs;
} mem_idem_t;

static void rec_free(mem_rec_t *x)
{
    if (!x)
        return;
    free(x->content_type);
    free(x->body);
    free(x);
}

static void *mem_make(void)
{
    mem_idem_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->recs);
    return m;
}

static void mem_free(void *p)
{
    mem_idem_t *m = p;
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&m->recs, &i, &k, NULL, &v);)
        rec_free(v);
    strmap_free(&m->recs);
    free(m);
}

static mem_idem_t *mem(db_t *db)
{
    return db_mem_slot(db, MEM_SLOT_IDEMPOTENCY, mem_make, mem_free);
}

/* ---- answers ---- */

static void replay(gw_req_t *r, int status, const char *ctype, const char *body, size_t len)
{
    metrics_add(r->sh->m_idem_replay, 1);
    gw_add_header(r, "Idempotent-Replayed", "true");
    /* the content type must outlive this call: keep a copy in the request */
    static const char *const known[] = {"application/json", "application/problem+json"};
    const char *ct = "application/json";
    for (size_t i = 0; ctype && i < ECOM_ARRAY_LEN(known); i++)
        if (strcmp(ctype, known[i]) == 0)
            ct = known[i];
    gw_respond(r, status, ct, body, len);
}

static void conflict(gw_req_t *r)
{
    metrics_add(r->sh->m_idem_conflict, 1);
    gw_problem(r, 422, "idempotency-key-reused", "this Idempotency-Key was used with a different request");
}

static void in_flight(gw_req_t *r)
{
    metrics_add(r->sh->m_idem_inflight, 1);
    gw_add_header(r, "Retry-After", "1");
    gw_problem(r, 409, "idempotency-request-in-flight", "a request with this Idempotency-Key is in progress");
}

static void unavailable(gw_req_t *r, const char *what)
{
    gw_add_header(r, "Retry-After", "1");
    gw_problem(r, 503, "storage-unavailable", what);
}

/* ---- claim ---- */

/* The claim: the lock, an expired record dropped (only by the lock holder), and
 * the live record. One row: got, fingerprint, status, content type, body (NULLs
 * when there is no live record). */
static const char sql_claim[] =
    "WITH lk AS MATERIALIZED (SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS got),"
    " gone AS (DELETE FROM gateway.idempotency WHERE store_key = $1 AND expires_at < now()"
    " AND (SELECT got FROM lk) RETURNING 1)"
    " SELECT (SELECT got FROM lk), i.fingerprint, i.status, coalesce(i.content_type, ''), i.body"
    " FROM (SELECT 1) one LEFT JOIN gateway.idempotency i ON i.store_key = $1 AND i.expires_at >= now()";

/* The record with the response, while the lock is held and no live record
 * exists; else a division by zero (SQLSTATE 22012) aborts the pipeline. The lock
 * is re-entrant within the transaction: taken again, it costs nothing. */
static const char sql_record_guard[] =
    "WITH ins AS (INSERT INTO gateway.idempotency (store_key, tenant, fingerprint, status, content_type, body,"
    " expires_at) SELECT $1::text, $2::text, $3::text, $4::int, $5::text, $6::text,"
    " now() + make_interval(secs => $7::int) WHERE pg_try_advisory_xact_lock(hashtextextended($1::text, 0))"
    " ON CONFLICT (store_key) DO NOTHING RETURNING 1)"
    " SELECT 1 / (SELECT count(*)::int FROM ins)";

#define SQLSTATE_DIVISION_BY_ZERO "22012"

/* What the claim's row says, for a command that did not commit. */
typedef enum { CLAIM_FREE, CLAIM_REPLAY, CLAIM_CONFLICT, CLAIM_IN_FLIGHT } claim_t;

static claim_t claim_outcome(gw_req_t *r, const PGresult *q)
{
    if (!q || PQresultStatus(q) != PGRES_TUPLES_OK || PQntuples(q) != 1)
        return CLAIM_IN_FLIGHT;
    if (!PQgetisnull(q, 0, 1))
        return strcmp(PQgetvalue(q, 0, 1), r->fingerprint) == 0 ? CLAIM_REPLAY : CLAIM_CONFLICT;
    return PQgetvalue(q, 0, 0)[0] == 't' ? CLAIM_FREE : CLAIM_IN_FLIGHT;
}

/* Answers a replay, a 422 or a 409 from the claim's row q (borrowed). */
static void answer_claim(gw_req_t *r, claim_t o, const PGresult *q)
{
    if (o == CLAIM_REPLAY) {
        int status = atoi(PQgetvalue(q, 0, 2));
        char *ctype = xstrdup(PQgetvalue(q, 0, 3));
        char *body = xstrndup(PQgetvalue(q, 0, 4), (size_t)PQgetlength(q, 0, 4));
        replay(r, status, ctype, body, strlen(body));
        free(ctype);
        free(body);
    } else if (o == CLAIM_CONFLICT) {
        conflict(r);
    } else {
        in_flight(r);
    }
}

/* ---- a handler answered without committing: the claim decides first ---- */

typedef struct settle_ctx {
    gw_req_t *r;
    bool own_conn; /* acquired here, not the request's transaction */
} settle_ctx_t;

/* Sends the handler's answer after all (the key is free, or the claim could not
 * be read: the handler's answer stands, nothing was written). */
static void settle_continue(gw_req_t *r)
{
    gw_pipeline_answered(r);
}

/* Replaces the handler's answer with the claim's. */
static void settle_replace(gw_req_t *r, claim_t o, const PGresult *q)
{
    evbuffer_drain(r->out, evbuffer_get_length(r->out));
    gw_clear_headers(r);
    r->answered = false;
    answer_claim(r, o, q);
}

static void on_settle(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)n;
    settle_ctx_t *sc = arg;
    gw_req_t *r = sc->r;
    log_ctx_set(&r->log);
    claim_t o = err ? CLAIM_FREE : claim_outcome(r, res[0]);
    if (err)
        log_warn("idempotency claim failed: %s", err);
    if (sc->own_conn) {
        pga_release(c, err != NULL); /* rolls back: releases the lock if it was taken */
    } else if (err) {
        pga_release(c, false);
        r->pg = NULL;
    }
    if (o == CLAIM_FREE)
        settle_continue(r);
    else
        settle_replace(r, o, res[0]);
    free(sc);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void settle_send(settle_ctx_t *sc, pga_conn_t *c)
{
    gw_req_t *r = sc->r;
    const char *k[] = {r->idem_store};
    const pga_stmt_t st[] = {{.name = "gw_idem_claim", .sql = sql_claim, .nparams = 1, .params = k}};
    if (pga_pipeline(c, st, 1, on_settle, sc) != 0) {
        if (sc->own_conn)
            pga_release(c, true);
        else
            gw_tx_abort(r);
        free(sc);
        settle_continue(r);
        gw_unref(r);
    }
}

static void on_settle_conn(pga_conn_t *c, const char *err, void *arg)
{
    settle_ctx_t *sc = arg;
    gw_req_t *r = sc->r;
    log_ctx_set(&r->log);
    if (!c) {
        log_warn("no database connection for an idempotency claim: %s", err ? err : "?");
        free(sc);
        settle_continue(r);
        gw_unref(r);
    } else {
        settle_send(sc, c);
    }
    log_ctx_set(NULL);
}

bool gw_idem_settle(gw_req_t *r)
{
    if (!r->idem_active || r->th->memdb)
        return false;
    r->idem_active = false; /* the claim runs now, once */
    if (r->status == 504)
        return false; /* timed out: answered at once, as before the claim */
    settle_ctx_t *sc = xmalloc(sizeof *sc);
    *sc = (settle_ctx_t){r, r->pg == NULL};
    gw_ref(r);
    if (r->pg) {
        settle_send(sc, r->pg);
        return true;
    }
    if (pga_acquire(r->th->pg, on_settle_conn, sc) != 0) {
        free(sc);
        gw_unref(r);
        return false;
    }
    return true;
}

static void mem_claim(gw_req_t *r)
{
    db_t *db = r->th->memdb;
    if (db_begin(db) != 0) {
        unavailable(r, "the store is unavailable");
        return;
    }
    mem_idem_t *m = mem(db);
    size_t kl = strlen(r->idem_store);
    bool created;
    void **slot = strmap_put(&m->recs, r->idem_store, kl, &created);
    mem_rec_t *x = *slot;
    if (x && x->expires_ms <= clock_now_ms()) {
        rec_free(x);
        x = *slot = NULL;
    }
    if (!x) {
        x = xcalloc(1, sizeof *x);
        snprintf(x->fingerprint, sizeof x->fingerprint, "%s", r->fingerprint);
        x->expires_ms = clock_now_ms() + (int64_t)GW_IDEM_TTL_S * 1000;
        *slot = x;
        if (db_commit(db) != 0) {
            unavailable(r, "the store is unavailable");
            return;
        }
        r->idem_active = true;
        gw_pipeline_upstream(r);
        return;
    }
    /* copy out under the lock, answer after it */
    bool done = x->done, same = strcmp(x->fingerprint, r->fingerprint) == 0;
    int status = x->status;
    char *ctype = x->content_type ? xstrdup(x->content_type) : NULL;
    char *body = x->body ? xstrndup(x->body, x->body_len) : NULL;
    size_t len = x->body_len;
    db_rollback(db);
    if (!done)
        in_flight(r);
    else if (!same)
        conflict(r);
    else
        replay(r, status, ctype, body, len);
    free(ctype);
    free(body);
}

void gw_idem_claim(gw_req_t *r)
{
    if (r->th->memdb) {
        mem_claim(r);
        return;
    }
    /* deferred: the claim runs in the commit's pipeline (or, when the handler
     * answers otherwise, just before that answer: gw_idem_settle) */
    r->idem_active = true;
    gw_pipeline_upstream(r);
}

/* ---- abort ---- */

void gw_tx_abort(gw_req_t *r)
{
    if (r->pg) {
        pga_release(r->pg, false); /* rolls the transaction back, releasing the key's lock */
        r->pg = NULL;
    }
    if (r->th->memdb && r->idem_active) {
        db_t *db = r->th->memdb;
        if (db_begin(db) == 0) {
            void *old = NULL;
            mem_idem_t *m = mem(db);
            void **slot = strmap_get(&m->recs, r->idem_store, strlen(r->idem_store));
            if (slot && *slot && !((mem_rec_t *)*slot)->done && strmap_del(&m->recs, r->idem_store,
                                                                          strlen(r->idem_store), &old))
                rec_free(old);
            if (db_commit(db) != 0)
                log_warn("could not release an idempotency key in memory");
        }
    }
    r->idem_active = false;
    r->mem_tx = false;
}

/* ---- commit ---- */

static void gw_cmd_free_one(outbox_msg_t *m)
{
    free((char *)m->topic);
    free((char *)m->type);
    free((char *)m->tenant);
    free((char *)m->aggregate_id);
    free((char *)m->traceparent);
    free((char *)m->request_id);
    free((char *)m->payload);
    memset(m, 0, sizeof *m);
}

void gw_cmd_free(gw_cmd_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        gw_cmd_free_one(&c->msgs[i]);
    c->n = 0;
    for (size_t i = 0; i < c->nops; i++) {
        for (int k = 0; k < c->ops[i].def->nparams; k++)
            free(c->ops[i].params[k]);
        if (c->ops[i].free_arg)
            c->ops[i].free_arg(c->ops[i].arg);
    }
    c->nops = 0;
}

int gw_cmd_op(gw_req_t *r, const gw_op_def_t *def, const char *const *params, int (*mem_fn)(db_t *tx, void *arg),
              void *arg, void (*free_arg)(void *arg))
{
    gw_cmd_t *c = &r->cmd;
    if (c->nops == GW_MAX_OPS || def->nparams > GW_OP_PARAMS) {
        if (free_arg)
            free_arg(arg);
        return -1;
    }
    gw_op_t *op = &c->ops[c->nops++];
    *op = (gw_op_t){.def = def, .mem = mem_fn, .arg = arg, .free_arg = free_arg};
    for (int k = 0; k < def->nparams; k++)
        op->params[k] = params[k] ? xstrdup(params[k]) : NULL;
    return 0;
}

int gw_cmd_outbox(gw_req_t *r, const outbox_msg_t *m, char id[UUID_STR_LEN], const char **why)
{
    gw_cmd_t *c = &r->cmd;
    if (c->n == GW_MAX_OUTBOX) {
        *why = "too many messages in one command";
        return -1;
    }
    outbox_msg_t *d = &c->msgs[c->n];
    /* owned copies: the commit may run after the handler's frame is gone */
    *d = (outbox_msg_t){.topic = m->topic ? xstrdup(m->topic) : NULL,
                        .type = m->type ? xstrdup(m->type) : NULL,
                        .tenant = m->tenant ? xstrdup(m->tenant) : NULL,
                        .aggregate_id = m->aggregate_id ? xstrdup(m->aggregate_id) : NULL,
                        .traceparent = m->traceparent ? xstrdup(m->traceparent) : NULL,
                        .request_id = m->request_id ? xstrdup(m->request_id) : NULL,
                        .payload = m->payload ? xstrdup(m->payload) : NULL,
                        .sole = m->sole};
    if (outbox_params(d, &c->params[c->n], why) != 0) {
        gw_cmd_free_one(d);
        return -1;
    }
    if (id)
        memcpy(id, c->params[c->n].id, UUID_STR_LEN);
    c->n++;
    return 0;
}

typedef struct commit_ctx {
    gw_req_t *r;
    int status;
    char *body;
    size_t len;
    bool claim; /* the pipeline claims the key: results 0 (claim) and 1 (guard) */
    bool explicit_tx; /* inside the handler's transaction: ends with COMMIT */
    struct commit_ctx *next; /* in the thread's queue of commands to group */
} commit_ctx_t;

static void answer_committed(gw_req_t *r, int status, const char *body, size_t len)
{
    if (r->idem_store)
        gw_add_header(r, "Idempotent-Replayed", "false");
    r->idem_active = false;
    if (r->on_committed)
        r->on_committed(r);
    gw_respond(r, status, "application/json", body, len);
}

static void commit_ctx_free(commit_ctx_t *cc)
{
    free(cc->body);
    free(cc);
}

/* The guard refused: the key is in flight or already has a live record. */
static bool guard_refused(const commit_ctx_t *cc, PGresult *const *res, int n)
{
    if (!cc->claim || n < 2 || !res[0] || !res[1] || PQresultStatus(res[0]) != PGRES_TUPLES_OK)
        return false;
    const char *state = PQresultErrorField(res[1], PG_DIAG_SQLSTATE);
    return state && strcmp(state, SQLSTATE_DIVISION_BY_ZERO) == 0;
}

static void on_commit(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    commit_ctx_t *cc = arg;
    gw_req_t *r = cc->r;
    log_ctx_set(&r->log);
    bool refused = err && guard_refused(cc, res, n);
    claim_t o = refused ? claim_outcome(r, res[0]) : CLAIM_FREE;
    pga_release(c, err != NULL && !refused); /* a refused explicit transaction is rolled back */
    r->pg = NULL;
    if (refused) {
        answer_claim(r, o == CLAIM_FREE ? CLAIM_IN_FLIGHT : o, res[0]);
    } else if (err) {
        log_warn("command commit failed: %s", err);
        unavailable(r, "the command could not be stored");
    } else {
        answer_committed(r, cc->status, cc->body, cc->len);
    }
    commit_ctx_free(cc);
    gw_unref(r);
    log_ctx_set(NULL);
}

/* One command's domain write as a statement of its own. */
static pga_stmt_t op_stmt(const gw_op_t *op)
{
    return (pga_stmt_t){.name = op->def->name,
                        .sql = op->def->sql,
                        .nparams = op->def->nparams,
                        .params = (const char *const *)op->params};
}

/* One pipeline: [claim, guarded record,] domain writes, outbox rows [, COMMIT].
 * Without an open transaction it is one implicit transaction, committed at the
 * pipeline's Sync. */
static void send_commit(gw_req_t *r, commit_ctx_t *cc)
{
    gw_cmd_t *cmd = &r->cmd;
    pga_stmt_t st[GW_MAX_OPS + GW_MAX_OUTBOX + 3];
    int n = 0;
    char status[8], ttl[16];
    const char *k[] = {r->idem_store};
    const char *ip[] = {r->idem_store, r->tenant, r->fingerprint, status, "application/json", cc->body, ttl};
    if (cc->claim) {
        snprintf(status, sizeof status, "%d", cc->status);
        snprintf(ttl, sizeof ttl, "%d", GW_IDEM_TTL_S);
        st[n++] = (pga_stmt_t){.name = "gw_idem_claim", .sql = sql_claim, .nparams = 1, .params = k};
        st[n++] = (pga_stmt_t){.name = "gw_idem_record", .sql = sql_record_guard, .nparams = 7, .params = ip};
    }
    for (size_t i = 0; i < cmd->nops; i++)
        st[n++] = op_stmt(&cmd->ops[i]);
    for (size_t i = 0; i < cmd->n; i++) {
        bool notify = outbox_notify_due();
        st[n++] = (pga_stmt_t){.name = notify ? "gw_outbox_append_notify" : "gw_outbox_append",
                               .sql = notify ? outbox_sql_append_notify : outbox_sql_append,
                               .nparams = OUTBOX_PARAMS,
                               .params = cmd->params[i].values};
    }
    if (cc->explicit_tx)
        st[n++] = (pga_stmt_t){.sql = "COMMIT"};
    if (n == 0) { /* nothing to write: the answer alone */
        if (r->pg)
            gw_tx_abort(r);
        answer_committed(r, cc->status, cc->body, cc->len);
        commit_ctx_free(cc);
        gw_unref(r);
        return;
    }
    if (pga_pipeline(r->pg, st, n, on_commit, cc) != 0) {
        gw_tx_abort(r);
        unavailable(r, "the database is unavailable");
        commit_ctx_free(cc);
        gw_unref(r);
    }
}

static void on_commit_conn(pga_conn_t *c, const char *err, void *arg)
{
    commit_ctx_t *cc = arg;
    gw_req_t *r = cc->r;
    log_ctx_set(&r->log);
    if (!c) {
        log_warn("no database connection for a command: %s", err ? err : "?");
        unavailable(r, "the database is unavailable");
        commit_ctx_free(cc);
        gw_unref(r);
    } else if (r->answered) { /* timed out while waiting: nothing is committed */
        pga_release(c, false);
        commit_ctx_free(cc);
        gw_unref(r);
    } else {
        r->pg = c;
        send_commit(r, cc);
    }
    log_ctx_set(NULL);
}

/* ---- grouped commits ----
 *
 * Commands of one gateway thread that wait for a connection at the same time
 * commit together, in one transaction and one pipeline, so concurrent requests
 * share one round trip and one WAL flush instead of one each (group_send):
 * BEGIN, the guarded records of every distinct key in one statement, each
 * command's domain writes, all outbox rows in one statement, then COMMIT. The
 * first try takes every key to be new and reads no claims: a key that is not
 * (a replay, a 422, a 409) makes the guard fail, and the group goes again on
 * the same connection with the claim of every key before the guards. A group
 * holding a key that this thread saw committed or taken lately (a retry, most
 * likely) claims at once. Every command's record, rows and
 * response still commit in one transaction (the group's). A second request with
 * a key already in the group is in flight: 409, or the replay. When a key is
 * found taken (a replay, 422 or 409: its guard fails), the whole transaction
 * aborts; the claims, read before the guards, answer those commands, and the
 * others go again on the same connection. When anything else fails, nothing of
 * the group committed (one transaction), and each command runs again alone,
 * where its own claim decides. If the connection was lost, a COMMIT may have
 * happened: keyed commands run alone again and replay what was committed, and
 * a command without a key answers 503, as a single command would (send_commit,
 * the pipeline of one command with its claim, is what a command runs alone).
 *
 * While a group is on its way, the commands that follow wait for it and go
 * together in the next one: a second group goes beside it only once
 * GROUP_SPREAD commands wait. Under a moderate load that makes fewer, larger
 * transactions (one WAL flush and one round trip for more commands); under a
 * heavy one, up to GROUP_COLLECTORS groups run side by side. */

#define GROUP_MAX 32       /* commands in one group */
#define GROUP_COLLECTORS 4 /* groups in flight per thread, with the connection requests (the pool's size) */
#define GROUP_SPREAD 8     /* commands waiting that start a second group beside one in flight */

#define RECENT_KEYS 4096 /* keys this thread saw committed or taken lately (direct-mapped hashes) */

/* One queue per gateway thread (th->cmd_queue): a pool and its requests live on
 * one thread. */
typedef struct gw_cmd_queue {
    gw_thread_t *th;
    pga_pool_t *pool;
    commit_ctx_t *head, *tail;
    int queued;
    int collectors; /* pga_acquire calls not yet called back */
    int inflight;   /* groups sent and not yet answered */
    uint64_t recent[RECENT_KEYS];
} group_q_t;

typedef struct group {
    group_q_t *q;
    pga_conn_t *c;
    int n;
    int tries;   /* pipelines sent for this group */
    bool claims; /* the group has keys: an explicit transaction */
    commit_ctx_t *cc[GROUP_MAX];
    int claim_res[GROUP_MAX]; /* the result of cc[i]'s key's claim, -1 without a key */
    int guard_res[GROUP_MAX]; /* the result of cc[i]'s guarded record, -1 when none */
    bool first[GROUP_MAX];    /* cc[i] is the first of its key in the group (it writes) */
    /* This try has no claims: every key is taken to be new, and a key that is
     * not makes the guard fail; the group then goes again with its claims. A
     * group with a key seen lately (a replay is likely) claims at once. */
    bool optimistic;
    uint32_t merged; /* domain writes this try sent in statements with others */
} group_t;

static uint64_t key_hash(const char *k)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    return h | 1; /* never 0: 0 is an empty slot */
}

static void recent_add(group_q_t *q, const char *key)
{
    uint64_t h = key_hash(key);
    q->recent[h % RECENT_KEYS] = h;
}

static bool recent_has(const group_q_t *q, const char *key)
{
    uint64_t h = key_hash(key);
    return q->recent[h % RECENT_KEYS] == h;
}

static void group_kick(group_q_t *q);

static void cc_drop(commit_ctx_t *cc)
{
    gw_req_t *r = cc->r;
    commit_ctx_free(cc);
    gw_unref(r);
}

/* Answers cc with 503 and drops it. */
static void cc_fail(commit_ctx_t *cc, const char *what)
{
    log_ctx_set(&cc->r->log);
    unavailable(cc->r, what);
    log_ctx_set(NULL);
    cc_drop(cc);
}

static void q_fail_all(group_q_t *q, const char *what)
{
    commit_ctx_t *cc;
    while ((cc = q->head)) {
        q->head = cc->next;
        q->queued--;
        cc_fail(cc, what);
    }
    q->tail = NULL;
}

/* Runs cc alone (the single pipeline, its own claim), on a connection of its own. */
static void cc_alone(commit_ctx_t *cc)
{
    if (pga_acquire(cc->r->th->pg, on_commit_conn, cc) != 0)
        cc_fail(cc, "too many requests are waiting for the database");
}

static int cc_stmts(const commit_ctx_t *cc)
{
    return (cc->claim ? 2 : 0) + (int)cc->r->cmd.nops + (int)cc->r->cmd.n; /* at most: claim, guard, writes */
}

static void group_free(group_t *g)
{
    free(g);
}

/* A group sent is answered: the next one may go. */
static void group_done(group_t *g)
{
    group_q_t *q = g->q;
    gw_shared_t *sh = q->th->sh;
    q->inflight--;
    free(g);
    if (atomic_fetch_sub(&sh->commit_inflight, 1) == 1 && !atomic_load(&sh->draining))
        for (int i = 0; i < sh->nthreads; i++) /* the other threads' waiting commands may go */
            if (&sh->threads[i] != q->th && sh->threads[i].commit_kick)
                event_active(sh->threads[i].commit_kick, EV_TIMEOUT, 0);
    group_kick(q);
}

#define GROUP_TRIES 3 /* pipelines for one group before its commands run alone */

static void group_send(group_t *g, bool rollback_first);

/* The claim's outcome for cc[i] from its key's claim row q (borrowed). */
static claim_t group_outcome(group_t *g, int i, const PGresult *q)
{
    claim_t o = claim_outcome(g->cc[i]->r, q);
    if (o == CLAIM_FREE && !g->first[i])
        o = CLAIM_IN_FLIGHT; /* the key's first request in this group holds it */
    return o;
}

static void cc_answer_claim(commit_ctx_t *cc, claim_t o, const PGresult *q)
{
    log_ctx_set(&cc->r->log);
    answer_claim(cc->r, o, q);
    log_ctx_set(NULL);
    cc_drop(cc);
}

/* Whether the pipeline failed only by guards refusing (SQLSTATE 22012): a key
 * was not free. */
static bool only_guards_refused(const group_t *g, PGresult *const *res, int n)
{
    bool any = false;
    for (int k = 0; k < n; k++) {
        const char *state = res[k] ? PQresultErrorField(res[k], PG_DIAG_SQLSTATE) : NULL;
        if (!state)
            continue;
        bool guard = false;
        for (int i = 0; i < g->n; i++)
            guard = guard || g->guard_res[i] == k;
        if (!guard || strcmp(state, SQLSTATE_DIVISION_BY_ZERO) != 0)
            return false;
        any = true;
    }
    return any;
}

static void on_group(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    group_t *g = arg;
    if (!err) {
        pga_release(c, false);
        if (g->merged) /* counted once committed: a failed try goes again or alone */
            metrics_add(g->cc[0]->r->sh->m_writes_merged, g->merged);
        for (int i = 0; i < g->n; i++) {
            commit_ctx_t *cc = g->cc[i];
            if (cc->claim && !g->first[i]) {
                if (g->claim_res[i] < 0) { /* optimistic: the key's first command in the group holds it */
                    cc_answer_claim(cc, CLAIM_IN_FLIGHT, NULL);
                    continue;
                }
                const PGresult *q = res[g->claim_res[i]];
                cc_answer_claim(cc, group_outcome(g, i, q), q);
                continue;
            }
            if (cc->claim)
                recent_add(g->q, cc->r->idem_store);
            log_ctx_set(&cc->r->log);
            answer_committed(cc->r, cc->status, cc->body, cc->len);
            log_ctx_set(NULL);
            cc_drop(cc);
        }
        group_done(g);
        return;
    }
    /* nothing of the group committed, unless the connection was lost after
     * the COMMIT went out: then the keyed commands replay what was committed */
    bool lost = pga_conn_backend_pid(c) == 0;
    if (g->optimistic && !lost && res && only_guards_refused(g, res, n) && g->tries < GROUP_TRIES) {
        metrics_add(g->cc[0]->r->sh->m_group_retries, 1);
        group_send(g, true); /* a key was not new: the same connection, ROLLBACK, then with the claims */
        return;
    }
    bool claims_read = !lost && g->claims && res && !g->optimistic;
    for (int i = 0; claims_read && i < g->n; i++)
        if (g->claim_res[i] >= 0 && (g->claim_res[i] >= n || !res[g->claim_res[i]] ||
                                     PQresultStatus(res[g->claim_res[i]]) != PGRES_TUPLES_OK))
            claims_read = false;
    bool refused = claims_read && only_guards_refused(g, res, n); /* a key was not free */
    if (!refused)
        log_warn("a group of %d commands did not commit (%s): each runs alone", g->n, err);
    int kept = 0;
    for (int i = 0; i < g->n; i++) {
        commit_ctx_t *cc = g->cc[i];
        if (claims_read && cc->claim) {
            const PGresult *q = res[g->claim_res[i]];
            claim_t o = group_outcome(g, i, q);
            if (o != CLAIM_FREE) {
                recent_add(g->q, cc->r->idem_store); /* its next retry claims at once */
                cc_answer_claim(cc, o, q);
                continue;
            }
        }
        g->cc[kept++] = cc;
    }
    g->n = kept;
    if (kept > 0 && refused && g->tries < GROUP_TRIES) {
        group_send(g, true); /* the same connection: ROLLBACK, then the rest again */
        return;
    }
    pga_release(c, false); /* a failed transaction is rolled back first */
    for (int i = 0; i < g->n; i++) {
        if (lost && !g->cc[i]->claim)
            cc_fail(g->cc[i], "the command could not be stored");
        else
            cc_alone(g->cc[i]);
    }
    group_done(g);
}

/* The records of a group's keys in one statement, while the locks are held and
 * no live record exists (an expired one is replaced: an optimistic try has not
 * dropped it); else a division by zero (SQLSTATE 22012) aborts the pipeline,
 * as sql_record_guard does for one key. */
static const char sql_record_guard_many[] =
    "WITH ins AS (INSERT INTO gateway.idempotency (store_key, tenant, fingerprint, status, content_type, body,"
    " expires_at) SELECT u.k, u.t, u.f, u.s::int, $6::text, u.b, now() + make_interval(secs => $7::int)"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[]) AS u(k, t, f, s, b)"
    " WHERE pg_try_advisory_xact_lock(hashtextextended(u.k, 0))"
    " ON CONFLICT (store_key) DO UPDATE SET tenant = EXCLUDED.tenant, fingerprint = EXCLUDED.fingerprint,"
    " status = EXCLUDED.status, content_type = EXCLUDED.content_type, body = EXCLUDED.body,"
    " created_at = now(), expires_at = EXCLUDED.expires_at WHERE gateway.idempotency.expires_at < now()"
    " RETURNING 1)"
    " SELECT 1 / (SELECT (count(*) = cardinality($1::text[]))::int FROM ins)";

enum { REC_COLS = 5, OUTBOX_COLS = OUTBOX_PARAMS };

/* The writes of one definition for many commands of a group (group_send). */
#define MERGE_DEFS 4
typedef struct merge {
    const gw_op_def_t *def;
    pg_array_t col[GW_OP_PARAMS]; /* text[], one per parameter */
    uint32_t count;
    const char *vals[GW_OP_PARAMS];
    int lens[GW_OP_PARAMS], fmts[GW_OP_PARAMS];
} merge_t;

/* op's definition's slot in mg (started when new), or NULL when op goes alone:
 * no form for many, a NULL parameter, or MERGE_DEFS definitions already. */
static merge_t *merge_slot(merge_t *mg, int *nmg, const gw_op_t *op)
{
    if (!op->def->many_sql)
        return NULL;
    for (int k = 0; k < op->def->nparams; k++)
        if (!op->params[k])
            return NULL;
    for (int j = 0; j < *nmg; j++)
        if (mg[j].def == op->def)
            return &mg[j];
    if (*nmg == MERGE_DEFS)
        return NULL;
    merge_t *m = &mg[(*nmg)++];
    m->def = op->def;
    m->count = 0;
    for (int k = 0; k < op->def->nparams; k++) {
        m->col[k] = (pg_array_t){0};
        pg_array_begin(&m->col[k], PG_OID_TEXT, 0);
    }
    return m;
}

/* One pipeline for the whole group: BEGIN, the claim of every distinct key
 * (not on an optimistic first try), the guarded records of all of them (one
 * statement), the commands' domain writes (one statement per definition where
 * it can: merge_slot), every outbox row (one statement),
 * COMMIT. Without keys: the writes alone, one implicit transaction. A key
 * found taken makes the guard fail, which aborts the transaction: then an
 * optimistic try goes again with claims, and otherwise the claims already read
 * answer those commands and the others are sent again (rollback_first). */
static void group_send(group_t *g, bool rollback_first)
{
    pga_stmt_t st[PGA_MAX_STMTS];
    const char *k[GROUP_MAX][1];
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%d", GW_IDEM_TTL_S);
    int n = 0;
    g->optimistic = g->tries == 0;
    for (int i = 0; i < g->n && g->optimistic; i++)
        if (g->cc[i]->claim && recent_has(g->q, g->cc[i]->r->idem_store))
            g->optimistic = false;
    g->tries++;
    g->claims = false;
    for (int i = 0; i < g->n; i++)
        g->claims = g->claims || g->cc[i]->claim;
    if (rollback_first)
        st[n++] = (pga_stmt_t){.sql = "ROLLBACK"};
    if (g->claims)
        st[n++] = (pga_stmt_t){.sql = "BEGIN"};
    for (int i = 0; i < g->n; i++) {
        commit_ctx_t *cc = g->cc[i];
        g->claim_res[i] = g->guard_res[i] = -1;
        g->first[i] = true;
        if (!cc->claim)
            continue;
        for (int j = 0; j < i; j++)
            if (g->cc[j]->claim && strcmp(g->cc[j]->r->idem_store, cc->r->idem_store) == 0) {
                g->claim_res[i] = g->claim_res[j];
                g->first[i] = false;
                break;
            }
        if (!g->first[i] || g->optimistic)
            continue;
        g->claim_res[i] = n;
        k[i][0] = cc->r->idem_store;
        st[n++] = (pga_stmt_t){.name = "gw_idem_claim", .sql = sql_claim, .nparams = 1, .params = k[i]};
    }
    /* every key's guarded record in one statement, every outbox row in one
     * (binary arrays, core/pgarray.h): per command only its domain writes
     * remain statements of their own */
    static const uint32_t rec_oids[REC_COLS] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8, PG_OID_TEXT};
    const uint32_t *box_oids = outbox_param_oids;
    pg_array_t rec[REC_COLS] = {{0}}, box[OUTBOX_COLS] = {{0}};
    for (int c = 0; c < REC_COLS; c++)
        pg_array_begin(&rec[c], rec_oids[c], 0);
    for (int c = 0; c < OUTBOX_COLS; c++)
        pg_array_begin(&box[c], box_oids[c], 0);
    uint32_t nrec = 0, nbox = 0;
    for (int i = 0; i < g->n; i++) {
        commit_ctx_t *cc = g->cc[i];
        gw_req_t *r = cc->r;
        if (!g->first[i] || !cc->claim)
            continue;
        pg_array_text(&rec[0], r->idem_store);
        pg_array_text(&rec[1], r->tenant);
        pg_array_text(&rec[2], r->fingerprint);
        pg_array_int8(&rec[3], cc->status);
        pg_array_text(&rec[4], cc->body);
        nrec++;
    }
    const char *rp[7];
    int rl[7], rf[7];
    if (nrec) {
        for (int i = 0; i < g->n; i++)
            if (g->first[i] && g->cc[i]->claim)
                g->guard_res[i] = n;
        pg_array_params(rec, REC_COLS, nrec, rp, rl, rf);
        rp[5] = "application/json";
        rp[6] = ttl;
        rf[5] = rf[6] = rl[5] = rl[6] = 0;
        st[n++] = (pga_stmt_t){.name = "gw_idem_record_many",
                               .sql = sql_record_guard_many,
                               .nparams = 7,
                               .params = rp,
                               .lengths = rl,
                               .formats = rf};
    }
    /* Domain writes: a command's only write, when its definition has a form
     * for many commands, goes in that definition's statement (text arrays, in
     * the group's order; the commands are unrelated, so the order of their
     * writes does not matter); any other write is a statement of its own. */
    merge_t mg[MERGE_DEFS];
    int nmg = 0;
    g->merged = 0;
    for (int i = 0; i < g->n; i++) {
        gw_cmd_t *cmd = &g->cc[i]->r->cmd;
        if (!g->first[i])
            continue;
        merge_t *m = cmd->nops == 1 ? merge_slot(mg, &nmg, &cmd->ops[0]) : NULL;
        if (m) {
            for (int col = 0; col < m->def->nparams; col++)
                pg_array_text(&m->col[col], cmd->ops[0].params[col]);
            m->count++;
        } else {
            for (size_t x = 0; x < cmd->nops; x++)
                st[n++] = op_stmt(&cmd->ops[x]);
        }
        for (size_t x = 0; x < cmd->n; x++, nbox++) {
            const char *const *v = cmd->params[x].values; /* outbox_params' order and forms */
            if (pg_array_uuid(&box[0], v[0]) != 0)
                ECOM_ASSERT(!"outbox_params makes UUIDs");
            pg_array_int8(&box[1], strtoll(v[1], NULL, 10));
            for (int c = 2; c < 6; c++)
                pg_array_text(&box[c], v[c]);
            pg_array_int8(&box[6], strtoll(v[6], NULL, 10));
            for (int c = 7; c < 10; c++)
                pg_array_text(&box[c], v[c]);
            pg_array_bool(&box[10], strcmp(v[10], "true") == 0);
        }
    }
    for (int j = 0; j < nmg; j++) {
        merge_t *m = &mg[j];
        pg_array_params(m->col, m->def->nparams, m->count, m->vals, m->lens, m->fmts);
        if (m->count > 1)
            g->merged += m->count;
        st[n++] = (pga_stmt_t){.name = m->def->many_name,
                               .sql = m->def->many_sql,
                               .nparams = m->def->nparams,
                               .params = m->vals,
                               .lengths = m->lens,
                               .formats = m->fmts};
    }
    const char *bp[OUTBOX_COLS];
    int bl[OUTBOX_COLS], bf[OUTBOX_COLS];
    /* the drainer's hint: after the COMMIT in a transaction of its own when
     * the group has one (see outbox_sql_hint), else in the append */
    bool hint = nbox && outbox_notify_due(), hint_inside = hint && !g->claims;
    if (nbox) {
        pg_array_params(box, OUTBOX_COLS, nbox, bp, bl, bf);
        st[n++] = (pga_stmt_t){.name = hint_inside ? "gw_outbox_append_many_notify" : "gw_outbox_append_many",
                               .sql = hint_inside ? outbox_sql_append_many_notify : outbox_sql_append_many,
                               .nparams = OUTBOX_COLS,
                               .params = bp,
                               .lengths = bl,
                               .formats = bf};
    }
    if (g->claims)
        st[n++] = (pga_stmt_t){.sql = "COMMIT"};
    if (hint && !hint_inside)
        st[n++] = (pga_stmt_t){.sql = outbox_sql_hint, .after_commit = true};
    int rc = pga_pipeline(g->c, st, n, on_group, g); /* the parameters are copied */
    for (int c = 0; c < REC_COLS; c++)
        pg_array_free(&rec[c]);
    for (int c = 0; c < OUTBOX_COLS; c++)
        pg_array_free(&box[c]);
    for (int j = 0; j < nmg; j++)
        for (int col = 0; col < mg[j].def->nparams; col++)
            pg_array_free(&mg[j].col[col]);
    if (rc != 0)
        on_group(g->c, NULL, 0, "the pipeline could not be sent", g);
}

static void on_group_conn(pga_conn_t *c, const char *err, void *arg)
{
    group_q_t *q = arg;
    q->collectors--;
    if (!c) {
        log_warn("no database connection for commands: %s", err ? err : "?");
        q_fail_all(q, "the database is unavailable");
        return;
    }
    group_t *g = xcalloc(1, sizeof *g);
    g->q = q;
    g->c = c;
    int stmts = 4; /* ROLLBACK (a retry), BEGIN, COMMIT, the hint after it */
    while (q->head && g->n < GROUP_MAX) {
        commit_ctx_t *cc = q->head;
        if (!cc->r->answered && g->n > 0 && stmts + cc_stmts(cc) > PGA_MAX_STMTS)
            break;
        q->head = cc->next;
        if (!q->head)
            q->tail = NULL;
        q->queued--;
        cc->next = NULL;
        if (cc->r->answered) { /* timed out while queued: nothing is committed */
            cc_drop(cc);
            continue;
        }
        stmts += cc_stmts(cc);
        g->cc[g->n++] = cc;
    }
    if (g->n == 0) {
        group_kick(q);
        pga_release(c, false);
        group_free(g);
    } else {
        q->inflight++;
        atomic_fetch_add(&q->th->sh->commit_inflight, 1);
        group_kick(q);
        group_send(g, false);
    }
}

static void group_kick(group_q_t *q)
{
    gw_shared_t *sh = q->th->sh;
    while (q->collectors + q->inflight < GROUP_COLLECTORS && q->collectors < q->queued) {
        /* a group is on its way (this thread's, or while the gateway is not
         * draining, another thread's): the next one grows while it runs */
        int busy = q->collectors + (atomic_load(&sh->draining) ? q->inflight : atomic_load(&sh->commit_inflight));
        if (busy > 0 && q->queued < GROUP_SPREAD)
            break;
        if (pga_acquire(q->pool, on_group_conn, q) != 0) {
            if (q->collectors == 0)
                q_fail_all(q, "too many requests are waiting for the database");
            return;
        }
        q->collectors++;
    }
}

static void group_enqueue(commit_ctx_t *cc)
{
    gw_thread_t *th = cc->r->th;
    if (!th->cmd_queue) {
        th->cmd_queue = xcalloc(1, sizeof *th->cmd_queue);
        th->cmd_queue->th = th;
        th->cmd_queue->pool = th->pg;
    }
    group_q_t *q = th->cmd_queue;
    if (q->tail)
        q->tail->next = cc;
    else
        q->head = cc;
    q->tail = cc;
    q->queued++;
    group_kick(q);
}

static void mem_commit(gw_req_t *r, int status, const char *body, size_t len)
{
    db_t *db = r->th->memdb;
    gw_cmd_t *cmd = &r->cmd;
    if (db_begin(db) != 0) {
        unavailable(r, "the store is unavailable");
        return;
    }
    for (size_t i = 0; i < cmd->nops; i++) {
        if (cmd->ops[i].mem && cmd->ops[i].mem(db, cmd->ops[i].arg) != 0) {
            db_rollback(db);
            gw_tx_abort(r);
            unavailable(r, "the command could not be stored");
            return;
        }
    }
    for (size_t i = 0; i < cmd->n; i++) {
        const char *why = NULL;
        if (outbox_append_params(db, &cmd->msgs[i], &cmd->params[i], &why) != 0) {
            db_rollback(db);
            gw_tx_abort(r);
            unavailable(r, why);
            return;
        }
    }
    if (r->idem_active) {
        mem_idem_t *m = mem(db);
        void **slot = strmap_get(&m->recs, r->idem_store, strlen(r->idem_store));
        mem_rec_t *x = slot ? *slot : NULL;
        if (x && !x->done) {
            x->done = true;
            x->status = status;
            x->content_type = xstrdup("application/json");
            x->body = xstrndup(body, len);
            x->body_len = len;
        }
    }
    if (db_commit(db) != 0) {
        gw_tx_abort(r);
        unavailable(r, "the store is unavailable");
        return;
    }
    answer_committed(r, status, body, len);
}

void gw_cmd_commit(gw_req_t *r, int status, json_object *body)
{
    const char *s = json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (r->answered) { /* timed out meanwhile: nothing is committed */
        gw_tx_abort(r);
        json_object_put(body);
        return;
    }
    if (r->th->memdb) {
        mem_commit(r, status, s, strlen(s));
        json_object_put(body);
        return;
    }
    commit_ctx_t *cc = xmalloc(sizeof *cc);
    *cc = (commit_ctx_t){.r = r,
                         .status = status,
                         .body = xstrdup(s),
                         .len = strlen(s),
                         .claim = r->idem_active,
                         .explicit_tx = r->pg != NULL};
    r->idem_active = false; /* claimed by this pipeline, whatever happens to it */
    json_object_put(body);
    gw_ref(r);
    if (r->pg) {
        send_commit(r, cc);
        return;
    }
    group_enqueue(cc);
}

void gw_cmd_kick(gw_thread_t *th)
{
    if (th->cmd_queue)
        group_kick(th->cmd_queue);
}

void gw_cmd_queue_free(gw_thread_t *th)
{
    group_q_t *q = th->cmd_queue;
    if (!q)
        return;
    ECOM_ASSERT(q->collectors == 0);
    q_fail_all(q, "the gateway is stopping");
    free(q);
    th->cmd_queue = NULL;
}

/* ---- statements in the request's transaction ---- */

#define TX_MAX_STMTS 8
#define TX_MAX_PARAMS 12

typedef struct tx_ctx {
    gw_req_t *r;
    gw_tx_cb cb;
    int n;
    bool begin; /* a BEGIN was sent first: results are shifted by one */
    pga_stmt_t st[TX_MAX_STMTS];
    char *params[TX_MAX_STMTS][TX_MAX_PARAMS];
} tx_ctx_t;

static void tx_free(tx_ctx_t *t)
{
    for (int i = 0; i < t->n; i++)
        for (int k = 0; k < t->st[i].nparams; k++)
            free(t->params[i][k]);
    free(t);
}

static void on_tx(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)c;
    tx_ctx_t *t = arg;
    gw_req_t *r = t->r;
    log_ctx_set(&r->log);
    int off = t->begin ? 1 : 0;
    if (err) {
        pga_release(r->pg, false);
        r->pg = NULL;
    }
    t->cb(r, res + off, n - off, err);
    tx_free(t);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void tx_send(tx_ctx_t *t)
{
    gw_req_t *r = t->r;
    pga_stmt_t st[TX_MAX_STMTS + 1];
    int k = 0;
    if (t->begin)
        st[k++] = (pga_stmt_t){.sql = "BEGIN"};
    for (int i = 0; i < t->n; i++)
        st[k++] = t->st[i];
    if (pga_pipeline(r->pg, st, k, on_tx, t) != 0) {
        pga_release(r->pg, true);
        r->pg = NULL;
        t->cb(r, NULL, 0, "the database is unavailable");
        tx_free(t);
        gw_unref(r);
    }
}

static void on_tx_conn(pga_conn_t *c, const char *err, void *arg)
{
    tx_ctx_t *t = arg;
    gw_req_t *r = t->r;
    log_ctx_set(&r->log);
    if (!c) {
        t->cb(r, NULL, 0, err ? err : "the database is unavailable");
        tx_free(t);
        gw_unref(r);
    } else {
        r->pg = c;
        tx_send(t);
    }
    log_ctx_set(NULL);
}

void gw_tx_exec(gw_req_t *r, const pga_stmt_t *stmts, int n, gw_tx_cb cb)
{
    ECOM_ASSERT(!r->th->memdb && n <= TX_MAX_STMTS);
    tx_ctx_t *t = xcalloc(1, sizeof *t);
    t->r = r;
    t->cb = cb;
    t->n = n;
    for (int i = 0; i < n; i++) {
        ECOM_ASSERT(stmts[i].nparams <= TX_MAX_PARAMS);
        t->st[i] = stmts[i];
        for (int k = 0; k < stmts[i].nparams; k++)
            t->params[i][k] = stmts[i].params[k] ? xstrdup(stmts[i].params[k]) : NULL;
        t->st[i].params = (const char *const *)t->params[i];
    }
    gw_ref(r);
    if (r->pg) {
        tx_send(t);
        return;
    }
    t->begin = true;
    if (pga_acquire(r->th->pg, on_tx_conn, t) != 0) {
        t->cb(r, NULL, 0, "too many requests are waiting for the database");
        tx_free(t);
        gw_unref(r);
    }
}

/* ---- cleanup ---- */

static int idem_cleanup_mem(db_t *db, size_t limit, size_t *deleted)
{
    if (db_begin(db) != 0)
        return -1;
    mem_idem_t *m = mem(db);
    int64_t now = clock_now_ms();
    const char *k;
    size_t kl;
    void *v;
    /* pending ones too, as in PostgreSQL: a claim past its expiry is free */
    for (size_t i = 0; *deleted < limit && strmap_next(&m->recs, &i, &k, &kl, &v);) {
        mem_rec_t *x = v;
        if (x && x->expires_ms <= now && strmap_del(&m->recs, k, kl, NULL)) {
            rec_free(x);
            (*deleted)++;
        }
    }
    return db_commit(db);
}

int gw_idem_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    (void)retain_s; /* each record carries its own expiry */
    *deleted = 0;
    if (db->kind == DB_MEMORY)
        return idem_cleanup_mem(db, limit, deleted);
    /* rows another gateway's cleanup or a request reusing an expired key
     * holds are left to the next chunk or pass */
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *p[] = {lim};
    PGresult *r =
        pg_query(db_pg(db),
                 "DELETE FROM gateway.idempotency WHERE store_key IN (SELECT store_key FROM"
                 " gateway.idempotency WHERE expires_at < now() ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
                 1, p);
    if (!r)
        return -1;
    *deleted = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return 0;
}
