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


class LoopBlockingError(PoolClientError, RuntimeError):
    """A sync call through the pools was made on the thread of a running asyncio event loop
    (``POOLCLIENT_LOOP_CALLS=error``); raised before anything is sent."""

    def __init__(self, site: str, origin: str) -> None:
        self.site = site
        self.origin = origin
        super().__init__(
            f"a blocking HTTP call to {origin} on the thread of a running asyncio event "
            f"loop, at {site}: it stops every request of this worker until it returns. "
            "Make it async (httpx2.AsyncClient(transport=registry.httpx2_async_transport())) "
            "or run it in a thread (await asyncio.to_thread(...)); POOLCLIENT_LOOP_CALLS=error "
            "made this an error"
        )

    def __reduce__(self) -> tuple[type[LoopBlockingError], tuple[str, str]]:
        return (type(self), (self.site, self.origin))
