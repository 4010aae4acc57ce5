/* http-gateway/cache.h: the per-route response cache shared by every gateway
 * thread (gateway.md §1.2): stale-while-revalidate with exactly one background
 * refresh per key, coalesced misses (one leader, the others wait without
 * blocking their event loop), stale-if-error, strong ETags, LRU eviction under a
 * byte budget, and the Age / Cache-Status / X-Cache-Status header values.
 *
 * Flow for the network layer, per cacheable GET/HEAD request:
 *   key = cache_key_build(...); cache_lookup(cache, key, &policy, &lk);
 *   HIT        serve lk.entry.
 *   STALE      serve lk.entry; if lk.refresh_owner, refresh in the background and
 *              end with cache_store(.., lk.fill, ..) or cache_fill_failed(.., lk.fill, ..).
 *   MISS       lk.leader: go upstream, then cache_store / cache_fill_failed as above;
 *              lk.entry, when set, is a stale-if-error copy to serve if upstream fails.
 *   MISS_WAIT  cache_wait_register(cache, key, cb, arg, &ticket) (or look up again when
 *              it returns -1); arm a lockTimeoutMs timer that calls cache_wait_cancel
 *              and goes upstream uncached when the cancel succeeds.
 * cache_store and cache_fill_failed return the waiters of the key; the filling
 * thread calls cache_waiters_run, which calls each waiter's callback once on that
 * thread (the callback typically hands the entry to its own event base with
 * event_base_once).
 *
 * Owns: cache_t, its entries (reference-counted, immutable once stored), waiter
 * lists. Borrows core/clock.h (monotonic ms, so tests use clock_fake_set_ms) and
 * the URL normalisation of route.h.
 * Thread-safe: one mutex, held only for table operations (bodies are copied and
 * hashed outside it). */
#ifndef ECOM_CACHE_H
#define ECOM_CACHE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_DEFAULT_LOCK_TIMEOUT_MS 5000
#define CACHE_ERROR_BACKOFF_MS 1000  /* after a failed refresh, no new refresh for this long */
#define CACHE_REFRESH_LEASE_MS 30000 /* a background refresh running longer may be taken over */
#define CACHE_ETAG_BUF 19            /* '"' + 16 hex + '"' + NUL */
#define CACHE_STATUS_MAX 96          /* room for any Cache-Status value built here */

typedef struct cache_policy {
    int64_t ttl_ms;            /* age < ttl: HIT */
    int64_t swr_ms;            /* ttl <= age < ttl + swr: STALE, one refresh */
    int64_t stale_if_error_ms; /* after a failed refresh: STALE until ttl + swr + this */
    int64_t lock_timeout_ms;   /* a miss fill not finished after this may be taken over
                                  (a refresh after max(this, CACHE_REFRESH_LEASE_MS)); 0 = 5000 */
} cache_policy_t;

/* A stored response. Immutable; hold a reference while using it. */
typedef struct cache_entry {
    int status;
    char *content_type; /* NULL when none */
    unsigned char *body;
    size_t body_len;
    char etag[CACHE_ETAG_BUF]; /* strong: "\"<16 hex>\"" */
    int64_t stored_at_ms;      /* clock_mono_ms() at store */
    atomic_int refs;
} cache_entry_t;

cache_entry_t *cache_entry_ref(cache_entry_t *e);
void cache_entry_release(cache_entry_t *e); /* NULL is fine */

typedef struct cache cache_t;

/* max_bytes bounds everything stored (bodies, content types, keys, bookkeeping);
 * a response costing more than max_entry_bytes is never stored. Owned. */
cache_t *cache_new(size_t max_bytes, size_t max_entry_bytes);
/* Frees every entry no one else holds. Registered waiters are dropped without a
 * callback: call it only once no request can still use the cache. */
void cache_free(cache_t *c);

typedef enum { CACHE_HIT, CACHE_STALE, CACHE_MISS, CACHE_MISS_WAIT } cache_result_t;

typedef struct cache_lookup {
    cache_result_t result;
    cache_entry_t *entry; /* owned reference or NULL: the response to serve (HIT,
                             STALE) or the stale-if-error fallback (MISS) */
    bool refresh_owner;   /* STALE: this caller refreshes */
    bool leader;          /* MISS: this caller fills */
    uint64_t fill;        /* token for cache_store / cache_fill_failed */
    int64_t age_ms;       /* of entry, when there is one */
} cache_lookup_t;

void cache_lookup(cache_t *c, const char *key, const cache_policy_t *p, cache_lookup_t *out);

/* How a coalesced request ends: FILLED serve entry (the leader's response, stored
 * or too big to store); STALE serve entry (the fill failed, the stale copy is
 * still allowed); BYPASS go upstream without the cache (entry NULL). */
