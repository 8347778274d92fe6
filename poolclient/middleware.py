"""WSGI middleware that hands every request the process's pools, and serves ``/health``
and ``/metrics``.

Use it when handlers call HTTP services: wrap the application once and every handler finds
the registry at ``environ['http.pool']`` (and at ``environ['poolclient.registry']``, the
namespaced key PEP 3333 recommends), so connections are reused across requests instead of
opened per request. Under gunicorn, ``-c gunicorn.conf.py`` (or the hooks in
:mod:`poolclient.gunicorn`) wraps any application without changing it.

Wrapping twice is harmless: an inner instance sees the outer one's key and steps aside.

``GET /health`` answers this worker's counters as JSON. Under a multi-process server
it describes only the worker that answered; ``GET /metrics`` sums every worker (see
:mod:`poolclient.metrics`). Both show upstream hosts, so only callers from
``POOLCLIENT_STATS_ALLOW`` (loopback and private networks by default) or with the bearer
``POOLCLIENT_STATS_TOKEN`` may read them; others get 403.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from . import inherited, metrics, timing
from .config import UNIX, Settings
from .registry import Registry, get_registry
from .render import HEALTH_JSON, health_document, json_bytes, readiness_document

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

REGISTRY_KEY = "poolclient.registry"


class PoolClientMiddleware:
    """Inject a :class:`~poolclient.Registry` into the environ and answer health checks.

    :param app: the WSGI application to wrap.
    :param registry: defaults to the process-global :func:`~poolclient.get_registry`,
        looked up per request so that a middleware built before a fork serves the child.
    :param environ_key: where handlers find the registry.
    :param health_path: the path answered with this worker's pool stats; ``None`` turns it
        off.
    :param metrics_path: the path answered with Prometheus metrics of every worker (needs
        ``poolclient[prometheus]``; without it, 501 saying so); ``None`` turns it off.
    :param livez_path: liveness: always 200, no I/O. ``None`` turns it off.
    :param readyz_path: readiness: the ``POOLCLIENT_READY_URLS`` checks, cached; 503 when
        one fails. ``None`` turns it off.
    :param server_timing: add a ``Server-Timing`` header with this request's upstream
        calls; ``None`` follows ``POOLCLIENT_SERVER_TIMING``.

    .. code-block:: python

        from poolclient import PoolClientMiddleware
        application = PoolClientMiddleware(application)

        def handler(environ, start_response):
            r = environ["http.pool"].request("GET", "https://api.internal/items")
    """

    def __init__(
        self,
        app: WSGIApplication,
        registry: Registry | None = None,
        *,
        environ_key: str = "http.pool",
        health_path: str | None = "/health",
        metrics_path: str | None = "/metrics",
        livez_path: str | None = "/livez",
        readyz_path: str | None = "/readyz",
        server_timing: bool | None = None,
    ) -> None:
        self.app = app
        self.registry = registry
        self.environ_key = environ_key
        self.health_path = health_path
        self.metrics_path = metrics_path
        self.livez_path = livez_path
        self.readyz_path = readyz_path
        self.server_timing = server_timing

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if REGISTRY_KEY in environ:
            return self.app(environ, start_response)
        registry = self.registry if self.registry is not None else get_registry()
        environ[REGISTRY_KEY] = registry
        environ[self.environ_key] = registry
        path = environ.get("PATH_INFO")
        if (path is not None and registry.settings.serve_endpoints
                and path in (self.health_path, self.metrics_path, self.livez_path,
                             self.readyz_path)):
            return self._endpoint(environ, start_response, registry, path)
        timed = self.server_timing
        if timed is None:
            timed = registry.settings.server_timing
        if not timed:
            return self.app(environ, start_response)
        # The app, and the iteration of what it returns (a generator may call upstream and
        # start_response only when first iterated), run in one context holding the list.
        context = contextvars.copy_context()
        calls: list[float] = context.run(timing.start)

        def timed_start(status: str, headers: list[tuple[str, str]],
                        exc_info: Any = None) -> Any:
            headers = [*headers, ("Server-Timing", timing.server_timing(calls))]
            return start_response(status, headers, exc_info)

        return _InContext(context, context.run(self.app, environ, timed_start))

    def _endpoint(
        self, environ: WSGIEnvironment, start_response: StartResponse, registry: Registry,
        path: str,
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        allowed = stats_allowed(environ.get("REMOTE_ADDR"), environ.get("HTTP_AUTHORIZATION"),
                                registry.settings)
        kind = endpoint_kind(path, self.health_path, self.metrics_path, self.livez_path,
                             self.readyz_path)
        answer = endpoint_answer(kind, method, allowed, registry)
        start_response(answer.status_line, list(answer.headers))
        return [] if method == "HEAD" else [answer.body]


@dataclass(frozen=True)
class Answer:
    """What one of the four endpoints answers: the same for the WSGI and ASGI middleware."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status_line(self) -> str:
        return f"{self.status} {HTTPStatus(self.status).phrase}"


ENDPOINTS = ("health", "metrics", "livez", "readyz")
#: The endpoints that read files (the metrics of every worker) or sockets (the readiness
#: checks): an event loop runs them in a thread.
BLOCKING_ENDPOINTS = frozenset({"metrics", "readyz"})


