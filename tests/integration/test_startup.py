"""Start-up: mingle's one-second wait for other workers' replies is part of
a default start (as with Celery); --without-mingle skips it, so a worker is
consuming within a fraction of a second."""

import time


def test_without_mingle_starts_consuming_at_once(worker, clean_redis, celery_app):
    t0 = time.monotonic()
    w = worker("--without-mingle")
    started = time.monotonic() - t0
    log = w.log()
    assert "mingle: disabled (--without-mingle)" in log
    assert "mingle: searching for neighbors" not in log
    # Mingle alone waits 1.0 s; the ASan build starts in well under 0.6 s.
    assert started < 0.6, f"ready after {started:.2f} s"
    assert celery_app.send_task("ptel.ping").get(timeout=10) == "pong"


def test_default_start_mingles_first(worker, clean_redis):
    t0 = time.monotonic()
    w = worker()
    started = time.monotonic() - t0
    log = w.log()
    assert "mingle: all alone" in log
    assert log.index("mingle: all alone") < log.index(" ready.")
    assert started >= 0.9, f"ready after {started:.2f} s: mingle did not wait for replies"
