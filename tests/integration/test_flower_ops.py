"""Flower / `celery inspect` / `celery control` against the C worker (issue #4).

What operators see must be what a Python worker shows: every inspect command
answers through the real Celery CLI with the captured shapes (PROTOCOL §8.3),
control commands really change the worker, events reach a real
celery.events.EventReceiver and `celery events --dump` (§7), and mingle
exchanges revoked ids with Python workers both ways (§9).
"""

import json
import signal
import subprocess
import threading
import time
import uuid

import pytest

from helpers import wait_for

PY = "/usr/bin/python3"
C_NODE = "ptel-c1@flowertest"
PY_NODE = "py-w1@flowertest"
CLI_TIMEOUT = 60


# ---- helpers ---------------------------------------------------------------------

def cli(redis_url, *args, timeout=CLI_TIMEOUT):
    """Run the Celery CLI (no app: the default one, on the test broker)."""
    return subprocess.run([PY, "-m", "celery", "-b", redis_url, *args], capture_output=True,
                          text=True, timeout=timeout)


def inspect(redis_url, command, *args, node=C_NODE, t=3):
    """`celery inspect <command> -d node -j` -> the node's value (exit 0 required)."""
    proc = cli(redis_url, "inspect", command, *args, "-d", node, "-j", "-t", str(t))
    assert proc.returncode == 0, f"inspect {command}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    replies = json.loads(proc.stdout)
    assert node in replies, replies
    return replies[node]


def control(redis_url, command, *args, node=C_NODE, t=3):
    """`celery control <command> -d node -j` -> the node's reply value."""
    proc = cli(redis_url, "control", command, *args, "-d", node, "-j", "-t", str(t))
    assert proc.returncode == 0, f"control {command}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    replies = json.loads(proc.stdout)
    values = [r[node] for r in replies if node in r]
    assert values, replies
    return values[0]


def api_call(app, command, node=C_NODE, timeout=3.0, **arguments):
    """A broadcast with a reply through the Python API; the node's value."""
    replies = app.control.broadcast(command, arguments=arguments, destination=[node],
                                    reply=True, timeout=timeout)
    values = [r[node] for r in replies if node in r]
    assert values, f"{command}: no reply from {node}: {replies}"
    return values[0]


def db_of(redis_url):
    tail = redis_url.rsplit("/", 1)[1] if redis_url.count("/") >= 3 else ""
    return int(tail) if tail.isdigit() else 0


class EventTap:
    """Everything published on /{db}.celeryev/* (raw pub/sub, no Celery),
    decoded: a list of (routing_key, event) with task.multi lists flattened."""

    def __init__(self, redis_client, redis_url):
        import base64

        self._b64 = base64
        self.pubsub = redis_client.pubsub()
        self.pubsub.psubscribe(f"/{db_of(redis_url)}.celeryev/*")
        self.events = []

    def poll(self, seconds=0.2):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.pubsub.get_message(timeout=0.05)
            if not msg or msg["type"] != "pmessage":
                continue
            env = json.loads(msg["data"])
            body = json.loads(self._b64.b64decode(env["body"]))
            rk = env["properties"]["delivery_info"]["routing_key"]
            for e in body if isinstance(body, list) else [body]:
                self.events.append((rk, e))
        return self.events

    def wait(self, pred, timeout=10.0, desc="event"):
        def seen():
            self.poll()
            return [e for _, e in self.events if pred(e)]
        return wait_for(seen, timeout, desc=desc)

    def types(self):
        return {e["type"] for _, e in self.events}

    def close(self):
        self.pubsub.close()


@pytest.fixture
def tap(clean_redis, redis_url):
    t = EventTap(clean_redis, redis_url)
    yield t
    t.close()


def send(app, name, args=(), **kw):
    return app.send_task(name, args=list(args), queue=kw.pop("queue", "ingest"), **kw)


def c_worker(worker, *args, **settings):
    return worker("-n", C_NODE, *args, **settings)


# ---- inspect: every command answers, in Python's shapes ----------------------------

INSPECT_COMMANDS = ["ping", "stats", "active", "reserved", "scheduled", "revoked", "registered",
                    "active_queues", "conf", "report", "clock"]


