#!/usr/bin/python3
"""tests/data/telemetry/gen_cases.py: reference model of the telemetry data
contract (CONTRACT §1-§3) and generator of the fixture tasks/test_telemetry.c
checks tasks/telemetry.c against.

The model is written from the contract with Python's own json.loads and
json.dumps(sort_keys=True, separators=(",", ":")), so `payload_json` is the
upstream Python consumer's bytes by construction. Where the contract is
silent it follows the decisions documented in tasks/telemetry.h (rule order,
camelCase wins, empty orgIdHash = unset, payload absent = {}, ts rounding and
range, last duplicate entry field wins). ISO-8601 strings follow exactly the
grammar common/timeutil.h documents; forms timeutil.c may accept beyond it
(',' decimal, HH:MM, +hhmm, 10+ fraction digits) are deliberately absent
from the fixture, so either reading of them keeps this test valid.

Run with /usr/bin/python3 (Debian's): writes cases.jsonl beside this file.
Each line: {"name", "fields": [[field, value], ...],
            "expected_rows": [{column: value}], "expected_rejections":
            [{"index", "class", "code", "event_json"}]}
"""
import datetime
import json
import math
import os
import re

SOURCE = "dev-health-web"
MAX_EVENTS = 500
MS_THRESHOLD = 2e10
TS_MIN_US = -62135596800000000          # 0001-01-01T00:00:00Z
TS_MAX_US = 253402300799999999          # 9999-12-31T23:59:59.999999Z
ALLOWED = {"page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
           "navigation_interacted", "guide_opened", "session_started",
           "session_ended", "client_error"}
BLOCKED = {"email", "name", "userId", "orgId", "url", "query", "search",
           "stack", "message", "title", "body"}
IDS = [("schemaVersion", "schema_version"), ("eventId", "event_id"),
       ("sessionId", "session_id"), ("anonymousUserId", "anonymous_user_id")]
EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()

ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                 r"(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})?")


# ---- Reference model ------------------------------------------------------

class Reject(Exception):
    def __init__(self, code, klass="validation"):
        super().__init__(code)
        self.code, self.klass = code, klass


def parse_iso(s):
    m = ISO.fullmatch(s)
    if not m:
        return None
    y, mo, d, h, mi = (int(m.group(i)) for i in range(1, 6))
    sec = int(m.group(6))
    frac = (m.group(7) or "")[:6].ljust(6, "0")
    if y < 1 or h > 23 or mi > 59 or sec > 59:
        return None
    try:
        days = datetime.date(y, mo, d).toordinal() - EPOCH_ORDINAL
    except ValueError:
        return None
    off = 0
    tz = m.group(8)
    if tz and tz != "Z":
        oh, om = int(tz[1:3]), int(tz[4:6])
        if oh > 23 or om > 59:
            return None
        off = (oh * 3600 + om * 60) * 1000000 * (-1 if tz[0] == "-" else 1)
    return ((days * 86400 + h * 3600 + mi * 60 + sec) * 1000000 + int(frac)) - off


def ts_us(ts):
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int):
        us = ts * 1000 if ts > MS_THRESHOLD else ts * 1000000
    elif isinstance(ts, float):
        if not math.isfinite(ts):
            return None
        us = round(ts * 1e3) if ts > MS_THRESHOLD else round(ts * 1e6)
    elif isinstance(ts, str):
        us = parse_iso(ts)
    else:
        return None
    return us if us is not None and TS_MIN_US <= us <= TS_MAX_US else None


def pick(ev, camel, snake):
    """camelCase wins whenever present, whatever its value."""
    if camel in ev:
        return ev[camel]
    return ev.get(snake)


