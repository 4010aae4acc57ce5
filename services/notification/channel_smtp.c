/* services/notification/channel_smtp.c: the `smtp` channel: a minimal SMTP
 * client (RFC 5321) for a relay that accepts mail without authentication (a
 * local MTA or a smarthost on a trusted network): greeting, EHLO (HELO when
 * EHLO is refused), MAIL FROM, RCPT TO, DATA with a plain-text message
 * (quoted-printable: 7-bit, short CRLF lines, no line beginning with a dot),
 * QUIT; every reply bounded by the deadline.
 * No STARTTLS or AUTH. A 4xx reply or a network failure is transient. A
 * 5xx reply refuses the mail for good only where it answers for this mail:
 * to RCPT TO (no such recipient; but not a 5.7.x policy refusal, "relay
 * access denied") or to the message itself; at the greeting, EHLO/HELO,
 * MAIL FROM or DATA, or with 5.7.x at RCPT TO, it is the relay refusing
 * every mail (no relaying for us, authentication required, a wrong host),
 * a failure that counts against the channel's breaker and is retried, never
 * a delivery dropped for good. */
#include "services/notification/channel.h"

#include "core/clock.h"

#include <event2/buffer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_SMTP 1024 /* longest reply line kept */

typedef struct conn {
    int fd;
    int64_t deadline;
    char buf[4096];
    size_t len;
} conn_t;

bool notification_smtp_address_ok(const char *s)
{
    const char *at = strrchr(s, '@');
    if (!at || at == s || !at[1] || strlen(s) > 254)
        return false;
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c <= 0x20 || *c == 0x7f || *c == '<' || *c == '>' || *c == '(' || *c == ')' || *c == ',' ||
            *c == ';' || *c == '\\' || *c == '"')
            return false;
    return true;
}

/* Reads one reply (all its lines); returns the code, or -1 on a network
 * failure or a malformed reply. text gets the last line's text. */
static int reply(conn_t *c, char *text, size_t cap)
{
    for (;;) {
        char *eol = memchr(c->buf, '\n', c->len);
        if (!eol) {
            if (c->len == sizeof c->buf)
                c->len = 0; /* an over-long line: drop what we have, keep reading */
            ssize_t r = notification_net_recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, c->deadline);
            if (r <= 0)
                return -1;
            c->len += (size_t)r;
            continue;
        }
        size_t ll = (size_t)(eol - c->buf) + 1;
        char line[LINE_MAX_SMTP];
        size_t keep = ll < sizeof line ? ll : sizeof line - 1;
        memcpy(line, c->buf, keep);
        line[keep] = '\0';
        memmove(c->buf, c->buf + ll, c->len - ll);
        c->len -= ll;
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
            line[2] > '9' || (line[3] != '\0' && line[3] != ' ' && line[3] != '-'))
            return -1;
        if (line[3] == '-')
            continue; /* a continuation line */
        snprintf(text, cap, "%s", line);
        return (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    }
}

static int command(conn_t *c, const char *cmd, char *text, size_t cap)
{
    if (notification_net_send(c->fd, cmd, strlen(cmd), c->deadline) != 0)
        return -1;
    return reply(c, text, cap);
}

void notification_smtp_body(struct evbuffer *b, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;
    for (const unsigned char *p = (const unsigned char *)text;; p++) {
        if (*p == '\r')
            continue;
        if (*p == '\n' || *p == '\0') {
            evbuffer_add(b, "\r\n", 2);
            col = 0;
            if (!*p)
                return;
            continue;
        }
        const unsigned char *next = p + 1;
        while (*next == '\r')
            next++;
        bool at_end = *next == '\n' || *next == '\0'; /* blanks there would be lost in transit */
        bool literal = (*p >= 33 && *p <= 126 && *p != '=') || ((*p == ' ' || *p == '\t') && !at_end);
        size_t n = literal ? 1 : 3;
        if (col + n > 75) { /* 75 and the soft break's "=" */
            evbuffer_add(b, "=\r\n", 3);
            col = 0;
        }
        if (col == 0 && *p == '.')
            literal = false, n = 3;
        char tok[3] = {(char)*p};
        if (!literal) {
            tok[0] = '=';
            tok[1] = hex[*p >> 4];
            tok[2] = hex[*p & 15];
        }
        evbuffer_add(b, tok, n);
        col += n;
    }
}

