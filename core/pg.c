/* core/pg.c: see pg.h. */
#include "core/pg.h"

#include "core/alloc.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_state[6];

/* Server notices (a VACUUM's warning, say) go to the log, not to stderr as
 * libpq would print them. */
static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    log_debug("postgres notice: %.*s", (int)strcspn(message, "\n"), message);
}

PGconn *pg_connect(const char *url, const char *app_name, char **err)
{
    /* Before the URL, which may set its own: this side notices a dead or
     * cut-off server within about 10 s too (TCP keepalives while idle, a
     * user timeout on unacknowledged data), where a blocking call would
     * otherwise wait for the system's two hours. A long query sends nothing
     * and is acknowledged, so neither ends it. */
    const char *keys[] = {"keepalives_idle", "keepalives_interval",       "keepalives_count", "tcp_user_timeout",
                          "dbname",          "fallback_application_name", "connect_timeout",  NULL};
    const char *vals[] = {"5", "2", "3", "10000", url, app_name ? app_name : "ecom", "5", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c || PQstatus(c) != CONNECTION_OK) {
        const char *m = c ? PQerrorMessage(c) : "out of memory";
        size_t n = strlen(m);
        while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
            n--;
        /* one line: libpq puts its hints ("Is the server running ...") on lines of their own */
        char *one = xmalloc(2 * n + 1), *o = one;
        for (size_t i = 0; i < n; i++) {
            if (m[i] == '\n') {
                while (i + 1 < n && (m[i + 1] == '\t' || m[i + 1] == ' '))
                    i++;
                *o++ = ';';
                *o++ = ' ';
                continue;
            }
            *o++ = m[i];
        }
        *o = '\0';
        *err = one;
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, notice_to_log, NULL);
    /* The server notices a peer whose host died or was cut off within a few
     * seconds, not the two hours of the system's default, and ends the
     * session: the session advisory locks a drainer's partitions and a
     * service's lease ride on are then free for another to take. Only where
     * nobody set it (pg_settings.source 'default': the system's default):
     * one the operator chose (postgresql.conf, the role's or database's
     * settings, PGOPTIONS, the URL's options) stays. (Over a Unix socket the server ignores these.) */
    PGresult *r = PQexec(c, "SELECT set_config(s.name, s.v, false) FROM (VALUES ('tcp_keepalives_idle', '2'),"
                            " ('tcp_keepalives_interval', '1'), ('tcp_keepalives_count', '2'),"
                            " ('tcp_user_timeout', '4000')) AS s(name, v) JOIN pg_settings p ON p.name = s.name"
                            " WHERE p.source = 'default'");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        log_debug("postgres: keepalive settings not taken: %s", PQerrorMessage(c));
    PQclear(r);
    return c;
}

bool pg_result_ok(PGconn *c, PGresult *r, const char *what, const char *quiet_state)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        last_state[0] = '\0';
        return true;
    }
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(last_state, sizeof last_state, "%s", state ? state : "08000");
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(c);
    char first[80];
    snprintf(first, sizeof first, "%s", what);
    char *nl = strchr(first, '\n');
    if (nl)
        *nl = '\0';
    int mlen = (int)strcspn(msg ? msg : "", "\n");
    if (quiet_state && strcmp(last_state, quiet_state) == 0)
        log_debug("postgres sqlstate=%s sql=\"%s\" error=%.*s", last_state, first, mlen, msg ? msg : "");
    else
        log_warn("postgres error sqlstate=%s sql=\"%s\" error=%.*s", last_state, first, mlen, msg ? msg : "");
    return false;
}

static bool check(PGconn *c, PGresult *r, const char *sql)
{
    return pg_result_ok(c, r, sql, NULL);
}

int pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    bool ok = check(c, r, sql);
    PQclear(r);
    return ok ? 0 : -1;
}

PGresult *pg_query(PGconn *c, const char *sql, int nparams, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!check(c, r, sql)) {
        PQclear(r);
        return NULL;
    }
    return r;
}

const char *pg_last_sqlstate(void)
{
    return last_state;
}

bool pg_alive(PGconn *c)
{
    return c && PQstatus(c) == CONNECTION_OK;
}

int pg_delete_older(PGconn *c, const char *sql, int64_t older_than_s, size_t limit, size_t *deleted)
{
    char secs[24], lim[24];
    snprintf(secs, sizeof secs, "%lld", (long long)older_than_s);
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *p[] = {secs, lim};
    PGresult *r = pg_query(c, sql, 2, p);
    if (!r)
        return -1;
    *deleted = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return 0;
}
