/* core/log.c: see log.h. Lines are written with one write(2) each, so lines
 * from several threads never interleave. */
#include "core/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

log_level_t log_min_level = LOG_INFO;
static bool log_json;
static _Thread_local const char *log_role = "ecom";
static _Thread_local const log_ctx_t *log_ctx;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int log_level_parse(const char *s, log_level_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    if (strcasecmp(s, "off") == 0) {
        *out = LOG_OFF;
        return 0;
    }
    return -1;
}

void log_configure(const char *level, const char *format)
{
    if (level)
        (void)log_level_parse(level, &log_min_level);
    if (format)
        log_json = strcasecmp(format, "json") == 0;
}

void log_set_role(const char *role)
{
    log_role = role;
}

const char *log_get_role(void)
{
    return log_role;
}

const log_ctx_t *log_ctx_set(const log_ctx_t *ctx)
{
    const log_ctx_t *prev = log_ctx;
    log_ctx = ctx;
    return prev;
}

/* Appends s to buf as the inside of a JSON string (or a text value). */
static size_t put_escaped(char *buf, size_t pos, size_t cap, const char *s)
{
    for (; *s && pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[pos++] = '\\';
            buf[pos++] = (char)c;
        } else if (c < 0x20) {
            pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
        } else {
            buf[pos++] = (char)c;
        }
    }
    return pos;
}

static size_t put_field(char *buf, size_t pos, size_t cap, const char *key, const char *val)
{
    if (!val || !*val || pos + 16 >= cap)
        return pos;
    if (log_json) {
        pos += (size_t)snprintf(buf + pos, cap - pos, ",\"%s\":\"", key);
        pos = put_escaped(buf, pos, cap, val);
        if (pos < cap - 1)
            buf[pos++] = '"';
    } else {
        pos += (size_t)snprintf(buf + pos, cap - pos, " %s=%s", key, val);
    }
    return pos < cap ? pos : cap - 1;
}

void log_emit(log_level_t level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03dZ", (int)(tv.tv_usec / 1000));

    char line[4096];
    size_t cap = sizeof line - 2, pos;
    const char *lvl = level_names[level > LOG_ERROR ? LOG_ERROR : level];
    if (log_json) {
        pos = (size_t)snprintf(line, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"role\":\"%s\",\"msg\":\"",
                               ts, lvl, log_role);
        pos = put_escaped(line, pos, cap, msg);
        line[pos++] = '"';
    } else {
        pos = (size_t)snprintf(line, cap, "%s %-5s %s msg=\"", ts, lvl, log_role);
        pos = put_escaped(line, pos, cap, msg);
        line[pos++] = '"';
    }
    const log_ctx_t *c = log_ctx;
    if (c) {
        pos = put_field(line, pos, cap, "request_id", c->request_id);
        pos = put_field(line, pos, cap, "trace_id", c->trace_id);
        pos = put_field(line, pos, cap, "msg_id", c->msg_id);
    }
    if (log_json)
        line[pos++] = '}';
    line[pos++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, pos);
    (void)w;
}
