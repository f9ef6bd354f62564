"""The telemetry drain end to end (issue #3, acceptance points 1, 2, 6, 7):
an upstream-shaped producer (telemetry_gen) writes the per-org streams, a
real Python Celery client sends run_product_telemetry_consumer to the C
worker (or `ptel-worker drain` runs once), and the test compares ClickHouse
18.16 and the DLQ with the Python reference model, exactly.

Each test gets its own ClickHouse database (dropped afterwards) and a
FLUSHALLed Redis. The fixtures and helpers defined here are imported by
test_drain_faults.py."""

import json
import re
import socket
import threading
import time
import uuid
import zlib

import pytest
import redis as redislib

import dashboard
import telemetry_gen as tg
from helpers import ClickHouseError, wait_for
from telemetry_gen import EventSpec, Gen, Model, Producer, org_hash, stream_for

TASK_TIMEOUT = 120
NODE = "e2e@ptel-tests"
CLI_WORKER = "ptel-drain@" + socket.gethostname()
COUNTERS = ("processed", "rejected", "dead_lettered", "reclaimed", "entries", "streams")
DLQ_FIELDS = ("original_stream", "entry_id", "reason", "moved_at", "ingestion_id", "source",
              "org_id_hash", "events", "event_index", "error_class", "deliveries", "worker")


# ---- fixtures shared with test_drain_faults.py -----------------------------------------

class ChDb:
    """One test's private ClickHouse database."""

    def __init__(self, base_url, name, query):
        self.name = name
        self.url = base_url.rstrip("/") + "/" + name
        self.table = f"{name}.{tg.TABLE}"
        self.q = query

    def scalar(self, sql):
        return self.q(sql).strip()

    def counts(self):
        """(count(), uniqExact(event_id), uniqExact(org_id_hash, event_id)), no FINAL."""
        c, u, uk = self.scalar(f"SELECT count(), uniqExact(event_id), "
                               f"uniqExact(org_id_hash, event_id) FROM {self.table}").split("\t")
        return int(c), int(u), int(uk)

    def count(self):
        return int(self.scalar(f"SELECT count() FROM {self.table}"))

    def column_type(self, column):
        for line in self.q(f"DESCRIBE TABLE {self.table}").splitlines():
            parts = line.split("\t")
            if parts[0] == column:
                return dashboard._tsv_unescape(parts[1])
        return None

    def rows(self):
        """{(org_id_hash, event_id): row dict}; occurred_at / ingested_at as
        epoch seconds (DateTime) or epoch milliseconds (DateTime64(3))."""
        ms = self.column_type("occurred_at").startswith("DateTime64")
        t = "toUnixTimestamp64Milli({0})" if ms else "toUnixTimestamp({0})"
        body = self.q(
            "SELECT org_id_hash, event_id, name, schema_version, session_id, anonymous_user_id, "
            "route_pattern, payload_json, " + t.format("occurred_at") + " AS occurred, "
            + t.format("ingested_at") + " AS ingested, source FROM " + self.table
            + " FORMAT JSONEachRow")
        out = {}
        for line in body.splitlines():
            row = json.loads(line)
            key = (row["org_id_hash"], row["event_id"])
            assert key not in out, f"row stored twice: {key}"
            out[key] = row
        return out, ms

    def create_strict_table(self, partition="toYYYYMM(occurred_at)", settings=None):
        """The legacy (18.16) layout with a plain MergeTree engine: unlike the
        production ReplacingMergeTree, background merges never collapse
        duplicates, so count() shows every row ever inserted. settings: a
        MergeTree SETTINGS clause's body."""
        self.q(f"CREATE DATABASE IF NOT EXISTS {self.name}")
        self.q(f"""CREATE TABLE {self.table} (
            org_id_hash String DEFAULT '', event_id String, name String,
            schema_version String, session_id String, anonymous_user_id String,
            route_pattern Nullable(String), payload_json String,
            occurred_at DateTime('UTC'), ingested_at DateTime('UTC'), source String
        ) ENGINE = MergeTree PARTITION BY {partition}
        ORDER BY (org_id_hash, name, occurred_at, event_id)
        {"SETTINGS " + settings if settings else ""}""")


