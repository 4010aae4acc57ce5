/* tests/unit/test_gw_jwt.c: access-token keys and verification with every key
 * kind (AuthX J2–J4): HS256, RS256 and ES256 round trips; key sizes and curves
 * refused; a key pair that is not one; algorithm confusion (HS256 signed with
 * the RSA public key), alg none and a foreign algorithm refused; claims
 * checked by us (exp, nbf, iss, aud, token_use, sub); a token signed by another
 * key of the same kind refused. Keys are generated here with OpenSSL. */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "http-gateway/jwt.h"
#include "tests/testlib.h"

#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *pem(EVP_PKEY *k, bool priv)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (priv)
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    else
        PEM_write_bio_PUBKEY(b, k);
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *out = xstrndup(data, (size_t)n);
    BIO_free(b);
    return out;
}

/* jwtk_init with these settings; 0, or -1 with *errors (owned) */
static int keys_from(jwtk_t *k, const char *secret, const char *priv, const char *pub, char **errors)
{
    setenv("APP_ENV", "production", 1);
    setenv("OTP_PEPPER", "unit-test-pepper-0123456789abcdef0123", 1);
    const char *names[] = {"JWT_SECRET", "JWT_PRIVATE_KEY_PEM", "JWT_PUBLIC_KEY_PEM"};
    const char *values[] = {secret, priv, pub};
    for (int i = 0; i < 3; i++) {
        if (values[i])
            setenv(names[i], values[i], 1);
        else
            unsetenv(names[i]);
    }
    config_t cfg;
    *errors = NULL;
    int rc = config_load(&cfg, NULL, CFG_ROLE_GATEWAY, errors);
    if (rc == 0) {
        free(*errors);
        *errors = NULL;
        rc = jwtk_init(k, &cfg, errors);
    }
    config_free(&cfg);
    for (int i = 0; i < 3; i++)
        unsetenv(names[i]);
    return rc;
}

static char *b64url(const unsigned char *in, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
    return out;
}

/* header.payload.HS256(secret) from JSON texts */
static char *hs256(const char *header, const char *payload, const void *secret, size_t slen)
{
    char *h = b64url((const unsigned char *)header, strlen(header));
    char *p = b64url((const unsigned char *)payload, strlen(payload));
    char *signing = xasprintf("%s.%s", h, p);
    unsigned char mac[32];
    unsigned ml = 0;
    HMAC(EVP_sha256(), secret, (int)slen, (unsigned char *)signing, strlen(signing), mac, &ml);
    char *sig = b64url(mac, ml);
    char *tok = xasprintf("%s.%s", signing, sig);
    free(h);
    free(p);
    free(signing);
    free(sig);
    return tok;
}

static bool verifies(const jwtk_t *k, const char *tok)
{
    principal_t p;
    const char *why = NULL;
    return jwtk_verify(k, tok, clock_now_ms() / 1000, &p, &why) == 0;
}

static principal_t user(void)
{
    principal_t p = {0};
    snprintf(p.sub, sizeof p.sub, "u1");
    snprintf(p.tid, sizeof p.tid, "t1");
    snprintf(p.sid, sizeof p.sid, "s1");
    return p;
}

static void round_trip(const jwtk_t *k, const char *alg)
{
    CU_ASSERT_STRING_EQUAL(k->alg_name, alg);
    principal_t p = user(), out;
    char *tok = NULL;
    int64_t now = clock_now_ms() / 1000;
    CU_ASSERT_EQUAL_FATAL(jwtk_sign(k, &p, now, 600, &tok), 0);
    const char *why = NULL;
    CU_ASSERT_EQUAL(jwtk_verify(k, tok, now, &out, &why), 0);
    CU_ASSERT_STRING_EQUAL(out.sub, "u1");
    CU_ASSERT_STRING_EQUAL(out.tid, "t1");
    CU_ASSERT_STRING_EQUAL(out.sid, "s1");
    /* expired (beyond the 60 s skew), and not yet valid */
    CU_ASSERT_NOT_EQUAL(jwtk_verify(k, tok, now + 600 + JWT_SKEW_S + 1, &out, &why), 0);
    char *early = NULL;
    CU_ASSERT_EQUAL(jwtk_sign(k, &p, now + 3600, 600, &early), 0);
    CU_ASSERT_NOT_EQUAL(jwtk_verify(k, early, now, &out, &why), 0);
    /* a flipped signature byte */
    size_t n = strlen(tok);
    tok[n - 2] = tok[n - 2] == 'A' ? 'B' : 'A';
    CU_ASSERT_NOT_EQUAL(jwtk_verify(k, tok, now, &out, &why), 0);
    free(tok);
    free(early);
}

static EVP_PKEY *rsa(int bits)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
}

