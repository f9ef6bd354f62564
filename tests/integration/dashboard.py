"""dashboard: the seven admin-dashboard queries of telemetry/CONTRACT.md §6,
in the dialect of ClickHouse 18.16 (visitParamExtractString /
visitParamExtractInt instead of JSONExtractString / JSONExtractInt), plus a
Python model that computes the same answers from generated events.

Every query reads product_telemetry_events over the half-open window
[start, end) for one org_id_hash, without FINAL (as the dashboard does), and
returns TabSeparated rows that `run()` turns into Python tuples.

    from dashboard import QUERIES, run, expected
    got = run(ch_query, "db.product_telemetry_events", org, start_s, end_s)
    want = expected(rows, org, start_s, end_s)     # rows: telemetry_gen.ExpectedRow
    assert got == want   (floats compared with a tolerance; see compare())

start_s / end_s are epoch seconds (UTC). Values in the window are compared
at the table's precision: a DateTime column (18.16) holds whole seconds, so
an event at end - 0.4 s is stored as end - 1 s and counts, one at start - 0.4 s
is stored as start - 1 s and does not.
"""

import math
from collections import defaultdict

# {table}, {org}, {start}, {end} are filled by render(); org is quoted there.
WHERE = ("org_id_hash = {org} AND occurred_at >= toDateTime({start}, 'UTC') "
         "AND occurred_at < toDateTime({end}, 'UTC')")

QUERIES = {
    # 1. daily active anonymous users
    "daily_active_users": (
        "SELECT toString(toDate(occurred_at)) AS day, uniqExact(anonymous_user_id) AS users "
        "FROM {table} WHERE " + WHERE + " GROUP BY day ORDER BY day"),
    # 2. top route patterns of page_viewed by events, sessions, users
    "top_routes": (
        "SELECT ifNull(route_pattern, '') AS route, count() AS events, "
        "uniqExact(session_id) AS sessions, uniqExact(anonymous_user_id) AS users "
        "FROM {table} WHERE " + WHERE + " AND name = 'page_viewed' "
        "GROUP BY route ORDER BY events DESC, route LIMIT 50"),
    # 3. feature_viewed by feature and surface
    "features": (
        "SELECT visitParamExtractString(payload_json, 'feature') AS feature, "
        "visitParamExtractString(payload_json, 'surface') AS surface, count() AS events, "
        "uniqExact(anonymous_user_id) AS users "
        "FROM {table} WHERE " + WHERE + " AND name = 'feature_viewed' "
        "GROUP BY feature, surface ORDER BY events DESC, feature, surface"),
    # 4. filter_changed by view and filterKey, with the average valueCount
    "filters": (
        "SELECT visitParamExtractString(payload_json, 'view') AS view, "
        "visitParamExtractString(payload_json, 'filterKey') AS filter_key, count() AS events, "
        "avg(visitParamExtractInt(payload_json, 'valueCount')) AS avg_value_count "
        "FROM {table} WHERE " + WHERE + " AND name = 'filter_changed' "
        "GROUP BY view, filter_key ORDER BY events DESC, view, filter_key"),
    # 5. chart_interacted by chart, action, surface
    "charts": (
        "SELECT visitParamExtractString(payload_json, 'chart') AS chart, "
        "visitParamExtractString(payload_json, 'action') AS action, "
        "visitParamExtractString(payload_json, 'surface') AS surface, count() AS events "
        "FROM {table} WHERE " + WHERE + " AND name = 'chart_interacted' "
        "GROUP BY chart, action, surface ORDER BY events DESC, chart, action, surface"),
    # 6. client_error by route, boundary, errorClass
    "client_errors": (
        "SELECT ifNull(route_pattern, '') AS route, "
        "visitParamExtractString(payload_json, 'boundary') AS boundary, "
        "visitParamExtractString(payload_json, 'errorClass') AS error_class, count() AS events "
        "FROM {table} WHERE " + WHERE + " AND name = 'client_error' "
        "GROUP BY route, boundary, error_class ORDER BY events DESC, route, boundary, error_class"),
    # 7. session_ended: durationMs p50/p75/p90/p95, avg pagesViewed and interactions
    "sessions": (
        "SELECT count() AS sessions, "
        "quantiles(0.5, 0.75, 0.9, 0.95)(visitParamExtractInt(payload_json, 'durationMs')) AS q, "
        "avg(visitParamExtractInt(payload_json, 'pagesViewed')) AS avg_pages, "
        "avg(visitParamExtractInt(payload_json, 'interactions')) AS avg_interactions "
        "FROM {table} WHERE " + WHERE + " AND name = 'session_ended'"),
}

# Column kinds per query, to parse TabSeparated: s string, i int, f float, a float array.
KINDS = {
    "daily_active_users": "si",
    "top_routes": "siii",
    "features": "ssii",
    "filters": "ssif",
    "charts": "sssi",
    "client_errors": "sssi",
    "sessions": "iaff",
}


