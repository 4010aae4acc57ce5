/* tests/unit/test_gw_route.c: the route table: validation, matching, 405 Allow,
 * URL normalisation. */
#include "http-gateway/route.h"

#include "core/alloc.h"
#include "http-gateway/cache.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void h_list(gw_req_t *r)
{
    (void)r;
}
static void h_get(gw_req_t *r)
{
    (void)r;
}
static void h_me(gw_req_t *r)
{
    (void)r;
}
static void h_post(gw_req_t *r)
{
    (void)r;
}
static void h_item(gw_req_t *r)
{
    (void)r;
}

static const schema_t item_schema = {.type = SCHEMA_OBJECT, .additional_properties = true};

static const route_t table[] = {
    {.id = "events.list",
     .methods = ROUTE_GET,
     .path = "/api/v1/analytics/events",
     .handler = h_list,
     .cache = {.ttl_ms = 5000, .swr_ms = 25000}},
    {.id = "events.create",
     .methods = ROUTE_POST,
     .path = "/api/v1/analytics/events",
     .handler = h_post,
     .idem = {.enabled = true},
     .publish = "analytics.event"},
    {.methods = ROUTE_GET, .path = "/api/v1/analytics/me", .handler = h_me},
    {.methods = ROUTE_GET,
     .path = "/api/v1/orders/:id",
     .handler = h_get,
     .rebac = {.relation = "viewer", .object_param = "id", .object_type = "order"},
     .response_schema = &item_schema},
    {.methods = ROUTE_POST, .path = "/api/v1/orders/latest", .handler = h_post},
    {.methods = ROUTE_PUT | ROUTE_DELETE, .path = "/api/v1/orders/:id", .handler = h_item},
    {.methods = ROUTE_GET,
     .path = "/api/v1/orders/:order/items/:item",
     .handler = h_item,
     .resilience = {.breaker = true, .breaker_params = {.failure_rate_threshold = 0.5}}},
    {.methods = ROUTE_GET, .path = "/", .handler = h_me},
    {.methods = ROUTE_GET, .path = "/api/v1/orders/recent", .handler = h_list},
    {.methods = ROUTE_GET, .path = "/x/:a/c", .handler = h_get},
    {.methods = ROUTE_GET, .path = "/x/b/:z", .handler = h_item},
};

static router_t *router;

static int setup(void)
{
    char *errors = NULL;
    if (router_new(table, ECOM_ARRAY_LEN(table), &router, &errors) != 0) {
        fprintf(stderr, "%s", errors);
        free(errors);
        return 1;
    }
    return 0;
}

static int teardown(void)
{
    router_free(router);
    return 0;
}

static route_result_t match(const char *method, const char *path, route_params_t *p,
                            const route_t **r)
{
    return router_match(router, route_method_bit(method), path, p, r);
}

static void test_static_match(void)
{
    route_params_t p;
    const route_t *r;
    CU_ASSERT_EQUAL(match("GET", "/api/v1/analytics/events", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[0]);
    CU_ASSERT_EQUAL(p.n, 0);
    CU_ASSERT_EQUAL(match("POST", "/api/v1/analytics/events?x=1#f", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[1]);
    CU_ASSERT_EQUAL(match("GET", "/", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[7]);
    CU_ASSERT_STRING_EQUAL(route_id(&table[0]), "events.list");
    CU_ASSERT_STRING_EQUAL(route_id(&table[2]), "/api/v1/analytics/me");
}

static void test_params(void)
{
    route_params_t p;
    const route_t *r;
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/42", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[3]);
    CU_ASSERT_EQUAL(p.n, 1);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "id"), "42");
    CU_ASSERT_PTR_NULL(route_param(&p, "order"));

    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/o%2F1/items/i%20 2?q", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[6]);
    CU_ASSERT_EQUAL(p.n, 2);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "order"), "o/1");
    CU_ASSERT_STRING_EQUAL(route_param(&p, "item"), "i  2");
    CU_ASSERT_STRING_EQUAL(p.names[0], "order");

    /* an invalid escape or %00 makes the row not match */
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/4%2", &p, &r), ROUTE_NOT_FOUND);
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/4%zz", &p, &r), ROUTE_NOT_FOUND);
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/a%00b", &p, &r), ROUTE_NOT_FOUND);
}

