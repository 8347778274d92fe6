"""The retry budget: retries of every reason within a share of first attempts over a
window, plus a floor a second; refusals counted by reason, the last error kept."""

from __future__ import annotations

import pickle

import pytest

from poolclient.errors import PoolClientError
from poolclient.resilience import (
    OriginPolicy,
    PolicySettings,
    RetryBudgetExhaustedError,
    RetryReason,
)
from tests.test_policy_breaker import Clock, Rand, Sink

ORIGIN = "https://b.example:443"


def make(clock: Clock, sink: Sink | None = None, **settings: object) -> OriginPolicy:
    defaults: dict[str, object] = {"bulkhead": False, "stall_detection": False,
                                   "balance": False, "breaker": False}
    defaults.update(settings)
    return OriginPolicy(ORIGIN, PolicySettings(**defaults), concurrency=4,  # type: ignore[arg-type]
                        clock=clock, random=Rand(), sink=sink)


def first_attempts(policy: OriginPolicy, n: int) -> None:
    for _ in range(n):
        policy.admit().done()


def test_retries_stay_within_the_ratio_of_first_attempts() -> None:
    policy = make(Clock(), retry_budget_ratio=0.2, retry_budget_floor=0)
    first_attempts(policy, 9)
    call = policy.admit()  # the tenth first attempt
    call.retry(RetryReason.CONNECT)
    call.retry(RetryReason.CONNECT)  # 2 = 20 % of 10
    cause = ConnectionRefusedError("refused")
    with pytest.raises(RetryBudgetExhaustedError) as caught:
        call.retry(RetryReason.CONNECT, cause)
    err = caught.value
    assert err.__cause__ is cause and err.last_error is cause
    assert err.origin == ORIGIN and err.retry_reason is RetryReason.CONNECT
    assert "refused" in str(err) and ORIGIN in str(err)
    budget = policy.snapshot().budget
    assert budget is not None
    assert (budget.first_attempts, budget.retries, budget.allowed) == (10, 2, 2.0)
    assert budget.retried == {"connect": 2, "other_address": 0, "stale": 0}
    assert budget.refused == {"connect": 1, "other_address": 0, "stale": 0}
    assert policy.snapshot().refused["budget"] == 1


def test_every_reason_draws_on_the_same_budget() -> None:
    policy = make(Clock(), retry_budget_ratio=0.2, retry_budget_floor=0)
    first_attempts(policy, 14)
    call = policy.admit()  # 15 first attempts: 3 retries
    call.retry(RetryReason.CONNECT)
    call.retry(RetryReason.OTHER_ADDRESS)
    call.retry(RetryReason.STALE)
    with pytest.raises(RetryBudgetExhaustedError):
        call.retry(RetryReason.STALE)
    budget = policy.snapshot().budget
    assert budget is not None and budget.refused["stale"] == 1


def test_the_floor_lets_a_quiet_worker_retry() -> None:
    policy = make(Clock(), retry_budget_ratio=0.2, retry_budget_floor=1.0,
                  retry_budget_window=10)
    call = policy.admit()  # one first attempt: 0.2 + 1/s x 10 s
    for _ in range(10):
        call.retry(RetryReason.CONNECT)
    with pytest.raises(RetryBudgetExhaustedError):
        call.retry(RetryReason.CONNECT)


def test_the_window_forgets_retries_and_first_attempts() -> None:
    clock = Clock()
    clock.now = 0.0
    policy = make(clock, retry_budget_ratio=0.5, retry_budget_floor=0,
                  retry_budget_window=10)
    first_attempts(policy, 4)
    call = policy.admit()
    call.retry(RetryReason.CONNECT)
    call.retry(RetryReason.CONNECT)
    with pytest.raises(RetryBudgetExhaustedError):
        call.retry(RetryReason.CONNECT)
    clock.now += 10.0  # the deposits expired with the withdrawals
    with pytest.raises(RetryBudgetExhaustedError):
        call.retry(RetryReason.CONNECT)
    first_attempts(policy, 2)
    call.retry(RetryReason.CONNECT)
    budget = policy.snapshot().budget
    assert budget is not None and (budget.first_attempts, budget.retries) == (2, 1)


def test_refusals_reach_the_sink_by_reason() -> None:
    sink = Sink()
    policy = make(Clock(), sink=sink, retry_budget_ratio=0.2, retry_budget_floor=0)
    first_attempts(policy, 4)
    call = policy.admit()
    call.retry(RetryReason.STALE)
    with pytest.raises(RetryBudgetExhaustedError):
        call.retry(RetryReason.OTHER_ADDRESS)
    assert sink.events == [("retried", "stale"), ("refused", "budget")]


def test_budget_off_allows_every_retry_and_still_counts_them() -> None:
    policy = make(Clock(), retry_budget=False)
    call = policy.admit()
    for _ in range(100):
        call.retry(RetryReason.CONNECT)
    snap = policy.snapshot()
    assert snap.budget is None and snap.refused["budget"] == 0


def test_the_error_is_a_connection_error_and_pickles() -> None:
    err = RetryBudgetExhaustedError(ORIGIN, RetryReason.STALE, None)
    assert isinstance(err, PoolClientError) and isinstance(err, ConnectionError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RetryBudgetExhaustedError and str(again) == str(err)
