/* tests/unit/test_authx_otp.c: the OTP core against the RFC 4226 / 6238 vectors
 * in tests/vectors/otp-jwt.json (authx.md §2), the window, replay and drift rules
 * (O10), the self-test (O11), code and ticket generation (O1) and the storage
 * MAC (O9), base32 and the otpauth URI. */
#include "http-gateway/authx/otp.h"

#include "tests/testlib.h"

#include <json-c/json.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef ECOM_TESTABLE
int self_test_keys(const uint8_t *k20, const uint8_t *k32, const uint8_t *k64, char *err, size_t cap);
int code_from_draw(uint32_t draw, char out[OTP_CODE_LEN + 1]);
#endif

static json_object *vectors;

static int setup(void)
{
    const char *dir = getenv("ECOM_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/vectors/otp-jwt.json", dir && *dir ? dir : ".");
    vectors = json_object_from_file(path);
    if (!vectors)
        fprintf(stderr, "cannot read %s (set ECOM_SOURCE_DIR)\n", path);
    return vectors ? 0 : -1;
}

static int teardown(void)
{
    json_object_put(vectors);
    vectors = NULL;
    return 0;
}

/* A member that must exist (borrowed from its parent). */
static json_object *member(json_object *o, const char *key)
{
    json_object *v = NULL;
    CU_ASSERT_FATAL(o && json_object_object_get_ex(o, key, &v) && v);
    return v;
}

static const char *member_str(json_object *o, const char *key)
{
    json_object *v = member(o, key);
    CU_ASSERT_FATAL(json_object_is_type(v, json_type_string));
    return json_object_get_string(v);
}

static int64_t member_int(json_object *o, const char *key)
{
    json_object *v = member(o, key);
    CU_ASSERT_FATAL(json_object_is_type(v, json_type_int));
    return json_object_get_int64(v);
}

static const char *seed_for(otp_hash_t hash)
{
    json_object *keys = member(member(vectors, "totp"), "keys_ascii");
    return member_str(keys, otp_hash_name(hash));
}

/* The HOTP counter whose vector code is `code`, or -1. */
static int64_t hotp_counter_of(const char *code)
{
    json_object *list = member(member(vectors, "hotp"), "vectors");
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *v = json_object_array_get_idx(list, i);
        if (strcmp(member_str(v, "hotp"), code) == 0)
            return member_int(v, "counter");
    }
    return -1;
}

/* ---- RFC vectors from the JSON file ---- */

static void test_hotp_vectors(void)
{
    json_object *hotp = member(vectors, "hotp");
    const char *key = member_str(hotp, "key_ascii");
    int digits = (int)member_int(hotp, "digits");
    json_object *list = member(hotp, "vectors");
    CU_ASSERT_EQUAL(digits, 6);
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(list), 10);
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *v = json_object_array_get_idx(list, i);
        char got[OTP_CODE_BUF];
        ASSERT_OK(
            otp_hotp((const uint8_t *)key, strlen(key), (uint64_t)member_int(v, "counter"), digits, OTP_SHA1, got));
        CU_ASSERT_STRING_EQUAL(got, member_str(v, "hotp"));
    }
}

static void test_totp_vectors(void)
{
    json_object *totp = member(vectors, "totp");
    int digits = (int)member_int(totp, "digits");
    int step_s = (int)member_int(totp, "step_seconds");
    json_object *list = member(totp, "vectors");
    CU_ASSERT_EQUAL(digits, 8);
    CU_ASSERT_EQUAL(step_s, 30);
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(list), 18);

    int per_hash[3] = {0};
    bool beyond_32_bits = false;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *v = json_object_array_get_idx(list, i);
        otp_hash_t hash;
        ASSERT_OK(otp_hash_from_name(member_str(v, "mode"), &hash));
        per_hash[hash]++;
        const char *seed = seed_for(hash);
        int64_t t = member_int(v, "time");
        const char *want = member_str(v, "totp8");
        if (t > (int64_t)UINT32_MAX)
            beyond_32_bits = true;

        int64_t step;
        ASSERT_OK(otp_totp_step(t, step_s, 0, &step));
        CU_ASSERT_EQUAL(step, (int64_t)strtoull(member_str(v, "step_hex"), NULL, 16));

        char got[OTP_CODE_BUF];
        ASSERT_OK(otp_totp((const uint8_t *)seed, strlen(seed), t, step_s, 0, digits, hash, got));
        CU_ASSERT_STRING_EQUAL(got, want);

        /* the 6-digit form is the value mod 10^6 */
        char want6[16];
        snprintf(want6, sizeof want6, "%06lu", strtoul(want, NULL, 10) % 1000000ul);
        ASSERT_OK(otp_totp((const uint8_t *)seed, strlen(seed), t, step_s, 0, 6, hash, got));
        CU_ASSERT_STRING_EQUAL(got, want6);
    }
    CU_ASSERT_EQUAL(per_hash[OTP_SHA1], 6);
    CU_ASSERT_EQUAL(per_hash[OTP_SHA256], 6);
    CU_ASSERT_EQUAL(per_hash[OTP_SHA512], 6);
    CU_ASSERT_TRUE(beyond_32_bits);
}

