/* http-gateway/problem.h: RFC 9457 problem+json bodies, the one way the gateway
 * writes an error reply body (gateway.md §1.10), and HTTP reason phrases.
 * Owns nothing; writes into a caller's evbuffer and borrows every string. */
#ifndef ECOM_PROBLEM_H
#define ECOM_PROBLEM_H

struct evbuffer;

#define PROBLEM_CONTENT_TYPE "application/problem+json"
#define PROBLEM_TYPE_BASE "https://errors.ecom.dev/"

/* The reason phrase of an HTTP status ("Not Found"); "Unknown Status" for codes
 * without one. Static string. */
const char *http_reason(int status);

/* Appends one problem object to out:
 *   {"type":..,"title":..,"status":..,"detail":..,"instance":..,"requestId":..,"traceId":..}
 * type is PROBLEM_TYPE_BASE + type_slug, or "about:blank" when type_slug is NULL.
 * title NULL means the reason phrase of status. detail, instance, request_id and
 * trace_id are omitted when NULL. Every string is JSON-escaped. status must be a
 * three-digit HTTP status (asserted). */
void problem_render(struct evbuffer *out, int status, const char *type_slug, const char *title,
                    const char *detail, const char *instance, const char *request_id,
                    const char *trace_id);

#endif
