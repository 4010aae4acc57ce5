/* http-gateway/route.h: the route table as data (DESIGN §5). A route is one row
 * declaring its methods, its path template with :param segments, its handler and
 * its policies (cache, idempotency, flag, permissions, ReBAC, ABAC, chaos,
 * resilience, response schema, published event); the pipeline reads the row and
 * applies the policies in a fixed order. router_new validates every row, reporting
 * every problem at once, and compiles the table; router_match maps a request to a
 * row and its parameters. Also the URL normalisation shared by cache keys and
 * idempotency fingerprints.
 * Owns: router_t (router_free) and the strings route_norm_* return. Borrows the
 * rows: the table must outlive the router (it is normally static). */
#ifndef ECOM_ROUTE_H
#define ECOM_ROUTE_H

#include "core/breaker.h"
#include "http-gateway/chaos.h"
#include "http-gateway/hedge.h"
#include "http-gateway/ratelimit.h"
#include "http-gateway/schema.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The request as the network layer defines it; routes only pass it along. */
typedef struct gw_req gw_req_t;
typedef void (*gw_handler_fn)(gw_req_t *req);
/* Extra cache key text for a request (e.g. "events:" + JSON of the query), owned by
 * the caller; NULL means "do not cache this request". */
typedef char *(*gw_cache_key_fn)(gw_req_t *req);
/* Attribute-based check: true allows the request. */
typedef bool (*gw_abac_fn)(gw_req_t *req);

enum {
    ROUTE_GET = 1u << 0,
    ROUTE_HEAD = 1u << 1,
    ROUTE_POST = 1u << 2,
    ROUTE_PUT = 1u << 3,
    ROUTE_PATCH = 1u << 4,
    ROUTE_DELETE = 1u << 5,
};
#define ROUTE_METHODS_ALL 0x3fu

#define ROUTE_PATH_MAX 2048 /* bytes of a request path or a template */
#define ROUTE_MAX_PARAMS 8
#define ROUTE_MAX_SEGMENTS 32 /* of a template; longer paths match nothing */
#define ROUTE_MAX_PERMS 4
#define ROUTE_ALLOW_MAX 48 /* "GET, HEAD, POST, PUT, PATCH, DELETE" + NUL */

/* Enabled when ttl_ms > 0. GET and HEAD only. */
typedef struct route_cache {
    int64_t ttl_ms;            /* fresh: HIT */
    int64_t swr_ms;            /* then stale-while-revalidate */
    int64_t stale_if_error_ms; /* then stale after a failed refresh */
    int64_t lock_timeout_ms;   /* how long coalesced misses wait; 0 = 5000 */
    bool shared;               /* key without principal and tenant */
    gw_cache_key_fn key;       /* NULL: path and sorted query only */
} route_cache_t;

typedef struct route_idem {
    bool enabled;        /* honour Idempotency-Key (POST, PATCH) */
    bool required;       /* a missing key is a 400 */
    bool release_on_5xx; /* upstream 5xx frees the key instead of being replayed */
} route_idem_t;

typedef struct route_flag {
    const char *name; /* e.g. "new-checkout" -> FLAG_NEW_CHECKOUT; NULL: not gated */
    bool default_on;  /* value when the flag is not configured */
} route_flag_t;

typedef struct route_rebac {
    const char *relation;     /* e.g. "viewer"; NULL: no relation check */
    const char *object_param; /* the path parameter holding the object id, or: */
    const char *object_body;  /* the top-level string member of the JSON body holding it (a body
                                 without the member: no check; one of another type: the handler's 400) */
    const char *object_type;  /* e.g. "order" */
} route_rebac_t;

/* Enabled when limit.count > 0: GCRA per (tenant, principal, route), or per
 * (client address, route) when by_address (routes used before login). */
typedef struct route_rate {
    rl_limit_t limit;
    bool by_address;
} route_rate_t;

typedef struct route_resilience {
    bool breaker;
    breaker_params_t breaker_params; /* zero fields take breaker.h defaults */
    hedge_params_t hedge;
} route_resilience_t;

