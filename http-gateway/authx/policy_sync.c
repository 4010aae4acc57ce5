/* http-gateway/authx/policy_sync.c: the policy snapshot's change feed and
 * bootstrap (see policy_sync.h). */
#include "http-gateway/authx/policy_sync.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/errlist.h"
#include "core/health.h"
#include "core/json.h"
#include "core/log.h"
#include "core/pg.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FEED_BATCH 5000
#define BOOT_MAX (64 << 20) /* bytes of a bootstrap document */

const char policy_sql_lock[] = "SELECT pg_advisory_xact_lock(hashtext('auth.policy'))";

const char policy_sql_put_tuple[] =
    "WITH up AS (INSERT INTO auth.tuples AS t (tenant, object, relation, subject, deleted, rev)"
    " VALUES ($1, $2, $3, $4, false, nextval('auth.rev'))"
    " ON CONFLICT (tenant, object, relation, subject) DO UPDATE SET deleted = false, rev = EXCLUDED.rev"
    " WHERE t.deleted RETURNING rev)"
    " SELECT rev FROM up UNION ALL SELECT rev FROM auth.tuples WHERE tenant = $1 AND object = $2"
    " AND relation = $3 AND subject = $4 AND NOT deleted AND NOT EXISTS (SELECT 1 FROM up)";
const char policy_sql_del_tuple[] =
    "UPDATE auth.tuples SET deleted = true, rev = nextval('auth.rev') WHERE tenant = $1 AND object = $2"
    " AND relation = $3 AND subject = $4 AND NOT deleted RETURNING rev";
const char policy_sql_put_role[] =
    "WITH up AS (INSERT INTO auth.roles AS r (tenant, name, perms, deleted, rev)"
    " VALUES ($1, $2, $3, false, nextval('auth.rev'))"
    " ON CONFLICT (tenant, name) DO UPDATE SET perms = EXCLUDED.perms, deleted = false, rev = EXCLUDED.rev"
    " WHERE r.deleted OR r.perms IS DISTINCT FROM EXCLUDED.perms RETURNING rev)"
    " SELECT rev FROM up UNION ALL SELECT rev FROM auth.roles WHERE tenant = $1 AND name = $2"
    " AND NOT deleted AND NOT EXISTS (SELECT 1 FROM up)";
const char policy_sql_del_role[] =
    "UPDATE auth.roles SET deleted = true, rev = nextval('auth.rev') WHERE tenant = $1 AND name = $2"
    " AND NOT deleted RETURNING rev";
const char policy_sql_put_binding[] =
    "WITH up AS (INSERT INTO auth.role_bindings AS b (tenant, subject, role, deleted, rev)"
    " VALUES ($1, $2, $3, false, nextval('auth.rev'))"
    " ON CONFLICT (tenant, subject, role) DO UPDATE SET deleted = false, rev = EXCLUDED.rev"
    " WHERE b.deleted RETURNING rev)"
    " SELECT rev FROM up UNION ALL SELECT rev FROM auth.role_bindings WHERE tenant = $1 AND subject = $2"
    " AND role = $3 AND NOT deleted AND NOT EXISTS (SELECT 1 FROM up)";
const char policy_sql_del_binding[] =
    "UPDATE auth.role_bindings SET deleted = true, rev = nextval('auth.rev') WHERE tenant = $1 AND subject = $2"
    " AND role = $3 AND NOT deleted RETURNING rev";

static const char sql_feed[] =
    "SELECT kind, tenant, a, b, c, deleted, rev FROM ("
    " SELECT 'r' AS kind, tenant, name AS a, perms AS b, '' AS c, deleted, rev FROM auth.roles WHERE rev > $1"
    " UNION ALL SELECT 'b', tenant, subject, role, '', deleted, rev FROM auth.role_bindings WHERE rev > $1"
    " UNION ALL SELECT 't', tenant, object, relation, subject, deleted, rev FROM auth.tuples WHERE rev > $1"
    " UNION ALL SELECT 's', tenant, sid, (extract(epoch FROM revoked_at) * 1000)::bigint::text, '', false,"
    " revoked_rev FROM auth.sessions WHERE revoked_rev > $1 AND revoked_at > now() - interval '1020 seconds'"
    ") f ORDER BY rev LIMIT 5000";
