"""`ptel-worker report` against the real test ClickHouse (issue #7 part 3).

Each test creates its own table with `ptel-worker schema apply`, inserts
generated rows directly (JSONEachRow over HTTP, as the drain would have
stored them: CONTRACT §3 columns, payload_json as json.dumps(sort_keys=True,
separators=(",", ":"))), computes every dashboard number in Python from the
same rows, and compares with the report's --json output exactly and with
its text tables line by line.

The expected numbers follow the platform's dashboard queries (CONTRACT §6):
uniqExact counts, avg() as sum/count in Float64, ClickHouse's quantile
(for fewer than 8192 values: sorted samples, linear interpolation at
level * (n - 1)) truncated to int as the dashboard's _optional_int does,
client errors grouped by the route_pattern column, NULL routes read as "".
Ties are ordered by the grouping keys (NULL last), as the report does.
"""

import hashlib
import json
import random
import re
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

import pytest

from helpers import free_port

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
ORGS = ["org-alpha", "org-beta", "org-gamma"]
ROUTES = [f"/r{i:02d}" for i in range(30)] + ["/metrics", "/work/ünïcode"]
FEATURES = ["insights", "Überblick ✓", "work-graph", "metrics", ""]
SURFACES = ["sidebar", "header", "modal"]
VIEWS = ["metrics", "work", "people"]
FILTER_KEYS = ["date", "team", "repo", "scope"]
CHARTS = ["throughput", "cycle_time", "wip"]
ACTIONS = ["hover", "zoom", "legend_toggle"]
BOUNDARIES = ["app", "chart", "page"]
ERROR_CLASSES = ["TypeError", "ChunkLoadError", "NetworkError"]
DAYS = 40


def org_hash(org_id):
    return hashlib.sha256(org_id.encode()).hexdigest()


def ch_time(dt):
    return dt.strftime("%Y-%m-%d %H:%M:%S")


# ---- data ----------------------------------------------------------------------

def event(rng, org, when, name, *, route="random", payload=None, user=None, session=None):
    if route == "random":
        route = rng.choice(ROUTES + [None])
    return {
        "org_id_hash": org_hash(org) if org else "",
        "event_id": "evt_" + uuid.UUID(int=rng.getrandbits(128)).hex[:16],
        "name": name,
        "schema_version": "2026-05-telemetry-v1",
        "session_id": session or f"ses_{org}_{when:%m%d}_{rng.randrange(6)}",
        "anonymous_user_id": user or f"anon_{org}_{rng.randrange(12)}",
        "route_pattern": route,
        "payload": payload or {},
        "occurred_at": when,
    }


def random_event(rng, org, when):
    name = rng.choice(["page_viewed"] * 4 + ["feature_viewed", "filter_changed",
                      "chart_interacted", "client_error", "session_ended",
                      "session_started", "navigation_interacted", "guide_opened"])
    p = {}
    route = "random"
    if name == "page_viewed":
        # weighted, so some routes tie and the LIMIT 25 cut matters
        route = rng.choice(ROUTES[: rng.choice([5, 12, len(ROUTES)])] + [None])
        p = {"routePattern": route, "page": "x"}
    elif name == "feature_viewed":
        p = {"feature": rng.choice(FEATURES), "surface": rng.choice(SURFACES)}
        if rng.random() < 0.1:
            del p["surface"]                      # missing key reads as ""
    elif name == "filter_changed":
        p = {"view": rng.choice(VIEWS), "filterKey": rng.choice(FILTER_KEYS),
             "valueCount": rng.randrange(0, 7), "isCustomDateRange": rng.random() < 0.5}
        if rng.random() < 0.1:
            del p["valueCount"]                   # missing int reads as 0
    elif name == "chart_interacted":
        p = {"chart": rng.choice(CHARTS), "action": rng.choice(ACTIONS),
             "surface": rng.choice(SURFACES)}
    elif name == "client_error":
        # the payload's routePattern is not the error's route: the column is
        p = {"boundary": rng.choice(BOUNDARIES), "errorClass": rng.choice(ERROR_CLASSES),
             "routePattern": "/payload-route-must-not-win"}
    elif name == "session_ended":
        p = {"durationMs": rng.randrange(1000, 900000), "pagesViewed": rng.randrange(1, 20),
             "interactions": rng.randrange(0, 60)}
    return event(rng, org, when, name, route=route, payload=p)


