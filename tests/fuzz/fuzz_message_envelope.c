/* tests/fuzz/fuzz_message_envelope.c: message_decode on an arbitrary envelope
 * (the bytes BRPOP returns). Seeds are the captured envelopes: v2, v1,
 * msgpack, zlib, restored/requeued, and the broker_codec error fixtures.
 * The body stays base64, so this harness mostly explores the envelope,
 * header and property handling; fuzz_message_body explores the body. */
#include "fuzz_message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_decode_envelope((const char *)data, size);
    return 0;
}
