/* tests/testlib.c: see testlib.h. */
#include "tests/testlib.h"

#include "core/alloc.h"
#include "core/pg.h"
#include "core/redis.h"

#include <CUnit/Basic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
        priv_port = 20000 + (int)((getpid() * 7919 + attempt * 104729) % 12000);
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
    const char *base = getenv("REDIS_URL");
    if (!base || !*base)
        die("REDIS_URL is not set: run the tests through `make test` (scripts/test-env)");
    char *err = NULL;
    redisContext *c = redis_connect_url(base, 2000, &err);
    if (!c)
        die(err);
    redisReply *r = redisCommand(c, "INCR ecom-test:db");
    if (!r || r->type != REDIS_REPLY_INTEGER)
        die("INCR failed");
    long long n = 1 + (r->integer - 1) % 63;
    freeReplyObject(r);
    r = redisCommand(c, "SELECT %lld", n);
    freeReplyObject(r);
    r = redisCommand(c, "FLUSHDB");
    freeReplyObject(r);
    redisFree(c);
    char *url = xasprintf("%s/%lld", base, n);
    keep_url(url);
    return url;
}
