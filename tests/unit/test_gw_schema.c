/* tests/unit/test_gw_schema.c: schema-driven JSON (fast-json-stringify rules). */
#include "http-gateway/schema.h"

#include "core/json.h"
#include "tests/testlib.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

/* the original runbook's EventsResponse */
static const schema_t event_item = {.type = SCHEMA_OBJECT, .additional_properties = true};
static const schema_t event_list = {.type = SCHEMA_ARRAY, .items = &event_item};
static const schema_prop_t events_props[] = {
    {"data", &event_list, true},
    {"count", &schema_number, true},
    {NULL, NULL, false},
};
static const schema_t events_response = {.type = SCHEMA_OBJECT, .props = events_props};

static json_object *parse(const char *text)
{
    json_object *o = NULL;
    const char *why = NULL;
    int rc = json_parse_strict(text, strlen(text), &o, &why);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return o;
}

/* Writes text through s; returns the output (owned) or NULL with *err set. */
static char *write_text(const schema_t *s, const char *text, const char **err)
{
    json_object *v = parse(text);
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, "<", 1); /* something already in the buffer stays first */
    char *result = NULL;
    if (schema_write(s, v, out, err) == 0) {
        size_t len = evbuffer_get_length(out);
        result = calloc(1, len + 1);
        evbuffer_remove(out, result, len);
    } else {
        CU_ASSERT_EQUAL(evbuffer_get_length(out), 1); /* nothing partial written */
    }
    evbuffer_free(out);
    json_object_put(v);
    return result;
}

static void expect(const schema_t *s, const char *in, const char *want)
{
    const char *err = NULL;
    char *got = write_text(s, in, &err);
    CU_ASSERT_PTR_NOT_NULL(got);
    if (got && strcmp(got + 1, want) != 0) {
        fprintf(stderr, "\n  in:   %s\n  want: %s\n  got:  %s\n", in, want, got + 1);
        CU_FAIL("output differs");
    } else if (!got) {
        fprintf(stderr, "\n  in: %s\n  err: %s\n", in, err);
    }
    free(got);
}

static void expect_error(const schema_t *s, const char *in, const char *want_err)
{
    const char *err = NULL;
    char *got = write_text(s, in, &err);
    CU_ASSERT_PTR_NULL(got);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    if (strcmp(err, want_err) != 0) {
        fprintf(stderr, "\n  want err: %s\n  got err:  %s\n", want_err, err);
        CU_FAIL("error differs");
    }
    free(got);
}

static void test_events_response(void)
{
    expect(&events_response,
           "{\"count\":2,\"data\":[{\"type\":\"purchase\",\"n\":1},{\"type\":\"view\"}],\"secret\":"
           "\"x\"}",
           "{\"data\":[{\"type\":\"purchase\",\"n\":1},{\"type\":\"view\"}],\"count\":2}");
    expect_error(&events_response, "{\"data\":[]}", "count: required property is missing");
    expect_error(&events_response, "{\"count\":1}", "data: required property is missing");
    expect(&events_response, "{\"data\":[],\"count\":\"5\"}", "{\"data\":[],\"count\":5}");
    expect_error(&events_response, "{\"data\":[],\"count\":\"five\"}",
                 "count: cannot be converted to a number");
    expect_error(&events_response, "{\"data\":{},\"count\":1}", "data: is not an array");
    expect_error(&events_response, "[1]", "(root): is not an object");
}

static const schema_t tag_list = {.type = SCHEMA_ARRAY, .items = &schema_string};
static const schema_t nullable_string = {.type = SCHEMA_STRING, .nullable = true};
static const schema_prop_t inner_props[] = {
    {"id", &schema_integer, true},
    {NULL, NULL, false},
};
static const schema_t inner = {.type = SCHEMA_OBJECT, .props = inner_props};
static const schema_t inner_list = {.type = SCHEMA_ARRAY, .items = &inner};
static const schema_prop_t all_props[] = {
    {"n", &schema_number, false},  {"i", &schema_integer, false},   {"s", &schema_string, false},
    {"b", &schema_boolean, false}, {"ns", &nullable_string, false}, {"tags", &tag_list, false},
    {"items", &inner_list, false}, {"any", &schema_any, false},     {NULL, NULL, false},
};
static const schema_t all = {.type = SCHEMA_OBJECT, .props = all_props};
static const schema_t all_open = {
    .type = SCHEMA_OBJECT, .props = all_props, .additional_properties = true};

