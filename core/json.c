/* core/json.c: see json.h. */
#include "core/json.h"

#include "core/alloc.h"

#include <event2/buffer.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* ---- the validator ----
 *
 * One pass over the text, no document built. Keys are remembered per open
 * object as a hash of their decoded code points and their place in the text;
 * when an object closes, keys with the same hash are compared code point by
 * code point (so "a" and "\u0061" are one key). */

typedef struct key_seen {
    uint64_t hash;
    size_t at; /* the first byte after the key's opening quote */
} key_seen_t;

typedef struct jv {
    const unsigned char *s;
    size_t n, i;
    const char *why;
    key_seen_t *keys;
    size_t nkeys, cap;
    key_seen_t local[64];
} jv_t;

static bool jv_fail(jv_t *v, const char *why)
{
    if (!v->why)
        v->why = why;
    return false;
}

static void skip_ws(jv_t *v)
{
    while (v->i < v->n && (v->s[v->i] == ' ' || v->s[v->i] == '\t' || v->s[v->i] == '\n' || v->s[v->i] == '\r'))
        v->i++;
}

static int hex4(const unsigned char *s, size_t n, size_t i)
{
    if (n - i < 4)
        return -1;
    int u = 0;
    for (size_t k = i; k < i + 4; k++) {
        unsigned char c = s[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        u = u << 4 | d;
    }
    return u;
}

/* The code point of the UTF-8 sequence at s[*i] (lead byte >= 0x80), in its
 * shortest form, not a surrogate, at most U+10FFFF; advances. -1 if not. */
static int32_t utf8_next(const unsigned char *s, size_t n, size_t *i)
{
    unsigned char c = s[*i];
    size_t len;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2, cp = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3, cp = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return -1;
    }
    if (n - *i < len)
        return -1;
    for (size_t k = 1; k < len; k++) {
        unsigned char d = s[*i + k];
        if ((d & 0xc0) != 0x80)
            return -1;
        cp = cp << 6 | (d & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return -1;
    *i += len;
    return (int32_t)cp;
}

bool utf8_valid(const char *s)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        if (u[i] < 0x80)
            i++;
        else if (utf8_next(u, n, &i) < 0)
            return false;
    }
    return true;
}

/* The next code point of a string whose body goes on at *i: 1 (with *cp),
 * 0 at the closing quote (consumed), -1 when the string is malformed: a
 * control character, a bad escape, a lone surrogate, invalid UTF-8, no end. */
static int str_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp)
{
    if (*i >= n)
        return -1;
    unsigned char c = s[*i];
    if (c == '"') {
        (*i)++;
        return 0;
    }
    if (c < 0x20)
        return -1;
    if (c != '\\') {
        if (c < 0x80) {
            *cp = c;
            (*i)++;
            return 1;
        }
        int32_t u = utf8_next(s, n, i);
        if (u < 0)
            return -1;
        *cp = (uint32_t)u;
        return 1;
    }
    if (n - *i < 2)
        return -1;
    c = s[*i + 1];
    *i += 2;
    switch (c) {
    case '"':
    case '\\':
    case '/': *cp = c; return 1;
    case 'b': *cp = '\b'; return 1;
    case 'f': *cp = '\f'; return 1;
    case 'n': *cp = '\n'; return 1;
    case 'r': *cp = '\r'; return 1;
    case 't': *cp = '\t'; return 1;
    case 'u': break;
    default: return -1;
    }
    int u = hex4(s, n, *i);
    if (u < 0 || (u >= 0xdc00 && u <= 0xdfff))
        return -1; /* not hex, or a low surrogate with no high one before it */
    *i += 4;
    if (u >= 0xd800 && u <= 0xdbff) {
        int lo = *i + 6 <= n && s[*i] == '\\' && s[*i + 1] == 'u' ? hex4(s, n, *i + 2) : -1;
        if (lo < 0xdc00 || lo > 0xdfff)
            return -1; /* a high surrogate alone */
        *i += 6;
        u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
    }
    *cp = (uint32_t)u;
    return 1;
}

/* A string; for a key (hash given) also the hash of its code points. A key
 * may not hold U+0000: json-c cuts a key there, so "a\u0000x" and "a" would
 * be two keys here and one in the document. */
