/* broker/message.c: decoding Celery task envelopes popped from a kombu Redis
 * list, and building the envelopes a worker publishes (retry republish,
 * fresh tasks).
 *
 * Decode order is kombu's (PROTOCOL §3.1): envelope JSON -> content-type
 * gate -> base64 body -> decompress (headers.compression) -> json/msgpack ->
 * task protocol v2 (headers.task) or v1 (body object). The content-type gate
 * runs before any body byte is touched, so a pickle or yaml payload is never
 * decoded at all (kombu's accept_content check, ContentDisallowed).
 *
 * The envelope is parsed with cJSON (its numbers do not need to be exact);
 * the body and everything we build go through common/pyjson so that big
 * integers, floats and non-ASCII text round-trip as Python writes them.
 * Built envelopes use json.dumps' default separators, exactly as kombu
 * writes them, although Python would accept compact JSON too.
 *
 * Not here: Redis I/O, acks, deciding what to do with a bad message. */
#include "broker/message.h"

#include <bzlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uuid/uuid.h>
#include <zlib.h>

#include <msgpack.h>

#include "common/base64.h"
#include "common/mem.h"
#include "common/timeutil.h"

/* Output is inflated in steps of this size, so the cap is checked before a
 * bomb can allocate much more than the limit. */
#define INFLATE_CHUNK (64u * 1024u)

/* ---- Errors --------------------------------------------------------------- */

static int set_error(message_error *err, message_error_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill err (kind, Celery-like exception class, operator text). Always -1. */
static int set_error(message_error *err, message_error_kind kind, const char *fmt, ...) {
    if (!err) return -1;
    err->kind = kind;
    const char *type = "DecodeError", *module = "kombu.exceptions";
    if (kind == MESSAGE_ERR_CONTENT_DISALLOWED) type = "ContentDisallowed";
    if (kind == MESSAGE_ERR_MISSING_FIELD) {
        type = "InvalidTaskError";
        module = "celery.exceptions";
    }
    snprintf(err->exc_type, sizeof(err->exc_type), "%s", type);
    snprintf(err->exc_module, sizeof(err->exc_module), "%s", module);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return -1;
}

void message_error_free(message_error *err) {
    if (!err) return;
    free(err->task_id);
    free(err->task_name);
    memset(err, 0, sizeof(*err));
}

/* ---- Small helpers -------------------------------------------------------- */

static char *dup_json_str(const cJSON *item) {
    return cJSON_IsString(item) && item->valuestring ? xstrdup(item->valuestring) : NULL;
}

static const cJSON *obj_get(const cJSON *obj, const char *key) {
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

static void new_uuid4(char out[37]) {
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, out);
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as Python's
 * bytes.decode('utf-8') requires for msgpack str with raw=False. */
static int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= need) return 0;   /* truncated sequence */
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* Python repr of a list as the tuple Celery's saferepr(args) prints:
 * "()", "(1,)", "(1, 'a')". */
static void repr_args_tuple(buf *out, const pj_value *args) {
    buf_putc(out, '(');
    size_t n = args ? args->u.array.len : 0;
    for (size_t i = 0; i < n; i++) {
        if (i) buf_puts(out, ", ");
        pj_repr(out, args->u.array.items[i]);
    }
    if (n == 1) buf_putc(out, ',');
    buf_putc(out, ')');
}

/* ---- Decompression -------------------------------------------------------- */

/* zlib stream (RFC 1950): what kombu writes for "application/x-gzip". */
static int inflate_zlib(const buf *in, size_t cap, buf *out, message_error *err) {
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK) return set_error(err, MESSAGE_ERR_DECODE_BODY, "zlib init failed");
    zs.next_in = (Bytef *)in->data;
    zs.avail_in = (uInt)in->len;
    int zrc = Z_OK;
    while (zrc != Z_STREAM_END) {
        if (out->len >= cap) {
            inflateEnd(&zs);
            return set_error(err, MESSAGE_ERR_TOO_LARGE,
                             "compressed body inflates beyond the %zu-byte limit", cap);
        }
        size_t room = cap - out->len < INFLATE_CHUNK ? cap - out->len : INFLATE_CHUNK;
        buf_reserve(out, room);
        zs.next_out = (Bytef *)out->data + out->len;
        zs.avail_out = (uInt)room;
        zrc = inflate(&zs, Z_NO_FLUSH);
        out->len += room - zs.avail_out;
        out->data[out->len] = '\0';
        if (zrc == Z_BUF_ERROR && zs.avail_in == 0) zrc = Z_DATA_ERROR; /* truncated stream */
        if (zrc != Z_OK && zrc != Z_STREAM_END && zrc != Z_BUF_ERROR) {
            inflateEnd(&zs);
            return set_error(err, MESSAGE_ERR_DECODE_BODY, "corrupt zlib body: %s",
                             zs.msg ? zs.msg : "truncated or invalid stream");
        }
    }
    inflateEnd(&zs);
    return 0;
}

