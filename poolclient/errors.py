"""poolclient's own errors; urllib3 and requests errors pass through unchanged.

This module imports nothing from urllib3 (see ``poolclient/__init__``). The one error that
must subclass a urllib3 class, :class:`~poolclient.pool.PoolTimeoutError`, lives with the
pools.
"""

from __future__ import annotations


class PoolClientError(Exception):
    """Root of poolclient's own errors."""


class ConfigError(PoolClientError, ValueError):
    """A setting has a value poolclient cannot use; raised before any pool exists."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        super().__init__(f"{setting}={value!r} is not valid: {allowed}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, object, str]]:
        return (type(self), (self.setting, self.value, self.allowed))


class ForkSafetyError(PoolClientError, RuntimeError):
    """The registry could not be re-created in a forked child (its lock stayed held)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        super().__init__(
            f"process {pid}: could not take the registry lock after a fork that "
            "skipped os.register_at_fork handlers; another thread held it at fork time"
        )
