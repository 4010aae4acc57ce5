/* core/log.h: one line per event, text or JSON.
 *
 * Text:  2026-11-26T15:08:08.123Z INFO  drainer msg="published 100" request_id=... msg_id=...
 * JSON:  {"ts":"...","level":"info","role":"drainer","msg":"published 100","msg_id":"..."}
 *
 * The correlation fields come from a per-thread context (log_ctx_set), so code
 * deep in a call chain logs with the request or message it is working for.
 * The level is checked before anything is formatted. */
#ifndef ECOM_LOG_H
#define ECOM_LOG_H

#include <stdbool.h>

typedef enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF } log_level_t;

/* Borrowed strings; valid while set. */
typedef struct log_ctx {
    const char *request_id;
    const char *trace_id;
    const char *msg_id;
} log_ctx_t;

extern log_level_t log_min_level;

void log_configure(const char *level, const char *format); /* "debug".., "text"|"json" */
void log_set_role(const char *role);                       /* per thread, borrowed */
const char *log_get_role(void);                            /* this thread's (a helper thread takes it on) */
/* Sets this thread's context; returns the previous one (to restore). Borrowed. */
const log_ctx_t *log_ctx_set(const log_ctx_t *ctx);
int log_level_parse(const char *s, log_level_t *out);

void log_emit(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define LOG_AT(lvl, ...)                                                                           \
    do {                                                                                           \
        if ((lvl) >= log_min_level)                                                                \
            log_emit((lvl), __VA_ARGS__);                                                          \
    } while (0)
#define log_debug(...) LOG_AT(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) LOG_AT(LOG_INFO, __VA_ARGS__)
#define log_warn(...) LOG_AT(LOG_WARN, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_ERROR, __VA_ARGS__)

#endif
