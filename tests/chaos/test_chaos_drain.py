"""Chaos, telemetry side: a producer writes upstream-shaped entries the whole
time while the C worker drains them (run_product_telemetry_consumer sent
every 0.7 s) and faults hit:

  test_kill9_during_drains   kill -9 of the worker at a random moment, R
                             rounds; the next worker reuses the dead one's
                             consumer names one round in three (own pending
                             list) and otherwise reclaims them (XAUTOCLAIM)
  test_outages_mid_drain     ClickHouse stopped / frozen (SIGSTOP) / Redis
                             restarted (SIGTERM or SIGKILL) under a running
                             drain; the worker reconnects by itself and
                             logs each outage once

Counted at the end against a plain MergeTree table (no background merge can
hide a duplicate): events missing from ClickHouse (must be 0), duplicate rows
visible to count() without FINAL (must be 0: redeliveries are deduplicated),
dead-lettered events (must be 0: every event is valid)."""

import random
import threading
import time


import telemetry_gen as tg
from conftest import FAULT_ROUNDS, ROUNDS, report
from chaoslib import percentile
from drainlib import ChaosProducer, DrainSender, account, make_orgs, pending
from helpers import wait_for
from test_drain_e2e import ch_db  # noqa: F401 - fixture

SEED = 515
COMMON = dict(telemetry_reclaim_idle_ms=1000, telemetry_block_ms=200, telemetry_backoff_max_s=1,
              telemetry_batch_max_ms=300, telemetry_read_count=50, clickhouse_timeout=3,
              clickhouse_connect_timeout=1, broker_transport_options={"visibility_timeout": 3},
              task_track_started=True, worker_prefetch_multiplier=1, worker_shutdown_grace=5)


class Recovery(threading.Thread):
    """Measures, per fault, the seconds from the fault's end until ClickHouse
    holds as many events as had been produced by then and no dead consumer
    has pending entries."""

    def __init__(self, db, r, orgs):
        super().__init__(daemon=True)
        self.db, self.r, self.orgs = db, r, orgs
        self.open = []       # [t_end, target, dead consumer names]
        self.done = []
        self._halt = threading.Event()
        self.lock = threading.Lock()

    def add(self, target, dead=()):
        with self.lock:
            self.open.append([time.monotonic(), target, set(dead)])

    def run(self):
        while not self._halt.is_set():
            time.sleep(0.25)
            with self.lock:
                if not self.open:
                    continue
                items = list(self.open)
            try:
                count = self.db.count()
                by = tg.pending_by_consumer(self.r, [tg.stream_for(o) for o in self.orgs])
            except Exception:  # noqa: BLE001 - a server is down right now
                continue
            now = time.monotonic()
            with self.lock:
                for it in items:
                    t_end, target, dead = it
                    if count >= target and not any(by.get(c, 0) for c in dead):
                        self.done.append(now - t_end)
                        self.open.remove(it)

    def stop(self):
        self._halt.set()
        self.join(5)


def finish(db, r, producer, sender, worker, orgs, timeout=180):
    """Stop producing; one worker drains the rest; return the accounting."""
    producer.stop()
    time.sleep(1.2)                 # past telemetry_reclaim_idle_ms
    w = worker("-c", "2", "-n", "final@chaos", clickhouse_url=db.url, **COMMON)
    sender.enabled.set()
    want = len(producer.expected)
    try:
        wait_for(lambda: db.count() >= want and pending(r, orgs) == 0, timeout, interval=0.5,
                 desc=f"{want} events stored and nothing pending")
    finally:
        sender.enabled.clear()
    time.sleep(1.0)                 # a last in-flight insert would show up now
    return w, account(db, producer, r)


def test_kill9_during_drains(clean_redis, ch_db, worker, celery_app, redis_url):
    r = clean_redis
    db = ch_db
    db.create_strict_table()
    rng = random.Random(SEED)
    orgs = make_orgs("kill9")
    producer = ChaosProducer(redis_url, orgs, rate=40, seed=SEED)
    sender = DrainSender(celery_app)
    rec = Recovery(db, r, orgs)
    producer.start()
    sender.start()
    rec.start()
    t0 = time.monotonic()
    try:
        for rnd in range(ROUNDS):
            name = f"d{rnd % 3}@chaos"
            w = worker("-c", "2", "-n", name, clickhouse_url=db.url, **COMMON)
            sender.enabled.set()
            time.sleep(rng.uniform(0.5, 3.5))
            w.proc.kill()
            w.wait()
            rec.add(producer.produced(), {f"{name}#1", f"{name}#2"})
        w, (missing, dups, unexpected, dlq, rows) = finish(db, r, producer, sender, worker, orgs)
    finally:
        producer.stop()
        sender.stop()
        rec.stop()
    report("drain_kill9", rounds=ROUNDS, kills=ROUNDS, entries_in=producer.entries,
           events_in=len(producer.expected), rows_out=rows, missing=missing, duplicates=dups,
           unexpected=unexpected, dead_lettered=dlq, producer_errors=producer.errors,
           drains_sent=sender.sent, recovery_p50_s=percentile(rec.done, 50),
           recovery_p99_s=percentile(rec.done, 99), recovered=len(rec.done),
           wall_s=round(time.monotonic() - t0, 1))
    assert missing == 0, f"{missing} events never reached ClickHouse"
    assert dups == 0, f"{dups} duplicate rows visible to count()"
    assert dlq == 0, f"{dlq} valid events dead-lettered"