typedef struct route {
    const char *id;   /* stable name for metrics and cache keys; NULL: the template */
    unsigned methods; /* ROUTE_* bits */
    const char *path; /* "/api/v1/orders/:id" */
    gw_handler_fn handler;
    route_cache_t cache;
    route_idem_t idem;
    route_flag_t flag;
    const char *permissions[ROUTE_MAX_PERMS]; /* all required; unused slots NULL */
    route_rebac_t rebac;
    gw_abac_fn abac;
    chaos_params_t chaos;
    route_rate_t rate;
    route_resilience_t resilience;
    const schema_t *response_schema; /* NULL: the handler's body as it is */
    const char *publish;             /* event type the route publishes, e.g. "analytics.event" */
    bool anonymous;                  /* no principal needed (login and public routes) */
    bool demo;                       /* a runbook demo (GET /flaky): not served with APP_ENV=production */
} route_t;

typedef struct router router_t;

typedef enum { ROUTE_MATCH, ROUTE_NOT_FOUND, ROUTE_METHOD_NOT_ALLOWED } route_result_t;

typedef struct route_params {
    size_t n;
    const char *names[ROUTE_MAX_PARAMS];  /* borrowed from the router */
    const char *values[ROUTE_MAX_PARAMS]; /* percent-decoded, pointing into buf */
    char allow[ROUTE_ALLOW_MAX];          /* ROUTE_METHOD_NOT_ALLOWED: Allow header value */
    char buf[ROUTE_PATH_MAX + 1];
} route_params_t;

/* "GET" -> ROUTE_GET, ...; 0 for any other method (case-sensitive, as HTTP). */
unsigned route_method_bit(const char *name);
/* ROUTE_GET -> "GET"; NULL when bit is not exactly one method. */
const char *route_method_name(unsigned bit);
/* r->id, or r->path when the row has no id. Borrowed. */
const char *route_id(const route_t *r);

/* Checks every row: methods, handler, template syntax (leading '/', no empty
 * segment, no trailing slash, :name params unique and <= 8, <= 2048 bytes, <= 32
 * segments), duplicates (same shape and an overlapping method; param names do not
 * matter), duplicate ids, policy values (probabilities in [0, 1], no negative
 * duration, cache only on GET/HEAD, idempotency only with POST/PATCH, hedging only
 * where safe), ReBAC parameter present in the template, flag and event names.
 * Returns 0, or -1 with *errors (owned) listing every problem, one per line. */
int router_validate(const route_t *rows, size_t n, char **errors)
    __attribute__((warn_unused_result));
/* router_validate, then compiles. On success *out is owned by the caller. */
int router_new(const route_t *rows, size_t n, router_t **out, char **errors)
    __attribute__((warn_unused_result));
void router_free(router_t *r);

/* Matches method (a ROUTE_* bit, or 0 for any other method) and path (anything
 * from '?' or '#' on is ignored). Static segments compare byte for byte and win
 * over :params at the same position; a param takes one non-empty segment, decoded
 * ("%2F" -> "/"; an invalid escape or %00 makes the row not match). "/a/" does not
 * match "/a". HEAD also matches a GET row when no row declares HEAD for the path.
 * ROUTE_MATCH: *route is the row (borrowed) and params holds its parameters.
 * ROUTE_METHOD_NOT_ALLOWED: params->allow lists every method of the rows matching
 * the path. */
route_result_t router_match(const router_t *r, unsigned method, const char *path,
                            route_params_t *params, const route_t **route);
/* The decoded value of a matched parameter; NULL when absent. Borrowed from p. */
const char *route_param(const route_params_t *p, const char *name);

/* The route's cache policy for cache_lookup, with defaults applied. */
struct cache_policy;
void route_cache_policy(const route_t *r, struct cache_policy *out);

/* URL normalisation for cache keys and fingerprints (owned results):
 * path up to '?'/'#', with %XX of unreserved characters decoded and other escapes
 * in uppercase hex; query ('?' optional, NULL = empty) with empty pairs dropped,
 * pairs escape-normalised like the path, then sorted by name (pairs of one name
 * keep their order), joined by '&'. */
char *route_norm_path(const char *path);
char *route_norm_query(const char *query);

#endif