/* the revocations a gateway loads are those whose tokens it could still
 * accept (a token lives until exp + skew): as long as it denies them */
_Static_assert(POLICY_SID_DENY_MS == 1020 * 1000, "sql_feed's revocation window is POLICY_SID_DENY_MS");

/* ---- the bootstrap document ---- */

typedef void (*boot_role_fn)(void *arg, const char *tenant, const char *name, const char *perms);
typedef void (*boot_triple_fn)(void *arg, const char *tenant, const char *a, const char *b, const char *c);

/* Walks the document; problems go to errs (when not NULL). */
static void boot_walk(json_object *boot, errlist_t *errs, boot_role_fn role, boot_triple_fn binding,
                      boot_triple_fn tuple, void *arg)
{
    json_object *tenants;
    if (!json_object_is_type(boot, json_type_object) || !json_object_object_get_ex(boot, "tenants", &tenants) ||
        !json_object_is_type(tenants, json_type_object)) {
        if (errs)
            errlist_add(errs, "the document must be {\"tenants\": {...}}");
        return;
    }
    json_object_object_foreach(tenants, tenant, tdoc)
    {
        size_t tl = strlen(tenant);
        bool tenant_ok = strcmp(tenant, "*") == 0 || (tl >= 1 && tl <= 64 && strspn(tenant,
                                                                                      "abcdefghijklmnopqrstuvwxyz"
                                                                                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                                                      "0123456789_-") == tl);
        if (!tenant_ok || !json_object_is_type(tdoc, json_type_object)) {
            if (errs)
                errlist_add(errs, "tenant \"%s\": a tenant id ([A-Za-z0-9_-]{1,64} or *) with an object", tenant);
            continue;
        }
        json_object *roles, *members, *tuples;
        if (json_object_object_get_ex(tdoc, "roles", &roles)) {
            if (!json_object_is_type(roles, json_type_object)) {
                if (errs)
                    errlist_add(errs, "tenant \"%s\": roles must be {\"name\": [\"perm\", ...]}", tenant);
            } else {
                json_object_object_foreach(roles, name, perms)
                {
                    char buf[2048] = "";
                    bool ok = policy_name_valid(name) && json_object_is_type(perms, json_type_array);
                    size_t n = 0;
                    for (size_t i = 0; ok && i < json_object_array_length(perms); i++) {
                        json_object *pm = json_object_array_get_idx(perms, i);
                        const char *s = json_object_get_string(pm);
                        ok = json_object_is_type(pm, json_type_string) && policy_name_valid(s) &&
                             n + strlen(s) + 2 < sizeof buf;
                        if (ok)
                            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? " " : "", s);
                    }
                    if (!ok) {
                        if (errs)
                            errlist_add(errs, "tenant \"%s\", role \"%s\": a role name with a list of permissions",
                                        tenant, name);
                    } else if (role) {
                        role(arg, tenant, name, buf);
                    }
                }
            }
        }
        if (json_object_object_get_ex(tdoc, "members", &members)) {
            if (!json_object_is_type(members, json_type_object)) {
                if (errs)
                    errlist_add(errs, "tenant \"%s\": members must be {\"subject\": [\"role\", ...]}", tenant);
            } else {
                json_object_object_foreach(members, subject, rl)
                {
                    size_t sl = strlen(subject);
                    bool ok = sl >= 1 && sl <= 128 && strcspn(subject, "\x1f") == sl &&
                              json_object_is_type(rl, json_type_array);
                    for (size_t i = 0; ok && i < json_object_array_length(rl); i++)
                        ok = json_object_is_type(json_object_array_get_idx(rl, i), json_type_string) &&
                             policy_name_valid(json_object_get_string(json_object_array_get_idx(rl, i)));
                    if (!ok) {
                        if (errs)
                            errlist_add(errs, "tenant \"%s\", member \"%s\": a subject with a list of roles", tenant,
                                        subject);
                        continue;
                    }
                    for (size_t i = 0; binding && i < json_object_array_length(rl); i++)
                        binding(arg, tenant, subject, json_object_get_string(json_object_array_get_idx(rl, i)), NULL);
                }
            }
        }
        if (json_object_object_get_ex(tdoc, "tuples", &tuples)) {
            if (strcmp(tenant, "*") == 0 || !json_object_is_type(tuples, json_type_array)) {
                if (errs)
                    errlist_add(errs, "tenant \"%s\": tuples must be a list (and belong to a real tenant)", tenant);
                continue;
            }
            for (size_t i = 0; i < json_object_array_length(tuples); i++) {
                json_object *t = json_object_array_get_idx(tuples, i);
                const char *s = json_get_str(t, "subject"), *r = json_get_str(t, "relation"),
                           *o = json_get_str(t, "object");
                if (!s || !r || !o || !policy_ref_valid(s, true) || !policy_ref_valid(o, false) ||
                    !policy_name_valid(r) || strchr(r, ':') || strchr(r, '*')) {
                    if (errs)
                        errlist_add(errs, "tenant \"%s\", tuple %zu: {subject, relation, object} as type:id[#rel]",
                                    tenant, i);
                    continue;
                }
                if (tuple)
                    tuple(arg, tenant, o, r, s);
            }
        }
    }
}

