/* tests/integration/test_services.c: the payment and notification services end
 * to end (outbox -> drainer -> bus -> services -> outbox -> ...), on the
 * in-memory store and bus and on real PostgreSQL and Redis: payments settle
 * once, the provider breaker makes payments wait instead of failing, refunds
 * never exceed the captured amount, and notifications reach the log sink, a
 * signed webhook and an SMTP server run by the test. */
#include "bus/bus.h"
#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/breaker.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "inbox/inbox.h"
#include "outbox-worker/drain.h"
#include "services/analytics/analytics.h"
#include "services/notification/channel.h"
#include "services/notification/notification.h"
#include "services/payment/payment.h"
#include "services/payment/provider.h"
#include "services/runtime.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TENANT "t1"
#define BUYER "buyer@example.com"
#define WEBHOOK_SECRET "test-webhook-secret"

/* ---- the system under test: drainer and services on threads ---- */

typedef struct sut {
    bool memory;
    const char *pg_url;
    const char *redis_url;
    memstore_t *mem;
    membus_t *membus;
    atomic_bool stop;
    pthread_t drain_th;
    pthread_t svc_th[3];
    int nsvc;
    const svc_def_t *defs[3];
    svc_opts_t sopts[3];
    char consumer[3][32];
    drain_opts_t dopts;
    char sink[128];
    bool started;
} sut_t;

typedef struct svc_arg {
    sut_t *s;
    int i;
} svc_arg_t;

static void *drain_thread(void *arg)
{
    sut_t *s = arg;
    log_set_role("drain");
    drain_run(&s->dopts, &s->stop);
    return NULL;
}

static void *svc_thread(void *arg)
{
    svc_arg_t *a = arg;
    log_set_role(a->s->defs[a->i]->group);
    svc_run(a->s->defs[a->i], &a->s->sopts[a->i], &a->s->stop);
    free(a);
    return NULL;
}

static void configure_notification(sut_t *s, const char *channels, const char *webhook_url, int smtp_port)
{
    notification_config_t nc = {.channels = channels,
                                .sink_file = s->sink,
                                .webhook_url = webhook_url,
                                .webhook_secret = WEBHOOK_SECRET,
                                .smtp_host = "127.0.0.1",
                                .smtp_port = smtp_port ? smtp_port : 25,
                                .smtp_from = "shop@example.com",
                                .timeout_ms = 2000,
                                .breaker = {.minimum_calls = 10}};
    char err[512];
    int rc = notification_configure(&nc, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "notification_configure: %s\n", err);
    ASSERT_OK(rc);
}

static void configure_payment(const breaker_params_t *bp, double failure_rate)
{
    payment_config_t pc = {.provider_latency_ms = 1, .provider_failure_rate = failure_rate};
    if (bp)
        pc.breaker = *bp;
    char err[256];
    ASSERT_OK(payment_configure(&pc, err, sizeof err));
    payment_provider_reset();
}

static void sut_init(sut_t *s, bool memory, const char *dbname)
{
    static int seq;
    memset(s, 0, sizeof *s);
    s->memory = memory;
    if (memory) {
        s->mem = memstore_new();
        s->membus = membus_new();
    } else {
        s->pg_url = test_pg_db(dbname, true);
        s->redis_url = test_redis_db();
    }
    snprintf(s->sink, sizeof s->sink, "/tmp/ecom-test-services-%d-%d.jsonl", (int)getpid(), ++seq);
    unlink(s->sink);
    s->dopts = (drain_opts_t){.database_url = s->pg_url,
                              .mem = s->mem,
                              .redis_url = s->redis_url,
                              .membus = s->membus,
                              .batch = 500,
                              .poll_ms = 10,
                              .retain_s = 0,
                              .trim_interval_ms = 500};
    configure_payment(NULL, 0);
    configure_notification(s, "log", NULL, 0);
}

static void sut_add(sut_t *s, const svc_def_t *def)
{
    int i = s->nsvc++;
    s->defs[i] = def;
    snprintf(s->consumer[i], sizeof s->consumer[i], "test-%s", def->group);
    s->sopts[i] = (svc_opts_t){.database_url = s->pg_url,
                               .mem = s->mem,
                               .redis_url = s->redis_url,
                               .membus = s->membus,
                               .consumer = s->consumer[i],
                               .batch = 64,
                               .block_ms = 50,
                               .lanes = 2, /* production's default: PostgreSQL runs split by aggregate */
                               .max_attempts = 5,
                               .reclaim_idle_ms = 5000,
                               .backoff_ms = 20,
                               .inbox_retain_s = 3600};
}

static db_t *sut_db(sut_t *s)
{
    char *err = NULL;
    db_t *db = s->memory ? db_open_memory(s->mem) : db_open_pg(s->pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(db);
    return db;
}

static bus_t *sut_bus(sut_t *s)
{
    char *err = NULL;
    bus_t *b = s->memory ? bus_open_memory(s->membus) : bus_open_redis(s->redis_url, &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    return b;
}

static void sut_start(sut_t *s)
{
    /* Groups exist before anything is published: the drainer trims what every
     * existing group has acknowledged, and analytics (every topic) discovers
     * new streams only every 2 s, so it could join after its entries went. */
    bus_t *b = sut_bus(s);
    for (int i = 0; i < s->nsvc; i++) {
        static const char *const all[] = {"payment", "auth", NULL};
        const char *const *topics = s->defs[i]->topics ? s->defs[i]->topics : all;
        for (const char *const *t = topics; *t; t++) {
            char stream[BUS_STREAM_MAX];
            envelope_stream_name(*t, stream, sizeof stream);
            ASSERT_OK(bus_group_create(b, stream, s->defs[i]->group));
        }
    }
    bus_close(b);
    pthread_create(&s->drain_th, NULL, drain_thread, s);
    for (int i = 0; i < s->nsvc; i++) {
        svc_arg_t *a = xmalloc(sizeof *a);
        *a = (svc_arg_t){s, i};
        pthread_create(&s->svc_th[i], NULL, svc_thread, a);
    }
    s->started = true;
}

static void sut_stop(sut_t *s)
{
    atomic_store(&s->stop, true);
    if (s->started) {
        pthread_join(s->drain_th, NULL);
        for (int i = 0; i < s->nsvc; i++)
            pthread_join(s->svc_th[i], NULL);
    }
    memstore_free(s->mem);
    membus_free(s->membus);
    s->mem = NULL;
    s->membus = NULL;
    unlink(s->sink);
    configure_payment(NULL, 0);
}

/* ---- writing commands as the gateway does ---- */

/* Inserts a pending payment inside the open transaction tx. */
/* *e: a message of TENANT, now, with a new id (the strings are borrowed). */
static void event_of(envelope_t *e, char *topic, char *type, char *aggregate, int64_t seq, char *payload)
{
    *e = (envelope_t){.type = type,
                      .topic = topic,
                      .tenant = TENANT,
                      .aggregate_id = aggregate,
                      .seq = seq,
                      .ts = clock_now_ms(),
                      .v = 1,
                      .traceparent = "",
                      .request_id = "",
                      .payload = payload};
    uuid_v7(e->id);
}

static void insert_payment(db_t *tx, const char *id, int64_t amount, const char *method)
{
    char order[64];
    snprintf(order, sizeof order, "order-%.8s", id + 28);
    if (tx->kind == DB_MEMORY) {
        payment_t p = {.amount = amount, .captured = 0, .refunded = 0};
        snprintf(p.id, sizeof p.id, "%s", id);
        snprintf(p.tenant, sizeof p.tenant, "%s", TENANT);
        snprintf(p.order_id, sizeof p.order_id, "%s", order);
        snprintf(p.currency, sizeof p.currency, "EUR");
        snprintf(p.method, sizeof p.method, "%s", method);
        snprintf(p.status, sizeof p.status, "pending");
        ASSERT_OK(payment_mem_insert(tx, &p));
        return;
    }
    char amt[24];
    snprintf(amt, sizeof amt, "%lld", (long long)amount);
    const char *prm[] = {id, TENANT, order, amt, "EUR", method};
    PGresult *r = pg_query(db_pg(tx),
                           "INSERT INTO payment.payments (id, tenant, order_id, amount, currency, method, status)"
                           " VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
                           6, prm);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    PQclear(r);
}

static char *requested_payload(const char *id, int64_t amount, const char *method)
{
    return xasprintf("{\"paymentId\":\"%s\",\"orderId\":\"order-%.8s\",\"amount\":%lld,\"currency\":\"EUR\","
                     "\"method\":\"%s\",\"subject\":\"" BUYER "\"}",
                     id, id + 28, (long long)amount, method);
}

/* 0 or -1 (no CUnit assertion: writer threads call it too). */
static int append_msg(db_t *tx, const char *topic, const char *type, const char *agg, const char *payload)
{
    outbox_msg_t m = {.topic = topic, .type = type, .tenant = TENANT, .aggregate_id = agg, .payload = payload};
    const char *why = NULL;
    return outbox_append(tx, &m, NULL, &why);
}

static void append(db_t *tx, const char *topic, const char *type, const char *agg, const char *payload)
{
    ASSERT_OK(append_msg(tx, topic, type, agg, payload));
}

/* n payments (pending row + payment.requested in one transaction each 50). */
static void create_payments(sut_t *s, int n, int64_t amount, const char *method, char (*ids)[UUID_STR_LEN])
{
    db_t *db = sut_db(s);
    for (int i = 0; i < n;) {
        ASSERT_OK(db_begin(db));
        for (int k = 0; k < 50 && i < n; k++, i++) {
            uuid_v7(ids[i]);
            insert_payment(db, ids[i], amount, method);
            char agg[64];
            snprintf(agg, sizeof agg, "payment:%s", ids[i]);
            char *pl = requested_payload(ids[i], amount, method);
            append(db, "payment", "payment.requested", agg, pl);
            free(pl);
        }
        ASSERT_OK(db_commit(db));
    }
    db_close(db);
}

/* ---- observing ---- */

static int count_status(sut_t *s, char (*ids)[UUID_STR_LEN], int n, const char *status)
{
    db_t *db = sut_db(s);
    int k = 0;
    for (int i = 0; i < n; i++) {
        payment_t p;
        if (payment_get(db, TENANT, ids[i], &p) == 0 && strcmp(p.status, status) == 0)
            k++;
    }
    db_close(db);
    return k;
}

static bool wait_status(sut_t *s, char (*ids)[UUID_STR_LEN], int n, const char *status, int timeout_ms)
{
    int64_t end = clock_mono_ms() + timeout_ms;
    while (count_status(s, ids, n, status) < n) {
        if (clock_mono_ms() > end)
            return false;
        clock_sleep_ms(50);
    }
    return true;
}

static payment_t get_payment(sut_t *s, const char *id)
{
    db_t *db = sut_db(s);
    payment_t p;
    memset(&p, 0, sizeof p);
    CU_ASSERT_EQUAL(payment_get(db, TENANT, id, &p), 0);
    db_close(db);
    return p;
}

/* Lines of the sink file containing needle; each line must be one JSON object. */
static size_t sink_lines(sut_t *s, const char *needle)
{
    FILE *f = fopen(s->sink, "r");
    if (!f)
        return 0;
    char *line = NULL;
    size_t cap = 0, n = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, f)) > 0) {
        json_object *o = NULL;
        const char *why = NULL;
        CU_ASSERT_EQUAL(json_parse_strict(line, (size_t)len - 1, &o, &why), 0);
        json_object_put(o);
        if (strstr(line, needle))
            n++;
    }
    free(line);
    fclose(f);
    return n;
}

/* Deliveries of a subject (NULL = all), optionally of one type and channel. */
static size_t deliveries(sut_t *s, const char *subject, const char *type, const char *channel)
{
    db_t *db = sut_db(s);
    notification_delivery_t *d = NULL;
    size_t n = 0, k = 0;
    CU_ASSERT_EQUAL(notification_list(db, TENANT, subject, 10000, &d, &n), 0);
    for (size_t i = 0; i < n; i++)
        if ((!type || strcmp(d[i].type, type) == 0) && (!channel || strcmp(d[i].channel, channel) == 0))
            k++;
    notification_deliveries_free(d, n);
    db_close(db);
    return k;
}

