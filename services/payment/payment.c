/* services/payment/payment.c: see payment.h. */
#include "services/payment/payment.h"

#include "bus/outbox.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/recent.h"
#include "core/strmap.h"
#include "services/payment/provider.h"

#include <event2/buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ANSWERS_MAX 16384   /* provider answers remembered for replays after a rollback (> SERVICE_BATCH) */

/* ---- small helpers ---- */

static bool status_valid(const char *s)
{
    return strcmp(s, "pending") == 0 || strcmp(s, "succeeded") == 0 || strcmp(s, "failed") == 0;
}

/* ---- ISO 4217 ---- */

/* Active codes by number of minor-unit digits (ISO 4217 list one, 2025). */
static const char cur2[] =
    " AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE"
    " CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD"
    " HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU"
    " MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG"
    " SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES"
    " WST XCD XCG YER ZAR ZMW ZWG ZWL ";
static const char cur0[] = " BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF ";
static const char cur3[] = " BHD IQD JOD KWD LYD OMR TND ";
static const char cur4[] = " CLF UYW ";

int payment_currency_exponent(const char *code)
{
    if (!code || strlen(code) != 3)
        return -1;
    for (int i = 0; i < 3; i++)
        if (code[i] < 'A' || code[i] > 'Z')
            return -1;
    char needle[6] = {' ', code[0], code[1], code[2], ' ', '\0'};
    if (strstr(cur2, needle))
        return 2;
    if (strstr(cur0, needle))
        return 0;
    if (strstr(cur3, needle))
        return 3;
    if (strstr(cur4, needle))
        return 4;
    return -1;
}

/* ---- memory tables ---- */

typedef struct mem_refund {
    char id[UUID_STR_LEN];
    char payment_id[UUID_STR_LEN];
    char *tenant;
    int64_t amount;
    bool succeeded;
    char *reason; /* NULL when succeeded */
    int64_t created_ms;
} mem_refund_t;

typedef struct mem_pay {
    payment_t **rows; /* insertion order */
    size_t n, cap;
    strmap_t by_id; /* id -> payment_t* */
    mem_refund_t **refunds;
    size_t nref, capref;
    strmap_t refund_by_id; /* refund id -> mem_refund_t* */
} mem_pay_t;

static void *mem_make(void)
{
    mem_pay_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->by_id);
    strmap_init(&m->refund_by_id);
    return m;
}

static void refund_free(mem_refund_t *r)
{
    free(r->tenant);
    free(r->reason);
    free(r);
}

static void mem_free(void *p)
{
    mem_pay_t *m = p;
    for (size_t i = 0; i < m->n; i++)
        free(m->rows[i]);
    for (size_t i = 0; i < m->nref; i++)
        refund_free(m->refunds[i]);
    free(m->rows);
    free(m->refunds);
    strmap_free(&m->by_id);
    strmap_free(&m->refund_by_id);
    free(m);
}

static mem_pay_t *mem_tables(db_t *tx)
{
    return db_mem_slot(tx, MEM_SLOT_PAYMENT, mem_make, mem_free);
}

static payment_t *mem_find(mem_pay_t *m, const char *tenant, const char *id)
{
    char low[UUID_STR_LEN];
    uuid_lower(id, low);
    void **v = strmap_get(&m->by_id, low, 36);
    if (!v)
        return NULL;
    payment_t *p = *v;
    return strcmp(p->tenant, tenant) == 0 ? p : NULL;
}

static void undo_insert(void *arg)
{
    mem_pay_t *m = arg;
    payment_t *p = m->rows[--m->n];
    strmap_del(&m->by_id, p->id, 36, NULL);
    free(p);
}

int payment_mem_insert(db_t *tx, const payment_t *p)
{
    ECOM_ASSERT(tx->kind == DB_MEMORY && tx->in_tx);
    if (!uuid_valid(p->id) || p->amount <= 0 || !status_valid(p->status) || p->captured < 0 || p->refunded < 0 ||
        p->refunded > p->captured || !envelope_name_valid(p->tenant) || payment_currency_exponent(p->currency) < 0 ||
        !memchr(p->order_id, '\0', sizeof p->order_id) || !memchr(p->method, '\0', sizeof p->method) ||
        !memchr(p->failure_reason, '\0', sizeof p->failure_reason) ||
        !memchr(p->provider_ref, '\0', sizeof p->provider_ref))
        return -1;
    mem_pay_t *m = mem_tables(tx);
    char low[UUID_STR_LEN];
    uuid_lower(p->id, low);
    bool created;
    void **slot = strmap_put(&m->by_id, low, 36, &created);
    if (!created)
        return -1; /* primary key */
    payment_t *row = xmalloc(sizeof *row);
    *row = *p;
    memcpy(row->id, low, UUID_STR_LEN);
    int64_t now = clock_now_ms();
    if (!row->created_ms)
        row->created_ms = now;
    if (!row->updated_ms)
        row->updated_ms = row->created_ms;
    *slot = row;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->rows = xrealloc(m->rows, m->cap * sizeof *m->rows);
    }
    m->rows[m->n++] = row;
    db_mem_undo(tx, undo_insert, m, NULL);
    return 0;
}

/* A row's previous contents, restored on rollback. */
typedef struct row_undo {
    payment_t *row;
    payment_t old;
} row_undo_t;

static void undo_update(void *arg)
{
    row_undo_t *u = arg;
    *u->row = u->old;
    free(u);
}

/* Call before changing row inside tx. */
static void mem_will_change(db_t *tx, payment_t *row)
{
    row_undo_t *u = xmalloc(sizeof *u);
    u->row = row;
    u->old = *row;
    db_mem_undo(tx, undo_update, u, free);
}

static void undo_refund(void *arg)
{
    mem_pay_t *m = arg;
    mem_refund_t *r = m->refunds[--m->nref];
    strmap_del(&m->refund_by_id, r->id, 36, NULL);
    refund_free(r);
}

static void mem_add_refund(db_t *tx, mem_pay_t *m, const char *id, const payment_t *p, int64_t amount,
                           const char *reason)
{
    mem_refund_t *r = xcalloc(1, sizeof *r);
    uuid_lower(id, r->id);
    memcpy(r->payment_id, p->id, UUID_STR_LEN);
    r->tenant = xstrdup(p->tenant);
    r->amount = amount;
    r->succeeded = reason == NULL;
    r->reason = reason ? xstrdup(reason) : NULL;
    r->created_ms = clock_now_ms();
    *strmap_put(&m->refund_by_id, r->id, 36, NULL) = r;
    if (m->nref == m->capref) {
        m->capref = m->capref ? m->capref * 2 : 256;
        m->refunds = xrealloc(m->refunds, m->capref * sizeof *m->refunds);
    }
    m->refunds[m->nref++] = r;
    db_mem_undo(tx, undo_refund, m, NULL);
}

