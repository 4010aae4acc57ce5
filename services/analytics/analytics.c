/* services/analytics/analytics.c: see analytics.h. */
#include "services/analytics/analytics.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/strmap.h"
#include "core/uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- memory read model: events in arrival order ---- */

typedef struct mem_events {
    analytics_event_t *ev;
    size_t n, cap;
    strmap_t ids; /* the ids of ev: the service's record of what it applied */
} mem_events_t;

static void *mem_make(void)
{
    mem_events_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->ids);
    return m;
}

static void mem_free(void *p)
{
    mem_events_t *m = p;
    analytics_events_free(m->ev, m->n);
    strmap_free(&m->ids);
    free(m);
}

static mem_events_t *mem(db_t *db)
{
    return db_mem_slot(db, MEM_SLOT_ANALYTICS, mem_make, mem_free);
}

static void undo_add(void *arg)
{
    mem_events_t *m = arg;
    analytics_event_t *e = &m->ev[--m->n];
    strmap_del(&m->ids, e->id, strlen(e->id), NULL);
    free(e->tenant);
    free(e->type);
    free(e->topic);
    free(e->aggregate_id);
    free(e->payload);
}

/* false when the id is recorded already (nothing added) */
static bool mem_add(db_t *tx, const envelope_t *env, const char *type)
{
    mem_events_t *m = mem(tx);
    bool created = false;
    strmap_put(&m->ids, env->id, strlen(env->id), &created);
    if (!created)
        return false;
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->ev = xrealloc(m->ev, m->cap * sizeof *m->ev);
    }
    analytics_event_t *e = &m->ev[m->n++];
    memcpy(e->id, env->id, UUID_STR_LEN);
    e->tenant = xstrdup(env->tenant);
    e->type = xstrdup(type);
    e->topic = xstrdup(env->topic);
    e->aggregate_id = xstrdup(env->aggregate_id);
    e->seq = env->seq;
    e->occurred_ms = env->ts;
    e->payload = xstrdup(env->payload);
    db_mem_undo(tx, undo_add, m, NULL);
    return true;
}

/* ---- handlers ---- */

/* What the read model calls the event: the envelope type, except for tracked
 * events (POST /events), which carry their own type in the payload. The
 * runtime builds no documents for this service (payload_unread): a tracked
 * event's payload is parsed here, the others' never. The type is copied into
 * buf (ENV_NAME_MAX + 1 bytes) when it comes from the payload. */
static const char *event_type(const envelope_t *e, json_object *payload, char *buf)
{
    if (strcmp(e->type, "analytics.track") != 0)
        return e->type;
    json_object *own = NULL;
    const char *why = NULL;
    if (!payload && json_parse_strict(e->payload, strlen(e->payload), &own, &why) == 0)
        payload = own;
    const char *t = json_get_str(payload, "type"), *type = e->type;
    if (t && envelope_name_valid(t))
        type = memcpy(buf, t, strlen(t) + 1);
    json_object_put(own);
    return type;
}

/* Each statement inserts the events and, for the rows it did insert (a copy
 * already recorded is skipped), bumps analytics.counts_by_minute: counters and
 * events commit together. The counter rows are taken in key order. */
#define COUNT_INSERTED                                                                                                 \
    " RETURNING tenant, type, occurred_at)"                                                                            \
    " INSERT INTO analytics.counts_by_minute AS c (tenant, type, minute, shard, count)"                                \
    " SELECT tenant, type, date_trunc('minute', occurred_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', $9::smallint,"     \
    " count(*) FROM e GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"                                                               \
    " ON CONFLICT (tenant, minute, type, shard) DO UPDATE SET count = c.count + excluded.count"

static const char sql_one[] =
    "WITH e AS (INSERT INTO analytics.events (id, tenant, type, topic, aggregate_id, seq, payload, occurred_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7::json, to_timestamp($8::bigint / 1000.0))"
    " ON CONFLICT (tenant, id) DO NOTHING" COUNT_INSERTED;
/* The batch as eight arrays in PostgreSQL's binary array format: no escaping,
 * no JSON document to build and parse (the payloads are checked once, by the
 * ::json cast, and stored as they came), the times as timestamptz values (no
 * arithmetic per row). A plain INSERT: the table's unique (tenant, id) is the
 * service's record of what it applied, and a copy (a redelivery, rare) makes
 * it fail with 23505; the runtime then asks seen() which ones and runs the
 * batch again without them. ON CONFLICT would cost every row about twice.
 * Since the INSERT writes every row or fails, the counters' increments are
 * counted here ($10-$13, one element per tenant, type and minute) instead of
 * from a RETURNING of every row; the counter rows are taken in the same order
 * as sql_one's. */