def test_every_inspect_command_answers_through_the_cli(clean_redis, redis_url, worker):
    c_worker(worker)
    values = {cmd: inspect(redis_url, cmd) for cmd in INSPECT_COMMANDS}
    assert values["ping"] == {"ok": "pong"}
    for cmd in ("active", "reserved", "scheduled", "revoked", "registered", "active_queues"):
        assert isinstance(values[cmd], list), (cmd, values[cmd])
    assert isinstance(values["conf"], dict) and "broker_url" in values["conf"]
    assert isinstance(values["report"]["ok"], str) and "software ->" in values["report"]["ok"]
    assert isinstance(values["clock"]["clock"], int) and values["clock"]["clock"] > 0
    assert isinstance(values["stats"]["clock"], str)       # Celery sends a string
    assert "ptel.ping" in values["registered"]


def _keys(d):
    return sorted(d.keys())


def test_stats_active_queues_registered_have_python_shapes(clean_redis, redis_url, worker,
                                                            python_worker):
    c_worker(worker)
    python_worker("-P", "prefork", "-c", "2", name=PY_NODE)
    c_stats = inspect(redis_url, "stats")
    py_stats = inspect(redis_url, "stats", node=PY_NODE)
    assert _keys(c_stats) == _keys(py_stats)
    for part in ("pool", "broker", "rusage"):
        assert _keys(c_stats[part]) == _keys(py_stats[part]), part
    assert _keys(c_stats["pool"]["writes"]) == _keys(py_stats["pool"]["writes"])
    assert _keys(c_stats["pool"]["writes"]["inqueues"]) == _keys(py_stats["pool"]["writes"]["inqueues"])
    for key in ("pid", "uptime", "prefetch_count"):
        assert type(c_stats[key]) is type(py_stats[key]), key
    assert c_stats["pool"]["max-concurrency"] == 2
    assert c_stats["broker"]["transport"] == py_stats["broker"]["transport"] == "redis"
    assert c_stats["broker"]["port"] == py_stats["broker"]["port"]

    c_q = inspect(redis_url, "active_queues")
    py_q = inspect(redis_url, "active_queues", node=PY_NODE)
    assert [q["name"] for q in c_q] == [q["name"] for q in py_q] == ["ingest"]
    assert _keys(c_q[0]) == _keys(py_q[0])
    assert c_q[0]["exchange"] == py_q[0]["exchange"]
    assert c_q[0] == py_q[0]

    c_reg = inspect(redis_url, "registered")
    py_reg = inspect(redis_url, "registered", node=PY_NODE)
    assert c_reg == sorted(c_reg)
    for name in ("ptel.ping", "ptel.echo", "ptel.sleep", "ptel.fail"):
        assert name in c_reg and name in py_reg


def test_active_reserved_scheduled_query_task(clean_redis, redis_url, worker, celery_app):
    c_worker(worker, "-c", "1")
    running = send(celery_app, "ptel.sleep", [30])
    wait_for(lambda: inspect(redis_url, "active"), 10, desc="ptel.sleep active")
    queued = send(celery_app, "ptel.ping")
    later = send(celery_app, "ptel.ping", countdown=120)
    wait_for(lambda: inspect(redis_url, "reserved") and inspect(redis_url, "scheduled"), 10,
             desc="reserved and scheduled")

    active = inspect(redis_url, "active")
    assert [a["id"] for a in active] == [running.id]
    a = active[0]
    assert list(a.keys()) == ["id", "name", "args", "kwargs", "type", "hostname", "time_start",
                              "acknowledged", "delivery_info", "worker_pid"]
    assert a["name"] == a["type"] == "ptel.sleep" and a["args"] == [30]
    assert a["hostname"] == C_NODE and a["acknowledged"] is True
    assert isinstance(a["time_start"], float) and isinstance(a["worker_pid"], int)
    assert _keys(a["delivery_info"]) == ["exchange", "priority", "redelivered", "routing_key"]

    reserved = inspect(redis_url, "reserved")
    assert [r["id"] for r in reserved] == [queued.id]
    assert reserved[0]["time_start"] is None and reserved[0]["worker_pid"] is None
    assert reserved[0]["acknowledged"] is False

    scheduled = inspect(redis_url, "scheduled")
    assert [s["request"]["id"] for s in scheduled] == [later.id]
    assert scheduled[0]["priority"] == 6 and scheduled[0]["eta"].endswith("+00:00")

    safe = api_call(celery_app, "active", safe=True)
    assert safe[0]["args"] == "(30,)" or safe[0]["args"] == "[30]"

    q = api_call(celery_app, "query_task", ids=[running.id, queued.id, later.id, "nope"])
    assert q[running.id][0] == "active" and q[queued.id][0] == "reserved"
    assert later.id not in q and "nope" not in q     # ETA-held and unknown ids are omitted

    api_call(celery_app, "revoke", task_id=running.id, terminate=True)
    assert queued.get(timeout=10) == "pong"


