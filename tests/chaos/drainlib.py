"""The drain side of the chaos suite: a producer thread writing upstream-
shaped entries (telemetry_gen's generator) while faults happen, a sender
thread that keeps run_product_telemetry_consumer flowing, and the final
accounting against ClickHouse (a plain MergeTree table, so every duplicate
insert stays visible to count())."""

import threading
import time
import uuid

import redis

import telemetry_gen as tg
from telemetry_gen import EventSpec, Gen, org_hash, stream_for


class ChaosProducer(threading.Thread):
    """XADDs entries of 5..20 valid events round-robin over `orgs` at about
    `rate` entries/s. pause()/resume() around planned Redis restarts: an XADD
    whose reply is lost would be ambiguous (stored or not), and retrying it
    would create a second entry with the same events, i.e. a duplicate the
    worker did not cause."""

    def __init__(self, url, orgs, rate=40.0, seed=7):
        super().__init__(daemon=True)
        self.url = url
        self.orgs = orgs
        self.rate = rate
        self.gen = Gen(seed=seed)
        self.expected = set()          # (org_id_hash, event_id)
        self.entries = 0
        self.errors = 0
        self._halt = threading.Event()
        self._paused = threading.Event()
        self._idle = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        r = redis.Redis.from_url(self.url, socket_timeout=5)
        i = 0
        while not self._halt.is_set():
            if self._paused.is_set():
                self._idle.set()
                time.sleep(0.02)
                continue
            self._idle.clear()
            org = self.orgs[i % len(self.orgs)]
            n = 5 + self.gen.rng.randrange(16)
            evs = [self.gen.event(org=org if self.gen.rng.random() < 0.5 else None)
                   for _ in range(n)]
            specs = [EventSpec.of(e) for e in evs]
            fields = {"ingestion_id": str(uuid.uuid4()), "source": tg.SOURCE,
                      "org_id_hash": org, "events": "[" + ",".join(s.text for s in specs) + "]"}
            try:
                r.xadd(stream_for(org), fields, maxlen=tg.MAXLEN, approximate=True)
            except redis.exceptions.RedisError:
                # Not a planned restart (those pause us first): the entry's
                # fate is unknown, so it is not counted and not retried.
                self.errors += 1
                r = redis.Redis.from_url(self.url, socket_timeout=5)
                time.sleep(0.1)
                continue
            with self.lock:
                for e in evs:
                    self.expected.add((org, e["eventId"]))
                self.entries += 1
            i += 1
            time.sleep(1.0 / self.rate)

    def produced(self):
        with self.lock:
            return len(self.expected)

    def pause(self):
        self._paused.set()
        self._idle.wait(10)

    def resume(self):
        self._paused.clear()

    def stop(self):
        self._halt.set()
        self.join(10)


class DrainSender(threading.Thread):
    """Sends run_product_telemetry_consumer every `every` seconds (expires
    10 s, as upstream beat sends it with an expiry) while enabled."""

    def __init__(self, app, every=0.7, max_iterations=30):
        super().__init__(daemon=True)
        self.app = app
        self.every = every
        self.max_iterations = max_iterations
        self.enabled = threading.Event()
        self._halt = threading.Event()
        self.sent = 0
        self.errors = 0

    def run(self):
        while not self._halt.is_set():
            if self.enabled.is_set():
                try:
                    self.app.send_task(tg.TASK, kwargs={"max_iterations": self.max_iterations},
                                       queue="ingest", expires=10, retry=False)
                    self.sent += 1
                except Exception:  # noqa: BLE001 - Redis restarting
                    self.errors += 1
            time.sleep(self.every)

    def stop(self):
        self._halt.set()
        self.join(10)


def stored_keys(db):
    body = db.q(f"SELECT org_id_hash, event_id FROM {db.table} FORMAT TSV", timeout=60)
    return [tuple(line.split("\t")) for line in body.splitlines() if line]


def account(db, producer, r):
    """(missing, duplicates, unexpected, dlq_len, stored_rows)."""
    rows = stored_keys(db)
    seen = {}
    for k in rows:
        seen[k] = seen.get(k, 0) + 1
    missing = len(producer.expected - set(seen))
    dups = sum(n - 1 for n in seen.values() if n > 1)
    unexpected = len(set(seen) - producer.expected)
    return missing, dups, unexpected, r.xlen(tg.DLQ_KEY), len(rows)


def make_orgs(prefix, n=4):
    return [org_hash(f"{prefix}-{i}") for i in range(n)]


def pending(r, orgs):
    return tg.pending_total(r, [stream_for(o) for o in orgs])