static const char sql_batch[] =
    "WITH e AS (INSERT INTO analytics.events (id, tenant, type, topic, aggregate_id, seq, payload, occurred_at)"
    " SELECT id, tenant, type, topic, aggregate_id, seq, payload::json, ts"
    " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[],"
    " $8::timestamptz[]) AS x(id, tenant, type, topic, aggregate_id, seq, payload, ts))"
    " INSERT INTO analytics.counts_by_minute AS c (tenant, type, minute, shard, count)"
    " SELECT tenant, type, minute, $9::smallint, n"
    " FROM unnest($10::text[], $11::text[], $12::timestamptz[], $13::bigint[]) AS k(tenant, type, minute, n)"
    " ORDER BY 1, 2, 3"
    " ON CONFLICT (tenant, minute, type, shard) DO UPDATE SET count = c.count + excluded.count";

/* One counter increment of a batch: its events of a tenant and type in one minute. */
typedef struct minute_count {
    const char *tenant, *type;
    int64_t minute_ms;
    int64_t n;
} minute_count_t;

static int64_t minute_of(int64_t ms)
{
    int64_t r = ms % 60000;
    return ms - (r < 0 ? r + 60000 : r);
}

static int minute_count_cmp(const void *pa, const void *pb)
{
    const minute_count_t *a = pa, *b = pb;
    int c = strcmp(a->tenant, b->tenant);
    if (c == 0)
        c = strcmp(a->type, b->type);
    if (c == 0)
        c = (a->minute_ms > b->minute_ms) - (a->minute_ms < b->minute_ms);
    return c;
}

/* The batch's increments in k (n entries; the strings are the batch's) as
 * four arrays; the number of increments. */
static size_t count_minutes(const envelope_t *const *msgs, const char *const *types, size_t n, minute_count_t *k,
                            pg_array_t *out)
{
    for (size_t i = 0; i < n; i++)
        k[i] = (minute_count_t){msgs[i]->tenant, types[i], minute_of(msgs[i]->ts), 1};
    qsort(k, n, sizeof *k, minute_count_cmp);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && minute_count_cmp(&k[m - 1], &k[i]) == 0)
            k[m - 1].n++;
        else
            k[m++] = k[i];
    }
    pg_array_begin(&out[0], PG_OID_TEXT, m);
    pg_array_begin(&out[1], PG_OID_TEXT, m);
    pg_array_begin(&out[2], PG_OID_TIMESTAMPTZ, m);
    pg_array_begin(&out[3], PG_OID_INT8, m);
    for (size_t i = 0; i < m; i++) {
        pg_array_text(&out[0], k[i].tenant);
        pg_array_text(&out[1], k[i].type);
        pg_array_timestamptz_ms(&out[2], k[i].minute_ms);
        pg_array_int8(&out[3], k[i].n);
    }
    return m;
}

static svc_result_t handle(svc_ctx_t *c, void *arg)
{
    (void)arg;
    const envelope_t *e = c->msg;
    char tbuf[ENV_NAME_MAX + 1];
    const char *type = event_type(e, c->payload, tbuf);
    if (c->tx->kind == DB_MEMORY) {
        (void)mem_add(c->tx, e, type); /* a copy recorded already is skipped, as ON CONFLICT DO NOTHING */
        return SVC_OK;
    }
    if (db_prepare(c->tx, DB_STMT_ANALYTICS_ONE, sql_one, 9) != 0) {
        snprintf(c->error, sizeof c->error, "prepare failed");
        return SVC_RETRY;
    }
    char seq[24], ts[24], shard[12];
    snprintf(seq, sizeof seq, "%lld", (long long)e->seq);
    snprintf(ts, sizeof ts, "%lld", (long long)e->ts);
    snprintf(shard, sizeof shard, "%d", c->tx->lane);
    const char *p[] = {e->id, e->tenant, type, e->topic, e->aggregate_id, seq, e->payload, ts, shard};
    PGresult *r = db_exec_prepared(c->tx, DB_STMT_ANALYTICS_ONE, 9, p);
    if (!r) {
        snprintf(c->error, sizeof c->error, "insert into analytics.events failed (sqlstate %s)", pg_last_sqlstate());
        return SVC_RETRY;
    }
    PQclear(r);
    return SVC_OK;
}