@pytest.fixture
def ch_db(request, clickhouse_url, ch_query):
    slug = re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:40]
    db = ChDb(clickhouse_url, f"ptel_{slug}_{uuid.uuid4().hex[:8]}", ch_query)
    yield db
    try:
        ch_query(f"DROP DATABASE IF EXISTS {db.name}", timeout=30)
    except (ClickHouseError, OSError):
        pass


@pytest.fixture
def schema(ch_db, ptel_cli):
    """ch_db with the table `ptel-worker schema apply` creates."""
    res = ptel_cli("schema", "apply", clickhouse_url=ch_db.url)
    assert res.returncode == 0, res.stderr
    return ch_db


@pytest.fixture
def producer(clean_redis):
    return Producer(clean_redis, Model())


def run_drain(ptel_cli, db, *args, timeout=120, **settings):
    """`ptel-worker drain --until-empty --json` against db; the result dict."""
    res = ptel_cli("drain", *(args or ("--until-empty",)), "--json", timeout=timeout,
                   clickhouse_url=db.url, **settings)
    assert res.returncode == 0, f"drain exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result object on stdout:\n{res.stdout}\n{res.stderr}"
    return json.loads(lines[-1])


def send_drain(celery_app, max_iterations=50, **opts):
    return celery_app.send_task(tg.TASK, kwargs={"max_iterations": max_iterations},
                                queue="ingest", **opts)


def counters(result):
    return {k: result.get(k) for k in COUNTERS}


# ---- checks ---------------------------------------------------------------------------

def check_rows(db, model, t0, t1):
    """Every expected row is stored exactly once with every column as
    CONTRACT §3 says, and nothing else is stored. t0/t1 bound ingested_at."""
    c, u, uk = db.counts()
    assert (c, uk) == (len(model.rows), len(model.rows)), \
        f"count()={c} uniqExact(org,event_id)={uk}, expected {len(model.rows)} each"
    stored, ms = db.rows()
    missing = sorted(set(model.rows) - set(stored))[:5]
    extra = sorted(set(stored) - set(model.rows))[:5]
    assert not missing and not extra, f"missing rows {missing}, unexpected rows {extra}"
    problems = []
    for key, want in model.rows.items():
        got = stored[key]
        exp_occ = want.occurred_at_us // 1000 if ms else want.occurred_at_us // 1_000_000
        checks = {
            "name": want.name, "schema_version": want.schema_version,
            "session_id": want.session_id, "anonymous_user_id": want.anonymous_user_id,
            "route_pattern": want.route_pattern, "payload_json": want.payload_json,
            "occurred": exp_occ, "source": want.source,
        }
        for col, value in checks.items():
            if got[col] != value:
                problems.append(f"{key[1]} ({want.stream} {want.entry_id}#{want.event_index}) "
                                f"{col}: got {got[col]!r}, want {value!r}")
        lo = int(t0 * 1000) // (1 if ms else 1000)
        hi = int(t1 * 1000 + 999) // (1 if ms else 1000)
        if not lo <= got["ingested"] <= hi:
            problems.append(f"{key[1]} ingested_at {got['ingested']} outside [{lo}, {hi}]")
    assert not problems, f"{len(problems)} column mismatch(es):\n" + "\n".join(problems[:30])


