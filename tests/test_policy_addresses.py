"""An origin's addresses: least-connected choice, retries elsewhere, ejection that grows
and decays, never all ejected, addresses gone from DNS, refresh due times, and the share
of the connect timeout."""

from __future__ import annotations

import itertools

import pytest

from poolclient.resilience import OriginPolicy, PolicySettings, connect_share
from poolclient.resilience.addresses import FORCED_REFRESH_GAP, MIN_CONNECT_SHARE
from tests.test_policy_breaker import Clock, Rand, Sink

ORIGIN = "https://svc.example:443"
A, B, C, D = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"


def make(clock: Clock, rand: object = None, sink: Sink | None = None,
         **settings: object) -> OriginPolicy:
    defaults: dict[str, object] = {"breaker": False, "bulkhead": False, "retry_budget": False,
                                   "stall_detection": False}
    defaults.update(settings)
    return OriginPolicy(ORIGIN, PolicySettings(**defaults), concurrency=4,  # type: ignore[arg-type]
                        clock=clock, random=rand or Rand(), sink=sink)  # type: ignore[arg-type]


def resolved(clock: Clock, *addresses: str, **settings: object) -> OriginPolicy:
    policy = make(clock, **settings)
    assert policy.start_refresh()
    policy.resolved(addresses)
    return policy


def states(policy: OriginPolicy) -> dict[str, tuple[str, int]]:
    return {a.address: (a.state, a.connections) for a in policy.snapshot().addresses}


def fail_connects(policy: OriginPolicy, address: str, n: int) -> None:
    for _ in range(n):
        policy.connect_failed(address)


def test_new_connections_go_to_the_least_connected_address() -> None:
    policy = resolved(Clock(), A, B, C)
    policy.connected(A)
    policy.connected(B)
    assert policy.candidates() == [C, A, B]  # ties (A, B) at random: Rand() draws 0 for all
    for _ in range(298):  # 300 in all
        policy.connected(policy.candidates()[0])
    assert states(policy) == {A: ("live", 100), B: ("live", 100), C: ("live", 100)}


def test_ties_are_broken_at_random() -> None:
    draws = itertools.cycle([0.9, 0.1, 0.5])  # A, B, C
    policy = resolved(Clock(), A, B, C, rand=lambda: next(draws))
    assert policy.candidates() == [B, C, A]


def test_a_retry_prefers_an_address_the_call_has_not_tried() -> None:
    policy = resolved(Clock(), A, B)
    policy.connected(B)
    policy.connected(B)
    call = policy.admit()
    assert call.candidates()[0] == A
    call.connect_failed(A)
    assert call.candidates() == [B, A]  # B is busier, but A was tried
    call.done()


def test_repeated_connect_failures_eject_for_a_while() -> None:
    clock = Clock()
    sink = Sink()
    policy = resolved(clock, A, B, C, eject_failures=3, eject_time=30.0)
    policy.sink = sink
    fail_connects(policy, A, 2)
    assert states(policy)[A] == ("live", 0)
    fail_connects(policy, A, 1)
    assert states(policy)[A] == ("ejected", 0)
    assert A not in policy.candidates() and not policy.usable(A) and policy.usable(B)
    assert ("ejected", "") in sink.events
    snap = {a.address: a for a in policy.snapshot().addresses}[A]
    assert snap.ejected_for == pytest.approx(30.0) and snap.ejections == 1
    clock.now += 29.9
    assert A not in policy.candidates()
    clock.now += 0.1
    assert A in policy.candidates() and policy.usable(A)


def test_a_successful_connect_resets_the_failures_in_a_row() -> None:
    policy = resolved(Clock(), A, B, eject_failures=3)
    fail_connects(policy, A, 2)
    policy.connected(A)
    fail_connects(policy, A, 2)
    assert states(policy)[A][0] == "live"


def test_ejection_grows_on_repeat_up_to_ten_times_and_decays_while_healthy() -> None:
    clock = Clock()
    policy = resolved(clock, A, B, eject_failures=1, eject_time=10.0)
    times = []
    for _ in range(12):
        fail_connects(policy, A, 1)
        left = {a.address: a for a in policy.snapshot().addresses}[A].ejected_for
        times.append(round(left, 6))
        clock.now += left  # back, and failing again at once
    assert times == [10.0 * min(n, 10) for n in range(1, 13)]
    clock.now += 35.0  # healthy for 3 ejection times: the multiplier drops by 3
    fail_connects(policy, A, 1)
    assert {a.address: a for a in policy.snapshot().addresses}[A].ejections == 8


def test_ejection_jitter_adds_up_to_a_tenth() -> None:
    policy = resolved(Clock(), A, B, rand=Rand(0.999), eject_failures=1, eject_time=10.0)
    fail_connects(policy, A, 1)
    left = {a.address: a for a in policy.snapshot().addresses}[A].ejected_for
    assert 10.0 < left <= 11.0 and left == pytest.approx(10.999, abs=1e-3)


@pytest.mark.parametrize(("addresses", "share", "most"), [
    ((A,), 0.5, 0), ((A, B), 0.5, 1), ((A, B, C), 0.5, 1), ((A, B, C, D), 0.5, 2),
    ((A, B, C, D), 1.0, 3), ((A, B, C, D), 0.1, 1),
])
def test_never_more_than_the_max_share_and_never_all(
        addresses: tuple[str, ...], share: float, most: int) -> None:
    policy = resolved(Clock(), *addresses, eject_failures=1, eject_max_share=share)
    for address in addresses:
        fail_connects(policy, address, 3)
    ejected = [a for a, (state, _) in states(policy).items() if state == "ejected"]
    assert len(ejected) == most
    assert policy.candidates()  # something is always left to connect to