/* authx.md §2.3: the SHA-1 seed, 6 digits, t = 59 (step 1), window +-1. */
static void test_window_case(void)
{
    json_object *wc = member(vectors, "totp_window_case");
    const char *seed = seed_for(OTP_SHA1);
    const uint8_t *key = (const uint8_t *)seed;
    size_t key_len = strlen(seed);
    json_object *accept = member(wc, "accept"), *reject = member(wc, "reject");
    json_object *refuse = member(wc, "then_refuse");
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(accept), 3);
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(reject), 2);
    CU_ASSERT_EQUAL_FATAL(json_object_array_length(refuse), 2);

    for (size_t i = 0; i < json_object_array_length(accept); i++) {
        const char *code = json_object_get_string(json_object_array_get_idx(accept, i));
        int64_t matched = -1;
        CU_ASSERT_EQUAL(otp_totp_verify(key, key_len, code, 59, 1, OTP_NO_STEP, 0, &matched), 0);
        CU_ASSERT_EQUAL(matched, hotp_counter_of(code));
    }
    for (size_t i = 0; i < json_object_array_length(reject); i++) {
        const char *code = json_object_get_string(json_object_array_get_idx(reject, i));
        int64_t matched = -1;
        CU_ASSERT_EQUAL(otp_totp_verify(key, key_len, code, 59, 1, OTP_NO_STEP, 0, &matched), OTP_REFUSED);
        CU_ASSERT_EQUAL(matched, -1);
    }

    int64_t last = -1;
    const char *first = member_str(wc, "after_accepting");
    ASSERT_OK(otp_totp_verify(key, key_len, first, 59, 1, OTP_NO_STEP, 0, &last));
    CU_ASSERT_EQUAL(last, 1);
    for (size_t i = 0; i < json_object_array_length(refuse); i++) {
        const char *code = json_object_get_string(json_object_array_get_idx(refuse, i));
        int64_t matched = -1;
        CU_ASSERT_EQUAL(otp_totp_verify(key, key_len, code, 59, 1, last, 0, &matched), OTP_REPLAYED);
        CU_ASSERT_EQUAL(matched, -1);
    }
    /* the next step is still good after step 1 was used */
    int64_t matched = -1;
    CU_ASSERT_EQUAL(otp_totp_verify(key, key_len, "359152", 59, 1, last, 0, &matched), 0);
    CU_ASSERT_EQUAL(matched, 2);
}

