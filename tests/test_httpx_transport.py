"""The httpx and httpx2 transports, piece by piece, against the real TLS upstream: what
reaches the upstream (which counts it), what comes back, and what is left in the pools.

Every test runs once per package: ``httpx.Client(transport=registry.httpx_transport())``
and the same with httpx2.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import threading
import uuid
from collections.abc import Iterator

import pytest
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError, ProtocolError

from poolclient import PoolTimeoutError, Registry, Settings
from poolclient.integrations._httpx_family import mapped_error
from poolclient.retry import DeadlineExceededError
from tests.helpers import refused_url, wait_for

PACKAGES = ["httpx", pytest.param("httpx2", marks=pytest.mark.skipif(
    importlib.util.find_spec("httpx2") is None, reason="httpx2 needs Python 3.11"))]


@pytest.fixture(params=PACKAGES)
def package(request: pytest.FixtureRequest):
    return importlib.import_module(request.param)


def transport_of(registry: Registry, package, **kw):
    if package.__name__ == "httpx2":
        return registry.httpx2_transport(**kw)
    return registry.httpx_transport(**kw)


@pytest.fixture
def client(registry: Registry, package) -> Iterator:
    with package.Client(transport=transport_of(registry, package)) as c:
        yield c


def totals(registry: Registry) -> dict[str, int]:
    return registry.stats().totals()


# --- what is sent ---------------------------------------------------------------------


def test_method_target_and_header_lines_in_order_with_repeats(client, upstream):
    r = client.request("PATCH", upstream.url + "/header-lines?a=1&a=2",
                       headers=[("X-A", "1"), ("X-B", "2"), ("X-A", "3")])
    lines = [tuple(line) for line in r.json()["lines"]]
    mine = [line for line in lines if line[0].startswith("X-")]
    assert mine == [("X-A", "1"), ("X-B", "2"), ("X-A", "3")]
    assert dict(lines)["Host"] == upstream.url.split("//")[1]
    echo = client.request("PATCH", upstream.url + "/echo?a=1&a=2").json()
    assert (echo["method"], echo["path"], echo["query"]) == ("PATCH", "/echo", "a=1&a=2")


def test_response_header_lines_in_order_with_repeats(client, upstream):
    r = client.get(upstream.url + "/repeated-headers")
    lines = [(k, v) for k, v in r.headers.multi_items() if k in ("set-cookie", "x-between")]
    assert lines == [("set-cookie", "a=1"), ("x-between", "1"), ("set-cookie", "b=2")]


def test_upload_is_streamed_chunked_not_read_whole_first(client, upstream, registry):
    """The second part is made only once the upstream has received the first: a transport
    that read the body whole before sending would wait here until the poll failed."""
    first = b"x" * 1000

    def parts() -> Iterator[bytes]:
        yield first
        wait_for(lambda: upstream.stats()["body_bytes"] >= len(first), 10,
                 "the first part to reach the upstream")
        yield b"y" * 24

    r = client.post(upstream.url + "/echo", content=parts())
    assert r.json()["body_length"] == 1024
    assert r.request.headers["transfer-encoding"] == "chunked"


def test_bytes_body_goes_with_its_length(client, upstream):
    r = client.post(upstream.url + "/header-lines", content=b"abc")
    lines = dict((k.lower(), v) for k, v in r.json()["lines"])
    assert lines["content-length"] == "3" and "transfer-encoding" not in lines
    get = dict((k.lower(), v) for k, v in client.get(upstream.url + "/header-lines")
               .json()["lines"])
    assert "content-length" not in get and "transfer-encoding" not in get


def test_a_post_is_never_sent_twice(client, upstream, package):
    """The upstream reads the POST on the pooled connection and closes it unanswered: the
    caller gets the package's RemoteProtocolError, and the upstream got the POST once."""
    assert client.get(upstream.url + "/drop-next").status_code == 200
    request_id = uuid.uuid4().hex
    with pytest.raises(package.RemoteProtocolError):
        client.post(upstream.url + "/echo", content=b"{}", headers={"X-Request-Id": request_id})
    assert upstream.stats()["received"][request_id] == 1


