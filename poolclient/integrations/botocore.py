"""botocore, the HTTP stack of boto3 (S3 and every other AWS client), on a registry's pools.

One line per client, at import if you like (``--preload`` included)::

    import boto3
    from poolclient.integrations.botocore import use_registry

    s3 = use_registry(boto3.client("s3"))             # the process-global registry
    s3 = use_registry(boto3.client("s3"), registry)   # or the one given

Every request of the client then goes through the pools of the registry in the process it
runs in, so a client built in gunicorn's master works in every worker. What stays
botocore's own: its ``send()``, with its error mapping (``EndpointConnectionError``,
``ConnectTimeoutError``, ``ReadTimeoutError``, ``ConnectionClosedError``, ``SSLError``), which
drives its retries; its connection class (``AWSConnection``, which implements ``Expect:
100-continue`` for uploads), mixed over poolclient's counted one; its timeouts
(``Config(connect_timeout=, read_timeout=)``, per request, under ``POOLCLIENT_DEADLINE``);
its upload block size; its proxies (a proxied request goes on botocore's own proxy pools).

What changes, each deliberately:

- the bound is ``POOLCLIENT_MAXSIZE`` (and its pool timeout), not ``max_pool_connections``;
- trust is part of the pool key, never written on a pool per send (botocore's
  ``_setup_ssl_cert`` would, on a pool other threads share). The key is botocore's resolved
  ``verify``: ``verify=False`` turns verification off; a path, wherever botocore found it
  (``verify=``, ``AWS_CA_BUNDLE``, ``ca_bundle`` in the config file, ``REQUESTS_CA_BUNDLE``),
  is honoured, in a pool of its own; ``verify=True`` is the default trust,
  ``POOLCLIENT_CA_BUNDLE`` when set, else certifi's bundle as botocore's;
- a ``StreamingBody`` closed before its end, or dropped unread (a ``get_object()`` made
  for its metadata), gives its connection back closed (counted as ``unread``) unless the
  rest had arrived already, never half-read. urllib3 alone closes the connection without
  giving it back: its slot stays checked out for good, and a bounded pool runs dry;
- the client's ``close()`` closes nothing shared (only botocore's own proxy pools).

Private botocore API it relies on (tested against botocore 1.44.8 by
``tests/test_sdk_boto3.py``; :func:`use_registry` raises :class:`BotocoreChangedError`
rather than leave a client on botocore's own pools when one is missing):

- ``client._endpoint.http_session``, replaced by a :class:`RegistrySession`;
- of ``botocore.httpsession.URLLib3Session``: the methods ``_get_connection_manager``,
  ``_setup_ssl_cert`` and ``_get_request_timeout``, and the attributes ``_verify``,
  ``_timeout``, ``_socket_options``, ``_cert_file``, ``_key_file``, ``_proxy_managers``;
  ``botocore.httpsession.BUFFER_SIZE``;
- of urllib3's ``HTTPResponse``: ``_pool`` and ``_connection`` (what ``release_conn`` uses).

Not covered: the credential fetchers (IMDS, SSO, container credentials) keep their own
sessions; ``BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER`` writes on the pool botocore is
given, as botocore does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from botocore import httpsession  # type: ignore[import-untyped]
from botocore.awsrequest import AWSConnection  # type: ignore[import-untyped]
from urllib3.response import HTTPResponse
from urllib3.util import parse_url

from ..errors import PoolClientError
from ..pool import CountedPool

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool

    from ..registry import Registry

__all__ = ["BotocoreChangedError", "RegistrySession", "use_registry"]

_Client = TypeVar("_Client")

_PRIVATE_METHODS = ("_get_connection_manager", "_setup_ssl_cert", "_get_request_timeout")
_PRIVATE_ATTRIBUTES = ("_verify", "_timeout", "_socket_options", "_cert_file", "_key_file",
                       "_proxy_managers")


class BotocoreChangedError(PoolClientError, TypeError):
    """This botocore lacks a private name the hook relies on (see the module docstring)."""


def use_registry(client: _Client, registry: Registry | None = None) -> _Client:
    """Put ``client``'s requests on ``registry``'s pools (by default the process-global
    registry, :func:`~poolclient.get_registry`); returns ``client``.

    Call it once, right after building the client, before its first request. Connections
    the client's own session opened before are closed. Calling it again rebinds it.
    """
    if registry is None:
        from ..registry import get_registry

        registry = get_registry()
    endpoint: Any = getattr(client, "_endpoint", None)
    session: Any = getattr(endpoint, "http_session", None)
    _check(session)
    endpoint.http_session = RegistrySession.borrowing(session, registry)
    session.close()  # its own PoolManager (a RegistrySession's: only its proxy pools)
    return client


def _check(session: Any) -> None:
    missing = [name for name in _PRIVATE_METHODS if not hasattr(type(session), name)]
    missing += [name for name in _PRIVATE_ATTRIBUTES if not hasattr(session, name)]
    if not isinstance(session, httpsession.URLLib3Session) or missing:
        raise BotocoreChangedError(
            f"poolclient.integrations.botocore: {type(session).__name__} is not the "
            f"URLLib3Session it was written for (missing: {', '.join(missing) or 'the class'})")


class RegistrySession(httpsession.URLLib3Session):  # type: ignore[misc]
    """botocore's ``URLLib3Session``, its ``send()`` unchanged, on a registry's pools."""

    registry: Registry
    pool_kwargs: dict[str, Any]

    @classmethod
    def borrowing(cls, session: Any, registry: Registry) -> RegistrySession:
        """A copy of ``session``'s settings (``verify``, timeouts, proxies, client
        certificate, socket options) on ``registry``'s pools."""
        borrowed: RegistrySession = cls.__new__(cls)
        borrowed.__dict__.update(vars(session))
        borrowed._proxy_managers = {}  # its own, closed by its close()
        borrowed.registry = registry
        borrowed.pool_kwargs = borrowed._key()
        return borrowed

    def _key(self) -> dict[str, Any]:
        # What botocore gives its own PoolManager and writes on its pools at each send,
        # as the key of a shared pool instead. maxsize and block are the registry's.
        key: dict[str, Any] = {}
        if httpsession.BUFFER_SIZE:
            key["blocksize"] = httpsession.BUFFER_SIZE
        if self._socket_options:  # Config(tcp_keepalive=True); none: poolclient's
            key["socket_options"] = tuple(tuple(option) for option in self._socket_options)
        if self._cert_file:
            key["cert_file"] = self._cert_file
        if self._key_file:
            key["key_file"] = self._key_file
        verify = self._verify
        if verify is False:
            key["cert_reqs"] = "CERT_NONE"
            return key
        key["cert_reqs"] = "CERT_REQUIRED"
        if verify is not True:
            key["ca_certs"] = verify
        elif not self.registry.settings.ca_bundle:  # else the registry pins its own
            key["ca_certs"] = httpsession.get_cert_path(True)
        return key

    def _get_connection_manager(self, url: str, proxy_url: str | None = None) -> Any:
        if proxy_url:
            return super()._get_connection_manager(url, proxy_url)
        return self  # .connection_from_url() below

    def connection_from_url(self, url: str) -> HTTPConnectionPool:
        """The registry's pool for ``url`` in this process, with botocore's connections."""
        u = parse_url(url)
        pool = self.registry.connection_from_host(
            u.host or "", u.port, u.scheme or "http", pool_kwargs=self.pool_kwargs)
        if not issubclass(pool.ConnectionCls, AWSConnection):
            # Once per pool (a new process, an evicted pool made again), not per send.
            pool.ConnectionCls = _aws_connection(pool.ConnectionCls)
        return pool

    def _setup_ssl_cert(self, conn: Any, url: str, verify: Any) -> None:
        if not isinstance(conn, CountedPool):  # a proxy pool of botocore's own
            super()._setup_ssl_cert(conn, url, verify)

    def _get_request_timeout(self, request: Any) -> Any:
        # Per request, so that clients with different timeouts share one pool.
        timeout = super()._get_request_timeout(request)
        return self._timeout if timeout is None else timeout

    def send(self, request: Any) -> Any:
        response = super().send(request)
        raw = response.raw
        if type(raw) is HTTPResponse and isinstance(raw._pool, CountedPool):
            raw.__class__ = _ReleasingResponse  # its body is still to be read
        return response

    def close(self) -> None:
        """Close botocore's own proxy pools; the registry's stay open."""
        for manager in self._proxy_managers.values():
            manager.clear()


class _ReleasingResponse(HTTPResponse):
    """urllib3's response, whose ``close()`` (``StreamingBody.close()``, and its finalizer)
    gives the connection back through :meth:`~poolclient.pool.CountedPool.release_unread`."""

    _releasing = False

    def close(self) -> None:
        pool = self._pool
        if self._connection is not None and isinstance(pool, CountedPool) and \
                not self._releasing:
            self._releasing = True  # release_unread closes it: that close is urllib3's
            try:
                pool.release_unread(self)
            finally:
                self._releasing = False
        super().close()


_aws_classes: dict[type[Any], type[Any]] = {}


def _aws_connection(cls: type[Any]) -> type[Any]:
    """botocore's ``AWSConnection`` mixed over the pool's (counted) connection class."""
    found = _aws_classes.get(cls)
    if found is None:
        base = "AWSHTTPSConnection" if getattr(cls, "default_port", 80) == 443 else \
            "AWSHTTPConnection"
        found = _aws_classes[cls] = type(base, (AWSConnection, cls), {})
    return found