def check_dlq(r, model, t0, t1, worker_name):
    """Every expected rejection is one DLQ record with every field right,
    and there is no other record."""
    records = tg.dlq_records(r)
    by_key = {}
    for rid, f in records:
        k = (f.get("original_stream"), f.get("entry_id"), f.get("event_index"))
        assert k not in by_key, f"two DLQ records for {k}"
        by_key[k] = f
    want_keys = {(x.stream, x.entry_id, "" if x.event_index is None else str(x.event_index))
                 for x in model.rejections}
    assert set(by_key) == want_keys, (
        f"DLQ records differ: missing {sorted(want_keys - set(by_key))[:5]}, "
        f"unexpected {sorted(set(by_key) - want_keys)[:5]}")
    problems = []
    for x in model.rejections:
        k = (x.stream, x.entry_id, "" if x.event_index is None else str(x.event_index))
        f = by_key[k]
        where = f"{x.stream} {x.entry_id} #{k[2]} ({x.code})"
        if list(f) != list(DLQ_FIELDS):
            problems.append(f"{where}: fields {list(f)}, want {list(DLQ_FIELDS)}")
        prefix = x.code + ": " + ("" if x.event_index is None else f"event {x.event_index}: ")
        if not f.get("reason", "").startswith(prefix):
            problems.append(f"{where}: reason {f.get('reason')!r} does not start with {prefix!r}")
        for name, value in (("error_class", x.error_class), ("ingestion_id", x.ingestion_id),
                            ("source", x.source), ("org_id_hash", x.org_id_hash),
                            ("deliveries", "1"), ("worker", worker_name)):
            if f.get(name) != value:
                problems.append(f"{where}: {name} {f.get(name)!r}, want {value!r}")
        try:
            moved = float(f.get("moved_at", ""))
            if not t0 - 1 <= moved <= t1 + 1:
                problems.append(f"{where}: moved_at {moved} outside [{t0}, {t1}]")
        except ValueError:
            problems.append(f"{where}: moved_at {f.get('moved_at')!r} is not a float")
        if x.event_index is None:
            if f.get("events") != x.events_text:
                problems.append(f"{where}: events {f.get('events')[:80]!r} is not the raw field "
                                f"{x.events_text[:80]!r}")
        else:
            want_text = "[" + tg.py_event_json(x.events_value[0]) + "]"
            if f.get("events") != want_text:
                problems.append(f"{where}: events {f.get('events')!r}, want {want_text!r}")
    assert not problems, f"{len(problems)} DLQ problem(s):\n" + "\n".join(problems[:30])


def check_nothing_pending(r, model):
    streams = model.streams
    assert tg.pending_total(r, streams) == 0, \
        f"entries still pending: {tg.pending_by_consumer(r, streams)}"
    for s in streams:
        (g,) = [g for g in r.xinfo_groups(s) if g["name"].decode() == tg.GROUP]
        assert g["entries-read"] == r.xlen(s), f"{s}: read {g['entries-read']} of {r.xlen(s)}"


# ---- 1. the Celery task over 20 orgs -----------------------------------------------------

