/* http-gateway/routes_auth.c: OTP login (AuthX O1–O9), under every service
 * prefix: POST …/auth/otp/request {subject, channel} -> {ticketId, expiresIn};
 * POST …/auth/otp/verify {ticketId, code} -> {ok, accessToken, refreshToken,
 * sessionId}.
 *
 * A code is 6 CSPRNG digits, stored only as HMAC-SHA-256(pepper, tenant,
 * ticket, code); it reaches the user through the outbox (auth.otp.requested,
 * delivered by the notification service). A new request voids the subject's
 * open tickets on that channel; requests are limited to one per 30 s and five
 * per 15 min per subject. A ticket allows 5 tries; a subject has a budget of 10
 * failures per hour across tickets (then 429). A verify takes the subject's
 * lock, locks the ticket, compares the MACs with CRYPTO_memcmp and consumes the
 * ticket, so of 20 parallel verifies exactly one wins, and every failure
 * answers the same 401. Unknown subjects are treated exactly as
 * known ones (no oracle).
 *
 * Channel "totp" sends nothing: its ticket opens with a current code of the
 * subject's active enrolment (RFC 6238, one step either side of the learned
 * drift, a step not later than the last one used refused as a replay), and a
 * subject without one gets a ticket no code opens, answered identically.
 * Enrolment (POST …/auth/totp/enroll, …/activate, DELETE …/auth/totp) keeps
 * the secret sealed with AES-256-GCM under a key derived from OTP_PEPPER.
 * Owns: the memory tables of MEM_SLOT_AUTH. */
#include "http-gateway/routes_auth.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/digest.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/strmap.h"
#include "core/uuid.h"
#include "http-gateway/authx/otp.h"
#include "http-gateway/routes_authx.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICKET_TTL_S 300
#define TICKET_TRIES 5
#define SUBJECT_FAILURES_PER_HOUR 10
#define SUBJECT_MAX 128 /* as a token's sub holds it (principal_t): a longer one would be cut */

/* ---- the pepper ---- */

static pthread_once_t pepper_once = PTHREAD_ONCE_INIT;
static uint8_t dev_pepper[32];

static void make_dev_pepper(void)
{
    random_bytes(dev_pepper, sizeof dev_pepper);
}

static void pepper(gw_req_t *r, const uint8_t **key, size_t *len)
{
    const char *p = r->sh->cfg->otp_pepper;
    if (p[0]) {
        *key = (const uint8_t *)p;
        *len = strlen(p);
        return;
    }
    /* development without OTP_PEPPER (startup refuses that elsewhere): one per process */
    pthread_once(&pepper_once, make_dev_pepper);
    *key = dev_pepper;
    *len = sizeof dev_pepper;
}

static void code_mac(gw_req_t *r, const char *ticket, const char *code, char out[65])
{
    const uint8_t *key;
    size_t len;
    pepper(r, &key, &len);
    if (otp_code_mac(key, len, r->tenant, ticket, code, out) != 0)
        ECOM_ASSERT(!"otp_code_mac failed");
}

/* ---- TOTP secrets at rest: AES-256-GCM, bound to tenant and subject ---- */

#define SEAL_NONCE 12
#define SEAL_TAG 16
#define SEALED_HEX_MAX (2 * (SEAL_NONCE + OTP_SECRET_MAX_LEN + SEAL_TAG) + 1)

static void seal_key(gw_req_t *r, uint8_t key[32])
{
    const uint8_t *p;
    size_t n;
    pepper(r, &p, &n);
    unsigned kl = 0;
    static const char label[] = "ecom/totp-secret/v1";
    ECOM_ASSERT(HMAC(EVP_sha256(), p, (int)n, (const uint8_t *)label, sizeof label - 1, key, &kl) && kl == 32);
}

static size_t seal_aad(gw_req_t *r, const char *subject, uint8_t *aad, size_t cap)
{
    int n = snprintf((char *)aad, cap, "%s%c%s", r->tenant, '\0', subject);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* secret -> hex(nonce || ciphertext || tag). 0 or -1. */
static int totp_seal(gw_req_t *r, const char *subject, const uint8_t *secret, size_t n, char out[SEALED_HEX_MAX])
{
    uint8_t key[32], buf[SEAL_NONCE + OTP_SECRET_MAX_LEN + SEAL_TAG], aad[REQCTX_TENANT_MAX + SUBJECT_MAX + 2];
    if (n > OTP_SECRET_MAX_LEN)
        return -1;
    seal_key(r, key);
    random_bytes(buf, SEAL_NONCE);
    size_t al = seal_aad(r, subject, aad, sizeof aad);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0, ok = c && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, buf) == 1 &&
                                 EVP_EncryptUpdate(c, NULL, &len, aad, (int)al) == 1 &&
                                 EVP_EncryptUpdate(c, buf + SEAL_NONCE, &len, secret, (int)n) == 1 &&
                                 EVP_EncryptFinal_ex(c, buf + SEAL_NONCE + len, &fin) == 1 &&
                                 EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, SEAL_TAG, buf + SEAL_NONCE + n) == 1;
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(key, sizeof key);
    if (!ok)
        return -1;
    size_t total = SEAL_NONCE + n + SEAL_TAG;
    for (size_t i = 0; i < total; i++)
        snprintf(out + 2 * i, 3, "%02x", buf[i]);
    return 0;
}

