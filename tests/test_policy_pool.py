"""The origins' policy wired into the sync pools, against the real TLS upstream: refusals
before any socket, what counts against a breaker and what never does, the retry budget
on connect retries and stale resends, stalls aborted by the watchdog, the bulkhead, a
policy per process, and what /health, /metrics and the example relay show. Each count
that matters is the upstream's own (requests received, by request id) where the
upstream can see it; refused connects it cannot, so there the policy's counts are read.

The policy's state machines themselves are unit-tested on a fake clock in the other
``test_policy_*`` files; the same behaviours under real gunicorn are in
``test_resilience_gunicorn.py``.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
import uuid

import httpx
import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from app.relay import classify
from poolclient import Registry, Settings, metrics
from poolclient.pool import PoolTimeoutError, StalledReadTimeoutError
from poolclient.render import health_document
from poolclient.resilience import (
    BulkheadFullError,
    CircuitOpenError,
    PolicySettings,
    RetryBudgetExhaustedError,
    StalledError,
)
from tests.helpers import Upstream, refused_url, wait_for


def make(upstream: Upstream | None = None, maxsize: int = 4, **policy: object) -> Registry:
    settings = Settings(ca_bundle=upstream.ca if upstream else None, maxsize=maxsize,
                        pool_timeout=2)
    return Registry(settings, default_maxsize=4,
                    policy=PolicySettings(**policy))  # type: ignore[arg-type]


def origin(reg: Registry, url: str):
    scheme, rest = url.split("://")
    host, port = rest.split("/")[0].rsplit(":", 1)
    return reg.policy(scheme, host, int(port))


def rid() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def reg(upstream: Upstream):
    registry = make(upstream)
    yield registry
    registry.close()


# --- the breaker ------------------------------------------------------------------------


def test_healthy_calls_are_never_refused_and_leave_nothing_in_flight(reg, upstream):
    """Forty calls, four at a time, all answered: none refused, none in flight after, the
    breaker closed, and the route's waits sampled for the stall detector."""
    def four() -> None:
        for _ in range(10):
            assert reg.request("GET", upstream.url + "/items/42").status == 200

    threads = [threading.Thread(target=four) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert upstream.stats()["requests"] == 40
    (snap,) = reg.stats().policies
    assert snap.origin == f"https://127.0.0.1:{upstream.port}"
    assert snap.breaker is not None and snap.breaker.state == "closed"
    assert snap.in_flight == 0 and snap.refused == {"open": 0, "overflow": 0, "budget": 0}
    assert snap.routes["GET /items/*"][0] == 40


def test_gateway_errors_open_the_breaker_then_calls_are_refused_before_any_socket(reg,
                                                                                 upstream):
    """Five 503s in a row open the breaker: the sixth call raises CircuitOpenError naming
    the origin and never reaches the upstream; requests raises it as ConnectionError and
    httpx's transport as ConnectError."""
    for _ in range(5):
        assert reg.request("GET", upstream.url + "/status/503").status == 503
    with pytest.raises(CircuitOpenError) as caught:
        reg.request("GET", upstream.url + "/items", headers={"X-Request-Id": rid()})
    err = caught.value
    assert err.origin == f"https://127.0.0.1:{upstream.port}"
    assert err.last_failure == "gateway_error" and err.retry_after > 0
    assert pickle.loads(pickle.dumps(err)).origin == err.origin
    with reg.session() as s, pytest.raises(requests.ConnectionError):
        s.get(upstream.url + "/items")
    with httpx.Client(transport=reg.httpx_transport()) as client, \
            pytest.raises(httpx.ConnectError):
        client.get(upstream.url + "/items")
    assert upstream.stats()["requests"] == 5  # nothing after the breaker opened
    (snap,) = reg.stats().policies
    assert snap.breaker is not None and snap.breaker.state == "open"
    assert snap.refused["open"] == 3 and snap.breaker.opens == 1
    # The example relay's answer: 503 JSON with the seconds left as Retry-After.
    status, cause, headers = classify(err, 5.0)
    assert status == 503 and "upstream call refused" in cause and "circuit open" in cause
    assert headers == [("Retry-After", str(math.ceil(err.retry_after)))]


def test_the_breaker_half_opens_and_one_good_probe_closes_it(upstream):
    """Open for at most 0.2 s: a later call is the probe, succeeds, and closes it."""
    reg = make(upstream, breaker_open=0.2, breaker_open_max=0.2)
    try:
        for _ in range(5):
            reg.request("GET", upstream.url + "/status/502")

        def probe_passes() -> bool:
            try:
                return reg.request("GET", upstream.url + "/items").status == 200
            except CircuitOpenError:
                return False

        wait_for(probe_passes, 10, "the breaker to half-open and its probe to pass")
        (snap,) = reg.stats().policies
        assert snap.breaker is not None and snap.breaker.state == "closed"
        assert upstream.stats()["requests"] == 6  # five 502s, one probe
    finally:
        reg.close()


def test_4xx_429_and_500_never_count_against_the_origin(reg, upstream):
    """Ten each of 404, 429 and 500: the breaker stays closed with no failure counted."""
    for status in (404, 429, 500):
        for _ in range(10):
            assert reg.request("GET", f"{upstream.url}/status/{status}").status == status
    (snap,) = reg.stats().policies
    assert snap.breaker is not None
    assert (snap.breaker.state, snap.breaker.window_failures) == ("closed", 0)
    assert upstream.stats()["requests"] == 30


def test_a_full_pool_never_opens_the_breaker(upstream):
    """maxsize 1, held by an unread response: eight callers time out waiting for the pool
    (PoolTimeoutError), and the breaker stays closed, nothing refused by the policy."""
    reg = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=0.05),
                   policy=PolicySettings())
    try:
        held = reg.request("GET", upstream.url + "/items", preload_content=False)
        for _ in range(8):
            with pytest.raises(PoolTimeoutError):
                reg.request("GET", upstream.url + "/items")
        held.release_conn()
        assert reg.request("GET", upstream.url + "/items").status == 200
        (snap,) = reg.stats().policies
        assert snap.breaker is not None and snap.breaker.state == "closed"
        assert snap.breaker.consecutive_failures == 0 and snap.refused["open"] == 0
        assert snap.in_flight == 0
    finally:
        reg.close()


