/* sdk/c/authx_client.h: the C client SDK of AuthX (authx.md §3, S1–S5): log in
 * to the gateway, then call it with a bearer token that is refreshed when it is
 * about to expire and once after a 401, with one refresh for any number of
 * threads that saw the same stale token.
 *
 * Blocking HTTP/1.1 over libevent's evhttp client, one event base and one
 * connection per exchange, http:// only (meant for loopback and trusted
 * networks), bodies as strings, JSON through json-c. Every call is safe to make
 * from several threads at once on one client, except authx_client_free.
 *
 * Owns: the client's copy of the token triple (the source of truth in the
 * process; the set_tokens callback only mirrors it, e.g. to persist it) and
 * every authx_resp_t's buffers (authx_resp_free). Borrows: the configuration
 * strings only during authx_client_new (they are copied), and the user pointer.
 *
 * Writing to a socket the peer closed raises SIGPIPE: an application using this
 * SDK ignores SIGPIPE, as with any socket code. */
#ifndef ECOM_SDK_AUTHX_CLIENT_H
#define ECOM_SDK_AUTHX_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#define AUTHX_NODISCARD __attribute__((warn_unused_result))

/* Results: 0 or a negative code. */
typedef enum authx_rc {
    AUTHX_OK = 0,
    AUTHX_E_HTTP = -1,  /* transport: connect, read, write, timeout, oversized answer */
    AUTHX_E_AUTH = -2,  /* not authenticated: login refused, refresh refused, 401 after the retry */
    AUTHX_E_PROTO = -3, /* the gateway answered something unexpected (status or body) */
    AUTHX_E_ARG = -4,   /* a bad argument: unsupported scheme, malformed URL or method */
} authx_rc_t;

/* The token triple. In callbacks and arguments the strings are borrowed for the
 * duration of the call; from authx_client_tokens they are owned (authx_tokens_free). */
typedef struct authx_tokens {
    char *access_token;
    char *refresh_token;
    char *session_id; /* may be NULL when seeded without one */
} authx_tokens_t;

/* Called whenever the client's tokens change: once per login (S1), once per
 * successful refresh, and with NULL when they are cleared (logout, refused
 * refresh: S4). Called with the client's token lock held, so calls arrive in
 * the order of the changes; the callback must not call into the client. */
typedef void (*authx_set_tokens_cb)(void *user, const authx_tokens_t *tokens);
/* The current time in Unix seconds (tests inject one; default: the real clock). */
typedef int64_t (*authx_clock_cb)(void *user); /* may be called from several threads at once */

typedef struct authx_config {
    const char *base_url;           /* "http://127.0.0.1:3003/api/v1/analytics"; required */
    const char *tenant;             /* sent as x-tenant-id to base_url's origin; NULL: none */
    int refresh_skew_s;             /* proactive refresh when exp is nearer (S5); 0: 30; < 0: never */
    int timeout_ms;                 /* per exchange, connect to last byte; 0: 15000 */
    authx_clock_cb clock;           /* NULL: real time */
    authx_set_tokens_cb set_tokens; /* NULL: nobody is told */
    void *user;                     /* passed to clock and set_tokens */
} authx_config_t;

typedef struct authx_header {
    char *name, *value;
} authx_header_t;

/* An HTTP answer. Owned by the caller: always release with authx_resp_free
 * (safe on a zeroed or already freed one), whatever the call returned. */
typedef struct authx_resp {
    int status; /* 0 when no answer arrived */
    char *body; /* NUL-terminated ("" when empty) */
    size_t len; /* bytes in body, without the NUL */
    authx_header_t *headers;
    size_t nheaders;
} authx_resp_t;

typedef struct authx_client authx_client_t;

/* A new client, or NULL when cfg is unusable (base_url not http://host[:port][/path]
 * without query or fragment, or a tenant not matching ^[A-Za-z0-9_-]{1,64}$).
 * Owned: authx_client_free. Starts without tokens. */
