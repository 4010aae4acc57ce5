/* bench/bench_shop.c: the shop flow under load, end to end, on real
 * processes: HTTP POST /api/v1/payments/payments (202) -> outbox ->
 * outbox-worker -> Redis -> `ecom service payment` (provider simulator,
 * payment.succeeded through the outbox) -> outbox-worker -> Redis ->
 * `ecom service notification` -> the signed webhook receipt, which arrives
 * at a receiver in this program. `ecom service analytics` runs too (it
 * consumes every topic, as in production). Beside it, in the same rounds, the
 * raw PostgreSQL commit rate: pgbench, one single-row INSERT per transaction,
 * 16 clients. Figures are printed, never asserted; the exit status is
 * non-zero only when a run could not complete (receipts missing).
 *
 * Each round runs, in this order: pgbench; a closed-loop run (BENCH_CLIENTS
 * keep-alive connections posting as fast as the gateway answers) that gives
 * completed payments/s (receipts arrived per second in the window) and the
 * latency under saturation; then open-loop runs at each rate of BENCH_RATES,
 * latency measured from each payment's scheduled send time (no coordinated
 * omission) to its receipt, with where the time goes (the median and p99 of
 * each step, from the rows' timestamps). An open-loop run sends at its rate
 * for BENCH_LEAD_IN_MS before its measured window (a ramp-up, as load tests
 * of a steady state have): every run starts with each stage idle (settle),
 * and its batches grow to the rate's size only as a queue forms, so the
 * first few hundred milliseconds are the step's response, not the rate's
 * steady state; the lead-in's own p99 is printed beside the figures. Every run prints the CPU per
 * completed payment of each process, of this database's PostgreSQL backends
 * (also split by the role whose connection they serve) and of the machine.
 * Medians over the rounds at the end.
 *
 * Usage, inside scripts/test-env on a freshly migrated database (scripts/run-bench):
 *   bench_shop [--ecom PATH]
 * Environment: DATABASE_URL, REDIS_URL (logical db 10 is flushed and used),
 * BENCH_SECONDS (per run, default 8), BENCH_LEAD_IN_MS (default 1000; 0: none),
 * BENCH_ROUNDS (default 3), BENCH_CLIENTS
 * (closed loop, default 32), BENCH_RATES (payments/s, default "250,1000"),
 * GATEWAY_THREADS (default 2), PAYMENT_PROVIDER_LATENCY_MS (default 2, the
 * production default), BENCH_SHOP_SKIP_PGBENCH=1, BENCH_KEEP_LOGS=1 (keep and
 * name the processes' log files), BENCH_LOG_LEVEL (default warn),
 * BENCH_SHOP_SKIP_CLOSED=1 (open-loop runs only), BENCH_SETSID=1 (each role in
 * a session of its own, so the kernel's autogroup scheduling gives it a share
 * of its own, as a daemon started in its own session would have; by default
 * the roles share this program's session).
 * Owns: everything it starts (threads, child processes, connections, files). */
#include "bus/bus.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/pg.h"
#include "core/redis.h"
#include "core/strmap.h"
#include "core/uuid.h"
#include "http-gateway/jwt.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SECRET40 "0123456789abcdef0123456789abcdef-bnch-40"
#define PEPPER "bench-pepper-0123456789abcdef0123456789a"
#define HOOK_SECRET "bench-webhook-secret"
#define TENANT "bench"
#define REDIS_DB 10
#define MAX_RATES 4
#define MAX_ROUNDS 9
#define DRAIN_TIMEOUT_MS 120000
#define TARGET_RATE 1000
#define TARGET_P99_MS 50

static const char *pg_url;
static char redis_url[600];
static const char *ecom_bin = "build/bin/ecom";
static int secs = 8, rounds = 3, nclients = 32, gw_threads = 2;
/* Open-loop runs send at their rate this long before the measured window:
 * the figures are the flow's steady state at that rate, not its step from
 * idle (settle() leaves every stage idle), which is printed apart. */
static int lead_ms = 1000;
static int rates[MAX_RATES] = {250, 1000};
static int nrates = 2;
static const char *provider_latency = "2";
/* analytics is off the receipts' path: it batches what arrives within this
 * long (ANALYTICS_LINGER_MS, default off in ecom), printed with the figures */
static const char *analytics_linger = "20";
static char *token;
static char boot_path[96];
static int failures;

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ================= processes ================= */

typedef struct role {
    const char *name;
    pid_t pid;
    int port;
    char log[96];
} role_t;

enum { R_GATEWAY, R_DRAINER, R_PAYMENT, R_NOTIFICATION, R_ANALYTICS, R_COUNT };
static role_t roles[R_COUNT] = {{.name = "gateway"},
                                {.name = "outbox-worker"},
                                {.name = "payment"},
                                {.name = "notification"},
                                {.name = "analytics"}};

static void stop_all(void)
{
    for (int i = R_COUNT - 1; i >= 0; i--)
        if (roles[i].pid > 0) {
            kill(roles[i].pid, SIGTERM);
            int64_t end = clock_mono_ms() + 10000;
            while (waitpid(roles[i].pid, NULL, WNOHANG) == 0 && clock_mono_ms() < end)
                clock_sleep_ms(20);
            kill(roles[i].pid, SIGKILL);
            waitpid(roles[i].pid, NULL, 0);
            roles[i].pid = 0;
        }
}

static _Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_shop: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    stop_all();
    exit(2);
}

static void on_signal(int sig)
{
    (void)sig;
    for (int i = 0; i < R_COUNT; i++)
        if (roles[i].pid > 0)
            kill(roles[i].pid, SIGKILL);
    _exit(3);
}

static int free_port(void)
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

static void spawn(role_t *r, const char *const *argv, const char *const *env)
{
    r->port = free_port();
    snprintf(r->log, sizeof r->log, "/tmp/ecom-bench-shop-%d-%s.log", (int)getpid(), r->name);
    pid_t pid = fork();
    if (pid < 0)
        die("fork failed");
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive this program */
        if (getenv("BENCH_SETSID") && atoi(getenv("BENCH_SETSID")))
            setsid();
        int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        char port[16], threads[16];
        snprintf(port, sizeof port, "%d", r->port);
        snprintf(threads, sizeof threads, "%d", gw_threads);
        setenv("DATABASE_URL", pg_url, 1);
        setenv("REDIS_URL", redis_url, 1);
        setenv("APP_ENV", "production", 1);
        setenv("JWT_SECRET", SECRET40, 1);
        setenv("OTP_PEPPER", PEPPER, 1);
        setenv("AUTHX_BOOTSTRAP_FILE", boot_path, 1);
        const char *lvl = getenv("BENCH_LOG_LEVEL");
        setenv("LOG_LEVEL", lvl && *lvl ? lvl : "warn", 1);
        setenv("PORT", port, 1);
        setenv("ADMIN_PORT", port, 1);
        setenv("GATEWAY_THREADS", threads, 1);
        setenv("ECOM_INSTANCE", r->name, 1);
        setenv("PAYMENT_PROVIDER_LATENCY_MS", provider_latency, 1);
        setenv("ANALYTICS_LINGER_MS", analytics_linger, 1);
        for (int i = 0; env && env[i]; i++) {
            const char *eq = strchr(env[i], '=');
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - env[i]), env[i]);
            setenv(key, eq + 1, 1);
        }
        execv(ecom_bin, (char *const *)argv);
        _exit(127);
    }
    r->pid = pid;
}

/* ================= a keep-alive HTTP/1.1 client ================= */

typedef struct conn {
    int fd;
    char buf[16384];
    size_t have;
} conn_t;

static int conn_open(conn_t *c, int port)
{
    c->have = 0;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    return 0;
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->have = 0;
}

/* The Content-Length of the message whose head is [head, eoh): 0 when it
 * has none, -1 when it is not a plain decimal number. */
static long long content_length(const char *head, const char *eoh)
{
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    if (!cl || cl >= eoh)
        return 0;
    const char *v = cl + 17;
    while (*v == ' ' || *v == '\t')
        v++;
    long long n = 0;
    const char *d = v;
    for (; *d >= '0' && *d <= '9' && n < (1LL << 40); d++)
        n = n * 10 + (*d - '0');
    return d == v || (*d != '\r' && *d != ' ' && *d != '\t') || n >= (1LL << 40) ? -1 : n;
}

