"""urllib3's connection pools, with every event reported to a :class:`PoolStats`.

Only urllib3's own extension points are used: ``ConnectionCls`` and the pool queue for
counting, ``_new_conn`` / ``_get_conn`` / ``_put_conn`` / ``_make_request`` for the
checkout accounting. The HTTP itself is urllib3's, unchanged.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import EmptyPoolError

from .errors import PoolClientError
from .stats import PoolSnapshot, PoolStats


class PoolTimeoutError(EmptyPoolError, PoolClientError):
    """Every connection to an origin stayed in use for the whole pool timeout.

    A subclass of urllib3's ``EmptyPoolError``, so existing ``except`` clauses keep working.
    """

    def __init__(
        self, pool: ConnectionPool | None, origin: str, maxsize: int, waited: float | None
    ) -> None:
        self.origin = origin
        self.maxsize = maxsize
        self.waited = waited
        super().__init__(
            pool,  # type: ignore[arg-type]
            f"all {maxsize} connections to {origin} stayed in use for {waited} s "
            "(POOLCLIENT_POOL_TIMEOUT)",
        )

    def __reduce__(self) -> tuple[type[PoolTimeoutError], tuple[None, str, int, float | None]]:
        return (type(self), (None, self.origin, self.maxsize, self.waited))


if TYPE_CHECKING:
    _ConnectionBase = HTTPConnection
    _PoolBase = HTTPConnectionPool
else:
    _ConnectionBase = _PoolBase = object


class _CountsConnects(_ConnectionBase):
    stats: PoolStats | None = None

    def connect(self) -> None:
        super().connect()
        if self.stats is not None:
            self.stats.opened()


class _CountedHTTPConnection(_CountsConnects, HTTPConnection):
    pass


class _CountedHTTPSConnection(_CountsConnects, HTTPSConnection):
    pass


class _CountedQueue(queue.LifoQueue[Any]):
    """The pool's LIFO of idle connections, which notices when a caller must wait.

    urllib3 fills it with ``maxsize`` placeholders; an empty queue therefore means every
    connection is checked out.
    """

    def __init__(self, maxsize: int, stats: PoolStats) -> None:
        super().__init__(maxsize)
        self.stats = stats

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return super().get(block=False)
        except queue.Empty:
            if not block:
                raise
        self.stats.waited()
        return super().get(block=True, timeout=timeout)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            super().put(item, block=block, timeout=timeout)
        except queue.Full:
            if item is not None:
                self.stats.discarded_one()
            raise

    def idle(self) -> int:
        # A copy taken in one C call, no lock: under gevent this class derives from
        # gevent's LifoQueue, which has no ``mutex``.
        return sum(1 for conn in tuple(self.queue) if conn is not None and not conn.is_closed)


class CountedPool(_PoolBase):
    """What both pool classes add: one call into :class:`PoolStats` per event."""

    stats: PoolStats
    pool_timeout: float | None = None

    def __init__(self, host: str, port: int | None = None, **kw: Any) -> None:
        self.stats = PoolStats(kw.get("maxsize", 1))
        super().__init__(host, port, **kw)

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"<{type(self).__name__} {_origin(self)} [in use {s.in_use}/{s.maxsize} | "
            f"idle {s.idle} | opened {s.connections_opened} | requests {s.requests}]>"
        )

    def _new_pool_queue(self, maxsize: int) -> queue.LifoQueue[Any]:
        return _CountedQueue(maxsize, self.stats)

    def _new_conn(self) -> Any:
        conn = super()._new_conn()
        conn.stats = self.stats  # type: ignore[attr-defined]
        return conn

    def _get_conn(self, timeout: float | None = None) -> Any:
        # requests never passes a pool timeout, so the pool's own applies when none is
        # given; without it a blocking pool would wait forever (requests #3825).
        if timeout is None:
            timeout = self.pool_timeout
        started = time.monotonic()
        try:
            conn = super()._get_conn(timeout)
        except EmptyPoolError:
            self.stats.failed()
            waited = round(time.monotonic() - started, 3)
            raise PoolTimeoutError(self, _origin(self), self.stats.maxsize, waited) from None
        self.stats.checked_out()
        return conn

    def _put_conn(self, conn: Any) -> None:
        self.stats.checked_in()
        super()._put_conn(conn)

    def _make_request(self, conn: Any, *args: Any, **kwargs: Any) -> Any:
        # A connection with an open socket has carried a request before: pools never
        # pre-connect.
        self.stats.sent(reused=not conn.is_closed)
        try:
            return super()._make_request(conn, *args, **kwargs)
        except BaseException:
            self.stats.failed()
            raise

    def snapshot(self) -> PoolSnapshot:
        """This pool's counters now; ``idle`` is read from the queue itself."""
        q = self.pool  # None once closed
        idle = q.idle() if isinstance(q, _CountedQueue) else 0
        return self.stats.snapshot(str(self.scheme), self.host, int(self.port or 0), idle)


class CountedHTTPConnectionPool(CountedPool, HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections, waits and requests are counted."""

    ConnectionCls = _CountedHTTPConnection


class CountedHTTPSConnectionPool(CountedPool, HTTPSConnectionPool):
    """An ``HTTPSConnectionPool`` whose connections, waits and requests are counted."""

    ConnectionCls = _CountedHTTPSConnection


def _origin(pool: HTTPConnectionPool) -> str:
    return f"{pool.scheme}://{pool.host}:{pool.port}"
