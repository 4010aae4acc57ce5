/* tests/integration/test_shop.c: issue 5's end-to-end tests. The whole
 * system as separate production `ecom` processes on real PostgreSQL and
 * Redis: a gateway, an outbox-worker, and `ecom service payment`,
 * `notification` and `analytics`, each with its own admin port, JSON logs and
 * the test's bootstrap roles; a webhook receiver on a thread of this program
 * checks every HMAC signature.
 *
 *  - shop flow: OTP login (the code read from the webhook), a
 *    payment with a W3C traceparent, payment.succeeded, the signed webhook
 *    receipt, the analytics counters; the trace id in the outbox rows, the
 *    stream entries and every handler log line of those messages.
 *  - provider outage: 100% provider failures open the breaker, payments wait
 *    (pending, nothing dead-lettered), and after a restart with a healthy
 *    provider each completes exactly once.
 *  - 1,000 payments with two concurrent refunds each (their sum exceeds the
 *    capture): balances exact; stream entries delivered twice (XADD copies,
 *    and a second command with a new id) are absorbed without a second charge
 *    or a second receipt.
 *  - bad input on every payments route and the notification/analytics reads:
 *    problem+json, and no row written.
 * Assertions about time are only bounded waits for eventual outcomes. */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/pg.h"
#include "core/redis.h"
#include "core/uuid.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SECRET40 "0123456789abcdef0123456789abcdef-shop-40"
#define PEPPER "shop-pepper-0123456789abcdef0123456789ab"
#define WEBHOOK_SECRET "shop-webhook-secret-0123456789"
#define TENANT "shop"
#define SHOPPER "shopper@example.com"
#define PAY "/api/v1/payments"
#define PAYMENTS PAY "/payments"
#define BULK_N 1000
#define BULK_THREADS 8
#define OUTAGE_N 20

/* ================= the processes ================= */

typedef struct role {
    pid_t pid;
    int port; /* PORT of the gateway, ADMIN_PORT of the others */
    int hold; /* the gateway's port_hold socket + 1 (0: none) */
    char name[32];
    char log[128];
} role_t;

static const char *pg_url, *redis_url;
static PGconn *db;
static char boot_path[96];
static role_t gw, drainer, pay, notif, anal;
static int role_seq;

/* The role is gone: its slot and held port are free. */
static void role_unhold(role_t *r)
{
    if (r->hold)
        close(r->hold - 1);
    r->hold = 0;
    r->pid = 0;
}

static void role_start(role_t *r, const char *name, const char *const *argv, const char *const *env)
{
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    /* the gateway listens with SO_REUSEPORT: its port stays held (see
     * port_hold); an admin port taken twice fails the bind loudly instead */
    if (strcmp(name, "gateway") == 0) {
        int fd = port_hold(&r->port);
        r->hold = fd >= 0 ? fd + 1 : 0;
    } else {
        r->port = free_port();
    }
    snprintf(r->log, sizeof r->log, "/tmp/ecom-shop-%d-%s-%d.log", (int)getpid(), name, role_seq++);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "\n  fork failed: %s\n", strerror(errno));
        return;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive this program */
        int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        static const char *const cleared[] = {"JWT_PRIVATE_KEY_PEM",
                                              "JWT_PUBLIC_KEY_PEM",
                                              "JWT_ISSUER",
                                              "JWT_AUDIENCE",
                                              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                              "OTEL_EXPORTER_OTLP_ENDPOINT",
                                              "CHAOS_SEED",
                                              "NOTIFY_SINK_FILE",
                                              NULL};
        for (int i = 0; cleared[i]; i++)
            unsetenv(cleared[i]);
        char port[16];
        snprintf(port, sizeof port, "%d", r->port);
        setenv("DATABASE_URL", pg_url, 1);
        setenv("REDIS_URL", redis_url, 1);
        setenv("APP_ENV", "production", 1);
        setenv("JWT_SECRET", SECRET40, 1);
        setenv("OTP_PEPPER", PEPPER, 1);
        setenv("AUTHX_BOOTSTRAP_FILE", boot_path, 1);
        setenv("LOG_FORMAT", "json", 1);
        setenv("LOG_LEVEL", "info", 1);
        setenv("GATEWAY_THREADS", "2", 1);
        setenv("PORT", port, 1);
        setenv("ADMIN_PORT", port, 1);
        setenv("ECOM_INSTANCE", name, 1);
        for (int i = 0; env && env[i]; i++) {
            const char *eq = strchr(env[i], '=');
            if (!eq)
                continue;
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - env[i]), env[i]);
            setenv(key, eq + 1, 1);
        }
        execv(test_bin("ecom"), (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
}

static void role_print_log(const role_t *r, int last)
{
    FILE *f = fopen(r->log, "r");
    if (!f)
        return;
    char **ring = xcalloc((size_t)last, sizeof *ring);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        free(ring[n % last]);
        ring[n % last] = xstrdup(line);
        n++;
    }
    fclose(f);
    fprintf(stderr, "\n  --- %s (%s), last lines ---\n", r->name, r->log);
    for (int i = n > last ? n - last : 0; i < n; i++)
        fprintf(stderr, "  | %s", ring[i % last]);
    for (int i = 0; i < last; i++)
        free(ring[i]);
    free(ring);
}

static int role_wait_ready(role_t *r, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    while (clock_mono_ms() < end) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            fprintf(stderr, "\n  %s exited before it was ready (status %d)\n", r->name, st);
            role_unhold(r);
            role_print_log(r, 30);
            return -1;
        }
        hresp_t h;
        if (hget(r->port, "/ready", NULL, &h) == 0 && h.status == 200) {
            hfree(&h);
            return 0;
        }
        hfree(&h);
        clock_sleep_ms(50);
    }
    fprintf(stderr, "\n  %s not ready after %d ms\n", r->name, ms);
    role_print_log(r, 30);
    return -1;
}

/* SIGTERM; the exit code must be 0 within 20 s (sanitizer reports included). */
static void role_stop(role_t *r)
{
    if (r->pid <= 0)
        return;
    kill(r->pid, SIGTERM);
    int64_t end = clock_mono_ms() + 20000;
    int st = 0;
    bool done = false;
    while (!done && clock_mono_ms() < end) {
        if (waitpid(r->pid, &st, WNOHANG) == r->pid)
            done = true;
        else
            clock_sleep_ms(20);
    }
    if (!done) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, &st, 0);
    }
    bool clean = done && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!clean) {
        fprintf(stderr, "\n  %s: did not exit cleanly after SIGTERM (status %d)\n", r->name, st);
        role_print_log(r, 40);
    }
    CU_ASSERT_TRUE(clean);
    if (clean)
        unlink(r->log); /* kept for a look when the stop was not clean */
    role_unhold(r);
}

static void role_kill(role_t *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
    }
    role_unhold(r);
}

static void start_payment(const char *failure_rate)
{
    static const char *const argv[] = {"ecom", "service", "payment", NULL};
    char rate[64];
    snprintf(rate, sizeof rate, "PAYMENT_PROVIDER_FAILURE_RATE=%s", failure_rate);
    const char *env[] = {rate, "LOG_LEVEL=debug", "PAYMENT_BREAKER_OPEN_MS=500", "SERVICE_BACKOFF_MS=50", NULL};
    role_start(&pay, "payment", argv, env);
}

/* ================= the webhook receiver ================= */

