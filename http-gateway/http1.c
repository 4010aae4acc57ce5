/* http-gateway/http1.c: the gateway's HTTP/1.1 server (see http1.h).
 *
 * A connection reads into one buffer. A request is parsed there in place: its
 * method, target, field names and values become NUL-terminated strings inside
 * the buffer, a chunked body is decoded over its own framing. From the moment a
 * request goes to the callback until it is answered the buffer does not move
 * (the request points into it): reading goes on only into the room left, and
 * stops when there is none. The answer's head is written into a small buffer
 * and goes out with the body in one writev; what the socket does not take waits
 * for the write event, and the next request is not handed out before it left. */
#include "http-gateway/http1.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define H1_BUF_INITIAL 4096
#define H1_LINGER_MS 2000         /* reading what a client still sends after our last answer */
#define H1_FRESH_GRACE_MS 1000    /* closing: a new connection's time to send its first request (answered 503) */
#define H1_LINGER_MAX (16u << 20) /* ... at most this much */
#define H1_CHUNK_LINE_MAX 1024    /* a chunk-size line with its extensions */
#define H1_TRAILER_MAX 8192       /* the trailer section of a chunked body */
#define H1_HEAD_STACK 2048        /* an answer's head is built here when it fits */

typedef enum {
    ST_HEAD,     /* reading a request's head */
    ST_BODY,     /* reading a Content-Length body */
    ST_CHUNKED,  /* reading and decoding a chunked body */
    ST_INFLIGHT, /* the request is with the callback */
    ST_LINGER,   /* our side is shut; reading until the client closes */
} conn_state_t;

typedef enum { CK_SIZE, CK_DATA, CK_DATA_END, CK_TRAILER } chunk_state_t;

typedef struct h1_conn h1_conn_t;

struct h1_req {
    h1_conn_t *c;
    int error;
    const char *method, *target;
    int minor; /* HTTP/1.minor */
    bool keep_alive;
    bool head; /* a HEAD request: no body in the answer */
    h1_field_t fields[H1_MAX_FIELDS];
    size_t nfields;
    const char *body;
    size_t body_len;
};

struct h1_conn {
    h1_server_t *s;
    h1_conn_t *prev, *next;
    int fd; /* -1 once closed (the struct waits for the answer of a request in flight) */
    struct event rev, wev, kick;
    bool rev_on, wev_on;
    conn_state_t state;
    char *buf;
    size_t cap, len; /* the buffer, and the bytes read into it */
    size_t scan;     /* where the search for the head's end goes on */
    size_t head_len; /* the head's bytes, once complete */
    size_t body_need;
    size_t consumed; /* the request's bytes in the buffer, once complete */
    chunk_state_t ck;
    size_t ck_raw, ck_out, ck_left, ck_trailer;
    bool eof;             /* the client shut its side */
    bool close_after;     /* the answer ends the connection */
    bool continue_sent;   /* 100 Continue */
    bool expect_continue; /* the client waits for it */
    bool in_dispatch;     /* within the callback: closing waits for its return */
    bool dead;            /* to be freed when the callback returns */
    int64_t mark_ms;      /* the start of what the timeout bounds */
    unsigned requests;    /* dispatched on this connection so far */
    size_t lingered;
    struct evbuffer *out;
    h1_req_t q;
    char peer[INET6_ADDRSTRLEN];
};

struct h1_server {
    struct event_base *base;
    struct evconnlistener *listener;
    h1_limits_t lim;
    h1_request_cb cb;
    void *arg;
    h1_conn_t *conns; /* every open connection */
    size_t nconns;
    bool accept_paused; /* accept failed (out of file descriptors): resumed by the sweep or a close */
    bool closing;
    int64_t last_sweep;
};

static int64_t now_ms(h1_server_t *s)
{
    (void)s;
    return clock_mono_ms(); /* not the wall clock: a clock step moves no timeout */
}

/* ---- character classes (RFC 9110 §5.6.2, §5.5) ---- */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool is_field_vchar(unsigned char ch)
{
    return ch == '\t' || ch == ' ' || (ch >= 0x21 && ch != 0x7f);
}

/* ---- connection lifecycle ---- */

static void conn_read_on(h1_conn_t *c, bool on)
{
    if (c->fd < 0 || c->rev_on == on)
        return;
    if (on)
        event_add(&c->rev, NULL);
    else
        event_del(&c->rev);
    c->rev_on = on;
}

