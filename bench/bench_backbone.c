/* bench/bench_backbone.c: throughput, latency and memory of the message
 * backbone (outbox -> drainer -> Redis Streams -> service worker + inbox), each
 * figure printed beside the physical limit of the same work measured in the
 * same run. Figures are printed, never asserted: the exit status is non-zero
 * only when a run could not complete (timeout, lost or extra messages).
 *
 * Usage, inside scripts/test-env on a freshly migrated database (scripts/run-bench):
 *   bench_backbone [--ecom PATH] [drain] [fetch] [consume] [poison] [latency] [process] [memory] [breakdown]
 * With no phase named, every phase but breakdown runs. fetch times the
 * drainer's fetch (one outbox_step) over rows removed before a VACUUM and
 * past a batch in flight. breakdown (on request)
 * does the drainer's and the service's steps by hand and times each, to show
 * where the time goes.
 * Environment: DATABASE_URL (migrated; its backbone tables are emptied between
 * runs), REDIS_URL (logical databases 1..8 are flushed and used), OUTBOX_BATCH
 * (default 1000), BENCH_N (messages per throughput run, default 100000),
 * BENCH_SERVICE_BATCHES (default "64,256,1000"), BENCH_LATENCY_S (default 10),
 * BENCH_LATENCY_ROUNDS (latency runs, judged on the median's p99; default 3),
 * BENCH_RATE (default 1000 msgs/s), BENCH_PRODUCERS (connections sharing that
 * schedule, default 4), LOG_LEVEL (default off).
 * Owns: everything it starts (threads, child processes, connections). */
#include "bus/bus.h"
#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/redis.h"
#include "inbox/inbox.h"
#include "outbox-worker/drain.h"
#include "services/analytics/analytics.h"
#include "services/runtime.h"

#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TOPIC "bench"
#define STREAM "ecom:bench"
#define TYPE "order.placed"
#define TENANT "t1"
#define NAGGS 1000         /* aggregates the messages are spread over */
#define APPEND_TXN 5000    /* outbox rows per setup transaction */
#define PUBLISH_CHUNK 1000 /* envelopes per bus_publish call in setup */
#define WARMUP_MSGS 500    /* latency runs: paced messages before measuring */
#define TARGET_DRAIN 60000
#define TARGET_CONSUME 50000
#define TARGET_P99_MS 10
#define TARGET_RSS_MB 20

/* Production defaults (core/config.c), used wherever a figure is not about them. */
#define DEF_POLL_MS 100
#define DEF_RETAIN_S 3600
#define DEF_TRIM_MS 10000
#define DEF_SVC_BATCH 1000
#define DEF_BLOCK_MS 1000
#define DEF_MAX_ATTEMPTS 5
#define DEF_RECLAIM_MS 30000
#define DEF_BACKOFF_MS 200
#define DEF_INBOX_RETAIN_S 604800
#define DEF_LANES 4

