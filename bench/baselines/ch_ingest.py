#!/usr/bin/python3
"""bench/baselines/ch_ingest.py: ClickHouse's own ingest limit for the
telemetry rows (the "machine limit" the drain is compared against).

Takes the valid rows of a generated data set already encoded (gen_events.py
--rows-out: PREFIX.jsoneachrow or PREFIX.rowbinary), cuts them into batches of
--batch rows, and POSTs them over HTTP keep-alive from --parallel threads
(http.client; sending releases the GIL, so Python is not the bound; check
"client_cpu_s" in the output). Nothing is encoded while the clock runs: this
is parse + write inside the server plus loopback HTTP.

Prints one JSON line: {"format", "rows", "seconds", "rows_per_s", "client_cpu_s"}.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def varint(buf, pos):
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def split_rowbinary(data):
    """Row boundaries of our 11-column RowBinary layout (see gen_events.py)."""
    starts = [0]
    pos = 0
    n = len(data)
    while pos < n:
        for col in range(11):
            if col == 6:                       # Nullable(String)
                flag = data[pos]
                pos += 1
                if flag:
                    continue
            if col in (8, 9):                  # DateTime: UInt32
                pos += 4
                continue
            ln, pos = varint(data, pos)
            pos += ln
        starts.append(pos)
    return starts


def batches(path, fmt, batch):
    data = open(path, "rb").read()
    if fmt == "JSONEachRow":
        lines = data.splitlines(keepends=True)
        return [b"".join(lines[i:i + batch]) for i in range(0, len(lines), batch)], len(lines)
    starts = split_rowbinary(data)
    rows = len(starts) - 1
    out = [data[starts[i]:starts[min(i + batch, rows)]] for i in range(0, rows, batch)]
    return out, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clickhouse", required=True)
    ap.add_argument("--table", default="product_telemetry_events")
    ap.add_argument("--rows", required=True, help="PREFIX from gen_events.py --rows-out")
    ap.add_argument("--format", choices=["JSONEachRow", "RowBinary"], default="RowBinary")
    ap.add_argument("--batch", type=int, default=100000)
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    ext = ".jsoneachrow" if a.format == "JSONEachRow" else ".rowbinary"
    bodies, rows = batches(a.rows + ext, a.format, a.batch)
    u = urllib.parse.urlparse(a.clickhouse)
    db = (u.path or "/").strip("/") or "default"
    path = "/?" + urllib.parse.urlencode({"database": db, "query": "INSERT INTO %s FORMAT %s"
                                          % (a.table, a.format)})
    errors = []

    def worker(mine):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        for body in mine:
            c.request("POST", path, body=body)
            r = c.getresponse()
            data = r.read()
            if r.status != 200:
                errors.append(data[:300].decode("utf-8", "replace"))
                return

    threads = [threading.Thread(target=worker, args=(bodies[i::a.parallel],))
               for i in range(a.parallel)]
    c0 = time.process_time()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        print(json.dumps({"error": errors[0]}))
        return 1
    print(json.dumps({"format": a.format, "rows": rows, "batches": len(bodies),
                      "seconds": round(secs, 4), "rows_per_s": round(rows / secs, 1),
                      "client_cpu_s": round(time.process_time() - c0, 3)}))


if __name__ == "__main__":
    sys.exit(main())
