/* tests/httptest.c: the HTTP test harness (see httptest.h). */
#include "tests/httptest.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/pg.h"
#include "core/uuid.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ================= a small blocking HTTP/1.1 client ================= */


void hfree(hresp_t *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

_Atomic int http_timeout_s = 15; /* per read or write */

int hconnect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {atomic_load(&http_timeout_s), 0};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* hdrs: extra header lines, each ending in "\r\n" (or NULL). */
int hsend(int fd, const char *method, const char *path, const char *hdrs, const char *body, size_t blen)
{
    char *head = body ? xasprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %zu\r\n\r\n", method, path,
                                  hdrs ? hdrs : "", blen)
                      : xasprintf("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n", method, path, hdrs ? hdrs : "");
    int rc = write_all(fd, head, strlen(head));
    free(head);
    if (rc == 0 && body && blen)
        rc = write_all(fd, body, blen);
    return rc;
}

/* The value of a response header (case-insensitive name), copied into buf; NULL when absent. */
const char *hheader(const hresp_t *r, const char *name, char *buf, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *l = r->head ? strstr(r->head, "\r\n") : NULL; l && l[2] && l[2] != '\r'; l = strstr(l + 2, "\r\n")) {
        const char *s = l + 2;
        if (strncasecmp(s, name, nl) == 0 && s[nl] == ':') {
            s += nl + 1;
            while (*s == ' ' || *s == '\t')
                s++;
            size_t vl = strcspn(s, "\r");
            snprintf(buf, cap, "%.*s", (int)vl, s);
            return buf;
        }
    }
    return NULL;
}

/* Reads one response: headers, then Content-Length bytes (or until the peer closes). */
int hrecv(int fd, bool head_only, hresp_t *r)
{
    memset(r, 0, sizeof *r);
    size_t cap = 8192, n = 0;
    char *buf = xmalloc(cap);
    char *eoh = NULL;
    while (!eoh) {
        if (cap - n < 4096)
            buf = xrealloc(buf, cap *= 2);
        ssize_t k = recv(fd, buf + n, cap - n - 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(buf);
            return -1;
        }
        n += (size_t)k;
        buf[n] = '\0';
        eoh = strstr(buf, "\r\n\r\n");
    }
    size_t hlen = (size_t)(eoh - buf) + 4;
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        free(buf);
        return -1;
    }
    r->head = xstrndup(buf, hlen);
    char v[32];
    long clen = hheader(r, "Content-Length", v, sizeof v) ? atol(v) : -1;
    bool nobody = head_only || status == 304 || status == 204 || status < 200;
    size_t want = nobody ? 0 : clen >= 0 ? (size_t)clen : SIZE_MAX;
    size_t have = n - hlen;
    memmove(buf, buf + hlen, have);
    while (have < want) {
        if (cap - have < 4096)
            buf = xrealloc(buf, cap *= 2);
        ssize_t k = recv(fd, buf + have, cap - have - 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0 && want == SIZE_MAX)
            break;
        if (k <= 0) {
            free(buf);
            hfree(r);
            return -1;
        }
        have += (size_t)k;
    }
    if (want != SIZE_MAX && have > want)
        have = want;
    buf[have] = '\0';
    r->body = buf;
    r->len = have;
    r->status = status;
    return 0;
}

/* One request on a connection of its own. Returns 0, or -1 (r->status 0). */
int hreq(int port, const char *method, const char *path, const char *hdrs, const char *body, size_t blen,
                hresp_t *r)
{
    memset(r, 0, sizeof *r);
    int fd = hconnect(port);
    if (fd < 0)
        return -1;
    int rc = hsend(fd, method, path, hdrs, body, blen);
    if (rc == 0)
        rc = hrecv(fd, strcmp(method, "HEAD") == 0, r);
    close(fd);
    return rc;
}

int hget(int port, const char *path, const char *hdrs, hresp_t *r)
{
    return hreq(port, "GET", path, hdrs, NULL, 0, r);
}

