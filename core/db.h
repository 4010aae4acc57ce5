/* core/db.h: the transactional store, PostgreSQL or in memory.
 *
 * A db_t is one thread's handle: a PostgreSQL connection, or a view of the
 * process's shared memstore_t. Domain modules (outbox, inbox, read models,
 * idempotency, ...) implement each operation for both kinds and take a db_t
 * that is inside a transaction; effects become visible together at db_commit.
 *
 * Memory transactions hold the store's one lock from db_begin to commit or
 * rollback and keep an undo log, so rollback and savepoints behave as in
 * PostgreSQL for the operations the modules provide. Each module keeps its
 * memory tables in a slot of the store.
 * Owns: the connection or the handle; not the memstore (shared, see memstore_new). */
#ifndef ECOM_DB_H
#define ECOM_DB_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { DB_PG, DB_MEMORY } db_kind_t;

enum {
    MEM_SLOT_OUTBOX,
    MEM_SLOT_INBOX,
    MEM_SLOT_ANALYTICS,
    MEM_SLOT_IDEMPOTENCY,
    MEM_SLOT_AUTH,
    MEM_SLOT_PAYMENT,
    MEM_SLOT_NOTIFICATION,
    MEM_SLOT_MIGRATIONS,
    MEM_SLOT_SESSIONS,
    MEM_SLOT_MAX
};

typedef struct memstore {
    pthread_mutex_t mu;
    pthread_cond_t changed; /* broadcast after every commit that wrote something */
    uint64_t version;       /* bumped by such commits */
    void *slot[MEM_SLOT_MAX];
    void (*slot_free[MEM_SLOT_MAX])(void *);
} memstore_t;

typedef struct db_undo {
    void (*fn)(void *arg);
    void *arg;
    void (*free_fn)(void *arg); /* called on commit to release arg, may be NULL */
} db_undo_t;

typedef struct db {
    db_kind_t kind;
    PGconn *pgc; /* the connection: db_pg() inside a transaction (it sends a pending BEGIN) */
    char *url;
    char *app_name;
    memstore_t *mem;
    bool in_tx;
    bool begin_pending; /* PostgreSQL: db_begin's BEGIN goes with the first statement */
    bool wrote; /* memory: this transaction changed something */
    db_undo_t *undo;
    size_t undo_n, undo_cap;
    size_t sp[8]; /* memory savepoint marks (undo lengths) */
    int sp_n;
    uint64_t prepared; /* PostgreSQL: statements prepared on this connection (bits) */
    int lane;          /* which of a service's connections this is (services/runtime.h); handlers
                          use it to spread rows every lane would otherwise update */
    bool index_scans;  /* PostgreSQL: enable_seqscan is off on this connection (db_index_scans_only) */
    struct db_held *held; /* PostgreSQL: writes held back for the next round trip (db_defer) */
    size_t nheld, held_cap;
    bool held_failed; /* the last db_exec_* did not run: a held write before it failed */
    const char *after_commit; /* PostgreSQL: db_after_commit's statement, until the transaction ends */
    bool commit_async;        /* PostgreSQL: the next transactions commit asynchronously (db_commit_async) */
} db_t;

/* Prepared statements, one bit each, prepared once per connection. */
enum {
    DB_STMT_OUTBOX_APPEND,
    DB_STMT_INBOX_ONE,
    DB_STMT_INBOX_BATCH,
    DB_STMT_ANALYTICS_ONE,
    DB_STMT_ANALYTICS_BATCH,
    DB_STMT_PAYMENT_LOCK,
    DB_STMT_PAYMENT_SETTLE,
    DB_STMT_PAYMENT_REFUND_SEEN,
    DB_STMT_PAYMENT_REFUND_APPLY,
    DB_STMT_PAYMENT_READ,
    DB_STMT_PAYMENT_REFUND_INSERT,
    DB_STMT_NOTIFY_SEEN,
    DB_STMT_NOTIFY_RECORD,
    DB_STMT_INBOX_FRESH,
    DB_STMT_NOTIFY_RECORD_MANY,
    DB_STMT_OUTBOX_APPEND_MANY,
    DB_STMT_OUTBOX_STEP_FETCH,
    DB_STMT_OUTBOX_STEP_DELETE,
    DB_STMT_OUTBOX_STEP_ARCHIVE,
    DB_STMT_PAYMENT_LOCK_MANY,
    DB_STMT_PAYMENT_SETTLE_MANY,
    DB_STMT_NOTIFY_SEEN_MANY,
    DB_STMT_ANALYTICS_SEEN,
    DB_STMT_OUTBOX_HOLD_MANY,
    DB_STMT_PAYMENT_SETTLE_HELD,
    DB_STMT_MAX = 64
};