/* The inverse; -1 when the text was not sealed by this pepper for this tenant and subject. */
static int totp_open(gw_req_t *r, const char *subject, const char *hex, uint8_t *secret, size_t *n)
{
    uint8_t key[32], buf[SEAL_NONCE + OTP_SECRET_MAX_LEN + SEAL_TAG], aad[REQCTX_TENANT_MAX + SUBJECT_MAX + 2];
    size_t hl = strlen(hex);
    if (hl % 2 || hl / 2 < SEAL_NONCE + OTP_SECRET_MIN_LEN + SEAL_TAG || hl / 2 > sizeof buf)
        return -1;
    for (size_t i = 0; i < hl / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        buf[i] = (uint8_t)v;
    }
    size_t ct = hl / 2 - SEAL_NONCE - SEAL_TAG;
    seal_key(r, key);
    size_t al = seal_aad(r, subject, aad, sizeof aad);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0,
        ok = c && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, buf) == 1 &&
             EVP_DecryptUpdate(c, NULL, &len, aad, (int)al) == 1 &&
             EVP_DecryptUpdate(c, secret, &len, buf + SEAL_NONCE, (int)ct) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, SEAL_TAG, buf + SEAL_NONCE + ct) == 1 &&
             EVP_DecryptFinal_ex(c, secret + len, &fin) == 1;
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(key, sizeof key);
    *n = ct;
    return ok ? 0 : -1;
}

/* ---- memory tables ---- */

typedef struct mticket {
    char tenant[REQCTX_TENANT_MAX + 1];
    char ticket[OTP_TICKET_ID_LEN + 1];
    char subject[SUBJECT_MAX + 1];
    char channel[8];
    char mac[65];
    int attempts;
    int64_t created_ms, expires_ms;
    bool consumed;
} mticket_t;

typedef struct mfail {
    int64_t window_ms;
    int failures;
} mfail_t;

typedef struct mtotp {
    uint8_t secret[OTP_SECRET_MAX_LEN];
    size_t len;
    bool active;
    int64_t last_step;
    int drift;
} mtotp_t;

typedef struct mauth {
    mticket_t *t;
    size_t n, cap;
    strmap_t fails; /* tenant \0 subject -> mfail_t* */
    strmap_t totp;  /* tenant \0 subject -> mtotp_t* */
} mauth_t;

static void *mem_make(void)
{
    mauth_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->fails);
    strmap_init(&m->totp);
    return m;
}

static void mem_free(void *p)
{
    mauth_t *m = p;
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(&m->fails, &i, &k, NULL, &v);)
        free(v);
    strmap_free(&m->fails);
    for (size_t i = 0; strmap_next(&m->totp, &i, &k, NULL, &v);) {
        OPENSSL_cleanse(v, sizeof(mtotp_t));
        free(v);
    }
    strmap_free(&m->totp);
    free(m->t);
    free(m);
}

static mauth_t *mem(db_t *db)
{
    return db_mem_slot(db, MEM_SLOT_AUTH, mem_make, mem_free);
}

/* Wrong codes are counted per subject, whatever the tenant (as in
 * auth.otp_failures). */
static mfail_t *mem_fail(mauth_t *m, const char *subject, bool create)
{
    size_t kl = strlen(subject);
    void **v = create ? strmap_put(&m->fails, subject, kl, NULL) : strmap_get(&m->fails, subject, kl);
    if (!v)
        return NULL;
    if (!*v)
        *v = xcalloc(1, sizeof(mfail_t));
    return *v;
}

static mtotp_t *mem_totp(mauth_t *m, const char *tenant, const char *subject, bool create)
{
    char key[REQCTX_TENANT_MAX + SUBJECT_MAX + 2];
    int kl = snprintf(key, sizeof key, "%s%c%s", tenant, '\0', subject);
    void **v = create ? strmap_put(&m->totp, key, (size_t)kl, NULL) : strmap_get(&m->totp, key, (size_t)kl);
    if (!v)
        return NULL;
    if (!*v) {
        *v = xcalloc(1, sizeof(mtotp_t));
        ((mtotp_t *)*v)->last_step = OTP_NO_STEP;
    }
    return *v;
}

/* ---- shared validation ---- */

static bool subject_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > SUBJECT_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == 0x7f)
            return false;
    return true;
}

static void too_many(gw_req_t *r, long retry_s, const char *detail)
{
    char ra[24];
    snprintf(ra, sizeof ra, "%ld", retry_s > 0 ? retry_s : 1);
    gw_add_header(r, "Retry-After", ra);
    gw_problem(r, 429, "rate-limited", detail);
}

static void invalid_code(gw_req_t *r)
{
    gw_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
    gw_problem(r, 401, "invalid-code", "the code is wrong, expired or already used");
}

/* ---- POST …/auth/otp/request ---- */

typedef struct otp_req {
    char subject[SUBJECT_MAX + 1];
    char channel[8];
    char ticket[OTP_TICKET_ID_LEN + 1];
    char ticket_key[65]; /* what auth.otp_tickets keeps of the ticket id: its SHA-256 */
    char code[OTP_CODE_LEN + 1];
    char mac[65];
} otp_req_t;

static void request_answer(gw_req_t *r, const otp_req_t *q)
{
    if (strcmp(q->channel, "totp") != 0) {
        json_object *p = json_object_new_object();
        json_object_object_add(p, "subject", json_object_new_string(q->subject));
        json_object_object_add(p, "channel", json_object_new_string(q->channel));
        /* the code without its ticket id, which only the requester gets:
         * whoever reads the outbox, the stream or the tickets' table (which
         * keeps the ids' hashes) cannot log in with it */
        json_object_object_add(p, "code", json_object_new_string(q->code));
        json_object_object_add(p, "expiresIn", json_object_new_int(TICKET_TTL_S));
        outbox_msg_t m = {.topic = "auth",
                          .type = "auth.otp.requested",
                          .tenant = r->tenant,
                          .aggregate_id = q->subject,
                          .traceparent = r->traceparent,
                          .request_id = r->request_id,
                          .payload = json_object_to_json_string_ext(p, JSON_C_TO_STRING_PLAIN)};
        const char *why = NULL;
        int rc = gw_cmd_outbox(r, &m, NULL, &why);
        json_object_put(p);
        if (rc != 0) {
            gw_problem(r, 400, "validation-error", why);
            return;
        }
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "ticketId", json_object_new_string(q->ticket));
    json_object_object_add(body, "expiresIn", json_object_new_int(TICKET_TTL_S));
    gw_cmd_commit(r, 200, body);
}

