/* outbox-worker/vacuum.c: see vacuum.h. */
#include "outbox-worker/vacuum.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pg.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct outbox_vacuum {
    char *url;
    metric_t *done;
    const char *role; /* the drainer's log role */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, due, running, quit;
    PGcancel *cancel; /* while running */
    int64_t last_ms;
    /* the thread's own */
    PGconn *conn;
    int may; /* this connection's role owns bus.outbox: 1, 0, -1 not asked yet */
};

outbox_vacuum_t *outbox_vacuum_new(const char *url, metric_t *done)
{
    outbox_vacuum_t *v = xcalloc(1, sizeof *v);
    v->url = xstrdup(url);
    v->done = done;
    v->last_ms = -1;
    v->may = -1;
    pthread_mutex_init(&v->mu, NULL);
    pthread_cond_init(&v->cv, NULL);
    return v;
}

/* Whether this connection may VACUUM bus.outbox; asked once per connection. */
static bool may_vacuum(outbox_vacuum_t *v)
{
    if (v->may < 0) {
        PGresult *r = pg_query(v->conn,
                               "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'bus.outbox'::regclass",
                               0, NULL);
        if (!r)
            return false; /* asked again next time */
        v->may = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!v->may)
            log_info("outbox-worker: this role does not own bus.outbox; autovacuum alone cleans it");
    }
    return v->may == 1;
}

/* One VACUUM on the thread's connection (connected first when needed). */
static void vacuum_once(outbox_vacuum_t *v)
{
    if (!v->conn) {
        char *err = NULL;
        v->conn = pg_connect(v->url, "ecom-outbox-vacuum", &err);
        if (!v->conn) {
            log_debug("outbox-worker: no connection for VACUUM: %s", err ? err : "?");
            free(err);
            return;
        }
        v->may = -1;
    }
    if (!may_vacuum(v))
        return;
    pthread_mutex_lock(&v->mu);
    v->cancel = PQgetCancel(v->conn);
    bool quit = v->quit;
    pthread_mutex_unlock(&v->mu);
    int64_t t0 = clock_mono_us();
    int rc = quit ? -1 : pg_exec(v->conn, "VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) bus.outbox");
    int64_t ms = (clock_mono_us() - t0) / 1000;
    pthread_mutex_lock(&v->mu);
    PQfreeCancel(v->cancel);
    v->cancel = NULL;
    if (rc == 0)
        v->last_ms = ms;
    pthread_mutex_unlock(&v->mu);
    if (rc == 0) {
        metrics_add(v->done, 1);
        log_debug("outbox-worker: VACUUM of bus.outbox took %lld ms", (long long)ms);
    } else if (PQstatus(v->conn) != CONNECTION_OK) {
        PQfinish(v->conn); /* connected again for the next one */
        v->conn = NULL;
    }
}

static void *vacuum_main(void *arg)
{
    outbox_vacuum_t *v = arg;
    log_set_role(v->role);
    pthread_mutex_lock(&v->mu);
    for (;;) {
        while (!v->quit && !v->due)
            pthread_cond_wait(&v->cv, &v->mu);
        if (v->quit)
            break;
        v->due = false;
        v->running = true;
        pthread_mutex_unlock(&v->mu);
        vacuum_once(v);
        pthread_mutex_lock(&v->mu);
        v->running = false;
    }
    pthread_mutex_unlock(&v->mu);
    if (v->conn)
        PQfinish(v->conn);
    v->conn = NULL;
    return NULL;
}

bool outbox_vacuum_start(outbox_vacuum_t *v)
{
    pthread_mutex_lock(&v->mu);
    if (!v->started) {
        v->role = log_get_role();
        if (pthread_create(&v->thread, NULL, vacuum_main, v) != 0) {
            pthread_mutex_unlock(&v->mu);
            log_warn("outbox-worker: cannot start the VACUUM thread");
            return false;
        }
        v->started = true;
    }
    bool busy = v->due || v->running;
    if (!busy) {
        v->due = true;
        pthread_cond_signal(&v->cv);
    }
    pthread_mutex_unlock(&v->mu);
    return !busy;
}

int64_t outbox_vacuum_last_ms(outbox_vacuum_t *v)
{
    pthread_mutex_lock(&v->mu);
    int64_t ms = v->last_ms;
    pthread_mutex_unlock(&v->mu);
    return ms;
}

void outbox_vacuum_free(outbox_vacuum_t *v)
{
    if (!v)
        return;
    pthread_mutex_lock(&v->mu);
    v->quit = true;
    if (v->cancel) {
        char why[128];
        if (!PQcancel(v->cancel, why, sizeof why))
            log_debug("outbox-worker: cancelling the VACUUM failed: %s", why);
    }
    pthread_cond_signal(&v->cv);
    bool started = v->started;
    pthread_mutex_unlock(&v->mu);
    if (started)
        pthread_join(v->thread, NULL);
    pthread_mutex_destroy(&v->mu);
    pthread_cond_destroy(&v->cv);
    free(v->url);
    free(v);
}
