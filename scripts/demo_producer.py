#!/usr/bin/python3
"""scripts/demo_producer.py: demo telemetry for scripts/run.

  demo_producer.py produce --redis-url URL [--org-id ID] [--seed N] [--sessions N]
                           [--days N] [--expect-out FILE]
      Write upstream-shaped product telemetry, as the platform's API does
      (telemetry/CONTRACT.md section 1): one XADD per browser batch to
      product-telemetry:<sha256(org id)>:events MAXLEN ~ 100000 with the
      fields ingestion_id (uuid4), source (dev-health-web), org_id_hash and
      events (a JSON array). The events are browsing sessions that cover every
      dashboard section (page_viewed, feature_viewed, filter_changed,
      chart_interacted, client_error, session_ended, plus session_started,
      navigation_interacted and guide_opened), timestamped within the last
      --days days, and a few invalid events that the worker dead-letters.
      Prints one summary line; with --expect-out, writes what the dashboard
      must show for these events as JSON (the keys of `ptel-worker report
      --json`, plus "written": events/entries/invalid counts).

  demo_producer.py drain --broker-url URL [--backend-url URL] [--timeout S]
      Trigger one drain exactly as the platform's Celery beat does, through
      the Python Celery client: send_task(
      'dev_health_ops.workers.tasks.run_product_telemetry_consumer',
      kwargs={'max_iterations': 50}, queue='ingest'), wait for the result and
      print it as JSON. Exit 1 if the task failed or timed out.

Deterministic: the same --seed writes the same events, ids and uuids (the
timestamps are relative to now). Only Debian's python3-redis and
python3-celery: run it with /usr/bin/python3.
"""

import argparse
import hashlib
import json
import random
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone

SOURCE = "dev-health-web"
SCHEMA_VERSION = "2026-05-telemetry-v1"
MAXLEN = 100000
TASK = "dev_health_ops.workers.tasks.run_product_telemetry_consumer"

ROUTES = ("/", "/metrics", "/metrics/:id", "/teams/:team", "/work", "/investment",
          "/settings", "/guides")
ROUTE_WEIGHTS = (10, 14, 8, 6, 7, 4, 2, 2)
# What a route's page offers: features shown, filter views, charts.
FEATURES = {"/": ("home-digest",), "/metrics": ("heatmap", "dora"),
            "/metrics/:id": ("cycle-time", "dora"), "/teams/:team": ("flow",),
            "/work": ("flow", "wip"), "/investment": ("investment",)}
SURFACES = ("page", "sidebar", "modal")
VIEWS = {"/metrics": "metrics", "/metrics/:id": "metrics", "/teams/:team": "teams",
         "/work": "work", "/investment": "investment"}
FILTER_KEYS = ("date", "team", "repo", "author")
CHARTS = {"/metrics": ("throughput", "lead-time"), "/metrics/:id": ("lead-time",),
          "/teams/:team": ("burnup",), "/investment": ("allocation",)}
ACTIONS = ("hover", "zoom", "export")
BOUNDARIES = ("root", "chart", "panel")
ERROR_CLASSES = ("TypeError", "ChunkLoadError", "NetworkError")


def org_hash(org_id):
    """sha256 hex of the org id, as the API computes org_id_hash."""
    return hashlib.sha256(str(org_id).encode()).hexdigest()


