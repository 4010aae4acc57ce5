/* services/runtime.c: see runtime.h. */
#include "services/runtime.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/health.h"
#include "core/janitor.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/strmap.h"
#include "inbox/inbox.h"
#include "services/ackgate.h"
#include "services/reader.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOCK_LEASE 1162104657 /* advisory lock class of consumer-group leases */
#define DISCOVER_MS 2000
#define CLEANUP_MS 60000 /* between passes of the inbox cleanup (core/janitor.h) */
#define BACKOFF_CAP_MS 30000
#define PEL_PAGE_FACTOR 4 /* a pending-list page is this many batches */
#define READ_AHEAD_BLOCK_MS 100
#define ACK_WAIT_MS (READ_AHEAD_BLOCK_MS + 400) /* for the read-ahead's acknowledgements before a scan */
#define DROPPED_SCAN_MS 100 /* the gate dropped acknowledgements: the pending list is read this soon */

typedef struct failure {
    int count;     /* attempts that failed */
    int deferrals; /* SVC_DEFER answers since the last attempt */
    int64_t due_ms;
    char *agg_key; /* topic \0 tenant \0 aggregate, owned */
    size_t agg_klen;
} failure_t;

typedef struct work {
    bus_msg_t *m;
    json_object *payload;
    char *key; /* stream \0 tenant \0 aggregate, owned */
    size_t klen;
    bool done;        /* applied or duplicate: ack */
    bool failed;      /* handler failed this time */
    bool failed_fast; /* the handler already failed in the all-at-once pass */
    bool suspect;     /* failed before: applied on its own, ahead of the rest */
    bool blamed;      /* a batch handler named it as the one its batch failed on */
    svc_result_t result;
    char error[256];
} work_t;

/* One connection a batch is applied on. Lane 0 is the runtime's own
 * connection and runs on its thread; the others have a thread each. */
typedef struct lane {
    struct rt *rt;
    db_t *db; /* lanes > 0: own connection (NULL while down) */
    pthread_t thread;
    bool started;
    /* the job, guarded by rt->lane_mu */
    work_t *ws;
    size_t n;
    strmap_t *blocked;
    int rc;
    bool busy, quit;
} lane_t;

typedef struct acks {
    char stream[BUS_STREAM_MAX];
    char (*ids)[BUS_ID_MAX]; /* side by side: handed to the read-ahead whole */
    size_t n, cap;
} acks_t;

typedef struct rt {
    const svc_def_t *def;
    const svc_opts_t *o;
    atomic_bool *stop;
    db_t *db;
    bus_t *bus;
    bool memory; /* memory store */
    bool redis;  /* Redis bus (else memory): reads go through the read-ahead */
    bool lease;
    /* The lease holder has yet to claim what other consumers of the group
     * hold (a previous holder's entries): no new entry is read before. */
    bool claim_due;
    /* Until then, after taking the lease from a consumer that was reading
     * lately, each batch of new entries first checks that no other consumer
     * holds entries of the group: the previous holder may not know yet that
     * its lease is gone, and go on reading. */
    int64_t watch_until_ms;
    svc_reader_t *reader;
    /* With PostgreSQL and the read-ahead: a batch begun while the gate can
     * vouch for it commits asynchronously, and its acknowledgements go
     * through the gate, passed on to the read-ahead when durable (ackgate.h). */
    ackgate_t *gate;
    /* A batch went through the gate since the last flush made here: a batch
     * acknowledged directly must first make that commit durable itself (one
     * that only found copies wrote nothing, so its commit waits for no flush). */
    bool flush_owed;
    lane_t *lanes; /* nlanes; lanes[0].db is db */
    size_t nlanes;
    pthread_mutex_t lane_mu;
    pthread_cond_t lane_cv;
    char **streams;
    size_t nstreams;
    strmap_t failures;  /* stream \0 entry id -> failure_t* */
    /* Ids of the messages this consumer dead-lettered lately: another entry
     * of one (a drainer's publish retry puts a message on its stream twice)
     * is acknowledged, not applied after the messages that came behind it. */
    recent_t dead;
    uint64_t ndead;     /* put into it: while 0, no lookup */
    acks_t *acks;       /* per stream, parallel to streams */
    int64_t pel_due_ms; /* when to scan the own pending list; INT64_MAX = no need */
    int64_t next_discover, next_reclaim, next_probe;
    int64_t backoff_ms;
    int crash_deliveries;
    metric_t *m_applied, *m_dup, *m_ignored, *m_failed, *m_deferred, *m_dlq, *m_missing, *m_batch_s, *m_e2e_s;
} rt_t;

static bool stopping(rt_t *rt)
{
    return atomic_load(rt->stop);
}

static void nap(rt_t *rt, int64_t ms)
{
    if (ms > 0)
        reader_idle(rt->reader); /* what was applied is acknowledged meanwhile */
    while (ms > 0 && !stopping(rt)) {
        int64_t step = ms < 100 ? ms : 100;
        clock_sleep_ms(step);
        ms -= step;
    }
}

static void backoff(rt_t *rt)
{
    rt->backoff_ms = rt->backoff_ms ? rt->backoff_ms * 2 : 50;
    if (rt->backoff_ms > 5000)
        rt->backoff_ms = 5000;
    nap(rt, rt->backoff_ms);
}

static const char *store_name(const rt_t *rt)
{
    return rt->memory ? "memory-store" : "postgres";
}

static const char *bus_name(const rt_t *rt)
{
    return rt->o->redis_url && *rt->o->redis_url ? "redis" : "memory-bus";
}

/* ---- streams and groups ---- */

static int stream_index(rt_t *rt, const char *stream)
{
    for (size_t i = 0; i < rt->nstreams; i++)
        if (strcmp(rt->streams[i], stream) == 0)
            return (int)i;
    return -1;
}

static void add_stream(rt_t *rt, const char *stream)
{
    if (stream_index(rt, stream) >= 0)
        return;
    if (bus_group_create(rt->bus, stream, rt->def->group) != 0)
        return;
    rt->streams = xrealloc(rt->streams, (rt->nstreams + 1) * sizeof *rt->streams);
    rt->acks = xrealloc(rt->acks, (rt->nstreams + 1) * sizeof *rt->acks);
    /* the group's replay stream goes first, whenever it joins: its messages
     * are older than their aggregates' newer ones on the topics' streams, and
     * reads and pending scans take the streams in this order */
    size_t at = envelope_stream_is_topic(stream) ? rt->nstreams : 0;
    memmove(&rt->streams[at + 1], &rt->streams[at], (rt->nstreams - at) * sizeof *rt->streams);
    memmove(&rt->acks[at + 1], &rt->acks[at], (rt->nstreams - at) * sizeof *rt->acks);
    rt->streams[at] = xstrdup(stream);
    memset(&rt->acks[at], 0, sizeof *rt->acks);
    snprintf(rt->acks[at].stream, BUS_STREAM_MAX, "%s", stream);
    rt->nstreams++;
    rt->pel_due_ms = 0; /* a group we just joined may hold our pending entries */
    if (rt->lease)
        rt->claim_due = true; /* and a previous holder's */
    log_info("service %s consumes %s", rt->def->group, stream);
}

/* The group's own replay stream (its dead letters sent back), then its
 * topics' streams: the ones it names, or every topic's stream there is (and
 * again soon while there is none). */
static void discover(rt_t *rt, int64_t now)
{
    rt->next_discover = now + DISCOVER_MS;
    char s[BUS_STREAM_MAX];
    bus_replay_stream(rt->def->group, s, sizeof s);
    add_stream(rt, s);
    if (rt->def->topics) {
        for (const char *const *t = rt->def->topics; *t; t++) {
            envelope_stream_name(*t, s, sizeof s);
            add_stream(rt, s);
        }
        return;
    }
    char **names = NULL;
    size_t n = 0;
    if (bus_list_streams(rt->bus, &names, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        if (envelope_stream_is_topic(names[i]))
            add_stream(rt, names[i]);
        free(names[i]);
    }
    free(names);
    if (rt->nstreams < 2)
        rt->next_discover = now + 200;
}

/* ---- acknowledgements (retried until they succeed) ---- */

static void ack_later(rt_t *rt, const bus_msg_t *m)
{
    int si = stream_index(rt, m->stream);
    if (si < 0)
        return;
    acks_t *a = &rt->acks[si];
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 256;
        a->ids = xrealloc(a->ids, a->cap * sizeof *a->ids);
    }
    memcpy(a->ids[a->n++], m->entry_id, BUS_ID_MAX);
}

/* With the read-ahead: the acknowledgements go to its thread, which sends
 * them before its next read, off the applying thread; those of a batch
 * that began (began_us) committing asynchronously, through the gate. */
static void hand_acks(rt_t *rt, bool gated, int64_t began_us)
{
    for (size_t i = 0; i < rt->nstreams; i++) {
        acks_t *a = &rt->acks[i];
        if (!a->n)
            continue;
        if (gated) /* the ids go with it */
            ackgate_put(rt->gate, a->stream, a->ids, a->n, began_us);
        else
            reader_ack(rt->reader, a->stream, a->ids, a->n);
        a->ids = NULL;
        a->n = a->cap = 0;
    }
}

