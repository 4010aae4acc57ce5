/* tests/unit/test_core.c: core/ — strict JSON, UUIDv7, configuration, the
 * string map, envelopes, the metrics text, the work pool and the bounded
 * memory of recent values. */
#include "bus/bus.h"
#include "bus/envelope.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/digest.h"
#include "core/json.h"
#include "core/metrics.h"
#include "core/recent.h"
#include "core/redis.h"
#include "core/strmap.h"
#include "core/uuid.h"
#include "core/workpool.h"
#include "tests/testlib.h"

#include <event2/buffer.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int parse(const char *s)
{
    json_object *o = NULL;
    const char *why = NULL;
    int rc = json_parse_strict(s, strlen(s), &o, &why);
    json_object_put(o);
    return rc;
}

static void test_json_strict(void)
{
    CU_ASSERT_EQUAL(parse("{\"a\":1}"), 0);
    CU_ASSERT_EQUAL(parse("  {\"a\":[1,2,{\"b\":\"x\"}]}  \n"), 0);
    CU_ASSERT_EQUAL(parse("{\"a\":1} trailing"), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":1}{}"), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":1,\"a\":2}"), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":{\"b\":1,\"b\":2}}"), -1);
    CU_ASSERT_EQUAL(parse("[{\"x\":1},{\"x\":1,\"y\":{\"x\":2,\"x\":3}}]"), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":1,\"\\u0061\":2}"), -1); /* the same key, escaped */
    CU_ASSERT_EQUAL(parse("{\"a\":\"}\",\"b\":\"{,\"}"), 0);  /* structure inside strings */
    CU_ASSERT_EQUAL(parse("{'a':1}"), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":1,}"), -1);
    CU_ASSERT_EQUAL(parse(""), -1);
    CU_ASSERT_EQUAL(parse("{\"a\":\"\xff\"}"), -1); /* invalid UTF-8 */
    char deep[200] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    CU_ASSERT_EQUAL(parse(deep), -1);
    json_object *o = NULL;
    const char *why = NULL;
    ASSERT_OK(json_parse_strict("{\"userId\":\"u1\",\"n\":5}", 21, &o, &why));
    CU_ASSERT_STRING_EQUAL(json_get_str(o, "userId"), "u1");
    int64_t n = 0;
    CU_ASSERT_TRUE(json_get_int64(o, "n", &n));
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_PTR_NULL(json_get_str(o, "n"));
    json_object_put(o);
    /* a string holding U+0000 is refused, not cut at it */
    const char *nul = "{\"userId\":\"a\\u0000b\"}";
    ASSERT_OK(json_parse_strict(nul, strlen(nul), &o, &why));
    CU_ASSERT_PTR_NULL(json_get_str(o, "userId"));
    json_object_put(o);
}

static int validate_n(const char *s, size_t n)
{
    const char *why = NULL;
    int rc = json_validate(s, n, &why);
    CU_ASSERT_TRUE(rc == 0 || (why && *why));
    return rc;
}

static int validate(const char *s)
{
    return validate_n(s, strlen(s));
}

/* n brackets (or objects "{"a":...}") around inner. */
static char *nest(int n, bool objects, const char *inner)
{
    size_t len = strlen(inner) + (size_t)n * 6 + 1;
    char *b = xmalloc(len), *p = b;
    for (int i = 0; i < n; i++)
        p += objects ? (size_t)sprintf(p, "{\"a\":") : (size_t)sprintf(p, "[");
    p += sprintf(p, "%s", inner);
    for (int i = 0; i < n; i++)
        *p++ = objects ? '}' : ']';
    *p = '\0';
    return b;
}

