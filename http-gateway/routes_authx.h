/* http-gateway/routes_authx.h: sessions and the administration of
 * authorization, over HTTP (the rows are gw_routes_authx in routes_authx.c).
 *
 * Sessions (AuthX R1–R5), under every service prefix B:
 *   POST B/auth/dev-login {userId}          development only (404 otherwise)
 *   POST B/auth/refresh {refreshToken}      rotates: one conditional UPDATE;
 *        a rotated token presented again revokes its whole session (family),
 *        unless within AUTHX_REFRESH_GRACE_S (0-30, default 0) of its rotation:
 *        then it is only refused
 *   POST B/auth/logout                      revokes the caller's session
 *   POST B/auth/logout-all                  revokes every session of the caller
 *   GET  B/auth/sessions                    the caller's active sessions
 *   DELETE B/auth/sessions/:sid             revokes one of them
 * A session is a refresh-token family with an absolute lifetime (30 days)
 * and an idle one (7 days). A revocation commits with a policy revision, so
 * every gateway adds the sid to its deny-list within a poll (access tokens
 * carrying it are refused at once here, within POLICY_SYNC_POLL_MS elsewhere).
 *
 * Administration (permission authx:admin in the tenant; development mode's
 * token-less principal may call them, as the original runbook's curls do):
 *   POST/DELETE/GET /api/v1/analytics/admin/auth/rebac   tuples; writes answer
 *        {revision}, which a later request may send as x-authz-revision
 *   GET  /api/v1/analytics/admin/auth/rebac/check?subject=&relation=&object=
 *   POST/GET /api/v1/analytics/admin/auth/roles, DELETE …/roles/:name
 *   POST/DELETE /api/v1/analytics/admin/auth/members     role bindings
 *   DELETE /api/v1/analytics/admin/auth/sessions/:sid    revokes any session
 * Owns: the memory tables of MEM_SLOT_SESSIONS. */
#ifndef ECOM_ROUTES_AUTHX_H
#define ECOM_ROUTES_AUTHX_H

#include "core/uuid.h"
#include "http-gateway/gw.h"

/* A session can no longer be refreshed once idle this long (and the login's
 * cleanup deletes it a day later): the same span in C and in SQL. */
#define SESSION_IDLE_MS (7LL * 86400 * 1000)
#define SESSION_IDLE_SQL "interval '7 days'"

#define REFRESH_TOKEN_LEN 43 /* 256 random bits, base64url without padding */

/* The secrets of a new session: its id, a refresh token and that token's hash. */
typedef struct gw_session_new {
    char sid[UUID_STR_LEN];
    char refresh[REFRESH_TOKEN_LEN + 1];
    char refresh_hash[65];
} gw_session_new_t;

void gw_session_secrets(gw_session_new_t *s);
/* Memory mode, inside an open memory transaction on db: records the session
 * and its first refresh token. */
void gw_session_mem_create(db_t *db, const char *tenant, const char *subject, const gw_session_new_t *s);
/* Memory mode, inside an open memory transaction on db: deletes up to
 * limit sessions that ended (expired, revoked or 7 days idle) more than
 * retain_s ago, with their refresh tokens, as gw_auth_cleanup does;
 * returns how many sessions went. */
size_t gw_sessions_cleanup_mem(db_t *db, int64_t retain_s, size_t limit);
/* Issues an access token for subject in the request's tenant and session sid,
 * and commits the request's transaction with {ok, accessToken, refreshToken,
 * sessionId, expiresIn} (status 200). mem_tx: the memory store's open
 * transaction that made the session or token, committed only once the token
 * is signed (rolled back if it cannot be), as PostgreSQL's is; NULL with
 * PostgreSQL. */
void gw_tokens_answer(gw_req_t *r, db_t *mem_tx, const char *subject, const char *sid, const char *refresh);

/* The SQL that records a session and its first refresh token: $1 sid,
 * $2 tenant, $3 subject, $4 refresh-token hash. */
extern const char gw_sql_session_create[];

#endif
