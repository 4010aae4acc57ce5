/* tests/httptest.h: the harness of the tests that talk to `ecom` over real
 * HTTP: a small blocking HTTP/1.1 client (one connection per request unless a
 * test drives hconnect/hsend/hrecv itself), child processes of `ecom` on free
 * loopback ports with an environment of their own (their output in a log file,
 * printed when a test fails), and checks of JSON and problem+json answers.
 * Owns: the child process table (proc_reap, proc_release) and every hresp_t's
 * buffers (hfree). */
#ifndef ECOM_TESTS_HTTPTEST_H
#define ECOM_TESTS_HTTPTEST_H

#include "http-gateway/jwt.h"

#include <json-c/json.h>
#include <pthread.h>
#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct hresp {
    int status; /* 0 when the exchange failed */
    char *head; /* status line and headers, NUL-terminated */
    char *body; /* NUL-terminated */
    size_t len;
} hresp_t;

extern _Atomic int http_timeout_s; /* per read or write; default 15 */

void hfree(hresp_t *r);
int hconnect(int port);
int write_all(int fd, const char *p, size_t n);
/* hdrs: extra header lines, each ending in "\r\n" (or NULL). */
int hsend(int fd, const char *method, const char *path, const char *hdrs, const char *body, size_t blen);
/* Reads one response: headers, then Content-Length bytes (or until the peer closes). */
int hrecv(int fd, bool head_only, hresp_t *r);
/* The value of a response header (case-insensitive name), copied into buf; NULL when absent. */
const char *hheader(const hresp_t *r, const char *name, char *buf, size_t cap);
/* One request on a connection of its own. Returns 0, or -1 (r->status 0). */
int hreq(int port, const char *method, const char *path, const char *hdrs, const char *body, size_t blen,
         hresp_t *r);
int hget(int port, const char *path, const char *hdrs, hresp_t *r);
/* POST with Content-Type: application/json. */
int hpost(int port, const char *path, const char *hdrs, const char *json, hresp_t *r);

typedef struct proc {
    pid_t pid;
    int port;
    int status; /* wait status once reaped */
    int hold;   /* port_hold's socket + 1 (0: none) */
    char log[96];
} proc_t;

#define MAX_PROCS 16

/* A port nobody listens on now (free again at once: for "nobody there" tests). */
int free_port(void);
/* A port kept ours: a bound, never listening socket with SO_REUSEPORT, which
 * a gateway (SO_REUSEPORT too) binds beside while no other program's bind to
 * port 0 can be handed it. Test programs run side by side and each starts
 * gateways: a port probed and closed again could reach two of them, which
 * SO_REUSEPORT would let share it silently. Returns the socket (close it
 * when the process that uses the port is gone) and *port, or -1. */
int port_hold(int *port);
/* Starts `ecom CMD` with the base environment (PORT free, GATEWAY_THREADS=2,
 * LOG_LEVEL=error, ADMIN_PORT=0; DATABASE_URL, REDIS_URL, APP_ENV, JWT_* and
 * OTEL_* cleared) plus env ("KEY=VALUE" strings, NULL-terminated). */
proc_t *spawn_ecom(const char *cmd, const char *const *env);
void print_log(const proc_t *p);
char *read_log(const proc_t *p); /* owned; "" when unreadable */
bool proc_exited(proc_t *p);     /* reaped? (non-blocking) */
void proc_release(proc_t *p);    /* kills if alive, reaps, frees the slot */
/* Sends sig and waits up to ms; the exit code, or -1 when killed or signalled. */
int proc_stop(proc_t *p, int sig, int ms);
/* Kills and reaps every child but keep (NULL: all of them). */
void proc_reap(const proc_t *keep);
/* SIGTERM; asserts exit code 0 within 15 s; releases the slot. */
void stop_clean(proc_t *p, const char *what);
/* Waits until /ready answers 200. */
int wait_ready(proc_t *p, int ms);
/* A development gateway (APP_ENV=development, JWT_SECRET=devsecret) on url, ready. */
proc_t *start_dev_gateway(const char *url);

