/* core/uuid.h: UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter that keeps
 * ids from one process strictly increasing within a millisecond, then random bits
 * from the OS CSPRNG. Also random hex ids (request ids, trace ids) and hex digits. */
#ifndef ECOM_UUID_H
#define ECOM_UUID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UUID_STR_LEN 37 /* 36 + NUL */

void uuid_v7(char out[UUID_STR_LEN]);
/* A UUIDv7 made of ms and, after it, bits of the SHA-256 of name: the same
 * two give the same id. For a message that may have to be made again after
 * its first making was lost (a service's event re-made when the command that
 * caused it is applied again), so its consumers' inboxes know it. */
void uuid_v7_derived(char out[UUID_STR_LEN], int64_t ms, const char *name);
bool uuid_valid(const char *s); /* canonical lowercase or uppercase 8-4-4-4-12 */
/* The Unix ms a UUIDv7 was made at (its first 48 bits), or -1 when s is not a
 * valid version 7 UUID. */
int64_t uuid_v7_ms(const char *s);
/* The first 36 characters of in, lowercased, as PostgreSQL prints a uuid (in: a uuid_valid id). */
void uuid_lower(const char *in, char out[UUID_STR_LEN]);
/* n random bytes as 2n lowercase hex characters plus NUL. */
void random_hex(char *out, size_t nbytes);
/* Fills buf with CSPRNG bytes; aborts if the OS cannot provide them. For
 * secrets: codes, tickets, tokens, keys. */
void random_bytes(void *buf, size_t n);
/* Unpredictable-enough bytes for identifiers (request, trace and span ids,
 * UUIDv7 random bits): a per-thread generator seeded from the CSPRNG, with no
 * system call per use. Never for secrets. */
void random_fast_bytes(void *buf, size_t n);
/* random_hex from random_fast_bytes. */
void random_fast_hex(char *out, size_t nbytes);
/* The value of hex digit c (either case), or -1 when c is not one. */
int hex_digit(int c);

#endif