/* One request; the status (0 on a transport failure); the body's "id" into id. */
static int conn_post(conn_t *c, int port, const char *req, size_t n, char id[UUID_STR_LEN])
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (c->fd < 0 && conn_open(c, port) != 0)
            return 0;
        size_t off = 0;
        while (off < n) {
            ssize_t w = send(c->fd, req + off, n - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        if (off < n) {
            conn_close(c);
            continue;
        }
        c->have = 0;
        char *eoh = NULL;
        size_t need = 0;
        for (;;) {
            ssize_t k = recv(c->fd, c->buf + c->have, sizeof c->buf - 1 - c->have, 0);
            if (k <= 0)
                break;
            c->have += (size_t)k;
            c->buf[c->have] = '\0';
            if (!eoh && (eoh = strstr(c->buf, "\r\n\r\n"))) {
                long long len = content_length(c->buf, eoh);
                if (len < 0 || (size_t)len > sizeof c->buf)
                    break; /* not an answer this client can take */
                need = (size_t)(eoh - c->buf) + 4 + (size_t)len;
            }
            if (eoh && c->have >= need)
                break;
        }
        if (!eoh || c->have < need) {
            conn_close(c);
            if (c->have == 0)
                continue; /* the server closed an idle connection: once more */
            return 0;
        }
        int status = 0;
        sscanf(c->buf, "HTTP/1.%*d %d", &status);
        const char *p = strstr(eoh, "\"id\":\"");
        if (id && p && strlen(p + 6) >= 36) {
            memcpy(id, p + 6, 36);
            id[36] = '\0';
        }
        if (strcasestr(c->buf, "\r\nConnection: close"))
            conn_close(c);
        return status;
    }
    return 0;
}

/* ================= the webhook receiver =================
 *
 * One thread, epoll and plain sockets: a request is read, its receipt noted
 * and a fixed answer written, about two system calls per receipt. On this
 * machine the receiver shares the two cores with the system it measures (a
 * real receiver runs elsewhere), so it takes as little of them as it can:
 * evhttp took about eight calls per receipt (an epoll_ctl pair, FIONREAD,
 * readv, writev). */

typedef struct receipt {
    char id[UUID_STR_LEN]; /* payment id */
    int64_t at_us;         /* wall clock */
} receipt_t;

#define HOOK_BUF 65536

typedef struct hook_conn {
    int fd; /* -1: free */
    size_t have;
    char buf[HOOK_BUF];
} hook_conn_t;

static struct {
    int lfd, ep;
    int port;
    pthread_t th;
    atomic_bool stop;
    pthread_mutex_t mu;
    receipt_t *r;
    size_t n, cap;
    atomic_long other;   /* requests that were not a payment receipt */
    hook_conn_t **conns; /* nconns slots; fd -1: free */
    size_t nconns;
    long accept_failures; /* accept() failed for want of a resource (EMFILE, ...) */
} hook;

/* Notes the receipt in one request's body (the text from body, n bytes). */
static void hook_note(const char *body, size_t n, int64_t now)
{
    char *b = xstrndup(body, n);
    const char *p = strstr(b, "\"type\":\"payment.succeeded\"") ? strstr(b, "(payment ") : NULL;
    receipt_t rc;
    if (p && strlen(p + 9) >= 36) {
        memcpy(rc.id, p + 9, 36);
        rc.id[36] = '\0';
    }
    if (p && uuid_valid(rc.id)) {
        rc.at_us = now;
        pthread_mutex_lock(&hook.mu);
        if (hook.n == hook.cap) {
            hook.cap = hook.cap ? hook.cap * 2 : 65536;
            hook.r = xrealloc(hook.r, hook.cap * sizeof *hook.r);
        }
        hook.r[hook.n++] = rc;
        pthread_mutex_unlock(&hook.mu);
    } else {
        atomic_fetch_add(&hook.other, 1);
    }
    free(b);
}

static void hook_close(hook_conn_t *c)
{
    close(c->fd); /* leaves the epoll set with it */
    c->fd = -1;
    c->have = 0;
}

/* Answers every complete request in c's buffer; -1 when c must close. */
static int hook_serve(hook_conn_t *c, int64_t now)
{
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    size_t off = 0, answers = 0;
    for (;;) {
        char *start = c->buf + off;
        c->buf[c->have] = '\0';
        char *eoh = strstr(start, "\r\n\r\n");
        if (!eoh)
            break;
        long long cl = content_length(start, eoh);
        size_t head = (size_t)(eoh - start) + 4;
        if (cl < 0 || (unsigned long long)cl > HOOK_BUF - 1 - head)
            return -1; /* not a receipt: no length, or larger than any */
        size_t len = (size_t)cl;
        if (off + head + len > c->have)
            break;
        hook_note(eoh + 4, len, now);
        off += head + len;
        answers++;
    }
    memmove(c->buf, c->buf + off, c->have - off);
    c->have -= off;
    if (c->have >= HOOK_BUF - 1)
        return -1;
    char out[8 * (sizeof ok - 1)];
    while (answers > 0) {
        size_t k = answers < 8 ? answers : 8, n = 0;
        for (size_t i = 0; i < k; i++, n += sizeof ok - 1)
            memcpy(out + n, ok, sizeof ok - 1);
        if (send(c->fd, out, n, MSG_NOSIGNAL) != (ssize_t)n)
            return -1; /* an answer this small fits the socket's buffer, or the peer is gone */
        answers -= k;
    }
    return 0;
}

static void hook_accept(void)
{
    for (;;) {
        int fd = accept4(hook.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            hook.accept_failures++; /* the listener stays readable: not at once again */
            clock_sleep_ms(10);
        }
        if (fd < 0)
            return;
        hook_conn_t *c = NULL;
        for (size_t i = 0; i < hook.nconns && !c; i++)
            if (hook.conns[i]->fd < 0)
                c = hook.conns[i];
        if (!c) {
            hook.conns = xrealloc(hook.conns, (hook.nconns + 1) * sizeof *hook.conns);
            c = hook.conns[hook.nconns++] = xmalloc(sizeof *c);
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
        c->have = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(hook.ep, EPOLL_CTL_ADD, fd, &ev) != 0)
            hook_close(c);
    }
}

static void *hook_thread(void *arg)
{
    (void)arg;
    struct epoll_event evs[32];
    while (!atomic_load(&hook.stop)) {
        int n = epoll_wait(hook.ep, evs, 32, 50);
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                hook_accept();
                continue;
            }
            hook_conn_t *c = evs[i].data.ptr;
            ssize_t k = recv(c->fd, c->buf + c->have, HOOK_BUF - 1 - c->have, 0);
            if (k < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (k <= 0 || (c->have += (size_t)k, hook_serve(c, wall_us()) != 0)) /* arrived once read */
                hook_close(c);
        }
    }
    return NULL;
}