typedef struct hook_req {
    char message_id[64];
    char type[48];
    char *body;
} hook_req_t;

typedef struct hook {
    http_sink_t srv;
    atomic_int requests, bad_signatures;
    pthread_mutex_t mu;
    hook_req_t *reqs;
    size_t n, cap;
} hook_t;

static hook_t hook;

static void hook_cb(struct evhttp_request *req, void *arg)
{
    hook_t *h = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    unsigned char *body = evbuffer_pullup(in, -1);
    const char *mid = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Ecom-Message-Id");
    atomic_fetch_add(&h->requests, 1);
    if (!webhook_signed(req, WEBHOOK_SECRET)) {
        atomic_fetch_add(&h->bad_signatures, 1);
        evhttp_send_reply(req, 401, "Unauthorized", NULL);
        return;
    }
    char *text = xstrndup((const char *)body, n);
    json_object *o = json_tokener_parse(text), *v;
    pthread_mutex_lock(&h->mu);
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 1024;
        h->reqs = xrealloc(h->reqs, h->cap * sizeof *h->reqs);
    }
    hook_req_t *r = &h->reqs[h->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->message_id, sizeof r->message_id, "%s", mid ? mid : "");
    if (o && json_object_object_get_ex(o, "type", &v))
        snprintf(r->type, sizeof r->type, "%s", json_object_get_string(v));
    r->body = text;
    pthread_mutex_unlock(&h->mu);
    json_object_put(o);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static int hook_start(hook_t *h)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    return http_sink_start(&h->srv, hook_cb, h);
}

static void hook_stop(hook_t *h)
{
    if (!h->srv.base)
        return;
    http_sink_stop(&h->srv);
    pthread_mutex_destroy(&h->mu);
    for (size_t i = 0; i < h->n; i++)
        free(h->reqs[i].body);
    free(h->reqs);
    memset(h, 0, sizeof *h);
}

/* Receipts (type, body containing needle) received so far; unique: distinct message ids. */
static size_t hook_count(const char *type, const char *needle, size_t *unique_ids)
{
    size_t n = 0, u = 0;
    pthread_mutex_lock(&hook.mu);
    for (size_t i = 0; i < hook.n; i++) {
        const hook_req_t *r = &hook.reqs[i];
        if ((type && strcmp(r->type, type) != 0) || (needle && !strstr(r->body, needle)))
            continue;
        n++;
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = strcmp(hook.reqs[k].message_id, r->message_id) == 0;
        u += !seen;
    }
    pthread_mutex_unlock(&hook.mu);
    if (unique_ids)
        *unique_ids = u;
    return n;
}

/* ================= SQL, Redis and HTTP helpers ================= */

static long long q1(const char *sql, const char *a, const char *b)
{
    const char *p[] = {a, b};
    PGresult *r = pg_query(db, sql, b ? 2 : a ? 1 : 0, p);
    long long v = r && PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

static char *qs(const char *sql, const char *a, const char *b)
{
    const char *p[] = {a, b};
    PGresult *r = pg_query(db, sql, b ? 2 : a ? 1 : 0, p);
    char *v = r && PQntuples(r) && !PQgetisnull(r, 0, 0) ? xstrdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

/* Every outbox row, waiting or published (OUTBOX_RETAIN_S keeps published rows). */
#define ALL_OUTBOX                                                                                                     \
    "(SELECT id, type, topic, tenant, traceparent, payload FROM bus.outbox UNION ALL"                                  \
    " SELECT id, type, topic, tenant, traceparent, payload FROM bus.outbox_published)"

static bool wait_sql(const char *sql, const char *a, const char *b, long long want, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    long long v = -1;
    while (clock_mono_ms() < end) {
        v = q1(sql, a, b);
        if (v == want)
            return true;
        clock_sleep_ms(50);
    }
    fprintf(stderr, "\n  waited %d ms for %lld, have %lld: %s\n", ms, want, v, sql);
    return false;
}

static redisContext *redis_open(void)
{
    char *err = NULL;
    redisContext *c = redis_connect_url(redis_url, 5000, &err);
    if (!c)
        fprintf(stderr, "\n  redis: %s\n", err ? err : "?");
    free(err);
    return c;
}

/* The value of a field of a stream entry reply ([id, [f, v, ...]]), borrowed. */
static const char *entry_field(const redisReply *e, const char *name)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->type != REDIS_REPLY_ARRAY)
        return NULL;
    const redisReply *f = e->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (f->element[i]->str && strcmp(f->element[i]->str, name) == 0)
            return f->element[i + 1]->str;
    return NULL;
}

static long long redis_int(redisContext *c, const char *cmd, const char *arg)
{
    redisReply *r = redisCommand(c, cmd, arg);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static char *tok; /* the shopper's access token (from the OTP login) */

static char *auth_hdrs(const char *extra)
{
    return xasprintf("x-tenant-id: " TENANT "\r\nAuthorization: Bearer %s\r\n%s", tok ? tok : "-", extra ? extra : "");
}

static int pay_post(const char *path, const char *json, const char *key, const char *extra, hresp_t *r)
{
    char *ex = key ? xasprintf("Idempotency-Key: %s\r\n%s", key, extra ? extra : "") : xstrdup(extra ? extra : "");
    char *h = auth_hdrs(ex);
    int rc = hpost(gw.port, path, h, json, r);
    free(h);
    free(ex);
    return rc;
}

static int auth_get(const char *path, hresp_t *r)
{
    char *h = auth_hdrs(NULL);
    int rc = hget(gw.port, path, h, r);
    free(h);
    return rc;
}

/* POSTs a payment; its id into id (UUID_STR_LEN); the status. */
static int new_payment(const char *order, long long amount, const char *method, const char *extra, char *id)
{
    char body[256];
    snprintf(body, sizeof body, "{\"orderId\":\"%s\",\"amount\":%lld,\"currency\":\"EUR\",\"method\":\"%s\"}", order,
             amount, method);
    char key[UUID_STR_LEN];
    uuid_v7(key);
    hresp_t r;
    pay_post(PAYMENTS, body, key, extra, &r);
    int st = r.status;
    if (id)
        jstr(&r, "id", id, UUID_STR_LEN);
    if (st != 202)
        fprintf(stderr, "\n  POST payment: %d %.300s\n", st, r.body ? r.body : "");
    hfree(&r);
    return st;
}

static double svc_metric(const role_t *r, const char *series)
{
    double v = metric(r->port, series);
    return v < 0 ? 0 : v;
}

static bool wait_metric(const role_t *r, const char *series, double at_least, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    while (clock_mono_ms() < end) {
        if (svc_metric(r, series) >= at_least)
            return true;
        clock_sleep_ms(100);
    }
    fprintf(stderr, "\n  %s: %s stayed at %g (< %g)\n", r->name, series, svc_metric(r, series), at_least);
    return false;
}

/* ================= the suite ================= */

static void suite_clean_roles(void)
{
    role_t *all[] = {&anal, &notif, &pay, &drainer, &gw};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(all); i++) {
        role_kill(all[i]);
        unlink(all[i]->log);
    }
}

