"""PoolClientMiddleware under webtest (with its WSGI lint on), and the pure /health renderer."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import webtest

import poolclient
from poolclient import PoolClientMiddleware, Registry, Settings
from poolclient.middleware import REGISTRY_KEY, wrap
from poolclient.render import health_document, json_bytes
from poolclient.stats import PoolSnapshot, RegistrySnapshot
from tests.helpers import Upstream

POOL_KEYS = {"scheme", "host", "port", "maxsize", "connections_opened", "requests", "reused",
             "in_use", "idle", "waits", "discarded", "errors", "expired", "retired", "retried",
             "streaming", "unread", "cancelled", "kind"}


class Recorder:
    """A WSGI app that records the environ of each call and answers 200 text/plain."""

    def __init__(self) -> None:
        self.environs: list[dict] = []

    def __call__(self, environ, start_response):
        self.environs.append(environ)
        body = f"app saw {environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def own_registry() -> Iterator[Registry]:
    """A registry of this test's own (no pools until used)."""
    reg = Registry(Settings(maxsize=3))
    try:
        yield reg
    finally:
        reg.close()


def test_app_sees_registry_under_both_keys(own_registry: Registry) -> None:
    """The wrapped app finds the same Registry at environ['http.pool'] and the namespaced key."""
    app = Recorder()
    res = webtest.TestApp(PoolClientMiddleware(app, registry=own_registry), lint=True).get("/x")
    assert res.text == "app saw /x"
    (environ,) = app.environs
    assert environ["http.pool"] is own_registry
    assert environ["poolclient.registry"] is own_registry
    assert REGISTRY_KEY == "poolclient.registry"


def test_default_registry_is_the_process_global_one() -> None:
    """Without registry=, the middleware injects poolclient.get_registry()."""
    app = Recorder()
    webtest.TestApp(PoolClientMiddleware(app)).get("/x")
    assert app.environs[0]["http.pool"] is poolclient.get_registry()


def test_custom_environ_key(own_registry: Registry) -> None:
    """environ_key= puts the registry under that key (and always under the namespaced one)."""
    app = Recorder()
    mw = PoolClientMiddleware(app, registry=own_registry, environ_key="myapp.http")
    webtest.TestApp(mw).get("/x")
    (environ,) = app.environs
    assert environ["myapp.http"] is own_registry
    assert environ["poolclient.registry"] is own_registry
    assert "http.pool" not in environ


def test_health_without_pools(own_registry: Registry) -> None:
    """GET /health before any request answers this pid, no pools, zero totals, no-store."""
    app = Recorder()
    res = webtest.TestApp(PoolClientMiddleware(app, registry=own_registry)).get("/health")
    assert app.environs == []
    assert res.status_int == 200
    assert res.content_type == "application/health+json"
    assert res.headers["Cache-Control"] == "no-store"
    doc = res.json
    assert doc["status"] == "pass"
    assert doc["pid"] == os.getpid()
    assert doc["pools"] == []
    assert set(doc["totals"].values()) == {0}
    assert doc["maxsize"] == 3
    assert doc["settings"]["POOLCLIENT_MAXSIZE"] == 3


def test_health_matches_what_the_upstream_counted(registry: Registry, upstream: Upstream) -> None:
    """After real requests, /health's requests and connections equal the upstream's record."""
    for i in range(5):
        assert registry.request("GET", f"{upstream.url}/n/{i}").status == 200

    def handler(environ, start_response):
        r = environ["http.pool"].request("GET", upstream.url + "/from-handler")
        body = r.data
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    test_app = webtest.TestApp(PoolClientMiddleware(handler, registry=registry))
    assert test_app.get("/relay").json["path"] == "/from-handler"

    doc = test_app.get("/health").json
    seen = upstream.stats()
    assert doc["pid"] == os.getpid()
    (pool,) = doc["pools"]
    assert set(pool) == POOL_KEYS
    assert (pool["scheme"], pool["host"], pool["port"]) == ("https", "127.0.0.1", upstream.port)
    assert pool["requests"] == seen["requests"] == 6
    assert pool["connections_opened"] == len(seen["connections"]) == 1
    assert pool["reused"] == 5
    assert (pool["in_use"], pool["idle"], pool["waits"], pool["errors"]) == (0, 1, 0, 0)
    assert pool["maxsize"] == registry.maxsize == 4
    assert doc["totals"] == {k: v for k, v in pool.items()
                             if k not in ("scheme", "host", "port", "maxsize", "kind")}


