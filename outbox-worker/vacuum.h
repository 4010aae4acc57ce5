/* outbox-worker/vacuum.h: the drainer's VACUUMs of bus.outbox, on a thread
 * and a PostgreSQL connection of their own.
 *
 * A drainer removes what it published, and its fetches walk the index
 * entries of removed rows until a VACUUM takes them away, so it vacuums the
 * table itself (drain.c says how often). Run on the drainer's connection, a
 * VACUUM stopped the drain for its length once a second under load; here it
 * runs beside the drain, which goes on fetching and publishing (a VACUUM
 * takes no lock that a fetch, an append or a removal waits for). A role
 * that does not own the table may not vacuum it: that is asked once per
 * connection and said once in the log, and autovacuum does the work.
 * Owns: its thread and its connection. */
#ifndef ECOM_OUTBOX_VACUUM_H
#define ECOM_OUTBOX_VACUUM_H

#include "core/metrics.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct outbox_vacuum outbox_vacuum_t;

/* For the database at url; each VACUUM done adds 1 to done (may be NULL).
 * The thread and the connection start with the first VACUUM. */
outbox_vacuum_t *outbox_vacuum_new(const char *url, metric_t *done);
/* Starts a VACUUM and returns true, unless one is running (false). */
bool outbox_vacuum_start(outbox_vacuum_t *v);
/* How long the last VACUUM that finished took, in ms (-1: none yet). */
int64_t outbox_vacuum_last_ms(outbox_vacuum_t *v);
/* Cancels a VACUUM in progress, stops the thread, closes the connection.
 * NULL is a no-op. */
void outbox_vacuum_free(outbox_vacuum_t *v);

#endif
