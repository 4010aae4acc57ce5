/* tests/integration/test_gw_memory.c: the gateway on the memory store (the
 * development mode of `ecom all`), run in this process so that the fake clock
 * (core/clock.h) is its time: its janitor's cleanup on the memory store
 * deletes what it deletes in PostgreSQL (expired idempotency records; OTP
 * tickets, failure budgets and sessions, expired, revoked or idle, with their
 * refresh tokens a day after they ended) and keeps the rest. */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/db.h"
#include "core/janitor.h"
#include "core/log.h"
#include "core/metrics.h"
#include "http-gateway/gateway.h"
#include "http-gateway/gw.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define B "/api/v1/analytics"
#define DAY_MS (86400LL * 1000)
#define RECORDS 1100 /* above the 1,000 a pass the cleanup used to stop at */

static memstore_t *mem;
static config_t cfg;
static atomic_bool stop;
static pthread_t gw_thread;
static int gw_rc = -1, port, hold = -1;

static void *gateway_main(void *arg)
{
    (void)arg;
    gw_rc = gateway_run(&cfg, mem, &stop);
    return NULL;
}

static uint64_t gateway_deleted(void)
{
    return metrics_value(metrics_counter("ecom_retention_deleted_total",
                                         "Rows deleted by retention cleanups (core/janitor.h)", "table=\"gateway\""));
}

/* One pass of a janitor like the gateway's, on the same memory store: the
 * rows it deleted, with those the gateway's own janitor deleted meanwhile
 * (it passes every minute of real time: a slow run may meet one). */
static uint64_t cleanup_pass(void)
{
    uint64_t before = gateway_deleted();
    uint64_t n = test_janitor_pass(&(janitor_opts_t){.memory = mem,
                                                     .what = "test-gateway",
                                                     .cleanup = gw_retention_cleanup,
                                                     .retain_s = GW_AUTH_RETAIN_S,
                                                     .every_ms = 60000});
    return n + gateway_deleted() - before;
}

typedef struct tokens {
    char access[2048], refresh[128], sid[64];
} tokens_t;

static void dev_login(const char *user, tokens_t *t)
{
    char body[128];
    snprintf(body, sizeof body, "{\"userId\":\"%s\"}", user);
    hresp_t r;
    CU_ASSERT_EQUAL(hpost(port, B "/auth/dev-login", NULL, body, &r), 0);
    CU_ASSERT_TRUE(expect_status(&r, 200, "dev-login"));
    jstr(&r, "accessToken", t->access, sizeof t->access);
    jstr(&r, "refreshToken", t->refresh, sizeof t->refresh);
    jstr(&r, "sessionId", t->sid, sizeof t->sid);
    hfree(&r);
}

/* A code by email for subject: its ticket. */
static void otp_request(const char *subject, char ticket[64])
{
    char body[160];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", subject);
    hresp_t r;
    CU_ASSERT_EQUAL(hpost(port, B "/auth/otp/request", NULL, body, &r), 0);
    CU_ASSERT_TRUE(expect_status(&r, 200, "otp request"));
    ticket[0] = '\0';
    jstr(&r, "ticketId", ticket, 64);
    hfree(&r);
}

/* Refreshes t's session, keeping its new refresh token: the status. */
static int refresh_session(tokens_t *t)
{
    char body[192];
    snprintf(body, sizeof body, "{\"refreshToken\":\"%s\"}", t->refresh);
    hresp_t r;
    hpost(port, B "/auth/refresh", NULL, body, &r);
    int status = r.status;
    if (status == 200)
        jstr(&r, "refreshToken", t->refresh, sizeof t->refresh);
    hfree(&r);
    return status;
}

