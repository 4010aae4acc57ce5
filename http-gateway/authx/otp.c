/* http-gateway/authx/otp.c: see otp.h.
 *
 * Codes are written digit by digit from the right rather than with printf, so a
 * code is always exactly `digits` characters. Key material and computed codes are
 * wiped from the stack with OPENSSL_cleanse before returning. */
#include "http-gateway/authx/otp.h"

#include "core/uuid.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define MAX_KEY_LEN 1024 /* HOTP keys longer than this are a caller's mistake */

static const uint32_t pow10_table[OTP_MAX_DIGITS + 1] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000,
};

static const EVP_MD *md_of(otp_hash_t hash)
{
    switch (hash) {
    case OTP_SHA1: return EVP_sha1();
    case OTP_SHA256: return EVP_sha256();
    case OTP_SHA512: return EVP_sha512();
    }
    return NULL;
}

const char *otp_hash_name(otp_hash_t hash)
{
    switch (hash) {
    case OTP_SHA1: return "SHA1";
    case OTP_SHA256: return "SHA256";
    case OTP_SHA512: return "SHA512";
    }
    return "?";
}

int otp_hash_from_name(const char *name, otp_hash_t *out)
{
    static const struct {
        const char *name;
        otp_hash_t hash;
    } names[] = {
        {"SHA1", OTP_SHA1},      {"SHA-1", OTP_SHA1},    {"SHA256", OTP_SHA256},
        {"SHA-256", OTP_SHA256}, {"SHA512", OTP_SHA512}, {"SHA-512", OTP_SHA512},
    };
    if (!name || !out)
        return -1;
    for (size_t i = 0; i < ECOM_ARRAY_LEN(names); i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].hash;
            return 0;
        }
    }
    return -1;
}

/* value mod 10^digits as exactly `digits` characters plus NUL. */
static void put_digits(uint32_t value, int digits, char *out)
{
    value %= pow10_table[digits];
    for (int i = digits - 1; i >= 0; i--) {
        out[i] = (char)('0' + value % 10);
        value /= 10;
    }
    out[digits] = '\0';
}

/* ---- HOTP / TOTP ---- */

