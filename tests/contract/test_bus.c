/* tests/contract/test_bus.c: the bus contract (bus.h), one suite run against
 * both backends. Every test body takes a backend_t and is registered twice, as
 * "memory/<name>" (a membus_t shared by the whole program) and "redis/<name>"
 * (a private Redis db from test_redis_db). The two stores are separate, so
 * the bodies use the same stream names. Two tests are Redis only: opening a
 * bad URL, and reconnecting after the server dropped the connection. */
#include "bus/bus.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/redis.h"
#include "core/uuid.h"
#include "tests/testlib.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct backend {
    const char *name;
    bus_t *(*open)(void);
    /* appends an entry with arbitrary fields (npairs name/value pairs), as a raw XADD */
    int (*add_raw)(const char *stream, const char *const *fields, size_t npairs);
} backend_t;

static membus_t *mem;
static const char *redis_url;

static bus_t *open_memory(void)
{
    return bus_open_memory(mem);
}

static bus_t *open_redis(void)
{
    char *err = NULL;
    bus_t *b = bus_open_redis(redis_url, &err);
    if (!b) {
        fprintf(stderr, "bus_open_redis: %s\n", err);
        free(err);
    }
    return b;
}

static int add_raw_memory(const char *stream, const char *const *fields, size_t npairs)
{
    return membus_add_raw(mem, stream, fields, npairs);
}

static int add_raw_redis(const char *stream, const char *const *fields, size_t npairs)
{
    char *err = NULL;
    redisContext *c = redis_connect_url(redis_url, 2000, &err);
    if (!c) {
        fprintf(stderr, "redis: %s\n", err);
        free(err);
        return -1;
    }
    size_t argc = 3 + 2 * npairs;
    const char **argv = xmalloc(argc * sizeof *argv);
    argv[0] = "XADD";
    argv[1] = stream;
    argv[2] = "*";
    for (size_t i = 0; i < 2 * npairs; i++)
        argv[3 + i] = fields[i];
    redisReply *r = redisCommandArgv(c, (int)argc, argv, NULL);
    int rc = r && r->type == REDIS_REPLY_STRING ? 0 : -1;
    if (r)
        freeReplyObject(r);
    free(argv);
    redisFree(c);
    return rc;
}

static const backend_t memory_backend = {"memory", open_memory, add_raw_memory};
static const backend_t redis_backend = {"redis", open_redis, add_raw_redis};

/* The same server and db as redis_url, through the Unix socket that
 * scripts/test-env has Redis listen on (ECOM_TEST_REDIS_SOCKET_URL). */
static char *unix_url;

static bus_t *open_redis_unix(void)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(unix_url);
    char *err = NULL;
    bus_t *b = bus_open_redis(unix_url, &err);
    if (!b) {
        fprintf(stderr, "bus_open_redis(%s): %s\n", unix_url, err);
        free(err);
    }
    return b;
}

static const backend_t redis_unix_backend = {"redis-unix", open_redis_unix, add_raw_redis};

/* ---- helpers ---- */

static void make_env(envelope_t *e, const char *topic, size_t i)
{
    memset(e, 0, sizeof *e);
    uuid_v7(e->id);
    e->type = xstrdup("test.happened");
    e->topic = xstrdup(topic);
    e->tenant = xstrdup("tenant-1");
    e->aggregate_id = xasprintf("agg-%zu", i % 7);
    e->seq = (int64_t)i + 1;
    e->ts = clock_now_ms();
    e->v = 2;
    e->traceparent = xstrdup("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    e->request_id = xasprintf("req-%zu", i);
    e->payload = xasprintf("{\"i\":%zu}", i);
}

/* Publishes n messages (seq 1..n) to topic, in batches; ids optional. */
static int publish_n(bus_t *b, const char *topic, size_t n, char (*ids)[BUS_ID_MAX])
{
    const size_t batch = 1000;
    envelope_t *e = xcalloc(batch, sizeof *e);
    int rc = 0;
    for (size_t done = 0; done < n && rc == 0; done += batch) {
        size_t k = n - done < batch ? n - done : batch;
        for (size_t i = 0; i < k; i++)
            make_env(&e[i], topic, done + i);
        rc = bus_publish(b, e, k, ids ? ids + done : NULL);
        for (size_t i = 0; i < k; i++)
            envelope_clear(&e[i]);
    }
    free(e);
    return rc;
}

static int id_cmp(const char *a, const char *b)
{
    unsigned long long am = 0, as = 0, bm = 0, bs = 0;
    CU_ASSERT_EQUAL(sscanf(a, "%llu-%llu", &am, &as), 2);
    CU_ASSERT_EQUAL(sscanf(b, "%llu-%llu", &bm, &bs), 2);
    if (am != bm)
        return am < bm ? -1 : 1;
    return as < bs ? -1 : as > bs;
}

static bool env_equal(const envelope_t *a, const envelope_t *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->type, b->type) == 0 && strcmp(a->topic, b->topic) == 0 &&
           strcmp(a->tenant, b->tenant) == 0 && strcmp(a->aggregate_id, b->aggregate_id) == 0 && a->seq == b->seq &&
           a->ts == b->ts && a->v == b->v && strcmp(a->traceparent, b->traceparent) == 0 &&
           strcmp(a->request_id, b->request_id) == 0 && strcmp(a->payload, b->payload) == 0;
}

static int read1(bus_t *b, const char *group, const char *consumer, const char *stream, bool own, size_t count,
                 int block_ms, bus_batch_t *out)
{
    const char *streams[] = {stream};
    return bus_read(b, group, consumer, streams, 1, own, count, block_ms, out);
}

static int ack_batch(bus_t *b, const char *stream, const char *group, const bus_batch_t *bt)
{
    const char **ids = xmalloc((bt->n ? bt->n : 1) * sizeof *ids);
    for (size_t i = 0; i < bt->n; i++)
        ids[i] = bt->msgs[i].entry_id;
    int rc = bus_ack(b, stream, group, ids, bt->n);
    free(ids);
    return rc;
}

static const char *field(const bus_entry_t *e, const char *name)
{
    for (size_t i = 0; i < e->nfields; i++)
        if (strcmp(e->fields[2 * i], name) == 0)
            return e->fields[2 * i + 1];
    return NULL;
}

static size_t pending_count(bus_t *b, const char *stream, const char *group)
{
    bus_pending_entry_t pe[64];
    size_t n = 0;
    CU_ASSERT_EQUAL(bus_pending(b, stream, group, pe, 64, &n), 0);
    return n;
}

static uint64_t stream_length(bus_t *b, const char *stream)
{
    bus_stream_info_t si;
    CU_ASSERT_EQUAL(bus_stream_info(b, stream, &si), 0);
    return si.length;
}

/* ---- tests ---- */

