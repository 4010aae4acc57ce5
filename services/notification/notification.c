/* services/notification/notification.c: see notification.h. The channels
 * themselves live in channel_*.c (channel.h). */
#include "services/notification/notification.h"

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/pg.h"
#include "core/pgarray.h"
#include "core/recent.h"
#include "core/strmap.h"
#include "core/uuid.h"
#include "core/workpool.h"
#include "services/notification/channel.h"
#include "services/payment/payment.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SENT_MAX 4096 /* recent final outcomes remembered across a rollback */
#define OTP_CODE_MAX 16

typedef enum { CH_LOG, CH_WEBHOOK, CH_SMTP, CH_COUNT } channel_t;

static const char *const channel_names[CH_COUNT] = {"log", "webhook", "smtp"};

/* ---- settings ---- */

typedef struct settings {
    channel_t order[CH_COUNT];
    int n;
    char *sink_file;
    char *webhook_url, *webhook_host, *webhook_path, *webhook_secret;
    int webhook_port;
    char *smtp_host, *smtp_from;
    int smtp_port;
    int64_t timeout_ms;
    breaker_t *breaker[CH_COUNT]; /* webhook and smtp */
} settings_t;

/* The settings in force: an immutable snapshot, replaced whole by
 * notification_configure (under settings_mu) and read without a lock, each
 * operation taking the pointer once (current_settings). A replaced snapshot
 * is retired, not freed: a send in flight may still use its strings (and
 * its breakers, which the send's guard holds). Only the unconfigured
 * defaults' breakers are made later, once, under settings_mu. */
static pthread_mutex_t settings_mu = PTHREAD_MUTEX_INITIALIZER;
static settings_t default_settings = {.order = {CH_LOG}, .n = 1, .timeout_ms = 5000};
static settings_t *_Atomic settings_now = &default_settings;
typedef struct retired {
    struct retired *next;
    settings_t *s;
} retired_t;
static retired_t *retired; /* under settings_mu; kept for the process's life */

static const settings_t *current_settings(void)
{
    return atomic_load(&settings_now);
}

static void settings_clear(settings_t *s)
{
    free(s->sink_file);
    free(s->webhook_url);
    free(s->webhook_host);
    free(s->webhook_path);
    free(s->webhook_secret);
    free(s->smtp_host);
    free(s->smtp_from);
    for (int i = 0; i < CH_COUNT; i++)
        breaker_free(s->breaker[i]);
    memset(s, 0, sizeof *s);
}

static void breaker_defaults(const breaker_params_t *in, breaker_params_t *out)
{
    *out = *in;
    if (!out->window_ms)
        out->window_ms = NOTIFY_BREAKER_WINDOW_MS;
    if (!out->minimum_calls)
        out->minimum_calls = NOTIFY_BREAKER_MIN_CALLS;
    if (!(out->failure_rate_threshold > 0))
        out->failure_rate_threshold = NOTIFY_BREAKER_FAILURE_RATE;
    if (!out->open_duration_ms)
        out->open_duration_ms = NOTIFY_BREAKER_OPEN_MS;
    if (!out->half_open_max_calls)
        out->half_open_max_calls = NOTIFY_BREAKER_HALF_OPEN_CALLS;
}

static void problem(char *err, size_t cap, size_t *len, const char *what)
{
    if (*len >= cap)
        return;
    int n = snprintf(err + *len, cap - *len, "%s%s", *len ? "; " : "", what);
    if (n > 0)
        *len += (size_t)n;
}

/* Parses "log, webhook" into s->order. */
static void parse_channels(const char *list, settings_t *s, char *err, size_t cap, size_t *len)
{
    s->n = 0;
    if (!list || !*list)
        list = "log";
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *w = p;
        size_t wl = n;
        while (wl && (*w == ' ' || *w == '\t')) {
            w++;
            wl--;
        }
        while (wl && (w[wl - 1] == ' ' || w[wl - 1] == '\t'))
            wl--;
        int found = -1;
        for (int i = 0; i < CH_COUNT; i++)
            if (strlen(channel_names[i]) == wl && strncmp(w, channel_names[i], wl) == 0)
                found = i;
        char msg[160];
        if (found < 0) {
            snprintf(msg, sizeof msg, "NOTIFY_CHANNELS: '%.*s' is not one of log, webhook, smtp", (int)wl, w);
            problem(err, cap, len, msg);
        } else {
            bool dup = false;
            for (int i = 0; i < s->n; i++)
                dup |= s->order[i] == (channel_t)found;
            if (dup) {
                snprintf(msg, sizeof msg, "NOTIFY_CHANNELS: %s is listed twice", channel_names[found]);
                problem(err, cap, len, msg);
            } else {
                s->order[s->n++] = (channel_t)found;
            }
        }
        p += n;
        if (*p == ',')
            p++;
    }
}

static bool uses(const settings_t *s, channel_t ch)
{
    for (int i = 0; i < s->n; i++)
        if (s->order[i] == ch)
            return true;
    return false;
}

int notification_configure(const notification_config_t *cfg, char *err, size_t cap)
{
    settings_t s = {0};
    size_t len = 0;
    err[0] = '\0';
    parse_channels(cfg->channels, &s, err, cap, &len);
    s.timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 5000;
    if (s.timeout_ms < 0)
        problem(err, cap, &len, "NOTIFY_TIMEOUT_MS: must be positive");
    if (cfg->sink_file && *cfg->sink_file)
        s.sink_file = xstrdup(cfg->sink_file);

    const char *url = cfg->webhook_url ? cfg->webhook_url : "";
    if (*url) {
        char host[256], path[1024];
        int port = 0;
        if (notification_webhook_parse_url(url, host, sizeof host, &port, path, sizeof path) != 0) {
            problem(err, cap, &len, "NOTIFY_WEBHOOK_URL: expected http://host[:port][/path] (http only)");
        } else {
            s.webhook_url = xstrdup(url);
            s.webhook_host = xstrdup(host);
            s.webhook_path = xstrdup(path);
            s.webhook_port = port;
        }
    } else if (uses(&s, CH_WEBHOOK)) {
        problem(err, cap, &len, "NOTIFY_WEBHOOK_URL: required by the webhook channel");
    }
    if (cfg->webhook_secret && *cfg->webhook_secret)
        s.webhook_secret = xstrdup(cfg->webhook_secret);
    else if (uses(&s, CH_WEBHOOK))
        problem(err, cap, &len, "NOTIFY_WEBHOOK_SECRET: required by the webhook channel");

    if (cfg->smtp_host && *cfg->smtp_host)
        s.smtp_host = xstrdup(cfg->smtp_host);
    else if (uses(&s, CH_SMTP))
        problem(err, cap, &len, "SMTP_HOST: required by the smtp channel");
    s.smtp_port = cfg->smtp_port ? cfg->smtp_port : 25;
    if (s.smtp_port < 1 || s.smtp_port > 65535)
        problem(err, cap, &len, "SMTP_PORT: outside 1..65535");
    const char *from = cfg->smtp_from && *cfg->smtp_from ? cfg->smtp_from : "ecom@localhost";
    if (!notification_smtp_address_ok(from))
        problem(err, cap, &len, "SMTP_FROM: expected an address like name@example.com");
    s.smtp_from = xstrdup(from);

    breaker_params_t bp;
    breaker_defaults(&cfg->breaker, &bp);
    char berr[256];
    if (breaker_params_validate(&bp, berr, sizeof berr) != 0)
        problem(err, cap, &len, berr);
    if (len) {
        settings_clear(&s);
        return -1;
    }
    s.breaker[CH_WEBHOOK] = breaker_new(&bp);
    s.breaker[CH_SMTP] = breaker_new(&bp);
    settings_t *fresh = xmalloc(sizeof *fresh);
    *fresh = s;
    retired_t *r = xmalloc(sizeof *r);
    pthread_mutex_lock(&settings_mu);
    r->s = fresh;
    r->next = retired;
    retired = r; /* every snapshot made, the one in force included */
    atomic_store(&settings_now, fresh);
    pthread_mutex_unlock(&settings_mu);
    return 0;
}

/* The breaker of a networked channel, created with the defaults when the
 * service runs unconfigured. */
