/* tests/unit/test_gw_http1.c: the gateway's HTTP/1.1 server (http-gateway/http1.h)
 * on a loopback socket, driven byte by byte by a raw client: keep-alive,
 * pipelining in order (answered at once and later), Content-Length and chunked
 * bodies arriving in pieces, 100-continue, HTTP/1.0, HEAD, every refusal with
 * its status and the connection closed after it, a 2 MiB body refused and
 * drained so the client reads its 413, clients that half-close or leave while
 * their request is in flight, answers larger than the socket takes, invalid
 * answer fields left out, and the idle and arrival timeouts. */
#include "http-gateway/http1.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- the server, on its own thread ---- */

enum { MODE_NOW, MODE_LATER };

static struct event_base *base;
static h1_server_t *srv;
static pthread_t srv_thread;
static int port;
static atomic_int mode = MODE_NOW;
static atomic_int requests;    /* requests the callback saw */
static atomic_int answered;    /* answers given */
static atomic_size_t big_body; /* GET /big answers this many bytes */

typedef struct later {
    h1_req_t *q;
    struct event *ev;
} later_t;

/* The answer: "<method> <target> <body length>:<body>", with X-Probe echoed;
 * a refused request gets its status and "refused". */
static void answer(h1_req_t *q)
{
    struct evbuffer *b = evbuffer_new();
    int status = h1_req_error(q);
    h1_field_t f[4];
    size_t n = 0;
    f[n++] = (h1_field_t){"Content-Type", "text/plain"};
    if (status) {
        evbuffer_add_printf(b, "refused");
    } else {
        status = 200;
        size_t len = 0;
        const char *body = h1_req_body(q, &len);
        if (strcmp(h1_req_target(q), "/big") == 0) {
            size_t want = atomic_load(&big_body);
            char *p = xmalloc(want);
            for (size_t i = 0; i < want; i++)
                p[i] = (char)('a' + i % 26);
            evbuffer_add(b, p, want);
            free(p);
        } else {
            evbuffer_add_printf(b, "%s %s %zu:", h1_req_method(q), h1_req_target(q), len);
            evbuffer_add(b, body ? body : "", len);
        }
        const char *probe = h1_req_header(q, "x-probe");
        if (probe)
            f[n++] = (h1_field_t){"X-Probe", probe};
        if (strcmp(h1_req_target(q), "/inject") == 0) {
            f[n++] = (h1_field_t){"X-Bad", "a\r\nInjected: 1"};
            f[n++] = (h1_field_t){"Bad Name", "x"};
        }
    }
    h1_reply(q, status, status == 200 ? "OK" : "Refused", f, n, b);
    evbuffer_free(b);
    atomic_fetch_add(&answered, 1);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    later_t *l = arg;
    answer(l->q);
    event_free(l->ev);
    free(l);
}

static void on_request(h1_req_t *q, void *arg)
{
    (void)arg;
    atomic_fetch_add(&requests, 1);
    if (atomic_load(&mode) == MODE_NOW) {
        answer(q);
        return;
    }
    later_t *l = xcalloc(1, sizeof *l);
    l->q = q;
    l->ev = evtimer_new(base, on_later, l);
    struct timeval tv = {0, 30000};
    evtimer_add(l->ev, &tv);
}

static atomic_bool want_closing, waiting_now; /* the closing test's, read and set on the server's thread */
static atomic_int closing_ticks;

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (atomic_load(&want_closing) && atomic_fetch_add(&closing_ticks, 1) == 0)
        h1_server_set_closing(srv);
    h1_server_sweep(srv);
    atomic_store(&waiting_now, h1_server_waiting(srv));
}

static atomic_bool stopping;
static struct event *tick_ev, *stop_ev;

static void on_stop_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (atomic_load(&stopping))
        event_base_loopbreak(base);
}

static void *server_main(void *arg)
{
    (void)arg;
    event_base_dispatch(base);
    return NULL;
}