static int inflate_bz2(const buf *in, size_t cap, buf *out, message_error *err) {
    bz_stream bs;
    memset(&bs, 0, sizeof(bs));
    if (BZ2_bzDecompressInit(&bs, 0, 0) != BZ_OK)
        return set_error(err, MESSAGE_ERR_DECODE_BODY, "bzip2 init failed");
    bs.next_in = in->data;
    bs.avail_in = (unsigned)in->len;
    int brc = BZ_OK;
    while (brc != BZ_STREAM_END) {
        if (out->len >= cap) {
            BZ2_bzDecompressEnd(&bs);
            return set_error(err, MESSAGE_ERR_TOO_LARGE,
                             "compressed body inflates beyond the %zu-byte limit", cap);
        }
        size_t room = cap - out->len < INFLATE_CHUNK ? cap - out->len : INFLATE_CHUNK;
        buf_reserve(out, room);
        bs.next_out = out->data + out->len;
        bs.avail_out = (unsigned)room;
        brc = BZ2_bzDecompress(&bs);
        out->len += room - bs.avail_out;
        out->data[out->len] = '\0';
        if (brc == BZ_OK && bs.avail_in == 0 && bs.avail_out != 0) brc = BZ_UNEXPECTED_EOF;
        if (brc != BZ_OK && brc != BZ_STREAM_END) {
            BZ2_bzDecompressEnd(&bs);
            return set_error(err, MESSAGE_ERR_DECODE_BODY, "corrupt bzip2 body (error %d)", brc);
        }
    }
    BZ2_bzDecompressEnd(&bs);
    return 0;
}

/* Replace *body with its decompressed form when headers.compression is set. */
static int decompress_body(const cJSON *headers, buf *body, size_t cap, message_error *err) {
    const cJSON *comp = obj_get(headers, "compression");
    if (!comp || cJSON_IsNull(comp)) return 0;
    if (!cJSON_IsString(comp))
        return set_error(err, MESSAGE_ERR_DECODE_BODY, "headers.compression is not a string");
    buf out = BUF_INIT;
    int rc;
    if (strcmp(comp->valuestring, "application/x-gzip") == 0) rc = inflate_zlib(body, cap, &out, err);
    else if (strcmp(comp->valuestring, "application/x-bz2") == 0) rc = inflate_bz2(body, cap, &out, err);
    else
        rc = set_error(err, MESSAGE_ERR_DECODE_BODY, "unsupported compression '%.60s' (supported: "
                       "application/x-gzip, application/x-bz2)", comp->valuestring);
    if (rc != 0) {
        buf_free(&out);
        return -1;
    }
    buf_free(body);
    *body = out;
    return 0;
}

/* ---- msgpack -> pj_value -------------------------------------------------- */

static pj_value *mp_to_pj(const msgpack_object *o, int depth, message_error *err);

static pj_value *mp_string(const char *p, size_t n, const char *what, message_error *err) {
    if (!utf8_valid((const unsigned char *)p, n)) {
        set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack %s is not valid UTF-8", what);
        return NULL;
    }
    return pj_new_stringn(p, n);
}

static pj_value *mp_map(const msgpack_object_map *m, int depth, message_error *err) {
    pj_value *obj = pj_new_object();
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        const char *kp;
        size_t kn;
        if (k->type == MSGPACK_OBJECT_STR) { kp = k->via.str.ptr; kn = k->via.str.size; }
        else if (k->type == MSGPACK_OBJECT_BIN) { kp = k->via.bin.ptr; kn = k->via.bin.size; }
        else {
            pj_free(obj);
            set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack map key is not a string (type %d)", (int)k->type);
            return NULL;
        }
        if (!utf8_valid((const unsigned char *)kp, kn)) {
            pj_free(obj);
            set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack map key is not valid UTF-8");
            return NULL;
        }
        pj_value *v = mp_to_pj(&m->ptr[i].val, depth + 1, err);
        if (!v) {
            pj_free(obj);
            return NULL;
        }
        pj_object_setn(obj, kp, kn, v);
    }
    return obj;
}

static pj_value *mp_to_pj(const msgpack_object *o, int depth, message_error *err) {
    char num[32];
    if (depth > PJ_MAX_DEPTH) {
        set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack body nested deeper than %d", PJ_MAX_DEPTH);
        return NULL;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return pj_new_null();
    case MSGPACK_OBJECT_BOOLEAN: return pj_new_bool(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(num, sizeof(num), "%llu", (unsigned long long)o->via.u64);
        return pj_new_int_text(num);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(num, sizeof(num), "%lld", (long long)o->via.i64);
        return pj_new_int_text(num);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return pj_new_float(o->via.f64);
    case MSGPACK_OBJECT_STR: return mp_string(o->via.str.ptr, o->via.str.size, "str", err);
    case MSGPACK_OBJECT_BIN: return mp_string(o->via.bin.ptr, o->via.bin.size, "bin", err);
    case MSGPACK_OBJECT_ARRAY: {
        pj_value *arr = pj_new_array();
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            pj_value *v = mp_to_pj(&o->via.array.ptr[i], depth + 1, err);
            if (!v) {
                pj_free(arr);
                return NULL;
            }
            pj_array_append(arr, v);
        }
        return arr;
    }
    case MSGPACK_OBJECT_MAP: return mp_map(&o->via.map, depth, err);
    case MSGPACK_OBJECT_EXT:
    default:
        set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack extension types are not supported");
        return NULL;
    }
}

