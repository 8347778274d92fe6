"""The differences ``make peer`` accepts: tests of urllib3's and requests' own suites that pass
as released and not with poolclient swapped in, each for a behaviour poolclient documents.

Each entry is an exact pytest node id (as the suite's own run names it, from its extracted
folder) -> ``Allowed(suite, readme, why)``: ``readme`` is a sentence that must appear verbatim
(up to line breaks) in README.md, in its section "What differs from urllib3 and requests,
and why"; ``why`` says what the test asserts that poolclient does otherwise.
``tests/peer/run.py`` fails on a difference not listed here, on a ``readme`` sentence
missing from README.md, and on an entry whose test no longer differs (remove it then).

Real bugs are never listed here: they are fixed in poolclient.
"""

from __future__ import annotations

from typing import NamedTuple


class Allowed(NamedTuple):
    suite: str  # "urllib3" or "requests"
    readme: str  # verbatim in README.md
    why: str  # what the test checks that poolclient does otherwise


# poolclient's pools count connects, lifetimes and the deadline in their connection classes
# (poolclient/pool.py), so the connection a pool makes is a subclass of urllib3's.
EXACT_CLASS = (
    "poolclient's pools open connections of their own classes, subclasses of urllib3's "
    "`HTTPConnection` and `HTTPSConnection`, so `isinstance` checks pass and checks of the "
    "exact class do not."
)
# The registry's manager (_ProcessPools) is made from Settings: maxsize, block, timeouts,
# retry.policy(); urllib3's PoolManager starts with no pool settings and Retry.DEFAULT.
DEFAULTS = (
    "The registry's pools start from poolclient's settings, not urllib3's defaults: "
    "`POOLCLIENT_MAXSIZE` connections, blocking (`POOLCLIENT_BLOCK`), the connect and read "
    "timeouts, and poolclient's retry policy in place of urllib3's `Retry(total=3)`."
)
# _ProcessPools.connection_from_host remembers the pool key per call arguments (one merge
# and normalisation of some thirty settings saved per request); poolclient never changes
# the manager's connection_pool_kw, urllib3's tests do.
KEY_CACHE = (
    "The registry's manager works out a pool's key once per set of call arguments, so "
    "changing its `connection_pool_kw` after its first request (urllib3 allows it) does not "
    "give new pools."
)
# poolclient.connections logs one DEBUG line per connection event (opened, reused, ...).
DEBUG_LINES = (
    "At DEBUG, poolclient adds its own lines (the `poolclient.connections` logger) to "
    "urllib3's."
)
# PoolAdapter.send gives a request without a timeout the registry's (connect 5 s, read
# 15 s) and the call deadline: every wait is bounded.
READ_TIMEOUT = (
    "A request through requests without a timeout waits at most `POOLCLIENT_READ_TIMEOUT` "
    "(15 s) for each read, where requests would wait for ever."
)
# PoolAdapter.poolmanager is the registry's manager in this process, shared by every
# session and adapter.
SHARED_POOLS = (
    "Every session's `PoolAdapter` uses the registry's pools, so `adapter.poolmanager.pools` "
    "holds the pools of every origin the process has called, not only that session's."
)

_U = "test/test_connectionpool.py::TestConnectionPool::"
_PM = "test/test_poolmanager.py::TestPoolManager::"
_HTTPS = "test/with_dummyserver/test_https.py::"
_TLS = "tests/test_requests.py::TestPreparingURLs::test_different_connection_pool_for_tls_"

ALLOWED: dict[str, Allowed] = {
    # assert conn.__class__ == HTTPConnection
    _U + "test_pool_timeouts": Allowed(
        "urllib3", EXACT_CLASS, "conn.__class__ == HTTPConnection"),
    # assert conn.__class__ == VerifiedHTTPSConnection (urllib3's HTTPSConnection)
    **{_HTTPS + f"TestHTTPS_TLSv1_{v}::{name}": Allowed(
        "urllib3", EXACT_CLASS, "conn.__class__ == VerifiedHTTPSConnection")
       for v in (2, 3)
       for name in ("test_verified", "test_verified_with_context",
                    "test_context_combines_with_ca_certs", "test_ca_dir_verified")},
    # assert retry.Retry.DEFAULT == default_pool.retries (PoolManager() given no retries)
    _PM + "test_override_pool_kwargs_url": Allowed(
        "urllib3", DEFAULTS, "a PoolManager() pool's retries == Retry.DEFAULT"),
    _PM + "test_override_pool_kwargs_host": Allowed(
        "urllib3", DEFAULTS, "a PoolManager() pool's retries == Retry.DEFAULT"),
    # PoolManager(retries=r)._merge_pool_kwargs({"new_key": "value"}) ==
    # {"retries": r, "new_key": "value"}: poolclient's also has block, maxsize and timeout
    _PM + "test_merge_pool_kwargs": Allowed(
        "urllib3", DEFAULTS, "the merged pool kwargs hold only what the caller gave"),
    # p.connection_pool_kw[key] = value between connection_from_url calls: a new pool each
    _PM + "test_http_pool_key_fields": Allowed(
        "urllib3", KEY_CACHE, "changing connection_pool_kw gives a new pool"),
    _PM + "test_https_pool_key_fields": Allowed(
        "urllib3", KEY_CACHE, "changing connection_pool_kw gives a new pool"),
    _PM + "test_pools_keyed_with_from_host": Allowed(
        "urllib3", KEY_CACHE, "changing connection_pool_kw gives a new pool"),
    # the captured log of one request is exactly urllib3's two lines
    "test/with_dummyserver/test_connectionpool.py::TestConnectionPool::test_debug_log":
        Allowed("urllib3", DEBUG_LINES, "the DEBUG log is exactly urllib3's lines"),
    # requests.request(b"GET", httpbin("get")) right after TestTimeout's delay/10 requests:
    # pytest-httpbin's server is single-threaded, so the answer comes after more than 15 s
    "tests/test_requests.py::TestTimeout::test_encoded_methods": Allowed(
        "requests", READ_TIMEOUT, "an untimed request waits as long as the server takes"),
    # assert len(s.adapters["https://"].poolmanager.pools) == 2 (a fresh Session's pools)
    _TLS + "settings_verify_True": Allowed(
        "requests", SHARED_POOLS, "a new session's poolmanager has only its own pools"),
    _TLS + "settings_verify_bundle_expired_cert": Allowed(
        "requests", SHARED_POOLS, "a new session's poolmanager has only its own pools"),
    _TLS + "settings_verify_bundle_unexpired_cert": Allowed(
        "requests", SHARED_POOLS, "a new session's poolmanager has only its own pools"),
}
