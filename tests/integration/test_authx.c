/* tests/integration/test_authx.c: AuthX over real HTTP, on PostgreSQL, one
 * test per group of spec IDs (authx.md §3): OTP login O1–O10, tokens J1 and
 * the revoked-session check, refresh and logout R1–R5, RBAC P1–P4, ReBAC
 * X1–X6, ABAC A1–A2, tenancy T1–T3. (The token attack cases of J3–J4, alg
 * none, foreign keys, RFC 7515 A.1, expiry and claims, are in test_gateway.)
 *
 * Two production gateways (A and B) run on one database with a bootstrap file
 * of roles; codes are read from the outbox rows the gateways commit (no
 * drainer runs), and the tests move stored times back where a rule needs time
 * to pass (the 30 s between code requests, a session's idle limit). */
#include "core/alloc.h"
#include "core/clock.h"
#include "core/db.h"
#include "core/digest.h"
#include "core/log.h"
#include "core/pg.h"
#include "core/uuid.h"
#include "http-gateway/authx/otp.h"
#include "http-gateway/jwt.h"
#include "http-gateway/routes_auth.h"
#include "tests/httptest.h"
#include "tests/testlib.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SECRET40 "0123456789abcdef0123456789abcdef-test-40"
#define B "/api/v1/analytics"
#define EVENTS B "/events"
#define ADMIN B "/admin/auth"

static proc_t *ga, *gb; /* production gateways on the shared database */
static PGconn *db;
static const char *db_url; /* the suite's database */
static jwtk_t keys;
static char boot_path[64];

/* ================= helpers ================= */

static int port_a(void)
{
    return ga->port;
}

static char *hdrs(const char *tenant, const char *tok)
{
    return xasprintf("%s%s%s%s%s", tenant ? "x-tenant-id: " : "", tenant ? tenant : "", tenant ? "\r\n" : "",
                     tok ? "Authorization: Bearer " : "", tok ? tok : "");
}

/* hdrs() ends without CRLF when a token is given: add it */
static char *hdrs_crlf(const char *tenant, const char *tok)
{
    char *h = hdrs(tenant, tok);
    if (!tok)
        return h;
    char *x = xasprintf("%s\r\n", h);
    free(h);
    return x;
}

static int post(int port, const char *path, const char *tenant, const char *tok, const char *json, hresp_t *r)
{
    char *h = hdrs_crlf(tenant, tok);
    int rc = hpost(port, path, h, json, r);
    free(h);
    return rc;
}

static int get(int port, const char *path, const char *tenant, const char *tok, hresp_t *r)
{
    char *h = hdrs_crlf(tenant, tok);
    int rc = hget(port, path, h, r);
    free(h);
    return rc;
}

static int del(int port, const char *path, const char *tenant, const char *tok, hresp_t *r)
{
    char *h = hdrs_crlf(tenant, tok);
    int rc = hreq(port, "DELETE", path, h, NULL, 0, r);
    free(h);
    return rc;
}

static char *token(const char *sub, const char *tid)
{
    return test_jwt_mint(&keys, sub, tid, NULL, clock_now_ms() / 1000, 600);
}

static long long q1(const char *sql, const char *a, const char *b)
{
    const char *p[] = {a, b};
    PGresult *r = pg_query(db, sql, b ? 2 : a ? 1 : 0, p);
    long long v = r && PQntuples(r) && !PQgetisnull(r, 0, 0) ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return v;
}

static char *qs(const char *sql, const char *a)
{
    const char *p[] = {a};
    PGresult *r = pg_query(db, sql, 1, p);
    char *v = r && PQntuples(r) && !PQgetisnull(r, 0, 0) ? xstrdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return v;
}

static void sql(const char *text, const char *a, const char *b)
{
    const char *p[] = {a, b};
    PGresult *r = pg_query(db, text, b ? 2 : a ? 1 : 0, p);
    CU_ASSERT_PTR_NOT_NULL(r);
    PQclear(r);
}

/* What auth.otp_tickets keeps of a ticket id: its SHA-256. */
#define TICKET_KEY "encode(sha256(convert_to($1, 'UTF8')), 'hex')"

/* The code the gateway committed to the outbox for ticket (NULL when none):
 * the latest one for the ticket's subject and tenant (the event carries no
 * ticket id). */
static char *code_of(const char *ticket)
{
    return qs("SELECT o.payload::jsonb->>'code' FROM bus.outbox o JOIN auth.otp_tickets t"
              " ON t.ticket_id = " TICKET_KEY " AND o.tenant = t.tenant"
              " AND o.payload::jsonb->>'subject' = t.subject"
              " WHERE o.type = 'auth.otp.requested' ORDER BY o.pos DESC LIMIT 1",
              ticket);
}

/* Lets the next code request for subject through the 30 s and 15 min limits. */
/* The subject's code requests (in every tenant: one budget per subject) made old. */
static void age_requests(const char *tenant, const char *subject)
{
    (void)tenant;
    sql("UPDATE auth.otp_tickets SET created_at = created_at - interval '16 minutes' WHERE subject = $1", subject,
        NULL);
}

static bool otp_request(int port, const char *tenant, const char *subject, const char *channel, char ticket[64])
{
    char body[512];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"%s\"}", subject, channel);
    hresp_t r;
    CU_ASSERT_EQUAL(post(port, B "/auth/otp/request", tenant, NULL, body, &r), 0);
    bool ok = expect_status(&r, 200, "otp request");
    jstr(&r, "ticketId", ticket, 64);
    hfree(&r);
    return ok && strlen(ticket) == OTP_TICKET_ID_LEN;
}

static int otp_verify(int port, const char *tenant, const char *ticket, const char *code, hresp_t *r)
{
    char body[256];
    snprintf(body, sizeof body, "{\"ticketId\":\"%s\",\"code\":\"%s\"}", ticket, code);
    return post(port, B "/auth/otp/verify", tenant, NULL, body, r);
}

typedef struct tokens {
    char access[2048], refresh[128], sid[64];
} tokens_t;

static bool tokens_of(const hresp_t *r, tokens_t *t)
{
    jstr(r, "accessToken", t->access, sizeof t->access);
    jstr(r, "refreshToken", t->refresh, sizeof t->refresh);
    jstr(r, "sessionId", t->sid, sizeof t->sid);
    return r->status == 200 && t->access[0] && t->refresh[0] && t->sid[0];
}

/* A full email login of subject in tenant on gateway A. */
static bool login(const char *tenant, const char *subject, tokens_t *t)
{
    char ticket[64];
    age_requests(tenant, subject);
    if (!otp_request(port_a(), tenant, subject, "email", ticket))
        return false;
    char *code = code_of(ticket);
    CU_ASSERT_PTR_NOT_NULL_FATAL(code);
    hresp_t r;
    otp_verify(port_a(), tenant, ticket, code, &r);
    free(code);
    bool ok = expect_status(&r, 200, "otp verify") && tokens_of(&r, t);
    hfree(&r);
    return ok;
}

static int refresh(int port, const char *tenant, const char *rt, tokens_t *out)
{
    char body[256];
    snprintf(body, sizeof body, "{\"refreshToken\":\"%s\"}", rt);
    hresp_t r;
    post(port, B "/auth/refresh", tenant, NULL, body, &r);
    int status = r.status;
    if (out)
        tokens_of(&r, out);
    hfree(&r);
    return status;
}

static int status_of(int rc, hresp_t *r)
{
    int s = rc == 0 ? r->status : -1;
    hfree(r);
    return s;
}

static int get_status(int port, const char *path, const char *tenant, const char *tok)
{
    hresp_t r;
    return status_of(get(port, path, tenant, tok, &r), &r);
}

/* Polls path until it answers want or ms pass; the last status. */
static int get_until(int port, const char *path, const char *tenant, const char *tok, int want, int ms)
{
    int64_t end = clock_mono_ms() + ms;
    int s;
    while ((s = get_status(port, path, tenant, tok)) != want && clock_mono_ms() < end)
        clock_sleep_ms(50);
    return s;
}

