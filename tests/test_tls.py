"""TLS session resumption (``poolclient.tls``) against a real TLS server on loopback.

The server is a Python ``ssl`` server in a thread (its certificate can be swapped between
connections, which the project's upstream cannot do). It answers every request with its own
view of the connection's handshake (resumed or not, TLS version, client certificate), so
each assertion counts at the server side, read from a response that has already arrived:
nothing waits for the server.

The pool classes here are urllib3's with the two mixins of ``poolclient.tls``; the tests at
the end use the registry's own pools and run once those are wired (see ``wired``).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
import urllib3
from cryptography.hazmat.primitives import serialization
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import InsecureRequestWarning, SSLError

from poolclient import Registry, Settings
from poolclient.pool import CountedHTTPSConnectionPool
from poolclient.tls import ResumingConnection, ResumingPool

ROOT = Path(__file__).resolve().parent.parent


class Conn(ResumingConnection, HTTPSConnection):
    pass


class Pool(ResumingPool, HTTPSConnectionPool):
    ConnectionCls = Conn


@dataclass
class Handshake:
    reused: bool
    version: str | None
    client: str | None  # the client certificate's first DNS name


class TLSServer:
    """HTTPS on a loopback port. Each response ends its connection unless the path starts
    with ``/keep``; its JSON body is the server's record of the connection's handshake."""

    def __init__(self, ca: trustme.CA, *names: str, tls12: bool = False,
                 client_ca: trustme.CA | None = None) -> None:
        self.ca, self.tls12, self.client_ca = ca, tls12, client_ca
        self.context = self._context(names or ("127.0.0.1", "localhost"))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self.handshakes: list[Handshake] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _context(self, names: tuple[str, ...]) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(context)
        if self.tls12:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if self.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            self.client_ca.configure_trust(context)
        return context

    def present(self, *names: str) -> None:
        """From the next connection on, a certificate for ``names`` (same CA)."""
        self.context = self._context(names)

    def close(self) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(raw,), daemon=True).start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            sock = self.context.wrap_socket(raw, server_side=True)
        except OSError:  # the client refused the certificate: its own error says so
            raw.close()
            return
        with sock:
            cert = sock.getpeercert() or {}
            names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
            seen = Handshake(sock.session_reused, sock.version(), names[0] if names else None)
            self.handshakes.append(seen)
            while request := _read_request(sock):
                keep = request.startswith(b"GET /keep")
                body = json.dumps(seen.__dict__).encode()
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             + (b"" if keep else b"Connection: close\r\n")
                             + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                if not keep:
                    break
            try:
                # close_notify: without it OpenSSL drops the session from the server's
                # cache, and TLS 1.2 (no tickets from urllib3) could never resume.
                sock.unwrap().close()
            except OSError:
                pass


def _read_request(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(4096)
        except OSError:
            return b""
        if not chunk:
            return b""
        data += chunk
    return data


def seen(response: Any) -> dict[str, Any]:
    """The server's record of the handshake of the connection that carried ``response``."""
    assert response.status == 200, response.data
    return dict(json.loads(response.data))


def reused(pool: Any, url: str = "/", **kw: Any) -> bool:
    return bool(seen(pool.request("GET", url, **kw))["reused"])


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return authority


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> str:
    return str(tmp_path / "ca.pem")


@pytest.fixture(params=["TLSv1.3", "TLSv1.2"])
def server(request: pytest.FixtureRequest, ca: trustme.CA) -> Iterator[TLSServer]:
    tls = TLSServer(ca, tls12=request.param == "TLSv1.2")
    yield tls
    tls.close()


@pytest.fixture
def server13(ca: trustme.CA) -> Iterator[TLSServer]:
    tls = TLSServer(ca)
    yield tls
    tls.close()


# --- resumption within a pool ----------------------------------------------------------


def test_second_connection_of_a_pool_resumes(server: TLSServer, ca_file: str) -> None:
    pool = Pool("127.0.0.1", server.port, ca_certs=ca_file, maxsize=1)
    records = [seen(pool.request("GET", "/")) for _ in range(4)]
    assert [r["reused"] for r in records] == [False, True, True, True]
    expected = "TLSv1.2" if server.tls12 else "TLSv1.3"
    assert {r["version"] for r in records} == {expected}
    assert len(server.handshakes) == 4  # four connections, one handshake each