static void hook_start(void)
{
    pthread_mutex_init(&hook.mu, NULL);
    hook.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(hook.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (hook.lfd < 0 || bind(hook.lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(hook.lfd, 128) != 0 ||
        getsockname(hook.lfd, (struct sockaddr *)&sa, &sl) != 0)
        die("cannot bind the webhook receiver");
    hook.port = ntohs(sa.sin_port);
    hook.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (hook.ep < 0 || epoll_ctl(hook.ep, EPOLL_CTL_ADD, hook.lfd, &ev) != 0)
        die("cannot watch the webhook receiver");
    pthread_create(&hook.th, NULL, hook_thread, NULL);
}

static void hook_stop(void)
{
    atomic_store(&hook.stop, true);
    pthread_join(hook.th, NULL);
    for (size_t i = 0; i < hook.nconns; i++) {
        if (hook.conns[i]->fd >= 0)
            hook_close(hook.conns[i]);
        free(hook.conns[i]);
    }
    free(hook.conns);
    if (hook.accept_failures)
        printf("  (the receipts' receiver could not accept a connection %ld times)\n", hook.accept_failures);
    close(hook.ep);
    close(hook.lfd);
    free(hook.r);
}

static size_t hook_count(void)
{
    pthread_mutex_lock(&hook.mu);
    size_t n = hook.n;
    pthread_mutex_unlock(&hook.mu);
    return n;
}

/* ================= one run ================= */

typedef struct pay {
    char id[UUID_STR_LEN];
    int status;
    int64_t sched_us, sent_us, resp_us, receipt_us; /* wall clock; receipt 0 when none */
} pay_t;

typedef struct run {
    pay_t *p;
    size_t cap;
    _Atomic size_t next;
    int rate;              /* 0: closed loop */
    int64_t t0_us, end_us; /* wall: the measured window */
    int64_t start_us;      /* wall: the schedule's start (t0_us less the lead-in) */
    char tag[16];
} run_t;

/* Whether p counts in the run's figures: an open-loop payment scheduled in
 * the lead-in before the window does not. */
static bool counted(const run_t *run, const pay_t *p)
{
    return !run->rate || p->sched_us >= run->t0_us;
}

static void *client(void *arg)
{
    run_t *run = arg;
    conn_t c = {.fd = -1};
    char body[160], req[4096];
    for (;;) {
        size_t i = atomic_fetch_add(&run->next, 1);
        if (i >= run->cap)
            break;
        pay_t *p = &run->p[i];
        if (run->rate) {
            p->sched_us = run->start_us + (int64_t)((double)i * 1e6 / run->rate);
            if (p->sched_us >= run->end_us)
                break;
            int64_t wait = p->sched_us - wall_us();
            if (wait > 0)
                usleep((useconds_t)wait);
        } else if (wall_us() >= run->end_us) {
            break;
        }
        int bl = snprintf(body, sizeof body,
                          "{\"orderId\":\"o-%s-%zu\",\"amount\":%zu,\"currency\":\"EUR\",\"method\":\"card\"}",
                          run->tag, i, 100 + i % 10000);
        int rl = snprintf(req, sizeof req,
                          "POST /api/v1/payments/payments HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Authorization: Bearer %s\r\nx-tenant-id: " TENANT "\r\nIdempotency-Key: k-%s-%zu\r\n"
                          "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                          token, run->tag, i, bl, body);
        p->sent_us = wall_us();
        if (!run->rate)
            p->sched_us = p->sent_us;
        p->status = conn_post(&c, roles[R_GATEWAY].port, req, (size_t)rl, p->id);
        p->resp_us = wall_us();
    }
    conn_close(&c);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(int64_t *v, size_t n, double q)
{
    if (!n)
        return -1;
    size_t k = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[k];
}

/* The p99 of v[0..n) in µs, as ms (v is sorted). */
static double p99_ms(int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    return pct(v, n, 0.99) / 1000.0;
}

#define WAIT_KINDS 4 /* CPU, Lock, LWLock, IO: see prober_t */

#define SECONDS_MAX 120 /* seconds of a run shown one by one */

typedef struct result {
    double offered;                       /* requests/s sent */
    double accepted;                      /* 202/s */
    double completed;                     /* receipts/s arrived inside the window */
    double p50, p99;                      /* end to end, ms */
    double http_p99;                      /* HTTP 202, ms */
    double drain_s;                       /* after the window, until the last receipt */
    size_t n, missing;                    /* accepted payments, receipts missing after the drain */
    size_t lead_n;                        /* payments of the lead-in (not in the figures) */
    size_t lead_non202;                   /* requests of the lead-in not answered 202 */
    double lead_p99;                      /* their e2e p99, ms */
    double cpu_ms[R_COUNT], cpu_total_ms; /* CPU per completed payment, per role and the whole machine */
    double cpu_self_ms;                   /* this program's: the clients, the receipts' receiver, the probe */
    double cpu_pg_ms, cpu_redis_ms;       /* this database's backends, this Redis server */
    double cpu_pg_role[R_COUNT];          /* the backends of each role's connections */
    double rtt_p50, rtt_p99;              /* a SELECT 1 round trip during the run, ms */
    double wal_kb, wal_records;           /* the server's WAL per completed payment */
    double wal_syncs, wal_sync_ms;        /* WAL flushes in the run, and their mean time (-1: not timed) */
    long waits[WAIT_KINDS];               /* busy backends sampled during the run, by what they did */
    long wait_samples;
    double p99_by_s[SECONDS_MAX]; /* e2e p99 of the payments scheduled in each second of the run, ms */
    double switches[R_COUNT], switches_pg, switches_all; /* context switches per completed payment */
    int nseconds;
    struct rest *rest; /* the rest of the machine, when measured */
} result_t;

/* utime + stime of a process, in ms, and its command name into comm (when
 * cap > 0); -1 when it cannot be read (gone). */
static double proc_stat_ms(pid_t pid, char *comm, size_t cap)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!open || !close || close < open ||
        sscanf(close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    if (cap)
        snprintf(comm, cap, "%.*s", (int)(close - open - 1), open + 1);
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static double proc_cpu_ms(pid_t pid)
{
    double ms = proc_stat_ms(pid, NULL, 0);
    return ms < 0 ? 0 : ms;
}

/* A process's command line, its arguments joined by blanks, into buf; "" when gone. */
static void proc_cmdline(pid_t pid, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    size_t n = 0;
    FILE *f = fopen(path, "r");
    if (f) {
        n = fread(buf, 1, cap - 1, f);
        fclose(f);
    }
    for (size_t i = 0; i < n; i++)
        if (!buf[i])
            buf[i] = ' ';
    buf[n] = '\0';
}

/* Context switches of a process so far, voluntary and not, over its threads. */
static double proc_switches(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    double sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char st[sizeof path + sizeof e->d_name + 16], line[256];
        snprintf(st, sizeof st, "%s/%s/status", path, e->d_name);
        FILE *f = fopen(st, "r");
        if (!f)
            continue;
        unsigned long long v;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "voluntary_ctxt_switches: %llu", &v) == 1 ||
                sscanf(line, "nonvoluntary_ctxt_switches: %llu", &v) == 1)
                sum += (double)v;
        fclose(f);
    }
    closedir(d);
    return sum;
}

/* The sum of of(pid) over every process whose command line contains needle,
 * e.g. the PostgreSQL backends of one database ("postgres: postgres DB ...")
 * or one Redis server ("redis-server 127.0.0.1:PORT"). */
static double sum_of_matching(const char *needle, double (*of)(pid_t))
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    double sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char cmd[256];
        proc_cmdline((pid_t)atoi(e->d_name), cmd, sizeof cmd);
        if (strstr(cmd, needle))
            sum += of((pid_t)atoi(e->d_name));
    }
    closedir(d);
    return sum;
}

static double cpu_of_matching(const char *needle)
{
    return sum_of_matching(needle, proc_cpu_ms);
}

static char pg_needle[160], redis_needle[300];

/* CPU time (ms) of this database's backends, summed by the role whose
 * connections they serve (pg_stat_activity.application_name). A backend that
 * connects during a run counts from zero, one that leaves takes its time
 * along: the roles keep their connections open, so both are rare. */
static void cpu_pg_by_role(double out[R_COUNT])
{
    static const char *const apps[][2] = {{"ecom-gateway", "gateway"},       {"ecom-gateway-policy", "gateway"},
                                          {"ecom-outbox-worker", "outbox-worker"}, {"payment", "payment"},
                                          {"notification", "notification"}, {"analytics", "analytics"}};
    memset(out, 0, R_COUNT * sizeof *out);
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop", &err);
    if (!c) {
        free(err);
        return;
    }
    PGresult *r = pg_query(c, "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()",
                           0, NULL);
    for (int i = 0; r && i < PQntuples(r); i++)
        for (size_t a = 0; a < sizeof apps / sizeof apps[0]; a++)
            if (strcmp(PQgetvalue(r, i, 1), apps[a][0]) == 0)
                for (int k = 0; k < R_COUNT; k++)
                    if (strcmp(roles[k].name, apps[a][1]) == 0)
                        out[k] += proc_cpu_ms((pid_t)atoi(PQgetvalue(r, i, 0)));
    PQclear(r);
    PQfinish(c);
}

/* The whole server's WAL so far: bytes (the insert position), records,
 * flushes and their time (pg_stat_wal; the time only with
 * track_wal_io_timing on, which scripts/test-env sets). */
typedef struct wal_snap {
    double bytes, records, syncs, sync_ms;
    bool timed;
} wal_snap_t;

static wal_snap_t wal_snap(void)
{
    wal_snap_t w = {0};
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop", &err);
    if (!c) {
        free(err);
        return w;
    }
    PGresult *r = pg_query(c,
                           "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0'), wal_records, wal_sync,"
                           " wal_sync_time, current_setting('track_wal_io_timing') = 'on' FROM pg_stat_wal",
                           0, NULL);
    if (r && PQntuples(r) == 1) {
        w.bytes = atof(PQgetvalue(r, 0, 0));
        w.records = atof(PQgetvalue(r, 0, 1));
        w.syncs = atof(PQgetvalue(r, 0, 2));
        w.sync_ms = atof(PQgetvalue(r, 0, 3));
        w.timed = strcmp(PQgetvalue(r, 0, 4), "t") == 0;
    }
    PQclear(r);
    PQfinish(c);
    return w;
}

/* Context switches of the whole machine so far. */
static double machine_switches(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long v = 0;
    while (fgets(line, sizeof line, f) && sscanf(line, "ctxt %llu", &v) != 1)
        ;
    fclose(f);
    return (double)v;
}

/* Busy CPU time of the whole machine, in ms (every core). */
static double machine_busy_ms(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    unsigned long long v[8] = {0};
    int k = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
                   &v[7]);
    fclose(f);
    if (k < 8)
        return 0;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* ---- the rest of the machine ---- */

