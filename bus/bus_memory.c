/* bus/bus_memory.c: the in-memory bus backend (membus_t), with the Redis 7.0
 * stream semantics the runtime relies on (bus.h).
 *
 * One membus_t serves every thread of a process: one mutex guards it all, and
 * one condition variable (CLOCK_MONOTONIC) wakes blocked reads whenever an
 * entry is added anywhere or a stream goes away.
 *
 * A stream keeps its entries in id order in a growable array; e[start..end)
 * is what is still stored (trimming advances start, and the array is compacted
 * when it grows), so appending is amortised O(1) and finding an id is a binary
 * search. A deleted entry (XDEL) stays as a tombstone (blob NULL) until
 * trimmed. An entry is one allocation: "name\0value\0" for each field.
 *
 * A group's pending entries (PEL) are nodes on two doubly linked lists in id
 * order, the group's and the owning consumer's, plus a chained hash from id to
 * node. New deliveries always have the largest id, so reading and acknowledging
 * are O(1) per message; moving an entry to another consumer (reclaim) inserts
 * it in order into that consumer's list.
 * Owns: the membus_t and everything in it; a bus_t only borrows it. */
#include "bus/bus_internal.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RAW_FIELDS_MAX 256
#define DECODE_STACK 32

typedef struct mentry {
    bus_id_t id;
    char *blob; /* nfields times "name\0value\0"; NULL once deleted */
    uint32_t nfields;
} mentry_t;

typedef struct pel_node pel_node_t;
typedef struct mconsumer mconsumer_t;

struct pel_node {
    bus_id_t id;
    mconsumer_t *owner;
    int64_t delivered_ms; /* clock_mono_ms() of the last delivery */
    uint32_t deliveries;
    pel_node_t *prev, *next;   /* the group's PEL */
    pel_node_t *cprev, *cnext; /* the owner's PEL */
    pel_node_t *hnext;         /* hash chain */
};

struct mconsumer {
    char *name;
    pel_node_t *head, *tail;
    size_t npending;
    int64_t seen_ms; /* clock_mono_ms() of its last read or claim */
};

typedef struct mgroup {
    char *name;
    bus_id_t last; /* last delivered id */
    pel_node_t *head, *tail;
    size_t npending;
    pel_node_t **buckets;
    size_t nbuckets; /* a power of two */
    mconsumer_t **consumers;
    size_t nconsumers;
} mgroup_t;

typedef struct mstream {
    char *name;
    mentry_t *e;
    size_t start, end, cap;
    size_t length; /* entries stored and not deleted */
    bus_id_t top;  /* last generated id */
    mgroup_t **groups;
    size_t ngroups;
} mstream_t;

struct membus {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mstream_t **streams; /* sorted by name */
    size_t nstreams, cap;
};

/* ---- entries ---- */

static char *blob_new(const char *const *fields, const size_t *lens, size_t nfields)
{
    size_t total = 0;
    for (size_t i = 0; i < 2 * nfields; i++)
        total += lens[i] + 1;
    char *blob = xmalloc(total);
    char *p = blob;
    for (size_t i = 0; i < 2 * nfields; i++) {
        memcpy(p, fields[i], lens[i]);
        p += lens[i];
        *p++ = '\0';
    }
    return blob;
}

static char *blob_from_envelope(const envelope_t *env)
{
    const char *fields[2 * ENV_NFIELDS];
    size_t lens[2 * ENV_NFIELDS];
    char tmp[ENV_NFIELDS][32];
    for (int i = 0; i < ENV_NFIELDS; i++) {
        fields[2 * i] = envelope_field_name(i);
        fields[2 * i + 1] = envelope_field_value(env, i, tmp[i]);
        lens[2 * i] = strlen(fields[2 * i]);
        lens[2 * i + 1] = strlen(fields[2 * i + 1]);
    }
    return blob_new(fields, lens, ENV_NFIELDS);
}

