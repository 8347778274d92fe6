"""``GET /upstream/<path>?<query>`` relays ``GET {UPSTREAM_URL}/<path>?<query>``.

The answer is the upstream's status and JSON body. Every failure is a JSON answer that
names its cause, never a traceback:

=================================================  ======================================
upstream refused, unknown host, TLS failure,       502
broken or non-JSON answer
upstream (connect or read) timed out, or the      504
call's deadline passed
every pooled connection busy for the pool timeout  503 with ``Retry-After``
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

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PREFIX = "/upstream/"
_PATH_SAFE = "/:@!$&'()*+,;="


def upstream_url(environ: Mapping[str, str] | None = None) -> str:
    """``UPSTREAM_URL`` without its trailing slash; a bad one stops start-up."""
    value = (environ if environ is not None else os.environ).get("UPSTREAM_URL", "")
    if not value.startswith(("http://", "https://")):
        raise ConfigError("UPSTREAM_URL", value, "expected an http:// or https:// URL")
    return value.rstrip("/")


# What a call through the pools raises when the upstream fails.
UPSTREAM_ERRORS = (HTTPError, OSError, PoolClientError)


def classify(exc: Exception, pool_timeout: float) -> tuple[int, str, list[tuple[str, str]]]:
    """Status, cause (credentials masked) and extra headers for an upstream failure."""
    status, cause, headers = _classify(exc, pool_timeout)
    return status, redact(cause), headers


def _classify(exc: Exception, pool_timeout: float) -> tuple[int, str, list[tuple[str, str]]]:
    reason: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    if isinstance(reason, EmptyPoolError):
        retry = [("Retry-After", str(max(1, math.ceil(pool_timeout))))]
        return 503, f"no upstream connection free: {reason}", retry
    if isinstance(reason, NewConnectionError):
        # NewConnectionError subclasses ConnectTimeoutError: test it first.
        if isinstance(reason, NameResolutionError):
            return 502, f"upstream host name could not be resolved: {reason}", []
        return 502, f"upstream connection refused or failed: {reason}", []
    if isinstance(reason, DeadlineExceededError):
        return 504, f"upstream call ran out of time: {reason}", []
    if isinstance(reason, ConnectTimeoutError):
        return 504, f"upstream connect timed out: {reason}", []
    if isinstance(reason, ReadTimeoutError):
        return 504, f"upstream read timed out: {reason}", []
    if isinstance(reason, SSLError):
        return 502, f"upstream TLS failed: {reason}", []
    if isinstance(reason, ProtocolError):
        return 502, f"upstream connection broke: {reason}", []
    return 502, f"upstream request failed: {type(reason).__name__}: {reason}", []


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
        rest = path[len(PREFIX):]
        if any(segment in (".", "..") for segment in rest.split("/")):
            # urllib3 would resolve them: /upstream/../admin must not leave UPSTREAM_URL.
            return _json(start_response, 400, {"error": "dot segments are not relayed"},
                         method)
        # PATH_INFO arrives decoded (as latin-1, PEP 3333): encode it again, or "%3F" would
        # start a query upstream and UTF-8 would be encoded twice.
        url = self.upstream + "/" + quote(rest.encode("latin-1", "replace"), safe=_PATH_SAFE)
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        try:
            response = pool.request("GET", url, headers=self.headers)
        except UPSTREAM_ERRORS as exc:
            status, cause, headers = classify(exc, pool.settings.pool_timeout)
            return _json(start_response, status, {"error": cause}, method, headers)
        try:
            body = json.loads(response.data)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            ctype = response.headers.get("Content-Type", "none")
            cause = (f"upstream answered {response.status} with a non-JSON body "
                     f"(Content-Type: {ctype})")
            return _json(start_response, 502, {"error": cause}, method)
        return _json(start_response, response.status, body, method)


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
