"""The Elasticsearch client (elasticsearch 9, elastic-transport 9) on a registry's pools.

One keyword plugs it in; build the client once (at import is fine, ``--preload``
included) and every request goes through the pools of the process it runs in::

    from elasticsearch import Elasticsearch
    from poolclient.integrations.elastic import PooledNode

    es = Elasticsearch("https://es.internal:9200", node_class=PooledNode, ca_certs=ca)

``PooledNode`` finds ``poolclient.get_registry()`` on every request; ``PooledNode.on(pool)``
is the same class bound to one registry (``environ['http.pool']``, a test's). It is
elastic-transport's own ``Urllib3HttpNode`` (its requests, headers, compression, logging
and error classes, unchanged), except that:

- its pool is the registry's pool for the node's origin, looked up per request, so a
  client made in gunicorn's master works in every worker on that worker's pools. Sniffed
  nodes get theirs the same way;
- its TLS settings are the pool key, by value: ``ca_certs``, ``verify_certs``,
  ``client_cert``/``client_key``, ``ssl_assert_hostname``, ``ssl_version`` (as the minimum
  version, which is what elastic makes of it) and ``ssl_show_warn`` are honoured as elastic
  honours them. A CA you name is trusted, in a pool of its own, even with
  ``POOLCLIENT_CA_BUNDLE`` set; with none named, elastic's default (certifi) is replaced by
  ``POOLCLIENT_CA_BUNDLE`` when that is set, as for requests' ``verify=True``. Elastic builds
  a new ``SSLContext`` per node; this node does not, so clients with the same settings
  share one pool. An ``ssl_context`` you give is used as it is, keyed by the object;
- ``request_timeout`` (the client's, or per call through ``options()``) applies per
  request as in elastic; ``POOLCLIENT_DEADLINE`` still bounds every call;
- ``connections_per_node`` is not used: ``POOLCLIENT_MAXSIZE`` is the bound, per origin
  and process, shared by every client of that origin;
- ``close()`` (``Elasticsearch.close()``, ``with``) closes nothing shared.

Retries stay elastic's (``max_retries``, ``retry_on_timeout``, ``retry_on_status``): the
node sends with ``Retry(False)`` as elastic does, so poolclient adds no connect retry and
no resend of its own.

Not supported: ``ssl_assert_fingerprint``. Elastic checks the fingerprint against every
certificate of the chain (the CA's is what Elasticsearch prints at setup) in its own pool
and connection classes, which a registry pool is not; urllib3's ``assert_fingerprint``
checks only the server's own certificate. The node refuses the option rather than check
less: give the cluster's CA as ``ca_certs=`` (``config/certs/http_ca.crt``) instead.
"""

from __future__ import annotations

import ssl
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import urllib3
from elastic_transport import BaseNode, NodeConfig, SecurityWarning, Urllib3HttpNode

from ..registry import get_registry

if TYPE_CHECKING:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.response import BaseHTTPResponse

    from ..registry import Registry

__all__ = ["PooledNode"]

try:  # elastic's default CA bundle, as elastic finds it
    import certifi

    _DEFAULT_CA_CERTS: str | None = certifi.where()
except ImportError:  # pragma: no cover - certifi comes with requests
    _DEFAULT_CA_CERTS = None

# What elastic makes of ``ssl_version``: the minimum TLS version.
_MINIMUM_VERSIONS: dict[Any, ssl.TLSVersion] = {
    ssl.PROTOCOL_TLSv1: ssl.TLSVersion.TLSv1,
    ssl.PROTOCOL_TLSv1_1: ssl.TLSVersion.TLSv1_1,
    ssl.PROTOCOL_TLSv1_2: ssl.TLSVersion.TLSv1_2,
    **{version: version for version in ssl.TLSVersion},
}


