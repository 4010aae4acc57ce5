/* core/db.c: see db.h. */
#include "core/db.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

memstore_t *memstore_new(void)
{
    memstore_t *m = xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->changed, &ca);
    pthread_condattr_destroy(&ca);
    return m;
}

void memstore_free(memstore_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < MEM_SLOT_MAX; i++)
        if (m->slot[i] && m->slot_free[i])
            m->slot_free[i](m->slot[i]);
    pthread_cond_destroy(&m->changed);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static void held_clear(db_t *db);

db_t *db_open_pg(const char *url, const char *app_name, char **err)
{
    PGconn *c = pg_connect(url, app_name, err);
    if (!c)
        return NULL;
    db_t *db = xcalloc(1, sizeof *db);
    db->kind = DB_PG;
    db->pgc = c;
    db->url = xstrdup(url);
    db->app_name = xstrdup(app_name ? app_name : "ecom");
    return db;
}

db_t *db_open_memory(memstore_t *m)
{
    db_t *db = xcalloc(1, sizeof *db);
    db->kind = DB_MEMORY;
    db->mem = m;
    return db;
}

void db_close(db_t *db)
{
    if (!db)
        return;
    if (db->in_tx)
        db_rollback(db);
    held_clear(db);
    free(db->held);
    PQfinish(db->pgc);
    free(db->url);
    free(db->app_name);
    free(db->undo);
    free(db);
}

int db_ensure(db_t *db)
{
    if (db->kind == DB_MEMORY || pg_alive(db->pgc))
        return 0;
    char *err = NULL;
    PGconn *c = pg_connect(db->url, db->app_name, &err);
    if (!c) {
        log_warn("postgres reconnect failed: %s", err);
        free(err);
        return -1;
    }
    PQfinish(db->pgc);
    db->pgc = c;
    held_clear(db);
    db->in_tx = false;
    db->begin_pending = false;
    db->prepared = 0;
    db->index_scans = false; /* a session setting: gone with the connection */
    return 0;
}

int db_index_scans_only(db_t *db)
{
    if (db->kind != DB_PG)
        return 0;
    /* one round trip for both (a simple query may hold several statements) */
    if (pg_exec(db->pgc, "SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan") != 0)
        return -1;
    db->index_scans = true;
    return 0;
}

void db_commit_async(db_t *db, bool on)
{
    db->commit_async = db->kind == DB_PG && on;
}

#define SQL_ASYNC "SET LOCAL synchronous_commit = off"

PGresult *db_exec_lookup(db_t *db, int bit, const char *sql, int nparams, const char *const *values, const int *lengths,
                         const int *formats, const char *quiet_state)
{
    if (db->index_scans && db_prepare(db, bit, sql, nparams) == 0)
        return db_exec_prepared_bin(db, bit, nparams, values, lengths, formats, quiet_state);
    return db_exec_params_bin(db, sql, nparams, values, lengths, formats, quiet_state);
}

const char *db_stmt_name(int bit, char buf[16])
{
    snprintf(buf, 16, "ecom_s%d", bit);
    return buf;
}

int db_prepare(db_t *db, int bit, const char *sql, int nparams)
{
    ECOM_ASSERT(db->kind == DB_PG && bit >= 0 && bit < DB_STMT_MAX);
    if (db->prepared & (1ULL << bit))
        return 0;
    char name[16];
    PGresult *r = PQprepare(db->pgc, db_stmt_name(bit, name), sql, nparams, NULL);
    bool ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        log_warn("postgres prepare failed: %s", r ? PQresultErrorMessage(r) : PQerrorMessage(db->pgc));
    PQclear(r);
    if (ok)
        db->prepared |= 1ULL << bit;
    return ok ? 0 : -1;
}

PGresult *db_exec_prepared(db_t *db, int bit, int nparams, const char *const *params)
{
    return db_exec_prepared_bin(db, bit, nparams, params, NULL, NULL, NULL);
}

