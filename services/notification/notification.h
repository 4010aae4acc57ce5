/* services/notification/notification.h: the notification service
 * (`ecom service notification`).
 *
 * It consumes the "auth" and "payment" topics, renders one message (a title
 * and a text) for auth.otp.requested, payment.succeeded, payment.failed and
 * payment.refunded, ignores every other type of those topics, and delivers
 * the message through each configured channel: `log` (a log line, and a JSON
 * Lines record in NOTIFY_SINK_FILE when set), `webhook` (an HMAC-signed HTTP
 * POST) and `smtp` (a mail through an SMTP relay). The webhook and smtp
 * channels each sit behind a circuit breaker.
 *
 * The recipient (`subject`) is the payload's "subject" when present (the OTP
 * command always carries it; payment events carry it when the payment command
 * did), else the tenant.
 *
 * Each delivery is recorded once per (message id, channel) in
 * notification.deliveries, or a memory table, in the transaction that records
 * the message in the inbox; a channel already recorded for a message is not
 * delivered again. Sending is not transactional: a crash after a send and
 * before the commit sends that channel again on redelivery, and a webhook
 * whose kept connection closed before any answer came is sent once more on a
 * new one, though the receiver may have taken it before closing (webhook
 * receivers can drop such copies by their X-Ecom-Message-Id header). A delivery made in a
 * transaction that was then rolled back (the runtime retries a batch message
 * by message when one of its messages fails; a later channel may be failing
 * or put off for as long as an outage lasts) is recorded, not sent, on the
 * next attempt: a process remembers its recent sends, and with PostgreSQL a
 * handler call that fails first writes what its sends did to
 * notification.sent_marks on a connection of its own, which later attempts
 * read, after a restart or a takeover too.
 * Owns: the memory table (MEM_SLOT_NOTIFICATION), the channel settings and
 * breakers, the memory of recent sends and the sent marks' connection. */
#ifndef ECOM_NOTIFICATION_H
#define ECOM_NOTIFICATION_H

#include "core/breaker.h"
#include "services/runtime.h"

#include <stddef.h>
#include <stdint.h>

typedef struct notification_config {
    const char *channels;       /* comma list of log, webhook, smtp; NULL or "" = "log" */
    const char *sink_file;      /* log channel's JSON Lines file; NULL or "" = none */
    const char *webhook_url;    /* http://host[:port]/path */
    const char *webhook_secret; /* HMAC-SHA256 key, required with the webhook channel */
    const char *smtp_host;      /* required with the smtp channel */
    int smtp_port;              /* 0 = 25 */
    const char *smtp_from;      /* NULL or "" = "ecom@localhost" */
    int64_t timeout_ms;         /* connect and reply timeout; 0 = 5000 */
    breaker_params_t breaker;   /* webhook and smtp breakers; zero fields = the defaults below */
} notification_config_t;

#define NOTIFY_BREAKER_WINDOW_MS 30000
#define NOTIFY_BREAKER_MIN_CALLS 5
#define NOTIFY_BREAKER_FAILURE_RATE 50.0
#define NOTIFY_BREAKER_OPEN_MS 10000
#define NOTIFY_BREAKER_HALF_OPEN_CALLS 2

const svc_def_t *notification_service(void);

/* Checks and applies the configuration (copied), and starts fresh breakers.
 * Call before the service runs (not while handlers run). On failure returns
 * -1 and err lists every problem, "; "-separated, and nothing changes.
 * Without a call, the log channel alone runs, without a sink file. */
int notification_configure(const notification_config_t *cfg, char *err, size_t cap) __attribute__((warn_unused_result));
/* Forgets what this process remembers of its sends and closes the sent
 * marks' connection, as a restart would (tests; shutdown). */
void notification_forget_sends(void);

typedef struct notification_delivery {
    char message_id[UUID_STR_LEN];
    char channel[16];
    char *tenant, *subject, *type, *status, *detail; /* status: sent | skipped | failed */
    int64_t created_ms;
} notification_delivery_t;

/* Deliveries of a tenant, newest first; subject NULL = every subject; at most
 * limit. *out owned (notification_deliveries_free). In the caller's open
 * transaction when it has one. */
int notification_list(db_t *db, const char *tenant, const char *subject, size_t limit, notification_delivery_t **out,
                      size_t *n) __attribute__((warn_unused_result));
void notification_deliveries_free(notification_delivery_t *d, size_t n);

/* ---- pages of one subject's deliveries (GET /api/v1/notifications/deliveries) ----
 * Newest first: ordered by (created time, message id, channel), each descending,
 * which is a total order (message id and channel are the key). A page continues
 * strictly after a key, so rows recorded between two page reads never make a
 * page repeat or skip a row that was already there. */

typedef struct notification_key {
    int64_t created_us; /* created time in µs since the epoch (memory rows: their ms * 1000) */
    char message_id[UUID_STR_LEN];
    char channel[16];
} notification_key_t;

typedef struct notification_page_row {
    notification_delivery_t d; /* created_ms = key.created_us / 1000 */
    notification_key_t key;
} notification_page_row_t;

/* The page statements, for callers that run them themselves (the gateway's
 * asynchronous reads): text parameters $1 tenant, $2 subject, $3 limit, and in
 * the _after one $4 created µs, $5 message id, $6 channel of the key. Columns:
 * message_id, channel, subject, type, status, detail (NULL as ''), created µs. */
extern const char notification_sql_page[];
extern const char notification_sql_page_after[];

/* At most limit deliveries of (tenant, subject) in page order, after *after
 * (NULL: from the newest). *out owned (notification_page_free). In the caller's
 * open transaction when it has one. */
int notification_page(db_t *db, const char *tenant, const char *subject, const notification_key_t *after, size_t limit,
                      notification_page_row_t **out, size_t *n) __attribute__((warn_unused_result));
void notification_page_free(notification_page_row_t *rows, size_t n);
/* Row i of a result of the page statements into *row (strings owned; free the
 * array with notification_page_free). */
void notification_page_row_from(const PGresult *res, int i, notification_page_row_t *row);
/* strcmp-like order of keys: < 0 when a comes first in a page (is newer). */
int notification_key_cmp(const notification_key_t *a, const notification_key_t *b);

#endif
