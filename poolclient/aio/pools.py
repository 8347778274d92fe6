"""Which async pools a call uses: those of its process and its running event loop.

# design: an asyncio pool belongs to one loop and one process. httpcore2's locks and
# events bind to the loop that first uses them, its sockets are registered with that
# loop's selector, and a loop does not survive a fork (a client used in gunicorn's master
# through ``asyncio.run`` fails in the worker with "Event loop is closed"). So the pools
# are keyed by (pid, loop) and built lazily inside the loop that uses them; a second loop
# (a thread running its own) gets pools of its own.
#
# Pools nobody can close properly are dropped, never closed: those inherited across a
# fork (the parent still uses the connections: a TLS close_notify or a shutdown from the
# child would end them for the parent too) and those of a loop that has closed (nothing
# can await on it any more). Dropping releases this process's file descriptors with
# close(2) and writes nothing. A child keeps what it inherited referenced for ever
# (``_fork.bury``), so no finalizer ever runs on a parent's connection; a closed loop's
# pools are let go once their descriptors are released. Each dropped connection is
# counted (``abandoned`` in /health).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backend import SessionCache
from .pool import AsyncPool

if TYPE_CHECKING:
    from ..config import Settings
    from ..resilience import OriginPolicy
    from ..stats import PoolSnapshot

class LoopPools:
    """The async pools of one event loop in one process: one per origin and trust."""

    def __init__(self, owner: ProcessPools, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop
        self.pools: dict[tuple[Any, ...], AsyncPool] = {}

    def __repr__(self) -> str:
        return f"<LoopPools {len(self.pools)} pools on {self.loop!r}>"

    def pool(self, scheme: str, host: str, port: int, trust: Any = None) -> AsyncPool:
        """The pool for one origin and trust: ``None`` for the registry's default
        (``POOLCLIENT_CA_BUNDLE``, else the system's CAs), a CA file's path, an
        ``SSLContext`` of the caller's, or ``False`` for no verification."""
        key = (scheme, host, port, trust)
        found = self.pools.get(key)
        if found is None:
            found = self._new(key)
        return found

    def _new(self, key: tuple[Any, ...]) -> AsyncPool:
        scheme, host, port, trust = key
        owner = self.owner
        settings = owner.settings
        if len(self.pools) >= settings.max_hosts:  # the oldest goes, as urllib3's LRU
            oldest = next(iter(self.pools))
            self.loop.create_task(self.pools.pop(oldest).aclose())
        limits = settings.limits_by_origin.get((scheme, host.lower(), port), {})
        pool = AsyncPool(
            scheme, host, port, settings=settings,
            maxsize=int(limits.get("maxsize", owner.maxsize)),
            pool_timeout=limits.get("pool_timeout", settings.pool_timeout),
            tls=_tls(settings, trust) if scheme == "https" else None,
            policy=owner.policy(scheme, host, port) if owner.policy is not None else None)
        self.pools[key] = pool
        return pool

    async def aclose(self) -> None:
        pools = list(self.pools.values())
        self.pools.clear()
        for pool in pools:
            await pool.aclose()

    def release(self, report: bool) -> int:
        """Drop every pool without a write; with ``report``, count it in the metrics."""
        released = 0
        for pool in self.pools.values():
            n = pool.release()
            if report:
                pool.stats.abandoned(n)
            released += n
        return released


class ProcessPools:
    """Every running loop's async pools, in the process that built them."""

    def __init__(self, settings: Settings, maxsize: int,
                 policy: Callable[[str, str, int], OriginPolicy] | None = None) -> None:
        self.pid = os.getpid()
        self.settings = settings
        self.maxsize = maxsize
        self.policy = policy  # an origin's policy in this process (Registry.policy)
        self.loops: dict[asyncio.AbstractEventLoop, LoopPools] = {}
        self.abandoned = 0
        self._lock = threading.Lock()  # loops are added from their own threads

    def __repr__(self) -> str:
        return f"<ProcessPools pid {self.pid}: {len(self.loops)} loops>"

    def for_running_loop(self) -> LoopPools:
        loop = asyncio.get_running_loop()
        found = self.loops.get(loop)
        if found is not None:
            return found
        with self._lock:
            self._sweep()
            found = self.loops.get(loop)
            if found is None:
                found = self.loops[loop] = LoopPools(self, loop)
            return found

    def pop_running_loop(self) -> LoopPools | None:
        with self._lock:
            return self.loops.pop(asyncio.get_running_loop(), None)

    def _sweep(self) -> None:
        # Under the lock: the pools of loops that have closed since.
        for loop in [loop for loop in self.loops if loop.is_closed()]:
            self.abandoned += self.loops.pop(loop).release(report=True)

    def snapshots(self) -> list[PoolSnapshot]:
        with self._lock:
            self._sweep()
            pools = [pool for loop in self.loops.values() for pool in loop.pools.values()]
        return [pool.snapshot() for pool in pools]

    def close(self) -> None:
        """Close what can still be closed, drop the rest: a live loop's pools are closed on
        that loop, a closed loop's are dropped (see the module's design note)."""
        with self._lock:
            loops, self.loops = self.loops, {}
        for loop, pools in loops.items():
            if loop.is_closed():
                self.abandoned += pools.release(report=True)
                continue
            try:
                asyncio.run_coroutine_threadsafe(pools.aclose(), loop)
            except RuntimeError:  # closed meanwhile
                self.abandoned += pools.release(report=True)

    def forget_after_fork(self) -> int:
        """In a forked child: release every inherited connection's descriptor, take no
        lock, write nothing. Returns how many; the caller buries ``self``."""
        return sum(pools.release(report=False) for pools in list(self.loops.values()))


def _tls(settings: Settings, trust: Any) -> SessionCache:
    """A pool's TLS: a context of its own (the CA file read once per pool, and a session
    to resume), or the caller's context as it is, shared and not altered."""
    if isinstance(trust, ssl.SSLContext):
        return SessionCache(trust, resume=False)
    if trust is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(
            cafile=trust if isinstance(trust, str) else settings.ca_bundle)
    return SessionCache(context)