/* ---- PostgreSQL rows ---- */

#define PAYMENT_COLUMNS                                                                                                \
    "id, tenant, order_id, amount, currency, method, status, captured, refunded, coalesce(failure_reason, ''),"        \
    " coalesce(provider_ref, ''), (extract(epoch FROM created_at) * 1000)::bigint,"                                    \
    " (extract(epoch FROM updated_at) * 1000)::bigint"

static void row_from_pg(const PGresult *r, int i, payment_t *p)
{
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", PQgetvalue(r, i, 0));
    snprintf(p->tenant, sizeof p->tenant, "%s", PQgetvalue(r, i, 1));
    snprintf(p->order_id, sizeof p->order_id, "%s", PQgetvalue(r, i, 2));
    p->amount = strtoll(PQgetvalue(r, i, 3), NULL, 10);
    snprintf(p->currency, sizeof p->currency, "%s", PQgetvalue(r, i, 4));
    snprintf(p->method, sizeof p->method, "%s", PQgetvalue(r, i, 5));
    snprintf(p->status, sizeof p->status, "%s", PQgetvalue(r, i, 6));
    p->captured = strtoll(PQgetvalue(r, i, 7), NULL, 10);
    p->refunded = strtoll(PQgetvalue(r, i, 8), NULL, 10);
    snprintf(p->failure_reason, sizeof p->failure_reason, "%s", PQgetvalue(r, i, 9));
    snprintf(p->provider_ref, sizeof p->provider_ref, "%s", PQgetvalue(r, i, 10));
    p->created_ms = strtoll(PQgetvalue(r, i, 11), NULL, 10);
    p->updated_ms = strtoll(PQgetvalue(r, i, 12), NULL, 10);
}

/* Every statement finds its row by the primary key. The tenant check is
 * written `(tenant = $2) IS TRUE` (the same truth for a NOT NULL column) so
 * that it can only filter: as a plain `tenant = $2` it matches the leading
 * column of payments_tenant_created, and on a table not yet analyzed (a fresh
 * deployment) the planner prefers that index, which walks every payment of the
 * tenant for each lookup (7 ms at 20,000 rows, growing with the table; found
 * by bench/bench_shop.c). */
#define BY_ID "id = $1 AND (tenant = $2) IS TRUE"
static const char sql_lock[] = "SELECT " PAYMENT_COLUMNS " FROM payment.payments WHERE " BY_ID " FOR UPDATE";
static const char sql_read[] = "SELECT " PAYMENT_COLUMNS " FROM payment.payments WHERE " BY_ID;
static const char sql_settle[] = "UPDATE payment.payments SET status = $3::text,"
                                 " captured = CASE WHEN $3::text = 'succeeded' THEN amount ELSE 0 END,"
                                 " failure_reason = $4, provider_ref = $5, updated_at = now()"
                                 " WHERE " BY_ID " AND status = 'pending'";
static const char sql_refund_seen[] = "SELECT 1 FROM payment.refunds WHERE id = $1";
/* The whole decision: never more than captured, even with refunds at once. */
static const char sql_refund_apply[] =
    "UPDATE payment.payments SET refunded = refunded + $3::bigint, updated_at = now()"
    " WHERE " BY_ID " AND status = 'succeeded' AND $3::bigint <= captured - refunded"
    " RETURNING refunded, currency, order_id";
static const char sql_refund_insert[] =
    "INSERT INTO payment.refunds (id, payment_id, tenant, amount, status, reason) VALUES ($1, $2, $3, $4, $5, $6)";

/* Reads one payment inside tx (locked with FOR UPDATE when lock). 0, 1 not found, -1. */
static int tx_read(db_t *tx, const char *tenant, const char *id, bool lock, payment_t *out)
{
    if (tx->kind == DB_MEMORY) {
        const payment_t *p = mem_find(mem_tables(tx), tenant, id);
        if (!p)
            return 1;
        *out = *p;
        return 0;
    }
    int bit = lock ? DB_STMT_PAYMENT_LOCK : DB_STMT_PAYMENT_READ;
    if (db_prepare(tx, bit, lock ? sql_lock : sql_read, 2) != 0)
        return -1;
    const char *p[] = {id, tenant};
    PGresult *r = db_exec_prepared(tx, bit, 2, p);
    if (!r)
        return -1;
    int rc = PQntuples(r) == 1 ? 0 : 1;
    if (rc == 0)
        row_from_pg(r, 0, out);
    PQclear(r);
    return rc;
}

/* pending -> status ("succeeded" with ref, or "failed" with reason). 0 or -1. */
static int tx_settle(db_t *tx, const payment_t *p, const char *status, const char *reason, const char *ref)
{
    if (tx->kind == DB_MEMORY) {
        payment_t *row = mem_find(mem_tables(tx), p->tenant, p->id);
        if (!row || strcmp(row->status, "pending") != 0)
            return -1;
        mem_will_change(tx, row);
        snprintf(row->status, sizeof row->status, "%s", status);
        row->captured = strcmp(status, "succeeded") == 0 ? row->amount : 0;
        snprintf(row->failure_reason, sizeof row->failure_reason, "%s", reason ? reason : "");
        snprintf(row->provider_ref, sizeof row->provider_ref, "%s", ref ? ref : "");
        row->updated_ms = clock_now_ms();
        return 0;
    }
    if (db_prepare(tx, DB_STMT_PAYMENT_SETTLE, sql_settle, 5) != 0)
        return -1;
    const char *prm[] = {p->id, p->tenant, status, reason, ref};
    PGresult *r = db_exec_prepared(tx, DB_STMT_PAYMENT_SETTLE, 5, prm);
    if (!r)
        return -1;
    int rc = strcmp(PQcmdTuples(r), "1") == 0 ? 0 : -1;
    PQclear(r);
    return rc;
}

/* ---- the provider behind its breaker ---- */

static pthread_mutex_t cfg_mu = PTHREAD_MUTEX_INITIALIZER;
static breaker_t *provider_breaker;