static int flush_acks(rt_t *rt)
{
    int rc = 0;
    for (size_t i = 0; i < rt->nstreams; i++) {
        acks_t *a = &rt->acks[i];
        if (!a->n)
            continue;
        if (bus_ack_ids(rt->bus, a->stream, rt->def->group, (const char (*)[BUS_ID_MAX])a->ids, a->n) != 0) {
            rc = -1;
            continue;
        }
        a->n = 0;
    }
    return rc;
}

/* ---- failures ---- */

static size_t fail_key(const bus_msg_t *m, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "%s%c%s", m->stream, '\0', m->entry_id);
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

static failure_t *failure_get(rt_t *rt, const bus_msg_t *m)
{
    if (rt->failures.live == 0)
        return NULL; /* the usual case: no key to format */
    char k[BUS_STREAM_MAX + BUS_ID_MAX + 2];
    size_t kl = fail_key(m, k, sizeof k);
    void **v = strmap_get(&rt->failures, k, kl);
    return v ? *v : NULL;
}

static void failure_drop(rt_t *rt, const bus_msg_t *m)
{
    if (rt->failures.live == 0)
        return;
    char k[BUS_STREAM_MAX + BUS_ID_MAX + 2];
    size_t kl = fail_key(m, k, sizeof k);
    void *old = NULL;
    if (strmap_del(&rt->failures, k, kl, &old)) {
        failure_t *f = old;
        free(f->agg_key);
        free(f);
    }
}

static failure_t *failure_bump(rt_t *rt, const work_t *w)
{
    char k[BUS_STREAM_MAX + BUS_ID_MAX + 2];
    size_t kl = fail_key(w->m, k, sizeof k);
    bool created;
    void **v = strmap_put(&rt->failures, k, kl, &created);
    failure_t *f = *v;
    if (created) {
        f = xcalloc(1, sizeof *f);
        f->agg_key = xmalloc(w->klen + 1);
        memcpy(f->agg_key, w->key, w->klen);
        f->agg_key[w->klen] = '\0';
        f->agg_klen = w->klen;
        *v = f;
    }
    int64_t delay;
    if (w->result == SVC_DEFER) {
        f->deferrals++;
        delay = rt->o->backoff_ms << (f->deferrals - 1 < 16 ? f->deferrals - 1 : 16);
        if (delay > 5000)
            delay = 5000;
    } else {
        f->count++;
        f->deferrals = 0;
        delay = rt->o->backoff_ms << (f->count - 1 < 16 ? f->count - 1 : 16);
        if (delay > BACKOFF_CAP_MS)
            delay = BACKOFF_CAP_MS;
    }
    f->due_ms = clock_mono_ms() + delay;
    return f;
}

/* ---- dead letters ---- */

static int dead_letter(rt_t *rt, const bus_msg_t *m, const char *reason)
{
    const char *id = m->bad || m->missing ? "" : m->env.id;
    if (bus_dead_letter(rt->bus, rt->def->group, m, reason) != 0)
        return -1;
    metrics_add(rt->m_dlq, 1);
    if (id[0]) {
        recent_put(&rt->dead, id, "");
        rt->ndead++;
    }
    log_error("service %s: message dead-lettered msg_id=%s entry=%s deliveries=%u reason=\"%s\"", rt->def->group, id,
              m->entry_id, m->deliveries, reason);
    failure_drop(rt, m);
    /* at once: a pending scan must not find it again (it would be
     * dead-lettered twice); later with the others if this fails */
    const char *eid = m->entry_id;
    if (bus_ack(rt->bus, m->stream, rt->def->group, &eid, 1) != 0)
        ack_later(rt, m);
    return 0;
}

/* ---- applying a batch ---- */

static bool type_accepted(const svc_def_t *def, const char *type)
{
    return !def->types || envelope_type_in(def->types, type);
}

/* The message a batch handler said its batch failed on (an index into the
 * messages it was handed), on this thread, until the next batch call. */
static _Thread_local size_t blame_at;
static _Thread_local bool blame_set, blame_own;
static _Thread_local svc_result_t blame_result;
static _Thread_local char blame_error[256];

void svc_batch_failed_at(size_t i)
{
    blame_at = i;
    blame_set = true;
    blame_own = false;
}

void svc_batch_failed_with(size_t i, svc_result_t r, const char *error)
{
    svc_batch_failed_at(i);
    if (r == SVC_OK)
        return;
    blame_own = true;
    blame_result = r;
    snprintf(blame_error, sizeof blame_error, "%s", error && *error ? error : "handler failed");
}

/* Calls the batch handler; on a failure marks the message it blamed
 * (which[k] is the work item of msgs[k]), failed already when the handler
 * said the failure was its own (apply_one does not run it again). */
static svc_result_t run_batch(rt_t *rt, db_t *db, const envelope_t **envs, json_object **pl, size_t nn,
                              work_t *const *which)
{
    blame_set = false;
    svc_result_t r = rt->def->handle_batch(db, envs, pl, nn, rt->def->arg);
    if (r != SVC_OK && blame_set && blame_at < nn) {
        work_t *w = which[blame_at];
        w->blamed = true;
        if (blame_own) {
            w->failed_fast = true;
            w->result = blame_result;
            snprintf(w->error, sizeof w->error, "%s", blame_error);
        }
    }
    blame_set = false;
    return r;
}

void svc_log_ctx(log_ctx_t *lc, char trace[33], const envelope_t *e)
{
    trace[0] = '\0';
    if (e->traceparent && strlen(e->traceparent) >= 35)
        snprintf(trace, 33, "%.32s", e->traceparent + 3);
    lc->request_id = e->request_id;
    lc->trace_id = trace;
    lc->msg_id = e->id;
}

static void log_applied(rt_t *rt, const work_t *w, const char *what)
{
    log_ctx_t lc;
    char trace[40];
    svc_log_ctx(&lc, trace, &w->m->env);
    const log_ctx_t *prev = log_ctx_set(&lc);
    log_debug("service %s: %s %s", rt->def->group, what, w->m->env.type);
    log_ctx_set(prev);
}

static svc_result_t run_handler(rt_t *rt, db_t *db, work_t *w)
{
    svc_ctx_t c = {.tx = db,
                   .msg = &w->m->env,
                   .payload = w->payload,
                   .group = rt->def->group,
                   .entry_id = w->m->entry_id,
                   .deliveries = w->m->deliveries};
    log_ctx_t lc;
    char trace[40];
    svc_log_ctx(&lc, trace, &w->m->env);
    const log_ctx_t *prev = log_ctx_set(&lc);
    svc_result_t r = rt->def->handle(&c, rt->def->arg);
    if (r != SVC_OK)
        snprintf(w->error, sizeof w->error, "%s", c.error[0] ? c.error : "handler failed");
    log_ctx_set(prev);
    return r;
}

static bool conn_broken(db_t *db)
{
    return db->kind == DB_PG && !pg_alive(db->pgc);
}

static bool db_broken(rt_t *rt)
{
    return conn_broken(rt->db);
}

/* Which of the n messages (ws[i]->m->env, ids[i] its id) are new, inside
 * the open transaction: fresh[i]. Through the inbox, which records the new
 * ones; or through the service's own record (def->seen), which the handlers
 * write: an id twice in the batch is new only the first time. 0 or -1. */
static int mark_fresh(rt_t *rt, db_t *db, work_t *const *ws, const char *const *ids, size_t n, bool *fresh)
{
    if (!rt->def->seen)
        return inbox_record_batch(db, rt->def->group, ids, n, fresh);
    const envelope_t **envs = xmalloc(n * sizeof *envs);
    for (size_t i = 0; i < n; i++)
        envs[i] = &ws[i]->m->env;
    int rc = rt->def->seen(db, envs, n, fresh, rt->def->arg);
    free(envs);
    if (rc != 0)
        return -1;
    strmap_t batch;
    strmap_init(&batch);
    for (size_t i = 0; i < n; i++) {
        bool created = false;
        strmap_put(&batch, ids[i], strlen(ids[i]), &created);
        fresh[i] = !fresh[i] && created;
    }
    strmap_free(&batch);
    return 0;
}

/* Rolls back what the batch wrote, then marks which messages are new in a
 * transaction of its own (mark_fresh). 0 or -1. */
static int restart_fresh(rt_t *rt, db_t *db, work_t *const *ws, const char *const *ids, size_t n, bool *fresh)
{
    db_rollback(db);
    return db_begin(db) != 0 ? -1 : mark_fresh(rt, db, ws, ids, n, fresh);
}

