"""bench/benchlib.py: shared helpers for the benchmark harness.

Owns: private redis-server / clickhouse-server instances for one benchmark
run (ports in the benchmark's ranges: redis 7600-7699, ClickHouse HTTP
18600-18699, TCP 19600-19699; files under one mktemp directory; stopped by
pid), a tiny ClickHouse HTTP client, process measurement (wall, user+sys from
wait4, peak RSS, RSS sampling) and statistics. Does not own: what is measured
(bench.py) or how events look (gen_events.py).

Server start-up reuses the building blocks of tests/services.sh (config
rendering, wait-for-ping), so the benchmark servers are configured exactly
like the test suite's.
"""
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES_SH = os.path.join(ROOT, "tests", "services.sh")
PY = "/usr/bin/python3"


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---- Ports and services ----------------------------------------------------------

def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_port(lo, hi, taken=()):
    for p in range(lo, hi + 1):
        if p not in taken and port_free(p):
            return p
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def stop_pid(pid, timeout=20.0):
    """SIGTERM one pid we started, wait, then SIGKILL."""
    if not pid or not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.time() + timeout
    while time.time() < end:
        if not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Services:
    """One redis-server and one clickhouse-server, private to this run."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="ptel-bench.")
        self.redis_pid = None
        self.ch_pid = None
        self.redis_port = None
        self.ch_http = None
        self.ch_tcp = None

    def start(self):
        self.redis_port = pick_port(7600, 7699)
        rdir = os.path.join(self.tmp, "redis")
        subprocess.run([SERVICES_SH, "redis-start", str(self.redis_port), rdir,
                        os.path.join(self.tmp, "redis.pid")], check=True)
        self.redis_pid = int(open(os.path.join(self.tmp, "redis.pid")).read())
        self.ch_http = pick_port(18600, 18699)
        self.ch_tcp = pick_port(19600, 19699)
        chdir = os.path.join(self.tmp, "clickhouse")
        subprocess.run([SERVICES_SH, "clickhouse-config", chdir, str(self.ch_http),
                        str(self.ch_tcp), "benchpw"], check=True)
        env = dict(os.environ, PTEL_CLICKHOUSE_START_TIMEOUT="60")
        subprocess.run([SERVICES_SH, "clickhouse-start", os.path.join(chdir, "config.xml"),
                        str(self.ch_http), os.path.join(self.tmp, "clickhouse.pid"),
                        os.path.join(chdir, "stdout.log")], check=True, env=env)
        self.ch_pid = int(open(os.path.join(self.tmp, "clickhouse.pid")).read())
        log("services: redis 127.0.0.1:%d (pid %d), clickhouse http %d tcp %d (pid %d), dir %s"
            % (self.redis_port, self.redis_pid, self.ch_http, self.ch_tcp, self.ch_pid, self.tmp))

    def stop(self):
        stop_pid(self.ch_pid, 60)
        stop_pid(self.redis_pid, 20)
        self.ch_pid = self.redis_pid = None
        # Thousands of small ClickHouse parts: removing them can take minutes on
        # a busy disk, and nothing waits for it.
        subprocess.Popen(["rm", "-rf", self.tmp], start_new_session=True)

    @property
    def redis_url(self):
        return "redis://127.0.0.1:%d/0" % self.redis_port

    @property
    def ch_url(self):
        return "http://127.0.0.1:%d/default" % self.ch_http


# ---- ClickHouse over HTTP --------------------------------------------------------

class CH:
    """Minimal keep-alive ClickHouse HTTP client (http.client)."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 8123
        self.db = (u.path or "/").strip("/") or "default"
        self.conn = None

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        return self.conn

    def query(self, sql, body=None, settings=None):
        params = {"database": self.db}
        if settings:
            params.update(settings)
        if body is None:
            body = sql.encode()
        else:
            params["query"] = sql
        path = "/?" + urllib.parse.urlencode(params)
        for attempt in (0, 1):
            c = self._conn()
            try:
                c.request("POST", path, body=body)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn = None
                if attempt:
                    raise
        if r.status != 200:
            raise RuntimeError("ClickHouse %d: %s" % (r.status, data[:500].decode("utf-8", "replace")))
        return data.decode()

    def scalar(self, sql):
        return self.query(sql).strip()


# ---- Processes -------------------------------------------------------------------

def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Samples VmRSS of a pid every `period` s; .peak_kb, .samples."""

    def __init__(self, pid, period=0.05):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peak_kb = 0
        self.samples = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            r = rss_kb(self.pid)
            if r:
                self.samples.append(r)
                self.peak_kb = max(self.peak_kb, r)
            self._halt.wait(self.period)

    def stop(self):
        self._halt.set()
        self.join()


def run_measured(argv, env=None, cwd=None, timeout=3600, stdout_path=None):
    """Run argv to completion. Returns dict(rc, wall, user, sys, maxrss_kb, out)."""
    out_f = open(stdout_path, "w+b") if stdout_path else tempfile.TemporaryFile()
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out_f, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.time() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    out = out_f.read().decode("utf-8", "replace")
    out_f.close()
    return {"rc": p.returncode, "wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
            "maxrss_kb": ru.ru_maxrss, "out": out}


def proc_cpu_s(pid):
    """user+sys seconds of a live process (all threads), from /proc."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / tck
    except OSError:
        return 0.0


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# ---- Statistics ------------------------------------------------------------------

def summary(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


def fmt_num(v, unit=""):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        s = "{:,.0f}".format(v)
    elif abs(v) >= 10:
        s = "%.1f" % v
    else:
        s = "%.2f" % v
    return s + unit


def fmt_summary(s, unit="", scale=1.0):
    if not s:
        return "pending"
    return "%s (%s–%s)" % (fmt_num(s["median"] * scale, unit), fmt_num(s["min"] * scale),
                           fmt_num(s["max"] * scale))
