/* bus/outbox.c: see outbox.h. PostgreSQL statements and the memory tables. */
#include "bus/outbox.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/strmap.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t max_payload = 256 * 1024;
static _Atomic int64_t last_notify_ms;
#define NOTIFY_EVERY_MS 2 /* at most one wake-up hint per process per 2 ms */

void outbox_set_max_payload(size_t n)
{
    max_payload = n;
}

int outbox_partition_of(const char *tenant, const char *aggregate_id)
{
    uint32_t h = 2166136261u; /* FNV-1a over tenant \0 aggregate */
    for (const char *p = tenant; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h *= 16777619u;
    for (const char *p = aggregate_id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return (int)(h % OUTBOX_PARTITIONS);
}

/* ---- memory tables ---- */

typedef struct mem_outbox {
    outbox_row_t *rows;
    size_t head, n, cap; /* live rows are rows[head .. head+n) */
    int64_t next_pos;
    strmap_t seq; /* tenant \0 aggregate -> seq (as intptr) */
    uint64_t appended;
    uint64_t dead;
} mem_outbox_t;

static void *mem_make(void)
{
    mem_outbox_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->seq);
    m->next_pos = 1;
    return m;
}

static void mem_free(void *p)
{
    mem_outbox_t *m = p;
    for (size_t i = 0; i < m->n; i++)
        envelope_clear(&m->rows[m->head + i].env);
    free(m->rows);
    strmap_free(&m->seq);
    free(m);
}

static mem_outbox_t *mem(db_t *db)
{
    return db_mem_slot(db, MEM_SLOT_OUTBOX, mem_make, mem_free);
}

typedef struct mem_undo {
    mem_outbox_t *m;
    char key[2 * ENV_NAME_MAX + 2];
    size_t klen;
} mem_undo_t;

static void undo_append(void *arg)
{
    mem_undo_t *u = arg;
    mem_outbox_t *m = u->m;
    ECOM_ASSERT(m->n > 0);
    envelope_clear(&m->rows[m->head + m->n - 1].env);
    m->n--;
    m->next_pos--;
    m->appended--;
    void **seq = u->klen ? strmap_get(&m->seq, u->key, u->klen) : NULL;
    if (seq && (intptr_t)*seq > 1)
        *seq = (void *)((intptr_t)*seq - 1);
    else if (seq)
        strmap_del(&m->seq, u->key, u->klen, NULL);
    free(u);
}

static int mem_append(db_t *tx, const outbox_msg_t *msg, const char *id)
{
    mem_outbox_t *m = mem(tx);
    mem_undo_t *u = xmalloc(sizeof *u);
    u->m = m;
    size_t tl = strlen(msg->tenant), al = strlen(msg->aggregate_id);
    memcpy(u->key, msg->tenant, tl + 1);
    memcpy(u->key + tl + 1, msg->aggregate_id, al);
    u->klen = tl + 1 + al;
    intptr_t seq = 1;
    if (msg->sole) {
        u->klen = 0; /* no sequence entry to take back */
    } else {
        void **slot = strmap_put(&m->seq, u->key, u->klen, NULL);
        seq = (intptr_t)*slot + 1;
        *slot = (void *)seq;
    }

    if (m->head + m->n == m->cap) {
        if (m->head > m->cap / 2) {
            memmove(m->rows, m->rows + m->head, m->n * sizeof *m->rows);
            m->head = 0;
        } else {
            m->cap = m->cap ? m->cap * 2 : 256;
            m->rows = xrealloc(m->rows, m->cap * sizeof *m->rows);
        }
    }
    outbox_row_t *r = &m->rows[m->head + m->n++];
    memset(r, 0, sizeof *r);
    r->pos = m->next_pos++;
    r->partition = outbox_partition_of(msg->tenant, msg->aggregate_id);
    envelope_t src = {.type = (char *)msg->type,
                      .topic = (char *)msg->topic,
                      .tenant = (char *)msg->tenant,
                      .aggregate_id = (char *)msg->aggregate_id,
                      .seq = seq,
                      .ts = clock_now_ms(),
                      .v = 1,
                      .traceparent = (char *)msg->traceparent,
                      .request_id = (char *)msg->request_id,
                      .payload = (char *)msg->payload};
    memcpy(src.id, id, UUID_STR_LEN);
    envelope_copy(&r->env, &src);
    m->appended++;
    db_mem_undo(tx, undo_append, u, free);
    return 0;
}

/* ---- append ---- */

/* A sole message ($11) takes seq 1 and leaves bus.aggregate_seq alone.
 * The position (the drainer's order) is drawn after the upsert has taken the
 * aggregate's row lock, which it holds to the commit, so an aggregate's
 * positions follow its sequence numbers: drawn as the column's default, it
 * came first in the row, before the lock, and appenders racing on one
 * aggregate committed seq n + 1 at a lower position than seq n. */
#define APPEND_ONE_SEQ                                                                                                 \
    "WITH s AS (INSERT INTO bus.aggregate_seq AS a (tenant, aggregate_id, seq) SELECT $3, $4, 1 WHERE NOT "            \
    "$11::boolean"                                                                                                     \
    " ON CONFLICT (tenant, aggregate_id) DO UPDATE SET seq = a.seq + 1 RETURNING seq),"                                \
    " p AS (SELECT seq, nextval('bus.outbox_pos_seq') AS pos FROM s)"
#define APPEND_ONE_INSERT                                                                                              \
    " INSERT INTO bus.outbox (pos, id, partition, tenant, aggregate_id, topic, type, seq, ts, traceparent,"            \
    " request_id, payload) SELECT coalesce((SELECT pos FROM p), nextval('bus.outbox_pos_seq')), $1, $2, $3, $4, $5,"   \
    " $6, coalesce((SELECT seq FROM p), 1), $7, $8, $9, $10"
const char outbox_sql_append[] = APPEND_ONE_SEQ APPEND_ONE_INSERT;
const char outbox_sql_append_notify[] =
    APPEND_ONE_SEQ ", i AS (" APPEND_ONE_INSERT " RETURNING 1) SELECT pg_notify('ecom_outbox', '') FROM i";

/* The drainer's wake-up hint, sent by appenders on a db_t after their
 * commit (db_after_commit), in a transaction of its own: a transaction that
 * NOTIFYs takes a database-wide lock before its commit and holds it until
 * its WAL is flushed, so hints inside the writes' transactions made their
 * commits wait for one another (pg_stat_activity at 1,000 payments/s: the
 * payment service's backends waited on it half as often as they ran). With
 * synchronous_commit off the hint's own commit does not wait for the flush;
 * a hint lost in a crash only leaves a row to the drainer's poll. */
const char outbox_sql_hint[] = "SELECT set_config('synchronous_commit', 'off', true), pg_notify('ecom_outbox', '')";

bool outbox_notify_due(void)
{
    int64_t now = clock_now_ms();
    int64_t last = atomic_load_explicit(&last_notify_ms, memory_order_relaxed);
    return now - last >= NOTIFY_EVERY_MS && atomic_compare_exchange_strong(&last_notify_ms, &last, now);
}

static int validate(const outbox_msg_t *m, const char **why)
{
    if (!m->topic || !envelope_topic_valid(m->topic) || !m->type || !envelope_name_valid(m->type) || !m->tenant ||
        !envelope_name_valid(m->tenant)) {
        *why = "topic, type and tenant must match [A-Za-z0-9._:-]{1,128}; a topic must not begin with dlq: or replay:";
        return -1;
    }
    if (!m->aggregate_id || !m->aggregate_id[0] || strlen(m->aggregate_id) > 256) {
        *why = "aggregate_id must be 1..256 bytes";
        return -1;
    }
    /* PostgreSQL refuses text that is not UTF-8: say so, not "storage error" */
    if (!utf8_valid(m->aggregate_id) || (m->traceparent && !utf8_valid(m->traceparent)) ||
        (m->request_id && !utf8_valid(m->request_id))) {
        *why = "aggregate_id, traceparent and request_id must be UTF-8";
        return -1;
    }
    if (!m->payload || strlen(m->payload) > max_payload) {
        *why = m->payload ? "payload larger than OUTBOX_MAX_PAYLOAD" : "payload missing";
        return -1;
    }
    if (m->id[0] && !uuid_valid(m->id)) {
        *why = "id must be a UUID";
        return -1;
    }
    return 0;
}

/* The message's own id (validated), else a new UUIDv7. */
static void message_id(const outbox_msg_t *m, char out[UUID_STR_LEN])
{
    if (m->id[0])
        uuid_lower(m->id, out);
    else
        uuid_v7(out);
}

int outbox_params(const outbox_msg_t *m, outbox_params_t *p, const char **why)
{
    if (validate(m, why) != 0)
        return -1;
    message_id(m, p->id);
    snprintf(p->part, sizeof p->part, "%d", outbox_partition_of(m->tenant, m->aggregate_id));
    snprintf(p->ts, sizeof p->ts, "%lld", (long long)clock_now_ms());
    const char *v[OUTBOX_PARAMS] = {p->id,
                                    p->part,
                                    m->tenant,
                                    m->aggregate_id,
                                    m->topic,
                                    m->type,
                                    p->ts,
                                    m->traceparent ? m->traceparent : "",
                                    m->request_id ? m->request_id : "",
                                    m->payload,
                                    m->sole ? "true" : "false"};
    memcpy(p->values, v, sizeof v);
    return 0;
}

int outbox_append_params(db_t *tx, const outbox_msg_t *m, const outbox_params_t *op, const char **why)
{
    ECOM_ASSERT(tx->in_tx);
    if (tx->kind == DB_MEMORY) {
        if (mem_append(tx, m, op->id) != 0)
            goto fail;
        return 0;
    }
    if (db_prepare(tx, DB_STMT_OUTBOX_APPEND, outbox_sql_append, OUTBOX_PARAMS) != 0)
        goto fail;
    PGresult *r = db_exec_prepared(tx, DB_STMT_OUTBOX_APPEND, OUTBOX_PARAMS, op->values);
    if (!r)
        goto fail;
    PQclear(r);
    if (outbox_notify_due())
        db_after_commit(tx, outbox_sql_hint);
    return 0;
fail:
    *why = "storage error";
    return -1;
}

int outbox_append(db_t *tx, const outbox_msg_t *m, char id_out[UUID_STR_LEN], const char **why)
{
    outbox_params_t op;
    if (outbox_params(m, &op, why) != 0 || outbox_append_params(tx, m, &op, why) != 0)
        return -1;
    if (id_out)
        memcpy(id_out, op.id, UUID_STR_LEN);
    return 0;
}

/* Many messages in one statement: each (tenant, aggregate) draws as many
 * numbers from its sequence row as it has messages, and its messages take
 * them in array order; positions follow array order too (rows are inserted
 * in that order). Sole messages take seq 1 and no sequence row.
 * The sequence rows are locked in the byte order of (tenant, aggregate), the
 * order of their key (COLLATE "C", bus/004), whatever the array's: grouped
 * by a hash they were locked in the hash's order (outbox.h says why the
 * order matters). */
#define APPEND_MANY_INSERT                                                                                             \
    "WITH m AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],"        \
    " $7::bigint[], $8::text[], $9::text[], $10::text[], $11::boolean[]) WITH ORDINALITY"                              \
    " AS m(id, part, tenant, aggregate_id, topic, type, ts, traceparent, request_id, payload, sole, ord)),"            \
    " s AS (INSERT INTO bus.aggregate_seq AS a (tenant, aggregate_id, seq)"                                            \
    " SELECT tenant, aggregate_id, count(*) FROM m WHERE NOT sole GROUP BY tenant, aggregate_id"                       \
    " ORDER BY tenant COLLATE \"C\", aggregate_id COLLATE \"C\""                                                       \
    " ON CONFLICT (tenant, aggregate_id) DO UPDATE SET seq = a.seq + EXCLUDED.seq"                                     \
    " RETURNING tenant, aggregate_id, seq),"                                                                           \
    " i AS (INSERT INTO bus.outbox (id, partition, tenant, aggregate_id, topic, type, seq, ts, traceparent,"           \
    " request_id, payload)"                                                                                            \
    " SELECT m.id, m.part::smallint, m.tenant, m.aggregate_id, m.topic, m.type,"                                       \
    " CASE WHEN m.sole THEN 1 ELSE s.seq - count(*) OVER w + row_number() OVER (w ORDER BY m.ord) END, m.ts,"          \
    " m.traceparent, m.request_id, m.payload FROM m LEFT JOIN s ON NOT m.sole AND s.tenant = m.tenant"                 \
    " AND s.aggregate_id = m.aggregate_id"                                                                             \
    " WINDOW w AS (PARTITION BY m.tenant, m.aggregate_id, m.sole) ORDER BY m.ord RETURNING 1)"
const char outbox_sql_append_many[] = APPEND_MANY_INSERT " SELECT count(*) FROM i";
const char outbox_sql_append_many_notify[] =
    APPEND_MANY_INSERT " SELECT count(*), pg_notify('ecom_outbox', '') FROM i";
const uint32_t outbox_param_oids[OUTBOX_PARAMS] = {PG_OID_UUID, PG_OID_INT8, PG_OID_TEXT, PG_OID_TEXT,
                                                   PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8, PG_OID_TEXT,
                                                   PG_OID_TEXT, PG_OID_TEXT, PG_OID_BOOL};
/* held back: nobody reads the count, so a short one divides by zero */
#define HOLD_MANY_CHECK " SELECT 1 / (count(*) = cardinality($1::uuid[]))::int"
static const char sql_hold_many[] = APPEND_MANY_INSERT HOLD_MANY_CHECK " FROM i";

static int append_many(db_t *tx, const outbox_msg_t *msgs, size_t n, bool hold, const char **why)
{
    ECOM_ASSERT(tx->in_tx);
    for (size_t i = 0; i < n; i++)
        if (validate(&msgs[i], why) != 0)
            return -1;
    if (n == 0)
        return 0;
    if (tx->kind == DB_MEMORY) {
        for (size_t i = 0; i < n; i++)
            if (outbox_append(tx, &msgs[i], NULL, why) != 0)
                return -1;
        return 0;
    }
    enum { COLS = OUTBOX_PARAMS };
    const uint32_t *oids = outbox_param_oids;
    pg_array_t a[COLS] = {{0}};
    for (int k = 0; k < COLS; k++)
        pg_array_begin(&a[k], oids[k], n);
    int64_t now = clock_now_ms();
    for (size_t i = 0; i < n; i++) {
        const outbox_msg_t *m = &msgs[i];
        char id[UUID_STR_LEN];
        message_id(m, id);
        if (pg_array_uuid(&a[0], id) != 0)
            ECOM_ASSERT(!"validated: a UUID");
        pg_array_int8(&a[1], outbox_partition_of(m->tenant, m->aggregate_id));
        pg_array_text(&a[2], m->tenant);
        pg_array_text(&a[3], m->aggregate_id);
        pg_array_text(&a[4], m->topic);
        pg_array_text(&a[5], m->type);
        pg_array_int8(&a[6], now);
        pg_array_text(&a[7], m->traceparent ? m->traceparent : "");
        pg_array_text(&a[8], m->request_id ? m->request_id : "");
        pg_array_text(&a[9], m->payload);
        pg_array_bool(&a[10], m->sole);
    }
    const char *vals[COLS];
    int lens[COLS], fmts[COLS];
    pg_array_params(a, COLS, (uint32_t)n, vals, lens, fmts);
    int rc = -1;
    if (hold) {
        rc = db_defer(tx, DB_STMT_OUTBOX_HOLD_MANY, sql_hold_many, COLS, vals, lens, fmts, NULL);
    } else if (db_prepare(tx, DB_STMT_OUTBOX_APPEND_MANY, outbox_sql_append_many, COLS) == 0) {
        PGresult *r = db_exec_prepared_bin(tx, DB_STMT_OUTBOX_APPEND_MANY, COLS, vals, lens, fmts, NULL);
        if (r && strtoull(PQgetvalue(r, 0, 0), NULL, 10) == n)
            rc = 0;
        PQclear(r);
    }
    if (rc == 0 && outbox_notify_due())
        db_after_commit(tx, outbox_sql_hint);
    for (int k = 0; k < COLS; k++)
        pg_array_free(&a[k]);
    if (rc != 0)
        *why = "storage error";
    return rc;
}

int outbox_append_many(db_t *tx, const outbox_msg_t *msgs, size_t n, const char **why)
{
    return append_many(tx, msgs, n, false, why);
}

int outbox_hold_many(db_t *tx, const outbox_msg_t *msgs, size_t n, const char **why)
{
    return append_many(tx, msgs, n, true, why);
}

/* ---- drain side ---- */

static const char sql_fetch[] =
    "SELECT pos, partition, attempts, id, type, topic, tenant, aggregate_id, seq, ts, v, traceparent,"
    " request_id, payload FROM bus.outbox WHERE partition = ANY($1::smallint[]) ORDER BY pos LIMIT $2";

static char *int_array(const void *vals, size_t n, bool is64)
{
    size_t cap = n * 21 + 3, len = 0;
    char *s = xmalloc(cap);
    s[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        long long v = is64 ? (long long)((const int64_t *)vals)[i] : (long long)((const int *)vals)[i];
        len += (size_t)snprintf(s + len, cap - len, i ? ",%lld" : "%lld", v);
    }
    s[len++] = '}';
    s[len] = '\0';
    return s;
}

/* The memory store's fetch: which partitions a fetch takes (parts[0..n)). */
static void parts_mask(const int *parts, size_t nparts, bool mask[OUTBOX_PARTITIONS])
{
    memset(mask, 0, OUTBOX_PARTITIONS * sizeof *mask);
    for (size_t i = 0; i < nparts; i++)
        if (parts[i] >= 0 && parts[i] < OUTBOX_PARTITIONS)
            mask[parts[i]] = true;
}

int outbox_fetch(db_t *db, const int *parts, size_t nparts, size_t limit, outbox_row_t **rows, size_t *n)
{
    *rows = NULL;
    *n = 0;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_outbox_t *m = mem(db);
        bool take[OUTBOX_PARTITIONS];
        parts_mask(parts, nparts, take);
        outbox_row_t *out = xcalloc((m->n < limit ? m->n : limit) + 1, sizeof *out);
        size_t k = 0;
        for (size_t i = 0; i < m->n && k < limit; i++) {
            const outbox_row_t *src = &m->rows[m->head + i];
            if (!take[src->partition])
                continue;
            out[k].pos = src->pos;
            out[k].partition = src->partition;
            out[k].attempts = src->attempts;
            envelope_copy(&out[k].env, &src->env);
            k++;
        }
        if (db_commit(db) != 0) {
            outbox_rows_free(out, k);
            return -1;
        }
        *rows = out;
        *n = k;
        return 0;
    }
    char *arr = int_array(parts, nparts, false);
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *p[] = {arr, lim};
    PGresult *r = db_exec_params_bin(db, sql_fetch, 2, p, NULL, NULL, NULL); /* unnamed: see outbox_step_send */
    free(arr);
    if (!r)
        return -1;
    int nt = PQntuples(r);
    outbox_row_t *out = xcalloc((size_t)nt + 1, sizeof *out);
    for (int i = 0; i < nt; i++) {
        outbox_row_t *o = &out[i];
        o->pos = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        o->partition = atoi(PQgetvalue(r, i, 1));
        o->attempts = atoi(PQgetvalue(r, i, 2));
        snprintf(o->env.id, sizeof o->env.id, "%s", PQgetvalue(r, i, 3));
        o->env.type = xstrdup(PQgetvalue(r, i, 4));
        o->env.topic = xstrdup(PQgetvalue(r, i, 5));
        o->env.tenant = xstrdup(PQgetvalue(r, i, 6));
        o->env.aggregate_id = xstrdup(PQgetvalue(r, i, 7));
        o->env.seq = strtoll(PQgetvalue(r, i, 8), NULL, 10);
        o->env.ts = strtoll(PQgetvalue(r, i, 9), NULL, 10);
        o->env.v = atoi(PQgetvalue(r, i, 10));
        o->env.traceparent = xstrdup(PQgetvalue(r, i, 11));
        o->env.request_id = xstrdup(PQgetvalue(r, i, 12));
        o->env.payload = xstrndup(PQgetvalue(r, i, 13), (size_t)PQgetlength(r, i, 13));
    }
    PQclear(r);
    *rows = out;
    *n = (size_t)nt;
    return 0;
}