def iso(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Session:
    """One browser session: events in time order, ending with session_ended."""

    def __init__(self, rng, org, user, start):
        self.rng, self.org, self.user, self.t = rng, org, user, start
        self.id = f"ses_{rng.getrandbits(64):016x}"
        self.events = []
        self.pages = self.interactions = 0

    def add(self, name, payload, route=None):
        self.t += self.rng.uniform(0.4, 40.0)
        ev = {"name": name, "schemaVersion": SCHEMA_VERSION,
              "eventId": f"evt_{self.rng.getrandbits(64):016x}", "ts": iso(self.t),
              "sessionId": self.id, "anonymousUserId": self.user, "orgIdHash": self.org,
              "routePattern": route, "payload": payload}
        self.events.append(ev)
        return ev

    def browse(self):
        rng = self.rng
        self.start_t = self.t
        entry = rng.choices(ROUTES, ROUTE_WEIGHTS)[0]
        self.add("session_started", {"entryRoutePattern": entry}, entry)
        prev, route = None, entry
        for _ in range(rng.randint(1, 6)):
            self.add("page_viewed", {"referrerRoutePattern": prev}, route)
            self.pages += 1
            for feature in FEATURES.get(route, ()):
                if rng.random() < 0.7:
                    self.add("feature_viewed", {"feature": feature,
                                                "surface": rng.choice(SURFACES)}, route)
            if route in VIEWS:
                for _ in range(rng.randint(0, 2)):
                    key = rng.choice(FILTER_KEYS)
                    self.add("filter_changed", {"view": VIEWS[route], "filterKey": key,
                                                "valueCount": rng.randint(1, 5),
                                                "isCustomDateRange": key == "date"
                                                and rng.random() < 0.3}, route)
                    self.interactions += 1
            for chart in CHARTS.get(route, ()):
                if rng.random() < 0.6:
                    self.add("chart_interacted", {"chart": chart, "action": rng.choice(ACTIONS),
                                                  "surface": rng.choice(SURFACES[:2])}, route)
                    self.interactions += 1
            if route == "/guides" and rng.random() < 0.8:
                self.add("guide_opened", {"guide": rng.choice(("getting-started", "dora"))},
                         route)
            if rng.random() < 0.08:
                self.add("client_error", {"boundary": rng.choice(BOUNDARIES),
                                          "errorClass": rng.choice(ERROR_CLASSES)}, route)
            nxt = rng.choices(ROUTES, ROUTE_WEIGHTS)[0]
            self.add("navigation_interacted", {"item": nxt, "group": "sidebar"}, route)
            self.interactions += 1
            prev, route = route, nxt
        self.add("session_ended", {"durationMs": int((self.t - self.start_t) * 1000) + 1000,
                                   "pagesViewed": self.pages,
                                   "interactions": self.interactions}, route)


def invalid_events(rng, org, now):
    """Events the worker must dead-letter, one per rule, each with its reason."""
    def base(name, payload):
        return {"name": name, "schemaVersion": SCHEMA_VERSION,
                "eventId": f"evt_bad_{rng.getrandbits(48):012x}", "ts": iso(now - 3600),
                "sessionId": "ses_demo_invalid", "anonymousUserId": "anon_9999",
                "orgIdHash": org, "routePattern": "/metrics", "payload": payload}
    privacy = base("feature_viewed", {"feature": "heatmap", "surface": "page",
                                      "email": "someone@example.com"})
    unknown = base("button_clicked", {"button": "export"})
    nested = base("filter_changed", {"view": "metrics", "filterKey": "date",
                                     "range": {"from": "2026-05-01"}})
    no_session = base("page_viewed", {})
    del no_session["sessionId"]
    other_org = base("page_viewed", {})
    other_org["orgIdHash"] = org_hash("some-other-org")
    return [privacy, unknown, nested, no_session, other_org]


def percentile(sorted_vals, level):
    """ClickHouse quantile()'s linear interpolation, truncated to an integer
    as the report prints it."""
    if not sorted_vals:
        return None
    idx = level * (len(sorted_vals) - 1)
    lo = int(idx)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return int(sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (idx - lo))


def expected_sections(events):
    """What `ptel-worker report --json` must show for these (valid) events."""
    daily = defaultdict(set)
    routes = defaultdict(lambda: [0, set(), set()])
    features = defaultdict(lambda: [0, set()])
    filters = defaultdict(lambda: [0, 0])
    charts = defaultdict(lambda: [0, set()])
    errors = defaultdict(lambda: [0, set()])
    durations, pages, inter = [], [], []
    for ev in events:
        p, user, ses = ev["payload"], ev["anonymousUserId"], ev["sessionId"]
        daily[ev["ts"][:10]].add(user)
        name = ev["name"]
        if name == "page_viewed":
            r = routes[ev["routePattern"] or ""]
            r[0] += 1
            r[1].add(ses)
            r[2].add(user)
        elif name == "feature_viewed":
            f = features[(p["feature"], p["surface"])]
            f[0] += 1
            f[1].add(user)
        elif name == "filter_changed":
            f = filters[(p["view"], p["filterKey"])]
            f[0] += 1
            f[1] += p["valueCount"]
        elif name == "chart_interacted":
            c = charts[(p["chart"], p["action"], p["surface"])]
            c[0] += 1
            c[1].add(ses)
        elif name == "client_error":
            e = errors[(ev["routePattern"] or "", p["boundary"], p["errorClass"])]
            e[0] += 1
            e[1].add(user)
        elif name == "session_ended":
            durations.append(p["durationMs"])
            pages.append(p["pagesViewed"])
            inter.append(p["interactions"])
    durations.sort()
    by_count = lambda item: (-item[1][0], item[0])  # noqa: E731  events desc, then keys
    return {
        "daily_active_users": [{"day": d, "active_anonymous_users": len(u)}
                               for d, u in sorted(daily.items())],
        "top_routes": [{"route_pattern": k, "events": v[0], "sessions": len(v[1]),
                        "anonymous_users": len(v[2])}
                       for k, v in sorted(routes.items(), key=by_count)][:25],
        "feature_views": [{"feature": k[0], "surface": k[1], "views": v[0],
                           "anonymous_users": len(v[1])}
                          for k, v in sorted(features.items(), key=by_count)],
        "filter_changes": [{"view": k[0], "filter_key": k[1], "changes": v[0],
                            "avg_value_count": v[1] / v[0]}
                           for k, v in sorted(filters.items(), key=by_count)],
        "chart_interactions": [{"chart": k[0], "action": k[1], "surface": k[2],
                                "interactions": v[0], "sessions": len(v[1])}
                               for k, v in sorted(charts.items(), key=by_count)],
        "client_errors": [{"route_pattern": k[0], "boundary": k[1], "error_class": k[2],
                           "errors": v[0], "affected_anonymous_users": len(v[1])}
                          for k, v in sorted(errors.items(), key=by_count)],
        "session_summary": {
            "p50_duration_ms": percentile(durations, 0.5),
            "p75_duration_ms": percentile(durations, 0.75),
            "p90_duration_ms": percentile(durations, 0.9),
            "p95_duration_ms": percentile(durations, 0.95),
            "avg_pages_viewed": sum(pages) / len(pages) if pages else None,
            "avg_interactions": sum(inter) / len(inter) if inter else None,
        },
    }


def produce(args):
    import redis

    rng = random.Random(args.seed)
    org = org_hash(args.org_id)
    stream = f"product-telemetry:{org}:events"
    now = time.time() - 120          # nothing in the future, even with a skewed clock
    users = [f"anon_{i:04d}" for i in range(max(3, args.sessions // 3))]
    sessions = []
    for _ in range(args.sessions):
        # Start early enough that the whole session (at most ~1 h) is in the past.
        start = now - 4000 - rng.uniform(0, args.days * 86400 - 4000)
        s = Session(rng, org, rng.choice(users), start)
        s.browse()
        sessions.append(s)
    valid = [ev for s in sessions for ev in s.events]

    # The browser flushes a session in one to three batches; the invalid
    # events ride along in a few of them (the valid ones there are stored).
    batches = []
    for s in sessions:
        evs = s.events
        cuts = sorted(rng.sample(range(1, len(evs)), min(len(evs) - 1, rng.randint(0, 2))))
        for a, b in zip([0] + cuts, cuts + [len(evs)]):
            batches.append(list(evs[a:b]))
    bad = invalid_events(rng, org, now)
    for ev in bad:
        rng.choice(batches).insert(0, ev)
    rng.shuffle(batches)

    client = redis.Redis.from_url(args.redis_url)
    pipe = client.pipeline(transaction=False)
    for batch in batches:
        pipe.xadd(stream, {"ingestion_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                           "source": SOURCE, "org_id_hash": org,
                           "events": json.dumps(batch, separators=(",", ":"))},
                  maxlen=MAXLEN, approximate=True)
    pipe.execute()

    written = {"org_id": args.org_id, "org_id_hash": org, "stream": stream, "seed": args.seed,
               "entries": len(batches), "events": len(valid) + len(bad),
               "valid_events": len(valid), "invalid_events": len(bad),
               "sessions": len(sessions), "users": len({s.user for s in sessions})}
    if args.expect_out:
        with open(args.expect_out, "w") as fh:
            json.dump({"written": written, **expected_sections(valid)}, fh, indent=1)
            fh.write("\n")
    print(f"wrote {written['events']} events ({written['invalid_events']} invalid) from "
          f"{written['sessions']} sessions of {written['users']} users in "
          f"{written['entries']} entries to {stream}")
    return 0


def drain(args):
    from celery import Celery

    app = Celery("ptel-demo", broker=args.broker_url, backend=args.backend_url or args.broker_url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    res = app.send_task(TASK, kwargs={"max_iterations": args.max_iterations}, queue="ingest")
    try:
        value = res.get(timeout=args.timeout)
    except Exception as exc:  # noqa: BLE001  TimeoutError, the task's own failure
        print(f"drain task {res.id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        app.close()
    print(json.dumps(value, sort_keys=True))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--org-id", default="demo-org")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--sessions", type=int, default=40)
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--expect-out")
    d = sub.add_parser("drain")
    d.add_argument("--broker-url", required=True)
    d.add_argument("--backend-url")
    d.add_argument("--max-iterations", type=int, default=50)
    d.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    return produce(args) if args.cmd == "produce" else drain(args)


if __name__ == "__main__":
    sys.exit(main())
