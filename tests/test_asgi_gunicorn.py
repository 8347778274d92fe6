"""ASGI apps under real gunicorn ``-c gunicorn.conf.py -k asgi``, against the real TLS
upstream, everything counted at the server (issue 23, "Done when").

- ``tests.apps.asgi_sdk_app``: ``AsyncOpenAI`` and ``AsyncAnthropic`` built at import on
  ``httpx2_async_transport()``, one call made in the master through ``asyncio.run``, under
  ``--preload`` and 16 concurrent clients, plain and streamed calls plus sync calls from
  Starlette's threads; SSE passed on as it arrives; stalled, refused and abandoned calls;
- ``app.asgi_example``: the FastAPI relay's routes and error table, served by the worker,
  and its error table in-process with the failures gunicorn cannot stage per request
  (refused, unknown host, untrusted certificate).

The checks are functions, so that ``tests/test_asgi_uvicorn.py`` runs them under
``uvicorn_worker.UvicornWorker``.
"""

from __future__ import annotations

import http.client
import importlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import urllib3

from app.stubs.llm import STALL_SECONDS
from tests.helpers import (
    Gunicorn,
    Upstream,
    health_by_worker,
    load,
    other_ca_file,
    refused_url,
    start_upstream,
    wait_for,
)

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

pytest.importorskip("openai")
pytest.importorskip("anthropic")
pytest.importorskip("fastapi")

ASGI = ["-k", "asgi"]
WORKERS, MAXSIZE = 2, 4
READ_TIMEOUT = 2.0
PATHS = ("/openai", "/openai-stream", "/anthropic", "/anthropic-stream", "/sync")
REQUESTS = 1000  # about 200 a path: 800 async calls, 200 sync ones

Start = Callable[[list[str], dict[str, str]], Gunicorn]


# ---- the SDK app ---------------------------------------------------------------------------


@contextmanager
def sdk_upstreams(upstream: Upstream) -> Iterator[tuple[Upstream, Upstream]]:
    """Two more upstreams signed by the same CA: one for the sync calls (so the server
    counts each pool kind apart), one for the call that stalls (it holds its connection
    open for 30 s)."""
    sync = start_upstream(upstream.directory)
    try:
        stalling = start_upstream(upstream.directory)
        try:
            yield sync, stalling
        finally:
            stalling.stop()
    finally:
        sync.stop()


def start_sdk_app(gunicorn: Start, worker: list[str], upstream: Upstream, sync: Upstream,
                  stalling: Upstream) -> Gunicorn:
    env = {"UPSTREAM_URL": upstream.url, "SYNC_URL": sync.url, "STALL_URL": stalling.url,
           "REFUSED_URL": refused_url(), "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "MASTER_CALLS": "1", "POOLCLIENT_MAXSIZE": str(MAXSIZE),
           "POOLCLIENT_READ_TIMEOUT": str(READ_TIMEOUT),
           # No connection expires idle during the run: each one the server counts is one
           # the pools opened, so the bound below is exact.
           "POOLCLIENT_IDLE_TIMEOUT": "120"}
    return gunicorn([*worker, "-w", str(WORKERS), "--preload", "tests.apps.asgi_sdk_app:app"],
                    env)


def master_connection_closed(server: Gunicorn, upstream: Upstream) -> None:
    """The master's one call was on one connection, closed before any worker called: with
    both workers up and none of them holding it, it was closed before the fork (a
    connection inherited by a worker stays open at the server while that worker lives)."""
    master = str(server.proc.pid)

    def closed() -> bool:
        conns = upstream.stats()["connections"]
        assert [c["pids"] for c in conns] == [[master]], conns  # no worker call yet
        assert conns[0]["requests"] == 1
        return not conns[0]["open"]

    wait_for(closed, 15, "the master's connection to close")


