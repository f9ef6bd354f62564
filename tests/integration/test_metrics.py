"""The opt-in observability endpoint (issue #7 part 4): Prometheus text at
/metrics whose counters move during a drain and which a strict exposition
parser accepts, and /healthz that follows the broker's health."""

import hashlib
import json
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis

from helpers import free_port, wait_for

# One sample line of the text format 0.0.4: name, optional labels, value.
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
    r'(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)?)\})?'
    r' (?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|Inf|NaN|\.[0-9]+))$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """Parse the Prometheus text format strictly: every line is a HELP, a
    TYPE or a sample; samples belong to the family last TYPEd (histograms
    through _bucket/_sum/_count); returns {(name, frozenset(labels)): value}."""
    assert text.endswith("\n"), "exposition must end with a newline"
    types, samples, current = {}, {}, None
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, f"line {n}: HELP without text"
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"line {n}: family {name} TYPEd twice"
            types[name] = kind
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, f"line {n} is not a valid sample: {line!r}"
        name = m["name"]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if types.get(base) == "histogram":
            assert base == current, f"line {n}: {name} outside its family block"
        labels = frozenset(LABEL.findall(m["labels"] or ""))
        key = (name, labels)
        assert key not in samples, f"line {n}: duplicate sample {line!r}"
        v = m["value"]
        samples[key] = float(v.replace("Inf", "inf"))
    return types, samples


def get(url, timeout=3):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def produce(client, orgs=3, entries=30, per_entry=20):
    sent = 0
    for o in range(orgs):
        h = hashlib.sha256(f"metrics-org-{o}".encode()).hexdigest()
        for e in range(entries):
            events = [{"name": "page_viewed", "schemaVersion": "v1",
                       "eventId": f"evt_{o}_{e}_{i}", "ts": "2026-11-20T12:00:00Z",
                       "sessionId": "s", "anonymousUserId": "a", "routePattern": "/x",
                       "payload": {"page": "x"}} for i in range(per_entry)]
            client.xadd(f"product-telemetry:{h}:events",
                        {"ingestion_id": str(uuid.uuid4()), "source": "dev-health-web",
                         "org_id_hash": h, "events": json.dumps(events)})
            sent += per_entry
    return sent


def test_metrics_counters_move_during_a_drain(worker, clean_redis, clickhouse_url, ptel_cli,
                                              celery_app):
    db = "metrics_" + uuid.uuid4().hex[:8]
    ch = clickhouse_url.rstrip("/") + "/" + db
    assert ptel_cli("schema", "apply", clickhouse_url=ch).returncode == 0
    port = free_port()
    w = worker("--metrics-port", str(port), clickhouse_url=ch)
    status, before = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    types, samples = parse_exposition(before)
    assert types["ptel_events_stored_total"] == "counter"
    assert types["ptel_task_runtime_seconds"] == "histogram"
    assert value(samples, "ptel_events_stored_total") == 0

    sent = produce(clean_redis)
    result = celery_app.send_task("dev_health_ops.workers.tasks.run_product_telemetry_consumer",
                                  kwargs={"max_iterations": 50}).get(timeout=60)
    assert result["processed"] == sent

    status, after = get(f"http://127.0.0.1:{port}/metrics")
    _, samples = parse_exposition(after)
    assert value(samples, "ptel_events_stored_total") == sent
    assert value(samples, "ptel_clickhouse_insert_rows_total") == sent
    assert value(samples, "ptel_clickhouse_insert_seconds_count") >= 1
    task = "dev_health_ops.workers.tasks.run_product_telemetry_consumer"
    assert value(samples, "ptel_tasks_total", task=task, state="SUCCESS") == 1
    assert value(samples, "ptel_task_runtime_seconds_count", task=task) == 1
    assert value(samples, "ptel_up", component="broker") == 1
    assert value(samples, "ptel_up", component="clickhouse") == 1
    # Per-stream gauges come from XINFO GROUPS, cached for 5 s between scrapes.
    def stream_gauges():
        _, s = parse_exposition(get(f"http://127.0.0.1:{port}/metrics")[1])
        return {dict(k[1])["stream"]: v for k, v in s.items()
                if k[0] in ("ptel_stream_pending", "ptel_stream_lag")}
    wait_for(lambda: len(stream_gauges()) == 3, 8, desc="per-stream gauges for 3 streams")
    assert all(v == 0 for v in stream_gauges().values())
    assert w.alive()


def test_healthz_follows_the_broker(worker, worker_bin, tmp_path):
    """/healthz turns 503 within 5 s of stopping Redis and 200 after it is
    back. Uses a private redis-server so stopping it disturbs no other test."""
    rport = free_port()
    rdir = tempfile.mkdtemp(dir=tmp_path)

    def start_redis():
        return subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", rdir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    server = start_redis()
    try:
        url = f"redis://127.0.0.1:{rport}/0"
        wait_for(lambda: _pings(url), 10, desc="private redis up")
        port = free_port()
        worker("--metrics-port", str(port), broker_url=url, result_backend=url,
               telemetry_redis_url=url)
        health = f"http://127.0.0.1:{port}/healthz"
        wait_for(lambda: get(health)[0] == 200, 5, desc="/healthz 200 at start")

        server.terminate()
        server.wait(10)
        t0 = time.monotonic()
        wait_for(lambda: get(health)[0] == 503, 5, desc="/healthz 503 after Redis stopped")
        assert time.monotonic() - t0 < 5
        assert "broker" in get(health)[1]

        server = start_redis()
        wait_for(lambda: get(health)[0] == 200, 15, desc="/healthz 200 after Redis is back")
    finally:
        server.kill()
        server.wait()


def _pings(url):
    try:
        return redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError:
        return False


def test_unknown_path_is_404(worker):
    port = free_port()
    worker("--metrics-port", str(port))
    status, body = get(f"http://127.0.0.1:{port}/nope")
    assert status == 404 and "/metrics" in body
