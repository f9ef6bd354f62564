"""The telemetry drain under faults (issue #3, acceptance points 3, 4, 5):
ClickHouse stopped or frozen mid-drain, two drains at once, a worker killed
with SIGKILL mid-batch, and `dlq replay` after the cause is fixed.

Exactly-once is checked on a plain MergeTree table (ChDb.create_strict_table):
the production ReplacingMergeTree could collapse a duplicate in a background
merge before the test counts, hiding it; a MergeTree keeps every row ever
inserted, so count() == uniqExact(org_id_hash, event_id) == expected (no
FINAL) really means "stored exactly once"."""

import json
import select
import socket
import socketserver
import subprocess
import threading
import time

import pytest

import telemetry_gen as tg
from helpers import free_port, wait_for
from telemetry_gen import EventSpec, Gen, org_hash, stream_for
from test_drain_e2e import ch_db, producer  # noqa: F401 - fixtures, used by name
from test_drain_e2e import (
    CLI_WORKER,
    DLQ_FIELDS,
    check_nothing_pending,
    check_rows,
    counters,
    run_drain,
    send_drain,
)

# A backlog that takes the ASan build several seconds to drain: 20 orgs x 100
# entries x 20 events, read one entry per stream per XREADGROUP, inserted 200
# rows at a time (~200 INSERTs).
BACKLOG = dict(orgs=20, entries=100, events=20)
SLOW = dict(telemetry_read_count=1, telemetry_batch_max_rows=200)


def make_backlog(producer, seed, prefix):
    gen = Gen(seed=seed)
    orgs = [org_hash(f"{prefix}-{i:02d}") for i in range(BACKLOG["orgs"])]
    producer.valid_batches(gen, orgs, BACKLOG["entries"], BACKLOG["events"])
    return orgs


def total_events():
    return BACKLOG["orgs"] * BACKLOG["entries"] * BACKLOG["events"]


def total_entries():
    return BACKLOG["orgs"] * BACKLOG["entries"]


def task_state(r, task_id):
    raw = r.get(f"celery-task-meta-{task_id}")
    return json.loads(raw)["status"] if raw else "PENDING"


# ---- 3. ClickHouse down in the middle of a drain -------------------------------------------