def test_connect_failures_open_the_breaker():
    """A refused port: each call's attempts (first and connect retries) count; the
    breaker opens, and the next call is refused without a connect."""
    reg = make()
    url = refused_url()
    try:
        with pytest.raises(MaxRetryError):
            reg.request("GET", url + "/x")
        with pytest.raises(MaxRetryError):
            reg.request("GET", url + "/x")
        with pytest.raises(CircuitOpenError) as caught:
            reg.request("GET", url + "/x")
        assert caught.value.last_failure == "connect_error"
    finally:
        reg.close()


# --- the retry budget -------------------------------------------------------------------


def test_connect_retries_draw_on_the_budget_and_stop_when_it_is_spent():
    """Budget of no retries at all (ratio 0, floor 0): a refused connect is not retried,
    the caller gets urllib3's MaxRetryError of the connect error, caused by the budget's
    refusal; with the default budget the same call is retried twice."""
    url = refused_url()
    spent = make(retry_budget_ratio=0, retry_budget_floor=0, breaker=False)
    try:
        with pytest.raises(MaxRetryError) as caught:
            spent.request("GET", url + "/x")
        assert isinstance(caught.value.reason, NewConnectionError)
        assert isinstance(caught.value.__cause__, RetryBudgetExhaustedError)
        (snap,) = spent.stats().policies
        assert snap.budget is not None
        assert snap.budget.refused["connect"] == 1 and snap.budget.retried["connect"] == 0
        assert snap.refused["budget"] == 1
    finally:
        spent.close()
    default = make(breaker=False)
    try:
        with pytest.raises(MaxRetryError):
            default.request("GET", url + "/x")
        (snap,) = default.stats().policies
        assert snap.budget is not None and snap.budget.retried["connect"] == 2
    finally:
        default.close()


