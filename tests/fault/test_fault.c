/* tests/fault/test_fault.c: exactly-once under faults, on real PostgreSQL and
 * Redis. While 20,000 messages flow through two `ecom outbox-worker` processes
 * to three consumer groups (each a separate worker process running the
 * service runtime), drainers and workers are killed with SIGKILL at random
 * moments and restarted, and Redis (a private server) is restarted three times. At the end every group
 * applied every message exactly once, in order per aggregate.
 *
 * This program is also the worker: `test_fault worker GROUP` runs the runtime
 * with a handler that records each application in test_applied. */
#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"
#include "inbox/inbox.h"
#include "services/runtime.h"
#include "tests/testlib.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOTAL 20000
#define AGGS 200
#define GROUPS 3

static const char *const topics[] = {"orders", NULL};
static char self_path[1024];

/* ---- worker mode ---- */

static atomic_bool worker_stop;

static void on_term(int sig)
{
    (void)sig;
    atomic_store(&worker_stop, true);
}

static svc_result_t record(svc_ctx_t *c, void *arg)
{
    (void)arg;
    char seq[24], deliveries[16];
    snprintf(seq, sizeof seq, "%lld", (long long)c->msg->seq);
    snprintf(deliveries, sizeof deliveries, "%u", (unsigned)c->deliveries);
    const char *p[] = {c->group, c->msg->id, c->msg->aggregate_id, seq, c->entry_id ? c->entry_id : "", deliveries};
    PGresult *r = pg_query(
        db_pg(c->tx), "INSERT INTO test_applied (grp, id, agg, seq, entry, deliveries) VALUES ($1, $2, $3, $4, $5, $6)",
        6, p);
    if (!r) {
        snprintf(c->error, sizeof c->error, "insert failed");
        return SVC_RETRY;
    }
    PQclear(r);
    return SVC_OK;
}

static int worker_main(const char *group)
{
    log_configure("error", "text");
    log_set_role(group);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    svc_def_t def = {.group = group, .topics = topics, .handle = record};
    char consumer[64];
    snprintf(consumer, sizeof consumer, "fault-%s", group); /* stable across restarts */
    svc_opts_t o = {.database_url = getenv("DATABASE_URL"), .redis_url = getenv("REDIS_URL"), .consumer = consumer,
                    .batch = 100, .block_ms = 100, .max_attempts = 5, .reclaim_idle_ms = 2000, .backoff_ms = 20,
                    .inbox_retain_s = 3600};
    return svc_run(&def, &o, &worker_stop);
}

/* ---- the test ---- */

typedef struct proc {
    pid_t pid;
    char what[32];
} proc_t;

static const char *pg_url, *redis_url;

static pid_t spawn(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DATABASE_URL", pg_url, 1);
        setenv("REDIS_URL", redis_url, 1);
        setenv("ADMIN_PORT", "0", 1);
        setenv("LOG_LEVEL", "error", 1);
        setenv("OUTBOX_POLL_MS", "20", 1);
        setenv("OUTBOX_BATCH", "200", 1);
        setenv("STREAM_TRIM_INTERVAL_MS", "500", 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static pid_t spawn_drainer(void)
{
    char *argv[] = {(char *)test_bin("ecom"), "outbox-worker", NULL};
    return spawn(argv);
}

static pid_t spawn_worker(int g)
{
    static char groups[GROUPS][8] = {"f1", "f2", "f3"};
    char *argv[] = {self_path, "worker", groups[g], NULL};
    return spawn(argv);
}

/* Processes that ended by themselves (a crash, a sanitizer report) rather than
 * by our SIGKILL, or that did not exit 0 on SIGTERM. */
static int unexpected_exits;

static void unexpected(pid_t pid, int st, const char *when)
{
    unexpected_exits++;
    if (WIFSIGNALED(st))
        fprintf(stderr, "\n  process %d %s: killed by signal %d\n", (int)pid, when, WTERMSIG(st));
    else
        fprintf(stderr, "\n  process %d %s: exit status %d\n", (int)pid, when, WEXITSTATUS(st));
}

static void kill9(pid_t pid)
{
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
        unexpected(pid, st, "ended before it was killed");
        return;
    }
    kill(pid, SIGKILL);
    if (waitpid(pid, &st, 0) == pid && !(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
        unexpected(pid, st, "ended before it was killed");
}

static void stop_proc(pid_t pid)
{
    kill(pid, SIGTERM);
    int64_t end = clock_mono_ms() + 10000;
    int st = 0;
    while (clock_mono_ms() < end) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                unexpected(pid, st, "on SIGTERM");
            return;
        }
        clock_sleep_ms(20);
    }
    kill9(pid);
}

typedef struct producer {
    int per_commit, pause_ms;
    atomic_int appended;
    atomic_bool abort; /* the test gave up: stop producing */
} producer_t;

/* After a commit whose answer was lost (the server crashed): whether it
 * happened, by the marker row it wrote. 1 yes, 0 no, -1 not known yet. */
static int marker_committed(int start)
{
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "producer-check", &err);
    free(err);
    if (!c)
        return -1;
    char n[16];
    snprintf(n, sizeof n, "%d", start);
    const char *p[] = {n};
    PGresult *r = pg_query(c, "SELECT count(*) FROM test_produced WHERE n = $1", 1, p);
    int rc = r ? PQgetvalue(r, 0, 0)[0] == '1' : -1;
    PQclear(r);
    PQfinish(c);
    return rc;
}

