/* tests/integration/test_sdk_c.c: the C client SDK (sdk/c/authx_client), rows
 * S1–S5 of authx.md §3, twice over.
 *
 * First against a small HTTP server of the test's own (mock_t: a listening
 * socket on 127.0.0.1, one thread per connection) that plays the gateway's
 * auth endpoints with tokens it controls: it counts POST …/auth/refresh,
 * answers 401 for any token but the current one, rotates refresh tokens, and
 * records which headers arrived. A second instance on another port is the
 * "other origin" of S2. The access tokens it issues are JWT-shaped with an exp
 * taken from the test's clock, which the client reads too (S5).
 *
 * Then against `ecom gateway` in memory, development mode (APP_ENV=development,
 * JWT_SECRET=devsecret), each test with a gateway of its own that must exit 0
 * on SIGTERM (sanitizers clean). */
#include "sdk/c/authx_client.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BASE_PATH "/api/v1/analytics"
#define NTHREADS 8
#define TOKEN_TTL_S 600

/* ================= the test's clock (S5) ================= */

static _Atomic int64_t fake_now;

static int64_t test_clock(void *user)
{
    (void)user;
    return atomic_load(&fake_now);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ================= what set_tokens was told ================= */

typedef struct rec {
    pthread_mutex_t mu;
    int calls, clears;
    char access[2048], refresh[256], sid[128];
} rec_t;

static void rec_init(rec_t *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

static void rec_cb(void *user, const authx_tokens_t *t)
{
    rec_t *r = user;
    pthread_mutex_lock(&r->mu);
    r->calls++;
    if (!t) {
        r->clears++;
        r->access[0] = r->refresh[0] = r->sid[0] = '\0';
    } else {
        snprintf(r->access, sizeof r->access, "%s", t->access_token);
        snprintf(r->refresh, sizeof r->refresh, "%s", t->refresh_token ? t->refresh_token : "");
        snprintf(r->sid, sizeof r->sid, "%s", t->session_id ? t->session_id : "");
    }
    pthread_mutex_unlock(&r->mu);
}

static authx_client_t *client_at(const char *base_url, rec_t *rec, int skew_s, int timeout_ms)
{
    authx_config_t cfg = {.base_url = base_url,
                          .tenant = "tenantA",
                          .refresh_skew_s = skew_s,
                          .timeout_ms = timeout_ms,
                          .clock = test_clock,
                          .set_tokens = rec ? rec_cb : NULL,
                          .user = rec};
    authx_client_t *c = authx_client_new(&cfg);
    if (!c)
        fprintf(stderr, "\n  authx_client_new(%s): %s\n", base_url, authx_last_error());
    return c;
}

/* ================= the mock gateway ================= */

typedef struct mock {
    int fd, port;
    pthread_t thr;
    atomic_bool stop;
    atomic_int active; /* connection threads still running */

    pthread_mutex_t mu; /* guards the tokens */
    char access[1024];  /* the one access token /me accepts; "" none */
    char refresh[64];   /* the one refresh token /auth/refresh accepts */
    char sid[64];
    char user[64];
    int seq;

    /* behaviour */
    atomic_int refresh_delay_ms;
    atomic_bool me_always_401;
    atomic_bool refresh_garbage;

    /* what happened */
    atomic_int requests, refresh_calls, me_ok, me_401, logouts, with_auth, with_tenant;
} mock_t;

static void b64url(const char *in, char *out, size_t cap)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i += 3) {
        uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(unsigned char)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (unsigned char)in[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = tab[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = tab[v & 63];
    }
    out[o] = '\0';
}

/* A JWT-shaped token whose payload carries exp (not signed: the mock compares strings). */
static void jwt_like(char *out, size_t cap, const char *sub, int64_t exp, int seq)
{
    char payload[160], enc[256];
    snprintf(payload, sizeof payload, "{\"sub\":\"%s\",\"exp\":%lld,\"n\":%d}", sub, (long long)exp, seq);
    b64url(payload, enc, sizeof enc);
    snprintf(out, cap, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.%s.c2lnbmF0dXJl", enc);
}

/* Mutex held: a new access and refresh token for the session. */
static void mock_issue(mock_t *m)
{
    m->seq++;
    jwt_like(m->access, sizeof m->access, m->user, atomic_load(&fake_now) + TOKEN_TTL_S, m->seq);
    snprintf(m->refresh, sizeof m->refresh, "r-%d", m->seq);
}

static void mock_triple_json(mock_t *m, char *out, size_t cap)
{
    snprintf(out, cap,
             "{\"ok\":true,\"accessToken\":\"%s\",\"refreshToken\":\"%s\",\"sessionId\":\"%s\",\"expiresIn\":%d}",
             m->access, m->refresh, m->sid, TOKEN_TTL_S);
}

static void reply(int fd, int status, const char *extra, const char *ctype, const char *body)
{
    char head[512];
    size_t blen = body ? strlen(body) : 0;
    int n =
        snprintf(head, sizeof head, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n%s%s%s%s\r\n", status,
                 blen, ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "", extra ? extra : "");
    if (write_all(fd, head, (size_t)n) == 0 && blen)
        (void)write_all(fd, body, blen);
}

static void problem(int fd, int status, const char *extra, const char *title)
{
    char body[256];
    snprintf(body, sizeof body, "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%d}", title, status);
    reply(fd, status, extra, "application/problem+json", body);
}

/* A header's value (case-insensitive name) from the request head; "" when absent. */
static void req_header(const char *head, const char *name, char *buf, size_t cap)
{
    size_t nl = strlen(name);
    buf[0] = '\0';
    for (const char *l = strstr(head, "\r\n"); l && l[2] != '\r' && l[2]; l = strstr(l + 2, "\r\n"))
        if (strncasecmp(l + 2, name, nl) == 0 && l[2 + nl] == ':') {
            const char *v = l + 3 + nl;
            while (*v == ' ')
                v++;
            snprintf(buf, cap, "%.*s", (int)strcspn(v, "\r"), v);
            return;
        }
}

/* Reads one request; the head and body are NUL-terminated inside buf. */
static int read_request(int fd, char *buf, size_t cap, char **body)
{
    size_t n = 0;
    char *eoh = NULL;
    while (!eoh) {
        if (n + 1 >= cap)
            return -1;
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        n += (size_t)k;
        buf[n] = '\0';
        eoh = strstr(buf, "\r\n\r\n");
    }
    char v[32];
    req_header(buf, "Content-Length", v, sizeof v);
    size_t want = (size_t)(eoh + 4 - buf) + (size_t)atol(v);
    if (want >= cap)
        return -1;
    while (n < want) {
        ssize_t k = recv(fd, buf + n, want - n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        n += (size_t)k;
    }
    buf[n] = '\0';
    eoh[2] = '\0'; /* the head ends with its last header's CRLF */
    *body = eoh + 4;
    return 0;
}

static const char *json_str(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
               ? json_object_get_string(v)
               : NULL;
}

typedef struct conn_arg {
    mock_t *m;
    int fd;
} conn_arg_t;

static void serve(mock_t *m, int fd)
{
    char *buf = malloc(65536), *body = NULL;
    if (!buf || read_request(fd, buf, 65536, &body) != 0) {
        free(buf);
        return;
    }
    atomic_fetch_add(&m->requests, 1);
    char method[16] = "", path[512] = "", auth[1200], tenant[96];
    sscanf(buf, "%15s %511s", method, path);
    req_header(buf, "Authorization", auth, sizeof auth);
    req_header(buf, "x-tenant-id", tenant, sizeof tenant);
    if (auth[0])
        atomic_fetch_add(&m->with_auth, 1);
    if (tenant[0])
        atomic_fetch_add(&m->with_tenant, 1);
    json_object *in = json_tokener_parse(body);
    char out[2048];
    bool post = strcmp(method, "POST") == 0;

    if (post && strcmp(path, BASE_PATH "/auth/dev-login") == 0) {
        const char *uid = json_str(in, "userId");
        pthread_mutex_lock(&m->mu);
        snprintf(m->user, sizeof m->user, "%s", uid ? uid : "?");
        snprintf(m->sid, sizeof m->sid, "s-%d", m->seq + 1);
        mock_issue(m);
        mock_triple_json(m, out, sizeof out);
        pthread_mutex_unlock(&m->mu);
        reply(fd, 200, NULL, "application/json", out);
    } else if (post && strcmp(path, BASE_PATH "/auth/otp/verify") == 0) {
        const char *t = json_str(in, "ticketId"), *code = json_str(in, "code");
        if (t && code && strcmp(t, "ticket-1") == 0 && strcmp(code, "123456") == 0) {
            pthread_mutex_lock(&m->mu);
            snprintf(m->user, sizeof m->user, "otp-user");
            snprintf(m->sid, sizeof m->sid, "s-otp");
            mock_issue(m);
            mock_triple_json(m, out, sizeof out);
            pthread_mutex_unlock(&m->mu);
            reply(fd, 200, NULL, "application/json", out);
        } else {
            problem(fd, 401, NULL, "invalid_code");
        }
    } else if (post && strcmp(path, BASE_PATH "/auth/refresh") == 0) {
        atomic_fetch_add(&m->refresh_calls, 1);
        usleep((useconds_t)atomic_load(&m->refresh_delay_ms) * 1000);
        const char *rt = json_str(in, "refreshToken");
        pthread_mutex_lock(&m->mu);
        bool ok = rt && m->refresh[0] && strcmp(rt, m->refresh) == 0;
        if (ok) {
            mock_issue(m);
            mock_triple_json(m, out, sizeof out);
        } else {
            m->refresh[0] = '\0'; /* reuse revokes the family, as the gateway does */
        }
        pthread_mutex_unlock(&m->mu);
        if (ok && atomic_load(&m->refresh_garbage))
            reply(fd, 200, NULL, "application/json", "{\"ok\":true}");
        else if (ok)
            reply(fd, 200, NULL, "application/json", out);
        else
            problem(fd, 401, NULL, "invalid refresh token");
    } else if (strcmp(path, BASE_PATH "/me") == 0 || (post && strcmp(path, BASE_PATH "/auth/logout") == 0)) {
        pthread_mutex_lock(&m->mu);
        bool ok = m->access[0] && strncmp(auth, "Bearer ", 7) == 0 && strcmp(auth + 7, m->access) == 0 &&
                  !atomic_load(&m->me_always_401);
        if (ok)
            snprintf(out, sizeof out, "{\"userId\":\"%s\",\"sessionId\":\"%s\"}", m->user, m->sid);
        if (ok && post) { /* logout */
            m->access[0] = m->refresh[0] = '\0';
            atomic_fetch_add(&m->logouts, 1);
        }
        pthread_mutex_unlock(&m->mu);
        if (!ok) {
            atomic_fetch_add(&m->me_401, 1);
            problem(fd, 401, "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n", "invalid token");
        } else if (post) {
            reply(fd, 204, NULL, NULL, NULL);
        } else {
            atomic_fetch_add(&m->me_ok, 1);
            reply(fd, 200, NULL, "application/json", out);
        }
    } else if (strcmp(path, "/slow") == 0) {
        usleep(1500 * 1000);
        reply(fd, 200, NULL, "application/json", "{}");
    } else {
        reply(fd, 200, NULL, "application/json", "{\"ok\":true}");
    }
    json_object_put(in);
    free(buf);
}

static void *conn_main(void *arg)
{
    conn_arg_t *a = arg;
    serve(a->m, a->fd);
    close(a->fd);
    atomic_fetch_sub(&a->m->active, 1);
    free(a);
    return NULL;
}

static void *accept_main(void *arg)
{
    mock_t *m = arg;
    while (!atomic_load(&m->stop)) {
        struct pollfd p = {.fd = m->fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        int fd = accept(m->fd, NULL, NULL);
        if (fd < 0)
            continue;
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        conn_arg_t *a = malloc(sizeof *a);
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&m->active, 1);
        if (!a || (a->m = m, a->fd = fd, pthread_create(&t, &attr, conn_main, a)) != 0) {
            atomic_fetch_sub(&m->active, 1);
            close(fd);
            free(a);
        }
        pthread_attr_destroy(&attr);
    }
    return NULL;
}

/* A mock on addr:port (port 0: any free one); NULL when it cannot listen there. */
static mock_t *mock_start_at(const char *addr, int port)
{
    mock_t *m = calloc(1, sizeof *m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    pthread_mutex_init(&m->mu, NULL);
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, addr, &sa.sin_addr);
    socklen_t sl = sizeof sa;
    if (bind(m->fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(m->fd, 64) != 0 ||
        getsockname(m->fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(m->fd);
        pthread_mutex_destroy(&m->mu);
        free(m);
        return NULL;
    }
    m->port = ntohs(sa.sin_port);
    if (pthread_create(&m->thr, NULL, accept_main, m) != 0) {
        close(m->fd);
        free(m);
        return NULL;
    }
    return m;
}

static mock_t *mock_start(void)
{
    mock_t *m = mock_start_at("127.0.0.1", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    return m;
}

static void mock_stop(mock_t *m)
{
    if (!m)
        return;
    atomic_store(&m->stop, true);
    pthread_join(m->thr, NULL);
    close(m->fd);
    for (int i = 0; i < 500 && atomic_load(&m->active) > 0; i++)
        usleep(10000);
    CU_ASSERT_EQUAL(atomic_load(&m->active), 0);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

/* Sets the mock's session as if u1 had logged in: the current tokens, and
 * what a client resuming that session would hold. */
static void mock_session(mock_t *m, const char *user)
{
    pthread_mutex_lock(&m->mu);
    snprintf(m->user, sizeof m->user, "%s", user);
    snprintf(m->sid, sizeof m->sid, "s-seeded");
    mock_issue(m);
    pthread_mutex_unlock(&m->mu);
}

static char *mock_url(const mock_t *m, const char *path)
{
    char *s = NULL;
    if (asprintf(&s, "http://127.0.0.1:%d%s", m->port, path) < 0)
        abort();
    return s;
}

/* ================= concurrent fetches ================= */

typedef struct fetcher {
    authx_client_t *c;
    const char *path;
    pthread_barrier_t *bar;
    int rc, status;
    char body[512];
} fetcher_t;

static void *fetcher_main(void *arg)
{
    fetcher_t *f = arg;
    pthread_barrier_wait(f->bar);
    authx_resp_t r;
    f->rc = authx_fetch(f->c, "GET", f->path, NULL, &r);
    f->status = r.status;
    snprintf(f->body, sizeof f->body, "%s", r.body ? r.body : "");
    authx_resp_free(&r);
    return NULL;
}

/* NTHREADS fetches of path at once; results in f[]. */
static void fetch_all(authx_client_t *c, const char *path, fetcher_t f[NTHREADS])
{
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NTHREADS);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        f[i] = (fetcher_t){.c = c, .path = path, .bar = &bar};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, fetcher_main, &f[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
}

static int get_status(authx_client_t *c, const char *path, int *rc)
{
    authx_resp_t r;
    *rc = authx_fetch(c, "GET", path, NULL, &r);
    int st = r.status;
    authx_resp_free(&r);
    return st;
}

/* ================= against the mock ================= */

/* S1: one set_tokens with the triple; the bearer and tenant go with /me. */
static void test_mock_s1_login(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    mock_t *m = mock_start();
    char *base = mock_url(m, BASE_PATH);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);

    int rc = 0;
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 401); /* not logged in: no refresh to try */
    CU_ASSERT_EQUAL(rc, AUTHX_E_AUTH);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 0);

    CU_ASSERT_EQUAL(authx_login_dev(c, "u1"), AUTHX_OK);
    CU_ASSERT_EQUAL(rec.calls, 1);
    pthread_mutex_lock(&m->mu);
    CU_ASSERT_STRING_EQUAL(rec.access, m->access);
    CU_ASSERT_STRING_EQUAL(rec.refresh, m->refresh);
    CU_ASSERT_STRING_EQUAL(rec.sid, m->sid);
    pthread_mutex_unlock(&m->mu);
    authx_tokens_t t;
    CU_ASSERT_EQUAL(authx_client_tokens(c, &t), AUTHX_OK);
    CU_ASSERT_STRING_EQUAL(t.access_token, rec.access);
    CU_ASSERT_STRING_EQUAL(t.session_id, rec.sid);
    authx_tokens_free(&t);

    authx_resp_t r;
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", "/me", NULL, &r), AUTHX_OK);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body, "\"userId\":\"u1\""));
    CU_ASSERT_STRING_EQUAL(authx_resp_header(&r, "content-type"), "application/json");
    authx_resp_free(&r);
    CU_ASSERT_EQUAL(atomic_load(&m->with_tenant), atomic_load(&m->requests)); /* x-tenant-id on every one */
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 0);
    CU_ASSERT_EQUAL(rec.calls, 1);

    /* OTP: a wrong code changes nothing; the right one stores the triple once */
    CU_ASSERT_EQUAL(authx_login_otp(c, "ticket-1", "000000"), AUTHX_E_AUTH);
    CU_ASSERT_PTR_NOT_NULL(strstr(authx_last_error(), "401"));
    CU_ASSERT_EQUAL(rec.calls, 1);
    CU_ASSERT_EQUAL(authx_login_otp(c, "ticket-1", "123456"), AUTHX_OK);
    CU_ASSERT_EQUAL(rec.calls, 2);
    CU_ASSERT_STRING_EQUAL(rec.sid, "s-otp");
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", "me", NULL, &r), AUTHX_OK); /* relative without '/' */
    CU_ASSERT_PTR_NOT_NULL(strstr(r.body ? r.body : "", "otp-user"));
    authx_resp_free(&r);

    authx_client_free(c);
    free(base);
    mock_stop(m);
}

/* S2: no Authorization (nor tenant) to any other origin, however the URL is spelt. */
static void test_mock_s2_origin(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    mock_t *m = mock_start(), *other = mock_start();
    mock_t *other_host = mock_start_at("127.0.0.2", m->port); /* same port, another host */
    char *base = mock_url(m, BASE_PATH);
    authx_client_t *c = client_at(base, NULL, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(authx_login_dev(c, "u1"), AUTHX_OK);

    char url[256];
    authx_resp_t r;
    /* another port */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", other->port);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", url, NULL, &r), AUTHX_OK);
    CU_ASSERT_EQUAL(r.status, 200);
    authx_resp_free(&r);
    /* our origin as user info in front of another one */
    snprintf(url, sizeof url, "http://127.0.0.1:%d@127.0.0.1:%d/y", m->port, other->port);
    CU_ASSERT_EQUAL(authx_fetch(c, "POST", url, "{\"a\":1}", &r), AUTHX_OK);
    CU_ASSERT_EQUAL(r.status, 200);
    authx_resp_free(&r);
    /* a 401 from another origin is its answer: no refresh */
    CU_ASSERT_EQUAL(atomic_load(&other->requests), 2);
    CU_ASSERT_EQUAL(atomic_load(&other->with_auth), 0);
    CU_ASSERT_EQUAL(atomic_load(&other->with_tenant), 0);
    if (other_host) {
        snprintf(url, sizeof url, "http://127.0.0.2:%d" BASE_PATH "/me", m->port);
        CU_ASSERT_EQUAL(authx_fetch(c, "GET", url, NULL, &r), AUTHX_OK);
        CU_ASSERT_EQUAL(r.status, 401); /* the other host's mock knows no token: no refresh either */
        authx_resp_free(&r);
        CU_ASSERT_EQUAL(atomic_load(&other_host->requests), 1);
        CU_ASSERT_EQUAL(atomic_load(&other_host->with_auth), 0);
    } else {
        fprintf(stderr, "\n  (127.0.0.2 not bindable here: the same-port other-host case is skipped)\n");
    }
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 0);

    /* our origin spelt absolutely, scheme in capitals: the bearer goes */
    int before = atomic_load(&m->with_auth);
    snprintf(url, sizeof url, "HTTP://127.0.0.1:%d" BASE_PATH "/me", m->port);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", url, NULL, &r), AUTHX_OK);
    CU_ASSERT_EQUAL(r.status, 200);
    authx_resp_free(&r);
    CU_ASSERT_EQUAL(atomic_load(&m->with_auth), before + 1);

    /* https and malformed targets are refused before anything is sent */
    int reqs = atomic_load(&m->requests);
    snprintf(url, sizeof url, "https://127.0.0.1:%d" BASE_PATH "/me", m->port);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", url, NULL, &r), AUTHX_E_ARG);
    authx_resp_free(&r);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", "/me x", NULL, &r), AUTHX_E_ARG);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", "/me\r\nX-Evil: 1", NULL, &r), AUTHX_E_ARG);
    CU_ASSERT_EQUAL(authx_fetch(c, "BREW", "/me", NULL, &r), AUTHX_E_ARG);
    const char *bad_hdr[] = {"X-Ok: fine", "X-Evil: a\r\nInjected: 1", NULL};
    CU_ASSERT_EQUAL(authx_fetch_ex(c, "GET", "/me", bad_hdr, NULL, &r), AUTHX_E_ARG);
    CU_ASSERT_EQUAL(atomic_load(&m->requests), reqs);

    authx_client_free(c);
    free(base);
    mock_stop(other_host);
    mock_stop(other);
    mock_stop(m);
}

