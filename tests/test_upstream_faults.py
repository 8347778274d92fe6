"""The fault-injecting upstream itself, through plain urllib3, ssl and socket clients: the
faults the poolclient tests rely on must be exactly what they claim to be."""

from __future__ import annotations

import errno
import http.client
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator

import pytest
import urllib3
from urllib3.util import Retry

from app.upstream import GARBAGE
from tests.helpers import Upstream, open_fds, sockets_to, start_upstream, wait_for

Start = Callable[..., Upstream]

CLOSE_WAIT = "08"  # the peer sent its FIN, this side has not closed yet


@pytest.fixture
def start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Start]:
    """Start upstreams with extra flags, each with its own CA; stop them afterwards."""
    started: list[Upstream] = []

    def run(*args: str) -> Upstream:
        started.append(start_upstream(str(tmp_path_factory.mktemp("upstream")), *args))
        return started[-1]

    yield run
    for upstream in started:
        upstream.stop()


def tls_socket(upstream: Upstream, host: str = "127.0.0.1") -> ssl.SSLSocket:
    """A verified TLS connection to ``host`` on the upstream's port."""
    context = ssl.create_default_context(cafile=upstream.ca)
    sock = socket.create_connection((host, upstream.port), timeout=5)
    return context.wrap_socket(sock, server_hostname=host)