int policy_bootstrap_load(const char *path, json_object **out, char **errors)
{
    *out = NULL;
    errlist_t errs = {0};
    FILE *f = fopen(path, "r");
    if (!f) {
        errlist_add(&errs, "AUTHX_BOOTSTRAP_FILE %s: cannot be read", path);
        *errors = errs.s;
        return -1;
    }
    char *text = xmalloc(BOOT_MAX + 1);
    size_t n = fread(text, 1, BOOT_MAX, f);
    bool too_big = n == BOOT_MAX && fgetc(f) != EOF;
    fclose(f);
    text[n] = '\0';
    json_object *doc = NULL;
    const char *why = NULL;
    if (too_big)
        errlist_add(&errs, "AUTHX_BOOTSTRAP_FILE %s: larger than %d MiB", path, BOOT_MAX >> 20);
    else if (json_parse_strict(text, n, &doc, &why) != 0)
        errlist_add(&errs, "AUTHX_BOOTSTRAP_FILE %s: %s", path, why);
    else
        boot_walk(doc, &errs, NULL, NULL, NULL, NULL);
    free(text);
    if (errs.s) {
        json_object_put(doc);
        *errors = errs.s;
        return -1;
    }
    *out = doc;
    return 0;
}

static void mem_role(void *arg, const char *tenant, const char *name, const char *perms)
{
    policy_t *p = arg;
    policy_put_role(p, policy_next_revision(p), tenant, name, perms, false);
}

static void mem_binding(void *arg, const char *tenant, const char *subject, const char *role, const char *unused)
{
    (void)unused;
    policy_t *p = arg;
    policy_put_binding(p, policy_next_revision(p), tenant, subject, role, false);
}

static void mem_tuple(void *arg, const char *tenant, const char *object, const char *relation, const char *subject)
{
    policy_t *p = arg;
    policy_put_tuple(p, policy_next_revision(p), tenant, object, relation, subject, false);
}

void policy_bootstrap_apply(policy_t *p, json_object *boot)
{
    boot_walk(boot, NULL, mem_role, mem_binding, mem_tuple, p);
}

/* ---- the follower thread ---- */

struct policy_sync {
    policy_t *p;
    char *url;
    json_object *boot;
    bool booted;
    atomic_bool stop;
    pthread_t thread;
    PGconn *c;
    int64_t last_rev;
};

typedef struct boot_ctx {
    PGconn *c;
    bool failed;
} boot_ctx_t;

static void boot_exec(boot_ctx_t *b, const char *sql, int n, const char *const *params)
{
    if (b->failed)
        return;
    PGresult *r = pg_query(b->c, sql, n, params);
    if (!r)
        b->failed = true;
    PQclear(r);
}

static void pg_role(void *arg, const char *tenant, const char *name, const char *perms)
{
    const char *p[] = {tenant, name, perms};
    boot_exec(arg, policy_sql_put_role, 3, p);
}

static void pg_binding(void *arg, const char *tenant, const char *subject, const char *role, const char *unused)
{
    (void)unused;
    const char *p[] = {tenant, subject, role};
    boot_exec(arg, policy_sql_put_binding, 3, p);
}

static void pg_tuple(void *arg, const char *tenant, const char *object, const char *relation, const char *subject)
{
    const char *p[] = {tenant, object, relation, subject};
    boot_exec(arg, policy_sql_put_tuple, 4, p);
}