/* S3: NTHREADS requests with a stale token, one refresh, every one retried and 200. */
static void test_mock_s3_single_flight(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    mock_t *m = mock_start();
    atomic_store(&m->refresh_delay_ms, 150); /* the others see their 401 while it is in flight */
    mock_session(m, "u1");
    char *base = mock_url(m, BASE_PATH);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    pthread_mutex_lock(&m->mu);
    authx_tokens_t seed = {"stale-access-token", m->refresh, "s-seeded"};
    authx_client_set_tokens(c, &seed);
    pthread_mutex_unlock(&m->mu);
    CU_ASSERT_EQUAL(rec.calls, 0); /* seeding tells nobody */

    fetcher_t f[NTHREADS];
    fetch_all(c, "/me", f);
    for (int i = 0; i < NTHREADS; i++) {
        if (f[i].rc != AUTHX_OK || f[i].status != 200)
            fprintf(stderr, "\n  thread %d: %s, HTTP %d %s\n", i, authx_rc_name(f[i].rc), f[i].status, f[i].body);
        CU_ASSERT_EQUAL(f[i].rc, AUTHX_OK);
        CU_ASSERT_EQUAL(f[i].status, 200);
    }
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);
    CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
    CU_ASSERT_EQUAL(atomic_load(&m->me_ok), NTHREADS);
    CU_ASSERT_TRUE(atomic_load(&m->me_401) >= 1 && atomic_load(&m->me_401) <= NTHREADS);
    CU_ASSERT_EQUAL(rec.calls, 1); /* the rotation, once */
    pthread_mutex_lock(&m->mu);
    CU_ASSERT_STRING_EQUAL(rec.refresh, m->refresh);
    pthread_mutex_unlock(&m->mu);

    /* a second wave with fresh tokens: nothing to refresh */
    fetch_all(c, "/me", f);
    for (int i = 0; i < NTHREADS; i++)
        CU_ASSERT_EQUAL(f[i].status, 200);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);

    /* a 401 that survives the refresh: one refresh, one retry, then AUTHX_E_AUTH with the 401 */
    atomic_store(&m->me_always_401, true);
    int before = atomic_load(&m->me_401);
    authx_resp_t r;
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", "/me", NULL, &r), AUTHX_E_AUTH);
    CU_ASSERT_EQUAL(r.status, 401);
    CU_ASSERT_STRING_EQUAL(authx_resp_header(&r, "WWW-Authenticate"), "Bearer error=\"invalid_token\"");
    authx_resp_free(&r);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 2);
    CU_ASSERT_EQUAL(atomic_load(&m->me_401), before + 2);
    authx_tokens_t t;
    CU_ASSERT_EQUAL(authx_client_tokens(c, &t), AUTHX_OK); /* the refresh worked: the session stays */
    authx_tokens_free(&t);

    authx_client_free(c);
    free(base);
    mock_stop(m);
}

