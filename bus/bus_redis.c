/* bus/bus_redis.c: the bus over Redis 7.0 Streams, on one blocking hiredis
 * 0.14.1 connection per bus_t (bus.h says what each operation does).
 *
 * Every command goes through call() or a pipeline (append, then collect): a
 * NULL reply or a context error means the connection is gone, so it is freed
 * at once and the next call (or bus_ensure) connects again with the kept URL.
 * Error replies (NOGROUP, WRONGTYPE, ...) leave the connection as it is.
 * Commands time out after CMD_TIMEOUT_MS; a blocking read widens the socket
 * timeout by its BLOCK time. The timeout is set only when it is too short
 * for what comes, or more than TIMEOUT_SLACK_MS longer (so a connection
 * that keeps reading with the same BLOCK sets it once, not twice a read).
 * A stream read's replies are built in the handle's reply arena (one
 * allocation per 64 KiB instead of two per field) and dropped together
 * once its entries are decoded.
 * Owns: the redisContext, the URL and the reply arena. */
#include "bus/bus_internal.h"
#include "bus/reply_arena.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/redis.h"
#include "core/uuid.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define CMD_TIMEOUT_MS 5000
#define TIMEOUT_SLACK_MS 1000
#define DECODE_STACK 32
#define TRIM_GROUPS_MAX 1024
#define PUBLISH_CHUNK 128 /* entries per script of a publish (r_publish) */

/* ---- commands as argv ---- */

typedef struct cmd {
    const char **argv;
    size_t *lens;
    size_t n, cap;
    char num[4][32]; /* text of numeric arguments */
    int nnum;
} cmd_t;

static void arg_len(cmd_t *c, const char *s, size_t len)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 32;
        c->argv = xrealloc(c->argv, c->cap * sizeof *c->argv);
        c->lens = xrealloc(c->lens, c->cap * sizeof *c->lens);
    }
    c->argv[c->n] = s;
    c->lens[c->n++] = len;
}

static void arg(cmd_t *c, const char *s)
{
    arg_len(c, s, strlen(s));
}

static void args(cmd_t *c, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        arg(c, v[i]);
}

static void arg_u64(cmd_t *c, uint64_t v)
{
    ECOM_ASSERT(c->nnum < (int)ECOM_ARRAY_LEN(c->num));
    char *p = c->num[c->nnum++];
    snprintf(p, sizeof c->num[0], "%" PRIu64, v);
    arg(c, p);
}

static void cmd_reset(cmd_t *c)
{
    c->n = 0;
    c->nnum = 0;
}

static void cmd_free(cmd_t *c)
{
    free(c->argv);
    free(c->lens);
}

/* ---- the connection ---- */

static void drop(bus_t *b, const char *what)
{
    log_warn("bus: redis %s: connection lost: %s", what, b->rc && b->rc->errstr[0] ? b->rc->errstr : "no reply");
    redisFree(b->rc);
    b->rc = NULL;
}

static int connect_now(bus_t *b)
{
    if (b->rc && b->rc->err)
        drop(b, "check");
    if (b->rc)
        return 0;
    char *err = NULL;
    b->rc = redis_connect_url(b->url, CMD_TIMEOUT_MS, &err);
    if (!b->rc) {
        log_warn("bus: redis connect failed: %s", err);
        free(err);
        return -1;
    }
    b->timeout_ms = CMD_TIMEOUT_MS;
    return 0;
}

/* Sets the socket timeout; on failure drops the connection (b->rc is then NULL). */
static void set_timeout(bus_t *b, int64_t ms)
{
    if (b->timeout_ms == ms)
        return;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    if (redisSetTimeout(b->rc, tv) != REDIS_OK)
        drop(b, "set timeout");
    else
        b->timeout_ms = ms;
}

/* Connects when needed, and narrows a timeout a blocking read left wide.
 * 0 or -1. */
static int ready(bus_t *b)
{
    if (connect_now(b) != 0)
        return -1;
    if (b->timeout_ms > CMD_TIMEOUT_MS + TIMEOUT_SLACK_MS)
        set_timeout(b, CMD_TIMEOUT_MS);
    return b->rc ? 0 : -1;
}

/* Runs one command: the reply (caller frees), or NULL when there was no
 * connection or it broke (then dropped, logged). */
static redisReply *call(bus_t *b, const char *what, const cmd_t *c)
{
    if (ready(b) != 0)
        return NULL;
    redisReply *r = redisCommandArgv(b->rc, (int)c->n, c->argv, c->lens);
    if (!r || b->rc->err) {
        if (r)
            freeReplyObject(r);
        drop(b, what);
        return NULL;
    }
    return r;
}

/* Queues a command of a pipeline; -1 drops the connection (it may hold half a pipeline). */
static int append_as_is(bus_t *b, const char *what, const cmd_t *c)
{
    if (connect_now(b) != 0)
        return -1;
    if (redisAppendCommandArgv(b->rc, (int)c->n, c->argv, c->lens) != REDIS_OK) {
        drop(b, what);
        return -1;
    }
    return 0;
}

/* append_as_is, with the timeout set back first when a read left it wide. */
static int append(bus_t *b, const char *what, const cmd_t *c)
{
    return ready(b) != 0 ? -1 : append_as_is(b, what, c);
}

/* Writes the queued commands of a pipeline out now; -1 drops the connection. */
static int flush(bus_t *b, const char *what)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(b->rc, &done) != REDIS_OK) {
            drop(b, what);
            return -1;
        }
    return 0;
}

/* Reads n replies of a pipeline into r[] (all or none: on failure every reply
 * is freed and the connection dropped). In the reply arena (arena_begin) the
 * replies are freed by arena_end instead. */
