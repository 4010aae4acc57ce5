/* services/notification/channel_webhook.c: the `webhook` channel: one HTTP/1.1
 * POST of the message as JSON to an http:// endpoint, carrying
 * X-Ecom-Timestamp: <the send's Unix time, seconds> and
 * X-Ecom-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the
 * secret> (a receiver that also checks the timestamp is recent refuses a
 * copy replayed later; docs/operations.md, "Receiving webhooks"), and
 * X-Ecom-Message-Id so a receiver can drop a redelivered copy.
 * A batch's webhooks go side by side from the calling thread over
 * non-blocking kept connections (below).
 * A 2xx answer delivers; anything else is retried by the caller. TLS is not
 * spoken here: put a TLS-terminating proxy in front of an https receiver. */
#include "services/notification/channel.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"
#include "core/metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define REPLY_MAX 16384 /* bytes of the answer read (the status line is what counts) */

int notification_webhook_parse_url(const char *url, char *host, size_t hcap, int *port, char *path, size_t pcap)
{
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    const char *h = url + 7;
    const char *end = h + strcspn(h, "/?#");
    const char *hend = end;
    const char *colon = NULL;
    if (*h == '[') { /* IPv6 literal */
        const char *close = memchr(h, ']', (size_t)(end - h));
        if (!close)
            return -1;
        if (close + 1 < end && close[1] == ':')
            colon = close + 1;
        else if (close + 1 != end)
            return -1;
        h++;
        hend = close;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        if (colon)
            hend = colon;
    }
    if (memchr(h, '@', (size_t)(hend - h)))
        return -1; /* no credentials in the URL */
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= hcap)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = 80;
    if (colon) {
        char *pe;
        long p = strtol(colon + 1, &pe, 10);
        if (pe != end || p < 1 || p > 65535)
            return -1;
        *port = (int)p;
    }
    const char *rest = *end == '#' ? "" : end;
    size_t rl = strcspn(rest, "#");
    if (rl + 2 > pcap)
        return -1;
    if (rl == 0 || rest[0] == '?') {
        path[0] = '/';
        memcpy(path + 1, rest, rl);
        path[rl + 1] = '\0';
    } else {
        memcpy(path, rest, rl);
        path[rl] = '\0';
    }
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= 0x20 || *c == 0x7f)
            return -1;
    return 0;
}

/* The hex HMAC-SHA256 of "<ts>.<body>" under secret. When OpenSSL fails
 * (out of memory), "unavailable": no receiver accepts it, so the send is
 * refused and retried rather than signed with garbage. */
static void sign(const char *secret, long long ts, const void *body, size_t n, char hex[65])
{
    char prefix[24];
    int pl = snprintf(prefix, sizeof prefix, "%lld.", ts);
    unsigned char *signed_bytes = xmalloc((size_t)pl + n + 1);
    memcpy(signed_bytes, prefix, (size_t)pl);
    memcpy(signed_bytes + pl, body, n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    bool ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), signed_bytes, (size_t)pl + n, md, &mdlen) && mdlen == 32;
    free(signed_bytes);
    if (!ok) {
        snprintf(hex, 65, "unavailable");
        return;
    }
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

/* ---- kept connections ----
 *
 * A connection is kept open after an answer (HTTP/1.1 keep-alive) and the
 * next webhook to the same receiver goes over it: a connection per webhook
 * cost a connect, an accept and a close on both sides per receipt. Idle
 * connections wait in one process-wide list between batches. A connection
 * is closed when the receiver says `Connection: close` or frames its answer
 * by closing, and on any error. One the receiver closed while it was idle is
 * seen before reuse (its end of file is readable) and dropped; one it closes
 * just as a webhook goes out shows as a send or an answer that gets nothing
 * back, and the webhook goes once more over a new connection (counted by
 * ecom_notification_webhook_resends_total: the receiver may have taken the
 * first, and drops the copy by its message id). */

#define KEPT_MAX 64

typedef struct kept {
    int fd;
    int port;
    char host[256];
} kept_t;

