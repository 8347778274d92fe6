"""Stall detection: a call waiting on the upstream is judged against its own route's recent
calls (99th percentile of their longest waits x the factor, within the floor and the cap),
never without a history, never for the caller's own time between reads."""

from __future__ import annotations

import pickle

import pytest

from poolclient.resilience import (
    OriginPolicy,
    Outcome,
    PolicySettings,
    StalledError,
    route_key,
)
from poolclient.resilience.stall import MIN_SAMPLES, RouteLatency
from tests.test_policy_breaker import Clock, Rand, Sink

ORIGIN = "https://llm.example:443"


def make(clock: Clock, read_timeout: float | None = 15.0, sink: Sink | None = None,
         **settings: object) -> OriginPolicy:
    defaults: dict[str, object] = {"balance": False, "retry_budget": False,
                                   "breaker": False, "bulkhead": False}
    defaults.update(settings)
    return OriginPolicy(ORIGIN, PolicySettings(**defaults), concurrency=4,  # type: ignore[arg-type]
                        read_timeout=read_timeout, clock=clock, random=Rand(), sink=sink)


def learn(policy: OriginPolicy, clock: Clock, route: str, seconds: float,
          n: int = MIN_SAMPLES) -> None:
    for _ in range(n):
        with policy.admit(route) as call:
            call.attempt()
            clock.now += seconds
            call.response(200)


def waiting(policy: OriginPolicy, route: str, read_timeout: float | None = None):
    call = policy.admit(route, read_timeout)
    call.attempt()
    return call


def test_nothing_is_judged_without_a_history() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=None)
    learn(policy, clock, "GET /a", 0.005, n=MIN_SAMPLES - 1)
    call = waiting(policy, "GET /a")
    clock.now += 1000.0
    assert policy.sweep() == []
    assert not call.stalled


def test_a_fast_route_is_allowed_the_floor_and_a_stall_is_named_once() -> None:
    clock = Clock()
    sink = Sink()
    policy = make(clock, sink=sink)
    learn(policy, clock, "GET /a", 0.005)
    call = waiting(policy, "GET /a")
    clock.now += 1.999
    assert policy.sweep() == []
    clock.now += 0.001
    assert policy.sweep() == [call]
    assert policy.sweep() == []  # returned once
    assert call.failed(Outcome.NO_RESPONSE) is Outcome.STALLED  # the shutdown's error
    err = call.stall_error()
    # Not an OSError: requests would make any OSError a ConnectionError (see errors.py).
    assert isinstance(err, StalledError) and not isinstance(err, OSError)
    assert err.origin == ORIGIN
    assert (err.waited, err.threshold) == pytest.approx((2.0, 2.0))
    call.done()
    snap = policy.snapshot()
    assert snap.stalled == 1 and snap.degraded and sink.events == [("stalled", "")]


def test_an_llm_route_that_takes_30_s_is_not_a_stall_at_30_s() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=300.0)
    learn(policy, clock, "POST /v1/chat/completions", 30.0)
    call = waiting(policy, "POST /v1/chat/completions")
    clock.now += 119.9
    assert policy.sweep() == []  # 4 x 30 s
    clock.now += 0.1
    assert policy.sweep() == [call]


def test_the_limit_is_capped_below_the_read_timeout() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=15.0)  # cap 0.8 x 15 = 12 s
    learn(policy, clock, "POST /slow", 10.0)
    call = waiting(policy, "POST /slow")
    clock.now += 11.9
    assert policy.sweep() == []
    clock.now += 0.1
    assert policy.sweep() == [call]


def test_a_call_may_bring_its_own_read_timeout() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=15.0)
    learn(policy, clock, "POST /slow", 10.0)
    call = waiting(policy, "POST /slow", read_timeout=600.0)  # the SDK's own
    clock.now += 39.9
    assert policy.sweep() == []
    clock.now += 0.1
    assert policy.sweep() == [call]


def test_a_read_timeout_below_the_floor_leaves_it_to_the_read_timeout() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=2.0)  # cap 1.6 s < floor 2 s
    learn(policy, clock, "GET /a", 0.005)
    waiting(policy, "GET /a")
    clock.now += 100.0
    assert policy.sweep() == []


