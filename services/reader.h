/* services/reader.h: the runtime's read-ahead: one thread with its own Redis
 * connection that reads a consumer's new entries (XREADGROUP ">") and parses
 * their payloads while the runtime applies the batch before, so Redis, the
 * entry decoding and JSON parsing overlap the PostgreSQL transaction instead
 * of adding to it.
 *
 * One request at a time: reader_request() starts a read, reader_take() waits
 * for it and hands over its entries. Entries a read returns are in the
 * consumer's pending list from then on, whether or not they are ever taken;
 * the runtime's pending-list scan and the inbox cover what a dropped read left.
 * Owns: its thread, its bus connection, the entries and payloads of the
 * read in hand until they are taken, and the acknowledgements handed to it. */
#ifndef ECOM_SVC_READER_H
#define ECOM_SVC_READER_H

#include "bus/bus.h"
#include "core/json.h"

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

typedef struct svc_reader svc_reader_t;

/* The parsed payloads of a taken batch, parallel to its messages: payload[i]
 * is NULL for a missing or bad entry, when the payload did not parse (then
 * error[i] says why; static or owned by the batch until the next take), and
 * for every payload of a validate_only reader. */
typedef struct reader_parsed {
    json_object **payload; /* owned by the taker: json_object_put each */
    const char **error;
    size_t n, cap;
} reader_parsed_t;

/* Connects to redis_url and starts the thread. skip_types (NULL-terminated,
 * borrowed for the reader's life; may be NULL): types whose payload is not
 * parsed (the service acknowledges them unread), payload[i] NULL with no
 * error. validate_only: payloads are checked (json_validate), not parsed:
 * payload[i] is NULL, error[i] says why one is not JSON. NULL (with *err,
 * caller frees) when Redis cannot be reached. */
svc_reader_t *reader_start(const char *redis_url, const char *group, const char *consumer,
                           const char *const *skip_types, bool validate_only, char **err);
/* Stops the thread (waiting for a read in flight) and closes the connection;
 * a read not taken is dropped (its entries stay pending). NULL is a no-op. */
void reader_stop(svc_reader_t *r);

/* Starts a read of new entries of ns streams (copied), at most count per
 * stream, blocking up to block_ms. Only when reader_outstanding() is false. */
void reader_request(svc_reader_t *r, const char *const *streams, size_t ns, size_t count, int block_ms);
/* A read was requested and not taken yet. */
bool reader_outstanding(const svc_reader_t *r);
/* Waits for the outstanding read and hands over its entries in out and their
 * parsed payloads in parsed, which stay owned by the reader: what out and
 * parsed held before goes back to it and is freed on its thread (the caller
 * borrows payloads; it must not put them). 0, or -1 when the read failed, or
 * the top-up read made here when the read came back a while ago (out and
 * parsed are then empty; entries a lost answer delivered are in the
 * consumer's pending list; the reader has reconnected or will try again at
 * the next request). */
int reader_take(svc_reader_t *r, bus_batch_t *out, reader_parsed_t *parsed);
/* Hands over the acknowledgement of n entries of stream (ids: owned by the
 * reader from now on, freed once sent). It goes (XACK) on the reader's
 * connection, off the applying thread, in the same round trip as the next
 * read: the thread's next read-ahead, or the top-up a take makes. On its
 * own, within 2 ms, when no read is requested at the time, when a read in
 * flight came back and no take or request followed, after reader_idle
 * (the runtime waits instead of reading), or at once when reader_wait_acks
 * asks. A failed one is tried again with the next read, and what is still
 * queued at reader_stop goes out then. Until it is sent the entries stay
 * pending: one never acknowledged is delivered again, and the inbox skips
 * it. */
void reader_ack(svc_reader_t *r, const char *stream, char (*ids)[BUS_ID_MAX], size_t n);
/* The caller is about to wait without a read (a linger, a backoff, a
 * standby): acknowledgements handed over go within 2 ms, not with a read
 * that may be long in coming. NULL is a no-op. */
void reader_idle(svc_reader_t *r);
/* Waits (at most max_ms) until the acknowledgements handed over are sent
 * (those whose last send failed are tried once more),
 * e.g. before the runtime reads its own pending entries, which would deliver
 * the unacknowledged ones again. 0, or -1 when some are still queued. */
int reader_wait_acks(svc_reader_t *r, int64_t max_ms);
/* Puts every payload left in parsed and frees its arrays. */
void reader_parsed_free(reader_parsed_t *p);

#endif