static breaker_t *channel_breaker(channel_t ch)
{
    pthread_mutex_lock(&settings_mu);
    settings_t *st = atomic_load(&settings_now);
    if (!st->breaker[ch]) { /* the defaults' only: a configured snapshot has both */
        breaker_params_t bp;
        breaker_defaults(&(breaker_params_t){0}, &bp);
        st->breaker[ch] = breaker_new(&bp);
    }
    breaker_t *b = st->breaker[ch];
    pthread_mutex_unlock(&settings_mu);
    return b;
}

/* ---- recent final outcomes (message id, channel), kept across a rollback ----
 *
 * What went out (sent) or will never go (refused for good, skipped), so a
 * batch applied again after a rollback neither sends twice nor asks a
 * receiver that refused for good again. */

typedef struct sent_rec {
    notify_outcome_t o;
    char detail[256];
} sent_rec_t;

static recent_t sent = RECENT_INIT(SENT_MAX, sizeof(sent_rec_t)); /* "message id/channel" -> outcome */

/* "message id/channel", the id in lower case (as PostgreSQL gives it back:
 * sent_marks). Also the memory table's key. */
static size_t delivery_key(const char *msg_id, const char *channel, char *k, size_t cap)
{
    char low[UUID_STR_LEN];
    if (uuid_valid(msg_id)) {
        uuid_lower(msg_id, low);
        msg_id = low;
    }
    int n = snprintf(k, cap, "%s/%s", msg_id, channel);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

static size_t sent_key(const char *msg_id, channel_t ch, char *k, size_t cap)
{
    return delivery_key(msg_id, channel_names[ch], k, cap);
}

static bool final_outcome(notify_outcome_t o)
{
    return o == NOTIFY_SENT || o == NOTIFY_REFUSED || o == NOTIFY_SKIPPED;
}

/* The outcome remembered for (msg_id, ch) into *o and detail; false when none. */
static bool sent_recall(const char *msg_id, channel_t ch, notify_outcome_t *o, char *detail, size_t cap)
{
    char k[64];
    sent_rec_t r;
    if (sent_key(msg_id, ch, k, sizeof k) == 0 || !recent_get(&sent, k, &r))
        return false;
    *o = r.o;
    snprintf(detail, cap, "%.220s (an earlier attempt)", r.detail);
    return true;
}

/* Whether an outcome is remembered for (msg_id, ch). */
static bool sent_known(const char *msg_id, channel_t ch)
{
    notify_outcome_t o;
    char detail[8];
    return sent_recall(msg_id, ch, &o, detail, sizeof detail);
}

/* Remembers a final outcome (sent, refused, skipped); others are not. */
static void sent_remember(const char *msg_id, channel_t ch, notify_outcome_t o, const char *detail)
{
    char k[64];
    if (!final_outcome(o) || sent_key(msg_id, ch, k, sizeof k) == 0)
        return;
    sent_rec_t r = {.o = o};
    snprintf(r.detail, sizeof r.detail, "%s", detail ? detail : "");
    recent_put(&sent, k, &r);
}

/* ---- what failed in this attempt ----
 *
 * A refusal (HTTP 3xx, 4xx) or a failure is asked again at the message's
 * next attempt, not by the halves of the batch that failed on it or by its
 * single-message pass: those run in the same attempt (svc_attempt), and each
 * would otherwise send every failing message of the batch once more. */

#define TRIED_MAX 16384 /* > SERVICE_BATCH's limit */
static recent_t tried =
    RECENT_INIT(TRIED_MAX, sizeof(svc_tried_t)); /* "message id/channel" -> this attempt's failure */

static void tried_remember(uint64_t attempt, const char *msg_id, channel_t ch, svc_result_t r, notify_outcome_t o,
                           const char *detail, const char *error)
{
    char k[64];
    if ((r != SVC_OK || !final_outcome(o)) && sent_key(msg_id, ch, k, sizeof k) != 0)
        svc_tried_remember(&tried, attempt, k, r, (int)o, detail, error);
}

/* This attempt's failure of (msg_id, ch) into *t; false when there is none. */
static bool tried_recall(uint64_t attempt, const char *msg_id, channel_t ch, svc_tried_t *t)
{
    char k[64];
    return sent_key(msg_id, ch, k, sizeof k) != 0 && svc_tried_recall(&tried, attempt, k, t);
}

/* ---- outcomes kept through a rollback, in PostgreSQL ----
 *
 * The memory above covers a batch applied again at once. A message whose
 * delivery stops at a later channel (a failure, or a breaker that puts it
 * off for as long as an outage lasts) can wait much longer, through more
 * sends than the memory holds or a restart: when a handler call fails, what
 * its networked channels did is written at once to notification.sent_marks
 * on a connection of its own (not in the transaction that rolls back), and
 * the next attempt reads it with the deliveries. Not with the memory store
 * (one process: the memory is all there is). */

static bool networked(channel_t ch)
{
    return ch == CH_WEBHOOK || ch == CH_SMTP;
}

typedef struct marks {
    size_t n, cap;
    struct mark {
        char id[UUID_STR_LEN];
        channel_t ch;
        notify_outcome_t o;
        char detail[256];
    } * m;
} marks_t;

static pthread_mutex_t marks_mu = PTHREAD_MUTEX_INITIALIZER;
static db_t *marks_db; /* the marks' own connection, opened at the first need */

static const char *status_of(notify_outcome_t o)
{
    return o == NOTIFY_SENT ? "sent" : o == NOTIFY_SKIPPED ? "skipped" : "failed";
}

static notify_outcome_t outcome_of(const char *status)
{
    return strcmp(status, "sent") == 0 ? NOTIFY_SENT : strcmp(status, "skipped") == 0 ? NOTIFY_SKIPPED : NOTIFY_REFUSED;
}

static void marks_add(marks_t *k, const char *msg_id, channel_t ch, notify_outcome_t o, const char *detail)
{
    if (!k || !final_outcome(o))
        return;
    if (k->n == k->cap) {
        k->cap = k->cap ? k->cap * 2 : 8;
        k->m = xrealloc(k->m, k->cap * sizeof *k->m);
    }
    struct mark *x = &k->m[k->n++];
    snprintf(x->id, sizeof x->id, "%s", msg_id);
    x->ch = ch;
    x->o = o;
    snprintf(x->detail, sizeof x->detail, "%s", detail ? detail : "");
}

static const char sql_mark[] =
    "INSERT INTO notification.sent_marks (message_id, channel, status, detail)"
    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING";
/* marks are written only when a handler call or batch rolls back, so the
 * table stays small: its old rows go at most every MARKS_CLEANUP_MS, a scan
 * of what is there */
static const char sql_mark_cleanup[] =
    "DELETE FROM notification.sent_marks WHERE marked_at < now() - interval '7 days'";
#define MARKS_CLEANUP_MS (10 * 60 * 1000)
static int64_t marks_cleaned_ms;

/* The marks' connection to url's database, opened (again) when needed;
 * under marks_mu. A mark lost in a crash only means the channel may send
 * once more: its commits do not wait for the WAL flush. */
static PGconn *marks_conn(const char *url, bool fresh)
{
    if (marks_db && (fresh || !marks_db->url || strcmp(marks_db->url, url) != 0)) {
        db_close(marks_db); /* broken, or another database now */
        marks_db = NULL;
    }
    if (!marks_db) {
        char *err = NULL;
        if (!(marks_db = db_open_pg(url, "ecom-notification-marks", &err))) {
            log_warn("notification: cannot keep what was sent: %s", err);
            free(err);
            return NULL;
        }
        if (pg_exec(db_pg(marks_db), "SET synchronous_commit = off") != 0) {
            db_close(marks_db);
            marks_db = NULL;
            return NULL;
        }
    }
    return db_pg(marks_db);
}

/* Writes k's marks (database of url) in a transaction of their own, on a
 * new connection once more when the kept one fails (the server may have
 * closed it while idle); a failure is logged: the memory still covers the
 * next attempts it holds. */
static void marks_write(const char *url, marks_t *k)
{
    if (!k->n || !url)
        return;
    pg_array_t col[4] = {{0}};
    pg_array_begin(&col[0], PG_OID_UUID, k->n);
    for (int c = 1; c < 4; c++)
        pg_array_begin(&col[c], PG_OID_TEXT, k->n);
    uint32_t n = 0;
    for (size_t i = 0; i < k->n; i++) {
        if (!uuid_valid(k->m[i].id) || pg_array_uuid(&col[0], k->m[i].id) != 0)
            continue; /* not a UUID: its channel may send again; the others are kept */
        pg_array_text(&col[1], channel_names[k->m[i].ch]);
        pg_array_text(&col[2], status_of(k->m[i].o));
        pg_array_text(&col[3], k->m[i].detail);
        n++;
    }
    const char *vals[4];
    int lens[4], fmts[4];
    pg_array_params(col, 4, n, vals, lens, fmts);
    bool ok = false;
    pthread_mutex_lock(&marks_mu);
    for (int round = 0; n && round < 2 && !ok; round++) {
        PGconn *c = marks_conn(url, round > 0);
        if (!c)
            break;
        PGresult *r = PQexecParams(c, sql_mark, 4, NULL, vals, lens, fmts, 0);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok && round > 0)
            log_warn("notification: cannot keep what was sent: %s", PQerrorMessage(c));
        PQclear(r);
    }
    int64_t now = clock_mono_ms();
    if (ok && now - marks_cleaned_ms >= MARKS_CLEANUP_MS) {
        marks_cleaned_ms = now;
        if (pg_exec(db_pg(marks_db), sql_mark_cleanup) != 0)
            log_warn("notification: old sent marks not removed");
    }
    pthread_mutex_unlock(&marks_mu);
    if (ok)
        log_debug("notification: kept what %u sends did for a later attempt", n);
    for (int c = 0; c < 4; c++)
        pg_array_free(&col[c]);
}

