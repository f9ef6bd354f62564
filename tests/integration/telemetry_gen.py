"""telemetry_gen: an upstream-shaped product-telemetry producer and the
expectation model the drain tests compare ClickHouse and the DLQ against.

The producer writes what the platform's API writes (telemetry/CONTRACT.md
§1): one XADD per batch to product-telemetry:<org_id_hash or anonymous>:events
with MAXLEN ~ 100000 and the fields ingestion_id (uuid4), source
(dev-health-web), org_id_hash (sha256 hex of the org id, or '') and events
(a JSON array). Events are handed over as raw JSON text, so literals such as
1E2 and duplicate keys reach the stream exactly as written.

The model is the Python reference (CONTRACT §3): for every event the
producer writes it records either the row the drain must store (payload_json
= json.dumps(payload, sort_keys=True, separators=(",", ":")) over Python's
own json.loads of the raw text) or the DLQ record it must produce (reason
code, error_class, event_index). Invalid events are built on purpose by
`break_event`, so the expected code is known, never guessed.

Only the standard library and Debian's python3-redis: run with /usr/bin/python3.
"""

import hashlib
import json
import math
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

SOURCE = "dev-health-web"
GROUP = "product-telemetry-consumers"
DLQ_KEY = "product-telemetry:dlq"
STREAM_PATTERN = "product-telemetry:*:events"
TASK = "dev_health_ops.workers.tasks.run_product_telemetry_consumer"
TABLE = "product_telemetry_events"
MAXLEN = 100000
SCHEMA_VERSION = "2026-05-telemetry-v1"

EVENT_NAMES = ("page_viewed", "feature_viewed", "filter_changed", "chart_interacted",
               "navigation_interacted", "guide_opened", "session_started", "session_ended",
               "client_error")
BLOCKED_KEYS = ("email", "name", "userId", "orgId", "url", "query", "search", "stack",
                "message", "title", "body")

ROUTES = ("/", "/metrics", "/metrics/:id", "/teams/:team", "/settings", "/guides", "/work")
FEATURES = ("heatmap", "cycle-time", "dora", "investment", "flow")
SURFACES = ("sidebar", "page", "modal", "toolbar")
VIEWS = ("metrics", "teams", "work")
FILTER_KEYS = ("date", "team", "repo", "author")
CHARTS = ("throughput", "lead-time", "burnup")
ACTIONS = ("hover", "zoom", "legend-toggle", "export")
BOUNDARIES = ("root", "chart", "panel")
ERROR_CLASSES = ("TypeError", "ChunkLoadError", "NetworkError")


def org_hash(org_id):
    """sha256 hex of the org id, as the API computes org_id_hash."""
    return hashlib.sha256(str(org_id).encode()).hexdigest()


def stream_for(org_id_hash):
    return f"product-telemetry:{org_id_hash or 'anonymous'}:events"


def py_payload_json(payload):
    """CONTRACT §3: the reference serialisation of a payload."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def py_event_json(event):
    """What a DLQ record's events holds for one rejected event (telemetry.h)."""
    return json.dumps(event, separators=(",", ":"))


# ---- timestamps ----------------------------------------------------------------

def ts_to_us(ts):
    """The reference reading of `ts` (CONTRACT §2): ISO-8601 (naive = UTC) or
    epoch seconds, milliseconds above 2e10; microseconds since the epoch."""
    if isinstance(ts, bool):
        raise ValueError("bool is not a timestamp")
    if isinstance(ts, str):
        dt = datetime.fromisoformat(ts)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(ts, int):
        return ts * 1000 if ts > 2e10 else ts * 1_000_000
    if isinstance(ts, float):
        return int(round(ts * 1e3)) if ts > 2e10 else int(round(ts * 1e6))
    raise ValueError(f"not a timestamp: {ts!r}")


