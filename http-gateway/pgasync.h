/* http-gateway/pgasync.h: an asynchronous PostgreSQL client for the gateway:
 * a pool of libpq connections driven in non-blocking pipeline mode on one
 * libevent base.
 *
 * A request leases a connection (pga_acquire), runs one or more pipelines on it
 * in sequence (pga_pipeline; a transaction may span several of them), then gives
 * it back (pga_release). Waiters are served FIFO; every wait and every pipeline
 * is bounded by the pool's timeout_ms.
 *
 * Thread model: a pool belongs to one event base and is used only from that
 * base's thread. The single exception is internal: a pipeline abandoned on a
 * timeout is cancelled on the server by a short-lived detached thread running the
 * blocking PQcancel (at most PGA_MAX_CANCEL_THREADS at once, process-wide), so
 * the event loop never blocks and the stuck backend stops holding its locks.
 *
 * Callback contract (STYLE.md): when a call returns an error, its callback is
 * never invoked; when it returns 0, the callback fires exactly once, later, from
 * the event loop (never from inside the call), or from pga_pool_free /
 * pga_release when those abandon the work.
 *
 * Owns: pga_pool_t (pga_pool_free) and its connections. Borrows: the event base
 * (must outlive the pool). A leased pga_conn_t stays valid until pga_release,
 * even after pga_pool_free (it is then closed and pga_release frees it).
 *
 * Connections: the pool opens `size` connections eagerly with PQconnectStart /
 * PQconnectPoll (host name resolution inside PQconnectStart blocks: give an IP
 * address in the URL). A failed or broken connection is reopened after a backoff
 * of 100 ms doubling to 5 s (reset once a connection is established); a
 * connection attempt is bounded by max(timeout_ms, 5 s). Idle connections are
 * watched, so one the server closes is noticed and reopened without a request
 * paying for it; each connection is also checked (non-blocking) when handed out. */
#ifndef ECOM_PGASYNC_H
#define ECOM_PGASYNC_H

#include <libpq-fe.h>
#include <stdbool.h>

struct event_base;

typedef struct pga_pool pga_pool_t; /* one per event base (gateway thread) */
typedef struct pga_conn pga_conn_t; /* a connection leased to one request */

/* Error codes (negative) of pga_acquire and pga_pipeline. */
enum {
    PGA_EFULL = -1,   /* the waiter queue is full: answer 503 */
    PGA_ECLOSED = -2, /* the pool is being freed, or the connection was released */
    PGA_EINVAL = -3,  /* bad arguments */
    PGA_EBUSY = -4,   /* a pipeline is already in flight on this connection */
    PGA_ECONN = -5,   /* the connection is lost (timeout, server gone, send failed): release it */
};

#define PGA_MAX_STMTS 256        /* statements in one pipeline */
#define PGA_MAX_PREPARED 128     /* named statements remembered per connection */
#define PGA_MAX_CANCEL_THREADS 4 /* background PQcancel threads at once */

typedef struct pga_stmt {
    /* Optional. Prepared once per connection under this name (the PQsendPrepare is
     * queued in the same pipeline the first time), then run with
     * PQsendQueryPrepared. A name must always stand for the same sql, and SQL
     * must not DEALLOCATE or DISCARD what the pool prepared. NULL or ""
     * runs sql with PQsendQueryParams (unnamed). Beyond PGA_MAX_PREPARED names on
     * one connection, further names run unnamed. */
    const char *name;
    const char *sql; /* one SQL statement; COPY is not supported */
    int nparams;
    /* Text parameters; NULL entries are SQL NULL. Copied at submit (libpq buffers
     * the whole pipeline before pga_pipeline returns): the caller's memory may go. */
    const char *const *params;
    /* Optional, both or neither: per parameter its length and format (1 =
     * binary, e.g. core/pgarray.h's arrays; 0 = text, whose length is unused). */
    const int *lengths;
    const int *formats;
    /* Its failure is not the pipeline's (err stays NULL; its result is still
     * handed over): a statement after the COMMIT, whose transaction is
     * decided whatever becomes of it. */
    bool after_commit;
} pga_stmt_t;

