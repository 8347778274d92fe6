"""One origin's async pool: httpcore2's ``AsyncConnectionPool``, bounded, timed and counted.

The HTTP is httpcore2's, unchanged: its pool assigns connections, queues callers, closes a
connection whose exchange was cancelled or left half-read (never returning it to the pool)
and expires idle ones. This module adds what poolclient's sync pools add, around it:

- the settings: ``maxsize`` connections, the pool timeout, connect and read timeouts,
  ``idle_timeout`` (httpcore2's keep-alive expiry), ``max_lifetime``, connect retries
  with backoff (:mod:`.backend`), and the deadline, which bounds a call until its status
  line (each wait cut to what is left of it, :class:`.backend.CallLimits`) and then
  each read by the read timeout;
- the counters of :class:`~poolclient.stats.PoolStats`, the same as a sync pool's, plus
  ``cancelled``: each call is checked out when it starts and checked in when its
  response is closed, so ``in_use`` counts calls holding (or waiting for) a connection.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import httpcore2

from .. import metrics
from ..resilience import Outcome, RefusedError, route_key
from ..resilience.httpcore_outcomes import outcome
from ..stats import PoolSnapshot, PoolStats
from .backend import CallLimits, CountingBackend, PoolStream, SessionCache, current_call

if TYPE_CHECKING:
    import ssl

    from ..config import Settings
    from ..integrations.otel import ClientCall
    from ..resilience import Call, OriginPolicy


class AsyncPool:
    """The pool of one origin, in one process and one event loop.

    Not thread-safe, like httpcore2's async pool: :mod:`.pools` gives each loop its own.
    """

    def __init__(self, scheme: str, host: str, port: int, *, settings: Settings,
                 maxsize: int, pool_timeout: float, tls: SessionCache | None,
                 policy: OriginPolicy | None = None) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self.maxsize = maxsize
        self.pool_timeout = pool_timeout
        self.connect_timeout = settings.connect_timeout
        self.read_timeout = settings.read_timeout
        self.backoff = settings.backoff
        self.connect_retries = settings.connect_retries
        self.tls = tls
        self.stats: PoolStats = PoolStats(maxsize, metrics.pool_sink(scheme, host, port),
                                          self._idle)
        self.backend = CountingBackend(self.stats, tls=tls is not None,
                                       idle_timeout=settings.idle_timeout,
                                       max_lifetime=settings.max_lifetime)
        context: ssl.SSLContext | None = tls.context if tls is not None else None
        self.engine = httpcore2.AsyncConnectionPool(
            ssl_context=context, max_connections=maxsize, max_keepalive_connections=maxsize,
            keepalive_expiry=settings.idle_timeout, http1=True, http2=False,
            network_backend=self.backend)
        self.in_flight = 0
        #: The origin's breaker, bulkhead, retry budget and stall detection, shared with
        #: the sync pools of the process (``Registry.policy``); ``None``: none.
        self.policy = policy
        self._routes: dict[tuple[bytes, bytes], str] = {}

    def __repr__(self) -> str:
        return (f"<AsyncPool {self.scheme}://{self.host}:{self.port} [in flight "
                f"{self.in_flight}, connections {len(self.backend.streams)} of "
                f"{self.maxsize}] {self.engine!r}>")

    def _idle(self) -> int:
        return sum(1 for conn in self.engine.connections if conn.is_idle())

    async def send(self, request: httpcore2.Request, *, deadline: float | None,
                   retries: int | None = None) -> tuple[httpcore2.Response, Exchange]:
        """Send ``request``; its response, whose body the caller reads through the
        :class:`Exchange` and must close. httpcore2's exceptions are raised as they are;
        the deadline's as ``httpcore2.ReadTimeout``."""
        stats = self.stats
        events = stats.events
        traced = events.start(request, self.scheme, self.host, self.port) if events else None
        try:
            verdict = self._admit(request)  # may refuse before any wait or socket
        except BaseException as exc:
            if isinstance(exc, RefusedError):
                stats.refused(exc.reason.value)
            if traced is not None:
                traced.failed(exc)
            raise
        started = time.monotonic()
        call = CallLimits(self.connect_retries if retries is None else retries, self.backoff,
                          started + deadline if deadline is not None else None, verdict)
        timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            "connect": _given(timeouts.get("connect"), self.connect_timeout),
            "read": _given(timeouts.get("read"), self.read_timeout),
            "write": _given(timeouts.get("write"), self.read_timeout),
            "pool": call.bounded(_given(timeouts.get("pool"), self.pool_timeout)),
        }
        token = current_call.set(call)
        if self.in_flight >= self.maxsize:
            stats.waited()
        self.in_flight += 1
        stats.checked_out()
        try:
            response = await self.engine.handle_async_request(request)
        except BaseException as exc:
            self.in_flight -= 1
            if call.sent_on is not None:  # it went out: an attempt, as the upstream counts
                self._attempted(call.sent_on, started)
            stats.checked_in()
            if traced is not None:
                traced.failed(exc)
            if verdict is not None:
                stalled = self._judge_failure(verdict, exc)
                if stalled is not None:
                    stats.failed("timeout")
                    raise stalled from exc
            if isinstance(exc, asyncio.CancelledError):
                stats.cancelled_one()
                raise
            if isinstance(exc, httpcore2.TimeoutException) and call.passed():
                stats.failed("deadline")
                raise httpcore2.ReadTimeout(
                    f"{self.scheme}://{self.host}:{self.port} did not answer within the "
                    f"call's deadline of {deadline} s (POOLCLIENT_DEADLINE)") from exc
            kind = _failure_kind(exc)
            if kind is not None:
                stats.failed(kind)
            raise
        finally:
            current_call.reset(token)
        stream = response.extensions.get("network_stream")
        if isinstance(stream, PoolStream):
            if not stream.requests and self.tls is not None:
                self.tls.keep(stream.get_extra_info("ssl_object"))
            self._attempted(stream, started)
        stats.streamed()
        exchange = Exchange(self, response)
        if verdict is not None:
            verdict.response(response.status)  # the attempt's verdict: 502-504 fail
            exchange.verdict = verdict
        if traced is not None:
            traced.sent(response.status, (call.connect_at or call.sent_at or started) - started)
            exchange.traced = traced
        return response, exchange

    def _admit(self, request: httpcore2.Request) -> Call | None:
        policy = self.policy
        if policy is None:
            return None
        key = (request.method, request.url.target)
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= 256:  # ids in paths and queries: bounded
                self._routes.clear()
            route = self._routes[key] = route_key(
                request.method.decode("ascii"), request.url.target.decode("latin-1"))
        verdict = policy.admit(route, self.read_timeout)
        verdict.attempt()
        return verdict

    def _judge_failure(self, verdict: Call, exc: BaseException) -> Exception | None:
        """Report a failed attempt to the policy and end its call; the read timeout to
        raise instead when the watchdog aborted it as stalled."""
        try:
            if verdict.stalled:
                verdict.failed(Outcome.STALLED)
                stall = verdict.stall_error()
                return httpcore2.ReadTimeout(
                    str(stall) if stall is not None else
                    f"{self.scheme}://{self.host}:{self.port} stalled: aborted")
            verdict.failed(outcome(exc))
            return None
        finally:
            verdict.done()

    def _attempted(self, stream: PoolStream, started: float) -> None:
        self.stats.attempted(stream.requests > 0, time.monotonic() - started)
        stream.requests += 1

    def snapshot(self) -> PoolSnapshot:
        return self.stats.snapshot(self.scheme, self.host, self.port, kind="async")

    async def aclose(self) -> None:
        await self.engine.aclose()
        self.stats.publish()

    def release(self) -> int:
        """Drop every connection without a write (a fork, or a closed loop); how many."""
        return self.backend.release_all()


