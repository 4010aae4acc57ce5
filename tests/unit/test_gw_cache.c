/* tests/unit/test_gw_cache.c: the SWR cache on the fake clock, including the
 * vector table of gateway.md §1.2 (ttlMs 5000, swrMs 25000). */
#include "http-gateway/cache.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "http-gateway/route.h"
#include "tests/testlib.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef ECOM_TESTABLE
uint64_t siphash24(const void *data, size_t len, uint64_t k0, uint64_t k1);
#endif

#define T0 5000000
#define KEY "r5:/api/v1/analytics/events;"
#define BODY "{\"data\":[],\"count\":0}"

static const cache_policy_t runbook = {.ttl_ms = 5000, .swr_ms = 25000, .lock_timeout_ms = 5000};

static int64_t now_ms;

static void at(int64_t ms)
{
    now_ms = ms;
    clock_fake_set_ms(ms);
}

static int setup(void)
{
    at(T0);
    return 0;
}

static int teardown(void)
{
    clock_fake_set_ms(0);
    return 0;
}

static void lookup(cache_t *c, const char *key, const cache_policy_t *p, cache_lookup_t *lk)
{
    cache_lookup(c, key, p, lk);
}

/* Stores BODY for key as its leader would; asserts nobody waited. */
static void fill(cache_t *c, const char *key, const cache_policy_t *p)
{
    cache_lookup_t lk;
    lookup(c, key, p, &lk);
    CU_ASSERT_EQUAL_FATAL(lk.result, CACHE_MISS);
    CU_ASSERT_TRUE(lk.leader);
    cache_entry_release(lk.entry);
    cache_waiters_t *w = cache_store(c, key, lk.fill, 200, "application/json", BODY, strlen(BODY));
    CU_ASSERT_PTR_NULL(w);
}

/* ---- concurrency helpers ---- */

#define NTHREADS 100

typedef struct {
    cache_t *c;
    pthread_barrier_t *bar;
    const char *key;
    cache_lookup_t lk;
} looker_t;

static void *look(void *p)
{
    looker_t *a = p;
    pthread_barrier_wait(a->bar);
    cache_lookup(a->c, a->key, &runbook, &a->lk);
    return NULL;
}

/* 100 threads look key up at once; counts the results. */
static void concurrent_lookups(cache_t *c, const char *key, int counts[4], int *owners,
                               int *leaders, looker_t *res)
{
    pthread_t th[NTHREADS];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NTHREADS);
    for (int i = 0; i < NTHREADS; i++) {
        res[i] = (looker_t){.c = c, .bar = &bar, .key = key};
        pthread_create(&th[i], NULL, look, &res[i]);
    }
    memset(counts, 0, 4 * sizeof(int));
    *owners = *leaders = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(th[i], NULL);
        counts[res[i].lk.result]++;
        *owners += res[i].lk.refresh_owner;
        *leaders += res[i].lk.leader;
    }
    pthread_barrier_destroy(&bar);
}

static uint64_t owner_fill(const looker_t *res)
{
    for (int i = 0; i < NTHREADS; i++)
        if (res[i].lk.refresh_owner || res[i].lk.leader)
            return res[i].lk.fill;
    return 0;
}

static void release_all(looker_t *res)
{
    for (int i = 0; i < NTHREADS; i++)
        cache_entry_release(res[i].lk.entry);
}

/* ---- the vector table ---- */

static void test_vector_hit_under_ttl(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &runbook);
    int64_t ages[] = {0, 1, 2500, 4999};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(ages); i++) {
        at(T0 + ages[i]);
        cache_lookup_t lk;
        lookup(c, KEY, &runbook, &lk);
        CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
        CU_ASSERT_FALSE(lk.leader); /* no upstream call */
        CU_ASSERT_FALSE(lk.refresh_owner);
        CU_ASSERT_PTR_NOT_NULL_FATAL(lk.entry);
        CU_ASSERT_EQUAL(lk.entry->body_len, strlen(BODY));
        CU_ASSERT_EQUAL(memcmp(lk.entry->body, BODY, strlen(BODY)), 0);
        CU_ASSERT_STRING_EQUAL(lk.entry->content_type, "application/json");
        CU_ASSERT_EQUAL(lk.age_ms, ages[i]);
        cache_entry_release(lk.entry);
    }
    cache_free(c);
}

