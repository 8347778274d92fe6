"""One origin's policy in one process: breaker, bulkhead, retry budget, stall detection and
addresses behind one lock, and :class:`Call`, the handle a pool keeps for one call.

Pure logic: a clock (``time.monotonic``) and a random source are injected, and nothing here
does I/O. The sync pools (threads) and the async pools (tasks) call it alike; its lock is
a ``threading.Lock`` held only for a few dictionary and arithmetic steps, with nothing
awaited or called out under it, so a task may take it without blocking its loop for long.
What leaves the policy (transitions, refusals, retries, ejections, resolutions, stalls)
goes to an optional :class:`PolicySink` after the lock is released, as
:mod:`poolclient.stats` hands its batches over: counting stays out of the logic. A breaker
that opens or closes logs a WARNING on the ``poolclient`` logger, naming the origin.
"""

from __future__ import annotations

import logging
import math
import random as _random
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from .addresses import AddressSet, AddressState
from .breaker import Breaker, BreakerState
from .budget import RetryBudget
from .call import Call
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    RefusedError,
    RetryBudgetExhaustedError,
)
from .outcomes import Outcome, Refusal, RetryReason
from .settings import PolicySettings
from .snapshot import AddressSnapshot, BreakerSnapshot, BudgetSnapshot, PolicySnapshot
from .stall import Latencies

log = logging.getLogger("poolclient")
_CLOSED = BreakerState.CLOSED

# Seconds an origin stays degraded (its calls limited by the bulkhead) after a stall: long
# enough to cover the breaker's reaction, short enough that a blip is soon forgotten.
STALL_MEMORY = 10.0


class PolicySink(Protocol):
    """Where one origin's policy events go (the Prometheus metrics); one sink per origin."""

    def transition(self, state: str) -> None: ...  # closed, open, half_open
    def refused(self, reason: str) -> None: ...  # open, overflow, budget
    def retried(self, reason: str) -> None: ...  # connect, other_address, stale
    def ejected(self) -> None: ...
    def refreshed(self, result: str) -> None: ...  # success, empty, failure
    def stalled(self) -> None: ...


