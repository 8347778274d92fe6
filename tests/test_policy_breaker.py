"""The circuit breaker, driven by a fake clock (as Envoy's outlier tests drive theirs):
consecutive and rate rules, open times and their jitter, the single half-open probe, growth
on failed probes, what never counts, the log lines and the events."""

from __future__ import annotations

import logging

import pytest

from poolclient.resilience import (
    BreakerState,
    CircuitOpenError,
    OriginPolicy,
    Outcome,
    PolicySettings,
)
from poolclient.resilience.breaker import OPEN_JITTER

ORIGIN = "https://a.example:443"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rand:
    """A random source that returns ``value``."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def transition(self, state: str) -> None:
        self.events.append(("transition", state))

    def refused(self, reason: str) -> None:
        self.events.append(("refused", reason))

    def retried(self, reason: str) -> None:
        self.events.append(("retried", reason))

    def ejected(self) -> None:
        self.events.append(("ejected", ""))

    def refreshed(self, result: str) -> None:
        self.events.append(("refreshed", result))

    def stalled(self) -> None:
        self.events.append(("stalled", ""))


def make(clock: Clock, rand: float = 0.0, sink: Sink | None = None,
         **settings: object) -> OriginPolicy:
    defaults: dict[str, object] = {"bulkhead": False, "stall_detection": False,
                                   "balance": False, "retry_budget": False}
    defaults.update(settings)
    return OriginPolicy(ORIGIN, PolicySettings(**defaults), concurrency=4,  # type: ignore[arg-type]
                        clock=clock, random=Rand(rand), sink=sink)


def attempt(policy: OriginPolicy, result: int | Outcome) -> None:
    """One call with one attempt that ends in ``result`` (a status or an outcome)."""
    with policy.admit("GET /") as call:
        call.attempt()
        if isinstance(result, int):
            call.response(result)
        else:
            call.failed(result)


def state(policy: OriginPolicy) -> str:
    snap = policy.snapshot().breaker
    assert snap is not None
    return snap.state


def test_opens_on_the_fifth_failure_in_a_row_and_refuses_before_any_wait() -> None:
    clock = Clock()
    policy = make(clock)
    for _ in range(4):
        attempt(policy, Outcome.CONNECT_ERROR)
    assert state(policy) == "closed"
    assert policy.snapshot().breaker.consecutive_failures == 4  # type: ignore[union-attr]
    attempt(policy, 503)
    assert state(policy) == "open"
    with pytest.raises(CircuitOpenError) as caught:
        policy.admit("GET /")
    err = caught.value
    assert err.origin == ORIGIN
    assert err.retry_after == pytest.approx(5.0)
    assert err.open_until == pytest.approx(clock.now + 5.0)
    assert err.last_failure == "gateway_error"
    assert ORIGIN in str(err) and "5.0 s" in str(err)
    assert policy.snapshot().in_flight == 0  # a refused call holds nothing
    assert policy.snapshot().refused["open"] == 1


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    policy = make(Clock())
    for _ in range(4):
        attempt(policy, Outcome.TIMEOUT)
    attempt(policy, 200)
    for _ in range(4):
        attempt(policy, Outcome.NO_RESPONSE)
    assert state(policy) == "closed"


@pytest.mark.parametrize("result", [400, 401, 404, 409, 429, 500, 501, Outcome.REFUSED,
                                    Outcome.DEADLINE, Outcome.CANCELLED, Outcome.OTHER])
def test_what_never_counts(result: int | Outcome) -> None:
    """4xx, 429, a 500 (the application's own answer) and poolclient's own refusals,
    deadlines and cancellations never open a breaker (Envoy #25487)."""
    policy = make(Clock())
    for _ in range(50):
        attempt(policy, result)
    snap = policy.snapshot().breaker
    assert snap is not None and snap.state == "closed"
    assert snap.consecutive_failures == 0 and snap.window_failures == 0


def test_failures_between_non_failures_still_count_in_a_row() -> None:
    """A pool timeout between two connect errors neither resets nor adds to the run."""
    policy = make(Clock())
    for _ in range(4):
        attempt(policy, Outcome.CONNECT_TIMEOUT)
        attempt(policy, Outcome.REFUSED)
    attempt(policy, Outcome.TLS_ERROR)
    assert state(policy) == "open"


def test_failure_rate_over_the_window_opens_once_the_volume_is_reached() -> None:
    clock = Clock()
    policy = make(clock, breaker_failures=100, breaker_failure_rate=0.5,
                  breaker_min_calls=10, breaker_window=30)
    for _ in range(5):
        attempt(policy, 200)
    for _ in range(4):
        attempt(policy, 502)
    assert state(policy) == "closed"  # 9 calls: below the volume
    attempt(policy, 502)  # 10 calls, 5 failed
    assert state(policy) == "open"


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    clock.now = 0.0
    policy = make(clock, breaker_failures=100, breaker_failure_rate=0.5,
                  breaker_min_calls=10, breaker_window=30)
    for _ in range(9):
        attempt(policy, Outcome.TIMEOUT)
    clock.now += 30.0  # a whole window later: every bucket of them has aged out
    attempt(policy, Outcome.TIMEOUT)
    snap = policy.snapshot().breaker
    assert snap is not None and snap.state == "closed"
    assert (snap.window_calls, snap.window_failures) == (1, 1)
    for _ in range(8):
        attempt(policy, 200)
    attempt(policy, Outcome.TIMEOUT)
    assert state(policy) == "closed"  # 10 calls, 2 failed
    assert policy.snapshot().breaker.window_calls == 10  # type: ignore[union-attr]


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_open_time_is_jittered_within_its_bounds(draw: float) -> None:
    clock = Clock()
    policy = make(clock, rand=draw, breaker_open=8.0)
    for _ in range(5):
        attempt(policy, Outcome.CONNECT_ERROR)
    open_for = policy.snapshot().breaker.open_for  # type: ignore[union-attr]
    assert open_for == pytest.approx(8.0 * (1 - OPEN_JITTER * draw), abs=1e-3)
    assert 8.0 * (1 - OPEN_JITTER) <= open_for <= 8.0


def open_breaker(policy: OriginPolicy) -> None:
    for _ in range(5):
        attempt(policy, Outcome.CONNECT_ERROR)


def test_half_open_admits_one_probe_at_a_time_and_a_success_closes(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    sink = Sink()
    policy = make(clock, sink=sink)
    with caplog.at_level(logging.INFO, logger="poolclient"):
        open_breaker(policy)
        clock.now += 4.999
        with pytest.raises(CircuitOpenError):
            policy.admit()
        clock.now += 0.001
        probe = policy.admit()
        assert state(policy) == "half_open"
        with pytest.raises(CircuitOpenError) as caught:
            policy.admit()  # the probe is out: everyone else is refused
        assert caught.value.probing and caught.value.retry_after == 1.0
        probe.attempt()
        probe.response(200)
        probe.done()
    assert state(policy) == "closed"
    policy.admit().done()  # admitted again
    transitions = [s for kind, s in sink.events if kind == "transition"]
    assert transitions == ["open", "half_open", "closed"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [("opened" in r.getMessage(), "closed" in r.getMessage()) for r in warnings] == [
        (True, False), (False, True)]
    assert all(ORIGIN in r.getMessage() for r in warnings)
    assert "5 failures in a row" in warnings[0].getMessage()


def test_a_failed_probe_reopens_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    policy = make(clock, breaker_open=5.0, breaker_open_max=30.0)
    open_breaker(policy)
    durations = []
    for _ in range(5):
        clock.now += policy.snapshot().breaker.open_for  # type: ignore[union-attr]
        attempt(policy, Outcome.TIMEOUT)  # the probe fails
        durations.append(policy.snapshot().breaker.open_for)  # type: ignore[union-attr]
    assert durations == [10.0, 20.0, 30.0, 30.0, 30.0]
    assert policy.snapshot().breaker.reason == "the probe failed"  # type: ignore[union-attr]


def test_closing_resets_the_growth() -> None:
    clock = Clock()
    policy = make(clock)
    open_breaker(policy)
    clock.now += 5.0
    attempt(policy, Outcome.TIMEOUT)  # reopened for 10 s
    clock.now += 10.0
    attempt(policy, 200)  # closed
    open_breaker(policy)
    assert policy.snapshot().breaker.open_for == 5.0  # type: ignore[union-attr]


def test_a_probe_that_leaves_without_a_verdict_frees_the_slot() -> None:
    clock = Clock()
    policy = make(clock)
    open_breaker(policy)
    clock.now += 5.0
    probe = policy.admit()
    with pytest.raises(CircuitOpenError):
        policy.admit()
    probe.attempt()
    probe.failed(Outcome.CANCELLED)  # over, without a verdict
    second = policy.admit()  # so the next caller probes
    second.done()  # and leaves before any attempt: the slot is free again
    third = policy.admit()
    third.attempt()
    third.response(204)
    third.done()
    probe.done()
    assert state(policy) == "closed"


def test_a_probe_that_never_reports_is_replaced_after_open_max() -> None:
    clock = Clock()
    policy = make(clock, breaker_open_max=60.0)
    open_breaker(policy)
    clock.now += 5.0
    policy.admit()  # a probe whose pool never calls back
    clock.now += 59.9
    with pytest.raises(CircuitOpenError):
        policy.admit()
    clock.now += 0.1
    assert policy.admit() is not None


def test_verdicts_of_calls_from_before_the_open_are_ignored() -> None:
    clock = Clock()
    policy = make(clock)
    late_success = policy.admit()
    late_failure = policy.admit()
    open_breaker(policy)
    late_success.attempt()
    late_success.response(200)  # while open: says nothing about the origin since
    assert state(policy) == "open"
    clock.now += 5.0
    probe = policy.admit()
    late_failure.attempt()
    late_failure.failed(Outcome.CONNECT_ERROR)  # not the probe
    assert state(policy) == "half_open"
    probe.attempt()
    probe.response(200)
    assert state(policy) == "closed"


def test_one_verdict_per_attempt() -> None:
    """A body that breaks after the status line does not count a second time."""
    policy = make(Clock())
    for _ in range(10):
        with policy.admit() as call:
            call.attempt()
            call.response(200)
            call.reading()
            call.failed(Outcome.NO_RESPONSE)
    snap = policy.snapshot().breaker
    assert snap is not None and snap.state == "closed" and snap.window_failures == 0


def test_breaker_off_never_refuses() -> None:
    policy = make(Clock(), breaker=False)
    for _ in range(100):
        attempt(policy, Outcome.CONNECT_ERROR)
    assert policy.snapshot().breaker is None
    policy.admit().done()


def test_breaker_state_enum_values_are_the_snapshot_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]