def test_each_route_is_judged_by_its_own_calls() -> None:
    """Quick embeddings next to rare slow completions on one host: the completions have no
    history yet, so the embeddings' 5 ms does not make them stalls."""
    clock = Clock()
    policy = make(clock, read_timeout=600.0)
    learn(policy, clock, "POST /v1/embeddings", 0.005)
    slow = waiting(policy, "POST /v1/chat/completions")
    fast = waiting(policy, "POST /v1/embeddings")
    clock.now += 60.0
    assert policy.sweep() == [fast]
    assert not slow.stalled


def test_the_callers_time_between_reads_is_not_waiting() -> None:
    clock = Clock()
    policy = make(clock)
    learn(policy, clock, "GET /stream", 0.005)
    call = waiting(policy, "GET /stream")
    call.response(200)
    clock.now += 100.0  # the app takes its time with the body
    assert policy.sweep() == []
    call.reading()
    clock.now += 1.0
    call.progress()  # a chunk after 1 s
    clock.now += 100.0
    assert policy.sweep() == []
    call.reading()
    clock.now += 2.0
    assert policy.sweep() == [call]  # a stream that stopped mid-body


def test_a_failed_attempt_waiting_for_its_retry_is_not_judged() -> None:
    clock = Clock()
    policy = make(clock)
    learn(policy, clock, "GET /a", 0.005)
    call = waiting(policy, "GET /a")
    call.failed(Outcome.CONNECT_ERROR)
    clock.now += 10.0  # backoff
    assert policy.sweep() == []
    call.attempt()
    clock.now += 2.0
    assert policy.sweep() == [call]


def test_only_clean_attempts_teach_the_route() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=None)
    learn(policy, clock, "GET /a", 0.005)
    for outcome in (Outcome.TIMEOUT, Outcome.NO_RESPONSE):
        with policy.admit("GET /a") as call:
            call.attempt()
            clock.now += 500.0
            call.response(200)
            call.failed(outcome)  # the body broke
    count, p99 = policy.snapshot().routes["GET /a"]
    assert count == MIN_SAMPLES and p99 == pytest.approx(0.005)


def test_the_longest_wait_of_an_attempt_is_its_sample() -> None:
    clock = Clock()
    policy = make(clock, read_timeout=None)
    for _ in range(MIN_SAMPLES):
        with policy.admit("GET /sse") as call:
            call.attempt()
            clock.now += 0.1
            call.response(200)
            for gap in (0.5, 3.0, 0.2):
                call.reading()
                clock.now += gap
                call.progress()
    count, p99 = policy.snapshot().routes["GET /sse"]
    assert count == MIN_SAMPLES and p99 == pytest.approx(3.0)


def test_p99_is_the_nearest_rank() -> None:
    latency = RouteLatency()
    for _ in range(98):
        latency.add(0.01)
    latency.add(5.0)
    latency.add(9.0)
    assert latency.p99() == 5.0  # the 99th of 100
    for _ in range(100):  # the ring keeps the last 100
        latency.add(0.02)
    assert latency.p99() == 0.02


@pytest.mark.parametrize(("method", "path", "key"), [
    ("post", "/v1/chat/completions?stream=true", "POST /v1/chat/completions"),
    ("GET", "/v1/threads/thread_ab12/runs", "GET /v1/threads/*/runs"),
    ("GET", "/a/b/c/d/e/f", "GET /a/b/c/d"),
    ("GET", "/", "GET /"),
    ("DELETE", "/v2/items/42", "DELETE /v2/items/*"),
])
def test_route_key(method: str, path: str, key: str) -> None:
    assert route_key(method, path) == key


def test_stall_detection_off_names_nothing() -> None:
    clock = Clock()
    policy = make(clock, stall_detection=False)
    learn(policy, clock, "GET /a", 0.005)
    waiting(policy, "GET /a")
    clock.now += 14.0
    assert policy.sweep() == [] and policy.snapshot().routes == {}


def test_the_error_pickles() -> None:
    err = StalledError(ORIGIN, 3.5, 2.0)
    again = pickle.loads(pickle.dumps(err))
    assert (again.origin, again.waited, again.threshold) == (ORIGIN, 3.5, 2.0)
