"""One origin's retry budget: retries of every reason within a share of first attempts.

Finagle's budget, counted rather than as tokens: over the window, retries may reach
``ratio`` x first attempts plus ``floor`` x window seconds (a quiet worker can still retry
a few times, and a busy one no more than a fifth more calls than its callers made). Envoy
bounds concurrent retries the same way (20 %, minimum 3); counting over time instead of in
flight suits connect retries, which are over before the next call begins.

No lock, no clock: the policy calls it under its lock with ``now``.
"""

from __future__ import annotations

from .settings import PolicySettings
from .window import Window

_FIRST, _RETRIES = 0, 1


class RetryBudget:
    """Counts first attempts and retries; refuses a retry past the budget."""

    def __init__(self, settings: PolicySettings) -> None:
        self.ratio = settings.retry_budget_ratio
        self.reserve = settings.retry_budget_floor * settings.retry_budget_window
        self.window = Window(settings.retry_budget_window)

    def __repr__(self) -> str:
        return f"<RetryBudget ratio={self.ratio:g} reserve={self.reserve:g}>"

    def first(self, now: float) -> None:
        """A call made its first attempt."""
        self.window.add(now, _FIRST)

    def allowed(self, now: float) -> float:
        """Retries the window allows now, spent or not."""
        return self.ratio * self.window.totals(now)[_FIRST] + self.reserve

    def withdraw(self, now: float) -> bool:
        """Whether a retry may go now (and if so, it is counted)."""
        firsts, retries = self.window.totals(now)
        # The epsilon: 0.57 x 100 is 56.99999999999999 in floats, and means 57.
        if retries + 1 > self.ratio * firsts + self.reserve + 1e-9:
            return False
        self.window.add(now, _RETRIES)
        return True

    def totals(self, now: float) -> tuple[int, int]:
        """First attempts and retries in the window."""
        firsts, retries = self.window.totals(now)
        return firsts, retries