static void test_verify_edges(void)
{
    const char *seed = seed_for(OTP_SHA1);
    const uint8_t *key = (const uint8_t *)seed;
    size_t n = strlen(seed);
    int64_t m = -1;

    /* window 0: only the current step */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", 59, 0, OTP_NO_STEP, 0, &m), 0);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "755224", 59, 0, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    /* step 0 with window 1: step -1 does not exist, steps 0 and 1 do */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "755224", 10, 1, OTP_NO_STEP, 0, &m), 0);
    CU_ASSERT_EQUAL(m, 0);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", 10, 1, OTP_NO_STEP, 0, &m), 0);
    CU_ASSERT_EQUAL(m, 1);
    /* malformed submissions */
    const char *bad[] = {"", "28708", "2870820", "28708a", " 87082", "287082 ", "-87082"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad); i++)
        CU_ASSERT_EQUAL(otp_totp_verify(key, n, bad[i], 59, 1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, NULL, 59, 1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", 59, 1, OTP_NO_STEP, 0, NULL), OTP_REFUSED);
    /* bad window, time before T0 */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", 59, -1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", 59, OTP_MAX_WINDOW + 1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, "287082", -1, 1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    /* the wrong key */
    CU_ASSERT_EQUAL(otp_totp_verify((const uint8_t *)"12345678901234567891", 20, "287082", 59, 1, OTP_NO_STEP, 0, &m),
                    OTP_REFUSED);

    /* explicit parameters: SHA-512, 8 digits, at 64-bit T */
    const char *s64 = seed_for(OTP_SHA512);
    otp_totp_params_t p = {.hash = OTP_SHA512, .digits = 8, .step_s = 30};
    CU_ASSERT_EQUAL(
        otp_totp_verify_params(&p, (const uint8_t *)s64, strlen(s64), "47863826", 20000000000, 1, OTP_NO_STEP, 0, &m),
        0);
    CU_ASSERT_EQUAL(m, 0x27BC86AA);
    /* the 6-digit form is not an 8-digit code */
    CU_ASSERT_EQUAL(
        otp_totp_verify_params(&p, (const uint8_t *)s64, strlen(s64), "863826", 20000000000, 1, OTP_NO_STEP, 0, &m),
        OTP_REFUSED);
    /* T0 shifts the steps: with T0 = 30, t = 89 is step 1 */
    otp_totp_params_t shifted = {.t0 = 30};
    CU_ASSERT_EQUAL(otp_totp_verify_params(&shifted, key, n, "287082", 89, 0, OTP_NO_STEP, 0, &m), 0);
    CU_ASSERT_EQUAL(m, 1);
}

/* RFC 6238 §6: a code 3 steps ahead needs a learned drift; drift is capped at 4. */
static void test_drift(void)
{
    const char *seed = seed_for(OTP_SHA1);
    const uint8_t *key = (const uint8_t *)seed;
    size_t n = strlen(seed);
    const int64_t now = 1111111109;
    int64_t cur;
    ASSERT_OK(otp_totp_step(now, 30, 0, &cur));

    char ahead3[OTP_CODE_BUF], ahead5[OTP_CODE_BUF], ahead9[OTP_CODE_BUF];
    char behind5[OTP_CODE_BUF], behind6[OTP_CODE_BUF];
    ASSERT_OK(otp_hotp(key, n, (uint64_t)(cur + 3), 6, OTP_SHA1, ahead3));
    ASSERT_OK(otp_hotp(key, n, (uint64_t)(cur + 5), 6, OTP_SHA1, ahead5));
    ASSERT_OK(otp_hotp(key, n, (uint64_t)(cur + 9), 6, OTP_SHA1, ahead9));
    ASSERT_OK(otp_hotp(key, n, (uint64_t)(cur - 5), 6, OTP_SHA1, behind5));
    ASSERT_OK(otp_hotp(key, n, (uint64_t)(cur - 6), 6, OTP_SHA1, behind6));

    int64_t m = -1;
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead3, now, 1, OTP_NO_STEP, 0, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead3, now, 1, OTP_NO_STEP, 2, &m), 0);
    CU_ASSERT_EQUAL(m, cur + 3);
    /* what the caller records after that success */
    CU_ASSERT_EQUAL(otp_totp_drift(NULL, now, m), 3);
    CU_ASSERT_EQUAL(otp_totp_drift(NULL, now, cur + 7), OTP_MAX_DRIFT);
    CU_ASSERT_EQUAL(otp_totp_drift(NULL, now, cur - 9), -OTP_MAX_DRIFT);
    CU_ASSERT_EQUAL(otp_totp_drift(NULL, now, cur), 0);

    /* drift 10 acts as 4: steps cur+3..cur+5 */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead5, now, 1, OTP_NO_STEP, 10, &m), 0);
    CU_ASSERT_EQUAL(m, cur + 5);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead9, now, 1, OTP_NO_STEP, 9, &m), OTP_REFUSED);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead9, now, 1, OTP_NO_STEP, 8, &m), OTP_REFUSED);
    /* the current step is outside the window once drift 4 is applied */
    char current[OTP_CODE_BUF];
    ASSERT_OK(otp_hotp(key, n, (uint64_t)cur, 6, OTP_SHA1, current));
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, current, now, 1, OTP_NO_STEP, 100, &m), OTP_REFUSED);
    /* and negative drift: -10 acts as -4, steps cur-5..cur-3 */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, behind5, now, 1, OTP_NO_STEP, -10, &m), 0);
    CU_ASSERT_EQUAL(m, cur - 5);
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, behind6, now, 1, OTP_NO_STEP, -10, &m), OTP_REFUSED);
    /* drift does not reopen used steps */
    CU_ASSERT_EQUAL(otp_totp_verify(key, n, ahead3, now, 1, cur + 3, 2, &m), OTP_REPLAYED);
}

