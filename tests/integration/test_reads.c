/* tests/integration/test_reads.c: the services' read routes over real HTTP,
 * against `ecom all` (gateway, drainer and services in one process) in memory
 * and on PostgreSQL + Redis (the same checks on both):
 *   GET /api/v1/notifications/deliveries?subject=&limit=&cursor=  payments and
 *     OTP requests make the notification service record deliveries;
 *   GET /api/v1/analytics/stats?window=&type=  POSTed events are counted.
 * Exact counts, newest-first order, keyset pages without duplicates or gaps,
 * tenant isolation, the permissions of each route, and a 400 problem for every
 * bad parameter. Development mode: token-less requests act as the dev
 * principal (subject "dev"); tokens signed with the dev secret check the
 * permissions. Each stack is stopped with SIGTERM and must exit 0
 * (sanitizers clean). Polls wait for the asynchronous pipeline; nothing is
 * asserted about how long anything took. */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/uuid.h"
#include "http-gateway/jwt.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <ctype.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DELIVERIES "/api/v1/notifications/deliveries"
#define STATS "/api/v1/analytics/stats"
#define EVENTS "/api/v1/analytics/events"
#define PAYMENTS "/api/v1/payments/payments"
#define OTP_REQUEST "/api/v1/analytics/auth/otp/request"
#define WAIT_MS 30000
#define MAX_IDS 64
#define ID_BUF 64

typedef char msgid_t[ID_BUF];

/* One `ecom all` and where it keeps its data. */
typedef struct rig {
    const char *name;
    bool pg;
    proc_t *p;
    PGconn *db; /* PostgreSQL: a connection for checks */
} rig_t;

static rig_t mem = {"memory", false, NULL, NULL};
static rig_t pgs = {"postgres", true, NULL, NULL};
static jwtk_t keys; /* the dev secret's keys, to mint tokens */
static bool keys_ok;
/* every stats poll asks a new window (from 10000 s up, apart from the fixed
 * ones the tests ask): never a cache hit */
static int window_seq;

static void reap_everything(void)
{
    proc_reap(NULL);
}

/* ---- the stacks ---- */

static bool start(rig_t *s)
{
    if (s->p)
        return true;
    char *db_env = NULL, *redis_env = NULL;
    if (s->pg) {
        const char *url = test_pg_db("reads", true);
        db_env = xasprintf("DATABASE_URL=%s", url);
        redis_env = xasprintf("REDIS_URL=%s", test_redis_db());
        s->db = PQconnectdb(url);
        if (PQstatus(s->db) != CONNECTION_OK)
            fprintf(stderr, "\n  postgres: %s\n", PQerrorMessage(s->db));
    } else {
        db_env = xstrdup("DATABASE_URL=");
        redis_env = xstrdup("REDIS_URL=");
    }
    const char *env[] = {"APP_ENV=development", "JWT_SECRET=devsecret", db_env, redis_env,
                         "OUTBOX_POLL_MS=20",   "SERVICE_BLOCK_MS=50",  NULL};
    s->p = spawn_ecom("all", env);
    free(db_env);
    free(redis_env);
    if (!s->p)
        return false;
    if (wait_ready(s->p, 30000) != 0) {
        fprintf(stderr, "\n  ecom all (%s) did not become ready\n", s->name);
        print_log(s->p);
        proc_release(s->p);
        s->p = NULL;
        return false;
    }
    return true;
}

static void stop(rig_t *s)
{
    if (s->db)
        PQfinish(s->db);
    s->db = NULL;
    if (!s->p) {
        CU_FAIL("the stack was not running");
        return;
    }
    char what[64];
    snprintf(what, sizeof what, "ecom all (%s)", s->name);
    stop_clean(s->p, what);
    s->p = NULL;
}

/* ---- HTTP helpers ---- */

static char *tenant_hdr(const char *tenant)
{
    return xasprintf("x-tenant-id: %s\r\n", tenant);
}

/* The parsed body of a 200 answer (owned), or NULL (what went wrong printed). */
static json_object *get_json(int port, const char *path, const char *hdrs)
{
    hresp_t r;
    json_object *o = NULL;
    if (hget(port, path, hdrs, &r) == 0 && expect_status(&r, 200, path))
        o = jparse(&r);
    hfree(&r);
    return o;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_int)
               ? json_object_get_int64(v)
               : -1;
}

static const char *jstring(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

static json_object *jarray(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_array) ? v : NULL;
}

static bool pay(int port, const char *hdrs, int i)
{
    char *key = unique("reads-pay-");
    char *h = xasprintf("%sIdempotency-Key: %s\r\n", hdrs, key);
    char body[160];
    snprintf(body, sizeof body, "{\"orderId\":\"o-%d\",\"amount\":%d,\"currency\":\"EUR\",\"method\":\"card\"}", i,
             1000 + i);
    hresp_t r;
    bool ok = hpost(port, PAYMENTS, h, body, &r) == 0 && expect_status(&r, 202, "POST payment");
    hfree(&r);
    free(h);
    free(key);
    return ok;
}

