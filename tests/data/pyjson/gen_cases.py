#!/usr/bin/python3
"""Generate tests/data/pyjson/cases.jsonl, the expectations common/test_pyjson.c
checks pj_parse/pj_dump/pj_repr against, from CPython's own json module.

    /usr/bin/python3 tests/data/pyjson/gen_cases.py > tests/data/pyjson/cases.jsonl

One JSON object per line (UTF-8, ensure_ascii=False so the test's reader never
sees a lone surrogate; every field is a valid Unicode string):
  {"input": text, "dumps": json.dumps(v),
   "compact_sorted": json.dumps(v, sort_keys=True, separators=(",", ":")),
   "repr": repr(v)}
or, when json.loads(text) raises:
  {"input": text, "error": str(exception)}
"""
import json
import math
import random
import struct
import sys

cases = []


def add(text):
    cases.append(text)


# -- scalars and literals
for t in ["null", "true", "false", "0", "-0", "1", "-1", "42", " 7 ", "\t\n\r 8\n",
          "123456789012345678901234567890", "-123456789012345678901234567890",
          "9007199254740993", "18446744073709551616", "9223372036854775807",
          "-9223372036854775808", "9223372036854775808", "1" * 4300, "-" + "9" * 4300,
          "NaN", "Infinity", "-Infinity", "[NaN, Infinity, -Infinity]"]:
    add(t)

# -- floats: the contract's examples, edges, and many more
for t in ["0.0", "-0.0", "1.0", "1E2", "1e2", "1e+2", "1E-2", "100.0", "1e16", "1e15",
          "1e-7", "1e-5", "1e-4", "0.0001", "0.00001", "0.1", "0.2", "0.30000000000000004",
          "2.5", "-2.5", "5e-324", "1.7976931348623157e308", "2.2250738585072014e-308",
          "1e999", "-1e999", "1e-999", "-1e-999", "1.5e300", "123456789.123", "1e22", "1e23",
          "9999999999999998.0", "1234567890123456789.0", "0.000123456789", "1.5e-07",
          "12345678901234567.0", "1000000000000000.0", "10000000000000000.0",
          "0e0", "0E+0", "-0e-0", "1.000000000000000000001", "4.35", "3.14159", "1.1e1",
          "2e-323", "4.9406564584124654e-324", "0.1e1", "10.0e-1"]:
    add(t)
rng = random.Random(20261127)
for _ in range(1500):
    bits = rng.getrandbits(64)
    d = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if math.isfinite(d):
        add(repr(d))
for _ in range(300):
    add(repr(rng.uniform(-1e6, 1e6)))
    add(repr(round(rng.uniform(0, 1000), rng.randint(0, 6))))
# powers of two and their neighbours: asymmetric rounding intervals
for k in range(-1074, 1024):
    x = math.ldexp(1.0, k)
    add(repr(x))
    add(repr(math.nextafter(x, math.inf)))
    add(repr(math.nextafter(x, 0.0)))

# -- strings
strings = [
    "", "plain", "h\u00e9llo", "\u65e5\u672c\u8a9e", "\U0001F600", "a\U0001F600b\U0001F4A9",
    "\u00a0nbsp", "soft\u00adhyphen", "zw\u200bsp", "line\u2028sep", "para\u2029sep",
    "\ue000private", "\uffff", "\U0010FFFF", "\u0378unassigned", "e\u0301combining",
    "\u3000ideo space", "\u180e", "\ufeffbom-inside", "\U000E0001tag", "\U000F0000pua",
    "it's", 'say "hi"', "both ' and \"", "back\\slash", "'", '"', "''\"",
    "tab\there", "nl\nhere", "cr\rhere", "\x00nul", "\x01\x1f", "\x7f\x80\x9f\xa0\xff",
    "\b\f", "\u0100\u07ff\u0800", "\x85next line",
]
for s in strings:
    add(json.dumps(s))                     # ASCII escaped input
    add(json.dumps(s, ensure_ascii=False))  # raw UTF-8 input
for t in [r'"\ud800"', r'"\udfff"', r'"\udbff"', r'"\ud800\u0041"', r'"\udc00\ud800"',
          r'"\ud83d\ude00"', r'"\ud800\ud800\udc00"', r'"\ud800\\"', r'"\ud800x"',
          r'"\uD83D\uDE00"', r'"\u00e9\u00E9"', r'"\/\b\f\n\r\t\"\\"', r'"\u0000"',
          r'"a\ud800"', r'"\ud800\n"', r'"\udbff\udfff"', r'"\ud7ff\ue000"']:
    add(t)

# -- containers
for t in ['[]', '{}', '[ ]', '{ }', '[1,2,3]', '[1, [2, [3, []]]]', ' [ 1 , 2 ] ',
          '{"a":1,"b":2,"a":3}', '{"b":1,"a":2}', '{"a":{"c":1,"b":2},"A":[{"z":0,"y":1}]}',
          '{"\\ue000":1,"\\ud800":2,"\\ud7ff":3,"\\ud83d\\ude00":4,"a":5,"":6,"ab":7,"\\uffff":8}',
          '{"\\udc00":1,"\\ud800":2,"\\udbff\\udfff":3,"\\u00e9":4,"e":5}',
          '{"x": null, "y": true, "z": false, "n": -0, "f": 1E2}',
          '{"dup":1,"dup":{"dup":2,"dup":3}}', '[{"a":1},{"a":2,"a":3}]',
          '{"k":"it\'s","q":"\\"","both":"\'\\""}',
          '{"schemaVersion":"1","eventId":"e1","payload":{"durationMs":1500,"ratio":0.5,'
          '"name":"caf\u00e9","big":123456789012345678901234567890,"ok":true,"nil":null}}']:
    add(t)
