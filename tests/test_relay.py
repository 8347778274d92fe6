"""The example relay app, through the middleware, against the real TLS upstream process.

REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE stay set (to the system bundle, as on this machine's
deployments): the relay's trust must come from the registry's settings, not from them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import webtest

from app.relay import Relay, upstream_url
from poolclient import ConfigError, PoolClientMiddleware, Registry, Settings
from tests.helpers import Upstream, other_ca_file, refused_url, wait_for

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

MakeApp = Callable[..., tuple[webtest.TestApp, Registry]]


@pytest.fixture(autouse=True)
def ca_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE set, as they are in production."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if not os.environ.get(name):
            monkeypatch.setenv(name, SYSTEM_BUNDLE)


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """Build Relay(upstream) wrapped with its own Registry(settings); close them afterwards."""
    registries: list[Registry] = []

    def make(upstream: str, settings: Settings) -> tuple[webtest.TestApp, Registry]:
        reg = Registry(settings)
        registries.append(reg)
        return webtest.TestApp(PoolClientMiddleware(Relay(upstream), registry=reg)), reg

    yield make
    for reg in registries:
        reg.close()


@pytest.fixture
def relay(registry: Registry, upstream: Upstream) -> webtest.TestApp:
    """The relay on the conftest registry, which trusts the upstream's CA only."""
    return webtest.TestApp(PoolClientMiddleware(Relay(upstream.url), registry=registry))


def error_of(res: webtest.TestResponse) -> str:
    """The "error" of a JSON failure answer (and check it is one)."""
    assert res.content_type == "application/json"
    doc = res.json
    assert set(doc) == {"error"}, doc
    assert "Traceback" not in doc["error"]
    return str(doc["error"])


def test_environment_keeps_ca_bundle_variables() -> None:
    """The tests below run with REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE set."""
    assert os.environ["REQUESTS_CA_BUNDLE"] and os.environ["CURL_CA_BUNDLE"]


def test_relays_status_and_json(relay: webtest.TestApp, upstream: Upstream) -> None:
    """/upstream/hello?x=1 relays the upstream's 200 and its JSON body (path and query)."""
    res = relay.get("/upstream/hello?x=1")
    assert res.status_int == 200
    assert res.content_type == "application/json"
    assert res.json["path"] == "/hello"
    assert res.json["query"] == "x=1"
    assert upstream.stats()["requests"] == 1


def test_head_relays_without_body(relay: webtest.TestApp) -> None:
    """HEAD /upstream/hello answers the relayed status with no body."""
    res = relay.head("/upstream/hello")
    assert res.status_int == 200
    assert res.body == b""


def test_relays_are_pooled(relay: webtest.TestApp, registry: Registry,
                           upstream: Upstream) -> None:
    """Several relayed requests share one upstream connection, as both ends count."""
    for i in range(4):
        assert relay.get(f"/upstream/n/{i}").json["request"] == i + 1
    seen = upstream.stats()
    assert (seen["requests"], len(seen["connections"])) == (4, 1)
    (pool,) = registry.stats().pools
    assert (pool.requests, pool.connections_opened, pool.reused) == (4, 1, 3)



@pytest.mark.parametrize(("request_path", "upstream_path", "upstream_query"), [
    pytest.param("/upstream/a%20b?x=1", "/a%20b", "x=1", id="space"),
    pytest.param("/upstream/a:b@c", "/a:b@c", "", id="sub-delims"),
    pytest.param("/upstream/a%3Fb?x=1", "/a%3Fb", "x=1", id="encoded-question-mark"),
    pytest.param("/upstream/a%23b", "/a%23b", "", id="encoded-hash"),
    pytest.param("/upstream/caf%C3%A9", "/caf%C3%A9", "", id="utf8"),
])
def test_relays_encoded_path_unchanged(relay: webtest.TestApp, request_path: str,
                                       upstream_path: str, upstream_query: str) -> None:
    """An encoded <path> reaches the upstream as the same path, and the query as the query."""
    res = relay.get(request_path)
    assert (res.json["path"], res.json["query"]) == (upstream_path, upstream_query)