/* msgpack-c allocates a container's whole element array from the header's
 * count before it reads any element, so a 5-byte body declaring 2^32 items
 * asks for 64 GiB (found by tests/fuzz/fuzz_message_body). Every element
 * takes at least one byte, so a count larger than the bytes left cannot be
 * honest: refuse it before msgpack-c sees it. Walks the headers only, in
 * O(len). Truncated input is refused too (msgpack-c would allocate before
 * noticing the truncation: found by the same harness). */
static int mp_counts_plausible(const unsigned char *p, size_t len) {
    size_t pos = 0, pending = 1;
    while (pending > 0 && pos < len) {
        if (pending > len - pos) return 0;                        /* truncated */
        unsigned c = p[pos++];
        size_t hdr = 0, skip = 0, per_item = 0, n = 0;
        pending--;
        if (c >= 0x80 && c <= 0x8f) { n = c & 0x0f; per_item = 2; }
        else if (c >= 0x90 && c <= 0x9f) { n = c & 0x0f; per_item = 1; }
        else if (c >= 0xa0 && c <= 0xbf) skip = c & 0x1f;
        else if (c >= 0xc4) {
            switch (c) {
            case 0xc4: case 0xd9: hdr = 1; break;                 /* bin8, str8 */
            case 0xc5: case 0xda: hdr = 2; break;                 /* bin16, str16 */
            case 0xc6: case 0xdb: hdr = 4; break;                 /* bin32, str32 */
            case 0xc7: hdr = 1; skip = 1; break;                  /* ext8 (+type) */
            case 0xc8: hdr = 2; skip = 1; break;
            case 0xc9: hdr = 4; skip = 1; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                           /* fixext 1..16 (+type) */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: hdr = 2; per_item = 1; break;              /* array16/32 */
            case 0xdd: hdr = 4; per_item = 1; break;
            case 0xde: hdr = 2; per_item = 2; break;              /* map16/32 */
            case 0xdf: hdr = 4; per_item = 2; break;
            default: break;                                       /* negative fixint */
            }
        }
        if (hdr > len - pos) return 0;                            /* truncated */
        for (size_t i = 0; i < hdr; i++) n = (n << 8) | p[pos++];
        if (per_item) {
            /* Items still owed need a byte each too: bounds the total. */
            if (n > (len - pos) / per_item || n * per_item > len - pos - pending) return 0;
            pending += n * per_item;
        } else {
            if (n > len - pos || skip > len - pos - n) return 0;   /* truncated */
            pos += n + skip;
        }
    }
    /* Truncated input can never be valid msgpack, and msgpack-c would
     * allocate the containers it has seen before noticing: refuse it here. */
    return pending == 0;
}

static pj_value *decode_msgpack(const buf *body, message_error *err) {
    if (!mp_counts_plausible((const unsigned char *)body->data, body->len)) {
        set_error(err, MESSAGE_ERR_DECODE_BODY, "body is not valid msgpack (a container declares more items than the body has bytes)");
        return NULL;
    }
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(&up, body->data ? body->data : "", body->len, &off);
    pj_value *v = NULL;
    if (rc != MSGPACK_UNPACK_SUCCESS) set_error(err, MESSAGE_ERR_DECODE_BODY, "body is not valid msgpack");
    else if (off != body->len) set_error(err, MESSAGE_ERR_DECODE_BODY, "msgpack body has extra data after the value");
    else v = mp_to_pj(&up.data, 0, err);
    msgpack_unpacked_destroy(&up);
    return v;
}

/* ---- Body ----------------------------------------------------------------- */

/* kombu's registry names, for the ContentDisallowed text. */
static const char *serializer_name(const char *ct) {
    if (strcmp(ct, "application/x-python-serialize") == 0) return "pickle";
    if (strcmp(ct, "application/x-yaml") == 0) return "yaml";
    if (strcmp(ct, "application/json") == 0) return "json";
    if (strcmp(ct, "application/x-msgpack") == 0) return "msgpack";
    return ct;
}

static int content_allowed(const char *ct) {
    return strcmp(ct, "application/json") == 0 || strcmp(ct, "application/x-msgpack") == 0;
}