static void marks_free(marks_t *k)
{
    free(k->m);
    k->m = NULL;
    k->n = k->cap = 0;
}

void notification_forget_sends(void)
{
    recent_clear(&sent);
    recent_clear(&tried);
    pthread_mutex_lock(&marks_mu);
    db_close(marks_db);
    marks_db = NULL;
    pthread_mutex_unlock(&marks_mu);
}

/* A row of the deliveries' read: a delivery (bits of done) or a mark: into
 * marks ("message id/channel" -> sent_rec_t, owned) when given, else the
 * memory of recent sends. */
static void read_row(PGresult *r, int i, int id_col, const char *msg_id, unsigned *bits, strmap_t *marks)
{
    const char *channel = PQgetvalue(r, i, id_col + 1);
    for (int ch = 0; ch < CH_COUNT; ch++) {
        if (strcmp(channel, channel_names[ch]) != 0)
            continue;
        if (PQgetisnull(r, i, id_col + 2)) {
            *bits |= 1u << ch;
            continue;
        }
        notify_outcome_t o = outcome_of(PQgetvalue(r, i, id_col + 2));
        char k[64];
        size_t kl = sent_key(msg_id, (channel_t)ch, k, sizeof k);
        if (!marks || kl == 0) {
            sent_remember(msg_id, (channel_t)ch, o, PQgetvalue(r, i, id_col + 3));
            continue;
        }
        bool created;
        void **v = strmap_put(marks, k, kl, &created);
        if (created) {
            sent_rec_t *rec = xcalloc(1, sizeof *rec);
            rec->o = o;
            snprintf(rec->detail, sizeof rec->detail, "%s", PQgetvalue(r, i, id_col + 3));
            *v = rec;
        }
    }
}

static void marks_map_free(strmap_t *marks)
{
    const char *k;
    void *v;
    for (size_t i = 0; strmap_next(marks, &i, &k, NULL, &v);)
        free(v);
    strmap_free(marks);
}

/* ---- rendering ---- */

void notification_format_time(int64_t ms, char *out, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03dZ", base, (int)(ms % 1000));
}

/* "12.34 EUR" from minor units; a currency we do not know prints its minor units. */
static void money(int64_t minor, const char *currency, char *out, size_t cap)
{
    int exp = currency ? payment_currency_exponent(currency) : -1;
    if (exp <= 0) {
        snprintf(out, cap, "%lld%s%s", (long long)minor, currency ? " " : "", currency ? currency : "");
        return;
    }
    int64_t div = 1;
    for (int i = 0; i < exp; i++)
        div *= 10;
    const char *sign = minor < 0 ? "-" : "";
    uint64_t a = minor < 0 ? (uint64_t)0 - (uint64_t)minor : (uint64_t)minor;
    char frac[8];
    uint64_t f = a % (uint64_t)div;
    for (int i = exp - 1; i >= 0; i--, f /= 10)
        frac[i] = (char)('0' + f % 10);
    frac[exp] = '\0';
    snprintf(out, cap, "%s%llu.%s %s", sign, (unsigned long long)(a / (uint64_t)div), frac, currency);
}

static bool code_ok(const char *code)
{
    size_t n = strlen(code);
    if (n == 0 || n > OTP_CODE_MAX)
        return false;
    for (const char *c = code; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || *c == '-'))
            return false;
    return true;
}

typedef struct rendered {
    char title[64];
    char *text; /* owned */
    const char *subject;
    const char *requested_channel;
} rendered_t;

/* 1 rendered, 0 not a type we notify, -1 unusable payload (why set). */
static int render(const envelope_t *e, json_object *pl, rendered_t *r, char *why, size_t cap)
{
    const char *subject = json_get_str(pl, "subject");
    r->subject = subject && *subject ? subject : e->tenant;
    r->requested_channel = "";
    char amount[64], total[64];
    int64_t v = 0;
    const char *currency = json_get_str(pl, "currency");
    const char *pid = json_get_str(pl, "paymentId");
    const char *order = json_get_str(pl, "orderId");

    if (strcmp(e->type, "auth.otp.requested") == 0) {
        const char *code = json_get_str(pl, "code");
        if (!subject || !*subject || !code || !code_ok(code)) {
            snprintf(why, cap, "auth.otp.requested: subject and an alphanumeric code are required");
            return -1;
        }
        const char *ch = json_get_str(pl, "channel");
        r->requested_channel = ch ? ch : "";
        snprintf(r->title, sizeof r->title, "Your login code");
        r->text = xasprintf("Your login code is %s. If you did not ask for it, ignore this message.", code);
        return 1;
    }
    if (strncmp(e->type, "payment.", 8) == 0 && (!pid || !uuid_valid(pid))) {
        if (strcmp(e->type, "payment.succeeded") == 0 || strcmp(e->type, "payment.failed") == 0 ||
            strcmp(e->type, "payment.refunded") == 0) {
            snprintf(why, cap, "%s: paymentId missing or not a UUID", e->type);
            return -1;
        }
        return 0;
    }
    if (strcmp(e->type, "payment.succeeded") == 0) {
        if (!json_get_int64(pl, "amount", &v) || !currency) {
            snprintf(why, cap, "payment.succeeded: amount and currency are required");
            return -1;
        }
        money(v, currency, amount, sizeof amount);
        snprintf(r->title, sizeof r->title, "Payment received");
        r->text = xasprintf("We received your payment of %s%s%s (payment %s). Thank you.", amount,
                            order ? " for order " : "", order ? order : "", pid);
        return 1;
    }
    if (strcmp(e->type, "payment.failed") == 0) {
        const char *reason = json_get_str(pl, "reason");
        if (json_get_int64(pl, "amount", &v) && currency)
            money(v, currency, amount, sizeof amount);
        else
            amount[0] = '\0';
        snprintf(r->title, sizeof r->title, "Payment failed");
        r->text = xasprintf("Your payment%s%s%s%s could not be completed: %s (payment %s).", amount[0] ? " of " : "",
                            amount, order ? " for order " : "", order ? order : "", reason ? reason : "declined", pid);
        return 1;
    }
    if (strcmp(e->type, "payment.refunded") == 0) {
        int64_t sum = 0;
        if (!json_get_int64(pl, "amount", &v)) {
            snprintf(why, cap, "payment.refunded: amount is required");
            return -1;
        }
        money(v, currency, amount, sizeof amount);
        snprintf(r->title, sizeof r->title, "Refund issued");
        if (json_get_int64(pl, "refunded", &sum)) {
            money(sum, currency, total, sizeof total);
            r->text = xasprintf("A refund of %s was issued for payment %s%s%s; %s refunded in total.", amount, pid,
                                order ? ", order " : "", order ? order : "", total);
        } else {
            r->text = xasprintf("A refund of %s was issued for payment %s%s%s.", amount, pid, order ? ", order " : "",
                                order ? order : "");
        }
        return 1;
    }
    return 0; /* another type of our topics: nothing to send */
}