static void breaker_defaults(const breaker_params_t *in, breaker_params_t *out)
{
    *out = *in;
    if (!out->window_ms)
        out->window_ms = PAYMENT_BREAKER_WINDOW_MS;
    if (!out->minimum_calls)
        out->minimum_calls = PAYMENT_BREAKER_MIN_CALLS;
    if (!(out->failure_rate_threshold > 0))
        out->failure_rate_threshold = PAYMENT_BREAKER_FAILURE_RATE;
    if (!out->open_duration_ms)
        out->open_duration_ms = PAYMENT_BREAKER_OPEN_MS;
    if (!out->half_open_max_calls)
        out->half_open_max_calls = PAYMENT_BREAKER_HALF_OPEN_CALLS;
}

static breaker_t *get_breaker(void)
{
    pthread_mutex_lock(&cfg_mu);
    if (!provider_breaker) {
        breaker_params_t p;
        breaker_defaults(&(breaker_params_t){0}, &p);
        provider_breaker = breaker_new(&p);
        ECOM_ASSERT(provider_breaker != NULL);
    }
    breaker_t *b = provider_breaker;
    pthread_mutex_unlock(&cfg_mu);
    return b;
}

int payment_configure(const payment_config_t *cfg, char *err, size_t cap)
{
    breaker_params_t p;
    breaker_defaults(&cfg->breaker, &p);
    if (breaker_params_validate(&p, err, cap) != 0)
        return -1;
    breaker_t *b = breaker_new(&p);
    if (!b) {
        snprintf(err, cap, "invalid provider breaker parameters");
        return -1;
    }
    payment_provider_set_latency_ms(cfg->provider_latency_ms);
    payment_provider_set_failure_rate(cfg->provider_failure_rate);
    pthread_mutex_lock(&cfg_mu);
    breaker_t *old = provider_breaker;
    provider_breaker = b;
    pthread_mutex_unlock(&cfg_mu);
    breaker_free(old);
    return 0;
}

void payment_breaker_stats(breaker_stats_t *out)
{
    breaker_stats(get_breaker(), out);
}

/* Provider answers (approved or declined) by payment id, remembered so that a
 * batch the runtime rolls back and applies again does not call the provider a
 * second time; the provider's idempotency key covers a process restart. */
static recent_t answers = RECENT_INIT(ANSWERS_MAX, sizeof(provider_answer_t)); /* payment id -> answer */

static bool answers_recall(const char *id, provider_answer_t *out)
{
    return recent_get(&answers, id, out);
}

static void answers_remember(const char *id, const provider_answer_t *a)
{
    recent_put(&answers, id, a);
}

/* Provider failures in the current attempt (svc_attempt) by payment id: the
 * halves of a batch that failed on one, and its single-message pass, do not
 * call the provider for it again in that attempt (the next attempt does). */
static recent_t failed_calls = RECENT_INIT(ANSWERS_MAX, sizeof(svc_tried_t)); /* payment id -> failure */

static bool failed_recall(const char *id, svc_result_t *r, char *error, size_t cap)
{
    svc_tried_t f;
    if (!svc_tried_recall(&failed_calls, svc_attempt(), id, &f))
        return false;
    *r = f.r;
    snprintf(error, cap, "%s", f.error);
    return true;
}

static void failed_remember(const char *id, svc_result_t r, const char *error)
{
    if (r != SVC_OK)
        svc_tried_remember(&failed_calls, svc_attempt(), id, r, 0, NULL, error);
}

static void count_call(const char *outcome)
{
    char labels[48];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    metrics_add(metrics_counter("ecom_payment_provider_calls_total", "Payment provider calls by outcome", labels), 1);
}

/* Records the answer a to p's charge, which took ms, with the breaker
 * (permit) and remembers it: SVC_OK when approved or declined, else SVC_RETRY,
 * or SVC_DEFER while the breaker suspects an outage (error set). */
static svc_result_t charge_end(breaker_t *b, breaker_permit_t *permit, const payment_t *p, const provider_answer_t *a,
                               int64_t ms, char *error, size_t cap)
{
    bool failed = a->outcome == PROVIDER_UNAVAILABLE;
    breaker_record(b, permit, failed ? BREAKER_FAILURE : BREAKER_SUCCESS, ms);
    count_call(a->outcome == PROVIDER_APPROVED ? "approved" : a->outcome == PROVIDER_DECLINED ? "declined" : "failed");
    if (!failed) {
        answers_remember(p->id, a);
        return SVC_OK;
    }
    /* while the breaker suspects an outage, a failure is the provider's, not this
     * payment's: wait without spending an attempt */
    if (permit->trial || breaker_state(b) != BREAKER_CLOSED) {
        snprintf(error, cap, "provider circuit open: %s", a->reason);
        return SVC_DEFER;
    }
    snprintf(error, cap, "%s", a->reason);
    return SVC_RETRY;
}

/* The breaker's permit for a charge; false (error set) when it refuses. */
static bool charge_begin(breaker_t *b, breaker_permit_t *permit, char *error, size_t cap)
{
    if (breaker_acquire(b, permit))
        return true;
    count_call("rejected");
    snprintf(error, cap, "provider circuit open");
    return false;
}

/* Charges p (once) through the breaker. SVC_OK with *a approved or declined. */
static svc_result_t charge(svc_ctx_t *c, const payment_t *p, provider_answer_t *a)
{
    if (answers_recall(p->id, a))
        return SVC_OK;
    svc_result_t r;
    if (failed_recall(p->id, &r, c->error, sizeof c->error))
        return r;
    breaker_t *b = get_breaker();
    breaker_permit_t permit;
    if (!charge_begin(b, &permit, c->error, sizeof c->error))
        return SVC_DEFER;
    int64_t t0 = clock_mono_ms();
    payment_provider_charge(p->id, p->amount, p->currency, p->method, a);
    r = charge_end(b, &permit, p, a, clock_mono_ms() - t0, c->error, sizeof c->error);
    failed_remember(p->id, r, c->error);
    return r;
}

/* ---- writes a batch holds back ---- */

/* A PostgreSQL batch (handle_batch) writes its settles as one UPDATE, when
 * it ends or before it reads a payment row again (a refund, a payment
 * changed earlier in the batch), and its events, refunds' included, as one
 * outbox statement when it ends: two statements per batch instead of two per
 * payment. */
typedef struct deferred {
    bool on;
    pg_array_t settle[5]; /* id, tenant, status, reason ("" = none), ref */
    uint32_t nsettle;
    outbox_msg_t *ev;
    char **owned; /* each event's payload and aggregate id */
    size_t nev, cap;
} deferred_t;

