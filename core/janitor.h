/* core/janitor.h: a process's retention cleanup (old inbox ids, the
 * outbox's re-drive window, the gateway's expired records), on a thread and
 * a PostgreSQL connection of its own, or, in development, a handle on the
 * memory store (the same cleanups keep it from growing without bound).
 *
 * A cleanup deletes at most a chunk of rows per statement. On the loop that
 * moves messages, one chunk a pass stalled that loop for the statement's
 * time (20-27 ms for the drainer's, reading its 5,000 rows), and one chunk
 * every interval could not keep up with a steady flow: 5,000 rows every
 * 10 s is 500 rows/s, while the shop flow publishes 2,000 a second. The
 * janitor runs a pass every `every_ms`, starting at once; a pass deletes
 * chunk after chunk while they come back full, resting between them four
 * times as long as a chunk took (at most a fifth of a core), until a chunk
 * comes back short: the table is caught up.
 *
 * Owns: its thread and its connection (opened at the first pass, opened
 * again after a failure) or memory-store handle. */
#ifndef ECOM_JANITOR_H
#define ECOM_JANITOR_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "core/db.h"

/* One statement's cleanup: deletes up to limit rows older than retain_s,
 * sets *deleted. 0 or -1. */
typedef int (*janitor_fn)(db_t *db, int64_t retain_s, size_t limit, size_t *deleted);

typedef struct janitor_opts {
    const char *database_url; /* PostgreSQL; when empty, memory (below) */
    memstore_t *memory;       /* the memory store (borrowed); the janitor does nothing without either */
    const char *app_name;     /* the connection's application_name */
    const char *what;         /* the table, for the log and the metric's label */
    janitor_fn cleanup;
    int64_t retain_s;
    size_t chunk;          /* rows per statement (0: 5000) */
    int every_ms;          /* between passes */
    const atomic_bool *on; /* chunks are deleted only while *on (NULL: always);
                              borrowed until janitor_stop */
} janitor_opts_t;

typedef struct janitor janitor_t;

/* Starts the thread (options copied). NULL when there is neither a
 * database_url nor a memory store, or the thread could not start (logged). */
janitor_t *janitor_start(const janitor_opts_t *o);
/* Stops and joins the thread. A cleanup call in progress is cancelled, each
 * of its statements in turn (one waiting on a lock would otherwise hold the
 * process's shutdown until the lock is free; its chunk is deleted at a later
 * pass), and none starts after; a connection attempt in progress is waited
 * for (at most its 5 s timeout). NULL is a no-op. */
void janitor_stop(janitor_t *j);
/* Rows deleted so far, and passes ended, those *on kept idle included (tests). */
uint64_t janitor_deleted(const janitor_t *j);
uint64_t janitor_passes(const janitor_t *j);

#endif
