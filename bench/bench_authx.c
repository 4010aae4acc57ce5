/* bench/bench_authx.c: the cost of authorization on the request path (issue 4,
 * "Benchmarks"), in process: a ReBAC check through a 3-level rewrite with
 * 100,000 tuples in the tenant, and an RBAC permission check, each timed one
 * by one (p50, p99, max) from two threads at once, as the gateway's threads
 * call them. The HTTP side (bench/authx.sh) uses two helper modes:
 *   bench_authx --bootstrap FILE N     writes an AUTHX_BOOTSTRAP_FILE with the
 *                                      same N-tuple shape (tenant "bench")
 *   bench_authx --token SUB TENANT     prints an access token for the
 *                                      development key (JWT_SECRET=devsecret)
 * The shape: group gJ has 48 members (user:uK, J = K / 48), folder fJ's
 * viewers are group:gJ#member, and project pI's parent is folder f(I % 1000);
 * so viewer(project:pI) for user:uK goes project -> parent folder -> viewer
 * userset -> group member. Figures are printed, never asserted. */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/log.h"
#include "http-gateway/authx/policy.h"
#include "http-gateway/jwt.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FOLDERS 1000
#define MEMBERS 48
#define CHECKS 200000

typedef void (*tuple_fn)(void *arg, const char *object, const char *relation, const char *subject);

/* n tuples of the shape above: folders, then memberships, then projects. */
static size_t shape(size_t n, tuple_fn f, void *arg)
{
    char o[64], s[64];
    size_t k = 0;
    for (int j = 0; j < FOLDERS && k < n; j++, k++) {
        snprintf(o, sizeof o, "folder:f%d", j);
        snprintf(s, sizeof s, "group:g%d#member", j);
        f(arg, o, "viewer", s);
    }
    for (int u = 0; u < FOLDERS * MEMBERS && k < n; u++, k++) {
        snprintf(o, sizeof o, "group:g%d", u / MEMBERS);
        snprintf(s, sizeof s, "user:u%d", u);
        f(arg, o, "member", s);
    }
    for (int p = 0; k < n; p++, k++) {
        snprintf(o, sizeof o, "project:p%d", p);
        snprintf(s, sizeof s, "folder:f%d", p % FOLDERS);
        f(arg, o, "parent", s);
    }
    return k;
}

static void put(void *arg, const char *object, const char *relation, const char *subject)
{
    policy_t *p = arg;
    policy_put_tuple(p, policy_next_revision(p), "bench", object, relation, subject, false);
}

static void emit(void *arg, const char *object, const char *relation, const char *subject)
{
    FILE *f = arg;
    static bool first = true;
    fprintf(f, "%s{\"object\":\"%s\",\"relation\":\"%s\",\"subject\":\"%s\"}", first ? "" : ",\n", object, relation,
            subject);
    first = false;
}

static int write_bootstrap(const char *path, size_t n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("{\"tenants\": {\"bench\": {\"roles\": {\"reader\": [\"events:read\"]}, \"members\": {\"*\": [\"reader\"]},"
          " \"tuples\": [\n",
          f);
    shape(n, emit, f);
    fputs("]}}}\n", f);
    return fclose(f);
}

static int print_token(const char *sub, const char *tenant)
{
    setenv("APP_ENV", "development", 1);
    setenv("JWT_SECRET", "devsecret", 1);
    config_t cfg;
    char *errors = NULL;
    jwtk_t k;
    if (config_load(&cfg, NULL, CFG_ROLE_GATEWAY, &errors) != 0 || jwtk_init(&k, &cfg, &errors) != 0) {
        fprintf(stderr, "bench_authx: %s", errors ? errors : "keys\n");
        return 1;
    }
    principal_t p = {0};
    snprintf(p.sub, sizeof p.sub, "%s", sub);
    snprintf(p.tid, sizeof p.tid, "%s", tenant);
    snprintf(p.sid, sizeof p.sid, "bench-session");
    char *tok = NULL;
    int rc = jwtk_sign(&k, &p, clock_now_ms() / 1000, 900, &tok);
    if (rc == 0)
        printf("%s\n", tok);
    free(tok);
    free(errors);
    jwtk_free(&k);
    config_free(&cfg);
    return rc == 0 ? 0 : 1;
}

/* ---- timed checks ---- */

typedef struct run {
    policy_t *p;
    bool rbac;
    int seed;
    int64_t *ns; /* CHECKS / 2 each */
    size_t allowed;
} run_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *runner(void *arg)
{
    run_t *r = arg;
    unsigned s = (unsigned)r->seed;
    char obj[64], sub[64];
    for (int i = 0; i < CHECKS / 2; i++) {
        int u = rand_r(&s) % (FOLDERS * MEMBERS), proj = rand_r(&s) % 50000;
        if (i % 2 == 0) /* half allowed: a project under the user's group's folder */
            proj = proj - proj % FOLDERS + u / MEMBERS;
        snprintf(obj, sizeof obj, "project:p%d", proj);
        snprintf(sub, sizeof sub, "u%d", u);
        int64_t t0 = now_ns();
        bool ok;
        if (r->rbac) {
            ok = policy_allows(r->p, "bench", sub, "events:read");
        } else {
            char user[72];
            snprintf(user, sizeof user, "user:%s", sub);
            ok = policy_check(r->p, "bench", obj, "viewer", user) == POLICY_ALLOW;
        }
        r->ns[i] = now_ns() - t0;
        r->allowed += ok;
    }
    return NULL;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void measure(policy_t *p, bool rbac, const char *what)
{
    run_t runs[2];
    pthread_t th[2];
    int64_t *all = xcalloc(CHECKS, sizeof *all);
    int64_t t0 = now_ns();
    for (int i = 0; i < 2; i++) {
        runs[i] = (run_t){p, rbac, 17 + i, all + i * (CHECKS / 2), 0};
        pthread_create(&th[i], NULL, runner, &runs[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    double secs = (double)(now_ns() - t0) / 1e9;
    qsort(all, CHECKS, sizeof *all, cmp64);
    printf("  %-44s p50 %6.2f us  p99 %6.2f us  max %7.1f us  %8.0f checks/s (2 threads)  allowed %zu/%d\n", what,
           (double)all[CHECKS / 2] / 1e3, (double)all[CHECKS * 99 / 100] / 1e3, (double)all[CHECKS - 1] / 1e3,
           CHECKS / secs, runs[0].allowed + runs[1].allowed, CHECKS);
    free(all);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--bootstrap") == 0)
        return write_bootstrap(argv[2], (size_t)atol(argv[3])) == 0 ? 0 : 1;
    if (argc == 4 && strcmp(argv[1], "--token") == 0)
        return print_token(argv[2], argv[3]);
    char *err = NULL;
    policy_t *p = policy_new(NULL, true, &err);
    if (!p) {
        fprintf(stderr, "bench_authx: %s", err);
        return 1;
    }
    int64_t t0 = now_ns();
    size_t n = shape(100000, put, p);
    policy_put_role(p, policy_next_revision(p), "bench", "reader", "events:read", false);
    policy_put_binding(p, policy_next_revision(p), "bench", "*", "reader", false);
    printf("authorization checks, in process (%zu tuples in the tenant, loaded in %.0f ms)\n", policy_tuple_count(p),
           (double)(now_ns() - t0) / 1e6);
    (void)n;
    measure(p, false, "ReBAC viewer(project) via parent->viewer->member");
    measure(p, true, "RBAC events:read via a \"*\" binding");
    printf("  target: a ReBAC check p99 <= 1 ms (1000 us) with 100,000 tuples\n");
    policy_free(p);
    return 0;
}