class _Lent:
    """A registry pool as the node uses it: the node's timeout on each request."""

    __slots__ = ("pool", "timeout")

    def __init__(self, pool: HTTPConnectionPool, timeout: urllib3.Timeout) -> None:
        self.pool = pool
        self.timeout = timeout

    def urlopen(self, method: str, url: str, **kw: Any) -> BaseHTTPResponse:
        kw.setdefault("timeout", self.timeout)
        return self.pool.urlopen(method, url, **kw)

    def close(self) -> None:
        """Nothing: the pool is the registry's."""


class PooledNode(Urllib3HttpNode):
    """elastic-transport's ``Urllib3HttpNode`` on a registry's pools: pass the class as
    ``node_class=``; ``PooledNode.on(registry)`` for a registry other than
    ``get_registry()``."""

    #: The registry whose pools carry the requests; ``None``: ``get_registry()``, per request.
    registry: ClassVar[Registry | None] = None

    @classmethod
    def on(cls, registry: Registry) -> type[PooledNode]:
        """This class, bound to ``registry`` (its pools are still those of the process that
        makes each request)."""
        return type(cls.__name__, (cls,), {"registry": registry, "__module__": cls.__module__})

    def __init__(self, config: NodeConfig) -> None:
        # Urllib3HttpNode.__init__ would build a pool and an SSLContext for this node alone:
        # only its checks and warnings are kept, in _tls_settings.
        BaseNode.__init__(self, config)
        self._timeout = urllib3.Timeout(total=config.request_timeout)
        self._scheme_tls = _tls_settings(config, self.base_url)
        # With no CA named, elastic's default (certifi) unless the registry pins a bundle.
        self._default_trust = self._scheme_tls
        if config.scheme == "https" and "ca_certs" in self._scheme_tls and not config.ca_certs:
            self._default_trust = {k: v for k, v in self._scheme_tls.items() if k != "ca_certs"}

    @property
    def pool(self) -> Any:  # type: ignore[override]  # an attribute in Urllib3HttpNode
        """The registry's pool for this node's origin and TLS settings, in this process."""
        registry = self.registry or get_registry()
        tls = self._default_trust if registry.settings.ca_bundle else self._scheme_tls
        found = registry.connection_from_host(self.host, self.port, self.scheme,
                                              pool_kwargs=tls or None)
        return _Lent(found, self._timeout)

    def close(self) -> None:
        """Nothing: the pools are the registry's, shared by the whole process."""


def _tls_settings(config: NodeConfig, base_url: str) -> dict[str, Any]:
    """The pool keywords of elastic's ``Urllib3HttpNode`` for ``config``, by value."""
    if config.scheme != "https":
        return {}
    if config.ssl_assert_fingerprint:
        raise ValueError(
            "poolclient's PooledNode does not support 'ssl_assert_fingerprint' (elastic "
            "checks it in a pool class of its own): give the cluster's CA certificate as "
            "'ca_certs' instead, or leave node_class unset for this client")
    kw: dict[str, Any] = {"assert_hostname": config.ssl_assert_hostname}
    if config.ssl_context is not None:
        kw["ssl_context"] = config.ssl_context
    elif config.ssl_version is not None:
        try:
            kw["ssl_minimum_version"] = _MINIMUM_VERSIONS[config.ssl_version]
        except KeyError:
            raise ValueError(
                f"Unsupported value for 'ssl_version': {config.ssl_version!r}. Must be "
                "either 'ssl.PROTOCOL_TLSvX' or 'ssl.TLSVersion.TLSvX'") from None
    if config.verify_certs:
        kw.update(cert_reqs="CERT_REQUIRED",
                  ca_certs=config.ca_certs if config.ca_certs is not None else _DEFAULT_CA_CERTS,
                  cert_file=config.client_cert, key_file=config.client_key)
    else:
        kw["cert_reqs"] = "CERT_NONE"
        if config.ssl_show_warn:
            warnings.warn(
                f"Connecting to {base_url!r} using TLS with verify_certs=False is insecure",
                stacklevel=2, category=SecurityWarning)
        else:
            urllib3.disable_warnings()
    return {key: value for key, value in kw.items() if value is not None}
