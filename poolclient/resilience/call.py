"""The handle a pool keeps for one call, from :meth:`OriginPolicy.admit` to :meth:`Call.done`.

Its times are written by the thread or task making the call, without the policy's lock
(one writer), and read by :meth:`OriginPolicy.sweep`; a float attribute is read whole, so
the sweeper sees either the old wait or the new one, never a torn value.

Every call of every request passes here, so the common path is kept short (callgrind
counts it in ``make bench``): state lives in class defaults and only what changes is
written, and a success while the breaker is closed is recorded when the call is done,
under the one lock :meth:`done` takes anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from .addresses import connect_share
from .breaker import BreakerState
from .errors import StalledError
from .outcomes import Outcome, RetryReason

_SUCCESS = Outcome.SUCCESS
_CLOSED = BreakerState.CLOSED
_GATEWAY = (502, 503, 504)

if TYPE_CHECKING:
    from .policy import OriginPolicy


class Call:
    """One admitted call, from :meth:`OriginPolicy.admit` to :meth:`done`, retries included.

    Written by the thread or task making the call, without the lock (one writer); the
    sweeper reads its times. ``on_abort`` is the pool's: what shuts this call's socket down
    when :meth:`OriginPolicy.sweep` finds it stalled (the policy never calls it).
    """

    # Defaults at class level (no __slots__): a call writes only what changes.
    on_abort: Callable[[], None] | None = None
    stalled = False
    _stall = (0.0, 0.0)  # waited, limit: when the sweeper found it stalled
    _started = False  # an attempt is under way
    _waiting = False  # on the upstream (connect, send, status line, a read)
    _last = 0.0  # when the current wait began
    _max_gap = 0.0  # this attempt's longest wait
    _responded = False
    _judged = False  # this attempt's verdict is in
    _success = False  # a success to record when done (the breaker was closed)
    _failed = False
    _done = False
    _tried: list[str] | None = None

    read_timeout: float | None = None  # its own, if it brought one (else the policy's)

    def __init__(self, policy: OriginPolicy, route: str,
                 read_timeout: float | None = None) -> None:
        self._policy = policy
        self.route = route
        if read_timeout is not None:
            self.read_timeout = read_timeout

    @property
    def tried(self) -> list[str]:
        """Addresses connected to or tried, in order."""
        if self._tried is None:
            self._tried = []
        return self._tried

    def __repr__(self) -> str:
        state = ("stalled" if self.stalled else "done" if self._done
                 else "waiting" if self._waiting else "running" if self._started else "queued")
        return f"<Call {self._policy.origin} {self.route or '-'} {state}>"

    @property
    def policy(self) -> OriginPolicy:
        """The origin's policy that admitted it."""
        return self._policy

    @property
    def finished(self) -> bool:
        """Whether :meth:`done` was called."""
        return self._done

    def __enter__(self) -> Call:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.done()

    # --- attempts ----------------------------------------------------------------------

    def attempt(self) -> None:
        """An attempt begins (the first, or a retry once :meth:`retry` allowed it): the
        connection is checked out and about to connect or send."""
        self._last = self._policy._clock()
        self._max_gap = 0.0
        self._started = self._waiting = True
        if self._judged:  # a retry: the last attempt's verdict is in
            self._responded = self._judged = self._failed = self._success = False

    def response(self, status: int) -> Outcome:
        """The status line arrived: the attempt's verdict (502, 503, 504 fail)."""
        policy = self._policy
        now = policy._clock()
        gap = now - self._last
        if gap > self._max_gap:
            self._max_gap = gap
        self._last = now
        self._waiting = False
        self._responded = True
        outcome = Outcome.GATEWAY_ERROR if status in _GATEWAY else _SUCCESS
        if not self._judged:
            self._judged = True
            breaker = policy._breaker
            if outcome is _SUCCESS and (breaker is None or breaker.state is _CLOSED):
                self._success = True  # counted by done(), under its lock
            else:
                policy._judge(self, outcome)
        return outcome

    def reading(self) -> None:
        """The pool starts waiting on the upstream for body bytes. Time between reads is the
        caller's (a slow consumer), so only a wait begun here can become a stall."""
        self._last = self._policy._clock()
        self._waiting = True

    def progress(self) -> None:
        """Bytes arrived (or were sent): the wait begun by :meth:`attempt` or :meth:`reading`
        ends, its length one more sample of how long this route waits."""
        now = self._policy._clock()
        gap = now - self._last
        if gap > self._max_gap:
            self._max_gap = gap
        self._last = now
        self._waiting = False

    def failed(self, outcome: Outcome) -> Outcome:
        """The attempt failed with ``outcome`` (from the pool's exception mapping); returns
        what was counted: :attr:`Outcome.STALLED` if the sweeper aborted it. Before the
        status line it is the attempt's verdict; after, the verdict is in already."""
        if self.stalled:
            outcome = Outcome.STALLED
        self._success = False
        self._failed = True
        self._waiting = False
        if not self._judged:
            self._judged = True
            self._policy._judge(self, outcome)
        return outcome

    def retry(self, reason: RetryReason, last_error: BaseException | None = None) -> None:
        """Ask to send the request again; raises :class:`RetryBudgetExhaustedError` (from
        ``last_error``) when the budget is spent. A stalled call is never retried."""
        self._policy._retry(self, reason, last_error)

    def stall_error(self) -> StalledError | None:
        """What the pool raises for a call the sweeper aborted (``None`` if it was not)."""
        if not self.stalled:
            return None
        waited, limit = self._stall
        return StalledError(self._policy.origin, waited, limit)

    # --- addresses --------------------------------------------------------------------

    def candidates(self) -> list[str]:
        """Addresses for a new connection, best first, those this call tried last."""
        return self._policy.candidates(self.tried)

    def connect_attempts(self, timeout: float | None) -> Iterator[tuple[str, float | None]]:
        """Where a new connection tries to connect: ``(address, its connect timeout)``, up to
        three addresses, each given its share of what is left of ``timeout``
        (:func:`connect_share`). The pool connects to each in turn, reports
        :meth:`connected` or :meth:`connect_failed` (:meth:`connect_abandoned` if it was
        cancelled), and stops at the first that connects. Each address is counted as
        connecting from when it is handed out, so concurrent connects spread.

        Moving to the next address is a retry: it asks the budget first, and raises
        :class:`RetryBudgetExhaustedError` when it is spent (the pool then raises the last
        connect error instead). Nothing at all when nothing is resolved: the pool connects
        as urllib3 does. The shares run on the real clock, as the sockets' timeouts do."""
        addresses = self.candidates()
        started = time.monotonic()
        for index, address in enumerate(addresses):
            share = timeout
            if timeout is not None:
                left = timeout - (time.monotonic() - started)
                if index and left <= 0:
                    return
                share = connect_share(left, len(addresses) - index)
            if index:
                self.retry(RetryReason.OTHER_ADDRESS)
            self._policy.connecting(address)
            yield address, share

    def connected(self, address: str) -> None:
        """A new connection to ``address`` is open (the pool reports its close to
        :meth:`OriginPolicy.disconnected`)."""
        self.tried.append(address)
        self._policy.connected(address)

    def connect_failed(self, address: str) -> None:
        """Connecting to ``address`` failed (refused, timed out, TLS)."""
        self.tried.append(address)
        self._policy.connect_failed(address)

    def connect_abandoned(self, address: str) -> None:
        """Connecting to ``address`` was cancelled (no fault of the address's)."""
        self._policy.connect_abandoned(address)

    def done(self) -> None:
        """The call is over (answered and released, or failed for good). Idempotent.
        (The sync pool does this itself, a frame less: keep the two alike.)"""
        if not self._done:
            self._done = True
            self._policy._done(self)
