/* bus/bus.c: the public bus_* functions (see bus.h). They check their
 * arguments once, for both backends, and dispatch through the handle's vtable
 * (bus_internal.h). What both backends must do identically lives here too:
 * entry id parsing and ordering, decoding entry fields into a bus_msg_t, the
 * dead-letter record, and the order of bus_list_streams.
 * Owns: the bus_t allocation (the backend's close releases its own state). */
#include "bus/bus_internal.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_LEN 63 /* groups and consumers: bus_group_info_t.name, bus_pending_entry_t.consumer */

/* ---- entry ids ---- */

static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    if (len == 0 || len > 20)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int bus_id_parse(const char *s, size_t len, const uint64_t *ms_only_seq, bus_id_t *out)
{
    const char *dash = memchr(s, '-', len);
    if (!dash) {
        if (!ms_only_seq || parse_u64(s, len, &out->ms) != 0)
            return -1;
        out->seq = *ms_only_seq;
        return 0;
    }
    size_t ml = (size_t)(dash - s);
    if (parse_u64(s, ml, &out->ms) != 0 || parse_u64(dash + 1, len - ml - 1, &out->seq) != 0)
        return -1;
    return 0;
}

int bus_id_cmp(bus_id_t a, bus_id_t b)
{
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq)
        return a.seq < b.seq ? -1 : 1;
    return 0;
}

int bus_entry_id_cmp(const char *a, const char *b)
{
    bus_id_t x = {0}, y = {0};
    int ea = bus_id_parse(a, strlen(a), NULL, &x), eb = bus_id_parse(b, strlen(b), NULL, &y);
    if (ea != 0 || eb != 0)
        return ea != 0 ? (eb != 0 ? 0 : -1) : 1;
    return bus_id_cmp(x, y);
}

void bus_id_format(bus_id_t id, char out[BUS_ID_MAX])
{
    snprintf(out, BUS_ID_MAX, "%" PRIu64 "-%" PRIu64, id.ms, id.seq);
}

bus_id_t bus_id_next(bus_id_t id)
{
    if (id.seq < UINT64_MAX)
        return (bus_id_t){id.ms, id.seq + 1};
    if (id.ms < UINT64_MAX)
        return (bus_id_t){id.ms + 1, 0};
    return id;
}

void bus_msg_decode(bus_msg_t *m, const char *const *names, const size_t *nlens, const char *const *vals,
                    const size_t *vlens, size_t n)
{
    const char *why = NULL;
    if (envelope_from_fields(&m->env, names, nlens, vals, vlens, n, &why) != 0) {
        m->bad = true;
        m->why = why ? why : "undecodable entry";
    }
}

/* ---- argument checks ---- */

static bool name_ok(const char *what, const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max) {
        log_warn("bus: invalid %s name (empty or longer than %zu)", what, max);
        return false;
    }
    return true;
}

static bool stream_ok(const char *s)
{
    return name_ok("stream", s, BUS_STREAM_MAX - 1);
}

static bool ids_ok(const char *const *ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bus_id_t id;
        if (!ids[i] || bus_id_parse(ids[i], strlen(ids[i]), NULL, &id) != 0) {
            log_warn("bus: invalid entry id '%s'", ids[i] ? ids[i] : "(null)");
            return false;
        }
    }
    return true;
}

/* What a decode of the published entry would refuse, refused at publish. */
static const char *envelope_problem(const envelope_t *e)
{
    if (!uuid_valid(e->id))
        return "invalid id";
    if (!e->type || !envelope_name_valid(e->type))
        return "invalid type";
    if (!e->topic || !envelope_topic_valid(e->topic))
        return "invalid topic";
    if (!e->tenant || !envelope_name_valid(e->tenant))
        return "invalid tenant";
    if (!e->aggregate_id)
        return "missing aggregate_id";
    if (!e->payload)
        return "missing payload";
    return NULL;
}

/* ---- handles ---- */

bus_t *bus_new(const bus_ops_t *ops)
{
    bus_t *b = xcalloc(1, sizeof *b);
    b->ops = ops;
    return b;
}

void bus_close(bus_t *b)
{
    if (!b)
        return;
    b->ops->close(b);
    free(b);
}

bool bus_is_memory(const bus_t *b)
{
    return b->ops->memory;
}