typedef enum { CACHE_WAIT_FILLED, CACHE_WAIT_STALE, CACHE_WAIT_BYPASS } cache_wait_outcome_t;
/* entry is an owned reference (release it) or NULL. */
typedef void (*cache_wait_cb)(void *arg, cache_wait_outcome_t outcome, cache_entry_t *entry);

typedef struct cache_waiters cache_waiters_t;

/* Waits for the fill of key in progress: 0 and *ticket set, after which cb fires
 * exactly once unless cache_wait_cancel succeeds; -1 when no fill is in progress
 * (cb never fires: look up again). */
int cache_wait_register(cache_t *c, const char *key, cache_wait_cb cb, void *arg, uint64_t *ticket)
    __attribute__((warn_unused_result));
/* 0: removed, cb will never fire. -1: already handed to a filler; cb fires (or has
 * fired) on the filler's thread. */
int cache_wait_cancel(cache_t *c, const char *key, uint64_t ticket)
    __attribute__((warn_unused_result));

/* The fill of key succeeded with a cacheable response (the caller checked status,
 * no-store, private, Set-Cookie): stores it when it fits, evicting least recently
 * used entries, and ends the fill. Returns the waiters (owned; NULL when none). */
cache_waiters_t *cache_store(cache_t *c, const char *key, uint64_t fill, int status,
                             const char *content_type, const void *body, size_t len);
/* The fill of key ended without a cacheable response. upstream_error (500, 502,
 * 503, 504, connect error, timeout) keeps the entry servable as stale-if-error;
 * otherwise (a response not to be cached) the entry is left as it was.
 * Returns the waiters (owned; NULL when none). */
cache_waiters_t *cache_fill_failed(cache_t *c, const char *key, uint64_t fill, bool upstream_error);
/* Calls every waiter's callback once, on this thread, then frees w (NULL is fine). */
void cache_waiters_run(cache_waiters_t *w);
size_t cache_waiters_count(const cache_waiters_t *w);

typedef struct cache_stats {
    size_t entries;
    size_t bytes;
    uint64_t evictions;
} cache_stats_t;
void cache_stats(cache_t *c, cache_stats_t *out);

/* The parts of a key. NULL parts are empty. Unless shared, tenant and principal
 * are part of the key (an anonymous request keys as empty ones). */
typedef struct cache_key_parts {
    const char *route_id;
    const char *method; /* HEAD is keyed as GET: both read the same resource */
    const char *path;   /* as received; normalised here (route_norm_path) */
    const char *query;  /* as received, '?' optional; sorted here (route_norm_query) */
    const char *custom; /* the route's key function output */
    const char *vary;   /* the Vary header values, as the caller lists them */
    const char *tenant;
    const char *principal;
    bool shared;
} cache_key_parts_t;
/* Owned string; every part length-prefixed, so no part can forge another. */
char *cache_key_build(const cache_key_parts_t *k);

/* Whether an upstream response may be stored: status 200 only (the default
 * cacheable set), no Set-Cookie, and no "no-store" or "private" directive in
 * Cache-Control (case-insensitive, with or without an argument). cache_control
 * may be NULL. */
bool cache_storable(int status, const char *cache_control, bool has_set_cookie);

/* The strong ETag of a body: a 64-bit SipHash as quoted hex. */
void cache_etag(const void *body, size_t len, char out[CACHE_ETAG_BUF]);
/* If-None-Match (RFC 9110 weak comparison): "*" or any listed tag equal to etag,
 * a W/ prefix ignored. A malformed list matches nothing from the bad tag on. */
bool cache_etag_match(const char *if_none_match, const char *etag);
/* Age header value: whole seconds since the entry was stored (>= 0). */
int64_t cache_age_s(const cache_entry_t *e);
/* Freshness left in whole seconds (negative once stale), for Cache-Status ttl. */
int64_t cache_ttl_s(const cache_entry_t *e, const cache_policy_t *p);

/* What the cache did for a response, for the headers. REFRESH: an entry was
 * found but too old to serve, so the request went upstream. */
typedef enum {
    CACHE_OUT_HIT,
    CACHE_OUT_STALE,
    CACHE_OUT_MISS,
    CACHE_OUT_REFRESH,
    CACHE_OUT_BYPASS
} cache_out_t;
/* RFC 9211 Cache-Status value: "gw; hit; ttl=12", "gw; hit; ttl=-3" (stale served),
 * "gw; fwd=uri-miss; stored", "gw; fwd=stale; collapsed", "gw; fwd=bypass".
 * ttl_s is used for HIT and STALE only. */
void cache_status_value(char *out, size_t cap, cache_out_t kind, int64_t ttl_s, bool stored,
                        bool collapsed);
/* X-Cache-Status value: HIT, STALE, MISS, REFRESH or BYPASS. Static string. */
const char *cache_x_status(cache_out_t kind);

#endif
