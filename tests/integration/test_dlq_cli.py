"""`ptel-worker dlq list|show|purge` on records written straight into the DLQ
stream (dlq/dlq.h has the record shape). Replay is covered end to end in
test_drain_faults.py; these are the read and delete paths, which had no
integration test (and so ran under valgrind nowhere)."""

import json

DLQ = "product-telemetry:dlq"
STREAM = "product-telemetry:org-a:events"


def record(reason, error_class, event_index="0", **extra):
    fields = {"original_stream": STREAM, "entry_id": "1700000000000-0", "reason": reason,
              "moved_at": "1700000000.25", "ingestion_id": "ing-1", "source": "web",
              "org_id_hash": "a" * 64, "events": '[{"event_name": "Bad Name"}]',
              "event_index": event_index, "error_class": error_class, "deliveries": "1",
              "worker": "w@test"}
    fields.update(extra)
    return fields


def test_dlq_list_show_and_purge(clean_redis, ptel_cli):
    r = clean_redis
    ids = [r.xadd(DLQ, record("invalid_name: bad", "validation")).decode(),
           r.xadd(DLQ, record("blocked_key: email", "privacy", event_index="")).decode(),
           r.xadd(DLQ, record("invalid_name: also bad", "validation", event_index="3")).decode()]

    done = ptel_cli("dlq", "list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"3 record(s) in {DLQ}", done.stdout
    assert [ln.split()[0] for ln in lines[:-1]] == ids
    assert "entry" in lines[1] and "event 3" in lines[2], done.stdout

    done = ptel_cli("dlq", "list", "--json", "--reason", "validation")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [rec["id"] for rec in listed] == [ids[0], ids[2]]
    assert listed[1] == dict(record("invalid_name: also bad", "validation", event_index="3"),
                             id=ids[2])

    done = ptel_cli("dlq", "list", "--limit", "1")
    assert "1 record(s)" in done.stdout and "limit reached" in done.stdout, done.stdout

    done = ptel_cli("dlq", "show", ids[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"id: {ids[1]}"
    assert "error_class: privacy" in done.stdout.splitlines()
    done = ptel_cli("dlq", "show", ids[1], "--json")
    assert json.loads(done.stdout) == dict(record("blocked_key: email", "privacy",
                                                  event_index=""), id=ids[1])
    done = ptel_cli("dlq", "show", "1-1")
    assert done.returncode != 0 and f"no record 1-1 in {DLQ}" in done.stderr, done

    done = ptel_cli("dlq", "purge", "--all")
    assert done.returncode == 0 and f"purged 3 record(s) from {DLQ}" in done.stdout, done
    assert r.xlen(DLQ) == 0
    done = ptel_cli("dlq", "list", "--json")
    assert done.returncode == 0 and json.loads(done.stdout) == []