static bool wait_deliveries(sut_t *s, const char *subject, const char *type, const char *channel, size_t want,
                            int timeout_ms)
{
    int64_t end = clock_mono_ms() + timeout_ms;
    while (deliveries(s, subject, type, channel) < want) {
        if (clock_mono_ms() > end)
            return false;
        clock_sleep_ms(50);
    }
    return true;
}

/* DLQ entries of a group; with needle, only those whose error contains it. */
static size_t dlq(sut_t *s, const char *group, const char *needle)
{
    bus_t *b = sut_bus(s);
    char stream[96];
    snprintf(stream, sizeof stream, "ecom:dlq:%s", group);
    bus_entry_t *ents = NULL;
    size_t n = 0, k = 0;
    CU_ASSERT_EQUAL(bus_range(b, stream, "-", "+", 0, &ents, &n), 0);
    for (size_t i = 0; i < n; i++)
        for (size_t f = 0; f < ents[i].nfields; f++)
            if (strcmp(ents[i].fields[2 * f], "error") == 0 && (!needle || strstr(ents[i].fields[2 * f + 1], needle)))
                k++;
    bus_entries_free(ents, n);
    bus_close(b);
    return k;
}

static size_t events_of_type(sut_t *s, const char *type)
{
    db_t *db = sut_db(s);
    analytics_event_t *ev = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(analytics_list(db, TENANT, type, NULL, 10000, &ev, &n), 0);
    analytics_events_free(ev, n);
    db_close(db);
    return n;
}

/* ---- tests: payment ---- */

static void happy_path(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_happy");
    sut_add(&s, payment_service());
    sut_add(&s, notification_service());
    sut_add(&s, analytics_service());
    sut_start(&s);
    char ids[1][UUID_STR_LEN];
    create_payments(&s, 1, 1999, "card", ids);
    CU_ASSERT_TRUE(wait_status(&s, ids, 1, "succeeded", 15000));
    payment_t p = get_payment(&s, ids[0]);
    CU_ASSERT_EQUAL(p.captured, 1999);
    CU_ASSERT_EQUAL(p.refunded, 0);
    CU_ASSERT_STRING_EQUAL(p.currency, "EUR");
    CU_ASSERT_EQUAL(strncmp(p.provider_ref, "sim_", 4), 0);
    CU_ASSERT_TRUE(wait_deliveries(&s, BUYER, "payment.succeeded", "log", 1, 15000));
    CU_ASSERT_TRUE(wait_deliveries(&s, NULL, NULL, NULL, 1, 1000));
    for (int i = 0; i < 100 && events_of_type(&s, "payment.succeeded") < 1; i++)
        clock_sleep_ms(50);
    clock_sleep_ms(300); /* nothing more may arrive */
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, NULL), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, ids[0]), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "\"type\":\"payment.succeeded\""), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "19.99 EUR"), 1);
    size_t nreq = events_of_type(&s, "payment.requested"), nok = events_of_type(&s, "payment.succeeded");
    CU_ASSERT_EQUAL(nreq, 1);
    CU_ASSERT_EQUAL(nok, 1);
    if (nreq != 1 || nok != 1)
        fprintf(stderr, "analytics: %zu payment.requested, %zu payment.succeeded\n", nreq, nok);
    /* the event's id is made of its command's: applied again after a lost
     * commit, the command makes the same event again (payment.c, emit) */
    db_t *db = sut_db(&s);
    analytics_event_t *req = NULL, *ok = NULL;
    size_t n1 = 0, n2 = 0;
    CU_ASSERT_EQUAL(analytics_list(db, TENANT, "payment.requested", NULL, 10, &req, &n1), 0);
    CU_ASSERT_EQUAL(analytics_list(db, TENANT, "payment.succeeded", NULL, 10, &ok, &n2), 0);
    if (n1 == 1 && n2 == 1) {
        char name[128], want[UUID_STR_LEN];
        snprintf(name, sizeof name, "payment\n%s\npayment.succeeded", req[0].id);
        uuid_v7_derived(want, req[0].occurred_ms, name);
        CU_ASSERT_STRING_EQUAL(ok[0].id, want);
    }
    analytics_events_free(req, n1);
    analytics_events_free(ok, n2);
    db_close(db);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.charges, 1);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
}

static void test_happy_memory(void)
{
    happy_path(true);
}

static void test_happy_real(void)
{
    happy_path(false);
}

/* The same payment.requested envelope delivered twice charges once. */
static void duplicate(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_dup");
    sut_add(&s, payment_service());
    sut_add(&s, notification_service());
    sut_add(&s, analytics_service());
    char id[UUID_STR_LEN];
    uuid_v7(id);
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    insert_payment(db, id, 500, "card");
    ASSERT_OK(db_commit(db));
    db_close(db);
    char agg[64];
    snprintf(agg, sizeof agg, "payment:%s", id);
    char *pl = requested_payload(id, 500, "card");
    envelope_t e;
    event_of(&e, "payment", "payment.requested", agg, 1, pl);
    envelope_t twice[2] = {e, e};
    bus_t *b = sut_bus(&s);
    char entry[2][BUS_ID_MAX];
    ASSERT_OK(bus_publish(b, twice, 2, entry));
    sut_start(&s);
    char ids[1][UUID_STR_LEN];
    memcpy(ids[0], id, UUID_STR_LEN);
    CU_ASSERT_TRUE(wait_status(&s, ids, 1, "succeeded", 15000));
    /* both entries delivered to the payment group and acknowledged */
    bool drained = false;
    for (int i = 0; i < 200 && !drained; i++) {
        bus_stream_info_t info;
        memset(&info, 0, sizeof info);
        ASSERT_OK(bus_stream_info(b, "ecom:payment", &info));
        for (size_t g = 0; g < info.ngroups; g++)
            if (strcmp(info.groups[g].name, "payment") == 0 && info.groups[g].pending == 0 &&
                bus_entry_id_cmp(info.groups[g].last_delivered, entry[1]) >= 0)
                drained = true;
        if (!drained)
            clock_sleep_ms(50);
    }
    CU_ASSERT_TRUE(drained);
    CU_ASSERT_TRUE(wait_deliveries(&s, BUYER, "payment.succeeded", NULL, 1, 15000));
    for (int i = 0; i < 100 && events_of_type(&s, "payment.succeeded") < 1; i++)
        clock_sleep_ms(50);
    clock_sleep_ms(300);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.calls, 1);
    CU_ASSERT_EQUAL(st.charges, 1);
    CU_ASSERT_EQUAL(events_of_type(&s, "payment.succeeded"), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, NULL), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, id), 1);
    CU_ASSERT_EQUAL(get_payment(&s, id).captured, 500);
    bus_close(b);
    free(pl);
    sut_stop(&s);
}

static void test_duplicate_memory(void)
{
    duplicate(true);
}

static void test_duplicate_real(void)
{
    duplicate(false);
}

/* Declines are final: failed with a reason, payment.failed, a notification. */
static void decline(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_decline");
    sut_add(&s, payment_service());
    sut_add(&s, notification_service());
    sut_start(&s);
    char declined[1][UUID_STR_LEN], huge[1][UUID_STR_LEN];
    create_payments(&s, 1, 700, "card_declined", declined);
    create_payments(&s, 1, PROVIDER_LIMIT + 1, "card", huge);
    CU_ASSERT_TRUE(wait_status(&s, declined, 1, "failed", 15000));
    CU_ASSERT_TRUE(wait_status(&s, huge, 1, "failed", 15000));
    payment_t p = get_payment(&s, declined[0]);
    CU_ASSERT_PTR_NOT_NULL(strstr(p.failure_reason, "declined"));
    CU_ASSERT_EQUAL(p.captured, 0);
    p = get_payment(&s, huge[0]);
    CU_ASSERT_PTR_NOT_NULL(strstr(p.failure_reason, "limit"));
    CU_ASSERT_TRUE(wait_deliveries(&s, BUYER, "payment.failed", "log", 2, 15000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, NULL), 2);
    CU_ASSERT_EQUAL(sink_lines(&s, "could not be completed"), 2);
    CU_ASSERT_EQUAL(sink_lines(&s, declined[0]), 1);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.declines, 2);
    CU_ASSERT_EQUAL(st.charges, 0);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    sut_stop(&s);
}

static void test_decline_memory(void)
{
    decline(true);
}

static void test_decline_real(void)
{
    decline(false);
}

/* A provider failing every call for 2 s: the breaker opens, payments wait
 * (deferred, not dead-lettered), and all complete once it recovers. */
static void outage(bool memory)
{
    enum { N = 20 };
    sut_t s;
    sut_init(&s, memory, "svc_outage");
    breaker_params_t bp = {.window_ms = 5000,
                           .minimum_calls = 4,
                           .failure_rate_threshold = 50,
                           .open_duration_ms = 400,
                           .half_open_max_calls = 2};
    configure_payment(&bp, 100);
    sut_add(&s, payment_service());
    sut_add(&s, notification_service());
    char ids[N][UUID_STR_LEN];
    create_payments(&s, N, 1000, "card", ids);
    metric_t *deferred = metrics_counter("ecom_service_deferred_total",
                                         "Messages deferred: a dependency was unavailable", "group=\"payment\"");
    uint64_t deferred0 = metrics_value(deferred);
    sut_start(&s);
    clock_sleep_ms(2000);
    CU_ASSERT_TRUE(metrics_value(deferred) > deferred0);
    breaker_stats_t bs;
    payment_breaker_stats(&bs);
    CU_ASSERT_TRUE(bs.rejected > 0);
    if (bs.rejected == 0)
        fprintf(stderr, "provider breaker is %s with no rejection\n", breaker_state_name(bs.state));
    CU_ASSERT_EQUAL(count_status(&s, ids, N, "succeeded"), 0);
    CU_ASSERT_EQUAL(count_status(&s, ids, N, "pending"), N);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_TRUE(st.failures >= 4);
    CU_ASSERT_TRUE(st.calls < 4 * N); /* the open breaker kept most calls away */
    payment_provider_set_failure_rate(0);
    CU_ASSERT_TRUE(wait_status(&s, ids, N, "succeeded", 30000));
    CU_ASSERT_TRUE(wait_deliveries(&s, BUYER, "payment.succeeded", "log", N, 15000));
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.charges, N);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    payment_breaker_stats(&bs);
    CU_ASSERT_EQUAL(bs.state, BREAKER_CLOSED);
    sut_stop(&s);
}

static void test_outage_memory(void)
{
    outage(true);
}

static void test_outage_real(void)
{
    outage(false);
}

/* ---- refunds ---- */

enum { REFUND_PAYMENTS = 200, REFUND_AMOUNT = 1000 };
static const int64_t refund_amounts[3] = {400, 500, 300}; /* 1200 > 1000 */

typedef struct refund_writer {
    sut_t *s;
    char (*ids)[UUID_STR_LEN];
    int which;
    db_t *db; /* opened by the test's thread */
    bool ok;
} refund_writer_t;

static void *refund_thread(void *arg)
{
    refund_writer_t *w = arg;
    w->ok = true;
    /* each transaction appends to its payments' aggregates in ascending
     * order (the ids are drawn in order), as outbox_append_many locks them */
    for (int i = 0; i < REFUND_PAYMENTS && w->ok;) {
        if (db_begin(w->db) != 0) {
            w->ok = false;
            break;
        }
        int at = i;
        char state[8] = "";
        for (int k = 0; k < 20 && i < REFUND_PAYMENTS && w->ok; k++, i++) {
            char rid[UUID_STR_LEN], agg[64];
            uuid_v7(rid);
            snprintf(agg, sizeof agg, "payment:%s", w->ids[i]);
            char *pl = xasprintf("{\"paymentId\":\"%s\",\"refundId\":\"%s\",\"amount\":%lld}", w->ids[i], rid,
                                 (long long)refund_amounts[w->which]);
            if (append_msg(w->db, "payment", "payment.refund.requested", agg, pl) != 0) {
                w->ok = false;
                at = i;
                snprintf(state, sizeof state, "%s", pg_last_sqlstate());
            }
            free(pl);
        }
        if (w->ok && db_commit(w->db) != 0) {
            w->ok = false;
            snprintf(state, sizeof state, "%s", pg_last_sqlstate());
        }
        if (!w->ok) {
            fprintf(stderr, "\n  refund writer %d failed at payment %d: SQLSTATE %s\n", w->which, at, state);
            db_rollback(w->db);
        }
    }
    return NULL;
}

