/* core/json.h: strict JSON input (our validator, json-c's documents), and
 * small accessors.
 *
 * json-c alone accepts trailing data and resolves duplicate keys to the last
 * value; a gateway that checks one value while a handler reads another is a
 * parser differential. Even in its strict mode it also takes numbers RFC 8259
 * does not (00, -01, 1., NaN, Infinity), raw control characters in strings,
 * lone surrogate escapes and UTF-8 that is not in its shortest form, all of
 * which PostgreSQL's json type refuses. json_validate accepts exactly RFC 8259
 * JSON texts with distinct keys in every object (compared after unescaping),
 * valid UTF-8, paired surrogates, and at most JSON_MAX_DEPTH levels (a value
 * inside n containers is at level n + 1), but a document that is null alone
 * (there is nothing to hand over) and keys holding U+0000 (json-c cuts a key
 * there: two keys here would be one in the document); json_parse_strict
 * accepts the same texts and builds the document. */
#ifndef ECOM_JSON_H
#define ECOM_JSON_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32

/* Checks that exactly len bytes are one JSON text (above), building nothing:
 * 0, or -1 with *why a static one-line reason. */
int json_validate(const char *buf, size_t len, const char **why) __attribute__((warn_unused_result));

/* Parses exactly len bytes. On success *out is owned by the caller (json_object_put).
 * On failure returns -1 and *why is a static one-line reason. */
int json_parse_strict(const char *buf, size_t len, json_object **out, const char **why)
    __attribute__((warn_unused_result));

/* Whether the NUL-terminated s is valid UTF-8 as JSON texts here must be
 * (shortest forms, no surrogates, at most U+10FFFF). */
bool utf8_valid(const char *s);

/* Borrowed accessors; NULL / false when the key is missing or of another
 * type; json_get_str also NULL for a string that holds U+0000. */
const char *json_get_str(json_object *o, const char *key);
bool json_get_int64(json_object *o, const char *key, int64_t *out);

/* Appends s as a JSON string literal (with quotes) to a growing buffer. */
struct evbuffer;
void json_buf_str(struct evbuffer *b, const char *s);
/* The same for len bytes, which may include NUL (written as \u0000). */
void json_buf_strn(struct evbuffer *b, const char *s, size_t len);

#endif
