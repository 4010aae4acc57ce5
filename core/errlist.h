/* core/errlist.h: a growing list of problems, one per line, so startup can
 * report every problem at once. Owns its text (the caller frees .s). */
#ifndef ECOM_ERRLIST_H
#define ECOM_ERRLIST_H

#include <stddef.h>

typedef struct errlist {
    char *s; /* NULL while empty; each problem ends with '\n' */
    size_t len;
} errlist_t;

void errlist_add(errlist_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