/* S4: the refresh is refused: tokens cleared once, set_tokens(NULL), AUTHX_E_AUTH everywhere, no loop. */
static void test_mock_s4_refused(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    mock_t *m = mock_start();
    atomic_store(&m->refresh_delay_ms, 100);
    mock_session(m, "u1");
    char *base = mock_url(m, BASE_PATH);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    authx_tokens_t seed = {"stale-access-token", "r-rotated-long-ago", "s-seeded"};
    authx_client_set_tokens(c, &seed);

    fetcher_t f[NTHREADS];
    fetch_all(c, "/me", f);
    for (int i = 0; i < NTHREADS; i++) {
        CU_ASSERT_EQUAL(f[i].rc, AUTHX_E_AUTH);
        CU_ASSERT_EQUAL(f[i].status, 401);
    }
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);
    CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
    CU_ASSERT_EQUAL(rec.calls, 1);
    CU_ASSERT_EQUAL(rec.clears, 1);
    authx_tokens_t t;
    CU_ASSERT_EQUAL(authx_client_tokens(c, &t), AUTHX_E_AUTH);
    CU_ASSERT_PTR_NULL(t.access_token);

    /* later calls: no token to send, no refresh to try */
    int rc = 0;
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 401);
    CU_ASSERT_EQUAL(rc, AUTHX_E_AUTH);
    CU_ASSERT_EQUAL(authx_refresh(c), AUTHX_E_AUTH);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);
    CU_ASSERT_EQUAL(rec.calls, 1);

    /* a refresh answered 200 without the triple is a protocol error, and keeps the tokens */
    mock_session(m, "u1");
    pthread_mutex_lock(&m->mu);
    authx_tokens_t seed2 = {"stale-access-token", m->refresh, "s-seeded"};
    authx_client_set_tokens(c, &seed2);
    pthread_mutex_unlock(&m->mu);
    atomic_store(&m->refresh_garbage, true);
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 401);
    CU_ASSERT_EQUAL(rc, AUTHX_E_PROTO);
    CU_ASSERT_EQUAL(authx_client_tokens(c, &t), AUTHX_OK);
    authx_tokens_free(&t);
    CU_ASSERT_EQUAL(rec.calls, 1);

    authx_client_free(c);
    free(base);
    mock_stop(m);
}

