/* tests/testlib.h: what every test program shares: running a CUnit suite as
 * one process, and private PostgreSQL databases and Redis db numbers so test
 * programs can run side by side against the servers scripts/test-env started. */
#ifndef ECOM_TESTLIB_H
#define ECOM_TESTLIB_H

#include <CUnit/CUnit.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/janitor.h"

/* Runs the tests (only those whose name holds $TEST_ONLY, when it is set);
 * returns the process exit code (0 when all passed, 1 also when none ran). */
int test_main(const char *suite, CU_TestInfo *tests, int (*init)(void), int (*clean)(void));

/* Starts a janitor with o, waits (at most 20 s; a CUnit failure after) until
 * it has ended its first pass, stops it; the rows it deleted, or UINT64_MAX
 * when it did not start. */
uint64_t test_janitor_pass(const janitor_opts_t *o);
/* Rows of table read so far (sequentially and through indexes), as the
 * statistics show them: this backend's counts are flushed first. */
long long test_rows_read(db_t *db, const char *table);

/* A fresh database on the test server, migrated when migrate is true.
 * Returns its URL (owned by testlib, valid until exit). Fails the process
 * with a message when DATABASE_URL is not set. */
const char *test_pg_db(const char *name, bool migrate);
/* A Redis URL on this test program's own db number (leased for it at the
 * first call, the same at every call, which empties it first). */
const char *test_redis_db(void);
/* A Redis server of this test program's own (for tests that restart it or
 * drop its clients): started on a free loopback port in a temporary folder
 * with AOF on, by the first call; later calls return the same URL.
 * test_redis_private_restart stops it gracefully and starts it again
 * (pause_ms later); it is stopped at exit. */
const char *test_redis_private(void);
int test_redis_private_restart(int pause_ms);
/* A PostgreSQL server of this test program's own (for tests that crash it):
 * made by initdb in a temporary folder (as scripts/test-env's unprivileged
 * user when run as root), on a free loopback port, migrated (`ecom
 * migrate`), by the first call; later calls return the same URL. It is
 * stopped and removed at exit. test_pg_private_crash stops it as a crash
 * would (an immediate shutdown: WAL still in the server's buffers is lost,
 * as are commits made with synchronous_commit off that it held) and starts
 * it again pause_ms later (crash recovery). */
const char *test_pg_private(void);
int test_pg_private_crash(int pause_ms);
/* Runs one command (redisCommand's format) on a connection of its own to
 * url: its reply (freeReplyObject), or NULL when Redis cannot be reached. */
struct redisReply *test_redis_command(const char *url, const char *fmt, ...);
/* Path of a built binary (ecom, ecomctl) of this build. */
const char *test_bin(const char *name);
/* Runs a shell command; returns its exit status. */
int test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define ASSERT_OK(e) CU_ASSERT_EQUAL_FATAL((e), 0)

#endif
