/* bus/bus.h: the message bus, one interface over Redis Streams and memory.
 *
 * Streams are named "ecom:<topic>"; each service is a consumer group; failed
 * messages go to "ecom:dlq:<group>", and back from there to "ecom:replay:<group>",
 * which only that group reads. The memory backend (membus_t, shared by all
 * threads of one process) keeps the Redis semantics the runtime depends on:
 * consumer groups starting at the first entry, pending entries with owner, idle
 * time and delivery count, history reads of a consumer's own pending entries,
 * XAUTOCLAIM-style reclaim (including entries whose payload was trimmed),
 * acknowledged-only trimming, and blocking reads. tests/contract/test_bus.c runs
 * one suite against both.
 *
 * A bus_t is one thread's handle (a blocking hiredis connection, or a view of a
 * membus_t). All functions return 0 on success and -1 on failure (logged).
 * A failed publish may have appended a prefix of the batch, never an entry
 * without the ones before it (Redis: scripts of up to 128 XADDs, each part
 * run only if the one before went in whole); publishing the batch again then
 * appends copies after it, which keeps every aggregate's order for a consumer
 * whose inbox skips what it applied.
 * Owns: the connection, and every message in a bus_batch_t (bus_batch_clear). */
#ifndef ECOM_BUS_H
#define ECOM_BUS_H

#include "bus/envelope.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BUS_ID_MAX 48 /* "<ms>-<seq>" */
#define BUS_STREAM_MAX 160

typedef struct bus bus_t;
typedef struct membus membus_t;

typedef struct bus_msg {
    char entry_id[BUS_ID_MAX]; /* stream entry id */
    char stream[BUS_STREAM_MAX];
    envelope_t env;      /* valid when !missing && !bad */
    bool missing;        /* pending entry whose payload was trimmed or deleted */
    bool bad;            /* entry fields failed to decode; why says how */
    const char *why;     /* static text for bad entries */
    uint32_t deliveries; /* delivery count, when the read reports it (0 = unknown) */
} bus_msg_t;

typedef struct bus_batch {
    bus_msg_t *msgs;
    size_t n, cap;
} bus_batch_t;

typedef struct bus_group_info {
    char name[64];
    uint64_t pending; /* entries delivered, not acknowledged */
    int64_t lag;      /* entries not yet delivered to the group; -1 unknown */
    char last_delivered[BUS_ID_MAX];
    uint64_t consumers;
} bus_group_info_t;

typedef struct bus_stream_info {
    uint64_t length;
    char first_id[BUS_ID_MAX];
    char last_id[BUS_ID_MAX];
    bus_group_info_t groups[16];
    size_t ngroups;
} bus_stream_info_t;

typedef struct bus_pending_entry {
    char entry_id[BUS_ID_MAX];
    char consumer[64];
    int64_t idle_ms;
    uint32_t deliveries;
} bus_pending_entry_t;

/* A stream entry as stored, for tools and tests (bus_range). */
typedef struct bus_entry {
    char entry_id[BUS_ID_MAX];
    size_t nfields; /* name/value pairs */
    char **fields;  /* 2 * nfields strings: name, value, name, value, ... (owned) */
} bus_entry_t;

membus_t *membus_new(void);
void membus_free(membus_t *mb);
/* Tools and tests: appends an entry with arbitrary fields (nfields name/value
 * pairs: fields[2i] is a name, fields[2i+1] its value) to a memory stream,
 * creating it, as a raw XADD would; this is how a test makes an entry that does
 * not decode. */
int membus_add_raw(membus_t *mb, const char *stream, const char *const *fields, size_t nfields)
    __attribute__((warn_unused_result));

bus_t *bus_open_redis(const char *url, char **err);
bus_t *bus_open_memory(membus_t *mb);
void bus_close(bus_t *b);
bool bus_is_memory(const bus_t *b);
/* Redis: reconnects when the connection broke. 0 when usable. */
int bus_ensure(bus_t *b) __attribute__((warn_unused_result));
/* Checks the connection (PING). */
int bus_ping(bus_t *b) __attribute__((warn_unused_result));
/* Whether the bus takes writes now: 0, or -1 when it is down or refuses them
 * as a whole. Redis answers PING while it refuses every write (-OOM at
 * maxmemory, -MISCONF after a failed save, -READONLY on a replica, -LOADING,
 * -BUSY); this writes a small key with an expiry. A publish that fails while
 * the bus is writable failed for its entries' sake (e.g. a key of another
 * type). */
