/* http-gateway/reqctx.h: the identity of one request (gateway.md §1.5, §1.6):
 * the request id kept from x-request-id or generated, the W3C traceparent parsed,
 * validated or newly generated, and the tenant id rule.
 * Owns nothing: every function fills caller-provided fixed-size buffers. Borrows
 * core/uuid.h for randomness. Request id and trace id are independent. */
#ifndef ECOM_REQCTX_H
#define ECOM_REQCTX_H

#include <stdbool.h>
#include <stdint.h>

#define REQCTX_ID_MAX 128                 /* longest inbound request id kept */
#define REQCTX_ID_BUF (REQCTX_ID_MAX + 1) /* buffer for any request id */
#define REQCTX_TRACE_ID_BUF 33            /* 32 hex + NUL */
#define REQCTX_SPAN_ID_BUF 17             /* 16 hex + NUL */
#define REQCTX_TRACEPARENT_BUF 56         /* "00-" 32 "-" 16 "-" 2 + NUL */
#define REQCTX_TENANT_MAX 64

/* [A-Za-z0-9._:-]{1,128} */
bool reqctx_request_id_valid(const char *s);
/* Copies inbound into out when valid; otherwise writes 128 random bits as 32
 * lowercase hex. Returns true when the inbound id was kept. inbound may be NULL. */
bool reqctx_request_id(const char *inbound, char out[REQCTX_ID_BUF]);

typedef struct traceparent {
    uint8_t version;                    /* as received; 0 for generated ones */
    char trace_id[REQCTX_TRACE_ID_BUF]; /* 32 lowercase hex, not all zero */
    char span_id[REQCTX_SPAN_ID_BUF];   /* parent-id: 16 lowercase hex, not all zero */
    uint8_t flags;                      /* bit 0x01 = sampled */
} traceparent_t;

/* Parses a traceparent header. Version 00 must be exactly
 * 00-{32 hex}-{16 hex}-{2 hex}, all lowercase; a higher version (not ff) is accepted
 * when it starts with that layout and anything after it follows a '-' (W3C
 * forward compatibility). All-zero ids, version ff and uppercase hex are invalid.
 * Returns 0, or -1 (out unspecified) when the caller must start a new trace. */
int reqctx_traceparent_parse(const char *header, traceparent_t *out)
    __attribute__((warn_unused_result));
/* A new trace: random trace id and span id, version 0, flags 01 when sampled. */
void reqctx_traceparent_new(traceparent_t *out, bool sampled);
/* The context for our own span under parent: same trace id, a new span id,
 * version 0, the sampled bit of parent kept and the other flag bits cleared. */
void reqctx_traceparent_child(const traceparent_t *parent, traceparent_t *out);
/* A random non-zero 64-bit span id as 16 lowercase hex. */
void reqctx_span_id_new(char out[REQCTX_SPAN_ID_BUF]);
/* "00-<trace>-<span>-<flags>" (always version 00, as W3C asks of senders). */
void reqctx_traceparent_format(const traceparent_t *tp, char out[REQCTX_TRACEPARENT_BUF]);
bool reqctx_traceparent_sampled(const traceparent_t *tp);

/* ^[A-Za-z0-9_-]{1,64}$ */
bool reqctx_tenant_valid(const char *s);

#endif
