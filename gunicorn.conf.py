"""gunicorn settings for the example service and for any WSGI or ASGI app run with ``-c``
this file.

Driven by the environment; command-line flags still win (``-w 2 --threads 4 -k gthread``).
The poolclient hooks give each worker its own pools and put them in ``environ['http.pool']``
of whatever WSGI app runs, or in ``scope["state"]["http.pool"]`` of an ASGI app under
``-k asgi`` or ``-k uvicorn_worker.UvicornWorker``, without changing the app. Dirty workers
(gunicorn 25+, ``dirty_apps``) get pools of their own from ``dirty_worker_init``.
"""

import os

from poolclient.gunicorn import (  # noqa: F401 - gunicorn reads these names
    check_settings,
    child_exit,
    dirty_worker_init,
    on_exit,
    on_starting,
    post_fork,
    post_worker_init,
    pre_fork,
    prepare_metrics_dir,
    worker_exit,
)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"gunicorn.conf.py: {name}={value!r} is not valid: "
                         "expected an integer of at least 1")
    return int(value)


# The example service shows its upstream time per request (header and access log).
os.environ.setdefault("POOLCLIENT_SERVER_TIMING", "true")
check_settings()  # a bad POOLCLIENT_* value stops here, in one line
prepare_metrics_dir()  # before a --preload'ed app can import prometheus-client

wsgi_app = "app.wsgi:application"
bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
workers = _int("WEB_CONCURRENCY", 2)
threads = _int("GUNICORN_THREADS", 4)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
timeout = _int("GUNICORN_TIMEOUT", 30)
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
access_log_format = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
                     '%(M)sms upstream="%({server-timing}o)s"')
# gunicorn 25+ opens a control socket at one fixed path per user; several servers on one
# machine (tests, benchmarks) would fight over it.
control_socket_disable = os.environ.get("GUNICORN_CONTROL_SOCKET", "") == ""
