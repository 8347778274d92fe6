"""Connection lifetimes, the stale-connection retry, the deadline and backoff, in process,
against the real TLS upstream. The upstream counts what it received, by request id.

The same behaviours under real gunicorn workers are in ``test_faults.py``.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import uuid
from urllib.parse import urlencode

import pytest
import requests
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    TimeoutStateError,
)
from urllib3.util import Timeout

from app.upstream import loopback_hosts
from poolclient import DeadlineExceededError, Registry, Settings
from poolclient import retry as retry_module
from poolclient.redact import redact
from tests.helpers import Upstream, refused_url, start_upstream, wait_for


def make(upstream: Upstream, **settings: object) -> Registry:
    return Registry(Settings(ca_bundle=upstream.ca, **settings))  # type: ignore[arg-type]


@pytest.fixture
def one(upstream: Upstream):
    """A registry with one connection per origin, so every call reuses the same one."""
    reg = make(upstream, maxsize=1)
    yield reg
    reg.close()


def rid() -> str:
    return uuid.uuid4().hex


# --- the stale keep-alive connection ---------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_idempotent_call_on_a_dropped_reused_connection_is_sent_again_once(
    one: Registry, upstream: Upstream, method: str
):
    """The upstream drops the next request on the pooled connection without answering:
    an idempotent call succeeds on a new connection; the upstream got it twice, answered once."""
    assert one.request("GET", upstream.url + "/drop-next").status == 200
    request_id = rid()
    r = one.request(method, upstream.url + "/after", headers={"X-Request-Id": request_id})
    assert r.status == 200
    seen = upstream.stats()
    assert seen["received"][request_id] == 2 and seen["dropped"] == 1
    assert len(seen["connections"]) == 2
    totals = one.stats().totals()
    assert (totals["retried"], totals["errors"], totals["requests"]) == (1, 0, 3)


def test_post_on_a_dropped_reused_connection_is_never_sent_twice(one: Registry, upstream):
    """The same drop for a POST: the caller gets the error, the upstream got the POST once."""
    assert one.request("GET", upstream.url + "/drop-next").status == 200
    request_id = rid()
    with pytest.raises(ProtocolError):
        one.request("POST", upstream.url + "/orders", body=b'{"qty": 1}',
                    headers={"X-Request-Id": request_id})
    seen = upstream.stats()
    assert seen["received"][request_id] == 1
    assert seen["duplicates"] == []
    totals = one.stats().totals()
    assert (totals["retried"], totals["errors"]) == (0, 1)
    # The pool is not poisoned: the next call works, on a new connection.
    assert one.request("POST", upstream.url + "/orders", body=b"{}").status == 200


def test_streamed_body_is_not_replayed(one: Registry, upstream: Upstream):
    """A PUT whose body is a generator cannot be sent again, so it is not."""
    assert one.request("GET", upstream.url + "/drop-next").status == 200
    request_id = rid()
    with pytest.raises(ProtocolError):
        one.request("PUT", upstream.url + "/blob", body=iter([b"a", b"b"]),
                    headers={"X-Request-Id": request_id, "Content-Length": "2"})
    assert upstream.stats()["received"][request_id] == 1


def test_session_gets_the_same_retry(one: Registry, upstream: Upstream):
    """Through .session(): GET retried once on a new connection, POST raised, never resent."""
    with one.session() as s:
        assert s.get(upstream.url + "/drop-next").status_code == 200
        get_id, post_id = rid(), rid()
        assert s.get(upstream.url + "/x", headers={"X-Request-Id": get_id}).status_code == 200
        assert s.get(upstream.url + "/drop-next").status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            s.post(upstream.url + "/x", data=b"1", headers={"X-Request-Id": post_id})
    seen = upstream.stats()
    assert (seen["received"][get_id], seen["received"][post_id]) == (2, 1)
    assert one.stats().totals()["retried"] == 1


def test_reset_mid_response_is_not_retried(one: Registry, upstream: Upstream):
    """Response bytes arrived before the reset: the GET fails and is not sent again."""
    request_id = rid()
    with pytest.raises(ProtocolError):
        one.request("GET", upstream.url + "/reset", headers={"X-Request-Id": request_id})
    assert upstream.stats()["received"][request_id] == 1
    assert one.stats().totals()["retried"] == 0


# --- lifetimes -------------------------------------------------------------------------


def test_idle_connection_past_idle_timeout_is_replaced(upstream: Upstream):
    """A connection idle longer than POOLCLIENT_IDLE_TIMEOUT is closed on checkout and a new
    one opened; within the timeout it is reused."""
    reg = make(upstream, maxsize=1, idle_timeout=0.3)
    try:
        a = reg.request("GET", upstream.url + "/a").json()["connection"]
        b = reg.request("GET", upstream.url + "/b").json()["connection"]
        time.sleep(0.4)  # the idleness under test, not synchronisation
        c = reg.request("GET", upstream.url + "/c").json()["connection"]
        assert a == b != c
        totals = reg.stats().totals()
        assert (totals["expired"], totals["connections_opened"], totals["reused"]) == (1, 2, 1)
        assert len(upstream.stats()["connections"]) == 2
    finally:
        reg.close()


def test_connection_past_max_lifetime_is_retired_after_its_request(upstream: Upstream):
    """A connection older than POOLCLIENT_MAX_LIFETIME is closed when its request is done,
    even though it never sat idle long."""
    reg = make(upstream, maxsize=1, max_lifetime=0.3, idle_timeout=60)
    try:
        first = reg.request("GET", upstream.url + "/a").json()["connection"]
        deadline = time.monotonic() + 0.35
        seen = {first}
        while time.monotonic() < deadline:  # busy: never idle for more than one call
            seen.add(reg.request("GET", upstream.url + "/b").json()["connection"])
        after = reg.request("GET", upstream.url + "/c").json()["connection"]
        assert after != first
        totals = reg.stats().totals()
        assert totals["retired"] >= 1 and totals["expired"] == 0 and totals["errors"] == 0
        assert totals["connections_opened"] == len(upstream.stats()["connections"])
    finally:
        reg.close()


def test_an_evicted_pool_closes_its_connections_without_the_garbage_collector(tmp_path):
    """POOLCLIENT_MAX_HOSTS=1 over three hosts, with the garbage collector off: each pool
    evicted is freed at once, and urllib3 then closes its connection, so nothing that
    refers back to a pool (as its counters might) may keep it alive."""
    upstream = start_upstream(str(tmp_path / "up"), "--hosts", "3")
    try:
        reg = make(upstream, max_hosts=1)
        gc.disable()
        try:
            for host in loopback_hosts(3):
                assert reg.request("GET", f"https://{host}:{upstream.port}/a").status == 200
            assert len(upstream.stats()["connections"]) == 3
            wait_for(lambda: upstream.stats()["open"] == 1, 10, "the evicted pools' "
                     "connections to close")
        finally:
            gc.enable()
            reg.close()
    finally:
        upstream.stop()


# --- deadline and backoff --------------------------------------------------------------


def test_slow_upstream_times_out_at_the_read_timeout_once(one: Registry, upstream: Upstream):
    """A read timeout is raised as itself and not retried: the upstream got the call once."""
    reg = make(upstream, maxsize=1, read_timeout=0.3)
    try:
        request_id = rid()
        with pytest.raises(ReadTimeoutError):
            reg.request("GET", upstream.url + "/slow?seconds=2",
                        headers={"X-Request-Id": request_id})
        assert upstream.stats()["received"][request_id] == 1
        assert reg.request("GET", upstream.url + "/next").status == 200
    finally:
        reg.close()


@pytest.mark.parametrize("reused", [False, True])
def test_deadline_cuts_the_read_timeout(one: Registry, upstream: Upstream, reused: bool):
    """With a 15 s read timeout, a call given deadline=0.3 gives up in well under 15 s, as
    DeadlineExceededError, on a new connection as on a reused one; it was sent once."""
    if reused:
        assert one.request("GET", upstream.url + "/warm").status == 200
    opened = one.stats().totals()["connections_opened"]
    request_id = rid()
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        one.request("GET", upstream.url + "/slow?seconds=2", deadline=0.3,
                    headers={"X-Request-Id": request_id})
    assert time.monotonic() - started < 1.5
    assert upstream.stats()["received"][request_id] == 1
    assert one.stats().totals()["connections_opened"] == opened + (0 if reused else 1)


def test_deadline_cuts_a_tls_handshake_that_never_completes():
    """A listener that accepts and never answers the handshake: with a 5 s connect timeout
    and deadline=0.3 the call gives up in well under 5 s, as DeadlineExceededError."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        reg = Registry(Settings(connect_timeout=5.0, connect_retries=0))
        try:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                reg.request("GET", f"https://127.0.0.1:{silent.getsockname()[1]}/",
                            deadline=0.3)
            assert time.monotonic() - started < 1.5
        finally:
            reg.close()


