/* http-gateway/routes_authx.c: sessions, refresh rotation, logout, and the
 * administration of roles, role bindings and relation tuples (see
 * routes_authx.h). */
#include "http-gateway/routes_authx.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/digest.h"
#include "core/json.h"
#include "core/log.h"
#include "core/strmap.h"
#include "http-gateway/authx/policy.h"
#include "http-gateway/authx/policy_sync.h"
#include "http-gateway/routes_auth.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(POLICY_SID_DENY_MS >= (900 + JWT_SKEW_S) * 1000,
               "a revoked session's tokens must stay refused for as long as any can be accepted");

#define SESSION_ABSOLUTE_MS (30LL * 86400 * 1000)
#define SUBJECT_MAX 128
#define LIST_MAX 1000

/* ---- secrets and tokens ---- */

void gw_session_secrets(gw_session_new_t *s)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[33] = {0};
    random_bytes(raw, 32);
    size_t k = 0;
    for (size_t i = 0; i < 33 && k < REFRESH_TOKEN_LEN; i += 3) {
        uint32_t x = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        for (int j = 3; j >= 0 && k < REFRESH_TOKEN_LEN; j--)
            s->refresh[k++] = b64[(x >> (6 * j)) & 63];
    }
    s->refresh[k] = '\0';
    digest_sha256_hex(s->refresh, s->refresh_hash);
    uuid_v7(s->sid);
}

static void unavailable(gw_req_t *r, const char *detail)
{
    gw_add_header(r, "Retry-After", "1");
    gw_problem(r, 503, "storage-unavailable", detail);
}

void gw_tokens_answer(gw_req_t *r, db_t *mem_tx, const char *subject, const char *sid, const char *refresh)
{
    principal_t p = {0};
    snprintf(p.sub, sizeof p.sub, "%s", subject);
    snprintf(p.tid, sizeof p.tid, "%s", r->tenant);
    snprintf(p.sid, sizeof p.sid, "%s", sid);
    int ttl = (int)r->sh->cfg->access_token_ttl_s;
    char *token = NULL;
    if (jwtk_sign(&r->sh->keys, &p, clock_now_ms() / 1000, ttl, &token) != 0) {
        if (mem_tx)
            db_rollback(mem_tx);
        else
            gw_tx_abort(r);
        gw_problem(r, 500, NULL, "the access token could not be issued");
        return;
    }
    if (mem_tx && db_commit(mem_tx) != 0) {
        free(token);
        unavailable(r, "the session could not be recorded");
        return;
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "ok", json_object_new_boolean(1));
    json_object_object_add(body, "accessToken", json_object_new_string(token));
    json_object_object_add(body, "refreshToken", json_object_new_string(refresh));
    json_object_object_add(body, "sessionId", json_object_new_string(sid));
    json_object_object_add(body, "expiresIn", json_object_new_int(ttl));
    free(token);
    gw_add_header(r, "Cache-Control", "no-store");
    gw_cmd_commit(r, 200, body);
}

static void invalid_refresh(gw_req_t *r)
{
    gw_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
    gw_problem(r, 401, "invalid-token", "the refresh token is unknown, used, expired or revoked");
}

/* ---- memory tables ---- */

typedef struct msession {
    char sid[UUID_STR_LEN];
    char tenant[REQCTX_TENANT_MAX + 1];
    char subject[SUBJECT_MAX + 1];
    int64_t created_ms, last_used_ms, expires_ms;
    int64_t revoked_ms; /* when it was revoked; 0 while it is not */
} msession_t;

enum { TOKEN_ACTIVE, TOKEN_ROTATED, TOKEN_REVOKED };

typedef struct mtoken {
    char sid[UUID_STR_LEN];
    int state;
    int64_t used_ms; /* when it was rotated */
} mtoken_t;

typedef struct msessions {
    strmap_t sessions; /* sid -> msession_t* */
    strmap_t tokens;   /* hash -> mtoken_t* */
} msessions_t;

static void *mem_make(void)
{
    msessions_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->sessions);
    strmap_init(&m->tokens);
    return m;
}

static void free_all(strmap_t *m)
{
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(m, &i, &k, NULL, &v);)
        free(v);
    strmap_free(m);
}

static void mem_free(void *p)
{
    msessions_t *m = p;
    free_all(&m->sessions);
    free_all(&m->tokens);
    free(m);
}

static msessions_t *mem(db_t *db)
{
    return db_mem_slot(db, MEM_SLOT_SESSIONS, mem_make, mem_free);
}

static msession_t *mem_session(msessions_t *m, const char *sid)
{
    void **v = strmap_get(&m->sessions, sid, strlen(sid));
    return v ? *v : NULL;
}

static bool mem_session_live(const msession_t *s, int64_t now)
{
    return s && !s->revoked_ms && s->expires_ms > now && s->last_used_ms > now - SESSION_IDLE_MS;
}

void gw_session_mem_create(db_t *db, const char *tenant, const char *subject, const gw_session_new_t *s)
{
    msessions_t *m = mem(db);
    int64_t now = clock_now_ms();
    msession_t *x = xcalloc(1, sizeof *x);
    snprintf(x->sid, sizeof x->sid, "%s", s->sid);
    snprintf(x->tenant, sizeof x->tenant, "%s", tenant);
    snprintf(x->subject, sizeof x->subject, "%s", subject);
    x->created_ms = x->last_used_ms = now;
    x->expires_ms = now + SESSION_ABSOLUTE_MS;
    *strmap_put(&m->sessions, x->sid, strlen(x->sid), NULL) = x;
    mtoken_t *t = xcalloc(1, sizeof *t);
    snprintf(t->sid, sizeof t->sid, "%s", s->sid);
    t->state = TOKEN_ACTIVE;
    *strmap_put(&m->tokens, s->refresh_hash, 64, NULL) = t;
}