static int start_server(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0)
        return -1;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    port = ntohs(sa.sin_port);
    base = event_base_new();
    h1_limits_t lim = {.max_head = 16384, .max_body = 1u << 20, .timeout_s = 1};
    srv = h1_server_new(base, fd, &lim, on_request, NULL);
    if (!srv)
        return -1;
    tick_ev = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    event_add(tick_ev, &(struct timeval){0, 100000});
    stop_ev = event_new(base, -1, EV_PERSIST, on_stop_check, NULL);
    event_add(stop_ev, &(struct timeval){0, 20000});
    return pthread_create(&srv_thread, NULL, server_main, NULL);
}

static int stop_server(void)
{
    atomic_store(&stopping, true);
    pthread_join(srv_thread, NULL);
    h1_server_free(srv);
    event_free(tick_ev);
    event_free(stop_ev);
    event_base_free(base);
    return 0;
}

/* ---- a raw client ---- */

typedef struct client {
    int fd;
    char buf[1 << 16];
    size_t len;
} client_t;

typedef struct resp {
    int status;
    char head[4096];
    char *body;
    size_t blen;
} resp_t;

static client_t *cl_open(void)
{
    client_t *c = xcalloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {10, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    CU_ASSERT_EQUAL_FATAL(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return c;
}

static void cl_close(client_t *c)
{
    close(c->fd);
    free(c);
}

static int cl_send(client_t *c, const char *s, size_t n)
{
    return write_all(c->fd, s, n);
}

static int cl_sends(client_t *c, const char *s)
{
    return cl_send(c, s, strlen(s));
}

/* Reads more into the buffer: bytes read, 0 at EOF, -1 on error or timeout */
static ssize_t cl_fill(client_t *c)
{
    if (c->len == sizeof c->buf)
        return -1;
    ssize_t k;
    do
        k = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    while (k < 0 && errno == EINTR);
    if (k > 0)
        c->len += (size_t)k;
    return k;
}

static void cl_take(client_t *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static const char *resp_header(const resp_t *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2]; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = strcspn(v, "\r");
            snprintf(out, cap, "%.*s", (int)vl, v);
            return out;
        }
    }
    return NULL;
}

/* One answer (its body by Content-Length, none for HEAD); 0, or -1. */
static int cl_read(client_t *c, bool head_req, resp_t *r)
{
    memset(r, 0, sizeof *r);
    char *eoh;
    for (;;) {
        eoh = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (eoh)
            break;
        if (cl_fill(c) <= 0)
            return -1;
    }
    size_t hl = (size_t)(eoh - c->buf) + 4;
    if (hl >= sizeof r->head)
        return -1;
    memcpy(r->head, c->buf, hl);
    if (sscanf(r->head, "HTTP/1.1 %d", &r->status) != 1)
        return -1;
    cl_take(c, hl);
    char v[32];
    size_t want = 0;
    if (!head_req && resp_header(r, "Content-Length", v, sizeof v))
        want = (size_t)atol(v);
    r->body = xmalloc(want + 1);
    while (r->blen < want) {
        if (c->len == 0 && cl_fill(c) <= 0) {
            free(r->body);
            r->body = NULL;
            return -1;
        }
        size_t k = c->len < want - r->blen ? c->len : want - r->blen;
        memcpy(r->body + r->blen, c->buf, k);
        r->blen += k;
        cl_take(c, k);
    }
    r->body[r->blen] = '\0';
    return 0;
}

/* The server closed the connection (EOF, or a reset), nothing else read. */
static bool cl_closed(client_t *c)
{
    if (c->len)
        return false;
    ssize_t k = cl_fill(c);
    return k == 0 || (k < 0 && errno == ECONNRESET);
}

#define GET(path, extra) "GET " path " HTTP/1.1\r\nHost: t\r\n" extra "\r\n"

static void expect_body(client_t *c, const char *body)
{
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(r.body, body);
    free(r.body);
}

/* The server still serves: one GET on a connection of its own, answered at once. */
static void server_goes_on(const char *path)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    char req[128], want[128];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", path);
    snprintf(want, sizeof want, "GET %s 0:", path);
    CU_ASSERT_EQUAL(cl_sends(c, req), 0);
    expect_body(c, want);
    cl_close(c);
}

/* One answer with that status; its body is not looked at. */
static void answer_status(client_t *c, int status)
{
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_EQUAL(r.status, status);
    free(r.body);
}

/* ---- tests ---- */

