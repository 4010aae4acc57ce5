/* services/notification/channel.h: the delivery channels of the notification
 * service, and the blocking socket helpers the webhook and smtp channels share.
 * Private to services/notification/. Every function blocks the calling
 * (service) thread, bounded by the deadline it is given.
 * Owns: nothing; sockets are closed before a call returns. */
#ifndef ECOM_NOTIFICATION_CHANNEL_H
#define ECOM_NOTIFICATION_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* One rendered message for one recipient (all borrowed). */
typedef struct notify_msg {
    const char *message_id;
    const char *tenant;
    const char *subject; /* the recipient */
    const char *type;
    const char *title;
    const char *text;
    const char *requested_channel; /* the OTP command's "channel" ("email", "sms"), or "" */
    int64_t at_ms;                 /* Unix ms of the event */
} notify_msg_t;

typedef enum {
    NOTIFY_SENT,     /* delivered */
    NOTIFY_SKIPPED,  /* not for this channel (e.g. no e-mail address): recorded, never retried */
    NOTIFY_REFUSED,  /* refused for good (SMTP 5xx to RCPT TO, not 5.7.x, or to the message): recorded as failed,
                        never retried */
    NOTIFY_REJECTED, /* the receiver answered with a refusal or a redirect (HTTP 4xx but 408 and 429, 3xx): retried,
                        not a breaker failure */
    NOTIFY_FAILED,   /* transient (connect error, timeout, HTTP 5xx, 408, 429; SMTP 4xx, and 5xx before RCPT TO or
                        with 5.7.x there): retried, a breaker failure */
} notify_outcome_t;

/* "2026-01-02T03:04:05.678Z" into out (at least 32 bytes). */
void notification_format_time(int64_t ms, char *out, size_t cap);

/* log: a log line, and one JSON Lines record appended to sink_file (when not
 * NULL) with a single write(2) on an O_APPEND descriptor. */
notify_outcome_t notification_log_deliver(const notify_msg_t *m, const char *sink_file, char *detail, size_t cap);

typedef struct webhook_target {
    const char *host;
    int port;
    const char *path;
    const char *secret;
} webhook_target_t;
/* Parses "http://host[:port][/path]" into host (cap bytes), *port, path. 0 or -1. */
int notification_webhook_parse_url(const char *url, char *host, size_t hcap, int *port, char *path, size_t pcap)
    __attribute__((warn_unused_result));
/* POSTs the message as JSON with X-Ecom-Timestamp: <Unix seconds> and
 * X-Ecom-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">. */
notify_outcome_t notification_webhook_deliver(const notify_msg_t *m, const webhook_target_t *t, int64_t timeout_ms,
                                              char *detail, size_t cap);

/* Many webhooks side by side, from the calling thread: groups of messages,
 * each group's sent one at a time in its order (the next once the one
 * before it was answered), up to `conns` groups at once, each over its own
 * connection. next() gives group g's next message (its index in *item for
 * answered()) or NULL when the group is done or stopped; answered() gets
 * each outcome, as notification_webhook_deliver gives it, with its detail
 * and the ms the webhook took. Returns when every group is done. */
typedef struct webhook_many {
    const webhook_target_t *t;
    int64_t timeout_ms; /* per webhook, from its start */
    size_t ngroups;
    size_t conns;
    const notify_msg_t *(*next)(void *arg, size_t g, size_t *item);
    void (*answered)(void *arg, size_t g, size_t item, notify_outcome_t o, const char *detail, int64_t ms);
    void *arg;
} webhook_many_t;
void notification_webhook_deliver_many(const webhook_many_t *w);

struct evbuffer;

typedef struct smtp_target {
    const char *host;
    int port;
    const char *from;
} smtp_target_t;
/* Whether s can go between < > in MAIL FROM / RCPT TO (local@domain, no blanks or controls). */
bool notification_smtp_address_ok(const char *s);
/* Appends text as a mail body in quoted-printable (RFC 2045): 7-bit, CRLF
 * lines of at most 76 characters (soft breaks "=" CRLF), so any relay takes
 * it whether or not it offers 8BITMIME; a '.' that would begin a line is
 * encoded (=2E), which also stands for SMTP's dot-stuffing. Ends with CRLF. */
void notification_smtp_body(struct evbuffer *b, const char *text);
/* Sends the message to m->subject (an e-mail address) through the relay. */
notify_outcome_t notification_smtp_deliver(const notify_msg_t *m, const smtp_target_t *t, int64_t timeout_ms,
                                           char *detail, size_t cap);

/* Sockets: connect within the deadline (monotonic ms); fd or -1 with err. */
int notification_net_connect(const char *host, int port, int64_t deadline_ms, char *err, size_t cap);
/* Sends all n bytes before the deadline. 0 or -1. */
int notification_net_send(int fd, const void *buf, size_t n, int64_t deadline_ms) __attribute__((warn_unused_result));
/* Receives up to cap bytes before the deadline: > 0 bytes, 0 at EOF, -1 on error or timeout. */
ssize_t notification_net_recv(int fd, void *buf, size_t cap, int64_t deadline_ms);

#endif
