"""The async pools against a real TLS upstream: bounds, counts equal to the upstream's,
one set of pools per (process, event loop), forks and closed loops, cancellation, and the
packages' own errors."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from poolclient import Registry, Settings
from tests.helpers import Upstream, refused_url, wait_for

httpx2 = pytest.importorskip("httpx2")
httpx = pytest.importorskip("httpx")
pytest.importorskip("httpcore2")


def _client(registry: Registry, **kw: Any) -> Any:
    return httpx2.AsyncClient(transport=registry.httpx2_async_transport(**kw))


def _pid_headers() -> dict[str, str]:
    return {"X-Client-Pid": str(os.getpid())}


def test_counts_equal_the_upstreams_and_the_pool_is_bounded(registry: Registry,
                                                            upstream: Upstream):
    """20 calls at once through a pool of 4: 4 connections at the upstream, every call
    answered, and the pool's counters equal what the upstream saw."""
    client = _client(registry)

    async def main() -> Any:
        calls = [client.get(f"{upstream.url}/n?i={i}") for i in range(20)]
        assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 20
        return registry.stats().pools  # while the loop runs: its pools go with it

    (pool,) = asyncio.run(main())
    seen = upstream.stats()
    assert (pool.kind, pool.maxsize) == ("async", 4)
    assert len(seen["connections"]) == pool.connections_opened == 4
    assert seen["requests"] == pool.requests == 20
    assert pool.reused == 16 and pool.waits >= 1
    assert pool.in_use == pool.errors == pool.unread == pool.cancelled == 0


def test_each_loop_gets_its_own_pools(registry: Registry, upstream: Upstream):
    """A thread running a second loop, while the first still runs: separate pools, each
    working, neither bound to the other's loop."""
    client = _client(registry)
    other_ready, first_done = threading.Event(), threading.Event()
    results: list[object] = []

    def second_loop() -> None:
        async def call() -> None:
            results.append((await client.get(upstream.url + "/b")).status_code)
        asyncio.run(call())
        other_ready.set()
        first_done.wait(10)

    async def main() -> None:
        assert (await client.get(upstream.url + "/a")).status_code == 200
        thread = threading.Thread(target=second_loop)
        thread.start()
        await asyncio.to_thread(other_ready.wait, 10)
        assert (await client.get(upstream.url + "/a")).status_code == 200
        first_done.set()
        await asyncio.to_thread(thread.join)

    asyncio.run(main())
    assert results == [200]
    # Two loops, two connections; the second loop has closed, so its pool was dropped.
    assert len(upstream.stats()["connections"]) == 2
    snapshot = registry.stats()
    assert snapshot.pools == () and snapshot.abandoned == 2


def test_a_closed_loops_pools_are_dropped_and_the_next_loop_reconnects(
        registry: Registry, upstream: Upstream):
    """asyncio.run twice (as a master's call at import, then a worker's): the second
    run opens its own connection, and the first one's is released, not reused."""
    client = _client(registry)
    for _ in range(2):
        asyncio.run(client.get(upstream.url + "/x"))
    conns = upstream.stats()["connections"]
    assert [c["requests"] for c in conns] == [1, 1]
    # The second loop's first call found the first loop closed and dropped its pool.
    wait_for(lambda: upstream.stats()["open"] == 1, what="the first loop's connection closed")
    assert registry.stats().abandoned == 2  # looking swept the second one too
    wait_for(lambda: upstream.stats()["open"] == 0, what="the second loop's connection closed")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_writes_on_its_parents_connection(registry: Registry,
                                                               upstream: Upstream):
    """Parent calls in a loop it keeps, forks; the child's calls go on a connection of its
    own, and the parent's connection is still the parent's afterwards."""
    client = _client(registry)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(
            client.get(upstream.url + "/p", headers=_pid_headers())).status_code == 200
        pid = os.fork()
        if pid == 0:  # the child: a new loop, its own pools
            code = 1
            try:
                async def child() -> bool:
                    r = await client.get(upstream.url + "/c", headers=_pid_headers())
                    stats = registry.stats()
                    return (r.status_code == 200 and stats.abandoned == 1
                            and stats.pools[0].connections_opened == 1)

                code = 0 if asyncio.run(child()) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert loop.run_until_complete(
            client.get(upstream.url + "/p", headers=_pid_headers())).status_code == 200
        (pool,) = registry.stats().pools
        assert (pool.connections_opened, pool.reused) == (1, 1)
    finally:
        loop.run_until_complete(registry.aclose())
        loop.close()
    conns = upstream.stats()["connections"]
    assert sorted(c["requests"] for c in conns) == [1, 2]
    assert all(len(c["pids"]) == 1 for c in conns), "a connection was written by two processes"


