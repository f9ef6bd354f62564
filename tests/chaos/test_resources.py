"""Resource bounds under stress (issue #5 part 4).

test_burst_memory_is_bounded   50,000 queued tasks (10x a busy minute)
    against a worker with -c 2 and prefetch 4: kombu-style QoS means at most
    8 messages are held in memory whatever the queue length, so RSS must stay
    within BURST_RSS_BOUND_KB of its value before the burst. The bound: 8
    held envelopes are ~10 KB; the rest is allocator and ASan slack (ASan's
    quarantine is capped at 4 MB here, as in test_reliability_core), plus
    result-pipeline buffers. 48 MB leaves room for that and still catches
    anything proportional to the queue (50,000 envelopes are ~60 MB).
test_drain_batch_bytes_cap     a 60 MB telemetry backlog drained with
    telemetry_batch_max_bytes = 2 MB: RSS stays within 64 MB of its start.
test_no_fd_leak_after_reconnects  CLIENT KILL of every worker connection,
    N times (1,000 in --long), waiting each time until the consumer has
    reconnected; afterwards /proc/<pid>/fd holds no more descriptors than
    before (+2 slack for a slot connection not yet re-opened)."""

import os
import time

import telemetry_gen as tg
from chaoslib import ping
from conftest import BURST, RECONNECTS, report
from helpers import wait_for
from telemetry_gen import EventSpec, Gen, org_hash, stream_for
from test_drain_e2e import ch_db  # noqa: F401 - fixture
from test_reliability_core import LEAK_ASAN_OPTIONS, push_pings, rss_kb, wait_all_success

BURST_RSS_BOUND_KB = 48 * 1024
DRAIN_RSS_BOUND_KB = 64 * 1024
LONG = os.environ.get("PTEL_CHAOS_ROUNDS", "20") not in ("20", "")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_burst_memory_is_bounded(clean_redis, worker):
    r = clean_redis
    w = worker("-c", "2", "--prefetch-multiplier", "4", env={"ASAN_OPTIONS": LEAK_ASAN_OPTIONS})
    warm = push_pings(r, 500)
    wait_all_success(r, warm, 60)
    base = rss_kb(w.pid)
    t0 = time.monotonic()
    ids = push_pings(r, BURST)
    queued_at_start = r.llen("ingest")
    peak = base
    # Sample while the backlog is worked off (all of it in --long; 40 s of it
    # in --short, then the rest is dropped: the bound is about holding a
    # long queue, not about finishing it).
    budget = 600 if LONG else 40
    while time.monotonic() - t0 < budget and r.llen("ingest") > 0:
        peak = max(peak, rss_kb(w.pid))
        assert r.hlen("unacked") <= 8 + 2, "more messages held than prefetch allows"
        time.sleep(0.25)
    done = BURST - r.llen("ingest")
    if LONG:
        wait_all_success(r, ids, 300)
    r.delete("ingest")
    peak = max(peak, rss_kb(w.pid))
    report("burst_memory", tasks_queued=queued_at_start, tasks_run_during_sampling=done,
           rss_before_kb=base, rss_peak_kb=peak, growth_kb=peak - base,
           bound_kb=BURST_RSS_BOUND_KB)
    assert peak - base < BURST_RSS_BOUND_KB, f"RSS grew {peak - base} kB under the burst"


def test_drain_batch_bytes_cap(clean_redis, ch_db, worker, celery_app):
    r = clean_redis
    db = ch_db
    db.create_strict_table()
    w = worker("-c", "1", clickhouse_url=db.url, telemetry_batch_max_bytes=2 * 1024 * 1024,
               telemetry_read_count=100, env={"ASAN_OPTIONS": LEAK_ASAN_OPTIONS})
    base = rss_kb(w.pid)
    gen = Gen(seed=99)
    org = org_hash("bytes-cap")
    n = 0
    pipe = r.pipeline(transaction=False)
    for i in range(300):          # 300 entries x 50 events x ~4 KB = ~60 MB
        specs = [EventSpec.of(gen.event(org=org, name="feature_viewed",
                                        payload={"feature": "f" * 4000, "surface": "page"}))
                 for _ in range(50)]
        n += len(specs)
        pipe.xadd(stream_for(org), {"ingestion_id": f"cap-{i}", "source": tg.SOURCE,
                                    "org_id_hash": org,
                                    "events": "[" + ",".join(s.text for s in specs) + "]"})
    pipe.execute()
    res = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 1000})
    peak = base
    while not res.ready():
        peak = max(peak, rss_kb(w.pid))
        time.sleep(0.2)
    out = res.get(timeout=5)
    peak = max(peak, rss_kb(w.pid))
    report("drain_bytes_cap", events=n, backlog_mb=60, batch_max_bytes=2 * 1024 * 1024,
           rss_before_kb=base, rss_peak_kb=peak, growth_kb=peak - base, result=out,
           bound_kb=DRAIN_RSS_BOUND_KB)
    assert out["processed"] == n and db.count() == n
    assert peak - base < DRAIN_RSS_BOUND_KB, f"RSS grew {peak - base} kB draining 60 MB"


def test_no_fd_leak_after_reconnects(clean_redis, worker, celery_app):
    r = clean_redis
    w = worker("-c", "2")
    assert ping(r, celery_app) == "pong"
    time.sleep(0.5)
    before = fd_count(w.pid)
    t0 = time.monotonic()
    for i in range(RECONNECTS):
        n = w.log().count("Broker connection restored")
        kills = [0.0]

        def reconnected():
            # Kill again every second: a kill can land just before the
            # consumer's new connection exists, and then nothing reconnects.
            if time.monotonic() - kills[0] > 1.0:
                r.client_kill_filter(_type="normal", skipme=True)
                if i % 10 == 0:
                    r.client_kill_filter(_type="pubsub", skipme=True)
                kills[0] = time.monotonic()
            return w.log().count("Broker connection restored") > n
        wait_for(reconnected, 20, interval=0.01, desc=f"reconnect #{i + 1}")
        if i % 50 == 0:   # let the slots notice their lost connections too
            assert ping(r, celery_app) == "pong"
    # Every slot and the main thread use their connection once more.
    for _ in range(5):
        assert ping(r, celery_app) == "pong"
    time.sleep(1.5)
    after = fd_count(w.pid)
    report("fd_leak", reconnects=RECONNECTS, fds_before=before, fds_after=after,
           wall_s=round(time.monotonic() - t0, 1))
    assert w.alive()
    assert after <= before + 2, f"{after - before} file descriptors leaked"
