"""The official Kubernetes client, unchanged, on ``Registry.pool_manager()``: its REST
client's ``pool_manager`` swapped for the stand-in, built with the keywords the client
builds its own ``PoolManager`` with (kubernetes/client/rest.py), so the cluster CA, client
certificate and ``tls_server_name`` of its ``Configuration`` still decide the TLS. Against
the real TLS upstream speaking the API's JSON (``app/stubs/kubernetes.py``), with a registry
whose default trust is *another* CA: only the cluster CA given through the Configuration
lets a call through. Under real gunicorn ``--preload`` at the end."""

from __future__ import annotations

import base64
import gc
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
import yaml

kubernetes = pytest.importorskip("kubernetes")

from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402

from poolclient import Registry, Settings  # noqa: E402
from tests.helpers import (  # noqa: E402
    Upstream,
    assert_workers_own_connections,
    load,
    other_ca_file,
    wait_for,
)

TOKEN = "test-token"


def pool_kwargs(cfg: k8s.Configuration) -> dict[str, Any]:
    """The keywords ``RESTClientObject`` builds its ``urllib3.PoolManager`` with."""
    kw: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED if cfg.verify_ssl else ssl.CERT_NONE,
        "ca_certs": cfg.ssl_ca_cert, "cert_file": cfg.cert_file, "key_file": cfg.key_file,
    }
    if cfg.assert_hostname is not None:
        kw["assert_hostname"] = cfg.assert_hostname
    if cfg.retries is not None:
        kw["retries"] = cfg.retries
    if cfg.tls_server_name:
        kw["server_hostname"] = cfg.tls_server_name
    if cfg.socket_options is not None:
        kw["socket_options"] = cfg.socket_options
    return kw


def pooled_api(registry: Registry, cfg: k8s.Configuration) -> k8s.ApiClient:
    api = k8s.ApiClient(cfg)
    api.rest_client.pool_manager = registry.pool_manager(**pool_kwargs(cfg))
    return api


def configuration(upstream: Upstream, **attrs: Any) -> k8s.Configuration:
    cfg = k8s.Configuration()
    cfg.host = upstream.url
    cfg.ssl_ca_cert = upstream.ca  # the cluster CA
    cfg.api_key = {"BearerToken": TOKEN}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    for name, value in attrs.items():
        setattr(cfg, name, value)
    return cfg


@pytest.fixture
def registry(tmp_path) -> Iterator[Registry]:
    """Default trust: a CA that signed nothing the upstream presents."""
    reg = Registry(Settings(ca_bundle=other_ca_file(str(tmp_path)), maxsize=4,
                            pool_timeout=2, connect_retries=0))
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def v1(registry, upstream) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(pooled_api(registry, configuration(upstream)))


def test_lists_deserialize_and_share_one_connection(v1, upstream, registry):
    for _ in range(3):
        namespaces = v1.list_namespace()
        assert isinstance(namespaces, k8s.V1NamespaceList)
        assert [ns.metadata.name for ns in namespaces.items] == ["default", "kube-system"]
        assert namespaces.items[0].status.phase == "Active"
        pods = v1.list_namespaced_pod("kube-system")
        assert isinstance(pods, k8s.V1PodList)
        assert [(p.metadata.name, p.metadata.namespace, p.spec.containers[0].image)
                for p in pods.items] == [("web-0", "kube-system", "example/web:1"),
                                         ("db-0", "kube-system", "example/db:1")]
    web = v1.list_namespaced_pod("default", label_selector="app=web")  # query through fields=
    assert [p.metadata.labels for p in web.items] == [{"app": "web"}]
    seen = upstream.stats()
    assert seen["requests"] == 7 and len(seen["connections"]) == 1
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests, pool.in_use, pool.maxsize) == (1, 7, 0, 4)


def test_the_cluster_ca_of_the_configuration_is_what_is_trusted(registry, upstream):
    """The registry trusts another CA: the stand-in without the cluster CA fails its
    certificate check, as the client's own PoolManager would without ``ssl_ca_cert``."""
    cfg = configuration(upstream)
    api = k8s.ApiClient(cfg)
    api.rest_client.pool_manager = registry.pool_manager()  # the keywords left out
    with pytest.raises(urllib3.exceptions.MaxRetryError) as raised:
        k8s.CoreV1Api(api).list_namespace()
    assert isinstance(raised.value.reason, urllib3.exceptions.SSLError)
    assert len(k8s.CoreV1Api(pooled_api(registry, cfg)).list_namespace().items) == 2
    assert upstream.stats()["requests"] == 1


def test_kubeconfig_ca_data_token_and_tls_server_name(registry, upstream, tmp_path):
    """A kubeconfig as clusters hand them out: the CA inline (certificate-authority-data,
    which the loader writes to a file), a token, and tls-server-name (``server_hostname``:
    the certificate is checked against that name, not the address)."""
    with open(upstream.ca, "rb") as f:
        ca_data = base64.b64encode(f.read()).decode()

    def load(server_name: str) -> k8s.Configuration:
        path = tmp_path / f"kubeconfig-{server_name}"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "c", "cluster": {
                "server": upstream.url, "certificate-authority-data": ca_data,
                "tls-server-name": server_name}}],
            "users": [{"name": "u", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        }))
        cfg = k8s.Configuration()
        k8s_config.load_kube_config(config_file=str(path), client_configuration=cfg)
        assert cfg.tls_server_name == server_name and cfg.ssl_ca_cert != upstream.ca
        return cfg

    good = k8s.CoreV1Api(pooled_api(registry, load("localhost")))  # the certificate's name
    assert [p.metadata.name for p in good.list_namespaced_pod("default").items] == [
        "web-0", "db-0"]
    wrong = k8s.CoreV1Api(pooled_api(registry, load("wrong.example")))
    with pytest.raises(urllib3.exceptions.MaxRetryError) as raised:
        wrong.list_namespace()
    assert "wrong.example" in str(raised.value.reason)
    assert upstream.stats()["requests"] == 1


