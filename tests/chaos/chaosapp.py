"""chaosapp: the Python Celery worker of the chaos suite's recovery rounds.

Python versions of the C worker's diagnostic tasks (same names, same
results), with the ack mode and visibility timeout the round asks for:
  PTEL_TEST_REDIS_URL        broker and result backend
  PTEL_CHAOS_ACKS_LATE       1: task_acks_late=True
  PTEL_CHAOS_VT              broker_transport_options visibility_timeout, seconds
Started as: python3 -m celery -A chaosapp worker -P solo -Q ingest ...
"""

import os
import time

from celery import Celery

_redis = os.environ["PTEL_TEST_REDIS_URL"]
app = Celery("chaosapp", broker=_redis, backend=_redis)
app.conf.update(
    task_default_queue="ingest", task_serializer="json", result_serializer="json",
    accept_content=["json"], task_track_started=True, worker_prefetch_multiplier=1,
    task_acks_late=os.environ.get("PTEL_CHAOS_ACKS_LATE") == "1",
    broker_transport_options={"visibility_timeout": float(os.environ.get("PTEL_CHAOS_VT", "3"))},
    broker_connection_retry_on_startup=True, worker_hijack_root_logger=True,
)


@app.task(name="ptel.ping")
def ping():
    return "pong"


@app.task(name="ptel.echo")
def echo(*args, **kwargs):
    if len(args) == 1 and not kwargs:
        return args[0]
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="ptel.sleep")
def sleep(seconds=1.0):
    time.sleep(float(seconds))
    return float(seconds)


@app.task(name="ptel.flaky", bind=True, max_retries=None)
def flaky(self, times):
    """As tasks/builtin.c: retry with countdown 1 until retries == times."""
    if self.request.retries < int(times):
        raise self.retry(countdown=1)
    return self.request.retries