static int suite_init(void)
{
    pg_url = test_pg_db("shop", true);
    redis_url = test_redis_db();
    char *err = NULL;
    db = pg_connect(pg_url, "test_shop", &err);
    if (!db) {
        fprintf(stderr, "test_shop: %s\n", err ? err : "?");
        free(err);
        return 1;
    }
    snprintf(boot_path, sizeof boot_path, "/tmp/ecom-shop-boot-%d.json", (int)getpid());
    FILE *f = fopen(boot_path, "w");
    if (!f)
        return 1;
    fprintf(f, "{\"tenants\": {\"" TENANT "\": {\"roles\": {\"shopper\": [\"payments:write\", \"payments:read\","
               " \"events:read\", \"notifications:read\"]}, \"members\": {\"*\": [\"shopper\"]}}}}\n");
    fclose(f);
    if (hook_start(&hook) != 0)
        return 1;

    char hook_url[96];
    snprintf(hook_url, sizeof hook_url, "NOTIFY_WEBHOOK_URL=http://127.0.0.1:%d/receipts", hook.srv.port);
    static const char *const gw_argv[] = {"ecom", "gateway", NULL};
    static const char *const dr_argv[] = {"ecom", "outbox-worker", NULL};
    static const char *const no_argv[] = {"ecom", "service", "notification", NULL};
    static const char *const an_argv[] = {"ecom", "service", "analytics", NULL};
    const char *gw_env[] = {"LOG_LEVEL=warn", NULL};
    const char *no_env[] = {"NOTIFY_CHANNELS=log,webhook", hook_url, "NOTIFY_WEBHOOK_SECRET=" WEBHOOK_SECRET,
                            "LOG_LEVEL=debug", NULL};
    const char *an_env[] = {"LOG_LEVEL=debug", NULL};
    role_start(&gw, "gateway", gw_argv, gw_env);
    role_start(&drainer, "outbox-worker", dr_argv, NULL);
    start_payment("0");
    role_start(&notif, "notification", no_argv, no_env);
    role_start(&anal, "analytics", an_argv, an_env);
    role_t *all[] = {&gw, &drainer, &pay, &notif, &anal};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(all); i++)
        if (role_wait_ready(all[i], 30000) != 0) {
            suite_clean_roles(); /* CUnit skips the cleanup when the init fails */
            return 1;
        }
    return 0;
}

static int suite_clean(void)
{
    suite_clean_roles();
    hook_stop(&hook);
    if (db)
        PQfinish(db);
    unlink(boot_path);
    free(tok);
    return 0;
}

/* ---- the OTP login ---- */

/* The code in the newest auth.otp.requested message for subject that the
 * webhook received (production refuses the development sink file). */
static bool code_from_hook(const char *subject, char code[8])
{
    bool found = false;
    pthread_mutex_lock(&hook.mu);
    for (size_t i = hook.n; i-- > 0 && !found;) {
        const hook_req_t *r = &hook.reqs[i];
        if (strcmp(r->type, "auth.otp.requested") != 0)
            continue;
        json_object *o = json_tokener_parse(r->body), *v;
        if (o && json_object_object_get_ex(o, "subject", &v) && strcmp(json_object_get_string(v), subject) == 0 &&
            json_object_object_get_ex(o, "text", &v)) {
            const char *t = json_object_get_string(v);
            for (const char *p = t; *p && !found; p++) {
                size_t k = 0;
                while (isdigit((unsigned char)p[k]))
                    k++;
                if (k == 6) {
                    memcpy(code, p, 6);
                    code[6] = '\0';
                    found = true;
                } else if (k) {
                    p += k - 1;
                }
            }
        }
        json_object_put(o);
    }
    pthread_mutex_unlock(&hook.mu);
    return found;
}

static bool login(const char *subject)
{
    char body[256], ticket[64];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", subject);
    hresp_t r;
    hpost(gw.port, PAY "/auth/otp/request", "x-tenant-id: " TENANT "\r\n", body, &r);
    bool ok = expect_status(&r, 200, "otp request");
    jstr(&r, "ticketId", ticket, sizeof ticket);
    hfree(&r);
    if (!ok)
        return false;
    /* the code travels outbox -> drainer -> stream -> notification -> webhook */
    char code[8] = "";
    int64_t end = clock_mono_ms() + 20000;
    while (!code_from_hook(subject, code) && clock_mono_ms() < end)
        clock_sleep_ms(50);
    if (!code[0]) {
        fprintf(stderr, "\n  no OTP code reached the webhook\n");
        return false;
    }
    snprintf(body, sizeof body, "{\"ticketId\":\"%s\",\"code\":\"%s\"}", ticket, code);
    hpost(gw.port, PAY "/auth/otp/verify", "x-tenant-id: " TENANT "\r\n", body, &r);
    ok = expect_status(&r, 200, "otp verify");
    char access[2048];
    jstr(&r, "accessToken", access, sizeof access);
    hfree(&r);
    if (!ok || !access[0])
        return false;
    free(tok);
    tok = xstrdup(access);
    return true;
}

static bool ensure_login(void)
{
    return tok || login(SHOPPER);
}

/* ---- stats ---- */

static long long stat_count(const char *type, int window)
{
    char path[160];
    snprintf(path, sizeof path, "/api/v1/analytics/stats?window=%d&type=%s", window, type);
    hresp_t r;
    auth_get(path, &r);
    long long n = -1;
    json_object *o = r.status == 200 ? jparse(&r) : NULL, *data, *v;
    if (!o)
        fprintf(stderr, "\n  stats: %d %.200s\n", r.status, r.body ? r.body : "");
    if (o && json_object_object_get_ex(o, "data", &data)) {
        n = 0;
        for (size_t i = 0; i < json_object_array_length(data); i++) {
            json_object *e = json_object_array_get_idx(data, i);
            if (json_object_object_get_ex(e, "type", &v) && strcmp(json_object_get_string(v), type) == 0 &&
                json_object_object_get_ex(e, "count", &v))
                n += json_object_get_int64(v);
        }
    }
    json_object_put(o);
    hfree(&r);
    return n;
}

/* ---- log lines ---- */

/* Lines of r's log naming msg_id: how many, and how many carry trace_id. */
static void log_lines_of(const role_t *r, const char *msg_id, const char *trace_id, int *lines, int *traced)
{
    *lines = *traced = 0;
    FILE *f = fopen(r->log, "r");
    if (!f)
        return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        if (!strstr(line, msg_id))
            continue;
        json_object *o = json_tokener_parse(line), *v;
        if (o && json_object_object_get_ex(o, "msg_id", &v) && strcmp(json_object_get_string(v), msg_id) == 0) {
            (*lines)++;
            if (json_object_object_get_ex(o, "trace_id", &v) && strcmp(json_object_get_string(v), trace_id) == 0)
                (*traced)++;
            else
                fprintf(stderr, "\n  %s: a line of %s without trace %s: %s", r->name, msg_id, trace_id, line);
        }
        json_object_put(o);
    }
    free(line);
    fclose(f);
}

/* ================= a. the shop flow ================= */

