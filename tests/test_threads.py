"""Many threads, one registry: the socket histogram of the seed blog post, asserted.

N threads each make M requests through one shared registry of ``maxsize`` k. The upstream
counts the TCP connections it served; the registry's counters must agree with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from poolclient import Registry, Settings
from tests.helpers import Upstream, wait_for

THREADS = 16
PER_THREAD = 25


def hammer(threads: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(i)`` in ``threads`` threads released together; the errors they raised."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait(10)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - every failure is asserted on
            with lock:
                errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not any(t.is_alive() for t in pool), "a worker thread hung"
    return errors


def raise_first(errors: list[BaseException]) -> None:
    """Fail with the first error a thread raised, so its traceback is the one reported."""
    if errors:
        raise errors[0]


@pytest.mark.parametrize("k", [1, 2, 4])
def test_threads_share_at_most_k_connections(upstream: Upstream, k: int):
    """16 threads x 25 requests over maxsize k: at most k connections, every request answered
    200, and the registry's counters equal the upstream's."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=k, pool_timeout=10))
    statuses: list[int] = []

    def work(i: int) -> None:
        for _ in range(PER_THREAD):
            r = registry.request("GET", f"{upstream.url}/t{i}")
            statuses.append(r.status)

    try:
        raise_first(hammer(THREADS, work))
        pool = assert_bounded(registry, upstream, statuses, k)
        total = THREADS * PER_THREAD
        assert pool.maxsize == k
        assert pool.reused == total - pool.connections_opened
        assert pool.in_use == 0
        assert pool.idle <= k
        assert pool.idle == pool.connections_opened  # blocking pools never discard
        assert (pool.errors, pool.discarded) == (0, 0)
        if k == 1:
            assert pool.waits > 0  # 16 callers, 1 connection: someone had to wait
    finally:
        registry.close()

def assert_bounded(registry, upstream, statuses: list[int], k: int):
    """All THREADS x PER_THREAD calls answered 200 over at most k connections, as both the
    upstream and the pool count them; returns the pool's snapshot."""
    total = THREADS * PER_THREAD
    assert statuses == [200] * total
    seen = upstream.stats()
    assert 1 <= len(seen["connections"]) <= k
    assert seen["requests"] == total
    (pool,) = registry.stats().pools
    assert pool.requests == total
    assert pool.connections_opened == len(seen["connections"])
    return pool


def test_non_blocking_pool_overflow_is_counted_as_discarded(upstream: Upstream):
    """block=False, maxsize=2, 8 simultaneous slow requests: urllib3 opens extra connections
    and throws them away afterwards, and ``discarded`` counts exactly those."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, block=False))

    def work(i: int) -> None:
        r = registry.request("GET", f"{upstream.url}/slow?seconds=0.5")
        assert r.status == 200

    try:
        raise_first(hammer(8, work))
        (pool,) = registry.stats().pools
        seen = upstream.stats()
        assert seen["requests"] == 8
        assert pool.connections_opened == len(seen["connections"])
        assert pool.connections_opened > 2
        assert pool.idle == 2
        assert pool.in_use == 0
        assert pool.waits == 0  # nobody waits in a non-blocking pool
        assert pool.discarded > 0
        assert pool.discarded == pool.connections_opened - pool.idle
        # The discarded connections really were closed; only the kept ones stay open.
        wait_for(lambda: upstream.stats()["open"] == pool.idle, 10, "discarded to close")
    finally:
        registry.close()


@pytest.mark.parametrize("k", [1, 3])
def test_one_session_per_thread_stays_bounded(upstream: Upstream, k: int):
    """16 threads, each with its own registry.session(), 25 requests.get each: at most k
    connections to the upstream, and the counters agree."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=k, pool_timeout=10))
    statuses: list[int] = []

    def work(i: int) -> None:
        with registry.session() as session:
            for _ in range(PER_THREAD):
                statuses.append(session.get(f"{upstream.url}/s{i}").status_code)

    try:
        raise_first(hammer(THREADS, work))
        pool = assert_bounded(registry, upstream, statuses, k)
        assert (pool.in_use, pool.errors, pool.discarded) == (0, 0, 0)
        assert pool.idle == pool.connections_opened
    finally:
        registry.close()
