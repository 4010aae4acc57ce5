/* outbox-worker/drain.c: see drain.h. */
#include "outbox-worker/drain.h"

#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/health.h"
#include "core/janitor.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/strmap.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_PARTITION DRAIN_LOCK_PARTITION
#define LOCK_MEMBER 1162104656    /* drainer membership slots */
#define REBALANCE_MS 1000
#define BACKOFF_MAX_MS 5000

typedef struct drainer drainer_t;

/* The step that goes beside a full batch's publish (remove the batch before,
 * fetch the next) is built, sent, and its rows read and decoded on a helper
 * thread: on the drainer's thread that took about 1.7 ms of each 17 ms cycle
 * of 1,000 rows, while Redis waited for the next XADDs (timed in the drain
 * phase of bench_backbone). Until the helper is done the drainer's thread
 * touches neither the PostgreSQL connection, nor next, nor the unmarked
 * positions; it publishes on its own Redis connection meanwhile. */
typedef struct stepper {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, quit;
    bool posted; /* a step to run (the fields below), until done */
    bool done;
    drainer_t *d;
    const int *parts;
    size_t nparts;
    int64_t *skip; /* owned while posted */
    size_t nskip;
    int rc;           /* 0, or -1: the step was not sent or its answers did not come */
    const char *role; /* the drainer thread's log role, the helper's too */
} stepper_t;

struct drainer {
    const drain_opts_t *o;
    atomic_bool *stop;
    db_t *db;
    bus_t *bus;
    bool held[OUTBOX_PARTITIONS];
    int nheld;
    int member; /* membership slot, -1 when none */
    int64_t next_rebalance, next_maintenance, next_vacuum;
    size_t since_vacuum; /* rows published (and so removed) since the last VACUUM */
    int may_vacuum;      /* the connection's role owns bus.outbox: 1, 0, -1 not asked yet (vacuum_outbox) */
    int64_t backoff_ms;
    /* a row of the partition was refused: the partition's rows wait until
     * then (the row first, its successors behind it), the others go on */
    int64_t paused_until[OUTBOX_PARTITIONS];
    int empty;            /* fetches in a row that found nothing since rows last came */
    int64_t next_probe;
    const char *store_name, *bus_name; /* readiness components */
    strmap_t topics_ready;             /* topics whose consumer groups exist */
    outbox_step_t next;                /* rows fetched while the previous batch went out */
    bool have_next;
    uint64_t next_parts; /* the partitions next was fetched from (bit p: partition p) */
    int64_t *unmarked; /* positions published but not yet removed from bus.outbox */
    size_t nunmarked, unmarked_cap;
    metric_t *m_published, *m_batches, *m_errors, *m_dead, *m_held, *m_batch_s, *m_trimmed, *m_vacuums;
    stepper_t stepper;
};

static bool stopping(drainer_t *d)
{
    return atomic_load(d->stop);
}

/* Sleeps up to ms, waking early when stopping. */
static void nap(drainer_t *d, int64_t ms)
{
    while (ms > 0 && !stopping(d)) {
        int64_t step = ms < 100 ? ms : 100;
        clock_sleep_ms(step);
        ms -= step;
    }
}

static void backoff(drainer_t *d)
{
    d->backoff_ms = d->backoff_ms ? d->backoff_ms * 2 : 50;
    if (d->backoff_ms > BACKOFF_MAX_MS)
        d->backoff_ms = BACKOFF_MAX_MS;
    nap(d, d->backoff_ms);
}

static void discard_next(drainer_t *d)
{
    if (d->have_next)
        outbox_step_free(&d->next);
    d->have_next = false;
}

static void lost_connection(drainer_t *d)
{
    discard_next(d);
    /* Rows published but not removed are forgotten, to go out again (the
     * inboxes skip them): after a server crash, positions a lost
     * asynchronous commit had drawn are drawn again by new rows, which a
     * removal by position would take unpublished. */
    d->nunmarked = 0;
    /* session locks die with the connection */
    memset(d->held, 0, sizeof d->held);
    d->nheld = 0;
    d->member = -1;
    metrics_set(d->m_held, 0);
}