/* Drops a connection left in an unknown state (a pipeline not read to its
 * end): db_ensure connects again, and the open transaction is lost. */
static void drop_connection(db_t *db)
{
    log_warn("postgres: pipeline not completed; dropping the connection");
    PQfinish(db->pgc);
    db->pgc = NULL;
}

/* ---- held writes (db_defer) ---- */

typedef struct db_held {
    int bit;
    int nparams;
    char **values;
    int *lengths, *formats;
    const char *quiet_state;
} db_held_t;

static void held_clear(db_t *db)
{
    for (size_t i = 0; i < db->nheld; i++) {
        db_held_t *h = &db->held[i];
        for (int k = 0; k < h->nparams; k++)
            free(h->values[k]);
        free(h->values);
        free(h->lengths);
        free(h->formats);
    }
    db->nheld = 0;
}

int db_defer(db_t *db, int bit, const char *sql, int nparams, const char *const *values, const int *lengths,
             const int *formats, const char *quiet_state)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind != DB_PG || db_prepare(db, bit, sql, nparams) != 0)
        return -1;
    if (db->nheld == db->held_cap) {
        db->held_cap = db->held_cap ? db->held_cap * 2 : 4;
        db->held = xrealloc(db->held, db->held_cap * sizeof *db->held);
    }
    db_held_t *h = &db->held[db->nheld++];
    *h = (db_held_t){.bit = bit,
                     .nparams = nparams,
                     .values = xcalloc(nparams ? (size_t)nparams : 1, sizeof *h->values),
                     .lengths = xcalloc(nparams ? (size_t)nparams : 1, sizeof *h->lengths),
                     .formats = xcalloc(nparams ? (size_t)nparams : 1, sizeof *h->formats),
                     .quiet_state = quiet_state};
    for (int k = 0; k < nparams; k++) {
        if (!values[k])
            continue;
        bool bin = formats && formats[k] == 1;
        size_t n = bin ? (size_t)lengths[k] : strlen(values[k]) + 1;
        h->values[k] = xmalloc(n ? n : 1);
        memcpy(h->values[k], values[k], n);
        h->lengths[k] = bin ? lengths[k] : 0;
        h->formats[k] = bin ? 1 : 0;
    }
    return 0;
}

/* One statement of a pipeline: prepared `name`, else sql unnamed. */
typedef struct pl_stmt {
    const char *name, *sql;
    int nparams;
    const char *const *values;
    const int *lengths, *formats;
    const char *quiet_state;
} pl_stmt_t;

/* The pending BEGIN, the held writes and then tail[0..ntail) in one
 * pipeline: one round trip. tail[0]'s result into *last (owned by the
 * caller; NULL when it did not run; none when ntail is 0); what follows it
 * in tail is not the caller's (a failure is logged: db_after_commit).
 * Returns 0 when every statement before tail[0] succeeded, 1 when one
 * failed (logged; the later ones did not run: the transaction is aborted),
 * -1 when the pipeline broke (the connection is dropped). The held writes
 * are gone in every case. */
