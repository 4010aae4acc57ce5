/* core/metrics.c: see metrics.h. */
#include "core/metrics.h"

#include "core/alloc.h"

#include <event2/buffer.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mtype { M_COUNTER, M_GAUGE, M_HIST, M_GAUGE_FN };

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NB (sizeof buckets / sizeof buckets[0])

struct metric {
    char *name, *help, *labels;
    enum mtype type;
    _Atomic uint64_t count; /* counter value, gauge value (as int64), hist count */
    _Atomic uint64_t sum_ns;
    _Atomic uint64_t bucket[NB];
    double (*fn)(void *);
    void *arg;
    struct metric *next;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static metric_t *head, *tail;

static metric_t *get(const char *name, const char *help, const char *labels, enum mtype t)
{
    pthread_mutex_lock(&mu);
    metric_t *m;
    for (m = head; m; m = m->next)
        if (m->type == t && strcmp(m->name, name) == 0 && strcmp(m->labels, labels) == 0)
            break;
    if (!m) {
        m = xcalloc(1, sizeof *m);
        m->name = xstrdup(name);
        m->help = xstrdup(help);
        m->labels = xstrdup(labels ? labels : "");
        m->type = t;
        /* keep series of one name together so each # TYPE line is printed once */
        metric_t *after = NULL;
        for (metric_t *p = head; p; p = p->next)
            if (strcmp(p->name, name) == 0)
                after = p;
        if (after) {
            m->next = after->next;
            after->next = m;
            if (tail == after)
                tail = m;
        } else {
            if (tail)
                tail->next = m;
            else
                head = m;
            tail = m;
        }
    }
    pthread_mutex_unlock(&mu);
    return m;
}

metric_t *metrics_counter(const char *name, const char *help, const char *labels)
{
    return get(name, help, labels ? labels : "", M_COUNTER);
}

metric_t *metrics_gauge(const char *name, const char *help, const char *labels)
{
    return get(name, help, labels ? labels : "", M_GAUGE);
}

metric_t *metrics_histogram(const char *name, const char *help, const char *labels)
{
    return get(name, help, labels ? labels : "", M_HIST);
}

void metrics_gauge_fn(const char *name, const char *help, const char *labels, double (*fn)(void *), void *arg)
{
    metric_t *m = get(name, help, labels ? labels : "", M_GAUGE_FN);
    pthread_mutex_lock(&mu);
    m->fn = fn;
    m->arg = arg;
    pthread_mutex_unlock(&mu);
}

void metrics_add(metric_t *m, uint64_t n)
{
    atomic_fetch_add_explicit(&m->count, n, memory_order_relaxed);
}

void metrics_set(metric_t *m, int64_t v)
{
    atomic_store_explicit(&m->count, (uint64_t)v, memory_order_relaxed);
}

void metrics_observe(metric_t *m, double v)
{
    for (size_t i = 0; i < NB; i++)
        if (v <= buckets[i]) {
            atomic_fetch_add_explicit(&m->bucket[i], 1, memory_order_relaxed);
            break;
        }
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_ns, (uint64_t)(v * 1e9), memory_order_relaxed);
}

uint64_t metrics_value(const metric_t *m)
{
    return atomic_load(&m->count);
}

double metrics_sum(const metric_t *m)
{
    return (double)atomic_load(&m->sum_ns) / 1e9;
}

static void series(struct evbuffer *out, const char *name, const char *suffix, const char *labels,
                   const char *extra)
{
    bool any = labels[0] || extra;
    evbuffer_add_printf(out, "%s%s%s%s%s%s%s", name, suffix, any ? "{" : "", labels,
                        labels[0] && extra ? "," : "", extra ? extra : "", any ? "}" : "");
}

void metrics_render(struct evbuffer *out)
{
    static const char *const tnames[] = {"counter", "gauge", "histogram", "gauge"};
    pthread_mutex_lock(&mu);
    const char *last = "";
    for (metric_t *m = head; m; m = m->next) {
        if (strcmp(last, m->name) != 0) {
            evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, tnames[m->type]);
            last = m->name;
        }
        switch (m->type) {
        case M_COUNTER:
            series(out, m->name, "", m->labels, NULL);
            evbuffer_add_printf(out, " %llu\n", (unsigned long long)atomic_load(&m->count));
            break;
        case M_GAUGE:
            series(out, m->name, "", m->labels, NULL);
            evbuffer_add_printf(out, " %lld\n", (long long)(int64_t)atomic_load(&m->count));
            break;
        case M_GAUGE_FN:
            series(out, m->name, "", m->labels, NULL);
            evbuffer_add_printf(out, " %.17g\n", m->fn ? m->fn(m->arg) : 0.0);
            break;
        case M_HIST: {
            uint64_t cum = 0;
            char le[48];
            for (size_t i = 0; i < NB; i++) {
                cum += atomic_load(&m->bucket[i]);
                snprintf(le, sizeof le, "le=\"%g\"", buckets[i]);
                series(out, m->name, "_bucket", m->labels, le);
                evbuffer_add_printf(out, " %llu\n", (unsigned long long)cum);
            }
            uint64_t n = atomic_load(&m->count);
            series(out, m->name, "_bucket", m->labels, "le=\"+Inf\"");
            evbuffer_add_printf(out, " %llu\n", (unsigned long long)n);
            series(out, m->name, "_sum", m->labels, NULL);
            evbuffer_add_printf(out, " %.9f\n", (double)atomic_load(&m->sum_ns) / 1e9);
            series(out, m->name, "_count", m->labels, NULL);
            evbuffer_add_printf(out, " %llu\n", (unsigned long long)n);
            break;
        }
        }
    }
    pthread_mutex_unlock(&mu);
}

void metrics_reset(void)
{
    pthread_mutex_lock(&mu);
    for (metric_t *m = head, *n; m; m = n) {
        n = m->next;
        free(m->name);
        free(m->help);
        free(m->labels);
        free(m);
    }
    head = tail = NULL;
    pthread_mutex_unlock(&mu);
}