static bool try_lock(drainer_t *d, int cls, int key)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, %d)", cls, key);
    PGresult *r = pg_query(db_pg(d->db), sql, 0, NULL);
    bool got = r && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return got;
}

static int unlock(drainer_t *d, int cls, int key)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(%d, %d)", cls, key);
    PGresult *r = pg_query(db_pg(d->db), sql, 0, NULL);
    int rc = r ? 0 : -1;
    PQclear(r);
    return rc;
}

/* Takes a fair share of the partitions, releasing extras. Between batches only. */
static int rebalance(drainer_t *d)
{
    if (d->member < 0) {
        for (int s = 0; s < OUTBOX_PARTITIONS && d->member < 0; s++)
            if (try_lock(d, LOCK_MEMBER, s))
                d->member = s;
        if (d->member < 0) {
            log_warn("no free drainer slot (more than %d drainers?)", OUTBOX_PARTITIONS);
            return -1;
        }
    }
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %d AND objsubid = 2"
             " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
             LOCK_MEMBER);
    PGresult *r = pg_query(db_pg(d->db), sql, 0, NULL);
    if (!r)
        return -1;
    int live = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (live < 1)
        live = 1;
    int share = (OUTBOX_PARTITIONS + live - 1) / live;
    for (int p = OUTBOX_PARTITIONS - 1; p >= 0 && d->nheld > share; p--)
        if (d->held[p]) {
            if (unlock(d, LOCK_PARTITION, p) != 0)
                return -1;
            d->held[p] = false;
            d->nheld--;
        }
    for (int p = 0; p < OUTBOX_PARTITIONS && d->nheld < share; p++)
        if (!d->held[p] && try_lock(d, LOCK_PARTITION, p)) {
            d->held[p] = true;
            d->nheld++;
        }
    if (!pg_alive(d->db->pgc))
        return -1;
    metrics_set(d->m_held, d->nheld);
    return 0;
}

/* Takes the hints libpq has read (with a step's results, or by
 * PQconsumeInput); true when there was one. */
static bool take_hints(PGconn *c)
{
    bool any = false;
    PGnotify *n;
    while ((n = PQnotifies(c)) != NULL) {
        PQfreemem(n);
        any = true;
    }
    return any;
}

/* Waits for a NOTIFY hint on the LISTEN connection, up to ms; not at all when
 * libpq already read one (it reads the hints that arrive while a step's
 * results come in, and the socket then has nothing more to say: polling it
 * would wait the full ms for a row already committed). */
static void wait_hint(drainer_t *d, int ms)
{
    if (d->db->kind == DB_MEMORY) {
        static _Thread_local uint64_t seen;
        db_mem_wait(d->db, &seen, ms);
        return;
    }
    PGconn *c = d->db->pgc;
    if (take_hints(c))
        return;
    struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
    if (pfd.fd >= 0 && poll(&pfd, 1, ms) > 0) {
        if (!PQconsumeInput(c))
            return;
    }
    take_hints(c);
}

int drain_idle_wait_ms(int empty, int poll_ms)
{
    int64_t ms = DRAIN_RECHECK_MS;
    for (int i = 0; i < empty && ms < poll_ms; i++)
        ms *= 2;
    return ms < poll_ms ? (int)ms : poll_ms;
}

static void to_envelopes(const outbox_row_t *rows, size_t n, envelope_t *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = rows[i].env; /* shallow: borrowed for the publish call */
}

/* Before a topic's stream is trimmed, every group its topic has must exist
 * on it: one that Redis lost (a restart without its data, a failover) and
 * only some services made again would otherwise not count, and the trim
 * would take what it never read. Also before a topic's first publish
 * (prepare_topics). A missing one is created from the start; only a missing one, since
 * Redis refuses XGROUP CREATE at maxmemory while it takes XTRIM, the way
 * out of a full memory. False when one is missing and could not be made. */
