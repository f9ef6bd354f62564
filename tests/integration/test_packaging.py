"""Packaging (issue #7 part 5): what `meson install` puts in place, the
man page ptel-worker(1), the systemd unit, and `ptel-worker version`.

Tools: groff and man (Debian groff-base, man-db) render the page;
systemd-analyze (Debian systemd) verifies the unit. Where a tool is
missing the test skips with the package to install, except under CI
(env CI set), where it fails: CI must install them.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
MAN_PAGE = REPO / "docs" / "ptel-worker.1"
UNIT = REPO / "dist" / "ptel-worker.service"
SAMPLE = REPO / "celeryconfig.sample"
SUBCOMMANDS = ["worker", "drain", "dlq", "schema", "report", "send", "version"]


def need_tool(name, package):
    path = shutil.which(name)
    if not path:
        msg = f"{name} is not installed (Debian package {package})"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must install it")
        pytest.skip(msg)
    return path


def run(argv, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 120)
    return subprocess.run([str(a) for a in argv], **kw)


@pytest.fixture(scope="module")
def build_dir(worker_bin):
    """The meson build directory the tested binary comes from."""
    d = Path(worker_bin).resolve().parent.parent
    if not (d / "meson-info").is_dir():
        pytest.skip(f"{d} is not a meson build directory")
    return d


def unit_settings():
    """The unit as {key: [values]} (systemd allows repeated keys)."""
    out = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def man_source_text():
    """The page's source with roff escapes for '-' and fonts undone, so flags
    can be searched as typed on a command line."""
    text = MAN_PAGE.read_text()
    text = text.replace("\\-", "-").replace("\\e", "\\")
    return re.sub(r"\\f[BIRP]", "", text)


# ---- meson install ----------------------------------------------------------------

def test_meson_install_puts_binary_example_config_man_page_and_unit(build_dir, tmp_path):
    dest = tmp_path / "destdir"
    done = run(["meson", "install", "-C", build_dir, "--no-rebuild", "--destdir", dest])
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(run(["meson", "introspect", build_dir, "--installed"]).stdout)
    by_name = {Path(dst).name: dst for dst in plan.values()}
    for name in ("ptel-worker", "ptel-worker.1", "celeryconfig.sample", "ptel-worker.service"):
        assert name in by_name, f"{name} is not installed: {plan}"
    installed = {name: dest / dst.lstrip("/") for name, dst in by_name.items()}
    for name, path in installed.items():
        assert path.is_file(), f"{name} missing at {path}"

    prefix = json.loads(run(["meson", "introspect", build_dir, "--buildoptions"]).stdout)
    prefix = next(o["value"] for o in prefix if o["name"] == "prefix")
    assert by_name["ptel-worker"] == f"{prefix}/bin/ptel-worker"
    assert by_name["ptel-worker.1"] == f"{prefix}/share/man/man1/ptel-worker.1"
    assert by_name["celeryconfig.sample"] == \
        f"{prefix}/share/doc/ptel-worker/examples/celeryconfig.sample"
    assert by_name["ptel-worker.service"] == f"{prefix}/lib/systemd/system/ptel-worker.service"

    assert os.access(installed["ptel-worker"], os.X_OK)
    assert installed["ptel-worker.1"].read_bytes() == MAN_PAGE.read_bytes()
    assert installed["celeryconfig.sample"].read_bytes() == SAMPLE.read_bytes()
    assert installed["ptel-worker.service"].read_bytes() == UNIT.read_bytes()
    version = run([installed["ptel-worker"], "version"])
    assert version.returncode == 0 and version.stdout.startswith("ptel-worker ")


# ---- man page -----------------------------------------------------------------------

def test_man_page_renders_without_warnings():
    groff = need_tool("groff", "groff-base")
    done = run([groff, "-man", "-ww", "-z", MAN_PAGE])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert not re.search(r"warning", done.stdout + done.stderr, re.I)

    man = need_tool("man", "man-db")
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    done = run([man, "--warnings", "-l", MAN_PAGE], env=env)
    assert done.returncode == 0, done.stderr
    assert "warning:" not in done.stderr, done.stderr
    assert done.stderr.strip() == "", done.stderr
    text = re.sub(r".\x08", "", done.stdout)     # bold/underline overstrikes
    assert text.startswith("PTEL-WORKER(1)")
    assert max(len(line) for line in text.splitlines()) <= 80
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "CONFIGURATION FILE",
                    "ENVIRONMENT", "SIGNALS", "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.M), heading


def test_man_page_documents_every_subcommand_and_flag(ptel_cli):
    text = man_source_text()
    for sub in SUBCOMMANDS:
        assert re.search(rf"^\.SY ptel-worker\n\.B {sub}$", text, re.M), sub
    # every flag the binary's own help lists is in the page
    helps = [("worker", "--help"), ("report", "--help"), ("send", "--help"),
             ("drain", "--help"), ("schema", "--help"), ("dlq", "list", "--help"),
             ("dlq", "show", "--help"), ("dlq", "replay", "--help"), ("dlq", "purge", "--help")]
    for args in helps:
        done = ptel_cli(*args, config=False, timeout=20)
        assert done.returncode == 0, (args, done.stderr)
        flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*[a-z]|-[A-Za-z])\b", done.stdout))
        flags.discard("-h")
        assert flags, args
        for flag in sorted(flags):
            assert flag in text, f"{' '.join(args)}: {flag} is not in the man page"
    for word in ("SIGTERM", "SIGINT", "SIGQUIT", "SIGUSR1", "worker_shutdown_grace",
                 "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "CLICKHOUSE_URL",
                 "/etc/ptel-worker/celeryconfig.py", "celeryconfig.sample",
                 "ptel-worker.service"):
        assert word in text, word


# ---- systemd unit ----------------------------------------------------------------

def test_systemd_unit_settings():
    s = unit_settings()
    assert s["Type"] == ["simple"]
    assert s["ExecStart"] == [
        "/usr/bin/ptel-worker worker --config /etc/ptel-worker/celeryconfig.py"]
    assert s["Restart"] == ["on-failure"]
    assert s["KillSignal"] == ["SIGTERM"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s.get("DynamicUser") == ["yes"] or s.get("User"), "needs its own user"
    assert s["ReadWritePaths"] and s["StateDirectory"]
    assert s["Documentation"] == ["man:ptel-worker(1)"]
    # the stop timeout covers the warm-shutdown grace (default from the sample) plus margin
    grace = float(re.search(r"^worker_shutdown_grace\s*=\s*([0-9.]+)", SAMPLE.read_text(),
                            re.M).group(1))
    stop = s["TimeoutStopSec"][0]
    stop_s = float(stop[:-1]) if stop.endswith("s") else float(stop)
    assert grace + 10 <= stop_s <= grace + 30, (grace, stop)


def test_systemd_analyze_verify_passes(worker_bin, tmp_path):
    analyze = need_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's binary exists and that Documentation=
    # man:ptel-worker(1) resolves: point both at this checkout's files.
    unit = tmp_path / "ptel-worker.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/ptel-worker", str(worker_bin)))
    mandir = tmp_path / "man" / "man1"
    mandir.mkdir(parents=True)
    shutil.copy(MAN_PAGE, mandir / "ptel-worker.1")
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_LEVEL="notice")
    done = run([analyze, "verify", unit], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ptel-worker.service" not in done.stderr, done.stderr


# ---- version ------------------------------------------------------------------------

def pkg_version(name):
    if not shutil.which("pkg-config"):
        return None
    done = run(["pkg-config", "--modversion", name])
    return done.stdout.strip() if done.returncode == 0 else None


def test_version_prints_ours_and_the_linked_libraries(ptel_cli, build_dir):
    done = ptel_cli("version", config=False, timeout=10)
    assert done.returncode == 0, done.stderr
    project = json.loads(run(["meson", "introspect", build_dir, "--projectinfo"]).stdout)
    lines = done.stdout.splitlines()
    assert lines[0] == f"ptel-worker {project['version']}"
    libs = dict(line.split(None, 1) for line in lines[1:] if len(line.split(None, 1)) == 2)
    for label, pc in (("hiredis", "hiredis"), ("msgpack-c", "msgpack"), ("cJSON", "libcjson"),
                      ("libcurl", "libcurl"), ("zlib", "zlib")):
        assert label in libs, f"{label} missing from `ptel-worker version`:\n{done.stdout}"
        assert re.match(r"^\d+\.\d+(\.\d+)?", libs[label]), (label, libs[label])
        expected = pkg_version(pc)
        if expected:
            assert libs[label] == expected, (label, libs[label], expected)
