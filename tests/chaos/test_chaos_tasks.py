"""Chaos, Celery side: kill -9 the C worker at random moments while it holds
ETA/countdown tasks, acks_late tasks, early-ack tasks and ptel.flaky retries
in flight; some rounds restart Redis under a running worker instead (mid
fetch). After each round a fresh worker (C, or every fifth round Python
Celery) picks up. At the end one C worker recovers everything and the test
counts, per task id:

  lost          no final result although the message was acks_late or not
                yet started when its worker died (must be 0)
  lost_early    early-ack tasks whose worker was killed while they ran:
                Celery acks those before running them, so they are gone by
                Celery's own semantics (counted and reported, not a failure);
                reported apart: early-ack tasks a Python worker (-P solo) was
                running when it was stopped warmly (Celery loses them too)
  dup_runs      tasks that succeeded more than once (at-least-once delivery:
                killed while running acks_late, or a retry republished
                before the kill acked the old message)
  recovery      per kill: seconds from the kill until every message the
                dead worker held (kombu's unacked hash) has a final result
                (bounded below by the 3 s visibility timeout)
"""

import os
import random
import signal
import time

from chaoslib import (FINAL, held_ids, ids_in_log, metas, parse_date_done, percentile, ping,
                      python_worker_argv, python_worker_env)
from conftest import ROUNDS, ManagedProcess, report
from helpers import wait_for

VT = 3
SEED = 20240605


def send_round(app, rng, kinds):
    sent = []
    for _ in range(4):
        sent.append(("sleep", app.send_task("ptel.sleep", args=[round(rng.uniform(0.2, 1.2), 2)]).id))
    for _ in range(3):
        sent.append(("eta", app.send_task("ptel.ping", countdown=rng.uniform(0.5, 2.0)).id))
    for i in range(3):
        sent.append(("echo", app.send_task("ptel.echo", args=[i]).id))
    for _ in range(2):
        sent.append(("flaky", app.send_task("ptel.flaky", args=[rng.randint(1, 2)]).id))
    for kind, tid in sent:
        kinds[tid] = kind
    return [tid for _, tid in sent]