static int collect(bus_t *b, const char *what, redisReply **r, size_t n)
{
    bool arena = b->rc->reader->privdata == b->arena && b->arena;
    for (size_t i = 0; i < n; i++) {
        void *p = NULL;
        if (redisGetReply(b->rc, &p) != REDIS_OK || !p) {
            if (p && !arena)
                freeReplyObject(p);
            for (size_t k = 0; k < i; k++) {
                if (!arena)
                    freeReplyObject(r[k]);
                r[k] = NULL; /* callers free what is left in r[] */
            }
            drop(b, what);
            return -1;
        }
        r[i] = p;
    }
    return 0;
}

/* The replies read from now on are built in the handle's arena. */
static void arena_begin(bus_t *b)
{
    if (!b->arena)
        b->arena = reply_arena_new();
    reply_arena_attach(b->arena, b->rc->reader);
}

/* Drops the replies built since arena_begin (r[0..n), set to NULL); the
 * reader allocates on its own again. */
static void arena_end(bus_t *b, redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        r[i] = NULL;
    if (b->rc)
        reply_arena_detach(b->arena, b->rc->reader);
    reply_arena_reset(b->arena);
}

static void free_replies(redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r[i])
            freeReplyObject(r[i]);
}

/* Logs an error reply; true when r is one. */
static bool is_error(const redisReply *r, const char *what, const char *stream)
{
    if (r->type != REDIS_REPLY_ERROR)
        return false;
    log_warn("bus: redis %s %s: %s", what, stream, r->str);
    return true;
}

static bool no_such_key(const redisReply *r)
{
    return r->type == REDIS_REPLY_ERROR && strstr(r->str, "no such key");
}

static bool is_text(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static void copy_text(char *dst, size_t cap, const redisReply *r)
{
    if (is_text(r))
        snprintf(dst, cap, "%.*s", (int)r->len, r->str);
    else
        dst[0] = '\0';
}

static bool parse_reply_id(const redisReply *r, bus_id_t *out)
{
    return is_text(r) && bus_id_parse(r->str, r->len, NULL, out) == 0;
}

/* In a flat name/value array (XINFO), the value of key, or NULL. */
static const redisReply *kv_get(const redisReply *arr, const char *key)
{
    if (!arr || arr->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < arr->elements; i += 2)
        if (is_text(arr->element[i]) && strcmp(arr->element[i]->str, key) == 0)
            return arr->element[i + 1];
    return NULL;
}

static int64_t kv_int(const redisReply *arr, const char *key, int64_t dflt)
{
    const redisReply *v = kv_get(arr, key);
    if (v && v->type == REDIS_REPLY_INTEGER)
        return v->integer;
    return dflt;
}

/* ---- entries ---- */

/* Fills m from an entry reply [id, [name, value, ...] | nil]. */
static void decode_entry(bus_msg_t *m, const char *stream, const redisReply *e)
{
    snprintf(m->stream, sizeof m->stream, "%s", stream);
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !is_text(e->element[0])) {
        m->bad = true;
        m->why = "malformed stream entry";
        return;
    }
    copy_text(m->entry_id, sizeof m->entry_id, e->element[0]);
    const redisReply *f = e->element[1];
    if (f->type == REDIS_REPLY_NIL) {
        m->missing = true; /* a pending entry whose payload is gone */
        return;
    }
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2 != 0) {
        m->bad = true;
        m->why = "malformed stream entry";
        return;
    }
    size_t n = f->elements / 2;
    const char *names_s[DECODE_STACK], *vals_s[DECODE_STACK];
    size_t nlens_s[DECODE_STACK], vlens_s[DECODE_STACK];
    const char **names = names_s, **vals = vals_s;
    size_t *nlens = nlens_s, *vlens = vlens_s;
    if (n > DECODE_STACK) {
        names = xmalloc(n * sizeof *names);
        vals = xmalloc(n * sizeof *vals);
        nlens = xmalloc(n * sizeof *nlens);
        vlens = xmalloc(n * sizeof *vlens);
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *k = f->element[2 * i], *v = f->element[2 * i + 1];
        if (!is_text(k) || !is_text(v)) {
            m->bad = true;
            m->why = "malformed stream entry";
            goto out;
        }
        names[i] = k->str;
        nlens[i] = k->len;
        vals[i] = v->str;
        vlens[i] = v->len;
    }
    bus_msg_decode(m, names, nlens, vals, vlens, n);
out:
    if (names != names_s) {
        free(names);
        free(vals);
        free(nlens);
        free(vlens);
    }
}

/* Fills deliveries of out->msgs[from..] from an extended XPENDING reply
 * ([[id, consumer, idle, count], ...], id order, as the messages are). */
static void fill_deliveries(bus_batch_t *out, size_t from, size_t to, const redisReply *p)
{
    if (!p || p->type != REDIS_REPLY_ARRAY)
        return;
    size_t j = 0;
    for (size_t i = from; i < to; i++) {
        bus_msg_t *m = &out->msgs[i];
        for (size_t k = j; k < p->elements; k++) {
            const redisReply *row = p->element[k];
            if (row->type != REDIS_REPLY_ARRAY || row->elements < 4 || !is_text(row->element[0]) ||
                strcmp(row->element[0]->str, m->entry_id) != 0)
                continue;
            if (row->element[3]->type == REDIS_REPLY_INTEGER)
                m->deliveries = (uint32_t)row->element[3]->integer;
            j = k + 1;
            break;
        }
    }
}

/* ---- operations ---- */

static void r_close(bus_t *b)
{
    redisFree(b->rc);
    b->rc = NULL;
    reply_arena_free(b->arena);
    b->arena = NULL;
    free(b->url);
    b->url = NULL;
}

static int r_ensure(bus_t *b)
{
    return connect_now(b);
}

