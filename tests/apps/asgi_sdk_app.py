"""An ASGI (Starlette) app whose ``AsyncOpenAI`` and ``AsyncAnthropic`` clients are built at
import on ``get_registry().httpx2_async_transport()``: under ``--preload`` in gunicorn's
master, before the fork and before any event loop of a worker exists.

- ``GET /openai``, ``/openai-stream``, ``/anthropic``, ``/anthropic-stream``: one call each,
  stamped with the calling process's pid (``X-Client-Pid``), answering the text;
- ``GET /sync``: a plain ``def`` endpoint (Starlette runs it in its thread pool) calling
  ``SYNC_URL/hello`` through the sync pools of ``scope["state"]["http.pool"]``;
- ``GET /openai-stalled``, ``/openai-refused``: one call to an upstream that never answers
  (``STALL_URL``; the client gives no timeout, so ``POOLCLIENT_READ_TIMEOUT`` bounds the
  read) or refuses (``REFUSED_URL``), answering 502 with the SDK's error class;
- ``GET /openai-relay?gate=NAME``: a streamed call to ``/gate/NAME/v1`` of the upstream,
  each chunk passed on to the caller as a server-sent event as soon as it arrives. The
  endpoint watches for the caller's ``http.disconnect`` and cancels the call when it comes
  (Starlette's StreamingResponse does not under servers of ASGI spec 2.4: it would notice
  only at its next write);
- ``GET /openai-relay-plain?gate=NAME``: the same through a plain StreamingResponse, which
  leaves a disconnect to the server (gunicorn cancels the task after
  ``asgi_disconnect_grace_period``);
- ``MASTER_CALLS=N``: N plain OpenAI calls at import, in one ``asyncio.run``.

Every answer carries ``X-Worker-Pid``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import anthropic
import anyio
import httpx2
import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

import poolclient

UPSTREAM = os.environ["UPSTREAM_URL"]
SYNC_URL = os.environ.get("SYNC_URL", UPSTREAM)
MESSAGES: Any = [{"role": "user", "content": "ping"}]

http = httpx2.AsyncClient(transport=poolclient.get_registry().httpx2_async_transport())
gpt = openai.AsyncOpenAI(base_url=UPSTREAM + "/v1", api_key="test", max_retries=0,
                         http_client=http)
claude = anthropic.AsyncAnthropic(base_url=UPSTREAM, api_key="test", max_retries=0,
                                  http_client=http)
failing = {
    # timeout=None: the SDK sets none, so the registry's read timeout is the one in force.
    "/openai-stalled": gpt.with_options(
        base_url=os.environ.get("STALL_URL", UPSTREAM) + "/stall/v1", timeout=None),
    "/openai-refused": gpt.with_options(base_url=os.environ.get("REFUSED_URL", "") + "/v1"),
}


def _pid() -> dict[str, str]:
    return {"X-Client-Pid": str(os.getpid())}


async def call(path: str) -> str:
    if path in failing:
        await failing[path].chat.completions.create(model="m", messages=MESSAGES)
        return ""
    if path == "/openai":
        done = await gpt.chat.completions.create(model="m", messages=MESSAGES,
                                                 extra_headers=_pid())
        return done.choices[0].message.content or ""
    if path == "/openai-stream":
        chunks = await gpt.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                   extra_headers=_pid())
        async with chunks:
            return "".join([c.choices[0].delta.content or "" async for c in chunks])
    if path == "/anthropic":
        message = await claude.messages.create(model="m", max_tokens=5, messages=MESSAGES,
                                               extra_headers=_pid())
        return message.content[0].text  # type: ignore[union-attr]
    async with claude.messages.stream(model="m", max_tokens=5, messages=MESSAGES,
                                      extra_headers=_pid()) as stream:
        return "".join([text async for text in stream.text_stream])


async def _master_calls(n: int) -> None:
    for _ in range(n):
        await call("/openai")


if int(os.environ.get("MASTER_CALLS", "0")):
    asyncio.run(_master_calls(int(os.environ["MASTER_CALLS"])))


def _answer(status: int, document: dict[str, object]) -> JSONResponse:
    return JSONResponse({**document, "pid": os.getpid()}, status,
                        headers={"X-Worker-Pid": str(os.getpid())})


async def sdk_call(request: Request) -> Response:
    try:
        return _answer(200, {"text": await call(request.url.path)})
    except (openai.APIError, anthropic.APIError) as exc:
        return _answer(502, {"error": type(exc).__name__})


def sync_call(request: Request) -> Response:
    """A plain def: Starlette runs it in a worker thread, where blocking is fine."""
    registry = request.scope["state"]["http.pool"]
    r = registry.request("GET", SYNC_URL + "/hello", headers=_pid())
    return _answer(r.status, {"text": json.loads(r.data)["path"]})


def _relayed_chunks(gate: str) -> AsyncGenerator[bytes, None]:
    """The chunks of one streamed call through ``/gate/<gate>/v1``, as SSE lines."""
    client = gpt.with_options(base_url=f"{UPSTREAM}/gate/{gate}/v1")

    async def events() -> AsyncGenerator[bytes, None]:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES,
                                                      stream=True, extra_headers=_pid())
        async with stream:  # closes the response however the loop ends: cancelled too
            async for chunk in stream:
                yield f"data: {chunk.model_dump_json()}\n\n".encode()
        yield b"data: [DONE]\n\n"
    return events()


_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]


async def relay_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """``/openai-relay``: SSE to the caller as it arrives; cancelled on disconnect."""
    gate = Request(scope).query_params["gate"]
    async with anyio.create_task_group() as group:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*_SSE_HEADERS, (b"x-worker-pid", str(os.getpid()).encode())]})
        async with aclosing(_relayed_chunks(gate)) as events:
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        group.cancel_scope.cancel()


async def relay_stream_plain(request: Request) -> Response:
    """``/openai-relay-plain``: the same as a StreamingResponse; a disconnect is the
    server's to act on."""
    return StreamingResponse(_relayed_chunks(request.query_params["gate"]),
                             media_type="text/event-stream",
                             headers={"X-Worker-Pid": str(os.getpid())})


class _Asgi:
    """Starlette treats a non-function endpoint as a raw ASGI app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


app = Starlette(routes=[
    *(Route(path, sdk_call) for path in ("/openai", "/openai-stream", "/anthropic",
                                         "/anthropic-stream", *failing)),
    Route("/sync", sync_call),
    Route("/openai-relay", _Asgi(relay_stream)),
    Route("/openai-relay-plain", relay_stream_plain),
])
