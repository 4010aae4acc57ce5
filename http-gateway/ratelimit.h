/* http-gateway/ratelimit.h: per-key rate limits with GCRA (the generic cell
 * rate algorithm, as redis-cell's CL.THROTTLE): one "theoretical arrival
 * time" per key, so there is no burst at window boundaries and no counters to
 * reset. A limit allows `count` requests per `period_ms` on average, and
 * `burst` more at once after a quiet spell.
 *
 * The state lives in this process (striped locks, shared by the gateway's
 * threads), like Kong's "local" policy: with N gateway processes a client can
 * reach N times the limit. Keys idle long enough to be back at a full burst
 * hold no information and are dropped as the table grows.
 * Owns: rl_t and its keys (rl_free). Thread-safe. */
#ifndef ECOM_RATELIMIT_H
#define ECOM_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct rl_limit {
    int count;         /* requests per period; 0 = no limit */
    int64_t period_ms;
    int burst;         /* extra requests allowed at once */
} rl_limit_t;

typedef struct rl_result {
    bool allowed;
    int remaining;           /* requests still allowed right now */
    int64_t retry_after_ms;  /* when refused: wait this long */
    int64_t reset_ms;        /* until the full burst is available again */
} rl_result_t;

typedef struct rl rl_t;

rl_t *rl_new(size_t max_keys);
void rl_free(rl_t *rl);
/* One request for key at now_ms under lim. */
void rl_take(rl_t *rl, const char *key, const rl_limit_t *lim, int64_t now_ms, rl_result_t *out);
/* Keys held (for tests and metrics). */
size_t rl_keys(rl_t *rl);

#endif
