"""``GET /upstream/<path>?<query>`` relays ``GET {UPSTREAM_URL}/<path>?<query>``.

The answer is the upstream's status and JSON body. Every failure is a JSON answer that
names its cause, never a traceback:

=================================================  ======================================
upstream refused, unknown host, TLS failure,       502
broken or non-JSON answer
upstream (connect or read) timed out, or the      504
call's deadline passed
every pooled connection busy for the pool timeout  503 with ``Retry-After``
refused by the origin's policy: circuit open, its  503 with ``Retry-After`` (the seconds
share of the worker full while it is degraded      the policy gives, at least 1)
upstream made no progress for far longer than     504
usual (stalled; its connection was shut down)
=================================================  ======================================

Credentials in ``UPSTREAM_URL`` (``https://user:pass@host``) are sent as HTTP Basic
authentication and appear nowhere else: not in the index, not in errors, not in logs.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import make_headers

from poolclient import ConfigError, DeadlineExceededError, PoolClientError, Registry
from poolclient.redact import redact
from poolclient.resilience import RefusedError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PREFIX = "/upstream/"
DOT_SEGMENTS = "dot segments are not relayed"
_PATH_SAFE = "/:@!$&'()*+,;="


def upstream_url(environ: Mapping[str, str] | None = None) -> str:
    """``UPSTREAM_URL`` without its trailing slash; a bad one stops start-up."""
    value = (environ if environ is not None else os.environ).get("UPSTREAM_URL", "")
    if not value.startswith(("http://", "https://")):
        raise ConfigError("UPSTREAM_URL", value, "expected an http:// or https:// URL")
    return value.rstrip("/")


# What a call through the pools raises when the upstream fails.
UPSTREAM_ERRORS = (HTTPError, OSError, PoolClientError)


# Each kind of upstream failure: its status and the words its error starts with. The WSGI
# relay finds the kind in urllib3's errors (below), the ASGI one in httpx2's
# (app.asgi_example), so both answer alike.
CAUSES: dict[str, tuple[int, str]] = {
    "pool": (503, "no upstream connection free"),
    "refused": (503, "upstream call refused"),  # by the origin's policy (poolclient.resilience)
    "name": (502, "upstream host name could not be resolved"),
    "connect": (502, "upstream connection refused or failed"),
    "deadline": (504, "upstream call ran out of time"),
    "connect-timeout": (504, "upstream connect timed out"),
    "read-timeout": (504, "upstream read timed out"),
    "tls": (502, "upstream TLS failed"),
    "broken": (502, "upstream connection broke"),
    "other": (502, "upstream request failed"),
}


def failure(kind: str, detail: str,
            pool_timeout: float) -> tuple[int, str, list[tuple[str, str]]]:
    """Status, cause (credentials masked) and extra headers for a failure of ``kind``."""
    status, words = CAUSES[kind]
    headers = [("Retry-After", str(max(1, math.ceil(pool_timeout))))] if kind == "pool" else []
    return status, redact(f"{words}: {detail}"), headers


def classify(exc: Exception, pool_timeout: float) -> tuple[int, str, list[tuple[str, str]]]:
    """Status, cause (credentials masked) and extra headers for an upstream failure."""
    kind, reason = _classify(exc)
    detail = f"{type(reason).__name__}: {reason}" if kind == "other" else str(reason)
    if isinstance(reason, RefusedError):  # Retry-After: the seconds the policy gives
        status, cause, _ = failure(kind, detail, pool_timeout)
        return status, cause, [("Retry-After", str(max(1, math.ceil(reason.retry_after))))]
    return failure(kind, detail, pool_timeout)


def _classify(exc: Exception) -> tuple[str, BaseException]:
    reason: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if isinstance(reason, RefusedError):  # an OSError: before the connection errors
        return "refused", reason
    if isinstance(reason, EmptyPoolError):
        return "pool", reason
    if isinstance(reason, NewConnectionError):
        # NewConnectionError subclasses ConnectTimeoutError: test it first.
        if isinstance(reason, NameResolutionError):
            return "name", reason
        return "connect", reason
    if isinstance(reason, DeadlineExceededError):
        return "deadline", reason
    if isinstance(reason, ConnectTimeoutError):
        return "connect-timeout", reason
    if isinstance(reason, ReadTimeoutError):
        return "read-timeout", reason
    if isinstance(reason, SSLError):
        return "tls", reason
    if isinstance(reason, ProtocolError):
        return "broken", reason
    return "other", reason


def non_json(status: int, content_type: str | None) -> str:
    """The cause of a 502 for an upstream answer whose body is not JSON."""
    return (f"upstream answered {status} with a non-JSON body "
            f"(Content-Type: {content_type or 'none'})")


class Relay:
    """The WSGI application: relay one GET to ``upstream`` through ``environ['http.pool']``.

    :param upstream: base URL, for example ``https://api.internal:8443``.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream, self.headers = _credentials_to_headers(upstream.rstrip("/"))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == "/":
            index = {"upstream": self.upstream, "endpoints": ["/upstream/<path>", "/health"]}
            return _json(start_response, 200, index, method)
        if not path.startswith(PREFIX):
            return _json(start_response, 404, {"error": f"no route for {path}"}, method)
        if method not in ("GET", "HEAD"):
            return _json(start_response, 405, {"error": f"method {method} not allowed"},
                         method, [("Allow", "GET, HEAD")])
        pool: Registry = environ["http.pool"]
        # PATH_INFO arrives decoded, as latin-1 (PEP 3333).
        url = self.target(path[len(PREFIX):].encode("latin-1", "replace"),
                          environ.get("QUERY_STRING", ""))
        if url is None:
            return _json(start_response, 400, {"error": DOT_SEGMENTS}, method)
        try:
            response = pool.request("GET", url, headers=self.headers)
        except UPSTREAM_ERRORS as exc:
            status, cause, headers = classify(exc, pool.settings.pool_timeout)
            return _json(start_response, status, {"error": cause}, method, headers)
        try:
            body = json.loads(response.data)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            cause = non_json(response.status, response.headers.get("Content-Type"))
            return _json(start_response, 502, {"error": cause}, method)
        return _json(start_response, response.status, body, method)

    def target(self, rest: bytes, query: str) -> str | None:
        """The upstream URL for ``/upstream/<rest>?<query>``, ``rest`` as received but
        percent-decoded; ``None`` when it has a dot segment, which urllib3 and httpx would
        resolve: /upstream/../admin must not leave UPSTREAM_URL."""
        if any(segment in (b".", b"..") for segment in rest.split(b"/")):
            return None
        # Encoded again, or "%3F" would start a query upstream and UTF-8 be encoded twice.
        url = self.upstream + "/" + quote(rest, safe=_PATH_SAFE)
        return url + "?" + query if query else url


def _credentials_to_headers(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its userinfo, and the headers that carry it instead."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.netloc.rsplit("@", 1)[1]
    auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return urlunsplit(parts._replace(netloc=netloc)), make_headers(basic_auth=auth)


def _json(start_response: StartResponse, status: int, document: object, method: str,
          headers: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(document).encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Upstream Status"
    start_response(f"{status} {phrase}", [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *(headers or []),
    ])
    return [] if method == "HEAD" else [body]