static int pipeline(db_t *db, const pl_stmt_t *tail, int ntail, PGresult **last)
{
    PGconn *c = db->pgc;
    *last = NULL;
    bool async = db->begin_pending && db->commit_async;
    int n = (async ? 1 : 0) + (db->begin_pending ? 1 : 0) + (int)db->nheld + ntail;
    pl_stmt_t *st = xcalloc((size_t)n, sizeof *st);
    char(*names)[16] = xcalloc(db->nheld + 1, sizeof *names);
    int k = 0;
    if (db->begin_pending)
        st[k++] = (pl_stmt_t){.sql = "BEGIN"};
    if (async)
        st[k++] = (pl_stmt_t){.sql = SQL_ASYNC};
    for (size_t i = 0; i < db->nheld; i++) {
        db_held_t *h = &db->held[i];
        st[k++] = (pl_stmt_t){.name = db_stmt_name(h->bit, names[i]),
                              .nparams = h->nparams,
                              .values = (const char *const *)h->values,
                              .lengths = h->lengths,
                              .formats = h->formats,
                              .quiet_state = h->quiet_state};
    }
    for (int i = 0; i < ntail; i++)
        st[k++] = tail[i];
    int rc = -1;
    if (PQenterPipelineMode(c) != 1) {
        /* the held writes are lost: the transaction must not go on without them */
        drop_connection(db);
        goto out;
    }
    db->begin_pending = false;
    bool sent = true;
    for (int i = 0; i < n && sent; i++)
        sent = (st[i].name
                    ? PQsendQueryPrepared(c, st[i].name, st[i].nparams, st[i].values, st[i].lengths, st[i].formats, 0)
                    : PQsendQueryParams(c, st[i].sql, st[i].nparams, NULL, st[i].values, st[i].lengths, st[i].formats,
                                        0)) == 1;
    sent = sent && PQpipelineSync(c) == 1;
    bool failed = false, synced = false;
    /* each statement's result and a NULL after it, then the sync */
    for (int i = 0; sent && i <= n; i++) {
        PGresult *r = PQgetResult(c);
        if (!r)
            break; /* the connection broke */
        if (i == n) {
            synced = PQresultStatus(r) == PGRES_PIPELINE_SYNC;
            PQclear(r);
            break;
        }
        if (ntail > 0 && i == n - ntail) {
            *last = r;
        } else if (ntail > 0 && i > n - ntail) { /* after the kept one: its outcome is not the caller's */
            ExecStatusType es = PQresultStatus(r);
            if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK && es != PGRES_PIPELINE_ABORTED)
                log_warn("postgres: %s failed after the commit: %s", st[i].sql, PQresultErrorMessage(r));
            PQclear(r);
        } else {
            ExecStatusType es = PQresultStatus(r);
            if (!failed && es != PGRES_PIPELINE_ABORTED && es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK)
                (void)pg_result_ok(c, r, st[i].name ? st[i].name : st[i].sql, st[i].quiet_state); /* held */
            failed = failed || (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK);
            PQclear(r);
        }
        PGresult *end = PQgetResult(c); /* NULL: this statement's results are over */
        if (end) {
            PQclear(end);
            break;
        }
    }
    if (!synced || PQexitPipelineMode(c) != 1) {
        PQclear(*last);
        *last = NULL;
        drop_connection(db);
        goto out;
    }
    rc = failed ? 1 : 0;
out:
    held_clear(db);
    free(st);
    free(names);
    return rc;
}

/* A statement after the pending BEGIN and the held writes: its result, or
 * NULL when it did not run: an earlier one failed (db->held_failed; logged,
 * pg_last_sqlstate is its state) or the connection broke. An error result
 * as PQexecParams would return it. */
static PGresult *exec_after(db_t *db, const char *name, const char *sql, int nparams, const char *const *values,
                            const int *lengths, const int *formats)
{
    pl_stmt_t st = {
        .name = name, .sql = sql, .nparams = nparams, .values = values, .lengths = lengths, .formats = formats};
    PGresult *r = NULL;
    int rc = pipeline(db, &st, 1, &r);
    db->held_failed = rc == 1;
    if (rc != 0) {
        PQclear(r);
        return NULL;
    }
    return r;
}

/* Sends what is pending (BEGIN, held writes) with one more simple statement
 * sql. 0, or -1 (a held write or sql failed, or the connection broke). */
static int exec_simple_after(db_t *db, const char *sql)
{
    if (!db->begin_pending && db->nheld == 0)
        return pg_exec(db->pgc, sql);
    PGresult *r = exec_after(db, NULL, sql, 0, NULL, NULL, NULL);
    bool ok = !db->held_failed && pg_result_ok(db->pgc, r, sql, NULL);
    PQclear(r);
    return ok ? 0 : -1;
}

