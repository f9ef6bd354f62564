"""bench/baselines/celery_app.py: the Python Celery worker baseline.

A Celery 5.2 app with the upstream settings that matter (CONTRACT §1: json
only, task_track_started=True, Redis broker and result backend, prefetch
multiplier 1, result_expires 86400) and one task, ptel.ping, returning "pong"
like ptel-worker's built-in ptel.ping. Run with the Debian python3-celery:

  BENCH_BROKER_URL=redis://127.0.0.1:7600/0 \
    /usr/bin/python3 -m celery -A celery_app worker -P solo -Q ingest -l info
"""
import os

from celery import Celery

URL = os.environ.get("BENCH_BROKER_URL", "redis://localhost:6379/0")

app = Celery("ptel_bench")
app.conf.update(
    broker_url=URL,
    result_backend=URL,
    task_track_started=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=1,
    task_default_queue="ingest",
    result_expires=86400,
    task_acks_late=False,
    task_time_limit=3600,
    task_soft_time_limit=3300,
    timezone="UTC",
    enable_utc=True,
)


@app.task(name="ptel.ping")
def ping():
    return "pong"