/* The first column of the first row as a number; -1 when none or NULL. */
long long q_ll(PGconn *c, const char *sql, const char *param);
/* Polls q_ll(c, sql, param) every 50 ms, up to ms, until it gives want; the
 * last value read. */
long long q_wait(PGconn *c, const char *sql, const char *param, long long want, int ms);
json_object *jparse(const hresp_t *r); /* owned; NULL when not JSON */
/* A string member of a JSON body, copied; "" when absent. */
void jstr(const hresp_t *r, const char *key, char *buf, size_t cap);
bool ends_with(const char *s, const char *suffix);
bool hex32(const char *s);
/* Prints the body when the status is not want. */
bool expect_status(const hresp_t *r, int want, const char *what);
/* A gateway-made error: status, application/problem+json, "status" = status,
 * "type" ending in type_suffix (NULL: about:blank), requestId equal to the
 * echoed x-request-id (and to rid when given). Asserts with CUnit. */
void check_problem(const hresp_t *r, int status, const char *type_suffix, const char *rid, const char *what);
/* The admin policy writes answer revisions as the store gives them, in either
 * mode: a put that changes nothing gives its row's revision again, a role
 * put with other permissions (as written: duplicates count) a new one, a
 * delete of nothing {"deleted": false} at the policy's revision as the gateway knows it.
 * hdrs: CRLF-ended lines that authorise authx:admin, or NULL; tag keeps the
 * names apart from other tests'. */
void check_policy_revisions(int port, const char *hdrs, const char *tag);
/* The value of one sample line of /metrics ("name{labels}"), -1 when absent. */
double metric(int port, const char *series);
/* A unique string with the prefix (owned). */
char *unique(const char *prefix);

typedef struct job {
    int port;
    const char *method, *path, *hdrs, *body;
    pthread_barrier_t *bar;
    hresp_t resp;
    bool refused; /* the connection was refused */
} job_t;

/* Runs n copies of one request at once, each on its own connection (all
 * connected first, then sent together). Free with free_jobs. */
job_t *run_concurrent(int n, int port, const char *method, const char *path, const char *hdrs, const char *body);
void free_jobs(job_t *jobs, int n);

/* An HTTP server on a thread of the test program (libevent), for the webhook
 * receivers: cb(req, arg) answers each request on that thread. */
struct evhttp_request;
typedef struct http_sink {
    struct event_base *base;
    struct evhttp *http;
    struct event *tick;
    pthread_t th;
    atomic_bool stop;
    int port; /* 127.0.0.1, chosen by the kernel */
} http_sink_t;

/* 0, or -1 when it cannot listen. */
int http_sink_start(http_sink_t *s, void (*cb)(struct evhttp_request *req, void *arg), void *arg);
/* The same, closing a connection idle for idle_s seconds (0: evhttp's default). */
int http_sink_start_idle(http_sink_t *s, void (*cb)(struct evhttp_request *req, void *arg), void *arg, int idle_s);
/* Stops and joins the thread; a sink never started is left alone. */
void http_sink_stop(http_sink_t *s);
/* A webhook delivery as ecom signs it: a POST whose X-Ecom-Timestamp is
 * within WEBHOOK_TOLERANCE_S of now and whose X-Ecom-Signature is "sha256="
 * + hex HMAC-SHA-256 under secret of "<timestamp>.<body>" (what
 * docs/operations.md tells a receiver to check). */
#define WEBHOOK_TOLERANCE_S 300
bool webhook_signed(struct evhttp_request *req, const char *secret);

/* Keys as a gateway with JWT_SECRET=secret loads them: in production, or in
 * development when the secret is shorter than 32 bytes (the runbook's
 * "devsecret"). 0 or -1. */
int test_jwt_keys(jwtk_t *k, const char *secret);
/* An access token for sub in tenant tid (with perms when not NULL), issued at
 * now_s for ttl seconds (owned; NULL on failure). */
char *test_jwt_mint(const jwtk_t *k, const char *sub, const char *tid, const char *const *perms, int64_t now_s, int ttl);
/* GET with "Authorization: Bearer tok" and extra header lines. */
int hget_auth(int port, const char *path, const char *tok, const char *extra, hresp_t *r);

#endif