static void test_vector_stale_one_refresh(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &runbook);
    at(T0 + 5000);
    int counts[4], owners, leaders;
    looker_t *res = calloc(NTHREADS, sizeof *res);
    concurrent_lookups(c, KEY, counts, &owners, &leaders, res);
    CU_ASSERT_EQUAL(counts[CACHE_STALE], NTHREADS); /* every client served at once */
    CU_ASSERT_EQUAL(owners, 1);                     /* exactly one background refresh */
    CU_ASSERT_EQUAL(leaders, 0);
    uint64_t fill_token = owner_fill(res);
    release_all(res);

    /* while the refresh runs, later clients get stale copies and no second refresh */
    at(T0 + 29999);
    concurrent_lookups(c, KEY, counts, &owners, &leaders, res);
    CU_ASSERT_EQUAL(counts[CACHE_STALE], NTHREADS);
    CU_ASSERT_EQUAL(owners, 0);
    release_all(res);

    /* the refresh lands: fresh again */
    cache_waiters_t *w = cache_store(c, KEY, fill_token, 200, "application/json", "{}", 2);
    CU_ASSERT_PTR_NULL(w);
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
    CU_ASSERT_EQUAL(lk.entry->body_len, 2);
    cache_entry_release(lk.entry);
    free(res);
    cache_free(c);
}

typedef struct {
    int calls;
    cache_wait_outcome_t outcome;
    cache_entry_t *entry;
} waited_t;

static void on_wait(void *arg, cache_wait_outcome_t outcome, cache_entry_t *entry)
{
    waited_t *w = arg;
    w->calls++;
    w->outcome = outcome;
    w->entry = entry;
}

static void test_vector_miss_coalesced(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &runbook);
    at(T0 + 30000);
    int counts[4], owners, leaders;
    looker_t *res = calloc(NTHREADS, sizeof *res);
    concurrent_lookups(c, KEY, counts, &owners, &leaders, res);
    CU_ASSERT_EQUAL(leaders, 1); /* one upstream call */
    CU_ASSERT_EQUAL(counts[CACHE_MISS], 1);
    CU_ASSERT_EQUAL(counts[CACHE_MISS_WAIT], NTHREADS - 1);
    uint64_t fill_token = owner_fill(res);
    release_all(res);

    waited_t waited[NTHREADS - 1];
    memset(waited, 0, sizeof waited);
    for (int i = 0; i < NTHREADS - 1; i++) {
        uint64_t ticket;
        ASSERT_OK(cache_wait_register(c, KEY, on_wait, &waited[i], &ticket));
    }
    cache_waiters_t *w =
        cache_store(c, KEY, fill_token, 200, "application/json", BODY, strlen(BODY));
    CU_ASSERT_EQUAL(cache_waiters_count(w), NTHREADS - 1);
    cache_waiters_run(w);
    for (int i = 0; i < NTHREADS - 1; i++) {
        CU_ASSERT_EQUAL(waited[i].calls, 1);
        CU_ASSERT_EQUAL(waited[i].outcome, CACHE_WAIT_FILLED);
        CU_ASSERT_PTR_NOT_NULL(waited[i].entry);
        if (waited[i].entry)
            CU_ASSERT_EQUAL(waited[i].entry->body_len, strlen(BODY));
        cache_entry_release(waited[i].entry);
    }
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
    cache_entry_release(lk.entry);
    free(res);
    cache_free(c);
}