int otp_hotp(const uint8_t *key, size_t key_len, uint64_t counter, int digits, otp_hash_t hash, char *out)
{
    if (!out)
        return -1;
    out[0] = '\0';
    const EVP_MD *md = md_of(hash);
    if (!key || key_len == 0 || key_len > MAX_KEY_LEN || digits < OTP_MIN_DIGITS || digits > OTP_MAX_DIGITS || !md)
        return -1;

    uint8_t msg[8];
    for (int i = 7; i >= 0; i--) {
        msg[i] = (uint8_t)(counter & 0xff);
        counter >>= 8;
    }
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    if (!HMAC(md, key, (int)key_len, msg, sizeof msg, mac, &mac_len) || mac_len < 20)
        return -1;

    /* RFC 4226 §5.3 dynamic truncation: the low nibble of the last byte picks
     * four bytes, of which the top bit is dropped. */
    unsigned off = mac[mac_len - 1] & 0x0f;
    uint32_t bin = (uint32_t)(mac[off] & 0x7f) << 24 | (uint32_t)mac[off + 1] << 16 | (uint32_t)mac[off + 2] << 8 |
                   (uint32_t)mac[off + 3];
    put_digits(bin, digits, out);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

int otp_totp_step(int64_t unix_time, int step_s, int64_t t0, int64_t *step)
{
    int64_t since;
    if (!step || step_s < 1 || step_s > OTP_MAX_STEP_S || __builtin_sub_overflow(unix_time, t0, &since) || since < 0)
        return -1;
    *step = since / step_s; /* since >= 0, so this is the floor */
    return 0;
}

int otp_totp(const uint8_t *key, size_t key_len, int64_t unix_time, int step_s, int64_t t0, int digits, otp_hash_t hash,
             char *out)
{
    int64_t step;
    if (otp_totp_step(unix_time, step_s, t0, &step) != 0) {
        if (out)
            out[0] = '\0';
        return -1;
    }
    return otp_hotp(key, key_len, (uint64_t)step, digits, hash, out);
}

static int clamp_drift(int64_t drift)
{
    if (drift > OTP_MAX_DRIFT)
        return OTP_MAX_DRIFT;
    if (drift < -OTP_MAX_DRIFT)
        return -OTP_MAX_DRIFT;
    return (int)drift;
}

static otp_totp_params_t resolve(const otp_totp_params_t *params)
{
    otp_totp_params_t p = params ? *params : (otp_totp_params_t){0};
    if (p.digits == 0)
        p.digits = OTP_DEFAULT_DIGITS;
    if (p.step_s == 0)
        p.step_s = OTP_DEFAULT_STEP_S;
    return p;
}

int otp_totp_verify_params(const otp_totp_params_t *params, const uint8_t *key, size_t key_len, const char *code,
                           int64_t now, int window, int64_t last_step, int drift, int64_t *matched_step)
{
    otp_totp_params_t p = resolve(params);
    if (!matched_step || !code || window < 0 || window > OTP_MAX_WINDOW || p.digits < OTP_MIN_DIGITS ||
        p.digits > OTP_MAX_DIGITS)
        return OTP_REFUSED;
    /* The shape of the submission is not secret: check it before any HMAC. */
    if (strnlen(code, (size_t)p.digits + 1) != (size_t)p.digits)
        return OTP_REFUSED;
    for (int i = 0; i < p.digits; i++)
        if (code[i] < '0' || code[i] > '9')
            return OTP_REFUSED;

    int64_t now_step;
    if (otp_totp_step(now, p.step_s, p.t0, &now_step) != 0 || now_step > INT64_MAX - OTP_MAX_DRIFT - OTP_MAX_WINDOW)
        return OTP_REFUSED;
    int64_t center = now_step + clamp_drift(drift);

    /* Every candidate is computed and compared, so the time taken does not
     * depend on which step (if any) matched. */
    int64_t accepted = -1;
    bool replayed = false, failed = false;
    char cand[OTP_CODE_BUF];
    for (int64_t s = center - window; s <= center + window; s++) {
        if (s < 0)
            continue;
        if (otp_hotp(key, key_len, (uint64_t)s, p.digits, p.hash, cand) != 0) {
            failed = true;
            continue;
        }
        bool eq = CRYPTO_memcmp(cand, code, (size_t)p.digits) == 0;
        if (eq && s > last_step && accepted < 0)
            accepted = s;
        else if (eq && s <= last_step)
            replayed = true;
    }
    OPENSSL_cleanse(cand, sizeof cand);
    if (failed)
        return OTP_REFUSED;
    if (accepted >= 0) {
        *matched_step = accepted;
        return 0;
    }
    return replayed ? OTP_REPLAYED : OTP_REFUSED;
}

int otp_totp_verify(const uint8_t *key, size_t key_len, const char *code, int64_t now, int window, int64_t last_step,
                    int drift, int64_t *matched_step)
{
    return otp_totp_verify_params(NULL, key, key_len, code, now, window, last_step, drift, matched_step);
}

int otp_totp_drift(const otp_totp_params_t *params, int64_t now, int64_t matched_step)
{
    otp_totp_params_t p = resolve(params);
    int64_t now_step;
    if (otp_totp_step(now, p.step_s, p.t0, &now_step) != 0 || matched_step < 0)
        return 0;
    return clamp_drift(matched_step - now_step);
}

/* ---- Known-answer test ---- */

/* RFC 4226 Appendix D: SHA-1, seed "12345678901234567890", 6 digits. */
static const char *const hotp_kat[] = {
    "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489",
};

/* RFC 6238 Appendix B: 8 digits, X = 30, T0 = 0, one seed per hash (erratum 2866). */
static const struct {
    int64_t time;
    int64_t step;
    otp_hash_t hash;
    const char *code;
} totp_kat[] = {
    {59, 0x1, OTP_SHA1, "94287082"},
    {59, 0x1, OTP_SHA256, "46119246"},
    {59, 0x1, OTP_SHA512, "90693936"},
    {1111111109, 0x23523EC, OTP_SHA1, "07081804"},
    {1111111109, 0x23523EC, OTP_SHA256, "68084774"},
    {1111111109, 0x23523EC, OTP_SHA512, "25091201"},
    {1111111111, 0x23523ED, OTP_SHA1, "14050471"},
    {1111111111, 0x23523ED, OTP_SHA256, "67062674"},
    {1111111111, 0x23523ED, OTP_SHA512, "99943326"},
    {1234567890, 0x273EF07, OTP_SHA1, "89005924"},
    {1234567890, 0x273EF07, OTP_SHA256, "91819424"},
    {1234567890, 0x273EF07, OTP_SHA512, "93441116"},
    {2000000000, 0x3F940AA, OTP_SHA1, "69279037"},
    {2000000000, 0x3F940AA, OTP_SHA256, "90698825"},
    {2000000000, 0x3F940AA, OTP_SHA512, "38618901"},
    {20000000000, 0x27BC86AA, OTP_SHA1, "65353130"},
    {20000000000, 0x27BC86AA, OTP_SHA256, "77737706"},
    {20000000000, 0x27BC86AA, OTP_SHA512, "47863826"},
};

static const char seed20[] = "12345678901234567890";
static const char seed32[] = "12345678901234567890123456789012";
static const char seed64[] = "1234567890123456789012345678901234567890123456789012345678901234";

#define FAIL(...)                                                                                                      \
    do {                                                                                                               \
        if (err && cap)                                                                                                \
            snprintf(err, cap, __VA_ARGS__);                                                                           \
        return -1;                                                                                                     \
    } while (0)

/* The self-test with the seeds passed in (k20, k32, k64: 20, 32 and 64 bytes),
 * so a unit test can show that a corrupted key is caught. */
TESTABLE int self_test_keys(const uint8_t *k20, const uint8_t *k32, const uint8_t *k64, char *err, size_t cap)
{
    char got[OTP_CODE_BUF];
    if (err && cap)
        err[0] = '\0';

    for (size_t i = 0; i < ECOM_ARRAY_LEN(hotp_kat); i++) {
        if (otp_hotp(k20, 20, i, 6, OTP_SHA1, got) != 0 || strcmp(got, hotp_kat[i]) != 0)
            FAIL("HOTP SHA1 count %zu: got '%s', want %s", i, got, hotp_kat[i]);
    }

    for (size_t i = 0; i < ECOM_ARRAY_LEN(totp_kat); i++) {
        const uint8_t *key = totp_kat[i].hash == OTP_SHA1 ? k20 : totp_kat[i].hash == OTP_SHA256 ? k32 : k64;
        size_t key_len = totp_kat[i].hash == OTP_SHA1 ? 20 : totp_kat[i].hash == OTP_SHA256 ? 32 : 64;
        const char *name = otp_hash_name(totp_kat[i].hash);
        int64_t step;
        if (otp_totp_step(totp_kat[i].time, 30, 0, &step) != 0 || step != totp_kat[i].step)
            FAIL("TOTP time %lld: wrong step", (long long)totp_kat[i].time);
        if (otp_totp(key, key_len, totp_kat[i].time, 30, 0, 8, totp_kat[i].hash, got) != 0 ||
            strcmp(got, totp_kat[i].code) != 0)
            FAIL("TOTP %s time %lld: got '%s', want %s", name, (long long)totp_kat[i].time, got, totp_kat[i].code);
        /* the 6-digit form is the value mod 10^6: the last six characters */
        if (otp_totp(key, key_len, totp_kat[i].time, 30, 0, 6, totp_kat[i].hash, got) != 0 ||
            strcmp(got, totp_kat[i].code + 2) != 0)
            FAIL("TOTP %s time %lld, 6 digits: got '%s', want %s", name, (long long)totp_kat[i].time, got,
                 totp_kat[i].code + 2);
    }

    /* authx.md §2.3: t = 59 (step 1), window 1: steps 0..2 pass, 3 and 4 do not;
     * once step 1 is used, its code and the code of step 0 are refused. */
    int64_t matched = -1;
    for (int s = 0; s <= 4; s++) {
        int rc = otp_totp_verify(k20, 20, hotp_kat[s], 59, 1, OTP_NO_STEP, 0, &matched);
        bool want = s <= 2;
        if ((rc == 0) != want || (want && matched != s))
            FAIL("TOTP window: code of step %d %s", s, want ? "refused" : "accepted");
    }
    if (otp_totp_verify(k20, 20, hotp_kat[1], 59, 1, OTP_NO_STEP, 0, &matched) != 0 || matched != 1)
        FAIL("TOTP window: code of step 1 refused");
    int64_t last = matched;
    if (otp_totp_verify(k20, 20, hotp_kat[1], 59, 1, last, 0, &matched) != OTP_REPLAYED)
        FAIL("TOTP replay: code of step 1 accepted twice");
    if (otp_totp_verify(k20, 20, hotp_kat[0], 59, 1, last, 0, &matched) != OTP_REPLAYED)
        FAIL("TOTP replay: code of step 0 accepted after step 1");
    return 0;
}

int otp_self_test(char *err, size_t cap)
{
    return self_test_keys((const uint8_t *)seed20, (const uint8_t *)seed32, (const uint8_t *)seed64, err, cap);
}

/* ---- Emailed / SMS codes ---- */

#define CODE_SPACE 1000000u
/* The largest multiple of 10^6 not above 2^32: draws at or above it are biased. */
#define CODE_LIMIT ((uint32_t)((UINT64_C(1) << 32) - ((UINT64_C(1) << 32) % CODE_SPACE)))

/* One 32-bit draw turned into a code, or -1 when the draw must be rejected. */
TESTABLE int code_from_draw(uint32_t draw, char out[OTP_CODE_LEN + 1])
{
    if (draw >= CODE_LIMIT)
        return -1;
    put_digits(draw % CODE_SPACE, OTP_CODE_LEN, out);
    return 0;
}

void otp_random_code(char out[OTP_CODE_LEN + 1])
{
    uint32_t draw;
    do {
        random_bytes(&draw, sizeof draw);
    } while (code_from_draw(draw, out) != 0);
    OPENSSL_cleanse(&draw, sizeof draw);
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void otp_ticket_id(char out[OTP_TICKET_ID_LEN + 1])
{
    uint8_t raw[OTP_TICKET_BYTES];
    random_bytes(raw, sizeof raw);
    size_t o = 0;
    for (size_t i = 0; i < sizeof raw; i += 3) { /* 24 bytes: whole groups only */
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
    _Static_assert(OTP_TICKET_BYTES % 3 == 0 && OTP_TICKET_BYTES / 3 * 4 == OTP_TICKET_ID_LEN, "ticket id length");
}

bool otp_ticket_id_valid(const char *s)
{
    if (!s || strnlen(s, OTP_TICKET_ID_LEN + 1) != OTP_TICKET_ID_LEN)
        return false;
    for (size_t i = 0; i < OTP_TICKET_ID_LEN; i++)
        if (!s[i] || !strchr(b64url, s[i]))
            return false;
    return true;
}

int otp_code_mac(const uint8_t *pepper, size_t pepper_len, const char *tenant, const char *ticket_id, const char *code,
                 char out_hex[OTP_MAC_HEX_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    static const uint8_t sep = 0x00;
    int rc = -1;
    EVP_MAC *mac = NULL;
    EVP_MAC_CTX *ctx = NULL;
    uint8_t out[32];
    size_t out_len = 0;

    if (!out_hex)
        return -1;
    out_hex[0] = '\0';
    if (!pepper || pepper_len == 0 || !tenant || !ticket_id || !code)
        return -1;

    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!mac || !(ctx = EVP_MAC_CTX_new(mac)))
        goto out;
    if (!EVP_MAC_init(ctx, pepper, pepper_len, params) ||
        !EVP_MAC_update(ctx, (const uint8_t *)tenant, strlen(tenant)) || !EVP_MAC_update(ctx, &sep, 1) ||
        !EVP_MAC_update(ctx, (const uint8_t *)ticket_id, strlen(ticket_id)) || !EVP_MAC_update(ctx, &sep, 1) ||
        !EVP_MAC_update(ctx, (const uint8_t *)code, strlen(code)) || !EVP_MAC_final(ctx, out, &out_len, sizeof out) ||
        out_len != sizeof out)
        goto out;
    for (size_t i = 0; i < sizeof out; i++) {
        out_hex[2 * i] = hex[out[i] >> 4];
        out_hex[2 * i + 1] = hex[out[i] & 0x0f];
    }
    out_hex[OTP_MAC_HEX_LEN] = '\0';
    rc = 0;
out:
    OPENSSL_cleanse(out, sizeof out);
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

bool otp_mac_equal(const char *a_hex, const char *b_hex)
{
    if (!a_hex || !b_hex || strnlen(a_hex, OTP_MAC_HEX_LEN + 1) != OTP_MAC_HEX_LEN ||
        strnlen(b_hex, OTP_MAC_HEX_LEN + 1) != OTP_MAC_HEX_LEN)
        return false;
    return CRYPTO_memcmp(a_hex, b_hex, OTP_MAC_HEX_LEN) == 0;
}

/* ---- TOTP enrolment ---- */

int otp_secret_new(uint8_t *out, size_t len)
{
    if (!out || len < OTP_SECRET_MIN_LEN || len > OTP_SECRET_MAX_LEN)
        return -1;
    random_bytes(out, len);
    return 0;
}

static const char b32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

int otp_base32_encode(const uint8_t *in, size_t len, char *out, size_t cap)
{
    if (!out || (!in && len) || len > (SIZE_MAX - 4) / 8 || cap < OTP_BASE32_LEN(len) + 1)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8 | in[i]) & 0xfff; /* at most 4 + 8 live bits */
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = b32[(acc >> bits) & 31];
        }
    }
    if (bits > 0)
        out[o++] = b32[(acc << (5 - bits)) & 31];
    out[o] = '\0';
    return 0;
}

static int b32_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a';
    if (c >= '2' && c <= '7')
        return c - '2' + 26;
    return -1;
}