static uint64_t refunds_decided(sut_t *s, char (*ids)[UUID_STR_LEN])
{
    db_t *db = sut_db(s);
    uint64_t n = 0;
    for (int i = 0; i < REFUND_PAYMENTS; i++) {
        payment_refund_totals_t t;
        ASSERT_OK(payment_refund_totals(db, TENANT, ids[i], &t));
        n += t.succeeded + t.rejected;
    }
    db_close(db);
    return n;
}

static void refunds(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_refunds");
    sut_add(&s, payment_service());
    sut_add(&s, notification_service());
    sut_start(&s);
    char(*ids)[UUID_STR_LEN] = xcalloc(REFUND_PAYMENTS, sizeof *ids);
    /* a slow provider: one at a time, 200 charges would take 4 s; a batch's
     * charges go side by side */
    payment_provider_set_latency_ms(20);
    payment_provider_reset();
    create_payments(&s, REFUND_PAYMENTS, REFUND_AMOUNT, "card", ids);
    CU_ASSERT_TRUE(wait_status(&s, ids, REFUND_PAYMENTS, "succeeded", 30000));
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_TRUE(st.widest > 1); /* created 50 to a transaction: their charges share a latency */
    if (st.widest <= 1)
        fprintf(stderr, "\n  200 charges went one at a time\n");
    payment_provider_set_latency_ms(1);
    /* three writers at once, each asking one refund of every payment */
    pthread_t th[3];
    refund_writer_t w[3];
    for (int i = 0; i < 3; i++)
        w[i] = (refund_writer_t){.s = &s, .ids = ids, .which = i, .db = sut_db(&s)};
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, refund_thread, &w[i]);
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_TRUE(w[i].ok);
        db_close(w[i].db);
    }
    int64_t end = clock_mono_ms() + 30000;
    while (refunds_decided(&s, ids) < 3 * REFUND_PAYMENTS && clock_mono_ms() < end)
        clock_sleep_ms(100);
    CU_ASSERT_EQUAL(refunds_decided(&s, ids), 3 * REFUND_PAYMENTS);
    db_t *db = sut_db(&s);
    int exact = 0, within = 0, rejected_each = 0, listed = 0;
    size_t applied = 0;
    for (int i = 0; i < REFUND_PAYMENTS; i++) {
        payment_t p;
        ASSERT_OK(payment_get(db, TENANT, ids[i], &p));
        payment_refund_totals_t t;
        ASSERT_OK(payment_refund_totals(db, TENANT, ids[i], &t));
        within += p.refunded <= p.captured && p.captured == REFUND_AMOUNT;
        exact += p.refunded == t.succeeded_sum && t.succeeded + t.rejected == 3;
        /* the list a payment's read shows: the same three, by id, refused ones with their reason */
        payment_refund_t list[PAYMENT_REFUNDS_SHOWN];
        size_t nl = 0;
        ASSERT_OK(payment_refunds(db, TENANT, ids[i], list, &nl));
        uint64_t ok = 0, refused = 0;
        int64_t sum = 0;
        bool ordered = true, reasons = true;
        for (size_t k = 0; k < nl; k++) {
            ok += list[k].succeeded;
            refused += !list[k].succeeded;
            sum += list[k].succeeded ? list[k].amount : 0;
            reasons =
                reasons && (list[k].succeeded ? list[k].reason[0] == 0 : strstr(list[k].reason, "exceeds") != NULL);
            ordered = ordered && (k == 0 || strcmp(list[k - 1].id, list[k].id) < 0);
        }
        listed += nl == 3 && ok == t.succeeded && refused == t.rejected && sum == t.succeeded_sum && ordered && reasons;
        rejected_each += t.rejected >= 1;
        applied += t.succeeded;
    }
    db_close(db);
    CU_ASSERT_EQUAL(within, REFUND_PAYMENTS);
    CU_ASSERT_EQUAL(exact, REFUND_PAYMENTS);
    CU_ASSERT_EQUAL(rejected_each, REFUND_PAYMENTS);
    CU_ASSERT_EQUAL(listed, REFUND_PAYMENTS);
    if (!memory) {
        char *err = NULL;
        PGconn *c = pg_connect(s.pg_url, "test", &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        PGresult *r =
            pg_query(c,
                     "SELECT count(*) FROM payment.payments p WHERE p.refunded <> (SELECT coalesce(sum(amount), 0)"
                     " FROM payment.refunds f WHERE f.payment_id = p.id AND f.status = 'succeeded')"
                     " OR p.refunded > p.captured",
                     0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_STRING_EQUAL(PQgetvalue(r, 0, 0), "0");
        PQclear(r);
        r = pg_query(c, "SELECT count(*) FROM payment.refunds WHERE status = 'rejected' AND reason LIKE '%exceeds%'", 0,
                     NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        CU_ASSERT_TRUE(strtol(PQgetvalue(r, 0, 0), NULL, 10) >= REFUND_PAYMENTS);
        PQclear(r);
        PQfinish(c);
    }
    /* a refund of the largest amount a command can carry is refused like any
     * other over the capture, not a storage error (refunded + amount
     * overflowed bigint) retried into the DLQ */
    db = sut_db(&s);
    payment_refund_totals_t before, after = {0};
    ASSERT_OK(payment_refund_totals(db, TENANT, ids[0], &before));
    char rid[UUID_STR_LEN], agg[64];
    uuid_v7(rid);
    snprintf(agg, sizeof agg, "payment:%s", ids[0]);
    char *huge = xasprintf("{\"paymentId\":\"%s\",\"refundId\":\"%s\",\"amount\":9223372036854775807}", ids[0], rid);
    ASSERT_OK(db_begin(db));
    ASSERT_OK(append_msg(db, "payment", "payment.refund.requested", agg, huge));
    ASSERT_OK(db_commit(db));
    free(huge);
    for (int i = 0; i < 300 && after.rejected <= before.rejected; i++) {
        ASSERT_OK(payment_refund_totals(db, TENANT, ids[0], &after));
        if (after.rejected <= before.rejected)
            clock_sleep_ms(50);
    }
    db_close(db);
    CU_ASSERT_EQUAL(after.rejected, before.rejected + 1);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    /* every applied refund was announced and notified; refund commands carry
     * no subject, so the tenant is the recipient */
    CU_ASSERT_TRUE(applied >= REFUND_PAYMENTS);
    CU_ASSERT_TRUE(wait_deliveries(&s, TENANT, "payment.refunded", "log", applied, 15000));
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(deliveries(&s, TENANT, "payment.refunded", "log"), applied);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    free(ids);
    sut_stop(&s);
}

/* A refund in the same batch as its payment's charge: the batch holds its
 * settles back (PostgreSQL) and must write them before the refund reads the
 * row, or the refund would find the payment still pending. */
static void refund_same_batch(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_refund_batch");
    sut_add(&s, payment_service());
    char ids[3][UUID_STR_LEN];
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    for (int i = 0; i < 3; i++) {
        uuid_v7(ids[i]);
        insert_payment(db, ids[i], 1000, "card");
    }
    ASSERT_OK(db_commit(db));
    db_close(db);
    /* on the stream before the service starts: its first read takes them all, one batch */
    static const int64_t refund[3] = {300, 0, 2000}; /* applied, none, over the captured amount */
    envelope_t e[6];
    char agg[3][64], *pl[6] = {0};
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        snprintf(agg[i], sizeof agg[i], "payment:%.36s", ids[i]);
        for (int k = 0; k < (refund[i] ? 2 : 1); k++) {
            char rid[UUID_STR_LEN];
            uuid_v7(rid);
            pl[n] = k ? xasprintf("{\"paymentId\":\"%s\",\"refundId\":\"%s\",\"amount\":%lld}", ids[i], rid,
                                  (long long)refund[i])
                      : requested_payload(ids[i], 1000, "card");
            event_of(&e[n], "payment", k ? "payment.refund.requested" : "payment.requested", agg[i], k + 1, pl[n]);
            n++;
        }
    }
    bus_t *b = sut_bus(&s);
    char entry[6][BUS_ID_MAX];
    ASSERT_OK(bus_publish(b, e, n, entry));
    bus_close(b);
    for (size_t i = 0; i < n; i++)
        free(pl[i]);
    sut_start(&s);
    CU_ASSERT_TRUE(wait_status(&s, ids, 3, "succeeded", 15000));
    int64_t end = clock_mono_ms() + 15000;
    payment_refund_totals_t t0 = {0}, t2 = {0};
    while (clock_mono_ms() < end && (t0.succeeded + t0.rejected < 1 || t2.succeeded + t2.rejected < 1)) {
        db = sut_db(&s);
        ASSERT_OK(payment_refund_totals(db, TENANT, ids[0], &t0));
        ASSERT_OK(payment_refund_totals(db, TENANT, ids[2], &t2));
        db_close(db);
        clock_sleep_ms(50);
    }
    CU_ASSERT_EQUAL(t0.succeeded, 1);
    CU_ASSERT_EQUAL(t0.succeeded_sum, 300);
    CU_ASSERT_EQUAL(t2.rejected, 1);
    CU_ASSERT_EQUAL(get_payment(&s, ids[0]).refunded, 300);
    CU_ASSERT_EQUAL(get_payment(&s, ids[1]).captured, 1000);
    CU_ASSERT_EQUAL(get_payment(&s, ids[2]).refunded, 0);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 0);
    sut_stop(&s);
}

/* A batch's events go in one statement at its end, refunds' included, and
 * take their aggregates' sequence rows in ascending order. The batch holds
 * refunds of payments p1 then p0; a writer holds p0's sequence row, then
 * appends to p1 once the batch waits for p0 (on a topic nobody consumes:
 * the sequence rows are the aggregate's, whatever the topic). Appending each
 * refund's event as it was applied, the batch held p1 while it waited for
 * p0: a deadlock, which failed the writer here (or the batch, retried).
 * slow: a refund of an unknown payment between them fails the batch, which
 * is applied again in halves; the runtime locks the batch's aggregates in
 * order first (svc_def_t.lock_aggregates), or the first half took p1. */
