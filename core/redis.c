/* core/redis.c: see redis.h. */
#include "core/redis.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* ":password@" before the address, if any: *p moves past it. */
static int take_password(const char **p, const char *end_of_auth, redis_url_t *out)
{
    const char *at = NULL;
    for (const char *q = *p; q < end_of_auth; q++)
        if (*q == '@')
            at = q;
    if (!at)
        return 0;
    const char *colon = memchr(*p, ':', (size_t)(at - *p));
    const char *pw = colon ? colon + 1 : *p;
    size_t n = (size_t)(at - pw);
    if (n >= sizeof out->password)
        return -1;
    memcpy(out->password, pw, n);
    *p = at + 1;
    return 0;
}

/* The db number of "/N" or "?db=N": digits only, 0..65535. */
static int take_db(const char *digits, redis_url_t *out)
{
    char *end;
    errno = 0;
    long db = strtol(digits, &end, 10);
    if (*end || db < 0 || db > 65535 || errno || !(digits[0] >= '0' && digits[0] <= '9'))
        return -1;
    out->db = (int)db;
    return 0;
}

static int parse_unix(const char *p, redis_url_t *out)
{
    /* the password ends where the path begins: the first '/' */
    if (take_password(&p, p + strcspn(p, "/"), out) != 0 || *p != '/')
        return -1;
    size_t n = strcspn(p, "?");
    if (n >= sizeof out->path || p[n - 1] == '/')
        return -1; /* too long for sun_path, or a folder ("/", "/run/") */
    memcpy(out->path, p, n);
    p += n;
    if (!*p)
        return 0;
    if (strncmp(p, "?db=", 4) != 0)
        return -1; /* the only parameter */
    return take_db(p + 4, out);
}

int redis_url_parse(const char *url, redis_url_t *out)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (strncmp(url, "unix://", 7) == 0)
        return parse_unix(url + 7, out);
    if (strncmp(url, "redis://", 8) != 0)
        return -1;
    const char *p = url + 8;
    if (take_password(&p, p + strlen(p), out) != 0)
        return -1;
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
        if (take_db(p + 1, out) != 0)
            return -1;
    } else if (*p && strcmp(p, "/") != 0) {
        return -1; /* text after the port: "redis://h:6379x", a query */
    }
    if (strcmp(out->host, "localhost") == 0)
        strcpy(out->host, "127.0.0.1");
    return 0;
}

char *redis_url_with_db(const char *url, int db)
{
    redis_url_t u;
    if (redis_url_parse(url, &u) != 0)
        return NULL;
    const char *colon = u.password[0] ? ":" : "", *at = u.password[0] ? "@" : "";
    if (u.path[0])
        return xasprintf("unix://%s%s%s%s?db=%d", colon, u.password, at, u.path, db);
    return xasprintf("redis://%s%s%s%s:%d/%d", colon, u.password, at, u.host, u.port, db);
}

redisContext *redis_connect_url(const char *url, int timeout_ms, char **err)
{
    redis_url_t u;
    if (redis_url_parse(url, &u) != 0) {
        *err = xasprintf("invalid Redis URL");
        return NULL;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c;
    if (u.path[0])
        c = timeout_ms ? redisConnectUnixWithTimeout(u.path, tv) : redisConnectUnix(u.path);
    else
        c = timeout_ms ? redisConnectWithTimeout(u.host, u.port, tv) : redisConnect(u.host, u.port);
    if (!c || c->err) {
        if (u.path[0])
            *err = xasprintf("redis %s: %s", u.path, c ? c->errstr : "out of memory");
        else
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
