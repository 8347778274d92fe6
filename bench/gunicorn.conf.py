"""gunicorn settings shared by every contender of ``python -m bench.run``.

The same workers, threads and worker class for all of a kind (``BENCH_WORKER_CLASS``:
gthread for the WSGI apps, ``asgi``, gunicorn's own asyncio worker, for the ASGI ones); no
access log (it would cost the same for all and measure nothing).
``BENCH_HOOKS=poolclient`` adds poolclient's hooks, exactly as the project's
``gunicorn.conf.py`` uses them, for the poolclient contenders only.
"""

import os

bind = os.environ.get("BENCH_BIND", "127.0.0.1:8100")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = os.environ.get("BENCH_WORKER_CLASS", "gthread")
# The ASGI worker's loop named rather than "auto", which would take uvloop if it happened to
# be installed.
asgi_loop = "asyncio"
# No keep-alive from wrk to gunicorn: a kept-alive client stays with the worker that
# accepted it, and 16 of them can land 12 on one worker and 4 on the other (seen here: half
# the req/s and half the upstream connections in such a run). A connection per request
# spreads the load evenly and costs every contender the same.
keepalive = 0
accesslog = None
errorlog = os.environ.get("BENCH_ERRORLOG", "-")
loglevel = "warning"
control_socket_disable = True

if os.environ.get("BENCH_HOOKS") == "poolclient":
    # Every hook, as gunicorn.conf.py names them (gunicorn ignores the other names).
    from poolclient.gunicorn import *  # noqa: F403