/* All at once. 1 = committed, 0 = a handler failed (rolled back), -1 = storage failure. */
static int apply_fast(rt_t *rt, db_t *db, work_t *ws, size_t n)
{
    if (db_begin(db) != 0)
        return -1;
    const char **ids = xmalloc(n * sizeof *ids);
    work_t **in = xmalloc(n * sizeof *in);
    bool *fresh = xcalloc(n, sizeof *fresh);
    const envelope_t **envs = xmalloc(n * sizeof *envs);
    json_object **pl = xmalloc(n * sizeof *pl);
    work_t **which = xmalloc(n * sizeof *which);
    int rc = -1;
    for (size_t i = 0; i < n; i++) {
        ids[i] = ws[i].m->env.id;
        in[i] = &ws[i];
    }
    /* most batches are all new: the cheap insert (or none, when the handlers
     * record the ids themselves), and only when it finds an id applied
     * before, the batch again with the step that tells which */
    bool rechecked = false;
    if (rt->def->seen && !rt->def->handle_batch) { /* handle() runs only for what seen() did not find */
        if (mark_fresh(rt, db, in, ids, n, fresh) != 0)
            goto out;
        rechecked = true;
    } else {
        /* held back to go with the batch handler's first statement when it
         * says it has one before any effect elsewhere: a copy then fails the
         * batch, and the slow pass tells which */
        bool hold = rt->def->handle_batch && rt->def->statement_first;
        int fr = rt->def->seen ? 0
                 : hold        ? inbox_hold_fresh(db, rt->def->group, ids, n)
                               : inbox_record_fresh(db, rt->def->group, ids, n);
        if (fr < 0)
            goto out;
        if (fr == 0) {
            for (size_t i = 0; i < n; i++)
                fresh[i] = true;
        } else {
            if (restart_fresh(rt, db, in, ids, n, fresh) != 0)
                goto out;
            rechecked = true;
        }
    }
again:;
    size_t nn = 0;
    for (size_t i = 0; i < n; i++)
        if (fresh[i]) {
            which[nn] = &ws[i];
            envs[nn] = &ws[i].m->env;
            pl[nn++] = ws[i].payload;
        }
    svc_result_t r = SVC_OK;
    if (nn && rt->def->handle_batch) {
        r = run_batch(rt, db, envs, pl, nn, which);
    } else {
        for (size_t i = 0; i < n && r == SVC_OK; i++)
            if (fresh[i]) {
                r = run_handler(rt, db, &ws[i]);
                if (r != SVC_OK) {
                    ws[i].failed_fast = true; /* an attempt: the slow pass does not run it again */
                    ws[i].result = r;
                }
            }
    }
    if (r != SVC_OK && rt->def->seen && !rechecked && !conn_broken(db)) {
        /* the handlers' own record may have found a copy: which ones, then
         * the rest; when none was there, the failure is the handler's */
        if (restart_fresh(rt, db, in, ids, n, fresh) != 0)
            goto out;
        rechecked = true;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += fresh[i];
        if (k < n) {
            for (size_t i = 0; i < n; i++)
                ws[i].failed_fast = false;
            goto again;
        }
    }
    if (r != SVC_OK) {
        rc = conn_broken(db) ? -1 : 0;
        goto out;
    }
    if (db_commit(db) != 0) {
        /* a write the handlers held back (db_defer) failed at the commit:
         * a handler's failure, found late; the slow pass finds whose */
        rc = conn_broken(db) ? -1 : 0;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        ws[i].done = true;
        metrics_add(fresh[i] ? rt->m_applied : rt->m_dup, 1);
        if (LOG_DEBUG >= log_min_level) /* one line per message, with its trace, when debugging */
            log_applied(rt, &ws[i], fresh[i] ? "applied" : "skipped (already applied)");
    }
    rc = 1;
out:
    if (rc != 1)
        db_rollback(db);
    free(ids);
    free(in);
    free(fresh);
    free(envs);
    free(pl);
    free(which);
    return rc;
}

/* One message under its own savepoint, inside the open transaction: skipped
 * behind an earlier failure of its aggregate; on failure marked failed and
 * its aggregate blocked. 0, or -1 on a storage failure. */
static int apply_one(rt_t *rt, db_t *db, work_t *w, strmap_t *blocked)
{
    if (w->done || w->failed)
        return 0; /* a suspect, applied (or failed) first */
    if (strmap_get(blocked, w->key, w->klen))
        return 0; /* an earlier message of this aggregate failed: keep order */
    if (w->failed_fast) {
        w->failed = true;
        strmap_put(blocked, w->key, w->klen, NULL);
        return 0;
    }
    if (db_savepoint(db) != 0)
        return -1;
    int rec;
    if (rt->def->seen) {
        bool was = false;
        const envelope_t *e = &w->m->env;
        rec = rt->def->seen(db, &e, 1, &was, rt->def->arg) != 0 ? -1 : was ? 0 : 1;
    } else {
        rec = inbox_record(db, rt->def->group, w->m->env.id);
    }
    if (rec < 0) {
        db_rollback_to(db);
        if (conn_broken(db))
            return -1;
        snprintf(w->error, sizeof w->error, "inbox write failed");
        w->result = SVC_RETRY;
        w->failed = true;
        strmap_put(blocked, w->key, w->klen, NULL);
        return 0;
    }
    svc_result_t r = rec == 0 ? SVC_OK : run_handler(rt, db, w);
    if (r == SVC_OK) {
        if (db_release(db) == 0) {
            w->done = true;
            metrics_add(rec == 0 ? rt->m_dup : rt->m_applied, 1);
            return 0;
        }
        if (conn_broken(db))
            return -1;
        /* a write it held back (db_defer) failed with the release */
        snprintf(w->error, sizeof w->error, "its writes failed (sqlstate %s)", pg_last_sqlstate());
        r = SVC_RETRY;
    }
    db_rollback_to(db);
    if (conn_broken(db))
        return -1;
    w->result = r;
    w->failed = true;
    strmap_put(blocked, w->key, w->klen, NULL);
    return 0;
}

/* Neither applied nor failed yet, and not behind a failure of its aggregate. */
static bool waiting(const work_t *w, strmap_t *blocked)
{
    return !w->done && !w->failed && !strmap_get(blocked, w->key, w->klen);
}

/* The messages of ws not blocked, inside the open transaction: all at once
 * through the batch handler under one savepoint; when that fails, the first
 * half and then the second (which sees what the first blocked), down to
 * single messages. One failing message in n costs about 2 log2(n) batch calls
 * instead of n single ones. 0, or -1 on a storage failure. */
static int apply_halves(rt_t *rt, db_t *db, work_t *ws, size_t n, strmap_t *blocked)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += waiting(&ws[i], blocked);
    /* the handler named the message its batch failed on: those before it
     * as one batch, it alone, those after it as one batch */
    for (size_t h = 0; h < n && m > 1 && n > 2; h++)
        if (ws[h].blamed && waiting(&ws[h], blocked)) {
            ws[h].blamed = false;
            if (apply_halves(rt, db, ws, h, blocked) != 0 || apply_one(rt, db, &ws[h], blocked) != 0)
                return -1;
            return apply_halves(rt, db, ws + h + 1, n - h - 1, blocked);
        }
    if (m <= 1 || n <= 2) {
        for (size_t i = 0; i < n; i++)
            if (apply_one(rt, db, &ws[i], blocked) != 0)
                return -1;
        return 0;
    }
    const char **ids = xmalloc(m * sizeof *ids);
    work_t **in = xmalloc(m * sizeof *in);
    bool *fresh = xcalloc(m, sizeof *fresh);
    const envelope_t **envs = xmalloc(m * sizeof *envs);
    json_object **pl = xmalloc(m * sizeof *pl);
    work_t **which = xmalloc(m * sizeof *which);
    size_t k = 0, nn = 0;
    for (size_t i = 0; i < n; i++)
        if (waiting(&ws[i], blocked)) {
            in[k] = &ws[i];
            ids[k++] = ws[i].m->env.id;
        }
    int rc = -1;
    if (db_savepoint(db) != 0)
        goto out;
    svc_result_t r = SVC_RETRY;
    if (mark_fresh(rt, db, in, ids, m, fresh) == 0) {
        for (size_t i = 0; i < m; i++)
            if (fresh[i]) {
                which[nn] = in[i];
                envs[nn] = &in[i]->m->env;
                pl[nn++] = in[i]->payload;
            }
        r = nn ? run_batch(rt, db, envs, pl, nn, which) : SVC_OK;
    }
    if (r == SVC_OK && db_release(db) != 0) {
        if (conn_broken(db))
            goto out;
        r = SVC_RETRY; /* a write held back (db_defer) failed with the release: halves, as for a failure */
    }
    if (r == SVC_OK) {
        for (size_t i = 0; i < m; i++) {
            in[i]->done = true;
            metrics_add(fresh[i] ? rt->m_applied : rt->m_dup, 1);
        }
        rc = 0;
        goto out;
    }
    db_rollback_to(db);
    if (conn_broken(db))
        goto out;
    bool named = false;
    for (size_t i = 0; i < nn && !named; i++)
        named = which[i]->blamed;
    if (named) /* split at the message the handler named */
        rc = apply_halves(rt, db, ws, n, blocked);
    else
        rc = apply_halves(rt, db, ws, n / 2, blocked) != 0 || apply_halves(rt, db, ws + n / 2, n - n / 2, blocked) != 0
                 ? -1
                 : 0;