static void test_shop_flow(void)
{
    CU_ASSERT_TRUE_FATAL(login(SHOPPER));

    /* before: fresh reads (each query string is its own cache entry) */
    long long req0 = stat_count("payment.requested", 3600);
    long long ok0 = stat_count("payment.succeeded", 3600);
    CU_ASSERT_TRUE(req0 >= 0 && ok0 >= 0);

    char trace_id[33], span[17];
    random_hex(trace_id, 16);
    random_hex(span, 8);
    char tp[128];
    snprintf(tp, sizeof tp, "traceparent: 00-%s-%s-01\r\n", trace_id, span);
    char id[UUID_STR_LEN] = "";
    CU_ASSERT_EQUAL_FATAL(new_payment("order-flow-1", 4999, "card", tp, id), 202);
    CU_ASSERT_TRUE_FATAL(uuid_valid(id));

    /* the payment service records succeeded */
    char path[160];
    snprintf(path, sizeof path, PAYMENTS "/%s", id);
    char status[32] = "";
    int64_t end = clock_mono_ms() + 20000;
    while (clock_mono_ms() < end) {
        hresp_t r;
        auth_get(path, &r);
        jstr(&r, "status", status, sizeof status);
        if (r.status == 200 && strcmp(status, "succeeded") == 0) {
            json_object *o = jparse(&r), *v;
            CU_ASSERT_TRUE(json_object_object_get_ex(o, "captured", &v) && json_object_get_int64(v) == 4999);
            CU_ASSERT_TRUE(json_object_object_get_ex(o, "refunded", &v) && json_object_get_int64(v) == 0);
            json_object_put(o);
            hfree(&r);
            break;
        }
        hfree(&r);
        clock_sleep_ms(50);
    }
    CU_ASSERT_STRING_EQUAL(status, "succeeded");

    /* the outbox rows of the command and of the event carry the trace */
    char *cmd_id = qs("SELECT id FROM " ALL_OUTBOX " o WHERE type = 'payment.requested'"
                      " AND payload::jsonb->>'paymentId' = $1",
                      id, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cmd_id);
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.succeeded'"
                            " AND payload::jsonb->>'paymentId' = $1",
                            id, NULL, 1, 10000));
    char *evt_id = qs("SELECT id FROM " ALL_OUTBOX " o WHERE type = 'payment.succeeded'"
                      " AND payload::jsonb->>'paymentId' = $1",
                      id, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(evt_id);
    char like[48];
    snprintf(like, sizeof like, "00-%s-%%", trace_id);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE id = $1 AND traceparent LIKE $2", cmd_id, like), 1);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE id = $1 AND traceparent LIKE $2", evt_id, like), 1);

    /* the receipt through the webhook, signed (bad signatures are refused and counted) */
    end = clock_mono_ms() + 20000;
    size_t uniq = 0;
    while (hook_count("payment.succeeded", id, &uniq) < 1 && clock_mono_ms() < end)
        clock_sleep_ms(50);
    CU_ASSERT_EQUAL(hook_count("payment.succeeded", id, &uniq), 1);
    CU_ASSERT_EQUAL(atomic_load(&hook.bad_signatures), 0);
    pthread_mutex_lock(&hook.mu);
    for (size_t i = 0; i < hook.n; i++)
        if (strcmp(hook.reqs[i].type, "payment.succeeded") == 0 && strstr(hook.reqs[i].body, id)) {
            CU_ASSERT_STRING_EQUAL(hook.reqs[i].message_id, evt_id);
            CU_ASSERT_PTR_NOT_NULL(strstr(hook.reqs[i].body, "\"subject\":\"" SHOPPER "\""));
            CU_ASSERT_PTR_NOT_NULL(strstr(hook.reqs[i].body, "\"tenant\":\"" TENANT "\""));
        }
    pthread_mutex_unlock(&hook.mu);

    /* the deliveries route shows it, for the webhook and the log channel */
    CU_ASSERT_TRUE(
        wait_sql("SELECT count(*) FROM notification.deliveries WHERE message_id = $1", evt_id, NULL, 2, 10000));
    hresp_t r;
    auth_get("/api/v1/notifications/deliveries?subject=" SHOPPER "&limit=50", &r);
    CU_ASSERT_TRUE(expect_status(&r, 200, "deliveries"));
    json_object *o = jparse(&r), *data, *v;
    int seen_webhook = 0;
    if (o && json_object_object_get_ex(o, "data", &data))
        for (size_t i = 0; i < json_object_array_length(data); i++) {
            json_object *e = json_object_array_get_idx(data, i);
            if (json_object_object_get_ex(e, "messageId", &v) && strcmp(json_object_get_string(v), evt_id) == 0 &&
                json_object_object_get_ex(e, "channel", &v) && strcmp(json_object_get_string(v), "webhook") == 0) {
                seen_webhook++;
                CU_ASSERT_TRUE(json_object_object_get_ex(e, "status", &v) &&
                               strcmp(json_object_get_string(v), "sent") == 0);
            }
        }
    CU_ASSERT_EQUAL(seen_webhook, 1);
    json_object_put(o);
    hfree(&r);

    /* the stream entries of both messages carry the trace */
    redisContext *rc = redis_open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    redisReply *x = redisCommand(rc, "XRANGE ecom:payment - +");
    CU_ASSERT_TRUE_FATAL(x && x->type == REDIS_REPLY_ARRAY);
    int traced_entries = 0;
    for (size_t i = 0; i < x->elements; i++) {
        const char *eid = entry_field(x->element[i], "id");
        const char *etp = entry_field(x->element[i], "traceparent");
        if (eid && (strcmp(eid, cmd_id) == 0 || strcmp(eid, evt_id) == 0)) {
            CU_ASSERT_TRUE(etp && strncmp(etp + 3, trace_id, 32) == 0);
            traced_entries++;
        }
    }
    CU_ASSERT_EQUAL(traced_entries, 2);
    freeReplyObject(x);
    redisFree(rc);

    /* analytics counted both; a new query string is a fresh read, not the cached one */
    end = clock_mono_ms() + 20000;
    long long req1 = -1, ok1 = -1;
    for (int w = 3599; clock_mono_ms() < end && w > 3000; w--) {
        req1 = stat_count("payment.requested", w);
        ok1 = stat_count("payment.succeeded", w);
        if (req1 == req0 + 1 && ok1 == ok0 + 1)
            break;
        clock_sleep_ms(100);
    }
    CU_ASSERT_EQUAL(req1, req0 + 1);
    CU_ASSERT_EQUAL(ok1, ok0 + 1);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM analytics.events WHERE id = $1 OR id = $2", cmd_id, evt_id), 2);

    /* every handler's log line about these messages carries the trace id */
    int lines, traced;
    log_lines_of(&pay, cmd_id, trace_id, &lines, &traced);
    CU_ASSERT_TRUE(lines >= 1); /* "payment ... succeeded" (debug) */
    CU_ASSERT_EQUAL(lines, traced);
    log_lines_of(&notif, evt_id, trace_id, &lines, &traced);
    CU_ASSERT_TRUE(lines >= 1); /* the log channel's line */
    CU_ASSERT_EQUAL(lines, traced);
    int al1, at1, al2, at2;
    log_lines_of(&anal, cmd_id, trace_id, &al1, &at1);
    log_lines_of(&anal, evt_id, trace_id, &al2, &at2);
    CU_ASSERT_TRUE(al1 >= 1 && al2 >= 1); /* the runtime's "applied" line (debug) */
    CU_ASSERT_EQUAL(al1, at1);
    CU_ASSERT_EQUAL(al2, at2);
    free(cmd_id);
    free(evt_id);
}

/* ================= b. a failing provider ================= */