static void refund_lock_order(bool slow)
{
    sut_t s;
    sut_init(&s, false, slow ? "svc_refund_locks_slow" : "svc_refund_locks");
    sut_add(&s, payment_service());
    char ids[2][UUID_STR_LEN], agg[2][64];
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    for (int i = 0; i < 2; i++) {
        uuid_v7(ids[i]); /* ids[0] < ids[1] */
        snprintf(agg[i], sizeof agg[i], "payment:%.36s", ids[i]);
        insert_payment(db, ids[i], 1000, "card");
        append(db, "audit", "payment.note", agg[i], "{}"); /* as the payment's request made its sequence row */
    }
    ASSERT_OK(db_commit(db));
    CU_ASSERT_TRUE_FATAL(strcmp(agg[0], agg[1]) < 0);
    /* refunds of p1 (then of an unknown payment) then p0, on the stream
     * before the service starts: one batch */
    char unknown[UUID_STR_LEN], unknown_agg[64];
    uuid_v7(unknown);
    snprintf(unknown_agg, sizeof unknown_agg, "payment:%.36s", unknown);
    const char *pid[3] = {ids[1], unknown, ids[0]};
    char *pagg[3] = {agg[1], unknown_agg, agg[0]};
    if (!slow) {
        pid[1] = ids[0];
        pagg[1] = agg[0];
    }
    size_t n = slow ? 3 : 2;
    envelope_t e[3];
    char *pl[3];
    for (size_t k = 0; k < n; k++) {
        char rid[UUID_STR_LEN];
        uuid_v7(rid);
        pl[k] = xasprintf("{\"paymentId\":\"%s\",\"refundId\":\"%s\",\"amount\":100}", pid[k], rid);
        event_of(&e[k], "payment", "payment.refund.requested", pagg[k], 1, pl[k]);
    }
    bus_t *b = sut_bus(&s);
    char entry[3][BUS_ID_MAX];
    ASSERT_OK(bus_publish(b, e, n, entry));
    bus_close(b);
    for (size_t k = 0; k < n; k++)
        free(pl[k]);
    /* the writer takes p0's sequence row; in a deadlock it is the one that
     * fails, its check coming first (the batch's comes after a second) */
    ASSERT_OK(pg_exec(db_pg(db), "SET deadlock_timeout = '10ms'"));
    ASSERT_OK(db_begin(db));
    CU_ASSERT_EQUAL_FATAL(append_msg(db, "audit", "payment.note", agg[0], "{}"), 0);
    sut_start(&s);
    /* until the batch waits for a lock */
    char *err = NULL;
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    bool waits = false;
    for (int64_t end = clock_mono_ms() + 15000; !waits && clock_mono_ms() < end; clock_sleep_ms(20)) {
        PGresult *r = pg_query(c,
                               "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'payment'"
                               " AND wait_event_type = 'Lock'",
                               0, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        waits = strcmp(PQgetvalue(r, 0, 0), "0") != 0;
        PQclear(r);
    }
    PQfinish(c);
    CU_ASSERT_TRUE(waits);
    /* the writer then takes p1's: the batch must not hold it */
    int rc = append_msg(db, "audit", "payment.note", agg[1], "{}");
    if (rc != 0)
        fprintf(stderr, "\n  the writer's append failed: SQLSTATE %s\n", pg_last_sqlstate());
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(rc == 0 ? db_commit(db) : (db_rollback(db), -1), 0);
    db_close(db);
    int64_t end = clock_mono_ms() + 15000;
    payment_refund_totals_t t[2] = {{0}};
    while (clock_mono_ms() < end && (t[0].rejected < 1 || t[1].rejected < 1)) {
        clock_sleep_ms(50);
        db = sut_db(&s);
        for (int i = 0; i < 2; i++)
            ASSERT_OK(payment_refund_totals(db, TENANT, ids[i], &t[i]));
        db_close(db);
    }
    /* refunds of pending payments are refused, and announced */
    CU_ASSERT_EQUAL(t[0].rejected, 1);
    CU_ASSERT_EQUAL(t[1].rejected, 1);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), slow ? 1 : 0);
    CU_ASSERT_EQUAL(dlq(&s, "payment", "unknown payment"), slow ? 1 : 0);
    sut_stop(&s);
}

static void test_refund_lock_order_real(void)
{
    refund_lock_order(false);
}

static void test_refund_lock_order_slow_real(void)
{
    refund_lock_order(true);
}

static void test_refund_same_batch_memory(void)
{
    refund_same_batch(true);
}

static void test_refund_same_batch_real(void)
{
    refund_same_batch(false);
}

static void test_refunds_memory(void)
{
    refunds(true);
}

static void test_refunds_real(void)
{
    refunds(false);
}

/* Entries of a stream that carry message id. */
static size_t entries_of(sut_t *s, const char *stream, const char *id)
{
    bus_t *b = sut_bus(s);
    bus_entry_t *ents = NULL;
    size_t n = 0, k = 0;
    CU_ASSERT_EQUAL(bus_range(b, stream, "-", "+", 0, &ents, &n), 0);
    for (size_t i = 0; i < n; i++)
        for (size_t f = 0; f < ents[i].nfields; f++)
            if (strcmp(ents[i].fields[2 * f], "id") == 0 && strcmp(ents[i].fields[2 * f + 1], id) == 0)
                k++;
    bus_entries_free(ents, n);
    bus_close(b);
    return k;
}

/* A command for a payment that does not exist goes to the DLQ; once the
 * payment exists, the dead letter sent back (as `ecomctl dlq replay` does)
 * is applied by the payment service alone: analytics, which consumes every
 * topic's stream, does not get it again. */
static void unknown_payment(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_unknown");
    s.dopts.trim_interval_ms = 3600 * 1000; /* the streams keep their entries, to be counted */
    sut_add(&s, payment_service());
    sut_add(&s, analytics_service());
    sut_start(&s);
    char id[UUID_STR_LEN], agg[64];
    uuid_v7(id);
    snprintf(agg, sizeof agg, "payment:%s", id);
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    char *pl = requested_payload(id, 100, "card");
    append(db, "payment", "payment.requested", agg, pl);
    free(pl);
    ASSERT_OK(db_commit(db));
    for (int i = 0; i < 200 && dlq(&s, "payment", NULL) == 0; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(dlq(&s, "payment", NULL), 1);
    CU_ASSERT_EQUAL(dlq(&s, "payment", "unknown payment"), 1);
    CU_ASSERT_EQUAL(dlq(&s, "payment", id), 1);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.calls, 0);
    for (int i = 0; i < 200 && events_of_type(&s, "payment.requested") < 1; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(events_of_type(&s, "payment.requested"), 1);

    /* the payment comes to exist; its dead letter goes back */
    ASSERT_OK(db_begin(db));
    insert_payment(db, id, 100, "card");
    ASSERT_OK(db_commit(db));
    db_close(db);
    bus_t *b = sut_bus(&s);
    bus_entry_t *dead = NULL;
    size_t ndead = 0;
    ASSERT_OK(bus_range(b, "ecom:dlq:payment", "-", "+", 0, &dead, &ndead));
    CU_ASSERT_EQUAL_FATAL(ndead, 1);
    char msg_id[UUID_STR_LEN] = "";
    for (size_t f = 0; f < dead[0].nfields; f++)
        if (strcmp(dead[0].fields[2 * f], "id") == 0)
            snprintf(msg_id, sizeof msg_id, "%s", dead[0].fields[2 * f + 1]);
    CU_ASSERT_TRUE(uuid_valid(msg_id));
    const char *why = NULL;
    CU_ASSERT_EQUAL(bus_replay_dead(b, "payment", &dead[0], &why), 0);
    bus_entries_free(dead, ndead);
    char ids[1][UUID_STR_LEN];
    memcpy(ids[0], id, UUID_STR_LEN);
    CU_ASSERT_TRUE(wait_status(&s, ids, 1, "succeeded", 15000));
    for (int i = 0; i < 200 && events_of_type(&s, "payment.succeeded") < 1; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(events_of_type(&s, "payment.succeeded"), 1);
    /* analytics looks for new streams every 2 s (DISCOVER_MS): let it look
     * again after the replay stream got its entry */
    clock_sleep_ms(2500);
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.charges, 1);
    CU_ASSERT_EQUAL(entries_of(&s, "ecom:payment", msg_id), 1);        /* the topic's stream got no copy */
    CU_ASSERT_EQUAL(entries_of(&s, "ecom:replay:payment", msg_id), 1); /* the group's own did */
    bus_stream_info_t info;
    memset(&info, 0, sizeof info);
    ASSERT_OK(bus_stream_info(b, "ecom:replay:payment", &info));
    CU_ASSERT_EQUAL(info.ngroups, 1); /* analytics does not read it */
    if (info.ngroups >= 1)
        CU_ASSERT_STRING_EQUAL(info.groups[0].name, "payment");
    bus_close(b);
    sut_stop(&s);
}

static void test_unknown_memory(void)
{
    unknown_payment(true);
}

static void test_unknown_real(void)
{
    unknown_payment(false);
}

/* A provider that always fails, its breaker kept closed: three payments of
 * one batch, five attempts each, then the DLQ. The provider is called once
 * per payment and attempt: the batch's halves and single-message passes do
 * not call it again for what failed in that attempt. */
static void test_provider_once_per_attempt(void)
{
    sut_t s;
    sut_init(&s, false, "svc_provider_attempts");
    breaker_params_t bp = {.minimum_calls = 1000};
    configure_payment(&bp, 100); /* percent */
    sut_add(&s, payment_service());
    char ids[3][UUID_STR_LEN];
    create_payments(&s, 3, 500, "card", ids); /* before the start: one batch */
    sut_start(&s);
    for (int i = 0; i < 300 && dlq(&s, "payment", NULL) < 3; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(dlq(&s, "payment", "5 attempts"), 3);
    payment_provider_stats_t st;
    payment_provider_stats(&st);
    CU_ASSERT_EQUAL(st.calls, 15);
    if (st.calls != 15)
        fprintf(stderr, "\n  provider calls: %llu\n", (unsigned long long)st.calls);
    CU_ASSERT_EQUAL(st.charges, 0);
    sut_stop(&s);
    configure_payment(NULL, 0);
}

/* ---- notification ---- */

static void append_otp(sut_t *s, const char *code)
{
    db_t *db = sut_db(s);
    ASSERT_OK(db_begin(db));
    char *pl = xasprintf("{\"subject\":\"user@example.com\",\"channel\":\"email\",\"code\":\"%s\"}", code);
    append(db, "auth", "auth.otp.requested", "otp:user-1", pl);
    free(pl);
    ASSERT_OK(db_commit(db));
    db_close(db);
}

static void otp(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_otp");
    sut_add(&s, notification_service());
    sut_start(&s);
    append_otp(&s, "123456");
    CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "log", 1, 15000));
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(sink_lines(&s, "123456"), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "Your login code is 123456"), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "\"subject\":\"user@example.com\""), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "\"channel\":\"log\""), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, NULL), 1);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
}

static void test_otp_memory(void)
{
    otp(true);
}

/* A message whose delivery is recorded arrives again, in one batch with a
 * new one: it is not sent again; the new message is sent once. Memory: the
 * inbox forgot it (cleanup) after this process sent it. PostgreSQL: another
 * process recorded it (only the deliveries table knows). */
static void redelivered(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_redeliver");
    sut_add(&s, notification_service());
    sut_start(&s);
    envelope_t e[2];
    for (int i = 0; i < 2; i++) {
        event_of(&e[i], "auth", "auth.otp.requested", i ? "otp:user-2" : "otp:user-1", 1,
                 i ? "{\"subject\":\"b@example.com\",\"code\":\"222222\"}"
                   : "{\"subject\":\"a@example.com\",\"code\":\"111111\"}");
    }
    bus_t *b = sut_bus(&s);
    char entry[2][BUS_ID_MAX];
    db_t *db = sut_db(&s);
    size_t sent_before = 1;
    if (memory) {
        /* sent by this process: the recent-sends memory knows it too */
        ASSERT_OK(bus_publish(b, e, 1, entry));
        CU_ASSERT_TRUE(wait_deliveries(&s, "a@example.com", "auth.otp.requested", "log", 1, 15000));
        clock_sleep_ms(200); /* acknowledged */
        size_t cleaned = 0;
        ASSERT_OK(inbox_cleanup(db, 0, 1000, &cleaned));
        CU_ASSERT_EQUAL(cleaned, 1);
    } else {
        /* recorded by another process (its row only): nothing here but the
         * table says it went out */
        const char *p[] = {e[0].id, TENANT};
        PGresult *r = pg_query(db_pg(db),
                               "INSERT INTO notification.deliveries (message_id, channel, tenant, subject, type,"
                               " status, detail) VALUES ($1, 'log', $2, 'a@example.com', 'auth.otp.requested',"
                               " 'sent', 'by another process')",
                               2, p);
        CU_ASSERT_PTR_NOT_NULL(r);
        PQclear(r);
        sent_before = 0;
    }
    db_close(db);
    ASSERT_OK(bus_publish(b, e, 2, entry)); /* the first again, and a new one */
    CU_ASSERT_TRUE(wait_deliveries(&s, "b@example.com", "auth.otp.requested", "log", 1, 15000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(sink_lines(&s, "111111"), sent_before);
    CU_ASSERT_EQUAL(sink_lines(&s, "222222"), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, NULL), 2);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    bus_close(b);
    sut_stop(&s);
}

static void test_redelivered_memory(void)
{
    redelivered(true);
}

static void test_redelivered_real(void)
{
    redelivered(false);
}

/* ---- tests: analytics ---- */

/* Counts of the tenant's events of type at or after since_ms (a whole minute). */
static int64_t stats_since(sut_t *s, const char *type, int64_t since_ms)
{
    db_t *db = sut_db(s);
    analytics_type_count_t *c = NULL;
    size_t n = 0;
    int64_t total = 0;
    CU_ASSERT_EQUAL(analytics_stats(db, TENANT, type, since_ms, &c, &n), 0);
    for (size_t i = 0; i < n; i++)
        total += c[i].count;
    analytics_type_counts_free(c, n);
    db_close(db);
    return total;
}

/* ... over the last five minutes and this one. */
static int64_t stats_count(sut_t *s, const char *type)
{
    return stats_since(s, type, (clock_now_ms() / 60000 - 5) * 60000);
}

/* An event of the shop topic at ts, with a new id (the strings are borrowed). */
static void shop_event(envelope_t *e, char *tenant, char *type, char *aggregate, int64_t ts)
{
    event_of(e, "shop", type, aggregate, 1, "{\"n\":1}");
    e->tenant = tenant;
    e->ts = ts;
}

/* Analytics builds no payload documents (payload_unread): a tracked event's
 * type still comes from its payload (escaped key included), an invalid one
 * falls back to the envelope's, and a payload that is not RFC 8259 JSON (a
 * number json-c alone would take) goes to the DLQ, the others applied. */
static void analytics_payloads(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_an_payloads");
    sut_add(&s, analytics_service());
    static const struct {
        char *type, *payload;
    } plan[] = {
        {"analytics.track", "{\"type\":\"an.pl.view\",\"x\":1}"},
        {"analytics.track", "{\"\\u0074ype\":\"an.pl.click\"}"},
        {"analytics.track", "{\"type\":\"an.pl.view\",\"x\":1.}"},
        {"analytics.track", "{\"type\":\"not a name\"}"},
        {"an.pl.plain", "{\"n\":1}"},
    };
    envelope_t e[ECOM_ARRAY_LEN(plan)];
    char agg[ECOM_ARRAY_LEN(plan)][32];
    for (size_t i = 0; i < ECOM_ARRAY_LEN(plan); i++) {
        snprintf(agg[i], sizeof agg[i], "order:pl-%zu", i);
        shop_event(&e[i], TENANT, plan[i].type, agg[i], clock_now_ms());
        e[i].payload = plan[i].payload;
    }
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_publish(b, e, ECOM_ARRAY_LEN(plan), NULL)); /* before the service starts: one batch */
    sut_start(&s);
    for (int i = 0; i < 200 && (events_of_type(&s, "an.pl.plain") < 1 || dlq(&s, "analytics", NULL) < 1); i++)
        clock_sleep_ms(50);
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(events_of_type(&s, "an.pl.view"), 1);
    CU_ASSERT_EQUAL(events_of_type(&s, "an.pl.click"), 1);
    CU_ASSERT_EQUAL(events_of_type(&s, "analytics.track"), 1);
    CU_ASSERT_EQUAL(events_of_type(&s, "an.pl.plain"), 1);
    CU_ASSERT_EQUAL(dlq(&s, "analytics", "unparsable payload: malformed JSON"), 1);
    CU_ASSERT_EQUAL(dlq(&s, "analytics", NULL), 1);
    bus_close(b);
    sut_stop(&s);
}

