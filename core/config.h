/* core/config.h: the whole configuration as one declarative table.
 *
 * Sources, in order of precedence: the process environment, then an optional
 * env file (`--env-file FILE`, the format of env.dev: KEY=VALUE lines, # comments,
 * optional quotes), then each key's default. Every key is parsed and validated in
 * one pass and every problem is reported at once. docs/config.md lists the keys.
 * Owns: config_t and the strings in it (freed by config_free). */
#ifndef ECOM_CONFIG_H
#define ECOM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef struct config {
    /* process */
    char *app_env; /* development | production | test */
    char *log_level;
    char *log_format;
    char *database_url; /* empty: in-memory store */
    char *redis_url;    /* empty: in-memory bus */
    long admin_port;    /* /health /ready /metrics of drainer and services; 0 = off */
    char *instance;     /* stable consumer-name prefix; default: hostname */

    /* outbox drainer */
    long outbox_batch;
    long outbox_poll_ms;
    long outbox_max_payload;
    long outbox_retain_s;

    /* services */
    long service_batch;
    long service_block_ms;
    long service_lanes;
    long service_max_attempts;
    long service_reclaim_idle_ms;
    long service_backoff_ms;
    long inbox_retain_s;
    long analytics_linger_ms;
    long stream_trim_interval_ms;

    /* gateway */
    long port;
    long gateway_threads;
    char *jwt_secret;
    char *jwt_private_key_pem;
    char *jwt_public_key_pem;
    char *jwt_issuer;
    char *jwt_audience;
    char *otel_traces_endpoint;
    char *otel_endpoint;
    char *otel_service_name;
    long p95_budget_ms;
    long p99_budget_ms;
    bool enable_perf_smoke;
    bool use_fastify; /* accepted for compatibility with the original; no effect */
    char *notify_sink_file;
    char *otp_pepper; /* HMAC key of stored OTP codes */
    char *authx_bootstrap_file;
    char *authx_schema;
    long access_token_ttl_s;
    long authx_refresh_grace_s;
    bool rate_limits;

    /* payment and notification services */
    long payment_provider_latency_ms;
    long payment_provider_failure_rate; /* percent */
    long payment_breaker_open_ms;
    char *notify_channels;
    char *notify_webhook_url;
    char *notify_webhook_secret;
    long notify_timeout_ms;
    char *smtp_host;
    long smtp_port;
    char *smtp_from;

    /* raw KEY=VALUE pairs from environment and file (for FLAG_*), owned */
    char **raw_keys;
    char **raw_vals;
    size_t raw_n;
} config_t;

/* Roles whose cross-field rules apply (bitmask). */
enum { CFG_ROLE_GATEWAY = 1, CFG_ROLE_DRAINER = 2, CFG_ROLE_SERVICE = 4, CFG_ROLE_TOOL = 8 };

/* Loads and validates. On failure returns -1 and *errors holds every problem,
 * one per line (owned by the caller). env_file may be NULL. */
int config_load(config_t *cfg, const char *env_file, int roles, char **errors)
    __attribute__((warn_unused_result));
void config_free(config_t *cfg);

/* The raw value of any key (environment wins over file); NULL when unset. Borrowed. */
const char *config_raw(const config_t *cfg, const char *name);
bool config_is_dev(const config_t *cfg);

/* Prints the table as markdown (used to generate docs/config.md). */
void config_print_doc(void);

#endif
