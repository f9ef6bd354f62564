"""ClickHouse errors that mean "not now", raised by the real server (issue #5,
part 1): TOO_MANY_PARTS and MEMORY_LIMIT_EXCEEDED are transient. While they
last nothing is acked or dead-lettered, the run backs off and ends with its
entries pending; once the cause is gone the next run stores every event
exactly once. (NOT_ENOUGH_SPACE, disk full, is classified with them:
clickhouse/test_errors.c; filling a disk is not done here.)"""

import telemetry_gen as tg
from telemetry_gen import EventSpec, Gen, org_hash
from test_drain_e2e import ch_db, producer  # noqa: F401 - fixtures, used by name
from test_drain_e2e import run_drain

EVENTS = 10


def one_entry(producer, name):
    gen = Gen(seed=len(name))
    org = org_hash(name)
    producer.batch(org, [EventSpec.of(gen.event(org=org)) for _ in range(EVENTS)])
    return producer.model.streams


def assert_left_pending(res, producer, streams, code):
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "stopped early" in res.stderr, out
    assert f"code {code}" in out and "transient" in out, out
    assert out.count("nothing is acked or dead-lettered") == 1, out   # one line per outage
    assert producer.r.xlen(tg.DLQ_KEY) == 0
    assert tg.pending_total(producer.r, streams) == 1
    assert tg.acked_total(producer.r, streams) == 0


def test_too_many_parts_is_transient(producer, ch_db, ptel_cli):
    # One partition that already holds as many parts as the table allows,
    # merges stopped: every insert is refused with TOO_MANY_PARTS (252).
    ch_db.create_strict_table(partition="tuple()",
                              settings="parts_to_delay_insert = 2, parts_to_throw_insert = 2")
    ch_db.q(f"SYSTEM STOP MERGES {ch_db.table}")
    for i in range(2):
        ch_db.q(f"INSERT INTO {ch_db.table} (event_id, name, schema_version, session_id, "
                f"anonymous_user_id, payload_json, occurred_at, ingested_at, source) VALUES "
                f"('seed-{i}', 'seed', '1', 's', 'a', '{{}}', now(), now(), 'seed')")
    streams = one_entry(producer, "too-many-parts")
    res = ptel_cli("drain", "--until-empty", "--json", timeout=60, clickhouse_url=ch_db.url,
                   telemetry_backoff_max_s=1)
    assert_left_pending(res, producer, streams, 252)
    assert ch_db.count() == 2

    ch_db.q(f"SYSTEM START MERGES {ch_db.table}")
    ch_db.q(f"OPTIMIZE TABLE {ch_db.table} FINAL")
    assert run_drain(ptel_cli, ch_db)["processed"] == EVENTS
    assert ch_db.counts() == (EVENTS + 2, EVENTS + 2, EVENTS + 2)
    assert tg.pending_total(producer.r, streams) == 0


def test_memory_limit_is_transient(producer, ch_db, ptel_cli):
    ch_db.create_strict_table()
    streams = one_entry(producer, "memory-limit")
    # A setting in the URL applies to every request: each one fails with
    # MEMORY_LIMIT_EXCEEDED (241).
    res = ptel_cli("drain", "--until-empty", "--json", timeout=60,
                   clickhouse_url=ch_db.url + "?max_memory_usage=1", telemetry_backoff_max_s=1)
    assert_left_pending(res, producer, streams, 241)
    assert ch_db.count() == 0

    assert run_drain(ptel_cli, ch_db)["processed"] == EVENTS
    assert ch_db.counts() == (EVENTS, EVENTS, EVENTS)
    assert tg.pending_total(producer.r, streams) == 0
