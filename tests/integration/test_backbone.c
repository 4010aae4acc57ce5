/* tests/integration/test_backbone.c: the outbox -> drainer -> bus -> runtime ->
 * inbox path end to end, on real PostgreSQL and Redis and on the in-memory
 * store and bus: exactly-once per group, order per aggregate, retries, dead
 * letters, bad input that never stalls a group, and two drainers at once. */
#include "bus/bus.h"
#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/janitor.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/redis.h"
#include "core/strmap.h"
#include "core/uuid.h"
#include "inbox/inbox.h"
#include "outbox-worker/drain.h"
#include "services/reader.h"
#include "services/runtime.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- what a test handler records, transactionally, on either store ---- */

typedef struct applied {
    char grp[16];
    char id[UUID_STR_LEN];
    char agg[32];
    int64_t seq;
} applied_t;

typedef struct record {
    pthread_mutex_t mu; /* memory mode: guarded by the store lock too; kept for clarity */
    applied_t *rows;
    size_t n, cap;
} record_t;

static record_t mem_rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void undo_rec(void *arg)
{
    record_t *r = arg;
    r->n--;
}

typedef struct handler_cfg {
    const char *group;
    const char *fail_aggregate; /* messages of this aggregate with seq == fail_seq fail */
    int64_t fail_seq;
    int fail_times; /* -1 = always */
    int failed;     /* how many times it failed so far */
    int batch_failed; /* record_batch calls that failed */
    int batch_calls;  /* record_batch calls */
    bool hold;        /* postgres: writes held back (db_defer), the injected failure too */
    bool drop_conn;   /* postgres: the injected failure ends the transaction's connection */
    int dropped_lane; /* on which lane it did (0: the service's own connection) */
    bool name;        /* record_batch names the message it failed on (svc_batch_failed_at) */
    bool own;         /* ... as its own failure (svc_batch_failed_with): not run again alone */
    /* while defer is set, messages of this aggregate (NULL: all) are put off (SVC_DEFER) */
    const char *defer_aggregate;
    atomic_bool defer;
    atomic_int deferred; /* how many times */
    /* what the runtime's committed hook was told (record_committed, on the service's thread) */
    strmap_t committed;    /* ids told (a redelivered duplicate may be told again) */
    int committed_failing; /* the message that always fails, told anyway */
    int committed_unseen;  /* told before its record was visible from another connection */
    const char *pg_url;    /* postgres: where to look for the records */
    PGconn *look;          /* that other connection */
} handler_cfg_t;

enum { BIT_HELD_FAIL = DB_STMT_MAX - 3, BIT_HELD_RECORD = DB_STMT_MAX - 4 }; /* no module's */

static svc_result_t record_handler(svc_ctx_t *c, void *arg)
{
    handler_cfg_t *h = arg;
    const envelope_t *e = c->msg;
    if (atomic_load(&h->defer) && (!h->defer_aggregate || strcmp(e->aggregate_id, h->defer_aggregate) == 0)) {
        atomic_fetch_add(&h->deferred, 1);
        snprintf(c->error, sizeof c->error, "put off");
        return SVC_DEFER;
    }
    if (h->fail_aggregate && strcmp(e->aggregate_id, h->fail_aggregate) == 0 && e->seq == h->fail_seq &&
        (h->fail_times < 0 || h->failed < h->fail_times)) {
        __atomic_add_fetch(&h->failed, 1, __ATOMIC_SEQ_CST);
        if (h->drop_conn && c->tx->kind == DB_PG) { /* a storage failure: the backend goes away */
            h->dropped_lane = c->tx->lane;
            PQclear(pg_query(db_pg(c->tx), "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL));
            snprintf(c->error, sizeof c->error, "connection dropped");
            return SVC_RETRY;
        }
        if (h->hold && c->tx->kind == DB_PG) /* fails where the held writes go: the commit or the release */
            return db_defer(c->tx, BIT_HELD_FAIL, "SELECT 1 / 0", 0, NULL, NULL, NULL, NULL) == 0 ? SVC_OK
                                                                                                  : SVC_RETRY;
        snprintf(c->error, sizeof c->error, "injected failure");
        return SVC_RETRY;
    }
    if (c->tx->kind == DB_MEMORY) {
        record_t *r = &mem_rec;
        pthread_mutex_lock(&r->mu);
        if (r->n == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 1024;
            r->rows = xrealloc(r->rows, r->cap * sizeof *r->rows);
        }
        applied_t *a = &r->rows[r->n++];
        snprintf(a->grp, sizeof a->grp, "%s", c->group);
        memcpy(a->id, e->id, UUID_STR_LEN);
        snprintf(a->agg, sizeof a->agg, "%s", e->aggregate_id);
        a->seq = e->seq;
        pthread_mutex_unlock(&r->mu);
        db_mem_undo(c->tx, undo_rec, r, NULL);
        return SVC_OK;
    }
    char seq[24];
    snprintf(seq, sizeof seq, "%lld", (long long)e->seq);
    const char *p[] = {c->group, e->id, e->aggregate_id, seq};
    static const char ins[] = "INSERT INTO test_applied (grp, id, agg, seq) VALUES ($1, $2, $3, $4)";
    if (h->hold)
        return db_defer(c->tx, BIT_HELD_RECORD, ins, 4, p, NULL, NULL, NULL) == 0 ? SVC_OK : SVC_RETRY;
    PGresult *r = pg_query(db_pg(c->tx), ins, 4, p);
    if (!r) {
        snprintf(c->error, sizeof c->error, "insert failed");
        return SVC_RETRY;
    }
    PQclear(r);
    return SVC_OK;
}

/* record_handler's batch form: the messages in order; one failure fails the batch. */
static svc_result_t record_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg)
{
    __atomic_add_fetch(&((handler_cfg_t *)arg)->batch_calls, 1, __ATOMIC_SEQ_CST);
    for (size_t i = 0; i < n; i++) {
        svc_ctx_t c = {.tx = tx, .msg = msgs[i], .payload = payloads[i], .group = ((handler_cfg_t *)arg)->group};
        svc_result_t r = record_handler(&c, arg);
        if (r != SVC_OK) {
            __atomic_add_fetch(&((handler_cfg_t *)arg)->batch_failed, 1, __ATOMIC_SEQ_CST);
            if (((handler_cfg_t *)arg)->own)
                svc_batch_failed_with(i, r, c.error);
            else if (((handler_cfg_t *)arg)->name)
                svc_batch_failed_at(i);
            return r;
        }
    }
    return SVC_OK;
}

/* The runtime's committed hook: every applied message, never the one that
 * keeps failing, and (PostgreSQL) only once its record can be read from
 * another connection, i.e. after the commit. */
static void record_committed(const envelope_t *const *msgs, size_t n, void *arg)
{
    handler_cfg_t *h = arg;
    for (size_t i = 0; i < n; i++) {
        strmap_put(&h->committed, msgs[i]->id, strlen(msgs[i]->id), NULL);
        if (h->fail_aggregate && h->fail_times < 0 && strcmp(msgs[i]->aggregate_id, h->fail_aggregate) == 0 &&
            msgs[i]->seq == h->fail_seq)
            h->committed_failing++;
    }
    if (!h->pg_url)
        return;
    char *err = NULL;
    if (!h->look && !(h->look = pg_connect(h->pg_url, "test-look", &err))) {
        free(err);
        h->committed_unseen += (int)n;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *p[] = {h->group, msgs[i]->id};
        PGresult *r = pg_query(h->look, "SELECT count(*) FROM test_applied WHERE grp = $1 AND id = $2", 2, p);
        if (!r || strcmp(PQgetvalue(r, 0, 0), "1") != 0)
            h->committed_unseen++;
        PQclear(r);
    }
}

static void committed_check(handler_cfg_t *h, size_t want)
{
    CU_ASSERT_EQUAL(h->committed.live, want);
    CU_ASSERT_EQUAL(h->committed_failing, 0);
    CU_ASSERT_EQUAL(h->committed_unseen, 0);
}

static void committed_free(handler_cfg_t *h)
{
    strmap_free(&h->committed);
    if (h->look)
        PQfinish(h->look);
    h->look = NULL;
}

/* ---- the system under test, on threads ---- */

typedef struct sut {
    bool memory;
    const char *pg_url;
    const char *redis_url;
    memstore_t *mem;
    membus_t *membus;
    atomic_bool stop;
    pthread_t drain_th[2];
    int ndrain;
    pthread_t svc_th[4];
    int nsvc;
    svc_def_t defs[4];
    handler_cfg_t hcfg[4];
    svc_opts_t sopts[4];
    char consumer[4][32];
    drain_opts_t dopts;
    bool batch_handler; /* services get record_batch too */
    bool watch_commits; /* services get record_committed */
    bool halted;        /* its threads have ended (sut_halt) */
} sut_t;

static void *drain_thread(void *arg)
{
    sut_t *s = arg;
    log_set_role("drain");
    drain_run(&s->dopts, &s->stop);
    return NULL;
}

typedef struct svc_arg {
    sut_t *s;
    int i;
} svc_arg_t;

static void *svc_thread(void *arg)
{
    svc_arg_t *a = arg;
    log_set_role(a->s->defs[a->i].group);
    svc_run(&a->s->defs[a->i], &a->s->sopts[a->i], &a->s->stop);
    free(a);
    return NULL;
}

static const char *const topics_orders[] = {"orders", NULL};
static const char *const types_orders[] = {"order.placed", "order.paid", NULL};

static void sut_init(sut_t *s, bool memory, const char *dbname)
{
    memset(s, 0, sizeof *s);
    s->memory = memory;
    if (memory) {
        s->mem = memstore_new();
        s->membus = membus_new();
    } else {
        s->pg_url = test_pg_db(dbname, true);
        s->redis_url = test_redis_db();
        char *err = NULL;
        PGconn *c = pg_connect(s->pg_url, "test", &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        ASSERT_OK(pg_exec(c, "CREATE TABLE test_applied (ord bigserial PRIMARY KEY, grp text, id uuid,"
                             " agg text, seq bigint, pid int NOT NULL DEFAULT pg_backend_pid())"));
        PQfinish(c);
    }
    mem_rec.n = 0;
    s->dopts = (drain_opts_t){.database_url = s->pg_url,
                              .mem = s->mem,
                              .redis_url = s->redis_url,
                              .membus = s->membus,
                              .batch = 500,
                              .poll_ms = 20,
                              .retain_s = 0,
                              .trim_interval_ms = 500};
}

static void sut_add_service(sut_t *s, const char *group, const char *const *types)
{
    int i = s->nsvc++;
    s->hcfg[i] = (handler_cfg_t){.group = group, .pg_url = s->pg_url};
    strmap_init(&s->hcfg[i].committed);
    /* concurrent, on two lanes: with PostgreSQL every flow here also checks
     * that a batch split by aggregate keeps each aggregate's order */
    s->defs[i] = (svc_def_t){.group = group,
                             .topics = topics_orders,
                             .types = types,
                             .handle = record_handler,
                             .arg = &s->hcfg[i],
                             .concurrent = true,
                             .handle_batch = s->batch_handler ? record_batch : NULL,
                             .committed = s->watch_commits ? record_committed : NULL};
    snprintf(s->consumer[i], sizeof s->consumer[i], "test-%s", group);
    s->sopts[i] = (svc_opts_t){.database_url = s->pg_url,
                               .mem = s->mem,
                               .redis_url = s->redis_url,
                               .membus = s->membus,
                               .consumer = s->consumer[i],
                               .batch = 128,
                               .block_ms = 100,
                               .lanes = 2,
                               .max_attempts = 5,
                               .reclaim_idle_ms = 2000,
                               .backoff_ms = 20,
                               .inbox_retain_s = 3600};
}

static void sut_start(sut_t *s, int drainers)
{
    s->ndrain = drainers;
    for (int i = 0; i < drainers; i++)
        pthread_create(&s->drain_th[i], NULL, drain_thread, s);
    for (int i = 0; i < s->nsvc; i++) {
        svc_arg_t *a = xmalloc(sizeof *a);
        *a = (svc_arg_t){s, i};
        pthread_create(&s->svc_th[i], NULL, svc_thread, a);
    }
}

/* Stops its threads and waits for them; its stores stay. */
static void sut_halt(sut_t *s)
{
    if (s->halted)
        return;
    atomic_store(&s->stop, true);
    for (int i = 0; i < s->ndrain; i++)
        pthread_join(s->drain_th[i], NULL);
    for (int i = 0; i < s->nsvc; i++)
        pthread_join(s->svc_th[i], NULL);
    s->halted = true;
}

static void sut_stop(sut_t *s)
{
    sut_halt(s);
    for (int i = 0; i < s->nsvc; i++)
        committed_free(&s->hcfg[i]);
    memstore_free(s->mem);
    membus_free(s->membus);
    s->mem = NULL;
    s->membus = NULL;
}

static db_t *sut_db(sut_t *s)
{
    char *err = NULL;
    db_t *db = s->memory ? db_open_memory(s->mem) : db_open_pg(s->pg_url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    return db;
}

static bus_t *sut_bus(sut_t *s)
{
    char *err = NULL;
    bus_t *b = s->memory ? bus_open_memory(s->membus) : bus_open_redis(s->redis_url, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    return b;
}

/* Appends n messages over naggs aggregates, txn messages per transaction. */
static void publish_orders(sut_t *s, int n, int naggs, int txn, const char *type)
{
    db_t *db = sut_db(s);
    for (int i = 0; i < n;) {
        ASSERT_OK(db_begin(db));
        for (int k = 0; k < txn && i < n; k++, i++) {
            char agg[32], payload[64];
            snprintf(agg, sizeof agg, "order-%d", i % naggs);
            snprintf(payload, sizeof payload, "{\"n\":%d}", i);
            outbox_msg_t m = {.topic = "orders", .type = type, .tenant = "t1", .aggregate_id = agg, .payload = payload};
            const char *why = NULL;
            ASSERT_OK(outbox_append(db, &m, NULL, &why));
        }
        ASSERT_OK(db_commit(db));
    }
    db_close(db);
}

static uint64_t inbox_n(sut_t *s, const char *group)
{
    db_t *db = sut_db(s);
    uint64_t n = 0;
    ASSERT_OK(inbox_count(db, group, &n));
    db_close(db);
    return n;
}

static bool wait_inbox(sut_t *s, const char *group, uint64_t want, int timeout_ms)
{
    int64_t end = clock_mono_ms() + timeout_ms;
    while (clock_mono_ms() < end) {
        if (inbox_n(s, group) >= want)
            return true;
        clock_sleep_ms(50);
    }
    return inbox_n(s, group) >= want;
}

/* Checks exactly-once and per-aggregate order of one group's applications. */
static void check_applied(sut_t *s, const char *group, uint64_t want)
{
    if (!s->memory) {
        char *err = NULL;
        PGconn *c = pg_connect(s->pg_url, "test", &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        const char *p[] = {group};
        PGresult *r = pg_query(c, "SELECT count(*), count(DISTINCT id) FROM test_applied WHERE grp = $1", 1, p);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_EQUAL(strtoull(PQgetvalue(r, 0, 0), NULL, 10), want);
        CU_ASSERT_EQUAL(strtoull(PQgetvalue(r, 0, 1), NULL, 10), want);
        PQclear(r);
        r = pg_query(c,
                     "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY agg ORDER BY ord) AS prev"
                     " FROM test_applied WHERE grp = $1) t WHERE prev IS NOT NULL AND seq <> prev + 1",
                     1, p);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "0");
        PQclear(r);
        PQfinish(c);
        return;
    }
    uint64_t n = 0, out_of_order = 0;
    strmap_t ids, last;
    strmap_init(&ids);
    strmap_init(&last);
    bool dup = false;
    for (size_t i = 0; i < mem_rec.n; i++) {
        applied_t *a = &mem_rec.rows[i];
        if (strcmp(a->grp, group) != 0)
            continue;
        n++;
        bool created;
        strmap_put(&ids, a->id, 36, &created);
        dup |= !created;
        void **prev = strmap_put(&last, a->agg, strlen(a->agg), &created);
        if (!created && (int64_t)(intptr_t)*prev + 1 != a->seq)
            out_of_order++;
        *prev = (void *)(intptr_t)a->seq;
    }
    CU_ASSERT_EQUAL(n, want);
    CU_ASSERT_FALSE(dup);
    CU_ASSERT_EQUAL(out_of_order, 0);
    strmap_free(&ids);
    strmap_free(&last);
}

/* ---- tests ---- */

static void flow_10k(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "flow");
    sut_add_service(&s, "g1", types_orders);
    sut_add_service(&s, "g2", types_orders);
    sut_add_service(&s, "g3", types_orders);
    publish_orders(&s, 4000, 100, 100, "order.placed"); /* some before anyone runs */
    sut_start(&s, 1);
    publish_orders(&s, 6000, 100, 50, "order.paid");
    for (int g = 0; g < 3; g++)
        CU_ASSERT_TRUE(wait_inbox(&s, s.defs[g].group, 10000, 120000));
    clock_sleep_ms(300); /* nothing more may arrive */
    for (int g = 0; g < 3; g++) {
        CU_ASSERT_EQUAL(inbox_n(&s, s.defs[g].group), 10000);
        check_applied(&s, s.defs[g].group, 10000);
        if (!memory) { /* both lanes applied: 100 aggregates split over two connections */
            char *err = NULL;
            PGconn *c = pg_connect(s.pg_url, "test", &err);
            CU_ASSERT_PTR_NOT_NULL_FATAL(c);
            const char *p[] = {s.defs[g].group};
            PGresult *r = pg_query(c, "SELECT count(DISTINCT pid) FROM test_applied WHERE grp = $1", 1, p);
            CU_ASSERT_PTR_NOT_NULL_FATAL(r);
            CU_ASSERT_TRUE(atoi(PQgetvalue(r, 0, 0)) >= 2);
            PQclear(r);
            PQfinish(c);
        }
    }
    db_t *db = sut_db(&s);
    uint64_t pending = 1, dead = 1;
    int64_t oldest;
    ASSERT_OK(outbox_stats(db, &pending, &oldest, &dead));
    CU_ASSERT_EQUAL(pending, 0);
    CU_ASSERT_EQUAL(dead, 0);
    db_close(db);
    sut_stop(&s);
}

static void test_flow_memory(void)
{
    flow_10k(true);
}

static void test_flow_real(void)
{
    flow_10k(false);
}

/* One message fails twice then succeeds; another always fails and is
 * dead-lettered after 5 attempts; messages behind each in its aggregate wait
 * for it, other aggregates flow on. */
static void retries(bool memory, bool batch, bool hold, bool name, bool own)
{
    sut_t s;
    sut_init(&s, memory, hold ? "retry_held" : name ? "retry_named" : "retry");
    s.batch_handler = batch;
    s.watch_commits = true;
    sut_add_service(&s, "r1", types_orders);
    sut_add_service(&s, "r2", types_orders);
    s.hcfg[0].hold = s.hcfg[1].hold = hold;
    s.hcfg[0].name = s.hcfg[1].name = name;
    s.hcfg[0].own = s.hcfg[1].own = own;
    s.hcfg[0].fail_aggregate = "order-3";
    s.hcfg[0].fail_seq = 2;
    s.hcfg[0].fail_times = 2;
    s.hcfg[1].fail_aggregate = "order-5";
    s.hcfg[1].fail_seq = 3;
    s.hcfg[1].fail_times = -1;
    publish_orders(&s, 200, 10, 20, "order.placed"); /* 20 messages per aggregate */
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "r1", 200, 60000));
    CU_ASSERT_TRUE(wait_inbox(&s, "r2", 199, 60000));
    clock_sleep_ms(500);
    if (hold) { /* the batch calls succeed; the held failure comes back at the commit or release */
        CU_ASSERT_TRUE(s.hcfg[1].failed >= 5);
        CU_ASSERT_EQUAL(s.hcfg[1].batch_failed, 0);
    } else if (own) {
        /* each attempt runs the failing message once: the batch call that
         * named it is its attempt, not followed by a run of it alone */
        CU_ASSERT_EQUAL(s.hcfg[0].failed, 2);
        CU_ASSERT_EQUAL(s.hcfg[1].failed, 5);
    } else if (name) {
        /* the batch that met it split there at once: one failed batch call
         * (or two, should it come back inside a batch before it is known) */
        CU_ASSERT_TRUE(s.hcfg[1].batch_failed >= 1 && s.hcfg[1].batch_failed <= 2);
        if (s.hcfg[1].batch_failed > 2)
            fprintf(stderr, "\n  batches failed by the named message: %d\n", s.hcfg[1].batch_failed);
    } else if (!batch) { /* with a batch handler, the batches around a failing message fail too */
        CU_ASSERT_EQUAL(s.hcfg[0].failed, 2);
        CU_ASSERT_EQUAL(s.hcfg[1].failed, 5);
    } else {
        /* ... on its first delivery only: the all-at-once call, then one
         * call per halving of the batch (at most a pending-list page, 512)
         * down to two messages; later deliveries try it on its own first */
        CU_ASSERT_TRUE(s.hcfg[1].batch_failed >= 1 && s.hcfg[1].batch_failed <= 9);
        if (s.hcfg[1].batch_failed > 9)
            fprintf(stderr, "\n  batches failed by the dead-lettered message: %d\n", s.hcfg[1].batch_failed);
    }
    check_applied(&s, "r1", 200);
    /* r2: the dead-lettered message is missing, so order-5 shows one gap
     * (seq 2 -> 4) in memory; check counts and the DLQ instead */
    CU_ASSERT_EQUAL(inbox_n(&s, "r2"), 199);
    bus_t *b = sut_bus(&s);
    bus_entry_t *ents = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(bus_range(b, "ecom:dlq:r2", "-", "+", 0, &ents, &n), 0);
    CU_ASSERT_EQUAL(n, 1);
    bool reason = false, agg = false;
    for (size_t i = 0; n == 1 && i < ents[0].nfields; i++) {
        const char *k = ents[0].fields[2 * i], *v = ents[0].fields[2 * i + 1];
        /* a held write's failure is reported with its SQLSTATE (22012: 1 / 0) */
        if (strcmp(k, "error") == 0 && strstr(v, hold ? "sqlstate 22012" : "injected failure") &&
            strstr(v, "5 attempts"))
            reason = true;
        if (strcmp(k, "aggregate_id") == 0 && strcmp(v, "order-5") == 0)
            agg = true;
    }
    CU_ASSERT_TRUE(reason);
    CU_ASSERT_TRUE(agg);
    bus_entries_free(ents, n);
    bus_close(b);
    sut_halt(&s); /* the hooks ran on the services' threads */
    committed_check(&s.hcfg[0], 200);
    committed_check(&s.hcfg[1], 199);
    sut_stop(&s);
}

/* Messages put off (SVC_DEFER: a provider's breaker open) again and again,
 * and the ones waiting behind them, keep delivery counts of attempts only:
 * every pending-list scan delivers each pending entry again, so without
 * that a few seconds of it put them past the crash rule's count (the
 * runtime's max_attempts + 20), and the worker that came after a restart
 * dead-lettered them all as poison. */
static void deferred_then_restart(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "defer_restart");
    sut_add_service(&s, "d1", types_orders);
    atomic_store(&s.hcfg[0].defer, true);          /* every message put off */
    s.sopts[0].backoff_ms = 1;                     /* the first retries come back at once: many scans quickly */
    publish_orders(&s, 40, 4, 10, "order.placed"); /* 4 aggregates, 10 messages each */
    sut_start(&s, 1);
    /* each aggregate's head put off 12 times: about 48 scans of the 40 entries */
    int64_t end = clock_mono_ms() + 60000;
    while (atomic_load(&s.hcfg[0].deferred) < 48 && clock_mono_ms() < end)
        clock_sleep_ms(20);
    CU_ASSERT_TRUE(atomic_load(&s.hcfg[0].deferred) >= 48);
    sut_halt(&s);
    bus_t *b = sut_bus(&s);
    bus_pending_entry_t pe[48];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, "ecom:orders", "d1", pe, 48, &n));
    CU_ASSERT_EQUAL(n, 40);
    uint32_t most = 0;
    for (size_t i = 0; i < n; i++)
        most = pe[i].deliveries > most ? pe[i].deliveries : most;
    CU_ASSERT_TRUE(most <= 1);
    if (most > 1)
        fprintf(stderr, "\n  a put-off entry has %u deliveries\n", most);

    /* the next worker, with nothing put off any more */
    atomic_store(&s.hcfg[0].defer, false);
    atomic_store(&s.stop, false);
    s.halted = false;
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "d1", 40, 60000));
    bus_entry_t *dead = NULL;
    size_t ndead = 0;
    CU_ASSERT_EQUAL(bus_range(b, "ecom:dlq:d1", "-", "+", 0, &dead, &ndead), 0);
    CU_ASSERT_EQUAL(ndead, 0);
    bus_entries_free(dead, ndead);
    check_applied(&s, "d1", 40);
    bus_close(b);
    sut_stop(&s);
}

