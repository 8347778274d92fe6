"""The policies of one process: one :class:`OriginPolicy` per origin, and the watchdog.

A :class:`Origins` belongs to the process that made it, as the pools do: the registry
makes one on first use in each process and drops the parent's after a fork, unused (its
watchdog thread does not exist in the child, and the parent's calls are not the child's to
abort). The sync pools and the async pools of a process share it, so an origin has one
breaker, one bulkhead and one budget per worker whichever kind of pool calls it::

    policy = registry.policy(scheme, host, port)   # what both kinds of pool call, once
                                                   # per pool, when the pool is made

The watchdog is one daemon thread per process, started with the first policy, that calls
:meth:`OriginPolicy.sweep` on every policy a few times a second and aborts the stalled
calls it returns (``Call.on_abort``: the sync pools shut their socket down; an async pool
sets an ``on_abort`` that wakes its task through ``loop.call_soon_threadsafe``). It stops
when its :class:`Origins` is closed or garbage-collected.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable

from .policy import OriginPolicy, PolicySink
from .settings import PolicySettings
from .snapshot import PolicySnapshot

log = logging.getLogger("poolclient")

# Seconds between sweeps: a stall is aborted at most this long after its limit (the limit
# is 2 s at least, POOLCLIENT_STALL_FLOOR), for a few microseconds of work per origin.
SWEEP_EVERY = 0.25

OriginKey = tuple[str, str, int]
SinkFactory = Callable[[str, str, int], "PolicySink | None"]


class Origins:
    """Every origin's policy in this process; see the module docstring.

    :param concurrency: the worker's concurrency, of which a degraded origin may hold its
        share (``POOLCLIENT_BULKHEAD_SHARE``); read when a policy is made.
    :param read_timeout: the pools' read timeout, which caps the stall limit.
    :param sinks: the metrics sink of each new policy (``None``: none).
    :param max_origins: policies kept; the least recently made beyond it is forgotten
        (a process calling ever new hosts must not grow without end).
    """

    def __init__(self, settings: PolicySettings, *, concurrency: Callable[[], int],
                 read_timeout: float | None, sinks: SinkFactory | None = None,
                 max_origins: int = 1024) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._concurrency = concurrency
        self._read_timeout = read_timeout
        self._sinks = sinks
        self._max = max_origins
        self._lock = threading.Lock()
        self._policies: OrderedDict[OriginKey, OriginPolicy] = OrderedDict()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Origins pid {self.pid}: {len(self._policies)} origins>"

    def get(self, scheme: str, host: str, port: int) -> OriginPolicy:
        """The policy of ``scheme://host:port`` in this process, made on first use."""
        key = (scheme, host.lower(), port)
        found = self._policies.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._policies.get(key)
            if found is None:
                sink = self._sinks(*key) if self._sinks is not None else None
                found = OriginPolicy(f"{key[0]}://{key[1]}:{key[2]}", self.settings,
                                     concurrency=self._concurrency(),
                                     read_timeout=self._read_timeout, sink=sink)
                self._policies[key] = found
                if len(self._policies) > self._max:
                    self._policies.popitem(last=False)
                if self._watchdog is None and self.settings.stall_detection:
                    self._start_watchdog()
        return found

    def policies(self) -> list[OriginPolicy]:
        with self._lock:
            return list(self._policies.values())

    def snapshots(self) -> tuple[PolicySnapshot, ...]:
        """Every origin's policy now (for /health)."""
        return tuple(policy.snapshot() for policy in self.policies())

    def sweep(self) -> int:
        """One sweep: abort every stalled call; how many were."""
        aborted = 0
        for policy in self.policies():
            for call in policy.sweep():
                abort = call.on_abort
                if abort is None:
                    continue
                try:
                    abort()
                except Exception:  # noqa: BLE001 - one failed abort must not stop the rest
                    log.exception("aborting a stalled call to %s failed", policy.origin)
                aborted += 1
        return aborted

    def close(self) -> None:
        """Stop the watchdog (the policies stay readable)."""
        self._stop.set()

    def _start_watchdog(self) -> None:
        # The thread holds a weak reference only: a registry replaced by configure() and
        # forgotten takes its watchdog with it.
        ref = weakref.ref(self)
        stop = self._stop
        self._watchdog = threading.Thread(target=_watch, args=(ref, stop),
                                          name="poolclient-watchdog", daemon=True)
        self._watchdog.start()


def _watch(ref: weakref.ref[Origins], stop: threading.Event) -> None:
    while not stop.wait(SWEEP_EVERY):
        origins = ref()
        if origins is None or origins.pid != os.getpid():
            return
        try:
            origins.sweep()
        except Exception:  # noqa: BLE001 - the watchdog must outlive a bug in one sweep
            log.exception("poolclient watchdog: a sweep failed")
        del origins