class Exchange:
    """The end of one call's checkout, once its response is done with: read to the end,
    closed early (httpcore2 then closes the connection: counted as unread), failed, or
    cancelled while reading. The body itself is ``response.stream``, read by the caller,
    which reports here how its reading ended."""

    __slots__ = ("done", "finished", "pool", "response", "traced", "verdict")

    def __init__(self, pool: AsyncPool, response: httpcore2.Response) -> None:
        self.pool = pool
        self.response = response
        self.done = False  # read to the end
        self.finished = False
        self.traced: ClientCall | None = None  # its client span, where spans are on
        self.verdict: Call | None = None  # its call in the origin's policy, if any

    async def cancelled(self) -> None:
        await self._finish("cancelled")

    async def failed(self, exc: Exception) -> None:
        """Reading failed; httpcore2 has closed the connection."""
        self.pool.stats.failed(_failure_kind(exc) or "other")
        await self._finish("failed")

    async def aclose(self) -> None:
        await self._finish("" if self.done else "unread")

    async def _finish(self, how: str) -> None:
        if self.finished:
            return
        self.finished = True
        pool = self.pool
        try:
            await self.response.aclose()
        finally:
            if self.verdict is not None:
                self.verdict.done()
            pool.in_flight -= 1
            if how == "cancelled":
                pool.stats.cancelled_one()
            elif how == "unread":
                pool.stats.unread_one()
            pool.stats.checked_in(streamed=True)
            if self.traced is not None:
                self.traced.finished()


def _given(value: Any, default: float) -> Any:
    return default if value is None else value


def _failure_kind(exc: BaseException) -> str | None:
    if isinstance(exc, httpcore2.PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, (httpcore2.ConnectError, httpcore2.ConnectTimeout)):
        return None  # counted per attempt by the backend (TLS failures included)
    if isinstance(exc, httpcore2.TimeoutException):
        return "timeout"
    if isinstance(exc, httpcore2.ProtocolError):
        return "protocol"
    if isinstance(exc, (httpcore2.NetworkError, OSError)):
        return "other"
    return None