static void test_deferred_restart_memory(void)
{
    deferred_then_restart(true);
}

static void test_deferred_restart_real(void)
{
    deferred_then_restart(false);
}

/* The seqs a group applied of one aggregate, in the order it applied them. */
static size_t applied_seqs(sut_t *s, const char *group, const char *agg, int64_t *out, size_t cap)
{
    size_t n = 0;
    if (s->memory) {
        for (size_t i = 0; i < mem_rec.n && n < cap; i++)
            if (strcmp(mem_rec.rows[i].grp, group) == 0 && strcmp(mem_rec.rows[i].agg, agg) == 0)
                out[n++] = mem_rec.rows[i].seq;
        return n;
    }
    char *err = NULL;
    PGconn *c = pg_connect(s->pg_url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    const char *p[] = {group, agg};
    PGresult *r = pg_query(c, "SELECT seq FROM test_applied WHERE grp = $1 AND agg = $2 ORDER BY ord", 2, p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    for (int i = 0; i < PQntuples(r) && n < cap; i++)
        out[n++] = strtoll(PQgetvalue(r, i, 0), NULL, 10);
    PQclear(r);
    PQfinish(c);
    return n;
}

/* A group on orders whose handler fails seq 3 of order-0 five times
 * (SERVICE_MAX_ATTEMPTS: dead-lettered), seq 1..10 published and applied
 * but that one; returns the dead letter's entries (one, else the test
 * stops), read with *b (the caller closes it). */
static bus_entry_t *third_dead(sut_t *s, const char *group, bus_t **b, size_t *ndead)
{
    sut_add_service(s, group, types_orders);
    s->hcfg[0].fail_aggregate = "order-0";
    s->hcfg[0].fail_seq = 3;
    s->hcfg[0].fail_times = 5;
    publish_orders(s, 10, 1, 10, "order.placed");
    sut_start(s, 1);
    CU_ASSERT_TRUE(wait_inbox(s, group, 9, 60000));
    *b = sut_bus(s);
    char dlq[BUS_STREAM_MAX];
    snprintf(dlq, sizeof dlq, "ecom:dlq:%s", group);
    bus_entry_t *dead = NULL;
    *ndead = 0;
    for (int i = 0; i < 200 && *ndead == 0; i++) {
        bus_entries_free(dead, *ndead);
        dead = NULL;
        ASSERT_OK(bus_range(*b, dlq, "-", "+", 0, &dead, ndead));
        if (*ndead == 0)
            clock_sleep_ms(50);
    }
    CU_ASSERT_EQUAL_FATAL(*ndead, 1);
    return dead;
}

/* The group applied order-0's seqs in exactly this order. */
static void check_order(sut_t *s, const char *group, const int64_t *want, size_t nwant)
{
    int64_t seqs[32];
    size_t n = applied_seqs(s, group, "order-0", seqs, 32);
    bool same = n == nwant;
    for (size_t i = 0; same && i < n; i++)
        same = seqs[i] == want[i];
    CU_ASSERT_TRUE(same);
    if (!same) {
        fprintf(stderr, "\n  applied:");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %lld", (long long)seqs[i]);
        fprintf(stderr, "\n");
    }
}

/* A dead letter sent back (bus_replay_dead, as `ecomctl dlq replay` does)
 * keeps its aggregate's place: while it is retried, the aggregate's newer
 * messages on the topic's stream wait behind it. Seq 3 of order-0 fails
 * until dead-lettered; sent back, it fails twice more, and seq 11..15 are
 * published right after it: the group applies 1, 2, 4..10, 3, 11..15. */
static void replay_keeps_place(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "replay_place");
    bus_t *b = NULL;
    size_t ndead = 0;
    bus_entry_t *dead = third_dead(&s, "rp", &b, &ndead);
    /* it comes back, fails twice more (attempts 6 and 7), then goes in */
    __atomic_store_n(&s.hcfg[0].fail_times, 7, __ATOMIC_SEQ_CST);
    const char *why = NULL;
    CU_ASSERT_EQUAL(bus_replay_dead(b, "rp", &dead[0], &why), 0);
    bus_entries_free(dead, ndead);
    bus_close(b);
    publish_orders(&s, 5, 1, 5, "order.placed"); /* seq 11..15 */
    CU_ASSERT_TRUE(wait_inbox(&s, "rp", 15, 60000));
    clock_sleep_ms(300);
    sut_halt(&s);
    CU_ASSERT_EQUAL(s.hcfg[0].failed, 7);
    static const int64_t want[] = {1, 2, 4, 5, 6, 7, 8, 9, 10, 3, 11, 12, 13, 14, 15};
    check_order(&s, "rp", want, ECOM_ARRAY_LEN(want));
    sut_stop(&s);
}

/* Another entry of a dead-lettered message (a drainer's publish retry puts
 * a message on its stream twice) is acknowledged, not applied after the
 * messages that came behind the original. Seq 3 of order-0 fails five times
 * (dead-lettered); then its entry is published again, and seq 11 and 12
 * after it. The handler would take seq 3 now: the group applies 1, 2,
 * 4..12, and the DLQ holds seq 3 once. */
static void dead_copy_skipped(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "dead_copy");
    bus_t *b = NULL;
    size_t ndead = 0;
    bus_entry_t *dead = third_dead(&s, "dc", &b, &ndead);
    bus_entries_free(dead, ndead);
    /* seq 3's entry, published again as a drainer's retry would */
    bus_entry_t *ents = NULL;
    size_t n = 0;
    ASSERT_OK(bus_range(b, "ecom:orders", "-", "+", 0, &ents, &n));
    envelope_t copy = {0};
    bool found = false;
    for (size_t i = 0; i < n && !found; i++) {
        const char *names[32], *vals[32];
        size_t nl[32], vl[32], k = ents[i].nfields < 32 ? ents[i].nfields : 32;
        for (size_t j = 0; j < k; j++) {
            names[j] = ents[i].fields[2 * j];
            vals[j] = ents[i].fields[2 * j + 1];
            nl[j] = strlen(names[j]);
            vl[j] = strlen(vals[j]);
        }
        const char *why = NULL;
        envelope_clear(&copy);
        memset(&copy, 0, sizeof copy);
        found = envelope_from_fields(&copy, names, nl, vals, vl, k, &why) == 0 && copy.seq == 3;
    }
    bus_entries_free(ents, n);
    CU_ASSERT_TRUE_FATAL(found);
    ASSERT_OK(bus_publish(b, &copy, 1, NULL));
    envelope_clear(&copy);
    publish_orders(&s, 2, 1, 2, "order.placed"); /* seq 11, 12 */
    CU_ASSERT_TRUE(wait_inbox(&s, "dc", 11, 60000));
    clock_sleep_ms(300);
    sut_halt(&s);
    CU_ASSERT_EQUAL(s.hcfg[0].failed, 5);
    static const int64_t want[] = {1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    check_order(&s, "dc", want, ECOM_ARRAY_LEN(want));
    dead = NULL;
    ndead = 0;
    ASSERT_OK(bus_range(b, "ecom:dlq:dc", "-", "+", 0, &dead, &ndead));
    CU_ASSERT_EQUAL(ndead, 1);
    bus_entries_free(dead, ndead);
    bus_pending_entry_t pe[8];
    size_t np = 0;
    ASSERT_OK(bus_pending(b, "ecom:orders", "dc", pe, 8, &np));
    CU_ASSERT_EQUAL(np, 0); /* the copy was acknowledged */
    bus_close(b);
    sut_stop(&s);
}

static void test_dead_copy_memory(void)
{
    dead_copy_skipped(true);
}

static void test_dead_copy_real(void)
{
    dead_copy_skipped(false);
}

static void test_replay_place_memory(void)
{
    replay_keeps_place(true);
}

static void test_replay_place_real(void)
{
    replay_keeps_place(false);
}

static void test_retries_memory(void)
{
    retries(true, false, false, false, false);
}

static void test_retries_real(void)
{
    retries(false, false, false, false, false);
}

/* A retry falls due while the read-ahead holds the next batch (a backlog of
 * 3,000 entries, batches of 128): the retry's scan of the pending list must
 * not deliver that batch, which the read would then deliver a second time. */
static void test_retries_read_ahead_real(void)
{
    sut_t s;
    sut_init(&s, false, "retry_ahead");
    sut_add_service(&s, "ra", types_orders);
    s.hcfg[0].fail_aggregate = "order-3";
    s.hcfg[0].fail_seq = 2;
    s.hcfg[0].fail_times = 3;
    metric_t *dup = metrics_counter("ecom_service_duplicates_total", "Deliveries skipped by the inbox", "group=\"ra\"");
    uint64_t dup0 = metrics_value(dup);
    publish_orders(&s, 3000, 30, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "ra", 3000, 60000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(s.hcfg[0].failed, 3);
    check_applied(&s, "ra", 3000);
    CU_ASSERT_EQUAL(metrics_value(dup), dup0);
    sut_stop(&s);
}

/* Queues (no reply read) an XADD of order-lost's message seq, in the bus's
 * entry format. */
static void xadd_order(redisContext *rc, int seq)
{
    char id[UUID_STR_LEN], seqs[16], ts[24], payload[32];
    uuid_v7(id);
    snprintf(seqs, sizeof seqs, "%d", seq);
    snprintf(ts, sizeof ts, "%lld", (long long)clock_now_ms());
    snprintf(payload, sizeof payload, "{\"n\":%d}", seq);
    const char *argv[] = {"XADD", "ecom:orders", "*", "id", id, "type", "order.placed", "topic", "orders", "tenant",
                          "t1", "aggregate_id", "order-lost", "seq", seqs, "ts", ts, "v", "1", "traceparent", "",
                          "request_id", "", "payload", payload};
    ASSERT_OK(redisAppendCommandArgv(rc, (int)ECOM_ARRAY_LEN(argv), argv, NULL));
}

/* XADDs order-lost's messages from..to (xadd_order), waiting for the replies. */
static void xadd_orders(redisContext *rc, int from, int to)
{
    for (int seq = from; seq <= to; seq++)
        xadd_order(rc, seq);
    for (int seq = from; seq <= to; seq++) {
        redisReply *x = NULL;
        CU_ASSERT_EQUAL(redisGetReply(rc, (void **)&x), REDIS_OK);
        CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_STRING);
        freeReplyObject(x);
    }
}

/* A connection of the test's own to url, with group on ecom:orders (from its end). */
static redisContext *orders_group(const char *url, const char *group)
{
    char *err = NULL;
    redisContext *rc = redis_connect_url(url, 5000, &err);
    free(err);
    if (!rc)
        return NULL;
    redisReply *x = redisCommand(rc, "XGROUP CREATE ecom:orders %s $ MKSTREAM", group);
    CU_ASSERT_TRUE(x && x->type != REDIS_REPLY_ERROR);
    freeReplyObject(x);
    return rc;
}

/* Entries a read moved into the consumer's pending list although its answer
 * was lost (as when Redis restarts between executing XREADGROUP and
 * answering): the test reads them itself, under the service's consumer name,
 * in the transaction that adds them, then drops the service's connections,
 * then adds a later message of the same aggregate. The lost ones must be
 * applied before it, without waiting for the idle reclaim (set far away). */
static void test_lost_read_real(void)
{
    sut_t s;
    sut_init(&s, false, "lostread");
    s.redis_url = test_redis_private(); /* its clients are dropped below: no other test's */
    sut_add_service(&s, "lr", types_orders);
    s.sopts[0].reclaim_idle_ms = 600000;
    char *err = NULL;
    redisContext *rc = redis_connect_url(s.redis_url, 2000, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    redisReply *x = redisCommand(rc, "XGROUP CREATE ecom:orders lr $ MKSTREAM");
    CU_ASSERT_TRUE(x && x->type != REDIS_REPLY_ERROR);
    freeReplyObject(x);
    sut_start(&s, 0);
    /* the service is up: its connection and its read-ahead's (it waits for new entries) */
    for (int i = 0, clients = 0; i < 500 && clients < 3; i++) {
        clock_sleep_ms(20);
        x = redisCommand(rc, "CLIENT LIST");
        clients = 0;
        for (const char *p = x && x->type == REDIS_REPLY_STRING ? x->str : ""; (p = strstr(p, "id=")); p += 3)
            clients++;
        freeReplyObject(x);
    }
    clock_sleep_ms(100);
    /* seq 1 and 2, read at once for test-lr: pending, never answered to it */
    ASSERT_OK(redisAppendCommand(rc, "MULTI"));
    xadd_order(rc, 1);
    xadd_order(rc, 2);
    ASSERT_OK(redisAppendCommand(rc, "XREADGROUP GROUP lr test-lr COUNT 10 STREAMS ecom:orders >"));
    ASSERT_OK(redisAppendCommand(rc, "EXEC"));
    for (int i = 0; i < 5; i++) {
        x = NULL;
        CU_ASSERT_EQUAL(redisGetReply(rc, (void **)&x), REDIS_OK);
        CU_ASSERT_TRUE(x && x->type != REDIS_REPLY_ERROR);
        if (i == 4) /* EXEC: the XREADGROUP took both */
            CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_ARRAY && x->elements == 3 && x->element[2]->elements == 1 &&
                           x->element[2]->element[0]->element[1]->elements == 2);
        freeReplyObject(x);
    }
    x = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_INTEGER && x->integer >= 1);
    freeReplyObject(x);
    xadd_order(rc, 3);
    x = NULL;
    CU_ASSERT_EQUAL(redisGetReply(rc, (void **)&x), REDIS_OK);
    freeReplyObject(x);
    redisFree(rc);
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    char got[64] = "";
    for (int i = 0; i < 250; i++) { /* 10 s: far less than the reclaim */
        PGresult *r = pg_query(c, "SELECT coalesce(string_agg(seq::text, ',' ORDER BY ord), '') FROM test_applied", 0,
                               NULL);
        snprintf(got, sizeof got, "%s", r ? PQgetvalue(r, 0, 0) : "");
        PQclear(r);
        if (strcmp(got, "1,2,3") == 0)
            break;
        clock_sleep_ms(40);
    }
    CU_ASSERT_STRING_EQUAL(got, "1,2,3");
    if (strcmp(got, "1,2,3") != 0)
        fprintf(stderr, "\n  lost read: applied in this order: '%s'\n", got);
    PQfinish(c);
    free(err);
    sut_stop(&s);
}

