/* http-gateway/command.c: write requests. A command's outbox rows, its
 * idempotency record and the response it answers commit in ONE transaction, so
 * a replay can never duplicate a command and a crash can never leave a key
 * without its command.
 *
 * PostgreSQL: the claim opens the transaction and takes a transaction-scoped
 * advisory lock on the key (a second request with the key while the first is
 * in flight gets 409 at once), drops an expired record, and looks for a
 * completed one (replay, or 422 on a different fingerprint): one pipeline.
 * The commit appends the outbox rows, inserts the record with the response and
 * commits: a second pipeline. Without a key the command is one pipeline.
 *
 * Memory: the claim marks the key in flight in a short transaction; the commit
 * appends the outbox rows and completes the record in a second one. The store
 * lock is never held while the request waits for anything. */
#include "http-gateway/gw.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
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

static void on_claim(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)c;
    (void)n;
    gw_req_t *r = arg;
    log_ctx_set(&r->log);
    if (err) {
        log_warn("idempotency claim failed: %s", err);
        gw_tx_abort(r);
        unavailable(r, "the idempotency store did not answer");
    } else if (PQntuples(res[3]) == 1) {
        /* a completed record: replay it (or 422), whoever holds the lock now */
        const char *fp = PQgetvalue(res[3], 0, 0);
        bool same = strcmp(fp, r->fingerprint) == 0;
        int status = atoi(PQgetvalue(res[3], 0, 1));
        char *ctype = xstrdup(PQgetvalue(res[3], 0, 2));
        char *body = xstrndup(PQgetvalue(res[3], 0, 3), (size_t)PQgetlength(res[3], 0, 3));
        gw_tx_abort(r);
        if (same)
            replay(r, status, ctype, body, strlen(body));
        else
            conflict(r);
        free(ctype);
        free(body);
    } else if (PQgetvalue(res[1], 0, 0)[0] != 't') {
        gw_tx_abort(r);
        in_flight(r);
    } else if (!r->answered) {
        r->idem_active = true; /* the lock is ours until the transaction ends */
        gw_pipeline_upstream(r);
    } else {
        gw_tx_abort(r); /* timed out meanwhile */
    }
    gw_unref(r);
    log_ctx_set(NULL);
}

static void on_claim_conn(pga_conn_t *c, const char *err, void *arg)
{
    gw_req_t *r = arg;
    log_ctx_set(&r->log);
    if (!c || r->answered) {
        if (c)
            pga_release(c, false);
        if (!c)
            log_warn("no database connection for an idempotent request: %s", err ? err : "?");
        unavailable(r, "the database is unavailable");
        gw_unref(r);
        log_ctx_set(NULL);
        return;
    }
    r->pg = c;
    const char *k[] = {r->idem_store};
    const pga_stmt_t st[] = {
        {.sql = "BEGIN"},
        {.name = "gw_idem_lock", .sql = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", .nparams = 1,
         .params = k},
        {.name = "gw_idem_expire", .sql = "DELETE FROM gateway.idempotency WHERE store_key = $1 AND expires_at < now()",
         .nparams = 1, .params = k},
        {.name = "gw_idem_get",
         .sql = "SELECT fingerprint, status, coalesce(content_type, ''), body FROM gateway.idempotency"
                " WHERE store_key = $1",
         .nparams = 1, .params = k},
    };
    if (pga_pipeline(c, st, 4, on_claim, r) != 0) {
        gw_tx_abort(r);
        unavailable(r, "the database is unavailable");
        gw_unref(r);
    }
    log_ctx_set(NULL);
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
    gw_ref(r);
    if (pga_acquire(r->th->pg, on_claim_conn, r) != 0) {
        gw_unref(r);
        unavailable(r, "too many requests are waiting for the database");
    }
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
        for (int k = 0; k < c->ops[i].nparams; k++)
            free(c->ops[i].params[k]);
        if (c->ops[i].free_arg)
            c->ops[i].free_arg(c->ops[i].arg);
    }
    c->nops = 0;
}

int gw_cmd_op(gw_req_t *r, const char *name, const char *sql, int nparams, const char *const *params,
              int (*mem_fn)(db_t *tx, void *arg), void *arg, void (*free_arg)(void *arg))
{
    gw_cmd_t *c = &r->cmd;
    if (c->nops == GW_MAX_OPS || nparams > GW_OP_PARAMS) {
        if (free_arg)
            free_arg(arg);
        return -1;
    }
    gw_op_t *op = &c->ops[c->nops++];
    *op = (gw_op_t){.name = name, .sql = sql, .nparams = nparams, .mem = mem_fn, .arg = arg, .free_arg = free_arg};
    for (int k = 0; k < nparams; k++)
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
                        .payload = m->payload ? xstrdup(m->payload) : NULL};
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