# ---- control commands --------------------------------------------------------------

def test_enable_and_disable_events_without_E(tap, redis_url, worker, celery_app):
    c_worker(worker)
    assert control(redis_url, "enable_events") == {"ok": "task events enabled"}
    assert control(redis_url, "enable_events") == {"ok": "task events already enabled"}
    r = send(celery_app, "ptel.ping")
    assert r.get(timeout=10) == "pong"
    tap.wait(lambda e: e["type"] == "task-succeeded" and e["uuid"] == r.id, desc="task-succeeded")
    assert control(redis_url, "disable_events") == {"ok": "task events disabled"}
    assert control(redis_url, "disable_events") == {"ok": "task events already disabled"}
    r2 = send(celery_app, "ptel.ping")
    assert r2.get(timeout=10) == "pong"
    tap.poll(1.5)
    assert not [e for _, e in tap.events if e.get("uuid") == r2.id]
    assert "worker-heartbeat" in tap.types()       # worker events are always sent


def test_disable_events_with_E_changes_nothing(tap, redis_url, worker, celery_app):
    c_worker(worker, "-E")
    assert control(redis_url, "enable_events") == {"ok": "task events already enabled"}
    assert control(redis_url, "disable_events") == {"ok": "task events already disabled"}
    r = send(celery_app, "ptel.ping")
    r.get(timeout=10)
    got = tap.wait(lambda e: e.get("uuid") == r.id and e["type"] == "task-succeeded",
                   desc="task events still on")
    assert got[0]["result"] == "'pong'"
    assert [rk for rk, e in tap.events if e.get("uuid") == r.id] == ["task.multi"] * len(
        [1 for _, e in tap.events if e.get("uuid") == r.id])


def test_heartbeat_command_sends_freq_5(tap, redis_url, worker):
    c_worker(worker)
    assert control(redis_url, "heartbeat") is None
    got = tap.wait(lambda e: e["type"] == "worker-heartbeat" and e["freq"] == 5,
                   desc="heartbeat with freq 5")
    assert "active" not in got[0] and got[0]["sw_ident"] == "py-celery"


def test_rate_limit_really_limits(clean_redis, redis_url, worker, celery_app):
    c_worker(worker, "-c", "2")
    assert control(redis_url, "rate_limit", "ptel.ping", "10/s") == \
        {"ok": "new rate limit set successfully"}
    assert "ptel.ping [rate_limit=10/s]" in inspect(redis_url, "registered")
    start = time.monotonic()
    results = [send(celery_app, "ptel.ping") for _ in range(20)]
    for r in results:
        assert r.get(timeout=30) == "pong"
    elapsed = time.monotonic() - start
    assert elapsed >= 1.8, f"20 tasks at 10/s took {elapsed:.2f}s"
    assert control(redis_url, "rate_limit", "ptel.ping", "0") == \
        {"ok": "rate limit disabled successfully"}
    assert control(redis_url, "rate_limit", "no.such.task", "1/s") == {"error": "unknown task"}
    bad = control(redis_url, "rate_limit", "ptel.ping", "abc/s")
    assert bad["error"].startswith("Invalid rate limit string: ValueError(")


