/* core/recent.h: a bounded memory of recent values by string key. It keeps
 * at most `cap` keys; a new key beyond that pushes out the oldest one, and
 * putting a key again replaces its value in place. Thread-safe.
 *
 * For what a process remembers across a rollback and forgets in time: a
 * provider's answers to its idempotency keys, the outcome of a delivery.
 * Statically initialised (RECENT_INIT); storage is allocated at the first
 * put and given back by recent_clear.
 * Owns: copies of the keys and values. */
#ifndef ECOM_RECENT_H
#define ECOM_RECENT_H

#include "core/strmap.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct recent {
    pthread_mutex_t mu;
    size_t cap;   /* keys kept at most */
    size_t vsize; /* bytes of a value */
    strmap_t map; /* key -> value copy */
    char **ring;  /* keys in arrival order, for eviction */
    size_t next;
    bool ready;
} recent_t;

#define RECENT_INIT(cap_, vsize_) {.mu = PTHREAD_MUTEX_INITIALIZER, .cap = (cap_), .vsize = (vsize_)}

/* Copies key's value into out (vsize bytes): true, or false when not kept. */
bool recent_get(recent_t *r, const char *key, void *out);
/* Keeps a copy of value (vsize bytes) for key. */
void recent_put(recent_t *r, const char *key, const void *value);
/* Forgets everything (tests, shutdown). */
void recent_clear(recent_t *r);

#endif