int bus_writable(bus_t *b) __attribute__((warn_unused_result));

/* Appends n envelopes to their topics' streams, in array order; on failure a
 * prefix of them, or none (see above).
 * On success ids_out (optional, n entries) receives the stream entry ids. */
int bus_publish(bus_t *b, const envelope_t *msgs, size_t n, char (*ids_out)[BUS_ID_MAX])
    __attribute__((warn_unused_result));

/* Stream entry ids "<ms>-<seq>" in order: < 0, 0, > 0 (an unparsable id
 * sorts first). */
int bus_entry_id_cmp(const char *a, const char *b);

/* Creates the group at the start of the stream (creating the stream) if missing. */
int bus_group_create(bus_t *b, const char *stream, const char *group) __attribute__((warn_unused_result));

/* XREADGROUP over ns streams. own_pending: the consumer's own pending entries
 * from the start (history read, no blocking); else new entries, blocking up to
 * block_ms (0 = no block). Appends to out, at most count per stream. */
int bus_read(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns, bool own_pending,
             size_t count, int block_ms, bus_batch_t *out) __attribute__((warn_unused_result));

/* The consumer's own pending entries of one stream with ids after after_id
 * ("0" = from the start), oldest first, at most count; deliveries filled.
 * A history read: never blocks, and counts as a delivery. */
int bus_read_pending(bus_t *b, const char *group, const char *consumer, const char *stream, const char *after_id,
                     size_t count, bus_batch_t *out) __attribute__((warn_unused_result));

/* Acknowledgements of one stream's entries, sent along with a read
 * (bus_read_acking); done says whether they went through. */
typedef struct bus_acks {
    const char *stream;
    const char (*ids)[BUS_ID_MAX];
    size_t n;
    bool done;
} bus_acks_t;

/* bus_read of new entries (own_pending false), with acknowledgements sent
 * first, in the same round trip on Redis (the XACKs pipelined ahead of the
 * XREADGROUP, so a blocking read costs no extra trip for them). Each
 * acks[i].done is set when acks[i] went through; the return is the read's. */
int bus_read_acking(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                    size_t count, int block_ms, bus_acks_t *acks, size_t nacks, bus_batch_t *out)
    __attribute__((warn_unused_result));

/* bus_ack over ids kept side by side (a batch's entry ids, one allocation). */
int bus_ack_ids(bus_t *b, const char *stream, const char *group, const char (*ids)[BUS_ID_MAX], size_t n)
    __attribute__((warn_unused_result));
int bus_ack(bus_t *b, const char *stream, const char *group, const char *const *ids, size_t n)
    __attribute__((warn_unused_result));

/* XAUTOCLAIM from the start of the PEL: entries idle >= min_idle_ms move to
 * consumer (delivery count +1) and are appended to out; entries whose payload
 * is gone are appended with missing=true (Redis 7 has already removed them
 * from the PEL; memory does the same). At most count entries. */
int bus_reclaim(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t min_idle_ms,
                size_t count, bus_batch_t *out) __attribute__((warn_unused_result));

/* Sets the delivery counts of the consumer's own pending entries ids[i] to
 * counts[i], atomically (Redis: a script, XCLAIM <id> RETRYCOUNT <count>
 * JUSTID; the idle time starts again). An entry no longer pending, or that
 * another consumer has claimed meanwhile, is left as it is. The service runtime takes back the count of a delivery that
 * was no attempt (an entry read and left waiting, an attempt put off), so that the count goes on meaning "deliveries
 * that may have ended a worker". */
int bus_set_deliveries(bus_t *b, const char *stream, const char *group, const char *consumer,
                       const char (*ids)[BUS_ID_MAX], const uint32_t *counts, size_t n)
    __attribute__((warn_unused_result));

