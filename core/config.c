/* core/config.c: see config.h. */
#include "core/config.h"

#include "core/alloc.h"
#include "core/errlist.h"
#include "core/log.h"
#include "core/redis.h"

#include <libpq-fe.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

typedef enum { T_STR, T_INT, T_BOOL, T_ENUM, T_URL } ctype_t;

typedef struct citem {
    const char *name;
    ctype_t type;
    size_t off;
    const char *def;  /* goes through the same parser */
    long min, max;    /* T_INT bounds; */
    const char *opts; /* T_ENUM: "a|b|c"; T_URL: accepted schemes "postgres|postgresql" */
    const char *doc;
} citem_t;

#define F(field) offsetof(config_t, field)

static const citem_t items[] = {
    {"APP_ENV", T_ENUM, F(app_env), "production", 0, 0, "development|production|test",
     "development enables dev-only conveniences (token-less dev principal, short JWT_SECRET); production does not"
     " serve the runbook's breaker demo `GET /api/v1/analytics/flaky` (404)"},
    {"LOG_LEVEL", T_ENUM, F(log_level), "info", 0, 0, "debug|info|warn|error|off", "minimum log level"},
    {"LOG_FORMAT", T_ENUM, F(log_format), "text", 0, 0, "text|json", "log line format"},
    {"DATABASE_URL", T_URL, F(database_url), "", 0, 0, "postgres|postgresql",
     "PostgreSQL URL; empty runs the in-memory store"},
    {"REDIS_URL", T_URL, F(redis_url), "", 0, 0, "redis|unix",
     "Redis URL, redis://[:password@]host[:port][/db] or unix://[:password@]/path/to/socket[?db=N]; empty runs the "
     "in-memory bus"},
    {"ADMIN_PORT", T_INT, F(admin_port), "9100", 0, 65535, NULL,
     "port of /health, /ready, /metrics for drainer and services (0 = off)"},
    {"ECOM_INSTANCE", T_STR, F(instance), "", 0, 0, NULL,
     "stable instance name used in consumer names (default: host name)"},
    {"OUTBOX_BATCH", T_INT, F(outbox_batch), "1000", 1, 10000, NULL, "rows published per batch"},
    {"OUTBOX_POLL_MS", T_INT, F(outbox_poll_ms), "100", 1, 60000, NULL,
     "longest wait in ms for a NOTIFY wake-up when idle (after rows came the drainer looks again sooner: 4 ms, "
     "doubling up to this)"},
    {"OUTBOX_MAX_PAYLOAD", T_INT, F(outbox_max_payload), "262144", 64, 16777216, NULL,
     "largest payload outbox_append accepts, bytes"},
    {"OUTBOX_RETAIN_S", T_INT, F(outbox_retain_s), "3600", 0, 30 * 86400, NULL,
     "seconds published outbox rows are kept for re-drive after a broker loss; must be less than `INBOX_RETAIN_S`"
     " (a re-driven row older than the inboxes' memory would be applied twice)"},
    {"SERVICE_BATCH", T_INT, F(service_batch), "1000", 1, 10000, NULL, "messages per consumer transaction (at most)"},
    {"SERVICE_BLOCK_MS", T_INT, F(service_block_ms), "1000", 1, 60000, NULL, "XREADGROUP BLOCK in ms"},
    {"SERVICE_LANES", T_INT, F(service_lanes), "4", 1, 8, NULL,
     "PostgreSQL connections a service applies a batch on at most (one per 64 messages), split by aggregate "
     "(payment, notification: services whose handlers wait on round trips)"},
    {"SERVICE_MAX_ATTEMPTS", T_INT, F(service_max_attempts), "5", 1, 100, NULL,
     "failed attempts before a message goes to the DLQ"},
    {"SERVICE_RECLAIM_IDLE_MS", T_INT, F(service_reclaim_idle_ms), "30000", 100, 3600000, NULL,
     "pending entries idle this long are reclaimed from other consumers"},
    {"SERVICE_BACKOFF_MS", T_INT, F(service_backoff_ms), "200", 1, 600000, NULL,
     "first retry delay; doubles per failure"},
    {"ANALYTICS_LINGER_MS", T_INT, F(analytics_linger_ms), "0", 0, 10000, NULL,
     "analytics waits up to this long for a short batch to fill: fewer, larger transactions, its read model "
     "that much later (0 = off)"},
    {"INBOX_RETAIN_S", T_INT, F(inbox_retain_s), "604800", 60, 365 * 86400, NULL,
     "seconds inbox ids are kept (dedup window)"},
    {"STREAM_TRIM_INTERVAL_MS", T_INT, F(stream_trim_interval_ms), "10000", 100, 3600000, NULL,
     "how often streams are trimmed below every group's position and the outbox's re-drive window is cleaned"},
    {"PORT", T_INT, F(port), "3003", 1, 65535, NULL, "gateway HTTP port"},
    {"GATEWAY_THREADS", T_INT, F(gateway_threads), "0", 0, 256, NULL, "gateway threads (0 = cores)"},
    {"JWT_SECRET", T_STR, F(jwt_secret), "", 0, 0, NULL, "HS256 secret (>= 32 bytes outside development)"},
    {"JWT_PRIVATE_KEY_PEM", T_STR, F(jwt_private_key_pem), "", 0, 0, NULL, "RS256/ES256 private key (PEM)"},
    {"JWT_PUBLIC_KEY_PEM", T_STR, F(jwt_public_key_pem), "", 0, 0, NULL, "RS256/ES256 public key (PEM)"},
    {"JWT_ISSUER", T_STR, F(jwt_issuer), "ecom", 0, 0, NULL, "iss of issued tokens, checked on verify"},
    {"JWT_AUDIENCE", T_STR, F(jwt_audience), "ecom-api", 0, 0, NULL, "aud of issued tokens, checked on verify"},
    {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", T_STR, F(otel_traces_endpoint), "", 0, 0, NULL,
     "OTLP/HTTP JSON traces endpoint; enables export"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT", T_STR, F(otel_endpoint), "", 0, 0, NULL,
     "OTLP base endpoint (+ /v1/traces); enables export"},
    {"OTEL_SERVICE_NAME", T_STR, F(otel_service_name), "", 0, 0, NULL,
     "service.name of exported spans (unset: service.name of OTEL_RESOURCE_ATTRIBUTES, else unknown_service)"},
    {"P95_BUDGET_MS", T_INT, F(p95_budget_ms), "60", 1, 600000, NULL, "perf smoke p95 budget"},
    {"P99_BUDGET_MS", T_INT, F(p99_budget_ms), "150", 1, 600000, NULL, "perf smoke p99 budget"},
    {"ENABLE_PERF_SMOKE", T_BOOL, F(enable_perf_smoke), "false", 0, 0, NULL, "run the perf smoke in CI"},
    {"USE_FASTIFY", T_BOOL, F(use_fastify), "false", 0, 0, NULL,
     "accepted for compatibility with the original; the C gateway has one adapter"},
    {"OTP_PEPPER", T_STR, F(otp_pepper), "", 0, 0, NULL,
     "HMAC key for stored OTP codes (>= 32 bytes outside development; unset in development: random per process)"},
    {"AUTHX_BOOTSTRAP_FILE", T_STR, F(authx_bootstrap_file), "", 0, 0, NULL,
     "JSON file seeding roles, role bindings and relation tuples per tenant at gateway start (idempotent)"},
    {"AUTHX_SCHEMA", T_STR, F(authx_schema), "viewer: editor | parent->viewer; editor: owner", 0, 0, NULL,
     "ReBAC userset rewrites: \"rel: term | term; ...\", a term being a relation or tupleset->relation"},
    {"RATE_LIMITS", T_BOOL, F(rate_limits), "true", 0, 0, NULL,
     "enforce the routes' rate limits (GCRA per principal or client address; off only for load tests)"},
    {"AUTHX_REFRESH_GRACE_S", T_INT, F(authx_refresh_grace_s), "0", 0, 30, NULL,
     "seconds after a refresh during which the rotated token is refused without revoking its session"},
    {"ACCESS_TOKEN_TTL_S", T_INT, F(access_token_ttl_s), "600", 300, 900, NULL,
     "lifetime of issued access tokens, seconds"},
    {"NOTIFY_SINK_FILE", T_STR, F(notify_sink_file), "", 0, 0, NULL,
     "JSON Lines file the dev notification channel appends deliveries to"},
    {"PAYMENT_PROVIDER_LATENCY_MS", T_INT, F(payment_provider_latency_ms), "2", 0, 60000, NULL,
     "latency of the simulated payment provider per call, ms"},
    {"PAYMENT_PROVIDER_FAILURE_RATE", T_INT, F(payment_provider_failure_rate), "0", 0, 100, NULL,
     "percent of simulated provider calls that fail transiently (chaos; trips the provider breaker)"},
    {"PAYMENT_BREAKER_OPEN_MS", T_INT, F(payment_breaker_open_ms), "5000", 100, 3600000, NULL,
     "how long the provider breaker stays open before trial calls, ms"},
    {"NOTIFY_CHANNELS", T_STR, F(notify_channels), "log", 0, 0, NULL,
     "comma list of notification channels: log, webhook, smtp"},
    {"NOTIFY_WEBHOOK_URL", T_URL, F(notify_webhook_url), "", 0, 0, "http",
     "endpoint the webhook channel POSTs to (http:// only; required by that channel)"},
    {"NOTIFY_WEBHOOK_SECRET", T_STR, F(notify_webhook_secret), "", 0, 0, NULL,
     "HMAC-SHA256 key of the webhook's X-Ecom-Signature header (required by that channel)"},
    {"NOTIFY_TIMEOUT_MS", T_INT, F(notify_timeout_ms), "5000", 100, 60000, NULL,
     "connect and reply timeout of the webhook and smtp channels, ms"},
    {"SMTP_HOST", T_STR, F(smtp_host), "", 0, 0, NULL,
     "SMTP relay of the smtp channel, without authentication or TLS (required by that channel)"},
    {"SMTP_PORT", T_INT, F(smtp_port), "25", 1, 65535, NULL, "port of SMTP_HOST"},
    {"SMTP_FROM", T_STR, F(smtp_from), "ecom@localhost", 0, 0, NULL, "sender address of the smtp channel"},
};

