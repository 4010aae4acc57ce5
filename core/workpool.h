/* core/workpool.h: a fixed set of threads that run the items of a job side
 * by side, for a caller that has several blocking calls to make at once (a
 * payment provider's charges, a batch's webhook deliveries). The threads
 * live as long as the pool, so what a thread keeps between calls (a
 * keep-alive connection) is kept, and a job costs no thread creation.
 *
 * workpool_run(p, n, fn, arg) calls fn(arg, i) once for every i in [0, n):
 * on the calling thread and on as many of the pool's threads as there are
 * items beyond the first, and returns when every call has returned. Several
 * threads may run jobs on one pool at the same time; their items share the
 * pool's threads. A job of one item runs on the caller alone.
 *
 * Owns: its threads (started lazily, at the first job that needs them) and
 * the queue of jobs in progress. */
#ifndef ECOM_WORKPOOL_H
#define ECOM_WORKPOOL_H

#include <stddef.h>

typedef struct workpool workpool_t;
typedef void (*workpool_fn)(void *arg, size_t i);

/* A pool of up to `threads` threads (0: every job runs on its caller), each
 * with a stack of stack_kb KiB (0: 256). */
workpool_t *workpool_new(int threads, size_t stack_kb);
void workpool_run(workpool_t *p, size_t n, workpool_fn fn, void *arg);
/* Stops and joins the threads; no job may be running. NULL is a no-op. */
void workpool_free(workpool_t *p);
/* The threads started so far (tests). */
int workpool_started(const workpool_t *p);

#endif
