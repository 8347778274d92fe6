"""The relay as a FastAPI app, on poolclient's async pools: the routes and error table of
:mod:`app.relay`, under gunicorn's own ASGI worker or uvicorn's.

Run: ``make run APP=app.asgi_example:app``, or ``UPSTREAM_URL=... gunicorn -c
gunicorn.conf.py -k asgi app.asgi_example:app`` (``-k uvicorn_worker.UvicornWorker`` works
too). ``app`` is wrapped in :class:`poolclient.asgi.PoolClientMiddleware` (the gunicorn
hooks would wrap it anyway), which puts the worker's registry at
``scope["state"]["http.pool"]`` (``request.state``) and answers ``/health``, ``/metrics``,
``/livez`` and ``/readyz``.

- ``GET /upstream/<path>?<query>``: relayed through ``httpx2.AsyncClient`` on
  ``registry.httpx2_async_transport()``, in the worker's event loop;
- ``GET /sync/upstream/<path>?<query>``: the same through the sync pools
  (``from_request(request).request(...)``), in a plain ``def`` that Starlette runs in its
  thread pool, never on the loop's own thread.

Failures answer as the WSGI relay's do: 502 (refused, unknown host, TLS, broken or
non-JSON answer), 504 (connect or read timeout, deadline), 503 with ``Retry-After``
(every connection busy for the pool timeout), as JSON naming the cause.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import httpx2
from fastapi import FastAPI, Request, Response
from starlette.exceptions import HTTPException

from app.relay import (
    DOT_SEGMENTS,
    PREFIX,
    UPSTREAM_ERRORS,
    Relay,
    classify,
    failure,
    non_json,
    upstream_url,
)
from poolclient import DeadlineExceededError, PoolClientError, Registry, from_request
from poolclient.asgi import PoolClientMiddleware

RELAY = Relay(upstream_url())  # a bad UPSTREAM_URL stops start-up here
SYNC_PREFIX = "/sync" + PREFIX

app = FastAPI(title="poolclient relay (ASGI)", openapi_url=None, docs_url=None,
              redoc_url=None)
# The gunicorn hooks wrap the app too; wrapping here as well makes other servers
# (``uvicorn app.asgi_example:app``) and Starlette's TestClient see the same state. Wrapping
# twice is harmless: the outer instance marks the scope and this one steps aside.
app.add_middleware(PoolClientMiddleware)

# One client per registry (there is one per process): its transport finds the pools of the
# process and event loop each request runs on, so it may be made before a fork, in any
# loop. timeout=None leaves every wait to the registry's settings (POOLCLIENT_*_TIMEOUT,
# POOLCLIENT_DEADLINE); trust_env=False keeps proxies from the environment from routing
# around the pools; redirects are followed, as urllib3 does for the sync relay.
_clients: dict[int, tuple[Registry, httpx2.AsyncClient]] = {}


def client_for(registry: Registry) -> httpx2.AsyncClient:
    found = _clients.get(id(registry))
    if found is None or found[0] is not registry:
        client = httpx2.AsyncClient(transport=registry.httpx2_async_transport(), timeout=None,
                                    trust_env=False, follow_redirects=True)
        found = _clients[id(registry)] = (registry, client)
    return found[1]


@app.get("/")
async def index() -> dict[str, Any]:
    return {"upstream": RELAY.upstream,
            "endpoints": ["/upstream/<path>", "/sync/upstream/<path>", "/health"]}


@app.api_route(PREFIX + "{rest:path}", methods=["GET", "HEAD"])
async def relay(request: Request, rest: str) -> Response:
    registry: Registry = request.state["http.pool"]
    url = RELAY.target(rest.encode(), request.scope["query_string"].decode("latin-1"))
    if url is None:
        return answer(request, 400, {"error": DOT_SEGMENTS})
    try:
        response = await client_for(registry).get(url, headers=RELAY.headers)
    except (httpx2.HTTPError, PoolClientError) as exc:
        status, cause, headers = failure(*async_cause(exc), registry.settings.pool_timeout)
        return answer(request, status, {"error": cause}, headers)
    return relayed(request, response.status_code, response.content,
                   response.headers.get("Content-Type"))


@app.api_route(SYNC_PREFIX + "{rest:path}", methods=["GET", "HEAD"])
def relay_sync(request: Request, rest: str) -> Response:
    registry = from_request(request)
    url = RELAY.target(rest.encode(), request.scope["query_string"].decode("latin-1"))
    if url is None:
        return answer(request, 400, {"error": DOT_SEGMENTS})
    try:
        response = registry.request("GET", url, headers=RELAY.headers)
    except UPSTREAM_ERRORS as exc:
        status, cause, headers = classify(exc, registry.settings.pool_timeout)
        return answer(request, status, {"error": cause}, headers)
    return relayed(request, response.status, response.data,
                   response.headers.get("Content-Type"))


@app.exception_handler(HTTPException)
async def no_route(request: Request, exc: HTTPException) -> Response:
    """404 and 405 in the relay's shape: ``{"error": ...}``."""
    if exc.status_code == 404:
        error = f"no route for {request.url.path}"
    elif exc.status_code == 405:
        error = f"method {request.method} not allowed"
    else:
        error = str(exc.detail)
    return answer(request, exc.status_code, {"error": error}, list((exc.headers or {}).items()))


def async_cause(exc: BaseException) -> tuple[str, str]:
    """The kind of failure (a key of :data:`app.relay.CAUSES`) an httpx2 (or poolclient)
    error is, and its detail. httpx2 chains the error it mapped (``raise ... from``), so
    the socket's or TLS's own error is found below it."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    # The deepest text names the cause best ("Connection refused" under anyio's "All
    # connection attempts failed").
    detail = next((str(e) for e in reversed(chain) if str(e)), type(exc).__name__)

    def found(*kinds: type[BaseException]) -> bool:
        return any(isinstance(e, kinds) for e in chain)

    if isinstance(exc, httpx2.PoolTimeout):
        return "pool", type(exc).__name__
    if found(DeadlineExceededError):
        return "deadline", detail
    # A timeout's own text is anyio's cancel-scope message: its class says more (the
    # pool's too, above).
    if isinstance(exc, httpx2.ConnectTimeout):
        return "connect-timeout", type(exc).__name__
    if isinstance(exc, httpx2.TimeoutException):
        return "read-timeout", type(exc).__name__
    if found(ssl.SSLError, ssl.CertificateError):
        return "tls", detail
    if isinstance(exc, httpx2.ConnectError):
        return ("name" if found(socket.gaierror) else "connect"), detail
    if isinstance(exc, (httpx2.NetworkError, httpx2.RemoteProtocolError)):
        return "broken", detail
    return "other", f"{type(exc).__name__}: {detail}"


def relayed(request: Request, status: int, body: bytes, content_type: str | None) -> Response:
    """The upstream's status and JSON body, or a 502 when the body is not JSON."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return answer(request, 502, {"error": non_json(status, content_type)})
    return answer(request, status, document)


def answer(request: Request, status: int, document: object,
           headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(document).encode()
    # HEAD: the length of the body a GET would get, and no body.
    return Response(b"" if request.method == "HEAD" else body, status,
                    {"Content-Length": str(len(body)), **dict(headers or [])},
                    media_type="application/json")