FAULTS = ("ch_stop", "ch_pause", "redis_restart")


def test_outages_mid_drain(clean_redis, ch_db, worker, celery_app, redis_url, private_redis,
                           clickhouse_server):
    r = clean_redis
    db = ch_db
    db.create_strict_table()
    rng = random.Random(SEED + 1)
    orgs = make_orgs("outage")
    producer = ChaosProducer(redis_url, orgs, rate=40, seed=SEED + 1)
    sender = DrainSender(celery_app)
    rec = Recovery(db, r, orgs)
    w = worker("-c", "1", "-n", "outage@chaos", clickhouse_url=db.url, **COMMON)
    producer.start()
    sender.start()
    rec.start()
    sender.enabled.set()
    lines = []
    t0 = time.monotonic()
    try:
        for rnd in range(FAULT_ROUNDS * len(FAULTS)):
            kind = FAULTS[rnd % len(FAULTS)]
            before = db.count()
            wait_for(lambda: db.count() > before, 60, interval=0.2, desc="the drain is inserting")
            time.sleep(rng.uniform(0.1, 0.8))
            mark = len(w.log())
            down = rng.uniform(2.0, 5.0)
            if kind == "ch_stop":
                clickhouse_server.stop()
                time.sleep(down)
                clickhouse_server.start()
            elif kind == "ch_pause":
                clickhouse_server.pause()
                time.sleep(down)
                clickhouse_server.resume()
            else:
                producer.pause()
                sender.enabled.clear()
                private_redis.restart(kill=rnd % 2 == 1, down_s=down)
                producer.resume()
                sender.enabled.set()
            rec.add(producer.produced())
            wait_for(lambda: not rec.open, 90, interval=0.5, desc=f"recovery after {kind}")
            time.sleep(0.5)
            seg = w.log()[mark:]
            lines.append({
                "kind": kind, "down_s": round(down, 1),
                "ch_down": seg.count("nothing is acked or dead-lettered"),
                "ch_back": seg.count("works again after"),
                "tredis_down": sum(1 for ln in seg.splitlines()
                                   if "telemetry Redis" in ln and "back-off" in ln),
                "tredis_back": seg.count("reachable again after"),
                "broker_down": seg.count("Fetching from the broker failed")
                + seg.count("unreachable; retrying with backoff"),
                "broker_back": seg.count("Broker connection restored"),
                "pidbox_down": sum(1 for ln in seg.splitlines()
                                   if "ERROR/Pidbox" in ln and "control:" in ln),
                "pidbox_back": seg.count("subscribed to remote control again"),
            })
        time.sleep(6)   # the remote-control thread's back-off tops out at a few seconds
        full = w.log()
        w.stop()
        pidbox = (sum(1 for ln in full.splitlines() if "ERROR/Pidbox" in ln and "control:" in ln),
                  full.count("subscribed to remote control again"))
        w, (missing, dups, unexpected, dlq, rows) = finish(db, r, producer, sender, worker, orgs)
    finally:
        producer.stop()
        sender.stop()
        rec.stop()
    report("drain_outages", faults=len(lines), by_kind={k: FAULT_ROUNDS for k in FAULTS},
           entries_in=producer.entries, events_in=len(producer.expected), rows_out=rows,
           missing=missing, duplicates=dups, unexpected=unexpected, dead_lettered=dlq,
           recovery_p50_s=percentile(rec.done, 50), recovery_p99_s=percentile(rec.done, 99),
           outage_lines=lines, pidbox_lines=pidbox, wall_s=round(time.monotonic() - t0, 1))
    assert missing == 0, f"{missing} events never reached ClickHouse"
    assert dlq == 0, f"{dlq} valid events dead-lettered"
    for ln in lines:
        if ln["kind"] != "redis_restart":
            assert ln["ch_down"] <= 1 and ln["ch_back"] == ln["ch_down"], ln
        else:
            assert ln["tredis_down"] <= 1 and ln["tredis_back"] == ln["tredis_down"], ln
            assert ln["broker_down"] <= 1 and ln["broker_back"] == ln["broker_down"], ln
            assert ln["pidbox_down"] <= 1, ln
    assert pidbox[0] == pidbox[1] <= FAULT_ROUNDS, f"remote-control outage lines {pidbox}"
    for kind in ("ch_stop", "ch_pause"):
        assert sum(ln["ch_down"] for ln in lines if ln["kind"] == kind) >= 1, \
            f"no {kind} outage was noticed: {lines}"
    # Redeliveries after an outage are looked up before they are inserted,
    # fenced against inserts still running on the server (drain.c).
    assert dups == 0, f"{dups} duplicate rows visible to count() after outages"
