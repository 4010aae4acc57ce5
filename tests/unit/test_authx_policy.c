/* tests/unit/test_authx_policy.c: the authorization snapshot on its own:
 * relation checks through the schema's rewrites (AuthX X1–X3), per-tenant
 * roles with defaults (P1–P2), revisions applied out of order, the session
 * deny-list, the grammar, and the bootstrap document. */
#include "core/alloc.h"
#include "core/clock.h"
#include "http-gateway/authx/policy.h"
#include "http-gateway/authx/policy_sync.h"
#include "http-gateway/jwt.h"
#include "tests/testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static policy_t *fresh(void)
{
    char *err = NULL;
    policy_t *p = policy_new(NULL, true, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    return p;
}

static void tuple(policy_t *p, const char *tenant, const char *object, const char *relation, const char *subject)
{
    policy_put_tuple(p, policy_next_revision(p), tenant, object, relation, subject, false);
}

static bool allowed(policy_t *p, const char *tenant, const char *object, const char *relation, const char *subject)
{
    return policy_check(p, tenant, object, relation, subject) == POLICY_ALLOW;
}

/* X1 and X2: the spec's tuples and schema */
static void test_rewrites(void)
{
    policy_t *p = fresh();
    tuple(p, "tenantA", "project:123", "owner", "user:1");
    tuple(p, "tenantA", "project:123", "editor", "user:2");
    tuple(p, "tenantA", "project:123", "viewer", "user:3");
    tuple(p, "tenantA", "project:123", "parent", "folder:root");
    tuple(p, "tenantA", "folder:root", "viewer", "user:6");
    tuple(p, "tenantA", "project:456", "viewer", "group:eng#member");
    tuple(p, "tenantA", "group:eng", "member", "user:5");
    const char *yes[] = {"user:1", "user:2", "user:3", "user:6"};
    for (int i = 0; i < 4; i++)
        CU_ASSERT_TRUE(allowed(p, "tenantA", "project:123", "viewer", yes[i]));
    CU_ASSERT_FALSE(allowed(p, "tenantA", "project:123", "viewer", "user:4"));
    CU_ASSERT_FALSE(allowed(p, "tenantA", "project:123", "viewer", "user:5"));
    CU_ASSERT_FALSE(allowed(p, "tenantA", "project:123", "owner", "user:2"));
    CU_ASSERT_TRUE(allowed(p, "tenantA", "project:123", "editor", "user:1"));
    CU_ASSERT_TRUE(allowed(p, "tenantA", "project:456", "viewer", "user:5"));
    CU_ASSERT_FALSE(allowed(p, "tenantA", "project:456", "editor", "user:5"));
    /* X2: another tenant sees none of it */
    for (int i = 0; i < 4; i++)
        CU_ASSERT_FALSE(allowed(p, "tenantB", "project:123", "viewer", yes[i]));
    CU_ASSERT_EQUAL(policy_tuple_count(p), 7);
    policy_free(p);
}

/* X3: cycles end and deny; a chain deeper than the cap denies with its own verdict */
static void test_cycles_and_depth(void)
{
    policy_t *p = fresh();
    tuple(p, "t", "group:a", "member", "group:b#member");
    tuple(p, "t", "group:b", "member", "group:a#member");
    CU_ASSERT_EQUAL(policy_check(p, "t", "group:a", "member", "user:1"), POLICY_DENY);
    /* group:g0 <- g1 <- ... <- g30, user:deep in g30: 30 userset hops */
    for (int i = 0; i < 30; i++) {
        char obj[32], sub[40];
        snprintf(obj, sizeof obj, "group:g%d", i);
        snprintf(sub, sizeof sub, "group:g%d#member", i + 1);
        tuple(p, "t", obj, "member", sub);
    }
    tuple(p, "t", "group:g30", "member", "user:deep");
    CU_ASSERT_EQUAL(policy_check(p, "t", "group:g0", "member", "user:deep"), POLICY_DEPTH_EXCEEDED);
    CU_ASSERT_EQUAL(policy_check(p, "t", "group:g10", "member", "user:deep"), POLICY_ALLOW);
    policy_free(p);
}

/* A dense graph of usersets (any tenant admin can write one): 24 layers of 4
 * groups, each member of every group of the layer below, 2,304 tuples and
 * 4^23 paths from the top. Each group is expanded once per check, past the
 * 64 the walk keeps in itself too: 97 nodes (the top's and 96 groups'
 * member), not one per path. */
static void test_dense_graph(void)
{
    policy_t *p = fresh();
    for (int l = 0; l < 23; l++)
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++) {
                char obj[32], sub[48];
                snprintf(obj, sizeof obj, "group:l%d-%d", l, a);
                snprintf(sub, sizeof sub, "group:l%d-%d#member", l + 1, b);
                tuple(p, "t", obj, "member", sub);
            }
    for (int a = 0; a < 4; a++) {
        char sub[48];
        snprintf(sub, sizeof sub, "group:l0-%d#member", a);
        tuple(p, "t", "doc:top", "viewer", sub);
    }
    size_t expanded = 0;
    CU_ASSERT_EQUAL(policy_check_counted(p, "t", "doc:top", "viewer", "user:nobody", &expanded), POLICY_DENY);
    /* doc:top#viewer, its rewrites' nodes, and 96 groups' member */
    CU_ASSERT_TRUE(expanded >= 97 && expanded <= 200);
    if (expanded > 200)
        fprintf(stderr, "\n  nodes expanded: %zu\n", expanded);
    tuple(p, "t", "group:l23-3", "member", "user:deep");
    CU_ASSERT_EQUAL(policy_check(p, "t", "doc:top", "viewer", "user:deep"), POLICY_ALLOW);
    policy_free(p);
}