static void test_json_validate(void)
{
    static const char *const good[] = {
        "{}",
        "[]",
        "0",
        "-0",
        "1",
        "-1",
        "12.5",
        "1e5",
        "1E+5",
        "1.5e-3",
        "-0.0e0",
        "99999999999999999999",
        "true",
        "false",
        "[null]",
        "\"\"",
        "\"a\\\"\\\\\\/\\b\\f\\n\\r\\tb\"",
        " \t\n\r{ \"a\" : [ 1 , 2 ] } \r\n",
        "\"\\u0000\"",
        "{\"a\":\"\\u0000\"}",
        "\"\\ud834\\udd1e\"",
        "\"\\uD834\\uDD1E\"",
        "\"\xc3\xa9\"",
        "\"\xe2\x82\xac\"",
        "\"\xf0\x9f\x98\x80\"",
        "\"\xf4\x8f\xbf\xbf\"",
        "[{\"x\":1},{\"x\":1}]",
        "{\"a\":{\"a\":1},\"b\":{\"a\":1}}",
        "{\"a\":\"}\",\"b\":\"{,\"}",
        "{\"ab\":1,\"a\":2,\"b\":3}",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (validate(good[i]) != 0) {
            fprintf(stderr, "refused: %s\n", good[i]);
            CU_FAIL("a valid text refused");
        }
    static const char *const bad[] = {
        "",
        " ",
        "01",
        "00",
        "-01",
        "1.",
        ".5",
        "+1",
        "-",
        "1e",
        "1e+",
        "0x10",
        "1.e1",
        "NaN",
        "Infinity",
        "-Infinity",
        "nul",
        "tru",
        "True",
        "'a'",
        "[1,]",
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\" 1}",
        "{a:1}",
        "/*c*/1",
        "1//c",
        "\v1",
        "\f1",
        "1 2",
        "[1]x",
        "{}{}",
        "\"abc",
        "[1",
        "{\"a\":1",
        "{\"a\"}",
        "{,}",
        "[,1]",
        "\"a\tb\"",
        "\"a\x01\"",
        "\"a\x1f\"",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\uZZZZ\"",
        "\"\\U0041\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800x\"",
        "\"\\ud800\\u0041\"",
        "\"\\udc00\\ud800\"",
        "\"\xc0\x80\"",
        "\"\xc1\xbf\"",
        "\"\xe0\x80\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xf5\x80\x80\x80\"",
        "\"\xe2\x82\"",
        "\"\xff\"",
        "\"\x80\"",
        "{\"a\":1,\"a\":2}",
        "{\"a\":1,\"\\u0061\":2}",
        "{\"\\u00e9\":1,\"\xc3\xa9\":2}",
        "{\"a\":{\"b\":1,\"b\":2}}",
        "[{\"x\":1},{\"x\":1,\"y\":{\"x\":2,\"x\":3}}]",
        "null",
        " null\n",
        "{\"\\u0000\":1}",
        "{\"a\\u0000x\":1,\"a\\u0000y\":2}",
        "{\"a\":1,\"a\\u0000\":2}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (validate(bad[i]) == 0) {
            fprintf(stderr, "accepted: %s\n", bad[i]);
            CU_FAIL("an invalid text accepted");
        }
    CU_ASSERT_EQUAL(validate_n("1\0", 2), -1); /* NUL after the value */
    CU_ASSERT_EQUAL(validate_n("\"a\0b\"", 5), -1);
    const char *why = NULL;
    CU_ASSERT_EQUAL(json_validate("{\"a\":1} x", 9, &why), -1);
    CU_ASSERT_STRING_EQUAL(why, "trailing data after the JSON value");
    CU_ASSERT_EQUAL(json_validate("{\"a\":1,\"a\":1}", 13, &why), -1);
    CU_ASSERT_STRING_EQUAL(why, "duplicate key in JSON object");

    /* depth: a value inside n containers is at level n + 1 (json-c counts so) */
    char *d;
    CU_ASSERT_EQUAL(validate(d = nest(32, false, "")), 0); /* the innermost [] at level 32 */
    free(d);
    CU_ASSERT_EQUAL(validate(d = nest(33, false, "")), -1);
    free(d);
    CU_ASSERT_EQUAL(validate(d = nest(31, true, "1")), 0); /* the 1 at level 32 */
    free(d);
    d = nest(32, true, "1");
    CU_ASSERT_EQUAL(json_validate(d, strlen(d), &why), -1);
    CU_ASSERT_STRING_EQUAL(why, "JSON nested too deeply");
    free(d);

    /* many keys: distinct ones pass, one repeated among them (escaped) does not */
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{");
    for (int i = 0; i < 3000; i++)
        evbuffer_add_printf(b, "%s\"k%d\":%d", i ? "," : "", i, i);
    evbuffer_add_printf(b, "}");
    size_t blen = evbuffer_get_length(b);
    CU_ASSERT_EQUAL(validate_n((const char *)evbuffer_pullup(b, -1), blen), 0);
    evbuffer_drain(b, blen);
    evbuffer_add_printf(b, "{");
    for (int i = 0; i < 3000; i++)
        evbuffer_add_printf(b, "\"k%d\":%d,", i, i);
    evbuffer_add_printf(b, "\"k\\u0031234\":0}"); /* "k1234" again */
    blen = evbuffer_get_length(b);
    CU_ASSERT_EQUAL(json_validate((const char *)evbuffer_pullup(b, -1), blen, &why), -1);
    CU_ASSERT_STRING_EQUAL(why, "duplicate key in JSON object");
    evbuffer_free(b);

    /* the parser accepts what the validator does, and builds it */
    json_object *o = NULL;
    CU_ASSERT_EQUAL(json_parse_strict("12", 2, &o, &why), 0); /* a number at the very end */
    CU_ASSERT_EQUAL(json_object_get_int64(o), 12);
    json_object_put(o);
    CU_ASSERT_EQUAL(json_parse_strict("\"\\ud834\\udd1e\"", 14, &o, &why), 0);
    CU_ASSERT_STRING_EQUAL(json_object_get_string(o), "\xf0\x9d\x84\x9e");
    json_object_put(o);
    CU_ASSERT_EQUAL(json_parse_strict("null", 4, &o, &why), -1);
    CU_ASSERT_PTR_NULL(o);
    CU_ASSERT_EQUAL(json_parse_strict("[1.]", 4, &o, &why), -1);
    CU_ASSERT_PTR_NULL(o);
}

/* What json-c's strict mode makes of s: 0 when it builds a document. */
static int jsonc_strict(const char *s, size_t n)
{
    json_tokener *tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = json_tokener_parse_ex(tok, s, (int)n);
    size_t used = json_tokener_get_parse_end(tok);
    if (!o && json_tokener_get_error(tok) == json_tokener_continue && used == n)
        o = json_tokener_parse_ex(tok, " ", 1);
    int rc = o && json_tokener_get_error(tok) == json_tokener_success ? 0 : -1;
    if (rc == 0 && n > used) /* what follows must be whitespace */
        for (size_t i = used; i < n; i++)
            if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
                rc = -1;
    json_object_put(o);
    json_tokener_free(tok);
    return rc;
}

/* Keys in a valid text: strings right after "{" or a comma inside an object. */
static size_t text_keys(const char *s, size_t n)
{
    bool obj[JSON_MAX_DEPTH + 2] = {false};
    int depth = 0;
    bool expect_key = false;
    size_t keys = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            keys += expect_key;
            expect_key = false;
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
        } else if (c == '{' || c == '[') {
            obj[++depth] = c == '{';
            expect_key = c == '{';
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',') {
            expect_key = obj[depth];
        }
    }
    return keys;
}