def test_addresses_gone_from_dns_get_no_new_connections_and_are_forgotten() -> None:
    clock = Clock()
    policy = resolved(clock, A, B, C)
    policy.connected(A)
    clock.now += 5.0
    assert policy.start_refresh()
    assert policy.resolved([B, C]) == (A,)  # the pool closes A's idle connections
    assert states(policy)[A] == ("gone", 1)
    assert A not in policy.candidates() and not policy.usable(A)
    policy.disconnected(A)
    assert A not in states(policy)
    clock.now += 5.0
    assert policy.start_refresh()
    assert policy.resolved([A, B]) == (C,)
    assert C not in states(policy)  # no connections: forgotten at once
    assert states(policy)[A] == ("live", 0)


def test_an_empty_or_failed_answer_keeps_the_last_good_list() -> None:
    clock = Clock()
    sink = Sink()
    policy = resolved(clock, A, B)
    policy.sink = sink
    clock.now += 5.0
    assert policy.start_refresh()
    assert policy.resolved([]) == ()
    clock.now += 5.0
    assert policy.start_refresh()
    policy.resolve_failed()
    assert set(states(policy)) == {A, B}
    assert sink.events == [("refreshed", "empty"), ("refreshed", "failure")]


def test_refresh_is_due_at_once_then_every_interval() -> None:
    clock = Clock()
    policy = make(clock, dns_refresh=5.0)
    assert policy.refresh_due()
    assert policy.start_refresh()
    assert not policy.start_refresh()  # one resolver at a time
    policy.resolved([A])
    clock.now += 4.9
    assert not policy.refresh_due()
    clock.now += 0.1
    assert policy.refresh_due()
    assert policy.snapshot().resolved_age == pytest.approx(5.0)


def test_a_connect_failure_brings_the_refresh_forward_at_most_once_a_second() -> None:
    clock = Clock()
    policy = make(clock, dns_refresh=5.0)
    policy.start_refresh()
    policy.resolved([A, B])
    clock.now += 0.25
    policy.connect_failed(A)
    assert not policy.refresh_due()
    clock.now += FORCED_REFRESH_GAP - 0.25  # a second after the last resolution
    assert policy.refresh_due()
    policy.start_refresh()
    policy.resolved([A, B])
    clock.now += 3.0
    policy.connect_failed(B)  # resolved 3 s ago: due now
    assert policy.refresh_due()


def test_balance_off_leaves_connecting_to_the_pool() -> None:
    policy = make(Clock(), balance=False)
    assert not policy.refresh_due() and not policy.start_refresh()
    assert policy.resolved([A]) == () and policy.candidates() == []
    assert policy.usable(A) and policy.snapshot().addresses == ()


@pytest.mark.parametrize(("left", "candidates", "share"), [
    (5.0, 3, 5.0 / 3), (5.0, 1, 5.0), (2.0, 3, MIN_CONNECT_SHARE), (0.5, 3, 0.5),
    (3.0, 2, 1.5),
])
def test_the_connect_timeout_is_shared_among_addresses(
        left: float, candidates: int, share: float) -> None:
    assert connect_share(left, candidates) == pytest.approx(share)


def test_a_black_holed_first_address_costs_a_share_not_the_whole_timeout() -> None:
    total = 5.0
    first = connect_share(total, 3)
    second = connect_share(total - first, 2)
    third = connect_share(total - first - second, 1)
    assert first < total and first + second + third == pytest.approx(total)


def test_connects_under_way_count_as_connections() -> None:
    """Nine connects begun before any finished (concurrent threads or tasks) spread 3/3/3."""
    policy = resolved(Clock(), A, B, C)
    chosen = []
    for _ in range(9):
        address = policy.candidates()[0]
        policy.connecting(address)
        chosen.append(address)
    assert sorted(chosen.count(a) for a in (A, B, C)) == [3, 3, 3]
    for address in chosen:
        policy.connected(address)
    assert {a: n for a, (_, n) in states(policy).items()} == {A: 3, B: 3, C: 3}


def test_an_abandoned_connect_is_not_a_failure() -> None:
    """A cancelled connect frees its place and never counts towards ejection."""
    policy = resolved(Clock(), A, B, C)
    for _ in range(5):
        policy.connecting(A)
        policy.connect_abandoned(A)
    assert states(policy)[A] == ("live", 0)
    assert policy.candidates()[0] == A  # nothing counted against it


def test_a_gone_address_is_forgotten_once_its_last_connect_ends() -> None:
    clock = Clock()
    policy = resolved(clock, A, B)
    policy.connecting(B)
    clock.now += 10
    assert policy.start_refresh()
    assert policy.resolved([A]) == (B,)
    assert states(policy)[B] == ("gone", 0)  # a connect to it still under way
    policy.connect_failed(B)
    assert B not in states(policy)


def test_the_background_resolves_only_an_origin_in_use() -> None:
    """The watchdog asks with background=True: an origin with no connection (and no connect
    under way) is left to its next connect, which asks without it."""
    clock = Clock()
    policy = resolved(clock, A, B, dns_refresh=5.0)
    clock.now += 5
    assert not policy.start_refresh(background=True)
    policy.connecting(A)
    assert policy.start_refresh(background=True)  # a connect under way counts as in use
    policy.resolved([A, B])
    policy.connected(A)
    clock.now += 5
    assert policy.start_refresh(background=True)
    policy.resolved([A, B])
    policy.disconnected(A)
    clock.now += 5
    assert not policy.start_refresh(background=True)
    assert policy.start_refresh()  # the next connect's
