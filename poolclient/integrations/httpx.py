"""httpx, the HTTP stack of many libraries, on a registry's pools.

Use it where a library or your code takes an ``httpx.Client``: build the client once (at
import is fine, ``--preload`` included) and every worker's calls go through that worker's
bounded, counted, fork-safe pools::

    import httpx, poolclient

    client = httpx.Client(transport=poolclient.get_registry().httpx_transport())

``pip install 'poolclient[httpx]'``. The OpenAI and Anthropic SDKs run on httpx2: use
:mod:`.httpx2` for them (Anthropic refuses httpx objects). What is mapped, and how, is in
:mod:`._httpx_family`. Proxies: with a transport given, httpx reads no ``HTTP(S)_PROXY``,
and neither does this one: it connects directly. Route an origin through a proxy with
``mounts={"https://api.example": httpx.HTTPTransport(proxy=...)}``, on httpx's own pool.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import httpx

from ._httpx_family import ResponseStream, Transport

__all__ = ["PoolTransport"]


class _Stream(ResponseStream, httpx.SyncByteStream):
    pass


class PoolTransport(Transport, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` on a registry's pools; ``close()`` closes nothing shared.

    Made by :meth:`poolclient.Registry.httpx_transport`, whose arguments it takes.
    """

    package: ClassVar[ModuleType] = httpx
    stream_class = _Stream
