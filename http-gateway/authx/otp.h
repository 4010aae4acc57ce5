/* http-gateway/authx/otp.h: the I/O-free cryptographic core of OTP login
 * (authx.md §3 O1, O9, O10, O11): HOTP (RFC 4226) and TOTP (RFC 6238) with
 * SHA-1/256/512 and a 64-bit step counter, TOTP verification with a window,
 * replay refusal and learned drift (RFC 6238 §5.2, §6), a startup known-answer
 * test over the RFC tables, unbiased 6-digit codes and URL-safe ticket ids from
 * the OS CSPRNG, the HMAC storage form of a code, and TOTP enrolment (random
 * secret, RFC 4648 base32, otpauth:// URI).
 *
 * Owns nothing: every output goes to a buffer the caller provides, and nothing
 * is allocated that outlives a call. Borrows OpenSSL 3 (HMAC, EVP_MAC,
 * CRYPTO_memcmp) and core/uuid.h random_bytes (getrandom(2); aborts if the OS
 * cannot provide randomness). Every function is thread-safe and keeps no state:
 * the caller stores the last accepted step and the learned drift. */
#ifndef ECOM_OTP_H
#define ECOM_OTP_H

#include "core/alloc.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { OTP_SHA1, OTP_SHA256, OTP_SHA512 } otp_hash_t;

#define OTP_MIN_DIGITS 6
#define OTP_MAX_DIGITS 8
#define OTP_CODE_BUF (OTP_MAX_DIGITS + 1) /* the largest code plus NUL */

#define OTP_DEFAULT_DIGITS 6
#define OTP_DEFAULT_STEP_S 30
#define OTP_MAX_STEP_S 3600
#define OTP_MAX_WINDOW 10 /* steps either side of the expected one */
#define OTP_MAX_DRIFT 4   /* learned drift is clamped to +-4 steps (authx.md O10) */
#define OTP_NO_STEP (-1)  /* last_step before any code was accepted */

/* Results of the verification functions besides 0 (accepted). */
#define OTP_REFUSED (-1)  /* no match, malformed code or bad arguments */
#define OTP_REPLAYED (-2) /* the code matched a step <= last_step: a reuse to log */

/* "SHA1" / "SHA256" / "SHA512" (the otpauth algorithm names). */
const char *otp_hash_name(otp_hash_t hash);
/* Case-insensitive; "SHA-256" is accepted too. 0, or -1 if unknown. */
int otp_hash_from_name(const char *name, otp_hash_t *out) ECOM_NODISCARD;

/* ---- HOTP / TOTP ---- */

/* RFC 4226: HMAC(key, counter as 8 bytes big-endian), dynamic truncation, the
 * low `digits` decimal digits (6..8) with leading zeros, written to out
 * (at least digits + 1 bytes). 0, or -1 on bad arguments or an OpenSSL error
 * (out is then the empty string). */
int otp_hotp(const uint8_t *key, size_t key_len, uint64_t counter, int digits, otp_hash_t hash,
             char *out) ECOM_NODISCARD;

/* RFC 6238 time step: T = floor((unix_time - t0) / step_s), 64-bit. -1 when
 * unix_time < t0, step_s is not in 1..OTP_MAX_STEP_S, or on overflow. */
int otp_totp_step(int64_t unix_time, int step_s, int64_t t0, int64_t *step) ECOM_NODISCARD;

/* RFC 6238: otp_hotp at the step of unix_time. 0 or -1 as above. */
int otp_totp(const uint8_t *key, size_t key_len, int64_t unix_time, int step_s, int64_t t0, int digits, otp_hash_t hash,
             char *out) ECOM_NODISCARD;

typedef struct otp_totp_params {
    otp_hash_t hash; /* OTP_SHA1 (0) by default */
    int digits;      /* 0 means OTP_DEFAULT_DIGITS */
    int step_s;      /* 0 means OTP_DEFAULT_STEP_S */
    int64_t t0;      /* Unix time of step 0; normally 0 */
} otp_totp_params_t;

/* Verifies a submitted TOTP code at time now. With T the current step and
 * d = drift clamped to +-OTP_MAX_DRIFT, the candidate steps are
 * T+d-window .. T+d+window (negative steps skipped); window is 0..OTP_MAX_WINDOW.
 * Every candidate is computed and compared in constant time (CRYPTO_memcmp),
 * whichever matches. A match on a step <= last_step is refused (replay, or an
 * older step than the last one used: RFC 6238 §5.2); pass OTP_NO_STEP when no
 * code was accepted yet. Returns 0 and sets *matched_step (the smallest matching
 * step > last_step): the caller stores it as the new last_step, atomically with
 * its check of the old one, and may learn drift with otp_totp_drift.
 * OTP_REPLAYED when the code matched only steps <= last_step; OTP_REFUSED
 * otherwise (a code of the wrong length or with a non-digit included). Answer
 * both failures identically to the client.
 * otp_totp_verify uses the enrolment defaults: SHA-1, 6 digits, 30 s, T0 = 0;
 * params NULL means the same. */
