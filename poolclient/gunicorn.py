"""gunicorn server hooks: one registry state per worker, the app wrapped, pools closed.

Import them into a gunicorn config file (the project's ``gunicorn.conf.py`` does)::

    from poolclient.gunicorn import on_starting, pre_fork, post_fork, post_worker_init, worker_exit

Each has exactly the signature gunicorn validates. If your config defines a hook of the
same name, call ours from it.

Order in a worker, and why each step is where it is:

- ``pre_fork`` (master, before each fork): close any connections the master made itself,
  so that workers inherit none. Workers would never use them anyway (see ``_fork``).
- ``post_fork`` (child, straight after the fork, before gevent's monkey patch and before
  the app loads): forget anything inherited and size the pools for this worker. No lock,
  pool or socket is created here, and urllib3 is not imported: pools are created on first
  use, after the patch.
- ``post_worker_init`` (child, app loaded, gevent patched): wrap the app in the middleware,
  unless it already wraps itself.
- ``worker_exit`` (normally the child; gunicorn also calls it in the master when the
  worker was already gone): close the pools, only in the process that owns them.

This module imports urllib3 only inside hooks that run after the patch (see
``poolclient/__init__``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from . import _fork
from .config import Settings
from .errors import ConfigError

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["on_starting", "post_fork", "post_worker_init", "pre_fork", "worker_exit"]


def check_settings() -> Settings:
    """The settings from the environment, or exit naming the bad one in one line."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"poolclient: {exc}") from None


def worker_concurrency(worker: Any) -> int:
    """Connections per origin a worker of this kind needs so it never waits on itself."""
    kind = type(worker).__name__
    if kind == "ThreadWorker":
        return max(1, int(worker.cfg.threads))
    if kind == "SyncWorker":
        return 1
    return 10


def _loaded_registry() -> Registry | None:
    # Only a registry some code already made: looking one up must not import urllib3 into
    # a process that has not yet been monkey patched.
    module = sys.modules.get("poolclient.registry")
    return module._default if module is not None else None


def on_starting(server: Any) -> None:
    """Master, before anything starts: stop at once on a bad ``POOLCLIENT_*`` setting, and
    warn when a call may outlive gunicorn's worker timeout."""
    settings = check_settings()
    timeout = getattr(server.cfg, "timeout", 0) or 0
    if timeout and settings.deadline >= timeout:
        server.log.warning(
            "poolclient: POOLCLIENT_DEADLINE=%s is not below gunicorn's timeout=%s: a sync "
            "worker waiting on a slow upstream would be killed instead of answering 504",
            settings.deadline, timeout)


def pre_fork(server: Any, worker: Any) -> None:
    """Master, before each fork: close connections the master made itself (``--preload``
    imports that called out), so that no worker even inherits one."""
    registry = _loaded_registry()
    if registry is not None and registry.stats().pools and registry.close():
        server.log.info("poolclient: closed the master's own upstream connections before "
                        "forking; each worker opens its own")


def post_fork(server: Any, worker: Any) -> None:
    """Worker, just forked: drop inherited pools (never closing them) and size new ones."""
    _fork.forget_inherited()
    _fork.set_concurrency(worker_concurrency(worker))


def post_worker_init(worker: Any) -> None:
    """Worker, app loaded: make ``environ['http.pool']`` available to the app."""
    from .middleware import wrap

    worker.wsgi = wrap(worker.wsgi)


def worker_exit(server: Any, worker: Any) -> None:
    """Worker leaving: close its pools. Never in the master, which owns none of them."""
    registry = _loaded_registry()
    if registry is not None and os.getpid() == worker.pid:
        registry.close()
