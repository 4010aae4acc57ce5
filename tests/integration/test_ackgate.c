/* tests/integration/test_ackgate.c: the acknowledgement gate
 * (services/ackgate.h) on a real PostgreSQL, on its own: what it passes on
 * and what it drops, when it is ready, its back-off while its flush cannot
 * work, and a connection that breaks under it. (The runtime's use of it, and
 * server crashes, are tested in test_backbone and test_fault.) */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"
#include "services/ackgate.h"
#include "tests/testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ASSERT_OK(e) CU_ASSERT_EQUAL_FATAL((e), 0)

/* What the gate passed on. */
typedef struct passed {
    pthread_mutex_t mu;
    size_t n;
    char ids[64][BUS_ID_MAX];
} passed_t;

static void on_pass(void *arg, const char *stream, char (*ids)[BUS_ID_MAX], size_t n)
{
    passed_t *p = arg;
    CU_ASSERT_STRING_EQUAL(stream, "ecom:orders");
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < n; i++, p->n++)
        if (p->n < 64)
            memcpy(p->ids[p->n], ids[i], BUS_ID_MAX);
    pthread_mutex_unlock(&p->mu);
    free(ids);
}

static size_t passed_n(passed_t *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->n;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* Hands over n ids "<from + i>-0" of a batch that began at began_us. */
static void put(ackgate_t *g, int from, size_t n, int64_t began_us)
{
    char(*ids)[BUS_ID_MAX] = xcalloc(n, sizeof *ids);
    for (size_t i = 0; i < n; i++)
        snprintf(ids[i], BUS_ID_MAX, "%d-0", from + (int)i);
    ackgate_put(g, "ecom:orders", ids, n, began_us);
}

/* Waits up to ms for the gate to be ready for a batch beginning now. */
static bool wait_ready(ackgate_t *g, int ms)
{
    for (int64_t end = clock_mono_ms() + ms; clock_mono_ms() < end; clock_sleep_ms(20))
        if (ackgate_ready(g, ackgate_now_us()))
            return true;
    return ackgate_ready(g, ackgate_now_us());
}

static PGconn *connect_to(const char *url)
{
    char *err = NULL;
    PGconn *c = pg_connect(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    return c;
}

/* Ready once connected; a batch begun after that is passed on after a flush;
 * one begun before the connection is dropped and counted; a flush made by
 * hand works on any connection. */
static void test_passes_and_drops(void)
{
    const char *url = test_pg_db("ackgate", false);
    passed_t got = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int64_t before = ackgate_now_us();
    ackgate_t *g = ackgate_start(url, "tg1", on_pass, &got);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_TRUE_FATAL(wait_ready(g, 10000));
    CU_ASSERT_FALSE(ackgate_ready(g, before)); /* a batch older than the connection cannot be vouched for */
    put(g, 1, 3, ackgate_now_us());
    put(g, 4, 2, ackgate_now_us());
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 5);
    for (size_t i = 0; i < 5 && i < passed_n(&got); i++) {
        char want[BUS_ID_MAX];
        snprintf(want, sizeof want, "%d-0", (int)i + 1);
        CU_ASSERT_STRING_EQUAL(got.ids[i], want); /* in the order handed in */
    }
    CU_ASSERT_EQUAL(ackgate_dropped(g), 0);
    put(g, 100, 2, before);
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 5);
    CU_ASSERT_EQUAL(ackgate_dropped(g), 2);
    CU_ASSERT_EQUAL(ackgate_dropped(g), 0); /* counted since the last call */
    ackgate_stop(g);
    PGconn *c = connect_to(url);
    CU_ASSERT_EQUAL(ackgate_flush_on(c), 0);
    PQfinish(c);
}

/* A gate whose flush cannot work (its role may not call the function that
 * writes the flush's WAL) never becomes ready: what is handed in is dropped.
 * It keeps trying (with its back-off, whose shape this does not pin) and
 * becomes ready once the flush works; then it passes batches on. */