def test_time_limit_really_applies(clean_redis, redis_url, worker, celery_app):
    c_worker(worker)
    assert api_call(celery_app, "time_limit", task_name="ptel.sleep", soft=1.0, hard=2.0) == \
        {"ok": "time limits set successfully"}
    assert api_call(celery_app, "time_limit", task_name="nope", soft=1.0) == {"error": "unknown task"}
    start = time.monotonic()
    r = send(celery_app, "ptel.sleep", [20])
    with pytest.raises(Exception) as exc:
        r.get(timeout=10)
    assert "TimeLimitExceeded" in type(exc.value).__name__ or "TimeLimit" in repr(exc.value)
    assert time.monotonic() - start < 6
    assert r.state == "FAILURE"


def test_add_and_cancel_consumer(clean_redis, redis_url, worker, celery_app):
    c_worker(worker)
    assert control(redis_url, "add_consumer", "q2") == {"ok": "add consumer q2"}
    assert clean_redis.sismember("_kombu.binding.q2", "q2\x06\x16\x06\x16q2")
    assert "q2" in [q["name"] for q in inspect(redis_url, "active_queues")]
    r = send(celery_app, "ptel.ping", queue="q2")
    assert r.get(timeout=10) == "pong"
    assert control(redis_url, "cancel_consumer", "q2") == {"ok": "no longer consuming from q2"}
    assert "q2" not in [q["name"] for q in inspect(redis_url, "active_queues")]
    send(celery_app, "ptel.ping", queue="q2")
    time.sleep(2)
    assert clean_redis.llen("q2") == 1


def test_pool_grow_and_shrink(clean_redis, redis_url, worker, celery_app):
    c_worker(worker, "-c", "1")
    assert control(redis_url, "pool_grow", "2") == {"ok": "pool will grow"}
    wait_for(lambda: inspect(redis_url, "stats")["pool"]["max-concurrency"] == 3, 5,
             desc="3 slots")
    # Three sleeps now run side by side.
    rs = [send(celery_app, "ptel.sleep", [2]) for _ in range(3)]
    wait_for(lambda: len(inspect(redis_url, "active")) == 3, 5, desc="3 active")
    for r in rs:
        r.get(timeout=10)
    assert control(redis_url, "pool_shrink", "1") == {"ok": "pool will shrink"}
    wait_for(lambda: inspect(redis_url, "stats")["pool"]["max-concurrency"] == 2, 5,
             desc="2 slots")


def test_revoked_task_never_runs(tap, redis_url, worker, celery_app):
    c_worker(worker, "-E")
    task_id = str(uuid.uuid4())
    assert control(redis_url, "revoke", task_id) == {"ok": f"tasks {task_id} flagged as revoked"}
    assert task_id in inspect(redis_url, "revoked")
    r = send(celery_app, "ptel.ping", task_id=task_id)
    wait_for(lambda: r.state == "REVOKED", 10, desc="REVOKED stored")
    got = tap.wait(lambda e: e["type"] == "task-revoked" and e["uuid"] == task_id,
                   desc="task-revoked")
    assert got[0]["terminated"] is False and got[0]["expired"] is False
    assert not [e for _, e in tap.events
                if e.get("uuid") == task_id and e["type"] in ("task-received", "task-started")]


def test_revoke_terminate_stops_running_task(tap, redis_url, worker, celery_app):
    c_worker(worker, "-E")
    r = send(celery_app, "ptel.sleep", [60])
    wait_for(lambda: inspect(redis_url, "active"), 10, desc="ptel.sleep running")
    start = time.monotonic()
    reply = api_call(celery_app, "revoke", task_id=r.id, terminate=True, signal="SIGTERM")
    assert reply == {"ok": f"terminate: {r.id}"}
    wait_for(lambda: r.state == "REVOKED", 5, desc="REVOKED after terminate")
    assert time.monotonic() - start < 2.5
    got = tap.wait(lambda e: e["type"] == "task-revoked" and e["uuid"] == r.id,
                   desc="task-revoked terminated")
    assert got[0]["terminated"] is True and got[0]["signum"] == 15
    assert api_call(celery_app, "revoke", task_id="unknown-id", terminate=True) == \
        {"ok": "terminate: tasks unknown"}


def test_shutdown_is_warm_with_no_reply_and_offline_event(tap, redis_url, worker, celery_app):
    proc = c_worker(worker)
    replies = celery_app.control.broadcast("shutdown", destination=[C_NODE], reply=True,
                                           timeout=1.0)
    assert replies == []                       # no reply, as Celery
    assert proc.wait(timeout=20) == 0
    tap.wait(lambda e: e["type"] == "worker-offline" and e["hostname"] == C_NODE,
             desc="worker-offline")
    assert not clean_members(tap, redis_url)