def test_kill9_during_task_traffic(clean_redis, private_redis, worker, celery_app, tmp_path,
                                   redis_url):
    r = clean_redis
    rng = random.Random(SEED)
    kinds = {}
    workers = []          # (proc, acks_late, killed)
    kills = []            # (kill time, held ids)
    redis_restarts = 0
    outage_lines = []     # per Redis restart: (error lines, restored lines)
    t_start = time.monotonic()
    common = dict(broker_transport_options={"visibility_timeout": VT}, task_track_started=True,
                  worker_prefetch_multiplier=1, worker_shutdown_grace=5)

    for rnd in range(ROUNDS):
        acks_late = rnd % 2 == 0
        send_round(celery_app, rng, kinds)
        if rnd % 5 == 4:
            # A Python Celery worker recovers this round, then stops warmly.
            n = len(workers) + 1
            proc = ManagedProcess(f"python chaos worker #{n}",
                                  python_worker_argv(f"py{n}@chaos"),
                                  tmp_path / f"py-worker{n}.log",
                                  python_worker_env(os.environ, redis_url,
                                                    acks_late, VT), tmp_path)
            proc.start()
            proc.wait_for_log(" ready.", 30)
            workers.append((proc, acks_late, False))
            time.sleep(rng.uniform(1.0, 3.0))
            proc.stop(signal.SIGTERM, timeout=30)
            continue
        w = worker("-c", "2", "-n", f"c{rnd}@chaos", task_acks_late=acks_late, **common)
        workers.append((w, acks_late, True))
        if rnd % 7 == 3:
            # Redis restart under a live worker, in the middle of its fetch loop.
            time.sleep(rng.uniform(0.2, 1.0))
            mark = len(w.log())
            private_redis.restart(kill=rnd % 2 == 1, down_s=rng.uniform(0.5, 2.0))
            redis_restarts += 1
            w.wait_for_log("Broker connection restored", 30, start=mark)
            seg = w.log()[mark:]
            outage_lines.append((seg.count("Fetching from the broker failed")
                                 + seg.count("unreachable; retrying"),
                                 seg.count("Broker connection restored")))
            pong = ping(r, celery_app)   # read from Redis: see chaoslib.ping
            assert pong == "pong"
        time.sleep(rng.uniform(0.2, 3.0))
        w.proc.kill()
        w.wait()
        kills.append((time.time(), held_ids(r)))

    # Recovery: one C worker (acks_late) until every id is final or only
    # early-ack tasks that died while running are left. Like kombu, the C
    # worker restores at most 10 visibility-timed-out messages at start and
    # then every ~100 s (PROTOCOL §4.4), so the test restarts it while dead
    # workers' messages are still in unacked rather than wait 100 s.
    time.sleep(VT + 0.5)
    finals = [worker("-c", "2", "-n", "final@chaos", task_acks_late=True, **common)]
    last_restart = [time.monotonic()]
    logs = {}

    def collect_logs():
        for proc, late, killed in workers:
            logs[proc.title] = (proc.log(), late, killed)
        for f in finals:
            logs[f.title] = (f.log(), True, False)

    def maybe_restart_final():
        if time.monotonic() - last_restart[0] < 6 or r.llen("ingest") or not r.hlen("unacked"):
            return
        finals[-1].stop(signal.SIGTERM, timeout=30)
        finals.append(worker("-c", "2", "-n", "final@chaos", task_acks_late=True, **common))
        last_restart[0] = time.monotonic()

    def unresolved():
        m = metas(r, kinds)
        return [t for t, v in m.items() if not v or v["status"] not in FINAL]

    def only_started_left():
        maybe_restart_final()
        left = unresolved()
        m = metas(r, left)
        return all(m[t] and m[t]["status"] == "STARTED" for t in left) and \
            r.llen("ingest") == 0 and r.hlen("unacked") == 0
    try:
        wait_for(only_started_left, 180, interval=0.5, desc="every task final or lost-early")
    except TimeoutError:
        pass            # the accounting below says which tasks and why
    finally:
        collect_logs()
    # Whatever is STARTED now stays STARTED: nobody holds it any more.
    m = metas(r, kinds)
    received_by = {}
    succeeded = {}
    for title, (text, late, killed) in logs.items():
        for tid in ids_in_log(text, "received"):
            received_by.setdefault(tid, []).append((title, late, killed))
        for tid in ids_in_log(text, "succeeded"):
            succeeded[tid] = succeeded.get(tid, 0) + 1
    lost, lost_early, lost_early_py, failed = [], [], [], []
    for tid, v in m.items():
        if v and v["status"] == "SUCCESS":
            continue
        if v and v["status"] in ("FAILURE", "REVOKED"):
            failed.append((tid, kinds[tid], v["status"], str(v.get("result"))[:200]))
            continue
        last = received_by.get(tid, [])[-1:] or [None]
        w_title, late, killed = last[0] if last[0] else (None, True, False)
        gone = r.llen("ingest") == 0 and r.hlen("unacked") == 0
        if gone and not late and killed:
            # Acked by an early-ack worker, which acks right before running
            # (then stores STARTED): killed while (or just as) it ran.
            lost_early.append(tid)
        elif gone and not late and w_title and w_title.startswith("python"):
            # Celery -P solo stopped warmly while running an early-ack task.
            lost_early_py.append(tid)
        else:
            lost.append((tid, kinds[tid], v and v["status"], w_title))
    dup_runs = sum(1 for n in succeeded.values() if n > 1)
    rec = []
    for t_kill, held in kills:
        dones = [parse_date_done(m[t]["date_done"]) for t in held
                 if m.get(t) and m[t]["status"] == "SUCCESS"]
        if dones:
            rec.append(max(dones) - t_kill)
    by_kind = {}
    for tid, kind in kinds.items():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    report("tasks_kill9", rounds=ROUNDS, kills=len(kills), redis_restarts=redis_restarts,
           python_rounds=sum(1 for _, _, k in workers if not k), tasks_in=len(kinds),
           by_kind=by_kind, succeeded=sum(1 for v in m.values() if v and v["status"] == "SUCCESS"),
           lost=len(lost), lost_early_ack_running=len(lost_early),
           lost_early_ack_python_warm_stop=len(lost_early_py), failed=len(failed),
           dup_runs=dup_runs, redis_outage_lines=outage_lines,
           recovery_p50_s=percentile(rec, 50), recovery_p99_s=percentile(rec, 99),
           wall_s=round(time.monotonic() - t_start, 1))
    assert not lost, f"{len(lost)} task(s) lost: {lost[:10]}"
    assert not failed, f"task(s) failed: {failed[:10]}"
    for errors, restored in outage_lines:
        assert restored == 1 and 1 <= errors <= 2, f"outage logged {errors}/{restored} times"
    wait_for(lambda: r.llen("ingest") == 0 and r.hlen("unacked") == 0, 10,
             desc="queue and unacked empty")