int hpost(int port, const char *path, const char *hdrs, const char *json, hresp_t *r)
{
    char *h = xasprintf("Content-Type: application/json\r\n%s", hdrs ? hdrs : "");
    int rc = hreq(port, "POST", path, h, json, strlen(json), r);
    free(h);
    return rc;
}

/* ================= child processes ================= */


static proc_t procs[MAX_PROCS];
static int proc_seq;

int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

int port_hold(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(fd);
        return -1;
    }
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Starts `ecom CMD` with the base environment (PORT free, GATEWAY_THREADS=2,
 * LOG_LEVEL=error, ADMIN_PORT=0; the keys below cleared) plus env ("KEY=VALUE"
 * strings, NULL-terminated). Output goes to the process's log file. */
proc_t *spawn_ecom(const char *cmd, const char *const *env)
{
    proc_t *p = NULL;
    for (int i = 0; i < MAX_PROCS && !p; i++)
        if (!procs[i].pid)
            p = &procs[i];
    if (!p)
        return NULL;
    memset(p, 0, sizeof *p);
    int hold = port_hold(&p->port);
    if (hold < 0)
        return NULL;
    p->hold = hold + 1;
    snprintf(p->log, sizeof p->log, "/tmp/ecom-gwtest-%d-%d.log", (int)getpid(), proc_seq++);
    const char *bin = test_bin("ecom");
    pid_t pid = fork();
    if (pid < 0) {
        close(hold);
        p->hold = 0;
        return NULL;
    }
    if (pid == 0) {
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        static const char *const cleared[] = {"DATABASE_URL", "REDIS_URL", "APP_ENV", "JWT_SECRET",
                                              "JWT_PRIVATE_KEY_PEM", "JWT_PUBLIC_KEY_PEM", "JWT_ISSUER",
                                              "JWT_AUDIENCE", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                              "OTEL_EXPORTER_OTLP_ENDPOINT", "CHAOS_SEED", NULL};
        for (int i = 0; cleared[i]; i++)
            unsetenv(cleared[i]);
        char port[16];
        snprintf(port, sizeof port, "%d", p->port);
        setenv("PORT", port, 1);
        setenv("GATEWAY_THREADS", "2", 1);
        setenv("LOG_LEVEL", "error", 1);
        setenv("ADMIN_PORT", "0", 1);
        for (int i = 0; env && env[i]; i++) {
            const char *eq = strchr(env[i], '=');
            if (!eq)
                continue;
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - env[i]), env[i]);
            setenv(key, eq + 1, 1);
        }
        execl(bin, "ecom", cmd, (char *)NULL);
        _exit(127);
    }
    p->pid = pid;
    return p;
}

void print_log(const proc_t *p)
{
    FILE *f = fopen(p->log, "r");
    if (!f)
        return;
    char line[512];
    int n = 0;
    fprintf(stderr, "\n  --- %s ---\n", p->log);
    while (fgets(line, sizeof line, f) && n++ < 40)
        fprintf(stderr, "  | %s", line);
    fclose(f);
}

char *read_log(const proc_t *p)
{
    FILE *f = fopen(p->log, "r");
    if (!f)
        return xstrdup("");
    size_t cap = 65536, n = 0, got;
    char *s = xmalloc(cap);
    while ((got = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0)
            s = xrealloc(s, cap *= 2);
    }
    s[n] = '\0';
    fclose(f);
    return s;
}

/* Reaped? (non-blocking) */
bool proc_exited(proc_t *p)
{
    if (!p->pid)
        return true;
    int st;
    if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
        p->status = st;
        p->pid = -p->pid; /* reaped; slot freed by proc_release */
        return true;
    }
    return false;
}

void proc_release(proc_t *p)
{
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    unlink(p->log);
    if (p->hold)
        close(p->hold - 1);
    memset(p, 0, sizeof *p);
}

/* Sends sig and waits up to ms for the exit. Returns the exit code, or -1 when
 * it had to be killed (or died by a signal). The slot stays until proc_release. */