static void test_keep_alive(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(cl_sends(c, GET("/a?x=1", "X-Probe:  spaced value  \r\n")), 0);
        resp_t r;
        CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
        CU_ASSERT_EQUAL(r.status, 200);
        CU_ASSERT_STRING_EQUAL(r.body, "GET /a?x=1 0:");
        char v[64];
        CU_ASSERT_PTR_NOT_NULL(resp_header(&r, "X-Probe", v, sizeof v));
        CU_ASSERT_STRING_EQUAL(v, "spaced value"); /* OWS around the value is not part of it */
        CU_ASSERT_PTR_NULL(resp_header(&r, "Connection", v, sizeof v));
        free(r.body);
    }
    /* empty lines before a request line are ignored */
    CU_ASSERT_EQUAL(cl_sends(c, "\r\n\r\n" GET("/b", "")), 0);
    expect_body(c, "GET /b 0:");
    /* absolute-form: the path and query are the target */
    CU_ASSERT_EQUAL(cl_sends(c, "GET http://t/abs?x=1 HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    expect_body(c, "GET /abs?x=1 0:");
    CU_ASSERT_EQUAL(cl_sends(c, "GET HTTPS://t:8443 HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    expect_body(c, "GET / 0:");
    /* an empty path with a query is "/" with it */
    CU_ASSERT_EQUAL(cl_sends(c, "GET http://t:8080?x=1&y=2 HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    expect_body(c, "GET /?x=1&y=2 0:");
    CU_ASSERT_EQUAL(cl_sends(c, "GET http://[::1]?x HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
    expect_body(c, "GET /?x 0:");
    /* Host values of every valid shape: IPv4, IPv6 literal, port, empty, percent-encoded */
    CU_ASSERT_EQUAL(cl_sends(c, GET("/h1", "") "GET /h2 HTTP/1.1\r\nHost: 127.0.0.1:3003\r\n\r\n"
                                               "GET /h3 HTTP/1.1\r\nHost: [::1]:3003\r\n\r\n"
                                               "GET /h4 HTTP/1.1\r\nHost:\r\n\r\n"
                                               "GET /h5 HTTP/1.1\r\nHost: shop%2Dapi.example_1\r\n\r\n"
                                               "GET /h6 HTTP/1.1\r\nHost: [v1.fe80::a+en1]:80\r\n\r\n"),
                    0);
    expect_body(c, "GET /h1 0:");
    expect_body(c, "GET /h2 0:");
    expect_body(c, "GET /h3 0:");
    expect_body(c, "GET /h4 0:");
    expect_body(c, "GET /h5 0:");
    expect_body(c, "GET /h6 0:");
    cl_close(c);
}

static void pipelined(int how)
{
    atomic_store(&mode, how);
    client_t *c = cl_open();
    const char *reqs = GET("/one", "") "POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" GET(
        "/three", "") "POST /four HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    CU_ASSERT_EQUAL(cl_sends(c, reqs), 0);
    expect_body(c, "GET /one 0:");
    expect_body(c, "POST /two 5:hello");
    expect_body(c, "GET /three 0:");
    expect_body(c, "POST /four 3:abc");
    cl_close(c);
}

static void test_pipelined_now(void)
{
    pipelined(MODE_NOW);
}

static void test_pipelined_later(void)
{
    pipelined(MODE_LATER);
}

/* Sends s one byte at a time (each its own segment: TCP_NODELAY, a pause). */
static void dribble(client_t *c, const char *s)
{
    int on = 1;
    setsockopt(c->fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &on, sizeof on);
    for (; *s; s++) {
        CU_ASSERT_EQUAL_FATAL(cl_send(c, s, 1), 0);
        nanosleep(&(struct timespec){0, 200000}, NULL);
    }
}

static void test_bodies_in_pieces(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    dribble(c, "POST /cl HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    expect_body(c, "POST /cl 11:hello world");
    dribble(c, "POST /ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n6;name=\"v\"\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n");
    expect_body(c, "POST /ch 21:hello world0123456789");
    /* a large chunked body in many chunks, at once */
    char *big = xmalloc(200000);
    size_t n = 0;
    n += (size_t)sprintf(big + n, "POST /many HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 10000; i++)
        n += (size_t)sprintf(big + n, "3\r\n%03d\r\n", i % 1000);
    n += (size_t)sprintf(big + n, "0\r\n\r\n");
    CU_ASSERT_EQUAL(cl_send(c, big, n), 0);
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_EQUAL(strncmp(r.body, "POST /many 30000:000001002", 26), 0);
    CU_ASSERT_EQUAL(r.blen, strlen("POST /many 30000:") + 30000);
    free(r.body);
    free(big);
    cl_close(c);
}

static void test_continue(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, "POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"), 0);
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, true, &r), 0);
    CU_ASSERT_EQUAL(r.status, 100);
    free(r.body);
    CU_ASSERT_EQUAL(cl_sends(c, "ping"), 0);
    expect_body(c, "POST /e 4:ping");
    /* the body sent at once: no 100 needed, none sent */
    CU_ASSERT_EQUAL(cl_sends(c, "POST /f HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"),
                    0);
    expect_body(c, "POST /f 2:ok");
    cl_close(c);
    /* reset right behind the head: the 100 cannot go out, and the connection
     * closes there (it was used after being freed: ASan), the server goes on */
    for (int i = 0; i < 20; i++) {
        c = cl_open();
        CU_ASSERT_EQUAL(cl_sends(c, i % 2 ? "POST /r HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                                            "Content-Length: 100\r\n\r\n"
                                          : "POST /r HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n"),
                        0);
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        cl_close(c);
    }
    server_goes_on("/after-reset");
}

static void test_http10_and_head(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, "GET /old HTTP/1.0\r\n\r\n"), 0); /* no Host needed in 1.0 */
    resp_t r;
    char v[32];
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_STRING_EQUAL(r.body, "GET /old 0:");
    CU_ASSERT_PTR_NOT_NULL(resp_header(&r, "Connection", v, sizeof v));
    CU_ASSERT_STRING_EQUAL(v, "close");
    free(r.body);
    CU_ASSERT_TRUE(cl_closed(c));
    cl_close(c);

    c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, "GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_STRING_EQUAL(resp_header(&r, "Connection", v, sizeof v), "keep-alive");
    free(r.body);
    /* HEAD: the length of what GET would send, no body; the next answer parses */
    CU_ASSERT_EQUAL(cl_sends(c, "HEAD /h HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    CU_ASSERT_EQUAL_FATAL(cl_read(c, true, &r), 0);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_STRING_EQUAL(resp_header(&r, "Content-Length", v, sizeof v), "10"); /* "HEAD /h 0:" */
    free(r.body);
    CU_ASSERT_EQUAL(cl_sends(c, "GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"), 0);
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_STRING_EQUAL(r.body, "GET /next 0:");
    CU_ASSERT_STRING_EQUAL(resp_header(&r, "Connection", v, sizeof v), "close");
    free(r.body);
    CU_ASSERT_TRUE(cl_closed(c));
    cl_close(c);
}

/* Each on a connection of its own: the status, then the connection closes. */
static void test_refusals(void)
{
    atomic_store(&mode, MODE_NOW);
    static const struct {
        const char *req;
        int status;
    } cases[] = {
        {"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t\r\nX-A: one\r\n two\r\n\r\n", 400}, /* obs-fold */
        {"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\nb\r\n\r\n", 400},        /* a bare LF */
        {"GET / HTTP/1.1\nHost: t\n\n", 400},                           /* bare LFs only: at once */
        {"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400},        /* a bare CR */
        {"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400},                    /* space before the colon */
        {"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400},                      /* no Host */
        {"GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n", 400},          /* two Hosts */
        {"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},                   /* invalid Host values */
        {"GET / HTTP/1.1\r\nHost: t:80x\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t/x\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: u@t\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t%4\r\n\r\n", 400},
        {"GET http://u@t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400}, /* userinfo */
        {"GET http://t:x/ HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET http://:80/ HTTP/1.1\r\nHost: t\r\n\r\n", 400}, /* an empty host */
        {"GET / HTTP/1.1\r\nHost: [1]\r\n\r\n", 400},         /* not an IPv6 address */
        {"GET / HTTP/1.1\r\nHost: [v.x]\r\n\r\n", 400},       /* IPvFuture without its version */
        {"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400},
        {"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5xyz\r\nhello\r\n0\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x10\r\n0123456789abcdef\r\n0\r\n\r\n", 400},
        {"GET ftp://t/x HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET /x y HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET x HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"G(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET / HTTX/1.1\r\nHost: t\r\n\r\n", 400},
        {"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400}, /* chunked not last */
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
        {"POST / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417},
        {"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n", 413},
        {"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n", 413},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        client_t *c = cl_open();
        CU_ASSERT_EQUAL(cl_sends(c, cases[i].req), 0);
        resp_t r;
        int rc = cl_read(c, false, &r);
        CU_ASSERT_EQUAL(rc, 0);
        if (rc == 0) {
            if (r.status != cases[i].status)
                fprintf(stderr, "\n  case %zu: %d, not %d\n", i, r.status, cases[i].status);
            CU_ASSERT_EQUAL(r.status, cases[i].status);
            CU_ASSERT_STRING_EQUAL(r.body, "refused");
            char v[32];
            CU_ASSERT_STRING_EQUAL(resp_header(&r, "Connection", v, sizeof v), "close");
            free(r.body);
        }
        CU_ASSERT_TRUE(cl_closed(c));
        cl_close(c);
    }

    /* a head over 16 KiB, complete or not: 431 */
    for (int complete = 0; complete < 2; complete++) {
        client_t *c = cl_open();
        char *h = xmalloc(40000);
        int n = sprintf(h, "GET / HTTP/1.1\r\nHost: t\r\n");
        for (int i = 0; i < 700; i++) /* 18 KiB */
            n += sprintf(h + n, "X-Filler-%03d: 0123456789\r\n", i);
        if (complete)
            n += sprintf(h + n, "\r\n");
        CU_ASSERT_EQUAL(cl_send(c, h, (size_t)n), 0);
        answer_status(c, 431);
        free(h);
        cl_close(c);
    }
    /* more than H1_MAX_FIELDS fields within the size: 431 */
    client_t *c = cl_open();
    char h[4096];
    int n = sprintf(h, "GET / HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < H1_MAX_FIELDS; i++)
        n += sprintf(h + n, "X%d: v\r\n", i);
    n += sprintf(h + n, "\r\n");
    CU_ASSERT_EQUAL(cl_send(c, h, (size_t)n), 0);
    answer_status(c, 431);
    cl_close(c);
}

/* A 2 MiB body over the 1 MiB limit: refused before it is read, then drained,
 * so the client that writes all of it before reading still reads its 413. */
static void test_too_large_drained(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    int sndbuf = 32768; /* the body cannot sit in socket buffers: the server must read it */
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    size_t big = 2u << 20;
    char *body = xmalloc(big);
    memset(body, 'x', big);
    CU_ASSERT_EQUAL(cl_sends(c, "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 2097152\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(cl_send(c, body, big), 0);
    answer_status(c, 413);
    free(body);
    cl_close(c);
}

static void test_client_leaves(void)
{
    atomic_store(&mode, MODE_LATER);
    /* half-closed after the request: still answered, then closed */
    client_t *c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, GET("/half", "")), 0);
    shutdown(c->fd, SHUT_WR);
    expect_body(c, "GET /half 0:");
    CU_ASSERT_TRUE(cl_closed(c));
    cl_close(c);

    /* half-closed at once behind a large answer and a pipelined request, answered
     * at once: both answers arrive whole, then the connection closes */
    atomic_store(&mode, MODE_NOW);
    atomic_store(&big_body, (size_t)(4u << 20));
    c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, GET("/big", "") GET("/after-big", "")), 0);
    shutdown(c->fd, SHUT_WR);
    nanosleep(&(struct timespec){0, 100000000}, NULL); /* the server sees the EOF with the answer unsent */
    resp_t big;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &big), 0);
    CU_ASSERT_EQUAL(big.blen, 4u << 20);
    free(big.body);
    expect_body(c, "GET /after-big 0:");
    CU_ASSERT_TRUE(cl_closed(c));
    cl_close(c);
    atomic_store(&mode, MODE_LATER);

    /* gone while its request is in flight (and one more pipelined): the answer
     * goes nowhere, nothing leaks (ASan), the server goes on */
    int before = atomic_load(&answered), seen = atomic_load(&requests);
    c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, GET("/gone", "") GET("/gone2", "")), 0);
    for (int i = 0; i < 5000 && atomic_load(&requests) == seen; i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    CU_ASSERT_TRUE(atomic_load(&requests) > seen);
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg); /* a reset */
    cl_close(c);
    for (int i = 0; i < 500 && atomic_load(&answered) == before; i++)
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    CU_ASSERT_TRUE(atomic_load(&answered) > before);
    server_goes_on("/after");
}

/* An answer larger than the socket takes at once: the rest goes with the write
 * event, and the pipelined request behind it waits for it. */
static void test_large_answer(void)
{
    atomic_store(&mode, MODE_NOW);
    atomic_store(&big_body, (size_t)(8u << 20));
    client_t *c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, GET("/big", "") GET("/small", "")), 0);
    nanosleep(&(struct timespec){0, 100000000}, NULL); /* the server fills the socket and waits */
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    CU_ASSERT_EQUAL(r.blen, 8u << 20);
    bool ok = true;
    for (size_t i = 0; i < r.blen && ok; i++)
        ok = r.body[i] == (char)('a' + i % 26);
    CU_ASSERT_TRUE(ok);
    free(r.body);
    expect_body(c, "GET /small 0:");
    cl_close(c);
}

/* A client that pipelines without reading its answers: once an answer cannot
 * go out, the server stops reading, so what the client can write stays
 * bounded by the socket buffers (it would otherwise reach the 64 MiB cap). */
static void test_pipeliner_not_reading(void)
{
    atomic_store(&mode, MODE_NOW);
    atomic_store(&big_body, (size_t)(4u << 20));
    client_t *c = cl_open();
    int fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    static const char req[] = GET("/big", "");
    char chunk[64 * (sizeof req - 1)];
    for (size_t i = 0; i < 64; i++)
        memcpy(chunk + i * (sizeof req - 1), req, sizeof req - 1);
    size_t total = 0, cap = 64u << 20;
    while (total < cap) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pfd, 1, 300) <= 0)
            break; /* no room for 300 ms: the server stopped reading */
        ssize_t k = send(c->fd, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (k > 0)
            total += (size_t)k;
        else if (k < 0 && errno != EAGAIN && errno != EINTR)
            break;
    }
    fprintf(stderr, "\n  a client pipelining without reading wrote %.1f MiB before the server stopped reading\n",
            (double)total / (1u << 20));
    CU_ASSERT_TRUE(total < cap / 2);
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cl_close(c);
    server_goes_on("/after-pipeliner");
}

static void test_invalid_answer_fields(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *c = cl_open();
    CU_ASSERT_EQUAL(cl_sends(c, GET("/inject", "X-Probe: p\r\n")), 0);
    resp_t r;
    CU_ASSERT_EQUAL_FATAL(cl_read(c, false, &r), 0);
    char v[32];
    CU_ASSERT_PTR_NULL(resp_header(&r, "Injected", v, sizeof v));
    CU_ASSERT_PTR_NULL(resp_header(&r, "X-Bad", v, sizeof v));
    CU_ASSERT_PTR_NULL(strstr(r.head, "Bad Name"));
    CU_ASSERT_STRING_EQUAL(resp_header(&r, "X-Probe", v, sizeof v), "p");
    free(r.body);
    cl_close(c);
}

/* timeout_s is 1: an idle connection and a request that stops half-way are
 * closed by the sweep (within a few seconds; no time is asserted beyond that) */
static void test_timeouts(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *idle = cl_open();
    CU_ASSERT_EQUAL(cl_sends(idle, GET("/first", "")), 0);
    expect_body(idle, "GET /first 0:");
    client_t *half = cl_open();
    CU_ASSERT_EQUAL(cl_sends(half, "GET /slow HTTP/1.1\r\nHost: t\r\nX-A: "), 0);
    CU_ASSERT_TRUE(cl_closed(idle));
    CU_ASSERT_TRUE(cl_closed(half));
    cl_close(idle);
    cl_close(half);
    /* empty lines are not a request: sending one every 300 ms does not keep
     * an idle connection open */
    client_t *crlf = cl_open();
    bool closed = false;
    for (int i = 0; i < 30 && !closed; i++) {
        closed = cl_sends(crlf, "\r\n") != 0;
        struct pollfd pfd = {.fd = crlf->fd, .events = POLLIN};
        if (!closed && poll(&pfd, 1, 300) > 0)
            closed = cl_closed(crlf);
    }
    CU_ASSERT_TRUE(closed);
    cl_close(crlf);
}

/* Closing (the last test: the server stays so): a kept-alive connection
 * between requests closes, while a new one that has sent nothing yet gets
 * its grace, its first request answered, and the server says it waits for
 * it meanwhile. */
static void test_closing(void)
{
    atomic_store(&mode, MODE_NOW);
    client_t *kept = cl_open();
    CU_ASSERT_EQUAL(cl_sends(kept, GET("/first", "")), 0);
    expect_body(kept, "GET /first 0:");
    client_t *fresh = cl_open();
    clock_sleep_ms(150); /* accepted */
    atomic_store(&want_closing, true);
    for (int i = 0; i < 100 && atomic_load(&closing_ticks) < 3; i++)
        clock_sleep_ms(20); /* closing, and two sweeps after it */
    CU_ASSERT_TRUE(atomic_load(&waiting_now));
    CU_ASSERT_TRUE(cl_closed(kept));
    CU_ASSERT_EQUAL(cl_sends(fresh, GET("/second", "")), 0);
    expect_body(fresh, "GET /second 0:");
    CU_ASSERT_TRUE(cl_closed(fresh)); /* closing: the answer ends it */
    for (int i = 0; i < 100 && atomic_load(&waiting_now); i++)
        clock_sleep_ms(20);
    CU_ASSERT_FALSE(atomic_load(&waiting_now));
    cl_close(kept);
    cl_close(fresh);
}

/* The process runs out of file descriptors while a client connects: accepting
 * pauses (rather than failing in a loop) and resumes once descriptors are
 * free again, and the waiting client is served. */
static void test_out_of_descriptors(void)
{
    atomic_store(&mode, MODE_NOW);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CU_ASSERT_TRUE_FATAL(fd >= 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    /* a low soft limit for the run of this test, so descriptors run out fast
     * whatever the machine's limit is */
    struct rlimit old, low;
    CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = old;
    low.rlim_cur = 1024 < old.rlim_cur ? 1024 : old.rlim_cur;
    CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_NOFILE, &low), 0);
    int *held = xmalloc(1024 * sizeof *held);
    int n = 0;
    while (n < 1024 && (held[n] = dup(fd)) >= 0)
        n++;
    CU_ASSERT_EQUAL(errno, EMFILE);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_EQUAL(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0); /* queued by the kernel */
    nanosleep(&(struct timespec){0, 300000000}, NULL);                  /* the server's accept fails */
    while (n > 0)
        close(held[--n]);
    free(held);
    setrlimit(RLIMIT_NOFILE, &old);
    client_t *c = xcalloc(1, sizeof *c);
    c->fd = fd;
    CU_ASSERT_EQUAL(cl_sends(c, GET("/after-emfile", "")), 0);
    expect_body(c, "GET /after-emfile 0:");
    cl_close(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    CU_TestInfo tests[] = {
        {"keep-alive, OWS trimmed, empty lines before a request", test_keep_alive},
        {"pipelined requests answered in order, at once", test_pipelined_now},
        {"pipelined requests answered in order, later", test_pipelined_later},
        {"Content-Length and chunked bodies arriving byte by byte", test_bodies_in_pieces},
        {"Expect: 100-continue", test_continue},
        {"HTTP/1.0 closes unless keep-alive; HEAD has a length, no body", test_http10_and_head},
        {"refusals: 400 413 417 431 501 505, then the connection closes", test_refusals},
        {"a 2 MiB body: 413, drained so the client reads it", test_too_large_drained},
        {"a client that half-closes or leaves mid-request", test_client_leaves},
        {"an answer larger than the socket takes, then the next", test_large_answer},
        {"a client pipelining without reading is not buffered without bound", test_pipeliner_not_reading},
        {"answer fields with CR/LF or a bad name are left out", test_invalid_answer_fields},
        {"idle and half-sent connections time out", test_timeouts},
        {"out of file descriptors: accepting pauses, then resumes", test_out_of_descriptors},
        {"closing: kept-alive connections close, a new one's first request is answered", test_closing},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_http1", tests, start_server, stop_server);
}
