#!/usr/bin/python3
"""bench/gen_events.py: upstream-shaped telemetry producer for the benchmarks.

Writes what the platform's API writes (CONTRACT §1): one stream entry per
batch, `XADD product-telemetry:<org hash>:events MAXLEN ~ 100000 *` with the
fields ingestion_id, source, org_id_hash and events (a JSON array of 5..50
camelCase events, serialised like the API's json.dumps). A fixed share of
events is invalid (bad name, privacy key, nested payload, missing id, org
mismatch: the rules of CONTRACT §2), so the drain's reject path is exercised.

Deterministic: the same --seed, --orgs, --events and --base-ts give the same
entries, byte for byte (ids come from the seeded generator, not uuid4()).

  gen_events.py --redis URL --events 1000000 [--orgs 20] [--invalid 0.01]
                [--min 5] [--max 50] [--seed 42] [--base-ts EPOCH]
                [--rows-out PREFIX]   also write the valid rows pre-encoded
                                      (PREFIX.jsoneachrow, PREFIX.rowbinary)
  gen_events.py --redis URL --rate 10000 --duration 60   paced producer

Prints one JSON line: {"entries", "events", "valid", "invalid", "streams", ...}.
Owns only producing; bench.py decides what to measure.
"""
import argparse
import datetime
import hashlib
import json
import random
import struct
import sys
import time
import uuid

NAMES = ["page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
         "navigation_interacted", "guide_opened", "session_started", "session_ended",
         "client_error"]
ROUTES = ["/metrics", "/dora", "/work-items", "/settings/teams", "/", "/guides/{slug}",
          "/teams/{teamId}/metrics", "/admin/telemetry"]
SCHEMA_VERSION = "2026-05-telemetry-v1"
SOURCE = "dev-health-web"
GROUP = "product-telemetry-consumers"


def org_hash(i):
    return hashlib.sha256(("bench-org-%d" % i).encode()).hexdigest()


def stream_key(h):
    return "product-telemetry:%s:events" % (h or "anonymous")