static EVP_PKEY *ec(const char *curve)
{
    return EVP_PKEY_Q_keygen(NULL, NULL, "EC", curve);
}

static void test_rs256(void)
{
    EVP_PKEY *key = rsa(2048), *other = rsa(2048);
    CU_ASSERT_PTR_NOT_NULL_FATAL(key);
    char *priv = pem(key, true), *pub = pem(key, false), *opriv = pem(other, true), *opub = pem(other, false);
    jwtk_t k, o;
    char *err = NULL;
    CU_ASSERT_EQUAL_FATAL(keys_from(&k, NULL, priv, pub, &err), 0);
    round_trip(&k, "RS256");
    /* another RSA key's token: same algorithm, not our key */
    CU_ASSERT_EQUAL_FATAL(keys_from(&o, NULL, opriv, opub, &err), 0);
    principal_t p = user();
    char *foreign = NULL;
    CU_ASSERT_EQUAL(jwtk_sign(&o, &p, clock_now_ms() / 1000, 600, &foreign), 0);
    CU_ASSERT_FALSE(verifies(&k, foreign));
    free(foreign);
    jwtk_free(&o);
    /* algorithm confusion: HS256 with our public key as the HMAC secret and our kid */
    int64_t now = clock_now_ms() / 1000;
    char header[160], payload[512];
    snprintf(header, sizeof header, "{\"alg\":\"HS256\",\"kid\":\"%s\",\"typ\":\"JWT\"}", k.kid);
    snprintf(payload, sizeof payload,
             "{\"iss\":\"%s\",\"aud\":\"%s\",\"sub\":\"u1\",\"tid\":\"t1\",\"sid\":\"s1\",\"jti\":\"j\",\"iat\":%lld,"
             "\"nbf\":%lld,\"exp\":%lld,\"token_use\":\"access\"}",
             k.iss, k.aud, (long long)now, (long long)now, (long long)now + 600);
    char *confused = hs256(header, payload, k.verify_key, k.verify_len);
    CU_ASSERT_FALSE(verifies(&k, confused));
    free(confused);
    /* alg none, and a foreign algorithm name */
    snprintf(header, sizeof header, "{\"alg\":\"none\",\"kid\":\"%s\"}", k.kid);
    char *h = b64url((unsigned char *)header, strlen(header)), *pl = b64url((unsigned char *)payload, strlen(payload));
    char *none = xasprintf("%s.%s.", h, pl);
    CU_ASSERT_FALSE(verifies(&k, none));
    free(none);
    free(h);
    snprintf(header, sizeof header, "{\"alg\":\"RS512\",\"kid\":\"%s\"}", k.kid);
    h = b64url((unsigned char *)header, strlen(header));
    char *rs512 = xasprintf("%s.%s.AAAA", h, pl);
    CU_ASSERT_FALSE(verifies(&k, rs512));
    free(rs512);
    free(h);
    free(pl);
    jwtk_free(&k);
    /* not one pair */
    CU_ASSERT_EQUAL(keys_from(&k, NULL, priv, opub, &err), -1);
    CU_ASSERT_TRUE(err && strstr(err, "not one key pair"));
    free(err);
    /* too short */
    EVP_PKEY *small = rsa(1024);
    char *spriv = pem(small, true), *spub = pem(small, false);
    CU_ASSERT_EQUAL(keys_from(&k, NULL, spriv, spub, &err), -1);
    CU_ASSERT_TRUE(err && strstr(err, "2048"));
    free(err);
    /* only one of the pair, or a secret as well */
    CU_ASSERT_EQUAL(keys_from(&k, NULL, priv, NULL, &err), -1);
    free(err);
    CU_ASSERT_EQUAL(keys_from(&k, "0123456789abcdef0123456789abcdef-both", priv, pub, &err), -1);
    free(err);
    free(spriv);
    free(spub);
    EVP_PKEY_free(small);
    free(priv);
    free(pub);
    free(opriv);
    free(opub);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

static void test_es256(void)
{
    EVP_PKEY *key = ec("P-256"), *p384 = ec("P-384");
    CU_ASSERT_PTR_NOT_NULL_FATAL(key);
    char *priv = pem(key, true), *pub = pem(key, false);
    jwtk_t k;
    char *err = NULL;
    CU_ASSERT_EQUAL_FATAL(keys_from(&k, NULL, priv, pub, &err), 0);
    round_trip(&k, "ES256");
    jwtk_free(&k);
    char *bpriv = pem(p384, true), *bpub = pem(p384, false);
    CU_ASSERT_EQUAL(keys_from(&k, NULL, bpriv, bpub, &err), -1);
    CU_ASSERT_TRUE(err && strstr(err, "P-256"));
    free(err);
    /* an RSA public key with an EC private key */
    EVP_PKEY *r = rsa(2048);
    char *rpub = pem(r, false);
    CU_ASSERT_EQUAL(keys_from(&k, NULL, priv, rpub, &err), -1);
    free(err);
    free(rpub);
    EVP_PKEY_free(r);
    free(bpriv);
    free(bpub);
    free(priv);
    free(pub);
    EVP_PKEY_free(key);
    EVP_PKEY_free(p384);
}

/* HS256: the claims we check ourselves */
static void test_hs256_claims(void)
{
    jwtk_t k;
    char *err = NULL;
    const char *secret = "0123456789abcdef0123456789abcdef-unit";
    CU_ASSERT_EQUAL_FATAL(keys_from(&k, secret, NULL, NULL, &err), 0);
    round_trip(&k, "HS256");
    int64_t now = clock_now_ms() / 1000;
    char header[128];
    snprintf(header, sizeof header, "{\"alg\":\"HS256\",\"kid\":\"%s\",\"typ\":\"JWT\"}", k.kid);
    /* each case: iss and aud (with a prefix making them wrong), sub, exp (0 an
     * integer, 1 a string, 2 missing), token_use (NULL missing) */
    struct {
        const char *iss_pre, *aud_pre;
        bool sub;
        int exp;
        const char *use;
        bool ok;
    } cases[] = {
        {"", "", true, 0, "access", true},   {"", "", true, 0, "refresh", false}, {"", "", true, 0, NULL, false},
        {"", "", true, 1, "access", false},  {"", "", true, 2, "access", false},  {"x", "", true, 0, "access", false},
        {"", "x", true, 0, "access", false}, {"", "", false, 0, "access", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_object *o = json_object_new_object();
        char *iss = xasprintf("%s%s", cases[i].iss_pre, k.iss), *aud = xasprintf("%s%s", cases[i].aud_pre, k.aud);
        json_object_object_add(o, "iss", json_object_new_string(iss));
        json_object_object_add(o, "aud", json_object_new_string(aud));
        if (cases[i].sub)
            json_object_object_add(o, "sub", json_object_new_string("u"));
        if (cases[i].exp == 0)
            json_object_object_add(o, "exp", json_object_new_int64(now + 600));
        else if (cases[i].exp == 1)
            json_object_object_add(o, "exp", json_object_new_string("9999999999"));
        if (cases[i].use)
            json_object_object_add(o, "token_use", json_object_new_string(cases[i].use));
        const char *payload = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        char *tok = hs256(header, payload, secret, strlen(secret));
        if (verifies(&k, tok) != cases[i].ok)
            fprintf(stderr, "\n  claims case %zu: %s\n", i, payload);
        CU_ASSERT_EQUAL(verifies(&k, tok), cases[i].ok);
        free(tok);
        free(iss);
        free(aud);
        json_object_put(o);
    }
    /* nbf more than the skew ahead */
    char payload[512];
    snprintf(payload, sizeof payload,
             "{\"iss\":\"%s\",\"aud\":\"%s\",\"sub\":\"u\",\"exp\":%lld,\"nbf\":%lld,\"token_use\":\"access\"}", k.iss,
             k.aud, (long long)now + 900, (long long)now + JWT_SKEW_S + 30);
    char *tok = hs256(header, payload, secret, strlen(secret));
    CU_ASSERT_FALSE(verifies(&k, tok));
    free(tok);
    /* a tid, sid or jti that is there must be a plain string: read as ""
     * it would drop the token's tenant binding or session check */
    static const char *const odd[] = {"\"tid\":\"t\\u0000x\"", "\"sid\":5", "\"jti\":null", "\"tid\":\"t1\""};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        snprintf(payload, sizeof payload,
                 "{\"iss\":\"%s\",\"aud\":\"%s\",\"sub\":\"u\",\"exp\":%lld,\"token_use\":\"access\",%s}", k.iss, k.aud,
                 (long long)now + 900, odd[i]);
        tok = hs256(header, payload, secret, strlen(secret));
        CU_ASSERT_EQUAL(verifies(&k, tok), i == 3); /* the last is a plain tid */
        free(tok);
    }
    /* an unknown kid */
    tok = hs256("{\"alg\":\"HS256\",\"kid\":\"0000000000000000\"}", "{\"sub\":\"u\"}", secret, strlen(secret));
    CU_ASSERT_FALSE(verifies(&k, tok));
    free(tok);
    jwtk_free(&k);
    /* outside development a short secret is refused */
    CU_ASSERT_EQUAL(keys_from(&k, "devsecret", NULL, NULL, &err), -1);
    free(err);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"RS256: round trip, foreign key, confusion, none, sizes, pairs", test_rs256},
        {"ES256: round trip, curve, mixed kinds", test_es256},
        {"HS256: claims we check, kid, short secret", test_hs256_claims},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_jwt", tests, NULL, NULL);
}
