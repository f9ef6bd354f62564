"""Celery compatibility of the C worker, end to end (issue #2, acceptance
points 1, 2, 3, 6 and 8): a real Python Celery 5.2 client sends, the C
worker runs, and where a comparison is meaningful a real Python Celery
worker (pyapp/) runs the same thing so the stored bytes can be compared.

Synchronisation is by state (result keys, pub/sub messages, log lines via
wait_for); the only timed waits are the ones the behaviour under test is
about (countdown, retry delay, the CPU sampling window)."""

import datetime as dt
import json
import math
import os
import re
import time
import uuid

import pytest

from helpers import wait_for

SEP = "\x06\x16"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TASK_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): [A-Z]+/[^\]]*\] "
                       r"Task (\S+)\[(" + UUID_RE + r")\] (received|succeeded)", re.M)
GET_TIMEOUT = 20


# ---- little helpers -----------------------------------------------------------------

def task_lines(log_text, what):
    """[(log time as unix seconds, task name, id)] of 'received' or
    'succeeded' lines, in log order (Celery's and ours share the format)."""
    out = []
    for m in TASK_LINE.finditer(log_text):
        if m.group(4) == what:
            stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((stamp, m.group(2), m.group(3)))
    return out


def ids_in_log(log_text, what):
    return [i for _, _, i in task_lines(log_text, what)]


def meta_raw(r, task_id):
    return r.get(f"celery-task-meta-{task_id}")


def meta(r, task_id):
    raw = meta_raw(r, task_id)
    return json.loads(raw) if raw is not None else None


def wait_state(r, task_id, states=("SUCCESS", "FAILURE", "REVOKED"), timeout=GET_TIMEOUT):
    def ready():
        m = meta(r, task_id)
        return m if m and m["status"] in states else None
    return wait_for(ready, timeout, desc=f"{task_id} in {states}")


def normalized(raw, task_id):
    """The stored value with date_done's value and the task id masked, the
    rest byte for byte as stored."""
    text = raw.decode("utf-8")
    text = re.sub(r'"date_done": "[^"]*"', '"date_done": "<date>"', text)
    return text.replace(task_id, "<id>")


def date_done_unix(value):
    """date_done is naive UTC isoformat (PROTOCOL §11.2)."""
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc).timestamp()


def client(redis_url, serializer="json", protocol=2, **conf):
    """A Celery client app; task_protocol is set before first use (PROTOCOL §3.3)."""
    import celery

    app = celery.Celery(f"ptel-compat-{uuid.uuid4().hex[:6]}", broker=redis_url,
                        backend=redis_url)
    app.conf.update(task_default_queue="ingest", task_serializer=serializer,
                    result_serializer="json", accept_content=["json", "msgpack"],
                    result_accept_content=["json"], broker_connection_retry_on_startup=True,
                    **conf)
    app.conf.task_protocol = protocol
    return app