/* Pending entries of a group (oldest first), at most max. */
int bus_pending(bus_t *b, const char *stream, const char *group, bus_pending_entry_t *out, size_t max, size_t *n)
    __attribute__((warn_unused_result));
/* What the group's consumers other than consumer do: *pending, how many
 * entries they hold (Redis: XPENDING's summary); *active, how many of them
 * read or claimed within active_ms (XINFO CONSUMERS' idle time). Both 0 for
 * a stream or group that does not exist. */
int bus_group_others(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t active_ms,
                     uint64_t *pending, uint64_t *active) __attribute__((warn_unused_result));

/* Appends m to "ecom:dlq:<group>" with reason, deliveries, source stream and
 * entry id. Does not acknowledge (the caller acks after). */
int bus_dead_letter(bus_t *b, const char *group, const bus_msg_t *m, const char *reason)
    __attribute__((warn_unused_result));

/* Trims entries every group has acknowledged (XTRIM MINID ~ below the oldest
 * pending entry and every group's last delivered id). A stream with no group is
 * left alone. *trimmed (optional) receives how many entries went. Redis trims
 * approximately (whole nodes, at most 10000 entries a call): call it periodically. */
int bus_trim(bus_t *b, const char *stream, uint64_t *trimmed) __attribute__((warn_unused_result));

int bus_stream_info(bus_t *b, const char *stream, bus_stream_info_t *out) __attribute__((warn_unused_result));
/* Every "ecom:*" stream (DLQ streams included); *names owned (free each, then the array). */
int bus_list_streams(bus_t *b, char ***names, size_t *n) __attribute__((warn_unused_result));
/* XDEL: removes entries (their pending records stay, payload-less). Tools and tests. */
int bus_delete_entries(bus_t *b, const char *stream, const char *const *ids, size_t n)
    __attribute__((warn_unused_result));
/* XRANGE: up to count entries (0 = all) with start <= id <= end, oldest first,
 * with their raw fields. start and end are "-", "+", "<ms>" or "<ms>-<seq>".
 * For tools (DLQ entries carry error fields no envelope has) and tests.
 * *out is owned: bus_entries_free(*out, *n). */
int bus_range(bus_t *b, const char *stream, const char *start, const char *end, size_t count, bus_entry_t **out,
              size_t *n) __attribute__((warn_unused_result));
void bus_entries_free(bus_entry_t *entries, size_t n);

/* "ecom:replay:<group>": the stream a group's dead letters go back to. Each
 * service reads its own beside its topics' streams and no other group reads
 * it, so a replayed message reaches only the group that failed it (on its
 * topic's stream every group would get it again, and apply it a second time
 * once its inbox no longer holds the id). */
void bus_replay_stream(const char *group, char *buf, size_t cap);
/* "ecom:dlq:<group>": where a group's dead letters wait (bus_dead_letter). */
void bus_dlq_stream(const char *group, char *buf, size_t cap);
/* Sends a dead letter of group (an entry of "ecom:dlq:<group>" as bus_range
 * returns it) back: its envelope fields go to the group's replay stream, the
 * group created there first (from the start, so the entry is delivered even to
 * a service that never read the stream yet), and the entry leaves the DLQ in
 * the same atomic step (a Lua script on Redis): sent and removed, or neither.
 * Returns 0; 1 when the entry holds no valid envelope (*why, static text;
 * nothing sent, the entry stays); 2 when the DLQ no longer holds the entry
 * (another replay took it: nothing sent); -1 when the bus failed (nothing
 * moved, or, when the connection broke mid-call, unknown). */
int bus_replay_dead(bus_t *b, const char *group, const bus_entry_t *dead, const char **why)
    __attribute__((warn_unused_result));
/* Deletes a stream (tests and tools). */
int bus_delete_stream(bus_t *b, const char *stream) __attribute__((warn_unused_result));

bus_msg_t *bus_batch_push(bus_batch_t *bt);
void bus_batch_clear(bus_batch_t *bt); /* frees the messages, keeps the array */
void bus_batch_free(bus_batch_t *bt);

#endif
