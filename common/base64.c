/* common/base64.c: RFC 4648 base64 with the standard alphabet and padding
 * (see base64.h). Decoding accepts exactly what Python's
 * base64.b64decode(s, validate=True) accepts for canonical lengths: the
 * alphabet only, a length that is a multiple of 4, at most two '=' and only
 * at the end. Like Python it ignores non-zero bits in the last symbol before
 * the padding ("QR==" decodes to "A"). */
#include "common/base64.h"

#include <stdint.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64_encode(buf *out, const void *data, size_t len)
{
    const unsigned char *p = data;
    buf_reserve(out, (len + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = ((uint32_t)p[i] << 16) | ((uint32_t)p[i + 1] << 8) | p[i + 2];
        char q[4] = {b64_alphabet[v >> 18], b64_alphabet[(v >> 12) & 63],
                     b64_alphabet[(v >> 6) & 63], b64_alphabet[v & 63]};
        buf_append(out, q, 4);
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len) v |= (uint32_t)p[i + 1] << 8;
        char q[4] = {b64_alphabet[v >> 18], b64_alphabet[(v >> 12) & 63],
                     i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=', '='};
        buf_append(out, q, 4);
    }
    if (len == 0) buf_append(out, "", 0);   /* keep data NUL-terminated */
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int base64_decode(buf *out, const char *text, size_t len)
{
    if (len % 4 != 0) return -1;
    size_t pad = 0;
    if (len >= 1 && text[len - 1] == '=') pad++;
    if (len >= 2 && text[len - 2] == '=') pad++;
    size_t start = out->len;
    buf_reserve(out, len / 4 * 3);
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        uint32_t v = 0;
        for (size_t k = 0; k < 4; k++) {
            int d = b64_value(text[i + k]);
            if (d < 0) {
                /* '=' is only valid as the final padding of the last quad */
                if (!(last && text[i + k] == '=' && k >= 4 - pad)) goto bad;
                d = 0;
            }
            v = (v << 6) | (uint32_t)d;
        }
        unsigned char b[3] = {(unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
        buf_append(out, b, last ? 3 - pad : 3);
    }
    if (len == 0) buf_append(out, "", 0);
    return 0;
bad:
    out->len = start;
    if (out->data) out->data[start] = '\0';
    return -1;
}