static bool post_event(int port, const char *hdrs, const char *type)
{
    char body[160];
    snprintf(body, sizeof body, "{\"type\":\"%s\"}", type);
    hresp_t r;
    bool ok = hpost(port, EVENTS, hdrs, body, &r) == 0 && expect_status(&r, 202, "POST event");
    hfree(&r);
    return ok;
}

static char *b64url(const char *text)
{
    size_t n = strlen(text);
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)text, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    return out;
}

/* A token signed with the dev secret for sub in tenant tid, with perms. */
static char *auth_hdr(const char *tid, const char *perm)
{
    principal_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.sub, sizeof p.sub, "reader");
    snprintf(p.tid, sizeof p.tid, "%s", tid);
    snprintf(p.perms[p.nperms++], sizeof p.perms[0], "%s", perm);
    char *tok = NULL;
    if (!keys_ok || jwtk_sign(&keys, &p, clock_now_ms() / 1000, 600, &tok) != 0)
        return NULL;
    char *h = xasprintf("Authorization: Bearer %s\r\nx-tenant-id: %s\r\n", tok, tid);
    free(tok);
    return h;
}

/* ---- deliveries ---- */

/* The message ids of a deliveries page, in order, with its shape checked:
 * count equals the rows, each row complete. -1 when malformed. */
static int page_ids(json_object *o, msgid_t *ids, int cap, const char *subject)
{
    json_object *data = jarray(o, "data");
    if (!data)
        return -1;
    int n = (int)json_object_array_length(data);
    CU_ASSERT_EQUAL(jint(o, "count"), n);
    if (n > cap)
        return -1;
    const char *prev_at = NULL;
    for (int i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(data, (size_t)i);
        const char *id = jstring(d, "messageId"), *at = jstring(d, "createdAt");
        if (!id || !at || !jstring(d, "channel") || !jstring(d, "type") || !jstring(d, "status") ||
            !jstring(d, "detail") || !jstring(d, "subject"))
            return -1;
        CU_ASSERT_STRING_EQUAL(jstring(d, "subject"), subject);
        CU_ASSERT_EQUAL(strlen(at), 24); /* 2024-01-02T03:04:05.678Z */
        CU_ASSERT_TRUE(ends_with(at, "Z"));
        if (prev_at)
            CU_ASSERT_TRUE(strcmp(prev_at, at) >= 0); /* newest first */
        prev_at = at;
        snprintf(ids[i], ID_BUF, "%s", id);
    }
    return n;
}

/* Every delivery of subject (query-encoded in subject_q) through pages of
 * limit rows, following nextCursor: each page but the last is full and has a
 * cursor, the last has none. The ids in order, or -1. */
static int walk(int port, const char *hdrs, const char *subject_q, const char *subject, int limit, msgid_t *ids,
                int cap)
{
    int total = 0;
    char *cursor = NULL;
    for (int pages = 0; pages <= cap + 1; pages++) {
        char path[512];
        snprintf(path, sizeof path, DELIVERIES "?subject=%s&limit=%d%s%s", subject_q, limit, cursor ? "&cursor=" : "",
                 cursor ? cursor : "");
        free(cursor);
        cursor = NULL;
        json_object *o = get_json(port, path, hdrs);
        int n = o ? page_ids(o, ids + total, cap - total, subject) : -1;
        if (n < 0) {
            json_object_put(o);
            return -1;
        }
        total += n;
        const char *next = jstring(o, "nextCursor");
        if (next) {
            CU_ASSERT_EQUAL(n, limit); /* a cursor only after a full page */
            cursor = xstrdup(next);
        } else {
            CU_ASSERT_TRUE(n <= limit);
        }
        json_object_put(o);
        if (!cursor)
            return total;
        CU_ASSERT_TRUE(n > 0);
    }
    free(cursor);
    CU_FAIL("pages never ended");
    return -1;
}

/* Polls until the subject has exactly want deliveries (more fails at once);
 * their ids, newest first. */
static bool wait_deliveries(int port, const char *hdrs, const char *subject_q, const char *subject, int want,
                            msgid_t *ids)
{
    int64_t end = clock_mono_ms() + WAIT_MS;
    while (clock_mono_ms() < end) {
        char path[512];
        snprintf(path, sizeof path, DELIVERIES "?subject=%s&limit=200", subject_q);
        json_object *o = get_json(port, path, hdrs);
        int n = o ? page_ids(o, ids, MAX_IDS, subject) : -1;
        json_object_put(o);
        if (n < 0 || n > want) {
            fprintf(stderr, "\n  deliveries of %s: %d, expected %d\n", subject, n, want);
            return false;
        }
        if (n == want)
            return true;
        clock_sleep_ms(20);
    }
    fprintf(stderr, "\n  deliveries of %s: never reached %d\n", subject, want);
    return false;
}

static bool in_list(const char *id, const msgid_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(ids[i], id) == 0)
            return true;
    return false;
}

static void check_bad(int port, const char *hdrs, const char *path)
{
    hresp_t r;
    CU_ASSERT_EQUAL(hget(port, path, hdrs, &r), 0);
    check_problem(&r, 400, "validation-error", NULL, path);
    hfree(&r);
}

