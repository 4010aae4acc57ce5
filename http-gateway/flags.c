/* http-gateway/flags.c: see flags.h. */
#include "http-gateway/flags.h"

#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

static bool is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}

static bool is_lower(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_upper(c) || is_lower(c) || is_digit(c);
}

int flags_env_name(const char *flag, char *out, size_t cap)
{
    static const char prefix[] = "FLAG_";
    size_t n = sizeof prefix - 1;
    if (!flag || cap <= n)
        return -1;
    memcpy(out, prefix, n);
    bool words = false;   /* a word has been written */
    bool pending = false; /* a separator seen since the last word */
    for (size_t i = 0; flag[i]; i++) {
        char c = flag[i];
        if (!is_alnum(c)) {
            pending = words;
            continue;
        }
        char prev = i ? flag[i - 1] : '\0';
        char next = flag[i + 1];
        /* camelCase: "aB", "1B"; acronym end: "ABc" splits before B */
        bool boundary = is_upper(c) &&
                        ((is_lower(prev) || is_digit(prev)) || (is_upper(prev) && is_lower(next)));
        if (words && (pending || boundary)) {
            if (n + 1 >= cap)
                return -1;
            out[n++] = '_';
        }
        pending = false;
        if (n + 1 >= cap)
            return -1;
        out[n++] = is_lower(c) ? (char)(c - 'a' + 'A') : c;
        words = true;
    }
    if (!words)
        return -1;
    out[n] = '\0';
    return 0;
}

void flags_eval(const config_t *cfg, const char *flag, bool default_on, flag_eval_t *out)
{
    char key[FLAGS_ENV_MAX];
    out->value = default_on;
    out->reason = FLAG_REASON_DEFAULT;
    if (flags_env_name(flag, key, sizeof key) != 0) {
        out->reason = FLAG_REASON_ERROR;
        return;
    }
    const char *v = config_raw(cfg, key);
    if (!v)
        return;
    if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
        out->value = v[0] == 't';
        out->reason = FLAG_REASON_STATIC;
    } else {
        out->reason = FLAG_REASON_ERROR;
    }
}

int flags_validate(const config_t *cfg, char **errors)
{
    char *list = NULL;
    for (size_t i = 0; i < cfg->raw_n; i++) {
        const char *k = cfg->raw_keys[i], *v = cfg->raw_vals[i];
        if (strncmp(k, "FLAG_", 5) != 0 || strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
            continue;
        char *line =
            xasprintf("%s%s: '%s' must be exactly true or false\n", list ? list : "", k, v);
        free(list);
        list = line;
    }
    *errors = list;
    return list ? -1 : 0;
}

const char *flags_reason_name(flag_reason_t r)
{
    switch (r) {
    case FLAG_REASON_STATIC: return "STATIC";
    case FLAG_REASON_DEFAULT: return "DEFAULT";
    case FLAG_REASON_ERROR: return "ERROR";
    }
    return "ERROR";
}