/* Members of every object in a document. */
static size_t dom_keys(json_object *o)
{
    size_t k = 0;
    if (json_object_is_type(o, json_type_object)) {
        json_object_object_foreach(o, key, val)
        {
            (void)key;
            k += 1 + dom_keys(val);
        }
    } else if (json_object_is_type(o, json_type_array)) {
        for (size_t i = 0; i < json_object_array_length(o); i++)
            k += dom_keys(json_object_array_get_idx(o, i));
    }
    return k;
}

/* Random edits of valid documents: whatever the validator accepts, json-c
 * parses too (it is the looser of the two), and json_parse_strict agrees
 * with the validator; a document json_parse_strict builds and json-c writes
 * back validates again and has as many keys as the text (json-c merged
 * none). Seeded: the same inputs every run. */
static void test_json_differential(void)
{
    static const char *const seeds[] = {
        "{\"type\":\"payment.requested\",\"paymentId\":\"0190c1f2-8b1c-7cc1-9c1a-1234567890ab\",\"amount\":1999,"
        "\"currency\":\"EUR\",\"tags\":[\"a\",\"b\"],\"meta\":{\"x\":null,\"y\":true,\"z\":-1.5e3}}",
        "[1,-0,0.5,2e10,\"\\u00e9\\n\",{\"\":{}},[[[]]],false]",
        "{\"k\\u0041\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"kA2\":\"\\ud83d\\ude00\",\"z\\u0000\":0,\"z\":1}",
    };
    static const char alphabet[] = "{}[]\",:\\ -+.eE019atrufnslu\x01\x80\xc3\xa9\xed\xf4";
    uint64_t seed = 0x9e3779b97f4a7c15u;
    size_t accepted = 0, refused = 0;
    char buf[512];
    for (int round = 0; round < 30000; round++) {
        const char *src = seeds[round % 3];
        size_t n = strlen(src);
        memcpy(buf, src, n);
        int edits = 1 + (int)(seed % 3);
        for (int e = 0; e < edits; e++) {
            seed = seed * 6364136223846793005u + 1442695040888963407u;
            size_t at = (size_t)(seed >> 33) % (n + 1);
            char c = alphabet[(seed >> 20) % (sizeof alphabet - 1)];
            switch ((seed >> 12) % 3) {
            case 0: /* replace */
                if (at < n)
                    buf[at] = c;
                break;
            case 1: /* insert */
                if (n + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = c;
                    n++;
                }
                break;
            default: /* delete */
                if (at < n) {
                    memmove(buf + at, buf + at + 1, n - at - 1);
                    n--;
                }
            }
        }
        const char *why = NULL;
        int v = json_validate(buf, n, &why);
        json_object *o = NULL;
        int p = json_parse_strict(buf, n, &o, &why);
        if (v == 0 && jsonc_strict(buf, n) != 0)
            CU_FAIL("the validator accepts what json-c refuses");
        if (p != v)
            CU_FAIL("json_parse_strict and json_validate disagree");
        if (p == 0) {
            const char *back = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
            if (json_validate(back, strlen(back), &why) != 0)
                CU_FAIL("a built document does not validate when written back");
            if (dom_keys(o) != text_keys(buf, n))
                CU_FAIL("json-c merged keys the validator found distinct");
        }
        json_object_put(o);
        v == 0 ? accepted++ : refused++;
    }
    /* the edits make both kinds, plenty of each */
    CU_ASSERT_TRUE(accepted > 1000);
    CU_ASSERT_TRUE(refused > 1000);
}

static void test_json_escape(void)
{
    struct evbuffer *b = evbuffer_new();
    json_buf_str(b, "a\"b\\c\n\x01");
    evbuffer_add(b, "", 1);
    CU_ASSERT_STRING_EQUAL((char *)evbuffer_pullup(b, -1), "\"a\\\"b\\\\c\\n\\u0001\"");
    evbuffer_free(b);
}

