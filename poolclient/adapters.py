"""requests on the shared pools: an ``HTTPAdapter`` and a ``Session`` that borrow them.

Use these when a library speaks requests (python-cloudant's ``adapter=``, the IBM Cloudant
SDK's ``set_http_client``) or when a handler wants requests' API. Each caller gets its own
``Session`` and therefore its own cookies; only the connections are shared. ``close()`` on
either object leaves the shared pools open: libraries close their sessions freely.
"""

from __future__ import annotations

import copy
import os
import types
import urllib.request
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import requests
import requests.utils
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.hooks import default_hooks
from requests.models import DEFAULT_REDIRECT_LIMIT
from requests.sessions import merge_setting
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, default_headers, select_proxy

from . import retry
from .pool import CountedPool

if TYPE_CHECKING:
    from requests.models import PreparedRequest
    from urllib3 import PoolManager
    from urllib3.connectionpool import HTTPConnectionPool

    from .registry import Registry


class PoolAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections come from a :class:`~poolclient.Registry`.

    Differences from requests' own adapter, each deliberate:

    - the pools are the registry's, so they are bounded, counted and fork-aware, and are
      looked up on every send (an adapter kept across a fork uses the child's pools);
    - TLS settings are part of the pool key and are never written onto a shared pool
      afterwards (requests' ``cert_verify`` would overwrite the configured CA bundle);
      ``verify=True``, or a bundle from ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, is the
      default trust (``POOLCLIENT_CA_BUNDLE`` when set); ``verify="/a/ca.pem"`` any other
      path is honoured, in a pool of its own;
    - a request without a timeout gets the registry's connect and read timeouts, and each
      ``send`` the registry's deadline and retry policy (connects retried with backoff; a
      stale reused connection retried once for idempotent methods; nothing else resent);
    - ``close()`` closes nothing shared. Proxied requests use requests' own proxy pools;
    - pickled and unpickled (with a ``Session``), it is bound to the process-global
      registry (:func:`~poolclient.get_registry`) of the process that unpickles it.
    """

    def __init__(self, registry: Registry, max_retries: Any = None) -> None:
        self.registry = registry
        if max_retries is None:
            max_retries = retry.policy(registry.settings)
        super().__init__(max_retries=max_retries)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        # Only the sizing is stored (requests pickles it); the pools are the registry's.
        self._pool_connections = args[0] if args else kwargs.get("connections", 0)
        self._pool_maxsize = args[1] if len(args) > 1 else kwargs.get("maxsize", 0)
        self._pool_block = kwargs.get("block", False)

    @property
    def poolmanager(self) -> PoolManager:  # type: ignore[override]
        """The registry's pools in this process (looked up each time: forks change them)."""
        return self.registry._pools()

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if verify is True or verify in _environment_bundles():
            if self.registry.settings.ca_bundle:
                # Default trust, which POOLCLIENT_CA_BUNDLE pins: the registry fills it in.
                pool_kwargs.pop("ca_certs", None)
                pool_kwargs.pop("ca_cert_dir", None)
            elif verify is True and not pool_kwargs.keys() & {"ca_certs", "ca_cert_dir"}:
                # requests puts its default CA bundle on the pool in cert_verify(), which
                # this adapter does on a stand-in: in the key instead, verify=True keeps
                # meaning certifi.
                pool_kwargs["ca_certs"] = DEFAULT_CA_BUNDLE_PATH
        return host_params, pool_kwargs

    def get_connection_with_tls_context(
        self,
        request: PreparedRequest,
        verify: bool | str,
        proxies: dict[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        if proxies and select_proxy(str(request.url), proxies):
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(
            request, verify, cert
        )
        return self.registry.connection_from_host(**host_params, pool_kwargs=pool_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # requests' own checks (a CA bundle or certificate file that is not there is its
        # clear error, before anything is sent), but a shared pool is never written to:
        # its TLS settings are its key, so requests writes them on a stand-in.
        if isinstance(conn, CountedPool):
            conn = types.SimpleNamespace()
        super().cert_verify(conn, url, verify, cert)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The registry is not pickled (it holds locks and sockets): an unpickled adapter
        # uses the pools of the process that unpickles it, the process-global registry's.
        from .registry import get_registry

        self.registry = get_registry()
        super().__setstate__(state)

    def send(
        self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
        verify: bool | str = True, cert: Any = None, proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        if timeout is None:
            timeout = self.registry.timeout  # requests passes a Timeout on as it is
        with retry.deadline(self.registry.settings.deadline):  # none when the session began one
            return super().send(request, stream=stream, timeout=timeout, verify=verify,
                                cert=cert, proxies=proxies)

    def close(self) -> None:
        """Close the proxy pools this adapter made; the shared pools stay open."""
        for proxy in self.proxy_manager.values():
            proxy.clear()
        self.proxy_manager.clear()


class PooledSession(requests.Session):
    """A ``requests.Session`` on a registry's pools whose ``request()`` (redirects and the
    body of a non-streamed response included) has one deadline, ``POOLCLIENT_DEADLINE``.

    Cheap to make, one per request: it builds no adapter and no ``PoolManager``. Its
    http:// and https:// share the process's one :class:`PoolAdapter`, which ``close()``
    leaves open (adapters mounted by the caller are closed as usual).
    """

    def __init__(self, registry: Registry, adapter: PoolAdapter | None = None) -> None:
        # requests.Session.__init__ would build two HTTPAdapters, each with a PoolManager,
        # only for both to be replaced: set what it sets instead (tests/test_adapters.py
        # checks each attribute against a new requests.Session).
        self.headers = default_headers()
        self.auth = None
        self.proxies = {}
        self.hooks = default_hooks()
        self.params = {}
        self.stream = False
        self.verify = True
        self.cert = None
        self.max_redirects = DEFAULT_REDIRECT_LIMIT
        self.trust_env = True
        self.cookies = RequestsCookieJar()
        self.deadline = registry.settings.deadline
        self.shared_adapter = adapter if adapter is not None else PoolAdapter(registry)
        # What mount("https://"), then mount("http://") make.
        self.adapters = OrderedDict(
            (("https://", self.shared_adapter), ("http://", self.shared_adapter)))

    __attrs__ = [*requests.Session.__attrs__, "deadline"]  # what pickling keeps

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.shared_adapter = self.adapters.get("https://")  # type: ignore[assignment]

    def request(self, method: str, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        with retry.deadline(self.deadline):
            return super().request(method, url, *args, **kwargs)

    def prepare_request(self, request: requests.Request) -> PreparedRequest:
        """As requests' own. Where the request brings no headers (or no params) of its
        own (``_nothing``) and the session's hold no ``None`` to drop (``_as_given``), the
        merge is the session's as they are, and requests is given that to take without its
        checks."""
        headers = _nothing(request.headers) and _as_given(self.headers)
        params = _nothing(request.params) and _as_given(self.params)
        if headers or params:
            request = copy.copy(request)  # the caller's stays as it was
            if headers:
                request.headers = None  # type: ignore[assignment]
            if params:
                request.params = None
        return super().prepare_request(request)

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any,
    ) -> dict[str, Any]:
        """As requests' own (proxies and CA bundle from the environment, then the session's
        settings), with the proxy variables read once per change of ``os.environ``."""
        found = None
        if (self.trust_env and isinstance(proxies, dict)
                and proxies.get("no_proxy") is None):  # a no_proxy argument: requests' way
            found = environ_proxies(url)
        if found is None:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        for scheme, proxy in found.items():  # the caller's own proxies come first
            proxies.setdefault(scheme, proxy)
        if verify is True or verify is None:
            verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                      or verify)
        if not self.proxies and _as_given(proxies):
            merged = proxies  # what merging them with no session proxies gives
        else:
            merged = merge_setting(proxies, self.proxies)
        return {"proxies": merged,
                "stream": merge_setting(stream, self.stream),
                "verify": merge_setting(verify, self.verify),
                "cert": merge_setting(cert, self.cert)}

    def close(self) -> None:
        """Close the adapters the caller mounted; the shared one stays open."""
        for adapter in self.adapters.values():
            if adapter is not self.shared_adapter:
                adapter.close()


# requests merges a session's dict settings (headers, params, proxies) into each request's
# by isinstance checks against a typing Protocol, which Python 3.10 and 3.11 answer in
# 3 to 9 us each (3.12 made them cheap): six a request, a sixth of a .session() request's
# instructions there (callgrind). Where one side is empty and the other holds no None
# (which the merge would drop), the merge is the other side as it is; merge_setting()
# returns it unchecked when the empty side is given as None.
_PLAIN_SETTINGS = (dict, OrderedDict, CaseInsensitiveDict)


def _as_given(setting: Any) -> bool:
    """Whether ``setting`` (a dict or requests' ``CaseInsensitiveDict``) is what merging
    it with an empty one gives."""
    return (type(setting) in _PLAIN_SETTINGS
            and not any(value is None for value in setting.values()))


def _nothing(setting: Any) -> bool:
    """Whether a request's ``setting`` leaves the session's as they are: none, or an empty
    dict (an empty list or string is not merged: requests then ignores the session's)."""
    return setting is None or (type(setting) in _PLAIN_SETTINGS and not setting)


def _environment_bundles() -> tuple[str, ...]:
    # What requests' verify=True becomes when the environment names a bundle: the same
    # default trust, as requests' own cert_verify() takes it.
    return tuple(filter(None, (os.environ.get("REQUESTS_CA_BUNDLE"),
                               os.environ.get("CURL_CA_BUNDLE"))))


def pooled_session(registry: Registry, adapter: PoolAdapter | None = None) -> requests.Session:
    """A ``requests.Session`` whose http:// and https:// go through ``registry`` (through
    ``adapter``, a ``PoolAdapter`` of that registry, when given)."""
    return PooledSession(registry, adapter)


# requests reads the proxy variables on every request: get_environ_proxies() has urllib
# decode all of os.environ three times, 80 us a request with 35 variables, an eighth of
# a pooled session request. Its answer depends only on the environment and the URL's host
# and port, so it is kept per authority for as long as os.environ's content (compared as
# bytes, in C, in a fraction of a microsecond) is unchanged. Only where urllib's proxy
# lookup reads nothing but the environment: elsewhere it reads system settings too.
_ENV_ONLY = (getattr(requests.utils, "getproxies", None) is urllib.request.getproxies_environment
             and getattr(requests.utils, "proxy_bypass", None)
             is getattr(urllib.request, "proxy_bypass_environment", False))
_seen: tuple[dict[Any, Any], dict[str, dict[str, str]]] = ({}, {})


def environ_proxies(url: str) -> dict[str, str] | None:
    """What ``requests.utils.get_environ_proxies(url)`` answers now (kept, so shared by
    later calls: read it, never modify it), or ``None`` where it cannot be kept."""
    data = getattr(os.environ, "_data", None)
    if not _ENV_ONLY or not isinstance(data, dict):
        return None
    global _seen
    environ, by_authority = _seen
    if data != environ:  # a variable set, changed or removed: forget every answer
        environ, by_authority = dict(data), {}
        _seen = (environ, by_authority)
    scheme, sep, rest = url.partition("://")
    # Everything up to the path: it holds the host and port, which urlparse reads from it.
    authority = scheme + sep + rest.split("/", 1)[0] if sep else url
    found = by_authority.get(authority)
    if found is None:
        if len(by_authority) >= 256:  # many hosts: start again rather than grow
            by_authority.clear()
        found = by_authority[authority] = requests.utils.get_environ_proxies(url)
    return found