def test_cancelled_while_reading_closes_the_connection(registry: Registry,
                                                       upstream: Upstream):
    """A task reading a stream is cancelled after the first event (its client went away):
    the connection is closed, never reused half-read, and the cancellation is counted."""
    client = _client(registry)
    first = asyncio.Event()

    async def reader() -> None:
        async with client.stream("GET", upstream.url + "/gate/cut/sse?events=3") as r:
            async for _ in r.aiter_bytes():
                first.set()

    async def main() -> None:
        task = asyncio.create_task(reader())
        await asyncio.wait_for(first.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(upstream.open_gate, "cut")
        assert (await client.get(upstream.url + "/after")).status_code == 200
        return registry.stats().pools

    (pool,) = asyncio.run(main())
    assert (pool.cancelled, pool.in_use, pool.connections_opened) == (1, 0, 2)
    assert [c["requests"] for c in upstream.stats()["connections"]] == [1, 1]


def test_cancelled_while_waiting_for_a_connection_frees_its_place(upstream: Upstream):
    """maxsize 1, held by a stream: a second call waits, is cancelled, and is counted; the
    holder goes on, and a third call gets the connection."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=30))
    client = _client(registry)
    first = asyncio.Event()

    async def holder() -> None:
        async with client.stream("GET", upstream.url + "/gate/hold/sse?events=2") as r:
            async for _ in r.aiter_bytes():
                first.set()

    async def main() -> Any:
        held = asyncio.create_task(holder())
        await asyncio.wait_for(first.wait(), 10)
        waiter = asyncio.create_task(client.get(upstream.url + "/w"))
        await wait_async(lambda: registry.stats().pools[0].waits == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.to_thread(upstream.open_gate, "hold")
        await held
        assert (await client.get(upstream.url + "/third")).status_code == 200
        return registry.stats().pools

    (pool,) = asyncio.run(main())
    assert (pool.cancelled, pool.waits, pool.in_use, pool.requests) == (1, 1, 0, 2)
    assert upstream.stats()["requests"] == 2  # the cancelled call never reached it
    assert len(upstream.stats()["connections"]) == 1


async def wait_async(predicate: Any, timeout: float = 10) -> None:
    """Poll ``predicate`` from inside a loop, yielding to it between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_packages_own_errors(upstream: Upstream):
    """Refused: ConnectError after the connect retries; no answer within the read timeout:
    ReadTimeout; every connection busy for the pool timeout: PoolTimeout. Each is the
    package's class (httpx2's and httpx's), which the SDKs' retries are built on. The
    client gives no timeouts (None): the registry's settings apply."""
    timeouts = Registry(Settings(ca_bundle=upstream.ca, read_timeout=0.5, connect_retries=1,
                                 backoff=0))
    busy = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=0.3))
    for n, package in enumerate((httpx2, httpx)):
        transport = "httpx2_async_transport" if package is httpx2 else "httpx_async_transport"
        quick = package.AsyncClient(transport=getattr(timeouts, transport)(), timeout=None)
        one = package.AsyncClient(transport=getattr(busy, transport)(), timeout=None)

        async def main(quick: Any = quick, one: Any = one, package: Any = package,
                       gate: str = f"busy{n}") -> None:
            with pytest.raises(package.ConnectError):
                await quick.get(refused_url())
            with pytest.raises(package.ReadTimeout):
                await quick.get(upstream.url + "/slow?seconds=3")
            async with one.stream("GET", f"{upstream.url}/gate/{gate}/sse?events=2") as held:
                with pytest.raises(package.PoolTimeout):
                    await one.get(upstream.url + "/x")
                await asyncio.to_thread(upstream.open_gate, gate)
                await held.aread()
            (pool,) = busy.stats().pools
            assert (pool.errors, pool.in_use, pool.requests) == (1, 0, 1)
            await busy.aclose()

        asyncio.run(main())