static otp_req_t *pending_req(gw_req_t *r)
{
    return (otp_req_t *)r->handler_state;
}

static void on_requested(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    otp_req_t *q = pending_req(r);
    if (err || n < 2) {
        log_warn("otp request failed: %s", err ? err : "?");
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the login could not be started");
        return;
    }
    if (atoi(PQgetvalue(res[1], 0, 0)) != 1) {
        long retry = atol(PQgetvalue(res[1], 0, 1));
        gw_tx_abort(r);
        too_many(r, retry, "too many codes requested for this subject; wait before asking again");
        return;
    }
    request_answer(r, q);
}

/* Code requests and verifies of one subject take turns on one transaction-
 * scoped advisory lock: class 'ECOM'+5, key the subject's hash. */
#define OTP_SUBJECT_LOCK(subject) "pg_advisory_xact_lock(1162104658, hashtext(" subject "))"
static const char sql_request_lock[] = "SELECT " OTP_SUBJECT_LOCK("$1");

static const char sql_request[] =
    "WITH recent AS (SELECT count(*) FILTER (WHERE created_at > now() - interval '15 minutes') AS n15,"
    " max(created_at) AS last, min(created_at) FILTER (WHERE created_at > now() - interval '15 minutes') AS first15"
    /* codes sent, in every tenant: one budget per subject, which a made-up
     * tenant does not renew; a TOTP request sends nothing and is not held
     * to it, so a subject kept at 429 by someone else's requests can still
     * log in with its authenticator */
    " FROM auth.otp_tickets WHERE subject = $2 AND channel <> 'totp'),"
    " ok AS (SELECT 1 FROM recent WHERE $3 = 'totp' OR ((last IS NULL OR last <= now() - interval '30 seconds')"
    " AND n15 < 5)),"
    " old AS (UPDATE auth.otp_tickets SET consumed_at = now() WHERE tenant = $1 AND subject = $2 AND channel = $3"
    " AND consumed_at IS NULL AND EXISTS (SELECT 1 FROM ok) RETURNING 1),"
    " ins AS (INSERT INTO auth.otp_tickets (tenant, ticket_id, subject, channel, code_mac, expires_at)"
    " SELECT $1, $4, $2, $3, $5, now() + interval '300 seconds' FROM ok RETURNING 1)"
    " SELECT (SELECT count(*) FROM ins), greatest(1, ceil(extract(epoch FROM greatest("
    " coalesce((SELECT last FROM recent) + interval '30 seconds' - now(), interval '0'),"
    " CASE WHEN (SELECT n15 FROM recent) >= 5 THEN (SELECT first15 FROM recent) + interval '15 minutes' - now()"
    " ELSE interval '0' END))))::int";

static void mem_request(gw_req_t *r, otp_req_t *q)
{
    db_t *db = r->th->memdb;
    if (db_begin(db) != 0) {
        gw_problem(r, 503, "storage-unavailable", "the login could not be started");
        return;
    }
    mauth_t *m = mem(db);
    int64_t now = clock_now_ms(), last = 0, first15 = 0;
    int n15 = 0;
    for (size_t i = 0; i < m->n; i++) {
        mticket_t *t = &m->t[i];
        if (strcmp(t->subject, q->subject) || !strcmp(t->channel, "totp")) /* as sql_request */
            continue;
        if (t->created_ms > last)
            last = t->created_ms;
        if (t->created_ms > now - 900000) {
            n15++;
            if (!first15 || t->created_ms < first15)
                first15 = t->created_ms;
        }
    }
    long retry = 0;
    if (!strcmp(q->channel, "totp"))
        last = n15 = 0; /* nothing is sent: not held to the budget */
    if (last && now - last < 30000)
        retry = (long)((last + 30000 - now + 999) / 1000);
    if (n15 >= 5 && (first15 + 900000 - now + 999) / 1000 > retry)
        retry = (long)((first15 + 900000 - now + 999) / 1000);
    if (retry > 0) {
        db_rollback(db);
        too_many(r, retry, "too many codes requested for this subject; wait before asking again");
        return;
    }
    /* void this channel's open ones; expired tickets stay for the retention
     * cleanup (gw_auth_cleanup), as rows do in PostgreSQL, where a
     * verify of one still counts against the budgets */
    for (size_t i = 0; i < m->n; i++) {
        mticket_t *t = &m->t[i];
        if (!strcmp(t->tenant, r->tenant) && !strcmp(t->subject, q->subject) && !strcmp(t->channel, q->channel))
            t->consumed = true;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->t = xrealloc(m->t, m->cap * sizeof *m->t);
    }
    mticket_t *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->tenant, sizeof t->tenant, "%s", r->tenant);
    memcpy(t->ticket, q->ticket, sizeof t->ticket);
    snprintf(t->subject, sizeof t->subject, "%s", q->subject);
    snprintf(t->channel, sizeof t->channel, "%s", q->channel);
    memcpy(t->mac, q->mac, sizeof t->mac);
    t->created_ms = now;
    t->expires_ms = now + TICKET_TTL_S * 1000;
    if (db_commit(db) != 0) {
        gw_problem(r, 503, "storage-unavailable", "the login could not be started");
        return;
    }
    request_answer(r, q);
}