def test_a_resumed_connection_leaves_the_kept_session_until_half_its_lifetime(
        server: TLSServer, ca_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python hands out a copy of a session (serialised and parsed again, 0.2 ms): a
    # connection that resumed the pool's session does not read its own, until the kept one
    # has used half its lifetime.
    import poolclient.tls as tls

    pool = Pool("127.0.0.1", server.port, ca_certs=ca_file, maxsize=1)
    assert reused(pool, "/") is False
    context = pool.tls._current
    assert context is not None and context.last is not None
    kept = context.last[1]
    assert [reused(pool, "/") for _ in range(3)] == [True, True, True]
    assert context.last[1] is kept
    later = kept.time + kept.timeout / 2 + 1
    monkeypatch.setattr(tls, "time", SimpleNamespace(time=lambda: later))
    assert reused(pool, "/") is True
    assert context.last[1] is not kept  # the resumed connection's newer one
    assert reused(pool, "/") is True
    assert len(server.handshakes) == 6


def test_session_read_on_a_kept_alive_connection(server: TLSServer, ca_file: str) -> None:
    # The first connection stays open, and checked out while its body is unread: its
    # session is read once its response has arrived, not when it closes.
    pool = Pool("127.0.0.1", server.port, ca_certs=ca_file, maxsize=2)
    first = pool.urlopen("GET", "/keep", preload_content=False)
    assert reused(pool, "/keep") is True  # on a second connection
    assert json.loads(first.read())["reused"] is False
    assert pool.num_connections == 2
    assert len(server.handshakes) == 2


def test_one_context_per_pool_and_urllib3_attributes_kept(server13: TLSServer,
                                                          ca_file: str) -> None:
    pool = Pool("127.0.0.1", server13.port, ca_certs=ca_file, maxsize=1)
    contexts = []
    for _ in range(3):
        assert seen(pool.request("GET", "/"))
        current = pool.tls._current
        assert current is not None
        contexts.append(current.context)
    assert contexts[0] is contexts[1] is contexts[2]
    assert seen(pool.request("GET", "/keep"))  # stays open
    conn = pool._get_conn()
    try:
        # Lent to urllib3 for the connect only: the connection still reads as configured.
        assert not conn.is_closed
        assert conn.is_verified is True
        assert conn.ssl_context is None
        assert conn.ca_certs == ca_file
        assert isinstance(conn.sock, current.context.sslsocket_class)
    finally:
        pool._put_conn(conn)


def test_resume_false_keeps_the_context_and_makes_full_handshakes(server13: TLSServer,
                                                                  ca_file: str) -> None:
    pool = Pool("127.0.0.1", server13.port, ca_certs=ca_file, maxsize=1)
    pool.tls.resume = False
    assert [reused(pool), reused(pool)] == [False, False]
    current = pool.tls._current
    assert current is not None and current.last is None
    assert reused(pool) is False and pool.tls._current is current


def test_many_threads_resume_after_the_first_handshakes(server13: TLSServer,
                                                        ca_file: str) -> None:
    pool = Pool("127.0.0.1", server13.port, ca_certs=ca_file, maxsize=4, block=True)
    with ThreadPoolExecutor(8) as threads:
        flags = list(threads.map(lambda _: reused(pool), range(64)))
    # A connect offers a session once any connection has read a response; before that at
    # most maxsize connects can have started.
    assert flags.count(False) <= 4
    assert len(server13.handshakes) == 64


# --- where a session must not go --------------------------------------------------------


def test_other_ca_settings_make_another_pool_without_the_session(
        server: TLSServer, ca: trustme.CA, ca_file: str, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes() + Path(ca_file).read_bytes())
    manager = PoolManager(maxsize=1)
    manager.pool_classes_by_scheme = {"http": HTTPConnectionPool, "https": Pool}
    first = manager.connection_from_url(server.url, pool_kwargs={"ca_certs": ca_file})
    other = manager.connection_from_url(server.url, pool_kwargs={"ca_certs": str(bundle)})
    assert first is not other
    assert [reused(first), reused(first)] == [False, True]
    assert [reused(other), reused(other)] == [False, True]  # its own, never the first's
    assert first.tls._current.context is not other.tls._current.context


def test_verify_false_resumes_and_never_helps_a_verifying_pool(ca: trustme.CA,
                                                               ca_file: str) -> None:
    # A certificate from a CA nobody trusts, for another name: only verify=False connects.
    untrusted = TLSServer(trustme.CA(), "other.example")
    try:
        insecure = Pool("127.0.0.1", untrusted.port, cert_reqs="CERT_NONE", maxsize=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [reused(insecure), reused(insecure)] == [False, True]
        assert sum(issubclass(w.category, InsecureRequestWarning) for w in caught) == 2
        verified = Pool("127.0.0.1", untrusted.port, ca_certs=ca_file, maxsize=1,
                        retries=False)
        with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
            verified.request("GET", "/")
    finally:
        untrusted.close()


def test_a_server_with_another_name_fails_even_with_a_session_offered(
        server: TLSServer, ca_file: str) -> None:
    pool = Pool("127.0.0.1", server.port, ca_certs=ca_file, maxsize=1, retries=False)
    assert [reused(pool), reused(pool)] == [False, True]
    current = pool.tls._current
    assert current is not None and current.last is not None  # will be offered
    server.present("other.example")  # same CA, a certificate for another name
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        pool.request("GET", "/")
    assert current.last is None  # dropped: the connect retry offers nothing
    server.present("127.0.0.1")
    assert reused(pool) is False


def test_a_session_is_offered_only_for_the_name_it_was_verified_for(
        ca: trustme.CA, ca_file: str) -> None:
    only_ip = TLSServer(ca, "127.0.0.1")
    try:
        pool = Pool("127.0.0.1", only_ip.port, ca_certs=ca_file, maxsize=1)
        assert [reused(pool), reused(pool)] == [False, True]
        # The same pool state and context, asked to verify another name.
        conn = Conn("127.0.0.1", only_ip.port, ca_certs=ca_file,
                    server_hostname="wrong.example")
        conn.tls = pool.tls
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            conn.connect()
        assert reused(pool) is False  # a failed connect drops the session it may have used
    finally:
        only_ip.close()


def test_why_sessions_are_bound_to_a_name(ca: trustme.CA, ca_file: str) -> None:
    """OpenSSL resumes a session offered under another name and does not verify the
    certificate again, so the name check would be skipped: the reason for the binding."""
    only_ip = TLSServer(ca, "127.0.0.1")
    context = ssl.create_default_context(cafile=ca_file)

    def connect(name: str, session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", only_ip.port)),
                                   server_hostname=name, session=session)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(4096)  # the TLS 1.3 ticket arrives with the response
        return sock

    try:
        with connect("127.0.0.1") as first:
            session = first.session
        with pytest.raises(ssl.SSLCertVerificationError):
            connect("wrong.example").close()
        with connect("wrong.example", session) as resumed:
            if not resumed.session_reused:
                pytest.skip("this OpenSSL does not resume a session under another name")
            assert resumed.session_reused  # no verification error: nothing was checked
    finally:
        only_ip.close()


def test_a_changed_ca_file_means_a_new_context_and_no_old_session(
        server13: TLSServer, ca_file: str) -> None:
    pool = Pool("127.0.0.1", server13.port, ca_certs=ca_file, maxsize=1)
    assert [reused(pool), reused(pool)] == [False, True]
    before = pool.tls._current
    with open(ca_file, "ab") as f:  # rotated: urllib3 would read the new file next connect
        f.write(trustme.CA().cert_pem.bytes())
    assert [reused(pool), reused(pool)] == [False, True]
    assert pool.tls._current is not before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_offer_the_parents_session(server13: TLSServer,
                                                           ca_file: str) -> None:
    pool = Pool("127.0.0.1", server13.port, ca_certs=ca_file, maxsize=1)
    assert [reused(pool), reused(pool)] == [False, True]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the server's view of two connections, then leave
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps([reused(pool), reused(pool)]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(child) == [False, True]  # its own session, not the parent's
    assert reused(pool) is True  # the parent's is still its own


# --- everything else urllib3 does, unchanged --------------------------------------------


def test_a_callers_own_context_is_left_alone(server13: TLSServer, ca_file: str) -> None:
    context = urllib3.util.ssl_.create_urllib3_context()
    context.load_verify_locations(ca_file)
    pool = Pool("127.0.0.1", server13.port, ssl_context=context, maxsize=1)
    assert [reused(pool), reused(pool)] == [False, False]
    assert context.sslsocket_class is ssl.SSLSocket


def test_a_missing_ca_file_raises_urllib3s_own_error(server13: TLSServer,
                                                      tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    errors = []
    for cls in (HTTPSConnectionPool, Pool):
        pool = cls("127.0.0.1", server13.port, ca_certs=missing, retries=False)
        with pytest.raises(SSLError) as caught:
            pool.request("GET", "/")
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "No such file" in errors[0]


@dataclass
class ClientCert:
    authority: trustme.CA
    cert: str
    key: str
    encrypted_key: str  # the same key, encrypted with the password "secret"


@pytest.fixture
def client_cert(tmp_path: Path) -> ClientCert:
    authority = trustme.CA()
    leaf = authority.issue_cert("client.example")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    (tmp_path / "client-encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return ClientCert(authority, str(tmp_path / "client.pem"), str(tmp_path / "client.key"),
                      str(tmp_path / "client-encrypted.key"))


def test_client_certificates_are_sent_on_full_and_resumed_handshakes(
        ca: trustme.CA, ca_file: str, client_cert: ClientCert) -> None:
    mtls = TLSServer(ca, client_ca=client_cert.authority)
    try:
        pool = Pool("127.0.0.1", mtls.port, ca_certs=ca_file, cert_file=client_cert.cert,
                    key_file=client_cert.key, maxsize=1)
        records = [seen(pool.request("GET", "/")) for _ in range(2)]
        assert [(r["reused"], r["client"]) for r in records] == [
            (False, "client.example"), (True, "client.example")]
        protected = Pool("127.0.0.1", mtls.port, ca_certs=ca_file,
                         cert_file=client_cert.cert, key_file=client_cert.encrypted_key,
                         key_password="secret", maxsize=1)
        assert [reused(protected), reused(protected)] == [False, True]
    finally:
        mtls.close()


def test_an_encrypted_key_without_password_raises_urllib3s_own_error(
        server13: TLSServer, ca_file: str, client_cert: ClientCert) -> None:
    errors = []
    for cls in (HTTPSConnectionPool, Pool):
        pool = cls("127.0.0.1", server13.port, ca_certs=ca_file, retries=False,
                   cert_file=client_cert.cert, key_file=client_cert.encrypted_key)
        with pytest.raises(SSLError) as caught:
            pool.request("GET", "/")
        errors.append(str(caught.value))
    assert errors == ["Client private key is encrypted, password is required"] * 2


def test_under_gevent_the_socket_class_is_geventss(server13: TLSServer, ca_file: str) -> None:
    pytest.importorskip("gevent")
    script = textwrap.dedent("""
        import sys
        from gevent import monkey
        monkey.patch_all()
        import json, gevent.ssl
        from urllib3 import HTTPSConnectionPool
        from urllib3.connection import HTTPSConnection
        from poolclient.tls import ResumingConnection, ResumingPool

        class Conn(ResumingConnection, HTTPSConnection):
            pass

        class Pool(ResumingPool, HTTPSConnectionPool):
            ConnectionCls = Conn

        pool = Pool("127.0.0.1", int(sys.argv[1]), ca_certs=sys.argv[2], maxsize=1)
        flags = [json.loads(pool.request("GET", "/").data)["reused"] for _ in range(3)]
        socket_class = pool.tls._current.context.sslsocket_class
        print(json.dumps({"reused": flags,
                          "gevent": issubclass(socket_class, gevent.ssl.SSLSocket)}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(server13.port), ca_file],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reused": [False, True, True], "gevent": True}


# --- the registry's pools: these run once pool.py uses the mixins -----------------------

wired = pytest.mark.skipif(
    not issubclass(CountedHTTPSConnectionPool, ResumingPool),
    reason="wiring pending: CountedHTTPSConnectionPool does not use poolclient.tls yet")


@wired
def test_registry_pools_resume(server: TLSServer, ca_file: str) -> None:
    registry = Registry(Settings(ca_bundle=ca_file, maxsize=2))
    try:
        flags = [seen(registry.request("GET", server.url + "/"))["reused"] for _ in range(3)]
        assert flags == [False, True, True]
        with registry.session() as session:  # requests (REQUESTS_CA_BUNDLE is pinned away)
            assert session.get(server.url + "/", timeout=5).json()["reused"] is True
    finally:
        registry.close()


@wired
def test_registry_verify_false_pool_is_separate(server: TLSServer, ca_file: str) -> None:
    registry = Registry(Settings(ca_bundle=ca_file, maxsize=2))
    try:
        assert seen(registry.request("GET", server.url + "/"))["reused"] is False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureRequestWarning)
            with registry.session() as session:
                flags = [session.get(server.url + "/", verify=False, timeout=5).json()["reused"]
                         for _ in range(2)]
        assert flags == [False, True]
    finally:
        registry.close()
