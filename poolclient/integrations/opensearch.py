"""The OpenSearch client (opensearch-py 3) on a registry's pools.

One keyword plugs it in; build the client once (at import is fine, ``--preload``
included) and every request goes through the pools of the process it runs in::

    from opensearchpy import OpenSearch
    from poolclient.integrations.opensearch import PooledConnection

    client = OpenSearch("https://search.internal:9200", connection_class=PooledConnection,
                        ca_certs=ca)

``PooledConnection`` finds ``poolclient.get_registry()`` on every request;
``PooledConnection.on(pool)`` is the same class bound to one registry
(``environ['http.pool']``, a test's). It is opensearch-py's own ``Urllib3HttpConnection``
(its requests, headers, auth, compression, logging and error classes, unchanged), except
that:

- its pool is the registry's pool for the connection's origin, looked up per request, so
  a client made in gunicorn's master works in every worker on that worker's pools;
- its TLS settings are the pool key: whatever opensearch-py puts on its own pool from
  ``ca_certs``, ``verify_certs``, ``client_cert``/``client_key``, ``ssl_assert_hostname``,
  ``ssl_assert_fingerprint`` (urllib3's check of the server's certificate, as
  opensearch-py does it), ``ssl_version`` and ``ssl_context`` (keyed by the object). A CA
  you name is trusted, in a pool of its own, even with ``POOLCLIENT_CA_BUNDLE`` set; with
  none named, opensearch-py's default (``SSL_CERT_FILE``, ``SSL_CERT_DIR`` or certifi) is
  replaced by ``POOLCLIENT_CA_BUNDLE`` when that is set, as for requests' ``verify=True``;
- ``timeout`` (the client's, or per call) applies per request as in opensearch-py;
  ``POOLCLIENT_DEADLINE`` still bounds every call;
- ``pool_maxsize`` is not used: ``POOLCLIENT_MAXSIZE`` is the bound (opensearch-py's own
  default is one connection per node, and more under load are opened and thrown away);
- ``close()`` closes nothing shared.

Retries stay opensearch-py's (``max_retries``, ``retry_on_timeout``, ``retry_on_status``):
the connection sends with ``Retry(False)`` as opensearch-py does, so poolclient adds no
connect retry and no resend of its own. Auth is opensearch-py's too: ``http_auth`` as a
pair, or a callable such as ``opensearchpy.Urllib3AWSV4SignerAuth`` (AWS SigV4), which signs
each request as opensearch-py does. ``RequestsHttpConnection`` is a requests stack, not
covered here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from opensearchpy import Urllib3HttpConnection

from ..registry import get_registry

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ..registry import Registry

__all__ = ["PooledConnection"]

# The attributes of opensearch-py's own pool that make its connections what they are.
_TLS_ATTRIBUTES = ("cert_reqs", "ca_certs", "cert_file", "key_file", "ssl_version",
                   "assert_hostname", "assert_fingerprint")


class _Lent:
    """A registry pool as the connection uses it: its timeout on each request."""

    __slots__ = ("pool", "timeout")

    def __init__(self, pool: HTTPConnectionPool, timeout: Any) -> None:
        self.pool = pool
        self.timeout = timeout

    def urlopen(self, method: str, url: str, *args: Any, **kw: Any) -> BaseHTTPResponse:
        kw.setdefault("timeout", self.timeout)
        return self.pool.urlopen(method, url, *args, **kw)

    def close(self) -> None:
        """Nothing: the pool is the registry's."""


class PooledConnection(Urllib3HttpConnection):
    """opensearch-py's ``Urllib3HttpConnection`` on a registry's pools: pass the class as
    ``connection_class=``; ``PooledConnection.on(registry)`` for a registry other than
    ``get_registry()``."""

    #: The registry whose pools carry the requests; ``None``: ``get_registry()``, per request.
    registry: ClassVar[Registry | None] = None

    @classmethod
    def on(cls, registry: Registry) -> type[PooledConnection]:
        """This class, bound to ``registry`` (its pools are still those of the process that
        makes each request)."""
        return type(cls.__name__, (cls,), {"registry": registry, "__module__": cls.__module__})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ca_named = kwargs.get("ca_certs") is not None
        self._tls: dict[str, Any] = {}
        self._default_trust: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def _create_urllib3_pool(self) -> None:
        # opensearch-py's own pool, made (never connected) only to read its TLS settings:
        # so that they are exactly what opensearch-py makes of its many options.
        factory: Any = self._urllib3_pool_factory
        made: Any = factory()
        try:
            if not self.use_ssl:
                return
            tls = {name: getattr(made, name, None) for name in _TLS_ATTRIBUTES}
            tls["ssl_context"] = made.conn_kw.get("ssl_context")
            self._tls = {key: value for key, value in tls.items() if value is not None}
            self._default_trust = self._tls
            if not self._ca_named and "ca_certs" in self._tls:
                self._default_trust = {k: v for k, v in self._tls.items() if k != "ca_certs"}
        finally:
            made.close()

    @property
    def pool(self) -> Any:
        """The registry's pool for this connection's origin and TLS settings, in this
        process."""
        registry = self.registry or get_registry()
        tls = self._default_trust if registry.settings.ca_bundle else self._tls
        found = registry.connection_from_host(self.hostname, self.port, self.scheme,
                                              pool_kwargs=tls or None)
        return _Lent(found, self.timeout)

    @pool.setter
    def pool(self, value: Any) -> None:
        pass  # opensearch-py's close() sets None; nothing of it is kept

    def close(self) -> None:
        """Nothing: the pools are the registry's, shared by the whole process."""
