/* http-gateway/route.c: see route.h.
 *
 * The router keeps the rows' templates split into segments and sorted by
 * segment count, then by specificity (at the first position where two templates
 * differ in kind, the static segment comes first). Matching scans the rows with
 * the path's segment count in that order, so the first row that fits is the most
 * specific one. Route tables are tens of rows; a scan beats a trie in clarity. */
#include "http-gateway/route.h"

#include "core/alloc.h"
#include "core/uuid.h"
#include "http-gateway/cache.h"
#include "http-gateway/flags.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PARAM_NAME_MAX 64

typedef struct seg {
    const char *s; /* into the template or path; for a param, its name (no ':') */
    size_t len;
    bool param;
} seg_t;

typedef struct tmpl {
    size_t nseg;
    seg_t seg[ROUTE_MAX_SEGMENTS];
    size_t nparams;
} tmpl_t;

typedef struct compiled {
    const route_t *row;
    size_t index; /* in the table */
    tmpl_t t;
    char *names[ROUTE_MAX_PARAMS]; /* owned, in path order */
} compiled_t;

struct router {
    compiled_t *routes; /* sorted: segment count, then specificity */
    size_t n;
    size_t first[ROUTE_MAX_SEGMENTS + 2]; /* routes with k segments: [first[k], first[k+1]) */
};

static const struct {
    unsigned bit;
    const char *name;
} methods[] = {
    {ROUTE_GET, "GET"}, {ROUTE_HEAD, "HEAD"},   {ROUTE_POST, "POST"},
    {ROUTE_PUT, "PUT"}, {ROUTE_PATCH, "PATCH"}, {ROUTE_DELETE, "DELETE"},
};

unsigned route_method_bit(const char *name)
{
    for (size_t i = 0; name && i < ECOM_ARRAY_LEN(methods); i++)
        if (strcmp(name, methods[i].name) == 0)
            return methods[i].bit;
    return 0;
}

const char *route_method_name(unsigned bit)
{
    for (size_t i = 0; i < ECOM_ARRAY_LEN(methods); i++)
        if (bit == methods[i].bit)
            return methods[i].name;
    return NULL;
}

const char *route_id(const route_t *r)
{
    return r->id ? r->id : r->path;
}

/* "GET, HEAD, POST" in table order. */
static void methods_list(unsigned bits, const char *sep, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < ECOM_ARRAY_LEN(methods); i++) {
        if (!(bits & methods[i].bit) || used >= cap)
            continue;
        int w = snprintf(out + used, cap - used, "%s%s", used ? sep : "", methods[i].name);
        if (w > 0)
            used += (size_t)w;
    }
}

/* ---- templates ---- */

static bool is_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* RFC 3986 pchar, except the percent escape (checked separately). */
static bool pchar(char c)
{
    return is_alpha(c) || is_digit(c) || strchr("-._~!$&'()*+,;=:@", c) != NULL;
}

/* Splits a template; on error writes why and returns -1. */
static int parse_template(const char *path, tmpl_t *t, char *why, size_t cap)
{
    memset(t, 0, sizeof *t);
    if (!path) {
        snprintf(why, cap, "no path template");
        return -1;
    }
    size_t len = strlen(path);
    if (len == 0 || path[0] != '/') {
        snprintf(why, cap, "template must start with '/'");
        return -1;
    }
    if (len > ROUTE_PATH_MAX) {
        snprintf(why, cap, "template longer than %d bytes", ROUTE_PATH_MAX);
        return -1;
    }
    if (len == 1) { /* "/" */
        t->nseg = 1;
        t->seg[0] = (seg_t){path + 1, 0, false};
        return 0;
    }
    const char *p = path + 1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t sl = end ? (size_t)(end - p) : strlen(p);
        if (sl == 0) {
            snprintf(why, cap, "%s", end ? "empty segment" : "trailing slash");
            return -1;
        }
        if (t->nseg == ROUTE_MAX_SEGMENTS) {
            snprintf(why, cap, "more than %d segments", ROUTE_MAX_SEGMENTS);
            return -1;
        }
        seg_t *s = &t->seg[t->nseg++];
        if (p[0] == ':') {
            *s = (seg_t){p + 1, sl - 1, true};
            bool ok = sl > 1 && sl - 1 <= PARAM_NAME_MAX && (is_alpha(p[1]) || p[1] == '_');
            for (size_t i = 2; ok && i < sl; i++)
                ok = is_alpha(p[i]) || is_digit(p[i]) || p[i] == '_';
            if (!ok) {
                snprintf(why, cap, "bad parameter name ':%.*s'", (int)(sl > 70 ? 70 : sl - 1), p + 1);
                return -1;
            }
            for (size_t i = 0; i + 1 < t->nseg; i++)
                if (t->seg[i].param && t->seg[i].len == s->len && !memcmp(t->seg[i].s, s->s, s->len)) {
                    snprintf(why, cap, "parameter ':%.*s' twice", (int)s->len, s->s);
                    return -1;
                }
            if (++t->nparams > ROUTE_MAX_PARAMS) {
                snprintf(why, cap, "more than %d parameters", ROUTE_MAX_PARAMS);
                return -1;
            }
        } else {
            *s = (seg_t){p, sl, false};
            for (size_t i = 0; i < sl; i++) {
                bool ok =
                    pchar(p[i]) || (p[i] == '%' && i + 2 < sl && hex_digit(p[i + 1]) >= 0 && hex_digit(p[i + 2]) >= 0);
                if (!ok) {
                    snprintf(why, cap, "character 0x%02x not allowed in a path", (unsigned)(unsigned char)p[i]);
                    return -1;
                }
            }
        }
        if (!end)
            return 0;
        p = end + 1;
    }
}

