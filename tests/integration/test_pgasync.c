/* tests/integration/test_pgasync.c: the gateway's asynchronous PostgreSQL pool
 * on a real server: pipelines, errors, transactions across pipelines, rollback
 * on release, prepared statements across reconnects, FIFO waiters, timeouts,
 * teardown with work pending, and no fd or event leaks. */
#include "http-gateway/pgasync.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/pg.h"
#include "tests/testlib.h"

#include <dirent.h>
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct event_base *base;
static struct event *tick; /* keeps EVLOOP_ONCE from blocking for long */
static const char *url;
static PGconn *admin; /* blocking connection for checks */

/* Runs the loop until cond holds or ms pass. */
#define WAIT_FOR(cond, ms)                                                                                             \
    do {                                                                                                               \
        int64_t until_ = clock_mono_ms() + (ms);                                                                       \
        while (!(cond) && clock_mono_ms() < until_)                                                                    \
            event_base_loop(base, EVLOOP_ONCE);                                                                        \
    } while (0)

static void spin(int ms)
{
    int64_t until = clock_mono_ms() + ms;
    while (clock_mono_ms() < until)
        event_base_loop(base, EVLOOP_ONCE);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* ---- blocking checks ---- */

static long long q_int(const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *r = pg_query(admin, sql, param ? 1 : 0, params);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* ---- acquire and pipeline recorders ---- */

static int acq_seq;

typedef struct acq {
    int calls;
    int order; /* 1-based position among served acquirers */
    pga_conn_t *c;
    char err[256];
} acq_t;

static void acq_cb(pga_conn_t *c, const char *err, void *arg)
{
    acq_t *a = arg;
    a->calls++;
    a->c = c;
    a->order = ++acq_seq;
    snprintf(a->err, sizeof a->err, "%s", err ? err : "");
}

static pga_conn_t *acquire(pga_pool_t *p)
{
    acq_t a = {0};
    ASSERT_OK(pga_acquire(p, acq_cb, &a));
    WAIT_FOR(a.calls, 10000);
    CU_ASSERT_EQUAL_FATAL(a.calls, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a.c);
    return a.c;
}

#define MAXR 8
#define MAXC 4

typedef struct run {
    int calls;
    int n;
    bool has_err;
    char err[512];
    bool present[MAXR];
    ExecStatusType st[MAXR];
    char sqlstate[MAXR][6];
    int ntuples[MAXR];
    bool isnull[MAXR][MAXC];
    char val[MAXR][MAXC][128];
    pga_conn_t *c;
} run_t;

static void record(run_t *r, PGresult *const *res, int n, const char *err)
{
    r->calls++;
    r->n = n;
    r->has_err = err != NULL;
    snprintf(r->err, sizeof r->err, "%s", err ? err : "");
    for (int i = 0; i < n && i < MAXR; i++) {
        r->present[i] = res[i] != NULL;
        if (!res[i])
            continue;
        r->st[i] = PQresultStatus(res[i]);
        const char *ss = PQresultErrorField(res[i], PG_DIAG_SQLSTATE);
        snprintf(r->sqlstate[i], sizeof r->sqlstate[i], "%s", ss ? ss : "");
        r->ntuples[i] = PQntuples(res[i]);
        if (r->ntuples[i] > 0)
            for (int j = 0; j < PQnfields(res[i]) && j < MAXC; j++) {
                r->isnull[i][j] = PQgetisnull(res[i], 0, j);
                snprintf(r->val[i][j], sizeof r->val[i][j], "%s", PQgetvalue(res[i], 0, j));
            }
    }
}

static void run_cb(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    run_t *r = arg;
    r->c = c;
    record(r, res, n, err);
}

/* Runs a pipeline and waits for its callback. */
static void run(pga_conn_t *c, const pga_stmt_t *s, int n, run_t *r)
{
    memset(r, 0, sizeof *r);
    ASSERT_OK(pga_pipeline(c, s, n, run_cb, r));
    WAIT_FOR(r->calls, 10000);
    CU_ASSERT_EQUAL_FATAL(r->calls, 1);
}

static pga_pool_t *pool(int size, int max_waiters, int timeout_ms)
{
    pga_pool_t *p = pga_pool_new(base, url, size, max_waiters, timeout_ms);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    int connected = 0;
    WAIT_FOR((pga_pool_stats(p, &connected, NULL, NULL), connected == size), 10000);
    CU_ASSERT_EQUAL_FATAL(connected, size);
    return p;
}

static void wait_idle(pga_pool_t *p)
{
    int busy = -1;
    WAIT_FOR((pga_pool_stats(p, NULL, &busy, NULL), busy == 0), 5000);
    CU_ASSERT_EQUAL(busy, 0);
}

/* ---- tests ---- */

static void test_simple_pipeline(void)
{
    pga_pool_t *p = pool(2, 10, 5000);
    pga_conn_t *c = acquire(p);
    const char *one[] = {"41"};
    pga_stmt_t s[] = {
        {.sql = "SELECT 1"},
        {.sql = "SELECT $1::int + 1", .nparams = 1, .params = one},
        {.sql = "SELECT 'x', 'y'"},
    };
    run_t r;
    run(c, s, 3, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_EQUAL(r.n, 3);
    CU_ASSERT_PTR_EQUAL(r.c, c);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(r.st[i], PGRES_TUPLES_OK);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "1");
    CU_ASSERT_STRING_EQUAL(r.val[1][0], "42");
    CU_ASSERT_STRING_EQUAL(r.val[2][1], "y");
    /* bad arguments are refused, callback never called */
    CU_ASSERT_EQUAL(pga_pipeline(c, s, 0, run_cb, &r), PGA_EINVAL);
    pga_stmt_t bad = {.sql = "SELECT $1", .nparams = 1};
    CU_ASSERT_EQUAL(pga_pipeline(c, &bad, 1, run_cb, &r), PGA_EINVAL);
    /* one pipeline at a time */
    run_t r2;
    memset(&r2, 0, sizeof r2);
    ASSERT_OK(pga_pipeline(c, s, 1, run_cb, &r2));
    CU_ASSERT_EQUAL(pga_pipeline(c, s, 1, run_cb, &r), PGA_EBUSY);
    WAIT_FOR(r2.calls, 5000);
    CU_ASSERT_EQUAL(r2.calls, 1);
    CU_ASSERT_EQUAL(r.calls, 1);
    pga_release(c, false);
    wait_idle(p);
    pga_pool_free(p);
}

static void test_error_aborts_later(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    int pid = pga_conn_backend_pid(c);
    CU_ASSERT(pid > 0);
    pga_stmt_t s[] = {{.sql = "SELECT 1"}, {.sql = "SELECT 1/0"}, {.sql = "SELECT 3"}, {.sql = "SELECT 4"}};
    run_t r;
    run(c, s, 4, &r);
    CU_ASSERT_TRUE(r.has_err);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "division by zero"));
    CU_ASSERT_EQUAL(r.n, 4);
    CU_ASSERT_EQUAL(r.st[0], PGRES_TUPLES_OK);
    CU_ASSERT_EQUAL(r.st[1], PGRES_FATAL_ERROR);
    CU_ASSERT_STRING_EQUAL(r.sqlstate[1], "22012");
    for (int i = 2; i < 4; i++)
        CU_ASSERT(!r.present[i] || r.st[i] == PGRES_PIPELINE_ABORTED);
    /* the same connection goes on */
    run(c, &s[3], 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "4");
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c), pid);
    pga_release(c, false);
    /* and after release, with no reconnect */
    c = acquire(p);
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c), pid);
    run(c, &s[2], 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_release(c, false);
    pga_pool_free(p);
}