int proc_stop(proc_t *p, int sig, int ms)
{
    if (p->pid > 0)
        kill(p->pid, sig);
    int64_t end = clock_mono_ms() + ms;
    while (!proc_exited(p) && clock_mono_ms() < end)
        clock_sleep_ms(10);
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = -p->pid;
        return -1;
    }
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

/* Kills and reaps every child but keep (NULL: all of them). */
void proc_reap(const proc_t *keep)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid && &procs[i] != keep)
            proc_release(&procs[i]);
}

/* SIGTERM; the process must exit 0 within 15 s (a sanitizer report, a leak
 * included, makes the exit code non-zero). Then releases the slot. */
void stop_clean(proc_t *p, const char *what)
{
    int code = proc_stop(p, SIGTERM, 15000);
    if (code != 0) {
        fprintf(stderr, "\n  %s: exit code %d after SIGTERM\n", what, code);
        print_log(p);
    }
    CU_ASSERT_EQUAL(code, 0);
    proc_release(p);
}

/* Waits until /ready answers 200 (the process up, its store connected). */
int wait_ready(proc_t *p, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    while (clock_mono_ms() < end) {
        if (proc_exited(p)) {
            fprintf(stderr, "\n  ecom exited before it was ready (status %d)\n", p->status);
            print_log(p);
            return -1;
        }
        hresp_t r;
        if (hget(p->port, "/ready", NULL, &r) == 0 && r.status == 200) {
            hfree(&r);
            return 0;
        }
        hfree(&r);
        clock_sleep_ms(50);
    }
    fprintf(stderr, "\n  ecom not ready after %d ms\n", ms);
    print_log(p);
    return -1;
}

/* A development gateway on PostgreSQL (url), ready; NULL when it did not come up. */
proc_t *start_dev_gateway(const char *url)
{
    static char e[600];
    snprintf(e, sizeof e, "DATABASE_URL=%s", url);
    const char *env[] = {e, "APP_ENV=development", "JWT_SECRET=devsecret", NULL};
    proc_t *p = spawn_ecom("gateway", env);
    if (p && wait_ready(p, 15000) != 0) {
        proc_release(p);
        return NULL;
    }
    return p;
}

/* ================= small helpers ================= */

long long q_ll(PGconn *c, const char *sql, const char *param)
{
    const char *params[] = {param};
    PGresult *r = pg_query(c, sql, param ? 1 : 0, params);
    if (!r)
        return -1;
    long long v = PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

long long q_wait(PGconn *c, const char *sql, const char *param, long long want, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    long long v = q_ll(c, sql, param);
    while (v != want && clock_mono_ms() < end) {
        clock_sleep_ms(50);
        v = q_ll(c, sql, param);
    }
    return v;
}

json_object *jparse(const hresp_t *r)
{
    return r->body ? json_tokener_parse(r->body) : NULL;
}

/* A string member of a JSON body, copied; "" when absent. */
void jstr(const hresp_t *r, const char *key, char *buf, size_t cap)
{
    json_object *o = jparse(r), *v;
    buf[0] = '\0';
    if (o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string))
        snprintf(buf, cap, "%s", json_object_get_string(v));
    json_object_put(o);
}

bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

bool hex32(const char *s)
{
    if (strlen(s) != 32)
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
            return false;
    return true;
}

bool expect_status(const hresp_t *r, int want, const char *what)
{
    if (r->status == want)
        return true;
    fprintf(stderr, "\n  %s: expected %d, got %d: %.300s\n", what, want, r->status, r->body ? r->body : "(none)");
    return false;
}

/* A gateway-made error: status, application/problem+json, "status" = status,
 * "type" ending in type_suffix (NULL: about:blank), and requestId equal to the
 * echoed x-request-id (and to rid when given). */
