"""tests/data/broker/celery_peer.py: the real Python Celery/kombu side of the
broker transport and result backend tests (broker/test_transport.c,
broker/test_backend.c). Each subcommand does one thing a Python producer,
consumer or client does, so the C side is checked against the real
libraries, not against our reading of them.

Usage: /usr/bin/python3 celery_peer.py <command> <redis-url> [args...]
  send URL QUEUE:PRIORITY...   send_task one message per spec ("none" = no
                               priority); prints one task id per line
  get_and_die URL QUEUE        kombu basic_get without ack (registers the
                               message in unacked), prints the delivery tag,
                               then SIGKILLs itself: a consumer killed mid-task
  restore_visible URL VT       kombu QoS.restore_visible with visibility_timeout=VT
  result_get URL TASK_ID TIMEOUT
                               AsyncResult(id).get(); prints one JSON line
                               {"value": ...} or {"exc_type", "exc_module", "args"},
                               plus "elapsed" seconds
  golden_results GOLDEN_JSON   (no URL) prints STATE<TAB>json.dumps(value) for
                               every result_backend_values_by_state sample
"""
import json
import os
import signal
import sys
import time


def app_for(url):
    from celery import Celery
    app = Celery("ptel_test", broker=url, backend=url)
    # The capture setup (PROTOCOL.md preamble): default queue "ingest".
    app.conf.task_default_queue = "ingest"
    return app


def cmd_send(url, specs):
    app = app_for(url)
    for spec in specs:
        queue, prio = spec.split(":")
        opts = {"queue": queue}
        if prio != "none":
            opts["priority"] = int(prio)
        r = app.send_task("proj.noop", args=[spec], **opts)
        print(r.id, flush=True)


def cmd_get_and_die(url, queue):
    from kombu import Connection
    conn = Connection(url)
    ch = conn.channel()
    msg = ch.basic_get(queue, no_ack=False)
    if msg is None:
        print("EMPTY", flush=True)
        sys.exit(1)
    print(msg.delivery_tag, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def cmd_restore_visible(url, vt):
    from kombu import Connection
    conn = Connection(url, transport_options={"visibility_timeout": float(vt)})
    ch = conn.default_channel
    ch.qos.restore_visible()
    print("OK", flush=True)


def cmd_result_get(url, task_id, timeout):
    app = app_for(url)
    res = app.AsyncResult(task_id)
    t0 = time.monotonic()
    try:
        value = res.get(timeout=float(timeout))
        out = {"value": value}
    except Exception as e:  # report what the client raised
        out = {"exc_type": type(e).__name__, "exc_module": type(e).__module__,
               "args": list(e.args)}
    out["elapsed"] = time.monotonic() - t0
    out["state"] = res.state
    print(json.dumps(out), flush=True)


def cmd_golden_results(path):
    with open(path) as f:
        samples = json.load(f)["result_backend_values_by_state"]
    for state, sample in samples.items():
        print(state + "\t" + json.dumps(sample["value"]))


def main():
    cmd = sys.argv[1]
    if cmd == "send":
        cmd_send(sys.argv[2], sys.argv[3:])
    elif cmd == "get_and_die":
        cmd_get_and_die(sys.argv[2], sys.argv[3])
    elif cmd == "restore_visible":
        cmd_restore_visible(sys.argv[2], sys.argv[3])
    elif cmd == "result_get":
        cmd_result_get(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "golden_results":
        cmd_golden_results(sys.argv[2])
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