size_t gw_sessions_cleanup_mem(db_t *db, int64_t retain_s, size_t limit)
{
    msessions_t *m = mem(db);
    int64_t cut = clock_now_ms() - retain_s * 1000;
    size_t gone = 0;
    const char *k;
    size_t kl;
    void *v;
    for (size_t i = 0; gone < limit && strmap_next(&m->sessions, &i, &k, &kl, &v);) {
        msession_t *s = v;
        bool ended =
            s->expires_ms < cut || (s->revoked_ms && s->revoked_ms < cut) || s->last_used_ms < cut - SESSION_IDLE_MS;
        if (ended && strmap_del(&m->sessions, k, kl, NULL)) {
            free(s);
            gone++;
        }
    }
    /* a session's refresh tokens go with it, rotated ones included */
    for (size_t i = 0; gone && strmap_next(&m->tokens, &i, &k, &kl, &v);) {
        mtoken_t *t = v;
        if (!mem_session(m, t->sid) && strmap_del(&m->tokens, k, kl, NULL))
            free(t);
    }
    return gone;
}

/* Revokes the matching sessions of tenant (sid NULL: every session of the
 * subject; subject NULL: any subject) and their tokens; adds each sid to the
 * deny-list. Returns how many were revoked. */
static int mem_revoke(gw_req_t *r, msessions_t *m, const char *tenant, const char *sid, const char *subject)
{
    int n = 0;
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&m->sessions, &i, &k, NULL, &v);) {
        msession_t *s = v;
        if (s->revoked_ms || (*tenant && strcmp(s->tenant, tenant)) || (sid && strcmp(s->sid, sid)) ||
            (subject && strcmp(s->subject, subject)))
            continue;
        s->revoked_ms = clock_now_ms();
        n++;
        policy_revoke_sid(r->sh->policy, s->sid, clock_now_ms() + POLICY_SID_DENY_MS);
        for (size_t j = 0; strmap_next(&m->tokens, &j, &k, NULL, &v);)
            if (strcmp(((mtoken_t *)v)->sid, s->sid) == 0 && ((mtoken_t *)v)->state == TOKEN_ACTIVE)
                ((mtoken_t *)v)->state = TOKEN_REVOKED;
    }
    return n;
}

/* ---- POST B/auth/dev-login ---- */

const char gw_sql_session_create[] =
    "WITH s AS (INSERT INTO auth.sessions (sid, tenant, subject) VALUES ($1, $2, $3) RETURNING sid)"
    " INSERT INTO auth.refresh_tokens (hash, sid, tenant, state) SELECT $4, sid, $2, 'active' FROM s";

typedef struct login_st {
    gw_session_new_t s;
    char subject[SUBJECT_MAX + 1];
} login_st_t;

static void on_session_created(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    (void)res;
    (void)n;
    login_st_t *st = r->handler_state;
    if (err) {
        log_warn("session not recorded: %s", err);
        gw_tx_abort(r);
        unavailable(r, "the session could not be recorded");
        return;
    }
    gw_tokens_answer(r, NULL, st->subject, st->s.sid, st->s.refresh);
}

static bool subject_valid(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > SUBJECT_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f)
            return false;
    return utf8_valid(s); /* a query's %FF would be PostgreSQL's refusal: a 503, not the client's 400 */
}

static void dev_login(gw_req_t *r)
{
    if (!r->sh->dev) { /* no such pathway outside development (ASVS 6.3.4) */
        gw_problem(r, 404, NULL, "no route matches this path");
        return;
    }
    const char *user = json_object_is_type(r->json, json_type_object) ? json_get_str(r->json, "userId") : NULL;
    if (!subject_valid(user)) {
        gw_problem(r, 400, "validation-error", "send {\"userId\": \"...\"} (1 to 128 visible characters)");
        return;
    }
    log_warn("development login for %s in tenant %s", user, r->tenant);
    login_st_t *st = xcalloc(1, sizeof *st);
    r->handler_state = st;
    r->handler_state_free = free;
    snprintf(st->subject, sizeof st->subject, "%s", user);
    gw_session_secrets(&st->s);
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            unavailable(r, "the session could not be recorded");
            return;
        }
        gw_session_mem_create(db, r->tenant, st->subject, &st->s);
        gw_tokens_answer(r, db, st->subject, st->s.sid, st->s.refresh);
        return;
    }
    const char *p[] = {st->s.sid, r->tenant, st->subject, st->s.refresh_hash};
    const pga_stmt_t stm[] = {{.name = "gw_session_create", .sql = gw_sql_session_create, .nparams = 4, .params = p}};
    gw_tx_exec(r, stm, 1, on_session_created);
}

/* ---- POST B/auth/refresh ---- */

