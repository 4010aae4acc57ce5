/* core/recent.c: see recent.h. */
#include "core/recent.h"

#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

bool recent_get(recent_t *r, const char *key, void *out)
{
    pthread_mutex_lock(&r->mu);
    void **v = r->ready ? strmap_get(&r->map, key, strlen(key)) : NULL;
    if (v)
        memcpy(out, *v, r->vsize);
    pthread_mutex_unlock(&r->mu);
    return v != NULL;
}

void recent_put(recent_t *r, const char *key, const void *value)
{
    size_t kl = strlen(key);
    pthread_mutex_lock(&r->mu);
    if (!r->ready) {
        strmap_init(&r->map);
        r->ring = xcalloc(r->cap, sizeof *r->ring);
        r->next = 0;
        r->ready = true;
    }
    void **v = strmap_get(&r->map, key, kl);
    if (!v) { /* a new key takes the oldest one's place */
        char *old = r->ring[r->next];
        if (old) {
            void *gone = NULL;
            if (strmap_del(&r->map, old, strlen(old), &gone))
                free(gone);
            free(old);
        }
        r->ring[r->next] = xstrdup(key);
        r->next = (r->next + 1) % r->cap;
        v = strmap_put(&r->map, key, kl, NULL);
        *v = xmalloc(r->vsize);
    }
    memcpy(*v, value, r->vsize);
    pthread_mutex_unlock(&r->mu);
}

void recent_clear(recent_t *r)
{
    pthread_mutex_lock(&r->mu);
    if (r->ready) {
        const char *k;
        void *v;
        for (size_t i = 0; strmap_next(&r->map, &i, &k, NULL, &v);)
            free(v);
        strmap_free(&r->map);
        for (size_t i = 0; i < r->cap; i++)
            free(r->ring[i]);
        free(r->ring);
        r->ring = NULL;
        r->ready = false;
    }
    pthread_mutex_unlock(&r->mu);
}