static pthread_mutex_t kept_mu = PTHREAD_MUTEX_INITIALIZER;
static kept_t kept[KEPT_MAX];
static size_t nkept;

/* Whether an idle connection is still open: nothing to read (a receiver
 * that closed it has sent its end of file; one that sent anything unasked
 * is not to be trusted with a request either). */
static bool idle_still_open(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    return poll(&p, 1, 0) == 0;
}

/* The most recently idle connection to host:port that is still open (the
 * least likely to have been closed by the receiver meanwhile), or -1; closed
 * ones met on the way are dropped. The list stays in the order the
 * connections went idle. */
static int kept_take(const char *host, int port)
{
    for (;;) {
        int fd = -1;
        pthread_mutex_lock(&kept_mu);
        for (size_t i = nkept; i-- > 0;)
            if (kept[i].port == port && strcmp(kept[i].host, host) == 0) {
                fd = kept[i].fd;
                memmove(&kept[i], &kept[i + 1], (nkept - i - 1) * sizeof *kept);
                nkept--;
                break;
            }
        pthread_mutex_unlock(&kept_mu);
        if (fd < 0 || idle_still_open(fd))
            return fd;
        close(fd);
    }
}

static void kept_put(int fd, const char *host, int port)
{
    pthread_mutex_lock(&kept_mu);
    if (nkept == KEPT_MAX) { /* the longest idle goes */
        close(kept[0].fd);
        memmove(&kept[0], &kept[1], (nkept - 1) * sizeof *kept);
        nkept--;
    }
    kept_t *k = &kept[nkept++];
    k->fd = fd;
    k->port = port;
    snprintf(k->host, sizeof k->host, "%s", host);
    pthread_mutex_unlock(&kept_mu);
}

/* ---- the request ---- */

/* The POST of m to t: request line, headers and signed JSON body. */
static struct evbuffer *request_of(const notify_msg_t *m, const webhook_target_t *t)
{
    char at[32];
    notification_format_time(m->at_ms, at, sizeof at);
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "{\"messageId\":\"%s\",\"tenant\":", m->message_id);
    json_buf_str(body, m->tenant);
    evbuffer_add_printf(body, ",\"subject\":");
    json_buf_str(body, m->subject);
    evbuffer_add_printf(body, ",\"type\":");
    json_buf_str(body, m->type);
    evbuffer_add_printf(body, ",\"title\":");
    json_buf_str(body, m->title);
    evbuffer_add_printf(body, ",\"text\":");
    json_buf_str(body, m->text);
    evbuffer_add_printf(body, ",\"at\":\"%s\"}", at);
    size_t blen = evbuffer_get_length(body);
    long long ts = (long long)(clock_now_ms() / 1000);
    char sig[65];
    sign(t->secret, ts, evbuffer_pullup(body, -1), blen, sig);

    struct evbuffer *req = evbuffer_new();
    bool v6 = strchr(t->host, ':') != NULL;
    evbuffer_add_printf(req,
                        "POST %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: ecom-notification\r\n"
                        "Content-Type: application/json\r\nContent-Length: %zu\r\nX-Ecom-Timestamp: %lld\r\n"
                        "X-Ecom-Signature: sha256=%s\r\nX-Ecom-Message-Id: %s\r\n\r\n",
                        t->path, v6 ? "[" : "", t->host, v6 ? "]" : "", t->port, blen, ts, sig, m->message_id);
    evbuffer_add_buffer(req, body);
    evbuffer_free(body);
    return req;
}

/* ---- webhooks side by side ----
 *
 * Each slot carries one group's webhooks, one at a time, over one
 * connection; the slots' sockets are non-blocking and one poll(2) waits for
 * all of them, on the calling thread. A slot whose group is done takes the
 * next group not started, keeping its connection. */

typedef enum { SLOT_IDLE, SLOT_CONNECTING, SLOT_SENDING, SLOT_READING } slot_state_t;