#define SETTLE_MANY                                                                                                    \
    "UPDATE payment.payments p SET status = u.status,"                                                                 \
    " captured = CASE WHEN u.status = 'succeeded' THEN p.amount ELSE 0 END,"                                           \
    " failure_reason = nullif(u.reason, ''), provider_ref = nullif(u.ref, ''), updated_at = now()"                     \
    " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) AS u(id, tenant, status, reason, ref)"   \
    " WHERE p.id = u.id AND (p.tenant = u.tenant) IS TRUE AND p.status = 'pending'"
static const char sql_settle_many[] = SETTLE_MANY;

static void settles_reset(deferred_t *d)
{
    for (int k = 0; k < 5; k++)
        pg_array_begin(&d->settle[k], k == 0 ? PG_OID_UUID : PG_OID_TEXT, 0);
    d->nsettle = 0;
}

static void defer_reset(deferred_t *d)
{
    settles_reset(d);
    for (size_t i = 0; i < 2 * d->nev; i++)
        free(d->owned[i]);
    d->nev = 0;
}

static void defer_free(deferred_t *d)
{
    defer_reset(d);
    for (int k = 0; k < 5; k++)
        pg_array_free(&d->settle[k]);
    free(d->ev);
    free(d->owned);
}

static void defer_settle(deferred_t *d, const payment_t *p, const char *status, const char *reason, const char *ref)
{
    if (pg_array_uuid(&d->settle[0], p->id) != 0)
        ECOM_ASSERT(!"payment ids are UUIDs (checked when read)");
    pg_array_text(&d->settle[1], p->tenant);
    pg_array_text(&d->settle[2], status);
    pg_array_text(&d->settle[3], reason ? reason : "");
    pg_array_text(&d->settle[4], ref ? ref : "");
    d->nsettle++;
}

/* m's payload and aggregate id are taken (owned here from now on). */
static void defer_event(deferred_t *d, const outbox_msg_t *m, char *payload, char *aggregate)
{
    if (d->nev == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 64;
        d->ev = xrealloc(d->ev, d->cap * sizeof *d->ev);
        d->owned = xrealloc(d->owned, 2 * d->cap * sizeof *d->owned);
    }
    d->ev[d->nev] = *m;
    d->ev[d->nev].payload = payload;
    d->ev[d->nev].aggregate_id = aggregate;
    d->owned[2 * d->nev] = payload;
    d->owned[2 * d->nev + 1] = aggregate;
    d->nev++;
}

/* The settles held back to the commit (db_defer): nobody reads the row
 * count, so the statement checks it (every row is locked by this
 * transaction and was pending: all of them change). */
static const char sql_settle_held[] =
    "WITH s AS (" SETTLE_MANY " RETURNING 1) SELECT 1 / (count(*) = cardinality($1::uuid[]))::int FROM s";

/* Writes the settles held back, and the events too when events is set: on
 * the runtime's index-scan connections they go with the next round trip (the
 * transaction's COMMIT, or the read that needed the settles), else now.
 * Before a command reads a payment row again only the settles must go; the
 * events wait for the batch's end, so they go in one statement, whose
 * appends take their aggregates' sequence rows in one order (a refund's
 * event appended on its own, in the stream's order, deadlocked with a writer
 * appending refund commands in ascending order). 0, or -1 (the batch fails
 * and is applied again). */
static int defer_flush(db_t *tx, deferred_t *d, bool events)
{
    size_t nev = events ? d->nev : 0;
    if (!d->on || (d->nsettle == 0 && nev == 0))
        return 0;
    int rc = 0;
    const char *why = NULL;
    if (d->nsettle) {
        const char *vals[5];
        int lens[5], fmts[5];
        pg_array_params(d->settle, 5, d->nsettle, vals, lens, fmts); /* begun for 0 elements */
        if (tx->index_scans) {
            rc = db_defer(tx, DB_STMT_PAYMENT_SETTLE_HELD, sql_settle_held, 5, vals, lens, fmts, NULL);
        } else {
            /* not the runtime's index-scan connection: planned for this array */
            PGresult *r = db_exec_lookup(tx, DB_STMT_PAYMENT_SETTLE_MANY, sql_settle_many, 5, vals, lens, fmts, NULL);
            /* every row is locked by this transaction and was pending: all of them change */
            if (!r || strtoul(PQcmdTuples(r), NULL, 10) != d->nsettle) {
                if (r)
                    log_warn("payment batch: %s of %u settles applied", PQcmdTuples(r), d->nsettle);
                rc = -1;
            }
            PQclear(r);
        }
    }
    if (rc == 0 && nev &&
        (tx->index_scans ? outbox_hold_many(tx, d->ev, nev, &why) : outbox_append_many(tx, d->ev, nev, &why)) != 0) {
        log_warn("payment batch: outbox append of %zu events failed: %s", nev, why ? why : "?");
        rc = -1;
    }
    if (events)
        defer_reset(d);
    else
        settles_reset(d);
    return rc;
}

/* ---- events ---- */

/* Appends one event about payment p to the outbox in c->tx (or holds it back
 * in d, when d is on); body is the JSON object's members after "paymentId"
 * (starting with a comma, or empty). */
static svc_result_t emit(svc_ctx_t *c, deferred_t *d, const char *type, const char *payment_id,
                         struct evbuffer *members)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"paymentId\":\"%s\"", payment_id);
    evbuffer_add_buffer(b, members);
    /* carry the principal's subject, when the command had one, for notifications */
    const char *subject = json_get_str(c->payload, "subject");
    if (subject && *subject) {
        evbuffer_add(b, ",\"subject\":", 11);
        json_buf_str(b, subject);
    }
    evbuffer_add(b, "}", 2); /* with the terminating NUL */
    char agg[ENV_NAME_MAX + 1];
    snprintf(agg, sizeof agg, "payment:%s", payment_id);
    const envelope_t *e = c->msg;
    outbox_msg_t m = {.topic = "payment",
                      .type = type,
                      .tenant = e->tenant,
                      .aggregate_id = agg,
                      .traceparent = e->traceparent,
                      .request_id = e->request_id,
                      .payload = (const char *)evbuffer_pullup(b, -1)};
    /* The event's id is made of the command's and the event's type: the
     * service commits asynchronously (runtime.h), so a server crash can
     * lose this transaction after the drainer published the event; the
     * command, not acknowledged yet, is applied again, and the event made
     * again has the same id, which its consumers' inboxes know. */
    char name[ENV_NAME_MAX + UUID_STR_LEN + 16];
    snprintf(name, sizeof name, "payment\n%s\n%s", e->id, type);
    int64_t at = e->ts > 0 ? e->ts : uuid_v7_ms(e->id); /* the command's time, the same every time */
    uuid_v7_derived(m.id, at > 0 ? at : 0, name);
    if (d && d->on) {
        defer_event(d, &m, xstrdup(m.payload), xstrdup(agg));
        evbuffer_free(b);
        return SVC_OK;
    }
    const char *why = NULL;
    int rc = outbox_append(c->tx, &m, NULL, &why);
    evbuffer_free(b);
    if (rc != 0) {
        snprintf(c->error, sizeof c->error, "outbox append of %s failed: %s", type, why ? why : "?");
        return SVC_RETRY;
    }
    return SVC_OK;
}