/* BEGIN + INSERT, then (from the first callback) INSERT + COMMIT. */
typedef struct txn {
    int step;
    bool failed;
    bool done;
} txn_t;

static void txn_cb(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    txn_t *t = arg;
    if (err)
        t->failed = true;
    if (t->step++ == 0) {
        /* the first half is not visible from outside yet */
        if (q_int("SELECT count(*) FROM t WHERE id IN (1, 2)", NULL) != 0)
            t->failed = true;
        static const pga_stmt_t second[] = {{.sql = "INSERT INTO t VALUES (2, 'b')"}, {.sql = "COMMIT"}};
        if (pga_pipeline(c, second, 2, txn_cb, t) != 0) {
            t->failed = true;
            t->done = true;
            pga_release(c, true);
        }
        return;
    }
    pga_release(c, false);
    t->done = true;
}

static void test_transaction_across_pipelines(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    txn_t t = {0};
    pga_stmt_t first[] = {{.sql = "BEGIN"}, {.sql = "INSERT INTO t VALUES (1, 'a')"}};
    ASSERT_OK(pga_pipeline(c, first, 2, txn_cb, &t));
    WAIT_FOR(t.done, 10000);
    CU_ASSERT_TRUE(t.done);
    CU_ASSERT_FALSE(t.failed);
    CU_ASSERT_EQUAL(t.step, 2);
    /* committed: a fresh blocking connection sees both rows */
    char *err = NULL;
    PGconn *b = pg_connect(url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    PGresult *r = pg_query(b, "SELECT string_agg(v, ',' ORDER BY id) FROM t WHERE id IN (1, 2)", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "a,b");
    PQclear(r);
    PQfinish(b);
    wait_idle(p);
    pga_pool_free(p);
}

static void test_release_in_transaction_rolls_back(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    int pid = pga_conn_backend_pid(c);
    pga_stmt_t s[] = {{.sql = "BEGIN"}, {.sql = "INSERT INTO t VALUES (10, 'x')"}};
    run_t r;
    run(c, s, 2, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_release(c, false);
    int busy = 0;
    pga_pool_stats(p, NULL, &busy, NULL);
    CU_ASSERT_EQUAL(busy, 1); /* rolling back */
    wait_idle(p);
    CU_ASSERT_EQUAL(q_int("SELECT count(*) FROM t WHERE id = 10", NULL), 0);
    /* the same backend is reused, outside any transaction */
    c = acquire(p);
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c), pid);
    pga_stmt_t chk = {.sql = "SELECT count(*) FROM t WHERE id = 10"};
    run(c, &chk, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "0");
    /* a failed transaction (INERROR) is rolled back too */
    pga_stmt_t bad[] = {{.sql = "BEGIN"}, {.sql = "INSERT INTO t VALUES (11, 'y')"}};
    run(c, bad, 2, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_stmt_t fail = {.sql = "SELECT 1/0"};
    run(c, &fail, 1, &r);
    CU_ASSERT_TRUE(r.has_err);
    pga_release(c, false);
    wait_idle(p);
    c = acquire(p);
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c), pid);
    pga_stmt_t ok = {.sql = "INSERT INTO t VALUES (12, 'z')"}; /* autocommit again */
    run(c, &ok, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_release(c, false);
    wait_idle(p);
    CU_ASSERT_EQUAL(q_int("SELECT count(*) FROM t WHERE id IN (11, 12)", NULL), 1);
    pga_pool_free(p);
}