typedef struct slot {
    slot_state_t st;
    int fd;       /* -1: none */
    bool reused;  /* the connection carried an earlier webhook: a silent close means try a new one */
    bool retried; /* this webhook is on its second connection */
    size_t group, item;
    struct evbuffer *req;
    const char *bytes;
    size_t len, off;
    char *rbuf; /* REPLY_MAX + 1 */
    size_t rlen;
    size_t need; /* bytes of the whole answer, once its head is read (0 before) */
    int status;  /* from the status line, once read; else -1 */
    bool framed; /* the answer has a Content-Length and the connection may stay */
    int64_t t0, deadline;
    uint64_t seq;              /* counts the slot's webhooks (a retry is the same one) */
    const struct addrinfo *ai; /* the address being connected to */
} slot_t;

typedef struct engine {
    const webhook_many_t *w;
    slot_t *slots;
    size_t nslots;
    size_t next_group;
    bool draining;          /* poll failed: what is in flight fails, nothing new starts */
    struct addrinfo *addrs; /* resolved on the first new connection */
    bool resolved;
    char resolve_err[160];
} engine_t;

static void slot_close(slot_t *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

/* Starts a connect to s->ai or a later address: 0 (connecting or
 * connected), -1 with detail when no address is left. */
static int slot_connect(slot_t *s, char *detail, size_t cap)
{
    for (; s->ai; s->ai = s->ai->ai_next) {
        int fd = socket(s->ai->ai_family, s->ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, s->ai->ai_protocol);
        if (fd < 0) {
            snprintf(detail, cap, "socket: %s", strerror(errno));
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, s->ai->ai_addr, s->ai->ai_addrlen) == 0) {
            s->fd = fd;
            s->st = SLOT_SENDING;
            return 0;
        }
        if (errno == EINPROGRESS) {
            s->fd = fd;
            s->st = SLOT_CONNECTING;
            return 0;
        }
        snprintf(detail, cap, "connect: %s", strerror(errno));
        close(fd);
    }
    return -1;
}

