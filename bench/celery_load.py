"""bench/celery_load.py: Celery task load for the throughput and latency runs.

Messages are the real thing: one ptel.ping message is produced by Celery
5.2.6 / kombu 5.2.4 (send_task into the `ingest` queue), taken back off the
list, and cloned with fresh task ids and delivery tags. Pushing clones with a
pipelined LPUSH (what kombu does per message) lets one Python process offer
far more than 20,000 tasks/s, so the producer never bounds the worker.

Throughput: preload N messages, start the worker, watch LLEN every 2 ms and
time the queue going from 90% to 10% full (the "10%..90% of the queue"
window: worker start-up and the tail are outside it), then wait for every
result to be SUCCESS.

Latency: push at a fixed rate, remember each id's send time, and afterwards
read date_done from every celery-task-meta-<id> (the time the SUCCESS result
was stored, microseconds, UTC): latency = date_done - send time.
"""
import datetime
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "baselines"))

QUEUE = "ingest"


def make_template(redis_url, r, task="ptel.ping", kwargs=None, expires=None):
    """One real Celery message for `task` (raw JSON string, task id, delivery tag)."""
    os.environ["BENCH_BROKER_URL"] = redis_url
    import celery_app  # noqa: E402 (needs the env first)
    celery_app.app.conf.broker_url = redis_url
    celery_app.app.conf.result_backend = redis_url
    res = celery_app.app.send_task(task, kwargs=kwargs or {}, queue=QUEUE, expires=expires)
    raw = r.lpop(QUEUE)
    if raw is None:
        raise RuntimeError("template message not found in %s" % QUEUE)
    raw = raw.decode()
    msg = json.loads(raw)
    return raw, res.id, msg["properties"]["delivery_tag"]


class Cloner:
    def __init__(self, template):
        raw, tid, tag = template
        # Split around both uuids once; joining is cheap.
        parts = []
        pos = 0
        marks = sorted([(i, tid) for i in range(len(raw))
                        if raw.startswith(tid, i)] +
                       [(i, tag) for i in range(len(raw)) if raw.startswith(tag, i)])
        for at, what in marks:
            parts.append(raw[pos:at])
            parts.append(what == tid)
            pos = at + len(what)
        parts.append(raw[pos:])
        self.parts = parts

    def clone(self):
        tid, tag = str(uuid.uuid4()), str(uuid.uuid4())
        out = [(tid if p else tag) if isinstance(p, bool) else p for p in self.parts]
        return tid, "".join(out)


def preload(r, cloner, n, chunk=1000):
    ids = []
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        tid, raw = cloner.clone()
        ids.append(tid)
        pipe.lpush(QUEUE, raw)
        if (i + 1) % chunk == 0:
            pipe.execute()
    pipe.execute()
    return ids


def wait_queue_window(r, n, lo=0.1, hi=0.9, timeout=600, period=0.002):
    """Time from 10% consumed (LLEN <= 0.9n) to 90% consumed (LLEN <= 0.1n)."""
    t10 = t90 = None
    end = time.time() + timeout
    while time.time() < end:
        left = r.llen(QUEUE)
        now = time.perf_counter()
        if t10 is None and left <= n * (1 - lo):
            t10 = now
        if t10 is not None and left <= n * (1 - hi):
            t90 = now
            break
        time.sleep(period)
    if t10 is None or t90 is None or t90 <= t10:
        return None
    return (hi - lo) * n / (t90 - t10)


def meta_states(r, ids, chunk=2000):
    out = []
    for i in range(0, len(ids), chunk):
        keys = ["celery-task-meta-" + t for t in ids[i:i + chunk]]
        for v in r.mget(keys):
            out.append(json.loads(v) if v else None)
    return out


def wait_results(r, ids, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        metas = meta_states(r, ids[-200:]) + meta_states(r, ids[:200])
        if all(m and m.get("status") == "SUCCESS" for m in metas):
            metas = meta_states(r, ids)
            ok = sum(1 for m in metas if m and m.get("status") == "SUCCESS")
            if ok == len(ids):
                return ok, metas
        time.sleep(0.1)
    metas = meta_states(r, ids)
    return sum(1 for m in metas if m and m.get("status") == "SUCCESS"), metas


def date_done_epoch(s):
    d = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def paced(r, cloner, rate, duration, tick=0.002):
    """Push `rate` tasks/s for `duration` s. Returns [(id, send time)]."""
    sent = []
    t0 = time.time()
    pipe = r.pipeline(transaction=False)
    while True:
        now = time.time()
        if now - t0 >= duration:
            break
        due = int((now - t0) * rate)
        batch = []
        while len(sent) + len(batch) < due:
            tid, raw = cloner.clone()
            pipe.lpush(QUEUE, raw)
            batch.append(tid)
        if batch:
            pipe.execute()
            ts = time.time()
            sent.extend((t, ts) for t in batch)
        time.sleep(tick)
    return sent


def latencies(metas, sent):
    lat = []
    for m, (tid, ts) in zip(metas, sent):
        if m and m.get("status") == "SUCCESS" and m.get("date_done"):
            lat.append(date_done_epoch(m["date_done"]) - ts)
    lat.sort()
    return lat