static void accept_resume(h1_server_t *s)
{
    if (s->accept_paused && s->listener) {
        s->accept_paused = false;
        evconnlistener_enable(s->listener);
    }
}

static void conn_free(h1_conn_t *c)
{
    h1_server_t *s = c->s;
    if (c->rev_on)
        event_del(&c->rev);
    if (c->wev_on)
        event_del(&c->wev);
    event_del(&c->kick);
    if (c->fd >= 0) {
        close(c->fd);
        s->nconns--;
        if (s->lim.open)
            atomic_fetch_sub(s->lim.open, 1);
        accept_resume(s);
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (s->conns == c)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    evbuffer_free(c->out);
    free(c->buf);
    free(c);
}

/* The socket is done. A request in flight keeps the struct until its answer
 * (which then goes nowhere); otherwise it is freed, now or when the callback
 * that is running returns. */
static void conn_close(h1_conn_t *c)
{
    if (c->fd >= 0) {
        if (c->rev_on)
            event_del(&c->rev);
        if (c->wev_on)
            event_del(&c->wev);
        c->rev_on = c->wev_on = false;
        close(c->fd);
        c->fd = -1;
        c->s->nconns--;
        if (c->s->lim.open)
            atomic_fetch_sub(c->s->lim.open, 1);
        accept_resume(c->s);
    }
    if (c->state == ST_INFLIGHT)
        return;
    if (c->in_dispatch)
        c->dead = true;
    else
        conn_free(c);
}

static void conn_linger(h1_conn_t *c)
{
    shutdown(c->fd, SHUT_WR);
    c->state = ST_LINGER;
    c->mark_ms = now_ms(c->s);
    c->lingered = 0;
    conn_read_on(c, true);
}

static void request_reset(h1_conn_t *c)
{
    c->state = ST_HEAD;
    c->scan = c->head_len = c->body_need = c->consumed = 0;
    c->ck = CK_SIZE;
    c->ck_raw = c->ck_out = c->ck_left = c->ck_trailer = 0;
    c->continue_sent = c->expect_continue = false;
    c->q.error = 0;
    c->q.nfields = 0;
    c->q.method = c->q.target = "";
    c->q.minor = 1;
    c->q.keep_alive = c->q.head = false;
    c->q.body = NULL;
    c->q.body_len = 0;
}

/* ---- writing ---- */

/* 0: all written; 1: the rest waits for the write event; -1: the connection failed */
static int conn_flush(h1_conn_t *c)
{
    while (evbuffer_get_length(c->out) > 0) {
        int n = evbuffer_write(c->out, c->fd);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->wev_on) {
                    event_add(&c->wev, NULL);
                    c->wev_on = true;
                    c->mark_ms = now_ms(c->s);
                }
                return 1;
            }
            return -1;
        }
    }
    if (c->wev_on) {
        event_del(&c->wev);
        c->wev_on = false;
    }
    return 0;
}

static void conn_advance(h1_conn_t *c);

/* The answer left (or failed): close, linger, or go on with the next request. */
static void conn_after_write(h1_conn_t *c, int flushed)
{
    if (flushed < 0) {
        conn_close(c);
        return;
    }
    if (flushed > 0)
        return;
    if (c->state != ST_HEAD)
        return; /* a 100 Continue went out: the request is still being read, or in flight */
    if (c->close_after) {
        conn_linger(c);
        return;
    }
    if (!c->eof)
        conn_read_on(c, true); /* off while the buffer was full behind the answer */
    if (!c->in_dispatch && (c->len > 0 || c->eof))
        event_active(&c->kick, 0, 0); /* a pipelined request waits, or the client is done */
}

static void on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h1_conn_t *c = arg;
    c->mark_ms = now_ms(c->s);
    conn_after_write(c, conn_flush(c)); /* a pipelined request goes on through the kick */
}

/* false: the peer is gone and the connection closed (c may be freed: the
 * caller must not touch it again) */
static bool send_continue(h1_conn_t *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    c->continue_sent = true;
    if (evbuffer_get_length(c->out) == 0) {
        ssize_t n = send(c->fd, cont, sizeof cont - 1, MSG_NOSIGNAL);
        if (n == (ssize_t)(sizeof cont - 1))
            return true;
        if (n < 0)
            n = 0;
        evbuffer_add(c->out, cont + n, sizeof cont - 1 - (size_t)n);
    } else {
        evbuffer_add(c->out, cont, sizeof cont - 1);
    }
    if (conn_flush(c) < 0) {
        conn_close(c);
        return false;
    }
    return true;
}