static const char traceparent[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
static const char request_id[] = "7f3c9a2e5b1d4c8fa0e6b3d2c1f09876";

static const char *pg_url;
static size_t svc_lanes = DEF_LANES; /* SERVICE_LANES */
static char redis_base[512];
static const char *ecom_bin = "build/bin/ecom";
static size_t n_msgs = 100000;
static size_t outbox_batch = 1000;
static size_t svc_batches[8] = {256, 1000};
static size_t n_svc_batches = 2;
static int latency_s = 10;
#define MAX_LATENCY_ROUNDS 9
static int latency_rounds = 3;
static int rate = 1000;
static int failures;
static PGconn *admin;
static const svc_def_t *analytics;
static metric_t *m_published, *m_applied, *m_dlq, *m_dup;
static int64_t mono0, wall0; /* one instant on both clocks: intended send times on the wall clock */

/* ---- small helpers ---- */

static pid_t spawned[2]; /* the process run's ecom processes, stopped by die() too */

static _Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_backbone: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    for (int i = 0; i < 2; i++)
        if (spawned[i] > 0)
            kill(spawned[i], SIGKILL);
    exit(2);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("  FAILED: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    failures++;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_until_us(int64_t mono_us)
{
    struct timespec ts = {(time_t)(mono_us / 1000000), (long)(mono_us % 1000000) * 1000L};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void sleep_us(int64_t us)
{
    sleep_until_us(clock_mono_us() + us);
}

static double secs(int64_t us)
{
    return (double)us / 1e6;
}

static double per_s(size_t n, int64_t us)
{
    return us > 0 ? (double)n * 1e6 / (double)us : 0.0;
}

static const char *verdict(bool met)
{
    return met ? "met" : "MISSED";
}

static void admin_exec(const char *sql)
{
    if (pg_exec(admin, sql) != 0)
        die("SQL failed: %s", sql);
}

static long long admin_int(const char *sql)
{
    PGresult *r = pg_query(admin, sql, 0, NULL);
    if (!r || PQntuples(r) < 1)
        die("SQL failed: %s", sql);
    long long v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* Empties every backbone table and flushes dirty pages, so each run starts alike. */
static void reset_store(void)
{
    admin_exec("TRUNCATE bus.outbox, bus.aggregate_seq, bus.outbox_published, bus.outbox_dead, bus.inbox,"
               " analytics.events");
    /* what earlier phases left for the kernel to write back is written now,
     * not during this phase: without this, the latency phase on processes,
     * run after the 100,000-message phases, saw every commit stall for 40-100
     * ms once or twice (COMMIT durations in PostgreSQL's log) */
    admin_exec("CHECKPOINT");
    sync();
}

static db_t *open_pg(const char *app)
{
    char *err = NULL;
    db_t *db = db_open_pg(pg_url, app, &err);
    if (!db)
        die("postgres: %s", err);
    return db;
}

static redisContext *redis_open(const char *url)
{
    char *err = NULL;
    redisContext *rc = redis_connect_url(url, 10000, &err);
    if (!rc)
        die("redis: %s", err);
    return rc;
}

/* A flushed logical Redis database of its own for one run (owned URL). */
static char *redis_db(int n)
{
    char *url = redis_url_with_db(redis_base, n);
    if (!url)
        die("REDIS_URL does not parse: %s", redis_base);
    redisContext *rc = redis_open(url);
    redisReply *r = redisCommand(rc, "FLUSHDB");
    if (!r || r->type == REDIS_REPLY_ERROR)
        die("redis FLUSHDB failed");
    freeReplyObject(r);
    redisFree(rc);
    return url;
}

static bus_t *open_bus(const char *url)
{
    char *err = NULL;
    bus_t *b = bus_open_redis(url, &err);
    if (!b)
        die("redis: %s", err);
    return b;
}

static uint64_t stream_len(bus_t *b, const char *stream)
{
    bus_stream_info_t info;
    memset(&info, 0, sizeof info);
    if (bus_stream_info(b, stream, &info) != 0)
        return 0;
    return info.length;
}

/* ---- CPU accounting: where the cycles of a run went ---- */

static pid_t pg_postmaster, redis_pid;

typedef struct cpu {
    double wall, self, pg, redis, busy; /* seconds */
    double pg_drain, pg_svc, pg_bg;     /* backends of the drainer, the service, and PostgreSQL's own */
    double child[2];
} cpu_t;

/* utime + stime of a process in seconds (with its reaped children's when
 * children); -1 when it is gone. */
static double proc_cpu(pid_t pid, bool children, pid_t *ppid_out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    char state;
    int ppid;
    unsigned long ut, st;
    long cut, cst;
    if (!p || sscanf(p + 2, "%c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %ld %ld", &state, &ppid, &ut, &st, &cut,
                     &cst) != 6)
        return -1;
    if (ppid_out)
        *ppid_out = (pid_t)ppid;
    double ticks = (double)(ut + st) + (children ? (double)(cut + cst) : 0.0);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

/* The PostgreSQL server's processes: the postmaster with every backend it reaped, plus the live ones. */
static double pg_cpu(void)
{
    if (pg_postmaster <= 0)
        return 0;
    double t = proc_cpu(pg_postmaster, true, NULL);
    DIR *d = opendir("/proc");
    if (!d)
        return t;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        pid_t ppid = 0;
        double c = proc_cpu((pid_t)atoi(e->d_name), false, &ppid);
        if (c > 0 && ppid == pg_postmaster)
            t += c;
    }
    closedir(d);
    return t;
}

/* Busy time of the whole machine (every process, ours and others'). */
static double machine_busy(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7]);
    fclose(f);
    if (n != 8)
        return 0;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

/* CPU of the live backends matching a pg_stat_activity condition. */
static double pg_backends_cpu(const char *where)
{
    char *sql = xasprintf("SELECT pid FROM pg_stat_activity WHERE %s", where);
    PGresult *r = pg_query(admin, sql, 0, NULL);
    free(sql);
    double t = 0;
    for (int i = 0; r && i < PQntuples(r); i++) {
        double c = proc_cpu((pid_t)atoi(PQgetvalue(r, i, 0)), false, NULL);
        if (c > 0)
            t += c;
    }
    PQclear(r);
    return t;
}

static void cpu_snap(cpu_t *c, pid_t c0, pid_t c1)
{
    c->pg_drain = pg_backends_cpu("application_name = 'ecom-outbox-worker'");
    c->pg_svc = pg_backends_cpu("application_name = 'analytics'");
    c->pg_bg = pg_backends_cpu("backend_type <> 'client backend'");
    c->wall = (double)clock_mono_us() / 1e6;
    c->self = proc_cpu(getpid(), false, NULL);
    c->pg = pg_cpu();
    c->redis = redis_pid > 0 ? proc_cpu(redis_pid, false, NULL) : 0;
    c->busy = machine_busy();
    c->child[0] = c0 > 0 ? proc_cpu(c0, false, NULL) : 0;
    c->child[1] = c1 > 0 ? proc_cpu(c1, false, NULL) : 0;
}

/* One line: each part's CPU between a and b as a share of one core. */
static void cpu_print(const cpu_t *a, const cpu_t *b, const char *self_name, const char *c0_name, const char *c1_name)
{
    double w = b->wall - a->wall;
    if (w <= 0)
        return;
    printf("  cpu (%% of one core over %.1f s): %s %.0f%%", w, self_name, 100 * (b->self - a->self) / w);
    if (c0_name)
        printf(", %s %.0f%%", c0_name, 100 * (b->child[0] - a->child[0]) / w);
    if (c1_name)
        printf(", %s %.0f%%", c1_name, 100 * (b->child[1] - a->child[1]) / w);
    double pg = b->pg - a->pg, pd = b->pg_drain - a->pg_drain, ps = b->pg_svc - a->pg_svc, pb = b->pg_bg - a->pg_bg;
    double po = pg - pd - ps - pb; /* backends that came and went: producers, autovacuum workers */
    if (po < 0)
        po = 0; /* clock-tick rounding */
    printf(", postgres %.0f%% (backends: drainer's %.0f%%, service's %.0f%%, others %.0f%%, background %.0f%%),"
           " redis %.0f%%; whole machine %.0f%% of %ld00%% (the rest: other processes)\n",
           100 * pg / w, 100 * pd / w, 100 * ps / w, 100 * po / w, 100 * pb / w, 100 * (b->redis - a->redis) / w,
           100 * (b->busy - a->busy) / w, sysconf(_SC_NPROCESSORS_ONLN));
}

/* ---- the messages ---- */

static void msg_text(size_t i, char agg[32], char payload[160])
{
    snprintf(agg, 32, "order-%zu", i % NAGGS);
    snprintf(payload, 160,
             "{\"order_id\":\"order-%zu\",\"customer\":\"c-%zu\",\"total_cents\":%zu,"
             "\"currency\":\"EUR\",\"items\":%zu}",
             i % NAGGS, i % 7919, 1000 + i % 90000, 1 + i % 9);
}

/* n envelopes as the drainer would publish them (owned: free_envelopes). */
static envelope_t *make_envelopes(size_t n)
{
    envelope_t *e = xcalloc(n, sizeof *e);
    int64_t now = clock_now_ms();
    for (size_t i = 0; i < n; i++) {
        char agg[32], payload[160];
        msg_text(i, agg, payload);
        envelope_t src = {.type = TYPE,
                          .topic = TOPIC,
                          .tenant = TENANT,
                          .aggregate_id = agg,
                          .seq = (int64_t)(i / NAGGS) + 1,
                          .ts = now,
                          .v = 1,
                          .traceparent = (char *)traceparent,
                          .request_id = (char *)request_id,
                          .payload = payload};
        uuid_v7(src.id);
        envelope_copy(&e[i], &src);
    }
    return e;
}

static void free_envelopes(envelope_t *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        envelope_clear(&e[i]);
    free(e);
}

/* Bytes of field names and values in one stream entry. */
static size_t entry_bytes(const envelope_t *e)
{
    size_t n = 0;
    char tmp[32];
    for (int f = 0; f < ENV_NFIELDS; f++)
        n += strlen(envelope_field_name(f)) + strlen(envelope_field_value(e, f, tmp));
    return n;
}

/* Appends n rows with outbox_append, txn rows per transaction. */
static void append_rows(db_t *db, size_t n, size_t txn)
{
    for (size_t i = 0; i < n;) {
        if (db_begin(db) != 0)
            die("append: BEGIN failed");
        for (size_t k = 0; k < txn && i < n; k++, i++) {
            char agg[32], payload[160];
            msg_text(i, agg, payload);
            outbox_msg_t m = {.topic = TOPIC,
                              .type = TYPE,
                              .tenant = TENANT,
                              .aggregate_id = agg,
                              .traceparent = traceparent,
                              .request_id = request_id,
                              .payload = payload};
            const char *why = NULL;
            if (outbox_append(db, &m, NULL, &why) != 0)
                die("outbox_append: %s", why);
        }
        if (db_commit(db) != 0)
            die("append: COMMIT failed");
    }
}

/* ---- the roles on threads ---- */

typedef struct drainer {
    drain_opts_t o;
    atomic_bool stop;
    pthread_t th;
} drainer_t;

static void *drainer_main(void *arg)
{
    drainer_t *d = arg;
    log_set_role("outbox-worker");
    if (drain_run(&d->o, &d->stop) != 0)
        fprintf(stderr, "bench_backbone: drain_run returned an error\n");
    return NULL;
}

static void drainer_start(drainer_t *d, const char *db_url, memstore_t *mem, const char *redis_url, membus_t *membus,
                          int64_t retain_s)
{
    memset(d, 0, sizeof *d);
    d->o = (drain_opts_t){.database_url = db_url,
                          .mem = mem,
                          .redis_url = redis_url,
                          .membus = membus,
                          .batch = outbox_batch,
                          .poll_ms = DEF_POLL_MS,
                          .retain_s = retain_s,
                          .trim_interval_ms = DEF_TRIM_MS};
    atomic_init(&d->stop, false);
    if (pthread_create(&d->th, NULL, drainer_main, d) != 0)
        die("pthread_create failed");
}

static void drainer_stop(drainer_t *d)
{
    atomic_store(&d->stop, true);
    pthread_join(d->th, NULL);
}

typedef struct service {
    svc_def_t def;
    svc_opts_t o;
    atomic_bool stop;
    pthread_t th;
} service_t;

static void *service_main(void *arg)
{
    service_t *s = arg;
    log_set_role(s->def.group);
    if (svc_run(&s->def, &s->o, &s->stop) != 0)
        fprintf(stderr, "bench_backbone: svc_run returned an error\n");
    return NULL;
}

static void service_start(service_t *s, const svc_def_t *def, const char *db_url, memstore_t *mem,
                          const char *redis_url, membus_t *membus, size_t batch, int64_t backoff_ms)
{
    memset(s, 0, sizeof *s);
    s->def = *def;
    s->o = (svc_opts_t){.database_url = db_url,
                        .mem = mem,
                        .redis_url = redis_url,
                        .membus = membus,
                        .consumer = "bench-analytics",
                        .batch = batch,
                        .block_ms = DEF_BLOCK_MS,
                        .lanes = (int)svc_lanes,
                        .max_attempts = DEF_MAX_ATTEMPTS,
                        .reclaim_idle_ms = DEF_RECLAIM_MS,
                        .backoff_ms = backoff_ms,
                        .inbox_retain_s = DEF_INBOX_RETAIN_S};
    atomic_init(&s->stop, false);
    if (pthread_create(&s->th, NULL, service_main, s) != 0)
        die("pthread_create failed");
}

static void service_stop(service_t *s)
{
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
}

/* Waits until counter m reaches target: µs since t0, or -1 after timeout_ms. */
static int64_t wait_counter(const metric_t *m, uint64_t target, int64_t t0, int64_t timeout_ms)
{
    int64_t end = t0 + timeout_ms * 1000;
    for (;;) {
        int64_t now = clock_mono_us();
        if (metrics_value(m) >= target)
            return now - t0;
        if (now > end)
            return -1;
        sleep_us(1000);
    }
}

/* ---- 1. drain ---- */

/* The drainer's SQL alone: its fetch statement, then one DELETE per batch, on a
 * copy of the pending rows (same indexes), no Redis. rows/s. */
static double bare_claim(size_t n)
{
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench-claim", &err);
    if (!c)
        die("postgres: %s", err);
    PGresult *r = PQprepare(c, "sel",
                            "SELECT pos, partition, attempts, id, type, topic, tenant, aggregate_id, seq, ts, v,"
                            " traceparent, request_id, payload FROM bench_claim"
                            " WHERE partition = ANY($1::smallint[]) ORDER BY pos LIMIT $2",
                            2, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("prepare: %s", PQerrorMessage(c));
    PQclear(r);
    r = PQprepare(c, "del", "DELETE FROM bench_claim WHERE pos = ANY($1::bigint[])", 1, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("prepare: %s", PQerrorMessage(c));
    PQclear(r);
    char parts[OUTBOX_PARTITIONS * 4 + 3];
    size_t pl = 0;
    parts[pl++] = '{';
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        pl += (size_t)snprintf(parts + pl, sizeof parts - pl, p ? ",%d" : "%d", p);
    parts[pl++] = '}';
    parts[pl] = '\0';
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", outbox_batch);
    char *arr = xmalloc(outbox_batch * 21 + 3);
    size_t done = 0;
    int64_t t0 = clock_mono_us();
    for (;;) {
        const char *sp[] = {parts, lim};
        r = PQexecPrepared(c, "sel", 2, sp, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            die("claim select: %s", PQerrorMessage(c));
        int nt = PQntuples(r);
        if (nt == 0) {
            PQclear(r);
            break;
        }
        size_t al = 0;
        arr[al++] = '{';
        for (int i = 0; i < nt; i++) {
            if (i)
                arr[al++] = ',';
            size_t len = (size_t)PQgetlength(r, i, 0);
            memcpy(arr + al, PQgetvalue(r, i, 0), len);
            al += len;
        }
        arr[al++] = '}';
        arr[al] = '\0';
        PQclear(r);
        const char *dp[] = {arr};
        r = PQexecPrepared(c, "del", 1, dp, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            die("claim delete: %s", PQerrorMessage(c));
        PQclear(r);
        done += (size_t)nt;
    }
    int64_t us = clock_mono_us() - t0;
    free(arr);
    PQfinish(c);
    if (done != n)
        fail("bare claim SQL saw %zu rows, expected %zu", done, n);
    return per_s(done, us);
}

/* Plain pipelined XADD (no MULTI) of the envelopes' fields, batch per round
 * trip. one_field: the same value bytes as one field "e" (how much of Redis's
 * cost is per field). msgs/s. */
static double raw_xadd(const char *url, const envelope_t *e, size_t n, size_t batch, bool one_field)
{
    redisContext *rc = redis_open(url);
    const char *argv[3 + 2 * ENV_NFIELDS];
    size_t lens[3 + 2 * ENV_NFIELDS];
    char tmp[ENV_NFIELDS][32];
    char one[2048];
    argv[0] = "XADD";
    argv[1] = STREAM;
    argv[2] = "*";
    for (int k = 0; k < 3; k++)
        lens[k] = strlen(argv[k]);
    size_t ok = 0;
    int64_t t0 = clock_mono_us();
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; k < batch && i + k < n; k++) {
            const envelope_t *m = &e[i + k];
            for (int f = 0; f < ENV_NFIELDS; f++) {
                argv[3 + 2 * f] = envelope_field_name(f);
                argv[4 + 2 * f] = envelope_field_value(m, f, tmp[f]);
                lens[3 + 2 * f] = strlen(argv[3 + 2 * f]);
                lens[4 + 2 * f] = strlen(argv[4 + 2 * f]);
            }
            int argc = 3 + 2 * ENV_NFIELDS;
            if (one_field) {
                size_t ol = 0;
                for (int f = 0; f < ENV_NFIELDS; f++) {
                    size_t l = lens[3 + 2 * f] + lens[4 + 2 * f];
                    if (ol + l >= sizeof one)
                        die("envelope too large for the one-field variant");
                    memcpy(one + ol, argv[3 + 2 * f], lens[3 + 2 * f]);
                    memcpy(one + ol + lens[3 + 2 * f], argv[4 + 2 * f], lens[4 + 2 * f]);
                    ol += l;
                }
                argv[3] = "e";
                lens[3] = 1;
                argv[4] = one;
                lens[4] = ol;
                argc = 5;
            }
            if (redisAppendCommandArgv(rc, argc, argv, lens) != REDIS_OK)
                die("redis: append failed");
        }
        for (size_t j = 0; j < k; j++) {
            void *p = NULL;
            if (redisGetReply(rc, &p) != REDIS_OK || !p)
                die("redis: XADD reply lost: %s", rc->errstr);
            redisReply *r = p;
            if (r->type == REDIS_REPLY_STRING)
                ok++;
            freeReplyObject(r);
        }
        i += k;
    }
    int64_t us = clock_mono_us() - t0;
    redisFree(rc);
    if (ok != n)
        fail("raw XADD: %zu of %zu accepted", ok, n);
    return per_s(ok, us);
}

static void bench_drain(void)
{
    reset_store();
    char *rurl = redis_db(1);
    db_t *db = open_pg("bench-setup");
    int64_t t0 = clock_mono_us();
    append_rows(db, n_msgs, APPEND_TXN);
    int64_t app_us = clock_mono_us() - t0;
    db_close(db);
    printf("  setup: outbox_append of %zu rows (%d per transaction) took %.2f s = %.0f rows/s (not a figure)\n", n_msgs,
           APPEND_TXN, secs(app_us), per_s(n_msgs, app_us));

    /* (b) the claim-and-delete SQL alone, on a copy of the same rows */
    admin_exec("ANALYZE bus.outbox");
    admin_exec("DROP TABLE IF EXISTS bench_claim");
    admin_exec("CREATE TABLE bench_claim (LIKE bus.outbox INCLUDING ALL)");
    admin_exec("INSERT INTO bench_claim SELECT * FROM bus.outbox");
    admin_exec("ANALYZE bench_claim");
    admin_exec("CHECKPOINT");
    double sql_rate = bare_claim(n_msgs);
    admin_exec("DROP TABLE bench_claim");

    /* (a) raw pipelined XADD of entries of the same size, in another database */
    envelope_t *envs = make_envelopes(n_msgs);
    size_t bytes = entry_bytes(&envs[0]);
    char *xurl = redis_db(2);
    double xadd_rate = raw_xadd(xurl, envs, n_msgs, outbox_batch, false);
    free(redis_db(2));
    free(xurl);
    free_envelopes(envs, n_msgs);
    admin_exec("CHECKPOINT");

    /* the drainer */
    drainer_t d;
    uint64_t base = metrics_value(m_published);
    cpu_t c0, c1;
    cpu_snap(&c0, 0, 0);
    t0 = clock_mono_us();
    drainer_start(&d, pg_url, NULL, rurl, NULL, 0);
    int64_t us = wait_counter(m_published, base + n_msgs, t0, 120000);
    cpu_snap(&c1, 0, 0);
    drainer_stop(&d);
    bus_t *b = open_bus(rurl);
    uint64_t len = stream_len(b, STREAM);
    bus_close(b);
    long long left = admin_int("SELECT count(*) FROM bus.outbox");
    if (us < 0) {
        fail("drain: timed out after 120 s (%llu of %zu published)",
             (unsigned long long)(metrics_value(m_published) - base), n_msgs);
    } else {
        double r = per_s(n_msgs, us);
        printf("drain (postgres+redis): %zu rows in %.2f s = %.0f msgs/s, target >= %d: %s"
               " (raw pipelined XADD %.0f/s, bare claim+delete SQL %.0f rows/s; batch %zu, entry %zu bytes)\n",
               n_msgs, secs(us), r, TARGET_DRAIN, verdict(r >= TARGET_DRAIN), xadd_rate, sql_rate, outbox_batch, bytes);
        cpu_print(&c0, &c1, "drainer", NULL, NULL);
    }
    if (left != 0 || len != n_msgs)
        fail("drain: %lld rows left in bus.outbox, %llu entries in %s (expected 0 and %zu)", left,
             (unsigned long long)len, STREAM, n_msgs);
    fflush(stdout);
    free(rurl);
}

/* ---- the drainer's fetch ---- */

/* Adds n rows straight into bus.outbox (one statement; what the fetch reads). */
static void insert_rows(size_t n)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO bus.outbox (id, partition, topic, type, tenant, aggregate_id, seq, ts, payload)"
             " SELECT gen_random_uuid(), g %% %d, '%s', '%s', '%s', 'fetch-' || g, 1, 0, '{}'"
             " FROM generate_series(1, %zu) g",
             OUTBOX_PARTITIONS, TOPIC, TYPE, TENANT, n);
    admin_exec(sql);
}

/* One fetch of up to limit rows, as the drainer sends it (every partition,
 * skip = the rows in flight); its time in ms, the rows in *st (caller frees). */
static double fetch_once(db_t *db, const int64_t *skip, size_t nskip, size_t limit, outbox_step_t *st)
{
    int parts[OUTBOX_PARTITIONS];
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        parts[p] = p;
    int64_t t0 = clock_mono_us();
    if (outbox_step_send(db, st, NULL, 0, false, parts, OUTBOX_PARTITIONS, skip, nskip, limit) != 0 ||
        outbox_step_wait(db, st) != 0)
        die("fetch: outbox step failed");
    return (double)(clock_mono_us() - t0) / 1000.0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median ms of reps fetches; the row count of the last in *got. */
static double fetch_median(db_t *db, const int64_t *skip, size_t nskip, size_t limit, size_t *got)
{
    enum { REPS = 21 };
    double t[REPS];
    for (int i = 0; i < REPS; i++) {
        outbox_step_t st = {0};
        t[i] = fetch_once(db, skip, nskip, limit, &st);
        *got = st.n;
        outbox_step_free(&st);
    }
    qsort(t, REPS, sizeof *t, cmp_double);
    return t[REPS / 2];
}

/* The fetch reads bus.outbox from its lowest pos, so it walks the index
 * entries of removed rows until a VACUUM takes them away (the drainer vacuums
 * the table itself for that), and leaves the batch in flight out with a
 * hashed NOT IN. */
static void bench_fetch(void)
{
    enum { REMOVED = 60000, WAITING = 20, BATCH = 1000 };
    reset_store();
    admin_exec("ALTER TABLE bus.outbox SET (autovacuum_enabled = off)");
    db_t *db = open_pg("bench-fetch");
    if (db_index_scans_only(db) != 0) /* as the drainer: the fetch runs prepared */
        die("fetch: SET failed");
    insert_rows(REMOVED);
    admin_exec("DELETE FROM bus.outbox"); /* as if published */
    insert_rows(WAITING);
    size_t got = 0;
    outbox_step_t st = {0};
    double first = fetch_once(db, NULL, 0, BATCH, &st);
    outbox_step_free(&st);
    double dead = fetch_median(db, NULL, 0, BATCH, &got);
    admin_exec("VACUUM bus.outbox");
    double clean = fetch_median(db, NULL, 0, BATCH, &got);
    printf("fetch (postgres): %zu waiting rows behind %d removed ones: %.2f ms the first time, then %.2f ms"
           " (median of 21); after a VACUUM %.2f ms\n",
           got, REMOVED, first, dead, clean);
    /* a batch in flight: the next fetch leaves its rows out */
    insert_rows(2 * BATCH - WAITING);
    fetch_once(db, NULL, 0, BATCH, &st);
    int64_t *skip = xmalloc(st.n * sizeof *skip);
    size_t nskip = st.n;
    for (size_t i = 0; i < nskip; i++)
        skip[i] = st.rows[i].pos;
    outbox_step_free(&st);
    double past = fetch_median(db, skip, nskip, BATCH, &got);
    double alone = fetch_median(db, NULL, 0, BATCH, &got);
    printf("fetch (postgres): %zu rows past %zu in flight %.2f ms, the first %zu with nothing in flight %.2f ms"
           " (medians of 21)\n",
           got, nskip, past, got, alone);
    free(skip);
    db_close(db);
    admin_exec("ALTER TABLE bus.outbox RESET (autovacuum_enabled)");
    fflush(stdout);
}

/* ---- 2. consume ---- */

static char poison_id[UUID_STR_LEN];
static atomic_ullong poison_handled; /* messages handed to the handlers, applied or not */

static svc_result_t poison_one(svc_ctx_t *c, void *arg)
{
    (void)arg;
    poison_handled++;
    if (strcmp(c->msg->id, poison_id) == 0) {
        snprintf(c->error, sizeof c->error, "bench: poisoned message");
        return SVC_RETRY;
    }
    return analytics->handle(c, analytics->arg);
}

static svc_result_t poison_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg)
{
    (void)arg;
    poison_handled += n;
    for (size_t i = 0; i < n; i++)
        if (strcmp(msgs[i]->id, poison_id) == 0) {
            svc_batch_failed_at(i); /* as payment's and notification's batch handlers name theirs */
            return SVC_RETRY;
        }
    return analytics->handle_batch(tx, msgs, payloads, n, analytics->arg);
}

/* XREADGROUP COUNT batch then XACK of those ids, round trip after round trip:
 * the Redis side of a service alone. msgs/s. */
static double raw_read_ack(const char *url, size_t n, size_t batch)
{
    redisContext *rc = redis_open(url);
    redisReply *r = redisCommand(rc, "XGROUP CREATE %s bench-raw 0", STREAM);
    if (!r || r->type == REDIS_REPLY_ERROR)
        die("redis XGROUP CREATE failed");
    freeReplyObject(r);
    const char **argv = xmalloc((batch + 3) * sizeof *argv);
    size_t *lens = xmalloc((batch + 3) * sizeof *lens);
    size_t got = 0;
    int64_t t0 = clock_mono_us();
    while (got < n) {
        r = redisCommand(rc, "XREADGROUP GROUP bench-raw c1 COUNT %llu STREAMS %s >", (unsigned long long)batch,
                         STREAM);
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->elements < 2)
            die("redis XREADGROUP failed: %s", !r                             ? rc->errstr
                                               : r->type == REDIS_REPLY_ERROR ? r->str
                                                                              : "unexpected reply");
        const redisReply *ents = r->element[0]->element[1];
        argv[0] = "XACK";
        argv[1] = STREAM;
        argv[2] = "bench-raw";
        lens[0] = 4;
        lens[1] = strlen(STREAM);
        lens[2] = 9;
        for (size_t i = 0; i < ents->elements; i++) {
            argv[3 + i] = ents->element[i]->element[0]->str;
            lens[3 + i] = ents->element[i]->element[0]->len;
        }
        redisReply *a = redisCommandArgv(rc, (int)(3 + ents->elements), argv, lens);
        if (!a || a->type != REDIS_REPLY_INTEGER || (size_t)a->integer != ents->elements)
            die("redis XACK failed");
        freeReplyObject(a);
        got += ents->elements;
        size_t k = ents->elements;
        freeReplyObject(r);
        if (k == 0)
            break;
    }
    int64_t us = clock_mono_us() - t0;
    r = redisCommand(rc, "XGROUP DESTROY %s bench-raw", STREAM);
    freeReplyObject(r);
    redisFree(rc);
    free(argv);
    free(lens);
    return per_s(got, us);
}

/* The service's store work alone: per batch one transaction with what the
 * runtime writes (the analytics batch handler, and the inbox batch insert
 * unless the service keeps its own record: analytics does), no Redis. msgs/s. */
static double store_alone(const envelope_t *e, json_object *const *pl, size_t n, size_t batch)
{
    db_t *db = open_pg("bench-store");
    const char **ids = xmalloc(batch * sizeof *ids);
    const envelope_t **ep = xmalloc(batch * sizeof *ep);
    int64_t t0 = clock_mono_us();
    for (size_t off = 0; off < n; off += batch) {
        size_t k = n - off < batch ? n - off : batch;
        for (size_t i = 0; i < k; i++) {
            ids[i] = e[off + i].id;
            ep[i] = &e[off + i];
        }
        /* as the runtime: the plain insert of every id first (0 = all new),
         * when the inbox is the service's record */
        if (db_begin(db) != 0 || (!analytics->seen && inbox_record_fresh(db, "analytics", ids, k) != 0))
            die("store alone: inbox write failed (or an id was there already)");
        if (analytics->handle_batch(db, ep, pl + off, k, analytics->arg) != SVC_OK)
            die("store alone: analytics batch failed");
        if (db_commit(db) != 0)
            die("store alone: COMMIT failed");
    }
    int64_t us = clock_mono_us() - t0;
    db_close(db);
    free(ids);
    free(ep);
    return per_s(n, us);
}

/* Publishes the envelopes with bus_publish; µs taken. */
static int64_t publish_all(bus_t *b, const envelope_t *e, size_t n)
{
    int64_t t0 = clock_mono_us();
    for (size_t i = 0; i < n; i += PUBLISH_CHUNK) {
        size_t k = n - i < PUBLISH_CHUNK ? n - i : PUBLISH_CHUNK;
        if (bus_publish(b, e + i, k, NULL) != 0)
            die("bus_publish failed");
    }
    return clock_mono_us() - t0;
}

static void bench_consume(bool with_poison)
{
    envelope_t *envs = make_envelopes(n_msgs);
    json_object **pl = xcalloc(n_msgs, sizeof *pl);
    for (size_t i = 0; i < n_msgs; i++) {
        const char *why = NULL;
        if (json_parse_strict(envs[i].payload, strlen(envs[i].payload), &pl[i], &why) != 0)
            die("payload: %s", why);
    }
    size_t nb = with_poison ? 1 : n_svc_batches;
    for (size_t bi = 0; bi < nb; bi++) {
        size_t batch = with_poison ? DEF_SVC_BATCH : svc_batches[bi];
        reset_store();
        char *rurl = redis_db(3);
        bus_t *b = open_bus(rurl);
        int64_t pub_us = publish_all(b, envs, n_msgs);
        if (bi == 0 && !with_poison)
            printf("  setup: bus_publish (%d per call) of %zu msgs took %.2f s = %.0f msgs/s"
                   " (not a figure)\n",
                   PUBLISH_CHUNK, n_msgs, secs(pub_us), per_s(n_msgs, pub_us));
        double redis_rate = 0, store_rate = 0;
        if (!with_poison) {
            redis_rate = raw_read_ack(rurl, n_msgs, batch);
            admin_exec("CHECKPOINT");
            store_rate = store_alone(envs, pl, n_msgs, batch);
            reset_store();
        }
        svc_def_t def = *analytics;
        if (with_poison) {
            memcpy(poison_id, envs[n_msgs / 2].id, UUID_STR_LEN);
            poison_handled = 0;
            def.handle = poison_one;
            def.handle_batch = poison_batch;
        }
        size_t want = with_poison ? n_msgs - 1 : n_msgs;
        uint64_t base = metrics_value(m_applied), dbase = metrics_value(m_dlq), dup0 = metrics_value(m_dup);
        service_t s;
        int64_t backoff = with_poison ? 10 : DEF_BACKOFF_MS;
        cpu_t c0, c1;
        cpu_snap(&c0, 0, 0);
        int64_t t0 = clock_mono_us();
        service_start(&s, &def, pg_url, NULL, rurl, NULL, batch, backoff);
        /* watch both counters at once: each time is when its counter got there */
        int64_t us = -1, dlq_us = with_poison ? -1 : 0;
        for (int64_t end = t0 + 120000000; clock_mono_us() < end && (us < 0 || dlq_us < 0);) {
            int64_t now = clock_mono_us();
            if (us < 0 && metrics_value(m_applied) >= base + want)
                us = now - t0;
            if (dlq_us < 0 && metrics_value(m_dlq) >= dbase + 1)
                dlq_us = now - t0;
            sleep_us(1000);
        }
        cpu_snap(&c1, 0, 0);
        int64_t all_us = us < 0 || dlq_us < 0 ? -1 : us > dlq_us ? us : dlq_us;
        clock_sleep_ms(with_poison ? 300 : 0); /* nothing more may arrive */
        service_stop(&s);
        db_t *db = open_pg("bench-check");
        uint64_t inbox = 0, events = 0;
        if (inbox_count(db, "analytics", &inbox) != 0 || analytics_count(db, &events) != 0)
            die("count failed");
        db_close(db);
        uint64_t dlq = stream_len(b, "ecom:dlq:analytics");
        bus_close(b);
        if (all_us < 0) {
            fail("consume batch %zu: timed out (%llu of %zu applied, %llu dead-lettered)", batch,
                 (unsigned long long)(metrics_value(m_applied) - base), want,
                 (unsigned long long)(metrics_value(m_dlq) - dbase));
        } else if (!with_poison) {
            double r = per_s(n_msgs, us);
            size_t eff_lanes = analytics_service()->concurrent ? svc_lanes : 1; /* lanes it ran on */
            printf("consume (postgres+redis, batch %zu, %zu lane%s): %zu msgs in %.2f s = %.0f msgs/s, target >= %d: %s"
                   " (XREADGROUP+XACK alone %.0f/s, the service's SQL alone %.0f msgs/s); copies skipped %llu\n",
                   batch, eff_lanes, eff_lanes > 1 ? "s" : "", n_msgs, secs(us), r, TARGET_CONSUME,
                   verdict(r >= TARGET_CONSUME), redis_rate, store_rate,
                   (unsigned long long)(metrics_value(m_dup) - dup0));
            cpu_print(&c0, &c1, "service", NULL, NULL);
        } else {
            double r = per_s(want, all_us);
            printf("consume with one poison message (postgres+redis, batch %zu): %llu applied + %llu dead-lettered"
                   " in %.2f s = %.0f msgs/s, target >= %d: %s (poison in ecom:dlq:analytics after %.2f s:"
                   " %d attempts, backoff from %lld ms); copies skipped %llu; messages handed to the handlers %llu"
                   " (the batch handler names the failing message)\n",
                   batch, (unsigned long long)events, (unsigned long long)dlq, secs(all_us), r, TARGET_CONSUME,
                   verdict(r >= TARGET_CONSUME), secs(dlq_us), DEF_MAX_ATTEMPTS, (long long)backoff,
                   (unsigned long long)(metrics_value(m_dup) - dup0), (unsigned long long)poison_handled);
            cpu_print(&c0, &c1, "service", NULL, NULL);
        }
        /* analytics's own record of what it applied is analytics.events: no inbox rows */
        size_t want_inbox = analytics->seen ? 0 : want;
        if (inbox != want_inbox || events != want || dlq != (with_poison ? 1u : 0u))
            fail("consume batch %zu: inbox %llu, analytics.events %llu, DLQ %llu (expected %zu, %zu, %d)", batch,
                 (unsigned long long)inbox, (unsigned long long)events, (unsigned long long)dlq, want_inbox, want,
                 with_poison ? 1 : 0);
        fflush(stdout);
        free(rurl);
    }
    for (size_t i = 0; i < n_msgs; i++)
        json_object_put(pl[i]);
    free(pl);
    free_envelopes(envs, n_msgs);
}

/* ---- 3. latency at a fixed rate ---- */

/* When each measured message's handler began and when its transaction
 * committed (mono µs), indexed by the message number at the head of its
 * payload ({"i":N,...}) less lat_first; -1 = not yet. */
static int64_t *lat_start_us, *lat_done_us;
static int64_t lat_first, lat_n;

/* The index of e among the measured messages, or -1. */
static int64_t lat_index(const envelope_t *e)
{
    const char *p = e->payload ? strstr(e->payload, "\"i\":") : NULL;
    int64_t i = p ? strtoll(p + 4, NULL, 10) : -1;
    return i >= lat_first && i < lat_first + lat_n ? i - lat_first : -1;
}

/* The first time only: a retried message keeps its first stamp. */
static void lat_stamp(int64_t *at, const envelope_t *const *msgs, size_t n)
{
    int64_t now = clock_mono_us();
    for (size_t j = 0; j < n; j++) {
        int64_t k = lat_index(msgs[j]);
        if (k >= 0 && at[k] < 0)
            at[k] = now;
    }
}

static void lat_committed(const envelope_t *const *msgs, size_t n, void *arg)
{
    (void)arg;
    lat_stamp(lat_done_us, msgs, n);
}

static svc_result_t lat_one(svc_ctx_t *c, void *arg)
{
    lat_stamp(lat_start_us, &c->msg, 1);
    return analytics->handle(c, arg);
}

static svc_result_t lat_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                              void *arg)
{
    lat_stamp(lat_start_us, msgs, n);
    return analytics->handle_batch(tx, msgs, payloads, n, arg);
}

#define MAX_PRODUCERS 16

typedef struct load load_t;

typedef struct producer {
    load_t *l;
    int j;
    pthread_t th;
} producer_t;

/* The offered load: message k (0-based) is due at start + k * period and is
 * appended in its own transaction by connection k % np, so one slow commit
 * delays only that connection's next message, not the schedule. */
struct load {
    int64_t first, count, start, period;
    int np;
    producer_t p[MAX_PRODUCERS];
    int64_t *late_us;   /* per message: start behind its deadline */
    int64_t *append_us; /* per message: BEGIN + outbox_append + COMMIT */
    int64_t *commit_us; /* per message: when its COMMIT was sent (mono) */
    int64_t *acked_us;  /* per message: when its COMMIT was acknowledged (mono) */
    atomic_int errors;
    atomic_int running;
};

static int n_producers = 4;

/* The payload carries the intended send time (mono µs, and wall µs for other
 * processes), so a stall adds to the measured latency instead of hiding it. */
static void *producer_main(void *arg)
{
    producer_t *p = arg;
    load_t *l = p->l;
    db_t *db = open_pg("bench-producer");
    for (int64_t k = p->j; k < l->count; k += l->np) {
        int64_t deadline = l->start + k * l->period;
        sleep_until_us(deadline);
        int64_t t0 = clock_mono_us();
        l->late_us[k] = t0 - deadline;
        int64_t i = l->first + k;
        char agg[32], payload[256];
        snprintf(agg, sizeof agg, "order-%lld", (long long)(i % 100));
        snprintf(payload, sizeof payload,
                 "{\"i\":%lld,\"t_us\":%lld,\"w_us\":%lld,\"order_id\":\"order-%lld\",\"total_cents\":%lld,"
                 "\"currency\":\"EUR\"}",
                 (long long)i, (long long)deadline, (long long)(wall0 + (deadline - mono0)), (long long)(i % 100),
                 (long long)(1000 + i % 9000));
        outbox_msg_t m = {.topic = TOPIC,
                          .type = TYPE,
                          .tenant = TENANT,
                          .aggregate_id = agg,
                          .traceparent = traceparent,
                          .request_id = request_id,
                          .payload = payload};
        const char *why = NULL;
        if (db_begin(db) != 0) {
            atomic_fetch_add(&l->errors, 1);
            continue;
        }
        if (outbox_append(db, &m, NULL, &why) != 0) {
            db_rollback(db);
            atomic_fetch_add(&l->errors, 1);
            continue;
        }
        int64_t tc = clock_mono_us();
        if (db_commit(db) != 0) {
            atomic_fetch_add(&l->errors, 1);
            continue;
        }
        l->commit_us[k] = tc;
        l->acked_us[k] = clock_mono_us();
        l->append_us[k] = l->acked_us[k] - t0;
    }
    db_close(db);
    atomic_fetch_sub(&l->running, 1);
    return NULL;
}

static void load_start(load_t *l, int64_t first, int64_t count)
{
    memset(l, 0, sizeof *l);
    l->first = first;
    l->count = count;
    l->np = n_producers;
    l->period = 1000000 / rate;
    l->late_us = xcalloc((size_t)count, sizeof *l->late_us);
    l->append_us = xcalloc((size_t)count, sizeof *l->append_us);
    l->commit_us = xcalloc((size_t)count, sizeof *l->commit_us);
    l->acked_us = xcalloc((size_t)count, sizeof *l->acked_us);
    atomic_init(&l->errors, 0);
    atomic_init(&l->running, l->np);
    l->start = clock_mono_us() + 100000; /* every connection is open by then */
    for (int j = 0; j < l->np; j++) {
        l->p[j] = (producer_t){.l = l, .j = j};
        if (pthread_create(&l->p[j].th, NULL, producer_main, &l->p[j]) != 0)
            die("pthread_create failed");
    }
}

static void load_join(load_t *l)
{
    for (int j = 0; j < l->np; j++)
        pthread_join(l->p[j].th, NULL);
}

static void load_free(load_t *l)
{
    free(l->late_us);
    free(l->append_us);
    free(l->commit_us);
    free(l->acked_us);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static int64_t pct(const int64_t *v, size_t n, double p)
{
    size_t k = (size_t)(p * (double)n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

/* Cumulative counts of the runtime's own end-to-end histogram (append ts ->
 * after commit, ms resolution) at le 1, 2.5, 5, 10, 25 ms and +Inf. */
static const char *const e2e_le[] = {"0.001", "0.0025", "0.005", "0.01", "0.025", "+Inf"};
#define E2E_NLE 6

static void e2e_hist(uint64_t out[E2E_NLE])
{
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    for (int i = 0; i < E2E_NLE; i++) {
        char key[160];
        snprintf(key, sizeof key, "ecom_service_end_to_end_seconds_bucket{group=\"analytics\",le=\"%s\"} ", e2e_le[i]);
        const char *p = strstr(text, key);
        out[i] = p ? strtoull(p + strlen(key), NULL, 10) : 0;
    }
    evbuffer_free(b);
}

typedef struct dist {
    size_t n;
    double p50, p95, p99, max; /* ms */
} dist_t;

/* Percentiles of the values >= 0 among v[0..n). */
static dist_t dist_of(const int64_t *v, size_t n)
{
    int64_t *c = xmalloc((n + 1) * sizeof *c);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] >= 0)
            c[k++] = v[i];
    qsort(c, k, sizeof *c, cmp_i64);
    dist_t d = {.n = k};
    if (k) {
        d.p50 = (double)pct(c, k, 0.50) / 1000.0;
        d.p95 = (double)pct(c, k, 0.95) / 1000.0;
        d.p99 = (double)pct(c, k, 0.99) / 1000.0;
        d.max = (double)c[k - 1] / 1000.0;
    }
    free(c);
    return d;
}

/* What the offered load itself looked like: the producers' commits (nothing
 * downstream can see a message before) and how far they slipped behind schedule. */
static void print_load(const load_t *l)
{
    dist_t a = dist_of(l->append_us, (size_t)l->count), late = dist_of(l->late_us, (size_t)l->count);
    printf("  load: %d connections, one transaction per message; producer BEGIN+append+COMMIT p50 %.2f ms, p99 %.2f ms,"
           " max %.2f ms; start behind schedule p99 %.2f ms, max %.2f ms%s\n",
           l->np, a.p50, a.p99, a.max, late.p99, late.max, atomic_load(&l->errors) ? " (some appends FAILED)" : "");
}

/* Where the time goes between the two commits: the producer's COMMIT
 * (sent -> acknowledged), the way to the handler (acknowledged -> the batch
 * handler called: the drainer's wake-up, fetch and XADD, the service's read),
 * and the handler's transaction (-> its COMMIT acknowledged); p50 / p99 of
 * each, and their means over the messages at or past the total's p99. A
 * handler may begin before a descheduled producer read its acknowledgement:
 * those stages are negative, counted, and left out of the percentiles. */
static void print_stages(const load_t *l, const int64_t *total, int64_t n, double p99_ms)
{
    int64_t *st[3];
    for (int s = 0; s < 3; s++)
        st[s] = xmalloc((size_t)n * sizeof *st[s]);
    double tail[3] = {0};
    int64_t ntail = 0, early = 0;
    for (int64_t k = 0; k < n; k++) {
        bool seen = total[k] >= 0 && lat_start_us[k] >= 0;
        st[0][k] = seen ? l->acked_us[k] - l->commit_us[k] : -1;
        st[1][k] = seen ? lat_start_us[k] - l->acked_us[k] : -1;
        st[2][k] = seen ? lat_done_us[k] - lat_start_us[k] : -1;
        early += seen && st[1][k] < 0;
        if (seen && (double)total[k] >= p99_ms * 1000.0) {
            for (int s = 0; s < 3; s++)
                tail[s] += (double)st[s][k];
            ntail++;
        }
    }
    dist_t d[3];
    for (int s = 0; s < 3; s++)
        d[s] = dist_of(st[s], (size_t)n);
    printf("  stages, p50 / p99 ms (mean over the %lld slowest): COMMIT sent -> acknowledged %.2f / %.2f (%.2f);"
           " -> handler began %.2f / %.2f (%.2f; %lld began first); -> its COMMIT acknowledged %.2f / %.2f (%.2f)\n",
           (long long)ntail, d[0].p50, d[0].p99, ntail ? tail[0] / (double)ntail / 1000.0 : 0, d[1].p50, d[1].p99,
           ntail ? tail[1] / (double)ntail / 1000.0 : 0, (long long)early, d[2].p50, d[2].p99,
           ntail ? tail[2] / (double)ntail / 1000.0 : 0);
    for (int s = 0; s < 3; s++)
        free(st[s]);
}

/* One latency run: prints its figures, returns its p99 in ms (-1 when it
 * could not complete). */
static double latency_round(int round, int nrounds)
{
    double p99 = -1;
    reset_store();
    char *rurl = redis_db(4);
    int64_t measured = (int64_t)latency_s * rate;
    lat_first = WARMUP_MSGS;
    lat_n = measured;
    lat_done_us = xmalloc((size_t)measured * sizeof *lat_done_us);
    lat_start_us = xmalloc((size_t)measured * sizeof *lat_start_us);
    for (int64_t i = 0; i < measured; i++)
        lat_done_us[i] = lat_start_us[i] = -1;
    svc_def_t def = *analytics;
    def.committed = lat_committed;
    def.handle = lat_one;
    def.handle_batch = lat_batch;
    drainer_t d;
    service_t s;
    uint64_t base = metrics_value(m_applied);
    drainer_start(&d, pg_url, NULL, rurl, NULL, DEF_RETAIN_S);
    service_start(&s, &def, pg_url, NULL, rurl, NULL, DEF_SVC_BATCH, DEF_BACKOFF_MS);

    load_t l;
    load_start(&l, 0, WARMUP_MSGS); /* warm-up: connections, stream discovery, group */
    load_join(&l);
    load_free(&l);
    int64_t w = wait_counter(m_applied, base + WARMUP_MSGS, clock_mono_us(), 20000);
    uint64_t h0[E2E_NLE], h1[E2E_NLE];
    e2e_hist(h0);
    cpu_t c0, c1;
    char glabels[96];
    snprintf(glabels, sizeof glabels, "group=\"%s\"", def.group);
    metric_t *gflush = metrics_histogram("ecom_service_ack_flush_seconds", "", glabels); /* the gate's */
    uint64_t f0 = metrics_value(gflush);
    double fs0 = metrics_sum(gflush);
    cpu_snap(&c0, 0, 0);
    load_start(&l, WARMUP_MSGS, measured);
    load_join(&l);
    cpu_snap(&c1, 0, 0);
    uint64_t nflush = metrics_value(gflush) - f0;
    double flush_s = metrics_sum(gflush) - fs0;
    int64_t m = w < 0 ? -1 : wait_counter(m_applied, base + WARMUP_MSGS + (uint64_t)measured, clock_mono_us(), 20000);
    e2e_hist(h1);
    service_stop(&s);
    drainer_stop(&d);

    /* From the producer's commit (the measure). The row becomes
     * visible somewhere between the COMMIT's send and its acknowledgement (the
     * handler has been seen to commit before a descheduled producer read its
     * acknowledgement), so the clock starts at the send: the producer's WAL
     * flush counts against us. And from the message's place in the schedule
     * (adds the producer's whole transaction and any lateness of its start). */
    int64_t *from_commit = xmalloc((size_t)measured * sizeof *from_commit);
    int64_t *from_due = xmalloc((size_t)measured * sizeof *from_due);
    for (int64_t k = 0; k < measured; k++) {
        bool seen = lat_done_us[k] >= 0 && l.commit_us[k] > 0;
        from_commit[k] = seen ? lat_done_us[k] - l.commit_us[k] : -1;
        from_due[k] = seen ? lat_done_us[k] - (l.start + k * l.period) : -1;
    }
    dist_t v = dist_of(from_commit, (size_t)measured), due = dist_of(from_due, (size_t)measured);
    if (w < 0 || m < 0 || v.n != (size_t)measured || atomic_load(&l.errors))
        fail("latency: %zu of %lld messages seen committed by the handler (producer errors %d)", v.n,
             (long long)measured, atomic_load(&l.errors));
    if (v.n) {
        uint64_t tot = h1[E2E_NLE - 1] - h0[E2E_NLE - 1];
        double le10 = tot ? 100.0 * (double)(h1[3] - h0[3]) / (double)tot : 0;
        double le5 = tot ? 100.0 * (double)(h1[2] - h0[2]) / (double)tot : 0;
        printf("latency, round %d of %d (threads, postgres+redis, %d msgs/s for %d s, outbox commit -> analytics"
               " handler commit: the producer's COMMIT sent -> the handler's COMMIT acknowledged): p50 %.2f ms,"
               " p95 %.2f ms, p99 %.2f ms, max %.2f ms (n=%zu)\n",
               round, nrounds, rate, latency_s, v.p50, v.p95, v.p99, v.max, v.n);
        if (v.n == (size_t)measured)
            p99 = v.p99;
        printf("  from each message's due time in the schedule instead (adds the producer's own BEGIN+append+COMMIT"
               " and any late start): p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms; the runtime's own"
               " histogram, append ts -> after commit at 1 ms resolution: %.1f%% <= 5 ms, %.1f%% <= 10 ms\n",
               due.p50, due.p95, due.p99, due.max, le5, le10);
        print_load(&l);
        print_stages(&l, from_commit, measured, v.p99);
        /* the handler's commit is asynchronous: its XACK waits for the gate's flush */
        printf("  durability: the service's commits were made durable, and only then acknowledged, by %llu flushes"
               " of its acknowledgement gate (%.1f a second, %.2f ms each on average)\n",
               (unsigned long long)nflush, (double)nflush / latency_s,
               nflush ? flush_s * 1000.0 / (double)nflush : 0.0);
        cpu_print(&c0, &c1, "drainer+service+producers (one process)", NULL, NULL);
    }
    fflush(stdout);
    free(from_commit);
    free(from_due);
    load_free(&l);
    free(lat_done_us);
    free(lat_start_us);
    lat_done_us = lat_start_us = NULL;
    lat_n = 0;
    free(rurl);
    return p99;
}

/* BENCH_LATENCY_ROUNDS runs of the same load, each printed; the target is
 * judged on the median round's p99, so one run caught in a slow spell of the
 * machine (or a lucky one) does not decide it alone. */
static void bench_latency(void)
{
    double p99[MAX_LATENCY_ROUNDS];
    int n = 0;
    for (int k = 0; k < latency_rounds; k++) {
        double v = latency_round(k + 1, latency_rounds);
        if (v >= 0)
            p99[n++] = v;
    }
    if (n == 0)
        return;
    char list[MAX_LATENCY_ROUNDS * 12] = "";
    for (int k = 0; k < n; k++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%.2f", k ? " / " : "", p99[k]);
    qsort(p99, (size_t)n, sizeof *p99, cmp_double);
    double med = n % 2 ? p99[n / 2] : (p99[n / 2 - 1] + p99[n / 2]) / 2;
    printf("latency, median of %d rounds (threads, outbox commit -> handler commit at %d msgs/s): p99 %.2f ms"
           " (rounds: %s ms), target p99 <= %d ms: %s\n",
           n, rate, med, list, TARGET_P99_MS, verdict(med <= TARGET_P99_MS));
    fflush(stdout);
}

/* ---- 4. memory: the same load on real processes ---- */

static pid_t spawn(const char *const *args, const char *redis_url, const char *log_path)
{
    pid_t pid = fork();
    if (pid < 0)
        die("fork failed");
    if (pid == 0) {
        setenv("DATABASE_URL", pg_url, 1);
        setenv("REDIS_URL", redis_url, 1);
        setenv("ADMIN_PORT", "0", 1);
        setenv("LOG_LEVEL", "warn", 1);
        setenv("ECOM_INSTANCE", "bench", 1);
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(ecom_bin, (char *const *)args);
        _exit(127);
    }
    return pid;
}

/* VmRSS and VmHWM of a process in kB; false when it is gone. */
static bool proc_mem(pid_t pid, long *rss, long *hwm)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    *rss = *hwm = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0)
            *rss = strtol(line + 6, NULL, 10);
        else if (strncmp(line, "VmHWM:", 6) == 0)
            *hwm = strtol(line + 6, NULL, 10);
    }
    fclose(f);
    return *rss >= 0;
}

