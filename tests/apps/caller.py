"""A test app that makes the upstream calls a test asks for, through ``environ['http.pool']``.

- ``GET /calls?url=U[&url=U2...]&method=M&id=ID&via=request|session&auth=A``: the calls in
  order (one requests session for all of them with ``via=session``), answering the last
  one's status and body, or the relay's JSON error for a failure (502, 503, 504).
- ``GET /hosts?port=P&total=N&index=K&count=C``: C GETs to loopback host K of the N the
  upstream serves (``app.upstream.loopback_hosts``), counted.
- ``GET /secret``: one call with ``.request()`` and one with ``.session()`` to
  ``SECRET_URL``, with ``Authorization: SECRET_AUTH`` (both from the environment, so the
  secrets are not in the access log's request line).

``CALLER_DEBUG_LOG=1`` sends every logger, urllib3's included, to stderr at DEBUG.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import parse_qs

from app.relay import UPSTREAM_ERRORS, classify
from app.upstream import loopback_hosts

if os.environ.get("CALLER_DEBUG_LOG") == "1":
    logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s")


def _answer(start_response, status: int, document: object, headers=()) -> list[bytes]:
    body = json.dumps(document).encode()
    start_response(f"{status} X", [("Content-Type", "application/json"),
                                   ("Content-Length", str(len(body))), *headers])
    return [body]


def _decode(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("latin-1")


def _calls(pool, query: dict[str, list[str]]) -> tuple[int, object]:
    method = query.get("method", ["GET"])[0]
    headers = {}
    if "id" in query:
        headers["X-Request-Id"] = query["id"][0]
    if "auth" in query:
        headers["Authorization"] = query["auth"][0]
    body = b"{}" if method in ("POST", "PUT") else None
    status, result = 0, None
    if query.get("via", ["request"])[0] == "session":
        with pool.session() as session:
            for url in query["url"]:
                r = session.request(method, url, data=body, headers=headers)
                status, result = r.status_code, _decode(r.content)
    else:
        for url in query["url"]:
            r = pool.request(method, url, body=body, headers=headers)
            status, result = r.status, _decode(r.data)
    return status, result


def app(environ, start_response):
    pool = environ["http.pool"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "")
    try:
        if path == "/calls":
            status, result = _calls(pool, query)
            return _answer(start_response, 200, {"status": status, "body": result})
        if path == "/hosts":
            hosts = loopback_hosts(int(query["total"][0]))
            host = hosts[int(query["index"][0]) % len(hosts)]
            url = f"https://{host}:{query['port'][0]}/h"
            ok = sum(pool.request("GET", url).status == 200
                     for _ in range(int(query["count"][0])))
            return _answer(start_response, 200, {"ok": ok, "pid": os.getpid()})
        if path == "/secret":
            url, auth = os.environ["SECRET_URL"], os.environ["SECRET_AUTH"]
            first = pool.request("GET", url, headers={"Authorization": auth}).status
            with pool.session() as session:
                second = session.get(url, headers={"Authorization": auth}).status_code
            return _answer(start_response, 200, {"statuses": [first, second]})
    except UPSTREAM_ERRORS as exc:
        status, cause, headers = classify(exc, pool.settings.pool_timeout)
        return _answer(start_response, status, {"error": cause}, headers)
    return _answer(start_response, 404, {"error": path})
