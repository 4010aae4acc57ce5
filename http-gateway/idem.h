/* http-gateway/idem.h: the pure part of gateway idempotency (gateway.md §1.1):
 * validating the Idempotency-Key header, the request fingerprint, and the store
 * key. Claiming, replaying and releasing keys belong to the idempotency store and
 * the network layer.
 * Owns: the strings idem_store_key returns. Borrows OpenSSL (EVP SHA-256) and the
 * URL normalisation of route.h. */
#ifndef ECOM_IDEM_H
#define ECOM_IDEM_H

#include <stdbool.h>
#include <stddef.h>

#define IDEM_KEY_MAX 255 /* characters of the key itself */
#define IDEM_KEY_BUF (IDEM_KEY_MAX + 1)
#define IDEM_FINGERPRINT_BUF 65 /* SHA-256 as lowercase hex + NUL */

/* Parses an Idempotency-Key header value (surrounding blanks ignored): either an
 * RFC 8941 sf-string ("..." with only \" and \\ escapes and printable ASCII
 * inside), unwrapped, or a bare Stripe-style token of visible ASCII without '"',
 * '\\' or ','. The key must be 1..255 characters. Returns 0 with the key in out,
 * or -1 (a 400). */
int idem_key_parse(const char *header, char out[IDEM_KEY_BUF]) __attribute__((warn_unused_result));

/* SHA-256 over the method, the normalised path, the sorted query and the raw
 * body, each length-prefixed, as lowercase hex. query may be NULL; body may be
 * NULL when len is 0. Returns 0, or -1 when the digest fails. */
int idem_fingerprint(const char *method, const char *path, const char *query, const void *body,
                     size_t len, char out[IDEM_FINGERPRINT_BUF])
    __attribute__((warn_unused_result));

/* The store key "idem:v1:" followed by tenant, principal, method, route template
 * and key, each length-prefixed so no part can forge another. NULL parts are
 * empty. Owned. */
char *idem_store_key(const char *tenant, const char *principal, const char *method,
                     const char *route_template, const char *key);

#endif