static void test_provider_outage(void)
{
    CU_ASSERT_TRUE_FATAL(ensure_login());
    role_stop(&pay);
    start_payment("100");
    CU_ASSERT_EQUAL_FATAL(role_wait_ready(&pay, 30000), 0);

    char ids[OUTAGE_N][UUID_STR_LEN];
    for (int i = 0; i < OUTAGE_N; i++) {
        char order[48];
        snprintf(order, sizeof order, "order-outage-%d", i);
        CU_ASSERT_EQUAL_FATAL(new_payment(order, 1000 + i, "card", NULL, ids[i]), 202);
    }
    /* the breaker opens: calls are refused without reaching the provider */
    CU_ASSERT_TRUE(wait_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"rejected\"}", 1, 20000));
    CU_ASSERT_TRUE(wait_metric(&pay, "ecom_service_deferred_total{group=\"payment\"}", 1, 20000));
    CU_ASSERT_TRUE(svc_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"failed\"}") >= 5);
    CU_ASSERT_EQUAL(svc_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"approved\"}"), 0);
    clock_sleep_ms(1500); /* a while of outage: trial calls fail, the breaker opens again */
    CU_ASSERT_EQUAL(
        q1("SELECT count(*) FROM payment.payments WHERE order_id LIKE 'order-outage-%' AND status = 'pending'", NULL,
           NULL),
        OUTAGE_N);
    CU_ASSERT_EQUAL(svc_metric(&pay, "ecom_service_dead_letters_total{group=\"payment\"}"), 0);
    redisContext *rc = redis_open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    CU_ASSERT_TRUE(redis_int(rc, "XLEN %s", "ecom:dlq:payment") <= 0);
    char *log = NULL;
    {
        FILE *f = fopen(pay.log, "r");
        if (f) {
            log = xcalloc(1, 1 << 22);
            size_t n = fread(log, 1, (1 << 22) - 1, f);
            log[n] = '\0';
            fclose(f);
        }
    }
    CU_ASSERT_TRUE(log && strstr(log, "provider circuit open"));
    free(log);

    /* the provider recovers: a restarted service completes each payment once */
    role_stop(&pay);
    start_payment("0");
    CU_ASSERT_EQUAL_FATAL(role_wait_ready(&pay, 30000), 0);
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM payment.payments WHERE order_id LIKE 'order-outage-%'"
                            " AND status = 'succeeded'",
                            NULL, NULL, OUTAGE_N, 30000));
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM payment.payments WHERE order_id LIKE 'order-outage-%'"
                       " AND captured = amount AND refunded = 0",
                       NULL, NULL),
                    OUTAGE_N);
    for (int i = 0; i < OUTAGE_N; i++) {
        CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.succeeded'"
                                " AND payload::jsonb->>'paymentId' = $1",
                                ids[i], NULL, 1, 10000));
        CU_ASSERT_EQUAL(q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.failed'"
                           " AND payload::jsonb->>'paymentId' = $1",
                           ids[i], NULL),
                        0);
    }
    CU_ASSERT_TRUE(wait_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"approved\"}", OUTAGE_N, 10000));
    CU_ASSERT_EQUAL(svc_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"approved\"}"), OUTAGE_N);
    /* every receipt delivered once */
    int64_t end = clock_mono_ms() + 20000;
    for (int i = 0; i < OUTAGE_N; i++) {
        while (hook_count("payment.succeeded", ids[i], NULL) < 1 && clock_mono_ms() < end)
            clock_sleep_ms(50);
        CU_ASSERT_EQUAL(hook_count("payment.succeeded", ids[i], NULL), 1);
    }
    CU_ASSERT_TRUE(redis_int(rc, "XLEN %s", "ecom:dlq:payment") <= 0);
    CU_ASSERT_TRUE(redis_int(rc, "XLEN %s", "ecom:dlq:notification") <= 0);
    redisFree(rc);
}

/* ================= c. 1,000 payments, concurrent refunds, duplicates ================= */

typedef struct bulk {
    char id[BULK_N][UUID_STR_LEN];
    long long amount[BULK_N];
    int pay_status[BULK_N];
    int refund_status[2 * BULK_N];
    char refund_id[2 * BULK_N][UUID_STR_LEN];
    char tag[32];
    _Atomic int next;
} bulk_t;

static bulk_t *bulk;

static void *bulk_pay_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int i = atomic_fetch_add(&bulk->next, 1);
        if (i >= BULK_N)
            return NULL;
        char order[64];
        snprintf(order, sizeof order, "bulk-%s-%04d", bulk->tag, i);
        bulk->amount[i] = 1000 + i;
        bulk->pay_status[i] = new_payment(order, bulk->amount[i], "card", NULL, bulk->id[i]);
    }
}

/* Job j refunds payment j / 2: 60% (even j) or 50% (odd j) of its amount, so
 * the two refunds of a payment, sent at the same time by different threads,
 * cannot both be applied. */
static long long refund_amount(int j)
{
    long long a = bulk->amount[j / 2];
    return j % 2 == 0 ? a * 6 / 10 : a / 2;
}

static void *bulk_refund_thread(void *arg)
{
    (void)arg;
    for (;;) {
        int j = atomic_fetch_add(&bulk->next, 1);
        if (j >= 2 * BULK_N)
            return NULL;
        char path[128], body[64], key[UUID_STR_LEN];
        snprintf(path, sizeof path, PAYMENTS "/%s/refund", bulk->id[j / 2]);
        snprintf(body, sizeof body, "{\"amount\":%lld}", refund_amount(j));
        uuid_v7(key);
        hresp_t r;
        pay_post(path, body, key, NULL, &r);
        bulk->refund_status[j] = r.status;
        if (r.status == 202)
            jstr(&r, "id", bulk->refund_id[j], UUID_STR_LEN);
        else if (r.status != 422)
            fprintf(stderr, "\n  refund: %d %.200s\n", r.status, r.body ? r.body : "");
        hfree(&r);
    }
}

static void run_threads(void *(*fn)(void *))
{
    pthread_t th[BULK_THREADS];
    atomic_store(&bulk->next, 0);
    for (int i = 0; i < BULK_THREADS; i++)
        pthread_create(&th[i], NULL, fn, NULL);
    for (int i = 0; i < BULK_THREADS; i++)
        pthread_join(th[i], NULL);
}

/* Delivers again, as the drainer would after losing its delete: XADDs to
 * ecom:payment every field (the message id included) of at most max published
 * outbox rows matching where ($1 = param). Returns how many. */
static int redeliver(redisContext *rc, const char *where, const char *param, int max)
{
    char *sql = xasprintf("SELECT id, type, topic, tenant, aggregate_id, seq, ts, v, traceparent, request_id, payload"
                          " FROM bus.outbox_published WHERE topic = 'payment' AND %s ORDER BY pos LIMIT %d",
                          where, max);
    const char *p[] = {param};
    PGresult *res = pg_query(db, sql, 1, p);
    free(sql);
    if (!res)
        return -1;
    static const char *const names[] = {"id", "type", "topic",       "tenant",     "aggregate_id", "seq",
                                        "ts", "v",    "traceparent", "request_id", "payload"};
    int n = 0;
    for (int i = 0; i < PQntuples(res); i++) {
        const char *argv[3 + 2 * 11] = {"XADD", "ecom:payment", "*"};
        size_t lens[3 + 2 * 11] = {4, 12, 1};
        for (int k = 0; k < 11; k++) {
            argv[3 + 2 * k] = names[k];
            lens[3 + 2 * k] = strlen(names[k]);
            argv[4 + 2 * k] = PQgetvalue(res, i, k);
            lens[4 + 2 * k] = (size_t)PQgetlength(res, i, k);
        }
        redisReply *a = redisCommandArgv(rc, 3 + 2 * 11, argv, lens);
        n += a && a->type == REDIS_REPLY_STRING;
        freeReplyObject(a);
    }
    PQclear(res);
    return n;
}

