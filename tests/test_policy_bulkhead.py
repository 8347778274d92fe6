"""The bulkhead: nothing is refused while the origin is healthy, however much of the
worker it holds; while it is degraded (breaker not closed, or a stall in the last
STALL_MEMORY seconds) calls over its share are refused at once."""

from __future__ import annotations

import pickle

import pytest

from poolclient.resilience import (
    BulkheadFullError,
    CircuitOpenError,
    OriginPolicy,
    Outcome,
    PolicySettings,
)
from poolclient.resilience.policy import STALL_MEMORY
from tests.test_policy_breaker import Clock, Rand, Sink

ORIGIN = "https://c.example:443"


def make(clock: Clock, concurrency: int = 4, sink: Sink | None = None,
         **settings: object) -> OriginPolicy:
    defaults: dict[str, object] = {"balance": False, "retry_budget": False}
    defaults.update(settings)
    return OriginPolicy(ORIGIN, PolicySettings(**defaults),  # type: ignore[arg-type]
                        concurrency=concurrency, read_timeout=15.0, clock=clock,
                        random=Rand(), sink=sink)


def learn(policy: OriginPolicy, clock: Clock, n: int = 20, seconds: float = 0.005) -> None:
    """n healthy calls that each waited ``seconds`` for their status line."""
    for _ in range(n):
        with policy.admit("GET /") as call:
            call.attempt()
            clock.now += seconds
            call.response(200)


def stall_one(policy: OriginPolicy, clock: Clock) -> None:
    call = policy.admit("GET /")
    call.attempt()
    clock.now += 2.0
    assert policy.sweep() == [call]
    call.failed(Outcome.NO_RESPONSE)
    call.done()


def test_a_healthy_origin_holding_every_thread_is_never_refused() -> None:
    clock = Clock()
    policy = make(clock)
    calls = [policy.admit("GET /") for _ in range(50)]  # far over any share
    for call in calls:
        call.attempt()
    clock.now += 1.0
    assert policy.sweep() == []  # no history: nothing judged
    assert policy.snapshot().in_flight == 50 and policy.snapshot().refused["overflow"] == 0


@pytest.mark.parametrize(("concurrency", "share", "limit"),
                         [(4, 0.5, 2), (1, 0.5, 1), (3, 0.5, 1), (10, 0.3, 3), (8, 1.0, 8)])
def test_the_limit_is_the_share_of_the_concurrency_at_least_one(
        concurrency: int, share: float, limit: int) -> None:
    policy = make(Clock(), concurrency=concurrency, bulkhead_share=share)
    assert policy.limit == limit and policy.snapshot().limit == limit


def test_after_a_stall_calls_over_the_share_are_refused_at_once() -> None:
    clock = Clock()
    sink = Sink()
    policy = make(clock, sink=sink, breaker=False)
    learn(policy, clock)
    stall_one(policy, clock)
    assert policy.snapshot().degraded
    held = [policy.admit("GET /"), policy.admit("GET /")]  # the share: 2 of 4
    with pytest.raises(BulkheadFullError) as caught:
        policy.admit("GET /")
    assert (caught.value.in_flight, caught.value.limit) == (2, 2)
    assert ORIGIN in str(caught.value)
    assert policy.snapshot().refused["overflow"] == 1
    assert ("refused", "overflow") in sink.events
    held[0].done()
    policy.admit("GET /").done()  # under the share again
    clock.now += STALL_MEMORY
    assert not policy.snapshot().degraded
    extra = [policy.admit("GET /") for _ in range(6)]  # healthy again: no limit
    assert len(extra) == 6


def test_while_half_open_old_calls_over_the_share_keep_the_probe_out() -> None:
    clock = Clock()
    policy = make(clock, stall_detection=False)
    stuck = [policy.admit() for _ in range(2)]  # admitted while closed, never answered
    for _ in range(5):
        with policy.admit() as call:
            call.attempt()
            call.failed(Outcome.CONNECT_ERROR)
    clock.now += 5.0
    with pytest.raises(BulkheadFullError):
        policy.admit()
    stuck[0].done()
    probe = policy.admit()
    assert policy.snapshot().breaker.state == "half_open"  # type: ignore[union-attr]
    with pytest.raises(CircuitOpenError):
        policy.admit()  # under the share, but the probe is out
    probe.done()


def test_bulkhead_off_limits_nothing_while_degraded() -> None:
    clock = Clock()
    policy = make(clock, bulkhead=False, breaker=False)
    learn(policy, clock)
    stall_one(policy, clock)
    assert policy.snapshot().degraded and policy.snapshot().limit is None
    assert len([policy.admit("GET /") for _ in range(10)]) == 10


def test_the_error_says_why_and_pickles() -> None:
    err = BulkheadFullError(ORIGIN, 2, 2)
    assert isinstance(err, ConnectionError) and err.reason.value == "overflow"
    assert err.retry_after > 0
    again = pickle.loads(pickle.dumps(err))
    assert (again.origin, again.in_flight, again.limit) == (ORIGIN, 2, 2)