out:
    free(ids);
    free(in);
    free(fresh);
    free(envs);
    free(pl);
    free(which);
    return rc;
}

/* Locks the sequence rows (bus.aggregate_seq) of the aggregates of ws[0..n)
 * in the order outbox_append_many takes them (svc_def_t.lock_aggregates).
 * Before any savepoint: a lock taken inside one is released with it. */
static int lock_aggregates(db_t *db, const work_t *ws, size_t n)
{
    pg_array_t a[2] = {{0}};
    pg_array_begin(&a[0], PG_OID_TEXT, n);
    pg_array_begin(&a[1], PG_OID_TEXT, n);
    for (size_t i = 0; i < n; i++) {
        pg_array_text(&a[0], ws[i].m->env.tenant);
        pg_array_text(&a[1], ws[i].m->env.aggregate_id);
    }
    const char *vals[2];
    int lens[2], fmts[2];
    pg_array_params(a, 2, (uint32_t)n, vals, lens, fmts);
    PGresult *r = db_exec_params_bin(db,
                                     "SELECT 1 FROM bus.aggregate_seq WHERE (tenant, aggregate_id) IN"
                                     " (SELECT * FROM unnest($1::text[], $2::text[]))"
                                     " ORDER BY tenant COLLATE \"C\", aggregate_id COLLATE \"C\" FOR UPDATE",
                                     2, vals, lens, fmts, NULL);
    pg_array_free(&a[0]);
    pg_array_free(&a[1]);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* After the all-at-once pass failed, or when a message of the batch failed
 * before: halves with the batch handler, or one savepoint per message. A
 * message that failed before (the first of its aggregate in the batch) goes
 * first, under a savepoint of its own, so that its next failure does not
 * fail the batch around it again. 0 = committed, -1 = storage failure. */
static int apply_slow(rt_t *rt, db_t *db, work_t *ws, size_t n, strmap_t *blocked)
{
    if (db_begin(db) != 0)
        return -1;
    if (rt->def->lock_aggregates && db->kind == DB_PG && lock_aggregates(db, ws, n) != 0)
        goto broken;
    if (rt->def->handle_batch) {
        for (size_t i = 0; i < n; i++)
            if (ws[i].suspect && apply_one(rt, db, &ws[i], blocked) != 0)
                goto broken;
        if (apply_halves(rt, db, ws, n, blocked) != 0)
            goto broken;
    } else {
        for (size_t i = 0; i < n; i++)
            if (apply_one(rt, db, &ws[i], blocked) != 0)
                goto broken;
    }
    if (db_commit(db) != 0)
        goto broken_committed;
    for (size_t i = 0; i < n && LOG_DEBUG >= log_min_level; i++)
        if (ws[i].done)
            log_applied(rt, &ws[i], "applied after a failure in its batch");
    return 0;
broken:
    db_rollback(db);
broken_committed:
    for (size_t i = 0; i < n; i++)
        ws[i].done = ws[i].failed = false;
    return -1;
}

/* The pending-list scan comes back when the earliest failure is due. */
static void schedule_failures(rt_t *rt)
{
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&rt->failures, &i, &k, NULL, &v);) {
        failure_t *f = v;
        if (f->due_ms < rt->pel_due_ms)
            rt->pel_due_ms = f->due_ms;
    }
}

/* All at once, then one by one when a handler failed; a batch with a
 * message that failed before goes the slow way at once. */
static _Atomic uint64_t attempts;
static _Thread_local uint64_t attempt_now;

uint64_t svc_attempt(void)
{
    return attempt_now;
}

void svc_tried_remember(recent_t *mem, uint64_t attempt, const char *key, svc_result_t r, int outcome,
                        const char *detail, const char *error)
{
    if (attempt == 0)
        return;
    svc_tried_t t = {.attempt = attempt, .r = r, .outcome = outcome};
    snprintf(t.detail, sizeof t.detail, "%s", detail ? detail : "");
    snprintf(t.error, sizeof t.error, "%s", error ? error : "");
    recent_put(mem, key, &t);
}

bool svc_tried_recall(recent_t *mem, uint64_t attempt, const char *key, svc_tried_t *out)
{
    return attempt != 0 && recent_get(mem, key, out) && out->attempt == attempt;
}

static int apply(rt_t *rt, db_t *db, work_t *ws, size_t n, strmap_t *blocked)
{
    attempt_now = atomic_fetch_add(&attempts, 1) + 1;
    for (size_t i = 0; i < n; i++)
        if (ws[i].suspect)
            return apply_slow(rt, db, ws, n, blocked);
    int rc = apply_fast(rt, db, ws, n);
    if (rc == 0)
        rc = apply_slow(rt, db, ws, n, blocked);
    return rc;
}

static void *lane_main(void *arg)
{
    lane_t *l = arg;
    rt_t *rt = l->rt;
    pthread_mutex_lock(&rt->lane_mu);
    for (;;) {
        while (!l->quit && !l->busy)
            pthread_cond_wait(&rt->lane_cv, &rt->lane_mu);
        if (l->quit)
            break;
        pthread_mutex_unlock(&rt->lane_mu);
        int rc = l->db ? apply(rt, l->db, l->ws, l->n, l->blocked) : -1;
        pthread_mutex_lock(&rt->lane_mu);
        l->rc = rc;
        l->busy = false;
        pthread_cond_broadcast(&rt->lane_cv);
    }
    pthread_mutex_unlock(&rt->lane_mu);
    return NULL;
}

/* Messages per lane before another lane is worth its transaction: each
 * lane commits on its own, and a transaction costs PostgreSQL much the same
 * whatever it holds, so a batch of a few messages split four ways cost four
 * commits where one does (bench_shop: PostgreSQL CPU per payment is about
 * four times higher at 250 payments/s, in small batches, than saturated).
 * A batch on two lanes is done when the later of two threads has committed:
 * with 16 here, the shop flow's batches of about 20 went on two lanes, and
 * its end-to-end p99 at 1,000 payments/s was 93-159 ms beside 43-65 ms with
 * 64 (five alternating pairs), at the same CPU per payment. Large batches
 * (a backlog) still spread over every lane. */
#define LANE_MIN_MESSAGES 64

