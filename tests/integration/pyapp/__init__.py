"""pyapp: a real Python Celery app for the integration tests.

Started by the `python_worker` fixture as
    /usr/bin/python3 -m celery -A pyapp worker -Q ingest -P solo -n py@%h -l info
with PYTHONPATH=tests/integration. It defines Python versions of tasks under
the names the C worker registers, so tests can compare the two workers or run
them side by side on one queue and tell who ran a task by its result.

Broker and result backend come from PTEL_TEST_REDIS_URL (set by
tests/services.sh via scripts/test), or CELERY_BROKER_URL /
CELERY_RESULT_BACKEND when given.
"""

import os
import time

from celery import Celery

_redis = os.environ.get("PTEL_TEST_REDIS_URL", "redis://127.0.0.1:6390/0")

app = Celery(
    "pyapp",
    broker=os.environ.get("CELERY_BROKER_URL", _redis),
    backend=os.environ.get("CELERY_RESULT_BACKEND", _redis),
)
# The upstream platform's settings that matter (telemetry/CONTRACT.md §5).
app.conf.update(
    task_default_queue="ingest",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json", "application/x-msgpack", "msgpack"],
    task_track_started=True,
    worker_prefetch_multiplier=1,
    result_expires=86400,
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="dev_health_ops.workers.tasks.run_ingest_consumer")
def run_ingest_consumer(*args, **kwargs):
    """Upstream's other task on the ingest queue; the C worker does not
    implement it, so a Python worker must be there to run it."""
    return "py-ingest"


@app.task(name="dev_health_ops.workers.tasks.run_product_telemetry_consumer")
def run_product_telemetry_consumer(max_iterations=100):
    """Stand-in that does no work; marks the result as Python's."""
    return {"processed": 0, "worker": "python", "max_iterations": int(max_iterations)}


@app.task(name="ptel.ping")
def ping():
    return "pong"


@app.task(name="ptel.echo")
def echo(*args, **kwargs):
    """One positional argument and no kwargs: return it unchanged.
    Otherwise return {"args": [...], "kwargs": {...}}."""
    if len(args) == 1 and not kwargs:
        return args[0]
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="ptel.sleep")
def sleep(seconds=1.0):
    time.sleep(float(seconds))
    return seconds


@app.task(name="ptel.fail")
def fail(message="boom"):
    raise RuntimeError(message)