static const char sql_rotate[] =
    "WITH cur AS (UPDATE auth.refresh_tokens t SET state = 'rotated', used_at = now() FROM auth.sessions s"
    " WHERE t.hash = $1 AND t.state = 'active' AND ($2 = '' OR t.tenant = $2) AND s.sid = t.sid"
    " AND s.revoked_at IS NULL AND s.expires_at > now() AND s.last_used_at > now() - " SESSION_IDLE_SQL
    " RETURNING t.sid, t.tenant, s.subject),"
    " ins AS (INSERT INTO auth.refresh_tokens (hash, sid, tenant, state) SELECT $3, sid, tenant, 'active' FROM cur),"
    " upd AS (UPDATE auth.sessions SET last_used_at = now() WHERE sid IN (SELECT sid FROM cur))"
    " SELECT sid, tenant, subject FROM cur";
/* A rotated token came back after the grace period: someone holds a copy.
 * The family goes. (Within AUTHX_REFRESH_GRACE_S it is only refused: a client
 * that raced itself, not a thief.) The statement's own clock, not now(): a
 * refresh whose transaction began before the one that rotated the token (and
 * waited for its row) would otherwise see the rotation as in its future. */
static const char sql_reuse[] =
    "WITH f AS (SELECT sid FROM auth.refresh_tokens WHERE hash = $1 AND state = 'rotated'"
    " AND used_at <= clock_timestamp() - make_interval(secs => $2::int)),"
    " s AS (UPDATE auth.sessions SET revoked_at = now(), revoked_rev = nextval('auth.rev')"
    " WHERE sid IN (SELECT sid FROM f) AND revoked_at IS NULL RETURNING sid),"
    " t AS (UPDATE auth.refresh_tokens SET state = 'revoked' WHERE sid IN (SELECT sid FROM f) AND state = 'active')"
    " SELECT sid FROM s";

typedef struct refresh_st {
    char hash[65];
    gw_session_new_t next;
} refresh_st_t;

static void revoke_locally(gw_req_t *r, const char *sid)
{
    policy_revoke_sid(r->sh->policy, sid, clock_now_ms() + POLICY_SID_DENY_MS);
    policy_poke(r->sh->policy);
}

static void on_reuse(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    if (!err && n >= 2)
        for (int i = 0; i < PQntuples(res[1]); i++) {
            log_warn("refresh token reused: session %s revoked", PQgetvalue(res[1], i, 0));
            revoke_locally(r, PQgetvalue(res[1], i, 0));
        }
    if (r->pg) { /* committed by the pipeline's COMMIT */
        pga_release(r->pg, err != NULL);
        r->pg = NULL;
    }
    invalid_refresh(r);
}

static void on_rotate(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    refresh_st_t *st = r->handler_state;
    if (err || n < 1) {
        log_warn("refresh failed: %s", err ? err : "?");
        gw_tx_abort(r);
        unavailable(r, "the token could not be refreshed");
        return;
    }
    if (PQntuples(res[0]) == 1) {
        snprintf(r->tenant, sizeof r->tenant, "%s", PQgetvalue(res[0], 0, 1));
        char subject[SUBJECT_MAX + 1], sid[UUID_STR_LEN];
        snprintf(sid, sizeof sid, "%s", PQgetvalue(res[0], 0, 0));
        snprintf(subject, sizeof subject, "%s", PQgetvalue(res[0], 0, 2));
        gw_tokens_answer(r, NULL, subject, sid, st->next.refresh);
        return;
    }
    char grace[16];
    snprintf(grace, sizeof grace, "%ld", r->sh->cfg->authx_refresh_grace_s);
    const char *p[] = {st->hash, grace};
    const pga_stmt_t stm[] = {{.name = "gw_policy_lock", .sql = policy_sql_lock},
                              {.name = "gw_refresh_reuse", .sql = sql_reuse, .nparams = 2, .params = p},
                              {.sql = "COMMIT"}};
    gw_tx_exec(r, stm, 3, on_reuse);
}

static void mem_refresh(gw_req_t *r, refresh_st_t *st, const char *tenant_hdr)
{
    db_t *db = r->th->memdb;
    if (db_begin(db) != 0) {
        unavailable(r, "the token could not be refreshed");
        return;
    }
    msessions_t *m = mem(db);
    int64_t now = clock_now_ms();
    void **v = strmap_get(&m->tokens, st->hash, 64);
    mtoken_t *t = v ? *v : NULL;
    msession_t *s = t ? mem_session(m, t->sid) : NULL;
    if (t && t->state == TOKEN_ACTIVE && mem_session_live(s, now) && (!tenant_hdr || !strcmp(s->tenant, tenant_hdr))) {
        t->state = TOKEN_ROTATED;
        t->used_ms = now;
        s->last_used_ms = now;
        mtoken_t *nt = xcalloc(1, sizeof *nt);
        snprintf(nt->sid, sizeof nt->sid, "%s", s->sid);
        nt->state = TOKEN_ACTIVE;
        *strmap_put(&m->tokens, st->next.refresh_hash, 64, NULL) = nt;
        char subject[SUBJECT_MAX + 1], sid[UUID_STR_LEN];
        snprintf(r->tenant, sizeof r->tenant, "%s", s->tenant);
        snprintf(subject, sizeof subject, "%s", s->subject);
        snprintf(sid, sizeof sid, "%s", s->sid);
        gw_tokens_answer(r, db, subject, sid, st->next.refresh);
        return;
    }
    if (t && t->state == TOKEN_ROTATED && s && !s->revoked_ms &&
        t->used_ms <= now - r->sh->cfg->authx_refresh_grace_s * 1000) {
        log_warn("refresh token reused: session %s revoked", s->sid);
        mem_revoke(r, m, s->tenant, s->sid, NULL);
    }
    if (db_commit(db) != 0) {
        unavailable(r, "the token could not be refreshed");
        return;
    }
    invalid_refresh(r);
}