static void test_analytics_payloads_memory(void)
{
    analytics_payloads(true);
}

static void test_analytics_payloads_real(void)
{
    analytics_payloads(false);
}

/* Analytics records what it applied in its read model (no bus.inbox row):
 * a copy of an applied event, alone or in a batch with new ones, and an
 * event twice in one batch are each recorded and counted once. */
static void analytics_copies(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_an_copies");
    sut_add(&s, analytics_service());
    metric_t *dup = metrics_counter("ecom_service_duplicates_total", "Deliveries skipped by the inbox",
                                    "group=\"analytics\"");
    metric_t *applied =
        metrics_counter("ecom_service_applied_total", "Messages applied by the handler", "group=\"analytics\"");
    uint64_t dup0 = metrics_value(dup), applied0 = metrics_value(applied);
    sut_start(&s);
    envelope_t e[4];
    char agg[4][32];
    for (int i = 0; i < 4; i++) {
        snprintf(agg[i], sizeof agg[i], "order:an-%d", i);
        shop_event(&e[i], TENANT, "order.viewed", agg[i], clock_now_ms());
    }
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_publish(b, e, 1, NULL)); /* e0 */
    for (int i = 0; i < 200 && events_of_type(&s, "order.viewed") < 1; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(events_of_type(&s, "order.viewed"), 1);
    /* e0 again with e1, then e2 twice in one batch, then e0 alone again */
    envelope_t next[5] = {e[0], e[1], e[2], e[2], e[0]};
    ASSERT_OK(bus_publish(b, next, 5, NULL));
    for (int i = 0; i < 200 && metrics_value(dup) < dup0 + 3; i++)
        clock_sleep_ms(50);
    clock_sleep_ms(300); /* anything extra would show now */
    CU_ASSERT_EQUAL(events_of_type(&s, "order.viewed"), 3);
    CU_ASSERT_EQUAL(stats_count(&s, "order.viewed"), 3);
    CU_ASSERT_EQUAL(metrics_value(dup) - dup0, 3);
    CU_ASSERT_EQUAL(metrics_value(applied) - applied0, 3);
    CU_ASSERT_EQUAL(dlq(&s, "analytics", NULL), 0);
    db_t *db = sut_db(&s);
    uint64_t inbox = 1;
    ASSERT_OK(inbox_count(db, "analytics", &inbox));
    CU_ASSERT_EQUAL(inbox, 0);
    db_close(db);
    bus_close(b);
    sut_stop(&s);
}

/* One batch of events of two tenants and two types around minute
 * boundaries (the last and the first millisecond of a minute): the counters
 * count each (tenant, type, UTC minute) as the events' occurred_at says, and
 * occurred_at is the envelope's time to the millisecond. */
static void analytics_minutes(bool memory)
{
    sut_t s;
    sut_init(&s, memory, "svc_an_minutes");
    sut_add(&s, analytics_service());
    int64_t m0 = clock_now_ms() / 60000 * 60000; /* this minute */
    static const struct {
        char *tenant, *type; /* as envelope_t's */
        int64_t at; /* from m0 */
        int n;
    } plan[] = {
        {TENANT, "an.min.a", -120001, 3}, /* the last millisecond of minute -3 */
        {TENANT, "an.min.a", -120000, 2}, /* the first of minute -2 */
        {"t2", "an.min.a", -60000, 5},    /* another tenant's */
        {TENANT, "an.min.a", -1, 4},      /* the last of minute -1 */
        {TENANT, "an.min.b", -59999, 2},
    };
    envelope_t e[16];
    char agg[16][32];
    size_t k = 0;
    for (size_t p = 0; p < ECOM_ARRAY_LEN(plan); p++)
        for (int i = 0; i < plan[p].n; i++, k++) {
            snprintf(agg[k], sizeof agg[k], "order:min-%zu", k);
            shop_event(&e[k], plan[p].tenant, plan[p].type, agg[k], m0 + plan[p].at);
        }
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_publish(b, e, k, NULL)); /* before the service starts: one batch */
    sut_start(&s);
    for (int i = 0; i < 200 && events_of_type(&s, "an.min.b") < 2; i++)
        clock_sleep_ms(50);
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(stats_since(&s, "an.min.a", m0 - 180000), 9);
    CU_ASSERT_EQUAL(stats_since(&s, "an.min.a", m0 - 120000), 6);
    CU_ASSERT_EQUAL(stats_since(&s, "an.min.a", m0 - 60000), 4);
    CU_ASSERT_EQUAL(stats_since(&s, "an.min.a", m0), 0);
    CU_ASSERT_EQUAL(stats_since(&s, "an.min.b", m0 - 60000), 2);
    CU_ASSERT_EQUAL(stats_since(&s, NULL, m0 - 120000), 8);
    db_t *db = sut_db(&s);
    analytics_event_t *ev = NULL;
    size_t n = 0;
    CU_ASSERT_EQUAL(analytics_list(db, TENANT, NULL, NULL, 100, &ev, &n), 0);
    CU_ASSERT_EQUAL(n, 11);
    size_t exact = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < k; j++)
            if (strcmp(ev[i].id, e[j].id) == 0 && ev[i].occurred_ms == e[j].ts)
                exact++;
    CU_ASSERT_EQUAL(exact, 11);
    analytics_events_free(ev, n);
    db_close(db);
    bus_close(b);
    sut_stop(&s);
}

static void test_analytics_minutes_memory(void)
{
    analytics_minutes(true);
}

static void test_analytics_minutes_real(void)
{
    analytics_minutes(false);
}

static void test_analytics_copies_memory(void)
{
    analytics_copies(true);
}

static void test_analytics_copies_real(void)
{
    analytics_copies(false);
}

static void test_otp_real(void)
{
    otp(false);
}

/* A webhook receiver on a thread of the test: answers fail_code (500 unless
 * set) to the first fail_first requests, then 200; checks every signature. */
typedef struct hook {
    http_sink_t srv;
    atomic_int requests, good_signatures, fail_first, fail_code;
    atomic_int fail_body_left; /* requests whose body holds fail_body answered 500, so many times */
    char fail_body[64];
    pthread_mutex_t mu;
    char message_ids[8][64];
    char body[4096];
} hook_t;

static void hook_cb(struct evhttp_request *req, void *arg)
{
    hook_t *h = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    unsigned char *body = evbuffer_pullup(in, -1);
    const char *mid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Ecom-Message-Id");
    int k = atomic_fetch_add(&h->requests, 1);
    if (webhook_signed(req, WEBHOOK_SECRET))
        atomic_fetch_add(&h->good_signatures, 1);
    pthread_mutex_lock(&h->mu);
    if (k < 8)
        snprintf(h->message_ids[k], sizeof h->message_ids[k], "%s", mid ? mid : "");
    snprintf(h->body, sizeof h->body, "%.*s", (int)n, (const char *)body);
    bool fail_this = h->fail_body[0] && strstr(h->body, h->fail_body) && atomic_fetch_sub(&h->fail_body_left, 1) > 0;
    pthread_mutex_unlock(&h->mu);
    int fail = atomic_load(&h->fail_code) ? atomic_load(&h->fail_code) : 500;
    int code = k < atomic_load(&h->fail_first) || fail_this ? fail : 200;
    if (code >= 300 && code < 400)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Location", "https://elsewhere.example/hooks");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Not OK", NULL);
}

static void hook_start(hook_t *h, int fail_first)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    atomic_store(&h->fail_first, fail_first);
    ASSERT_OK(http_sink_start(&h->srv, hook_cb, h));
}

static void hook_stop(hook_t *h)
{
    http_sink_stop(&h->srv);
    pthread_mutex_destroy(&h->mu);
}

/* Sets up notification on s with channels, its webhook pointing at the
 * local receiver on port; not started. */
static void add_webhook_notification(sut_t *s, bool memory, const char *name, const char *channels, int port)
{
    sut_init(s, memory, name);
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hooks/ecom", port);
    configure_notification(s, channels, url, 0);
    sut_add(s, notification_service());
}

/* The same, started. */
static void start_webhook_notification(sut_t *s, bool memory, const char *name, const char *channels, int port)
{
    add_webhook_notification(s, memory, name, channels, port);
    sut_start(s);
}

static void webhook(bool memory)
{
    hook_t h;
    hook_start(&h, 2);
    sut_t s;
    start_webhook_notification(&s, memory, "svc_webhook", "log,webhook", h.srv.port);
    append_otp(&s, "654321");
    CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "webhook", 1, 15000));
    clock_sleep_ms(300); /* nothing more may arrive */
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 3);
    CU_ASSERT_EQUAL(atomic_load(&h.good_signatures), 3);
    pthread_mutex_lock(&h.mu);
    CU_ASSERT_TRUE(uuid_valid(h.message_ids[0]));
    CU_ASSERT_STRING_EQUAL(h.message_ids[0], h.message_ids[1]);
    CU_ASSERT_STRING_EQUAL(h.message_ids[0], h.message_ids[2]);
    CU_ASSERT_PTR_NOT_NULL(strstr(h.body, "654321"));
    CU_ASSERT_PTR_NOT_NULL(strstr(h.body, "\"subject\":\"user@example.com\""));
    pthread_mutex_unlock(&h.mu);
    /* one row per channel, and the log line written once although the
     * message was applied three times */
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "log"), 1);
    CU_ASSERT_EQUAL(sink_lines(&s, "654321"), 1);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
    hook_stop(&h);
    configure_notification(&s, "log", NULL, 0);
}