static void test_retention(void)
{
    /* at T0: idempotency records, a session, a revoked session, a ticket
     * with a wrong guess */
    for (int i = 0; i < RECORDS; i++) {
        char hdr[96];
        snprintf(hdr, sizeof hdr, "Idempotency-Key: retention-%d\r\n", i);
        hresp_t r;
        CU_ASSERT_EQUAL(hpost(port, B "/events", hdr, "{\"type\":\"purchase\"}", &r), 0);
        if (r.status != 202 && !expect_status(&r, 202, "event")) {
            hfree(&r);
            CU_FAIL_FATAL("the event was not accepted");
        }
        hfree(&r);
    }
    tokens_t old, revoked, idle, fresh;
    dev_login("retention-old", &old);
    dev_login("retention-idle", &idle);
    dev_login("retention-revoked", &revoked);
    hresp_t r;
    char auth[2100];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", revoked.access);
    CU_ASSERT_EQUAL(hpost(port, B "/auth/logout", auth, "{}", &r), 0);
    CU_ASSERT_TRUE(r.status == 200 || r.status == 204);
    hfree(&r);
    char ticket[64], body[160];
    otp_request("old@example.com", ticket);
    snprintf(body, sizeof body, "{\"ticketId\":\"%s\",\"code\":\"000000\"}", ticket);
    CU_ASSERT_EQUAL(hpost(port, B "/auth/otp/verify", NULL, body, &r), 0);
    CU_ASSERT_EQUAL(r.status, 401); /* a guess that is wrong but for one in a million */
    hfree(&r);

    /* a day is kept after each ended: 23 hours on, nothing goes (the
     * idempotency records live a day) */
    int64_t t0 = clock_now_ms();
    CU_ASSERT_EQUAL(cleanup_pass(), 0);
    clock_fake_set_ms(t0 + 23 * 3600 * 1000);
    CU_ASSERT_EQUAL(cleanup_pass(), 0);
    /* 26 hours on: the expired records, the ticket (5 minutes and a day),
     * the failure budget (an hour and a day) and the revoked session (a
     * day); the other session is within its 30 days */
    clock_fake_set_ms(t0 + 26 * 3600 * 1000);
    CU_ASSERT_EQUAL(cleanup_pass(), RECORDS + 3);
    CU_ASSERT_EQUAL(refresh_session(&old), 200); /* used again at 26 hours */
    CU_ASSERT_EQUAL(refresh_session(&revoked), 401);

    /* the old session is used every 6 days from here: never idle, it can
     * end only by its expiry */
    clock_fake_set_ms(t0 + 7 * DAY_MS);
    CU_ASSERT_EQUAL(refresh_session(&old), 200);
    /* 8 days and an hour on: the session never used since T0 has been idle
     * 7 days and a day */
    clock_fake_set_ms(t0 + 8 * DAY_MS + 3600 * 1000);
    CU_ASSERT_EQUAL(cleanup_pass(), 1);
    CU_ASSERT_EQUAL(refresh_session(&idle), 401);
    for (int day = 13; day <= 25; day += 6) {
        clock_fake_set_ms(t0 + day * DAY_MS);
        CU_ASSERT_EQUAL(refresh_session(&old), 200);
        CU_ASSERT_EQUAL(cleanup_pass(), 0);
    }

    /* a new session at T0 + 31 days 2 hours; the old one expired at 30 days,
     * a day and two hours ago (used at 25 days: not idle): it goes, with its
     * refresh tokens (not counted, as in PostgreSQL) */
    clock_fake_set_ms(t0 + 31 * DAY_MS + 2 * 3600 * 1000);
    dev_login("retention-new", &fresh);
    CU_ASSERT_EQUAL(cleanup_pass(), 1);
    CU_ASSERT_EQUAL(cleanup_pass(), 0);
    CU_ASSERT_EQUAL(refresh_session(&fresh), 200); /* the live one stays */
}

/* The status of one request without a body (hdrs: NULL or CRLF-ended lines). */
static int status_of(const char *method, const char *path, const char *hdrs)
{
    hresp_t r;
    hreq(port, method, path, hdrs, NULL, 0, &r);
    int status = r.status;
    hfree(&r);
    return status;
}

/* As in PostgreSQL: a sid that is no UUID names no session (404), a subject
 * that is not UTF-8 is the client's 400; the caller's sessions come newest
 * first. */
