/* common/base64.h: standard-alphabet, padded base64 (RFC 4648 §4), as kombu
 * writes message bodies on Redis. Decoding is strict: a wrong character,
 * wrong padding or a wrong length is an error, never a guess. */
#ifndef PTEL_BASE64_H
#define PTEL_BASE64_H

#include <stddef.h>

#include "common/buf.h"

void base64_encode(buf *out, const void *data, size_t len);
/* Appends the decoded bytes to out. 0 on success, -1 on malformed input
 * (out is then left as it was). Python's b64decode ignores nothing either:
 * kombu's bodies have no whitespace. */
int base64_decode(buf *out, const char *text, size_t len);

#endif