/* Puts s's webhook on a new connection. 0, or -1 with detail. */
static int slot_new_connection(engine_t *e, slot_t *s, char *detail, size_t cap)
{
    const webhook_target_t *t = e->w->t;
    if (!e->resolved) {
        e->resolved = true;
        char svc[8];
        snprintf(svc, sizeof svc, "%d", t->port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
        int gai = getaddrinfo(t->host, svc, &hints, &e->addrs);
        if (gai != 0) {
            e->addrs = NULL;
            snprintf(e->resolve_err, sizeof e->resolve_err, "resolving %s: %s", t->host, gai_strerror(gai));
        } else {
            snprintf(e->resolve_err, sizeof e->resolve_err, "no address for %s", t->host);
        }
    }
    s->reused = false;
    s->ai = e->addrs;
    snprintf(detail, cap, "%s", e->resolve_err);
    if (slot_connect(s, detail, cap) != 0) {
        char d[200];
        snprintf(d, sizeof d, "%s", detail);
        snprintf(detail, cap, "webhook %s:%d: %s", t->host, t->port, d);
        return -1;
    }
    return 0;
}

/* Takes the next webhook for s (its group's, or a new group's) and starts
 * it; SLOT_IDLE when none is left (its connection is kept for later). */
static void slot_next(engine_t *e, slot_t *s)
{
    const webhook_many_t *w = e->w;
    for (;;) {
        const notify_msg_t *m = s->group == SIZE_MAX || e->draining ? NULL : w->next(w->arg, s->group, &s->item);
        if (!m) {
            if (e->next_group < w->ngroups && !e->draining) {
                s->group = e->next_group++;
                continue;
            }
            s->st = SLOT_IDLE;
            s->group = SIZE_MAX;
            if (s->fd >= 0 && !e->draining)
                kept_put(s->fd, w->t->host, w->t->port);
            else if (s->fd >= 0)
                close(s->fd);
            s->fd = -1;
            return;
        }
        s->req = request_of(m, w->t);
        s->len = evbuffer_get_length(s->req);
        s->bytes = (const char *)evbuffer_pullup(s->req, -1);
        s->off = 0;
        s->rlen = 0;
        s->need = 0;
        s->status = -1;
        s->framed = false;
        s->retried = false;
        s->seq++;
        s->t0 = clock_mono_ms();
        s->deadline = s->t0 + w->timeout_ms;
        if (s->fd < 0)
            s->fd = kept_take(w->t->host, w->t->port);
        if (s->fd >= 0) {
            s->reused = true;
            s->st = SLOT_SENDING;
            return;
        }
        char detail[256];
        if (slot_new_connection(e, s, detail, sizeof detail) == 0)
            return;
        w->answered(w->arg, s->group, s->item, NOTIFY_FAILED, detail, clock_mono_ms() - s->t0);
        evbuffer_free(s->req);
        s->req = NULL;
    }
}

/* Ends s's webhook with status (or -1 and why) and starts the next. A
 * kept connection that failed before any answer came back (closed by the
 * receiver while idle) gets the webhook once more on a new connection, when
 * retry allows, within the same deadline. */
static void slot_finish(engine_t *e, slot_t *s, int status, const char *why, bool retry)
{
    const webhook_many_t *w = e->w;
    char detail[256];
    notify_outcome_t o = NOTIFY_FAILED;
    if (status < 0) {
        slot_close(s);
        if (retry && s->reused && s->rlen == 0 && !s->retried) {
            s->retried = true;
            metrics_add(metrics_counter("ecom_notification_webhook_resends_total",
                                        "Webhooks sent again on a new connection after a kept one failed", NULL),
                        1);
            s->off = 0;
            if (slot_new_connection(e, s, detail, sizeof detail) == 0)
                return;
        } else {
            snprintf(detail, sizeof detail, "%s", why);
        }
    } else {
        snprintf(detail, sizeof detail, "HTTP %d", status);
        if (status >= 200 && status < 300) {
            o = NOTIFY_SENT;
        } else if (status >= 300 && status < 400) {
            /* the receiver is up and points elsewhere: not an outage, so not
             * a breaker failure (a breaker held open by a wrong address would
             * put off every notification); retried, then dead-lettered */
            o = NOTIFY_REJECTED;
            snprintf(detail, sizeof detail,
                     "HTTP %d: redirects are not followed; set NOTIFY_WEBHOOK_URL to the final address", status);
        } else if (status >= 400 && status < 500 && status != 408 && status != 429) {
            o = NOTIFY_REJECTED; /* the receiver is up and refuses: not a breaker failure */
        }
        if (!(s->framed && s->rlen == s->need))
            slot_close(s); /* framed by its end, or more than the answer came */
    }
    w->answered(w->arg, s->group, s->item, o, detail, clock_mono_ms() - s->t0);
    evbuffer_free(s->req);
    s->req = NULL;
    slot_next(e, s);
}

/* Case-insensitive: does the header block (NUL-terminated after its last
 * CRLF) have a line "name: ..."? Its value is copied to val when given. */
static bool header_value(const char *headers, const char *name, char *val, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(headers, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
            continue;
        const char *v = h + nl + 1;
        v += strspn(v, " \t");
        size_t vl = strcspn(v, "\r");
        if (val)
            snprintf(val, cap, "%.*s", (int)vl, v);
        return true;
    }
    return false;
}

/* Reads the answer's head once it is all there: status, and whether the
 * body is framed by a Content-Length on a connection that may stay. 1 when
 * the answer is complete (status counts), 0 to read on, -1 malformed. */
static int parse_answer(slot_t *s)
{
    while (s->need == 0) {
        char *end = strstr(s->rbuf, "\r\n\r\n");
        if (!end)
            return 0;
        int code = 0;
        if (sscanf(s->rbuf, "HTTP/1.%*[01] %3d", &code) != 1 || code < 100 || code > 599)
            return -1;
        if (code < 200 && code != 101) { /* an interim answer (100 Continue, 103): the final one follows */
            size_t head = (size_t)(end + 4 - s->rbuf);
            memmove(s->rbuf, s->rbuf + head, s->rlen - head + 1);
            s->rlen -= head;
            continue;
        }
        s->status = code;
        char v[64], saved = end[2];
        end[2] = '\0'; /* the header block alone: status line and headers, each ending in CRLF */
        bool close_asked = header_value(s->rbuf, "Connection", v, sizeof v) && strcasestr(v, "close");
        bool sized = header_value(s->rbuf, "Content-Length", v, sizeof v) && strspn(v, "0123456789") == strlen(v) &&
                     v[0] && strlen(v) < 8;
        end[2] = saved;
        if (!sized || close_asked || strncmp(s->rbuf, "HTTP/1.0", 8) == 0)
            return 1; /* the status is what counts; the connection goes */
        s->framed = true;
        s->need = (size_t)(end + 4 - s->rbuf) + strtoul(v, NULL, 10);
    }
    return s->rlen >= s->need ? 1 : 0;
}

/* Moves s on after poll said its socket is ready (or to try at once). */
static void slot_step(engine_t *e, slot_t *s)
{
    const webhook_target_t *t = e->w->t;
    char why[200];
    if (s->st == SLOT_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
            soerr = errno;
        if (soerr == EINPROGRESS || soerr == EALREADY)
            return;
        if (soerr != 0) {
            slot_close(s);
            char detail[160];
            snprintf(detail, sizeof detail, "connect: %s", strerror(soerr));
            s->ai = s->ai->ai_next;
            if (slot_connect(s, detail, sizeof detail) == 0)
                return;
            snprintf(why, sizeof why, "webhook %s:%d: %s", t->host, t->port, detail);
            slot_finish(e, s, -1, why, false);
            return;
        }
        s->st = SLOT_SENDING;
    }
    if (s->st == SLOT_SENDING) {
        while (s->off < s->len) {
            ssize_t n = send(s->fd, s->bytes + s->off, s->len - s->off, MSG_NOSIGNAL);
            if (n > 0) {
                s->off += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            snprintf(why, sizeof why, "webhook %s:%d: sending failed", t->host, t->port);
            slot_finish(e, s, -1, why, true);
            return;
        }
        s->st = SLOT_READING;
        return; /* poll says when the answer is there */
    }
    for (;;) {
        if (s->rlen == REPLY_MAX) { /* the status is what counts; the rest is not read */
            s->framed = false;
            slot_finish(e, s, s->status, "webhook: answer without an end to its headers", false);
            return;
        }
        ssize_t n = recv(s->fd, s->rbuf + s->rlen, REPLY_MAX - s->rlen, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0) { /* a status already read counts, as at the end of the stream */
            snprintf(why, sizeof why, "webhook: connection failed before an answer (%s)", strerror(errno));
            s->framed = false;
            slot_finish(e, s, s->status, why, true);
            return;
        }
        if (n == 0) {
            s->framed = false;
            slot_finish(e, s, s->status, "webhook: connection closed before an answer", true);
            return;
        }
        s->rlen += (size_t)n;
        s->rbuf[s->rlen] = '\0';
        int pr = parse_answer(s);
        if (pr < 0) {
            slot_finish(e, s, -1, "webhook: malformed status line", false);
            return;
        }
        if (pr > 0) {
            slot_finish(e, s, s->status, NULL, false);
            return;
        }
    }
}

static short slot_events(const slot_t *s)
{
    return s->st == SLOT_READING ? POLLIN : POLLOUT;
}

void notification_webhook_deliver_many(const webhook_many_t *w)
{
    if (w->ngroups == 0)
        return;
    engine_t e = {.w = w, .nslots = w->conns ? w->conns : 1};
    if (e.nslots > w->ngroups)
        e.nslots = w->ngroups;
    e.slots = xcalloc(e.nslots, sizeof *e.slots);
    struct pollfd *pfd = xcalloc(e.nslots, sizeof *pfd);
    size_t *at = xcalloc(e.nslots, sizeof *at);
    for (size_t i = 0; i < e.nslots; i++) {
        slot_t *s = &e.slots[i];
        s->fd = -1;
        s->group = SIZE_MAX;
        s->rbuf = xmalloc(REPLY_MAX + 1);
        slot_next(&e, s);
        if (s->st == SLOT_SENDING)
            slot_step(&e, s); /* the request goes out now; poll waits for its answer */
    }
    for (;;) {
        size_t np = 0;
        int64_t now = clock_mono_ms(), wait = INT64_MAX;
        for (size_t i = 0; i < e.nslots; i++) {
            slot_t *s = &e.slots[i];
            if (s->st == SLOT_IDLE)
                continue;
            if (s->deadline <= now) {
                /* a last look first: what arrived while this thread was busy
                 * elsewhere (a blocking name lookup) is not a timeout */
                uint64_t seq = s->seq;
                if (s->st != SLOT_CONNECTING) /* a connect still under way looks like a done one */
                    slot_step(&e, s);
                if (s->st != SLOT_IDLE && s->seq == seq) {
                    s->framed = false;
                    slot_finish(&e, s, s->status,
                                s->st == SLOT_CONNECTING ? "webhook: connect timed out"
                                                         : "webhook: no answer before the timeout",
                                false);
                }
                if (s->st == SLOT_SENDING)
                    slot_step(&e, s);
                if (s->st == SLOT_IDLE)
                    continue;
            }
            pfd[np] = (struct pollfd){.fd = s->fd, .events = slot_events(s)};
            at[np++] = i;
            if (s->deadline - now < wait)
                wait = s->deadline - now;
        }
        if (np == 0)
            break;
        int rc = poll(pfd, np, wait < 0 ? 0 : wait > 60000 ? 60000 : (int)wait);
        if (rc < 0 && errno != EINTR) {
            e.draining = true; /* cannot happen with valid descriptors; what is in flight is failed below */
            break;
        }
        for (size_t k = 0; k < np && rc > 0; k++) {
            if (!pfd[k].revents)
                continue;
            slot_t *s = &e.slots[at[k]];
            slot_step(&e, s);
            if (s->st == SLOT_SENDING && s->off == 0)
                slot_step(&e, s); /* the next webhook on the kept connection goes out now */
        }
    }
    for (size_t i = 0; i < e.nslots; i++) {
        slot_t *s = &e.slots[i];
        while (s->st != SLOT_IDLE)
            slot_finish(&e, s, -1, "webhook: poll failed", false);
        free(s->rbuf);
    }
    if (e.addrs)
        freeaddrinfo(e.addrs);
    free(e.slots);
    free(pfd);
    free(at);
}

/* ---- one webhook ---- */

typedef struct single {
    const notify_msg_t *m;
    bool taken;
    notify_outcome_t o;
    char *detail;
    size_t cap;
} single_t;

static const notify_msg_t *single_next(void *arg, size_t g, size_t *item)
{
    (void)g;
    single_t *one = arg;
    *item = 0;
    if (one->taken)
        return NULL;
    one->taken = true;
    return one->m;
}

static void single_answered(void *arg, size_t g, size_t item, notify_outcome_t o, const char *detail, int64_t ms)
{
    (void)g;
    (void)item;
    (void)ms;
    single_t *one = arg;
    one->o = o;
    snprintf(one->detail, one->cap, "%s", detail);
}

notify_outcome_t notification_webhook_deliver(const notify_msg_t *m, const webhook_target_t *t, int64_t timeout_ms,
                                              char *detail, size_t cap)
{
    single_t one = {.m = m, .o = NOTIFY_FAILED, .detail = detail, .cap = cap};
    webhook_many_t w = {.t = t,
                        .timeout_ms = timeout_ms,
                        .ngroups = 1,
                        .conns = 1,
                        .next = single_next,
                        .answered = single_answered,
                        .arg = &one};
    notification_webhook_deliver_many(&w);
    return one.o;
}
