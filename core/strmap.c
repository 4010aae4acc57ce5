/* core/strmap.c: see strmap.h. */
#include "core/strmap.h"

#include "core/alloc.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char tomb;
#define TOMB (&tomb)

static size_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 29));
}

void strmap_init(strmap_t *m)
{
    memset(m, 0, sizeof *m);
}

void strmap_free(strmap_t *m)
{
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key && m->slots[i].key != TOMB)
            free(m->slots[i].key);
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static strmap_slot_t *find(const strmap_t *m, const char *key, size_t klen, size_t h)
{
    if (!m->cap)
        return NULL;
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        strmap_slot_t *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMB && s->hash == h && s->klen == klen && memcmp(s->key, key, klen) == 0)
            return s;
    }
}

static void grow(strmap_t *m)
{
    size_t ncap = m->cap ? m->cap * 2 : 16;
    if (m->live * 2 < m->cap)
        ncap = m->cap; /* mostly tombstones: rebuild at the same size */
    strmap_slot_t *old = m->slots;
    size_t ocap = m->cap;
    m->slots = xcalloc(ncap, sizeof *m->slots);
    m->cap = ncap;
    m->used = m->live;
    for (size_t i = 0; i < ocap; i++) {
        if (!old[i].key || old[i].key == TOMB)
            continue;
        size_t j = old[i].hash & (ncap - 1);
        while (m->slots[j].key)
            j = (j + 1) & (ncap - 1);
        m->slots[j] = old[i];
    }
    free(old);
}

void **strmap_get(strmap_t *m, const char *key, size_t klen)
{
    strmap_slot_t *s = find(m, key, klen, hash_bytes(key, klen));
    return s ? &s->val : NULL;
}

void **strmap_put(strmap_t *m, const char *key, size_t klen, bool *created)
{
    size_t h = hash_bytes(key, klen);
    strmap_slot_t *s = find(m, key, klen, h);
    if (s) {
        if (created)
            *created = false;
        return &s->val;
    }
    if ((m->used + 1) * 4 >= m->cap * 3)
        grow(m);
    size_t i = h & (m->cap - 1);
    while (m->slots[i].key && m->slots[i].key != TOMB)
        i = (i + 1) & (m->cap - 1);
    s = &m->slots[i];
    if (!s->key)
        m->used++;
    s->key = xstrndup(key, klen);
    s->klen = klen;
    s->hash = h;
    s->val = NULL;
    m->live++;
    if (created)
        *created = true;
    return &s->val;
}

bool strmap_del(strmap_t *m, const char *key, size_t klen, void **old)
{
    strmap_slot_t *s = find(m, key, klen, hash_bytes(key, klen));
    if (!s)
        return false;
    if (old)
        *old = s->val;
    free(s->key);
    s->key = TOMB;
    s->val = NULL;
    m->live--;
    return true;
}

bool strmap_next(const strmap_t *m, size_t *i, const char **key, size_t *klen, void **val)
{
    for (; *i < m->cap; (*i)++) {
        strmap_slot_t *s = &m->slots[*i];
        if (s->key && s->key != TOMB) {
            *key = s->key;
            if (klen)
                *klen = s->klen;
            if (val)
                *val = s->val;
            (*i)++;
            return true;
        }
    }
    return false;
}
