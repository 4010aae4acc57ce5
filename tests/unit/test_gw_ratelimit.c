/* tests/unit/test_gw_ratelimit.c: GCRA on a fake timeline: the burst, the
 * steady rate, no double burst at a window boundary, Retry-After, remaining,
 * independent keys, and the table's bound. */
#include "http-gateway/ratelimit.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <string.h>

static int admitted(rl_t *rl, const char *key, const rl_limit_t *lim, int64_t at, int tries)
{
    int n = 0;
    rl_result_t r;
    for (int i = 0; i < tries; i++) {
        rl_take(rl, key, lim, at, &r);
        n += r.allowed;
    }
    return n;
}

static void test_burst_and_rate(void)
{
    rl_t *rl = rl_new(1000);
    rl_limit_t lim = {.count = 10, .period_ms = 1000, .burst = 4}; /* 10/s, 5 at once */
    int64_t t0 = 1000000;
    rl_result_t r;
    rl_take(rl, "k", &lim, t0, &r);
    CU_ASSERT_TRUE(r.allowed);
    CU_ASSERT_EQUAL(r.remaining, 4);
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, t0, 10), 4); /* 5 in all at once */
    rl_take(rl, "k", &lim, t0, &r);
    CU_ASSERT_FALSE(r.allowed);
    CU_ASSERT_EQUAL(r.remaining, 0);
    CU_ASSERT_EQUAL(r.retry_after_ms, 100); /* one emission interval */
    CU_ASSERT_EQUAL(r.reset_ms, 500);
    /* then one per 100 ms */
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, t0 + 99, 3), 0);
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, t0 + 100, 3), 1);
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, t0 + 200, 3), 1);
    /* over a long run the average is the rate: 10 s at 1 ms steps admits about 100 */
    int n = 0;
    for (int64_t t = t0 + 1000; t < t0 + 11000; t++)
        n += admitted(rl, "k", &lim, t, 1);
    CU_ASSERT_TRUE(n >= 100 && n <= 100 + 5);
    /* a quiet spell restores the burst, never more */
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, t0 + 60000, 20), 5);
    /* other keys are independent */
    CU_ASSERT_EQUAL(admitted(rl, "other", &lim, t0 + 60000, 20), 5);
    rl_free(rl);
}

/* a fixed window would admit 2x at its edge; GCRA does not */
static void test_no_boundary_burst(void)
{
    rl_t *rl = rl_new(1000);
    rl_limit_t lim = {.count = 60, .period_ms = 60000, .burst = 0}; /* one per second */
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, 59999, 5), 1);
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, 60000, 5), 0);
    CU_ASSERT_EQUAL(admitted(rl, "k", &lim, 60999, 5), 1);
    rl_free(rl);
}

static void test_fast_limits_and_bounds(void)
{
    rl_t *rl = rl_new(32);
    /* one per 333 us; requests arrive on a 1 ms clock, so a burst of 3 lets
     * the rate through (with no burst, strict spacing admits one per tick) */
    rl_limit_t lim = {.count = 3000, .period_ms = 1000, .burst = 3};
    int n = 0;
    for (int64_t t = 0; t < 1000; t++)
        n += admitted(rl, "k", &lim, 1000000 + t, 10);
    CU_ASSERT_TRUE(n >= 2990 && n <= 3005);
    rl_limit_t strict = {.count = 3000, .period_ms = 1000, .burst = 0};
    n = 0;
    for (int64_t t = 0; t < 1000; t++)
        n += admitted(rl, "strict", &strict, 1000000 + t, 10);
    CU_ASSERT_EQUAL(n, 1000);
    rl_limit_t none = {0};
    CU_ASSERT_EQUAL(admitted(rl, "k", &none, 0, 50), 50);
    /* the table stays bounded: keys back at a full burst are dropped */
    rl_limit_t slow = {.count = 1, .period_ms = 1000, .burst = 0};
    for (int i = 0; i < 1000; i++) {
        char key[32];
        snprintf(key, sizeof key, "key-%d", i);
        admitted(rl, key, &slow, 5000000 + (int64_t)i * 2000, 1);
    }
    CU_ASSERT_TRUE(rl_keys(rl) <= 32 + 16);
    rl_free(rl);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"burst, steady rate, retry-after, remaining", test_burst_and_rate},
        {"no double burst at a window boundary", test_no_boundary_burst},
        {"fast limits and the table's bound", test_fast_limits_and_bounds},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_ratelimit", tests, NULL, NULL);
}
