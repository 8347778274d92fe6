"""Shared set-up of the microbenchmarks: environment hygiene, the Prometheus storage mode,
pools filled with connections that never touch a network, and provenance in the JSON.

Use it through pytest (``python -m pytest bench/micro --benchmark-only``); add
``--prometheus-multiproc`` for a second run whose Prometheus sinks write prometheus-client's
multiprocess files, as under gunicorn. ``bench/micro/report.py`` makes both runs and the
Markdown page.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, cast

import pytest
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPSConnectionPool

import poolclient
from poolclient import metrics
from poolclient.config import Settings
from poolclient.pool import CountedHTTPSConnectionPool, CountedPool
from poolclient.stats import PoolStats

# requests reads these and this machine sets them; nothing measured here may depend on
# whether a CA file exists, so they are gone before any pool is built.
for _name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_name, None)

MAXSIZE = 8
ORIGIN = ("127.0.0.1", 8443)  # never connected to

# The pools under test: urllib3's own, and poolclient's with and without its Prometheus sink.
POOLS = ("urllib3", "poolclient+no-sink", "poolclient+prometheus")
# What a bare PoolStats reports to besides its counters.
SINKS = ("none", "prometheus")
ORIGIN_LABELS = ("https", ORIGIN[0], ORIGIN[1])

PoolFactory = Callable[[str, str], HTTPSConnectionPool]
# One call a pool made on its PoolStats: method name, positional and keyword arguments.
Call = tuple[str, tuple[Any, ...], dict[str, Any]]

_MULTIPROC_DIR = pytest.StashKey[str]()  # the directory this run made, to remove at the end
_LOAD_AT_START = pytest.StashKey[float | None]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--prometheus-multiproc", action="store_true",
        help="point PROMETHEUS_MULTIPROC_DIR at a fresh temporary directory before "
             "prometheus-client is imported, so Prometheus sinks write multiprocess files")


def pytest_configure(config: pytest.Config) -> None:
    # Another process busy on a 2-CPU machine moves these figures more than most changes
    # would, so the page says how loaded the machine was.
    config.stash[_LOAD_AT_START] = _load()
    if not config.getoption("--prometheus-multiproc"):
        return
    # prometheus-client picks its value storage once, at import: afterwards the variable
    # would be read by nobody and the run would silently measure the in-memory values.
    if "prometheus_client" in sys.modules:
        raise pytest.UsageError("prometheus_client was imported before the conftest ran")
    directory = tempfile.mkdtemp(prefix="poolclient-bench-prom-")
    config.stash[_MULTIPROC_DIR] = directory
    os.environ[metrics.MULTIPROC_ENV] = directory


def pytest_unconfigure(config: pytest.Config) -> None:
    directory = config.stash.get(_MULTIPROC_DIR, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def sink_mode() -> str:
    """Where a Prometheus sink's values live in this run: memory, multiprocess or absent."""
    if not metrics.available():
        return "absent"
    return "multiprocess" if metrics.multiprocess() else "memory"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pool_kind" in metafunc.fixturenames:
        metafunc.parametrize("pool_kind", POOLS)
    if "sink_kind" in metafunc.fixturenames:
        metafunc.parametrize("sink_kind", SINKS)


@pytest.fixture
def pool_info(pool_kind: str) -> dict[str, str]:
    """The ``extra_info`` naming the pool kind for the report; skips what this run repeats."""
    if pool_kind == "urllib3":
        _skip_unless_sink_varies(False)
        return {"pool": "urllib3", "sink": "n/a"}
    return {"pool": "poolclient", **_sink_info(pool_kind.partition("+")[2])}


@pytest.fixture
def contenders() -> dict[str, dict[str, str]]:
    """Every pool kind of :data:`POOLS` this run measures side by side, with its
    ``extra_info``: urllib3's always (the baseline each run needs for itself), poolclient's
    without a sink only in the in-memory run."""
    kinds = [kind for kind in POOLS
             if not (metrics.multiprocess() and kind == "poolclient+no-sink")
             and not (kind == "poolclient+prometheus" and sink_mode() == "absent")]
    return {kind: {"pool": "urllib3", "sink": "n/a"} if kind == "urllib3"
            else {"pool": "poolclient", **_sink_info(kind.partition("+")[2])}
            for kind in kinds}