/* A lane's connection breaks under a batch of new entries while the
 * read-ahead already holds the next batch, with later messages of the same
 * aggregates: what the lane held stays pending and must be applied before
 * them (the pending list first, as after a failed read), not once a retry
 * falls due. Batches of 128 go on two lanes; order-1's messages take the
 * second lane (the first is the service's own connection, whose loss also
 * loses the group lease and so takes another path). */
static void test_broken_lane_real(void)
{
    sut_t s;
    sut_init(&s, false, "brokenlane");
    sut_add_service(&s, "bl", types_orders);
    s.sopts[0].reclaim_idle_ms = 600000; /* the idle reclaim plays no part */
    s.hcfg[0].fail_aggregate = "order-1";
    s.hcfg[0].fail_seq = 5;
    s.hcfg[0].fail_times = 1;
    s.hcfg[0].drop_conn = true;
    publish_orders(&s, 900, 3, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "bl", 900, 60000));
    CU_ASSERT_EQUAL(s.hcfg[0].failed, 1);
    CU_ASSERT_EQUAL(s.hcfg[0].dropped_lane, 1);
    check_applied(&s, "bl", 900);
    sut_stop(&s);
}

/* Runs one command on the test's own connection to url; true when Redis said OK. */
static bool redis_ok(const char *url, const char *cmd)
{
    redisReply *x = test_redis_command(url, cmd);
    bool ok = x && x->type == REDIS_REPLY_STATUS && strcmp(x->str, "OK") == 0;
    freeReplyObject(x);
    return ok;
}

/* Redis answers PING but refuses every write (-OOM at maxmemory; -MISCONF
 * and -READONLY alike): the drainer must wait, as for a Redis that is down,
 * and count no attempt against the rows (after ten a row moves to
 * bus.outbox_dead and its successors are published past it). When writes
 * are taken again, every message is applied once and in order. */
static void test_redis_refuses_writes_real(void)
{
    sut_t s;
    sut_init(&s, false, "refusewrites");
    s.redis_url = test_redis_private(); /* its configuration is changed below */
    s.dopts.redis_url = s.redis_url;
    sut_add_service(&s, "rw", types_orders);
    CU_ASSERT_TRUE(redis_ok(s.redis_url, "CONFIG SET maxmemory 1"));
    publish_orders(&s, 300, 10, 100, "order.placed");
    sut_start(&s, 1);
    clock_sleep_ms(2500); /* the old drainer had counted three or four attempts by now */
    char *err = NULL;
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    PGresult *r = pg_query(c,
                           "SELECT (SELECT count(*) FROM bus.outbox), (SELECT coalesce(max(attempts), 0) FROM"
                           " bus.outbox), (SELECT count(*) FROM bus.outbox_dead)",
                           0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "300"); /* nothing went out */
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "0");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 2), "0");
    PQclear(r);
    PQfinish(c);
    CU_ASSERT_TRUE(redis_ok(s.redis_url, "CONFIG SET maxmemory 0"));
    CU_ASSERT_TRUE(wait_inbox(&s, "rw", 300, 30000));
    check_applied(&s, "rw", 300);
    sut_stop(&s);
}

/* How many entries of aggregate agg ecom:orders holds. */
static size_t orders_of(const char *url, const char *agg)
{
    redisReply *x = test_redis_command(url, "XRANGE ecom:orders - +");
    CU_ASSERT_TRUE_FATAL(x && x->type == REDIS_REPLY_ARRAY);
    size_t n = 0;
    for (size_t i = 0; i < x->elements; i++) {
        redisReply *f = x->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            n += strcmp(f->element[k]->str, "aggregate_id") == 0 && strcmp(f->element[k + 1]->str, agg) == 0;
    }
    freeReplyObject(x);
    return n;
}

/* The rows waiting in the outbox, oldest first: every partition's. */
static outbox_row_t *outbox_rows(sut_t *s, size_t *n)
{
    int parts[OUTBOX_PARTITIONS];
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        parts[p] = p;
    db_t *db = sut_db(s);
    outbox_row_t *rows = NULL;
    ASSERT_OK(outbox_fetch(db, parts, OUTBOX_PARTITIONS, 1000, &rows, n));
    db_close(db);
    return rows;
}

/* One row the bus refuses (its topic's stream key holds a string, so every
 * XADD to it fails) pauses its own partition for its backoff, not the
 * drainer: the rows behind it in its aggregate wait (on its topic, refused
 * too, and on another, which Redis takes), and every other partition's rows
 * are published and applied while it still waits in the outbox with few
 * attempts counted. Once its stream can be written, it and its successors
 * go out in order. Before, the drainer stopped for the backoff and each
 * batch began with the refused row, so no row passed it until, after ten
 * attempts, it moved to bus.outbox_dead; and on the memory store, whose
 * fetch ignored the partitions, the pause did not hold it back at all. The
 * drainer's batch of 50 makes it fail with the next batch in flight. */
static void refused_row(bool memory_store)
{
    sut_t s;
    sut_init(&s, memory_store, "refusedrow");
    if (memory_store) { /* the memory store with Redis */
        s.redis_url = test_redis_db();
        s.dopts.redis_url = s.redis_url;
    }
    s.dopts.batch = 50;
    sut_add_service(&s, "rr", types_orders);
    if (memory_store)
        s.sopts[0].redis_url = s.redis_url;
    enum { ORDERS = 300, AGGS = 20 };
    /* an aggregate of a partition none of the orders' aggregates share */
    bool taken[OUTBOX_PARTITIONS] = {false};
    for (int i = 0; i < AGGS; i++) {
        char agg[32];
        snprintf(agg, sizeof agg, "order-%d", i);
        taken[outbox_partition_of("t1", agg)] = true;
    }
    char agg[32] = "";
    for (int i = 0; !agg[0] || taken[outbox_partition_of("t1", agg)]; i++)
        snprintf(agg, sizeof agg, "stuck-%d", i);
    CU_ASSERT_TRUE(redis_ok(s.redis_url, "SET ecom:stuck not-a-stream"));
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    for (int k = 1; k <= 3; k++) { /* seq 1 and 2 on the refused stream, 3 on ecom:orders */
        char payload[32];
        snprintf(payload, sizeof payload, "{\"n\":%d}", k);
        outbox_msg_t m = {.topic = k < 3 ? "stuck" : "orders",
                          .type = k < 3 ? "stuck.step" : "order.placed",
                          .tenant = "t1",
                          .aggregate_id = agg,
                          .payload = payload};
        const char *why = NULL;
        ASSERT_OK(outbox_append(db, &m, NULL, &why));
    }
    ASSERT_OK(db_commit(db));
    db_close(db);
    publish_orders(&s, ORDERS, AGGS, 50, "order.placed"); /* after the refused row: higher positions */
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "rr", ORDERS, 30000));
    size_t n = 0;
    outbox_row_t *rows = outbox_rows(&s, &n);
    CU_ASSERT_EQUAL_FATAL(n, 3); /* the refused row and its successors wait */
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_STRING_EQUAL(rows[i].env.aggregate_id, agg);
        CU_ASSERT_EQUAL(rows[i].env.seq, (int64_t)i + 1);
    }
    CU_ASSERT_TRUE(rows[0].attempts >= 1 && rows[0].attempts < DRAIN_ROW_ATTEMPTS);
    outbox_rows_free(rows, n);
    /* seq 3, on a stream Redis takes, waits too: not on it, not applied */
    CU_ASSERT_EQUAL(orders_of(s.redis_url, agg), 0);
    int64_t seqs[4];
    CU_ASSERT_EQUAL(applied_seqs(&s, "rr", agg, seqs, 4), 0);
    redisReply *x = test_redis_command(s.redis_url, "DEL ecom:stuck");
    CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_INTEGER && x->integer == 1);
    freeReplyObject(x);
    CU_ASSERT_TRUE(wait_inbox(&s, "rr", ORDERS + 1, 30000)); /* a backoff is at most 6.4 s */
    check_applied(&s, "rr", ORDERS + 1);
    rows = outbox_rows(&s, &n);
    CU_ASSERT_EQUAL(n, 0);
    outbox_rows_free(rows, n);
    /* seq 1 and 2 in order on their stream (which no group reads, so it is
     * not trimmed), and seq 3 applied from ecom:orders (whose entries the
     * drainer trims once read): it went out after them, having waited while
     * seq 1 was refused, and a batch publishes a prefix of its rows */
    x = test_redis_command(s.redis_url, "XRANGE ecom:stuck - +");
    CU_ASSERT_TRUE_FATAL(x && x->type == REDIS_REPLY_ARRAY);
    CU_ASSERT_EQUAL(x->elements, 2);
    for (size_t i = 0; i < x->elements && i < 2; i++) {
        redisReply *f = x->element[i]->element[1];
        const char *seq = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "seq") == 0)
                seq = f->element[k + 1]->str;
        CU_ASSERT_EQUAL(seq ? atoi(seq) : 0, (int)i + 1);
    }
    freeReplyObject(x);
    CU_ASSERT_EQUAL(applied_seqs(&s, "rr", agg, seqs, 4), 1);
    CU_ASSERT_EQUAL(seqs[0], 3);
    sut_stop(&s);
}