def endpoint_kind(path: str, health: str | None, metrics_path: str | None,
                  livez: str | None, readyz: str | None) -> str:
    """Which endpoint ``path`` is, given the middleware's paths (one of :data:`ENDPOINTS`)."""
    for kind, own in zip(ENDPOINTS, (health, metrics_path, livez, readyz), strict=True):
        if own is not None and path == own:
            return kind
    raise ValueError(f"{path!r} is none of the endpoints")


def endpoint_answer(kind: str, method: str, allowed: bool, registry: Registry) -> Answer:
    """The answer of endpoint ``kind`` to ``method`` (bodies and statuses as documented in
    the module docstring). ``metrics`` and ``readyz`` may read files and sockets."""
    if method not in ("GET", "HEAD"):
        body = json_bytes({"error": f"method {method} not allowed", "allow": ["GET", "HEAD"]})
        return Answer(405, (*_json_headers(body), ("Allow", "GET, HEAD")), body)
    status = 200
    if kind == "livez":  # no I/O, nothing to hide
        body, ctype = json_bytes({"status": "pass"}), HEALTH_JSON
    elif kind == "readyz":
        checks = registry.ready()
        document = readiness_document(checks, details=allowed)
        if document["status"] == "fail":
            status = 503
        body, ctype = json_bytes(document), HEALTH_JSON
    elif not allowed:
        body = json_bytes({"error": "forbidden: allowed from POOLCLIENT_STATS_ALLOW "
                                    "networks or with the POOLCLIENT_STATS_TOKEN bearer"})
        status, ctype = 403, "application/json"
    elif kind == "health":
        document = health_document(registry.stats(), registry.settings.redacted(),
                                   inherited.found())
        document["maxsize"] = registry.maxsize
        body, ctype = json_bytes(document), HEALTH_JSON
    elif metrics.available():
        problem = metrics.problem()
        if problem is None:
            body, ctype = metrics.render()
        else:  # a wrong answer would look right: say what is wrong instead
            body, ctype = (problem + "\n").encode(), "text/plain; charset=utf-8"
            status = 500
    else:
        body, ctype = (metrics.INSTALL_HINT + "\n").encode(), "text/plain; charset=utf-8"
        status = 501
    return Answer(status, (("Content-Type", ctype), ("Content-Length", str(len(body))),
                           ("Cache-Control", "no-store")), body)


class _InContext:
    """A WSGI response iterable whose iteration and close run in ``context``."""

    def __init__(self, context: contextvars.Context, body: Iterable[bytes]) -> None:
        self.context = context
        self.body = body
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self.context.run(iter, self.body)
        return self.context.run(next, self._iterator)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            self.context.run(close)


def stats_allowed(address: str | None, authorization: str | None, settings: Settings) -> bool:
    """Whether a caller may read the stats endpoints: by its address (``None`` or empty for
    a unix-socket caller, which has none), or by the ``Authorization`` header it sent."""
    token = settings.stats_token
    if token is not None and authorization:
        presented = authorization.encode("latin-1", "replace")
        if hmac.compare_digest(presented, f"Bearer {token}".encode()):
            return True
    if not address:  # a unix socket: servers give no address
        return UNIX in settings.stats_allow.split(",")
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in settings.stats_networks)


def _json_headers(body: bytes) -> tuple[tuple[str, str], ...]:
    return (("Content-Type", "application/json"), ("Content-Length", str(len(body))))


def from_request(request: object) -> Registry:
    """The registry for a request: a Flask or Django request (anything with ``.environ``,
    or Django's ``.META``), a Starlette or FastAPI request (anything with an ASGI
    ``.scope``), or a WSGI environ or ASGI scope itself.

    It is the one the middleware put there (:class:`PoolClientMiddleware`, or
    :class:`poolclient.asgi.PoolClientMiddleware` in ``scope["state"]``); without the
    middleware (a framework's test client, a management command) it is the process-global
    :func:`get_registry`, which is just as fork-aware. Code never spells the key::

        from poolclient import from_request

        def view(request):
            items = from_request(request).request("GET", API + "/items").json()
    """
    found: object = None
    environ = getattr(request, "environ", None)
    scope = getattr(request, "scope", None)
    if environ is None and isinstance(request, dict) and "type" in request:
        scope = request  # an ASGI scope
    if isinstance(environ, dict):
        found = environ.get(REGISTRY_KEY)
    elif isinstance(scope, dict):
        state = scope.get("state")
        found = state.get(REGISTRY_KEY) if isinstance(state, dict) else None
    else:
        environ = getattr(request, "META", request)
        found = environ.get(REGISTRY_KEY) if isinstance(environ, dict) else None
    return found if isinstance(found, Registry) else get_registry()


def wrap(app: WSGIApplication, registry: Registry | None = None) -> WSGIApplication:
    """``app`` wrapped in :class:`PoolClientMiddleware`, unless it already is."""
    if isinstance(app, PoolClientMiddleware):
        return app
    return PoolClientMiddleware(app, registry)
