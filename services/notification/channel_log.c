/* services/notification/channel_log.c: the `log` channel (development default):
 * a log line per delivery, without the text (it may hold a one-time code), and
 * the full record as one JSON Lines object in the sink file, where a developer
 * reads it: {"messageId","tenant","subject","channel","type","text","at"}. */
#include "services/notification/channel.h"

#include "core/json.h"
#include "core/log.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

notify_outcome_t notification_log_deliver(const notify_msg_t *m, const char *sink_file, char *detail, size_t cap)
{
    log_info("notification type=%s subject=%s channel=log title=\"%s\"", m->type, m->subject, m->title);
    if (!sink_file || !*sink_file) {
        snprintf(detail, cap, "logged");
        return NOTIFY_SENT;
    }
    char at[32];
    notification_format_time(m->at_ms, at, sizeof at);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"messageId\":\"%s\",\"tenant\":", m->message_id);
    json_buf_str(b, m->tenant);
    evbuffer_add(b, ",\"subject\":", 11);
    json_buf_str(b, m->subject);
    evbuffer_add_printf(b, ",\"channel\":\"log\",\"type\":");
    json_buf_str(b, m->type);
    evbuffer_add(b, ",\"text\":", 8);
    json_buf_str(b, m->text);
    evbuffer_add_printf(b, ",\"at\":\"%s\"}\n", at);
    size_t len = evbuffer_get_length(b);
    const char *line = (const char *)evbuffer_pullup(b, -1);
    notify_outcome_t out = NOTIFY_FAILED;
    int fd = open(sink_file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(detail, cap, "sink file %s: %s", sink_file, strerror(errno));
        goto out;
    }
    /* one write per line: O_APPEND keeps concurrent writers' lines whole */
    ssize_t w;
    do
        w = write(fd, line, len);
    while (w < 0 && errno == EINTR);
    if (w != (ssize_t)len) {
        snprintf(detail, cap, "sink file %s: %s", sink_file, w < 0 ? strerror(errno) : "short write (disk full?)");
        /* end the cut line, so the record written again on the retry (and
         * every later one) starts a line of its own a reader can parse */
        if (w > 0 && write(fd, "\n", 1) != 1)
            log_warn("notification: sink file %s: a cut line stays unterminated", sink_file);
    } else {
        snprintf(detail, cap, "logged to %s", sink_file);
        out = NOTIFY_SENT;
    }
    close(fd);
out:
    evbuffer_free(b);
    return out;
}