void check_problem(const hresp_t *r, int status, const char *type_suffix, const char *rid, const char *what)
{
    CU_ASSERT_TRUE(expect_status(r, status, what));
    char ct[128], hrid[160];
    CU_ASSERT_TRUE(hheader(r, "Content-Type", ct, sizeof ct) && strncmp(ct, "application/problem+json", 24) == 0);
    CU_ASSERT_PTR_NOT_NULL(hheader(r, "x-request-id", hrid, sizeof hrid));
    json_object *o = jparse(r), *v;
    CU_ASSERT_PTR_NOT_NULL(o);
    if (!o)
        return;
    CU_ASSERT_TRUE(json_object_object_get_ex(o, "status", &v) && json_object_get_int(v) == status);
    const char *type = json_object_object_get_ex(o, "type", &v) ? json_object_get_string(v) : "";
    bool type_ok = type_suffix ? ends_with(type, type_suffix) : strcmp(type, "about:blank") == 0;
    if (!type_ok)
        fprintf(stderr, "\n  %s: problem type %s, expected ...%s\n", what, type, type_suffix ? type_suffix : "about:blank");
    CU_ASSERT_TRUE(type_ok);
    const char *body_rid = json_object_object_get_ex(o, "requestId", &v) ? json_object_get_string(v) : "";
    CU_ASSERT_STRING_EQUAL(body_rid, hrid);
    if (rid)
        CU_ASSERT_STRING_EQUAL(body_rid, rid);
    json_object_put(o);
}

/* The value of one sample line of /metrics ("name{labels}"), -1 when absent. */
double metric(int port, const char *series)
{
    hresp_t r;
    double v = -1;
    if (hget(port, "/metrics", NULL, &r) == 0 && r.status == 200) {
        size_t n = strlen(series);
        for (const char *l = r.body; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
            if (strncmp(l, series, n) == 0 && l[n] == ' ') {
                v = strtod(l + n + 1, NULL);
                break;
            }
    }
    hfree(&r);
    return v;
}

char *unique(const char *prefix)
{
    static int n;
    char hex[9];
    random_hex(hex, 4);
    return xasprintf("%s%d-%s-%d", prefix, (int)getpid(), hex, n++);
}

/* ================= tokens ================= */

int test_jwt_keys(jwtk_t *k, const char *secret)
{
    setenv("APP_ENV", strlen(secret) < 32 ? "development" : "production", 1);
    setenv("JWT_SECRET", secret, 1);
    setenv("OTP_PEPPER", "test-pepper-0123456789abcdef0123456789", 1);
    unsetenv("JWT_PRIVATE_KEY_PEM");
    unsetenv("JWT_PUBLIC_KEY_PEM");
    unsetenv("JWT_ISSUER");
    unsetenv("JWT_AUDIENCE");
    config_t cfg;
    char *errors = NULL;
    int rc = config_load(&cfg, NULL, CFG_ROLE_GATEWAY, &errors);
    if (rc == 0) {
        free(errors);
        errors = NULL;
        rc = jwtk_init(k, &cfg, &errors);
    }
    if (rc != 0)
        fprintf(stderr, "\n  keys: %s\n", errors ? errors : "?");
    free(errors);
    config_free(&cfg);
    unsetenv("APP_ENV");
    unsetenv("JWT_SECRET");
    unsetenv("OTP_PEPPER");
    return rc;
}

char *test_jwt_mint(const jwtk_t *k, const char *sub, const char *tid, const char *const *perms, int64_t now_s, int ttl)
{
    principal_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.sub, sizeof p.sub, "%s", sub);
    snprintf(p.tid, sizeof p.tid, "%s", tid);
    for (int i = 0; perms && perms[i] && i < PRINCIPAL_MAX_PERMS; i++)
        snprintf(p.perms[p.nperms++], sizeof p.perms[0], "%s", perms[i]);
    char *tok = NULL;
    if (jwtk_sign(k, &p, now_s, ttl, &tok) != 0)
        return NULL;
    return tok;
}

int hget_auth(int port, const char *path, const char *tok, const char *extra, hresp_t *r)
{
    char *h = xasprintf("Authorization: Bearer %s\r\n%s", tok, extra ? extra : "");
    int rc = hget(port, path, h, r);
    free(h);
    return rc;
}

/* ================= concurrent requests ================= */


