/* core/json.h: strict JSON input over json-c, and small accessors.
 *
 * json-c alone accepts trailing data and resolves duplicate keys to the last
 * value; a gateway that checks one value while a handler reads another is a
 * parser differential. json_parse_strict refuses both, refuses invalid UTF-8,
 * and bounds depth. */
#ifndef ECOM_JSON_H
#define ECOM_JSON_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32

/* Parses exactly len bytes. On success *out is owned by the caller (json_object_put).
 * On failure returns -1 and *why is a static one-line reason. */
int json_parse_strict(const char *buf, size_t len, json_object **out, const char **why)
    __attribute__((warn_unused_result));

/* Borrowed accessors; NULL / false when the key is missing or of another type. */
const char *json_get_str(json_object *o, const char *key);
bool json_get_int64(json_object *o, const char *key, int64_t *out);

/* Appends s as a JSON string literal (with quotes) to a growing buffer. */
struct evbuffer;
void json_buf_str(struct evbuffer *b, const char *s);
/* The same for len bytes, which may include NUL (written as \u0000). */
void json_buf_strn(struct evbuffer *b, const char *s, size_t len);

#endif
