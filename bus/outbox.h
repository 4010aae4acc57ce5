/* bus/outbox.h: the producing and draining sides of the transactional outbox.
 *
 * outbox_append writes one message inside the caller's open transaction (a
 * db_t after db_begin): the message becomes visible to the drainer exactly
 * when the caller's write commits. Writers of one (tenant, aggregate) are
 * serialised by its sequence row, so the outbox position follows commit order
 * within an aggregate and every message carries its per-aggregate seq.
 * Rows live in partition hash(tenant, aggregate) % OUTBOX_PARTITIONS; each
 * partition is drained by one drainer at a time (outbox-worker/drain.h).
 * Owns: nothing beyond the rows it returns (outbox_rows_free). */
#ifndef ECOM_OUTBOX_H
#define ECOM_OUTBOX_H

#include "bus/envelope.h"
#include "core/db.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OUTBOX_PARTITIONS 64

typedef struct outbox_msg {
    const char *topic;
    const char *type;
    const char *tenant;
    const char *aggregate_id;
    const char *traceparent; /* NULL or "" when none */
    const char *request_id;  /* NULL or "" when none */
    const char *payload;     /* JSON text */
    /* "" (zeroed): a new UUIDv7; else this id (uuid_valid, e.g.
     * uuid_v7_derived: the same message made again has the same id) */
    char id[UUID_STR_LEN];
    /* The aggregate was made for this message (a fresh id) and will never
     * have another: the message takes seq 1 without a sequence row, where
     * any other append keeps a bus.aggregate_seq row per aggregate for good.
     * Only for such one-message aggregates: a second message of the same
     * aggregate would take seq 1 again. */
    bool sole;
} outbox_msg_t;

typedef struct outbox_row {
    int64_t pos;
    int partition;
    int attempts;
    envelope_t env;
} outbox_row_t;

/* Largest payload accepted (bytes); default 256 KiB. */
void outbox_set_max_payload(size_t n);
int outbox_partition_of(const char *tenant, const char *aggregate_id);

/* Appends inside the open transaction tx. Invalid names or an oversized
 * payload: -1 with *why set (static text) and nothing written; a database
 * failure: -1 with *why "storage error". id_out (optional) gets the UUIDv7. */
int outbox_append(db_t *tx, const outbox_msg_t *m, char id_out[UUID_STR_LEN], const char **why)
    __attribute__((warn_unused_result));

/* Appends n messages inside tx in one statement, in array order (positions
 * and each aggregate's seq follow it), as n outbox_append calls would. All
 * or nothing: an invalid message (*why as outbox_append's) writes nothing.
 * Each aggregate's sequence row is locked until the commit, and this
 * statement takes them in the byte order of (tenant, aggregate_id). A
 * transaction that appends to several aggregates does so in one such
 * statement, or one by one in that order: two transactions that take two
 * aggregates in opposite orders deadlock, and PostgreSQL fails one, which
 * must then be retried (services/runtime.h's lock_aggregates keeps a batch
 * applied again in halves in that order). */
int outbox_append_many(db_t *tx, const outbox_msg_t *msgs, size_t n, const char **why)
    __attribute__((warn_unused_result));
/* The same, held back (db_defer) to go with the transaction's next round
 * trip, usually its COMMIT; the statement checks that every row went in. A
 * failure to write then fails that step. Memory: written at once. */
int outbox_hold_many(db_t *tx, const outbox_msg_t *msgs, size_t n, const char **why)
    __attribute__((warn_unused_result));

/* For asynchronous writers (the gateway): validates m exactly as
 * outbox_append does, assigns the id and fills the OUTBOX_PARAMS text
 * parameters of outbox_sql_append (borrowing m's strings; numbers in p->buf).
 * The caller runs the statement inside its own transaction. */
#define OUTBOX_PARAMS 11
typedef struct outbox_params {
    char id[UUID_STR_LEN];
    const char *values[OUTBOX_PARAMS];
    char part[8], ts[24];
} outbox_params_t;
int outbox_params(const outbox_msg_t *m, outbox_params_t *p, const char **why) __attribute__((warn_unused_result));
/* outbox_append with parameters prepared by outbox_params (the id is kept). */
int outbox_append_params(db_t *tx, const outbox_msg_t *m, const outbox_params_t *p, const char **why)
    __attribute__((warn_unused_result));