static void *produce(void *arg)
{
    producer_t *pr = arg;
    char *err = NULL;
    db_t *db = db_open_pg(pg_url, "producer", &err);
    ECOM_ASSERT(db);
    int i = 0;
    while (i < TOTAL && !atomic_load(&pr->abort)) {
        if (db_begin(db) != 0) {
            clock_sleep_ms(50); /* the server is down */
            continue;
        }
        int start = i;
        char n[16];
        snprintf(n, sizeof n, "%d", start);
        const char *mp[] = {n};
        PGresult *mr = db_exec_params_bin(db, "INSERT INTO test_produced (n) VALUES ($1)", 1, mp, NULL, NULL, NULL);
        bool ok = mr != NULL;
        PQclear(mr);
        for (int k = 0; ok && k < pr->per_commit && i < TOTAL; k++, i++) {
            char agg[32], payload[48];
            snprintf(agg, sizeof agg, "agg-%d", i % AGGS);
            snprintf(payload, sizeof payload, "{\"n\":%d}", i);
            outbox_msg_t m = {.topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = agg,
                              .payload = payload};
            const char *why;
            if (outbox_append(db, &m, NULL, &why) != 0) {
                ok = false;
                break;
            }
        }
        if (!ok) {
            db_rollback(db);
            i = start;
            continue;
        }
        if (db_commit(db) != 0) {
            int done;
            while ((done = marker_committed(start)) < 0 && !atomic_load(&pr->abort))
                clock_sleep_ms(50);
            if (done != 1) {
                i = start;
                continue;
            }
        }
        atomic_store(&pr->appended, i);
        clock_sleep_ms(pr->pause_ms);
    }
    db_close(db);
    return NULL;
}