static void test_first_miss_and_register_after_fill(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    cache_lookup_t a, b;
    lookup(c, KEY, &runbook, &a);
    lookup(c, KEY, &runbook, &b);
    CU_ASSERT_EQUAL(a.result, CACHE_MISS);
    CU_ASSERT_TRUE(a.leader);
    CU_ASSERT_PTR_NULL(a.entry);
    CU_ASSERT_EQUAL(b.result, CACHE_MISS_WAIT);
    CU_ASSERT_FALSE(b.leader);
    cache_waiters_run(cache_store(c, KEY, a.fill, 200, NULL, "x", 1));
    /* the fill ended between lookup and register: told to look up again */
    waited_t w = {0};
    uint64_t ticket;
    CU_ASSERT_EQUAL(cache_wait_register(c, KEY, on_wait, &w, &ticket), -1);
    CU_ASSERT_EQUAL(w.calls, 0);
    cache_free(c);
}

static void test_waiter_cancel_and_lock_timeout(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    cache_lookup_t lead, other;
    lookup(c, KEY, &runbook, &lead);
    waited_t w1 = {0}, w2 = {0};
    uint64_t t1, t2;
    ASSERT_OK(cache_wait_register(c, KEY, on_wait, &w1, &t1));
    ASSERT_OK(cache_wait_register(c, KEY, on_wait, &w2, &t2));
    /* w1's lock timeout fires: it cancels and goes upstream uncached */
    ASSERT_OK(cache_wait_cancel(c, KEY, t1));
    CU_ASSERT_EQUAL(cache_wait_cancel(c, KEY, t1), -1);
    /* the leader vanished: after lock_timeout_ms another caller may lead */
    at(T0 + 4999);
    lookup(c, KEY, &runbook, &other);
    CU_ASSERT_EQUAL(other.result, CACHE_MISS_WAIT);
    at(T0 + 5000);
    lookup(c, KEY, &runbook, &other);
    CU_ASSERT_EQUAL(other.result, CACHE_MISS);
    CU_ASSERT_TRUE(other.leader);
    CU_ASSERT_NOT_EQUAL(other.fill, lead.fill);
    cache_waiters_t *list = cache_store(c, KEY, other.fill, 200, NULL, "y", 1);
    CU_ASSERT_EQUAL(cache_waiters_count(list), 1);
    /* w2 was handed over: its cancel now fails and the callback fires once */
    CU_ASSERT_EQUAL(cache_wait_cancel(c, KEY, t2), -1);
    cache_waiters_run(list);
    CU_ASSERT_EQUAL(w1.calls, 0);
    CU_ASSERT_EQUAL(w2.calls, 1);
    cache_entry_release(w2.entry);
    /* the vanished leader's late store still lands as a fresh copy */
    cache_waiters_run(cache_store(c, KEY, lead.fill, 200, NULL, "z", 1));
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
    CU_ASSERT_EQUAL(lk.entry->body[0], 'z');
    cache_entry_release(lk.entry);
    cache_free(c);
}

static void test_stale_if_error(void)
{
    at(T0);
    const cache_policy_t p = {.ttl_ms = 5000, .swr_ms = 25000, .stale_if_error_ms = 60000};
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &p);
    at(T0 + 6000);
    cache_lookup_t lk;
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_STALE);
    CU_ASSERT_TRUE_FATAL(lk.refresh_owner);
    cache_entry_release(lk.entry);
    /* the refresh gets a 503: the entry stays */
    CU_ASSERT_PTR_NULL(cache_fill_failed(c, KEY, lk.fill, true));
    /* the failure backs off before the next refresh */
    at(T0 + 6500);
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_STALE);
    CU_ASSERT_FALSE(lk.refresh_owner);
    cache_entry_release(lk.entry);
    /* past ttl + swr, still served stale while the origin errs */
    at(T0 + 30000);
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_STALE);
    CU_ASSERT_TRUE(lk.refresh_owner); /* one retry at a time */
    cache_entry_release(lk.entry);
    CU_ASSERT_PTR_NULL(cache_fill_failed(c, KEY, lk.fill, true));
    at(T0 + 89999);
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_STALE);
    cache_entry_release(lk.entry);
    if (lk.refresh_owner)
        CU_ASSERT_PTR_NULL(cache_fill_failed(c, KEY, lk.fill, true));
    /* ttl + swr + stale_if_error: gone */
    at(T0 + 90000);
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS);
    CU_ASSERT_TRUE(lk.leader);
    CU_ASSERT_PTR_NULL(lk.entry);
    cache_free(c);
}