/* Rows carry revisions: an older write after a newer one changes nothing, and
 * a delete stays deleted when an older add arrives late. */
static void test_revisions(void)
{
    char *err = NULL;
    policy_t *p = policy_new(NULL, false, &err);
    CU_ASSERT_FALSE(policy_fresh(p, clock_mono_ms())); /* never synced: fail closed */
    policy_put_tuple(p, 10, "t", "doc:1", "viewer", "user:1", true);
    policy_put_tuple(p, 9, "t", "doc:1", "viewer", "user:1", false);
    CU_ASSERT_FALSE(allowed(p, "t", "doc:1", "viewer", "user:1"));
    policy_put_tuple(p, 11, "t", "doc:1", "viewer", "user:1", false);
    CU_ASSERT_TRUE(allowed(p, "t", "doc:1", "viewer", "user:1"));
    CU_ASSERT_EQUAL(policy_revision(p), 0); /* only the feed moves the revision of a followed snapshot */
    policy_synced(p, 11, clock_mono_ms());
    CU_ASSERT_EQUAL(policy_revision(p), 11);
    CU_ASSERT_TRUE(policy_fresh(p, clock_mono_ms()));
    CU_ASSERT_FALSE(policy_fresh(p, clock_mono_ms() + POLICY_STALE_MS + 1));
    policy_put_role(p, 5, "t", "user", "a:b c:d", false);
    policy_put_role(p, 4, "t", "user", "x:y", false);
    policy_put_binding(p, 6, "t", "u1", "user", false);
    CU_ASSERT_TRUE(policy_allows(p, "t", "u1", "c:d"));
    CU_ASSERT_FALSE(policy_allows(p, "t", "u1", "x:y"));
    policy_free(p);
}

/* P1, P2: per-tenant roles; defaults from tenant "*"; "*" binds everyone */
static void test_rbac(void)
{
    policy_t *p = fresh();
    policy_put_role(p, policy_next_revision(p), "tenantA", "user", "events:write", false);
    policy_put_role(p, policy_next_revision(p), "tenantA", "admin", "events:write events:read", false);
    policy_put_role(p, policy_next_revision(p), "tenantB", "user", "events:read", false);
    policy_put_binding(p, policy_next_revision(p), "tenantA", "u1", "user", false);
    policy_put_binding(p, policy_next_revision(p), "tenantB", "u1", "user", false);
    CU_ASSERT_TRUE(policy_allows(p, "tenantA", "u1", "events:write"));
    CU_ASSERT_FALSE(policy_allows(p, "tenantA", "u1", "events:read"));
    CU_ASSERT_TRUE(policy_allows(p, "tenantB", "u1", "events:read"));
    CU_ASSERT_FALSE(policy_allows(p, "tenantB", "u1", "events:write"));
    CU_ASSERT_FALSE(policy_allows(p, "tenantC", "u1", "events:write"));
    /* defaults: a "*" role, bound to every subject of every tenant */
    policy_put_role(p, policy_next_revision(p), "*", "shopper", "payments:write", false);
    policy_put_binding(p, policy_next_revision(p), "*", "*", "shopper", false);
    CU_ASSERT_TRUE(policy_allows(p, "tenantC", "anyone", "payments:write"));
    /* a tenant's own role of that name overrides the default */
    policy_put_role(p, policy_next_revision(p), "tenantA", "shopper", "payments:read", false);
    CU_ASSERT_FALSE(policy_allows(p, "tenantA", "u2", "payments:write"));
    CU_ASSERT_TRUE(policy_allows(p, "tenantA", "u2", "payments:read"));
    /* P3: a changed role applies to the next check */
    policy_put_role(p, policy_next_revision(p), "tenantA", "user", "events:write events:read", false);
    CU_ASSERT_TRUE(policy_allows(p, "tenantA", "u1", "events:read"));
    policy_put_binding(p, policy_next_revision(p), "tenantA", "u1", "user", true);
    CU_ASSERT_FALSE(policy_allows(p, "tenantA", "u1", "events:read"));
    /* T2: membership is an own binding in the tenant */
    CU_ASSERT_FALSE(policy_is_member(p, "tenantA", "u1")); /* its binding was deleted above */
    CU_ASSERT_TRUE(policy_is_member(p, "tenantB", "u1"));
    CU_ASSERT_FALSE(policy_is_member(p, "tenantC", "anyone")); /* "*" bindings do not count */
    /* "*" grants every permission */
    policy_put_role(p, policy_next_revision(p), "tenantA", "root", "*", false);
    policy_put_binding(p, policy_next_revision(p), "tenantA", "boss", "root", false);
    CU_ASSERT_TRUE(policy_allows(p, "tenantA", "boss", "authx:admin"));
    json_object *roles = policy_roles_of(p, "tenantA", "boss");
    CU_ASSERT_STRING_EQUAL(json_object_to_json_string_ext(roles, JSON_C_TO_STRING_PLAIN), "[\"root\",\"shopper\"]");
    json_object_put(roles);
    json_object *list = policy_list_roles(p, "tenantB");
    CU_ASSERT_STRING_EQUAL(json_object_to_json_string_ext(list, JSON_C_TO_STRING_PLAIN),
                           "{\"shopper\":[\"payments:write\"],\"user\":[\"events:read\"]}");
    json_object_put(list);
    policy_free(p);
}