def check_event(ev, entry_org):
    """Returns (row fields) or raises Reject; order as telemetry.h lists."""
    if not isinstance(ev, dict):
        raise Reject("event_not_object")
    payload = ev.get("payload")
    if isinstance(payload, dict) and any(k in BLOCKED for k in payload):
        raise Reject("blocked_key", "privacy")
    if "name" not in ev:
        raise Reject("missing_field")
    if not (isinstance(ev["name"], str) and ev["name"] in ALLOWED):
        raise Reject("invalid_name")
    ids = []
    for camel, snake in IDS:
        v = pick(ev, camel, snake)
        if not (isinstance(v, str) and v):
            raise Reject("missing_field")
        if "\0" in v:
            raise Reject("nul_character")
        ids.append(v)
    if "ts" not in ev:
        raise Reject("missing_field")
    us = ts_us(ev["ts"])
    if us is None:
        raise Reject("invalid_ts")
    for camel, snake, code in (("orgIdHash", "org_id_hash", "invalid_org_id_hash"),
                               ("routePattern", "route_pattern", "invalid_route_pattern")):
        v = pick(ev, camel, snake)
        if v is not None and not isinstance(v, str):
            raise Reject(code)
        if isinstance(v, str) and "\0" in v:
            raise Reject("nul_character")
    if "payload" in ev:
        if not isinstance(payload, dict):
            raise Reject("invalid_payload")
        if any(isinstance(v, (dict, list)) for v in payload.values()):
            raise Reject("nested_payload")
    else:
        payload = {}
    org = pick(ev, "orgIdHash", "org_id_hash")
    org = org if isinstance(org, str) and org else None
    if org and entry_org and org != entry_org:
        raise Reject("org_mismatch")
    return {
        "org_id_hash": org or entry_org or "",
        "event_id": ids[1],
        "name": ev["name"],
        "schema_version": ids[0],
        "session_id": ids[2],
        "anonymous_user_id": ids[3],
        "route_pattern": pick(ev, "routePattern", "route_pattern"),
        "payload_json": json.dumps(payload, sort_keys=True, separators=(",", ":")),
        "occurred_at_us": us,
    }


def reference(fields):
    d = {}
    for k, v in fields:          # a repeated field: the last one wins
        d[k] = v
    source = d.get("source")
    if source is not None and source != SOURCE:
        return [], [whole("invalid_source")]
    if "events" not in d:
        return [], [whole("missing_events")]
    try:
        events = json.loads(d["events"])
    except ValueError:
        return [], [whole("invalid_json")]
    if not isinstance(events, list):
        return [], [whole("events_not_array")]
    if not events:
        return [], [whole("empty_events")]
    if len(events) > MAX_EVENTS:
        return [], [whole("too_many_events")]
    rows, rejections = [], []
    for i, ev in enumerate(events):
        try:
            row = check_event(ev, d.get("org_id_hash"))
        except Reject as r:
            rejections.append({"index": i, "class": r.klass, "code": r.code,
                               "event_json": json.dumps(ev, separators=(",", ":"))})
            continue
        row["source"] = source or SOURCE
        rows.append(row)
    return rows, rejections


def whole(code):
    return {"index": -1, "class": "validation", "code": code, "event_json": None}


# ---- Cases ------------------------------------------------------------------

ORG = "a" * 64
OTHER_ORG = "b" * 64
CASES = []


def ev(**over):
    """The contract's example event, with overrides; a value of DROP removes the key."""
    e = {"name": "filter_changed", "schemaVersion": "2026-05-telemetry-v1",
         "eventId": "evt_9f1c0a7d33b2e410", "ts": "2026-05-25T12:00:00.123Z",
         "sessionId": "ses_5b0e", "anonymousUserId": "anon_0003", "orgIdHash": ORG,
         "routePattern": "/metrics",
         "payload": {"view": "metrics", "filterKey": "date", "valueCount": 2,
                     "isCustomDateRange": False}}
    for k, v in over.items():
        if v is DROP:
            e.pop(k, None)
        else:
            e[k] = v
    return e


DROP = object()


def case(name, events=None, raw=None, **fields):
    """events: list of event objects (dumped) or raw: the `events` text as is."""
    f = [["ingestion_id", "6f1c2e9a-1b7d-4e0f-9a51-3c2d8b7e6f10"],
         ["source", SOURCE], ["org_id_hash", ORG]]
    for k, v in fields.items():
        f = [p for p in f if p[0] != k]
        if v is not DROP:
            f.append([k, v])
    if raw is not None:
        f.append(["events", raw])
    elif events is not None:
        f.append(["events", json.dumps(events)])
    CASES.append((name, f))