int otp_totp_verify(const uint8_t *key, size_t key_len, const char *code, int64_t now, int window, int64_t last_step,
                    int drift, int64_t *matched_step) ECOM_NODISCARD;
int otp_totp_verify_params(const otp_totp_params_t *params, const uint8_t *key, size_t key_len, const char *code,
                           int64_t now, int window, int64_t last_step, int drift, int64_t *matched_step) ECOM_NODISCARD;

/* The drift to record after a success (RFC 6238 §6): matched_step minus the
 * step of now, clamped to +-OTP_MAX_DRIFT (0 if now is before t0). */
int otp_totp_drift(const otp_totp_params_t *params, int64_t now, int64_t matched_step);

/* Known-answer test (O11): the RFC 4226 Appendix D table (SHA-1, 6 digits,
 * counts 0..9), the RFC 6238 Appendix B table (SHA-1/256/512, 8 digits, with
 * each hash's own seed and 64-bit steps) and the authx.md §2.3 window and replay
 * vector, all compiled in. 0, or -1 with the first failing check described in
 * err (may be NULL). Run it at startup and exit on failure. */
int otp_self_test(char *err, size_t cap) ECOM_NODISCARD;

/* ---- Emailed / SMS codes (O1, O9) ---- */

#define OTP_CODE_LEN 6
/* 6 decimal digits plus NUL, uniform over 000000..999999: 32-bit CSPRNG draws
 * at or above the largest multiple of 10^6 below 2^32 are rejected and redrawn. */
void otp_random_code(char out[OTP_CODE_LEN + 1]);

#define OTP_TICKET_BYTES 24  /* 192 random bits */
#define OTP_TICKET_ID_LEN 32 /* base64url (RFC 4648 §5) of 24 bytes, no padding */
/* A ticket id: OTP_TICKET_ID_LEN characters of [A-Za-z0-9_-] plus NUL. */
void otp_ticket_id(char out[OTP_TICKET_ID_LEN + 1]);
/* True when s has the exact shape of a ticket id (check before any lookup). */
bool otp_ticket_id_valid(const char *s);

#define OTP_MAC_HEX_LEN 64
/* Storage form of a code (O9): lowercase hex of
 * HMAC-SHA-256(pepper, tenant || 0x00 || ticket_id || 0x00 || code). The NUL
 * separators make the split of the fields unambiguous. 0, or -1 (out_hex is
 * then empty) on a NULL argument, an empty pepper or an OpenSSL error. */
int otp_code_mac(const uint8_t *pepper, size_t pepper_len, const char *tenant, const char *ticket_id, const char *code,
                 char out_hex[OTP_MAC_HEX_LEN + 1]) ECOM_NODISCARD;
/* Constant-time comparison of two MACs from otp_code_mac (CRYPTO_memcmp over
 * the 64 characters); false when either is NULL or not 64 characters long. */
bool otp_mac_equal(const char *a_hex, const char *b_hex);

/* ---- TOTP enrolment ---- */

#define OTP_SECRET_LEN 20     /* the HMAC-SHA-1 output size (RFC 6238 §5.1) */
#define OTP_SECRET_MIN_LEN 16 /* 128 bits (RFC 4226 §4 R6) */
#define OTP_SECRET_MAX_LEN 64

/* len random bytes from the CSPRNG; -1 if len is outside 16..64. */
int otp_secret_new(uint8_t *out, size_t len) ECOM_NODISCARD;

/* Characters of the unpadded base32 form of n bytes. */
#define OTP_BASE32_LEN(n) (((n)*8 + 4) / 5)
/* RFC 4648 §6 base32, upper case, without '=' padding, NUL-terminated. -1 if
 * out (cap bytes) is too small. */
int otp_base32_encode(const uint8_t *in, size_t len, char *out, size_t cap) ECOM_NODISCARD;
/* The inverse: letters of either case, optional trailing '=' padding. Refuses
 * any other character, an impossible length, non-zero trailing bits (only the
 * canonical encoding is accepted) and output longer than cap. 0 with *out_len set,
 * or -1. */
int otp_base32_decode(const char *in, uint8_t *out, size_t cap, size_t *out_len) ECOM_NODISCARD;

/* The Key URI for authenticator apps:
 * otpauth://totp/ISSUER:ACCOUNT?secret=S&issuer=ISSUER&algorithm=SHA1&digits=D&period=P
 * with issuer and account percent-encoded (everything but RFC 3986 unreserved
 * characters and '@', so spaces become %20 and ':' %3A). Without an issuer
 * (NULL or "") the label is the account alone and there is no issuer parameter.
 * SHA-1 only, as that is what authenticator apps implement. secret_b32 must be
 * upper-case unpadded base32. 0, or -1 on bad arguments or when out (cap bytes)
 * is too small. */
int otp_uri(char *out, size_t cap, const char *issuer, const char *account, const char *secret_b32, int digits,
            int period) ECOM_NODISCARD;

#endif