def test_head_health_has_empty_body(own_registry: Registry) -> None:
    """HEAD /health answers 200 with the JSON headers and no body."""
    res = webtest.TestApp(PoolClientMiddleware(Recorder(), registry=own_registry)).head("/health")
    assert res.status_int == 200
    assert res.body == b""
    assert res.content_type == "application/health+json"


def test_post_health_is_405_with_allow(own_registry: Registry) -> None:
    """POST /health answers 405 JSON naming the method, with an Allow header."""
    app = Recorder()
    res = webtest.TestApp(PoolClientMiddleware(app, registry=own_registry)).post(
        "/health", status=405)
    assert res.headers["Allow"] == "GET, HEAD"
    assert res.content_type == "application/json"
    assert res.json == {"error": "method POST not allowed", "allow": ["GET", "HEAD"]}
    assert app.environs == []


TOKEN = "t0ken-for-the-stats-endpoints"


@pytest.mark.parametrize(("remote", "allowed"), [
    ("127.0.0.1", True), ("::1", True), ("10.2.3.4", True), ("172.16.0.9", True),
    ("192.168.1.1", True), ("fd00::5", True), ("::ffff:127.0.0.1", True),
    ("", True),  # a unix socket: gunicorn gives no address
    ("8.8.8.8", False), ("172.32.0.1", False), ("2001:db8::1", False), ("not-an-ip", False),
])
def test_health_is_limited_to_private_networks_by_default(remote: str, allowed: bool) -> None:
    """By default loopback and private networks may read /health; others get 403 JSON
    that reveals nothing (and HEAD gets no body either way)."""
    reg = Registry(Settings())
    app = webtest.TestApp(PoolClientMiddleware(Recorder(), registry=reg))
    res = app.get("/health", extra_environ={"REMOTE_ADDR": remote}, expect_errors=True)
    assert res.status_int == (200 if allowed else 403)
    if not allowed:
        assert "forbidden" in res.json["error"] and "pools" not in res.json
        assert app.head("/health", extra_environ={"REMOTE_ADDR": remote},
                        expect_errors=True).body == b""


def test_health_token_opens_it_from_anywhere_and_is_never_shown() -> None:
    """POOLCLIENT_STATS_ALLOW empty and a token set: only the exact bearer token may read,
    and /health shows the token as ***."""
    reg = Registry(Settings(stats_allow="", stats_token=TOKEN))
    app = webtest.TestApp(PoolClientMiddleware(Recorder(), registry=reg))
    env = {"REMOTE_ADDR": "203.0.113.7"}
    assert app.get("/health", extra_environ=env, expect_errors=True).status_int == 403
    for wrong in (f"Bearer {TOKEN}x", TOKEN, f"Basic {TOKEN}", "Bearer "):
        assert app.get("/health", extra_environ=env, headers={"Authorization": wrong},
                       expect_errors=True).status_int == 403
    res = app.get("/health", extra_environ={**env, "REMOTE_ADDR": "127.0.0.1"},
                  expect_errors=True)
    assert res.status_int == 403  # empty allow list: loopback too needs the token
    for unix in ({"REMOTE_ADDR": ""}, {}):  # a unix socket, unless "unix" is allowed
        assert app.get("/health", extra_environ=unix, expect_errors=True).status_int == 403
    res = app.get("/health", extra_environ=env, headers={"Authorization": f"Bearer {TOKEN}"})
    assert res.status_int == 200
    assert res.json["settings"]["POOLCLIENT_STATS_TOKEN"] == "***"
    assert TOKEN not in res.text