static void terminate(int pid)
{
    char spid[16];
    snprintf(spid, sizeof spid, "%d", pid);
    CU_ASSERT_EQUAL(q_int("SELECT pg_terminate_backend($1::int)::int", spid), 1);
    int64_t until = clock_mono_ms() + 5000;
    while (q_int("SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", spid) != 0 && clock_mono_ms() < until)
        clock_sleep_ms(10);
    /* the backend leaves pg_stat_activity before it exits and its socket closes;
     * the server runs on this host (scripts/test-env), so wait for the process */
    while (kill(pid, 0) == 0 && clock_mono_ms() < until)
        clock_sleep_ms(10);
    CU_ASSERT(kill(pid, 0) != 0 && errno == ESRCH);
}

static void test_prepared_reuse_and_reconnect(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    int pid = pga_conn_backend_pid(c);
    const char *a[] = {"21"}, *b[] = {"5"};
    pga_stmt_t s[] = {
        {.name = "dbl", .sql = "SELECT $1::int * 2", .nparams = 1, .params = a},
        {.name = "dbl", .sql = "SELECT $1::int * 2", .nparams = 1, .params = b},
    };
    run_t r;
    run(c, s, 2, &r); /* prepared once, used twice */
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "42");
    CU_ASSERT_STRING_EQUAL(r.val[1][0], "10");
    run(c, &s[1], 1, &r); /* reused: preparing again would fail (42P05) */
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "10");
    pga_stmt_t chk = {.sql = "SELECT count(*) FROM pg_prepared_statements WHERE name = 'dbl'"};
    run(c, &chk, 1, &r);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "1");
    pga_release(c, false);
    /* a prepare that fails is not remembered: the next use prepares again */
    c = acquire(p);
    pga_stmt_t bad = {.name = "broken", .sql = "SELECT nosuchcolumn"};
    run(c, &bad, 1, &r);
    CU_ASSERT_TRUE(r.has_err);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "nosuchcolumn"));
    run(c, &bad, 1, &r);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "nosuchcolumn"));
    /* a prepare that succeeded stays, even when a later statement of its pipeline fails */
    const char *t[] = {"7"};
    pga_stmt_t keep[] = {{.name = "keep", .sql = "SELECT $1::int + 1", .nparams = 1, .params = t},
                         {.sql = "SELECT 1/0"}};
    run(c, keep, 2, &r);
    CU_ASSERT_TRUE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "8");
    run(c, keep, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "8");
    pga_release(c, false);

    /* the idle connection's backend is killed: the pool reconnects */
    terminate(pid);
    c = acquire(p);
    int pid2 = pga_conn_backend_pid(c);
    CU_ASSERT(pid2 > 0 && pid2 != pid);
    run(c, s, 1, &r); /* prepared again on the new connection */
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "42");
    run(c, s, 1, &r);
    CU_ASSERT_FALSE(r.has_err);

    /* the leased connection's backend is killed: the request sees an error */
    terminate(pid2);
    memset(&r, 0, sizeof r);
    int rc = pga_pipeline(c, s, 1, run_cb, &r);
    if (rc == 0) {
        WAIT_FOR(r.calls, 5000);
        CU_ASSERT_EQUAL(r.calls, 1);
        CU_ASSERT_TRUE(r.has_err);
    } else {
        CU_ASSERT_EQUAL(rc, PGA_ECONN);
    }
    CU_ASSERT_EQUAL(pga_pipeline(c, s, 1, run_cb, &r), PGA_ECONN);
    pga_release(c, false);
    c = acquire(p);
    CU_ASSERT(pga_conn_backend_pid(c) != pid2);
    run(c, s, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "42");
    pga_release(c, false);
    pga_pool_free(p);
}