def _outage(producer, ch_db, worker, celery_app, clickhouse_server, how, seconds):
    r = producer.r
    ch_db.create_strict_table()
    make_backlog(producer, seed=303 if how == "stop" else 304, prefix=how)
    model = producer.model
    streams = model.streams
    w = worker("-c", "1", "-n", f"{how}@ptel-tests", clickhouse_url=ch_db.url,
               telemetry_backoff_max_s=1, clickhouse_timeout=3, clickhouse_connect_timeout=1,
               task_soft_time_limit=300, task_time_limit=400, task_track_started=True, **SLOW)
    t0 = time.time()
    res = send_drain(celery_app, 1000)
    wait_for(lambda: ch_db.count() >= total_events() // 10, 60, desc="a tenth stored")
    if how == "stop":
        # SIGKILL: a graceful SIGTERM keeps serving the worker's keep-alive
        # connection for seconds while shutting down, long enough for the
        # drain to finish before the outage begins.
        clickhouse_server.stop(kill=True)
    else:
        clickhouse_server.pause()
    down_at = time.monotonic()
    log_mark = len(w.log())

    # While it is down: nothing acked, nothing dead-lettered, the task still
    # running. An insert answered just before the outage may still be acked
    # in its first moments, so the acked count is taken as settled once it
    # has not moved for a second, then it must not move again.
    samples = []
    while time.monotonic() - down_at < seconds:
        samples.append((time.monotonic() - down_at, tg.acked_total(r, streams),
                        r.xlen(tg.DLQ_KEY), tg.pending_total(r, streams),
                        task_state(r, res.id)))
        time.sleep(0.5)
    settled = [s for s in samples if s[0] >= 2.0]
    assert settled, samples
    acked_during = {s[1] for s in settled}
    assert len(acked_during) == 1, f"entries were acked while ClickHouse was down: {samples}"
    acked_at_outage = settled[0][1]
    assert 0 < acked_at_outage < total_entries(), \
        f"the outage did not hit the middle of the drain: {acked_at_outage} acked"
    assert all(s[2] == 0 for s in samples), f"dead-lettered during the outage: {samples}"
    assert all(s[3] > 0 for s in settled), f"nothing was pending during the outage: {samples}"
    assert all(s[4] == "STARTED" for s in samples), f"task left STARTED: {samples}"

    if how == "stop":
        clickhouse_server.start()
    else:
        clickhouse_server.resume()
    result = res.get(timeout=180)
    t1 = time.time()

    assert counters(result) == model.counters(), result
    c, u, uk = ch_db.counts()
    assert c == u == uk == total_events(), f"count()={c} uniqExact(event_id)={u} (expected " \
                                          f"{total_events()})"
    check_rows(ch_db, model, t0, t1)
    assert r.xlen(tg.DLQ_KEY) == 0
    check_nothing_pending(r, model)
    return w, w.log()[log_mark:]


def test_clickhouse_stopped_for_20s_mid_drain(producer, ch_db, worker, celery_app,
                                                clickhouse_server):
    w, after = _outage(producer, ch_db, worker, celery_app, clickhouse_server, "stop", 20)
    # The task kept retrying and noticed the recovery.
    assert "works again after" in after, after[-3000:]


def test_clickhouse_frozen_with_sigstop_mid_drain(producer, ch_db, worker, celery_app,
                                                  clickhouse_server):
    """SIGSTOP for 10 s with clickhouse_timeout = 3: connections hang
    instead of being refused, the insert in flight times out and is retried
    while the server still holds it. Nothing may be acked or dead-lettered
    while frozen, and every event must be stored exactly once after."""
    _outage(producer, ch_db, worker, celery_app, clickhouse_server, "pause", 10)


def test_frozen_clickhouse_is_given_up_after_clickhouse_timeout(producer, ch_db, ptel_cli,
                                                                clickhouse_server):
    """celeryconfig's clickhouse_timeout bounds each request: against a
    SIGSTOPped server a drain run fails over in seconds (6 tries of 2 s plus
    back-off), leaving its entries pending, instead of hanging."""
    ch_db.create_strict_table()
    gen = Gen(seed=307)
    org = org_hash("frozen")
    producer.batch(org, [EventSpec.of(gen.event(org=org)) for _ in range(10)])
    clickhouse_server.pause()
    started = time.monotonic()
    try:
        res = ptel_cli("drain", "--until-empty", "--json", timeout=40, clickhouse_url=ch_db.url,
                       clickhouse_timeout=2, clickhouse_connect_timeout=1,
                       telemetry_backoff_max_s=1)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the drain still hung after {time.monotonic() - started:.0f} s "
                    "(clickhouse_timeout = 2)")
    finally:
        clickhouse_server.resume()
    assert res.returncode == 1 and "stopped early" in res.stderr, res.stderr
    assert tg.pending_total(producer.r, producer.model.streams) == 1
    assert run_drain(ptel_cli, ch_db)["processed"] == 10
    assert ch_db.counts() == (10, 10, 10)


# ---- 4. two drains at once; a worker killed mid-batch ----------------------------------------

def test_two_c_workers_drain_the_same_streams_exactly_once(producer, ch_db, worker, celery_app):
    ch_db.create_strict_table()
    make_backlog(producer, seed=404, prefix="pair")
    model = producer.model
    worker("-c", "1", "-n", "pair-a@ptel-tests", "-Q", "ingest_a", clickhouse_url=ch_db.url,
           **SLOW)
    worker("-c", "1", "-n", "pair-b@ptel-tests", "-Q", "ingest_b", clickhouse_url=ch_db.url,
           **SLOW)
    t0 = time.time()
    a = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 1000}, queue="ingest_a")
    b = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 1000}, queue="ingest_b")
    ra, rb = a.get(timeout=180), b.get(timeout=180)
    t1 = time.time()
    assert ra["processed"] > 0 and rb["processed"] > 0, (ra, rb)   # both really drained
    assert ra["processed"] + rb["processed"] == total_events(), (ra, rb)
    assert ra["entries"] + rb["entries"] == total_entries(), (ra, rb)
    assert ra["reclaimed"] == rb["reclaimed"] == 0
    c, u, uk = ch_db.counts()
    assert c == u == uk == total_events()
    check_rows(ch_db, model, t0, t1)
    check_nothing_pending(producer.r, model)