class OriginPolicy:
    """Every protection of one origin in one process; see the package docstring.

    :param origin: ``"https://host:port"``, as errors and logs name it.
    :param concurrency: the worker's concurrency (its threads; the pool size for async),
        of which a degraded origin may hold ``bulkhead_share``.
    :param read_timeout: the pools' read timeout, under which the stall limit is capped
        (a call may bring its own to :meth:`admit`).
    """

    def __init__(self, origin: str, settings: PolicySettings, *, concurrency: int,
                 read_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[], float] = _random.random,
                 sink: PolicySink | None = None) -> None:
        self.origin = origin
        self.settings = settings
        self.read_timeout = read_timeout
        # Floor of the share, at least one call; the epsilon keeps 0.3 x 10 at 3.
        self.limit = max(1, math.floor(settings.bulkhead_share * concurrency + 1e-9))
        # Calls in flight under which admit() need not look further (no bulkhead: any).
        self._fast_limit = self.limit if settings.bulkhead else math.inf
        self.sink = sink
        #: Resolve the origin's name now, on this thread, and report it here: set by the
        #: holder that knows how (``Origins``), called by a pool that has no address yet.
        self.resolve: Callable[[], None] | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._breaker = Breaker(settings, random) if settings.breaker else None
        self._budget = RetryBudget(settings) if settings.retry_budget else None
        self._latencies = Latencies(settings) if settings.stall_detection else None
        self._addresses = AddressSet(settings, random) if settings.balance else None
        self._in_flight: set[Call] = set()
        self._degraded_until = -math.inf
        self._stalled = 0
        self._refused = dict.fromkeys(Refusal, 0)
        self._retried = dict.fromkeys(RetryReason, 0)
        self._budget_refused = dict.fromkeys(RetryReason, 0)

    def __repr__(self) -> str:
        now = self._clock()
        with self._lock:
            breaker = "off" if self._breaker is None else self._breaker.state.value
            if self._breaker is not None and self._breaker.state is BreakerState.OPEN:
                breaker += f" {self._breaker.open_for(now):.1f} s"
            flight = f"in flight {len(self._in_flight)}/{self.limit}"
            if self._degraded(now):
                flight += " degraded"
            parts = [f"breaker {breaker}", flight]
            if self._budget is not None:
                retries = self._budget.totals(now)[1]
                parts.append(f"retries {retries}/{self._budget.allowed(now):g}")
            if self._addresses is not None:
                states = [a.state(now) for a in self._addresses.all()]
                parts.append(f"addresses {states.count(AddressState.LIVE)} live, "
                             f"{states.count(AddressState.EJECTED)} ejected, "
                             f"{states.count(AddressState.GONE)} gone")
        return f"<OriginPolicy {self.origin} [{' | '.join(parts)}]>"

    # --- admission ---------------------------------------------------------------------

    def admit(self, route: str = "", read_timeout: float | None = None,
              now: float | None = None) -> Call:
        """A call to this origin wants to start: its :class:`Call`, or a
        :class:`CircuitOpenError` / :class:`BulkheadFullError`, raised before any pool
        wait. ``route`` (:func:`~.stall.route_key`) groups calls for stall detection;
        ``now``: the policy's clock, if the caller has just read it (a read less)."""
        call = Call(self, route, read_timeout)
        if now is None:
            now = self._clock()
        breaker = self._breaker
        # The common case, kept short (every request passes here; callgrind counts it):
        # breaker closed, under the bulkhead's limit. acquire/release rather than ``with``,
        # half the instructions; nothing between them can raise.
        lock = self._lock
        lock.acquire()
        if ((breaker is None or breaker.state is _CLOSED)
                and len(self._in_flight) < self._fast_limit):
            self._in_flight.add(call)
            if self._budget is not None:  # budget.first(now), two frames less
                window = self._budget.window
                if window._from <= now < window._until:
                    window._current[0] += 1
                else:
                    window.add(now, 0)
            lock.release()
            return call
        lock.release()
        return self._admit_slowly(call, now)

    def _admit_slowly(self, call: Call, now: float) -> Call:
        changed = None
        refusal: RefusedError | None = None
        with self._lock:
            breaker = self._breaker
            over = (self.settings.bulkhead and len(self._in_flight) >= self.limit
                    and self._degraded(now))
            if breaker is not None and breaker.state is not BreakerState.CLOSED:
                admitted, changed = breaker.admit(now, call)
                if not admitted:
                    last = breaker.last_failure
                    probing = breaker.state is BreakerState.HALF_OPEN
                    refusal = CircuitOpenError(
                        self.origin, breaker.open_until,
                        1.0 if probing else breaker.open_for(now),
                        None if last is None else last.value, probing)
                elif over:  # calls from before the open still hold the share: no probe yet
                    breaker.release(call)
            if refusal is None and over:
                refusal = BulkheadFullError(self.origin, len(self._in_flight), self.limit)
            if refusal is None:
                self._in_flight.add(call)
                if self._budget is not None:
                    self._budget.first(now)
            else:
                self._refused[refusal.reason] += 1
        if changed is not None:
            self._report(changed, "", 0.0, None)
        if refusal is not None:
            if self.sink is not None:
                self.sink.refused(refusal.reason.value)
            raise refusal
        return call

    def _degraded(self, now: float) -> bool:
        breaker = self._breaker
        return ((breaker is not None and breaker.state is not BreakerState.CLOSED)
                or now < self._degraded_until)

    def _judge(self, call: Call, outcome: Outcome) -> None:
        breaker = self._breaker
        if breaker is None:
            return
        now = self._clock()
        with self._lock:
            changed = breaker.record(now, outcome, call)
            reason, open_for, last = breaker.reason, breaker.open_for(now), breaker.last_failure
        if changed is not None:
            self._report(changed, reason, open_for, last)

    def _retry(self, call: Call, reason: RetryReason, last_error: BaseException | None) -> None:
        allowed = True
        with self._lock:
            if self._budget is not None:
                allowed = self._budget.withdraw(self._clock())
            if allowed:
                self._retried[reason] += 1
            else:
                self._refused[Refusal.BUDGET] += 1
                self._budget_refused[reason] += 1
        if self.sink is not None:
            if allowed:
                self.sink.retried(reason.value)
            else:
                self.sink.refused(Refusal.BUDGET.value)
        if not allowed:
            raise RetryBudgetExhaustedError(self.origin, reason, last_error) from last_error

    def _done(self, call: Call) -> None:
        changed = None
        breaker = self._breaker
        # (every request: see admit. acquire, try and release, cheaper than ``with``.)
        lock = self._lock
        lock.acquire()
        try:
            self._in_flight.discard(call)
            if breaker is not None:
                if call._success:  # its response's verdict, deferred to here (Call.response)
                    if breaker.state is _CLOSED:  # breaker.succeeded(), two frames less
                        breaker.consecutive = 0
                        window, now = breaker.window, call._last
                        if window._from <= now < window._until:
                            window._current[0] += 1
                        else:
                            window.add(now, 0)
                    else:
                        changed = breaker.succeeded(call._last, call)
                if breaker.probe is call:  # a probe gone without a verdict frees its slot
                    breaker.probe = None
            latencies = self._latencies
            if (latencies is not None and call._responded and not call._failed
                    and not call.stalled):
                latencies.add(call.route, call._max_gap)
        finally:
            lock.release()
        if changed is not None:
            self._report(changed, "", 0.0, None)

    def _report(self, state: BreakerState, reason: str, open_for: float,
                last: Outcome | None) -> None:
        if state is BreakerState.OPEN:
            after = f", last {last.value}" if last is not None else ""
            log.warning("circuit breaker for %s opened: %s%s; calls refused for %.1f s",
                        self.origin, reason, after, open_for)
        elif state is BreakerState.CLOSED:
            log.warning("circuit breaker for %s closed: its probe succeeded", self.origin)
        else:
            log.info("circuit breaker for %s half-open: one call probes", self.origin)
        if self.sink is not None:
            self.sink.transition(state.value)

    # --- stalls -----------------------------------------------------------------------

    def sweep(self) -> list[Call]:
        """The calls in flight that have waited on the upstream longer than their route's
        stall limit, each returned once: the pool shuts their sockets down (``on_abort``),
        their read fails, and :meth:`Call.failed` counts :attr:`Outcome.STALLED`. Call it
        every fraction of a second while calls are in flight (a watchdog thread for the
        sync pools, a task for the async ones); the origin is then degraded for
        :data:`STALL_MEMORY` seconds."""
        latencies = self._latencies
        if latencies is None or not self._in_flight:
            return []
        now = self._clock()
        found: list[Call] = []
        with self._lock:
            floor = self.settings.stall_floor
            for call in self._in_flight:
                if not call._waiting or call.stalled:
                    continue
                waited = now - call._last
                if waited < floor:
                    continue
                limit = latencies.limit(call.route, self.read_timeout
                                        if call.read_timeout is None else call.read_timeout)
                if limit is not None and waited >= limit:
                    call.stalled = True
                    call._stall = (waited, limit)
                    found.append(call)
            if found:
                self._stalled += len(found)
                self._degraded_until = now + STALL_MEMORY
        for call in found:
            waited, limit = call._stall
            log.warning("call to %s (%s) stalled: no progress for %.1f s, limit %.1f s; "
                        "aborting it", self.origin, call.route or "-", waited, limit)
            if self.sink is not None:
                self.sink.stalled()
        return found

    # --- addresses --------------------------------------------------------------------

    def start_refresh(self, background: bool = False) -> bool:
        """Whether the caller should resolve the origin's name now; only one caller is told
        so until it reports :meth:`resolved` or :meth:`resolve_failed`. ``background`` (the
        watchdog): only while the origin has connections."""
        if self._addresses is None:
            return False
        with self._lock:
            return self._addresses.start_refresh(self._clock(), background)

    def refresh_due(self) -> bool:
        """Whether a resolution is due (and none under way)."""
        if self._addresses is None:
            return False
        with self._lock:
            return self._addresses.refresh_due(self._clock())

    def resolved(self, addresses: Iterable[str]) -> tuple[str, ...]:
        """Record the name's addresses; the ones now gone (close their idle connections)."""
        if self._addresses is None:
            return ()
        with self._lock:
            before = self._addresses.refreshes
            gone = self._addresses.resolved(self._clock(), addresses)
            result = "success" if self._addresses.refreshes > before else "empty"
        if self.sink is not None:
            self.sink.refreshed(result)
        return gone

    def resolve_failed(self) -> None:
        """Resolution failed: the last good addresses stay."""
        if self._addresses is None:
            return
        with self._lock:
            self._addresses.resolve_failed(self._clock())
        if self.sink is not None:
            self.sink.refreshed("failure")

    @property
    def resolving(self) -> bool:
        """Whether a resolution of the origin's name is under way."""
        return self._addresses is not None and self._addresses.refreshing

    @property
    def balancing(self) -> bool:
        """Whether this policy chooses the addresses of new connections."""
        return self._addresses is not None

    def candidates(self, tried: Collection[str] = ()) -> list[str]:
        """Addresses for a new connection, best first (``[]``: balancing off or nothing
        resolved; the pool connects as urllib3 would)."""
        if self._addresses is None:
            return []
        with self._lock:
            return self._addresses.candidates(self._clock(), tried)

    def usable(self, address: str) -> bool:
        """Whether an idle connection to ``address`` may be reused (not gone, not ejected)."""
        if self._addresses is None:
            return True
        with self._lock:
            return self._addresses.usable(self._clock(), address)

    def connecting(self, address: str) -> None:
        """A connect to ``address`` begins (counted, so concurrent connects spread)."""
        if self._addresses is not None:
            with self._lock:
                self._addresses.connecting(address)

    def connected(self, address: str) -> None:
        if self._addresses is not None:
            with self._lock:
                self._addresses.connected(address)

    def connect_abandoned(self, address: str) -> None:
        """A connect to ``address`` was given up (cancelled), through no fault of its own."""
        if self._addresses is not None:
            with self._lock:
                self._addresses.connect_abandoned(address)

    def disconnected(self, address: str) -> None:
        """A connection to ``address`` closed (for any reason)."""
        if self._addresses is not None:
            with self._lock:
                self._addresses.disconnected(address)

    def connect_failed(self, address: str) -> None:
        if self._addresses is None:
            return
        now = self._clock()
        with self._lock:
            until = self._addresses.connect_failed(now, address)
        if until is not None:
            log.info("address %s of %s ejected for %.1f s after failed connects",
                     address, self.origin, until - now)
            if self.sink is not None:
                self.sink.ejected()

    # --- for /health -------------------------------------------------------------------

    def snapshot(self) -> PolicySnapshot:
        """The policy now, under its lock."""
        now = self._clock()
        with self._lock:
            b = self._breaker
            breaker = None
            if b is not None:
                calls, failures = b.window_totals(now)
                breaker = BreakerSnapshot(
                    state=b.state.value, open_for=round(b.open_for(now), 3), reason=b.reason,
                    last_failure=None if b.last_failure is None else b.last_failure.value,
                    consecutive_failures=b.consecutive, window_calls=calls,
                    window_failures=failures, opens=b.opens)
            budget = None
            if self._budget is not None:
                firsts, retries = self._budget.totals(now)
                budget = BudgetSnapshot(
                    first_attempts=firsts, retries=retries,
                    allowed=round(self._budget.allowed(now), 3),
                    retried={r.value: n for r, n in self._retried.items()},
                    refused={r.value: n for r, n in self._budget_refused.items()})
            addresses: tuple[AddressSnapshot, ...] = ()
            age = None
            if self._addresses is not None:
                addresses = tuple(
                    AddressSnapshot(address=a.address, state=a.state(now).value,
                                    connections=a.connections, failures=a.failures,
                                    ejected_for=round(max(0.0, a.ejected_until - now), 3),
                                    ejections=a.ejections)
                    for a in self._addresses.all())
                if self._addresses.resolved_at is not None:
                    age = round(now - self._addresses.resolved_at, 3)
            return PolicySnapshot(
                origin=self.origin, breaker=breaker, in_flight=len(self._in_flight),
                limit=self.limit if self.settings.bulkhead else None,
                degraded=self._degraded(now), stalled=self._stalled,
                refused={r.value: n for r, n in self._refused.items()}, budget=budget,
                addresses=addresses, resolved_age=age,
                routes={} if self._latencies is None else self._latencies.routes())