/* FIPS 180-2 appendix B.1 and B.2, and the empty message. */
static void test_sha256_hex(void)
{
    char h[DIGEST_SHA256_HEX_LEN + 1];
    digest_sha256_hex("abc", h);
    CU_ASSERT_STRING_EQUAL(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    digest_sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", h);
    CU_ASSERT_STRING_EQUAL(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    digest_sha256_hex("", h);
    CU_ASSERT_STRING_EQUAL(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_uuid_v7(void)
{
    char prev[UUID_STR_LEN] = "", id[UUID_STR_LEN];
    for (int i = 0; i < 10000; i++) {
        uuid_v7(id);
        CU_ASSERT_TRUE(uuid_valid(id));
        CU_ASSERT_EQUAL(id[14], '7');
        CU_ASSERT_TRUE(strchr("89ab", id[19]) != NULL);
        CU_ASSERT_TRUE(strcmp(prev, id) < 0); /* strictly increasing within the process */
        memcpy(prev, id, sizeof id);
    }
    CU_ASSERT_FALSE(uuid_valid("not-a-uuid"));
    CU_ASSERT_FALSE(uuid_valid("0190b2f0-0000-7000-8000-00000000000g"));
    /* the birth of a UUIDv7: RFC 9562 example A.6, 2022-02-22 14:22:22 at UTC-5 */
    CU_ASSERT_EQUAL(uuid_v7_ms("017F22E2-79B0-7CC3-98C4-DC0C0C07398F"), 1645557742000LL);
    int64_t before = clock_now_ms();
    uuid_v7(id);
    int64_t born = uuid_v7_ms(id);
    CU_ASSERT_TRUE(born >= before && born <= clock_now_ms());
    CU_ASSERT_EQUAL(uuid_v7_ms("017f22e2-79b0-4cc3-98c4-dc0c0c07398f"), -1); /* version 4 */
    CU_ASSERT_EQUAL(uuid_v7_ms("not-a-uuid"), -1);
    /* derived: the same ms and name give the same id, a valid version 7 one */
    char d1[UUID_STR_LEN], d2[UUID_STR_LEN], d3[UUID_STR_LEN], d4[UUID_STR_LEN];
    uuid_v7_derived(d1, 1645557742000LL, "payment\ncmd-1\npayment.succeeded");
    uuid_v7_derived(d2, 1645557742000LL, "payment\ncmd-1\npayment.succeeded");
    uuid_v7_derived(d3, 1645557742000LL, "payment\ncmd-1\npayment.failed");
    uuid_v7_derived(d4, 1645557742001LL, "payment\ncmd-1\npayment.succeeded");
    CU_ASSERT_STRING_EQUAL(d1, d2);
    CU_ASSERT_STRING_NOT_EQUAL(d1, d3);
    CU_ASSERT_STRING_NOT_EQUAL(d1, d4);
    CU_ASSERT_EQUAL(uuid_v7_ms(d1), 1645557742000LL);
    CU_ASSERT_EQUAL(uuid_v7_ms(d4), 1645557742001LL);
    CU_ASSERT_TRUE(strchr("89ab", d3[19]) != NULL); /* RFC 9562 variant */
    CU_ASSERT_EQUAL(strncmp(d1, "017f22e2-79b0-7", 15), 0);
    char hex[33];
    random_hex(hex, 16);
    CU_ASSERT_EQUAL(strlen(hex), 32);
}

static void test_config_file_and_env(void)
{
    char path[] = "/tmp/ecom-test-env-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    const char *text = "# comment\nAPP_ENV=development\nPORT=4000\nJWT_SECRET=\"devsecret\"\n"
                       "OUTBOX_BATCH=250 # inline\nFLAG_NEW_CHECKOUT=true\nexport LOG_LEVEL=debug\n"
                       "ECOM_INSTANCE='worker-1' # a quoted value, then a comment\n";
    CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    setenv("PORT", "5000", 1); /* the environment wins over the file */
    config_t c;
    char *errors = NULL;
    int rc = config_load(&c, path, CFG_ROLE_GATEWAY, &errors);
    CU_ASSERT_EQUAL(rc, 0);
    if (errors)
        fprintf(stderr, "%s", errors);
    free(errors);
    CU_ASSERT_EQUAL(c.port, 5000);
    CU_ASSERT_EQUAL(c.outbox_batch, 250);
    CU_ASSERT_STRING_EQUAL(c.jwt_secret, "devsecret");
    CU_ASSERT_STRING_EQUAL(c.log_level, "debug");
    CU_ASSERT_STRING_EQUAL(config_raw(&c, "FLAG_NEW_CHECKOUT"), "true");
    CU_ASSERT_STRING_EQUAL(config_raw(&c, "ECOM_INSTANCE"), "worker-1");
    CU_ASSERT_TRUE(config_is_dev(&c));
    config_free(&c);
    unsetenv("PORT");
    unlink(path);
}

/* A quote left open, or text after the closing one, is a malformed line (not a
 * value with quotes in it); a path that cannot be read as a file is reported. */
static void test_config_file_malformed(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/ecom-test-env-malformed-%d", (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(fd >= 0);
    const char *text = "APP_ENV=development\nJWT_SECRET=\"devsecretdevsecretdevsecret123456\nOTP_PEPPER=\"x\" y\n";
    CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    config_t c;
    char *errors = NULL;
    CU_ASSERT_EQUAL(config_load(&c, path, CFG_ROLE_GATEWAY, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errors);
    CU_ASSERT_PTR_NOT_NULL(strstr(errors, ":2: no closing quote"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errors, ":3: text after the closing quote"));
    free(errors);
    config_free(&c);
    unlink(path);
    errors = NULL;
    CU_ASSERT_EQUAL(config_load(&c, "/tmp", CFG_ROLE_TOOL, &errors), -1);
    CU_ASSERT_TRUE(errors && strstr(errors, "--env-file /tmp: Is a directory"));
    free(errors);
    config_free(&c);
}

static void test_config_every_problem(void)
{
    setenv("PORT", "99999", 1);
    setenv("OUTBOX_BATCH", "abc", 1);
    setenv("LOG_FORMAT", "xml", 1);
    setenv("DATABASE_URL", "mysql://x", 1);
    setenv("FLAG_CACHE_SWR", "yes", 1);
    setenv("APP_ENV", "production", 1);
    setenv("JWT_SECRET", "short", 1);
    setenv("JWT_PUBLIC_KEY_PEM", "x", 1);
    config_t c;
    char *errors = NULL;
    CU_ASSERT_EQUAL(config_load(&c, "/nonexistent/env", CFG_ROLE_GATEWAY, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errors);
    const char *want[] = {"PORT", "OUTBOX_BATCH", "LOG_FORMAT", "DATABASE_URL", "FLAG_CACHE_SWR",
                          "JWT_SECRET: 5 bytes", "both set", "/nonexistent/env"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(want); i++)
        CU_ASSERT_PTR_NOT_NULL(strstr(errors, want[i]));
    free(errors);
    config_free(&c);
    const char *vars[] = {"PORT", "OUTBOX_BATCH", "LOG_FORMAT", "DATABASE_URL", "FLAG_CACHE_SWR",
                          "APP_ENV", "JWT_SECRET", "JWT_PUBLIC_KEY_PEM"};
    for (size_t i = 0; i < ECOM_ARRAY_LEN(vars); i++)
        unsetenv(vars[i]);
    /* neither kind of key */
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_GATEWAY, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(errors, "set JWT_SECRET, or both"));
    free(errors);
    config_free(&c);
    /* development-only settings are refused in production */
    setenv("APP_ENV", "production", 1);
    setenv("NOTIFY_SINK_FILE", "/tmp/x.jsonl", 1);
    setenv("JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_GATEWAY, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, "NOTIFY_SINK_FILE") : NULL);
    free(errors);
    config_free(&c);
    /* env.prod's placeholders are refused in production, whichever variable holds them */
    setenv("JWT_SECRET", "replace-me-with-openssl-rand-hex-32-placeholder-0000", 1);
    setenv("OTP_PEPPER", "0123456789abcdef0123456789abcdef", 1);
    setenv("DATABASE_URL", "postgresql://ecom:replace-me-postgres-placeholder@postgres:5432/ecom", 1);
    unsetenv("NOTIFY_SINK_FILE");
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_GATEWAY, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, "JWT_SECRET: still env.prod's placeholder") : NULL);
    CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, "DATABASE_URL: still env.prod's placeholder") : NULL);
    CU_ASSERT_PTR_NULL(errors ? strstr(errors, "OTP_PEPPER") : NULL);
    free(errors);
    config_free(&c);
    unsetenv("DATABASE_URL");
    setenv("JWT_SECRET", "0123456789abcdef0123456789abcdef", 1);
    setenv("APP_ENV", "test", 1);
    setenv("OTP_PEPPER", "0123456789abcdef0123456789abcdef", 1);
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_GATEWAY, &errors), 0);
    unsetenv("OTP_PEPPER");
    config_free(&c);
    unsetenv("APP_ENV");
    unsetenv("NOTIFY_SINK_FILE");
    unsetenv("JWT_SECRET");
    /* the drainer needs no key */
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_DRAINER, &errors), 0);
    config_free(&c);
    /* a published window the inboxes outlive: refused (a redrive would apply rows twice) */
    setenv("OUTBOX_RETAIN_S", "7200", 1);
    setenv("INBOX_RETAIN_S", "3600", 1);
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_SERVICE, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, "OUTBOX_RETAIN_S: 7200 s must be less than INBOX_RETAIN_S") : NULL);
    free(errors);
    config_free(&c);
    setenv("INBOX_RETAIN_S", "7201", 1);
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_DRAINER, &errors), 0);
    config_free(&c);
    unsetenv("OUTBOX_RETAIN_S");
    unsetenv("INBOX_RETAIN_S");
}