/* A JSON part of a JWT (0 header, 1 payload), owned. */
static json_object *jwt_part(const char *tok, int part)
{
    const char *s = tok;
    for (int i = 0; i < part; i++)
        s = strchr(s, '.') + 1;
    size_t n = strcspn(s, ".");
    char *b64 = xcalloc(1, n + 4);
    for (size_t i = 0; i < n; i++)
        b64[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (n % 4)
        b64[n++] = '=';
    unsigned char *out = xcalloc(1, n);
    int len = EVP_DecodeBlock(out, (unsigned char *)b64, (int)n);
    json_object *o = len > 0 ? json_tokener_parse((char *)out) : NULL;
    free(b64);
    free(out);
    return o;
}

/* ================= O: OTP ================= */

static void test_otp_login(void)
{
    char *subject = unique("alice");
    char ticket[64];
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", subject, "email", ticket));
    char *code = code_of(ticket);
    CU_ASSERT_PTR_NOT_NULL_FATAL(code);
    CU_ASSERT_EQUAL(strlen(code), 6);
    CU_ASSERT_EQUAL(strspn(code, "0123456789"), 6);
    /* O9: only a MAC of the code is stored */
    char *mac = qs("SELECT code_mac FROM auth.otp_tickets WHERE ticket_id = " TICKET_KEY, ticket);
    CU_ASSERT_TRUE(mac && strlen(mac) == 64 && !strstr(mac, code));
    free(mac);
    /* and the ticket id nowhere: the table keeps its hash, the event that
     * carries the code to the notification service leaves it out */
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.otp_tickets WHERE ticket_id = $1", ticket, NULL), 0);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM bus.outbox WHERE strpos(payload, $1) > 0", ticket, NULL), 0);
    /* O4: wrong, unknown and other-tenant tickets get one identical answer */
    char wrong[12];
    snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 1) % 1000000);
    hresp_t r1, r2, r3;
    otp_verify(port_a(), "tenantA", ticket, wrong, &r1);
    char unknown[OTP_TICKET_ID_LEN + 1];
    otp_ticket_id(unknown);
    otp_verify(port_a(), "tenantA", unknown, code, &r2);
    otp_verify(port_a(), "tenantB", ticket, code, &r3);
    const hresp_t *rs[] = {&r1, &r2, &r3};
    char d0[256], d[256];
    jstr(&r1, "detail", d0, sizeof d0);
    for (int i = 0; i < 3; i++) {
        check_problem(rs[i], 401, "invalid-code", NULL, "O4 wrong/unknown/other tenant");
        jstr(rs[i], "detail", d, sizeof d);
        CU_ASSERT_STRING_EQUAL(d, d0);
    }
    hfree(&r1);
    hfree(&r2);
    hfree(&r3);
    /* O3: the right code once */
    hresp_t r;
    otp_verify(port_a(), "tenantA", ticket, code, &r);
    tokens_t t;
    CU_ASSERT_TRUE(expect_status(&r, 200, "O3 verify") && tokens_of(&r, &t));
    json_object *o = jparse(&r), *v;
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "ok", &v) && json_object_get_boolean(v));
    json_object_put(o);
    hfree(&r);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, code, &r), &r), 401);
    /* J1: the access token's claims */
    json_object *h = jwt_part(t.access, 0), *p = jwt_part(t.access, 1);
    CU_ASSERT_TRUE(h && json_object_object_get_ex(h, "kid", &v) && json_object_get_string_len(v) > 0);
    const char *claims[] = {"iss", "aud", "sub", "tid", "sid", "jti", "iat", "nbf", "exp", "token_use"};
    for (size_t i = 0; p && i < sizeof claims / sizeof claims[0]; i++)
        CU_ASSERT_TRUE(json_object_object_get_ex(p, claims[i], NULL));
    CU_ASSERT_TRUE(p && json_object_object_get_ex(p, "sub", &v) && !strcmp(json_object_get_string(v), subject));
    CU_ASSERT_TRUE(p && json_object_object_get_ex(p, "tid", &v) && !strcmp(json_object_get_string(v), "tenantA"));
    CU_ASSERT_TRUE(p && json_object_object_get_ex(p, "sid", &v) && !strcmp(json_object_get_string(v), t.sid));
    CU_ASSERT_TRUE(p && json_object_object_get_ex(p, "token_use", &v) &&
                   !strcmp(json_object_get_string(v), "access"));
    json_object *iat, *exp;
    CU_ASSERT_TRUE(p && json_object_object_get_ex(p, "iat", &iat) && json_object_object_get_ex(p, "exp", &exp) &&
                   json_object_get_int64(exp) - json_object_get_int64(iat) >= 300 &&
                   json_object_get_int64(exp) - json_object_get_int64(iat) <= 900);
    json_object_put(h);
    json_object_put(p);
    /* the token works, in its tenant */
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, t.access), 200);
    /* O2: an unknown subject, and TOTP without an enrolment: the same answer, nothing sent */
    char *ghost = unique("nobody");
    char t2[64];
    CU_ASSERT_TRUE(otp_request(port_a(), "tenantA", ghost, "email", t2));
    char *totp_subject = unique("no-totp");
    CU_ASSERT_TRUE(otp_request(port_a(), "tenantA", totp_subject, "totp", t2));
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM bus.outbox WHERE payload::jsonb->>'subject' = $1", totp_subject, NULL), 0);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM bus.outbox WHERE payload::jsonb->>'subject' = $1", subject, NULL), 1);
    free(ghost);
    free(totp_subject);
    free(code);
    free(subject);
}

static void test_otp_limits(void)
{
    hresp_t r;
    char ticket[64], t2[64];
    /* O5: five wrong codes burn the ticket */
    char *s2 = unique("bob");
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s2, "email", ticket));
    char *code = code_of(ticket);
    char wrong[12];
    snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 7) % 1000000);
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, wrong, &r), &r), 401);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, code, &r), &r), 401);
    free(code);
    /* O8 request limit, then O6: a new request voids the previous ticket */
    char *s3 = unique("carol");
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s3, "email", ticket));
    char *c1 = code_of(ticket);
    post(port_a(), B "/auth/otp/request", "tenantA", NULL, "{\"subject\":\"x\",\"channel\":\"email\"}", &r);
    hfree(&r);
    char body[256];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", s3);
    post(port_a(), B "/auth/otp/request", "tenantA", NULL, body, &r);
    char ra[16];
    CU_ASSERT_EQUAL(r.status, 429);
    CU_ASSERT_TRUE(hheader(&r, "Retry-After", ra, sizeof ra) && atoi(ra) >= 1 && atoi(ra) <= 30);
    hfree(&r);
    age_requests("tenantA", s3);
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s3, "email", t2));
    char *c2 = code_of(t2);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, c1, &r), &r), 401);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", t2, c2, &r), &r), 200);
    free(c1);
    free(c2);
    /* an expired ticket */
    char *s5 = unique("dave");
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s5, "email", ticket));
    code = code_of(ticket);
    sql("UPDATE auth.otp_tickets SET expires_at = now() - interval '1 second' WHERE ticket_id = " TICKET_KEY, ticket,
        NULL);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, code, &r), &r), 401);
    free(code);
    /* O8: more than 10 failures an hour across tickets: 429, even for the right code */
    char *s4 = unique("mallory");
    int statuses[11], k = 0;
    for (int t = 0; t < 3; t++) {
        age_requests("tenantA", s4);
        CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s4, "email", ticket));
        code = code_of(ticket);
        snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 3) % 1000000);
        for (int i = 0; i < 5 && k < 11; i++)
            statuses[k++] = status_of(otp_verify(port_a(), "tenantA", ticket, wrong, &r), &r);
        if (k == 11)
            break;
        free(code);
    }
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(statuses[i], 401);
    CU_ASSERT_EQUAL(statuses[10], 429);
    otp_verify(port_a(), "tenantA", ticket, code, &r);
    CU_ASSERT_EQUAL(r.status, 429);
    CU_ASSERT_TRUE(hheader(&r, "Retry-After", ra, sizeof ra) && atoi(ra) >= 1 && atoi(ra) <= 3600);
    hfree(&r);
    free(code);
    free(s2);
    free(s3);
    free(s4);
    free(s5);
}

/* O8: the 10 wrong codes an hour are the subject's, whatever the tenant a
 * request names (a token of one tenant acts in another where its subject has
 * a role binding, so a budget per tenant multiplied with made-up tenants). */
static void test_otp_budget_across_tenants(void)
{
    char *s = unique("trudy");
    const char *tenants[] = {"tenantA", "tenantB", "madeup1", "madeup2"};
    int statuses[11], k = 0;
    hresp_t r;
    for (int t = 0; t < 4 && k < 11; t++) {
        char ticket[64], wrong[12];
        age_requests(tenants[t], s); /* the request budget is the subject's too (below) */
        CU_ASSERT_TRUE_FATAL(otp_request(port_a(), tenants[t], s, "email", ticket));
        char *code = code_of(ticket);
        CU_ASSERT_PTR_NOT_NULL_FATAL(code);
        snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 3) % 1000000);
        for (int i = 0; i < 3 && k < 11; i++)
            statuses[k++] = status_of(otp_verify(port_a(), tenants[t], ticket, wrong, &r), &r);
        free(code);
    }
    CU_ASSERT_EQUAL_FATAL(k, 11);
    for (int i = 0; i < 10; i++)
        CU_ASSERT_EQUAL(statuses[i], 401);
    CU_ASSERT_EQUAL(statuses[10], 429);
    /* and a fresh ticket in yet another tenant, with the right code: still 429 */
    char ticket[64];
    age_requests("madeup3", s);
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "madeup3", s, "email", ticket));
    char *code = code_of(ticket);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "madeup3", ticket, code, &r), &r), 429);
    free(code);
    free(s);
}

/* O9: code requests are counted per subject in every tenant: naming another
 * (made-up) tenant does not buy another "one per 30 s" for the same inbox. */