def server_side(upstream: Upstream, workers: set[int], master: int | None = None,
                ) -> dict[int, list[dict[str, Any]]]:
    """The upstream's connections, by worker: none written by two processes, none by a
    process other than the workers (and the master)."""
    conns = upstream.stats()["connections"]
    assert all(len(c["pids"]) == 1 for c in conns), "a connection was written by two processes"
    by_pid: dict[int, list[dict[str, Any]]] = {pid: [] for pid in workers}
    for c in conns:
        pid = int(c["pids"][0])
        if pid != master:
            assert pid in workers, (pid, workers)
            by_pid[pid].append(c)
    return by_pid


def pools_of(health: dict[str, Any], kind: str, port: int) -> list[dict[str, Any]]:
    return [p for p in health["pools"] if p["kind"] == kind and p["port"] == port]


def assert_kind_counted(health: dict[int, dict[str, Any]], kind: str, upstream: Upstream,
                        by_pid: dict[int, list[dict[str, Any]]]) -> int:
    """Per worker, its ``kind`` pool to ``upstream`` says what the server saw of that
    worker: as many connections opened, as many requests; at most MAXSIZE each, so at most
    WORKERS x MAXSIZE; nothing in use, unread, streaming, cancelled or failed. The
    requests the server counted."""
    total = 0
    for pid, conns in by_pid.items():
        pools = pools_of(health[pid], kind, upstream.port)
        opened = sum(p["connections_opened"] for p in pools)
        assert len(pools) <= 1 and opened == len(conns), (pid, kind, pools, conns)
        assert sum(p["requests"] for p in pools) == sum(c["requests"] for c in conns)
        assert len(conns) <= MAXSIZE
        for p in pools:
            assert p["maxsize"] == MAXSIZE
            assert p["in_use"] == p["unread"] == p["streaming"] == p["cancelled"] == 0, p
            assert p["errors"] == 0, p
        total += len(conns)
    assert 1 <= total <= WORKERS * MAXSIZE
    return sum(c["requests"] for conns in by_pid.values() for c in conns)


def check_sdk_app(server: Gunicorn, upstream: Upstream, sync: Upstream,
                  stalling: Upstream) -> None:
    """The Done-when load, the stalled and the refused call (see the tests below)."""
    workers = server.worker_pids()
    master_connection_closed(server, upstream)

    # Connection: close, so that both workers' loops accept callers: with keep-alive,
    # the first worker to wake takes all 16 connections.
    outcomes = load(server.url, clients=16, seconds=180, paths=PATHS, requests=REQUESTS,
                    headers={"Connection": "close"})
    assert outcomes == {200: REQUESTS}, outcomes

    health = health_by_worker(server, workers)
    assert all(h["inherited_connections"] == [] for h in health.values())
    async_conns = server_side(upstream, workers, master=server.proc.pid)
    assert all(async_conns.values()), "a worker made no call: no two processes to compare"
    on_async = assert_kind_counted(health, "async", upstream, async_conns)
    on_sync = assert_kind_counted(health, "sync", sync, server_side(sync, workers))
    assert on_async + on_sync == REQUESTS  # each call made one upstream request, no more
    for h in health.values():  # each kind to its own upstream, nothing else
        assert {(p["kind"], p["port"]) for p in h["pools"]} <= {
            ("async", upstream.port), ("sync", sync.port)}, h["pools"]

    # A stalled upstream: the SDK's APITimeoutError, from the read timeout (2 s), long
    # before the upstream would have answered (30 s). A refused one: APIConnectionError.
    with urllib3.PoolManager(retries=False) as http:
        started = time.monotonic()
        r = http.request("GET", server.url + "/openai-stalled", timeout=STALL_SECONDS + 10)
        elapsed = time.monotonic() - started
        assert (r.status, json.loads(r.data)["error"]) == (502, "APITimeoutError")
        assert elapsed < STALL_SECONDS
        r = http.request("GET", server.url + "/openai-refused", timeout=30)
        assert (r.status, json.loads(r.data)["error"]) == (502, "APIConnectionError")
    assert server.worker_pids() == workers  # no worker died or was killed
    assert stalling.stats()["requests"] == 1


