"""urllib3's connection pools, with connection lifetimes, the stale-connection retry, the
call deadline, and every event reported to a :class:`PoolStats`.

Only urllib3's own extension points are used: ``ConnectionCls`` and the pool queue for
counting; ``_get_conn`` / ``_put_conn`` for checkout accounting and connection lifetimes;
``_make_request`` for the one retry urllib3 cannot decide (see :mod:`poolclient.retry`);
``urlopen``, ``_get_conn``, ``_validate_conn`` and the connection's ``getresponse`` for the
deadline; ``putheader`` and ``response_class`` for plain header lines written and read for
less (see :mod:`poolclient.wire`). The HTTP itself is urllib3's, unchanged.

The origin's policy (:mod:`poolclient.resilience`, one per origin per process, from the
registry) is asked in ``urlopen`` before any pool wait: a refusal (open circuit, a degraded
origin's full share) raises there, before a socket is touched. Each attempt reports its
verdict from ``_make_request``; connect retries and the stale keep-alive resend draw on the
retry budget; the call is done when its connection comes back (``_put_conn``) or it fails.
A call the watchdog finds stalled has its socket shut down (``abort_stalled``) and raises
:class:`StalledReadTimeoutError`, a read timeout, never sent again.

Expiry is checked when a connection is taken or returned, never by a background thread
(what urllib3's maintainers asked for, urllib3 #1301 and #2498): an idle connection past
``idle_timeout`` is closed on checkout and reconnected, one past ``max_lifetime`` is closed
when its request is done.
"""

from __future__ import annotations

import http.client
import logging
import os
import queue
import socket
import ssl
import time
from ssl import CertificateError
from typing import TYPE_CHECKING, Any

from urllib3.connection import HTTPConnection
from urllib3.connectionpool import ConnectionPool, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from . import loopcheck, metrics, retry
from .balance import BalancedConnection, balances
from .errors import PoolClientError
from .resilience import (
    Outcome,
    RefusedError,
    RetryReason,
    StalledError,
    route_key,
)
from .resilience.urllib3_outcomes import outcome
from .stats import PoolSnapshot, PoolStats
from .tls import HTTP11Connection, ResumingConnection, ResumingPool
from .wire import FastHeaderResponse, PlainHeaderLines

if TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse, HTTPResponse

    from .resilience import Call, OriginPolicy

# One structured DEBUG line per connection event: opened (with its handshake time), reused,
# expired, retired, discarded, dropped (closed by the upstream while idle), retried.
events = logging.getLogger("poolclient.connections")

_monotonic = time.monotonic

# A timeout that fires with less than this left of the deadline was the deadline's cut.
_DEADLINE_SLACK = 0.05

# What a reused connection raises when the upstream closed it while it sat idle: the
# status line never came (closed, reset, or TLS cut). A response that began and then broke
# raises something else (a ProtocolError from urllib3's response), and is never retried.
_NO_RESPONSE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


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


class StalledReadTimeoutError(ReadTimeoutError, StalledError):
    """A call the watchdog found stalled (no progress for far longer than its route's
    recent calls took, see :class:`~poolclient.resilience.StalledError`): its socket was
    shut down and the request is not sent again.

    A urllib3 ``ReadTimeoutError``, so requests raises ``ReadTimeout`` and poolclient's
    httpx transports ``ReadTimeout`` (the SDKs' ``APITimeoutError``).
    """

    def __init__(self, pool: ConnectionPool | None, url: str, stalled: StalledError) -> None:
        # Not through the bases' __init__: urllib3's would pass one argument on, by the MRO,
        # to StalledError's, which takes three.
        self.pool = pool  # type: ignore[assignment]
        self.url = url
        self.origin, self.waited, self.threshold = (stalled.origin, stalled.waited,
                                                    stalled.threshold)
        Exception.__init__(self, f"{pool}: Read timed out. {stalled}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (None, self.url,
                             StalledError(self.origin, self.waited, self.threshold)))


if TYPE_CHECKING:
    _PoolBase = HTTPConnectionPool
else:
    _PoolBase = object


class _JudgedResponse(FastHeaderResponse):
    """Tells the policy's call the status as soon as the status line and headers are
    read, before any of the body: a body that then breaks (a reset mid-response) is not
    an upstream that failed to answer, and the stall detector's sample is the wait for
    the answer to begin."""

    def begin(self) -> None:
        FastHeaderResponse.begin(self)
        call = retry.current_call.get()
        if call is not None and not call._judged:
            call.response(self.status)


