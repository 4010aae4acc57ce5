/* http-gateway/pgasync.c: see pgasync.h.
 *
 * A connection is in one of five states:
 *   DOWN        no PGconn; its timer reopens it (backoff)
 *   CONNECTING  PQconnectPoll rounds, timer = connect timeout
 *   IDLE        in the pool's idle list, read-watched for a server-side close
 *   LEASED      owned by a request; at most one pipeline (op) in flight,
 *               timer = pipeline timeout; `lost` once its PGconn is gone
 *   RESET       released inside a transaction: an internal ROLLBACK op runs
 * One `struct event` (io) follows the libpq socket and one timer serves every
 * state. Connections live as long as the pool (or, when leased at pga_pool_free,
 * until their pga_release), so no connection is freed under its own callback.
 * Every user callback is called with everything it might touch already settled,
 * and the code calling it does not look at the connection afterwards. */
#include "http-gateway/pgasync.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h> /* struct event is embedded in its owner */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define CONNECT_TIMEOUT_MIN_MS 5000

typedef enum { CS_DOWN, CS_CONNECTING, CS_IDLE, CS_LEASED, CS_RESET } conn_state_t;

/* What the next result set in the pipeline answers: a user statement
 * (stmt >= 0) or a prepare we queued in front of it (stmt < 0, prep_name). */
typedef struct tag {
    int stmt;
    bool soft;       /* pga_stmt_t.after_commit */
    char *prep_name; /* owned until it moves into the prepared set */
} tag_t;

typedef struct op {
    pga_result_cb cb; /* NULL for the internal rollback */
    void *arg;
    int n;
    PGresult **res; /* n entries, owned */
    tag_t *tags;
    int ntags, cur;
    char *err; /* owned */
} op_t;

struct pga_conn {
    pga_pool_t *pool; /* NULL once orphaned by pga_pool_free */
    PGconn *pg;
    conn_state_t state;
    struct event io;
    evutil_socket_t io_fd;
    short io_what; /* 0: io not added */
    struct event tmr;
    int backoff_ms;
    int pid;       /* backend pid of the current PGconn, for logs (libpq says 0 once it is bad) */
    bool lost;     /* LEASED and its PGconn is gone */
    bool has_op;   /* a pipeline (user or internal) is in flight */
    bool abandoning; /* pga_release is delivering its abandoned pipeline's callback */
    bool flushing; /* PQflush said 1: wait for write-readiness too */
    bool in_idle;
    bool ended; /* the server said it ends this session (a FATAL outside a query): it is not handed out */
    op_t op;
    char **prepared; /* names prepared on this PGconn */
    int nprepared;
    TAILQ_ENTRY(pga_conn) idle_link;
};

typedef struct waiter {
    TAILQ_ENTRY(waiter) link;
    struct event tmr;
    pga_pool_t *pool;
    pga_acquire_cb cb;
    void *arg;
} waiter_t;

struct pga_pool {
    struct event_base *base;
    char *url;
    int size, max_waiters, timeout_ms;
    pga_conn_t **conns;
    TAILQ_HEAD(, pga_conn) idle;
    int nidle;
    TAILQ_HEAD(, waiter) waiters;
    int nwaiters;
    struct event kick; /* serves waiters from idle connections, on the next loop pass */
    int in_cb;         /* depth of user callbacks on the stack */
    bool closing;
    char *last_err; /* latest connection failure, owned */
};

