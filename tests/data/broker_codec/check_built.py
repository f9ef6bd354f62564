#!/usr/bin/python3
"""Check envelopes built by broker/message.c against real Celery/kombu.

Usage: check_built.py FILE, where FILE is a JSON list of
{"spec": {...send_task arguments...}, "envelope": "<C-built JSON>"}.
For each entry this (1) decodes the C envelope with kombu exactly as a
worker would (base64, content-type, json) and checks the task protocol v2
shape, then (2) publishes the same task with Celery's own send_task over
kombu's in-memory transport (same code path as Redis up to the LPUSH),
serialises it as kombu's Redis transport does, and requires the C bytes to
be identical except for the random delivery_tag, the pid in `origin`, and
reply_to when the spec gives none (send_task then invents the client oid).
Exit 0 when all match; otherwise prints the differences and exits 1.
"""
import base64, datetime, json, sys

from celery import Celery
from kombu.serialization import loads
from kombu.transport import memory
from kombu.utils.json import dumps as kombu_dumps


def us_to_dt(us):
    return datetime.datetime.fromtimestamp(us // 1000000, datetime.timezone.utc).replace(
        microsecond=us % 1000000)


def python_envelope(spec):
    app = Celery("check", broker="memory://")
    app.conf.task_default_queue = spec["queue"]
    now = us_to_dt(spec["now_us"])
    app.now = lambda: now
    # Python callers pass args as a tuple: apply_async((2, 3)) -> argsrepr "(2, 3)"
    kw = dict(args=tuple(spec.get("args") or ()), kwargs=spec.get("kwargs"), task_id=spec["id"],
              reply_to=spec.get("reply_to"), queue=spec["queue"])
    for key in ("priority", "parent_id", "root_id", "time_limit", "soft_time_limit",
                "countdown", "ignore_result", "retries"):
        if spec.get(key) is not None:
            kw[key] = spec[key]
    if spec.get("group"):
        kw["group_id"] = spec["group"]
    if spec.get("eta_us"):
        kw["eta"] = us_to_dt(spec["eta_us"])
    if spec.get("expires_in"):
        kw["expires"] = spec["expires_in"]
    elif spec.get("expires_us"):
        kw["expires"] = us_to_dt(spec["expires_us"])
    app.send_task(spec["task"], **kw)
    q = memory.Channel.queues[spec["queue"]]
    msg = q.get_nowait()
    app.close()
    return kombu_dumps(msg)


def check(entry):
    errors = []
    c_raw = entry["envelope"]
    env = json.loads(c_raw)
    body = loads(base64.b64decode(env["body"]), env["content-type"], env["content-encoding"],
                 accept=["application/json"])
    if not (isinstance(body, list) and len(body) == 3):
        errors.append(f"body is not [args, kwargs, embed]: {body!r}")
    if env["headers"].get("task") != entry["spec"]["task"]:
        errors.append("headers.task differs")
    py = json.loads(python_envelope(entry["spec"]))
    py["properties"]["delivery_tag"] = env["properties"]["delivery_tag"]
    if env["headers"].get("origin", "").startswith("gen"):
        py["headers"]["origin"] = env["headers"]["origin"]
    if not entry["spec"].get("reply_to"):
        # send_task fills in the client's oid; as_task_v2 (and our builder) write ''
        py["properties"]["reply_to"] = env["properties"]["reply_to"]
    py_raw = json.dumps(py)
    if py_raw != c_raw:
        errors.append(f"bytes differ\n  C:      {c_raw}\n  Python: {py_raw}")
    return errors


def main():
    entries = json.load(open(sys.argv[1]))
    bad = 0
    for i, entry in enumerate(entries):
        for e in check(entry):
            bad += 1
            print(f"entry {i}: {e}")
    print(f"checked {len(entries)} envelopes, {bad} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