static bool groups_ready(drainer_t *d, const char *stream)
{
    if (!envelope_stream_is_topic(stream) || !d->o->groups_for_topic)
        return true;
    const char *groups[16];
    int ng = d->o->groups_for_topic(stream + 5, groups, 16);
    bus_stream_info_t info; /* none read (a missing stream, a failed read): each is made */
    if (ng > 0 && bus_stream_info(d->bus, stream, &info) != 0)
        info.ngroups = 0;
    for (int g = 0; g < ng; g++) {
        bool there = false;
        for (size_t k = 0; k < info.ngroups && !there; k++)
            there = strcmp(info.groups[k].name, groups[g]) == 0;
        if (!there && bus_group_create(d->bus, stream, groups[g]) != 0)
            return false;
    }
    return true;
}

/* Creates the missing consumer groups of every topic in rows not seen before. */
/* On failure *bad is the first row whose topic is not ready (the rows before
 * it can go out). */
static int prepare_topics(drainer_t *d, const outbox_row_t *rows, size_t n, size_t *bad)
{
    *bad = n;
    if (!d->o->groups_for_topic)
        return 0;
    for (size_t i = 0; i < n; i++) {
        *bad = i;
        const char *t = rows[i].env.topic;
        if (strmap_get(&d->topics_ready, t, strlen(t)))
            continue;
        char stream[BUS_STREAM_MAX];
        envelope_stream_name(t, stream, sizeof stream);
        if (!groups_ready(d, stream))
            return -1;
        strmap_put(&d->topics_ready, t, strlen(t), NULL);
    }
    *bad = n;
    return 0;
}

/* Publishes rows[0..n) in order (the bus only: the database connection may
 * have a step in flight). When the batch fails while Redis takes writes, a
 * row is poisoned: publish one at a time to find it and keep what went out;
 * *poisoned tells the caller to count an attempt against rows[done]
 * (poison_row) once the database connection is free. A Redis that answers
 * but refuses every write (-OOM, -MISCONF, -READONLY, ...) is down, not a
 * row's fault: no attempt is counted, or a long refusal would move row after
 * row to bus.outbox_dead and publish their successors past them. Returns
 * rows published. */
static size_t publish(drainer_t *d, outbox_row_t *rows, size_t n, bool *poisoned)
{
    *poisoned = false;
    envelope_t *envs = xmalloc(n * sizeof *envs);
    to_envelopes(rows, n, envs);
    int rc = bus_publish(d->bus, envs, n, NULL);
    size_t done = rc == 0 ? n : 0;
    if (rc != 0 && bus_writable(d->bus) == 0) {
        for (done = 0; done < n; done++)
            if (bus_publish(d->bus, &envs[done], 1, NULL) != 0)
                break;
        *poisoned = done < n && bus_writable(d->bus) == 0;
    }
    free(envs);
    return done;
}

/* Counts an attempt against a row the bus refused, or moves it to
 * bus.outbox_dead, and pauses its partition for the row's backoff: the rows
 * behind it keep their order, and the drainer's other partitions flow on. */
static void poison_row(drainer_t *d, const outbox_row_t *bad)
{
    bool dead = bad->attempts + 1 >= DRAIN_ROW_ATTEMPTS;
    log_error("outbox row could not be published msg_id=%s attempt=%d%s", bad->env.id, bad->attempts + 1,
              dead ? " (moved to bus.outbox_dead)" : "");
    if (outbox_mark_failed(d->db, bad, "publish refused by the bus", dead) == 0 && dead)
        metrics_add(d->m_dead, 1);
    ECOM_ASSERT(bad->partition >= 0 && bad->partition < OUTBOX_PARTITIONS);
    d->paused_until[bad->partition] = clock_mono_ms() + (dead ? 0 : 100LL << (bad->attempts < 6 ? bad->attempts : 6));
}