static void deliveries(rig_t *s)
{
    CU_ASSERT_TRUE_FATAL(start(s));
    int port = s->p->port;
    char *ta = unique("rdA"), *tb = unique("rdB");
    char *ha = tenant_hdr(ta), *hb = tenant_hdr(tb);
    enum { NA = 7, NB = 2 };
    msgid_t seen[NA];      /* tenant A's ids in the order their deliveries appeared */
    msgid_t cur[MAX_IDS];  /* a listing, newest first */
    msgid_t bids[MAX_IDS]; /* tenant B's */

    /* one payment at a time, each delivered before the next: the new delivery
     * comes first and the earlier ones follow unchanged */
    for (int i = 0; i < NA; i++) {
        if (!pay(port, ha, i) || !wait_deliveries(port, ha, "dev", "dev", i + 1, cur)) {
            CU_FAIL("a payment's delivery did not appear");
            print_log(s->p);
            goto out;
        }
        for (int k = 0; k < i; k++)
            CU_ASSERT_STRING_EQUAL(cur[k + 1], seen[i - 1 - k]);
        CU_ASSERT_FALSE(in_list(cur[0], (const msgid_t *)seen, i));
        snprintf(seen[i], ID_BUF, "%s", cur[0]);
    }
    json_object *o = get_json(port, DELIVERIES "?subject=dev", ha);
    json_object *data = jarray(o, "data");
    CU_ASSERT_EQUAL(jint(o, "count"), NA); /* the default limit (50) holds them all */
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "nextCursor", NULL) && !jstring(o, "nextCursor"));
    for (size_t i = 0; data && i < json_object_array_length(data); i++) {
        json_object *d = json_object_array_get_idx(data, i);
        CU_ASSERT_STRING_EQUAL(jstring(d, "channel"), "log");
        CU_ASSERT_STRING_EQUAL(jstring(d, "type"), "payment.succeeded");
        CU_ASSERT_STRING_EQUAL(jstring(d, "status"), "sent");
    }
    json_object_put(o);

    /* tenant B: same subject, its own deliveries only */
    for (int i = 0; i < NB; i++)
        CU_ASSERT_TRUE(pay(port, hb, 100 + i));
    if (!wait_deliveries(port, hb, "dev", "dev", NB, bids)) {
        CU_FAIL("tenant B's deliveries did not appear");
        goto out;
    }
    for (int i = 0; i < NB; i++)
        CU_ASSERT_FALSE(in_list(bids[i], (const msgid_t *)seen, NA));
    CU_ASSERT_EQUAL(walk(port, ha, "dev", "dev", 200, cur, MAX_IDS), NA);
    for (int i = 0; i < NA; i++)
        CU_ASSERT_STRING_EQUAL(cur[i], seen[NA - 1 - i]);

    /* another subject of tenant A: an OTP request's delivery */
    const char *alice = "alice+reads@example.com";
    const char *alice_q = "alice%2Breads%40example.com";
    char body[128];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", alice);
    hresp_t r;
    CU_ASSERT_EQUAL(hpost(port, OTP_REQUEST, ha, body, &r), 0);
    CU_ASSERT_TRUE(expect_status(&r, 200, "OTP request"));
    hfree(&r);
    msgid_t aid[MAX_IDS];
    CU_ASSERT_TRUE(wait_deliveries(port, ha, alice_q, alice, 1, aid));
    o = get_json(port, DELIVERIES "?subject=alice%2Breads%40example.com", ha);
    data = jarray(o, "data");
    CU_ASSERT_TRUE(data && json_object_array_length(data) == 1);
    if (data && json_object_array_length(data) == 1)
        CU_ASSERT_STRING_EQUAL(jstring(json_object_array_get_idx(data, 0), "type"), "auth.otp.requested");
    json_object_put(o);
    CU_ASSERT_FALSE(in_list(aid[0], (const msgid_t *)seen, NA));
    CU_ASSERT_EQUAL(walk(port, ha, "dev", "dev", 200, cur, MAX_IDS), NA);  /* not among dev's */
    CU_ASSERT_EQUAL(walk(port, hb, alice_q, alice, 200, cur, MAX_IDS), 0); /* nor tenant B's */

    /* pages of every size: the same rows in the same order, no duplicate, no gap */
    static const int limits[] = {1, 2, 3, 6, 7, 8, 200};
    for (size_t l = 0; l < ECOM_ARRAY_LEN(limits); l++) {
        int n = walk(port, ha, "dev", "dev", limits[l], cur, MAX_IDS);
        CU_ASSERT_EQUAL(n, NA);
        for (int i = 0; i < NA && n == NA; i++)
            CU_ASSERT_STRING_EQUAL(cur[i], seen[NA - 1 - i]);
    }

    /* a cursor exactly when more rows follow: none after a last page that is full */
    o = get_json(port, DELIVERIES "?subject=dev&limit=7", ha);
    CU_ASSERT_EQUAL(jint(o, "count"), NA);
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "nextCursor", NULL) && !jstring(o, "nextCursor"));
    json_object_put(o);
    o = get_json(port, DELIVERIES "?subject=dev&limit=6", ha);
    CU_ASSERT_EQUAL(jint(o, "count"), NA - 1);
    CU_ASSERT_PTR_NOT_NULL(jstring(o, "nextCursor"));
    json_object_put(o);

    /* a cursor of tenant A's pages never shows tenant A's rows to tenant B */
    o = get_json(port, DELIVERIES "?subject=dev&limit=1", ha);
    const char *next = jstring(o, "nextCursor");
    CU_ASSERT_PTR_NOT_NULL(next);
    if (next) {
        char path[256];
        snprintf(path, sizeof path, DELIVERIES "?subject=dev&cursor=%s", next);
        json_object *ob = get_json(port, path, hb);
        int n = ob ? page_ids(ob, cur, MAX_IDS, "dev") : -1;
        CU_ASSERT_TRUE(n >= 0 && n <= NB);
        for (int i = 0; i < n; i++)
            CU_ASSERT_TRUE(in_list(cur[i], (const msgid_t *)bids, NB));
        json_object_put(ob);
    }
    json_object_put(o);

    if (s->pg) {
        CU_ASSERT_EQUAL(
            q_ll(s->db, "SELECT count(*) FROM notification.deliveries WHERE tenant = $1 AND subject = 'dev'", ta), NA);
    }

    /* bad parameters */
    char longsub[300], path[400];
    memset(longsub, 'a', 257);
    longsub[257] = '\0';
    snprintf(path, sizeof path, DELIVERIES "?subject=%s", longsub);
    check_bad(port, ha, path);
    longsub[256] = '\0'; /* 256 bytes: allowed */
    CU_ASSERT_EQUAL(walk(port, ha, longsub, longsub, 50, cur, MAX_IDS), 0);
    char *c_baduuid = b64url("1732612345123456:not-a-uuid-at-all-not-a-uuid-at-all00:log");
    char *c_badch = b64url("1732612345123456:01900000-0000-7000-8000-000000000000:LOG");
    char *c_big = b64url("12345678901234567:01900000-0000-7000-8000-000000000000:log");
    char *c_more = b64url("1:01900000-0000-7000-8000-000000000000:log:x");
    char *c_ok = b64url("1732612345123456:01900000-0000-7000-8000-000000000000:log");
    const char *bad[] = {DELIVERIES,
                         DELIVERIES "?limit=5",
                         DELIVERIES "?subject=",
                         DELIVERIES "?subject=%01x",
                         DELIVERIES "?subject=a%FFb",
                         DELIVERIES "?subject=a%C0%80",
                         DELIVERIES "?subject=%ED%A0%80",
                         DELIVERIES "?subject=dev&limit=0",
                         DELIVERIES "?subject=dev&limit=201",
                         DELIVERIES "?subject=dev&limit=abc",
                         DELIVERIES "?subject=dev&limit=-1",
                         DELIVERIES "?subject=dev&limit=1.5",
                         DELIVERIES "?subject=dev&limit=",
                         DELIVERIES "?subject=dev&limit=%2B5",
                         DELIVERIES "?subject=dev&cursor=",
                         DELIVERIES "?subject=dev&cursor=zzz!",
                         DELIVERIES "?subject=dev&cursor=AAAA",
                         NULL};
    for (int i = 0; bad[i]; i++)
        check_bad(port, ha, bad[i]);
    const char *bad_cursors[] = {c_baduuid, c_badch, c_big, c_more};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad_cursors); i++) {
        snprintf(path, sizeof path, DELIVERIES "?subject=dev&cursor=%s", bad_cursors[i]);
        check_bad(port, ha, path);
    }
    /* a well-formed cursor from before these deliveries: nothing after it */
    snprintf(path, sizeof path, DELIVERIES "?subject=dev&cursor=%s", c_ok);
    o = get_json(port, path, ha);
    CU_ASSERT_EQUAL(jint(o, "count"), 0);
    json_object_put(o);
    free(c_baduuid);
    free(c_badch);
    free(c_big);
    free(c_more);
    free(c_ok);

    /* permission notifications:read; the token's tenant */
    char *wrong = auth_hdr(ta, "events:read"), *right = auth_hdr(ta, "notifications:read");
    CU_ASSERT_PTR_NOT_NULL(wrong);
    CU_ASSERT_PTR_NOT_NULL(right);
    if (wrong && right) {
        CU_ASSERT_EQUAL(hget(port, DELIVERIES "?subject=dev", wrong, &r), 0);
        check_problem(&r, 403, "insufficient-scope", NULL, "deliveries without notifications:read");
        hfree(&r);
        CU_ASSERT_EQUAL(walk(port, right, "dev", "dev", 3, cur, MAX_IDS), NA);
    }
    free(wrong);
    free(right);
