"""Frozen pictures of an origin's policy, for /health; times are seconds from the moment
the snapshot was taken, so they mean the same in every process."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BreakerSnapshot:
    state: str  # closed, open, half_open
    open_for: float  # seconds until it half-opens; 0 unless open
    reason: str  # why it last opened ("" if never)
    last_failure: str | None  # the outcome of the last failure counted
    consecutive_failures: int
    window_calls: int  # while closed: calls and failures in the rate window
    window_failures: int
    opens: int  # times opened since the process started


@dataclass(frozen=True)
class BudgetSnapshot:
    first_attempts: int  # in the window
    retries: int  # in the window
    allowed: float  # retries the window allows now
    retried: dict[str, int]  # since start, by reason
    refused: dict[str, int]  # since start, by reason


@dataclass(frozen=True)
class AddressSnapshot:
    address: str
    state: str  # live, ejected, gone
    connections: int
    failures: int  # failed connects in a row
    ejected_for: float  # seconds left; 0 unless ejected
    ejections: int  # recent ones (the next ejection's multiplier)


@dataclass(frozen=True)
class PolicySnapshot:
    """One origin's policy at one moment."""

    origin: str
    breaker: BreakerSnapshot | None  # None: turned off
    in_flight: int
    limit: int | None  # applies while degraded; None: bulkhead off
    degraded: bool
    stalled: int  # calls aborted as stalled since start
    refused: dict[str, int]  # since start: open, overflow, budget
    budget: BudgetSnapshot | None
    addresses: tuple[AddressSnapshot, ...]
    resolved_age: float | None  # seconds since the addresses were last resolved
    routes: dict[str, tuple[int, float | None]]  # stall samples and p99 per route

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