/* Every process's CPU so far, to tell what else the machine ran during a
 * run beside the roles, this program, this database's backends and this
 * Redis (which the lines above count): PostgreSQL's own processes, kernel
 * threads, anything else; and the interrupts' time, which no process is
 * charged with. */
typedef struct proc_cpu {
    pid_t pid;
    double ms;
    char name[40]; /* what the rest is grouped by; "" = counted above */
} proc_cpu_t;

typedef struct procs_snap {
    proc_cpu_t *p;
    size_t n;
    double irq_ms; /* the machine's irq + softirq */
} procs_snap_t;

#define REST_TOP 4

typedef struct rest {
    double irq_ms, other_ms; /* per completed payment */
    char top[REST_TOP][40];
    double top_ms[REST_TOP];
} rest_t;

static double machine_irq_ms(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return 0;
    unsigned long long v[7] = {0};
    int k = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]);
    fclose(f);
    return k < 7 ? 0 : (double)(v[5] + v[6]) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* The group a process's CPU goes to: "" when a line above counts it; else
 * PostgreSQL's title ("postgres: walwriter"), or the command's name up to a
 * '/' (kernel threads: "kworker"). */
static void rest_name(pid_t pid, const char *comm, char *out, size_t cap)
{
    out[0] = '\0';
    if (pid == getpid())
        return;
    for (int i = 0; i < R_COUNT; i++)
        if (roles[i].pid == pid)
            return;
    char cmd[256];
    proc_cmdline(pid, cmd, sizeof cmd);
    if (strstr(cmd, pg_needle) || strstr(cmd, redis_needle))
        return;
    if (strncmp(cmd, "postgres: ", 10) == 0)
        snprintf(out, cap, "%.*s", (int)strcspn(cmd, "\n"), cmd);
    else
        snprintf(out, cap, "%.*s", (int)strcspn(comm, "/"), comm);
    size_t len = strlen(out);
    while (len && out[len - 1] == ' ')
        out[--len] = '\0';
    if (!*out)
        snprintf(out, cap, "?");
}

static procs_snap_t procs_snap(void)
{
    procs_snap_t s = {.irq_ms = machine_irq_ms()};
    size_t cap = 0;
    DIR *d = opendir("/proc");
    if (!d)
        return s;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        char comm[64];
        double ms = proc_stat_ms(pid, comm, sizeof comm);
        if (ms < 0)
            continue;
        if (s.n == cap) {
            cap = cap ? cap * 2 : 256;
            s.p = xrealloc(s.p, cap * sizeof *s.p);
        }
        proc_cpu_t *pc = &s.p[s.n++];
        pc->pid = pid;
        pc->ms = ms;
        rest_name(pid, comm, pc->name, sizeof pc->name);
    }
    closedir(d);
    return s;
}

/* What the rest of the machine took between two snapshots, per completed
 * payment (done): the interrupts, the largest groups, and the other groups
 * together. A process that ended between them is not seen. */
static rest_t rest_between(const procs_snap_t *a, const procs_snap_t *b, double done)
{
    rest_t r = {.irq_ms = (b->irq_ms - a->irq_ms) / done};
    strmap_t groups;
    strmap_init(&groups);
    double *sums = xcalloc(b->n + 1, sizeof *sums);
    const char **names = xcalloc(b->n + 1, sizeof *names);
    size_t ng = 0;
    for (size_t i = 0; i < b->n; i++) {
        const proc_cpu_t *pc = &b->p[i];
        if (!pc->name[0])
            continue;
        double before = 0;
        for (size_t j = 0; j < a->n; j++)
            if (a->p[j].pid == pc->pid) {
                before = a->p[j].ms;
                break;
            }
        bool created = false;
        void **slot = strmap_put(&groups, pc->name, strlen(pc->name), &created);
        if (created) {
            names[ng] = pc->name;
            *slot = &sums[ng++];
        }
        *(double *)*slot += pc->ms - before;
    }
    for (size_t k = 0; k < REST_TOP; k++) {
        size_t best = ng;
        for (size_t g = 0; g < ng; g++)
            if (names[g] && (best == ng || sums[g] > sums[best]))
                best = g;
        if (best == ng || sums[best] <= 0)
            break;
        snprintf(r.top[k], sizeof r.top[k], "%s", names[best]);
        r.top_ms[k] = sums[best] / done;
        names[best] = NULL;
    }
    for (size_t g = 0; g < ng; g++)
        if (names[g])
            r.other_ms += sums[g] / done;
    strmap_free(&groups);
    free(sums);
    free(names);
    return r;
}

/* The receipts of the run's accepted payments, matched into p[].receipt_us;
 * returns how many payments have their receipt. */
static size_t match_receipts(run_t *run, size_t n, size_t from)
{
    strmap_t idx;
    strmap_init(&idx);
    for (size_t i = 0; i < n; i++)
        if (run->p[i].status == 202 && uuid_valid(run->p[i].id))
            *strmap_put(&idx, run->p[i].id, 36, NULL) = &run->p[i];
    pthread_mutex_lock(&hook.mu);
    for (size_t k = from; k < hook.n; k++) {
        void **v = strmap_get(&idx, hook.r[k].id, 36);
        if (v) {
            pay_t *p = *v;
            if (!p->receipt_us) /* the first copy counts */
                p->receipt_us = hook.r[k].at_us;
        }
    }
    pthread_mutex_unlock(&hook.mu);
    size_t got = 0;
    for (size_t i = 0; i < n; i++)
        got += run->p[i].receipt_us != 0;
    strmap_free(&idx);
    return got;
}

/* Where the time goes: each step's time since the send, from the rows. */
static void breakdown(run_t *run, size_t n)
{
    int64_t t_start = clock_mono_ms();
    struct evbuffer *ids = evbuffer_new();
    evbuffer_add(ids, "{", 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (run->p[i].receipt_us && counted(run, &run->p[i]))
            evbuffer_add_printf(ids, "%s%s", k++ ? "," : "", run->p[i].id);
    evbuffer_add(ids, "}", 2);
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop", &err);
    if (!c) {
        printf("    (breakdown: %s)\n", err ? err : "?");
        free(err);
        evbuffer_free(ids);
        return;
    }
    /* the id list is a parameter: without this the planner guesses 100 rows and
     * loops over the outbox window once per payment */
    if (pg_exec(c, "SET enable_nestloop = off") != 0)
        printf("    (breakdown: SET failed)\n");
    const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
    PGresult *r = pg_query(
        c,
        "WITH p AS (SELECT unnest($1::uuid[]) AS id)"
        " SELECT p.id,"
        " (extract(epoch FROM pay.created_at) * 1e6)::bigint,"
        " (extract(epoch FROM rq.published_at) * 1e6)::bigint,"
        " (extract(epoch FROM pay.updated_at) * 1e6)::bigint,"
        " (extract(epoch FROM ok.published_at) * 1e6)::bigint,"
        " (extract(epoch FROM d.created_at) * 1e6)::bigint"
        " FROM p JOIN payment.payments pay ON pay.id = p.id"
        " JOIN bus.outbox_published rq ON rq.type = 'payment.requested' AND rq.aggregate_id = 'payment:' || p.id"
        " JOIN bus.outbox_published ok ON ok.type = 'payment.succeeded' AND ok.aggregate_id = 'payment:' || p.id"
        " JOIN notification.deliveries d ON d.message_id = ok.id AND d.channel = 'webhook'",
        1, params);
    evbuffer_free(ids);
    if (!r) {
        PQfinish(c);
        return;
    }
    size_t rows = (size_t)PQntuples(r);
    strmap_t idx;
    strmap_init(&idx);
    for (size_t i = 0; i < n; i++)
        if (run->p[i].receipt_us)
            *strmap_put(&idx, run->p[i].id, 36, NULL) = &run->p[i];
    enum { S_SENT, S_GWTX, S_HTTP, S_DRAINED, S_PAYTX, S_EVT, S_NOTIFYTX, S_RECEIPT, S_N };
    static const char *const names[S_N] = {"request sent",          "gateway tx began",
                                           "202 answered",          "command on the stream",
                                           "payment tx began",      "payment.succeeded on the stream",
                                           "notification tx began", "receipt arrived"};
    int64_t *v[S_N];
    for (int s = 0; s < S_N; s++)
        v[s] = xcalloc(rows + 1, sizeof *v[s]);
    size_t m = 0;
    for (size_t i = 0; i < rows; i++) {
        void **pp = strmap_get(&idx, PQgetvalue(r, (int)i, 0), 36);
        if (!pp)
            continue;
        pay_t *p = *pp;
        int64_t t0 = p->sched_us;
        v[S_SENT][m] = p->sent_us - t0;
        v[S_GWTX][m] = strtoll(PQgetvalue(r, (int)i, 1), NULL, 10) - t0;
        v[S_HTTP][m] = p->resp_us - t0;
        v[S_DRAINED][m] = strtoll(PQgetvalue(r, (int)i, 2), NULL, 10) - t0;
        v[S_PAYTX][m] = strtoll(PQgetvalue(r, (int)i, 3), NULL, 10) - t0;
        v[S_EVT][m] = strtoll(PQgetvalue(r, (int)i, 4), NULL, 10) - t0;
        v[S_NOTIFYTX][m] = strtoll(PQgetvalue(r, (int)i, 5), NULL, 10) - t0;
        v[S_RECEIPT][m] = p->receipt_us - t0;
        m++;
    }
    printf("      where the time goes (%zu payments; ms since the scheduled send; the tx times are the\n"
           "      transactions' now(), i.e. when the batch's transaction started):\n",
           m);
    for (int s = 0; s < S_N; s++) {
        qsort(v[s], m, sizeof *v[s], cmp_i64);
        printf("        %-34s p50 %8.1f   p99 %8.1f\n", names[s], pct(v[s], m, 0.5) / 1000.0,
               pct(v[s], m, 0.99) / 1000.0);
        free(v[s]);
    }
    printf("        (the breakdown's query took %.1f s)\n", (double)(clock_mono_ms() - t_start) / 1000.0);
    strmap_free(&idx);
    PQclear(r);
    PQfinish(c);
}

/* A PostgreSQL round trip (SELECT 1) every 10 ms while a run goes on: what
 * one statement of a service costs at that load; and every 100 ms what the
 * busy backends of the flow are doing (pg_stat_activity, a backend reading
 * the rest of a client's pipeline left out): running, or waiting on a
 * heavyweight lock (a NOTIFY's commit lock among them), an LWLock (the WAL's
 * among them), I/O. That query costs its backend about 1 ms of CPU, so it
 * is sampled no more often (every 50 ms took 1% of the machine). */
typedef struct prober {
    pthread_t th;
    atomic_bool stop;
    _Atomic int64_t from_us; /* wall: record from then on (the measured window; 0: not yet known) */
    int64_t *us;
    size_t n, cap;
    long waits[WAIT_KINDS], samples;
} prober_t;

static const char *const wait_kinds[WAIT_KINDS] = {"CPU", "Lock", "LWLock", "IO"};

static void sample_waits(PGconn *c, prober_t *pr)
{
    PGresult *r = PQexec(c, "SELECT coalesce(wait_event_type, 'CPU'), count(*) FROM pg_stat_activity"
                            " WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()"
                            " AND wait_event_type IS DISTINCT FROM 'Client' GROUP BY 1");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        pr->samples++;
        for (int i = 0; i < PQntuples(r); i++)
            for (int k = 0; k < WAIT_KINDS; k++)
                if (strcmp(PQgetvalue(r, i, 0), wait_kinds[k]) == 0)
                    pr->waits[k] += atol(PQgetvalue(r, i, 1));
    }
    PQclear(r);
}

