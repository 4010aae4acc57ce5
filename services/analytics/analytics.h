/* services/analytics/analytics.h: the analytics service. It consumes every
 * topic and records each event in its read model (analytics.events, or a
 * memory table), which the gateway's GET /api/v1/analytics/events reads, and
 * per-tenant counters by type and minute for GET /api/v1/analytics/stats.
 * Owns: the read model's memory table (MEM_SLOT_ANALYTICS). */
#ifndef ECOM_ANALYTICS_H
#define ECOM_ANALYTICS_H

#include "services/runtime.h"

#include <stddef.h>
#include <stdint.h>

const svc_def_t *analytics_service(void);

typedef struct analytics_event {
    char id[UUID_STR_LEN];
    char *tenant, *type, *topic, *aggregate_id;
    int64_t seq;
    int64_t occurred_ms;
    char *payload; /* JSON text */
} analytics_event_t;

/* Events of a tenant, newest first; type NULL = any; before_id: cursor (the id
 * of the last event of the previous page) or NULL. *out owned
 * (analytics_events_free). Not in a transaction. */
int analytics_list(db_t *db, const char *tenant, const char *type, const char *before_id, size_t limit,
                   analytics_event_t **out, size_t *n) __attribute__((warn_unused_result));
/* The same, only events of one aggregate (e.g. "project:p1") when aggregate
 * is not NULL. */
int analytics_list_filtered(db_t *db, const char *tenant, const char *type, const char *aggregate,
                            const char *before_id, size_t limit, analytics_event_t **out, size_t *n)
    __attribute__((warn_unused_result));
/* Number of recorded events (all tenants). */
int analytics_count(db_t *db, uint64_t *n) __attribute__((warn_unused_result));
void analytics_events_free(analytics_event_t *ev, size_t n);

/* ---- counts per type over a window (GET /api/v1/analytics/stats) ----
 * PostgreSQL: analytics.counts_by_minute(tenant, type, minute, count) counts
 * the rows of analytics.events by the UTC minute of occurred_at; the handlers
 * bump it in the statement that inserts the events, counting only the rows
 * that statement inserted, so counters and events commit together and agree.
 * Memory: the same question is answered from the memory table's events. */

typedef struct analytics_type_count {
    char *type;
    int64_t count;
} analytics_type_count_t;

/* The statement, for callers that run it themselves (the gateway's asynchronous
 * reads): text parameters $1 tenant, $2 since in Unix seconds (a whole minute),
 * $3 type or NULL for every type. Columns: type, count; count descending, then
 * type in byte order. */
extern const char analytics_sql_stats[];

/* Counts per type of the tenant's events that occurred at or after since_ms,
 * which must be a whole minute (the counters' resolution; -1 otherwise); type
 * NULL = every type. Ordered by count descending, then type in byte order.
 * *out owned (analytics_type_counts_free). Not in a transaction. */
int analytics_stats(db_t *db, const char *tenant, const char *type, int64_t since_ms, analytics_type_count_t **out,
                    size_t *n) __attribute__((warn_unused_result));
void analytics_type_counts_free(analytics_type_count_t *c, size_t n);

#endif
