"""poolclient.asgi.PoolClientMiddleware driven by a raw ASGI harness (scope, receive and
send coroutines): the registry in scope["state"], the four endpoints (as the WSGI
middleware answers them, blocking ones in a thread), lifespan with and without the app's
support, and from_request on Starlette requests."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import poolclient.registry as registry_module
from poolclient import Registry, Settings, configure, from_request
from poolclient import metrics as metrics_module
from poolclient.asgi import MARK, PoolClientMiddleware, wrap
from poolclient.middleware import REGISTRY_KEY
from poolclient.middleware import PoolClientMiddleware as WSGIMiddleware
from tests.helpers import free_port

TOKEN = "s3cret-token-0123456789"


class Recorder:
    """A raw ASGI app: records each scope it is called with, answers http with 200."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope, receive, send) -> None:
        self.scopes.append(scope)
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"app " + scope["path"].encode()})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000})


class Sent:
    """One http exchange: status, headers (lower-case str), body, and the raw messages."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        start = messages[0]
        assert start["type"] == "http.response.start"
        self.status = start["status"]
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        self.body = b"".join(m.get("body", b"") for m in messages[1:])

    def json(self) -> Any:
        return json.loads(self.body)


def http_scope(path: str, method: str = "GET", client: tuple[str, int] | None = ("127.0.0.1", 5),
               headers: list[tuple[bytes, bytes]] | None = None, **extra: Any) -> dict[str, Any]:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
             "http_version": "1.1", "method": method, "scheme": "http", "path": path,
             "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": headers or [], "client": client, "server": ("127.0.0.1", 8000)}
    scope.update(extra)
    return scope


def call(app: Any, scope: dict[str, Any]) -> Sent:
    """Run one http scope through ``app`` on a fresh event loop."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    return Sent(messages)


