"""Fixtures for the integration tests: real redis-server, clickhouse-server,
Python Celery, and the ptel-worker binary.

The services are started by tests/services.sh (scripts/test does that and
exports PTEL_TEST_*); this file only reads their addresses from the
environment. Run everything with `scripts/test --integration [-k EXPR]`.

Fixtures:
  redis_url, redis_client, clean_redis (FLUSHALL first)
  clickhouse_url, clickhouse_auth_url, ch_query (run SQL, default user)
  clickhouse_server     stop()/start()/pause()/resume() the test ClickHouse
  worker_bin            $PTEL_WORKER_BIN; skips the test while it is not built
  worker                factory: start `ptel-worker worker` with a celeryconfig
  ptel_cli              run a one-shot subcommand (version, schema, drain, ...)
  worker_command        argv for a test that starts the binary itself
  celery_app            a Python Celery client on the test Redis, queue ingest
  python_worker         factory: a real Python Celery worker running pyapp/
Logs of every process a test started are attached to its failure report.

Running the worker under a wrapper (tests/valgrind/run does this):
  PTEL_WORKER_WRAPPER   command put in front of every ptel-worker the tests
                        start, e.g. "valgrind --log-file={log} ..."; {log} is
                        replaced by a per-process path in the test's tmp dir,
                        and a valgrind "ERROR SUMMARY" above 0 in that file
                        fails the test (like a sanitizer report does)
  PTEL_TIMEOUT_SCALE    multiplier for the waits on the worker: ready and
                        stop timeouts, wait_for(), ptel_cli's timeout and
                        AsyncResult.get(timeout=...) (default 1)
Unset, both leave every test exactly as it is.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from helpers import (  # noqa: E402
    clickhouse_ping,
    clickhouse_query,
    env_without,
    pid_alive,
    pid_cmdline,
    scaled,
    tail,
    timeout_scale,
    wait_for,
    wrapper_argv,
    write_celeryconfig,
)

REPO = HERE.parent.parent
PY = "/usr/bin/python3"
# Settings a developer's shell could carry that would point a test's worker
# at the wrong servers (DESIGN §5 environment overrides).
OVERRIDE_VARS = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "CLICKHOUSE_URL")
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
STOP_TIMEOUT = 10.0
# valgrind's last line per process; a count above 0 is a finding (with
# --errors-for-leak-kinds=definite, definite leaks are counted here too).
VALGRIND_SUMMARY = re.compile(r"^==\d+== ERROR SUMMARY: (\d+) errors", re.M)


# ---- reporting ------------------------------------------------------------------

def _register_log(request, title, path):
    request.node.__dict__.setdefault("_ptel_logs", []).append((title, str(path)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for title, path in item.__dict__.get("_ptel_logs", []):
            rep.sections.append((f"{rep.when}: log of {title} ({path})", tail(path, 200)))


def _test_failed(request):
    return any(getattr(request.node, "rep_" + w, None) is not None
               and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))


# ---- services -------------------------------------------------------------------

def _need_env(name):
    value = os.environ.get(name)
    if not value:
        msg = f"{name} is not set: start the services with `scripts/test --integration`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return value


@pytest.fixture(scope="session")
def redis_url():
    return _need_env("PTEL_TEST_REDIS_URL")


@pytest.fixture
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def clean_redis(redis_client):
    """The test Redis, emptied (FLUSHALL) before the test."""
    redis_client.flushall()
    return redis_client


@pytest.fixture(scope="session")
def clickhouse_url():
    return _need_env("PTEL_TEST_CLICKHOUSE_URL")


@pytest.fixture(scope="session")
def clickhouse_auth_url():
    return _need_env("PTEL_TEST_CLICKHOUSE_AUTH_URL")


@pytest.fixture
def ch_query(clickhouse_url):
    """ch_query(sql, data=None, **kw) -> body text, as the default user."""
    def query(sql, data=None, **kw):
        return clickhouse_query(clickhouse_url, sql, data=data, **kw)
    return query


class ClickHouseServer:
    """The test ClickHouse, for outage tests. The pid file is shared with
    tests/services.sh, which stops whatever pid it names at the end."""

    def __init__(self):
        self.config = _need_env("PTEL_TEST_CLICKHOUSE_CONFIG")
        self.pidfile = _need_env("PTEL_TEST_CLICKHOUSE_PIDFILE")
        self.url = _need_env("PTEL_TEST_CLICKHOUSE_URL")
        self.log = os.environ.get("PTEL_TEST_CLICKHOUSE_LOG",
                                  str(Path(self.config).parent / "stdout.log"))
        self._proc = None
        self._paused = False

    @property
    def pid(self):
        try:
            return int(Path(self.pidfile).read_text().strip())
        except (OSError, ValueError):
            return int(os.environ.get("PTEL_TEST_CLICKHOUSE_PID", "0")) or None

    def running(self):
        pid = self.pid
        return bool(pid) and pid_alive(pid) and self.config in pid_cmdline(pid)

    def stop(self, kill=False, timeout=30.0):
        """SIGTERM (or SIGKILL with kill=True) and wait until it is gone."""
        pid = self.pid
        if not pid or not self.running():
            return
        if self._paused:
            self.resume()
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            if self._proc is not None and self._proc.pid == pid:
                self._proc.wait(timeout=timeout)
            else:
                wait_for(lambda: not pid_alive(pid), timeout, desc="clickhouse-server exit")
        except (subprocess.TimeoutExpired, TimeoutError):
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not pid_alive(pid), 10, desc="clickhouse-server exit after SIGKILL")
        if self._proc is not None and self._proc.pid == pid:
            self._proc.wait()
            self._proc = None

    def start(self, timeout=30.0):
        """Start it again with the same config (same ports, same data) and
        wait for /ping."""
        if self.running():
            return
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                ["clickhouse-server", f"--config-file={self.config}"],
                cwd=str(Path(self.config).parent), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        Path(self.pidfile).write_text(f"{self._proc.pid}\n")
        try:
            wait_for(lambda: clickhouse_ping(self.url) or self._proc.poll() is not None,
                     timeout, desc="clickhouse-server /ping")
        except TimeoutError:
            pytest.fail(f"clickhouse-server did not come back in {timeout}s:\n{tail(self.log)}")
        if self._proc.poll() is not None:
            pytest.fail(f"clickhouse-server exited on restart:\n{tail(self.log)}")

    def restart(self, **kw):
        self.stop(**kw)
        self.start()

    def pause(self):
        """SIGSTOP: connections hang instead of being refused."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self):
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False