/* SIGTERM, then waits up to 10 s (SIGKILL after). The exit code, or -1. */
static int stop_child(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        clock_sleep_ms(10);
    }
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    return -1;
}

static bool wait_events(long long want, int64_t timeout_ms)
{
    int64_t end = clock_mono_ms() + timeout_ms;
    while (clock_mono_ms() < end) {
        if (admin_int("SELECT count(*) FROM analytics.events") >= want)
            return true;
        clock_sleep_ms(50);
    }
    return admin_int("SELECT count(*) FROM analytics.events") >= want;
}

static void bench_process(void)
{
    if (access(ecom_bin, X_OK) != 0) {
        fail("process run: %s is not executable (pass --ecom PATH)", ecom_bin);
        return;
    }
    reset_store();
    char *rurl = redis_db(5);
    char dlog[128], slog[128];
    snprintf(dlog, sizeof dlog, "/tmp/ecom-bench-%d-outbox-worker.log", (int)getpid());
    snprintf(slog, sizeof slog, "/tmp/ecom-bench-%d-service.log", (int)getpid());
    const char *dargs[] = {ecom_bin, "outbox-worker", NULL};
    const char *sargs[] = {ecom_bin, "service", "analytics", NULL};
    pid_t dp = spawn(dargs, rurl, dlog);
    pid_t sp = spawn(sargs, rurl, slog);
    spawned[0] = dp;
    spawned[1] = sp;

    load_t l;
    load_start(&l, 0, WARMUP_MSGS);
    load_join(&l);
    load_free(&l);
    bool warm = wait_events(WARMUP_MSGS, 20000);
    long d_rss0 = 0, d_hwm = 0, s_rss0 = 0, s_hwm = 0;
    bool alive = proc_mem(dp, &d_rss0, &d_hwm) && proc_mem(sp, &s_rss0, &s_hwm);
    int64_t measured = (int64_t)latency_s * rate;
    long d_peak = d_rss0, s_peak = s_rss0;
    memset(&l, 0, sizeof l);
    cpu_t c0, c1;
    memset(&c1, 0, sizeof c1);
    cpu_snap(&c0, dp, sp);
    if (warm && alive) {
        load_start(&l, WARMUP_MSGS, measured);
        while (atomic_load(&l.running) > 0) {
            long r, h;
            if (proc_mem(dp, &r, &h) && r > d_peak)
                d_peak = r;
            if (proc_mem(sp, &r, &h) && r > s_peak)
                s_peak = r;
            clock_sleep_ms(100);
        }
        load_join(&l);
        cpu_snap(&c1, dp, sp);
    }
    bool done = warm && alive && wait_events(WARMUP_MSGS + measured, 20000);
    long d_rss = -1, s_rss = -1;
    alive = proc_mem(dp, &d_rss, &d_hwm) && proc_mem(sp, &s_rss, &s_hwm);
    int drc = stop_child(dp), src = stop_child(sp);
    spawned[0] = spawned[1] = 0;
    if (!warm || !done || !alive) {
        fail("process run: %s (logs: %s, %s)",
             !warm    ? "warm-up messages never arrived"
             : !alive ? "a child died"
                      : "timed out",
             dlog, slog);
        load_free(&l);
        free(rurl);
        return;
    }
    char q[640];
    snprintf(q, sizeof q,
             "SELECT count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY l), percentile_disc(0.95) WITHIN GROUP"
             " (ORDER BY l), percentile_disc(0.99) WITHIN GROUP (ORDER BY l), max(l) FROM (SELECT"
             " extract(epoch FROM recorded_at) * 1e6 - (payload->>'w_us')::float8 AS l FROM analytics.events"
             " WHERE (payload->>'i')::int >= %d) t",
             WARMUP_MSGS);
    PGresult *r = pg_query(admin, q, 0, NULL);
    if (!r)
        die("latency query failed");
    long long cnt = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    double l50 = atof(PQgetvalue(r, 0, 1)) / 1000.0, l95 = atof(PQgetvalue(r, 0, 2)) / 1000.0,
           l99 = atof(PQgetvalue(r, 0, 3)) / 1000.0, lmax = atof(PQgetvalue(r, 0, 4)) / 1000.0;
    PQclear(r);
    printf("latency (processes `ecom outbox-worker` + `ecom service analytics`, %d msgs/s for %d s, append ->"
           " service transaction start): p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, max %.2f ms, target p99 <= %d ms:"
           " %s (n=%lld)\n",
           rate, latency_s, l50, l95, l99, lmax, TARGET_P99_MS, verdict(l99 <= TARGET_P99_MS), cnt);
    print_load(&l);
    cpu_print(&c0, &c1, "producers", "outbox-worker", "service");
    bool met = d_hwm < TARGET_RSS_MB * 1024 && s_hwm < TARGET_RSS_MB * 1024;
    printf("memory at %d msgs/s: outbox-worker RSS %.1f MB (after warm-up %.1f, peak sampled %.1f, VmHWM %.1f),"
           " service analytics RSS %.1f MB (after warm-up %.1f, peak sampled %.1f, VmHWM %.1f), target < %d MB"
           " each: %s\n",
           rate, d_rss / 1024.0, d_rss0 / 1024.0, d_peak / 1024.0, d_hwm / 1024.0, s_rss / 1024.0, s_rss0 / 1024.0,
           s_peak / 1024.0, s_hwm / 1024.0, TARGET_RSS_MB, verdict(met));
    if (cnt != measured)
        fail("process run: %lld of %lld measured messages recorded", cnt, (long long)measured);
    if (drc != 0 || src != 0)
        fail("process run: SIGTERM exit codes %d (outbox-worker) and %d (service); logs %s %s", drc, src, dlog, slog);
    else {
        unlink(dlog);
        unlink(slog);
    }
    fflush(stdout);
    load_free(&l);
    free(rurl);
}