static void *job_run(void *arg)
{
    job_t *j = arg;
    int fd = hconnect(j->port);
    j->refused = fd < 0;
    pthread_barrier_wait(j->bar);
    memset(&j->resp, 0, sizeof j->resp);
    if (fd >= 0) {
        if (hsend(fd, j->method, j->path, j->hdrs, j->body, j->body ? strlen(j->body) : 0) == 0 &&
            hrecv(fd, false, &j->resp) != 0)
            memset(&j->resp, 0, sizeof j->resp);
        close(fd);
    }
    return NULL;
}

/* Runs n copies of one request at once, each on its own connection. */
job_t *run_concurrent(int n, int port, const char *method, const char *path, const char *hdrs,
                      const char *body)
{
    job_t *jobs = xcalloc((size_t)n, sizeof *jobs);
    pthread_t *th = xcalloc((size_t)n, sizeof *th);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        jobs[i] = (job_t){port, method, path, hdrs, body, &bar, {0}, false};
        pthread_create(&th[i], NULL, job_run, &jobs[i]);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    free(th);
    return jobs;
}

void free_jobs(job_t *jobs, int n)
{
    for (int i = 0; i < n; i++)
        hfree(&jobs[i].resp);
    free(jobs);
}

/* ================= a webhook receiver ================= */

static void sink_tick(evutil_socket_t fd, short ev, void *arg)
{
    (void)fd;
    (void)ev;
    http_sink_t *s = arg;
    if (atomic_load(&s->stop))
        event_base_loopbreak(s->base);
}

static void *sink_thread(void *arg)
{
    http_sink_t *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

int http_sink_start(http_sink_t *s, void (*cb)(struct evhttp_request *req, void *arg), void *arg)
{
    return http_sink_start_idle(s, cb, arg, 0);
}

int http_sink_start_idle(http_sink_t *s, void (*cb)(struct evhttp_request *req, void *arg), void *arg, int idle_s)
{
    memset(s, 0, sizeof *s);
    s->base = event_base_new();
    s->http = evhttp_new(s->base);
    evhttp_set_gencb(s->http, cb, arg);
    if (idle_s > 0)
        evhttp_set_timeout(s->http, idle_s);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, "127.0.0.1", 0);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (!bs || getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl) != 0) {
        evhttp_free(s->http);
        event_base_free(s->base);
        memset(s, 0, sizeof *s);
        return -1;
    }
    s->port = ntohs(sa.sin_port);
    s->tick = event_new(s->base, -1, EV_PERSIST, sink_tick, s);
    struct timeval tv = {0, 20000};
    event_add(s->tick, &tv);
    return pthread_create(&s->th, NULL, sink_thread, s) == 0 ? 0 : -1;
}

void http_sink_stop(http_sink_t *s)
{
    if (!s->base)
        return;
    atomic_store(&s->stop, true);
    pthread_join(s->th, NULL);
    event_free(s->tick);
    evhttp_free(s->http);
    event_base_free(s->base);
    memset(s, 0, sizeof *s);
}

bool webhook_signed(struct evhttp_request *req, const char *secret)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const unsigned char *body = evbuffer_pullup(in, -1);
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Ecom-Signature");
    const char *ts = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Ecom-Timestamp");
    char *end = NULL;
    long long t = ts && *ts >= '0' && *ts <= '9' ? strtoll(ts, &end, 10) : -1;
    long long now = clock_now_ms() / 1000;
    if (!sig || t < 0 || *end || t < now - WEBHOOK_TOLERANCE_S || t > now + WEBHOOK_TOLERANCE_S)
        return false;
    /* what the receiver signs again: "<timestamp>.<body>" */
    size_t tl = strlen(ts);
    unsigned char *msg = xmalloc(tl + 1 + n + 1);
    memcpy(msg, ts, tl);
    msg[tl] = '.';
    if (n)
        memcpy(msg + tl + 1, body, n);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    bool ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, tl + 1 + n, md, &mdlen) != NULL;
    free(msg);
    char want[80] = "sha256=";
    for (unsigned i = 0; ok && i < mdlen; i++)
        snprintf(want + 7 + 2 * i, 3, "%02x", md[i]);
    return ok && strcmp(sig, want) == 0 && evhttp_request_get_command(req) == EVHTTP_REQ_POST;
}