def cpu_ticks(pid):
    """utime + stime of pid (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def same_value(a, b):
    """Equality that also tells -0.0 from 0.0 and int from float."""
    if isinstance(a, float) or isinstance(b, float):
        return (type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))
                and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# ---- 1. echo: byte-identical results to a Python worker -------------------------------

PAYLOADS = [
    ("text", ["héllo wörld ☃ 𝄞 日本語 \u2028\u2029", "ctl\t\n\r\x00\x01\x07\x1b\x1f\x7f\x80\x9f",
              "quote\" back\\slash /</script>", ""],
     {"ключ": "значение", "z": "", "a": "\x00"}),
    ("floats", [0.1, 1e16, 1e-7, -0.0, 100.0, 1.5e300, 5e-324, 123456789.125, 1e22, 1e21],
     {"third": 0.30000000000000004, "neg": -2.5}),
    ("ints", [0, -1, 2**31, -2**63, 2**63 - 1, 2**64 - 1, 2**53 + 1], {"n": 42}),
    ("nested", [[1, [2, [3, []]]], {"a": {"b": {"c": [None, True, False]}}}, None, True, False],
     {"z": 1, "a": {"y": [{}], "b": None}, "m": [[], {}]}),
]
# msgpack has no integers beyond 64 bits; Python's json has.
JSON_ONLY_PAYLOADS = [
    ("bigints", [2**70, -2**100, 10**30, -(2**64)], {"big": 2**64, "neg": -2**65}),
]
def _echo_stub(*args, **kwargs):
    """Client-side stand-in, so apply_async can be called on a task object."""


VARIANTS = [(proto, comp) for proto in (2, 1) for comp in (None, "zlib", "bzip2")]


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_echo_results_are_byte_identical_to_python_worker(
        serializer, clean_redis, redis_url, worker, python_worker):
    """Acceptance 1: every payload, in protocol v1 and v2, plain, zlib and
    bzip2, comes back from AsyncResult.get() as sent, and the stored
    celery-task-meta value equals the Python worker's byte for byte (except
    date_done and the id)."""
    worker("-Q", "c_echo")
    python_worker(queues="py_echo")
    payloads = PAYLOADS + (JSON_ONLY_PAYLOADS if serializer == "json" else [])
    apps, sent = [], []
    try:
        for proto, comp in VARIANTS:
            app = client(redis_url, serializer, proto)
            apps.append(app)
            # v2 goes through send_task, v1 through a client-side stub's
            # apply_async: the two client paths of acceptance 1.
            stub = app.task(name="ptel.echo")(_echo_stub)
            for name, args, kwargs in payloads:
                opts = {"compression": comp} if comp else {}
                if proto == 2:
                    c = app.send_task("ptel.echo", args=args, kwargs=kwargs, queue="c_echo", **opts)
                    p = app.send_task("ptel.echo", args=args, kwargs=kwargs, queue="py_echo", **opts)
                else:
                    c = stub.apply_async(args, kwargs, queue="c_echo", **opts)
                    p = stub.apply_async(args, kwargs, queue="py_echo", **opts)
                sent.append((f"v{proto}/{comp or 'plain'}/{name}", args, kwargs, c, p))
        problems = []
        for label, args, kwargs, c, p in sent:
            expected = {"args": list(args), "kwargs": kwargs}
            c_value = c.get(timeout=GET_TIMEOUT)
            p_value = p.get(timeout=GET_TIMEOUT)
            if not same_value(c_value, expected):
                problems.append(f"{label}: C get() returned {c_value!r}")
            if not same_value(p_value, expected):
                problems.append(f"{label}: Python get() returned {p_value!r} (pyapp changed?)")
            c_raw = normalized(meta_raw(clean_redis, c.id), c.id)
            p_raw = normalized(meta_raw(clean_redis, p.id), p.id)
            if c_raw != p_raw:
                problems.append(f"{label}: stored values differ\n  C:  {c_raw}\n  py: {p_raw}")
        assert not problems, "\n".join(problems)
    finally:
        for app in apps:
            app.close()


# ---- 2. priorities and round robin ------------------------------------------------------

def test_priorities_run_in_python_celery_order(clean_redis, worker, celery_app):
    """Acceptance 2 (PROTOCOL §2.3): sent p9, p5, p0, none, p3 to a stopped
    worker, they run as p0, none, p5, p3, p9 (lower number first, FIFO
    within a sub-queue)."""
    sent = []
    for label, prio in (("p9", 9), ("p5", 5), ("p0", 0), ("none", None), ("p3", 3)):
        opts = {} if prio is None else {"priority": prio}
        res = celery_app.send_task("ptel.echo", args=[label], kwargs={}, **opts)
        sent.append((label, res.id))
    assert sorted(k.decode() for k in clean_redis.keys("ingest*")) == \
        ["ingest", f"ingest{SEP}3", f"ingest{SEP}9"]
    w = worker("-c", "1", "--prefetch-multiplier", "1")
    for _, tid in sent:
        assert wait_state(clean_redis, tid)["status"] == "SUCCESS"
    label_of = {tid: label for label, tid in sent}
    expected = ["p0", "none", "p5", "p3", "p9"]
    assert [label_of[i] for i in ids_in_log(w.log(), "received")] == expected
    assert [label_of[i] for i in ids_in_log(w.log(), "succeeded")] == expected
    done = sorted(sent, key=lambda s: meta(clean_redis, s[1])["date_done"])
    assert [label for label, _ in done] == expected


@pytest.mark.parametrize("prefetch", ["1", "10"])
def test_queues_are_served_round_robin(prefetch, clean_redis, worker, celery_app):
    """Acceptance 2 (PROTOCOL §2.2): with -Q alpha,beta,ingest each served
    queue moves to the end of the order; one message per fetch (prefetch 1)
    and many per fetch (prefetch 10) interleave the same way."""
    plan = {"alpha": ["a1", "a2", "a3"], "beta": ["b1"], "ingest": ["i1", "i2"]}
    label_of = {}
    for queue, labels in plan.items():
        for label in labels:
            res = celery_app.send_task("ptel.echo", args=[label], kwargs={}, queue=queue)
            label_of[res.id] = label
    w = worker("-Q", "alpha,beta,ingest", "-c", "1", "--prefetch-multiplier", prefetch)
    for tid in label_of:
        assert wait_state(clean_redis, tid)["status"] == "SUCCESS"
    expected = ["a1", "b1", "i1", "a2", "i2", "a3"]
    assert [label_of[i] for i in ids_in_log(w.log(), "received")] == expected
    assert [label_of[i] for i in ids_in_log(w.log(), "succeeded")] == expected


# ---- 3. countdown, expires, time limit, retry ---------------------------------------------

def test_countdown_starts_no_earlier_than_its_eta(clean_redis, worker, celery_app):
    """Acceptance 3: countdown=2 is received at once, held unacked
    (PROTOCOL §3.4), started and finished no earlier than 2 s after the
    send, and not much later."""
    w = worker(task_track_started=True)
    tid = str(uuid.uuid4())
    pubsub = clean_redis.pubsub()
    pubsub.subscribe(f"celery-task-meta-{tid}")
    wait_for(lambda: pubsub.get_message(timeout=0.1), 5, desc="subscribe confirmation")
    t_send = time.time()
    res = celery_app.send_task("ptel.ping", task_id=tid, countdown=2)
    w.wait_for_log(f"ptel.ping[{tid}] received", 5)
    assert time.time() - t_send < 1.5
    assert clean_redis.hlen("unacked") == 1, "an ETA message stays in unacked until it runs"
    states = []
    while not states or states[-1][0] != "SUCCESS":
        msg = pubsub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            states.append((json.loads(msg["data"])["status"], time.time()))
        assert time.time() - t_send < 10, f"no SUCCESS in 10 s: {states}"
    pubsub.close()
    assert [s for s, _ in states] == ["STARTED", "SUCCESS"]
    assert states[0][1] >= t_send + 2.0, f"started {states[0][1] - t_send:.3f}s after send"
    assert states[1][1] < t_send + 3.5
    assert res.get(timeout=1) == "pong"
    done = date_done_unix(meta(clean_redis, tid)["date_done"])
    assert done >= t_send + 2.0
    (stamp, _, _), = [x for x in task_lines(w.log(), "succeeded") if x[2] == tid]
    assert stamp >= t_send + 2.0 - 0.001  # log stamps are cut to milliseconds
    wait_for(lambda: clean_redis.hlen("unacked") == 0, 5, desc="ack after the run")


def test_expired_task_is_revoked_and_never_run(clean_redis, worker, celery_app):
    """Acceptance 3 (PROTOCOL §12.1): expires in the past -> REVOKED
    ['expired'], acked, no received/succeeded line; get() raises
    TaskRevokedError('expired'). The worker keeps serving."""
    from celery.exceptions import TaskRevokedError

    w = worker()
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)
    res = celery_app.send_task("ptel.echo", args=["must not run"], kwargs={}, expires=past)
    with pytest.raises(TaskRevokedError) as err:
        res.get(timeout=GET_TIMEOUT)
    assert err.value.args == ("expired",)
    stored = meta(clean_redis, res.id)
    assert stored["status"] == "REVOKED"
    assert stored["result"] == {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                                "exc_module": "celery.exceptions"}
    assert stored["traceback"] is None
    assert celery_app.send_task("ptel.ping").get(timeout=GET_TIMEOUT) == "pong"
    assert res.id not in ids_in_log(w.log(), "received")
    assert res.id not in ids_in_log(w.log(), "succeeded")
    assert res.id in w.log(), "the discard of an expired task is logged"
    wait_for(lambda: clean_redis.hlen("unacked") == 0 and clean_redis.llen("ingest") == 0,
             5, desc="queue and unacked empty")


def test_hard_time_limit_fails_the_task_and_the_worker_keeps_serving(
        clean_redis, worker, celery_app):
    """Acceptance 3 (PROTOCOL §12.2): ptel.sleep(30) with time_limit=1 ->
    FAILURE TimeLimitExceeded([1]) within 3 s; the only slot is free again."""
    from billiard.exceptions import TimeLimitExceeded

    w = worker("-c", "1")
    t0 = time.monotonic()
    res = celery_app.send_task("ptel.sleep", args=[30], time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        res.get(timeout=10)
    elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 3.0, f"TimeLimitExceeded after {elapsed:.2f}s"
    stored = meta(clean_redis, res.id)
    assert stored["status"] == "FAILURE"
    assert stored["result"] == {"exc_type": "TimeLimitExceeded", "exc_message": [1],
                                "exc_module": "billiard.exceptions"}
    assert "Hard time limit (1s) exceeded" in w.log()
    assert celery_app.send_task("ptel.ping").get(timeout=5) == "pong"
    assert res.id not in ids_in_log(w.log(), "succeeded")
    wait_for(lambda: clean_redis.hlen("unacked") == 0, 5, desc="unacked empty")


def test_flaky_retries_twice_then_succeeds(clean_redis, worker, celery_app):
    """Acceptance 3 (PROTOCOL §12.3): ptel.flaky(2) publishes STARTED,
    RETRY, STARTED, RETRY, STARTED, SUCCESS(2) on its result channel, each
    run at least 1 s after the previous one."""
    worker(task_track_started=True)
    tid = str(uuid.uuid4())
    pubsub = clean_redis.pubsub()
    pubsub.subscribe(f"celery-task-meta-{tid}")
    wait_for(lambda: pubsub.get_message(timeout=0.1), 5, desc="subscribe confirmation")
    t0 = time.time()
    res = celery_app.send_task("ptel.flaky", args=[2], task_id=tid)
    seen = []
    while not seen or seen[-1][0]["status"] not in ("SUCCESS", "FAILURE"):
        msg = pubsub.get_message(timeout=1)
        if msg and msg["type"] == "message":
            seen.append((json.loads(msg["data"]), time.time()))
        assert time.time() - t0 < 15, f"not done in 15 s: {[v['status'] for v, _ in seen]}"
    pubsub.close()
    assert [v["status"] for v, _ in seen] == \
        ["STARTED", "RETRY", "STARTED", "RETRY", "STARTED", "SUCCESS"]
    starts = [t for v, t in seen if v["status"] == "STARTED"]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # Receipt times of two PUBLISHes on one connection; 10 ms for jitter.
    assert all(g >= 0.99 for g in gaps), f"runs {gaps} s apart"
    for value, _ in seen:
        if value["status"] == "RETRY":
            assert value["result"]["exc_type"] == "Retry"
            assert value["result"]["exc_module"] == "celery.exceptions"
            assert value["children"] == [[[tid, None], None]]
            assert value["date_done"] is None
    final = seen[-1][0]
    assert final["result"] == 2
    assert final.get("parent_id") == tid
    assert res.get(timeout=1) == 2
    wait_for(lambda: clean_redis.hlen("unacked") == 0 and clean_redis.llen("ingest") == 0,
             5, desc="queue and unacked empty")


# ---- 6. unknown tasks -------------------------------------------------------------------

INGEST_TASK = "dev_health_ops.workers.tasks.run_ingest_consumer"


def test_unknown_task_is_handed_back_without_spinning_and_run_by_python(
        clean_redis, worker, python_worker, celery_app):
    """Acceptance 6: worker_unknown_task='requeue' (the default). Alone, the
    C worker keeps handing the task back without burning CPU (< 5 % over
    10 s); once a Python worker consumes ingest too, it runs the task."""
    w = worker()
    res = celery_app.send_task(INGEST_TASK, args=[], kwargs={})
    w.wait_for_log(res.id, 10)  # the hand-back is logged (once a minute at most)
    hz = os.sysconf("SC_CLK_TCK")
    c0, t0 = cpu_ticks(w.pid), time.monotonic()
    time.sleep(10)  # the measurement window itself
    c1, t1 = cpu_ticks(w.pid), time.monotonic()
    cpu = (c1 - c0) / hz / (t1 - t0)
    assert cpu < 0.05, f"C worker used {cpu:.1%} CPU while only an unknown task was queued"
    assert meta(clean_redis, res.id) is None, "the C worker must not store a result for it"
    assert w.alive()
    py = python_worker()
    assert res.get(timeout=GET_TIMEOUT) == "py-ingest"
    assert res.id in ids_in_log(py.log(), "succeeded")
    assert res.id not in ids_in_log(w.log(), "succeeded")
    assert celery_app.send_task("ptel.ping").get(timeout=GET_TIMEOUT) == "pong"
    wait_for(lambda: clean_redis.hlen("unacked") == 0 and clean_redis.llen("ingest") == 0,
             5, desc="queue and unacked empty")


def test_unknown_task_reject_stores_not_registered(clean_redis, worker, celery_app):
    """Acceptance 6 (PROTOCOL §12.5): worker_unknown_task='reject' acks and
    stores FAILURE NotRegistered([name]) with traceback null, like Celery."""
    from celery.exceptions import NotRegistered

    w = worker(worker_unknown_task="reject")
    res = celery_app.send_task("no.such.task", args=[1], kwargs={})
    with pytest.raises(NotRegistered) as err:
        res.get(timeout=GET_TIMEOUT)
    assert err.value.args == ("no.such.task",)
    stored = meta(clean_redis, res.id)
    assert {k: stored[k] for k in ("status", "result", "traceback", "children")} == {
        "status": "FAILURE",
        "result": {"exc_type": "NotRegistered", "exc_message": ["no.such.task"],
                   "exc_module": "celery.exceptions"},
        "traceback": None, "children": []}
    assert "Received unregistered task of type 'no.such.task'" in w.log()
    # The worker stores the result, then acks: get() can return in between
    # (seen under valgrind), so wait for the ack instead of sampling once.
    wait_for(lambda: clean_redis.hlen("unacked") == 0 and clean_redis.llen("ingest") == 0, 5,
             desc="the rejected message acked")
    assert celery_app.send_task("ptel.ping").get(timeout=GET_TIMEOUT) == "pong"


# ---- 8. ptel-worker send ------------------------------------------------------------------

def send_output(done):
    """(task id, status, decoded result) from `send --wait` stdout."""
    lines = done.stdout.splitlines()
    assert len(lines) == 2, f"rc={done.returncode} out={done.stdout!r} err={done.stderr!r}"
    assert re.fullmatch(UUID_RE, lines[0]), lines[0]
    status, _, result = lines[1].partition(" ")
    return lines[0], status, json.loads(result)


def test_send_wait_prints_id_then_result(clean_redis, worker, ptel_cli):
    """Acceptance 8: `send ptel.ping --wait` prints the id, then the result;
    --args/--kwargs reach the task; --countdown delays the run."""
    worker()
    done = ptel_cli("send", "ptel.ping", "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status, result) == (0, "SUCCESS", "pong")
    assert meta(clean_redis, tid)["task_id"] == tid

    done = ptel_cli("send", "ptel.echo", "--args", '[1, "é", 2.5, null]',
                    "--kwargs", '{"k": [true, {"x": -0.0}]}', "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status) == (0, "SUCCESS")
    assert same_value(result, {"args": [1, "é", 2.5, None], "kwargs": {"k": [True, {"x": -0.0}]}})

    t0 = time.time()
    done = ptel_cli("send", "ptel.ping", "--countdown", "2", "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status, result) == (0, "SUCCESS", "pong")
    assert time.time() - t0 >= 2.0
    assert date_done_unix(meta(clean_redis, tid)["date_done"]) >= t0 + 2.0

    done = ptel_cli("send", "ptel.fail", "--args", '["bad thing"]', "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status) == (1, "FAILURE")
    assert result == {"exc_type": "RuntimeError", "exc_message": ["bad thing"],
                      "exc_module": "builtins"}


def test_send_without_wait_prints_only_the_id(clean_redis, ptel_cli):
    done = ptel_cli("send", "ptel.echo", "--args", "[1, 2]", "--priority", "9")
    assert done.returncode == 0, done.stderr
    tid = done.stdout.strip()
    assert re.fullmatch(UUID_RE, tid)
    raw = clean_redis.lpop(f"ingest{SEP}9")
    envelope = json.loads(raw)
    assert envelope["headers"]["id"] == tid
    assert envelope["headers"]["task"] == "ptel.echo"
    assert envelope["properties"]["priority"] == 9
    done = ptel_cli("send", "ptel.ping", "--wait", "--timeout", "1")
    assert done.returncode == 3, (done.stdout, done.stderr)


def test_send_is_run_by_a_python_worker(clean_redis, python_worker, ptel_cli):
    """Acceptance 8: a message from `ptel-worker send` is a valid Celery
    message: a real Python worker runs it and --wait prints its result."""
    py = python_worker()
    done = ptel_cli("send", "ptel.echo", "--args", '[1, "two", [3.5]]',
                    "--kwargs", '{"k": {"v": null}}', "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status) == (0, "SUCCESS")
    assert result == {"args": [1, "two", [3.5]], "kwargs": {"k": {"v": None}}}
    assert tid in ids_in_log(py.log(), "succeeded")
    done = ptel_cli("send", "ptel.ping", "--countdown", "1", "--wait", "--timeout", "20")
    tid, status, result = send_output(done)
    assert (done.returncode, status, result) == (0, "SUCCESS", "pong")
    assert tid in ids_in_log(py.log(), "succeeded")
