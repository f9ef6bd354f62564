/* tests/fuzz/fuzz_pyjson.c: pj_parse, pj_dump in all four flag combinations,
 * pj_repr and pj_clone on arbitrary bytes.
 * Properties, for every input pj_parse accepts:
 *  - dump(parse(x), flags) re-parses, to a value strictly equal to parse(x)
 *    (same types: an int stays an int, a float a float with the same bits
 *    or NaN; objects in the same order, except that SORT_KEYS dumps compare
 *    order-insensitively);
 *  - dumping is a fixed point: dump(parse(dump(v))) == dump(v) byte for byte;
 *  - SORT_KEYS output has each object's keys in ascending order on re-parse
 *    (checked through the fixed point: sorting a sorted object changes nothing);
 *  - pj_clone(v) is strictly equal to v; pj_repr does not crash.
 * The parser's error path is exercised by every rejected input. */
#include <math.h>

#include "fuzz_common.h"
#include "common/buf.h"
#include "common/pyjson.h"

static int strict_equal(const pj_value *a, const pj_value *b, int ordered);

static int member_equal_unordered(const pj_value *a, const pj_value *b)
{
    for (size_t i = 0; i < a->u.object.len; i++) {
        const pj_member *m = &a->u.object.members[i];
        const pj_member *o = NULL;
        for (size_t j = 0; j < b->u.object.len; j++) {
            const pj_member *c = &b->u.object.members[j];
            if (c->key.len == m->key.len && memcmp(c->key.ptr, m->key.ptr, m->key.len) == 0) {
                o = c;
                break;
            }
        }
        if (!o || !strict_equal(m->value, o->value, 0)) return 0;
    }
    return 1;
}

static int strict_equal(const pj_value *a, const pj_value *b, int ordered)
{
    if (a->type != b->type) return 0;
    switch (a->type) {
    case PJ_NULL: return 1;
    case PJ_BOOL: return !!a->u.boolean == !!b->u.boolean;
    case PJ_INT: return strcmp(a->u.int_text, b->u.int_text) == 0;
    case PJ_FLOAT:
        if (isnan(a->u.number)) return isnan(b->u.number);
        return a->u.number == b->u.number && signbit(a->u.number) == signbit(b->u.number);
    case PJ_STRING:
        return a->u.string.len == b->u.string.len &&
               memcmp(a->u.string.ptr, b->u.string.ptr, a->u.string.len) == 0;
    case PJ_ARRAY:
        if (a->u.array.len != b->u.array.len) return 0;
        for (size_t i = 0; i < a->u.array.len; i++)
            if (!strict_equal(a->u.array.items[i], b->u.array.items[i], ordered)) return 0;
        return 1;
    case PJ_OBJECT:
        if (a->u.object.len != b->u.object.len) return 0;
        if (!ordered) return member_equal_unordered(a, b);
        for (size_t i = 0; i < a->u.object.len; i++) {
            const pj_member *m = &a->u.object.members[i], *o = &b->u.object.members[i];
            if (m->key.len != o->key.len || memcmp(m->key.ptr, o->key.ptr, m->key.len) != 0)
                return 0;
            if (!strict_equal(m->value, o->value, ordered)) return 0;
        }
        return 1;
    }
    return 0;
}

static void check_dump(const pj_value *v, int flags, const uint8_t *data, size_t size)
{
    buf d1 = BUF_INIT, d2 = BUF_INIT;
    pj_dump(&d1, v, flags);
    pj_error err;
    pj_value *w = pj_parse(d1.data ? d1.data : "", d1.len, &err);
    FUZZ_CHECK(w != NULL, "dump (flags %d) of an accepted input does not re-parse: %s; dump=%.*s",
               flags, err.msg, (int)(d1.len > 400 ? 400 : d1.len), d1.data);
    FUZZ_CHECK(strict_equal(v, w, !(flags & PJ_DUMP_SORT_KEYS)),
               "parse(dump(v, %d)) != v; input %zu bytes, dump=%.*s", flags, size,
               (int)(d1.len > 400 ? 400 : d1.len), d1.data);
    pj_dump(&d2, w, flags);
    FUZZ_CHECK(d1.len == d2.len && memcmp(d1.data, d2.data, d1.len) == 0,
               "dump not a fixed point (flags %d): %.*s vs %.*s", flags,
               (int)(d1.len > 300 ? 300 : d1.len), d1.data,
               (int)(d2.len > 300 ? 300 : d2.len), d2.data);
    (void)data;
    pj_free(w);
    buf_free(&d1);
    buf_free(&d2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    pj_error err;
    memset(&err, 0, sizeof(err));
    pj_value *v = pj_parse((const char *)data, size, &err);
    if (v == NULL) {
        FUZZ_CHECK(err.offset <= size, "error offset %zu past input %zu", err.offset, size);
        FUZZ_CHECK(memchr(err.msg, '\0', sizeof(err.msg)) != NULL, "error text not terminated");
        return 0;
    }
    for (int flags = 0; flags < 4; flags++) check_dump(v, flags, data, size);
    buf r = BUF_INIT;
    pj_repr(&r, v);
    buf_free(&r);
    pj_value *c = pj_clone(v);
    FUZZ_CHECK(strict_equal(v, c, 1), "pj_clone differs");
    pj_free(c);
    pj_free(v);
    return 0;
}