def sql_quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(name, table, org, start_s, end_s):
    return QUERIES[name].format(table=table, org=sql_quote(org), start=int(start_s),
                                end=int(end_s))


def _tsv_unescape(s):
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            i += 1
            c = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "0": "\0"}.get(s[i], s[i])
        out.append(c)
        i += 1
    return "".join(out)


def _parse(kinds, line):
    cols = line.split("\t")
    out = []
    for k, v in zip(kinds, cols):
        if k == "s":
            out.append(_tsv_unescape(v))
        elif k == "i":
            out.append(int(v))
        elif k == "f":
            out.append(float(v))
        elif k == "a":
            out.append([float(x) for x in v.strip("[]").split(",") if x])
    return tuple(out)


def run(ch_query, table, org, start_s, end_s):
    """{query name: [row tuples]} for all seven queries."""
    out = {}
    for name in QUERIES:
        body = ch_query(render(name, table, org, start_s, end_s) + " FORMAT TabSeparated")
        out[name] = [_parse(KINDS[name], line) for line in body.splitlines() if line]
    return out


# ---- the Python model ----------------------------------------------------------------

def _quantile(values, level):
    v = sorted(values)
    pos = level * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def stored_second(row):
    """occurred_at as a DateTime column holds it: whole seconds, floored."""
    return row.occurred_at_us // 1_000_000


def expected(rows, org, start_s, end_s, stored_s=stored_second):
    """The answers of the seven queries computed from ExpectedRow objects
    (telemetry_gen), in the same order and shapes as run()."""
    import datetime as _dt

    sel = [r for r in rows if r.org_id_hash == org and start_s <= stored_s(r) < end_s]
    out = {}

    days = defaultdict(set)
    for r in sel:
        day = _dt.datetime.fromtimestamp(stored_s(r), _dt.timezone.utc).date().isoformat()
        days[day].add(r.anonymous_user_id)
    out["daily_active_users"] = [(d, len(u)) for d, u in sorted(days.items())]

    routes = defaultdict(lambda: [0, set(), set()])
    for r in sel:
        if r.name == "page_viewed":
            g = routes[r.route_pattern or ""]
            g[0] += 1
            g[1].add(r.session_id)
            g[2].add(r.anonymous_user_id)
    out["top_routes"] = sorted(((k, v[0], len(v[1]), len(v[2])) for k, v in routes.items()),
                               key=lambda t: (-t[1], t[0]))[:50]

    def grouped(name, keys, with_users=False, avg_key=None):
        g = defaultdict(lambda: [0, set(), []])
        for r in sel:
            if r.name != name:
                continue
            k = tuple(str(r.payload.get(x, "")) for x in keys)
            g[k][0] += 1
            g[k][1].add(r.anonymous_user_id)
            if avg_key:
                g[k][2].append(int(r.payload.get(avg_key, 0)))
        rows_ = []
        for k, (n, users, vals) in g.items():
            t = k + (n,)
            if with_users:
                t += (len(users),)
            if avg_key:
                t += (sum(vals) / len(vals),)
            rows_.append(t)
        return sorted(rows_, key=lambda t: (-t[len(keys)],) + t[:len(keys)])

    out["features"] = grouped("feature_viewed", ("feature", "surface"), with_users=True)
    out["filters"] = grouped("filter_changed", ("view", "filterKey"), avg_key="valueCount")
    out["charts"] = grouped("chart_interacted", ("chart", "action", "surface"))

    errs = defaultdict(int)
    for r in sel:
        if r.name == "client_error":
            errs[(r.route_pattern or "", str(r.payload.get("boundary", "")),
                  str(r.payload.get("errorClass", "")))] += 1
    out["client_errors"] = sorted((k + (n,) for k, n in errs.items()),
                                  key=lambda t: (-t[3],) + t[:3])

    ended = [r for r in sel if r.name == "session_ended"]
    if ended:
        d = [int(r.payload["durationMs"]) for r in ended]
        out["sessions"] = [(len(ended), [_quantile(d, q) for q in (0.5, 0.75, 0.9, 0.95)],
                            sum(int(r.payload["pagesViewed"]) for r in ended) / len(ended),
                            sum(int(r.payload["interactions"]) for r in ended) / len(ended))]
    else:
        out["sessions"] = [(0, [], math.nan, math.nan)]
    return out


def _close(a, b):
    if isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def compare(got, want):
    """A list of human-readable differences (empty when equal)."""
    diffs = []
    for name in QUERIES:
        g, w = got.get(name, []), want.get(name, [])
        if len(g) != len(w) or not all(
                len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b)) for a, b in zip(g, w)):
            diffs.append(f"{name}:\n  got  {g}\n  want {w}")
    return diffs
