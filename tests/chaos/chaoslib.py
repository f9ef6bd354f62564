"""Shared pieces of the chaos tests: a Python worker launcher (chaosapp),
log parsing, result lookup, percentiles."""

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = "/usr/bin/python3"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TASK_LINE = re.compile(r"Task (\S+)\[(" + UUID_RE + r")\] (received|succeeded)")
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def ids_in_log(text, what):
    return [m.group(2) for m in TASK_LINE.finditer(text) if m.group(3) == what]


def metas(r, ids):
    """{id: meta dict or None}, MGET in chunks."""
    out = {}
    ids = list(ids)
    for i in range(0, len(ids), 2000):
        chunk = ids[i:i + 2000]
        for tid, raw in zip(chunk, r.mget([f"celery-task-meta-{t}" for t in chunk])):
            out[tid] = json.loads(raw) if raw is not None else None
    return out


def parse_date_done(s):
    """Celery's date_done (isoformat, UTC, naive or +00:00) -> epoch seconds."""
    if not s:
        return None
    s = s.replace("Z", "+00:00")
    d = datetime.fromisoformat(s)
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return d.timestamp()


def held_ids(r):
    """Task ids of the messages in kombu's unacked hash right now."""
    out = []
    for raw in r.hvals("unacked"):
        try:
            env = json.loads(raw)[0]
            out.append(env["headers"]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            pass
    return out


def percentile(values, p):
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (k - lo), 3)


def python_worker_argv(name, queues="ingest", loglevel="info"):
    return [PY, "-m", "celery", "-A", "chaosapp", "worker", "-Q", queues, "-P", "solo",
            "-n", name, "-l", loglevel, "--without-mingle", "--without-gossip"]


def python_worker_env(base_env, redis_url, acks_late, vt):
    env = dict(base_env)
    for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "CLICKHOUSE_URL"):
        env.pop(k, None)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["PTEL_TEST_REDIS_URL"] = redis_url
    env["PTEL_CHAOS_ACKS_LATE"] = "1" if acks_late else "0"
    env["PTEL_CHAOS_VT"] = str(vt)
    return env


def ping(r, app, timeout=30):
    """Send ptel.ping and return its stored result, read from Redis.

    Not AsyncResult.get(): after a Redis restart or a CLIENT KILL of pub/sub
    connections, Celery 5.2's client can block forever in its result-backend
    pub/sub reconnect (a futex wait that ignores the timeout), though the
    worker stored the result. The chaos tests check the worker."""
    from helpers import wait_for
    tid = app.send_task("ptel.ping").id
    meta = wait_for(lambda: (metas(r, [tid])[tid] or {}).get("status") == "SUCCESS"
                    and metas(r, [tid])[tid], timeout, interval=0.05,
                    desc=f"ptel.ping {tid} stored")
    return meta["result"]

