"""Where poolclient must behave as urllib3 and requests do (the differences ``make peer``
found in their own test suites, fixed): the queue class, connection classes poolclient did
not make, urllib3's names in messages, HTTP/2 left out whatever the import order,
requests' errors for missing certificate files, and pickled sessions."""

from __future__ import annotations

import pickle
import queue
import subprocess
import sys
import textwrap
from unittest.mock import Mock, patch

import pytest
import requests
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import EmptyPoolError, MaxRetryError, ReadTimeoutError
from urllib3.util import Timeout

import poolclient
from poolclient import Registry, Settings
from poolclient.pool import CountedHTTPConnectionPool, CountedHTTPSConnectionPool
from tests.helpers import ROOT, Upstream, refused_url, start_upstream


class _Lifo(queue.LifoQueue):  # type: ignore[type-arg]
    pass


def test_the_queue_class_urllib3_would_use_is_used_and_counted(monkeypatch, upstream):
    """A pool subclass's QueueCls, and queue.LifoQueue as patched after import (gevent's
    way in), as urllib3 picks them; waits are still counted."""
    class Mine(CountedHTTPConnectionPool):
        QueueCls = _Lifo

    assert isinstance(Mine("localhost", maxsize=1).pool, _Lifo)

    class Patched(queue.LifoQueue):  # type: ignore[type-arg]
        pass

    monkeypatch.setattr(queue, "LifoQueue", Patched)
    pool = CountedHTTPSConnectionPool("127.0.0.1", upstream.port, maxsize=1, block=True,
                                      ca_certs=upstream.ca)
    assert isinstance(pool.pool, Patched)
    held = pool._get_conn()
    with pytest.raises(EmptyPoolError):
        pool._get_conn(timeout=0.05)
    pool._put_conn(held)
    assert pool.stats.snapshot("https", "h", 1).waits == 1
    pool.close()


def test_a_connection_class_poolclient_did_not_make_is_counted(upstream):
    """A pool subclass with its own connection class (urllib3's SOCKS connections, an
    SDK's): connects and reuse counted, urllib3's TLS left as it is."""
    class Plain(HTTPSConnection):
        pass

    class Pool(CountedHTTPSConnectionPool):
        ConnectionCls = Plain

    with Pool("127.0.0.1", upstream.port, maxsize=1, ca_certs=upstream.ca) as pool:
        for _ in range(3):
            assert pool.request("GET", "/echo").status == 200
        snap = pool.snapshot()
    assert (snap.connections_opened, snap.requests, snap.reused) == (1, 3, 2)
    assert len(upstream.stats()["connections"]) == 1


def test_a_connection_without_poolclients_attributes_is_sent_on():
    """urllib3's own test: a bare mock connection given to _make_request times out as
    urllib3 says, not with an AttributeError."""
    with CountedHTTPConnectionPool(host="localhost", maxsize=1) as pool:
        conn = Mock(spec=HTTPConnection)
        conn.is_closed = False
        with patch.object(Timeout, "read_timeout", 0), pytest.raises(ReadTimeoutError):
            pool._make_request(conn, "", "", timeout=Timeout(1, 1, 1))


def test_messages_name_urllib3s_classes():
    pool = CountedHTTPConnectionPool(host="localhost")
    assert str(EmptyPoolError(pool, "Test.")) == \
        "HTTPConnectionPool(host='localhost', port=None): Test."
    assert str(MaxRetryError(pool, "Test.", None)).startswith(
        "HTTPConnectionPool(host='localhost', port=None): Max retries exceeded")
    registry = Registry(Settings(connect_retries=0))
    with pytest.raises(MaxRetryError) as raised:
        registry.request("GET", refused_url() + "/x")
    text = str(raised.value)
    assert "HTTPSConnectionPool(host='127.0.0.1'" in text and "HTTPSConnection(host=" in text
    assert "Counted" not in text


@pytest.mark.parametrize("order", ["inject-first", "import-first"])
def test_http2_turned_on_in_urllib3_is_not_offered(tmp_path, order: str):
    """With urllib3.http2.inject_into_urllib3(), before or after poolclient is imported,
    poolclient's connections stay HTTP/1.1: the upstream, which would choose h2, records
    http/1.1, and the request is answered."""
    upstream = start_upstream(str(tmp_path), "--alpn", "h2,http/1.1")
    inject = "import urllib3.http2; urllib3.http2.inject_into_urllib3()"
    load = "import poolclient.pool, poolclient.registry"
    script = textwrap.dedent(f"""
        {inject if order == "inject-first" else load}
        {load if order == "inject-first" else inject}
        from urllib3.http2.connection import HTTP2Connection
        from poolclient import Registry, Settings
        assert not issubclass(poolclient.pool.CountedHTTPSConnectionPool.ConnectionCls,
                              HTTP2Connection)
        registry = Registry(Settings(ca_bundle={upstream.ca!r}))
        r = registry.request("GET", {upstream.url!r} + "/echo")
        assert r.status == 200 and r.version == 11, (r.status, r.version)
    """)
    try:
        subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True, timeout=60)
        (conn,) = upstream.stats()["connections"]
        assert conn["alpn"] == "http/1.1"
    finally:
        upstream.stop()


def test_requests_errors_for_a_missing_ca_bundle_or_certificate(registry, upstream):
    """requests' own messages, before anything is sent."""
    with registry.session() as session:
        with pytest.raises(OSError, match="Could not find a suitable TLS CA certificate "
                                          "bundle, invalid path: /garbage"):
            session.get(upstream.url + "/echo", verify="/garbage")
        with pytest.raises(OSError, match="Could not find the TLS certificate file, "
                                          "invalid path: /no/cert.pem"):
            session.get(upstream.url + "/echo", cert="/no/cert.pem")
    assert upstream.stats()["requests"] == 0


def test_a_pickled_session_works_on_the_unpickling_processs_pools(upstream: Upstream,
                                                                  monkeypatch):
    """requests' own test pickles a Session: ours, and one with the adapter mounted, come
    back bound to the process-global registry."""
    monkeypatch.setattr(poolclient.registry, "_default",
                        Registry(Settings(ca_bundle=upstream.ca)))
    mounted = requests.Session()
    mounted.mount("https://", poolclient.get_registry().adapter())
    for session in (poolclient.get_registry().session(), mounted):
        again = pickle.loads(pickle.dumps(session))
        assert again.get(upstream.url + "/echo").status_code == 200
    totals = poolclient.get_registry().stats().totals()
    assert (totals["requests"], totals["connections_opened"]) == (2, 1)
    poolclient.get_registry().close()
