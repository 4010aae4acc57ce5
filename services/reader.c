/* services/reader.c: the runtime's read-ahead thread (see reader.h). */
#include "services/reader.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOP_UP_AFTER_US 200 /* a read result older than this is topped up at take */
/* Acknowledgements wait this long for a read to go with (the next request
 * usually comes within microseconds of them) before the thread sends them
 * on their own. */
#define ACK_LINGER_US 2000

/* Acknowledgements to send, in the order handed over. */
typedef struct ack_job {
    struct ack_job *next;
    char stream[BUS_STREAM_MAX];
    size_t n;
    char (*ids)[BUS_ID_MAX];
} ack_job_t;

struct svc_reader {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bus_t *bus;
    char *group, *consumer;
    const char *const *skip_types; /* payloads not parsed */
    bool validate_only;            /* payloads checked, not parsed */
    /* the request; guarded by mu */
    bool requested; /* a read to do */
    bool finished;  /* its result is in bt/parsed/rc */
    bool quit;
    char **streams;
    size_t ns;
    size_t count;
    int block_ms;
    /* the result */
    int64_t finished_us; /* when the read came back */
    int rc;
    bus_batch_t bt;
    reader_parsed_t parsed;
    /* acknowledgements handed over, guarded by mu: they go in the same round
     * trip as the next read (the thread's, or a top-up at take), or on their
     * own once they waited ACK_LINGER_US or someone waits for them; after a
     * failed send they wait for the next request */
    ack_job_t *acks, *acks_tail;
    int64_t acks_since_us; /* when the oldest queued one was handed over */
    bool acks_now;         /* reader_wait_acks waits: send without a read */
    bool acks_held;        /* the last send failed: try again with the next request */
    bool sending;          /* the thread is sending acknowledgements it took (it owns the connection) */
};

/* Sends the jobs in order; returns those that failed (in order, to retry). */
static ack_job_t *send_acks(svc_reader_t *r, ack_job_t *jobs)
{
    ack_job_t *failed = NULL, **tail = &failed;
    while (jobs) {
        ack_job_t *j = jobs;
        jobs = j->next;
        j->next = NULL;
        if (bus_ack_ids(r->bus, j->stream, r->group, (const char (*)[BUS_ID_MAX])j->ids, j->n) == 0) {
            free(j->ids);
            free(j);
        } else {
            *tail = j;
            tail = &j->next;
        }
    }
    return failed;
}

/* A read of new entries with the jobs' acknowledgements in its round trip
 * (bus_read_acking). Frees the jobs that went through and leaves the others,
 * in order, in *jobs; returns the read's result. */
static int read_acking(svc_reader_t *r, ack_job_t **jobs, size_t count, int block_ms, bus_batch_t *out)
{
    size_t n = 0;
    for (const ack_job_t *j = *jobs; j; j = j->next)
        n++;
    bus_acks_t stack[8], *acks = n <= 8 ? stack : xcalloc(n, sizeof *acks);
    size_t i = 0;
    for (const ack_job_t *j = *jobs; j; j = j->next, i++)
        acks[i] = (bus_acks_t){.stream = j->stream, .ids = (const char(*)[BUS_ID_MAX])j->ids, .n = j->n};
    int rc = bus_read_acking(r->bus, r->group, r->consumer, (const char *const *)r->streams, r->ns, count, block_ms,
                             acks, n, out);
    ack_job_t *failed = NULL, **tail = &failed, *j = *jobs;
    for (i = 0; j; i++) {
        ack_job_t *next = j->next;
        j->next = NULL;
        if (acks[i].done) {
            free(j->ids);
            free(j);
        } else {
            *tail = j;
            tail = &j->next;
        }
        j = next;
    }
    *jobs = failed;
    if (acks != stack)
        free(acks);
    return rc;
}

/* Puts jobs (failed sends, in order) back before what was handed over since.
 * Under mu. */
static void requeue_acks(svc_reader_t *r, ack_job_t *jobs)
{
    if (!jobs)
        return;
    ack_job_t *last = jobs;
    while (last->next)
        last = last->next;
    last->next = r->acks;
    if (!r->acks)
        r->acks_tail = last;
    r->acks = jobs;
}

static void free_acks(ack_job_t *jobs)
{
    while (jobs) {
        ack_job_t *j = jobs;
        jobs = j->next;
        free(j->ids);
        free(j);
    }
}

static void parsed_reserve(reader_parsed_t *p, size_t n)
{
    if (n <= p->cap)
        return;
    p->cap = n;
    p->payload = xrealloc(p->payload, n * sizeof *p->payload);
    p->error = xrealloc(p->error, n * sizeof *p->error);
}

static void parsed_clear(reader_parsed_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        json_object_put(p->payload[i]);
    p->n = 0;
}

void reader_parsed_free(reader_parsed_t *p)
{
    parsed_clear(p);
    free(p->payload);
    free(p->error);
    memset(p, 0, sizeof *p);
}

/* Parses (or with validate_only checks) the payloads of the decoded entries
 * from index from on, but those of skip_types; the runtime decides what a
 * failure means. */
