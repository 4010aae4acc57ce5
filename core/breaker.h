/* core/breaker.h: a per-route circuit breaker with resilience4j semantics
 * (gateway.md §1.3): a time-based sliding window of per-second buckets, failure-
 * rate and slow-call-rate tripping after a minimum number of calls, OPEN for a
 * fixed duration, then HALF_OPEN with a fixed number of trial calls decided when
 * all of them have finished, plus the operator states FORCED_OPEN and DISABLED.
 * Owns: breaker_t (breaker_free). Borrows core/clock.h (monotonic ms, so tests
 * drive it with clock_fake_set_ms). Every function is thread-safe. */
#ifndef ECOM_BREAKER_H
#define ECOM_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Zero in any field means its default. Rates are percentages in (0, 100]; a value
 * <= 1.0 is read as a fraction (the original runbook's 0.5 means 50 %). */
typedef struct breaker_params {
    double failure_rate_threshold;   /* default 50 */
    double slow_call_rate_threshold; /* default 100 */
    int64_t slow_call_duration_ms;   /* a call longer than this is slow; default 60000 */
    int64_t window_ms;               /* sliding window, whole seconds; default 60000, max 3600000 */
    int minimum_calls;               /* calls in the window before any verdict; default 20 */
    int64_t open_duration_ms;        /* OPEN before HALF_OPEN; default 60000 */
    int half_open_max_calls;         /* trial calls in HALF_OPEN; default 10 */
    int64_t max_half_open_wait_ms;   /* HALF_OPEN longer than this goes OPEN; default 60000 */
} breaker_params_t;

#define BREAKER_DEFAULT_FAILURE_RATE 50.0
#define BREAKER_DEFAULT_SLOW_RATE 100.0
#define BREAKER_DEFAULT_SLOW_MS 60000
#define BREAKER_DEFAULT_WINDOW_MS 60000
#define BREAKER_MAX_WINDOW_MS 3600000
#define BREAKER_DEFAULT_MIN_CALLS 20
#define BREAKER_DEFAULT_OPEN_MS 60000
#define BREAKER_DEFAULT_HALF_OPEN_CALLS 10
#define BREAKER_DEFAULT_HALF_OPEN_WAIT_MS 60000

typedef enum {
    BREAKER_CLOSED,
    BREAKER_OPEN,
    BREAKER_HALF_OPEN,
    BREAKER_FORCED_OPEN,
    BREAKER_DISABLED,
} breaker_state_t;

/* FAILURE: upstream 5xx, connect error, timeout. IGNORED: 4xx, or a call abandoned
 * before it had an outcome; it is not counted (and in HALF_OPEN frees its trial). */
typedef enum { BREAKER_SUCCESS, BREAKER_FAILURE, BREAKER_IGNORED } breaker_outcome_t;

/* Filled by breaker_acquire; pass it back to breaker_record. */
typedef struct breaker_permit {
    uint64_t epoch;         /* state generation the call was admitted in */
    bool trial;             /* a HALF_OPEN trial call */
    int64_t retry_after_ms; /* when rejected: how long until a call may be admitted (>= 1) */
} breaker_permit_t;

typedef struct breaker_stats {
    breaker_state_t state;
    uint32_t calls; /* in the window (CLOSED) or finished trials (HALF_OPEN) */
    uint32_t failures;
    uint32_t slow;
    uint64_t rejected; /* since creation */
} breaker_stats_t;

typedef struct breaker breaker_t;

/* A percentage from either form: v <= 1.0 is a fraction (0.5 -> 50), else v. */
double breaker_percent(double v);
/* Checks raw params (before defaults): no negative or NaN value, rates within
 * (0, 100] once converted, window at most BREAKER_MAX_WINDOW_MS. On failure returns
 * -1 and writes every problem, "; "-separated, into err. */
int breaker_params_validate(const breaker_params_t *p, char *err, size_t cap)
    __attribute__((warn_unused_result));
/* Defaults filled in and fractions converted to percent. */
void breaker_params_normalize(const breaker_params_t *in, breaker_params_t *out);

/* A CLOSED breaker (owned), or NULL when p does not validate. */
breaker_t *breaker_new(const breaker_params_t *p);
void breaker_free(breaker_t *b);

/* True when the call may go upstream; then record its outcome exactly once with
 * breaker_record. False when rejected (OPEN, FORCED_OPEN, or HALF_OPEN with every
 * trial taken): permit->retry_after_ms says for how long. Rejections are counted in
 * stats only, never in the window. */
bool breaker_acquire(breaker_t *b, breaker_permit_t *permit) __attribute__((warn_unused_result));
void breaker_record(breaker_t *b, const breaker_permit_t *permit, breaker_outcome_t outcome,
                    int64_t duration_ms);

/* The current state, after any time-driven transition (OPEN -> HALF_OPEN when the
 * open duration is over, HALF_OPEN -> OPEN past the maximum half-open wait). */
breaker_state_t breaker_state(breaker_t *b);
/* Operator transition to any state; CLOSED starts a fresh window, OPEN starts a
 * fresh open duration. In-flight permits of the previous state are then ignored. */
void breaker_transition(breaker_t *b, breaker_state_t to);
void breaker_stats(breaker_t *b, breaker_stats_t *out);
const char *breaker_state_name(breaker_state_t s);

#endif
