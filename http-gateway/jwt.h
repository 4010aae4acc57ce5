/* http-gateway/jwt.h: access tokens. Verification pins the algorithm to the
 * configured key (HS256 with JWT_SECRET; RS256 or ES256, chosen by the type of
 * the PEM key pair) and checks every claim itself, because libjwt 1.10 only
 * verifies the signature with whatever algorithm the token names:
 * the header is parsed strictly first (alg must equal ours, kid must be ours),
 * then libjwt checks the signature with our key, then we assert the algorithm
 * it used, then exp (required, integer), nbf and iat (not more than 60 s in the
 * future), iss, aud, token_use == "access" and sub are checked on the strictly
 * parsed payload. Signing issues tokens with the same key (login, dev tools).
 * Owns: the key material in jwtk_t (jwtk_free), the entries of a
 * jwt_cache_t (jwt_cache_free). */
#ifndef ECOM_JWT_H
#define ECOM_JWT_H

#include "core/config.h"

#include <jwt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_SKEW_S 60
#define PRINCIPAL_MAX_ROLES 8
#define PRINCIPAL_MAX_PERMS 16

typedef struct principal {
    bool present;
    bool dev; /* the development principal (APP_ENV=development, no token) */
    char sub[129];
    char tid[65];
    char sid[65];
    char jti[65];
    int64_t exp;
    char roles[PRINCIPAL_MAX_ROLES][33];
    int nroles;
    char perms[PRINCIPAL_MAX_PERMS][65];
    int nperms;
} principal_t;

typedef struct jwtk {
    jwt_alg_t alg;
    char alg_name[8];
    unsigned char *verify_key; /* secret, or public PEM */
    size_t verify_len;
    unsigned char *sign_key; /* secret, or private PEM */
    size_t sign_len;
    char kid[17];
    char *iss, *aud;
} jwtk_t;

/* Loads the keys from configuration; checks key types and sizes (RSA >= 2048
 * bits, EC on P-256; a short secret only in development). -1 with every problem
 * appended to *errors (one per line, owned). */
int jwtk_init(jwtk_t *k, const config_t *cfg, char **errors) __attribute__((warn_unused_result));
void jwtk_free(jwtk_t *k);

/* 0 and *out filled, or -1 with *why (static text: expired, bad signature, ...). */
int jwtk_verify(const jwtk_t *k, const char *token, int64_t now_s, principal_t *out, const char **why)
    __attribute__((warn_unused_result));
/* Issues an access token for p (sub, tid, sid, roles, perms) valid ttl_s seconds.
 * *token owned (free). */
int jwtk_sign(const jwtk_t *k, const principal_t *p, int64_t now_s, int ttl_s, char **token)
    __attribute__((warn_unused_result));

/* A thread's cache of verified tokens: verifying costs a signature and two
 * JSON parses per request, so a token verified once is remembered (the full
 * token bytes as the key) until its exp, without the skew that verification
 * allows: a hit is never more lenient than jwtk_verify. What can change while
 * a token lives (a revoked session, roles) is checked per request outside it.
 * Direct-mapped; not thread-safe (one per gateway thread). */
#define JWT_CACHE_SLOTS 256

typedef struct jwt_cache_entry {
    char *token;
    size_t len;
    principal_t p;
} jwt_cache_entry_t;

typedef struct jwt_cache {
    jwt_cache_entry_t *slot[JWT_CACHE_SLOTS];
} jwt_cache_t;

/* true and *out filled when token was verified before and now_s < its exp */
bool jwt_cache_get(jwt_cache_t *c, const char *token, int64_t now_s, principal_t *out);
void jwt_cache_put(jwt_cache_t *c, const char *token, const principal_t *p);
void jwt_cache_free(jwt_cache_t *c);

#endif