void gw_otp_request(gw_req_t *r)
{
    json_object *b = r->json;
    const char *subject = json_object_is_type(b, json_type_object) ? json_get_str(b, "subject") : NULL;
    const char *channel = json_object_is_type(b, json_type_object) ? json_get_str(b, "channel") : NULL;
    if (!subject || !subject_valid(subject)) {
        gw_problem(r, 400, "validation-error", "subject must be 1 to 128 visible characters");
        return;
    }
    if (!channel || (strcmp(channel, "email") && strcmp(channel, "sms") && strcmp(channel, "totp"))) {
        gw_problem(r, 400, "validation-error", "channel must be email, sms or totp");
        return;
    }
    otp_req_t *q = xcalloc(1, sizeof *q);
    r->handler_state = q;
    r->handler_state_free = free;
    snprintf(q->subject, sizeof q->subject, "%s", subject);
    snprintf(q->channel, sizeof q->channel, "%s", channel);
    otp_ticket_id(q->ticket);
    digest_sha256_hex(q->ticket, q->ticket_key);
    otp_random_code(q->code);
    if (strcmp(channel, "totp") == 0) {
        char dead[16];
        random_hex(dead, 4); /* not a code anyone can type: the ticket opens with nothing */
        code_mac(r, q->ticket, dead, q->mac);
    } else {
        code_mac(r, q->ticket, q->code, q->mac);
    }
    if (r->th->memdb) {
        mem_request(r, q);
        return;
    }
    /* requests of one subject take turns (the lock of its verifies): sent
     * together, each would pass the limits against the tickets before all */
    const char *p[] = {r->tenant, q->subject, q->channel, q->ticket_key, q->mac}, *ps[] = {q->subject};
    const pga_stmt_t st[] = {{.name = "gw_otp_request_lock", .sql = sql_request_lock, .nparams = 1, .params = ps},
                             {.name = "gw_otp_request", .sql = sql_request, .nparams = 5, .params = p}};
    gw_tx_exec(r, st, 2, on_requested);
}

/* ---- POST …/auth/otp/verify ---- */

typedef struct otp_ver {
    char ticket[OTP_TICKET_ID_LEN + 1];
    char ticket_key[65]; /* its SHA-256, as auth.otp_tickets keeps it */
    char code[OTP_CODE_LEN + 1];
    gw_session_new_t s;
    char mac[65];
} otp_ver_t;

/* mem_tx: the memory store's open transaction (gw_tokens_answer), or NULL */
static void verified(gw_req_t *r, db_t *mem_tx, const otp_ver_t *v, const char *subject)
{
    gw_tokens_answer(r, mem_tx, subject, v->s.sid, v->s.refresh);
}

static void on_failure_recorded(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    bool limited = false;
    long retry = 0;
    if (!err && n >= 1 && PQntuples(res[0]) == 1) {
        limited = atoi(PQgetvalue(res[0], 0, 0)) > SUBJECT_FAILURES_PER_HOUR;
        retry = atol(PQgetvalue(res[0], 0, 1));
    }
    if (r->pg) { /* committed by the pipeline's COMMIT */
        pga_release(r->pg, err != NULL);
        r->pg = NULL;
    }
    if (limited)
        too_many(r, retry, "too many wrong codes for this subject; wait before trying again");
    else
        invalid_code(r);
}

/* Verifies of one subject take turns, whatever their tickets and tenants:
 * the lock is held to the transaction's end, after the failure of a wrong
 * code is counted, so parallel guesses each see the counts of those before
 * them (without it, guesses sent together were all checked against the
 * counts from before any of them failed). */
static const char sql_subject_lock[] =
    "SELECT " OTP_SUBJECT_LOCK("subject") " FROM auth.otp_tickets WHERE tenant = $1 AND ticket_id = $2";
/* An emailed or texted code's ticket that may still be used, locked, with
 * its MAC: the MAC is compared here with CRYPTO_memcmp (otp_mac_equal), not
 * by the database's equality, which stops at the first differing byte. */
static const char sql_code_ticket[] =
    "SELECT t.subject, t.code_mac FROM auth.otp_tickets t"
    " WHERE t.tenant = $1 AND t.ticket_id = $2 AND t.channel <> 'totp' AND t.consumed_at IS NULL"
    " AND t.attempts < 5 AND t.expires_at > now() AND NOT EXISTS (SELECT 1 FROM auth.otp_failures f"
    " WHERE f.subject = t.subject AND f.window_start > now() - interval '1 hour'"
    " AND f.failures >= 10) FOR UPDATE";
/* Consumes a ticket the transaction holds locked and opens the session. */
static const char sql_code_consume[] =
    "WITH t AS (UPDATE auth.otp_tickets SET consumed_at = now() WHERE tenant = $1 AND ticket_id = $2"
    " AND consumed_at IS NULL RETURNING subject),"
    " s AS (INSERT INTO auth.sessions (sid, tenant, subject) SELECT $3, $1, subject FROM t RETURNING sid, subject),"
    " rt AS (INSERT INTO auth.refresh_tokens (hash, sid, tenant, state) SELECT $4, sid, $1, 'active' FROM s)"
    " SELECT subject FROM s";
static const char sql_fail[] =
    "WITH t AS (UPDATE auth.otp_tickets SET attempts = attempts + 1 WHERE tenant = $1 AND ticket_id = $2"
    " AND consumed_at IS NULL RETURNING subject),"
    " f AS (INSERT INTO auth.otp_failures AS x (subject, window_start, failures)"
    " SELECT subject, now(), 1 FROM t ON CONFLICT (subject) DO UPDATE SET"
    " failures = CASE WHEN x.window_start > now() - interval '1 hour' THEN x.failures + 1 ELSE 1 END,"
    " window_start = CASE WHEN x.window_start > now() - interval '1 hour' THEN x.window_start ELSE now() END"
    " RETURNING failures, ceil(extract(epoch FROM window_start + interval '1 hour' - now()))::int AS retry)"
    " SELECT failures, retry FROM f";

/* The enrolment behind a TOTP ticket that may still be used, both rows
 * locked: concurrent verifies of one ticket, or of one subject's tickets,
 * take turns, so a code opens one of them at most. */
