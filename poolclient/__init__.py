"""poolclient: fork-aware, bounded, counted HTTP(S) connection pools for WSGI workers."""

from .config import Settings
from .errors import ConfigError, ForkSafetyError, PoolClientError, PoolTimeoutError
from .middleware import PoolClientMiddleware
from .registry import Registry, configure, get_registry
from .stats import PoolSnapshot, RegistrySnapshot

__all__ = [
    "ConfigError",
    "ForkSafetyError",
    "PoolClientError",
    "PoolClientMiddleware",
    "PoolSnapshot",
    "PoolTimeoutError",
    "Registry",
    "RegistrySnapshot",
    "Settings",
    "configure",
    "get_registry",
]