memstore_t *memstore_new(void);
void memstore_free(memstore_t *m);

/* Opens a PostgreSQL handle (connects now; NULL and *err when it cannot). */
db_t *db_open_pg(const char *url, const char *app_name, char **err);
db_t *db_open_memory(memstore_t *m);
void db_close(db_t *db);
/* PostgreSQL: reconnects when the connection is gone. 0 when usable. */
int db_ensure(db_t *db) __attribute__((warn_unused_result));

/* Index scans only on this connection (PostgreSQL: enable_seqscan = off;
 * memory: nothing to do), so that lookups by an array of keys can run
 * prepared: their generic plan is then an index scan whatever the table's
 * size when it was made, where otherwise a plan made while a table was small
 * (a sequential scan) would stay as it grows. The connection also always
 * uses the generic plan (plan_cache_mode = force_generic_plan): its cost,
 * estimated for arrays of 10 keys, exceeds that of a custom plan for the 1 or
 * 2 keys of a small batch, so PostgreSQL would otherwise plan such a
 * statement again at every execution (0.2-0.3 ms of its CPU each time).
 * (A condition on a parameter's value, `$1 IS NULL OR ...`, is then never
 * folded away: the plan must serve every value; and a range on a parameter,
 * `ts < now() - $1`, is costed as matching a third of the table, so a query
 * whose cost depends on how many rows match must be bounded by its shape, as
 * outbox_cleanup's is.)
 * Sets index_scans; a reconnect (db_ensure) clears it. 0, or -1. */
int db_index_scans_only(db_t *db) __attribute__((warn_unused_result));
/* PostgreSQL, on: the transactions begun from now on commit without
 * waiting for the WAL flush (SET LOCAL synchronous_commit = off, sent with
 * the BEGIN: no round trip of its own): a commit is visible at once and
 * atomic as ever, but the last moments of them can be lost if the server
 * crashes. Only for a caller that acts on a commit's durability some other
 * way (the service runtime's acknowledgements wait for a flush: see
 * services/ackgate.h). Memory: nothing to do. */
void db_commit_async(db_t *db, bool on);
/* A lookup by an array of keys (lengths and formats as PQexecParams'): with
 * index_scans, prepared statement `bit` (planned once); else sql unnamed,
 * planned for these very parameters (db_exec_params_bin). Result as
 * db_exec_prepared_bin. */
PGresult *db_exec_lookup(db_t *db, int bit, const char *sql, int nparams, const char *const *values,
                         const int *lengths, const int *formats, const char *quiet_state);
/* The server-side name of prepared statement `bit` (for PQsendQueryPrepared in pipelines). */
const char *db_stmt_name(int bit, char buf[16]);
/* Prepares statement `bit` on this connection the first time; 0 when ready. */
int db_prepare(db_t *db, int bit, const char *sql, int nparams) __attribute__((warn_unused_result));
/* Executes prepared statement `bit` (text params); result as pg_query. */
PGresult *db_exec_prepared(db_t *db, int bit, int nparams, const char *const *params);
/* sql as an unnamed statement, planned for these very parameters (lengths
 * and formats as PQexecParams'): for lookups by an array of keys, whose
 * cached generic plan, made while a table was small, would stay a
 * sequential scan as the table grows. Result as pg_query; quiet_state as
 * db_exec_prepared_bin. */
