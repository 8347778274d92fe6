"""A plain WSGI app that knows nothing of poolclient's middleware.

Run with ``-c gunicorn.conf.py``, it still finds ``environ['http.pool']``. Each request
calls the upstream once, stamped with the calling process's pid so the upstream can tell
which process wrote on which connection. ``MASTER_CALLS=N`` makes N upstream calls at
import: in gunicorn's master under ``--preload``.
"""

import json
import os

import poolclient

UPSTREAM = os.environ["UPSTREAM_URL"]


def _call(pool: poolclient.Registry) -> int:
    r = pool.request("GET", UPSTREAM + "/echo", headers={"X-Client-Pid": str(os.getpid())})
    return r.status


for _ in range(int(os.environ.get("MASTER_CALLS", "0"))):
    _call(poolclient.get_registry())


def app(environ, start_response):
    status = _call(environ["http.pool"])
    body = json.dumps({"pid": os.getpid(), "upstream_status": status}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