static void test_webhook_memory(void)
{
    webhook(true);
}

/* A receiver that notes each request's peer port (one per connection) and
 * answers request number close_at with Connection: close. */
typedef struct port_hook {
    http_sink_t srv;
    atomic_int requests;
    int close_at;
    pthread_mutex_t mu;
    int ports[16], nports;
} port_hook_t;

static void port_hook_cb(struct evhttp_request *req, void *arg)
{
    port_hook_t *h = arg;
    int k = atomic_fetch_add(&h->requests, 1);
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    pthread_mutex_lock(&h->mu);
    bool seen = false;
    for (int i = 0; i < h->nports; i++)
        seen = seen || h->ports[i] == port;
    if (!seen && h->nports < 16)
        h->ports[h->nports++] = port;
    pthread_mutex_unlock(&h->mu);
    if (k == h->close_at)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    evhttp_send_reply(req, 200, "OK", NULL);
}

static int port_hook_ports(port_hook_t *h)
{
    pthread_mutex_lock(&h->mu);
    int n = h->nports;
    pthread_mutex_unlock(&h->mu);
    return n;
}

/* Webhooks go over a kept connection; one the receiver asked to close is
 * not reused; one it closed while idle (3 s) is seen closed before reuse and
 * replaced: no failed delivery, and no webhook sent into it and again (a
 * possible duplicate). */
static void test_webhook_kept(void)
{
    port_hook_t h = {.close_at = 3};
    pthread_mutex_init(&h.mu, NULL);
    ASSERT_OK(http_sink_start_idle(&h.srv, port_hook_cb, &h, 3)); /* well above the time between webhooks 1-5 */
    sut_t s;
    start_webhook_notification(&s, true, "svc_webhook_kept", "webhook", h.srv.port);
    metric_t *failed = metrics_counter("ecom_notification_deliveries_total",
                                       "Notification deliveries by channel and outcome",
                                       "channel=\"webhook\",outcome=\"failed\"");
    uint64_t failed_before = metrics_value(failed);
    metric_t *resends = metrics_counter("ecom_notification_webhook_resends_total",
                                        "Webhooks sent again on a new connection after a kept one failed", NULL);
    uint64_t resends_before = metrics_value(resends);
    static const char *const codes[] = {"100001", "100002", "100003", "100004", "100005", "100006"};
    for (int i = 0; i < 6; i++) {
        if (i == 5)
            clock_sleep_ms(3600); /* the receiver drops the idle connection after 3 s */
        append_otp(&s, codes[i]);
        CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "webhook", (size_t)i + 1, 15000));
        if (i == 2)
            CU_ASSERT_EQUAL(port_hook_ports(&h), 1); /* three webhooks, one connection */
    }
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 6); /* each delivered once */
    /* 1-4 on the first connection (4 asked to close), 5 on a second, 6 on a
     * third after the receiver closed the second while idle */
    CU_ASSERT_EQUAL(port_hook_ports(&h), 3);
    CU_ASSERT_EQUAL(metrics_value(failed), failed_before); /* the dropped connection cost no failed attempt */
    CU_ASSERT_EQUAL(metrics_value(resends), resends_before); /* nor a webhook sent into it */
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 6);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
    http_sink_stop(&h.srv);
    pthread_mutex_destroy(&h.mu);
    configure_notification(&s, "log", NULL, 0);
}

static void test_webhook_real(void)
{
    webhook(false);
}

/* A receiver that answers with a redirect is up: its answers are retried and
 * dead-lettered with the reason, not counted as an outage (an open breaker
 * would put off every notification for as long as the address is wrong):
 * three messages of three aggregates, five attempts each, past the breaker's
 * ten calls. Each attempt asks once: with PostgreSQL the batch's webhooks go
 * out together and the batch fails, and neither its halves nor the single
 * message's pass send again what failed in that attempt. */
static void webhook_redirect(bool memory)
{
    hook_t h;
    hook_start(&h, 1000);
    atomic_store(&h.fail_code, 301);
    sut_t s;
    start_webhook_notification(&s, memory, "svc_webhook_redirect", "webhook", h.srv.port);
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    for (int i = 0; i < 3; i++) {
        char agg[32],
            *pl = xasprintf("{\"subject\":\"u%d@example.com\",\"channel\":\"email\",\"code\":\"10000%d\"}", i, i);
        snprintf(agg, sizeof agg, "otp:user-%d", i);
        append(db, "auth", "auth.otp.requested", agg, pl);
        free(pl);
    }
    ASSERT_OK(db_commit(db));
    db_close(db);
    for (int i = 0; i < 300 && dlq(&s, "notification", NULL) < 3; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(dlq(&s, "notification", "redirects are not followed"), 3);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 15);
    if (atomic_load(&h.requests) != 15)
        fprintf(stderr, "\n  webhook requests: %d\n", atomic_load(&h.requests));
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 0);
    sut_stop(&s);
    hook_stop(&h);
    configure_notification(&s, "log", NULL, 0);
}

static void test_webhook_redirect_memory(void)
{
    webhook_redirect(true);
}

static void test_webhook_redirect_real(void)
{
    webhook_redirect(false);
}

/* The webhook went out, the smtp channel behind it keeps failing (nothing
 * listens on port 1), so the message does not commit and is retried. The
 * process then forgets its sends, as a restart would: the next attempt reads
 * what the webhook did from notification.sent_marks and does not POST again,
 * and once the message commits its webhook delivery is recorded from it. */
static void test_webhook_kept_through_retries(void)
{
    hook_t h;
    hook_start(&h, 0);
    sut_t s;
    sut_init(&s, false, "svc_webhook_marks");
    char url[96];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/hooks/ecom", h.srv.port);
    configure_notification(&s, "webhook,smtp", url, 1);
    sut_add(&s, notification_service());
    s.sopts[0].backoff_ms = 1500; /* attempts 1.5 s, 3 s, ... apart */
    sut_start(&s);
    append_otp(&s, "246810");
    for (int i = 0; i < 200 && atomic_load(&h.requests) < 1; i++)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 1);
    char *err = NULL;
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    bool marked = false;
    for (int i = 0; i < 100 && !marked; i++) {
        PGresult *r = pg_query(c,
                               "SELECT count(*) FROM notification.sent_marks WHERE channel = 'webhook'"
                               " AND status = 'sent'",
                               0, NULL);
        marked = r && strcmp(PQgetvalue(r, 0, 0), "1") == 0;
        PQclear(r);
        if (!marked)
            clock_sleep_ms(20);
    }
    CU_ASSERT_TRUE(marked);
    metric_t *failures =
        metrics_counter("ecom_service_failures_total", "Handler failures (retried)", "group=\"notification\"");
    uint64_t failed = metrics_value(failures);
    notification_forget_sends();
    /* the next attempt, which fails on smtp again */
    for (int i = 0; i < 250 && metrics_value(failures) == failed; i++)
        clock_sleep_ms(20);
    CU_ASSERT_TRUE(metrics_value(failures) > failed);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 0);
    /* smtp taken out: the next attempt commits, the webhook recorded from its mark */
    configure_notification(&s, "webhook", url, 0);
    CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "webhook", 1, 15000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 1);
    notification_delivery_t *d = NULL;
    size_t n = 0;
    db_t *db = sut_db(&s);
    CU_ASSERT_EQUAL(notification_list(db, TENANT, "user@example.com", 10, &d, &n), 0);
    CU_ASSERT_EQUAL(n, 1);
    if (n == 1) {
        CU_ASSERT_STRING_EQUAL(d[0].status, "sent");
        CU_ASSERT_PTR_NOT_NULL(strstr(d[0].detail, "an earlier attempt"));
    }
    notification_deliveries_free(d, n);
    db_close(db);
    PQfinish(c);
    sut_stop(&s);
    hook_stop(&h);
    notification_forget_sends();
    configure_notification(&s, "log", NULL, 0);
}

/* Every send of a batch that rolls back is kept in notification.sent_marks,
 * not only those of the message that failed: the halves the runtime applies
 * the batch in again may come after the memory of recent sends let them go
 * (it keeps 4,096; a batch holds up to SERVICE_BATCH messages, 10,000, on
 * each channel). Two OTP messages of one aggregate, on the stream before the
 * service starts, so one batch; the second's webhook answers 500 once. */
static void test_rollback_keeps_every_send(void)
{
    hook_t h;
    hook_start(&h, 0);
    snprintf(h.fail_body, sizeof h.fail_body, "%s", "second@example.com");
    atomic_store(&h.fail_body_left, 1);
    sut_t s;
    add_webhook_notification(&s, false, "svc_webhook_rollback", "webhook", h.srv.port);
    static const char *const to[] = {"first", "second"};
    char pl[2][128], agg[] = "otp:pair", topic[] = "auth", type[] = "auth.otp.requested";
    envelope_t e[2];
    for (int i = 0; i < 2; i++) {
        snprintf(pl[i], sizeof pl[i], "{\"subject\":\"%s@example.com\",\"channel\":\"email\",\"code\":\"%d\"}", to[i],
                 111111 * (i + 1));
        event_of(&e[i], topic, type, agg, i + 1, pl[i]);
    }
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_publish(b, e, 2, NULL)); /* before the service starts: one batch */
    bus_close(b);
    sut_start(&s);
    CU_ASSERT_TRUE(wait_deliveries(&s, "second@example.com", "auth.otp.requested", "webhook", 1, 15000));
    CU_ASSERT_EQUAL(deliveries(&s, "first@example.com", NULL, "webhook"), 1);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 3); /* first, second refused, second again */
    char *err = NULL;
    PGconn *c = pg_connect(s.pg_url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    PGresult *r = pg_query(c,
                           "SELECT count(*) FROM notification.sent_marks m JOIN notification.deliveries d"
                           " USING (message_id, channel) WHERE d.subject = 'first@example.com' AND m.status = 'sent'",
                           0, NULL);
    CU_ASSERT_STRING_EQUAL(r ? PQgetvalue(r, 0, 0) : "", "1");
    PQclear(r);
    PQfinish(c);
    sut_stop(&s);
    hook_stop(&h);
    notification_forget_sends();
    configure_notification(&s, "log", NULL, 0);
}

/* A socket listening on 127.0.0.1 at a port the kernel chose (*port). */
static int listen_loopback(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CU_ASSERT_FATAL(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof sa));
    ASSERT_OK(listen(fd, 16));
    ASSERT_OK(getsockname(fd, (struct sockaddr *)&sa, &sl));
    *port = ntohs(sa.sin_port);
    return fd;
}

/* A receiver on a raw socket that answers each request from a script:
 * 0: an interim 100 Continue, then 200; 1: a 200 head announcing a body,
 * then a close; 2: a 200 head announcing a body, then nothing until the
 * sender gives up; 3 and on: 200. */
typedef struct scripted_hook {
    int lfd, port;
    pthread_t thread;
    atomic_int requests;
    atomic_bool quit;
} scripted_hook_t;

/* Reads one request (head and Content-Length body) from fd: 1, or 0 at the end. */
static int scripted_read(int fd)
{
    char buf[8192];
    size_t len = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0)
            return 0;
        ssize_t n = recv(fd, buf + len, sizeof buf - 1 - len, 0);
        if (n <= 0)
            return 0;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n"), *cl = strcasestr(buf, "Content-Length:");
        if (end && cl && len >= (size_t)(end + 4 - buf) + strtoul(cl + 15, NULL, 10))
            return 1;
        if (len == sizeof buf - 1)
            return 0;
    }
}