/* S5: a refresh before the request once exp is less than refresh_skew_s away. */
static void test_mock_s5_proactive(void)
{
    int64_t t0 = (int64_t)time(NULL);
    atomic_store(&fake_now, t0);
    mock_t *m = mock_start();
    char *base = mock_url(m, BASE_PATH);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0); /* skew 0: the default 30 s */
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(authx_login_dev(c, "u1"), AUTHX_OK);
    int rc = 0;
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
    atomic_store(&fake_now, t0 + TOKEN_TTL_S - 31); /* 31 s left */
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 0);

    atomic_store(&fake_now, t0 + TOKEN_TTL_S - 29); /* 29 s left: refresh first, from NTHREADS at once */
    fetcher_t f[NTHREADS];
    fetch_all(c, "/me", f);
    for (int i = 0; i < NTHREADS; i++)
        CU_ASSERT_EQUAL(f[i].status, 200);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);
    CU_ASSERT_EQUAL(atomic_load(&m->me_401), 0); /* proactive: no request went out with the old token */
    CU_ASSERT_EQUAL(rec.calls, 2);
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200); /* the new token has 600 s again */
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 1);

    /* an expired token too; and a negative skew turns the proactive refresh off */
    atomic_store(&fake_now, t0 + 10 * TOKEN_TTL_S);
    CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
    CU_ASSERT_EQUAL(atomic_load(&m->refresh_calls), 2);
    CU_ASSERT_EQUAL(atomic_load(&m->me_401), 0);
    authx_client_t *never = client_at(base, NULL, -1, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(never);
    CU_ASSERT_EQUAL(authx_login_dev(never, "u2"), AUTHX_OK);
    atomic_store(&fake_now, t0 + 100 * TOKEN_TTL_S);
    CU_ASSERT_EQUAL(get_status(never, "/me", &rc), 200);
    CU_ASSERT_EQUAL(authx_client_refresh_count(never), 0);
    authx_client_free(never);

    authx_client_free(c);
    free(base);
    mock_stop(m);
}

