/* outbox-worker/drain.h: the drain daemon's loop (`ecom outbox-worker`).
 *
 * Each drainer holds a fair share of the OUTBOX_PARTITIONS partitions through
 * PostgreSQL session advisory locks (rebalanced every second, so a dead
 * drainer's partitions are taken over within about a second of its connection
 * closing), reads its partitions' oldest rows, publishes them in one round
 * trip (bus_publish: a failure leaves a prefix of the batch on the stream),
 * then deletes them (or moves them to the published
 * window). After a full batch the next step overlaps the publish: the removal
 * of the batch before and the fetch of the next one (leaving out the rows in
 * flight) go to PostgreSQL in one pipelined round trip before the XADDs and
 * are collected after them; a batch that did not wholly go out discards what
 * was fetched behind it. Published rows are removed before any partition is
 * given up. It wakes on a throttled NOTIFY hint and polls as a fallback:
 * an append inside the throttle's window carries no hint and relies on a
 * later one, which a transaction that commits late (or a hinted one that
 * rolls back) may not have; so after rows came, the drainer looks again
 * without a hint after DRAIN_RECHECK_MS, doubling the wait at each empty look
 * up to poll_ms (drain_idle_wait_ms).
 * A row that cannot be published (Redis takes writes but refuses its XADD
 * or the consumer groups of its stream) is retried with backoff and, after
 * DRAIN_ROW_ATTEMPTS tries, moved to bus.outbox_dead; it never hot-spins.
 * While it waits, its partition waits (the rows behind it keep their order)
 * and the drainer's other partitions are published as before.
 * A Redis that refuses every write (-OOM, -MISCONF, -READONLY, ...; see
 * bus_writable) is waited for like one that is down: no attempt is counted.
 * The holder of partition 0 also trims streams below every consumer
 * group's position, every trim_interval_ms, and cleans the published window
 * as often, on a thread and connection of its own (core/janitor.h), chunk
 * after chunk until it is caught up.
 * In memory mode it moves rows from the memory outbox to the memory bus.
 * Owns: its database and bus handles, and the cleanup's thread. */
#ifndef ECOM_DRAIN_H
#define ECOM_DRAIN_H

/* Advisory lock class of the partitions (key: the partition number, in the
 * database of the outbox). Whoever holds a partition's lock is its only
 * publisher: `ecomctl redrive` takes them all. */
#define DRAIN_LOCK_PARTITION 1162104653 /* 'ECOM' */

#include "bus/bus.h"
#include "core/db.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DRAIN_ROW_ATTEMPTS 10
#define DRAIN_RECHECK_MS 4 /* twice the appenders' hint throttle (outbox.c) */

typedef struct drain_opts {
    const char *database_url; /* NULL or "": memory (mem must be set) */
    memstore_t *mem;
    const char *redis_url; /* NULL or "": memory (membus must be set) */
    membus_t *membus;
    size_t batch;
    int poll_ms;
    int64_t retain_s; /* 0: delete published rows; else keep them this long */
    int64_t trim_interval_ms;
    size_t vacuum_rows; /* rows published between VACUUMs of bus.outbox (0: DRAIN_VACUUM_ROWS) */
    /* Optional: the consumer groups of a topic. Before the first publish to a
     * topic the drainer creates them, so trimming can never pass a group that
     * has not been created yet (a service that discovers streams late). */
    int (*groups_for_topic)(const char *topic, const char **out, int max);
} drain_opts_t;

/* How long the drainer waits for a hint after `empty` fetches in a row came
 * back empty since the last rows: DRAIN_RECHECK_MS doubled `empty` times, at
 * most poll_ms. */
int drain_idle_wait_ms(int empty, int poll_ms);

/* Runs until *stop becomes true; finishes the batch in hand first. 0 on a
 * clean stop. */
int drain_run(const drain_opts_t *o, atomic_bool *stop);

#endif
