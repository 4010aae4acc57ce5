/* tests/unit/test_gw_chaos.c: seeded chaos decisions. */
#include "http-gateway/chaos.h"

#include "tests/testlib.h"

#include <string.h>

static void test_xoshiro_reference(void)
{
    chaos_rng_t r = {.s = {1, 2, 3, 4}};
    CU_ASSERT_EQUAL(chaos_rng_next(&r), 0x2d00ULL);
    CU_ASSERT_EQUAL(chaos_rng_next(&r), 0ULL);
    CU_ASSERT_EQUAL(chaos_rng_next(&r), 0x5a007080ULL);
}

static void test_seeded_determinism(void)
{
    chaos_rng_t a, b, other_stream, other_seed;
    chaos_rng_seed(&a, 42, 0);
    chaos_rng_seed(&b, 42, 0);
    chaos_rng_seed(&other_stream, 42, 1);
    chaos_rng_seed(&other_seed, 43, 0);
    int same_stream = 0, same_seed = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = chaos_rng_next(&a);
        CU_ASSERT_EQUAL(x, chaos_rng_next(&b));
        same_stream += x == chaos_rng_next(&other_stream);
        same_seed += x == chaos_rng_next(&other_seed);
    }
    CU_ASSERT_EQUAL(same_stream, 0);
    CU_ASSERT_EQUAL(same_seed, 0);
    /* seed 0 draws from the CSPRNG: two generators differ */
    chaos_rng_seed(&a, 0, 0);
    chaos_rng_seed(&b, 0, 0);
    CU_ASSERT_NOT_EQUAL(chaos_rng_next(&a), chaos_rng_next(&b));
    for (int i = 0; i < 1000; i++) {
        double d = chaos_rng_double(&a);
        CU_ASSERT_TRUE(d >= 0.0 && d < 1.0);
    }
}

static void test_runbook_rates(void)
{
    /* probability 0.2, delayMs 200, errorRate 0.1 */
    chaos_params_t p = {.probability = 0.2, .delay_ms = 200, .error_rate = 0.1};
    chaos_t c;
    chaos_init(&c, 0);
    chaos_rng_t rng;
    chaos_rng_seed(&rng, 7, 0);
    int n = 100000, selected = 0, aborted = 0;
    for (int i = 0; i < n; i++) {
        chaos_decision_t d;
        chaos_decide(&c, &rng, &p, &d);
        if (d.delay) {
            selected++;
            CU_ASSERT_EQUAL(d.delay_ms, 200);
        }
        if (d.abort) {
            aborted++;
            CU_ASSERT_EQUAL(d.status, 503);
            CU_ASSERT_TRUE(d.delay); /* aborts only among selected requests */
        }
        chaos_done(&c, &d);
    }
    CU_ASSERT_TRUE(selected > 19000 && selected < 21000);
    CU_ASSERT_TRUE(aborted > 1700 && aborted < 2300); /* 0.2 * 0.1 */
    CU_ASSERT_EQUAL(atomic_load(&c.active), 0);

    /* the same seed gives the same decisions */
    chaos_rng_t r1, r2;
    chaos_rng_seed(&r1, 99, 3);
    chaos_rng_seed(&r2, 99, 3);
    for (int i = 0; i < 1000; i++) {
        chaos_decision_t d1, d2;
        chaos_decide(&c, &r1, &p, &d1);
        chaos_decide(&c, &r2, &p, &d2);
        CU_ASSERT_EQUAL(d1.delay, d2.delay);
        CU_ASSERT_EQUAL(d1.abort, d2.abort);
        chaos_done(&c, &d1);
        chaos_done(&c, &d2);
    }
}