/* ---- 5. the in-memory store and bus ---- */

static void bench_memory(void)
{
    memstore_t *mem = memstore_new();
    membus_t *mb = membus_new();
    db_t *db = db_open_memory(mem);
    append_rows(db, n_msgs, APPEND_TXN);
    drainer_t d;
    uint64_t base = metrics_value(m_published);
    int64_t t0 = clock_mono_us();
    drainer_start(&d, NULL, mem, NULL, mb, 0);
    int64_t us = wait_counter(m_published, base + n_msgs, t0, 60000);
    drainer_stop(&d);
    uint64_t pending = 1, dead = 0;
    int64_t oldest = 0;
    if (outbox_stats(db, &pending, &oldest, &dead) != 0)
        die("outbox_stats failed");
    bus_t *b = bus_open_memory(mb);
    uint64_t len = stream_len(b, STREAM);
    bus_close(b);
    if (us < 0 || pending != 0 || len != n_msgs)
        fail("memory drain: %s, %llu pending, %llu in the stream", us < 0 ? "timed out" : "done",
             (unsigned long long)pending, (unsigned long long)len);
    else
        printf("drain (in-memory store and bus): %zu rows in %.2f s = %.0f msgs/s (batch %zu)\n", n_msgs, secs(us),
               per_s(n_msgs, us), outbox_batch);
    fflush(stdout);
    db_close(db);
    memstore_free(mem);
    membus_free(mb);

    envelope_t *envs = make_envelopes(n_msgs);
    for (size_t bi = 0; bi < n_svc_batches; bi++) {
        size_t batch = svc_batches[bi];
        mem = memstore_new();
        mb = membus_new();
        b = bus_open_memory(mb);
        if (publish_all(b, envs, n_msgs) < 0)
            die("publish failed");
        bus_close(b);
        service_t s;
        base = metrics_value(m_applied);
        t0 = clock_mono_us();
        service_start(&s, analytics, NULL, mem, NULL, mb, batch, DEF_BACKOFF_MS);
        us = wait_counter(m_applied, base + n_msgs, t0, 60000);
        service_stop(&s);
        db = db_open_memory(mem);
        uint64_t inbox = 0, events = 0;
        if (inbox_count(db, "analytics", &inbox) != 0 || analytics_count(db, &events) != 0)
            die("count failed");
        db_close(db);
        if (us < 0 || inbox != (analytics->seen ? 0 : n_msgs) || events != n_msgs)
            fail("memory consume batch %zu: %s, inbox %llu, events %llu", batch, us < 0 ? "timed out" : "done",
                 (unsigned long long)inbox, (unsigned long long)events);
        else
            printf("consume (in-memory store and bus, batch %zu): %zu msgs in %.2f s = %.0f msgs/s\n", batch, n_msgs,
                   secs(us), per_s(n_msgs, us));
        fflush(stdout);
        memstore_free(mem);
        membus_free(mb);
    }
    free_envelopes(envs, n_msgs);
}

