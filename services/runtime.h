/* services/runtime.h: the consumer loop every service runs (`ecom service NAME`).
 *
 * A service is a consumer group on the streams of its topics, with a stable
 * consumer name. Each batch is applied in one transaction that first records
 * the message ids in the inbox (a duplicate is skipped and acknowledged; a
 * service with its own record of applied ids, svc_def_t.seen, writes none),
 * then runs the handler, which may write its effects and append outbox rows in
 * the same transaction; entries are acknowledged only after commit. With
 * PostgreSQL and the Redis read-ahead, transactions commit asynchronously
 * (visible at once) and an entry is acknowledged once its commit is durable
 * (services/ackgate.h); a crash that loses a commit leaves its entries
 * pending, to be applied again.
 *
 * Failures: the fast path applies a whole batch at once; if any handler fails,
 * the batch is rolled back and applied again by halves under savepoints (the
 * batch handler on each half, down to single messages; one savepoint per
 * message for a service without a batch handler), so a
 * failing message never sinks the others. A failed message stays pending and
 * is retried with exponential backoff from the consumer's own pending list;
 * later messages of the same aggregate wait behind it (per-aggregate order),
 * messages of other aggregates flow on. After max_attempts failures, a
 * rejection (SVC_REJECT), an unknown type, an unparsable payload or missing
 * envelope fields, the message goes to ecom:dlq:<group> with its reason and
 * delivery count, and is acknowledged. Entries idle in other consumers'
 * pending lists are reclaimed; entries whose payload was trimmed are dropped
 * from the pending list and counted.
 *
 * With PostgreSQL, one consumer per group is active at a time (a session
 * advisory lock: the lease); a standby takes over when the holder's
 * connection closes and claims its pending entries at once. A service whose
 * handlers allow it applies each batch on several connections (lanes), the
 * messages split by aggregate so each aggregate keeps its order; a lane that
 * is still committing when its consumer lost the lease can only race the new
 * holder on the inbox's unique key, which serialises them per message.
 * The runtime's PostgreSQL connections use index scans only
 * (db_index_scans_only): handlers' lookups by arrays of keys run prepared
 * through db_exec_lookup, and a table without an index for a query is still
 * read (a sequential scan is only made costly, not forbidden).
 * The lease holder (in memory, the one consumer) also deletes inbox ids
 * older than inbox_retain_s, on a thread and connection of its own
 * (core/janitor.h).
 * Owns: its database and bus handles, and that cleanup's thread. */
#ifndef ECOM_RUNTIME_H
#define ECOM_RUNTIME_H

#include "bus/bus.h"
#include "core/db.h"
#include "core/json.h"
#include "core/log.h"
#include "core/recent.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SVC_RETRY: failed; counts as an attempt, retried with backoff, DLQ after
 * max_attempts. SVC_REJECT: will never succeed; DLQ now. SVC_DEFER: a
 * dependency is unavailable (e.g. its breaker is open): retried later with
 * backoff (capped at 5 s), not counted as an attempt, never dead-lettered for it. */
typedef enum { SVC_OK = 0, SVC_RETRY = -1, SVC_REJECT = -2, SVC_DEFER = -3 } svc_result_t;

typedef struct svc_ctx {
    db_t *tx;              /* in a transaction */
    const envelope_t *msg; /* borrowed */
    json_object *payload;  /* parsed strictly, borrowed */
    const char *group;
    /* handle() only (batch handlers see envelopes): the stream entry the
     * message came in (borrowed) and its delivery count (0 = unknown) */
    const char *entry_id;
    uint32_t deliveries;
    char error[256]; /* set by a failing handler */
} svc_ctx_t;

