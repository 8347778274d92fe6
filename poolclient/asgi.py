"""ASGI middleware that hands every request the process's pools, serves ``/health``,
``/metrics``, ``/livez`` and ``/readyz``, and closes the async pools at lifespan shutdown.

Use it for an ASGI app (FastAPI, Starlette, Quart, Django's ASGI handler, a raw ASGI
callable) whose handlers call HTTP services: wrap the app once and every handler finds the
registry at ``scope["state"]["http.pool"]`` (Starlette and FastAPI: ``request.state``, or
``poolclient.from_request(request)``), on whichever ASGI server runs it::

    from poolclient.asgi import PoolClientMiddleware
    app = PoolClientMiddleware(app)

    async def handler(request):
        pool = request.state["http.pool"]            # a poolclient.Registry
        client = httpx2.AsyncClient(transport=pool.httpx2_async_transport())

Under gunicorn (``-k asgi``, or ``-k uvicorn_worker.UvicornWorker``) the hooks of
:mod:`poolclient.gunicorn` wrap any app with it, so the app needs no code at all. Wrapping
twice is harmless: an inner instance sees the outer one's mark on the scope and steps aside.

What it does, per scope type:

- ``lifespan``, ``http``, ``websocket``: the registry goes into ``scope["state"]`` under
  ``state_key`` and under ``"poolclient.registry"`` (a ``state`` dict is made if the server
  sent none). It is looked up per scope when none was given, so a middleware built before a
  fork (``--preload``) serves the child's registry.
- ``http`` at one of the four paths: answered here, with the bodies, statuses and access
  rules of the WSGI middleware (:mod:`poolclient.middleware`). ``/metrics`` (files of every
  worker) and ``/readyz`` (upstream checks) run in a thread, never on the event loop.
- ``lifespan``: after the app's own ``lifespan.shutdown.complete`` (or ``.failed``),
  ``await registry.aclose()`` closes the async pools of the running loop, before the server
  hears that shutdown is complete. An app that does not speak lifespan (it raises on the
  scope, or returns without answering) gets the protocol answered for it, so its pools
  are closed too. Servers skip lifespan shutdown on a quick exit (gunicorn on SIGINT and
  SIGQUIT): the ``worker_exit`` hook then drops the pools without awaiting anything.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from .middleware import (
    BLOCKING_ENDPOINTS,
    REGISTRY_KEY,
    Answer,
    endpoint_answer,
    endpoint_kind,
    stats_allowed,
)
from .registry import Registry, get_registry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("poolclient")

#: A scope key set by the outermost instance: inner ones step aside.
MARK = "poolclient.middleware"
_STATE_SCOPES = ("http", "websocket", "lifespan")
_T = TypeVar("_T")


class PoolClientMiddleware:
    """Put a :class:`~poolclient.Registry` into ``scope["state"]``, answer the health
    endpoints, close the async pools at lifespan shutdown.

    :param app: the ASGI application to wrap.
    :param registry: defaults to the process-global :func:`~poolclient.get_registry`,
        looked up per scope so that a middleware built before a fork serves the child.
    :param state_key: where handlers find the registry in ``scope["state"]``.
    :param health_path: this worker's pool stats; ``None`` turns it off.
    :param metrics_path: Prometheus metrics of every worker; ``None`` turns it off.
    :param livez_path: liveness: always 200, no I/O; ``None`` turns it off.
    :param readyz_path: readiness, the ``POOLCLIENT_READY_URLS`` checks; ``None`` turns it
        off.
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: Registry | None = None,
        *,
        state_key: str = "http.pool",
        health_path: str | None = "/health",
        metrics_path: str | None = "/metrics",
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
    ) -> None:
        self.app = app
        self.registry = registry
        self.state_key = state_key
        self.health_path = health_path
        self.metrics_path = metrics_path
        self.livez_path = livez_path
        self.readyz_path = readyz_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in _STATE_SCOPES or scope.get(MARK):
            await self.app(scope, receive, send)
            return
        scope[MARK] = True
        registry = self.registry if self.registry is not None else get_registry()
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state[self.state_key] = registry
        state[REGISTRY_KEY] = registry
        if kind == "lifespan":
            await self._lifespan(scope, receive, send, registry)
            return
        if kind == "http" and registry.settings.serve_endpoints:
            path = self._path(scope)
            if path in (self.health_path, self.metrics_path, self.livez_path,
                        self.readyz_path):
                await self._endpoint(scope, send, registry, path)
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _path(scope: Scope) -> str:
        # ASGI's path includes the root path (the mount point); the endpoints are matched
        # below it, as the WSGI middleware matches PATH_INFO below SCRIPT_NAME.
        path = str(scope.get("path") or "")
        root = str(scope.get("root_path") or "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        return path

    async def _endpoint(self, scope: Scope, send: Send, registry: Registry,
                        path: str) -> None:
        method = str(scope.get("method") or "GET")
        client = scope.get("client")
        address = str(client[0]) if client else None
        allowed = stats_allowed(address, _header(scope, b"authorization"), registry.settings)
        kind = endpoint_kind(path, self.health_path, self.metrics_path, self.livez_path,
                             self.readyz_path)
        answer: Answer
        if kind in BLOCKING_ENDPOINTS:
            answer = await in_thread(endpoint_answer, kind, method, allowed, registry)
        else:
            answer = endpoint_answer(kind, method, allowed, registry)
        await send({
            "type": "http.response.start",
            "status": answer.status,
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in answer.headers],
        })
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" else answer.body})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send,
                        registry: Registry) -> None:
        received: list[str] = []
        sent: list[str] = []
        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await close_async_pools(registry)

        async def app_receive() -> Message:
            message = await receive()
            received.append(str(message.get("type")))
            return message

        async def app_send(message: Message) -> None:
            kind = str(message.get("type"))
            if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await close()  # after the app's own shutdown, before the server's
            sent.append(kind)
            await send(message)

        started = ("lifespan.startup.complete", "lifespan.startup.failed")
        try:
            await self.app(scope, app_receive, app_send)
        except Exception as exc:
            if any(kind in sent for kind in started):  # it speaks lifespan, and failed
                if "lifespan.shutdown" in received:
                    await close()
                raise
            log.info("poolclient: the app does not support the ASGI lifespan protocol (it "
                     "raised %r); poolclient answers it, to close the async pools at "
                     "shutdown", exc)
        if "lifespan.startup.failed" in sent or closed:
            return
        # The app ended without finishing the protocol: finish it for the app.
        if "lifespan.startup.complete" not in sent:
            if "lifespan.startup" not in received:
                await receive()
            await send({"type": "lifespan.startup.complete"})
        if "lifespan.shutdown" not in received:
            await receive()  # until the server shuts down
        await close()
        await send({"type": "lifespan.shutdown.complete"})


async def close_async_pools(registry: Any) -> None:
    """``await registry.aclose()`` (a :class:`~poolclient.Registry`), logged rather than
    raised: the server's shutdown goes on."""
    try:
        await registry.aclose()
    except Exception:  # noqa: BLE001 - a failed close must not fail the server's shutdown
        log.exception("poolclient: closing the async pools at lifespan shutdown failed")


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread: asyncio's default executor on an asyncio loop,
    anyio's thread pool elsewhere (trio)."""
    if asyncio._get_running_loop() is not None:
        return await asyncio.to_thread(fn, *args)
    import anyio.to_thread

    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if bytes(key).lower() == name:
            return bytes(value).decode("latin-1")
    return None


def wrap(app: ASGIApp, registry: Registry | None = None) -> ASGIApp:
    """``app`` wrapped in :class:`PoolClientMiddleware`, unless it already is."""
    if isinstance(app, PoolClientMiddleware):
        return app
    return PoolClientMiddleware(app, registry)
