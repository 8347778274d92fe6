"""Counters for one pool, and the frozen snapshots that leave the process.

The pool classes in :mod:`poolclient.pool` call one method here per event; nothing here
knows about urllib3, sockets or locks other than its own. The events also reach an optional
:class:`EventSink` (the Prometheus metrics of :mod:`poolclient.metrics`), always after the
lock is released: rare ones (connections opened and closed, errors, retries) one by
one, and those of every request as a :class:`Batch`: on a return when the last batch is
:data:`PUBLISH_EVERY` old, otherwise by the publisher thread (below) within that time, and
at once when the pool closes or :func:`publish_all` is called (a scrape in this process
does). The request path pays for the sink little more than the lock it takes anyway.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from . import timing
from .resilience.snapshot import PolicySnapshot


@dataclass(frozen=True)
class PoolSnapshot:
    """One origin's pool at one moment."""

    scheme: str
    host: str
    port: int
    maxsize: int
    connections_opened: int
    requests: int
    reused: int
    in_use: int
    idle: int
    waits: int
    discarded: int
    errors: int
    expired: int
    retired: int
    retried: int
    streaming: int = 0
    unread: int = 0
    cancelled: int = 0
    kind: str = "sync"  # or "async": one pool per origin and event loop (poolclient.aio)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class RegistrySnapshot:
    """Every pool of one process at one moment."""

    pid: int
    pools: tuple[PoolSnapshot, ...]
    #: Connections of async pools dropped unclosed because their event loop closed or the
    #: process forked (never written on: see poolclient.aio.pools).
    abandoned: int = 0
    #: Each origin's policy in this process (breaker, bulkhead, budget; resilience).
    policies: tuple[PolicySnapshot, ...] = ()

    def totals(self) -> dict[str, int]:
        """Counters summed over all pools (``maxsize`` excluded)."""
        names = ("connections_opened", "requests", "reused", "in_use", "idle", "waits",
                 "discarded", "errors", "expired", "retired", "retried", "streaming", "unread",
                 "cancelled")
        return {name: sum(getattr(pool, name) for pool in self.pools) for name in names}


# Under load, the longest a pool's per-request counts wait before its sink has them.
# (Rare events, connections opened and closed, errors and retries, reach it at once.)
PUBLISH_EVERY = 1.0


@dataclass
class Batch:
    """What the requests of one pool did since the last batch: counts, the gauges' moves,
    and each checkout's wait for a connection and each attempt's duration, in seconds."""

    requests: int = 0
    reused: int = 0
    waited: int = 0  # callers that found every connection in use
    in_use: int = 0
    idle: int = 0
    streaming: int = 0
    waits: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)


class EventSink(Protocol):
    """Where a pool's events go besides its own counters (one sink per pool)."""

    def publish(self, batch: Batch) -> None: ...
    def opened(self) -> None: ...
    def failed(self, kind: str) -> None: ...
    def closed(self, reason: str) -> None: ...
    def retried(self) -> None: ...
    def ended(self, seconds: float) -> None:
        """A connection this pool opened was closed, whyever, ``seconds`` after it was
        established (OpenTelemetry's ``http.client.connection.duration``)."""


class RequestEvents(Protocol):
    """What one request's pool did, told as it happens to whoever traces the request
    (:class:`poolclient.integrations.otel.SpanEvents`: events on the current client span).
    Set on a pool's stats only where a tracer provider is configured; otherwise each call
    site pays one attribute check."""

    def waited(self, seconds: float) -> None: ...
    def opened(self, seconds: float, resumed: bool | None) -> None: ...
    def attempted(self, reused: bool) -> None: ...
    def retried(self, reason: str) -> None: ...
    def refused(self, reason: str) -> None: ...
    def start(self, request: Any, scheme: str, host: str, port: int) -> Any:
        """An async pool's call begins (``request``: httpcore2's): its client span where
        none was made for it, which the pool ends when the call is done."""


def _request_events() -> RequestEvents | None:
    """The span events for a new pool: ``None`` unless OpenTelemetry's tracing API is
    imported and a tracer provider configured (or poolclient's are enabled). Once per
    pool, never per request; nothing of OpenTelemetry's imported otherwise."""
    if "poolclient.integrations.otel" not in sys.modules:
        api = sys.modules.get("opentelemetry.trace")
        if api is None or type(api.get_tracer_provider()).__name__ in (
                "ProxyTracerProvider", "NoOpTracerProvider"):
            return None
    from .integrations import otel

    return otel.request_events()


