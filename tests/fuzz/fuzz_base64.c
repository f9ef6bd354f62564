/* tests/fuzz/fuzz_base64.c: base64_decode on arbitrary text, plus round trips.
 * Properties: decode never touches `out` on failure; encode(decode(x))
 * decodes to the same bytes; decode(encode(x)) == x for any bytes x. */
#include "fuzz_common.h"
#include "common/base64.h"
#include "common/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    buf out = BUF_INIT;
    buf_append(&out, "pre", 3);
    int rc = base64_decode(&out, (const char *)data, size);
    if (rc != 0) {
        FUZZ_CHECK(out.len == 3 && memcmp(out.data, "pre", 3) == 0, "out changed on failure");
    } else {
        buf enc = BUF_INIT, again = BUF_INIT;
        base64_encode(&enc, out.data + 3, out.len - 3);
        FUZZ_CHECK(enc.len == size, "re-encoded length %zu != input %zu", enc.len, size);
        FUZZ_CHECK(base64_decode(&again, enc.data, enc.len) == 0, "own encoding refused");
        FUZZ_CHECK(again.len == out.len - 3 && memcmp(again.data, out.data + 3, again.len) == 0,
                   "decode(encode(decode(x))) != decode(x)");
        buf_free(&enc);
        buf_free(&again);
    }
    buf_free(&out);

    /* The input as raw bytes: must survive encode -> decode. */
    buf enc = BUF_INIT, dec = BUF_INIT;
    base64_encode(&enc, data, size);
    FUZZ_CHECK(enc.len == (size + 2) / 3 * 4, "encoded length %zu for %zu bytes", enc.len, size);
    FUZZ_CHECK(base64_decode(&dec, enc.data, enc.len) == 0, "own encoding refused");
    FUZZ_CHECK(dec.len == size && (size == 0 || memcmp(dec.data, data, size) == 0),
               "decode(encode(x)) != x");
    buf_free(&enc);
    buf_free(&dec);
    return 0;
}
