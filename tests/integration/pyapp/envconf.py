"""pyapp.envconf: per-test settings for the pyapp Python worker, read from
the environment, for tests that need a non-default Python worker.

Load it with the worker's include option, after the app is configured and
before the worker connects:
    python_worker("-I", "pyapp.envconf",
                  env={"PTEL_PY_VISIBILITY_TIMEOUT": "5"})

Variables (unset = pyapp's default):
  PTEL_PY_VISIBILITY_TIMEOUT   broker_transport_options visibility_timeout, seconds
"""

import os

from pyapp import app

_vt = os.environ.get("PTEL_PY_VISIBILITY_TIMEOUT")
if _vt:
    options = dict(app.conf.broker_transport_options or {})
    options["visibility_timeout"] = float(_vt)
    app.conf.broker_transport_options = options
