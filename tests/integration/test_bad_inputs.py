"""A catalogue of bad inputs (issue #5 part 2), table-driven: for each input
the expected outcome (stored FAILURE and its reason, DLQ record, log line,
or the Python-compatible result when the input is odd but legal) and, every
time, that the worker keeps serving: a ptel.ping answered afterwards, the
worker still alive, no sanitizer report (the worker fixture checks that).

Celery side (one message each, ptel.echo, built byte by byte with
test_reliability_core.envelope so the body is exactly the bad bytes):

| input                          | expected                                          |
|--------------------------------|---------------------------------------------------|
| 100 MB message                 | FAILURE DecodeError (> worker_max_message_bytes)  |
| 10,000-deep nesting in args    | FAILURE DecodeError "maximum recursion depth"     |
| invalid UTF-8 in the JSON body | FAILURE DecodeError "'utf-8' codec can't decode"  |
| raw NUL byte inside a string   | FAILURE DecodeError "Invalid control character"   |
| escaped NUL (\\u0000) in string | SUCCESS, echoed intact                            |
| lone surrogate \\ud800          | SUCCESS, echoed as "\\ud800" (as Python)           |
| 1e999                          | SUCCESS, Infinity (Python's json reads inf)       |
| -0 and -0.0                    | SUCCESS, [0, -0.0]                                |
| duplicate keys in kwargs       | SUCCESS, last one wins                            |
| queue key holding a string     | one ERROR line a minute, other queue served, no   |
|   (WRONGTYPE on the queue)     |   spin (CPU and log lines bounded)                |
| garbage on /0.celery.pidbox    | ignored (DEBUG/WARNING at most), ping answered    |

Telemetry side (`run_product_telemetry_consumer` via Celery):

| input                                  | expected                                     |
|----------------------------------------|----------------------------------------------|
| entry of 500 events x 64 KB (1 MB with  | stored whole: CONTRACT bounds events per     |
|   PTEL_BAD_INPUTS_FULL=1)              |   entry (500), not bytes; batch bytes cap     |
|                                        |   flushes after the entry, and reads shrink   |
|                                        |   to fit it (tasks/test_drain.c)              |
| entry without `events`                 | DLQ missing_events, entry acked               |
| entry with extra fields                | stored, extra fields ignored                  |
| a string key named like a stream       | skipped (SCAN ... TYPE stream), untouched     |
| consumer group deleted mid-drain       | WARNING "was missing (deleted?): recreated",  |
|                                        |   every event stored exactly once             |
"""

import json
import os
import time

import pytest

import telemetry_gen as tg
from helpers import wait_for
from telemetry_gen import EventSpec, Gen, org_hash, stream_for
from test_drain_e2e import ch_db  # noqa: F401 - fixture
from test_reliability_core import envelope, push, settled, wait_state

GET_TIMEOUT = 30


def ping(app):
    assert app.send_task("ptel.ping").get(timeout=GET_TIMEOUT) == "pong"


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# ---- Celery side -------------------------------------------------------------------

def _big(_):
    return envelope("ptel.echo", args=["x" * (100 * 1024 * 1024)])


def _raw(body):
    return lambda _: envelope("ptel.echo", body=body)


DEEP = b"[[" + b"[" * 10000 + b"]" * 10000 + b"], {}, {}]"

# (case, builder, expected status, exc_type or result, substring of exc message / None)
CELERY_CASES = [
    ("100MB-message", _big, "FAILURE", "DecodeError", "bytes"),
    ("nesting-10000", _raw(DEEP), "FAILURE", "DecodeError", "maximum recursion depth"),
    ("invalid-utf8", _raw(b'[["\xff\xfe"], {}, {}]'), "FAILURE", "DecodeError",
     "'utf-8' codec can't decode byte 0xff"),
    ("raw-nul-in-string", _raw(b'[["a\x00b"], {}, {}]'), "FAILURE", "DecodeError",
     "Invalid control character"),
    ("escaped-nul", _raw(b'[["a\\u0000b"], {}, {}]'), "SUCCESS",
     {"args": ["a\x00b"], "kwargs": {}}, None),
    ("lone-surrogate", _raw(b'[["\\ud800"], {}, {}]'), "SUCCESS",
     {"args": ["\ud800"], "kwargs": {}}, None),
    ("1e999", _raw(b'[[1e999], {}, {}]'), "SUCCESS", {"args": [float("inf")], "kwargs": {}}, None),
    ("minus-zero", _raw(b'[[-0, -0.0], {}, {}]'), "SUCCESS", {"args": [0, -0.0], "kwargs": {}},
     None),
    ("duplicate-keys", _raw(b'[[], {"a": 1, "a": 2}, {}]'), "SUCCESS",
     {"args": [], "kwargs": {"a": 2}}, None),
]