def read_until(sock: ssl.SSLSocket, end: bytes) -> bytes:
    """What arrives up to ``end``, and no further: reading on to the EOF would make the
    client's TLS answer the missing close_notify with an alert, which the closed upstream
    socket answers with a RST."""
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def tcp_state(sock: socket.socket) -> str | None:
    """The kernel's TCP state of ``sock`` (as /proc/self/net/tcp writes it), None once
    the connection is closed (a reset one is no longer listed)."""
    inode = str(os.fstat(sock.fileno()).st_ino)
    with open("/proc/self/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            if fields[9] == inode:
                return fields[3]
    return None


def seconds_to_fin(sock: socket.socket) -> float:
    """How long until the peer closes its side of ``sock``, polled."""
    began = time.monotonic()
    wait_for(lambda: tcp_state(sock) == CLOSE_WAIT, 5, "the peer's FIN")
    return time.monotonic() - began


def pool(upstream: Upstream, **kwargs: object) -> urllib3.HTTPSConnectionPool:
    return urllib3.HTTPSConnectionPool("127.0.0.1", upstream.port, ca_certs=upstream.ca,
                                       maxsize=1, **kwargs)  # type: ignore[arg-type]


def test_drop_next_drops_exactly_the_next_request_on_its_connection(upstream):
    """The request after /drop-next is read and counted, then met by a silent close; the
    request after that, on a new connection, is answered."""
    with pool(upstream, retries=False) as http:
        assert http.request("GET", "/drop-next", headers={"X-Request-Id": "a"}).status == 200
        with pytest.raises(urllib3.exceptions.ProtocolError, match="RemoteDisconnected"):
            http.request("POST", "/x", body=b"lost", headers={"X-Request-Id": "b"})
        after = http.request("GET", "/y", headers={"X-Request-Id": "c"})
        assert (after.status, after.json()["request"]) == (200, 1)
    seen = upstream.stats()
    assert seen["received"] == {"a": 1, "b": 1, "c": 1}
    assert (seen["dropped"], seen["duplicates"], seen["requests"]) == (1, [], 3)
    assert seen["methods"] == {"GET": 2, "POST": 1}
    assert [c["requests"] for c in seen["connections"]] == [2, 1]
    assert not seen["connections"][0]["open"]


def test_a_retried_request_is_reported_as_a_duplicate(upstream):
    """urllib3 retries the dropped GET on a new connection: its id is received twice."""
    with pool(upstream, retries=Retry(total=1)) as http:
        http.request("GET", "/drop-next")
        assert http.request("GET", "/again", headers={"X-Request-Id": "dup"}).status == 200
    seen = upstream.stats()
    assert (seen["received"], seen["duplicates"], seen["dropped"]) == ({"dup": 2}, ["dup"], 1)


def test_reset_sends_part_of_the_body_then_a_rst(upstream):
    with tls_socket(upstream) as sock:
        sock.sendall(b"GET /reset HTTP/1.1\r\nHost: upstream\r\n\r\n")
        head, _, body = read_until(sock, b"0123456789").partition(b"\r\n\r\n")
        wait_for(lambda: tcp_state(sock) is None, 5, "the connection to be reset")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    assert b"Content-Length: 1000" in head and body == b"0123456789"
    with pool(upstream, retries=False) as http, pytest.raises(
            urllib3.exceptions.ProtocolError, match="10 bytes read, 990 more expected"):
        http.request("GET", "/reset")


def test_garbage_is_not_http_then_a_close(upstream):
    with tls_socket(upstream) as sock:
        sock.sendall(b"GET /garbage HTTP/1.1\r\nHost: upstream\r\n\r\n")
        assert read_until(sock, GARBAGE) == GARBAGE
        assert seconds_to_fin(sock) < 3
    with pool(upstream, retries=False) as http, pytest.raises(
            urllib3.exceptions.ProtocolError, match="BadStatusLine"):
        http.request("GET", "/garbage")


def test_methods_and_echo_paths(upstream):
    with pool(upstream, retries=False) as http:
        for method in ("PUT", "DELETE"):
            echo = http.request(method, "/e", body=b"12345").json()
            assert (echo["method"], echo["body_length"]) == (method, 5)
        chunked = http.request("POST", "/e", body=iter([b"ab", b"cde"]), chunked=True)
        assert chunked.json()["body_length"] == 5
        cookie = http.request("GET", "/set-cookie?name=sid&value=42")
        assert cookie.headers["Set-Cookie"] == "sid=42; Path=/"
        moved = http.request("POST", "/redirect?to=/elsewhere", redirect=False)
        assert (moved.status, moved.headers["Location"]) == (302, "/elsewhere")
        sent = http.request("GET", "/headers", headers={"Authorization": "Bearer s3cret"})
        assert sent.json()["headers"]["Authorization"] == "Bearer s3cret"
        assert len({http.request("GET", "/c").json()["connection"] for _ in range(2)}) == 1
    assert "s3cret" not in str(upstream.stats())
    assert upstream.stats()["methods"] == {"PUT": 1, "DELETE": 1, "POST": 2, "GET": 4}


def test_idle_close_closes_an_idle_connection(start):
    """With --idle-close 0.3, a kept-alive connection and a fresh one that sends nothing
    are both closed with a FIN about 0.3 s later."""
    upstream = start("--idle-close", "0.3")
    conn = http.client.HTTPSConnection(
        "127.0.0.1", upstream.port, timeout=5,
        context=ssl.create_default_context(cafile=upstream.ca))
    conn.request("GET", "/x")
    assert conn.getresponse().read()
    assert conn.sock is not None
    assert 0.2 < seconds_to_fin(conn.sock) < 3
    conn.close()
    with tls_socket(upstream) as fresh:
        assert 0.2 < seconds_to_fin(fresh) < 3
    wait_for(lambda: upstream.stats()["open"] == 0, 5, "the upstream to record the close")


def test_expired_certificate_fails_verification(start):
    upstream = start("--cert-expired")
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        tls_socket(upstream).close()


def test_restart_on_the_same_port_keeps_the_ca(start):
    """Killed with a connection open, the upstream restarts at once on its port with the
    same CA: the client's pool, its trust loaded before, reconnects."""
    upstream = start()
    port = upstream.port
    with pool(upstream, retries=False) as http:
        assert http.request("GET", "/before").status == 200
        upstream.kill()
        upstream.restart()
        assert upstream.port == port
        assert http.request("GET", "/after").json()["request"] == 1
    assert upstream.stats()["requests"] == 1


def test_hosts_listen_on_distinct_loopback_addresses_with_one_verified_cert(start):
    upstream = start("--hosts", "50")
    # Fifty listeners, one accepting thread: no connection yet, so no handler thread.
    assert len(os.listdir(f"/proc/{upstream.proc.pid}/task")) == 1
    hosts = upstream.hosts(50)
    assert len(set(hosts)) == 50 and not any(h.startswith("127.0.0.") for h in hosts[1:])
    for host in hosts:
        with urllib3.HTTPSConnectionPool(host, upstream.port, ca_certs=upstream.ca,
                                         retries=False) as http:
            assert http.request("GET", "/h").status == 200
    seen = upstream.stats()
    assert seen["hosts_seen"] == 50
    assert {c["local"] for c in seen["connections"]} == set(hosts)


def test_sockets_to_counts_this_process_connections(upstream):
    me = os.getpid()
    fds = open_fds(me)
    socks = [socket.create_connection(("127.0.0.1", upstream.port)) for _ in range(3)]
    try:
        assert sockets_to(me, upstream.port) == 3
        assert open_fds(me) == fds + 3
    finally:
        for sock in socks:
            sock.close()
    assert sockets_to(me, upstream.port) == 0
    # Its own sockets have the upstream's port as local port, its listener none remote.
    assert sockets_to(upstream.proc.pid, upstream.port) == 0
