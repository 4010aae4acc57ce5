/* http-gateway/chaos.h: fault injection decisions (gateway.md §1.12), made at the
 * upstream-call layer: select a request with `probability`, add `delay_ms`, then
 * with `error_rate` abort it with a synthetic upstream error (default 503), under
 * a cap on concurrently active faults (Envoy's max_active_faults).
 * Randomness is a seeded xoshiro256** generator whose state the caller keeps, one
 * per thread, so a fixed seed gives the same decisions every run.
 * Owns nothing on the heap: chaos_t and chaos_rng_t are embedded by the caller.
 * chaos_t is thread-safe (an atomic counter); a chaos_rng_t belongs to one thread.
 * Never applied to /health or /ready: the caller does not ask for those. */
#ifndef ECOM_CHAOS_H
#define ECOM_CHAOS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHAOS_DEFAULT_STATUS 503
#define CHAOS_HEADER "x-chaos-injected"

typedef struct chaos_params {
    double probability; /* [0, 1]; 0 = chaos off for the route */
    int64_t delay_ms;   /* added to a selected request; >= 0 */
    double error_rate;  /* [0, 1]: of the selected requests, how many abort */
    int error_status;   /* status of an abort; 0 = 503; else 400..599 */
} chaos_params_t;

/* -1 with the problems ("; "-separated) in err when out of range (NaN included). */
int chaos_params_validate(const chaos_params_t *p, char *err, size_t cap)
    __attribute__((warn_unused_result));

typedef struct chaos_rng {
    uint64_t s[4];
} chaos_rng_t;

/* Seeds one thread's generator: seed 0 draws a seed from the OS CSPRNG; stream
 * (e.g. the worker thread index) gives each thread its own sequence. */
void chaos_rng_seed(chaos_rng_t *r, uint64_t seed, uint64_t stream);
uint64_t chaos_rng_next(chaos_rng_t *r);
double chaos_rng_double(chaos_rng_t *r); /* uniform in [0, 1) */

typedef struct chaos {
    atomic_int active; /* faults in progress */
    int max_active;    /* <= 0: no cap */
} chaos_t;

void chaos_init(chaos_t *c, int max_active);

typedef struct chaos_decision {
    bool delay; /* wait delay_ms before calling upstream */
    int64_t delay_ms;
    bool abort; /* do not call upstream; answer status as if upstream had */
    int status;
    bool holds_slot; /* counted in active: pass to chaos_done when the fault is over */
} chaos_decision_t;

/* Decides for one request. Every call draws exactly two numbers from rng, so the
 * sequence of decisions depends on the seed alone. When a fault is chosen but the
 * cap is reached, the request gets no fault. */
void chaos_decide(chaos_t *c, chaos_rng_t *rng, const chaos_params_t *p, chaos_decision_t *out);
/* Ends a fault (after the delay and/or the synthetic reply); no-op without a slot. */
void chaos_done(chaos_t *c, chaos_decision_t *d);
/* Value for the x-chaos-injected header: "delay", "abort", "delay, abort", or
 * NULL when nothing was injected. Static string. */
const char *chaos_header_value(const chaos_decision_t *d);

#endif
