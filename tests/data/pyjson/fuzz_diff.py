#!/usr/bin/python3
"""Differential fuzzing of common/pyjson.c against CPython's json module.

    /usr/bin/python3 tests/data/pyjson/fuzz_diff.py [seed] [count]

Compiles fuzz_driver.c with the common/ sources into a temp dir, mutates the
inputs of cases.jsonl (deletions, insertions, replacements, including
non-ASCII and control characters), plus random floats, and compares
json.loads + dumps/sort_keys/repr (or the exception text) with the driver's
answers. Prints the first mismatches; exits 1 when there is any. A mismatch
found here belongs in gen_cases.py as a fixed case.
"""
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
ALPHABET = list('{}[],:"\\ -+.0123456789eEtrufalsnINyu\n\t\r') + [
    "\u00e9", "\U0001F600", "\x00", "\x1f", "\u2028", "\ud800"]


def build(tmp):
    exe = os.path.join(tmp, "fuzz_driver")
    srcs = [os.path.join(HERE, "fuzz_driver.c")] + [
        os.path.join(ROOT, "common", f) for f in ("pyjson.c", "buf.c", "mem.c", "log.c")]
    subprocess.run(["cc", "-O2", "-D_GNU_SOURCE", "-I" + ROOT, "-o", exe] + srcs + ["-lm"],
                   check=True)
    return exe


def inputs(rng, count):
    seeds = [json.loads(l)["input"] for l in open(os.path.join(HERE, "cases.jsonl"))]
    for _ in range(count):
        s = list(rng.choice(seeds)[:300])
        for _ in range(rng.randint(0, 4)):
            p = rng.randint(0, len(s))
            r = rng.random()
            if r < 0.3 and s:
                del s[min(p, len(s) - 1)]
            elif r < 0.7:
                s.insert(p, rng.choice(ALPHABET))
            elif s:
                s[min(p, len(s) - 1)] = rng.choice(ALPHABET)
        yield "".join(s)
    for _ in range(count):
        d = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
        if math.isfinite(d):
            yield repr(d)
        yield "%.*e" % (rng.randint(0, 20), rng.uniform(-1, 1) * 10 ** rng.randint(-320, 308))


def python_answer(text):
    try:
        v = json.loads(text)
    except (ValueError, RecursionError) as e:
        return ("E", str(e))
    return ("O", json.dumps(v), json.dumps(v, sort_keys=True, separators=(",", ":")), repr(v))


def main():
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    rng = random.Random(seed)
    cases = []
    for t in inputs(rng, count):
        try:
            cases.append((t, t.encode("utf-8")))
        except UnicodeEncodeError:   # a raw lone surrogate has no UTF-8 form
            pass
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        feed = "".join(b.hex() + "\n" for _, b in cases)
        out = subprocess.run([exe], input=feed, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    bad = 0
    for (text, _), line in zip(cases, out):
        f = line.split("\t")
        got = tuple([f[0]] + [bytes.fromhex(x).decode("utf-8", "surrogatepass") for x in f[1:]])
        want = python_answer(text)
        if got != want:
            bad += 1
            if bad <= 10:
                print("MISMATCH %r\n  python: %r\n  ours:   %r" % (text[:200], want, got))
    print("%d inputs, %d mismatches" % (len(cases), bad))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