/* ---- the deliveries table ---- */

typedef struct mem_deliveries {
    notification_delivery_t *rows; /* arrival order */
    size_t n, cap;
    strmap_t by_key; /* message id "/" channel -> present */
} mem_deliveries_t;

static void *mem_make(void)
{
    mem_deliveries_t *m = xcalloc(1, sizeof *m);
    strmap_init(&m->by_key);
    return m;
}

static void delivery_clear(notification_delivery_t *d)
{
    free(d->tenant);
    free(d->subject);
    free(d->type);
    free(d->status);
    free(d->detail);
}

static void mem_free(void *p)
{
    mem_deliveries_t *m = p;
    for (size_t i = 0; i < m->n; i++)
        delivery_clear(&m->rows[i]);
    free(m->rows);
    strmap_free(&m->by_key);
    free(m);
}

static mem_deliveries_t *mem_table(db_t *tx)
{
    return db_mem_slot(tx, MEM_SLOT_NOTIFICATION, mem_make, mem_free);
}

static void undo_record(void *arg)
{
    mem_deliveries_t *m = arg;
    notification_delivery_t *d = &m->rows[--m->n];
    char k[64];
    size_t kl = delivery_key(d->message_id, d->channel, k, sizeof k);
    strmap_del(&m->by_key, k, kl, NULL);
    delivery_clear(d);
}

static const char sql_seen[] =
    "SELECT $1::text, channel, NULL::text, NULL::text FROM notification.deliveries WHERE message_id = $1::uuid"
    " UNION ALL SELECT $1::text, channel, status, detail FROM notification.sent_marks WHERE message_id = $1::uuid";
static const char sql_record[] =
    "INSERT INTO notification.deliveries (message_id, channel, tenant, subject, type, status, detail)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id, channel) DO NOTHING";

/* Which channels already have a row for this message (bit per channel). 0 or -1. */
static int recorded(db_t *tx, const char *msg_id, unsigned *bits)
{
    *bits = 0;
    if (tx->kind == DB_MEMORY) {
        mem_deliveries_t *m = mem_table(tx);
        for (int ch = 0; ch < CH_COUNT; ch++) {
            char k[64];
            size_t kl = sent_key(msg_id, (channel_t)ch, k, sizeof k);
            if (strmap_get(&m->by_key, k, kl))
                *bits |= 1u << ch;
        }
        return 0;
    }
    if (db_prepare(tx, DB_STMT_NOTIFY_SEEN, sql_seen, 1) != 0)
        return -1;
    const char *p[] = {msg_id};
    PGresult *r = db_exec_prepared(tx, DB_STMT_NOTIFY_SEEN, 1, p);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++)
        read_row(r, i, 0, msg_id, bits, NULL);
    PQclear(r);
    return 0;
}