/* authx_refresh, authx_logout, and the transport errors. */
static void test_mock_refresh_logout_errors(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    mock_t *m = mock_start();
    char *base = mock_url(m, BASE_PATH);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 300);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_EQUAL(authx_refresh(c), AUTHX_E_AUTH); /* nothing to refresh */
    CU_ASSERT_EQUAL(authx_client_refresh_count(c), 0);
    CU_ASSERT_EQUAL(authx_login_dev(c, "u1"), AUTHX_OK);
    char old_refresh[sizeof rec.refresh];
    snprintf(old_refresh, sizeof old_refresh, "%s", rec.refresh);
    CU_ASSERT_EQUAL(authx_refresh(c), AUTHX_OK);
    CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
    CU_ASSERT_STRING_NOT_EQUAL(rec.refresh, old_refresh);
    CU_ASSERT_EQUAL(rec.calls, 2);

    CU_ASSERT_EQUAL(authx_logout(c), AUTHX_OK);
    CU_ASSERT_EQUAL(atomic_load(&m->logouts), 1);
    CU_ASSERT_EQUAL(rec.clears, 1);
    authx_tokens_t t;
    CU_ASSERT_EQUAL(authx_client_tokens(c, &t), AUTHX_E_AUTH);

    /* a deadline: /slow answers after 1.5 s, the client waits 300 ms */
    int64_t start = mono_ms();
    authx_resp_t r;
    char *slow = mock_url(m, "/slow");
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", slow, NULL, &r), AUTHX_E_HTTP);
    authx_resp_free(&r);
    free(slow);
    int64_t took = mono_ms() - start;
    CU_ASSERT_TRUE(took >= 250 && took < 1200);
    CU_ASSERT_PTR_NOT_NULL(strstr(authx_last_error(), "timed out"));

    /* nobody listening */
    int port = free_port();
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    CU_ASSERT_EQUAL(authx_fetch(c, "GET", url, NULL, &r), AUTHX_E_HTTP);
    CU_ASSERT_EQUAL(r.status, 0);
    authx_resp_free(&r);
    snprintf(url, sizeof url, "http://127.0.0.1:%d" BASE_PATH, port);
    authx_client_t *down = client_at(url, NULL, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(down);
    CU_ASSERT_EQUAL(authx_login_dev(down, "u1"), AUTHX_E_HTTP);
    authx_client_free(down);

    /* configurations refused */
    const char *bad[] = {"https://127.0.0.1:1/api",    "127.0.0.1:1/api",          "http:///api",
                         "http://127.0.0.1:1/api?x=1", "http://u@127.0.0.1:1/api", NULL};
    for (int i = 0; bad[i]; i++) {
        authx_config_t cfg = {.base_url = bad[i]};
        authx_client_t *x = authx_client_new(&cfg);
        if (x)
            fprintf(stderr, "\n  accepted %s\n", bad[i]);
        CU_ASSERT_PTR_NULL(x);
        authx_client_free(x);
    }
    authx_config_t bad_tenant = {.base_url = base, .tenant = "a b"};
    authx_client_t *x = authx_client_new(&bad_tenant);
    CU_ASSERT_PTR_NULL(x);
    authx_client_free(x);

    authx_client_free(c);
    free(base);
    mock_stop(m);
}