# --- what comes back --------------------------------------------------------------------


def test_first_event_arrives_before_the_upstream_ends_the_stream(client, upstream, registry):
    """The upstream sends one event, then waits for the gate that only this test opens: the
    event must reach the caller while the stream is open, its connection counted as
    streaming."""
    with client.stream("GET", upstream.url + "/gate/first/sse?events=3") as r:
        lines = r.iter_lines()
        assert next(lines) == "data: 0"  # the gate is still shut: the stream cannot be over
        snapshot = totals(registry)
        assert (snapshot["in_use"], snapshot["streaming"]) == (1, 1)
        upstream.open_gate("first")
        rest = [line for line in lines if line]
    assert rest == ["data: 1", "data: 2"]
    snapshot = totals(registry)
    assert (snapshot["in_use"], snapshot["streaming"], snapshot["unread"]) == (0, 0, 0)
    assert snapshot["idle"] == 1


def test_content_decoded_once_and_redirects_followed_once(registry, upstream, package):
    with package.Client(transport=transport_of(registry, package),
                        follow_redirects=True) as client:
        assert client.get(upstream.url + "/gzip").json() == {"gzip": True}
        before = upstream.stats()["requests"]
        r = client.get(upstream.url + "/redirect?to=/echo")
    assert r.json()["path"] == "/echo" and len(r.history) == 1
    assert upstream.stats()["requests"] - before == 2  # the 302 and the GET it led to


def test_http_version_and_reason_phrase(client, upstream):
    r = client.get(upstream.url + "/status/503")
    assert r.status_code == 503
    assert r.extensions["http_version"] == b"HTTP/1.1"
    assert r.extensions["reason_phrase"] == b"Service Unavailable"


# --- timeouts and errors --------------------------------------------------------------


def test_read_timeout_is_the_packages(client, upstream, package, registry):
    with pytest.raises(package.ReadTimeout):
        client.get(upstream.url + "/slow?seconds=5", timeout=package.Timeout(5, read=0.2))
    assert totals(registry)["in_use"] == 0


def test_transport_deadline_cuts_a_longer_read_timeout(registry, upstream, package):
    with package.Client(transport=transport_of(registry, package, deadline=0.3)) as client:
        with pytest.raises(package.ReadTimeout):
            client.get(upstream.url + "/slow?seconds=5", timeout=10)


def test_a_stream_outlives_the_deadline(registry, upstream, package):
    """The deadline ends with the status line: the next event may come later than the
    deadline, within the read timeout (the gate opens twice the deadline after the read
    for that event began; the passing of time is what is tested). The connection is made
    first, without a deadline, so a loaded machine's TLS handshake is not what is timed."""
    registry.request("GET", upstream.url + "/echo")
    with package.Client(transport=transport_of(registry, package, deadline=1.0)) as client, \
            client.stream("GET", upstream.url + "/gate/late/sse?events=2", timeout=5) as r:
        lines = r.iter_lines()
        assert next(lines) == "data: 0"
        opener = threading.Timer(2.0, upstream.open_gate, ("late",))
        opener.start()
        try:
            assert [line for line in lines if line] == ["data: 1"]
        finally:
            opener.join()