PGresult *db_exec_params_bin(db_t *db, const char *sql, int nparams, const char *const *values, const int *lengths,
                             const int *formats, const char *quiet_state);
/* The same with PQexecPrepared's lengths and formats (binary parameters, e.g.
 * core/pgarray.h); a failure whose SQLSTATE is quiet_state (may be NULL) is
 * logged at debug level only, for callers that expect and handle it. */
PGresult *db_exec_prepared_bin(db_t *db, int bit, int nparams, const char *const *values, const int *lengths,
                               const int *formats, const char *quiet_state);

/* PostgreSQL: a write whose result the caller does not need, held back and
 * sent in one pipeline with whatever next needs the server: the COMMIT (so a
 * batch's last writes and its commit cost one round trip), RELEASE or
 * SAVEPOINT, any db_exec_* statement, db_pg. A held write that fails fails
 * that step: db_commit or db_release returns -1 with the connection still
 * alive and nothing committed (db_commit has rolled back; after db_release
 * the caller rolls back to the savepoint; db_savepoint fails the same way), a
 * statement returns NULL with db->held_failed set and pg_last_sqlstate() the
 * held write's (not the statement's: a caller that reads a SQLSTATE as an
 * answer checks held_failed first). So a held statement checks its own
 * outcome, raising an error where a caller would have checked its result. Prepared statement `bit` (prepared now the
 * first time); the parameters are copied; a failure whose SQLSTATE is
 * quiet_state is logged at debug level. Memory: not available (-1).
 * 0, or -1 when it could not be prepared. */
int db_defer(db_t *db, int bit, const char *sql, int nparams, const char *const *values, const int *lengths,
             const int *formats, const char *quiet_state) __attribute__((warn_unused_result));

/* PostgreSQL: the connection, for statements of one's own; inside a
 * transaction whose BEGIN is still pending (db_begin) it sends that first.
 * NULL when it cannot (libpq's calls then fail). Status checks that must
 * not start anything read db->pgc. */
PGconn *db_pg(db_t *db);

/* PostgreSQL: BEGIN goes out with the transaction's first statement (one
 * round trip for both, in a pipeline) from db_exec_prepared_bin,
 * db_exec_params_bin and db_exec_lookup, or alone from db_pg; a transaction
 * that ran no statement costs no round trip at all. db_commit sends the held
 * writes (db_defer) with the COMMIT; after it no transaction is open,
 * whatever it returns. */
int db_begin(db_t *db) __attribute__((warn_unused_result));
int db_commit(db_t *db) __attribute__((warn_unused_result));
/* PostgreSQL: once this transaction has committed, sql (static; no
 * parameters) runs in a transaction of its own, in the COMMIT's round trip;
 * its outcome is not the commit's (a failure is logged). Nothing runs when
 * the transaction rolls back. For a hint that must not hold the
 * transaction's locks through its WAL flush (the outbox's NOTIFY: see
 * bus/outbox.c). Memory: nothing. */
void db_after_commit(db_t *db, const char *sql);
void db_rollback(db_t *db);
/* One level of savepoint is what the runtime needs; nesting up to 8 works. */
int db_savepoint(db_t *db) __attribute__((warn_unused_result));
int db_release(db_t *db) __attribute__((warn_unused_result));
void db_rollback_to(db_t *db);

/* Memory side, for modules. Call only inside a transaction (the lock is held).
 * The slot is created with make() on first use. */
void *db_mem_slot(db_t *db, int slot, void *(*make)(void), void (*free_fn)(void *));
/* Registers how to undo a change just made; free_fn(arg) runs instead at commit. */
void db_mem_undo(db_t *db, void (*fn)(void *), void *arg, void (*free_fn)(void *));
/* Waits (without a transaction) until the store's version passes *seen or
 * timeout_ms passes; updates *seen. */
void db_mem_wait(db_t *db, uint64_t *seen, int timeout_ms);

#endif