/* Both forms of a Redis URL, and the same server with another db selected. */
static void test_redis_urls(void)
{
    redis_url_t u;
    CU_ASSERT_EQUAL(redis_url_parse("unix://:s3cret@/var/run/redis.sock?db=7", &u), 0);
    CU_ASSERT_STRING_EQUAL(u.path, "/var/run/redis.sock");
    CU_ASSERT_STRING_EQUAL(u.host, "");
    CU_ASSERT_STRING_EQUAL(u.password, "s3cret");
    CU_ASSERT_EQUAL(u.db, 7);
    CU_ASSERT_EQUAL(redis_url_parse("redis://:pw@localhost:6380/2", &u), 0);
    CU_ASSERT_STRING_EQUAL(u.path, "");
    CU_ASSERT_STRING_EQUAL(u.host, "127.0.0.1");
    CU_ASSERT_EQUAL(u.port, 6380);
    CU_ASSERT_STRING_EQUAL(u.password, "pw");
    CU_ASSERT_EQUAL(u.db, 2);
    /* sun_path holds 107 bytes and a NUL: a longer path is refused, not cut */
    char longpath[160] = "unix://";
    memset(longpath + 7, 'a', 107);
    longpath[7] = '/';
    CU_ASSERT_EQUAL(redis_url_parse(longpath, &u), 0);
    CU_ASSERT_EQUAL(strlen(u.path), 107);
    longpath[7 + 107] = 'a';
    CU_ASSERT_EQUAL(redis_url_parse(longpath, &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix://", &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix:///", &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix:///?db=3", &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix:///run/redis/", &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix:///s?db=", &u), -1);
    CU_ASSERT_EQUAL(redis_url_parse("unix:///s?db=70000", &u), -1);

    static const struct {
        const char *url, *want;
    } with[] = {
        {"redis://127.0.0.1:6379", "redis://127.0.0.1:6379/5"},
        {"redis://:pw@h:7000/3", "redis://:pw@h:7000/5"},
        {"unix:///tmp/r.sock", "unix:///tmp/r.sock?db=5"},
        {"unix://:pw@/tmp/r.sock?db=1", "unix://:pw@/tmp/r.sock?db=5"},
        {"redis://:p@ss@h:7000", "redis://:p@ss@h:7000/5"}, /* the password ends at the last '@' */
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(with); i++) {
        char *got = redis_url_with_db(with[i].url, 5);
        CU_ASSERT_PTR_NOT_NULL_FATAL(got);
        CU_ASSERT_STRING_EQUAL(got, with[i].want);
        free(got);
    }
    CU_ASSERT_PTR_NULL(redis_url_with_db("http://h", 5));
}

/* DATABASE_URL and REDIS_URL are read as their connections will read them:
 * a malformed one is a configuration problem, reported with the others. */
static void test_config_urls(void)
{
    static const struct {
        const char *db, *redis, *want; /* want: NULL = accepted */
    } cases[] = {
        {"postgres://u:pw@127.0.0.1:5432/ecom?sslmode=disable", "redis://:pw@127.0.0.1:6379/2", NULL},
        {"postgresql:///ecom?host=/tmp&port=5433", "redis://localhost", NULL},
        {"postgres://h1,h2:5433/db", "redis://h:6379/", NULL},
        {"postgres://h/db?frobnicate=1", "", "invalid URI query parameter"},
        {"postgres://h:54x/db", "", "port '54x' is not 1..65535"},
        {"postgres://h1:5432,h2:0/db", "", "port '0' is not 1..65535"},
        {"postgres://h/db?sslmode=maybe", "", "sslmode 'maybe'"},
        {"", "redis://h:6379x", "REDIS_URL: expected redis://"},
        {"", "redis://h/db1", "REDIS_URL: expected redis://"},
        {"", "redis://h:6379?x=1", "REDIS_URL: expected redis://"},
        {"", "unix:///run/redis/redis.sock", NULL},
        {"", "unix://:pw@/run/redis.sock?db=4", NULL},
        {"", "unix://run/redis.sock", "REDIS_URL: expected redis://"},
        {"", "unix:///run/redis.sock?db=x", "REDIS_URL: expected redis://"},
        {"", "unix:///run/redis.sock?timeout=1", "REDIS_URL: expected redis://"},
        {"", "rediss://h", "REDIS_URL: expected a redis|unix:// URL"},
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(cases); i++) {
        setenv("DATABASE_URL", cases[i].db, 1);
        setenv("REDIS_URL", cases[i].redis, 1);
        config_t c;
        char *errors = NULL;
        int rc = config_load(&c, NULL, CFG_ROLE_DRAINER, &errors);
        if (cases[i].want) {
            CU_ASSERT_EQUAL(rc, -1);
            CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, cases[i].want) : NULL);
        } else {
            CU_ASSERT_EQUAL(rc, 0);
        }
        if ((rc == 0) != (cases[i].want == NULL))
            fprintf(stderr, "\n  %s / %s: %s\n", cases[i].db, cases[i].redis, errors ? errors : "accepted");
        free(errors);
        config_free(&c);
    }
    /* a password libpq quotes in its complaint is not repeated */
    setenv("DATABASE_URL", "postgres://u:s3cr%zzt@h/db", 1);
    setenv("REDIS_URL", "", 1);
    config_t c;
    char *errors = NULL;
    CU_ASSERT_EQUAL(config_load(&c, NULL, CFG_ROLE_DRAINER, &errors), -1);
    CU_ASSERT_PTR_NOT_NULL(errors ? strstr(errors, "percent-encoded") : NULL);
    CU_ASSERT_PTR_NULL(errors ? strstr(errors, "s3cr") : NULL);
    free(errors);
    config_free(&c);
    unsetenv("DATABASE_URL");
    unsetenv("REDIS_URL");
}

