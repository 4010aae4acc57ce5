/* core/metrics.h: a process-wide metrics registry rendered as Prometheus text.
 *
 * A series is (name, labels); asking twice for the same series returns the same
 * object, so hot paths look a series up once and keep the pointer (borrowed,
 * lives until metrics_reset). Updates are lock-free atomics. */
#ifndef ECOM_METRICS_H
#define ECOM_METRICS_H

#include <stdint.h>

struct evbuffer;
typedef struct metric metric_t;

/* labels: Prometheus label text without braces, e.g. "route=\"/x\",status=\"200\"", or "" */
metric_t *metrics_counter(const char *name, const char *help, const char *labels);
metric_t *metrics_gauge(const char *name, const char *help, const char *labels);
/* Histogram with the default latency buckets in seconds (0.0005 .. 10). */
metric_t *metrics_histogram(const char *name, const char *help, const char *labels);
/* A gauge read at render time. */
void metrics_gauge_fn(const char *name, const char *help, const char *labels, double (*fn)(void *), void *arg);

void metrics_add(metric_t *m, uint64_t n);    /* counter */
void metrics_set(metric_t *m, int64_t v);     /* gauge */
void metrics_observe(metric_t *m, double v);  /* histogram, in seconds */
uint64_t metrics_value(const metric_t *m);    /* counter or gauge value (tests) */
double metrics_sum(const metric_t *m);        /* histogram: sum of observations, seconds (tests, benches) */

void metrics_render(struct evbuffer *out);
void metrics_reset(void); /* frees every series (tests, shutdown) */

#endif