static void *probe(void *arg)
{
    prober_t *pr = arg;
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop_probe", &err);
    free(err);
    for (unsigned long turn = 0; c && !atomic_load(&pr->stop); turn++) {
        int64_t t0 = clock_mono_us();
        PGresult *r = PQexec(c, "SELECT 1");
        int64_t dt = clock_mono_us() - t0;
        PQclear(r);
        int64_t from = atomic_load(&pr->from_us);
        bool in_window = from && wall_us() >= from;
        if (in_window && pr->n < pr->cap)
            pr->us[pr->n++] = dt;
        if (in_window && turn % 10 == 0)
            sample_waits(c, pr);
        clock_sleep_ms(10);
    }
    if (c)
        PQfinish(c);
    return NULL;
}

static void print_result(const char *label, const struct result *r);

/* ---- each stage's batches, from its /metrics ---- */

typedef struct stage_stats {
    double batches, messages, seconds; /* batch count, messages in them, time spent applying them */
} stage_stats_t;

/* The sum over every series of metric (all label sets) in a Prometheus text. */
static double metric_sum(const char *text, const char *metric)
{
    double total = 0;
    size_t ml = strlen(metric);
    for (const char *line = text; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        if (strncmp(line, metric, ml) != 0 || (line[ml] != ' ' && line[ml] != '{'))
            continue;
        const char *v = line[ml] == '{' ? strchr(line, '}') : line + ml;
        if (v)
            total += strtod(v + 1, NULL);
    }
    return total;
}

/* Scrapes a role's batch counters; zeros when its /metrics does not answer. */
static stage_stats_t stage_stats(const role_t *r)
{
    stage_stats_t st = {0};
    conn_t c = {.fd = -1};
    if (conn_open(&c, r->port) != 0)
        return st;
    const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    struct evbuffer *b = evbuffer_new();
    if (send(c.fd, req, sizeof req - 1, MSG_NOSIGNAL) > 0) {
        char buf[16384];
        ssize_t got;
        while ((got = recv(c.fd, buf, sizeof buf, 0)) > 0)
            evbuffer_add(b, buf, (size_t)got);
    }
    conn_close(&c);
    evbuffer_add(b, "", 1);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    if (r == &roles[R_DRAINER]) {
        st.batches = metric_sum(text, "ecom_outbox_batches_total");
        st.messages = metric_sum(text, "ecom_outbox_published_total");
        st.seconds = metric_sum(text, "ecom_outbox_batch_seconds_sum");
    } else {
        st.batches = metric_sum(text, "ecom_service_batch_seconds_count");
        st.messages = metric_sum(text, "ecom_service_applied_total") + metric_sum(text, "ecom_service_duplicates_total") +
                      metric_sum(text, "ecom_service_ignored_total");
        st.seconds = metric_sum(text, "ecom_service_batch_seconds_sum");
    }
    evbuffer_free(b);
    return st;
}

/* Each stage's batches between the two scrapes, span_s apart, and the
 * share of that span it spent applying them: a stage that applies one batch
 * at a time is a single-server queue, and its waits grow steeply as that
 * share nears 100%. */
static void print_stages(const stage_stats_t *s0, const stage_stats_t *s1, double span_s)
{
    printf("      batches (count, messages each, ms each, busy):");
    for (int i = R_DRAINER; i < R_COUNT; i++) {
        double nb = s1[i].batches - s0[i].batches, busy = s1[i].seconds - s0[i].seconds;
        double per = nb > 0 ? (s1[i].messages - s0[i].messages) / nb : 0;
        double ms = nb > 0 ? busy * 1000.0 / nb : 0;
        printf("%s %s %.0f, %.1f, %.2f, %.0f%%", i == R_DRAINER ? "" : ";", roles[i].name, nb, per, ms,
               span_s > 0 ? busy * 100.0 / span_s : 0);
    }
    printf("\n");
}

#define SETTLE_MAX_MS 120000

/* Whether the flow is idle: bus.outbox empty, and every consumer group of
 * every stream caught up (nothing pending, the last entry delivered). */
static bool flow_idle(PGconn *c, bus_t *b)
{
    PGresult *r = pg_query(c, "SELECT count(*) = 0 FROM bus.outbox", 0, NULL);
    bool idle = r && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    char **names = NULL;
    size_t n = 0;
    if (idle && bus_list_streams(b, &names, &n) != 0)
        idle = false;
    for (size_t i = 0; i < n; i++) {
        bus_stream_info_t info = {0};
        if (idle && bus_stream_info(b, names[i], &info) != 0)
            idle = false;
        for (size_t g = 0; idle && g < info.ngroups; g++) {
            const bus_group_info_t *gi = &info.groups[g];
            idle =
                gi->pending == 0 && (gi->lag == 0 || info.length == 0 || strcmp(gi->last_delivered, info.last_id) == 0);
        }
        free(names[i]);
    }
    free(names);
    return idle;
}

/* A run starts once the runs before it are done with: every stage idle (the
 * outbox empty, every consumer group caught up: analytics, off the
 * receipts' path, can still be applying a saturated run's events when its
 * receipts are all in), seen so twice in a row (a commit and its
 * acknowledgement can fall between the two looks of one), then what they
 * wrote is on disk: PostgreSQL's dirty buffers (CHECKPOINT) and the
 * kernel's write-back (sync), as bench_backbone's phases do. So no run pays
 * for the work of the one before it. */