static bool same_shape(const tmpl_t *a, const tmpl_t *b)
{
    if (a->nseg != b->nseg)
        return false;
    for (size_t i = 0; i < a->nseg; i++) {
        const seg_t *x = &a->seg[i], *y = &b->seg[i];
        if (x->param != y->param)
            return false;
        if (!x->param && (x->len != y->len || memcmp(x->s, y->s, x->len) != 0))
            return false;
    }
    return true;
}

static bool template_has_param(const tmpl_t *t, const char *name)
{
    for (size_t i = 0; i < t->nseg; i++)
        if (t->seg[i].param && t->seg[i].len == strlen(name) && !memcmp(t->seg[i].s, name, t->seg[i].len))
            return true;
    return false;
}

/* ---- validation ---- */

typedef struct problems {
    char *text;
    size_t len;
    int count;
} problems_t;

static void problem(problems_t *pr, size_t i, const route_t *r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void problem(problems_t *pr, size_t i, const route_t *r, const char *fmt, ...)
{
    char what[512], meth[64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    methods_list(r->methods, "|", meth, sizeof meth);
    char *line = xasprintf("route %zu (%s %.200s): %s\n", i, meth[0] ? meth : "-", r->path ? r->path : "(null)", what);
    size_t ll = strlen(line);
    pr->text = xrealloc(pr->text, pr->len + ll + 1);
    memcpy(pr->text + pr->len, line, ll + 1);
    pr->len += ll;
    pr->count++;
    free(line);
}

static bool name_ok(const char *s, const char *extra)
{
    if (!s || !*s || strlen(s) > 128)
        return false;
    for (; *s; s++)
        if (!is_alpha(*s) && !is_digit(*s) && !strchr(extra, *s))
            return false;
    return true;
}

static void check_policies(problems_t *pr, size_t i, const route_t *r, const tmpl_t *t, bool tmpl_ok)
{
    char err[512];
    const route_cache_t *c = &r->cache;
    if (c->ttl_ms < 0 || c->swr_ms < 0 || c->stale_if_error_ms < 0 || c->lock_timeout_ms < 0)
        problem(pr, i, r, "cache durations must not be negative");
    if (c->ttl_ms == 0 && (c->swr_ms > 0 || c->stale_if_error_ms > 0 || c->lock_timeout_ms > 0 || c->shared || c->key))
        problem(pr, i, r, "cache settings without cache ttl_ms");
    if (c->ttl_ms > 0 && !(r->methods & (ROUTE_GET | ROUTE_HEAD)))
        problem(pr, i, r, "cache policy on a route without GET or HEAD");

    if (r->idem.required && !r->idem.enabled)
        problem(pr, i, r, "idempotency required but not enabled");
    if ((r->idem.enabled || r->idem.release_on_5xx) && !(r->methods & (ROUTE_POST | ROUTE_PATCH)))
        problem(pr, i, r, "idempotency on a route without POST or PATCH");

    char env[FLAGS_ENV_MAX];
    if (r->flag.name && flags_env_name(r->flag.name, env, sizeof env) != 0)
        problem(pr, i, r, "bad flag name '%.64s'", r->flag.name);

    for (size_t k = 0; k < ROUTE_MAX_PERMS; k++)
        if (r->permissions[k] && !r->permissions[k][0])
            problem(pr, i, r, "permission %zu is empty", k);

    const route_rebac_t *rb = &r->rebac;
    if (rb->relation || rb->object_param || rb->object_body || rb->object_type) {
        if (!name_ok(rb->relation, "_-.:") || !name_ok(rb->object_type, "_-.:"))
            problem(pr, i, r, "rebac needs a relation and an object type");
        if (!rb->object_param == !rb->object_body)
            problem(pr, i, r, "rebac needs an object parameter or an object body member, not both");
        else if (rb->object_body && (r->methods & ~(unsigned)(ROUTE_POST | ROUTE_PUT | ROUTE_PATCH)))
            problem(pr, i, r, "rebac object body member on a method without a body");
        else if (rb->object_param && tmpl_ok && !template_has_param(t, rb->object_param))
            problem(pr, i, r, "rebac object parameter ':%.64s' is not in the template", rb->object_param);
    }

    const rl_limit_t *rl = &r->rate.limit;
    if (rl->count < 0 || rl->burst < 0 || rl->period_ms < 0 || (rl->count > 0 && rl->period_ms == 0) ||
        (rl->count == 0 && (rl->burst || rl->period_ms || r->rate.by_address)))
        problem(pr, i, r, "rate limit needs count > 0 per period_ms > 0 (burst >= 0)");

    if (chaos_params_validate(&r->chaos, err, sizeof err) != 0)
        problem(pr, i, r, "%s", err);

    if (r->resilience.breaker && breaker_params_validate(&r->resilience.breaker_params, err, sizeof err) != 0)
        problem(pr, i, r, "breaker: %s", err);
    const hedge_params_t *h = &r->resilience.hedge;
    if (hedge_params_validate(h, err, sizeof err) != 0)
        problem(pr, i, r, "%s", err);
    /* a hedged write is sent twice: only a key makes the second a replay */
    if (h->enabled && (r->methods & (ROUTE_POST | ROUTE_PATCH)) && !(r->idem.enabled && r->idem.required))
        problem(pr, i, r, "hedging a POST or PATCH needs a required Idempotency-Key");

    if (r->publish && !name_ok(r->publish, "._-"))
        problem(pr, i, r, "bad event type '%.64s'", r->publish);
}

/* Validates rows, filling templates (t[i] valid where ok[i]). */
static int validate(const route_t *rows, size_t n, tmpl_t *t, bool *ok, char **errors)
{
    problems_t pr = {0};
    char why[256];
    for (size_t i = 0; i < n; i++) {
        const route_t *r = &rows[i];
        ok[i] = parse_template(r->path, &t[i], why, sizeof why) == 0;
        if (!ok[i])
            problem(&pr, i, r, "%s", why);
        if (r->methods == 0 || (r->methods & ~ROUTE_METHODS_ALL))
            problem(&pr, i, r, "no valid method");
        if (!r->handler)
            problem(&pr, i, r, "no handler");
        if (r->id && !name_ok(r->id, "._-:/"))
            problem(&pr, i, r, "bad route id '%.64s'", r->id);
        check_policies(&pr, i, r, &t[i], ok[i]);
        for (size_t j = 0; j < i; j++) {
            if (ok[i] && ok[j] && (rows[j].methods & r->methods) && same_shape(&t[i], &t[j]))
                problem(&pr, i, r, "duplicates route %zu", j);
            if (r->id && rows[j].id && strcmp(r->id, rows[j].id) == 0)
                problem(&pr, i, r, "id '%.64s' already used by route %zu", r->id, j);
        }
    }
    *errors = pr.text;
    return pr.count ? -1 : 0;
}

int router_validate(const route_t *rows, size_t n, char **errors)
{
    tmpl_t *t = xcalloc(n ? n : 1, sizeof *t);
    bool *ok = xcalloc(n ? n : 1, sizeof *ok);
    int rc = validate(rows, n, t, ok, errors);
    free(t);
    free(ok);
    return rc;
}

/* ---- compiling and matching ---- */

static int by_specificity(const void *pa, const void *pb)
{
    const compiled_t *a = pa, *b = pb;
    if (a->t.nseg != b->t.nseg)
        return a->t.nseg < b->t.nseg ? -1 : 1;
    for (size_t i = 0; i < a->t.nseg; i++)
        if (a->t.seg[i].param != b->t.seg[i].param)
            return a->t.seg[i].param ? 1 : -1;
    return a->index < b->index ? -1 : a->index > b->index;
}

int router_new(const route_t *rows, size_t n, router_t **out, char **errors)
{
    *out = NULL;
    tmpl_t *t = xcalloc(n ? n : 1, sizeof *t);
    bool *ok = xcalloc(n ? n : 1, sizeof *ok);
    int rc = validate(rows, n, t, ok, errors);
    if (rc != 0)
        goto out;
    router_t *r = xcalloc(1, sizeof *r);
    r->n = n;
    r->routes = xcalloc(n ? n : 1, sizeof *r->routes);
    for (size_t i = 0; i < n; i++) {
        compiled_t *c = &r->routes[i];
        c->row = &rows[i];
        c->index = i;
        c->t = t[i];
        size_t k = 0;
        for (size_t s = 0; s < c->t.nseg; s++)
            if (c->t.seg[s].param)
                c->names[k++] = xstrndup(c->t.seg[s].s, c->t.seg[s].len);
    }
    qsort(r->routes, n, sizeof *r->routes, by_specificity);
    size_t i = 0;
    for (size_t k = 0; k <= ROUTE_MAX_SEGMENTS + 1; k++) {
        while (i < n && r->routes[i].t.nseg < k)
            i++;
        r->first[k] = i;
    }
    *out = r;
out:
    free(t);
    free(ok);
    return rc;
}

void router_free(router_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++)
        for (size_t k = 0; k < ROUTE_MAX_PARAMS; k++)
            free(r->routes[i].names[k]);
    free(r->routes);
    free(r);
}

/* A parameter segment: non-empty, escapes well-formed, no %00. */
static bool param_ok(const seg_t *s)
{
    if (s->len == 0)
        return false;
    for (size_t i = 0; i < s->len; i++) {
        if (s->s[i] != '%')
            continue;
        if (i + 2 >= s->len || hex_digit(s->s[i + 1]) < 0 || hex_digit(s->s[i + 2]) < 0)
            return false;
        if (s->s[i + 1] == '0' && s->s[i + 2] == '0')
            return false;
        i += 2;
    }
    return true;
}

static bool fits(const compiled_t *c, const seg_t *segs)
{
    for (size_t i = 0; i < c->t.nseg; i++) {
        const seg_t *ts = &c->t.seg[i], *ps = &segs[i];
        if (ts->param ? !param_ok(ps) : ps->len != ts->len || memcmp(ps->s, ts->s, ps->len) != 0)
            return false;
    }
    return true;
}

static void fill_params(const compiled_t *c, const seg_t *segs, route_params_t *params)
{
    size_t used = 0, k = 0;
    for (size_t i = 0; i < c->t.nseg; i++) {
        if (!c->t.seg[i].param)
            continue;
        const seg_t *ps = &segs[i];
        char *dst = params->buf + used;
        size_t o = 0;
        for (size_t j = 0; j < ps->len; j++) {
            if (ps->s[j] == '%') {
                dst[o++] = (char)(hex_digit(ps->s[j + 1]) * 16 + hex_digit(ps->s[j + 2]));
                j += 2;
            } else {
                dst[o++] = ps->s[j];
            }
        }
        dst[o] = '\0';
        params->names[k] = c->names[k];
        params->values[k] = dst;
        k++;
        used += o + 1;
    }
    params->n = k;
}

route_result_t router_match(const router_t *r, unsigned method, const char *path, route_params_t *params,
                            const route_t **route)
{
    params->n = 0;
    params->allow[0] = '\0';
    *route = NULL;
    if (!path || path[0] != '/')
        return ROUTE_NOT_FOUND;
    size_t len = strcspn(path, "?#");
    if (len > ROUTE_PATH_MAX)
        return ROUTE_NOT_FOUND;
    seg_t segs[ROUTE_MAX_SEGMENTS];
    size_t nseg = 0;
    const char *p = path + 1, *end = path + len;
    for (;;) {
        const char *slash = memchr(p, '/', (size_t)(end - p));
        const char *stop = slash ? slash : end;
        if (nseg == ROUTE_MAX_SEGMENTS)
            return ROUTE_NOT_FOUND;
        segs[nseg++] = (seg_t){p, (size_t)(stop - p), false};
        if (!slash)
            break;
        p = slash + 1;
    }
    const compiled_t *chosen = NULL, *head_via_get = NULL;
    unsigned allow = 0;
    for (size_t i = r->first[nseg]; i < r->first[nseg + 1]; i++) {
        const compiled_t *c = &r->routes[i];
        if (!fits(c, segs))
            continue;
        allow |= c->row->methods;
        if (!chosen && (c->row->methods & method)) {
            chosen = c;
            if (method != ROUTE_HEAD)
                break;
        }
        if (method == ROUTE_HEAD && !head_via_get && (c->row->methods & ROUTE_GET))
            head_via_get = c;
    }
    if (!chosen)
        chosen = head_via_get;
    if (chosen) {
        fill_params(chosen, segs, params);
        *route = chosen->row;
        return ROUTE_MATCH;
    }
    if (!allow)
        return ROUTE_NOT_FOUND;
    if (allow & ROUTE_GET)
        allow |= ROUTE_HEAD;
    methods_list(allow, ", ", params->allow, sizeof params->allow);
    return ROUTE_METHOD_NOT_ALLOWED;
}

const char *route_param(const route_params_t *p, const char *name)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->names[i], name) == 0)
            return p->values[i];
    return NULL;
}