/* Envelope body -> deserialized value (already content-type checked). */
static pj_value *decode_body(const cJSON *env, const cJSON *headers, const char *ct,
                             const message_limits *lim, message_error *err) {
    const cJSON *body = obj_get(env, "body");
    if (!cJSON_IsString(body)) {
        set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope has no string \"body\"");
        return NULL;
    }
    const cJSON *enc = obj_get(obj_get(env, "properties"), "body_encoding");
    buf raw = BUF_INIT;
    size_t blen = strlen(body->valuestring);
    if (cJSON_IsString(enc) && strcmp(enc->valuestring, "base64") == 0) {
        if (base64_decode(&raw, body->valuestring, blen) != 0) {
            buf_free(&raw);
            set_error(err, MESSAGE_ERR_DECODE_BODY, "body is not valid base64");
            return NULL;
        }
    } else if (!enc || cJSON_IsNull(enc)) {
        buf_append(&raw, body->valuestring, blen);   /* kombu: no body_encoding = body as is */
    } else {
        set_error(err, MESSAGE_ERR_DECODE_BODY, "unsupported body_encoding '%.40s'",
                  cJSON_IsString(enc) ? enc->valuestring : "?");
        return NULL;
    }
    if (decompress_body(headers, &raw, lim->max_decompressed_bytes, err) != 0) {
        buf_free(&raw);
        return NULL;
    }
    pj_value *v = NULL;
    if (strcmp(ct, "application/json") == 0) {
        pj_error pe;
        memset(&pe, 0, sizeof(pe));
        v = pj_parse(raw.data ? raw.data : "", raw.len, &pe);
        if (!v) set_error(err, MESSAGE_ERR_DECODE_BODY, "body is not valid JSON: %.180s", pe.msg);
    } else {
        v = decode_msgpack(&raw, err);
    }
    buf_free(&raw);
    return v;
}

/* ---- Task fields ---------------------------------------------------------- */

/* eta/expires: null/absent -> 0; ISO string -> microseconds; else error. */
static int read_time(const pj_value *v, const char *name, char **text, int64_t *us, message_error *err) {
    if (!v || v->type == PJ_NULL) return 0;
    if (v->type != PJ_STRING || time_parse_iso8601(v->u.string.ptr, v->u.string.len, us) != 0)
        return set_error(err, MESSAGE_ERR_MISSING_FIELD, "invalid %s %s%.64s%s", name,
                         v->type == PJ_STRING ? "'" : "(not a string)", v->type == PJ_STRING ? v->u.string.ptr : "",
                         v->type == PJ_STRING ? "'" : "");
    *text = xstrndup(v->u.string.ptr, v->u.string.len);
    return 0;
}

static char *pj_dup_str(const pj_value *v) {
    return v && v->type == PJ_STRING ? xstrndup(v->u.string.ptr, v->u.string.len) : NULL;
}

/* timelimit [hard, soft]: numbers or null. */
static int read_timelimit(const pj_value *v, task_message *m, message_error *err) {
    if (!v || v->type == PJ_NULL) return 0;
    if (v->type != PJ_ARRAY || v->u.array.len != 2)
        return set_error(err, MESSAGE_ERR_MISSING_FIELD, "timelimit is not a [hard, soft] pair");
    double *dst[2] = {&m->time_limit_hard, &m->time_limit_soft};
    for (int i = 0; i < 2; i++) {
        const pj_value *x = v->u.array.items[i];
        if (x->type == PJ_NULL) continue;
        if (pj_number_value(x, dst[i]) != 0 || *dst[i] < 0)
            return set_error(err, MESSAGE_ERR_MISSING_FIELD, "timelimit holds a non-number");
    }
    return 0;
}

/* Fields shared by v2 headers and v1 bodies (same names, same meaning). */
static int read_common(const pj_value *src, task_message *m, message_error *err) {
    m->root_id = pj_dup_str(pj_object_get(src, "root_id"));
    m->parent_id = pj_dup_str(pj_object_get(src, "parent_id"));
    m->group = pj_dup_str(pj_object_get(src, "group"));
    if (!m->group) m->group = pj_dup_str(pj_object_get(src, "taskset")); /* v1 alias */
    m->origin = pj_dup_str(pj_object_get(src, "origin"));
    m->argsrepr = pj_dup_str(pj_object_get(src, "argsrepr"));
    m->kwargsrepr = pj_dup_str(pj_object_get(src, "kwargsrepr"));
    const pj_value *r = pj_object_get(src, "retries");
    long long retries = 0;
    if (r && r->type != PJ_NULL && (pj_int_value(r, &retries) != 0 || retries < 0 || retries > 1000000000))
        return set_error(err, MESSAGE_ERR_MISSING_FIELD, "retries is not a small non-negative integer");
    m->retries = (int)retries;
    const pj_value *ir = pj_object_get(src, "ignore_result");
    m->ignore_result = ir && ir->type == PJ_BOOL && ir->u.boolean;
    if (read_time(pj_object_get(src, "eta"), "eta", &m->eta_text, &m->eta_us, err) != 0) return -1;
    if (read_time(pj_object_get(src, "expires"), "expires", &m->expires_text, &m->expires_us, err) != 0)
        return -1;
    return read_timelimit(pj_object_get(src, "timelimit"), m, err);
}

/* v2: headers carry the task, body is [args, kwargs, embed]. */
static int read_v2(const pj_value *headers, pj_value *body, task_message *m, message_error *err) {
    m->protocol = 2;
    m->task = pj_dup_str(pj_object_get(headers, "task"));
    m->id = pj_dup_str(pj_object_get(headers, "id"));
    if (!m->id) return set_error(err, MESSAGE_ERR_MISSING_FIELD, "v2 message has no headers.id");
    if (body->type != PJ_ARRAY || body->u.array.len < 2 || body->u.array.len > 3 ||
        body->u.array.items[0]->type != PJ_ARRAY || body->u.array.items[1]->type != PJ_OBJECT ||
        (body->u.array.len == 3 && body->u.array.items[2]->type != PJ_OBJECT &&
         body->u.array.items[2]->type != PJ_NULL))
        return set_error(err, MESSAGE_ERR_MISSING_FIELD,
                         "v2 body is not [args (list), kwargs (dict), embed (dict)]");
    m->args = pj_clone(body->u.array.items[0]);
    m->kwargs = pj_clone(body->u.array.items[1]);
    if (body->u.array.len == 3 && body->u.array.items[2]->type == PJ_OBJECT)
        m->embed = pj_clone(body->u.array.items[2]);
    return read_common(headers, m, err);
}

