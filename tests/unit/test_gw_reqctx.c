/* tests/unit/test_gw_reqctx.c: request ids, W3C traceparent, tenant ids. */
#include "http-gateway/reqctx.h"

#include "tests/testlib.h"

#include <string.h>

static bool all_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static void test_request_id_kept(void)
{
    char out[REQCTX_ID_BUF];
    CU_ASSERT_TRUE(reqctx_request_id("abc-123_X.y:z", out));
    CU_ASSERT_STRING_EQUAL(out, "abc-123_X.y:z");
    char max[REQCTX_ID_MAX + 1];
    memset(max, 'a', REQCTX_ID_MAX);
    max[REQCTX_ID_MAX] = '\0';
    CU_ASSERT_TRUE(reqctx_request_id(max, out));
    CU_ASSERT_STRING_EQUAL(out, max);
}

static void test_request_id_replaced(void)
{
    char out[REQCTX_ID_BUF];
    char longer[REQCTX_ID_MAX + 2];
    memset(longer, 'a', REQCTX_ID_MAX + 1);
    longer[REQCTX_ID_MAX + 1] = '\0';
    const char *bad[] = {NULL,      "",          "has space", "semi;colon", "slash/",
                         "quote\"", "new\nline", longer,      "caf\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CU_ASSERT_FALSE(reqctx_request_id(bad[i], out));
        CU_ASSERT_TRUE(all_lower_hex(out, 32));
    }
    char other[REQCTX_ID_BUF];
    CU_ASSERT_FALSE(reqctx_request_id(NULL, other));
    CU_ASSERT_STRING_NOT_EQUAL(out, other);
}

static void test_traceparent_valid(void)
{
    traceparent_t tp;
    ASSERT_OK(
        reqctx_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp));
    CU_ASSERT_EQUAL(tp.version, 0);
    CU_ASSERT_STRING_EQUAL(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    CU_ASSERT_STRING_EQUAL(tp.span_id, "00f067aa0ba902b7");
    CU_ASSERT_EQUAL(tp.flags, 1);
    CU_ASSERT_TRUE(reqctx_traceparent_sampled(&tp));
    ASSERT_OK(
        reqctx_traceparent_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &tp));
    CU_ASSERT_FALSE(reqctx_traceparent_sampled(&tp));
}

static void test_traceparent_future_version(void)
{
    traceparent_t tp;
    ASSERT_OK(
        reqctx_traceparent_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp));
    CU_ASSERT_EQUAL(tp.version, 0xcc);
    ASSERT_OK(reqctx_traceparent_parse(
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds", &tp));
    CU_ASSERT_STRING_EQUAL(tp.span_id, "00f067aa0ba902b7");
    /* something after the prefix that is not a new '-' field */
    CU_ASSERT_EQUAL(
        reqctx_traceparent_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", &tp),
        -1);
    char out[REQCTX_TRACEPARENT_BUF];
    reqctx_traceparent_format(&tp, out);
    CU_ASSERT_STRING_EQUAL(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
}

static void test_traceparent_invalid(void)
{
    const char *bad[] = {
        NULL,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  /* v00 with extra */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    /* short */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero span */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",   /* uppercase */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",   /* bad flags */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* bad version */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",   /* misplaced dash */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n", /* trailing newline */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        traceparent_t tp;
        if (reqctx_traceparent_parse(bad[i], &tp) != -1)
            CU_FAIL(bad[i]);
    }
}

static void test_traceparent_new_and_child(void)
{
    traceparent_t a, b, child;
    reqctx_traceparent_new(&a, true);
    reqctx_traceparent_new(&b, false);
    CU_ASSERT_TRUE(all_lower_hex(a.trace_id, 32));
    CU_ASSERT_TRUE(all_lower_hex(a.span_id, 16));
    CU_ASSERT_STRING_NOT_EQUAL(a.trace_id, b.trace_id);
    CU_ASSERT_TRUE(reqctx_traceparent_sampled(&a));
    CU_ASSERT_FALSE(reqctx_traceparent_sampled(&b));

    char text[REQCTX_TRACEPARENT_BUF];
    reqctx_traceparent_format(&a, text);
    CU_ASSERT_EQUAL(strlen(text), 55);
    traceparent_t back;
    ASSERT_OK(reqctx_traceparent_parse(text, &back));
    CU_ASSERT_STRING_EQUAL(back.trace_id, a.trace_id);
    CU_ASSERT_STRING_EQUAL(back.span_id, a.span_id);
    CU_ASSERT_EQUAL(back.flags, 1);

    a.flags = 0x03; /* sampled plus an unknown bit */
    reqctx_traceparent_child(&a, &child);
    CU_ASSERT_STRING_EQUAL(child.trace_id, a.trace_id);
    CU_ASSERT_STRING_NOT_EQUAL(child.span_id, a.span_id);
    CU_ASSERT_EQUAL(child.flags, 1);
    CU_ASSERT_EQUAL(child.version, 0);

    char span[REQCTX_SPAN_ID_BUF];
    reqctx_span_id_new(span);
    CU_ASSERT_TRUE(all_lower_hex(span, 16));
    CU_ASSERT_NOT_EQUAL(strspn(span, "0"), 16);
}

static void test_tenant(void)
{
    char max[REQCTX_TENANT_MAX + 2];
    memset(max, 'T', sizeof max);
    max[REQCTX_TENANT_MAX] = '\0';
    CU_ASSERT_TRUE(reqctx_tenant_valid("acme"));
    CU_ASSERT_TRUE(reqctx_tenant_valid("Acme_01-eu"));
    CU_ASSERT_TRUE(reqctx_tenant_valid(max));
    max[REQCTX_TENANT_MAX] = 'T';
    max[REQCTX_TENANT_MAX + 1] = '\0';
    CU_ASSERT_FALSE(reqctx_tenant_valid(max));
    CU_ASSERT_FALSE(reqctx_tenant_valid(""));
    CU_ASSERT_FALSE(reqctx_tenant_valid(NULL));
    CU_ASSERT_FALSE(reqctx_tenant_valid("a.b"));
    CU_ASSERT_FALSE(reqctx_tenant_valid("a b"));
    CU_ASSERT_FALSE(reqctx_tenant_valid("a:b"));
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"valid request id kept", test_request_id_kept},
        {"invalid request id replaced by 32 hex", test_request_id_replaced},
        {"traceparent version 00", test_traceparent_valid},
        {"traceparent future version", test_traceparent_future_version},
        {"traceparent invalid forms", test_traceparent_invalid},
        {"new trace and child span", test_traceparent_new_and_child},
        {"tenant id", test_tenant},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_reqctx", tests, NULL, NULL);
}