static void raw_set(config_t *cfg, const char *k, size_t klen, const char *v, size_t vlen, bool override)
{
    for (size_t i = 0; i < cfg->raw_n; i++)
        if (strlen(cfg->raw_keys[i]) == klen && memcmp(cfg->raw_keys[i], k, klen) == 0) {
            if (override) {
                free(cfg->raw_vals[i]);
                cfg->raw_vals[i] = xstrndup(v, vlen);
            }
            return;
        }
    cfg->raw_keys = xrealloc(cfg->raw_keys, (cfg->raw_n + 1) * sizeof(char *));
    cfg->raw_vals = xrealloc(cfg->raw_vals, (cfg->raw_n + 1) * sizeof(char *));
    cfg->raw_keys[cfg->raw_n] = xstrndup(k, klen);
    cfg->raw_vals[cfg->raw_n] = xstrndup(v, vlen);
    cfg->raw_n++;
}

const char *config_raw(const config_t *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->raw_n; i++)
        if (strcmp(cfg->raw_keys[i], name) == 0)
            return cfg->raw_vals[i];
    return NULL;
}

static bool valid_key(const char *k, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i && c >= '0' && c <= '9')))
            return false;
    }
    return true;
}

/* Reads KEY=VALUE lines; values already set (from the environment) win. */
static void load_file(config_t *cfg, const char *path, errlist_t *e)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        errlist_add(e, "--env-file %s: %s", path, strerror(errno));
        return;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0;
    errno = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        if (strncmp(p, "export ", 7) == 0)
            p += 7;
        char *eq = strchr(p, '=');
        if (!eq || !valid_key(p, (size_t)(eq - p))) {
            errlist_add(e, "%s:%d: expected KEY=VALUE", path, lineno);
            continue;
        }
        char *v = eq + 1;
        size_t vlen = strlen(v);
        if (v[0] == '"' || v[0] == '\'') {
            /* quoted: up to the closing quote, then only blanks or a comment */
            char *close = strchr(v + 1, v[0]);
            char *after = close ? close + 1 : NULL;
            while (after && (*after == ' ' || *after == '\t'))
                after++;
            if (!close || (*after && *after != '#')) {
                errlist_add(e, "%s:%d: %s", path, lineno, close ? "text after the closing quote" : "no closing quote");
                continue;
            }
            v++;
            vlen = (size_t)(close - v);
        } else {
            /* unquoted: strip an inline comment and trailing blanks */
            char *hash = strstr(v, " #");
            if (hash)
                vlen = (size_t)(hash - v);
            while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
                vlen--;
        }
        raw_set(cfg, p, (size_t)(eq - p), v, vlen, false);
        errno = 0;
    }
    if (ferror(f)) /* a directory, say */
        errlist_add(e, "--env-file %s: %s", path, strerror(errno ? errno : EIO));
    free(line);
    fclose(f);
}

