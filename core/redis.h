/* core/redis.h: blocking hiredis connections from a Redis URL:
 *   redis://[:password@]host[:port][/db]   TCP
 *   unix://[:password@]/path/to/socket[?db=N]   a Unix socket on this host
 *     (the password ends at the first '/': it cannot hold one)
 * A Unix socket spares each command the loopback's TCP work (about 3% of
 * the shop flow's CPU with PostgreSQL's socket beside it; no latency
 * difference resolved: docs/benchmarks.md, session 23).
 * hiredis 0.14 resolves names with blocking DNS, so "localhost" is mapped to
 * 127.0.0.1 here; other names are resolved once at connect time.
 * Owns: nothing beyond the connections it returns. */
#ifndef ECOM_REDIS_H
#define ECOM_REDIS_H

#include <hiredis/hiredis.h>

typedef struct redis_url {
    char path[108]; /* unix://: the socket's path (sun_path's size); host is then empty */
    char host[256];
    int port;
    char password[256];
    int db;
} redis_url_t;

int redis_url_parse(const char *url, redis_url_t *out) __attribute__((warn_unused_result));
/* The same server and password with logical database db selected (owned),
 * or NULL if url does not parse. */
char *redis_url_with_db(const char *url, int db);
/* Connects, authenticates and selects the db. NULL and *err (owned) on failure.
 * timeout_ms bounds connect and every command (0 = none). */
redisContext *redis_connect_url(const char *url, int timeout_ms, char **err);

#endif
