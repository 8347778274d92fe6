"""One origin's circuit breaker: closed, open, half-open.

- **Closed**: every attempt's verdict is counted. ``failures`` in a row, or a failure
  rate of at least ``failure_rate`` over the window once it holds ``min_calls``, opens it
  (Finagle's default policy is the same pair of rules).
- **Open** for ``open`` seconds the first time, twice as long after each failed probe, up to
  ``open_max``; each time shortened at random by up to :data:`OPEN_JITTER`, so the workers
  of a pod, which all opened within the same second, do not all probe at the same moment.
  Calls are refused.
- **Half-open**, entered lazily by the first call after the open time: that call is the
  probe, and the only one admitted until it has a verdict. Success closes the breaker
  (and resets the growing open time); failure re-opens it. A probe that leaves without a
  verdict (cancelled, refused by the pool) frees the slot for the next caller, and one that
  never reports is replaced after ``open_max`` (resilience4j #903: a half-open breaker
  stuck for good).

Verdicts of calls admitted before the breaker opened, reaching it while it is open or
half-open, are ignored: they say nothing about the origin since.

No lock and no clock here: :class:`~poolclient.resilience.policy.OriginPolicy` calls it
under its lock with ``now``. Methods that change the state return the new state, for the
policy to report after releasing the lock.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .outcomes import Outcome
from .settings import PolicySettings
from .window import Window

# Each open time is drawn from [(1 - OPEN_JITTER) x d, d]: never longer than documented.
OPEN_JITTER = 0.25

_CALLS, _FAILURES = 0, 1


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    """The state machine; see the module docstring."""

    def __init__(self, settings: PolicySettings, random: Callable[[], float]) -> None:
        self.settings = settings
        self._random = random
        self.state = BreakerState.CLOSED
        self.open_until = 0.0
        self.consecutive = 0  # failures in a row, while closed
        self.reopens = 0  # opens since the last close: the next open time's exponent
        self.opens = 0  # in all
        self.reason = ""  # why it last opened
        self.last_failure: Outcome | None = None
        self.probe: object | None = None
        self._probe_since = 0.0
        self.window = Window(settings.breaker_window)

    def __repr__(self) -> str:
        return f"<Breaker {self.state.value} consecutive={self.consecutive} opens={self.opens}>"

    def admit(self, now: float, call: object) -> tuple[bool, BreakerState | None]:
        """Whether ``call`` may go (making it the probe when half-open), and the state it
        moved to, if it moved. Only called when the breaker is not closed."""
        changed = None
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return False, None
            self.state = changed = BreakerState.HALF_OPEN
            self.probe = None
        if self.probe is None or now - self._probe_since >= self.settings.breaker_open_max:
            self.probe = call
            self._probe_since = now
            return True, changed
        return False, changed

    def record(self, now: float, outcome: Outcome, call: object) -> BreakerState | None:
        """Count ``call``'s verdict; the new state if it moved."""
        failure = outcome.failure
        if self.state is BreakerState.CLOSED:
            if not failure:
                if outcome is Outcome.SUCCESS:
                    self.consecutive = 0
                    self.window.add(now, _CALLS)
                return None
            self.last_failure = outcome
            self.consecutive += 1
            self.window.add(now, _CALLS)
            self.window.add(now, _FAILURES)
            s = self.settings
            if self.consecutive >= s.breaker_failures:
                return self._open(now, f"{self.consecutive} failures in a row")
            calls, failures = self.window.totals(now)
            if calls >= s.breaker_min_calls and failures >= s.breaker_failure_rate * calls:
                return self._open(now, f"{failures} of {calls} calls failed in "
                                       f"{s.breaker_window:g} s")
            return None
        if call is not self.probe:
            return None
        self.probe = None
        if failure:
            self.last_failure = outcome
            return self._open(now, "the probe failed")
        if outcome is Outcome.SUCCESS:
            return self._close()
        return None  # no verdict (cancelled, deadline): the next caller probes

    def succeeded(self, now: float, call: object) -> BreakerState | None:
        """``call`` succeeded: :meth:`record` of a success, its common case (closed) short."""
        if self.state is BreakerState.CLOSED:
            self.consecutive = 0
            self.window.add(now, _CALLS)
            return None
        return self.record(now, Outcome.SUCCESS, call)

    def release(self, call: object) -> None:
        """``call`` is done: if it was the probe and gave no verdict, free the slot."""
        if call is self.probe:
            self.probe = None

    def open_for(self, now: float) -> float:
        """Seconds left before it half-opens (0 unless open)."""
        return max(0.0, self.open_until - now) if self.state is BreakerState.OPEN else 0.0

    def window_totals(self, now: float) -> tuple[int, int]:
        """Calls and failures in the window (while closed; emptied on every transition)."""
        calls, failures = self.window.totals(now)
        return calls, failures

    def _open(self, now: float, reason: str) -> BreakerState:
        s = self.settings
        # Capped exponent: past 2**30 the float is pointless and the cap applies anyway.
        longest = min(s.breaker_open_max, s.breaker_open * 2 ** min(self.reopens, 30))
        self.open_until = now + longest * (1.0 - OPEN_JITTER * self._random())
        self.state = BreakerState.OPEN
        self.reopens += 1
        self.opens += 1
        self.reason = reason
        self.consecutive = 0
        self.probe = None
        self.window.clear()
        return BreakerState.OPEN

    def _close(self) -> BreakerState:
        self.state = BreakerState.CLOSED
        self.reopens = 0
        self.consecutive = 0
        self.window.clear()
        return BreakerState.CLOSED
