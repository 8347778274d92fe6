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

It also keeps the addresses of each origin in use fresh (``POOLCLIENT_BALANCE``): when a
policy with connections says a resolution is due it resolves the name on a short-lived
thread of its own, so that a slow DNS server delays neither the sweeps nor any request.
An origin without connections is not resolved in the background (a process that called a
thousand hosts once must not resolve them for ever): a connect that finds its addresses
due resolves on its own path (``policy.resolve()``, where urllib3 resolves on every
connect), as does the first connect of all. A host that is an IP address has
nothing to balance: its policy keeps no address list.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .policy import OriginPolicy, PolicySink
from .settings import PolicySettings
from .snapshot import PolicySnapshot

log = logging.getLogger("poolclient")

# Seconds between sweeps: a stall is aborted at most this long after its limit (the limit
# is 2 s at least, POOLCLIENT_STALL_FLOOR), for a few microseconds of work per origin.
SWEEP_EVERY = 0.25
# Seconds a connect waits for another thread's first resolution of its origin's name.
FIRST_RESOLUTION_WAIT = 5.0

OriginKey = tuple[str, str, int]
SinkFactory = Callable[[str, str, int], "PolicySink | None"]
#: ``(host, port)`` -> the addresses to connect to, in the resolver's order; raises
#: ``OSError`` (``socket.gaierror``) when the name does not resolve.
Resolver = Callable[[str, int], Sequence[str]]


def resolve(host: str, port: int) -> list[str]:
    """Every address of ``host``, as ``getaddrinfo`` orders them: IPv4 only on a machine
    that cannot use IPv6 (urllib3's rule, so the pools connect where urllib3 would)."""
    family = socket.AF_UNSPEC if _ipv6_usable() else socket.AF_INET
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, family,
                                                            socket.SOCK_STREAM)]


_ipv6: bool | None = None


def _ipv6_usable() -> bool:
    # Compiled in is not enough (containers often have IPv6 off): bind ::1 once to see.
    global _ipv6  # noqa: PLW0603 - a fact about the machine, found once
    if _ipv6 is None:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
            _ipv6 = True
        except OSError:
            _ipv6 = False
    return _ipv6


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Origins:
    """Every origin's policy in this process; see the module docstring.

    :param concurrency: the worker's concurrency, of which a degraded origin may hold its
        share (``POOLCLIENT_BULKHEAD_SHARE``); read when a policy is made.
    :param read_timeout: the pools' read timeout, which caps the stall limit.
    :param sinks: the metrics sink of each new policy (``None``: none).
    :param max_origins: policies kept; the least recently made beyond it is forgotten
        (a process calling ever new hosts must not grow without end).
    :param resolver: what resolves a name (:func:`resolve`; tests bring their own).
    """

    def __init__(self, settings: PolicySettings, *, concurrency: Callable[[], int],
                 read_timeout: float | None, sinks: SinkFactory | None = None,
                 max_origins: int = 1024, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self.resolver = resolver
        self.pid = os.getpid()
        self._concurrency = concurrency
        self._read_timeout = read_timeout
        self._sinks = sinks
        self._max = max_origins
        self._lock = threading.Lock()
        self._resolutions = threading.Condition()  # notified when a resolution ends
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
                settings = self.settings
                if settings.balance and _is_ip(key[1]):
                    settings = dataclasses.replace(settings, balance=False)
                found = OriginPolicy(f"{key[0]}://{key[1]}:{key[2]}", settings,
                                     concurrency=self._concurrency(),
                                     read_timeout=self._read_timeout, sink=sink)
                if settings.balance:
                    found.resolve = functools.partial(self.resolve_first, key, found)
                self._policies[key] = found
                if len(self._policies) > self._max:
                    self._policies.popitem(last=False)
                if self._watchdog is None and (settings.stall_detection or settings.balance):
                    self._start_watchdog()
        return found

    def resolve_first(self, key: OriginKey, policy: OriginPolicy) -> None:
        """For a connect that finds its origin's addresses due (the first connect, or the
        first after the origin sat unused, which the watchdog does not resolve): resolve on
        this thread. If another thread is at it and there is no address yet, wait for it (at
        most :data:`FIRST_RESOLUTION_WAIT`), so that the threads of a worker's first burst
        do not all connect to the first address getaddrinfo gives, as urllib3 would."""
        self.refresh(key, policy)
        if policy.candidates():
            return
        deadline = time.monotonic() + FIRST_RESOLUTION_WAIT
        with self._resolutions:
            while policy.resolving and (left := deadline - time.monotonic()) > 0:
                self._resolutions.wait(left)

    def refresh(self, key: OriginKey, policy: OriginPolicy, *, started: bool = False) -> None:
        """Resolve ``key``'s name now, on this thread, and report it to ``policy`` (nothing,
        if another thread is at it already, unless ``started``: the caller was told to)."""
        if not started and not policy.start_refresh():
            return
        try:
            answer = self.resolver(key[1], key[2])
        except Exception as exc:  # noqa: BLE001 - a failed resolution keeps the last list
            log.warning("resolving %s failed (%s); keeping its last addresses",
                        policy.origin, exc)
            policy.resolve_failed()
        else:
            policy.resolved(answer)
        with self._resolutions:
            self._resolutions.notify_all()

    def refresh_due(self) -> int:
        """Start a resolution, each on a thread of its own, for every origin in use that is
        due one; how many were started."""
        with self._lock:
            due = list(self._policies.items())
        started = 0
        for key, policy in due:
            if policy.start_refresh(background=True):
                threading.Thread(target=self.refresh, args=(key, policy),
                                 kwargs={"started": True}, name="poolclient-resolve",
                                 daemon=True).start()
                started += 1
        return started

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
            origins.refresh_due()
        except Exception:  # noqa: BLE001 - the watchdog must outlive a bug in one sweep
            log.exception("poolclient watchdog: a sweep failed")
        del origins
