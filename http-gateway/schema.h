/* http-gateway/schema.h: schema-driven JSON serialization of handler responses
 * (gateway.md §1.13, fast-json-stringify semantics): declared properties in schema
 * order, undeclared ones dropped unless additional_properties, values coerced to
 * the declared type, null for a non-nullable scalar written as 0, "" or false, and
 * a missing required property an error that writes nothing.
 * Owns nothing: schemas are static tables the caller declares; values are
 * borrowed json-c objects. */
#ifndef ECOM_SCHEMA_H
#define ECOM_SCHEMA_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

struct evbuffer;

typedef enum {
    SCHEMA_ANY, /* written as it is */
    SCHEMA_NUMBER,
    SCHEMA_INTEGER,
    SCHEMA_STRING,
    SCHEMA_BOOLEAN,
    SCHEMA_ARRAY,
    SCHEMA_OBJECT,
} schema_type_t;

typedef struct schema schema_t;

typedef struct schema_prop {
    const char *name;       /* NULL ends a property list */
    const schema_t *schema; /* the property's value */
    bool required;
} schema_prop_t;

struct schema {
    schema_type_t type;
    bool nullable;              /* null is written as null instead of coerced */
    const schema_prop_t *props; /* SCHEMA_OBJECT: declared properties, NULL-name ended */
    bool additional_properties; /* SCHEMA_OBJECT: keep undeclared properties as they are */
    const schema_t *items;      /* SCHEMA_ARRAY: every element (NULL: as they are) */
};

/* Ready-made scalar schemas for property lists. */
extern const schema_t schema_any, schema_number, schema_integer, schema_string, schema_boolean;

/* Writes value (NULL means JSON null) as described by s, appending to out only on
 * success. Coercions: number from a decimal string, true/false (1/0); integer the
 * same, truncated toward zero; string from a number or boolean; boolean by
 * JavaScript truthiness. On failure returns -1, out is untouched, and *err names
 * the property ("data[2].id: cannot be converted to a number"); it is borrowed from
 * thread-local storage until the next call on this thread. */
int schema_write(const schema_t *s, json_object *value, struct evbuffer *out, const char **err)
    __attribute__((warn_unused_result));

#endif