/* ---- parsing ---- */

static void dispatch(h1_conn_t *c)
{
    c->state = ST_INFLIGHT;
    c->requests++;
    if (c->q.error)
        c->close_after = true;
    c->in_dispatch = true;
    c->s->cb(&c->q, c->s->arg);
    c->in_dispatch = false;
}

/* A request the server refuses: to the callback with its status. */
static void fail(h1_conn_t *c, int status)
{
    c->q.error = status;
    c->consumed = c->len; /* nothing after it is read as a request */
    dispatch(c);
}

static bool token_is(const char *v, const char *tok)
{
    return strcasecmp(v, tok) == 0;
}

/* The Connection field's options: close and keep-alive. */
static void connection_options(const char *v, bool *close, bool *keep)
{
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        size_t n = (size_t)(t - v);
        if (n == 5 && strncasecmp(v, "close", 5) == 0)
            *close = true;
        else if (n == 10 && strncasecmp(v, "keep-alive", 10) == 0)
            *keep = true;
        v = e;
    }
}

/* A Host field value or an absolute-form's authority, v[0, n): uri-host
 * [":" port] (RFC 9112 3.2, RFC 3986 3.2.2): an IP literal in brackets, or a
 * reg-name (an IPv4 address is one) of unreserved, sub-delims and
 * percent-encoded bytes; the port only digits. Empty is valid (a Host for a
 * target without an authority). */
static bool unreserved_or_sub_delim(unsigned char ch)
{
    return isalnum(ch) || (ch && strchr("-._~!$&'()*+,;=", ch));
}

/* IP-literal without its brackets: an IPv6 address, or IPvFuture
 * ("v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )). */
static bool ip_literal_valid(const char *v, size_t n)
{
    if (n > 0 && (v[0] == 'v' || v[0] == 'V')) {
        size_t i = 1;
        while (i < n && isxdigit((unsigned char)v[i]))
            i++;
        if (i == 1 || i >= n || v[i] != '.' || i + 1 == n)
            return false;
        for (i++; i < n; i++)
            if (!unreserved_or_sub_delim((unsigned char)v[i]) && v[i] != ':')
                return false;
        return true;
    }
    char a[INET6_ADDRSTRLEN];
    struct in6_addr addr;
    if (n == 0 || n >= sizeof a)
        return false;
    memcpy(a, v, n);
    a[n] = '\0';
    return inet_pton(AF_INET6, a, &addr) == 1;
}

static bool host_valid(const char *v, size_t n)
{
    size_t i = 0;
    if (n > 0 && v[0] == '[') {
        const char *close = memchr(v, ']', n);
        if (!close || !ip_literal_valid(v + 1, (size_t)(close - v) - 1))
            return false;
        i = (size_t)(close - v) + 1;
    } else {
        for (; i < n && v[i] != ':'; i++) {
            unsigned char ch = (unsigned char)v[i];
            if (ch == '%') {
                if (i + 2 >= n || !isxdigit((unsigned char)v[i + 1]) || !isxdigit((unsigned char)v[i + 2]))
                    return false;
                i += 2;
            } else if (!unreserved_or_sub_delim(ch)) {
                return false;
            }
        }
    }
    if (i < n && v[i++] != ':')
        return false;
    for (; i < n; i++)
        if (!isdigit((unsigned char)v[i]))
            return false;
    return true;
}