/* ---- Self-test (O11) ---- */

static void test_self_test(void)
{
    char err[256] = "untouched";
    CU_ASSERT_EQUAL(otp_self_test(err, sizeof err), 0);
    CU_ASSERT_STRING_EQUAL(err, "");
    CU_ASSERT_EQUAL(otp_self_test(NULL, 0), 0);

    /* what the self-test relies on: one flipped key byte changes the code */
    uint8_t key[20];
    memcpy(key, "12345678901234567890", 20);
    key[7] ^= 0x01;
    char got[OTP_CODE_BUF];
    ASSERT_OK(otp_hotp(key, sizeof key, 0, 6, OTP_SHA1, got));
    CU_ASSERT_STRING_NOT_EQUAL(got, "755224");
}

#ifdef ECOM_TESTABLE
static void test_self_test_catches_bad_key(void)
{
    uint8_t k20[20], k32[32], k64[64];
    memcpy(k20, "12345678901234567890", 20);
    memcpy(k32, "12345678901234567890123456789012", 32);
    memcpy(k64, "1234567890123456789012345678901234567890123456789012345678901234", 64);
    char err[256];
    ASSERT_OK(self_test_keys(k20, k32, k64, err, sizeof err));

    k20[19] ^= 0x80;
    CU_ASSERT_EQUAL(self_test_keys(k20, k32, k64, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "HOTP SHA1 count 0"));
    k20[19] ^= 0x80;

    k32[0] ^= 0x01;
    CU_ASSERT_EQUAL(self_test_keys(k20, k32, k64, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "TOTP SHA256 time 59"));
    k32[0] ^= 0x01;

    k64[63] ^= 0x01;
    CU_ASSERT_EQUAL(self_test_keys(k20, k32, k64, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "TOTP SHA512 time 59"));
    k64[63] ^= 0x01;

    ASSERT_OK(self_test_keys(k20, k32, k64, NULL, 0));
}

static void test_code_rejection_sampling(void)
{
    char out[OTP_CODE_LEN + 1];
    ASSERT_OK(code_from_draw(0, out));
    CU_ASSERT_STRING_EQUAL(out, "000000");
    ASSERT_OK(code_from_draw(1234567, out));
    CU_ASSERT_STRING_EQUAL(out, "234567");
    /* 4294000000 is the largest multiple of 10^6 below 2^32 */
    ASSERT_OK(code_from_draw(4293999999u, out));
    CU_ASSERT_STRING_EQUAL(out, "999999");
    CU_ASSERT_EQUAL(code_from_draw(4294000000u, out), -1);
    CU_ASSERT_EQUAL(code_from_draw(UINT32_MAX, out), -1);
}
#endif

/* ---- Codes and tickets (O1) ---- */