static int record(db_t *tx, const notify_msg_t *m, channel_t ch, const char *status, const char *detail)
{
    if (tx->kind == DB_MEMORY) {
        mem_deliveries_t *t = mem_table(tx);
        char k[64];
        size_t kl = sent_key(m->message_id, ch, k, sizeof k);
        bool created;
        strmap_put(&t->by_key, k, kl, &created);
        if (!created)
            return 0;
        if (t->n == t->cap) {
            t->cap = t->cap ? t->cap * 2 : 256;
            t->rows = xrealloc(t->rows, t->cap * sizeof *t->rows);
        }
        notification_delivery_t *d = &t->rows[t->n++];
        memset(d, 0, sizeof *d);
        snprintf(d->message_id, sizeof d->message_id, "%s", m->message_id);
        snprintf(d->channel, sizeof d->channel, "%s", channel_names[ch]);
        d->tenant = xstrdup(m->tenant);
        d->subject = xstrdup(m->subject);
        d->type = xstrdup(m->type);
        d->status = xstrdup(status);
        d->detail = xstrdup(detail);
        d->created_ms = clock_now_ms();
        db_mem_undo(tx, undo_record, t, NULL);
        return 0;
    }
    if (db_prepare(tx, DB_STMT_NOTIFY_RECORD, sql_record, 7) != 0)
        return -1;
    const char *p[] = {m->message_id, channel_names[ch], m->tenant, m->subject, m->type, status, detail};
    PGresult *r = db_exec_prepared(tx, DB_STMT_NOTIFY_RECORD, 7, p);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* ---- delivering ---- */

/* A batch's delivery records, as the columns of one INSERT (binary arrays). */
#define RECORD_COLS 7
typedef struct record_batch {
    pg_array_t col[RECORD_COLS]; /* message_id, channel, tenant, subject, type, status, detail */
    uint32_t n;
    bool bad; /* a message id that is not a UUID: the batch goes one at a time */
} record_batch_t;

static void batch_add(record_batch_t *b, const notify_msg_t *m, channel_t ch, const char *status, const char *detail);

static void count_delivery(channel_t ch, const char *outcome)
{
    char labels[64];
    snprintf(labels, sizeof labels, "channel=\"%s\",outcome=\"%s\"", channel_names[ch], outcome);
    metrics_add(
        metrics_counter("ecom_notification_deliveries_total", "Notification deliveries by channel and outcome", labels),
        1);
}

/* A send's admission by its channel's breaker, and that breaker: the
 * outcome is recorded on the breaker that admitted it, even when the
 * settings were replaced meanwhile. */
typedef struct guard {
    breaker_t *b;
    breaker_permit_t permit;
} guard_t;

/* The breaker's permit for a send on networked channel ch; false (error
 * set) when the breaker refuses. */
static bool guard_begin(channel_t ch, guard_t *g, char *error, size_t cap)
{
    g->b = channel_breaker(ch);
    if (breaker_acquire(g->b, &g->permit))
        return true;
    snprintf(error, cap, "%s circuit open", channel_names[ch]);
    return false;
}

/* Records the outcome o of a send on ch that took ms with its breaker:
 * SVC_OK, or SVC_DEFER (error set) when the breaker suspects an outage. */
static svc_result_t guard_end(channel_t ch, guard_t *g, notify_outcome_t o, const char *detail, int64_t ms, char *error,
                              size_t cap)
{
    breaker_outcome_t bo = o == NOTIFY_SENT ? BREAKER_SUCCESS : o == NOTIFY_FAILED ? BREAKER_FAILURE : BREAKER_IGNORED;
    breaker_record(g->b, &g->permit, bo, ms);
    if (o == NOTIFY_FAILED && (g->permit.trial || breaker_state(g->b) != BREAKER_CLOSED)) {
        count_delivery(ch, "failed");
        snprintf(error, cap, "%s circuit open: %.200s", channel_names[ch], detail);
        return SVC_DEFER;
    }
    return SVC_OK;
}

static webhook_target_t webhook_target(const settings_t *st)
{
    return (webhook_target_t){
        .host = st->webhook_host, .port = st->webhook_port, .path = st->webhook_path, .secret = st->webhook_secret};
}

/* Sends through a networked channel behind its breaker. SVC_OK with *o set,
 * or SVC_DEFER when the breaker refuses or suspects an outage. */
static svc_result_t send_guarded(svc_ctx_t *c, channel_t ch, const notify_msg_t *m, notify_outcome_t *o, char *detail,
                                 size_t cap)
{
    const settings_t *st = current_settings();
    guard_t g;
    if (!guard_begin(ch, &g, c->error, sizeof c->error))
        return SVC_DEFER;
    int64_t t0 = clock_mono_ms();
    if (ch == CH_WEBHOOK) {
        webhook_target_t t = webhook_target(st);
        *o = notification_webhook_deliver(m, &t, st->timeout_ms, detail, cap);
    } else {
        smtp_target_t t = {.host = st->smtp_host, .port = st->smtp_port, .from = st->smtp_from};
        *o = notification_smtp_deliver(m, &t, st->timeout_ms, detail, cap);
    }
    return guard_end(ch, &g, *o, detail, clock_mono_ms() - t0, c->error, sizeof c->error);
}

/* The networked sends of one message made ahead of its delivery (a batch's
 * sends run side by side, then the batch is delivered in order). */
typedef struct presend {
    unsigned have; /* bits of the channels sent ahead */
    notify_outcome_t o[CH_COUNT];
    svc_result_t r[CH_COUNT]; /* send_guarded's result */
    char detail[CH_COUNT][256];
    char error[256]; /* the error of a result other than SVC_OK */
} presend_t;

/* Delivers m on every configured channel not in done (bits of channels
 * recorded before), recording each delivery now, or into batch when given
 * (written by handle_batch after the whole batch). pre: its sends made
 * ahead, or NULL. */
static svc_result_t deliver(svc_ctx_t *c, const notify_msg_t *m, unsigned done, record_batch_t *batch,
                            const presend_t *pre, marks_t *k)
{
    const settings_t *st = current_settings();
    for (int i = 0; i < st->n; i++) {
        channel_t ch = st->order[i];
        if (done & (1u << ch))
            continue; /* recorded by an earlier delivery of this message */
        char detail[256] = "";
        notify_outcome_t o;
        bool recalled = false;
        if (pre && (pre->have & (1u << ch))) {
            if (pre->r[ch] != SVC_OK) {
                snprintf(c->error, sizeof c->error, "%s", pre->error);
                return pre->r[ch];
            }
            o = pre->o[ch];
            snprintf(detail, sizeof detail, "%s", pre->detail[ch]);
        } else if (sent_recall(m->message_id, ch, &o, detail, sizeof detail)) {
            recalled = true; /* its outcome is known: not sent again */
        } else if (ch == CH_LOG) {
            o = notification_log_deliver(m, st->sink_file, detail, sizeof detail);
        } else {
            uint64_t attempt = svc_attempt();
            svc_tried_t t;
            svc_result_t r;
            if (tried_recall(attempt, m->message_id, ch, &t)) { /* failed in this attempt: not asked again */
                r = t.r;
                o = (notify_outcome_t)t.outcome;
                snprintf(detail, sizeof detail, "%s", t.detail);
                snprintf(c->error, sizeof c->error, "%s", t.error);
            } else {
                r = send_guarded(c, ch, m, &o, detail, sizeof detail);
                tried_remember(attempt, m->message_id, ch, r, o, detail, c->error);
            }
            if (r != SVC_OK)
                return r;
        }
        const char *status = NULL;
        if (!recalled)
            sent_remember(m->message_id, ch, o, detail);
        if (networked(ch))
            marks_add(k, m->message_id, ch, o, detail); /* kept if the message does not commit */
        switch (o) {
        case NOTIFY_SENT:
            status = "sent";
            break;
        case NOTIFY_SKIPPED: status = "skipped"; break;
        case NOTIFY_REFUSED:
            status = "failed";
            log_warn("notification via %s refused for good: %s", channel_names[ch], detail);
            break;
        case NOTIFY_REJECTED:
        case NOTIFY_FAILED:
            count_delivery(ch, "failed");
            snprintf(c->error, sizeof c->error, "%s: %.200s", channel_names[ch], detail);
            return SVC_RETRY;
        }
        count_delivery(ch, status);
        if (batch) {
            batch_add(batch, m, ch, status, detail);
            continue;
        }
        if (record(c->tx, m, ch, status, detail) != 0) {
            snprintf(c->error, sizeof c->error, "recording the %s delivery failed (sqlstate %s)", channel_names[ch],
                     pg_last_sqlstate());
            return SVC_RETRY;
        }
    }
    return SVC_OK;
}

/* The message to deliver for envelope e, rendered as r (borrowed from both). */
static notify_msg_t message_of(const envelope_t *e, const rendered_t *r)
{
    return (notify_msg_t){.message_id = e->id,
                          .tenant = e->tenant,
                          .subject = r->subject,
                          .type = e->type,
                          .title = r->title,
                          .text = r->text,
                          .requested_channel = r->requested_channel,
                          .at_ms = e->ts};
}

static svc_result_t handle(svc_ctx_t *c, void *arg)
{
    (void)arg;
    const envelope_t *e = c->msg;
    rendered_t r = {0};
    char why[200];
    int rc = render(e, c->payload, &r, why, sizeof why);
    if (rc == 0)
        return SVC_OK;
    if (rc < 0) {
        snprintf(c->error, sizeof c->error, "%s", why);
        return SVC_REJECT;
    }
    notify_msg_t m = message_of(e, &r);
    unsigned done = 0;
    svc_result_t res = SVC_RETRY;
    marks_t k = {0};
    if (recorded(c->tx, m.message_id, &done) != 0)
        snprintf(c->error, sizeof c->error, "reading deliveries failed (sqlstate %s)", pg_last_sqlstate());
    else
        res = deliver(c, &m, done, NULL, NULL, &k);
    if (res != SVC_OK && c->tx->kind == DB_PG)
        marks_write(c->tx->url, &k);
    marks_free(&k);
    free(r.text);
    return res;
}

static const char sql_seen_many[] =
    "SELECT message_id, channel, NULL::text, NULL::text FROM notification.deliveries WHERE message_id = ANY($1::uuid[])"
    " UNION ALL SELECT message_id, channel, status, detail FROM notification.sent_marks"
    " WHERE message_id = ANY($1::uuid[])";
static const char sql_record_many[] =
    "INSERT INTO notification.deliveries (message_id, channel, tenant, subject, type, status, detail)"
    " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
    " ON CONFLICT (message_id, channel) DO NOTHING";

/* The channels recorded for each of the batch's messages, in one statement:
 * map from the lower-case message id to the bits (stored as the pointer).
 * 0 or -1. */
/* Into done: message id -> bits of its recorded channels; into marks: what
 * earlier attempts' sends did (read_row). */
static int recorded_many(db_t *tx, const envelope_t *const *msgs, size_t n, strmap_t *done, strmap_t *marks)
{
    pg_array_t ids = {0};
    pg_array_begin(&ids, PG_OID_UUID, n);
    for (size_t i = 0; i < n; i++)
        if (pg_array_uuid(&ids, msgs[i]->id) != 0) {
            pg_array_free(&ids);
            return -1; /* one at a time, the bad id is reported where it belongs */
        }
    const char *val[1];
    int len[1], fmt[1];
    pg_array_params(&ids, 1, (uint32_t)n, val, len, fmt);
    /* prepared on the runtime's index-scan connections, else planned for this array */
    PGresult *r = db_exec_lookup(tx, DB_STMT_NOTIFY_SEEN_MANY, sql_seen_many, 1, val, len, fmt, NULL);
    pg_array_free(&ids);
    if (!r)
        return -1;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = PQgetvalue(r, i, 0);
        void **v = strmap_put(done, id, strlen(id), NULL);
        unsigned bits = (unsigned)(uintptr_t)*v;
        read_row(r, i, 0, id, &bits, marks);
        *v = (void *)(uintptr_t)bits;
    }
    PQclear(r);
    return 0;
}

static void batch_add(record_batch_t *b, const notify_msg_t *m, channel_t ch, const char *status, const char *detail)
{
    if (pg_array_uuid(&b->col[0], m->message_id) != 0) {
        b->bad = true;
        return;
    }
    pg_array_text(&b->col[1], channel_names[ch]);
    pg_array_text(&b->col[2], m->tenant);
    pg_array_text(&b->col[3], m->subject);
    pg_array_text(&b->col[4], m->type);
    pg_array_text(&b->col[5], status);
    pg_array_text(&b->col[6], detail);
    b->n++;
}

/* Writes the batch's records in one statement. 0 or -1. */
static int batch_write(db_t *tx, record_batch_t *b)
{
    if (b->bad)
        return -1;
    if (b->n == 0)
        return 0;
    const char *vals[RECORD_COLS];
    int lens[RECORD_COLS], fmts[RECORD_COLS];
    pg_array_params(b->col, RECORD_COLS, b->n, vals, lens, fmts); /* begun for 0 elements */
    /* held back to go with the COMMIT: one round trip for both */
    return db_defer(tx, DB_STMT_NOTIFY_RECORD_MANY, sql_record_many, RECORD_COLS, vals, lens, fmts, NULL);
}

/* ---- a batch's sends, side by side ---- */

#define SEND_THREADS 16 /* with smtp: networked sends side by side (+ the calling thread) */

