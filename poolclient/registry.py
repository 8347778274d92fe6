"""The registry: one process's connection pools, shared by all of its threads.

A :class:`Registry` owns a urllib3 ``PoolManager`` of counted pools, one per origin
(scheme, host, port and TLS settings). The manager belongs to the process that created it:
after a fork the child starts with none and builds its own on first use (see ``_fork``).
Pools are created lazily, on the first call in the process, so that under gevent their
locks are made after the monkey patch.

Each origin also has one :class:`~poolclient.resilience.OriginPolicy` per process (circuit
breaker, bulkhead, retry budget, stall detection), held by the registry's
:class:`~poolclient.resilience.origins.Origins` for this process and rebuilt after a fork
as the pools are. The sync pools get theirs when they are made; the async pools ask
:meth:`Registry.policy` the same way, so both kinds share one policy per origin.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from urllib3 import PoolManager
from urllib3.connectionpool import port_by_scheme
from urllib3.exceptions import LocationValueError, URLSchemeUnknown
from urllib3.poolmanager import SSL_KEYWORDS

from . import _fork, metrics, redact, retry
from .config import Settings
from .errors import ForkSafetyError
from .pool import CountedHTTPConnectionPool, CountedHTTPSConnectionPool, CountedPool
from .probes import Check, Readiness
from .resilience import OriginPolicy, PolicySettings
from .resilience.origins import Origins, Resolver, resolve
from .stats import PoolSnapshot, RegistrySnapshot

if TYPE_CHECKING:
    import httpx
    import httpx2
    import requests
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse

    from .adapters import PoolAdapter
    from .aio.pools import LoopPools, ProcessPools

_NO_VERIFY = ("CERT_NONE", 0)
_OWN_TRUST = ("ca_certs", "ca_cert_dir", "ca_cert_data", "ssl_context")


class _ProcessPools(PoolManager):
    """The pools of one process: a ``PoolManager`` that counts, bounds and pins trust."""

    def __init__(self, settings: Settings, maxsize: int, timeout: retry.ValidatedTimeout,
                 policy: Callable[[str, str, int], OriginPolicy] | None = None) -> None:
        trust: dict[str, Any] = {"ca_certs": settings.ca_bundle} if settings.ca_bundle else {}
        super().__init__(
            num_pools=settings.max_hosts,
            maxsize=maxsize,
            block=settings.block,
            timeout=timeout,
            retries=retry.policy(settings),
            **trust,
        )
        self.pid = os.getpid()
        self.settings = settings
        self.readiness = Readiness()
        self.adapter: PoolAdapter | None = None  # what every .session() mounts
        self.policy = policy  # an origin's policy in this process (Origins.get)
        self._keys: dict[tuple[Any, ...], Any] = {}  # connection_from_host's arguments
        redact.install()
        self.pool_classes_by_scheme = {
            "http": CountedHTTPConnectionPool,
            "https": CountedHTTPSConnectionPool,
        }

    def _merge_pool_kwargs(self, override: dict[str, Any] | None) -> dict[str, Any]:
        merged = super()._merge_pool_kwargs(override)
        # POOLCLIENT_CA_BUNDLE is the default trust: what a call that names no CA of its
        # own verifies with (.request(), requests' verify=True or an inherited
        # REQUESTS_CA_BUNDLE, which PoolAdapter leaves out). A caller that names its own
        # (a CA file, directory or data, an SSLContext: an SDK's cluster or private CA)
        # gets exactly that, in a pool of its own. verify=False still turns it off.
        ca_bundle = self.settings.ca_bundle
        if not ca_bundle or merged.get("cert_reqs") in _NO_VERIFY:
            return merged
        if override and any(override.get(key) is not None for key in _OWN_TRUST):
            if override.get("ca_certs") is None:
                merged.pop("ca_certs", None)  # the pin, merged in from the defaults
            return merged
        # Written out in full so that .request() (no cert_reqs) and requests' verify=True
        # (CERT_REQUIRED) share one pool, and one maxsize, per origin.
        merged["cert_reqs"] = "CERT_REQUIRED"
        merged["ca_certs"] = ca_bundle
        return merged

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        limits = self.settings.limits_by_origin.get((scheme, host.lower(), port), {})
        if "maxsize" in limits:  # POOLCLIENT_ORIGIN_LIMITS, over POOLCLIENT_MAXSIZE
            request_context = {**(request_context or self.connection_pool_kw),
                               "maxsize": limits["maxsize"]}
        pool = super()._new_pool(scheme, host, port, request_context)
        if isinstance(pool, CountedPool):
            pool.pool_timeout = limits.get("pool_timeout", self.settings.pool_timeout)
            pool.idle_timeout = self.settings.idle_timeout
            pool.max_lifetime = self.settings.max_lifetime
            pool.deadline = self.settings.deadline
            pool.loop_calls = self.settings.loop_calls
            if self.policy is not None:
                pool.policy = self.policy(scheme, host, port)
        return pool

    def live_pools(self) -> list[CountedPool]:
        # Read the container directly: get() would refresh every pool's LRU position on each
        # health check.
        with self.pools.lock:
            pools = list(self.pools._container.values())
        return [p for p in pools if isinstance(p, CountedPool)]

    def abandon(self) -> None:
        """In a forked child: release this process's copies of the idle sockets' descriptors.

        No lock is taken (another parent thread may have held it at fork time) and nothing
        is sent: ``detach()`` then ``os.close()`` is close(2) on the child's descriptor only.
        """
        for pool in list(self.pools._container.values()):
            queue = pool.pool
            for conn in tuple(queue.queue) if queue is not None else ():
                sock = getattr(conn, "sock", None)
                if sock is not None and sock.fileno() != -1:  # -1: released already
                    os.close(sock.detach())

    def connection_from_host(
        self, host: str | None, port: int | None = None, scheme: str | None = "http",
        pool_kwargs: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        # TLS arguments are part of urllib3's pool key even for http://; dropping them
        # keeps one pool, and one maxsize, per plain-HTTP origin whatever verify= said.
        if scheme == "http" and pool_kwargs:
            pool_kwargs = {k: v for k, v in pool_kwargs.items() if k not in SSL_KEYWORDS}
        # The key depends only on these arguments (the manager's own settings never change):
        # remember it rather than merge and normalise some thirty settings per request.
        try:
            asked = (scheme, host, port, tuple(pool_kwargs.items()) if pool_kwargs else ())
            key = self._keys.get(asked)
        except TypeError:  # an unhashable setting: no shortcut
            return super().connection_from_host(host, port, scheme, pool_kwargs)
        if key is not None:
            try:
                return self.pools[key]  # also refreshes its place in the LRU
            except KeyError:  # closed since, to make room: made again below
                pass
        if not host:
            raise LocationValueError("No host specified.")
        context = self._merge_pool_kwargs(pool_kwargs)
        context["scheme"] = scheme = (scheme or "http").lower()
        context["port"] = port_by_scheme.get(scheme, 80) if port is None else port
        context["host"] = host
        key_fn = self.key_fn_by_scheme.get(scheme)
        if key_fn is None:
            raise URLSchemeUnknown(scheme)
        key = key_fn(context)
        if len(self._keys) >= 4 * self.pools._maxsize:  # bounded, like the pools
            self._keys.clear()
        self._keys[asked] = key
        return self.connection_from_pool_key(key, request_context=context)

    def close(self) -> None:
        """Close every pool: idle connections now, checked-out ones when returned."""
        for pool in self.live_pools():
            pool.close()
        self.pools.clear()
        if self.adapter is not None:
            self.adapter.close()  # its proxy pools; the shared ones are closed above


class Registry:
    """HTTP(S) connection pools for one process, safe to share across its threads.

    It is what handlers find in ``environ['http.pool']``::

        pool = environ["http.pool"]
        r = pool.request("GET", "https://api.example/items")     # urllib3 response
        with pool.session() as s:                                 # requests, own cookies
            s.get("https://api.example/items")
        Cloudant(user, key, url=url, adapter=pool.adapter())      # any HTTPAdapter user

    :param settings: defaults to :meth:`Settings.from_env`.
    :param default_maxsize: the pool size when ``settings.maxsize`` is unset; by default the
        process's concurrency, which the gunicorn hooks set to the worker's thread count.
    :param policy: the origins' policy settings (:mod:`poolclient.resilience`); defaults to
        :meth:`PolicySettings.from_env`. ``PolicySettings.off()`` turns every protection off.
    :param resolver: ``(host, port) -> addresses``, what resolves each origin's name for
        ``POOLCLIENT_BALANCE`` (``getaddrinfo``; tests point names at loopback addresses).
    """

    def __init__(
        self, settings: Settings | None = None, *, default_maxsize: int | None = None,
        policy: PolicySettings | None = None, resolver: Resolver = resolve,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.policy_settings = policy if policy is not None else PolicySettings.from_env()
        self.default_maxsize = default_maxsize
        self.resolver = resolver  # what resolves the origins' names (POOLCLIENT_BALANCE)
        #: The timeouts of a call that gives none (made once: see ``ValidatedTimeout``).
        self.timeout = retry.ValidatedTimeout(connect=self.settings.connect_timeout,
                                              read=self.settings.read_timeout)
        self._lock = threading.Lock()
        self._state: _ProcessPools | None = None
        self._aio: ProcessPools | None = None  # the async pools, once a loop has called
        self._origins: Origins | None = None  # the origins' policies of this process
        self._origins_lock = threading.Lock()
        _fork.track(self)

    def __repr__(self) -> str:
        snapshot = self.stats()
        totals = snapshot.totals()
        return (
            f"<Registry [pools {len(snapshot.pools)} | in use {totals['in_use']}, "
            f"idle {totals['idle']} | maxsize {self.maxsize}] pid {snapshot.pid}>"
        )

    @property
    def maxsize(self) -> int:
        """Connections allowed per origin in this process."""
        return self.settings.maxsize or self.default_maxsize or _fork.concurrency()

    def _pools(self) -> _ProcessPools:
        state = self._state
        pid = os.getpid()
        if state is not None and state.pid == pid:
            return state
        # First use in this process, or a fork that skipped the at-fork handler (whose lock
        # another thread may have held at fork time: hence the bounded wait). Double-checked
        # so that concurrent first callers build one manager, not several.
        if not self._lock.acquire(timeout=5):
            raise ForkSafetyError(pid)
        try:
            state = self._state
            if state is None or state.pid != pid:
                if state is not None:  # inherited, and the at-fork handler did not run
                    state.abandon()
                    _fork.bury(state)
                state = _ProcessPools(self.settings, self.maxsize, self.timeout,
                                      self.origins().get)
                self._state = state
            return state
        finally:
            self._lock.release()

    def _forget_after_fork(self) -> None:
        # In the child, straight after fork: rebind and bury, never close (see _fork).
        inherited, self._state = self._state, None
        self._lock = threading.Lock()
        # The parent's policies: dropped unused (the watchdog thread is not in the child).
        self._origins = None
        self._origins_lock = threading.Lock()
        if inherited is not None and inherited.pid != os.getpid():
            inherited.abandon()
            _fork.bury(inherited)
        aio, self._aio = self._aio, None
        if aio is not None and aio.pid != os.getpid():
            self._abandoned = aio.forget_after_fork()
            _fork.bury(aio)

    _abandoned = 0  # connections of async pools inherited across a fork, dropped

    def origins(self) -> Origins:
        """This process's policies, one per origin, made on first use in each process."""
        origins = self._origins
        pid = os.getpid()
        if origins is not None and origins.pid == pid:
            return origins
        with self._origins_lock:
            origins = self._origins
            if origins is None or origins.pid != pid:
                fixed = self.default_maxsize
                origins = self._origins = Origins(
                    self.policy_settings,
                    concurrency=_fork.concurrency if fixed is None else (lambda: fixed),
                    read_timeout=self.settings.read_timeout,
                    sinks=metrics.policy_sink,
                    max_origins=max(64, 4 * self.settings.max_hosts),
                    resolver=self.resolver)
        return origins

    def policy(self, scheme: str, host: str, port: int) -> OriginPolicy:
        """The policy of one origin in this process (breaker, bulkhead, retry budget,
        stall detection); the sync pools get theirs when made, and so should the async
        pools: ``registry.policy("https", "api.example", 443)``, then ``admit()`` per call
        as :mod:`poolclient.resilience` describes. The worker's concurrency (its threads)
        sizes the bulkhead whichever kind of pool asks first."""
        return self.origins().get(scheme, host, port)

    def loop_pools(self) -> LoopPools:
        """This process's async pools for the running event loop (:mod:`poolclient.aio`),
        built on first use in each process and loop."""
        aio = self._aio
        if aio is None or aio.pid != os.getpid():
            with self._lock:
                aio = self._aio
                if aio is None or aio.pid != os.getpid():
                    from .aio.pools import ProcessPools

                    aio = self._aio = ProcessPools(self.settings, self.maxsize, self.policy)
        return aio.for_running_loop()

    def request(
        self, method: str, url: str, *, deadline: float | None = None, **kw: Any
    ) -> BaseHTTPResponse:
        """Send a request through the shared pools; arguments as urllib3's ``request()``.

        :param deadline: seconds the call may take: pool wait, connects, retries, redirects
            and reads, each wait's timeout cut to what is left when it starts (a body
            trickled in slowly is bounded per read, not in total);
            ``POOLCLIENT_DEADLINE`` by default.
        :raises DeadlineExceededError: a ``ReadTimeoutError``, when the deadline passed.
        """
        pools = self._pools()
        # (begin and end, not ``with retry.deadline``: see there.)
        started = retry.begin(deadline if deadline is not None else self.settings.deadline)
        try:
            return pools.request(method, url, **kw)
        finally:
            if started is not None:
                retry.end(started)

    def connection_from_host(
        self, host: str, port: int | None = None, scheme: str = "http",
        pool_kwargs: dict[str, Any] | None = None,
    ) -> HTTPConnectionPool:
        """The shared pool for one origin, as urllib3's ``PoolManager`` gives it."""
        return self._pools().connection_from_host(host, port, scheme, pool_kwargs)

    def adapter(self) -> PoolAdapter:
        """A requests ``HTTPAdapter`` on the shared pools; closing it closes nothing shared."""
        from .adapters import PoolAdapter

        return PoolAdapter(self)

    def session(self) -> requests.Session:
        """A new ``requests.Session`` on the shared pools, with cookies of its own."""
        from .adapters import PoolAdapter, pooled_session

        pools = self._pools()
        if pools.adapter is None:  # two threads may both build one; either will do
            pools.adapter = PoolAdapter(self)
        return pooled_session(self, pools.adapter)

    def httpx2_transport(self, *, deadline: float | None = None,
                         connect_retries: int | None = None) -> httpx2.BaseTransport:
        """An ``httpx2`` transport on the shared pools, for the OpenAI and Anthropic SDKs::

            openai.OpenAI(http_client=httpx2.Client(transport=pool.httpx2_transport()))

        Safe to build at import: each request uses the pools of the process it runs in.
        Closing it (or the client) closes nothing shared.

        :param deadline: seconds a call may take until its response arrives;
            ``POOLCLIENT_DEADLINE`` by default (raise it for slow, unstreamed completions).
        :param connect_retries: ``POOLCLIENT_CONNECT_RETRIES`` by default; the SDK's own
            retries come on top.
        """
        from .integrations.httpx2 import PoolTransport

        return PoolTransport(self, deadline=deadline, connect_retries=connect_retries)

    def httpx_transport(self, *, deadline: float | None = None,
                        connect_retries: int | None = None) -> httpx.BaseTransport:
        """An ``httpx`` transport on the shared pools: ``httpx.Client(transport=...)``;
        arguments as :meth:`httpx2_transport`."""
        from .integrations.httpx import PoolTransport

        return PoolTransport(self, deadline=deadline, connect_retries=connect_retries)

    def httpx2_async_transport(self, *, deadline: float | None = None,
                               connect_retries: int | None = None,
                               verify: Any = None) -> httpx2.AsyncBaseTransport:
        """An ``httpx2`` async transport on the async pools, for ``AsyncOpenAI`` and
        ``AsyncAnthropic``::

            openai.AsyncOpenAI(http_client=httpx2.AsyncClient(
                transport=pool.httpx2_async_transport()))

        Safe to build at import: each request uses the pools of the process and event loop
        it runs on. Closing it (or the client) closes nothing shared. Arguments as
        :meth:`httpx2_transport`, and ``verify`` (see :class:`poolclient.aio.transport.
        AsyncTransport`)."""
        from .aio.httpx2 import AsyncPoolTransport

        return AsyncPoolTransport(self, deadline=deadline, connect_retries=connect_retries,
                                  verify=verify)

    def httpx_async_transport(self, *, deadline: float | None = None,
                              connect_retries: int | None = None,
                              verify: Any = None) -> httpx.AsyncBaseTransport:
        """An ``httpx`` async transport on the async pools: ``httpx.AsyncClient(transport=
        ...)``; arguments as :meth:`httpx2_async_transport`."""
        from .aio.httpx import AsyncPoolTransport

        return AsyncPoolTransport(self, deadline=deadline, connect_retries=connect_retries,
                                  verify=verify)

    def pool_manager(self, **connection_pool_kw: Any) -> PoolManager:
        """A urllib3 ``PoolManager`` on the shared pools, for code that holds one (the
        Kubernetes client, google-auth's ``AuthorizedHttp``); takes ``PoolManager``'s
        keywords. Its TLS settings (``ca_certs``, ``cert_file``, ``server_hostname``, ...)
        are honoured and part of the pool key; ``clear()`` and closing it close nothing
        shared (see :mod:`poolclient.integrations.poolmanager`)."""
        from .integrations.poolmanager import BorrowedPoolManager

        return BorrowedPoolManager(self, **connection_pool_kw)

    def ready(self) -> tuple[Check, ...]:
        """The ``POOLCLIENT_READY_URLS`` checks, cached for ``POOLCLIENT_READY_CACHE``."""
        return self._pools().readiness.checks(self)

    def stats(self) -> RegistrySnapshot:
        """Counters of every pool this process has, now."""
        state, aio, pid = self._state, self._aio, os.getpid()
        pools: list[PoolSnapshot] = []
        if state is not None and state.pid == pid:
            pools = [p.snapshot() for p in state.live_pools()]
        abandoned = self._abandoned
        if aio is not None and aio.pid == pid:
            pools += aio.snapshots()
            abandoned += aio.abandoned
        origins = self._origins
        policies = origins.snapshots() if origins is not None and origins.pid == pid else ()
        return RegistrySnapshot(pid=pid, pools=tuple(pools), abandoned=abandoned,
                                policies=policies)

    def close(self) -> bool:
        """Close this process's pools; a later call builds new ones.

        Async pools are closed on their loop if it still runs, and dropped without a write
        if it has closed (gunicorn's ``worker_exit`` runs after the worker's loop closed).
        Does nothing in any process but the one that created them, so it is safe in hooks
        that may run in gunicorn's master. Returns whether anything was closed.
        """
        state, aio, pid = self._state, self._aio, os.getpid()
        closed = False
        if aio is not None and aio.pid == pid:
            aio.close()
            closed = True
        if state is not None and state.pid == pid:
            self._state = None
            state.close()
            closed = True
        return closed

    async def aclose(self) -> bool:
        """Close this process's async pools of the running event loop (ASGI lifespan
        shutdown does); a later call on the loop builds new ones. Whether any were open."""
        aio = self._aio
        if aio is None or aio.pid != os.getpid():
            return False
        pools = aio.pop_running_loop()
        if pools is None:
            return False
        await pools.aclose()
        return True


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-global registry, built from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
    return _default


def configure(settings: Settings | None = None, *, default_maxsize: int | None = None,
              policy: PolicySettings | None = None) -> Registry:
    """Replace the process-global registry; the old one's pools close if this process owns them."""
    global _default
    with _default_lock:
        old, _default = _default, Registry(settings, default_maxsize=default_maxsize,
                                           policy=policy)
    if old is not None:
        old.close()
    return _default


def _renew_default_lock() -> None:
    # A lock held by another thread at fork time would stay held in the child.
    global _default_lock
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_default_lock)