static void test_otp_requests_across_tenants(void)
{
    char *s = unique("rita"), ticket[64];
    hresp_t r;
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s, "email", ticket));
    char body[256];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", s);
    post(port_a(), B "/auth/otp/request", "madeup9", NULL, body, &r);
    check_problem(&r, 429, "rate-limited", NULL, "O9 another tenant, same subject");
    hfree(&r);
    /* a TOTP request sends nothing and is not held to that budget: someone
     * else's requests cannot keep the subject from its authenticator */
    char totp_ticket[64];
    CU_ASSERT_TRUE(otp_request(port_a(), "tenantA", s, "totp", totp_ticket));
    /* a subject longer than a token's sub holds is refused, not cut */
    char longer[160];
    memset(longer, 'x', 129);
    memcpy(longer + 129, "@example.com", 13);
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", longer);
    post(port_a(), B "/auth/otp/request", "tenantA", NULL, body, &r);
    check_problem(&r, 400, "validation-error", NULL, "O9 subject of 141 characters");
    hfree(&r);
    free(s);
}

typedef struct guess {
    const char *tenant, *ticket;
    char code[12];
    pthread_t th;
    int status;
} guess_t;

static void *guess_run(void *arg)
{
    guess_t *g = arg;
    hresp_t r;
    g->status = status_of(otp_verify(port_a(), g->tenant, g->ticket, g->code, &r), &r);
    return NULL;
}

/* Verifies of one subject waiting on its lock (the gateway's transaction-
 * scoped advisory lock), up to n, for at most 10 s. */
static long long verify_waiters(long long n)
{
    long long w = -1;
    for (int i = 0; i < 200 && w < n; i++) {
        w = q1("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1162104658"
               " AND NOT granted",
               NULL, NULL);
        if (w < n)
            clock_sleep_ms(50);
    }
    return w;
}

/* O5 under concurrency: guesses sent together are checked one after the
 * other, each against the counts the ones before it left. Four wrong codes,
 * then a fifth and the right one sent at once while the subject's lock is
 * held here: they queue in that order, so the fifth burns the ticket and the
 * right code after it is refused. (Without the lock, both were checked
 * against 4 attempts and the right code got a session.) */
static void test_otp_guesses_take_turns(void)
{
    char *s = unique("eve");
    char ticket[64], wrong[12];
    hresp_t r;
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s, "email", ticket));
    char *code = code_of(ticket);
    CU_ASSERT_PTR_NOT_NULL_FATAL(code);
    snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 11) % 1000000);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, wrong, &r), &r), 401);
    char *err = NULL;
    PGconn *holder = pg_connect(db_url, "test-authx-holder", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(holder);
    const char *p[] = {s};
    PGresult *lk = pg_query(holder, "SELECT pg_advisory_lock(1162104658, hashtext($1))", 1, p);
    CU_ASSERT_PTR_NOT_NULL(lk);
    PQclear(lk);
    guess_t g[2] = {{.tenant = "tenantA", .ticket = ticket}, {.tenant = "tenantA", .ticket = ticket}};
    snprintf(g[0].code, sizeof g[0].code, "%s", wrong);
    snprintf(g[1].code, sizeof g[1].code, "%s", code);
    pthread_create(&g[0].th, NULL, guess_run, &g[0]);
    CU_ASSERT_EQUAL(verify_waiters(1), 1);
    pthread_create(&g[1].th, NULL, guess_run, &g[1]);
    CU_ASSERT_EQUAL(verify_waiters(2), 2);
    PGresult *un = pg_query(holder, "SELECT pg_advisory_unlock(1162104658, hashtext($1))", 1, p);
    PQclear(un);
    pthread_join(g[0].th, NULL);
    pthread_join(g[1].th, NULL);
    CU_ASSERT_EQUAL(g[0].status, 401);
    CU_ASSERT_EQUAL(g[1].status, 401);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.sessions WHERE subject = $1", s, NULL), 0);
    CU_ASSERT_EQUAL(q1("SELECT attempts FROM auth.otp_tickets WHERE ticket_id = " TICKET_KEY, ticket, NULL), 6);
    PQfinish(holder);
    free(code);
    free(s);
}

/* O8: twenty code requests for one subject at once: one ticket, the others
 * refused by the 30 s rule (each was checked against the tickets before it) */
/* Twenty POSTs of body to path in tenantA at once: one answers won, the
 * other nineteen lost. */
static void twenty_at_once(const char *path, const char *body, int won, int lost)
{
    job_t *jobs =
        run_concurrent(20, port_a(), "POST", path, "Content-Type: application/json\r\nx-tenant-id: tenantA\r\n", body);
    int w = 0, l = 0;
    for (int i = 0; i < 20; i++) {
        w += jobs[i].resp.status == won;
        l += jobs[i].resp.status == lost;
    }
    CU_ASSERT_EQUAL(w, 1);
    CU_ASSERT_EQUAL(l, 19);
    free_jobs(jobs, 20);
}

static void test_otp_requests_take_turns(void)
{
    char *s = unique("rush");
    char body[256];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"channel\":\"email\"}", s);
    twenty_at_once(B "/auth/otp/request", body, 200, 429);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.otp_tickets WHERE subject = $1", s, NULL), 1);
    free(s);
}

/* O7: twenty verifies of the right code at once: exactly one session */
static void test_otp_race(void)
{
    char *s = unique("race");
    char ticket[64];
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s, "email", ticket));
    char *code = code_of(ticket);
    char body[256];
    snprintf(body, sizeof body, "{\"ticketId\":\"%s\",\"code\":\"%s\"}", ticket, code);
    twenty_at_once(B "/auth/otp/verify", body, 200, 401);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.sessions WHERE subject = $1", s, NULL), 1);
    free(code);
    free(s);
}

/* O10: TOTP enrolment, the window, the replay rule */
static void totp_code(const uint8_t *key, size_t n, int64_t step, char out[OTP_CODE_BUF])
{
    CU_ASSERT_EQUAL(otp_totp(key, n, step * 30, 30, 0, 6, OTP_SHA1, out), 0);
}

/* A session token for sub whose session was opened ago_s seconds ago (its id
 * is a UUIDv7 of that time). */
static char *session_token(const char *sub, const char *tid, int64_t ago_s)
{
    principal_t p = {0};
    snprintf(p.sub, sizeof p.sub, "%s", sub);
    snprintf(p.tid, sizeof p.tid, "%s", tid);
    int64_t ms = clock_now_ms() - ago_s * 1000;
    char rnd[21];
    random_hex(rnd, 10);
    snprintf(p.sid, sizeof p.sid, "%08llx-%04llx-7%.3s-8%.3s-%.12s", (unsigned long long)(ms >> 16),
             (unsigned long long)(ms & 0xffff), rnd, rnd + 3, rnd + 6);
    char *tok = NULL;
    CU_ASSERT_EQUAL(jwtk_sign(&keys, &p, clock_now_ms() / 1000, 600, &tok), 0);
    return tok;
}

static void test_totp(void)
{
    char *s = unique("tina");
    tokens_t t;
    hresp_t r;
    /* a session older than 10 minutes may neither enrol nor remove a factor */
    char *old = session_token(s, "tenantA", 11 * 60), *young = session_token(s, "tenantA", 60);
    CU_ASSERT_EQUAL(post(port_a(), B "/auth/totp/enroll", NULL, old, "{}", &r), 0);
    check_problem(&r, 403, "reauthentication-required", NULL, "enrol from an old session");
    hfree(&r);
    CU_ASSERT_EQUAL(del(port_a(), B "/auth/totp", NULL, old, &r), 0);
    check_problem(&r, 403, "reauthentication-required", NULL, "remove from an old session");
    hfree(&r);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.totp WHERE subject = $1", s, NULL), 0);
    /* a young one may (the pending enrolment is replaced by the login's below) */
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/totp/enroll", NULL, young, "{}", &r), &r), 201);
    free(old);
    free(young);
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &t));
    post(port_a(), B "/auth/totp/enroll", NULL, t.access, "{}", &r);
    CU_ASSERT_TRUE_FATAL(expect_status(&r, 201, "enroll"));
    char uri[512], b32[128];
    jstr(&r, "otpauthUri", uri, sizeof uri);
    jstr(&r, "secret", b32, sizeof b32);
    hfree(&r);
    CU_ASSERT_EQUAL(strncmp(uri, "otpauth://totp/", 15), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(uri, b32));
    uint8_t key[64];
    size_t kn = 0;
    CU_ASSERT_EQUAL_FATAL(otp_base32_decode(b32, key, sizeof key, &kn), 0);
    CU_ASSERT_TRUE(kn >= 20);
    /* the secret is stored sealed */
    char *stored = qs("SELECT secret FROM auth.totp WHERE subject = $1", s);
    char hex[2 * 64 + 1];
    for (size_t i = 0; i < kn; i++)
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    CU_ASSERT_TRUE(stored && !strstr(stored, b32) && !strstr(stored, hex));
    free(stored);
    int64_t step = clock_now_ms() / 1000 / 30;
    char code[OTP_CODE_BUF], body[128];
    /* a wrong code does not activate; a current one does */
    totp_code(key, kn, step + 5, code);
    snprintf(body, sizeof body, "{\"code\":\"%s\"}", code);
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/totp/activate", NULL, t.access, body, &r), &r), 422);
    totp_code(key, kn, step, code);
    snprintf(body, sizeof body, "{\"code\":\"%s\"}", code);
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/totp/activate", NULL, t.access, body, &r), &r), 200);
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/totp/enroll", NULL, t.access, "{}", &r), &r), 409);
    /* login with the authenticator: the activation's step is spent (replay) */
    char ticket[64];
    age_requests("tenantA", s);
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s, "totp", ticket));
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, code, &r), &r), 401);
    /* two steps ahead is outside the window; one ahead is inside */
    char ahead2[OTP_CODE_BUF], ahead1[OTP_CODE_BUF];
    totp_code(key, kn, step + 3, ahead2);
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, ahead2, &r), &r), 401);
    totp_code(key, kn, step + 1, ahead1);
    otp_verify(port_a(), "tenantA", ticket, ahead1, &r);
    tokens_t t2;
    CU_ASSERT_TRUE(expect_status(&r, 200, "totp login") && tokens_of(&r, &t2));
    hfree(&r);
    /* the same code on a new ticket: a replay */
    age_requests("tenantA", s);
    CU_ASSERT_TRUE_FATAL(otp_request(port_a(), "tenantA", s, "totp", ticket));
    CU_ASSERT_EQUAL(status_of(otp_verify(port_a(), "tenantA", ticket, ahead1, &r), &r), 401);
    CU_ASSERT_EQUAL(q1("SELECT last_step FROM auth.totp WHERE subject = $1", s, NULL), step + 1);
    /* removal: the enrolment is gone */
    CU_ASSERT_EQUAL(status_of(del(port_a(), B "/auth/totp", NULL, t.access, &r), &r), 200);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.totp WHERE subject = $1", s, NULL), 0);
    free(s);
}

