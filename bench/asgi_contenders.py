"""The benchmark's ASGI contenders: one small Starlette app per way of calling an upstream
from an async handler, served by ``gunicorn -k asgi`` (issue 23).

Each app answers ``GET /`` with the body of ``GET $BENCH_UPSTREAM`` (the OpenAI ones with
the completion's text, from ``$BENCH_UPSTREAM/v1/chat/completions``), so they differ only in
how the call is made. The same framework for all, so that only the client differs.

Written as the frameworks' docs write them: a client made per request, or one made in the
lifespan and handed to the handlers through the lifespan state (``request.state``), closed
at shutdown. The poolclient apps run under poolclient's gunicorn hooks, as
``gunicorn.conf.py`` runs any app; their client is made in the lifespan too, on the
transport of the process-global registry (the one the hooks put in every request's
``scope["state"]["http.pool"]``): the transport resolves the pools of the process and event
loop each request runs on, so one client serves the worker for its life.

Trust: the httpx and httpx2 clients (and so the OpenAI SDK's) read ``SSL_CERT_FILE``, set
here to ``BENCH_CA`` as a user would point them at a private CA; aiohttp is given a context
loaded from it, which is how its docs trust a private CA; poolclient reads
``POOLCLIENT_CA_BUNDLE``, which the benchmark sets to the same file.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import httpx2
import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import poolclient

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "https://127.0.0.1:8443/")
CA = os.environ.get("BENCH_CA", "")
API = UPSTREAM.rstrip("/") + "/v1"
MESSAGES: list[Any] = [{"role": "user", "content": "ping"}]
# Read by httpx and httpx2 when a client is made, whatever the machine set it to.
os.environ["SSL_CERT_FILE"] = CA

Handler = Callable[[Request], Awaitable[bytes]]
Lifespan = Callable[[Starlette], Any]


def _app(handler: Handler, lifespan: Lifespan | None = None) -> Starlette:
    async def endpoint(request: Request) -> Response:
        return Response(await handler(request), media_type="application/json")

    return Starlette(routes=[Route("/", endpoint)], lifespan=lifespan)


def _state(request: Request, name: str) -> Any:
    return getattr(request.state, name)


# httpx.AsyncClient per request: a new pool, SSLContext (CA file read) and connection each
# time.

async def _httpx_per_request(request: Request) -> bytes:
    async with httpx.AsyncClient() as client:
        return (await client.get(UPSTREAM)).content


httpx_per_request = _app(_httpx_per_request)


# One httpx2.AsyncClient made in the lifespan: the frameworks' docs' pattern, the anchor.

@asynccontextmanager
async def _httpx2_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with httpx2.AsyncClient() as client:
        yield {"client": client}


async def _get(request: Request) -> bytes:
    client: httpx2.AsyncClient = _state(request, "client")
    return (await client.get(UPSTREAM)).content


httpx2_lifespan = _app(_get, _httpx2_lifespan)


# aiohttp's ClientSession made in the lifespan (its own connector, 100 connections).

@asynccontextmanager
async def _aiohttp_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=CA))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield {"session": session}


async def _aiohttp_get(request: Request) -> bytes:
    session: aiohttp.ClientSession = _state(request, "session")
    async with session.get(UPSTREAM) as response:
        return await response.read()


aiohttp_lifespan = _app(_aiohttp_get, _aiohttp_lifespan)


# poolclient's async pools: the same httpx2.AsyncClient, on the registry's transport.

def _pooled_client() -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=poolclient.get_registry().httpx2_async_transport())


@asynccontextmanager
async def _poolclient_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with _pooled_client() as client:  # its aclose() closes nothing shared
        yield {"client": client}


poolclient_async = _app(_get, _poolclient_lifespan)


# The OpenAI SDK: AsyncOpenAI made in the lifespan, on its default client (httpx2's pool)
# and on poolclient's transport.

async def _completion(request: Request) -> bytes:
    client: openai.AsyncOpenAI = _state(request, "openai")
    done = await client.chat.completions.create(model="bench", messages=MESSAGES)
    return str(done.choices[0].message.content).encode()


@asynccontextmanager
async def _openai_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with openai.AsyncOpenAI(base_url=API, api_key="bench") as client:
        yield {"openai": client}


@asynccontextmanager
async def _openai_poolclient_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    async with openai.AsyncOpenAI(base_url=API, api_key="bench",
                                  http_client=_pooled_client()) as client:
        yield {"openai": client}


openai_async_default = _app(_completion, _openai_lifespan)
openai_async_poolclient = _app(_completion, _openai_poolclient_lifespan)
