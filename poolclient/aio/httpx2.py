"""httpx2, the HTTP stack of the OpenAI (3.x) and Anthropic (2.x) SDKs, on the async pools.

Use it where an async SDK or your code takes an ``httpx2.AsyncClient``: build the client
once (at import is fine, ``--preload`` and a call in the master included) and every
worker's calls, on every event loop, go through that worker's and loop's bounded, counted
pools::

    import httpx2, openai, poolclient

    client = openai.AsyncOpenAI(http_client=httpx2.AsyncClient(
        transport=poolclient.get_registry().httpx2_async_transport()))

``pip install 'poolclient[asgi,httpx2]'``. What is mapped, and how, is in
:mod:`.transport`. With a transport given, httpx2 reads no ``HTTP(S)_PROXY``, and neither
does this one.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import httpx2

from .transport import AsyncResponseStream, AsyncTransport

__all__ = ["AsyncPoolTransport"]


class _Stream(AsyncResponseStream, httpx2.AsyncByteStream):
    pass


class AsyncPoolTransport(AsyncTransport, httpx2.AsyncBaseTransport):
    """An ``httpx2.AsyncBaseTransport`` on the async pools; ``aclose()`` closes nothing
    shared. Made by :meth:`poolclient.Registry.httpx2_async_transport`."""

    package: ClassVar[ModuleType] = httpx2
    stream_class = _Stream
