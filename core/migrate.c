/* core/migrate.c: see migrate.h. */
#include "core/migrate.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/digest.h"
#include "core/pg.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_KEY "1162104654, 1" /* 'ECOM'+1: migrations */

static const char *const parts_all[] = {"bus", "gateway", "auth", "payment", "notification", "analytics", NULL};
static const char *const parts_payment[] = {"bus", "payment", NULL};
static const char *const parts_notification[] = {"bus", "notification", NULL};
static const char *const parts_analytics[] = {"bus", "analytics", NULL};
static const char *const parts_gateway[] = {"bus", "gateway", "auth", "payment", "notification", "analytics", NULL};
static const char *const parts_bus[] = {"bus", NULL};

const char *const *migrate_parts_for(const char *service)
{
    static const struct {
        const char *name;
        const char *const *parts;
    } map[] = {{"payment", parts_payment},     {"notification", parts_notification},
               {"analytics", parts_analytics}, {"gateway", parts_gateway},
               {"outbox-worker", parts_bus},   {"all", parts_all}};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(map); i++)
        if (strcmp(map[i].name, service) == 0)
            return map[i].parts;
    return NULL;
}

static bool wanted(const char *const *parts, const char *part)
{
    if (!parts)
        return true;
    for (; *parts; parts++)
        if (strcmp(*parts, part) == 0)
            return true;
    return false;
}

static bool name_ok(const char *n)
{
    size_t len = strlen(n);
    return len > 8 && isdigit((unsigned char)n[0]) && isdigit((unsigned char)n[1]) &&
           isdigit((unsigned char)n[2]) && n[3] == '_' && strcmp(n + len - 4, ".sql") == 0;
}

/* Order of application: the parts in parts_all order, then file name. */
static int part_rank(const char *part)
{
    for (int i = 0; parts_all[i]; i++)
        if (strcmp(parts_all[i], part) == 0)
            return i;
    return 100;
}

static int cmp_files(const void *a, const void *b)
{
    const migration_file_t *x = *(migration_file_t *const *)a, *y = *(migration_file_t *const *)b;
    int d = part_rank(x->part) - part_rank(y->part);
    return d ? d : strcmp(x->name, y->name);
}

/* The first line of a libpq message (the server's LINE and caret lines
 * dropped), in a per-thread buffer that the next call overwrites. */
static const char *first_line(const char *m)
{
    static _Thread_local char line[512];
    size_t n = strcspn(m, "\n");
    snprintf(line, sizeof line, "%.*s", (int)(n < sizeof line ? n : sizeof line - 1), m);
    return line;
}

/* Takes the migrations' lock, waiting for another run to finish. It asks
 * again every 100 ms instead of waiting inside pg_advisory_lock: a statement
 * that waits holds a snapshot, which a CREATE INDEX CONCURRENTLY of the run
 * holding the lock waits for in turn (a deadlock PostgreSQL ends by killing
 * one side). 0 or -1. */
static int take_lock(PGconn *c)
{
    for (;;) {
        PGresult *r = pg_query(c, "SELECT pg_try_advisory_lock(" LOCK_KEY ")", 0, NULL);
        if (!r)
            return -1;
        bool got = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (got)
            return 0;
        clock_sleep_ms(100);
    }
}

/* Whether f runs outside a transaction (its first line is the mark). */
static bool no_transaction(const migration_file_t *f)
{
    size_t n = strlen(MIGRATE_NO_TRANSACTION);
    return strncmp(f->sql, MIGRATE_NO_TRANSACTION, n) == 0 && (f->sql[n] == '\n' || f->sql[n] == '\r');
}

/* After a no-transaction file f: 0 when f's part's schema (named like the
 * part) holds no invalid index that no build is still making; else -1, the
 * indexes named to err (a CONCURRENTLY build that failed, now or before:
 * IF NOT EXISTS would keep it). */
static int no_invalid_index(PGconn *c, const migration_file_t *f, FILE *err)
{
    const char *schema[] = {f->part};
    PGresult *r = pg_query(c,
                           "SELECT string_agg(i.indexrelid::regclass::text, ', ' ORDER BY i.indexrelid::regclass::text)"
                           " FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
                           " JOIN pg_namespace n ON n.oid = t.relnamespace WHERE NOT i.indisvalid AND n.nspname = $1"
                           " AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p"
                           " WHERE p.index_relid = i.indexrelid)",
                           1, schema);
    int rc = r && PQgetisnull(r, 0, 0) ? 0 : -1;
    if (!r)
        fprintf(err, "migrate: %s/%s: %s\n", f->part, f->name, first_line(PQerrorMessage(c)));
    else if (rc != 0)
        fprintf(err,
                "migrate: %s/%s: invalid index %s (a CONCURRENTLY build that failed): drop it (DROP INDEX"
                " CONCURRENTLY) and run migrate again\n",
                f->part, f->name, PQgetvalue(r, 0, 0));
    PQclear(r);
    return rc;
}

/* Applies f in a transaction with its record; or, a no-transaction file,
 * alone, then checks its part's indexes (no_invalid_index), then records it.
 * 0 or -1 (printed to err). */