def test_two_drain_commands_at_once_store_each_event_once(producer, ch_db, ptel_cli, worker_config,
                                                          worker_command, redis_url, tmp_path):
    """Two `ptel-worker drain` processes on one box at the same time (an
    operator catching up while another is running)."""
    ch_db.create_strict_table()
    make_backlog(producer, seed=405, prefix="cli")
    model = producer.model
    config = worker_config(clickhouse_url=ch_db.url, **SLOW)
    procs = []
    t0 = time.time()
    for i in range(2):
        out = open(tmp_path / f"drain{i}.out", "w+")
        procs.append((subprocess.Popen(worker_command("drain", "--until-empty", "--json",
                                                      "--config", config), stdout=out,
                                       stderr=subprocess.STDOUT, cwd=tmp_path), out))
        time.sleep(0.3)   # let the first one get going: the second joins mid-drain
    results = []
    for p, out in procs:
        assert p.wait(timeout=180) == 0
        out.seek(0)
        text = out.read()
        results.append(json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1]))
    t1 = time.time()
    c, u, uk = ch_db.counts()
    assert c == u == uk == total_events(), \
        f"count()={c} uniqExact={uk}, expected {total_events()}; results {results}"
    check_rows(ch_db, model, t0, t1)
    check_nothing_pending(producer.r, model)


def test_killed_worker_entries_are_reclaimed_exactly_once(producer, ch_db, worker, celery_app):
    r = producer.r
    ch_db.create_strict_table()
    make_backlog(producer, seed=406, prefix="kill")
    model = producer.model
    streams = model.streams
    victim = worker("-c", "1", "-n", "victim@ptel-tests", clickhouse_url=ch_db.url, **SLOW)
    t0 = time.time()
    send_drain(celery_app, 1000)
    wait_for(lambda: ch_db.count() >= total_events() // 5
             and tg.pending_by_consumer(r, streams).get("victim@ptel-tests#1", 0) > 0,
             60, interval=0.01, desc="the victim mid-drain with entries pending")
    victim.proc.kill()
    victim.proc.wait()
    victim.allow_sanitizer_reports = True
    pending = tg.pending_by_consumer(r, streams)
    held = pending.get("victim@ptel-tests#1", 0)
    assert held > 0 and set(pending) == {"victim@ptel-tests#1"}, pending
    acked = tg.acked_total(r, streams)
    assert 0 < acked < total_entries()
    stored_at_kill = ch_db.count()

    # Only entries idle longer than telemetry_reclaim_idle_ms are taken over.
    rescuer = worker("-c", "1", "-n", "rescuer@ptel-tests", clickhouse_url=ch_db.url,
                     telemetry_reclaim_idle_ms=2000, **SLOW)

    def idle_enough():
        for s in streams:
            for e in r.xpending_range(s, tg.GROUP, "-", "+", 10000):
                if e["time_since_delivered"] < 2100:
                    return False
        return True
    wait_for(idle_enough, 30, interval=0.1, desc="the victim's entries idle for 2 s")
    result = send_drain(celery_app, 1000).get(timeout=180)
    t1 = time.time()

    assert result["reclaimed"] == held, (result, held)
    assert result["entries"] == total_entries() - acked, (result, acked)
    # Rows the victim inserted without acking count as processed (found stored).
    assert result["processed"] == total_events() - acked * BACKLOG["events"], \
        (result, acked, stored_at_kill)
    c, u, uk = ch_db.counts()
    assert c == u == uk == total_events(), f"count()={c} uniqExact={uk} stored_at_kill=" \
                                          f"{stored_at_kill}"
    check_rows(ch_db, model, t0, t1)
    check_nothing_pending(r, model)
    assert "took over" in rescuer.log()