static void test_edges(void)
{
    chaos_t c;
    chaos_init(&c, 0);
    chaos_rng_t rng;
    chaos_rng_seed(&rng, 1, 0);
    chaos_decision_t d;
    chaos_params_t off = {.probability = 0, .delay_ms = 100, .error_rate = 1};
    chaos_params_t always = {.probability = 1, .error_rate = 1, .error_status = 502};
    chaos_params_t delay_only = {.probability = 1, .delay_ms = 5};
    chaos_params_t nothing = {.probability = 1};
    for (int i = 0; i < 1000; i++) {
        chaos_decide(&c, &rng, &off, &d);
        CU_ASSERT_FALSE(d.delay || d.abort || d.holds_slot);
        chaos_decide(&c, &rng, &always, &d);
        CU_ASSERT_TRUE(d.abort && !d.delay && d.status == 502);
        CU_ASSERT_STRING_EQUAL(chaos_header_value(&d), "abort");
        chaos_done(&c, &d);
        chaos_decide(&c, &rng, &delay_only, &d);
        CU_ASSERT_TRUE(d.delay && !d.abort);
        CU_ASSERT_STRING_EQUAL(chaos_header_value(&d), "delay");
        chaos_done(&c, &d);
        chaos_decide(&c, &rng, &nothing, &d); /* selected, but no fault to inject */
        CU_ASSERT_FALSE(d.holds_slot);
        CU_ASSERT_PTR_NULL(chaos_header_value(&d));
    }
    chaos_params_t both = {.probability = 1, .delay_ms = 1, .error_rate = 1};
    chaos_decide(&c, &rng, &both, &d);
    CU_ASSERT_STRING_EQUAL(chaos_header_value(&d), "delay, abort");
    chaos_done(&c, &d);
    chaos_done(&c, &d); /* twice is harmless */
    CU_ASSERT_EQUAL(atomic_load(&c.active), 0);
}

static void test_active_cap(void)
{
    chaos_t c;
    chaos_init(&c, 3);
    chaos_rng_t rng;
    chaos_rng_seed(&rng, 5, 0);
    chaos_params_t p = {.probability = 1, .delay_ms = 1000};
    chaos_decision_t d[5];
    for (int i = 0; i < 5; i++)
        chaos_decide(&c, &rng, &p, &d[i]);
    CU_ASSERT_TRUE(d[0].delay && d[1].delay && d[2].delay);
    CU_ASSERT_FALSE(d[3].delay || d[3].holds_slot);
    CU_ASSERT_FALSE(d[4].delay);
    CU_ASSERT_EQUAL(atomic_load(&c.active), 3);
    chaos_done(&c, &d[0]);
    chaos_decision_t again;
    chaos_decide(&c, &rng, &p, &again);
    CU_ASSERT_TRUE(again.delay);
    chaos_done(&c, &again);
    for (int i = 0; i < 5; i++)
        chaos_done(&c, &d[i]);
    CU_ASSERT_EQUAL(atomic_load(&c.active), 0);
}

static void test_validate(void)
{
    char err[256];
    ASSERT_OK(chaos_params_validate(
        &(chaos_params_t){.probability = 0.2, .delay_ms = 200, .error_rate = 0.1}, err,
        sizeof err));
    ASSERT_OK(chaos_params_validate(
        &(chaos_params_t){.probability = 1, .error_rate = 0, .error_status = 500}, err,
        sizeof err));
    CU_ASSERT_EQUAL(chaos_params_validate(&(chaos_params_t){.probability = 1.01}, err, sizeof err),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "probability"));
    CU_ASSERT_EQUAL(
        chaos_params_validate(&(chaos_params_t){.error_rate = 0.0 / 0.0}, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "error_rate"));
    CU_ASSERT_EQUAL(chaos_params_validate(&(chaos_params_t){.error_status = 200}, err, sizeof err),
                    -1);
    CU_ASSERT_EQUAL(chaos_params_validate(&(chaos_params_t){.delay_ms = -1}, err, sizeof err), -1);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"xoshiro256** reference outputs", test_xoshiro_reference},
        {"seeded determinism, per-thread streams", test_seeded_determinism},
        {"runbook rates 0.2 / 200 ms / 0.1", test_runbook_rates},
        {"edges: off, always, delay only, header", test_edges},
        {"cap on active faults", test_active_cap},
        {"parameter validation", test_validate},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_chaos", tests, NULL, NULL);
}