def build_cases():
    # -- valid shapes
    case("contract_example", [ev()])
    case("all_nine_names", [ev(name=n, eventId="e%d" % i) for i, n in enumerate(sorted(ALLOWED))])
    snake = {"name": "page_viewed", "schema_version": "v1", "event_id": "e1",
             "ts": "2026-05-25T12:00:00Z", "session_id": "s1", "anonymous_user_id": "a1",
             "org_id_hash": ORG, "route_pattern": "/x", "payload": {"page": "home"}}
    case("snake_case_keys", [snake])
    case("camel_wins_over_snake_valid", [ev(event_id="", session_id=5, route_pattern="/snake")])
    case("camel_wins_even_when_invalid", [ev(eventId="", event_id="good")])
    case("camel_null_org_wins_over_snake", [ev(orgIdHash=None, org_id_hash=OTHER_ORG)])
    case("camel_null_route_wins_over_snake", [ev(routePattern=None, route_pattern="/snake")])
    case("unknown_event_keys_ignored", [ev(extra={"deep": [1]}, Name="x", TS=True)])
    case("unknown_entry_fields_ignored", [ev()], extra="whatever", stream="x")
    case("no_source_defaults", [ev()], source=DROP)
    case("no_entry_org_uses_event_org", [ev()], org_id_hash=DROP)
    case("empty_entry_org_uses_event_org", [ev()], org_id_hash="")
    case("event_org_absent_uses_entry_org", [ev(orgIdHash=DROP)])
    case("event_org_null_uses_entry_org", [ev(orgIdHash=None)])
    case("event_org_empty_uses_entry_org", [ev(orgIdHash="")])
    case("no_org_anywhere", [ev(orgIdHash=DROP)], org_id_hash=DROP)
    case("empty_org_everywhere", [ev(orgIdHash="")], org_id_hash="")
    case("snake_org_mismatch", [ev(orgIdHash=DROP, org_id_hash=OTHER_ORG)])
    case("route_null", [ev(routePattern=None)])
    case("route_absent", [ev(routePattern=DROP)])
    case("route_empty_string", [ev(routePattern="")])
    case("payload_absent", [ev(payload=DROP)])
    case("payload_empty", [ev(payload={})])
    case("no_ingestion_id", [ev()], ingestion_id=DROP)
    case("duplicate_entry_fields_last_wins", raw="not json", source="bad")
    CASES[-1][1].extend([["events", json.dumps([ev()])], ["source", SOURCE],
                         ["org_id_hash", OTHER_ORG]])

    # -- payload bytes (CONTRACT §3 payload_json)
    raw_payloads = [
        ("non_ascii", '{"view":"caf\u00e9","chart":"\u65e5\u672c"}'),
        ("escaped_non_ascii", '{"view":"caf\\u00e9"}'),
        ("emoji", '{"view":"\U0001F600","s":"\\ud83d\\ude00"}'),
        ("lone_surrogate", '{"view":"\\ud800x"}'),
        ("control_chars", '{"v":"\\u0001\\n\\t\\r\\b\\f\\"\\\\/\\u001f\\u007f"}'),
        ("nul_in_payload_value", '{"v":"a\\u0000b"}'),
        ("line_separators_and_html", '{"v":"\\u2028\\u2029</script>&<>"}'),
        ("big_ints", '{"a":12345678901234567890123456789,"b":-98765432109876543210,"c":-0,"d":0}'),
        ("floats_repr", '{"a":1e16,"b":1e-7,"c":0.1,"d":100.0,"e":1E2,"f":-0.0,"g":1.5,'
                        '"h":123456789.125,"i":1e22,"j":1e-5,"k":0.0001,"l":5e-324,'
                        '"m":1.7976931348623157e308,"n":2.5E+3,"o":0.30000000000000004}'),
        ("float_overflow_and_specials", '{"a":1e999,"b":-1e999,"c":NaN,"d":Infinity,"e":-Infinity}'),
        ("duplicate_keys_last_wins", '{"b":1,"a":2,"b":3,"a":{"x":1},"a":4}'),
        ("sort_by_code_point", '{"b":1,"B":2,"\u00e9":3,"\uffff":4,"\U0001F600":5,"a":6,'
                               '"\ue000":7,"":8,"aa":9,"a\\u0000":10}'),
        ("bools_and_null", '{"t":true,"f":false,"n":null}'),
        ("dashboard_keys", json.dumps({"feature": "x", "surface": "s", "durationMs": 12345,
                                       "pagesViewed": 3, "errorClass": "TypeError",
                                       "referrerRoutePattern": "/a/:id"})),
        ("case_variants_of_blocked_keys_allowed", '{"Email":1,"emails":2,"userid":3,"URL":4,'
                                                  '"org_id":5,"Name":6}'),
        ("whitespace_everywhere", ' { "a" :\t1 ,\n"b"\r: null } '),
    ]
    base = json.dumps(ev(payload=DROP))[:-1]
    for name, p in raw_payloads:
        text = "[" + base + ', "payload": ' + p + "}]"
        json.loads(text)  # the fixture must be valid JSON where intended
        case("payload_" + name, raw=text)

    # -- ts variants
    good_ts = ["2026-05-25T12:00:00Z", "2026-05-25T12:00:00+02:00", "2026-05-25T12:00:00-05:30",
               "2026-05-25T12:00:00", "2026-05-25 12:00:00Z", "2026-05-25 12:00:00.5",
               "2024-02-29T23:59:59.999999-00:00",
               "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999Z",
               "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
               "2026-05-25T23:30:00-23:59", "2026-05-25T00:00:00+23:59"]
    good_ts += ["2026-05-25T12:00:00." + "123456789"[:n] + "Z" for n in range(1, 10)]
    good_ts += [1748174400, 1748174400.123, 1748174400.5, 1748174400.0000005, 1748174400.0000015,
                1748174400123, 1748174400123.5, 1748174400123.4996, 20000000000, 20000000001,
                2e10, 20000000000.5, 0, -1, -1.5, 0.0, -0.0, 1e-7, 253402300799, -62135596800,
                253402300799999, 1.7481744001234567e12]
    bad_ts = ["", "yesterday", "2026-05-25", "2026-05-25T12", "2026-13-01T00:00:00Z",
              "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-05-25T24:00:00Z",
              "2026-05-25T12:60:00Z", "2026-05-25T12:00:60Z", "2026-05-25T12:00:00+24:00",
              "2026-05-25T12:00:00+02:60", "2026-05-25T12:00:00.Z", "2026-05-25T12:00:00z",
              "2026-05-25t12:00:00Z", " 2026-05-25T12:00:00Z", "2026-05-25T12:00:00Z ",
              "2026-05-25T12:00:00+02", "2026-05-25T12:00:00+2:00", "0000-01-01T00:00:00Z",
              "2026-5-25T12:00:00Z", "20260525T120000Z", "\uff12026-05-25T12:00:00Z",
              "2026-05-25T12:00:00ZZ", "0001-01-01T00:00:00+00:01",
              "9999-12-31T23:59:59-01:00", "2026-05-25T12:00:00.123+02:00x",
              True, False, None, {}, [], [1748174400], 1e300, -1e300,
              10 ** 30, -(10 ** 30), 253402300800, -62135596801, 253402300800000,
              9223372036854775807, 9223372036854775808, -9223372036854775808]
    for i, t in enumerate(good_ts + bad_ts):
        case("ts_%02d_%s" % (i, re.sub(r"[^0-9A-Za-z]+", "_", repr(t))[:40]), [ev(ts=t)])
    case("ts_nan", raw="[" + json.dumps(ev(ts=DROP))[:-1] + ',"ts":NaN}]')
    case("ts_infinity", raw="[" + json.dumps(ev(ts=DROP))[:-1] + ',"ts":Infinity}]')
    case("ts_missing", [ev(ts=DROP)])

    # -- every event rule broken
    case("event_not_object", [5, "x", None, [], True, {}, 1.5])
    case("name_missing", [ev(name=DROP)])
    case("name_unknown", [ev(name="foo"), ev(name="Page_Viewed"), ev(name="page_viewed ")])
    case("name_wrong_types", [ev(name=5), ev(name=None), ev(name=""), ev(name=["page_viewed"])])
    for camel, snake_key in IDS:
        case("id_%s_missing" % camel, [ev(**{camel: DROP})])
        case("id_%s_empty" % camel, [ev(**{camel: ""})])
        case("id_%s_null" % camel, [ev(**{camel: None})])
        case("id_%s_int" % camel, [ev(**{camel: 7})])
        case("id_%s_snake_ok" % camel, [ev(**{camel: DROP, snake_key: "x"})])
        case("id_%s_snake_empty" % camel, [ev(**{camel: DROP, snake_key: ""})])
        case("id_%s_nul" % camel, [ev(**{camel: "a\0b"})])
    case("id_whitespace_is_nonempty", [ev(eventId=" ")])
    case("org_wrong_types", [ev(orgIdHash=5), ev(orgIdHash=True), ev(orgIdHash={}),
                             ev(orgIdHash=DROP, org_id_hash=[])])
    case("route_wrong_types", [ev(routePattern=5), ev(routePattern=[]), ev(routePattern=False),
                               ev(routePattern=DROP, route_pattern=1.5)])
    case("org_nul", [ev(orgIdHash=ORG + "\0")])
    case("route_nul", [ev(routePattern="/a\0")])
    case("payload_not_object", [ev(payload=[]), ev(payload="x"), ev(payload=None),
                                ev(payload=5), ev(payload=True)])
    case("payload_nested", [ev(payload={"a": {}}), ev(payload={"a": [1]}),
                            ev(payload={"ok": 1, "a": {"b": 1}})])
    for k in sorted(BLOCKED):
        case("blocked_key_" + k, [ev(payload={"view": "x", k: "secret"})])
    case("blocked_key_null_value", [ev(payload={"email": None})])
    case("privacy_beats_invalid_name", [ev(name="foo", payload={"email": "a@b"})])
    case("privacy_beats_nested", [ev(payload={"a": [1], "title": "t"})])
    case("privacy_beats_missing_ids", [ev(eventId=DROP, ts="bad", payload={"url": "u"})])
    case("org_mismatch", [ev(orgIdHash=OTHER_ORG)])
    case("org_match", [ev(orgIdHash=ORG)])
    case("org_mismatch_checked_last", [ev(orgIdHash=OTHER_ORG, payload=[])])
    case("mixed_entry", [ev(eventId="ok0"), ev(name="nope"), ev(eventId="ok2"),
                         ev(payload={"email": "x"}), 7, ev(eventId="ok5", ts=1748174400),
                         ev(orgIdHash=OTHER_ORG)])
    case("rejected_event_json_keeps_order_and_dups",
         raw='[{"z":1,"name":"nope","a":"\u00e9","z":2,"f":1.0,"n":-0}]')

    # -- whole-entry rules
    case("missing_events")
    case("invalid_json_truncated", raw="[{")
    case("invalid_json_empty", raw="")
    case("invalid_json_text", raw="not json")
    case("invalid_json_trailing", raw="[] []")
    case("invalid_json_single_quotes", raw="[{'a':1}]")
    case("invalid_json_trailing_comma", raw="[1,]")
    case("events_object", raw=json.dumps(ev()))
    case("events_number", raw="5")
    case("events_string", raw='"[]"')
    case("events_null", raw="null")
    case("events_empty", raw="[]")
    case("events_empty_with_spaces", raw=" [ ] ")
    # 500 valid events (the limit itself) are built in C: test_entry_of_500_events_is_accepted
    case("events_501", [{}] * 501)
    case("events_501_non_objects", [1] * 501)
    case("source_other", [ev()], source="other-app")
    case("source_empty", [ev()], source="")
    case("source_trailing_space", [ev()], source=SOURCE + " ")
    case("source_case", [ev()], source="Dev-Health-Web")
    case("source_checked_before_events", raw="[{", source="x")
    case("source_checked_before_missing_events", source="x")


def main():
    build_cases()
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cases.jsonl")
    names = set()
    with open(out, "w", encoding="ascii") as f:
        for name, fields in CASES:
            assert name not in names, name
            names.add(name)
            rows, rejections = reference(fields)
            f.write(json.dumps({"name": name, "fields": fields, "expected_rows": rows,
                                "expected_rejections": rejections},
                               separators=(",", ":")) + "\n")
    print("wrote %d cases to %s" % (len(CASES), out))


if __name__ == "__main__":
    main()