static uint32_t lane_of(size_t nl, const char *key, size_t klen)
{
    uint32_t h = 2166136261u; /* FNV-1a over topic, tenant and aggregate */
    for (size_t i = 0; i < klen; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h % (uint32_t)nl;
}

/* Applies ws on as many lanes as its size warrants (LANE_MIN_MESSAGES), each
 * lane the messages of its aggregates in batch order; the lanes' blocked
 * aggregates are merged back. Which lane an aggregate takes may differ from
 * one batch to the next: a batch is applied completely before the next. -1
 * when any lane had a storage failure (its messages stay pending; the other
 * lanes' commits stand). */
static int apply_lanes(rt_t *rt, work_t *ws, size_t n, strmap_t *blocked)
{
    size_t nl = (n + LANE_MIN_MESSAGES - 1) / LANE_MIN_MESSAGES;
    if (nl > rt->nlanes)
        nl = rt->nlanes;
    if (nl <= 1)
        return apply(rt, rt->db, ws, n, blocked);
    work_t *sorted = xmalloc(n * sizeof *sorted);
    uint32_t *which = xmalloc(n * sizeof *which);
    size_t *start = xcalloc(nl + 1, sizeof *start);
    for (size_t i = 0; i < n; i++) {
        which[i] = lane_of(nl, ws[i].key, ws[i].klen);
        start[which[i] + 1]++;
    }
    for (size_t k = 0; k < nl; k++)
        start[k + 1] += start[k];
    size_t *fill = xmalloc(nl * sizeof *fill);
    memcpy(fill, start, nl * sizeof *fill);
    for (size_t i = 0; i < n; i++)
        sorted[fill[which[i]]++] = ws[i]; /* stable: batch order within a lane */
    strmap_t *lb = xcalloc(nl, sizeof *lb);
    for (size_t k = 0; k < nl; k++)
        strmap_init(&lb[k]);
    const char *key;
    size_t klen;
    for (size_t i = 0; strmap_next(blocked, &i, &key, &klen, NULL);)
        strmap_put(&lb[lane_of(nl, key, klen)], key, klen, NULL);

    pthread_mutex_lock(&rt->lane_mu);
    for (size_t k = 1; k < nl; k++) {
        lane_t *l = &rt->lanes[k];
        l->ws = sorted + start[k];
        l->n = start[k + 1] - start[k];
        l->blocked = &lb[k];
        l->rc = 0;
        l->busy = l->n > 0;
    }
    pthread_cond_broadcast(&rt->lane_cv);
    pthread_mutex_unlock(&rt->lane_mu);
    int rc = start[1] > 0 ? apply(rt, rt->db, sorted, start[1], &lb[0]) : 0;
    pthread_mutex_lock(&rt->lane_mu);
    for (size_t k = 1; k < nl; k++) {
        while (rt->lanes[k].busy)
            pthread_cond_wait(&rt->lane_cv, &rt->lane_mu);
        if (rt->lanes[k].rc < 0)
            rc = -1;
    }
    pthread_mutex_unlock(&rt->lane_mu);

    /* back in batch order: ws[i] came from sorted[...] in the same order */
    memcpy(fill, start, nl * sizeof *fill);
    for (size_t i = 0; i < n; i++)
        ws[i] = sorted[fill[which[i]]++];
    for (size_t k = 0; k < nl; k++) {
        for (size_t i = 0; strmap_next(&lb[k], &i, &key, &klen, NULL);)
            strmap_put(blocked, key, klen, NULL);
        strmap_free(&lb[k]);
    }
    free(lb);
    free(fill);
    free(start);
    free(which);
    free(sorted);
    return rc;
}

/* Hands def->committed the messages of ws that are done (their transaction
 * committed), in batch order. */
static void tell_committed(rt_t *rt, const work_t *ws, size_t n)
{
    const envelope_t **es = xmalloc((n ? n : 1) * sizeof *es);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (ws[i].done)
            es[k++] = &ws[i].m->env;
    if (k)
        rt->def->committed(es, k, rt->def->arg);
    free(es);
}

static void lanes_close(rt_t *rt)
{
    for (size_t k = 1; k < rt->nlanes; k++) {
        db_close(rt->lanes[k].db);
        rt->lanes[k].db = NULL;
    }
}

static void lanes_stop(rt_t *rt)
{
    pthread_mutex_lock(&rt->lane_mu);
    for (size_t k = 1; k < rt->nlanes; k++)
        rt->lanes[k].quit = true;
    pthread_cond_broadcast(&rt->lane_cv);
    pthread_mutex_unlock(&rt->lane_mu);
    for (size_t k = 1; k < rt->nlanes; k++)
        if (rt->lanes[k].started)
            pthread_join(rt->lanes[k].thread, NULL);
    lanes_close(rt);
    free(rt->lanes);
    pthread_mutex_destroy(&rt->lane_mu);
    pthread_cond_destroy(&rt->lane_cv);
}

/* Opens the lanes' connections that are down. 0 when every lane has one. */
static int lanes_connect(rt_t *rt)
{
    for (size_t k = 1; k < rt->nlanes; k++) {
        lane_t *l = &rt->lanes[k];
        if (l->db && conn_broken(l->db)) {
            db_close(l->db);
            l->db = NULL;
        }
        if (!l->db) {
            char *err = NULL;
            if (!(l->db = db_open_pg(rt->o->database_url, rt->def->group, &err))) {
                log_warn("service %s: lane %zu: postgres unavailable: %s", rt->def->group, k, err);
                free(err);
                return -1;
            }
            l->db->lane = (int)k;
            if (db_index_scans_only(l->db) != 0) {
                db_close(l->db);
                l->db = NULL;
                return -1;
            }
        }
    }
    return 0;
}

/* The entries a pass read but did not attempt (left waiting behind a failure
 * or for their retry), or whose attempt was put off (SVC_DEFER): their
 * delivery counts are set back by the one this read added, so that a count
 * keeps meaning "deliveries that may have ended a worker", which is what the
 * crash rule (crash_deliveries) reads after a restart. Without it, a
 * provider outage of a few minutes made every payment waiting on it look
 * like a message that had killed 25 workers, and the first restart
 * dead-lettered them all. Best effort: a failure only leaves the counts. */
static void set_back(rt_t *rt, const bus_msg_t *const *ms, size_t n)
{
    char(*ids)[BUS_ID_MAX] = xmalloc((n ? n : 1) * sizeof *ids);
    uint32_t *counts = xmalloc((n ? n : 1) * sizeof *counts);
    bool *done = xcalloc(n ? n : 1, sizeof *done);
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        size_t k = 0;
        for (size_t j = i; j < n; j++) {
            if (done[j] || strcmp(ms[j]->stream, ms[i]->stream) != 0)
                continue;
            done[j] = true;
            memcpy(ids[k], ms[j]->entry_id, BUS_ID_MAX);
            counts[k++] = ms[j]->deliveries - 1;
        }
        if (bus_set_deliveries(rt->bus, ms[i]->stream, rt->def->group, rt->o->consumer, (const char(*)[BUS_ID_MAX])ids,
                               counts, k) != 0)
            log_debug("service %s: delivery counts of %zu entries of %s not set back", rt->def->group, k,
                      ms[i]->stream);
    }
    free(ids);
    free(counts);
    free(done);
}

/* Entries left pending on purpose (acknowledgements dropped or not sent):
 * the pending list is read again within DROPPED_SCAN_MS. */
static void scan_soon(rt_t *rt)
{
    int64_t at = clock_mono_ms() + DROPPED_SCAN_MS;
    if (rt->pel_due_ms > at)
        rt->pel_due_ms = at;
}

/* Whether a batch begun now commits asynchronously: when the gate can vouch
 * for it (its connection is older); else, while the gate is down, it
 * commits synchronously and is acknowledged at once. Every connection's
 * next transactions are told. Lanes are idle here. */
static bool go_async(rt_t *rt, int64_t began_us)
{
    bool on = rt->gate && !rt->memory && ackgate_ready(rt->gate, began_us);
    if (rt->db)
        db_commit_async(rt->db, on);
    for (size_t k = 1; k < rt->nlanes; k++)
        if (rt->lanes[k].db)
            db_commit_async(rt->lanes[k].db, on);
    return on;
}