static void v1_embed_copy(pj_value *embed, const pj_value *body, const char *key) {
    const pj_value *v = pj_object_get(body, key);
    pj_object_set(embed, key, v ? pj_clone(v) : pj_new_null());
}

/* v1: the body object carries everything (PROTOCOL §3.3). */
static int read_v1(pj_value *body, task_message *m, message_error *err) {
    m->protocol = 1;
    if (body->type != PJ_OBJECT)
        return set_error(err, MESSAGE_ERR_MISSING_FIELD, "message has no headers.task and its body is not a v1 task object");
    m->task = pj_dup_str(pj_object_get(body, "task"));
    m->id = pj_dup_str(pj_object_get(body, "id"));
    if (!m->task) return set_error(err, MESSAGE_ERR_MISSING_FIELD, "v1 body has no task name");
    if (!m->id) return set_error(err, MESSAGE_ERR_MISSING_FIELD, "v1 body has no task id");
    const pj_value *a = pj_object_get(body, "args"), *k = pj_object_get(body, "kwargs");
    if ((a && a->type != PJ_ARRAY && a->type != PJ_NULL) || (k && k->type != PJ_OBJECT && k->type != PJ_NULL))
        return set_error(err, MESSAGE_ERR_MISSING_FIELD, "v1 args is not a list or kwargs is not a dict");
    m->args = a && a->type == PJ_ARRAY ? pj_clone(a) : pj_new_array();
    m->kwargs = k && k->type == PJ_OBJECT ? pj_clone(k) : pj_new_object();
    m->embed = pj_new_object();
    v1_embed_copy(m->embed, body, "callbacks");
    v1_embed_copy(m->embed, body, "errbacks");
    pj_object_set(m->embed, "chain", pj_new_null());
    v1_embed_copy(m->embed, body, "chord");
    if (read_common(body, m, err) != 0) return -1;
    if (!m->argsrepr) {
        buf r = BUF_INIT;
        repr_args_tuple(&r, m->args);
        m->argsrepr = buf_detach(&r);
    }
    if (!m->kwargsrepr) {
        buf r = BUF_INIT;
        pj_repr(&r, m->kwargs);
        m->kwargsrepr = buf_detach(&r);
    }
    return 0;
}

/* ---- Envelope ------------------------------------------------------------- */

static void read_properties(const cJSON *env, task_message *m) {
    const cJSON *props = obj_get(env, "properties");
    const cJSON *di = obj_get(props, "delivery_info");
    m->delivery_tag = dup_json_str(obj_get(props, "delivery_tag"));
    m->reply_to = dup_json_str(obj_get(props, "reply_to"));
    m->correlation_id = dup_json_str(obj_get(props, "correlation_id"));
    m->exchange = dup_json_str(obj_get(di, "exchange"));
    m->routing_key = dup_json_str(obj_get(di, "routing_key"));
    m->content_type = dup_json_str(obj_get(env, "content-type"));
    m->content_encoding = dup_json_str(obj_get(env, "content-encoding"));
    const cJSON *prio = obj_get(props, "priority");
    m->priority = cJSON_IsNumber(prio) ? prio->valueint : 0;
    m->redelivered = cJSON_IsTrue(obj_get(obj_get(env, "headers"), "redelivered")) ||
                     cJSON_IsTrue(obj_get(di, "redelivered"));
}

/* What the worker needs to store a FAILURE even when the body is bad. */
static void note_identity(const cJSON *env, message_error *err) {
    const cJSON *headers = obj_get(env, "headers");
    char *id = dup_json_str(obj_get(headers, "id"));
    if (!id) id = dup_json_str(obj_get(obj_get(env, "properties"), "correlation_id"));
    err->task_id = id;
    err->task_name = dup_json_str(obj_get(headers, "task"));
}