static void test_no_error_no_extension(void)
{
    at(T0);
    const cache_policy_t p = {.ttl_ms = 5000, .swr_ms = 25000, .stale_if_error_ms = 60000};
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &p);
    /* no refresh failed: past ttl + swr is a MISS, the old copy a fallback only */
    at(T0 + 30000);
    cache_lookup_t lk, waiter;
    lookup(c, KEY, &p, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS);
    CU_ASSERT_TRUE(lk.leader);
    CU_ASSERT_PTR_NOT_NULL(lk.entry);
    lookup(c, KEY, &p, &waiter);
    CU_ASSERT_EQUAL(waiter.result, CACHE_MISS_WAIT);
    CU_ASSERT_PTR_NULL(waiter.entry);
    waited_t w = {0};
    uint64_t t;
    ASSERT_OK(cache_wait_register(c, KEY, on_wait, &w, &t));
    /* the leader's upstream fails: it serves its fallback, the waiter gets it too */
    cache_waiters_t *list = cache_fill_failed(c, KEY, lk.fill, true);
    cache_waiters_run(list);
    CU_ASSERT_EQUAL(w.calls, 1);
    CU_ASSERT_EQUAL(w.outcome, CACHE_WAIT_STALE);
    CU_ASSERT_PTR_EQUAL(w.entry, lk.entry);
    cache_entry_release(w.entry);
    cache_entry_release(lk.entry);
    cache_free(c);
}

static void test_fill_failed_without_copy_bypasses(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    waited_t w = {0};
    uint64_t t;
    ASSERT_OK(cache_wait_register(c, KEY, on_wait, &w, &t));
    /* e.g. a 404 or a no-store response: nothing stored, waiters go upstream */
    cache_waiters_run(cache_fill_failed(c, KEY, lk.fill, false));
    CU_ASSERT_EQUAL(w.calls, 1);
    CU_ASSERT_EQUAL(w.outcome, CACHE_WAIT_BYPASS);
    CU_ASSERT_PTR_NULL(w.entry);
    cache_stats_t s;
    cache_stats(c, &s);
    CU_ASSERT_EQUAL(s.entries, 0);
    lookup(c, KEY, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS);
    cache_free(c);
}

static void test_etag_and_304(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &runbook);
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    char tag[CACHE_ETAG_BUF];
    cache_etag(BODY, strlen(BODY), tag);
    CU_ASSERT_STRING_EQUAL(lk.entry->etag, tag);
    CU_ASSERT_EQUAL(strlen(tag), 18);
    CU_ASSERT_EQUAL(tag[0], '"');
    CU_ASSERT_EQUAL(tag[17], '"');
    char other[CACHE_ETAG_BUF];
    cache_etag("{\"data\":[],\"count\":1}", strlen(BODY), other);
    CU_ASSERT_STRING_NOT_EQUAL(tag, other);

    char list[128];
    CU_ASSERT_TRUE(cache_etag_match(tag, lk.entry->etag));
    snprintf(list, sizeof list, "\"aaa\", W/%s", tag);
    CU_ASSERT_TRUE(cache_etag_match(list, lk.entry->etag));
    snprintf(list, sizeof list, "\"a,b\" ,%s", tag);
    CU_ASSERT_TRUE(cache_etag_match(list, lk.entry->etag));
    CU_ASSERT_TRUE(cache_etag_match(" * ", lk.entry->etag));
    CU_ASSERT_FALSE(cache_etag_match(other, lk.entry->etag));
    CU_ASSERT_FALSE(cache_etag_match("", lk.entry->etag));
    CU_ASSERT_FALSE(cache_etag_match(NULL, lk.entry->etag));
    snprintf(list, sizeof list, "%.17s", tag); /* unterminated */
    CU_ASSERT_FALSE(cache_etag_match(list, lk.entry->etag));
    cache_entry_release(lk.entry);
    cache_free(c);
}