def test_pool_wait_is_the_pool_timeout(upstream, package):
    """One connection, held by an open stream: the next call waits its pool timeout."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1))
    try:
        with package.Client(transport=transport_of(registry, package)) as client, \
                client.stream("GET", upstream.url + "/gate/held/sse") as held:
            lines = held.iter_lines()  # kept: httpx2 closes a stream whose iterator is freed
            next(lines)
            with pytest.raises(package.PoolTimeout):
                client.get(upstream.url + "/echo", timeout=package.Timeout(5, pool=0.2))
            upstream.open_gate("held")
    finally:
        registry.close()


def test_refused_is_a_connect_error(client, package):
    with pytest.raises(package.ConnectError):
        client.get(refused_url() + "/echo")


def test_broken_body_is_the_packages_error(client, upstream, package):
    """/reset promises 1,000 bytes, sends 10, then resets the connection."""
    with pytest.raises((package.RemoteProtocolError, package.ReadError)):
        client.get(upstream.url + "/reset")


@pytest.mark.parametrize(("error", "name"), [
    (NewConnectionError(None, "refused"), "ConnectError"),  # type: ignore[arg-type]
    (ConnectTimeoutError("slow connect"), "ConnectTimeout"),
    (DeadlineExceededError(None, "/x"), "ReadTimeout"),
    (PoolTimeoutError(None, "https://h:443", 1, 0.2), "PoolTimeout"),
    (ProtocolError("Connection aborted.", ConnectionResetError()), "ReadError"),
    (ProtocolError("Connection aborted.", BrokenPipeError()), "WriteError"),
    (ProtocolError("Connection broken", __import__("http.client").client.IncompleteRead(b"")),
     "RemoteProtocolError"),
])
def test_exception_mapping(package, error, name):
    request = package.Request("GET", "https://h/")
    mapped = mapped_error(package, error, request, reading=False)
    assert type(mapped) is getattr(package, name)
    assert mapped.request is request


def test_other_errors_pass_as_they_are(package):
    assert mapped_error(package, KeyError("mine"), None, reading=False) is None


def test_bad_argument_names_itself(registry, package):
    with pytest.raises(ValueError, match="deadline=0"):
        transport_of(registry, package, deadline=0)
    with pytest.raises(ValueError, match="connect_retries=-1"):
        transport_of(registry, package, connect_retries=-1)


# --- release ---------------------------------------------------------------------------


def test_a_stream_closed_unread_closes_its_connection_and_counts_it(client, upstream,
                                                                   registry):
    with client.stream("GET", upstream.url + "/gate/cut/sse?events=3") as r:
        lines = r.iter_lines()
        next(lines)
    snapshot = totals(registry)
    assert (snapshot["unread"], snapshot["in_use"], snapshot["streaming"]) == (1, 0, 0)
    upstream.open_gate("cut")  # the upstream sees the close when it writes again
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "the upstream to see the close")
    assert client.get(upstream.url + "/echo").json()["connection"] != 1  # a new one
    assert totals(registry)["connections_opened"] == 2


def test_a_stream_whose_end_has_arrived_keeps_its_connection(client, upstream, registry):
    """An SSE consumer stops at its last event, before the body's final chunk is read:
    the rest is there already, so the connection goes back whole."""
    with client.stream("GET", upstream.url + "/sse?events=2") as r:
        lines = r.iter_lines()
        assert next(lines) == "data: 0"
        wait_for(lambda: upstream.stats()["requests"] == 1, 5, "the request to count")
    assert client.get(upstream.url + "/echo").json()["connection"] == 1
    snapshot = totals(registry)
    assert (snapshot["unread"], snapshot["connections_opened"]) == (0, 1)


def test_closing_the_client_closes_nothing_shared(registry, upstream, package):
    for _ in range(2):
        with package.Client(transport=transport_of(registry, package)) as client:
            assert client.get(upstream.url + "/echo").status_code == 200
    assert totals(registry)["connections_opened"] == 1
    assert upstream.stats()["open"] == 1


def test_threads_share_bounded_pools(registry, upstream, package):
    """16 threads through one client on a pool of 4: at most 4 connections."""
    with package.Client(transport=transport_of(registry, package)) as client:
        def calls() -> None:
            for _ in range(10):
                assert client.get(upstream.url + "/echo").status_code == 200
        threads = [threading.Thread(target=calls) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seen = upstream.stats()
    assert seen["requests"] == 160 and len(seen["connections"]) <= 4


def test_environment_proxies_are_not_used(registry, upstream, package, monkeypatch):
    """As httpx with a transport given: HTTPS_PROXY (here a port nobody listens on) is not
    read; the call goes straight to the upstream."""
    monkeypatch.setenv("HTTPS_PROXY", refused_url().replace("https", "http"))
    with package.Client(transport=transport_of(registry, package)) as client:
        assert client.get(upstream.url + "/echo").status_code == 200


def test_repr_shows_the_package_and_the_registry(registry, package):
    text = repr(transport_of(registry, package))
    assert package.__name__ in text and "Registry" in text and json.dumps(20.0) in text