static int r_ping(bus_t *b)
{
    cmd_t c = {0};
    arg(&c, "PING");
    redisReply *r = call(b, "PING", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_text(r) && strcmp(r->str, "PONG") == 0 ? 0 : -1;
    if (rc != 0)
        log_warn("bus: redis PING: unexpected reply");
    freeReplyObject(r);
    return rc;
}

/* A write of the handle's guard key (a publish's own key, expiring soon):
 * refused as a whole while Redis refuses writes. */
static int r_writable(bus_t *b)
{
    cmd_t c = {0};
    const char *argv[] = {"SET", b->guard_key, "probe", "PX", "10000"};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    redisReply *r = call(b, "SET", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_error(r, "SET", b->guard_key) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

/* A publish must leave on the bus a prefix of its batch, never a later entry
 * without an earlier one: the caller publishes what failed again, after the
 * entries that went in, and an entry that went in ahead of an earlier
 * message of its aggregate would be read first. Pipelined XADDs do not
 * promise that: an error that clears while the pipeline is read leaves
 * holes. Redis answers -LOADING while it loads its data after a restart,
 * then runs the rest of a pipeline that straddles the end of the load
 * (test_fault caught it: seq 23 of an aggregate on the stream ahead of seq
 * 22); -BUSY (a script past its threshold) and -OOM clear the same way.
 *
 * So a batch goes as scripts of up to PUBLISH_CHUNK entries, pipelined (Redis
 * appends one part while the next is formatted). A script stops at its
 * first failing XADD, and the next part runs only if the one before went in
 * whole: the part before leaves a token in a guard key of this handle's, and
 * each part checks for its predecessor's token before it writes. A single
 * entry is a plain XADD (atomic by itself). MULTI/EXEC would not do: a
 * MULTI refused with -LOADING leaves the XADDs behind it to run one by one.
 *
 * KEYS: the part's streams, one per entry, then the guard key. ARGV: the
 * number of fields per entry, the token to find in the guard ("" for the
 * first part), the token to leave ("" for the last part: the guard is
 * removed), "1" when the caller wants the ids, the field names, then each
 * entry's values. Returns the ids, or how many went in. */
static const char publish_lua[] =
    "local nf = tonumber(ARGV[1]) local g = KEYS[#KEYS]"
    " if ARGV[2] ~= '' and redis.call('GET', g) ~= ARGV[2] then"
    " return redis.error_reply('ECOMGUARD an earlier part of this publish did not go in') end"
    " local want, n, ids, a, v = ARGV[4] == '1', #KEYS - 1, {}, {'', '*'}, 4 + nf"
    " for f = 1, nf do a[2 * f + 1] = ARGV[4 + f] end"
    " for i = 1, n do"
    " a[1] = KEYS[i]"
    " for f = 1, nf do a[2 * f + 2] = ARGV[v + (i - 1) * nf + f] end"
    " local id = redis.call('XADD', unpack(a)) if want then ids[i] = id end end"
    " if ARGV[3] ~= '' then redis.call('SET', g, ARGV[3], 'PX', 60000)"
    " elseif ARGV[2] ~= '' then redis.call('DEL', g) end"
    " if want then return ids end return n";

/* The arguments of one entry (XADD's, or its part of a script's). */
typedef struct pub_entry {
    char stream[BUS_STREAM_MAX];
    char tmp[ENV_NFIELDS][32];
    const char *val[ENV_NFIELDS];
} pub_entry_t;

static void pub_entry_fill(pub_entry_t *e, const envelope_t *m)
{
    envelope_stream_name(m->topic, e->stream, sizeof e->stream);
    for (int f = 0; f < ENV_NFIELDS; f++)
        e->val[f] = envelope_field_value(m, f, e->tmp[f]);
}

static int publish_one(bus_t *b, const envelope_t *m, char (*ids_out)[BUS_ID_MAX])
{
    pub_entry_t e;
    pub_entry_fill(&e, m);
    cmd_t c = {0};
    arg(&c, "XADD");
    arg(&c, e.stream);
    arg(&c, "*");
    for (int f = 0; f < ENV_NFIELDS; f++) {
        arg(&c, envelope_field_name(f));
        arg(&c, e.val[f]);
    }
    redisReply *r = call(b, "XADD", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_text(r) ? 0 : -1;
    if (rc != 0)
        log_warn("bus: redis publish: %s", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    else if (ids_out)
        copy_text(ids_out[0], BUS_ID_MAX, r);
    freeReplyObject(r);
    return rc;
}

/* How many of n entries part p of a publish holds. */
static size_t part_len(size_t n, size_t p)
{
    size_t from = p * PUBLISH_CHUNK;
    return n - from < PUBLISH_CHUNK ? n - from : PUBLISH_CHUNK;
}

static int r_publish(bus_t *b, const envelope_t *msgs, size_t n, char (*ids_out)[BUS_ID_MAX])
{
    if (n <= 1)
        return n ? publish_one(b, msgs, ids_out) : 0;
    size_t parts = (n + PUBLISH_CHUNK - 1) / PUBLISH_CHUNK;
    int rc = -1;
    cmd_t c = {0};
    redisReply **r = xcalloc(parts, sizeof *r);
    pub_entry_t *e = xmalloc(part_len(n, 0) * sizeof *e);
    char nf[8], keys[16], token[2][64];
    snprintf(nf, sizeof nf, "%d", ENV_NFIELDS);
    uint64_t call_no = ++b->publishes;
    for (size_t p = 0; p < parts; p++) {
        size_t from = p * PUBLISH_CHUNK, cnt = part_len(n, p);
        char *expect = token[p % 2], *leave = token[(p + 1) % 2];
        if (p == 0)
            expect[0] = '\0';
        if (p + 1 < parts)
            snprintf(leave, sizeof token[0], "%" PRIu64 ".%zu", call_no, p);
        else
            leave[0] = '\0';
        cmd_reset(&c);
        arg(&c, "EVAL");
        arg(&c, publish_lua);
        snprintf(keys, sizeof keys, "%zu", cnt + 1);
        arg(&c, keys);
        for (size_t i = 0; i < cnt; i++) {
            pub_entry_fill(&e[i], &msgs[from + i]);
            arg(&c, e[i].stream);
        }
        arg(&c, b->guard_key);
        arg(&c, nf);
        arg(&c, expect);
        arg(&c, leave);
        arg(&c, ids_out ? "1" : "0");
        for (int f = 0; f < ENV_NFIELDS; f++)
            arg(&c, envelope_field_name(f));
        for (size_t i = 0; i < cnt; i++)
            for (int f = 0; f < ENV_NFIELDS; f++)
                arg(&c, e[i].val[f]);
        if (append(b, "publish", &c) != 0)
            goto out;
        /* Redis appends this part while the next one is formatted */
        if (p + 1 < parts && flush(b, "publish") != 0)
            goto out;
    }
    if (collect(b, "publish", r, parts) != 0)
        goto out;
    for (size_t p = 0; p < parts; p++) {
        size_t from = p * PUBLISH_CHUNK, cnt = part_len(n, p);
        bool whole = ids_out ? r[p]->type == REDIS_REPLY_ARRAY && r[p]->elements == cnt
                             : r[p]->type == REDIS_REPLY_INTEGER && r[p]->integer == (long long)cnt;
        if (!whole) {
            /* e.g. WRONGTYPE, or -LOADING: what went before it stays, nothing after it went in */
            log_warn("bus: redis publish: part %zu of %zu: %s", p + 1, parts,
                     r[p]->type == REDIS_REPLY_ERROR ? r[p]->str : "unexpected reply");
            goto out;
        }
        for (size_t i = 0; ids_out && i < cnt; i++)
            copy_text(ids_out[from + i], BUS_ID_MAX, r[p]->element[i]);
    }
    rc = 0;
out:
    free_replies(r, parts);
    free(r);
    free(e);
    cmd_free(&c);
    return rc;
}

static int r_group_create(bus_t *b, const char *stream, const char *group)
{
    cmd_t c = {0};
    const char *argv[] = {"XGROUP", "CREATE", stream, group, "0", "MKSTREAM"};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    redisReply *r = call(b, "XGROUP CREATE", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    /* BUSYGROUP: it exists already, which is what was asked */
    bool busy = r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) == 0;
    int rc = busy || !is_error(r, "XGROUP CREATE", stream) ? 0 : -1;
    freeReplyObject(r);
    return rc;
}

/* A stream read (r_read), after nacks acknowledgements in the same pipeline. */
static int read_impl(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                     const char *history_after, size_t count, int block_ms, bus_acks_t *acks, size_t nacks,
                     bus_batch_t *out)
{
    int rc = -1;
    bool own_pending = history_after != NULL;
    char pend_from[BUS_ID_MAX] = "-"; /* XPENDING's start is inclusive: the id after history_after */
    uint64_t seq0 = 0;
    bus_id_t after;
    if (own_pending && bus_id_parse(history_after, strlen(history_after), &seq0, &after) == 0)
        bus_id_format(bus_id_next(after), pend_from);
    cmd_t c = {0};
    size_t sent = 0; /* acknowledgements with ids: an XACK each */
    for (size_t i = 0; i < nacks; i++)
        sent += acks[i].n > 0;
    size_t nr = sent + 1 + (own_pending ? ns : 0);
    redisReply **all = xcalloc(nr, sizeof *all), **r = all + sent;
    size_t start = out->n;
    bool in_arena = false;
    /* the timeout this pipeline needs, set only when it is too short or far too long */
    int64_t need = block_ms > 0 ? (int64_t)block_ms + CMD_TIMEOUT_MS : CMD_TIMEOUT_MS;
    if (connect_now(b) != 0)
        goto out;
    if (b->timeout_ms < need || b->timeout_ms > need + TIMEOUT_SLACK_MS) {
        set_timeout(b, need);
        if (!b->rc)
            goto out;
    }

    for (size_t i = 0; i < nacks; i++) {
        if (!acks[i].n)
            continue;
        cmd_reset(&c);
        arg(&c, "XACK");
        arg(&c, acks[i].stream);
        arg(&c, group);
        for (size_t k = 0; k < acks[i].n; k++)
            arg(&c, acks[i].ids[k]);
        if (append_as_is(b, "XACK", &c) != 0)
            goto out;
    }
    cmd_reset(&c);
    arg(&c, "XREADGROUP");
    arg(&c, "GROUP");
    arg(&c, group);
    arg(&c, consumer);
    arg(&c, "COUNT");
    arg_u64(&c, count);
    if (block_ms > 0) {
        arg(&c, "BLOCK");
        arg_u64(&c, (uint64_t)block_ms);
    }
    arg(&c, "STREAMS");
    for (size_t i = 0; i < ns; i++)
        arg(&c, streams[i]);
    for (size_t i = 0; i < ns; i++)
        arg(&c, own_pending ? history_after : ">");
    if (append_as_is(b, "XREADGROUP", &c) != 0)
        goto out;
    for (size_t i = 0; own_pending && i < ns; i++) {
        cmd_reset(&c);
        const char *argv[] = {"XPENDING", streams[i], group, pend_from, "+"};
        args(&c, argv, ECOM_ARRAY_LEN(argv));
        arg_u64(&c, count);
        arg(&c, consumer);
        if (append_as_is(b, "XPENDING", &c) != 0)
            goto out;
    }
    arena_begin(b); /* the entries are copied out (decode_entry) before arena_end */
    in_arena = true;
    if (collect(b, "XREADGROUP", all, nr) != 0)
        goto out;
    for (size_t i = 0, k = 0; i < nacks; i++)
        acks[i].done = !acks[i].n || !is_error(all[k++], "XACK", acks[i].stream);
    if (is_error(r[0], "XREADGROUP", streams[0]))
        goto out;
    if (r[0]->type == REDIS_REPLY_ARRAY) {
        /* [[stream, [entry, ...]], ...], streams in the order asked */
        for (size_t i = 0; i < r[0]->elements; i++) {
            const redisReply *sr = r[0]->element[i];
            if (sr->type != REDIS_REPLY_ARRAY || sr->elements < 2 || !is_text(sr->element[0]) ||
                sr->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            const char *sname = sr->element[0]->str;
            size_t from = out->n;
            for (size_t k = 0; k < sr->element[1]->elements; k++) {
                bus_msg_t *m = bus_batch_push(out);
                decode_entry(m, sname, sr->element[1]->element[k]);
                if (!own_pending)
                    m->deliveries = 1;
            }
            for (size_t s = 0; own_pending && s < ns; s++)
                if (strcmp(streams[s], sname) == 0)
                    fill_deliveries(out, from, out->n, r[1 + s]);
        }
    }
    rc = 0;
out:
    if (rc != 0) {
        /* nothing half-read stays in out */
        for (size_t i = start; i < out->n; i++)
            envelope_clear(&out->msgs[i].env);
        out->n = start;
    }
    if (in_arena)
        arena_end(b, all, nr);
    else
        free_replies(all, nr);
    free(all);
    cmd_free(&c);
    return rc;
}

static int r_read(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                  const char *history_after, size_t count, int block_ms, bus_batch_t *out)
{
    return read_impl(b, group, consumer, streams, ns, history_after, count, block_ms, NULL, 0, out);
}

static int r_read_acking(bus_t *b, const char *group, const char *consumer, const char *const *streams, size_t ns,
                         size_t count, int block_ms, bus_acks_t *acks, size_t nacks, bus_batch_t *out)
{
    return read_impl(b, group, consumer, streams, ns, NULL, count, block_ms, acks, nacks, out);
}

static int r_ack(bus_t *b, const char *stream, const char *group, const char *const *ids, size_t n)
{
    cmd_t c = {0};
    arg(&c, "XACK");
    arg(&c, stream);
    arg(&c, group);
    for (size_t i = 0; i < n; i++)
        arg(&c, ids[i]);
    redisReply *r = call(b, "XACK", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_error(r, "XACK", stream) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

/* Delivery counts of claimed messages out->msgs[from..to): one XPENDING <id> <id> 1
 * each, pipelined. Best effort: a failure leaves them 0 (unknown). */
static void claimed_deliveries(bus_t *b, const char *stream, const char *group, bus_batch_t *out, size_t from,
                               size_t to)
{
    size_t n = 0;
    for (size_t i = from; i < to; i++)
        n += !out->msgs[i].missing;
    if (n == 0)
        return;
    cmd_t c = {0};
    redisReply **r = xcalloc(n, sizeof *r);
    for (size_t i = from; i < to; i++) {
        if (out->msgs[i].missing)
            continue;
        cmd_reset(&c);
        const char *argv[] = {"XPENDING", stream, group, out->msgs[i].entry_id, out->msgs[i].entry_id, "1"};
        args(&c, argv, ECOM_ARRAY_LEN(argv));
        if (append(b, "XPENDING", &c) != 0)
            goto out;
    }
    if (collect(b, "XPENDING", r, n) != 0)
        goto out;
    size_t k = 0;
    for (size_t i = from; i < to; i++)
        if (!out->msgs[i].missing)
            fill_deliveries(out, i, i + 1, r[k++]);
out:
    free_replies(r, n);
    free(r);
    cmd_free(&c);
}

/* XCLAIM with min-idle 0 would take an entry from whoever has it: the
 * script sets the count only of entries still the consumer's, atomically.
 * KEYS[1] stream; ARGV group, consumer, then id, count pairs. */
static const char set_deliveries_lua[] =
    "for i = 3, #ARGV, 2 do"
    " if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) == 1 then"
    " redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', ARGV[i + 1], 'JUSTID') end"
    " end return 0";

static int r_set_deliveries(bus_t *b, const char *stream, const char *group, const char *consumer,
                            const char (*ids)[BUS_ID_MAX], const uint32_t *counts, size_t n)
{
    cmd_t c = {0};
    char(*nums)[12] = xmalloc(n * sizeof *nums); /* the counts as text (arg_u64 holds only a few) */
    arg(&c, "EVAL");
    arg(&c, set_deliveries_lua);
    arg(&c, "1");
    arg(&c, stream);
    arg(&c, group);
    arg(&c, consumer);
    for (size_t i = 0; i < n; i++) {
        snprintf(nums[i], sizeof nums[i], "%" PRIu32, counts[i]);
        arg(&c, ids[i]);
        arg(&c, nums[i]);
    }
    redisReply *r = call(b, "EVAL", &c);
    cmd_free(&c);
    free(nums);
    if (!r)
        return -1;
    int rc = is_error(r, "EVAL", stream) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

static int r_reclaim(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t min_idle_ms,
                     size_t count, bus_batch_t *out)
{
    int rc = -1;
    cmd_t c = {0};
    redisReply *r = NULL;
    char cursor[BUS_ID_MAX] = "0-0";
    size_t start = out->n, got = 0;
    for (;;) {
        cmd_reset(&c);
        const char *argv[] = {"XAUTOCLAIM", stream, group, consumer};
        args(&c, argv, ECOM_ARRAY_LEN(argv));
        arg_u64(&c, (uint64_t)min_idle_ms);
        arg(&c, cursor);
        arg(&c, "COUNT");
        arg_u64(&c, count - got);
        r = call(b, "XAUTOCLAIM", &c);
        if (!r || is_error(r, "XAUTOCLAIM", stream))
            goto fail;
        /* [next cursor, [claimed entry, ...], [id whose payload is gone, ...]] */
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_text(r->element[0]) ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            log_warn("bus: redis XAUTOCLAIM %s: unexpected reply", stream);
            goto fail;
        }
        const redisReply *claimed = r->element[1];
        for (size_t k = 0; k < claimed->elements; k++, got++)
            decode_entry(bus_batch_push(out), stream, claimed->element[k]);
        const redisReply *gone = r->elements >= 3 ? r->element[2] : NULL;
        for (size_t k = 0; gone && gone->type == REDIS_REPLY_ARRAY && k < gone->elements; k++, got++) {
            bus_msg_t *m = bus_batch_push(out);
            snprintf(m->stream, sizeof m->stream, "%s", stream);
            copy_text(m->entry_id, sizeof m->entry_id, gone->element[k]);
            m->missing = true;
        }
        copy_text(cursor, sizeof cursor, r->element[0]);
        freeReplyObject(r);
        r = NULL;
        if (strcmp(cursor, "0-0") == 0 || got >= count)
            break;
    }
    claimed_deliveries(b, stream, group, out, start, out->n);
    rc = 0;
fail:
    if (r)
        freeReplyObject(r);
    cmd_free(&c);
    /* entries claimed before a later round failed did move to consumer: hand them over */
    if (rc != 0 && out->n > start) {
        claimed_deliveries(b, stream, group, out, start, out->n);
        rc = 0;
    }
    return rc;
}

static int r_pending(bus_t *b, const char *stream, const char *group, bus_pending_entry_t *out, size_t max, size_t *n)
{
    cmd_t c = {0};
    const char *argv[] = {"XPENDING", stream, group, "-", "+"};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    arg_u64(&c, max);
    redisReply *r = call(b, "XPENDING", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = -1;
    if (is_error(r, "XPENDING", stream))
        goto out;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && *n < max; i++) {
        const redisReply *row = r->element[i];
        if (row->type != REDIS_REPLY_ARRAY || row->elements < 4)
            continue;
        bus_pending_entry_t *pe = &out[(*n)++];
        memset(pe, 0, sizeof *pe);
        copy_text(pe->entry_id, sizeof pe->entry_id, row->element[0]);
        copy_text(pe->consumer, sizeof pe->consumer, row->element[1]);
        pe->idle_ms = row->element[2]->type == REDIS_REPLY_INTEGER ? row->element[2]->integer : 0;
        pe->deliveries = row->element[3]->type == REDIS_REPLY_INTEGER ? (uint32_t)row->element[3]->integer : 0;
    }
    rc = 0;
out:
    freeReplyObject(r);
    return rc;
}

/* Pipelined: XPENDING's summary ([count, first id, last id, [[consumer,
 * count], ...]]) and XINFO CONSUMERS ([[name, n, pending, n, idle, ms,
 * ...], ...]). A missing stream or group is nobody's. */
static int r_group_others(bus_t *b, const char *stream, const char *group, const char *consumer, int64_t active_ms,
                          uint64_t *pending, uint64_t *active)
{
    cmd_t c = {0};
    redisReply *r[2] = {NULL, NULL};
    int rc = -1;
    const char *a1[] = {"XPENDING", stream, group};
    args(&c, a1, ECOM_ARRAY_LEN(a1));
    if (append(b, "XPENDING", &c) != 0)
        goto out;
    cmd_reset(&c);
    const char *a2[] = {"XINFO", "CONSUMERS", stream, group};
    args(&c, a2, ECOM_ARRAY_LEN(a2));
    if (append_as_is(b, "XINFO CONSUMERS", &c) != 0 || collect(b, "XPENDING", r, 2) != 0)
        goto out;
    for (int k = 0; k < 2; k++)
        if (r[k]->type == REDIS_REPLY_ERROR) {
            if (no_such_key(r[k]) || strncmp(r[k]->str, "NOGROUP", 7) == 0) {
                rc = 0; /* nobody's */
                *pending = *active = 0;
            } else {
                log_warn("bus: redis XPENDING/XINFO %s: %s", stream, r[k]->str);
            }
            goto out;
        }
    if (r[0]->type != REDIS_REPLY_ARRAY || r[0]->elements < 4 || r[1]->type != REDIS_REPLY_ARRAY)
        goto out;
    const redisReply *cs = r[0]->element[3];
    for (size_t i = 0; cs->type == REDIS_REPLY_ARRAY && i < cs->elements; i++) {
        const redisReply *row = cs->element[i];
        if (row->type != REDIS_REPLY_ARRAY || row->elements < 2 || !is_text(row->element[0]) ||
            strcmp(row->element[0]->str, consumer) == 0)
            continue;
        *pending += is_text(row->element[1])                       ? strtoull(row->element[1]->str, NULL, 10)
                    : row->element[1]->type == REDIS_REPLY_INTEGER ? (uint64_t)row->element[1]->integer
                                                                   : 0;
    }
    for (size_t i = 0; i < r[1]->elements; i++) {
        const redisReply *row = r[1]->element[i];
        const char *name = NULL;
        long long idle = -1;
        for (size_t k = 0; row->type == REDIS_REPLY_ARRAY && k + 1 < row->elements; k += 2) {
            if (!is_text(row->element[k]))
                continue;
            if (strcmp(row->element[k]->str, "name") == 0 && is_text(row->element[k + 1]))
                name = row->element[k + 1]->str;
            else if (strcmp(row->element[k]->str, "idle") == 0 && row->element[k + 1]->type == REDIS_REPLY_INTEGER)
                idle = row->element[k + 1]->integer;
        }
        if (name && strcmp(name, consumer) != 0 && idle >= 0 && idle < active_ms)
            (*active)++;
    }
    rc = 0;
out:
    free_replies(r, 2);
    cmd_free(&c);
    return rc;
}

static int r_add_fields(bus_t *b, const char *stream, const char *const *fields, size_t nfields)
{
    cmd_t c = {0};
    arg(&c, "XADD");
    arg(&c, stream);
    arg(&c, "*");
    for (size_t i = 0; i < 2 * nfields; i++)
        arg(&c, fields[i]);
    redisReply *r = call(b, "XADD", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_error(r, "XADD", stream) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

/* KEYS[1] the stream the entry ARGV[1] is in, KEYS[2] where its fields
 * (ARGV[2..]) go. Nothing happens when the entry is gone (a second move of
 * it, say from a concurrent replay). XADD goes first, so a failure there
 * leaves the entry in place; XDEL of an entry just read cannot fail. */
static const char move_fields_lua[] = "if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return 0 end"
                                      " redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))"
                                      " redis.call('XDEL', KEYS[1], ARGV[1]) return 1";

static int r_move_fields(bus_t *b, const char *from, const char *id, const char *to, const char *const *fields,
                         size_t nfields)
{
    cmd_t c = {0};
    const char *argv[] = {"EVAL", move_fields_lua, "2", from, to, id};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    for (size_t i = 0; i < 2 * nfields; i++)
        arg(&c, fields[i]);
    redisReply *r = call(b, "EVAL", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = -1;
    if (is_error(r, "EVAL", from))
        rc = -1;
    else if (r->type == REDIS_REPLY_INTEGER && (r->integer == 0 || r->integer == 1))
        rc = r->integer == 1 ? 0 : 1;
    else
        log_warn("bus: redis move from %s: unexpected reply type %d", from, r->type);
    freeReplyObject(r);
    return rc;
}

/* The id below which every group is done with a stream: each group's oldest
 * pending entry, or the entry after its last delivered one. *minid stays
 * BUS_ID_MAX_VALUE when the stream has no group or does not exist. */
static int trim_point(bus_t *b, const char *stream, bus_id_t *minid)
{
    int rc = -1;
    cmd_t c = {0};
    redisReply *groups = NULL, **pend = NULL;
    size_t npend = 0;
    *minid = BUS_ID_MAX_VALUE;

    const char *argv[] = {"XINFO", "GROUPS", stream};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    groups = call(b, "XINFO GROUPS", &c);
    if (!groups)
        goto out;
    if (no_such_key(groups)) {
        rc = 0;
        goto out;
    }
    if (is_error(groups, "XINFO GROUPS", stream) || groups->type != REDIS_REPLY_ARRAY)
        goto out;
    if (groups->elements > TRIM_GROUPS_MAX) {
        log_warn("bus: trim %s: %zu groups, not trimming", stream, groups->elements);
        goto out;
    }
    /* groups with pending entries: their oldest, by XPENDING's summary form */
    pend = xcalloc(groups->elements + 1, sizeof *pend);
    for (size_t i = 0; i < groups->elements; i++) {
        const redisReply *g = groups->element[i];
        bus_id_t last;
        const redisReply *name = kv_get(g, "name");
        if (!is_text(name) || !parse_reply_id(kv_get(g, "last-delivered-id"), &last)) {
            log_warn("bus: trim %s: unexpected XINFO GROUPS reply", stream);
            goto out;
        }
        bus_id_t keep = bus_id_next(last);
        if (bus_id_cmp(keep, *minid) < 0)
            *minid = keep;
        if (kv_int(g, "pending", 0) > 0) {
            cmd_reset(&c);
            arg(&c, "XPENDING");
            arg(&c, stream);
            arg(&c, name->str);
            if (append(b, "XPENDING", &c) != 0)
                goto out;
            npend++;
        }
    }
    if (npend && collect(b, "XPENDING", pend, npend) != 0) {
        npend = 0;
        goto out;
    }
    for (size_t i = 0; i < npend; i++) {
        const redisReply *p = pend[i];
        bus_id_t oldest;
        if (is_error(p, "XPENDING", stream))
            goto out;
        /* [count, oldest id, newest id, consumers]; all acknowledged since: nil */
        if (p->type == REDIS_REPLY_ARRAY && p->elements >= 2 && parse_reply_id(p->element[1], &oldest) &&
            bus_id_cmp(oldest, *minid) < 0)
            *minid = oldest;
    }
    rc = 0;
out:
    if (pend) {
        free_replies(pend, npend);
        free(pend);
    }
    if (groups)
        freeReplyObject(groups);
    cmd_free(&c);
    return rc;
}

static int r_trim(bus_t *b, const char *stream, uint64_t *trimmed)
{
    bus_id_t minid;
    if (trim_point(b, stream, &minid) != 0)
        return -1;
    if (bus_id_cmp(minid, BUS_ID_MAX_VALUE) == 0 || bus_id_cmp(minid, (bus_id_t){0, 1}) <= 0)
        return 0; /* no group, or one that has read nothing */
    char id[BUS_ID_MAX];
    bus_id_format(minid, id);
    cmd_t c = {0};
    const char *argv[] = {"XTRIM", stream, "MINID", "~", id};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    redisReply *r = call(b, "XTRIM", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = -1;
    if (!is_error(r, "XTRIM", stream) && r->type == REDIS_REPLY_INTEGER) {
        *trimmed = (uint64_t)r->integer;
        rc = 0;
    }
    freeReplyObject(r);
    return rc;
}

static int r_stream_info(bus_t *b, const char *stream, bus_stream_info_t *out)
{
    int rc = -1;
    cmd_t c = {0};
    redisReply *r[2] = {NULL, NULL};
    const char *sub[] = {"STREAM", "GROUPS"};
    for (size_t i = 0; i < 2; i++) {
        cmd_reset(&c);
        arg(&c, "XINFO");
        arg(&c, sub[i]);
        arg(&c, stream);
        if (append(b, "XINFO", &c) != 0)
            goto out;
    }
    if (collect(b, "XINFO", r, 2) != 0)
        goto out;
    if (no_such_key(r[0])) {
        rc = 0; /* no stream: length 0, no groups */
        goto out;
    }
    if (is_error(r[0], "XINFO STREAM", stream) || is_error(r[1], "XINFO GROUPS", stream))
        goto out;
    out->length = (uint64_t)kv_int(r[0], "length", 0);
    const redisReply *fe = kv_get(r[0], "first-entry"), *le = kv_get(r[0], "last-entry");
    if (fe && fe->type == REDIS_REPLY_ARRAY && fe->elements >= 1)
        copy_text(out->first_id, sizeof out->first_id, fe->element[0]);
    if (le && le->type == REDIS_REPLY_ARRAY && le->elements >= 1)
        copy_text(out->last_id, sizeof out->last_id, le->element[0]);
    for (size_t i = 0; r[1]->type == REDIS_REPLY_ARRAY && i < r[1]->elements; i++) {
        if (out->ngroups == ECOM_ARRAY_LEN(out->groups))
            break;
        const redisReply *g = r[1]->element[i];
        bus_group_info_t *gi = &out->groups[out->ngroups++];
        copy_text(gi->name, sizeof gi->name, kv_get(g, "name"));
        gi->consumers = (uint64_t)kv_int(g, "consumers", 0);
        gi->pending = (uint64_t)kv_int(g, "pending", 0);
        copy_text(gi->last_delivered, sizeof gi->last_delivered, kv_get(g, "last-delivered-id"));
        gi->lag = kv_int(g, "lag", -1); /* nil when Redis cannot tell */
    }
    rc = 0;
out:
    free_replies(r, 2);
    cmd_free(&c);
    return rc;
}

static int r_list_streams(bus_t *b, char ***names, size_t *n)
{
    int rc = -1;
    cmd_t c = {0};
    redisReply *r = NULL;
    size_t cap = 0;
    char cursor[32] = "0";
    do {
        cmd_reset(&c);
        const char *argv[] = {"SCAN", cursor, "MATCH", "ecom:*", "TYPE", "stream", "COUNT", "1000"};
        args(&c, argv, ECOM_ARRAY_LEN(argv));
        r = call(b, "SCAN", &c);
        if (!r || is_error(r, "SCAN", "ecom:*"))
            goto out;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !is_text(r->element[0]) ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            log_warn("bus: redis SCAN: unexpected reply");
            goto out;
        }
        const redisReply *keys = r->element[1];
        for (size_t i = 0; i < keys->elements; i++) {
            if (!is_text(keys->element[i]))
                continue;
            if (*n == cap) {
                cap = cap ? cap * 2 : 16;
                *names = xrealloc(*names, cap * sizeof **names);
            }
            (*names)[(*n)++] = xstrndup(keys->element[i]->str, keys->element[i]->len);
        }
        copy_text(cursor, sizeof cursor, r->element[0]);
        freeReplyObject(r);
        r = NULL;
    } while (strcmp(cursor, "0") != 0);
    rc = 0;
out:
    if (r)
        freeReplyObject(r);
    if (rc != 0) {
        for (size_t i = 0; i < *n; i++)
            free((*names)[i]);
        free(*names);
        *names = NULL;
        *n = 0;
    }
    cmd_free(&c);
    return rc;
}

static int r_range(bus_t *b, const char *stream, bus_id_t start, bus_id_t end, size_t count, bus_entry_t **out,
                   size_t *n)
{
    int rc = -1;
    char lo[BUS_ID_MAX], hi[BUS_ID_MAX];
    bus_id_format(start, lo);
    bus_id_format(end, hi);
    cmd_t c = {0};
    const char *argv[] = {"XRANGE", stream, lo, hi};
    args(&c, argv, ECOM_ARRAY_LEN(argv));
    if (count) {
        arg(&c, "COUNT");
        arg_u64(&c, count);
    }
    redisReply *r = call(b, "XRANGE", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    if (is_error(r, "XRANGE", stream) || r->type != REDIS_REPLY_ARRAY)
        goto out;
    *out = xcalloc(r->elements + 1, sizeof **out);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || e->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        const redisReply *f = e->element[1];
        bus_entry_t *be = &(*out)[(*n)++];
        copy_text(be->entry_id, sizeof be->entry_id, e->element[0]);
        be->nfields = f->elements / 2;
        be->fields = xmalloc((2 * be->nfields + 1) * sizeof *be->fields);
        for (size_t k = 0; k < 2 * be->nfields; k++)
            be->fields[k] = is_text(f->element[k]) ? xstrndup(f->element[k]->str, f->element[k]->len) : xstrdup("");
    }
    rc = 0;
out:
    freeReplyObject(r);
    return rc;
}

static int r_delete_entries(bus_t *b, const char *stream, const char *const *ids, size_t n)
{
    cmd_t c = {0};
    arg(&c, "XDEL");
    arg(&c, stream);
    for (size_t i = 0; i < n; i++)
        arg(&c, ids[i]);
    redisReply *r = call(b, "XDEL", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_error(r, "XDEL", stream) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

static int r_delete_stream(bus_t *b, const char *stream)
{
    cmd_t c = {0};
    arg(&c, "DEL");
    arg(&c, stream);
    redisReply *r = call(b, "DEL", &c);
    cmd_free(&c);
    if (!r)
        return -1;
    int rc = is_error(r, "DEL", stream) ? -1 : 0;
    freeReplyObject(r);
    return rc;
}

static const bus_ops_t redis_ops = {
    .memory = false,
    .close = r_close,
    .ensure = r_ensure,
    .ping = r_ping,
    .writable = r_writable,
    .publish = r_publish,
    .group_create = r_group_create,
    .read = r_read,
    .ack = r_ack,
    .read_acking = r_read_acking,
    .reclaim = r_reclaim,
    .set_deliveries = r_set_deliveries,
    .pending = r_pending,
    .group_others = r_group_others,
    .add_fields = r_add_fields,
    .move_fields = r_move_fields,
    .trim = r_trim,
    .stream_info = r_stream_info,
    .list_streams = r_list_streams,
    .range = r_range,
    .delete_entries = r_delete_entries,
    .delete_stream = r_delete_stream,
};

bus_t *bus_open_redis(const char *url, char **err)
{
    char *why = NULL;
    redisContext *rc = redis_connect_url(url, CMD_TIMEOUT_MS, &why);
    if (!rc) {
        if (err)
            *err = why;
        else
            free(why);
        return NULL;
    }
    bus_t *b = bus_new(&redis_ops);
    b->rc = rc;
    b->timeout_ms = CMD_TIMEOUT_MS;
    b->url = xstrdup(url);
    char id[UUID_STR_LEN];
    uuid_v7(id);
    snprintf(b->guard_key, sizeof b->guard_key, "ecom:publish-guard:%s", id);
    return b;
}