static bool opt_in(const char *opts, const char *v)
{
    size_t vl = strlen(v);
    for (const char *p = opts; *p;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == vl && strncmp(p, v, n) == 0)
            return true;
        if (!bar)
            break;
        p = bar + 1;
    }
    return false;
}

/* What the connecting code will make of a URL of a known scheme, checked
 * now so that a malformed one is reported with every other problem instead
 * of at the first connection: libpq's own parser for PostgreSQL (which also
 * knows its query parameters), ours for Redis. Other schemes are checked by
 * their users (the webhook channel parses its URL at startup). */
static void url_check(errlist_t *e, const char *name, const char *scheme, const char *v)
{
    if (strcmp(scheme, "postgres") == 0 || strcmp(scheme, "postgresql") == 0) {
        char *msg = NULL;
        PQconninfoOption *opts = PQconninfoParse(v, &msg);
        if (!opts) {
            char line[256];
            snprintf(line, sizeof line, "%s", msg ? msg : "out of memory");
            line[strcspn(line, "\n")] = '\0';
            /* libpq quotes the token it could not read, which may be the
             * password: never print it */
            const char *ui = strstr(v, "://") + 3, *at = strchr(ui, '@');
            const char *pw = at ? memchr(ui, ':', (size_t)(at - ui)) : NULL;
            size_t pwn = pw ? (size_t)(at - pw - 1) : 0, k = 0;
            char shown[sizeof line + 64];
            for (const char *c = line; *c && k + 4 < sizeof shown;) {
                if (pwn && strncmp(c, pw + 1, pwn) == 0) {
                    memcpy(shown + k, "***", 3);
                    k += 3;
                    c += pwn;
                } else {
                    shown[k++] = *c++;
                }
            }
            shown[k] = '\0';
            errlist_add(e, "%s: %s", name, shown);
        }
        /* what libpq leaves to connection time: ports (one per host) and sslmode */
        for (PQconninfoOption *o = opts; o && o->keyword; o++) {
            if (!o->val || !*o->val)
                continue;
            if (strcmp(o->keyword, "port") == 0) {
                for (const char *q = o->val; *q;) {
                    size_t n = strcspn(q, ",");
                    if (n == 0) { /* this host's default port */
                        q++;
                        continue;
                    }
                    char *end;
                    long port = strtol(q, &end, 10);
                    if (end != q + n || port < 1 || port > 65535 || *q == '+' || *q == '-') {
                        errlist_add(e, "%s: port '%.*s' is not 1..65535", name, (int)n, q);
                        break;
                    }
                    q += n + (q[n] == ',');
                }
            } else if (strcmp(o->keyword, "sslmode") == 0 &&
                       !opt_in("disable|allow|prefer|require|verify-ca|verify-full", o->val)) {
                errlist_add(e, "%s: sslmode '%s' is not disable, allow, prefer, require, verify-ca or verify-full",
                            name, o->val);
            }
        }
        PQconninfoFree(opts);
        PQfreemem(msg);
    } else if (strcmp(scheme, "redis") == 0 || strcmp(scheme, "unix") == 0) {
        redis_url_t u;
        if (redis_url_parse(v, &u) != 0)
            errlist_add(e, "%s: expected redis://[:password@]host[:port][/db] or unix://[:password@]/path[?db=N]",
                        name);
    }
}

