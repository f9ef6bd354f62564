/* common/buf.h: the one growable byte buffer every module builds strings in.
 *
 * A buf owns its memory. `data` is always NUL-terminated once anything was
 * appended (the terminator is not counted in `len`), so a buf can be passed
 * where a C string is expected; binary content with NULs is fine too. */
#ifndef PTEL_BUF_H
#define PTEL_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
    char *data;
    size_t len;
    size_t cap;
} buf;

#define BUF_INIT {NULL, 0, 0}

void buf_init(buf *b);
void buf_free(buf *b);                 /* releases memory, leaves b empty and reusable */
void buf_reset(buf *b);                /* len = 0, keeps the allocation */
void buf_reserve(buf *b, size_t extra);
void buf_append(buf *b, const void *p, size_t n);
void buf_puts(buf *b, const char *s);
void buf_putc(buf *b, char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(buf *b, const char *fmt, va_list ap);
const char *buf_cstr(buf *b);          /* "" when empty; never NULL */
char *buf_detach(buf *b);              /* caller owns the NUL-terminated result; b becomes empty */

#endif
