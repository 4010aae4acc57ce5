/* services/payment/provider.c: see provider.h. */
#include "services/payment/provider.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/recent.h"
#include "core/uuid.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the simulator answered for a key (approvals and declines only). */
typedef struct remembered {
    provider_outcome_t outcome;
    char ref[PROVIDER_REF_MAX];
    const char *reason; /* static text */
} remembered_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static recent_t keys = RECENT_INIT(PROVIDER_KEYS_MAX, sizeof(remembered_t)); /* idempotency key -> answer */

static _Atomic int64_t latency_ms = 2;
static _Atomic uint32_t failure_ppm; /* parts per million */
static _Atomic uint64_t n_calls, n_charges, n_declines, n_failures, n_replays, n_widest;

void payment_provider_set_latency_ms(int64_t ms)
{
    atomic_store(&latency_ms, ms < 0 ? 0 : ms);
}

void payment_provider_set_failure_rate(double percent)
{
    if (!(percent > 0))
        percent = 0;
    if (percent > 100)
        percent = 100;
    atomic_store(&failure_ppm, (uint32_t)(percent * 10000.0 + 0.5));
}

static bool dice_fails(void)
{
    uint32_t ppm = atomic_load(&failure_ppm);
    if (ppm == 0)
        return false;
    uint32_t r;
    random_fast_bytes(&r, sizeof r);
    return r % 1000000u < ppm;
}

/* The simulator's rules for a definitive decline; NULL when it approves. */
static const char *decline_reason(int64_t amount, const char *method)
{
    if (amount > PROVIDER_LIMIT)
        return "amount exceeds the provider limit";
    if (strcmp(method, "card_declined") == 0)
        return "card declined by the issuer";
    if (strcmp(method, "insufficient_funds") == 0)
        return "insufficient funds";
    return NULL;
}

/* Looks key up; when found copies the answer into out. Called with mu held. */
static bool recall(const char *key, provider_answer_t *out)
{
    remembered_t r;
    if (!recent_get(&keys, key, &r))
        return false;
    out->outcome = r.outcome;
    snprintf(out->ref, sizeof out->ref, "%s", r.ref);
    snprintf(out->reason, sizeof out->reason, "%s", r.reason ? r.reason : "");
    return true;
}

/* Called with mu held. */
static void remember(const char *key, const provider_answer_t *a, const char *reason)
{
    remembered_t r = {.outcome = a->outcome, .reason = reason};
    snprintf(r.ref, sizeof r.ref, "%s", a->ref);
    recent_put(&keys, key, &r);
}

/* The answer to one call once its latency has passed. */
static void answer(const provider_call_t *c, provider_answer_t *out)
{
    memset(out, 0, sizeof *out);
    atomic_fetch_add(&n_calls, 1);
    if (dice_fails()) {
        atomic_fetch_add(&n_failures, 1);
        out->outcome = PROVIDER_UNAVAILABLE;
        snprintf(out->reason, sizeof out->reason, "provider unavailable (simulated failure)");
        return;
    }
    pthread_mutex_lock(&mu);
    if (recall(c->idem_key, out)) {
        pthread_mutex_unlock(&mu);
        atomic_fetch_add(&n_replays, 1);
        return;
    }
    const char *reason = decline_reason(c->amount, c->method);
    if (reason) {
        out->outcome = PROVIDER_DECLINED;
        snprintf(out->reason, sizeof out->reason, "%s", reason);
        atomic_fetch_add(&n_declines, 1);
    } else {
        out->outcome = PROVIDER_APPROVED;
        memcpy(out->ref, "sim_", 4);
        random_fast_hex(out->ref + 4, 12);
        atomic_fetch_add(&n_charges, 1);
    }
    remember(c->idem_key, out, reason);
    pthread_mutex_unlock(&mu);
}

void payment_provider_charge(const char *idem_key, int64_t amount, const char *currency, const char *method,
                             provider_answer_t *out)
{
    provider_call_t c = {.idem_key = idem_key, .amount = amount, .currency = currency, .method = method};
    payment_provider_charge_many(&c, 1, out);
}

void payment_provider_charge_many(const provider_call_t *calls, size_t n, provider_answer_t *out)
{
    if (n == 0)
        return;
    uint64_t widest = atomic_load(&n_widest);
    while (n > widest && !atomic_compare_exchange_weak(&n_widest, &widest, n))
        ;
    clock_sleep_ms(atomic_load(&latency_ms));
    for (size_t i = 0; i < n; i++)
        answer(&calls[i], &out[i]);
}

void payment_provider_stats(payment_provider_stats_t *out)
{
    out->calls = atomic_load(&n_calls);
    out->charges = atomic_load(&n_charges);
    out->declines = atomic_load(&n_declines);
    out->failures = atomic_load(&n_failures);
    out->replays = atomic_load(&n_replays);
    out->widest = atomic_load(&n_widest);
}

void payment_provider_reset(void)
{
    pthread_mutex_lock(&mu);
    recent_clear(&keys);
    pthread_mutex_unlock(&mu);
    atomic_store(&n_calls, 0);
    atomic_store(&n_charges, 0);
    atomic_store(&n_declines, 0);
    atomic_store(&n_failures, 0);
    atomic_store(&n_replays, 0);
    atomic_store(&n_widest, 0);
}