static void parse_item(config_t *cfg, const citem_t *it, const char *v, errlist_t *e)
{
    char *base = (char *)cfg + it->off;
    switch (it->type) {
    case T_STR: *(char **)base = xstrdup(v); break;
    case T_ENUM:
        if (!opt_in(it->opts, v))
            errlist_add(e, "%s: '%s' is not one of %s", it->name, v, it->opts);
        *(char **)base = xstrdup(v);
        break;
    case T_URL:
        if (*v) {
            const char *sep = strstr(v, "://");
            char scheme[32] = {0};
            size_t n = sep ? (size_t)(sep - v) : 0;
            if (n && n < sizeof scheme)
                memcpy(scheme, v, n);
            if (!sep || !opt_in(it->opts, scheme) || !sep[3])
                errlist_add(e, "%s: expected a %s:// URL", it->name, it->opts);
            else
                url_check(e, it->name, scheme, v);
        }
        *(char **)base = xstrdup(v);
        break;
    case T_INT: {
        errno = 0;
        char *end;
        long n = strtol(v, &end, 10);
        if (!*v || *end || errno)
            errlist_add(e, "%s: '%s' is not an integer", it->name, v);
        else if (n < it->min || n > it->max)
            errlist_add(e, "%s: %ld is outside %ld..%ld", it->name, n, it->min, it->max);
        *(long *)base = n;
        break;
    }
    case T_BOOL:
        if (strcmp(v, "true") == 0)
            *(bool *)base = true;
        else if (strcmp(v, "false") == 0)
            *(bool *)base = false;
        else
            errlist_add(e, "%s: '%s' must be exactly true or false", it->name, v);
        break;
    }
}

