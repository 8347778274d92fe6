"""gunicorn server hooks: one registry state per worker, the app wrapped, pools closed.

Import them into a gunicorn config file (the project's ``gunicorn.conf.py`` does)::

    from poolclient.gunicorn import (on_starting, pre_fork, post_fork, post_worker_init,
                                     worker_exit, child_exit, on_exit, dirty_worker_init)

Each has exactly the signature gunicorn validates. If your config defines a hook of the
same name, call ours from it.

Order in a worker, and why each step is where it is:

- ``pre_fork`` (master, before each fork): close any connections the master made itself,
  so that workers inherit none. Workers would never use them anyway (see ``_fork``).
- ``post_fork`` (child, straight after the fork, before gevent's monkey patch and before
  the app loads): forget anything inherited and size the pools for this worker. No lock,
  pool or socket is created here, and urllib3 is not imported: pools are created on first
  use, after the patch. Then it names each connection inherited that no pool owns
  (``poolclient.inherited``: other clients used in the master under ``--preload``).
- ``post_worker_init`` (child, app loaded, gevent patched): wrap the app in the middleware,
  unless it already wraps itself. WSGI workers get :mod:`poolclient.middleware`
  (``environ['http.pool']``). ASGI workers get :mod:`poolclient.asgi`
  (``scope["state"]["http.pool"]``): gunicorn's own ``asgi`` worker (the app at
  ``worker.asgi``; the registry also goes into ``worker.state``, which gunicorn copies into
  the lifespan scope and every request's state) and ``uvicorn_worker.UvicornWorker`` (the
  app at ``worker.wsgi``). So ``gunicorn -c gunicorn.conf.py -k asgi mod:app`` serves any
  ASGI app with no code in it. The ASGI worker's event loop exists here but does not run
  yet; nothing is bound to it.
- ``worker_exit`` (normally the child; gunicorn also calls it in the master when the
  worker was already gone): close the pools, only in the process that owns them, and hand
  the metrics of requests not yet published to their sink. Under the ASGI worker this runs
  after its event loop closed, and on SIGINT or SIGQUIT lifespan shutdown (where the
  middleware awaits ``registry.aclose()``) was skipped: ``close()`` drops the async pools
  without awaiting anything, and their counters are written here, so nothing is lost.
- ``dirty_worker_init`` (gunicorn 25+, each dirty worker, its apps loaded): its own pools,
  sized by ``dirty_threads``. Not ``dirty_post_fork``: gunicorn calls that in the dirty
  arbiter, after the fork, not in the new worker. The pools a dirty worker inherited were
  already forgotten at the fork (``_fork``); those its apps' ``init()`` made were sized
  before this hook and are closed, to be made again at the worker's size on next use.
- ``child_exit`` (master, a worker gone for whatever reason): drop its live gauges from the
  metrics; its counters stay, so totals keep what it did.
- ``on_exit`` (master, last): remove the metrics directory if poolclient made it.

Metrics (with ``poolclient[prometheus]``): ``on_starting`` makes sure
``PROMETHEUS_MULTIPROC_DIR`` names a directory (a new temporary one when unset) and wipes its
files from an earlier run. An app loaded with ``--preload`` is imported before
``on_starting``; ``gunicorn.conf.py`` therefore calls :func:`prepare_metrics_dir` when it is
read, and so should a config of your own that preloads.

Pool size per origin when ``POOLCLIENT_MAXSIZE`` is unset (:func:`worker_concurrency`):
gthread, its thread count; sync, 1; dirty workers, ``dirty_threads``; everything else 10.
For the ASGI workers 10 is deliberate: neither gunicorn's ``asgi`` worker nor uvicorn's
bounds requests in flight (``worker_connections`` is not enforced), so the pool is what
bounds fan-out per origin; async pools are per event loop and 10 is also httpcore's own
default. Sync calls from Starlette's and FastAPI's plain ``def`` endpoints run in a pool of
40 threads and share the sync pool of 10 with a bounded wait (``POOLCLIENT_POOL_TIMEOUT``),
rather than opening 40 connections; set ``POOLCLIENT_MAXSIZE=40`` to match the threads.

This module imports urllib3 only inside hooks that run after the patch (see
``poolclient/__init__``), and asyncio or any async package never: ``poolclient.asgi`` is
imported by ``post_worker_init`` only in ASGI workers.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import sys
import tempfile
import urllib.parse
from typing import TYPE_CHECKING, Any

from . import _fork, inherited, metrics
from .config import Settings
from .errors import ConfigError

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["child_exit", "dirty_worker_init", "on_exit", "on_starting", "post_fork",
           "post_worker_init", "pre_fork", "prepare_metrics_dir", "worker_exit"]

ASYNC_CONCURRENCY = 10  # per origin, for workers whose concurrency has no bound of its own

_made_dirs: set[str] = set()


def check_settings() -> Settings:
    """The settings from the environment, or exit naming the bad one in one line; the
    origins' policy settings (``POOLCLIENT_BREAKER`` and the rest) are checked too."""
    from .resilience.settings import PolicySettings

    try:
        settings = Settings.from_env()
        PolicySettings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"poolclient: {exc}") from None
    return settings


