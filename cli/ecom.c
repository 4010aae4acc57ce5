/* cli/ecom.c: the daemon binary. `ecom COMMAND`:
 *   gateway | outbox-worker | service NAME... | all | migrate [--service NAME] [--check]
 * Setup runs in a fixed order: arguments, configuration (every problem at
 * once), logging, signals, stores, roles; then each role's loop on its thread. */
#include "bus/outbox.h"
#include "core/admin.h"
#include "core/alloc.h"
#include "core/config.h"
#include "core/health.h"
#include "core/log.h"
#include "core/migrate.h"
#include "core/otel.h"
#include "http-gateway/gateway.h"
#include "outbox-worker/drain.h"
#include "services/registry.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_bool stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    if (atomic_load(&stop_flag))
        _exit(130); /* second signal: leave at once */
    atomic_store(&stop_flag, true);
    health_set_shutting_down(true);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: ecom [--env-file FILE] COMMAND\n"
               "  gateway                      HTTP gateway (PORT, default 3003)\n"
               "  outbox-worker                drain the outbox to the bus\n"
               "  service NAME...              run services (analytics)\n"
               "  all                          every role in one process (in memory without URLs)\n"
               "  migrate [--service NAME] [--check]\n"
               "  config-doc                   print the configuration table (markdown)\n");
}

typedef struct role {
    pthread_t thread;
    int rc;
    const char *name;
    const config_t *cfg;
    const svc_def_t *svc;
    memstore_t *mem;
    membus_t *membus;
    char consumer[128];
} role_t;

static void *drainer_main(void *arg)
{
    role_t *r = arg;
    log_set_role("outbox-worker");
    drain_opts_t o = {
        .database_url = r->cfg->database_url,
        .mem = r->mem,
        .redis_url = r->cfg->redis_url,
        .membus = r->membus,
        .batch = (size_t)r->cfg->outbox_batch,
        .poll_ms = (int)r->cfg->outbox_poll_ms,
        .retain_s = r->cfg->outbox_retain_s,
        .trim_interval_ms = r->cfg->stream_trim_interval_ms,
        .groups_for_topic = service_groups_for_topic,
    };
    drain_run(&o, &stop_flag);
    return NULL;
}

static void *service_main(void *arg)
{
    role_t *r = arg;
    log_set_role(r->svc->group);
    svc_opts_t o = {
        .database_url = r->cfg->database_url,
        .mem = r->mem,
        .redis_url = r->cfg->redis_url,
        .membus = r->membus,
        .consumer = r->consumer,
        .batch = (size_t)r->cfg->service_batch,
        .block_ms = (int)r->cfg->service_block_ms,
        .lanes = (int)r->cfg->service_lanes,
        .max_attempts = (int)r->cfg->service_max_attempts,
        .reclaim_idle_ms = r->cfg->service_reclaim_idle_ms,
        .backoff_ms = r->cfg->service_backoff_ms,
        .inbox_retain_s = r->cfg->inbox_retain_s,
        .linger_ms = strcmp(r->svc->group, "analytics") == 0 ? (int)r->cfg->analytics_linger_ms : 0,
    };
    svc_run(r->svc, &o, &stop_flag);
    return NULL;
}

static void *gateway_main(void *arg)
{
    role_t *r = arg;
    log_set_role("gateway");
    r->rc = gateway_run(r->cfg, r->mem, &stop_flag);
    if (r->rc != 0)
        atomic_store(&stop_flag, true); /* the gateway could not start: stop the other roles too */
    return NULL;
}