@pytest.mark.parametrize("case,build,status,expect,text", CELERY_CASES,
                         ids=[c[0] for c in CELERY_CASES])
def test_bad_celery_message(case, build, status, expect, text, clean_redis, worker, celery_app):
    r = clean_redis
    w = worker("-c", "1")
    tid, tag, env = build(None)
    push(r, env)
    stored = wait_state(r, tid, timeout=60)
    assert stored["status"] == status, stored
    if status == "FAILURE":
        assert stored["result"]["exc_type"] == expect
        assert text in stored["result"]["exc_message"][0], stored["result"]
        line = next(ln for ln in w.log().splitlines() if tag in ln)
        assert "ERROR/" in line and "Rejecting message" in line, line
    else:
        raw = r.get(f"celery-task-meta-{tid}").decode("utf-8", "surrogatepass")
        got = json.loads(raw)["result"]
        assert got == expect or json.dumps(got) == json.dumps(expect), (got, raw)
        if case == "minus-zero":
            assert '"args": [0, -0.0]' in raw, raw
    wait_for(lambda: settled(r), 10, desc="queue and unacked empty")
    ping(celery_app)
    assert w.alive()


def test_queue_key_of_wrong_type_is_skipped_without_spinning(clean_redis, worker, celery_app):
    """WRONGTYPE on a consumed queue: the worker logs it (once a minute),
    keeps serving the other queue, does not reconnect in a loop and does not
    burn CPU."""
    r = clean_redis
    r.set("broken", "not a list")
    w = worker("-c", "1", "-Q", "broken,ingest")
    ping(celery_app)
    t0 = cpu_ticks(w.pid)
    time.sleep(5)
    ticks = cpu_ticks(w.pid) - t0
    ping(celery_app)
    log = w.log()
    lines = [ln for ln in log.splitlines() if "WRONGTYPE" in ln]
    assert lines and all("ERROR/" in ln for ln in lines), log[-2000:]
    assert len(lines) <= 2, f"{len(lines)} WRONGTYPE lines in ~6 s"
    assert "reconnecting" not in "".join(lines)
    hz = os.sysconf("SC_CLK_TCK")
    assert ticks < 0.5 * 5 * hz, f"{ticks} CPU ticks in 5 s: spinning"
    assert r.get("broken") == b"not a list"
    assert w.alive()


PIDBOX_GARBAGE = [b"", b"\x00\xff\xfe", b"not json", b"[]", b"{}", b'{"method": 5}',
                  b'{"body": "!!notbase64"}',
                  json.dumps({"body": "e30=", "content-type": "application/x-python-serialize",
                              "content-encoding": "binary", "headers": {},
                              "properties": {"body_encoding": "base64"}}).encode(),
                  json.dumps({"method": "shutdown", "arguments": "x"}).encode()[:20],
                  b"{" * 5000]


def test_garbage_on_the_pidbox_is_ignored(clean_redis, worker, celery_app):
    r = clean_redis
    w = worker("-c", "1")
    for g in PIDBOX_GARBAGE:
        r.publish("/0.celery.pidbox", g)
    r.publish("/0.celery.pidbox", b"x" * (1024 * 1024))
    time.sleep(1.0)
    ping(celery_app)
    assert w.alive()
    replies = celery_app.control.ping(timeout=2.0)
    assert replies, "the worker stopped answering remote control"


# ---- Telemetry side ------------------------------------------------------------------

def drain(app, n=20, timeout=180):
    return app.send_task(tg.TASK, kwargs={"max_iterations": n}).get(timeout=timeout)


def _entry(gen, org, n, payload=None, **extra):
    specs = [EventSpec.of(gen.event(org=org, name="feature_viewed", payload=payload))
             for _ in range(n)]
    fields = {"ingestion_id": f"bad-{time.monotonic_ns()}", "source": tg.SOURCE,
              "org_id_hash": org, "events": "[" + ",".join(s.text for s in specs) + "]"}
    fields.update(extra)
    return fields, specs


