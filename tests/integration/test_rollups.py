"""Daily rollups (`schema apply --rollups`, `report --rollups`) against the
real test ClickHouse (issue #7 part 6).

Every test makes its own raw table, inserts generated rows directly
(JSONEachRow, as the drain stores them: test_report's generator and
inserter), and checks that the report computed from the rollups is the
report computed from the raw rows, section by section, exactly: counts are
countState/countMerge, users and sessions uniqExact states (exact at any
cardinality), percentiles the same reservoir quantiles (exact below 8192
values per merged state, which these data sets stay under), averages
avgState over the same Int64s. The raw report is itself checked against
test_report's Python model of the dashboard, so both equal the contract.
"""

import json
import random
import uuid
from datetime import date, datetime, timedelta, timezone

import pytest

from test_report import (
    DAYS, SECTIONS, event, expected_report, generate, insert, no_sanitizer_report, org_hash,
)

ROLLUPS = ["events", "features", "filters", "charts", "errors", "sessions"]


def server_version(ch_query):
    major, minor = ch_query("SELECT version()").strip().split(".")[:2]
    return int(major), int(minor)


def has_ttl(ch_query):
    return server_version(ch_query) >= (19, 6)


@pytest.fixture
def tables(ch_query):
    """A fresh raw table name; it, its rollups and their views are dropped after."""
    table = "rollup_" + uuid.uuid4().hex[:12]
    yield table
    for r in ROLLUPS:
        ch_query(f"DROP TABLE IF EXISTS {table}_rollup_{r}_mv")
        ch_query(f"DROP TABLE IF EXISTS {table}_rollup_{r}")
    ch_query(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def cli(ptel_cli, tables):
    def run(*args, expect_rc=0, **settings):
        done = ptel_cli(*args, clickhouse_table=tables, **settings)
        no_sanitizer_report(done)
        assert done.returncode == expect_rc, (done.returncode, done.stdout, done.stderr)
        return done
    return run


def report(cli, org_args, start, end, *extra, **settings):
    window = ["--from", start.isoformat(), "--to", end.isoformat()]
    return json.loads(cli("report", *org_args, *window, "--json", *extra, **settings).stdout)


def assert_same_reports(cli, events, tables, cases):
    """For each (org_args, org_hash, start, end): raw == rollups == the model."""
    for org_args, org, start, end in cases:
        raw = report(cli, org_args, start, end)
        rolled = report(cli, org_args, start, end, "--rollups")
        expected = expected_report(events, org, start, end)
        for section in SECTIONS:
            assert raw[section] == expected[section], (section, org_args, start, end)
            assert rolled[section] == raw[section], (section, org_args, start, end)
        assert raw["table"] == tables and rolled["table"] == tables + "_rollup_*"


def cases_for(start_day):
    return [
        ([], None, start_day, start_day + timedelta(days=DAYS)),
        (["--org-id", "org-alpha"], org_hash("org-alpha"), start_day + timedelta(days=5),
         start_day + timedelta(days=35)),
        (["--org-hash", org_hash("org-beta")], org_hash("org-beta"), start_day + timedelta(days=3),
         start_day + timedelta(days=4)),
        (["--org-hash", ""], "", start_day + timedelta(days=10), start_day + timedelta(days=20)),
        (["--org-id", "org-gamma"], org_hash("org-gamma"), start_day, start_day),   # empty
    ]


# ---- tests -------------------------------------------------------------------------------

def test_rollups_report_equals_raw_report(ch_query, cli, tables):
    done = cli("schema", "apply", "--rollups")
    assert "6 view(s) created" in done.stdout, done.stdout
    assert "rows already in" in done.stdout          # says the views start empty
    start_day = date.today() - timedelta(days=DAYS + 5)
    events = generate(11, start_day)
    # several inserts: several blocks and parts, so states really merge
    for i in range(4):
        insert(ch_query, tables, events[i::4])
    cases = cases_for(start_day)
    assert_same_reports(cli, events, tables, cases)
    full = report(cli, [], start_day, start_day + timedelta(days=DAYS), "--rollups")
    assert len(full["top_routes"]) == 25 and full["session_summary"]["p50_duration_ms"]
    assert "" in {r["route_pattern"] for r in full["client_errors"]}
    # after merges the states still answer the same
    for r in ROLLUPS:
        ch_query(f"OPTIMIZE TABLE {tables}_rollup_{r} FINAL")
    assert_same_reports(cli, events, tables, cases)
    text = cli("report", "--rollups", "--from", start_day.isoformat()).stdout
    assert f"table {tables}_rollup_* on ClickHouse" in text


def test_rollups_backfill_then_views_count_each_row_once(ch_query, cli, tables):
    cli("schema", "apply")
    start_day = date.today() - timedelta(days=DAYS + 5)
    events = generate(12, start_day)
    before, after = events[: len(events) // 2], events[len(events) // 2:]
    insert(ch_query, tables, before)
    done = cli("schema", "apply", "--rollups", "--backfill")
    assert "backfilled 6 rollup(s) from %d row(s)" % len(before) in done.stdout, done.stdout
    insert(ch_query, tables, after)               # seen by the views only
    assert_same_reports(cli, events, tables, cases_for(start_day))

    # idempotent: nothing created, nothing backfilled twice, same numbers
    again = cli("schema", "apply", "--rollups", "--backfill")
    assert "0 view(s) created" in again.stdout and "backfill skipped" in again.stdout
    plain = cli("schema", "apply", "--rollups")
    assert "0 view(s) created" in plain.stdout and "rows already in" not in plain.stdout
    assert_same_reports(cli, events, tables, cases_for(start_day)[:2])
    count = ch_query(f"SELECT countMerge(events_state) FROM {tables}_rollup_events")
    assert int(count) == len(events)


def test_rollups_show_prints_the_ddl_without_applying(ch_query, cli, tables):
    done = cli("schema", "show", "--rollups")
    out = done.stdout
    for r in ROLLUPS:
        assert f"CREATE TABLE IF NOT EXISTS {tables}_rollup_{r} (" in out
        assert (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {tables}_rollup_{r}_mv "
                f"TO {tables}_rollup_{r} AS") in out
    assert "AggregateFunction(uniqExact, String)" in out
    assert "AggregateFunction(quantiles(0.5, 0.75, 0.9, 0.95), Int64)" in out
    assert ("TTL day + INTERVAL 730 DAY" in out) == has_ttl(ch_query)
    assert "-- INSERT INTO" in out                    # the backfill, commented
    assert ch_query(f"EXISTS TABLE {tables}").strip() == "0"
    cli("schema", "show", "--backfill", expect_rc=2)


def test_rollups_on_a_server_without_ttl_drop_old_months(ch_query, cli, tables):
    if has_ttl(ch_query):
        pytest.skip("this server has TTL: the rollup tables expire rows themselves")
    cli("schema", "apply")
    old_day = date.today() - timedelta(days=500)
    recent_day = date.today() - timedelta(days=40)
    events = []
    for i, day in enumerate([old_day, recent_day]):
        when = datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=9)
        events.append(event(random.Random(i), "org-old", when, "page_viewed", route=f"/r{i}",
                            payload={}, user=f"anon_{i}", session=f"ses_{i}"))
    insert(ch_query, tables, events)
    done = cli("schema", "apply", "--rollups", "--backfill", telemetry_rollup_ttl_days=400)
    assert "no TTL on this server: " in done.stdout, done.stdout
    assert "0 month partition(s)" not in done.stdout
    engine = ch_query(f"SELECT engine_full FROM system.tables WHERE name = '{tables}_rollup_events'")
    assert " TTL " not in engine
    org = ["--org-id", "org-old"]
    old = report(cli, org, old_day, old_day + timedelta(days=1), "--rollups")
    recent = report(cli, org, recent_day, recent_day + timedelta(days=1), "--rollups")
    assert old["top_routes"] == []
    assert recent["top_routes"] == [{"route_pattern": "/r1", "events": 1, "sessions": 1,
                                     "anonymous_users": 1}]


def test_report_uses_rollups_for_windows_past_raw_retention(ch_query, cli, tables):
    start_day = date.today() - timedelta(days=DAYS + 5)
    window = ["--from", start_day.isoformat(), "--to", (start_day + timedelta(days=DAYS)).isoformat()]
    # no rollups: the raw rows, with a warning that the window is incomplete
    cli("schema", "apply")
    done = cli("report", *window, "--json", telemetry_retention_days=30)
    assert json.loads(done.stdout)["table"] == tables
    assert "before the raw retention (30 days)" in done.stderr
    missing = cli("report", *window, "--rollups", expect_rc=1)
    assert "schema apply --rollups" in missing.stderr and missing.stdout == ""
    # with rollups: they answer old windows by themselves, recent ones stay raw
    cli("schema", "apply", "--rollups")
    events = generate(13, start_day)
    insert(ch_query, tables, events)
    old = json.loads(cli("report", *window, "--json", telemetry_retention_days=30).stdout)
    assert old["table"] == tables + "_rollup_*"
    assert old["daily_active_users"] == expected_report(
        events, None, start_day, start_day + timedelta(days=DAYS))["daily_active_users"]
    recent = json.loads(cli("report", *window, "--json").stdout)
    assert recent["table"] == tables


def test_rollup_ttl_setting_is_validated(cli):
    done = cli("schema", "apply", "--rollups", telemetry_rollup_ttl_days=0, expect_rc=1)
    assert "telemetry_rollup_ttl_days" in done.stderr