def test_client_certificate_is_in_the_pool_key(registry, upstream, tmp_path):
    """cert_file/key_file reach the connections and make a pool of their own: two
    identities never share a connection."""
    import trustme

    identity = trustme.CA().issue_cert("user@example")
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    identity.cert_chain_pems[0].write_to_path(str(cert))
    identity.private_key_pem.write_to_path(str(key))
    plain = k8s.CoreV1Api(pooled_api(registry, configuration(upstream)))
    mutual = pooled_api(registry, configuration(upstream, cert_file=str(cert),
                                                key_file=str(key)))
    plain.list_namespace()
    k8s.CoreV1Api(mutual).list_namespace()
    pool = mutual.rest_client.pool_manager.connection_from_url(upstream.url)
    assert (pool.cert_file, pool.key_file) == (str(cert), str(key))
    assert len(registry.stats().pools) == 2
    assert len(upstream.stats()["connections"]) == 2


def test_errors_are_the_clients_and_leave_the_connection_usable(v1, registry, upstream):
    with pytest.raises(k8s.exceptions.NotFoundException) as raised:
        v1.list_namespaced_pod("nope")
    assert raised.value.status == 404 and '"NotFound"' in raised.value.body
    bad = k8s.CoreV1Api(pooled_api(registry, configuration(
        upstream, api_key={"BearerToken": "bad"})))
    with pytest.raises(k8s.exceptions.UnauthorizedException):
        bad.list_namespace()
    assert len(v1.list_namespace().items) == 2
    assert len(upstream.stats()["connections"]) == 1
    totals = registry.stats().totals()
    assert (totals["requests"], totals["in_use"], totals["unread"]) == (3, 0, 0)


@pytest.mark.parametrize("manager", ["pooled", "the clients own"])
def test_close_and_clear_close_nothing_shared(registry, upstream, manager):
    """``ApiClient.close()`` / ``with``, the ``pool_manager.clear()`` users are told to call
    (kubernetes-client/python#1158) and the collector, for two clients in turn: on the
    pools, one connection, still open and reused; on the client's own PoolManager (the
    control), a new connection after each clear."""
    for _ in range(2):
        cfg = configuration(upstream)
        api = pooled_api(registry, cfg) if manager == "pooled" else k8s.ApiClient(cfg)
        with api:
            k8s.CoreV1Api(api).list_namespace()
            api.rest_client.pool_manager.clear()
            k8s.CoreV1Api(api).list_namespace()
        api.close()
        del api
        gc.collect()
    seen = upstream.stats()
    assert seen["requests"] == 4
    if manager == "pooled":
        assert (len(seen["connections"]), seen["open"]) == (1, 1)
        assert registry.stats().pools[0].connections_opened == 1
    else:
        assert len(seen["connections"]) == 4


def test_a_watch_holds_its_connection_until_the_stream_ends(v1, upstream, registry):
    """``Watch.stream`` reads one JSON event a line from a chunked body: the connection is
    counted as streaming while the watch is open, and goes back to the pool after."""
    gated = k8s.CoreV1Api(pooled_api(registry, configuration(
        upstream, host=upstream.url + "/gate/w")))
    watch = k8s_watch.Watch()
    events = watch.stream(gated.list_namespaced_pod, "default", timeout_seconds=5)
    first = next(events)
    assert (first["type"], first["object"].metadata.name) == ("ADDED", "web-0")
    assert isinstance(first["object"], k8s.V1Pod)
    assert registry.stats().totals()["streaming"] == 1
    upstream.open_gate("w")
    assert [e["object"].metadata.name for e in events] == ["db-0"]
    totals = registry.stats().totals()
    assert (totals["streaming"], totals["in_use"], totals["unread"]) == (0, 0, 0)
    assert len(v1.list_namespace().items) == 2  # on the watch's connection
    assert len(upstream.stats()["connections"]) == 1


def test_a_watch_stopped_early_gives_back_a_closed_connection(v1, upstream, registry):
    gated = k8s.CoreV1Api(pooled_api(registry, configuration(
        upstream, host=upstream.url + "/gate/never")))
    watch = k8s_watch.Watch()
    for event in watch.stream(gated.list_namespaced_pod, "default", timeout_seconds=5):
        assert event["object"].metadata.name == "web-0"
        watch.stop()  # the rest of the body never arrives: the connection is not put back
    totals = registry.stats().totals()
    assert (totals["streaming"], totals["in_use"]) == (0, 0)
    assert len(v1.list_namespace().items) == 2  # on a new connection
    assert len(upstream.stats()["connections"]) == 2
    upstream.open_gate("never")


PATHS = ("/k8s/namespaces", "/k8s/pods")


def test_clients_built_at_import_under_preload(gunicorn, upstream: Upstream):
    """The app's ApiClient is built in gunicorn's master on ``get_registry()``, one call made
    there before the fork (tests/apps/sdk_k8s_google_app.py); 8 clients, 400 calls."""
    workers, threads = 2, 4
    env = {"UPSTREAM_URL": upstream.url, "K8S_CA": upstream.ca,
           "POOLCLIENT_CA_BUNDLE": upstream.ca, "MASTER_CALLS": "k8s"}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_k8s_google_app:app"], env)
    worker_pids = server.worker_pids()

    outcomes = load(server.url, clients=8, seconds=120, paths=PATHS, requests=400)
    assert outcomes == {200: 400}, outcomes

    assert_workers_own_connections(server, upstream, worker_pids, 400,
                                   bound=workers * threads)
    server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")