static void *scripted_main(void *arg)
{
    scripted_hook_t *h = arg;
    while (!atomic_load(&h->quit)) {
        struct pollfd p = {.fd = h->lfd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept(h->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        bool open = true;
        while (open && !atomic_load(&h->quit) && scripted_read(fd)) {
            int k = atomic_fetch_add(&h->requests, 1);
            static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            static const char head[] = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
            const char *a = k == 0 ? "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                            : k == 1 || k == 2 ? head
                                               : ok;
            if (send(fd, a, strlen(a), MSG_NOSIGNAL) < 0)
                break;
            if (k == 2) /* nothing more on this connection: the sender's timeout ends it */
                while (!atomic_load(&h->quit) && scripted_read(fd))
                    ;
            open = k != 1 && k != 2;
        }
        close(fd);
    }
    return NULL;
}

/* What counts is the final status: an interim 100 is skipped, and a 200
 * whose body never comes whole (the receiver closes, or stalls past the
 * timeout) is delivered, not sent again. */
static void test_webhook_status_counts(void)
{
    scripted_hook_t h = {0};
    h.lfd = listen_loopback(&h.port);
    ASSERT_OK(pthread_create(&h.thread, NULL, scripted_main, &h));
    sut_t s;
    start_webhook_notification(&s, true, "svc_webhook_status", "webhook", h.port);
    metric_t *failed =
        metrics_counter("ecom_notification_deliveries_total", "Notification deliveries by channel and outcome",
                        "channel=\"webhook\",outcome=\"failed\"");
    uint64_t failed_before = metrics_value(failed);
    static const char *const codes[] = {"200001", "200002", "200003", "200004"};
    for (int i = 0; i < 4; i++) {
        append_otp(&s, codes[i]);
        CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "webhook", (size_t)i + 1, 15000));
    }
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(atomic_load(&h.requests), 4); /* each sent once */
    CU_ASSERT_EQUAL(metrics_value(failed), failed_before);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 4);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
    atomic_store(&h.quit, true);
    pthread_join(h.thread, NULL);
    close(h.lfd);
    configure_notification(&s, "log", NULL, 0);
}

/* A receiver that answers each webhook 30 ms later (so sends made side by
 * side overlap), notes the most requests it held at once, and checks that
 * the receipts of one payment come one at a time, in order (received, then
 * refunded); the first request for payment fail_pid answers 500. */
#define SLOW_PAYMENTS 8
typedef struct slow_hook {
    http_sink_t srv;
    pthread_mutex_t mu; /* the sink's thread and the test's */
    int requests, in_flight, most;
    char pids[SLOW_PAYMENTS][UUID_STR_LEN];
    int received[SLOW_PAYMENTS], refunded[SLOW_PAYMENTS]; /* 200s answered */
    bool busy[SLOW_PAYMENTS];
    int out_of_order, overlapping, failed;
    int fail_pid; /* -1: none */
} slow_hook_t;

typedef struct slow_reply {
    slow_hook_t *h;
    struct evhttp_request *req;
    int pid;
    bool refund;
} slow_reply_t;

static void slow_reply(evutil_socket_t fd, short ev, void *arg)
{
    (void)fd;
    (void)ev;
    slow_reply_t *r = arg;
    slow_hook_t *h = r->h;
    pthread_mutex_lock(&h->mu);
    int code = 200;
    if (r->pid == h->fail_pid && !r->refund && h->failed == 0) {
        code = 500;
        h->failed++;
    } else if (r->pid >= 0) {
        (r->refund ? h->refunded : h->received)[r->pid]++;
    }
    if (r->pid >= 0)
        h->busy[r->pid] = false;
    h->in_flight--;
    pthread_mutex_unlock(&h->mu);
    evhttp_send_reply(r->req, code, code == 200 ? "OK" : "Internal Server Error", NULL);
    free(r);
}

static void slow_hook_cb(struct evhttp_request *req, void *arg)
{
    slow_hook_t *h = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char *body = xstrndup((const char *)evbuffer_pullup(in, -1), n);
    slow_reply_t *r = xmalloc(sizeof *r);
    *r = (slow_reply_t){.h = h, .req = req, .pid = -1, .refund = strstr(body, "Refund issued") != NULL};
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < SLOW_PAYMENTS; i++)
        if (strstr(body, h->pids[i]))
            r->pid = i;
    h->requests++;
    if (++h->in_flight > h->most)
        h->most = h->in_flight;
    if (r->pid >= 0) {
        if (h->busy[r->pid])
            h->overlapping++;
        h->busy[r->pid] = true;
        if (r->refund ? h->received[r->pid] == 0 : h->refunded[r->pid] > 0)
            h->out_of_order++;
    }
    pthread_mutex_unlock(&h->mu);
    free(body);
    struct timeval tv = {0, 30000};
    event_base_once(h->srv.base, -1, EV_TIMEOUT, slow_reply, r, &tv);
}

/* A batch's webhooks go out side by side, the receipts of one payment one
 * after the other and in order; a failed one holds back only its payment's
 * later receipt, and nothing is sent twice. */
static void test_webhook_side_by_side(void)
{
    slow_hook_t h = {.fail_pid = 0};
    pthread_mutex_init(&h.mu, NULL);
    ASSERT_OK(http_sink_start(&h.srv, slow_hook_cb, &h));
    sut_t s;
    start_webhook_notification(&s, false, "svc_webhook_side", "webhook", h.srv.port);
    db_t *db = sut_db(&s);
    ASSERT_OK(db_begin(db));
    for (int i = 0; i < SLOW_PAYMENTS; i++) {
        char agg[64];
        pthread_mutex_lock(&h.mu);
        uuid_v7(h.pids[i]);
        pthread_mutex_unlock(&h.mu);
        snprintf(agg, sizeof agg, "payment:%s", h.pids[i]);
        char *ok = xasprintf("{\"paymentId\":\"%s\",\"amount\":1000,\"currency\":\"EUR\",\"subject\":\"" BUYER "\"}",
                             h.pids[i]);
        char *back = xasprintf("{\"paymentId\":\"%s\",\"amount\":300,\"refunded\":300,\"currency\":\"EUR\","
                               "\"subject\":\"" BUYER "\"}",
                               h.pids[i]);
        append(db, "payment", "payment.succeeded", agg, ok);
        append(db, "payment", "payment.refunded", agg, back);
        free(ok);
        free(back);
    }
    ASSERT_OK(db_commit(db));
    db_close(db);
    CU_ASSERT_TRUE(wait_deliveries(&s, BUYER, NULL, "webhook", 2 * SLOW_PAYMENTS, 20000));
    clock_sleep_ms(300); /* nothing more may arrive */
    pthread_mutex_lock(&h.mu);
    CU_ASSERT_TRUE(h.most >= 2);
    CU_ASSERT_EQUAL(h.overlapping, 0);
    CU_ASSERT_EQUAL(h.out_of_order, 0);
    CU_ASSERT_EQUAL(h.failed, 1);
    CU_ASSERT_EQUAL(h.requests, 2 * SLOW_PAYMENTS + 1); /* the failed one again, nothing else twice */
    for (int i = 0; i < SLOW_PAYMENTS; i++) {
        CU_ASSERT_EQUAL(h.received[i], 1);
        CU_ASSERT_EQUAL(h.refunded[i], 1);
    }
    if (h.most < 2 || h.overlapping || h.out_of_order || h.requests != 2 * SLOW_PAYMENTS + 1)
        fprintf(stderr, "receiver: most %d at once, %d overlapping, %d out of order, %d requests\n", h.most,
                h.overlapping, h.out_of_order, h.requests);
    pthread_mutex_unlock(&h.mu);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "webhook"), 2 * SLOW_PAYMENTS);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
    http_sink_stop(&h.srv);
    pthread_mutex_destroy(&h.mu);
    configure_notification(&s, "log", NULL, 0);
}

/* A tiny SMTP server on a thread of the test; keeps the last mail. */
typedef struct smtpd {
    int lfd;
    int port;
    pthread_t th;
    atomic_bool stop;
    atomic_int mails;
    pthread_mutex_t mu;
    char from[256], rcpt[256];
    char data[8192];
    /* RCPT TO:<refuse> is refused for good (550); the first tempfail ones of
     * another address are refused for now (451); each counted */
    const char *refuse;
    int tempfail;
    atomic_int refused, tempfailed;
    /* the first deny_relay MAIL FROMs are answered 550 (no relaying), or
     * with deny_at_rcpt their RCPT TOs 554 5.7.1 (relay access denied) */
    int deny_relay;
    bool deny_at_rcpt;
    atomic_int denied;
} smtpd_t;

static bool smtpd_send(int fd, const char *s)
{
    return send(fd, s, strlen(s), MSG_NOSIGNAL) == (ssize_t)strlen(s);
}

/* One line (CRLF stripped) from fd into line; false on EOF or timeout. */
static bool smtpd_line(int fd, char *buf, size_t *len, char *line, size_t cap)
{
    for (;;) {
        char *eol = memchr(buf, '\n', *len);
        if (eol) {
            size_t ll = (size_t)(eol - buf) + 1;
            snprintf(line, cap, "%.*s", (int)(ll - 1), buf);
            line[strcspn(line, "\r")] = '\0';
            memmove(buf, buf + ll, *len - ll);
            *len -= ll;
            return true;
        }
        if (*len >= 8192)
            return false;
        ssize_t r = recv(fd, buf + *len, 8192 - *len, 0);
        if (r <= 0)
            return false;
        *len += (size_t)r;
    }
}

static void smtpd_session(smtpd_t *d, int fd)
{
    struct timeval tv = {5, 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char *buf = xmalloc(8192);
    size_t len = 0;
    char line[1024];
    char from[256] = "", rcpt[256] = "";
    if (!smtpd_send(fd, "220 test.local ESMTP ready\r\n"))
        goto out;
    while (smtpd_line(fd, buf, &len, line, sizeof line)) {
        if (strncmp(line, "EHLO ", 5) == 0) {
            if (!smtpd_send(fd, "250-test.local greets you\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n"))
                break;
        } else if (strncmp(line, "MAIL FROM:", 10) == 0) {
            snprintf(from, sizeof from, "%.255s", line + 10);
            bool deny = !d->deny_at_rcpt && atomic_load(&d->denied) < d->deny_relay;
            if (deny)
                atomic_fetch_add(&d->denied, 1);
            if (!smtpd_send(fd, deny ? "550 5.7.1 relaying denied\r\n" : "250 2.1.0 ok\r\n"))
                break;
        } else if (strncmp(line, "RCPT TO:", 8) == 0) {
            snprintf(rcpt, sizeof rcpt, "%.255s", line + 8);
            const char *answer = "250 2.1.5 ok\r\n";
            if (d->deny_at_rcpt && atomic_load(&d->denied) < d->deny_relay) {
                atomic_fetch_add(&d->denied, 1);
                answer = "554 5.7.1 <user@example.com>: Relay access denied\r\n";
            } else if (d->refuse && strstr(rcpt, d->refuse)) {
                atomic_fetch_add(&d->refused, 1);
                answer = "550 5.1.1 no such user\r\n";
            } else if (atomic_load(&d->tempfailed) < d->tempfail) {
                atomic_fetch_add(&d->tempfailed, 1);
                answer = "451 4.3.0 try again later\r\n";
            }
            if (!smtpd_send(fd, answer))
                break;
        } else if (strcmp(line, "DATA") == 0) {
            if (!smtpd_send(fd, "354 end with <CRLF>.<CRLF>\r\n"))
                break;
            char data[8192];
            size_t dl = 0;
            bool done = false;
            while (!done && smtpd_line(fd, buf, &len, line, sizeof line)) {
                if (strcmp(line, ".") == 0) {
                    done = true;
                    break;
                }
                dl += (size_t)snprintf(data + dl, sizeof data - dl, "%s\n", line);
                if (dl >= sizeof data)
                    dl = sizeof data - 1;
            }
            if (!done)
                break;
            pthread_mutex_lock(&d->mu);
            snprintf(d->from, sizeof d->from, "%s", from);
            snprintf(d->rcpt, sizeof d->rcpt, "%s", rcpt);
            snprintf(d->data, sizeof d->data, "%.*s", (int)dl, data);
            pthread_mutex_unlock(&d->mu);
            atomic_fetch_add(&d->mails, 1);
            if (!smtpd_send(fd, "250 2.0.0 queued as T1\r\n"))
                break;
        } else if (strcmp(line, "QUIT") == 0) {
            if (!smtpd_send(fd, "221 2.0.0 bye\r\n"))
                break;
            break;
        } else {
            if (!smtpd_send(fd, "502 5.5.2 not implemented\r\n"))
                break;
        }
    }
out:
    free(buf);
    close(fd);
}

static void *smtpd_thread(void *arg)
{
    smtpd_t *d = arg;
    while (!atomic_load(&d->stop)) {
        struct pollfd p = {.fd = d->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(d->lfd, NULL, NULL);
        if (fd >= 0)
            smtpd_session(d, fd);
    }
    return NULL;
}

static void smtpd_start(smtpd_t *d)
{
    memset(d, 0, sizeof *d);
    pthread_mutex_init(&d->mu, NULL);
    d->lfd = listen_loopback(&d->port);
    pthread_create(&d->th, NULL, smtpd_thread, d);
}

static void smtpd_stop(smtpd_t *d)
{
    atomic_store(&d->stop, true);
    pthread_join(d->th, NULL);
    close(d->lfd);
    pthread_mutex_destroy(&d->mu);
}

/* deny_relay: mails the relay refuses first, at MAIL FROM (550) or with
 * at_rcpt at RCPT TO (554 5.7.1): the relay refusing every mail, not this
 * one, so the code goes out on a later attempt. */
static void smtp(bool memory, int deny_relay, bool at_rcpt)
{
    smtpd_t d;
    smtpd_start(&d);
    d.deny_relay = deny_relay;
    d.deny_at_rcpt = at_rcpt;
    sut_t s;
    sut_init(&s, memory, "svc_smtp");
    configure_notification(&s, "smtp", NULL, d.port);
    sut_add(&s, notification_service());
    sut_start(&s);
    append_otp(&s, "777888");
    CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "smtp", 1, 15000));
    clock_sleep_ms(200);
    CU_ASSERT_EQUAL(atomic_load(&d.mails), 1);
    pthread_mutex_lock(&d.mu);
    CU_ASSERT_STRING_EQUAL(d.rcpt, "<user@example.com>");
    CU_ASSERT_STRING_EQUAL(d.from, "<shop@example.com>");
    CU_ASSERT_PTR_NOT_NULL(strstr(d.data, "Subject: Your login code"));
    CU_ASSERT_PTR_NOT_NULL(strstr(d.data, "Your login code is 777888"));
    pthread_mutex_unlock(&d.mu);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "smtp"), 1);
    CU_ASSERT_EQUAL(atomic_load(&d.denied), deny_relay);
    notification_delivery_t *rows = NULL;
    size_t n = 0;
    db_t *db = sut_db(&s);
    CU_ASSERT_EQUAL(notification_list(db, TENANT, "user@example.com", 10, &rows, &n), 0);
    CU_ASSERT_STRING_EQUAL(n == 1 ? rows[0].status : "", "sent");
    notification_deliveries_free(rows, n);
    db_close(db);
    CU_ASSERT_EQUAL(sink_lines(&s, "777888"), 0); /* the log channel is off */
    sut_stop(&s);
    smtpd_stop(&d);
    configure_notification(&s, "log", NULL, 0);
}