static void test_sid_denylist(void)
{
    policy_t *p = fresh();
    int64_t now = clock_now_ms();
    CU_ASSERT_FALSE(policy_sid_revoked(p, "s1", now));
    policy_revoke_sid(p, "s1", now + 1000);
    CU_ASSERT_TRUE(policy_sid_revoked(p, "s1", now));
    CU_ASSERT_FALSE(policy_sid_revoked(p, "s1", now + 1001));
    CU_ASSERT_FALSE(policy_sid_revoked(p, "s2", now));
    CU_ASSERT_FALSE(policy_sid_revoked(p, "", now));
    policy_free(p);
}

static void test_grammar_and_schema(void)
{
    CU_ASSERT_TRUE(policy_ref_valid("project:proj_123", false));
    CU_ASSERT_TRUE(policy_ref_valid("group:eng#member", true));
    CU_ASSERT_FALSE(policy_ref_valid("group:eng#member", false));
    CU_ASSERT_FALSE(policy_ref_valid("project:", false));
    CU_ASSERT_FALSE(policy_ref_valid(":x", false));
    CU_ASSERT_FALSE(policy_ref_valid("Project:x", false));
    CU_ASSERT_FALSE(policy_ref_valid("project:a b", false));
    CU_ASSERT_FALSE(policy_ref_valid("project:a\x1f", false));
    char longref[200];
    memset(longref, 'a', sizeof longref);
    memcpy(longref, "project:", 8);
    longref[129] = '\0';
    CU_ASSERT_FALSE(policy_ref_valid(longref, false));
    longref[128] = '\0';
    CU_ASSERT_TRUE(policy_ref_valid(longref, false));
    CU_ASSERT_TRUE(policy_relation_valid("viewer"));
    CU_ASSERT_FALSE(policy_relation_valid("view:er"));
    char *err = NULL;
    CU_ASSERT_PTR_NULL(policy_new("viewer editor", true, &err));
    CU_ASSERT_PTR_NOT_NULL(err);
    free(err);
    err = NULL;
    CU_ASSERT_PTR_NULL(policy_new("viewer: a->; Bad: x", true, &err));
    CU_ASSERT_PTR_NOT_NULL(err && strstr(err, "Bad"));
    free(err);
    /* a custom schema: reader from writer, and through "org" */
    policy_t *p = policy_new("reader: writer | org->member", true, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    tuple(p, "t", "doc:1", "writer", "user:w");
    tuple(p, "t", "doc:1", "org", "org:acme");
    tuple(p, "t", "org:acme", "member", "user:m");
    CU_ASSERT_TRUE(allowed(p, "t", "doc:1", "reader", "user:w"));
    CU_ASSERT_TRUE(allowed(p, "t", "doc:1", "reader", "user:m"));
    CU_ASSERT_FALSE(allowed(p, "t", "doc:1", "viewer", "user:w")); /* not the default schema */
    policy_free(p);
}

static char *write_tmp(const char *text)
{
    char *path = xstrdup("/tmp/ecom-authx-boot-XXXXXX");
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_bootstrap(void)
{
    char *good = write_tmp("{\"tenants\": {\"*\": {\"roles\": {\"user\": [\"events:write\"]}, \"members\": {\"*\": "
                           "[\"user\"]}}, \"tenantA\": {\"roles\": {\"admin\": [\"*\"]}, \"members\": {\"root\": "
                           "[\"admin\"]}, \"tuples\": [{\"subject\": \"user:1\", \"relation\": \"viewer\", "
                           "\"object\": \"project:123\"}]}}}");
    json_object *boot = NULL;
    char *err = NULL;
    CU_ASSERT_EQUAL_FATAL(policy_bootstrap_load(good, &boot, &err), 0);
    policy_t *p = fresh();
    policy_bootstrap_apply(p, boot);
    CU_ASSERT_TRUE(policy_allows(p, "anyTenant", "someone", "events:write"));
    CU_ASSERT_TRUE(policy_allows(p, "tenantA", "root", "authx:admin"));
    CU_ASSERT_FALSE(policy_allows(p, "tenantB", "root", "authx:admin"));
    CU_ASSERT_TRUE(allowed(p, "tenantA", "project:123", "viewer", "user:1"));
    policy_free(p);
    json_object_put(boot);
    unlink(good);
    free(good);
    /* every problem at once */
    char *bad = write_tmp("{\"tenants\": {\"bad tenant\": {}, \"t\": {\"roles\": {\"Role\": [\"x\"]}, \"tuples\": "
                          "[{\"subject\": \"user\", \"relation\": \"viewer\", \"object\": \"p:1\"}]}}}");
    CU_ASSERT_EQUAL(policy_bootstrap_load(bad, &boot, &err), -1);
    CU_ASSERT_PTR_NULL(boot);
    CU_ASSERT_PTR_NOT_NULL_FATAL(err);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "bad tenant"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "Role"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "tuple 0"));
    free(err);
    unlink(bad);
    free(bad);
    char *dup = write_tmp("{\"tenants\": {}, \"tenants\": {}}");
    CU_ASSERT_EQUAL(policy_bootstrap_load(dup, &boot, &err), -1);
    free(err);
    unlink(dup);
    free(dup);
    CU_ASSERT_EQUAL(policy_bootstrap_load("/nonexistent/boot.json", &boot, &err), -1);
    free(err);
}