/* ---- 6. breakdown (on request): the drainer's and the service's steps by hand ---- */

typedef struct step {
    const char *name;
    int64_t us;
} step_t;

static void print_steps(const char *what, const step_t *st, size_t ns, size_t n, size_t batches)
{
    int64_t tot = 0;
    for (size_t i = 0; i < ns; i++)
        tot += st[i].us;
    printf("breakdown %s: %zu msgs in %zu batches, %.2f s = %.0f msgs/s done step by step on one thread:\n", what, n,
           batches, secs(tot), per_s(n, tot));
    for (size_t i = 0; i < ns; i++)
        printf("    %-44s %7.2f ms/batch %6.2f us/msg %5.1f%%\n", st[i].name,
               batches ? (double)st[i].us / 1000.0 / (double)batches : 0, n ? (double)st[i].us / (double)n : 0,
               tot ? 100.0 * (double)st[i].us / (double)tot : 0);
}

#define LAP(i)                                                                                                         \
    do {                                                                                                               \
        int64_t now_ = clock_mono_us();                                                                                \
        st[i].us += now_ - t;                                                                                          \
        t = now_;                                                                                                      \
    } while (0)

static void breakdown_redis(void)
{
    envelope_t *envs = make_envelopes(n_msgs);
    char *url = redis_db(7);
    double r11 = raw_xadd(url, envs, n_msgs, outbox_batch, false);
    double ra11 = raw_read_ack(url, n_msgs, DEF_SVC_BATCH);
    free(redis_db(7));
    double r1 = raw_xadd(url, envs, n_msgs, outbox_batch, true);
    double ra1 = raw_read_ack(url, n_msgs, DEF_SVC_BATCH);
    free(redis_db(7));
    free(url);
    free_envelopes(envs, n_msgs);
    printf("breakdown redis: pipelined XADD of %zu entries with the envelope's 11 fields %.0f/s, with the same bytes"
           " in 1 field %.0f/s; XREADGROUP COUNT %d + XACK of them %.0f/s and %.0f/s\n",
           n_msgs, r11, r1, DEF_SVC_BATCH, ra11, ra1);
}