/* The head [0, head_len) is complete: read it in place. 0, or a status. */
static int parse_head(h1_conn_t *c)
{
    h1_req_t *q = &c->q;
    char *p = c->buf, *end = c->buf + c->head_len - 2; /* the last line's CRLF ends the fields */

    /* request-line = method SP request-target SP HTTP-version CRLF */
    char *m = p;
    while (p < end && is_tchar((unsigned char)*p))
        p++;
    if (p == m || p >= end || *p != ' ' || p - m > 32)
        return 400;
    *p++ = '\0';
    char *t = p;
    while (p < end && (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f)
        p++;
    if (p == t || p >= end || *p != ' ')
        return 400;
    *p++ = '\0';
    if (end - p < 10 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' || p[7] < '0' ||
        p[7] > '9' || p[8] != '\r' || p[9] != '\n')
        return 400;
    if (p[5] != '1')
        return 505;
    q->method = m;
    q->target = t;
    q->minor = p[7] - '0';
    p += 10;
    if (!(t[0] == '/' || (t[0] == '*' && t[1] == '\0' && strcmp(m, "OPTIONS") == 0))) {
        /* absolute-form (RFC 9112 §3.2.2): the path and query are the target */
        size_t scheme = strncasecmp(t, "http://", 7) == 0 ? 7 : strncasecmp(t, "https://", 8) == 0 ? 8 : 0;
        if (!scheme)
            return 400;
        char *a = t + scheme, *path = a + strcspn(a, "/?");
        /* userinfo in the authority is an error for http(s) (RFC 9110 4.2.4) */
        /* an empty host is an error for http(s) (RFC 9110 4.2.1, 4.2.2) */
        if (path == a || *a == ':' || memchr(a, '@', (size_t)(path - a)) || !host_valid(a, (size_t)(path - a)))
            return 400;
        if (*path == '/') {
            q->target = path;
        } else if (*path == '?') {
            path[-1] = '/'; /* an empty path is "/" (RFC 9110 4.2.3), written over the authority's last byte */
            q->target = path - 1;
        } else {
            t[0] = '/'; /* no path: "/", written over the scheme */
            t[1] = '\0';
        }
    }

    /* field-line = field-name ":" OWS field-value OWS CRLF */
    while (p < end) {
        if (*p == ' ' || *p == '\t')
            return 400; /* obs-fold */
        char *n = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        if (p == n || p >= end || *p != ':')
            return 400;
        *p++ = '\0';
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        char *v = p;
        while (p < end && is_field_vchar((unsigned char)*p))
            p++;
        if (p + 1 > end || p[0] != '\r' || p[1] != '\n')
            return 400; /* a control character, or a bare CR or LF */
        char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        *ve = '\0';
        p += 2;
        if (q->nfields == H1_MAX_FIELDS)
            return 431;
        q->fields[q->nfields++] = (h1_field_t){n, v};
    }

    /* framing and connection (RFC 9112 §6, §9.3) */
    const char *cl = NULL, *te = NULL;
    int hosts = 0;
    bool close = false, keep = false;
    for (size_t i = 0; i < q->nfields; i++) {
        const char *name = q->fields[i].name, *v = q->fields[i].value;
        if (strcasecmp(name, "content-length") == 0) {
            if (cl && strcmp(cl, v) != 0)
                return 400;
            cl = v;
        } else if (strcasecmp(name, "transfer-encoding") == 0) {
            if (te)
                return 400;
            te = v;
        } else if (strcasecmp(name, "host") == 0) {
            if (!host_valid(v, strlen(v)))
                return 400;
            hosts++;
        } else if (strcasecmp(name, "connection") == 0) {
            connection_options(v, &close, &keep);
        } else if (strcasecmp(name, "expect") == 0) {
            if (!token_is(v, "100-continue"))
                return 417;
            c->expect_continue = q->minor >= 1;
        }
    }
    q->keep_alive = q->minor >= 1 ? !close : (keep && !close);
    q->head = strcmp(m, "HEAD") == 0;
    if (hosts > 1 || (hosts == 0 && q->minor >= 1))
        return 400;
    if (te) {
        if (cl || q->minor == 0)
            return 400; /* both framings, or chunked on HTTP/1.0: a smuggling shape */
        if (!token_is(te, "chunked")) {
            /* chunked not last: the body's end cannot be known (RFC 9112
             * 6.3: 400); chunked last behind a coding we do not do: 501 */
            const char *last = strrchr(te, ',');
            last = last ? last + 1 : te;
            while (*last == ' ' || *last == '\t')
                last++;
            return last != te && token_is(last, "chunked") ? 501 : 400;
        }
        c->state = ST_CHUNKED;
        c->ck = CK_SIZE;
        c->ck_raw = c->ck_out = c->head_len;
        return 0;
    }
    if (cl) {
        uint64_t len = 0;
        const char *d = cl;
        if (!*d)
            return 400;
        for (; *d; d++) {
            if (*d < '0' || *d > '9' || len > (UINT64_MAX - 9) / 10)
                return 400;
            len = len * 10 + (uint64_t)(*d - '0');
        }
        if (len > c->s->lim.max_body)
            return 413;
        c->body_need = (size_t)len;
    }
    c->state = ST_BODY;
    return 0;
}

/* Decodes what arrived of a chunked body, in place. 1: complete; 0: more is
 * needed; otherwise a status. */
static int dechunk(h1_conn_t *c)
{
    for (;;) {
        char *b = c->buf;
        switch (c->ck) {
        case CK_SIZE:
        case CK_TRAILER: {
            char *line = b + c->ck_raw;
            size_t avail = c->len - c->ck_raw;
            char *lf = memchr(line, '\n', avail);
            if (!lf) {
                if (c->ck == CK_SIZE && avail > H1_CHUNK_LINE_MAX)
                    return 400;
                if (c->ck == CK_TRAILER && c->ck_trailer + avail > H1_TRAILER_MAX)
                    return 431;
                return 0;
            }
            size_t ll = (size_t)(lf - line);
            if (ll == 0 || line[ll - 1] != '\r')
                return 400;
            c->ck_raw += ll + 1;
            ll--; /* without the CR */
            if (c->ck == CK_TRAILER) {
                if (ll == 0)
                    return 1; /* the end of the trailer section */
                c->ck_trailer += ll + 2;
                if (c->ck_trailer > H1_TRAILER_MAX)
                    return 431;
                continue; /* trailer fields are not used */
            }
            uint64_t size = 0;
            size_t i = 0;
            for (; i < ll; i++) {
                char ch = line[i];
                int d = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                        : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                 : -1;
                if (d < 0)
                    break;
                if (size > (UINT64_MAX >> 4))
                    return 413;
                size = size * 16 + (uint64_t)d;
            }
            if (i == 0 || ll > H1_CHUNK_LINE_MAX)
                return 400;
            size_t j = i; /* chunk-size [BWS] *( ";" chunk-ext ): extensions ignored, only printable */
            while (j < ll && (line[j] == ' ' || line[j] == '\t'))
                j++;
            if (j < ll && line[j] != ';')
                return 400;
            for (; i < ll; i++)
                if (!is_field_vchar((unsigned char)line[i]))
                    return 400;
            if (size == 0) {
                c->ck = CK_TRAILER;
                continue;
            }
            if (size > c->s->lim.max_body - (c->ck_out - c->head_len))
                return 413;
            c->ck_left = (size_t)size;
            c->ck = CK_DATA;
            continue;
        }
        case CK_DATA: {
            size_t take = c->len - c->ck_raw;
            if (take > c->ck_left)
                take = c->ck_left;
            if (take == 0)
                return 0;
            memmove(b + c->ck_out, b + c->ck_raw, take);
            c->ck_out += take;
            c->ck_raw += take;
            c->ck_left -= take;
            if (c->ck_left)
                return 0;
            c->ck = CK_DATA_END;
            continue;
        }
        case CK_DATA_END:
            if (c->len - c->ck_raw < 2)
                return 0;
            if (b[c->ck_raw] != '\r' || b[c->ck_raw + 1] != '\n')
                return 400;
            c->ck_raw += 2;
            c->ck = CK_SIZE;
            continue;
        }
    }
}

/* Makes room for `want` bytes in all. The buffer may move: never while a
 * request is in flight; a head already parsed (its body still arriving) has
 * its strings moved with it. */
static void reserve(h1_conn_t *c, size_t want)
{
    if (want <= c->cap)
        return;
    size_t cap = c->cap ? c->cap : H1_BUF_INITIAL;
    while (cap < want)
        cap *= 2;
    h1_req_t *q = &c->q;
    bool parsed = c->state == ST_BODY || c->state == ST_CHUNKED;
    size_t off[2 + 2 * H1_MAX_FIELDS];
    if (parsed) {
        off[0] = (size_t)(q->method - c->buf);
        off[1] = (size_t)(q->target - c->buf);
        for (size_t i = 0; i < q->nfields; i++) {
            off[2 + 2 * i] = (size_t)(q->fields[i].name - c->buf);
            off[3 + 2 * i] = (size_t)(q->fields[i].value - c->buf);
        }
    }
    c->buf = xrealloc(c->buf, cap);
    c->cap = cap;
    if (parsed) {
        q->method = c->buf + off[0];
        q->target = c->buf + off[1];
        for (size_t i = 0; i < q->nfields; i++)
            q->fields[i] = (h1_field_t){c->buf + off[2 + 2 * i], c->buf + off[3 + 2 * i]};
    }
}

/* Parses and hands out what the buffer holds, as long as it can. */
static void conn_advance(h1_conn_t *c)
{
    while (c->fd >= 0 && !c->dead) {
        if (c->state == ST_HEAD) {
            if (evbuffer_get_length(c->out) > 0)
                return;      /* the previous answer is still going out */
            size_t skip = 0; /* empty lines before a request line are ignored */
            while (c->len - skip >= 2 && c->buf[skip] == '\r' && c->buf[skip + 1] == '\n')
                skip += 2;
            if (skip) {
                memmove(c->buf, c->buf + skip, c->len - skip);
                c->len -= skip;
                c->scan = 0;
            }
            if (c->len < 4)
                goto need_more;
            size_t from = c->scan;
            char *e = memmem(c->buf + from, c->len - from, "\r\n\r\n", 4);
            if (!e && memmem(c->buf + from, c->len - from, "\n\n", 2)) {
                fail(c, 400); /* a head ended by bare LFs: refused now, not left to the timeout */
                break;
            }
            if (!e) {
                c->scan = c->len - 3;
                if (c->len > c->s->lim.max_head) {
                    fail(c, 431);
                    break;
                }
                goto need_more;
            }
            c->head_len = (size_t)(e - c->buf) + 4;
            int st = c->head_len > c->s->lim.max_head ? 431 : parse_head(c);
            if (st) {
                fail(c, st);
                break;
            }
        }
        if (c->state == ST_BODY) {
            size_t need = c->head_len + c->body_need;
            if (c->len < need) {
                reserve(c, need);
                if (c->expect_continue && !c->continue_sent && !c->eof && !send_continue(c))
                    return;
                goto need_more;
            }
            c->q.body = c->body_need ? c->buf + c->head_len : NULL;
            c->q.body_len = c->body_need;
            c->consumed = need;
        } else if (c->state == ST_CHUNKED) {
            int st = dechunk(c);
            if (st == 0) {
                /* reclaim the framing already decoded, then make room to read on */
                if (c->ck_raw > c->ck_out) {
                    memmove(c->buf + c->ck_out, c->buf + c->ck_raw, c->len - c->ck_raw);
                    c->len -= c->ck_raw - c->ck_out;
                    c->ck_raw = c->ck_out;
                }
                if (c->len == c->cap)
                    reserve(c, c->cap * 2);
                if (c->expect_continue && !c->continue_sent && !c->eof && !send_continue(c))
                    return;
                goto need_more;
            }
            if (st != 1) {
                fail(c, st);
                break;
            }
            c->q.body = c->ck_out > c->head_len ? c->buf + c->head_len : NULL;
            c->q.body_len = c->ck_out - c->head_len;
            c->consumed = c->ck_raw;
        } else {
            return;
        }
        if (c->s->closing || !c->q.keep_alive)
            c->close_after = true;
        dispatch(c);
        if (c->state == ST_INFLIGHT)
            return; /* answered later */
    }
    if (c->dead)
        conn_free(c);
    return;
need_more:
    /* the client shut its side: what it sent is answered, then the connection closes */
    if (c->eof && c->fd >= 0 && evbuffer_get_length(c->out) == 0)
        conn_close(c);
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    h1_conn_t *c = arg;
    if (c->state == ST_LINGER) {
        char sink[16384];
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n > 0) {
            c->lingered += (size_t)n;
            if (c->lingered <= H1_LINGER_MAX)
                return;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            return;
        }
        conn_close(c);
        return;
    }
    if (c->len == c->cap) {
        if (c->state == ST_INFLIGHT || evbuffer_get_length(c->out) > 0) {
            /* no room until the answer is given, or has gone out (a client that
             * pipelines without reading): the client waits */
            conn_read_on(c, false);
            return;
        }
        reserve(c, c->cap ? c->cap * 2 : H1_BUF_INITIAL);
    }
    ssize_t n = recv(fd, c->buf + c->len, c->cap - c->len, 0);
    if (n > 0) {
        if (c->len == 0 && c->state == ST_HEAD && c->buf[0] != '\r' && c->buf[0] != '\n')
            c->mark_ms = now_ms(c->s); /* a request begins: it must arrive within the timeout */
        c->len += (size_t)n;
        if (c->state != ST_INFLIGHT)
            conn_advance(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n == 0 && (c->state == ST_INFLIGHT || evbuffer_get_length(c->out) > 0 || c->len > 0)) {
        /* the client shut its side: it still gets the answers to what it sent
         * (a request in flight, an answer still going out, complete requests
         * in the buffer), then the connection closes */
        c->eof = true;
        conn_read_on(c, false);
        if (c->state != ST_INFLIGHT && evbuffer_get_length(c->out) == 0)
            conn_advance(c);
        return;
    }
    conn_close(c); /* the client left (or failed) between requests */
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h1_conn_t *c = arg;
    if (c->fd >= 0 && c->state == ST_HEAD)
        conn_advance(c);
}

void h1_server_adopt(h1_server_t *s, int fd, const struct sockaddr *sa, int salen)
{
    (void)salen;
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    h1_conn_t *c = xcalloc(1, sizeof *c);
    c->s = s;
    c->fd = fd;
    c->q.c = c;
    c->out = evbuffer_new();
    request_reset(c);
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, c->peer, sizeof c->peer);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, c->peer, sizeof c->peer);
    event_assign(&c->rev, s->base, fd, EV_READ | EV_PERSIST, on_read, c);
    event_assign(&c->wev, s->base, fd, EV_WRITE | EV_PERSIST, on_write, c);
    event_assign(&c->kick, s->base, -1, 0, on_kick, c);
    c->mark_ms = now_ms(s);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (s->lim.open)
        atomic_fetch_add(s->lim.open, 1);
    if (s->lim.accepted)
        metrics_add(s->lim.accepted, 1);
    conn_read_on(c, true);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    h1_server_t *s = arg;
    if (s->lim.offer && s->lim.offer(fd, sa, salen, s->lim.offer_arg))
        return;
    h1_server_adopt(s, fd, sa, salen);
}