def test_sdk_clients_built_at_import_under_asgi_preload(gunicorn: Start, upstream: Upstream):
    """-k asgi -w 2 --preload, AsyncOpenAI and AsyncAnthropic built at import and used in
    the master: 16 clients, 1,000 calls (plain, streamed, sync from threads), no errors;
    per pool kind at most MAXSIZE connections a worker, none written by two processes, the
    master's closed before the fork; /health of each worker equal to the server's count;
    then APITimeoutError within the read timeout and APIConnectionError."""
    with sdk_upstreams(upstream) as (sync, stalling):
        server = start_sdk_app(gunicorn, ASGI, upstream, sync, stalling)
        check_sdk_app(server, upstream, sync, stalling)
        server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 15, "upstream connections to close")


# ---- server-sent events: first event early, disconnect mid-stream ---------------------------


class SSECaller:
    """One GET of an SSE route on its own connection, read event by event."""

    def __init__(self, server: Gunicorn, path: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.worker = int(self.response.headers["X-Worker-Pid"])
        self._buffer = b""

    def event(self) -> bytes | None:
        """The next event's data, or None at the end of the stream."""
        while b"\n\n" not in self._buffer:
            more = self.response.read1(65536)
            if not more:
                assert not self._buffer.strip(), self._buffer
                return None
            self._buffer += more
        event, self._buffer = self._buffer.split(b"\n\n", 1)
        assert event.startswith(b"data: "), event
        return event[len(b"data: "):]

    def hang_up(self) -> None:
        """Close the connection mid-stream, as a client that goes away does."""
        assert self.conn.sock is not None
        self.conn.sock.close()
        self.conn.close()


def first_chunk(data: bytes | None) -> dict[str, Any]:
    assert data is not None
    chunk = json.loads(data)
    assert chunk["choices"][0]["delta"]["role"] == "assistant"
    return chunk  # type: ignore[no-any-return]


def abandoned(server: Gunicorn, workers: set[int]) -> dict[str, int]:
    """cancelled and unread summed over the workers' async pools; and what is in use."""
    totals = {"cancelled": 0, "unread": 0, "in_use": 0, "streaming": 0}
    for h in health_by_worker(server, workers).values():
        for p in h["pools"]:
            if p["kind"] == "async":
                for name in totals:
                    totals[name] += p[name]
    return totals


def check_streams(server: Gunicorn, upstream: Upstream, server_cancels: bool) -> None:
    """A caller that hangs up mid-stream: its call is cancelled, its connection closed,
    never back in the pool half-read, and counted as cancelled (the route that watches
    for the disconnect; with ``server_cancels``, also a plain StreamingResponse, which the
    server cancels). Then the first event of a stream reaches its caller while the
    upstream holds the rest back."""
    workers = server.worker_pids()
    master = server.proc.pid
    wait_for(lambda: not upstream.stats()["connections"][0]["open"], 15,
             "the master's connection to close")
    routes = ["/openai-relay"] + (["/openai-relay-plain"] if server_cancels else [])
    for n, route in enumerate(routes, 1):
        caller = SSECaller(server, f"{route}?gate=gone{n}")
        first_chunk(caller.event())
        # The upstream is still at the gate: the call is reading when the caller leaves.
        caller.hang_up()
        wait_for(lambda n=n: abandoned(server, workers)["cancelled"] == n, 20,  # type: ignore[misc]
                 "the abandoned call to be counted as cancelled")
        assert abandoned(server, workers) == {"cancelled": n, "unread": 0, "in_use": 0,
                                              "streaming": 0}
        # Let the upstream write the rest: had the connection gone back to a pool, it
        # would stay open there; it was closed, so the upstream sees it close.
        upstream.open_gate(f"gone{n}")
        wait_for(lambda: all(not c["open"] for c in upstream.stats()["connections"]), 15,
                 "the abandoned stream's connection to close at the upstream")
        by_pid = server_side(upstream, workers, master=master)
        assert sum(len(conns) for conns in by_pid.values()) == n  # one connection a stream

    # The first event arrives while the upstream holds the stream open at its gate.
    caller = SSECaller(server, "/openai-relay?gate=first")
    first_chunk(caller.event())
    assert any(c["open"] for c in upstream.stats()["connections"])  # still streaming
    upstream.open_gate("first")
    rest = []
    while (data := caller.event()) is not None:
        rest.append(data)
    assert rest[-1] == b"[DONE]"
    words = [json.loads(d)["choices"][0]["delta"].get("content") for d in rest[:-1]]
    assert "".join(w or "" for w in words) == "pong"
    caller.conn.close()
    assert server.worker_pids() == workers


def test_sse_first_event_and_client_disconnect_under_asgi(gunicorn: Start, upstream: Upstream):
    """-k asgi: a caller hanging up mid-stream gets its call cancelled and counted, its
    connection closed (seen at the upstream); for the route that watches for the
    disconnect and for a plain StreamingResponse (gunicorn cancels it after
    asgi_disconnect_grace_period). The first event reaches the caller before the upstream
    ends the stream."""
    with sdk_upstreams(upstream) as (sync, stalling):
        server = start_sdk_app(gunicorn, ASGI, upstream, sync, stalling)
        check_streams(server, upstream, server_cancels=True)


# ---- the FastAPI example -------------------------------------------------------------------


def start_example(gunicorn: Start, worker: list[str], upstream: Upstream) -> Gunicorn:
    """The example under one worker whose pools hold one connection an origin."""
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "POOLCLIENT_MAXSIZE": "1", "POOLCLIENT_POOL_TIMEOUT": "0.5",
           "POOLCLIENT_READ_TIMEOUT": "1"}
    return gunicorn([*worker, "-w", "1", "app.asgi_example:app"], env)