static void test_strmap(void)
{
    strmap_t m;
    strmap_init(&m);
    char k[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        bool created;
        void **v = strmap_put(&m, k, strlen(k), &created);
        CU_ASSERT_TRUE(created);
        *v = (void *)(intptr_t)(i + 1);
    }
    for (int i = 0; i < 5000; i += 2) {
        snprintf(k, sizeof k, "key-%d", i);
        CU_ASSERT_TRUE(strmap_del(&m, k, strlen(k), NULL));
    }
    size_t live = 0;
    const char *key;
    for (size_t i = 0; strmap_next(&m, &i, &key, NULL, NULL);)
        live++;
    CU_ASSERT_EQUAL(live, 2500);
    for (int i = 0; i < 5000; i++) {
        snprintf(k, sizeof k, "key-%d", i);
        void **v = strmap_get(&m, k, strlen(k));
        if (i % 2) {
            CU_ASSERT_TRUE(v && (intptr_t)*v == i + 1);
        } else {
            CU_ASSERT_PTR_NULL(v);
        }
    }
    strmap_free(&m);
}

static void test_envelope_fields(void)
{
    envelope_t e = {.type = "payment.requested", .topic = "payment", .tenant = "t1", .aggregate_id = "p-1",
                    .seq = 7, .ts = 1700000000000, .v = 1, .traceparent = "", .request_id = "r1",
                    .payload = "{\"a\":1}"};
    uuid_v7(e.id);
    const char *names[ENV_NFIELDS], *vals[ENV_NFIELDS];
    size_t nl[ENV_NFIELDS], vl[ENV_NFIELDS];
    char tmp[ENV_NFIELDS][32];
    for (int i = 0; i < ENV_NFIELDS; i++) {
        names[i] = envelope_field_name(i);
        vals[i] = envelope_field_value(&e, i, tmp[i]);
        nl[i] = strlen(names[i]);
        vl[i] = strlen(vals[i]);
    }
    envelope_t d;
    const char *why = NULL;
    ASSERT_OK(envelope_from_fields(&d, names, nl, vals, vl, ENV_NFIELDS, &why));
    CU_ASSERT_STRING_EQUAL(d.id, e.id);
    CU_ASSERT_STRING_EQUAL(d.type, "payment.requested");
    CU_ASSERT_EQUAL(d.seq, 7);
    CU_ASSERT_EQUAL(d.ts, 1700000000000);
    CU_ASSERT_STRING_EQUAL(d.payload, "{\"a\":1}");
    envelope_clear(&d);
    /* without the payload */
    CU_ASSERT_EQUAL(envelope_from_fields(&d, names, nl, vals, vl, ENV_NFIELDS - 1, &why), -1);
    CU_ASSERT_STRING_EQUAL(why, "missing field payload");
    envelope_clear(&d);
    CU_ASSERT_FALSE(envelope_name_valid("has space"));
    CU_ASSERT_FALSE(envelope_name_valid(""));
    CU_ASSERT_TRUE(envelope_name_valid("auth.otp.requested"));
    /* the bus's own streams are no topic's */
    CU_ASSERT_TRUE(envelope_topic_valid("payment"));
    CU_ASSERT_TRUE(envelope_topic_valid("replays:x"));
    CU_ASSERT_FALSE(envelope_topic_valid("dlq:payment"));
    CU_ASSERT_FALSE(envelope_topic_valid("replay:payment"));
    CU_ASSERT_TRUE(envelope_stream_is_topic("ecom:payment"));
    CU_ASSERT_FALSE(envelope_stream_is_topic("ecom:dlq:payment"));
    CU_ASSERT_FALSE(envelope_stream_is_topic("ecom:replay:payment"));
    CU_ASSERT_FALSE(envelope_stream_is_topic("other:payment"));
    static const char *const types[] = {"payment.requested", "payment.refund.requested", NULL};
    CU_ASSERT_TRUE(envelope_type_in(types, "payment.refund.requested"));
    CU_ASSERT_FALSE(envelope_type_in(types, "payment.refund"));
    CU_ASSERT_FALSE(envelope_type_in(NULL, "payment.requested"));
}

