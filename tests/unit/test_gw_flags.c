/* tests/unit/test_gw_flags.c: FLAG_<NAME> feature flags. */
#include "http-gateway/flags.h"

#include "tests/testlib.h"

#include <stdlib.h>
#include <string.h>

static char *keys[] = {"FLAG_CACHE_SWR", "FLAG_RESILIENCE", "FLAG_NEW_CHECKOUT", "FLAG_BROKEN",
                       "OTHER"};
static char *vals[] = {"true", "false", "true", "TRUE", "x"};
static const config_t cfg = {.raw_keys = keys, .raw_vals = vals, .raw_n = 5};

static void env(const char *flag, const char *want)
{
    char out[FLAGS_ENV_MAX];
    if (!want) {
        CU_ASSERT_EQUAL(flags_env_name(flag, out, sizeof out), -1);
        return;
    }
    ASSERT_OK(flags_env_name(flag, out, sizeof out));
    CU_ASSERT_STRING_EQUAL(out, want);
}

static void test_names(void)
{
    env("new-checkout", "FLAG_NEW_CHECKOUT");
    env("newCheckout", "FLAG_NEW_CHECKOUT");
    env("NEW_CHECKOUT", "FLAG_NEW_CHECKOUT");
    env("CACHE_SWR", "FLAG_CACHE_SWR");
    env("cache.swr", "FLAG_CACHE_SWR");
    env("XMLHttpRequest", "FLAG_XML_HTTP_REQUEST");
    env("v2Api", "FLAG_V2_API");
    env("--odd--name--", "FLAG_ODD_NAME");
    env("", NULL);
    env("---", NULL);
    env(NULL, NULL);
    char small[8];
    CU_ASSERT_EQUAL(flags_env_name("long-name", small, sizeof small), -1);
}

static void test_eval(void)
{
    flag_eval_t e;
    flags_eval(&cfg, "cache-swr", false, &e);
    CU_ASSERT_TRUE(e.value);
    CU_ASSERT_EQUAL(e.reason, FLAG_REASON_STATIC);
    flags_eval(&cfg, "RESILIENCE", true, &e);
    CU_ASSERT_FALSE(e.value);
    CU_ASSERT_EQUAL(e.reason, FLAG_REASON_STATIC);
    flags_eval(&cfg, "unknown-flag", true, &e);
    CU_ASSERT_TRUE(e.value);
    CU_ASSERT_EQUAL(e.reason, FLAG_REASON_DEFAULT);
    flags_eval(&cfg, "unknown-flag", false, &e);
    CU_ASSERT_FALSE(e.value);
    CU_ASSERT_EQUAL(e.reason, FLAG_REASON_DEFAULT);
    /* not exactly true/false: the default, reason ERROR */
    flags_eval(&cfg, "broken", false, &e);
    CU_ASSERT_FALSE(e.value);
    CU_ASSERT_EQUAL(e.reason, FLAG_REASON_ERROR);
    CU_ASSERT_STRING_EQUAL(flags_reason_name(FLAG_REASON_STATIC), "STATIC");
    CU_ASSERT_STRING_EQUAL(flags_reason_name(FLAG_REASON_DEFAULT), "DEFAULT");
    CU_ASSERT_STRING_EQUAL(flags_reason_name(FLAG_REASON_ERROR), "ERROR");
}

static void test_validate(void)
{
    char *errors = NULL;
    CU_ASSERT_EQUAL(flags_validate(&cfg, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errors);
    CU_ASSERT_STRING_EQUAL(errors, "FLAG_BROKEN: 'TRUE' must be exactly true or false\n");
    free(errors);
    static char *k2[] = {"FLAG_A", "FLAG_B"};
    static char *v2[] = {"true", "false"};
    config_t good = {.raw_keys = k2, .raw_vals = v2, .raw_n = 2};
    ASSERT_OK(flags_validate(&good, &errors));
    CU_ASSERT_PTR_NULL(errors);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"flag name to FLAG_<NAME>", test_names},
        {"STATIC, DEFAULT, ERROR", test_eval},
        {"validation of every FLAG_ key", test_validate},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_flags", tests, NULL, NULL);
}