/* Trims every stream but the dead letters' below its groups' positions. */
static void maintenance(drainer_t *d)
{
    char **streams = NULL;
    size_t ns = 0;
    if (bus_list_streams(d->bus, &streams, &ns) != 0)
        return;
    for (size_t i = 0; i < ns; i++) {
        uint64_t trimmed = 0;
        if (strncmp(streams[i], "ecom:dlq:", 9) != 0 && groups_ready(d, streams[i]) &&
            bus_trim(d->bus, streams[i], &trimmed) == 0 && trimmed)
            metrics_add(d->m_trimmed, trimmed);
        free(streams[i]);
    }
    free(streams);
}

/* Reports both dependencies for /ready, measured with a round trip each. */
static void probe(drainer_t *d)
{
    int64_t t0 = clock_mono_us();
    bool ok = d->db->kind == DB_MEMORY || pg_exec(db_pg(d->db), "SELECT 1") == 0;
    int64_t t1 = clock_mono_us();
    health_report(d->store_name, ok, (double)(t1 - t0) / 1000.0);
    ok = bus_ping(d->bus) == 0;
    health_report(d->bus_name, ok, (double)(clock_mono_us() - t1) / 1000.0);
}

static int connect_all(drainer_t *d)
{
    const drain_opts_t *o = d->o;
    char *err = NULL;
    if (!d->db) {
        d->db = o->database_url && *o->database_url ? db_open_pg(o->database_url, "ecom-outbox-worker", &err)
                                                    : db_open_memory(o->mem);
        if (!d->db) {
            log_warn("outbox-worker: postgres unavailable: %s", err);
            free(err);
            health_report(d->store_name, false, 0);
            return -1;
        }
        /* Its commits (removing published rows) need not wait for the WAL
         * flush: one lost in a crash only leaves rows that were published,
         * which go out again and every inbox skips (bus.h's contract); a row
         * leaves the outbox only after Redis took it, so none is lost. And
         * the removal shares a round trip with the next fetch, whose rows
         * would otherwise wait for that flush. Index scans only: the step's
         * fetch and removal then run prepared (outbox_step_send). */
        if (d->db->kind == DB_PG && (pg_exec(db_pg(d->db), "LISTEN ecom_outbox") != 0 ||
                                     pg_exec(db_pg(d->db), "SET synchronous_commit = off") != 0 ||
                                     db_index_scans_only(d->db) != 0)) {
            db_close(d->db);
            d->db = NULL;
            return -1;
        }
        d->may_vacuum = -1;
    }
    if (!d->bus) {
        d->bus = o->redis_url && *o->redis_url ? bus_open_redis(o->redis_url, &err) : bus_open_memory(o->membus);
        if (!d->bus) {
            log_warn("outbox-worker: redis unavailable: %s", err);
            free(err);
            health_report(d->bus_name, false, 0);
            return -1;
        }
    }
    return 0;
}

static void check_db(drainer_t *d)
{
    if (d->db && d->db->kind == DB_PG && !pg_alive(d->db->pgc)) {
        health_report(d->store_name, false, 0);
        db_close(d->db);
        d->db = NULL;
        lost_connection(d);
    }
}

/* A step failed: a connection left in pipeline mode is not trusted again. */
static void step_failed(drainer_t *d)
{
    metrics_add(d->m_errors, 1);
    if (d->db && d->db->kind == DB_PG && PQpipelineStatus(d->db->pgc) != PQ_PIPELINE_OFF) {
        health_report(d->store_name, false, 0);
        db_close(d->db);
        d->db = NULL;
        lost_connection(d);
    }
    check_db(d);
}

static void add_unmarked(drainer_t *d, const outbox_row_t *rows, size_t n)
{
    d->since_vacuum += n;
    if (d->nunmarked + n > d->unmarked_cap) {
        d->unmarked_cap = (d->nunmarked + n) * 2;
        d->unmarked = xrealloc(d->unmarked, d->unmarked_cap * sizeof *d->unmarked);
    }
    for (size_t i = 0; i < n; i++)
        d->unmarked[d->nunmarked++] = rows[i].pos;
}