class Lifespan:
    """Drive the lifespan scope of ``app`` as a server does; record what it sends."""

    def __init__(self, app: Any, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.scope: dict[str, Any] = {"type": "lifespan",
                                      "asgi": {"version": "3.0", "spec_version": "2.4"}}
        if state is not None:
            self.scope["state"] = state
        self.sent: list[str] = []
        self.events: list[str] = []  # shared with the apps and fake registries

    def run(self) -> None:
        async def main() -> None:
            inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

            async def receive() -> dict[str, Any]:
                return await inbox.get()

            async def send(message: dict[str, Any]) -> None:
                self.sent.append(message["type"])
                self.events.append("server got " + message["type"])
                answered.set()

            async def answer_or_end() -> None:  # an app may end (or raise) instead
                waiter = asyncio.create_task(answered.wait())
                await asyncio.wait({task, waiter}, timeout=10,
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()

            answered = asyncio.Event()
            task = asyncio.create_task(self.app(self.scope, receive, send))
            await inbox.put({"type": "lifespan.startup"})
            await answer_or_end()
            if self.sent == ["lifespan.startup.complete"]:
                answered.clear()
                await inbox.put({"type": "lifespan.shutdown"})
                await answer_or_end()
            await asyncio.wait_for(task, 10)

        asyncio.run(main())


class FakeRegistry:
    """What the lifespan path uses of a registry: settings and aclose()."""

    def __init__(self, events: list[str]) -> None:
        self.settings = Settings()
        self.events = events
        self.loops: list[object] = []

    async def aclose(self) -> bool:
        self.loops.append(asyncio.get_running_loop())
        self.events.append("aclose")
        return True


@pytest.fixture
def own() -> Iterator[Registry]:
    registry = Registry(Settings(maxsize=3, stats_token=TOKEN))
    yield registry
    registry.close()


@pytest.fixture
def global_registry() -> Iterator[Any]:
    """configure() for one test; the process-global registry restored afterwards."""
    saved = registry_module._default
    made: list[Registry] = []

    def make(**settings: Any) -> Registry:
        made.append(configure(Settings(**settings)))
        return made[-1]

    yield make
    for registry in made:
        registry.close()
    registry_module._default = saved


# --- the registry in scope["state"] -----------------------------------------------------

@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_registry_in_state_under_both_keys_state_created(own, kind):
    """http and websocket scopes without a state dict get one holding the registry under
    "http.pool" and "poolclient.registry"; the app is called once."""
    app = Recorder()
    scope = http_scope("/x")
    scope["type"] = kind
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(PoolClientMiddleware(app, own)(scope, receive, send))
    (seen,) = app.scopes
    assert seen["state"]["http.pool"] is own
    assert seen["state"][REGISTRY_KEY] is own
    assert messages[0]["type"] in ("http.response.start", "websocket.close")


def test_existing_state_is_kept_and_state_key_is_configurable(own):
    app = Recorder()
    call(PoolClientMiddleware(app, own, state_key="pools"),
         http_scope("/x", state={"db": "conn"}))
    state = app.scopes[0]["state"]
    assert state == {"db": "conn", "pools": own, REGISTRY_KEY: own}


def test_registry_is_looked_up_per_scope(global_registry):
    """Without a registry argument each scope gets get_registry() as it is now: a
    middleware built before the global registry changes (a fork) serves the new one."""
    app = Recorder()
    middleware = PoolClientMiddleware(app)
    first = global_registry()
    call(middleware, http_scope("/a"))
    second = global_registry()
    call(middleware, http_scope("/b"))
    assert [s["state"]["http.pool"] for s in app.scopes] == [first, second]


def test_an_inner_instance_steps_aside(own):
    """Wrapped twice: the outer one's registry is in state, the inner one neither
    overwrites it nor answers its own paths (/inner-health reaches the app)."""
    other = Registry(Settings())
    app = Recorder()
    inner = PoolClientMiddleware(app, other, health_path="/inner-health")
    outer = PoolClientMiddleware(inner, own)
    sent = call(outer, http_scope("/inner-health"))
    assert sent.status == 200 and sent.body == b"app /inner-health"
    assert app.scopes[0]["state"][REGISTRY_KEY] is own
    assert app.scopes[0][MARK] is True
    assert wrap(outer) is outer
    assert isinstance(wrap(app), PoolClientMiddleware)


def test_other_scope_types_pass_through_untouched(own):
    app = Recorder()
    asyncio.run(PoolClientMiddleware(app, own)({"type": "custom"}, None, None))
    assert app.scopes == [{"type": "custom"}]


# --- the endpoints ------------------------------------------------------------------------

def wsgi_answer(registry: Registry, path: str, method: str = "GET",
                **environ: str) -> tuple[str, dict[str, str], bytes]:
    """The WSGI middleware's answer to the same request, for comparison."""
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, {k.lower(): v for k, v in headers}

    env = {"PATH_INFO": path, "REQUEST_METHOD": method, "REMOTE_ADDR": "127.0.0.1", **environ}
    body = b"".join(WSGIMiddleware(Recorder(), registry)(env, start_response))
    return got["status"], got["headers"], body


def test_health_answers_this_workers_document(own):
    sent = call(PoolClientMiddleware(Recorder(), own), http_scope("/health"))
    assert sent.status == 200
    assert sent.headers["content-type"] == "application/health+json"
    assert sent.headers["cache-control"] == "no-store"
    assert int(sent.headers["content-length"]) == len(sent.body)
    document = sent.json()
    assert document["pid"] == os.getpid() and document["maxsize"] == 3
    assert document["settings"]["POOLCLIENT_STATS_TOKEN"] == "***"


@pytest.mark.parametrize(("client", "headers", "status"), [
    pytest.param(("8.8.8.8", 1), [], 403, id="public-address"),
    pytest.param(("8.8.8.8", 1), [(b"authorization", f"Bearer {TOKEN}".encode())], 200,
                 id="public-with-token"),
    pytest.param(("8.8.8.8", 1), [(b"Authorization", b"Bearer wrong-token-0123456789")], 403,
                 id="public-wrong-token"),
    pytest.param(("10.1.2.3", 1), [], 200, id="private-address"),
    pytest.param(None, [], 200, id="unix-socket"),
    pytest.param(("::ffff:127.0.0.1", 1), [], 200, id="ipv4-mapped"),
])
def test_access_rules_as_the_wsgi_middleware(own, client, headers, status):
    """Same allow list and token rule as WSGI; the 403 body is the WSGI one, byte for byte."""
    sent = call(PoolClientMiddleware(Recorder(), own),
                http_scope("/health", client=client, headers=headers))
    assert sent.status == status
    if status == 403:
        environ = {"REMOTE_ADDR": client[0]}
        wsgi_status, _, wsgi_body = wsgi_answer(own, "/health", **environ)
        assert wsgi_status == "403 Forbidden" and sent.body == wsgi_body


def test_head_has_the_headers_and_no_body(own):
    get = call(PoolClientMiddleware(Recorder(), own), http_scope("/livez"))
    head = call(PoolClientMiddleware(Recorder(), own), http_scope("/livez", method="HEAD"))
    assert head.status == 200 and head.body == b""
    assert head.headers == get.headers and int(head.headers["content-length"]) == len(get.body)


def test_other_methods_get_405_with_allow(own):
    sent = call(PoolClientMiddleware(Recorder(), own), http_scope("/health", method="POST"))
    assert sent.status == 405
    assert sent.headers["allow"] == "GET, HEAD"
    assert sent.json() == {"error": "method POST not allowed", "allow": ["GET", "HEAD"]}
    assert sent.body == wsgi_answer(own, "/health", "POST")[2]


def test_livez_is_the_wsgi_body_from_anywhere(own):
    sent = call(PoolClientMiddleware(Recorder(), own), http_scope("/livez", client=("8.8.8.8", 1)))
    assert (sent.status, sent.body) == (200, wsgi_answer(own, "/livez")[2])


def test_readyz_fails_503_and_runs_off_the_loop(own):
    """A readiness URL nobody listens on: 503 with the WSGI body shape; the check ran in a
    thread with no running event loop (never blocking the loop)."""
    port = free_port()
    registry = Registry(Settings(ready_urls=f"http://127.0.0.1:{port}/ready", ready_timeout=2,
                                 connect_retries=0))
    seen: list[tuple[int, object]] = []
    ready = registry.ready

    def recording_ready() -> Any:
        seen.append((threading.get_ident(), asyncio._get_running_loop()))
        return ready()

    registry.ready = recording_ready  # type: ignore[method-assign]
    try:
        sent = call(PoolClientMiddleware(Recorder(), registry), http_scope("/readyz"))
    finally:
        registry.close()
    assert sent.status == 503
    document = sent.json()
    assert document["status"] == "fail"
    (check,) = document["checks"]["upstream:responseTime"]
    assert check["status"] == "fail"
    ((thread, loop),) = seen
    assert thread != threading.get_ident() and loop is None


def test_metrics_run_off_the_loop(own, monkeypatch):
    """/metrics reads the files of every worker: it runs in a thread without a loop."""
    seen: list[tuple[int, object]] = []

    def render() -> tuple[bytes, str]:
        seen.append((threading.get_ident(), asyncio._get_running_loop()))
        return b"poolclient_fake 1\n", "text/plain; version=0.0.4"

    monkeypatch.setattr(metrics_module, "available", lambda: True)
    monkeypatch.setattr(metrics_module, "problem", lambda: None)
    monkeypatch.setattr(metrics_module, "render", render)
    sent = call(PoolClientMiddleware(Recorder(), own), http_scope("/metrics"))
    assert (sent.status, sent.body) == (200, b"poolclient_fake 1\n")
    ((thread, loop),) = seen
    assert thread != threading.get_ident() and loop is None


def test_paths_below_root_path_and_endpoints_off(own):
    """Matched below root_path; POOLCLIENT_SERVE_ENDPOINTS=false or a None path lets the
    app answer."""
    mounted = call(PoolClientMiddleware(Recorder(), own),
                   http_scope("/svc/livez", root_path="/svc"))
    assert mounted.json() == {"status": "pass"}
    off = Registry(Settings(serve_endpoints=False))
    assert call(PoolClientMiddleware(Recorder(), off), http_scope("/health")).body == \
        b"app /health"
    assert call(PoolClientMiddleware(Recorder(), own, health_path=None),
                http_scope("/health")).body == b"app /health"


# --- lifespan -----------------------------------------------------------------------------

def test_lifespan_app_shuts_down_first_then_the_pools(own):
    """An app speaking lifespan: startup passes through; on shutdown the app's own cleanup
    runs, then registry.aclose() on the same loop, then the server hears complete. The
    lifespan state holds the registry (the server copies it into each request)."""
    events: list[str] = []
    fake = FakeRegistry(events)

    async def app(scope, receive, send) -> None:
        assert scope["state"]["http.pool"] is fake
        assert (await receive())["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        events.append("app cleanup")
        await send({"type": "lifespan.shutdown.complete"})

    server = Lifespan(PoolClientMiddleware(app, fake), state={})
    server.events = events
    server.run()
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["server got lifespan.startup.complete", "app cleanup", "aclose",
                      "server got lifespan.shutdown.complete"]
    assert server.scope["state"] == {"http.pool": fake, REGISTRY_KEY: fake}


@pytest.mark.parametrize("style", ["raises", "returns"])
def test_lifespan_answered_for_an_app_without_support(style, caplog):
    """An app that raises on the lifespan scope, or returns without answering: the
    middleware answers startup and shutdown itself and closes the pools in between."""
    caplog.set_level(logging.INFO, logger="poolclient")
    events: list[str] = []
    fake = FakeRegistry(events)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http" and style == "raises":
            raise RuntimeError("only http here")

    server = Lifespan(PoolClientMiddleware(app, fake))
    server.events = events
    server.run()
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert events == ["server got lifespan.startup.complete", "aclose",
                      "server got lifespan.shutdown.complete"]
    logged = [r.getMessage() for r in caplog.records if "lifespan protocol" in r.getMessage()]
    assert len(logged) == (1 if style == "raises" else 0)


def test_lifespan_startup_failure_is_the_apps(caplog):
    """startup.failed passes through; nothing is answered for the app, nothing closed."""
    events: list[str] = []
    fake = FakeRegistry(events)

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    server = Lifespan(PoolClientMiddleware(app, fake))
    server.run()
    assert server.sent == ["lifespan.startup.failed"]
    assert "aclose" not in events


def test_lifespan_crash_after_startup_is_raised():
    """An app that started and then raises during shutdown: the pools are still closed, and
    the error reaches the server (it is not mistaken for missing lifespan support)."""
    events: list[str] = []
    fake = FakeRegistry(events)

    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise RuntimeError("cleanup broke")

    server = Lifespan(PoolClientMiddleware(app, fake))
    with pytest.raises(RuntimeError, match="cleanup broke"):
        server.run()
    assert "aclose" in events and "server got lifespan.shutdown.complete" not in events


@pytest.mark.skipif(not hasattr(Registry, "aclose"), reason="Registry.aclose not landed yet")
def test_lifespan_with_the_real_registry(own):
    server = Lifespan(PoolClientMiddleware(Recorder(), own))
    server.run()
    assert server.sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- Starlette ---------------------------------------------------------------------------

def test_from_request_reads_a_starlette_request(own, global_registry):
    from starlette.requests import Request

    fallback = global_registry()
    assert from_request(Request(http_scope("/x", state={REGISTRY_KEY: own}))) is own
    assert from_request(Request(http_scope("/x"))) is fallback
    assert from_request(http_scope("/x", state={REGISTRY_KEY: own})) is own  # a raw scope
    assert from_request(Request(http_scope("/x", state={REGISTRY_KEY: "no"}))) is fallback


def test_starlette_app_with_its_own_lifespan_state(own):
    """A Starlette app with a lifespan yielding its own state, under TestClient: async and
    plain def endpoints find the registry next to the app's state, from_request agrees."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    @contextlib.asynccontextmanager
    async def lifespan(app):  # type: ignore[no-untyped-def]
        yield {"db": "conn"}

    async def async_view(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"same": from_request(request) is own,
                             "state": request.state["http.pool"] is own,
                             "db": request.state.db})

    def sync_view(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"same": from_request(request) is own})

    app = Starlette(routes=[Route("/a", async_view), Route("/s", sync_view)], lifespan=lifespan)
    with TestClient(PoolClientMiddleware(app, own)) as client:
        assert client.get("/a").json() == {"same": True, "state": True, "db": "conn"}
        assert client.get("/s").json() == {"same": True}
        assert client.get("/livez").json() == {"status": "pass"}