def build_mixed_corpus(producer, gen, n_orgs=20):
    """20 orgs of mixed valid and invalid events, the tricky payload corpus,
    every timestamp form, the org_id_hash fallback rules, an anonymous
    stream and whole-entry rejections. Returns the org hashes."""
    rng = gen.rng
    orgs = [org_hash(f"org-{i:02d}") for i in range(n_orgs)]
    for i, org in enumerate(orgs):
        for _ in range(3 + i % 3):
            specs = []
            for _ in range(rng.randrange(1, 15)):
                if rng.random() < 0.2:
                    specs.append(tg.break_event(gen, rng.choice(tg.EVENT_RULES), org=org))
                else:
                    ev = gen.event(org=rng.choice((org, None, "")),
                                   style=rng.choice(("camel", "snake")),
                                   ts_form=rng.choice(("iso", "offset", "epoch_s", "epoch_ms",
                                                       "epoch_s_float")))
                    specs.append(EventSpec.of(ev, ensure_ascii=rng.random() < 0.5))
            producer.batch(org, specs)

    # Tricky payloads (CONTRACT §3 payload_json), as raw text.
    producer.batch(orgs[0], [EventSpec(tg.tricky_payload_event_text(gen, p, org=orgs[0]))
                             for p in tg.TRICKY_PAYLOADS])

    # Timestamps: every accepted form, fractions, offsets, naive, epoch s/ms int/float.
    base = tg.recent_base_us(10)
    ts_values = [tg.iso_ms(base + 123_000),
                 tg.iso_ms(base + 999_000, offset_minutes=120),
                 tg.iso_ms(base + 1_500_000, offset_minutes=-330),
                 tg.iso_ms(base + 1_000, z=False)[:-6],                  # naive
                 tg.iso_ms(base)[:-5] + "Z",                             # no fraction
                 tg.iso_ms(base)[:-1] + "456Z",                          # microseconds
                 tg.iso_ms(base).replace("T", " "),                      # space separator
                 base // 1_000_000 + 7,                                  # epoch seconds
                 base / 1e6 + 8.75,                                      # float seconds
                 base // 1000 + 9_999,                                   # epoch milliseconds
                 base / 1e3 + 10_500.5]                                  # float milliseconds
    specs = []
    for ts in ts_values:
        ev = gen.event(org=orgs[1])
        ev["ts"] = ts
        specs.append(EventSpec.of(ev))
    producer.batch(orgs[1], specs)

    # org_id_hash fallback rules (CONTRACT §3).
    o2, o5 = orgs[2], orgs[5]
    ev_absent = gen.event()                                  # absent -> entry org
    ev_null = gen.event()
    ev_null["orgIdHash"] = None                              # null -> entry org
    ev_empty = gen.event(org="")                             # '' counts as unset
    ev_same = gen.event(org=o2)                              # same -> fine
    ev_snake = gen.event(style="snake", org=o2)              # snake spelling
    ev_both = gen.event(org=None)
    ev_both["orgIdHash"] = None
    ev_both["org_id_hash"] = org_hash("ignored")             # camel (null) wins
    producer.batch(o2, [EventSpec.of(e) for e in
                        (ev_absent, ev_null, ev_empty, ev_same, ev_snake, ev_both)])
    # Anonymous stream: entry org '' -> rows '' unless the event names its org.
    anon = [gen.event(), gen.event(org=""), gen.event(org=o5), gen.event(org=None)]
    anon[3]["orgIdHash"] = None
    producer.batch("", [EventSpec.of(e) for e in anon])
    # An entry without org_id_hash or source fields at all: '' and the default source.
    ev = gen.event()
    fields = {"ingestion_id": str(uuid.uuid4()), "events": "[" + json.dumps(ev) + "]"}
    key = stream_for(orgs[3])
    entry_id = producer.xadd_raw(key, fields)
    producer.record(key, entry_id, fields, [EventSpec.of(ev)])

    # Whole-entry rejections.
    producer.bad_entry(orgs[4], "invalid_json", {
        "ingestion_id": str(uuid.uuid4()), "source": tg.SOURCE, "org_id_hash": orgs[4],
        "events": '[{"name":"page_viewed",'})
    producer.bad_entry(orgs[6], "too_many_events", {
        "ingestion_id": str(uuid.uuid4()), "source": tg.SOURCE, "org_id_hash": orgs[6],
        "events": "[" + ",".join(json.dumps(gen.event(org=orgs[6])) for _ in range(501)) + "]"})
    return orgs


def test_celery_task_drains_twenty_orgs_exactly(producer, schema, worker, celery_app):
    r = producer.r
    gen = Gen(seed=101)
    build_mixed_corpus(producer, gen)
    model = producer.model
    assert len(model.streams) == 21 and len(model.rows) > 300 and len(model.rejections) > 40

    w = worker("-c", "2", "-n", NODE, clickhouse_url=schema.url)
    t0 = time.time()
    result = send_drain(celery_app, 50).get(timeout=TASK_TIMEOUT)
    t1 = time.time()

    assert counters(result) == model.counters(), f"task result {result}"
    assert 1 <= result["iterations"] <= 50
    check_rows(schema, model, t0, t1)
    check_dlq(r, model, t0, t1, NODE)
    check_nothing_pending(r, model)
    assert "ERROR" not in w.log(), w.log()[-3000:]


