/* common/errbuf.h: filling a caller's error buffer. Errors are values in
 * this project: functions return a status and write the reason into an
 * (err, errlen) pair the caller owns; this is the one formatter for that. */
#ifndef PTEL_ERRBUF_H
#define PTEL_ERRBUF_H

#include <stddef.h>

/* printf into err[errlen] (nothing when err is NULL or errlen 0). Always
 * returns -1, so an error path can `return errbuf_set(err, errlen, ...)`. */
int errbuf_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
