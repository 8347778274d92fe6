"""A WSGI app calling two upstreams through ``environ['http.pool']``, for
``test_resilience_gunicorn.py``: ``A_URL`` (the one that fails) and ``B_URL`` (healthy).

- ``GET /a?seconds=S``: ``GET {A_URL}/slow?seconds=S`` (S large: A stalls);
- ``GET /a503``: ``GET {A_URL}/status/503``;
- ``GET /b``: ``GET {B_URL}/items``; ``GET /bslow``: ``GET {B_URL}/slow?seconds=0.02``;
- ``GET /local``: answered without calling any upstream.

Upstream answers are relayed with their status; failures are answered as the example relay
answers them (``app.relay.classify``): a refusal by the origin's policy is 503 with
``Retry-After``, a stall or timeout 504, a broken upstream 502. The body always says which
(``{"status": ..., "error": ...}``).
"""

from __future__ import annotations

import json
import os

from app.relay import UPSTREAM_ERRORS, classify

ROUTES = {
    "/a": ("A_URL", "/slow"),
    "/a503": ("A_URL", "/status/503"),
    "/b": ("B_URL", "/items"),
    "/bslow": ("B_URL", "/slow?seconds=0.02"),
}


def _answer(start_response, status: int, document: object, headers=()) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(f"{status} X", [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(body))), *headers])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/local":
        return _answer(start_response, 200, {"pid": os.getpid()})
    if path not in ROUTES:
        return _answer(start_response, 404, {"error": path})
    pool = environ["http.pool"]
    base, upstream_path = ROUTES[path]
    url = os.environ[base] + upstream_path
    if path == "/a":
        url += "?" + environ.get("QUERY_STRING", "seconds=0")
    try:
        response = pool.request("GET", url)
    except UPSTREAM_ERRORS as exc:
        status, cause, headers = classify(exc, pool.settings.pool_timeout)
        return _answer(start_response, status, {"error": cause}, headers)
    return _answer(start_response, response.status, {"status": response.status})
