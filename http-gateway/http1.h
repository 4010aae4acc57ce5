/* http-gateway/http1.h: the gateway's HTTP/1.1 server (RFC 9112) on one
 * libevent base. It owns the connections of one listening socket and those
 * other servers hand over to it: accepting them (or offering each to another
 * server first), reading and strictly parsing each request (request line, header
 * fields, a Content-Length or chunked body, Expect: 100-continue), handing every
 * complete request to one callback, one request at a time per connection
 * (pipelined requests wait their turn, in order), writing each answer with its
 * framing (Content-Length, Connection), keep-alive, the idle, arrival and write
 * timeouts, and a lingering close after an answer that ends the connection.
 *
 * A request the server cannot take (malformed, too large, an unsupported
 * framing or HTTP version) still reaches the callback, with h1_req_error() set
 * to the status it must be answered with, so that every error the gateway makes
 * is its own problem+json; the connection closes after that answer.
 *
 * A connection's read is on for as long as it lives (level-triggered, one
 * epoll_ctl per connection, not per request), a request is parsed in place in
 * the connection's buffer, and an answer goes out in one writev: per request,
 * one read and one writev. Owns its connections and their buffers; borrows the
 * base. Not thread-safe: one server per event base. */
#ifndef ECOM_HTTP1_H
#define ECOM_HTTP1_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct sockaddr;
struct evbuffer;

#define H1_MAX_FIELDS 64 /* header fields per request; more is a 431 */

typedef struct h1_server h1_server_t;
typedef struct h1_req h1_req_t;

typedef struct h1_field {
    const char *name, *value;
} h1_field_t;

/* Optional, to spread connections over the servers of several threads: called
 * with each connection the server accepts, before it takes it; true means
 * another server has it now (handed over with h1_server_adopt on its thread),
 * and the fd is no longer this server's. */
typedef bool (*h1_offer_cb)(int fd, const struct sockaddr *sa, int salen, void *arg);

typedef struct h1_limits {
    size_t max_head; /* request line and header fields, bytes; over it: 431 */
    size_t max_body; /* a larger body is not read: the request comes with error 413 */
    int timeout_s;   /* an idle keep-alive connection, a request's arrival, a stalled write */
    struct metric *accepted; /* optional: counts the connections this server takes (accepts or adopts) */
    atomic_int *open;        /* optional: kept equal to the number of connections this server has open */
    h1_offer_cb offer;       /* optional, with offer_arg */
    void *offer_arg;
} h1_limits_t;

/* Called once per request; the request must be answered with h1_reply, now or
 * later (the connection waits, reading ahead only into its buffer's room). */
typedef void (*h1_request_cb)(h1_req_t *q, void *arg);

/* Takes the listening socket fd (non-blocking, bound, listening); NULL on
 * failure (fd closed). */
h1_server_t *h1_server_new(struct event_base *base, int fd, const h1_limits_t *lim, h1_request_cb cb, void *arg);
/* Takes a connection another server accepted and handed over (its offer
 * callback); on this server's thread. */
void h1_server_adopt(h1_server_t *s, int fd, const struct sockaddr *sa, int salen);
/* Closes the listening socket; open connections go on. */
void h1_server_stop_accepting(h1_server_t *s);
/* From now on every answer closes its connection, and idle connections close:
 * a kept-alive one between requests at the next sweep, a new one that has
 * sent nothing yet after a short grace (its first request gets its answer). */
void h1_server_set_closing(h1_server_t *s);
/* Closes connections past their timeouts; call it often (it acts once a second). */
void h1_server_sweep(h1_server_t *s);
/* Whether a connection is receiving a request, or is new and may still send
 * its first within the grace: a server that is closing waits for them. */
bool h1_server_waiting(h1_server_t *s);
/* Closes every connection. A request not answered by then is gone with it:
 * answer (or drop) every request before. */
void h1_server_free(h1_server_t *s);

/* ---- a request (valid until h1_reply) ---- */

/* 0, or the status the request must be answered with (400, 413, 417, 431,
 * 501, 505). Fields read before the problem are available. */
int h1_req_error(const h1_req_t *q);
/* One of "GET" "HEAD" "POST" "PUT" "PATCH" "DELETE" "OPTIONS", another token,
 * or "" when the request line could not be read. */
const char *h1_req_method(const h1_req_t *q);
/* The request target as sent (origin form, or "*"); "" when unread. */
const char *h1_req_target(const h1_req_t *q);
/* The value of the first field of that name (case-insensitive), or NULL. */
const char *h1_req_header(const h1_req_t *q, const char *name);
/* The body (chunked bodies decoded); NULL and 0 when there is none. Not
 * NUL-terminated. */
const char *h1_req_body(const h1_req_t *q, size_t *len);
/* The client's address as text ("127.0.0.1"). */
const char *h1_req_peer(const h1_req_t *q);

/* Answers q: the status line, the fields given (a field whose name is empty or
 * whose name or value holds CR, LF or a NUL is left out), Content-Length, then
 * `body`, whose contents move out (HEAD, 1xx, 204 and 304 answers carry none; for
 * HEAD, Content-Length is the length of `body`). body may be NULL. q is gone
 * after this call. */
void h1_reply(h1_req_t *q, int status, const char *reason, const h1_field_t *fields, size_t nfields,
              struct evbuffer *body);

#endif
