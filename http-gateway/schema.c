/* http-gateway/schema.c: see schema.h.
 *
 * Writes into a scratch evbuffer and moves it onto the caller's buffer only when
 * the whole value was written, so an error never leaves half a body behind. */
#include "http-gateway/schema.h"

#include "core/json.h"

#include "core/alloc.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const schema_t schema_any = {.type = SCHEMA_ANY};
const schema_t schema_number = {.type = SCHEMA_NUMBER};
const schema_t schema_integer = {.type = SCHEMA_INTEGER};
const schema_t schema_string = {.type = SCHEMA_STRING};
const schema_t schema_boolean = {.type = SCHEMA_BOOLEAN};

#define PATH_MAX_LEN 200
#define ERR_MAX 320

static _Thread_local char err_text[ERR_MAX];

/* Where in the value the writer is, for error messages ("data[2].id"). */
typedef struct path {
    char s[PATH_MAX_LEN];
    size_t len;
} path_t;

static size_t path_push_name(path_t *p, const char *name)
{
    size_t saved = p->len;
    if (p->len < sizeof p->s) {
        int w = snprintf(p->s + p->len, sizeof p->s - p->len, "%s%s", p->len ? "." : "", name);
        if (w > 0)
            p->len = p->len + (size_t)w < sizeof p->s ? p->len + (size_t)w : sizeof p->s - 1;
    }
    return saved;
}

static size_t path_push_index(path_t *p, size_t i)
{
    size_t saved = p->len;
    if (p->len < sizeof p->s) {
        int w = snprintf(p->s + p->len, sizeof p->s - p->len, "[%zu]", i);
        if (w > 0)
            p->len = p->len + (size_t)w < sizeof p->s ? p->len + (size_t)w : sizeof p->s - 1;
    }
    return saved;
}

static void path_pop(path_t *p, size_t saved)
{
    p->len = saved;
    p->s[saved] = '\0';
}

static int fail(const path_t *p, const char *why)
{
    snprintf(err_text, sizeof err_text, "%s: %s", p->len ? p->s : "(root)", why);
    return -1;
}

static void write_str(struct evbuffer *b, const char *s, size_t len)
{
    json_buf_strn(b, s, len);
}

/* A finite double as JavaScript prints it, close enough: integers below 1e21
 * without exponent, else the shortest form that reads back the same. */
static void format_double(double d, char *buf, size_t cap)
{
    if (d == 0) {
        snprintf(buf, cap, "0");
    } else if (d == trunc(d) && fabs(d) < 1e21) {
        snprintf(buf, cap, "%.0f", d);
    } else {
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(buf, cap, "%.*g", prec, d);
            if (strtod(buf, NULL) == d)
                break;
        }
    }
}

static void write_double(struct evbuffer *b, double d)
{
    if (!isfinite(d)) {
        evbuffer_add(b, "null", 4);
        return;
    }
    char buf[40];
    format_double(d, buf, sizeof buf);
    evbuffer_add(b, buf, strlen(buf));
}

/* A decimal number in a string: optional sign, digits with an optional fraction,
 * optional exponent, surrounding blanks allowed; empty (or blank) reads as 0, as in
 * JavaScript's Number(). */
static bool parse_decimal(const char *s, double *out)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    const char *p = s;
    if (*p == '\0') {
        *out = 0;
        return true;
    }
    if (*p == '+' || *p == '-')
        p++;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9')
            p++, digits++;
    }
    if (digits == 0)
        return false;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    const char *end = p;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p != '\0')
        return false;
    char buf[400];
    size_t n = (size_t)(end - s);
    if (n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    *out = strtod(buf, NULL);
    return true;
}

static bool is_null(json_object *v)
{
    return v == NULL || json_object_is_type(v, json_type_null);
}

/* The value as a double for number and integer schemas; false when it has none. */
static bool as_double(json_object *v, double *out)
{
    switch (json_object_get_type(v)) {
    case json_type_int: *out = (double)json_object_get_int64(v); return true;
    case json_type_double: *out = json_object_get_double(v); return true;
    case json_type_boolean: *out = json_object_get_boolean(v) ? 1 : 0; return true;
    case json_type_string: return parse_decimal(json_object_get_string(v), out);
    default: return false;
    }
}

static int write_number(struct evbuffer *b, json_object *v, const path_t *p)
{
    if (json_object_is_type(v, json_type_int)) {
        evbuffer_add_printf(b, "%" PRId64, json_object_get_int64(v));
        return 0;
    }
    double d;
    if (!as_double(v, &d) || isnan(d))
        return fail(p, "cannot be converted to a number");
    write_double(b, d);
    return 0;
}

static int write_integer(struct evbuffer *b, json_object *v, const path_t *p)
{
    if (json_object_is_type(v, json_type_int)) {
        evbuffer_add_printf(b, "%" PRId64, json_object_get_int64(v));
        return 0;
    }
    double d;
    if (!as_double(v, &d) || !isfinite(d))
        return fail(p, "cannot be converted to an integer");
    d = trunc(d);
    if (fabs(d) < 9.2e18)
        evbuffer_add_printf(b, "%" PRId64, (int64_t)d);
    else
        write_double(b, d);
    return 0;
}