/* ---- handlers ---- */

/* Provider calls made ahead for a batch (handle_batch): transient failures
 * by payment id, so the batch's pass over its messages does not call the
 * provider a second time for them (answers are in the answers memory). */
typedef struct prefetch {
    payment_t *rows; /* pending payments to charge */
    svc_result_t *result;
    char (*error)[256];
    size_t n;
    /* every payment the batch's commands name, read and locked at its start
     * (PostgreSQL: one statement): id -> payment_t*, until a command of the
     * batch changes it (then NULL: read it again) */
    strmap_t read;
    payment_t *read_rows;
    deferred_t w; /* PostgreSQL: the batch's settles and events, held back */
    bool provider_failed; /* handle_one's failure was the provider's answer (or its breaker's) */
} prefetch_t;

/* The batch's locked copy of payment id of tenant, or NULL (not read, or
 * changed since by an earlier command of the batch). */
static const payment_t *pf_row(const prefetch_t *pf, const char *tenant, const char *id)
{
    if (!pf || !pf->read_rows)
        return NULL;
    void **v = strmap_get((strmap_t *)&pf->read, id, strlen(id));
    const payment_t *p = v ? *v : NULL;
    return p && strcmp(p->tenant, tenant) == 0 ? p : NULL;
}

/* A command of the batch is about to change payment id: later ones read it. */
static void pf_touch(prefetch_t *pf, const char *id)
{
    if (!pf || !pf->read_rows)
        return;
    void **v = strmap_get(&pf->read, id, strlen(id));
    if (v)
        *v = NULL;
}

static svc_result_t on_requested(svc_ctx_t *c, prefetch_t *pf)
{
    const char *tenant = c->msg->tenant;
    const char *pid = json_get_str(c->payload, "paymentId");
    if (!pid || !uuid_valid(pid)) {
        snprintf(c->error, sizeof c->error, "payment.requested: paymentId missing or not a UUID");
        return SVC_REJECT;
    }
    char id[UUID_STR_LEN];
    uuid_lower(pid, id);
    payment_t p;
    const payment_t *known = pf_row(pf, tenant, id); /* locked by this transaction already */
    if (!known && pf && defer_flush(c->tx, &pf->w, false) != 0) {
        snprintf(c->error, sizeof c->error, "writing the batch's payments failed (sqlstate %s)", pg_last_sqlstate());
        return SVC_RETRY;
    }
    int rc = known ? (p = *known, 0) : tx_read(c->tx, tenant, id, true, &p);
    pf_touch(pf, id);
    if (rc < 0) {
        snprintf(c->error, sizeof c->error, "reading payment %s failed (sqlstate %s)", id, pg_last_sqlstate());
        return SVC_RETRY;
    }
    if (rc == 1) {
        snprintf(c->error, sizeof c->error, "unknown payment %s for tenant %s", id, tenant);
        return SVC_REJECT;
    }
    if (strcmp(p.status, "pending") != 0) {
        log_debug("payment %s is already %s; command ignored", id, p.status);
        return SVC_OK;
    }
    for (size_t i = 0; pf && i < pf->n; i++)
        if (pf->result[i] != SVC_OK && strcmp(pf->rows[i].id, id) == 0) {
            snprintf(c->error, sizeof c->error, "%s", pf->error[i]);
            pf->provider_failed = true;
            return pf->result[i];
        }
    provider_answer_t a;
    svc_result_t r = charge(c, &p, &a);
    if (r != SVC_OK) {
        if (pf)
            pf->provider_failed = true;
        return r;
    }
    bool ok = a.outcome == PROVIDER_APPROVED;
    if (pf && pf->w.on)
        defer_settle(&pf->w, &p, ok ? "succeeded" : "failed", ok ? NULL : a.reason, ok ? a.ref : NULL);
    else if (tx_settle(c->tx, &p, ok ? "succeeded" : "failed", ok ? NULL : a.reason, ok ? a.ref : NULL) != 0) {
        snprintf(c->error, sizeof c->error, "recording payment %s failed (sqlstate %s)", id, pg_last_sqlstate());
        return SVC_RETRY;
    }
    struct evbuffer *members = evbuffer_new();
    evbuffer_add(members, ",\"orderId\":", 11);
    json_buf_str(members, p.order_id);
    evbuffer_add_printf(members, ",\"amount\":%lld,\"currency\":", (long long)p.amount);
    json_buf_str(members, p.currency);
    if (!ok) {
        evbuffer_add(members, ",\"reason\":", 10);
        json_buf_str(members, a.reason);
        log_info("payment %s failed: %s", id, a.reason);
    } else {
        log_debug("payment %s succeeded (provider ref %s)", id, a.ref);
    }
    r = emit(c, pf ? &pf->w : NULL, ok ? "payment.succeeded" : "payment.failed", id, members);
    evbuffer_free(members);
    return r;
}

/* Why a refund that the conditional update refused was refused. */
static void refusal(const payment_t *p, int64_t amount, char *out, size_t cap)
{
    if (strcmp(p->status, "succeeded") != 0)
        snprintf(out, cap, "payment is %s", p->status);
    else
        snprintf(out, cap, "refund of %lld exceeds the refundable balance %lld", (long long)amount,
                 (long long)(p->captured - p->refunded));
}