/* ---- the server ---- */

/* accept() failed (out of file descriptors, say): the listening socket would
 * be ready again at once, so it is left alone until a connection closes or
 * the next sweep. */
static void on_accept_error(struct evconnlistener *l, void *arg)
{
    h1_server_t *s = arg;
    int err = EVUTIL_SOCKET_ERROR();
    evconnlistener_disable(l);
    if (!s->accept_paused)
        log_warn("http1: accepting paused (%s); %zu connections open", evutil_socket_error_to_string(err), s->nconns);
    s->accept_paused = true;
}

h1_server_t *h1_server_new(struct event_base *base, int fd, const h1_limits_t *lim, h1_request_cb cb, void *arg)
{
    h1_server_t *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->lim = *lim;
    s->cb = cb;
    s->arg = arg;
    s->listener = evconnlistener_new(base, on_accept, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (!s->listener) {
        close(fd);
        free(s);
        return NULL;
    }
    evconnlistener_set_error_cb(s->listener, on_accept_error);
    return s;
}

void h1_server_stop_accepting(h1_server_t *s)
{
    if (s->listener) {
        evconnlistener_free(s->listener);
        s->listener = NULL;
    }
}

void h1_server_set_closing(h1_server_t *s)
{
    s->closing = true;
    s->last_sweep = 0; /* the next sweep closes the idle ones */
}

bool h1_server_waiting(h1_server_t *s)
{
    int64_t now = now_ms(s);
    for (h1_conn_t *c = s->conns; c; c = c->next)
        if (c->fd >= 0 && c->state == ST_HEAD &&
            (c->len > 0 || (c->requests == 0 && now - c->mark_ms < H1_FRESH_GRACE_MS)))
            return true;
    return false;
}

void h1_server_sweep(h1_server_t *s)
{
    int64_t now = now_ms(s);
    if (s->last_sweep && now - s->last_sweep < 1000)
        return;
    s->last_sweep = now;
    accept_resume(s);
    int64_t limit = (int64_t)s->lim.timeout_s * 1000;
    h1_conn_t *next;
    for (h1_conn_t *c = s->conns; c; c = next) {
        next = c->next;
        if (c->fd < 0)
            continue;
        int64_t age = now - c->mark_ms;
        bool expired;
        switch (c->state) {
        case ST_INFLIGHT: expired = c->wev_on && age > limit; break; /* the gateway's timer bounds the rest */
        case ST_LINGER: expired = age > H1_LINGER_MS; break;
        case ST_HEAD: /* closing: a kept-alive one between requests goes now, a new one after its grace */
            expired = age > limit ||
                      (s->closing && c->len == 0 && !c->wev_on && (c->requests > 0 || age >= H1_FRESH_GRACE_MS));
            break;
        default: expired = age > limit; break;
        }
        if (expired)
            conn_close(c);
    }
}

void h1_server_free(h1_server_t *s)
{
    if (!s)
        return;
    h1_server_stop_accepting(s);
    while (s->conns) {
        h1_conn_t *c = s->conns;
        c->in_dispatch = false;
        conn_free(c);
    }
    free(s);
}

/* ---- requests ---- */

int h1_req_error(const h1_req_t *q)
{
    return q->error;
}

const char *h1_req_method(const h1_req_t *q)
{
    return q->method;
}

const char *h1_req_target(const h1_req_t *q)
{
    return q->target;
}

const char *h1_req_header(const h1_req_t *q, const char *name)
{
    for (size_t i = 0; i < q->nfields; i++)
        if (strcasecmp(q->fields[i].name, name) == 0)
            return q->fields[i].value;
    return NULL;
}

const char *h1_req_body(const h1_req_t *q, size_t *len)
{
    *len = q->body_len;
    return q->body;
}

const char *h1_req_peer(const h1_req_t *q)
{
    return q->c->peer;
}

/* ---- answers ---- */

typedef struct head {
    char *p;
    size_t len, cap;
    char stack[H1_HEAD_STACK];
} head_t;

static void head_add(head_t *h, const char *s, size_t n)
{
    if (h->len + n > h->cap) {
        size_t cap = h->cap * 2;
        while (cap < h->len + n)
            cap *= 2;
        if (h->p == h->stack) {
            h->p = xmalloc(cap);
            memcpy(h->p, h->stack, h->len);
        } else {
            h->p = xrealloc(h->p, cap);
        }
        h->cap = cap;
    }
    memcpy(h->p + h->len, s, n);
    h->len += n;
}

static void head_str(head_t *h, const char *s)
{
    head_add(h, s, strlen(s));
}

static void head_num(head_t *h, uint64_t v)
{
    char d[24];
    size_t i = sizeof d;
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    head_add(h, d + i, sizeof d - i);
}

static bool field_ok(const char *name, const char *value)
{
    if (!name || !value || !*name)
        return false;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p))
            return false;
    return value[strcspn(value, "\r\n")] == '\0';
}