out:
    free(ta);
    free(tb);
    free(ha);
    free(hb);
}

/* ---- stats ---- */

/* GET stats with a new window and extra query, as hdrs, until
 * total is want; the answer (owned) with *window the window asked. */
static json_object *wait_stats(int port, const char *hdrs, const char *extra, int64_t want, int *window)
{
    int64_t end = clock_mono_ms() + WAIT_MS;
    while (clock_mono_ms() < end) {
        *window = 10000 + window_seq++;
        char path[256];
        snprintf(path, sizeof path, STATS "?window=%d%s", *window, extra);
        json_object *o = get_json(port, path, hdrs);
        int64_t total = jint(o, "total");
        if (total == want)
            return o;
        json_object_put(o);
        if (total < 0 || total > want) {
            fprintf(stderr, "\n  stats total %lld, expected %lld\n", (long long)total, (long long)want);
            return NULL;
        }
        clock_sleep_ms(20);
    }
    fprintf(stderr, "\n  stats never reached a total of %lld\n", (long long)want);
    return NULL;
}

/* data is exactly these (type, count) rows in this order, total their sum. */
static bool stats_are(json_object *o, const char *const *types, const int *counts, int n)
{
    json_object *data = jarray(o, "data");
    if (!data || (int)json_object_array_length(data) != n) {
        fprintf(stderr, "\n  stats: %s\n", o ? json_object_to_json_string(o) : "(none)");
        return false;
    }
    int64_t sum = 0;
    for (int i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(data, (size_t)i);
        const char *t = jstring(d, "type");
        if (!t || strcmp(t, types[i]) != 0 || jint(d, "count") != counts[i]) {
            fprintf(stderr, "\n  stats: %s\n", json_object_to_json_string(o));
            return false;
        }
        sum += counts[i];
    }
    return jint(o, "total") == sum;
}