void route_cache_policy(const route_t *r, cache_policy_t *out)
{
    out->ttl_ms = r->cache.ttl_ms;
    out->swr_ms = r->cache.swr_ms;
    out->stale_if_error_ms = r->cache.stale_if_error_ms;
    out->lock_timeout_ms = r->cache.lock_timeout_ms > 0 ? r->cache.lock_timeout_ms : CACHE_DEFAULT_LOCK_TIMEOUT_MS;
}

/* ---- URL normalisation ---- */

static bool unreserved(int c)
{
    return is_alpha((char)c) || is_digit((char)c) || c == '-' || c == '.' || c == '_' || c == '~';
}

/* Writes s[0..len) to out with escapes normalised; returns the bytes written
 * (never more than len). */
static size_t norm_component(const char *s, size_t len, char *out)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            int v = hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2]);
            if (unreserved(v)) {
                out[o++] = (char)v;
            } else {
                out[o++] = '%';
                out[o++] = hex[v >> 4];
                out[o++] = hex[v & 15];
            }
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    return o;
}

char *route_norm_path(const char *path)
{
    if (!path)
        path = "";
    size_t len = strcspn(path, "?#");
    char *out = xmalloc(len + 1);
    out[norm_component(path, len, out)] = '\0';
    return out;
}