static uint64_t count_inbox(PGconn *c, const char *grp)
{
    const char *p[] = {grp};
    PGresult *r = pg_query(c, "SELECT count(*) FROM bus.inbox WHERE grp = $1", 1, p);
    uint64_t n = r ? strtoull(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return n;
}

static void check_exactly_once(PGconn *c);
static PGconn *make_tables(void);

static void test_kill9_everything(void)
{
    pg_url = test_pg_db("fault", true);
    redis_url = test_redis_private(); /* restarted below: not the server other tests share */
    PGconn *c = make_tables();
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    pid_t drainers[2] = {spawn_drainer(), spawn_drainer()};
    pid_t workers[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        workers[g] = spawn_worker(g);

    producer_t pr = {.per_commit = 20, .pause_ms = 5}; /* about 4,000 messages a second */
    pthread_t prod;
    pthread_create(&prod, NULL, produce, &pr);
    unsigned seed = (unsigned)getpid();
    /* FAULT_REDIS_RESTARTS=N restarts Redis N times, evenly through the run
     * (3 by default: a restart's end is where a partly refused pipeline once
     * reordered an aggregate, about once in seventy restarts; more to hunt) */
    const char *nr = getenv("FAULT_REDIS_RESTARTS");
    int want_restarts = nr && atoi(nr) > 0 ? atoi(nr) : 3;
    int kills = 0, redis_restarts = 0;
    /* until the producer is done and every restart has happened (a restart
     * due late comes while the last messages are still on their way) */
    while (atomic_load(&pr.appended) < TOTAL || redis_restarts < want_restarts) {
        clock_sleep_ms(150 + rand_r(&seed) % 400);
        int what = rand_r(&seed) % 5;
        if (what < 2) {
            int d = rand_r(&seed) % 2;
            kill9(drainers[d]);
            drainers[d] = spawn_drainer();
        } else {
            int g = rand_r(&seed) % GROUPS;
            kill9(workers[g]);
            workers[g] = spawn_worker(g);
        }
        kills++;
        if (redis_restarts < want_restarts &&
            atomic_load(&pr.appended) > TOTAL / (want_restarts + 1) * (redis_restarts + 1)) {
            CU_ASSERT_EQUAL(test_redis_private_restart(300), 0); /* the system runs without Redis a moment */
            redis_restarts++;
        }
    }
    pthread_join(prod, NULL);
    CU_ASSERT_TRUE(kills >= 5);

    check_exactly_once(c);
    fprintf(stderr, "\n  fault run: %d kills, %d Redis restart%s\n", kills, redis_restarts,
            redis_restarts == 1 ? "" : "s");
    for (int d = 0; d < 2; d++)
        stop_proc(drainers[d]);
    for (int g = 0; g < GROUPS; g++)
        stop_proc(workers[g]);
    CU_ASSERT_EQUAL(unexpected_exits, 0); /* every death was one of ours */
    PQfinish(c);
}

/* Every group applied every message exactly once, in order per aggregate,
 * and the outbox is empty. */
static void check_exactly_once(PGconn *c)
{
    int64_t end = clock_mono_ms() + 180000;
    const char *groups[GROUPS] = {"f1", "f2", "f3"};
    bool all = false;
    while (!all && clock_mono_ms() < end) {
        all = true;
        for (int g = 0; g < GROUPS; g++)
            all = all && count_inbox(c, groups[g]) >= TOTAL;
        if (!all)
            clock_sleep_ms(200);
    }
    CU_ASSERT_TRUE(all);
    clock_sleep_ms(500);
    for (int g = 0; g < GROUPS; g++) {
        const char *p[] = {groups[g]};
        CU_ASSERT_EQUAL(count_inbox(c, groups[g]), TOTAL);
        PGresult *r = pg_query(c, "SELECT count(*), count(DISTINCT id) FROM test_applied WHERE grp = $1", 1, p);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_EQUAL(strtoll(PQgetvalue(r, 0, 0), NULL, 10), TOTAL); /* applied once each */
        CU_ASSERT_EQUAL(strtoll(PQgetvalue(r, 0, 1), NULL, 10), TOTAL);
        PQclear(r);
        r = pg_query(c,
                     "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY agg ORDER BY ord) AS prev"
                     " FROM test_applied WHERE grp = $1) t WHERE prev IS NOT NULL AND seq <> prev + 1",
                     1, p);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "0"); /* in order per aggregate */
        if (strcmp(PQgetvalue(r, 0, 0), "0") != 0) { /* show the first ones out of order */
            PGresult *x = pg_query(c,
                                   "SELECT agg, prev, seq, ord FROM (SELECT agg, seq, ord, lag(seq) OVER"
                                   " (PARTITION BY agg ORDER BY ord) AS prev FROM test_applied WHERE grp = $1) t"
                                   " WHERE prev IS NOT NULL AND seq <> prev + 1 ORDER BY ord LIMIT 5",
                                   1, p);
            for (int i = 0; x && i < PQntuples(x); i++)
                fprintf(stderr, "  %s: %s applied after %s for %s (ord %s)\n", groups[g], PQgetvalue(x, i, 2),
                        PQgetvalue(x, i, 1), PQgetvalue(x, i, 0), PQgetvalue(x, i, 3));
            if (x && PQntuples(x) > 0) { /* the first one's aggregate around it, and its outbox history */
                const char *q[] = {groups[g], PQgetvalue(x, 0, 0), PQgetvalue(x, 0, 2)};
                PGresult *y = pg_query(c,
                                       "SELECT string_agg(seq || '@' || ord || '@' || entry || '/' || deliveries, ' '"
                                       " ORDER BY ord) FROM test_applied"
                                       " WHERE grp = $1 AND agg = $2 AND seq BETWEEN $3::bigint - 3 AND $3::bigint + 3",
                                       3, q);
                if (y && PQntuples(y) == 1)
                    fprintf(stderr, "  %s %s seq@ord@entry/deliveries: %s\n", groups[g], q[1], PQgetvalue(y, 0, 0));
                PQclear(y);
                /* the drainers' side: published in pos order (the archive's time says when each went) */
                const char *q2[] = {q[1], q[2]};
                y = pg_query(c,
                             "SELECT string_agg(seq || '@pos' || pos || '@' || to_char(published_at, 'HH24:MI:SS.US'),"
                             " ' ' ORDER BY pos) FROM bus.outbox_published WHERE aggregate_id = $1"
                             " AND seq BETWEEN $2::bigint - 2 AND $2::bigint + 2",
                             2, q2);
                if (y && PQntuples(y) == 1)
                    fprintf(stderr, "  %s seq@pos@archived: %s\n", q[1], PQgetvalue(y, 0, 0));
                PQclear(y);
            }
            PQclear(x);
        }
        PQclear(r);
    }
    PGresult *r = pg_query(c, "SELECT (SELECT count(*) FROM bus.outbox), (SELECT count(*) FROM bus.outbox_dead)",
                           0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "0");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "0");
    PQclear(r);
}