/* "since" is a whole minute in RFC 3339. */
static bool since_ok(json_object *o)
{
    const char *s = jstring(o, "since");
    return s && strlen(s) == 24 && s[4] == '-' && s[10] == 'T' && ends_with(s, ":00.000Z");
}

static void stats(rig_t *s)
{
    CU_ASSERT_TRUE_FATAL(start(s));
    int port = s->p->port;
    char *ta = unique("rsA"), *tb = unique("rsB");
    char *ha = tenant_hdr(ta), *hb = tenant_hdr(tb);
    /* tenant A: 5 purchase, 3 view, 3 signup, 1 refund (interleaved); B: 2 purchase */
    static const char *const a_types[] = {"purchase", "signup", "view", "refund"};
    static const int a_counts[] = {5, 3, 3, 1};
    for (int round = 0; round < 5; round++) {
        if (round < 3)
            CU_ASSERT_TRUE(post_event(port, ha, "view"));
        CU_ASSERT_TRUE(post_event(port, ha, "purchase"));
        if (round < 2)
            CU_ASSERT_TRUE(post_event(port, hb, "purchase"));
        if (round < 3)
            CU_ASSERT_TRUE(post_event(port, ha, "signup"));
        if (round == 4)
            CU_ASSERT_TRUE(post_event(port, ha, "refund"));
    }
    int w;
    json_object *o = wait_stats(port, ha, "", 12, &w);
    if (!o) {
        CU_FAIL("the events were not counted");
        print_log(s->p);
        goto out;
    }
    json_object_put(o);
    o = wait_stats(port, hb, "", 2, &w);
    CU_ASSERT_PTR_NOT_NULL(o);
    CU_ASSERT_TRUE(stats_are(o, (const char *const[]){"purchase"}, (const int[]){2}, 1));
    json_object_put(o);
    /* everything is in: exact, count descending then type, the window echoed */
    o = wait_stats(port, ha, "", 12, &w);
    CU_ASSERT_TRUE(stats_are(o, a_types, a_counts, 4));
    CU_ASSERT_EQUAL(jint(o, "window"), w);
    CU_ASSERT_TRUE(since_ok(o));
    json_object_put(o);

    /* filtered by type */
    o = wait_stats(port, ha, "&type=view", 3, &w);
    CU_ASSERT_TRUE(stats_are(o, (const char *const[]){"view"}, (const int[]){3}, 1));
    json_object_put(o);
    o = wait_stats(port, ha, "&type=nothing.here", 0, &w);
    CU_ASSERT_TRUE(stats_are(o, NULL, NULL, 0));
    json_object_put(o);
    o = wait_stats(port, hb, "&type=view", 0, &w);
    CU_ASSERT_TRUE(stats_are(o, NULL, NULL, 0));
    json_object_put(o);

    /* the default window, and the bounds */
    o = get_json(port, STATS, ha);
    CU_ASSERT_EQUAL(jint(o, "window"), 3600);
    CU_ASSERT_TRUE(stats_are(o, a_types, a_counts, 4));
    CU_ASSERT_TRUE(since_ok(o));
    json_object_put(o);
    o = get_json(port, STATS "?window=86400", ha);
    CU_ASSERT_TRUE(stats_are(o, a_types, a_counts, 4));
    json_object_put(o);
    o = get_json(port, STATS "?window=60", ha);
    CU_ASSERT_EQUAL(jint(o, "window"), 60);
    CU_ASSERT_TRUE(since_ok(o));
    json_object_put(o);

    /* cached like the events list: the same query again is a hit, with the same
     * answer; another order of the parameters is the same key */
    hresp_t r1, r2, r3;
    CU_ASSERT_EQUAL(hget(port, STATS "?window=7777&type=view", ha, &r1), 0);
    CU_ASSERT_EQUAL(hget(port, STATS "?window=7777&type=view", ha, &r2), 0);
    CU_ASSERT_EQUAL(hget(port, STATS "?type=view&window=7777", ha, &r3), 0);
    char v1[32] = "", v2[32] = "", v3[32] = "";
    hheader(&r1, "X-Cache-Status", v1, sizeof v1);
    hheader(&r2, "X-Cache-Status", v2, sizeof v2);
    hheader(&r3, "X-Cache-Status", v3, sizeof v3);
    CU_ASSERT_STRING_EQUAL(v1, "MISS");
    CU_ASSERT_STRING_EQUAL(v2, "HIT");
    CU_ASSERT_STRING_EQUAL(v3, "HIT");
    CU_ASSERT_TRUE(r1.body && r2.body && strcmp(r1.body, r2.body) == 0);
    hfree(&r1);
    hfree(&r2);
    hfree(&r3);
    /* the cache is per tenant */
    o = get_json(port, STATS "?window=7777&type=view", hb);
    CU_ASSERT_TRUE(stats_are(o, NULL, NULL, 0));
    json_object_put(o);

    /* bad parameters */
    char longtype[200], path[300];
    memset(longtype, 't', 129);
    longtype[129] = '\0';
    snprintf(path, sizeof path, STATS "?type=%s", longtype);
    check_bad(port, ha, path);
    const char *bad[] = {STATS "?window=59",
                         STATS "?window=86401",
                         STATS "?window=0",
                         STATS "?window=abc",
                         STATS "?window=-60",
                         STATS "?window=3600.5",
                         STATS "?window=",
                         STATS "?window=%2B60",
                         STATS "?window=1e3",
                         STATS "?type=",
                         STATS "?type=a%20b",
                         STATS "?window=3600&type=%C3%A9",
                         NULL};
    for (int i = 0; bad[i]; i++)
        check_bad(port, ha, bad[i]);

    /* permission events:read */
    char *wrong = auth_hdr(ta, "notifications:read"), *right = auth_hdr(ta, "events:read");
    if (wrong && right) {
        hresp_t r;
        CU_ASSERT_EQUAL(hget(port, STATS "?window=5000", wrong, &r), 0);
        check_problem(&r, 403, "insufficient-scope", NULL, "stats without events:read");
        hfree(&r);
        o = get_json(port, STATS "?window=5001", right);
        CU_ASSERT_TRUE(stats_are(o, a_types, a_counts, 4));
        json_object_put(o);
    } else {
        CU_FAIL("no tokens");
    }
    free(wrong);
    free(right);

    if (s->pg) {
        /* the counters agree with the events they count */
        CU_ASSERT_EQUAL(q_ll(s->db,
                             "SELECT (SELECT coalesce(sum(count), 0) FROM analytics.counts_by_minute WHERE tenant = $1)"
                             " - (SELECT count(*) FROM analytics.events WHERE tenant = $1)",
                             ta),
                        0);
        CU_ASSERT_EQUAL(q_ll(s->db, "SELECT count(*) FROM analytics.events WHERE tenant = $1", ta), 12);
        /* the window's edge: counts of two hours ago are in a 7300 s window
         * (which starts at least 7300 s back), not in a 7000 s one (at most
         * 7059 s back) */
        PGresult *ins = pg_query(s->db,
                                 "INSERT INTO analytics.counts_by_minute (tenant, type, minute, count)"
                                 " VALUES ($1, 'old', date_trunc('minute', now() - interval '2 hours'), 4)",
                                 1, (const char *const[]){ta});
        CU_ASSERT_PTR_NOT_NULL(ins);
        PQclear(ins);
        o = get_json(port, STATS "?window=7000", ha);
        CU_ASSERT_TRUE(stats_are(o, a_types, a_counts, 4));
        json_object_put(o);
        o = get_json(port, STATS "?window=7300", ha);
        CU_ASSERT_TRUE(stats_are(o, (const char *const[]){"purchase", "old", "signup", "view", "refund"},
                                 (const int[]){5, 4, 3, 3, 1}, 5));
        json_object_put(o);
    }
out:
    free(ta);
    free(tb);
    free(ha);
    free(hb);
}