static void test_random_code(void)
{
    enum { DRAWS = 100000 };
    unsigned lead[10] = {0}, last[10] = {0};
    uint8_t *seen = calloc(1000000 / 8, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(seen);
    unsigned distinct = 0, malformed = 0;
    for (int i = 0; i < DRAWS; i++) {
        char code[OTP_CODE_LEN + 1];
        memset(code, 'x', sizeof code);
        otp_random_code(code);
        bool ok = strnlen(code, sizeof code) == OTP_CODE_LEN;
        for (int j = 0; ok && j < OTP_CODE_LEN; j++)
            ok = code[j] >= '0' && code[j] <= '9';
        if (!ok) {
            malformed++;
            continue;
        }
        lead[code[0] - '0']++;
        last[code[5] - '0']++;
        unsigned v = (unsigned)strtoul(code, NULL, 10);
        if (!(seen[v / 8] & (1u << (v % 8)))) {
            seen[v / 8] |= (uint8_t)(1u << (v % 8));
            distinct++;
        }
    }
    free(seen);
    CU_ASSERT_EQUAL(malformed, 0);
    /* each digit expects 10,000 (sd about 95): 8,000..12,000 cannot flake */
    for (int d = 0; d < 10; d++) {
        CU_ASSERT(lead[d] >= DRAWS * 8 / 100 && lead[d] <= DRAWS * 12 / 100);
        CU_ASSERT(last[d] >= DRAWS * 8 / 100 && last[d] <= DRAWS * 12 / 100);
    }
    /* 10^5 uniform draws from 10^6 give about 95,160 distinct values (sd < 100) */
    CU_ASSERT(distinct >= 94000);
}

static int cmp_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_ticket_ids(void)
{
    enum { N = 10000 };
    char(*ids)[OTP_TICKET_ID_LEN + 1] = calloc(N, sizeof *ids);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ids);
    unsigned bad = 0;
    for (int i = 0; i < N; i++) {
        otp_ticket_id(ids[i]);
        if (strlen(ids[i]) != OTP_TICKET_ID_LEN ||
            strspn(ids[i], "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != OTP_TICKET_ID_LEN ||
            !otp_ticket_id_valid(ids[i]))
            bad++;
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* every position carries randomness: all 64 characters show up at each one
     * (a given one is missing with probability (63/64)^10000, about e^-156) */
    static bool seen[OTP_TICKET_ID_LEN][128];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < OTP_TICKET_ID_LEN; j++)
            seen[j][(unsigned char)ids[i][j] & 127] = true;
    unsigned short_positions = 0;
    for (int j = 0; j < OTP_TICKET_ID_LEN; j++) {
        unsigned kinds = 0;
        for (int c = 0; c < 128; c++)
            kinds += seen[j][c];
        if (kinds != 64)
            short_positions++;
    }
    CU_ASSERT_EQUAL(short_positions, 0);
    qsort(ids, N, sizeof *ids, cmp_ids);
    unsigned dups = 0;
    for (int i = 1; i < N; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0)
            dups++;
    CU_ASSERT_EQUAL(dups, 0);
    free(ids);

    CU_ASSERT_FALSE(otp_ticket_id_valid(NULL));
    CU_ASSERT_FALSE(otp_ticket_id_valid(""));
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));   /* 31 */
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")); /* 33 */
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+"));
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/"));
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    CU_ASSERT_FALSE(otp_ticket_id_valid("AAAAAAAAAAAAAAAA AAAAAAAAAAAAAAA"));
    CU_ASSERT_TRUE(otp_ticket_id_valid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-_"));
}

/* ---- Storage MAC (O9) ---- */