/* The message: headers, blank line, the quoted-printable body, final dot. */
static void build_data(struct evbuffer *b, const notify_msg_t *m, const smtp_target_t *t)
{
    char date[64];
    time_t now = (time_t)(clock_now_ms() / 1000);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    const char *domain = strrchr(t->from, '@');
    evbuffer_add_printf(
        b,
        "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s%s>\r\n"
        "X-Ecom-Message-Id: %s\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        t->from, m->subject, m->title, date, m->message_id, domain ? domain : "@ecom.invalid", m->message_id);
    notification_smtp_body(b, m->text);
    evbuffer_add(b, ".\r\n", 3);
}

notify_outcome_t notification_smtp_deliver(const notify_msg_t *m, const smtp_target_t *t, int64_t timeout_ms,
                                           char *detail, size_t cap)
{
    if (m->requested_channel[0] && strcmp(m->requested_channel, "email") != 0) {
        snprintf(detail, cap, "requested channel is %s", m->requested_channel);
        return NOTIFY_SKIPPED;
    }
    if (!notification_smtp_address_ok(m->subject)) {
        snprintf(detail, cap, "subject is not an e-mail address");
        return NOTIFY_SKIPPED;
    }
    conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(detail, cap, "smtp: out of memory");
        return NOTIFY_FAILED;
    }
    c->deadline = clock_mono_ms() + timeout_ms;
    char err[160], text[LINE_MAX_SMTP];
    const char *step = "connect";
    int code = -1;
    c->fd = notification_net_connect(t->host, t->port, c->deadline, err, sizeof err);
    if (c->fd < 0) {
        snprintf(detail, cap, "smtp %s:%d: %s", t->host, t->port, err);
        free(c);
        return NOTIFY_FAILED;
    }
    char host[256] = "localhost";
    if (gethostname(host, sizeof host - 1) != 0 || !host[0] || strpbrk(host, " \r\n"))
        snprintf(host, sizeof host, "localhost");
    char cmd[600];
    struct evbuffer *data = NULL;
    step = "greeting";
    if ((code = reply(c, text, sizeof text)) != 220)
        goto fail;
    step = "EHLO";
    snprintf(cmd, sizeof cmd, "EHLO %s\r\n", host);
    code = command(c, cmd, text, sizeof text);
    if (code >= 500) {
        step = "HELO";
        snprintf(cmd, sizeof cmd, "HELO %s\r\n", host);
        code = command(c, cmd, text, sizeof text);
    }
    if (code != 250)
        goto fail;
    step = "MAIL FROM";
    snprintf(cmd, sizeof cmd, "MAIL FROM:<%s>\r\n", t->from);
    if ((code = command(c, cmd, text, sizeof text)) != 250)
        goto fail;
    step = "RCPT TO";
    snprintf(cmd, sizeof cmd, "RCPT TO:<%s>\r\n", m->subject);
    if ((code = command(c, cmd, text, sizeof text)) != 250 && code != 251)
        goto fail;
    step = "DATA";
    if ((code = command(c, "DATA\r\n", text, sizeof text)) != 354)
        goto fail;
    data = evbuffer_new();
    build_data(data, m, t);
    step = "message";
    if (notification_net_send(c->fd, evbuffer_pullup(data, -1), evbuffer_get_length(data), c->deadline) != 0) {
        code = -1;
        goto fail;
    }
    if ((code = reply(c, text, sizeof text)) != 250)
        goto fail;
    snprintf(detail, cap, "%s", text);
    /* the mail is accepted; QUIT's answer does not change that */
    char ignored[LINE_MAX_SMTP];
    if (command(c, "QUIT\r\n", ignored, sizeof ignored) != 221)
        snprintf(ignored, sizeof ignored, "no 221");
    evbuffer_free(data);
    close(c->fd);
    free(c);
    return NOTIFY_SENT;
fail:
    if (code < 0)
        snprintf(detail, cap, "smtp %s:%d: %s: no valid reply before the timeout", t->host, t->port, step);
    else
        snprintf(detail, cap, "smtp %s:%d: %s: %s", t->host, t->port, step, text);
    if (code >= 200) {
        /* leave politely; the answer does not matter */
        char bye[LINE_MAX_SMTP];
        if (command(c, "QUIT\r\n", bye, sizeof bye) < 0)
            bye[0] = '\0';
    }
    if (data)
        evbuffer_free(data);
    close(c->fd);
    free(c);
    /* RCPT TO's 5xx is about this recipient, unless its enhanced status
     * (RFC 3463) is 5.7.x, security or policy: "relay access denied" is how
     * most relays refuse mail from us to anyone */
    bool policy = strlen(text) >= 8 && strncmp(text + 4, "5.7.", 4) == 0;
    bool for_this_mail = (strcmp(step, "RCPT TO") == 0 && !policy) || strcmp(step, "message") == 0;
    return code >= 500 && for_this_mail ? NOTIFY_REFUSED : NOTIFY_FAILED;
}