static void cross_checks(config_t *cfg, int roles, errlist_t *e)
{
    bool dev = config_is_dev(cfg);
    if (roles & CFG_ROLE_GATEWAY) {
        bool sec = cfg->jwt_secret[0], priv = cfg->jwt_private_key_pem[0], pub = cfg->jwt_public_key_pem[0];
        if (!sec && !priv && !pub)
            errlist_add(e, "JWT: set JWT_SECRET, or both JWT_PRIVATE_KEY_PEM and JWT_PUBLIC_KEY_PEM");
        if (sec && (priv || pub))
            errlist_add(e, "JWT: JWT_SECRET and a PEM key are both set; choose one kind of key");
        if (priv != pub)
            errlist_add(e, "JWT: %s is set without %s", priv ? "JWT_PRIVATE_KEY_PEM" : "JWT_PUBLIC_KEY_PEM",
                        priv ? "JWT_PUBLIC_KEY_PEM" : "JWT_PRIVATE_KEY_PEM");
        if (!dev && strlen(cfg->otp_pepper) < 32)
            errlist_add(e, "OTP_PEPPER: at least 32 bytes are required outside APP_ENV=development");
        if (sec && strlen(cfg->jwt_secret) < 32 && !dev)
            errlist_add(e, "JWT_SECRET: %zu bytes; at least 32 are required outside APP_ENV=development",
                        strlen(cfg->jwt_secret));
    }
    if (strcmp(cfg->app_env, "production") == 0 && (roles & (CFG_ROLE_GATEWAY | CFG_ROLE_DRAINER | CFG_ROLE_SERVICE))) {
        /* development conveniences must not reach production */
        if (cfg->notify_sink_file[0])
            errlist_add(e, "NOTIFY_SINK_FILE: the development delivery file is refused with APP_ENV=production");
        if (config_raw(cfg, "CHAOS_SEED"))
            errlist_add(e, "CHAOS_SEED: deterministic chaos is for tests; unset it with APP_ENV=production");
        /* env.prod's placeholders are public: a JWT_SECRET left as shipped
         * lets anyone mint tokens */
        for (size_t i = 0; i < cfg->raw_n; i++)
            if (strcasestr(cfg->raw_vals[i], "replace-me"))
                errlist_add(e, "%s: still env.prod's placeholder; set a secret of your own (openssl rand -hex 32)",
                            cfg->raw_keys[i]);
    }
    /* `ecomctl redrive` puts back published rows up to OUTBOX_RETAIN_S old:
     * a service whose inbox forgot one would apply it a second time */
    if ((roles & (CFG_ROLE_DRAINER | CFG_ROLE_SERVICE | CFG_ROLE_TOOL)) && cfg->outbox_retain_s >= cfg->inbox_retain_s)
        errlist_add(e,
                    "OUTBOX_RETAIN_S: %ld s must be less than INBOX_RETAIN_S (%ld s), or a redrive of the older rows"
                    " would be applied a second time",
                    cfg->outbox_retain_s, cfg->inbox_retain_s);
    for (size_t i = 0; i < cfg->raw_n; i++) {
        const char *k = cfg->raw_keys[i];
        if (strncmp(k, "FLAG_", 5) == 0 && strcmp(cfg->raw_vals[i], "true") != 0 &&
            strcmp(cfg->raw_vals[i], "false") != 0)
            errlist_add(e, "%s: '%s' must be exactly true or false", k, cfg->raw_vals[i]);
    }
}

