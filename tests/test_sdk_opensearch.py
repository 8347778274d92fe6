"""The OpenSearch SDK (opensearch-py 3), unchanged, on
``poolclient.integrations.opensearch.PooledConnection``, against the real TLS upstream
answering the few endpoints the tests call as OpenSearch does (``app/stubs/search.py``).
In process, then under real gunicorn ``--preload`` (``tests/apps/sdk_search_app.py``)."""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator

import pytest

opensearchpy = pytest.importorskip("opensearchpy")

from poolclient import Registry, Settings  # noqa: E402
from poolclient.integrations.opensearch import PooledConnection  # noqa: E402
from tests.helpers import (  # noqa: E402
    Upstream,
    assert_calls_bounded,
    other_ca_file,
    refused_url,
)
from tests.test_sdk_elastic import _run_under_gunicorn  # noqa: E402

PID = {"X-Client-Pid": str(os.getpid())}


def make(base: str, registry: Registry, prefix: str = "/opensearch",
         **kw) -> opensearchpy.OpenSearch:
    return opensearchpy.OpenSearch(base + prefix,
                                   connection_class=PooledConnection.on(registry), **kw)


@pytest.fixture
def own_registry() -> Iterator:
    """Registries made by a test, closed afterwards: ``own_registry(**settings)``."""
    made: list[Registry] = []

    def build(**settings) -> Registry:
        made.append(Registry(Settings(**settings)))
        return made[-1]

    yield build
    for registry in made:
        registry.close()


def test_calls_work_and_reuse_one_connection(upstream: Upstream, registry: Registry):
    client = make(upstream.url, registry, ca_certs=upstream.ca)
    assert client.info(headers=PID)["version"]["distribution"] == "opensearch"
    for n in ("1", "2"):
        done = client.index(index="items", id=n, body={"n": n}, headers=PID)
        assert done["result"] == "created"
    found = client.search(index="items", body={"query": {"match_all": {}}}, headers=PID)
    assert [hit["_source"] for hit in found["hits"]["hits"]] == [{"n": "1"}, {"n": "2"}]
    with pytest.raises(opensearchpy.RequestError):  # a 400, parsed as opensearch-py does
        client.transport.perform_request("GET", "/no/such/endpoint", headers=PID)
    seen = upstream.stats()
    assert seen["requests"] == 5 and len(seen["connections"]) == 1
    assert seen["connections"][0]["pids"] == [str(os.getpid())]
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 5, 0)


def test_close_closes_nothing_shared(upstream: Upstream, registry: Registry):
    first = make(upstream.url, registry, ca_certs=upstream.ca)
    first.info()
    first.close()
    assert upstream.stats()["open"] == 1
    first.info()  # opensearch-py makes its pool again after close(); this one has the same
    with make(upstream.url, registry, ca_certs=upstream.ca) as second:
        second.info()
    assert make(upstream.url, registry, ca_certs=upstream.ca).info()["tagline"]
    assert registry.stats().totals()["connections_opened"] == 1
    seen = upstream.stats()
    assert (len(seen["connections"]), seen["open"], seen["requests"]) == (1, 1, 4)


def test_refused_is_the_sdks_connection_error(registry: Registry):
    client = make(refused_url(), registry, max_retries=0)
    with pytest.raises(opensearchpy.ConnectionError) as raised:
        client.info()
    assert not isinstance(raised.value, (opensearchpy.ConnectionTimeout, opensearchpy.SSLError))


def test_the_sdks_ca_certs_is_honoured_over_the_registrys_default(
        upstream: Upstream, own_registry, tmp_path):
    """The registry trusts another CA by default; the client names the upstream's."""
    other = other_ca_file(str(tmp_path))
    registry = own_registry(ca_bundle=other)
    assert make(upstream.url, registry, ca_certs=upstream.ca).info()["tagline"]
    with pytest.raises(opensearchpy.SSLError):  # no CA named: the registry's default
        make(upstream.url, registry, max_retries=0).info()
    with pytest.raises(opensearchpy.SSLError):
        make(upstream.url, registry, ca_certs=other, max_retries=0).info()
    unverified = make(upstream.url, registry, verify_certs=False, ssl_show_warn=False)
    assert unverified.info()["version"]["number"] == "2.19.1"
    assert upstream.stats()["requests"] == 2  # the failed handshakes sent nothing


def test_no_ca_named_is_poolclients_default_trust(upstream: Upstream, registry: Registry):
    """Without ``ca_certs`` opensearch-py would trust ``SSL_CERT_FILE`` (the system's
    bundle here), which does not know the upstream; on the registry it is
    ``POOLCLIENT_CA_BUNDLE`` (the fixture's), sharing ``registry.request()``'s pool."""
    assert os.environ.get("SSL_CERT_FILE") != upstream.ca
    assert make(upstream.url, registry).info()["version"]["distribution"] == "opensearch"
    assert registry.request("GET", upstream.url + "/anything").status == 200
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests) == (1, 2)


def test_fingerprint_is_checked_on_the_shared_pools(upstream: Upstream, registry: Registry):
    """opensearch-py's ``ssl_assert_fingerprint`` is urllib3's check of the server's
    certificate: part of the pool key, checked on each new connection."""
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", upstream.port)))
    good = hashlib.sha256(der).hexdigest()
    pinned = make(upstream.url, registry, verify_certs=False, ssl_show_warn=False,
                  ssl_assert_fingerprint=good)
    assert pinned.info()["tagline"]
    wrong = make(upstream.url, registry, verify_certs=False, ssl_show_warn=False,
                 ssl_assert_fingerprint="ab" * 32, max_retries=0)
    with pytest.raises(opensearchpy.SSLError, match="[Ff]ingerprint"):
        wrong.info()
    assert upstream.stats()["requests"] == 1


def test_the_registrys_bound_is_the_bound(upstream: Upstream, own_registry):
    """Six calls at once through a registry of maxsize 4 (opensearch-py's own pool keeps 1
    and opens more, unbounded, when busy): four reach the upstream and wait at a gate, two
    wait for a connection."""
    registry = own_registry(ca_bundle=upstream.ca, maxsize=4, pool_timeout=20)
    client = make(upstream.url, registry, "/opensearch/gate/bound", ca_certs=upstream.ca,
                  max_retries=0, timeout=25)
    assert_calls_bounded(upstream, registry, "bound",
                         lambda: client.info()["version"]["distribution"], "opensearch")


def test_timeout_is_the_sdks(upstream: Upstream, own_registry):
    """The gate is never opened: the SDK's 0.5 s timeout fires, not the registry's 60 s."""
    registry = own_registry(ca_bundle=upstream.ca, read_timeout=60, deadline=120)
    client = make(upstream.url, registry, "/opensearch/gate/never", timeout=0.5,
                  max_retries=0)
    with pytest.raises(opensearchpy.ConnectionTimeout):
        client.info()


def test_built_at_import_under_preload(gunicorn, upstream: Upstream):
    """16 clients, 600 calls (info and search), the client built at import in the master
    and used there once: no errors, at most workers x threads connections, none written by
    two processes, the master's closed before the fork, no worker inherited one."""
    _run_under_gunicorn(gunicorn, upstream, ("/os/info", "/os/search"), requests=600)
