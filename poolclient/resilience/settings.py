"""The policy's settings, declared as :class:`poolclient.config.Settings` declares its own.

Each field carries its ``POOLCLIENT_*`` variable, validator and doc string in the same
metadata as there, so merging them into that table is moving the fields; until then
:meth:`PolicySettings.from_env` reads the same variables. Every protection has an on/off
switch of its own, and with all four off the policy admits every call and counts nothing
against the origin.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Validator, boolean, non_negative_seconds, positive_int, positive_seconds
from ..errors import ConfigError


def _share(value: object, zero_allowed: bool) -> float:
    allowed = ("expected a number from 0 to 1" if zero_allowed
               else "expected a number greater than 0, at most 1")
    if isinstance(value, bool):  # True is an int: it must not pass as 1.0
        raise ValueError(allowed)
    if not isinstance(value, (int, float, str)):
        raise ValueError(allowed)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(allowed) from None
    if not math.isfinite(number) or number < 0 or number > 1 or (number == 0 and not zero_allowed):
        raise ValueError(allowed)
    return number


def share(value: object) -> float:
    """A number greater than 0, at most 1."""
    return _share(value, zero_allowed=False)


def non_negative_share(value: object) -> float:
    """A number from 0 to 1."""
    return _share(value, zero_allowed=True)


def factor(value: object) -> float:
    """A number of at least 1."""
    try:
        number = positive_seconds(value)
    except ValueError:
        raise ValueError("expected a number of at least 1") from None
    if number < 1:
        raise ValueError("expected a number of at least 1")
    return number


def rate(value: object) -> float:
    """A finite number, 0 or more, per second."""
    try:
        return non_negative_seconds(value)
    except ValueError:
        raise ValueError("expected a number per second, 0 or more") from None


def _setting(env: str, default: object, validator: Validator, doc: str) -> Any:
    # The same metadata as config._setting's, so the fields move into Settings unchanged.
    metadata = {"env": env, "validator": validator, "doc": doc, "secret": False, "shown": None}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class PolicySettings:
    """The settings of every origin's policy in a process, validated on construction."""

    breaker: bool = _setting(
        "POOLCLIENT_BREAKER", True, boolean,
        "true: each origin has a circuit breaker per worker. It opens after "
        "POOLCLIENT_BREAKER_FAILURES failures in a row, or when at least "
        "POOLCLIENT_BREAKER_FAILURE_RATE of the calls in the last POOLCLIENT_BREAKER_WINDOW "
        "seconds failed (once there were POOLCLIENT_BREAKER_MIN_CALLS); while open, calls "
        "fail at once with CircuitOpenError (requests' ConnectionError, httpx's ConnectError). "
        "Failures: connect errors and timeouts, TLS failures, a reset or end of stream before "
        "the status line, read timeouts, stalls, 502/503/504; never 4xx, 429 or poolclient's "
        "own refusals. false: no breaker.")
    breaker_failures: int = _setting(
        "POOLCLIENT_BREAKER_FAILURES", 5, positive_int,
        "Failures in a row (of attempts to the origin) that open its breaker.")
    breaker_failure_rate: float = _setting(
        "POOLCLIENT_BREAKER_FAILURE_RATE", 0.5, share,
        "Share of failed calls over POOLCLIENT_BREAKER_WINDOW that opens the breaker; 1: only "
        "when every call failed.")
    breaker_window: float = _setting(
        "POOLCLIENT_BREAKER_WINDOW", 30.0, positive_seconds,
        "Seconds of recent calls the failure rate is taken over (in ten steps).")
    breaker_min_calls: int = _setting(
        "POOLCLIENT_BREAKER_MIN_CALLS", 10, positive_int,
        "Fewest calls in the window before its failure rate can open the breaker.")
    breaker_open: float = _setting(
        "POOLCLIENT_BREAKER_OPEN", 5.0, positive_seconds,
        "Seconds a breaker stays open the first time; then one call probes the origin "
        "(half-open) and the rest are refused until it answers: a success closes the breaker, "
        "a failure opens it again for twice as long, up to POOLCLIENT_BREAKER_OPEN_MAX. Each "
        "time is shortened at random by up to a quarter, so the workers do not all probe at "
        "once.")
    breaker_open_max: float = _setting(
        "POOLCLIENT_BREAKER_OPEN_MAX", 60.0, positive_seconds,
        "Longest seconds a breaker stays open between probes.")
    bulkhead: bool = _setting(
        "POOLCLIENT_BULKHEAD", True, boolean,
        "true: while an origin is degraded (its breaker not closed, or one of its calls "
        "stalled in the last 10 s) it may hold at most POOLCLIENT_BULKHEAD_SHARE of the "
        "worker's concurrency; calls over that fail at once with BulkheadFullError, never "
        "queued. A healthy origin is never limited. false: no limit besides the pool's.")
    bulkhead_share: float = _setting(
        "POOLCLIENT_BULKHEAD_SHARE", 0.5, share,
        "Share of the worker's concurrency (its threads under gthread) a degraded origin may "
        "hold; at least one call.")
    retry_budget: bool = _setting(
        "POOLCLIENT_RETRY_BUDGET", True, boolean,
        "true: retries of every kind (connect retries, retries on another address, resends "
        "on a stale keep-alive connection) to an origin stay within "
        "POOLCLIENT_RETRY_BUDGET_RATIO of its first attempts over "
        "POOLCLIENT_RETRY_BUDGET_WINDOW, plus POOLCLIENT_RETRY_BUDGET_FLOOR a second; past "
        "that a retry is refused and the attempt's error raised. false: no budget.")
    retry_budget_ratio: float = _setting(
        "POOLCLIENT_RETRY_BUDGET_RATIO", 0.2, non_negative_share,
        "Retries allowed per first attempt, over the window.")
    retry_budget_floor: float = _setting(
        "POOLCLIENT_RETRY_BUDGET_FLOOR", 1.0, rate,
        "Retries a second allowed whatever the traffic, so a quiet worker can still retry.")
    retry_budget_window: float = _setting(
        "POOLCLIENT_RETRY_BUDGET_WINDOW", 10.0, positive_seconds,
        "Seconds over which first attempts and retries are counted (in ten steps).")
    stall_detection: bool = _setting(
        "POOLCLIENT_STALL_DETECTION", True, boolean,
        "true: a call that makes no progress (no byte sent or received, no status line) for "
        "POOLCLIENT_STALL_FACTOR times the 99th percentile of the longest such wait of the "
        "last 100 calls to the same route (method and path), at least POOLCLIENT_STALL_FLOOR "
        "and less than POOLCLIENT_STALL_CAP of the read timeout, has its connection shut "
        "down and fails with StalledError (a read timeout to the caller; never resent). A "
        "route with fewer than 20 calls is left to the read timeout. false: only timeouts.")
    stall_factor: float = _setting(
        "POOLCLIENT_STALL_FACTOR", 4.0, factor,
        "How many times its usual longest wait a call may go without progress.")
    stall_floor: float = _setting(
        "POOLCLIENT_STALL_FLOOR", 2.0, positive_seconds,
        "Fewest seconds without progress that can count as a stall, however fast the route.")
    stall_cap: float = _setting(
        "POOLCLIENT_STALL_CAP", 0.8, share,
        "Most a stall limit may be, as a share of the read timeout, so a stall is caught "
        "before the read timeout fires.")
    balance: bool = _setting(
        "POOLCLIENT_BALANCE", True, boolean,
        "true: all of an origin's addresses are resolved (on its first connect, then when "
        "older than POOLCLIENT_DNS_REFRESH, and a second after a connect failure); a new "
        "connection goes to the least-connected live address; a connect tries "
        "up to three addresses sharing the connect timeout (TLS still verifies the name); an "
        "address that failed POOLCLIENT_EJECT_FAILURES connects in a row gets no new "
        "connections for POOLCLIENT_EJECT_TIME seconds, longer each time; idle connections to "
        "an address gone from the name are closed when next taken. A host given as an IP "
        "address is left alone. false: the first address that answers, as urllib3 does.")
    dns_refresh: float = _setting(
        "POOLCLIENT_DNS_REFRESH", 5.0, positive_seconds,
        "Seconds an origin's addresses are used before they are resolved again: off the "
        "request path while it has connections, else by its next connect.")
    eject_failures: int = _setting(
        "POOLCLIENT_EJECT_FAILURES", 3, positive_int,
        "Failed connects in a row to one address that eject it.")
    eject_time: float = _setting(
        "POOLCLIENT_EJECT_TIME", 30.0, positive_seconds,
        "Seconds an address is ejected the first time; times the number of recent ejections "
        "after that, up to ten times as long, plus up to 10 % at random.")
    eject_max_share: float = _setting(
        "POOLCLIENT_EJECT_MAX_SHARE", 0.5, share,
        "Most of an origin's addresses ejected at once (at least one of two or more, never "
        "all).")

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            raw = getattr(self, spec.name)
            try:
                value = spec.metadata["validator"](raw)
            except ValueError as exc:
                raise ConfigError(spec.metadata["env"], raw, str(exc)) from None
            object.__setattr__(self, spec.name, value)
        if self.breaker_open_max < self.breaker_open:
            raise ConfigError("POOLCLIENT_BREAKER_OPEN_MAX", self.breaker_open_max,
                              f"expected at least POOLCLIENT_BREAKER_OPEN ({self.breaker_open})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 **overrides: Any) -> PolicySettings:
        """Build settings from ``POOLCLIENT_*`` variables; ``overrides`` win over them."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.metadata["env"] in environ:
                values[spec.name] = environ[spec.metadata["env"]]
        values.update(overrides)
        return cls(**values)

    def redacted(self) -> dict[str, object]:
        """The settings in force, by environment variable name (none is secret)."""
        return {spec.metadata["env"]: getattr(self, spec.name)
                for spec in dataclasses.fields(self)}

    @classmethod
    def off(cls) -> PolicySettings:
        """Every protection turned off."""
        return cls(breaker=False, bulkhead=False, retry_budget=False, stall_detection=False,
                   balance=False)