static svc_result_t handle_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg)
{
    (void)arg;
    if (tx->kind == DB_MEMORY) {
        char tbuf[ENV_NAME_MAX + 1];
        for (size_t i = 0; i < n; i++)
            if (!mem_add(tx, msgs[i], event_type(msgs[i], payloads[i], tbuf)))
                return SVC_RETRY; /* as the plain INSERT's 23505: the runtime asks seen() */
        return SVC_OK;
    }
    enum { N_ARRAYS = 8, N_COUNTS = 4 };
    static const uint32_t oids[N_ARRAYS] = {PG_OID_UUID, PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT,
                                            PG_OID_TEXT, PG_OID_INT8, PG_OID_TEXT, PG_OID_TIMESTAMPTZ};
    pg_array_t a[N_ARRAYS] = {{0}}, cnt[N_COUNTS] = {{0}};
    const char **types = xmalloc(n * sizeof *types);
    char(*tbufs)[ENV_NAME_MAX + 1] = NULL; /* the tracked events' types, when there are any */
    minute_count_t *keys = xmalloc(n * sizeof *keys);
    svc_result_t rc = SVC_RETRY;
    for (int k = 0; k < N_ARRAYS; k++)
        pg_array_begin(&a[k], oids[k], n);
    for (size_t i = 0; i < n; i++) {
        const envelope_t *e = msgs[i];
        if (pg_array_uuid(&a[0], e->id) != 0)
            goto out; /* the one-at-a-time pass reports it */
        if (!tbufs && strcmp(e->type, "analytics.track") == 0)
            tbufs = xmalloc(n * sizeof *tbufs);
        types[i] = event_type(e, payloads[i], tbufs ? tbufs[i] : NULL);
        pg_array_text(&a[1], e->tenant);
        pg_array_text(&a[2], types[i]);
        pg_array_text(&a[3], e->topic);
        pg_array_text(&a[4], e->aggregate_id);
        pg_array_int8(&a[5], e->seq);
        pg_array_text(&a[6], e->payload);
        pg_array_timestamptz_ms(&a[7], e->ts);
    }
    size_t m = count_minutes(msgs, types, n, keys, cnt);
    /* the events' arrays in binary, the counter shard (this connection's
     * lane) as text, then the increments' arrays */
    char shard[12];
    snprintf(shard, sizeof shard, "%d", tx->lane);
    enum { N_PARAMS = N_ARRAYS + 1 + N_COUNTS };
    const char *vals[N_PARAMS] = {[N_ARRAYS] = shard};
    int lens[N_PARAMS] = {0}, fmts[N_PARAMS] = {0};
    pg_array_params(a, N_ARRAYS, (uint32_t)n, vals, lens, fmts);
    pg_array_params(cnt, N_COUNTS, (uint32_t)m, vals + N_ARRAYS + 1, lens + N_ARRAYS + 1, fmts + N_ARRAYS + 1);
    /* held back to go with the COMMIT (one round trip for both); an id
     * recorded already (23505) is expected: it fails the commit, and the
     * runtime's slow pass asks seen() and applies the rest */
    if (db_defer(tx, DB_STMT_ANALYTICS_BATCH, sql_batch, N_PARAMS, vals, lens, fmts, "23505") == 0)
        rc = SVC_OK;
out:
    for (int k = 0; k < N_ARRAYS; k++)
        pg_array_free(&a[k]);
    for (int k = 0; k < N_COUNTS; k++)
        pg_array_free(&cnt[k]);
    free(types);
    free(tbufs);
    free(keys);
    return rc;
}

/* Which messages the read model holds already: its unique (tenant, id) is
 * the service's record of what it applied (the runtime keeps no bus.inbox
 * row for analytics). Inside the open transaction, so it sees what this
 * transaction wrote. */
static const char sql_seen[] = "SELECT x.i FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS x(tenant, id, i)"
                               " WHERE EXISTS (SELECT 1 FROM analytics.events e WHERE e.tenant = x.tenant AND e.id = x.id)";

