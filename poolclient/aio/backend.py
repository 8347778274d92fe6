"""httpcore2's network backend, wrapped so that a pool knows its connections.

httpcore2 keeps its connections to itself (its maintainers declined pool statistics,
encode/httpcore #508). Its documented extension point is the network backend: every
connection it opens is a stream this module hands out. Through it a pool gets, without
touching httpcore2's private state:

- the count of connections opened (after TCP, and after TLS for https);
- connect retries with full-jitter backoff, never past the call's deadline: nothing has
  been sent on a connection that was never opened, so any method may retry;
- a connection lifetime: an idle stream past ``max_lifetime`` says it is readable, which is
  how httpcore2 learns that a server closed an idle connection, so httpcore2 closes it
  itself before reuse (counted as retired);
- the reason a connection closed (idle too long, too old), for the counters;
- each live stream's socket, so that a pool left by a fork or a closed event loop can
  release its file descriptors without writing a byte (see :mod:`.pools`);
- TLS session resumption: the pool's context offers the last session it kept (see
  :class:`SessionCache`);
- the origin's addresses (``POOLCLIENT_BALANCE``, as :mod:`poolclient.balance` does for
  the sync pools): the TCP connect goes to the address the origin's policy chooses, up to
  three sharing the connect timeout, each failure reported (TLS still verifies the host
  name), and an idle connection to an address gone from DNS or ejected says it is readable,
  so httpcore2 closes it before reuse (counted as retired).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import socket
import ssl
import time
from collections.abc import Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import httpcore2
from httpcore2 import AnyIOBackend, AsyncNetworkBackend, AsyncNetworkStream

from ..resilience import RetryBudgetExhaustedError, RetryReason

if TYPE_CHECKING:
    from ..resilience import Call, OriginPolicy
    from ..stats import PoolStats


class CallLimits:
    """What the call being sent allows: connect retries, their backoff, and its deadline
    (monotonic), which cuts each wait to what is left of it when the wait starts.

    Set in a context variable by :meth:`.pool.AsyncPool.send` until the status line has
    arrived: httpcore2 connects, writes and reads inside the task that sends the request,
    so the backend sees the call's own limits (a body read later waits the read timeout).
    Cheaper than a cancel scope around the call, and a cut wait fails as httpcore2's own
    timeout does, its connection closed by httpcore2."""

    __slots__ = ("backoff", "connect_at", "deadline_at", "retries", "sent_at", "sent_on",
                 "verdict")

    def __init__(self, retries: int, backoff: float, deadline_at: float | None,
                 verdict: Call | None = None) -> None:
        self.retries = retries
        self.backoff = backoff
        self.deadline_at = deadline_at
        self.verdict = verdict  # the call in the origin's policy (poolclient.resilience)
        self.sent_on: PoolStream | None = None  # the connection the request went out on
        # For the span's pool wait (monotonic): when this call's first connect began,
        # else when its request's first bytes went out on a reused connection.
        self.connect_at = 0.0
        self.sent_at = 0.0

    def bounded(self, timeout: float | None) -> float | None:
        if self.deadline_at is None:
            return timeout
        left = max(0.0, self.deadline_at - time.monotonic())
        return left if timeout is None or left < timeout else timeout

    def passed(self) -> bool:
        return self.deadline_at is not None and time.monotonic() >= self.deadline_at


current_call: ContextVar[CallLimits | None] = ContextVar("poolclient_aio_call", default=None)


class SessionCache:
    """One TLS session per pool, offered to each new connection of that pool.

    ``ssl.SSLContext.wrap_bio`` (what asyncio's and anyio's TLS use) takes a ``session``;
    the context's ``sslobject_class`` builds the object, so a subclass that fills in the
    kept session is the one hook needed. A session is kept after a full handshake, and for
    the hostname it was verified for only (OpenSSL would resume it under another name and
    then verify none)."""

    def __init__(self, context: ssl.SSLContext, resume: bool = True) -> None:
        self.context = context
        self.resume = resume
        self.sessions: dict[str | None, ssl.SSLSession] = {}
        if not resume:  # a caller's own context: not ours to alter
            return
        cache = self

        class _Offering(ssl.SSLObject):
            @classmethod
            def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                        server_side: bool = False, server_hostname: str | None = None,
                        session: ssl.SSLSession | None = None,
                        context: ssl.SSLContext | None = None) -> ssl.SSLObject:
                if session is None and not server_side:
                    session = cache.sessions.get(server_hostname)
                return super()._create(  # type: ignore[misc, no-any-return]
                    incoming, outgoing, server_side, server_hostname, session=session,
                    context=context)

        context.sslobject_class = _Offering

    def keep(self, ssl_object: ssl.SSLObject | None) -> None:
        """Keep the session of a connection that made a full handshake."""
        if not self.resume or ssl_object is None or ssl_object.session_reused:
            return
        session = ssl_object.session
        if session is not None and session.has_ticket:
            self.sessions[ssl_object.server_hostname] = session


class PoolStream(AsyncNetworkStream):
    """One connection of a pool: httpcore2's stream, timed and counted."""

    __slots__ = ("_sock", "address", "backend", "closed_as", "connected_at", "connecting_at",
                 "inner", "last_used", "pending", "policy", "requests")

    def __init__(self, inner: AsyncNetworkStream, backend: CountingBackend,
                 connecting_at: float = 0.0) -> None:
        self.inner = inner
        self.backend = backend
        self.connected_at = self.last_used = time.monotonic()
        self.connecting_at = connecting_at or self.connected_at  # its TCP connect began
        self.requests = 0  # responses received on it: 0 means the next one is its first
        self.closed_as = ""  # set by the pool when it closed it for a reason of its own
        self._sock: Any = None  # the socket under TLS, once asked for
        self.policy: OriginPolicy | None = None  # the origin's, when it chose the address
        self.pending: str | None = None  # the address connected to, its TLS to come
        self.address: str | None = None  # the address, once connected (TLS done)

    def connected(self, call: Call | None) -> None:
        """Report the chosen address connected (TCP, and TLS for https)."""
        address, self.pending = self.pending, None
        if address is not None and call is not None:
            self.address = address
            call.connected(address)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        call = current_call.get()
        if call is not None:  # until the status line: no wait past the call's deadline
            timeout = call.bounded(timeout)
        data = await self.inner.read(max_bytes, timeout)
        self.last_used = time.monotonic()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:  # h11 hands over an empty end of message for a request without body
            return
        call = current_call.get()
        if call is not None:
            timeout = call.bounded(timeout)
            if call.sent_on is None:
                call.sent_at = time.monotonic()
                if call.verdict is not None:  # what the watchdog runs if this call stalls
                    call.verdict.on_abort = self.abort
            call.sent_on = self
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        backend = self.backend
        if self in backend.streams:  # not yet released (a fork or a closed loop)
            del backend.streams[self]
            backend.closing(self)
        await self.inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> AsyncNetworkStream:
        backend = self.backend
        backend.streams.pop(self, None)
        call = current_call.get()
        if call is not None:
            timeout = call.bounded(timeout)
        try:
            tls = await self.inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException as exc:
            backend.stats.failed("tls")
            address, self.pending = self.pending, None
            if address is not None and call is not None and call.verdict is not None:
                if isinstance(exc, Exception):
                    call.verdict.connect_failed(address)
                else:  # cancelled: not the address's fault
                    call.verdict.connect_abandoned(address)
            raise
        self.connected(call.verdict if call is not None else None)
        self.inner = tls
        backend.streams[self] = None
        ssl_object = tls.get_extra_info("ssl_object")
        backend.stats.opened(time.monotonic() - self.connecting_at,
                             getattr(ssl_object, "session_reused", None))
        return self

    def get_extra_info(self, info: str) -> Any:
        if info != "is_readable":
            return self.inner.get_extra_info(info)
        # httpcore2 asks this of an idle connection before each reuse: "readable" means
        # the server closed it, and httpcore2 closes it. Too old is "readable" too
        # (counted as retired). The socket is looked up once: anyio builds its attribute
        # table anew on every lookup, twice for a TLS stream.
        if time.monotonic() - self.connected_at >= self.backend.max_lifetime or (
                self.address is not None and self.policy is not None
                and not self.policy.usable(self.address)):
            self.closed_as = "retired"
            return True
        sock = self._sock
        if sock is None:
            sock = self._sock = self.inner.get_extra_info("socket")
        return _readable(sock)

    def abort(self) -> None:
        """The resilience watchdog's ``on_abort``, from its thread: shut this stalled
        connection's socket down, so the task waiting on it wakes with an error now, not
        at the read timeout. Only this process's own connection (never one inherited)."""
        sock = self.inner.get_extra_info("socket")
        if sock is not None and self.backend.pid == os.getpid():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def release(self, devnull: int) -> None:
        """Release this process's hold on the socket, and nothing else: no TLS
        close_notify, no shutdown, nothing written (see :mod:`.pools`).

        The descriptor is pointed at ``devnull`` (dup2 closes the socket's), not closed:
        the event loop's socket object still owns that number and closes it when it goes,
        which must not close whatever file gets the number next."""
        sock = self.inner.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if fd != -1:
            os.dup2(devnull, fd)


