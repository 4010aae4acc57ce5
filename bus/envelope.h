/* bus/envelope.h: the message envelope (DESIGN §3) and its stream-entry form.
 *
 * A bus message is a flat set of fields: id (UUIDv7, the dedup key), type, topic,
 * tenant, aggregate_id, seq (per-aggregate sequence, 1-based), ts (ms), v (schema
 * version), traceparent, request_id, payload (JSON text).
 * Owns: every string in an envelope_t (envelope_clear frees them). */
#ifndef ECOM_ENVELOPE_H
#define ECOM_ENVELOPE_H

#include "core/uuid.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ENV_NFIELDS 11
#define ENV_NAME_MAX 128 /* type, topic, tenant, aggregate_id */

typedef struct envelope {
    char id[UUID_STR_LEN];
    char *type;
    char *topic;
    char *tenant;
    char *aggregate_id;
    int64_t seq;
    int64_t ts;
    int v;
    char *traceparent; /* may be "" */
    char *request_id;  /* may be "" */
    char *payload;     /* JSON text */
    /* When set, every string field above points into this one allocation
     * (envelope_from_fields); else each is its own. envelope_clear frees
     * either way; a field must not be freed or replaced on its own. */
    char *strings;
} envelope_t;

void envelope_clear(envelope_t *e);
void envelope_copy(envelope_t *dst, const envelope_t *src);

/* Stream key for a topic: "ecom:<topic>" into buf. */
void envelope_stream_name(const char *topic, char *buf, size_t cap);

/* Field i's name and value as text (value in tmp when numeric). For XADD argv. */
const char *envelope_field_name(int i);
const char *envelope_field_value(const envelope_t *e, int i, char tmp[32]);

/* Builds an envelope from stream fields (names/values, n pairs). Missing or
 * invalid fields: returns -1 and *why (static text); e is then partially filled
 * and must still be cleared. */
int envelope_from_fields(envelope_t *e, const char *const *names, const size_t *nlens,
                         const char *const *vals, const size_t *vlens, size_t n, const char **why);

/* Topic, type, tenant and aggregate names: [A-Za-z0-9._:-]{1,128}. */
bool envelope_name_valid(const char *s);

/* A topic is a valid name that does not begin with "dlq:" or "replay:": those
 * streams ("ecom:dlq:<group>", "ecom:replay:<group>") are the bus's own. */
bool envelope_topic_valid(const char *s);

/* Whether a stream is a topic's, not a group's dead letters or replays. */
bool envelope_stream_is_topic(const char *stream);

/* Whether type is one of types (NULL-terminated; NULL holds none). */
bool envelope_type_in(const char *const *types, const char *type);

#endif