static void test_lru_bound(void)
{
    at(T0);
    size_t max = 64 * 1024;
    cache_t *c = cache_new(max, 8 * 1024);
    char body[1000];
    memset(body, 'b', sizeof body);
    char key[32];
    for (int i = 0; i < 200; i++) {
        snprintf(key, sizeof key, "k%d", i);
        cache_lookup_t lk;
        lookup(c, key, &runbook, &lk);
        CU_ASSERT_TRUE(lk.leader);
        cache_waiters_run(cache_store(c, key, lk.fill, 200, "text/plain", body, sizeof body));
        if (i == 5) {
            /* touch k0: most recently used now */
            lookup(c, "k0", &runbook, &lk);
            CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
            cache_entry_release(lk.entry);
        }
        cache_stats_t s;
        cache_stats(c, &s);
        CU_ASSERT_TRUE(s.bytes <= max);
    }
    cache_stats_t s;
    cache_stats(c, &s);
    CU_ASSERT_TRUE(s.evictions > 0);
    CU_ASSERT_TRUE(s.entries > 10 && s.entries < 65);
    cache_lookup_t lk;
    lookup(c, "k199", &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_HIT); /* newest kept */
    cache_entry_release(lk.entry);
    lookup(c, "k1", &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS); /* oldest evicted */
    cache_waiters_run(cache_fill_failed(c, "k1", lk.fill, false));

    /* an entry above the per-entry maximum is not stored, but waiters still get it */
    char *big = calloc(1, 9000);
    lookup(c, "big", &runbook, &lk);
    waited_t w = {0};
    uint64_t t;
    ASSERT_OK(cache_wait_register(c, "big", on_wait, &w, &t));
    cache_waiters_run(cache_store(c, "big", lk.fill, 200, NULL, big, 9000));
    CU_ASSERT_EQUAL(w.outcome, CACHE_WAIT_FILLED);
    CU_ASSERT_PTR_NOT_NULL(w.entry);
    if (w.entry)
        CU_ASSERT_EQUAL(w.entry->body_len, 9000);
    cache_entry_release(w.entry);
    lookup(c, "big", &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS);
    cache_waiters_run(cache_fill_failed(c, "big", lk.fill, false));
    free(big);
    cache_free(c);
}

static void test_entry_outlives_eviction(void)
{
    at(T0);
    cache_t *c = cache_new(4096, 4096);
    fill(c, "a", &runbook);
    cache_lookup_t held;
    lookup(c, "a", &runbook, &held);
    CU_ASSERT_EQUAL_FATAL(held.result, CACHE_HIT);
    char body[3800] = {0};
    cache_lookup_t lk;
    lookup(c, "b", &runbook, &lk);
    cache_waiters_run(cache_store(c, "b", lk.fill, 200, NULL, body, sizeof body));
    lookup(c, "a", &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS); /* evicted from the table ... */
    cache_waiters_run(cache_fill_failed(c, "a", lk.fill, false));
    /* ... but the reference held while serving is intact (ASan checks) */
    CU_ASSERT_EQUAL(memcmp(held.entry->body, BODY, strlen(BODY)), 0);
    cache_entry_release(held.entry);
    cache_free(c);
}