static void io_cb(evutil_socket_t fd, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_start(pga_conn_t *c);

/* ---- small helpers ---- */

static struct timeval ms_tv(int ms)
{
    return (struct timeval){.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
}

static void timer_arm(pga_conn_t *c, int ms)
{
    struct timeval tv = ms_tv(ms);
    ECOM_ASSERT(evtimer_add(&c->tmr, &tv) == 0);
}

/* The first line of a libpq message, without trailing blanks (owned). */
static char *first_line(const char *m, const char *fallback)
{
    if (!m || !*m)
        m = fallback;
    size_t n = strcspn(m, "\n");
    while (n && (m[n - 1] == ' ' || m[n - 1] == '\t' || m[n - 1] == '\r'))
        n--;
    return n ? xstrndup(m, n) : xstrdup(fallback);
}

static char *result_error(const PGresult *r)
{
    const char *primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    return first_line(primary ? primary : PQresultErrorMessage(r), "statement failed");
}

/* Messages the server sends outside a query. A FATAL one (the backend was
 * terminated, the server shuts down) comes before the connection closes,
 * and may be read alone: the connection is marked ended at once, so a
 * request never gets it in the moment before the close arrives. */
static void notice_cb(void *arg, const PGresult *res)
{
    pga_conn_t *c = arg;
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *message = PQresultErrorMessage(res);
    if (severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0))
        c->ended = true;
    log_debug("pgasync: server notice: %.*s", (int)strcspn(message, "\n"), message);
}

/* ---- the query cancel, off the event loop ---- */

static atomic_int cancel_threads;

static void *cancel_main(void *arg)
{
    PGcancel *k = arg;
    char msg[256];
    if (!PQcancel(k, msg, (int)sizeof msg))
        log_warn("pgasync: cancel request failed: %.*s", (int)strcspn(msg, "\n"), msg);
    PQfreeCancel(k);
    atomic_fetch_sub(&cancel_threads, 1);
    return NULL;
}

/* PQcancel blocks (it connects to the server), so it runs in a detached thread
 * with every signal blocked; the PGcancel it uses is independent of the PGconn. */
static void cancel_in_background(PGconn *pg)
{
    if (atomic_fetch_add(&cancel_threads, 1) >= PGA_MAX_CANCEL_THREADS) {
        atomic_fetch_sub(&cancel_threads, 1);
        log_warn("pgasync: too many cancels in flight, backend pid=%d not cancelled", PQbackendPID(pg));
        return;
    }
    PGcancel *k = PQgetCancel(pg);
    int rc = -1;
    if (k) {
        pthread_attr_t attr;
        sigset_t all, old;
        sigfillset(&all);
        if (pthread_attr_init(&attr) == 0) {
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            pthread_t t;
            rc = pthread_create(&t, &attr, cancel_main, k);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            pthread_attr_destroy(&attr);
        }
    }
    if (rc != 0) {
        log_warn("pgasync: could not start the cancel of backend pid=%d", PQbackendPID(pg));
        PQfreeCancel(k);
        atomic_fetch_sub(&cancel_threads, 1);
    }
}

/* ---- the socket event ---- */

static void io_off(pga_conn_t *c)
{
    if (c->io_what) {
        event_del(&c->io);
        c->io_what = 0;
        c->io_fd = -1;
    }
}

/* Watches the current libpq socket for what (0: nothing). force re-registers
 * even when nothing seems to change (connect rounds: the socket may be new). */
static void io_want(pga_conn_t *c, short what, bool force)
{
    evutil_socket_t fd = c->pg ? PQsocket(c->pg) : -1;
    if (!force && c->io_what && fd == c->io_fd && what == c->io_what)
        return;
    io_off(c);
    if (!what || fd < 0)
        return;
    ECOM_ASSERT(event_assign(&c->io, c->pool->base, fd, (short)(what | EV_PERSIST), io_cb, c) == 0);
    ECOM_ASSERT(event_add(&c->io, NULL) == 0);
    c->io_fd = fd;
    c->io_what = what;
}

/* ---- prepared names ---- */

static bool prepared_has(const pga_conn_t *c, const char *name)
{
    for (int i = 0; i < c->nprepared; i++)
        if (strcmp(c->prepared[i], name) == 0)
            return true;
    return false;
}

static void prepared_add(pga_conn_t *c, char *name)
{
    if (c->nprepared >= PGA_MAX_PREPARED || prepared_has(c, name)) {
        free(name);
        return;
    }
    if (!c->prepared)
        c->prepared = xcalloc(PGA_MAX_PREPARED, sizeof *c->prepared);
    c->prepared[c->nprepared++] = name;
}

static void prepared_clear(pga_conn_t *c)
{
    for (int i = 0; i < c->nprepared; i++)
        free(c->prepared[i]);
    c->nprepared = 0;
}

/* ---- pool bookkeeping ---- */

static void idle_remove(pga_conn_t *c)
{
    if (c->in_idle) {
        TAILQ_REMOVE(&c->pool->idle, c, idle_link);
        c->in_idle = false;
        c->pool->nidle--;
    }
}

static void kick(pga_pool_t *p)
{
    if (p->nwaiters > 0 && p->nidle > 0 && !p->closing)
        event_active(&p->kick, 0, 0);
}

static int pool_connected(const pga_pool_t *p)
{
    int n = 0;
    for (int i = 0; i < p->size; i++) {
        const pga_conn_t *c = p->conns[i];
        if (c && c->pg && (c->state == CS_IDLE || c->state == CS_RESET || (c->state == CS_LEASED && !c->lost)))
            n++;
    }
    return n;
}

/* ---- connection life ---- */

/* event_del before PQfinish; cancel asks the server to stop what the backend runs. */
static void close_conn(pga_conn_t *c, bool cancel)
{
    if (!c->pg)
        return;
    io_off(c);
    if (cancel)
        cancel_in_background(c->pg);
    PQfinish(c->pg);
    c->pg = NULL;
    c->flushing = false;
    prepared_clear(c);
}

static void op_free(op_t *o);

/* Not for a connection with a user pipeline in flight (that callback is owed). */
static void conn_free(pga_conn_t *c)
{
    evtimer_del(&c->tmr);
    if (c->has_op) { /* the internal rollback */
        ECOM_ASSERT(!c->op.cb);
        op_free(&c->op);
        c->has_op = false;
    }
    close_conn(c, false);
    free(c->prepared);
    free(c);
}

static void schedule_reconnect(pga_conn_t *c)
{
    c->state = CS_DOWN;
    c->lost = false;
    timer_arm(c, c->backoff_ms);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* Close and reopen later (a broken, lost or unclean connection). */
static void recycle(pga_conn_t *c)
{
    idle_remove(c);
    close_conn(c, false);
    schedule_reconnect(c);
}

static void make_idle(pga_conn_t *c)
{
    pga_pool_t *p = c->pool;
    c->state = CS_IDLE;
    c->lost = false;
    TAILQ_INSERT_TAIL(&p->idle, c, idle_link);
    c->in_idle = true;
    p->nidle++;
    io_want(c, EV_READ, false);
    kick(p);
}

static void conn_failed(pga_conn_t *c, const char *why)
{
    pga_pool_t *p = c->pool;
    char *msg = first_line(why, "connection failed");
    if (c->backoff_ms == BACKOFF_MIN_MS)
        log_warn("pgasync: connect failed: %s", msg);
    else
        log_debug("pgasync: connect failed again (retry in %d ms): %s", c->backoff_ms, msg);
    free(p->last_err);
    p->last_err = msg;
    evtimer_del(&c->tmr);
    close_conn(c, false);
    schedule_reconnect(c);
}

static void conn_ready(pga_conn_t *c)
{
    if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    evtimer_del(&c->tmr);
    c->backoff_ms = BACKOFF_MIN_MS;
    c->pid = PQbackendPID(c->pg);
    log_debug("pgasync: connected backend pid=%d", c->pid);
    make_idle(c);
}

/* One PQconnectPoll round. The event is removed first: libpq may close the
 * socket and open another one (next address), possibly with the same number. */
static void connect_step(pga_conn_t *c)
{
    io_off(c);
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (PQsocket(c->pg) < 0)
            break;
        io_want(c, EV_READ, true);
        return;
    case PGRES_POLLING_WRITING:
        if (PQsocket(c->pg) < 0)
            break;
        io_want(c, EV_WRITE, true);
        return;
    case PGRES_POLLING_OK: conn_ready(c); return;
    default: break;
    }
    conn_failed(c, PQerrorMessage(c->pg));
}

static void conn_start(pga_conn_t *c)
{
    pga_pool_t *p = c->pool;
    const char *keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {p->url, "ecom-gateway", NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (!c->pg) {
        conn_failed(c, "out of memory");
        return;
    }
    c->ended = false;
    PQsetNoticeReceiver(c->pg, notice_cb, c);
    if (PQstatus(c->pg) == CONNECTION_BAD || PQsocket(c->pg) < 0) {
        conn_failed(c, PQerrorMessage(c->pg));
        return;
    }
    c->state = CS_CONNECTING;
    timer_arm(c, p->timeout_ms > CONNECT_TIMEOUT_MIN_MS ? p->timeout_ms : CONNECT_TIMEOUT_MIN_MS);
    /* libpq: start as if PQconnectPoll had returned PGRES_POLLING_WRITING */
    io_want(c, EV_WRITE, true);
}

/* ---- pipelines ---- */

static void op_free(op_t *o)
{
    for (int i = 0; i < o->ntags; i++)
        free(o->tags[i].prep_name);
    free(o->tags);
    if (o->res)
        for (int i = 0; i < o->n; i++)
            PQclear(o->res[i]);
    free(o->res);
    free(o->err);
    memset(o, 0, sizeof *o);
}

static bool op_preparing(const op_t *o, const char *name)
{
    for (int i = 0; i < o->ntags; i++)
        if (o->tags[i].stmt < 0 && strcmp(o->tags[i].prep_name, name) == 0)
            return true;
    return false;
}

/* Queues the statements and the sync, flushes what the socket takes, and arms
 * the timer. -1 when libpq refused (nothing armed, op cleared; the connection
 * is then in an unknown pipeline state and must be closed by the caller). */
static int op_submit(pga_conn_t *c, const pga_stmt_t *stmts, int n, pga_result_cb cb, void *arg)
{
    op_t *o = &c->op;
    *o = (op_t){.cb = cb, .arg = arg, .n = n};
    o->res = xcalloc((size_t)n, sizeof *o->res);
    o->tags = xcalloc((size_t)n * 2, sizeof *o->tags);
    int npreparing = 0;
    for (int i = 0; i < n; i++) {
        const pga_stmt_t *s = &stmts[i];
        bool prepared = false;
        if (s->name && *s->name) {
            if (prepared_has(c, s->name) || op_preparing(o, s->name)) {
                prepared = true;
            } else if (c->nprepared + npreparing < PGA_MAX_PREPARED) {
                if (!PQsendPrepare(c->pg, s->name, s->sql, 0, NULL))
                    goto fail;
                o->tags[o->ntags++] = (tag_t){.stmt = -1, .prep_name = xstrdup(s->name)};
                npreparing++;
                prepared = true;
            }
        }
        int ok = prepared ? PQsendQueryPrepared(c->pg, s->name, s->nparams, s->params, s->lengths, s->formats, 0)
                          : PQsendQueryParams(c->pg, s->sql, s->nparams, NULL, s->params, s->lengths, s->formats, 0);
        if (!ok)
            goto fail;
        o->tags[o->ntags++] = (tag_t){.stmt = i, .soft = s->after_commit};
    }
    if (!PQpipelineSync(c->pg))
        goto fail;
    int r = PQflush(c->pg);
    if (r < 0)
        goto fail;
    c->has_op = true;
    c->flushing = r == 1;
    timer_arm(c, c->pool->timeout_ms);
    io_want(c, (short)(EV_READ | (c->flushing ? EV_WRITE : 0)), false);
    return 0;
fail:
    log_warn("pgasync: sending a pipeline failed: %.*s", (int)strcspn(PQerrorMessage(c->pg), "\n"),
             PQerrorMessage(c->pg));
    op_free(o);
    return -1;
}

/* Moves the op out of the connection (so a callback may start the next one). */
static void op_take(pga_conn_t *c, op_t *out)
{
    *out = c->op;
    memset(&c->op, 0, sizeof c->op);
    c->has_op = false;
    c->flushing = false;
    evtimer_del(&c->tmr);
    for (int i = 0; i < out->ntags; i++)
        free(out->tags[i].prep_name);
    free(out->tags);
    out->tags = NULL;
    out->ntags = 0;
}

/* Calls the user's callback, then frees the results. c is not touched. */
static void op_deliver(pga_conn_t *c, pga_pool_t *p, op_t *o)
{
    if (p)
        p->in_cb++;
    o->cb(c, o->res, o->n, o->err, o->arg);
    if (p)
        p->in_cb--;
    op_free(o);
}

static void reset_done(pga_conn_t *c, bool ok)
{
    if (ok && c->pg && PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
        make_idle(c);
    } else {
        log_warn("pgasync: rollback before reuse failed, reopening the connection");
        recycle(c);
    }
}

static void op_done(pga_conn_t *c)
{
    op_t o;
    op_take(c, &o);
    if (!o.cb) {
        reset_done(c, o.err == NULL);
        op_free(&o);
        return;
    }
    io_want(c, EV_READ, false);
    op_deliver(c, c->pool, &o);
}

/* The op ends without its sync: timeout, lost connection, release, pool closing.
 * why NULL: a lost connection, reported with the statement error already seen
 * or libpq's message. The connection is closed; cancel when the server may still
 * be running the statement. */
static void op_fail(pga_conn_t *c, const char *why, bool cancel)
{
    op_t o;
    op_take(c, &o);
    if (why) {
        free(o.err);
        o.err = xstrdup(why);
    } else if (!o.err) {
        o.err = first_line(c->pg ? PQerrorMessage(c->pg) : NULL, "connection lost");
    }
    log_warn("pgasync: pipeline ended without a result, closing backend pid=%d: %s", c->pid, o.err);
    close_conn(c, cancel);
    if (!o.cb) { /* the internal rollback */
        op_free(&o);
        schedule_reconnect(c);
        return;
    }
    c->lost = true;
    op_deliver(c, c->pool, &o);
}

/* Reads every result libpq has: 1 when the sync arrived, 0 when more must be
 * read, -1 when the connection is gone or the stream makes no sense. */
static int op_drain(pga_conn_t *c)
{
    op_t *o = &c->op;
    for (;;) {
        if (PQstatus(c->pg) != CONNECTION_OK)
            return -1;
        if (PQisBusy(c->pg))
            return 0;
        PGresult *r = PQgetResult(c->pg);
        if (!r) { /* end of one statement's results */
            if (o->cur >= o->ntags)
                return -1;
            o->cur++;
            continue;
        }
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            return o->cur == o->ntags ? 1 : -1;
        }
        if (o->cur >= o->ntags) {
            PQclear(r);
            return -1;
        }
        tag_t *t = &o->tags[o->cur];
        switch (st) {
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
        case PGRES_EMPTY_QUERY:
        case PGRES_SINGLE_TUPLE: break;
        case PGRES_PIPELINE_ABORTED:
            if (!o->err && !t->soft)
                o->err = xstrdup("pipeline aborted");
            break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            if (!o->err)
                o->err = xstrdup("COPY is not supported");
            PQclear(r);
            return -1;
        default:
            if (t->soft) {
                char *why = result_error(r);
                log_warn("pgasync: a statement after the commit failed: %s", why);
                free(why);
            } else if (!o->err) {
                o->err = result_error(r);
            }
            break;
        }
        if (t->stmt < 0) {
            if (st == PGRES_COMMAND_OK) {
                prepared_add(c, t->prep_name);
                t->prep_name = NULL;
            }
            PQclear(r);
        } else if (!o->res[t->stmt]) {
            o->res[t->stmt] = r;
        } else {
            PQclear(r);
        }
    }
}

/* Socket ready while an op is in flight: flush what is pending, read, drain
 * (PQflush may read as well, so draining follows every step). */
static void op_io(pga_conn_t *c, short what)
{
    if (c->flushing) {
        int r = PQflush(c->pg);
        if (r < 0) {
            op_fail(c, NULL, false);
            return;
        }
        c->flushing = r == 1;
    }
    if (what & EV_READ) {
        if (!PQconsumeInput(c->pg)) {
            op_fail(c, NULL, false);
            return;
        }
        if (c->flushing) {
            int r = PQflush(c->pg);
            if (r < 0) {
                op_fail(c, NULL, false);
                return;
            }
            c->flushing = r == 1;
        }
    }
    int r = op_drain(c);
    if (r < 0)
        op_fail(c, NULL, false);
    else if (r > 0)
        op_done(c);
    else
        io_want(c, (short)(EV_READ | (c->flushing ? EV_WRITE : 0)), false);
}

/* Readable without an op: a notice, a parameter change, or the server closing. */
static void watch_step(pga_conn_t *c)
{
    if (PQconsumeInput(c->pg) && PQstatus(c->pg) == CONNECTION_OK && !c->ended) {
        PGnotify *n;
        while ((n = PQnotifies(c->pg)))
            PQfreemem(n);
        return;
    }
    log_warn("pgasync: connection closed by the server (backend pid=%d): %.*s", c->pid,
             (int)strcspn(PQerrorMessage(c->pg), "\n"), PQerrorMessage(c->pg));
    if (c->state == CS_IDLE) {
        recycle(c);
    } else {
        close_conn(c, false);
        c->lost = true;
    }
}

static void io_cb(evutil_socket_t fd, short what, void *arg)
{
    pga_conn_t *c = arg;
    if (c->state == CS_CONNECTING)
        connect_step(c);
    else if (c->has_op)
        op_io(c, what);
    else if (c->pg)
        watch_step(c);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    pga_conn_t *c = arg;
    switch (c->state) {
    case CS_DOWN: conn_start(c); break;
    case CS_CONNECTING: conn_failed(c, "connect timeout"); break;
    case CS_LEASED:
    case CS_RESET:
        if (c->has_op)
            op_fail(c, "timeout", true);
        break;
    case CS_IDLE: break;
    }
}

/* ---- waiters ---- */

/* A last look at an idle connection before it is handed out, without blocking.
 * A server that ended the session sent an error then closed: PQconsumeInput
 * takes the error and returns 1, so the end of stream is looked for directly. */
static bool conn_alive(pga_conn_t *c)
{
    PGconn *pg = c->pg;
    for (int round = 0; round < 3; round++) {
        if (!PQconsumeInput(pg) || PQstatus(pg) != CONNECTION_OK || c->ended)
            return false;
        char b;
        ssize_t r = recv(PQsocket(pg), &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0)
            return false;
        if (r < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    }
    return true; /* still more to read: the idle watcher will see to it */
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    pga_pool_t *p = arg;
    while (p->nwaiters > 0 && p->nidle > 0 && !p->closing) {
        pga_conn_t *c = TAILQ_FIRST(&p->idle);
        idle_remove(c);
        if (!conn_alive(c)) {
            log_warn("pgasync: idle connection found closed (backend pid=%d)", c->pid);
            recycle(c);
            continue;
        }
        waiter_t *w = TAILQ_FIRST(&p->waiters);
        TAILQ_REMOVE(&p->waiters, w, link);
        p->nwaiters--;
        evtimer_del(&w->tmr);
        pga_acquire_cb cb = w->cb;
        void *warg = w->arg;
        free(w);
        c->state = CS_LEASED;
        p->in_cb++;
        cb(c, NULL, warg);
        p->in_cb--;
    }
}

static void waiter_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    waiter_t *w = arg;
    pga_pool_t *p = w->pool;
    TAILQ_REMOVE(&p->waiters, w, link);
    p->nwaiters--;
    pga_acquire_cb cb = w->cb;
    void *warg = w->arg;
    free(w);
    char err[320] = "timeout";
    if (pool_connected(p) == 0 && p->last_err)
        snprintf(err, sizeof err, "no connection: %s", p->last_err);
    p->in_cb++;
    cb(NULL, err, warg);
    p->in_cb--;
}

/* ---- the API ---- */

pga_pool_t *pga_pool_new(struct event_base *base, const char *url, int size, int max_waiters, int timeout_ms)
{
    if (!base || !url || size < 1 || max_waiters < 0 || timeout_ms < 1)
        return NULL;
    pga_pool_t *p = xcalloc(1, sizeof *p);
    p->base = base;
    p->url = xstrdup(url);
    p->size = size;
    p->max_waiters = max_waiters;
    p->timeout_ms = timeout_ms;
    TAILQ_INIT(&p->idle);
    TAILQ_INIT(&p->waiters);
    ECOM_ASSERT(event_assign(&p->kick, base, -1, 0, kick_cb, p) == 0);
    p->conns = xcalloc((size_t)size, sizeof *p->conns);
    for (int i = 0; i < size; i++) {
        pga_conn_t *c = xcalloc(1, sizeof *c);
        c->pool = p;
        c->io_fd = -1;
        c->backoff_ms = BACKOFF_MIN_MS;
        ECOM_ASSERT(evtimer_assign(&c->tmr, base, timer_cb, c) == 0);
        p->conns[i] = c;
    }
    for (int i = 0; i < size; i++)
        conn_start(p->conns[i]);
    return p;
}

void pga_pool_free(pga_pool_t *p)
{
    if (!p)
        return;
    ECOM_ASSERT(p->in_cb == 0 && !p->closing);
    p->closing = true;
    event_del(&p->kick);
    p->in_cb++;
    for (int i = 0; i < p->size; i++) {
        pga_conn_t *c = p->conns[i];
        p->conns[i] = NULL;
        if (c->state != CS_LEASED) {
            idle_remove(c);
            conn_free(c);
            continue;
        }
        /* leased: orphaned, valid until its pga_release */
        if (c->has_op) {
            op_t o;
            op_take(c, &o);
            free(o.err);
            o.err = xstrdup("pool closed");
            close_conn(c, true);
            c->lost = true;
            c->pool = NULL;
            op_deliver(c, NULL, &o);
        } else {
            evtimer_del(&c->tmr);
            close_conn(c, false);
            c->lost = true;
            c->pool = NULL;
        }
    }
    while (!TAILQ_EMPTY(&p->waiters)) {
        waiter_t *w = TAILQ_FIRST(&p->waiters);
        TAILQ_REMOVE(&p->waiters, w, link);
        p->nwaiters--;
        evtimer_del(&w->tmr);
        pga_acquire_cb cb = w->cb;
        void *warg = w->arg;
        free(w);
        cb(NULL, "pool closed", warg);
    }
    p->in_cb--;
    free(p->conns);
    free(p->last_err);
    free(p->url);
    free(p);
}

int pga_acquire(pga_pool_t *p, pga_acquire_cb cb, void *arg)
{
    if (!p || !cb)
        return PGA_EINVAL;
    if (p->closing)
        return PGA_ECLOSED;
    if (p->nwaiters - p->nidle >= p->max_waiters)
        return PGA_EFULL;
    waiter_t *w = xcalloc(1, sizeof *w);
    w->pool = p;
    w->cb = cb;
    w->arg = arg;
    ECOM_ASSERT(evtimer_assign(&w->tmr, p->base, waiter_timeout_cb, w) == 0);
    struct timeval tv = ms_tv(p->timeout_ms);
    ECOM_ASSERT(evtimer_add(&w->tmr, &tv) == 0);
    TAILQ_INSERT_TAIL(&p->waiters, w, link);
    p->nwaiters++;
    kick(p);
    return 0;
}

int pga_pipeline(pga_conn_t *c, const pga_stmt_t *stmts, int n, pga_result_cb cb, void *arg)
{
    if (!c || !stmts || !cb || n < 1 || n > PGA_MAX_STMTS)
        return PGA_EINVAL;
    for (int i = 0; i < n; i++)
        if (!stmts[i].sql || stmts[i].nparams < 0 || stmts[i].nparams > 65535 ||
            (stmts[i].nparams > 0 && !stmts[i].params))
            return PGA_EINVAL;
    if (c->state != CS_LEASED || !c->pool)
        return PGA_ECLOSED;
    if (c->has_op)
        return PGA_EBUSY;
    if (c->lost || !c->pg)
        return PGA_ECONN;
    if (op_submit(c, stmts, n, cb, arg) != 0) {
        close_conn(c, false);
        c->lost = true;
        return PGA_ECONN;
    }
    return 0;
}

void pga_release(pga_conn_t *c, bool broken)
{
    if (!c || c->abandoning)
        return; /* the abandoned pipeline's callback, inside the release below: done already */
    ECOM_ASSERT(c->state == CS_LEASED);
    pga_pool_t *p = c->pool;
    if (!p) { /* orphaned by pga_pool_free */
        conn_free(c);
        return;
    }
    if (c->has_op) {
        op_t o;
        op_take(c, &o);
        free(o.err);
        o.err = xstrdup("released");
        close_conn(c, true);
        schedule_reconnect(c);
        c->abandoning = true;
        op_deliver(c, p, &o);
        c->abandoning = false;
        return;
    }
    if (broken || c->lost || !c->pg || PQstatus(c->pg) != CONNECTION_OK) {
        recycle(c);
        return;
    }
    switch (PQtransactionStatus(c->pg)) {
    case PQTRANS_IDLE: make_idle(c); break;
    case PQTRANS_INTRANS:
    case PQTRANS_INERROR: {
        static const pga_stmt_t rollback = {.sql = "ROLLBACK"};
        c->state = CS_RESET;
        if (op_submit(c, &rollback, 1, NULL, NULL) != 0)
            recycle(c);
        break;
    }
    default: recycle(c); break;
    }
}

int pga_pool_stats(pga_pool_t *p, int *connected, int *busy, int *waiting)
{
    if (!p)
        return PGA_EINVAL;
    int nbusy = 0;
    for (int i = 0; i < p->size; i++)
        if (p->conns[i] && (p->conns[i]->state == CS_LEASED || p->conns[i]->state == CS_RESET))
            nbusy++;
    if (connected)
        *connected = pool_connected(p);
    if (busy)
        *busy = nbusy;
    if (waiting)
        *waiting = p->nwaiters;
    return 0;
}

int pga_conn_backend_pid(const pga_conn_t *c)
{
    return c && c->pg && !c->lost ? PQbackendPID(c->pg) : 0;
}
