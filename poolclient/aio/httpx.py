"""httpx, the HTTP stack of many libraries, on the async pools.

Use it where a library or your code takes an ``httpx.AsyncClient``: build the client
once (at import is fine, ``--preload`` and a call in the master included) and every
worker's calls, on every event loop, go through that worker's and loop's bounded, counted
pools::

    import httpx, poolclient

    client = httpx.AsyncClient(transport=poolclient.get_registry().httpx_async_transport())

``pip install 'poolclient[asgi,httpx]'``. The OpenAI and Anthropic SDKs run on httpx2: use
:mod:`.httpx2` for them (Anthropic refuses httpx objects). What is mapped, and how, is in
:mod:`.transport`. With a transport given, httpx reads no ``HTTP(S)_PROXY``, and neither
does this one.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import httpx

from .transport import AsyncResponseStream, AsyncTransport

__all__ = ["AsyncPoolTransport"]


class _Stream(AsyncResponseStream, httpx.AsyncByteStream):
    pass


class AsyncPoolTransport(AsyncTransport, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` on the async pools; ``aclose()`` closes nothing
    shared. Made by :meth:`poolclient.Registry.httpx_async_transport`."""

    package: ClassVar[ModuleType] = httpx
    stream_class = _Stream