PGconn *db_pg(db_t *db)
{
    if (db->kind != DB_PG)
        return NULL;
    if (db->nheld) {
        PGresult *r = NULL;
        int rc = pipeline(db, NULL, 0, &r); /* BEGIN and the held writes */
        PQclear(r);
        if (rc != 0)
            return rc < 0 ? NULL : db->pgc; /* failed: the transaction is aborted, as after a failed statement */
    }
    if (db->begin_pending) {
        db->begin_pending = false;
        /* one simple query: one round trip for both */
        if (pg_exec(db->pgc, db->commit_async ? "BEGIN; " SQL_ASYNC : "BEGIN") != 0)
            return NULL; /* nothing may run outside the transaction */
    }
    return db->pgc;
}

PGresult *db_exec_prepared_bin(db_t *db, int bit, int nparams, const char *const *values, const int *lengths,
                               const int *formats, const char *quiet_state)
{
    char name[16], what[32];
    db->held_failed = false;
    PGresult *r = db->begin_pending || db->nheld
                      ? exec_after(db, db_stmt_name(bit, name), NULL, nparams, values, lengths, formats)
                      : PQexecPrepared(db->pgc, db_stmt_name(bit, name), nparams, values, lengths, formats, 0);
    if (db->held_failed)
        return NULL; /* logged with its own statement */
    snprintf(what, sizeof what, "prepared %s", name);
    if (pg_result_ok(db->pgc, r, what, quiet_state))
        return r;
    PQclear(r);
    return NULL;
}

PGresult *db_exec_params_bin(db_t *db, const char *sql, int nparams, const char *const *values, const int *lengths,
                             const int *formats, const char *quiet_state)
{
    db->held_failed = false;
    PGresult *r = db->begin_pending || db->nheld
                      ? exec_after(db, NULL, sql, nparams, values, lengths, formats)
                      : PQexecParams(db->pgc, sql, nparams, NULL, values, lengths, formats, 0);
    if (db->held_failed)
        return NULL; /* logged with its own statement */
    if (pg_result_ok(db->pgc, r, sql, quiet_state))
        return r;
    PQclear(r);
    return NULL;
}

int db_begin(db_t *db)
{
    ECOM_ASSERT(!db->in_tx);
    if (db->kind == DB_PG) {
        if (db_ensure(db) != 0)
            return -1;
        db->begin_pending = true;
        db->after_commit = NULL;
    } else {
        pthread_mutex_lock(&db->mem->mu);
        db->undo_n = 0;
        db->sp_n = 0;
        db->wrote = false;
    }
    db->in_tx = true;
    return 0;
}

static void undo_to(db_t *db, size_t mark)
{
    while (db->undo_n > mark) {
        db_undo_t *u = &db->undo[--db->undo_n];
        u->fn(u->arg);
    }
}

int db_commit(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    db->in_tx = false;
    if (db->kind == DB_PG) {
        if (db->begin_pending && db->nheld == 0) { /* nothing ran: nothing to commit */
            db->begin_pending = false;
            return 0;
        }
        int rc = 0;
        PGresult *r = NULL;
        const char *after = db->after_commit;
        db->after_commit = NULL;
        if (db->nheld || after) {
            /* after the COMMIT, with no Sync between, a statement is an
             * implicit transaction of its own */
            const pl_stmt_t tail[] = {{.sql = "COMMIT"}, {.sql = after}};
            rc = pipeline(db, tail, after ? 2 : 1, &r);
        } else {
            r = PQexec(db->pgc, "COMMIT");
        }
        if (rc == 1) { /* a held write failed: the COMMIT did not run */
            PQclear(r);
            PGresult *rb = PQexec(db->pgc, "ROLLBACK"); /* not pg_exec: pg_last_sqlstate stays the write's */
            bool rolled_back = PQresultStatus(rb) == PGRES_COMMAND_OK;
            PQclear(rb);
            if (!rolled_back)
                drop_connection(db); /* no transaction may stay open: db_ensure connects again */
            return -1;
        }
        /* COMMIT of an aborted transaction answers ROLLBACK: that is a failure */
        bool ok = rc == 0 && r && PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0;
        if (!ok)
            log_warn("postgres commit failed: %s", r         ? PQresultErrorMessage(r)
                                                   : db->pgc ? PQerrorMessage(db->pgc)
                                                             : "connection dropped");
        PQclear(r);
        return ok ? 0 : -1;
    }
    for (size_t i = 0; i < db->undo_n; i++)
        if (db->undo[i].free_fn)
            db->undo[i].free_fn(db->undo[i].arg);
    db->undo_n = 0;
    if (db->wrote) {
        db->mem->version++;
        pthread_cond_broadcast(&db->mem->changed);
    }
    pthread_mutex_unlock(&db->mem->mu);
    return 0;
}