/* c is the leased connection, or NULL with err saying why: "timeout",
 * "no connection: <libpq error>" (timed out while no connection was up),
 * "pool closed". err is borrowed, valid during the callback. */
typedef void (*pga_acquire_cb)(pga_conn_t *c, const char *err, void *arg);

/* results has n entries, one per statement in order; they are borrowed, valid
 * only during the callback (do not PQclear them). err is NULL on success, which
 * means every statement succeeded. On a statement error err is the first failed
 * statement's message (its result carries PG_DIAG_SQLSTATE), and later
 * statements are PGRES_PIPELINE_ABORTED. Without an explicit BEGIN a pipeline is
 * one implicit transaction, so the earlier statements are rolled back as well.
 * On "timeout", a lost connection (libpq's message), "released" or "pool closed",
 * the entries not received are NULL and the connection is lost: release it
 * (pga_pipeline on it fails with PGA_ECONN). */
typedef void (*pga_result_cb)(pga_conn_t *c, PGresult *const *results, int n, const char *err, void *arg);

/* A pool of size connections (owned). max_waiters bounds the acquirers queued
 * beyond the idle connections; timeout_ms bounds each wait for a connection and
 * each pipeline. NULL on bad arguments. Starts connecting at once. */
pga_pool_t *pga_pool_new(struct event_base *base, const char *url, int size, int max_waiters, int timeout_ms);

/* Cancels everything: the callback of every pending acquire ("pool closed", c
 * NULL) and of every pipeline in flight ("pool closed") fires exactly once before
 * it returns; connections are closed. A connection still leased stays valid until
 * its pga_release, which then frees it. Not to be called from inside one of this
 * pool's callbacks. NULL is a no-op. */
void pga_pool_free(pga_pool_t *p);

/* Queues cb for the next free connection (FIFO). 0, then cb fires once: with a
 * connection, or with NULL after timeout_ms or on pga_pool_free. PGA_EFULL when
 * max_waiters acquirers already wait (cb never called), PGA_ECLOSED while the pool
 * is being freed. */
int pga_acquire(pga_pool_t *p, pga_acquire_cb cb, void *arg) __attribute__((warn_unused_result));

/* Sends the n statements in pipeline mode followed by one PQpipelineSync, then
 * cb fires once with the n results (after the sync arrived, so the connection is
 * clean for the next pipeline), or with err "timeout" after timeout_ms, in which
 * case the connection is closed and the query cancelled on the server. One
 * pipeline at a time per connection. 0 or a PGA_E* code (cb never called). */
int pga_pipeline(pga_conn_t *c, const pga_stmt_t *stmts, int n, pga_result_cb cb, void *arg)
    __attribute__((warn_unused_result));

/* Gives the connection back. Inside a transaction (PQtransactionStatus not idle)
 * it is rolled back first, asynchronously, before anyone else gets it. broken, or
 * a lost connection: it is closed and reopened. With a pipeline still in flight,
 * the pipeline is abandoned: the connection is closed (and the query cancelled)
 * and the pipeline's callback fires with err "released" before pga_release
 * returns; a release of c from that callback is a no-op. NULL is a no-op. */
void pga_release(pga_conn_t *c, bool broken);

/* connected: connections up (idle, leased or rolling back); busy: leased or
 * rolling back; waiting: queued acquirers. Any pointer may be NULL. 0, or
 * PGA_EINVAL when p is NULL. */
int pga_pool_stats(pga_pool_t *p, int *connected, int *busy, int *waiting);

/* Server process id of the connection (for logs and tests), 0 when it is lost. */
int pga_conn_backend_pid(const pga_conn_t *c);

#endif