def clean_members(tap, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [m for m in client.smembers("_kombu.binding.celery.pidbox")
                if C_NODE.encode() in m]
    finally:
        client.close()


# ---- robustness -----------------------------------------------------------------------

def test_unknown_malformed_and_vanished_reply_queue_do_not_crash(clean_redis, redis_url,
                                                                  worker, celery_app):
    proc = c_worker(worker)
    assert api_call(celery_app, "no_such_command") == {"error": "KeyError('no_such_command')"}
    db = db_of(redis_url)
    for junk in (b"{garbage", b"[]", b'{"body": "!!"}', b'{"body": "e30="}', b"\xff\xfe"):
        clean_redis.publish(f"/{db}.celery.pidbox", junk)
    # A call whose reply queue binding is gone before the worker answers.
    body = {"method": "ping", "arguments": {}, "destination": None, "pattern": None,
            "matcher": None, "ticket": "t-1", "reply_to": {"exchange": "reply.celery.pidbox",
                                                            "routing_key": "vanished"}}
    import base64

    env = {"body": base64.b64encode(json.dumps(body).encode()).decode(),
           "content-encoding": "utf-8", "content-type": "application/json",
           "headers": {"clock": 1, "expires": 0},
           "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "celery.pidbox",
                                                                "routing_key": ""},
                          "priority": 0, "body_encoding": "base64", "delivery_tag": "x"}}
    clean_redis.publish(f"/{db}.celery.pidbox", json.dumps(env))
    time.sleep(0.5)
    assert not clean_redis.exists("vanished.reply.celery.pidbox")
    assert proc.alive()
    assert inspect(redis_url, "ping") == {"ok": "pong"}


def test_worker_control_allow_refuses_other_commands(clean_redis, redis_url, worker):
    c_worker(worker, worker_control_allow=["ping", "stats"])
    assert inspect(redis_url, "ping") == {"ok": "pong"}
    assert control(redis_url, "pool_grow", "1") == {
        "error": "command 'pool_grow' is not allowed on this worker (worker_control_allow)"}


def test_destination_and_glob_pattern(clean_redis, redis_url, worker, celery_app):
    c_worker(worker)
    assert celery_app.control.ping(destination=["someone@else"], timeout=1) == []
    replies = celery_app.control.broadcast("ping", pattern="ptel-c1@*", matcher="glob",
                                           reply=True, timeout=1)
    assert {C_NODE: {"ok": "pong"}} in replies
    replies = celery_app.control.broadcast("ping", pattern="nomatch.*", matcher="pcre",
                                           reply=True, timeout=1)
    assert not [r for r in replies if C_NODE in r]


# ---- events seen by Celery's own monitor --------------------------------------------

def test_event_receiver_state_sees_worker_and_tasks(clean_redis, redis_url, worker, celery_app):
    from celery.events.state import State

    c_worker(worker, "-E")
    state = State()
    stop = threading.Event()

    def run():
        with celery_app.connection_for_read() as conn:
            recv = celery_app.events.Receiver(conn, handlers={"*": state.event})
            while not stop.is_set():
                try:
                    for _ in recv.itercapture(limit=None, timeout=0.5, wakeup=False):
                        if stop.is_set():
                            break
                except Exception:  # noqa: BLE001 - socket timeout: loop and check stop
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        time.sleep(1.0)
        ok_ = send(celery_app, "ptel.ping")
        bad = send(celery_app, "ptel.fail", ["kaboom"])
        ok_.get(timeout=10)
        with pytest.raises(Exception):
            bad.get(timeout=10)
        wait_for(lambda: ok_.id in state.tasks and state.tasks[ok_.id].state == "SUCCESS"
                 and bad.id in state.tasks and state.tasks[bad.id].state == "FAILURE", 10,
                 desc="task states in celery.events.State")
        wait_for(lambda: C_NODE in state.workers and len(state.workers[C_NODE].heartbeats) >= 2,
                 10, desc="two heartbeats")
    finally:
        stop.set()
        t.join(5)
    w = state.workers[C_NODE]
    assert w.alive and w.sw_ident == "py-celery" and w.freq == 2.0
    good = state.tasks[ok_.id]
    assert good.name == "ptel.ping" and good.result == "'pong'" and good.runtime >= 0
    failed = state.tasks[bad.id]
    assert "RuntimeError" in failed.exception and "kaboom" in failed.exception
    assert failed.traceback