@pytest.fixture
def sink_info(sink_kind: str) -> dict[str, str]:
    """``{"sink": none | memory | multiprocess}``; skips what this run repeats."""
    return _sink_info(sink_kind)


@pytest.fixture
def measured_once() -> None:
    """For a case no Prometheus sink takes part in: skipped in the multiprocess run."""
    _skip_unless_sink_varies(False)


def _sink_info(kind: str) -> dict[str, str]:
    _skip_unless_sink_varies(kind == "prometheus")
    return {"sink": "none" if kind in ("none", "no-sink") else _checked_sink_mode()}


def _checked_sink_mode() -> str:
    mode = sink_mode()
    if mode == "absent":
        pytest.skip("prometheus-client is not installed")
    metrics.pool_sink(*ORIGIN_LABELS)  # creates the families, so the storage is chosen
    from prometheus_client import values

    # A mode that says "multiprocess" while values stay in memory would be a wrong row.
    file_backed = getattr(values.ValueClass, "__name__", "MutexValue") != "MutexValue"
    if file_backed != (mode == "multiprocess") or metrics.problem() is not None:
        pytest.fail(f"prometheus-client's storage does not match the {mode} mode")
    return mode


def _skip_unless_sink_varies(uses_sink: bool) -> None:
    # The multiprocess run repeats only what a Prometheus sink takes part in; the rest was
    # measured in the in-memory run and would only be a duplicate row.
    if metrics.multiprocess() and not uses_sink:
        pytest.skip("does not involve a Prometheus sink: measured in the in-memory run")


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    """``make_pool(kind, state)``: a pool of :data:`MAXSIZE` connections, every one already
    created so that neither pool builds a connection object inside the timed loop.

    ``state`` is ``unconnected`` (never had a socket, as after a close) or ``open`` (a socket
    that is one end of a local socketpair, so the liveness poll on checkout sees a healthy
    idle connection and poolclient takes its reuse path: idle gauge, lifetime checks).
    """
    pools: list[HTTPSConnectionPool] = []
    peers: list[socket.socket] = []

    def make(kind: str, state: str) -> HTTPSConnectionPool:
        pool: HTTPSConnectionPool
        if kind == "urllib3":
            pool = HTTPSConnectionPool(*ORIGIN, maxsize=MAXSIZE, block=True)
        else:
            pool = CountedHTTPSConnectionPool(*ORIGIN, maxsize=MAXSIZE, block=True)
            _configure_like_registry(pool)
            if kind == "poolclient+no-sink":
                pool.stats.sink = None
        pools.append(pool)
        # urllib3 fills its queue with None placeholders; a checkout of one builds a
        # connection object, which a pool in steady state never does.
        conns = [cast(HTTPConnection, pool._get_conn(timeout=1.0)) for _ in range(MAXSIZE)]
        for conn in conns:
            if state == "open":
                ours, theirs = socket.socketpair()
                peers.append(theirs)
                conn.sock = ours
                if isinstance(pool, CountedPool):
                    conn.connected_at = time.monotonic()  # type: ignore[attr-defined]
        for conn in conns:
            pool._put_conn(conn)
        return pool

    yield make
    for pool in pools:
        pool.close()
    for peer in peers:
        peer.close()