/* ================= against `ecom gateway` (memory, development) ================= */

static proc_t *start_gateway(void)
{
    proc_reap(NULL);
    const char *env[] = {"APP_ENV=development", "JWT_SECRET=devsecret", "DATABASE_URL=", "REDIS_URL=", NULL};
    proc_t *g = spawn_ecom("gateway", env);
    if (g && wait_ready(g, 20000) != 0) {
        proc_release(g);
        g = NULL;
    }
    return g;
}

static char *gw_base(const proc_t *g)
{
    char *s = NULL;
    if (asprintf(&s, "http://127.0.0.1:%d" BASE_PATH, g->port) < 0)
        abort();
    return s;
}

/* The principal of a GET /me answer: userId and sessionId ("" when absent). */
static void me_principal(const char *body, char *user, size_t ucap, char *sid, size_t scap)
{
    json_object *o = json_tokener_parse(body), *p;
    user[0] = sid[0] = '\0';
    if (o && json_object_object_get_ex(o, "principal", &p)) {
        const char *u = json_str(p, "userId"), *s = json_str(p, "sessionId");
        snprintf(user, ucap, "%s", u ? u : "");
        snprintf(sid, scap, "%s", s ? s : "");
    }
    json_object_put(o);
}

/* The access token with one signature character changed (exp untouched, so no
 * proactive refresh): the gateway must refuse it. */