static int write_string(struct evbuffer *b, json_object *v, const path_t *p)
{
    char buf[40];
    switch (json_object_get_type(v)) {
    case json_type_string:
        write_str(b, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        return 0;
    case json_type_int: snprintf(buf, sizeof buf, "%" PRId64, json_object_get_int64(v)); break;
    case json_type_double:
        if (isfinite(json_object_get_double(v)))
            format_double(json_object_get_double(v), buf, sizeof buf);
        else
            snprintf(buf, sizeof buf, "%s",
                     isnan(json_object_get_double(v)) ? "NaN"
                     : json_object_get_double(v) > 0  ? "Infinity"
                                                      : "-Infinity");
        break;
    case json_type_boolean:
        snprintf(buf, sizeof buf, "%s", json_object_get_boolean(v) ? "true" : "false");
        break;
    default: return fail(p, "cannot be converted to a string");
    }
    write_str(b, buf, strlen(buf));
    return 0;
}

static bool truthy(json_object *v)
{
    switch (json_object_get_type(v)) {
    case json_type_boolean: return json_object_get_boolean(v);
    case json_type_int: return json_object_get_int64(v) != 0;
    case json_type_double: {
        double d = json_object_get_double(v);
        return d != 0 && !isnan(d);
    }
    case json_type_string: return json_object_get_string_len(v) > 0;
    case json_type_null: return false;
    default: return true; /* objects and arrays */
    }
}

static void write_as_is(struct evbuffer *b, json_object *v)
{
    if (is_null(v)) {
        evbuffer_add(b, "null", 4);
        return;
    }
    size_t len = 0;
    const char *text = json_object_to_json_string_length(
        v, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    evbuffer_add(b, text, len);
}

static int write_value(struct evbuffer *b, const schema_t *s, json_object *v, path_t *p);

static bool declared(const schema_prop_t *props, const char *key)
{
    for (const schema_prop_t *q = props; q && q->name; q++)
        if (strcmp(q->name, key) == 0)
            return true;
    return false;
}

static int write_object(struct evbuffer *b, const schema_t *s, json_object *v, path_t *p)
{
    if (!json_object_is_type(v, json_type_object))
        return fail(p, "is not an object");
    bool first = true;
    evbuffer_add(b, "{", 1);
    for (const schema_prop_t *q = s->props; q && q->name; q++) {
        json_object *pv = NULL;
        size_t saved = path_push_name(p, q->name);
        if (!json_object_object_get_ex(v, q->name, &pv)) {
            if (q->required)
                return fail(p, "required property is missing");
            path_pop(p, saved);
            continue;
        }
        if (!first)
            evbuffer_add(b, ",", 1);
        first = false;
        write_str(b, q->name, strlen(q->name));
        evbuffer_add(b, ":", 1);
        if (write_value(b, q->schema ? q->schema : &schema_any, pv, p) != 0)
            return -1;
        path_pop(p, saved);
    }
    if (s->additional_properties) {
        json_object_object_foreach(v, key, val)
        {
            if (declared(s->props, key))
                continue;
            if (!first)
                evbuffer_add(b, ",", 1);
            first = false;
            write_str(b, key, strlen(key));
            evbuffer_add(b, ":", 1);
            write_as_is(b, val);
        }
    }
    evbuffer_add(b, "}", 1);
    return 0;
}

static int write_array(struct evbuffer *b, const schema_t *s, json_object *v, path_t *p)
{
    if (!json_object_is_type(v, json_type_array))
        return fail(p, "is not an array");
    size_t n = json_object_array_length(v);
    evbuffer_add(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            evbuffer_add(b, ",", 1);
        size_t saved = path_push_index(p, i);
        if (write_value(b, s->items ? s->items : &schema_any, json_object_array_get_idx(v, i), p) !=
            0)
            return -1;
        path_pop(p, saved);
    }
    evbuffer_add(b, "]", 1);
    return 0;
}

static int write_value(struct evbuffer *b, const schema_t *s, json_object *v, path_t *p)
{
    if (is_null(v) && (s->nullable || s->type == SCHEMA_ANY)) {
        evbuffer_add(b, "null", 4);
        return 0;
    }
    switch (s->type) {
    case SCHEMA_ANY: write_as_is(b, v); return 0;
    case SCHEMA_NUMBER:
    case SCHEMA_INTEGER:
        if (is_null(v)) {
            evbuffer_add(b, "0", 1);
            return 0;
        }
        return s->type == SCHEMA_NUMBER ? write_number(b, v, p) : write_integer(b, v, p);
    case SCHEMA_STRING:
        if (is_null(v)) {
            evbuffer_add(b, "\"\"", 2);
            return 0;
        }
        return write_string(b, v, p);
    case SCHEMA_BOOLEAN:
        if (truthy(v))
            evbuffer_add(b, "true", 4);
        else
            evbuffer_add(b, "false", 5);
        return 0;
    case SCHEMA_ARRAY: return write_array(b, s, v, p);
    case SCHEMA_OBJECT: return write_object(b, s, v, p);
    }
    return fail(p, "unknown schema type");
}

int schema_write(const schema_t *s, json_object *value, struct evbuffer *out, const char **err)
{
    path_t p = {.len = 0};
    p.s[0] = '\0';
    struct evbuffer *scratch = evbuffer_new();
    ECOM_ASSERT(scratch != NULL);
    int rc = write_value(scratch, s, value, &p);
    if (rc == 0)
        rc = evbuffer_add_buffer(out, scratch) == 0 ? 0 : fail(&p, "out of memory");
    if (rc != 0)
        *err = err_text;
    evbuffer_free(scratch);
    return rc;
}