static void settle(void)
{
    char *pg_err = NULL, *bus_err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop", &pg_err);
    bus_t *b = bus_open_redis(redis_url, &bus_err);
    if (!c || !b) {
        printf("    (cannot see whether the flow is idle: %s)\n", !c ? pg_err : bus_err);
    } else {
        int64_t t0 = clock_mono_ms();
        int idle = 0;
        while (idle < 2 && clock_mono_ms() - t0 < SETTLE_MAX_MS) {
            idle = flow_idle(c, b) ? idle + 1 : 0;
            if (idle < 2)
                clock_sleep_ms(50);
        }
        int64_t waited = clock_mono_ms() - t0;
        if (idle < 2)
            printf("    (the flow was not idle after %lld ms: this run shares the machine with the last one's rest)\n",
                   (long long)waited);
        else if (waited >= 500)
            printf("    (waited %.1f s for the flow to go idle after the run before)\n", (double)waited / 1000.0);
    }
    free(pg_err);
    free(bus_err);
    bus_close(b);
    if (c) {
        if (pg_exec(c, "CHECKPOINT") != 0)
            fprintf(stderr, "bench_shop: CHECKPOINT refused (not a superuser?): runs may inherit write-back\n");
        PQfinish(c);
    }
    sync();
}

static result_t run_once(int rate, bool explain, const char *label)
{
    settle();
    static int seq;
    run_t run = {0};
    snprintf(run.tag, sizeof run.tag, "%d-%d", (int)getpid(), seq++);
    run.rate = rate;
    int64_t lead_us = rate ? (int64_t)lead_ms * 1000 : 0;
    run.cap =
        rate ? (size_t)((int64_t)rate * ((int64_t)secs * 1000 + lead_us / 1000) / 1000) + 16 : (size_t)secs * 20000;
    run.p = xcalloc(run.cap, sizeof *run.p);
    size_t hook0 = hook_count();
    prober_t pr = {.cap = (size_t)secs * 200 + 16};
    pr.us = xcalloc(pr.cap, sizeof *pr.us);
    pthread_create(&pr.th, NULL, probe, &pr);
    procs_snap_t procs0 = procs_snap();
    double cpu0[R_COUNT], busy0 = machine_busy_ms(), self0 = proc_cpu_ms(getpid());
    double pg0 = cpu_of_matching(pg_needle), redis0 = cpu_of_matching(redis_needle), pgr0[R_COUNT];
    double sw0[R_COUNT], swpg0 = sum_of_matching(pg_needle, proc_switches), swall0 = machine_switches();
    cpu_pg_by_role(pgr0);
    wal_snap_t wal0 = wal_snap();
    stage_stats_t st0[R_COUNT] = {{0}}, st1[R_COUNT] = {{0}};
    int64_t st_t0 = clock_mono_us(), st_t1 = st_t0;
    for (int i = 0; i < R_COUNT; i++) {
        cpu0[i] = proc_cpu_ms(roles[i].pid);
        sw0[i] = proc_switches(roles[i].pid);
        if (explain && i != R_GATEWAY)
            st0[i] = stage_stats(&roles[i]);
    }
    run.start_us = wall_us() + 20000;
    run.t0_us = run.start_us + lead_us;
    atomic_store(&pr.from_us, run.t0_us);
    run.end_us = run.t0_us + (int64_t)secs * 1000000;
    int nth = nclients;
    pthread_t *th = xcalloc((size_t)nth, sizeof *th);
    for (int i = 0; i < nth; i++)
        pthread_create(&th[i], NULL, client, &run);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    size_t n = atomic_load(&run.next);
    if (n > run.cap)
        n = run.cap;
    /* clients stop at the first index past the window; keep those that were sent */
    size_t sent = 0, acc = 0, sent_all = 0, acc_all = 0;
    for (size_t i = 0; i < n; i++) {
        const pay_t *p = &run.p[i];
        if (!p->sent_us)
            continue;
        sent_all++;
        acc_all += p->status == 202;
        if (counted(&run, p)) {
            sent++;
            acc += p->status == 202;
        }
    }
    atomic_store(&pr.stop, true);
    pthread_join(pr.th, NULL);
    qsort(pr.us, pr.n, sizeof *pr.us, cmp_i64);
    /* wait for every receipt */
    int64_t deadline = clock_mono_ms() + DRAIN_TIMEOUT_MS;
    while (clock_mono_ms() < deadline) {
        if (match_receipts(&run, n, hook0) >= acc_all)
            break;
        clock_sleep_ms(100);
    }
    /* CPU from the start to the last receipt: all the work of these payments */
    double cpu1[R_COUNT], sw1[R_COUNT];
    st_t1 = clock_mono_us();
    for (int i = 0; i < R_COUNT; i++) {
        cpu1[i] = proc_cpu_ms(roles[i].pid);
        sw1[i] = proc_switches(roles[i].pid);
        if (explain && i != R_GATEWAY)
            st1[i] = stage_stats(&roles[i]);
    }
    double swpg1 = sum_of_matching(pg_needle, proc_switches), swall1 = machine_switches();
    double busy1 = machine_busy_ms(), self1 = proc_cpu_ms(getpid());
    procs_snap_t procs1 = procs_snap();
    double pg1 = cpu_of_matching(pg_needle), redis1 = cpu_of_matching(redis_needle), pgr1[R_COUNT];
    cpu_pg_by_role(pgr1);
    wal_snap_t wal1 = wal_snap();
    /* one pass: the window's payments, the lead-in's apart, and every
     * receipt that arrived inside the window (whenever it was scheduled: the
     * completion rate in the steady state) */
    int64_t *lat = xcalloc(n + 1, sizeof *lat), *http = xcalloc(n + 1, sizeof *http),
            *lead = xcalloc(n + 1, sizeof *lead);
    size_t got = 0, got_all = 0, got_in_window = 0, h = 0, nlead = 0;
    int64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        const pay_t *p = &run.p[i];
        bool in = counted(&run, p);
        if (in && p->sent_us)
            http[h++] = p->resp_us - p->sched_us;
        if (!p->receipt_us)
            continue;
        got_all++;
        got_in_window += p->receipt_us >= run.t0_us && p->receipt_us <= run.end_us;
        if (p->receipt_us > last)
            last = p->receipt_us;
        if (in)
            lat[got++] = p->receipt_us - p->sched_us;
        else
            lead[nlead++] = p->receipt_us - p->sched_us;
    }
    result_t res = {.lead_n = nlead, .lead_non202 = (sent_all - sent) - (acc_all - acc)};
    res.lead_p99 = nlead ? p99_ms(lead, nlead) : 0;
    free(lead);
    double win = (double)(run.end_us - run.t0_us) / 1e6;
    res.offered = (double)sent / win;
    res.accepted = (double)acc / win;
    res.completed = (double)got_in_window / win;
    res.n = acc;
    res.missing = acc_all - got_all;
    res.drain_s = last > run.end_us ? (double)(last - run.end_us) / 1e6 : 0;
    /* the same by second of the schedule: a tail spread over the run, or a few bad seconds */
    int64_t span_us = run.end_us - run.t0_us;
    res.nseconds = (int)((span_us + 999999) / 1000000);
    if (res.nseconds > SECONDS_MAX)
        res.nseconds = SECONDS_MAX;
    int64_t *sec = xcalloc(got + 1, sizeof *sec);
    for (int s = 0; s < res.nseconds; s++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (run.p[i].receipt_us && counted(&run, &run.p[i]) && (run.p[i].sched_us - run.t0_us) / 1000000 == s)
                sec[m++] = run.p[i].receipt_us - run.p[i].sched_us;
        res.p99_by_s[s] = m ? p99_ms(sec, m) : 0;
    }
    free(sec);
    qsort(lat, got, sizeof *lat, cmp_i64);
    res.p50 = pct(lat, got, 0.5) / 1000.0;
    res.p99 = pct(lat, got, 0.99) / 1000.0;
    res.http_p99 = p99_ms(http, h);
    double done = got_all ? (double)got_all : 1; /* the CPU spans the lead-in too */
    for (int i = 0; i < R_COUNT; i++) {
        res.cpu_ms[i] = (cpu1[i] - cpu0[i]) / done;
        res.cpu_pg_role[i] = (pgr1[i] - pgr0[i]) / done;
        res.switches[i] = (sw1[i] - sw0[i]) / done;
    }
    res.cpu_total_ms = (busy1 - busy0) / done;
    res.switches_pg = (swpg1 - swpg0) / done;
    res.switches_all = (swall1 - swall0) / done;
    res.cpu_self_ms = (self1 - self0) / done;
    rest_t rest = rest_between(&procs0, &procs1, done);
    res.rest = &rest;
    free(procs0.p);
    free(procs1.p);
    res.cpu_pg_ms = (pg1 - pg0) / done;
    res.cpu_redis_ms = (redis1 - redis0) / done;
    res.wal_kb = (wal1.bytes - wal0.bytes) / 1024.0 / done;
    res.wal_records = (wal1.records - wal0.records) / done;
    res.wal_syncs = wal1.syncs - wal0.syncs;
    res.wal_sync_ms = wal1.timed && res.wal_syncs > 0 ? (wal1.sync_ms - wal0.sync_ms) / res.wal_syncs : -1;
    res.rtt_p50 = pct(pr.us, pr.n, 0.5) / 1000.0;
    res.rtt_p99 = pct(pr.us, pr.n, 0.99) / 1000.0;
    memcpy(res.waits, pr.waits, sizeof res.waits);
    res.wait_samples = pr.samples;
    free(pr.us);
    if (res.missing) {
        printf("  FAILED: %zu of %zu accepted payments got no receipt within %d s\n", res.missing, acc_all,
               DRAIN_TIMEOUT_MS / 1000);
        failures++;
    }
    if (acc < sent)
        printf("    (%zu of %zu requests were not answered 202)\n", sent - acc, sent);
    if (label)
        print_result(label, &res);
    res.rest = NULL; /* it lives on this stack frame */
    if (explain) {
        print_stages(st0, st1, (double)(st_t1 - st_t0) / 1e6);
        breakdown(&run, n);
    }
    free(lat);
    free(http);
    free(run.p);
    free(th);
    return res;
}