def iso_ms(us, offset_minutes=0, z=True):
    """An ISO-8601 text for us with millisecond precision, in a given offset."""
    tz = timezone(timedelta(minutes=offset_minutes))
    dt = datetime.fromtimestamp(us // 1_000_000, tz) + timedelta(microseconds=us % 1_000_000)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 1000:03d}"
    if offset_minutes == 0 and z:
        return text + "Z"
    sign = "+" if offset_minutes >= 0 else "-"
    m = abs(offset_minutes)
    return text + f"{sign}{m // 60:02d}:{m % 60:02d}"


def recent_base_us(days_ago=20):
    """Midnight UTC `days_ago` days before today: inside the 180-day
    retention the worker enforces on legacy servers (CONTRACT §4)."""
    today = datetime.now(timezone.utc).date()
    d = today - timedelta(days=days_ago)
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * 1_000_000


# ---- model -----------------------------------------------------------------------

@dataclass
class ExpectedRow:
    org_id_hash: str
    event_id: str
    name: str
    schema_version: str
    session_id: str
    anonymous_user_id: str
    route_pattern: Optional[str]
    payload_json: str
    occurred_at_us: int
    source: str
    stream: str = ""
    entry_id: str = ""
    event_index: int = 0
    payload: dict = field(default_factory=dict)   # Python's parse, for the dashboard model


@dataclass
class ExpectedRejection:
    stream: str
    entry_id: str
    event_index: Optional[int]     # None: the whole entry
    code: str
    error_class: str
    events_text: Optional[str]     # exact text expected in the record's events, if known
    events_value: object           # parsed value expected in events
    ingestion_id: str
    source: str
    org_id_hash: str


@dataclass
class Entry:
    stream: str
    entry_id: str
    fields: dict
    n_rows: int
    n_rejections: int


def _pick(ev, camel, snake):
    """camelCase wins when present, whatever its value (telemetry.h)."""
    if camel in ev:
        return ev[camel]
    return ev.get(snake)


def reference_row(ev, entry_org, entry_source):
    """The row CONTRACT §3 makes of a valid event `ev` (Python's parse of it)."""
    org = _pick(ev, "orgIdHash", "org_id_hash")
    if not (isinstance(org, str) and org):
        org = entry_org if entry_org is not None else ""
    route = _pick(ev, "routePattern", "route_pattern")
    payload = ev.get("payload", {})
    return ExpectedRow(
        org_id_hash=org,
        event_id=_pick(ev, "eventId", "event_id"),
        name=ev["name"],
        schema_version=_pick(ev, "schemaVersion", "schema_version"),
        session_id=_pick(ev, "sessionId", "session_id"),
        anonymous_user_id=_pick(ev, "anonymousUserId", "anonymous_user_id"),
        route_pattern=route,
        payload_json=py_payload_json(payload),
        occurred_at_us=ts_to_us(ev["ts"]),
        source=entry_source if entry_source is not None else SOURCE,
        payload=payload,
    )


class Model:
    """Everything the producer wrote, and what the drain must make of it."""

    def __init__(self):
        self.rows = {}          # (org_id_hash, event_id) -> ExpectedRow
        self.rejections = []    # ExpectedRejection
        self.entries = []       # Entry

    @property
    def streams(self):
        return sorted({e.stream for e in self.entries})

    def counters(self):
        """The task result the drain must return for exactly this model
        (one run that drains everything, no persistence failures)."""
        n = len(self.rejections)
        return {"processed": len(self.rows), "rejected": n, "dead_lettered": n,
                "reclaimed": 0, "entries": len(self.entries), "streams": len(self.streams)}

    def rows_for(self, org):
        return [r for r in self.rows.values() if r.org_id_hash == org]


# ---- events ----------------------------------------------------------------------

class EventSpec:
    """One event as raw JSON text plus what must become of it: a row (valid)
    or a rejection (code, error_class)."""

    def __init__(self, text, code=None, error_class=None):
        self.text = text
        self.code = code
        self.error_class = error_class

    @property
    def valid(self):
        return self.code is None

    @classmethod
    def of(cls, obj, code=None, error_class=None, ensure_ascii=True):
        return cls(json.dumps(obj, ensure_ascii=ensure_ascii, separators=(",", ":")), code,
                   error_class)


class Gen:
    """Deterministic event factory (seeded)."""

    def __init__(self, seed=1, base_us=None, days=25):
        self.rng = random.Random(seed)
        self.base_us = base_us if base_us is not None else recent_base_us(days + 2)
        self.days = days
        self.n = 0

    def event_id(self):
        self.n += 1
        return f"evt_{self.n:06d}_{self.rng.getrandbits(48):012x}"

    def ts_us(self):
        return self.base_us + self.rng.randrange(self.days * 86400 * 1000) * 1000

    def payload_for(self, name):
        r = self.rng
        if name == "page_viewed":
            return {"page": r.choice(ROUTES), "referrerRoutePattern": r.choice(ROUTES)}
        if name == "feature_viewed":
            return {"feature": r.choice(FEATURES), "surface": r.choice(SURFACES)}
        if name == "filter_changed":
            return {"view": r.choice(VIEWS), "filterKey": r.choice(FILTER_KEYS),
                    "valueCount": r.randrange(0, 9), "isCustomDateRange": r.random() < 0.3}
        if name == "chart_interacted":
            return {"chart": r.choice(CHARTS), "action": r.choice(ACTIONS),
                    "surface": r.choice(SURFACES)}
        if name == "client_error":
            return {"boundary": r.choice(BOUNDARIES), "errorClass": r.choice(ERROR_CLASSES)}
        if name == "session_ended":
            return {"durationMs": r.randrange(1000, 3_600_000), "pagesViewed": r.randrange(1, 40),
                    "interactions": r.randrange(0, 300)}
        if name == "guide_opened":
            return {"guide": r.choice(("intro", "dora", "flow")), "scope": "org"}
        if name == "navigation_interacted":
            return {"group": r.choice(("main", "admin")), "item": r.choice(("home", "teams"))}
        return {"entryRoutePattern": r.choice(ROUTES)}

    def event(self, name=None, org=None, session=None, user=None, ts_us=None, route="auto",
              payload=None, style="camel", ts_form="iso"):
        """A valid event dict (not yet text)."""
        r = self.rng
        name = name or r.choice(EVENT_NAMES)
        ts_us = self.ts_us() if ts_us is None else ts_us
        if ts_form == "iso":
            ts = iso_ms(ts_us)
        elif ts_form == "offset":
            ts = iso_ms(ts_us, offset_minutes=r.choice((120, -330, 345, -60)))
        elif ts_form == "epoch_s":
            ts = ts_us // 1_000_000
        elif ts_form == "epoch_s_float":
            ts = (ts_us // 1000) / 1000.0
        elif ts_form == "epoch_ms":
            ts = ts_us // 1000
        else:
            raise ValueError(ts_form)
        if route == "auto":
            route = r.choice(ROUTES + (None,))
        ev = {"name": name, "ts": ts}
        keys = ("schemaVersion", "eventId", "sessionId", "anonymousUserId", "routePattern",
                "orgIdHash") if style == "camel" else (
                "schema_version", "event_id", "session_id", "anonymous_user_id", "route_pattern",
                "org_id_hash")
        ev[keys[0]] = SCHEMA_VERSION
        ev[keys[1]] = self.event_id()
        ev[keys[2]] = session or f"ses_{r.getrandbits(40):010x}"
        ev[keys[3]] = user or f"anon_{r.randrange(10000):04d}"
        if route is not None or r.random() < 0.5:
            ev[keys[4]] = route              # null or absent when None
        if org is not None:
            ev[keys[5]] = org
        ev["payload"] = self.payload_for(name) if payload is None else payload
        return ev


def break_event(gen, rule, org=None):
    """An EventSpec that breaks exactly one CONTRACT §2 rule; the expected
    reason code and error_class ride along."""
    ev = gen.event(org=org)
    if rule == "blocked_key":
        ev["payload"] = {"feature": "x", gen.rng.choice(BLOCKED_KEYS): "secret"}
        return EventSpec.of(ev, "blocked_key", "privacy")
    if rule == "nested_payload":
        ev["payload"] = {"feature": "x", "nested": {"a": 1}}
        return EventSpec.of(ev, "nested_payload", "validation")
    if rule == "nested_array":
        ev["payload"] = {"list": [1, 2]}
        return EventSpec.of(ev, "nested_payload", "validation")
    if rule == "invalid_name":
        ev["name"] = "page_view"
        return EventSpec.of(ev, "invalid_name", "validation")
    if rule == "missing_name":
        del ev["name"]
        return EventSpec.of(ev, "missing_field", "validation")
    if rule == "empty_event_id":
        ev["eventId"] = ""
        return EventSpec.of(ev, "missing_field", "validation")
    if rule == "missing_session":
        del ev["sessionId"]
        return EventSpec.of(ev, "missing_field", "validation")
    if rule == "numeric_user":
        ev["anonymousUserId"] = 42
        return EventSpec.of(ev, "missing_field", "validation")
    if rule == "bad_ts":
        ev["ts"] = "yesterday at noon"
        return EventSpec.of(ev, "invalid_ts", "validation")
    if rule == "bool_ts":
        ev["ts"] = True
        return EventSpec.of(ev, "invalid_ts", "validation")
    if rule == "missing_ts":
        del ev["ts"]
        return EventSpec.of(ev, "missing_field", "validation")
    if rule == "bad_org_type":
        ev["orgIdHash"] = 7
        return EventSpec.of(ev, "invalid_org_id_hash", "validation")
    if rule == "bad_route_type":
        ev["routePattern"] = ["/x"]
        return EventSpec.of(ev, "invalid_route_pattern", "validation")
    if rule == "payload_not_object":
        ev["payload"] = "feature=x"
        return EventSpec.of(ev, "invalid_payload", "validation")
    if rule == "org_mismatch":
        ev["orgIdHash"] = org_hash("some-other-org")
        return EventSpec.of(ev, "org_mismatch", "validation")
    if rule == "not_object":
        return EventSpec("[1,2,3]", "event_not_object", "validation")
    raise ValueError(rule)


EVENT_RULES = ("blocked_key", "nested_payload", "nested_array", "invalid_name", "missing_name",
               "empty_event_id", "missing_session", "numeric_user", "bad_ts", "bool_ts",
               "missing_ts", "bad_org_type", "bad_route_type", "payload_not_object",
               "org_mismatch", "not_object")


# Tricky payloads, as raw JSON text: the drain must store exactly
# py_payload_json(json.loads(text)) for each (CONTRACT §3).
TRICKY_PAYLOADS = (
    '{"emoji":"😀 ok","cjk":"漢字","accent":"é","rtl":"שלום"}',
    '{"escaped":"\\u00e9\\ud83d\\ude00\\u2028\\u2029","slash":"a/b\\/c"}',
    '{"ctl":"a\\u0001b\\tc\\nd\\re\\u001f\\u007f\\b\\f","quote":"he said \\"hi\\" \\\\ back"}',
    '{"raw_del":"\x7f","raw_utf8_ctl":"\u0085\u00a0"}',
    '{"big":123456789012345678901234567890,"neg":-9223372036854775809,"u64":18446744073709551616,'
    '"i64max":9223372036854775807,"zero":0,"negzero":-0}',
    '{"a":1e16,"b":1e-7,"c":0.1,"d":100.0,"e":-0.0,"f":1E2,"g":1.5e300,"h":5e-324,'
    '"i":123456789.123456789,"j":1.0,"k":0.30000000000000004,"l":2.5E-5,"m":1e22,"n":1e15,'
    '"o":1.7976931348623157e308,"p":10.50,"q":0.000001,"r":123e-2,"s":-1E+2,"t":1e+16}',
    '{"a":1,"b":2,"a":3,"b":{"ignored":"no: last wins"},"b":"final"}',
    '{"é":1,"\\u00e9":2,"Z":3,"a":4,"\uff01":5,"😀":6,"\\ud83d\\ude00":7,"":8}',
    '{"t":true,"f":false,"n":null,"s":"","Email":"allowed: case-sensitive","userid":"ok",'
    '"emailAddress":"ok"}',
    '{}',
    '{"long":"' + "x" * 5000 + '"}',
    '{"ints":12,"neg":-5,"exp_int":1e0,"frac":0.5}',
    '  {  "spaced" :  1 ,\n "tab":\t"v"  }  ',
)


def tricky_payload_event_text(gen, payload_text, org=None):
    """A valid event whose payload is the raw text given."""
    ev = gen.event(org=org, payload={})
    ev.pop("payload")
    head = json.dumps(ev, separators=(",", ":"))
    return head[:-1] + ',"payload":' + payload_text + "}"


# ---- producer ----------------------------------------------------------------------

class Producer:
    """Writes entries exactly as the upstream API does, and records in
    `model` what the drain must make of them."""

    def __init__(self, redis_client, model=None):
        self.r = redis_client
        self.model = model if model is not None else Model()

    def xadd_raw(self, key, fields):
        """XADD key MAXLEN ~ 100000 * fields (a dict or list of pairs)."""
        return self.r.xadd(key, dict(fields), maxlen=MAXLEN, approximate=True).decode()

    def batch(self, org, specs, source=SOURCE, ingestion_id=None, entry_org="same",
              stream=None, record=True):
        """One upstream entry holding specs (EventSpec list) for org (an
        org_id_hash or '' for anonymous). Returns the entry id."""
        ingestion_id = ingestion_id or str(uuid.uuid4())
        entry_org_value = org if entry_org == "same" else entry_org
        key = stream or stream_for(org)
        text = "[" + ",".join(s.text for s in specs) + "]"
        fields = {"ingestion_id": ingestion_id, "source": source,
                  "org_id_hash": entry_org_value, "events": text}
        entry_id = self.xadd_raw(key, fields)
        if record:
            self.record(key, entry_id, fields, specs)
        return entry_id

    def record(self, key, entry_id, fields, specs):
        m = self.model
        entry_org = fields.get("org_id_hash")
        n_rows = n_rej = 0
        for i, spec in enumerate(specs):
            ev = json.loads(spec.text)
            if spec.valid:
                row = reference_row(ev, entry_org, fields.get("source"))
                row.stream, row.entry_id, row.event_index = key, entry_id, i
                k = (row.org_id_hash, row.event_id)
                assert k not in m.rows, f"generator produced a duplicate event {k}"
                m.rows[k] = row
                n_rows += 1
            else:
                m.rejections.append(ExpectedRejection(
                    stream=key, entry_id=entry_id, event_index=i, code=spec.code,
                    error_class=spec.error_class, events_text=None, events_value=[ev],
                    ingestion_id=fields.get("ingestion_id", ""), source=fields.get("source", ""),
                    org_id_hash=entry_org or ""))
                n_rej += 1
        m.entries.append(Entry(key, entry_id, fields, n_rows, n_rej))

    def bad_entry(self, org, code, fields):
        """An entry rejected as a whole (event_index ''): fields as given."""
        key = stream_for(org)
        entry_id = self.xadd_raw(key, fields)
        events = fields.get("events")
        try:
            value = json.loads(events) if events is not None else None
        except ValueError:
            value = None
        self.model.rejections.append(ExpectedRejection(
            stream=key, entry_id=entry_id, event_index=None, code=code, error_class="validation",
            events_text=events if events is not None else "", events_value=value,
            ingestion_id=fields.get("ingestion_id", ""), source=fields.get("source", ""),
            org_id_hash=fields.get("org_id_hash", "")))
        self.model.entries.append(Entry(key, entry_id, dict(fields), 0, 1))
        return entry_id

    def valid_batches(self, gen, orgs, entries_per_org, events_per_entry):
        """A backlog of valid events only: entries_per_org entries of
        events_per_entry events for each org, XADDed in pipelines."""
        pipe = self.r.pipeline(transaction=False)
        pending = []
        for org in orgs:
            for _ in range(entries_per_org):
                specs = [EventSpec.of(gen.event(org=org if gen.rng.random() < 0.5 else None))
                         for _ in range(events_per_entry)]
                fields = {"ingestion_id": str(uuid.uuid4()), "source": SOURCE,
                          "org_id_hash": org,
                          "events": "[" + ",".join(s.text for s in specs) + "]"}
                key = stream_for(org)
                pipe.xadd(key, fields, maxlen=MAXLEN, approximate=True)
                pending.append((key, fields, specs))
            if len(pending) >= 200:
                self._flush(pipe, pending)
                pipe = self.r.pipeline(transaction=False)
                pending = []
        self._flush(pipe, pending)

    def _flush(self, pipe, pending):
        for (key, fields, specs), entry_id in zip(pending, pipe.execute()):
            self.record(key, entry_id.decode(), fields, specs)


# ---- reading back ----------------------------------------------------------------------

def dlq_records(r, key=DLQ_KEY):
    """[(record id, {field: value str})] oldest first."""
    out = []
    for rid, fields in r.xrange(key):
        out.append((rid.decode(), {k.decode(): v.decode("utf-8", "surrogateescape")
                                   for k, v in fields.items()}))
    return out


def pending_total(r, streams, group=GROUP):
    total = 0
    for s in streams:
        try:
            info = r.xpending(s, group)
        except Exception:  # noqa: BLE001 - no group yet
            continue
        total += info["pending"]
    return total


def pending_by_consumer(r, streams, group=GROUP):
    out = {}
    for s in streams:
        try:
            info = r.xpending(s, group)
        except Exception:  # noqa: BLE001
            continue
        for c in info.get("consumers") or []:
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            out[name] = out.get(name, 0) + int(c["pending"])
    return out


def acked_total(r, streams, group=GROUP):
    """Entries acked by the group so far: entries-read - pending, summed
    (Redis 7 XINFO GROUPS)."""
    total = 0
    for s in streams:
        try:
            groups = r.xinfo_groups(s)
        except Exception:  # noqa: BLE001
            continue
        for g in groups:
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == group:
                total += int(g.get("entries-read") or 0) - int(g["pending"])
    return total


def quantile_linear(values, level):
    """ClickHouse's quantile()/quantiles() on fewer than 8192 values: sort,
    position level * (n - 1), linear interpolation."""
    v = sorted(values)
    if not v:
        return math.nan
    pos = level * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)