static void test_fifo_waiters(void)
{
    pga_pool_t *p = pool(2, 10, 10000);
    acq_t a[5];
    memset(a, 0, sizeof a);
    acq_seq = 0;
    for (int i = 0; i < 5; i++)
        ASSERT_OK(pga_acquire(p, acq_cb, &a[i]));
    WAIT_FOR(a[0].calls && a[1].calls, 5000);
    spin(50);
    CU_ASSERT_EQUAL(a[0].calls, 1);
    CU_ASSERT_EQUAL(a[1].calls, 1);
    CU_ASSERT_EQUAL(a[2].calls + a[3].calls + a[4].calls, 0);
    int connected, busy, waiting;
    pga_pool_stats(p, &connected, &busy, &waiting);
    CU_ASSERT_EQUAL(connected, 2);
    CU_ASSERT_EQUAL(busy, 2);
    CU_ASSERT_EQUAL(waiting, 3);
    for (int i = 0; i < 3; i++) {
        pga_release(a[i].c, false);
        WAIT_FOR(a[i + 2].calls, 5000);
        spin(20);
        CU_ASSERT_EQUAL(a[i + 2].calls, 1);
        CU_ASSERT_PTR_NOT_NULL(a[i + 2].c);
        for (int j = i + 3; j < 5; j++)
            CU_ASSERT_EQUAL(a[j].calls, 0);
    }
    for (int i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(a[i].calls, 1);
        CU_ASSERT_EQUAL(a[i].order, i + 1);
    }
    pga_release(a[3].c, false);
    pga_release(a[4].c, false);
    wait_idle(p);
    pga_pool_free(p);
}