int bus_ensure(bus_t *b)
{
    return b->ops->ensure(b);
}

int bus_ping(bus_t *b)
{
    return b->ops->ping(b);
}

int bus_writable(bus_t *b)
{
    return b->ops->writable(b);
}

/* ---- operations ---- */

int bus_publish(bus_t *b, const envelope_t *msgs, size_t n, char (*ids_out)[BUS_ID_MAX])
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = envelope_problem(&msgs[i]);
        if (why) {
            log_warn("bus: publish refused: message %zu of %zu: %s", i + 1, n, why);
            return -1;
        }
    }
    return b->ops->publish(b, msgs, n, ids_out);
}

int bus_group_create(bus_t *b, const char *stream, const char *group)
{
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN))
        return -1;
    return b->ops->group_create(b, stream, group);
}

/* The arguments of a stream read (bus_read, bus_read_acking), logged when bad. */
static bool read_args_ok(const char *group, const char *consumer, const char *const *streams, size_t ns, size_t count,
                         int block_ms)
{
    if (!name_ok("group", group, NAME_MAX_LEN) || !name_ok("consumer", consumer, NAME_MAX_LEN))
        return false;
    for (size_t i = 0; i < ns; i++)
        if (!stream_ok(streams[i]))
            return false;
    if (count == 0 || block_ms < 0) {
        log_warn("bus: read needs count >= 1 and block_ms >= 0");
        return false;
    }
    return true;
}

int bus_read(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns, bool own_pending,
             size_t count, int block_ms, bus_batch_t *out)
{
    if (ns == 0)
        return 0;
    if (!read_args_ok(group, consumer, streams, ns, count, block_ms))
        return -1;
    return b->ops->read(b, group, consumer, streams, ns, own_pending ? "0" : NULL, count, own_pending ? 0 : block_ms,
                        out);
}

int bus_read_acking(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                    size_t count, int block_ms, bus_acks_t *acks, size_t nacks, bus_batch_t *out)
{
    for (size_t i = 0; i < nacks; i++)
        acks[i].done = acks[i].n == 0;
    if (!read_args_ok(group, consumer, streams, ns, count, block_ms))
        return -1;
    for (size_t i = 0; i < nacks; i++) {
        if (!acks[i].n)
            continue;
        if (!stream_ok(acks[i].stream))
            return -1;
        for (size_t k = 0; k < acks[i].n; k++)
            if (!ids_ok((const char *const[]){acks[i].ids[k]}, 1))
                return -1;
    }
    if (ns == 0 || !b->ops->read_acking) {
        for (size_t i = 0; i < nacks; i++)
            if (!acks[i].done)
                acks[i].done = bus_ack_ids(b, acks[i].stream, group, acks[i].ids, acks[i].n) == 0;
        return ns == 0 ? 0 : b->ops->read(b, group, consumer, streams, ns, NULL, count, block_ms, out);
    }
    return b->ops->read_acking(b, group, consumer, streams, ns, count, block_ms, acks, nacks, out);
}

int bus_read_pending(bus_t *b, const char *group, const char *consumer, const char *stream, const char *after_id,
                     size_t count, bus_batch_t *out)
{
    uint64_t seq0 = 0;
    bus_id_t after;
    if (!name_ok("group", group, NAME_MAX_LEN) || !name_ok("consumer", consumer, NAME_MAX_LEN) || !stream_ok(stream))
        return -1;
    if (!after_id || bus_id_parse(after_id, strlen(after_id), &seq0, &after) != 0) {
        log_warn("bus: read pending: invalid id '%s'", after_id ? after_id : "(null)");
        return -1;
    }
    if (count == 0) {
        log_warn("bus: read pending needs count >= 1");
        return -1;
    }
    const char *streams[] = {stream};
    return b->ops->read(b, group, consumer, streams, 1, after_id, count, 0, out);
}

int bus_ack(bus_t *b, const char *stream, const char *group, const char *const *ids, size_t n)
{
    if (n == 0)
        return 0;
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN) || !ids_ok(ids, n))
        return -1;
    return b->ops->ack(b, stream, group, ids, n);
}