/* The fetch reads bus.outbox in pos order from its start, so every fetch
 * walks the index entries of the rows removed before it until a VACUUM takes
 * them away: behind 60,000 removed rows a fetch of 20 costs about twice as
 * much as after a VACUUM, and 11-17 ms the first time (bench_backbone
 * fetch), and in the shop flow at
 * 250 payments/s right after a saturated run the drainer's backend spent
 * 1.6-3.2 ms of CPU per payment on it instead of 0.5-0.7. The autovacuum
 * launcher visits a database about once a minute, so the drainer vacuums the
 * table itself every DRAIN_VACUUM_ROWS published rows, at most once a second
 * and at most 1/DRAIN_VACUUM_DUTY of its time (a VACUUM of a queue table
 * takes milliseconds; one with a large backlog longer). A VACUUM that would wait
 * for another one (another drainer's, autovacuum's) is skipped
 * (SKIP_LOCKED). A role that does not own the table may not vacuum
 * it: autovacuum does the work then, as before (may_vacuum_outbox). */
#define DRAIN_VACUUM_ROWS 2000
#define DRAIN_VACUUM_MIN_MS 1000
#define DRAIN_VACUUM_DUTY 20

/* Whether this connection's role owns bus.outbox (or is a superuser): only
 * then may it VACUUM the table; otherwise that is left to autovacuum, said
 * once in the log. Asked once per connection, when the first VACUUM is due. */
static bool may_vacuum_outbox(drainer_t *d)
{
    if (d->may_vacuum < 0) {
        PGresult *r = pg_query(db_pg(d->db),
                               "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = 'bus.outbox'::regclass",
                               0, NULL);
        if (!r)
            return false; /* asked again next time */
        d->may_vacuum = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!d->may_vacuum)
            log_info("outbox-worker: this role does not own bus.outbox; autovacuum alone cleans it");
    }
    return d->may_vacuum == 1;
}

static void vacuum_outbox(drainer_t *d, int64_t now)
{
    d->since_vacuum = 0;
    if (!may_vacuum_outbox(d))
        return;
    int64_t t0 = clock_mono_us();
    if (pg_exec(db_pg(d->db), "VACUUM (SKIP_LOCKED, INDEX_CLEANUP ON) bus.outbox") != 0)
        log_debug("outbox-worker: VACUUM of bus.outbox failed");
    else
        metrics_add(d->m_vacuums, 1);
    int64_t ms = (clock_mono_us() - t0) / 1000;
    log_debug("outbox-worker: VACUUM of bus.outbox took %lld ms", (long long)ms);
    d->next_vacuum = now + (ms * DRAIN_VACUUM_DUTY > DRAIN_VACUUM_MIN_MS ? ms * DRAIN_VACUUM_DUTY : DRAIN_VACUUM_MIN_MS);
}