@pytest.mark.parametrize("given", [Timeout(connect=2.0, read=7.0), Timeout(connect=2.0, read=7.0,
                                   total=3.0), Timeout(total=4.0), Timeout(None)])
def test_validated_timeout_behaves_as_urllib3s(given: Timeout):
    """A copy of the pools' timeout gives urllib3 the values its own copy would, with a
    clock of its own."""
    vt = retry_module.ValidatedTimeout(connect=given._connect, read=given._read,
                                       total=given.total)
    mine, theirs = vt.clone(), given.clone()
    assert type(mine) is retry_module.ValidatedTimeout
    assert (mine.connect_timeout, mine.total) == (theirs.connect_timeout, theirs.total)
    mine.start_connect()
    theirs.start_connect()
    assert mine.read_timeout == pytest.approx(theirs.read_timeout, abs=0.05)
    with pytest.raises(TimeoutStateError):
        mine.start_connect()
    assert vt._start_connect is None  # the copy's clock is its own


def test_validated_timeout_still_rejects_bad_values():
    with pytest.raises(ValueError, match="read"):
        retry_module.ValidatedTimeout(connect=1.0, read=-1)
    with pytest.raises(ValueError, match="boolean"):
        retry_module.ValidatedTimeout(total=True)


def test_connect_retries_stop_at_the_deadline():
    """Many connect retries against a refusing port end with DeadlineExceededError naming
    the last error, once the deadline is spent."""
    reg = Registry(Settings(connect_retries=1000, backoff=0.05, deadline=0.5))
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            reg.request("GET", refused_url() + "/x")
        assert time.monotonic() - started < 2.0
        assert "NewConnectionError" in repr(info.value.last_error) or "refused" in str(
            info.value)
        assert reg.stats().totals()["errors"] >= 2
    finally:
        reg.close()