static void test_sessions_as_in_postgres(void)
{
    tokens_t t[6];
    int64_t now = clock_now_ms();
    for (int i = 0; i < 6; i++) {
        clock_fake_set_ms(now + i * 1000);
        dev_login("lister", &t[i]);
    }
    char auth[2100];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s\r\n", t[5].access);
    CU_ASSERT_EQUAL(status_of("DELETE", B "/auth/sessions/%FF%FE", auth), 404);
    CU_ASSERT_EQUAL(status_of("DELETE", B "/admin/auth/sessions/not-a-sid", NULL), 404);
    CU_ASSERT_EQUAL(status_of("DELETE", B "/admin/auth/members?subject=%FF&role=viewer", NULL), 400);
    hresp_t r;
    CU_ASSERT_EQUAL(hget(port, B "/auth/sessions", auth, &r), 0);
    json_object *o = jparse(&r), *data = NULL;
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "data", &data) && json_object_array_length(data) == 6);
    for (size_t i = 0; data && i < json_object_array_length(data) && i < 6; i++) {
        json_object *sid = NULL;
        json_object_object_get_ex(json_object_array_get_idx(data, i), "sessionId", &sid);
        CU_ASSERT_STRING_EQUAL(sid ? json_object_get_string(sid) : "", t[5 - i].sid); /* the newest login first */
    }
    json_object_put(o);
    hfree(&r);
}

/* A wrong code for a ticket that expired long ago counts against its
 * subject's hourly budget, as in PostgreSQL, where the ticket's row stays for
 * the retention cleanup: the eleventh wrong code of the hour is refused with
 * 429. (The memory store used to drop tickets an hour past their expiry at
 * the next code request, and such guesses were free.) */
static void test_expired_ticket_counts(void)
{
    int64_t now = clock_now_ms();
    char ticket[64], other[64], body[160];
    otp_request("late@example.com", ticket);
    clock_fake_set_ms(now + 2 * 3600 * 1000);
    otp_request("other@example.com", other);
    hresp_t r;
    snprintf(body, sizeof body, "{\"ticketId\":\"%s\",\"code\":\"000000\"}", ticket);
    int last = 0;
    for (int i = 0; i < 11; i++) {
        CU_ASSERT_EQUAL(hpost(port, B "/auth/otp/verify", NULL, body, &r), 0);
        last = r.status;
        CU_ASSERT_TRUE(i == 10 || r.status == 401);
        hfree(&r);
    }
    CU_ASSERT_EQUAL(last, 429);
}

/* Input a handler would read cut short, or PostgreSQL would refuse with a
 * 503 that counts against the route's breaker, is the client's 4xx: a
 * project id that is no object id (a development request without a token
 * skips the ReBAC stage that checks it), a revision that is not plain
 * digits, a string holding U+0000, a query with %00. */
static void test_bad_input_is_4xx(void)
{
    CU_ASSERT_EQUAL(status_of("GET", B "/projects/%FF/events", NULL), 404);
    char path[400] = B "/projects/";
    size_t n = strlen(path);
    memset(path + n, 'p', 200);
    strcpy(path + n + 200, "/events");
    hresp_t r;
    CU_ASSERT_EQUAL(hget(port, path, NULL, &r), 0);
    CU_ASSERT_EQUAL(r.status, 404); /* longer than an object id: the handler's answer, not "no route" */
    CU_ASSERT_PTR_NOT_NULL(r.body ? strstr(r.body, "no such object") : NULL);
    hfree(&r);
    CU_ASSERT_EQUAL(status_of("GET", B "/projects/p1/events", NULL), 200);

    tokens_t t;
    dev_login("reader", &t);
    static const char *const revisions[] = {"+5", "5x", "99999999999999999999", "-1", ""};
    for (size_t i = 0; i < sizeof revisions / sizeof *revisions; i++) {
        char hdrs[2200];
        snprintf(hdrs, sizeof hdrs, "Authorization: Bearer %s\r\nx-authz-revision: %s\r\n", t.access, revisions[i]);
        CU_ASSERT_EQUAL(hget(port, B "/events", hdrs, &r), 0);
        if (r.status != 400)
            fprintf(stderr, "\n  x-authz-revision '%s': %d %s\n", revisions[i], r.status, r.body ? r.body : "");
        CU_ASSERT_EQUAL(r.status, 400);
        hfree(&r);
    }

    CU_ASSERT_EQUAL(hpost(port, B "/auth/dev-login", NULL, "{\"userId\":\"a\\u0000b\"}", &r), 0);
    CU_ASSERT_EQUAL(r.status, 400);
    hfree(&r);
    CU_ASSERT_EQUAL(status_of("GET", B "/events?type=a%00b", NULL), 400);
    CU_ASSERT_EQUAL(status_of("GET", B "/events?type=a", NULL), 200);
}

