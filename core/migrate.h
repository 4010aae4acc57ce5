/* core/migrate.h: applies migrations/<part>/NNN_name.sql (embedded in the
 * binary at build time) in order, each in its own transaction, under an
 * advisory lock, recording each with its SHA-256. A re-run is a no-op; an
 * applied file whose text changed is an error; check mode only reports. */
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

/* The parts a service needs, NULL-terminated (borrowed), or NULL for an unknown name. */
const char *const *migrate_parts_for(const char *service);

/* Applies (or with check_only, lists) pending migrations of the given parts
 * (NULL = every part). Progress lines go to out. Returns 0 when everything is
 * applied (check: nothing pending), 1 when check found pending files, -1 on
 * error (every problem printed to err). */
int migrate_run(const char *url, const char *const *parts, bool check_only, FILE *out, FILE *err);

#endif