static void test_entry_ids(void)
{
    CU_ASSERT_TRUE(bus_entry_id_cmp("9-0", "10-0") < 0); /* numbers, not text */
    CU_ASSERT_TRUE(bus_entry_id_cmp("10-2", "10-11") < 0);
    CU_ASSERT_TRUE(bus_entry_id_cmp("10-11", "10-2") > 0);
    CU_ASSERT_EQUAL(bus_entry_id_cmp("1795761172443-25", "1795761172443-25"), 0);
    CU_ASSERT_TRUE(bus_entry_id_cmp("junk", "1-0") < 0);
    CU_ASSERT_TRUE(bus_entry_id_cmp("1-0", "junk") > 0);
}

static void test_metrics_text(void)
{
    metric_t *c = metrics_counter("t_requests_total", "Requests", "route=\"/a\"");
    metric_t *c2 = metrics_counter("t_requests_total", "Requests", "route=\"/b\"");
    CU_ASSERT_PTR_EQUAL(c, metrics_counter("t_requests_total", "Requests", "route=\"/a\""));
    metrics_add(c, 3);
    metrics_add(c2, 1);
    metric_t *h = metrics_histogram("t_latency_seconds", "Latency", "");
    metrics_observe(h, 0.003);
    metrics_observe(h, 2.0);
    struct evbuffer *b = evbuffer_new();
    metrics_render(b);
    evbuffer_add(b, "", 1);
    const char *t = (char *)evbuffer_pullup(b, -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "# TYPE t_requests_total counter\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_requests_total{route=\"/a\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_requests_total{route=\"/b\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_bucket{le=\"0.005\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_count 2\n"));
    /* one TYPE line per name */
    const char *first = strstr(t, "# TYPE t_requests_total");
    CU_ASSERT_PTR_NULL(strstr(first + 1, "# TYPE t_requests_total"));
    evbuffer_free(b);
    metrics_reset();
}

/* ---- work pool ---- */

typedef struct pool_job {
    atomic_int runs[64];
    atomic_int running, most; /* items running now, and at most at once */
    int together;             /* an item waits (up to 5 s) until this many run at once */
    pthread_t caller;
    atomic_int on_caller;
} pool_job_t;

static void pool_item(void *arg, size_t i)
{
    pool_job_t *j = arg;
    int now = atomic_fetch_add(&j->running, 1) + 1;
    int most = atomic_load(&j->most);
    while (now > most && !atomic_compare_exchange_weak(&j->most, &most, now))
        ;
    if (pthread_equal(pthread_self(), j->caller))
        atomic_fetch_add(&j->on_caller, 1);
    /* a blocking call: the items meet only when they run on as many threads */
    for (int waited = 0; atomic_load(&j->running) < j->together && waited < 5000; waited++)
        usleep(1000);
    usleep(2000);
    atomic_fetch_add(&j->runs[i], 1);
    atomic_fetch_sub(&j->running, 1);
}

typedef struct pool_caller {
    workpool_t *p;
    pool_job_t job;
    size_t n;
} pool_caller_t;