/* Admin policy writes answer revisions as PostgreSQL does (test_authx runs
 * the same checks there): before, a put that changed nothing answered the
 * policy's latest revision, and a role put again always took a new one. */
static void test_policy_revisions(void)
{
    check_policy_revisions(port, NULL, "mem");
}

static bool stopped;

/* A key whose request was answered without a commit (here 400) is free
 * again, as in PostgreSQL, where nothing of such a request is written: the
 * corrected request with the same key is accepted, then replayed. */
static void test_refused_key_is_free(void)
{
    const char *hdr = "Idempotency-Key: refused-then-fixed\r\n";
    hresp_t r;
    CU_ASSERT_EQUAL(hpost(port, B "/events", hdr, "{\"type\":5}", &r), 0);
    CU_ASSERT_EQUAL(r.status, 400);
    hfree(&r);
    CU_ASSERT_EQUAL(hpost(port, B "/events", hdr, "{\"type\":\"purchase\"}", &r), 0);
    CU_ASSERT_TRUE(expect_status(&r, 202, "the corrected request"));
    hfree(&r);
    CU_ASSERT_EQUAL(hpost(port, B "/events", hdr, "{\"type\":\"purchase\"}", &r), 0);
    char replayed[16] = "";
    CU_ASSERT_EQUAL(r.status, 202);
    CU_ASSERT_STRING_EQUAL(hheader(&r, "Idempotent-Replayed", replayed, sizeof replayed) ? replayed : "", "true");
    hfree(&r);
}

static int suite_init(void)
{
    const char *level = getenv("LOG_LEVEL");
    log_configure(level ? level : "off", NULL);
    hold = port_hold(&port);
    if (hold < 0)
        return -1;
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    setenv("PORT", p, 1);
    setenv("APP_ENV", "development", 1);
    setenv("JWT_SECRET", "devsecret", 1);
    setenv("DATABASE_URL", "", 1);
    setenv("REDIS_URL", "", 1);
    setenv("GATEWAY_THREADS", "1", 1);
    setenv("ADMIN_PORT", "0", 1);
    char *errors = NULL;
    if (config_load(&cfg, NULL, CFG_ROLE_GATEWAY, &errors) != 0) {
        fprintf(stderr, "config: %s\n", errors ? errors : "?");
        free(errors);
        return -1;
    }
    /* the fake clock from the start: the gateway's time is the test's */
    clock_fake_set_ms(clock_now_ms());
    mem = memstore_new();
    if (pthread_create(&gw_thread, NULL, gateway_main, NULL) != 0) {
        stopped = true;
        return -1;
    }
    for (int i = 0; i < 100; i++) {
        hresp_t r;
        int rc = hget(port, "/health", NULL, &r);
        int status = r.status;
        hfree(&r);
        if (rc == 0 && status == 200)
            return 0;
        usleep(50 * 1000);
    }
    fprintf(stderr, "the gateway did not answer /health\n");
    return -1;
}

static void stop_gateway(void)
{
    clock_fake_set_ms(0);
    atomic_store(&stop, true);
    pthread_join(gw_thread, NULL);
    stopped = true;
}

/* Last: the gateway drains and returns 0 (the sanitizers' leak report
 * covers what it freed) */
static void test_stops(void)
{
    stop_gateway();
    CU_ASSERT_EQUAL(gw_rc, 0);
}

static int suite_clean(void)
{
    if (mem && !stopped)
        stop_gateway();
    memstore_free(mem);
    config_free(&cfg);
    metrics_reset();
    if (hold >= 0)
        close(hold);
    return 0;
}

int main(void)
{
    static CU_TestInfo tests[] = {
        {"memory store: the gateway's cleanup deletes what ended a day ago, keeps the rest", test_retention},
        {"memory store: a key answered without a commit is free again", test_refused_key_is_free},
        {"memory store: sessions' ids, subjects and order as in PostgreSQL", test_sessions_as_in_postgres},
        {"memory store: wrong codes for a long-expired ticket count, as in PostgreSQL", test_expired_ticket_counts},
        {"bad input the handlers would cut or PostgreSQL refuse is the client's 4xx", test_bad_input_is_4xx},
        {"memory store: policy writes answer revisions as in PostgreSQL", test_policy_revisions},
        {"the gateway stops cleanly", test_stops},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_memory", tests, suite_init, suite_clean);
}