extern const char outbox_sql_append[];
extern const char outbox_sql_append_notify[];
/* outbox_sql_append for many messages in one statement: each of the
 * OUTBOX_PARAMS parameters an array of that parameter's values, in
 * outbox_params' order ($1 uuid[], $2 bigint[], $3-$6 text[], $7 bigint[],
 * $8-$10 text[], $11 boolean[]: sole); a (tenant, aggregate)'s messages take
 * their sequence numbers in array order.
 * One row: how many went in. */
extern const char outbox_sql_append_many[];
/* The element types of outbox_sql_append_many's arrays (core/pgarray.h OIDs). */
extern const uint32_t outbox_param_oids[OUTBOX_PARAMS];
extern const char outbox_sql_append_many_notify[];
/* Whether this append should carry the drainer's wake-up hint (throttled per
 * process). outbox_append and its kin send it after their transaction's
 * commit (outbox_sql_hint, db_after_commit); the gateway's asynchronous
 * writers put it in their statement (the _notify variants). */
bool outbox_notify_due(void);
extern const char outbox_sql_hint[];

/* Drain side. Oldest rows first from the given partitions.
 * Not in a transaction. *rows owned by the caller (outbox_rows_free). */
int outbox_fetch(db_t *db, const int *parts, size_t nparts, size_t limit, outbox_row_t **rows, size_t *n)
    __attribute__((warn_unused_result));
/* Removes published rows (keeping them in bus.outbox_published when archive). */
int outbox_mark_published(db_t *db, const outbox_row_t *rows, size_t n, bool archive)
    __attribute__((warn_unused_result));
/* The same by position. */
int outbox_remove(db_t *db, const int64_t *pos, size_t n, bool archive) __attribute__((warn_unused_result));

/* The drainer's overlapped step: in one round trip, remove the rows already
 * published (done) and fetch the next oldest rows of the given partitions,
 * leaving out the rows in flight (skip: fetched, being published, not yet
 * removed; ascending positions). PostgreSQL: both statements go out in
 * pipeline mode as one implicit transaction and outbox_step_send returns
 * without waiting, so the caller can publish meanwhile; the connection must
 * not be used again before outbox_step_wait. Memory: done at once.
 * The fetched rows borrow their strings from the step's result. */
typedef struct outbox_step {
    outbox_row_t *rows; /* after outbox_step_wait: oldest first; owned by the step */
    size_t n;
    bool removed; /* the done rows are gone from bus.outbox */
    /* private */
    void *res;   /* PGresult the rows point into (PostgreSQL) */
    bool copies; /* rows own their strings (memory) */
    int nq;      /* statements in flight (PostgreSQL) */
    int rc;      /* memory: the outcome of the step */
} outbox_step_t;
int outbox_step_send(db_t *db, outbox_step_t *st, const int64_t *done, size_t ndone, bool archive, const int *parts,
                     size_t nparts, const int64_t *skip, size_t nskip, size_t limit)
    __attribute__((warn_unused_result));
/* Collects the answers. 0: st->rows/n/removed are set. -1: the connection
 * failed or a statement was refused; nothing was fetched and nothing
 * removed (check the connection). Either way outbox_step_free releases st. */
int outbox_step_wait(db_t *db, outbox_step_t *st) __attribute__((warn_unused_result));
void outbox_step_free(outbox_step_t *st);
/* A row that cannot be published: count the attempt, or after too many move
 * it to bus.outbox_dead with the error. */
int outbox_mark_failed(db_t *db, const outbox_row_t *row, const char *error, bool dead)
    __attribute__((warn_unused_result));
/* Deletes archived rows older than retain_s among the limit lowest positions
 * (outbox.c says why); *deleted set. */
int outbox_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted) __attribute__((warn_unused_result));
/* Pending rows and the age of the oldest (ms, 0 when none). */
int outbox_stats(db_t *db, uint64_t *pending, int64_t *oldest_ms, uint64_t *dead) __attribute__((warn_unused_result));
void outbox_rows_free(outbox_row_t *rows, size_t n);

/* Memory store only: the number of rows ever appended (tests). */
uint64_t outbox_memory_appended(db_t *db);

#endif
