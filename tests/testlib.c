/* tests/testlib.c: see testlib.h. */
#include "tests/testlib.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/pg.h"
#include "core/redis.h"

#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static char *urls[128]; /* the URLs handed out, freed at the end */
static int nurls;

static _Noreturn void die(const char *msg)
{
    fprintf(stderr, "test setup: %s\n", msg);
    exit(2);
}

static void keep_url(char *url)
{
    if (nurls == (int)(sizeof urls / sizeof urls[0]))
        die("too many test databases in one program (raise urls[] in tests/testlib.c)");
    urls[nurls++] = url;
}

int test_main(const char *suite, CU_TestInfo *tests, int (*init)(void), int (*clean)(void))
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    /* TEST_ONLY=text runs only the tests whose name holds it (none found: a failure) */
    const char *only = getenv("TEST_ONLY");
    if (only && *only) {
        size_t k = 0;
        for (size_t i = 0; tests[i].pName; i++)
            if (strstr(tests[i].pName, only))
                tests[k++] = tests[i];
        tests[k] = (CU_TestInfo)CU_TEST_INFO_NULL;
    }
    CU_SuiteInfo suites[] = {{(char *)suite, init, clean, NULL, NULL, tests}, CU_SUITE_INFO_NULL};
    if (CU_register_suites(suites) != CUE_SUCCESS)
        return 2;
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    for (int i = 0; i < nurls; i++)
        free(urls[i]);
    return failed || ran == 0 ? 1 : 0;
}

const char *test_bin(const char *name)
{
    static char path[8][512];
    static int n;
    const char *dir = getenv("ECOM_BIN_DIR");
    char *p = path[n++ % 8];
    snprintf(p, 512, "%s/%s", dir ? dir : "build-test/bin", name);
    return p;
}