static void on_commit(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)res;
    (void)n;
    commit_ctx_t *cc = arg;
    gw_req_t *r = cc->r;
    log_ctx_set(&r->log);
    pga_release(c, err != NULL);
    r->pg = NULL;
    if (err) {
        log_warn("command commit failed: %s", err);
        r->idem_active = false;
        unavailable(r, "the command could not be stored");
    } else {
        answer_committed(r, cc->status, cc->body, cc->len);
    }
    free(cc->body);
    free(cc);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void send_commit(gw_req_t *r, commit_ctx_t *cc, bool begin)
{
    gw_cmd_t *cmd = &r->cmd;
    pga_stmt_t st[GW_MAX_OPS + GW_MAX_OUTBOX + 3];
    int n = 0;
    if (begin)
        st[n++] = (pga_stmt_t){.sql = "BEGIN"};
    for (size_t i = 0; i < cmd->nops; i++)
        st[n++] = (pga_stmt_t){.name = cmd->ops[i].name,
                               .sql = cmd->ops[i].sql,
                               .nparams = cmd->ops[i].nparams,
                               .params = (const char *const *)cmd->ops[i].params};
    for (size_t i = 0; i < cmd->n; i++) {
        bool notify = outbox_notify_due();
        st[n++] = (pga_stmt_t){.name = notify ? "gw_outbox_append_notify" : "gw_outbox_append",
                               .sql = notify ? outbox_sql_append_notify : outbox_sql_append,
                               .nparams = 10,
                               .params = cmd->params[i].values};
    }
    char status[8], ttl[16];
    const char *ip[] = {r->idem_store, r->tenant, r->fingerprint, status, "application/json", cc->body, ttl};
    if (r->idem_active) {
        snprintf(status, sizeof status, "%d", cc->status);
        snprintf(ttl, sizeof ttl, "%d", GW_IDEM_TTL_S);
        st[n++] = (pga_stmt_t){
            .name = "gw_idem_put",
            .sql = "INSERT INTO gateway.idempotency (store_key, tenant, fingerprint, status, content_type, body,"
                   " expires_at) VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::int))",
            .nparams = 7,
            .params = ip};
    }
    st[n++] = (pga_stmt_t){.sql = "COMMIT"};
    if (pga_pipeline(r->pg, st, n, on_commit, cc) != 0) {
        gw_tx_abort(r);
        unavailable(r, "the database is unavailable");
        free(cc->body);
        free(cc);
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
        free(cc->body);
        free(cc);
        gw_unref(r);
    } else {
        r->pg = c;
        send_commit(r, cc, true);
    }
    log_ctx_set(NULL);
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
    *cc = (commit_ctx_t){r, status, xstrdup(s), strlen(s)};
    json_object_put(body);
    gw_ref(r);
    if (r->pg) {
        send_commit(r, cc, false);
        return;
    }
    if (pga_acquire(r->th->pg, on_commit_conn, cc) != 0) {
        unavailable(r, "too many requests are waiting for the database");
        free(cc->body);
        free(cc);
        gw_unref(r);
    }
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

static void on_cleanup(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    (void)res;
    (void)n;
    (void)arg;
    if (err)
        log_debug("idempotency cleanup failed: %s", err);
    pga_release(c, false);
}

static void on_cleanup_conn(pga_conn_t *c, const char *err, void *arg)
{
    (void)err;
    (void)arg;
    if (!c)
        return;
    const pga_stmt_t st[] = {
        {.sql = "DELETE FROM gateway.idempotency WHERE store_key IN (SELECT store_key FROM gateway.idempotency"
                " WHERE expires_at < now() ORDER BY expires_at LIMIT 1000)"}};
    if (pga_pipeline(c, st, 1, on_cleanup, NULL) != 0)
        pga_release(c, false);
}

void gw_idem_cleanup(gw_thread_t *th)
{
    if (th->pg) {
        if (pga_acquire(th->pg, on_cleanup_conn, NULL) != 0)
            log_debug("idempotency cleanup skipped: pool busy");
        return;
    }
    db_t *db = th->memdb;
    if (db_begin(db) != 0)
        return;
    mem_idem_t *m = mem(db);
    int64_t now = clock_now_ms();
    const char *k;
    size_t kl;
    void *v;
    size_t gone = 0;
    for (size_t i = 0; gone < 1000 && strmap_next(&m->recs, &i, &k, &kl, &v);) {
        mem_rec_t *x = v;
        if (x && x->done && x->expires_ms <= now && strmap_del(&m->recs, k, kl, NULL)) {
            rec_free(x);
            gone++;
        }
    }
    if (db_commit(db) != 0)
        log_debug("idempotency cleanup: commit failed");
}
