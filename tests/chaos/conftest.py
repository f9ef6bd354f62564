"""Fixtures for the chaos suite (tests/chaos): everything tests/integration's
conftest.py offers (worker, celery_app, clickhouse_server, ch_query, ...),
but on a PRIVATE redis-server that this suite may kill and restart at will.

The private Redis runs with appendonly yes + appendfsync always, so a reply
the worker or the producer got is on disk before it arrives: a restart (even
a SIGKILL of redis-server) loses nothing that was acknowledged, and
"lost" in the results can only mean the worker lost it.

Settings (environment, set by tests/chaos/run):
  PTEL_CHAOS_ROUNDS    rounds per kill -9 test (short: 20, long: 200)
  PTEL_CHAOS_FAULTS    rounds per fault kind in the outage test (short: 2, long: 10)
  PTEL_CHAOS_RECONNECTS  forced reconnects in the fd-leak test (1000)
  PTEL_CHAOS_BURST     tasks in the memory burst test (50000)
  PTEL_CHAOS_REPORT    JSON-lines file the tests append their results to
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
INTEGRATION = HERE.parent / "integration"
sys.path.insert(0, str(INTEGRATION))
sys.path.insert(0, str(HERE))

# Load tests/integration/conftest.py under another module name and re-export
# its fixtures and hooks: pytest collects fixtures from this module's globals.
_spec = importlib.util.spec_from_file_location("ptel_integration_conftest",
                                               INTEGRATION / "conftest.py")
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)
for _name in dir(_base):
    if _name.startswith("__") or _name in ("redis_url", "pytest"):
        continue
    globals()[_name] = getattr(_base, _name)

from helpers import free_port, tail, wait_for  # noqa: E402


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


ROUNDS = env_int("PTEL_CHAOS_ROUNDS", 20)
FAULT_ROUNDS = env_int("PTEL_CHAOS_FAULTS", 2)
RECONNECTS = env_int("PTEL_CHAOS_RECONNECTS", 1000)
BURST = env_int("PTEL_CHAOS_BURST", 50000)


def report(section, **values):
    """Append one result record (printed too, so -s shows it)."""
    rec = {"section": section, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **values}
    line = json.dumps(rec, sort_keys=True)
    print("CHAOS-RESULT " + line)
    path = os.environ.get("PTEL_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class PrivateRedis:
    """A redis-server of our own: start, stop (SIGTERM or SIGKILL), restart
    on the same port with the same data directory."""

    def __init__(self, base_dir):
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.restarts = 0

    def start(self, timeout=20.0):
        import redis
        log = open(self.dir / "redis.out", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=str(self.dir))
        log.close()

        def up():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited:\n{tail(self.dir / 'redis.log')}")
            try:
                return redis.Redis(port=self.port, socket_timeout=1).ping()
            except redis.exceptions.ConnectionError:
                return False
        wait_for(up, timeout, desc="private redis-server PING")

    def stop(self, kill=False):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, kill=False, down_s=0.0):
        self.stop(kill=kill)
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarts += 1


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory):
    r = PrivateRedis(tmp_path_factory.mktemp("chaos-redis"))
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def redis_url(private_redis):
    """Overrides tests/integration's: every fixture (worker, celery_app,
    clean_redis, python_worker, ptel_cli) talks to the private Redis."""
    return private_redis.url