/* pre: the batch's payloads parsed by the read-ahead (taken from it), or NULL. */
static int process(rt_t *rt, bus_batch_t *bt, strmap_t *blocked, reader_parsed_t *pre)
{
    int stored = 0; /* -1: a lane could not store its part */
    int64_t t0 = clock_mono_us();
    int64_t began = ackgate_now_us();
    bool gated = go_async(rt, began);
    work_t *ws = xcalloc(bt->n + 1, sizeof *ws);
    size_t nw = 0;
    const bus_msg_t **back = xmalloc((bt->n + 1) * sizeof *back); /* set_back */
    size_t nback = 0;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < bt->n; i++) {
        bus_msg_t *m = &bt->msgs[i];
        if (m->missing) {
            metrics_add(rt->m_missing, 1);
            log_warn("service %s: pending entry %s of %s has no payload (trimmed or deleted); dropped", rt->def->group,
                     m->entry_id, m->stream);
            failure_drop(rt, m);
            ack_later(rt, m);
            continue;
        }
        if (m->bad) {
            char why[160];
            snprintf(why, sizeof why, "malformed entry: %s", m->why ? m->why : "undecodable");
            if (dead_letter(rt, m, why) != 0)
                rt->pel_due_ms = 0;
            continue;
        }
        if (envelope_type_in(rt->def->ignored_types, m->env.type)) {
            metrics_add(rt->m_ignored, 1); /* nothing to apply: no transaction, no inbox row */
            failure_drop(rt, m);
            ack_later(rt, m);
            continue;
        }
        /* the topic's, not the stream's: a message sent back from the DLQ
         * (its group's replay stream) keeps its aggregate's place */
        size_t tl = strlen(m->env.tenant), al = strlen(m->env.aggregate_id), sl = strlen(m->env.topic);
        char *key = xmalloc(sl + tl + al + 3);
        memcpy(key, m->env.topic, sl + 1);
        memcpy(key + sl + 1, m->env.tenant, tl + 1);
        memcpy(key + sl + tl + 2, m->env.aggregate_id, al);
        size_t klen = sl + tl + al + 2;
        failure_t *f = failure_get(rt, m);
        if ((f && f->due_ms > now) || strmap_get(blocked, key, klen)) {
            strmap_put(blocked, key, klen, NULL);
            free(key);
            if (m->deliveries > 0)
                back[nback++] = m;
            continue; /* stays pending; the pending-list scan comes back to it */
        }
        char no;
        if (rt->ndead && !f && envelope_stream_is_topic(m->stream) && recent_get(&rt->dead, m->env.id, &no)) {
            /* its copy is in the DLQ: `ecomctl dlq replay` sends it back (on
             * the replay stream, applied as any other message) */
            log_warn("service %s: another entry (%s) of a message dead-lettered here msg_id=%s; acknowledged",
                     rt->def->group, m->entry_id, m->env.id);
            metrics_add(rt->m_dup, 1);
            failure_drop(rt, m);
            ack_later(rt, m);
            free(key);
            continue;
        }
        const char *reject = NULL;
        char why[200];
        json_object *payload = NULL;
        /* many deliveries with no failure on record here: earlier workers died on it */
        if (!f && m->deliveries > (uint32_t)rt->crash_deliveries) {
            snprintf(why, sizeof why, "delivered %u times without completing", m->deliveries);
            reject = why;
        } else if (!type_accepted(rt->def, m->env.type)) {
            snprintf(why, sizeof why, "unknown type %s for %s", m->env.type, rt->def->group);
            reject = why;
        } else {
            const char *jwhy = NULL;
            bool parsed;
            if (pre && i < pre->n) {
                payload = pre->payload[i]; /* borrowed: the read-ahead frees it, on its thread */
                jwhy = pre->error[i];
                parsed = rt->def->payload_unread ? !jwhy : payload != NULL;
            } else if (rt->def->payload_unread) {
                parsed = json_validate(m->env.payload, strlen(m->env.payload), &jwhy) == 0;
            } else {
                parsed = json_parse_strict(m->env.payload, strlen(m->env.payload), &payload, &jwhy) == 0;
            }
            if (!parsed) {
                snprintf(why, sizeof why, "unparsable payload: %s", jwhy ? jwhy : "malformed JSON");
                reject = why;
            }
        }
        if (reject) {
            if (dead_letter(rt, m, reject) != 0)
                rt->pel_due_ms = 0;
            free(key);
            continue;
        }
        ws[nw++] = (work_t){.m = m, .payload = payload, .key = key, .klen = klen, .suspect = f != NULL};
    }

    if (nw) {
        int rc = apply_lanes(rt, ws, nw, blocked);
        if (rc < 0) {
            stored = -1;
            health_report(store_name(rt), false, 0);
            /* What did not commit stays pending, older than anything a new
             * read returns (the read-ahead may hold the next messages of
             * its aggregates already): the pending list is read first, as
             * after a failed read. */
            rt->pel_due_ms = 0;
        } else {
            health_report(store_name(rt), true, (double)(clock_mono_us() - t0) / 1000.0);
        }
        /* after a storage failure only the lanes that committed have done
         * or failed messages (a lane that failed leaves its own neither) */
        if (rt->def->committed)
            tell_committed(rt, ws, nw);
        int64_t tnow = clock_now_ms();
        for (size_t i = 0; i < nw; i++) {
            work_t *w = &ws[i];
            if (w->done) {
                failure_drop(rt, w->m);
                ack_later(rt, w->m);
                metrics_observe(rt->m_e2e_s, (double)(tnow - w->m->env.ts) / 1000.0);
            } else if (w->failed) {
                failure_t *f = failure_bump(rt, w);
                log_ctx_t lc;
                char trace[40];
                svc_log_ctx(&lc, trace, &w->m->env);
                const log_ctx_t *prev = log_ctx_set(&lc);
                if (w->result == SVC_DEFER) {
                    metrics_add(rt->m_deferred, 1);
                    log_info("service %s: deferred (%s); retrying later", rt->def->group, w->error);
                } else {
                    metrics_add(rt->m_failed, 1);
                    log_warn("service %s: handler failed (attempt %d of %d): %s", rt->def->group, f->count,
                             rt->o->max_attempts, w->error);
                }
                log_ctx_set(prev);
                if (w->result == SVC_REJECT || (w->result != SVC_DEFER && f->count >= rt->o->max_attempts)) {
                    char reason[320];
                    snprintf(reason, sizeof reason, "%s after %d attempt%s: %s",
                             w->result == SVC_REJECT ? "rejected" : "failed", f->count, f->count > 1 ? "s" : "",
                             w->error);
                    /* 0: messages waiting behind it can go now */
                    (void)dead_letter(rt, w->m, reason);
                    rt->pel_due_ms = 0;
                }
            }
            /* neither done nor failed: waiting behind an earlier failure of its aggregate */
        }
        /* put off, or not reached (behind a failure of its aggregate): it did
         * not end a worker. After a storage failure, nothing: a lane's
         * messages then lose their marks, and one that breaks the connection
         * must go on counting toward the crash rule. */
        for (size_t i = 0; rc >= 0 && i < nw; i++)
            if (!ws[i].done && (!ws[i].failed || ws[i].result == SVC_DEFER) && ws[i].m->deliveries > 0)
                back[nback++] = ws[i].m;
    }
    /* with the store broken, the lease may be another worker's by now */
    if (nback && stored == 0 && !db_broken(rt))
        set_back(rt, back, nback);
    free(back);
    schedule_failures(rt);
    if (rt->reader && !gated && rt->flush_owed) {
        if (rt->db && !db_broken(rt) && ackgate_flush_on(db_pg(rt->db)) == 0) {
            rt->flush_owed = false;
        } else { /* not acknowledged: the entries stay pending, and come again */
            for (size_t i = 0; i < rt->nstreams; i++)
                rt->acks[i].n = 0;
            scan_soon(rt);
        }
    }
    rt->flush_owed = rt->flush_owed || gated;
    if (rt->reader)
        hand_acks(rt, gated, began);
    else if (flush_acks(rt) != 0) {
        health_report(bus_name(rt), false, 0);
        log_warn("service %s: acknowledgement failed; will retry", rt->def->group);
    }
    for (size_t i = 0; i < nw; i++) {
        if (!pre)
            json_object_put(ws[i].payload);
        free(ws[i].key);
    }
    free(ws);
    if (nw)
        metrics_observe(rt->m_batch_s, (double)(clock_mono_us() - t0) / 1e6);
    return stored;
}

/* The first entry of stream in bt, or NULL. */
static const char *first_of(const bus_batch_t *bt, const char *stream)
{
    for (size_t i = 0; bt && i < bt->n; i++)
        if (strcmp(bt->msgs[i].stream, stream) == 0)
            return bt->msgs[i].entry_id;
    return NULL;
}

/* Scans the consumer's own pending entries, oldest first, a page at a time.
 * With `ahead` (a read's batch, delivered and so pending too, applied by
 * the caller right after): only the entries older than its first of each
 * stream, in pages that start small (what is pending before a fresh read is
 * usually a failed message and the few behind it). */
static int scan_pending(rt_t *rt, const bus_batch_t *ahead)
{
    rt->pel_due_ms = INT64_MAX;
    size_t page = rt->o->batch * PEL_PAGE_FACTOR;
    bus_batch_t bt = {0};
    int rc = 0;
    /* one for all streams: the replay stream comes first, and a message sent
     * back that is still failing holds its aggregate on the topic's stream */
    strmap_t blocked;
    strmap_init(&blocked);
    for (size_t s = 0; s < rt->nstreams && !stopping(rt); s++) {
        char after[BUS_ID_MAX] = "0";
        const char *stream = rt->streams[s];
        const char *bound = first_of(ahead, stream);
        size_t count = bound && page > 64 ? 64 : page;
        for (;;) {
            bus_batch_clear(&bt);
            if (bus_read_pending(rt->bus, rt->def->group, rt->o->consumer, stream, after, count, &bt) != 0) {
                rc = -1;
                break;
            }
            size_t got = bt.n;
            bool past = false; /* reached the read's own entries */
            for (size_t i = 0; bound && i < bt.n; i++)
                if (bus_entry_id_cmp(bt.msgs[i].entry_id, bound) >= 0) {
                    /* the read-ahead's own: applied after the scan, this read no attempt */
                    const bus_msg_t **cut = xmalloc((bt.n - i) * sizeof *cut);
                    size_t ncut = 0;
                    for (size_t k = i; k < bt.n; k++)
                        if (bt.msgs[k].deliveries > 0)
                            cut[ncut++] = &bt.msgs[k];
                    set_back(rt, cut, ncut);
                    free(cut);
                    for (size_t k = i; k < bt.n; k++)
                        envelope_clear(&bt.msgs[k].env);
                    bt.n = i;
                    past = true;
                    break;
                }
            if (bt.n == 0)
                break;
            snprintf(after, sizeof after, "%s", bt.msgs[bt.n - 1].entry_id);
            log_debug("service %s: %zu pending entries of %s up to %s", rt->def->group, bt.n, stream, after);
            if (process(rt, &bt, &blocked, NULL) != 0) {
                rc = -1; /* what did not commit stays pending: nothing newer goes before it */
                break;
            }
            if (past || got < count)
                break;
            count = count * 2 < page ? count * 2 : page;
        }
    }
    strmap_free(&blocked);
    bus_batch_free(&bt);
    schedule_failures(rt);
    if (rc != 0)
        rt->pel_due_ms = 0; /* no new entries before a scan succeeds (the caller backs off) */
    return rc;
}

/* Entries of the failure map whose aggregate must wait (for reads of new entries). */
static void blocked_from_failures(rt_t *rt, strmap_t *blocked)
{
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&rt->failures, &i, &k, NULL, &v);) {
        failure_t *f = v;
        strmap_put(blocked, f->agg_key, f->agg_klen, NULL);
    }
}

#define RECLAIM_MAX 10000 /* entries claimed per stream and call */
#define TAKEOVER_WATCH_MS 10000 /* how long a new holder checks for a previous one's late reads */

/* Claims the group's entries pending longer than min_idle, whoever holds
 * them, into this consumer's pending list (read by the next scan). 0; 1 when
 * a stream had RECLAIM_MAX of them (there may be more); -1 when a claim
 * failed, after which the pending list is due at once: a claim whose answer
 * was lost may have moved entries to us all the same. */
