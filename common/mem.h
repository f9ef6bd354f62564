/* common/mem.h: allocation that never returns NULL.
 *
 * Like Redis' zmalloc, an allocation failure is not an error path the rest of
 * the program handles: the process logs and aborts, and the broker's unacked
 * bookkeeping (or the stream's pending list) brings back whatever it held.
 * This keeps every other error path about real, recoverable failures. */
#ifndef PTEL_MEM_H
#define PTEL_MEM_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *ptr, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);   /* always NUL-terminates; copies NULs inside */

#endif