static bool string(jv_t *v, uint64_t *hash)
{
    v->i++; /* the opening quote */
    uint64_t h = 14695981039346656037u;
    for (;;) {
        /* plain ASCII needs no decoding */
        while (!hash && v->i < v->n && v->s[v->i] >= 0x20 && v->s[v->i] < 0x80 && v->s[v->i] != '"' &&
               v->s[v->i] != '\\')
            v->i++;
        uint32_t cp;
        int r = str_next(v->s, v->n, &v->i, &cp);
        if (r < 0 || (hash && r == 1 && cp == 0))
            return jv_fail(v, "malformed JSON");
        if (r == 0)
            break;
        h = (h ^ cp) * 1099511628211u;
    }
    if (hash)
        *hash = h;
    return true;
}

static bool digits(jv_t *v)
{
    if (v->i >= v->n || v->s[v->i] < '0' || v->s[v->i] > '9')
        return false;
    while (v->i < v->n && v->s[v->i] >= '0' && v->s[v->i] <= '9')
        v->i++;
    return true;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool number(jv_t *v)
{
    if (v->s[v->i] == '-')
        v->i++;
    if (v->i < v->n && v->s[v->i] == '0')
        v->i++;
    else if (!digits(v))
        return jv_fail(v, "malformed JSON");
    if (v->i < v->n && v->s[v->i] == '.') {
        v->i++;
        if (!digits(v))
            return jv_fail(v, "malformed JSON");
    }
    if (v->i < v->n && (v->s[v->i] == 'e' || v->s[v->i] == 'E')) {
        v->i++;
        if (v->i < v->n && (v->s[v->i] == '+' || v->s[v->i] == '-'))
            v->i++;
        if (!digits(v))
            return jv_fail(v, "malformed JSON");
    }
    return true;
}

static bool literal(jv_t *v, const char *word, size_t len)
{
    if (v->n - v->i < len || memcmp(v->s + v->i, word, len) != 0)
        return jv_fail(v, "malformed JSON");
    v->i += len;
    return true;
}

/* The text being validated, for by_key (qsort passes no context). */
static _Thread_local const jv_t *sorting;

/* Code point order of the keys at a and b (both well formed). */
static int key_order(const unsigned char *s, size_t n, size_t a, size_t b)
{
    for (;;) {
        uint32_t ca = 0, cb = 0;
        int ra = str_next(s, n, &a, &ca), rb = str_next(s, n, &b, &cb);
        if (ra != rb)
            return ra < rb ? -1 : 1; /* the shorter first */
        if (ra == 0)
            return 0;
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
}

/* By hash, then by the keys themselves: equal keys end up side by side even
 * among keys made to share a hash. */
static int by_key(const void *x, const void *y)
{
    const key_seen_t *a = x, *b = y;
    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    return key_order(sorting->s, sorting->n, a->at, b->at);
}

/* Whether the keys of the object from keys[base] on are all different:
 * every pair of a few, else neighbours once sorted (n log n comparisons
 * whatever the keys). */
static bool keys_distinct(jv_t *v, size_t base)
{
    key_seen_t *k = v->keys + base;
    size_t m = v->nkeys - base;
    if (m <= 16) {
        for (size_t i = 0; i < m; i++)
            for (size_t j = i + 1; j < m; j++)
                if (k[j].hash == k[i].hash && key_order(v->s, v->n, k[i].at, k[j].at) == 0)
                    return false;
        return true;
    }
    sorting = v;
    qsort(k, m, sizeof *k, by_key);
    sorting = NULL;
    for (size_t i = 1; i < m; i++)
        if (k[i].hash == k[i - 1].hash && key_order(v->s, v->n, k[i - 1].at, k[i].at) == 0)
            return false;
    return true;
}

static bool value(jv_t *v, int depth);

/* At a container's opening bracket: consumes it, and its closing one too
 * when nothing is between them (then true). */
static bool open_empty(jv_t *v, unsigned char close)
{
    v->i++;
    skip_ws(v);
    if (v->i < v->n && v->s[v->i] == close) {
        v->i++;
        return true;
    }
    return false;
}

/* After a member or an element: 1 at a comma (another follows), 0 at the
 * container's closing bracket (consumed), -1 at anything else. */
static int comma_or_close(jv_t *v, unsigned char close)
{
    skip_ws(v);
    if (v->i < v->n && (v->s[v->i] == ',' || v->s[v->i] == close))
        return v->s[v->i++] == ',';
    jv_fail(v, "malformed JSON");
    return -1;
}

static bool object(jv_t *v, int depth)
{
    size_t base = v->nkeys;
    if (open_empty(v, '}'))
        return true;
    for (;;) {
        skip_ws(v);
        if (v->i >= v->n || v->s[v->i] != '"')
            return jv_fail(v, "malformed JSON");
        key_seen_t k = {.at = v->i + 1};
        if (!string(v, &k.hash))
            return false;
        if (v->nkeys == v->cap) {
            v->cap *= 2;
            if (v->keys == v->local) {
                v->keys = xmalloc(v->cap * sizeof *v->keys);
                memcpy(v->keys, v->local, sizeof v->local);
            } else {
                v->keys = xrealloc(v->keys, v->cap * sizeof *v->keys);
            }
        }
        v->keys[v->nkeys++] = k;
        skip_ws(v);
        if (v->i >= v->n || v->s[v->i] != ':')
            return jv_fail(v, "malformed JSON");
        v->i++;
        if (!value(v, depth + 1))
            return false;
        int more = comma_or_close(v, '}');
        if (more < 0)
            return false;
        if (!more)
            break;
    }
    bool ok = keys_distinct(v, base);
    v->nkeys = base;
    return ok || jv_fail(v, "duplicate key in JSON object");
}

static bool array(jv_t *v, int depth)
{
    if (open_empty(v, ']'))
        return true;
    for (;;) {
        if (!value(v, depth + 1))
            return false;
        int more = comma_or_close(v, ']');
        if (more <= 0)
            return more == 0;
    }
}

/* A value at depth (the document is at 1; a member or element one deeper
 * than its container: json-c's count, so that both refuse the same depths). */
static bool value(jv_t *v, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return jv_fail(v, "JSON nested too deeply");
    skip_ws(v);
    if (v->i >= v->n)
        return jv_fail(v, "malformed JSON");
    switch (v->s[v->i]) {
    case '{': return object(v, depth);
    case '[': return array(v, depth);
    case '"': return string(v, NULL);
    case 't': return literal(v, "true", 4);
    case 'f': return literal(v, "false", 5);
    case 'n': return literal(v, "null", 4);
    default:
        if (v->s[v->i] == '-' || (v->s[v->i] >= '0' && v->s[v->i] <= '9'))
            return number(v);
        return jv_fail(v, "malformed JSON");
    }
}

int json_validate(const char *buf, size_t len, const char **why)
{
    if (len == 0) {
        *why = "empty body";
        return -1;
    }
    jv_t v = {.s = (const unsigned char *)buf, .n = len, .cap = sizeof v.local / sizeof v.local[0]};
    v.keys = v.local;
    bool ok = value(&v, 1);
    if (ok) {
        size_t lead = 0; /* a value was read: it starts before len */
        while (buf[lead] == ' ' || buf[lead] == '\t' || buf[lead] == '\n' || buf[lead] == '\r')
            lead++;
        skip_ws(&v);
        if (buf[lead] == 'n')
            ok = jv_fail(&v, "the JSON document is null"); /* there is nothing to hand over */
        else if (v.i < v.n)
            ok = jv_fail(&v, "trailing data after the JSON value");
    }
    if (v.keys != v.local)
        free(v.keys);
    if (!ok)
        *why = v.why;
    return ok ? 0 : -1;
}

int json_parse_strict(const char *buf, size_t len, json_object **out, const char **why)
{
    *out = NULL;
    if (len > INT_MAX) { /* json-c takes an int */
        *why = "JSON text too large";
        return -1;
    }
    if (json_validate(buf, len, why) != 0)
        return -1;
    /* json-c accepts all the validator does (and more); it builds the document */
    json_tokener *tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
    json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
    if (!o && json_tokener_get_error(tok) == json_tokener_continue)
        o = json_tokener_parse_ex(tok, " ", 1); /* a number at the very end needs a character after it */
    bool ok = o && json_tokener_get_error(tok) == json_tokener_success;
    json_tokener_free(tok);
    if (!ok) {
        json_object_put(o);
        *why = "malformed JSON"; /* not expected: json-c takes every text the validator does */
        return -1;
    }
    *out = o;
    return 0;
}

const char *json_get_str(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    const char *s = json_object_get_string(v);
    /* a "\u0000" inside would cut the C string: the handler would act on a
     * prefix of what the client sent */
    return strlen(s) == (size_t)json_object_get_string_len(v) ? s : NULL;
}

bool json_get_int64(json_object *o, const char *key, int64_t *out)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return false;
    *out = json_object_get_int64(v);
    return true;
}

void json_buf_str(struct evbuffer *b, const char *s)
{
    json_buf_strn(b, s, strlen(s));
}

void json_buf_strn(struct evbuffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    evbuffer_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        evbuffer_add(b, s + run, i - run);
        char esc[6] = {'\\', (char)c, 0, 0, 0, 0};
        size_t el = 2;
        if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        evbuffer_add(b, esc, el);
        run = i + 1;
    }
    evbuffer_add(b, s + run, len - run);
    evbuffer_add(b, "\"", 1);
}