def test_stale_resend_is_within_the_budget(upstream):
    """The upstream drops the pooled connection's next request unanswered: with budget,
    the GET is sent again once and succeeds; without, it fails and the upstream got it
    once."""
    reg = make(upstream, maxsize=1)
    try:
        reg.request("GET", upstream.url + "/drop-next")
        ok = rid()
        assert reg.request("GET", upstream.url + "/a", headers={"X-Request-Id": ok}).status == 200
        (snap,) = reg.stats().policies
        assert snap.budget is not None and snap.budget.retried["stale"] == 1
        assert snap.breaker is not None and snap.breaker.window_failures == 0
    finally:
        reg.close()
    spent = make(upstream, maxsize=1, retry_budget_ratio=0, retry_budget_floor=0)
    try:
        spent.request("GET", upstream.url + "/drop-next")
        once = rid()
        with pytest.raises(ProtocolError):
            spent.request("GET", upstream.url + "/a", headers={"X-Request-Id": once})
        (snap,) = spent.stats().policies
        assert snap.budget is not None and snap.budget.refused["stale"] == 1
    finally:
        spent.close()
    seen = upstream.stats()["received"]
    assert (seen[ok], seen[once]) == (2, 1)


# --- stalls and the bulkhead ------------------------------------------------------------


def learn(reg: Registry, upstream: Upstream, n: int = 25) -> None:
    """Enough quick calls on GET /slow for the stall detector to judge the route."""
    for _ in range(n):
        assert reg.request("GET", upstream.url + "/slow?seconds=0").status == 200


def test_a_stalled_call_is_aborted_as_a_read_timeout_and_not_resent(upstream):
    """Once GET /slow has a history of quick answers, a call the upstream holds for 30 s
    is aborted by the watchdog (its socket shut down) well before the 30 s read timeout:
    StalledReadTimeoutError, a urllib3 ReadTimeoutError (requests' ReadTimeout); the
    upstream received it once, and the connection is not returned to the pool."""
    reg = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, read_timeout=30, deadline=60),
                   default_maxsize=4, policy=PolicySettings(stall_floor=0.5))
    try:
        learn(reg, upstream)
        stalled = rid()
        with pytest.raises(StalledReadTimeoutError) as caught:
            reg.request("GET", upstream.url + "/slow?seconds=30",
                        headers={"X-Request-Id": stalled})
        err = caught.value
        assert isinstance(err, ReadTimeoutError) and isinstance(err, StalledError)
        assert not isinstance(err, OSError)
        assert err.threshold == pytest.approx(0.5)
        assert pickle.loads(pickle.dumps(err)).origin == err.origin
        # Through requests: its ReadTimeout.
        with reg.session() as s, pytest.raises(requests.ReadTimeout):
            s.get(upstream.url + "/slow?seconds=30")
        assert upstream.stats()["received"][stalled] == 1
        (snap,) = reg.stats().policies
        assert snap.stalled == 2 and snap.in_flight == 0 and snap.degraded
        assert reg.stats().totals()["in_use"] == 0
        assert reg.request("GET", upstream.url + "/items").status == 200
    finally:
        reg.close()