static void test_refused_row_memory(void)
{
    refused_row(true);
}

static void test_refused_row_real(void)
{
    refused_row(false);
}

/* A standby takes the group over from a consumer that holds more entries
 * than one claim takes (RECLAIM_MAX, 10,000): it claims them a part at a
 * time, each part applied before the next, and reads new entries only once
 * none is left with the old consumer. (The idle reclaim is set far away: it
 * would bring the rest only after the new entries.) */
static void test_takeover_claims_all_real(void)
{
    sut_t s;
    sut_init(&s, false, "takeover");
    sut_add_service(&s, "tk", types_orders);
    s.sopts[0].reclaim_idle_ms = 600000;
    redisContext *rc = orders_group(s.redis_url, "tk");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    enum { HELD = 10050, AFTER = 50 };
    xadd_orders(rc, 1, HELD);
    /* a consumer that is gone holds them all */
    redisReply *x = redisCommand(rc, "XREADGROUP GROUP tk gone COUNT 20000 STREAMS ecom:orders >");
    CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_ARRAY && x->elements == 1 &&
                   x->element[0]->element[1]->elements == HELD);
    freeReplyObject(x);
    xadd_orders(rc, HELD + 1, HELD + AFTER);
    redisFree(rc);
    sut_start(&s, 0);
    CU_ASSERT_TRUE(wait_inbox(&s, "tk", HELD + AFTER, 120000));
    check_applied(&s, "tk", HELD + AFTER);
    sut_stop(&s);
}

/* A previous holder that has not noticed it lost the lease reads an entry
 * after the new holder claimed what it held: the new holder, reading the
 * next entry of the aggregate, must apply that one first (having taken the
 * lease from a consumer that was reading lately, it checks for entries held
 * by others for a while). The previous holder is the test's: consumer
 * "gone" reads just before the service starts, and later, in one
 * transaction, an entry is added and read by it, so the service, blocked on
 * the stream, does not get it. The idle reclaim is set far away. */
static void test_late_reader_real(void)
{
    sut_t s;
    sut_init(&s, false, "latereader");
    sut_add_service(&s, "lt", types_orders);
    s.sopts[0].reclaim_idle_ms = 600000;
    char *err = NULL;
    redisContext *rc = orders_group(s.redis_url, "lt");
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    /* the previous holder was reading (and applying) until now: seq 1 */
    xadd_orders(rc, 1, 1);
    redisReply *x = redisCommand(rc, "XREADGROUP GROUP lt gone COUNT 10 STREAMS ecom:orders >");
    CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_ARRAY && x->elements == 1 && x->element[0]->element[1]->elements == 1);
    if (x && x->type == REDIS_REPLY_ARRAY && x->elements == 1)
        freeReplyObject(
            redisCommand(rc, "XACK ecom:orders lt %s", x->element[0]->element[1]->element[0]->element[0]->str));
    freeReplyObject(x);
    sut_start(&s, 0);
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    /* the service holds the lease (its session's advisory lock) and reads */
    for (int i = 0; i < 250; i++) {
        PGresult *r = pg_query(c, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted", 0, NULL);
        bool held = r && strcmp(PQgetvalue(r, 0, 0), "0") != 0;
        PQclear(r);
        if (held)
            break;
        clock_sleep_ms(20);
    }
    clock_sleep_ms(300);
    ASSERT_OK(redisAppendCommand(rc, "MULTI"));
    xadd_order(rc, 2);
    ASSERT_OK(redisAppendCommand(rc, "XREADGROUP GROUP lt gone COUNT 10 STREAMS ecom:orders >"));
    ASSERT_OK(redisAppendCommand(rc, "EXEC"));
    for (int i = 0; i < 4; i++) {
        x = NULL;
        CU_ASSERT_EQUAL(redisGetReply(rc, (void **)&x), REDIS_OK);
        CU_ASSERT_TRUE(x && x->type != REDIS_REPLY_ERROR);
        freeReplyObject(x);
    }
    xadd_orders(rc, 3, 3);
    redisFree(rc);
    char got[64] = "";
    for (int i = 0; i < 250; i++) { /* 10 s: far less than the reclaim */
        PGresult *r =
            pg_query(c, "SELECT coalesce(string_agg(seq::text, ',' ORDER BY ord), '') FROM test_applied", 0, NULL);
        snprintf(got, sizeof got, "%s", r ? PQgetvalue(r, 0, 0) : "");
        PQclear(r);
        if (strcmp(got, "2,3") == 0)
            break;
        clock_sleep_ms(40);
    }
    CU_ASSERT_STRING_EQUAL(got, "2,3"); /* seq 1 was the previous holder's */
    PQfinish(c);
    free(err);
    sut_stop(&s);
}

static void test_retries_batch_memory(void)
{
    retries(true, true, false, false, false);
}

static void test_retries_batch_real(void)
{
    retries(false, true, false, false, false);
}

/* A batch handler that names the message it failed on: the batch is split
 * there (the messages before it as one batch, it alone, the rest as one)
 * instead of halved down to it. */
static void test_retries_named_memory(void)
{
    retries(true, true, false, true, false);
}

static void test_retries_named_real(void)
{
    retries(false, true, false, true, false);
}

/* A batch handler that names the message it failed on as the failure's
 * owner (a provider's answer): that call is the message's attempt. */
static void test_retries_own_memory(void)
{
    retries(true, true, false, true, true);
}

static void test_retries_own_real(void)
{
    retries(false, true, false, true, true);
}

/* The same with the handlers' writes held back to the commit (db_defer),
 * the injected failure too: it surfaces at the commit or a savepoint's
 * release, and is found and retried as a handler's failure. */
static void test_retries_held_real(void)
{
    retries(false, true, true, false, false);
}

/* A service with a linger waits after a short read, so that what arrives
 * meanwhile goes in one batch: ten messages committed one by one, 20 ms
 * apart, inside the linger, are applied in one or two batch calls (one per
 * message without it), exactly once and in order. */
static void linger(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "linger");
    s.batch_handler = true;
    sut_add_service(&s, "lg", types_orders);
    s.sopts[0].linger_ms = 1500;
    sut_start(&s, 1);
    publish_orders(&s, 1, 1, 1, "order.placed");
    CU_ASSERT_TRUE(wait_inbox(&s, "lg", 1, 15000));
    if (!memory) {
        /* while the service lingers no read goes out, and the read-ahead
         * sends the acknowledgement on its own (after 2 ms; the linger is
         * 1.5 s): the entry leaves the pending list before any new read */
        bus_t *b = sut_bus(&s);
        bus_stream_info_t info = {0};
        for (int i = 0; i < 20; i++) {
            CU_ASSERT_EQUAL_FATAL(bus_stream_info(b, "ecom:orders", &info), 0);
            if (info.ngroups == 1 && info.groups[0].pending == 0)
                break;
            clock_sleep_ms(25);
        }
        CU_ASSERT_EQUAL_FATAL(info.ngroups, 1);
        CU_ASSERT_EQUAL(info.groups[0].pending, 0);
        bus_close(b);
    }
    int calls0 = __atomic_load_n(&s.hcfg[0].batch_calls, __ATOMIC_SEQ_CST);
    for (int i = 0; i < 10; i++) {
        publish_orders(&s, 1, 1, 1, "order.placed");
        clock_sleep_ms(20);
    }
    CU_ASSERT_TRUE(wait_inbox(&s, "lg", 11, 15000));
    int calls = __atomic_load_n(&s.hcfg[0].batch_calls, __ATOMIC_SEQ_CST) - calls0;
    CU_ASSERT_TRUE(calls >= 1 && calls <= 2);
    if (calls > 2)
        fprintf(stderr, "\n  ten messages took %d batch calls\n", calls);
    check_applied(&s, "lg", 11);
    sut_stop(&s);
}

static void test_linger_memory(void)
{
    linger(true);
}

static void test_linger_real(void)
{
    linger(false);
}

/* Bad input: entries with missing fields, an unparsable payload and an unknown
 * type go to the DLQ with a reason; the good messages around them are applied;
 * an oversized payload is refused by outbox_append. b2 only checks payloads
 * (payload_unread): it refuses the same ones. */
static void bad_input(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "bad");
    sut_add_service(&s, "b1", types_orders);
    sut_add_service(&s, "b2", types_orders);
    s.defs[1].payload_unread = true;
    publish_orders(&s, 10, 2, 10, "order.placed");
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    const char *why = NULL;
    outbox_msg_t bad_json = {.topic = "orders",
                             .type = "order.placed",
                             .tenant = "t1",
                             .aggregate_id = "x",
                             .payload = "{\"a\":1} trailing"};
    ASSERT_OK(outbox_append(db, &bad_json, NULL, &why));
    outbox_msg_t unknown = {
        .topic = "orders", .type = "order.exploded", .tenant = "t1", .aggregate_id = "y", .payload = "{}"};
    ASSERT_OK(outbox_append(db, &unknown, NULL, &why));
    char *big = xmalloc(300 * 1024);
    memset(big, ' ', 300 * 1024 - 1);
    big[0] = '"';
    big[300 * 1024 - 2] = '"';
    big[300 * 1024 - 1] = '\0';
    outbox_msg_t huge = {
        .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = "z", .payload = big};
    CU_ASSERT_EQUAL(outbox_append(db, &huge, NULL, &why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "OUTBOX_MAX_PAYLOAD"));
    outbox_msg_t bad_name = {
        .topic = "or ders", .type = "order.placed", .tenant = "t1", .aggregate_id = "z", .payload = "{}"};
    CU_ASSERT_EQUAL(outbox_append(db, &bad_name, NULL, &why), -1);
    outbox_msg_t bus_own = {
        .topic = "replay:b1", .type = "order.placed", .tenant = "t1", .aggregate_id = "z", .payload = "{}"};
    CU_ASSERT_EQUAL(outbox_append(db, &bus_own, NULL, &why), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(why, "replay:"));
    free(big);
    ASSERT_OK(db_commit(db));
    db_close(db);
    /* an entry with fields missing, written straight to the stream */
    const char *raw[] = {"type", "order.placed", "payload", "{}"};
    bus_t *b = sut_bus(&s);
    if (memory) {
        ASSERT_OK(membus_add_raw(s.membus, "ecom:orders", raw, 2));
    } else {
        char *err = NULL;
        redisContext *rc = redis_connect_url(s.redis_url, 2000, &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
        redisReply *r = redisCommand(rc, "XADD ecom:orders * type order.placed payload {}");
        CU_ASSERT_PTR_NOT_NULL(r);
        freeReplyObject(r);
        redisFree(rc);
    }
    /* both groups exist before either service runs: the drainer trims what
     * every existing group has acknowledged (at its start too), and the raw
     * entry, not from the outbox, cannot be driven again to a group created
     * after that; under load one service dead-lettered and acknowledged it,
     * the drainer started and trimmed it, and only then did the other
     * service create its group (seen in both variants) */
    ASSERT_OK(bus_group_create(b, "ecom:orders", "b1"));
    ASSERT_OK(bus_group_create(b, "ecom:orders", "b2"));
    publish_orders(&s, 10, 2, 10, "order.paid");
    sut_start(&s, 1);
    for (int g = 0; g < 2; g++) {
        const char *group = g ? "b2" : "b1", *dlq = g ? "ecom:dlq:b2" : "ecom:dlq:b1";
        CU_ASSERT_TRUE(wait_inbox(&s, group, 20, 30000));
        bus_entry_t *ents = NULL;
        size_t n = 0;
        for (int i = 0; i < 100 && n < 3; i++) {
            bus_entries_free(ents, n);
            ents = NULL;
            n = 0;
            CU_ASSERT_EQUAL(bus_range(b, dlq, "-", "+", 0, &ents, &n), 0);
            if (n < 3)
                clock_sleep_ms(50);
        }
        CU_ASSERT_EQUAL(n, 3);
        int seen = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t f = 0; f < ents[i].nfields; f++) {
                if (strcmp(ents[i].fields[2 * f], "error") != 0)
                    continue;
                const char *v = ents[i].fields[2 * f + 1];
                seen |= strstr(v, "unparsable payload: trailing data") ? 1 : 0;
                seen |= strstr(v, "unknown type order.exploded") ? 2 : 0;
                seen |= strstr(v, "malformed entry: missing field id") ? 4 : 0;
            }
        CU_ASSERT_EQUAL(seen, 7);
        bus_entries_free(ents, n);
        check_applied(&s, group, 20);
    }
    /* nothing stays pending: applied and dead-lettered entries are all
     * acknowledged (those applied by the read-ahead thread, shortly after
     * their commit) */
    bus_stream_info_t info = {0};
    for (int i = 0; i < 40; i++) {
        CU_ASSERT_EQUAL_FATAL(bus_stream_info(b, "ecom:orders", &info), 0);
        if (info.ngroups == 2 && info.groups[0].pending == 0 && info.groups[1].pending == 0)
            break;
        clock_sleep_ms(50);
    }
    CU_ASSERT_EQUAL_FATAL(info.ngroups, 2);
    CU_ASSERT_EQUAL(info.groups[0].pending, 0);
    CU_ASSERT_EQUAL(info.groups[1].pending, 0);
    bus_close(b);
    sut_stop(&s);
}

static void test_bad_input_memory(void)
{
    bad_input(true);
}

static void test_bad_input_real(void)
{
    bad_input(false);
}

/* Two drainers side by side share the partitions and keep every aggregate in order. */
static void test_two_drainers_real(void)
{
    sut_t s;
    sut_init(&s, false, "twodrain");
    sut_add_service(&s, "d1", types_orders);
    publish_orders(&s, 5000, 100, 100, "order.placed");
    sut_start(&s, 2);
    publish_orders(&s, 5000, 100, 25, "order.paid");
    CU_ASSERT_TRUE(wait_inbox(&s, "d1", 10000, 120000));
    clock_sleep_ms(300);
    check_applied(&s, "d1", 10000);
    sut_stop(&s);
}

/* The drainers' own VACUUMs of bus.outbox (the metric). */
static uint64_t drainer_vacuums(void)
{
    return metrics_value(
        metrics_counter("ecom_outbox_vacuums_total", "VACUUMs of bus.outbox run by this drainer", ""));
}

