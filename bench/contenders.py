"""The benchmark's contenders: one small WSGI app per way of calling an upstream.

Each app answers ``GET /`` with the body of ``GET $BENCH_UPSTREAM`` (the static app with a
body of its own), so they differ only in how the call is made. ``python -m bench.run``
serves each in turn with the same gunicorn settings (``bench/gunicorn.conf.py``); the
poolclient apps run under poolclient's hooks, as ``gunicorn.conf.py`` runs any app.

Written as a user would write them: trust comes from ``BENCH_CA`` (given explicitly, since
``REQUESTS_CA_BUNDLE`` on the machine must not decide it), the bare urllib3 pool is sized to
the worker's threads (urllib3's default of one connection would make it churn).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import httpx2
import openai
import requests
import urllib3

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "https://127.0.0.1:8443/")
CA = os.environ.get("BENCH_CA", "")
THREADS = int(os.environ.get("GUNICORN_THREADS", "4"))
STATIC_BODY = b'{"ok":true}\n'


def _answer(start_response: StartResponse, body: bytes) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def static(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The ceiling: no upstream call."""
    return _answer(start_response, STATIC_BODY)


def session_per_request(environ: WSGIEnvironment,
                        start_response: StartResponse) -> Iterable[bytes]:
    """A new ``requests.Session`` per request: a new connection, and handshake, each time."""
    with requests.Session() as session:
        body = session.get(UPSTREAM, verify=CA, timeout=10).content
    return _answer(start_response, body)


_shared = requests.Session()


def shared_session(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """One module-level ``requests.Session`` shared by every thread of the worker."""
    return _answer(start_response, _shared.get(UPSTREAM, verify=CA, timeout=10).content)


# Made at import, in each worker (no --preload): a PoolManager per process.
_http = urllib3.PoolManager(maxsize=THREADS, ca_certs=CA, timeout=10.0)


def bare_urllib3(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """urllib3's own ``PoolManager``, one per process, a connection per thread."""
    return _answer(start_response, _http.request("GET", UPSTREAM).data)


def poolclient_request(environ: WSGIEnvironment,
                       start_response: StartResponse) -> Iterable[bytes]:
    """``environ['http.pool'].request()``."""
    return _answer(start_response, environ["http.pool"].request("GET", UPSTREAM).data)


def poolclient_session(environ: WSGIEnvironment,
                       start_response: StartResponse) -> Iterable[bytes]:
    """``environ['http.pool'].session()`` taken per request, as a handler would."""
    with environ["http.pool"].session() as session:
        body = session.get(UPSTREAM).content
    return _answer(start_response, body)



# The OpenAI SDK, calling /v1/chat/completions. Its default client trusts SSL_CERT_FILE
# (httpx2 reads it), as a user would point it at a private CA; set here, whatever the
# machine set it to.
os.environ["SSL_CERT_FILE"] = CA
API = UPSTREAM.rstrip("/") + "/v1"
MESSAGES = [{"role": "user", "content": "ping"}]


def _completion(client: openai.OpenAI) -> bytes:
    done = client.chat.completions.create(model="bench", messages=MESSAGES)
    return str(done.choices[0].message.content).encode()


def openai_per_request(environ: WSGIEnvironment,
                       start_response: StartResponse) -> Iterable[bytes]:
    """An ``openai.OpenAI`` client built (and closed) per request, on its own httpx2 pool."""
    with openai.OpenAI(base_url=API, api_key="bench") as client:
        return _answer(start_response, _completion(client))


_clients: dict[str, openai.OpenAI] = {}
_clients_lock = threading.Lock()


def _module_level(name: str, make: Callable[[], openai.OpenAI]) -> openai.OpenAI:
    # Made on the first request, in the worker (no --preload here), once per process.
    client = _clients.get(name)
    if client is None:
        with _clients_lock:
            client = _clients.get(name) or _clients.setdefault(name, make())
    return client


def openai_shared(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """One module-level ``openai.OpenAI`` per worker, on httpx2's own default pool."""
    client = _module_level("shared", lambda: openai.OpenAI(base_url=API, api_key="bench"))
    return _answer(start_response, _completion(client))


def openai_poolclient(environ: WSGIEnvironment,
                      start_response: StartResponse) -> Iterable[bytes]:
    """The same module-level client on ``environ['http.pool'].httpx2_transport()``."""
    transport = environ["http.pool"].httpx2_transport
    client = _module_level("pooled", lambda: openai.OpenAI(
        base_url=API, api_key="bench", http_client=httpx2.Client(transport=transport())))
    return _answer(start_response, _completion(client))