/* One policy write: its status and revision (as a number; 0 when absent). */
static long long policy_write(int port, const char *method, const char *path, const char *hdrs, const char *body,
                              int want, int *deleted)
{
    hresp_t r;
    char *h = xasprintf("Content-Type: application/json\r\n%s", hdrs ? hdrs : "");
    CU_ASSERT_EQUAL(hreq(port, method, path, h, body, body ? strlen(body) : 0, &r), 0);
    free(h);
    CU_ASSERT_TRUE(expect_status(&r, want, path));
    char rev[32] = "";
    jstr(&r, "revision", rev, sizeof rev);
    json_object *o = jparse(&r), *d = NULL;
    if (deleted)
        *deleted = o && json_object_object_get_ex(o, "deleted", &d) ? json_object_get_boolean(d) : -1;
    json_object_put(o);
    hfree(&r);
    return atoll(rev);
}

void check_policy_revisions(int port, const char *hdrs, const char *tag)
{
    const char *admin = "/api/v1/analytics/admin/auth";
    char path[256], path2[256], tuple[256], role[256], role2[256], member[256];
    snprintf(path, sizeof path, "%s/rebac", admin);
    snprintf(tuple, sizeof tuple, "{\"subject\":\"user:rv-%s\",\"relation\":\"viewer\",\"object\":\"project:rv-%s\"}",
             tag, tag);
    snprintf(path2, sizeof path2, "%s/roles", admin);
    snprintf(role, sizeof role, "{\"name\":\"rv-%s\",\"permissions\":[\"rv:read\",\"rv:read\"]}", tag);
    snprintf(role2, sizeof role2, "{\"name\":\"rv-%s\",\"permissions\":[\"rv:read\"]}", tag);
    snprintf(member, sizeof member, "{\"subject\":\"rv-%s\",\"role\":\"rv-%s\"}", tag, tag);
    char members[256];
    snprintf(members, sizeof members, "%s/members", admin);
    /* each put again comes after other writes, so the row's revision is not the latest */
    long long t1 = policy_write(port, "POST", path, hdrs, tuple, 201, NULL);
    CU_ASSERT_TRUE(t1 > 0);
    long long r1 = policy_write(port, "POST", path2, hdrs, role, 201, NULL);
    CU_ASSERT_TRUE(r1 > t1);
    CU_ASSERT_EQUAL(policy_write(port, "POST", path, hdrs, tuple, 201, NULL), t1);
    long long m1 = policy_write(port, "POST", members, hdrs, member, 201, NULL);
    CU_ASSERT_TRUE(m1 > r1);
    CU_ASSERT_EQUAL(policy_write(port, "POST", path2, hdrs, role, 201, NULL), r1);
    long long r2 = policy_write(port, "POST", path2, hdrs, role2, 201, NULL);
    CU_ASSERT_TRUE(r2 > m1);
    CU_ASSERT_EQUAL(policy_write(port, "POST", members, hdrs, member, 201, NULL), m1);

    snprintf(path2, sizeof path2, "%s/rebac?subject=user:rv-%s&relation=viewer&object=project:rv-%s", admin, tag, tag);
    int deleted = -1;
    long long d1 = policy_write(port, "DELETE", path2, hdrs, NULL, 200, &deleted);
    CU_ASSERT_TRUE(d1 > r2);
    CU_ASSERT_EQUAL(deleted, 1);
    /* nothing deleted: the policy's revision, as this gateway knows it (with
     * PostgreSQL it may not have applied d1 yet when the answer comes) */
    long long d2 = policy_write(port, "DELETE", path2, hdrs, NULL, 200, &deleted);
    CU_ASSERT_TRUE(d2 > 0 && d2 <= d1);
    CU_ASSERT_EQUAL(deleted, 0);
}