static const char sql_totp_ticket[] =
    "SELECT t.subject, x.secret, x.last_step, x.drift FROM auth.otp_tickets t JOIN auth.totp x"
    " ON x.tenant = t.tenant AND x.subject = t.subject AND x.state = 'active'"
    " WHERE t.tenant = $1 AND t.ticket_id = $2 AND t.channel = 'totp' AND t.consumed_at IS NULL"
    " AND t.attempts < 5 AND t.expires_at > now() AND NOT EXISTS (SELECT 1 FROM auth.otp_failures f"
    " WHERE f.subject = t.subject AND f.window_start > now() - interval '1 hour'"
    " AND f.failures >= 10) FOR UPDATE";
static const char sql_totp_consume[] =
    "WITH t AS (UPDATE auth.otp_tickets SET consumed_at = now() WHERE tenant = $1 AND ticket_id = $2"
    " AND consumed_at IS NULL RETURNING subject),"
    " x AS (UPDATE auth.totp SET last_step = $3, drift = $4 WHERE tenant = $1 AND subject IN (SELECT subject FROM t)),"
    " s AS (INSERT INTO auth.sessions (sid, tenant, subject) SELECT $5, $1, subject FROM t RETURNING sid, subject),"
    " rt AS (INSERT INTO auth.refresh_tokens (hash, sid, tenant, state) SELECT $6, sid, $1, 'active' FROM s)"
    " SELECT subject FROM s";

static void record_failure(gw_req_t *r, otp_ver_t *v)
{
    const char *p[] = {r->tenant, v->ticket_key};
    const pga_stmt_t st[] = {{.name = "gw_otp_fail", .sql = sql_fail, .nparams = 2, .params = p},
                             {.sql = "COMMIT"}};
    gw_tx_exec(r, st, 2, on_failure_recorded);
}

/* The ticket a verify holds locked was consumed and its session opened. */
static void on_code_consumed(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    otp_ver_t *v = (otp_ver_t *)r->handler_state;
    if (err || n < 1 || PQntuples(res[0]) != 1) {
        log_warn("otp verify failed: %s", err ? err : "ticket gone");
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the code could not be checked");
        return;
    }
    char subject[SUBJECT_MAX + 1];
    snprintf(subject, sizeof subject, "%s", PQgetvalue(res[0], 0, 0));
    verified(r, NULL, v, subject);
}

/* A TOTP ticket's row: checks the code against the enrolment in C (the secret
 * never leaves this process in the clear) and consumes the ticket. */
static void verify_totp(gw_req_t *r, otp_ver_t *v, PGresult *row)
{
    uint8_t secret[OTP_SECRET_MAX_LEN];
    size_t len = 0;
    const char *subject = PQgetvalue(row, 0, 0);
    int64_t last = atoll(PQgetvalue(row, 0, 2)), matched = 0, now = clock_now_ms() / 1000;
    int drift = atoi(PQgetvalue(row, 0, 3));
    int rc = totp_open(r, subject, PQgetvalue(row, 0, 1), secret, &len) == 0
                 ? otp_totp_verify(secret, len, v->code, now, 1, last, drift, &matched)
                 : OTP_REFUSED;
    OPENSSL_cleanse(secret, sizeof secret);
    if (rc == OTP_REPLAYED)
        log_warn("a TOTP code was presented again for %s (refused)", subject);
    if (rc != 0) {
        record_failure(r, v);
        return;
    }
    char ms[24], ds[16];
    snprintf(ms, sizeof ms, "%lld", (long long)matched);
    snprintf(ds, sizeof ds, "%d", otp_totp_drift(NULL, now, matched));
    const char *p[] = {r->tenant, v->ticket_key, ms, ds, v->s.sid, v->s.refresh_hash};
    const pga_stmt_t st[] = {{.name = "gw_totp_consume", .sql = sql_totp_consume, .nparams = 6, .params = p}};
    gw_tx_exec(r, st, 1, on_code_consumed);
}

static void on_verify(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    otp_ver_t *v = (otp_ver_t *)r->handler_state;
    if (err || n < 3) {
        log_warn("otp verify failed: %s", err ? err : "?");
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the code could not be checked");
        return;
    }
    if (PQntuples(res[2]) == 1) { /* an emailed or texted code's ticket */
        if (!otp_mac_equal(PQgetvalue(res[2], 0, 1), v->mac)) {
            record_failure(r, v);
            return;
        }
        const char *p[] = {r->tenant, v->ticket_key, v->s.sid, v->s.refresh_hash};
        const pga_stmt_t st[] = {{.name = "gw_otp_consume", .sql = sql_code_consume, .nparams = 4, .params = p}};
        gw_tx_exec(r, st, 1, on_code_consumed);
        return;
    }
    if (PQntuples(res[1]) == 1) {
        verify_totp(r, v, res[1]);
        return;
    }
    record_failure(r, v);
}

