"""Contention on one shared pool: 1 to 64 threads each loop checkout and return on the same
eight-connection blocking pool, poolclient's against urllib3's.

Use it to see how checkout cost grows with threads competing for fewer connections than
there are threads (a gthread worker with more threads than ``POOLCLIENT_MAXSIZE``, or gevent
with many greenlets). One round is a fixed number of checkouts shared out among the threads;
the report divides a round's time by it.

Thread scheduling under the GIL, and whatever else runs on the machine, move these figures
more than anything the pools do, so the pools are not measured one after the other: each
round runs every pool once, in rotating order, and each pool's rounds are timed here and
kept in ``extra_info["contenders"]``. pytest-benchmark's own figure for the test is the
whole rotation, thread start-up included, and is not used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from urllib3.connectionpool import HTTPSConnectionPool

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

THREADS = (1, 2, 4, 8, 16, 32, 64)
CHECKOUTS = 16384  # per round, divisible by every thread count
ROUNDS = 10
# Far longer than any round: a checkout that times out is a failure, not a measurement.
POOL_TIMEOUT = 30.0


@pytest.mark.parametrize("threads", THREADS)
def test_contention(
    benchmark: BenchmarkFixture,
    make_pool: Callable[[str, str], HTTPSConnectionPool],
    contenders: dict[str, dict[str, str]],
    threads: int,
) -> None:
    pools = {kind: make_pool(kind, "open") for kind in contenders}
    seconds: dict[str, list[float]] = {kind: [] for kind in contenders}
    order = list(contenders)

    def rotation() -> None:
        for kind in order:
            seconds[kind].append(_round(pools[kind], threads))
        order.append(order.pop(0))  # no pool always first, or always after the same one

    # pytest-benchmark leaves pedantic() unannotated.
    benchmark.pedantic(rotation, rounds=ROUNDS, warmup_rounds=1)  # type: ignore[no-untyped-call]
    benchmark.group = "contention"
    benchmark.extra_info.update(
        case="contention", threads=threads, checkouts=CHECKOUTS, maxsize=8,
        contenders={kind: {**info, "seconds": seconds[kind][-ROUNDS:]}
                    for kind, info in contenders.items()})
    for pool in pools.values():
        queue = pool.pool
        assert queue is not None and queue.qsize() == queue.maxsize


def _round(pool: HTTPSConnectionPool, threads: int) -> float:
    """Seconds for :data:`CHECKOUTS` checkouts and returns by ``threads`` threads at once,
    from their common start to the last one's end (creating them is not counted)."""
    per_thread = CHECKOUTS // threads
    errors: list[BaseException] = []
    ready = threading.Barrier(threads + 1)
    go = threading.Event()

    def loop() -> None:
        get, put = pool._get_conn, pool._put_conn
        try:
            ready.wait()
            go.wait()
            for _ in range(per_thread):
                put(get(POOL_TIMEOUT))
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test
            errors.append(exc)

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    ready.wait()  # every thread started and parked: the clock starts at the release
    started = time.perf_counter()
    go.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed
