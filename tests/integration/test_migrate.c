/* tests/integration/test_migrate.c: migrations that run outside a
 * transaction (CREATE INDEX CONCURRENTLY), on a real PostgreSQL: applied and
 * recorded once, refused with a clear error inside a transaction, and a
 * failed concurrent build's invalid index named instead of kept. (The rest of
 * `ecom migrate` is tested end to end by tests/scripts/migrate_ecomctl.sh.) */
#include "core/log.h"
#include "core/migrate.h"
#include "core/pg.h"
#include "tests/testlib.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ASSERT_OK(e) CU_ASSERT_EQUAL_FATAL((e), 0)

/* The one-value answer of sql on url, as text (owned), or NULL. */
static char *q1(const char *url, const char *sql)
{
    char *err = NULL;
    PGconn *c = pg_connect(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    PGresult *r = pg_query(c, sql, 0, NULL);
    char *v = r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    PQfinish(c);
    return v;
}

static bool q1_is(const char *url, const char *sql, const char *want)
{
    char *v = q1(url, sql);
    bool same = v && strcmp(v, want) == 0;
    if (!same)
        fprintf(stderr, "  %s -> %s (want %s)\n", sql, v ? v : "NULL", want);
    free(v);
    return same;
}

/* Runs migrate_run_set; what it wrote to its error stream into errtext. */
static int run(const char *url, const migration_file_t *set, char *errtext, size_t cap)
{
    FILE *out = tmpfile(), *err = tmpfile();
    CU_ASSERT_PTR_NOT_NULL_FATAL(out);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    int rc = migrate_run_set(url, set, NULL, false, out, err);
    rewind(err);
    size_t n = fread(errtext, 1, cap - 1, err);
    errtext[n] = '\0';
    fclose(out);
    fclose(err);
    return rc;
}

static const migration_file_t table_files[] = {
    {"t", "001_table.sql",
     "CREATE SCHEMA t; CREATE TABLE t.items (id int NOT NULL, code text NOT NULL);"
     " INSERT INTO t.items SELECT g, 'c' || (g % 10) FROM generate_series(1, 1000) g;"},
    {0}};

/* A CREATE INDEX CONCURRENTLY file with the mark is applied outside a
 * transaction and recorded; a run again is a no-op. */
static void test_concurrent_index(void)
{
    const char *url = test_pg_db("migconc", false);
    const migration_file_t set[] = {
        table_files[0],
        {"t", "002_items_id.sql", MIGRATE_NO_TRANSACTION "\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_id ON t.items (id);"},
        {0}};
    char err[1024];
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), 0);
    CU_ASSERT_TRUE(q1_is(url,
                         "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = 't.items_id'::regclass", "t"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "2"));
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), 0); /* nothing pending */
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "2"));
}

/* Without the mark the same statement runs in the file's transaction, which
 * PostgreSQL refuses: the run fails with its message, nothing is recorded. */
static void test_concurrent_needs_the_mark(void)
{
    const char *url = test_pg_db("migconcnomark", false);
    const migration_file_t set[] = {
        table_files[0], {"t", "002_items_id.sql", "CREATE INDEX CONCURRENTLY items_id ON t.items (id);"}, {0}};
    char err[1024];
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "t/002_items_id.sql failed"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "transaction block"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "1"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT to_regclass('t.items_id') IS NULL", "t"));
}

/* A concurrent build that fails (a unique index over duplicates) leaves an
 * invalid index. The run fails and names the index; a run again, whose IF
 * NOT EXISTS finds the invalid index, fails the same way instead of
 * recording the file over it. Once the duplicates are gone and the index
 * dropped, the file applies. */
static void test_failed_concurrent_build(void)
{
    const char *url = test_pg_db("migconcfail", false);
    const migration_file_t set[] = {
        table_files[0],
        {"t", "002_items_code.sql",
         MIGRATE_NO_TRANSACTION "\nCREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS items_code ON t.items (code);"},
        {0}};
    char err[1024];
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "t/002_items_code.sql failed (outside a transaction"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't.items_code'::regclass", "f"));
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "invalid index t.items_code"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "1"));
    char *e = NULL;
    PGconn *c = pg_connect(url, "test", &e);
    free(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(pg_exec(c, "DELETE FROM t.items WHERE id > 10"));
    ASSERT_OK(pg_exec(c, "DROP INDEX CONCURRENTLY t.items_code"));
    PQfinish(c);
    CU_ASSERT_EQUAL(run(url, set, err, sizeof err), 0);
    CU_ASSERT_TRUE(q1_is(url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't.items_code'::regclass", "t"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "2"));
}

typedef struct racer {
    const char *url;
    const migration_file_t *set;
    int rc;
    char err[1024];
    pthread_t th;
} racer_t;

static void *race(void *arg)
{
    racer_t *r = arg;
    r->rc = run(r->url, r->set, r->err, sizeof r->err);
    return NULL;
}

/* Two runs at once (the compose files start every migrate job together):
 * the second waits for the first's lock while the first builds an index
 * concurrently, which waits for every snapshot older than it. Waiting
 * inside pg_advisory_lock held one: each waited for the other until
 * PostgreSQL killed one side. Both succeed now, the file applied once. */
static void test_concurrent_runs(void)
{
    const char *url = test_pg_db("migconcrace", false);
    const migration_file_t set[] = {table_files[0],
                                    {"t", "002_items_id.sql",
                                     MIGRATE_NO_TRANSACTION
                                     "\nCREATE INDEX CONCURRENTLY IF NOT EXISTS items_id ON t.items (id);"},
                                    {0}};
    racer_t r[2] = {{.url = url, .set = set}, {.url = url, .set = set}};
    for (int i = 0; i < 2; i++)
        pthread_create(&r[i].th, NULL, race, &r[i]);
    for (int i = 0; i < 2; i++) {
        pthread_join(r[i].th, NULL);
        CU_ASSERT_EQUAL(r[i].rc, 0);
        if (r[i].rc != 0)
            fprintf(stderr, "  run %d: %s", i, r[i].err);
    }
    CU_ASSERT_TRUE(q1_is(url, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't.items_id'::regclass", "t"));
    CU_ASSERT_TRUE(q1_is(url, "SELECT count(*) FROM public.ecom_migrations WHERE part = 't'", "2"));
}

int main(void)
{
    log_configure(getenv("TEST_LOG_LEVEL") ? getenv("TEST_LOG_LEVEL") : "error", "text");
    CU_TestInfo tests[] = {
        {"a CONCURRENTLY index with the no-transaction mark is applied once and recorded (postgres)",
         test_concurrent_index},
        {"without the mark PostgreSQL refuses it: a clear error, nothing recorded (postgres)",
         test_concurrent_needs_the_mark},
        {"a failed concurrent build's invalid index is named, not recorded over (postgres)",
         test_failed_concurrent_build},
        {"two runs at once with a concurrent build both succeed, the file applied once (postgres)",
         test_concurrent_runs},
        CU_TEST_INFO_NULL,
    };
    return test_main("migrate", tests, NULL, NULL);
}