static void *stepper_main(void *arg)
{
    stepper_t *h = arg;
    log_set_role(h->role);
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (!h->quit && !(h->posted && !h->done))
            pthread_cond_wait(&h->cv, &h->mu);
        if (h->quit)
            break;
        pthread_mutex_unlock(&h->mu);
        drainer_t *d = h->d;
        bool ok = outbox_step_send(d->db, &d->next, d->unmarked, d->nunmarked, d->o->retain_s > 0, h->parts, h->nparts,
                                   h->skip, h->nskip, d->o->batch) == 0 &&
                  outbox_step_wait(d->db, &d->next) == 0;
        pthread_mutex_lock(&h->mu);
        h->rc = ok ? 0 : -1;
        h->done = true;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

/* Starts the step on the helper (skip: taken). 0, or -1 when the helper
 * cannot be started (the caller then runs the step itself). */
static int stepper_post(drainer_t *d, const int *parts, size_t nparts, int64_t *skip, size_t nskip)
{
    stepper_t *h = &d->stepper;
    if (!h->started) {
        pthread_mutex_init(&h->mu, NULL);
        pthread_cond_init(&h->cv, NULL);
        h->role = log_get_role();
        if (pthread_create(&h->thread, NULL, stepper_main, h) != 0) {
            pthread_mutex_destroy(&h->mu);
            pthread_cond_destroy(&h->cv);
            return -1;
        }
        h->started = true;
    }
    pthread_mutex_lock(&h->mu);
    h->d = d;
    h->parts = parts;
    h->nparts = nparts;
    h->skip = skip;
    h->nskip = nskip;
    h->rc = 0;
    h->done = false;
    h->posted = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

/* Waits for the posted step: 0, or -1 (d->next to be freed: nothing fetched). */
static int stepper_join(drainer_t *d)
{
    stepper_t *h = &d->stepper;
    pthread_mutex_lock(&h->mu);
    while (!h->done)
        pthread_cond_wait(&h->cv, &h->mu);
    int rc = h->rc;
    free(h->skip);
    h->skip = NULL;
    h->posted = h->done = false;
    pthread_mutex_unlock(&h->mu);
    return rc;
}

static void stepper_stop(drainer_t *d)
{
    stepper_t *h = &d->stepper;
    if (!h->started)
        return;
    pthread_mutex_lock(&h->mu);
    h->quit = true;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    h->started = false;
}

_Static_assert(OUTBOX_PARTITIONS <= 64, "a partition set is a 64-bit mask");

/* The next batch: the one fetched during the last publish, or (when there is
 * none) removes the published rows and fetches, in one round trip. mask is
 * parts as bits (bit p: partition p). */
static int next_batch(drainer_t *d, const int *parts, size_t np, uint64_t mask, outbox_step_t *cur)
{
    /* fetched from other partitions (a pause began or ended since): the
     * partitions now taken are fetched again */
    if (d->have_next && d->next_parts != mask)
        discard_next(d);
    if (d->have_next && (d->next.n > 0 || d->nunmarked == 0)) {
        *cur = d->next;
        d->have_next = false;
        return 0;
    }
    discard_next(d);
    if (outbox_step_send(d->db, cur, d->unmarked, d->nunmarked, d->o->retain_s > 0, parts, np, NULL, 0, d->o->batch) !=
            0 ||
        outbox_step_wait(d->db, cur) != 0) {
        outbox_step_free(cur);
        return -1;
    }
    if (cur->removed)
        d->nunmarked = 0;
    return 0;
}

int drain_run(const drain_opts_t *o, atomic_bool *stop)
{
    drainer_t d = {.o = o, .stop = stop, .member = -1};
    strmap_init(&d.topics_ready);
    d.m_published = metrics_counter("ecom_outbox_published_total", "Outbox rows published to the bus", "");
    d.m_batches = metrics_counter("ecom_outbox_batches_total", "Publish batches", "");
    d.m_errors = metrics_counter("ecom_outbox_errors_total", "Failed drain steps (retried)", "");
    d.m_dead = metrics_counter("ecom_outbox_dead_total", "Rows moved to bus.outbox_dead", "");
    d.m_held = metrics_gauge("ecom_outbox_partitions_held", "Outbox partitions held by this drainer", "");
    d.m_batch_s = metrics_histogram("ecom_outbox_batch_seconds", "Time to publish and mark one batch", "");
    d.m_trimmed = metrics_counter("ecom_stream_trimmed_total", "Stream entries trimmed after every group acked", "");
    d.m_vacuums = metrics_counter("ecom_outbox_vacuums_total", "VACUUMs of bus.outbox run by this drainer", "");
    bool memory = !(o->database_url && *o->database_url);
    d.store_name = memory ? "memory-store" : "postgres";
    d.bus_name = o->redis_url && *o->redis_url ? "redis" : "memory-bus";
    health_require(d.store_name);
    health_require(d.bus_name);
    if (memory) {
        d.nheld = OUTBOX_PARTITIONS;
        for (int p = 0; p < OUTBOX_PARTITIONS; p++)
            d.held[p] = true;
    }
    int parts[OUTBOX_PARTITIONS];
    /* The re-drive window's old rows go on a thread of their own, in the
     * drainer holding partition 0: a chunk of the delete stalled the drain
     * 20-27 ms, and a chunk every interval fell behind a steady flow. */
    atomic_bool cleaner = false;
    janitor_t *janitor = memory || o->retain_s <= 0
                             ? NULL
                             : janitor_start(&(janitor_opts_t){.database_url = o->database_url,
                                                               .app_name = "ecom-outbox-cleanup",
                                                               .what = "bus.outbox_published",
                                                               .cleanup = outbox_cleanup,
                                                               .retain_s = o->retain_s,
                                                               .every_ms = (int)o->trim_interval_ms,
                                                               .on = &cleaner});
    log_info("outbox-worker started (%s store, %s bus, batch %zu)", memory ? "memory" : "postgres",
             o->redis_url && *o->redis_url ? "redis" : "memory", o->batch);

    while (!stopping(&d)) {
        atomic_store(&cleaner, d.held[0]); /* lost_connection gives every partition up */
        if (connect_all(&d) != 0) {
            backoff(&d);
            continue;
        }
        int64_t now = clock_mono_ms();
        if (now >= d.next_probe) {
            d.next_probe = now + 2000;
            probe(&d);
        }
        if (!memory && now >= d.next_rebalance) {
            d.next_rebalance = now + REBALANCE_MS;
            int64_t t0 = clock_mono_us();
            bool before[OUTBOX_PARTITIONS];
            memcpy(before, d.held, sizeof before);
            /* published rows go before any partition is given up, so the next
             * holder does not publish them again */
            if (d.nunmarked && outbox_remove(d.db, d.unmarked, d.nunmarked, o->retain_s > 0) == 0)
                d.nunmarked = 0;
            if (rebalance(&d) != 0) {
                discard_next(&d);
                metrics_add(d.m_errors, 1);
                check_db(&d);
                backoff(&d);
                continue;
            }
            if (memcmp(before, d.held, sizeof before) != 0)
                discard_next(&d); /* it may hold rows of a partition given up */
            health_report(d.store_name, true, (double)(clock_mono_us() - t0) / 1000.0);
        }
        if (now >= d.next_maintenance && d.held[0]) {
            d.next_maintenance = now + o->trim_interval_ms;
            maintenance(&d);
        }
        if (!memory && d.since_vacuum >= (o->vacuum_rows ? o->vacuum_rows : DRAIN_VACUUM_ROWS) &&
            now >= d.next_vacuum)
            vacuum_outbox(&d, now);
        now = clock_mono_ms(); /* after the maintenance above */
        size_t np = 0;
        uint64_t mask = 0;          /* parts as bits */
        int64_t resume = INT64_MAX; /* the earliest end of a held partition's pause */
        for (int p = 0; p < OUTBOX_PARTITIONS; p++) {
            if (!d.held[p])
                continue;
            if (now < d.paused_until[p]) {
                resume = d.paused_until[p] < resume ? d.paused_until[p] : resume;
            } else {
                parts[np++] = p;
                mask |= UINT64_C(1) << p;
            }
        }
        if (np == 0) {
            nap(&d, d.nheld == 0 ? REBALANCE_MS / 2 : resume - now);
            continue;
        }
        int64_t t0 = clock_mono_us();
        outbox_step_t cur;
        if (next_batch(&d, parts, np, mask, &cur) != 0) {
            step_failed(&d);
            backoff(&d);
            continue;
        }
        if (cur.n == 0) {
            outbox_step_free(&cur);
            int wait = drain_idle_wait_ms(d.empty, o->poll_ms);
            int64_t due = resume == INT64_MAX ? INT64_MAX : resume - clock_mono_ms();
            if (due < wait) /* a paused partition's row is due */
                wait = due > 1 ? (int)due : 1;
            wait_hint(&d, wait);
            if (d.empty < 30)
                d.empty++;
            continue;
        }
        d.empty = 0;
        size_t bad_topic;
        bool ready = prepare_topics(&d, cur.rows, cur.n, &bad_topic) == 0, db_ok = true;
        /* Redis takes writes but refuses a topic's stream (say, a key of another
         * type): the rows before go out and the first row of that topic is poisoned */
        bool refused = !ready && bus_writable(d.bus) == 0;
        /* A full batch: more rows are likely waiting. While this batch goes out,
         * remove the previous one and fetch the next, leaving out this one's rows.
         * (A partial batch took every row there was: the next step removes it.) */
        bool overlap = ready && cur.n == o->batch, helped = false;
        if (overlap) {
            int64_t *skip = xmalloc(cur.n * sizeof *skip);
            for (size_t i = 0; i < cur.n; i++)
                skip[i] = cur.rows[i].pos;
            if (stepper_post(&d, parts, np, skip, cur.n) == 0) {
                helped = true;
            } else {
                if (outbox_step_send(d.db, &d.next, d.unmarked, d.nunmarked, o->retain_s > 0, parts, np, skip, cur.n,
                                     o->batch) != 0) {
                    outbox_step_free(&d.next);
                    overlap = false;
                    db_ok = false;
                }
                free(skip);
            }
        }
        bool poisoned = false;
        size_t done = 0;
        if (ready)
            done = publish(&d, cur.rows, cur.n, &poisoned);
        else if (refused) {
            done = bad_topic ? publish(&d, cur.rows, bad_topic, &poisoned) : 0;
            if (done == bad_topic)
                poisoned = true;
        }
        if (overlap) {
            if ((helped ? stepper_join(&d) : outbox_step_wait(d.db, &d.next)) == 0) {
                d.have_next = true;
                d.next_parts = mask;
                if (d.next.removed)
                    d.nunmarked = 0;
            } else {
                outbox_step_free(&d.next);
                db_ok = false;
            }
        }
        log_debug("drain: fetched %zu rows, published %zu (first pos %lld)", cur.n, done, (long long)cur.rows[0].pos);
        add_unmarked(&d, cur.rows, done);
        if (done < cur.n)
            discard_next(&d); /* it may hold later rows of an aggregate whose row did not go out */
        if (!db_ok) {
            /* published but not removed: they go out again and the inbox drops the copies */
            step_failed(&d);
        } else if (poisoned) {
            poison_row(&d, &cur.rows[done]);
        }
        if (done == 0 && !poisoned) {
            /* the bus is down: nothing went out, nothing is lost */
            health_report(d.bus_name, false, 0);
            metrics_add(d.m_errors, 1);
            outbox_step_free(&cur);
            if (bus_ensure(d.bus) != 0)
                log_warn("outbox-worker: redis unavailable; retrying");
            backoff(&d);
            continue;
        }
        health_report(d.bus_name, true, (double)(clock_mono_us() - t0) / 1000.0);
        if (done) {
            metrics_add(d.m_published, done);
            metrics_add(d.m_batches, 1);
            metrics_observe(d.m_batch_s, (double)(clock_mono_us() - t0) / 1e6);
        }
        if (db_ok)
            d.backoff_ms = 0;
        outbox_step_free(&cur);
    }
    janitor_stop(janitor);
    stepper_stop(&d);
    discard_next(&d);
    if (d.db && d.nunmarked && outbox_remove(d.db, d.unmarked, d.nunmarked, o->retain_s > 0) != 0)
        log_warn("outbox-worker: %zu published rows not removed (they go out again)", d.nunmarked);
    log_info("outbox-worker stopped");
    free(d.unmarked);
    strmap_free(&d.topics_ready);
    db_close(d.db);
    bus_close(d.bus);
    return 0;
}
