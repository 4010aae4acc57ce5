/* services/ackgate.c: see ackgate.h. */
#include "services/ackgate.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 30000 /* after failed flushes: each one drops what it was to vouch for */
#define HELD_MAX 1024      /* hand-overs held at most (one per stream of a batch): then the runtime waits */
/* Flushes start at most this often: under a steady flow one covers the
 * acknowledgements of several batches (each costs a round trip, a commit
 * and a WAL flush), at the price of acknowledgements that late. */
#define FLUSH_EVERY_US 20000

typedef struct held {
    struct held *next;
    char stream[BUS_STREAM_MAX];
    char (*ids)[BUS_ID_MAX];
    size_t n;
    int64_t began_us;
} held_t;

struct ackgate {
    char *url;
    char app[80];
    ackgate_pass_fn pass;
    void *arg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* work handed in, quit; and (broadcast) some settled */
    held_t *head, *tail;
    uint64_t handed, settled; /* batches handed in, batches passed on or dropped */
    bool quit;
    bool idle; /* the thread waits for work: a hand-over wakes it (else it comes for it) */
    /* the thread's own */
    PGconn *conn;
    char backend[16]; /* pg_backend_pid() when it connected */
    int64_t retry_ms, next_try_us;
    _Atomic int64_t conn_since_us; /* when the connection was ready; 0: none */
    atomic_uint_fast64_t dropped;
    metric_t *m_flush_s, *m_dropped;
};

int64_t ackgate_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void disconnect(ackgate_t *g)
{
    atomic_store(&g->conn_since_us, 0);
    PQfinish(g->conn);
    g->conn = NULL;
}

/* A commit that waits for the WAL flush past its own record. The
 * transaction must write WAL before its commit, or its commit is not
 * flushed (a transaction id alone is not enough): a transactional logical
 * message, a few dozen bytes, at any wal_level and for any role; logical
 * decoding passes it on only to a consumer that asks for messages, under
 * its prefix. synchronous_commit is set for this transaction alone, so a
 * server default of off does not make it return before the flush. Then the
 * backend's pid. */
static const char sql_flush[] = "SELECT set_config('synchronous_commit', CASE current_setting('synchronous_commit')"
                                " WHEN 'off' THEN 'on' ELSE current_setting('synchronous_commit') END, true),"
                                " pg_logical_emit_message(true, 'ecom-ackgate', ''), pg_backend_pid()::text";

int ackgate_flush_on(PGconn *c)
{
    PGresult *r = pg_query(c, sql_flush, 0, NULL);
    int rc = r && PQntuples(r) == 1 ? 0 : -1;
    PQclear(r);
    return rc;
}

/* sql_flush on the gate's connection: 0 when it came back from the
 * connection's own backend, 1 when from another (a pooler between), -1 when
 * it failed. */
static int flush_here(ackgate_t *g)
{
    PGresult *r = pg_query(g->conn, sql_flush, 0, NULL);
    int rc = !r || PQntuples(r) != 1 ? -1 : strcmp(PQgetvalue(r, 0, 2), g->backend) == 0 ? 0 : 1;
    PQclear(r);
    return rc;
}

/* 0 when connected, with its backend's pid read, and a first flush made on
 * it: a connection whose flushes cannot work (a pooler between, the
 * function refused) does not make the gate ready, to drop every batch. */