/* ================= pgbench ================= */

static double pgbench_tps(void)
{
    char *err = NULL;
    PGconn *c = pg_connect(pg_url, "bench_shop", &err);
    if (!c)
        die("%s", err ? err : "connect failed");
    if (pg_exec(c, "SET client_min_messages = warning") != 0 ||
        pg_exec(c, "CREATE TABLE IF NOT EXISTS bench_shop_commit (id bigserial PRIMARY KEY, v integer NOT NULL)") !=
            0 ||
        pg_exec(c, "TRUNCATE bench_shop_commit") != 0)
        die("cannot prepare the pgbench table");
    PQfinish(c);
    char script[96], out[96];
    snprintf(script, sizeof script, "/tmp/bench-shop-pgb-%d.sql", (int)getpid());
    snprintf(out, sizeof out, "/tmp/bench-shop-pgb-%d.out", (int)getpid());
    FILE *f = fopen(script, "w");
    if (!f)
        die("cannot write %s", script);
    fprintf(f, "INSERT INTO bench_shop_commit (v) VALUES (1);\n");
    fclose(f);
    char *cmd = xasprintf("pgbench -n -M prepared -c 16 -j 2 -T %d -f %s '%s' >%s 2>&1", secs, script, pg_url, out);
    int rc = system(cmd);
    free(cmd);
    double tps = -1;
    f = fopen(out, "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "tps = ", 6) == 0 && tps < 0)
            tps = strtod(line + 6, NULL);
    if (f)
        fclose(f);
    if (rc != 0 || tps < 0)
        printf("    (pgbench failed: see %s)\n", out);
    else
        unlink(out);
    unlink(script);
    return tps;
}

/* ================= setup ================= */

static void mint_token(void)
{
    setenv("APP_ENV", "production", 1);
    setenv("JWT_SECRET", SECRET40, 1);
    setenv("OTP_PEPPER", PEPPER, 1);
    config_t cfg;
    char *errors = NULL;
    jwtk_t k;
    if (config_load(&cfg, NULL, CFG_ROLE_GATEWAY, &errors) != 0 || jwtk_init(&k, &cfg, &errors) != 0)
        die("keys: %s", errors ? errors : "?");
    principal_t p;
    memset(&p, 0, sizeof p);
    snprintf(p.sub, sizeof p.sub, "shopper@example.com");
    snprintf(p.tid, sizeof p.tid, TENANT);
    if (jwtk_sign(&k, &p, clock_now_ms() / 1000, 900, &token) != 0)
        die("cannot sign a token");
    jwtk_free(&k);
    config_free(&cfg);
}

static int wait_ready(role_t *r, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    const char req[] = "GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    while (clock_mono_ms() < end) {
        if (waitpid(r->pid, NULL, WNOHANG) == r->pid) {
            r->pid = 0;
            return -1;
        }
        conn_t c = {.fd = -1};
        if (conn_open(&c, r->port) == 0) {
            char buf[64] = "";
            if (send(c.fd, req, sizeof req - 1, MSG_NOSIGNAL) > 0 && recv(c.fd, buf, sizeof buf - 1, 0) > 12 &&
                strncmp(buf + 9, "200", 3) == 0) {
                conn_close(&c);
                return 0;
            }
            conn_close(&c);
        }
        clock_sleep_ms(50);
    }
    return -1;
}

static void start_stack(void)
{
    snprintf(boot_path, sizeof boot_path, "/tmp/bench-shop-boot-%d.json", (int)getpid());
    FILE *f = fopen(boot_path, "w");
    if (!f)
        die("cannot write %s", boot_path);
    fprintf(f, "{\"tenants\": {\"" TENANT "\": {\"roles\": {\"shopper\": [\"payments:write\", \"payments:read\"]},"
               " \"members\": {\"*\": [\"shopper\"]}}}}\n");
    fclose(f);
    char hook_url[96];
    snprintf(hook_url, sizeof hook_url, "NOTIFY_WEBHOOK_URL=http://127.0.0.1:%d/receipts", hook.port);
    static const char *const a_gw[] = {"ecom", "gateway", NULL};
    static const char *const a_dr[] = {"ecom", "outbox-worker", NULL};
    static const char *const a_pay[] = {"ecom", "service", "payment", NULL};
    static const char *const a_not[] = {"ecom", "service", "notification", NULL};
    static const char *const a_an[] = {"ecom", "service", "analytics", NULL};
    const char *e_not[] = {"NOTIFY_CHANNELS=webhook", hook_url, "NOTIFY_WEBHOOK_SECRET=" HOOK_SECRET, NULL};
    spawn(&roles[R_GATEWAY], a_gw, NULL);
    spawn(&roles[R_DRAINER], a_dr, NULL);
    spawn(&roles[R_PAYMENT], a_pay, NULL);
    spawn(&roles[R_NOTIFICATION], a_not, e_not);
    spawn(&roles[R_ANALYTICS], a_an, NULL);
    for (int i = 0; i < R_COUNT; i++)
        if (wait_ready(&roles[i], 30000) != 0)
            die("%s did not become ready (see %s)", roles[i].name, roles[i].log);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    double *c = xcalloc((size_t)n, sizeof *c);
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_d);
    double m = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return m;
}

