"""Smoke tests: the harness itself (services, Python Celery, fixtures) and,
once it is built, the C worker's basic life. Worker tests skip only while
$PTEL_WORKER_BIN does not exist."""

import signal
import uuid

import pytest

from helpers import ClickHouseError, clickhouse_ping, clickhouse_query


# ---- services -------------------------------------------------------------------

def test_redis_answers_ping(clean_redis, redis_url):
    assert clean_redis.ping() is True
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert port not in (6379, 6390)
    assert clean_redis.dbsize() == 0


def test_clickhouse_version_over_http(ch_query, clickhouse_url):
    version = ch_query("SELECT version()").strip()
    assert version.split(".")[0].isdigit(), version
    assert ":8123/" not in clickhouse_url


def test_clickhouse_auth_url_authenticates_as_ptel(clickhouse_auth_url):
    marker = uuid.uuid4().hex
    # 18.16 has no currentUser(): the running query lists its own user.
    who = clickhouse_query(
        clickhouse_auth_url,
        f"SELECT user FROM system.processes WHERE query LIKE '%{marker}%' LIMIT 1")
    assert who.strip() == "ptel"


def test_clickhouse_rejects_wrong_password(clickhouse_auth_url):
    bad = clickhouse_auth_url.replace("ptel:", "ptel:wrong", 1)
    with pytest.raises(ClickHouseError) as err:
        clickhouse_query(bad, "SELECT 1")
    assert "password" in err.value.body.lower()


def test_clickhouse_server_can_be_stopped_and_started(clickhouse_server, ch_query):
    ch_query("CREATE TABLE IF NOT EXISTS smoke_restart (x UInt8) ENGINE = Memory")
    clickhouse_server.stop()
    assert not clickhouse_ping(clickhouse_server.url)
    clickhouse_server.start()
    assert clickhouse_ping(clickhouse_server.url)
    assert ch_query("SELECT 1").strip() == "1"
    ch_query("DROP TABLE IF EXISTS smoke_restart")


# ---- Python Celery -----------------------------------------------------------------

def test_python_celery_is_the_protocol_reference():
    import celery
    import kombu

    # The captures in shared/protocol were recorded with these versions.
    assert celery.__version__.startswith("5.2."), celery.__version__
    assert kombu.__version__.startswith("5.2."), kombu.__version__


def test_python_worker_answers_ping(clean_redis, python_worker, celery_app):
    python_worker()
    assert celery_app.send_task("ptel.ping").get(timeout=15) == "pong"
    result = celery_app.send_task("dev_health_ops.workers.tasks.run_ingest_consumer")
    assert result.get(timeout=15) == "py-ingest"
    assert celery_app.send_task("ptel.echo", args=[{"a": [1, 2]}]).get(timeout=15) == {"a": [1, 2]}


# ---- the C worker (skipped until it is built) ---------------------------------------

def test_worker_version(ptel_cli):
    done = ptel_cli("version", config=False, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "version printed nothing"


def test_worker_starts_answers_ping_and_stops_on_sigterm(clean_redis, worker, celery_app):
    w = worker()
    assert celery_app.send_task("ptel.ping").get(timeout=15) == "pong"
    assert w.stop(signal.SIGTERM) == 0, w.log()[-2000:]