static svc_result_t on_refund(svc_ctx_t *c, deferred_t *d)
{
    const char *tenant = c->msg->tenant;
    const char *pid = json_get_str(c->payload, "paymentId");
    const char *rid = json_get_str(c->payload, "refundId");
    int64_t amount = 0;
    if (!pid || !uuid_valid(pid) || !rid || !uuid_valid(rid) || !json_get_int64(c->payload, "amount", &amount) ||
        amount <= 0) {
        snprintf(c->error, sizeof c->error,
                 "payment.refund.requested: paymentId and refundId must be UUIDs and amount a positive integer");
        return SVC_REJECT;
    }
    char id[UUID_STR_LEN], refund_id[UUID_STR_LEN];
    uuid_lower(pid, id);
    uuid_lower(rid, refund_id);
    char amt[24];
    snprintf(amt, sizeof amt, "%lld", (long long)amount);
    bool applied = false;
    int64_t refunded = 0;
    payment_t p;
    char reason[PAYMENT_REASON_MAX + 1] = "";

    if (c->tx->kind == DB_MEMORY) {
        mem_pay_t *m = mem_tables(c->tx);
        if (strmap_get(&m->refund_by_id, refund_id, 36)) {
            log_debug("refund %s already decided; command ignored", refund_id);
            return SVC_OK;
        }
        payment_t *row = mem_find(m, tenant, id);
        if (!row) {
            snprintf(c->error, sizeof c->error, "unknown payment %s for tenant %s", id, tenant);
            return SVC_REJECT;
        }
        p = *row;
        if (strcmp(row->status, "succeeded") == 0 && amount <= row->captured - row->refunded) {
            mem_will_change(c->tx, row);
            row->refunded += amount;
            row->updated_ms = clock_now_ms();
            refunded = row->refunded;
            applied = true;
        } else {
            refusal(row, amount, reason, sizeof reason);
        }
        mem_add_refund(c->tx, m, refund_id, row, amount, applied ? NULL : reason);
    } else {
        db_t *tx = c->tx;
        if (db_prepare(tx, DB_STMT_PAYMENT_REFUND_SEEN, sql_refund_seen, 1) != 0 ||
            db_prepare(tx, DB_STMT_PAYMENT_REFUND_APPLY, sql_refund_apply, 3) != 0 ||
            db_prepare(tx, DB_STMT_PAYMENT_REFUND_INSERT, sql_refund_insert, 6) != 0)
            goto storage;
        const char *ps[] = {refund_id};
        PGresult *r = db_exec_prepared(tx, DB_STMT_PAYMENT_REFUND_SEEN, 1, ps);
        if (!r)
            goto storage;
        bool seen = PQntuples(r) > 0;
        PQclear(r);
        if (seen) {
            log_debug("refund %s already decided; command ignored", refund_id);
            return SVC_OK;
        }
        const char *pa[] = {id, tenant, amt};
        r = db_exec_prepared(tx, DB_STMT_PAYMENT_REFUND_APPLY, 3, pa);
        if (!r)
            goto storage;
        if (PQntuples(r) == 1) {
            applied = true;
            refunded = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            memset(&p, 0, sizeof p);
            memcpy(p.id, id, UUID_STR_LEN);
            snprintf(p.currency, sizeof p.currency, "%s", PQgetvalue(r, 0, 1));
            snprintf(p.order_id, sizeof p.order_id, "%s", PQgetvalue(r, 0, 2));
        }
        PQclear(r);
        if (!applied) {
            int rc = tx_read(tx, tenant, id, false, &p);
            if (rc < 0)
                goto storage;
            if (rc == 1) {
                snprintf(c->error, sizeof c->error, "unknown payment %s for tenant %s", id, tenant);
                return SVC_REJECT;
            }
            refusal(&p, amount, reason, sizeof reason);
        }
        const char *pi[] = {refund_id, id, tenant, amt, applied ? "succeeded" : "rejected", applied ? NULL : reason};
        r = db_exec_prepared(tx, DB_STMT_PAYMENT_REFUND_INSERT, 6, pi);
        if (!r)
            goto storage;
        PQclear(r);
    }

    struct evbuffer *members = evbuffer_new();
    evbuffer_add_printf(members, ",\"refundId\":\"%s\",\"amount\":%lld", refund_id, (long long)amount);
    if (applied) {
        evbuffer_add_printf(members, ",\"refunded\":%lld,\"currency\":", (long long)refunded);
        json_buf_str(members, p.currency);
        evbuffer_add(members, ",\"orderId\":", 11);
        json_buf_str(members, p.order_id);
    } else {
        evbuffer_add(members, ",\"reason\":", 10);
        json_buf_str(members, reason);
        log_info("refund %s of payment %s rejected: %s", refund_id, id, reason);
    }
    svc_result_t res = emit(c, d, applied ? "payment.refunded" : "payment.refund.rejected", id, members);
    evbuffer_free(members);
    return res;
storage:
    snprintf(c->error, sizeof c->error, "refund %s: storage error (sqlstate %s)", refund_id, pg_last_sqlstate());
    return SVC_RETRY;
}

static svc_result_t handle_one(svc_ctx_t *c, prefetch_t *pf)
{
    const char *type = c->msg->type;
    if (strcmp(type, "payment.requested") == 0)
        return on_requested(c, pf);
    if (strcmp(type, "payment.refund.requested") == 0) {
        /* the refund reads the row after the settles held back; its event
         * is held back behind the batch's earlier ones */
        if (pf && defer_flush(c->tx, &pf->w, false) != 0) {
            snprintf(c->error, sizeof c->error, "writing the batch's payments failed (sqlstate %s)",
                     pg_last_sqlstate());
            return SVC_RETRY;
        }
        const char *pid = json_get_str(c->payload, "paymentId");
        if (pid && uuid_valid(pid)) {
            char id[UUID_STR_LEN];
            uuid_lower(pid, id);
            pf_touch(pf, id);
        }
        return on_refund(c, pf ? &pf->w : NULL);
    }
    return SVC_OK; /* our own events share the stream: nothing to do */
}

static svc_result_t handle(svc_ctx_t *c, void *arg)
{
    (void)arg;
    return handle_one(c, NULL);
}

/* Charges the batch's pending payments at once, each as charge() does: the
 * calls are in flight side by side, so the provider's latency is paid once
 * per batch, not once per payment. */
static void charge_many(prefetch_t *pf)
{
    breaker_t *b = get_breaker();
    breaker_permit_t *permit = xcalloc(pf->n, sizeof *permit);
    provider_call_t *calls = xcalloc(pf->n, sizeof *calls);
    provider_answer_t *answers_of = xcalloc(pf->n, sizeof *answers_of);
    size_t *at = xcalloc(pf->n, sizeof *at), k = 0;
    for (size_t i = 0; i < pf->n; i++) {
        const payment_t *p = &pf->rows[i];
        provider_answer_t a;
        if (answers_recall(p->id, &a)) {
            pf->result[i] = SVC_OK;
        } else if (failed_recall(p->id, &pf->result[i], pf->error[i], sizeof pf->error[i])) {
            /* failed in this attempt: not called again */
        } else if (!charge_begin(b, &permit[k], pf->error[i], sizeof pf->error[i])) {
            pf->result[i] = SVC_DEFER;
        } else {
            calls[k] = (provider_call_t){.idem_key = p->id, .amount = p->amount, .currency = p->currency, .method = p->method};
            at[k++] = i;
        }
    }
    int64_t t0 = clock_mono_ms();
    payment_provider_charge_many(calls, k, answers_of);
    int64_t ms = clock_mono_ms() - t0;
    for (size_t j = 0; j < k; j++) {
        size_t i = at[j];
        pf->result[i] = charge_end(b, &permit[j], &pf->rows[i], &answers_of[j], ms, pf->error[i], sizeof pf->error[i]);
        failed_remember(pf->rows[i].id, pf->result[i], pf->error[i]);
    }
    free(permit);
    free(calls);
    free(answers_of);
    free(at);
}