@pytest.fixture(scope="session")
def stats_calls() -> dict[str, list[Call]]:
    """The PoolStats calls poolclient's own code makes, recorded rather than written down
    here, so the counters benchmark follows ``poolclient/pool.py`` as it changes.

    ``request``: one GET on a reused connection, through ``urlopen`` (checkout, attempt,
    response, return), answered over a local socketpair. ``checkout`` and ``checkin``: what
    ``_get_conn()`` and ``_put_conn()`` alone make, to hold a connection the way a
    concurrent request does and to let it go.
    """
    pool = CountedHTTPSConnectionPool(*ORIGIN, maxsize=1, block=True)
    _configure_like_registry(pool)
    pool.stats.sink = None
    ours, theirs = socket.socketpair()
    conn = cast(HTTPConnection, pool._get_conn(timeout=1.0))
    conn.sock = ours
    conn.connected_at = time.monotonic()  # type: ignore[attr-defined]
    pool._put_conn(conn)
    server = threading.Thread(target=_answer, args=(theirs,), daemon=True)
    server.start()
    recorder = _Recorder(pool.stats)
    stand_in = cast(PoolStats, recorder)  # duck-typed: every attribute is the real one's
    queue = cast(Any, pool.pool)
    pool.stats = queue.stats = conn.stats = stand_in  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings():
            # The socket is plain, so urllib3 warns that it is unverified; nothing is sent
            # anywhere but the other end of the socketpair.
            warnings.simplefilter("ignore")
            for _ in range(3):  # the last request is the one kept: nothing first-time in it
                recorder.calls.clear()
                response = pool.urlopen("GET", "/", retries=False, redirect=False,
                                        assert_same_host=False)
                assert response.status == 200 and response.data == b"ok"
        request = list(recorder.calls)
        recorder.calls.clear()
        held = pool._get_conn(timeout=1.0)
        checkout = list(recorder.calls)
        recorder.calls.clear()
        pool._put_conn(held)
        checkin = list(recorder.calls)
    finally:
        pool.close()  # closes our end: the answering thread sees EOF and returns
        server.join(timeout=5)
        theirs.close()
    assert request and checkout and checkin, "poolclient made no PoolStats calls"
    assert pool.stats.snapshot("https", "h", 1).reused >= 3, "the request was not reused"
    return {"request": request, "checkout": checkout, "checkin": checkin}


class _Recorder:
    """Stands in for a PoolStats: records each method call, then makes it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: list[Call] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return attr(*args, **kwargs)

        return record


def _answer(sock: socket.socket) -> None:
    # The upstream's side of the socketpair: one short 200 per request head.
    pending = b""
    while chunk := sock.recv(65536):
        pending += chunk
        while b"\r\n\r\n" in pending:
            _, pending = pending.split(b"\r\n\r\n", 1)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def _configure_like_registry(pool: CountedPool) -> None:
    # What Registry._new_pool sets, from the default settings: the lifetime checks on
    # checkout and return are part of poolclient's cost.
    settings = Settings()
    pool.pool_timeout = settings.pool_timeout
    pool.idle_timeout = settings.idle_timeout
    pool.max_lifetime = settings.max_lifetime
    pool.deadline = settings.deadline


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list[Any], output_json: dict[str, Any]
) -> None:
    # Every round's time would make the file ~100 MB; the report needs only the statistics.
    for bench in output_json["benchmarks"]:
        bench["stats"].pop("data", None)
    # The JSON alone must be enough to write docs/micro.md: what ran, where, with what.
    args = [shlex.quote(arg) for arg in config.invocation_params.args]
    python = os.path.relpath(sys.executable, config.invocation_params.dir)
    if python.startswith(".."):
        python = sys.executable
    uname = platform.uname()
    output_json["poolclient_bench"] = {
        "command": " ".join([python, "-m", "pytest", *args]),
        "cwd": str(config.invocation_params.dir),
        "sink_mode": sink_mode(),
        "uname": f"{uname.system} {uname.release} {uname.machine}",
        "processor": _cpu_model() or uname.processor or uname.machine,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        # poolclient as imported (the working tree), not as some installed copy.
        "versions": {"poolclient": poolclient.__version__,
                     **{name: _version(name) for name in
                        ("urllib3", "prometheus-client", "pytest-benchmark")}},
        "switch_interval_s": sys.getswitchinterval(),
        "load_1min": [config.stash.get(_LOAD_AT_START, None), _load()],  # start, end
        # The figures are of the working tree as it was, which need not be the commit.
        "modified": _modified(str(config.invocation_params.dir)),
    }


def _modified(cwd: str) -> list[str] | None:
    """Files of the package that differ from the commit, or None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "poolclient"], cwd=cwd,
                             capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines()]


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