/* ================= R: refresh, logout, sessions ================= */

static void test_refresh_rotation(void)
{
    char *s = unique("rita");
    tokens_t t0, t1, t2;
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &t0));
    /* R1: stored as a hash */
    char h[65];
    digest_sha256_hex(t0.refresh, h);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.refresh_tokens WHERE hash = $1 AND sid = $2", h, t0.sid), 1);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM auth.refresh_tokens WHERE hash = $1", t0.refresh, NULL), 0);
    CU_ASSERT_EQUAL(strlen(t0.refresh), 43);
    /* rotation: a new pair in the same session; the other tenant cannot use it */
    CU_ASSERT_EQUAL(refresh(port_a(), "tenantB", t0.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, t0.refresh, &t1), 200);
    CU_ASSERT_STRING_EQUAL(t1.sid, t0.sid);
    CU_ASSERT_STRING_NOT_EQUAL(t1.refresh, t0.refresh);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, t1.access), 200);
    /* R2: the rotated token again: refused, and the family is revoked */
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, t0.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, t1.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, t1.access), 401);
    /* R4: the other gateway refuses the session's access tokens within 1 s */
    clock_sleep_ms(1000);
    CU_ASSERT_EQUAL(get_status(gb->port, B "/me", NULL, t1.access), 401);
    CU_ASSERT_EQUAL(get_status(gb->port, B "/me", NULL, t0.access), 401);
    /* R3: ten refreshes of one token at once: one success */
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &t2));
    char body[256];
    snprintf(body, sizeof body, "{\"refreshToken\":\"%s\"}", t2.refresh);
    job_t *jobs = run_concurrent(10, port_a(), "POST", B "/auth/refresh", "Content-Type: application/json\r\n", body);
    int ok = 0, refused = 0;
    for (int i = 0; i < 10; i++) {
        ok += jobs[i].resp.status == 200;
        refused += jobs[i].resp.status == 401;
    }
    CU_ASSERT_EQUAL(ok, 1);
    CU_ASSERT_EQUAL(refused, 9);
    free_jobs(jobs, 10);
    /* R2 with a grace period (gateway B: 2 s): a rotated token soon after its
     * rotation is refused but the session lives; later it revokes the family */
    tokens_t g0, g1, g2;
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &g0));
    CU_ASSERT_EQUAL(refresh(gb->port, NULL, g0.refresh, &g1), 200);
    CU_ASSERT_EQUAL(refresh(gb->port, NULL, g0.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(gb->port, NULL, g1.refresh, &g2), 200);
    clock_sleep_ms(2100);
    CU_ASSERT_EQUAL(refresh(gb->port, NULL, g1.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(gb->port, NULL, g2.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(gb->port, B "/me", NULL, g2.access), 401);
    /* R5: idle and absolute lifetimes */
    tokens_t t3, t4;
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &t3));
    sql("UPDATE auth.sessions SET last_used_at = now() - interval '8 days' WHERE sid = $1", t3.sid, NULL);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, t3.refresh, NULL), 401);
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &t4));
    sql("UPDATE auth.sessions SET expires_at = now() - interval '1 second' WHERE sid = $1", t4.sid, NULL);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, t4.refresh, NULL), 401);
    free(s);
}

static int count_sessions(const char *tok)
{
    hresp_t r;
    get(port_a(), B "/auth/sessions", NULL, tok, &r);
    json_object *o = jparse(&r), *v;
    int n = o && json_object_object_get_ex(o, "count", &v) ? json_object_get_int(v) : -1;
    json_object_put(o);
    hfree(&r);
    return n;
}

static void test_logout_and_sessions(void)
{
    char *s = unique("lena");
    tokens_t a, b, c;
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &a));
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &b));
    CU_ASSERT_EQUAL(count_sessions(a.access), 2);
    /* revoke another of my sessions */
    hresp_t r;
    char path[160];
    snprintf(path, sizeof path, B "/auth/sessions/%s", b.sid);
    CU_ASSERT_EQUAL(status_of(del(port_a(), path, NULL, a.access, &r), &r), 200);
    CU_ASSERT_EQUAL(status_of(del(port_a(), path, NULL, a.access, &r), &r), 404);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, b.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, b.access), 401);
    CU_ASSERT_EQUAL(count_sessions(a.access), 1);
    /* someone else's session is not mine to revoke */
    char *other = unique("otto");
    tokens_t o;
    CU_ASSERT_TRUE_FATAL(login("tenantA", other, &o));
    snprintf(path, sizeof path, B "/auth/sessions/%s", o.sid);
    CU_ASSERT_EQUAL(status_of(del(port_a(), path, NULL, a.access, &r), &r), 404);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, o.access), 200);
    /* a sid that is no UUID names no session, bytes PostgreSQL would refuse
     * too (they were its 503, counted against the routes' breaker) */
    CU_ASSERT_EQUAL(status_of(del(port_a(), B "/auth/sessions/%FF%FE", NULL, a.access, &r), &r), 404);
    CU_ASSERT_EQUAL(status_of(del(port_a(), B "/auth/sessions/not-a-sid", NULL, a.access, &r), &r), 404);
    /* logout */
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/logout", NULL, a.access, "{}", &r), &r), 200);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, a.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, a.access), 401);
    /* logout-all: the subject's sessions in every tenant, a made-up one too
     * (a session of one tenant acts where its subject holds a binding) */
    tokens_t z;
    char *made_up = unique("madeup");
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &b));
    CU_ASSERT_TRUE_FATAL(login(made_up, s, &z));
    CU_ASSERT_TRUE_FATAL(login("tenantA", s, &c));
    CU_ASSERT_EQUAL(count_sessions(c.access), 3);
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/logout-all", NULL, c.access, "{}", &r), &r), 200);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, b.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, c.refresh, NULL), 401);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, z.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, z.access), 401);
    free(made_up);
    /* an admin revokes any session of the tenant; a user may not */
    char *root = token("root", "tenantA"), *u1 = token("u1", "tenantA");
    snprintf(path, sizeof path, ADMIN "/sessions/%s", o.sid);
    CU_ASSERT_EQUAL(status_of(del(port_a(), path, NULL, u1, &r), &r), 403);
    CU_ASSERT_EQUAL(status_of(del(port_a(), path, NULL, root, &r), &r), 200);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, o.refresh, NULL), 401);
    CU_ASSERT_EQUAL(status_of(del(port_a(), ADMIN "/sessions/%FF", NULL, root, &r), &r), 404);
    CU_ASSERT_EQUAL(status_of(del(port_a(), ADMIN "/members?subject=%FF&role=viewer", NULL, root, &r), &r), 400);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, o.access), 401);
    /* a logout names the token's session whatever tenant the request is
     * sent as (u1 is a member of tenantB too: its tenantA token is accepted
     * there) */
    tokens_t m;
    age_requests("tenantA", "u1");
    CU_ASSERT_TRUE_FATAL(login("tenantA", "u1", &m));
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/logout", "tenantB", m.access, "{}", &r), &r), 200);
    CU_ASSERT_EQUAL(refresh(port_a(), NULL, m.refresh, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, m.access), 401);
    /* no development login in production */
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/auth/dev-login", NULL, NULL, "{\"userId\":\"u1\"}", &r), &r), 404);
    free(root);
    free(u1);
    free(other);
    free(s);
}