static const char sql_lock_many[] = "SELECT " PAYMENT_COLUMNS " FROM payment.payments WHERE id = ANY ($1::uuid[])"
                                    " ORDER BY id FOR UPDATE";

/* Reads and locks every payment the batch's commands name, in one statement
 * (a round trip per payment was most of the service's time). 0 or -1. */
static int read_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n, prefetch_t *pf)
{
    pg_array_t ids = {0};
    pg_array_begin(&ids, PG_OID_UUID, 0);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(msgs[i]->type, "payment.requested") != 0 && strcmp(msgs[i]->type, "payment.refund.requested") != 0)
            continue;
        const char *pid = json_get_str(payloads[i], "paymentId");
        if (pid && uuid_valid(pid) && pg_array_uuid(&ids, pid) == 0)
            k++;
    }
    const char *val[1];
    int len[1], fmt[1];
    pg_array_params(&ids, 1, k, val, len, fmt);
    /* prepared on the runtime's index-scan connections, else planned for this array */
    PGresult *r = db_exec_lookup(tx, DB_STMT_PAYMENT_LOCK_MANY, sql_lock_many, 1, val, len, fmt, NULL);
    pg_array_free(&ids);
    if (!r)
        return -1;
    int nt = PQntuples(r);
    pf->read_rows = xcalloc(nt ? (size_t)nt : 1, sizeof *pf->read_rows);
    for (int i = 0; i < nt; i++) {
        row_from_pg(r, i, &pf->read_rows[i]);
        payment_t *row = &pf->read_rows[i];
        *strmap_put(&pf->read, row->id, strlen(row->id), NULL) = row;
    }
    PQclear(r);
    return 0;
}

/* Charges the batch's pending payments side by side (the provider's latency
 * is paid once per batch, not once per payment), then applies every message
 * in order exactly as handle() does. */
static svc_result_t handle_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg)
{
    (void)arg;
    prefetch_t pf = {.rows = xcalloc(n, sizeof *pf.rows)};
    strmap_init(&pf.read);
    defer_reset(&pf.w);
    pf.w.on = tx->kind == DB_PG;
    svc_result_t r = SVC_OK;
    if (tx->kind == DB_PG && read_batch(tx, msgs, payloads, n, &pf) != 0) {
        r = SVC_RETRY;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(msgs[i]->type, "payment.requested") != 0)
            continue;
        const char *pid = json_get_str(payloads[i], "paymentId");
        if (!pid || !uuid_valid(pid))
            continue; /* handle_one rejects it */
        char id[UUID_STR_LEN];
        uuid_lower(pid, id);
        payment_t *p = &pf.rows[pf.n];
        const payment_t *row = pf_row(&pf, msgs[i]->tenant, id);
        int rc = row ? (*p = *row, 0) : pf.read_rows ? 1 : tx_read(tx, msgs[i]->tenant, id, true, p);
        if (rc < 0) {
            r = SVC_RETRY;
            goto out;
        }
        provider_answer_t known;
        bool dup = false;
        for (size_t k = 0; k < pf.n && !dup; k++)
            dup = strcmp(pf.rows[k].id, p->id) == 0;
        if (rc == 0 && strcmp(p->status, "pending") == 0 && !dup && !answers_recall(p->id, &known))
            pf.n++;
    }
    pf.result = xcalloc(pf.n ? pf.n : 1, sizeof *pf.result);
    pf.error = xcalloc(pf.n ? pf.n : 1, sizeof *pf.error);
    if (pf.n > 1)
        charge_many(&pf);
    for (size_t i = 0; i < n && r == SVC_OK; i++) {
        const envelope_t *e = msgs[i];
        /* the runtime sets the log context per message only for handle() */
        log_ctx_t lc;
        char trace[33];
        svc_log_ctx(&lc, trace, e);
        const log_ctx_t *prev = log_ctx_set(&lc);
        svc_ctx_t c = {.tx = tx, .msg = e, .payload = payloads[i], .group = "payment"};
        pf.provider_failed = false;
        r = handle_one(&c, &pf);
        if (r != SVC_OK && pf.provider_failed)
            svc_batch_failed_with(i, r, c.error); /* the provider's answer: not asked again in this attempt */
        else if (r != SVC_OK)
            svc_batch_failed_at(i); /* the others go as a batch, this one alone */
        log_ctx_set(prev);
    }
    if (r == SVC_OK && defer_flush(tx, &pf.w, true) != 0)
        r = SVC_RETRY;
out:
    defer_free(&pf.w);
    free(pf.rows);
    free(pf.result);
    free(pf.error);
    strmap_free(&pf.read);
    free(pf.read_rows);
    return r;
}

const svc_def_t *payment_service(void)
{
    static const char *const topics[] = {"payment", NULL};
    static const char *const types[] = {"payment.requested", "payment.refund.requested", NULL};
    /* the events this service itself appends to the same stream: acknowledged
     * as they come (no transaction, no inbox row), never dead-lettered */
    static const char *const own_events[] = {"payment.succeeded", "payment.failed", "payment.refunded",
                                             "payment.refund.rejected", NULL};
    /* concurrent: a payment's commands share its aggregate (one lane), and the
     * provider, its breaker and the answers memory are thread-safe */
    static const svc_def_t def = {.group = "payment",
                                  .topics = topics,
                                  .types = types,
                                  .ignored_types = own_events,
                                  .handle = handle,
                                  .handle_batch = handle_batch,
                                  .concurrent = true,
                                  .lock_aggregates = true,
                                  .statement_first = true}; /* read_batch, then the provider */
    return &def;
}

/* ---- queries ---- */