static void parse_from(const bus_batch_t *bt, reader_parsed_t *p, size_t from, const char *const *skip_types,
                       bool validate_only)
{
    parsed_reserve(p, bt->n);
    for (size_t i = from; i < bt->n; i++) {
        const bus_msg_t *m = &bt->msgs[i];
        p->payload[i] = NULL;
        p->error[i] = NULL;
        if (m->missing || m->bad || envelope_type_in(skip_types, m->env.type))
            continue;
        size_t len = strlen(m->env.payload);
        if (validate_only ? json_validate(m->env.payload, len, &p->error[i]) != 0 /* error[i] says why */
                          : json_parse_strict(m->env.payload, len, &p->payload[i], &p->error[i]) != 0)
            p->payload[i] = NULL;
    }
    p->n = bt->n;
}

static void free_streams(svc_reader_t *r)
{
    for (size_t i = 0; i < r->ns; i++)
        free(r->streams[i]);
    free(r->streams);
    r->streams = NULL;
    r->ns = 0;
}

/* Whether queued acknowledgements are to go on their own now. Under mu. */
static bool acks_due(const svc_reader_t *r, int64_t now_us)
{
    return r->acks && !r->acks_held && (r->acks_now || now_us - r->acks_since_us >= ACK_LINGER_US);
}

static void *reader_main(void *arg)
{
    svc_reader_t *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->quit && !acks_due(r, clock_mono_us()) && (!r->requested || r->finished)) {
            if (r->acks && !r->acks_held) {
                int64_t left_ms = (r->acks_since_us + ACK_LINGER_US - clock_mono_us()) / 1000 + 1;
                struct timespec until;
                clock_deadline(&until, CLOCK_MONOTONIC, left_ms > 1 ? left_ms : 1);
                pthread_cond_timedwait(&r->cv, &r->mu, &until);
            } else {
                pthread_cond_wait(&r->cv, &r->mu);
            }
        }
        if (r->quit)
            break;
        bool read = r->requested && !r->finished;
        if (!read) {
            /* on their own: they waited long enough, or someone waits for them */
            ack_job_t *acks = r->acks;
            r->acks = r->acks_tail = NULL;
            r->sending = true;
            pthread_mutex_unlock(&r->mu);
            ack_job_t *failed = send_acks(r, acks);
            if (failed && bus_ensure(r->bus) != 0)
                log_debug("service %s: read-ahead connection is down", r->group);
            pthread_mutex_lock(&r->mu);
            r->sending = false;
            if (!r->acks)
                r->acks_now = false; /* else those handed over meanwhile are wanted too */
            if (failed) {
                log_debug("service %s: acknowledgements failed; trying again with the next read", r->group);
                requeue_acks(r, failed);
                r->acks_held = true;
            }
            pthread_cond_broadcast(&r->cv);
            continue;
        }
        /* the acknowledgements queued go first, in the read's round trip */
        ack_job_t *acks = r->acks;
        r->acks = r->acks_tail = NULL;
        r->acks_held = false;
        pthread_mutex_unlock(&r->mu);
        /* the request's fields are not touched by the runtime until finished */
        bus_batch_clear(&r->bt);
        parsed_clear(&r->parsed);
        int rc = read_acking(r, &acks, r->count, r->block_ms, &r->bt);
        if (rc == 0)
            parse_from(&r->bt, &r->parsed, 0, r->skip_types, r->validate_only);
        else if (bus_ensure(r->bus) != 0)
            log_debug("service %s: read-ahead connection is down", r->group);
        pthread_mutex_lock(&r->mu);
        if (acks) {
            log_debug("service %s: acknowledgements failed; trying again with the next read", r->group);
            requeue_acks(r, acks);
            r->acks_held = true;
        }
        if (!r->acks)
            r->acks_now = false;
        r->rc = rc;
        r->finished_us = clock_mono_us();
        /* those handed over during the read wait for the take's top-up or
         * the next request, which follow at once when the runtime is busy */
        if (r->acks)
            r->acks_since_us = r->finished_us;
        r->finished = true;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

svc_reader_t *reader_start(const char *redis_url, const char *group, const char *consumer,
                           const char *const *skip_types, bool validate_only, char **err)
{
    bus_t *bus = bus_open_redis(redis_url, err);
    if (!bus)
        return NULL;
    svc_reader_t *r = xcalloc(1, sizeof *r);
    r->bus = bus;
    r->group = xstrdup(group);
    r->consumer = xstrdup(consumer);
    r->skip_types = skip_types;
    r->validate_only = validate_only;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&r->thread, NULL, reader_main, r) != 0) {
        *err = xstrdup("cannot start the read-ahead thread");
        bus_close(bus);
        free(r->group);
        free(r->consumer);
        free(r);
        return NULL;
    }
    return r;
}

void reader_stop(svc_reader_t *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->quit = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL); /* a read in flight ends within its block time */
    /* what is still queued goes out now (the thread is gone: the connection is ours) */
    ack_job_t *failed = send_acks(r, r->acks);
    if (failed)
        log_warn("service %s: some acknowledgements were not sent; the inbox absorbs the redelivery", r->group);
    free_acks(failed);
    r->acks = r->acks_tail = NULL;
    bus_batch_free(&r->bt);
    reader_parsed_free(&r->parsed);
    free_streams(r);
    bus_close(r->bus);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->group);
    free(r->consumer);
    free(r);
}