def test_connect_retries_without_deadline_pressure_are_counted():
    """connect_retries=2: three attempts, then MaxRetryError whose reason is the refusal."""
    reg = Registry(Settings(connect_retries=2, backoff=0.01))
    try:
        with pytest.raises(MaxRetryError) as info:
            reg.request("GET", refused_url() + "/x")
        assert "refused" in str(info.value.reason).lower()
        assert reg.stats().totals()["errors"] == 3
    finally:
        reg.close()


def test_backoff_is_jittered_bounded_and_cut_by_the_deadline():
    """Full jitter: the wait after the n-th connect error lies in [0, backoff * 2**(n-1)],
    varies between draws, and never reaches past the call's deadline."""
    policy = retry_module.policy(Settings(backoff=0.1, connect_retries=10))
    refused = NewConnectionError(None, "refused")  # type: ignore[arg-type]
    r = policy
    for n in range(1, 5):
        r = r.increment(method="GET", url="/", error=refused)
        draws = {r.get_backoff_time() for _ in range(20)}
        assert all(0.0 <= d <= 0.1 * 2 ** (n - 1) for d in draws), (n, draws)
        assert len(draws) > 1
    with retry_module.deadline(0.01):
        assert all(r.get_backoff_time() <= 0.01 for _ in range(20))