static int seen(db_t *tx, const envelope_t *const *msgs, size_t n, bool *out, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < n; i++)
        out[i] = false;
    if (tx->kind == DB_MEMORY) {
        mem_events_t *m = mem(tx);
        for (size_t i = 0; i < n; i++)
            out[i] = strmap_get(&m->ids, msgs[i]->id, strlen(msgs[i]->id)) != NULL;
        return 0;
    }
    pg_array_t a[2] = {{0}};
    pg_array_begin(&a[0], PG_OID_TEXT, n);
    pg_array_begin(&a[1], PG_OID_UUID, n);
    int rc = -1;
    for (size_t i = 0; i < n; i++) {
        pg_array_text(&a[0], msgs[i]->tenant);
        if (pg_array_uuid(&a[1], msgs[i]->id) != 0)
            goto out;
    }
    const char *vals[2];
    int lens[2], fmts[2];
    pg_array_params(a, 2, (uint32_t)n, vals, lens, fmts);
    if (db_prepare(tx, DB_STMT_ANALYTICS_SEEN, sql_seen, 2) != 0)
        goto out;
    PGresult *r = db_exec_prepared_bin(tx, DB_STMT_ANALYTICS_SEEN, 2, vals, lens, fmts, NULL);
    if (!r)
        goto out;
    for (int k = 0; k < PQntuples(r); k++) {
        long long i = strtoll(PQgetvalue(r, k, 0), NULL, 10);
        if (i >= 1 && (size_t)i <= n)
            out[i - 1] = true;
    }
    PQclear(r);
    rc = 0;
out:
    pg_array_free(&a[0]);
    pg_array_free(&a[1]);
    return rc;
}

const svc_def_t *analytics_service(void)
{
    static const svc_def_t def = {
        .group = "analytics",
        .topics = NULL, /* every topic */
        .types = NULL,  /* every type */
        .handle = handle,
        .handle_batch = handle_batch,
        .seen = seen,
        /* one lane: every insert of a batch lands on the same index pages
         * (ascending ids), so a second connection only contends for them
         * (consume 33k vs 40k msgs/s on two lanes, docs/benchmarks.md) */
        .concurrent = false,
        /* it stores the payload's text; only tracked events' are parsed */
        .payload_unread = true,
    };
    return &def;
}

/* ---- queries ---- */

void analytics_events_free(analytics_event_t *ev, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ev[i].tenant);
        free(ev[i].type);
        free(ev[i].topic);
        free(ev[i].aggregate_id);
        free(ev[i].payload);
    }
    free(ev);
}

static void copy_event(analytics_event_t *dst, const analytics_event_t *src)
{
    memcpy(dst->id, src->id, UUID_STR_LEN);
    dst->tenant = xstrdup(src->tenant);
    dst->type = xstrdup(src->type);
    dst->topic = xstrdup(src->topic);
    dst->aggregate_id = xstrdup(src->aggregate_id);
    dst->seq = src->seq;
    dst->occurred_ms = src->occurred_ms;
    dst->payload = xstrdup(src->payload);
}

int analytics_list(db_t *db, const char *tenant, const char *type, const char *before_id, size_t limit,
                   analytics_event_t **out, size_t *n)
{
    return analytics_list_filtered(db, tenant, type, NULL, before_id, limit, out, n);
}

static int by_id_desc(const void *a, const void *b)
{
    return strcmp((*(const analytics_event_t *const *)b)->id, (*(const analytics_event_t *const *)a)->id);
}

int analytics_list_filtered(db_t *db, const char *tenant, const char *type, const char *aggregate,
                            const char *before_id, size_t limit, analytics_event_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    analytics_event_t *res = xcalloc(limit + 1, sizeof *res);
    size_t k = 0;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0) {
            free(res);
            return -1;
        }
        mem_events_t *m = mem(db);
        /* as PostgreSQL below: ids before the cursor's (any id, stored or not:
         * ids are UUIDv7, compared in lower case), newest first by id, which
         * need not be the order they arrived in */
        char before[UUID_STR_LEN] = "";
        if (before_id)
            uuid_lower(before_id, before);
        const analytics_event_t **hit = xmalloc((m->n + 1) * sizeof *hit);
        size_t nhit = 0;
        for (size_t i = 0; i < m->n; i++) {
            const analytics_event_t *e = &m->ev[i];
            if (strcmp(e->tenant, tenant) != 0 || (type && strcmp(e->type, type) != 0) ||
                (aggregate && strcmp(e->aggregate_id, aggregate) != 0) || (before_id && strcmp(e->id, before) >= 0))
                continue;
            hit[nhit++] = e;
        }
        qsort(hit, nhit, sizeof *hit, by_id_desc);
        for (size_t i = 0; i < nhit && k < limit; i++)
            copy_event(&res[k++], hit[i]);
        free(hit);
        if (db_commit(db) != 0) {
            analytics_events_free(res, k);
            return -1;
        }
        *out = res;
        *n = k;
        return 0;
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *p[] = {tenant, type, before_id, lim, aggregate};
    PGresult *r = pg_query(db_pg(db),
                           "SELECT id, tenant, type, topic, aggregate_id, seq,"
                           " (extract(epoch FROM occurred_at) * 1000)::bigint, payload::text"
                           " FROM analytics.events WHERE tenant = $1 AND ($2::text IS NULL OR type = $2)"
                           " AND ($3::uuid IS NULL OR id < $3::uuid) AND ($5::text IS NULL OR aggregate_id = $5)"
                           " ORDER BY id DESC LIMIT $4",
                           5, p);
    if (!r) {
        free(res);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        analytics_event_t *e = &res[k++];
        snprintf(e->id, sizeof e->id, "%s", PQgetvalue(r, i, 0));
        e->tenant = xstrdup(PQgetvalue(r, i, 1));
        e->type = xstrdup(PQgetvalue(r, i, 2));
        e->topic = xstrdup(PQgetvalue(r, i, 3));
        e->aggregate_id = xstrdup(PQgetvalue(r, i, 4));
        e->seq = strtoll(PQgetvalue(r, i, 5), NULL, 10);
        e->occurred_ms = strtoll(PQgetvalue(r, i, 6), NULL, 10);
        e->payload = xstrdup(PQgetvalue(r, i, 7));
    }
    PQclear(r);
    *out = res;
    *n = k;
    return 0;
}

