/* core/uuid.c: see uuid.h. */
#include "core/uuid.h"

#include "core/alloc.h"
#include "core/clock.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

void random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t got = getrandom(p, n, 0);
        ECOM_ASSERT(got > 0);
        p += got;
        n -= (size_t)got;
    }
}

/* xoshiro256** per thread, reseeded from the CSPRNG every 2^20 outputs */
static _Thread_local uint64_t fs[4];
static _Thread_local uint32_t fs_left;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t fast_next(void)
{
    if (fs_left == 0) {
        do
            random_bytes(fs, sizeof fs);
        while (!(fs[0] | fs[1] | fs[2] | fs[3]));
        fs_left = 1u << 20;
    }
    fs_left--;
    uint64_t result = rotl(fs[1] * 5, 7) * 9;
    uint64_t t = fs[1] << 17;
    fs[2] ^= fs[0];
    fs[3] ^= fs[1];
    fs[1] ^= fs[2];
    fs[0] ^= fs[3];
    fs[2] ^= t;
    fs[3] = rotl(fs[3], 45);
    return result;
}

void random_fast_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        uint64_t v = fast_next();
        size_t k = n < 8 ? n : 8;
        memcpy(p, &v, k);
        p += k;
        n -= k;
    }
}

int hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static void to_hex(const unsigned char *b, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
}

void random_fast_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    ECOM_ASSERT(nbytes <= sizeof b);
    random_fast_bytes(b, nbytes);
    to_hex(b, nbytes, out);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_ms;
static unsigned counter;

static void format(const unsigned char b[16], char out[UUID_STR_LEN])
{
    snprintf(out, UUID_STR_LEN, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

void uuid_v7(char out[UUID_STR_LEN])
{
    unsigned char b[16];
    random_fast_bytes(b, sizeof b);
    int64_t ms = clock_now_ms();
    pthread_mutex_lock(&mu);
    if (ms <= last_ms) {
        if (++counter > 0xfff) { /* counter exhausted: borrow the next ms */
            counter = 0;
            last_ms++;
        }
        ms = last_ms;
    } else {
        last_ms = ms;
        counter = (unsigned)(b[6] & 0x03) << 8 | b[7]; /* random start leaves room */
    }
    unsigned c = counter;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (c >> 8));
    b[7] = (unsigned char)c;
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    format(b, out);
}

void uuid_v7_derived(char out[UUID_STR_LEN], int64_t ms, const char *name)
{
    unsigned char md[EVP_MAX_MD_SIZE], b[16];
    unsigned int n = 0;
    ECOM_ASSERT(EVP_Digest(name, strlen(name), md, &n, EVP_sha256(), NULL) == 1 && n >= 16);
    memcpy(b, md, sizeof b);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f));
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    format(b, out);
}

int64_t uuid_v7_ms(const char *s)
{
    if (!uuid_valid(s) || s[14] != '7')
        return -1;
    int64_t ms = 0;
    for (int i = 0; i < 13; i++) { /* 8 hex, the hyphen, 4 hex */
        if (i == 8)
            continue;
        char c = s[i];
        ms = ms << 4 | (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return ms;
}

bool uuid_valid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

void uuid_lower(const char *in, char out[UUID_STR_LEN])
{
    for (int i = 0; i < 36; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[36] = '\0';
}

void random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    ECOM_ASSERT(nbytes <= sizeof b);
    random_bytes(b, nbytes);
    to_hex(b, nbytes, out);
}