static int cmd_migrate(const config_t *cfg, int argc, char **argv)
{
    const char *const *parts = NULL;
    bool check = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--check") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--service") == 0 && i + 1 < argc) {
            parts = migrate_parts_for(argv[++i]);
            if (!parts) {
                fprintf(stderr, "ecom migrate: unknown service '%s'\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "ecom migrate: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!cfg->database_url[0]) {
        printf("DATABASE_URL is not set: the in-memory store needs no migrations\n");
        return 0;
    }
    int rc = migrate_run(cfg->database_url, parts, check, stdout, stderr);
    return rc == 0 ? 0 : rc == 1 ? 1 : 2;
}

/* Runs the roles on threads until a signal, then joins them. */
static int run_roles(const config_t *cfg, bool gateway, bool drainer, const svc_def_t *const *svcs, size_t nsvc)
{
    memstore_t *mem = cfg->database_url[0] ? NULL : memstore_new();
    membus_t *membus = cfg->redis_url[0] ? NULL : membus_new();
    if (mem || membus)
        log_info("running with the in-memory %s%s%s (data lives only in this process)", mem ? "store" : "",
                 mem && membus ? " and " : "", membus ? "bus" : "");
    if ((mem || membus) && !drainer && nsvc && (mem == NULL) != (membus == NULL))
        log_warn("a memory store or bus is private to this process; other processes will not see it");
    char *err = NULL;
    /* the gateway serves /health, /ready and /metrics on its own port */
    admin_t *admin = admin_start(drainer || nsvc ? (int)cfg->admin_port : 0, &err);
    if (err) {
        fprintf(stderr, "ecom: %s\n", err);
        free(err);
        memstore_free(mem);
        membus_free(membus);
        return 1;
    }
    role_t *roles = xcalloc(nsvc + 2, sizeof *roles);
    size_t nr = 0;
    if (gateway) {
        roles[nr] = (role_t){.name = "gateway", .cfg = cfg, .mem = mem, .membus = membus};
        pthread_create(&roles[nr].thread, NULL, gateway_main, &roles[nr]);
        nr++;
    }
    if (drainer) {
        roles[nr] = (role_t){.name = "outbox-worker", .cfg = cfg, .mem = mem, .membus = membus};
        pthread_create(&roles[nr].thread, NULL, drainer_main, &roles[nr]);
        nr++;
    }
    for (size_t i = 0; i < nsvc; i++) {
        roles[nr] = (role_t){.name = svcs[i]->group, .cfg = cfg, .svc = svcs[i], .mem = mem, .membus = membus};
        snprintf(roles[nr].consumer, sizeof roles[nr].consumer, "%s-%s", cfg->instance, svcs[i]->group);
        pthread_create(&roles[nr].thread, NULL, service_main, &roles[nr]);
        nr++;
    }
    int rc = 0;
    for (size_t i = 0; i < nr; i++) {
        pthread_join(roles[i].thread, NULL);
        if (roles[i].rc)
            rc = 1;
    }
    admin_stop(admin);
    free(roles);
    memstore_free(mem);
    membus_free(membus);
    return rc;
}

int main(int argc, char **argv)
{
    alloc_tune();
    const char *env_file = NULL;
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--env-file") == 0 && i + 1 < argc) {
            env_file = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ecom: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i++];
    /* --env-file may also follow the command */
    int rest = i;
    char **args = xcalloc((size_t)(argc + 1), sizeof *args);
    int nargs = 0;
    for (int k = rest; k < argc; k++) {
        if (strcmp(argv[k], "--env-file") == 0 && k + 1 < argc)
            env_file = argv[++k];
        else
            args[nargs++] = argv[k];
    }
    if (strcmp(cmd, "config-doc") == 0) {
        config_print_doc();
        free(args);
        return 0;
    }

    int roles = 0;
    if (strcmp(cmd, "gateway") == 0 || strcmp(cmd, "all") == 0)
        roles |= CFG_ROLE_GATEWAY;
    if (strcmp(cmd, "outbox-worker") == 0 || strcmp(cmd, "all") == 0)
        roles |= CFG_ROLE_DRAINER;
    if (strcmp(cmd, "service") == 0 || strcmp(cmd, "all") == 0)
        roles |= CFG_ROLE_SERVICE;
    if (strcmp(cmd, "migrate") == 0)
        roles |= CFG_ROLE_TOOL;
    if (!roles) {
        fprintf(stderr, "ecom: unknown command '%s'\n", cmd);
        usage(stderr);
        free(args);
        return 2;
    }
    /* a daemon never starts on arguments it does not take (a mistyped --check) */
    const char *extra = NULL;
    if (strcmp(cmd, "outbox-worker") == 0 || strcmp(cmd, "all") == 0)
        extra = nargs ? args[0] : NULL;
    else if (strcmp(cmd, "gateway") == 0) /* only --check, once */
        for (int k = 0; k < nargs && !extra; k++)
            if (k > 0 || strcmp(args[k], "--check") != 0)
                extra = args[k];
    for (int k = 0; strcmp(cmd, "service") == 0 && k < nargs && !extra; k++)
        for (int j = 0; j < k; j++)
            if (strcmp(args[j], args[k]) == 0) {
                fprintf(stderr, "ecom service: '%s' named twice\n", args[k]);
                free(args);
                return 2;
            }
    if (extra) {
        fprintf(stderr, "ecom %s: unexpected argument '%s'\n", cmd, extra);
        free(args);
        return 2;
    }
    config_t cfg;
    char *errors = NULL;
    if (config_load(&cfg, env_file, roles, &errors) != 0) {
        fprintf(stderr, "ecom: configuration problems:\n");
        for (char *line = strtok(errors, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "  - %s\n", line);
        free(errors);
        config_free(&cfg);
        free(args);
        return 2;
    }
    log_configure(cfg.log_level, cfg.log_format);
    log_set_role(cmd);
    outbox_set_max_payload((size_t)cfg.outbox_max_payload);

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 0;
    if (roles & (CFG_ROLE_GATEWAY | CFG_ROLE_SERVICE | CFG_ROLE_DRAINER)) {
        char *oerr = NULL;
        if (otel_init(&cfg, &oerr) != 0) {
            fprintf(stderr, "ecom: OpenTelemetry configuration problems:\n%s", oerr ? oerr : "");
            free(oerr);
            config_free(&cfg);
            free(args);
            return 2;
        }
    }
    if (strcmp(cmd, "migrate") == 0) {
        rc = cmd_migrate(&cfg, nargs, args);
    } else if (strcmp(cmd, "outbox-worker") == 0) {
        rc = run_roles(&cfg, false, true, NULL, 0);
    } else if ((strcmp(cmd, "service") == 0 || strcmp(cmd, "all") == 0) && service_configure(&cfg, &errors) != 0) {
        fprintf(stderr, "ecom: service configuration problems:\n");
        for (char *line = strtok(errors, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(stderr, "  - %s\n", line);
        free(errors);
        rc = 2;
    } else if (strcmp(cmd, "service") == 0 || strcmp(cmd, "all") == 0) {
        const svc_def_t *svcs[8];
        size_t nsvc = 0;
        if (strcmp(cmd, "all") == 0) {
            for (const char *const *n = service_names(); *n && nsvc < 8; n++)
                svcs[nsvc++] = service_lookup(*n);
        } else {
            for (int k = 0; k < nargs && nsvc < 8; k++) {
                svcs[nsvc] = service_lookup(args[k]);
                if (!svcs[nsvc]) {
                    fprintf(stderr, "ecom service: unknown service '%s'\n", args[k]);
                    rc = 2;
                    break;
                }
                nsvc++;
            }
            if (!rc && nsvc == 0) {
                fprintf(stderr, "ecom service: name at least one service\n");
                rc = 2;
            }
        }
        if (!rc)
            rc = run_roles(&cfg, strcmp(cmd, "all") == 0, strcmp(cmd, "all") == 0, svcs, nsvc);
    } else if (nargs == 1 && strcmp(args[0], "--check") == 0) {
        rc = gateway_check(&cfg) == 0 ? 0 : 2;
        if (rc == 0)
            printf("gateway configuration and routes are valid\n");
    } else {
        rc = run_roles(&cfg, true, false, NULL, 0);
    }
    otel_shutdown();
    config_free(&cfg);
    free(args);
    return rc;
}