def worker_concurrency(worker: Any) -> int:
    """Connections per origin a worker of this kind needs so it never waits on itself; for
    workers without a bound of their own (gevent, eventlet, the ASGI workers) the bound
    (see the module docstring)."""
    kind = type(worker).__name__
    if kind == "ThreadWorker":
        return max(1, int(worker.cfg.threads))
    if kind == "SyncWorker":
        return 1
    return ASYNC_CONCURRENCY


def worker_protocol(worker: Any) -> str:
    """``"asgi"`` for gunicorn's own ASGI worker, ``"uvicorn"`` for uvicorn's (either
    package), ``"wsgi"`` for every other worker; read from the class, importing nothing."""
    for cls in type(worker).__mro__:
        module = cls.__module__
        if module == "gunicorn.workers.gasgi":
            return "asgi"
        if module.startswith(("uvicorn_worker", "uvicorn.workers")):
            return "uvicorn"
    return "wsgi"


def _loaded_registry() -> Registry | None:
    # Only a registry some code already made: looking one up must not import urllib3 into
    # a process that has not yet been monkey patched.
    module = sys.modules.get("poolclient.registry")
    return module._default if module is not None else None


def prepare_metrics_dir() -> str | None:
    """Make sure ``PROMETHEUS_MULTIPROC_DIR`` names an existing directory, creating a
    temporary one when it is unset; ``None`` without prometheus-client. Idempotent."""
    if not metrics.available():
        return None
    path = os.environ.get(metrics.MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="poolclient-metrics-")
        _made_dirs.add(path)
        # Set in the master's environment: every worker forked later inherits it.
        os.environ[metrics.MULTIPROC_ENV] = path
    os.makedirs(path, exist_ok=True)
    return path


def on_starting(server: Any) -> None:
    """Master, before anything starts: stop at once on a bad ``POOLCLIENT_*`` setting, and
    warn when a call may outlive gunicorn's worker timeout."""
    settings = check_settings()
    path = prepare_metrics_dir()
    if path is not None:
        # Counters are per pid file; a previous run's would be summed into this one's.
        # Files of processes still running are left: the directory may be shared (by
        # mistake, or during a USR2 upgrade) and their values are not ours to delete.
        for stale in glob.glob(os.path.join(path, "*.db")):
            if not _running(stale):
                os.remove(stale)
        server.log.info("poolclient: metrics of every worker in %s", path)
    timeout = getattr(server.cfg, "timeout", 0) or 0
    if timeout and settings.deadline >= timeout:
        server.log.warning(
            "poolclient: POOLCLIENT_DEADLINE=%s is not below gunicorn's timeout=%s: a sync "
            "worker waiting on a slow upstream would be killed instead of answering 504",
            settings.deadline, timeout)
    if timeout and settings.ready_urls and settings.ready_timeout >= timeout:
        server.log.warning(
            "poolclient: POOLCLIENT_READY_TIMEOUT=%s is not below gunicorn's timeout=%s: a "
            "sync worker checking readiness would be killed", settings.ready_timeout, timeout)