static void test_key_isolation_and_shared(void)
{
    const char *path = "/api/v1/analytics/%65vents";
    const char *q1 = "?b=2&a=1";
    const char *q2 = "a=1&b=2";
    cache_key_parts_t alice = {.route_id = "events",
                               .method = "GET",
                               .path = path,
                               .query = q1,
                               .custom = "events:{\"a\":\"1\"}",
                               .tenant = "acme",
                               .principal = "alice"};
    cache_key_parts_t bob = alice;
    bob.principal = "bob";
    cache_key_parts_t other_tenant = alice;
    other_tenant.tenant = "globex";
    char *ka = cache_key_build(&alice), *kb = cache_key_build(&bob);
    char *kt = cache_key_build(&other_tenant);
    CU_ASSERT_STRING_NOT_EQUAL(ka, kb);
    CU_ASSERT_STRING_NOT_EQUAL(ka, kt);
    alice.query = q2;
    char *ka2 = cache_key_build(&alice);
    CU_ASSERT_STRING_EQUAL(ka, ka2);
    cache_key_parts_t plain = alice;
    plain.path = "/api/v1/analytics/events";
    char *kp = cache_key_build(&plain);
    CU_ASSERT_STRING_EQUAL(ka, kp); /* %65 is 'e' */
    free(kp);
    cache_key_parts_t head = alice;
    head.method = "HEAD";
    char *kh = cache_key_build(&head);
    CU_ASSERT_STRING_EQUAL(ka, kh);

    /* alice's copy is never bob's */
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, ka, &runbook);
    cache_lookup_t lk;
    lookup(c, kb, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_MISS);
    cache_waiters_run(cache_fill_failed(c, kb, lk.fill, false));

    /* shared: one copy for every principal and tenant */
    alice.shared = bob.shared = other_tenant.shared = true;
    char *sa = cache_key_build(&alice), *sb = cache_key_build(&bob);
    char *st = cache_key_build(&other_tenant);
    CU_ASSERT_STRING_EQUAL(sa, sb);
    CU_ASSERT_STRING_EQUAL(sa, st);
    CU_ASSERT_STRING_NOT_EQUAL(sa, ka);
    fill(c, sa, &runbook);
    lookup(c, sb, &runbook, &lk);
    CU_ASSERT_EQUAL(lk.result, CACHE_HIT);
    cache_entry_release(lk.entry);

    /* a part cannot forge its neighbour */
    cache_key_parts_t x = {.tenant = "a;u1:b", .principal = ""};
    cache_key_parts_t y = {.tenant = "a", .principal = "b"};
    char *kx = cache_key_build(&x), *ky = cache_key_build(&y);
    CU_ASSERT_STRING_NOT_EQUAL(kx, ky);

    cache_free(c);
    free(ka), free(kb), free(kt), free(ka2), free(kh);
    free(sa), free(sb), free(st), free(kx), free(ky);
}

static void test_headers(void)
{
    at(T0);
    cache_t *c = cache_new(1 << 20, 1 << 16);
    fill(c, KEY, &runbook);
    at(T0 + 12500);
    cache_lookup_t lk;
    lookup(c, KEY, &runbook, &lk);
    CU_ASSERT_EQUAL(cache_age_s(lk.entry), 12);
    CU_ASSERT_EQUAL(cache_ttl_s(lk.entry, &runbook), -8);
    cache_waiters_run(cache_fill_failed(c, KEY, lk.fill, false));
    at(T0 + 1500);
    CU_ASSERT_EQUAL(cache_age_s(lk.entry), 1);
    CU_ASSERT_EQUAL(cache_ttl_s(lk.entry, &runbook), 3);
    cache_entry_release(lk.entry);
    cache_free(c);

    char v[CACHE_STATUS_MAX];
    cache_status_value(v, sizeof v, CACHE_OUT_HIT, 12, false, false);
    CU_ASSERT_STRING_EQUAL(v, "gw; hit; ttl=12");
    cache_status_value(v, sizeof v, CACHE_OUT_STALE, -3, false, false);
    CU_ASSERT_STRING_EQUAL(v, "gw; hit; ttl=-3");
    cache_status_value(v, sizeof v, CACHE_OUT_MISS, 0, true, false);
    CU_ASSERT_STRING_EQUAL(v, "gw; fwd=uri-miss; stored");
    cache_status_value(v, sizeof v, CACHE_OUT_REFRESH, 0, false, true);
    CU_ASSERT_STRING_EQUAL(v, "gw; fwd=stale; collapsed");
    cache_status_value(v, sizeof v, CACHE_OUT_BYPASS, 0, false, false);
    CU_ASSERT_STRING_EQUAL(v, "gw; fwd=bypass");
    CU_ASSERT_STRING_EQUAL(cache_x_status(CACHE_OUT_HIT), "HIT");
    CU_ASSERT_STRING_EQUAL(cache_x_status(CACHE_OUT_STALE), "STALE");
    CU_ASSERT_STRING_EQUAL(cache_x_status(CACHE_OUT_MISS), "MISS");
    CU_ASSERT_STRING_EQUAL(cache_x_status(CACHE_OUT_REFRESH), "REFRESH");
    CU_ASSERT_STRING_EQUAL(cache_x_status(CACHE_OUT_BYPASS), "BYPASS");
}