static void mem_verify(gw_req_t *r, otp_ver_t *v)
{
    db_t *db = r->th->memdb;
    if (db_begin(db) != 0) {
        gw_problem(r, 503, "storage-unavailable", "the code could not be checked");
        return;
    }
    mauth_t *m = mem(db);
    int64_t now = clock_now_ms();
    mticket_t *t = NULL;
    for (size_t i = 0; i < m->n && !t; i++)
        if (!strcmp(m->t[i].tenant, r->tenant) && !strcmp(m->t[i].ticket, v->ticket))
            t = &m->t[i];
    mfail_t *f = t ? mem_fail(m, t->subject, false) : NULL;
    bool budget_left = !f || f->window_ms <= now - 3600000 || f->failures < SUBJECT_FAILURES_PER_HOUR;
    bool usable = t && !t->consumed && t->attempts < TICKET_TRIES && t->expires_ms > now && budget_left;
    bool match = usable && strcmp(t->channel, "totp") != 0 && otp_mac_equal(t->mac, v->mac);
    if (usable && strcmp(t->channel, "totp") == 0) {
        mtotp_t *x = mem_totp(m, r->tenant, t->subject, false);
        int64_t matched = 0;
        int rc = x && x->active ? otp_totp_verify(x->secret, x->len, v->code, now / 1000, 1, x->last_step, x->drift,
                                                  &matched)
                                : OTP_REFUSED;
        if (rc == OTP_REPLAYED)
            log_warn("a TOTP code was presented again for %s (refused)", t->subject);
        if (rc == 0) {
            x->last_step = matched;
            x->drift = otp_totp_drift(NULL, now / 1000, matched);
            match = true;
        }
    }
    if (match) {
        t->consumed = true;
        char subject[SUBJECT_MAX + 1];
        snprintf(subject, sizeof subject, "%s", t->subject);
        gw_session_mem_create(db, r->tenant, subject, &v->s);
        verified(r, db, v, subject);
        return;
    }
    bool limited = false;
    long retry = 0;
    if (t && !t->consumed) {
        t->attempts++;
        f = mem_fail(m, t->subject, true);
        if (f->window_ms <= now - 3600000) {
            f->window_ms = now;
            f->failures = 0;
        }
        f->failures++;
        limited = f->failures > SUBJECT_FAILURES_PER_HOUR;
        retry = (long)((f->window_ms + 3600000 - now + 999) / 1000);
    }
    if (db_commit(db) != 0) {
        gw_problem(r, 503, "storage-unavailable", "the code could not be checked");
        return;
    }
    if (limited)
        too_many(r, retry, "too many wrong codes for this subject; wait before trying again");
    else
        invalid_code(r);
}

void gw_otp_verify(gw_req_t *r)
{
    json_object *b = r->json;
    const char *ticket = json_object_is_type(b, json_type_object) ? json_get_str(b, "ticketId") : NULL;
    const char *code = json_object_is_type(b, json_type_object) ? json_get_str(b, "code") : NULL;
    if (!ticket || !code) {
        gw_problem(r, 400, "validation-error", "send {\"ticketId\": \"...\", \"code\": \"123456\"}");
        return;
    }
    if (!otp_ticket_id_valid(ticket) || strlen(code) != OTP_CODE_LEN || strspn(code, "0123456789") != OTP_CODE_LEN) {
        invalid_code(r); /* the same answer as any other wrong code */
        return;
    }
    otp_ver_t *v = xcalloc(1, sizeof *v);
    r->handler_state = v;
    r->handler_state_free = free;
    snprintf(v->ticket, sizeof v->ticket, "%s", ticket);
    digest_sha256_hex(v->ticket, v->ticket_key);
    snprintf(v->code, sizeof v->code, "%s", code);
    code_mac(r, v->ticket, code, v->mac);
    gw_session_secrets(&v->s);
    if (r->th->memdb) {
        mem_verify(r, v);
        return;
    }
    /* one round trip: the subject's lock, then the ticket locked, with the
     * TOTP enrolment behind it or the MAC of its emailed or texted code; a
     * second consumes it when the code is right */
    const char *p[] = {r->tenant, v->ticket_key};
    const pga_stmt_t st[] = {{.name = "gw_otp_subject_lock", .sql = sql_subject_lock, .nparams = 2, .params = p},
                             {.name = "gw_totp_ticket", .sql = sql_totp_ticket, .nparams = 2, .params = p},
                             {.name = "gw_otp_code_ticket", .sql = sql_code_ticket, .nparams = 2, .params = p}};
    gw_tx_exec(r, st, 3, on_verify);
}

/* ---- TOTP enrolment: POST …/auth/totp/enroll, …/auth/totp/activate, DELETE …/auth/totp ---- */

#define TOTP_ISSUER "ecom"
#define TOTP_URI_MAX 1024

typedef struct totp_st {
    char subject[SUBJECT_MAX + 1];
    uint8_t secret[OTP_SECRET_LEN];
    char b32[OTP_BASE32_LEN(OTP_SECRET_LEN) + 1];
    char sealed[SEALED_HEX_MAX];
    char code[OTP_CODE_LEN + 1];
} totp_st_t;

static void totp_st_free(void *p)
{
    OPENSSL_cleanse(p, sizeof(totp_st_t));
    free(p);
}

static bool session_or_reply(gw_req_t *r)
{
    if (r->principal.present && !r->principal.dev && r->principal.sid[0])
        return true;
    gw_add_header(r, "WWW-Authenticate", "Bearer");
    gw_problem(r, 401, "invalid-token", "a Bearer token of a session is required");
    return false;
}

/* Enrolling or removing a TOTP factor needs a session a code opened in the
 * last TOTP_REAUTH_S: a token stolen from an older session (kept alive by
 * its refresh token) cannot plant a factor of its own, which would outlive
 * every session. The session id is a UUIDv7, so it carries its birth. */
#define TOTP_REAUTH_S 600
static bool fresh_session_or_reply(gw_req_t *r)
{
    int64_t born = uuid_v7_ms(r->principal.sid);
    if (born >= 0 && clock_now_ms() - born <= TOTP_REAUTH_S * 1000)
        return true;
    gw_problem(r, 403, "reauthentication-required",
               "changing the TOTP enrolment needs a session opened by a code in the last 10 minutes: log in again");
    return false;
}

static totp_st_t *totp_state(gw_req_t *r)
{
    totp_st_t *st = xcalloc(1, sizeof *st);
    snprintf(st->subject, sizeof st->subject, "%s", r->principal.sub);
    r->handler_state = st;
    r->handler_state_free = totp_st_free;
    return st;
}