static void post_refresh(gw_req_t *r)
{
    const char *tok = json_object_is_type(r->json, json_type_object) ? json_get_str(r->json, "refreshToken") : NULL;
    if (!tok) {
        gw_problem(r, 400, "validation-error", "send {\"refreshToken\": \"...\"}");
        return;
    }
    if (strlen(tok) != REFRESH_TOKEN_LEN) {
        invalid_refresh(r);
        return;
    }
    refresh_st_t *st = xcalloc(1, sizeof *st);
    r->handler_state = st;
    r->handler_state_free = free;
    digest_sha256_hex(tok, st->hash);
    gw_session_secrets(&st->next);
    char hdr[REQCTX_TENANT_MAX + 1] = "";
    const char *h = r->ev ? h1_req_header(r->ev, "x-tenant-id") : NULL;
    if (h)
        snprintf(hdr, sizeof hdr, "%s", h);
    if (r->th->memdb) {
        mem_refresh(r, st, h ? hdr : NULL);
        return;
    }
    const char *p[] = {st->hash, hdr, st->next.refresh_hash};
    const pga_stmt_t stm[] = {{.name = "gw_refresh_rotate", .sql = sql_rotate, .nparams = 3, .params = p}};
    gw_tx_exec(r, stm, 1, on_rotate);
}

/* ---- revocation: logout, logout-all, DELETE sessions/:sid, admin ---- */

/* $1 sid or '' (all), $2 tenant or '' (every tenant: a subject's own), $3 subject or '' (any) */
static const char sql_revoke[] =
    "WITH s AS (UPDATE auth.sessions SET revoked_at = now(), revoked_rev = nextval('auth.rev')"
    " WHERE ($1 = '' OR sid = $1) AND ($2 = '' OR tenant = $2) AND ($3 = '' OR subject = $3) AND revoked_at IS NULL"
    " RETURNING sid),"
    " t AS (UPDATE auth.refresh_tokens SET state = 'revoked' WHERE sid IN (SELECT sid FROM s) AND state = 'active')"
    " SELECT sid FROM s";

typedef struct revoke_st {
    char **sids;
    int n;
    bool want_one; /* a named session: 404 when none was revoked */
} revoke_st_t;

static void revoke_st_free(void *p)
{
    revoke_st_t *st = p;
    for (int i = 0; i < st->n; i++)
        free(st->sids[i]);
    free(st->sids);
    free(st);
}

static void revoke_committed(gw_req_t *r)
{
    revoke_st_t *st = r->handler_state;
    for (int i = 0; i < st->n; i++)
        revoke_locally(r, st->sids[i]);
}

static void revoke_answer(gw_req_t *r, int n)
{
    revoke_st_t *st = r->handler_state;
    if (n == 0 && st->want_one) {
        gw_tx_abort(r);
        gw_problem(r, 404, "not-found", "no such active session");
        return;
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "revoked", json_object_new_int(n));
    r->on_committed = revoke_committed;
    gw_cmd_commit(r, 200, body);
}

static void on_revoked(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    revoke_st_t *st = r->handler_state;
    if (err || n < 2) {
        log_warn("revocation failed: %s", err ? err : "?");
        gw_tx_abort(r);
        unavailable(r, "the session could not be revoked");
        return;
    }
    st->n = PQntuples(res[1]);
    st->sids = xcalloc((size_t)st->n + 1, sizeof *st->sids);
    for (int i = 0; i < st->n; i++)
        st->sids[i] = xstrdup(PQgetvalue(res[1], i, 0));
    revoke_answer(r, st->n);
}

/* sid NULL: all sessions of subject; subject NULL: any subject's. tenant
 * "": every tenant's, for a subject's own sessions (a session of one tenant
 * acts in another where its subject holds a binding, so only the subject's
 * own revocation across tenants can end one opened in a tenant made up for
 * it); an admin's are the request's tenant's. */
static void revoke(gw_req_t *r, const char *tenant, const char *sid, const char *subject)
{
    revoke_st_t *st = xcalloc(1, sizeof *st);
    st->want_one = sid != NULL;
    r->handler_state = st;
    r->handler_state_free = revoke_st_free;
    if (sid && !uuid_valid(sid)) {
        /* every sid is a UUID: another path (a %FF the database would refuse
         * with a 503 that counts against the breaker) names no session */
        revoke_answer(r, 0);
        return;
    }
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            unavailable(r, "the session could not be revoked");
            return;
        }
        int n = mem_revoke(r, mem(db), tenant, sid, subject);
        if (db_commit(db) != 0) {
            unavailable(r, "the session could not be revoked");
            return;
        }
        revoke_answer(r, n);
        return;
    }
    const char *p[] = {sid ? sid : "", tenant, subject ? subject : ""};
    const pga_stmt_t stm[] = {{.name = "gw_policy_lock", .sql = policy_sql_lock},
                              {.name = "gw_session_revoke", .sql = sql_revoke, .nparams = 3, .params = p}};
    gw_tx_exec(r, stm, 2, on_revoked);
}

static bool session_principal_or_reply(gw_req_t *r)
{
    if (r->principal.present && !r->principal.dev && r->principal.sid[0])
        return true;
    gw_add_header(r, "WWW-Authenticate", "Bearer");
    gw_problem(r, 401, "invalid-token", "a Bearer token of a session is required");
    return false;
}

