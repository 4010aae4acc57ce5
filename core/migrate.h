/* core/migrate.h: applies migrations/<part>/NNN_name.sql (embedded in the
 * binary at build time) in order, each in its own transaction, under an
 * advisory lock, recording each with its SHA-256. A re-run is a no-op; an
 * applied file whose text changed is an error; check mode only reports.
 *
 * A file whose first line is MIGRATE_NO_TRANSACTION runs outside a
 * transaction, for what PostgreSQL refuses inside one (CREATE INDEX
 * CONCURRENTLY, which builds an index without blocking writes). PostgreSQL
 * runs a text of several statements as one implicit transaction, which such
 * a statement refuses too: each goes in a file of its own. The file is
 * recorded once it succeeded, in a transaction of its own, so a crash in
 * between runs it again: write it to run twice (IF NOT EXISTS). A
 * CONCURRENTLY build that fails leaves an invalid index, which IF NOT EXISTS
 * would then keep: after such a file the run fails while the part's schema
 * (the schema named like the part) holds an invalid index that no build is
 * still making, and names it (drop it, then run again). Runs wait for one
 * another without holding a snapshot, which such a build would wait for. */
#ifndef ECOM_MIGRATE_H
#define ECOM_MIGRATE_H

#include <stdbool.h>
#include <stdio.h>

typedef struct migration_file {
    const char *part; /* folder under migrations/ */
    const char *name; /* NNN_name.sql */
    const char *sql;
} migration_file_t;

extern const migration_file_t migration_files[]; /* generated; ends with a zero row */

#define MIGRATE_NO_TRANSACTION "-- ecom:no-transaction"

/* The parts a service needs, NULL-terminated (borrowed), or NULL for an unknown name. */
const char *const *migrate_parts_for(const char *service);

/* Applies (or with check_only, lists) pending migrations of the given parts
 * (NULL = every part). Progress lines go to out. Returns 0 when everything is
 * applied (check: nothing pending), 1 when check found pending files, -1 on
 * error (every problem printed to err). */
int migrate_run(const char *url, const char *const *parts, bool check_only, FILE *out, FILE *err);
/* The same with the files of set (ends with a zero row) instead of the
 * embedded ones: tests. */
int migrate_run_set(const char *url, const migration_file_t *set, const char *const *parts, bool check_only, FILE *out,
                    FILE *err);

#endif