static int decode_envelope(const char *raw, size_t len, const message_limits *lim,
                           task_message *m, message_error *err) {
    cJSON *env = cJSON_ParseWithLength(raw, len);
    if (!env) return set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope is not valid JSON");
    m->envelope = env;
    if (!cJSON_IsObject(env)) return set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope is not a JSON object");
    const cJSON *headers = obj_get(env, "headers");
    if (headers && !cJSON_IsObject(headers) && !cJSON_IsNull(headers))
        return set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope headers is not an object");
    if (!cJSON_IsObject(obj_get(env, "properties")))
        return set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope has no properties object");
    note_identity(env, err);
    read_properties(env, m);
    if (!m->delivery_tag)
        return set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope has no properties.delivery_tag");
    if (!m->content_type)
        return set_error(err, MESSAGE_ERR_CONTENT_DISALLOWED, "Refusing to deserialize message without a content-type");
    if (!content_allowed(m->content_type))
        return set_error(err, MESSAGE_ERR_CONTENT_DISALLOWED,
                         "Refusing to deserialize untrusted content of type %.60s (%.80s)",
                         serializer_name(m->content_type), m->content_type);
    pj_value *body = decode_body(env, headers, m->content_type, lim, err);
    if (!body) return -1;
    /* v2 when headers.task exists (Celery's strategy check); v1 otherwise. */
    pj_value *hdr = NULL;
    int rc;
    if (cJSON_IsString(obj_get(headers, "task"))) {
        char *htext = cJSON_PrintUnformatted(headers);
        hdr = pj_parse(htext, strlen(htext), NULL);
        free(htext);
        rc = hdr ? read_v2(hdr, body, m, err)
                 : set_error(err, MESSAGE_ERR_MALFORMED_ENVELOPE, "envelope headers are not valid");
    } else {
        rc = read_v1(body, m, err);
    }
    pj_free(hdr);
    pj_free(body);
    if (rc == 0 && !m->root_id) m->root_id = xstrdup(m->id);   /* Celery: empty root_id = own id */
    return rc;
}

int message_decode(const char *raw, size_t len, const message_limits *limits,
                   task_message *out, message_error *err) {
    message_limits lim = {MESSAGE_MAX_BYTES, MESSAGE_MAX_DECOMPRESSED_BYTES};
    if (limits && limits->max_bytes) lim.max_bytes = limits->max_bytes;
    if (limits && limits->max_decompressed_bytes) lim.max_decompressed_bytes = limits->max_decompressed_bytes;
    memset(out, 0, sizeof(*out));
    memset(err, 0, sizeof(*err));
    if (len > lim.max_bytes) {
        /* Refused unparsed for its size, but its id is still wanted: without
         * it no FAILURE is stored and the client's get() waits until its
         * timeout. The envelope is parsed once, only for the identity, and
         * freed at once; past MESSAGE_IDENTITY_PARSE_MAX not even that. */
        if (len <= MESSAGE_IDENTITY_PARSE_MAX) {
            cJSON *env = cJSON_ParseWithLength(raw, len);
            if (cJSON_IsObject(env)) note_identity(env, err);
            cJSON_Delete(env);
        }
        return set_error(err, MESSAGE_ERR_TOO_LARGE, "message of %zu bytes exceeds the %zu-byte limit",
                         len, lim.max_bytes);
    }
    if (decode_envelope(raw, len, &lim, out, err) != 0) {
        if (out->id && !err->task_id) err->task_id = xstrdup(out->id);
        if (out->task && !err->task_name) err->task_name = xstrdup(out->task);
        message_free(out);
        return -1;
    }
    message_error_free(err);
    out->raw = xstrndup(raw, len);
    out->raw_len = len;
    return 0;
}

void message_free(task_message *m) {
    if (!m) return;
    char **strs[] = {&m->raw, &m->delivery_tag, &m->exchange, &m->routing_key, &m->content_type,
                     &m->content_encoding, &m->reply_to, &m->correlation_id, &m->id, &m->task,
                     &m->root_id, &m->parent_id, &m->group, &m->origin, &m->argsrepr,
                     &m->kwargsrepr, &m->eta_text, &m->expires_text};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) free(*strs[i]);
    pj_free(m->args);
    pj_free(m->kwargs);
    pj_free(m->embed);
    cJSON_Delete(m->envelope);
    memset(m, 0, sizeof(*m));
}

/* ---- Building ------------------------------------------------------------- */

/* The standard v2 header names, in the order as_task_v2 writes them. */
static const char *const v2_header_order[] = {
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", NULL,
};

static int is_standard_header(const char *k, size_t n) {
    for (size_t i = 0; v2_header_order[i]; i++)
        if (strlen(v2_header_order[i]) == n && memcmp(v2_header_order[i], k, n) == 0) return 1;
    /* transport/codec state, not the sender's custom headers */
    return (n == 11 && memcmp(k, "compression", 11) == 0) || (n == 11 && memcmp(k, "redelivered", 11) == 0);
}

static pj_value *str_or_null(const char *s) { return s ? pj_new_string(s) : pj_new_null(); }

static pj_value *time_or_null(int64_t us) {
    if (!us) return pj_new_null();
    buf b = BUF_INIT;
    time_format_iso_offset(&b, us);
    pj_value *v = pj_new_stringn(b.data, b.len);
    buf_free(&b);
    return v;
}

/* A time limit as the Python caller most likely passed it: int when whole. */
static pj_value *limit_value(double s) {
    if (s <= 0) return pj_new_null();
    if (s == floor(s) && s < 1e15) return pj_new_int((long long)s);
    return pj_new_float(s);
}