static void test_waiter_timeout(void)
{
    pga_pool_t *p = pool(1, 10, 300);
    pga_conn_t *held = acquire(p);
    acq_t a = {0};
    int64_t t0 = clock_mono_ms();
    ASSERT_OK(pga_acquire(p, acq_cb, &a));
    WAIT_FOR(a.calls, 5000);
    int64_t took = clock_mono_ms() - t0;
    CU_ASSERT_EQUAL(a.calls, 1);
    CU_ASSERT_PTR_NULL(a.c);
    CU_ASSERT_STRING_EQUAL(a.err, "timeout");
    CU_ASSERT(took >= 250 && took < 2000);
    pga_release(held, false);
    spin(50);
    CU_ASSERT_EQUAL(a.calls, 1);
    pga_pool_free(p);

    /* nothing to connect to: acquirers wait timeout_ms, then NULL with the reason */
    p = pga_pool_new(base, "postgresql://postgres@127.0.0.1:1/nothing", 2, 10, 300);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    memset(&a, 0, sizeof a);
    ASSERT_OK(pga_acquire(p, acq_cb, &a));
    WAIT_FOR(a.calls, 5000);
    CU_ASSERT_EQUAL(a.calls, 1);
    CU_ASSERT_PTR_NULL(a.c);
    CU_ASSERT_EQUAL(strncmp(a.err, "no connection: ", 15), 0);
    int connected = -1;
    pga_pool_stats(p, &connected, NULL, NULL);
    CU_ASSERT_EQUAL(connected, 0);
    pga_pool_free(p);
}

static void test_queue_full(void)
{
    pga_pool_t *p = pool(1, 2, 5000);
    acq_t a[4];
    memset(a, 0, sizeof a);
    for (int i = 0; i < 3; i++)
        ASSERT_OK(pga_acquire(p, acq_cb, &a[i]));
    CU_ASSERT_EQUAL(pga_acquire(p, acq_cb, &a[3]), PGA_EFULL);
    WAIT_FOR(a[0].calls, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a[0].c);
    int waiting = 0;
    pga_pool_stats(p, NULL, NULL, &waiting);
    CU_ASSERT_EQUAL(waiting, 2);
    CU_ASSERT_EQUAL(pga_acquire(p, acq_cb, &a[3]), PGA_EFULL);
    for (int i = 0; i < 2; i++) {
        pga_release(a[i].c, false);
        WAIT_FOR(a[i + 1].calls, 5000);
        CU_ASSERT_PTR_NOT_NULL_FATAL(a[i + 1].c);
    }
    /* one slot is free again */
    ASSERT_OK(pga_acquire(p, acq_cb, &a[3]));
    pga_release(a[2].c, false);
    WAIT_FOR(a[3].calls, 5000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a[3].c);
    pga_release(a[3].c, false);
    wait_idle(p);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(a[i].calls, 1);
    pga_pool_free(p);
}

static long long sleepers(const char *pattern)
{
    return q_int("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND pid <> pg_backend_pid() AND query LIKE $1",
                 pattern);
}

static void wait_no_sleepers(const char *pattern)
{
    int64_t until = clock_mono_ms() + 5000;
    while (sleepers(pattern) != 0 && clock_mono_ms() < until)
        clock_sleep_ms(20);
    CU_ASSERT_EQUAL(sleepers(pattern), 0);
}