static void enrolled(gw_req_t *r, totp_st_t *st)
{
    char uri[TOTP_URI_MAX];
    if (otp_uri(uri, sizeof uri, TOTP_ISSUER, st->subject, st->b32, OTP_DEFAULT_DIGITS, OTP_DEFAULT_STEP_S) != 0) {
        gw_tx_abort(r);
        gw_problem(r, 500, NULL, "the enrolment URI could not be built");
        return;
    }
    json_object *body = json_object_new_object();
    json_object_object_add(body, "otpauthUri", json_object_new_string(uri));
    json_object_object_add(body, "secret", json_object_new_string(st->b32));
    json_object_object_add(body, "algorithm", json_object_new_string("SHA1"));
    json_object_object_add(body, "digits", json_object_new_int(OTP_DEFAULT_DIGITS));
    json_object_object_add(body, "period", json_object_new_int(OTP_DEFAULT_STEP_S));
    json_object_object_add(body, "state", json_object_new_string("pending"));
    gw_add_header(r, "Cache-Control", "no-store");
    gw_cmd_commit(r, 201, body);
}

static void already_enrolled(gw_req_t *r)
{
    gw_tx_abort(r);
    gw_problem(r, 409, "totp-already-enrolled", "an active TOTP enrolment exists; DELETE …/auth/totp first");
}

static void on_enroll(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    if (err || n < 1) {
        log_warn("totp enrolment failed: %s", err ? err : "?");
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the enrolment could not be stored");
        return;
    }
    if (PQntuples(res[0]) != 1) {
        already_enrolled(r);
        return;
    }
    enrolled(r, r->handler_state);
}

void gw_totp_enroll(gw_req_t *r)
{
    if (!session_or_reply(r) || !fresh_session_or_reply(r))
        return;
    totp_st_t *st = totp_state(r);
    if (otp_secret_new(st->secret, sizeof st->secret) != 0 ||
        otp_base32_encode(st->secret, sizeof st->secret, st->b32, sizeof st->b32) != 0 ||
        totp_seal(r, st->subject, st->secret, sizeof st->secret, st->sealed) != 0) {
        gw_problem(r, 500, NULL, "the secret could not be made");
        return;
    }
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be stored");
            return;
        }
        mtotp_t *x = mem_totp(mem(db), r->tenant, st->subject, true);
        if (x->active) {
            db_rollback(db);
            already_enrolled(r);
            return;
        }
        memcpy(x->secret, st->secret, sizeof st->secret);
        x->len = sizeof st->secret;
        x->last_step = OTP_NO_STEP;
        x->drift = 0;
        if (db_commit(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be stored");
            return;
        }
        enrolled(r, st);
        return;
    }
    const char *p[] = {r->tenant, st->subject, st->sealed};
    const pga_stmt_t stm[] = {
        {.name = "gw_totp_enroll",
         .sql = "INSERT INTO auth.totp AS x (tenant, subject, secret, state) VALUES ($1, $2, $3, 'pending')"
                " ON CONFLICT (tenant, subject) DO UPDATE SET secret = EXCLUDED.secret, last_step = -1, drift = 0,"
                " created_at = now() WHERE x.state = 'pending' RETURNING 1",
         .nparams = 3,
         .params = p}};
    gw_tx_exec(r, stm, 1, on_enroll);
}

static void activation_refused(gw_req_t *r)
{
    gw_tx_abort(r);
    gw_problem(r, 422, "invalid-code",
               "the code does not match the pending enrolment (enrol, add the secret to the authenticator, then send "
               "a current code)");
}

static void activated(gw_req_t *r)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "ok", json_object_new_boolean(1));
    json_object_object_add(body, "state", json_object_new_string("active"));
    gw_cmd_commit(r, 200, body);
}

static void on_activated(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    (void)res;
    if (err || n < 1) {
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the enrolment could not be activated");
        return;
    }
    activated(r);
}

static void on_pending(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    totp_st_t *st = r->handler_state;
    if (err || n < 1) {
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the enrolment could not be read");
        return;
    }
    if (PQntuples(res[0]) != 1) {
        activation_refused(r);
        return;
    }
    uint8_t secret[OTP_SECRET_MAX_LEN];
    size_t len = 0;
    int64_t matched = 0, now = clock_now_ms() / 1000;
    int rc = totp_open(r, st->subject, PQgetvalue(res[0], 0, 0), secret, &len) == 0
                 ? otp_totp_verify(secret, len, st->code, now, 1, OTP_NO_STEP, 0, &matched)
                 : OTP_REFUSED;
    OPENSSL_cleanse(secret, sizeof secret);
    if (rc != 0) {
        activation_refused(r);
        return;
    }
    char ms[24], ds[16];
    snprintf(ms, sizeof ms, "%lld", (long long)matched);
    snprintf(ds, sizeof ds, "%d", otp_totp_drift(NULL, now, matched));
    const char *p[] = {r->tenant, st->subject, ms, ds};
    const pga_stmt_t stm[] = {
        {.name = "gw_totp_activate",
         .sql = "UPDATE auth.totp SET state = 'active', last_step = $3, drift = $4 WHERE tenant = $1 AND subject = $2"
                " AND state = 'pending'",
         .nparams = 4,
         .params = p}};
    gw_tx_exec(r, stm, 1, on_activated);
}

