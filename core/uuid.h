/* core/uuid.h: UUIDv7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter that keeps
 * ids from one process strictly increasing within a millisecond, then random bits
 * from the OS CSPRNG. Also random hex ids (request ids, trace ids). */
#ifndef ECOM_UUID_H
#define ECOM_UUID_H

#include <stdbool.h>
#include <stddef.h>

#define UUID_STR_LEN 37 /* 36 + NUL */

void uuid_v7(char out[UUID_STR_LEN]);
bool uuid_valid(const char *s); /* canonical lowercase or uppercase 8-4-4-4-12 */
/* n random bytes as 2n lowercase hex characters plus NUL. */
void random_hex(char *out, size_t nbytes);
/* Fills buf with CSPRNG bytes; aborts if the OS cannot provide them. */
void random_bytes(void *buf, size_t n);

#endif
