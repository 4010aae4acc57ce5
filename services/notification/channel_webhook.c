/* services/notification/channel_webhook.c: the `webhook` channel: one HTTP/1.1
 * POST of the message as JSON to an http:// endpoint, signed with
 * X-Ecom-Signature: sha256=<hex HMAC-SHA256 of the body under the secret>, and
 * carrying X-Ecom-Message-Id so a receiver can drop a redelivered copy.
 * Connections are kept open per delivering thread (below).
 * A 2xx answer delivers; anything else is retried by the caller. TLS is not
 * spoken here: put a TLS-terminating proxy in front of an https receiver. */
#include "services/notification/channel.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/json.h"

#include <event2/buffer.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define REPLY_MAX 16384 /* bytes of the answer read (the status line is what counts) */

int notification_webhook_parse_url(const char *url, char *host, size_t hcap, int *port, char *path, size_t pcap)
{
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    const char *h = url + 7;
    const char *end = h + strcspn(h, "/?#");
    const char *hend = end;
    const char *colon = NULL;
    if (*h == '[') { /* IPv6 literal */
        const char *close = memchr(h, ']', (size_t)(end - h));
        if (!close)
            return -1;
        if (close + 1 < end && close[1] == ':')
            colon = close + 1;
        else if (close + 1 != end)
            return -1;
        h++;
        hend = close;
    } else {
        colon = memchr(h, ':', (size_t)(end - h));
        if (colon)
            hend = colon;
    }
    if (memchr(h, '@', (size_t)(hend - h)))
        return -1; /* no credentials in the URL */
    size_t hl = (size_t)(hend - h);
    if (hl == 0 || hl >= hcap)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = 80;
    if (colon) {
        char *pe;
        long p = strtol(colon + 1, &pe, 10);
        if (pe != end || p < 1 || p > 65535)
            return -1;
        *port = (int)p;
    }
    const char *rest = *end == '#' ? "" : end;
    size_t rl = strcspn(rest, "#");
    if (rl + 2 > pcap)
        return -1;
    if (rl == 0 || rest[0] == '?') {
        path[0] = '/';
        memcpy(path + 1, rest, rl);
        path[rl + 1] = '\0';
    } else {
        memcpy(path, rest, rl);
        path[rl] = '\0';
    }
    for (const char *c = path; *c; c++)
        if ((unsigned char)*c <= 0x20 || *c == 0x7f)
            return -1;
    return 0;
}

static void sign(const char *secret, const void *body, size_t n, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), body, n, md, &mdlen);
    static const char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < mdlen && i < 32; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[64] = '\0';
}

/* ---- kept connections ----
 *
 * Each delivering thread keeps its last connection open (HTTP/1.1 keep-alive)
 * and sends the next webhook to the same receiver over it: a connection per
 * webhook cost a connect, an accept and a close on both sides per receipt.
 * The connection is closed when the thread ends (a key destructor), when the
 * receiver says `Connection: close` or frames its answer by closing, and on
 * any error. */

typedef struct kept {
    int fd;
    int port;
    char host[256];
} kept_t;

static pthread_key_t kept_key;
static pthread_once_t kept_once = PTHREAD_ONCE_INIT;

static void kept_free(void *p)
{
    kept_t *k = p;
    if (k->fd >= 0)
        close(k->fd);
    free(k);
}

static void kept_init(void)
{
    if (pthread_key_create(&kept_key, kept_free) != 0)
        abort();
}

/* This thread's kept connection to host:port, or -1 (any other one closed). */
static int kept_take(const char *host, int port)
{
    pthread_once(&kept_once, kept_init);
    kept_t *k = pthread_getspecific(kept_key);
    if (!k || k->fd < 0)
        return -1;
    int fd = k->fd;
    k->fd = -1;
    if (k->port == port && strcmp(k->host, host) == 0)
        return fd;
    close(fd);
    return -1;
}

static void kept_put(int fd, const char *host, int port)
{
    pthread_once(&kept_once, kept_init);
    kept_t *k = pthread_getspecific(kept_key);
    if (!k) {
        k = xcalloc(1, sizeof *k);
        k->fd = -1;
        if (pthread_setspecific(kept_key, k) != 0) {
            free(k);
            close(fd);
            return;
        }
    }
    if (k->fd >= 0)
        close(k->fd);
    k->fd = fd;
    k->port = port;
    snprintf(k->host, sizeof k->host, "%s", host);
}

/* Case-insensitive: does the header block (NUL-terminated after its last
 * CRLF) have a line "name: ..."? Its value is copied to val when given. */
static bool header_value(const char *headers, const char *name, char *val, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(headers, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) != 0 || h[nl] != ':')
            continue;
        const char *v = h + nl + 1;
        v += strspn(v, " \t");
        size_t vl = strcspn(v, "\r");
        if (val)
            snprintf(val, cap, "%.*s", (int)vl, v);
        return true;
    }
    return false;
}

/* Reads the answer: its status code (-1 with detail set when there is none)
 * and whether the connection may carry another request (the whole answer was
 * read, framed by Content-Length, and the receiver did not close it). */