/* ================= P: RBAC ================= */

static void test_rbac(void)
{
    hresp_t r;
    char *u1 = token("u1", "tenantA"), *u2 = token("u2", "tenantA"), *u1b = token("u1", "tenantB"),
         *root = token("root", "tenantA");
    /* P1 */
    CU_ASSERT_EQUAL(status_of(post(port_a(), EVENTS, NULL, u1, "{\"type\":\"p1\"}", &r), &r), 202);
    get(port_a(), EVENTS, NULL, u1, &r);
    check_problem(&r, 403, "insufficient-scope", NULL, "P1 events:read");
    hfree(&r);
    CU_ASSERT_EQUAL(get_status(port_a(), EVENTS, NULL, NULL), 401);
    CU_ASSERT_EQUAL(get_status(port_a(), EVENTS, NULL, u2), 200);
    /* P2: the same role name in tenantB */
    CU_ASSERT_EQUAL(get_status(port_a(), EVENTS, NULL, u1b), 200);
    CU_ASSERT_EQUAL(status_of(post(port_a(), EVENTS, NULL, u1b, "{\"type\":\"p2\"}", &r), &r), 403);
    /* T2 / J5: a header that contradicts the token */
    get(port_a(), EVENTS, "tenantB", u2, &r);
    check_problem(&r, 403, "tenant-mismatch", NULL, "T2");
    hfree(&r);
    /* P3: a changed role applies within 5 s, on both gateways */
    post(port_a(), ADMIN "/roles", NULL, root, "{\"name\":\"user\",\"permissions\":[\"events:write\",\"events:read\"]}",
         &r);
    CU_ASSERT_TRUE(expect_status(&r, 201, "role write"));
    hfree(&r);
    CU_ASSERT_EQUAL(get_until(port_a(), EVENTS, NULL, u1, 200, 5000), 200);
    CU_ASSERT_EQUAL(get_until(gb->port, EVENTS, NULL, u1, 200, 5000), 200);
    post(port_a(), ADMIN "/roles", NULL, root, "{\"name\":\"user\",\"permissions\":[\"events:write\"]}", &r);
    hfree(&r);
    CU_ASSERT_EQUAL(get_until(gb->port, EVENTS, NULL, u1, 403, 5000), 403);
    /* bindings */
    char *u3 = token("u3", "tenantA");
    CU_ASSERT_EQUAL(get_status(port_a(), EVENTS, NULL, u3), 403);
    CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/members", NULL, root, "{\"subject\":\"u3\",\"role\":\"admin\"}", &r),
                              &r),
                    201);
    CU_ASSERT_EQUAL(get_until(gb->port, EVENTS, NULL, u3, 200, 5000), 200);
    CU_ASSERT_EQUAL(status_of(del(port_a(), ADMIN "/members?subject=u3&role=admin", NULL, root, &r), &r), 200);
    CU_ASSERT_EQUAL(get_until(gb->port, EVENTS, NULL, u3, 403, 5000), 403);
    /* role administration needs authx:admin; bad input is a 400 */
    CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/roles", NULL, u2, "{\"name\":\"x\",\"permissions\":[]}", &r), &r),
                    403);
    CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/roles", NULL, root, "{\"name\":\"Bad Name\",\"permissions\":[]}", &r),
                              &r),
                    400);
    get(port_a(), ADMIN "/roles", NULL, root, &r);
    CU_ASSERT_TRUE(expect_status(&r, 200, "roles") && strstr(r.body, "\"admin\":[\"events:write\",\"events:read\"]"));
    hfree(&r);
    /* P4: the store hangs (the change feed waits behind a lock, no catalog
     * change): fail closed with 503 once the snapshot is too old, and back */
    sql("BEGIN", NULL, NULL);
    sql("LOCK TABLE auth.tuples IN ACCESS EXCLUSIVE MODE", NULL, NULL);
    hget_auth(port_a(), EVENTS, u2, NULL, &r);
    hfree(&r);
    CU_ASSERT_EQUAL(get_until(port_a(), EVENTS, NULL, u2, 503, 10000), 503);
    get(port_a(), EVENTS, NULL, u2, &r);
    check_problem(&r, 503, "authorization-unavailable", NULL, "P4");
    char ra[16];
    CU_ASSERT_PTR_NOT_NULL(hheader(&r, "Retry-After", ra, sizeof ra));
    hfree(&r);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, u2), 200); /* no permission needed there */
    /* but a session's token is refused everywhere: its revocation may not have been seen */
    char *sess = session_token("u2", "tenantA", 60);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, sess), 503);
    sql("ROLLBACK", NULL, NULL);
    CU_ASSERT_EQUAL(get_until(port_a(), EVENTS, NULL, u2, 200, 10000), 200);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", NULL, sess), 200);
    free(sess);
    CU_ASSERT_EQUAL(get_until(gb->port, EVENTS, NULL, u2, 200, 10000), 200);
    free(u1);
    free(u2);
    free(u3);
    free(u1b);
    free(root);
}

/* ================= X: ReBAC ================= */

static int write_tuple(int port, const char *tenant, const char *tok, const char *s, const char *rel, const char *o,
                       char *rev, size_t cap)
{
    char body[512];
    snprintf(body, sizeof body, "{\"subject\":\"%s\",\"relation\":\"%s\",\"object\":\"%s\"}", s, rel, o);
    hresp_t r;
    post(port, ADMIN "/rebac", tenant, tok, body, &r);
    if (rev)
        jstr(&r, "revision", rev, cap);
    return status_of(0, &r);
}

/* allowed? -1 on a failed call; reason copied when given */
static int check(int port, const char *tenant, const char *tok, const char *s, const char *rel, const char *o,
                 const char *revision, char *reason, size_t cap)
{
    char path[512], *h = hdrs_crlf(tenant, tok);
    snprintf(path, sizeof path, ADMIN "/rebac/check?subject=%s&relation=%s&object=%s", s, rel, o);
    char *hx = revision ? xasprintf("%sx-authz-revision: %s\r\n", h, revision) : xstrdup(h);
    hresp_t r;
    hget(port, path, hx, &r);
    free(h);
    free(hx);
    json_object *j = jparse(&r), *v;
    int allowed = r.status == 200 && j && json_object_object_get_ex(j, "allowed", &v) ? json_object_get_boolean(v) : -1;
    if (reason) {
        reason[0] = '\0';
        if (j && json_object_object_get_ex(j, "reason", &v))
            snprintf(reason, cap, "%s", json_object_get_string(v));
    }
    if (allowed < 0) {
        fprintf(stderr, "\n  check %s %s %s on port %d (A %d, B %d): %d %s\n", s, rel, o, port, ga->port, gb->port,
                r.status, r.body ? r.body : "");
        char *reg = qs("SELECT coalesce(to_regclass($1)::text, 'missing') || ' in ' || current_database()",
                       "auth.tuples");
        fprintf(stderr, "  auth.tuples seen by the test: %s\n", reg ? reg : "(query failed)");
        free(reg);
        char *log = read_log(port == ga->port ? ga : gb);
        size_t n = strlen(log);
        const char *first = strstr(log, "postgres error");
        if (first) {
            while (first > log && first[-1] != '\n')
                first--;
            fprintf(stderr, "  --- the gateway's first PostgreSQL error ---\n%.*s\n", (int)strcspn(first, "\n"), first);
        }
        fprintf(stderr, "  --- the gateway's log, last lines ---\n%s\n", log + (n > 3000 ? n - 3000 : 0));
        free(log);
    }
    json_object_put(j);
    hfree(&r);
    return allowed;
}