static void publish_order_and_ids(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *sa = "ecom:t.order.a", *sb = "ecom:t.order.b";
    ASSERT_OK(bus_group_create(b, sa, "g"));
    ASSERT_OK(bus_group_create(b, sb, "g"));

    envelope_t e[6];
    char ids[6][BUS_ID_MAX];
    for (size_t i = 0; i < 6; i++)
        make_env(&e[i], i % 2 ? "t.order.b" : "t.order.a", i);
    ASSERT_OK(bus_publish(b, e, 6, ids));
    for (size_t i = 2; i < 6; i++)
        CU_ASSERT(id_cmp(ids[i - 2], ids[i]) < 0); /* same stream: increasing */

    bus_batch_t bt = {0};
    const char *streams[] = {sa, sb};
    ASSERT_OK(bus_read(b, "g", "c1", streams, 2, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 6);
    /* per stream, in array order: a gets 0 2 4, b gets 1 3 5 */
    size_t order[6] = {0, 2, 4, 1, 3, 5};
    for (size_t k = 0; k < 6; k++) {
        const bus_msg_t *m = &bt.msgs[k];
        size_t i = order[k];
        CU_ASSERT(!m->bad && !m->missing);
        CU_ASSERT_STRING_EQUAL(m->entry_id, ids[i]);
        CU_ASSERT_STRING_EQUAL(m->stream, i % 2 ? sb : sa);
        CU_ASSERT(env_equal(&m->env, &e[i]));
        CU_ASSERT_EQUAL(m->deliveries, 1);
    }
    bus_batch_clear(&bt);

    /* a batch with one invalid envelope is refused whole */
    envelope_t bad[2];
    make_env(&bad[0], "t.order.a", 10);
    make_env(&bad[1], "t.order.a", 11);
    strcpy(bad[1].id, "not-a-uuid");
    CU_ASSERT_EQUAL(bus_publish(b, bad, 2, NULL), -1);
    CU_ASSERT_EQUAL(stream_length(b, sa), 3);
    free(bad[1].topic);
    bad[1].topic = xstrdup("bad topic");
    strcpy(bad[1].id, bad[0].id);
    CU_ASSERT_EQUAL(bus_publish(b, bad, 2, NULL), -1);
    CU_ASSERT_EQUAL(stream_length(b, sa), 3);
    CU_ASSERT_EQUAL(bus_publish(b, bad, 0, NULL), 0);

    for (size_t i = 0; i < 6; i++)
        envelope_clear(&e[i]);
    envelope_clear(&bad[0]);
    envelope_clear(&bad[1]);
    bus_batch_free(&bt);
    bus_close(b);
}

static void group_created_late(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.late";
    char ids[3][BUS_ID_MAX];
    ASSERT_OK(publish_n(b, "t.late", 3, ids));
    ASSERT_OK(bus_group_create(b, s, "late"));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "late", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    for (size_t i = 0; i < 3; i++)
        CU_ASSERT_STRING_EQUAL(bt.msgs[i].entry_id, ids[i]);
    bus_batch_clear(&bt);
    /* creating it again is fine and does not rewind it */
    CU_ASSERT_EQUAL(bus_group_create(b, s, "late"), 0);
    ASSERT_OK(read1(b, "late", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

static void read_new_vs_own_pending(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.own";
    char ids[3][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.own", 3, ids));
    bus_batch_t bt = {0};

    ASSERT_OK(read1(b, "g", "c1", s, false, 2, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].entry_id, ids[1]);
    bus_batch_clear(&bt);

    ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[0]);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].entry_id, ids[1]);
    CU_ASSERT(!bt.msgs[0].bad && !bt.msgs[0].missing);
    CU_ASSERT_EQUAL(bt.msgs[0].env.seq, 1);
    bus_batch_clear(&bt);

    ASSERT_OK(read1(b, "g", "c1", s, true, 1, 0, &bt)); /* from the start, count bounds it */
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[0]);
    bus_batch_clear(&bt);

    ASSERT_OK(read1(b, "g", "c2", s, true, 10, 0, &bt)); /* c2 has nothing pending */
    CU_ASSERT_EQUAL(bt.n, 0);
    ASSERT_OK(read1(b, "g", "c2", s, false, 10, 0, &bt)); /* the one left */
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[2]);
    bus_batch_clear(&bt);

    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

static void read_pending_pages(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.pages";
    char ids[6][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.pages", 6, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 5, 0, &bt)); /* 0..4 pending for c1, 5 undelivered */
    CU_ASSERT_EQUAL_FATAL(bt.n, 5);
    bus_batch_clear(&bt);

    /* pages of 2 from the start, each going on after the last id of the previous one */
    const char *after = "0";
    char last[BUS_ID_MAX];
    size_t seen = 0;
    for (int page = 0; page < 5; page++) {
        bus_batch_clear(&bt);
        ASSERT_OK(bus_read_pending(b, "g", "c1", s, after, 2, &bt));
        if (bt.n == 0)
            break;
        CU_ASSERT(bt.n <= 2);
        for (size_t i = 0; i < bt.n && seen + i < 5; i++) {
            CU_ASSERT_STRING_EQUAL(bt.msgs[i].entry_id, ids[seen + i]);
            CU_ASSERT_EQUAL(bt.msgs[i].deliveries, 2);
            CU_ASSERT_EQUAL(bt.msgs[i].env.seq, (int64_t)(seen + i + 1));
        }
        seen += bt.n;
        snprintf(last, sizeof last, "%s", bt.msgs[bt.n - 1].entry_id);
        after = last;
    }
    CU_ASSERT_EQUAL(seen, 5);
    bus_batch_clear(&bt);

    /* going on after an id that is no longer pending (acknowledged meanwhile) */
    const char *ack2[] = {ids[2]};
    ASSERT_OK(bus_ack(b, s, "g", ack2, 1));
    ASSERT_OK(bus_read_pending(b, "g", "c1", s, ids[2], 10, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[3]);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].entry_id, ids[4]);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 3);
    bus_batch_clear(&bt);

    /* a deleted one comes back missing; other consumers see none of c1's */
    const char *del[] = {ids[3]};
    ASSERT_OK(bus_delete_entries(b, s, del, 1));
    ASSERT_OK(bus_read_pending(b, "g", "c1", s, ids[1], 10, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT(bt.msgs[0].missing && !bt.msgs[1].missing);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 3);
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read_pending(b, "g", "c2", s, "0", 10, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);
    CU_ASSERT_EQUAL(bus_read_pending(b, "g", "c1", s, "junk", 10, &bt), -1);
    CU_ASSERT_EQUAL(bus_read_pending(b, "nogroup", "c1", s, "0", 10, &bt), -1);
    CU_ASSERT_EQUAL(bt.n, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

/* What other consumers hold and whether they read lately: what a new holder
 * of a group checks for. */
static void group_others(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.others";
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.others", 5, NULL));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 3, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 3);
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "g", "c2", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    uint64_t pending = 99, active = 99;
    ASSERT_OK(bus_group_others(b, s, "g", "c1", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending, 2);
    CU_ASSERT_EQUAL(active, 1);
    ASSERT_OK(bus_group_others(b, s, "g", "c2", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending, 3);
    CU_ASSERT_EQUAL(active, 1);
    ASSERT_OK(bus_group_others(b, s, "g", "c3", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending, 5);
    CU_ASSERT_EQUAL(active, 2);
    clock_sleep_ms(30); /* read more than 20 ms ago: not active within 20 ms */
    ASSERT_OK(bus_group_others(b, s, "g", "c3", 20, &pending, &active));
    CU_ASSERT_EQUAL(active, 0);
    const char *ids[] = {bt.msgs[0].entry_id, bt.msgs[1].entry_id}; /* c2's */
    ASSERT_OK(bus_ack(b, s, "g", ids, 2));
    ASSERT_OK(bus_group_others(b, s, "g", "c1", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending, 0);
    /* no such group, no such stream: nobody's */
    pending = active = 99;
    ASSERT_OK(bus_group_others(b, s, "g-none", "c1", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending + active, 0);
    pending = active = 99;
    ASSERT_OK(bus_group_others(b, "ecom:t.others.none", "g", "c1", 60000, &pending, &active));
    CU_ASSERT_EQUAL(pending + active, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

static void ack_removes_pending(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.ack";
    char ids[3][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.ack", 3, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);

    bus_pending_entry_t pe[8];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL_FATAL(n, 3);
    for (size_t i = 0; i < 3; i++) {
        CU_ASSERT_STRING_EQUAL(pe[i].entry_id, ids[i]);
        CU_ASSERT_STRING_EQUAL(pe[i].consumer, "c1");
        CU_ASSERT_EQUAL(pe[i].deliveries, 1);
        CU_ASSERT(pe[i].idle_ms >= 0 && pe[i].idle_ms < 5000);
    }
    ASSERT_OK(bus_pending(b, s, "g", pe, 2, &n)); /* max bounds it, oldest first */
    CU_ASSERT_EQUAL(n, 2);

    const char *acks[] = {ids[0], ids[2], "1-1"}; /* an unknown id is not an error */
    ASSERT_OK(bus_ack(b, s, "g", acks, 3));
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(pe[0].entry_id, ids[1]);
    CU_ASSERT_EQUAL(bus_ack(b, "ecom:t.ack.none", "g", acks, 1), 0);
    const char *junk[] = {"nonsense"};
    CU_ASSERT_EQUAL(bus_ack(b, s, "g", junk, 1), -1);

    /* acknowledged entries do not come back in a history read */
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[1]);
    bus_batch_free(&bt);
    bus_close(b);
}

typedef struct pending_probe {
    const backend_t *be;
    const char *stream;
    long long pending; /* -1 until probed */
    int64_t probed_us; /* when the count came back (monotonic) */
} pending_probe_t;

/* 100 ms later, the group g's pending count of the stream, on a handle of its own. */
static void *probe_pending_later(void *arg)
{
    pending_probe_t *p = arg;
    clock_sleep_ms(100);
    bus_t *b = p->be->open();
    bus_pending_entry_t pe[8];
    size_t n = 0;
    if (b && bus_pending(b, p->stream, "g", pe, 8, &n) == 0)
        p->pending = (long long)n;
    p->probed_us = clock_mono_us();
    bus_close(b);
    return NULL;
}

/* Acknowledgements sent along with a read go first: the read's entries and
 * the acknowledged ones are both as if ack, then read, had run; a blocking
 * read that waits has acknowledged them before it waits. */
static void read_acking_acks_first(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.rack", *s2 = "ecom:t.rack2";
    char ids[4][BUS_ID_MAX], ids2[1][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(bus_group_create(b, s2, "g"));
    ASSERT_OK(publish_n(b, "t.rack", 2, ids));
    ASSERT_OK(publish_n(b, "t.rack2", 1, ids2));
    bus_batch_t bt = {0};
    const char *both[] = {s, s2};
    ASSERT_OK(bus_read(b, "g", "c1", both, 2, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    ASSERT_OK(publish_n(b, "t.rack", 2, ids + 2));

    bus_acks_t acks[] = {{.stream = s, .ids = (const char(*)[BUS_ID_MAX])ids, .n = 2},
                         {.stream = s2, .ids = (const char(*)[BUS_ID_MAX])ids2, .n = 1}};
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read_acking(b, "g", "c1", both, 2, 10, 0, acks, 2, &bt));
    CU_ASSERT(acks[0].done && acks[1].done);
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[2]);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].entry_id, ids[3]);
    bus_pending_entry_t pe[8];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(pe[0].entry_id, ids[2]);
    ASSERT_OK(bus_pending(b, s2, "g", pe, 8, &n));
    CU_ASSERT_EQUAL(n, 0);

    /* a bad id refuses the whole call: nothing acknowledged, nothing read */
    char bad[2][BUS_ID_MAX] = {"", "nonsense"};
    memcpy(bad[0], ids[2], BUS_ID_MAX);
    bus_acks_t junk[] = {{.stream = s, .ids = (const char(*)[BUS_ID_MAX])bad, .n = 2}};
    ASSERT_OK(publish_n(b, "t.rack", 1, NULL));
    bus_batch_clear(&bt);
    CU_ASSERT_EQUAL(bus_read_acking(b, "g", "c1", both, 2, 10, 0, junk, 1, &bt), -1);
    CU_ASSERT_FALSE(junk[0].done);
    CU_ASSERT_EQUAL(bt.n, 0);
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL(n, 2);

    /* a blocking read that finds an entry waiting still sends the acknowledgements first */
    bus_acks_t rest[] = {{.stream = s, .ids = (const char(*)[BUS_ID_MAX])(ids + 2), .n = 2}};
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read_acking(b, "g", "c1", both, 2, 10, 50, rest, 1, &bt));
    CU_ASSERT(rest[0].done);
    CU_ASSERT_EQUAL(bt.n, 1);
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(pe[0].entry_id, bt.msgs[0].entry_id);
    /* and one that finds nothing and times out, too */
    char last[1][BUS_ID_MAX];
    memcpy(last[0], bt.msgs[0].entry_id, BUS_ID_MAX);
    bus_acks_t one[] = {{.stream = s, .ids = (const char(*)[BUS_ID_MAX])last, .n = 1}};
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read_acking(b, "g", "c1", both, 2, 10, 20, one, 1, &bt));
    CU_ASSERT(one[0].done);
    CU_ASSERT_EQUAL(bt.n, 0);
    ASSERT_OK(bus_pending(b, s, "g", pe, 8, &n));
    CU_ASSERT_EQUAL(n, 0);

    /* while a read blocks (400 ms, nothing comes), what it acknowledged is
     * no longer pending */
    char more[1][BUS_ID_MAX];
    ASSERT_OK(publish_n(b, "t.rack", 1, more));
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read(b, "g", "c1", both, 2, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    bus_acks_t wait1[] = {{.stream = s, .ids = (const char(*)[BUS_ID_MAX])more, .n = 1}};
    pending_probe_t probe = {.be = be, .stream = s, .pending = -1};
    pthread_t th;
    pthread_create(&th, NULL, probe_pending_later, &probe);
    bus_batch_clear(&bt);
    ASSERT_OK(bus_read_acking(b, "g", "c1", both, 2, 10, 400, wait1, 1, &bt));
    int64_t returned_us = clock_mono_us();
    pthread_join(th, NULL);
    CU_ASSERT(wait1[0].done);
    CU_ASSERT_EQUAL(bt.n, 0);
    CU_ASSERT(probe.probed_us < returned_us); /* the probe's count was taken while the read was blocked */
    CU_ASSERT_EQUAL(probe.pending, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

static void deliveries_counted(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.deliv";
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.deliv", 1, NULL));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 1);
    for (uint32_t want = 2; want <= 3; want++) {
        bus_batch_clear(&bt);
        ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
        CU_ASSERT_EQUAL_FATAL(bt.n, 1);
        CU_ASSERT_EQUAL(bt.msgs[0].deliveries, want);
    }
    bus_pending_entry_t pe[2];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 2, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(pe[0].deliveries, 3);
    bus_batch_free(&bt);
    bus_close(b);
}

/* A delivery count set back: the next history read counts on from it; an
 * entry acknowledged meanwhile, or another consumer's, is left as it is. */
static void deliveries_set_back(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.setdeliv";
    char ids[4][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.setdeliv", 4, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 3, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "g", "c2", s, false, 10, 0, &bt)); /* ids[3] is c2's */
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    for (int k = 0; k < 3; k++) { /* deliveries 4 each */
        bus_batch_clear(&bt);
        ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    }
    const char *ack0[] = {ids[0]};
    ASSERT_OK(bus_ack(b, s, "g", ack0, 1));
    static const uint32_t counts[4] = {7, 0, 2, 9};
    ASSERT_OK(bus_set_deliveries(b, s, "g", "c1", (const char(*)[BUS_ID_MAX])ids, counts, 4));
    bus_pending_entry_t pe[4];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 4, &n));
    CU_ASSERT_EQUAL_FATAL(n, 3); /* the acknowledged one stays gone */
    CU_ASSERT_STRING_EQUAL(pe[0].entry_id, ids[1]);
    CU_ASSERT_EQUAL(pe[0].deliveries, 0);
    CU_ASSERT_STRING_EQUAL(pe[1].consumer, "c1");
    CU_ASSERT_EQUAL(pe[1].deliveries, 2);
    CU_ASSERT_TRUE(pe[1].idle_ms < 1000);
    CU_ASSERT_STRING_EQUAL(pe[2].consumer, "c2"); /* another consumer's: left alone */
    CU_ASSERT_EQUAL(pe[2].deliveries, 1);
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 1);
    CU_ASSERT_EQUAL(bt.msgs[1].deliveries, 3);
    char bad[1][BUS_ID_MAX] = {"junk"};
    CU_ASSERT_EQUAL(bus_set_deliveries(b, s, "g", "c1", (const char(*)[BUS_ID_MAX])bad, counts, 1), -1);
    bus_batch_free(&bt);
    bus_close(b);
}

static void reclaim_respects_min_idle(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.reclaim";
    char ids[2][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.reclaim", 2, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    bus_batch_clear(&bt);

    ASSERT_OK(bus_reclaim(b, s, "g", "c2", 300, 10, &bt)); /* not idle long enough */
    CU_ASSERT_EQUAL(bt.n, 0);
    clock_sleep_ms(400);
    const char *ack1[] = {ids[1]};
    ASSERT_OK(bus_ack(b, s, "g", ack1, 1));
    ASSERT_OK(bus_reclaim(b, s, "g", "c2", 300, 10, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[0]);
    CU_ASSERT(!bt.msgs[0].missing && !bt.msgs[0].bad);
    CU_ASSERT_EQUAL(bt.msgs[0].env.seq, 1);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 2);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].stream, s);
    bus_batch_clear(&bt);

    bus_pending_entry_t pe[4];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 4, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(pe[0].consumer, "c2");
    CU_ASSERT_EQUAL(pe[0].deliveries, 2);
    CU_ASSERT(pe[0].idle_ms < 300);

    /* the claim reset its idle time: nobody else can take it now */
    ASSERT_OK(bus_reclaim(b, s, "g", "c3", 300, 10, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);
    /* and it is c2's own pending entry now */
    ASSERT_OK(read1(b, "g", "c2", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 1);
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);

    /* count bounds a reclaim; min idle 0 takes everything */
    ASSERT_OK(publish_n(b, "t.reclaim", 3, NULL));
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 3);
    bus_batch_clear(&bt);
    ASSERT_OK(bus_reclaim(b, s, "g", "c4", 0, 2, &bt));
    CU_ASSERT_EQUAL(bt.n, 2);
    bus_batch_clear(&bt);
    ASSERT_OK(bus_reclaim(b, s, "g", "c4", 0, 10, &bt));
    CU_ASSERT_EQUAL(bt.n, 4);
    bus_batch_free(&bt);
    bus_close(b);
}

static void reclaim_deleted_is_missing(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.gone";
    char ids[3][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    ASSERT_OK(publish_n(b, "t.gone", 3, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    bus_batch_clear(&bt);
    const char *del[] = {ids[1]};
    ASSERT_OK(bus_delete_entries(b, s, del, 1));
    CU_ASSERT_EQUAL(stream_length(b, s), 2);

    /* a history read still lists it, without payload */
    ASSERT_OK(read1(b, "g", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    CU_ASSERT(!bt.msgs[0].missing && bt.msgs[1].missing && !bt.msgs[2].missing);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].entry_id, ids[1]);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].stream, s);
    CU_ASSERT_EQUAL(bt.msgs[0].deliveries, 2);
    CU_ASSERT_EQUAL(bt.msgs[1].deliveries, 1); /* a payload-less entry is not delivered again */
    bus_batch_clear(&bt);

    /* reclaim reports it missing (whatever its idle time, as Redis 7) and drops it */
    ASSERT_OK(bus_reclaim(b, s, "g", "c2", 60000, 10, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT(bt.msgs[0].missing);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].entry_id, ids[1]);
    bus_batch_clear(&bt);
    bus_pending_entry_t pe[4];
    size_t n = 0;
    ASSERT_OK(bus_pending(b, s, "g", pe, 4, &n));
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(pe[0].entry_id, ids[0]);
    CU_ASSERT_STRING_EQUAL(pe[1].entry_id, ids[2]);
    ASSERT_OK(bus_reclaim(b, s, "g", "c2", 0, 10, &bt));
    CU_ASSERT_EQUAL(bt.n, 2);
    for (size_t i = 0; i < bt.n; i++)
        CU_ASSERT(!bt.msgs[i].missing);
    bus_batch_free(&bt);
    bus_close(b);
}

static void bad_entry_decodes_as_bad(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.bad";
    ASSERT_OK(bus_group_create(b, s, "g"));
    char uuid[UUID_STR_LEN];
    uuid_v7(uuid);
    const char *partial[] = {"id", uuid, "type", "x.y"};
    ASSERT_OK(be->add_raw(s, partial, 2));
    const char *badseq[] = {"id", uuid,  "type", "x.y", "topic", "t.bad", "tenant", "t1",      "aggregate_id",
                            "a",  "seq", "abc",  "ts",  "1",     "v",     "1",      "payload", "{}"};
    ASSERT_OK(be->add_raw(s, badseq, 9));
    ASSERT_OK(publish_n(b, "t.bad", 1, NULL));

    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 3);
    CU_ASSERT(bt.msgs[0].bad && !bt.msgs[0].missing);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].why, "missing field topic");
    CU_ASSERT(bt.msgs[0].entry_id[0] != '\0');
    CU_ASSERT(bt.msgs[1].bad);
    CU_ASSERT_STRING_EQUAL(bt.msgs[1].why, "invalid seq");
    CU_ASSERT(!bt.msgs[2].bad);

    /* a bad entry dead-letters with what there is */
    ASSERT_OK(bus_dead_letter(b, "g", &bt.msgs[0], bt.msgs[0].why));
    bus_entry_t *e = NULL;
    size_t n = 0;
    ASSERT_OK(bus_range(b, "ecom:dlq:g", "-", "+", 0, &e, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(field(&e[0], "id"), uuid);
    CU_ASSERT_STRING_EQUAL(field(&e[0], "type"), "x.y");
    CU_ASSERT_PTR_NULL(field(&e[0], "topic"));
    CU_ASSERT_PTR_NULL(field(&e[0], "seq"));
    CU_ASSERT_STRING_EQUAL(field(&e[0], "error"), "missing field topic");
    CU_ASSERT_STRING_EQUAL(field(&e[0], "source_id"), bt.msgs[0].entry_id);
    bus_entries_free(e, n);
    bus_batch_free(&bt);
    bus_close(b);
}

static void dead_letter_contents(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.dl", *dlq = "ecom:dlq:dlt";
    ASSERT_OK(bus_group_create(b, s, "dlt"));
    envelope_t env;
    make_env(&env, "t.dl", 41);
    char id[1][BUS_ID_MAX];
    ASSERT_OK(bus_publish(b, &env, 1, id));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "dlt", "c1", s, false, 10, 0, &bt));
    ASSERT_OK(read1(b, "dlt", "c1", s, true, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 2);
    int64_t t0 = clock_now_ms();
    ASSERT_OK(bus_dead_letter(b, "dlt", &bt.msgs[1], "handler failed: boom"));
    int64_t t1 = clock_now_ms();

    bus_entry_t *e = NULL;
    size_t n = 0;
    ASSERT_OK(bus_range(b, dlq, "-", "+", 0, &e, &n));
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(e[0].nfields, ENV_NFIELDS + 6);
    char tmp[32];
    for (int i = 0; i < ENV_NFIELDS; i++) {
        const char *v = field(&e[0], envelope_field_name(i));
        CU_ASSERT_PTR_NOT_NULL_FATAL(v);
        CU_ASSERT_STRING_EQUAL(v, envelope_field_value(&env, i, tmp));
        /* envelope fields first, in their order */
        CU_ASSERT_STRING_EQUAL(e[0].fields[2 * i], envelope_field_name(i));
    }
    CU_ASSERT_STRING_EQUAL(field(&e[0], "error"), "handler failed: boom");
    CU_ASSERT_STRING_EQUAL(field(&e[0], "deliveries"), "2");
    CU_ASSERT_STRING_EQUAL(field(&e[0], "source_stream"), s);
    CU_ASSERT_STRING_EQUAL(field(&e[0], "source_id"), id[0]);
    CU_ASSERT_STRING_EQUAL(field(&e[0], "group"), "dlt");
    long long at = atoll(field(&e[0], "failed_at"));
    CU_ASSERT(at >= t0 && at <= t1);
    bus_entries_free(e, n);

    /* not acknowledged by the dead letter */
    CU_ASSERT_EQUAL(pending_count(b, s, "dlt"), 1);

    /* the DLQ entry still decodes as the envelope (for replay) */
    ASSERT_OK(bus_group_create(b, dlq, "replay"));
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "replay", "r1", dlq, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT(!bt.msgs[0].bad);
    CU_ASSERT(env_equal(&bt.msgs[0].env, &env));

    /* a missing message dead-letters as its record only */
    bus_msg_t gone = {.missing = true, .deliveries = 5};
    snprintf(gone.entry_id, sizeof gone.entry_id, "%s", id[0]);
    snprintf(gone.stream, sizeof gone.stream, "%s", s);
    ASSERT_OK(bus_dead_letter(b, "dlt", &gone, "payload gone"));
    ASSERT_OK(bus_range(b, dlq, "-", "+", 0, &e, &n));
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_PTR_NULL(field(&e[1], "id"));
    CU_ASSERT_EQUAL(e[1].nfields, 6);
    CU_ASSERT_STRING_EQUAL(field(&e[1], "deliveries"), "5");
    CU_ASSERT_STRING_EQUAL(field(&e[1], "error"), "payload gone");
    /* bus_range bounds and count */
    bus_entries_free(e, n);
    ASSERT_OK(bus_range(b, dlq, "-", "+", 1, &e, &n));
    CU_ASSERT_EQUAL(n, 1);
    bus_entries_free(e, n);
    envelope_clear(&env);
    bus_batch_free(&bt);
    bus_close(b);
}

/* A dead letter goes back to its group's replay stream and out of the DLQ
 * in one step: a second replay of the same entry (two operators at once)
 * sends nothing, and an entry holding no envelope stays where it is. */
static void dead_letter_replay_moves(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.dlr", *dlq = "ecom:dlq:dlr", *replay = "ecom:replay:dlr";
    ASSERT_OK(bus_group_create(b, s, "dlr"));
    envelope_t env;
    make_env(&env, "t.dlr", 7);
    char id[1][BUS_ID_MAX];
    ASSERT_OK(bus_publish(b, &env, 1, id));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "dlr", "c1", s, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    ASSERT_OK(bus_dead_letter(b, "dlr", &bt.msgs[0], "boom"));
    bus_msg_t gone = {.missing = true, .deliveries = 5};
    snprintf(gone.entry_id, sizeof gone.entry_id, "%s", id[0]);
    snprintf(gone.stream, sizeof gone.stream, "%s", s);
    ASSERT_OK(bus_dead_letter(b, "dlr", &gone, "payload gone"));
    bus_entry_t *e = NULL, *left = NULL, *sent = NULL;
    size_t n = 0, nleft = 0, nsent = 0;
    ASSERT_OK(bus_range(b, dlq, "-", "+", 0, &e, &n));
    CU_ASSERT_EQUAL_FATAL(n, 2);

    const char *why = NULL;
    CU_ASSERT_EQUAL(bus_replay_dead(b, "dlr", &e[0], &why), 0);
    ASSERT_OK(bus_range(b, dlq, "-", "+", 0, &left, &nleft));
    CU_ASSERT_EQUAL_FATAL(nleft, 1);
    CU_ASSERT_STRING_EQUAL(left[0].entry_id, e[1].entry_id);
    ASSERT_OK(bus_range(b, replay, "-", "+", 0, &sent, &nsent));
    CU_ASSERT_EQUAL_FATAL(nsent, 1);
    CU_ASSERT_EQUAL(sent[0].nfields, ENV_NFIELDS); /* the envelope, not the failure record */
    CU_ASSERT_PTR_NULL(field(&sent[0], "error"));
    bus_entries_free(sent, nsent);
    bus_entries_free(left, nleft);

    /* the same entry again: gone from the DLQ, nothing sent */
    CU_ASSERT_EQUAL(bus_replay_dead(b, "dlr", &e[0], &why), 2);
    CU_ASSERT_STRING_EQUAL(why, "no longer in the dead-letter stream");
    ASSERT_OK(bus_range(b, replay, "-", "+", 0, &sent, &nsent));
    CU_ASSERT_EQUAL(nsent, 1);
    bus_entries_free(sent, nsent);

    /* no envelope in it: refused, left in place */
    why = NULL;
    CU_ASSERT_EQUAL(bus_replay_dead(b, "dlr", &e[1], &why), 1);
    CU_ASSERT_PTR_NOT_NULL(why);
    ASSERT_OK(bus_range(b, dlq, "-", "+", 0, &left, &nleft));
    CU_ASSERT_EQUAL(nleft, 1);
    bus_entries_free(left, nleft);

    /* the replayed message reaches the group on its replay stream */
    bus_batch_clear(&bt);
    ASSERT_OK(read1(b, "dlr", "c1", replay, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT(!bt.msgs[0].bad && env_equal(&bt.msgs[0].env, &env));
    bus_entries_free(e, n);
    envelope_clear(&env);
    bus_batch_free(&bt);
    bus_close(b);
}

static void trim_keeps_what_groups_need(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    uint64_t trimmed = 99;

    /* a stream without groups is left alone */
    const char *free_s = "ecom:t.trim.nogroup";
    ASSERT_OK(publish_n(b, "t.trim.nogroup", 150, NULL));
    ASSERT_OK(bus_trim(b, free_s, &trimmed));
    CU_ASSERT_EQUAL(trimmed, 0);
    CU_ASSERT_EQUAL(stream_length(b, free_s), 150);
    ASSERT_OK(bus_trim(b, "ecom:t.trim.none", &trimmed)); /* no stream at all */
    CU_ASSERT_EQUAL(trimmed, 0);

    const char *s = "ecom:t.trim";
    enum { N = 250 };
    char(*ids)[BUS_ID_MAX] = xcalloc(N, sizeof *ids);
    ASSERT_OK(bus_group_create(b, s, "slow"));
    ASSERT_OK(bus_group_create(b, s, "fast"));
    ASSERT_OK(publish_n(b, "t.trim", N, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "fast", "c", s, false, N, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, N);
    ASSERT_OK(ack_batch(b, s, "fast", &bt));
    bus_batch_clear(&bt);

    /* "slow" has read nothing: nothing may go */
    ASSERT_OK(bus_trim(b, s, &trimmed));
    CU_ASSERT_EQUAL(trimmed, 0);
    CU_ASSERT_EQUAL(stream_length(b, s), N);

    /* "slow" reads 200 and acknowledges all but entry 150 */
    ASSERT_OK(read1(b, "slow", "c", s, false, 200, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 200);
    bus_msg_t keep = bt.msgs[150];
    memmove(&bt.msgs[150], &bt.msgs[151], 49 * sizeof *bt.msgs);
    bt.n = 199;
    ASSERT_OK(ack_batch(b, s, "slow", &bt));
    bt.msgs[bt.n++] = keep; /* so the batch still frees it */
    bus_batch_clear(&bt);

    uint64_t total = 0;
    ASSERT_OK(bus_trim(b, s, &trimmed));
    total += trimmed;
    CU_ASSERT(trimmed <= 150);
    CU_ASSERT_EQUAL(stream_length(b, s), N - total);
    bus_entry_t *e = NULL;
    size_t n = 0;
    ASSERT_OK(bus_range(b, s, ids[150], ids[150], 0, &e, &n));
    CU_ASSERT_EQUAL(n, 1); /* the pending entry survived */
    bus_entries_free(e, n);

    const char *ack150[] = {ids[150]};
    ASSERT_OK(bus_ack(b, s, "slow", ack150, 1));
    ASSERT_OK(bus_trim(b, s, &trimmed));
    total += trimmed;
    CU_ASSERT(total >= 100 && total <= 200);
    CU_ASSERT_EQUAL(stream_length(b, s), N - total);
    ASSERT_OK(bus_range(b, s, ids[200], "+", 0, &e, &n));
    CU_ASSERT_EQUAL(n, 50); /* never delivered to "slow": all kept */
    bus_entries_free(e, n);
    bus_stream_info_t si;
    ASSERT_OK(bus_stream_info(b, s, &si));
    CU_ASSERT(id_cmp(si.first_id, ids[200]) <= 0);
    CU_ASSERT_STRING_EQUAL(si.last_id, ids[N - 1]);

    /* "slow" reads the rest: they can go too, but the 50 others of "fast" stay acked */
    ASSERT_OK(read1(b, "slow", "c", s, false, N, 0, &bt));
    CU_ASSERT_EQUAL(bt.n, 50);
    ASSERT_OK(bus_trim(b, s, &trimmed)); /* pending: nothing more */
    CU_ASSERT(total + trimmed <= 200);
    total += trimmed;
    ASSERT_OK(ack_batch(b, s, "slow", &bt));
    ASSERT_OK(bus_trim(b, s, &trimmed));
    total += trimmed;
    CU_ASSERT(total <= N);
    CU_ASSERT_EQUAL(stream_length(b, s), N - total);
    bus_batch_free(&bt);
    free(ids);
    bus_close(b);
}

static void stream_info_reports(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.info";
    char ids[3][BUS_ID_MAX];
    ASSERT_OK(bus_group_create(b, s, "g"));
    bus_stream_info_t si;
    ASSERT_OK(bus_stream_info(b, s, &si));
    CU_ASSERT_EQUAL(si.length, 0);
    CU_ASSERT_EQUAL(si.ngroups, 1);
    CU_ASSERT_STRING_EQUAL(si.first_id, "");

    ASSERT_OK(publish_n(b, "t.info", 3, ids));
    bus_batch_t bt = {0};
    ASSERT_OK(read1(b, "g", "c1", s, false, 1, 0, &bt));
    ASSERT_OK(bus_group_create(b, s, "idle"));
    ASSERT_OK(bus_stream_info(b, s, &si));
    CU_ASSERT_EQUAL(si.length, 3);
    CU_ASSERT_STRING_EQUAL(si.first_id, ids[0]);
    CU_ASSERT_STRING_EQUAL(si.last_id, ids[2]);
    CU_ASSERT_EQUAL_FATAL(si.ngroups, 2);
    const bus_group_info_t *g = strcmp(si.groups[0].name, "g") == 0 ? &si.groups[0] : &si.groups[1];
    const bus_group_info_t *idle = g == &si.groups[0] ? &si.groups[1] : &si.groups[0];
    CU_ASSERT_STRING_EQUAL(g->name, "g");
    CU_ASSERT_EQUAL(g->consumers, 1);
    CU_ASSERT_EQUAL(g->pending, 1);
    CU_ASSERT_STRING_EQUAL(g->last_delivered, ids[0]);
    CU_ASSERT_EQUAL(g->lag, 2);
    CU_ASSERT_STRING_EQUAL(idle->name, "idle");
    CU_ASSERT_EQUAL(idle->consumers, 0);
    CU_ASSERT_EQUAL(idle->pending, 0);
    CU_ASSERT_STRING_EQUAL(idle->last_delivered, "0-0");
    CU_ASSERT_EQUAL(idle->lag, 3);

    ASSERT_OK(ack_batch(b, s, "g", &bt));
    ASSERT_OK(bus_stream_info(b, s, &si));
    CU_ASSERT_EQUAL(si.groups[0].pending + si.groups[1].pending, 0);

    ASSERT_OK(bus_stream_info(b, "ecom:t.info.none", &si));
    CU_ASSERT_EQUAL(si.length, 0);
    CU_ASSERT_EQUAL(si.ngroups, 0);
    bus_batch_free(&bt);
    bus_close(b);
}

static void list_and_delete_streams(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    ASSERT_OK(bus_group_create(b, "ecom:t.list.b", "g"));
    ASSERT_OK(bus_group_create(b, "ecom:t.list.a", "g"));
    ASSERT_OK(publish_n(b, "t.list.c", 1, NULL));
    char **names = NULL;
    size_t n = 0;
    ASSERT_OK(bus_list_streams(b, &names, &n));
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        found += strncmp(names[i], "ecom:t.list.", 12) == 0;
        CU_ASSERT(strncmp(names[i], "ecom:", 5) == 0);
        if (i > 0)
            CU_ASSERT(strcmp(names[i - 1], names[i]) < 0);
    }
    CU_ASSERT_EQUAL(found, 3);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);

    ASSERT_OK(bus_delete_stream(b, "ecom:t.list.b"));
    ASSERT_OK(bus_delete_stream(b, "ecom:t.list.none"));
    ASSERT_OK(bus_list_streams(b, &names, &n));
    found = 0;
    for (size_t i = 0; i < n; i++) {
        found += strncmp(names[i], "ecom:t.list.", 12) == 0;
        CU_ASSERT(strcmp(names[i], "ecom:t.list.b") != 0);
        free(names[i]);
    }
    free(names);
    CU_ASSERT_EQUAL(found, 2);
    bus_stream_info_t si;
    ASSERT_OK(bus_stream_info(b, "ecom:t.list.b", &si));
    CU_ASSERT_EQUAL(si.ngroups, 0);
    bus_batch_t bt = {0};
    CU_ASSERT_EQUAL(read1(b, "g", "c", "ecom:t.list.b", false, 1, 0, &bt), -1); /* its group went with it */
    bus_batch_free(&bt);
    bus_close(b);
}

typedef struct publisher {
    const backend_t *be;
    const char *topic;
    int delay_ms;
    int rc;
} publisher_t;

static void *publish_later(void *arg)
{
    publisher_t *p = arg;
    p->rc = -1;
    bus_t *b = p->be->open(); /* its own handle: another connection for Redis */
    if (!b)
        return NULL;
    clock_sleep_ms(p->delay_ms);
    p->rc = publish_n(b, p->topic, 1, NULL);
    bus_close(b);
    return NULL;
}

static void blocking_read_wakes(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *sa = "ecom:t.block.a", *sb = "ecom:t.block.b";
    const char *streams[] = {sa, sb};
    ASSERT_OK(bus_group_create(b, sa, "g"));
    ASSERT_OK(bus_group_create(b, sb, "g"));
    bus_batch_t bt = {0};

    /* nothing comes: it waits about block_ms */
    int64_t t0 = clock_mono_ms();
    ASSERT_OK(bus_read(b, "g", "c", streams, 2, false, 10, 200, &bt));
    int64_t waited = clock_mono_ms() - t0;
    CU_ASSERT_EQUAL(bt.n, 0);
    CU_ASSERT(waited >= 150 && waited < 3000);

    /* a publish to the second stream from elsewhere wakes it long before 10 s */
    publisher_t p = {be, "t.block.b", 200, -1};
    pthread_t th;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&th, NULL, publish_later, &p), 0);
    t0 = clock_mono_ms();
    ASSERT_OK(bus_read(b, "g", "c", streams, 2, false, 10, 10000, &bt));
    waited = clock_mono_ms() - t0;
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(p.rc, 0);
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT_STRING_EQUAL(bt.msgs[0].stream, sb);
    CU_ASSERT(waited >= 100 && waited < 3000);
    bus_batch_clear(&bt);

    /* history reads never block */
    t0 = clock_mono_ms();
    ASSERT_OK(bus_read(b, "g", "other", streams, 2, true, 10, 5000, &bt));
    CU_ASSERT_EQUAL(bt.n, 0);
    CU_ASSERT(clock_mono_ms() - t0 < 1000);
    bus_batch_free(&bt);
    bus_close(b);
}

static void nogroup_fails(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.nogroup";
    bus_batch_t bt = {0};
    CU_ASSERT_EQUAL(read1(b, "g", "c", "ecom:t.nogroup.none", false, 10, 0, &bt), -1); /* no stream */
    ASSERT_OK(publish_n(b, "t.nogroup", 1, NULL));
    CU_ASSERT_EQUAL(read1(b, "g", "c", s, false, 10, 0, &bt), -1); /* stream, no group */
    CU_ASSERT_EQUAL(read1(b, "g", "c", s, true, 10, 0, &bt), -1);
    CU_ASSERT_EQUAL(read1(b, "g", "c", s, false, 10, 100, &bt), -1);
    /* one stream of two lacks the group: refused, even though the other has data */
    ASSERT_OK(bus_group_create(b, "ecom:t.nogroup.ok", "g"));
    ASSERT_OK(publish_n(b, "t.nogroup.ok", 1, NULL));
    const char *two[] = {"ecom:t.nogroup.ok", s};
    CU_ASSERT_EQUAL(bus_read(b, "g", "c", two, 2, false, 10, 1000, &bt), -1);
    CU_ASSERT_EQUAL(bt.n, 0);
    CU_ASSERT_EQUAL(bus_reclaim(b, s, "g", "c", 0, 10, &bt), -1);
    bus_pending_entry_t pe[2];
    size_t n = 9;
    CU_ASSERT_EQUAL(bus_pending(b, s, "g", pe, 2, &n), -1);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_EQUAL(bus_ping(b), 0); /* the handle is still fine */
    CU_ASSERT_EQUAL(bus_ensure(b), 0);
    CU_ASSERT_EQUAL(read1(b, "g", "c", "ecom:t.nogroup.ok", false, 10, 0, &bt), 0);
    CU_ASSERT_EQUAL(bt.n, 1);
    bus_batch_free(&bt);
    bus_close(b);
}

/* Producers and consumers on their own threads and handles: every message
 * arrives exactly once. */
enum { PRODUCERS = 4, PER_PRODUCER = 5000, CONSUMERS = 3 };

typedef struct worker {
    const backend_t *be;
    int index;
    int rc;
    unsigned char *seen; /* consumers: by producer * PER_PRODUCER + seq - 1 */
    pthread_mutex_t *mu;
    size_t *total;
} worker_t;

static void *produce(void *arg)
{
    worker_t *w = arg;
    bus_t *b = w->be->open();
    w->rc = -1;
    if (!b)
        return NULL;
    envelope_t e[100];
    w->rc = 0;
    for (int done = 0; done < PER_PRODUCER && w->rc == 0; done += 100) {
        for (int i = 0; i < 100; i++) {
            make_env(&e[i], "t.conc", (size_t)(done + i));
            free(e[i].aggregate_id);
            e[i].aggregate_id = xasprintf("p%d", w->index);
        }
        w->rc = bus_publish(b, e, 100, NULL);
        for (int i = 0; i < 100; i++)
            envelope_clear(&e[i]);
    }
    bus_close(b);
    return NULL;
}

static void *consume(void *arg)
{
    worker_t *w = arg;
    bus_t *b = w->be->open();
    w->rc = -1;
    if (!b)
        return NULL;
    char name[16];
    snprintf(name, sizeof name, "c%d", w->index);
    bus_batch_t bt = {0};
    int idle_rounds = 0;
    bool all = false;
    w->rc = 0;
    while (!all && idle_rounds < 30 && w->rc == 0) {
        bus_batch_clear(&bt);
        if (read1(b, "g", name, "ecom:t.conc", false, 200, 100, &bt) != 0) {
            w->rc = -1;
            break;
        }
        idle_rounds = bt.n ? 0 : idle_rounds + 1;
        pthread_mutex_lock(w->mu);
        for (size_t i = 0; i < bt.n; i++) {
            const bus_msg_t *m = &bt.msgs[i];
            int p = -1;
            if (m->bad || sscanf(m->env.aggregate_id, "p%d", &p) != 1 || p < 0 || p >= PRODUCERS || m->env.seq < 1 ||
                m->env.seq > PER_PRODUCER) {
                w->rc = -1;
                continue;
            }
            w->seen[(size_t)p * PER_PRODUCER + (size_t)m->env.seq - 1]++;
            (*w->total)++;
        }
        all = *w->total >= PRODUCERS * PER_PRODUCER;
        pthread_mutex_unlock(w->mu);
        if (ack_batch(b, "ecom:t.conc", "g", &bt) != 0)
            w->rc = -1;
    }
    bus_batch_free(&bt);
    bus_close(b);
    return NULL;
}

static void concurrent_handles(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    ASSERT_OK(bus_group_create(b, "ecom:t.conc", "g"));
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    size_t total = 0;
    unsigned char *seen = xcalloc(PRODUCERS * PER_PRODUCER, 1);
    worker_t w[PRODUCERS + CONSUMERS];
    pthread_t th[PRODUCERS + CONSUMERS];
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        w[i] = (worker_t){be, i < PRODUCERS ? i : i - PRODUCERS, -1, seen, &mu, &total};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, i < PRODUCERS ? produce : consume, &w[i]), 0);
    }
    for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(w[i].rc, 0);
    }
    CU_ASSERT_EQUAL(total, PRODUCERS * PER_PRODUCER);
    size_t once = 0;
    for (size_t i = 0; i < PRODUCERS * PER_PRODUCER; i++)
        once += seen[i] == 1;
    CU_ASSERT_EQUAL(once, PRODUCERS * PER_PRODUCER);
    CU_ASSERT_EQUAL(pending_count(b, "ecom:t.conc", "g"), 0);
    free(seen);
    bus_close(b);
}

/* Entries of every size read back intact, read after read on one handle:
 * payloads larger than the Redis backend's reply arena chunks (64 KiB), and
 * batches whose replies span many chunks (kept and reused across reads). */
static void big_entries_read_back(const backend_t *be)
{
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.big";
    ASSERT_OK(bus_group_create(b, s, "g"));
    static const size_t sizes[] = {0, 1, 65536 - 64, 65536, 200000, 3};
    enum { N = 6, ROUNDS = 3, SMALL = 2000 };
    for (int round = 0; round < ROUNDS; round++) {
        envelope_t e[N];
        for (size_t i = 0; i < N; i++) {
            make_env(&e[i], "t.big", i);
            free(e[i].payload);
            /* a JSON string of sizes[i] characters, different per round */
            char *p = xmalloc(sizes[i] + 3);
            p[0] = '"';
            for (size_t k = 0; k < sizes[i]; k++)
                p[1 + k] = (char)('a' + (k + (size_t)round + i) % 26);
            p[sizes[i] + 1] = '"';
            p[sizes[i] + 2] = '\0';
            e[i].payload = p;
        }
        ASSERT_OK(bus_publish(b, e, N, NULL));
        ASSERT_OK(publish_n(b, "t.big", SMALL, NULL));
        bus_batch_t bt = {0};
        ASSERT_OK(bus_read(b, "g", "c1", &s, 1, false, N + SMALL, 0, &bt));
        CU_ASSERT_EQUAL_FATAL(bt.n, N + SMALL);
        for (size_t i = 0; i < N; i++) {
            CU_ASSERT(!bt.msgs[i].bad && !bt.msgs[i].missing);
            CU_ASSERT(env_equal(&bt.msgs[i].env, &e[i]));
        }
        for (size_t i = N; i < bt.n; i++) {
            char want[32];
            snprintf(want, sizeof want, "{\"i\":%zu}", i - N);
            CU_ASSERT_STRING_EQUAL(bt.msgs[i].env.payload, want);
        }
        bus_batch_free(&bt);
        for (size_t i = 0; i < N; i++)
            envelope_clear(&e[i]);
    }
    bus_close(b);
}

/* 100k messages through publish, read and ack, in order, in bounded time. */
static void throughput_100k(const backend_t *be)
{
    enum { N = 100000, BATCH = 1000 };
    bus_t *b = be->open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const char *s = "ecom:t.bulk";
    ASSERT_OK(bus_group_create(b, s, "g"));
    int64_t t0 = clock_mono_ms();
    ASSERT_OK(publish_n(b, "t.bulk", N, NULL));
    int64_t t_pub = clock_mono_ms() - t0;
    bus_batch_t bt = {0};
    size_t got = 0;
    bool in_order = true;
    t0 = clock_mono_ms();
    for (;;) {
        bus_batch_clear(&bt);
        ASSERT_OK(read1(b, "g", "c", s, false, BATCH, 0, &bt));
        if (bt.n == 0)
            break;
        for (size_t i = 0; i < bt.n; i++)
            in_order &= !bt.msgs[i].bad && bt.msgs[i].env.seq == (int64_t)(got + i + 1);
        got += bt.n;
        ASSERT_OK(ack_batch(b, s, "g", &bt));
    }
    int64_t t_read = clock_mono_ms() - t0;
    CU_ASSERT_EQUAL(got, N);
    CU_ASSERT(in_order);
    CU_ASSERT_EQUAL(pending_count(b, s, "g"), 0);
    /* a Redis approximate trim removes whole nodes, at most 10000 entries a call */
    uint64_t trimmed = 0, step = 0;
    for (int i = 0; i < 100; i++) {
        ASSERT_OK(bus_trim(b, s, &step));
        trimmed += step;
        if (step == 0)
            break;
    }
    CU_ASSERT(trimmed >= N / 2 && trimmed <= N);
    CU_ASSERT_EQUAL(stream_length(b, s), N - trimmed);
    fprintf(stderr, "[%s: publish %lld ms, read+ack %lld ms, trimmed %llu] ", be->name, (long long)t_pub,
            (long long)t_read, (unsigned long long)trimmed);
    /* generous: a quadratic step would take minutes at this size */
    CU_ASSERT(t_pub + t_read < 60000);
    bus_batch_free(&bt);
    bus_close(b);
}

/* ---- Redis only ---- */

static void redis_open_fails(void)
{
    char *err = NULL;
    bus_t *b = bus_open_redis("redis://127.0.0.1:1", &err);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_PTR_NOT_NULL(err);
    free(err);
    err = NULL;
    b = bus_open_redis("http://nope", &err);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_PTR_NOT_NULL(err);
    free(err);
    bus_close(NULL);
}

/* Kills every other client on this test's db: the bus under test (and any
 * connection a failed test left open). Returns how many. */
static int kill_other_clients(void)
{
    redis_url_t u;
    char *err = NULL;
    if (redis_url_parse(redis_url, &u) != 0)
        return -1;
    redisContext *c = redis_connect_url(redis_url, 2000, &err);
    if (!c) {
        free(err);
        return -1;
    }
    int killed = 0;
    redisReply *me = redisCommand(c, "CLIENT ID");
    redisReply *list = redisCommand(c, "CLIENT LIST TYPE normal");
    if (me && list && me->type == REDIS_REPLY_INTEGER && list->type == REDIS_REPLY_STRING) {
        char want_db[32];
        snprintf(want_db, sizeof want_db, " db=%d ", u.db);
        for (char *line = strtok(list->str, "\n"); line; line = strtok(NULL, "\n")) {
            long long id = 0;
            if (sscanf(line, "id=%lld", &id) != 1 || id == me->integer || !strstr(line, want_db))
                continue;
            redisReply *k = redisCommand(c, "CLIENT KILL ID %lld", id);
            if (k) {
                killed += k->type == REDIS_REPLY_INTEGER ? (int)k->integer : 0;
                freeReplyObject(k);
            }
        }
    }
    if (me)
        freeReplyObject(me);
    if (list)
        freeReplyObject(list);
    redisFree(c);
    return killed;
}

static void redis_reconnects(void)
{
    bus_t *b = open_redis();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_FALSE(bus_is_memory(b));
    ASSERT_OK(bus_ping(b));
    CU_ASSERT(kill_other_clients() >= 1);
    CU_ASSERT_EQUAL(bus_ping(b), -1);  /* notices and drops the dead connection */
    CU_ASSERT_EQUAL(bus_ensure(b), 0); /* connects again */
    CU_ASSERT_EQUAL(bus_ping(b), 0);
    CU_ASSERT(kill_other_clients() >= 1);
    CU_ASSERT_EQUAL(bus_ping(b), -1);
    CU_ASSERT_EQUAL(bus_ping(b), 0); /* the next call connects by itself */
    ASSERT_OK(bus_group_create(b, "ecom:t.reconnect", "g"));
    ASSERT_OK(publish_n(b, "t.reconnect", 2, NULL));
    CU_ASSERT_EQUAL(stream_length(b, "ecom:t.reconnect"), 2);
    bus_close(b);
}

/* Runs one command on a connection of its own: the reply's integer, or its
 * number of elements, or -1 (a status or an error). */
static long long redis_int(const char *fmt, const char *a)
{
    redisReply *r = test_redis_command(redis_url, fmt, a);
    long long v = !r                               ? -1
                  : r->type == REDIS_REPLY_INTEGER ? r->integer
                  : r->type == REDIS_REPLY_ARRAY   ? (long long)r->elements
                                                   : -1;
    freeReplyObject(r);
    return v;
}

/* Publishes 300 messages to topic, but message bad to t.wrongtype (a key of
 * another type); the call fails and leaves the stream the messages before it
 * only. */
static void publish_with_refusal(bus_t *b, const char *topic, size_t bad)
{
    enum { N = 300 }; /* three parts: 128, 128, 44 */
    envelope_t *e = xcalloc(N, sizeof *e);
    for (size_t i = 0; i < N; i++)
        make_env(&e[i], i == bad ? "t.wrongtype" : topic, i);
    CU_ASSERT_EQUAL(bus_publish(b, e, N, NULL), -1);
    for (size_t i = 0; i < N; i++)
        envelope_clear(&e[i]);
    free(e);
}

/* A publish that fails leaves a prefix of its batch on the bus, never an
 * entry without the ones before it: the caller publishes again from the
 * first that failed, and a later message of an aggregate must not be on the
 * stream ahead of an earlier one. An error that clears while a pipeline is
 * read (-LOADING at the end of a restart's load, -BUSY, -OOM) would leave
 * such holes; a key of another type refuses the same way, for good. */
static void redis_failed_publish_leaves_a_prefix(void)
{
    bus_t *b = open_redis();
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(redis_int("SADD ecom:t.wrongtype %s", "x"), 1);
    long long guards = redis_int("KEYS %s", "ecom:publish-guard:*");
    publish_with_refusal(b, "t.prefix1", 5); /* in the first part */
    CU_ASSERT_EQUAL(stream_length(b, "ecom:t.prefix1"), 5);
    publish_with_refusal(b, "t.prefix2", 200); /* in the second: the first part and 72 of the second */
    CU_ASSERT_EQUAL(stream_length(b, "ecom:t.prefix2"), 200);
    publish_with_refusal(b, "t.prefix3", 299); /* the last of the last part */
    CU_ASSERT_EQUAL(stream_length(b, "ecom:t.prefix3"), 299);
    /* the guard a part left for the next one stays (it expires); a
     * publish in parts that goes through removes it */
    CU_ASSERT_EQUAL(redis_int("KEYS %s", "ecom:publish-guard:*"), guards + 1);
    char(*ids)[BUS_ID_MAX] = xcalloc(300, sizeof *ids);
    ASSERT_OK(publish_n(b, "t.prefix4", 300, ids));
    CU_ASSERT_EQUAL(stream_length(b, "ecom:t.prefix4"), 300);
    for (size_t i = 1; i < 300; i++)
        CU_ASSERT(id_cmp(ids[i - 1], ids[i]) < 0);
    free(ids);
    CU_ASSERT_EQUAL(redis_int("KEYS %s", "ecom:publish-guard:*"), guards);
    bus_close(b);
}

/* A Unix socket URL reaches the same server: what one connection
 * publishes the other reads, and a socket that is not there fails the open. */
static void redis_unix_socket(void)
{
    freeReplyObject(test_redis_command(redis_url, "FLUSHDB")); /* the redis/ tests' streams have these names */
    publish_order_and_ids(&redis_unix_backend);
    blocking_read_wakes(&redis_unix_backend);
    ack_removes_pending(&redis_unix_backend);

    bus_t *tcp = open_redis(), *ux = open_redis_unix();
    CU_ASSERT_PTR_NOT_NULL_FATAL(tcp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ux);
    const char *st = "ecom:t.unix.cross";
    ASSERT_OK(bus_group_create(ux, st, "g"));
    envelope_t e;
    make_env(&e, "t.unix.cross", 1);
    ASSERT_OK(bus_publish(tcp, &e, 1, NULL));
    bus_batch_t bt = {0};
    ASSERT_OK(bus_read(ux, "g", "c", &st, 1, false, 10, 0, &bt));
    CU_ASSERT_EQUAL_FATAL(bt.n, 1);
    CU_ASSERT(env_equal(&bt.msgs[0].env, &e));
    bus_batch_free(&bt);
    envelope_clear(&e);
    bus_close(tcp);
    bus_close(ux);

    char *err = NULL;
    CU_ASSERT_PTR_NULL(bus_open_redis("unix:///nonexistent/ecom-redis.sock", &err));
    CU_ASSERT_PTR_NOT_NULL(err ? strstr(err, "/nonexistent/ecom-redis.sock") : NULL);
    free(err);
}

static void memory_is_memory(void)
{
    bus_t *b = open_memory();
    CU_ASSERT(bus_is_memory(b));
    CU_ASSERT_EQUAL(bus_ping(b), 0);
    CU_ASSERT_EQUAL(bus_ensure(b), 0);
    bus_close(b);
}

/* ---- registration ---- */

#define BOTH(fn)                                                                                                       \
    static void memory_##fn(void)                                                                                      \
    {                                                                                                                  \
        fn(&memory_backend);                                                                                           \
    }                                                                                                                  \
    static void redis_##fn(void)                                                                                       \
    {                                                                                                                  \
        fn(&redis_backend);                                                                                            \
    }
/* clang-format off */
#define PAIR(fn) {"memory/" #fn, memory_##fn}, {"redis/" #fn, redis_##fn}
/* clang-format on */

BOTH(publish_order_and_ids)
BOTH(big_entries_read_back)
BOTH(group_created_late)
BOTH(read_new_vs_own_pending)
BOTH(read_pending_pages)
BOTH(ack_removes_pending)
BOTH(group_others)
BOTH(read_acking_acks_first)
BOTH(deliveries_counted)
BOTH(deliveries_set_back)
BOTH(reclaim_respects_min_idle)
BOTH(reclaim_deleted_is_missing)
BOTH(bad_entry_decodes_as_bad)
BOTH(dead_letter_contents)
BOTH(dead_letter_replay_moves)
BOTH(trim_keeps_what_groups_need)
BOTH(stream_info_reports)
BOTH(list_and_delete_streams)
BOTH(blocking_read_wakes)
BOTH(nogroup_fails)
BOTH(concurrent_handles)
BOTH(throughput_100k)

static int suite_init(void)
{
    const char *level = getenv("LOG_LEVEL");
    log_configure(level ? level : "off", NULL); /* the expected failures log warnings */
    redis_url = test_redis_db();
    const char *sock = getenv("ECOM_TEST_REDIS_SOCKET_URL");
    redis_url_t u;
    if (sock && *sock && redis_url_parse(redis_url, &u) == 0)
        unix_url = redis_url_with_db(sock, u.db);
    mem = membus_new();
    return 0;
}

static int suite_clean(void)
{
    membus_free(mem);
    free(unix_url);
    return 0;
}

int main(void)
{
    static CU_TestInfo tests[] = {
        PAIR(publish_order_and_ids),
        PAIR(big_entries_read_back),
        PAIR(group_created_late),
        PAIR(read_new_vs_own_pending),
        PAIR(read_pending_pages),
        PAIR(ack_removes_pending),
        PAIR(group_others),
        PAIR(read_acking_acks_first),
        PAIR(deliveries_counted),
        PAIR(deliveries_set_back),
        PAIR(reclaim_respects_min_idle),
        PAIR(reclaim_deleted_is_missing),
        PAIR(bad_entry_decodes_as_bad),
        PAIR(dead_letter_contents),
        PAIR(dead_letter_replay_moves),
        PAIR(trim_keeps_what_groups_need),
        PAIR(stream_info_reports),
        PAIR(list_and_delete_streams),
        PAIR(blocking_read_wakes),
        PAIR(nogroup_fails),
        PAIR(concurrent_handles),
        PAIR(throughput_100k),
        {"memory/is_memory", memory_is_memory},
        {"redis/open_fails", redis_open_fails},
        {"redis/failed_publish_leaves_a_prefix", redis_failed_publish_leaves_a_prefix},
        {"redis/reconnects", redis_reconnects},
        {"redis/unix_socket", redis_unix_socket},
        CU_TEST_INFO_NULL,
    };
    return test_main("bus", tests, suite_init, suite_clean);
}
