/* http-gateway/cache.c: see cache.h.
 *
 * A chained hash table of nodes, one per key. A node holds the current entry (or
 * none while its first fill runs), the fill in progress (owner token and start
 * time, so a fill whose owner vanished can be taken over after lock_timeout_ms),
 * the stale-if-error state and the coalesced waiters. Nodes with an entry are on
 * an LRU list; eviction drops the entry and frees the node unless a fill or a
 * waiter still needs it. */
#include "http-gateway/cache.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/uuid.h"
#include "http-gateway/route.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- SipHash-2-4 (Aumasson and Bernstein), for keys and ETags ---- */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = rotl(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = rotl(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = rotl(v2, 32);                                                                         \
    } while (0)

TESTABLE uint64_t siphash24(const void *data, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *p = data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = k1 ^ 0x7465646279746573ULL;
    size_t whole = len & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(p + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++)
        b |= (uint64_t)p[whole + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- entries ---- */

cache_entry_t *cache_entry_ref(cache_entry_t *e)
{
    atomic_fetch_add(&e->refs, 1);
    return e;
}

void cache_entry_release(cache_entry_t *e)
{
    if (!e || atomic_fetch_sub(&e->refs, 1) != 1)
        return;
    free(e->content_type);
    free(e->body);
    free(e);
}

void cache_etag(const void *body, size_t len, char out[CACHE_ETAG_BUF])
{
    /* a fixed key: every gateway instance gives one body the same tag */
    uint64_t h = siphash24(body, len, 0x65636f6d2d657467ULL, 0x73747269632d7631ULL);
    snprintf(out, CACHE_ETAG_BUF, "\"%016" PRIx64 "\"", h);
}

/* ---- the table ---- */

typedef struct waiter {
    struct waiter *next;
    cache_wait_cb cb;
    void *arg;
    uint64_t ticket;
} waiter_t;

struct cache_waiters {
    cache_wait_outcome_t outcome;
    cache_entry_t *entry; /* one reference held by the list */
    size_t n;
    waiter_t *head;
};

typedef struct node {
    struct node *hnext;
    struct node *prev, *next; /* LRU, most recent first; only with an entry */
    uint64_t hash;
    char *key;
    cache_entry_t *entry;
    size_t charge; /* bytes counted for the entry */
    cache_policy_t policy;
    bool filling;
    bool refreshing; /* the fill is a background refresh of a served entry */
    uint64_t fill;
    int64_t fill_started_ms;
    bool refresh_failed;
    int64_t failed_at_ms;
    waiter_t *waiters, **waiters_tail;
} node_t;

struct cache {
    pthread_mutex_t mu;
    node_t **slots;
    size_t nslots; /* power of two */
    size_t nnodes;
    size_t entries;
    size_t bytes, max_bytes, max_entry;
    node_t lru; /* sentinel */
    uint64_t k0, k1;
    uint64_t next_fill, next_ticket;
    uint64_t evictions;
};

cache_t *cache_new(size_t max_bytes, size_t max_entry_bytes)
{
    cache_t *c = xcalloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->nslots = 64;
    c->slots = xcalloc(c->nslots, sizeof *c->slots);
    c->max_bytes = max_bytes;
    c->max_entry = max_entry_bytes;
    c->lru.prev = c->lru.next = &c->lru;
    uint64_t k[2];
    random_bytes(k, sizeof k);
    c->k0 = k[0];
    c->k1 = k[1];
    return c;
}

static void waiters_free_list(waiter_t *w)
{
    while (w) {
        waiter_t *next = w->next;
        free(w);
        w = next;
    }
}

void cache_free(cache_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nslots; i++) {
        node_t *n = c->slots[i];
        while (n) {
            node_t *next = n->hnext;
            cache_entry_release(n->entry);
            waiters_free_list(n->waiters);
            free(n->key);
            free(n);
            n = next;
        }
    }
    free(c->slots);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static uint64_t key_hash(const cache_t *c, const char *key)
{
    return siphash24(key, strlen(key), c->k0, c->k1);
}

static node_t *find(cache_t *c, const char *key, uint64_t h)
{
    for (node_t *n = c->slots[h & (c->nslots - 1)]; n; n = n->hnext)
        if (n->hash == h && strcmp(n->key, key) == 0)
            return n;
    return NULL;
}

static void grow(cache_t *c)
{
    size_t ns = c->nslots * 2;
    node_t **slots = xcalloc(ns, sizeof *slots);
    for (size_t i = 0; i < c->nslots; i++) {
        node_t *n = c->slots[i];
        while (n) {
            node_t *next = n->hnext;
            n->hnext = slots[n->hash & (ns - 1)];
            slots[n->hash & (ns - 1)] = n;
            n = next;
        }
    }
    free(c->slots);
    c->slots = slots;
    c->nslots = ns;
}

static node_t *insert(cache_t *c, const char *key, uint64_t h)
{
    if (c->nnodes >= c->nslots)
        grow(c);
    node_t *n = xcalloc(1, sizeof *n);
    n->hash = h;
    n->key = xstrdup(key);
    n->waiters_tail = &n->waiters;
    n->hnext = c->slots[h & (c->nslots - 1)];
    c->slots[h & (c->nslots - 1)] = n;
    c->nnodes++;
    return n;
}

static void lru_unlink(node_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

static void lru_push_front(cache_t *c, node_t *n)
{
    n->next = c->lru.next;
    n->prev = &c->lru;
    c->lru.next->prev = n;
    c->lru.next = n;
}

static void lru_touch(cache_t *c, node_t *n)
{
    lru_unlink(n);
    lru_push_front(c, n);
}

/* Drops n's entry from the table (holders of references keep theirs). */
static void drop_entry(cache_t *c, node_t *n)
{
    if (!n->entry)
        return;
    lru_unlink(n);
    cache_entry_release(n->entry);
    n->entry = NULL;
    c->bytes -= n->charge;
    n->charge = 0;
    c->entries--;
    n->refresh_failed = false;
}

/* Frees n when nothing needs it any more. */
static void maybe_remove(cache_t *c, node_t *n)
{
    if (n->entry || n->filling || n->waiters)
        return;
    node_t **pp = &c->slots[n->hash & (c->nslots - 1)];
    while (*pp != n)
        pp = &(*pp)->hnext;
    *pp = n->hnext;
    c->nnodes--;
    free(n->key);
    free(n);
}

static int64_t lock_timeout(const cache_policy_t *p)
{
    return p->lock_timeout_ms > 0 ? p->lock_timeout_ms : CACHE_DEFAULT_LOCK_TIMEOUT_MS;
}

/* A fill is running and its owner has not overstayed. */
static bool fill_live(const node_t *n, int64_t now)
{
    int64_t lease = lock_timeout(&n->policy);
    if (n->refreshing && lease < CACHE_REFRESH_LEASE_MS)
        lease = CACHE_REFRESH_LEASE_MS;
    return n->filling && now - n->fill_started_ms < lease;
}

static void start_fill(cache_t *c, node_t *n, bool refresh, int64_t now, cache_lookup_t *out)
{
    n->filling = true;
    n->refreshing = refresh;
    n->fill = ++c->next_fill;
    n->fill_started_ms = now;
    out->fill = n->fill;
}

/* The entry may be served stale now. */
static bool servable_stale(const node_t *n, int64_t age)
{
    const cache_policy_t *p = &n->policy;
    return age < p->ttl_ms + p->swr_ms ||
           (n->refresh_failed && age < p->ttl_ms + p->swr_ms + p->stale_if_error_ms);
}

void cache_lookup(cache_t *c, const char *key, const cache_policy_t *p, cache_lookup_t *out)
{
    uint64_t h = key_hash(c, key);
    int64_t now = clock_mono_ms();
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    node_t *n = find(c, key, h);
    if (n)
        n->policy = *p;
    if (n && n->entry) {
        int64_t age = now - n->entry->stored_at_ms;
        out->age_ms = age;
        if (age < p->ttl_ms) {
            out->result = CACHE_HIT;
            out->entry = cache_entry_ref(n->entry);
            lru_touch(c, n);
            goto out;
        }
        if (servable_stale(n, age)) {
            out->result = CACHE_STALE;
            out->entry = cache_entry_ref(n->entry);
            lru_touch(c, n);
            bool backing_off = n->refresh_failed && now - n->failed_at_ms < CACHE_ERROR_BACKOFF_MS;
            if (!fill_live(n, now) && !backing_off) {
                out->refresh_owner = true;
                start_fill(c, n, true, now, out);
            }
            goto out;
        }
        /* too old to serve; still a fallback if upstream fails within stale-if-error */
        if (age < p->ttl_ms + p->swr_ms + p->stale_if_error_ms)
            out->entry = cache_entry_ref(n->entry);
        else
            drop_entry(c, n);
    }
    if (n && fill_live(n, now)) {
        out->result = CACHE_MISS_WAIT;
        cache_entry_release(out->entry); /* the fallback is the leader's business */
        out->entry = NULL;
        goto out;
    }
    if (!n) {
        n = insert(c, key, h);
        n->policy = *p;
    }
    out->result = CACHE_MISS;
    out->leader = true;
    start_fill(c, n, false, now, out);
out:
    pthread_mutex_unlock(&c->mu);
}

int cache_wait_register(cache_t *c, const char *key, cache_wait_cb cb, void *arg, uint64_t *ticket)
{
    uint64_t h = key_hash(c, key);
    int64_t now = clock_mono_ms();
    int rc = -1;
    pthread_mutex_lock(&c->mu);
    node_t *n = find(c, key, h);
    if (n && fill_live(n, now)) {
        waiter_t *w = xcalloc(1, sizeof *w);
        w->cb = cb;
        w->arg = arg;
        w->ticket = *ticket = ++c->next_ticket;
        *n->waiters_tail = w;
        n->waiters_tail = &w->next;
        rc = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int cache_wait_cancel(cache_t *c, const char *key, uint64_t ticket)
{
    uint64_t h = key_hash(c, key);
    int rc = -1;
    pthread_mutex_lock(&c->mu);
    node_t *n = find(c, key, h);
    if (n) {
        for (waiter_t **pp = &n->waiters; *pp; pp = &(*pp)->next) {
            if ((*pp)->ticket != ticket)
                continue;
            waiter_t *w = *pp;
            *pp = w->next;
            if (n->waiters_tail == &w->next)
                n->waiters_tail = pp;
            free(w);
            rc = 0;
            break;
        }
        maybe_remove(c, n);
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Hands n's waiters to a list (NULL when none); entry gets a reference of its own. */
static cache_waiters_t *detach_waiters(node_t *n, cache_wait_outcome_t outcome,
                                       cache_entry_t *entry)
{
    if (!n->waiters)
        return NULL;
    cache_waiters_t *list = xcalloc(1, sizeof *list);
    list->outcome = outcome;
    list->entry = entry ? cache_entry_ref(entry) : NULL;
    list->head = n->waiters;
    for (waiter_t *w = n->waiters; w; w = w->next)
        list->n++;
    n->waiters = NULL;
    n->waiters_tail = &n->waiters;
    return list;
}

/* Evicts from the cold end until the budget holds. keep (just stored, at the hot
 * end, and never larger than the budget) is always the last one left. */
static void evict_until_fits(cache_t *c, const node_t *keep)
{
    while (c->bytes > c->max_bytes) {
        node_t *victim = c->lru.prev;
        ECOM_ASSERT(victim != keep && victim != &c->lru);
        drop_entry(c, victim);
        c->evictions++;
        maybe_remove(c, victim);
    }
}

cache_waiters_t *cache_store(cache_t *c, const char *key, uint64_t fill, int status,
                             const char *content_type, const void *body, size_t len)
{
    cache_entry_t *e = xcalloc(1, sizeof *e);
    atomic_init(&e->refs, 1);
    e->status = status;
    e->content_type = content_type ? xstrdup(content_type) : NULL;
    e->body = xmalloc(len ? len : 1);
    if (len)
        memcpy(e->body, body, len);
    e->body_len = len;
    cache_etag(body, len, e->etag);
    size_t charge = sizeof *e + sizeof(node_t) + len + strlen(key) + 1 +
                    (content_type ? strlen(content_type) + 1 : 0);
    uint64_t h = key_hash(c, key);

    pthread_mutex_lock(&c->mu);
    e->stored_at_ms = clock_mono_ms();
    node_t *n = find(c, key, h);
    if (!n)
        n = insert(c, key, h);
    if (n->filling && n->fill == fill)
        n->filling = false;
    drop_entry(c, n); /* the old response is superseded, stored or not */
    if (charge <= c->max_entry && charge <= c->max_bytes) {
        n->entry = cache_entry_ref(e);
        n->charge = charge;
        c->bytes += charge;
        c->entries++;
        lru_push_front(c, n);
        evict_until_fits(c, n);
    }
    cache_waiters_t *list = detach_waiters(n, CACHE_WAIT_FILLED, e);
    maybe_remove(c, n);
    pthread_mutex_unlock(&c->mu);
    cache_entry_release(e);
    return list;
}

cache_waiters_t *cache_fill_failed(cache_t *c, const char *key, uint64_t fill, bool upstream_error)
{
    uint64_t h = key_hash(c, key);
    int64_t now = clock_mono_ms();
    cache_waiters_t *list = NULL;
    pthread_mutex_lock(&c->mu);
    node_t *n = find(c, key, h);
    if (!n)
        goto out;
    bool owner = n->filling && n->fill == fill;
    if (owner)
        n->filling = false;
    if (upstream_error && n->entry) {
        n->refresh_failed = true;
        n->failed_at_ms = now;
    }
    if (owner || !n->filling) {
        if (n->entry && servable_stale(n, now - n->entry->stored_at_ms))
            list = detach_waiters(n, CACHE_WAIT_STALE, n->entry);
        else
            list = detach_waiters(n, CACHE_WAIT_BYPASS, NULL);
    }
    maybe_remove(c, n);
out:
    pthread_mutex_unlock(&c->mu);
    return list;
}

void cache_waiters_run(cache_waiters_t *list)
{
    if (!list)
        return;
    waiter_t *w = list->head;
    while (w) {
        waiter_t *next = w->next;
        w->cb(w->arg, list->outcome, list->entry ? cache_entry_ref(list->entry) : NULL);
        free(w);
        w = next;
    }
    cache_entry_release(list->entry);
    free(list);
}

size_t cache_waiters_count(const cache_waiters_t *w)
{
    return w ? w->n : 0;
}

void cache_stats(cache_t *c, cache_stats_t *out)
{
    pthread_mutex_lock(&c->mu);
    out->entries = c->entries;
    out->bytes = c->bytes;
    out->evictions = c->evictions;
    pthread_mutex_unlock(&c->mu);
}

/* ---- keys and headers ---- */

/* Writes "<tag><decimal length of s>:<s>;" at o (tag one character, s NULL
 * for ""), returns the end; no printf: this runs on every cache hit. */
static char *key_part(char *o, char tag, const char *s, size_t sl)
{
    *o++ = tag;
    char digits[20];
    size_t nd = 0, v = sl;
    do {
        digits[nd++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (nd)
        *o++ = digits[--nd];
    *o++ = ':';
    if (sl)
        memcpy(o, s, sl);
    o += sl;
    *o++ = ';';
    return o;
}

#define KEY_PARTS 8

char *cache_key_build(const cache_key_parts_t *k)
{
    const char *method = k->method && strcmp(k->method, "HEAD") == 0 ? "GET" : k->method;
    char *path = route_norm_path(k->path);
    const char *q = k->query && k->query[0] == '?' ? k->query + 1 : k->query;
    /* no query normalises to "" (most reads): no scratch buffers for it */
    char *query = q && q[0] && q[0] != '#' ? route_norm_query(k->query) : NULL;
    /* shared: "s6:shared;" in place of the tenant and the principal */
    char tags[KEY_PARTS] = {'r', 'm', 'p', 'q', 'k', 'v', 't', 'u'};
    const char *parts[KEY_PARTS] = {k->route_id, method, path, query, k->custom, k->vary, k->tenant, k->principal};
    int n = KEY_PARTS;
    if (k->shared) {
        tags[6] = 's';
        parts[6] = "shared";
        n = 7;
    }
    size_t lens[KEY_PARTS], total = 1;
    for (int i = 0; i < n; i++) {
        lens[i] = parts[i] ? strlen(parts[i]) : 0;
        total += 1 + 20 + 1 + lens[i] + 1;
    }
    char *buf = xmalloc(total);
    char *o = buf;
    for (int i = 0; i < n; i++)
        o = key_part(o, tags[i], parts[i], lens[i]);
    *o = '\0';
    free(path);
    free(query);
    return buf;
}

/* One Cache-Control directive name at s[0..n) is name (case-insensitive). */
static bool directive_is(const char *s, size_t n, const char *name)
{
    return n == strlen(name) && strncasecmp(s, name, n) == 0;
}

bool cache_storable(int status, const char *cache_control, bool has_set_cookie)
{
    if (status != 200 || has_set_cookie)
        return false;
    const char *p = cache_control ? cache_control : "";
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, "=, \t");
        if (directive_is(p, n, "no-store") || directive_is(p, n, "private"))
            return false;
        p += n;
        if (*p == '=') { /* skip the argument, quoted strings included */
            p++;
            if (*p == '"') {
                for (p++; *p && *p != '"'; p++)
                    if (*p == '\\' && p[1])
                        p++;
                if (*p == '"')
                    p++;
            }
            p += strcspn(p, ",");
        }
        while (*p && *p != ',')
            p++;
    }
    return true;
}

static const char *skip_ows(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

bool cache_etag_match(const char *inm, const char *etag)
{
    if (!inm || !etag)
        return false;
    if (strncmp(etag, "W/", 2) == 0)
        etag += 2;
    size_t elen = strlen(etag);
    const char *s = skip_ows(inm);
    if (*s == '*' && *skip_ows(s + 1) == '\0')
        return true;
    while (*s) {
        s = skip_ows(s);
        if (*s == ',') {
            s++;
            continue;
        }
        if (*s == '\0')
            break;
        if (strncmp(s, "W/", 2) == 0)
            s += 2;
        if (*s != '"')
            return false;
        const char *end = strchr(s + 1, '"');
        if (!end)
            return false;
        size_t tlen = (size_t)(end + 1 - s);
        if (tlen == elen && memcmp(s, etag, elen) == 0)
            return true;
        s = skip_ows(end + 1);
        if (*s != ',' && *s != '\0')
            return false;
    }
    return false;
}

int64_t cache_age_s(const cache_entry_t *e)
{
    int64_t age = clock_mono_ms() - e->stored_at_ms;
    return age > 0 ? age / 1000 : 0;
}

int64_t cache_ttl_s(const cache_entry_t *e, const cache_policy_t *p)
{
    int64_t left = e->stored_at_ms + p->ttl_ms - clock_mono_ms();
    /* whole seconds toward minus infinity: 1.5 s left is 1, 0.5 s past is -1 */
    return left >= 0 ? left / 1000 : -((-left + 999) / 1000);
}

void cache_status_value(char *out, size_t cap, cache_out_t kind, int64_t ttl_s, bool stored,
                        bool collapsed)
{
    const char *fwd = NULL;
    switch (kind) {
    case CACHE_OUT_HIT:
    case CACHE_OUT_STALE: { /* "gw; hit; ttl=%" PRId64, without printf: every hit runs it */
        static const char head[] = "gw; hit; ttl=";
        char d[24];
        size_t nd = 0;
        uint64_t v = ttl_s < 0 ? 0 - (uint64_t)ttl_s : (uint64_t)ttl_s;
        do {
            d[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        if (ttl_s < 0)
            d[nd++] = '-';
        if (cap < sizeof head + nd) { /* never with CACHE_STATUS_MAX */
            snprintf(out, cap, "gw; hit; ttl=%" PRId64, ttl_s);
            return;
        }
        memcpy(out, head, sizeof head - 1);
        char *o = out + sizeof head - 1;
        while (nd)
            *o++ = d[--nd];
        *o = '\0';
        return;
    }
    case CACHE_OUT_MISS: fwd = "uri-miss"; break;
    case CACHE_OUT_REFRESH: fwd = "stale"; break;
    case CACHE_OUT_BYPASS: fwd = "bypass"; break;
    }
    snprintf(out, cap, "gw; fwd=%s%s%s", fwd, stored ? "; stored" : "",
             collapsed ? "; collapsed" : "");
}

const char *cache_x_status(cache_out_t kind)
{
    switch (kind) {
    case CACHE_OUT_HIT: return "HIT";
    case CACHE_OUT_STALE: return "STALE";
    case CACHE_OUT_MISS: return "MISS";
    case CACHE_OUT_REFRESH: return "REFRESH";
    case CACHE_OUT_BYPASS: return "BYPASS";
    }
    return "BYPASS";
}