static void test_rebac(void)
{
    char *root = token("root", "tenantA"), *rootb = token("rootB", "tenantB"), *u1 = token("u1", "tenantA");
    hresp_t r;
    /* X4: who may write, and the grammar */
    const char *body = "{\"subject\":\"user:1\",\"relation\":\"viewer\",\"object\":\"project:123\"}";
    CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/rebac", "tenantA", NULL, body, &r), &r), 401);
    CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/rebac", NULL, u1, body, &r), &r), 403);
    const char *bad[] = {"{\"subject\":\"user\",\"relation\":\"viewer\",\"object\":\"project:1\"}",
                         "{\"subject\":\"user:1\",\"relation\":\"viewer\",\"object\":\"project:1#x\"}",
                         "{\"subject\":\"user:1\",\"relation\":\"Viewer\",\"object\":\"project:1\"}",
                         "{\"subject\":\"user:1\",\"relation\":\"viewer\"}", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CU_ASSERT_EQUAL(status_of(post(port_a(), ADMIN "/rebac", NULL, root, bad[i], &r), &r), 400);
    char longobj[300];
    memset(longobj, 'a', sizeof longobj);
    memcpy(longobj, "project:", 8);
    longobj[140] = '\0';
    CU_ASSERT_EQUAL(write_tuple(port_a(), NULL, root, "user:1", "viewer", longobj, NULL, 0), 400);
    /* X1 */
    const char *tuples[][3] = {{"user:1", "owner", "project:123"},  {"user:2", "editor", "project:123"},
                               {"user:3", "viewer", "project:123"}, {"folder:root", "parent", "project:123"},
                               {"user:6", "viewer", "folder:root"}, {"group:eng#member", "viewer", "project:456"},
                               {"user:5", "member", "group:eng"}};
    char rev[32];
    for (int i = 0; i < 7; i++)
        CU_ASSERT_EQUAL(write_tuple(port_a(), NULL, root, tuples[i][0], tuples[i][1], tuples[i][2], rev, sizeof rev),
                        201);
    CU_ASSERT_TRUE(atoll(rev) > 0);
    const int want[] = {1, 1, 1, 0, 0, 1};
    for (int u = 1; u <= 6; u++) {
        char s[16];
        snprintf(s, sizeof s, "user:%d", u);
        CU_ASSERT_EQUAL(check(port_a(), NULL, root, s, "viewer", "project:123", rev, NULL, 0), want[u - 1]);
    }
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:2", "owner", "project:123", NULL, NULL, 0), 0);
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:5", "viewer", "project:456", NULL, NULL, 0), 1);
    /* X2: tenantB sees none of it */
    CU_ASSERT_EQUAL(check(port_a(), NULL, rootb, "user:1", "viewer", "project:123", NULL, NULL, 0), 0);
    /* X3: a cycle ends and denies; a chain deeper than the cap denies and says why */
    write_tuple(port_a(), NULL, root, "group:a#member", "member", "group:b", NULL, 0);
    write_tuple(port_a(), NULL, root, "group:b#member", "member", "group:a", NULL, 0);
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:1", "member", "group:a", NULL, NULL, 0), 0);
    for (int i = 0; i < 27; i++) {
        char o[32], s[40];
        snprintf(o, sizeof o, "group:d%d", i);
        snprintf(s, sizeof s, "group:d%d#member", i + 1);
        write_tuple(port_a(), NULL, root, s, "member", o, NULL, 0);
    }
    write_tuple(port_a(), NULL, root, "user:deep", "member", "group:d27", rev, sizeof rev);
    char reason[64];
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:deep", "member", "group:d0", rev, reason, sizeof reason), 0);
    CU_ASSERT_STRING_EQUAL(reason, "depth-exceeded");
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:deep", "member", "group:d5", NULL, NULL, 0), 1);
    /* X5: a write on A seen by B at the returned revision; a delete likewise */
    CU_ASSERT_EQUAL(write_tuple(port_a(), NULL, root, "user:7", "viewer", "project:x5", rev, sizeof rev), 201);
    CU_ASSERT_EQUAL(check(gb->port, NULL, root, "user:7", "viewer", "project:x5", rev, NULL, 0), 1);
    del(port_a(), ADMIN "/rebac?subject=user:7&relation=viewer&object=project:x5", NULL, root, &r);
    CU_ASSERT_TRUE(expect_status(&r, 200, "tuple delete"));
    jstr(&r, "revision", rev, sizeof rev);
    hfree(&r);
    CU_ASSERT_EQUAL(check(gb->port, NULL, root, "user:7", "viewer", "project:x5", rev, NULL, 0), 0);
    CU_ASSERT_EQUAL(check(port_a(), NULL, root, "user:7", "viewer", "project:x5", NULL, NULL, 0), 0);
    /* a revision nobody wrote yet: 503 after the wait, not a stale answer */
    hresp_t w;
    hget(port_a(), ADMIN "/rebac/check?subject=user:1&relation=viewer&object=project:123",
         "x-authz-revision: 999999999\r\nAuthorization: Bearer ", &w);
    hfree(&w);
    char *hx = xasprintf("Authorization: Bearer %s\r\nx-authz-revision: 999999999\r\n", root);
    hget(port_a(), ADMIN "/rebac/check?subject=user:1&relation=viewer&object=project:123", hx, &w);
    check_problem(&w, 503, "revision-unavailable", NULL, "future revision");
    hfree(&w);
    free(hx);
    /* listing */
    get(port_a(), ADMIN "/rebac?object=project:123", NULL, root, &r);
    json_object *o = jparse(&r), *v;
    CU_ASSERT_TRUE(o && json_object_object_get_ex(o, "count", &v) && json_object_get_int(v) == 4);
    json_object_put(o);
    hfree(&r);
    /* X6: the route's relation on project:<projectId> */
    char *one = token("1", "tenantA"), *four = token("4", "tenantA");
    CU_ASSERT_EQUAL(write_tuple(port_a(), NULL, root, "user:1", "viewer", "project:proj_123", rev, sizeof rev), 201);
    hx = xasprintf("Authorization: Bearer %s\r\nx-authz-revision: %s\r\n", one, rev);
    hget(gb->port, B "/projects/proj_123/events", hx, &r);
    CU_ASSERT_TRUE(expect_status(&r, 200, "X6 viewer"));
    hfree(&r);
    free(hx);
    get(port_a(), B "/projects/proj_123/events", NULL, four, &r);
    check_problem(&r, 403, "forbidden", NULL, "X6 not a viewer");
    CU_ASSERT_TRUE(r.body && strstr(r.body, "project:proj_123"));
    hfree(&r);
    CU_ASSERT_EQUAL(get_status(port_a(), B "/projects/proj_123/events", NULL, NULL), 401);
    /* X7: posting into a project takes its relation editor (a viewer may not) */
    post(port_a(), B "/events", NULL, one, "{\"type\":\"note\",\"projectId\":\"proj_123\"}", &r);
    check_problem(&r, 403, "forbidden", NULL, "X7 a viewer posts into the project");
    CU_ASSERT_TRUE(r.body && strstr(r.body, "editor"));
    hfree(&r);
    CU_ASSERT_EQUAL(status_of(post(port_a(), B "/events", NULL, one, "{\"type\":\"note\"}", &r), &r), 202);
    CU_ASSERT_EQUAL(write_tuple(port_a(), NULL, root, "user:1", "editor", "project:proj_123", rev, sizeof rev), 201);
    hx = xasprintf("Authorization: Bearer %s\r\nx-authz-revision: %s\r\nContent-Type: application/json\r\n", one, rev);
    const char *into = "{\"type\":\"note\",\"projectId\":\"proj_123\"}";
    hreq(port_a(), "POST", B "/events", hx, into, strlen(into), &r);
    CU_ASSERT_TRUE(expect_status(&r, 202, "X7 an editor posts into the project"));
    hfree(&r);
    free(hx);
    post(port_a(), B "/events", NULL, one, "{\"type\":\"note\",\"projectId\":7}", &r);
    check_problem(&r, 400, "validation-error", NULL, "X7 a projectId that is not a string");
    hfree(&r);
    free(one);
    free(four);
    free(root);
    free(rootb);
    free(u1);
}

/* ================= A: ABAC ================= */

/* Admin policy writes answer the revisions PostgreSQL gives them, as the
 * memory store does (test_gw_memory runs the same checks). */
static void test_policy_revisions(void)
{
    char *root = token("root", "tenantA"), *h = hdrs_crlf("tenantA", root);
    check_policy_revisions(ga->port, h, "pg");
    free(h);
    free(root);
}

static void test_abac(void)
{
    char *u1 = token("u1", "tenantA"), *one = token("1", "tenantA");
    hresp_t r;
    const char *path = B "/me/events";
    CU_ASSERT_EQUAL(status_of(post(port_a(), path, NULL, u1, "{\"userId\":\"u1\",\"type\":\"click\"}", &r), &r), 202);
    post(port_a(), path, NULL, u1, "{\"userId\":\"u2\",\"type\":\"click\"}", &r);
    check_problem(&r, 403, "forbidden", NULL, "A1 another user");
    hfree(&r);
    CU_ASSERT_EQUAL(status_of(post(port_a(), path, NULL, u1, "{\"type\":\"click\"}", &r), &r), 403);
    CU_ASSERT_EQUAL(status_of(post(port_a(), path, NULL, one, "{\"userId\":1,\"type\":\"click\"}", &r), &r), 403);
    CU_ASSERT_EQUAL(status_of(post(port_a(), path, NULL, one, "{\"userId\":\"1\",\"type\":\"click\"}", &r), &r), 202);
    CU_ASSERT_EQUAL(status_of(post(port_a(), path, NULL, u1, "{\"userId\":\"u1\\u0000x\",\"type\":\"c\"}", &r), &r), 403);
    /* A2: the guard reads what the handler reads */
    const char *bodies[] = {"{\"userId\":\"u2\",\"userId\":\"u1\",\"type\":\"c\"}", "{\"userId\":\"u1\",\"type\":\"c\"} x",
                            "{\"userId\":"};
    for (int i = 0; i < 3; i++) {
        post(port_a(), path, NULL, u1, bodies[i], &r);
        check_problem(&r, 400, "malformed-json", NULL, "A2");
        hfree(&r);
    }
    char *h = xasprintf("Authorization: Bearer %s\r\nContent-Type: text/plain\r\n", u1);
    hreq(port_a(), "POST", path, h, "{\"userId\":\"u1\"}", 15, &r);
    check_problem(&r, 415, "unsupported-media-type", NULL, "A2 content type");
    hfree(&r);
    free(h);
    free(u1);
    free(one);
}

/* ================= T: tenancy ================= */

static void test_tenancy(void)
{
    hresp_t r;
    char *u1 = token("u1", "tenantA"), *u1b = token("u1", "tenantB");
    get(port_a(), B "/me", "bad tenant!", u1, &r);
    check_problem(&r, 400, "invalid-tenant", NULL, "T1");
    hfree(&r);
    char long_tenant[70];
    memset(long_tenant, 'a', 65);
    long_tenant[65] = '\0';
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", long_tenant, u1), 400);
    long_tenant[64] = '\0'; /* 64 is the longest id: then the token's tenant decides (403) */
    CU_ASSERT_EQUAL(get_status(port_a(), B "/me", long_tenant, u1), 403);
    /* T2: a token of another tenant acts here only with a membership (an own binding) */
    char *rootb = token("rootB", "tenantB");
    CU_ASSERT_EQUAL(status_of(post(port_a(), EVENTS, "tenantA", u1b, "{\"type\":\"t2\"}", &r), &r), 202);
    get(port_a(), B "/me", "tenantA", rootb, &r);
    check_problem(&r, 403, "tenant-mismatch", NULL, "T2 without membership");
    hfree(&r);
    free(rootb);
    /* T1: the token's tenant when no header */
    get(port_a(), B "/me", NULL, u1b, &r);
    char tenant[64];
    jstr(&r, "tenant", tenant, sizeof tenant);
    CU_ASSERT_STRING_EQUAL(tenant, "tenantB");
    hfree(&r);
    /* T3: one Idempotency-Key in two tenants: two commands */
    char *key = unique("idem"), *ha = xasprintf("Idempotency-Key: %s\r\nAuthorization: Bearer %s\r\n", key, u1),
         *hb = xasprintf("Idempotency-Key: %s\r\nAuthorization: Bearer %s\r\n", key, u1b);
    char rep[16];
    hpost(port_a(), EVENTS, ha, "{\"type\":\"t3\"}", &r);
    CU_ASSERT_EQUAL(r.status, 202);
    hfree(&r);
    post(port_a(), ADMIN "/roles", "tenantB", NULL, "{}", &r); /* (no token: 401, nothing written) */
    hfree(&r);
    char *root_b = token("rootB", "tenantB");
    post(port_a(), ADMIN "/roles", NULL, root_b, "{\"name\":\"user\",\"permissions\":[\"events:read\",\"events:write\"]}",
         &r);
    hfree(&r);
    int64_t end = clock_mono_ms() + 5000;
    do {
        hpost(port_a(), EVENTS, hb, "{\"type\":\"t3\"}", &r);
        if (r.status == 202 || clock_mono_ms() > end)
            break;
        hfree(&r);
        clock_sleep_ms(50);
    } while (1);
    CU_ASSERT_EQUAL(r.status, 202);
    CU_ASSERT_TRUE(hheader(&r, "Idempotent-Replayed", rep, sizeof rep) && !strcmp(rep, "false"));
    hfree(&r);
    CU_ASSERT_EQUAL(q1("SELECT count(*) FROM gateway.idempotency WHERE store_key LIKE '%' || $1 || '%'", key, NULL), 2);
    post(port_a(), ADMIN "/roles", NULL, root_b, "{\"name\":\"user\",\"permissions\":[\"events:read\"]}", &r);
    hfree(&r);
    free(root_b);
    free(key);
    free(ha);
    free(hb);
    free(u1);
    free(u1b);
}

/* ================= rate limits ================= */

/* O8's address bucket: code requests from one address, 20 a minute with 10 at
 * once (GCRA), and the RateLimit headers; a route without a limit has none. */
static void test_address_limits(void)
{
    const char *env[] = {"APP_ENV=development", "JWT_SECRET=devsecret", NULL};
    proc_t *g = spawn_ecom("gateway", env);
    CU_ASSERT_TRUE_FATAL(g && wait_ready(g, 15000) == 0);
    int ok = 0, limited = 0;
    char ra[32] = "", policy[128] = "", state[128] = "";
    for (int i = 0; i < 14; i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"subject\":\"addr-%d@example.com\",\"channel\":\"email\"}", i);
        hresp_t r;
        post(g->port, B "/auth/otp/request", NULL, NULL, body, &r);
        if (r.status == 200) {
            ok++;
            hheader(&r, "RateLimit-Policy", policy, sizeof policy);
            hheader(&r, "RateLimit", state, sizeof state);
        } else if (r.status == 429) {
            if (!limited)
                check_problem(&r, 429, "rate-limited", NULL, "address limit");
            limited++;
            hheader(&r, "Retry-After", ra, sizeof ra);
        }
        hfree(&r);
    }
    CU_ASSERT_EQUAL(ok, 11); /* one plus a burst of 10: the rest wait for 3 s each */
    CU_ASSERT_EQUAL(limited, 3);
    CU_ASSERT_TRUE(atoi(ra) >= 1 && atoi(ra) <= 3);
    CU_ASSERT_STRING_EQUAL(policy, "\"default\";q=20;w=60");
    CU_ASSERT_EQUAL(strncmp(state, "\"default\";r=0;t=", strlen("\"default\";r=0;t=")), 0);
    /* another route of the same address is not limited by it */
    hresp_t r;
    get(g->port, B "/me", NULL, NULL, &r);
    CU_ASSERT_EQUAL(r.status, 200);
    CU_ASSERT_PTR_NULL(hheader(&r, "RateLimit", state, sizeof state));
    hfree(&r);
    stop_clean(g, "rate-limited gateway");
}

