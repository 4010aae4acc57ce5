/* tests/unit/test_gw_breaker.c: resilience4j semantics on the fake clock. */
#include "core/breaker.h"

#include "core/clock.h"
#include "tests/testlib.h"

#include <pthread.h>
#include <string.h>

#define T0 1000000000 /* fake clock start, ms (on a second boundary) */

static int64_t now_ms;

static void at(int64_t ms)
{
    now_ms = ms;
    clock_fake_set_ms(ms);
}

static void advance(int64_t ms)
{
    at(now_ms + ms);
}

static int setup(void)
{
    at(T0);
    return 0;
}

static int teardown(void)
{
    clock_fake_set_ms(0);
    return 0;
}

/* One call through the breaker; returns false when it was rejected. */
static bool call(breaker_t *b, breaker_outcome_t outcome, int64_t duration_ms)
{
    breaker_permit_t p;
    if (!breaker_acquire(b, &p))
        return false;
    breaker_record(b, &p, outcome, duration_ms);
    return true;
}

static breaker_t *make(int min_calls, double threshold)
{
    breaker_params_t p = {.failure_rate_threshold = threshold,
                          .minimum_calls = min_calls,
                          .window_ms = 10000,
                          .open_duration_ms = 20000,
                          .half_open_max_calls = 3};
    breaker_t *b = breaker_new(&p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    return b;
}

static void test_under_minimum_does_not_trip(void)
{
    at(T0);
    breaker_t *b = make(10, 50);
    for (int i = 0; i < 9; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.calls, 9);
    CU_ASSERT_EQUAL(s.failures, 9);
    /* the tenth call makes the verdict */
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_threshold_boundary(void)
{
    at(T0);
    breaker_t *b = make(10, 50);
    for (int i = 0; i < 6; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 1));
    for (int i = 0; i < 4; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED); /* 40 % < 50 % */
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    /* 5 of 11 = 45 % */
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    /* 6 of 12 = exactly 50 %: trips */
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_open_then_half_open(void)
{
    at(T0);
    breaker_t *b = make(2, 50);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_permit_t p;
    advance(5000);
    CU_ASSERT_FALSE(breaker_acquire(b, &p));
    CU_ASSERT_EQUAL(p.retry_after_ms, 15000);
    advance(14999);
    CU_ASSERT_FALSE(breaker_acquire(b, &p));
    CU_ASSERT_EQUAL(p.retry_after_ms, 1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    advance(1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_HALF_OPEN);
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.rejected, 2);
    breaker_free(b);
}

static breaker_t *half_open_breaker(void)
{
    breaker_t *b = make(2, 50);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    advance(20000);
    CU_ASSERT_EQUAL_FATAL(breaker_state(b), BREAKER_HALF_OPEN);
    return b;
}

static void test_half_open_admits_exactly_n_then_closes(void)
{
    at(T0);
    breaker_t *b = half_open_breaker();
    breaker_permit_t t[3], extra;
    for (int i = 0; i < 3; i++) {
        CU_ASSERT_TRUE(breaker_acquire(b, &t[i]));
        CU_ASSERT_TRUE(t[i].trial);
    }
    CU_ASSERT_FALSE(breaker_acquire(b, &extra)); /* a fourth is rejected */
    CU_ASSERT_TRUE(extra.retry_after_ms >= 1);
    breaker_record(b, &t[0], BREAKER_SUCCESS, 1);
    breaker_record(b, &t[1], BREAKER_FAILURE, 1);
    /* one trial still out: no verdict yet, still no admission */
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_HALF_OPEN);
    CU_ASSERT_FALSE(breaker_acquire(b, &extra));
    breaker_record(b, &t[2], BREAKER_SUCCESS, 1);
    /* 1 of 3 failed: 33 % < 50 % */
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    /* a fresh window: one failure does not trip although 100 % */
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_half_open_reopens(void)
{
    at(T0);
    breaker_t *b = half_open_breaker();
    breaker_permit_t t[3];
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(breaker_acquire(b, &t[i]));
    breaker_record(b, &t[0], BREAKER_FAILURE, 1);
    breaker_record(b, &t[1], BREAKER_FAILURE, 1);
    breaker_record(b, &t[2], BREAKER_SUCCESS, 1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_permit_t p;
    CU_ASSERT_FALSE(breaker_acquire(b, &p));
    CU_ASSERT_EQUAL(p.retry_after_ms, 20000);
    breaker_free(b);
}

static void test_half_open_ignored_frees_trial(void)
{
    at(T0);
    breaker_t *b = half_open_breaker();
    breaker_permit_t t[3], again;
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(breaker_acquire(b, &t[i]));
    breaker_record(b, &t[0], BREAKER_IGNORED, 1); /* a 4xx: not a verdict */
    CU_ASSERT_TRUE(breaker_acquire(b, &again));
    breaker_record(b, &t[1], BREAKER_SUCCESS, 1);
    breaker_record(b, &t[2], BREAKER_SUCCESS, 1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_HALF_OPEN);
    breaker_record(b, &again, BREAKER_SUCCESS, 1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_half_open_max_wait(void)
{
    at(T0);
    breaker_params_t p = {.minimum_calls = 1,
                          .open_duration_ms = 1000,
                          .half_open_max_calls = 2,
                          .max_half_open_wait_ms = 5000};
    breaker_t *b = breaker_new(&p);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    advance(1000);
    breaker_permit_t lost;
    CU_ASSERT_TRUE(breaker_acquire(b, &lost)); /* a trial that never reports */
    advance(4999);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_HALF_OPEN);
    advance(1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    /* the late trial is ignored: it belongs to the old state */
    breaker_record(b, &lost, BREAKER_SUCCESS, 1);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_slow_calls_trip(void)
{
    at(T0);
    breaker_params_t p = {
        .minimum_calls = 4, .slow_call_duration_ms = 1000, .slow_call_rate_threshold = 75};
    breaker_t *b = breaker_new(&p);
    /* exactly the slow duration is not slow (resilience4j: "above") */
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 1000));
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 1000));
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 1001));
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 5000));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED); /* 2 of 4 slow = 50 % < 75 % */
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.slow, 2);
    CU_ASSERT_EQUAL(s.failures, 1);
    breaker_free(b);
}