/* bus.outbox's vacuum count, or -1. */
static long long outbox_vacuums(PGconn *c)
{
    PGresult *r = pg_query(c, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'bus.outbox'::regclass",
                           0, NULL);
    long long v = r && PQntuples(r) == 1 ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

/* A system whose drainer vacuums every 500 published rows and whose
 * bus.outbox has autovacuum off (so every VACUUM counted is a drainer's),
 * with one service, group; the test's own connection to its database. */
static PGconn *vacuum_sut(sut_t *s, const char *db, const char *group)
{
    sut_init(s, false, db);
    s->dopts.vacuum_rows = 500;
    sut_add_service(s, group, types_orders);
    char *err = NULL;
    PGconn *c = pg_connect(s->pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(pg_exec(c, "ALTER TABLE bus.outbox SET (autovacuum_enabled = off)"));
    return c;
}

/* The drainer vacuums bus.outbox itself every vacuum_rows published rows: a
 * fetch walks the index entries of removed rows until a vacuum takes them
 * away. */
static void test_drainer_vacuums_real(void)
{
    sut_t s;
    PGconn *c = vacuum_sut(&s, "drainvac", "v1");
    long long v0 = outbox_vacuums(c);
    uint64_t m0 = drainer_vacuums();
    publish_orders(&s, 3000, 30, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "v1", 3000, 60000));
    CU_ASSERT_TRUE(drainer_vacuums() > m0);
    long long v = v0;
    for (int i = 0; i < 100 && v <= v0; i++) { /* the statistics arrive a little later */
        clock_sleep_ms(50);
        v = outbox_vacuums(c);
    }
    CU_ASSERT_TRUE(v0 >= 0 && v > v0);
    check_applied(&s, "v1", 3000);
    sut_stop(&s);
    PQfinish(c);
}

/* Waits up to timeout_ms for ecom:orders to hold want entries. */
static bool wait_stream_len(bus_t *b, uint64_t want, int timeout_ms)
{
    bus_stream_info_t info = {0};
    for (int64_t end = clock_mono_ms() + timeout_ms; clock_mono_ms() < end; clock_sleep_ms(10))
        if (bus_stream_info(b, "ecom:orders", &info) == 0 && info.length >= want)
            return true;
    return false;
}

/* A row whose transaction carried no wake-up hint (an append inside another
 * one's throttle window that commits after the drainer looked, or one whose
 * hinted transaction rolled back) goes out without one: after rows came, the
 * drainer looks again after DRAIN_RECHECK_MS, doubling, long before its poll
 * interval (here a minute). */
static void test_drainer_rechecks_real(void)
{
    CU_ASSERT_EQUAL(drain_idle_wait_ms(0, 100), DRAIN_RECHECK_MS);
    CU_ASSERT_EQUAL(drain_idle_wait_ms(1, 100), 2 * DRAIN_RECHECK_MS);
    CU_ASSERT_EQUAL(drain_idle_wait_ms(3, 100), 8 * DRAIN_RECHECK_MS);
    CU_ASSERT_EQUAL(drain_idle_wait_ms(5, 100), 100);
    CU_ASSERT_EQUAL(drain_idle_wait_ms(30, 60000), 60000);
    CU_ASSERT_EQUAL(drain_idle_wait_ms(0, 1), 1);

    sut_t s;
    sut_init(&s, false, "drainrecheck");
    s.dopts.poll_ms = 60000;
    sut_start(&s, 1);
    bus_t *b = sut_bus(&s);
    db_t *db = sut_db(&s);
    /* the first row with a hint of its own (whatever the throttle says) */
    ASSERT_OK(db_begin(db));
    outbox_msg_t m = {
        .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = "order-h", .payload = "{\"n\":1}"};
    const char *why = NULL;
    ASSERT_OK(outbox_append(db, &m, NULL, &why));
    ASSERT_OK(pg_exec(db_pg(db), "NOTIFY ecom_outbox"));
    ASSERT_OK(db_commit(db));
    CU_ASSERT_TRUE_FATAL(wait_stream_len(b, 1, 10000));
    /* the second with none: the row as an append writes it, no NOTIFY */
    char id[UUID_STR_LEN], part[8], ts[24];
    uuid_v7(id);
    snprintf(part, sizeof part, "%d", outbox_partition_of("t1", "order-q"));
    snprintf(ts, sizeof ts, "%lld", (long long)clock_now_ms());
    const char *prm[] = {id, part, ts};
    PGresult *r = pg_query(db_pg(db),
                           "INSERT INTO bus.outbox (id, partition, tenant, aggregate_id, topic, type, seq, ts, payload)"
                           " VALUES ($1, $2, 't1', 'order-q', 'orders', 'order.placed', 1, $3, '{\"n\":2}')",
                           3, prm);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    PQclear(r);
    CU_ASSERT_TRUE(wait_stream_len(b, 2, 10000));
    db_close(db);
    bus_close(b);
    sut_stop(&s);
}

/* A drainer whose role does not own bus.outbox (least privilege: rights on
 * the rows only) drains as before and leaves the table to autovacuum: no
 * VACUUM of its own, which PostgreSQL would refuse with a warning. */
static void test_drainer_not_owner_real(void)
{
    sut_t s;
    PGconn *c = vacuum_sut(&s, "drainrole", "v2");
    char role[48], sql[512];
    snprintf(role, sizeof role, "t_drainer_%d", (int)getpid());
    snprintf(sql, sizeof sql,
             "DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN; GRANT USAGE ON SCHEMA bus TO %s;"
             " GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA bus TO %s;"
             " GRANT USAGE ON ALL SEQUENCES IN SCHEMA bus TO %s",
             role, role, role, role, role);
    ASSERT_OK(pg_exec(c, sql));
    /* the drainer connects as that role */
    char *url = xasprintf("%s%suser=%s", s.pg_url, strchr(s.pg_url, '?') ? "&" : "?", role);
    s.dopts.database_url = url;
    long long v0 = outbox_vacuums(c);
    uint64_t m0 = drainer_vacuums();
    publish_orders(&s, 3000, 30, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "v2", 3000, 60000));
    CU_ASSERT_EQUAL(drainer_vacuums(), m0); /* none tried */
    clock_sleep_ms(1500); /* statistics of a VACUUM, if one had run, would be in */
    CU_ASSERT_EQUAL(outbox_vacuums(c), v0);
    CU_ASSERT_EQUAL(q_ll(c, "SELECT count(*) FROM bus.outbox", NULL), 0);
    check_applied(&s, "v2", 3000);
    sut_stop(&s);
    snprintf(sql, sizeof sql, "DROP OWNED BY %s; DROP ROLE %s", role, role);
    ASSERT_OK(pg_exec(c, sql));
    PQfinish(c);
    free(url);
}

/* Drainers of another database on the same server neither count towards this
 * database's fair share nor hold its partitions: every row is drained. */
static void test_foreign_drainer_real(void)
{
    sut_t foreign;
    sut_init(&foreign, false, "foreign");
    sut_start(&foreign, 2);
    sut_t s;
    sut_init(&s, false, "own");
    sut_add_service(&s, "o1", types_orders);
    clock_sleep_ms(1500); /* the foreign drainers have registered */
    publish_orders(&s, 1000, 200, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "o1", 1000, 15000));
    check_applied(&s, "o1", 1000);
    sut_stop(&s);
    sut_stop(&foreign);
}

static int late_groups(const char *topic, const char **out, int max)
{
    (void)topic;
    static const char *const g[] = {"early", "late"};
    int n = 0;
    for (; n < 2 && n < max; n++)
        out[n] = g[n];
    return n;
}

/* Groups "early" and "late" on orders, the stream trimmed every 200 ms;
 * only "early" runs, and has applied n messages. */
static void early_only(sut_t *s, bool memory, const char *name, int n)
{
    sut_init(s, memory, name);
    s->dopts.groups_for_topic = late_groups;
    s->dopts.trim_interval_ms = 200;
    sut_add_service(s, "early", types_orders);
    publish_orders(s, n, 10, 50, "order.placed");
    sut_start(s, 1);
    CU_ASSERT_TRUE(wait_inbox(s, "early", (uint64_t)n, 30000));
}

/* Service "late" starts now. */
static void late_joins(sut_t *s)
{
    int i = s->nsvc;
    sut_add_service(s, "late", types_orders);
    svc_arg_t *a = xmalloc(sizeof *a);
    *a = (svc_arg_t){s, i};
    pthread_create(&s->svc_th[i], NULL, svc_thread, a);
}

/* A service that starts after the stream has been trimmed still gets every
 * message: the drainer creates the topic's groups before the first publish. */
static void late_subscriber(bool memory)
{
    sut_t s;
    early_only(&s, memory, "late", 500);
    clock_sleep_ms(600); /* trimming ran behind "early" */
    late_joins(&s);
    CU_ASSERT_TRUE(wait_inbox(&s, "late", 500, 30000));
    check_applied(&s, "late", 500);
    sut_stop(&s);
}

/* Redis loses the topic's stream and its groups; the running service makes
 * its group again and reads on, while the other service of the topic is
 * down. The drainer's trim must not take what that group never read: it
 * makes the topic's missing groups before it trims. The late service then
 * gets every message published after the loss (what Redis lost is
 * `ecomctl redrive`'s). */
static void lost_groups(bool memory)
{
    sut_t s;
    early_only(&s, memory, "lost_groups", 100);
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_delete_stream(b, "ecom:orders"));
    bus_close(b);
    publish_orders(&s, 300, 10, 50, "order.placed");
    CU_ASSERT_TRUE(wait_inbox(&s, "early", 400, 30000));
    clock_sleep_ms(800); /* trimming ran behind "early" */
    late_joins(&s);
    CU_ASSERT_TRUE(wait_inbox(&s, "late", 300, 15000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(inbox_n(&s, "late"), 300);
    sut_stop(&s);
}

static void test_lost_groups_memory(void)
{
    lost_groups(true);
}

static void test_lost_groups_real(void)
{
    lost_groups(false);
}

/* Rows of t_k, as "a,b,..." ("" when none). */
static void defer_rows(PGconn *c, char *buf, size_t cap)
{
    PGresult *r = pg_query(c, "SELECT coalesce(string_agg(k, ',' ORDER BY k), '') FROM t_k", 0, NULL);
    snprintf(buf, cap, "%s", r && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?");
    PQclear(r);
}

/* Inserts k into t_k with prepared statement `bit`: true when it did. */
static bool defer_insert(db_t *db, int bit, const char *k)
{
    PGresult *r = db_exec_prepared(db, bit, 1, (const char *const[]){k});
    PQclear(r);
    return r != NULL;
}

/* In a transaction of its own: a savepoint, `dropped` inserted and taken back
 * to it, `kept` inserted, then the commit. */
static void savepoint_drop_keep(db_t *db, bool (*insert)(db_t *, int, const char *), int bit, const char *dropped,
                                const char *kept)
{
    ASSERT_OK(db_begin(db));
    ASSERT_OK(db_savepoint(db));
    CU_ASSERT_TRUE(insert(db, bit, dropped));
    db_rollback_to(db);
    CU_ASSERT_TRUE(insert(db, bit, kept));
    ASSERT_OK(db_commit(db));
}

/* A fresh database dbname with table t_k (k text PRIMARY KEY): a handle on
 * it, and a second connection (*watch) that sees only what was committed
 * (defer_rows). */
static db_t *db_and_watch(const char *dbname, PGconn **watch)
{
    const char *url = test_pg_db(dbname, true);
    char *err = NULL;
    db_t *db = db_open_pg(url, "test-db", &err);
    free(err);
    err = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    *watch = pg_connect(url, "test-db-watch", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(*watch);
    ASSERT_OK(pg_exec(db_pg(db), "CREATE TABLE t_k (k text PRIMARY KEY)"));
    return db;
}

/* db_begin sends nothing: BEGIN goes with the transaction's first statement,
 * in one pipeline, whichever way that statement goes (prepared, unnamed, or
 * through db_pg), and the transaction is a transaction all the same. */
static void test_deferred_begin_real(void)
{
    PGconn *watch = NULL;
    db_t *db = db_and_watch("deferbegin", &watch);
    const char *ins = "INSERT INTO t_k (k) VALUES ($1)";
    enum { BIT = DB_STMT_MAX - 1 }; /* no module's */
    char rows[64];

    /* unnamed first statement, rolled back */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE); /* nothing sent yet */
    PGresult *r = db_exec_params_bin(db, ins, 1, (const char *const[]){"a"}, NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL(r);
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_INTRANS);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, ""); /* not committed: invisible elsewhere */
    db_rollback(db);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "");

    /* prepared first statement, committed */
    ASSERT_OK(db_begin(db));
    ASSERT_OK(db_prepare(db, BIT, ins, 1));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE); /* preparing needs no transaction */
    CU_ASSERT_TRUE(defer_insert(db, BIT, "a"));
    ASSERT_OK(db_commit(db));
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a");

    /* a failing first statement: its error comes back, the transaction is
     * aborted, rolls back, and the connection serves the next one */
    ASSERT_OK(db_begin(db));
    r = db_exec_prepared_bin(db, BIT, 1, (const char *const[]){"a"}, NULL, NULL, "23505");
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_STRING_EQUAL(pg_last_sqlstate(), "23505");
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_INERROR);
    CU_ASSERT_EQUAL(PQpipelineStatus(db->pgc), PQ_PIPELINE_OFF);
    db_rollback(db);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);

    /* statements of one's own through db_pg are inside the transaction */
    ASSERT_OK(db_begin(db));
    r = pg_query(db_pg(db), ins, 1, (const char *const[]){"b"});
    CU_ASSERT_PTR_NOT_NULL(r);
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_INTRANS);
    db_rollback(db);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a");

    /* a savepoint first, then statements: one taken back, one kept */
    savepoint_drop_keep(db, defer_insert, BIT, "c", "d");
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,d");

    /* a transaction that ran nothing costs nothing and commits */
    ASSERT_OK(db_begin(db));
    ASSERT_OK(db_commit(db));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);

    /* the backend goes away before the first statement: it fails, the
     * connection is given up, db_ensure connects again and work goes on */
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(db->pgc));
    CU_ASSERT_EQUAL(q_ll(watch, "SELECT count(*) FILTER (WHERE pg_terminate_backend($1::int)) FROM (SELECT 1) o", pid),
                    1);
    clock_sleep_ms(100);
    ASSERT_OK(db_begin(db));
    CU_ASSERT_FALSE(defer_insert(db, BIT, "e"));
    CU_ASSERT_FALSE(pg_alive(db->pgc));
    db_rollback(db);
    ASSERT_OK(db_ensure(db));
    ASSERT_OK(db_begin(db));
    ASSERT_OK(db_prepare(db, BIT, ins, 1));
    CU_ASSERT_TRUE(defer_insert(db, BIT, "f"));
    ASSERT_OK(db_commit(db));
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,d,f");

    PQfinish(watch);
    db_close(db);
}

/* Holds back (db_defer) an insert of k into t_k: true when it is held. */
static bool held_insert(db_t *db, int bit, const char *k)
{
    return db_defer(db, bit, "INSERT INTO t_k (k) VALUES ($1)", 1, (const char *const[]){k}, NULL, NULL,
                    "23505") == 0;
}

/* The first notification on watch's channels within ms: its payload into
 * buf ("" and false when none came). */
static bool next_notification(PGconn *watch, int ms, char *buf, size_t cap)
{
    buf[0] = '\0';
    int64_t end = clock_mono_ms() + ms;
    for (;;) {
        PQconsumeInput(watch);
        PGnotify *n = PQnotifies(watch);
        if (n) {
            snprintf(buf, cap, "%s", n->extra);
            PQfreemem(n);
            return true;
        }
        int64_t left = end - clock_mono_ms();
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = PQsocket(watch), .events = POLLIN};
        (void)poll(&p, 1, (int)left);
    }
}

/* db_after_commit: the statement runs once the transaction committed, in a
 * transaction of its own (another txid than the data's: a NOTIFY inside the
 * data's transaction would carry its txid), in the COMMIT's round trip,
 * with or without held writes; never after a rollback or a failed commit;
 * its own failure is not the commit's. */