def raw_get(server: Gunicorn, target: str) -> tuple[int, http.client.HTTPMessage, Any]:
    """GET ``target`` sent as it is (urllib3 would resolve dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", target)
        r = conn.getresponse()
        return r.status, r.headers, json.loads(r.read())
    finally:
        conn.close()


def check_example(server: Gunicorn, upstream: Upstream) -> None:
    """The relay's routes and error table, async and sync routes, under one worker."""
    (worker,) = server.worker_pids()
    for prefix in ("/upstream", "/sync/upstream"):
        status, _, body = raw_get(server, prefix + "/a%3Fb?x=1")
        assert (status, body["path"], body["query"]) == (200, "/a%3Fb", "x=1")
        status, _, body = raw_get(server, prefix + "/status/404")
        assert (status, body) == (404, {"status": 404})
        status, _, body = raw_get(server, prefix + "/text")
        assert status == 502 and "non-JSON" in body["error"] and "text/plain" in body["error"]
        status, _, body = raw_get(server, prefix + "/slow?seconds=5")
        assert (status, set(body)) == (504, {"error"})
        assert body["error"].startswith("upstream read timed out")
        status, _, body = raw_get(server, prefix + "/../x")
        assert (status, body) == (400, {"error": "dot segments are not relayed"})
    status, _, body = raw_get(server, "/nowhere")
    assert (status, body) == (404, {"error": "no route for /nowhere"})

    # Pool timeout: the one async connection held by a stream at the upstream's gate.
    held: list[tuple[int, http.client.HTTPMessage, Any]] = []
    before = upstream.stats()["requests"]
    thread = threading.Thread(
        target=lambda: held.append(raw_get(server, "/upstream/gate/hold/sse?events=3")))
    thread.start()
    try:
        wait_for(lambda: upstream.stats()["requests"] == before + 1, 15, "the held call")
        status, headers, body = raw_get(server, "/upstream/hello")
        assert (status, headers["Retry-After"]) == (503, "1")
        assert body["error"].startswith("no upstream connection free")
    finally:
        upstream.open_gate("hold")
        thread.join(30)
    assert held[0][0] == 502 and "text/event-stream" in held[0][2]["error"]
    assert server.worker_pids() == {worker}