static void test_pipeline_timeout(void)
{
    pga_pool_t *p = pool(1, 10, 300);
    pga_conn_t *c = acquire(p);
    pga_stmt_t s[] = {{.sql = "BEGIN"}, {.sql = "SELECT pg_sleep(7)"}, {.sql = "SELECT 1"}};
    int64_t t0 = clock_mono_ms();
    run_t r;
    run(c, s, 3, &r);
    int64_t took = clock_mono_ms() - t0;
    CU_ASSERT_TRUE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.err, "timeout");
    CU_ASSERT(took >= 250 && took < 3000);
    CU_ASSERT_EQUAL(r.n, 3);
    CU_ASSERT_FALSE(r.present[1]);
    CU_ASSERT_FALSE(r.present[2]);
    CU_ASSERT_EQUAL(pga_pipeline(c, s, 1, run_cb, &r), PGA_ECONN);
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c), 0);
    pga_release(c, false);
    /* the pool recovers */
    c = acquire(p);
    run(c, &s[2], 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "1");
    pga_release(c, false);
    /* and the statement was cancelled on the server, not left running */
    wait_no_sleepers("%pg_sleep(7)%");
    wait_idle(p);
    pga_pool_free(p);
}

/* As run_cb, and gives the connection back, as a request's callback does
 * whatever its error: after a release that abandoned the pipeline, a no-op. */
static void release_cb(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    run_cb(c, res, n, err, arg);
    pga_release(c, false);
}