int bus_ack_ids(bus_t *b, const char *stream, const char *group, const char (*ids)[BUS_ID_MAX], size_t n)
{
    if (n == 0)
        return 0;
    const char **p = xmalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = ids[i];
    int rc = bus_ack(b, stream, group, p, n);
    free(p);
    return rc;
}

int bus_reclaim(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t min_idle_ms,
                size_t count, bus_batch_t *out)
{
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN) || !name_ok("consumer", consumer, NAME_MAX_LEN))
        return -1;
    if (count == 0)
        return 0;
    return b->ops->reclaim(b, stream, group, consumer, min_idle_ms < 0 ? 0 : min_idle_ms, count, out);
}

int bus_set_deliveries(bus_t *b, const char *stream, const char *group, const char *consumer,
                       const char (*ids)[BUS_ID_MAX], const uint32_t *counts, size_t n)
{
    if (n == 0)
        return 0;
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN) || !name_ok("consumer", consumer, NAME_MAX_LEN))
        return -1;
    for (size_t i = 0; i < n; i++) {
        bus_id_t id;
        if (bus_id_parse(ids[i], strnlen(ids[i], BUS_ID_MAX), NULL, &id) != 0) {
            log_warn("bus: set deliveries: invalid entry id");
            return -1;
        }
    }
    return b->ops->set_deliveries(b, stream, group, consumer, ids, counts, n);
}

int bus_pending(bus_t *b, const char *stream, const char *group, bus_pending_entry_t *out, size_t max, size_t *n)
{
    *n = 0;
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN))
        return -1;
    if (max == 0)
        return 0;
    return b->ops->pending(b, stream, group, out, max, n);
}

int bus_group_others(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t active_ms,
                     uint64_t *pending, uint64_t *active)
{
    *pending = *active = 0;
    if (!stream_ok(stream) || !name_ok("group", group, NAME_MAX_LEN) || !name_ok("consumer", consumer, NAME_MAX_LEN))
        return -1;
    return b->ops->group_others(b, stream, group, consumer, active_ms, pending, active);
}

int bus_dead_letter(bus_t *b, const char *group, const bus_msg_t *m, const char *reason)
{
    if (!name_ok("group", group, NAME_MAX_LEN))
        return -1;
    char dlq[BUS_STREAM_MAX];
    bus_dlq_stream(group, dlq, sizeof dlq);

    /* envelope fields (what there is of them), then the failure record */
    const char *fields[2 * (ENV_NFIELDS + 6)];
    char tmp[ENV_NFIELDS][32];
    size_t nf = 0;
    const envelope_t *e = &m->env;
    for (int i = 0; i < ENV_NFIELDS && !m->missing; i++) {
        const char *v;
        if (!m->bad)
            v = envelope_field_value(e, i, tmp[i]);
        else if (i == 0)
            v = e->id[0] ? e->id : NULL;
        else if (i >= 5 && i <= 7)
            v = NULL; /* numbers of an undecodable entry mean nothing */
        else
            v = envelope_field_value(e, i, tmp[i]);
        if (!v)
            continue;
        fields[2 * nf] = envelope_field_name(i);
        fields[2 * nf + 1] = v;
        nf++;
    }
    char deliveries[16], failed_at[24];
    snprintf(deliveries, sizeof deliveries, "%" PRIu32, m->deliveries);
    snprintf(failed_at, sizeof failed_at, "%lld", (long long)clock_now_ms());
    const char *meta[] = {"error",         reason ? reason : "unknown",
                          "deliveries",    deliveries,
                          "source_stream", m->stream,
                          "source_id",     m->entry_id,
                          "group",         group,
                          "failed_at",     failed_at};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(meta); i += 2) {
        fields[2 * nf] = meta[i];
        fields[2 * nf + 1] = meta[i + 1];
        nf++;
    }
    return b->ops->add_fields(b, dlq, fields, nf);
}

void bus_replay_stream(const char *group, char *buf, size_t cap)
{
    snprintf(buf, cap, "ecom:replay:%s", group);
}

void bus_dlq_stream(const char *group, char *buf, size_t cap)
{
    snprintf(buf, cap, "ecom:dlq:%s", group);
}

