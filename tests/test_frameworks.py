"""The Flask and Django examples: each with its own test client, and under real gunicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import urllib3

import poolclient
from poolclient import Registry, Settings, from_request
from tests.helpers import Upstream, load


@pytest.fixture
def pools(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    """UPSTREAM_URL set, and the process-global registry trusting the upstream's CA."""
    monkeypatch.setenv("UPSTREAM_URL", upstream.url)
    registry = poolclient.configure(Settings(ca_bundle=upstream.ca, maxsize=2))
    yield registry
    poolclient.configure()


def test_from_request_reads_environ_meta_or_falls_back(pools: Registry):
    """from_request finds the middleware's registry on .environ, on Django's .META, in a
    plain environ; without one it is the process-global registry."""
    own = Registry(Settings())

    class FlaskLike:
        environ = {"poolclient.registry": own}

    class DjangoLike:
        META = {"poolclient.registry": own}

    assert from_request(FlaskLike()) is own
    assert from_request(DjangoLike()) is own
    assert from_request({"poolclient.registry": own}) is own
    assert from_request({}) is pools
    assert from_request({"poolclient.registry": "not a registry"}) is pools


def test_flask_example_with_its_test_client(pools: Registry, upstream: Upstream):
    """Flask's test client goes through the middleware: two calls, one connection."""
    from app.flask_example import app

    client = app.test_client()
    for i in (1, 2):
        res = client.get(f"/items/{i}")
        assert res.status_code == 200
        assert res.get_json()["upstream"]["path"] == f"/items/{i}"
    assert client.get("/health").get_json()["status"] == "pass"
    seen = upstream.stats()
    assert seen["requests"] == 2 and len(seen["connections"]) == 1


def test_django_example_with_its_test_client(pools: Registry, upstream: Upstream):
    """Django's test client bypasses WSGI middleware; from_request falls back to the
    process-global registry, so connections are still reused."""
    from django.test import Client

    import app.django_example  # noqa: F401 - configures Django

    client = Client()
    for i in (1, 2):
        res = client.get(f"/items/{i}")
        assert res.status_code == 200
        assert res.json()["upstream"]["path"] == f"/items/{i}"
    assert pools.stats().totals()["requests"] == 2
    assert len(upstream.stats()["connections"]) == 1


@pytest.mark.parametrize("target", ["app.flask_example:app",
                                    "app.django_example:application"])
def test_framework_examples_under_gunicorn(gunicorn, upstream: Upstream, target: str):
    """Each example under gunicorn -w 2 --threads 2: no errors, at most 4 upstream
    connections, /metrics and /health served by the middleware."""
    server = gunicorn(["-w", "2", "--threads", "2", target],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    outcomes = load(server.url, clients=8, seconds=2, paths=("/items/7",))
    assert set(outcomes) == {200}, outcomes
    seen = upstream.stats()
    assert seen["requests"] == outcomes[200]
    assert 1 <= len(seen["connections"]) <= 4
    with urllib3.PoolManager(retries=False) as http:
        health = http.request("GET", server.url + "/health")
        scraped = http.request("GET", server.url + "/metrics")
    assert health.status == 200 and health.json()["pid"] in server.worker_pids()
    assert scraped.status == 200 and b"poolclient_requests_total" in scraped.data