static void breakdown_drain(void)
{
    reset_store();
    char *rurl = redis_db(6);
    db_t *db = open_pg("bench-breakdown");
    append_rows(db, n_msgs, APPEND_TXN);
    admin_exec("ANALYZE bus.outbox");
    admin_exec("CHECKPOINT");
    bus_t *b = open_bus(rurl);
    int parts[OUTBOX_PARTITIONS];
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        parts[p] = p;
    step_t st[] = {{"outbox_fetch (SELECT + copy rows)", 0},
                   {"bus_publish (XADD x n, pipelined)", 0},
                   {"outbox_mark_published (DELETE, autocommit)", 0},
                   {"outbox_rows_free", 0}};
    envelope_t *envs = xmalloc(outbox_batch * sizeof *envs);
    size_t done = 0, batches = 0;
    for (;;) {
        outbox_row_t *rows = NULL;
        size_t k = 0;
        int64_t t = clock_mono_us();
        if (outbox_fetch(db, parts, OUTBOX_PARTITIONS, outbox_batch, &rows, &k) != 0)
            die("outbox_fetch failed");
        LAP(0);
        if (k == 0) {
            outbox_rows_free(rows, 0);
            break;
        }
        for (size_t i = 0; i < k; i++)
            envs[i] = rows[i].env;
        if (bus_publish(b, envs, k, NULL) != 0)
            die("bus_publish failed");
        LAP(1);
        if (outbox_mark_published(db, rows, k, false) != 0)
            die("outbox_mark_published failed");
        LAP(2);
        outbox_rows_free(rows, k);
        LAP(3);
        done += k;
        batches++;
    }
    free(envs);
    bus_close(b);
    db_close(db);
    print_steps("drain (postgres+redis)", st, ECOM_ARRAY_LEN(st), done, batches);
    free(redis_db(6));
    free(rurl);
}