void reader_request(svc_reader_t *r, const char *const *streams, size_t ns, size_t count, int block_ms)
{
    pthread_mutex_lock(&r->mu);
    if (!r->requested) {
        free_streams(r);
        r->streams = xmalloc((ns ? ns : 1) * sizeof *r->streams);
        for (size_t i = 0; i < ns; i++)
            r->streams[i] = xstrdup(streams[i]);
        r->ns = ns;
        r->count = count;
        r->block_ms = block_ms;
        r->requested = true;
        r->finished = false;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

bool reader_outstanding(const svc_reader_t *r)
{
    svc_reader_t *w = (svc_reader_t *)r; /* the lock is not part of the value */
    pthread_mutex_lock(&w->mu);
    bool o = w->requested;
    pthread_mutex_unlock(&w->mu);
    return o;
}

int reader_take(svc_reader_t *r, bus_batch_t *out, reader_parsed_t *parsed)
{
    pthread_mutex_lock(&r->mu);
    while (r->requested && !r->finished)
        pthread_cond_wait(&r->cv, &r->mu);
    int rc = r->requested ? r->rc : -1;
    if (rc == 0 && r->bt.n < r->count && clock_mono_us() - r->finished_us > TOP_UP_AFTER_US) {
        /* The read came back a while ago with room to spare, and more entries
         * may have come since: take them now (no blocking), or each would
         * wait for a transaction of its own; the acknowledgements queued go
         * in the same round trip. Between a finished read and the next
         * request the thread only sends acknowledgements: once those are
         * out, its connection is free. */
        while (r->sending)
            pthread_cond_wait(&r->cv, &r->mu);
        size_t before = r->bt.n;
        ack_job_t *acks = r->acks_held ? NULL : r->acks;
        if (acks)
            r->acks = r->acks_tail = NULL;
        int trc = read_acking(r, &acks, r->count - before, 0, &r->bt);
        if (acks) {
            requeue_acks(r, acks);
            r->acks_held = true;
        }
        if (trc == 0) {
            parse_from(&r->bt, &r->parsed, before, r->skip_types, r->validate_only);
        } else {
            /* a read whose answer was lost may still have delivered entries
             * to this consumer: the take fails like a read, so the runtime
             * reads its pending list (these and the first read's entries,
             * oldest first) before anything newer */
            for (size_t i = before; i < r->bt.n; i++)
                envelope_clear(&r->bt.msgs[i].env);
            r->bt.n = before;
            rc = -1;
        }
    }
    if (rc != 0) {
        bus_batch_clear(out);
        parsed_clear(parsed);
    } else { /* swap: the reader frees the batch before (at its next read, on its thread) */
        bus_batch_t t = *out;
        *out = r->bt;
        r->bt = t;
        reader_parsed_t pt = *parsed;
        *parsed = r->parsed;
        r->parsed = pt;
    }
    r->requested = false;
    r->finished = false;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void reader_ack(svc_reader_t *r, const char *stream, char (*ids)[BUS_ID_MAX], size_t n)
{
    if (n == 0) {
        free(ids);
        return;
    }
    ack_job_t *j = xcalloc(1, sizeof *j);
    snprintf(j->stream, sizeof j->stream, "%s", stream);
    j->ids = ids;
    j->n = n;
    pthread_mutex_lock(&r->mu);
    if (r->acks_tail) {
        r->acks_tail->next = j;
    } else {
        r->acks = j;
        r->acks_since_us = clock_mono_us();
        /* No read to go with: the thread arms its linger timer. A read in
         * flight takes them along after it (the thread looks at the queue
         * when it is back), and so does the next request after a finished
         * one is taken, without waking the thread twice; a runtime that
         * waits instead says so (reader_idle). */
        if (!r->requested)
            pthread_cond_broadcast(&r->cv);
    }
    r->acks_tail = j;
    pthread_mutex_unlock(&r->mu);
}

void reader_idle(svc_reader_t *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    /* a read in flight takes them along when it is back */
    if (r->acks && !r->acks_held && !(r->requested && !r->finished))
        pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

int reader_wait_acks(svc_reader_t *r, int64_t max_ms)
{
    struct timespec until;
    clock_deadline(&until, CLOCK_MONOTONIC, max_ms);
    pthread_mutex_lock(&r->mu);
    bool timed_out = false;
    if (r->acks) {
        /* now, and once more if the last send failed (the connection may be
         * back); a failure again leaves them held */
        r->acks_held = false;
        r->acks_now = true;
        pthread_cond_broadcast(&r->cv);
    }
    while (!timed_out && r->acks && !r->acks_held)
        timed_out = pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0;
    /* the send in progress finishes (a round trip per stream) */
    while (r->sending && !timed_out)
        timed_out = pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0;
    r->acks_now = false;
    int rc = r->acks ? -1 : 0;
    pthread_mutex_unlock(&r->mu);
    return rc;
}