/* The per-thread memos never answer past a change or an expiry. */
static void test_caches(void)
{
    policy_t *p = fresh();
    policy_cache_t c = {0};
    tuple(p, "t", "project:1", "parent", "folder:f");
    tuple(p, "t", "folder:f", "viewer", "user:a");
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", "user:a"), POLICY_ALLOW);
    CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", "user:b"), POLICY_DENY);
    /* a write anywhere: the remembered verdicts are recomputed */
    policy_put_tuple(p, policy_next_revision(p), "t", "folder:f", "viewer", "user:a", true);
    CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", "user:a"), POLICY_DENY);
    tuple(p, "t", "folder:f", "viewer", "user:b");
    CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", "user:b"), POLICY_ALLOW);
    /* the whole question is the key: another tenant is another answer */
    CU_ASSERT_EQUAL(policy_check_cached(p, &c, "u", "project:1", "viewer", "user:b"), POLICY_DENY);
    /* many questions share the slots without mixing answers */
    for (int i = 0; i < 2000; i++) {
        char s[32];
        snprintf(s, sizeof s, "user:n%d", i);
        CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", s), POLICY_DENY);
    }
    CU_ASSERT_EQUAL(policy_check_cached(p, &c, "t", "project:1", "viewer", "user:b"), POLICY_ALLOW);
    policy_cache_free(&c);
    policy_free(p);

    jwt_cache_t jc = {0};
    principal_t pr = {0}, out;
    snprintf(pr.sub, sizeof pr.sub, "u1");
    pr.exp = 1000;
    jwt_cache_put(&jc, "tok.a.b", &pr);
    CU_ASSERT_TRUE(jwt_cache_get(&jc, "tok.a.b", 999, &out) && strcmp(out.sub, "u1") == 0);
    CU_ASSERT_FALSE(jwt_cache_get(&jc, "tok.a.b", 1000, &out)); /* expired: verify again */
    CU_ASSERT_FALSE(jwt_cache_get(&jc, "tok.a.c", 999, &out));
    CU_ASSERT_FALSE(jwt_cache_get(&jc, "tok.a.", 999, &out));
    jwt_cache_free(&jc);
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"X1/X2 rewrites, usersets, tenants", test_rewrites},
        {"X3 cycles and the depth cap", test_cycles_and_depth},
        {"a dense graph of usersets: each node expanded once per check", test_dense_graph},
        {"revisions out of order, tombstones, freshness", test_revisions},
        {"P1-P3 roles per tenant, defaults, changes", test_rbac},
        {"revoked sessions", test_sid_denylist},
        {"grammar and schema", test_grammar_and_schema},
        {"bootstrap document", test_bootstrap},
        {"check memo and verified-token cache", test_caches},
        CU_TEST_INFO_NULL,
    };
    return test_main("authx_policy", tests, NULL, NULL);
}
