/* http-gateway/routes_payments.c: the payment routes. A payment is written
 * `pending` together with its payment.requested command (one transaction, an
 * Idempotency-Key required); the payment service charges it. A refund is
 * checked against what the payment has captured (a clear 422 here) and then
 * requested through the outbox; the service applies it atomically. */
#include "http-gateway/routes_payments.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/uuid.h"
#include "services/payment/payment.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define AMOUNT_MAX 100000000000LL /* minor units: far beyond any single payment */

static bool method_valid(const char *m)
{
    size_t n = strlen(m);
    if (n == 0 || n > PAYMENT_METHOD_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((m[i] >= 'a' && m[i] <= 'z') || m[i] == '_' || (m[i] >= '0' && m[i] <= '9')))
            return false;
    return true;
}

static bool order_valid(const char *o)
{
    size_t n = strlen(o);
    if (n == 0 || n > PAYMENT_ORDER_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)o[i] < 0x21 || o[i] == 0x7f)
            return false;
    return true;
}

/* A positive integer amount in minor units, or -1 (with a detail). */
static int64_t amount_of(json_object *body, const char **detail)
{
    json_object *a;
    if (!json_object_object_get_ex(body, "amount", &a) || !json_object_is_type(a, json_type_int)) {
        *detail = "amount must be an integer number of minor units (e.g. 1999 for 19.99 EUR)";
        return -1;
    }
    int64_t v = json_object_get_int64(a);
    if (v <= 0 || v > AMOUNT_MAX) {
        *detail = v <= 0 ? "amount must be greater than zero" : "amount is larger than any payment accepted";
        return -1;
    }
    return v;
}

static void iso_time(int64_t ms, char *out, size_t cap)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%03dZ", (int)(ms % 1000));
}

static json_object *payment_json(const payment_t *p)
{
    json_object *o = json_object_new_object();
    char t[40];
    json_object_object_add(o, "id", json_object_new_string(p->id));
    json_object_object_add(o, "orderId", json_object_new_string(p->order_id));
    json_object_object_add(o, "amount", json_object_new_int64(p->amount));
    json_object_object_add(o, "currency", json_object_new_string(p->currency));
    json_object_object_add(o, "method", json_object_new_string(p->method));
    json_object_object_add(o, "status", json_object_new_string(p->status));
    json_object_object_add(o, "captured", json_object_new_int64(p->captured));
    json_object_object_add(o, "refunded", json_object_new_int64(p->refunded));
    json_object_object_add(o, "failureReason", p->failure_reason[0] ? json_object_new_string(p->failure_reason) : NULL);
    iso_time(p->created_ms, t, sizeof t);
    json_object_object_add(o, "createdAt", json_object_new_string(t));
    iso_time(p->updated_ms, t, sizeof t);
    json_object_object_add(o, "updatedAt", json_object_new_string(t));
    return o;
}

/* Queues a payment command (topic "payment", aggregate "payment:<id>") with
 * payload (consumed) in the request's command. 0, or -1 after answering 500. */
static int queue_command(gw_req_t *r, const char *payment_id, json_object *payload)
{
    json_object_object_add(payload, "subject", json_object_new_string(r->principal.sub));
    char aggregate[UUID_STR_LEN + 8];
    snprintf(aggregate, sizeof aggregate, "payment:%s", payment_id);
    outbox_msg_t m = {.topic = "payment",
                      .type = r->route->publish,
                      .tenant = r->tenant,
                      .aggregate_id = aggregate,
                      .traceparent = r->traceparent,
                      .request_id = r->request_id,
                      .payload = json_object_to_json_string_ext(payload, JSON_C_TO_STRING_PLAIN)};
    const char *why = NULL;
    int rc = gw_cmd_outbox(r, &m, NULL, &why);
    json_object_put(payload);
    if (rc != 0) { /* every part of the message was checked: the server's fault */
        log_warn("payment command not queued: %s", why);
        gw_problem(r, 500, NULL, "the command could not be queued");
    }
    return rc;
}

/* ---- POST /api/v1/payments/payments ---- */

static int mem_insert(db_t *tx, void *arg)
{
    return payment_mem_insert(tx, arg);
}

static const gw_op_def_t payment_insert = {
    .name = "gw_payment_insert",
    .sql = "INSERT INTO payment.payments (id, tenant, order_id, amount, currency, method, status)"
           " VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
    .nparams = 6,
    .many_name = "gw_payment_insert_many",
    .many_sql = "INSERT INTO payment.payments (id, tenant, order_id, amount, currency, method, status)"
                " SELECT u.id::uuid, u.tenant, u.order_id, u.amount::bigint, u.currency, u.method, 'pending'"
                " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
                " AS u(id, tenant, order_id, amount, currency, method)"};