typedef struct qpair {
    const char *s; /* normalised, inside the scratch buffer */
    size_t len;
    size_t name_len;
    size_t index;
} qpair_t;

static int by_name(const void *pa, const void *pb)
{
    const qpair_t *a = pa, *b = pb;
    size_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->s, b->s, n);
    if (c)
        return c;
    if (a->name_len != b->name_len)
        return a->name_len < b->name_len ? -1 : 1;
    return a->index < b->index ? -1 : a->index > b->index;
}

char *route_norm_query(const char *query)
{
    if (!query)
        query = "";
    if (*query == '?')
        query++;
    size_t len = strcspn(query, "#");
    char *scratch = xmalloc(len + 1);
    qpair_t *pairs = xcalloc(len / 2 + 1, sizeof *pairs);
    size_t np = 0, used = 0;
    const char *p = query, *end = query + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if (stop > p) {
            qpair_t *q = &pairs[np];
            q->index = np;
            q->s = scratch + used;
            q->len = norm_component(p, (size_t)(stop - p), scratch + used);
            const char *eq = memchr(q->s, '=', q->len);
            q->name_len = eq ? (size_t)(eq - q->s) : q->len;
            used += q->len;
            np++;
        }
        p = stop + 1;
    }
    qsort(pairs, np, sizeof *pairs, by_name);
    char *out = xmalloc(used + np + 1);
    size_t o = 0;
    for (size_t i = 0; i < np; i++) {
        if (i)
            out[o++] = '&';
        memcpy(out + o, pairs[i].s, pairs[i].len);
        o += pairs[i].len;
    }
    out[o] = '\0';
    free(pairs);
    free(scratch);
    return out;
}