int otp_base32_decode(const char *in, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!in || !out_len || (!out && cap))
        return -1;
    size_t total = strlen(in), n = total;
    while (n > 0 && in[n - 1] == '=')
        n--;
    /* a final group of 1, 3 or 6 characters cannot come from whole bytes */
    size_t rem = n % 8;
    if (rem == 1 || rem == 3 || rem == 6)
        return -1;
    if (total != n && (total % 8 != 0 || total - n != (rem ? 8 - rem : 8)))
        return -1; /* padding present but not the padding RFC 4648 writes */
    size_t need = n * 5 / 8;
    if (need > cap)
        return -1;

    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b32_value(in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 5 | (uint32_t)v) & 0x1fff; /* at most 7 + 5 live bits */
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return -1; /* non-zero leftover bits: not the canonical encoding */
    *out_len = o;
    return 0;
}

/* A bounded string builder: writes stop at the capacity and mark it overflowed. */
typedef struct sbuf {
    char *p;
    size_t cap, len;
    bool overflow;
} sbuf_t;

static void put_char(sbuf_t *b, char c)
{
    if (b->len + 1 >= b->cap) {
        b->overflow = true;
        return;
    }
    b->p[b->len++] = c;
    b->p[b->len] = '\0';
}

static void put_str(sbuf_t *b, const char *s)
{
    while (*s)
        put_char(b, *s++);
}