# a large object with duplicates (exercises the parser's key index)
members = ['"k%d":%d' % (i, i) for i in range(200)]
members += ['"k%d":"dup%d"' % (i, i) for i in range(0, 200, 7)]
add("{" + ",".join(members) + "}")
add("[" + ",".join('{"id":%d,"v":%r}' % (i, i / 7) for i in range(300)) + "]")
add("[" * 900 + "]" * 900)
add('{"a":' * 900 + "1" + "}" * 900)

# -- random strings: every plane, unassigned and non-printable code points
def rand_char(rng):
    pick = rng.random()
    if pick < 0.3:
        return chr(rng.randint(0, 0x7F))
    if pick < 0.6:
        return chr(rng.randint(0x80, 0x7FF))
    if pick < 0.85:
        return chr(rng.randint(0x800, 0xFFFF))
    return chr(rng.randint(0x10000, 0x10FFFF))


for _ in range(600):
    s = "".join(rand_char(rng) for _ in range(rng.randint(0, 12)))
    add(json.dumps(s))
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        add(json.dumps(s, ensure_ascii=False))


# -- random documents: nesting, key order, duplicates, sort_keys by code point
KEYS = ["a", "b", "B", "", "aa", "\u00e9", "\ue000", "\ud7ff", "\uffff", "\U0001F600",
        "\U00010000", "z", "\x00", "\x7f", "key with space", "\u2028"]
SURROGATE_KEYS = [r"\ud800", r"\udbff", r"\udc00", r"\udfff"]


def rand_doc(rng, depth):
    pick = rng.random()
    if depth > 4 or pick < 0.3:
        return rng.choice(["null", "true", "false", "0", "-7", "1.5", "1e16", "-0.0", "1E400",
                           '"x"', '"\\u00e9"', '"\\ud800"', "12345678901234567890123",
                           repr(rng.uniform(-1e3, 1e3))])
    ws = lambda: rng.choice(["", "", " ", "\n", " \t "])
    if pick < 0.6:
        items = [rand_doc(rng, depth + 1) for _ in range(rng.randint(0, 5))]
        return "[" + ws() + ("," + ws()).join(items) + ws() + "]"
    members = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.2:
            key = '"' + rng.choice(SURROGATE_KEYS) + '"'
        else:
            key = json.dumps(rng.choice(KEYS), ensure_ascii=rng.random() < 0.5)
        members.append(key + ws() + ":" + ws() + rand_doc(rng, depth + 1))
    return "{" + ws() + ("," + ws()).join(members) + ws() + "}"


docs = []
while len(docs) < 500:      # small documents keep the fixture small
    d = rand_doc(rng, 0)
    if len(d) <= 400:
        docs.append(d)
for d in docs:
    add(d)

# -- mutated documents: whatever Python says, error or value, we must say too
ALPHABET = '{}[],:"\\ -+.0123456789eEtrufalsnINy\n\tu'
for d in docs[:400]:
    for _ in range(3):
        chars = list(d)
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            pos = rng.randint(0, len(chars))
            if op < 0.4 and chars:
                del chars[min(pos, len(chars) - 1)]
            elif op < 0.7:
                chars.insert(pos, rng.choice(ALPHABET))
            elif chars:
                chars[min(pos, len(chars) - 1)] = rng.choice(ALPHABET)
        add("".join(chars))

# -- errors (Python's own messages)
for t in ["", " ", "\n\n  ", "nul", "tru", "x", "-", "-x", "+1", ".5", "1.", "01", "-01",
          "1e", "1e+", "1.e5", "[01]", "[1,]", "[1 2]", "[1", "[", "]", "{", "}",
          '{"a":1,}', '{"a" 1}', '{"a":}', '{1:2}', "{'a':1}", '{"a":1 "b":2}', '{"a"',
          '"abc', '"a\x01"', '"\t"', '"\\x"', '"\\u12x4"', '"\\u12"', '"\\u1234',
          '"\\ud800\\u12x4"', '"\\ud800\\uzzzz"', '"\\', '"abc\\"', "1 x", "[] []",
          "nulll", "truex", "NaNa", "-Inf", "infinity", "\ufeff1", "[\n1,\n2,\n]",
          '{\n"a": 1,\n"b" 2}', '"\u00e9\u00e9\x02"', '["\u00e9", x]', "\u00e9",
          "1" * 4301, "-" + "1" * 4301, "[" * 10000, "[" * 10000 + "]" * 10000,
          '{"a":' * 10000, "[1]]", '{"a":1}}', "[,1]", "{,}", '{"a":1,,"b":2}']:
    add(t)

out = sys.stdout
for text in cases:
    rec = {"input": text}
    try:
        v = json.loads(text)
    except (ValueError, RecursionError) as e:
        rec["error"] = str(e)
    else:
        rec["dumps"] = json.dumps(v)
        rec["compact_sorted"] = json.dumps(v, sort_keys=True, separators=(",", ":"))
        rec["repr"] = repr(v)
    out.write(json.dumps(rec, ensure_ascii=False) + "\n")