static void test_bulk_refunds(void)
{
    CU_ASSERT_TRUE_FATAL(ensure_login());
    bulk = xcalloc(1, sizeof *bulk);
    random_hex(bulk->tag, 4);
    char like[64];
    snprintf(like, sizeof like, "bulk-%s-%%", bulk->tag);
    double approved0 = svc_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"approved\"}");
    size_t hooks0 = hook_count("payment.succeeded", NULL, NULL);

    double merged0 = metric(gw.port, "ecom_command_writes_merged_total");
    run_threads(bulk_pay_thread);
    int accepted = 0;
    for (int i = 0; i < BULK_N; i++)
        accepted += bulk->pay_status[i] == 202 && uuid_valid(bulk->id[i]);
    CU_ASSERT_EQUAL_FATAL(accepted, BULK_N);
    /* concurrent payments commit in groups, their rows inserted together
     * (one statement over arrays): every column lands in its place */
    CU_ASSERT_TRUE(metric(gw.port, "ecom_command_writes_merged_total") - (merged0 < 0 ? 0 : merged0) >= 2);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM payment.payments WHERE order_id LIKE $1 AND tenant = '" TENANT "'"
                       " AND amount = 1000 + split_part(order_id, '-', 3)::int AND currency = 'EUR'"
                       " AND method = 'card'",
                       like, NULL),
                    BULK_N);
    CU_ASSERT_TRUE_FATAL(
        wait_sql("SELECT count(*) FROM payment.payments WHERE order_id LIKE $1 AND status = 'succeeded'", like, NULL,
                 BULK_N, 60000));

    run_threads(bulk_refund_thread);
    int r202 = 0, r422 = 0;
    for (int j = 0; j < 2 * BULK_N; j++) {
        r202 += bulk->refund_status[j] == 202;
        r422 += bulk->refund_status[j] == 422;
    }
    CU_ASSERT_EQUAL(r202 + r422, 2 * BULK_N);
    CU_ASSERT_TRUE(r202 >= BULK_N); /* the first of each pair always passes the gateway's check */
    fprintf(stderr, "\n  refunds: %d accepted (202), %d refused at the gateway (422)\n", r202, r422);
    /* every accepted refund is decided once, and only those */
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM payment.refunds f JOIN payment.payments p ON p.id = f.payment_id"
                            " WHERE p.order_id LIKE $1",
                            like, NULL, r202, 60000));
    /* balances: each payment has exactly one applied refund (60% and 50% cannot
     * both fit), refunded equals what was applied, captured the amount */
    CU_ASSERT_EQUAL(
        q1("SELECT count(*) FROM payment.payments p WHERE p.order_id LIKE $1 AND ("
           " p.captured <> p.amount OR p.refunded > p.captured"
           " OR p.refunded <> (SELECT coalesce(sum(amount), 0) FROM payment.refunds f"
           "                   WHERE f.payment_id = p.id AND f.status = 'succeeded')"
           " OR (SELECT count(*) FROM payment.refunds f WHERE f.payment_id = p.id AND f.status = 'succeeded')"
           "    <> 1)",
           like, NULL),
        0);
    long long accepted_refunds = 0;
    for (int j = 0; j < 2 * BULK_N; j++)
        if (bulk->refund_status[j] == 202) {
            accepted_refunds++;
            char amt[24];
            snprintf(amt, sizeof amt, "%lld", refund_amount(j));
            CU_ASSERT_EQUAL(
                q1("SELECT count(*) FROM payment.refunds WHERE id = $1 AND amount = $2", bulk->refund_id[j], amt), 1);
        }
    CU_ASSERT_EQUAL(accepted_refunds, r202);
    /* sum over the run: refunded = the applied refunds; rejected ones carry a reason */
    CU_ASSERT_EQUAL(
        q1("SELECT sum(p.refunded) - (SELECT coalesce(sum(f.amount), 0) FROM payment.refunds f"
           " JOIN payment.payments q ON q.id = f.payment_id WHERE q.order_id LIKE $1 AND f.status = 'succeeded')"
           " FROM payment.payments p WHERE p.order_id LIKE $1",
           like, NULL),
        0);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM payment.refunds f JOIN payment.payments p ON p.id = f.payment_id"
                       " WHERE p.order_id LIKE $1 AND f.status = 'rejected' AND coalesce(f.reason, '') = ''",
                       like, NULL),
                    0);
    /* one payment.refunded event per applied refund */
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.refunded'"
                            " AND payload::jsonb->>'orderId' LIKE $1",
                            like, NULL, BULK_N, 20000));

    /* duplicate deliveries: copies of stream entries (same message ids), and a
     * second command with a new id for a settled payment */
    redisContext *rc = redis_open();
    CU_ASSERT_PTR_NOT_NULL_FATAL(rc);
    double dup_pay0 = svc_metric(&pay, "ecom_service_duplicates_total{group=\"payment\"}");
    double dup_not0 = svc_metric(&notif, "ecom_service_duplicates_total{group=\"notification\"}");
    double ign_pay0 = svc_metric(&pay, "ecom_service_ignored_total{group=\"payment\"}");
    double ign_not0 = svc_metric(&notif, "ecom_service_ignored_total{group=\"notification\"}");
    double dup_an0 = svc_metric(&anal, "ecom_service_duplicates_total{group=\"analytics\"}");
    int dup_cmd = redeliver(rc, "type = 'payment.requested' AND payload::jsonb->>'orderId' LIKE $1", like, 100);
    int dup_evt = redeliver(rc, "type = 'payment.succeeded' AND payload::jsonb->>'orderId' LIKE $1", like, 50);
    int dup_rcmd = redeliver(rc,
                             "type = 'payment.refund.requested' AND payload::jsonb->>'paymentId' IN"
                             " (SELECT id::text FROM payment.payments WHERE order_id LIKE $1)",
                             like, 50);
    CU_ASSERT_EQUAL(dup_cmd, 100);
    CU_ASSERT_EQUAL(dup_evt, 50);
    CU_ASSERT_EQUAL(dup_rcmd, 50);
    /* a new message id, the same payment: the state machine ignores it */
    char payload[256];
    snprintf(payload, sizeof payload,
             "{\"paymentId\":\"%s\",\"orderId\":\"bulk-%s-0000\",\"amount\":%lld,\"currency\":\"EUR\","
             "\"method\":\"card\",\"subject\":\"" SHOPPER "\"}",
             bulk->id[0], bulk->tag, bulk->amount[0]);
    char agg[64];
    snprintf(agg, sizeof agg, "payment:%s", bulk->id[0]);
    CU_ASSERT_EQUAL(test_sh("DATABASE_URL='%s' REDIS_URL='%s' %s publish --topic payment --type payment.requested"
                            " --tenant " TENANT " --aggregate '%s' --payload '%s' >/dev/null 2>&1",
                            pg_url, redis_url, test_bin("ecomctl"), agg, payload),
                    0);

    /* the inboxes skip the copies of what a service applies; the types it
     * ignores (payment: its own events; notification: the commands) are
     * acknowledged without a transaction, copies or not */
    CU_ASSERT_TRUE(
        wait_metric(&pay, "ecom_service_duplicates_total{group=\"payment\"}", dup_pay0 + dup_cmd + dup_rcmd, 20000));
    CU_ASSERT_TRUE(wait_metric(&pay, "ecom_service_ignored_total{group=\"payment\"}", ign_pay0 + dup_evt, 20000));
    CU_ASSERT_TRUE(
        wait_metric(&notif, "ecom_service_duplicates_total{group=\"notification\"}", dup_not0 + dup_evt, 20000));
    CU_ASSERT_TRUE(wait_metric(&notif, "ecom_service_ignored_total{group=\"notification\"}",
                               ign_not0 + dup_cmd + dup_rcmd + 1, 20000));
    CU_ASSERT_TRUE(wait_metric(&anal, "ecom_service_duplicates_total{group=\"analytics\"}",
                               dup_an0 + dup_cmd + dup_evt + dup_rcmd, 20000));
    /* the ecomctl command was applied (and ignored) */
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM bus.inbox i JOIN " ALL_OUTBOX " o ON o.id = i.id"
                            " WHERE i.grp = 'payment' AND o.type = 'payment.requested'"
                            " AND o.payload::jsonb->>'paymentId' = $1",
                            bulk->id[0], NULL, 2, 20000));
    clock_sleep_ms(500); /* anything extra would show now */
    CU_ASSERT_EQUAL(svc_metric(&pay, "ecom_service_duplicates_total{group=\"payment\"}"),
                    dup_pay0 + dup_cmd + dup_rcmd);
    CU_ASSERT_EQUAL(svc_metric(&notif, "ecom_service_duplicates_total{group=\"notification\"}"), dup_not0 + dup_evt);
    /* no second charge, no second event, no second receipt, no second refund */
    CU_ASSERT_EQUAL(svc_metric(&pay, "ecom_payment_provider_calls_total{outcome=\"approved\"}") - approved0, BULK_N);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.succeeded'"
                       " AND payload::jsonb->>'orderId' LIKE $1",
                       like, NULL),
                    BULK_N);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE type = 'payment.refunded'"
                       " AND payload::jsonb->>'orderId' LIKE $1",
                       like, NULL),
                    BULK_N);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM payment.refunds f JOIN payment.payments p ON p.id = f.payment_id"
                       " WHERE p.order_id LIKE $1",
                       like, NULL),
                    r202);
    int64_t end = clock_mono_ms() + 30000;
    size_t uniq = 0;
    while (hook_count("payment.succeeded", NULL, &uniq) - hooks0 < BULK_N && clock_mono_ms() < end)
        clock_sleep_ms(100);
    size_t total = hook_count("payment.succeeded", NULL, &uniq);
    CU_ASSERT_EQUAL(total - hooks0, BULK_N);
    CU_ASSERT_EQUAL(uniq, total);
    CU_ASSERT_EQUAL(atomic_load(&hook.bad_signatures), 0);
    CU_ASSERT_TRUE(redis_int(rc, "XLEN %s", "ecom:dlq:payment") <= 0);
    CU_ASSERT_TRUE(redis_int(rc, "XLEN %s", "ecom:dlq:notification") <= 0);
    redisFree(rc);
    free(bulk);
    bulk = NULL;
}