static int apply(PGconn *c, const migration_file_t *f, const char *sum, FILE *err)
{
    const char *params[] = {f->part, f->name, sum};
    static const char record[] = "INSERT INTO public.ecom_migrations (part, name, checksum) VALUES ($1, $2, $3)";
    PGresult *r = NULL;
    if (!no_transaction(f)) {
        if (pg_exec(c, "BEGIN") == 0 && pg_exec(c, f->sql) == 0 && (r = pg_query(c, record, 3, params)) &&
            pg_exec(c, "COMMIT") == 0) {
            PQclear(r);
            return 0;
        }
        fprintf(err, "migrate: %s/%s failed: %s\n", f->part, f->name, first_line(PQerrorMessage(c)));
        PQclear(r);
        if (pg_exec(c, "ROLLBACK") != 0)
            fprintf(err, "migrate: rollback failed\n");
        return -1;
    }
    if (pg_exec(c, f->sql) != 0) {
        fprintf(err, "migrate: %s/%s failed (outside a transaction: what it did before the failure stays): %s\n",
                f->part, f->name, first_line(PQerrorMessage(c)));
        return -1;
    }
    if (no_invalid_index(c, f, err) != 0)
        return -1;
    if (!(r = pg_query(c, record, 3, params))) {
        fprintf(err, "migrate: %s/%s ran, but recording it failed: %s\n", f->part, f->name,
                first_line(PQerrorMessage(c)));
        return -1;
    }
    PQclear(r);
    return 0;
}

int migrate_run(const char *url, const char *const *parts, bool check_only, FILE *out, FILE *err)
{
    return migrate_run_set(url, migration_files, parts, check_only, out, err);
}

int migrate_run_set(const char *url, const migration_file_t *set, const char *const *parts, bool check_only, FILE *out,
                    FILE *err)
{
    int rc = -1;
    char *cerr = NULL;
    PGconn *c = pg_connect(url, "ecom-migrate", &cerr);
    const migration_file_t **files = NULL;
    PGresult *applied = NULL;
    if (!c) {
        fprintf(err, "migrate: cannot connect: %s\n", cerr);
        free(cerr);
        return -1;
    }
    size_t n = 0;
    for (const migration_file_t *f = set; f->part; f++)
        n++;
    files = xcalloc(n + 1, sizeof *files);
    size_t nf = 0;
    int problems = 0;
    for (const migration_file_t *f = set; f->part; f++) {
        if (!wanted(parts, f->part))
            continue;
        if (!name_ok(f->name)) {
            fprintf(err, "migrate: %s/%s: file names must look like NNN_name.sql\n", f->part, f->name);
            problems++;
        }
        files[nf++] = f;
    }
    if (problems)
        goto out;
    qsort(files, nf, sizeof *files, cmp_files);

    /* --check only reads: no lock, no table (none yet: everything is pending) */
    if (pg_exec(c, "SET client_min_messages = warning") != 0 ||
        (!check_only &&
         (take_lock(c) != 0 ||
          pg_exec(c, "CREATE TABLE IF NOT EXISTS public.ecom_migrations ("
                     " part text NOT NULL, name text NOT NULL, checksum text NOT NULL,"
                     " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (part, name))") != 0))) {
        fprintf(err, "migrate: %s\n", first_line(PQerrorMessage(c)));
        goto out;
    }
    bool table = true;
    if (check_only) {
        PGresult *t = pg_query(c, "SELECT to_regclass('public.ecom_migrations') IS NOT NULL", 0, NULL);
        if (!t) {
            fprintf(err, "migrate: %s\n", first_line(PQerrorMessage(c)));
            goto out;
        }
        table = PQgetvalue(t, 0, 0)[0] == 't';
        PQclear(t);
    }
    applied = pg_query(c,
                       table ? "SELECT part, name, checksum FROM public.ecom_migrations"
                             : "SELECT NULL::text, NULL::text, NULL::text WHERE false",
                       0, NULL);
    if (!applied) {
        fprintf(err, "migrate: cannot read public.ecom_migrations\n");
        goto out;
    }
    int pending = 0;
    bool *todo = xcalloc(nf + 1, sizeof *todo);
    for (size_t i = 0; i < nf; i++) {
        char sum[DIGEST_SHA256_HEX_LEN + 1];
        digest_sha256_hex(files[i]->sql, sum);
        bool found = false;
        for (int r = 0; r < PQntuples(applied); r++) {
            if (strcmp(PQgetvalue(applied, r, 0), files[i]->part) || strcmp(PQgetvalue(applied, r, 1), files[i]->name))
                continue;
            found = true;
            if (strcmp(PQgetvalue(applied, r, 2), sum) != 0) {
                fprintf(err, "migrate: %s/%s was edited after it was applied (checksum %.12s…, applied %.12s…)\n",
                        files[i]->part, files[i]->name, sum, PQgetvalue(applied, r, 2));
                problems++;
            }
        }
        if (!found) {
            todo[i] = true;
            pending++;
        }
    }
    if (problems) {
        free(todo);
        goto out;
    }
    if (check_only) {
        for (size_t i = 0; i < nf; i++)
            if (todo[i])
                fprintf(out, "pending %s/%s\n", files[i]->part, files[i]->name);
        fprintf(out, "%d pending\n", pending);
        free(todo);
        rc = pending ? 1 : 0;
        goto out;
    }
    for (size_t i = 0; i < nf; i++) {
        if (!todo[i])
            continue;
        char sum[DIGEST_SHA256_HEX_LEN + 1];
        digest_sha256_hex(files[i]->sql, sum);
        if (apply(c, files[i], sum, err) != 0) {
            free(todo);
            goto out;
        }
        fprintf(out, "applied %s/%s\n", files[i]->part, files[i]->name);
    }
    fprintf(out, "migrations up to date (%d applied now, %zu total)\n", pending, nf);
    free(todo);
    rc = 0;
out:
    PQclear(applied);
    free(files);
    PQfinish(c);
    return rc;
}
