"""Every error poolclient raises itself; urllib3 and requests errors pass through unchanged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from urllib3.exceptions import EmptyPoolError

if TYPE_CHECKING:
    from urllib3.connectionpool import ConnectionPool


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


class PoolTimeoutError(EmptyPoolError, PoolClientError):
    """Every connection to an origin stayed in use for the whole pool timeout.

    A subclass of urllib3's ``EmptyPoolError``, so existing ``except`` clauses keep working.
    """

    def __init__(
        self, pool: ConnectionPool | None, origin: str, maxsize: int, waited: float | None
    ) -> None:
        self.origin = origin
        self.maxsize = maxsize
        self.waited = waited
        super().__init__(
            pool,  # type: ignore[arg-type]
            f"all {maxsize} connections to {origin} stayed in use for {waited} s "
            "(POOLCLIENT_POOL_TIMEOUT)",
        )

    def __reduce__(self) -> tuple[type[PoolTimeoutError], tuple[None, str, int, float | None]]:
        return (type(self), (None, self.origin, self.maxsize, self.waited))