def test_a_degraded_origin_holds_at_most_its_share(upstream):
    """Concurrency 4, share 0.5: two streams held open at the upstream, then a stall makes
    the origin degraded; a third call is refused at once with BulkheadFullError and never
    reaches the upstream. Once the streams are released, calls pass again."""
    reg = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, read_timeout=30, deadline=60),
                   default_maxsize=4, policy=PolicySettings(stall_floor=0.5))
    try:
        learn(reg, upstream)
        held = [reg.request("GET", upstream.url + f"/gate/g{i}/sse", preload_content=False)
                for i in range(2)]
        with pytest.raises(StalledReadTimeoutError):
            reg.request("GET", upstream.url + "/slow?seconds=30")
        refused = rid()
        with pytest.raises(BulkheadFullError) as caught:
            reg.request("GET", upstream.url + "/items", headers={"X-Request-Id": refused})
        assert (caught.value.in_flight, caught.value.limit) == (2, 2)
        assert refused not in upstream.stats()["received"]
        for i, response in enumerate(held):
            upstream.open_gate(f"g{i}")
            response.read()
            response.release_conn()
        assert reg.request("GET", upstream.url + "/items").status == 200
        (snap,) = reg.stats().policies
        assert snap.refused["overflow"] == 1 and snap.in_flight == 0
    finally:
        reg.close()


# --- per process, visible ---------------------------------------------------------------


def test_each_process_has_its_own_policy(upstream):
    """A breaker opened in the parent is not the child's: after a fork the child's policy
    for the origin is new and closed, and its call passes; the parent's stays open."""
    reg = make(upstream)
    try:
        for _ in range(5):
            reg.request("GET", upstream.url + "/status/503")
        parent = origin(reg, upstream.url)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave without running any cleanup
            try:
                child = origin(reg, upstream.url)
                ok = (child is not parent and child.snapshot().breaker.state == "closed"
                      and reg.request("GET", upstream.url + "/items").status == 200)
                os.write(write, b"1" if ok else b"0")
            finally:
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.close(read)
        os.waitpid(pid, 0)
        assert origin(reg, upstream.url) is parent
        with pytest.raises(CircuitOpenError):
            reg.request("GET", upstream.url + "/items")
    finally:
        reg.close()


def test_health_and_metrics_show_the_origin(reg, upstream):
    """/health's document has the origin's breaker (open, why, for how long), in flight
    and limit, refusals and budget, and a breaker check that warns; /metrics counts the
    transition, the refusal and one worker with its breaker open."""
    for _ in range(5):
        reg.request("GET", upstream.url + "/status/504")
    with pytest.raises(CircuitOpenError):
        reg.request("GET", upstream.url + "/items")
    doc = health_document(reg.stats())
    (entry,) = doc["origins"]
    assert entry["origin"] == f"https://127.0.0.1:{upstream.port}"
    assert entry["breaker"]["state"] == "open" and entry["breaker"]["open_for"] > 0
    assert entry["breaker"]["reason"] == "5 failures in a row"
    assert entry["breaker"]["last_failure"] == "gateway_error"
    assert (entry["in_flight"], entry["limit"]) == (0, 2)
    assert entry["refused"]["open"] == 1 and entry["budget"]["first_attempts"] == 5
    check = doc["checks"][f"127.0.0.1:{upstream.port}:breaker"][0]
    assert (check["observedValue"], check["status"]) == ("open", "warn")
    assert doc["status"] == "warn"
    if not metrics.available():
        pytest.skip("prometheus-client is not installed")
    text = metrics.render()[0].decode()
    where = f'host="127.0.0.1",port="{upstream.port}"'
    assert f'poolclient_breaker_open{{{where},scheme="https"}} 1.0' in text
    assert f'poolclient_breaker_transitions_total{{{where},scheme="https",to="open"}} 1.0' \
        in text
    assert f'poolclient_refused_total{{{where},reason="open",scheme="https"}} 1.0' in text


def test_every_protection_off_admits_everything(upstream):
    """PolicySettings.off(): ten 503s and the next call still reaches the upstream."""
    reg = Registry(Settings(ca_bundle=upstream.ca), policy=PolicySettings.off())
    try:
        for _ in range(11):
            assert reg.request("GET", upstream.url + "/status/503").status == 503
        assert upstream.stats()["requests"] == 11
        (snap,) = reg.stats().policies
        assert snap.breaker is None and snap.budget is None and snap.limit is None
    finally:
        reg.close()
