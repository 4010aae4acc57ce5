/* core/pgarray.c: see pgarray.h. Integers are big-endian on the wire. */
#include "core/pgarray.h"

#include "core/alloc.h"
#include "core/uuid.h"

#include <stdlib.h>
#include <string.h>

static void put(pg_array_t *a, const void *p, size_t n)
{
    if (a->len + n > a->cap) {
        a->cap = (a->len + n) * 2;
        a->buf = xrealloc(a->buf, a->cap);
    }
    memcpy(a->buf + a->len, p, n);
    a->len += n;
}

static void u32(pg_array_t *a, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    put(a, b, 4);
}

void pg_array_begin(pg_array_t *a, uint32_t elem_oid, size_t n)
{
    a->len = 0;
    u32(a, 1); /* dimensions */
    u32(a, 0); /* no NULLs */
    u32(a, elem_oid);
    u32(a, (uint32_t)n);
    u32(a, 1); /* lower bound */
}

void pg_array_text(pg_array_t *a, const char *s)
{
    size_t n = strlen(s);
    u32(a, (uint32_t)n);
    put(a, s, n);
}

void pg_array_int8(pg_array_t *a, int64_t v)
{
    uint64_t u = (uint64_t)v;
    u32(a, 8);
    u32(a, (uint32_t)(u >> 32));
    u32(a, (uint32_t)u);
}

void pg_array_bool(pg_array_t *a, bool v)
{
    unsigned char b = v ? 1 : 0;
    u32(a, 1);
    put(a, &b, 1);
}

void pg_array_timestamptz_ms(pg_array_t *a, int64_t unix_ms)
{
    /* timestamptz_recv: microseconds since 2000-01-01 00:00 UTC */
    pg_array_int8(a, (unix_ms - 946684800000LL) * 1000);
}

int pg_array_uuid(pg_array_t *a, const char *s)
{
    unsigned char b[16];
    size_t k = 0;
    for (const char *p = s; *p; p++) {
        if (*p == '-')
            continue;
        int hi = hex_digit(p[0]), lo = p[1] ? hex_digit(p[1]) : -1;
        if (hi < 0 || lo < 0 || k == 16)
            return -1;
        b[k++] = (unsigned char)(hi << 4 | lo);
        p++;
    }
    if (k != 16)
        return -1;
    u32(a, 16);
    put(a, b, 16);
    return 0;
}

void pg_array_free(pg_array_t *a)
{
    free(a->buf);
    memset(a, 0, sizeof *a);
}

void pg_array_params(pg_array_t *a, int n, uint32_t count, const char **vals, int *lens, int *fmts)
{
    for (int k = 0; k < n; k++) {
        unsigned char *h = a[k].buf + 12; /* the header's fourth word: the element count */
        h[0] = (unsigned char)(count >> 24);
        h[1] = (unsigned char)(count >> 16);
        h[2] = (unsigned char)(count >> 8);
        h[3] = (unsigned char)count;
        vals[k] = (const char *)a[k].buf;
        lens[k] = (int)a[k].len;
        fmts[k] = 1;
    }
}