static PGconn *make_tables(void)
{
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "test", &err);
    free(err);
    if (!c)
        return NULL;
    if (pg_exec(c, "CREATE TABLE test_applied (ord bigserial PRIMARY KEY, grp text, id uuid, agg text,"
                   " seq bigint, entry text, deliveries int); CREATE TABLE test_produced (n int PRIMARY KEY)") != 0) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* The services commit asynchronously and acknowledge an entry only once its
 * transaction is durable (services/ackgate.h). A crash of PostgreSQL loses
 * the last of their commits: those entries must still be pending, and be
 * applied again, once. The producer commits a hundred messages every 25 ms
 * (synchronously, as the gateway does), so that between its flushes the
 * services commit many more. */
static void test_postgres_crash(void)
{
    pg_url = test_pg_private(); /* crashed below: not the server other tests share */
    redis_url = test_redis_db();
    PGconn *c = make_tables();
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    pid_t drainer = spawn_drainer();
    pid_t workers[GROUPS];
    for (int g = 0; g < GROUPS; g++)
        workers[g] = spawn_worker(g);
    producer_t pr = {.per_commit = 100, .pause_ms = 25};
    pthread_t prod;
    pthread_create(&prod, NULL, produce, &pr);
    const char *nc = getenv("FAULT_PG_CRASHES");
    int want = nc && atoi(nc) > 0 ? atoi(nc) : 4, crashes = 0;
    int64_t deadline = clock_mono_ms() + 120000; /* fail, not hang, when the server does not come back */
    while (crashes < want && clock_mono_ms() < deadline) {
        if (atomic_load(&pr.appended) > TOTAL / (want + 1) * (crashes + 1)) {
            PQfinish(c); /* the crash ends it */
            CU_ASSERT_EQUAL(test_pg_private_crash(200), 0);
            c = NULL;
            crashes++;
        }
        clock_sleep_ms(20);
    }
    while (atomic_load(&pr.appended) < TOTAL && clock_mono_ms() < deadline)
        clock_sleep_ms(50);
    atomic_store(&pr.abort, true);
    pthread_join(prod, NULL);
    CU_ASSERT_EQUAL(crashes, want);
    CU_ASSERT_EQUAL(atomic_load(&pr.appended), TOTAL);
    char *err = NULL;
    c = pg_connect(pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL(c);
    if (c && atomic_load(&pr.appended) == TOTAL) /* else the children are stopped, and the test has failed */
        check_exactly_once(c);
    fprintf(stderr, "\n  fault run: %d PostgreSQL crash%s\n", crashes, crashes == 1 ? "" : "es");
    stop_proc(drainer);
    for (int g = 0; g < GROUPS; g++)
        stop_proc(workers[g]);
    CU_ASSERT_EQUAL(unexpected_exits, 0);
    PQfinish(c);
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "worker") == 0)
        return worker_main(argv[2]);
    if (!realpath("/proc/self/exe", self_path))
        return 2;
    log_configure("error", "text");
    CU_TestInfo tests[] = {
        {"kill -9 drainers and workers, restart Redis: exactly once, in order", test_kill9_everything},
        {"PostgreSQL crashes: what the services committed last is applied again, once", test_postgres_crash},
        CU_TEST_INFO_NULL,
    };
    return test_main("fault", tests, NULL, NULL);
}