static void test_after_commit_real(void)
{
    PGconn *watch = NULL;
    db_t *db = db_and_watch("aftercommit", &watch);
    ASSERT_OK(pg_exec(watch, "LISTEN t_hint"));
    static const char hint[] =
        "SELECT set_config('synchronous_commit', 'off', true), pg_notify('t_hint', txid_current()::text)";
    enum { BIT = DB_STMT_MAX - 2 }; /* no module's */
    char rows[64], got[32];

    /* with a held write: the data's transaction and the hint's are two */
    ASSERT_OK(db_begin(db));
    PGresult *r = db_exec_params_bin(db, "SELECT txid_current()::text", 0, NULL, NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    char data_txid[32];
    snprintf(data_txid, sizeof data_txid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    CU_ASSERT_TRUE(held_insert(db, BIT, "a"));
    db_after_commit(db, hint);
    ASSERT_OK(db_commit(db));
    CU_ASSERT_TRUE(next_notification(watch, 5000, got, sizeof got));
    CU_ASSERT_TRUE(got[0] != '\0' && strcmp(got, data_txid) != 0);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a");

    /* without held writes */
    ASSERT_OK(db_begin(db));
    r = db_exec_params_bin(db, "INSERT INTO t_k (k) VALUES ('b')", 0, NULL, NULL, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL(r);
    PQclear(r);
    db_after_commit(db, hint);
    ASSERT_OK(db_commit(db));
    CU_ASSERT_TRUE(next_notification(watch, 5000, got, sizeof got));

    /* rolled back, or failed at the commit (a held duplicate): no hint */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "c"));
    db_after_commit(db, hint);
    db_rollback(db);
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "a"));
    db_after_commit(db, hint);
    CU_ASSERT_EQUAL(db_commit(db), -1);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);
    /* a transaction with no hint asked for sends none either */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "d"));
    ASSERT_OK(db_commit(db));
    CU_ASSERT_FALSE(next_notification(watch, 300, got, sizeof got));

    /* a failing statement after the commit: the commit stands */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "e"));
    db_after_commit(db, "SELECT 1 / 0");
    ASSERT_OK(db_commit(db));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(PQpipelineStatus(db->pgc), PQ_PIPELINE_OFF);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b,d,e");
    db_close(db);
    PQfinish(watch);
}

/* db_defer holds writes back until the next round trip: they go with the
 * COMMIT, a statement, a savepoint's release or db_pg, in order, in the
 * transaction; one that fails fails that step with its own SQLSTATE, and
 * nothing of the transaction commits. */
static void test_held_writes_real(void)
{
    PGconn *watch = NULL;
    db_t *db = db_and_watch("heldwrites", &watch);
    enum { BIT = DB_STMT_MAX - 2 }; /* no module's */
    char rows[64];

    /* two held writes go with the COMMIT */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "a"));
    CU_ASSERT_TRUE(held_insert(db, BIT, "b"));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE); /* nothing sent yet, not even BEGIN */
    ASSERT_OK(db_commit(db));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b");

    /* one fails at the COMMIT: its SQLSTATE, nothing committed, no
     * transaction left open, the connection serves the next one */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "c"));
    CU_ASSERT_TRUE(held_insert(db, BIT, "a"));
    CU_ASSERT_EQUAL(db_commit(db), -1);
    CU_ASSERT_STRING_EQUAL(pg_last_sqlstate(), "23505");
    CU_ASSERT_TRUE(pg_alive(db->pgc));
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);
    CU_ASSERT_EQUAL(PQpipelineStatus(db->pgc), PQ_PIPELINE_OFF);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b");

    /* a statement after a held write runs after it, in the transaction */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "d"));
    PGresult *r = db_exec_params_bin(db, "SELECT count(*) FROM t_k", 0, NULL, NULL, NULL, NULL);
    CU_ASSERT_TRUE(r && strcmp(PQgetvalue(r, 0, 0), "3") == 0);
    CU_ASSERT_FALSE(db->held_failed);
    PQclear(r);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_INTRANS);
    db_rollback(db);
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b");

    /* ... and fails with it when it fails, with the held write's SQLSTATE */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "b"));
    r = db_exec_params_bin(db, "SELECT 1", 0, NULL, NULL, NULL, NULL);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_TRUE(db->held_failed); /* the statement did not run: the 23505 is the held write's */
    CU_ASSERT_STRING_EQUAL(pg_last_sqlstate(), "23505");
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_INERROR);
    db_rollback(db);
    CU_ASSERT_EQUAL(PQtransactionStatus(db->pgc), PQTRANS_IDLE);

    /* savepoints: the writes before one go with SAVEPOINT, those after it
     * with RELEASE; a failure there leaves the savepoint to roll back to,
     * and what came before it commits */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "e"));
    ASSERT_OK(db_savepoint(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "f"));
    CU_ASSERT_TRUE(held_insert(db, BIT, "a"));
    CU_ASSERT_EQUAL(db_release(db), -1);
    CU_ASSERT_STRING_EQUAL(pg_last_sqlstate(), "23505");
    CU_ASSERT_TRUE(pg_alive(db->pgc));
    db_rollback_to(db);
    ASSERT_OK(db_savepoint(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "g"));
    ASSERT_OK(db_release(db));
    ASSERT_OK(db_commit(db));
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b,e,g");

    /* taken back: a rollback to a savepoint and a rollback drop what is held */
    savepoint_drop_keep(db, held_insert, BIT, "h", "i");
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "j"));
    db_rollback(db);
    ASSERT_OK(db_begin(db));
    ASSERT_OK(db_commit(db)); /* nothing held is left to send */
    defer_rows(watch, rows, sizeof rows);
    CU_ASSERT_STRING_EQUAL(rows, "a,b,e,g,i");

    /* db_pg sends them before handing out the connection */
    ASSERT_OK(db_begin(db));
    CU_ASSERT_TRUE(held_insert(db, BIT, "k"));
    r = pg_query(db_pg(db), "SELECT count(*) FROM t_k WHERE k = 'k'", 0, NULL);
    CU_ASSERT_TRUE(r && strcmp(PQgetvalue(r, 0, 0), "1") == 0);
    PQclear(r);
    db_rollback(db);

    /* memory has nothing to hold back */
    memstore_t *ms = memstore_new();
    db_t *mdb = db_open_memory(ms);
    ASSERT_OK(db_begin(mdb));
    CU_ASSERT_EQUAL(db_defer(mdb, BIT, "SELECT 1", 0, NULL, NULL, NULL, NULL), -1);
    db_rollback(mdb);
    db_close(mdb);
    memstore_free(ms);

    PQfinish(watch);
    db_close(db);
}

/* The whole stream delivered again (the group rewound, as after a broker
 * restore) while new messages arrive: batches of applied ids, and the one
 * mixing applied and new ids, apply only the new ones, once and in order. */