int payment_get(db_t *db, const char *tenant, const char *id, payment_t *out)
{
    if (!uuid_valid(id))
        return 1;
    char low[UUID_STR_LEN];
    uuid_lower(id, low);
    if (db->kind == DB_MEMORY) {
        bool own = !db->in_tx; /* inside the caller's transaction when it has one */
        if (own && db_begin(db) != 0)
            return -1;
        const payment_t *p = mem_find(mem_tables(db), tenant, low);
        if (p)
            *out = *p;
        if (own && db_commit(db) != 0)
            return -1;
        return p ? 0 : 1;
    }
    const char *p[] = {low, tenant};
    PGresult *r = pg_query(db_pg(db), sql_read, 2, p);
    if (!r)
        return -1;
    int rc = PQntuples(r) == 1 ? 0 : 1;
    if (rc == 0)
        row_from_pg(r, 0, out);
    PQclear(r);
    return rc;
}

static const char sql_refunds[] =
    "SELECT id, amount, status = 'succeeded', coalesce(reason, ''), (extract(epoch FROM created_at) * 1000)::bigint"
    " FROM payment.refunds WHERE payment_id = $1 AND (tenant = $2) IS TRUE ORDER BY id LIMIT 100";
_Static_assert(PAYMENT_REFUNDS_SHOWN == 100, "sql_refunds' LIMIT");

void payment_refund_from_row(PGresult *r, int row, int col, payment_refund_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->id, sizeof out->id, "%s", PQgetvalue(r, row, col));
    out->amount = strtoll(PQgetvalue(r, row, col + 1), NULL, 10);
    out->succeeded = strcmp(PQgetvalue(r, row, col + 2), "t") == 0;
    snprintf(out->reason, sizeof out->reason, "%s", PQgetvalue(r, row, col + 3));
    out->created_ms = strtoll(PQgetvalue(r, row, col + 4), NULL, 10);
}

static int cmp_refund_id(const void *a, const void *b)
{
    return strcmp((*(const mem_refund_t *const *)a)->id, (*(const mem_refund_t *const *)b)->id);
}

/* The memory store's refunds of payment low (a lower-case id) in tenant:
 * an owned array of borrowed rows, by id. */
static const mem_refund_t **mem_refunds_of(mem_pay_t *m, const char *tenant, const char *low, size_t *n)
{
    size_t cap = 16;
    const mem_refund_t **mine = xmalloc(cap * sizeof *mine);
    *n = 0;
    for (size_t i = 0; i < m->nref; i++) {
        const mem_refund_t *r = m->refunds[i];
        if (strcmp(r->payment_id, low) != 0 || strcmp(r->tenant, tenant) != 0)
            continue;
        if (*n == cap)
            mine = xrealloc(mine, (cap *= 2) * sizeof *mine);
        mine[(*n)++] = r;
    }
    qsort(mine, *n, sizeof *mine, cmp_refund_id); /* as the SQL: ORDER BY id */
    return mine;
}

/* One payment's refunds for a reader: the rows of its sql ($1 the payment,
 * $2 the tenant) each to rd->row, or the memory store's refunds, by id, each
 * to rd->mem; in the caller's open transaction when it has one. 0 or -1. */
typedef struct refunds_read {
    void (*row)(void *arg, PGresult *r, int row);
    void (*mem)(void *arg, const mem_refund_t *f);
    void *arg;
} refunds_read_t;

static int refunds_read(db_t *db, const char *tenant, const char *payment_id, const char *sql, refunds_read_t *rd)
{
    if (!uuid_valid(payment_id))
        return 0;
    char low[UUID_STR_LEN];
    uuid_lower(payment_id, low);
    if (db->kind == DB_MEMORY) {
        bool own = !db->in_tx;
        if (own && db_begin(db) != 0)
            return -1;
        size_t n = 0;
        const mem_refund_t **mine = mem_refunds_of(mem_tables(db), tenant, low, &n);
        for (size_t i = 0; i < n; i++)
            rd->mem(rd->arg, mine[i]);
        free(mine);
        return own ? db_commit(db) : 0;
    }
    const char *p[] = {low, tenant};
    PGresult *r = pg_query(db_pg(db), sql, 2, p);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++)
        rd->row(rd->arg, r, i);
    PQclear(r);
    return 0;
}

typedef struct refund_list {
    payment_refund_t *out;
    size_t *n;
} refund_list_t;

static void list_row(void *arg, PGresult *r, int row)
{
    refund_list_t *l = arg;
    payment_refund_from_row(r, row, 0, &l->out[(*l->n)++]);
}

static void list_mem(void *arg, const mem_refund_t *f)
{
    refund_list_t *l = arg;
    if (*l->n == PAYMENT_REFUNDS_SHOWN)
        return;
    payment_refund_t *o = &l->out[(*l->n)++];
    memset(o, 0, sizeof *o);
    memcpy(o->id, f->id, UUID_STR_LEN);
    o->amount = f->amount;
    o->succeeded = f->succeeded;
    snprintf(o->reason, sizeof o->reason, "%s", f->reason ? f->reason : "");
    o->created_ms = f->created_ms;
}

int payment_refunds(db_t *db, const char *tenant, const char *payment_id, payment_refund_t *out, size_t *n)
{
    *n = 0;
    refund_list_t l = {out, n};
    return refunds_read(db, tenant, payment_id, sql_refunds, &(refunds_read_t){list_row, list_mem, &l});
}

static const char sql_refund_totals[] = "SELECT count(*) FILTER (WHERE status = 'succeeded'),"
                                        " coalesce(sum(amount) FILTER (WHERE status = 'succeeded'), 0),"
                                        " count(*) FILTER (WHERE status = 'rejected')"
                                        " FROM payment.refunds WHERE payment_id = $1 AND tenant = $2";

static void totals_row(void *arg, PGresult *r, int row)
{
    payment_refund_totals_t *t = arg;
    t->succeeded = strtoull(PQgetvalue(r, row, 0), NULL, 10);
    t->succeeded_sum = strtoll(PQgetvalue(r, row, 1), NULL, 10);
    t->rejected = strtoull(PQgetvalue(r, row, 2), NULL, 10);
}

static void totals_mem(void *arg, const mem_refund_t *f)
{
    payment_refund_totals_t *t = arg;
    if (f->succeeded) {
        t->succeeded++;
        t->succeeded_sum += f->amount;
    } else {
        t->rejected++;
    }
}

int payment_refund_totals(db_t *db, const char *tenant, const char *payment_id, payment_refund_totals_t *out)
{
    memset(out, 0, sizeof *out);
    return refunds_read(db, tenant, payment_id, sql_refund_totals, &(refunds_read_t){totals_row, totals_mem, out});
}