def pre_fork(server: Any, worker: Any) -> None:
    """Master, before each fork: close connections the master made itself (``--preload``
    imports that called out), so that no worker even inherits one."""
    global _exporter_peers
    if "opentelemetry.sdk" in sys.modules:  # resolved here: the child must not wait on DNS
        _exporter_peers = frozenset(_otlp_peers())
    registry = _loaded_registry()
    if registry is not None and registry.stats().pools and registry.close():
        server.log.info("poolclient: closed the master's own upstream connections before "
                        "forking; each worker opens its own")


def post_fork(server: Any, worker: Any) -> None:
    """Worker, just forked: drop inherited pools (never closing them), size new ones, let
    go of OpenTelemetry's exporter connections (below), and name the connections it
    inherited that no pool owns (``poolclient.inherited``)."""
    global _worker_pid
    _worker_pid = os.getpid()
    _fork.forget_inherited()
    _fork.set_concurrency(worker_concurrency(worker))
    if _released:
        server.log.info(
            "poolclient: let go of %d connection(s) to OpenTelemetry's exporter endpoint "
            "inherited from the master (%s); this worker's exporter opens its own",
            len(_released), ", ".join(sorted({c.peer for c in _released})))
    found = inherited.scan()
    if found:
        inherited.warn(found)
        if check_settings().inherited == "fail":
            raise inherited.InheritedConnectionError(found)


def post_worker_init(worker: Any) -> None:
    """Worker, app loaded: make the registry available to the app (``environ['http.pool']``
    under WSGI workers, ``scope["state"]["http.pool"]`` under ASGI ones), and count its
    inherited connections in the metrics (after gevent's patch, as every metric)."""
    protocol = worker_protocol(worker)
    if protocol == "wsgi":
        from .middleware import wrap

        worker.wsgi = wrap(worker.wsgi)
    else:
        from .asgi import wrap as wrap_asgi
        from .registry import get_registry

        if protocol == "asgi":
            worker.asgi = wrap_asgi(worker.asgi)
        else:  # uvicorn's worker serves worker.wsgi (it sets config.app from it in _serve)
            worker.wsgi = wrap_asgi(worker.wsgi)
        state = getattr(worker, "state", None)
        if isinstance(state, dict):  # gunicorn's ASGI worker: lifespan and every request
            state["http.pool"] = get_registry()
    if inherited.found() and metrics.available():
        metrics.inherited(inherited.found())


def worker_exit(server: Any, worker: Any) -> None:
    """Worker leaving: close its pools (async ones dropped without awaiting: an ASGI
    worker's loop has closed by now) and publish the counters still waiting. Never in the
    master, which owns none of them."""
    if os.getpid() != worker.pid:
        return
    registry = _loaded_registry()
    if registry is not None:
        registry.close()
    stats = sys.modules.get("poolclient.stats")
    if stats is not None:
        stats.publish_all()


def dirty_worker_init(worker: Any) -> None:
    """Dirty worker (gunicorn 25+), its apps loaded: pools of its own, sized by
    ``dirty_threads``. gunicorn's ``dirty_post_fork`` runs in the dirty arbiter, not here."""
    global _worker_pid
    _worker_pid = os.getpid()
    _fork.set_concurrency(max(1, int(getattr(worker.cfg, "dirty_threads", 1) or 1)))
    registry = _loaded_registry()
    if registry is not None:
        # Only this process's own (made by the apps' init(), at the old size): close()
        # never touches pools of another process, and inherited ones were forgotten at the
        # fork. The next call makes them again at this worker's size.
        registry.close()


def in_master() -> bool:
    """Whether this is gunicorn's master (or its dirty arbiter), under poolclient's hooks:
    gunicorn has loaded its arbiter here, and no worker hook has run in this process.
    Pools made here (``--preload``) report to OpenTelemetry nothing: whatever its SDK holds
    at the fork is copied into every worker, whose counters would each start with the
    master's calls (see :mod:`poolclient.integrations.otel`)."""
    if "gunicorn.arbiter" not in sys.modules or _worker_pid == os.getpid():
        return False
    main = sys.modules.get("__main__")  # gunicorn's own script or ``python -m gunicorn``
    spec = getattr(main, "__spec__", None)
    return (getattr(spec, "name", "") or "").startswith("gunicorn") or os.path.basename(
        getattr(main, "__file__", "") or "") == "gunicorn"


