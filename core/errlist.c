/* core/errlist.c: see errlist.h. */
#include "core/errlist.h"

#include "core/alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void errlist_add(errlist_t *e, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t ln = strlen(line);
    e->s = xrealloc(e->s, e->len + ln + 2);
    memcpy(e->s + e->len, line, ln);
    e->len += ln;
    e->s[e->len++] = '\n';
    e->s[e->len] = '\0';
}
