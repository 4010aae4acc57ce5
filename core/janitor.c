/* core/janitor.c: see janitor.h. */
#include "core/janitor.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define JANITOR_CHUNK 5000
#define JANITOR_REST_FACTOR 4 /* rest 4x a chunk's time: at most a fifth of a core */
#define JANITOR_REST_MIN_MS 5
#define JANITOR_CANCEL_EVERY_MS 100 /* janitor_stop's cancels while a cleanup call goes on */

struct janitor {
    janitor_opts_t o;
    char *url, *app_name, *what;
    db_t *db;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu: stop asked; a cleanup call in progress; the thread is done;
     * the connection's cancel handle, which janitor_stop uses while busy */
    bool quit, busy, done;
    PGcancel *cancel;
    _Atomic uint64_t deleted, passes;
    metric_t *m_deleted;
};

/* Waits ms or until stopped; true when stopped. */
static bool rest(janitor_t *j, int64_t ms)
{
    struct timespec ts;
    clock_deadline(&ts, CLOCK_MONOTONIC, ms);
    pthread_mutex_lock(&j->mu);
    while (!j->quit && pthread_cond_timedwait(&j->cv, &j->mu, &ts) == 0)
        ;
    bool quit = j->quit;
    pthread_mutex_unlock(&j->mu);
    return quit;
}

/* Marks a cleanup call as in progress, unless a stop was asked: false then. */
static bool begin_cleanup(janitor_t *j)
{
    pthread_mutex_lock(&j->mu);
    bool go = !j->quit;
    j->busy = go;
    pthread_mutex_unlock(&j->mu);
    return go;
}

/* Ends a cleanup call; true when a stop was asked meanwhile (it may have
 * cancelled the call). */
static bool end_cleanup(janitor_t *j)
{
    pthread_mutex_lock(&j->mu);
    j->busy = false;
    bool quit = j->quit;
    pthread_mutex_unlock(&j->mu);
    return quit;
}

static void disconnect(janitor_t *j)
{
    pthread_mutex_lock(&j->mu);
    PQfreeCancel(j->cancel);
    j->cancel = NULL;
    pthread_mutex_unlock(&j->mu);
    db_close(j->db);
    j->db = NULL;
}

static bool connected(janitor_t *j)
{
    if (j->db)
        return true;
    if (!j->url) {
        j->db = db_open_memory(j->o.memory);
        return true;
    }
    char *err = NULL;
    j->db = db_open_pg(j->url, j->app_name, &err);
    if (!j->db) {
        log_warn("%s cleanup: postgres unavailable: %s", j->what, err ? err : "?");
        free(err);
        return false;
    }
    /* the cleanups' statements are planned for index scans (inbox.c,
     * outbox.c); a delete lost in a crash is made again at the next pass, so
     * its commit need not wait for the WAL flush */
    if (db_index_scans_only(j->db) != 0 || pg_exec(db_pg(j->db), "SET synchronous_commit = off") != 0) {
        disconnect(j);
        return false;
    }
    PGcancel *c = PQgetCancel(db_pg(j->db));
    pthread_mutex_lock(&j->mu);
    j->cancel = c;
    pthread_mutex_unlock(&j->mu);
    return true;
}

/* Chunks while they come back full. */
static void pass(janitor_t *j)
{
    size_t chunk = j->o.chunk ? j->o.chunk : JANITOR_CHUNK;
    uint64_t total = 0;
    for (;;) {
        if (j->o.on && !atomic_load(j->o.on)) {
            disconnect(j); /* a standby holds no connection */
            break;
        }
        if (!connected(j))
            return;
        if (!begin_cleanup(j))
            return;
        int64_t t0 = clock_mono_us();
        size_t gone = 0;
        int rc = j->o.cleanup(j->db, j->o.retain_s, chunk, &gone);
        bool stopping = end_cleanup(j);
        if (rc != 0) {
            if (!stopping) /* else janitor_stop may have cancelled it */
                log_warn("%s cleanup failed; tried again at the next pass", j->what);
            disconnect(j); /* a broken connection is opened again */
            return;
        }
        total += gone;
        atomic_fetch_add(&j->deleted, gone);
        metrics_add(j->m_deleted, gone);
        if (gone < chunk)
            break;
        int64_t took_ms = (clock_mono_us() - t0) / 1000;
        int64_t ms = took_ms * JANITOR_REST_FACTOR;
        if (rest(j, ms > JANITOR_REST_MIN_MS ? ms : JANITOR_REST_MIN_MS))
            break;
    }
    if (total)
        log_debug("%s cleanup removed %llu rows", j->what, (unsigned long long)total);
}

static void *janitor_main(void *arg)
{
    janitor_t *j = arg;
    do {
        pass(j);
        atomic_fetch_add(&j->passes, 1);
    } while (!rest(j, j->o.every_ms));
    disconnect(j);
    pthread_mutex_lock(&j->mu);
    j->done = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

static void janitor_free(janitor_t *j)
{
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j->url);
    free(j->app_name);
    free(j->what);
    free(j);
}

janitor_t *janitor_start(const janitor_opts_t *o)
{
    bool pg = o->database_url && *o->database_url;
    if (!pg && !o->memory)
        return NULL;
    janitor_t *j = xcalloc(1, sizeof *j);
    j->o = *o;
    j->url = pg ? xstrdup(o->database_url) : NULL;
    j->app_name = xstrdup(o->app_name ? o->app_name : "ecom-janitor");
    j->what = xstrdup(o->what ? o->what : "retention");
    j->o.database_url = j->o.app_name = j->o.what = NULL; /* the caller's; the copies above are used */
    char label[128];
    snprintf(label, sizeof label, "table=\"%s\"", j->what);
    j->m_deleted =
        metrics_counter("ecom_retention_deleted_total", "Rows deleted by retention cleanups (core/janitor.h)", label);
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 256 * 1024);
    sigset_t all, old;
    sigfillset(&all);
    /* a fault in the thread still reaches the sanitizers' handlers */
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGFPE);
    sigdelset(&all, SIGILL);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals are the main thread's: the thread starts with them blocked */
    int rc = pthread_create(&j->th, &at, janitor_main, j);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&at);
    if (rc != 0) {
        log_error("%s cleanup: could not start its thread", j->what);
        janitor_free(j);
        return NULL;
    }
    return j;
}

void janitor_stop(janitor_t *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->quit = true;
    pthread_cond_broadcast(&j->cv);
    /* A statement waiting on a lock, or on a slow disk, ends now; its chunk
     * is deleted at a later pass (PQcancel may be called from any thread).
     * The server ignores a cancel that finds its backend idle, between two
     * statements of one cleanup call, so it goes again until the call ends. */
    while (!j->done) {
        char err[256];
        if (j->busy && j->cancel && !PQcancel(j->cancel, err, sizeof err))
            log_debug("%s cleanup: cancel not sent: %s", j->what, err);
        struct timespec ts;
        clock_deadline(&ts, CLOCK_MONOTONIC, JANITOR_CANCEL_EVERY_MS);
        (void)pthread_cond_timedwait(&j->cv, &j->mu, &ts);
    }
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->th, NULL);
    janitor_free(j);
}

uint64_t janitor_deleted(const janitor_t *j)
{
    return atomic_load(&j->deleted);
}

uint64_t janitor_passes(const janitor_t *j)
{
    return atomic_load(&j->passes);
}
