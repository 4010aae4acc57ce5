/* inbox/inbox.h: the consumer inbox: which message ids each consumer group has
 * applied. Recording happens inside the handler's transaction, so an id is
 * recorded exactly when the handler's effects commit; a second delivery finds
 * it and is skipped. PostgreSQL table bus.inbox, or a memory table.
 * Owns: nothing the caller sees. */
#ifndef ECOM_INBOX_H
#define ECOM_INBOX_H

#include "core/db.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Records one id inside the open transaction: 1 = new, 0 = already applied,
 * -1 = storage error. */
int inbox_record(db_t *tx, const char *group, const char *msg_id) __attribute__((warn_unused_result));
/* Records n ids at once; is_new[i] tells which were new. 0 or -1. */
int inbox_record_batch(db_t *tx, const char *group, const char *const *ids, size_t n, bool *is_new)
    __attribute__((warn_unused_result));
/* Records n ids expected to be new with a plain INSERT, which costs
 * PostgreSQL about half of the ON CONFLICT form. 0 = all recorded; 1 = one
 * was recorded already (or twice in ids): the transaction is then aborted,
 * and the caller rolls back and uses inbox_record_batch; -1 = storage error. */
int inbox_record_fresh(db_t *tx, const char *group, const char *const *ids, size_t n)
    __attribute__((warn_unused_result));
/* The same insert held back (db_defer) to go with the transaction's next
 * round trip: an id recorded already then fails that step (SQLSTATE 23505,
 * logged at debug level) instead of answering 1 here. Memory: as
 * inbox_record_fresh. 0 = held (PostgreSQL) or all recorded; 1, -1 as
 * inbox_record_fresh. */
int inbox_hold_fresh(db_t *tx, const char *group, const char *const *ids, size_t n)
    __attribute__((warn_unused_result));
/* Ids applied by a group (for status and tests). Not in a transaction. */
int inbox_count(db_t *db, const char *group, uint64_t *n) __attribute__((warn_unused_result));
/* Deletes at most limit ids older than retain_s. Not in a transaction. */
int inbox_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted) __attribute__((warn_unused_result));

#endif