int bus_replay_dead(bus_t *b, const char *group, const bus_entry_t *dead, const char **why)
{
    if (!name_ok("group", group, NAME_MAX_LEN))
        return -1;
    /* the envelope's fields, as the dead letter kept them; the failure record stays behind */
    const char *names[ENV_NFIELDS], *vals[ENV_NFIELDS], *fields[2 * ENV_NFIELDS];
    size_t nl[ENV_NFIELDS], vl[ENV_NFIELDS], k = 0;
    for (int f = 0; f < ENV_NFIELDS; f++) {
        const char *name = envelope_field_name(f);
        for (size_t i = 0; i < dead->nfields; i++) {
            if (strcmp(dead->fields[2 * i], name) != 0)
                continue;
            names[k] = name;
            vals[k] = dead->fields[2 * i + 1];
            nl[k] = strlen(name);
            vl[k] = strlen(vals[k]);
            fields[2 * k] = name;
            fields[2 * k + 1] = vals[k];
            k++;
            break;
        }
    }
    envelope_t env;
    int bad = envelope_from_fields(&env, names, nl, vals, vl, k, why);
    if (bad == 0 && !envelope_topic_valid(env.topic)) {
        *why = "invalid topic";
        bad = -1;
    }
    envelope_clear(&env);
    if (bad != 0)
        return 1;
    char stream[BUS_STREAM_MAX], dlq[BUS_STREAM_MAX];
    bus_replay_stream(group, stream, sizeof stream);
    bus_dlq_stream(group, dlq, sizeof dlq);
    if (b->ops->group_create(b, stream, group) != 0)
        return -1;
    int rc = b->ops->move_fields(b, dlq, dead->entry_id, stream, fields, k);
    if (rc == 1)
        *why = "no longer in the dead-letter stream";
    return rc == 1 ? 2 : rc;
}

int bus_trim(bus_t *b, const char *stream, uint64_t *trimmed)
{
    uint64_t dummy;
    if (!trimmed)
        trimmed = &dummy;
    *trimmed = 0;
    if (!stream_ok(stream))
        return -1;
    return b->ops->trim(b, stream, trimmed);
}

int bus_stream_info(bus_t *b, const char *stream, bus_stream_info_t *out)
{
    memset(out, 0, sizeof *out);
    if (!stream_ok(stream))
        return -1;
    return b->ops->stream_info(b, stream, out);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int bus_list_streams(bus_t *b, char ***names, size_t *n)
{
    *names = NULL;
    *n = 0;
    if (b->ops->list_streams(b, names, n) != 0)
        return -1;
    if (*n > 1)
        qsort(*names, *n, sizeof **names, cmp_names);
    return 0;
}

static int range_end(const char *s, bool is_start, bus_id_t *out)
{
    if (strcmp(s, "-") == 0) {
        *out = BUS_ID_MIN;
        return 0;
    }
    if (strcmp(s, "+") == 0) {
        *out = BUS_ID_MAX_VALUE;
        return 0;
    }
    uint64_t seq = is_start ? 0 : UINT64_MAX;
    if (bus_id_parse(s, strlen(s), &seq, out) != 0) {
        log_warn("bus: invalid range bound '%s'", s);
        return -1;
    }
    return 0;
}

int bus_range(bus_t *b, const char *stream, const char *start, const char *end, size_t count, bus_entry_t **out,
              size_t *n)
{
    *out = NULL;
    *n = 0;
    bus_id_t lo, hi;
    if (!stream_ok(stream) || range_end(start, true, &lo) != 0 || range_end(end, false, &hi) != 0)
        return -1;
    if (bus_id_cmp(lo, hi) > 0)
        return 0;
    return b->ops->range(b, stream, lo, hi, count, out, n);
}

void bus_entries_free(bus_entry_t *entries, size_t n)
{
    if (!entries)
        return;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < 2 * entries[i].nfields; k++)
            free(entries[i].fields[k]);
        free(entries[i].fields);
    }
    free(entries);
}

int bus_delete_entries(bus_t *b, const char *stream, const char *const *ids, size_t n)
{
    if (n == 0)
        return 0;
    if (!stream_ok(stream) || !ids_ok(ids, n))
        return -1;
    return b->ops->delete_entries(b, stream, ids, n);
}

int bus_delete_stream(bus_t *b, const char *stream)
{
    if (!stream_ok(stream))
        return -1;
    return b->ops->delete_stream(b, stream);
}