def generate(seed, start_day, orgs=ORGS + [""]):
    """Events for every org (and anonymous ones) on DAYS days from start_day."""
    rng = random.Random(seed)
    events = []
    for org in orgs:
        for d in range(DAYS):
            day0 = datetime.combine(start_day + timedelta(days=d), datetime.min.time(),
                                    tzinfo=timezone.utc)
            for _ in range(rng.randrange(8, 30)):
                when = day0 + timedelta(seconds=rng.randrange(86400))
                events.append(random_event(rng, org, when))
    return events


def insert(ch_query, table, events):
    now = ch_time(datetime.now(timezone.utc))
    lines = []
    for e in events:
        row = {k: v for k, v in e.items() if k not in ("payload", "occurred_at")}
        row["payload_json"] = json.dumps(e["payload"], sort_keys=True, separators=(",", ":"))
        row["occurred_at"] = ch_time(e["occurred_at"])
        row["ingested_at"] = now
        row["source"] = "dev-health-web"
        lines.append(json.dumps(row))
    ch_query(f"INSERT INTO {table} FORMAT JSONEachRow", data="\n".join(lines) + "\n")


# ---- expected numbers (the dashboard's queries, in Python) ---------------------------

def none_last(v):
    return (v is None, v or "")


def ch_quantile(values, level):
    """ClickHouse quantile(level) for fewer than 8192 values (ReservoirSampler
    quantileInterpolated), as a float."""
    s = sorted(values)
    n = len(s)
    index = max(0.0, min(n - 1.0, level * (n - 1)))
    left = int(index)
    right = left + 1
    if right == n:
        return float(s[left])
    return float(s[left]) * (right - index) + float(s[right]) * (index - left)


def expected_report(events, org, start, end):
    lo = datetime.combine(start, datetime.min.time(), tzinfo=timezone.utc)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=timezone.utc)
    rows = [e for e in events if lo <= e["occurred_at"] < hi
            and (org is None or e["org_id_hash"] == org)]

    def of(name):
        return [e for e in rows if e["name"] == name]

    def groups(items, key):
        g = defaultdict(list)
        for e in items:
            g[key(e)].append(e)
        return g

    def users(es):
        return len({e["anonymous_user_id"] for e in es})

    def sessions(es):
        return len({e["session_id"] for e in es})

    daily = [{"day": d.isoformat(), "active_anonymous_users": users(es)}
             for d, es in sorted(groups(rows, lambda e: e["occurred_at"].date()).items())]

    routes = sorted(groups(of("page_viewed"), lambda e: e["route_pattern"]).items(),
                    key=lambda kv: (-len(kv[1]), none_last(kv[0])))[:25]
    top_routes = [{"route_pattern": r or "", "events": len(es), "sessions": sessions(es),
                   "anonymous_users": users(es)} for r, es in routes]

    fv = groups(of("feature_viewed"),
                lambda e: (e["payload"].get("feature", ""), e["payload"].get("surface", "")))
    feature_views = [{"feature": f, "surface": s, "views": len(es), "anonymous_users": users(es)}
                     for (f, s), es in sorted(fv.items(), key=lambda kv: (-len(kv[1]), kv[0]))]

    fc = groups(of("filter_changed"),
                lambda e: (e["payload"].get("view", ""), e["payload"].get("filterKey", "")))
    filter_changes = [
        {"view": v, "filter_key": k, "changes": len(es),
         "avg_value_count": sum(e["payload"].get("valueCount", 0) for e in es) / len(es)}
        for (v, k), es in sorted(fc.items(), key=lambda kv: (-len(kv[1]), kv[0]))]

    ci = groups(of("chart_interacted"),
                lambda e: (e["payload"]["chart"], e["payload"]["action"], e["payload"]["surface"]))
    chart_interactions = [
        {"chart": c, "action": a, "surface": s, "interactions": len(es), "sessions": sessions(es)}
        for (c, a, s), es in sorted(ci.items(), key=lambda kv: (-len(kv[1]), kv[0]))]

    ce = groups(of("client_error"), lambda e: (e["route_pattern"], e["payload"]["boundary"],
                                               e["payload"]["errorClass"]))
    client_errors = [
        {"route_pattern": r or "", "boundary": b, "error_class": c, "errors": len(es),
         "affected_anonymous_users": users(es)}
        for (r, b, c), es in sorted(ce.items(),
                                    key=lambda kv: (-len(kv[1]), none_last(kv[0][0]), kv[0][1:]))]

    ended = of("session_ended")
    if ended:
        durations = [e["payload"]["durationMs"] for e in ended]
        summary = {f"p{p}_duration_ms": int(ch_quantile(durations, p / 100))
                   for p in (50, 75, 90, 95)}
        summary["avg_pages_viewed"] = sum(e["payload"]["pagesViewed"] for e in ended) / len(ended)
        summary["avg_interactions"] = sum(e["payload"]["interactions"] for e in ended) / len(ended)
    else:
        summary = {f"p{p}_duration_ms": None for p in (50, 75, 90, 95)}
        summary.update(avg_pages_viewed=None, avg_interactions=None)

    return {
        "daily_active_users": daily,
        "top_routes": top_routes,
        "feature_views": feature_views,
        "filter_changes": filter_changes,
        "chart_interactions": chart_interactions,
        "client_errors": client_errors,
        "session_summary": summary,
    }