def test_the_deadline_bounds_the_wait_for_the_status_line(registry: Registry,
                                                          upstream: Upstream):
    client = _client(registry, deadline=0.5)

    async def main() -> Any:
        with pytest.raises(httpx2.ReadTimeout, match="deadline"):
            await client.get(upstream.url + "/slow?seconds=3")
        return registry.stats().pools

    (pool,) = asyncio.run(main())
    # The request went out: an attempt, as the upstream counts it, though it failed.
    assert (pool.errors, pool.in_use, pool.requests) == (1, 0, upstream.stats()["requests"])
    assert pool.requests == 1


def test_headers_in_order_and_a_streamed_upload(registry: Registry, upstream: Upstream):
    client = _client(registry)

    async def body() -> Any:
        for part in (b"a" * 1000, b"b" * 1000):
            yield part

    async def main() -> tuple[Any, Any]:
        lines = await client.get(upstream.url + "/header-lines",
                                 headers=[("X-B", "1"), ("X-A", "2"), ("X-B", "3")])
        upload = await client.post(upstream.url + "/echo", content=body())
        return lines.json()["lines"], upload.json()

    lines, upload = asyncio.run(main())
    ours = [line for line in lines if line[0].lower().startswith("x-")]
    assert ours == [["X-B", "1"], ["X-A", "2"], ["X-B", "3"]]
    assert upload["body_length"] == 2000


def test_closing_the_client_closes_nothing_shared(registry: Registry, upstream: Upstream):
    async def main() -> None:
        async with _client(registry) as first:
            await first.get(upstream.url + "/1")
        async with _client(registry) as second:
            await second.get(upstream.url + "/2")

    asyncio.run(main())
    assert [c["requests"] for c in upstream.stats()["connections"]] == [2]


class _Clock:
    """``time`` for the modules that time connections: real time plus what a test adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.mark.parametrize("setting, counter", [("max_lifetime", "retired"),
                                              ("idle_timeout", "expired")])
def test_lifetime_and_idle_expiry_are_counted(upstream: Upstream, monkeypatch: Any,
                                              setting: str, counter: str):
    """Between calls the connections' clock moves past the setting: each reuse finds its
    connection too old, or idle too long, so it is closed before reuse and counted, and
    the upstream sees one request per connection."""
    from httpcore2._async import http11

    from poolclient.aio import backend, pool

    clock = _Clock()
    for module in (http11, backend, pool):
        monkeypatch.setattr(module, "time", clock)
    registry = Registry(Settings(ca_bundle=upstream.ca, **{setting: 30}))
    client = _client(registry)

    async def main() -> Any:
        for _ in range(3):
            assert (await client.get(upstream.url + "/x")).status_code == 200
            clock.offset += 31
        (pool,) = registry.stats().pools
        await registry.aclose()
        return pool

    snapshot = asyncio.run(main())
    assert [c["requests"] for c in upstream.stats()["connections"]] == [1, 1, 1]
    assert (snapshot.connections_opened, snapshot.reused, getattr(snapshot, counter)) == (
        3, 0, 2)


def test_server_sent_events_arrive_as_sent(registry: Registry, upstream: Upstream):
    """The first event reaches the caller while the upstream holds the rest back."""
    client = _client(registry)

    async def main() -> Any:
        got: list[str] = []
        async with client.stream("GET", upstream.url + "/gate/sse1/sse?events=3") as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    got.append(line)
                    if len(got) == 1:
                        await asyncio.to_thread(upstream.open_gate, "sse1")
        return got, registry.stats().pools

    got, (pool,) = asyncio.run(main())
    assert got == ["data: 0", "data: 1", "data: 2"]
    assert (pool.unread, pool.in_use, pool.streaming, pool.requests) == (0, 0, 0, 1)
