/* tests/unit/test_gw_hedge.c: hedge budget and adaptive delay. */
#include "http-gateway/hedge.h"

#include "tests/testlib.h"

#include <pthread.h>
#include <string.h>

static void test_budget_grpc(void)
{
    hedge_budget_t b;
    hedge_budget_init(&b, 0, 0); /* defaults: 10 tokens, ratio 0.1 */
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 10.0, 1e-9);
    CU_ASSERT_TRUE(hedge_budget_allows(&b));
    for (int i = 0; i < 4; i++)
        hedge_budget_record(&b, false);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 6.0, 1e-9);
    CU_ASSERT_TRUE(hedge_budget_allows(&b));
    hedge_budget_record(&b, false);
    /* 5 = max/2: no hedges while tokens <= max/2 */
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 5.0, 1e-9);
    CU_ASSERT_FALSE(hedge_budget_allows(&b));
    hedge_budget_record(&b, true);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 5.1, 1e-9);
    CU_ASSERT_TRUE(hedge_budget_allows(&b));
    for (int i = 0; i < 20; i++)
        hedge_budget_record(&b, false);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 0.0, 1e-9); /* floor */
    for (int i = 0; i < 200; i++)
        hedge_budget_record(&b, true);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 10.0, 1e-9); /* cap */
}

static void *hammer(void *p)
{
    hedge_budget_t *b = p;
    for (int i = 0; i < 10000; i++)
        hedge_budget_record(b, i % 2 == 0);
    return NULL;
}

static void test_budget_threads(void)
{
    hedge_budget_t b;
    hedge_budget_init(&b, 1000, 1.0);
    hedge_budget_record(&b, false); /* start below the cap so both moves count */
    for (int i = 0; i < 400; i++)
        hedge_budget_record(&b, false);
    double start = hedge_budget_tokens(&b);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, &b);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    /* +1 and -1 in equal numbers, never clamped from 599: back where it started */
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), start, 1e-9);
}

static void test_p95(void)
{
    hedge_tracker_t *t = hedge_tracker_new();
    hedge_params_t adaptive = {.enabled = true};
    hedge_params_t fixed = {.enabled = true, .delay_ms = 25};
    for (int i = 1; i < HEDGE_MIN_SAMPLES; i++)
        hedge_tracker_observe(t, i * 1000);
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), -1);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), -1); /* not enough data: no hedge */
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &fixed), 25);
    hedge_tracker_free(t);

    t = hedge_tracker_new();
    /* 1..100 ms in a scrambled order: nearest-rank p95 is 95 ms */
    for (int i = 0; i < 100; i++)
        hedge_tracker_observe(t, (int64_t)((i * 37) % 100 + 1) * 1000);
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 95000);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), 95);
    /* the ring forgets: 256 fast samples replace the slow ones */
    for (int i = 0; i < HEDGE_RING; i++)
        hedge_tracker_observe(t, 1500);
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 1500);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), 2); /* rounded up to whole ms */
    for (int i = 0; i < HEDGE_RING; i++)
        hedge_tracker_observe(t, 10);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), 1); /* at least 1 ms */
    /* a tail: 5 % slow samples do not move p95 above the body */
    for (int i = 0; i < HEDGE_RING; i++)
        hedge_tracker_observe(t, i < 12 ? 900000 : 3000);
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 3000);
    hedge_tracker_free(t);
}

/* The boundaries: the first p95 at exactly HEDGE_MIN_SAMPLES samples (nearest
 * rank ceil(0.95 n)), a fixed delay that ignores the samples, and a hedge never
 * sooner than 1 ms; the budget's threshold is strict (tokens > max/2) with a
 * custom bucket as with the default one. */
static void test_boundaries(void)
{
    hedge_tracker_t *t = hedge_tracker_new();
    hedge_params_t adaptive = {.enabled = true};
    hedge_params_t fixed = {.enabled = true, .delay_ms = 7};
    for (int i = 1; i <= HEDGE_MIN_SAMPLES; i++)
        hedge_tracker_observe(t, (int64_t)i * 1000); /* 1..20 ms */
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 19000); /* rank ceil(19.0) = 19 */
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), 19);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &fixed), 7);
    hedge_tracker_observe(t, 1000000); /* 21 samples: rank ceil(19.95) = 20 */
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 20000);
    hedge_tracker_observe(t, 19001); /* 22: rank ceil(20.9) = 21, the 21st smallest */
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 20000);
    CU_ASSERT_EQUAL(hedge_delay_ms(t, &adaptive), 20);
    hedge_tracker_observe(t, -5); /* a negative latency counts as 0 */
    CU_ASSERT_EQUAL(hedge_tracker_p95_us(t), 20000);
    hedge_tracker_free(t);

    hedge_budget_t b;
    hedge_budget_init(&b, 4, 0.5); /* 4 tokens: hedges while tokens > 2 */
    hedge_budget_record(&b, false);
    CU_ASSERT_TRUE(hedge_budget_allows(&b)); /* 3 */
    hedge_budget_record(&b, false);
    CU_ASSERT_FALSE(hedge_budget_allows(&b)); /* 2 = max/2 */
    hedge_budget_record(&b, true);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 2.5, 1e-9);
    CU_ASSERT_TRUE(hedge_budget_allows(&b));
    hedge_budget_init(&b, 10, 0.0004); /* a ratio below a thousandth still earns one */
    hedge_budget_record(&b, false);
    hedge_budget_record(&b, true);
    CU_ASSERT_DOUBLE_EQUAL(hedge_budget_tokens(&b), 9.001, 1e-9);
}

static void test_params(void)
{
    char err[128];
    ASSERT_OK(hedge_params_validate(&(hedge_params_t){.enabled = true, .max_attempts = 5}, err,
                                    sizeof err));
    ASSERT_OK(hedge_params_validate(&(hedge_params_t){0}, err, sizeof err));
    CU_ASSERT_EQUAL(hedge_params_validate(&(hedge_params_t){.max_attempts = 6}, err, sizeof err),
                    -1);
    CU_ASSERT_EQUAL(hedge_params_validate(&(hedge_params_t){.enabled = true, .max_attempts = 1},
                                          err, sizeof err),
                    -1);
    CU_ASSERT_EQUAL(hedge_params_validate(&(hedge_params_t){.delay_ms = -1, .max_attempts = 9}, err,
                                          sizeof err),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "delay_ms"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "max_attempts"));
    CU_ASSERT_EQUAL(hedge_max_attempts(&(hedge_params_t){0}), HEDGE_DEFAULT_ATTEMPTS);
    CU_ASSERT_EQUAL(hedge_max_attempts(&(hedge_params_t){.max_attempts = 4}), 4);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"budget: gRPC retry throttling", test_budget_grpc},
        {"budget under concurrency", test_budget_threads},
        {"adaptive delay at p95", test_p95},
        {"boundaries: first p95, nearest rank, strict budget threshold", test_boundaries},
        {"parameters", test_params},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_hedge", tests, NULL, NULL);
}