/* json.dumps([args, kwargs, embed]) -> base64, as kombu's json serializer. */
static pj_value *encode_body(const pj_value *args, const pj_value *kwargs, const pj_value *embed) {
    pj_value *body = pj_new_array();
    pj_array_append(body, args ? pj_clone(args) : pj_new_array());
    pj_array_append(body, kwargs ? pj_clone(kwargs) : pj_new_object());
    if (embed) {
        pj_array_append(body, pj_clone(embed));
    } else {
        pj_value *e = pj_new_object();
        pj_object_set(e, "callbacks", pj_new_null());
        pj_object_set(e, "errbacks", pj_new_null());
        pj_object_set(e, "chain", pj_new_null());
        pj_object_set(e, "chord", pj_new_null());
        pj_array_append(body, e);
    }
    buf json = BUF_INIT, b64 = BUF_INIT;
    pj_dump(&json, body, 0);
    base64_encode(&b64, json.data, json.len);
    pj_value *v = pj_new_stringn(b64.data ? b64.data : "", b64.len);
    pj_free(body);
    buf_free(&json);
    buf_free(&b64);
    return v;
}

/* properties.expiration as kombu writes it: str(int(seconds * 1000)), and
 * "0" for an expiry already in the past (Celery clamps to 0). */
static pj_value *expiration_value(double seconds) {
    if (seconds < 0) seconds = 0;
    char ms[32];
    snprintf(ms, sizeof(ms), "%lld", (long long)(seconds * 1000.0));
    return pj_new_string(ms);
}

/* delivery_mode .. delivery_tag, the tail kombu appends to every task's properties. */
static void put_properties_tail(pj_value *props, const pj_value *expiration, const char *exchange,
                                const char *routing_key, int priority, const char *delivery_tag) {
    pj_object_set(props, "delivery_mode", pj_new_int(2));
    if (expiration) pj_object_set(props, "expiration", pj_clone(expiration));
    pj_value *di = pj_new_object();
    pj_object_set(di, "exchange", pj_new_string(exchange ? exchange : ""));
    pj_object_set(di, "routing_key", pj_new_string(routing_key ? routing_key : ""));
    pj_object_set(props, "delivery_info", di);
    pj_object_set(props, "priority", pj_new_int(priority));
    pj_object_set(props, "body_encoding", pj_new_string("base64"));
    char tag[37];
    if (!delivery_tag) {
        new_uuid4(tag);
        delivery_tag = tag;
    }
    pj_object_set(props, "delivery_tag", pj_new_string(delivery_tag));
}

void message_envelope_json(pj_value *body_b64, pj_value *headers, pj_value *props, buf *out)
{
    pj_value *env = pj_new_object();
    pj_object_set(env, "body", body_b64);
    pj_object_set(env, "content-encoding", pj_new_string("utf-8"));
    pj_object_set(env, "content-type", pj_new_string("application/json"));
    pj_object_set(env, "headers", headers);
    pj_object_set(env, "properties", props);
    pj_dump(out, env, 0);
    pj_free(env);
}

static pj_value *header_or_null(const pj_value *hdr, const char *key) {
    const pj_value *v = hdr ? pj_object_get(hdr, key) : NULL;
    return v ? pj_clone(v) : pj_new_null();
}

int message_build_retry(const task_message *orig, int64_t eta_us, const char *origin_node, buf *out) {
    if (!orig || !orig->id || !orig->task || !orig->raw || !orig->args || !orig->kwargs) return -1;
    /* Re-read the envelope with pyjson: custom header values must survive exactly. */
    pj_value *env = pj_parse(orig->raw, orig->raw_len, NULL);
    if (!env) return -1;
    const pj_value *oh = pj_object_get(env, "headers");
    if (oh && oh->type != PJ_OBJECT) oh = NULL;

    pj_value *h = pj_new_object();
    pj_object_set(h, "lang", pj_new_string("py"));
    pj_object_set(h, "task", pj_new_string(orig->task));
    pj_object_set(h, "id", pj_new_string(orig->id));
    pj_object_set(h, "shadow", header_or_null(orig->protocol == 2 ? oh : NULL, "shadow"));
    pj_object_set(h, "eta", time_or_null(eta_us));
    pj_object_set(h, "expires", str_or_null(orig->expires_text));
    pj_object_set(h, "group", str_or_null(orig->group));
    pj_object_set(h, "group_index", header_or_null(orig->protocol == 2 ? oh : NULL, "group_index"));
    pj_object_set(h, "retries", pj_new_int((long long)orig->retries + 1));
    pj_value *tl = pj_new_array();
    pj_array_append(tl, limit_value(orig->time_limit_hard));
    pj_array_append(tl, limit_value(orig->time_limit_soft));
    if (orig->protocol == 2 && oh && pj_object_get(oh, "timelimit")) {
        pj_free(tl);   /* keep the sender's exact numbers */
        tl = pj_clone(pj_object_get(oh, "timelimit"));
    }
    pj_object_set(h, "timelimit", tl);
    pj_object_set(h, "root_id", pj_new_string(orig->root_id ? orig->root_id : orig->id));
    pj_object_set(h, "parent_id", pj_new_string(orig->id));   /* Celery: the retry's parent is itself */
    buf r = BUF_INIT;
    if (orig->argsrepr) buf_puts(&r, orig->argsrepr);
    else repr_args_tuple(&r, orig->args);
    pj_object_set(h, "argsrepr", pj_new_stringn(buf_cstr(&r), r.len));
    buf_reset(&r);
    if (orig->kwargsrepr) buf_puts(&r, orig->kwargsrepr);
    else pj_repr(&r, orig->kwargs);
    pj_object_set(h, "kwargsrepr", pj_new_stringn(buf_cstr(&r), r.len));
    buf_free(&r);
    pj_object_set(h, "origin", str_or_null(origin_node));
    pj_object_set(h, "ignore_result", pj_new_bool(orig->ignore_result));
    for (size_t i = 0; orig->protocol == 2 && oh && i < oh->u.object.len; i++) {
        const pj_member *mb = &oh->u.object.members[i];
        if (!is_standard_header(mb->key.ptr, mb->key.len))
            pj_object_setn(h, mb->key.ptr, mb->key.len, pj_clone(mb->value));
    }

    pj_value *p = pj_new_object();
    pj_object_set(p, "correlation_id", pj_new_string(orig->correlation_id ? orig->correlation_id : orig->id));
    pj_object_set(p, "reply_to", pj_new_string(orig->reply_to ? orig->reply_to : ""));
    pj_object_set(p, "replaced_task_nesting", pj_new_int(0));
    pj_object_set(p, "origin", str_or_null(orig->origin));
    pj_value *expiration = NULL;
    if (orig->expires_us) expiration = expiration_value((double)(orig->expires_us - time_now_us()) / 1e6);
    put_properties_tail(p, expiration, orig->exchange ? orig->exchange : "", orig->routing_key,
                        orig->priority, NULL);
    pj_free(expiration);

    message_envelope_json(encode_body(orig->args, orig->kwargs, orig->embed), h, p, out);
    pj_free(env);
    return 0;
}