/* ================= the suite ================= */

static const char boot_json[] =
    "{\"tenants\": {"
    "\"*\": {\"roles\": {\"authx-admin\": [\"authx:admin\"]}},"
    "\"tenantA\": {\"roles\": {\"user\": [\"events:write\"], \"admin\": [\"events:write\", \"events:read\"]},"
    " \"members\": {\"u1\": [\"user\"], \"u2\": [\"admin\"], \"1\": [\"admin\"], \"4\": [\"admin\"],"
    " \"root\": [\"authx-admin\"]}},"
    "\"tenantB\": {\"roles\": {\"user\": [\"events:read\"]}, \"members\": {\"u1\": [\"user\"], \"rootB\":"
    " [\"authx-admin\"]}}}}";

/* grace: AUTHX_REFRESH_GRACE_S */
static proc_t *start_prod(const char *url, int grace)
{
    static char e[600], bf[120], g[64];
    snprintf(e, sizeof e, "DATABASE_URL=%s", url);
    snprintf(bf, sizeof bf, "AUTHX_BOOTSTRAP_FILE=%s", boot_path);
    snprintf(g, sizeof g, "AUTHX_REFRESH_GRACE_S=%d", grace);
    /* the tests make many login calls from one address: the address limits are tested on a gateway of their own */
    const char *env[] = {e, bf, g, "APP_ENV=production", "JWT_SECRET=" SECRET40, "LOG_LEVEL=warn", "RATE_LIMITS=false",
                         "OTP_PEPPER=test-pepper-0123456789abcdef0123456789", NULL};
    proc_t *p = spawn_ecom("gateway", env);
    if (p && wait_ready(p, 15000) != 0) {
        proc_release(p);
        return NULL;
    }
    return p;
}

static void reap_everything(void)
{
    proc_reap(NULL);
    if (boot_path[0])
        unlink(boot_path);
}

static int suite_init(void)
{
    const char *url = db_url = test_pg_db("authx", true);
    char *err = NULL;
    db = pg_connect(url, "test-authx", &err);
    if (!db) {
        fprintf(stderr, "test_authx: %s\n", err ? err : "?");
        return -1;
    }
    if (test_jwt_keys(&keys, SECRET40) != 0)
        return -1;
    snprintf(boot_path, sizeof boot_path, "/tmp/ecom-authx-boot-%d.json", (int)getpid());
    FILE *f = fopen(boot_path, "w");
    if (!f || fputs(boot_json, f) < 0 || fclose(f) != 0)
        return -1;
    ga = start_prod(url, 0);
    gb = start_prod(url, 2); /* B forgives a rotated token for 2 s */
    return ga && gb ? 0 : -1;
}