static int reclaim(rt_t *rt, int64_t min_idle)
{
    int rc = 0;
    bus_batch_t bt = {0};
    for (size_t s = 0; s < rt->nstreams; s++) {
        bus_batch_clear(&bt);
        if (bus_reclaim(rt->bus, rt->streams[s], rt->def->group, rt->o->consumer, min_idle, RECLAIM_MAX, &bt) != 0) {
            rc = -1;
            rt->pel_due_ms = 0;
            continue;
        }
        if (bt.n >= RECLAIM_MAX && rc == 0)
            rc = 1;
        size_t claimed = 0;
        for (size_t i = 0; i < bt.n; i++) {
            if (bt.msgs[i].missing) {
                metrics_add(rt->m_missing, 1);
                log_warn("service %s: reclaimed entry %s of %s has no payload (trimmed); dropped", rt->def->group,
                         bt.msgs[i].entry_id, rt->streams[s]);
            } else {
                claimed++;
            }
        }
        if (claimed) {
            log_info("service %s: reclaimed %zu pending entries of %s", rt->def->group, claimed, rt->streams[s]);
            rt->pel_due_ms = 0;
        }
    }
    bus_batch_free(&bt);
    return rc;
}

/* Whether other consumers of the group hold entries of our streams (a
 * previous holder that read on after losing the lease), or with active_ms
 * > 0, whether one of them read or claimed within active_ms: true also when
 * it cannot be told. */
static bool others_hold(rt_t *rt, int64_t active_ms)
{
    for (size_t s = 0; s < rt->nstreams; s++) {
        uint64_t pending = 0, active = 0;
        if (bus_group_others(rt->bus, rt->streams[s], rt->def->group, rt->o->consumer, active_ms, &pending, &active) !=
                0 ||
            pending > 0 || active > 0)
            return true;
    }
    return false;
}

/* Reports both dependencies for /ready, measured with a round trip each. */
/* Applies a read's batch of new entries, behind the aggregates whose
 * earlier messages wait on a failure; pre as process(). */
static void process_read(rt_t *rt, bus_batch_t *bt, reader_parsed_t *pre)
{
    strmap_t blocked;
    strmap_init(&blocked);
    blocked_from_failures(rt, &blocked);
    process(rt, bt, &blocked, pre);
    strmap_free(&blocked);
}

static void probe(rt_t *rt)
{
    int64_t t0 = clock_mono_us();
    bool ok = rt->memory || pg_exec(db_pg(rt->db), "SELECT 1") == 0;
    int64_t t1 = clock_mono_us();
    health_report(store_name(rt), ok, (double)(t1 - t0) / 1000.0);
    ok = bus_ping(rt->bus) == 0;
    health_report(bus_name(rt), ok, (double)(clock_mono_us() - t1) / 1000.0);
}

static bool try_lease(rt_t *rt)
{
    const char *p[] = {rt->def->group};
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, hashtext($1))", LOCK_LEASE);
    PGresult *r = pg_query(db_pg(rt->db), sql, 1, p);
    bool got = r && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return got;
}

static int connect_all(rt_t *rt)
{
    const svc_opts_t *o = rt->o;
    char *err = NULL;
    if (rt->db && db_broken(rt)) {
        db_close(rt->db);
        rt->db = NULL;
        lanes_close(rt); /* the lease went with it: no lane may write on */
    }
    if (!rt->db) {
        rt->lease = false;
        rt->db = rt->memory ? db_open_memory(o->mem) : db_open_pg(o->database_url, rt->def->group, &err);
        if (!rt->db) {
            log_warn("service %s: postgres unavailable: %s", rt->def->group, err);
            free(err);
            health_report(store_name(rt), false, 0);
            return -1;
        }
        /* handlers' lookups by arrays of keys run prepared (db_exec_lookup) */
        if (db_index_scans_only(rt->db) != 0) {
            db_close(rt->db);
            rt->db = NULL;
            health_report(store_name(rt), false, 0);
            return -1;
        }
    }
    if (rt->db && lanes_connect(rt) != 0) {
        health_report(store_name(rt), false, 0);
        return -1;
    }
    if (!rt->bus) {
        rt->bus = o->redis_url && *o->redis_url ? bus_open_redis(o->redis_url, &err) : bus_open_memory(o->membus);
        if (!rt->bus) {
            log_warn("service %s: redis unavailable: %s", rt->def->group, err);
            free(err);
            health_report(bus_name(rt), false, 0);
            return -1;
        }
    }
    return 0;
}

static void pass_ack(void *reader, const char *stream, char (*ids)[BUS_ID_MAX], size_t n)
{
    reader_ack(reader, stream, ids, n);
}