def test_relays_upstream_404(relay: webtest.TestApp) -> None:
    """/upstream/status/404 relays the upstream's 404 and its JSON body."""
    res = relay.get("/upstream/status/404", status=404)
    assert res.json == {"status": 404}


def test_relays_upstream_500(relay: webtest.TestApp, upstream: Upstream) -> None:
    """An upstream 500 is relayed as is, and not retried."""
    res = relay.get("/upstream/status/500", status=500)
    assert res.json == {"status": 500}
    assert upstream.stats()["requests"] == 1


def test_non_json_upstream_is_502(relay: webtest.TestApp) -> None:
    """/upstream/text answers 502 naming the non-JSON body and its Content-Type."""
    error = error_of(relay.get("/upstream/text", status=502))
    assert "non-JSON" in error
    assert "text/plain" in error


def test_refused_port_is_502_before_connect_timeout(make_app: MakeApp) -> None:
    """A refused connection answers 502 naming the refusal, without waiting out the timeout."""
    settings = Settings(connect_timeout=5)
    app, registry = make_app(refused_url(), settings)
    started = time.monotonic()
    res = app.get("/upstream/hello", status=502)
    elapsed = time.monotonic() - started
    error = error_of(res)
    assert "Connection refused" in error
    assert elapsed < settings.connect_timeout
    (pool,) = registry.stats().pools
    assert pool.connections_opened == 0
    assert pool.in_use == 0


def test_untrusted_certificate_is_502(make_app: MakeApp, upstream: Upstream, tmp_path) -> None:
    """A registry trusting another CA answers 502 with "certificate verify failed"."""
    app, _ = make_app(upstream.url, Settings(ca_bundle=other_ca_file(str(tmp_path))))
    error = error_of(app.get("/upstream/hello", status=502))
    assert "certificate verify failed" in error
    assert upstream.stats()["requests"] == 0


def test_system_bundle_does_not_trust_the_test_ca(make_app: MakeApp, upstream: Upstream) -> None:
    """With no ca_bundle set, the upstream's private CA is not trusted (control for the above)."""
    app, _ = make_app(upstream.url, Settings())
    error = error_of(app.get("/upstream/hello", status=502))
    assert "certificate verify failed" in error


def test_read_timeout_is_504(make_app: MakeApp, upstream: Upstream) -> None:
    """A slow upstream beyond read_timeout answers 504 naming the read timeout."""
    app, registry = make_app(upstream.url, Settings(ca_bundle=upstream.ca, read_timeout=0.5))
    error = error_of(app.get("/upstream/slow?seconds=2", status=504))
    assert "read timed out" in error
    (pool,) = registry.stats().pools
    assert pool.errors >= 1
    assert pool.in_use == 0


def test_pool_exhaustion_is_503_with_retry_after(make_app: MakeApp, upstream: Upstream) -> None:
    """With the only connection busy past pool_timeout, a second request gets 503 + Retry-After."""
    settings = Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=0.3)
    app, registry = make_app(upstream.url, settings)
    slow_app = webtest.TestApp(app.app)  # same middleware and registry, own TestApp
    results: dict[str, webtest.TestResponse | BaseException] = {}

    def slow() -> None:
        try:
            results["slow"] = slow_app.get("/upstream/slow?seconds=2")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            results["slow"] = exc

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_for(lambda: any(p.in_use == 1 for p in registry.stats().pools), 10,
                 "the slow request to hold the only connection")
        res = app.get("/upstream/hello", status=503)
        error = error_of(res)
        assert "no upstream connection free" in error
        assert res.headers["Retry-After"] == "1"
        (pool,) = registry.stats().pools
        assert pool.waits >= 1
        assert pool.errors >= 1
        assert pool.in_use == 1
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    slow_res = results["slow"]
    assert isinstance(slow_res, webtest.TestResponse), slow_res
    assert slow_res.json["path"] == "/slow"
    # The waiting request never reached the upstream.
    assert upstream.stats()["requests"] == 1
    (pool,) = registry.stats().pools
    assert (pool.in_use, pool.connections_opened) == (0, 1)


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_non_get_is_405(relay: webtest.TestApp, upstream: Upstream, method: str) -> None:
    """Methods other than GET and HEAD answer 405 with Allow, and nothing reaches the upstream."""
    res = getattr(relay, method)("/upstream/hello", status=405)
    assert res.headers["Allow"] == "GET, HEAD"
    assert method.upper() in error_of(res)
    assert upstream.stats()["requests"] == 0