static void test_smtp_memory(void)
{
    smtp(true, 0, false);
}

static void test_smtp_relay_denied_memory(void)
{
    smtp(true, 2, false);
}

static void test_smtp_relay_denied_at_rcpt_memory(void)
{
    smtp(true, 2, true);
}

/* One batch, two aggregates: a code to an address the relay refuses for good
 * and one it refuses for now the first time. The refusal is recorded once
 * and the relay is not asked again when the batch is applied again for the
 * other one, which is delivered on its retry. */
static void test_smtp_refused_once_real(void)
{
    smtpd_t d;
    smtpd_start(&d);
    d.refuse = "nobody@example.com";
    d.tempfail = 1;
    sut_t s;
    sut_init(&s, false, "svc_smtp_refused");
    configure_notification(&s, "smtp", NULL, d.port);
    sut_add(&s, notification_service());
    static const char *const to[] = {"user", "nobody"};
    envelope_t e[2];
    char agg[2][32], pl[2][128];
    for (int i = 0; i < 2; i++) {
        snprintf(agg[i], sizeof agg[i], "otp:%s", to[i]);
        snprintf(pl[i], sizeof pl[i], "{\"subject\":\"%s@example.com\",\"channel\":\"email\",\"code\":\"%d\"}",
                 to[i], 111222 + i);
        event_of(&e[i], "auth", "auth.otp.requested", agg[i], 1, pl[i]);
    }
    bus_t *b = sut_bus(&s);
    ASSERT_OK(bus_publish(b, e, 2, NULL)); /* before the service starts: one batch */
    bus_close(b);
    sut_start(&s);
    CU_ASSERT_TRUE(wait_deliveries(&s, "user@example.com", "auth.otp.requested", "smtp", 1, 15000));
    CU_ASSERT_TRUE(wait_deliveries(&s, "nobody@example.com", "auth.otp.requested", "smtp", 1, 15000));
    clock_sleep_ms(300);
    CU_ASSERT_EQUAL(atomic_load(&d.tempfailed), 1);
    CU_ASSERT_EQUAL(atomic_load(&d.refused), 1);
    CU_ASSERT_EQUAL(atomic_load(&d.mails), 1);
    CU_ASSERT_EQUAL(deliveries(&s, NULL, NULL, "smtp"), 2);
    CU_ASSERT_EQUAL(dlq(&s, "notification", NULL), 0);
    sut_stop(&s);
    smtpd_stop(&d);
    configure_notification(&s, "log", NULL, 0);
}

static void test_smtp_real(void)
{
    smtp(false, 0, false);
}

/* The smtp channel's body is quoted-printable: 7-bit whatever the text (no
 * 8BITMIME needed), lines of at most 76 characters, blanks at a line's end
 * kept, and no line beginning with a dot, which SMTP would read as the end
 * of the message or strip. */
static void test_smtp_body(void)
{
    char as[101], bs[76], text[512], want[512];
    memset(as, 'a', 100);
    as[100] = '\0';
    memset(bs, 'b', 75);
    bs[75] = '\0';
    snprintf(text, sizeof text, "caf\xc3\xa9 = ok \n.hidden\r\n%s\n%s.x\n\nend", as, bs);
    snprintf(want, sizeof want, "caf=C3=A9 =3D ok=20\r\n=2Ehidden\r\n%.75s=\r\n%.25s\r\n%s=\r\n=2Ex\r\n\r\nend\r\n", as,
             as, bs);
    struct evbuffer *b = evbuffer_new();
    notification_smtp_body(b, text);
    size_t n = evbuffer_get_length(b);
    char *got = xstrndup((const char *)evbuffer_pullup(b, -1), n);
    CU_ASSERT_STRING_EQUAL(got, want);
    bool short_7bit = true;
    size_t line = 0;
    for (size_t i = 0; i < n; i++) {
        short_7bit = short_7bit && (unsigned char)got[i] < 128;
        line = got[i] == '\n' ? 0 : line + 1;
        short_7bit = short_7bit && line <= 77; /* 76 and the CR */
    }
    CU_ASSERT_TRUE(short_7bit);
    free(got);
    evbuffer_free(b);
}

/* Configuration problems are reported together. */
static void test_config_errors(void)
{
    notification_config_t nc = {
        .channels = "log, pigeon, webhook", .webhook_url = "https://x.example/h", .smtp_from = "not an address"};
    char err[512];
    CU_ASSERT_EQUAL(notification_configure(&nc, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "pigeon"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "NOTIFY_WEBHOOK_URL"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "NOTIFY_WEBHOOK_SECRET"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "SMTP_FROM"));
    CU_ASSERT_EQUAL(payment_currency_exponent("EUR"), 2);
    CU_ASSERT_EQUAL(payment_currency_exponent("JPY"), 0);
    CU_ASSERT_EQUAL(payment_currency_exponent("KWD"), 3);
    CU_ASSERT_EQUAL(payment_currency_exponent("XXX"), -1);
    CU_ASSERT_EQUAL(payment_currency_exponent("eur"), -1);
}

int main(void)
{
    log_configure(getenv("TEST_LOG_LEVEL") ? getenv("TEST_LOG_LEVEL") : "error", "text");
    CU_TestInfo tests[] = {
        {"configuration errors are reported together", test_config_errors},
        {"the smtp body: quoted-printable, short 7-bit lines, no leading dot", test_smtp_body},
        {"payment happy path (memory)", test_happy_memory},
        {"analytics: payloads checked, not built; tracked types from them (memory)", test_analytics_payloads_memory},
        {"analytics: payloads checked, not built; tracked types from them (postgres+redis)",
         test_analytics_payloads_real},
        {"payment happy path (postgres+redis)", test_happy_real},
        {"a command delivered twice charges once (memory)", test_duplicate_memory},
        {"a command delivered twice charges once (postgres+redis)", test_duplicate_real},
        {"declines are final (memory)", test_decline_memory},
        {"declines are final (postgres+redis)", test_decline_real},
        {"provider outage: breaker opens, payments wait, all complete (memory)", test_outage_memory},
        {"provider outage: breaker opens, payments wait, all complete (postgres+redis)", test_outage_real},
        {"a refund in its payment's batch sees the payment succeeded (memory)", test_refund_same_batch_memory},
        {"a refund in its payment's batch sees the payment succeeded (postgres+redis)", test_refund_same_batch_real},
        {"200 payments, 3 concurrent refunds each: never over captured (memory)", test_refunds_memory},
        {"200 payments, 3 concurrent refunds each: never over captured (postgres+redis)", test_refunds_real},
        {"a batch's events take their aggregates in order: no deadlock with an ascending writer (postgres+redis)",
         test_refund_lock_order_real},
        {"a batch applied again in halves locks its aggregates in order first: no deadlock (postgres+redis)",
         test_refund_lock_order_slow_real},
        {"unknown payment: DLQ with its reason; sent back, only payment applies it (memory)", test_unknown_memory},
        {"unknown payment: DLQ with its reason; sent back, only payment applies it (postgres+redis)",
         test_unknown_real},
        {"a failing provider is called once per payment and attempt (postgres+redis)", test_provider_once_per_attempt},
        {"OTP code reaches the sink file (memory)", test_otp_memory},
        {"OTP code reaches the sink file (postgres+redis)", test_otp_real},
        {"a delivery recorded before is not sent again (memory)", test_redelivered_memory},
        {"a delivery recorded before is not sent again (postgres+redis)", test_redelivered_real},
        {"analytics records copies of an event once, without inbox rows (memory)", test_analytics_copies_memory},
        {"analytics counts a batch by tenant, type and UTC minute (memory)", test_analytics_minutes_memory},
        {"analytics counts a batch by tenant, type and UTC minute (postgres+redis)", test_analytics_minutes_real},
        {"analytics records copies of an event once, without inbox rows (postgres+redis)", test_analytics_copies_real},
        {"a batch's refusal for good is asked once while the batch is retried (postgres+redis)",
         test_smtp_refused_once_real},
        {"signed webhook, 500 twice then 200: delivered once (memory)", test_webhook_memory},
        {"signed webhook, 500 twice then 200: delivered once (postgres+redis)", test_webhook_real},
        {"a webhook answered with a redirect: asked once per attempt, dead-lettered, no breaker opened (memory)",
         test_webhook_redirect_memory},
        {"a webhook answered with a redirect: asked once per attempt, dead-lettered, no breaker opened "
         "(postgres+redis)",
         test_webhook_redirect_real},
        {"a webhook sent before a later channel failed is not sent again after a restart (postgres+redis)",
         test_webhook_kept_through_retries},
        {"a batch that rolls back keeps what every one of its sends did (postgres+redis)",
         test_rollback_keeps_every_send},
        {"webhooks share a kept connection; closed ones are replaced (memory)", test_webhook_kept},
        {"a webhook's final status counts: 100 skipped, a 200 with a cut or stalled body (memory)",
         test_webhook_status_counts},
        {"a batch's webhooks go side by side, each payment's in order (postgres+redis)", test_webhook_side_by_side},
        {"SMTP mail to the test server (memory)", test_smtp_memory},
        {"a relay that refuses every mail (550 to MAIL FROM) fails the attempt, not the code (memory)",
         test_smtp_relay_denied_memory},
        {"a relay that refuses every mail (554 5.7.1 to RCPT TO) fails the attempt, not the code (memory)",
         test_smtp_relay_denied_at_rcpt_memory},
        {"SMTP mail to the test server (postgres+redis)", test_smtp_real},
        CU_TEST_INFO_NULL,
    };
    int rc = test_main("services", tests, NULL, NULL);
    payment_provider_reset();
    return rc;
}