# ---- 5. dlq replay after the cause is fixed -------------------------------------------------

POISON_COLUMN = ("ALTER TABLE {t} ADD COLUMN poison_check UInt32 MATERIALIZED "
                 "toUInt32(concat('0', visitParamExtractString(payload_json, 'poison')))")


def _replay(ptel_cli, *args):
    res = ptel_cli("dlq", "replay", *args)
    return res.returncode, res.stdout, res.stderr


def test_dlq_replay_after_the_table_is_fixed(producer, ch_db, ptel_cli):
    """Rows ClickHouse refuses (a MATERIALIZED column that cannot parse
    their payload: code 6) are isolated and dead-lettered as persistence;
    after the column is dropped, `dlq replay --all` + a drain stores them.
    Validation and privacy records replayed come straight back to the DLQ
    (they are still invalid): new records, same codes. An event ClickHouse
    18.16 can never hold (a DateTime before 1970) comes back too."""
    r = producer.r
    ch_db.create_strict_table()
    ch_db.q(POISON_COLUMN.format(t=ch_db.table))
    gen = Gen(seed=505)
    org = org_hash("replay-org")
    poison_specs = []
    for i in range(4):
        specs = [EventSpec.of(gen.event(org=org)) for _ in range(5)]
        p = gen.event(org=org, payload={"poison": f"bad-{i}", "feature": "x"})
        specs.insert(2, EventSpec.of(p))
        poison_specs.append(p)
        if i == 0:
            specs.append(tg.break_event(gen, "invalid_name", org=org))
            specs.append(tg.break_event(gen, "blocked_key", org=org))
            old = gen.event(org=org)
            old["ts"] = "1969-12-31T23:59:59Z"          # valid, but not a DateTime('UTC')
            specs.append(EventSpec.of(old))
        producer.batch(org, specs)
    model = producer.model
    poison_ids = {p["eventId"] for p in poison_specs}
    old_id = old["eventId"]
    good = {k: v for k, v in model.rows.items() if k[1] not in poison_ids and k[1] != old_id}

    t0 = time.time()
    res = run_drain(ptel_cli, ch_db)
    assert res["processed"] == len(good) == 20, res
    assert res["rejected"] == 2 and res["dead_lettered"] == 2 + 4 + 1 and res["entries"] == 4
    recs = tg.dlq_records(r)
    by_class = {}
    for _, f in recs:
        by_class.setdefault(f["error_class"], []).append(f)
    assert sorted((k, len(v)) for k, v in by_class.items()) == [
        ("persistence", 5), ("privacy", 1), ("validation", 1)], recs
    refused = [f for f in by_class["persistence"] if "refused the row" in f["reason"]]
    assert len(refused) == 4
    for f in refused:
        assert f["reason"].startswith("persistence: ClickHouse refused the row: code 6"), f
        assert list(f) == list(DLQ_FIELDS) and f["event_index"] == "2"
        ev = json.loads(f["events"])
        assert len(ev) == 1 and ev[0]["eventId"] in poison_ids
        assert f["deliveries"] == "1" and f["worker"] == CLI_WORKER and f["org_id_hash"] == org
    (enc,) = [f for f in by_class["persistence"] if "cannot encode" in f["reason"]]
    assert json.loads(enc["events"])[0]["eventId"] == old_id
    assert ch_db.count() == 20

    # The cause is fixed; replay everything, drain again.
    ch_db.q(f"ALTER TABLE {ch_db.table} DROP COLUMN poison_check")
    rc, out, err = _replay(ptel_cli, "--all")
    assert rc == 0 and "7 record(s) replayed, 0 failed" in out, (rc, out, err)
    assert r.xlen(tg.DLQ_KEY) == 0
    res2 = run_drain(ptel_cli, ch_db)
    assert res2["processed"] == 4 and res2["entries"] == 7, res2
    assert res2["rejected"] == 2 and res2["dead_lettered"] == 3, res2
    model.rows = {k: v for k, v in model.rows.items() if k[1] != old_id}
    check_rows(ch_db, model, t0, time.time())

    back = tg.dlq_records(r)
    assert sorted((f["error_class"], f["reason"].split(":")[0]) for _, f in back) == [
        ("persistence", "persistence"), ("privacy", "blocked_key"),
        ("validation", "invalid_name")], back
    old_entries = {e.entry_id for e in model.entries}
    for _, f in back:
        # A new entry (the replayed one) holding only the rejected event.
        assert f["entry_id"] not in old_entries and f["event_index"] == "0", f
        assert f["original_stream"] == stream_for(org) and f["org_id_hash"] == org

    # Replay is safe to re-run: the same three come back again, nothing else moves.
    rc, out, err = _replay(ptel_cli, "--all")
    assert rc == 0 and "3 record(s) replayed, 0 failed" in out, (rc, out, err)
    res3 = run_drain(ptel_cli, ch_db)
    assert res3["processed"] == 0 and res3["dead_lettered"] == 3, res3
    c, u, uk = ch_db.counts()
    assert c == uk == len(model.rows) == 24
    assert r.xlen(tg.DLQ_KEY) == 3
    check_nothing_pending(r, model)


