#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py: build the seed corpora tests/fuzz/corpus/<harness>/
from the protocol captures (/work/shared/protocol/captures, or $PTEL_SHARED_DIR/
protocol/captures) and the repo's test fixtures.

Seeds are named by content hash, so re-running is idempotent; the script
clears each corpus directory first. Each harness is capped (MAX_PER_HARNESS
files, MAX_SEED_BYTES each) to keep the corpora well under 2 MB in git.
Corpora that libFuzzer grows during runs live in build-fuzz/, not here.
"""
import base64, hashlib, json, os, re, shutil, sys, zlib, bz2

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PTEL_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
CAP = os.path.join(SHARED, "protocol", "captures")
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(HERE, "corpus")
MAX_PER_HARNESS = 120
MAX_SEED_BYTES = 16 * 1024

corpora = {}


def add(h, data):
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_SEED_BYTES:
        return
    corpora.setdefault(h, {})[hashlib.sha1(data).hexdigest()[:16]] = data


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


golden = json.load(open(os.path.join(CAP, "golden_samples.json")))
monitor = []
mdir = os.path.join(CAP, "monitor_decoded")
for name in sorted(os.listdir(mdir)):
    monitor.extend(jsonl(os.path.join(mdir, name)))

# ---- envelopes (message_envelope, base64, pyjson) ----------------------------
envelopes = []
for k, v in golden.items():
    if isinstance(v, dict) and "raw" in v and (k.startswith("task_") or k.startswith(("restored", "requeued"))):
        envelopes.append(v["raw"])
seen_shapes = set()
for r in monitor:
    if r["cmd"] in ("LPUSH", "RPUSH") and len(r["args"]) > 1:
        for raw in r["args"][1:]:
            try:
                env = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(env, dict):
                continue
            h = env.get("headers") or {}
            shape = (env.get("content-type"), h.get("compression"), h.get("task"), bool(h.get("eta")),
                     bool(h.get("expires")), tuple(sorted(h)))
            if shape not in seen_shapes:
                seen_shapes.add(shape)
                envelopes.append(raw)
fixtures = json.load(open(os.path.join(DATA, "broker_codec", "fixtures.json")))
for k, v in fixtures.items():
    if isinstance(v, dict) and isinstance(v.get("raw"), str):
        envelopes.append(v["raw"])
for raw in envelopes:
    add("message_envelope", raw)
add("message_envelope", golden["unacked_hash_entry"]["raw"])

# ---- bodies (message_body): option byte + raw body bytes ---------------------
def body_seed(env_raw):
    try:
        env = json.loads(env_raw)
        body = base64.b64decode(env["body"])
    except Exception:
        return
    h = env.get("headers") or {}
    opt = 1 if env.get("content-type") == "application/x-msgpack" else 0
    v1 = 0 if isinstance(h.get("task"), str) else 1
    comp = h.get("compression")
    if env.get("content-type") not in ("application/json", "application/x-msgpack"):
        return
    if comp == "application/x-gzip":
        add("message_body", bytes([opt | 3 << 1 | v1 << 4]) + body)           # raw stream
        try:
            plain = zlib.decompress(body)
        except zlib.error:
            return
        add("message_body", bytes([opt | 1 << 1 | v1 << 4]) + plain)          # harness compresses
        add("message_body", bytes([opt | 4 << 1 | v1 << 4]) + bz2.compress(plain))
        body = plain
    elif comp:
        return
    add("message_body", bytes([opt | v1 << 4]) + body)
    if len(body) < 2000:
        add("message_body", bytes([opt | 2 << 1 | v1 << 4]) + body)
    add("base64", env["body"])
    if opt == 0:
        add("pyjson", body)

for raw in envelopes:
    body_seed(raw)

# ---- pyjson: the differential cases (every kind of edge), capped -------------
cases = list(jsonl(os.path.join(DATA, "pyjson", "cases.jsonl")))
step = max(1, len(cases) // 90)
for c in cases[::step]:
    add("pyjson", c["input"])
for c in cases:  # the error-path and unicode cases are the interesting ones
    s = c["input"]
    if any(t in s for t in ("\\ud8", "\\udc", "1e999", "NaN", "Infinity")) and len(corpora["pyjson"]) < MAX_PER_HARNESS:
        add("pyjson", s)
for s in ['', '[', '{"a":1,"a":2}', '"\\ud800"', '"\\udc00\\ud800"', '-0', '-0.0', '1E400', '[' * 50 + ']' * 50,
          '{"\\u00e9":"\\u2028\\u0000"}', '123456789012345678901234567890', '1.7976931348623157e308',
          '5e-324', '[1,2,]', '"\xc3\xa9"', '\ufeff[]']:
    add("pyjson", s)
add("base64", "")
add("base64", "QQ==")
add("base64", "QR==")
add("base64", "QUI=")
add("base64", "QUJD")
add("base64", "Q===")
add("base64", "AA\nA")

# ---- timeutil --------------------------------------------------------------------
lines = open(os.path.join(DATA, "timeutil", "cases.txt"), encoding="utf-8").read().splitlines()
parse = [l.split("\t")[1] for l in lines if l.startswith("parse\t")]
reject = [l.split("\t")[1] for l in lines if l.startswith("reject\t") and len(l.split("\t")) > 1]
for s in parse[:: max(1, len(parse) // 50)] + reject:
    add("timeutil", s)
for s in ["2026-11-27T22:10:23.105973+00:00", "2026-11-27T22:10:19.092333", "2026-11-27 22:10:19",
          "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59.999999-05:00", "2026-02-29T00:00:00",
          "2024-02-29T23:59:60Z", "2026-11-27T22:10"]:
    add("timeutil", s)

# ---- telemetry: mode byte 0 = events only; 1 = fields separated by 0xff ------
for c in jsonl(os.path.join(DATA, "telemetry", "cases.jsonl")):
    fields = c["fields"]
    ev = [v for n, v in fields if n == "events"]
    if ev:
        add("telemetry", b"\x04" + ev[-1].encode("utf-8", "surrogatepass"))
    add("telemetry", b"\x01" + b"\xff".join(
        p.encode("utf-8", "surrogatepass") for f in fields for p in f))

# ---- config -----------------------------------------------------------------------
add("config", open(os.path.join(ROOT, "celeryconfig.sample"), encoding="utf-8").read())
add("config", open(os.path.join(DATA, "config", "literals.py"), encoding="utf-8").read())
for s in ["broker_url = 'redis://localhost:6379/0'\n",
          "task_annotations = {'*': {'rate_limit': '10/m'}, 'proto.add': {'time_limit': 3.5, 'acks_late': True}}\n",
          "broker_transport_options = {'visibility_timeout': 3600, 'priority_steps': list(range(10))}\n",
          "worker_concurrency = 0x10\nx = r'''a\\\nb'''\ny = (1,)\nz = [\n 1, # c\n 2]\n",
          "accept_content = ['json', 'msgpack']\ntask_queues = ('a', 'b')\nworker_control_allow = None\n",
          "s = 'caf\\xe9 \\u00e9 \\N{BULLET} \\x00'\nb = b'x'\nf = 1_000.5e3\nn = -1\n",
          "import os\n", "x = 1 + 2\n", "x = [[[[[[[[[[]]]]]]]]]]\n", "x = '\\\n'\n"]:
    add("config", s)

# ---- redis URLs ---------------------------------------------------------------------
src = open(os.path.join(ROOT, "broker", "test_url.c"), encoding="utf-8").read()
for u in sorted(set(re.findall(r'"((?:redis|rediss|unix|socket|redis\+socket|amqp)://[^"]*)"', src))):
    add("redis_url", u.replace("%%", "%").replace("%d", "6379"))
for u in ["unix:///run/redis.sock?db=2&password=x", "socket:///tmp/r.sock", "rediss://h", "redis://u:p@[fe80::1%25eth0]:1/2",
          "redis://h?db=3&username=a&password=b", "redis://%41:%zz@h"]:
    add("redis_url", u)

# ---- ClickHouse URLs ----------------------------------------------------------------
for f in ("test_client.c", "test_errors.c"):
    p = os.path.join(ROOT, "clickhouse", f)
    if os.path.exists(p):
        for u in sorted(set(re.findall(r'"(https?://[^"]*)"', open(p, encoding="utf-8").read()))):
            add("ch_url", u.replace("%%", "%").replace("%d", "8123"))
for u in ["http://default@localhost:8123/telemetry?async_insert=1&wait_for_async_insert=1",
          "https://u:p%40w@[2001:db8::1]:8443/db?database=other", "ftp://h"]:
    add("ch_url", u)

# ---- DESCRIBE TABLE TSV ----------------------------------------------------------------
src = open(os.path.join(ROOT, "clickhouse", "test_encode.c"), encoding="utf-8").read()
for m in re.finditer(r'static const char \w+_describe\[\] =\s*((?:"[^"\n]*"\s*)+);', src):
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    tsv = "".join(parts).encode().decode("unicode_escape")
    add("ch_describe", tsv)
    lines = tsv.splitlines(True)
    add("ch_describe", "".join(lines[:-1]))                     # a column missing
    add("ch_describe", "".join(lines + lines[-1:]))             # duplicated
    add("ch_describe", tsv.replace("Nullable(String)", "LowCardinality(Nullable(String))")
        .replace("DateTime64(3, \\'UTC\\')", "DateTime64(3)"))

# ---- control (pidbox PUBLISH payloads) ------------------------------------------------
for k in ("pidbox_command_ping", "mingle_hello_command"):
    add("control", golden[k]["raw"])
seen = set()
for r in monitor:
    if r["cmd"] == "PUBLISH" and len(r["args"]) == 2 and "pidbox" in r["args"][0]:
        try:
            env = json.loads(r["args"][1])
            body = json.loads(base64.b64decode(env["body"]))
            key = (body.get("method"), tuple(sorted(body.get("arguments") or {})), body.get("destination") is None,
                   body.get("pattern"))
        except Exception:
            key = r["args"][1][:64]
        if key not in seen:
            seen.add(key)
            add("control", r["args"][1])

# ---- write -------------------------------------------------------------------------------
total = 0
for h, seeds in sorted(corpora.items()):
    d = os.path.join(OUT, h)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in sorted(seeds.items())[:MAX_PER_HARNESS] if len(seeds) > MAX_PER_HARNESS else sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        total += len(data)
    print(f"{h:18s} {min(len(seeds), MAX_PER_HARNESS):4d} seeds")
print(f"total {total} bytes")