int config_load(config_t *cfg, const char *env_file, int roles, char **errors)
{
    memset(cfg, 0, sizeof *cfg);
    errlist_t e = {0};
    for (char **ep = environ; *ep; ep++) {
        const char *eq = strchr(*ep, '=');
        if (eq && valid_key(*ep, (size_t)(eq - *ep)))
            raw_set(cfg, *ep, (size_t)(eq - *ep), eq + 1, strlen(eq + 1), true);
    }
    if (env_file)
        load_file(cfg, env_file, &e);
    for (size_t i = 0; i < ECOM_ARRAY_LEN(items); i++) {
        const char *v = config_raw(cfg, items[i].name);
        parse_item(cfg, &items[i], v ? v : items[i].def, &e);
    }
    if (!cfg->instance[0]) {
        char host[256] = "ecom";
        gethostname(host, sizeof host - 1);
        free(cfg->instance);
        cfg->instance = xstrdup(host);
    }
    cross_checks(cfg, roles, &e);
    *errors = e.s;
    return e.s ? -1 : 0;
}

void config_free(config_t *cfg)
{
    for (size_t i = 0; i < ECOM_ARRAY_LEN(items); i++)
        if (items[i].type == T_STR || items[i].type == T_ENUM || items[i].type == T_URL)
            free(*(char **)((char *)cfg + items[i].off));
    for (size_t i = 0; i < cfg->raw_n; i++) {
        free(cfg->raw_keys[i]);
        free(cfg->raw_vals[i]);
    }
    free(cfg->raw_keys);
    free(cfg->raw_vals);
    memset(cfg, 0, sizeof *cfg);
}

bool config_is_dev(const config_t *cfg)
{
    return cfg->app_env && strcmp(cfg->app_env, "development") == 0;
}

void config_print_doc(void)
{
    printf("| key | default | values | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < ECOM_ARRAY_LEN(items); i++) {
        const citem_t *it = &items[i];
        char range[64] = "";
        if (it->type == T_INT)
            snprintf(range, sizeof range, "%ld..%ld", it->min, it->max);
        else if (it->type == T_BOOL)
            snprintf(range, sizeof range, "true, false");
        else if (it->opts) /* "a|b" would split the markdown cell: list as "a, b" */
            for (const char *o = it->opts; *o && strlen(range) + 3 < sizeof range; o++) {
                size_t l = strlen(range);
                if (*o == '|') {
                    range[l] = ',';
                    range[l + 1] = ' ';
                    range[l + 2] = '\0';
                } else {
                    range[l] = *o;
                    range[l + 1] = '\0';
                }
            }
        printf("| `%s` | %s%s%s | %s | %s |\n", it->name, it->def[0] ? "`" : "", it->def[0] ? it->def : "(empty)",
               it->def[0] ? "`" : "", range, it->doc);
    }
    printf("| `FLAG_<NAME>` | route default | true, false | feature flag; any other value stops startup |\n");
}