/* ================= d. bad input ================= */

typedef struct counts {
    long long payments, refunds, outbox;
} counts_t;

static void count_rows(counts_t *c)
{
    c->payments = q1("SELECT count(*) FROM payment.payments", NULL, NULL);
    c->refunds = q1("SELECT count(*) FROM payment.refunds", NULL, NULL);
    c->outbox = q1("SELECT count(*) FROM " ALL_OUTBOX " o WHERE topic = 'payment'", NULL, NULL);
}

/* A problem+json answer with status and a type ending in type_suffix (any type when NULL). */
static void expect_problem(const hresp_t *r, int status, const char *type_suffix, const char *what)
{
    if (type_suffix) {
        check_problem(r, status, type_suffix, NULL, what);
        return;
    }
    CU_ASSERT_TRUE(expect_status(r, status, what));
    char ct[128];
    CU_ASSERT_TRUE(hheader(r, "Content-Type", ct, sizeof ct) && strncmp(ct, "application/problem+json", 24) == 0);
    json_object *o = jparse(r), *v;
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "status", &v) && json_object_get_int(v) == status);
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "detail", &v) && strlen(json_object_get_string(v)) > 0);
    json_object_put(o);
}

static void bad_post(const char *path, const char *body, int status, const char *type, const char *what)
{
    char key[UUID_STR_LEN];
    uuid_v7(key);
    hresp_t r;
    pay_post(path, body, key, NULL, &r);
    expect_problem(&r, status, type, what);
    hfree(&r);
}

static void bad_get(const char *path, int status, const char *type, const char *what)
{
    hresp_t r;
    auth_get(path, &r);
    expect_problem(&r, status, type, what);
    hfree(&r);
}