static int connect_gate(ackgate_t *g)
{
    char *err = NULL;
    if (!(g->conn = pg_connect(g->url, g->app, &err))) {
        log_debug("%s: postgres unavailable: %s", g->app, err);
        free(err);
        return -1;
    }
    PGresult *r = pg_query(g->conn, "SELECT pg_backend_pid()::text", 0, NULL);
    if (!r || PQntuples(r) != 1) {
        PQclear(r);
        disconnect(g);
        return -1;
    }
    snprintf(g->backend, sizeof g->backend, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (flush_here(g) != 0) {
        log_warn("%s: a flush does not work on this connection (on another backend, or refused); commits stay"
                 " synchronous for a while",
                 g->app);
        disconnect(g);
        return -1;
    }
    atomic_store(&g->conn_since_us, ackgate_now_us());
    return 0;
}

/* After a failed connect or flush: the next try waits longer each time,
 * until a flush succeeds. */
static void back_off(ackgate_t *g)
{
    g->retry_ms = g->retry_ms ? (g->retry_ms * 2 < RETRY_MAX_MS ? g->retry_ms * 2 : RETRY_MAX_MS) : RETRY_MIN_MS;
    g->next_try_us = ackgate_now_us() + g->retry_ms * 1000;
}

/* sql_flush, made by the backend the connection was opened to: a backend
 * lives no longer than its server's shared memory, so every commit made
 * there since then (the batches') is before it in the same WAL. 0 when it
 * came back so. */
static int flush(ackgate_t *g)
{
    int64_t t0 = ackgate_now_us();
    int rc = flush_here(g);
    if (rc > 0) /* a pooler between: the connection is not one backend's */
        log_warn("%s: the flush ran on another backend than the connection's; acknowledgements dropped", g->app);
    else if (rc < 0)
        log_warn("%s: the flush failed; acknowledgements dropped, commits synchronous for a while", g->app);
    if (rc != 0) {
        disconnect(g);
        back_off(g);
        return -1;
    }
    g->retry_ms = 0;
    metrics_observe(g->m_flush_s, (double)(ackgate_now_us() - t0) / 1e6);
    return 0;
}

/* Passes on (ok) or drops the list; frees it. */
static void settle(ackgate_t *g, held_t *h, bool ok, int64_t since)
{
    uint64_t dropped = 0, n = 0;
    while (h) {
        held_t *next = h->next;
        if (ok && since && h->began_us > since) {
            g->pass(g->arg, h->stream, h->ids, h->n);
        } else {
            dropped += h->n;
            free(h->ids);
        }
        free(h);
        h = next;
        n++;
    }
    if (dropped) {
        atomic_fetch_add(&g->dropped, dropped);
        metrics_add(g->m_dropped, dropped);
        log_info("%s: %llu acknowledgements dropped (durability not known); their entries stay pending", g->app,
                 (unsigned long long)dropped);
    }
    pthread_mutex_lock(&g->mu);
    g->settled += n;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void *gate_main(void *arg)
{
    ackgate_t *g = arg;
    int64_t last_us = 0;
    pthread_mutex_lock(&g->mu);
    for (;;) {
        if (!g->conn && !g->quit && ackgate_now_us() >= g->next_try_us) {
            pthread_mutex_unlock(&g->mu);
            if (connect_gate(g) != 0)
                back_off(g);
            pthread_mutex_lock(&g->mu);
        }
        if (!g->head) {
            if (g->quit)
                break;
            if (g->conn) {
                g->idle = true;
                pthread_cond_wait(&g->cv, &g->mu);
                g->idle = false;
            } else { /* until the next try, or work to drop */
                struct timespec until;
                int64_t ms = (g->next_try_us - ackgate_now_us() + 999) / 1000;
                clock_deadline(&until, CLOCK_MONOTONIC, ms > 0 ? ms : 1);
                g->idle = true;
                (void)pthread_cond_timedwait(&g->cv, &g->mu, &until);
                g->idle = false;
            }
            continue;
        }
        if (g->conn) {
            int64_t wait_us = last_us + FLUSH_EVERY_US - ackgate_now_us();
            if (wait_us > 0 && !g->quit) { /* more come meanwhile */
                struct timespec until;
                clock_deadline(&until, CLOCK_MONOTONIC, (wait_us + 999) / 1000);
                while (!g->quit && pthread_cond_timedwait(&g->cv, &g->mu, &until) == 0) {
                }
            }
            last_us = ackgate_now_us();
        }
        held_t *h = g->head;
        g->head = g->tail = NULL;
        pthread_mutex_unlock(&g->mu);
        int64_t since = atomic_load(&g->conn_since_us);
        /* no connection: a later one cannot vouch for what is held now */
        bool ok = g->conn && flush(g) == 0;
        settle(g, h, ok, since);
        pthread_mutex_lock(&g->mu);
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

ackgate_t *ackgate_start(const char *url, const char *group, ackgate_pass_fn pass, void *arg)
{
    ackgate_t *g = xcalloc(1, sizeof *g);
    g->url = xstrdup(url);
    snprintf(g->app, sizeof g->app, "ecom-%s-ackgate", group);
    g->pass = pass;
    g->arg = arg;
    char labels[96];
    snprintf(labels, sizeof labels, "group=\"%s\"", group);
    g->m_flush_s = metrics_histogram("ecom_service_ack_flush_seconds",
                                     "Synchronous commits that make a service's acknowledgements durable", labels);
    g->m_dropped = metrics_counter("ecom_service_acks_dropped_total",
                                   "Acknowledgements dropped because their commit's durability was not known", labels);
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* clock_deadline's */
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&g->thread, NULL, gate_main, g) != 0) {
        log_warn("%s: cannot start its thread; commits stay synchronous", g->app);
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->cv);
        free(g->url);
        free(g);
        return NULL;
    }
    return g;
}

void ackgate_stop(ackgate_t *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->mu);
    g->quit = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    pthread_join(g->thread, NULL); /* it settled everything held: passed on, or dropped */
    PQfinish(g->conn);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g->url);
    free(g);
}

bool ackgate_ready(ackgate_t *g, int64_t at)
{
    int64_t since = atomic_load(&g->conn_since_us);
    return since != 0 && since < at;
}

void ackgate_put(ackgate_t *g, const char *stream, char (*ids)[BUS_ID_MAX], size_t n, int64_t began_us)
{
    if (n == 0) {
        free(ids);
        return;
    }
    held_t *h = xcalloc(1, sizeof *h);
    snprintf(h->stream, sizeof h->stream, "%s", stream);
    h->ids = ids;
    h->n = n;
    h->began_us = began_us;
    pthread_mutex_lock(&g->mu);
    while (g->handed - g->settled >= HELD_MAX) /* a flush that hangs holds the runtime too */
        pthread_cond_wait(&g->cv, &g->mu);
    if (g->tail)
        g->tail->next = h;
    else
        g->head = h;
    g->tail = h;
    g->handed++;
    if (g->idle) /* else it is pacing, flushing or connecting: it takes these next */
        pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

int ackgate_wait(ackgate_t *g, int64_t max_ms)
{
    struct timespec until;
    clock_deadline(&until, CLOCK_MONOTONIC, max_ms);
    pthread_mutex_lock(&g->mu);
    uint64_t want = g->handed;
    bool timed_out = false;
    while (g->settled < want && !timed_out)
        timed_out = pthread_cond_timedwait(&g->cv, &g->mu, &until) != 0;
    int rc = g->settled >= want ? 0 : -1;
    pthread_mutex_unlock(&g->mu);
    return rc;
}

uint64_t ackgate_dropped(ackgate_t *g)
{
    return atomic_exchange(&g->dropped, 0);
}
