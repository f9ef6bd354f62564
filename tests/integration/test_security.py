"""Security checks (issue #5 part 3).

- pickle and yaml are never deserialised: bodies that would create a file if
  executed (as a task body, and as a remote-control message) leave no file.
- credentials in URLs (broker, result backend, ClickHouse, telemetry Redis)
  never appear in the worker's log, whether the servers accept them (a
  private password-protected redis-server, the test ClickHouse's `ptel`
  user) or reject them, nor in `ptel-worker version` / `--help`, nor in
  crash output (PTEL_TEST_CRASH_AFTER_POP), nor in `celery inspect conf`.
- telemetry events with blocked payload keys never reach ClickHouse.
- an event cannot land in another org's rows (org_mismatch)."""

import base64
import json
import os
import pickle
import subprocess
import time
import urllib.parse

import pytest

import telemetry_gen as tg
from helpers import free_port, wait_for
from telemetry_gen import EventSpec, Gen, break_event, org_hash, stream_for
from test_drain_e2e import ch_db  # noqa: F401 - fixture
from test_reliability_core import _RunsShell, envelope, push, settled, wait_state

SECRET = "S3cr3t-Pw_" + os.urandom(4).hex()
SECRET_RE_PARTS = (SECRET, urllib.parse.quote(SECRET), base64.b64encode(SECRET.encode()).decode())


def assert_no_secret(text, where):
    for s in SECRET_RE_PARTS:
        assert s not in text, f"credential found in {where}:\n" + \
            "\n".join(ln for ln in text.splitlines() if s in ln)[:2000]


# ---- pickle / yaml ----------------------------------------------------------------------

def test_pickle_and_yaml_are_never_deserialised(clean_redis, worker, celery_app, tmp_path):
    r = clean_redis
    w = worker("-c", "1")
    markers = []
    ids = []
    for i, (ctype, make) in enumerate([
            ("application/x-python-serialize",
             lambda m: pickle.dumps(((), {"x": _RunsShell(f"touch {m}")}, {}), protocol=2)),
            ("application/x-python-serialize",
             lambda m: pickle.dumps(_RunsShell(f"touch {m}"), protocol=4)),
            ("application/x-yaml",
             lambda m: f"- !!python/object/apply:os.system ['touch {m}']\n- {{}}\n- {{}}\n".encode()),
    ]):
        marker = tmp_path / f"pwned-{i}"
        markers.append(marker)
        tid, _, env = envelope("ptel.ping", body=make(marker), content_type=ctype,
                               content_encoding="binary")
        ids.append(tid)
        push(r, env)
    # The same on the remote-control channel.
    marker = tmp_path / "pwned-pidbox"
    markers.append(marker)
    body = pickle.dumps({"method": "ping", "arguments": {}, "x": _RunsShell(f"touch {marker}")})
    r.publish("/0.celery.pidbox", json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "binary",
        "content-type": "application/x-python-serialize", "headers": {},
        "properties": {"body_encoding": "base64", "delivery_tag": "t"}}))
    for tid in ids:
        stored = wait_state(r, tid, timeout=20)
        assert stored["status"] == "FAILURE"
        assert stored["result"]["exc_type"] == "ContentDisallowed"
    assert celery_app.send_task("ptel.ping").get(timeout=20) == "pong"
    wait_for(lambda: settled(r), 10, desc="queue and unacked empty")
    time.sleep(0.5)
    for m in markers:
        assert not m.exists(), f"{m.name}: a payload was deserialised and executed"
    assert w.alive()


# ---- credentials --------------------------------------------------------------------------

@pytest.fixture
def secret_redis(tmp_path):
    """A private redis-server that requires SECRET."""
    port = free_port()
    d = tmp_path / "secret-redis"
    d.mkdir()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(d),
                             "--requirepass", SECRET], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    import redis
    wait_for(lambda: redis.Redis(port=port, password=SECRET).ping(), 10, desc="secret redis")
    yield port
    proc.terminate()
    proc.wait(10)


def _scan(proc, where):
    assert_no_secret(proc.log(), where)


def test_credentials_never_logged_when_accepted(secret_redis, ch_db, worker, clickhouse_auth_url,
                                                tmp_path):
    import celery
    import redis
    port = secret_redis
    url = f"redis://:{SECRET}@127.0.0.1:{port}/0"
    # The test ClickHouse's `ptel` user has its own generated password: we
    # cannot make it SECRET, so the ClickHouse part checks that password.
    ch_pw = urllib.parse.urlsplit(clickhouse_auth_url).password
    ch_db.create_strict_table()
    ch_url = clickhouse_auth_url.rstrip("/") + "/" + ch_db.name
    w = worker("-c", "1", "-E", broker_url=url, result_backend=url, telemetry_redis_url=url,
               clickhouse_url=ch_url, env={"ASAN_OPTIONS": "detect_leaks=0"})
    app = celery.Celery("sec", broker=url, backend=url)
    app.conf.update(task_default_queue="ingest", accept_content=["json"])
    try:
        r = redis.Redis(port=port, password=SECRET)
        org = org_hash("sec")
        gen = Gen(seed=21)
        specs = [EventSpec.of(gen.event(org=org)) for _ in range(5)]
        r.xadd(stream_for(org), {"ingestion_id": "i", "source": tg.SOURCE, "org_id_hash": org,
                                 "events": "[" + ",".join(s.text for s in specs) + "]"})
        res = app.send_task(tg.TASK, kwargs={"max_iterations": 3}).get(timeout=60)
        assert res["processed"] == 5
        conf = app.control.inspect(timeout=3).conf() or {}
        assert conf, "no inspect conf reply"
        assert_no_secret(json.dumps(conf), "inspect conf")
        assert ch_pw not in json.dumps(conf)
        assert app.send_task("ptel.fail", args=["x"]).get(timeout=20, propagate=False)
    finally:
        app.close()
    w.stop()
    _scan(w, "the worker log (servers accepting the credentials)")
    assert ch_pw not in w.log()