class _CountsConnects(BalancedConnection, PlainHeaderLines):
    response_class = _JudgedResponse
    stats: PoolStats | None = None
    connected_at = 0.0  # monotonic time of the last connect
    idle_since = 0.0  # monotonic time it was last returned to the pool
    open_at_checkout = False  # set by the queue: had a socket when taken
    requests_sent = 0  # on this socket
    streaming = False  # held by a response handed to its caller, the body still to read
    call: Call | None = None  # the policy's call using it, from its attempt to its return
    pid = 0  # the process that connected it

    def connect(self) -> None:
        started = time.monotonic()
        again = self.connected_at > 0
        super().connect()
        self.pid = os.getpid()
        self.connected_at = time.monotonic()
        self.requests_sent = 0
        if self.stats is not None:
            self.stats.opened(self.connected_at - started,
                              getattr(self.sock, "session_reused", None))
        if events.isEnabledFor(logging.DEBUG):
            _event("opened", self, handshake_ms=round((self.connected_at - started) * 1000, 2),
                   reconnect=again)

    def close(self) -> None:
        if self.sock is not None and self.stats is not None:  # its age, whyever it closes
            self.stats.ended(time.monotonic() - self.connected_at)
        super().close()

    def abort_stalled(self) -> None:
        """The watchdog's ``on_abort``: shut this connection's socket down, so the thread
        waiting on it fails at once, if the call on it is still the stalled one. Only the
        TCP shutdown (``socket.socket.shutdown``, not the ``SSLSocket``'s, which would
        drop its TLS object under the reading thread), and only on a connection this
        process made: never one a fork handed down, whose socket the parent still uses."""
        call = self.call
        sock = getattr(self, "sock", None)
        if call is None or not call.stalled or sock is None or self.pid != os.getpid():
            return
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # closed meanwhile: the call is over anyway
            pass

    __call__ = abort_stalled

    def __str__(self) -> str:
        # As urllib3's errors name it ("HTTPSConnection(host=...): Failed to establish").
        return f"{_public_name(type(self))}(host={self.host!r}, port={self.port!r})"

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]  # as urllib3's
        # urllib3 has just set the read timeout: wait no longer than the deadline allows.
        self.timeout = retry.bounded(self.timeout)
        return super().getresponse()


class _CountedHTTPConnection(_CountsConnects, HTTPConnection):
    pass


class _CountedHTTPSConnection(_CountsConnects, ResumingConnection, HTTP11Connection):
    pass


_counting_classes: dict[type[Any], type[Any]] = {}
_HEADER_LINES = {"putheader": HTTPConnection.putheader,
                 "response_class": http.client.HTTPResponse}


def _counting(cls: type[Any]) -> type[Any]:
    """``cls`` if it counts its connects, else a subclass that does: a pool subclass may
    bring its own connection class (urllib3's SOCKS connections, an SDK's)."""
    if issubclass(cls, _CountsConnects):
        return cls
    found = _counting_classes.get(cls)
    if found is None:
        # What a class does its own way with header lines stays its own (urllib3's HTTP/2
        # connection writes frames, and has no response class).
        own = {name: getattr(cls, name) for name, stock in _HEADER_LINES.items()
               if getattr(cls, name, stock) is not stock}
        found = _counting_classes[cls] = type(cls.__name__, (_CountsConnects, cls), own)
    return found


class _CountsWaits(queue.LifoQueue[Any]):
    """What the pool's LIFO of idle connections adds to the queue class urllib3 chose
    (``QueueCls``, or ``queue.LifoQueue`` as it is when the pool is made, which is how
    gevent's patch reaches it): it notices when a caller must wait, and when a connection
    is discarded for want of room.

    urllib3 fills it with ``maxsize`` placeholders; an empty queue therefore means every
    connection is checked out.
    """

    stats: PoolStats

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        try:
            conn = super().get(block=False)
        except queue.Empty:
            if not block:
                raise
            self.stats.waited()
            conn = super().get(block=True, timeout=timeout)
        if conn is not None:
            # Lets the pool tell urllib3's "dropped by the peer" close from its own.
            # (``is_closed`` without the property call: this is every request's path.)
            conn.open_at_checkout = getattr(conn, "sock", None) is not None
        return conn

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        try:
            super().put(item, block=block, timeout=timeout)
        except queue.Full:
            if item is not None:
                self.stats.discarded_one()
                if events.isEnabledFor(logging.DEBUG):
                    _event("discarded", item, reason="pool_full")
            raise

    def idle(self) -> int:
        # A copy taken in one C call, no lock: under gevent this class derives from
        # gevent's LifoQueue, which has no ``mutex``.
        return sum(1 for conn in tuple(self.queue) if conn is not None and not conn.is_closed)