def test_entry_of_500_big_events(clean_redis, ch_db, worker, celery_app):
    """500 events of 64 KB (1 MB each with PTEL_BAD_INPUTS_FULL=1): the
    contract limits an entry to 500 events, not bytes, so every event is
    stored; the batch bytes cap only decides when the batch is flushed."""
    r = clean_redis
    ch_db.create_strict_table()
    size = 1024 * 1024 if os.environ.get("PTEL_BAD_INPUTS_FULL") == "1" else 64 * 1024
    org = org_hash("big-entry")
    fields, specs = _entry(Gen(seed=11), org, 500, payload={"feature": "f" * size})
    r.xadd(stream_for(org), fields)
    w = worker("-c", "1", clickhouse_url=ch_db.url, telemetry_batch_max_bytes=8 * 1024 * 1024)
    res = drain(celery_app, 5, timeout=600)
    assert res["processed"] == 500 and res["dead_lettered"] == 0, res
    assert ch_db.count() == 500
    assert r.xlen(tg.DLQ_KEY) == 0
    ping(celery_app)
    assert w.alive()


def test_entries_with_missing_or_extra_fields(clean_redis, ch_db, worker, celery_app):
    r = clean_redis
    ch_db.create_strict_table()
    gen = Gen(seed=12)
    org = org_hash("fields")
    extra, _ = _entry(gen, org, 3, surprise="yes", another="{}")
    r.xadd(stream_for(org), extra)
    missing, _ = _entry(gen, org, 2)
    del missing["events"]
    bad_id = r.xadd(stream_for(org), missing).decode()
    no_org, _ = _entry(gen, org, 2)
    del no_org["org_id_hash"], no_org["source"], no_org["ingestion_id"]
    r.xadd(stream_for(org), no_org)
    w = worker("-c", "1", clickhouse_url=ch_db.url)
    res = drain(celery_app)
    assert res["processed"] == 5 and res["dead_lettered"] == 1, res
    recs = tg.dlq_records(r)
    assert len(recs) == 1
    assert recs[0][1]["entry_id"] == bad_id and recs[0][1]["reason"].startswith("missing_events")
    assert ch_db.count() == 5
    assert tg.pending_total(r, [stream_for(org)]) == 0
    ping(celery_app)
    assert w.alive()


def test_key_of_another_type_with_a_stream_name(clean_redis, ch_db, worker, celery_app):
    r = clean_redis
    ch_db.create_strict_table()
    org = org_hash("typed")
    fields, _ = _entry(Gen(seed=13), org, 4)
    r.xadd(stream_for(org), fields)
    r.set(stream_for("impostor"), "a string")
    r.rpush("product-telemetry:list:events", "x")
    r.hset("product-telemetry:hash:events", "events", "[]")
    w = worker("-c", "1", clickhouse_url=ch_db.url)
    res = drain(celery_app)
    assert res["processed"] == 4 and res["streams"] == 1, res
    assert r.get(stream_for("impostor")) == b"a string"
    assert r.lrange("product-telemetry:list:events", 0, -1) == [b"x"]
    assert r.xlen(tg.DLQ_KEY) == 0
    ping(celery_app)
    assert w.alive()


def test_consumer_group_deleted_mid_drain(clean_redis, ch_db, worker, celery_app):
    r = clean_redis
    ch_db.create_strict_table()
    gen = Gen(seed=14)
    org = org_hash("group-gone")
    key = stream_for(org)
    n = 0
    for _ in range(400):
        fields, specs = _entry(gen, org, 10)
        r.xadd(key, fields)
        n += len(specs)
    w = worker("-c", "1", clickhouse_url=ch_db.url, telemetry_read_count=5,
               telemetry_batch_max_rows=50)
    res = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 2000})
    wait_for(lambda: ch_db.count() >= n // 4, 60, interval=0.1, desc="a quarter stored")
    r.xgroup_destroy(key, tg.GROUP)
    out = res.get(timeout=180)
    # The recreated group starts at 0: the rest (and the re-read start) come
    # through later runs; redeliveries are deduplicated against the table.
    for _ in range(5):
        if ch_db.count() >= n and tg.pending_total(r, [key]) == 0:
            break
        drain(celery_app, 200)
    assert "was missing (deleted?): recreated" in w.log(), w.log()[-3000:]
    c, u, uk = ch_db.counts()
    assert c == uk == n, (c, uk, n, out)
    assert r.xlen(tg.DLQ_KEY) == 0
    ping(celery_app)
    assert w.alive()