static void test_static_beats_param(void)
{
    route_params_t p;
    const route_t *r;
    /* POST /orders/latest is static; GET on it falls to the :id row */
    CU_ASSERT_EQUAL(match("POST", "/api/v1/orders/latest", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[4]);
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/latest", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[3]);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "id"), "latest");
    CU_ASSERT_EQUAL(match("DELETE", "/api/v1/orders/latest", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[5]);
    /* the same method on a static and a param row: static wins, whatever the row order */
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/recent", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[8]);
    CU_ASSERT_EQUAL(p.n, 0);
    CU_ASSERT_EQUAL(match("GET", "/api/v1/orders/recents", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[3]);
    /* the first position where templates differ decides */
    CU_ASSERT_EQUAL(match("GET", "/x/b/c", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[10]);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "z"), "c");
    CU_ASSERT_EQUAL(match("GET", "/x/q/c", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[9]);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "a"), "q");
}

static void test_not_found(void)
{
    route_params_t p;
    const route_t *r;
    const char *paths[] = {
        "/api/v1/analytics/events/", /* trailing slash */
        "/api/v1/analytics",
        "/api/v1/analytics/events/x",
        "/API/v1/analytics/events", /* exact, case-sensitive */
        "/api/v1/orders/",          /* empty param */
        "/api/v1/orders//items/1",
        "api/v1/analytics/events",
        "",
        "//",
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(paths); i++) {
        if (match("GET", paths[i], &p, &r) != ROUTE_NOT_FOUND)
            CU_FAIL(paths[i]);
        CU_ASSERT_PTR_NULL(r);
    }
    CU_ASSERT_EQUAL(router_match(router, ROUTE_GET, NULL, &p, &r), ROUTE_NOT_FOUND);

    /* longer than 2048 bytes, or more segments than any template */
    char *longp = malloc(ROUTE_PATH_MAX + 10);
    memset(longp, 'a', ROUTE_PATH_MAX + 9);
    longp[0] = '/';
    longp[ROUTE_PATH_MAX + 9] = '\0';
    CU_ASSERT_EQUAL(match("GET", longp, &p, &r), ROUTE_NOT_FOUND);
    for (int i = 0; i < ROUTE_PATH_MAX + 9; i++)
        longp[i] = i % 2 ? 'a' : '/';
    longp[ROUTE_PATH_MAX - 1] = '\0';
    CU_ASSERT_EQUAL(match("GET", longp, &p, &r), ROUTE_NOT_FOUND);
    free(longp);
}

static void test_method_not_allowed(void)
{
    route_params_t p;
    const route_t *r;
    CU_ASSERT_EQUAL(match("DELETE", "/api/v1/analytics/events", &p, &r), ROUTE_METHOD_NOT_ALLOWED);
    CU_ASSERT_STRING_EQUAL(p.allow, "GET, HEAD, POST");
    CU_ASSERT_PTR_NULL(r);
    /* every row matching the path counts: the :id rows and the static one */
    CU_ASSERT_EQUAL(match("PATCH", "/api/v1/orders/latest", &p, &r), ROUTE_METHOD_NOT_ALLOWED);
    CU_ASSERT_STRING_EQUAL(p.allow, "GET, HEAD, POST, PUT, DELETE");
    CU_ASSERT_EQUAL(match("PATCH", "/api/v1/orders/7", &p, &r), ROUTE_METHOD_NOT_ALLOWED);
    CU_ASSERT_STRING_EQUAL(p.allow, "GET, HEAD, PUT, DELETE");
    /* an unknown method (OPTIONS) */
    CU_ASSERT_EQUAL(match("OPTIONS", "/api/v1/analytics/me", &p, &r), ROUTE_METHOD_NOT_ALLOWED);
    CU_ASSERT_STRING_EQUAL(p.allow, "GET, HEAD");
}

static void test_head_via_get(void)
{
    route_params_t p;
    const route_t *r;
    CU_ASSERT_EQUAL(match("HEAD", "/api/v1/analytics/events", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[0]);
    CU_ASSERT_EQUAL(match("HEAD", "/api/v1/orders/9", &p, &r), ROUTE_MATCH);
    CU_ASSERT_PTR_EQUAL(r, &table[3]);
    CU_ASSERT_STRING_EQUAL(route_param(&p, "id"), "9");
}

static void test_methods(void)
{
    CU_ASSERT_EQUAL(route_method_bit("PATCH"), ROUTE_PATCH);
    CU_ASSERT_EQUAL(route_method_bit("get"), 0);
    CU_ASSERT_EQUAL(route_method_bit("OPTIONS"), 0);
    CU_ASSERT_EQUAL(route_method_bit(NULL), 0);
    CU_ASSERT_STRING_EQUAL(route_method_name(ROUTE_DELETE), "DELETE");
    CU_ASSERT_PTR_NULL(route_method_name(ROUTE_GET | ROUTE_POST));
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++)
        n += *s == '\n';
    return n;
}

static void test_validation_lists_every_problem(void)
{
    static const route_t bad[] = {
        /* 0 */ {.methods = ROUTE_GET, .path = "/a/:id", .handler = h_get},
        /* 1 */ {.methods = ROUTE_GET | ROUTE_POST, .path = "/a/:key", .handler = h_get}, /* dup */
        /* 2 */ {.methods = ROUTE_GET, .path = "/b/", .handler = h_get},
        /* 3 */ {.methods = ROUTE_GET, .path = "no-slash", .handler = h_get},
        /* 4 */ {.methods = ROUTE_GET, .path = "/c//d", .handler = h_get},
        /* 5 */ {.methods = ROUTE_GET, .path = "/:a/:a", .handler = h_get},
        /* 6 */ {.methods = ROUTE_GET, .path = "/:1x", .handler = h_get},
        /* 7 */ {.methods = ROUTE_GET, .path = "/:a/:b/:c/:d/:e/:f/:g/:h/:i", .handler = h_get},
        /* 8 */
        {.methods = ROUTE_GET, .path = "/e", .handler = h_get, .chaos = {.probability = 1.5, .error_rate = -0.1}},
        /* 9 */ {.methods = ROUTE_GET, .path = "/f", .handler = h_get, .cache = {.ttl_ms = -1}},
        /* 10 */ {.methods = ROUTE_GET, .path = "/g", .handler = NULL},
        /* 11 */ {.methods = 0, .path = "/h", .handler = h_get},
        /* 12 */
        {.methods = ROUTE_POST, .path = "/i", .handler = h_post, .cache = {.ttl_ms = 1000}},
        /* 13 */ {.methods = ROUTE_GET, .path = "/j", .handler = h_get, .idem = {.enabled = true}},
        /* 14 */
        {.methods = ROUTE_GET,
         .path = "/k/:id",
         .handler = h_get,
         .rebac = {.relation = "viewer", .object_param = "nope", .object_type = "k"}},
        /* 15 */
        {.methods = ROUTE_GET,
         .path = "/l",
         .handler = h_get,
         .resilience = {.breaker = true, .breaker_params = {.open_duration_ms = -5}}},
        /* 16: a key that may be left out does not make a hedged write safe */
        {.methods = ROUTE_POST,
         .path = "/m",
         .handler = h_post,
         .idem = {.enabled = true},
         .resilience = {.hedge = {.enabled = true}}},
        /* 17 */ {.methods = ROUTE_GET, .path = "/n", .handler = h_get, .flag = {.name = "--"}},
        /* 18 */ {.methods = ROUTE_GET, .path = "/o", .handler = h_get, .chaos = {.delay_ms = -1}},
        /* 19 */ {.methods = ROUTE_GET, .path = "/p q", .handler = h_get},
        /* 20 */ {.methods = ROUTE_GET, .path = "/q", .handler = h_get, .cache = {.swr_ms = 100}},
        /* 21 */ {.id = "dup", .methods = ROUTE_GET, .path = "/r", .handler = h_get},
        /* 22 */ {.id = "dup", .methods = ROUTE_GET, .path = "/s", .handler = h_get},
        /* 23 */ {.methods = ROUTE_GET, .path = NULL, .handler = h_get},
        /* 24 */
        {.methods = ROUTE_GET, .path = "/t", .handler = h_get, .rate = {.limit = {.count = 5, .period_ms = 0}}},
        /* 25 */ {.methods = ROUTE_GET, .path = "/u", .handler = h_get, .rate = {.by_address = true}},
        /* 26 */
        {.methods = ROUTE_GET,
         .path = "/v",
         .handler = h_get,
         .rebac = {.relation = "viewer", .object_body = "projectId", .object_type = "project"}},
        /* 27 */
        {.methods = ROUTE_POST,
         .path = "/w/:id",
         .handler = h_post,
         .rebac = {.relation = "editor", .object_param = "id", .object_body = "id", .object_type = "w"}},
    };
    char *errors = NULL;
    CU_ASSERT_EQUAL(router_validate(bad, ECOM_ARRAY_LEN(bad), &errors), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errors);
    const char *expect[] = {
        "route 1 (GET|POST /a/:key): duplicates route 0",
        "route 2 (GET /b/): trailing slash",
        "route 3 (GET no-slash): template must start with '/'",
        "route 4 (GET /c//d): empty segment",
        "route 5 (GET /:a/:a): parameter ':a' twice",
        "route 6 (GET /:1x): bad parameter name",
        "more than 8 parameters",
        "route 8 (GET /e): chaos probability outside [0, 1]; chaos error_rate outside [0, 1]",
        "route 9 (GET /f): cache durations must not be negative",
        "route 10 (GET /g): no handler",
        "route 11 (- /h): no valid method",
        "route 12 (POST /i): cache policy on a route without GET or HEAD",
        "route 13 (GET /j): idempotency on a route without POST or PATCH",
        "route 14 (GET /k/:id): rebac object parameter ':nope' is not in the template",
        "route 15 (GET /l): breaker: open_duration_ms is negative",
        "route 16 (POST /m): hedging a POST or PATCH needs a required Idempotency-Key",
        "route 17 (GET /n): bad flag name",
        "route 18 (GET /o): chaos delay_ms is negative",
        "route 19 (GET /p q): character 0x20 not allowed",
        "route 20 (GET /q): cache settings without cache ttl_ms",
        "route 22 (GET /s): id 'dup' already used by route 21",
        "route 23 (GET (null)): no path template",
        "route 24 (GET /t): rate limit needs count > 0 per period_ms > 0",
        "route 25 (GET /u): rate limit needs count > 0 per period_ms > 0",
        "route 26 (GET /v): rebac object body member on a method without a body",
        "route 27 (POST /w/:id): rebac needs an object parameter or an object body member, not both",
    };
    for (size_t i = 0; i < ECOM_ARRAY_LEN(expect); i++)
        if (!strstr(errors, expect[i])) {
            fprintf(stderr, "\nmissing: %s\nin:\n%s", expect[i], errors);
            CU_FAIL(expect[i]);
        }
    if (count_lines(errors) != 26)
        fprintf(stderr, "\n%s", errors);
    CU_ASSERT_EQUAL(count_lines(errors), 26); /* one line per bad row */
    router_t *r = NULL;
    char *errors2 = NULL;
    CU_ASSERT_EQUAL(router_new(bad, ECOM_ARRAY_LEN(bad), &r, &errors2), -1);
    CU_ASSERT_PTR_NULL(r);
    CU_ASSERT_STRING_EQUAL(errors, errors2);
    free(errors);
    free(errors2);
}

static void test_valid_table(void)
{
    char *errors = (char *)"unset";
    ASSERT_OK(router_validate(table, ECOM_ARRAY_LEN(table), &errors));
    CU_ASSERT_PTR_NULL(errors);
    /* same shape, disjoint methods: not a duplicate */
    static const route_t ok[] = {
        {.methods = ROUTE_GET, .path = "/a/:id", .handler = h_get},
        {.methods = ROUTE_POST, .path = "/a/:other", .handler = h_post},
    };
    ASSERT_OK(router_validate(ok, ECOM_ARRAY_LEN(ok), &errors));
}

static void test_cache_policy(void)
{
    cache_policy_t p;
    route_cache_policy(&table[0], &p);
    CU_ASSERT_EQUAL(p.ttl_ms, 5000);
    CU_ASSERT_EQUAL(p.swr_ms, 25000);
    CU_ASSERT_EQUAL(p.stale_if_error_ms, 0);
    CU_ASSERT_EQUAL(p.lock_timeout_ms, CACHE_DEFAULT_LOCK_TIMEOUT_MS);
}

static void test_normalisation(void)
{
    char *a = route_norm_path("/api/%7euser/%2f%41b?x=1");
    CU_ASSERT_STRING_EQUAL(a, "/api/~user/%2FAb");
    free(a);
    a = route_norm_path("/bad%zz%4");
    CU_ASSERT_STRING_EQUAL(a, "/bad%zz%4");
    free(a);
    char *q = route_norm_query("?b=2&&a=%7e&c&a=1&#frag");
    CU_ASSERT_STRING_EQUAL(q, "a=~&a=1&b=2&c");
    free(q);
    q = route_norm_query(NULL);
    CU_ASSERT_STRING_EQUAL(q, "");
    free(q);
    q = route_norm_query("ab=1&a=2&a%3Db=3");
    CU_ASSERT_STRING_EQUAL(q, "a=2&a%3Db=3&ab=1");
    free(q);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"static match", test_static_match},
        {"params captured and decoded", test_params},
        {"static segment beats param", test_static_beats_param},
        {"not found", test_not_found},
        {"405 with Allow from every matching row", test_method_not_allowed},
        {"HEAD via GET", test_head_via_get},
        {"method names", test_methods},
        {"validation lists every problem", test_validation_lists_every_problem},
        {"valid tables pass", test_valid_table},
        {"cache policy of a route", test_cache_policy},
        {"path and query normalisation", test_normalisation},
        CU_TEST_INFO_NULL,
    };
    return test_main("gw_route", tests, setup, teardown);
}
