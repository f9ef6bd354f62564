"""scripts/run end to end (issue #7): in a copy of the checkout (no build*,
no var), on free ports, with nothing running:

1. `scripts/run` (seed 1) starts redis-server and clickhouse-server under
   the copy's var/, applies the schema, starts the worker, writes the demo
   telemetry, drains it through the Python Celery client, prints the seven
   dashboard sections and then follows the worker's log. The sections
   printed must equal what the demo producer says it wrote
   (var/demo-expected.json), row for row.
2. `scripts/run --demo-only` (seed 2) while the first one still runs: it
   reuses both services, adds its batch, and the printed counts are the sum
   of both runs; it exits 0 and leaves the first run's services alone.
3. Ctrl-C (SIGINT to the first run's process group, as a terminal sends it)
   stops the worker and the two services the first run started.

The binary is the one under test ($PTEL_WORKER_BIN, via PTEL_RUN_SETUP=0):
the install-and-build step is covered by tests/fresh/chroot-check.sh.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from conftest import OVERRIDE_VARS, REPO
from helpers import pid_alive

RUN_TIMEOUT = 300

TABLES = {
    # section key: (title printed, columns of `report --json` in printed order)
    "daily_active_users": ("Daily active anonymous users", ("day", "active_anonymous_users")),
    "top_routes": ("Top route patterns (page_viewed)",
                   ("route_pattern", "events", "sessions", "anonymous_users")),
    "feature_views": ("Feature views (feature_viewed)",
                      ("feature", "surface", "views", "anonymous_users")),
    "filter_changes": ("Filter changes (filter_changed)",
                       ("view", "filter_key", "changes", "avg_value_count")),
    "chart_interactions": ("Chart interactions (chart_interacted)",
                           ("chart", "action", "surface", "interactions", "sessions")),
    "client_errors": ("Client errors (client_error)",
                      ("route_pattern", "boundary", "error_class", "errors",
                       "affected_anonymous_users")),
}
SESSIONS_TITLE = "Sessions (session_ended)"
SESSION_LABELS = {
    "duration p50 (ms)": "p50_duration_ms", "duration p75 (ms)": "p75_duration_ms",
    "duration p90 (ms)": "p90_duration_ms", "duration p95 (ms)": "p95_duration_ms",
    "avg pages viewed": "avg_pages_viewed", "avg interactions": "avg_interactions",
}


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def copy_checkout(dest):
    """The checkout as a fresh clone would have it: no build dirs, no var/."""
    def ignore(directory, names):
        if Path(directory).resolve() == REPO.resolve():
            return [n for n in names if n.startswith(("build", ".git")) or n == "var"]
        return [n for n in names if n in ("__pycache__", ".pytest_cache")]
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)


def section(text, title):
    """Rows of one printed section: lists of cells (split on 2+ spaces)."""
    lines = text.splitlines()
    start = lines.index(title)   # ValueError: the section was not printed
    rows = []
    for line in lines[start + 3:]:   # title, header, dashes
        if not line.strip() or not line.startswith("  "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def check_report(text, want, additive_only=False):
    """Compare the printed dashboard with the producer's expectation.
    additive_only: compare only counts that add up across runs (events,
    sessions), not distinct-user counts or percentiles."""
    for key, (title, cols) in TABLES.items():
        got = section(text, title)
        exp = want[key]
        if additive_only and key == "daily_active_users":
            continue
        assert len(got) == len(exp), f"{title}: {got} != {exp}"
        for g, e in zip(sorted(got), sorted([[str(r[c]) for c in cols] for r in exp])):
            for c, gv, ev in zip(cols, g, e):
                if c.startswith("avg"):
                    assert abs(float(gv) - float(ev)) <= 0.006, (title, g, e)
                elif additive_only and ("users" in c):
                    continue
                else:
                    assert gv == ev, (title, c, g, e)
    if additive_only:
        return
    got = {SESSION_LABELS[r[0]]: r[1] for r in section(text, SESSIONS_TITLE)}
    for k, v in want["session_summary"].items():
        tol = 0.006 if k.startswith("avg") else 1.0   # percentiles: truncation of a double
        assert abs(float(got[k]) - float(v)) <= tol, (k, got[k], v)


def merge_counts(a, b):
    """Two runs' expectations for the counts that add up (see check_report):
    rows matched on their text columns, counts summed, the average valueCount
    re-weighted. Distinct-user columns are summed too but not compared."""
    out = {"daily_active_users": []}
    for key, (_, cols) in TABLES.items():
        if key == "daily_active_users":
            continue
        rows = a[key] + b[key]
        names = [c for c in cols if rows and isinstance(rows[0][c], str)]
        merged = {}
        for row in rows:
            m = merged.setdefault(tuple(row[c] for c in names), {c: row[c] for c in names})
            for c in cols:
                if c == "avg_value_count":
                    m["_sum"] = m.get("_sum", 0) + row[c] * row["changes"]
                elif c not in names:
                    m[c] = m.get(c, 0) + row[c]
        for m in merged.values():
            if "_sum" in m:
                m["avg_value_count"] = m.pop("_sum") / m["changes"]
        out[key] = list(merged.values())
    return out


class Run:
    """scripts/run in its own process group, its output collected."""

    def __init__(self, root, env, *args):
        self.out = []
        self.proc = subprocess.Popen(
            ["bash", str(root / "scripts/run"), *args], cwd=root, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.append(line)

    @property
    def text(self):
        return "".join(self.out)

    def wait_for(self, marker, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.text:
                return
            if self.proc.poll() is not None:
                self.reader.join(5)
                if marker in self.text:
                    return
                break
            time.sleep(0.2)
        raise AssertionError(f"no {marker!r} from scripts/run; output:\n{self.text[-6000:]}")

    def wait(self, timeout):
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        return rc

    def kill(self):
        """TERM first: scripts/run then stops its worker (in its own session,
        out of this group's reach) and its services; KILL if it hangs."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def test_scripts_run_demo_and_ctrl_c(tmp_path, worker_bin):
    root = tmp_path / "checkout"
    copy_checkout(root)
    redis_port, ch_http, ch_tcp = free_ports(3)
    env = {k: v for k, v in os.environ.items()
           if k not in OVERRIDE_VARS and not k.startswith("PTEL_")}
    env.update(PTEL_RUN_SETUP="0", PTEL_WORKER_BIN=str(worker_bin),
               PTEL_RUN_REDIS_PORT=str(redis_port), PTEL_RUN_CLICKHOUSE_PORT=str(ch_http),
               PTEL_RUN_CLICKHOUSE_TCP_PORT=str(ch_tcp))
    var = root / "var"
    first = Run(root, {**env, "PTEL_DEMO_SEED": "1"})
    second = None
    try:
        first.wait_for("follows. Ctrl-C", RUN_TIMEOUT)
        text1 = first.text
        assert "==> starting redis-server" in text1 and "==> starting clickhouse-server" in text1
        want1 = json.loads((var / "demo-expected.json").read_text())
        assert want1["written"]["seed"] == 1 and want1["written"]["invalid_events"] == 5
        m = re.search(r"==> drain result: (\{.*\})", text1)
        assert m, text1
        result = json.loads(m.group(1))
        assert result["processed"] == want1["written"]["valid_events"], result
        assert result["dead_lettered"] == want1["written"]["invalid_events"], result
        assert "dlq holds 5 record(s)" in text1
        check_report(text1, want1)
        redis_pid = int((var / "redis.pid").read_text())
        ch_pid = int((var / "clickhouse.pid").read_text())

        second = Run(root, {**env, "PTEL_DEMO_SEED": "2"}, "--demo-only")
        assert second.wait(RUN_TIMEOUT) == 0, second.text[-6000:]
        text2 = second.text
        assert f"reusing redis-server on port {redis_port} (pid {redis_pid})" in text2
        assert f"reusing clickhouse-server on port {ch_http} (pid {ch_pid})" in text2
        assert "stopping the service" not in text2, text2
        assert "log: var/worker-" in text2       # its own log, not the first run's
        want2 = json.loads((var / "demo-expected.json").read_text())
        assert want2["written"]["seed"] == 2
        check_report(text2, merge_counts(want1, want2), additive_only=True)
        assert pid_alive(redis_pid) and pid_alive(ch_pid), "--demo-only stopped services it reused"
        assert first.proc.poll() is None, "the first run ended early"

        # Ctrl-C at the terminal: SIGINT to the foreground process group.
        os.killpg(first.proc.pid, signal.SIGINT)
        rc = first.wait(90)
        text = first.text
        assert rc == 0, text[-4000:]
        assert "ptel-worker exited with status 0" in text
        assert "stopping the service in" in text
        assert not pid_alive(redis_pid) and not pid_alive(ch_pid), text[-3000:]
        assert not (var / "redis.pid").exists() and not (var / "clickhouse.pid").exists()
    finally:
        for run in (second, first):
            if run is not None:
                run.kill()
        # Whatever a failed run left behind (worker, services): by pid, through
        # scripts/run stop.
        subprocess.run(["bash", str(root / "scripts/run"), "stop"], cwd=root, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