static void test_slow_calls_trip_at_threshold(void)
{
    at(T0);
    breaker_params_t p = {
        .minimum_calls = 4, .slow_call_duration_ms = 1000, .slow_call_rate_threshold = 75};
    breaker_t *b = breaker_new(&p);
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 10));
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 1001));
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 5000));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    CU_ASSERT_TRUE(call(b, BREAKER_SUCCESS, 2000)); /* 3 of 4 slow: 75 % */
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.failures, 0);
    breaker_free(b);
}

static void test_window_slides(void)
{
    at(T0);
    breaker_params_t p = {.minimum_calls = 4, .window_ms = 10000};
    breaker_t *b = breaker_new(&p);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    advance(9000); /* still inside the 10 s window */
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.calls, 3);
    advance(1000); /* the first second has left the window */
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.calls, 0);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED); /* 1 call: under the minimum */
    for (int i = 0; i < 3; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_OPEN);
    breaker_free(b);
}

static void test_4xx_ignored(void)
{
    at(T0);
    breaker_t *b = make(2, 50);
    for (int i = 0; i < 20; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_IGNORED, 1));
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.calls, 0);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    breaker_free(b);
}

static void test_runbook_demo(void)
{
    /* runbook decorator: failureRateThreshold 0.5 (a fraction), windowMs 30000,
     * openDurationMs 20000, halfOpenMaxCalls 5; the demo route needs minimum 2 */
    at(T0);
    breaker_params_t p = {.failure_rate_threshold = 0.5,
                          .window_ms = 30000,
                          .minimum_calls = 2,
                          .open_duration_ms = 20000,
                          .half_open_max_calls = 5};
    breaker_t *b = breaker_new(&p);
    const char *seen[5];
    for (int i = 0; i < 5; i++) {
        breaker_permit_t permit;
        if (breaker_acquire(b, &permit)) {
            breaker_record(b, &permit, BREAKER_FAILURE, 3);
            seen[i] = "fail";
        } else {
            seen[i] = "rejected";
            CU_ASSERT_EQUAL(permit.retry_after_ms, 20000);
        }
    }
    CU_ASSERT_STRING_EQUAL(seen[0], "fail");
    CU_ASSERT_STRING_EQUAL(seen[1], "fail");
    CU_ASSERT_STRING_EQUAL(seen[2], "rejected");
    CU_ASSERT_STRING_EQUAL(seen[3], "rejected");
    CU_ASSERT_STRING_EQUAL(seen[4], "rejected");
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.rejected, 3);
    breaker_free(b);
}

