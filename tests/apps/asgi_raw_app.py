"""A raw ASGI app that knows nothing of poolclient's middleware and has no lifespan.

Run with ``-c gunicorn.conf.py -k asgi`` (or ``-k uvicorn_worker.UvicornWorker``), it still
finds the registry at ``scope["state"]["http.pool"]``. Routes:

- ``/who``: this process's pid, what the state holds, and whether it is this worker's
  process-global registry;
- ``/async``: one upstream call through the registry's async httpx2 transport;
- ``/sync``: one upstream call through the sync pools, in a thread (never on the loop);
- ``/blocking``: the same call made on the event loop's thread (the mistake
  ``POOLCLIENT_LOOP_CALLS`` names);
- ``/dirty``: the :class:`DirtyRelay` dirty app's ``relay`` (gunicorn 25+, with
  ``--dirty-app tests.apps.asgi_raw_app:DirtyRelay``): one call from a dirty worker.

Each upstream call is stamped with the calling process's pid (``X-Client-Pid``).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx2
from gunicorn.dirty import DirtyApp, get_dirty_client_async

import poolclient

UPSTREAM = os.environ.get("UPSTREAM_URL", "")
# Built at import (in the master under --preload): each request resolves its own
# process's and loop's pools.
transport = poolclient.get_registry().httpx2_async_transport()
client = httpx2.AsyncClient(transport=transport)


async def _answer(send: Any, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # no lifespan support: the middleware answers it
    pool = scope.get("state", {}).get("http.pool")
    headers = {"X-Client-Pid": str(os.getpid())}
    path = scope["path"]
    if path == "/who":
        await _answer(send, 200, {
            "pid": os.getpid(),
            "type": type(pool).__name__,
            "is_global": pool is poolclient.get_registry(),
        })
    elif path == "/async":
        r = await client.get(UPSTREAM + "/echo", headers=headers)
        await _answer(send, 200, {"pid": os.getpid(), "upstream_status": r.status_code})
    elif path == "/sync":
        r = await asyncio.to_thread(pool.request, "GET", UPSTREAM + "/echo", headers=headers)
        await _answer(send, 200, {"pid": os.getpid(), "upstream_status": r.status})
    elif path == "/blocking":
        r = pool.request("GET", UPSTREAM + "/echo", headers=headers)  # BLOCKING-CALL
        await _answer(send, 200, {"pid": os.getpid(), "upstream_status": r.status})
    elif path == "/dirty":
        dirty = await get_dirty_client_async()
        await _answer(send, 200, await dirty.execute_async(
            "tests.apps.asgi_raw_app:DirtyRelay", "relay"))
    else:
        await _answer(send, 404, {"error": "not found"})


class DirtyRelay(DirtyApp):  # type: ignore[misc]
    """A dirty app that calls the upstream once at init() and once per ``relay``."""

    def init(self) -> None:
        poolclient.get_registry().request("GET", UPSTREAM + "/echo",
                                          headers={"X-Client-Pid": str(os.getpid())})

    def relay(self) -> dict[str, Any]:
        registry = poolclient.get_registry()
        r = registry.request("GET", UPSTREAM + "/echo",
                             headers={"X-Client-Pid": str(os.getpid())})
        return {"pid": os.getpid(), "upstream_status": r.status,
                "maxsize": registry.maxsize,
                "pools": [pool.maxsize for pool in registry.stats().pools]}
