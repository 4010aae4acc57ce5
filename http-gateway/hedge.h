/* http-gateway/hedge.h: the pure parts of request hedging (gateway.md §1.4): the
 * route's hedge parameters, the hedge budget (gRPC retry throttling: max_tokens 10,
 * a failure costs 1, a success earns token_ratio 0.1, no hedge while tokens <=
 * max/2), and the adaptive hedge delay at the p95 of the route's recent latencies.
 * Owns: hedge_tracker_t (hedge_tracker_free). hedge_budget_t is embedded by the
 * caller. Budget and tracker are thread-safe. Sending, cancelling and the
 * hedges_sent / hedge_wins metrics belong to the network layer. */
#ifndef ECOM_HEDGE_H
#define ECOM_HEDGE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HEDGE_MAX_ATTEMPTS 5 /* gRPC client cap, primary included */
#define HEDGE_DEFAULT_ATTEMPTS 2
#define HEDGE_DEFAULT_MAX_TOKENS 10
#define HEDGE_DEFAULT_TOKEN_RATIO 0.1
#define HEDGE_RING 256       /* latencies kept for the p95 */
#define HEDGE_MIN_SAMPLES 20 /* fewer: no adaptive delay yet */

typedef struct hedge_params {
    bool enabled;
    int64_t delay_ms; /* fixed hedge delay; 0 = adaptive at the route's p95 */
    int max_attempts; /* primary included; 0 = HEDGE_DEFAULT_ATTEMPTS; at most 5 */
} hedge_params_t;

/* -1 with the problems ("; "-separated) in err when a value is out of range. */
int hedge_params_validate(const hedge_params_t *p, char *err, size_t cap)
    __attribute__((warn_unused_result));
int hedge_max_attempts(const hedge_params_t *p); /* with the default applied */

/* Token bucket in thousandths of a token (token_ratio has three decimals, as in gRPC). */
typedef struct hedge_budget {
    _Atomic int64_t milli;
    int64_t max_milli;
    int64_t ratio_milli;
} hedge_budget_t;

/* max_tokens <= 0 and token_ratio <= 0 take the defaults. Starts full. */
void hedge_budget_init(hedge_budget_t *b, int max_tokens, double token_ratio);
/* True while tokens > max_tokens / 2. */
bool hedge_budget_allows(const hedge_budget_t *b);
/* Every finished attempt: success (non-5xx) earns token_ratio, failure costs 1. */
void hedge_budget_record(hedge_budget_t *b, bool success);
double hedge_budget_tokens(const hedge_budget_t *b);

typedef struct hedge_tracker hedge_tracker_t;

hedge_tracker_t *hedge_tracker_new(void);
void hedge_tracker_free(hedge_tracker_t *t);
/* One upstream latency (the last HEDGE_RING are kept). */
void hedge_tracker_observe(hedge_tracker_t *t, int64_t latency_us);
/* Nearest-rank p95 of the kept latencies in µs; -1 below HEDGE_MIN_SAMPLES. */
int64_t hedge_tracker_p95_us(hedge_tracker_t *t);
/* The delay before the next hedge: p->delay_ms when fixed, else the p95 rounded up
 * to whole ms (at least 1); -1 when adaptive and not enough samples yet, meaning
 * "do not hedge". */
int64_t hedge_delay_ms(hedge_tracker_t *t, const hedge_params_t *p);

#endif