int svc_run(const svc_def_t *def, const svc_opts_t *o, atomic_bool *stop)
{
    rt_t rt = {.def = def, .o = o, .stop = stop, .dead = RECENT_INIT(4096, 1)};
    rt.memory = !(o->database_url && *o->database_url);
    rt.crash_deliveries = o->max_attempts + 20;
    strmap_init(&rt.failures);
    char labels[96];
    snprintf(labels, sizeof labels, "group=\"%s\"", def->group);
    rt.m_applied = metrics_counter("ecom_service_applied_total", "Messages applied by the handler", labels);
    rt.m_dup = metrics_counter("ecom_service_duplicates_total", "Deliveries skipped by the inbox", labels);
    rt.m_failed = metrics_counter("ecom_service_failures_total", "Handler failures (retried)", labels);
    rt.m_deferred =
        metrics_counter("ecom_service_deferred_total", "Messages deferred: a dependency was unavailable", labels);
    rt.m_dlq = metrics_counter("ecom_service_dead_letters_total", "Messages moved to the DLQ", labels);
    rt.m_missing = metrics_counter("ecom_service_missing_payload_total", "Pending entries without payload", labels);
    rt.m_ignored =
        metrics_counter("ecom_service_ignored_total", "Messages of types the service has nothing to do for", labels);
    rt.m_batch_s = metrics_histogram("ecom_service_batch_seconds", "Time to apply one batch", labels);
    rt.m_e2e_s = metrics_histogram("ecom_service_end_to_end_seconds", "Outbox append to handler commit", labels);
    health_require(store_name(&rt));
    health_require(bus_name(&rt));
    /* old inbox ids go on a thread of their own, while this consumer holds
     * the group's lease: a chunk of the delete stalled the loop, and a chunk
     * a minute fell behind a steady flow */
    atomic_bool cleaner = rt.memory; /* memory: a group has one consumer */
    char janitor_app[96];
    snprintf(janitor_app, sizeof janitor_app, "%s-cleanup", def->group);
    janitor_t *janitor = janitor_start(&(janitor_opts_t){.database_url = o->database_url,
                                                         .memory = o->mem,
                                                         .app_name = janitor_app,
                                                         .what = "bus.inbox",
                                                         .cleanup = inbox_cleanup,
                                                         .retain_s = o->inbox_retain_s,
                                                         .every_ms = CLEANUP_MS,
                                                         .on = &cleaner});
    log_info("service %s started as consumer %s (%s store, %s bus)", def->group, o->consumer, store_name(&rt),
             bus_name(&rt));

    rt.nlanes = !rt.memory && def->concurrent && o->lanes > 1 ? (size_t)o->lanes : 1;
    rt.lanes = xcalloc(rt.nlanes, sizeof *rt.lanes);
    pthread_mutex_init(&rt.lane_mu, NULL);
    pthread_cond_init(&rt.lane_cv, NULL);
    for (size_t k = 1; k < rt.nlanes; k++) {
        rt.lanes[k].rt = &rt;
        rt.lanes[k].started = pthread_create(&rt.lanes[k].thread, NULL, lane_main, &rt.lanes[k]) == 0;
        if (!rt.lanes[k].started) {
            log_warn("service %s: cannot start lane threads; applying on one connection", def->group);
            rt.nlanes = k;
            break;
        }
    }
    bus_batch_t bt = {0};
    reader_parsed_t parsed = {0};
    rt.redis = o->redis_url && *o->redis_url;
    const char **streams = NULL;
    while (!stopping(&rt)) {
        atomic_store(&cleaner, rt.memory || rt.lease);
        if (connect_all(&rt) != 0) {
            backoff(&rt);
            continue;
        }
        int64_t now = clock_mono_ms();
        if (now >= rt.next_probe) {
            rt.next_probe = now + 2000;
            probe(&rt);
        }
        if (!rt.memory && !rt.lease) {
            if (rt.reader && reader_outstanding(rt.reader)) {
                /* read while the lease was ours: the next holder claims those entries */
                (void)reader_take(rt.reader, &bt, &parsed);
                bus_batch_clear(&bt);
            }
            /* what was applied under the lease is acknowledged before standing by */
            if (rt.gate && ackgate_wait(rt.gate, ACK_WAIT_MS) != 0)
                log_debug("service %s: acknowledgements still held for the flush before standing by", def->group);
            if (rt.reader && reader_wait_acks(rt.reader, ACK_WAIT_MS) != 0)
                log_debug("service %s: acknowledgements still queued before standing by", def->group);
            if (!try_lease(&rt)) {
                nap(&rt, 1000); /* standby: another consumer of this group is active */
                continue;
            }
            rt.lease = true;
            log_info("service %s: holding the group lease", def->group);
            discover(&rt, now);
            rt.claim_due = true; /* the previous holder is gone: its pending entries are ours */
            /* another consumer that was reading lately may not know yet that
             * the lease is gone: watch for its late reads (a service that
             * starts alone, or as the consumer it was, skips the checks) */
            rt.watch_until_ms = others_hold(&rt, TAKEOVER_WATCH_MS) ? now + TAKEOVER_WATCH_MS : 0;
        }
        if (now >= rt.next_discover || rt.nstreams == 0) {
            discover(&rt, now);
            if (rt.nstreams == 0) {
                nap(&rt, 200);
                continue;
            }
        }
        if (rt.gate && ackgate_dropped(rt.gate))
            scan_soon(&rt); /* their entries are pending still: applied, or not */
        if (flush_acks(&rt) != 0) {
            health_report(bus_name(&rt), false, 0);
            if (bus_ensure(rt.bus) != 0)
                log_debug("service %s: bus reconnect failed", def->group);
            backoff(&rt);
            continue;
        }
        if (rt.claim_due) {
            /* Everything pending in the group, whoever holds it, before any new
             * entry: what the previous holder read is older than what a read
             * returns now. More than RECLAIM_MAX of a stream are claimed a
             * part at a time, the pending scan applying each part first. */
            int c = reclaim(&rt, 0);
            if (c < 0) {
                backoff(&rt);
                continue;
            }
            rt.claim_due = c > 0;
            rt.pel_due_ms = 0;
        }
        if (now >= rt.next_reclaim) {
            rt.next_reclaim = now + o->reclaim_idle_ms / 2;
            (void)reclaim(&rt, o->reclaim_idle_ms); /* a failure makes the pending list due */
        }
        if (now >= rt.pel_due_ms) {
            /* a read in flight holds entries that are pending already: the
             * scan applies the pending entries older than them first (a
             * claim's, a failure's), then the read's batch is applied: in
             * order, and nothing delivered a second time */
            bool ahead = rt.reader && reader_outstanding(rt.reader) && reader_take(rt.reader, &bt, &parsed) == 0 &&
                         bt.n > 0;
            if (!ahead)
                bus_batch_clear(&bt);
            /* what the read-ahead still has to acknowledge would be delivered
             * again by the scan (the inbox would skip it, but its delivery
             * count would grow) */
            if (rt.gate && ackgate_wait(rt.gate, ACK_WAIT_MS) != 0)
                log_debug("service %s: acknowledgements still held for the flush before the pending scan", def->group);
            if (rt.reader && reader_wait_acks(rt.reader, ACK_WAIT_MS) != 0)
                log_debug("service %s: acknowledgements still queued before the pending scan", def->group);
            if (scan_pending(&rt, ahead ? &bt : NULL) != 0) {
                /* the read's batch stays pending: the next scan delivers it */
                bus_batch_clear(&bt);
                if (bus_ensure(rt.bus) != 0)
                    log_debug("service %s: bus reconnect failed", def->group);
                backoff(&rt);
                continue;
            }
            if (ahead && !stopping(&rt)) {
                log_debug("service %s: %zu entries read ahead applied after the pending scan", def->group, bt.n);
                /* the next read runs while it is applied, as on the way below
                 * (unless a retry is due at once, the next turn scanning
                 * again, or the service lingers over a short batch) */
                int64_t due = rt.pel_due_ms - clock_mono_ms();
                if (due > 0 && !(o->linger_ms > 0 && bt.n < o->batch)) {
                    streams = xrealloc(streams, rt.nstreams * sizeof *streams);
                    for (size_t i = 0; i < rt.nstreams; i++)
                        streams[i] = rt.streams[i];
                    reader_request(rt.reader, streams, rt.nstreams, o->batch,
                                   due < READ_AHEAD_BLOCK_MS ? (int)due : READ_AHEAD_BLOCK_MS);
                }
                process_read(&rt, &bt, &parsed);
            }
            bus_batch_clear(&bt);
            continue;
        }
        streams = xrealloc(streams, rt.nstreams * sizeof *streams);
        for (size_t i = 0; i < rt.nstreams; i++)
            streams[i] = rt.streams[i];
        int block = o->block_ms;
        if (rt.pel_due_ms != INT64_MAX && rt.pel_due_ms - now < block)
            block = (int)(rt.pel_due_ms - now) > 1 ? (int)(rt.pel_due_ms - now) : 1;
        if (rt.next_discover - now < block) /* a new topic's stream is not left waiting */
            block = rt.next_discover - now > 1 ? (int)(rt.next_discover - now) : 1;
        bus_batch_clear(&bt);
        int64_t t0 = clock_mono_us();
        if (rt.redis && !rt.reader) {
            char *err = NULL;
            if (!(rt.reader = reader_start(o->redis_url, def->group, o->consumer, def->ignored_types,
                                           def->payload_unread, &err))) {
                log_debug("service %s: no read-ahead (%s); reading in line", def->group, err);
                free(err);
            } else if (!rt.memory) {
                rt.gate = ackgate_start(o->database_url, def->group, pass_ack, rt.reader);
            }
        }
        int rrc;
        if (rt.reader) {
            if (!reader_outstanding(rt.reader))
                reader_request(rt.reader, streams, rt.nstreams, o->batch, block);
            rrc = reader_take(rt.reader, &bt, &parsed);
        } else {
            rrc = bus_read(rt.bus, def->group, o->consumer, streams, rt.nstreams, false, o->batch, block, &bt);
        }
        if (rrc != 0) {
            /* a read whose answer was lost (Redis restarted, the connection
             * broke) may have delivered entries to this consumer all the
             * same: they are in its pending list, older than anything a new
             * read returns, so the pending list is read first */
            rt.pel_due_ms = 0;
            health_report(bus_name(&rt), false, 0);
            if (bus_ensure(rt.bus) == 0) {
                /* the stream or group may have been deleted: create groups again */
                for (size_t i = 0; i < rt.nstreams; i++)
                    if (bus_group_create(rt.bus, rt.streams[i], def->group) != 0)
                        break;
            }
            backoff(&rt);
            continue;
        }
        rt.backoff_ms = 0;
        health_report(bus_name(&rt), true, (double)(clock_mono_us() - t0) / 1000.0);
        if (bt.n == 0)
            continue;
        log_debug("service %s: read %zu new entries (first %s)", def->group, bt.n, bt.msgs[0].entry_id);
        if (!rt.memory && now < rt.watch_until_ms && others_hold(&rt, 0)) {
            /* what another consumer read after our claim is older than this
             * batch: claim it, apply it (the pending scan, bounded by the
             * batch), then the batch; on a failure the batch stays pending */
            log_info("service %s: another consumer still holds entries; claiming them first", def->group);
            int c = reclaim(&rt, 0);
            if (c >= 0)
                rt.claim_due = c > 0;
            if (c < 0 || scan_pending(&rt, &bt) != 0) {
                bus_batch_clear(&bt);
                rt.pel_due_ms = 0;
                backoff(&rt);
                continue;
            }
            process_read(&rt, &bt, rt.reader ? &parsed : NULL);
            continue;
        }
        int64_t read_at = clock_mono_ms();
        bool linger = o->linger_ms > 0 && bt.n < o->batch;
        /* the next read runs while this batch is applied (short block: a
         * retry that falls due meanwhile waits at most that long), unless
         * it is to wait for more entries to arrive */
        if (rt.reader && !stopping(&rt) && rt.pel_due_ms > now && !linger)
            reader_request(rt.reader, streams, rt.nstreams, o->batch,
                           block < READ_AHEAD_BLOCK_MS ? block : READ_AHEAD_BLOCK_MS);
        process_read(&rt, &bt, rt.reader ? &parsed : NULL);
        if (linger)
            nap(&rt, read_at + o->linger_ms - clock_mono_ms());
    }
    /* a read-ahead that came back while stopping is applied too, while the
     * lease is ours, unless the pending list is due: it may hold earlier
     * messages of the same aggregates (a failed read, a lane's storage
     * failure), and the next holder reads it before anything newer */
    if (rt.reader && reader_outstanding(rt.reader) && reader_take(rt.reader, &bt, &parsed) == 0 && bt.n && rt.db &&
        (rt.memory || rt.lease) && !db_broken(&rt) && rt.pel_due_ms > clock_mono_ms())
        process_read(&rt, &bt, &parsed);
    ackgate_stop(rt.gate); /* what it vouches for goes to the read-ahead, which sends it as it stops */
    reader_stop(rt.reader);
    reader_parsed_free(&parsed);
    lanes_stop(&rt);
    /* finish: acknowledgements of applied work go out before we leave */
    if (rt.bus && flush_acks(&rt) != 0)
        log_warn("service %s: some acknowledgements were not sent; the inbox absorbs the redelivery", def->group);
    janitor_stop(janitor);
    log_info("service %s stopped", def->group);
    bus_batch_free(&bt);
    free(streams);
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&rt.failures, &i, &k, NULL, &v);) {
        failure_t *f = v;
        free(f->agg_key);
        free(f);
    }
    strmap_free(&rt.failures);
    recent_clear(&rt.dead);
    for (size_t i = 0; i < rt.nstreams; i++) {
        free(rt.acks[i].ids);
        free(rt.streams[i]);
    }
    free(rt.acks);
    free(rt.streams);
    db_close(rt.db);
    bus_close(rt.bus);
    return 0;
}