/* ---- GET /events filters: type, since, limit, cursor ---- */

static int data_len(json_object *o)
{
    json_object *d;
    return o && json_object_object_get_ex(o, "data", &d) ? (int)json_object_array_length(d) : -1;
}

static const char *next_cursor(json_object *o)
{
    json_object *c;
    return o && json_object_object_get_ex(o, "nextCursor", &c) && c ? json_object_get_string(c) : NULL;
}

static void events_filters(rig_t *s)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(s->p);
    int port = s->p->port;
    char *tenant = unique("evf");
    char *h = xasprintf("x-tenant-id: %s\r\n", tenant);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(post_event(port, h, "old.kind"));
    clock_sleep_ms(20);
    int64_t cut = clock_now_ms();
    clock_sleep_ms(20);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_TRUE(post_event(port, h, "new.kind"));
    /* wait until all 8 are in the read model (a fresh limit each time: no cache hit) */
    int have = 0;
    for (int t = 0; t < 200 && have != 8; t++) {
        char path[128];
        snprintf(path, sizeof path, EVENTS "?limit=%d", 100 + t);
        json_object *o = get_json(port, path, h);
        have = data_len(o);
        json_object_put(o);
        if (have != 8)
            clock_sleep_ms(50);
    }
    CU_ASSERT_EQUAL_FATAL(have, 8);
    char path[256];
    /* since, in milliseconds and in RFC 3339 */
    snprintf(path, sizeof path, EVENTS "?since=%lld&limit=50", (long long)cut);
    json_object *o = get_json(port, path, h);
    CU_ASSERT_EQUAL(data_len(o), 5);
    CU_ASSERT_PTR_NULL(next_cursor(o));
    json_object_put(o);
    time_t secs = (time_t)(cut / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[64];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(cut % 1000));
    snprintf(path, sizeof path, EVENTS "?since=%s&limit=51", ts);
    o = get_json(port, path, h);
    CU_ASSERT_EQUAL(data_len(o), 5);
    json_object_put(o);
    snprintf(path, sizeof path, EVENTS "?since=%lld&type=old.kind", (long long)cut);
    o = get_json(port, path, h);
    CU_ASSERT_EQUAL(data_len(o), 0);
    json_object_put(o);
    /* pages: 3 + 3 + 2, nextCursor null exactly on the last page, no id twice */
    char ids[8][64];
    int seen = 0;
    char cursor[64] = "";
    for (int page = 0; page < 4; page++) {
        if (cursor[0])
            snprintf(path, sizeof path, EVENTS "?limit=3&cursor=%s", cursor);
        else
            snprintf(path, sizeof path, EVENTS "?limit=3");
        o = get_json(port, path, h);
        json_object *d = NULL;
        CU_ASSERT_TRUE_FATAL(o && json_object_object_get_ex(o, "data", &d));
        for (size_t i = 0; i < json_object_array_length(d) && seen < 8; i++) {
            json_object *id;
            json_object_object_get_ex(json_object_array_get_idx(d, i), "id", &id);
            for (int k = 0; k < seen; k++)
                CU_ASSERT_STRING_NOT_EQUAL(ids[k], json_object_get_string(id));
            snprintf(ids[seen++], sizeof ids[0], "%s", json_object_get_string(id));
        }
        const char *next = next_cursor(o);
        CU_ASSERT_EQUAL(next != NULL, page < 2);
        snprintf(cursor, sizeof cursor, "%s", next ? next : "");
        json_object_put(o);
        if (!next)
            break;
    }
    CU_ASSERT_EQUAL(seen, 8);
    /* a cursor in upper case (or any id, stored or not) pages on from there */
    char upper[64];
    snprintf(upper, sizeof upper, "%s", ids[2]);
    for (char *c = upper; *c; c++)
        *c = (char)toupper((unsigned char)*c);
    snprintf(path, sizeof path, EVENTS "?limit=3&cursor=%s", upper);
    o = get_json(port, path, h);
    json_object *d = NULL;
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "data", &d) && json_object_array_length(d) == 3);
    for (size_t i = 0; d && i < json_object_array_length(d) && i < 3; i++) {
        json_object *id;
        json_object_object_get_ex(json_object_array_get_idx(d, i), "id", &id);
        CU_ASSERT_STRING_EQUAL(json_object_get_string(id), ids[3 + i]);
    }
    json_object_put(o);
    /* bad values */
    const char *bad[] = {EVENTS "?since=yesterday", EVENTS "?since=2026-11-26T10:00:00+02:00", EVENTS "?since=-5",
                         EVENTS "?limit=0", EVENTS "?cursor=nope"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hresp_t r;
        hget(port, bad[i], h, &r);
        check_problem(&r, 400, "validation-error", NULL, bad[i]);
        hfree(&r);
    }
    free(h);
    free(tenant);
}