void h1_reply(h1_req_t *q, int status, const char *reason, const h1_field_t *fields, size_t nfields,
              struct evbuffer *body)
{
    h1_conn_t *c = q->c;
    if (c->state != ST_INFLIGHT) {
        log_error("http1: an answer for a request that is not waiting for one (status %d)", status);
        return;
    }
    if (status < 100 || status > 999)
        status = 500;
    size_t blen = body ? evbuffer_get_length(body) : 0;
    bool bodyless = q->head || status < 200 || status == 204 || status == 304;
    bool close = c->close_after || c->s->closing;

    if (c->fd >= 0) {
        head_t h = {.cap = sizeof h.stack};
        h.p = h.stack;
        char sl[13] = "HTTP/1.1 000";
        sl[9] = (char)('0' + status / 100);
        sl[10] = (char)('0' + status / 10 % 10);
        sl[11] = (char)('0' + status % 10);
        head_add(&h, sl, 12);
        head_add(&h, " ", 1);
        head_str(&h, reason && !reason[strcspn(reason, "\r\n")] ? reason : "");
        head_add(&h, "\r\n", 2);
        for (size_t i = 0; i < nfields; i++) {
            if (!field_ok(fields[i].name, fields[i].value)) {
                log_warn("http1: header field %s left out of the answer (not a valid field)",
                         fields[i].name ? fields[i].name : "(null)");
                continue;
            }
            head_str(&h, fields[i].name);
            head_add(&h, ": ", 2);
            head_str(&h, fields[i].value);
            head_add(&h, "\r\n", 2);
        }
        if (status >= 200 && status != 204 && status != 304) {
            head_add(&h, "Content-Length: ", 16);
            head_num(&h, blen);
            head_add(&h, "\r\n", 2);
        }
        if (close)
            head_add(&h, "Connection: close\r\n", 19);
        else if (q->minor == 0)
            head_add(&h, "Connection: keep-alive\r\n", 24);
        head_add(&h, "\r\n", 2);
        evbuffer_add(c->out, h.p, h.len);
        if (h.p != h.stack)
            free(h.p);
        if (!bodyless && blen)
            evbuffer_add_buffer(c->out, body);
    }

    /* the request's bytes go; a pipelined one moves to the front */
    size_t consumed = c->consumed <= c->len ? c->consumed : c->len;
    memmove(c->buf, c->buf + consumed, c->len - consumed);
    c->len -= consumed;
    c->close_after = close;
    request_reset(c);
    if (c->fd < 0) {
        if (!c->in_dispatch)
            conn_free(c);
        else
            c->dead = true;
        return;
    }
    c->mark_ms = now_ms(c->s);
    if (!c->eof)
        conn_read_on(c, true);
    conn_after_write(c, conn_flush(c));
}