class PoolStats:
    """Thread-safe event counters of one pool.

    ``in_use`` is checkouts minus checkins; ``streaming``, the part of it held by responses
    handed to their caller with the body still to read (a long stream starves a pool
    without a single request waiting, until it does); ``idle`` is not counted here but read
    from the pool's queue, by ``idle``, when a snapshot or a batch is made, so it can never
    drift.
    """

    def __init__(self, maxsize: int, sink: EventSink | None = None,
                 idle: Callable[[], int] = lambda: 0) -> None:
        self.maxsize = maxsize
        self.sink = sink
        self.idle = idle
        self.events = _request_events()
        self._lock = threading.Lock()
        self._opened = 0
        self._requests = 0
        self._reused = 0
        self._in_use = 0
        self._waits = 0
        self._discarded = 0
        self._errors = 0
        self._expired = 0
        self._retired = 0
        self._retried = 0
        self._streaming = 0
        self._unread = 0
        self._cancelled = 0
        # For the sink (kept only when there is one): what the last batch had reached,
        # so that a batch's counts are the counters' differences, and what only the
        # batches carry.
        self._published = (0, 0, 0, 0, 0, 0)  # requests, reused, waits, in_use, idle, streaming
        self._wait_times: list[float] = []
        self._durations: list[float] = []
        self._publish_at = 0.0
        self._scheduled = False  # a batch is waiting for the publisher thread

    def __repr__(self) -> str:
        return (
            f"<PoolStats opened={self._opened} requests={self._requests} "
            f"reused={self._reused} in_use={self._in_use} waits={self._waits} "
            f"discarded={self._discarded} errors={self._errors} expired={self._expired} "
            f"retired={self._retired} retried={self._retried} streaming={self._streaming} "
            f"unread={self._unread} cancelled={self._cancelled}>"
        )

    def opened(self, seconds: float | None = None, resumed: bool | None = None) -> None:
        """A TCP (and TLS) connection was established, in ``seconds`` if known (TLS
        handshake included), its TLS session ``resumed`` or not (``None``: no TLS)."""
        with self._lock:
            self._opened += 1
        if self.sink is not None:
            self.sink.opened()
        if self.events is not None and seconds is not None:
            self.events.opened(seconds, resumed)

    def ended(self, seconds: float) -> None:
        """A connection this pool opened was closed ``seconds`` after it was established."""
        if self.sink is not None:
            self.sink.ended(seconds)

    def attempted(self, reused: bool, seconds: float) -> None:
        """A request went out, on a connection that had carried one before if ``reused``,
        and its attempt ended (answered or failed) after ``seconds``. One call, and one
        lock, per attempt: this is the request path."""
        with self._lock:
            self._requests += 1
            self._reused += reused
            if self.sink is not None:
                self._durations.append(seconds)
        timing.record(seconds)
        if self.events is not None:
            self.events.attempted(reused)

    def checked_out(self, waited: float | None = None) -> None:
        """A caller got a connection after waiting ``waited`` seconds (``None``: not
        known yet; an async pool tells the span once the request went out)."""
        with self._lock:
            self._in_use += 1
            if self.sink is not None:
                self._wait_times.append(waited or 0.0)
        if self.events is not None and waited is not None:
            self.events.waited(waited)

    def streamed(self) -> None:
        """A response went to its caller holding its connection, the body still to read.

        Its batch is scheduled now, not at the return: a stream may hold the connection for
        minutes, and the sink should see it (and the checkout) while it does."""
        with self._lock:
            self._streaming += 1
            if self.sink is None or self._scheduled:
                return
            self._scheduled = True
        _schedule(self)

    def checked_in(self, streamed: bool = False) -> None:
        """A connection came back (into the queue, if kept), from a response that
        :meth:`streamed` if ``streamed``: the moment a batch is handed to the sink, if the
        last one is old enough; otherwise the publisher thread hands it over within
        :data:`PUBLISH_EVERY`."""
        if self.sink is None:
            with self._lock:
                self._in_use -= 1
                self._streaming -= streamed
            return
        now = time.monotonic()
        with self._lock:
            self._in_use -= 1
            self._streaming -= streamed
            due = now >= self._publish_at
            if not due:
                if self._scheduled:
                    return
                self._scheduled = True
        if due:
            self.publish()
        else:
            _schedule(self)

    def publish(self) -> None:
        """Hand what the requests did since the last batch to the sink now."""
        with self._lock:
            self._publish_at = time.monotonic() + PUBLISH_EVERY
            self._scheduled = False
            # idle read under the lock too: concurrent batches then carry moves that add up
            # to what the queue holds, whichever reaches the sink first.
            now = (self._requests, self._reused, self._waits, self._in_use, self.idle(),
                   self._streaming)
            last, self._published = self._published, now
            batch = Batch(requests=now[0] - last[0], reused=now[1] - last[1],
                          waited=now[2] - last[2], in_use=now[3] - last[3],
                          idle=now[4] - last[4], streaming=now[5] - last[5],
                          waits=self._wait_times, durations=self._durations)
            self._wait_times, self._durations = [], []
        if self.sink is not None and (batch.requests or batch.waits or batch.waited
                                      or batch.in_use or batch.idle or batch.streaming):
            self.sink.publish(batch)

    def waited(self) -> None:
        """A caller found every connection in use and had to wait (in the batch: waits come
        in crowds, when the pool is busiest)."""
        with self._lock:
            self._waits += 1

    def discarded_one(self) -> None:
        """A connection was closed because the pool had no room to keep it."""
        with self._lock:
            self._discarded += 1
        if self.sink is not None:
            self.sink.closed("discarded")

    def failed(self, kind: str = "other") -> None:
        """An attempt failed: ``kind`` is connect, tls, timeout, protocol, pool_timeout,
        deadline or other."""
        with self._lock:
            self._errors += 1
        if self.sink is not None:
            self.sink.failed(kind)

    def expired_one(self) -> None:
        """An idle connection was closed instead of reused: idle longer than allowed."""
        with self._lock:
            self._expired += 1
        if self.sink is not None:
            self.sink.closed("expired")

    def unread_one(self) -> None:
        """A connection was closed because its response was closed before its body was
        read whole: what is left of the body would be read as the next response."""
        with self._lock:
            self._unread += 1
        if self.sink is not None:
            self.sink.closed("unread")

    def cancelled_one(self) -> None:
        """A task was cancelled while it waited for a connection or read a response (its
        client went away, say): the connection, if it had one, was closed, never returned
        with a response half-read."""
        with self._lock:
            self._cancelled += 1
        if self.sink is not None:
            self.sink.closed("cancelled")

    def abandoned(self, n: int) -> None:
        """``n`` connections were dropped unclosed, never written on again: their event
        loop had closed (poolclient.aio)."""
        if self.sink is not None:
            for _ in range(n):
                self.sink.closed("abandoned")

    def retired_one(self) -> None:
        """A connection was closed because it had lived longer than allowed."""
        with self._lock:
            self._retired += 1
        if self.sink is not None:
            self.sink.closed("retired")

    def retried_one(self, reason: str = "stale") -> None:
        """The pool sent a request again: ``stale``, a reused connection failed before any
        response and the request went on a new one; ``connect``, a connect failed and was
        tried again (async pools)."""
        with self._lock:
            self._retried += 1
        if self.sink is not None:
            self.sink.retried()
        if self.events is not None:
            self.events.retried(reason)

    def refused(self, reason: str) -> None:
        """The resilience policy refused the call before it reached the pool (``reason``: a
        :class:`poolclient.resilience.Refusal` value, open, overflow or budget): told to
        the request's span. Counted by the policy itself."""
        if self.events is not None:
            self.events.refused(reason)

    def snapshot(self, scheme: str, host: str, port: int, kind: str = "sync") -> PoolSnapshot:
        """The counters now, and ``idle`` read from the queue, under one lock."""
        with self._lock:
            return PoolSnapshot(
                scheme=scheme,
                host=host,
                port=port,
                maxsize=self.maxsize,
                connections_opened=self._opened,
                requests=self._requests,
                reused=self._reused,
                in_use=self._in_use,
                idle=self.idle(),
                waits=self._waits,
                discarded=self._discarded,
                errors=self._errors,
                expired=self._expired,
                retired=self._retired,
                retried=self._retried,
                streaming=self._streaming,
                unread=self._unread,
                cancelled=self._cancelled,
                kind=kind,
            )


