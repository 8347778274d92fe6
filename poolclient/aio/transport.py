"""An httpx-style async request sent through the async pools of the running event loop,
and httpcore2's answer and errors given back in the package's own terms.

The async twin of :mod:`poolclient.integrations._httpx_family`: httpx and httpx2 share
one transport contract (``handle_async_request(request) -> Response``, ``aclose()``) but
each checks its own classes (httpx2's client asserts an ``httpx2.AsyncByteStream``; the
Anthropic SDK refuses any class that comes from ``httpx``). So the logic is here, importing
neither package, and :mod:`.httpx2` and :mod:`.httpx` bind it to their classes.

- Each request looks up the pools of the process and loop it runs in, so a client built
  at import (under ``--preload``, even one used in the master through ``asyncio.run``)
  works in every worker and every loop.
- The request goes to httpcore2 as httpx2's own transport sends it: method, URL, header
  lines in order with repeats, the body as the stream it is (never read whole first).
- ``extensions["timeout"]``: ``connect``, ``read``, ``write`` and ``pool`` as given; a
  ``None`` takes the registry's setting, because every wait is bounded here. The
  transport's deadline bounds everything up to the status line.
- httpcore2's exceptions become the package's exceptions of the same name (the two
  packages' hierarchies mirror each other), which the SDKs' retries and error classes
  are built on.
- ``aclose()`` closes nothing: the pools are the registry's, shared by every client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

import httpcore2

from ..config import non_negative_int, positive_seconds
from ..integrations._httpx_family import _checked
from ..resilience import RefusedError

if TYPE_CHECKING:
    from types import ModuleType

    from ..registry import Registry
    from .pool import Exchange


class AsyncTransport:
    """The transport, bound to a package by a subclass that names it in ``package`` and
    gives its response stream class in ``stream_class``.

    :param registry: whose async pools carry the requests, looked up per request.
    :param deadline: seconds a call may take until its response's status line;
        ``POOLCLIENT_DEADLINE`` by default (raise it for slow, unstreamed completions).
    :param connect_retries: ``POOLCLIENT_CONNECT_RETRIES`` by default; an SDK's own
        retries come on top.
    :param verify: the trust of this transport's connections: ``None`` for the
        registry's default (``POOLCLIENT_CA_BUNDLE``, else the system's CAs), a CA file's
        path, an ``ssl.SSLContext``, or ``False``. Each gets pools of its own.
    """

    package: ClassVar[ModuleType]
    stream_class: ClassVar[type[AsyncResponseStream]]

    def __init__(self, registry: Registry, *, deadline: float | None = None,
                 connect_retries: int | None = None, verify: Any = None) -> None:
        self.registry = registry
        self.deadline = registry.settings.deadline if deadline is None else _checked(
            "deadline", deadline, positive_seconds)
        self.retries = None if connect_retries is None else _checked(
            "connect_retries", connect_retries, non_negative_int)
        if not (verify is None or verify is False or isinstance(verify, str)
                or type(verify).__name__ == "SSLContext"):
            raise ValueError(f"verify={verify!r}: expected None, False, a CA file's path "
                             "or an ssl.SSLContext")
        self.verify = verify

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.package.__name__} on {self.registry!r} "
                f"deadline {self.deadline}>")

    async def handle_async_request(self, request: Any) -> Any:
        package = self.package
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise package.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request)
        port = url.port or (443 if scheme == "https" else 80)
        pool = self.registry.loop_pools().pool(scheme, url.host, port, self.verify)
        core = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                              target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response, exchange = await pool.send(core, deadline=self.deadline,
                                                 retries=self.retries)
        except Exception as exc:
            mapped = mapped_error(package, exc, request)
            if mapped is None:
                raise
            raise mapped from exc
        return package.Response(
            status_code=response.status,
            headers=response.headers,
            stream=self.stream_class(package, request, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Nothing: the pools are the registry's, shared by every client in the process.

        The SDKs close their client (and so this) on ``async with`` and ``close()``; the
        pools close in lifespan shutdown (:mod:`poolclient.asgi`) or with the worker."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncResponseStream:
    """A response body as httpcore2 reads it off the socket (a server-sent event reaches
    the caller when it arrives); closed without a half-read connection going back."""

    def __init__(self, package: ModuleType, request: Any, exchange: Exchange) -> None:
        self.package = package
        self.request = request
        self.exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self.exchange
        try:
            async for chunk in exchange.response.stream:  # type: ignore[union-attr]
                yield chunk
        except asyncio.CancelledError:
            await exchange.cancelled()
            raise
        except Exception as exc:
            await exchange.failed(exc)
            mapped = mapped_error(self.package, exc, self.request)
            if mapped is None:
                raise
            raise mapped from exc
        exchange.done = True

    async def aclose(self) -> None:
        await self.exchange.aclose()


def mapped_error(package: ModuleType, exc: Exception, request: Any) -> Exception | None:
    """The package's exception for one of httpcore2's: the class of the same name, or of
    its nearest base that the package has; ``None`` for anything else (an upload stream's
    own error, say), to be raised as it is."""
    if isinstance(exc, RefusedError):  # the origin's policy refused it before any socket
        return package.ConnectError(str(exc), request=request)  # type: ignore[no-any-return]
    if not isinstance(exc, _HTTPCORE_ERRORS):
        return None
    for cls in type(exc).__mro__:
        mapped = getattr(package, cls.__name__, None)
        if mapped is not None and cls.__module__.startswith("httpcore2"):
            return mapped(str(exc), request=request)  # type: ignore[no-any-return]
    return None


_HTTPCORE_ERRORS = (
    httpcore2.TimeoutException, httpcore2.NetworkError, httpcore2.ProtocolError,
    httpcore2.ProxyError, httpcore2.UnsupportedProtocol,
)
