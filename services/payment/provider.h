/* services/payment/provider.h: the payment provider adapter, and the
 * development simulator behind it.
 *
 * A charge authorises and captures an amount in one call. The call carries an
 * idempotency key (the payment id): a provider answers a repeated key as it
 * answered the first time and never charges twice, which is what makes a
 * retry after a crash between the call and our commit safe. The simulator
 * keeps that promise for the most recent PROVIDER_KEYS_MAX keys, sleeps for a
 * configurable latency and fails a configurable share of calls transiently
 * (chaos); it declines, for good, amounts above PROVIDER_LIMIT and the test
 * methods "card_declined" and "insufficient_funds".
 * Owns: the simulator's key table and counters (process-wide, thread-safe). */
#ifndef ECOM_PAYMENT_PROVIDER_H
#define ECOM_PAYMENT_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#define PROVIDER_LIMIT 100000000 /* minor units: 1,000,000.00 */
#define PROVIDER_KEYS_MAX 65536
#define PROVIDER_REF_MAX 40
#define PROVIDER_REASON_MAX 120

typedef enum {
    PROVIDER_APPROVED,    /* captured; ref set */
    PROVIDER_DECLINED,    /* definitive; reason set */
    PROVIDER_UNAVAILABLE, /* transient (timeout, 5xx): try again later; reason set */
} provider_outcome_t;

typedef struct provider_answer {
    provider_outcome_t outcome;
    char ref[PROVIDER_REF_MAX];
    char reason[PROVIDER_REASON_MAX];
} provider_answer_t;

/* Charges amount (minor units) of currency with method, once per idem_key.
 * Blocks for the simulated latency. */
void payment_provider_charge(const char *idem_key, int64_t amount, const char *currency, const char *method,
                             provider_answer_t *out);

typedef struct provider_call {
    const char *idem_key;
    int64_t amount;
    const char *currency;
    const char *method;
} provider_call_t;

/* Makes n charges at once, as n calls in flight side by side: each is
 * answered into out[i] as payment_provider_charge answers it, and the
 * simulated latency is waited for once. */
void payment_provider_charge_many(const provider_call_t *calls, size_t n, provider_answer_t *out);

/* Simulator settings; safe to change while charges run. */
void payment_provider_set_latency_ms(int64_t ms);
/* Share of calls that fail transiently, in percent (0..100). */
void payment_provider_set_failure_rate(double percent);

typedef struct payment_provider_stats {
    uint64_t calls;    /* every call that reached the provider */
    uint64_t charges;  /* approvals that moved money (replays excluded) */
    uint64_t declines; /* definitive declines (replays excluded) */
    uint64_t failures; /* transient failures */
    uint64_t replays;  /* calls answered from the idempotency table */
    uint64_t widest;   /* the most calls one latency covered (payment_provider_charge_many's n) */
} payment_provider_stats_t;

void payment_provider_stats(payment_provider_stats_t *out);
/* Tests: forgets every key and zeroes the counters. */
void payment_provider_reset(void);

#endif
