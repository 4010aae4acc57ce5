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

struct janitor {
    janitor_opts_t o;
    char *url, *app_name, *what;
    db_t *db;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool quit;
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
        db_close(j->db);
        j->db = NULL;
        return false;
    }
    return true;
}

/* Chunks while they come back full. */
static void pass(janitor_t *j)
{
    size_t chunk = j->o.chunk ? j->o.chunk : JANITOR_CHUNK;
    uint64_t total = 0;
    for (;;) {
        if (j->o.on && !atomic_load(j->o.on)) {
            db_close(j->db); /* a standby holds no connection */
            j->db = NULL;
            break;
        }
        if (!connected(j))
            return;
        int64_t t0 = clock_mono_us();
        size_t gone = 0;
        if (j->o.cleanup(j->db, j->o.retain_s, chunk, &gone) != 0) {
            log_warn("%s cleanup failed; tried again at the next pass", j->what);
            db_close(j->db); /* a broken connection is opened again */
            j->db = NULL;
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
    db_close(j->db);
    j->db = NULL;
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