/* The drainer's loop as drain_run does it on full batches: the removal of the
 * previous batch and the fetch of the next go out in one pipelined round trip
 * before the publish, and are collected after it. */
static void breakdown_drain_overlapped(void)
{
    reset_store();
    char *rurl = redis_db(6);
    db_t *db = open_pg("bench-breakdown");
    append_rows(db, n_msgs, APPEND_TXN);
    admin_exec("ANALYZE bus.outbox");
    admin_exec("CHECKPOINT");
    bus_t *b = open_bus(rurl);
    int parts[OUTBOX_PARTITIONS];
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        parts[p] = p;
    step_t st[] = {{"outbox_step_send (queue DELETE prev + SELECT next)", 0},
                   {"bus_publish (XADD x n, pipelined)", 0},
                   {"outbox_step_wait (what the publish did not hide)", 0},
                   {"outbox_step_free", 0}};
    envelope_t *envs = xmalloc(outbox_batch * sizeof *envs);
    int64_t *pos = xmalloc(2 * outbox_batch * sizeof *pos);
    size_t done = 0, batches = 0, ndone = 0;
    outbox_step_t cur, next;
    if (outbox_step_send(db, &cur, NULL, 0, false, parts, OUTBOX_PARTITIONS, NULL, 0, outbox_batch) != 0 ||
        outbox_step_wait(db, &cur) != 0)
        die("outbox step failed");
    while (cur.n > 0) {
        int64_t t = clock_mono_us();
        size_t k = cur.n;
        for (size_t i = 0; i < k; i++)
            pos[ndone + i] = cur.rows[i].pos;
        if (outbox_step_send(db, &next, pos, ndone, false, parts, OUTBOX_PARTITIONS, pos + ndone, k, outbox_batch) != 0)
            die("outbox_step_send failed");
        LAP(0);
        for (size_t i = 0; i < k; i++)
            envs[i] = cur.rows[i].env;
        if (bus_publish(b, envs, k, NULL) != 0)
            die("bus_publish failed");
        LAP(1);
        if (outbox_step_wait(db, &next) != 0 || !next.removed)
            die("outbox_step_wait failed");
        LAP(2);
        memmove(pos, pos + ndone, k * sizeof *pos);
        ndone = k;
        outbox_step_free(&cur);
        cur = next;
        LAP(3);
        done += k;
        batches++;
    }
    outbox_step_free(&cur);
    if (outbox_remove(db, pos, ndone, false) != 0)
        die("outbox_remove failed");
    free(pos);
    free(envs);
    bus_close(b);
    db_close(db);
    print_steps("drain overlapped (postgres+redis)", st, ECOM_ARRAY_LEN(st), done, batches);
    free(redis_db(6));
    free(rurl);
}

/* The runtime's fast path by hand: read, parse, inbox (for a service
 * without its own record; analytics has one), handler, commit, ack.
 * variant: 0 = as the runtime does it, 1 = synchronous_commit off (no WAL
 * flush wait), 2 = inbox only (what it would cost), 3 = analytics only. */
