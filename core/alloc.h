/* core/alloc.h: allocation wrappers that abort on out-of-memory, and the
 * always-on assertion. Owns nothing; every pointer returned is owned by the caller. */
#ifndef ECOM_ALLOC_H
#define ECOM_ALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* printf into a new string (owned). */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Process-wide allocator settings, called first by the programs: glibc's fast
 * bins are turned off. A service frees thousands of small objects per batch
 * (stream replies, parsed payloads) next to large buffers, and each large
 * allocation then had to consolidate the fast bins first (malloc_consolidate
 * was a tenth of a service's CPU); without them, frees merge as they happen. */
void alloc_tune(void);

_Noreturn void ecom_assert_fail(const char *expr, const char *file, int line);

/* Stays on in production: logs file:line, then aborts. */
#define ECOM_ASSERT(e) ((e) ? (void)0 : ecom_assert_fail(#e, __FILE__, __LINE__))

#define ECOM_NODISCARD __attribute__((warn_unused_result))
#define ECOM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Reach static helpers from unit tests (static in normal builds). */
#ifdef ECOM_TESTABLE
#define TESTABLE
#else
#define TESTABLE static
#endif

#endif