@pytest.mark.parametrize("gzip_min_bytes", [1, 0], ids=["gzip_every_body", "gzip_never"])
def test_mixed_corpus_stored_exactly_with_and_without_gzip(gzip_min_bytes, producer, schema,
                                                           ptel_cli):
    """clickhouse_gzip_min_bytes changes only the wire form: every column is
    stored byte for byte either way (loopback default is off, so force it)."""
    r = producer.r
    build_mixed_corpus(producer, Gen(seed=103))
    t0 = time.time()
    res = run_drain(ptel_cli, schema, clickhouse_gzip_min_bytes=gzip_min_bytes)
    assert counters(res) == producer.model.counters(), f"drain result {res}"
    check_rows(schema, producer.model, t0, time.time())
    check_nothing_pending(r, producer.model)


def test_occurred_at_precision_on_the_legacy_table(producer, schema, ptel_cli):
    """CONTRACT §3 wants occurred_at at millisecond precision; on 18.16 the
    legacy table is DateTime (seconds). Record what the table holds: the
    second, floored (toward the past), never rounded up."""
    gen = Gen(seed=7)
    base = tg.recent_base_us(3)
    specs = []
    for frac_ms in (0, 1, 499, 500, 999):
        ev = gen.event(org=org_hash("p"))
        ev["ts"] = tg.iso_ms(base + frac_ms * 1000)
        specs.append(EventSpec.of(ev))
    producer.batch(org_hash("p"), specs)
    res = run_drain(ptel_cli, schema)
    assert res["processed"] == 5
    typ = schema.column_type("occurred_at")
    got = schema.q(f"SELECT toUnixTimestamp(occurred_at), toString(occurred_at) FROM "
                   f"{schema.table} ORDER BY event_id FORMAT TabSeparated").splitlines()
    if typ.startswith("DateTime64"):
        pytest.fail(f"unexpected on 18.16: occurred_at is {typ}")
    assert typ == "DateTime('UTC')"
    assert [int(x.split("\t")[0]) for x in got] == [base // 1_000_000] * 5, got


# ---- 2. every rule of CONTRACT §2 --------------------------------------------------------

@pytest.mark.parametrize("rule", tg.EVENT_RULES)
def test_event_rule_is_enforced_and_dead_lettered(rule, producer, schema, ptel_cli):
    """An entry [valid, broken, valid]: the neighbours are stored, the
    broken event is one DLQ record with every field, the entry is acked."""
    gen = Gen(seed=zlib.crc32(rule.encode()))
    org = org_hash("rules-org")
    bad = tg.break_event(gen, rule, org=org)
    producer.batch(org, [EventSpec.of(gen.event(org=org)), bad, EventSpec.of(gen.event())])
    t0 = time.time()
    res = run_drain(ptel_cli, schema)
    t1 = time.time()
    assert counters(res) == producer.model.counters(), res
    assert res["processed"] == 2 and res["dead_lettered"] == 1
    check_rows(schema, producer.model, t0, t1)
    check_dlq(producer.r, producer.model, t0, t1, CLI_WORKER)
    check_nothing_pending(producer.r, producer.model)


def _fields(org, events, **over):
    f = {"ingestion_id": str(uuid.uuid4()), "source": tg.SOURCE, "org_id_hash": org,
         "events": events}
    f.update(over)
    return {k: v for k, v in f.items() if v is not None}


ENTRY_RULES = {
    "invalid_source": lambda org, ev: _fields(org, "[" + ev + "]", source="dev-health-app"),
    "invalid_source_empty": lambda org, ev: _fields(org, "[" + ev + "]", source=""),
    "invalid_source_case": lambda org, ev: _fields(org, "[" + ev + "]", source="Dev-Health-Web"),
    "missing_events": lambda org, ev: _fields(org, None),
    "invalid_json": lambda org, ev: _fields(org, "[" + ev),
    "invalid_json_not_utf8": lambda org, ev: _fields(org, "[" + ev[:-1] + ',"x":"\udcff"}]'),
    "events_not_array": lambda org, ev: _fields(org, ev),
    "empty_events": lambda org, ev: _fields(org, "[]"),
    "too_many_events": lambda org, ev: _fields(org, "[" + ",".join([ev] * 501) + "]"),
}


@pytest.mark.parametrize("rule", sorted(ENTRY_RULES))
def test_entry_rule_rejects_the_whole_entry(rule, producer, schema, ptel_cli):
    gen = Gen(seed=5)
    org = org_hash("entry-rules")
    ev = json.dumps(gen.event(org=org), separators=(",", ":"))
    fields = ENTRY_RULES[rule](org, ev)
    code = rule.split("_empty")[0].split("_case")[0].split("_not_utf8")[0]
    raw = fields.get("events")
    if raw is not None and "\udcff" in raw:
        raw_bytes = raw.encode("utf-8", "surrogateescape")
        fields["events"] = raw_bytes
    entry_id = producer.xadd_raw(stream_for(org), fields)
    t0 = time.time()
    res = run_drain(ptel_cli, schema)
    t1 = time.time()
    assert counters(res) == {"processed": 0, "rejected": 1, "dead_lettered": 1, "reclaimed": 0,
                             "entries": 1, "streams": 1}, res
    assert schema.count() == 0
    recs = tg.dlq_records(producer.r)
    assert len(recs) == 1
    f = recs[0][1]
    assert list(f) == list(DLQ_FIELDS)
    assert f["original_stream"] == stream_for(org) and f["entry_id"] == entry_id
    assert f["reason"].startswith(code + ": "), f["reason"]
    assert f["event_index"] == "" and f["error_class"] == "validation"
    assert f["ingestion_id"] == fields["ingestion_id"] and f["org_id_hash"] == org
    assert f["source"] == fields["source"] and f["deliveries"] == "1"
    assert f["worker"] == CLI_WORKER and t0 - 1 <= float(f["moved_at"]) <= t1 + 1
    want_events = fields.get("events", "")
    if isinstance(want_events, bytes):
        want_events = want_events.decode("utf-8", "surrogateescape")
    assert f["events"] == want_events
    assert tg.pending_total(producer.r, [stream_for(org)]) == 0


def test_batch_size_limits_are_inclusive(producer, schema, ptel_cli):
    """1 and 500 events are accepted (0 and 501: see the entry rules)."""
    gen = Gen(seed=9)
    org = org_hash("limits")
    producer.batch(org, [EventSpec.of(gen.event(org=org))])
    producer.batch(org, [EventSpec.of(gen.event(org=org)) for _ in range(500)])
    t0 = time.time()
    res = run_drain(ptel_cli, schema)
    assert counters(res) == producer.model.counters() and res["processed"] == 501
    check_rows(schema, producer.model, t0, time.time())
    assert producer.r.xlen(tg.DLQ_KEY) == 0


# ---- 6. the dashboard queries -------------------------------------------------------------

def test_dashboard_queries_return_the_generated_counts(producer, schema, ptel_cli):
    """CONTRACT §6 on the drained data: the seven queries (dashboard.py)
    give what the Python model computes from the generated events,
    including the window's edges and other orgs' events."""
    gen = Gen(seed=606, base_us=tg.recent_base_us(40), days=38)
    org = org_hash("dashboard-org")
    other = org_hash("someone-else")
    start_s = tg.recent_base_us(35) // 1_000_000
    end_s = start_s + 30 * 86400
    users = [f"anon_{i:03d}" for i in range(40)]
    sessions = [f"ses_{i:03d}" for i in range(90)]
    rng = gen.rng
    for _ in range(30):
        specs = [EventSpec.of(gen.event(org=rng.choice((org, None)), user=rng.choice(users),
                                        session=rng.choice(sessions)))
                 for _ in range(rng.randrange(5, 40))]
        producer.batch(org, specs)
    for _ in range(5):
        producer.batch(other, [EventSpec.of(gen.event(org=other)) for _ in range(20)])
    # The window's edges (stored as whole seconds): in, in, out, out.
    edges = [(start_s * 1_000_000, True), (end_s * 1_000_000 - 400_000, True),
             (end_s * 1_000_000, False), (start_s * 1_000_000 - 400_000, False)]
    edge_specs = []
    for ts_us, _ in edges:
        for name in ("page_viewed", "session_ended", "client_error"):
            edge_specs.append(EventSpec.of(gen.event(name=name, org=org, ts_us=ts_us,
                                                     route="/edge")))
    producer.batch(org, edge_specs)

    res = run_drain(ptel_cli, schema)
    assert res["processed"] == len(producer.model.rows)

    got = dashboard.run(schema.q, schema.table, org, start_s, end_s)
    want = dashboard.expected(producer.model.rows.values(), org, start_s, end_s)
    assert not dashboard.compare(got, want), "\n".join(dashboard.compare(got, want))
    # Not vacuous: every query has rows, the edges were counted as planned.
    assert all(got[name] for name in dashboard.QUERIES)
    edge = [r for r in got["top_routes"] if r[0] == "/edge"]
    assert edge and edge[0][1] == 2, edge
    assert sum(n for _, n in got["daily_active_users"]) > 30
    assert got["sessions"][0][0] > 10


# ---- 7. stream isolation --------------------------------------------------------------------

def _snapshot(r, keys):
    snap = {}
    for k in keys:
        t = r.type(k).decode()
        if t == "stream":
            groups = r.xinfo_groups(k)
            snap[k] = (t, r.xrange(k), [(g["name"], g["pending"], g["last-delivered-id"])
                                        for g in groups])
        elif t == "list":
            snap[k] = (t, r.lrange(k, 0, -1))
        elif t == "hash":
            snap[k] = (t, r.hgetall(k))
        elif t == "string":
            snap[k] = (t, r.get(k))
        else:
            snap[k] = (t,)
    return snap


def test_only_telemetry_streams_are_read_or_written(producer, schema, ptel_cli, redis_url):
    r = producer.r
    gen = Gen(seed=77)
    org = org_hash("isolated")
    producer.batch(org, [EventSpec.of(gen.event(org=org)) for _ in range(5)])
    foreign = {
        "instance-telemetry:abc:events": "stream",
        "release-impact:abc": "stream",
        "product-telemetry:abc": "stream",            # no :events suffix
        "product-telemetry:abc:events:old": "stream",  # longer
        "xproduct-telemetry:abc:events": "stream",
        "product-telemetry:list:events": "list",       # matches, wrong type
        "product-telemetry:hash:events": "hash",
        "product-telemetry:string:events": "string",
    }
    ev_text = "[" + json.dumps(gen.event()) + "]"
    for k, t in foreign.items():
        if t == "stream":
            r.xadd(k, {"ingestion_id": "x", "source": tg.SOURCE, "org_id_hash": "",
                       "events": ev_text})
        elif t == "list":
            r.rpush(k, ev_text)
        elif t == "hash":
            r.hset(k, "events", ev_text)
        else:
            r.set(k, ev_text)
    before = _snapshot(r, foreign)

    seen = []
    mon_client = redislib.Redis.from_url(redis_url)
    stop = threading.Event()

    def monitor():
        with mon_client.monitor() as m:
            for cmd in m.listen():
                seen.append(cmd["command"])
                if stop.is_set() and "PTEL-MONITOR-END" in cmd["command"]:
                    return

    th = threading.Thread(target=monitor, daemon=True)
    th.start()
    wait_for(lambda: r.ping() and (r.echo("PTEL-MONITOR-START") and
                                   any("PTEL-MONITOR-START" in c for c in seen)), 5)
    t0 = time.time()
    res = run_drain(ptel_cli, schema)
    stop.set()
    r.echo("PTEL-MONITOR-END")
    th.join(10)
    drain_cmds = list(seen)     # the drain's traffic only, not the checks below
    assert res["processed"] == 5 and res["streams"] == 1 and res["entries"] == 1, res
    check_rows(schema, producer.model, t0, time.time())
    assert _snapshot(r, foreign) == before
    touched = [c for c in drain_cmds if any(k in c.split() or f'"{k}"' in c for k in foreign)]
    assert not touched, f"commands naming foreign keys: {touched[:10]}"
    assert any("XREADGROUP" in c for c in drain_cmds), "the monitor saw no drain traffic"
