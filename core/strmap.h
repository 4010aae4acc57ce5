/* core/strmap.h: a string-keyed hash map (open addressing, linear probing).
 * Keys are copied and owned by the map; values are borrowed pointers or
 * integers the caller manages. Not thread-safe. */
#ifndef ECOM_STRMAP_H
#define ECOM_STRMAP_H

#include <stdbool.h>
#include <stddef.h>

typedef struct strmap_slot {
    char *key; /* NULL empty, STRMAP_TOMB deleted */
    size_t klen;
    size_t hash;
    void *val;
} strmap_slot_t;

typedef struct strmap {
    strmap_slot_t *slots;
    size_t cap, used, live;
} strmap_t;

void strmap_init(strmap_t *m);
void strmap_free(strmap_t *m); /* frees keys, not values */
/* Pointer to the value slot of key, or NULL. */
void **strmap_get(strmap_t *m, const char *key, size_t klen);
/* Pointer to the value slot of key, created (value NULL) when missing; *created set. */
void **strmap_put(strmap_t *m, const char *key, size_t klen, bool *created);
bool strmap_del(strmap_t *m, const char *key, size_t klen, void **old);
/* Iteration: for (size_t i = 0; strmap_next(m, &i, &k, &kl, &v);) */
bool strmap_next(const strmap_t *m, size_t *i, const char **key, size_t *klen, void **val);

#endif