static void *pool_call(void *arg)
{
    pool_caller_t *c = arg;
    c->job.caller = pthread_self();
    workpool_run(c->p, c->n, pool_item, &c->job);
    return NULL;
}

static void test_workpool(void)
{
    workpool_t *p = workpool_new(4, 0);
    /* one item: the caller alone, no thread started */
    pool_caller_t one = {.p = p, .n = 1};
    pool_call(&one);
    CU_ASSERT_EQUAL(atomic_load(&one.job.runs[0]), 1);
    CU_ASSERT_EQUAL(atomic_load(&one.job.on_caller), 1);
    CU_ASSERT_EQUAL(workpool_started(p), 0);
    workpool_run(p, 0, pool_item, NULL); /* nothing to do: fn never called (NULL arg would crash) */

    /* ten items on four threads and the caller: each once, five at a time */
    pool_caller_t ten = {.p = p, .n = 10, .job.together = 5};
    pool_call(&ten);
    for (size_t i = 0; i < ten.n; i++)
        CU_ASSERT_EQUAL(atomic_load(&ten.job.runs[i]), 1);
    CU_ASSERT_EQUAL(atomic_load(&ten.job.most), 5);
    CU_ASSERT_TRUE(atomic_load(&ten.job.on_caller) >= 1);
    CU_ASSERT_EQUAL(workpool_started(p), 4);

    /* two callers at once share the threads; every item of each runs once */
    pool_caller_t a = {.p = p, .n = 20}, b = {.p = p, .n = 7};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, pool_call, &a);
    pthread_create(&tb, NULL, pool_call, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (size_t i = 0; i < a.n; i++)
        CU_ASSERT_EQUAL(atomic_load(&a.job.runs[i]), 1);
    for (size_t i = 0; i < b.n; i++)
        CU_ASSERT_EQUAL(atomic_load(&b.job.runs[i]), 1);
    CU_ASSERT_EQUAL(workpool_started(p), 4);
    workpool_free(p);

    /* a pool of no threads runs every item on its caller, in order */
    workpool_t *none = workpool_new(0, 0);
    pool_caller_t seq = {.p = none, .n = 3};
    pool_call(&seq);
    CU_ASSERT_EQUAL(atomic_load(&seq.job.on_caller), 3);
    CU_ASSERT_EQUAL(atomic_load(&seq.job.most), 1);
    workpool_free(none);
    workpool_free(NULL);
}

static void test_recent(void)
{
    static recent_t r = RECENT_INIT(3, sizeof(int));
    int v = 0;
    CU_ASSERT_FALSE(recent_get(&r, "a", &v)); /* nothing kept before the first put */
    for (int i = 1; i <= 3; i++) {
        char k[2] = {(char)('a' + i - 1), 0};
        recent_put(&r, k, &i);
    }
    CU_ASSERT_TRUE(recent_get(&r, "b", &v));
    CU_ASSERT_EQUAL(v, 2);
    int x = 20;
    recent_put(&r, "b", &x); /* again: replaced in place, nothing pushed out */
    CU_ASSERT_TRUE(recent_get(&r, "a", &v) && v == 1);
    CU_ASSERT_TRUE(recent_get(&r, "b", &v) && v == 20);
    int d = 4;
    recent_put(&r, "d", &d); /* a fourth key pushes out the oldest, a */
    CU_ASSERT_FALSE(recent_get(&r, "a", &v));
    CU_ASSERT_TRUE(recent_get(&r, "b", &v) && v == 20);
    CU_ASSERT_TRUE(recent_get(&r, "c", &v) && v == 3);
    CU_ASSERT_TRUE(recent_get(&r, "d", &v) && v == 4);
    int e = 5;
    recent_put(&r, "e", &e); /* then b, whose value changed but whose place did not */
    CU_ASSERT_FALSE(recent_get(&r, "b", &v));
    CU_ASSERT_TRUE(recent_get(&r, "e", &v) && v == 5);
    recent_clear(&r);
    CU_ASSERT_FALSE(recent_get(&r, "e", &v));
    recent_put(&r, "f", &e); /* usable again after a clear */
    CU_ASSERT_TRUE(recent_get(&r, "f", &v) && v == 5);
    recent_clear(&r);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"strict JSON refuses trailing data, duplicates, bad UTF-8, depth", test_json_strict},
        {"JSON validator: RFC 8259 numbers, strings, UTF-8, depth, distinct keys", test_json_validate},
        {"JSON validator against json-c on random edits", test_json_differential},
        {"JSON string escaping", test_json_escape},
        {"SHA-256 hex digests (FIPS 180-2 vectors)", test_sha256_hex},
        {"UUIDv7 layout and order", test_uuid_v7},
        {"config: env file, environment wins", test_config_file_and_env},
        {"config: an env file with a quote left open or text after it, or a directory, is refused",
         test_config_file_malformed},
        {"config: every problem at once", test_config_every_problem},
        {"config: DATABASE_URL and REDIS_URL read as their connections read them", test_config_urls},
        {"redis: TCP and Unix socket URLs, and another db of the same server", test_redis_urls},
        {"string map", test_strmap},
        {"envelope fields round trip", test_envelope_fields},
        {"stream entry ids compare as numbers", test_entry_ids},
        {"metrics Prometheus text", test_metrics_text},
        {"work pool: every item once, side by side, several callers", test_workpool},
        {"recent values: bounded, oldest key out first, a key again in place", test_recent},
        CU_TEST_INFO_NULL,
    };
    return test_main("core", tests, NULL, NULL);
}
