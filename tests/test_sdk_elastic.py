"""The Elasticsearch SDK (elasticsearch 9, elastic-transport 9), unchanged, on
``poolclient.integrations.elastic.PooledNode``, against the real TLS upstream answering the
few endpoints the tests call as Elasticsearch does (``app/stubs/search.py``). In process,
then under real gunicorn ``--preload`` (``tests/apps/sdk_search_app.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

elasticsearch = pytest.importorskip("elasticsearch")

from poolclient import Registry, Settings  # noqa: E402
from poolclient.integrations.elastic import PooledNode  # noqa: E402
from tests.helpers import (  # noqa: E402
    Upstream,
    assert_calls_bounded,
    assert_workers_own_connections,
    load,
    other_ca_file,
    refused_url,
    wait_for,
)

PID = {"X-Client-Pid": str(os.getpid())}


def make(base: str, registry: Registry, prefix: str = "/elastic",
         **kw) -> elasticsearch.Elasticsearch:
    return elasticsearch.Elasticsearch(base + prefix, node_class=PooledNode.on(registry), **kw)


@pytest.fixture
def own_registry(tmp_path) -> Iterator:
    """Registries made by a test, closed afterwards: ``own_registry(**settings)``."""
    made: list[Registry] = []

    def build(**settings) -> Registry:
        made.append(Registry(Settings(**settings)))
        return made[-1]

    yield build
    for registry in made:
        registry.close()


def test_calls_work_and_reuse_one_connection(upstream: Upstream, registry: Registry):
    es = make(upstream.url, registry, ca_certs=upstream.ca).options(headers=PID)
    assert es.info()["version"]["number"] == "9.1.0"
    assert es.index(index="items", id="1", document={"name": "one"})["result"] == "created"
    assert es.index(index="items", id="2", document={"name": "two"})["result"] == "created"
    assert es.get(index="items", id="1")["_source"] == {"name": "one"}
    with pytest.raises(elasticsearch.NotFoundError):
        es.get(index="items", id="404")
    found = es.search(index="items", query={"match_all": {}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["1", "2"]
    seen = upstream.stats()
    assert seen["requests"] == 6 and len(seen["connections"]) == 1
    assert seen["connections"][0]["pids"] == [str(os.getpid())]
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 6, 0)


def test_close_closes_nothing_shared(upstream: Upstream, registry: Registry):
    first = make(upstream.url, registry, ca_certs=upstream.ca)
    first.info()
    first.close()
    assert upstream.stats()["open"] == 1
    with make(upstream.url, registry, ca_certs=upstream.ca) as second:
        second.info()
    assert make(upstream.url, registry, ca_certs=upstream.ca).info()["tagline"]
    assert registry.stats().totals()["connections_opened"] == 1
    seen = upstream.stats()
    assert (len(seen["connections"]), seen["open"], seen["requests"]) == (1, 1, 3)


def test_refused_is_the_sdks_connection_error(registry: Registry):
    es = make(refused_url(), registry, max_retries=0)
    with pytest.raises(elasticsearch.ConnectionError) as raised:
        es.info()
    assert not isinstance(raised.value, (elasticsearch.ConnectionTimeout,
                                         elasticsearch.SSLError))


def test_the_sdks_ca_certs_is_honoured_over_the_registrys_default(
        upstream: Upstream, own_registry, tmp_path):
    """The registry trusts another CA by default; the client names the upstream's."""
    other = other_ca_file(str(tmp_path))
    registry = own_registry(ca_bundle=other)
    named = make(upstream.url, registry, ca_certs=upstream.ca, max_retries=0)
    assert named.info()["version"]["number"] == "9.1.0"
    with pytest.raises(elasticsearch.SSLError):  # no CA named: the registry's default
        make(upstream.url, registry, max_retries=0).info()
    with pytest.raises(elasticsearch.SSLError):
        make(upstream.url, registry, ca_certs=other, max_retries=0).info()
    unverified = make(upstream.url, registry, verify_certs=False, ssl_show_warn=False)
    assert unverified.info()["tagline"] == "You Know, for Search"
    assert upstream.stats()["requests"] == 2  # the failed handshakes sent nothing


def test_no_ca_named_is_poolclients_default_trust_not_certifi(
        upstream: Upstream, registry: Registry):
    """Without ``ca_certs`` elastic would trust certifi, which does not know the upstream;
    on the registry it is ``POOLCLIENT_CA_BUNDLE`` (the fixture's: the upstream's CA), and
    shares the pool of ``registry.request()``."""
    assert make(upstream.url, registry).info()["version"]["number"] == "9.1.0"
    assert registry.request("GET", upstream.url + "/anything").status == 200
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests) == (1, 2)


def test_client_certificate_is_part_of_the_pool_key(upstream: Upstream, registry, tmp_path):
    import trustme

    issued = trustme.CA().issue_cert("client")
    cert, key = str(tmp_path / "client.pem"), str(tmp_path / "client.key")
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    with_cert = make(upstream.url, registry, ca_certs=upstream.ca, client_cert=cert,
                     client_key=key)
    plain = make(upstream.url, registry, ca_certs=upstream.ca)
    for _ in range(2):
        with_cert.info()
        plain.info()
    pools = registry.stats().pools
    assert sorted((p.connections_opened, p.requests) for p in pools) == [(1, 2), (1, 2)]
    assert len(upstream.stats()["connections"]) == 2


def test_fingerprint_mode_is_refused_with_the_alternative(upstream: Upstream, registry):
    with pytest.raises(ValueError, match="ca_certs"):
        make(upstream.url, registry, ssl_assert_fingerprint="ab" * 32)


def test_the_registrys_bound_is_the_bound(upstream: Upstream, own_registry):
    """Six calls at once through a registry of maxsize 4 (elastic's own would allow 10):
    four reach the upstream and wait at a gate, two wait for a connection."""
    registry = own_registry(ca_bundle=upstream.ca, maxsize=4, pool_timeout=20)
    es = make(upstream.url, registry, "/elastic/gate/bound", ca_certs=upstream.ca,
              max_retries=0, request_timeout=25)
    assert_calls_bounded(upstream, registry, "bound", lambda: es.info()["tagline"],
                         "You Know, for Search")


def test_request_timeout_is_the_sdks(upstream: Upstream, own_registry):
    """The gate is never opened: the SDK's 0.5 s timeout fires, not the registry's 60 s."""
    registry = own_registry(ca_bundle=upstream.ca, read_timeout=60, deadline=120)
    es = make(upstream.url, registry, "/elastic/gate/never", request_timeout=0.5,
              max_retries=0)
    with pytest.raises(elasticsearch.ConnectionTimeout):
        es.info()


def test_built_at_import_under_preload(gunicorn, upstream: Upstream):
    """16 clients, 600 calls (info and search), the client built at import in the master
    and used there once: no errors, at most workers x threads connections, none written by
    two processes, the master's closed before the fork, no worker inherited one."""
    _run_under_gunicorn(gunicorn, upstream, ("/es/info", "/es/search"), requests=600)


def _run_under_gunicorn(gunicorn, upstream: Upstream, paths: tuple[str, ...],
                        requests: int) -> None:
    workers, threads = 2, 4
    env = {"UPSTREAM_URL": upstream.url, "UPSTREAM_CA": upstream.ca, "MASTER_CALL": paths[0]}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_search_app:app"], env)
    worker_pids = server.worker_pids()

    outcomes = load(server.url, clients=16, seconds=120, paths=paths, requests=requests)
    assert outcomes == {200: requests}, outcomes

    assert_workers_own_connections(server, upstream, worker_pids, requests,
                                   bound=workers * threads)
    server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")