static void breakdown_consume(size_t batch, int variant)
{
    static const char *const names[] = {"as the runtime", "SET LOCAL synchronous_commit = off", "inbox insert only",
                                        "analytics insert only"};
    envelope_t *envs = make_envelopes(n_msgs);
    reset_store();
    char *rurl = redis_db(6);
    bus_t *b = open_bus(rurl);
    if (publish_all(b, envs, n_msgs) < 0)
        die("publish failed");
    free_envelopes(envs, n_msgs);
    if (bus_group_create(b, STREAM, "analytics") != 0)
        die("group create failed");
    admin_exec("CHECKPOINT");
    db_t *db = open_pg("bench-breakdown");
    step_t st[] = {{"bus_read (XREADGROUP, decode)", 0},
                   {"each payload checked (json_validate, as the runtime does for analytics)", 0},
                   {"BEGIN", 0},
                   {"inbox_record_fresh", 0},
                   {"analytics handle_batch", 0},
                   {"COMMIT", 0},
                   {"bus_ack (XACK)", 0},
                   {"free", 0}};
    bus_batch_t bt = {0};
    const char *stream = STREAM;
    const char **ids = xmalloc(batch * sizeof *ids);
    const envelope_t **ep = xmalloc(batch * sizeof *ep);
    json_object **pl = xmalloc(batch * sizeof *pl);
    size_t done = 0, batches = 0;
    while (done < n_msgs) {
        int64_t t = clock_mono_us();
        bus_batch_clear(&bt);
        if (bus_read(b, "analytics", "bench-breakdown", &stream, 1, false, batch, 0, &bt) != 0)
            die("bus_read failed");
        LAP(0);
        if (bt.n == 0)
            break;
        for (size_t i = 0; i < bt.n; i++) {
            const char *why = NULL;
            const char *text = bt.msgs[i].env.payload;
            pl[i] = NULL; /* as the runtime: analytics's payloads are checked, not built */
            if (analytics->payload_unread ? json_validate(text, strlen(text), &why) != 0
                                          : json_parse_strict(text, strlen(text), &pl[i], &why) != 0)
                die("payload: %s", why);
            ids[i] = bt.msgs[i].env.id;
            ep[i] = &bt.msgs[i].env;
        }
        LAP(1);
        if (db_begin(db) != 0)
            die("BEGIN failed");
        if (variant == 1 && pg_exec(db_pg(db), "SET LOCAL synchronous_commit = off") != 0)
            die("SET failed");
        LAP(2);
        /* the runtime's first try: a plain insert of every id (a duplicate
         * would abort it; none here) */
        bool inbox = variant == 2 || (variant != 3 && !analytics->seen);
        if (inbox && inbox_record_fresh(db, "analytics", ids, bt.n) != 0)
            die("inbox failed");
        LAP(3);
        if (variant != 2 && analytics->handle_batch(db, ep, pl, bt.n, analytics->arg) != SVC_OK)
            die("analytics failed");
        LAP(4);
        if (db_commit(db) != 0)
            die("COMMIT failed");
        LAP(5);
        char(*eids)[BUS_ID_MAX] = xmalloc(bt.n * sizeof *eids);
        const char **ap = xmalloc(bt.n * sizeof *ap);
        for (size_t i = 0; i < bt.n; i++) {
            memcpy(eids[i], bt.msgs[i].entry_id, BUS_ID_MAX);
            ap[i] = eids[i];
        }
        if (bus_ack(b, STREAM, "analytics", ap, bt.n) != 0)
            die("ack failed");
        LAP(6);
        for (size_t i = 0; i < bt.n; i++)
            json_object_put(pl[i]);
        free(eids);
        free(ap);
        done += bt.n;
        batches++;
        LAP(7);
    }
    bus_batch_free(&bt);
    free(ids);
    free(ep);
    free(pl);
    db_close(db);
    bus_close(b);
    char what[128];
    snprintf(what, sizeof what, "consume (postgres+redis, batch %zu, %s)", batch, names[variant]);
    print_steps(what, st, ECOM_ARRAY_LEN(st), done, batches);
    free(redis_db(6));
    free(rurl);
}

static void bench_breakdown(void)
{
    breakdown_redis();
    breakdown_drain();
    breakdown_drain_overlapped();
    for (int v = 0; v < 4; v++)
        breakdown_consume(DEF_SVC_BATCH, v);
    fflush(stdout);
}

/* ---- main ---- */

static void header(void)
{
    PGresult *r = pg_query(admin, "SHOW server_version", 0, NULL);
    char pgv[64] = "?";
    if (r) {
        snprintf(pgv, sizeof pgv, "%.*s", (int)strcspn(PQgetvalue(r, 0, 0), " "), PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    char rv[32] = "?";
    redisContext *rc = redis_open(redis_base);
    redisReply *rr = redisCommand(rc, "INFO server");
    const char *p = rr && rr->type == REDIS_REPLY_STRING ? strstr(rr->str, "redis_version:") : NULL;
    if (p)
        snprintf(rv, sizeof rv, "%.*s", (int)strcspn(p + 14, "\r\n"), p + 14);
    const char *pid = rr && rr->type == REDIS_REPLY_STRING ? strstr(rr->str, "process_id:") : NULL;
    if (pid)
        redis_pid = (pid_t)atoi(pid + 11);
    freeReplyObject(rr);
    redisFree(rc);
    char load[64] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(load, sizeof load, f))
            snprintf(load, sizeof load, "?");
        fclose(f);
        load[strcspn(load, " ")] = '\0';
    }
    printf("backbone benchmarks: %ld cores (load average %s at start), PostgreSQL %s, Redis %s; %zu messages per"
           " throughput run (figures printed, never asserted)\n",
           sysconf(_SC_NPROCESSORS_ONLN), load, pgv, rv, n_msgs);
    fflush(stdout);
}

static size_t env_size(const char *name, size_t dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (*end || n == 0)
        die("%s must be a positive integer", name);
    return (size_t)n;
}

int main(int argc, char **argv)
{
    const char *only[8];
    int nonly = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--ecom") == 0 && i + 1 < argc)
            ecom_bin = argv[++i];
        else if (argv[i][0] != '-' && nonly < 8)
            only[nonly++] = argv[i];
        else
            die("usage: bench_backbone [--ecom PATH] [drain] [fetch] [consume] [poison] [latency] [process]"
                " [memory] [breakdown]");
    }
    alloc_tune(); /* as the ecom program does */
    const char *lvl = getenv("LOG_LEVEL");
    log_configure(lvl && *lvl ? lvl : "off", "text");
    signal(SIGPIPE, SIG_IGN);
    pg_url = getenv("DATABASE_URL");
    const char *ru = getenv("REDIS_URL");
    if (!pg_url || !*pg_url || !ru || !*ru)
        die("DATABASE_URL and REDIS_URL must be set (run through scripts/run-bench inside scripts/test-env)");
    /* each run selects a database number of its own (redis_url_with_db) */
    snprintf(redis_base, sizeof redis_base, "%s", ru);
    n_msgs = env_size("BENCH_N", 100000);
    svc_lanes = env_size("SERVICE_LANES", DEF_LANES);
    outbox_batch = env_size("OUTBOX_BATCH", 1000);
    latency_s = (int)env_size("BENCH_LATENCY_S", 10);
    latency_rounds = (int)env_size("BENCH_LATENCY_ROUNDS", 3);
    if (latency_rounds < 1 || latency_rounds > MAX_LATENCY_ROUNDS)
        die("BENCH_LATENCY_ROUNDS must be 1..%d", MAX_LATENCY_ROUNDS);
    rate = (int)env_size("BENCH_RATE", 1000);
    n_producers = (int)env_size("BENCH_PRODUCERS", 4);
    if (n_producers > MAX_PRODUCERS)
        die("BENCH_PRODUCERS: at most %d", MAX_PRODUCERS);
    if (rate > 1000000)
        die("BENCH_RATE: at most 1000000");
    const char *sb = getenv("BENCH_SERVICE_BATCHES");
    if (sb && *sb) {
        n_svc_batches = 0;
        for (const char *q = sb; *q && n_svc_batches < 8;) {
            char *end;
            unsigned long long v = strtoull(q, &end, 10);
            if (end == q || v == 0)
                die("BENCH_SERVICE_BATCHES: a comma-separated list of positive integers");
            svc_batches[n_svc_batches++] = (size_t)v;
            q = *end == ',' ? end + 1 : end;
            if (*end && *end != ',')
                die("BENCH_SERVICE_BATCHES: a comma-separated list of positive integers");
        }
    }
    mono0 = clock_mono_us();
    wall0 = wall_us();

    char *err = NULL;
    admin = pg_connect(pg_url, "bench-admin", &err);
    if (!admin)
        die("postgres: %s", err);
    if (pg_exec(admin, "SET client_min_messages = warning") != 0)
        die("postgres: SET failed");
    analytics = analytics_service();
    m_published = metrics_counter("ecom_outbox_published_total", "Outbox rows published to the bus", "");
    m_applied = metrics_counter("ecom_service_applied_total", "Messages applied by the handler", "group=\"analytics\"");
    m_dlq = metrics_counter("ecom_service_dead_letters_total", "Messages moved to the DLQ", "group=\"analytics\"");
    m_dup = metrics_counter("ecom_service_duplicates_total", "Deliveries skipped by the inbox", "group=\"analytics\"");

    PGresult *pr = pg_query(admin, "SELECT pg_backend_pid()", 0, NULL);
    if (pr) {
        pid_t pp = 0;
        if (proc_cpu((pid_t)atoi(PQgetvalue(pr, 0, 0)), false, &pp) >= 0)
            pg_postmaster = pp;
        PQclear(pr);
    }
    static const struct {
        const char *name;
        void (*fn)(void);
    } phases[] = {{"drain", bench_drain},        {"fetch", bench_fetch},     {"consume", NULL},
                  {"poison", NULL},
                  {"latency", bench_latency},    {"process", bench_process}, {"memory", bench_memory},
                  {"breakdown", bench_breakdown}};
    for (int k = 0; k < nonly; k++) {
        bool known = false;
        for (size_t i = 0; i < ECOM_ARRAY_LEN(phases); i++)
            known |= strcmp(only[k], phases[i].name) == 0;
        if (!known)
            die("unknown phase '%s' (drain, fetch, consume, poison, latency, process, memory, breakdown)",
                only[k]);
    }
    header();
    int64_t t0 = clock_mono_us();
    for (size_t i = 0; i < ECOM_ARRAY_LEN(phases); i++) {
        bool run = nonly == 0 && strcmp(phases[i].name, "breakdown") != 0; /* on request only */
        for (int k = 0; k < nonly; k++)
            run |= strcmp(only[k], phases[i].name) == 0;
        if (!run)
            continue;
        if (strcmp(phases[i].name, "consume") == 0)
            bench_consume(false);
        else if (strcmp(phases[i].name, "poison") == 0)
            bench_consume(true);
        else
            phases[i].fn();
    }
    printf("(bench took %.0f s%s)\n", secs(clock_mono_us() - t0), failures ? "; some runs FAILED" : "");
    PQfinish(admin);
    return failures ? 1 : 0;
}