def test_health_path_none_passes_health_to_app(own_registry: Registry) -> None:
    """health_path=None turns the endpoint off: /health reaches the app, still injected."""
    app = Recorder()
    mw = PoolClientMiddleware(app, registry=own_registry, health_path=None)
    res = webtest.TestApp(mw).get("/health")
    assert res.text == "app saw /health"
    assert app.environs[0]["http.pool"] is own_registry


def test_custom_health_path(own_registry: Registry) -> None:
    """health_path= moves the endpoint; the old path reaches the app."""
    app = Recorder()
    test_app = webtest.TestApp(
        PoolClientMiddleware(app, registry=own_registry, health_path="/_pools"))
    assert test_app.get("/_pools").json["pid"] == os.getpid()
    assert test_app.get("/health").text == "app saw /health"


def test_wrapping_twice_serves_one_health_and_injects_once(own_registry: Registry) -> None:
    """A middleware inside another steps aside: the outer registry is injected, /health is one."""
    inner_registry = Registry(Settings(maxsize=7))
    app = Recorder()
    inner = PoolClientMiddleware(app, registry=inner_registry)
    outer = PoolClientMiddleware(inner, registry=own_registry)
    test_app = webtest.TestApp(outer)

    test_app.get("/x")
    (environ,) = app.environs
    assert environ["http.pool"] is own_registry
    assert environ["poolclient.registry"] is own_registry

    doc = test_app.get("/health").json
    assert doc["maxsize"] == 3  # the outer registry's, answered once by the outer middleware
    assert len(app.environs) == 1


def test_inner_middleware_answers_health_when_outer_has_it_off(own_registry: Registry) -> None:
    """Wrapping twice with the outer's health off leaves /health to the app (inner steps aside)."""
    app = Recorder()
    outer = PoolClientMiddleware(PoolClientMiddleware(app), registry=own_registry,
                                 health_path=None)
    res = webtest.TestApp(outer).get("/health")
    # The inner instance sees the outer's key and steps aside entirely, health included.
    assert res.text == "app saw /health"


def test_wrap_returns_middleware_unchanged(own_registry: Registry) -> None:
    """wrap() of a middleware is that same object; of a plain app, a new middleware around it."""
    app = Recorder()
    mw = PoolClientMiddleware(app, registry=own_registry)
    assert wrap(mw) is mw
    assert wrap(mw, Registry(Settings())) is mw
    wrapped = wrap(app, own_registry)
    assert isinstance(wrapped, PoolClientMiddleware)
    assert wrapped.app is app and wrapped.registry is own_registry


class ClosingBody:
    """A response iterable with close(), which WSGI servers must call."""

    def __init__(self) -> None:
        self.closed = 0

    def __iter__(self):
        yield b"chunk-1 "
        yield b"chunk-2"

    def close(self) -> None:
        self.closed += 1


def test_response_close_is_still_called(own_registry: Registry) -> None:
    """The app's response iterable reaches the server unwrapped, so its close() is called once."""
    body = ClosingBody()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    res = webtest.TestApp(PoolClientMiddleware(app, registry=own_registry), lint=True).get("/x")
    assert res.body == b"chunk-1 chunk-2"
    assert body.closed == 1


# --- render: pure functions ------------------------------------------------------------


def snapshot() -> RegistrySnapshot:
    """A hand-made snapshot of two pools."""
    return RegistrySnapshot(pid=4242, pools=(
        PoolSnapshot(scheme="https", host="api.internal", port=8443, maxsize=4,
                     connections_opened=3, requests=10, reused=7, in_use=1, idle=2,
                     waits=1, discarded=0, errors=2, expired=3, retired=1, retried=1,
                     streaming=1, unread=2),
        PoolSnapshot(scheme="http", host="10.0.0.5", port=80, maxsize=2,
                     connections_opened=1, requests=4, reused=3, in_use=0, idle=1,
                     waits=0, discarded=5, errors=0, expired=0, retired=2, retried=0),
    ))


