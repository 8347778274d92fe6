"""The gunicorn hooks under ASGI workers: real gunicorn ``-k asgi -w 2`` and
``-k uvicorn_worker.UvicornWorker`` on a raw ASGI app with no poolclient code in it
(tests/apps/asgi_raw_app.py), counted at the TLS upstream; shutdowns leave no traceback and
lose no counter; the hooks' imports; dirty_worker_init."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
import urllib3

import poolclient.registry as registry_module
from poolclient import Registry, Settings, _fork
from poolclient.gunicorn import dirty_worker_init, worker_concurrency, worker_protocol
from tests.helpers import ROOT, Gunicorn, Upstream, health_by_worker, load, wait_for

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

APP = "tests.apps.asgi_raw_app:app"


def get_json(url: str) -> tuple[int, dict]:
    with urllib3.PoolManager(retries=False) as http:
        r = http.request("GET", url, headers={"Connection": "close"}, timeout=10)
    return r.status, json.loads(r.data)


def who_by_worker(server: Gunicorn, workers: set[int]) -> dict[int, dict]:
    """``/who`` from every worker, asked on fresh connections until each answered."""
    found: dict[int, dict] = {}

    def all_seen() -> bool:
        status, doc = get_json(server.url + "/who")
        assert status == 200, doc
        found[doc["pid"]] = doc
        return workers <= set(found)

    wait_for(all_seen, 20, "every worker to answer /who")
    return found


def stop(server: Gunicorn, sig: signal.Signals) -> int:
    server.proc.send_signal(sig)
    return server.proc.wait(timeout=30)


def assert_clean_log(server: Gunicorn) -> None:
    log = server.log()
    for bad in ("Traceback", "Exception ignored", "Task exception was never retrieved",
                "Worker exception", "lifespan shutdown error"):
        assert bad not in log, f"{bad!r} in the log:\n{log}"


def metrics_sum(directory: str, name: str) -> float:
    """A counter summed over every process's file in a prometheus multiprocess directory."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return sum(sample.value for family in registry.collect() for sample in family.samples
               if sample.name == name)


# --- the hooks' own behaviour ----------------------------------------------------------

