"""Checkout and return of one connection, ``_get_conn()`` then ``_put_conn()``: poolclient's
``CountedHTTPSConnectionPool`` against urllib3's ``HTTPSConnectionPool``.

Use it to see what poolclient adds to every request before any byte is sent. Both pools hold
the same eight connections, made beforehand, and both queues are asked for one with the same
pool timeout; nothing is connected to a network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from urllib3.connectionpool import HTTPSConnectionPool

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

# urllib3's urlopen passes its pool_timeout on; poolclient's own default is the same value,
# so both queues are asked the same question.
POOL_TIMEOUT = 5.0


@pytest.mark.parametrize("state", ["open", "unconnected"])
def test_checkout_return(
    benchmark: BenchmarkFixture,
    make_pool: Callable[[str, str], HTTPSConnectionPool],
    pool_kind: str,
    pool_info: dict[str, str],
    state: str,
) -> None:
    benchmark.group = f"checkout+return, {state} connections"
    benchmark.extra_info.update(pool_info, case="checkout", state=state)
    pool = make_pool(pool_kind, state)
    get, put = pool._get_conn, pool._put_conn

    def checkout_return() -> None:
        put(get(POOL_TIMEOUT))

    benchmark(checkout_return)
    # Every round found a pooled connection in the state it was meant to be in; a connection
    # built or dropped inside the loop would have measured something else.
    queue = pool.pool
    assert queue is not None and queue.qsize() == queue.maxsize
    held = list(queue.queue)
    assert all(conn is not None for conn in held)
    assert all(conn.is_closed == (state == "unconnected") for conn in held)