static void test_code_mac(void)
{
    const uint8_t pepper[] = "a pepper of thirty-two bytes....";
    const size_t plen = sizeof pepper - 1;
    char a[OTP_MAC_HEX_LEN + 1], b[OTP_MAC_HEX_LEN + 1];

    ASSERT_OK(otp_code_mac(pepper, plen, "tenantA", "tk1", "123456", a));
    CU_ASSERT_EQUAL(strlen(a), OTP_MAC_HEX_LEN);
    CU_ASSERT_EQUAL(strspn(a, "0123456789abcdef"), OTP_MAC_HEX_LEN);
    ASSERT_OK(otp_code_mac(pepper, plen, "tenantA", "tk1", "123456", b));
    CU_ASSERT_STRING_EQUAL(a, b);
    CU_ASSERT_TRUE(otp_mac_equal(a, b));

    /* the exact construction: HMAC-SHA-256(pepper, tenant 0x00 ticket 0x00 code) */
    const uint8_t msg[] = "tenantA\0tk1\0"
                          "123456";
    uint8_t raw[32];
    unsigned raw_len = 0;
    CU_ASSERT_PTR_NOT_NULL_FATAL(HMAC(EVP_sha256(), pepper, (int)plen, msg, sizeof msg - 1, raw, &raw_len));
    char want[OTP_MAC_HEX_LEN + 1];
    for (unsigned i = 0; i < raw_len; i++)
        snprintf(want + 2 * i, 3, "%02x", raw[i]);
    CU_ASSERT_STRING_EQUAL(a, want);

    /* every field matters */
    ASSERT_OK(otp_code_mac(pepper, plen, "tenantB", "tk1", "123456", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    ASSERT_OK(otp_code_mac(pepper, plen, "tenantA", "tk2", "123456", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    ASSERT_OK(otp_code_mac(pepper, plen, "tenantA", "tk1", "123457", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    ASSERT_OK(otp_code_mac((const uint8_t *)"another pepper", 14, "tenantA", "tk1", "123456", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));

    /* the separators: moving a character across a field boundary changes the MAC */
    ASSERT_OK(otp_code_mac(pepper, plen, "ab", "c", "123456", a));
    ASSERT_OK(otp_code_mac(pepper, plen, "a", "bc", "123456", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    ASSERT_OK(otp_code_mac(pepper, plen, "t", "tk1", "123456", a));
    ASSERT_OK(otp_code_mac(pepper, plen, "t", "tk11", "23456", b));
    CU_ASSERT_FALSE(otp_mac_equal(a, b));

    /* equality: one character, length, NULL */
    strcpy(b, a);
    CU_ASSERT_TRUE(otp_mac_equal(a, b));
    b[OTP_MAC_HEX_LEN - 1] = b[OTP_MAC_HEX_LEN - 1] == '0' ? '1' : '0';
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    strcpy(b, a);
    b[0] = b[0] == '0' ? '1' : '0';
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    strcpy(b, a);
    b[OTP_MAC_HEX_LEN - 1] = '\0';
    CU_ASSERT_FALSE(otp_mac_equal(a, b));
    CU_ASSERT_FALSE(otp_mac_equal(b, b)); /* 63 characters is not a MAC */
    CU_ASSERT_FALSE(otp_mac_equal(a, NULL));
    CU_ASSERT_FALSE(otp_mac_equal(NULL, a));
    CU_ASSERT_FALSE(otp_mac_equal("", ""));

    /* refused inputs leave an empty string */
    CU_ASSERT_EQUAL(otp_code_mac(pepper, 0, "t", "tk", "1", a), -1);
    CU_ASSERT_STRING_EQUAL(a, "");
    CU_ASSERT_EQUAL(otp_code_mac(NULL, 4, "t", "tk", "1", a), -1);
    CU_ASSERT_EQUAL(otp_code_mac(pepper, plen, NULL, "tk", "1", a), -1);
    CU_ASSERT_EQUAL(otp_code_mac(pepper, plen, "t", NULL, "1", a), -1);
    CU_ASSERT_EQUAL(otp_code_mac(pepper, plen, "t", "tk", NULL, a), -1);
}

/* ---- HOTP arguments and names ---- */

static void test_hotp_arguments(void)
{
    const uint8_t *key = (const uint8_t *)"12345678901234567890";
    char out[OTP_CODE_BUF];
    CU_ASSERT_EQUAL(otp_hotp(key, 20, 0, 5, OTP_SHA1, out), -1);
    CU_ASSERT_STRING_EQUAL(out, "");
    CU_ASSERT_EQUAL(otp_hotp(key, 20, 0, 9, OTP_SHA1, out), -1);
    CU_ASSERT_EQUAL(otp_hotp(NULL, 20, 0, 6, OTP_SHA1, out), -1);
    CU_ASSERT_EQUAL(otp_hotp(key, 0, 0, 6, OTP_SHA1, out), -1);
    CU_ASSERT_EQUAL(otp_hotp(key, 20, 0, 6, (otp_hash_t)7, out), -1);
    CU_ASSERT_EQUAL(otp_hotp(key, 20, 0, 6, OTP_SHA1, NULL), -1);
    /* 7 digits: the same truncated value, 1284755224 mod 10^7 */
    ASSERT_OK(otp_hotp(key, 20, 0, 7, OTP_SHA1, out));
    CU_ASSERT_STRING_EQUAL(out, "4755224");
    /* the counter is 8 bytes big-endian: 2^32 is not 0 */
    char high[OTP_CODE_BUF];
    ASSERT_OK(otp_hotp(key, 20, UINT64_C(1) << 32, 6, OTP_SHA1, high));
    CU_ASSERT_STRING_NOT_EQUAL(high, "755224");

    int64_t step;
    CU_ASSERT_EQUAL(otp_totp_step(59, 0, 0, &step), -1);
    CU_ASSERT_EQUAL(otp_totp_step(29, 30, 30, &step), -1);
    CU_ASSERT_EQUAL(otp_totp_step(INT64_MAX, 30, -1, &step), -1);
    ASSERT_OK(otp_totp_step(INT64_MAX, 30, 0, &step));
    CU_ASSERT_EQUAL(step, INT64_MAX / 30);
    CU_ASSERT_EQUAL(otp_totp(key, 20, 29, 30, 30, 6, OTP_SHA1, out), -1);
    CU_ASSERT_STRING_EQUAL(out, "");

    otp_hash_t h;
    ASSERT_OK(otp_hash_from_name("sha-256", &h));
    CU_ASSERT_EQUAL(h, OTP_SHA256);
    ASSERT_OK(otp_hash_from_name("SHA512", &h));
    CU_ASSERT_EQUAL(h, OTP_SHA512);
    CU_ASSERT_EQUAL(otp_hash_from_name("MD5", &h), -1);
    CU_ASSERT_STRING_EQUAL(otp_hash_name(OTP_SHA1), "SHA1");
}

/* ---- Enrolment: base32, secrets, the URI ---- */

static void test_base32(void)
{
    static const struct {
        const char *plain, *enc;
    } rfc[] = {
        {"", ""},
        {"f", "MY"},
        {"fo", "MZXQ"},
        {"foo", "MZXW6"},
        {"foob", "MZXW6YQ"},
        {"fooba", "MZXW6YTB"},
        {"foobar", "MZXW6YTBOI"},
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(rfc); i++) {
        size_t n = strlen(rfc[i].plain);
        char enc[32];
        ASSERT_OK(otp_base32_encode((const uint8_t *)rfc[i].plain, n, enc, sizeof enc));
        CU_ASSERT_STRING_EQUAL(enc, rfc[i].enc);
        CU_ASSERT_EQUAL(strlen(enc), OTP_BASE32_LEN(n));
        uint8_t dec[32];
        size_t dec_len = 99;
        ASSERT_OK(otp_base32_decode(rfc[i].enc, dec, sizeof dec, &dec_len));
        CU_ASSERT_EQUAL(dec_len, n);
        CU_ASSERT(memcmp(dec, rfc[i].plain, n) == 0);
    }

    uint8_t dec[32];
    size_t len;
    /* lower case and RFC 4648 padding are accepted */
    ASSERT_OK(otp_base32_decode("mzxw6ytboi", dec, sizeof dec, &len));
    CU_ASSERT(len == 6 && memcmp(dec, "foobar", 6) == 0);
    ASSERT_OK(otp_base32_decode("MY======", dec, sizeof dec, &len));
    CU_ASSERT(len == 1 && dec[0] == 'f');
    ASSERT_OK(otp_base32_decode("MZXW6===", dec, sizeof dec, &len));
    CU_ASSERT(len == 3 && memcmp(dec, "foo", 3) == 0);
    ASSERT_OK(otp_base32_decode("MZXW6YTBOI======", dec, sizeof dec, &len));
    CU_ASSERT(len == 6 && memcmp(dec, "foobar", 6) == 0);
    /* refused: impossible lengths, bad characters, non-canonical bits, bad padding */
    const char *bad[] = {"M", "MZX", "MZXW6Y", "MZ", "MY1", "M Y", "MY=", "MY=====", "MY==MY==", "=", "MZXW6YTB="};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad); i++)
        CU_ASSERT_EQUAL(otp_base32_decode(bad[i], dec, sizeof dec, &len), -1);
    /* capacities */
    CU_ASSERT_EQUAL(otp_base32_decode("MZXW6YTBOI", dec, 5, &len), -1);
    char small[10];
    CU_ASSERT_EQUAL(otp_base32_encode((const uint8_t *)"foobar", 6, small, sizeof small), -1);
    char exact[11];
    ASSERT_OK(otp_base32_encode((const uint8_t *)"foobar", 6, exact, sizeof exact));

    /* random round trips at every length up to 64 */
    for (size_t n = 0; n <= 64; n++) {
        uint8_t raw[64], back[64];
        char enc[OTP_BASE32_LEN(64) + 1];
        for (size_t i = 0; i < n; i++)
            raw[i] = (uint8_t)(i * 37 + n * 11 + 5);
        ASSERT_OK(otp_base32_encode(raw, n, enc, sizeof enc));
        size_t back_len = 0;
        ASSERT_OK(otp_base32_decode(enc, back, sizeof back, &back_len));
        CU_ASSERT_EQUAL(back_len, n);
        CU_ASSERT(memcmp(raw, back, n) == 0);
    }
}

static void test_secret_and_uri(void)
{
    uint8_t s1[OTP_SECRET_LEN], s2[OTP_SECRET_LEN];
    ASSERT_OK(otp_secret_new(s1, sizeof s1));
    ASSERT_OK(otp_secret_new(s2, sizeof s2));
    CU_ASSERT(memcmp(s1, s2, sizeof s1) != 0);
    CU_ASSERT_EQUAL(otp_secret_new(s1, OTP_SECRET_MIN_LEN - 1), -1);
    CU_ASSERT_EQUAL(otp_secret_new(NULL, sizeof s1), -1);

    char b32[OTP_BASE32_LEN(OTP_SECRET_LEN) + 1];
    ASSERT_OK(otp_base32_encode(s1, sizeof s1, b32, sizeof b32));
    CU_ASSERT_EQUAL(strlen(b32), 32);

    char uri[512], want[512];
    ASSERT_OK(otp_uri(uri, sizeof uri, "ACME Co", "alice:smith@example.com", b32, 6, 30));
    snprintf(want, sizeof want,
             "otpauth://totp/ACME%%20Co:alice%%3Asmith@example.com?secret=%s"
             "&issuer=ACME%%20Co&algorithm=SHA1&digits=6&period=30",
             b32);
    CU_ASSERT_STRING_EQUAL(uri, want);

    /* query delimiters and non-ASCII bytes in the issuer are escaped too */
    ASSERT_OK(otp_uri(uri, sizeof uri, "A&B=C/\xc3\xa9", "bob", "MZXW6YTBOI", 8, 60));
    CU_ASSERT_STRING_EQUAL(uri, "otpauth://totp/A%26B%3DC%2F%C3%A9:bob?secret=MZXW6YTBOI"
                                "&issuer=A%26B%3DC%2F%C3%A9&algorithm=SHA1&digits=8&period=60");
    /* without an issuer */
    ASSERT_OK(otp_uri(uri, sizeof uri, NULL, "bob smith", "MZXW6YTBOI", 6, 30));
    CU_ASSERT_STRING_EQUAL(uri, "otpauth://totp/bob%20smith?secret=MZXW6YTBOI&algorithm=SHA1&digits=6&period=30");

    /* refused: bad secret, digits, period, account; too small a buffer */
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "mzxw6", 6, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "MZXW6&x=1", 6, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "", 6, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "MZXW6", 5, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "MZXW6", 9, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "a", "MZXW6", 6, 0), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, sizeof uri, "I", "", "MZXW6", 6, 30), -1);
    CU_ASSERT_EQUAL(otp_uri(uri, 40, "ACME Co", "alice", b32, 6, 30), -1);
    CU_ASSERT_STRING_EQUAL(uri, "");
    size_t full = strlen(want);
    ASSERT_OK(otp_uri(uri, full + 1, "ACME Co", "alice:smith@example.com", b32, 6, 30));
    CU_ASSERT_EQUAL(otp_uri(uri, full, "ACME Co", "alice:smith@example.com", b32, 6, 30), -1);

    /* enrolment to verification: the decoded secret verifies its own TOTP */
    uint8_t key[OTP_SECRET_MAX_LEN];
    size_t key_len = 0;
    ASSERT_OK(otp_base32_decode(b32, key, sizeof key, &key_len));
    CU_ASSERT(key_len == sizeof s1 && memcmp(key, s1, sizeof s1) == 0);
    char code[OTP_CODE_BUF];
    ASSERT_OK(otp_totp(key, key_len, 1700000000, 30, 0, 6, OTP_SHA1, code));
    int64_t m = -1;
    CU_ASSERT_EQUAL(otp_totp_verify(key, key_len, code, 1700000000 + 30, 1, OTP_NO_STEP, 0, &m), 0);
    CU_ASSERT_EQUAL(m, 1700000000 / 30);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"HOTP: every RFC 4226 vector from the file", test_hotp_vectors},
        {"TOTP: every RFC 6238 vector, 3 hashes, 8 and 6 digits, 64-bit T", test_totp_vectors},
        {"TOTP window vector: accept, reject, replay, older step", test_window_case},
        {"TOTP verify: window 0, step 0, malformed codes, parameters", test_verify_edges},
        {"TOTP drift: learned, applied, clamped to 4", test_drift},
        {"self-test passes; a flipped key byte changes the code", test_self_test},
#ifdef ECOM_TESTABLE
        {"self-test fails on a corrupted key", test_self_test_catches_bad_key},
        {"code draws at or above 4294000000 are rejected", test_code_rejection_sampling},
#endif
        {"random codes: 6 digits, no gross bias", test_random_code},
        {"ticket ids: unique, 32 base64url characters", test_ticket_ids},
        {"code MAC: exact construction, fields, separators, equality", test_code_mac},
        {"HOTP arguments, step arithmetic, hash names", test_hotp_arguments},
        {"base32: RFC 4648 vectors, strict decoding, round trips", test_base32},
        {"enrolment: secret, otpauth URI escaping, round trip", test_secret_and_uri},
        CU_TEST_INFO_NULL,
    };
    return test_main("authx_otp", tests, setup, teardown);
}