static const char *count_of(PGconn *c, const char *sql, char out[32])
{
    PGresult *r = pg_query(c, sql, 0, NULL);
    snprintf(out, 32, "%s", r && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?");
    PQclear(r);
    return out;
}

/* The login's tables are cleaned a day after their rows ended: 1,200 OTP
 * tickets, 1,200 failure budgets and 1,201 sessions (600 expired, 600
 * revoked, each with two refresh tokens, one idle) in one pass of chunks of 500;
 * tickets, budgets and sessions still within the day stay, and so do a live
 * session's tokens. */
static void test_auth_cleanup(void)
{
    const char *url = test_pg_db("authjanitor", true); /* its own database: the counts are this test's */
    char *err = NULL;
    PGconn *c = pg_connect(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    static const char *const setup[] = {
        "INSERT INTO auth.otp_tickets (tenant, ticket_id, subject, channel, code_mac, created_at, expires_at)"
        " SELECT 't1', 'k' || n, 's' || n, 'email', 'mac', now() - interval '3 days',"
        " CASE WHEN n <= 1200 THEN now() - interval '2 days' ELSE now() - interval '1 hour' END"
        " FROM generate_series(1, 1203) n",
        "INSERT INTO auth.otp_failures (subject, window_start, failures)"
        " SELECT 's' || n, CASE WHEN n <= 1200 THEN now() - interval '2 days' ELSE now() - interval '20 hours' END, 3"
        " FROM generate_series(1, 1203) n",
        "INSERT INTO auth.sessions (sid, tenant, subject, created_at, expires_at, revoked_at)"
        " SELECT 'sid' || n, 't1', 's' || n, now() - interval '40 days',"
        " CASE WHEN n <= 600 THEN now() - interval '2 days' ELSE now() + interval '1 day' END,"
        " CASE WHEN n > 600 AND n <= 1200 THEN now() - interval '2 days'"
        " WHEN n = 1202 THEN now() - interval '1 hour' END FROM generate_series(1, 1203) n",
        "INSERT INTO auth.refresh_tokens (hash, sid, tenant, state)"
        " SELECT 'h' || n || '-' || k, 'sid' || n, 't1', CASE WHEN k = 1 THEN 'rotated' ELSE 'active' END"
        " FROM generate_series(1, 1203) n, generate_series(1, 2) k",
        /* idle: 9 days (7 and the day past) goes with its tokens; 7.5 days stays */
        "INSERT INTO auth.sessions (sid, tenant, subject, created_at, expires_at, last_used_at) VALUES"
        " ('sid1204', 't1', 's1204', now() - interval '10 days', now() + interval '20 days',"
        " now() - interval '9 days'), ('sid1205', 't1', 's1205', now() - interval '10 days',"
        " now() + interval '20 days', now() - interval '7 days 12 hours')",
        "INSERT INTO auth.refresh_tokens (hash, sid, tenant, state) VALUES ('h1204', 'sid1204', 't1', 'active')",
    };
    for (size_t i = 0; i < sizeof setup / sizeof *setup; i++)
        CU_ASSERT_EQUAL_FATAL(pg_exec(c, setup[i]), 0);
    CU_ASSERT_EQUAL(test_janitor_pass(&(janitor_opts_t){.database_url = url,
                                                        .app_name = "test-janitor",
                                                        .what = "auth",
                                                        .cleanup = gw_auth_cleanup,
                                                        .retain_s = 86400,
                                                        .chunk = 500,
                                                        .every_ms = 60000}),
                    3 * 1200 + 1);
    char n[32];
    CU_ASSERT_STRING_EQUAL(count_of(c, "SELECT string_agg(ticket_id, ',' ORDER BY ticket_id) FROM auth.otp_tickets", n),
                           "k1201,k1202,k1203");
    CU_ASSERT_STRING_EQUAL(count_of(c, "SELECT string_agg(subject, ',' ORDER BY subject) FROM auth.otp_failures", n),
                           "s1201,s1202,s1203");
    CU_ASSERT_STRING_EQUAL(count_of(c, "SELECT string_agg(sid, ',' ORDER BY sid) FROM auth.sessions", n),
                           "sid1201,sid1202,sid1203,sid1205");
    CU_ASSERT_STRING_EQUAL(count_of(c,
                                    "SELECT count(*) FROM auth.refresh_tokens WHERE sid IN ('sid1201', 'sid1202',"
                                    " 'sid1203')",
                                    n),
                           "6");
    CU_ASSERT_STRING_EQUAL(count_of(c, "SELECT count(*) FROM auth.refresh_tokens", n), "6");
    PQfinish(c);
}

/* With nothing ended, the login's cleanup on the janitor's connection
 * (db_index_scans_only) reads by auth/007-011's indexes: at most its limit
 * of rows of each table, not the 20,000 live ones. */
static void test_auth_cleanup_bounded(void)
{
    const char *url = test_pg_db("authbound", true);
    char *err = NULL;
    db_t *jdb = db_open_pg(url, "test", &err);
    free(err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(jdb);
    CU_ASSERT_EQUAL_FATAL(db_index_scans_only(jdb), 0);
    static const char *const setup[] = {
        "INSERT INTO auth.otp_tickets (tenant, ticket_id, subject, channel, code_mac, created_at, expires_at)"
        " SELECT 't1', 'k' || n, 's' || n, 'email', 'mac', now(), now() + interval '5 minutes'"
        " FROM generate_series(1, 20000) n",
        "INSERT INTO auth.otp_failures (subject, window_start, failures)"
        " SELECT 's' || n, now(), 1 FROM generate_series(1, 20000) n",
        "INSERT INTO auth.sessions (sid, tenant, subject, created_at, expires_at)"
        " SELECT 'sid' || n, 't1', 's' || n, now(), now() + interval '30 days' FROM generate_series(1, 20000) n",
        "INSERT INTO auth.refresh_tokens (hash, sid, tenant, state)"
        " SELECT 'h' || n || '-' || k, 'sid' || n, 't1', CASE WHEN k = 1 THEN 'rotated' ELSE 'active' END"
        " FROM generate_series(1, 20000) n, generate_series(1, 2) k",
        "ANALYZE auth.otp_tickets, auth.otp_failures, auth.sessions, auth.refresh_tokens",
    };
    for (size_t i = 0; i < sizeof setup / sizeof *setup; i++)
        CU_ASSERT_EQUAL_FATAL(pg_exec(db_pg(jdb), setup[i]), 0);
    static const char *const tables[] = {"auth.otp_tickets", "auth.otp_failures", "auth.sessions",
                                         "auth.refresh_tokens"};
    long long before[4], read[4];
    for (int i = 0; i < 4; i++)
        before[i] = test_rows_read(jdb, tables[i]);
    size_t gone = 99;
    CU_ASSERT_EQUAL(gw_auth_cleanup(jdb, 86400, 100, &gone), 0);
    CU_ASSERT_EQUAL(gone, 0);
    for (int i = 0; i < 4; i++) {
        read[i] = test_rows_read(jdb, tables[i]) - before[i];
        CU_ASSERT_TRUE(read[i] >= 0 && read[i] <= 1000);
        if (read[i] > 1000)
            fprintf(stderr, "\n  the login's cleanup read %lld rows of %s\n", read[i], tables[i]);
    }
    db_close(jdb);
}

/* Last: both gateways exit 0 on SIGTERM (sanitizer reports and leaks included). */
static void test_gateways_exit(void)
{
    stop_clean(ga, "gateway A");
    stop_clean(gb, "gateway B");
    ga = gb = NULL;
}

static int suite_clean(void)
{
    reap_everything();
    jwtk_free(&keys);
    if (db)
        PQfinish(db);
    return 0;
}

int main(void)
{
    atexit(reap_everything);
    CU_TestInfo tests[] = {
        {"O1-O4 O9 J1: email login, one answer for every failure, stored MACs", test_otp_login},
        {"O5 O6 O8: tries per ticket, new ticket voids the old, budgets", test_otp_limits},
        {"O7: twenty verifies at once, one session", test_otp_race},
        {"O8: twenty code requests at once, one ticket", test_otp_requests_take_turns},
        {"O8: the wrong codes an hour are the subject's, across tenants", test_otp_budget_across_tenants},
        {"O5: guesses sent together take turns; the right code after the fifth is refused",
         test_otp_guesses_take_turns},
        {"O10: TOTP enrolment, window, replay", test_totp},
        {"R1-R5: rotation, reuse revokes the family, deny-list, lifetimes", test_refresh_rotation},
        {"R4: logout, logout-all, sessions, admin revoke", test_logout_and_sessions},
        {"O9: code requests are counted per subject in every tenant; subjects fit a token",
         test_otp_requests_across_tenants},
        {"P1-P4 T2: roles per tenant, changes, fail closed", test_rbac},
        {"X1-X7: tuples, rewrites, cycles, depth, revisions, the route checks", test_rebac},
        {"policy writes answer the store's revisions", test_policy_revisions},
        {"A1-A2: the ABAC guard on the exact body", test_abac},
        {"T1 T3: tenant resolution and independent keys", test_tenancy},
        {"O8 address bucket: GCRA with RateLimit headers", test_address_limits},
        {"the login's tables are cleaned a day after their rows ended", test_auth_cleanup},
        {"the login's cleanup reads by index, not the live rows", test_auth_cleanup_bounded},
        {"the gateways exit cleanly", test_gateways_exit},
        CU_TEST_INFO_NULL,
    };
    return test_main("authx", tests, suite_init, suite_clean);
}
