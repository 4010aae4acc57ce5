/* tests/unit/test_gw_problem.c: RFC 9457 bodies and reason phrases. */
#include "http-gateway/problem.h"

#include "core/json.h"
#include "tests/testlib.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

/* Renders and parses back (strictly); the caller puts the object. */
static json_object *render(int status, const char *slug, const char *title, const char *detail,
                           const char *instance, const char *rid, const char *tid)
{
    struct evbuffer *b = evbuffer_new();
    problem_render(b, status, slug, title, detail, instance, rid, tid);
    size_t len = evbuffer_get_length(b);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    json_object *o = NULL;
    const char *why = NULL;
    int rc = json_parse_strict(text, len, &o, &why);
    evbuffer_free(b);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return o;
}

static void test_full_problem(void)
{
    json_object *o =
        render(422, "idempotency-key-reused", NULL, "key reused with another body",
               "/api/v1/analytics/events", "req-1", "4bf92f3577b34da6a3ce929d0e0e4736");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "type"),
                           "https://errors.ecom.dev/idempotency-key-reused");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "title"), "Unprocessable Content");
    int64_t status = 0;
    CU_ASSERT_TRUE(json_get_int64(o, "status", &status));
    CU_ASSERT_EQUAL(status, 422);
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "detail"), "key reused with another body");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "instance"), "/api/v1/analytics/events");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "requestId"), "req-1");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "traceId"), "4bf92f3577b34da6a3ce929d0e0e4736");
    json_object_put(o);
}

static void test_about_blank_and_omitted(void)
{
    json_object *o = render(404, NULL, NULL, NULL, NULL, NULL, NULL);
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "type"), "about:blank");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "title"), "Not Found");
    CU_ASSERT_EQUAL(json_object_object_length(o), 3);
    CU_ASSERT_PTR_NULL(json_get_str(o, "detail"));
    json_object_put(o);
}

static void test_escaping(void)
{
    const char *nasty = "quote \" backslash \\ newline \n tab \t ctl \x01 end";
    json_object *o = render(400, "bad\"slug", "Title \"x\"", nasty, "/a\"b", "r\\1", NULL);
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "detail"), nasty);
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "title"), "Title \"x\"");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "type"), "https://errors.ecom.dev/bad\"slug");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "instance"), "/a\"b");
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "requestId"), "r\\1");
    json_object_put(o);
}

static void test_appends(void)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, "X", 1);
    problem_render(b, 503, "circuit-open", NULL, NULL, NULL, NULL, NULL);
    const char *text = (const char *)evbuffer_pullup(b, -1);
    CU_ASSERT_EQUAL(text[0], 'X');
    CU_ASSERT_EQUAL(text[1], '{');
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"title\":\"Service Unavailable\""));
    evbuffer_free(b);
}

static void test_reasons(void)
{
    CU_ASSERT_STRING_EQUAL(http_reason(200), "OK");
    CU_ASSERT_STRING_EQUAL(http_reason(401), "Unauthorized");
    CU_ASSERT_STRING_EQUAL(http_reason(409), "Conflict");
    CU_ASSERT_STRING_EQUAL(http_reason(429), "Too Many Requests");
    CU_ASSERT_STRING_EQUAL(http_reason(504), "Gateway Timeout");
    CU_ASSERT_STRING_EQUAL(http_reason(599), "Unknown Status");
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"full problem", test_full_problem},
        {"about:blank, optional members omitted", test_about_blank_and_omitted},
        {"every string escaped", test_escaping},
        {"appends to the buffer", test_appends},
        {"reason phrases", test_reasons},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_problem", tests, NULL, NULL);
}