static void test_backs_off_until_flush_works(void)
{
    const char *url = test_pg_db("ackgateoff", false);
    char role[48], sql[1024];
    snprintf(role, sizeof role, "t_gate_%d", (int)getpid());
    PGconn *c = connect_to(url);
    /* every signature the server has (PostgreSQL 17 added an argument) */
    PGresult *r = pg_query(c,
                           "SELECT string_agg(oid::regprocedure::text, ', ') FROM pg_proc"
                           " WHERE proname = 'pg_logical_emit_message'",
                           0, NULL);
    CU_ASSERT_TRUE_FATAL(r && !PQgetisnull(r, 0, 0));
    char *fns = xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    snprintf(sql, sizeof sql, "DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN; REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC",
             role, role, fns);
    ASSERT_OK(pg_exec(c, sql));
    char *role_url = xasprintf("%s%suser=%s", url, strchr(url, '?') ? "&" : "?", role);
    passed_t got = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ackgate_t *g = ackgate_start(role_url, "tg2", on_pass, &got);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_FALSE(wait_ready(g, 1500)); /* tries at about 0, 0.1, 0.3, 0.7 and 1.5 s */
    put(g, 1, 4, ackgate_now_us());
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 0);
    CU_ASSERT_EQUAL(ackgate_dropped(g), 4);
    snprintf(sql, sizeof sql, "GRANT EXECUTE ON FUNCTION %s TO %s", fns, role);
    ASSERT_OK(pg_exec(c, sql));
    CU_ASSERT_TRUE_FATAL(wait_ready(g, 30000)); /* the next try, 3.1 or 6.3 s after the first */
    put(g, 10, 2, ackgate_now_us());
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 2);
    CU_ASSERT_EQUAL(ackgate_dropped(g), 0);
    ackgate_stop(g);
    snprintf(sql, sizeof sql, "DROP OWNED BY %s; DROP ROLE %s", role, role);
    ASSERT_OK(pg_exec(c, sql));
    PQfinish(c);
    free(role_url);
    free(fns);
}

/* The gate's connection breaks (its backend is terminated): the flush that
 * finds it broken drops what it was to vouch for, and the gate connects
 * again; a batch begun after that passes. */
static void test_broken_connection(void)
{
    const char *url = test_pg_db("ackgatebroken", false);
    passed_t got = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ackgate_t *g = ackgate_start(url, "tg3", on_pass, &got);
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    CU_ASSERT_TRUE_FATAL(wait_ready(g, 10000));
    PGconn *c = connect_to(url);
    PGresult *r = pg_query(c,
                           "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                           " WHERE application_name = 'ecom-tg3-ackgate' AND datname = current_database()",
                           0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    put(g, 1, 3, ackgate_now_us()); /* begun on the old connection, which the gate still takes for live */
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 0);
    CU_ASSERT_EQUAL(ackgate_dropped(g), 3);
    CU_ASSERT_TRUE_FATAL(wait_ready(g, 10000)); /* connected again after 100 ms */
    put(g, 10, 2, ackgate_now_us());
    CU_ASSERT_EQUAL(ackgate_wait(g, 10000), 0);
    CU_ASSERT_EQUAL(passed_n(&got), 2);
    ackgate_stop(g);
    PQfinish(c);
}

int main(void)
{
    log_configure(getenv("TEST_LOG_LEVEL") ? getenv("TEST_LOG_LEVEL") : "error", "text");
    CU_TestInfo tests[] = {
        {"batches begun after the gate's connection pass after a flush; older ones are dropped (postgres)",
         test_passes_and_drops},
        {"a gate whose flush cannot work is never ready, tries again, and is ready once it works (postgres)",
         test_backs_off_until_flush_works},
        {"a broken connection drops what it held; the gate connects again (postgres)", test_broken_connection},
        CU_TEST_INFO_NULL,
    };
    return test_main("ackgate", tests, NULL, NULL);
}