void gw_post_payment(gw_req_t *r)
{
    json_object *b = r->json;
    if (!json_object_is_type(b, json_type_object)) {
        gw_problem(r, 400, "validation-error", "the body must be a JSON object {orderId, amount, currency, method}");
        return;
    }
    const char *order = json_get_str(b, "orderId");
    const char *currency = json_get_str(b, "currency");
    const char *method = json_get_str(b, "method");
    const char *detail = NULL;
    int64_t amount = amount_of(b, &detail);
    if (!detail && (!order || !order_valid(order)))
        detail = "orderId must be a string of 1 to 128 visible characters";
    if (!detail && (!currency || payment_currency_exponent(currency) < 0))
        detail = "currency must be an active ISO 4217 code in upper case (e.g. EUR)";
    if (!detail && (!method || !method_valid(method)))
        detail = "method must match [a-z0-9_]{1,32} (e.g. card)";
    if (detail || amount < 0) {
        gw_problem(r, 400, "validation-error", detail);
        return;
    }
    payment_t *p = xcalloc(1, sizeof *p);
    uuid_v7(p->id);
    snprintf(p->tenant, sizeof p->tenant, "%s", r->tenant);
    snprintf(p->order_id, sizeof p->order_id, "%s", order);
    p->amount = amount;
    snprintf(p->currency, sizeof p->currency, "%s", currency);
    snprintf(p->method, sizeof p->method, "%s", method);
    snprintf(p->status, sizeof p->status, "pending");
    p->created_ms = p->updated_ms = clock_now_ms();
    char amt[24];
    snprintf(amt, sizeof amt, "%lld", (long long)amount);
    const char *params[] = {p->id, p->tenant, p->order_id, amt, p->currency, p->method};
    if (gw_cmd_op(r, &payment_insert, params, mem_insert, p, free) != 0) {
        gw_problem(r, 500, NULL, "the payment could not be queued");
        return;
    }
    json_object *payload = json_object_new_object();
    json_object_object_add(payload, "paymentId", json_object_new_string(p->id));
    json_object_object_add(payload, "orderId", json_object_new_string(order));
    json_object_object_add(payload, "amount", json_object_new_int64(amount));
    json_object_object_add(payload, "currency", json_object_new_string(currency));
    json_object_object_add(payload, "method", json_object_new_string(method));
    if (queue_command(r, p->id, payload) != 0)
        return;
    json_object *body = json_object_new_object();
    json_object_object_add(body, "id", json_object_new_string(p->id));
    json_object_object_add(body, "status", json_object_new_string("pending"));
    gw_cmd_commit(r, 202, body);
}

/* ---- reading one payment (PostgreSQL asynchronously, or memory) ---- */

/* refunds: the payment's decided refunds when asked for (else none) */
typedef void (*payment_cb)(gw_req_t *r, int found, const payment_t *p, const payment_refund_t *refunds, size_t n);

typedef struct read_ctx {
    gw_req_t *r;
    payment_cb cb;
    bool own_conn;     /* acquired here (not the request's transaction) */
    bool with_refunds; /* GET: the refunds too, in the same round trip */
} read_ctx_t;

/* found by the primary key only: `(tenant = $2) IS TRUE` can only filter (see
 * services/payment/payment.c) */
#define PAYMENT_GET_COLUMNS                                                                                            \
    "SELECT p.id, p.tenant, p.order_id, p.amount, p.currency, p.method, p.status, p.captured, p.refunded,"             \
    " coalesce(p.failure_reason, ''), (extract(epoch FROM p.created_at) * 1000)::bigint,"                              \
    " (extract(epoch FROM p.updated_at) * 1000)::bigint"
static const char sql_payment_get[] =
    PAYMENT_GET_COLUMNS " FROM payment.payments p WHERE p.id = $1 AND (p.tenant = $2) IS TRUE";
/* With its decided refunds, a row each (one row with NULL refund columns
 * when none), in one statement: one snapshot, so the list and the
 * payment's refunded total agree. Columns 12.. as payment_refund_from_row. */
#define REFUND_COL 12
static const char sql_payment_get_refunds[] =
    PAYMENT_GET_COLUMNS ", f.id, f.amount, f.status = 'succeeded', coalesce(f.reason, ''),"
                        " (extract(epoch FROM f.created_at) * 1000)::bigint FROM payment.payments p LEFT JOIN LATERAL"
                        " (SELECT * FROM payment.refunds r WHERE r.payment_id = p.id ORDER BY r.id LIMIT 100) f ON true"
                        " WHERE p.id = $1 AND (p.tenant = $2) IS TRUE ORDER BY f.id";