int test_sh(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *cmd = NULL;
    if (vasprintf(&cmd, fmt, ap) < 0)
        die("out of memory");
    va_end(ap);
    int rc = system(cmd);
    free(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

const char *test_pg_db(const char *name, bool migrate)
{
    const char *base = getenv("DATABASE_URL");
    if (!base || !*base)
        die("DATABASE_URL is not set: run the tests through `make test` (scripts/test-env)");
    char *err = NULL;
    PGconn *c = pg_connect(base, "test", &err);
    if (!c)
        die(err);
    char db[96];
    snprintf(db, sizeof db, "t_%s_%d", name, (int)getpid());
    if (pg_exec(c, "SET client_min_messages = warning") != 0)
        die("set failed");
    char *sql = xasprintf("DROP DATABASE IF EXISTS %s", db);
    if (pg_exec(c, sql) != 0)
        die("drop database failed");
    free(sql);
    sql = xasprintf("CREATE DATABASE %s", db);
    if (pg_exec(c, sql) != 0)
        die("create database failed");
    free(sql);
    PQfinish(c);
    /* replace the database name in the URL: everything after the last '/' */
    const char *slash = strrchr(base, '/');
    const char *q = strchr(slash, '?');
    char *url = xasprintf("%.*s/%s%s", (int)(slash - base), base, db, q ? q : "");
    keep_url(url);
    if (migrate) {
        char *cmd = xasprintf("DATABASE_URL='%s' %s migrate >/tmp/ecom-migrate-%d.log 2>&1", url,
                              test_bin("ecom"), (int)getpid());
        int rc = test_sh("%s", cmd);
        free(cmd);
        if (rc != 0)
            die("ecom migrate failed (see /tmp/ecom-migrate-*.log)");
    }
    return url;
}

static char priv_dir[128];
static int priv_port;

static void priv_stop(void)
{
    if (priv_port) {
        test_sh("redis-cli -p %d shutdown nosave >/dev/null 2>&1", priv_port);
        test_sh("rm -rf %s", priv_dir);
        priv_port = 0;
    }
}

static int priv_start(void)
{
    if (test_sh("redis-server --bind 127.0.0.1 --port %d --dir %s --appendonly yes --appendfsync everysec"
                " --save '' --daemonize yes --pidfile %s/redis.pid --logfile %s/redis.log",
                priv_port, priv_dir, priv_dir, priv_dir) != 0)
        return -1;
    for (int i = 0; i < 200; i++) {
        if (test_sh("redis-cli -p %d ping 2>/dev/null | grep -q PONG", priv_port) == 0)
            return 0;
        usleep(25000);
    }
    return -1;
}

const char *test_redis_private(void)
{
    static const char *url; /* one server per process: the tests that use it run one after another */
    if (url)
        return url;
    snprintf(priv_dir, sizeof priv_dir, "/tmp/ecom-redis-%d", (int)getpid());
    if (test_sh("mkdir -p %s", priv_dir) != 0)
        die("cannot create a folder for Redis");
    for (int attempt = 0; attempt < 20; attempt++) {
        priv_port = 20000 + (int)(((unsigned)getpid() * 7919u + (unsigned)attempt * 104729u) % 12000u);
        if (test_sh("redis-cli -p %d ping >/dev/null 2>&1", priv_port) == 0)
            continue; /* taken */
        if (priv_start() == 0) {
            atexit(priv_stop);
            char *u = xasprintf("redis://127.0.0.1:%d", priv_port);
            keep_url(u);
            url = u;
            return url;
        }
    }
    die("cannot start a private Redis");
}

int test_redis_private_restart(int pause_ms)
{
    if (test_sh("redis-cli -p %d shutdown >/dev/null 2>&1", priv_port) != 0) {
        /* SHUTDOWN closes the connection before it answers */
    }
    for (int i = 0; i < 200 && test_sh("redis-cli -p %d ping >/dev/null 2>&1", priv_port) == 0; i++)
        usleep(25000);
    usleep((useconds_t)pause_ms * 1000);
    return priv_start();
}

/* ---- a private PostgreSQL server ---- */

static char pgp_dir[128], pgp_bin[256], pgp_as[96];
static int pgp_port;

static void pgp_stop(void)
{
    if (pgp_port) {
        test_sh("%s %s/pg_ctl -D %s/pg -m immediate -w stop >/dev/null 2>&1", pgp_as, pgp_bin, pgp_dir);
        test_sh("rm -rf %s", pgp_dir);
        pgp_port = 0;
    }
}

static int pgp_start(void)
{
    return test_sh("%s %s/pg_ctl -D %s/pg -l %s/pg.log -w -t 60 start >/dev/null", pgp_as, pgp_bin, pgp_dir, pgp_dir);
}

static bool port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

const char *test_pg_private(void)
{
    static const char *url;
    if (url)
        return url;
    FILE *f = popen("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1", "r");
    if (!f || !fgets(pgp_bin, sizeof pgp_bin, f))
        die("PostgreSQL server binaries not found (run scripts/bootstrap)");
    pclose(f);
    pgp_bin[strcspn(pgp_bin, "\n")] = 0;
    /* as scripts/test-env runs its servers: initdb refuses root */
    const char *as = getenv("ECOM_TEST_REDIS_RUN_AS");
    snprintf(pgp_as, sizeof pgp_as, "%s", as ? as : "");
    snprintf(pgp_dir, sizeof pgp_dir, "/tmp/ecom-pg-%d", (int)getpid());
    if (test_sh("rm -rf %s && mkdir -p %s && chmod 755 %s", pgp_dir, pgp_dir, pgp_dir) != 0 ||
        (*pgp_as && test_sh("chown ecom-test %s", pgp_dir) != 0))
        die("cannot create a folder for PostgreSQL");
    if (test_sh("%s %s/initdb -D %s/pg -U postgres -A trust -E UTF8 --no-sync >%s/initdb.log 2>&1", pgp_as, pgp_bin,
                pgp_dir, pgp_dir) != 0)
        die("initdb failed for the private PostgreSQL");
    atexit(pgp_stop);
    for (int attempt = 0; attempt < 20; attempt++) {
        int port = 20000 + (int)(((unsigned)getpid() * 104729u + (unsigned)attempt * 7919u) % 12000u);
        if (!port_free(port))
            continue;
        pgp_port = port;
        if (test_sh(
                "printf \"listen_addresses = '127.0.0.1'\\nport = %d\\nunix_socket_directories = '%s'\\n"
                "max_connections = 100\\nwal_init_zero = off\\nlog_min_messages = fatal\\n\" >> %s/pg/postgresql.conf",
                port, pgp_dir, pgp_dir) != 0)
            die("cannot configure the private PostgreSQL");
        if (pgp_start() == 0) {
            char *u = xasprintf("postgresql://postgres@127.0.0.1:%d/postgres", port);
            keep_url(u);
            char *cmd = xasprintf("DATABASE_URL='%s' %s migrate >/tmp/ecom-migrate-%d.log 2>&1", u, test_bin("ecom"),
                                  (int)getpid());
            int rc = test_sh("%s", cmd);
            free(cmd);
            if (rc != 0)
                die("ecom migrate failed (see /tmp/ecom-migrate-*.log)");
            url = u;
            return url;
        }
    }
    die("cannot start a private PostgreSQL");
}

int test_pg_private_crash(int pause_ms)
{
    if (test_sh("%s %s/pg_ctl -D %s/pg -m immediate -w stop >/dev/null 2>&1", pgp_as, pgp_bin, pgp_dir) != 0)
        return -1;
    usleep((useconds_t)pause_ms * 1000);
    return pgp_start();
}

redisReply *test_redis_command(const char *url, const char *fmt, ...)
{
    char *err = NULL;
    redisContext *c = redis_connect_url(url, 2000, &err);
    free(err);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

const char *test_redis_db(void)
{
    /* One db number per test program, leased for it in db 0 (the test-env
     * server has 64): numbers handed out round-robin came back to a program
     * still using theirs once 63 were drawn, and its FLUSHDB emptied another
     * program's streams in the middle of a test. Each call empties it. */
    static long long mine;
    const char *base = getenv("REDIS_URL");
    if (!base || !*base)
        die("REDIS_URL is not set: run the tests through `make test` (scripts/test-env)");
    char *err = NULL;
    redisContext *c = redis_connect_url(base, 2000, &err);
    if (!c)
        die(err);
    for (int tries = 0; !mine && tries < 63; tries++) {
        redisReply *r = redisCommand(c, "INCR ecom-test:db");
        if (!r || r->type != REDIS_REPLY_INTEGER)
            die("INCR failed");
        long long n = 1 + (r->integer - 1) % 63;
        freeReplyObject(r);
        r = redisCommand(c, "SET ecom-test:lease:%lld %d NX EX 7200", n, (int)getpid());
        if (r && r->type == REDIS_REPLY_STATUS)
            mine = n;
        freeReplyObject(r);
    }
    if (!mine)
        die("every Redis db number is leased to another test program");
    redisReply *r = redisCommand(c, "SELECT %lld", mine);
    freeReplyObject(r);
    r = redisCommand(c, "FLUSHDB");
    freeReplyObject(r);
    redisFree(c);
    char *url = redis_url_with_db(base, (int)mine);
    if (!url)
        die("REDIS_URL does not parse");
    keep_url(url);
    return url;
}

long long test_rows_read(db_t *db, const char *table)
{
    CU_ASSERT_EQUAL(pg_exec(db_pg(db), "SELECT pg_stat_force_next_flush()"), 0);
    CU_ASSERT_EQUAL(pg_exec(db_pg(db), "SELECT pg_stat_clear_snapshot()"), 0);
    const char *p[] = {table};
    PGresult *r = pg_query(db_pg(db),
                           "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
                           " FROM pg_stat_user_tables WHERE relid = $1::regclass",
                           1, p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    long long n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

uint64_t test_janitor_pass(const janitor_opts_t *o)
{
    janitor_t *j = janitor_start(o);
    CU_ASSERT_PTR_NOT_NULL(j);
    if (!j)
        return UINT64_MAX;
    /* real time: a test may have frozen the fake clock */
    for (int i = 0; i < 1000 && janitor_passes(j) == 0; i++)
        clock_sleep_ms(20);
    CU_ASSERT_TRUE(janitor_passes(j) > 0);
    uint64_t n = janitor_deleted(j);
    janitor_stop(j);
    return n;
}