static const char sql_delete[] = "DELETE FROM bus.outbox WHERE pos = ANY($1::bigint[])";
static const char sql_archive[] =
    "WITH d AS (DELETE FROM bus.outbox WHERE pos = ANY($1::bigint[]) RETURNING *)"
    " INSERT INTO bus.outbox_published (pos, id, partition, topic, type, tenant, aggregate_id, seq, ts, v,"
    " traceparent, request_id, payload) SELECT pos, id, partition, topic, type, tenant, aggregate_id, seq,"
    " ts, v, traceparent, request_id, payload FROM d ON CONFLICT (pos) DO NOTHING";

static void mem_remove(mem_outbox_t *m, int64_t pos)
{
    /* rows are published oldest first: the row is almost always at the head */
    for (size_t i = 0; i < m->n; i++) {
        outbox_row_t *r = &m->rows[m->head + i];
        if (r->pos != pos)
            continue;
        envelope_clear(&r->env);
        if (i == 0) {
            m->head++;
        } else {
            memmove(r, r + 1, (m->n - i - 1) * sizeof *r);
        }
        m->n--;
        if (m->n == 0)
            m->head = 0;
        return;
    }
}

int outbox_remove(db_t *db, const int64_t *pos, size_t n, bool archive)
{
    if (n == 0)
        return 0;
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_outbox_t *m = mem(db);
        for (size_t i = 0; i < n; i++)
            mem_remove(m, pos[i]);
        return db_commit(db);
    }
    char *arr = int_array(pos, n, true);
    const char *p[] = {arr};
    PGresult *r = db_exec_params_bin(db, archive ? sql_archive : sql_delete, 1, p, NULL, NULL,
                                     NULL); /* unnamed: see outbox_step_send */
    free(arr);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