static void default_origin(char *out, size_t n) {
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(out, n, "gen%ld@%s", (long)getpid(), host);
}

int message_build_task(const message_new_task *spec, buf *out) {
    if (!spec || !spec->task || !spec->queue) return -1;
    if ((spec->args && spec->args->type != PJ_ARRAY) || (spec->kwargs && spec->kwargs->type != PJ_OBJECT))
        return -1;
    char id[37], origin[300];
    if (spec->id) snprintf(id, sizeof(id), "%s", spec->id);
    else new_uuid4(id);
    const char *task_id = spec->id ? spec->id : id;
    if (spec->origin) snprintf(origin, sizeof(origin), "%s", spec->origin);
    else default_origin(origin, sizeof(origin));
    int64_t now = spec->now_us ? spec->now_us : time_now_us();
    int64_t eta = spec->countdown > 0 ? now + llround(spec->countdown * 1e6) : spec->eta_us;
    int64_t expires = spec->expires_in > 0 ? now + llround(spec->expires_in * 1e6) : spec->expires_us;

    pj_value *h = pj_new_object();
    pj_object_set(h, "lang", pj_new_string("py"));
    pj_object_set(h, "task", pj_new_string(spec->task));
    pj_object_set(h, "id", pj_new_string(task_id));
    pj_object_set(h, "shadow", pj_new_null());
    pj_object_set(h, "eta", time_or_null(eta));
    pj_object_set(h, "expires", time_or_null(expires));
    pj_object_set(h, "group", str_or_null(spec->group));
    pj_object_set(h, "group_index", pj_new_null());
    pj_object_set(h, "retries", pj_new_int(spec->retries));
    pj_value *tl = pj_new_array();
    pj_array_append(tl, limit_value(spec->time_limit_hard));
    pj_array_append(tl, limit_value(spec->time_limit_soft));
    pj_object_set(h, "timelimit", tl);
    pj_object_set(h, "root_id", pj_new_string(spec->root_id ? spec->root_id : task_id));
    pj_object_set(h, "parent_id", str_or_null(spec->parent_id));
    buf r = BUF_INIT;
    repr_args_tuple(&r, spec->args);
    pj_object_set(h, "argsrepr", pj_new_stringn(buf_cstr(&r), r.len));
    buf_reset(&r);
    if (spec->kwargs) pj_repr(&r, spec->kwargs);
    else buf_puts(&r, "{}");
    pj_object_set(h, "kwargsrepr", pj_new_stringn(buf_cstr(&r), r.len));
    buf_free(&r);
    pj_object_set(h, "origin", pj_new_string(origin));
    pj_object_set(h, "ignore_result", pj_new_bool(spec->ignore_result));

    pj_value *p = pj_new_object();
    pj_object_set(p, "correlation_id", pj_new_string(task_id));
    pj_object_set(p, "reply_to", pj_new_string(spec->reply_to ? spec->reply_to : ""));
    pj_value *expiration = NULL;
    if (spec->expires_in > 0) expiration = expiration_value(spec->expires_in);
    else if (spec->expires_us) expiration = expiration_value((double)(spec->expires_us - now) / 1e6);
    put_properties_tail(p, expiration, "", spec->queue, spec->priority, spec->delivery_tag);
    pj_free(expiration);

    message_envelope_json(encode_body(spec->args, spec->kwargs, NULL), h, p, out);
    return 0;
}
