/* services/payment/payment.h: the payment service (`ecom service payment`).
 *
 * The gateway writes a payment as `pending` together with a payment.requested
 * command (topic "payment", aggregate "payment:<id>"). This service locks the
 * payment, charges it through the provider adapter (services/payment/provider.h)
 * behind a process-wide circuit breaker, and records `succeeded` (captured =
 * amount) or `failed` with its reason, appending payment.succeeded or
 * payment.failed to the outbox in the same transaction. A refund command is
 * applied by one conditional update that never lets refunded exceed captured,
 * and is recorded as a succeeded or rejected refund, announced by
 * payment.refunded or payment.refund.rejected.
 *
 * State machine: pending -> succeeded | failed; nothing leaves a final state.
 * A late or repeated command for a final payment is acknowledged and ignored.
 * Provider outcomes: approved or declined are final; a transient failure is
 * retried (SVC_RETRY, counted as an attempt) while the breaker is closed, and
 * deferred (SVC_DEFER, not counted) while it is open or half-open, so an
 * outage makes payments wait rather than exhaust their attempts.
 *
 * Tables: payment.payments and payment.refunds (migrations/payment), or memory
 * tables in MEM_SLOT_PAYMENT with undo on rollback.
 * Owns: the memory tables, the provider breaker and a short memory of recent
 * provider answers (so a batch replayed after a rollback does not call the
 * provider again). */
#ifndef ECOM_PAYMENT_H
#define ECOM_PAYMENT_H

#include "bus/envelope.h"
#include "core/breaker.h"
#include "services/runtime.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAYMENT_ORDER_ID_MAX 128 /* bytes, without the NUL */
#define PAYMENT_METHOD_MAX 32
#define PAYMENT_REASON_MAX 200
#define PAYMENT_REF_MAX 64

typedef struct payment {
    char id[UUID_STR_LEN];
    char tenant[ENV_NAME_MAX + 1];
    char order_id[PAYMENT_ORDER_ID_MAX + 1];
    int64_t amount;   /* minor units, > 0 */
    char currency[4]; /* ISO 4217 */
    char method[PAYMENT_METHOD_MAX + 1];
    char status[16]; /* "pending" | "succeeded" | "failed" */
    int64_t captured;
    int64_t refunded;                            /* 0 <= refunded <= captured */
    char failure_reason[PAYMENT_REASON_MAX + 1]; /* "" when none */
    char provider_ref[PAYMENT_REF_MAX + 1];      /* "" when none */
    int64_t created_ms, updated_ms;              /* Unix ms */
} payment_t;

typedef struct payment_config {
    int64_t provider_latency_ms;  /* simulator latency per call */
    double provider_failure_rate; /* simulator transient failures, percent */
    breaker_params_t breaker;     /* zero fields: the payment defaults below */
} payment_config_t;

/* Breaker defaults for the provider (fields left zero in payment_config_t). */
#define PAYMENT_BREAKER_WINDOW_MS 10000
#define PAYMENT_BREAKER_MIN_CALLS 5
#define PAYMENT_BREAKER_FAILURE_RATE 50.0
#define PAYMENT_BREAKER_OPEN_MS 5000
#define PAYMENT_BREAKER_HALF_OPEN_CALLS 3

const svc_def_t *payment_service(void);

/* Applies the configuration and starts a fresh provider breaker. Call before
 * the service runs (not while handlers run). -1 and err when the breaker
 * parameters are invalid. Without a call, the defaults apply. */
int payment_configure(const payment_config_t *cfg, char *err, size_t cap) __attribute__((warn_unused_result));
/* The provider breaker's state and counters (metrics, tests). */
void payment_breaker_stats(breaker_stats_t *out);

/* Memory store: inserts a payment inside the open transaction tx (undone on
 * rollback). Refuses (-1) an invalid row (bad id, amount <= 0, unknown status,
 * refunded outside 0..captured, over-long text) or an id that exists. */
int payment_mem_insert(db_t *tx, const payment_t *p) __attribute__((warn_unused_result));
/* Reads one payment of a tenant; PostgreSQL (blocking) or memory; in the
 * caller's open transaction when it has one. 0 found, 1 not found (or id not
 * a UUID), -1 storage error. */
int payment_get(db_t *db, const char *tenant, const char *id, payment_t *out) __attribute__((warn_unused_result));

typedef struct payment_refund_totals {
    uint64_t succeeded;    /* refunds applied */
    int64_t succeeded_sum; /* their amounts */
    uint64_t rejected;     /* refunds refused (recorded with a reason) */
} payment_refund_totals_t;
/* Refund totals of one payment (tools, tests); in the caller's open
 * transaction when it has one. 0 or -1. */
int payment_refund_totals(db_t *db, const char *tenant, const char *payment_id, payment_refund_totals_t *out)
    __attribute__((warn_unused_result));

/* A payment's decided refunds (applied or refused; a refund whose command
 * the service has not applied yet has no row), by id, so in the order they
 * were asked for; the first PAYMENT_REFUNDS_SHOWN of them. */
#define PAYMENT_REFUNDS_SHOWN 100
typedef struct payment_refund {
    char id[UUID_STR_LEN];
    int64_t amount;
    bool succeeded;   /* else refused */
    char reason[256]; /* why it was refused; "" when applied */
    int64_t created_ms;
} payment_refund_t;
/* Into out (room for PAYMENT_REFUNDS_SHOWN); PostgreSQL (blocking) or
 * memory, in the caller's open transaction when it has one. 0 or -1. */
int payment_refunds(db_t *db, const char *tenant, const char *payment_id, payment_refund_t *out, size_t *n)
    __attribute__((warn_unused_result));
/* A refund from row of r, its columns from col on: id, amount, whether it
 * succeeded (boolean), reason ('' when none), created_at in ms (for
 * readers with their own statement: the gateway). */
void payment_refund_from_row(PGresult *r, int row, int col, payment_refund_t *out);

/* Minor-unit digits of an ISO 4217 currency code (e.g. 2 for EUR, 0 for JPY),
 * or -1 when the code is not an active currency. */
int payment_currency_exponent(const char *code);

#endif
