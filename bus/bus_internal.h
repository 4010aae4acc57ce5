/* bus/bus_internal.h: what the two bus backends share, private to bus/.
 *
 * A bus_t is a vtable of operations plus the state of one backend: a hiredis
 * connection and the URL to reconnect with (bus_redis.c), or the shared
 * membus_t it views (bus_memory.c). bus.c checks arguments and dispatches.
 * Also here: stream entry ids as numbers, and decoding entry fields into a
 * bus_msg_t, so both backends parse and compare ids and report bad entries
 * the same way.
 * Owns: nothing beyond what struct bus documents. */
#ifndef ECOM_BUS_INTERNAL_H
#define ECOM_BUS_INTERNAL_H

#include "bus/bus.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A stream entry id "<ms>-<seq>", compared numerically. */
typedef struct bus_id {
    uint64_t ms;
    uint64_t seq;
} bus_id_t;

/* The operations of a backend; arguments have been checked by bus.c. */
typedef struct bus_ops {
    bool memory;
    void (*close)(bus_t *b); /* releases the backend state, not b itself */
    int (*ensure)(bus_t *b);
    int (*ping)(bus_t *b);
    int (*writable)(bus_t *b);
    int (*publish)(bus_t *b, const envelope_t *msgs, size_t n, char (*ids_out)[BUS_ID_MAX]);
    int (*group_create)(bus_t *b, const char *stream, const char *group);
    /* history_after NULL: new entries (">"); else a history read of the consumer's
     * own pending entries with ids after it (a valid id, "0" from the start) */
    int (*read)(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                const char *history_after, size_t count, int block_ms, bus_batch_t *out);
    int (*ack)(bus_t *b, const char *stream, const char *group, const char *const *ids, size_t n);
    /* Optional: a read of new entries (as read with history_after NULL) with
     * acknowledgements sent first in the same round trip; without it bus.c
     * sends them with ack, then reads. */
    int (*read_acking)(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                       size_t count, int block_ms, bus_acks_t *acks, size_t nacks, bus_batch_t *out);
    int (*reclaim)(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t min_idle_ms,
                   size_t count, bus_batch_t *out);
    int (*pending)(bus_t *b, const char *stream, const char *group, bus_pending_entry_t *out, size_t max, size_t *n);
    int (*group_others)(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t active_ms,
                        uint64_t *pending, uint64_t *active);
    int (*set_deliveries)(bus_t *b, const char *stream, const char *group, const char *consumer,
                          const char (*ids)[BUS_ID_MAX], const uint32_t *counts, size_t n);
    /* fields: nfields name/value pairs, the dead-letter record built by bus.c */
    int (*add_fields)(bus_t *b, const char *stream, const char *const *fields, size_t nfields);
    /* Atomically: adds fields to `to` and deletes entry `id` of `from`, only
     * while that entry is still there. 0 moved, 1 not there (nothing added),
     * -1 failed (nothing changed, or unknown when the connection broke). */
    int (*move_fields)(bus_t *b, const char *from, const char *id, const char *to, const char *const *fields,
                       size_t nfields);
    int (*trim)(bus_t *b, const char *stream, uint64_t *trimmed);
    int (*stream_info)(bus_t *b, const char *stream, bus_stream_info_t *out);
    int (*list_streams)(bus_t *b, char ***names, size_t *n);
    int (*range)(bus_t *b, const char *stream, bus_id_t start, bus_id_t end, size_t count, bus_entry_t **out,
                 size_t *n);
    int (*delete_entries)(bus_t *b, const char *stream, const char *const *ids, size_t n);
    int (*delete_stream)(bus_t *b, const char *stream);
} bus_ops_t;

struct bus {
    const bus_ops_t *ops;
    /* Redis backend */
    redisContext *rc; /* owned; NULL while disconnected (bus_ensure reconnects) */
    int64_t timeout_ms; /* rc's socket timeout */
    char *url;        /* owned */
    struct reply_arena *arena; /* owned; the replies of stream reads (bus_redis.c) */
    char guard_key[64];        /* where a publish's parts leave their tokens (bus_redis.c) */
    uint64_t publishes;        /* publishes so far: each one's tokens are its own */
    /* memory backend */
    membus_t *mb; /* borrowed, shared with other handles */
};

/* bus.c: allocates a handle for a backend (owned by the caller; bus_close frees it). */
bus_t *bus_new(const bus_ops_t *ops);

/* "<ms>-<seq>" (a bare "<ms>" too when ms_only_seq is not NULL: the sequence is then
 * *ms_only_seq). 0 or -1. */
int bus_id_parse(const char *s, size_t len, const uint64_t *ms_only_seq, bus_id_t *out);
int bus_id_cmp(bus_id_t a, bus_id_t b);
void bus_id_format(bus_id_t id, char out[BUS_ID_MAX]);
/* The id right after id ("<ms>-<seq+1>"); the largest id stays as it is. */
bus_id_t bus_id_next(bus_id_t id);

#define BUS_ID_MIN ((bus_id_t){0, 0})
#define BUS_ID_MAX_VALUE ((bus_id_t){UINT64_MAX, UINT64_MAX})

/* Fills m->env from an entry's fields; on failure sets m->bad and m->why (m->env
 * keeps what could be decoded, cleared with the batch). */
void bus_msg_decode(bus_msg_t *m, const char *const *names, const size_t *nlens, const char *const *vals,
                    const size_t *vlens, size_t n);

#endif