int analytics_count(db_t *db, uint64_t *n)
{
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        *n = mem(db)->n;
        return db_commit(db);
    }
    PGresult *r = pg_query(db_pg(db), "SELECT count(*) FROM analytics.events", 0, NULL);
    if (!r)
        return -1;
    *n = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

/* ---- counts per type over a window ---- */

const char analytics_sql_stats[] =
    "SELECT type, sum(count)::bigint FROM analytics.counts_by_minute"
    " WHERE tenant = $1 AND minute >= to_timestamp($2::bigint) AND ($3::text IS NULL OR type = $3)"
    " GROUP BY type ORDER BY 2 DESC, type COLLATE \"C\"";

void analytics_type_counts_free(analytics_type_count_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(c[i].type);
    free(c);
}

static int count_cmp(const void *a, const void *b)
{
    const analytics_type_count_t *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->type, y->type);
}

/* The memory read model keeps no counters: its events are counted. */
static void mem_stats(db_t *db, const char *tenant, const char *type, int64_t since_ms, analytics_type_count_t **out,
                      size_t *n)
{
    mem_events_t *m = mem(db);
    strmap_t by_type;
    strmap_init(&by_type);
    for (size_t i = 0; i < m->n; i++) {
        const analytics_event_t *e = &m->ev[i];
        if (e->occurred_ms < since_ms || strcmp(e->tenant, tenant) != 0 || (type && strcmp(e->type, type) != 0))
            continue;
        void **v = strmap_put(&by_type, e->type, strlen(e->type), NULL);
        *v = (void *)((intptr_t)*v + 1);
    }
    analytics_type_count_t *res = xcalloc(by_type.live + 1, sizeof *res);
    size_t k = 0;
    const char *key;
    size_t klen;
    void *val;
    for (size_t it = 0; strmap_next(&by_type, &it, &key, &klen, &val);) {
        res[k].type = xstrndup(key, klen);
        res[k++].count = (int64_t)(intptr_t)val;
    }
    strmap_free(&by_type);
    if (k > 1)
        qsort(res, k, sizeof *res, count_cmp);
    *out = res;
    *n = k;
}

int analytics_stats(db_t *db, const char *tenant, const char *type, int64_t since_ms, analytics_type_count_t **out,
                    size_t *n)
{
    *out = NULL;
    *n = 0;
    if (since_ms < 0 || since_ms % 60000 != 0)
        return -1;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_stats(db, tenant, type, since_ms, out, n);
        if (db_commit(db) != 0) {
            analytics_type_counts_free(*out, *n);
            *out = NULL;
            *n = 0;
            return -1;
        }
        return 0;
    }
    char since[24];
    snprintf(since, sizeof since, "%lld", (long long)(since_ms / 1000));
    const char *p[] = {tenant, since, type};
    PGresult *r = pg_query(db_pg(db), analytics_sql_stats, 3, p);
    if (!r)
        return -1;
    int rows = PQntuples(r);
    analytics_type_count_t *res = xcalloc((size_t)rows + 1, sizeof *res);
    for (int i = 0; i < rows; i++) {
        res[i].type = xstrdup(PQgetvalue(r, i, 0));
        res[i].count = strtoll(PQgetvalue(r, i, 1), NULL, 10);
    }
    PQclear(r);
    *out = res;
    *n = (size_t)rows;
    return 0;
}