int outbox_mark_published(db_t *db, const outbox_row_t *rows, size_t n, bool archive)
{
    if (n == 0)
        return 0;
    int64_t *pos = xmalloc(n * sizeof *pos);
    for (size_t i = 0; i < n; i++)
        pos[i] = rows[i].pos;
    int rc = outbox_remove(db, pos, n, archive);
    free(pos);
    return rc;
}

/* ---- the drainer's overlapped step ---- */

/* $1 the partitions (NULL: all of them, no test per row), $4 the rows in
 * flight, as a hashed subplan: `pos <> ALL($4)` compared each row below $3
 * with every element (bench_backbone fetch: a fetch of 1,000 past a batch
 * of 1,000 in flight cost 3.0-5.9 ms more than one with nothing in flight;
 * 0.7-1.4 ms more now). */
static const char sql_step_fetch[] =
    "SELECT pos, partition, attempts, id, type, topic, tenant, aggregate_id, seq, ts, v, traceparent,"
    " request_id, payload FROM bus.outbox WHERE ($1::smallint[] IS NULL OR partition = ANY($1::smallint[]))"
    " AND (pos > $3 OR pos NOT IN (SELECT unnest($4::bigint[]))) ORDER BY pos LIMIT $2";

static bool in_sorted(const int64_t *v, size_t n, int64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] == x)
            return true;
        if (v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static int mem_step(db_t *db, outbox_step_t *st, const int64_t *done, size_t ndone, bool archive, const int *parts,
                    size_t nparts, const int64_t *skip, size_t nskip, size_t limit)
{
    bool take[OUTBOX_PARTITIONS];
    parts_mask(parts, nparts, take);
    if (outbox_remove(db, done, ndone, archive) != 0)
        return -1;
    st->removed = true;
    if (db_begin(db) != 0)
        return -1;
    mem_outbox_t *m = mem(db);
    st->rows = xcalloc((m->n < limit ? m->n : limit) + 1, sizeof *st->rows);
    for (size_t i = 0; i < m->n && st->n < limit; i++) {
        const outbox_row_t *src = &m->rows[m->head + i];
        if (!take[src->partition] || in_sorted(skip, nskip, src->pos))
            continue;
        outbox_row_t *o = &st->rows[st->n++];
        o->pos = src->pos;
        o->partition = src->partition;
        o->attempts = src->attempts;
        envelope_copy(&o->env, &src->env);
    }
    return db_commit(db);
}

int outbox_step_send(db_t *db, outbox_step_t *st, const int64_t *done, size_t ndone, bool archive, const int *parts,
                     size_t nparts, const int64_t *skip, size_t nskip, size_t limit)
{
    memset(st, 0, sizeof *st);
    if (db->kind == DB_MEMORY) {
        st->copies = true;
        st->rc = mem_step(db, st, done, ndone, archive, parts, nparts, skip, nskip, limit);
        return 0;
    }
    /* On a connection with index scans only (db_index_scans_only: the
     * drainer's) both statements run prepared, their generic plan an index
     * scan; elsewhere unnamed, planned for their parameters each time: the
     * outbox is a queue whose size swings from empty to a backlog of
     * millions, so a generic plan made while it was small (a sequential
     * scan) would read the whole backlog per batch exactly when the drainer
     * must catch up. */
    PGconn *c = db_pg(db);
    bool prepared = db->index_scans && db_prepare(db, DB_STMT_OUTBOX_STEP_FETCH, sql_step_fetch, 4) == 0 &&
                    db_prepare(db, archive ? DB_STMT_OUTBOX_STEP_ARCHIVE : DB_STMT_OUTBOX_STEP_DELETE,
                               archive ? sql_archive : sql_delete, 1) == 0;
    char name_fetch[16], name_remove[16];
    db_stmt_name(DB_STMT_OUTBOX_STEP_FETCH, name_fetch);
    db_stmt_name(archive ? DB_STMT_OUTBOX_STEP_ARCHIVE : DB_STMT_OUTBOX_STEP_DELETE, name_remove);
    if (!PQenterPipelineMode(c)) {
        log_warn("postgres: cannot enter pipeline mode: %s", PQerrorMessage(c));
        return -1;
    }
    char lim[24], max[24];
    char *parr = nparts < OUTBOX_PARTITIONS ? int_array(parts, nparts, false) : NULL;
    char *sarr = int_array(skip, nskip, true);
    snprintf(lim, sizeof lim, "%zu", limit);
    snprintf(max, sizeof max, "%lld", nskip ? (long long)skip[nskip - 1] : 0LL);
    bool ok = true;
    if (ndone) {
        char *darr = int_array(done, ndone, true);
        const char *p[] = {darr};
        ok = (prepared ? PQsendQueryPrepared(c, name_remove, 1, p, NULL, NULL, 0)
                       : PQsendQueryParams(c, archive ? sql_archive : sql_delete, 1, NULL, p, NULL, NULL, 0)) == 1;
        free(darr);
        st->nq += ok;
    }
    const char *p[] = {parr, lim, max, sarr};
    if (ok && (prepared ? PQsendQueryPrepared(c, name_fetch, 4, p, NULL, NULL, 0)
                        : PQsendQueryParams(c, sql_step_fetch, 4, NULL, p, NULL, NULL, 0)) == 1)
        st->nq++;
    else
        ok = false;
    ok = ok && PQpipelineSync(c) == 1;
    free(parr);
    free(sarr);
    if (!ok) {
        /* a send failed: the connection is broken (the caller checks it) */
        log_warn("postgres: outbox step not sent: %s", PQerrorMessage(c));
        st->nq = -1;
        return -1;
    }
    return 0;
}

int outbox_step_wait(db_t *db, outbox_step_t *st)
{
    if (db->kind == DB_MEMORY)
        return st->rc;
    ECOM_ASSERT(st->nq > 0);
    bool had_delete = st->nq > 1;
    PGconn *c = db->pgc; /* reading what outbox_step_send sent */
    PGresult *fetched = NULL;
    bool failed = false, synced = false, deleted = false;
    int ends = 0; /* NULLs seen: one closes each statement's results */
    while (!synced && ends <= st->nq) {
        PGresult *r = PQgetResult(c);
        if (!r) {
            if (PQstatus(c) == CONNECTION_BAD) {
                failed = true;
                break;
            }
            ends++;
            continue;
        }
        switch (PQresultStatus(r)) {
        case PGRES_PIPELINE_SYNC:
            synced = true;
            break;
        case PGRES_COMMAND_OK: /* the removal */
            deleted = true;
            break;
        case PGRES_TUPLES_OK: /* the fetch */
            if (!fetched) {
                fetched = r;
                r = NULL;
            }
            break;
        case PGRES_PIPELINE_ABORTED:
            failed = true;
            break;
        default: {
            const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
            log_warn("postgres error sqlstate=%s stmt=outbox step error=%.*s", state ? state : "08000",
                     (int)strcspn(PQresultErrorMessage(r), "\n"), PQresultErrorMessage(r));
            failed = true;
            break;
        }
        }
        PQclear(r);
    }
    if (!synced || !PQexitPipelineMode(c))
        failed = true;
    st->nq = 0;
    if (failed || !fetched) {
        PQclear(fetched);
        return -1;
    }
    st->removed = deleted || !had_delete;
    int nt = PQntuples(fetched);
    st->res = fetched;
    st->rows = xcalloc((size_t)nt + 1, sizeof *st->rows);
    st->n = (size_t)nt;
    for (int i = 0; i < nt; i++) {
        outbox_row_t *o = &st->rows[i];
        o->pos = strtoll(PQgetvalue(fetched, i, 0), NULL, 10);
        o->partition = atoi(PQgetvalue(fetched, i, 1));
        o->attempts = atoi(PQgetvalue(fetched, i, 2));
        snprintf(o->env.id, sizeof o->env.id, "%s", PQgetvalue(fetched, i, 3));
        o->env.type = PQgetvalue(fetched, i, 4);
        o->env.topic = PQgetvalue(fetched, i, 5);
        o->env.tenant = PQgetvalue(fetched, i, 6);
        o->env.aggregate_id = PQgetvalue(fetched, i, 7);
        o->env.seq = strtoll(PQgetvalue(fetched, i, 8), NULL, 10);
        o->env.ts = strtoll(PQgetvalue(fetched, i, 9), NULL, 10);
        o->env.v = atoi(PQgetvalue(fetched, i, 10));
        o->env.traceparent = PQgetvalue(fetched, i, 11);
        o->env.request_id = PQgetvalue(fetched, i, 12);
        o->env.payload = PQgetvalue(fetched, i, 13);
    }
    return 0;
}

void outbox_step_free(outbox_step_t *st)
{
    if (st->copies)
        outbox_rows_free(st->rows, st->n);
    else
        free(st->rows);
    PQclear(st->res);
    memset(st, 0, sizeof *st);
}

int outbox_mark_failed(db_t *db, const outbox_row_t *row, const char *error, bool dead)
{
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_outbox_t *m = mem(db);
        if (dead) {
            mem_remove(m, row->pos);
            m->dead++;
            log_error("outbox row moved to the dead list msg_id=%s error=%s", row->env.id, error);
        } else {
            for (size_t i = 0; i < m->n; i++)
                if (m->rows[m->head + i].pos == row->pos)
                    m->rows[m->head + i].attempts++;
        }
        return db_commit(db);
    }
    char pos[24];
    snprintf(pos, sizeof pos, "%lld", (long long)row->pos);
    const char *p[] = {pos, error};
    PGresult *r =
        dead ? pg_query(db_pg(db),
                        "WITH d AS (DELETE FROM bus.outbox WHERE pos = $1 RETURNING *)"
                        " INSERT INTO bus.outbox_dead (pos, id, partition, topic, type, tenant, aggregate_id, seq,"
                        " ts, v, traceparent, request_id, payload, error) SELECT pos, id, partition, topic, type,"
                        " tenant, aggregate_id, seq, ts, v, traceparent, request_id, payload, $2 FROM d",
                        2, p)
             : pg_query(db_pg(db), "UPDATE bus.outbox SET attempts = attempts + 1 WHERE pos = $1", 1, p);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

int outbox_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    *deleted = 0;
    if (db->kind == DB_MEMORY)
        return 0; /* memory keeps no published window */
    /* The limit lowest positions, those of them published before the
     * window: rows are published in about the order of their positions, so
     * the oldest are there. A call reads limit rows of the primary key
     * whatever the table holds; a filter on published_at over the whole
     * table read all of it when nothing was old yet (its BRIN index skips
     * only the ranges summarized). A row published late below younger ones
     * waits for them to age: seconds, at most the spread of a drain. */
    return pg_delete_older(db_pg(db),
                           "DELETE FROM bus.outbox_published WHERE pos IN (SELECT pos FROM bus.outbox_published"
                           " ORDER BY pos LIMIT $2)"
                           " AND published_at < now() - make_interval(secs => $1::double precision)",
                           retain_s, limit, deleted);
}

int outbox_stats(db_t *db, uint64_t *pending, int64_t *oldest_ms, uint64_t *dead)
{
    if (db->kind == DB_MEMORY) {
        if (db_begin(db) != 0)
            return -1;
        mem_outbox_t *m = mem(db);
        *pending = m->n;
        *oldest_ms = m->n ? clock_now_ms() - m->rows[m->head].env.ts : 0;
        *dead = m->dead;
        return db_commit(db);
    }
    PGresult *r = pg_query(db_pg(db),
                           "SELECT (SELECT count(*) FROM bus.outbox),"
                           " coalesce((extract(epoch FROM now()) * 1000)::bigint - (SELECT min(ts) FROM bus.outbox), 0),"
                           " (SELECT count(*) FROM bus.outbox_dead)",
                           0, NULL);
    if (!r)
        return -1;
    *pending = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
    *oldest_ms = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    *dead = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
    PQclear(r);
    return 0;
}

void outbox_rows_free(outbox_row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        envelope_clear(&rows[i].env);
    free(rows);
}

uint64_t outbox_memory_appended(db_t *db)
{
    if (db_begin(db) != 0)
        return 0;
    uint64_t n = mem(db)->appended;
    if (db_commit(db) != 0)
        return 0;
    return n;
}