/* ---- GET /payments/:id with its refunds ---- */

/* POSTs path with a fresh Idempotency-Key; the answer's status, and its "id" into id. */
static int post_keyed(int port, const char *hdrs, const char *path, const char *body, char id[UUID_STR_LEN])
{
    char *key = unique("reads-refund-");
    char *h = xasprintf("%sIdempotency-Key: %s\r\n", hdrs, key);
    hresp_t r;
    int status = hpost(port, path, h, body, &r) == 0 ? r.status : 0;
    id[0] = '\0';
    jstr(&r, "id", id, UUID_STR_LEN);
    hfree(&r);
    free(h);
    free(key);
    return status;
}

/* The payment's read once it has n refunds listed (owned), or NULL. */
static json_object *wait_refunds(int port, const char *hdrs, const char *path, size_t n)
{
    int64_t end = clock_mono_ms() + WAIT_MS;
    while (clock_mono_ms() < end) {
        json_object *o = get_json(port, path, hdrs);
        json_object *list = jarray(o, "refunds");
        if (list && json_object_array_length(list) >= n &&
            strcmp(jstring(o, "status") ? jstring(o, "status") : "", "succeeded") == 0)
            return o;
        json_object_put(o);
        clock_sleep_ms(50);
    }
    return NULL;
}

/* GET /payments/:id lists the payment's decided refunds by id: two asked
 * right after each other (the second passes the gateway's check only while
 * the first is not applied yet, and the service then refuses it), one
 * succeeded and, when the second got through, one rejected with its reason.
 * Another tenant reads 404. */