static int read_answer(int fd, int64_t deadline, bool *reusable, bool *nothing, char *detail, size_t cap)
{
    *reusable = false;
    *nothing = true;
    char *buf = malloc(REPLY_MAX + 1);
    if (!buf)
        return -1;
    size_t len = 0, need = 0;
    int status = -1;
    const char *body = NULL;
    while (len < REPLY_MAX) {
        ssize_t r = notification_net_recv(fd, buf + len, REPLY_MAX - len, deadline);
        if (r < 0) {
            snprintf(detail, cap, "webhook: no answer before the timeout");
            goto out;
        }
        if (r > 0)
            *nothing = false;
        len += (size_t)r;
        buf[len] = '\0';
        if (!body && (body = strstr(buf, "\r\n\r\n")) != NULL) {
            body += 4;
            int code = 0;
            if (sscanf(buf, "HTTP/1.%*[01] %3d", &code) != 1 || code < 100 || code > 599) {
                snprintf(detail, cap, "webhook: malformed status line");
                goto out;
            }
            status = code;
            char v[64], *hend = (char *)body - 2, saved = *hend;
            *hend = '\0'; /* the header block alone: status line and headers, each ending in CRLF */
            bool close_asked = header_value(buf, "Connection", v, sizeof v) && strcasestr(v, "close");
            bool sized = header_value(buf, "Content-Length", v, sizeof v) && strspn(v, "0123456789") == strlen(v) &&
                         v[0] && strlen(v) < 8;
            *hend = saved;
            if (!sized || close_asked || strncmp(buf, "HTTP/1.0", 8) == 0)
                goto out; /* the status is what counts; the connection goes */
            need = (size_t)(body - buf) + strtoul(v, NULL, 10);
        }
        if (body && len >= need) {
            *reusable = len == need; /* nothing beyond the answer */
            goto out;
        }
        if (r == 0) {
            if (!body)
                snprintf(detail, cap, "webhook: connection closed before an answer");
            goto out;
        }
    }
out:
    free(buf);
    return status;
}

notify_outcome_t notification_webhook_deliver(const notify_msg_t *m, const webhook_target_t *t, int64_t timeout_ms,
                                              char *detail, size_t cap)
{
    char at[32];
    notification_format_time(m->at_ms, at, sizeof at);
    struct evbuffer *body = evbuffer_new();
    evbuffer_add_printf(body, "{\"messageId\":\"%s\",\"tenant\":", m->message_id);
    json_buf_str(body, m->tenant);
    evbuffer_add_printf(body, ",\"subject\":");
    json_buf_str(body, m->subject);
    evbuffer_add_printf(body, ",\"type\":");
    json_buf_str(body, m->type);
    evbuffer_add_printf(body, ",\"title\":");
    json_buf_str(body, m->title);
    evbuffer_add_printf(body, ",\"text\":");
    json_buf_str(body, m->text);
    evbuffer_add_printf(body, ",\"at\":\"%s\"}", at);
    size_t blen = evbuffer_get_length(body);
    char sig[65];
    sign(t->secret, evbuffer_pullup(body, -1), blen, sig);

    struct evbuffer *req = evbuffer_new();
    bool v6 = strchr(t->host, ':') != NULL;
    evbuffer_add_printf(req,
                        "POST %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: ecom-notification\r\n"
                        "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                        "X-Ecom-Signature: sha256=%s\r\nX-Ecom-Message-Id: %s\r\n\r\n",
                        t->path, v6 ? "[" : "", t->host, v6 ? "]" : "", t->port, blen, sig, m->message_id);
    evbuffer_add_buffer(req, body);
    evbuffer_free(body);

    notify_outcome_t out = NOTIFY_FAILED;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    size_t rlen = evbuffer_get_length(req);
    const void *bytes = evbuffer_pullup(req, -1);
    int status = -1;
    /* over the kept connection first; when it turns out closed by the
     * receiver meanwhile (nothing came back), once more on a new one */
    for (int attempt = 0; attempt < 2 && status < 0; attempt++) {
        int fd = attempt == 0 ? kept_take(t->host, t->port) : -1;
        bool reused = fd >= 0;
        if (!reused) {
            if (attempt == 0)
                attempt = 1; /* a new connection: no second try */
            char err[160];
            fd = notification_net_connect(t->host, t->port, deadline, err, sizeof err);
            if (fd < 0) {
                snprintf(detail, cap, "webhook %s:%d: %s", t->host, t->port, err);
                goto out;
            }
        }
        bool reusable = false, nothing = true;
        if (notification_net_send(fd, bytes, rlen, deadline) != 0) {
            snprintf(detail, cap, "webhook %s:%d: sending failed", t->host, t->port);
        } else {
            status = read_answer(fd, deadline, &reusable, &nothing, detail, cap);
        }
        if (status >= 0 && reusable)
            kept_put(fd, t->host, t->port);
        else
            close(fd);
        if (status < 0 && !(reused && nothing))
            goto out; /* a new connection failed, or the receiver answered something unusable */
    }
    if (status < 0)
        goto out;
    snprintf(detail, cap, "HTTP %d", status);
    if (status >= 200 && status < 300)
        out = NOTIFY_SENT;
    else if (status >= 400 && status < 500 && status != 408 && status != 429)
        out = NOTIFY_REJECTED; /* the receiver is up and refuses: not a breaker failure */
out:
    evbuffer_free(req);
    return out;
}