static void spoil(const char *access, char *out, size_t cap)
{
    snprintf(out, cap, "%s", access);
    char *sig = strrchr(out, '.');
    if (sig && strlen(sig) > 6)
        sig[5] = sig[5] == 'A' ? 'B' : 'A';
}

static bool login_or_report(authx_client_t *c, const char *user)
{
    int rc = authx_login_dev(c, user);
    if (rc != AUTHX_OK)
        fprintf(stderr, "\n  dev-login: %s: %s\n", authx_rc_name(rc), authx_last_error());
    return rc == AUTHX_OK;
}

/* S1 on the gateway: dev-login, GET /me as u1 in that session; logout ends it (R4). */
static void test_gw_s1_login_me_logout(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    proc_t *g = start_gateway();
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    char *base = gw_base(g);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    if (login_or_report(c, "u1")) {
        CU_ASSERT_EQUAL(rec.calls, 1);
        CU_ASSERT_TRUE(rec.access[0] && rec.refresh[0] && rec.sid[0]);
        authx_resp_t r;
        CU_ASSERT_EQUAL(authx_fetch(c, "GET", "/me", NULL, &r), AUTHX_OK);
        if (r.status != 200)
            fprintf(stderr, "\n  GET /me: HTTP %d %.300s\n", r.status, r.body ? r.body : "");
        CU_ASSERT_EQUAL(r.status, 200);
        char user[64], sid[128];
        me_principal(r.body ? r.body : "", user, sizeof user, sid, sizeof sid);
        CU_ASSERT_STRING_EQUAL(user, "u1");
        CU_ASSERT_STRING_EQUAL(sid, rec.sid);
        authx_resp_free(&r);
        CU_ASSERT_EQUAL(authx_client_refresh_count(c), 0);

        char refresh[256];
        snprintf(refresh, sizeof refresh, "%s", rec.refresh);
        CU_ASSERT_EQUAL(authx_logout(c), AUTHX_OK);
        CU_ASSERT_EQUAL(rec.clears, 1);
        /* the session is over: its refresh token is refused at once */
        authx_tokens_t seed = {"x", refresh, NULL};
        authx_client_set_tokens(c, &seed);
        CU_ASSERT_EQUAL(authx_refresh(c), AUTHX_E_AUTH);
    } else {
        CU_FAIL("POST …/auth/dev-login failed");
    }
    authx_client_free(c);
    free(base);
    stop_clean(g, "gateway");
}

/* S3 on the gateway: NTHREADS requests with a refused access token and a good
 * refresh token: one refresh, all NTHREADS answered 200 as u1. */