static int apply_boot(policy_sync_t *s)
{
    boot_ctx_t b = {.c = s->c};
    if (pg_exec(s->c, "BEGIN") != 0)
        return -1;
    boot_exec(&b, policy_sql_lock, 0, NULL);
    boot_walk(s->boot, NULL, pg_role, pg_binding, pg_tuple, &b);
    if (b.failed || pg_exec(s->c, "COMMIT") != 0) {
        PGresult *r = PQexec(s->c, "ROLLBACK");
        PQclear(r);
        return -1;
    }
    return 0;
}

/* One pass of the feed; 1 when a full batch came (more may wait), 0, or -1. */
static int follow(policy_sync_t *s)
{
    char last[24];
    snprintf(last, sizeof last, "%lld", (long long)s->last_rev);
    const char *params[] = {last};
    PGresult *r = pg_query(s->c, sql_feed, 1, params);
    if (!r)
        return -1;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        const char *kind = PQgetvalue(r, i, 0), *tenant = PQgetvalue(r, i, 1), *a = PQgetvalue(r, i, 2),
                   *b = PQgetvalue(r, i, 3), *c = PQgetvalue(r, i, 4);
        bool deleted = PQgetvalue(r, i, 5)[0] == 't';
        int64_t rev = atoll(PQgetvalue(r, i, 6));
        switch (kind[0]) {
        case 'r':
            policy_put_role(s->p, rev, tenant, a, b, deleted);
            break;
        case 'b':
            policy_put_binding(s->p, rev, tenant, a, b, deleted);
            break;
        case 't':
            policy_put_tuple(s->p, rev, tenant, a, b, c, deleted);
            break;
        case 's':
            policy_revoke_sid(s->p, a, atoll(b) + POLICY_SID_DENY_MS);
            break;
        }
        if (rev > s->last_rev)
            s->last_rev = rev;
    }
    PQclear(r);
    policy_synced(s->p, s->last_rev, clock_mono_ms());
    return n == FEED_BATCH ? 1 : 0;
}

/* The readiness check of the authorization snapshot's source. */
#define POLICY_HEALTH "authorization-store"

static void *sync_main(void *arg)
{
    policy_sync_t *s = arg;
    log_set_role("gateway");
    int64_t retry_ms = 0;
    while (!atomic_load(&s->stop)) {
        if (!s->c && clock_mono_ms() >= retry_ms) {
            char *err = NULL;
            s->c = pg_connect(s->url, "ecom-gateway-policy", &err);
            if (!s->c) {
                health_report(POLICY_HEALTH, false, 0);
                log_warn("policy store unreachable: %s", err ? err : "?");
                free(err);
                retry_ms = clock_mono_ms() + 1000;
            }
        }
        if (s->c && s->boot && !s->booted) {
            if (apply_boot(s) == 0) {
                s->booted = true;
                log_info("authorization bootstrap applied");
            } else {
                log_warn("the authorization bootstrap could not be applied; retrying");
            }
        }
        int more = 0;
        if (s->c && (!s->boot || s->booted)) {
            int64_t t0 = clock_mono_us();
            more = follow(s);
            health_report(POLICY_HEALTH, more >= 0, (double)(clock_mono_us() - t0) / 1000.0);
            if (more < 0) {
                PQfinish(s->c);
                s->c = NULL;
                retry_ms = clock_mono_ms() + 200;
            }
        }
        if (more <= 0)
            policy_wait_poke(s->p, POLICY_SYNC_POLL_MS);
    }
    return NULL;
}

policy_sync_t *policy_sync_start(policy_t *p, const char *url, json_object *boot)
{
    /* not ready before the first sync: until then every check fails closed */
    health_require(POLICY_HEALTH);
    policy_sync_t *s = xcalloc(1, sizeof *s);
    s->p = p;
    s->url = xstrdup(url);
    s->boot = boot;
    if (pthread_create(&s->thread, NULL, sync_main, s) != 0) {
        free(s->url);
        free(s);
        return NULL;
    }
    return s;
}

void policy_sync_stop(policy_sync_t *s)
{
    if (!s)
        return;
    atomic_store(&s->stop, true);
    policy_poke(s->p);
    pthread_join(s->thread, NULL);
    if (s->c)
        PQfinish(s->c);
    free(s->url);
    free(s);
}