SECTIONS = ["daily_active_users", "top_routes", "feature_views", "filter_changes",
            "chart_interactions", "client_errors", "session_summary"]


# ---- running the report ------------------------------------------------------------

def no_sanitizer_report(done):
    for marker in SANITIZER_MARKERS:
        assert marker not in done.stderr, done.stderr


@pytest.fixture
def report_table(ch_query, ptel_cli):
    """A fresh telemetry table (legacy or production DDL, whatever the
    server takes) created by `ptel-worker schema apply`; dropped after."""
    table = "report_" + uuid.uuid4().hex[:12]
    done = ptel_cli("schema", "apply", clickhouse_table=table)
    assert done.returncode == 0, done.stderr
    yield table
    ch_query(f"DROP TABLE IF EXISTS {table}")


@pytest.fixture
def run_report(ptel_cli, report_table):
    def run(*args, expect_rc=0):
        done = ptel_cli("report", *args, clickhouse_table=report_table)
        no_sanitizer_report(done)
        assert done.returncode == expect_rc, (done.returncode, done.stdout, done.stderr)
        return done
    return run


def cell(v):
    """How the text tables print a value."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, str):
        return v or "(none)"
    return str(v)


def assert_text_matches(text, expected):
    """Every expected row is one table line holding exactly its cells, in
    column order, separated by blanks; every section says so when empty."""
    lines = text.splitlines()
    for section in SECTIONS[:-1]:
        for row in expected[section]:
            pattern = r"^\s+" + r"\s+".join(re.escape(cell(v)) for v in row.values()) + r"\s*$"
            assert any(re.match(pattern, ln) for ln in lines), (section, row, text)
        if not expected[section]:
            assert "(no events in the window)" in text
    labels = {"p50_duration_ms": "duration p50 (ms)", "p75_duration_ms": "duration p75 (ms)",
              "p90_duration_ms": "duration p90 (ms)", "p95_duration_ms": "duration p95 (ms)",
              "avg_pages_viewed": "avg pages viewed", "avg_interactions": "avg interactions"}
    for key, value in expected["session_summary"].items():
        pattern = r"^\s+" + re.escape(labels[key]) + r"\s+" + re.escape(cell(value)) + r"\s*$"
        assert any(re.match(pattern, ln) for ln in lines), (key, value, text)


def check_report(run_report, events, org_args, org, start, end):
    window = ["--from", start.isoformat(), "--to", end.isoformat()]
    expected = expected_report(events, org, start, end)
    got = json.loads(run_report(*org_args, *window, "--json").stdout)
    assert got["start_date"] == start.isoformat()
    assert got["end_date"] == end.isoformat()
    assert got["org_id_hash"] == org
    for section in SECTIONS:
        assert got[section] == expected[section], section
    # types as the dashboard's response has them
    for row in got["filter_changes"]:
        assert isinstance(row["avg_value_count"], float)
    text = run_report(*org_args, *window).stdout
    assert_text_matches(text, expected)
    return got, text


# ---- tests -----------------------------------------------------------------------------

@pytest.fixture
def dataset(ch_query, report_table):
    start_day = date.today() - timedelta(days=DAYS + 5)
    events = generate(7, start_day)
    insert(ch_query, report_table, events)
    return events, start_day


def test_report_org_id_is_hashed_like_the_platform(run_report, dataset):
    events, start_day = dataset
    start, end = start_day + timedelta(days=5), start_day + timedelta(days=35)
    got, text = check_report(run_report, events, ["--org-id", "org-alpha"],
                             org_hash("org-alpha"), start, end)
    assert got["daily_active_users"] and got["top_routes"] and got["client_errors"]
    assert got["session_summary"]["p50_duration_ms"] is not None
    assert org_hash("org-alpha") in text and "org-alpha" in text


def test_report_org_hash_scopes_to_that_org(run_report, dataset):
    events, start_day = dataset
    start, end = start_day + timedelta(days=3), start_day + timedelta(days=33)
    # uppercase input is the same org: the platform stores hexdigest() (lowercase)
    check_report(run_report, events, ["--org-hash", org_hash("org-beta").upper()],
                 org_hash("org-beta"), start, end)


def test_report_without_org_covers_every_org_and_limits_routes(run_report, dataset):
    events, start_day = dataset
    start, end = start_day, start_day + timedelta(days=DAYS)
    got, _ = check_report(run_report, events, [], None, start, end)
    assert len(got["top_routes"]) == 25      # more than 25 routes exist: the dashboard's LIMIT
    assert "" in {r["route_pattern"] for r in got["client_errors"]}   # NULL route reads as ""


def test_report_empty_org_hash_selects_anonymous_events(run_report, dataset):
    events, start_day = dataset
    start, end = start_day + timedelta(days=10), start_day + timedelta(days=20)
    got, _ = check_report(run_report, events, ["--org-hash", ""], "", start, end)
    assert got["daily_active_users"]


def test_report_client_errors_group_by_the_route_column(run_report, dataset):
    events, start_day = dataset
    start, end = start_day, start_day + timedelta(days=DAYS)
    got = json.loads(run_report("--org-id", "org-gamma", "--from", start.isoformat(),
                                "--to", end.isoformat(), "--json").stdout)
    routes = {r["route_pattern"] for r in got["client_errors"]}
    assert routes and "/payload-route-must-not-win" not in routes


def test_report_window_is_half_open(ch_query, report_table, run_report):
    rng = random.Random(3)
    start = date.today() - timedelta(days=20)
    end = start + timedelta(days=7)
    lo = datetime.combine(start, datetime.min.time(), tzinfo=timezone.utc)
    hi = datetime.combine(end, datetime.min.time(), tzinfo=timezone.utc)
    second = timedelta(seconds=1)
    edges = [
        (lo - second, "/edge-before-start", "anon_out_1"),   # excluded
        (lo, "/edge-at-start", "anon_in_1"),                 # included
        (hi - second, "/edge-before-end", "anon_in_2"),      # included
        (hi, "/edge-at-end", "anon_out_2"),                  # excluded
    ]
    events = [event(rng, "org-edge", when, "page_viewed", route=route, user=user,
                    payload={"routePattern": route})
              for when, route, user in edges]
    events.append(event(rng, "org-edge", lo + timedelta(hours=30), "session_ended",
                        payload={"durationMs": 1234, "pagesViewed": 3, "interactions": 5}))
    insert(ch_query, report_table, events)
    got, text = check_report(run_report, events, ["--org-id", "org-edge"],
                             org_hash("org-edge"), start, end)
    assert {r["route_pattern"] for r in got["top_routes"]} == {"/edge-at-start",
                                                               "/edge-before-end"}
    assert [d["day"] for d in got["daily_active_users"]] == [
        start.isoformat(), (start + timedelta(days=1)).isoformat(),
        (end - timedelta(days=1)).isoformat()]
    assert got["session_summary"] == {"p50_duration_ms": 1234, "p75_duration_ms": 1234,
                                      "p90_duration_ms": 1234, "p95_duration_ms": 1234,
                                      "avg_pages_viewed": 3.0, "avg_interactions": 5.0}
    assert "/edge-at-end" not in text and "/edge-before-start" not in text
    # an empty window [d, d) is valid and empty
    empty = json.loads(run_report("--org-id", "org-edge", "--from", start.isoformat(),
                                  "--to", start.isoformat(), "--json").stdout)
    assert empty["daily_active_users"] == [] and empty["top_routes"] == []
    assert empty["session_summary"]["p50_duration_ms"] is None


def test_report_default_window_is_30_days_ending_tomorrow(ch_query, report_table, run_report):
    rng = random.Random(5)
    now = datetime.now(timezone.utc)
    today = now.date()
    tomorrow = today + timedelta(days=1)
    first = tomorrow - timedelta(days=30)
    day0 = datetime.combine(today, datetime.min.time(), tzinfo=timezone.utc)
    events = [
        event(rng, "org-now", day0, "page_viewed", route="/today", payload={}),
        event(rng, "org-now", datetime.combine(first, datetime.min.time(), tzinfo=timezone.utc),
              "page_viewed", route="/first-day", payload={}),
        event(rng, "org-now", datetime.combine(first, datetime.min.time(), tzinfo=timezone.utc)
              - timedelta(seconds=1), "page_viewed", route="/too-old", payload={}),
    ]
    insert(ch_query, report_table, events)
    got = json.loads(run_report("--org-id", "org-now", "--json").stdout)
    if got["end_date"] != tomorrow.isoformat():      # the test ran across midnight UTC
        pytest.skip("UTC day changed during the test")
    assert got["start_date"] == first.isoformat()
    assert {r["route_pattern"] for r in got["top_routes"]} == {"/today", "/first-day"}


def test_report_missing_table_suggests_schema_apply(ptel_cli):
    done = ptel_cli("report", clickhouse_table="no_such_table_" + uuid.uuid4().hex[:8])
    no_sanitizer_report(done)
    assert done.returncode == 1, done.stderr
    assert "does not exist" in done.stderr and "ptel-worker schema apply" in done.stderr
    assert done.stdout == ""


def test_report_unreachable_clickhouse_is_a_clear_error(ptel_cli):
    done = ptel_cli("report", clickhouse_url=f"http://127.0.0.1:{free_port()}/",
                    clickhouse_connect_timeout=2)
    no_sanitizer_report(done)
    assert done.returncode == 1
    assert "cannot reach ClickHouse at http://127.0.0.1:" in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["--from", "2026-02-30"], "--from"),
    (["--to", "yesterday"], "--to"),
    (["--from", "2026-05-02", "--to", "2026-05-01"], "must not be after"),
    (["--org-id", "a", "--org-hash", "b" * 64], "give one"),
    (["--org-hash", "xyz"], "64 hex digits"),
    (["--bogus"], "unknown option"),
    (["extra"], "unexpected argument"),
    (["--from"], "needs a value"),
])
def test_report_usage_errors_exit_2(ptel_cli, args, message):
    done = ptel_cli("report", *args, config=False)
    no_sanitizer_report(done)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr


def test_report_help(ptel_cli):
    done = ptel_cli("report", "--help", config=False)
    assert done.returncode == 0
    for flag in ("--org-id", "--org-hash", "--from", "--to", "--json", "--config"):
        assert flag in done.stdout
    top = ptel_cli("--help", config=False)
    assert "report" in top.stdout
