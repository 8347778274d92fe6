"""poolclient: fork-aware, bounded, counted HTTP(S) connection pools for WSGI workers.

Importing the package imports neither urllib3 nor requests: gunicorn's config file imports
``poolclient.gunicorn`` in the master, and under gevent urllib3 must first be imported after
the worker's monkey patch (imported before, its ``ssl`` names stay unpatched and TLS fails
with RecursionError). Names from the pool modules are loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import ConfigError, ForkSafetyError, LoopBlockingError, PoolClientError

if TYPE_CHECKING:
    from .middleware import PoolClientMiddleware, from_request
    from .pool import PoolTimeoutError
    from .registry import Registry, configure, get_registry
    from .retry import DeadlineExceededError
    from .stats import PoolSnapshot, RegistrySnapshot

__version__ = "0.2.0"

_LAZY = {
    "DeadlineExceededError": "retry",
    "PoolClientMiddleware": "middleware",
    "from_request": "middleware",
    "PoolTimeoutError": "pool",
    "Registry": "registry",
    "configure": "registry",
    "get_registry": "registry",
    "PoolSnapshot": "stats",
    "RegistrySnapshot": "stats",
}

__all__ = [
    "ConfigError",
    "DeadlineExceededError",
    "ForkSafetyError",
    "LoopBlockingError",
    "PoolClientError",
    "PoolClientMiddleware",
    "PoolSnapshot",
    "PoolTimeoutError",
    "Registry",
    "RegistrySnapshot",
    "Settings",
    "configure",
    "from_request",
    "get_registry",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'poolclient' has no attribute {name!r}")