_queue_classes: dict[type[Any], type[_CountsWaits]] = {}


def _counted_queue(plain: queue.LifoQueue[Any], stats: PoolStats) -> _CountsWaits:
    """A queue of ``plain``'s class and size that counts into ``stats``."""
    base = type(plain)
    cls = _queue_classes.get(base)
    if cls is None:
        cls = _queue_classes[base] = type(f"Counted{base.__name__}", (_CountsWaits, base), {})
    counted = cls(plain.maxsize)
    counted.stats = stats
    return counted


class CountedPool(_PoolBase):
    """What both pool classes add: one call into :class:`PoolStats` per event."""

    stats: PoolStats
    pool_timeout: float | None = None
    idle_timeout: float | None = None
    max_lifetime: float | None = None
    deadline: float | None = None  # seconds per call, for calls that did not start one
    loop_calls: str | None = None  # POOLCLIENT_LOOP_CALLS of the registry (see loopcheck)
    policy: OriginPolicy | None = None  # the origin's, in this process (the registry's)
    _routes: dict[tuple[str, str], str] | None = None  # route_key's answers, by method and url

    def __init__(self, host: str, port: int | None = None, **kw: Any) -> None:
        scheme = str(self.scheme)
        sink = metrics.pool_sink(scheme, host, port or (443 if scheme == "https" else 80))
        self.stats = PoolStats(kw.get("maxsize", 1), sink)
        self.ConnectionCls = _counting(self.ConnectionCls)
        super().__init__(host, port, **kw)

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"<{type(self).__name__} {_origin(self)} [in use {s.in_use}/{s.maxsize} | "
            f"idle {s.idle} | opened {s.connections_opened} | requests {s.requests}]>"
        )

    def __str__(self) -> str:
        # What urllib3's own errors say of a pool, by urllib3's name for it: log searches
        # and alerts match on "HTTPSConnectionPool(host=...".
        return f"{_public_name(type(self))}(host={self.host!r}, port={self.port!r})"

    def close(self) -> None:
        super().close()
        self.stats.publish()  # what a worker's last requests did, before it exits

    def _new_pool_queue(self, maxsize: int) -> queue.LifoQueue[Any]:
        q = _counted_queue(super()._new_pool_queue(maxsize), self.stats)
        # The queue's method, not the pool's: a reference from the stats to the pool would
        # keep an evicted pool, and its sockets, alive until the garbage collector runs
        # (urllib3 closes them when the pool is freed).
        self.stats.idle = q.idle
        return q

    def _new_conn(self) -> Any:
        conn = super()._new_conn()
        conn.stats = self.stats  # type: ignore[attr-defined]
        policy = self.policy
        # Not through a proxy: the connection's peer is then the proxy, not the origin.
        if (policy is not None and policy.balancing and self.proxy is None
                and balances(type(conn))):
            conn.policy = policy  # type: ignore[attr-defined]
        return conn

    def _get_conn(self, timeout: float | None = None) -> Any:
        # requests never passes a pool timeout, so the pool's own applies when none is
        # given; without it a blocking pool would wait forever (requests #3825).
        started = time.monotonic()  # (one clock read for both: every request's path)
        timeout = retry.bounded(self.pool_timeout if timeout is None else timeout, started)
        conn: Any
        try:
            conn = super()._get_conn(timeout)
        except EmptyPoolError:
            self.stats.failed("pool_timeout")
            waited = round(time.monotonic() - started, 3)
            raise PoolTimeoutError(self, _origin(self), self.stats.maxsize, waited) from None
        now = time.monotonic()
        self.stats.checked_out(now - started)
        if conn is None:
            return conn
        if conn.is_closed:
            if conn.open_at_checkout and events.isEnabledFor(logging.DEBUG):
                _event("dropped", conn, idle_s=round(now - conn.idle_since, 3))
        elif conn.address is not None and not conn.policy.usable(conn.address):
            self._retire(conn, now, "address")  # gone from the name, or ejected
        elif self.max_lifetime is not None and self._too_old(conn, now):
            self._retire(conn, now)
        elif (self.idle_timeout is not None
              and now - getattr(conn, "idle_since", now) >= self.idle_timeout):
            conn.close()
            self.stats.expired_one()
            if events.isEnabledFor(logging.DEBUG):
                _event("expired", conn, idle_s=round(now - conn.idle_since, 3))
        return conn

    def _put_conn(self, conn: Any) -> None:
        streamed = False
        if conn is not None:
            call = conn.call
            if call is not None:  # its response is read, or released unread: the call is over
                conn.call = None
                if not call._done:  # call.done(), a frame less: this is every request's path
                    call._done = True
                    call._policy._done(call)
            now = time.monotonic()
            if self.max_lifetime is not None and not conn.is_closed and self._too_old(conn, now):
                self._retire(conn, now)  # after its request, before the next one
            conn.idle_since = now
            streamed, conn.streaming = getattr(conn, "streaming", False), False
        try:
            super()._put_conn(conn)
        finally:
            self.stats.checked_in(streamed)

    def release_unread(self, response: BaseHTTPResponse) -> None:
        """Give back the connection of ``response``, closed by its caller before its body
        was read whole (an SSE consumer stops at its last event, before the chunked body's
        end): kept if the rest of the body has arrived already, else closed and counted as
        ``unread``, never put back half-read (urllib3's ``release_conn`` would)."""
        conn = response.connection
        if conn is None:  # read to the end: urllib3 gave it back
            return
        if not _rest_arrived(response):
            response.close()  # the connection too
            self.stats.unread_one()
            if events.isEnabledFor(logging.DEBUG):
                _event("unread", conn)
        response.release_conn()

    def _too_old(self, conn: Any, now: float) -> bool:
        return (self.max_lifetime is not None
                and now - getattr(conn, "connected_at", now) >= self.max_lifetime)

    def _retire(self, conn: Any, now: float, why: str = "max_lifetime") -> None:
        """Close ``conn``, which must not carry another request (counted as retired)."""
        if events.isEnabledFor(logging.DEBUG):  # (before the close forgets its address)
            _event("retired", conn, age_s=round(now - conn.connected_at, 3), why=why)
        conn.close()
        self.stats.retired_one()

    def _validate_conn(self, conn: Any) -> None:
        # Right before the send (and the connect, if there is one), both of which urllib3
        # times with the connect timeout it has just set.
        conn.timeout = retry.bounded(conn.timeout)
        super()._validate_conn(conn)

    # urllib3's signatures, spelled out rather than taken as ``*args, **kwargs``: this is
    # every request's path, and packing and unpacking a dozen keywords twice per call (here
    # and in ``urlopen``) cost 2 % of a request's instructions (callgrind).
    def _make_request(
        self, conn: Any, method: str, url: str, body: Any = None, headers: Any = None,
        retries: Any = None, timeout: Any = _DEFAULT_TIMEOUT, chunked: bool = False,
        response_conn: Any = None, preload_content: bool = True, decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> BaseHTTPResponse:
        # One attempt. (retry.remaining(), with the one clock read of the attempt.)
        started = time.monotonic()
        end = retry.deadline_end()
        if end is not None and end <= started:  # nothing is sent once the deadline has passed
            self.stats.failed("deadline")
            raise retry.DeadlineExceededError(self, url)
        # A connection with an open socket has carried a request before: pools never
        # pre-connect.
        reused = not conn.is_closed
        sent = getattr(conn, "requests_sent", 0) + 1  # a connection the pool did not make
        if reused and events.isEnabledFor(logging.DEBUG):
            _event("reused", conn, requests=sent,
                   idle_s=round(time.monotonic() - getattr(conn, "idle_since", 0.0), 3))
        conn.requests_sent = sent
        call = retry.current_call.get()
        if call is not None:  # call.attempt(), a frame less (keep the two alike)
            clock = call._policy._clock
            call._last = started if clock is _monotonic else clock()
            call._max_gap = 0.0
            call._started = call._waiting = True
            if call._judged:  # a retry: the last attempt's verdict is in
                call._responded = call._judged = call._failed = call._success = False
            call.on_abort = conn  # its __call__ is abort_stalled: no bound method to make
            conn.call = call
        try:
            response = super()._make_request(conn, method, url, body, headers, retries,
                                             timeout, chunked, response_conn,
                                             preload_content, decode_content,
                                             enforce_content_length)
        except BaseException as exc:
            if call is not None and call.stalled:  # the watchdog shut its socket down
                call.failed(Outcome.STALLED)
                self.stats.failed("timeout")
                stalled = call.stall_error()
                assert stalled is not None
                raise StalledReadTimeoutError(self, url, stalled) from exc
            stale = reused and isinstance(exc, _NO_RESPONSE)
            if not (stale and _replayable(method, body) and _retries_allowed(retries)):
                self.stats.failed(error_kind(exc))
                if call is not None:
                    # A reused connection that died unanswered is most likely one the
                    # upstream closed while idle: not a verdict on the upstream.
                    call.failed(Outcome.OTHER if stale else outcome(exc))
                raise
            # The upstream closed the connection without a byte of answer: most often it
            # timed the connection out while idle, but it may have seen the request, so
            # only a method that may be repeated is sent again (retry module, rule 2), and
            # only within the origin's retry budget.
            if call is not None:
                try:
                    call.retry(RetryReason.STALE, exc)
                except RefusedError:
                    self.stats.failed(error_kind(exc))
                    call.failed(Outcome.OTHER)
                    raise exc from None
            if events.isEnabledFor(logging.DEBUG):
                _event("retried", conn, error=type(exc).__name__, method=method)
            self.stats.retried_one()
            conn.close()
        else:
            if call is not None and not call._judged:  # a connection class's own response
                call.response(response.status)
            return response
        finally:
            self.stats.attempted(reused, time.monotonic() - started)
        # Once more, on the same connection, which urllib3 now reconnects: no longer reused,
        # so it is never sent a third time.
        return self._make_request(conn, method, url, body, headers, retries, timeout, chunked,
                                  response_conn, preload_content, decode_content,
                                  enforce_content_length)

    def urlopen(  # type: ignore[override]  # urllib3's own signature
        self, method: str, url: str, body: Any = None, headers: Any = None,
        retries: Any = None, redirect: bool = True, assert_same_host: bool = True,
        timeout: Any = _DEFAULT_TIMEOUT, pool_timeout: Any = None, release_conn: Any = None,
        chunked: bool = False, body_pos: Any = None, preload_content: bool = True,
        decode_content: bool = True, **response_kw: Any,
    ) -> BaseHTTPResponse:
        loopcheck.check(self)  # a sync call on an event loop's thread: POOLCLIENT_LOOP_CALLS
        # Every attempt, retries and redirects included, comes through here: start the
        # deadline if the caller did not, and after a retry's backoff give up if it passed.
        # (begin and end, not ``with retry.deadline``: see there.)
        now = time.monotonic()  # (one clock read for the deadline's check and the policy)
        end = retry.deadline_end()
        left = None if end is None else end - now
        started = retry.begin(self.deadline) if left is None else None
        call = token = None
        try:
            policy = self.policy
            if policy is not None:
                current = retry.current_call.get()
                if current is None or current._policy is not policy or current._done:
                    # A new call: admitted, or refused before any pool wait or socket.
                    routes = self._routes
                    route = routes.get((method, url)) if routes is not None else None
                    try:
                        call = policy.admit(route or self._route(method, url), None,
                                            now if policy._clock is _monotonic else None)
                    except RefusedError as exc:
                        self.stats.refused(exc.reason.value)  # told to the request's span
                        raise
                    token = retry.current_call.set(call)
                elif current.stalled:  # urllib3 retrying a stalled call: never resent
                    stalled = current.stall_error()
                    assert stalled is not None
                    raise StalledReadTimeoutError(self, url, stalled)
            if left is not None and left <= 0:
                history = getattr(retries, "history", ())
                last = history[-1].error if history else None
                raise retry.DeadlineExceededError(self, url, last)
            try:
                # No local for the response: a retry's error keeps this frame alive in its
                # traceback (the response's Retry.history holds it), and a local there would
                # keep the response, and its socket, until the garbage collector ran.
                return self._streaming(super().urlopen(
                    method, url, body, headers, retries, redirect, assert_same_host, timeout,
                    pool_timeout, release_conn, chunked, body_pos, preload_content,
                    decode_content, **response_kw))
            except (Urllib3TimeoutError, EmptyPoolError, MaxRetryError) as exc:
                # A timeout or a pool wait that the deadline cut short is the deadline's.
                left = retry.remaining()
                if (isinstance(exc, retry.DeadlineExceededError) or left is None
                        or left > _DEADLINE_SLACK):
                    raise
                cause = exc.reason if isinstance(exc, MaxRetryError) else exc
                raise retry.DeadlineExceededError(self, url, cause) from exc
        except BaseException:
            if call is not None:
                if not call._done:  # call.done(), a frame less: this is every request's path
                    call._done = True
                    call._policy._done(call)
            raise
        finally:
            if token is not None:
                retry.current_call.reset(token)
            if started is not None:
                retry.end(started)

    def _route(self, method: str, url: str) -> str:
        """The stall detector's route of a call (method and path shape), remembered."""
        routes = self._routes
        if routes is None:
            routes = self._routes = {}
        key = (method, url)
        found = routes.get(key)
        if found is None:
            if len(routes) >= 256:  # ids in paths and queries: bounded
                routes.clear()
            found = routes[key] = route_key(method, url)
        return found

    def _streaming(self, response: BaseHTTPResponse) -> BaseHTTPResponse:
        conn = getattr(response, "_connection", None)  # not released: the body is to read
        if conn is not None and not getattr(conn, "streaming", False):  # (a retry's too)
            conn.streaming = True
            self.stats.streamed()
        return response

    def snapshot(self) -> PoolSnapshot:
        """This pool's counters now; ``idle`` is read from the queue itself."""
        return self.stats.snapshot(str(self.scheme), self.host, int(self.port or 0))


class CountedHTTPConnectionPool(CountedPool, HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections, waits and requests are counted."""

    ConnectionCls = _CountedHTTPConnection


class CountedHTTPSConnectionPool(CountedPool, ResumingPool, HTTPSConnectionPool):
    """An ``HTTPSConnectionPool`` whose connections, waits and requests are counted, and
    which reconnects with one ``SSLContext`` and the last TLS session (see :mod:`.tls`)."""

    ConnectionCls = _CountedHTTPSConnection


def error_kind(exc: BaseException) -> str:
    """The ``kind`` label of a failed attempt."""
    if isinstance(exc, retry.DeadlineExceededError):
        return "deadline"
    if isinstance(exc, (ConnectTimeoutError, ConnectionRefusedError)):  # NewConnectionError too
        return "timeout" if type(exc) is ConnectTimeoutError else "connect"
    if isinstance(exc, (SSLError, ssl.SSLError, CertificateError)):
        return "tls"
    if isinstance(exc, (Urllib3TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, (ProtocolError, http.client.HTTPException, OSError)):
        return "protocol"
    return "other"


# What may be read of an unread body's end without waiting for it: an SSE stream's last
# chunk and terminator have usually arrived with its last event, or a few ms after it.
_REST_BYTES = 65536
_REST_WAIT = 0.005


def _rest_arrived(response: BaseHTTPResponse) -> bool:
    """Read the rest of ``response``'s body if it is short and there already (or within
    ``_REST_WAIT``); whether it was, and urllib3 took the connection back."""
    conn = response.connection
    sock = getattr(conn, "sock", None)
    if sock is None:
        return False
    sock.settimeout(_REST_WAIT)  # the next request on it sets its own timeouts
    left = _REST_BYTES
    try:
        while left > 0:
            data = response.read1(left, decode_content=False)
            if not data:
                return response.connection is None
            left -= len(data)
    except Exception:  # noqa: BLE001 - any failure means: not there, close it
        return False
    return False


def _retries_allowed(retries: object) -> bool:
    # retries=False and retries=0 (requests' own default) mean: send once, whatever happens.
    total = getattr(retries, "total", None)
    return total is None or (total is not False and total > 0)


def _replayable(method: str, body: object) -> bool:
    return method.upper() in retry.IDEMPOTENT_METHODS and (
        body is None or isinstance(body, (bytes, str)))


def _event(name: str, conn: Any, **fields: object) -> None:
    """One logfmt line: ``event=opened origin=https://host:443 conn=1a2b handshake_ms=3.1``."""
    scheme = "https" if getattr(conn, "default_port", 80) == 443 else "http"
    extra = " ".join(f"{key}={value}" for key, value in fields.items())
    events.debug("event=%s origin=%s://%s:%s conn=%x %s", name, scheme,
                 getattr(conn, "host", "?"), getattr(conn, "port", "?"), id(conn) & 0xFFFFFF,
                 extra)


def _public_name(cls: type[Any]) -> str:
    """The name urllib3's messages give an object of ``cls``: its nearest class that is
    not poolclient's (``HTTPSConnectionPool``, ``HTTPSConnection``, a subclass's own)."""
    return next(c.__name__ for c in cls.__mro__ if not c.__module__.startswith("poolclient."))


def _origin(pool: HTTPConnectionPool) -> str:
    return f"{pool.scheme}://{pool.host}:{pool.port}"
