/* core/otel.h: OpenTelemetry trace export, OTLP/HTTP JSON (gateway.md §1.6).
 *
 * A batch span processor: otel_span_end copies a finished span into a bounded
 * queue under a mutex and returns (a full queue drops and counts, it never
 * blocks); one exporter thread with its own event base POSTs batches to the
 * collector with libevent's HTTP client, every OTEL_BSP_SCHEDULE_DELAY ms or as
 * soon as a batch is full, retrying only 429/502/503/504 and connection errors.
 *
 * Active only when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given) or
 * OTEL_EXPORTER_OTLP_ENDPOINT (+ "/v1/traces") is set and OTEL_SDK_DISABLED is
 * not "true" (any case). Other variables read through config_raw:
 *   OTEL_SERVICE_NAME                 default "unknown_service"; wins over service.name
 *                                     in OTEL_RESOURCE_ATTRIBUTES (read raw: the config
 *                                     table's own default is not used)
 *   OTEL_RESOURCE_ATTRIBUTES          k=v,k=v (values percent-decoded)
 *   OTEL_EXPORTER_OTLP_TRACES_HEADERS k=v,k=v added to every export request;
 *   OTEL_EXPORTER_OTLP_HEADERS        used when the TRACES variant is unset
 *   OTEL_TRACES_SAMPLER               always_on | always_off | traceidratio |
 *                                     parentbased_always_on (default) |
 *                                     parentbased_always_off | parentbased_traceidratio
 *   OTEL_TRACES_SAMPLER_ARG           ratio in [0, 1] for the *traceidratio samplers (default 1)
 *   OTEL_BSP_SCHEDULE_DELAY (5000 ms), OTEL_BSP_EXPORT_TIMEOUT (30000 ms),
 *   OTEL_BSP_MAX_QUEUE_SIZE (2048), OTEL_BSP_MAX_EXPORT_BATCH_SIZE (512, at most 512)
 *
 * Endpoints: http:// only (this build has no TLS client, so https:// is refused
 * at init). The host is an IPv4/IPv6 literal, "localhost" (connected as
 * 127.0.0.1), or a name resolved asynchronously with evdns on the exporter's
 * event base (never blocking DNS).
 *
 * Metrics (core/metrics.h counters):
 *   ecom_otel_spans_exported_total   spans the collector accepted
 *   ecom_otel_spans_dropped_total    spans discarded before any export attempt
 *                                    (queue full, invalid ids, still queued when
 *                                    the shutdown bound ran out)
 *   ecom_otel_export_failures_total  batches given up on (non-retryable status,
 *                                    retries or export timeout exhausted, or
 *                                    abandoned when the shutdown bound ran out)
 *
 * Owns: the queue, the copies of queued spans, the exporter thread with its
 * event base, HTTP connection and DNS base, and copies of every setting.
 * Borrows nothing after a call returns.
 * Threads: otel_span_end, otel_should_sample and otel_enabled may be called
 * from any thread. otel_init and otel_shutdown are not thread-safe: call init
 * before the threads that end spans start and shutdown after they stop (a
 * straggling otel_span_end that races shutdown is dropped, never unsafe). The
 * metric series are looked up at init: do not metrics_reset() while running. */
#ifndef ECOM_OTEL_H
#define ECOM_OTEL_H

#include "core/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTEL_TRACE_ID_HEX 32
#define OTEL_SPAN_ID_HEX 16
#define OTEL_MAX_ATTRS 16
/* Longer strings are cut (at a UTF-8 character boundary) when queued; these
 * bounds are what keeps a full batch under the 20 MiB body limit. */
#define OTEL_NAME_MAX 128
#define OTEL_STATUS_MSG_MAX 128
#define OTEL_ATTR_KEY_MAX 64
#define OTEL_ATTR_STR_MAX 256
#define OTEL_BATCH_MAX 512               /* largest OTEL_BSP_MAX_EXPORT_BATCH_SIZE */
#define OTEL_BODY_MAX (20 * 1024 * 1024) /* OTLP/HTTP request body limit */

typedef enum {
    OTEL_KIND_INTERNAL = 1,
    OTEL_KIND_SERVER = 2,
    OTEL_KIND_CLIENT = 3,
    OTEL_KIND_PRODUCER = 4,
    OTEL_KIND_CONSUMER = 5,
} otel_kind_t;

typedef enum { OTEL_STATUS_UNSET = 0, OTEL_STATUS_OK = 1, OTEL_STATUS_ERROR = 2 } otel_status_t;

typedef enum { OTEL_ATTR_STRING, OTEL_ATTR_INT, OTEL_ATTR_BOOL, OTEL_ATTR_DOUBLE } otel_attr_type_t;

typedef struct otel_attr {
    const char *key; /* borrowed for the duration of otel_span_end; NULL skips the entry */
    otel_attr_type_t type;
    union {
        const char *s; /* borrowed likewise; NULL is sent as "" */
        int64_t i;
        bool b;
        double d; /* NaN and infinities are sent as "NaN", "Infinity", "-Infinity" */
    } v;
} otel_attr_t;

/* A finished span. Every pointer is borrowed only during otel_span_end. */
typedef struct otel_span {
    char trace_id[OTEL_TRACE_ID_HEX + 1];      /* 32 lowercase hex, not all zero */
    char span_id[OTEL_SPAN_ID_HEX + 1];        /* 16 lowercase hex, not all zero */
    char parent_span_id[OTEL_SPAN_ID_HEX + 1]; /* 16 lowercase hex, or "" for a root span */
    const char *name;
    otel_kind_t kind;
    int64_t start_ns; /* Unix nanoseconds */
    int64_t end_ns;
    otel_status_t status;
    const char *status_message; /* sent with OTEL_STATUS_ERROR only; may be NULL */
    otel_attr_t attrs[OTEL_MAX_ATTRS];
    size_t nattrs;
} otel_span_t;

/* Reads the OTEL_* settings and, when export is configured, starts the
 * exporter thread. Returns 0 (also when export stays off: see otel_enabled),
 * or -1 with *err (owned by the caller) listing every problem, one per line.
 * cfg is borrowed during the call only. Calling it while already initialised
 * is an error; after otel_shutdown it may be called again. */
int otel_init(const config_t *cfg, char **err) __attribute__((warn_unused_result));

/* Stops accepting spans, exports what is queued (bounded by the export
 * timeout), stops the exporter thread and frees everything. Spans still queued
 * when the bound runs out are counted as dropped. A no-op when not running. */
void otel_shutdown(void);

/* True between a successful otel_init that configured an endpoint and otel_shutdown. */
bool otel_enabled(void);

/* The sampler's decision for a span of this trace. has_parent: a valid
 * inbound traceparent was received; parent_sampled: its sampled flag.
 * traceidratio samples when the lower 8 bytes of the trace id, read as a
 * big-endian integer, are below ratio * 2^64. When export is off the parent's
 * flag is kept (has_parent && parent_sampled): nothing is recorded here. */
bool otel_should_sample(const char *trace_id_hex, bool has_parent, bool parent_sampled);

/* Queues a copy of a finished, sampled span for export. Never blocks: a full
 * queue (or a span with malformed ids) drops it and counts the drop. A no-op
 * when export is off. */
void otel_span_end(const otel_span_t *s);

/* Current Unix time in nanoseconds (real clock; for span start/end). */
int64_t otel_now_ns(void);

#endif