void gw_totp_activate(gw_req_t *r)
{
    if (!session_or_reply(r))
        return;
    const char *code = json_object_is_type(r->json, json_type_object) ? json_get_str(r->json, "code") : NULL;
    if (!code || strlen(code) != OTP_CODE_LEN || strspn(code, "0123456789") != OTP_CODE_LEN) {
        gw_problem(r, 400, "validation-error", "send {\"code\": \"123456\"} from the authenticator");
        return;
    }
    totp_st_t *st = totp_state(r);
    snprintf(st->code, sizeof st->code, "%s", code);
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be read");
            return;
        }
        mtotp_t *x = mem_totp(mem(db), r->tenant, st->subject, false);
        int64_t matched = 0, now = clock_now_ms() / 1000;
        if (!x || x->active || otp_totp_verify(x->secret, x->len, st->code, now, 1, OTP_NO_STEP, 0, &matched) != 0) {
            db_rollback(db);
            activation_refused(r);
            return;
        }
        x->active = true;
        x->last_step = matched;
        x->drift = otp_totp_drift(NULL, now, matched);
        if (db_commit(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be activated");
            return;
        }
        activated(r);
        return;
    }
    const char *p[] = {r->tenant, st->subject};
    const pga_stmt_t stm[] = {{.name = "gw_totp_pending",
                               .sql = "SELECT secret FROM auth.totp WHERE tenant = $1 AND subject = $2"
                                      " AND state = 'pending' FOR UPDATE",
                               .nparams = 2,
                               .params = p}};
    gw_tx_exec(r, stm, 1, on_pending);
}

static void removed(gw_req_t *r, bool any)
{
    json_object *body = json_object_new_object();
    json_object_object_add(body, "removed", json_object_new_boolean(any));
    gw_cmd_commit(r, 200, body);
}

static void on_removed(gw_req_t *r, PGresult *const *res, int n, const char *err)
{
    if (err || n < 1) {
        gw_tx_abort(r);
        gw_problem(r, 503, "storage-unavailable", "the enrolment could not be removed");
        return;
    }
    removed(r, PQntuples(res[0]) > 0);
}

void gw_totp_remove(gw_req_t *r)
{
    if (!session_or_reply(r) || !fresh_session_or_reply(r))
        return;
    if (r->th->memdb) {
        db_t *db = r->th->memdb;
        if (db_begin(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be removed");
            return;
        }
        mauth_t *m = mem(db);
        char key[REQCTX_TENANT_MAX + SUBJECT_MAX + 2];
        int kl = snprintf(key, sizeof key, "%s%c%s", r->tenant, '\0', r->principal.sub);
        void *old = NULL;
        bool any = strmap_del(&m->totp, key, (size_t)kl, &old);
        if (old)
            OPENSSL_cleanse(old, sizeof(mtotp_t));
        free(old);
        if (db_commit(db) != 0) {
            gw_problem(r, 503, "storage-unavailable", "the enrolment could not be removed");
            return;
        }
        removed(r, any);
        return;
    }
    const char *p[] = {r->tenant, r->principal.sub};
    const pga_stmt_t stm[] = {{.name = "gw_totp_remove",
                               .sql = "DELETE FROM auth.totp WHERE tenant = $1 AND subject = $2 RETURNING 1",
                               .nparams = 2,
                               .params = p}};
    gw_tx_exec(r, stm, 1, on_removed);
}

/* ---- retention ---- */

/* Each by an index of auth/007-011; rows another gateway's cleanup holds
 * are left to it. */
static const char *const sql_auth_cleanup[] = {
    "DELETE FROM auth.otp_tickets WHERE ctid = ANY (ARRAY(SELECT ctid FROM auth.otp_tickets"
    " WHERE expires_at < now() - make_interval(secs => $1::double precision) LIMIT $2 FOR UPDATE SKIP LOCKED))",
    "DELETE FROM auth.otp_failures WHERE ctid = ANY (ARRAY(SELECT ctid FROM auth.otp_failures"
    " WHERE window_start < now() - make_interval(secs => $1::double precision) - interval '1 hour' LIMIT $2"
    " FOR UPDATE SKIP LOCKED))",
    /* a session's refresh tokens go with it (rotated ones included: they
     * only served to recognise a reuse while the session lived) */
    "WITH s AS (SELECT sid FROM auth.sessions WHERE expires_at < now() - make_interval(secs => $1::double precision)"
    " OR revoked_at < now() - make_interval(secs => $1::double precision)"
    " OR last_used_at < now() - " SESSION_IDLE_SQL " - make_interval(secs => $1::double precision)"
    " LIMIT $2 FOR UPDATE SKIP LOCKED),"
    " t AS (DELETE FROM auth.refresh_tokens WHERE sid IN (SELECT sid FROM s))"
    " DELETE FROM auth.sessions WHERE sid IN (SELECT sid FROM s)",
};

/* The memory store's: the same rows, in one transaction, counted as the
 * statements count them (a session's refresh tokens go with it uncounted). */
static int auth_cleanup_mem(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    if (db_begin(db) != 0)
        return -1;
    mauth_t *m = mem(db);
    int64_t cut = clock_now_ms() - retain_s * 1000;
    size_t k = 0, gone = 0;
    for (size_t i = 0; i < m->n; i++) {
        if (m->t[i].expires_ms < cut && gone < limit) {
            gone++;
            continue;
        }
        m->t[k++] = m->t[i];
    }
    m->n = k;
    *deleted += gone;
    const char *key;
    size_t kl;
    void *v;
    gone = 0;
    for (size_t i = 0; gone < limit && strmap_next(&m->fails, &i, &key, &kl, &v);) {
        mfail_t *f = v;
        if (f->window_ms < cut - 3600000 && strmap_del(&m->fails, key, kl, NULL)) {
            free(f);
            gone++;
        }
    }
    *deleted += gone + gw_sessions_cleanup_mem(db, retain_s, limit);
    return db_commit(db);
}

int gw_auth_cleanup(db_t *db, int64_t retain_s, size_t limit, size_t *deleted)
{
    *deleted = 0;
    if (db->kind == DB_MEMORY)
        return auth_cleanup_mem(db, retain_s, limit, deleted);
    for (size_t i = 0; i < sizeof sql_auth_cleanup / sizeof *sql_auth_cleanup; i++) {
        size_t n = 0;
        if (pg_delete_older(db_pg(db), sql_auth_cleanup[i], retain_s, limit, &n) != 0)
            return -1;
        *deleted += n;
    }
    return 0;
}