static char *blob_from_fields(const char *const *fields, size_t nfields)
{
    size_t *lens = xmalloc(2 * nfields * sizeof *lens);
    for (size_t i = 0; i < 2 * nfields; i++)
        lens[i] = strlen(fields[i]);
    char *blob = blob_new(fields, lens, nfields);
    free(lens);
    return blob;
}

/* First index in [start, end) whose id is >= id (end when none). */
static size_t entry_pos(const mstream_t *s, bus_id_t id)
{
    size_t lo = s->start, hi = s->end;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (bus_id_cmp(s->e[mid].id, id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The stored, not deleted entry with this id, or NULL when its payload is gone. */
static mentry_t *find_entry(mstream_t *s, bus_id_t id)
{
    size_t i = entry_pos(s, id);
    if (i < s->end && bus_id_cmp(s->e[i].id, id) == 0 && s->e[i].blob)
        return &s->e[i];
    return NULL;
}

/* Drops tombstones at both ends, so the first and last stored entries are live. */
static void drop_edge_tombstones(mstream_t *s)
{
    while (s->start < s->end && !s->e[s->start].blob)
        s->start++;
    while (s->end > s->start && !s->e[s->end - 1].blob)
        s->end--;
    if (s->start == s->end)
        s->start = s->end = 0;
}

/* Appends an entry (taking the blob) with the next id: the clock's ms, or the
 * last id's ms with seq + 1 when the clock has not moved past it. */
static bus_id_t append_entry(mstream_t *s, char *blob, uint32_t nfields)
{
    uint64_t now = (uint64_t)clock_now_ms();
    bus_id_t id = now > s->top.ms ? (bus_id_t){now, 0} : bus_id_next(s->top);
    if (s->end == s->cap) {
        if (s->start > 0 && s->start >= s->cap / 2) {
            memmove(s->e, s->e + s->start, (s->end - s->start) * sizeof *s->e);
            s->end -= s->start;
            s->start = 0;
        } else {
            s->cap = s->cap ? s->cap * 2 : 64;
            s->e = xrealloc(s->e, s->cap * sizeof *s->e);
        }
    }
    s->e[s->end++] = (mentry_t){id, blob, nfields};
    s->length++;
    s->top = id;
    return id;
}

/* Borrowed views of an entry's fields; *heap is set when arrays were allocated. */
typedef struct field_view {
    const char *names_s[DECODE_STACK], *vals_s[DECODE_STACK];
    size_t nlens_s[DECODE_STACK], vlens_s[DECODE_STACK];
    const char **names, **vals;
    size_t *nlens, *vlens;
    size_t n;
} field_view_t;

static void view_open(field_view_t *v, const mentry_t *en)
{
    v->n = en->nfields;
    if (v->n <= DECODE_STACK) {
        v->names = v->names_s;
        v->vals = v->vals_s;
        v->nlens = v->nlens_s;
        v->vlens = v->vlens_s;
    } else {
        v->names = xmalloc(v->n * sizeof *v->names);
        v->vals = xmalloc(v->n * sizeof *v->vals);
        v->nlens = xmalloc(v->n * sizeof *v->nlens);
        v->vlens = xmalloc(v->n * sizeof *v->vlens);
    }
    const char *p = en->blob;
    for (size_t i = 0; i < v->n; i++) {
        v->names[i] = p;
        v->nlens[i] = strlen(p);
        p += v->nlens[i] + 1;
        v->vals[i] = p;
        v->vlens[i] = strlen(p);
        p += v->vlens[i] + 1;
    }
}

static void view_close(field_view_t *v)
{
    if (v->names != v->names_s) {
        free(v->names);
        free(v->vals);
        free(v->nlens);
        free(v->vlens);
    }
}

static bus_msg_t *push_msg(bus_batch_t *out, const mstream_t *s, bus_id_t id)
{
    bus_msg_t *m = bus_batch_push(out);
    bus_id_format(id, m->entry_id);
    snprintf(m->stream, sizeof m->stream, "%s", s->name);
    return m;
}

static void push_entry(bus_batch_t *out, const mstream_t *s, const mentry_t *en, uint32_t deliveries)
{
    bus_msg_t *m = push_msg(out, s, en->id);
    field_view_t v;
    view_open(&v, en);
    bus_msg_decode(m, v.names, v.nlens, v.vals, v.vlens, v.n);
    view_close(&v);
    m->deliveries = deliveries;
}

static void push_missing(bus_batch_t *out, const mstream_t *s, bus_id_t id, uint32_t deliveries)
{
    bus_msg_t *m = push_msg(out, s, id);
    m->missing = true;
    m->deliveries = deliveries;
}

/* ---- pending entries ---- */

static size_t hash_id(bus_id_t id)
{
    uint64_t h = id.ms * 0x9E3779B97F4A7C15u ^ (id.seq + 0x632BE59BD9B4E019u);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9u;
    h ^= h >> 29;
    return (size_t)h;
}

static pel_node_t *pel_find(const mgroup_t *g, bus_id_t id)
{
    for (pel_node_t *n = g->buckets[hash_id(id) & (g->nbuckets - 1)]; n; n = n->hnext)
        if (bus_id_cmp(n->id, id) == 0)
            return n;
    return NULL;
}

static void hash_grow(mgroup_t *g)
{
    size_t nb = g->nbuckets * 2;
    pel_node_t **b = xcalloc(nb, sizeof *b);
    for (pel_node_t *n = g->head; n; n = n->next) {
        size_t k = hash_id(n->id) & (nb - 1);
        n->hnext = b[k];
        b[k] = n;
    }
    free(g->buckets);
    g->buckets = b;
    g->nbuckets = nb;
}

/* Links n into c's list, in id order (new deliveries land at the tail at once). */
static void consumer_link(mconsumer_t *c, pel_node_t *n)
{
    pel_node_t *after = c->tail;
    while (after && bus_id_cmp(after->id, n->id) > 0)
        after = after->cprev;
    n->cprev = after;
    n->cnext = after ? after->cnext : c->head;
    if (n->cnext)
        n->cnext->cprev = n;
    else
        c->tail = n;
    if (after)
        after->cnext = n;
    else
        c->head = n;
    n->owner = c;
    c->npending++;
}

static void consumer_unlink(pel_node_t *n)
{
    mconsumer_t *c = n->owner;
    if (n->cprev)
        n->cprev->cnext = n->cnext;
    else
        c->head = n->cnext;
    if (n->cnext)
        n->cnext->cprev = n->cprev;
    else
        c->tail = n->cprev;
    n->cprev = n->cnext = NULL;
    c->npending--;
}

/* Adds a first delivery of id (larger than every pending id) to c. */
static pel_node_t *pel_add(mgroup_t *g, mconsumer_t *c, bus_id_t id, int64_t now)
{
    if (g->npending >= g->nbuckets)
        hash_grow(g);
    pel_node_t *n = xcalloc(1, sizeof *n);
    n->id = id;
    n->delivered_ms = now;
    n->deliveries = 1;
    n->prev = g->tail;
    if (g->tail)
        g->tail->next = n;
    else
        g->head = n;
    g->tail = n;
    size_t k = hash_id(id) & (g->nbuckets - 1);
    n->hnext = g->buckets[k];
    g->buckets[k] = n;
    g->npending++;
    consumer_link(c, n);
    return n;
}

static void pel_remove(mgroup_t *g, pel_node_t *n)
{
    pel_node_t **pp = &g->buckets[hash_id(n->id) & (g->nbuckets - 1)];
    while (*pp != n)
        pp = &(*pp)->hnext;
    *pp = n->hnext;
    if (n->prev)
        n->prev->next = n->next;
    else
        g->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        g->tail = n->prev;
    consumer_unlink(n);
    g->npending--;
    free(n);
}

/* ---- streams, groups, consumers ---- */

static mgroup_t *group_new(const char *name)
{
    mgroup_t *g = xcalloc(1, sizeof *g);
    g->name = xstrdup(name);
    g->nbuckets = 16;
    g->buckets = xcalloc(g->nbuckets, sizeof *g->buckets);
    return g;
}

static void group_free(mgroup_t *g)
{
    for (pel_node_t *n = g->head, *next; n; n = next) {
        next = n->next;
        free(n);
    }
    for (size_t i = 0; i < g->nconsumers; i++) {
        free(g->consumers[i]->name);
        free(g->consumers[i]);
    }
    free(g->consumers);
    free(g->buckets);
    free(g->name);
    free(g);
}

static void stream_free(mstream_t *s)
{
    for (size_t i = s->start; i < s->end; i++)
        free(s->e[i].blob);
    free(s->e);
    for (size_t i = 0; i < s->ngroups; i++)
        group_free(s->groups[i]);
    free(s->groups);
    free(s->name);
    free(s);
}

/* Index of the stream called name, or where it would go (*found false). */
static size_t stream_pos(const membus_t *mb, const char *name, bool *found)
{
    size_t lo = 0, hi = mb->nstreams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(mb->streams[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

static mstream_t *find_stream(const membus_t *mb, const char *name)
{
    bool found;
    size_t i = stream_pos(mb, name, &found);
    return found ? mb->streams[i] : NULL;
}

static mstream_t *get_stream(membus_t *mb, const char *name)
{
    bool found;
    size_t i = stream_pos(mb, name, &found);
    if (found)
        return mb->streams[i];
    if (mb->nstreams == mb->cap) {
        mb->cap = mb->cap ? mb->cap * 2 : 16;
        mb->streams = xrealloc(mb->streams, mb->cap * sizeof *mb->streams);
    }
    memmove(mb->streams + i + 1, mb->streams + i, (mb->nstreams - i) * sizeof *mb->streams);
    mstream_t *s = xcalloc(1, sizeof *s);
    s->name = xstrdup(name);
    mb->streams[i] = s;
    mb->nstreams++;
    return s;
}

static mgroup_t *find_group(const mstream_t *s, const char *name)
{
    for (size_t i = 0; s && i < s->ngroups; i++)
        if (strcmp(s->groups[i]->name, name) == 0)
            return s->groups[i];
    return NULL;
}

/* The group, or NULL after logging Redis's NOGROUP. */
static mgroup_t *lookup_group(membus_t *mb, const char *stream, const char *group, const char *what)
{
    mgroup_t *g = find_group(find_stream(mb, stream), group);
    if (!g)
        log_warn("bus: %s %s: NOGROUP no such stream or consumer group '%s'", what, stream, group);
    return g;
}

/* The consumer (created on first use), seen now: it reads or claims. */
static mconsumer_t *get_consumer(mgroup_t *g, const char *name)
{
    mconsumer_t *c = NULL;
    for (size_t i = 0; i < g->nconsumers && !c; i++)
        if (strcmp(g->consumers[i]->name, name) == 0)
            c = g->consumers[i];
    if (!c) {
        g->consumers = xrealloc(g->consumers, (g->nconsumers + 1) * sizeof *g->consumers);
        c = xcalloc(1, sizeof *c);
        c->name = xstrdup(name);
        g->consumers[g->nconsumers++] = c;
    }
    c->seen_ms = clock_mono_ms();
    return c;
}

/* ---- membus ---- */

membus_t *membus_new(void)
{
    membus_t *mb = xcalloc(1, sizeof *mb);
    pthread_mutex_init(&mb->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&mb->cv, &ca);
    pthread_condattr_destroy(&ca);
    return mb;
}

void membus_free(membus_t *mb)
{
    if (!mb)
        return;
    for (size_t i = 0; i < mb->nstreams; i++)
        stream_free(mb->streams[i]);
    free(mb->streams);
    pthread_cond_destroy(&mb->cv);
    pthread_mutex_destroy(&mb->mu);
    free(mb);
}

static int add_fields_locked(membus_t *mb, const char *stream, const char *const *fields, size_t nfields)
{
    if (nfields == 0 || nfields > RAW_FIELDS_MAX) {
        log_warn("bus: add to %s: %zu fields (1..%d)", stream, nfields, RAW_FIELDS_MAX);
        return -1;
    }
    for (size_t i = 0; i < 2 * nfields; i++)
        if (!fields[i])
            return -1;
    (void)append_entry(get_stream(mb, stream), blob_from_fields(fields, nfields), (uint32_t)nfields);
    pthread_cond_broadcast(&mb->cv);
    return 0;
}

int membus_add_raw(membus_t *mb, const char *stream, const char *const *fields, size_t nfields)
{
    if (!stream || !*stream || strlen(stream) >= BUS_STREAM_MAX)
        return -1;
    pthread_mutex_lock(&mb->mu);
    int rc = add_fields_locked(mb, stream, fields, nfields);
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

/* ---- backend operations ---- */

static void mem_close(bus_t *b)
{
    b->mb = NULL;
}

static int mem_ok(bus_t *b)
{
    return 0;
}

static int mem_publish(bus_t *b, const envelope_t *msgs, size_t n, char (*ids_out)[BUS_ID_MAX])
{
    membus_t *mb = b->mb;
    char name[BUS_STREAM_MAX];
    pthread_mutex_lock(&mb->mu);
    mstream_t *s = NULL;
    for (size_t i = 0; i < n; i++) {
        envelope_stream_name(msgs[i].topic, name, sizeof name);
        if (!s || strcmp(s->name, name) != 0)
            s = get_stream(mb, name);
        bus_id_t id = append_entry(s, blob_from_envelope(&msgs[i]), ENV_NFIELDS);
        if (ids_out)
            bus_id_format(id, ids_out[i]);
    }
    pthread_cond_broadcast(&mb->cv);
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_group_create(bus_t *b, const char *stream, const char *group)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mstream_t *s = get_stream(mb, stream);
    if (!find_group(s, group)) {
        s->groups = xrealloc(s->groups, (s->ngroups + 1) * sizeof *s->groups);
        s->groups[s->ngroups++] = group_new(group);
    }
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

/* New entries (after the group's last delivered id) to consumer c. */
static size_t read_new(mstream_t *s, mgroup_t *g, mconsumer_t *c, size_t count, bus_batch_t *out)
{
    int64_t now = clock_mono_ms();
    size_t got = 0;
    for (size_t i = entry_pos(s, bus_id_next(g->last)); i < s->end && got < count; i++) {
        const mentry_t *en = &s->e[i];
        if (bus_id_cmp(en->id, g->last) <= 0 || !en->blob)
            continue;
        (void)pel_add(g, c, en->id, now);
        g->last = en->id;
        push_entry(out, s, en, 1);
        got++;
    }
    return got;
}

/* History read of c's own pending entries with ids after after: each one
 * still stored counts as a delivery again; the others come back missing. */
static void read_own(mstream_t *s, mgroup_t *g, mconsumer_t *c, bus_id_t after, size_t count, bus_batch_t *out)
{
    int64_t now = clock_mono_ms();
    size_t got = 0;
    /* paging goes on from the last entry of the previous page, usually still pending */
    pel_node_t *n = pel_find(g, after);
    if (n && n->owner == c) {
        n = n->cnext;
    } else {
        for (n = c->head; n && bus_id_cmp(n->id, after) <= 0;)
            n = n->cnext;
    }
    for (; n && got < count; n = n->cnext, got++) {
        const mentry_t *en = find_entry(s, n->id);
        if (!en) {
            push_missing(out, s, n->id, n->deliveries);
            continue;
        }
        n->deliveries++;
        n->delivered_ms = now;
        push_entry(out, s, en, n->deliveries);
    }
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_deadline(ts, CLOCK_MONOTONIC, ms);
}

static int mem_read(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                    const char *history_after, size_t count, int block_ms, bus_batch_t *out)
{
    membus_t *mb = b->mb;
    int rc = -1;
    bool own_pending = history_after != NULL;
    uint64_t seq0 = 0;
    bus_id_t after = BUS_ID_MIN;
    if (own_pending && bus_id_parse(history_after, strlen(history_after), &seq0, &after) != 0)
        return -1;
    struct timespec deadline;
    bool waited_out = false;
    if (block_ms > 0)
        deadline_after(&deadline, block_ms);
    pthread_mutex_lock(&mb->mu);
    for (;;) {
        /* like Redis, every stream and group must exist (checked again after a wait) */
        for (size_t i = 0; i < ns; i++)
            if (!lookup_group(mb, streams[i], group, "read"))
                goto out;
        size_t got = 0;
        for (size_t i = 0; i < ns; i++) {
            mstream_t *s = find_stream(mb, streams[i]);
            mgroup_t *g = find_group(s, group);
            mconsumer_t *c = get_consumer(g, consumer);
            if (own_pending)
                read_own(s, g, c, after, count, out);
            else
                got += read_new(s, g, c, count, out);
        }
        if (own_pending || got > 0 || block_ms == 0 || waited_out)
            break;
        if (pthread_cond_timedwait(&mb->cv, &mb->mu, &deadline) == ETIMEDOUT)
            waited_out = true; /* one last look, then give up */
    }
    rc = 0;
out:
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

static int mem_ack(bus_t *b, const char *stream, const char *group, const char *const *ids, size_t n)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mgroup_t *g = find_group(find_stream(mb, stream), group);
    for (size_t i = 0; g && i < n; i++) {
        bus_id_t id;
        if (bus_id_parse(ids[i], strlen(ids[i]), NULL, &id) != 0)
            continue;
        pel_node_t *node = pel_find(g, id);
        if (node)
            pel_remove(g, node);
    }
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_reclaim(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t min_idle_ms,
                       size_t count, bus_batch_t *out)
{
    membus_t *mb = b->mb;
    int rc = -1;
    pthread_mutex_lock(&mb->mu);
    mgroup_t *g = lookup_group(mb, stream, group, "reclaim");
    if (!g)
        goto out;
    mstream_t *s = find_stream(mb, stream);
    int64_t now = clock_mono_ms();
    mconsumer_t *c = NULL;
    size_t got = 0;
    for (pel_node_t *n = g->head, *next; n && got < count; n = next) {
        next = n->next;
        const mentry_t *en = find_entry(s, n->id);
        if (!en) {
            /* as Redis 7 does: whatever its idle time, it leaves the PEL, and
             * its delivery count is not reported */
            push_missing(out, s, n->id, 0);
            pel_remove(g, n);
            got++;
            continue;
        }
        if (now - n->delivered_ms < min_idle_ms)
            continue;
        if (!c)
            c = get_consumer(g, consumer);
        if (n->owner != c) {
            consumer_unlink(n);
            consumer_link(c, n);
        }
        n->delivered_ms = now;
        n->deliveries++;
        push_entry(out, s, en, n->deliveries);
        got++;
    }
    rc = 0;
out:
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

static int mem_set_deliveries(bus_t *b, const char *stream, const char *group, const char *consumer,
                              const char (*ids)[BUS_ID_MAX], const uint32_t *counts, size_t n)
{
    membus_t *mb = b->mb;
    int rc = -1;
    pthread_mutex_lock(&mb->mu);
    mgroup_t *g = lookup_group(mb, stream, group, "set deliveries");
    if (!g)
        goto out;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < n; i++) {
        bus_id_t id;
        pel_node_t *node = bus_id_parse(ids[i], strnlen(ids[i], BUS_ID_MAX), NULL, &id) == 0 ? pel_find(g, id) : NULL;
        if (!node || strcmp(node->owner->name, consumer) != 0)
            continue; /* acknowledged, or another consumer's now */
        node->deliveries = counts[i];
        node->delivered_ms = now;
    }
    rc = 0;
out:
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

static int mem_pending(bus_t *b, const char *stream, const char *group, bus_pending_entry_t *out, size_t max, size_t *n)
{
    membus_t *mb = b->mb;
    int rc = -1;
    pthread_mutex_lock(&mb->mu);
    mgroup_t *g = lookup_group(mb, stream, group, "pending");
    if (!g)
        goto out;
    int64_t now = clock_mono_ms();
    for (pel_node_t *p = g->head; p && *n < max; p = p->next) {
        bus_pending_entry_t *pe = &out[(*n)++];
        memset(pe, 0, sizeof *pe);
        bus_id_format(p->id, pe->entry_id);
        snprintf(pe->consumer, sizeof pe->consumer, "%s", p->owner->name);
        pe->idle_ms = now - p->delivered_ms;
        pe->deliveries = p->deliveries;
    }
    rc = 0;
out:
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

static int mem_group_others(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t active_ms,
                            uint64_t *pending, uint64_t *active)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mgroup_t *g = find_group(find_stream(mb, stream), group);
    int64_t now = clock_mono_ms();
    for (size_t i = 0; g && i < g->nconsumers; i++) {
        const mconsumer_t *c = g->consumers[i];
        if (strcmp(c->name, consumer) == 0)
            continue;
        *pending += c->npending;
        if (now - c->seen_ms < active_ms)
            (*active)++;
    }
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_add_fields(bus_t *b, const char *stream, const char *const *fields, size_t nfields)
{
    pthread_mutex_lock(&b->mb->mu);
    int rc = add_fields_locked(b->mb, stream, fields, nfields);
    pthread_mutex_unlock(&b->mb->mu);
    return rc;
}

static int mem_trim(bus_t *b, const char *stream, uint64_t *trimmed)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mstream_t *s = find_stream(mb, stream);
    if (!s || s->ngroups == 0)
        goto out;
    /* keep everything a group has pending or has not been given yet */
    bus_id_t minid = BUS_ID_MAX_VALUE;
    for (size_t i = 0; i < s->ngroups; i++) {
        const mgroup_t *g = s->groups[i];
        bus_id_t keep = g->head ? g->head->id : bus_id_next(g->last);
        if (bus_id_cmp(keep, minid) < 0)
            minid = keep;
    }
    while (s->start < s->end && bus_id_cmp(s->e[s->start].id, minid) < 0) {
        mentry_t *en = &s->e[s->start++];
        if (en->blob) {
            free(en->blob);
            en->blob = NULL;
            s->length--;
            (*trimmed)++;
        }
    }
    drop_edge_tombstones(s);
out:
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_stream_info(bus_t *b, const char *stream, bus_stream_info_t *out)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    const mstream_t *s = find_stream(mb, stream);
    if (!s)
        goto out;
    out->length = s->length;
    if (s->length > 0) { /* the edges are never tombstones */
        bus_id_format(s->e[s->start].id, out->first_id);
        bus_id_format(s->e[s->end - 1].id, out->last_id);
    }
    for (size_t i = 0; i < s->ngroups && i < ECOM_ARRAY_LEN(out->groups); i++) {
        const mgroup_t *g = s->groups[i];
        bus_group_info_t *gi = &out->groups[out->ngroups++];
        snprintf(gi->name, sizeof gi->name, "%s", g->name);
        gi->consumers = g->nconsumers;
        gi->pending = g->npending;
        bus_id_format(g->last, gi->last_delivered);
        gi->lag = 0;
        for (size_t k = entry_pos(s, bus_id_next(g->last)); k < s->end; k++)
            if (s->e[k].blob && bus_id_cmp(s->e[k].id, g->last) > 0)
                gi->lag++;
    }
out:
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_list_streams(bus_t *b, char ***names, size_t *n)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    *names = xmalloc((mb->nstreams ? mb->nstreams : 1) * sizeof **names);
    for (size_t i = 0; i < mb->nstreams; i++)
        if (strncmp(mb->streams[i]->name, "ecom:", 5) == 0)
            (*names)[(*n)++] = xstrdup(mb->streams[i]->name);
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_range(bus_t *b, const char *stream, bus_id_t start, bus_id_t end, size_t count, bus_entry_t **out,
                     size_t *n)
{
    membus_t *mb = b->mb;
    size_t cap = 0;
    pthread_mutex_lock(&mb->mu);
    const mstream_t *s = find_stream(mb, stream);
    for (size_t i = s ? entry_pos(s, start) : 0; s && i < s->end && (count == 0 || *n < count); i++) {
        const mentry_t *en = &s->e[i];
        if (bus_id_cmp(en->id, end) > 0)
            break;
        if (!en->blob)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            *out = xrealloc(*out, cap * sizeof **out);
        }
        bus_entry_t *be = &(*out)[(*n)++];
        bus_id_format(en->id, be->entry_id);
        be->nfields = en->nfields;
        be->fields = xmalloc((2 * en->nfields + 1) * sizeof *be->fields);
        const char *p = en->blob;
        for (size_t k = 0; k < 2 * en->nfields; k++) {
            be->fields[k] = xstrdup(p);
            p += strlen(p) + 1;
        }
    }
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

/* Removes entry id of s (XDEL: a tombstone until the stream's edge passes
 * it); false when s holds no such entry. */
static bool delete_entry_locked(mstream_t *s, const char *id)
{
    bus_id_t v;
    if (!s || bus_id_parse(id, strlen(id), NULL, &v) != 0)
        return false;
    mentry_t *en = find_entry(s, v);
    if (!en)
        return false;
    free(en->blob);
    en->blob = NULL;
    s->length--;
    return true;
}

static int mem_delete_entries(bus_t *b, const char *stream, const char *const *ids, size_t n)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mstream_t *s = find_stream(mb, stream);
    for (size_t i = 0; s && i < n; i++)
        (void)delete_entry_locked(s, ids[i]);
    if (s)
        drop_edge_tombstones(s);
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static int mem_move_fields(bus_t *b, const char *from, const char *id, const char *to, const char *const *fields,
                           size_t nfields)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    mstream_t *s = find_stream(mb, from);
    bus_id_t v;
    int rc = 1;
    if (s && bus_id_parse(id, strlen(id), NULL, &v) == 0 && find_entry(s, v)) {
        rc = add_fields_locked(mb, to, fields, nfields);
        if (rc == 0) {
            (void)delete_entry_locked(s, id);
            drop_edge_tombstones(s);
        }
    }
    pthread_mutex_unlock(&mb->mu);
    return rc;
}

static int mem_delete_stream(bus_t *b, const char *stream)
{
    membus_t *mb = b->mb;
    pthread_mutex_lock(&mb->mu);
    bool found;
    size_t i = stream_pos(mb, stream, &found);
    if (found) {
        stream_free(mb->streams[i]);
        memmove(mb->streams + i, mb->streams + i + 1, (mb->nstreams - i - 1) * sizeof *mb->streams);
        mb->nstreams--;
        pthread_cond_broadcast(&mb->cv); /* blocked readers of it answer NOGROUP */
    }
    pthread_mutex_unlock(&mb->mu);
    return 0;
}

static const bus_ops_t memory_ops = {
    .memory = true,
    .close = mem_close,
    .ensure = mem_ok,
    .ping = mem_ok,
    .writable = mem_ok,
    .publish = mem_publish,
    .group_create = mem_group_create,
    .read = mem_read,
    .ack = mem_ack,
    .reclaim = mem_reclaim,
    .pending = mem_pending,
    .group_others = mem_group_others,
    .set_deliveries = mem_set_deliveries,
    .add_fields = mem_add_fields,
    .move_fields = mem_move_fields,
    .trim = mem_trim,
    .stream_info = mem_stream_info,
    .list_streams = mem_list_streams,
    .range = mem_range,
    .delete_entries = mem_delete_entries,
    .delete_stream = mem_delete_stream,
};

bus_t *bus_open_memory(membus_t *mb)
{
    bus_t *b = bus_new(&memory_ops);
    b->mb = mb;
    return b;
}
