"""pytest plugin for ``make peer``: poolclient in the place of urllib3's pools and manager,
and of requests' ``HTTPAdapter``, before urllib3's and requests' own tests import them.

Loaded with ``-p swap`` (``tests/peer/run.py`` puts this folder on ``PYTHONPATH``), so it is
imported while pytest reads its options, before any conftest or test module. What it swaps,
and nothing else:

- urllib3's pool classes: ``urllib3.HTTPConnectionPool`` / ``HTTPSConnectionPool``, the same
  names in ``urllib3.connectionpool`` (which ``connection_from_url`` and ``urllib3.http2``
  read when called) and in ``urllib3.poolmanager``, and the entries of
  ``urllib3.poolmanager.pool_classes_by_scheme`` (the dict itself, which every
  ``PoolManager`` and ``ProxyManager`` reads) become poolclient's ``CountedHTTPConnectionPool``
  / ``CountedHTTPSConnectionPool``;
- ``urllib3.PoolManager`` (and ``urllib3.poolmanager.PoolManager``) becomes the registry's
  own manager (``poolclient.registry._ProcessPools``) as a ``Registry()`` builds it from
  ``POOLCLIENT_*``, with the caller's constructor arguments (``num_pools``, ``headers``, any
  pool keyword) applied over it; ``urllib3.request()``'s module-level manager is rebuilt as
  one;
- ``requests.adapters.HTTPAdapter`` and ``requests.sessions.HTTPAdapter`` (what
  ``Session.__init__`` mounts) become poolclient's ``PoolAdapter`` on one shared
  ``poolclient.Registry()``, taking ``HTTPAdapter``'s constructor arguments: an explicit
  ``max_retries`` is kept, none gives the registry's retry policy (as ``Registry().adapter()``
  does); the pool sizes are stored as requests stores them, and the registry's pools decide.

Classes urllib3 built from the originals before this ran (``ProxyManager``, its
``HTTPSConnectionPool`` subclasses in urllib3 itself) are left as they are; the terminal
summary lists every name outside urllib3 and poolclient still bound to an original, so a
test that kept one is seen.
"""

from __future__ import annotations

import sys
from typing import Any

import requests.adapters
import requests.sessions
import urllib3
import urllib3.connectionpool
import urllib3.poolmanager
from requests.adapters import DEFAULT_POOLBLOCK, DEFAULT_POOLSIZE

import poolclient
from poolclient.adapters import PoolAdapter
from poolclient.pool import CountedHTTPConnectionPool, CountedHTTPSConnectionPool
from poolclient.registry import _ProcessPools

ORIGINALS: dict[str, Any] = {
    "HTTPConnectionPool": urllib3.connectionpool.HTTPConnectionPool,
    "HTTPSConnectionPool": urllib3.connectionpool.HTTPSConnectionPool,
    "PoolManager": urllib3.poolmanager.PoolManager,
    "HTTPAdapter": requests.adapters.HTTPAdapter,
}

#: The one registry every requests adapter uses (settings from ``POOLCLIENT_*``).
REGISTRY = poolclient.Registry()

_UNSET: Any = object()


class PoolManager(_ProcessPools):
    """urllib3's ``PoolManager`` as poolclient's registry makes it (bounded, blocking, its
    timeouts, retry policy, deadline and lifetimes), with the caller's arguments on top."""

    def __init__(self, num_pools: int | None = None, headers: Any = None,
                 **connection_pool_kw: Any) -> None:
        super().__init__(REGISTRY.settings, REGISTRY.maxsize, REGISTRY.timeout)
        # urllib3's own constructor once more, over the registry's pool settings with the
        # caller's on top, so that it treats them as it treats any (it normalises an int
        # ``retries``, for one); the registry's pool classes are put back after it.
        classes = self.pool_classes_by_scheme
        ORIGINALS["PoolManager"].__init__(
            self, self.pools._maxsize if num_pools is None else num_pools, headers,
            **{**self.connection_pool_kw, **connection_pool_kw})
        self.pool_classes_by_scheme = classes


class HTTPAdapter(PoolAdapter):
    """requests' ``HTTPAdapter(...)``, answered by a ``PoolAdapter`` on the shared registry."""

    def __init__(self, pool_connections: int = DEFAULT_POOLSIZE,
                 pool_maxsize: int = DEFAULT_POOLSIZE, max_retries: Any = _UNSET,
                 pool_block: bool = DEFAULT_POOLBLOCK) -> None:
        super().__init__(REGISTRY, max_retries=None if max_retries is _UNSET else max_retries)
        self.init_poolmanager(pool_connections, pool_maxsize, block=pool_block)


def _swap() -> None:
    for module in (urllib3, urllib3.connectionpool, urllib3.poolmanager):
        module.HTTPConnectionPool = CountedHTTPConnectionPool  # type: ignore[attr-defined]
        module.HTTPSConnectionPool = CountedHTTPSConnectionPool  # type: ignore[attr-defined]
    urllib3.poolmanager.pool_classes_by_scheme.update(
        http=CountedHTTPConnectionPool, https=CountedHTTPSConnectionPool)
    urllib3.PoolManager = urllib3.poolmanager.PoolManager = PoolManager  # type: ignore[misc]
    old, urllib3._DEFAULT_POOL = urllib3._DEFAULT_POOL, PoolManager()
    old.clear()
    requests.adapters.HTTPAdapter = requests.sessions.HTTPAdapter = HTTPAdapter  # type: ignore[misc]


_swap()

# Checked at once, so that a run whose swap did not take is not counted as poolclient's.
assert type(urllib3.connection_from_url("http://127.0.0.1:1")) is CountedHTTPConnectionPool
assert type(urllib3.PoolManager().connection_from_url("https://127.0.0.1:1")) \
    is CountedHTTPSConnectionPool
assert all(isinstance(a, PoolAdapter) for a in requests.Session().adapters.values())


def _leftovers() -> list[str]:
    """``module.name`` outside urllib3 and poolclient still bound to an original."""
    originals = {id(v): k for k, v in ORIGINALS.items()}
    found = []
    for modname, module in list(sys.modules.items()):
        if module is None or modname.split(".")[0] in ("urllib3", "poolclient", "swap"):
            continue
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in originals:
                found.append(f"{modname}.{attr}")
    return sorted(found)


def pytest_report_header(config: Any) -> str:
    return (f"poolclient swapped in (poolclient {poolclient.__version__}): "
            f"{sorted(ORIGINALS)} -> poolclient")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    left = _leftovers()
    terminalreporter.write_line(
        "poolclient swap: names still bound to urllib3's/requests' originals: "
        + (", ".join(left) if left else "none"))