static void payment_refunds(rig_t *s)
{
    CU_ASSERT_TRUE_FATAL(start(s));
    int port = s->p->port;
    char *tenant = unique("rfA"), *other = unique("rfB");
    char *h = tenant_hdr(tenant), *ho = tenant_hdr(other);
    char pid[UUID_STR_LEN], r1[UUID_STR_LEN], r2[UUID_STR_LEN], path[160];
    CU_ASSERT_EQUAL(post_keyed(port, h, PAYMENTS,
                               "{\"orderId\":\"o-rf\",\"amount\":1000,\"currency\":\"EUR\",\"method\":\"card\"}", pid),
                    202);
    snprintf(path, sizeof path, PAYMENTS "/%s", pid);
    json_object *o = wait_refunds(port, h, path, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT_EQUAL(json_object_array_length(jarray(o, "refunds")), 0);
    json_object_put(o);
    char rpath[200];
    snprintf(rpath, sizeof rpath, "%s/refund", path);
    CU_ASSERT_EQUAL(post_keyed(port, h, rpath, "{\"amount\":600}", r1), 202);
    int second = post_keyed(port, h, rpath, "{\"amount\":500}", r2);
    CU_ASSERT_TRUE(second == 202 || second == 422);
    size_t want = second == 202 ? 2 : 1;
    if (second == 422)
        fprintf(stderr, "\n  (%s: the first refund was applied before the second was asked)\n", s->name);
    o = wait_refunds(port, h, path, want);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    json_object *list = jarray(o, "refunds");
    CU_ASSERT_EQUAL(json_object_array_length(list), want);
    json_object *f = json_object_array_get_idx(list, 0);
    CU_ASSERT_STRING_EQUAL(jstring(f, "id") ? jstring(f, "id") : "", r1);
    CU_ASSERT_STRING_EQUAL(jstring(f, "status") ? jstring(f, "status") : "", "succeeded");
    CU_ASSERT_EQUAL(jint(f, "amount"), 600);
    CU_ASSERT_PTR_NOT_NULL(jstring(f, "createdAt"));
    if (want == 2) {
        f = json_object_array_get_idx(list, 1);
        CU_ASSERT_STRING_EQUAL(jstring(f, "id") ? jstring(f, "id") : "", r2);
        CU_ASSERT_STRING_EQUAL(jstring(f, "status") ? jstring(f, "status") : "", "rejected");
        CU_ASSERT_EQUAL(jint(f, "amount"), 500);
        CU_ASSERT_PTR_NOT_NULL(jstring(f, "reason") ? strstr(jstring(f, "reason"), "exceeds") : NULL);
    }
    CU_ASSERT_EQUAL(jint(o, "refunded"), 600);
    json_object_put(o);
    hresp_t r;
    CU_ASSERT_EQUAL(hget(port, path, ho, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404);
    hfree(&r);
    free(h);
    free(ho);
    free(tenant);
    free(other);
}

/* ---- the tests ---- */

static void test_memory_events(void)
{
    events_filters(&mem);
}

static void test_pg_events(void)
{
    events_filters(&pgs);
}

static void test_memory_deliveries(void)
{
    deliveries(&mem);
}

static void test_memory_stats(void)
{
    stats(&mem);
}

static void test_memory_refunds(void)
{
    payment_refunds(&mem);
}

static void test_pg_refunds(void)
{
    payment_refunds(&pgs);
}

static void test_memory_stop(void)
{
    stop(&mem);
}

static void test_pg_deliveries(void)
{
    deliveries(&pgs);
}

static void test_pg_stats(void)
{
    stats(&pgs);
}

static void test_pg_stop(void)
{
    stop(&pgs);
}

static int suite_init(void)
{
    keys_ok = test_jwt_keys(&keys, "devsecret") == 0; /* as a development gateway loads them */
    return 0;
}

static int suite_clean(void)
{
    proc_reap(NULL);
    if (keys_ok)
        jwtk_free(&keys);
    return 0;
}

int main(void)
{
    log_configure("warn", "text");
    signal(SIGPIPE, SIG_IGN);
    atexit(reap_everything);
    CU_TestInfo tests[] = {
        {"memory: deliveries newest first, keyset pages, tenants, permission, 400s", test_memory_deliveries},
        {"memory: stats per type, window, cache, tenants, permission, 400s", test_memory_stats},
        {"memory: GET /events since, type, pages", test_memory_events},
        {"memory: GET /payments/:id lists its decided refunds", test_memory_refunds},
        {"memory: ecom all exits 0 on SIGTERM", test_memory_stop},
        {"postgres: deliveries newest first, keyset pages, tenants, permission, 400s", test_pg_deliveries},
        {"postgres: stats from the per-minute counters, window edges, cache, 400s", test_pg_stats},
        {"postgres: GET /events since, type, pages", test_pg_events},
        {"postgres: GET /payments/:id lists its decided refunds", test_pg_refunds},
        {"postgres: ecom all exits 0 on SIGTERM", test_pg_stop},
        CU_TEST_INFO_NULL,
    };
    return test_main("reads", tests, suite_init, suite_clean);
}
