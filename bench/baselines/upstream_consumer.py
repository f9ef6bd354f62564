#!/usr/bin/python3
"""bench/baselines/upstream_consumer.py: the platform's Python telemetry
consumer, as CONTRACT §1-§3 describe it, to measure what users run today.

Algorithm (one loop iteration): SCAN the product-telemetry:*:events streams,
ensure the consumer group, XREADGROUP COUNT 100 BLOCK 5000 over all streams;
per entry: json.loads the events, validate every event (CONTRACT §2), one
ClickHouse HTTP insert (JSONEachRow over http.client, keep-alive) of the
entry's valid rows, an upstream-shaped DLQ record per rejected event; then
XACK everything the read returned.

Benchmark knobs: --until-empty stops at the first read that returns nothing
(the elapsed time excludes that last empty BLOCK wait), --max-events stops
once that many events were handled. Prints one JSON line:
{"processed", "rejected", "entries", "seconds", "events_per_s", "maxrss_kb"}.
Uses python3-redis (Debian) and the standard library only.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import resource
import socket
import sys
import time
import urllib.parse

import redis

GROUP = "product-telemetry-consumers"
PATTERN = "product-telemetry:*:events"
DLQ = "product-telemetry:dlq"
NAMES = {"page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
         "navigation_interacted", "guide_opened", "session_started", "session_ended",
         "client_error"}
BLOCKED = {"email", "name", "userId", "orgId", "url", "query", "search", "stack", "message",
           "title", "body"}
ALIASES = {"schemaVersion": "schema_version", "eventId": "event_id", "sessionId": "session_id",
           "anonymousUserId": "anonymous_user_id", "orgIdHash": "org_id_hash",
           "routePattern": "route_pattern"}
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


class Invalid(Exception):
    pass


def get(ev, key):
    if key in ev:
        return ev[key]
    return ev.get(ALIASES.get(key, key))


def parse_ts(ts):
    if isinstance(ts, bool):
        raise Invalid("invalid_ts")
    if isinstance(ts, (int, float)):
        if ts > 2e10:
            ts = ts / 1000.0
        return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    if not isinstance(ts, str) or not ISO.match(ts):
        raise Invalid("invalid_ts")
    d = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.astimezone(datetime.timezone.utc)


def validate(ev, entry_org):
    """One event -> the row dict (CONTRACT §3) or Invalid(reason)."""
    if not isinstance(ev, dict):
        raise Invalid("event_not_object")
    payload = ev.get("payload", {})
    if not isinstance(payload, dict):
        raise Invalid("invalid_payload")
    if BLOCKED.intersection(payload):
        raise Invalid("blocked_key")
    if ev.get("name") not in NAMES:
        raise Invalid("invalid_name")
    for k in ("schemaVersion", "eventId", "sessionId", "anonymousUserId"):
        v = get(ev, k)
        if not isinstance(v, str) or not v:
            raise Invalid("missing_field: " + k)
    occurred = parse_ts(ev.get("ts"))
    org = get(ev, "orgIdHash")
    route = get(ev, "routePattern")
    if org is not None and not isinstance(org, str):
        raise Invalid("invalid_org_id_hash")
    if route is not None and not isinstance(route, str):
        raise Invalid("invalid_route_pattern")
    for v in payload.values():
        if isinstance(v, (dict, list)):
            raise Invalid("nested_payload")
    if org and entry_org and org != entry_org:
        raise Invalid("org_mismatch")
    return {"org_id_hash": org or entry_org or "", "event_id": get(ev, "eventId"),
            "name": ev["name"], "schema_version": get(ev, "schemaVersion"),
            "session_id": get(ev, "sessionId"), "anonymous_user_id": get(ev, "anonymousUserId"),
            "route_pattern": route,
            "payload_json": json.dumps(payload, sort_keys=True, separators=(",", ":")),
            "occurred_at": occurred}


class ClickHouse:
    def __init__(self, url, table):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 8123
        db = (u.path or "/").strip("/") or "default"
        self.path = "/?" + urllib.parse.urlencode(
            {"database": db, "query": "INSERT INTO %s FORMAT JSONEachRow" % table})
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.ms = self._has_datetime64(db, table)

    def _has_datetime64(self, db, table):
        q = urllib.parse.urlencode({"database": db})
        self.conn.request("POST", "/?" + q, body=("DESCRIBE TABLE %s" % table).encode())
        r = self.conn.getresponse()
        return "DateTime64" in r.read().decode()

    def fmt(self, d):
        s = d.strftime("%Y-%m-%d %H:%M:%S")
        return s + ".%03d" % (d.microsecond // 1000) if self.ms else s

    def insert(self, rows):
        now = self.fmt(datetime.datetime.now(datetime.timezone.utc))
        lines = []
        for row in rows:
            row["occurred_at"] = self.fmt(row["occurred_at"])
            row["ingested_at"] = now
            row["source"] = row.pop("_source")
            lines.append(json.dumps(row))
        body = ("\n".join(lines) + "\n").encode()
        self.conn.request("POST", self.path, body=body)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError("ClickHouse insert failed: %d %s" % (r.status, data[:300]))


def discover(r):
    streams = []
    for key in r.scan_iter(match=PATTERN, count=1000, _type="STREAM"):
        key = key.decode()
        try:
            r.xgroup_create(key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        streams.append(key)
    return streams


def process_entry(r, ch, stream, entry_id, fields, counters):
    f = {k.decode(): v.decode() for k, v in fields.items()}
    source = f.get("source", "dev-health-web")
    try:
        if source != "dev-health-web":
            raise Invalid("invalid_source")
        events = json.loads(f["events"])
        if not isinstance(events, list) or not 1 <= len(events) <= 500:
            raise Invalid("invalid_events")
    except (Invalid, KeyError, ValueError) as e:
        dead_letter(r, stream, entry_id, "entry: %s" % e)
        counters["rejected"] += 1
        return
    rows = []
    for i, ev in enumerate(events):
        try:
            row = validate(ev, f.get("org_id_hash", ""))
        except (Invalid, ValueError, OverflowError) as e:
            dead_letter(r, stream, entry_id, "event %d: %s" % (i, e))
            counters["rejected"] += 1
            continue
        row["_source"] = source
        rows.append(row)
    if rows:
        ch.insert(rows)
        counters["processed"] += len(rows)


def dead_letter(r, stream, entry_id, reason):
    r.xadd(DLQ, {"original_stream": stream, "entry_id": entry_id, "reason": reason,
                 "moved_at": repr(time.time())}, maxlen=100000, approximate=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    ap.add_argument("--clickhouse", default=os.environ.get("CLICKHOUSE_URL",
                                                           "http://localhost:8123/default"))
    ap.add_argument("--table", default="product_telemetry_events")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--block", type=int, default=5000)
    ap.add_argument("--until-empty", action="store_true")
    ap.add_argument("--max-events", type=int, default=0)
    a = ap.parse_args()
    r = redis.Redis.from_url(a.redis)
    ch = ClickHouse(a.clickhouse, a.table)
    consumer = "%s-%d" % (socket.gethostname(), os.getpid())
    streams = discover(r)
    counters = {"processed": 0, "rejected": 0, "entries": 0}
    t0 = time.perf_counter()
    t_last = t0
    while True:
        resp = r.xreadgroup(GROUP, consumer, {s: ">" for s in streams}, count=a.count,
                            block=a.block)
        if not resp:
            if a.until_empty:
                break
            streams = discover(r)
            continue
        for stream, entries in resp:
            stream = stream.decode()
            ids = []
            for entry_id, fields in entries:
                entry_id = entry_id.decode()
                process_entry(r, ch, stream, entry_id, fields, counters)
                counters["entries"] += 1
                ids.append(entry_id)
            r.xack(stream, GROUP, *ids)
        t_last = time.perf_counter()
        if a.max_events and counters["processed"] + counters["rejected"] >= a.max_events:
            break
    secs = t_last - t0
    counters["seconds"] = round(secs, 4)
    counters["events_per_s"] = round((counters["processed"] + counters["rejected"]) / secs, 1) \
        if secs > 0 else None
    counters["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(counters))


if __name__ == "__main__":
    sys.exit(main())