@pytest.fixture(scope="session")
def _clickhouse_server_handle():
    return ClickHouseServer()


@pytest.fixture
def clickhouse_server(_clickhouse_server_handle, request):
    """Handle on the test ClickHouse; whatever a test did to it, it is
    running again afterwards."""
    server = _clickhouse_server_handle
    _register_log(request, "clickhouse-server", server.log)
    yield server
    if server._paused:
        server.resume()
    if not server.running():
        server.start()


# ---- processes ------------------------------------------------------------------

class ManagedProcess:
    """A child process whose stdout+stderr go to one log file."""

    def __init__(self, title, argv, log_path, env, cwd):
        self.title = title
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = str(cwd)
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        return self

    @property
    def pid(self):
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.poll()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text, timeout=10.0, start=0):
        """Wait until text appears in the log (after offset start); fail
        with the log tail if the process exits or the time runs out."""
        def seen():
            if text in self.log()[start:]:
                return True
            if not self.alive():
                raise ProcessLookupError(f"{self.title} exited with {self.returncode}")
            return False
        try:
            wait_for(seen, timeout, desc=f"{text!r} in the log of {self.title}")
        except ProcessLookupError as exc:
            if text in self.log()[start:]:
                return
            pytest.fail(f"{exc} before logging {text!r}:\n{tail(self.log_path)}")
        except TimeoutError as exc:
            pytest.fail(f"{exc}:\n{tail(self.log_path)}")

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout=STOP_TIMEOUT):
        return self.proc.wait(timeout=scaled(timeout))

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """sig, wait up to timeout (times PTEL_TIMEOUT_SCALE), then SIGKILL.
        Returns the exit status."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def sanitizer_report(self):
        text = self.log()
        for marker in SANITIZER_MARKERS:
            i = text.find(marker)
            if i >= 0:
                return text[max(0, i - 200):i + 4000]
        return None


# ---- wrapper (valgrind) ---------------------------------------------------------

if timeout_scale() != 1:
    # Tests wait for task results with AsyncResult.get(timeout=N) in many
    # places; stretching N here keeps them unchanged (the wrapped worker is
    # the slow part, not Celery).
    import celery.result

    _celery_get = celery.result.AsyncResult.get

    def _scaled_get(self, timeout=None, *args, **kw):
        return _celery_get(self, None if timeout is None else scaled(timeout), *args, **kw)

    celery.result.AsyncResult.get = _scaled_get


def wrapper_report(path):
    """The valgrind log at path, shortened, when its ERROR SUMMARY counts
    errors; None when it has none (or no summary: the process was killed)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    if not any(int(m.group(1)) > 0 for m in VALGRIND_SUMMARY.finditer(text)):
        return None
    if len(text) <= 10000:
        return text
    return text[:8000] + "\n[...]\n" + text[-2000:]