authx_client_t *authx_client_new(const authx_config_t *cfg) AUTHX_NODISCARD;
/* No call on the client may be in progress. NULL is fine. */
void authx_client_free(authx_client_t *c);

/* POST base/auth/dev-login {"userId"} (a development gateway only). On 200 the
 * triple {accessToken, refreshToken, sessionId} is stored and set_tokens is
 * called once with it (S1). 401/403: AUTHX_E_AUTH; another status: AUTHX_E_PROTO. */
int authx_login_dev(authx_client_t *c, const char *user_id) AUTHX_NODISCARD;
/* POST base/auth/otp/verify {ticketId, code}; the same outcome as authx_login_dev. */
int authx_login_otp(authx_client_t *c, const char *ticket_id, const char *code) AUTHX_NODISCARD;

/* One request. path_or_url is either a path under base_url ("/me", "me?x=1")
 * or an absolute http:// URL. Authorization: Bearer and x-tenant-id are sent
 * only when the target's origin (scheme, host, port) equals base_url's (S2).
 * For base_url's origin: a refresh first when the access token expires within
 * refresh_skew_s (S5), and on a 401 one refresh (shared by every thread that
 * sent the same token: S3) and one retry. json_body, when not NULL, is sent as
 * application/json. headers: extra "Name: value" lines, NULL-terminated, or NULL.
 * Returns AUTHX_OK when an answer arrived (any status, in *resp); AUTHX_E_AUTH
 * when the refresh was refused (tokens cleared, set_tokens(NULL): S4), when a
 * 401 came with no refresh token, or when the retry got 401 too (*resp holds
 * that 401); AUTHX_E_HTTP, AUTHX_E_PROTO (a refresh's bad answer), AUTHX_E_ARG. */
int authx_fetch(authx_client_t *c, const char *method, const char *path_or_url, const char *json_body,
                authx_resp_t *resp) AUTHX_NODISCARD;
int authx_fetch_ex(authx_client_t *c, const char *method, const char *path_or_url, const char *const *headers,
                   const char *json_body, authx_resp_t *resp) AUTHX_NODISCARD;

/* POST base/auth/refresh {"refreshToken"} now, single-flight with every other
 * refresh of this client (a refresh already in flight is waited for and its
 * outcome returned). 401: tokens cleared, set_tokens(NULL), AUTHX_E_AUTH. No
 * refresh token: AUTHX_E_AUTH without a call. */
int authx_refresh(authx_client_t *c) AUTHX_NODISCARD;
/* POST base/auth/logout with the bearer. On 2xx, or when the session turns out
 * to be gone already (401, refused refresh), the tokens are cleared
 * (set_tokens(NULL)) and AUTHX_OK is returned. On a transport failure or
 * another status they are kept, so that the caller can try again. */
int authx_logout(authx_client_t *c) AUTHX_NODISCARD;

/* Replaces the tokens without any request (to resume a saved session); NULL
 * or a NULL access_token clears them. set_tokens is not called: the caller knows. */
void authx_client_set_tokens(authx_client_t *c, const authx_tokens_t *tokens);
/* A copy of the current tokens (owned: authx_tokens_free); AUTHX_E_AUTH and a
 * zeroed *out when there are none. */
int authx_client_tokens(authx_client_t *c, authx_tokens_t *out) AUTHX_NODISCARD;
void authx_tokens_free(authx_tokens_t *t);

/* POST …/auth/refresh requests made so far, refused ones included. */
unsigned authx_client_refresh_count(const authx_client_t *c);

/* The value of a response header (case-insensitive name), borrowed from r; NULL when absent. */
const char *authx_resp_header(const authx_resp_t *r, const char *name);
void authx_resp_free(authx_resp_t *r);

/* What went wrong in the calling thread's last failed call (borrowed, valid
 * until that thread's next call); not reset by successful calls. */
const char *authx_last_error(void);
const char *authx_rc_name(int rc);

#endif