def iso_ms(epoch_ms):
    d = datetime.datetime.fromtimestamp(epoch_ms / 1000.0, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (epoch_ms % 1000)


def default_base_ts():
    """Midnight UTC today: recent enough for the 180-day retention, and the
    same all day long (so runs on one day are byte-identical)."""
    now = int(time.time())
    return now - now % 86400


class Generator:
    def __init__(self, seed=42, orgs=20, min_per_entry=5, max_per_entry=50, invalid=0.01,
                 base_ts=None):
        self.rng = random.Random(seed)
        self.orgs = [org_hash(i) for i in range(orgs)]
        self.min, self.max = min_per_entry, max_per_entry
        self.invalid = invalid
        self.base_ms = (base_ts if base_ts is not None else default_base_ts()) * 1000
        self.seq = 0
        self.sessions = ["ses_%016x" % self.rng.getrandbits(64) for _ in range(500)]
        self.users = ["anon_%04d" % i for i in range(2000)]

    def _payload(self, name):
        r = self.rng
        if name == "page_viewed":
            return {"page": r.choice(ROUTES), "referrerRoutePattern": r.choice(ROUTES)}
        if name == "feature_viewed":
            return {"feature": r.choice(["dora", "cycle_time", "wip"]), "surface": "card"}
        if name == "filter_changed":
            return {"view": "metrics", "filterKey": r.choice(["date", "team", "repo"]),
                    "valueCount": r.randint(0, 9), "isCustomDateRange": r.random() < 0.2}
        if name == "chart_interacted":
            return {"chart": "throughput", "action": r.choice(["hover", "zoom", "click"]),
                    "surface": "panel"}
        if name == "navigation_interacted":
            return {"item": r.choice(ROUTES), "group": "sidebar"}
        if name == "guide_opened":
            return {"guide": "getting-started", "scope": "org"}
        if name == "session_started":
            return {"entryRoutePattern": r.choice(ROUTES)}
        if name == "session_ended":
            return {"durationMs": r.randint(1000, 3600000), "pagesViewed": r.randint(1, 40),
                    "interactions": r.randint(0, 200), "digest": r.random() < 0.5}
        return {"boundary": "page", "errorClass": "TypeError", "routePattern": r.choice(ROUTES)}

    def event(self, org, ts_ms, event_id=None):
        """(event dict, valid?)"""
        r = self.rng
        self.seq += 1
        name = r.choice(NAMES)
        ev = {"name": name, "schemaVersion": SCHEMA_VERSION,
              "eventId": event_id or "evt_%016x" % r.getrandbits(64),
              "ts": iso_ms(ts_ms), "sessionId": r.choice(self.sessions),
              "anonymousUserId": r.choice(self.users)}
        if r.random() < 0.7:
            ev["orgIdHash"] = org
        ev["routePattern"] = r.choice(ROUTES) if r.random() < 0.9 else None
        ev["payload"] = self._payload(name)
        if r.random() >= self.invalid:
            return ev, True
        kind = r.randrange(5)
        if kind == 0:
            ev["name"] = "page_viewd"
        elif kind == 1:
            ev["payload"]["email"] = "someone@example.com"
        elif kind == 2:
            ev["payload"]["nested"] = {"a": 1}
        elif kind == 3:
            del ev["eventId"]
        else:
            ev["orgIdHash"] = org_hash(10 ** 6 + r.randrange(1000))
        return ev, False

    def entry(self, ts_ms=None, n=None, event_ids=None):
        """One stream entry: (stream key, fields, [(event, valid)])."""
        r = self.rng
        org = r.choice(self.orgs)
        n = n or r.randint(self.min, self.max)
        if ts_ms is None:
            ts_ms = self.base_ms + r.randrange(3600 * 1000)
        evs = [self.event(org, ts_ms + i, event_ids[i] if event_ids else None) for i in range(n)]
        fields = {"ingestion_id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
                  "source": SOURCE, "org_id_hash": org,
                  "events": json.dumps([e for e, _ in evs])}
        return stream_key(org), fields, evs


# ---- Rows pre-encoded for the ClickHouse raw-ingest baseline ---------------------

def row_values(ev, entry_org, ingested_s):
    """The row CONTRACT §3 maps a valid event to (legacy 18.16 table: DateTime)."""
    ts = ev["ts"]
    occurred = int(datetime.datetime.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
                   .replace(tzinfo=datetime.timezone.utc).timestamp())
    return (ev.get("orgIdHash") or entry_org or "", ev["eventId"], ev["name"],
            ev["schemaVersion"], ev["sessionId"], ev["anonymousUserId"], ev.get("routePattern"),
            json.dumps(ev.get("payload", {}), sort_keys=True, separators=(",", ":")),
            occurred, ingested_s, SOURCE)


COLS = ["org_id_hash", "event_id", "name", "schema_version", "session_id", "anonymous_user_id",
        "route_pattern", "payload_json", "occurred_at", "ingested_at", "source"]


def fmt_dt(s):
    return datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def encode_json(v):
    d = dict(zip(COLS, v))
    d["occurred_at"] = fmt_dt(v[8])
    d["ingested_at"] = fmt_dt(v[9])
    return (json.dumps(d, separators=(",", ":")) + "\n").encode()


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _str(s):
    b = s.encode()
    return _varint(len(b)) + b


def encode_rowbinary(v):
    out = [_str(v[0]), _str(v[1]), _str(v[2]), _str(v[3]), _str(v[4]), _str(v[5])]
    out.append(b"\x01" if v[6] is None else b"\x00" + _str(v[6]))
    out.append(_str(v[7]))
    out.append(struct.pack("<II", v[8], v[9]))
    out.append(_str(v[10]))
    return b"".join(out)


# ---- Redis -----------------------------------------------------------------------

def connect(url):
    import redis
    return redis.Redis.from_url(url)


def load(r, gen, events, rows_out=None, pipeline_size=200):
    """XADD entries until `events` events are written. Returns the manifest."""
    stats = {"entries": 0, "events": 0, "valid": 0, "invalid": 0, "bytes": 0}
    streams = set()
    jf = bf = None
    if rows_out:
        jf = open(rows_out + ".jsoneachrow", "wb")
        bf = open(rows_out + ".rowbinary", "wb")
        ingested = int(time.time())
    pipe = r.pipeline(transaction=False)
    pending = 0
    while stats["events"] < events:
        n = min(gen.rng.randint(gen.min, gen.max), events - stats["events"])
        key, fields, evs = gen.entry(n=n)
        pipe.xadd(key, fields, maxlen=100000, approximate=True)
        pending += 1
        streams.add(key)
        stats["entries"] += 1
        stats["events"] += len(evs)
        stats["bytes"] += len(fields["events"])
        for ev, ok in evs:
            if ok:
                stats["valid"] += 1
                if jf:
                    v = row_values(ev, fields["org_id_hash"], ingested)
                    jf.write(encode_json(v))
                    bf.write(encode_rowbinary(v))
            else:
                stats["invalid"] += 1
        if pending >= pipeline_size:
            pipe.execute()
            pending = 0
    if pending:
        pipe.execute()
    if jf:
        jf.close()
        bf.close()
    stats["streams"] = len(streams)
    return stats


def produce_paced(r, gen, rate, duration, on_entry=None, tick=0.01):
    """Paced producer: `rate` events/s for `duration` s, entries of gen.min..max
    events, eventIds "evt_<seq:016d>" so a reader can map an id to its send
    time. on_entry(t_send, first_seq, n, valid_flags) is called per entry."""
    t0 = time.time()
    sent = 0
    seq = 0
    pipe = r.pipeline(transaction=False)
    while True:
        now = time.time()
        if now - t0 >= duration:
            break
        due = int((now - t0) * rate)
        batch = []
        while sent < due:
            n = gen.rng.randint(gen.min, gen.max)
            ids = ["evt_%016d" % (seq + i) for i in range(n)]
            key, fields, evs = gen.entry(ts_ms=int(now * 1000), n=n, event_ids=ids)
            pipe.xadd(key, fields, maxlen=100000, approximate=True)
            batch.append((seq, n, [ok for _, ok in evs]))
            seq += n
            sent += n
        if batch:
            pipe.execute()
            t_send = time.time()
            if on_entry:
                for first, n, flags in batch:
                    on_entry(t_send, first, n, flags)
        time.sleep(tick)
    return {"events": sent, "duration": time.time() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis", required=True)
    ap.add_argument("--events", type=int, default=1000000)
    ap.add_argument("--orgs", type=int, default=20)
    ap.add_argument("--min", type=int, default=5)
    ap.add_argument("--max", type=int, default=50)
    ap.add_argument("--invalid", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--base-ts", type=int, default=None)
    ap.add_argument("--rows-out", default=None)
    ap.add_argument("--rate", type=float, default=None)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--flush", action="store_true", help="FLUSHDB first")
    a = ap.parse_args()
    gen = Generator(a.seed, a.orgs, a.min, a.max, a.invalid, a.base_ts)
    r = connect(a.redis)
    if a.flush:
        r.flushdb()
    t0 = time.time()
    if a.rate:
        res = produce_paced(r, gen, a.rate, a.duration)
    else:
        res = load(r, gen, a.events, a.rows_out)
    res["seconds"] = round(time.time() - t0, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    sys.exit(main())