def test_importing_the_hooks_imports_no_async_package_nor_urllib3():
    """The config file imports poolclient.gunicorn in the master: no asyncio, no async
    package, no urllib3 (it must come after gevent's patch)."""
    code = ("import sys, poolclient, poolclient.gunicorn; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'asyncio', 'anyio', "
            "'sniffio', 'httpx', 'httpx2', 'httpcore', 'httpcore2', 'aiohttp', 'trio', "
            "'uvloop', 'urllib3', 'requests'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_protocol_and_concurrency_by_class():
    from gunicorn.workers.gasgi import ASGIWorker
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker
    from uvicorn_worker import UvicornH11Worker, UvicornWorker

    def bare(cls: type) -> object:
        return cls.__new__(cls)

    assert worker_protocol(bare(ASGIWorker)) == "asgi"
    assert worker_protocol(bare(UvicornWorker)) == "uvicorn"
    assert worker_protocol(bare(UvicornH11Worker)) == "uvicorn"
    assert worker_protocol(bare(ThreadWorker)) == "wsgi"
    assert worker_protocol(bare(SyncWorker)) == "wsgi"
    assert worker_concurrency(bare(ASGIWorker)) == 10
    assert worker_concurrency(bare(UvicornWorker)) == 10


def test_dirty_worker_init_hook_is_valid_and_sizes_by_dirty_threads(tmp_path):
    """gunicorn's validator accepts it; it sets the process's concurrency to dirty_threads
    and closes the pools this process made before it (sized before), so the next call
    makes them at the new size."""
    from gunicorn.config import validate_callable

    assert validate_callable(1)(dirty_worker_init) is dirty_worker_init
    saved, saved_concurrency = registry_module._default, _fork.concurrency()
    registry = registry_module._default = Registry(Settings())
    try:
        _fork.set_concurrency(10)
        pool = registry.connection_from_host("127.0.0.1", 9, "http")
        assert pool.pool is not None and pool.pool.maxsize == 10
        dirty_worker_init(SimpleNamespace(cfg=SimpleNamespace(dirty_threads=3),
                                          pid=os.getpid()))
        assert _fork.concurrency() == 3 and registry.maxsize == 3
        assert pool.pool is None  # closed
        again = registry.connection_from_host("127.0.0.1", 9, "http")
        assert again is not pool and again.pool is not None and again.pool.maxsize == 3
    finally:
        registry.close()
        registry_module._default = saved
        _fork.set_concurrency(saved_concurrency)


# --- real gunicorn ---------------------------------------------------------------------

def test_asgi_worker_two_workers_state_health_and_counts(gunicorn, upstream: Upstream):
    """-k asgi -w 2, a raw app: each worker's requests see its own process-global
    registry in scope["state"]["http.pool"]; /health answers per worker; async and
    sync (thread) calls reach the upstream, each connection written by one process, and
    /health summed over the workers equals the upstream's count."""
    server = gunicorn(["-w", "2", "-k", "asgi", APP],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    workers = server.worker_pids()
    who = who_by_worker(server, workers)
    assert set(who) == workers
    assert all(doc["type"] == "Registry" and doc["is_global"] for doc in who.values())

    outcomes = load(server.url, clients=8, seconds=30, paths=("/async", "/sync"), requests=200)
    assert outcomes == Counter({200: 200})
    seen = upstream.stats()
    assert seen["requests"] == 200
    assert all(len(c["pids"]) == 1 for c in seen["connections"])
    assert {int(c["pids"][0]) for c in seen["connections"]} <= workers

    health = health_by_worker(server, workers)
    assert {doc["pid"] for doc in health.values()} == workers
    assert sum(doc["totals"]["requests"] for doc in health.values()) == 200
    kinds = {pool["kind"] for doc in health.values() for pool in doc["pools"]}
    assert kinds == {"sync", "async"}
    assert_clean_log(server)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_shutdown_leaves_no_traceback_and_loses_no_counter(gunicorn, upstream: Upstream,
                                                           tmp_path, sig):
    """Straight after a load, SIGTERM (lifespan shutdown runs: aclose) or SIGINT (it is
    skipped; worker_exit drops the pools after the loop closed): gunicorn exits 0, no
    traceback in the log, and the counters on disk equal the upstream's count."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = gunicorn(["-w", "2", "-k", "asgi", APP],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
                       "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    outcomes = load(server.url, clients=4, seconds=30, paths=("/async", "/sync"), requests=60)
    assert outcomes == Counter({200: 60})
    assert stop(server, sig) == 0
    assert_clean_log(server)
    assert upstream.stats()["requests"] == 60
    assert metrics_sum(str(metrics_dir), "poolclient_requests_total") == 60


def test_uvicorn_worker_gets_the_middleware(gunicorn, upstream: Upstream):
    """-k uvicorn_worker.UvicornWorker: the same raw app finds the registry in state, the
    middleware answers /health and /livez, async calls are counted."""
    server = gunicorn(["-w", "1", "-k", "uvicorn_worker.UvicornWorker", APP],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    (pid,) = server.worker_pids()
    status, doc = get_json(server.url + "/who")
    assert (status, doc) == (200, {"pid": pid, "type": "Registry", "is_global": True})
    for _ in range(3):
        assert get_json(server.url + "/async") == (200, {"pid": pid, "upstream_status": 200})
    assert get_json(server.url + "/livez") == (200, {"status": "pass"})
    status, health = get_json(server.url + "/health")
    assert status == 200 and health["pid"] == pid
    assert health["totals"]["requests"] == upstream.stats()["requests"] == 3
    assert stop(server, signal.SIGTERM) == 0
    assert_clean_log(server)


def test_a_sync_call_on_the_loop_is_named_once_per_worker(gunicorn, upstream: Upstream):
    """-k asgi -w 1: a sync call made on the event loop's thread is logged as a WARNING once
    (five calls), naming the app's file and line; the calls still go through. With
    POOLCLIENT_LOOP_CALLS=error it is a 500 and the upstream sees nothing."""
    line = next(n for n, text in enumerate(open(os.path.join(ROOT, "tests/apps/asgi_raw_app.py")),
                                           start=1) if "BLOCKING-CALL" in text)
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca}
    server = gunicorn(["-w", "1", "-k", "asgi", APP], env)
    for _ in range(5):
        assert get_json(server.url + "/blocking")[0] == 200
    assert upstream.stats()["requests"] == 5
    site = f"tests/apps/asgi_raw_app.py:{line} in app"
    assert server.log().count(site) == 1, server.log()
    assert "httpx2_async_transport()" in server.log()

    strict = gunicorn(["-w", "1", "-k", "asgi", APP], {**env, "POOLCLIENT_LOOP_CALLS": "error"})
    with urllib3.PoolManager(retries=False) as http:
        assert http.request("GET", strict.url + "/blocking").status == 500
    assert upstream.stats()["requests"] == 5
    assert "LoopBlockingError" in strict.log() and site in strict.log()


def test_dirty_worker_gets_its_own_pools_sized_by_dirty_threads(upstream: Upstream, tmp_path):
    """A dirty app (gunicorn 25+) that called the upstream in init() and again per action:
    after dirty_worker_init its pools have dirty_threads (3) connections per origin, not the
    default 10, and each upstream connection is written by one process (the dirty
    worker's, not the HTTP worker's)."""
    # Not the gunicorn fixture: it counts the master's children, and the dirty arbiter is one.
    server = Gunicorn(["-w", "1", "-k", "asgi", "--dirty-app",
                       "tests.apps.asgi_raw_app:DirtyRelay", "--dirty-workers", "1",
                       "--dirty-threads", "3", APP],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca},
                      str(tmp_path / "gunicorn.log"))
    try:
        def relayed() -> dict:
            if server.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{server.log()}")
            try:
                status, doc = get_json(server.url + "/dirty")
            except urllib3.exceptions.HTTPError:
                return {}
            return doc if status == 200 else {}

        doc = wait_for(relayed, 30, "the dirty worker to answer")
        http_worker = get_json(server.url + "/who")[1]["pid"]
        assert doc["upstream_status"] == 200 and doc["pid"] != http_worker
        assert doc["maxsize"] == 3 and doc["pools"] == [3]
        seen = upstream.stats()
        assert seen["requests"] == 2  # init() and relay
        assert all(c["pids"] == [str(doc["pid"])] for c in seen["connections"])
        assert stop(server, signal.SIGTERM) == 0
    finally:
        server.stop()