static const char *token_tenant(const gw_req_t *r)
{
    return r->principal.tid[0] ? r->principal.tid : r->tenant;
}

static void post_logout(gw_req_t *r)
{
    if (session_principal_or_reply(r))
        revoke(r, token_tenant(r), r->principal.sid, r->principal.sub);
}

static void post_logout_all(gw_req_t *r)
{
    if (session_principal_or_reply(r))
        revoke(r, "", NULL, r->principal.sub);
}

static void delete_my_session(gw_req_t *r)
{
    if (session_principal_or_reply(r))
        revoke(r, "", route_param(&r->params, "sid"), r->principal.sub);
}

static void admin_delete_session(gw_req_t *r)
{
    revoke(r, r->tenant, route_param(&r->params, "sid"), NULL);
}

/* ---- GET B/auth/sessions ---- */

static json_object *session_json(const char *sid, const char *tenant, int64_t created, int64_t used, int64_t expires,
                                 bool current)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "sessionId", json_object_new_string(sid));
    json_object_object_add(o, "tenant", json_object_new_string(tenant));
    json_object_object_add(o, "createdAt", json_object_new_int64(created));
    json_object_object_add(o, "lastUsedAt", json_object_new_int64(used));
    json_object_object_add(o, "expiresAt", json_object_new_int64(expires));
    json_object_object_add(o, "current", json_object_new_boolean(current));
    return o;
}

static void sessions_answer(gw_req_t *r, json_object *data)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "count", json_object_new_int((int)json_object_array_length(data)));
    json_object_object_add(body, "data", data);
    gw_add_header(r, "Cache-Control", "no-store");
    gw_respond_json(r, 200, body);
}

static void on_sessions(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    if (err || n < 1) {
        gw_tx_abort(r);
        unavailable(r, "the sessions could not be read");
        return;
    }
    json_object *data = json_object_new_array();
    for (int i = 0; i < PQntuples(res[0]); i++) {
        const char *sid = PQgetvalue(res[0], i, 0);
        json_object_array_add(data, session_json(sid, PQgetvalue(res[0], i, 4), atoll(PQgetvalue(res[0], i, 1)),
                                                 atoll(PQgetvalue(res[0], i, 2)), atoll(PQgetvalue(res[0], i, 3)),
                                                 !strcmp(sid, r->principal.sid)));
    }
    gw_tx_abort(r);
    sessions_answer(r, data);
}

static int newest_first(const void *a, const void *b)
{
    const msession_t *x = *(msession_t *const *)a, *y = *(msession_t *const *)b;
    return x->created_ms < y->created_ms ? 1 : x->created_ms > y->created_ms ? -1 : strcmp(y->sid, x->sid);
}

static void get_sessions(gw_req_t *r)
{
    if (!session_principal_or_reply(r))
        return;
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            unavailable(r, "the sessions could not be read");
            return;
        }
        msessions_t *m = mem(db);
        int64_t now = clock_now_ms();
        size_t n = 0, cap = 16;
        msession_t **live = xmalloc(cap * sizeof *live);
        const char *k;
        void *v;
        for (size_t i = 0; strmap_next(&m->sessions, &i, &k, NULL, &v);) {
            msession_t *s = v;
            if (!mem_session_live(s, now) || strcmp(s->subject, r->principal.sub)) /* in every tenant */
                continue;
            if (n == cap)
                live = xrealloc(live, (cap *= 2) * sizeof *live);
            live[n++] = s;
        }
        qsort(live, n, sizeof *live, newest_first); /* as the SQL: ORDER BY created_at DESC, sid DESC LIMIT 100 */
        json_object *data = json_object_new_array();
        for (size_t i = 0; i < n && i < 100; i++)
            json_object_array_add(data, session_json(live[i]->sid, live[i]->tenant, live[i]->created_ms,
                                                     live[i]->last_used_ms, live[i]->expires_ms,
                                                     !strcmp(live[i]->sid, r->principal.sid)));
        free(live);
        db_rollback(db);
        sessions_answer(r, data);
        return;
    }
    /* the subject's sessions in every tenant: each may act here (revoke) */
    const char *p[] = {r->principal.sub};
    const pga_stmt_t stm[] = {
        {.name = "gw_sessions",
         .sql = "SELECT sid, (extract(epoch FROM created_at) * 1000)::bigint,"
                " (extract(epoch FROM last_used_at) * 1000)::bigint, (extract(epoch FROM expires_at) * 1000)::bigint,"
                " tenant FROM auth.sessions WHERE subject = $1 AND revoked_at IS NULL AND expires_at > now()"
                " AND last_used_at > now() - " SESSION_IDLE_SQL " ORDER BY created_at DESC, sid DESC LIMIT 100",
         .nparams = 1,
         .params = p}};
    gw_tx_exec(r, stm, 1, on_sessions);
}

/* ---- policy writes: tuples, roles, bindings ---- */

typedef enum { W_TUPLE, W_ROLE, W_BINDING } wkind_t;

typedef struct pwrite {
    wkind_t kind;
    bool deleted;
    char tenant[REQCTX_TENANT_MAX + 1];
    char a[POLICY_REF_MAX + 1], b[POLICY_REF_MAX + 1], c[POLICY_REF_MAX + 1];
    char *perms; /* roles: space-separated */
    int64_t rev;
    bool found; /* a delete removed something */
} pwrite_t;

