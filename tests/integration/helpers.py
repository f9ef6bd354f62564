"""Small helpers shared by the integration tests and conftest.py.

Only the standard library and Debian's python3-* modules: these tests run
with /usr/bin/python3. Nothing here starts services; conftest.py does.
"""

import base64
import os
import shlex
import socket
import time
import urllib.error
import urllib.parse
import urllib.request


def timeout_scale():
    """PTEL_TIMEOUT_SCALE (default 1): how much slower than usual the worker
    under test runs, e.g. 5 under valgrind (tests/valgrind/run)."""
    try:
        scale = float(os.environ.get("PTEL_TIMEOUT_SCALE") or 1)
    except ValueError:
        raise ValueError("PTEL_TIMEOUT_SCALE must be a number") from None
    return max(scale, 1.0)


def scaled(seconds):
    """seconds stretched by timeout_scale(); unchanged when it is 1."""
    return seconds * timeout_scale()


def wrapper_argv():
    """PTEL_WORKER_WRAPPER split into argv words ([] when unset): a command
    every ptel-worker process of the tests is started under, e.g.
    "valgrind --log-file={log} ..."; {log} stands for a per-process log path
    that conftest.py fills in and checks."""
    return shlex.split(os.environ.get("PTEL_WORKER_WRAPPER") or "")


def wait_for(cond, timeout=10.0, interval=0.05, desc=None):
    """Call cond() until it returns something truthy; return that value.

    Raises TimeoutError naming desc (or cond) after timeout seconds (times
    PTEL_TIMEOUT_SCALE: every wait here is an upper bound on something the
    worker does, so a slowed-down worker gets proportionally longer). An
    exception raised by cond() counts as "not yet" and is shown on timeout.
    """
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        if time.monotonic() >= deadline:
            what = desc or getattr(cond, "__name__", repr(cond))
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def free_port():
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=60):
    """The last `lines` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid):
    """True while pid exists and is not a zombie (PID 1 here may be slow to
    reap orphans, so a plain kill(pid, 0) is not enough)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def pid_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class ClickHouseError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body.strip()[:500]}")
        self.status = status
        self.body = body


def clickhouse_query(url, sql, data=None, timeout=10.0, settings=None):
    """Run one statement over ClickHouse's HTTP interface; return the body text.

    url may carry user:password (http://user:pw@host:port/); they are sent
    as HTTP basic auth, as the worker does. With data, sql is sent in the
    query string and data as the POST body (INSERT ... FORMAT X). Raises
    ClickHouseError on a non-200 answer.
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    params = {"query": sql} if data is not None else {}
    params.update(settings or {})
    query = urllib.parse.urlencode(params)
    target = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", query, ""))
    body = data if data is not None else sql
    if isinstance(body, str):
        body = body.encode("utf-8")
    req = urllib.request.Request(target, data=body, method="POST")
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise ClickHouseError(exc.code, exc.read().decode("utf-8", "replace")) from None


def clickhouse_ping(url, timeout=2.0):
    """True when the server at url answers /ping with 'Ok.'."""
    parts = urllib.parse.urlsplit(url)
    target = f"{parts.scheme}://{parts.hostname}:{parts.port}/ping"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            return resp.read().strip() == b"Ok."
    except OSError:
        return False


def write_celeryconfig(path, settings):
    """Write settings as a celeryconfig in the Python-literal subset the
    worker reads (DESIGN §5): `name = literal` lines, one per setting."""
    lines = ["# generated by tests/integration (conftest.py)"]
    for name, value in settings.items():
        lines.append(f"{name} = {value!r}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def env_without(keys, base=None):
    """A copy of the environment without keys (e.g. CELERY_BROKER_URL, so a
    developer's shell cannot redirect a test's worker)."""
    env = dict(os.environ if base is None else base)
    for k in keys:
        env.pop(k, None)
    return env
