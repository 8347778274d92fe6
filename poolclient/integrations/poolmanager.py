"""A urllib3 ``PoolManager`` stand-in on a registry's pools, for code that takes or holds
a ``PoolManager``: the Kubernetes client (``api.rest_client.pool_manager = ...``),
google-auth's ``AuthorizedHttp(credentials, http=...)``, your own.

    pool_manager = registry.pool_manager(ca_certs=cluster_ca, cert_file=..., key_file=...)

It is urllib3's ``PoolManager`` in all it does (``request``, ``urlopen`` with its
cross-host redirects, ``connection_from_url``), except where the pools come from:

- every request goes through the pools of the registry in the process it runs in, so an
  object made at import under ``--preload`` works in every worker;
- the keywords that make a connection what it is (``ca_certs``, ``ca_cert_dir``,
  ``ca_cert_data``, ``ssl_context``, ``cert_file``, ``key_file``, ``key_password``,
  ``cert_reqs``, ``assert_hostname``, ``assert_fingerprint``, ``server_hostname``,
  ``ssl_minimum_version``, ``socket_options``, ...) are honoured and are part of the pool
  key: a CA the caller names is trusted, in a pool of its own, even with
  ``POOLCLIENT_CA_BUNDLE`` set;
- ``timeout`` and ``retries`` given here apply to each request made through it, as
  urllib3 applies them, without a pool of their own; ``maxsize``, ``block`` and
  ``num_pools`` are the registry's (its bound, ``POOLCLIENT_MAXSIZE``, wins);
- ``clear()`` and closing it (``with``, the SDKs' ``close()`` and finalizers) return
  nothing shared.

Not covered: ``ProxyManager`` and SOCKS managers (a client configured with a proxy keeps
its own).
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from urllib3 import PoolManager

from .. import retry

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ..registry import Registry

__all__ = ["BorrowedPoolManager"]

_PER_REQUEST = ("timeout", "retries")
_THE_REGISTRYS = ("maxsize", "block")


class BorrowedPoolManager(PoolManager):
    """A ``PoolManager`` whose pools are borrowed from a registry; made by
    :meth:`poolclient.Registry.pool_manager`, whose keywords it takes."""

    def __init__(self, registry: Registry, num_pools: int = 10,
                 headers: dict[str, str] | None = None, **connection_pool_kw: Any) -> None:
        self._per_request = {key: connection_pool_kw.pop(key) for key in _PER_REQUEST
                             if key in connection_pool_kw}
        for key in _THE_REGISTRYS:
            connection_pool_kw.pop(key, None)
        super().__init__(num_pools, headers, **connection_pool_kw)
        self.registry = registry

    def __repr__(self) -> str:
        shown = sorted(self.connection_pool_kw)
        return f"<{type(self).__name__} {shown} on {self.registry!r}>"

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> Literal[False]:
        self.clear()
        return False

    def clear(self) -> None:
        """Nothing: the pools are the registry's, shared by the whole process."""

    def connection_from_host(self, host: str | None, port: int | None = None,
                             scheme: str | None = "http",
                             pool_kwargs: dict[str, Any] | None = None) -> HTTPConnectionPool:
        kwargs = {**self.connection_pool_kw, **pool_kwargs} if pool_kwargs else \
            self.connection_pool_kw
        return self.registry.connection_from_host(
            host or "", port, scheme or "http", pool_kwargs=kwargs or None)

    def connection_from_context(self, request_context: dict[str, Any]) -> HTTPConnectionPool:
        context = dict(request_context)
        return self.connection_from_host(context.pop("host", None), context.pop("port", None),
                                         context.pop("scheme", "http"), pool_kwargs=context)

    def urlopen(self, method: str, url: str, redirect: bool = True,  # type: ignore[override]
                **kw: Any) -> BaseHTTPResponse:
        for key, value in self._per_request.items():
            kw.setdefault(key, value)
        # One deadline for the call, redirects to other hosts included.
        started = retry.begin(self.registry.settings.deadline)
        try:
            return super().urlopen(method, url, redirect=redirect, **kw)
        finally:
            if started is not None:
                retry.end(started)