static void test_bad_input(void)
{
    CU_ASSERT_TRUE_FATAL(ensure_login());
    /* a settled payment to refund, and a declined one */
    char ok_id[UUID_STR_LEN] = "", declined[UUID_STR_LEN] = "";
    CU_ASSERT_EQUAL_FATAL(new_payment("order-bad-ok", 1000, "card", NULL, ok_id), 202);
    CU_ASSERT_EQUAL_FATAL(new_payment("order-bad-declined", 1000, "card_declined", NULL, declined), 202);
    CU_ASSERT_TRUE_FATAL(wait_sql("SELECT count(*) FROM payment.payments WHERE (id = $1 AND status = 'succeeded')"
                                  " OR (id = $2 AND status = 'failed')",
                                  ok_id, declined, 2, 20000));
    CU_ASSERT_TRUE(wait_sql("SELECT count(*) FROM " ALL_OUTBOX " o WHERE payload::jsonb->>'paymentId' IN ($1, $2)"
                            " AND type IN ('payment.succeeded', 'payment.failed')",
                            ok_id, declined, 2, 10000));
    counts_t before, after;
    count_rows(&before);

    /* POST /payments: wrong types, bad amounts, unknown currency, bad method and order */
    static const struct {
        const char *body, *what;
    } bad_payments[] = {
        {"[]", "an array"},
        {"\"pay\"", "a string"},
        {"{}", "empty object"},
        {"{\"orderId\":\"o\",\"amount\":\"1999\",\"currency\":\"EUR\",\"method\":\"card\"}", "amount as a string"},
        {"{\"orderId\":\"o\",\"amount\":19.99,\"currency\":\"EUR\",\"method\":\"card\"}", "fractional amount"},
        {"{\"orderId\":\"o\",\"amount\":-5,\"currency\":\"EUR\",\"method\":\"card\"}", "negative amount"},
        {"{\"orderId\":\"o\",\"amount\":0,\"currency\":\"EUR\",\"method\":\"card\"}", "zero amount"},
        {"{\"orderId\":\"o\",\"amount\":100000000001,\"currency\":\"EUR\",\"method\":\"card\"}", "huge amount"},
        {"{\"orderId\":\"o\",\"amount\":99999999999999999999999,\"currency\":\"EUR\",\"method\":\"card\"}",
         "amount beyond 64 bits"},
        {"{\"orderId\":\"o\",\"amount\":null,\"currency\":\"EUR\",\"method\":\"card\"}", "null amount"},
        {"{\"orderId\":\"o\",\"amount\":true,\"currency\":\"EUR\",\"method\":\"card\"}", "boolean amount"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"XXY\",\"method\":\"card\"}", "unknown currency"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"eur\",\"method\":\"card\"}", "lower-case currency"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"EURO\",\"method\":\"card\"}", "four-letter currency"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":978,\"method\":\"card\"}", "numeric currency"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"method\":\"card\"}", "no currency"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"EUR\",\"method\":\"Card!\"}", "bad method"},
        {"{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"EUR\"}", "no method"},
        {"{\"orderId\":\"\",\"amount\":1999,\"currency\":\"EUR\",\"method\":\"card\"}", "empty order"},
        {"{\"orderId\":42,\"amount\":1999,\"currency\":\"EUR\",\"method\":\"card\"}", "numeric order"},
        {"{\"orderId\":\"a b\",\"amount\":1999,\"currency\":\"EUR\",\"method\":\"card\"}", "order with a blank"},
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad_payments); i++)
        bad_post(PAYMENTS, bad_payments[i].body, 400, "validation-error", bad_payments[i].what);
    /* malformed JSON, duplicate keys, trailing data: the gateway's body check */
    bad_post(PAYMENTS, "{\"orderId\":", 400, NULL, "truncated JSON");
    bad_post(PAYMENTS, "{\"orderId\":\"o\",\"amount\":1,\"amount\":2,\"currency\":\"EUR\",\"method\":\"card\"}", 400,
             NULL, "duplicate key");
    bad_post(PAYMENTS, "{\"orderId\":\"o\",\"amount\":1,\"currency\":\"EUR\",\"method\":\"card\"} x", 400, NULL,
             "trailing data");
    /* no Idempotency-Key */
    {
        hresp_t r;
        pay_post(PAYMENTS, "{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"EUR\",\"method\":\"card\"}", NULL, NULL,
                 &r);
        expect_problem(&r, 400, NULL, "no idempotency key");
        hfree(&r);
    }
    /* no token */
    {
        hresp_t r;
        hpost(gw.port, PAYMENTS, "x-tenant-id: " TENANT "\r\nIdempotency-Key: k-no-token-1\r\n",
              "{\"orderId\":\"o\",\"amount\":1999,\"currency\":\"EUR\",\"method\":\"card\"}", &r);
        expect_problem(&r, 401, NULL, "no token");
        hfree(&r);
    }

    /* GET /payments/:id: unknown ids */
    char unknown[UUID_STR_LEN], path[160];
    uuid_v7(unknown);
    snprintf(path, sizeof path, PAYMENTS "/%s", unknown);
    bad_get(path, 404, "payment-not-found", "unknown payment");
    bad_get(PAYMENTS "/not-a-uuid", 404, "payment-not-found", "not a uuid");
    bad_get(PAYMENTS "/00000000-0000-0000-0000-00000000000g", 404, "payment-not-found", "bad hex");

    /* POST /payments/:id/refund */
    snprintf(path, sizeof path, PAYMENTS "/%s/refund", unknown);
    bad_post(path, "{\"amount\":100}", 404, "payment-not-found", "refund of an unknown payment");
    bad_post(PAYMENTS "/not-a-uuid/refund", "{\"amount\":100}", 404, "payment-not-found", "refund of a bad id");
    /* a bad body is the client's 400 whatever the id: checked before the payment is read */
    bad_post(path, "{\"amount\":-1}", 400, "validation-error", "negative refund of an unknown payment");
    bad_post(PAYMENTS "/not-a-uuid/refund", "{}", 400, "validation-error", "refund without amount of a bad id");
    snprintf(path, sizeof path, PAYMENTS "/%s/refund", ok_id);
    bad_post(path, "{\"amount\":1001}", 422, "refund-exceeds-captured", "refund over the capture");
    bad_post(path, "{\"amount\":100000000001}", 400, "validation-error", "huge refund");
    bad_post(path, "{\"amount\":-1}", 400, "validation-error", "negative refund");
    bad_post(path, "{\"amount\":0}", 400, "validation-error", "zero refund");
    bad_post(path, "{\"amount\":\"100\"}", 400, "validation-error", "refund amount as a string");
    bad_post(path, "{\"amount\":1.5}", 400, "validation-error", "fractional refund");
    bad_post(path, "{}", 400, "validation-error", "refund without amount");
    bad_post(path, "[100]", 400, "validation-error", "refund body an array");
    snprintf(path, sizeof path, PAYMENTS "/%s/refund", declined);
    bad_post(path, "{\"amount\":100}", 409, "payment-not-refundable", "refund of a failed payment");

    /* the notification and analytics reads */
    bad_get("/api/v1/notifications/deliveries", 400, "validation-error", "deliveries without subject");
    bad_get("/api/v1/notifications/deliveries?subject=" SHOPPER "&limit=0", 400, "validation-error", "limit 0");
    bad_get("/api/v1/notifications/deliveries?subject=" SHOPPER "&limit=201", 400, "validation-error", "limit 201");
    bad_get("/api/v1/notifications/deliveries?subject=" SHOPPER "&limit=ten", 400, "validation-error", "limit text");
    bad_get("/api/v1/notifications/deliveries?subject=" SHOPPER "&cursor=garbage", 400, "validation-error",
            "bad cursor");
    bad_get("/api/v1/notifications/deliveries?subject=%01x", 400, "validation-error", "control character");
    bad_get("/api/v1/analytics/stats?window=10", 400, "validation-error", "window too small");
    bad_get("/api/v1/analytics/stats?window=86401", 400, "validation-error", "window too large");
    bad_get("/api/v1/analytics/stats?window=-60", 400, "validation-error", "negative window");
    bad_get("/api/v1/analytics/stats?window=abc", 400, "validation-error", "window text");
    bad_get("/api/v1/analytics/stats?type=a%20b", 400, "validation-error", "bad type");
    bad_get("/api/v1/analytics/events?limit=-1", 400, NULL, "events limit");

    clock_sleep_ms(300); /* a write that slipped through would be committed by now */
    count_rows(&after);
    CU_ASSERT_EQUAL(after.payments, before.payments);
    CU_ASSERT_EQUAL(after.refunds, before.refunds);
    CU_ASSERT_EQUAL(after.outbox, before.outbox);
    /* and the payments are as they were */
    CU_ASSERT_EQUAL(
        q1("SELECT count(*) FROM payment.payments WHERE id = $1 AND refunded = 0 AND captured = 1000", ok_id, NULL), 1);
}

/* ================= the end: every process stops cleanly ================= */

static void test_clean_stop(void)
{
    role_t *all[] = {&anal, &notif, &pay, &drainer, &gw};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(all); i++)
        role_stop(all[i]);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"shop flow: OTP login, pay, receipt by webhook, stats, one traceparent", test_shop_flow},
        {"provider failing 100%: breaker, payments wait, complete once", test_provider_outage},
        {"1,000 payments, concurrent refunds, duplicate deliveries", test_bulk_refunds},
        {"bad input on every route: problem+json, no writes", test_bad_input},
        {"every process stops cleanly", test_clean_stop},
        CU_TEST_INFO_NULL,
    };
    return test_main("shop", tests, suite_init, suite_clean);
}
