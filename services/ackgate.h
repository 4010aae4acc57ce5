/* services/ackgate.h: acknowledgements that wait for their transaction to be
 * durable.
 *
 * With it, a service's transactions commit asynchronously
 * (synchronous_commit = off, db_commit_async): a commit is visible, and its
 * effects flow on, without waiting for the WAL flush, which comes moments
 * later. An entry must not be acknowledged before then, or a server crash
 * could lose its effects after Redis forgot it. The runtime hands each
 * batch's acknowledgements here with the time the batch began; the gate's
 * thread passes them on (pass(), e.g. to the read-ahead) once a synchronous
 * commit of its own has come back, made by the backend of a connection
 * opened before the batch began: a backend does not outlive a crash of its
 * server, so the batch's commit is before that commit in the same WAL, which
 * is flushed in order. One such commit covers every acknowledgement handed
 * in before it (a group flush); it is made while the runtime applies the
 * next batches, at most every 20 ms.
 *
 * Acknowledgements the gate cannot vouch for (its connection is newer than
 * the batch or broke, the flush failed, or ran on another backend: a pooler
 * in between) are dropped and counted (ackgate_dropped): their entries stay
 * pending, the runtime reads its pending list again, and the inbox skips
 * what did survive. After a failed flush the gate stays down for a while
 * (100 ms, doubling up to 30 s until a flush succeeds); meanwhile
 * ackgate_ready is false and the runtime commits synchronously.
 * Owns: its thread, its PostgreSQL connection and the acknowledgements it
 * holds. */
#ifndef ECOM_SVC_ACKGATE_H
#define ECOM_SVC_ACKGATE_H

#include "bus/bus.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ackgate ackgate_t;

/* Takes ids (owned from then on) of n entries of stream, made durable. */
typedef void (*ackgate_pass_fn)(void *arg, const char *stream, char (*ids)[BUS_ID_MAX], size_t n);

/* Starts the thread, which connects to url at once and again after a
 * failure (with backoff). group labels its metrics. NULL when the thread
 * cannot start (the runtime then commits synchronously). */
ackgate_t *ackgate_start(const char *url, const char *group, ackgate_pass_fn pass, void *arg);
/* Passes on what it can vouch for (one last flush), drops the rest, stops
 * the thread and closes the connection. NULL is a no-op. */
void ackgate_stop(ackgate_t *g);

/* The clock batches are stamped with (monotonic µs; never the tests' fake
 * clock, which stands still: a batch must be seen to begin after a connection). */
int64_t ackgate_now_us(void);
/* The gate has a connection opened before `at` (ackgate_now_us): a batch
 * begun now can commit asynchronously, its acknowledgements will pass. */
bool ackgate_ready(ackgate_t *g, int64_t at);
/* Hands over the acknowledgement of n entries of stream (ids owned by the
 * gate from now on), applied by a batch that began at began_us. Waits while
 * the gate holds HELD_MAX batches (a flush that hangs holds the runtime
 * back, as a synchronous commit would). */
void ackgate_put(ackgate_t *g, const char *stream, char (*ids)[BUS_ID_MAX], size_t n, int64_t began_us);
/* Waits (at most max_ms) until everything handed over was passed on or
 * dropped. 0, or -1 when some are still held. */
int ackgate_wait(ackgate_t *g, int64_t max_ms);
/* Makes the server's WAL durable up to now on c (outside a transaction):
 * the gate's flush, for a caller that acknowledges on its own what rests on
 * an earlier asynchronous commit (a batch of copies only writes nothing
 * that would make its own commit wait). 0, or -1. */
int ackgate_flush_on(PGconn *c);
/* Acknowledgements dropped since the last call (their entries stay pending). */
uint64_t ackgate_dropped(ackgate_t *g);

#endif