void db_after_commit(db_t *db, const char *sql)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG)
        db->after_commit = sql;
}

void db_rollback(db_t *db)
{
    if (!db->in_tx)
        return;
    db->in_tx = false;
    if (db->kind == DB_PG) {
        held_clear(db);
        db->after_commit = NULL;
        if (db->begin_pending) {
            db->begin_pending = false;
            return;
        }
        if (pg_alive(db->pgc) && pg_exec(db->pgc, "ROLLBACK") != 0)
            log_debug("rollback failed; the connection will be reset");
        return;
    }
    undo_to(db, 0);
    pthread_mutex_unlock(&db->mem->mu);
}

int db_savepoint(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG)
        return exec_simple_after(db, "SAVEPOINT sp");
    ECOM_ASSERT(db->sp_n < 8);
    db->sp[db->sp_n++] = db->undo_n;
    return 0;
}

int db_release(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG)
        return exec_simple_after(db, "RELEASE SAVEPOINT sp");
    ECOM_ASSERT(db->sp_n > 0);
    db->sp_n--;
    return 0;
}

void db_rollback_to(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG) {
        held_clear(db); /* written after the savepoint (db_savepoint sent the ones before) */
        if (pg_exec(db->pgc, "ROLLBACK TO SAVEPOINT sp") != 0 || pg_exec(db->pgc, "RELEASE SAVEPOINT sp") != 0)
            log_debug("rollback to savepoint failed");
        return;
    }
    ECOM_ASSERT(db->sp_n > 0);
    undo_to(db, db->sp[--db->sp_n]);
}

void *db_mem_slot(db_t *db, int slot, void *(*make)(void), void (*free_fn)(void *))
{
    ECOM_ASSERT(db->kind == DB_MEMORY && db->in_tx && slot >= 0 && slot < MEM_SLOT_MAX);
    memstore_t *m = db->mem;
    if (!m->slot[slot]) {
        m->slot[slot] = make();
        m->slot_free[slot] = free_fn;
    }
    return m->slot[slot];
}

void db_mem_undo(db_t *db, void (*fn)(void *), void *arg, void (*free_fn)(void *))
{
    ECOM_ASSERT(db->kind == DB_MEMORY && db->in_tx);
    if (db->undo_n == db->undo_cap) {
        db->undo_cap = db->undo_cap ? db->undo_cap * 2 : 64;
        db->undo = xrealloc(db->undo, db->undo_cap * sizeof *db->undo);
    }
    db->undo[db->undo_n++] = (db_undo_t){fn, arg, free_fn};
    db->wrote = true;
}

void db_mem_wait(db_t *db, uint64_t *seen, int timeout_ms)
{
    memstore_t *m = db->mem;
    struct timespec ts;
    clock_deadline(&ts, CLOCK_MONOTONIC, timeout_ms);
    pthread_mutex_lock(&m->mu);
    while (m->version == *seen) {
        if (pthread_cond_timedwait(&m->changed, &m->mu, &ts) == ETIMEDOUT)
            break;
    }
    *seen = m->version;
    pthread_mutex_unlock(&m->mu);
}