@pytest.fixture
def _wrapper_logs(request, tmp_path):
    """wrap(argv, name) -> argv under PTEL_WORKER_WRAPPER (argv itself when
    unset). Each wrapped process's {log} is a file in tmp_path; at teardown
    (after the worker and ptel_cli fixtures have stopped their processes) a
    valgrind error in any of them fails the test."""
    logs = []
    prefix = wrapper_argv()

    def wrap(argv, name):
        if not prefix:
            return [str(a) for a in argv]
        log = tmp_path / f"{name}.wrapper.log"   # names are unique per test
        logs.append((name, log))
        _register_log(request, f"wrapper of {name}", log)
        return [w.replace("{log}", str(log)) for w in prefix] + [str(a) for a in argv]

    yield wrap

    reports = [f"{name} ({path}):\n{r}" for name, path in logs
               if (r := wrapper_report(path)) is not None]
    if reports and not _test_failed(request):
        pytest.fail("valgrind reported errors:\n" + "\n".join(reports))


@pytest.fixture
def worker_command(worker_bin, _wrapper_logs):
    """worker_command(*args, name="ptel-worker-cmd") -> argv that runs
    ptel-worker with args (under PTEL_WORKER_WRAPPER when set), for tests
    that start the binary with subprocess themselves."""
    count = [0]

    def make(*args, name="ptel-worker-cmd"):
        count[0] += 1
        return _wrapper_logs([worker_bin, *args], f"{name}{count[0]}")
    return make


@pytest.fixture(scope="session")
def worker_bin():
    """Path of the C worker; skips the test until it has been built."""
    path = Path(os.environ.get("PTEL_WORKER_BIN") or REPO / "build" / "worker" / "ptel-worker")
    if not path.exists():
        pytest.skip(f"ptel-worker not built yet ({path})")
    return path


def _worker_env(redis_url, extra=None):
    env = env_without(OVERRIDE_VARS)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.update(extra or {})
    return env


def _base_settings(redis_url):
    settings = {"broker_url": redis_url, "result_backend": redis_url}
    ch = os.environ.get("PTEL_TEST_CLICKHOUSE_URL")
    if ch:
        settings["clickhouse_url"] = ch
    return settings


@pytest.fixture
def worker_config(tmp_path, redis_url):
    """worker_config(omit=(), **settings) -> path of a celeryconfig with
    broker_url/result_backend = the test Redis, clickhouse_url = the test
    ClickHouse, then settings (a value of None writes `name = None`);
    names in omit are left out."""
    count = [0]

    def make(omit=(), **settings):
        count[0] += 1
        merged = _base_settings(redis_url)
        merged.update(settings)
        for name in omit:
            merged.pop(name, None)
        return write_celeryconfig(tmp_path / f"celeryconfig{count[0]}.py", merged)
    return make


