"""Trust per pool, against two TLS upstreams signed by different CAs: POOLCLIENT_CA_BUNDLE
(upstream A's CA) is the default trust; a CA the caller names (upstream B's) is honoured, in
a pool of its own; and the PoolManager stand-in (``Registry.pool_manager``)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
import requests
import urllib3
from urllib3.exceptions import MaxRetryError, SSLError

from poolclient import Registry, Settings
from tests.helpers import Upstream

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture
def other(other_upstream: Upstream) -> Upstream:
    """Upstream B: a CA of its own, which the registry does not pin."""
    return other_upstream


@pytest.fixture
def pinned(upstream: Upstream) -> Iterator[Registry]:
    """POOLCLIENT_CA_BUNDLE = upstream A's CA."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, connect_retries=0))
    try:
        yield registry
    finally:
        registry.close()


def _ok(response: requests.Response) -> bool:
    return response.status_code == 200


def test_default_trust_is_the_pinned_ca(pinned, upstream, other, monkeypatch):
    """verify=True, an inherited REQUESTS_CA_BUNDLE (B's!) and .request() without a CA all
    trust A's CA only: A answers, B fails its certificate check."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", other.ca)
    monkeypatch.setenv("CURL_CA_BUNDLE", other.ca)
    with pinned.session() as session:
        assert _ok(session.get(upstream.url + "/a"))
        assert _ok(session.get(upstream.url + "/a", verify=True))
        for kwargs in ({}, {"verify": True}):
            with pytest.raises(requests.exceptions.SSLError):
                session.get(other.url + "/b", **kwargs)
    assert pinned.request("GET", upstream.url + "/a").status == 200
    with pytest.raises(MaxRetryError) as raised:
        pinned.request("GET", other.url + "/b")
    assert isinstance(raised.value.reason, SSLError)
    assert len([p for p in pinned.stats().pools if p.port == upstream.port]) == 1


def test_a_ca_the_caller_names_is_honoured_in_a_pool_of_its_own(pinned, upstream, other):
    """verify=<B's CA> per request, through .session() and through a library's own
    requests.Session with .adapter() mounted, reaches B; it is B's pool, not A's."""
    with pinned.session() as session:
        assert _ok(session.get(other.url + "/b", verify=other.ca))
        with pytest.raises(requests.exceptions.SSLError):  # and A is not trusted there
            session.get(upstream.url + "/a", verify=other.ca)
    library = requests.Session()
    library.mount("https://", pinned.adapter())
    assert _ok(library.get(other.url + "/b", verify=other.ca))
    assert _ok(library.get(other.url + "/b", verify=False))
    seen = other.stats()
    assert seen["requests"] == 3
    ports = sorted(p.port for p in pinned.stats().pools if p.connections_opened)
    assert ports.count(other.port) == 2  # verified with B's CA, and verify=False


def test_pool_manager_honours_its_tls_keywords(pinned, upstream, other):
    with open(other.ca) as f:
        other_pem = f.read()
    context = ssl.create_default_context(cafile=other.ca)
    for kwargs in ({"ca_certs": other.ca}, {"ca_cert_data": other_pem},
                   {"ssl_context": context}, {"cert_reqs": "CERT_NONE"}):
        manager = pinned.pool_manager(**kwargs)
        assert manager.request("GET", other.url + "/b").status == 200, kwargs
    with pytest.raises(MaxRetryError):  # default trust: A's CA
        pinned.pool_manager().request("GET", other.url + "/b")
    assert pinned.pool_manager().request("GET", upstream.url + "/a").status == 200
    assert other.stats()["requests"] == 4


def test_pool_manager_shares_the_pools_and_clear_returns_nothing(pinned, upstream):
    """Its requests go through the registry's pool for the origin (one connection, its
    maxsize); clear(), with and a finalizer's clear() close nothing shared."""
    with pinned.pool_manager(maxsize=50, retries=1, timeout=5.0) as manager:
        for _ in range(3):
            assert manager.request("GET", upstream.url + "/x").status == 200
        assert isinstance(manager, urllib3.PoolManager)
        manager.clear()
        assert manager.request("GET", upstream.url + "/x").status == 200
    assert pinned.request("GET", upstream.url + "/y").status == 200
    (pool,) = pinned.stats().pools
    assert (pool.maxsize, pool.connections_opened, pool.requests) == (2, 1, 5)
    assert upstream.stats()["open"] == 1


def test_pool_manager_follows_redirects_across_hosts(pinned, upstream):
    manager = pinned.pool_manager()
    r = manager.request("GET", upstream.url + "/redirect?to=" + upstream.url + "/echo")
    assert r.status == 200 and r.json()["path"] == "/echo"