typedef struct ahead {
    uint64_t attempt;       /* svc_attempt() of the batch's thread */
    size_t n;               /* messages of the batch */
    const envelope_t *const *msgs;
    rendered_t *r;          /* rendered[i]; text NULL when not notified */
    unsigned *done;         /* channels recorded before, per message */
    presend_t *pre;         /* per message */
    size_t *order, ngroups; /* message indices grouped by aggregate, batch order within */
    size_t *group_start;    /* group g is order[group_start[g] .. group_start[g + 1]) */
    /* webhooks only (send_webhooks) */
    size_t *cursor;            /* per group: its next position in order */
    guard_t *guard;            /* per message */
    notify_msg_t *msg;         /* per message, while its webhook is out */
} ahead_t;

/* Sends the messages of one aggregate, in order, on their networked
 * channels; stops at the first that does not go (the later ones wait for
 * it, as they would delivered one at a time). What was sent is remembered at
 * once, so a batch that fails later does not send it again. */
static void send_group(void *arg, size_t g)
{
    ahead_t *a = arg;
    for (size_t k = a->group_start[g]; k < a->group_start[g + 1]; k++) {
        size_t i = a->order[k];
        const envelope_t *e = a->msgs[i];
        notify_msg_t m = message_of(e, &a->r[i]);
        presend_t *p = &a->pre[i];
        log_ctx_t lc;
        char trace[33];
        svc_log_ctx(&lc, trace, e);
        const log_ctx_t *prev = log_ctx_set(&lc);
        bool stop = false;
        const settings_t *st = current_settings();
        for (int x = 0; x < st->n && !stop; x++) {
            channel_t ch = st->order[x];
            if (!networked(ch) || (a->done[i] & (1u << ch)) || (p->have & (1u << ch)) || sent_known(m.message_id, ch))
                continue;
            svc_ctx_t c = {.msg = e, .group = "notification"};
            p->have |= 1u << ch;
            svc_tried_t t;
            if (tried_recall(a->attempt, m.message_id, ch, &t)) { /* failed in this attempt: not asked again */
                p->r[ch] = t.r;
                p->o[ch] = (notify_outcome_t)t.outcome;
                snprintf(p->detail[ch], sizeof p->detail[ch], "%s", t.detail);
                snprintf(c.error, sizeof c.error, "%s", t.error);
            } else {
                p->r[ch] = send_guarded(&c, ch, &m, &p->o[ch], p->detail[ch], sizeof p->detail[ch]);
                tried_remember(a->attempt, m.message_id, ch, p->r[ch], p->o[ch], p->detail[ch], c.error);
            }
            if (p->r[ch] != SVC_OK) {
                snprintf(p->error, sizeof p->error, "%s", c.error);
                stop = true;
            } else if (final_outcome(p->o[ch])) {
                sent_remember(m.message_id, ch, p->o[ch], p->detail[ch]);
            } else {
                stop = true; /* rejected or failed: the later ones of the aggregate wait for it */
            }
        }
        log_ctx_set(prev);
        if (stop)
            break;
    }
}

/* ---- webhooks only: side by side from this thread ---- */

#define WEBHOOK_CONNS 32 /* webhooks of a batch out at once, a connection each */

static const notify_msg_t *webhook_next(void *arg, size_t g, size_t *item)
{
    ahead_t *a = arg;
    while (a->cursor[g] < a->group_start[g + 1]) {
        size_t i = a->order[a->cursor[g]++];
        const envelope_t *e = a->msgs[i];
        presend_t *p = &a->pre[i];
        if ((a->done[i] & (1u << CH_WEBHOOK)) || (p->have & (1u << CH_WEBHOOK)) || sent_known(e->id, CH_WEBHOOK))
            continue;
        p->have |= 1u << CH_WEBHOOK;
        svc_tried_t t;
        if (tried_recall(a->attempt, e->id, CH_WEBHOOK, &t)) { /* failed in this attempt: not asked again */
            p->r[CH_WEBHOOK] = t.r;
            p->o[CH_WEBHOOK] = (notify_outcome_t)t.outcome;
            snprintf(p->detail[CH_WEBHOOK], sizeof p->detail[CH_WEBHOOK], "%s", t.detail);
            snprintf(p->error, sizeof p->error, "%s", t.error);
            a->cursor[g] = a->group_start[g + 1]; /* the later ones of the aggregate wait for it */
            return NULL;
        }
        log_ctx_t lc;
        char trace[33];
        svc_log_ctx(&lc, trace, e);
        const log_ctx_t *prev = log_ctx_set(&lc);
        bool permitted = guard_begin(CH_WEBHOOK, &a->guard[i], p->error, sizeof p->error);
        log_ctx_set(prev);
        if (!permitted) {
            p->r[CH_WEBHOOK] = SVC_DEFER;
            a->cursor[g] = a->group_start[g + 1]; /* the later ones of the aggregate wait for it */
            return NULL;
        }
        a->msg[i] = message_of(e, &a->r[i]);
        *item = i;
        return &a->msg[i];
    }
    return NULL;
}

static void webhook_answered(void *arg, size_t g, size_t i, notify_outcome_t o, const char *detail, int64_t ms)
{
    ahead_t *a = arg;
    presend_t *p = &a->pre[i];
    log_ctx_t lc;
    char trace[33];
    svc_log_ctx(&lc, trace, a->msgs[i]);
    const log_ctx_t *prev = log_ctx_set(&lc);
    p->o[CH_WEBHOOK] = o;
    snprintf(p->detail[CH_WEBHOOK], sizeof p->detail[CH_WEBHOOK], "%s", detail);
    p->r[CH_WEBHOOK] = guard_end(CH_WEBHOOK, &a->guard[i], o, detail, ms, p->error, sizeof p->error);
    tried_remember(a->attempt, a->msgs[i]->id, CH_WEBHOOK, p->r[CH_WEBHOOK], o, detail, p->error);
    if (p->r[CH_WEBHOOK] == SVC_OK && final_outcome(o))
        sent_remember(a->msgs[i]->id, CH_WEBHOOK, o, detail);
    else
        a->cursor[g] = a->group_start[g + 1]; /* rejected or failed: the later ones of the aggregate wait for it */
    log_ctx_set(prev);
}

/* Makes the batch's webhooks (the only networked channel) from this
 * thread: a group per connection, WEBHOOK_CONNS at once. */
static void send_webhooks(ahead_t *a)
{
    a->cursor = xmalloc((a->ngroups + 1) * sizeof *a->cursor);
    for (size_t g = 0; g < a->ngroups; g++)
        a->cursor[g] = a->group_start[g];
    a->guard = xcalloc(a->n, sizeof *a->guard);
    a->msg = xcalloc(a->n, sizeof *a->msg);
    const settings_t *st = current_settings();
    webhook_target_t t = webhook_target(st);
    webhook_many_t w = {.t = &t,
                        .timeout_ms = st->timeout_ms,
                        .ngroups = a->ngroups,
                        .conns = WEBHOOK_CONNS,
                        .next = webhook_next,
                        .answered = webhook_answered,
                        .arg = a};
    notification_webhook_deliver_many(&w);
    free(a->cursor);
    free(a->guard);
    free(a->msg);
}

static workpool_t *send_pool;
static pthread_once_t send_once = PTHREAD_ONCE_INIT;

static void send_pool_make(void)
{
    send_pool = workpool_new(SEND_THREADS, 0); /* lives as long as the process */
}

/* Groups the messages that have networked sends to make by aggregate and
 * makes them: webhooks alone from this thread (send_webhooks); with smtp
 * (a conversation of several steps, blocking), a group per thread of the
 * pool. */