def assert_health_equals_server(server: Gunicorn, upstream: Upstream) -> None:
    """After :func:`check_example`: /health's pools, one of each kind, count what the
    upstream's record counts, failed calls (read timeouts) included."""
    (worker,) = server.worker_pids()
    (health,) = health_by_worker(server, {worker}).values()
    conns = upstream.stats()["connections"]
    for kind in ("async", "sync"):
        (pool,) = pools_of(health, kind, upstream.port)
        assert pool["maxsize"] == 1 and pool["in_use"] == 0
    assert sum(p["connections_opened"] for p in health["pools"]) == len(conns)
    assert sum(p["requests"] for p in health["pools"]) == sum(c["requests"] for c in conns), (
        health["pools"], conns)


def test_fastapi_example_under_asgi(gunicorn: Start, upstream: Upstream):
    """app.asgi_example under -k asgi: relayed status and JSON, 404, non-JSON 502, read
    timeout 504, pool timeout 503 with Retry-After, dot segments 400; the sync route the
    same through the sync pools."""
    check_example(start_example(gunicorn, ASGI, upstream), upstream)


def test_fastapi_example_health_counts_under_asgi(gunicorn: Start, upstream: Upstream):
    """The same calls, then /health's pools against the upstream's record."""
    server = start_example(gunicorn, ASGI, upstream)
    check_example(server, upstream)
    assert_health_equals_server(server, upstream)


# ---- the FastAPI example in-process: the failures of another upstream ----------------------


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, upstream: Upstream) -> Any:
    monkeypatch.setenv("UPSTREAM_URL", upstream.url)
    return importlib.import_module("app.asgi_example")


def call_example(example: Any, monkeypatch: pytest.MonkeyPatch, upstream_url: str,
                 settings: Any, paths: list[str]) -> list[tuple[int, str]]:
    """GET each path from the example in this process, relaying to ``upstream_url``
    through a registry of ``settings``: (status, error) each."""
    import asyncio

    import httpx2

    from app.relay import Relay
    from poolclient import Registry
    from poolclient.asgi import PoolClientMiddleware

    monkeypatch.setattr(example, "RELAY", Relay(upstream_url))
    registry = Registry(settings)
    app = PoolClientMiddleware(example.app, registry=registry)

    async def calls() -> list[tuple[int, str]]:
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = [await client.get(path) for path in paths]
        await registry.aclose()
        return [(r.status_code, r.json()["error"]) for r in answers]
    try:
        return asyncio.run(calls())
    finally:
        registry.close()


@pytest.mark.parametrize("route", ["/upstream/x", "/sync/upstream/x"])
def test_example_failures_of_other_upstreams(example: Any, monkeypatch: pytest.MonkeyPatch,
                                             upstream: Upstream, route: str, tmp_path):
    """Refused, unknown host, untrusted certificate: 502 naming each, on both routes."""
    from poolclient import Settings

    cases = [
        (refused_url(), Settings(), "upstream connection refused or failed: ", "111"),
        ("https://no-such-host.invalid", Settings(),
         "upstream host name could not be resolved: ", "Name or service not known"),
        (upstream.url, Settings(ca_bundle=other_ca_file(str(tmp_path))),
         "upstream TLS failed: ", "certificate verify failed"),
    ]
    for url, settings, words, detail in cases:
        ((status, error),) = call_example(example, monkeypatch, url, settings, [route])
        assert status == 502 and error.startswith(words) and detail in error, error
        assert "Traceback" not in error
    assert upstream.stats()["requests"] == 0
