/* sdk/c/authx_client.c: the AuthX client SDK (see authx_client.h).
 *
 * Tokens live in the client under one mutex, with a generation number that
 * grows on every change. A request remembers the generation of the token it
 * sent; after a 401 it asks for the token of that generation to be replaced
 * (refresh_from): when the generation has moved on, someone already did, and
 * the request just retries; when a refresh is in flight it waits on the
 * condition variable; otherwise it makes the one POST …/auth/refresh itself.
 * So any number of threads that sent the same stale token cause one refresh
 * (S3), and a refresh that is refused clears the tokens once (S4). Nothing
 * holds the mutex across network I/O.
 *
 * Each exchange has its own event base and connection (no state shared
 * between threads inside libevent), bounded by the connection's I/O timeout
 * and by our own deadline timer for the whole exchange. The completion
 * callback receives NULL on a transport failure (libevent 2.1), and the
 * request is freed by libevent when it returns. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strndup, vasprintf: the project sets it for every file */
#endif
#include "sdk/c/authx_client.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define DEFAULT_SKEW_S 30
#define DEFAULT_TIMEOUT_MS 15000
#define MAX_BODY (8 * 1024 * 1024) /* bytes of an answer's body */
#define MAX_HEADERS (64 * 1024)    /* bytes of an answer's headers */
#define MAX_JWT_PAYLOAD 8192       /* base64url characters decoded to find exp */
#define ERR_LEN 256

struct authx_client {
    char *host; /* base_url's origin: http, host, port */
    int port;
    char *base_path; /* without a trailing '/'; "" for the root */
    char *tenant;    /* NULL: none */
    int skew_s;      /* < 0: no proactive refresh */
    int timeout_ms;
    authx_clock_cb clock;
    authx_set_tokens_cb set_tokens;
    void *user;

    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t refreshed;
    char *access, *refresh, *sid; /* access NULL: no tokens */
    bool has_exp;
    int64_t exp;  /* the access token's exp claim, when it has one */
    uint64_t gen; /* grows on every change of the tokens */
    bool refreshing;
    int refresh_rc; /* outcome of the last refresh, for those who waited on it */
    char refresh_err[ERR_LEN];

    atomic_uint refreshes;
};

/* ================= small helpers ================= */

static _Thread_local char last_err[ERR_LEN];

const char *authx_last_error(void)
{
    return last_err;
}

__attribute__((format(printf, 2, 3))) static int fail(int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_err, sizeof last_err, fmt, ap);
    va_end(ap);
    return rc;
}

const char *authx_rc_name(int rc)
{
    switch (rc) {
    case AUTHX_OK: return "AUTHX_OK";
    case AUTHX_E_HTTP: return "AUTHX_E_HTTP";
    case AUTHX_E_AUTH: return "AUTHX_E_AUTH";
    case AUTHX_E_PROTO: return "AUTHX_E_PROTO";
    case AUTHX_E_ARG: return "AUTHX_E_ARG";
    default: return "?";
    }
}

static void *must(void *p)
{
    if (!p) {
        fputs("authx_client: out of memory\n", stderr);
        abort();
    }
    return p;
}

static char *sdup(const char *s)
{
    return s ? must(strdup(s)) : NULL;
}

__attribute__((format(printf, 1, 2))) static char *sfmt(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        must(NULL);
    return s;
}

