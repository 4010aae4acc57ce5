/* http-gateway/authx/policy.h: the authorization snapshot every gateway thread
 * reads on the request path, so a permission or relation check costs a few
 * hash lookups, never a network call:
 *   - RBAC: roles -> permissions per tenant, and role bindings (subject ->
 *     roles per tenant). Tenant "*" holds defaults: a role of that name in a
 *     tenant overrides the "*" one; binding subject "*" binds every
 *     authenticated subject. Permission "*" grants everything.
 *   - ReBAC: tuples object#relation@subject per tenant (subject "type:id" or a
 *     userset "type:id#relation"), checked through the userset rewrites of the
 *     schema (computed relations, tuple-to-userset), with a depth cap.
 *   - the deny-list of revoked sessions (sid -> until when access tokens
 *     carrying it are refused).
 * Every row carries the revision it was written at; applying an older
 * revision than the one held for a row is a no-op, so the store's change feed
 * (policy_sync.c) and a writer's own write-through may arrive in any order.
 * Deleted rows stay as tombstones so a late older write cannot resurrect them.
 * The snapshot's revision is the one up to which every write is known to be
 * applied; a check that must see a given write waits until it gets there.
 * Thread-safe (a readers-writer lock).
 * Owns: everything in policy_t (policy_free), the JSON lists it returns,
 * the entries of a policy_cache_t (policy_cache_free). */
#ifndef ECOM_AUTHX_POLICY_H
#define ECOM_AUTHX_POLICY_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define POLICY_DEPTH_MAX 25 /* rewrite and userset hops of one check */
#define POLICY_REF_MAX 128  /* bytes of "type:id[#relation]" */
#define POLICY_NAME_MAX 64  /* bytes of a relation, role or permission */
#define POLICY_STALE_MS 5000 /* synced longer ago than this: checks fail closed */
#define POLICY_DEFAULT_SCHEMA "viewer: editor | parent->viewer; editor: owner"

typedef struct policy policy_t;

typedef enum { POLICY_DENY, POLICY_ALLOW, POLICY_DEPTH_EXCEEDED } policy_verdict_t;

/* schema: the userset rewrites, "rel: term | term; rel: term", where a term is
 * a relation of the same object (computed userset) or "tupleset->relation"
 * (the relation on every object the tupleset relation points at); NULL gives
 * POLICY_DEFAULT_SCHEMA. synced: true for a snapshot that is the store itself
 * (memory mode), never stale. NULL with *errors (owned) on a bad schema. */
policy_t *policy_new(const char *schema, bool synced, char **errors);
void policy_free(policy_t *p);

/* Grammar checks: "type:id" (type [a-z][a-z0-9_]*, id of [A-Za-z0-9_.@|:+=-],
 * at most POLICY_REF_MAX bytes in all), with "#relation" when userset is true;
 * names [a-z][a-z0-9_:.*-]{0,63}; roles and permissions likewise (a role or
 * permission may also be "*"). */
bool policy_ref_valid(const char *ref, bool userset);
bool policy_name_valid(const char *name);
/* A relation: [a-z][a-z0-9_]{0,63}. */
bool policy_relation_valid(const char *rel);

/* ---- writes ---- */
/* perms: a space-separated list. */
void policy_put_role(policy_t *p, int64_t rev, const char *tenant, const char *name, const char *perms, bool deleted);
void policy_put_binding(policy_t *p, int64_t rev, const char *tenant, const char *subject, const char *role,
                        bool deleted);
void policy_put_tuple(policy_t *p, int64_t rev, const char *tenant, const char *object, const char *relation,
                      const char *subject, bool deleted);
/* Access tokens carrying sid are refused until until_ms. */
void policy_revoke_sid(policy_t *p, const char *sid, int64_t until_ms);

/* The revision up to which every write is applied. */
int64_t policy_revision(policy_t *p);
/* The change feed applied everything up to rev, at now_ms (clock_mono_ms,
 * as for policy_fresh: a step of the wall clock neither ages nor refreshes
 * the snapshot). */
void policy_synced(policy_t *p, int64_t rev, int64_t now_ms);
/* Memory mode: the next revision for a write (the snapshot is the store). */
int64_t policy_next_revision(policy_t *p);
/* false when the snapshot may be stale (the store unreachable for longer
 * than POLICY_STALE_MS): authorization must then fail closed. */
bool policy_fresh(policy_t *p, int64_t now_ms);
/* Asks the change feed to look for new rows now (wakes policy_sync). */
void policy_poke(policy_t *p);
/* For policy_sync: waits up to ms for a poke; true when poked. */
bool policy_wait_poke(policy_t *p, int ms);

/* ---- checks ---- */
/* Does subject hold perm in tenant through its roles? */
bool policy_allows(policy_t *p, const char *tenant, const char *subject, const char *perm);
/* The role names bound to subject in tenant (directly or through "*"), as a
 * JSON array (owned). */
json_object *policy_roles_of(policy_t *p, const char *tenant, const char *subject);
/* relation(object) for subject ("user:1") in tenant. */
policy_verdict_t policy_check(policy_t *p, const char *tenant, const char *object, const char *relation,
                              const char *subject);
/* The same, and how many object#relation nodes it expanded into *expanded:
 * each at most once per check, however dense the graph (tests, benches). */
policy_verdict_t policy_check_counted(policy_t *p, const char *tenant, const char *object, const char *relation,
                                      const char *subject, size_t *expanded);
bool policy_sid_revoked(policy_t *p, const char *sid, int64_t now_ms);

/* A caller's memo of check verdicts (one per gateway thread; not
 * thread-safe). An entry holds the whole question as its key and the
 * snapshot's generation, which every applied write bumps: it answers only
 * while nothing changed since, so it is never staler than policy_check. */
#define POLICY_CACHE_SLOTS 512
typedef struct policy_cache_entry policy_cache_entry_t;
typedef struct policy_cache {
    policy_cache_entry_t *slot[POLICY_CACHE_SLOTS];
} policy_cache_t;
policy_verdict_t policy_check_cached(policy_t *p, policy_cache_t *c, const char *tenant, const char *object,
                                     const char *relation, const char *subject);
void policy_cache_free(policy_cache_t *c);

/* The revision of a live row, exactly as written (no defaults, no
 * rewrites); 0 when there is none. policy_role_rev also answers 0 when the
 * role's permissions as written (space-separated, as given to
 * policy_put_role) differ from perms; perms NULL: any. */
int64_t policy_tuple_rev(policy_t *p, const char *tenant, const char *object, const char *relation,
                         const char *subject);
int64_t policy_binding_rev(policy_t *p, const char *tenant, const char *subject, const char *role);
int64_t policy_role_rev(policy_t *p, const char *tenant, const char *name, const char *perms);
/* An explicit membership: subject has a role binding of its own in tenant
 * (bindings of "*" do not count). A token of another tenant may then act in
 * this one (AuthX T2). */
bool policy_is_member(policy_t *p, const char *tenant, const char *subject);

/* ---- lists (owned JSON) ---- */
/* Tuples of tenant matching the non-NULL filters, at most limit:
 * [{"object","relation","subject"}], sorted. */
json_object *policy_list_tuples(policy_t *p, const char *tenant, const char *object, const char *relation,
                                const char *subject, size_t limit);
/* {"name": ["perm", ...]} of tenant (the "*" defaults included, overridden by
 * the tenant's own). */
json_object *policy_list_roles(policy_t *p, const char *tenant);

/* Sizes, for metrics and tests. */
size_t policy_tuple_count(policy_t *p);

#endif
