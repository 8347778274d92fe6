"""httpx2, the HTTP stack of the OpenAI (3.x) and Anthropic (2.x) SDKs, on a registry's pools.

Use it where an SDK or your code takes an ``httpx2.Client``: build the client once (at
import is fine, ``--preload`` included) and every worker's calls go through that worker's
bounded, counted, fork-safe pools::

    import httpx2, openai, poolclient

    client = openai.OpenAI(
        http_client=httpx2.Client(transport=poolclient.get_registry().httpx2_transport()))

``pip install 'poolclient[httpx2]'`` (Python 3.11+, as httpx2). What is mapped, and how,
is in :mod:`._httpx_family`. Proxies: with a transport given, httpx2 reads no
``HTTP(S)_PROXY``, and neither does this one: it connects directly. Route an origin through
a proxy with ``mounts={"https://api.example": httpx2.HTTPTransport(proxy=...)}``, on
httpx2's own pool.
"""

from __future__ import annotations

from types import ModuleType
from typing import ClassVar

import httpx2

from ._httpx_family import ResponseStream, Transport

__all__ = ["PoolTransport"]


class _Stream(ResponseStream, httpx2.SyncByteStream):
    pass


class PoolTransport(Transport, httpx2.BaseTransport):
    """An ``httpx2.BaseTransport`` on a registry's pools; ``close()`` closes nothing shared.

    Made by :meth:`poolclient.Registry.httpx2_transport`, whose arguments it takes.
    """

    package: ClassVar[ModuleType] = httpx2
    stream_class = _Stream