static void send_ahead(ahead_t *a)
{
    const settings_t *st = current_settings();
    bool any_net = false;
    for (int x = 0; x < st->n; x++)
        any_net = any_net || networked(st->order[x]);
    if (!any_net)
        return;
    a->order = xmalloc((a->n + 1) * sizeof *a->order);
    a->group_start = xmalloc((a->n + 1) * sizeof *a->group_start);
    strmap_t first; /* tenant \0 aggregate -> group index + 1 */
    strmap_init(&first);
    size_t *group_of = xmalloc((a->n + 1) * sizeof *group_of), *count = xcalloc(a->n + 1, sizeof *count);
    size_t m = 0;
    for (size_t i = 0; i < a->n; i++) {
        group_of[i] = SIZE_MAX;
        if (!a->r[i].text)
            continue;
        const envelope_t *e = a->msgs[i];
        size_t tl = strlen(e->tenant), al = strlen(e->aggregate_id);
        char *key = xmalloc(tl + al + 2);
        memcpy(key, e->tenant, tl + 1);
        memcpy(key + tl + 1, e->aggregate_id, al + 1);
        bool created;
        void **v = strmap_put(&first, key, tl + al + 1, &created);
        free(key);
        if (created)
            *v = (void *)(uintptr_t)++a->ngroups;
        group_of[i] = (uintptr_t)*v - 1;
        count[group_of[i]]++;
        m++;
    }
    a->group_start[0] = 0;
    for (size_t g = 0; g < a->ngroups; g++)
        a->group_start[g + 1] = a->group_start[g] + count[g];
    memset(count, 0, (a->n + 1) * sizeof *count);
    for (size_t i = 0; i < a->n; i++)
        if (group_of[i] != SIZE_MAX)
            a->order[a->group_start[group_of[i]] + count[group_of[i]]++] = i;
    free(group_of);
    free(count);
    strmap_free(&first);
    if (m == 0)
        return;
    bool smtp = false;
    for (int x = 0; x < st->n; x++)
        smtp = smtp || st->order[x] == CH_SMTP;
    if (!smtp) {
        send_webhooks(a);
        return;
    }
    pthread_once(&send_once, send_pool_make);
    workpool_run(send_pool, a->ngroups, send_group, a);
}

/* A batch in two statements around the sends: which deliveries exist, then
 * every new one at once (two statements per message before). The networked
 * sends go side by side (each aggregate's messages in order), then
 * the batch is delivered and recorded in order. A send that fails fails the
 * batch; the runtime applies it again by halves, and what was sent or
 * refused for good meanwhile is not asked again: the rolled-back batch
 * marks every send it made (notification.sent_marks), and the halves read
 * the marks with the deliveries and keep them with the batch (ahead_t.pre). */
static svc_result_t handle_batch(db_t *tx, const envelope_t *const *msgs, json_object *const *payloads, size_t n,
                                 void *arg)
{
    if (tx->kind == DB_MEMORY) {
        for (size_t i = 0; i < n; i++) {
            svc_ctx_t c = {.tx = tx, .msg = msgs[i], .payload = payloads[i], .group = "notification"};
            svc_result_t r = handle(&c, arg);
            if (r != SVC_OK) {
                svc_batch_failed_with(i, r, c.error); /* not sent again alone in this attempt */
                return r;
            }
        }
        return SVC_OK;
    }
    strmap_t done, marks;
    strmap_init(&done);
    strmap_init(&marks);
    record_batch_t b = {0};
    for (int k = 0; k < RECORD_COLS; k++)
        pg_array_begin(&b.col[k], k == 0 ? PG_OID_UUID : PG_OID_TEXT, 0);
    ahead_t a = {.attempt = svc_attempt(),
                 .n = n,
                 .msgs = msgs,
                 .r = xcalloc(n, sizeof *a.r),
                 .done = xcalloc(n, sizeof *a.done),
                 .pre = xcalloc(n, sizeof *a.pre)};
    svc_result_t res = recorded_many(tx, msgs, n, &done, &marks) == 0 ? SVC_OK : SVC_RETRY;
    for (size_t i = 0; i < n && res == SVC_OK; i++) {
        char why[200];
        int rc = render(msgs[i], payloads[i], &a.r[i], why, sizeof why);
        if (rc <= 0) {
            free(a.r[i].text);
            a.r[i].text = NULL;
            if (rc < 0) {
                res = SVC_REJECT;
                svc_batch_failed_with(i, res, why);
            }
            continue;
        }
        char low[UUID_STR_LEN];
        uuid_lower(msgs[i]->id, low); /* a UUID: recorded_many checked every id of the batch */
        void **bits = strmap_get(&done, low, 36);
        a.done[i] = bits ? (unsigned)(uintptr_t)*bits : 0;
        /* what an earlier attempt's sends did stands as this batch's sends:
         * kept with the batch, not in the memory of recent sends, which a
         * batch of SERVICE_BATCH messages on several lanes outgrows */
        for (int ch = 0; ch < CH_COUNT; ch++) {
            char k[64];
            size_t kl = networked((channel_t)ch) ? sent_key(low, (channel_t)ch, k, sizeof k) : 0;
            void **rec = kl ? strmap_get(&marks, k, kl) : NULL;
            if (!rec || (a.done[i] & (1u << ch)))
                continue;
            const sent_rec_t *sr = *rec;
            presend_t *p = &a.pre[i];
            p->have |= 1u << ch;
            p->r[ch] = SVC_OK;
            p->o[ch] = sr->o;
            snprintf(p->detail[ch], sizeof p->detail[ch], "%.220s (an earlier attempt)", sr->detail);
        }
    }
    if (res == SVC_OK)
        send_ahead(&a);
    for (size_t i = 0; i < n && res == SVC_OK; i++) {
        const envelope_t *e = msgs[i];
        if (!a.r[i].text)
            continue;
        log_ctx_t lc;
        char trace[33];
        svc_log_ctx(&lc, trace, e);
        const log_ctx_t *prev = log_ctx_set(&lc);
        notify_msg_t m = message_of(e, &a.r[i]);
        svc_ctx_t c = {.tx = tx, .msg = e, .payload = payloads[i], .group = "notification"};
        res = deliver(&c, &m, a.done[i], &b, &a.pre[i], NULL);
        if (res != SVC_OK) {
            log_debug("notification batch: %s", c.error);
            svc_batch_failed_with(i, res, c.error); /* its sends' outcome: not sent again alone */
        }
        log_ctx_set(prev);
    }
    if (res == SVC_OK && batch_write(tx, &b) != 0)
        res = SVC_RETRY;
    if (res != SVC_OK) {
        /* the batch rolls back: what every send of it did is kept for the
         * next attempts, those of the halves the runtime applies it in
         * again included. (The memory of recent sends alone does not cover
         * them: a batch of up to SERVICE_BATCH messages on several channels
         * and lanes holds more sends than it keeps.) */
        marks_t k = {0};
        for (size_t i = 0; i < n; i++) {
            const presend_t *p = &a.pre[i];
            for (int ch = 0; ch < CH_COUNT; ch++)
                if ((p->have & (1u << ch)) && p->r[ch] == SVC_OK && final_outcome(p->o[ch]))
                    marks_add(&k, msgs[i]->id, (channel_t)ch, p->o[ch], p->detail[ch]);
        }
        marks_write(tx->url, &k);
        marks_free(&k);
    }
    for (size_t i = 0; i < n; i++)
        free(a.r[i].text);
    free(a.r);
    free(a.done);
    free(a.pre);
    free(a.order);
    free(a.group_start);
    for (int k = 0; k < RECORD_COLS; k++)
        pg_array_free(&b.col[k]);
    strmap_free(&done);
    marks_map_free(&marks);
    return res;
}

const svc_def_t *notification_service(void)
{
    static const char *const topics[] = {"auth", "payment", NULL};
    /* every type of those topics: the ones we do not notify about are
     * acknowledged and ignored (render), not dead-lettered; the payment
     * commands, the most frequent of them, without a transaction at all */
    static const char *const commands[] = {"payment.requested", "payment.refund.requested", NULL};
    /* concurrent: a delivery depends on its own message only; settings,
     * breakers and the recent-sends memory are guarded */
    static const svc_def_t def = {.group = "notification",
                                  .topics = topics,
                                  .types = NULL,
                                  .ignored_types = commands,
                                  .handle = handle,
                                  .handle_batch = handle_batch,
                                  .concurrent = true,
                                  .statement_first = true}; /* recorded_many, then the sends */
    return &def;
}

/* ---- queries ---- */

void notification_deliveries_free(notification_delivery_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++)
        delivery_clear(&d[i]);
    free(d);
}