/* Printable ASCII without spaces: what may go into a request line. */
static bool uri_chars_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static bool tenant_ok(const char *t)
{
    size_t n = strlen(t);
    if (n < 1 || n > 64)
        return false;
    return strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

/* ================= URLs and origins ================= */

typedef struct target {
    char *host;
    int port;
    char *uri; /* request-target: path and query */
    bool ours; /* base_url's origin: bearer and tenant go with it */
} target_t;

static void target_free(target_t *t)
{
    free(t->host);
    free(t->uri);
    memset(t, 0, sizeof *t);
}

/* "scheme://..." (letters, digits, + - . before "://")? */
static bool is_absolute(const char *s)
{
    size_t n = strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-.");
    return n > 0 && strncmp(s + n, "://", 3) == 0;
}

/* Parses an absolute http:// URL into host, port (80 by default) and
 * request-target. with_query: a query is allowed (not for base_url). */
static int parse_http_url(const char *url, bool for_base, char **host, int *port, char **path, char **query)
{
    if (!uri_chars_ok(url))
        return fail(AUTHX_E_ARG, "URL with spaces or control characters");
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
    if (!u)
        return fail(AUTHX_E_ARG, "malformed URL: %.120s", url);
    int rc = AUTHX_OK;
    const char *scheme = evhttp_uri_get_scheme(u);
    const char *h = evhttp_uri_get_host(u);
    if (!scheme || strcasecmp(scheme, "http") != 0)
        rc = fail(AUTHX_E_ARG, "only http:// URLs are supported: %.120s", url);
    else if (!h || !*h)
        rc = fail(AUTHX_E_ARG, "URL without a host: %.120s", url);
    else if (for_base && (evhttp_uri_get_query(u) || evhttp_uri_get_fragment(u) || evhttp_uri_get_userinfo(u)))
        rc = fail(AUTHX_E_ARG, "base_url with a query, fragment or user info: %.120s", url);
    if (rc == AUTHX_OK) {
        size_t hl = strlen(h);
        if (h[0] == '[' && hl > 2 && h[hl - 1] == ']') /* IPv6 literal */
            *host = must(strndup(h + 1, hl - 2));
        else
            *host = sdup(h);
        *port = evhttp_uri_get_port(u) < 0 ? 80 : evhttp_uri_get_port(u);
        const char *p = evhttp_uri_get_path(u);
        *path = sdup(p ? p : "");
        if (query)
            *query = sdup(evhttp_uri_get_query(u));
    }
    evhttp_uri_free(u);
    return rc;
}

static int resolve(const authx_client_t *c, const char *path_or_url, target_t *t)
{
    memset(t, 0, sizeof *t);
    if (!path_or_url)
        return fail(AUTHX_E_ARG, "no path");
    if (!is_absolute(path_or_url)) {
        if (!uri_chars_ok(path_or_url))
            return fail(AUTHX_E_ARG, "path with spaces or control characters");
        t->host = sdup(c->host);
        t->port = c->port;
        t->uri = sfmt("%s%s%s", c->base_path, path_or_url[0] == '/' ? "" : "/", path_or_url);
        if (t->uri[0] != '/') { /* base_path "" and path "" */
            free(t->uri);
            t->uri = sdup("/");
        }
        t->ours = true;
        return AUTHX_OK;
    }
    char *path = NULL, *query = NULL;
    int rc = parse_http_url(path_or_url, false, &t->host, &t->port, &path, &query);
    if (rc != AUTHX_OK)
        return rc;
    t->uri = sfmt("%s%s%s", path[0] ? path : "/", query ? "?" : "", query ? query : "");
    t->ours = strcasecmp(t->host, c->host) == 0 && t->port == c->port; /* S2: scheme is http for both */
    free(path);
    free(query);
    return AUTHX_OK;
}

/* ================= the access token's exp (no verification) ================= */

static int b64url_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Decodes n base64url characters (padding allowed) into out (room for n*3/4+1); -1 when malformed. */
static long b64url_decode(const char *in, size_t n, unsigned char *out)
{
    while (n && in[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    long len = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[len++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return len;
}

/* The integer exp claim of a JWT's payload; false when there is none. */
static bool jwt_exp(const char *token, int64_t *exp)
{
    const char *p1 = strchr(token, '.');
    const char *p2 = p1 ? strchr(p1 + 1, '.') : NULL;
    if (!p2)
        return false;
    size_t n = (size_t)(p2 - p1 - 1);
    if (n == 0 || n > MAX_JWT_PAYLOAD)
        return false;
    unsigned char *buf = must(malloc(n * 3 / 4 + 1));
    long len = b64url_decode(p1 + 1, n, buf);
    bool ok = false;
    if (len > 0) {
        json_tokener *tok = must(json_tokener_new());
        json_object *o = json_tokener_parse_ex(tok, (const char *)buf, (int)len);
        json_object *v;
        if (json_tokener_get_error(tok) == json_tokener_success && json_object_is_type(o, json_type_object) &&
            json_object_object_get_ex(o, "exp", &v) && json_object_is_type(v, json_type_int)) {
            *exp = json_object_get_int64(v);
            ok = true;
        }
        json_object_put(o);
        json_tokener_free(tok);
    }
    free(buf);
    return ok;
}

/* ================= one HTTP exchange ================= */

typedef struct exch {
    struct event_base *base;
    struct evhttp_request *req; /* valid until done */
    authx_resp_t *resp;
    bool done, timed_out, has_err;
    enum evhttp_request_error err;
} exch_t;

static void on_error(enum evhttp_request_error err, void *arg)
{
    exch_t *x = arg;
    x->err = err;
    x->has_err = true;
}

static void on_done(struct evhttp_request *req, void *arg)
{
    exch_t *x = arg;
    x->done = true;
    event_base_loopbreak(x->base); /* the deadline timer would keep the loop alive */
    if (!req || evhttp_request_get_response_code(req) == 0)
        return;
    authx_resp_t *r = x->resp;
    r->status = evhttp_request_get_response_code(req);
    const struct evkeyvalq *hs = evhttp_request_get_input_headers(req);
    size_t n = 0;
    for (const struct evkeyval *h = hs->tqh_first; h; h = h->next.tqe_next)
        n++;
    r->headers = must(calloc(n ? n : 1, sizeof *r->headers));
    for (const struct evkeyval *h = hs->tqh_first; h; h = h->next.tqe_next) {
        r->headers[r->nheaders].name = sdup(h->key);
        r->headers[r->nheaders].value = sdup(h->value);
        r->nheaders++;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    r->body = must(malloc(len + 1));
    if (len && evbuffer_remove(in, r->body, len) != (int)len)
        len = 0;
    r->body[len] = '\0';
    r->len = len;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exch_t *x = arg;
    if (!x->done) {
        x->timed_out = true;
        evhttp_cancel_request(x->req); /* frees it; on_done will not run */
        x->done = true;
    }
    event_base_loopbreak(x->base);
}

static const char *err_text(const exch_t *x)
{
    if (x->timed_out)
        return "timed out: no complete answer within the deadline";
    if (!x->has_err)
        return "connection failed";
    switch (x->err) {
    case EVREQ_HTTP_TIMEOUT: return "timed out";
    case EVREQ_HTTP_EOF: return "connection closed before the answer (or refused)";
    case EVREQ_HTTP_INVALID_HEADER: return "invalid answer header";
    case EVREQ_HTTP_BUFFER_ERROR: return "connection refused or broken";
    case EVREQ_HTTP_REQUEST_CANCEL: return "cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG: return "answer too large";
    default: return "transport error";
    }
}

static int method_cmd(const char *m, enum evhttp_cmd_type *cmd)
{
    static const struct {
        const char *name;
        enum evhttp_cmd_type cmd;
    } tab[] = {
        {"GET", EVHTTP_REQ_GET},         {"POST", EVHTTP_REQ_POST},     {"PUT", EVHTTP_REQ_PUT},
        {"PATCH", EVHTTP_REQ_PATCH},     {"DELETE", EVHTTP_REQ_DELETE}, {"HEAD", EVHTTP_REQ_HEAD},
        {"OPTIONS", EVHTTP_REQ_OPTIONS},
    };
    for (size_t i = 0; m && i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(m, tab[i].name) == 0) {
            *cmd = tab[i].cmd;
            return AUTHX_OK;
        }
    return fail(AUTHX_E_ARG, "unsupported method %.20s", m ? m : "(null)");
}

/* Adds "Name: value" lines; AUTHX_E_ARG when one is malformed (libevent refuses CR/LF in values). */
static int add_lines(struct evkeyvalq *out, const char *const *lines)
{
    for (size_t i = 0; lines && lines[i]; i++) {
        const char *colon = strchr(lines[i], ':');
        if (!colon || colon == lines[i])
            return fail(AUTHX_E_ARG, "header line without a name: %.60s", lines[i]);
        char *name = must(strndup(lines[i], (size_t)(colon - lines[i])));
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        bool ok = strcspn(name, " \t\r\n") == strlen(name) && evhttp_add_header(out, name, v) == 0;
        free(name);
        if (!ok)
            return fail(AUTHX_E_ARG, "malformed header line: %.60s", lines[i]);
    }
    return AUTHX_OK;
}

/* One request on a connection of its own. bearer: the access token to send (or
 * NULL). The tenant goes to base_url's origin only. */
static int exchange(const authx_client_t *c, const target_t *t, enum evhttp_cmd_type cmd, const char *bearer,
                    const char *const *lines, const char *json_body, authx_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    exch_t x = {.resp = resp};
    x.base = must(event_base_new());
    struct evhttp_connection *conn = evhttp_connection_base_new(x.base, NULL, t->host, (uint16_t)t->port);
    struct event *deadline = NULL;
    int rc = AUTHX_OK;
    if (!conn) {
        rc = fail(AUTHX_E_HTTP, "cannot create a connection to %s:%d", t->host, t->port);
        goto out;
    }
    struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(conn, &tv);
    evhttp_connection_set_max_body_size(conn, MAX_BODY);
    evhttp_connection_set_max_headers_size(conn, MAX_HEADERS);

    x.req = must(evhttp_request_new(on_done, &x));
    evhttp_request_set_error_cb(x.req, on_error);
    struct evkeyvalq *h = evhttp_request_get_output_headers(x.req);
    char *host = t->port == 80 ? sdup(t->host) : sfmt("%s:%d", t->host, t->port);
    evhttp_add_header(h, "Host", host);
    free(host);
    evhttp_add_header(h, "Connection", "close");
    evhttp_add_header(h, "Accept", "application/json");
    if (t->ours && c->tenant)
        evhttp_add_header(h, "x-tenant-id", c->tenant);
    if (t->ours && bearer) {
        char *auth = sfmt("Bearer %s", bearer);
        int bad = evhttp_add_header(h, "Authorization", auth);
        free(auth);
        if (bad) {
            evhttp_request_free(x.req);
            rc = fail(AUTHX_E_ARG, "the access token cannot go into a header");
            goto out;
        }
    }
    if (json_body) {
        char clen[24];
        snprintf(clen, sizeof clen, "%zu", strlen(json_body));
        evhttp_add_header(h, "Content-Type", "application/json");
        evhttp_add_header(h, "Content-Length", clen); /* evhttp adds it for POST and PUT only */
        evbuffer_add(evhttp_request_get_output_buffer(x.req), json_body, strlen(json_body));
    }
    if ((rc = add_lines(h, lines)) != AUTHX_OK) {
        evhttp_request_free(x.req);
        goto out;
    }
    deadline = must(evtimer_new(x.base, on_deadline, &x));
    evtimer_add(deadline, &tv);
    /* On failure libevent has freed the request (out of memory) or dropped it
     * (no socket): either way it is no longer ours to touch. */
    if (evhttp_make_request(conn, x.req, cmd, t->uri) != 0) {
        rc = fail(AUTHX_E_HTTP, "cannot send the request to %s:%d", t->host, t->port);
        goto out;
    }
    while (!x.done)
        if (event_base_dispatch(x.base) != 0) /* -1: error; 1: nothing pending */
            break;
    if (resp->status == 0)
        rc = fail(AUTHX_E_HTTP, "%s:%d%s: %s", t->host, t->port, t->uri, err_text(&x));
out:
    if (deadline)
        event_free(deadline);
    if (conn)
        evhttp_connection_free(conn);
    event_base_free(x.base);
    return rc;
}

/* ================= answers ================= */

const char *authx_resp_header(const authx_resp_t *r, const char *name)
{
    for (size_t i = 0; r && i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

void authx_resp_free(authx_resp_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* The body as a JSON object (owned), or NULL. */
static json_object *body_object(const authx_resp_t *r)
{
    if (!r->body || r->len == 0 || r->len > MAX_BODY)
        return NULL;
    json_tokener *tok = must(json_tokener_new());
    json_object *o = json_tokener_parse_ex(tok, r->body, (int)r->len);
    if (json_tokener_get_error(tok) != json_tokener_success || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        o = NULL;
    }
    json_tokener_free(tok);
    return o;
}

static const char *str_member(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    return *s ? s : NULL;
}

/* Records a non-success answer as the thread's last error: status and the
 * problem's detail or title when there is one. */
static int fail_status(int rc, const char *what, const authx_resp_t *r)
{
    json_object *o = body_object(r);
    const char *d = str_member(o, "detail");
    if (!d)
        d = str_member(o, "title");
    fail(rc, "%s: HTTP %d%s%.160s", what, r->status, d ? ": " : "", d ? d : "");
    json_object_put(o);
    return rc;
}

/* The triple of a login or refresh answer, copied; sid may be absent when !need_sid. */
static int parse_triple(const authx_resp_t *r, bool need_sid, const char *what, authx_tokens_t *t)
{
    memset(t, 0, sizeof *t);
    json_object *o = body_object(r);
    const char *a = str_member(o, "accessToken"), *rt = str_member(o, "refreshToken"), *s = str_member(o, "sessionId");
    int rc = AUTHX_OK;
    if (!a || !rt || (need_sid && !s) || !uri_chars_ok(a))
        rc = fail(AUTHX_E_PROTO, "%s: the answer lacks accessToken, refreshToken or sessionId", what);
    else
        *t = (authx_tokens_t){sdup(a), sdup(rt), sdup(s)};
    json_object_put(o);
    return rc;
}

/* POSTs a JSON object to a path under base_url, without a bearer. */
static int post_json(authx_client_t *c, const char *path, json_object *body, authx_resp_t *resp)
{
    target_t t;
    int rc = resolve(c, path, &t);
    if (rc == AUTHX_OK)
        rc = exchange(c, &t, EVHTTP_REQ_POST, NULL, NULL,
                      json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                      resp);
    target_free(&t);
    return rc;
}

/* ================= tokens ================= */

/* Lock held. Takes ownership of the strings in t; notify: call set_tokens. */
static void store_locked(authx_client_t *c, authx_tokens_t *t, bool notify)
{
    free(c->access);
    free(c->refresh);
    if (t->session_id) {
        free(c->sid);
        c->sid = t->session_id;
    }
    c->access = t->access_token;
    c->refresh = t->refresh_token;
    c->has_exp = jwt_exp(c->access, &c->exp);
    c->gen++;
    memset(t, 0, sizeof *t);
    if (notify && c->set_tokens) {
        authx_tokens_t view = {c->access, c->refresh, c->sid};
        c->set_tokens(c->user, &view);
    }
}

/* Lock held. Nothing happens (and nobody is told) when there are no tokens. */
static void clear_locked(authx_client_t *c, bool notify)
{
    if (!c->access && !c->refresh && !c->sid)
        return;
    free(c->access);
    free(c->refresh);
    free(c->sid);
    c->access = c->refresh = c->sid = NULL;
    c->has_exp = false;
    c->gen++;
    if (notify && c->set_tokens)
        c->set_tokens(c->user, NULL);
}

void authx_client_set_tokens(authx_client_t *c, const authx_tokens_t *tokens)
{
    pthread_mutex_lock(&c->mu);
    if (tokens && tokens->access_token) {
        authx_tokens_t t = {sdup(tokens->access_token), sdup(tokens->refresh_token), NULL};
        free(c->sid);
        c->sid = sdup(tokens->session_id);
        store_locked(c, &t, false);
    } else {
        clear_locked(c, false);
    }
    pthread_mutex_unlock(&c->mu);
}

int authx_client_tokens(authx_client_t *c, authx_tokens_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    if (c->access)
        *out = (authx_tokens_t){sdup(c->access), sdup(c->refresh), sdup(c->sid)};
    pthread_mutex_unlock(&c->mu);
    return out->access_token ? AUTHX_OK : fail(AUTHX_E_AUTH, "no tokens");
}

void authx_tokens_free(authx_tokens_t *t)
{
    if (!t)
        return;
    free(t->access_token);
    free(t->refresh_token);
    free(t->session_id);
    memset(t, 0, sizeof *t);
}

unsigned authx_client_refresh_count(const authx_client_t *c)
{
    return atomic_load(&c->refreshes);
}

/* The access token to send now (owned; NULL when none) and its generation. */
static char *current_access(authx_client_t *c, uint64_t *gen)
{
    pthread_mutex_lock(&c->mu);
    char *a = sdup(c->access);
    *gen = c->gen;
    pthread_mutex_unlock(&c->mu);
    return a;
}

/* ================= refresh, single-flight ================= */

/* The POST …/auth/refresh itself. 401: AUTHX_E_AUTH. */
static int refresh_call(authx_client_t *c, const char *refresh_token, authx_tokens_t *out)
{
    atomic_fetch_add(&c->refreshes, 1);
    json_object *body = json_object_new_object();
    json_object_object_add(body, "refreshToken", json_object_new_string(refresh_token));
    authx_resp_t r;
    int rc = post_json(c, "/auth/refresh", body, &r);
    json_object_put(body);
    if (rc == AUTHX_OK) {
        if (r.status == 200)
            rc = parse_triple(&r, false, "refresh", out);
        else
            rc = fail_status(r.status == 401 ? AUTHX_E_AUTH : AUTHX_E_PROTO, "refresh", &r);
    }
    authx_resp_free(&r);
    return rc;
}

/* Makes sure the tokens of generation gen are replaced: when they already
 * were, returns at once; when a refresh is in flight, waits for it; otherwise
 * makes the refresh. AUTHX_OK: there is a newer access token. A refused
 * refresh clears the tokens and tells set_tokens (once: S4). */
static int refresh_from(authx_client_t *c, uint64_t gen)
{
    bool waited = false;
    int rc;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (c->gen != gen) {
            rc = c->access
                     ? AUTHX_OK
                     : fail(AUTHX_E_AUTH, "no tokens any more%s%s", c->refresh_err[0] ? ": " : "", c->refresh_err);
            break;
        }
        if (c->refreshing) {
            pthread_cond_wait(&c->refreshed, &c->mu);
            waited = true;
            continue;
        }
        if (waited) { /* the refresh we waited for failed and left the tokens as they were */
            rc = fail(c->refresh_rc, "%s", c->refresh_err);
            break;
        }
        if (!c->refresh) {
            rc = fail(AUTHX_E_AUTH, "not logged in (no refresh token)");
            break;
        }
        char *rt = sdup(c->refresh);
        c->refreshing = true;
        pthread_mutex_unlock(&c->mu);

        authx_tokens_t fresh = {0};
        rc = refresh_call(c, rt, &fresh);
        free(rt);

        pthread_mutex_lock(&c->mu);
        c->refreshing = false;
        c->refresh_rc = rc;
        snprintf(c->refresh_err, sizeof c->refresh_err, "%s", rc == AUTHX_OK ? "" : last_err);
        if (c->gen == gen) { /* nobody replaced the tokens meanwhile */
            if (rc == AUTHX_OK)
                store_locked(c, &fresh, true);
            else if (rc == AUTHX_E_AUTH)
                clear_locked(c, true);
        }
        authx_tokens_free(&fresh);
        pthread_cond_broadcast(&c->refreshed);
        if (rc != AUTHX_OK)
            break;
        /* the generation moved on: the loop answers */
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int authx_refresh(authx_client_t *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t gen = c->gen;
    pthread_mutex_unlock(&c->mu);
    return refresh_from(c, gen);
}

/* S5: a refresh first when the access token expires within the skew. */
static int refresh_if_expiring(authx_client_t *c)
{
    if (c->skew_s < 0)
        return AUTHX_OK;
    int64_t now = c->clock ? c->clock(c->user) : (int64_t)time(NULL);
    pthread_mutex_lock(&c->mu);
    bool due = c->access && c->refresh && c->has_exp && c->exp - now < c->skew_s;
    uint64_t gen = c->gen;
    pthread_mutex_unlock(&c->mu);
    return due ? refresh_from(c, gen) : AUTHX_OK;
}

/* ================= requests ================= */

static int fetch(authx_client_t *c, enum evhttp_cmd_type cmd, const target_t *t, const char *const *lines,
                 const char *json_body, authx_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    if (!t->ours) /* S2: nothing of ours goes to another origin */
        return exchange(c, t, cmd, NULL, lines, json_body, resp);
    int rc = refresh_if_expiring(c);
    if (rc != AUTHX_OK)
        return rc;
    uint64_t gen;
    char *bearer = current_access(c, &gen);
    rc = exchange(c, t, cmd, bearer, lines, json_body, resp);
    free(bearer);
    if (rc != AUTHX_OK || resp->status != 401)
        return rc;
    /* S3: one refresh for everyone who sent this token, then one retry */
    rc = refresh_from(c, gen);
    if (rc != AUTHX_OK)
        return rc; /* *resp keeps the first 401 */
    authx_resp_free(resp);
    bearer = current_access(c, &gen);
    rc = exchange(c, t, cmd, bearer, lines, json_body, resp);
    free(bearer);
    if (rc == AUTHX_OK && resp->status == 401)
        rc = fail_status(AUTHX_E_AUTH, "401 after a refresh", resp);
    return rc;
}

int authx_fetch_ex(authx_client_t *c, const char *method, const char *path_or_url, const char *const *headers,
                   const char *json_body, authx_resp_t *resp)
{
    memset(resp, 0, sizeof *resp);
    enum evhttp_cmd_type cmd = EVHTTP_REQ_GET;
    int rc = method_cmd(method, &cmd);
    if (rc != AUTHX_OK)
        return rc;
    target_t t;
    rc = resolve(c, path_or_url, &t);
    if (rc == AUTHX_OK)
        rc = fetch(c, cmd, &t, headers, json_body, resp);
    target_free(&t);
    return rc;
}

int authx_fetch(authx_client_t *c, const char *method, const char *path_or_url, const char *json_body,
                authx_resp_t *resp)
{
    return authx_fetch_ex(c, method, path_or_url, NULL, json_body, resp);
}

/* ================= login and logout ================= */

static int login(authx_client_t *c, const char *path, json_object *body, const char *what)
{
    authx_resp_t r;
    int rc = post_json(c, path, body, &r);
    json_object_put(body);
    if (rc == AUTHX_OK && r.status != 200)
        rc = fail_status(r.status == 401 || r.status == 403 ? AUTHX_E_AUTH : AUTHX_E_PROTO, what, &r);
    authx_tokens_t t;
    if (rc == AUTHX_OK && (rc = parse_triple(&r, true, what, &t)) == AUTHX_OK) {
        pthread_mutex_lock(&c->mu);
        store_locked(c, &t, true); /* S1: set_tokens once, with the triple */
        pthread_mutex_unlock(&c->mu);
    }
    authx_resp_free(&r);
    return rc;
}

int authx_login_dev(authx_client_t *c, const char *user_id)
{
    if (!user_id || !*user_id)
        return fail(AUTHX_E_ARG, "no user id");
    json_object *body = json_object_new_object();
    json_object_object_add(body, "userId", json_object_new_string(user_id));
    return login(c, "/auth/dev-login", body, "dev-login");
}

int authx_login_otp(authx_client_t *c, const char *ticket_id, const char *code)
{
    if (!ticket_id || !*ticket_id || !code || !*code)
        return fail(AUTHX_E_ARG, "no ticket id or code");
    json_object *body = json_object_new_object();
    json_object_object_add(body, "ticketId", json_object_new_string(ticket_id));
    json_object_object_add(body, "code", json_object_new_string(code));
    return login(c, "/auth/otp/verify", body, "otp verify");
}

int authx_logout(authx_client_t *c)
{
    target_t t;
    int rc = resolve(c, "/auth/logout", &t);
    authx_resp_t r = {0};
    if (rc == AUTHX_OK)
        rc = fetch(c, EVHTTP_REQ_POST, &t, NULL, NULL, &r);
    target_free(&t);
    bool gone = rc == AUTHX_E_AUTH || (rc == AUTHX_OK && r.status >= 200 && r.status < 300);
    if (rc == AUTHX_OK && !gone)
        rc = fail_status(AUTHX_E_PROTO, "logout", &r);
    if (gone) {
        pthread_mutex_lock(&c->mu);
        clear_locked(c, true);
        pthread_mutex_unlock(&c->mu);
        rc = AUTHX_OK;
    }
    authx_resp_free(&r);
    return rc;
}

/* ================= the client ================= */

authx_client_t *authx_client_new(const authx_config_t *cfg)
{
    if (!cfg || !cfg->base_url) {
        fail(AUTHX_E_ARG, "no base_url");
        return NULL;
    }
    if (cfg->tenant && !tenant_ok(cfg->tenant)) {
        fail(AUTHX_E_ARG, "tenant must match ^[A-Za-z0-9_-]{1,64}$");
        return NULL;
    }
    char *host = NULL, *path = NULL;
    int port = 0;
    if (parse_http_url(cfg->base_url, true, &host, &port, &path, NULL) != AUTHX_OK)
        return NULL;
    size_t pl = strlen(path);
    while (pl && path[pl - 1] == '/')
        path[--pl] = '\0';
    authx_client_t *c = must(calloc(1, sizeof *c));
    c->host = host;
    c->port = port;
    c->base_path = path;
    c->tenant = sdup(cfg->tenant);
    c->skew_s = cfg->refresh_skew_s == 0 ? DEFAULT_SKEW_S : cfg->refresh_skew_s;
    c->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : DEFAULT_TIMEOUT_MS;
    c->clock = cfg->clock;
    c->set_tokens = cfg->set_tokens;
    c->user = cfg->user;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->refreshed, NULL);
    atomic_init(&c->refreshes, 0);
    return c;
}

void authx_client_free(authx_client_t *c)
{
    if (!c)
        return;
    free(c->access);
    free(c->refresh);
    free(c->sid);
    free(c->host);
    free(c->base_path);
    free(c->tenant);
    pthread_cond_destroy(&c->refreshed);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
