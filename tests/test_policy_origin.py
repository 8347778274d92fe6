"""One origin's policy as a whole: its repr and snapshot show the live state, events reach
the sink only after the lock is released, a call is released whatever happens, and
threads sharing one policy keep its counts exact."""

from __future__ import annotations

import json
import threading

import pytest

from poolclient.resilience import (
    CircuitOpenError,
    OriginPolicy,
    Outcome,
    PolicySettings,
    PolicySnapshot,
    RetryReason,
)
from tests.test_policy_breaker import Clock, Rand, Sink

ORIGIN = "https://api.example:443"


def make(clock: Clock, sink: object = None, **settings: object) -> OriginPolicy:
    return OriginPolicy(ORIGIN, PolicySettings(**settings),  # type: ignore[arg-type]
                        concurrency=4, read_timeout=15.0, clock=clock, random=Rand(),
                        sink=sink)  # type: ignore[arg-type]


def test_repr_shows_the_live_state() -> None:
    clock = Clock()
    policy = make(clock)
    policy.start_refresh()
    policy.resolved(["10.0.0.1", "10.0.0.2"])
    held = policy.admit()
    assert repr(policy) == (f"<OriginPolicy {ORIGIN} [breaker closed | in flight 1/2 | "
                            "retries 0/10.2 | addresses 2 live, 0 ejected, 0 gone]>")
    for _ in range(5):
        with policy.admit() as call:
            call.attempt()
            call.failed(Outcome.CONNECT_ERROR)
    for _ in range(3):
        policy.connect_failed("10.0.0.1")
    clock.now += 1.0
    assert repr(policy) == (f"<OriginPolicy {ORIGIN} [breaker open 4.0 s | in flight 1/2 "
                            "degraded | retries 0/11.2 | addresses 1 live, 1 ejected, 0 gone]>")
    held.done()


def test_snapshot_is_frozen_and_serialisable() -> None:
    clock = Clock()
    policy = make(clock)
    policy.start_refresh()
    policy.resolved(["10.0.0.1"])
    policy.connected("10.0.0.1")
    call = policy.admit("GET /v1/models")
    call.attempt()
    call.failed(Outcome.CONNECT_ERROR)
    call.retry(RetryReason.CONNECT)
    clock.now += 2.0
    snap = policy.snapshot()
    assert isinstance(snap, PolicySnapshot)
    with pytest.raises(AttributeError):
        snap.in_flight = 0  # type: ignore[misc]
    body = json.loads(json.dumps(snap.as_dict()))
    assert body["origin"] == ORIGIN and body["in_flight"] == 1 and body["limit"] == 2
    assert body["breaker"]["state"] == "closed"
    assert body["breaker"]["consecutive_failures"] == 1
    assert body["breaker"]["last_failure"] == "connect_error"
    assert body["budget"]["retried"]["connect"] == 1 and body["budget"]["first_attempts"] == 1
    assert body["addresses"] == [{"address": "10.0.0.1", "state": "live", "connections": 1,
                                  "failures": 0, "ejected_for": 0.0, "ejections": 0}]
    assert body["resolved_age"] == 2.0
    assert body["refused"] == {"open": 0, "overflow": 0, "budget": 0}
    call.done()


class LockCheckingSink(Sink):
    """Fails if an event arrives while the policy's lock is held."""

    policy: OriginPolicy

    def _check(self) -> None:
        assert not self.policy._lock.locked()
        self.policy.snapshot()  # would deadlock under the lock

    def transition(self, state: str) -> None:
        self._check()
        super().transition(state)

    def refused(self, reason: str) -> None:
        self._check()
        super().refused(reason)

    def retried(self, reason: str) -> None:
        self._check()
        super().retried(reason)

    def ejected(self) -> None:
        self._check()
        super().ejected()

    def refreshed(self, result: str) -> None:
        self._check()
        super().refreshed(result)

    def stalled(self) -> None:
        self._check()
        super().stalled()


def test_events_reach_the_sink_outside_the_lock() -> None:
    clock = Clock()
    sink = LockCheckingSink()
    policy = sink.policy = make(clock, sink, retry_budget_floor=0, retry_budget_ratio=0.5)
    policy.start_refresh()
    policy.resolved(["10.0.0.1", "10.0.0.2"])
    for _ in range(3):
        policy.connect_failed("10.0.0.1")
    for _ in range(20):
        with policy.admit("GET /") as call:
            call.attempt()
            call.response(200)
    stuck = policy.admit("GET /")
    stuck.attempt()
    clock.now += 2.0
    assert policy.sweep() == [stuck]
    stuck.retry(RetryReason.STALE)
    stuck.failed(Outcome.NO_RESPONSE)
    stuck.done()
    for _ in range(4):
        with policy.admit("GET /") as call:
            call.attempt()
            call.failed(Outcome.TIMEOUT)
    with pytest.raises(CircuitOpenError):
        policy.admit("GET /")
    clock.now += 5.0
    with policy.admit("GET /") as probe:
        probe.attempt()
        probe.response(200)
    assert [kind for kind, _ in sink.events] == [
        "refreshed", "ejected", "stalled", "retried", "transition", "refused", "transition",
        "transition"]


def test_a_call_is_released_when_its_block_raises() -> None:
    policy = make(Clock())
    with pytest.raises(RuntimeError):
        with policy.admit() as call:
            call.attempt()
            raise RuntimeError("the pool's own error")
    assert policy.snapshot().in_flight == 0
    call.done()  # idempotent
    assert policy.snapshot().in_flight == 0


def test_threads_sharing_a_policy_keep_its_counts_exact() -> None:
    policy = make(Clock(), breaker_failures=10_000, breaker_min_calls=10_000,
                  retry_budget_floor=1000)
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for i in range(500):
            with policy.admit("GET /") as call:
                call.attempt()
                if i % 2:
                    call.failed(Outcome.CONNECT_ERROR)
                    call.retry(RetryReason.CONNECT)
                    call.attempt()
                call.response(200)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = policy.snapshot()
    assert snap.in_flight == 0
    assert snap.budget is not None
    assert (snap.budget.first_attempts, snap.budget.retries) == (4000, 2000)
    assert snap.breaker is not None
    assert (snap.breaker.window_calls, snap.breaker.window_failures) == (6000, 2000)