static void pwrite_free(void *p)
{
    pwrite_t *w = p;
    free(w->perms);
    free(w);
}

static void pwrite_apply(policy_t *pol, const pwrite_t *w)
{
    switch (w->kind) {
    case W_TUPLE:
        policy_put_tuple(pol, w->rev, w->tenant, w->a, w->b, w->c, w->deleted);
        break;
    case W_ROLE:
        policy_put_role(pol, w->rev, w->tenant, w->a, w->perms ? w->perms : "", w->deleted);
        break;
    case W_BINDING:
        policy_put_binding(pol, w->rev, w->tenant, w->a, w->b, w->deleted);
        break;
    }
}

static void pwrite_committed(gw_req_t *r)
{
    pwrite_t *w = r->handler_state;
    if (w->found)
        pwrite_apply(r->sh->policy, w);
    policy_poke(r->sh->policy);
}

static json_object *revision_body(const pwrite_t *w)
{
    json_object *body = json_object_new_object();
    char rev[24];
    snprintf(rev, sizeof rev, "%lld", (long long)w->rev);
    json_object_object_add(body, "revision", json_object_new_string(rev));
    if (w->deleted)
        json_object_object_add(body, "deleted", json_object_new_boolean(w->found));
    return body;
}

static void on_pwrite(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    pwrite_t *w = r->handler_state;
    if (err || n < 2) {
        log_warn("policy write failed: %s", err ? err : "?");
        gw_tx_abort(r);
        unavailable(r, "the authorization store is unavailable");
        return;
    }
    w->found = PQntuples(res[1]) == 1;
    w->rev = w->found ? atoll(PQgetvalue(res[1], 0, 0)) : policy_revision(r->sh->policy);
    r->on_committed = pwrite_committed;
    gw_cmd_commit(r, w->deleted ? 200 : 201, revision_body(w));
}

static pthread_mutex_t mem_policy_writes = PTHREAD_MUTEX_INITIALIZER; /* pwrite_run, memory store */

static void pwrite_run(gw_req_t *r, pwrite_t *w)
{
    r->handler_state = w;
    r->handler_state_free = pwrite_free;
    snprintf(w->tenant, sizeof w->tenant, "%s", r->tenant);
    if (r->th->memdb) {
        policy_t *pol = r->sh->policy;
        /* the snapshot is the store, answering as the SQL does: a put that
         * changes nothing gives the row's own revision, a delete of nothing
         * the policy's. One writer at a time (PostgreSQL's writes take an
         * advisory lock): two gateway threads putting the same row would
         * both find it absent and both take a revision. */
        pthread_mutex_lock(&mem_policy_writes);
        const char *same = w->deleted ? NULL : w->perms;
        int64_t row = w->kind == W_TUPLE     ? policy_tuple_rev(pol, w->tenant, w->a, w->b, w->c)
                      : w->kind == W_BINDING ? policy_binding_rev(pol, w->tenant, w->a, w->b)
                                             : policy_role_rev(pol, w->tenant, w->a, same);
        bool changes = w->deleted ? row > 0 : row == 0;
        w->found = !w->deleted || row > 0;
        if (changes) {
            w->rev = policy_next_revision(pol);
            pwrite_apply(pol, w);
        } else {
            w->rev = w->deleted ? policy_revision(pol) : row;
        }
        pthread_mutex_unlock(&mem_policy_writes);
        gw_respond_json(r, w->deleted ? 200 : 201, revision_body(w));
        return;
    }
    const char *sql = NULL, *name = NULL;
    const char *p[4] = {w->tenant, w->a, w->b, w->c};
    int np = 0;
    switch (w->kind) {
    case W_TUPLE:
        sql = w->deleted ? policy_sql_del_tuple : policy_sql_put_tuple;
        name = w->deleted ? "gw_tuple_del" : "gw_tuple_put";
        np = 4;
        break;
    case W_ROLE:
        sql = w->deleted ? policy_sql_del_role : policy_sql_put_role;
        name = w->deleted ? "gw_role_del" : "gw_role_put";
        p[2] = w->perms;
        np = w->deleted ? 2 : 3;
        break;
    case W_BINDING:
        sql = w->deleted ? policy_sql_del_binding : policy_sql_put_binding;
        name = w->deleted ? "gw_binding_del" : "gw_binding_put";
        np = 3;
        break;
    }
    const pga_stmt_t stm[] = {{.name = "gw_policy_lock", .sql = policy_sql_lock},
                              {.name = name, .sql = sql, .nparams = np, .params = p}};
    gw_tx_exec(r, stm, 2, on_pwrite);
}

/* The tuple of a body (POST) or of the query (DELETE, GET check). */
static bool tuple_args(gw_req_t *r, bool from_body, pwrite_t *w)
{
    char s[POLICY_REF_MAX + 2], rel[POLICY_NAME_MAX + 2], o[POLICY_REF_MAX + 2];
    const char *vs, *vr, *vo;
    if (from_body) {
        bool obj = json_object_is_type(r->json, json_type_object);
        vs = obj ? json_get_str(r->json, "subject") : NULL;
        vr = obj ? json_get_str(r->json, "relation") : NULL;
        vo = obj ? json_get_str(r->json, "object") : NULL;
    } else {
        vs = gw_query_arg(r, "subject", s, sizeof s);
        vr = gw_query_arg(r, "relation", rel, sizeof rel);
        vo = gw_query_arg(r, "object", o, sizeof o);
    }
    if (!vs || !vr || !vo || !policy_ref_valid(vs, true) || !policy_ref_valid(vo, false) ||
        !policy_relation_valid(vr)) {
        gw_problem(r, 400, "validation-error",
                   "subject, relation and object are required: subject type:id or type:id#relation, object "
                   "type:id (at most 128 bytes each), relation [a-z][a-z0-9_]*");
        return false;
    }
    snprintf(w->a, sizeof w->a, "%s", vo);
    snprintf(w->b, sizeof w->b, "%s", vr);
    snprintf(w->c, sizeof w->c, "%s", vs);
    return true;
}