static void redelivered(bool held_inbox)
{
    sut_t s;
    sut_init(&s, false, held_inbox ? "redeliver_held" : "redeliver");
    s.dopts.trim_interval_ms = 3600000; /* keep the entries, to deliver them again */
    s.batch_handler = held_inbox;
    sut_add_service(&s, "g1", types_orders);
    s.defs[0].statement_first = held_inbox; /* record_batch's insert goes before anything else */
    publish_orders(&s, 1000, 20, 100, "order.placed");
    sut_start(&s, 1);
    CU_ASSERT_TRUE(wait_inbox(&s, "g1", 1000, 30000));
    metric_t *dups =
        metrics_counter("ecom_service_duplicates_total", "Deliveries skipped by the inbox", "group=\"g1\"");
    uint64_t dup0 = metrics_value(dups);
    char *err = NULL;
    redisContext *rc = redis_connect_url(s.redis_url, 2000, &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    redisReply *r = redisCommand(rc, "XGROUP SETID ecom:orders g1 0");
    CU_ASSERT_TRUE(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(rc);
    publish_orders(&s, 1000, 20, 100, "order.paid");
    CU_ASSERT_TRUE(wait_inbox(&s, "g1", 2000, 30000));
    int64_t end = clock_mono_ms() + 30000;
    while (metrics_value(dups) - dup0 < 1000 && clock_mono_ms() < end)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(metrics_value(dups) - dup0, 1000);
    check_applied(&s, "g1", 2000);
    sut_stop(&s);
}

static void test_redelivered_real(void)
{
    redelivered(false);
}

/* The same with a batch handler whose inbox insert is held back to go with
 * its first statement: the copies fail that statement, and the slow pass
 * applies only the new ids. */
static void test_redelivered_held_real(void)
{
    redelivered(true);
}

/* With three rows past a one-hour window, a cleanup of at most two a call
 * takes two, then one, then none. */
static void three_old_in_steps_of_two(db_t *db, int (*cleanup)(db_t *, int64_t, size_t, size_t *))
{
    static const size_t want[] = {2, 1, 0};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(want); i++) {
        size_t gone = 99;
        ASSERT_OK(cleanup(db, 3600, 2, &gone));
        CU_ASSERT_EQUAL(gone, want[i]);
    }
}

/* Inbox cleanup removes ids older than the window, at most limit a call,
 * and keeps the recent ones. */
static void test_inbox_cleanup_real(void)
{
    sut_t s;
    sut_init(&s, false, "inboxclean");
    db_t *db = sut_db(&s);
    static const char *const ids[] = {"0190a000-0000-7000-8000-000000000001", "0190a000-0000-7000-8000-000000000002",
                                      "0190a000-0000-7000-8000-000000000003", "0190a000-0000-7000-8000-000000000004",
                                      "0190a000-0000-7000-8000-000000000005"};
    ASSERT_OK(db_begin(db));
    for (size_t i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(inbox_record(db, "g", ids[i]), 1);
    ASSERT_OK(db_commit(db));
    ASSERT_OK(pg_exec(db_pg(db), "UPDATE bus.inbox SET received_at = now() - interval '2 hours'"));
    ASSERT_OK(db_begin(db));
    for (size_t i = 3; i < 5; i++)
        CU_ASSERT_EQUAL(inbox_record(db, "g", ids[i]), 1);
    ASSERT_OK(db_commit(db));
    three_old_in_steps_of_two(db, inbox_cleanup);
    uint64_t left = 0;
    ASSERT_OK(inbox_count(db, "g", &left));
    CU_ASSERT_EQUAL(left, 2);
    ASSERT_OK(db_begin(db)); /* the recent ones are still seen */
    CU_ASSERT_EQUAL(inbox_record(db, "g", ids[4]), 0);
    ASSERT_OK(db_commit(db));
    db_close(db);
    sut_stop(&s);
}

/* In memory (`ecom all` without a database) a service's janitor deletes old
 * inbox ids too: its first pass runs as the service starts. */
static void test_inbox_cleanup_memory(void)
{
    sut_t s;
    sut_init(&s, true, NULL);
    db_t *db = db_open_memory(s.mem);
    static const char *const ids[] = {"0190a000-0000-7000-8000-000000000011", "0190a000-0000-7000-8000-000000000012",
                                      "0190a000-0000-7000-8000-000000000013", "0190a000-0000-7000-8000-000000000014",
                                      "0190a000-0000-7000-8000-000000000015"};
    clock_fake_set_ms(clock_now_ms() - 2 * 3600 * 1000); /* three received two hours ago */
    ASSERT_OK(db_begin(db));
    for (size_t i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(inbox_record(db, "g1", ids[i]), 1);
    ASSERT_OK(db_commit(db));
    clock_fake_set_ms(0);
    ASSERT_OK(db_begin(db));
    for (size_t i = 3; i < 5; i++)
        CU_ASSERT_EQUAL(inbox_record(db, "g1", ids[i]), 1);
    ASSERT_OK(db_commit(db));
    sut_add_service(&s, "g1", types_orders); /* inbox_retain_s 3600 */
    sut_start(&s, 0);
    uint64_t left = 5;
    for (int64_t end = clock_mono_ms() + 10000; left != 2 && clock_mono_ms() < end; clock_sleep_ms(20))
        ASSERT_OK(inbox_count(db, "g1", &left));
    CU_ASSERT_EQUAL(left, 2);
    ASSERT_OK(db_begin(db)); /* the recent ones are still seen */
    CU_ASSERT_EQUAL(inbox_record(db, "g1", ids[4]), 0);
    ASSERT_OK(db_commit(db));
    db_close(db);
    sut_stop(&s);
}

/* Entries of stream delivered to group and not acknowledged (XPENDING's count). */
static long long pending_count(redisContext *rc, const char *stream, const char *group)
{
    redisReply *x = redisCommand(rc, "XPENDING %s %s", stream, group);
    long long n = x && x->type == REDIS_REPLY_ARRAY && x->elements >= 1 && x->element[0]->type == REDIS_REPLY_INTEGER
                      ? x->element[0]->integer
                      : -1;
    if (x)
        freeReplyObject(x);
    return n;
}

static bool pending_becomes(redisContext *rc, const char *stream, const char *group, long long want)
{
    for (int i = 0; i < 200; i++) {
        if (pending_count(rc, stream, group) == want)
            return true;
        clock_sleep_ms(10);
    }
    return false;
}

static void reader_ack_first(svc_reader_t *r, const bus_batch_t *bt)
{
    char(*ids)[BUS_ID_MAX] = xmalloc(sizeof *ids);
    memcpy(ids[0], bt->msgs[0].entry_id, BUS_ID_MAX);
    reader_ack(r, bt->msgs[0].stream, ids, 1);
}

/* The read-ahead's acknowledgements (services/reader.h): they wait for the
 * next read to go with it; reader_idle sends them when the runtime waits
 * instead; a send that failed (the connection was dropped) is tried again by
 * reader_wait_acks. */
static void test_reader_acks_real(void)
{
    const char *url = test_redis_private(); /* its clients are dropped below: no other test's */
    char *err = NULL;
    redisContext *rc = redis_connect_url(url, 2000, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    const char *s = "ecom:readeracks";
    freeReplyObject(redisCommand(rc, "XGROUP CREATE %s g $ MKSTREAM", s));
    for (int i = 0; i < 3; i++)
        freeReplyObject(redisCommand(rc, "XADD %s * type x", s));
    svc_reader_t *r = reader_start(url, "g", "c1", NULL, false, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    const char *streams[] = {s};
    bus_batch_t bt = {0};
    reader_parsed_t parsed = {0};
    reader_request(r, streams, 1, 1, 0);
    ASSERT_OK(reader_take(r, &bt, &parsed));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);

    /* a read finished and not taken yet: the acknowledgement waits for the
     * take and the next request... */
    reader_request(r, streams, 1, 1, 0);
    clock_sleep_ms(50);
    reader_ack_first(r, &bt);
    clock_sleep_ms(100);
    CU_ASSERT_EQUAL(pending_count(rc, s, "g"), 2);
    /* ...unless the runtime waits instead */
    reader_idle(r);
    CU_ASSERT_TRUE(pending_becomes(rc, s, "g", 1));

    /* the next acknowledgement goes with the next read */
    ASSERT_OK(reader_take(r, &bt, &parsed));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    reader_ack_first(r, &bt);
    reader_request(r, streams, 1, 1, 0);
    ASSERT_OK(reader_take(r, &bt, &parsed));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_EQUAL(pending_count(rc, s, "g"), 1); /* the third only */

    /* a send that fails is tried again when someone waits for it */
    reader_ack_first(r, &bt);
    redisReply *x = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    CU_ASSERT_TRUE(x && x->type == REDIS_REPLY_INTEGER && x->integer >= 1);
    if (x)
        freeReplyObject(x);
    reader_idle(r);
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(pending_count(rc, s, "g"), 1);
    CU_ASSERT_EQUAL(reader_wait_acks(r, 2000), 0);
    CU_ASSERT_EQUAL(pending_count(rc, s, "g"), 0);
    reader_stop(r);
    bus_batch_free(&bt);
    reader_parsed_free(&parsed);
    redisFree(rc);
}

/* The re-drive window's cleanup removes rows published before the window,
 * oldest first, at most limit a call, and keeps the recent ones. */
static void test_published_cleanup_real(void)
{
    sut_t s;
    sut_init(&s, false, "pubclean");
    db_t *db = sut_db(&s);
    ASSERT_OK(pg_exec(db_pg(db), "INSERT INTO bus.outbox_published (pos, id, partition, topic, type, tenant,"
                              " aggregate_id, seq, ts, v, traceparent, request_id, payload, published_at)"
                              " SELECT n, gen_random_uuid(), 0, 'orders', 'order.placed', 't1', 'order-1', n, 0, 1,"
                              " '', '', '{}', CASE WHEN n <= 3 THEN now() - interval '2 hours' ELSE now() END"
                              " FROM generate_series(1, 5) n"));
    three_old_in_steps_of_two(db, outbox_cleanup);
    PGresult *r = pg_query(db_pg(db), "SELECT string_agg(pos::text, ',' ORDER BY pos) FROM bus.outbox_published", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "4,5");
    PQclear(r);
    db_close(db);
    sut_stop(&s);
}

/* A cleanup that waits for the lock the test holds on test_locked, twice:
 * like the gateway's, it goes on to its next statement after one failed. */
static int locked_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    (void)retain_s;
    (void)limit;
    *deleted = 0;
    int first = pg_exec(db_pg(db), "DELETE FROM test_locked");
    int second = pg_exec(db_pg(db), "DELETE FROM test_locked");
    return first || second ? -1 : 0;
}

static void *stop_janitor(void *arg)
{
    janitor_stop(arg);
    return NULL;
}

/* janitor_stop cancels the cleanup in progress, each of its statements: a
 * cleanup waiting on a lock does not hold the process's shutdown until the
 * lock is free (before, it waited as long as the lock was held). */
static void test_janitor_stop_cancels_real(void)
{
    sut_t s;
    sut_init(&s, false, "janitor_cancel");
    db_t *db = sut_db(&s);
    char *err = NULL;
    PGconn *watch = pg_connect(s.pg_url, "test-watch", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(watch);
    ASSERT_OK(pg_exec(db_pg(db), "CREATE TABLE test_locked (x int)"));
    ASSERT_OK(pg_exec(db_pg(db), "BEGIN"));
    ASSERT_OK(pg_exec(db_pg(db), "LOCK TABLE test_locked IN ACCESS EXCLUSIVE MODE"));
    janitor_t *j = janitor_start(&(janitor_opts_t){.database_url = s.pg_url,
                                                   .app_name = "test-janitor-cancel",
                                                   .what = "test_locked",
                                                   .cleanup = locked_cleanup,
                                                   .every_ms = 60000});
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    const char *app = "test-janitor-cancel";
    CU_ASSERT_EQUAL(q_wait(watch,
                           "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                           " AND wait_event_type = 'Lock'",
                           app, 1, 20000),
                    1);
    pthread_t th;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, stop_janitor, j), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 30; /* a bound on a hang, not a time measured: the lock is held until after it */
    int joined = pthread_timedjoin_np(th, NULL, &until);
    CU_ASSERT_EQUAL(joined, 0);
    ASSERT_OK(pg_exec(db_pg(db), "ROLLBACK"));
    if (joined != 0)
        pthread_join(th, NULL);
    /* its connection is closed (the backend leaves the view as it exits) */
    CU_ASSERT_EQUAL(q_wait(watch, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app, 0, 20000),
                    0);
    PQfinish(watch);
    db_close(db);
    sut_stop(&s);
}

static long long published_rows(db_t *db)
{
    PGresult *r = pg_query(db_pg(db), "SELECT count(*) FROM bus.outbox_published", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    long long n = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

/* The janitor's pass deletes chunk after chunk until the table is caught
 * up: 12,000 old rows go in one pass of chunks of 5,000 (one chunk a pass
 * left 7,000 until the next), the window's young rows stay, and a janitor
 * that is off deletes nothing. */
static void test_janitor_catches_up_real(void)
{
    sut_t s;
    sut_init(&s, false, "janitor");
    db_t *db = sut_db(&s);
    ASSERT_OK(pg_exec(db_pg(db), "INSERT INTO bus.outbox_published (pos, id, partition, topic, type, tenant,"
                                 " aggregate_id, seq, ts, v, traceparent, request_id, payload, published_at)"
                                 " SELECT n, gen_random_uuid(), 0, 'orders', 'order.placed', 't1', 'order-1', n, 0, 1,"
                                 " '', '', '{}', CASE WHEN n <= 12000 THEN now() - interval '2 hours' ELSE now() END"
                                 " FROM generate_series(1, 12005) n"));
    atomic_bool on = false;
    janitor_opts_t o = {.database_url = s.pg_url,
                        .app_name = "test-janitor",
                        .what = "bus.outbox_published",
                        .cleanup = outbox_cleanup,
                        .retain_s = 3600,
                        .every_ms = 60000,
                        .on = &on};
    CU_ASSERT_EQUAL(test_janitor_pass(&o), 0);
    CU_ASSERT_EQUAL(published_rows(db), 12005);
    atomic_store(&on, true);
    CU_ASSERT_EQUAL(test_janitor_pass(&o), 12000);
    PGresult *r =
        pg_query(db_pg(db), "SELECT string_agg(pos::text, ',' ORDER BY pos) FROM bus.outbox_published", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "12001,12002,12003,12004,12005");
    PQclear(r);
    CU_ASSERT_PTR_NULL(janitor_start(&(janitor_opts_t){.cleanup = outbox_cleanup, .every_ms = 1000}));
    db_close(db);
    sut_stop(&s);
}

/* Rows of table a cleanup (limit 100, nothing old) read. */
static long long cleanup_reads(db_t *db, const char *table, int (*cleanup)(db_t *, int64_t, size_t, size_t *))
{
    long long before = test_rows_read(db, table);
    size_t gone = 99;
    ASSERT_OK(cleanup(db, 3600, 100, &gone));
    CU_ASSERT_EQUAL(gone, 0);
    return test_rows_read(db, table) - before;
}

/* With nothing old, a cleanup on the janitor's connection
 * (generic plans, db_index_scans_only) reads about its limit of rows (100
 * here), not the 20,000 young ones: a generic plan takes a third of the
 * table to be old, and a plan made for that (the primary key in order, the
 * cutoff as a filter) read every row once every cleanup. */
static void test_cleanup_bounded_real(void)
{
    sut_t s;
    sut_init(&s, false, "cleanbound");
    db_t *db = sut_db(&s);
    ASSERT_OK(db_index_scans_only(db));
    ASSERT_OK(pg_exec(db_pg(db), "INSERT INTO bus.outbox_published (pos, id, partition, topic, type, tenant,"
                                 " aggregate_id, seq, ts, v, traceparent, request_id, payload)"
                                 " SELECT n, gen_random_uuid(), 0, 'orders', 'order.placed', 't1', 'order-1', n, 0, 1,"
                                 " '', '', '{}' FROM generate_series(1, 20000) n"));
    ASSERT_OK(pg_exec(db_pg(db), "INSERT INTO bus.inbox (grp, id) SELECT 'g', gen_random_uuid()"
                                 " FROM generate_series(1, 20000)"));
    /* as autovacuum leaves them: statistics, block ranges summarized */
    ASSERT_OK(pg_exec(db_pg(db), "ANALYZE bus.outbox_published, bus.inbox"));
    ASSERT_OK(pg_exec(db_pg(db), "SELECT brin_summarize_new_values('bus.inbox_received_at'),"
                                 " brin_summarize_new_values('bus.outbox_published_at')"));
    long long pub = cleanup_reads(db, "bus.outbox_published", outbox_cleanup);
    long long inbox = cleanup_reads(db, "bus.inbox", inbox_cleanup);
    CU_ASSERT_TRUE(pub >= 0 && pub <= 1000);
    CU_ASSERT_TRUE(inbox >= 0 && inbox <= 1000);
    if (pub > 1000 || inbox > 1000)
        fprintf(stderr, "cleanup read %lld rows of bus.outbox_published, %lld of bus.inbox\n", pub, inbox);
    db_close(db);
    sut_stop(&s);
}

static void test_late_subscriber_memory(void)
{
    late_subscriber(true);
}

static void test_late_subscriber_real(void)
{
    late_subscriber(false);
}

/* ---- the drainer's overlapped step (outbox_step_*) ---- */

static void append_one(db_t *db, const char *agg, int k)
{
    char payload[32];
    snprintf(payload, sizeof payload, "{\"k\":%d}", k);
    outbox_msg_t m = {
        .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = agg, .payload = payload};
    const char *why = NULL;
    ASSERT_OK(db_begin(db));
    ASSERT_OK(outbox_append(db, &m, NULL, &why));
    ASSERT_OK(db_commit(db));
}

static void step(db_t *db, outbox_step_t *st, const int64_t *done, size_t ndone, const outbox_step_t *inflight,
                 size_t limit)
{
    int parts[OUTBOX_PARTITIONS];
    for (int p = 0; p < OUTBOX_PARTITIONS; p++)
        parts[p] = p;
    int64_t skip[64];
    size_t nskip = inflight ? inflight->n : 0;
    for (size_t i = 0; i < nskip; i++)
        skip[i] = inflight->rows[i].pos;
    ASSERT_OK(outbox_step_send(db, st, done, ndone, false, parts, OUTBOX_PARTITIONS, skip, nskip, limit));
    ASSERT_OK(outbox_step_wait(db, st));
    CU_ASSERT_TRUE(st->removed);
}

static int payload_k(const outbox_row_t *r)
{
    int k = -1;
    CU_ASSERT_EQUAL(sscanf(r->env.payload, "{\"k\":%d}", &k), 1);
    return k;
}

static void outbox_steps(bool memory)
{
    memstore_t *mem = NULL;
    db_t *db, *late = NULL;
    if (memory) {
        mem = memstore_new();
        db = db_open_memory(mem);
    } else {
        const char *url = test_pg_db("bb_step", true);
        char *err = NULL;
        db = db_open_pg(url, "test", &err);
        late = db_open_pg(url, "test-late", &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(late);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    for (int k = 0; k < 6; k++)
        append_one(db, k % 2 ? "a" : "b", k);
    outbox_step_t s1, s2, s3;
    step(db, &s1, NULL, 0, NULL, 3);
    CU_ASSERT_EQUAL_FATAL(s1.n, 3);
    for (size_t i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(payload_k(&s1.rows[i]), (int)i);
    /* while s1 is "being published": the next rows, not s1's */
    step(db, &s2, NULL, 0, &s1, 3);
    CU_ASSERT_EQUAL_FATAL(s2.n, 3);
    for (size_t i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(payload_k(&s2.rows[i]), (int)i + 3);
    /* a transaction that took its position first commits last: it is not skipped */
    const char *why = NULL;
    outbox_msg_t m = {
        .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = "c", .payload = "{\"k\":6}"};
    if (late) {
        ASSERT_OK(db_begin(late));
        ASSERT_OK(outbox_append(late, &m, NULL, &why));
    }
    append_one(db, "d", 7);
    if (late)
        ASSERT_OK(db_commit(late));
    /* s1 went out: removed in the same round trip that fetches past s2 */
    int64_t done[3];
    for (size_t i = 0; i < 3; i++)
        done[i] = s1.rows[i].pos;
    step(db, &s3, done, 3, &s2, 10);
    CU_ASSERT_EQUAL_FATAL(s3.n, late ? 2 : 1);
    if (late)
        CU_ASSERT_EQUAL(payload_k(&s3.rows[0]), 6);
    CU_ASSERT_EQUAL(payload_k(&s3.rows[s3.n - 1]), 7);
    /* the connection is usable again, and s1's rows are gone */
    uint64_t pending = 0, dead = 0;
    int64_t oldest = 0;
    ASSERT_OK(outbox_stats(db, &pending, &oldest, &dead));
    CU_ASSERT_EQUAL(pending, late ? 5 : 4);
    outbox_step_free(&s1);
    outbox_step_free(&s2);
    outbox_step_free(&s3);
    db_close(late);
    db_close(db);
    if (mem)
        memstore_free(mem);
}

static void test_outbox_steps_memory(void)
{
    outbox_steps(true);
}

static void test_outbox_steps_real(void)
{
    outbox_steps(false);
}

/* outbox_append_many: array order gives positions and each aggregate's seq,
 * continuing what single appends drew; one bad message writes nothing. */
/* A store of its own: memory (*mem set, free it after), or a fresh database. */
static db_t *open_store(bool memory, const char *dbname, memstore_t **mem)
{
    char *err = NULL;
    *mem = memory ? memstore_new() : NULL;
    db_t *db = memory ? db_open_memory(*mem) : db_open_pg(test_pg_db(dbname, true), "test", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    return db;
}

/* Up to 100 rows of every partition, in position order. */
static void fetch_all(db_t *db, outbox_row_t **rows, size_t *n)
{
    int parts[OUTBOX_PARTITIONS];
    for (int i = 0; i < OUTBOX_PARTITIONS; i++)
        parts[i] = i;
    ASSERT_OK(outbox_fetch(db, parts, OUTBOX_PARTITIONS, 100, rows, n));
}

static void append_many(bool memory)
{
    memstore_t *mem;
    db_t *db = open_store(memory, "bb_many", &mem);
    append_one(db, "a", 0); /* a's seq 1 */
    static const char *const aggs[] = {"a", "b", "a", "a", "b"};
    char pl[5][16];
    outbox_msg_t ms[5];
    for (int i = 0; i < 5; i++) {
        snprintf(pl[i], sizeof pl[i], "{\"k\":%d}", i + 1);
        ms[i] = (outbox_msg_t){
            .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = aggs[i], .payload = pl[i]};
    }
    const char *why = NULL;
    ASSERT_OK(db_begin(db));
    ASSERT_OK(outbox_append_many(db, ms, 5, &why));
    ASSERT_OK(db_commit(db));
    outbox_msg_t bad[2] = {ms[0], ms[1]};
    bad[1].topic = "no spaces allowed";
    ASSERT_OK(db_begin(db));
    CU_ASSERT_EQUAL(outbox_append_many(db, bad, 2, &why), -1);
    CU_ASSERT_PTR_NOT_NULL(why);
    ASSERT_OK(db_commit(db));
    outbox_row_t *rows = NULL;
    size_t n = 0;
    fetch_all(db, &rows, &n);
    CU_ASSERT_EQUAL_FATAL(n, 6);
    static const int64_t want_seq[] = {1, 2, 1, 3, 4, 2};
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(payload_k(&rows[i]), (int)i);
        CU_ASSERT_EQUAL(rows[i].env.seq, want_seq[i]);
        CU_ASSERT_STRING_EQUAL(rows[i].env.aggregate_id, i == 0 ? "a" : aggs[i - 1]);
        CU_ASSERT_TRUE(uuid_valid(rows[i].env.id));
        if (i)
            CU_ASSERT_TRUE(rows[i].pos > rows[i - 1].pos);
    }
    outbox_rows_free(rows, n);
    db_close(db);
    if (mem)
        memstore_free(mem);
}

static void test_append_many_memory(void)
{
    append_many(true);
}

/* Sole messages (an aggregate of their own, outbox_msg_t.sole) take seq 1
 * and leave no sequence row, by every way of appending; the others count on
 * as before, a rolled-back sole append takes nothing back from them, and a
 * later ordinary message of a sole message's aggregate starts at 1 (no row). */
static void sole_appends(bool memory)
{
    memstore_t *mem;
    db_t *db = open_store(memory, "bb_sole", &mem);
    /* k: payload order; aggregates and whether sole */
    static const char *const aggs[] = {"a", "s1", "a", "s2", "s3", "a", "s4", "a", "s1"};
    static const bool sole[] = {false, true, false, true, true, false, true, false, false};
    static const int64_t want_seq[] = {1, 1, 2, 1, 1, 3, 1, 4, 1};
    enum { N = 9 };
    char pl[N][16];
    outbox_msg_t ms[N];
    for (int i = 0; i < N; i++) {
        snprintf(pl[i], sizeof pl[i], "{\"k\":%d}", i);
        ms[i] = (outbox_msg_t){.topic = "orders",
                               .type = "order.placed",
                               .tenant = "t1",
                               .aggregate_id = aggs[i],
                               .payload = pl[i],
                               .sole = sole[i]};
    }
    const char *why = NULL;
    ASSERT_OK(db_begin(db)); /* 0-3 in one statement */
    ASSERT_OK(outbox_append_many(db, ms, 4, &why));
    ASSERT_OK(db_commit(db));
    ASSERT_OK(db_begin(db)); /* 4, 5 one at a time */
    ASSERT_OK(outbox_append(db, &ms[4], NULL, &why));
    ASSERT_OK(outbox_append(db, &ms[5], NULL, &why));
    ASSERT_OK(db_commit(db));
    outbox_msg_t gone = ms[6];
    gone.aggregate_id = "s-rolled-back";
    ASSERT_OK(db_begin(db));
    ASSERT_OK(outbox_append(db, &gone, NULL, &why));
    db_rollback(db);
    ASSERT_OK(db_begin(db)); /* 6, 7 held to the commit */
    ASSERT_OK(outbox_hold_many(db, &ms[6], 2, &why));
    ASSERT_OK(db_commit(db));
    append_one(db, "s1", 8); /* an ordinary append of s1's aggregate */
    outbox_row_t *rows = NULL;
    size_t n = 0;
    fetch_all(db, &rows, &n);
    CU_ASSERT_EQUAL_FATAL(n, N);
    for (size_t i = 0; i < n; i++) {
        int k = payload_k(&rows[i]);
        CU_ASSERT_EQUAL_FATAL(k, (int)i);
        CU_ASSERT_STRING_EQUAL(rows[i].env.aggregate_id, aggs[k]);
        CU_ASSERT_EQUAL(rows[i].env.seq, want_seq[k]);
    }
    outbox_rows_free(rows, n);
    if (!memory) { /* one sequence row each: a (4) and s1 (1, from the ordinary append) */
        PGresult *r = pg_query(db_pg(db),
                               "SELECT string_agg(aggregate_id || '=' || seq, ',' ORDER BY aggregate_id)"
                               " FROM bus.aggregate_seq",
                               0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "a=4,s1=1");
        PQclear(r);
    }
    db_close(db);
    if (mem)
        memstore_free(mem);
}

static void test_sole_appends_memory(void)
{
    sole_appends(true);
}

static void test_sole_appends_real(void)
{
    sole_appends(false);
}

static void test_append_many_real(void)
{
    append_many(false);
}

/* The drainer's partitions and a service's lease are session advisory locks:
 * a session of ours asks the server to notice a dead peer (a host that died,
 * a cut network) within about 4 s, not the system's two hours, so another
 * takes them over in time. */
static void test_sessions_notice_dead_peers_real(void)
{
    char *err = NULL;
    PGconn *c = pg_connect(test_pg_db("bb_keepalive", true), "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    PGresult *r = pg_query(c,
                           "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
                           " current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout'),"
                           " inet_client_addr() IS NOT NULL",
                           0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    /* scripts/test-env's server listens on 127.0.0.1 only (on a Unix socket
     * the server would ignore the settings) */
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 4), "t");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "2");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "1");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 2), "2");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 3), "4000"); /* milliseconds */
    PQclear(r);
    PQfinish(c);
    /* one the operator set (here in the URL's options) is kept; the others are ours */
    const char *own = test_pg_db("bb_keepalive_own", false);
    char *url = xasprintf("%s%soptions=-c%%20tcp_keepalives_idle%%3D45", own, strchr(own, '?') ? "&" : "?");
    c = pg_connect(url, "test", &err);
    free(err);
    free(url);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    r = pg_query(c, "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_count')", 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "45");
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "2");
    PQclear(r);
    PQfinish(c);
}

/* Appenders of one aggregate racing, one message per transaction: the
 * position (the drainer's order) follows the sequence number, because the
 * position is drawn after the aggregate's row lock is taken. */
typedef struct racer {
    const char *url;
    int n, failed;
    pthread_t th;
} racer_t;

static void *race_appends(void *arg)
{
    racer_t *rc = arg;
    char *err = NULL;
    db_t *db = db_open_pg(rc->url, "test-race", &err);
    free(err);
    for (int i = 0; db && i < rc->n; i++) {
        outbox_msg_t m = {
            .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = "raced", .payload = "{}"};
        const char *why = NULL;
        if (db_begin(db) != 0 || outbox_append(db, &m, NULL, &why) != 0 || db_commit(db) != 0)
            rc->failed++;
    }
    if (!db)
        rc->failed = rc->n;
    db_close(db);
    return NULL;
}

static void test_append_race_real(void)
{
    const char *url = test_pg_db("bb_race", true);
    enum { RACERS = 4, EACH = 150 };
    racer_t rc[RACERS];
    for (int k = 0; k < RACERS; k++) {
        rc[k] = (racer_t){.url = url, .n = EACH};
        pthread_create(&rc[k].th, NULL, race_appends, &rc[k]);
    }
    int failed = 0;
    for (int k = 0; k < RACERS; k++) {
        pthread_join(rc[k].th, NULL);
        failed += rc[k].failed;
    }
    CU_ASSERT_EQUAL(failed, 0);
    char *err = NULL;
    PGconn *c = pg_connect(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    PGresult *r =
        pg_query(c,
                 "SELECT count(*), count(*) FILTER (WHERE seq <> prev + 1) FROM (SELECT seq, lag(seq) OVER"
                 " (ORDER BY pos) AS prev FROM bus.outbox WHERE aggregate_id = 'raced') t WHERE prev IS NOT NULL",
                 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(atoi(PQgetvalue(r, 0, 0)), RACERS * EACH - 1);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "0");
    if (strcmp(PQgetvalue(r, 0, 1), "0") != 0)
        fprintf(stderr, "\n  positions out of sequence order: %s\n", PQgetvalue(r, 0, 1));
    PQclear(r);
    PQfinish(c);
}

/* Appenders of many aggregates in one transaction: outbox_append_many takes
 * the sequence rows in (tenant, aggregate) order whatever its array's order,
 * so it never deadlocks with another such statement, nor with a transaction
 * that appends one message at a time in that order. */
enum { LOCK_AGGS = 24, LOCK_PICK = 8 };

typedef struct locker {
    const char *url;
    bool many; /* outbox_append_many in a shuffled order, else one by one in order */
    unsigned seed;
    int n, failed, deadlocks;
    pthread_t th;
} locker_t;

static void *lock_appends(void *arg)
{
    locker_t *lk = arg;
    char *err = NULL;
    db_t *db = db_open_pg(lk->url, "test-locks", &err);
    free(err);
    for (int i = 0; db && i < lk->n; i++) {
        bool picked[LOCK_AGGS] = {false};
        int order[LOCK_PICK], k = 0;
        while (k < LOCK_PICK) {
            int a = (int)(rand_r(&lk->seed) % LOCK_AGGS);
            if (!picked[a])
                picked[a] = true, order[k++] = a;
        }
        if (!lk->many) /* ascending */
            for (int a = 0, j = 0; a < LOCK_AGGS; a++)
                if (picked[a])
                    order[j++] = a;
        char names[LOCK_PICK][16];
        outbox_msg_t ms[LOCK_PICK];
        for (int j = 0; j < LOCK_PICK; j++) {
            snprintf(names[j], sizeof names[j], "agg-%02d", order[j]);
            ms[j] = (outbox_msg_t){
                .topic = "orders", .type = "order.placed", .tenant = "t1", .aggregate_id = names[j], .payload = "{}"};
        }
        const char *why = NULL;
        int rc = db_begin(db);
        if (rc == 0 && lk->many)
            rc = outbox_append_many(db, ms, LOCK_PICK, &why);
        for (int j = 0; rc == 0 && !lk->many && j < LOCK_PICK; j++)
            rc = outbox_append(db, &ms[j], NULL, &why);
        if (rc != 0) {
            lk->deadlocks += strcmp(pg_last_sqlstate(), "40P01") == 0;
            db_rollback(db);
        } else {
            rc = db_commit(db);
        }
        lk->failed += rc != 0;
    }
    if (!db)
        lk->failed = lk->n;
    db_close(db);
    return NULL;
}

static void test_append_lock_order_real(void)
{
    const char *url = test_pg_db("bb_lock_order", true);
    enum { LOCKERS = 4, EACH = 150 };
    locker_t lk[LOCKERS];
    for (int k = 0; k < LOCKERS; k++) {
        lk[k] = (locker_t){.url = url, .many = k % 2 == 0, .seed = 7u + (unsigned)k, .n = EACH};
        pthread_create(&lk[k].th, NULL, lock_appends, &lk[k]);
    }
    int failed = 0, deadlocks = 0;
    for (int k = 0; k < LOCKERS; k++) {
        pthread_join(lk[k].th, NULL);
        failed += lk[k].failed;
        deadlocks += lk[k].deadlocks;
    }
    CU_ASSERT_EQUAL(failed, 0);
    CU_ASSERT_EQUAL(deadlocks, 0);
    if (failed)
        fprintf(stderr, "\n  %d of %d transactions failed, %d of them deadlocked\n", failed, LOCKERS * EACH, deadlocks);
    char *err = NULL;
    PGconn *c = pg_connect(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    /* every aggregate's numbers are 1..n with no gap, in position order */
    PGresult *r = pg_query(c,
                           "SELECT count(*), count(*) FILTER (WHERE seq <> rn) FROM (SELECT seq, row_number() OVER"
                           " (PARTITION BY aggregate_id ORDER BY pos) AS rn FROM bus.outbox) t",
                           0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(atoi(PQgetvalue(r, 0, 0)), (LOCKERS * EACH - failed) * LOCK_PICK);
    CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 1), "0");
    PQclear(r);
    PQfinish(c);
}

int main(void)
{
    log_configure(getenv("TEST_LOG_LEVEL") ? getenv("TEST_LOG_LEVEL") : "error", "text");
    CU_TestInfo tests[] = {
        {"the drainer's overlapped step leaves rows in flight out, never late ones (memory)", test_outbox_steps_memory},
        {"the drainer's overlapped step leaves rows in flight out, never late ones (postgres)", test_outbox_steps_real},
        {"many appends in one statement: order, sequences, all or nothing (memory)", test_append_many_memory},
        {"many appends in one statement: order, sequences, all or nothing (postgres)", test_append_many_real},
        {"appenders of one aggregate racing: positions follow sequence numbers (postgres)", test_append_race_real},
        {"appenders of many aggregates take their sequence rows in one order: no deadlock (postgres)",
         test_append_lock_order_real},
        {"sessions ask the server to notice a dead peer within seconds (postgres)",
         test_sessions_notice_dead_peers_real},
        {"sole messages take seq 1 and no sequence row (memory)", test_sole_appends_memory},
        {"sole messages take seq 1 and no sequence row (postgres)", test_sole_appends_real},
        {"a transaction's BEGIN goes with its first statement (postgres)", test_deferred_begin_real},
        {"held writes go with the next round trip; one that fails fails it (postgres)", test_held_writes_real},
        {"a statement after the commit runs in a transaction of its own, never after a rollback (postgres)",
         test_after_commit_real},
        {"10k messages, 100 aggregates, 3 groups (memory)", test_flow_memory},
        {"10k messages, 100 aggregates, 3 groups (postgres+redis)", test_flow_real},
        {"messages put off many times are applied after a restart, not dead-lettered (memory)",
         test_deferred_restart_memory},
        {"messages put off many times are applied after a restart, not dead-lettered (postgres+redis)",
         test_deferred_restart_real},
        {"retries, backoff and DLQ keep order (memory)", test_retries_memory},
        {"retries, backoff and DLQ keep order (postgres+redis)", test_retries_real},
        {"another entry of a dead-lettered message is not applied after its successors (memory)",
         test_dead_copy_memory},
        {"another entry of a dead-lettered message is not applied after its successors (postgres+redis)",
         test_dead_copy_real},
        {"a dead letter sent back keeps its aggregate's place while retried (memory)", test_replay_place_memory},
        {"a dead letter sent back keeps its aggregate's place while retried (postgres+redis)", test_replay_place_real},
        {"retries with a batch handler: halves find the failing message, order kept (memory)",
         test_retries_batch_memory},
        {"retries with a batch handler: halves find the failing message, order kept (postgres+redis)",
         test_retries_batch_real},
        {"retries with a batch handler that names the failing message: split there, order kept (memory)",
         test_retries_named_memory},
        {"retries with a batch handler that names the failing message: split there, order kept (postgres+redis)",
         test_retries_named_real},
        {"a batch handler's own failure is the message's attempt: not run again alone (memory)",
         test_retries_own_memory},
        {"a batch handler's own failure is the message's attempt: not run again alone (postgres+redis)",
         test_retries_own_real},
        {"retries when held writes fail at the commit: halves find the message, order kept (postgres+redis)",
         test_retries_held_real},
        {"a retry's scan leaves the batch the read-ahead holds alone (postgres+redis)", test_retries_read_ahead_real},
        {"entries of a read whose answer was lost go before later ones (postgres+redis)", test_lost_read_real},
        {"a lane whose connection broke: its batch goes before the read-ahead's later ones (postgres+redis)",
         test_broken_lane_real},
        {"a Redis that refuses writes is waited for: no row counted as poisoned (postgres+redis)",
         test_redis_refuses_writes_real},
        {"a row the bus refuses pauses its partition only; it and its successors go out in order (postgres+redis)",
         test_refused_row_real},
        {"a row the bus refuses pauses its partition only; it and its successors go out in order (memory+redis)",
         test_refused_row_memory},
        {"a takeover claims every entry the old consumer held before new ones (postgres+redis)",
         test_takeover_claims_all_real},
        {"an entry a previous holder read after the takeover goes before the next one (postgres+redis)",
         test_late_reader_real},
        {"a lingering service takes what arrives meanwhile in one batch (memory)", test_linger_memory},
        {"a lingering service takes what arrives meanwhile in one batch (postgres+redis)", test_linger_real},
        {"bad input goes to the DLQ and never stalls (memory)", test_bad_input_memory},
        {"bad input goes to the DLQ and never stalls (postgres+redis)", test_bad_input_real},
        {"two drainers at once (postgres+redis)", test_two_drainers_real},
        {"the drainer vacuums the outbox it empties (postgres+redis)", test_drainer_vacuums_real},
        {"a drainer whose role does not own the outbox leaves it to autovacuum (postgres+redis)",
         test_drainer_not_owner_real},
        {"drainers of another database do not take this one's share", test_foreign_drainer_real},
        {"a service created after trimming still gets everything (memory)", test_late_subscriber_memory},
        {"a service created after trimming still gets everything (postgres+redis)", test_late_subscriber_real},
        {"groups Redis lost are made again before a trim (memory)", test_lost_groups_memory},
        {"groups Redis lost are made again before a trim (postgres+redis)", test_lost_groups_real},
        {"inbox cleanup takes old ids in bounded steps and keeps recent ones (postgres)", test_inbox_cleanup_real},
        {"a service's janitor deletes old inbox ids in memory too", test_inbox_cleanup_memory},
        {"a cleanup pass deletes chunk after chunk until caught up, keeping the window (postgres)",
         test_janitor_catches_up_real},
        {"stopping a janitor cancels its statement in progress (postgres)", test_janitor_stop_cancels_real},
        {"the re-drive window's cleanup takes old rows oldest first, bounded (postgres)", test_published_cleanup_real},
        {"the read-ahead sends acknowledgements with its next read, on their own when idle, again after a failure",
         test_reader_acks_real},
        {"cleanups read about their limit of rows with nothing old, under generic plans (postgres)",
         test_cleanup_bounded_real},
        {"a row without a wake-up hint goes out long before the poll interval (postgres+redis)",
         test_drainer_rechecks_real},
        {"a rewound group's batches of applied and new ids apply only the new (postgres+redis)", test_redelivered_real},
        {"a rewound group's batches apply only the new, the inbox insert held to the first statement (postgres+redis)",
         test_redelivered_held_real},
        CU_TEST_INFO_NULL,
    };
    return test_main("backbone", tests, NULL, NULL);
}