_Static_assert(PAYMENT_REFUNDS_SHOWN == 100, "sql_payment_get_refunds' LIMIT");

static void on_read(pga_conn_t *c, PGresult *const *res, int n, const char *err, void *arg)
{
    read_ctx_t *rc = arg;
    gw_req_t *r = rc->r;
    log_ctx_set(&r->log);
    payment_t p;
    memset(&p, 0, sizeof p);
    int found = -1;
    payment_refund_t *refunds = NULL;
    size_t nrefunds = 0;
    if (!err && n < 1)
        err = "missing results";
    if (!err) {
        PGresult *q = res[0];
        found = PQntuples(q) >= 1 ? 0 : 1;
        if (found == 0) {
            snprintf(p.id, sizeof p.id, "%s", PQgetvalue(q, 0, 0));
            snprintf(p.tenant, sizeof p.tenant, "%s", PQgetvalue(q, 0, 1));
            snprintf(p.order_id, sizeof p.order_id, "%s", PQgetvalue(q, 0, 2));
            p.amount = strtoll(PQgetvalue(q, 0, 3), NULL, 10);
            snprintf(p.currency, sizeof p.currency, "%s", PQgetvalue(q, 0, 4));
            snprintf(p.method, sizeof p.method, "%s", PQgetvalue(q, 0, 5));
            snprintf(p.status, sizeof p.status, "%s", PQgetvalue(q, 0, 6));
            p.captured = strtoll(PQgetvalue(q, 0, 7), NULL, 10);
            p.refunded = strtoll(PQgetvalue(q, 0, 8), NULL, 10);
            snprintf(p.failure_reason, sizeof p.failure_reason, "%s", PQgetvalue(q, 0, 9));
            p.created_ms = strtoll(PQgetvalue(q, 0, 10), NULL, 10);
            p.updated_ms = strtoll(PQgetvalue(q, 0, 11), NULL, 10);
        }
        if (found == 0 && rc->with_refunds) {
            int rows = PQntuples(q);
            refunds = xcalloc((size_t)rows, sizeof *refunds);
            for (int i = 0; i < rows; i++)
                if (!PQgetisnull(q, i, REFUND_COL))
                    payment_refund_from_row(q, i, REFUND_COL, &refunds[nrefunds++]);
        }
    } else {
        log_warn("payment read failed: %s", err);
    }
    if (rc->own_conn)
        pga_release(c, false);
    rc->cb(r, found, &p, refunds, nrefunds);
    free(refunds);
    free(rc);
    gw_unref(r);
    log_ctx_set(NULL);
}

static void read_with(gw_req_t *r, pga_conn_t *c, read_ctx_t *rc)
{
    const char *id = route_param(&r->params, "id");
    const char *p[] = {id, r->tenant};
    const pga_stmt_t st[] = {
        rc->with_refunds
            ? (pga_stmt_t){.name = "gw_payment_get_refunds", .sql = sql_payment_get_refunds, .nparams = 2, .params = p}
            : (pga_stmt_t){.name = "gw_payment_get", .sql = sql_payment_get, .nparams = 2, .params = p}};
    if (pga_pipeline(c, st, 1, on_read, rc) != 0) {
        if (rc->own_conn)
            pga_release(c, true);
        rc->cb(r, -1, NULL, NULL, 0);
        free(rc);
        gw_unref(r);
    }
}

static void on_read_conn(pga_conn_t *c, const char *err, void *arg)
{
    read_ctx_t *rc = arg;
    gw_req_t *r = rc->r;
    if (!c) {
        log_ctx_set(&r->log);
        log_warn("no database connection for a payment read: %s", err ? err : "?");
        rc->cb(r, -1, NULL, NULL, 0);
        free(rc);
        gw_unref(r);
        log_ctx_set(NULL);
        return;
    }
    read_with(r, c, rc);
}

/* Reads the payment named by the :id parameter, in the request's transaction
 * when it has one, and calls cb(found: 0 yes, 1 no, -1 error). */