static void print_result(const char *label, const struct result *r)
{
    printf("    %-26s offered %7.0f/s  accepted %7.0f/s  completed %7.0f/s  e2e p50 %7.1f ms  p99 %7.1f ms"
           "  (HTTP p99 %.1f ms, drain %.1f s)\n",
           label, r->offered, r->accepted, r->completed, r->p50, r->p99, r->http_p99, r->drain_s);
    if (r->lead_n || r->lead_non202)
        printf("      the lead-in before the window (%zu payments in %d ms, not in these figures): e2e p99 %.1f ms%s\n",
               r->lead_n, lead_ms, r->lead_p99, r->lead_non202 ? "; some requests were not answered 202" : "");
    printf("      CPU ms per completed payment (run and drain): gateway %.2f, outbox-worker %.2f, payment %.2f,"
           " notification %.2f, analytics %.2f, PostgreSQL backends %.2f, Redis %.2f; whole machine %.2f\n",
           r->cpu_ms[R_GATEWAY], r->cpu_ms[R_DRAINER], r->cpu_ms[R_PAYMENT], r->cpu_ms[R_NOTIFICATION],
           r->cpu_ms[R_ANALYTICS], r->cpu_pg_ms, r->cpu_redis_ms, r->cpu_total_ms);
    printf("      of the machine's, this program's (the clients, the receipts' receiver): %.2f\n", r->cpu_self_ms);
    if (r->rest) {
        printf("      and the rest of it: interrupts %.2f", r->rest->irq_ms);
        for (int i = 0; i < REST_TOP && r->rest->top[i][0]; i++)
            printf(", %s %.2f", r->rest->top[i], r->rest->top_ms[i]);
        printf(", all others %.2f\n", r->rest->other_ms);
    }
    printf("      context switches per completed payment: gateway %.1f, outbox-worker %.1f, payment %.1f,"
           " notification %.1f, analytics %.1f, PostgreSQL backends %.1f; whole machine %.1f\n",
           r->switches[R_GATEWAY], r->switches[R_DRAINER], r->switches[R_PAYMENT], r->switches[R_NOTIFICATION],
           r->switches[R_ANALYTICS], r->switches_pg, r->switches_all);
    printf("      of it in PostgreSQL, by the connections of: gateway %.2f, outbox-worker %.2f, payment %.2f,"
           " notification %.2f, analytics %.2f\n",
           r->cpu_pg_role[R_GATEWAY], r->cpu_pg_role[R_DRAINER], r->cpu_pg_role[R_PAYMENT],
           r->cpu_pg_role[R_NOTIFICATION], r->cpu_pg_role[R_ANALYTICS]);
    printf("      PostgreSQL meanwhile: a SELECT 1 round trip p50 %.2f ms, p99 %.2f ms; in %ld samples of the busy"
           " backends, running %ld, waiting on a lock %ld, an LWLock %ld, I/O %ld\n",
           r->rtt_p50, r->rtt_p99, r->wait_samples, r->waits[0], r->waits[1], r->waits[2], r->waits[3]);
    printf("      WAL meanwhile (the whole server's): %.2f kB and %.1f records per completed payment; %.0f flushes",
           r->wal_kb, r->wal_records, r->wal_syncs);
    if (r->wal_sync_ms >= 0)
        printf(", %.3f ms each on average", r->wal_sync_ms);
    printf("\n");
    printf("      e2e p99 by second of the run, ms:");
    for (int i = 0; i < r->nseconds; i++)
        printf(" %.0f", r->p99_by_s[i]);
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--ecom") == 0 && i + 1 < argc)
            ecom_bin = argv[++i];
    pg_url = getenv("DATABASE_URL");
    const char *rbase = getenv("REDIS_URL");
    if (!pg_url || !*pg_url || !rbase || !*rbase)
        die("DATABASE_URL and REDIS_URL must be set (scripts/run-bench inside scripts/test-env)");
    const char *v;
    if ((v = getenv("BENCH_LEAD_IN_MS")) && *v)
        lead_ms = atoi(v) > 0 ? atoi(v) : 0;
    if ((v = getenv("BENCH_SECONDS")) && atoi(v) > 0)
        secs = atoi(v);
    if ((v = getenv("BENCH_ROUNDS")) && atoi(v) > 0)
        rounds = atoi(v) > MAX_ROUNDS ? MAX_ROUNDS : atoi(v);
    if ((v = getenv("BENCH_CLIENTS")) && atoi(v) > 0)
        nclients = atoi(v);
    if ((v = getenv("GATEWAY_THREADS")) && atoi(v) > 0)
        gw_threads = atoi(v);
    if ((v = getenv("PAYMENT_PROVIDER_LATENCY_MS")) && *v)
        provider_latency = v;
    if ((v = getenv("ANALYTICS_LINGER_MS")) && *v)
        analytics_linger = v;
    if ((v = getenv("BENCH_RATES")) && *v) {
        nrates = 0;
        char *copy = xstrdup(v), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t && nrates < MAX_RATES; t = strtok_r(NULL, ",", &save))
            if (atoi(t) > 0)
                rates[nrates++] = atoi(t);
        free(copy);
    }
    bool skip_pgbench = (v = getenv("BENCH_SHOP_SKIP_PGBENCH")) && strcmp(v, "1") == 0;
    bool skip_closed = (v = getenv("BENCH_SHOP_SKIP_CLOSED")) && strcmp(v, "1") == 0;
    /* whose CPU counts as this run's PostgreSQL and Redis */
    const char *slash = strrchr(pg_url, '/');
    snprintf(pg_needle, sizeof pg_needle, "postgres: postgres %.*s ", (int)strcspn(slash ? slash + 1 : "", "?"),
             slash ? slash + 1 : "");
    /* a Redis logical db of its own, emptied */
    char *with_db = redis_url_with_db(rbase, REDIS_DB);
    if (!with_db)
        die("REDIS_URL does not parse: %s", rbase);
    snprintf(redis_url, sizeof redis_url, "%s", with_db);
    free(with_db);
    char *err = NULL;
    redisContext *rc = redis_connect_url(redis_url, 5000, &err);
    if (!rc)
        die("redis: %s", err ? err : "?");
    freeReplyObject(redisCommand(rc, "FLUSHDB"));
    /* the server's own title, found by its pid: the same over TCP or a socket */
    snprintf(redis_needle, sizeof redis_needle, "redis-server ?");
    redisReply *info = redisCommand(rc, "INFO server");
    const char *pidline = info && info->type == REDIS_REPLY_STRING ? strstr(info->str, "process_id:") : NULL;
    if (pidline) {
        char title[256];
        proc_cmdline((pid_t)atol(pidline + 11), title, sizeof title);
        size_t len = strlen(title);
        while (len && title[len - 1] == ' ')
            title[--len] = '\0';
        if (strncmp(title, "redis-server ", 13) == 0)
            snprintf(redis_needle, sizeof redis_needle, "%s", title);
    }
    freeReplyObject(info);
    redisFree(rc);
    printf("transport to PostgreSQL and Redis: %s, %s\n",
           strcasestr(pg_url, "%2F") || strstr(pg_url, "host=/") ? "Unix socket" : "TCP",
           strncmp(redis_url, "unix://", 7) == 0 ? "Unix socket" : "TCP");
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    hook_start();
    mint_token();
    start_stack();
    printf("shop flow end to end: %ld cores; gateway (%d threads), outbox-worker, payment, notification (webhook),\n"
           "analytics as separate production processes; provider latency %s ms; analytics lingers %s ms\n"
           "(ANALYTICS_LINGER_MS: it is off the receipts' path); %d s per run (open loop: after a lead-in of\n"
           "%d ms at the same rate), %d rounds;\n"
           "closed loop: %d keep-alive connections; target >= %d completed payments/s at p99 <= %d ms\n",
           sysconf(_SC_NPROCESSORS_ONLN), gw_threads, provider_latency, analytics_linger, secs, lead_ms, rounds,
           nclients, TARGET_RATE, TARGET_P99_MS);
    /* warm-up: connections, prepared statements, consumer groups */
    {
        int saved = secs, saved_lead = lead_ms;
        secs = 2;
        lead_ms = 0;
        result_t w = run_once(100, false, NULL);
        secs = saved;
        lead_ms = saved_lead;
        printf("  warm-up: %zu payments, %zu receipts missing\n", w.n, w.missing);
    }
    double tps[MAX_ROUNDS], closed_done[MAX_ROUNDS], closed_p99[MAX_ROUNDS], closed_acc[MAX_ROUNDS];
    double open_done[MAX_RATES][MAX_ROUNDS], open_p50[MAX_RATES][MAX_ROUNDS], open_p99[MAX_RATES][MAX_ROUNDS];
    double open_lead[MAX_RATES][MAX_ROUNDS];
    for (int r = 0; r < rounds; r++) {
        printf("  round %d\n", r + 1);
        tps[r] = skip_pgbench ? -1 : pgbench_tps();
        printf("    %-26s %.0f commits/s (pgbench -M prepared, 16 clients, single-row INSERT)\n", "pgbench", tps[r]);
        fflush(stdout);
        result_t c = {0};
        if (!skip_closed)
            c = run_once(0, false, "closed loop (saturation)");
        closed_done[r] = c.completed;
        closed_p99[r] = c.p99;
        closed_acc[r] = c.accepted;
        for (int k = 0; k < nrates; k++) {
            char label[48];
            snprintf(label, sizeof label, "open loop %d/s", rates[k]);
            result_t o = run_once(rates[k], r == rounds - 1, label);
            open_done[k][r] = o.completed;
            open_p50[k][r] = o.p50;
            open_p99[k][r] = o.p99;
            open_lead[k][r] = o.lead_p99;
        }
    }
    printf("  medians over %d rounds:\n", rounds);
    printf("    pgbench single-row INSERT, 16 clients: %.0f commits/s\n", median(tps, rounds));
    printf("    closed loop: %.0f payments/s accepted, %.0f completed end to end/s, e2e p99 %.1f ms\n",
           median(closed_acc, rounds), median(closed_done, rounds), median(closed_p99, rounds));
    for (int k = 0; k < nrates; k++)
        if (lead_ms > 0)
            printf("    open loop %5d/s: %.0f completed/s, e2e p50 %.1f ms, p99 %.1f ms (the lead-in's p99 %.1f ms)\n",
                   rates[k], median(open_done[k], rounds), median(open_p50[k], rounds), median(open_p99[k], rounds),
                   median(open_lead[k], rounds));
        else
            printf("    open loop %5d/s: %.0f completed/s, e2e p50 %.1f ms, p99 %.1f ms\n", rates[k],
                   median(open_done[k], rounds), median(open_p50[k], rounds), median(open_p99[k], rounds));
    stop_all();
    hook_stop();
    const char *keep = getenv("BENCH_KEEP_LOGS");
    for (int i = 0; i < R_COUNT; i++) {
        if (keep && strcmp(keep, "1") == 0)
            printf("  log of %s: %s\n", roles[i].name, roles[i].log);
        else
            unlink(roles[i].log);
    }
    unlink(boot_path);
    free(token);
    return failures ? 1 : 0;
}