class CountingBackend(AsyncNetworkBackend):
    """The network backend of one pool: anyio's, counted, with connect retries."""

    def __init__(self, stats: PoolStats, *, tls: bool, idle_timeout: float,
                 max_lifetime: float) -> None:
        self.inner = AnyIOBackend()
        self.pid = os.getpid()
        self.stats = stats
        self.tls = tls
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        # Insertion-ordered and O(1) to remove: the pool's live connections.
        self.streams: dict[PoolStream, None] = {}

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> AsyncNetworkStream:
        call = current_call.get()
        if call is not None and not call.connect_at:
            call.connect_at = time.monotonic()
        verdict = call.verdict if call is not None else None
        balancing = verdict is not None and verdict.policy.balancing
        attempt = 0
        address = None
        while True:
            connecting_at = time.monotonic()
            bounded = call.bounded(timeout) if call is not None else timeout
            try:
                if balancing:
                    assert verdict is not None
                    inner, address = await self._connect_any(
                        verdict, host, port, bounded, local_address, socket_options)
                else:
                    inner = await self.inner.connect_tcp(host, port, bounded, local_address,
                                                         socket_options)
                break
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                self.stats.failed("connect" if isinstance(exc, httpcore2.ConnectError)
                                  else "timeout")
                delay = _backoff(call, attempt)
                if delay is None:
                    raise
                if call is not None and call.verdict is not None:
                    try:  # connect retries draw on the origin's retry budget
                        call.verdict.retry(RetryReason.CONNECT, exc)
                    except RetryBudgetExhaustedError:
                        raise exc from None
                attempt += 1
                self.stats.retried_one("connect")
                await asyncio.sleep(delay)
        stream = PoolStream(inner, self, connecting_at)
        self.streams[stream] = None
        if address is not None:
            stream.policy, stream.pending = verdict.policy, address  # type: ignore[union-attr]
        if not self.tls:
            stream.connected(verdict)
            self.stats.opened(stream.connected_at - connecting_at)
        return stream

    async def _connect_any(self, call: Call, host: str, port: int, timeout: float | None,
                           local_address: str | None, socket_options: Iterable[Any] | None
                           ) -> tuple[AsyncNetworkStream, str | None]:
        """A TCP connection to one of the addresses the policy offers (``Call.
        connect_attempts``), and that address; to ``host`` as resolved by the loop when
        the origin has no address (its name did not resolve)."""
        policy = call.policy
        if policy.resolve is not None and (policy.refresh_due() or not call.candidates()):
            # The first connect, or the first after the origin sat unused (the watchdog
            # resolves only origins in use); getaddrinfo blocks, so off the loop.
            await asyncio.get_running_loop().run_in_executor(None, policy.resolve)
        last: Exception | None = None
        try:
            for address, share in call.connect_attempts(timeout):
                try:
                    inner = await self.inner.connect_tcp(address, port, share, local_address,
                                                         socket_options)
                except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                    call.connect_failed(address)
                    last = exc
                    continue
                except BaseException:
                    call.connect_abandoned(address)
                    raise
                return inner, address
        except RetryBudgetExhaustedError:
            pass  # the next address would be a retry the budget refuses: the last error
        if last is not None:
            raise last
        return await self.inner.connect_tcp(host, port, timeout, local_address,
                                            socket_options), None

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None
                                  ) -> AsyncNetworkStream:
        raise httpcore2.UnsupportedProtocol("poolclient's async pools connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def closing(self, stream: PoolStream) -> None:
        """Count why a connection closes, where the pool chose to close it."""
        if stream.policy is not None:
            if stream.address is not None:
                stream.policy.disconnected(stream.address)
            elif stream.pending is not None:  # closed before its TLS began
                stream.policy.connect_abandoned(stream.pending)
                stream.pending = None
        now = time.monotonic()
        self.stats.ended(now - stream.connected_at)
        if stream.closed_as == "retired":
            self.stats.retired_one()
        elif stream.requests and now - stream.last_used >= self.idle_timeout:
            self.stats.expired_one()

    def release_all(self) -> int:
        """Release every live connection's descriptor without a write; how many there were."""
        streams = list(self.streams)
        self.streams.clear()
        if streams:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                for stream in streams:
                    stream.release(devnull)
                    if stream.policy is not None and stream.address is not None:
                        stream.policy.disconnected(stream.address)  # (a closed loop's)
            finally:
                os.close(devnull)
        return len(streams)


def _readable(sock: Any) -> bool:
    """Whether a read on ``sock`` would return at once (data, or the peer's close); a
    socket without a descriptor counts as closed."""
    fd = sock.fileno() if sock is not None else -1
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _backoff(call: CallLimits | None, attempt: int) -> float | None:
    """Seconds to wait before connect retry ``attempt + 1``, or ``None`` for no retry."""
    if call is None or attempt >= call.retries:
        return None
    delay = random.uniform(0, call.backoff * 2 ** attempt)  # full jitter
    if call.deadline_at is not None and time.monotonic() + delay >= call.deadline_at:
        return None
    return delay