def test_deadline_is_per_call_and_nested_calls_share_it():
    """A deadline started inside another keeps the outer one (retries and redirects belong
    to the call that started them); outside any call there is none."""
    assert retry_module.remaining() is None
    with retry_module.deadline(10):
        outer = retry_module.remaining()
        with retry_module.deadline(1000):
            inner = retry_module.remaining()
        assert outer is not None and inner is not None and inner <= outer <= 10
    assert retry_module.remaining() is None


def test_each_wait_is_bounded_by_what_is_left_of_the_deadline():
    """A wait's timeout is cut to what is left, never to 0 (a non-blocking socket), and is
    left alone outside a call or when the deadline allows it."""
    assert retry_module.bounded(5.0) == 5.0
    assert retry_module.bounded(None) is None
    with retry_module.deadline(10):
        assert retry_module.bounded(3.0) == 3.0
        assert 9 < retry_module.bounded(60.0) <= 10  # type: ignore[operator]
        assert 9 < retry_module.bounded(None) <= 10  # type: ignore[operator]
    with retry_module.deadline(0.0):
        assert retry_module.bounded(5.0) == retry_module.bounded(None) == 0.001


# --- secrets in logs -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:pa55@api.example/x", "https://***@api.example/x"),
    ("GET /items?access_token=abc&page=2 HTTP/1.1",
     "GET /items?access_token=***&page=*** HTTP/1.1"),
    ("Redirecting https://h/a?sig=1 -> https://u:p@h2/b?k=v",
     "Redirecting https://h/a?sig=*** -> https://***@h2/b?k=***"),
    ("http://u:p@ss@127.0.0.1:8/x", "http://***@127.0.0.1:8/x"),  # "@" in the password
    ("/x?sig=ab'cd&k=v", "/x?sig=***&k=***"),  # urllib3 leaves "'" unencoded
    ("/x?=lonely", "/x?=***"),
    ("no url here", "no url here"),
])
def test_redact(text: str, expected: str):
    assert redact(text) == expected


def test_urllib3_debug_lines_carry_no_query_secrets(one: Registry, upstream, caplog):
    """With urllib3 logging at DEBUG, the request line is logged, its query values masked."""
    # urllib3's own logger too: a kubernetes Configuration sets it to WARNING when made.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")
    one.request("GET", upstream.url + "/items?access_token=SECRET-42&page=2")
    assert "/items?access_token=***&page=***" in caplog.text
    assert "SECRET-42" not in caplog.text


@pytest.mark.parametrize("retries", [False, 0], ids=["retries-False", "retries-0"])
def test_no_retries_means_no_stale_retry_either(one: Registry, upstream: Upstream, retries):
    """A caller that passes retries=False or 0 gets the dropped connection's error as is."""
    assert one.request("GET", upstream.url + "/drop-next").status == 200
    request_id = rid()
    with pytest.raises((ProtocolError, MaxRetryError)):
        one.request("GET", upstream.url + "/x", retries=retries,
                    headers={"X-Request-Id": request_id})
    assert upstream.stats()["received"][request_id] == 1
    assert one.stats().totals()["retried"] == 0


def test_pool_wait_counts_against_the_deadline(upstream: Upstream):
    """maxsize 1, deadline 1 s: a caller that waited 0.8 s for the connection has 0.2 s
    left for its own request, and gets DeadlineExceededError, not a fresh full timeout."""
    reg = make(upstream, maxsize=1, deadline=1.0, pool_timeout=5)
    try:
        holder_has_it = threading.Event()
        first = threading.Thread(target=lambda: (
            holder_has_it.set(), reg.request("GET", upstream.url + "/slow?seconds=0.8")))
        first.start()
        holder_has_it.wait()
        wait_for(lambda: reg.stats().totals()["in_use"] == 1, 5, "the first call to start")
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            reg.request("GET", upstream.url + "/slow?seconds=0.5")
        elapsed = time.monotonic() - started
        first.join()
        assert elapsed < 1.6
    finally:
        reg.close()