GOLDEN = {
    "status": "pass",
    "pid": 4242,
    "pools": [
        {"scheme": "https", "host": "api.internal", "port": 8443, "maxsize": 4,
         "connections_opened": 3, "requests": 10, "reused": 7, "in_use": 1, "idle": 2,
         "waits": 1, "discarded": 0, "errors": 2, "expired": 3, "retired": 1, "retried": 1,
         "streaming": 1, "unread": 2, "cancelled": 0, "kind": "sync"},
        {"scheme": "http", "host": "10.0.0.5", "port": 80, "maxsize": 2,
         "connections_opened": 1, "requests": 4, "reused": 3, "in_use": 0, "idle": 1,
         "waits": 0, "discarded": 5, "errors": 0, "expired": 0, "retired": 2, "retried": 0,
         "streaming": 0, "unread": 0, "cancelled": 0, "kind": "sync"},
    ],
    "totals": {"connections_opened": 4, "requests": 14, "reused": 10, "in_use": 1, "idle": 3,
               "waits": 1, "discarded": 5, "errors": 2, "expired": 3, "retired": 3,
               "retried": 1, "streaming": 1, "unread": 2, "cancelled": 0},
    "checks": {
        "api.internal:8443:connections": [{
            "componentId": "https://api.internal:8443", "componentType": "component",
            "kind": "sync", "observedValue": 1, "observedUnit": "in use of 4", "status": "pass"}],
        "10.0.0.5:80:connections": [{
            "componentId": "http://10.0.0.5:80", "componentType": "component",
            "kind": "sync", "observedValue": 0, "observedUnit": "in use of 2", "status": "pass"}],
    },
    "inherited_connections": [],
    "abandoned_connections": 0,
    "origins": [],  # no policy in the snapshot: see test_policy_render.py
}


def test_health_document_golden() -> None:
    """health_document of a hand-made snapshot equals the expected document exactly."""
    assert health_document(snapshot()) == GOLDEN


def test_health_document_with_settings_copies_them() -> None:
    """Settings given to health_document appear as a copy under "settings"."""
    settings = {"POOLCLIENT_MAXSIZE": 4, "POOLCLIENT_BLOCK": True}
    doc = health_document(snapshot(), settings)
    assert doc == {**GOLDEN, "settings": settings}
    settings["POOLCLIENT_MAXSIZE"] = 99
    assert doc["settings"] == {"POOLCLIENT_MAXSIZE": 4, "POOLCLIENT_BLOCK": True}


def test_health_document_without_pools() -> None:
    """An empty snapshot renders no pools and all-zero totals."""
    doc = health_document(RegistrySnapshot(pid=1, pools=()))
    assert doc == {"status": "pass", "pid": 1, "pools": [], "checks": {}, "totals": {
        k: 0 for k in GOLDEN["totals"]}, "inherited_connections": [],
        "abandoned_connections": 0, "origins": []}


def test_health_document_names_inherited_connections_and_warns() -> None:
    from poolclient.inherited import Inherited

    doc = health_document(snapshot(), inherited=[Inherited("10.0.0.9:443", 7)])
    assert doc["inherited_connections"] == [{"peer": "10.0.0.9:443", "fd": 7}]
    assert doc["status"] == "warn"


def test_json_bytes_is_compact_sorted_and_stable() -> None:
    """json_bytes gives compact JSON with sorted keys, identical for equal documents."""
    assert json_bytes({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    doc = health_document(snapshot())
    assert json_bytes(doc) == json_bytes(json.loads(json_bytes(doc)))
    assert json.loads(json_bytes(doc)) == GOLDEN
