/* common/pyjson.h: JSON values with Python's exact semantics.
 *
 * Why our own JSON and not cJSON: the Python side must not notice the worker
 * is not Python. Task arguments and results must round-trip byte-exact as a
 * Python worker returns them (big integers never pass through a double,
 * floats print as Python's repr, non-ASCII is escaped as json.dumps does),
 * and the telemetry `payload_json` column must equal
 * json.dumps(payload, sort_keys=True, separators=(",", ":")) byte for byte
 * (CONTRACT §3). cJSON is used only where bytes don't matter (control plane).
 *
 * Model: the value json.loads() would build.
 *  - PJ_INT keeps its canonical decimal text (arbitrary size; "-0" -> "0").
 *  - PJ_FLOAT is a double; 1e999 parses to inf as Python does, and NaN,
 *    Infinity, -Infinity literals are accepted (json.loads accepts them).
 *  - Strings are UTF-8. Lone surrogates from \uD800-style escapes, which
 *    Python keeps in a str, are stored as their 3-byte (WTF-8) form so that
 *    dumping restores the same escape. Strings may contain NUL.
 *  - Objects keep first-insertion order; a duplicate key keeps the first
 *    key's position and takes the last value (Python dict semantics).
 *  - Input must be valid UTF-8 (json.loads on str); invalid UTF-8 is an error.
 * Everything returned is owned by the caller unless marked "borrowed". */
#ifndef PTEL_PYJSON_H
#define PTEL_PYJSON_H

#include <stddef.h>

#include "common/buf.h"

/* Nesting deeper than this is refused with an error, never a crash (CPython's
 * own limit is near 1000 and depends on the caller's stack depth). */
#define PJ_MAX_DEPTH 900

typedef enum {
    PJ_NULL, PJ_BOOL, PJ_INT, PJ_FLOAT, PJ_STRING, PJ_ARRAY, PJ_OBJECT
} pj_type;

typedef struct pj_value pj_value;

typedef struct pj_str {
    char *ptr;       /* NUL-terminated for convenience; len is authoritative */
    size_t len;
} pj_str;

typedef struct pj_member {
    pj_str key;
    pj_value *value;
} pj_member;

struct pj_value {
    pj_type type;
    union {
        int boolean;                                           /* PJ_BOOL */
        char *int_text;                                        /* PJ_INT: "-123", "0" */
        double number;                                         /* PJ_FLOAT */
        pj_str string;                                         /* PJ_STRING */
        struct { pj_value **items; size_t len, cap; } array;   /* PJ_ARRAY */
        struct { pj_member *members; size_t len, cap; } object;/* PJ_OBJECT */
    } u;
};

typedef struct pj_error {
    size_t offset;       /* byte offset into the input where parsing failed */
    char msg[160];       /* e.g. "Expecting value: line 1 column 5 (char 4)" */
} pj_error;

/* Parse like json.loads(text). NULL on error with err filled (err may be NULL).
 * err->msg is CPython's exception text: JSONDecodeError ("Expecting ','
 * delimiter: line 1 column 5 (char 4)", positions in code points),
 * RecursionError past PJ_MAX_DEPTH, ValueError for an int of more than 4300
 * digits, UnicodeDecodeError ("'utf-8' codec can't decode byte 0xff in
 * position 3: invalid start byte") for bad UTF-8; err->offset is in bytes. */
pj_value *pj_parse(const char *text, size_t len, pj_error *err);
void pj_free(pj_value *v);

/* pj_parse into one arena, for hot paths (the telemetry drain): the same
 * values and the same errors, but the whole tree lives in a few blocks owned
 * by the doc instead of one malloc per value, key and string (measured on
 * the dashboard's events: parse+free ~4x cheaper, bench/micro/event_cost.c).
 * The tree is read-only and borrowed from the doc: never pj_free a value of
 * it nor put one into another tree (pj_clone what must outlive the doc).
 * NULL on error, err filled exactly as by pj_parse. */
typedef struct pj_doc pj_doc;
pj_doc *pj_doc_parse(const char *text, size_t len, pj_error *err);
const pj_value *pj_doc_root(const pj_doc *doc);
void pj_doc_free(pj_doc *doc);
pj_value *pj_clone(const pj_value *v);
int pj_equal(const pj_value *a, const pj_value *b);

/* Serialise like json.dumps(v, ...). Default flags (0) = json.dumps(v):
 * ensure_ascii, separators ", " and ": ", insertion order. Appends to out.
 * Invalid UTF-8 in a string built through the constructors is written as
 * \ufffd (parsed strings are always valid). Linear in the output size. */
#define PJ_DUMP_COMPACT   1   /* separators=(",", ":") */
#define PJ_DUMP_SORT_KEYS 2   /* sort_keys=True (by code point, as Python sorts str) */
void pj_dump(buf *out, const pj_value *v, int flags);

/* Python repr() of the value json.loads built: {'a': 1, 'b': [True, None]},
 * 'it\'s' / "it's" quoting as Python picks, floats as repr(float). Used for
 * argsrepr/kwargsrepr and the `result` field of task-succeeded events. */
void pj_repr(buf *out, const pj_value *v);
/* str.isprintable() is exact: pyjson_unicode.inc is generated from Python
 * 3.11 (Unicode 14.0.0) by tests/data/pyjson/gen_unicode_table.py. */

/* Python repr(float): shortest round-trip digits, "1.0", "1e+16", "1e-07",
 * "-0.0", "inf", "nan". pj_dump writes Infinity/-Infinity/NaN instead. */
void pj_float_repr(buf *out, double d);

/* Constructors; the result is owned by the caller. */
pj_value *pj_new_null(void);
pj_value *pj_new_bool(int b);
pj_value *pj_new_int(long long i);
pj_value *pj_new_int_text(const char *canonical_digits);
pj_value *pj_new_float(double d);
pj_value *pj_new_string(const char *s);
pj_value *pj_new_stringn(const char *s, size_t len);
pj_value *pj_new_array(void);
pj_value *pj_new_object(void);

/* Containers take ownership of the value they are given. */
void pj_array_append(pj_value *array, pj_value *item);
void pj_object_set(pj_value *object, const char *key, pj_value *value);
void pj_object_setn(pj_value *object, const char *key, size_t key_len, pj_value *value);

/* Lookups; results are borrowed. NULL when absent or of another type. */
pj_value *pj_object_get(const pj_value *object, const char *key);
const char *pj_get_string(const pj_value *object, const char *key);

/* PJ_INT that fits in long long -> 0 and *out set; otherwise -1. */
int pj_int_value(const pj_value *v, long long *out);
/* PJ_INT or PJ_FLOAT as a double -> 0; otherwise -1. */
int pj_number_value(const pj_value *v, double *out);

#endif