# The publisher: one daemon thread per process, started when a batch first has to wait, that
# hands every waiting batch to its sink each PUBLISH_EVERY seconds, so the sinks (and so
# /metrics, in every worker) lag the pools by at most that much, whether or not more
# requests come. A thread, not a publish on every quiet return: a worker whose pool goes
# quiet between requests would otherwise pay a batch (several file writes under
# prometheus-client's process-wide lock) per request. Under gevent it is a greenlet: pools,
# and so the thread, are made after the monkey patch.
_waiting: set[PoolStats] = set()
_waiting_lock = threading.Lock()
_publisher_pid = 0


def _schedule(stats: PoolStats) -> None:
    global _publisher_pid
    with _waiting_lock:
        _waiting.add(stats)
        if _publisher_pid == os.getpid():
            return
        _publisher_pid = os.getpid()  # none runs in a forked child: start one
    threading.Thread(target=_publish_every, name="poolclient-metrics", daemon=True).start()


def _publish_every() -> None:
    while True:
        time.sleep(PUBLISH_EVERY)
        try:
            publish_all()
        except Exception:  # noqa: BLE001 - one failing sink must not stop the publisher
            logging.getLogger("poolclient.metrics").exception("publishing pool metrics failed")


def publish_all() -> None:
    """Hand every waiting batch of this process to its sink now (a scrape does, first)."""
    with _waiting_lock:
        waiting = list(_waiting)
        _waiting.clear()
    for stats in waiting:
        stats.publish()


def _forget_after_fork() -> None:
    global _waiting_lock
    _waiting_lock = threading.Lock()  # another thread may have held it at fork time
    _waiting.clear()  # the parent's pools: dropped in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