int notification_list(db_t *db, const char *tenant, const char *subject, size_t limit, notification_delivery_t **out,
                      size_t *n)
{
    *out = NULL;
    *n = 0;
    notification_delivery_t *res = xcalloc(limit + 1, sizeof *res);
    size_t k = 0;
    if (db->kind == DB_MEMORY) {
        bool own = !db->in_tx; /* inside the caller's transaction when it has one */
        if (own && db_begin(db) != 0) {
            free(res);
            return -1;
        }
        mem_deliveries_t *m = mem_table(db);
        for (size_t i = m->n; i-- > 0 && k < limit;) {
            const notification_delivery_t *d = &m->rows[i];
            if (strcmp(d->tenant, tenant) != 0 || (subject && strcmp(d->subject, subject) != 0))
                continue;
            notification_delivery_t *o = &res[k++];
            *o = *d;
            o->tenant = xstrdup(d->tenant);
            o->subject = xstrdup(d->subject);
            o->type = xstrdup(d->type);
            o->status = xstrdup(d->status);
            o->detail = xstrdup(d->detail);
        }
        if (own && db_commit(db) != 0) {
            notification_deliveries_free(res, k);
            return -1;
        }
        *out = res;
        *n = k;
        return 0;
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    const char *p[] = {tenant, subject, lim};
    PGresult *r = pg_query(db_pg(db),
                           "SELECT message_id, channel, tenant, coalesce(subject, ''), coalesce(type, ''),"
                           " coalesce(status, ''), coalesce(detail, ''),"
                           " (extract(epoch FROM created_at) * 1000)::bigint"
                           " FROM notification.deliveries WHERE tenant = $1 AND ($2::text IS NULL OR subject = $2)"
                           " ORDER BY created_at DESC, message_id DESC, channel LIMIT $3",
                           3, p);
    if (!r) {
        free(res);
        return -1;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        notification_delivery_t *d = &res[k++];
        snprintf(d->message_id, sizeof d->message_id, "%s", PQgetvalue(r, i, 0));
        snprintf(d->channel, sizeof d->channel, "%s", PQgetvalue(r, i, 1));
        d->tenant = xstrdup(PQgetvalue(r, i, 2));
        d->subject = xstrdup(PQgetvalue(r, i, 3));
        d->type = xstrdup(PQgetvalue(r, i, 4));
        d->status = xstrdup(PQgetvalue(r, i, 5));
        d->detail = xstrdup(PQgetvalue(r, i, 6));
        d->created_ms = strtoll(PQgetvalue(r, i, 7), NULL, 10);
    }
    PQclear(r);
    *out = res;
    *n = k;
    return 0;
}

/* ---- pages of one subject's deliveries ---- */

#define PAGE_SELECT                                                                                                    \
    "SELECT message_id, channel, coalesce(subject, ''), coalesce(type, ''), coalesce(status, ''),"                     \
    " coalesce(detail, ''), (extract(epoch FROM created_at) * 1000000)::bigint"                                        \
    " FROM notification.deliveries WHERE tenant = $1 AND subject = $2"
#define PAGE_ORDER " ORDER BY created_at DESC, message_id DESC, channel DESC LIMIT $3"

/* created_at is always set (DEFAULT now(), never written); the row comparison
 * is one range of the (tenant, subject, created_at, message_id, channel) index */
const char notification_sql_page[] = PAGE_SELECT PAGE_ORDER;
const char notification_sql_page_after[] =
    PAGE_SELECT " AND (created_at, message_id, channel)"
                " < (to_timestamp(0) + $4::bigint * interval '1 microsecond', $5::uuid, $6::text)" PAGE_ORDER;

int notification_key_cmp(const notification_key_t *a, const notification_key_t *b)
{
    if (a->created_us != b->created_us)
        return a->created_us > b->created_us ? -1 : 1;
    int c = strcmp(a->message_id, b->message_id);
    if (c == 0)
        c = strcmp(a->channel, b->channel);
    return c > 0 ? -1 : c < 0 ? 1 : 0;
}

void notification_page_free(notification_page_row_t *rows, size_t n)
{
    for (size_t i = 0; i < n; i++)
        delivery_clear(&rows[i].d);
    free(rows);
}

void notification_page_row_from(const PGresult *res, int i, notification_page_row_t *row)
{
    memset(row, 0, sizeof *row);
    notification_delivery_t *d = &row->d;
    snprintf(d->message_id, sizeof d->message_id, "%s", PQgetvalue(res, i, 0));
    snprintf(d->channel, sizeof d->channel, "%s", PQgetvalue(res, i, 1));
    d->subject = xstrdup(PQgetvalue(res, i, 2));
    d->type = xstrdup(PQgetvalue(res, i, 3));
    d->status = xstrdup(PQgetvalue(res, i, 4));
    d->detail = xstrdup(PQgetvalue(res, i, 5));
    row->key.created_us = strtoll(PQgetvalue(res, i, 6), NULL, 10);
    d->created_ms = row->key.created_us / 1000;
    memcpy(row->key.message_id, d->message_id, sizeof row->key.message_id);
    memcpy(row->key.channel, d->channel, sizeof row->key.channel);
}

static void mem_key(const notification_delivery_t *d, notification_key_t *k)
{
    k->created_us = d->created_ms * 1000;
    memcpy(k->message_id, d->message_id, sizeof k->message_id);
    memcpy(k->channel, d->channel, sizeof k->channel);
}

typedef struct mem_hit {
    notification_key_t key;
    const notification_delivery_t *d;
} mem_hit_t;

static int hit_cmp(const void *a, const void *b)
{
    return notification_key_cmp(&((const mem_hit_t *)a)->key, &((const mem_hit_t *)b)->key);
}

/* The memory table is in arrival order, which a clock step could make differ
 * from key order: the subject's rows after the key are sorted, then cut. */
static void mem_page(db_t *db, const char *tenant, const char *subject, const notification_key_t *after, size_t limit,
                     notification_page_row_t *res, size_t *k)
{
    mem_deliveries_t *m = mem_table(db);
    mem_hit_t *hits = NULL;
    size_t nh = 0, cap = 0;
    for (size_t i = 0; i < m->n; i++) {
        const notification_delivery_t *d = &m->rows[i];
        if (strcmp(d->tenant, tenant) != 0 || strcmp(d->subject, subject) != 0)
            continue;
        mem_hit_t h = {.d = d};
        mem_key(d, &h.key);
        if (after && notification_key_cmp(&h.key, after) <= 0)
            continue;
        if (nh == cap) {
            cap = cap ? cap * 2 : 64;
            hits = xrealloc(hits, cap * sizeof *hits);
        }
        hits[nh++] = h;
    }
    if (nh > 1)
        qsort(hits, nh, sizeof *hits, hit_cmp);
    for (size_t i = 0; i < nh && *k < limit; i++) {
        notification_page_row_t *o = &res[(*k)++];
        const notification_delivery_t *d = hits[i].d;
        o->d = *d;
        o->d.tenant = xstrdup(d->tenant);
        o->d.subject = xstrdup(d->subject);
        o->d.type = xstrdup(d->type);
        o->d.status = xstrdup(d->status);
        o->d.detail = xstrdup(d->detail);
        o->key = hits[i].key;
    }
    free(hits);
}

int notification_page(db_t *db, const char *tenant, const char *subject, const notification_key_t *after, size_t limit,
                      notification_page_row_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    notification_page_row_t *res = xcalloc(limit + 1, sizeof *res);
    size_t k = 0;
    if (db->kind == DB_MEMORY) {
        bool own = !db->in_tx; /* inside the caller's transaction when it has one */
        if (own && db_begin(db) != 0) {
            free(res);
            return -1;
        }
        mem_page(db, tenant, subject, after, limit, res, &k);
        if (own && db_commit(db) != 0) {
            notification_page_free(res, k);
            return -1;
        }
        *out = res;
        *n = k;
        return 0;
    }
    char lim[24], us[24];
    snprintf(lim, sizeof lim, "%zu", limit);
    PGresult *r;
    if (after) {
        snprintf(us, sizeof us, "%lld", (long long)after->created_us);
        const char *p[] = {tenant, subject, lim, us, after->message_id, after->channel};
        r = pg_query(db_pg(db), notification_sql_page_after, 6, p);
    } else {
        const char *p[] = {tenant, subject, lim};
        r = pg_query(db_pg(db), notification_sql_page, 3, p);
    }
    if (!r) {
        free(res);
        return -1;
    }
    for (int i = 0; i < PQntuples(r) && k < limit; i++)
        notification_page_row_from(r, i, &res[k++]);
    PQclear(r);
    *out = res;
    *n = k;
    return 0;
}
