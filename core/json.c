/* core/json.c: see json.h. */
#include "core/json.h"

#include "core/alloc.h"

#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

/* Counts the keys of every object in document pre-order. The text has already
 * been accepted by json-c in strict mode, so only strings and structure matter. */
static size_t count_keys(const char *s, size_t len, size_t *counts, size_t max_objs)
{
    size_t nobj = 0;
    /* stack of object indexes (or SIZE_MAX for arrays) */
    size_t stack[JSON_MAX_DEPTH + 2];
    int depth = -1;
    bool expect_key = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '"') {
            if (expect_key && depth >= 0 && stack[depth] != SIZE_MAX)
                counts[stack[depth]]++;
            expect_key = false;
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
        } else if (c == '{') {
            if (nobj == max_objs || depth + 1 > JSON_MAX_DEPTH)
                return SIZE_MAX;
            counts[nobj] = 0;
            stack[++depth] = nobj++;
            expect_key = true;
        } else if (c == '[') {
            if (depth + 1 > JSON_MAX_DEPTH)
                return SIZE_MAX;
            stack[++depth] = SIZE_MAX;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == ',') {
            expect_key = depth >= 0 && stack[depth] != SIZE_MAX;
        }
    }
    return nobj;
}

/* Walks the parsed tree in the same pre-order; an object with fewer members
 * than keys in the text had a duplicate. */
static bool same_counts(json_object *o, const size_t *counts, size_t n, size_t *idx)
{
    if (json_object_is_type(o, json_type_object)) {
        if (*idx >= n || (size_t)json_object_object_length(o) != counts[*idx])
            return false;
        (*idx)++;
        json_object_object_foreach(o, k, v)
        {
            (void)k;
            if (v && !same_counts(v, counts, n, idx))
                return false;
        }
    } else if (json_object_is_type(o, json_type_array)) {
        size_t al = json_object_array_length(o);
        for (size_t i = 0; i < al; i++) {
            json_object *v = json_object_array_get_idx(o, i);
            if (v && !same_counts(v, counts, n, idx))
                return false;
        }
    }
    return true;
}

int json_parse_strict(const char *buf, size_t len, json_object **out, const char **why)
{
    *out = NULL;
    if (len == 0) {
        *why = "empty body";
        return -1;
    }
    json_tokener *tok = json_tokener_new_ex(JSON_MAX_DEPTH);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = json_tokener_parse_ex(tok, buf, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (!o || jerr != json_tokener_success) {
        json_object_put(o);
        *why = jerr == json_tokener_error_depth ? "JSON nested too deeply" : "malformed JSON";
        return -1;
    }
    for (size_t i = used; i < len; i++)
        if (buf[i] != ' ' && buf[i] != '\t' && buf[i] != '\n' && buf[i] != '\r') {
            json_object_put(o);
            *why = "trailing data after the JSON value";
            return -1;
        }
    /* objects are at most one per two bytes of text */
    size_t max_objs = len / 2 + 1;
    size_t stack_counts[64];
    size_t *counts = max_objs <= 64 ? stack_counts : xmalloc(max_objs * sizeof *counts);
    size_t n = count_keys(buf, used, counts, max_objs);
    size_t idx = 0;
    bool ok = n != SIZE_MAX && same_counts(o, counts, n, &idx) && idx == n;
    if (counts != stack_counts)
        free(counts);
    if (!ok) {
        json_object_put(o);
        *why = "duplicate key in JSON object";
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
    return json_object_get_string(v);
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