def test_credentials_never_logged_when_rejected(redis_url, worker, clickhouse_url, celery_app,
                                                clean_redis):
    import redis as redislib
    # Wrong password for a Redis that has none configured, and for a dead port.
    good = urllib.parse.urlsplit(redis_url)
    dead = free_port()
    bad_broker = f"redis://user:{SECRET}@127.0.0.1:{dead}/0"
    w = worker("-c", "1", wait_ready=False, broker_url=bad_broker, result_backend=bad_broker,
               env={"ASAN_OPTIONS": "detect_leaks=0"})
    time.sleep(3)
    w.stop()
    _scan(w, "the worker log (broker refusing)")
    # A working broker but a ClickHouse rejecting the password.
    ch = urllib.parse.urlsplit(clickhouse_url)
    bad_ch = f"http://ptel:{urllib.parse.quote(SECRET)}@{ch.hostname}:{ch.port}/default"
    bad_redis = f"redis://:{SECRET}@{good.hostname}:{good.port}/0"
    w2 = worker("-c", "1", clickhouse_url=bad_ch, telemetry_redis_url=bad_redis,
                telemetry_backoff_max_s=1, env={"ASAN_OPTIONS": "detect_leaks=0"})
    r = redislib.Redis.from_url(redis_url)
    org = org_hash("sec-bad")
    r.xadd(stream_for(org), {"ingestion_id": "i", "source": tg.SOURCE, "org_id_hash": org,
                             "events": json.dumps([Gen(seed=3).event(org=org)])})
    res = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 3}, soft_time_limit=8)
    res.get(timeout=60, propagate=False)
    w2.stop()
    _scan(w2, "the worker log (ClickHouse / telemetry Redis refusing)")


def test_credentials_not_in_version_help_or_crash_output(worker_command, tmp_path, secret_redis):
    import celery
    url = f"redis://:{SECRET}@127.0.0.1:{secret_redis}/0"
    env = dict(os.environ, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url, REDIS_URL=url,
               CLICKHOUSE_URL=f"http://u:{SECRET}@127.0.0.1:1/db",
               ASAN_OPTIONS="detect_leaks=0")
    for argv in (["version"], ["--help"], ["worker", "--help"], ["drain", "--help"],
                 ["dlq", "--help"], ["schema", "--help"], ["--version"]):
        p = subprocess.run(worker_command(*argv), capture_output=True, text=True, env=env,
                           timeout=30, cwd=tmp_path)
        assert_no_secret(p.stdout + p.stderr, f"ptel-worker {' '.join(argv)}")
    # Crash output: the test hook _exit(137)s right after a pop.
    env["PTEL_TEST_CRASH_AFTER_POP"] = "1"
    p = subprocess.Popen(worker_command("worker", "-c", "1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, env=env, cwd=tmp_path, text=True)
    app = celery.Celery("sec", broker=url, backend=url)
    try:
        time.sleep(1.5)
        app.send_task("ptel.ping", queue="ingest")
        out, _ = p.communicate(timeout=30)
    finally:
        app.close()
        if p.poll() is None:
            p.kill()
    assert p.returncode == 137, out[-2000:]
    assert "test hook" in out
    assert_no_secret(out, "crash output")


# ---- telemetry privacy and isolation ---------------------------------------------------------

def test_blocked_keys_and_org_mismatch_never_reach_clickhouse(clean_redis, ch_db, worker,
                                                              celery_app):
    r = clean_redis
    ch_db.create_strict_table()
    gen = Gen(seed=31)
    org_a, org_b = org_hash("org-a"), org_hash("org-b")
    specs = []
    for key in tg.BLOCKED_KEYS:
        ev = gen.event(org=org_a)
        ev["payload"] = {"feature": "x", key: "PRIVATE-" + key}
        specs.append(EventSpec.of(ev, "blocked_key", "privacy"))
    for _ in range(5):      # org A's entry carrying events that claim org B
        specs.append(EventSpec.of(gen.event(org=org_b), "org_mismatch", "validation"))
    good = [EventSpec.of(gen.event(org=org_a)) for _ in range(3)]
    fields = {"ingestion_id": "p", "source": tg.SOURCE, "org_id_hash": org_a,
              "events": "[" + ",".join(s.text for s in specs + good) + "]"}
    r.xadd(stream_for(org_a), fields)
    worker("-c", "1", clickhouse_url=ch_db.url)
    res = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 3}).get(timeout=60)
    assert res["processed"] == 3 and res["rejected"] == len(specs), res
    assert ch_db.count() == 3
    assert ch_db.scalar(f"SELECT count() FROM {ch_db.table} WHERE org_id_hash = '{org_b}'") == "0"
    assert ch_db.scalar(f"SELECT count() FROM {ch_db.table} "
                        f"WHERE positionCaseInsensitive(payload_json, 'PRIVATE-') > 0") == "0"
    reasons = [f["reason"].split(":")[0] for _, f in tg.dlq_records(r)]
    assert sorted(reasons) == sorted(s.code for s in specs), reasons
    classes = {f["error_class"] for _, f in tg.dlq_records(r)}
    assert classes == {"privacy", "validation"}
    assert break_event  # the generator's own broken events are covered in test_drain_e2e