static void test_coercions(void)
{
    /* null for a non-nullable scalar: 0, "", false; nullable keeps null */
    expect(&all, "{\"n\":null,\"i\":null,\"s\":null,\"b\":null,\"ns\":null}",
           "{\"n\":0,\"i\":0,\"s\":\"\",\"b\":false,\"ns\":null}");
    /* numbers from strings and booleans; integers truncate */
    expect(&all, "{\"n\":\" 2.5 \",\"i\":\"7.9\"}", "{\"n\":2.5,\"i\":7}");
    expect(&all, "{\"n\":true,\"i\":-3.7}", "{\"n\":1,\"i\":-3}");
    expect(&all, "{\"n\":1e3,\"i\":\"\"}", "{\"n\":1000,\"i\":0}");
    expect(&all, "{\"n\":0.1,\"i\":12345678901}", "{\"n\":0.1,\"i\":12345678901}");
    /* strings from numbers and booleans */
    expect(&all, "{\"s\":42}", "{\"s\":\"42\"}");
    expect(&all, "{\"s\":1.5}", "{\"s\":\"1.5\"}");
    expect(&all, "{\"s\":false}", "{\"s\":\"false\"}");
    /* booleans by truthiness */
    expect(&all, "{\"b\":\"false\"}", "{\"b\":true}");
    expect(&all, "{\"b\":\"\"}", "{\"b\":false}");
    expect(&all, "{\"b\":0}", "{\"b\":false}");
    expect(&all, "{\"b\":2}", "{\"b\":true}");
    expect(&all, "{\"b\":{}}", "{\"b\":true}");
    /* arrays coerce their items */
    expect(&all, "{\"tags\":[\"a\",1,true,null]}", "{\"tags\":[\"a\",\"1\",\"true\",\"\"]}");
    /* any is written as it is */
    expect(&all, "{\"any\":{\"x\":[1,\"/\"]}}", "{\"any\":{\"x\":[1,\"/\"]}}");
    /* escaping */
    expect(&all, "{\"s\":\"q\\\"b\\\\n\\n\\u0001\"}", "{\"s\":\"q\\\"b\\\\n\\n\\u0001\"}");
}

static void test_drop_and_keep(void)
{
    expect(&all, "{\"extra\":1,\"s\":\"x\",\"z\":[]}", "{\"s\":\"x\"}");
    /* additional properties kept as they are, after the declared ones */
    expect(&all_open, "{\"extra\":{\"k\":1},\"s\":3}", "{\"s\":\"3\",\"extra\":{\"k\":1}}");
    expect(&all, "{}", "{}");
}

static void test_errors_name_the_field(void)
{
    expect_error(&all, "{\"items\":[{\"id\":1},{\"id\":2},{\"other\":3}]}",
                 "items[2].id: required property is missing");
    expect_error(&all, "{\"items\":[{\"id\":\"x\"}]}",
                 "items[0].id: cannot be converted to an integer");
    expect_error(&all, "{\"s\":{\"a\":1}}", "s: cannot be converted to a string");
    expect_error(&all, "{\"tags\":\"a\"}", "tags: is not an array");
    expect_error(&all, "{\"n\":\"0x10\"}", "n: cannot be converted to a number");
    expect_error(&all, "{\"n\":\"1e\"}", "n: cannot be converted to a number");
}

static void test_root_and_null(void)
{
    struct evbuffer *out = evbuffer_new();
    const char *err = NULL;
    ASSERT_OK(schema_write(&schema_integer, NULL, out, &err));
    ASSERT_OK(schema_write(&nullable_string, NULL, out, &err));
    ASSERT_OK(schema_write(&schema_any, NULL, out, &err));
    CU_ASSERT_EQUAL(schema_write(&events_response, NULL, out, &err), -1);
    size_t len = evbuffer_get_length(out);
    char text[32] = {0};
    evbuffer_remove(out, text, len < 31 ? len : 31);
    CU_ASSERT_STRING_EQUAL(text, "0nullnull");
    evbuffer_free(out);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"runbook EventsResponse", test_events_response},
        {"type coercions", test_coercions},
        {"undeclared properties dropped or kept", test_drop_and_keep},
        {"errors name the field, nothing written", test_errors_name_the_field},
        {"root values and null", test_root_and_null},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_schema", tests, NULL, NULL);
}