def test_a_session_request_has_one_deadline_across_redirects(upstream: Upstream):
    """Each redirect hop of a .session() request sees the same, shrinking deadline."""
    reg = make(upstream, maxsize=1, deadline=7.0)
    seen: list[float | None] = []
    try:
        with reg.session() as s:
            s.hooks["response"].append(lambda r, **kw: seen.append(retry_module.remaining()))
            target = upstream.url + "/redirect?" + urlencode({"to": upstream.url + "/end"})
            assert s.get(target).json()["path"] == "/end"
        assert len(seen) == 2 and all(left is not None for left in seen)
        assert 0 < seen[1] <= seen[0] <= 7.0  # type: ignore[operator]
        assert retry_module.remaining() is None
    finally:
        reg.close()


# --- connection events in the log ------------------------------------------------------


def events(caplog) -> list[dict[str, str]]:
    """The poolclient.connections lines, parsed from logfmt."""
    return [dict(field.split("=", 1) for field in r.getMessage().split())
            for r in caplog.records if r.name == "poolclient.connections"]


def test_connection_events_are_logged_one_line_each(upstream: Upstream, caplog):
    """opened (with handshake time), reused, expired, retired, retried: one DEBUG line
    each, naming the event, the origin and the connection."""
    caplog.set_level(logging.DEBUG, logger="poolclient.connections")
    reg = make(upstream, maxsize=1, idle_timeout=0.2, max_lifetime=60)
    try:
        reg.request("GET", upstream.url + "/a")
        reg.request("GET", upstream.url + "/drop-next")
        reg.request("GET", upstream.url + "/retried")
        time.sleep(0.3)  # the idleness under test
        reg.request("GET", upstream.url + "/after-expiry")
    finally:
        reg.close()
    seen = events(caplog)
    names = [e["event"] for e in seen]
    assert names == ["opened", "reused", "reused", "retried", "opened", "expired", "opened"]
    origin = f"https://127.0.0.1:{upstream.port}"
    assert all(e["origin"] == origin and e["conn"] for e in seen)
    assert float(seen[0]["handshake_ms"]) > 0 and seen[0]["reconnect"] == "False"
    assert seen[4]["reconnect"] == "True" and float(seen[5]["idle_s"]) >= 0.2

    caplog.clear()
    old = make(upstream, maxsize=1, max_lifetime=0.1)
    try:
        old.request("GET", upstream.url + "/a")
        time.sleep(0.15)  # the age under test
        old.request("GET", upstream.url + "/b")
    finally:
        old.close()
    assert [e["event"] for e in events(caplog)] == ["opened", "retired", "opened"]


def test_a_connection_the_upstream_closed_is_logged_as_dropped(tmp_path, caplog):
    """The upstream closes the idle connection; the next checkout logs dropped, then a
    reconnect."""
    up = start_upstream(str(tmp_path / "up"), "--idle-close", "0.2")
    caplog.set_level(logging.DEBUG, logger="poolclient.connections")
    reg = make(up, maxsize=1)
    try:
        reg.request("GET", up.url + "/a")
        wait_for(lambda: up.stats()["open"] == 0, 5, "the upstream to close it")
        reg.request("GET", up.url + "/b")
    finally:
        reg.close()
        up.stop()
    assert [e["event"] for e in events(caplog)] == ["opened", "dropped", "opened"]


def test_discarded_overflow_connection_is_logged(upstream: Upstream, caplog):
    """POOLCLIENT_BLOCK=false, maxsize 1, two concurrent calls: the overflow connection is
    closed when returned, counted and logged as discarded."""
    caplog.set_level(logging.DEBUG, logger="poolclient.connections")
    reg = make(upstream, maxsize=1, block=False)
    try:
        threads = [threading.Thread(target=reg.request,
                                    args=("GET", upstream.url + "/slow?seconds=0.3"))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert reg.stats().totals()["discarded"] == 1
    finally:
        reg.close()
    assert [e["event"] for e in events(caplog)].count("discarded") == 1
