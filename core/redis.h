/* core/redis.h: blocking hiredis connections from a redis:// URL.
 * hiredis 0.14 resolves names with blocking DNS, so "localhost" is mapped to
 * 127.0.0.1 here; other names are resolved once at connect time. */
#ifndef ECOM_REDIS_H
#define ECOM_REDIS_H

#include <hiredis/hiredis.h>

typedef struct redis_url {
    char host[256];
    int port;
    char password[256];
    int db;
} redis_url_t;

int redis_url_parse(const char *url, redis_url_t *out) __attribute__((warn_unused_result));
/* Connects, authenticates and selects the db. NULL and *err (owned) on failure.
 * timeout_ms bounds connect and every command (0 = none). */
redisContext *redis_connect_url(const char *url, int timeout_ms, char **err);

#endif