static void post_tuple(gw_req_t *r)
{
    pwrite_t *w = xcalloc(1, sizeof *w);
    w->kind = W_TUPLE;
    if (!tuple_args(r, true, w)) {
        free(w);
        return;
    }
    pwrite_run(r, w);
}

static void delete_tuple(gw_req_t *r)
{
    pwrite_t *w = xcalloc(1, sizeof *w);
    w->kind = W_TUPLE;
    w->deleted = true;
    if (!tuple_args(r, false, w)) {
        free(w);
        return;
    }
    pwrite_run(r, w);
}

static void get_tuples(gw_req_t *r)
{
    char s[POLICY_REF_MAX + 2], rel[POLICY_NAME_MAX + 2], o[POLICY_REF_MAX + 2];
    const char *vs = gw_query_arg(r, "subject", s, sizeof s), *vr = gw_query_arg(r, "relation", rel, sizeof rel),
               *vo = gw_query_arg(r, "object", o, sizeof o);
    json_object *data = policy_list_tuples(r->sh->policy, r->tenant, vo, vr, vs, LIST_MAX);
    json_object *body = json_object_new_object();
    char rev[24];
    snprintf(rev, sizeof rev, "%lld", (long long)policy_revision(r->sh->policy));
    json_object_object_add(body, "count", json_object_new_int((int)json_object_array_length(data)));
    json_object_object_add(body, "data", data);
    json_object_object_add(body, "revision", json_object_new_string(rev));
    gw_respond_json(r, 200, body);
}

static void get_check(gw_req_t *r)
{
    pwrite_t w = {0};
    if (!tuple_args(r, false, &w))
        return;
    if (!r->sh->dev && !policy_fresh(r->sh->policy, clock_mono_ms())) {
        unavailable(r, "the authorization store is unreachable");
        return;
    }
    policy_verdict_t v = policy_check(r->sh->policy, r->tenant, w.a, w.b, w.c);
    json_object *body = json_object_new_object();
    char rev[24];
    snprintf(rev, sizeof rev, "%lld", (long long)policy_revision(r->sh->policy));
    json_object_object_add(body, "allowed", json_object_new_boolean(v == POLICY_ALLOW));
    if (v == POLICY_DEPTH_EXCEEDED)
        json_object_object_add(body, "reason", json_object_new_string("depth-exceeded"));
    json_object_object_add(body, "revision", json_object_new_string(rev));
    gw_respond_json(r, 200, body);
}

static void post_role(gw_req_t *r)
{
    bool obj = json_object_is_type(r->json, json_type_object);
    const char *name = obj ? json_get_str(r->json, "name") : NULL;
    json_object *perms = NULL;
    bool ok = name && policy_name_valid(name) && json_object_object_get_ex(r->json, "permissions", &perms) &&
              json_object_is_type(perms, json_type_array) && json_object_array_length(perms) <= 64;
    char buf[64 * (POLICY_NAME_MAX + 1) + 1] = "";
    size_t n = 0;
    for (size_t i = 0; ok && i < json_object_array_length(perms); i++) {
        json_object *pm = json_object_array_get_idx(perms, i);
        ok = json_object_is_type(pm, json_type_string) && policy_name_valid(json_object_get_string(pm));
        if (ok)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? " " : "", json_object_get_string(pm));
    }
    if (!ok) {
        gw_problem(r, 400, "validation-error",
                   "send {\"name\": \"role\", \"permissions\": [\"events:write\", ...]} (names [a-z][a-z0-9_:.*-]*, "
                   "at most 64 permissions)");
        return;
    }
    pwrite_t *w = xcalloc(1, sizeof *w);
    w->kind = W_ROLE;
    snprintf(w->a, sizeof w->a, "%s", name);
    w->perms = xstrdup(buf);
    pwrite_run(r, w);
}

static void delete_role(gw_req_t *r)
{
    const char *name = route_param(&r->params, "name");
    if (!policy_name_valid(name)) {
        gw_problem(r, 400, "validation-error", "a role name is [a-z][a-z0-9_:.*-]*");
        return;
    }
    pwrite_t *w = xcalloc(1, sizeof *w);
    w->kind = W_ROLE;
    w->deleted = true;
    snprintf(w->a, sizeof w->a, "%s", name);
    pwrite_run(r, w);
}

static void get_roles(gw_req_t *r)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "roles", policy_list_roles(r->sh->policy, r->tenant));
    gw_respond_json(r, 200, body);
}

