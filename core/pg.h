/* core/pg.h: blocking libpq helpers for the drainer, services, migrations and
 * tools (the gateway drives libpq asynchronously on its event base instead).
 * Errors are logged here once, with the SQLSTATE. */
#ifndef ECOM_PG_H
#define ECOM_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Connects; on failure returns NULL and *err (owned) says why. The session
 * asks the server to notice a dead peer within about 4 s (TCP keepalives and
 * user timeout), which frees its advisory locks, unless the operator set
 * those for it (each one the operator set is kept); this side notices a dead server
 * within about 10 s (libpq's keepalives and tcp_user_timeout, unless the URL
 * sets them). */
PGconn *pg_connect(const char *url, const char *app_name, char **err);
/* Runs a command with no result rows; 0 or -1 (logged). */
int pg_exec(PGconn *c, const char *sql) __attribute__((warn_unused_result));
/* Runs a parameterised query (text params). Returns the result when it is
 * PGRES_COMMAND_OK or PGRES_TUPLES_OK (caller PQclear()s it), else NULL (logged). */
PGresult *pg_query(PGconn *c, const char *sql, int nparams, const char *const *params);
/* Bounded cleanup: runs sql, a DELETE taking $1 = seconds (older than) and
 * $2 = row limit, and sets *deleted to the rows it removed. 0 or -1 (logged). */
int pg_delete_older(PGconn *c, const char *sql, int64_t older_than_s, size_t limit, size_t *deleted)
    __attribute__((warn_unused_result));
/* true when r is PGRES_COMMAND_OK or PGRES_TUPLES_OK; otherwise logs what
 * failed (a warning, or a debug line when the SQLSTATE is quiet_state, a
 * failure the caller expects and handles) and records the SQLSTATE for
 * pg_last_sqlstate. r may be NULL (the connection's error is used). */
bool pg_result_ok(PGconn *c, PGresult *r, const char *what, const char *quiet_state);
/* SQLSTATE of the last failed result on this thread, or "" (borrowed). */
const char *pg_last_sqlstate(void);
bool pg_alive(PGconn *c);

#endif