def test_celery_events_dump_shows_every_event_type(clean_redis, redis_url, worker, celery_app,
                                                   tmp_path):
    out = open(tmp_path / "dump.txt", "w")
    dump = subprocess.Popen([PY, "-m", "celery", "-b", redis_url, "events", "--dump"],
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        time.sleep(2.0)
        proc = c_worker(worker, "-E")
        send(celery_app, "ptel.ping").get(timeout=10)
        fail = send(celery_app, "ptel.fail")
        with pytest.raises(Exception):
            fail.get(timeout=10)
        send(celery_app, "ptel.flaky", [1]).get(timeout=15)
        revoked = str(uuid.uuid4())
        celery_app.control.revoke(revoked)
        time.sleep(0.5)
        send(celery_app, "ptel.ping", task_id=revoked)
        send(celery_app, "no.such.task.for.dump")        # handed back: task-rejected
        time.sleep(3)
        proc.stop()
        time.sleep(1.5)
    finally:
        dump.send_signal(signal.SIGINT)
        try:
            dump.wait(10)
        except subprocess.TimeoutExpired:
            dump.kill()
        out.close()
    text = (tmp_path / "dump.txt").read_text()
    mine = [line for line in text.splitlines() if line.startswith(f"{C_NODE} [")]
    kinds = {line.split("] ", 1)[1].split(":", 1)[0] for line in mine}
    # evdump names worker-online/heartbeat/offline "started"/"heartbeat"/"shutdown".
    for kind in ("started", "heartbeat", "shutdown", "task received", "task started",
                 "task succeeded", "task failed", "task retried", "task revoked",
                 "task rejected"):
        assert kind in kinds, (kind, sorted(kinds), text[-3000:])


# ---- mingle ----------------------------------------------------------------------------

def test_mingle_shares_revoked_ids_with_python_workers(clean_redis, redis_url, worker,
                                                        python_worker, celery_app):
    # C first: it revokes an id, then a Python worker joins and learns it.
    c_proc = c_worker(worker)
    from_c = str(uuid.uuid4())
    assert control(redis_url, "revoke", from_c)["ok"].endswith("flagged as revoked")
    py = python_worker(name=PY_NODE)
    assert "mingle: sync with 1 nodes" in py.log()
    assert from_c in inspect(redis_url, "revoked", node=PY_NODE)

    # Python revokes another id; a second C worker joining learns both.
    from_py = str(uuid.uuid4())
    assert control(redis_url, "revoke", from_py, node=PY_NODE)["ok"].endswith("flagged as revoked")
    c2_node = "ptel-c2@flowertest"
    c2 = worker("-n", c2_node)
    assert "mingle: sync with 2 nodes" in c2.log()
    revoked = inspect(redis_url, "revoked", node=c2_node)
    assert from_c in revoked and from_py in revoked
    # The first C worker answered the hello ("sync with <node>").
    c_proc.wait_for_log(f"sync with {c2_node}", 5)


def test_hello_with_int_timestamp_gets_python_error(clean_redis, redis_url, worker, celery_app):
    c_worker(worker)
    reply = api_call(celery_app, "hello", from_node="other@x", revoked={"abc": 1})
    assert reply == {"error": "ValueError(\"Expecting float timestamp, got type <class 'int'> "
                              "with value: 1\")"}
    assert api_call(celery_app, "hello", from_node=C_NODE) is None   # from itself: null


def test_statedb_keeps_revoked_ids_across_restarts(clean_redis, redis_url, worker, tmp_path):
    db = tmp_path / "state.db"
    proc = c_worker(worker, "--statedb", str(db))
    task_id = str(uuid.uuid4())
    control(redis_url, "revoke", task_id)
    assert proc.stop() == 0
    assert db.exists()
    c_worker(worker, "--statedb", str(db))
    assert task_id in inspect(redis_url, "revoked")
