/* core/digest.h: SHA-256 digests as lowercase hex: how migration checksums,
 * refresh tokens and OTP ticket ids are stored.
 * Owns: nothing (pure functions). */
#ifndef ECOM_DIGEST_H
#define ECOM_DIGEST_H

#define DIGEST_SHA256_HEX_LEN 64

/* SHA-256 of the NUL-terminated s, as 64 lowercase hex digits and a NUL. */
void digest_sha256_hex(const char *s, char out[DIGEST_SHA256_HEX_LEN + 1]);

#endif