static void test_storable(void)
{
    CU_ASSERT_TRUE(cache_storable(200, NULL, false));
    CU_ASSERT_TRUE(cache_storable(200, "public, max-age=60", false));
    CU_ASSERT_TRUE(cache_storable(200, "max-age=5, no-cache=\"x, private\"", false));
    CU_ASSERT_FALSE(cache_storable(404, NULL, false));
    CU_ASSERT_FALSE(cache_storable(500, NULL, false));
    CU_ASSERT_FALSE(cache_storable(200, NULL, true)); /* Set-Cookie */
    CU_ASSERT_FALSE(cache_storable(200, "no-store", false));
    CU_ASSERT_FALSE(cache_storable(200, "max-age=0, No-Store", false));
    CU_ASSERT_FALSE(cache_storable(200, "private", false));
    CU_ASSERT_FALSE(cache_storable(200, "public,private=\"set-cookie\"", false));
    CU_ASSERT_TRUE(cache_storable(200, "privately", false));
}

static void test_siphash_vectors(void)
{
#ifdef ECOM_TESTABLE
    /* the reference vectors: key 00..0f, message 00..(n-1) */
    uint64_t k0 = 0x0706050403020100ULL, k1 = 0x0f0e0d0c0b0a0908ULL;
    unsigned char msg[16];
    for (int i = 0; i < 16; i++)
        msg[i] = (unsigned char)i;
    CU_ASSERT_EQUAL(siphash24(msg, 0, k0, k1), 0x726fdb47dd0e0e31ULL);
    CU_ASSERT_EQUAL(siphash24(msg, 1, k0, k1), 0x74f839c593dc67fdULL);
    CU_ASSERT_EQUAL(siphash24(msg, 8, k0, k1), 0x93f5f5799a932462ULL);
    CU_ASSERT_EQUAL(siphash24(msg, 15, k0, k1), 0xa129ca6149be45e5ULL);
#else
    CU_PASS("siphash24 is static in this build");
#endif
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"vector: 0 <= age < 5 s is a HIT, no upstream", test_vector_hit_under_ttl},
        {"vector: 5..30 s STALE, one refresh among 100", test_vector_stale_one_refresh},
        {"vector: >= 30 s MISS, one leader among 100", test_vector_miss_coalesced},
        {"first miss; register after the fill", test_first_miss_and_register_after_fill},
        {"waiter cancel and lock timeout takeover", test_waiter_cancel_and_lock_timeout},
        {"stale-if-error", test_stale_if_error},
        {"no extension without an error; fallback", test_no_error_no_extension},
        {"failed fill without a copy bypasses", test_fill_failed_without_copy_bypasses},
        {"ETag and If-None-Match", test_etag_and_304},
        {"LRU eviction under the byte bound", test_lru_bound},
        {"a held entry outlives its eviction", test_entry_outlives_eviction},
        {"keys: per principal, per tenant, shared", test_key_isolation_and_shared},
        {"Age, ttl, Cache-Status, X-Cache-Status", test_headers},
        {"storable responses", test_storable},
        {"SipHash-2-4 reference vectors", test_siphash_vectors},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_cache", tests, setup, teardown);
}