# OpenTelemetry's OTLP exporters, when its SDK is set up in the master
# (``opentelemetry-instrument gunicorn ...``), keep their HTTP connection to the collector
# open; an export from the master before the fork (its reader and span processor run from
# the start, in a thread) leaves that connection to every worker, and the master and the
# workers then write their exports on one TCP stream: corrupt protobuf at the collector, a
# worker reading the master's answer. The SDK restarts its threads in the child but keeps
# the exporters' sessions. So the worker lets go of its copy of each such connection: the
# descriptor is pointed at /dev/null (as poolclient's async pools release theirs), never
# closed, shut down or written, so the master's connection is untouched, and the worker's
# exporter finds the connection dropped and opens its own.
_OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
_worker_pid = 0


def _otlp_peers() -> set[str]:
    """``host:port`` (IPv6 in brackets) of each OTLP endpoint configured, and the
    defaults (``localhost`` 4317 and 4318) where an exporter is the OTLP one."""
    urls = {os.environ[name] for name in _OTLP_ENDPOINTS if os.environ.get(name)}
    if any(os.environ.get(f"OTEL_{kind}_EXPORTER", "") in ("", "otlp")
           for kind in ("TRACES", "METRICS", "LOGS")) and "opentelemetry.sdk" in sys.modules:
        urls |= {"http://localhost:4317", "http://localhost:4318"}
    peers = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            found = socket.getaddrinfo(parts.hostname or "localhost", port,
                                       type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            continue
        for family, _, _, _, address in found:
            host = str(address[0])
            peers.add(f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}")
    return peers


def _release_exporter_connections() -> None:
    """In a child just forked by a master whose ``pre_fork`` found OTLP endpoints: release
    its copies of inherited connections to them. Run by ``os.register_at_fork``, straight
    after OpenTelemetry's own at-fork handlers restart its exporting threads (each of which
    waits its interval first), not in ``post_fork``: gunicorn does more in the child
    before that hook, and a loaded machine let an export through on the master's
    connection first."""
    global _released
    _released = ()
    if not _exporter_peers:
        return
    mine = [c for c in inherited.scan() if c.peer in _exporter_peers]
    if not mine:
        return
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for connection in mine:
            os.dup2(devnull, connection.fd)
    finally:
        os.close(devnull)
    _released = tuple(mine)


def _metric_locks() -> list[Any]:
    """The locks OpenTelemetry's SDK holds while its reader thread collects and exports
    the global meter provider's metrics (private names, looked up defensively: none found,
    none held)."""
    api = sys.modules.get("opentelemetry.metrics")
    provider = api.get_meter_provider() if api is not None else None
    consumer = getattr(provider, "_measurement_consumer", None)
    locks = [getattr(consumer, "_lock", None)]
    locks += [getattr(reader, "_export_lock", None)
              for reader in getattr(provider, "_metric_readers", ())]
    return [lock for lock in locks if hasattr(lock, "acquire") and hasattr(lock, "release")]


# A fork while the master's metric reader thread collects or exports leaves its lock held
# in the child for good (only the forking thread survives a fork, and the SDK's at-fork
# handler restarts the thread but keeps the lock): the worker never exports a metric again.
# So the master, under poolclient's hooks with the SDK loaded, forks between exports: it
# takes the locks before the fork (waiting for an export under way) and each process gives
# them back after it.
_held: list[Any] = []


def _before_fork() -> None:
    if _exporter_peers:
        for lock in _metric_locks():
            lock.acquire()
            _held.append(lock)


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    _after_fork_in_parent()
    _release_exporter_connections()


_exporter_peers: frozenset[str] = frozenset()
_released: tuple[inherited.Inherited, ...] = ()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _running(path: str) -> bool:
    """Whether the process that wrote a ``<kind>_<pid>.db`` file is still alive."""
    pid = os.path.basename(path)[:-3].rsplit("_", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def child_exit(server: Any, worker: Any) -> None:
    """Master, a worker has exited: remove its live gauges from the metrics."""
    if metrics.available() and metrics.multiprocess():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """Master, shutting down: remove the metrics directory poolclient created."""
    path = os.environ.get(metrics.MULTIPROC_ENV, "")
    if path in _made_dirs:
        shutil.rmtree(path, ignore_errors=True)
        _made_dirs.discard(path)
