/* tests/fuzz/fuzz_message_body.c: message_decode with a fuzzed body inside a
 * well-formed envelope, so the fuzzer works on the raw body bytes instead of
 * their base64.
 *
 * Input: byte 0 = options, the rest = body bytes.
 *   bit 0      content-type: 0 application/json, 1 application/x-msgpack
 *   bits 1-3   compression: 0 none, 1 zlib-compressed by the harness, 2 bz2
 *              compressed by the harness, 3 body given as a zlib stream
 *              (raw), 4 body given as a bz2 stream (raw), 5 unknown
 *              compression name, 6-7 none
 *   bit 4      protocol: 0 v2 (headers.task/id set), 1 v1 (no headers.task:
 *              the body must be the task object)
 *   bit 5      utf-8 vs binary content-encoding */
#include <bzlib.h>
#include <zlib.h>

#include "fuzz_message.h"
#include "common/base64.h"

static int compress_zlib(const uint8_t *in, size_t n, buf *out)
{
    uLongf cap = compressBound(n);
    buf_reserve(out, cap);
    if (compress((Bytef *)out->data, &cap, in, n) != Z_OK) return -1;
    out->len = cap;
    return 0;
}

static int compress_bz2(const uint8_t *in, size_t n, buf *out)
{
    unsigned int cap = (unsigned int)(n + n / 100 + 600);
    buf_reserve(out, cap);
    if (BZ2_bzBuffToBuffCompress(out->data, &cap, (char *)in, (unsigned int)n, 1, 0, 30) != BZ_OK)
        return -1;
    out->len = cap;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 64 * 1024) return 0;
    uint8_t opt = data[0];
    const uint8_t *body = data + 1;
    size_t n = size - 1;
    int msgpack = opt & 1, comp = (opt >> 1) & 7, v1 = (opt >> 4) & 1, binary = (opt >> 5) & 1;

    buf payload = BUF_INIT;
    const char *comp_name = NULL;
    switch (comp) {
    case 1: comp_name = "application/x-gzip"; if (compress_zlib(body, n, &payload)) goto out; break;
    case 2: comp_name = "application/x-bz2"; if (compress_bz2(body, n, &payload)) goto out; break;
    case 3: comp_name = "application/x-gzip"; buf_append(&payload, body, n); break;
    case 4: comp_name = "application/x-bz2"; buf_append(&payload, body, n); break;
    case 5: comp_name = "application/x-lzma"; buf_append(&payload, body, n); break;
    default: buf_append(&payload, body, n); break;
    }

    buf env = BUF_INIT;
    buf_puts(&env, "{\"body\": \"");
    base64_encode(&env, payload.data, payload.len);
    buf_printf(&env, "\", \"content-encoding\": \"%s\", \"content-type\": \"%s\", \"headers\": {",
               binary ? "binary" : "utf-8", msgpack ? "application/x-msgpack" : "application/json");
    if (!v1)
        buf_puts(&env, "\"lang\": \"py\", \"task\": \"proto.add\", \"id\": "
                       "\"31d6338d-5ff1-42b9-bd30-94da50dc6957\", \"retries\": 0, "
                       "\"timelimit\": [null, null], \"root_id\": \"31d6338d-5ff1-42b9-bd30-94da50dc6957\", "
                       "\"parent_id\": null, \"origin\": \"gen1@vm\"");
    if (comp_name) buf_printf(&env, "%s\"compression\": \"%s\"", v1 ? "" : ", ", comp_name);
    buf_puts(&env, "}, \"properties\": {\"correlation_id\": \"31d6338d-5ff1-42b9-bd30-94da50dc6957\", "
                   "\"reply_to\": \"e3a1da00-4f18-31e1-9e8b-2ee6c72e6c0a\", \"delivery_mode\": 2, "
                   "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, "
                   "\"body_encoding\": \"base64\", \"delivery_tag\": \"e94db955-f83f-4984-8940-86816bcc9b6b\"}}");
    fuzz_decode_envelope(env.data, env.len);
    buf_free(&env);
out:
    buf_free(&payload);
    return 0;
}
