/* services/analytics/analytics.h: the analytics service. It consumes every
 * topic and records each event in its read model (analytics.events, or a
 * memory table), which the gateway's GET /api/v1/analytics/events reads.
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
/* Number of recorded events (all tenants). */
int analytics_count(db_t *db, uint64_t *n) __attribute__((warn_unused_result));
void analytics_events_free(analytics_event_t *ev, size_t n);

#endif
