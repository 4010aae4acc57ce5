/* tests/unit/test_gw_idem.c: Idempotency-Key parsing, fingerprints, store keys. */
#include "http-gateway/idem.h"

#include "core/alloc.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_valid_keys(void)
{
    char out[IDEM_KEY_BUF];
    const char *bare[] = {"8e03978e-40d5-43e8-bc93-6894a57f9324", "a",
                          "key_1.2:3/4+5=~!#$%&'()*;<>?@[]^`{|}", "  padded\t"};
    const char *want[] = {"8e03978e-40d5-43e8-bc93-6894a57f9324", "a",
                          "key_1.2:3/4+5=~!#$%&'()*;<>?@[]^`{|}", "padded"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bare); i++) {
        ASSERT_OK(idem_key_parse(bare[i], out));
        CU_ASSERT_STRING_EQUAL(out, want[i]);
    }
    /* sf-strings are unwrapped; escapes resolved; spaces allowed inside */
    ASSERT_OK(idem_key_parse("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"", out));
    CU_ASSERT_STRING_EQUAL(out, "8e03978e-40d5-43e8-bc93-6894a57f9324");
    ASSERT_OK(idem_key_parse("\"with space, comma \\\"quote\\\" and \\\\\"", out));
    CU_ASSERT_STRING_EQUAL(out, "with space, comma \"quote\" and \\");

    char max[IDEM_KEY_MAX + 3];
    memset(max, 'k', IDEM_KEY_MAX);
    max[IDEM_KEY_MAX] = '\0';
    ASSERT_OK(idem_key_parse(max, out));
    CU_ASSERT_EQUAL(strlen(out), IDEM_KEY_MAX);
    /* 255 characters inside quotes: the quotes do not count */
    max[0] = '"';
    memset(max + 1, 'k', IDEM_KEY_MAX);
    max[IDEM_KEY_MAX + 1] = '"';
    max[IDEM_KEY_MAX + 2] = '\0';
    ASSERT_OK(idem_key_parse(max, out));
    CU_ASSERT_EQUAL(strlen(out), IDEM_KEY_MAX);
}

static void test_invalid_keys(void)
{
    char out[IDEM_KEY_BUF];
    char toolong[IDEM_KEY_MAX + 2];
    memset(toolong, 'k', IDEM_KEY_MAX + 1);
    toolong[IDEM_KEY_MAX + 1] = '\0';
    char toolong_q[IDEM_KEY_MAX + 4];
    toolong_q[0] = '"';
    memset(toolong_q + 1, 'k', IDEM_KEY_MAX + 1);
    toolong_q[IDEM_KEY_MAX + 2] = '"';
    toolong_q[IDEM_KEY_MAX + 3] = '\0';
    const char *bad[] = {
        NULL,
        "",
        "   ",
        "\"\"",
        "two words",
        "comma,key",
        "back\\slash",
        "quo\"te",
        "\"unterminated",
        "\"bad \\n escape\"",
        "\"trailing\" x",
        "\"a\";p=1",
        "tab\tinside",
        "caf\xc3\xa9",
        "\"caf\xc3\xa9\"",
        "ctl\x01",
        "\"",
        toolong,
        toolong_q,
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(bad); i++)
        if (idem_key_parse(bad[i], out) != -1)
            CU_FAIL(bad[i] ? bad[i] : "NULL");
}

static void test_fingerprint_golden(void)
{
    char fp[IDEM_FINGERPRINT_BUF];
    const char *body = "{\"type\":\"purchase\"}";
    ASSERT_OK(
        idem_fingerprint("POST", "/api/v1/analytics/events", "b=2&a=1", body, strlen(body), fp));
    /* sha256("4:POST" "24:/api/v1/analytics/events" "7:a=1&b=2" "19:{...}") */
    CU_ASSERT_STRING_EQUAL(fp, "1531c2436eac1e4a15e6abb2ad14791bbcaad630e118794a729987398a624cbf");
}

static void test_fingerprint_properties(void)
{
    char a[IDEM_FINGERPRINT_BUF], b[IDEM_FINGERPRINT_BUF], c[IDEM_FINGERPRINT_BUF];
    const char *body = "{\"type\":\"purchase\",\"amount\":10}";
    size_t len = strlen(body);
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/x", "?z=1&a=2&m=3", body, len, a));
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/x", "m=3&z=1&a=2", body, len, b));
    CU_ASSERT_STRING_EQUAL(a, b); /* stable under query reordering */
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/%78", "m=3&z=1&a=2", body, len, b));
    CU_ASSERT_STRING_EQUAL(a, b); /* and under escapes of unreserved characters */

    char *changed = xstrdup(body);
    changed[len - 2] = '1'; /* "amount":11 */
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/x", "a=2&m=3&z=1", changed, len, c));
    CU_ASSERT_STRING_NOT_EQUAL(a, c); /* one byte of body */
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/x", "a=2&m=3&z=1", body, len - 1, c));
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    ASSERT_OK(idem_fingerprint("PATCH", "/api/v1/x", "a=2&m=3&z=1", body, len, c));
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    ASSERT_OK(idem_fingerprint("POST", "/api/v1/y", "a=2&m=3&z=1", body, len, c));
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    /* fields cannot bleed into each other */
    ASSERT_OK(idem_fingerprint("POST", "/p", "a=1", "", 0, b));
    ASSERT_OK(idem_fingerprint("POST", "/p", "", "a=1", 3, c));
    CU_ASSERT_STRING_NOT_EQUAL(b, c);
    ASSERT_OK(idem_fingerprint("POST", "/p", NULL, NULL, 0, c));
    CU_ASSERT_EQUAL(strlen(c), 64);
    free(changed);
}

static void test_store_key(void)
{
    char *a = idem_store_key("acme", "user-1", "POST", "/api/v1/analytics/events", "k1");
    CU_ASSERT_STRING_EQUAL(a, "idem:v1:4:acme;6:user-1;4:POST;24:/api/v1/analytics/events;2:k1;");
    char *b = idem_store_key("acme", "user-2", "POST", "/api/v1/analytics/events", "k1");
    CU_ASSERT_STRING_NOT_EQUAL(a, b);
    char *c = idem_store_key(NULL, NULL, "POST", "/x", "k");
    CU_ASSERT_STRING_EQUAL(c, "idem:v1:0:;0:;4:POST;2:/x;1:k;");
    /* a key with separators cannot collide with another principal */
    char *d = idem_store_key("t", "u;1:v", "POST", "/x", "k");
    char *e = idem_store_key("t", "u", "POST", "/x", "v;4:POST;2:/x;1:k");
    CU_ASSERT_STRING_NOT_EQUAL(d, e);
    free(a), free(b), free(c), free(d), free(e);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"valid keys, sf-strings unwrapped", test_valid_keys},
        {"invalid keys", test_invalid_keys},
        {"fingerprint golden value", test_fingerprint_golden},
        {"fingerprint: query order, 1-byte body change", test_fingerprint_properties},
        {"store key", test_store_key},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_idem", tests, NULL, NULL);
}