static void test_release_with_pipeline_in_flight(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    pga_stmt_t s = {.sql = "SELECT pg_sleep(8)"};
    run_t r;
    memset(&r, 0, sizeof r);
    ASSERT_OK(pga_pipeline(c, &s, 1, run_cb, &r));
    spin(50);
    pga_release(c, false);
    CU_ASSERT_EQUAL(r.calls, 1); /* before pga_release returned */
    CU_ASSERT_STRING_EQUAL(r.err, "released");
    c = acquire(p);
    pga_stmt_t one = {.sql = "SELECT 1"};
    run(c, &one, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_release(c, false);
    /* a callback that releases the connection it was given, as the
     * gateway's do (a request timed out while its pipeline was out) */
    c = acquire(p);
    memset(&r, 0, sizeof r);
    ASSERT_OK(pga_pipeline(c, &s, 1, release_cb, &r));
    spin(50);
    pga_release(c, false);
    CU_ASSERT_EQUAL(r.calls, 1);
    CU_ASSERT_STRING_EQUAL(r.err, "released");
    c = acquire(p);
    run(c, &one, 1, &r);
    CU_ASSERT_FALSE(r.has_err);
    pga_release(c, false);
    wait_no_sleepers("%pg_sleep(8)%");
    pga_pool_free(p);
}

static void test_params_null_and_quotes(void)
{
    pga_pool_t *p = pool(1, 10, 5000);
    pga_conn_t *c = acquire(p);
    const char *nasty = "O'Brien \"q\" \\ '); DROP TABLE t; --";
    char *copy = xstrdup(nasty);
    const char **params = xcalloc(3, sizeof *params);
    params[0] = NULL;
    params[1] = copy;
    params[2] = "";
    pga_stmt_t s[] = {
        {.sql = "SELECT $1::text IS NULL, $2::text, length($2::text), $3::text = ''", .nparams = 3, .params = params},
        {.name = "ins", .sql = "INSERT INTO t VALUES ($1::int, $2)", .nparams = 2, .params = NULL},
        {.sql = "SELECT v, v IS NULL FROM t WHERE id = 20"},
    };
    const char *ins[] = {"20", copy};
    s[1].params = ins;
    run_t r;
    memset(&r, 0, sizeof r);
    ASSERT_OK(pga_pipeline(c, s, 3, run_cb, &r));
    /* copied at submit: the caller's memory may go */
    memset(copy, 'X', strlen(copy));
    free(copy);
    free(params);
    WAIT_FOR(r.calls, 5000);
    CU_ASSERT_EQUAL_FATAL(r.calls, 1);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_STRING_EQUAL(r.val[0][0], "t");
    CU_ASSERT_STRING_EQUAL(r.val[0][1], nasty);
    char len[24];
    snprintf(len, sizeof len, "%zu", strlen(nasty));
    CU_ASSERT_STRING_EQUAL(r.val[0][2], len);
    CU_ASSERT_STRING_EQUAL(r.val[0][3], "t");
    CU_ASSERT_STRING_EQUAL(r.val[2][0], nasty);
    /* a NULL parameter stored is NULL */
    const char *nul[] = {"21", NULL};
    pga_stmt_t s2[] = {
        {.name = "ins", .sql = "INSERT INTO t VALUES ($1::int, $2)", .nparams = 2, .params = nul},
        {.sql = "SELECT v, v IS NULL FROM t WHERE id = 21"},
    };
    run(c, s2, 2, &r);
    CU_ASSERT_FALSE(r.has_err);
    CU_ASSERT_TRUE(r.isnull[1][0]);
    CU_ASSERT_STRING_EQUAL(r.val[1][1], "t");
    pga_release(c, false);
    CU_ASSERT_EQUAL(q_int("SELECT count(*) FROM t", NULL) > 0, 1); /* the table is still there */
    pga_pool_free(p);
}

/* 1000 acquire -> pipeline -> release rounds, each started from the previous callback. */
typedef struct loop_ctx {
    pga_pool_t *p;
    int done, target, bad;
    char param[16];
} loop_ctx_t;

static void loop_acquired(pga_conn_t *c, const char *err, void *arg);

static void loop_result(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    loop_ctx_t *l = arg;
    if (err || n != 1 || !res[0] || strcmp(PQgetvalue(res[0], 0, 0), l->param) != 0)
        l->bad++;
    pga_release(c, false);
    if (++l->done < l->target && pga_acquire(l->p, loop_acquired, l) != 0) {
        l->bad++;
        l->target = l->done;
    }
}

static void loop_acquired(pga_conn_t *c, const char *err, void *arg)
{
    loop_ctx_t *l = arg;
    if (!c) {
        l->bad++;
        l->target = l->done;
        return;
    }
    snprintf(l->param, sizeof l->param, "%d", l->done);
    const char *params[] = {l->param};
    pga_stmt_t s[] = {{.name = l->done % 2 ? "echo" : NULL, .sql = "SELECT $1::int", .nparams = 1, .params = params}};
    if (pga_pipeline(c, s, 1, loop_result, l) != 0) {
        l->bad++;
        l->target = l->done;
        pga_release(c, true);
    }
}

static void test_many_sequential(void)
{
    int fds_before = open_fds();
    CU_ASSERT(fds_before > 0);
    pga_pool_t *p = pool(2, 10, 5000);
    loop_ctx_t l = {.p = p, .target = 1000};
    ASSERT_OK(pga_acquire(p, loop_acquired, &l));
    WAIT_FOR(l.done >= l.target, 120000);
    CU_ASSERT_EQUAL(l.done, 1000);
    CU_ASSERT_EQUAL(l.bad, 0);
    wait_idle(p);
    int connected = 0;
    pga_pool_stats(p, &connected, NULL, NULL);
    CU_ASSERT_EQUAL(connected, 2);
    pga_pool_free(p);
    CU_ASSERT_EQUAL(open_fds(), fds_before);
    /* nothing of the pool is left on the base: only our tick */
    CU_ASSERT_EQUAL(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 1);
}

/* pga_pool_free with a pipeline in flight, a leased idle connection, a rollback
 * in progress and two queued acquirers: every callback fires exactly once. */
typedef struct pending {
    run_t run;
    bool release_in_cb;
} pending_t;

static void pending_cb(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    pending_t *pd = arg;
    record(&pd->run, res, n, err);
    CU_ASSERT_EQUAL(pga_pipeline(c, &(pga_stmt_t){.sql = "SELECT 1"}, 1, run_cb, &pd->run), PGA_ECLOSED);
    if (pd->release_in_cb)
        pga_release(c, false);
}

static void test_free_with_pending_work(void)
{
    int fds_before = open_fds();
    pga_pool_t *p = pool(3, 10, 10000);
    pga_conn_t *c1 = acquire(p);
    pga_conn_t *c2 = acquire(p);
    pga_conn_t *c3 = acquire(p);
    pending_t pd = {.release_in_cb = true};
    pga_stmt_t sl = {.sql = "SELECT pg_sleep(9)"};
    ASSERT_OK(pga_pipeline(c1, &sl, 1, pending_cb, &pd));
    pga_stmt_t begin = {.sql = "BEGIN"};
    run_t r;
    run(c3, &begin, 1, &r);
    acq_t w[2];
    memset(w, 0, sizeof w);
    ASSERT_OK(pga_acquire(p, acq_cb, &w[0]));
    ASSERT_OK(pga_acquire(p, acq_cb, &w[1]));
    spin(50);
    pga_release(c3, false); /* rolling back when the pool goes */
    pga_pool_free(p);
    CU_ASSERT_EQUAL(pd.run.calls, 1);
    CU_ASSERT_STRING_EQUAL(pd.run.err, "pool closed");
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(w[i].calls, 1);
        CU_ASSERT_PTR_NULL(w[i].c);
        CU_ASSERT_STRING_EQUAL(w[i].err, "pool closed");
    }
    /* a connection leased at free time stays valid until released */
    CU_ASSERT_EQUAL(pga_pipeline(c2, &sl, 1, run_cb, &r), PGA_ECLOSED);
    CU_ASSERT_EQUAL(pga_conn_backend_pid(c2), 0);
    pga_release(c2, false);
    spin(100);
    CU_ASSERT_EQUAL(pd.run.calls, 1);
    CU_ASSERT_EQUAL(w[0].calls + w[1].calls, 2);
    CU_ASSERT_EQUAL(open_fds(), fds_before);
    CU_ASSERT_EQUAL(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 1);
    wait_no_sleepers("%pg_sleep(9)%");
}

