/* core/redis.c: see redis.h. */
#include "core/redis.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

int redis_url_parse(const char *url, redis_url_t *out)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (strncmp(url, "redis://", 8) != 0)
        return -1;
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        size_t n = (size_t)(at - pw);
        if (n >= sizeof out->password)
            return -1;
        memcpy(out->password, pw, n);
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0 || hl >= sizeof out->host)
        return -1;
    memcpy(out->host, p, hl);
    p += hl;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535)
            return -1;
        out->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        errno = 0;
        long db = strtol(p + 1, &end, 10);
        if (*end || db < 0 || db > 65535 || errno || !(p[1] >= '0' && p[1] <= '9'))
            return -1;
        out->db = (int)db;
    } else if (*p && strcmp(p, "/") != 0) {
        return -1; /* text after the port: "redis://h:6379x", a query */
    }
    if (strcmp(out->host, "localhost") == 0)
        strcpy(out->host, "127.0.0.1");
    return 0;
}

redisContext *redis_connect_url(const char *url, int timeout_ms, char **err)
{
    redis_url_t u;
    if (redis_url_parse(url, &u) != 0) {
        *err = xasprintf("invalid Redis URL");
        return NULL;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = timeout_ms ? redisConnectWithTimeout(u.host, u.port, tv) : redisConnect(u.host, u.port);
    if (!c || c->err) {
        *err = xasprintf("redis %s:%d: %s", u.host, u.port, c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    if (timeout_ms)
        redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (u.password[0]) {
        r = redisCommand(c, "AUTH %s", u.password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            *err = xasprintf("redis AUTH failed: %s", r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (u.db) {
        r = redisCommand(c, "SELECT %d", u.db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            *err = xasprintf("redis SELECT failed: %s", r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    return c;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}