static void test_params(void)
{
    CU_ASSERT_DOUBLE_EQUAL(breaker_percent(0.5), 50.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(breaker_percent(1.0), 100.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(breaker_percent(50), 50.0, 1e-9);
    breaker_params_t n;
    breaker_params_normalize(&(breaker_params_t){.failure_rate_threshold = 0.25}, &n);
    CU_ASSERT_DOUBLE_EQUAL(n.failure_rate_threshold, 25.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(n.slow_call_rate_threshold, 100.0, 1e-9);
    CU_ASSERT_EQUAL(n.minimum_calls, BREAKER_DEFAULT_MIN_CALLS);
    CU_ASSERT_EQUAL(n.open_duration_ms, BREAKER_DEFAULT_OPEN_MS);
    CU_ASSERT_EQUAL(n.half_open_max_calls, BREAKER_DEFAULT_HALF_OPEN_CALLS);

    char err[256];
    ASSERT_OK(breaker_params_validate(&(breaker_params_t){0}, err, sizeof err));
    breaker_params_t bad = {.failure_rate_threshold = 150,
                            .open_duration_ms = -1,
                            .window_ms = BREAKER_MAX_WINDOW_MS + 1};
    CU_ASSERT_EQUAL(breaker_params_validate(&bad, err, sizeof err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "failure_rate_threshold"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "open_duration_ms"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "window_ms"));
    CU_ASSERT_EQUAL(breaker_params_validate(&bad, err, 0), -1); /* no room: still refused */
    CU_ASSERT_PTR_NULL(breaker_new(&bad));
}

static void test_operator_states(void)
{
    at(T0);
    breaker_t *b = make(2, 50);
    breaker_permit_t p;
    breaker_transition(b, BREAKER_FORCED_OPEN);
    CU_ASSERT_FALSE(breaker_acquire(b, &p));
    advance(3600000);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_FORCED_OPEN);
    breaker_transition(b, BREAKER_DISABLED);
    for (int i = 0; i < 50; i++)
        CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_DISABLED);
    breaker_transition(b, BREAKER_CLOSED);
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_CLOSED);
    CU_ASSERT_STRING_EQUAL(breaker_state_name(BREAKER_HALF_OPEN), "HALF_OPEN");
    breaker_free(b);
}

static void test_stale_permit_after_trip_ignored(void)
{
    at(T0);
    breaker_t *b = make(2, 50);
    breaker_permit_t early;
    CU_ASSERT_TRUE(breaker_acquire(b, &early));
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    CU_ASSERT_TRUE(call(b, BREAKER_FAILURE, 1));
    advance(20000);
    CU_ASSERT_EQUAL(breaker_state(b), BREAKER_HALF_OPEN);
    /* admitted while CLOSED, finishing in HALF_OPEN: not a trial */
    breaker_record(b, &early, BREAKER_FAILURE, 1);
    breaker_stats_t s;
    breaker_stats(b, &s);
    CU_ASSERT_EQUAL(s.calls, 0);
    breaker_free(b);
}

typedef struct {
    breaker_t *b;
    int admitted;
} race_arg_t;

static void *race(void *p)
{
    race_arg_t *a = p;
    breaker_permit_t permit;
    if (breaker_acquire(a->b, &permit))
        a->admitted = 1;
    return NULL;
}

static void test_half_open_concurrent(void)
{
    at(T0);
    breaker_t *b = half_open_breaker();
    pthread_t th[32];
    race_arg_t args[32];
    for (int i = 0; i < 32; i++) {
        args[i] = (race_arg_t){b, 0};
        pthread_create(&th[i], NULL, race, &args[i]);
    }
    int admitted = 0;
    for (int i = 0; i < 32; i++) {
        pthread_join(th[i], NULL);
        admitted += args[i].admitted;
    }
    CU_ASSERT_EQUAL(admitted, 3);
    breaker_free(b);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"9 failures under minimum 10 do not trip", test_under_minimum_does_not_trip},
        {"exactly the threshold trips", test_threshold_boundary},
        {"OPEN rejects, then HALF_OPEN after the duration", test_open_then_half_open},
        {"HALF_OPEN admits exactly N and closes", test_half_open_admits_exactly_n_then_closes},
        {"HALF_OPEN reopens on failures", test_half_open_reopens},
        {"HALF_OPEN ignored outcome frees its trial", test_half_open_ignored_frees_trial},
        {"HALF_OPEN maximum wait", test_half_open_max_wait},
        {"slow threshold is strictly above the duration", test_slow_calls_trip},
        {"slow calls trip at the slow rate", test_slow_calls_trip_at_threshold},
        {"window slides and forgets old buckets", test_window_slides},
        {"4xx ignored", test_4xx_ignored},
        {"runbook demo: fail, fail, rejected x3", test_runbook_demo},
        {"params: fractions, defaults, validation", test_params},
        {"operator states", test_operator_states},
        {"a permit from an earlier state is ignored", test_stale_permit_after_trip_ignored},
        {"HALF_OPEN under concurrency", test_half_open_concurrent},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_breaker", tests, setup, teardown);
}