static void test_bad_arguments(void)
{
    CU_ASSERT_PTR_NULL(pga_pool_new(NULL, url, 1, 1, 100));
    CU_ASSERT_PTR_NULL(pga_pool_new(base, url, 0, 1, 100));
    CU_ASSERT_PTR_NULL(pga_pool_new(base, url, 1, -1, 100));
    CU_ASSERT_PTR_NULL(pga_pool_new(base, url, 1, 1, 0));
    CU_ASSERT_EQUAL(pga_acquire(NULL, acq_cb, NULL), PGA_EINVAL);
    CU_ASSERT_EQUAL(pga_pool_stats(NULL, NULL, NULL, NULL), PGA_EINVAL);
    pga_release(NULL, false);
    pga_pool_free(NULL);
}

static int setup(void)
{
    url = test_pg_db("pgasync", false);
    base = event_base_new();
    if (!base)
        return 1;
    tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10000};
    if (!tick || event_add(tick, &tv) != 0)
        return 1;
    char *err = NULL;
    admin = pg_connect(url, "test", &err);
    if (!admin) {
        fprintf(stderr, "%s\n", err);
        free(err);
        return 1;
    }
    return pg_exec(admin, "CREATE TABLE t (id int PRIMARY KEY, v text)") == 0 ? 0 : 1;
}

static int teardown(void)
{
    PQfinish(admin);
    event_free(tick);
    event_base_free(base);
    return 0;
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"a pipeline of 3 statements returns 3 results", test_simple_pipeline},
        {"an error aborts later statements; the connection goes on", test_error_aborts_later},
        {"a transaction spanning two pipelines commits", test_transaction_across_pipelines},
        {"release inside a transaction rolls back before reuse", test_release_in_transaction_rolls_back},
        {"prepared statements: reuse, failed prepare, reconnect", test_prepared_reuse_and_reconnect},
        {"waiters are served FIFO", test_fifo_waiters},
        {"a waiter times out with NULL", test_waiter_timeout},
        {"a full waiter queue refuses", test_queue_full},
        {"a stuck pipeline times out and the pool recovers", test_pipeline_timeout},
        {"release with a pipeline in flight", test_release_with_pipeline_in_flight},
        {"NULL and quoted parameters", test_params_null_and_quotes},
        {"1000 sequential pipelines, no fd or event leak", test_many_sequential},
        {"pool free with work pending: every callback once", test_free_with_pending_work},
        {"bad arguments", test_bad_arguments},
        CU_TEST_INFO_NULL,
    };
    return test_main("pgasync", tests, setup, teardown);
}