/* Percent-encodes all but RFC 3986 unreserved characters and '@'. */
static void put_escaped(sbuf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~' || c == '@') {
            put_char(b, (char)c);
        } else {
            put_char(b, '%');
            put_char(b, hex[c >> 4]);
            put_char(b, hex[c & 0x0f]);
        }
    }
}

int otp_uri(char *out, size_t cap, const char *issuer, const char *account, const char *secret_b32, int digits,
            int period)
{
    if (!out || cap == 0)
        return -1;
    out[0] = '\0';
    if (!account || !*account || !secret_b32 || !*secret_b32 || digits < OTP_MIN_DIGITS || digits > OTP_MAX_DIGITS ||
        period < 1 || period > OTP_MAX_STEP_S)
        return -1;
    for (const char *c = secret_b32; *c; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= '2' && *c <= '7')))
            return -1;

    bool has_issuer = issuer && *issuer;
    char num[64];
    sbuf_t b = {.p = out, .cap = cap};
    put_str(&b, "otpauth://totp/");
    if (has_issuer) {
        put_escaped(&b, issuer);
        put_char(&b, ':');
    }
    put_escaped(&b, account);
    put_str(&b, "?secret=");
    put_str(&b, secret_b32);
    if (has_issuer) {
        put_str(&b, "&issuer=");
        put_escaped(&b, issuer);
    }
    snprintf(num, sizeof num, "&algorithm=SHA1&digits=%d&period=%d", digits, period);
    put_str(&b, num);
    if (b.overflow) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}