static bool member_args(gw_req_t *r, bool from_body, pwrite_t *w)
{
    char sb[SUBJECT_MAX + 2], rb[POLICY_NAME_MAX + 2];
    const char *s, *role;
    if (from_body) {
        bool obj = json_object_is_type(r->json, json_type_object);
        s = obj ? json_get_str(r->json, "subject") : NULL;
        role = obj ? json_get_str(r->json, "role") : NULL;
    } else {
        s = gw_query_arg(r, "subject", sb, sizeof sb);
        role = gw_query_arg(r, "role", rb, sizeof rb);
    }
    if (!subject_valid(s) || !policy_name_valid(role)) {
        gw_problem(r, 400, "validation-error",
                   "subject (a user id, or * for every user of the tenant) and role are required");
        return false;
    }
    w->kind = W_BINDING;
    snprintf(w->a, sizeof w->a, "%s", s);
    snprintf(w->b, sizeof w->b, "%s", role);
    return true;
}

static void post_member(gw_req_t *r)
{
    pwrite_t *w = xcalloc(1, sizeof *w);
    if (!member_args(r, true, w)) {
        free(w);
        return;
    }
    pwrite_run(r, w);
}

static void delete_member(gw_req_t *r)
{
    pwrite_t *w = xcalloc(1, sizeof *w);
    w->deleted = true;
    if (!member_args(r, false, w)) {
        free(w);
        return;
    }
    pwrite_run(r, w);
}

/* ---- the table ---- */

#define AUTH_BREAKER                                                                                               \
    {                                                                                                              \
        .breaker = true, .breaker_params = {.failure_rate_threshold = 50, .window_ms = 30000, .minimum_calls = 20, \
                                            .open_duration_ms = 20000, .half_open_max_calls = 5 }                   \
    }

/* count per minute with as many again at once, per client address */
#define PER_ADDRESS(n, b) {.limit = {.count = (n), .period_ms = 60000, .burst = (b)}, .by_address = true}

#define SESSION_ROUTES(svc)                                                                                         \
    {.id = svc ".auth.dev-login", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/dev-login",                 \
     .handler = dev_login, .anonymous = true, .resilience = AUTH_BREAKER},                                         \
    {.id = svc ".auth.refresh", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/refresh",                     \
     .handler = post_refresh, .anonymous = true, .rate = PER_ADDRESS(120, 60),                                     \
     .resilience = AUTH_BREAKER},                                                                                  \
    {.id = svc ".auth.logout", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/logout",                       \
     .handler = post_logout, .resilience = AUTH_BREAKER},                                                          \
    {.id = svc ".auth.logout-all", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/logout-all",               \
     .handler = post_logout_all, .resilience = AUTH_BREAKER},                                                      \
    {.id = svc ".auth.sessions", .methods = ROUTE_GET, .path = "/api/v1/" svc "/auth/sessions",                    \
     .handler = get_sessions, .resilience = AUTH_BREAKER},                                                         \
    {.id = svc ".auth.sessions.revoke", .methods = ROUTE_DELETE, .path = "/api/v1/" svc "/auth/sessions/:sid",     \
     .handler = delete_my_session, .resilience = AUTH_BREAKER},                                                    \
    {.id = svc ".auth.totp.enroll", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/totp/enroll",             \
     .handler = gw_totp_enroll, .resilience = AUTH_BREAKER},                                                       \
    {.id = svc ".auth.totp.activate", .methods = ROUTE_POST, .path = "/api/v1/" svc "/auth/totp/activate",         \
     .handler = gw_totp_activate, .rate = {.limit = {.count = 10, .period_ms = 60000, .burst = 5}},                \
     .resilience = AUTH_BREAKER},                                                                                  \
    {.id = svc ".auth.totp.remove", .methods = ROUTE_DELETE, .path = "/api/v1/" svc "/auth/totp",                  \
     .handler = gw_totp_remove, .resilience = AUTH_BREAKER}

#define ADMIN "/api/v1/analytics/admin/auth"

static const route_t rows[] = {
    SESSION_ROUTES("analytics"),
    SESSION_ROUTES("payments"),
    SESSION_ROUTES("notifications"),
    {.id = "authx.rebac.write", .methods = ROUTE_POST, .path = ADMIN "/rebac", .handler = post_tuple,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.rebac.delete", .methods = ROUTE_DELETE, .path = ADMIN "/rebac", .handler = delete_tuple,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.rebac.list", .methods = ROUTE_GET, .path = ADMIN "/rebac", .handler = get_tuples,
     .permissions = {"authx:admin"}},
    {.id = "authx.rebac.check", .methods = ROUTE_GET, .path = ADMIN "/rebac/check", .handler = get_check,
     .permissions = {"authx:admin"}},
    {.id = "authx.roles.write", .methods = ROUTE_POST, .path = ADMIN "/roles", .handler = post_role,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.roles.list", .methods = ROUTE_GET, .path = ADMIN "/roles", .handler = get_roles,
     .permissions = {"authx:admin"}},
    {.id = "authx.roles.delete", .methods = ROUTE_DELETE, .path = ADMIN "/roles/:name", .handler = delete_role,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.members.write", .methods = ROUTE_POST, .path = ADMIN "/members", .handler = post_member,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.members.delete", .methods = ROUTE_DELETE, .path = ADMIN "/members", .handler = delete_member,
     .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
    {.id = "authx.sessions.revoke", .methods = ROUTE_DELETE, .path = ADMIN "/sessions/:sid",
     .handler = admin_delete_session, .permissions = {"authx:admin"}, .resilience = AUTH_BREAKER},
};

const route_t *const gw_routes_authx = rows;
const size_t gw_routes_authx_n = sizeof rows / sizeof rows[0];