def test_unknown_path_is_404(relay: webtest.TestApp) -> None:
    """A path outside /upstream/ answers 404 JSON naming it."""
    error = error_of(relay.get("/elsewhere", status=404))
    assert "/elsewhere" in error


def test_index_names_upstream_and_endpoints(relay: webtest.TestApp, upstream: Upstream) -> None:
    """GET / describes the upstream and the endpoints."""
    assert relay.get("/").json == {"upstream": upstream.url,
                                   "endpoints": ["/upstream/<path>", "/health"]}


def test_health_is_served_beside_the_relay(relay: webtest.TestApp, upstream: Upstream) -> None:
    """/health of the wrapped relay counts the relayed requests."""
    relay.get("/upstream/a")
    relay.get("/upstream/b")
    (pool,) = relay.get("/health").json["pools"]
    assert pool["requests"] == upstream.stats()["requests"] == 2


@pytest.mark.parametrize("environ", [
    pytest.param({}, id="unset"),
    pytest.param({"UPSTREAM_URL": ""}, id="empty"),
    pytest.param({"UPSTREAM_URL": "ftp://example"}, id="ftp"),
    pytest.param({"UPSTREAM_URL": "127.0.0.1:8443"}, id="no-scheme"),
])
def test_upstream_url_rejects_bad_values(environ: dict[str, str]) -> None:
    """upstream_url() raises a one-line ConfigError naming UPSTREAM_URL."""
    with pytest.raises(ConfigError) as info:
        upstream_url(environ)
    message = str(info.value)
    assert info.value.setting == "UPSTREAM_URL"
    assert message.startswith("UPSTREAM_URL=")
    assert "http://" in message and "\n" not in message


def test_upstream_url_strips_trailing_slash() -> None:
    """upstream_url() returns a good URL without its trailing slash."""
    assert upstream_url({"UPSTREAM_URL": "https://api.internal:8443/"}) == (
        "https://api.internal:8443")


@pytest.mark.parametrize("path", ["/upstream/../admin", "/upstream/a/./b", "/upstream/a/.."])
def test_dot_segments_are_refused_not_resolved(relay: webtest.TestApp, upstream: Upstream,
                                               path: str) -> None:
    """Dot segments answer 400 JSON and never reach the upstream (no escape from its base)."""
    r = relay.get(path, status=400)
    assert "dot segments" in r.json["error"]
    assert upstream.stats()["requests"] == 0


def test_credentials_in_upstream_url_become_basic_auth_and_show_nowhere(
    make_app: MakeApp, upstream: Upstream
):
    """UPSTREAM_URL=https://user:pass@host: the upstream receives Basic auth; the index,
    /health and error answers never show the password."""
    with_creds = upstream.url.replace("https://", "https://relay:pa%3Ass@")
    app, _ = make_app(with_creds, Settings(ca_bundle=upstream.ca))
    headers = {k.lower(): v for k, v in app.get("/upstream/headers").json["headers"].items()}
    assert headers.get("authorization") == "Basic cmVsYXk6cGE6c3M="  # relay:pa:ss
    for path in ("/", "/health"):
        assert "pa%3Ass" not in app.get(path).text and "pa:ss" not in app.get(path).text
    assert app.get("/").json["upstream"] == upstream.url


def test_error_answers_mask_query_values(make_app: MakeApp):
    """An upstream failure's JSON error carries no query value the caller sent upstream."""
    app, _ = make_app(refused_url(), Settings(connect_retries=0))
    res = app.get("/upstream/items?api_key=SECRET-KEY", expect_errors=True)
    assert res.status_int == 502
    assert "SECRET-KEY" not in res.text
