/* core/health.c: see health.h. */
#include "core/health.h"

#include "core/clock.h"

#include <event2/buffer.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define MAX_CHECKS 16

typedef struct check {
    char name[32];
    bool ok;
    bool reported;
    double latency_ms;
    int64_t at_ms;
} check_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static check_t checks[MAX_CHECKS];
static int nchecks;
static atomic_bool shutting_down;

static check_t *find(const char *component)
{
    for (int i = 0; i < nchecks; i++)
        if (strcmp(checks[i].name, component) == 0)
            return &checks[i];
    if (nchecks == MAX_CHECKS)
        return NULL;
    check_t *c = &checks[nchecks++];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "%s", component);
    return c;
}

void health_require(const char *component)
{
    pthread_mutex_lock(&mu);
    find(component);
    pthread_mutex_unlock(&mu);
}

void health_report(const char *component, bool ok, double latency_ms)
{
    pthread_mutex_lock(&mu);
    check_t *c = find(component);
    if (c) {
        c->ok = ok;
        c->reported = true;
        c->latency_ms = latency_ms;
        c->at_ms = clock_mono_ms();
    }
    pthread_mutex_unlock(&mu);
}

void health_set_shutting_down(bool on)
{
    atomic_store(&shutting_down, on);
}

bool health_render(struct evbuffer *out, const char *version)
{
    pthread_mutex_lock(&mu);
    int64_t now = clock_mono_ms();
    bool pass = !atomic_load(&shutting_down);
    evbuffer_add_printf(out, "{\"version\":\"%s\",\"checks\":{", version);
    for (int i = 0; i < nchecks; i++) {
        check_t *c = &checks[i];
        bool fresh = c->reported && now - c->at_ms <= HEALTH_STALE_MS;
        bool ok = c->ok && fresh;
        pass = pass && ok;
        evbuffer_add_printf(out,
                            "%s\"%s:responseTime\":[{\"componentId\":\"%s\",\"observedValue\":%.3f,"
                            "\"observedUnit\":\"ms\",\"status\":\"%s\"%s}]",
                            i ? "," : "", c->name, c->name, c->latency_ms, ok ? "pass" : "fail",
                            !c->reported ? ",\"output\":\"not checked yet\""
                            : !fresh     ? ",\"output\":\"no recent report\""
                            : !c->ok     ? ",\"output\":\"unreachable\""
                                         : "");
    }
    evbuffer_add_printf(out, "},\"status\":\"%s\"%s}", pass ? "pass" : "fail",
                        atomic_load(&shutting_down) ? ",\"output\":\"shutting down\"" : "");
    pthread_mutex_unlock(&mu);
    return pass;
}
