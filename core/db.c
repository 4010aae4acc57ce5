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
    if (pg_exec(db->pgc, "SET enable_seqscan = off") != 0)
        return -1;
    db->index_scans = true;
    return 0;
}

PGresult *db_exec_lookup(db_t *db, int bit, const char *sql, int nparams, const char *const *values,
                         const int *lengths, const int *formats, const char *quiet_state)
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

PGconn *db_pg(db_t *db)
{
    if (db->kind != DB_PG)
        return NULL;
    if (db->begin_pending) {
        db->begin_pending = false;
        if (pg_exec(db->pgc, "BEGIN") != 0)
            return NULL; /* nothing may run outside the transaction */
    }
    return db->pgc;
}

/* Drops a connection left in an unknown state (a pipeline not read to its
 * end): db_ensure connects again, and the open transaction is lost. */
static void drop_connection(db_t *db)
{
    log_warn("postgres: pipeline not completed; dropping the connection");
    PQfinish(db->pgc);
    db->pgc = NULL;
}

/* The pending BEGIN and one statement (prepared `name`, else sql unnamed) in
 * one pipeline: one round trip. The statement's result (NULL when it could
 * not run: BEGIN failed, the connection broke); an error result as
 * PQexecParams would return it. */
static PGresult *exec_after_begin(db_t *db, const char *name, const char *sql, int nparams,
                                  const char *const *values, const int *lengths, const int *formats)
{
    PGconn *c = db->pgc;
    if (PQenterPipelineMode(c) != 1)
        return NULL; /* BEGIN still pending: nothing runs outside the transaction */
    db->begin_pending = false;
    bool sent = PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
                (name ? PQsendQueryPrepared(c, name, nparams, values, lengths, formats, 0)
                      : PQsendQueryParams(c, sql, nparams, NULL, values, lengths, formats, 0)) == 1 &&
                PQpipelineSync(c) == 1;
    PGresult *res = NULL;
    bool synced = false;
    /* results: BEGIN's, NULL, the statement's, NULL, then the sync */
    for (int ends = 0; sent && !synced && ends <= 2;) {
        PGresult *r = PQgetResult(c);
        if (!r) {
            if (PQstatus(c) == CONNECTION_BAD)
                break;
            ends++;
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            synced = true;
        } else if (ends == 0) {
            if (st != PGRES_COMMAND_OK)
                (void)pg_result_ok(c, r, "BEGIN", NULL); /* logs it; the statement comes back aborted */
        } else if (!res) {
            res = r;
            continue;
        }
        PQclear(r);
    }
    if (!synced || PQexitPipelineMode(c) != 1) {
        PQclear(res);
        drop_connection(db);
        return NULL;
    }
    return res;
}

PGresult *db_exec_prepared_bin(db_t *db, int bit, int nparams, const char *const *values, const int *lengths,
                               const int *formats, const char *quiet_state)
{
    char name[16], what[32];
    PGresult *r = db->begin_pending
                      ? exec_after_begin(db, db_stmt_name(bit, name), NULL, nparams, values, lengths, formats)
                      : PQexecPrepared(db->pgc, db_stmt_name(bit, name), nparams, values, lengths, formats, 0);
    snprintf(what, sizeof what, "prepared %s", name);
    if (pg_result_ok(db->pgc, r, what, quiet_state))
        return r;
    PQclear(r);
    return NULL;
}

PGresult *db_exec_params_bin(db_t *db, const char *sql, int nparams, const char *const *values, const int *lengths,
                             const int *formats, const char *quiet_state)
{
    PGresult *r = db->begin_pending ? exec_after_begin(db, NULL, sql, nparams, values, lengths, formats)
                                    : PQexecParams(db->pgc, sql, nparams, NULL, values, lengths, formats, 0);
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
        if (db->begin_pending) { /* nothing ran: nothing to commit */
            db->begin_pending = false;
            return 0;
        }
        PGresult *r = PQexec(db->pgc, "COMMIT");
        /* COMMIT of an aborted transaction answers ROLLBACK: that is a failure */
        bool ok = r && PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0;
        if (!ok)
            log_warn("postgres commit failed: %s", r ? PQresultErrorMessage(r) : PQerrorMessage(db->pgc));
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

void db_rollback(db_t *db)
{
    if (!db->in_tx)
        return;
    db->in_tx = false;
    if (db->kind == DB_PG) {
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
        return pg_exec(db_pg(db), "SAVEPOINT sp");
    ECOM_ASSERT(db->sp_n < 8);
    db->sp[db->sp_n++] = db->undo_n;
    return 0;
}

int db_release(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG)
        return pg_exec(db->pgc, "RELEASE SAVEPOINT sp");
    ECOM_ASSERT(db->sp_n > 0);
    db->sp_n--;
    return 0;
}

void db_rollback_to(db_t *db)
{
    ECOM_ASSERT(db->in_tx);
    if (db->kind == DB_PG) {
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