@pytest.mark.parametrize("first_copy", ["drained_before_rerun", "in_the_same_batch"])
def test_interrupted_replay_rerun_stores_each_event_once(first_copy, producer, ch_db, ptel_cli):
    """`dlq replay` appends a record's events, then deletes the record; a
    crash in between leaves the record, and the operator runs replay again
    (dlq_cli.c promises the drain recognises the re-sent events). Simulated
    by doing the crashed run's XADD by hand, with the fields replay writes.
    The first copy is either stored before the re-run or still in the
    stream next to the second copy (one batch)."""
    r = producer.r
    ch_db.create_strict_table()
    ch_db.q(POISON_COLUMN.format(t=ch_db.table))
    gen = Gen(seed=506)
    org = org_hash("replay-twice")
    p = gen.event(org=org, payload={"poison": "bad"})
    producer.batch(org, [EventSpec.of(gen.event(org=org)), EventSpec.of(p)])
    res = run_drain(ptel_cli, ch_db)
    assert res["processed"] == 1 and res["dead_lettered"] == 1, res
    ch_db.q(f"ALTER TABLE {ch_db.table} DROP COLUMN poison_check")
    ((rid, rec),) = tg.dlq_records(r)
    # What the interrupted run did: its XADD (same fields as a replay), no XDEL.
    rc, out, err = _replay(ptel_cli, rid)
    assert rc == 0, (out, err)
    ((_, copy),) = r.xrange(rec["original_stream"], "-", "+", count=100)[-1:]
    assert copy[b"replayed_from"].decode() == rid, copy
    r.xadd(tg.DLQ_KEY, {k: v for k, v in rec.items()})            # the record stays
    if first_copy == "drained_before_rerun":
        assert run_drain(ptel_cli, ch_db)["processed"] == 1
    rc, out, err = _replay(ptel_cli, "--all")
    assert rc == 0 and "1 record(s) replayed, 0 failed" in out, (rc, out, err)
    res = run_drain(ptel_cli, ch_db)
    c, u, uk = ch_db.counts()
    assert (c, uk) == (2, 2), f"count()={c} uniqExact={uk}: the re-sent event was stored twice"
    assert res["processed"] == (1 if first_copy == "drained_before_rerun" else 2), res
    assert r.xlen(tg.DLQ_KEY) == 0
    check_nothing_pending(r, producer.model)