static void test_gw_s3_concurrent_401(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    proc_t *g = start_gateway();
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    char *base = gw_base(g);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *login = client_at(base, &rec, 0, 0), *c = client_at(base, NULL, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(login);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    if (login_or_report(login, "u1")) {
        char bad[2048];
        spoil(rec.access, bad, sizeof bad);
        authx_tokens_t seed = {bad, rec.refresh, rec.sid};
        authx_client_set_tokens(c, &seed);
        fetcher_t f[NTHREADS];
        fetch_all(c, "/me", f);
        for (int i = 0; i < NTHREADS; i++) {
            char user[64], sid[128];
            me_principal(f[i].body, user, sizeof user, sid, sizeof sid);
            if (f[i].status != 200)
                fprintf(stderr, "\n  thread %d: %s HTTP %d %s\n", i, authx_rc_name(f[i].rc), f[i].status, f[i].body);
            CU_ASSERT_EQUAL(f[i].rc, AUTHX_OK);
            CU_ASSERT_EQUAL(f[i].status, 200);
            CU_ASSERT_STRING_EQUAL(user, "u1");
            CU_ASSERT_STRING_EQUAL(sid, rec.sid); /* the same session, rotated */
        }
        CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
    } else {
        CU_FAIL("POST …/auth/dev-login failed");
    }
    authx_client_free(login);
    authx_client_free(c);
    free(base);
    stop_clean(g, "gateway");
}

/* S4 on the gateway: a rotated refresh token is refused: tokens cleared,
 * set_tokens(NULL), AUTHX_E_AUTH, one refresh call; the reuse revoked the
 * session, so its newest refresh token fails too (R2). */
static void test_gw_s4_rotated_refresh(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    proc_t *g = start_gateway();
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    char *base = gw_base(g);
    rec_t rec, rec2;
    rec_init(&rec);
    rec_init(&rec2);
    authx_client_t *a = client_at(base, &rec, 0, 0), *b = client_at(base, &rec2, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    if (login_or_report(a, "u1")) {
        char first[256], bad[2048];
        snprintf(first, sizeof first, "%s", rec.refresh);
        spoil(rec.access, bad, sizeof bad);
        int rc = authx_refresh(a);
        if (rc != AUTHX_OK)
            fprintf(stderr, "\n  refresh: %s: %s\n", authx_rc_name(rc), authx_last_error());
        CU_ASSERT_EQUAL(rc, AUTHX_OK);
        CU_ASSERT_STRING_NOT_EQUAL(rec.refresh, first);

        authx_tokens_t seed = {bad, first, rec.sid};
        authx_client_set_tokens(b, &seed);
        authx_resp_t r;
        CU_ASSERT_EQUAL(authx_fetch(b, "GET", "/me", NULL, &r), AUTHX_E_AUTH);
        CU_ASSERT_EQUAL(r.status, 401);
        authx_resp_free(&r);
        CU_ASSERT_EQUAL(authx_client_refresh_count(b), 1);
        CU_ASSERT_EQUAL(rec2.calls, 1);
        CU_ASSERT_EQUAL(rec2.clears, 1);
        authx_tokens_t t;
        CU_ASSERT_EQUAL(authx_client_tokens(b, &t), AUTHX_E_AUTH);
        CU_ASSERT_EQUAL(get_status(b, "/me", &rc), 200); /* no token now: the development principal */
        CU_ASSERT_EQUAL(authx_client_refresh_count(b), 1);

        CU_ASSERT_EQUAL(authx_refresh(a), AUTHX_E_AUTH); /* the family is revoked */
        CU_ASSERT_EQUAL(rec.clears, 1);
    } else {
        CU_FAIL("POST …/auth/dev-login failed");
    }
    authx_client_free(a);
    authx_client_free(b);
    free(base);
    stop_clean(g, "gateway");
}

/* The exp claim of a JWT (no verification); -1 when there is none. */
static int64_t token_exp(const char *jwt)
{
    const char *p1 = strchr(jwt, '.'), *p2 = p1 ? strchr(p1 + 1, '.') : NULL;
    if (!p2 || p2 - p1 > 4096)
        return -1;
    char json[4096];
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (const char *q = p1 + 1; q < p2 && o + 1 < sizeof json; q++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const char *at = strchr(tab, *q);
        if (!at || !*q)
            return -1;
        acc = (acc << 6) | (uint32_t)(at - tab);
        if ((bits += 6) >= 8) {
            bits -= 8;
            json[o++] = (char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    json[o] = '\0';
    json_object *obj = json_tokener_parse(json), *v;
    int64_t exp = obj && json_object_object_get_ex(obj, "exp", &v) ? json_object_get_int64(v) : -1;
    json_object_put(obj);
    return exp;
}

/* S5 on the gateway: with the clock moved to 10 s before the token's exp, the
 * next call refreshes first; back at the real time, the new token needs none. */
static void test_gw_s5_clock(void)
{
    atomic_store(&fake_now, (int64_t)time(NULL));
    proc_t *g = start_gateway();
    CU_ASSERT_PTR_NOT_NULL_FATAL(g);
    char *base = gw_base(g);
    rec_t rec;
    rec_init(&rec);
    authx_client_t *c = client_at(base, &rec, 0, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    if (login_or_report(c, "u1")) {
        int rc = 0;
        CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
        CU_ASSERT_EQUAL(authx_client_refresh_count(c), 0);
        char first[2048];
        snprintf(first, sizeof first, "%s", rec.access);
        int64_t exp = token_exp(first);
        CU_ASSERT_TRUE_FATAL(exp > (int64_t)time(NULL) + 30);

        atomic_store(&fake_now, exp - 10);
        CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
        CU_ASSERT_EQUAL(rc, AUTHX_OK);
        CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
        CU_ASSERT_EQUAL(rec.calls, 2);
        CU_ASSERT_STRING_NOT_EQUAL(rec.access, first);
        CU_ASSERT_TRUE(token_exp(rec.access) >= exp);

        atomic_store(&fake_now, (int64_t)time(NULL));
        CU_ASSERT_EQUAL(get_status(c, "/me", &rc), 200);
        CU_ASSERT_EQUAL(authx_client_refresh_count(c), 1);
    } else {
        CU_FAIL("POST …/auth/dev-login failed");
    }
    authx_client_free(c);
    free(base);
    stop_clean(g, "gateway");
}

static void reap_everything(void)
{
    proc_reap(NULL);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    atexit(reap_everything);
    CU_TestInfo tests[] = {
        {"mock S1: login stores the triple once (dev, OTP); bearer and tenant on /me", test_mock_s1_login},
        {"mock S2: no Authorization to another origin, however spelt; bad targets refused", test_mock_s2_origin},
        {"mock S3: 8 concurrent 401s, one refresh, each retried once; 401 after retry", test_mock_s3_single_flight},
        {"mock S4: refused refresh clears tokens once, AUTHX_E_AUTH, no loop; bad answer", test_mock_s4_refused},
        {"mock S5: proactive refresh under 30 s to exp (8 threads, one refresh)", test_mock_s5_proactive},
        {"mock: refresh, logout, deadline, refused connection, bad configuration", test_mock_refresh_logout_errors},
        {"gateway S1: dev-login, GET /me as u1, logout ends the session", test_gw_s1_login_me_logout},
        {"gateway S3: 8 threads, invalid access + valid refresh: one refresh, 8x 200", test_gw_s3_concurrent_401},
        {"gateway S4: rotated refresh token: cleared, AUTHX_E_AUTH; family revoked", test_gw_s4_rotated_refresh},
        {"gateway S5: injected clock 10 s before exp: proactive refresh, once", test_gw_s5_clock},
        CU_TEST_INFO_NULL,
    };
    return test_main("sdk_c", tests, NULL, NULL);
}