static void read_payment(gw_req_t *r, bool with_refunds, payment_cb cb)
{
    const char *id = route_param(&r->params, "id");
    if (!id || !uuid_valid(id)) {
        cb(r, 1, NULL, NULL, 0);
        return;
    }
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        payment_t p;
        payment_refund_t *refunds = NULL;
        size_t n = 0;
        bool own = !db->in_tx; /* else in the request's transaction */
        int found = own && db_begin(db) != 0 ? -1 : payment_get(db, r->tenant, id, &p); /* one view of both */
        if (found == 0 && with_refunds) {
            refunds = xcalloc(PAYMENT_REFUNDS_SHOWN, sizeof *refunds);
            if (payment_refunds(db, r->tenant, id, refunds, &n) != 0)
                found = -1;
        }
        if (own && db->in_tx)
            db_rollback(db);
        cb(r, found, found == 0 ? &p : NULL, refunds, n);
        free(refunds);
        return;
    }
    read_ctx_t *rc = xcalloc(1, sizeof *rc);
    rc->r = r;
    rc->cb = cb;
    rc->with_refunds = with_refunds;
    gw_ref(r);
    if (r->pg) {
        read_with(r, r->pg, rc);
        return;
    }
    rc->own_conn = true;
    if (pga_acquire(r->th->pg, on_read_conn, rc) != 0) {
        free(rc);
        cb(r, -1, NULL, NULL, 0); /* while the request is still referenced, as the other paths */
        gw_unref(r);
    }
}

static bool read_failed_or_reply(gw_req_t *r, int found)
{
    if (found < 0) {
        gw_add_header(r, "Retry-After", "1");
        gw_problem(r, 503, "storage-unavailable", "the payment could not be read");
        return true;
    }
    if (found > 0) {
        gw_problem(r, 404, "payment-not-found", "no payment with this id in this tenant");
        return true;
    }
    return false;
}

/* ---- GET /api/v1/payments/payments/:id ---- */

static void got_payment(gw_req_t *r, int found, const payment_t *p, const payment_refund_t *refunds, size_t n)
{
    if (read_failed_or_reply(r, found))
        return;
    json_object *o = payment_json(p), *list = json_object_new_array();
    for (size_t i = 0; i < n; i++) {
        json_object *f = json_object_new_object();
        char t[40];
        json_object_object_add(f, "id", json_object_new_string(refunds[i].id));
        json_object_object_add(f, "amount", json_object_new_int64(refunds[i].amount));
        json_object_object_add(f, "status", json_object_new_string(refunds[i].succeeded ? "succeeded" : "rejected"));
        json_object_object_add(f, "reason", refunds[i].reason[0] ? json_object_new_string(refunds[i].reason) : NULL);
        iso_time(refunds[i].created_ms, t, sizeof t);
        json_object_object_add(f, "createdAt", json_object_new_string(t));
        json_object_array_add(list, f);
    }
    json_object_object_add(o, "refunds", list);
    gw_respond_json(r, 200, o);
}

void gw_get_payment(gw_req_t *r)
{
    read_payment(r, true, got_payment);
}

/* ---- POST /api/v1/payments/payments/:id/refund ---- */

static void refund_checked(gw_req_t *r, int found, const payment_t *p, const payment_refund_t *refunds, size_t n)
{
    (void)refunds;
    (void)n;
    if (read_failed_or_reply(r, found))
        return;
    const char *detail = NULL;
    int64_t amount = amount_of(r->json, &detail); /* checked before the read */
    if (strcmp(p->status, "succeeded") != 0) {
        char d[128];
        snprintf(d, sizeof d, "only a succeeded payment can be refunded (this one is %s)", p->status);
        gw_problem(r, 409, "payment-not-refundable", d);
        return;
    }
    if (amount > p->captured - p->refunded) {
        char d[160];
        snprintf(d, sizeof d, "refund of %lld exceeds what remains refundable (%lld of %lld captured)",
                 (long long)amount, (long long)(p->captured - p->refunded), (long long)p->captured);
        gw_problem(r, 422, "refund-exceeds-captured", d);
        return;
    }
    char refund_id[UUID_STR_LEN];
    uuid_v7(refund_id);
    json_object *payload = json_object_new_object();
    json_object_object_add(payload, "paymentId", json_object_new_string(p->id));
    json_object_object_add(payload, "refundId", json_object_new_string(refund_id));
    json_object_object_add(payload, "amount", json_object_new_int64(amount));
    if (queue_command(r, p->id, payload) != 0)
        return;
    json_object *body = json_object_new_object();
    json_object_object_add(body, "id", json_object_new_string(refund_id));
    json_object_object_add(body, "paymentId", json_object_new_string(p->id));
    json_object_object_add(body, "amount", json_object_new_int64(amount));
    json_object_object_add(body, "status", json_object_new_string("pending"));
    gw_cmd_commit(r, 202, body);
}

void gw_post_refund(gw_req_t *r)
{
    const char *detail = "the body must be a JSON object {amount}";
    /* the body first: a bad one is 400 whatever the id, or the storage, is */
    if (!json_object_is_type(r->json, json_type_object) || amount_of(r->json, &detail) < 0) {
        gw_problem(r, 400, "validation-error", detail);
        return;
    }
    read_payment(r, false, refund_checked);
}
