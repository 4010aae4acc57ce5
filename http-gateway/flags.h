/* http-gateway/flags.h: feature flags from the configuration (gateway.md §1.8),
 * as the OpenFeature env-var provider reads them: flag "new-checkout" is the key
 * FLAG_NEW_CHECKOUT; only exact "true"/"false" are values; an unset key gives the
 * route's default with reason DEFAULT, a set one reason STATIC.
 * Owns nothing; borrows the config (core/config.h config_raw). */
#ifndef ECOM_FLAGS_H
#define ECOM_FLAGS_H

#include "core/config.h"

#include <stdbool.h>
#include <stddef.h>

#define FLAGS_ENV_MAX 128 /* longest FLAG_<NAME> key, NUL included */

typedef enum { FLAG_REASON_STATIC, FLAG_REASON_DEFAULT, FLAG_REASON_ERROR } flag_reason_t;

typedef struct flag_eval {
    bool value;
    flag_reason_t reason; /* ERROR: the key held something other than true/false */
} flag_eval_t;

/* The configuration key of a flag name, in CONSTANT_CASE with the FLAG_ prefix:
 * words split at every non-alphanumeric and at camelCase boundaries ("new-checkout",
 * "newCheckout" and "NEW_CHECKOUT" all give FLAG_NEW_CHECKOUT). -1 when the name
 * has no letter or digit or the key does not fit in cap. */
int flags_env_name(const char *flag, char *out, size_t cap) __attribute__((warn_unused_result));

/* Evaluates a flag. An invalid stored value (config_load refuses those, so only
 * by a bug) gives the default with reason ERROR. */
void flags_eval(const config_t *cfg, const char *flag, bool default_on, flag_eval_t *out);

/* Every FLAG_* key of cfg holds exactly true or false; else -1 with *errors
 * (owned) listing each offender, one per line. */
int flags_validate(const config_t *cfg, char **errors) __attribute__((warn_unused_result));

/* "STATIC", "DEFAULT", "ERROR" (OpenFeature reasons). */
const char *flags_reason_name(flag_reason_t r);

#endif