typedef struct svc_def {
    const char *group;         /* consumer group = service name */
    const char *const *topics; /* NULL-terminated; NULL = every topic (discovered) */
    const char *const *types;  /* accepted types, NULL-terminated; NULL = all */
    /* Types on its topics the service has nothing to do for (e.g. its own
     * events): acknowledged without a transaction or an inbox row. */
    const char *const *ignored_types;
    svc_result_t (*handle)(svc_ctx_t *c, void *arg);
    /* Optional: applies n new messages at once inside tx. Anything but SVC_OK
     * makes the runtime apply the batch again by halves with handle_batch,
     * down to single messages, which go through handle(). A write a handler
     * holds back (db_defer) that fails at the commit, or at a savepoint's
     * release, counts as that handler's failure. */
    svc_result_t (*handle_batch)(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg);
    void *arg;
    /* Optional: the service keeps its own record of the messages it applied
     * (its read model, under a unique key on the message id), written by its
     * handlers in the same transaction as their effects, and the runtime
     * writes no bus.inbox row for it. handle_batch must fail (not skip) when
     * it meets a message recorded already: the runtime then asks seen() which
     * ones are (seen[i], inside the open transaction, which it sees) and
     * applies the others; handle() runs only for a message seen() did not
     * find. 0 or -1 (storage error). */
    int (*seen)(db_t *tx, const envelope_t *const *msgs, size_t n, bool *seen, void *arg);
    /* The handlers may run on several connections at once (no shared state
     * but the database): the runtime then applies a batch on up to o->lanes
     * connections (one per 64 messages), split by aggregate. */
    bool concurrent;
    /* handle_batch runs a statement before it does anything outside the
     * database (a provider call, a webhook): the runtime may then hold the
     * batch's inbox insert back to go with that statement (one round trip
     * for both; a copy fails that statement, db->held_failed set, and the
     * slow pass tells which). Any failure of that first statement must fail
     * the batch, whatever its SQLSTATE. */
    bool statement_first;
    /* The handlers never read the payloads' documents (they keep the text,
     * or parse the few they need themselves): the runtime checks that each
     * payload is strict JSON (json_validate) without building a document,
     * and hands the handlers NULL payloads. */
    bool payload_unread;
    /* The handlers append events to their messages' own aggregates (the
     * payment service: payment:<id>). A batch applied at once appends them
     * in one outbox_append_many, which takes the aggregates' sequence rows
     * in their key's order; applied again in halves or message by message
     * it would take them half by half, so the runtime then locks the
     * batch's aggregates' rows in that order before anything else, and a
     * writer that appends to them in that order cannot deadlock with it. */
    bool lock_aggregates;
    /* Optional: called on the service's thread once the transaction that
     * applied msgs committed (each applied then, or found applied already),
     * before they are acknowledged; never for a message that failed. For
     * what must follow the commit (a measurement, a cache to drop). */
    void (*committed)(const envelope_t *const *msgs, size_t n, void *arg);
} svc_def_t;

typedef struct svc_opts {
    const char *database_url; /* NULL/"" = memory (mem) */
    memstore_t *mem;
    const char *redis_url; /* NULL/"" = memory (membus) */
    membus_t *membus;
    const char *consumer; /* stable consumer name */
    size_t batch;
    int block_ms;
    int lanes; /* PostgreSQL connections per batch at most when def->concurrent; 0 = 1 */
    int max_attempts;
    int64_t reclaim_idle_ms;
    int64_t backoff_ms;
    int64_t inbox_retain_s;
    /* A read that comes back with fewer than `batch` entries makes the next
     * read wait until linger_ms after it, so that one transaction takes what
     * arrived meanwhile: fewer, larger batches for a service off the
     * requests' path (analytics), its effects that much later. 0 = none. */
    int linger_ms;
} svc_opts_t;

/* The log context of message e (request id, trace id from its traceparent,
 * message id) into lc; trace holds the trace id. For batch handlers, which
 * apply their messages themselves: log_ctx_set(lc) around each one. */
void svc_log_ctx(log_ctx_t *lc, char trace[33], const envelope_t *e);

/* For batch handlers, on the thread that runs handle_batch (not from a
 * pool's thread): the batch failed because of msgs[i] (say so before
 * returning anything but SVC_OK). The runtime then applies the messages
 * before it as one batch, it alone (handle()), and the rest as one batch,
 * instead of halving the batch down to it. Optional; a wrong index only
 * costs the halving it would have saved. */
void svc_batch_failed_at(size_t i);
/* As svc_batch_failed_at, for a failure that is msgs[i]'s own whatever the
 * batch around it (a provider or a receiver that failed or refused, a
 * rejection): r (not SVC_OK) and error are its attempt's result, and the
 * runtime does not run it again alone, which would call out a second time
 * in one attempt. */
void svc_batch_failed_with(size_t i, svc_result_t r, const char *error);

/* On a handler's thread: which application of a batch this is. Every
 * handler call the runtime makes for one batch (the all-at-once call, its
 * halves, single messages: one attempt of each message) sees the same value;
 * the next application (a retry) a new one. Lets a handler remember what
 * failed in this attempt so it does not call out for it again in the same one. */
uint64_t svc_attempt(void);

/* What a call out for a message came to in one attempt: a handler whose
 * batch's halves and single-message pass would otherwise call out again
 * remembers its failures (svc_tried_remember, in a recent_t of
 * sizeof(svc_tried_t) values) and answers from them for the rest of that
 * attempt (svc_tried_recall). attempt is svc_attempt() of the thread that
 * applies the batch; 0 (no attempt) remembers and recalls nothing. */
typedef struct svc_tried {
    uint64_t attempt;
    svc_result_t r; /* the call's result */
    int outcome;    /* the handler's own code for it, when r is SVC_OK */
    char detail[200];
    char error[200];
} svc_tried_t;
void svc_tried_remember(recent_t *mem, uint64_t attempt, const char *key, svc_result_t r, int outcome,
                        const char *detail, const char *error);
bool svc_tried_recall(recent_t *mem, uint64_t attempt, const char *key, svc_tried_t *out);

/* Runs until *stop; finishes the batch in hand. 0 on a clean stop. */
int svc_run(const svc_def_t *def, const svc_opts_t *o, atomic_bool *stop);

#endif
