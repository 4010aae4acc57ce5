/* http-gateway/authx/policy_sync.h: keeps a gateway's policy snapshot in step
 * with PostgreSQL, and the policy writes' SQL.
 *
 * A thread of its own, on a blocking connection, follows the change feed:
 * every row of auth.roles, auth.role_bindings and auth.tuples with a revision
 * above the last one applied, and sessions revoked in the last 15 minutes,
 * every POLICY_SYNC_POLL_MS or at once when poked (a write by this process,
 * or a check waiting for a revision). Writers take one advisory lock before
 * drawing a revision, so revisions commit in order and the feed skips
 * nothing. While the store is unreachable the snapshot ages and, after
 * POLICY_STALE_MS, checks fail closed.
 *
 * The bootstrap file (AUTHX_BOOTSTRAP_FILE) seeds roles, bindings and tuples:
 *   {"tenants": {"tenantA": {"roles": {"user": ["events:write"]},
 *                            "members": {"u1": ["user"], "*": ["user"]},
 *                            "tuples": [{"subject": "user:1", "relation": "viewer",
 *                                        "object": "project:123"}]}}}
 * Tenant "*" holds the defaults of every tenant. Applying it is idempotent:
 * rows already as described keep their revision.
 * Owns: the thread and its connection (policy_sync_stop), loaded bootstrap
 * documents. */
#ifndef ECOM_AUTHX_POLICY_SYNC_H
#define ECOM_AUTHX_POLICY_SYNC_H

#include "http-gateway/authx/policy.h"

#include <json-c/json.h>

#define POLICY_SYNC_POLL_MS 200
/* How long a revoked session's tokens stay refused: longer than any access
 * token is accepted, i.e. the longest ACCESS_TOKEN_TTL_S (900 s) plus the
 * leeway on exp (JWT_SKEW_S, 60 s), and a minute more. */
#define POLICY_SID_DENY_MS ((900 + 60 + 60) * 1000)

typedef struct policy_sync policy_sync_t;

/* Reads and checks the bootstrap file; every problem at once. 0 and *out
 * (owned), or -1 with *errors (owned, one problem per line). */
int policy_bootstrap_load(const char *path, json_object **out, char **errors) __attribute__((warn_unused_result));
/* Memory mode: the bootstrap applied to the snapshot itself. */
void policy_bootstrap_apply(policy_t *p, json_object *boot);

/* Starts following url (applying boot first, when not NULL; borrowed until
 * policy_sync_stop). Returns NULL only when the thread cannot start. */
policy_sync_t *policy_sync_start(policy_t *p, const char *url, json_object *boot);
void policy_sync_stop(policy_sync_t *s);

/* ---- the writes' SQL (each after policy_sql_lock, in one transaction) ----
 * Each returns one row holding the revision the row now has (a write that
 * changes nothing returns the row's existing revision; a delete of a missing
 * row returns none). */
extern const char policy_sql_lock[];
extern const char policy_sql_put_tuple[];  /* $1 tenant, $2 object, $3 relation, $4 subject */
extern const char policy_sql_del_tuple[];  /* the same */
extern const char policy_sql_put_role[];   /* $1 tenant, $2 name, $3 perms (space-separated) */
extern const char policy_sql_del_role[];   /* $1 tenant, $2 name */
extern const char policy_sql_put_binding[]; /* $1 tenant, $2 subject, $3 role */
extern const char policy_sql_del_binding[]; /* the same */

#endif
