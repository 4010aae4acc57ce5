/* core/pgarray.h: one-dimensional arrays as binary query parameters
 * (array_recv's format), so a batch of rows travels as a few parameters that
 * PostgreSQL neither escapes nor parses as text.
 *
 *   pg_array_t ids = {0};
 *   pg_array_begin(&ids, PG_OID_UUID, n);
 *   for (...) if (pg_array_uuid(&ids, id) != 0) ...;
 *   const char *v[1]; int len[1], fmt[1];
 *   pg_array_params(&ids, 1, n, v, len, fmt);
 *   db_exec_params_bin(tx, sql, 1, v, len, fmt, NULL);
 *   pg_array_free(&ids);
 *
 * No NULL elements. Owns: the buffer (pg_array_free; begin reuses it). */
#ifndef ECOM_PGARRAY_H
#define ECOM_PGARRAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PG_OID_BOOL 16
#define PG_OID_INT8 20
#define PG_OID_TEXT 25
#define PG_OID_UUID 2950
#define PG_OID_TIMESTAMPTZ 1184

typedef struct pg_array {
    unsigned char *buf;
    size_t len, cap;
} pg_array_t;

/* Starts an array of n elements of type elem_oid (drops what was there). */
void pg_array_begin(pg_array_t *a, uint32_t elem_oid, size_t n);
void pg_array_text(pg_array_t *a, const char *s);
void pg_array_int8(pg_array_t *a, int64_t v);
void pg_array_bool(pg_array_t *a, bool v);
/* A timestamptz element (PG_OID_TIMESTAMPTZ) from milliseconds since 1970. */
void pg_array_timestamptz_ms(pg_array_t *a, int64_t unix_ms);
/* A UUID in its text form (hyphens anywhere, any case); -1 when it is not one
 * (nothing added). */
int pg_array_uuid(pg_array_t *a, const char *s) __attribute__((warn_unused_result));
void pg_array_free(pg_array_t *a);
/* n arrays as the binary parameters of one statement: each array's element
 * count set to count (arrays begun before their length was known), and
 * vals/lens/fmts filled for PQexecParams or PQexecPrepared. */
void pg_array_params(pg_array_t *a, int n, uint32_t count, const char **vals, int *lens, int *fmts);

#endif