@pytest.fixture
def worker(request, tmp_path, worker_bin, redis_url, worker_config, _wrapper_logs):
    """Factory: worker(*extra_args, env=None, wait_ready=True, ready_timeout=10,
    loglevel="info", omit=(), allow_sanitizer_reports=False, **settings).

    Writes a celeryconfig, starts `ptel-worker worker --config FILE -l info
    [extra args]` and waits for the " ready." line. At teardown each worker
    gets SIGTERM, then SIGKILL after 10 s; a sanitizer report in its log
    fails the test. Timeouts are multiplied by PTEL_TIMEOUT_SCALE."""
    started = []

    def start(*args, env=None, wait_ready=True, ready_timeout=10.0, loglevel="info",
              omit=(), allow_sanitizer_reports=False, **settings):
        n = len(started) + 1
        config = worker_config(omit=omit, **settings)
        argv = _wrapper_logs([worker_bin, "worker", "--config", config, "-l", loglevel, *args],
                             f"ptel-worker{n}")
        title = f"ptel-worker #{n}"
        proc = ManagedProcess(title, argv, tmp_path / f"ptel-worker{n}.log",
                              _worker_env(redis_url, env), tmp_path)
        proc.config_path = config
        proc.allow_sanitizer_reports = allow_sanitizer_reports
        _register_log(request, title, proc.log_path)
        started.append(proc)
        proc.start()
        if wait_ready:
            proc.wait_for_log(" ready.", ready_timeout)
        return proc

    yield start

    reports = []
    for proc in started:
        proc.stop()
        report = proc.sanitizer_report()
        if report and not proc.allow_sanitizer_reports:
            reports.append(f"{proc.title}:\n{report}")
    if reports and not _test_failed(request):
        pytest.fail("sanitizer report in the worker log:\n" + "\n".join(reports))


@pytest.fixture
def ptel_cli(tmp_path, worker_bin, redis_url, worker_config, _wrapper_logs):
    """ptel_cli(*args, config=True, env=None, timeout=60, input=None, **settings)
    -> CompletedProcess (text). With config=True (the default) a generated
    celeryconfig is passed as a trailing `--config FILE`. timeout is
    multiplied by PTEL_TIMEOUT_SCALE."""
    count = [0]

    def run(*args, config=True, env=None, timeout=60.0, input=None, omit=(), **settings):
        argv = [str(worker_bin), *map(str, args)]
        if config:
            path = worker_config(omit=omit, **settings)
            argv += ["--config", str(path)]
        count[0] += 1
        argv = _wrapper_logs(argv, f"ptel-cli{count[0]}")
        return subprocess.run(argv, capture_output=True, text=True, timeout=scaled(timeout),
                              input=input, env=_worker_env(redis_url, env), cwd=tmp_path)
    return run


@pytest.fixture
def celery_app(redis_url):
    """A Python Celery client on the test Redis (default queue ingest)."""
    import celery

    app = celery.Celery("ptel-tests", broker=redis_url, backend=redis_url)
    app.conf.update(task_default_queue="ingest", task_serializer="json",
                    result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    yield app
    app.close()


@pytest.fixture
def python_worker(request, tmp_path, redis_url):
    """Factory: python_worker(*extra_args, name="py@%h", queues="ingest",
    env=None, ready_timeout=30) starts a real Celery 5.2 worker on pyapp/
    (-P solo) and waits for its " ready." line; stopped at teardown."""
    started = []

    def start(*args, name="py@%h", queues="ingest", env=None, ready_timeout=30.0,
              loglevel="info"):
        n = len(started) + 1
        argv = [PY, "-m", "celery", "-A", "pyapp", "worker", "-Q", queues, "-P", "solo",
                "-n", name, "-l", loglevel, *args]
        penv = env_without(OVERRIDE_VARS)
        penv["PYTHONPATH"] = str(HERE) + os.pathsep + penv.get("PYTHONPATH", "")
        penv["PYTHONUNBUFFERED"] = "1"
        penv["PTEL_TEST_REDIS_URL"] = redis_url
        penv.update(env or {})
        title = f"python celery worker #{n}"
        proc = ManagedProcess(title, argv, tmp_path / f"python-worker{n}.log", penv, tmp_path)
        _register_log(request, title, proc.log_path)
        started.append(proc)
        proc.start()
        proc.wait_for_log(" ready.", ready_timeout)
        return proc

    yield start
    for proc in started:
        proc.stop()