def test_outage_longer_than_reclaim_idle_with_two_workers(producer, ch_db, worker, celery_app,
                                                          clickhouse_server):
    """Two workers draining when ClickHouse goes away for longer than
    telemetry_reclaim_idle_ms: each worker's held batch goes idle while it
    retries, and when ClickHouse is back the other worker may take it over
    (XAUTOCLAIM). Every event must still be stored exactly once."""
    r = producer.r
    ch_db.create_strict_table()
    make_backlog(producer, seed=407, prefix="idle")
    model = producer.model
    common = dict(clickhouse_url=ch_db.url, telemetry_backoff_max_s=1, clickhouse_timeout=3,
                  clickhouse_connect_timeout=1, telemetry_reclaim_idle_ms=2000,
                  task_soft_time_limit=300, task_time_limit=400, **SLOW)
    worker("-c", "1", "-n", "idle-a@ptel-tests", "-Q", "ingest_a", **common)
    worker("-c", "1", "-n", "idle-b@ptel-tests", "-Q", "ingest_b", **common)
    t0 = time.time()
    a = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 1000}, queue="ingest_a")
    b = celery_app.send_task(tg.TASK, kwargs={"max_iterations": 1000}, queue="ingest_b")
    wait_for(lambda: ch_db.count() >= total_events() // 10, 60, desc="a tenth stored")
    clickhouse_server.stop(kill=True)
    down = time.monotonic()
    wait_for(lambda: time.monotonic() - down >= 8, 10, interval=0.5)   # > 4 x the idle limit
    assert tg.acked_total(r, model.streams) < total_entries()
    clickhouse_server.start()
    ra, rb = a.get(timeout=180), b.get(timeout=180)
    t1 = time.time()
    c, u, uk = ch_db.counts()
    assert c == uk == total_events(), f"count()={c} uniqExact={uk}; results {ra} {rb}"
    check_rows(ch_db, model, t0, t1)
    check_nothing_pending(r, model)


class Forwarder:
    """A TCP forwarder to ClickHouse that is down (nothing listening: the
    connection is refused) until up() is called."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target = ("127.0.0.1", target_port)
        self.server = None

    def up(self):
        target = self.target

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self):
                with socket.create_connection(target) as upstream:
                    socks = [self.request, upstream]
                    while True:
                        ready, _, _ = select.select(socks, [], [], 30)
                        if not ready:
                            return
                        for src in ready:
                            data = src.recv(65536)
                            if not data:
                                return
                            (upstream if src is self.request else self.request).sendall(data)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Pipe)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def test_entries_left_over_from_a_read_are_rechecked_after_a_long_flush(
        producer, ch_db, ptel_cli, worker_config, worker_command, tmp_path):
    """One read delivers two entries (two streams); the first fills a batch whose insert
    waits out an outage longer than telemetry_reclaim_idle_ms, so the second
    entry, not yet in a batch, goes idle and another consumer takes it over
    and stores it. When the first drain gets ClickHouse back, it must find
    out (ownership check before the insert) instead of inserting the second
    entry again: deterministic form of the two-worker outage race."""
    ch_db.create_strict_table()
    gen = Gen(seed=408)
    for org in (org_hash("leftover-1"), org_hash("leftover-2")):   # one read: one entry each
        producer.batch(org, [EventSpec.of(gen.event(org=org)) for _ in range(20)])
    streams = producer.model.streams
    fwd = Forwarder(int(ch_db.url.rsplit(":", 1)[1].split("/", 1)[0]))
    proxied = ch_db.url.replace(ch_db.url.rsplit(":", 1)[1].split("/", 1)[0], str(fwd.port), 1)
    settings = dict(telemetry_read_count=2, telemetry_batch_max_rows=20,
                    telemetry_reclaim_idle_ms=1000, telemetry_backoff_max_s=1,
                    clickhouse_connect_timeout=1, clickhouse_timeout=3)
    config = worker_config(clickhouse_url=proxied, **settings)
    out = open(tmp_path / "first.out", "w+")
    first = subprocess.Popen(worker_command("drain", "--until-empty", "--json", "--config", config),
                             stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for(lambda: tg.pending_total(producer.r, streams) == 2, 20,
                 desc="the first drain read both entries")
        time.sleep(2.5)   # the left-over entry idles > 1 s; the first batch is held
        second = run_drain(ptel_cli, ch_db, **settings)
        assert second["reclaimed"] == 1 and second["processed"] == 20, second
        fwd.up()
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
        fwd.close()
    out.seek(0)
    log = out.read()
    assert ch_db.counts() == (40, 40, 40), log
    assert tg.pending_total(producer.r, streams) == 0
