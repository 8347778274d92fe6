"""requests on the shared pools (poolclient.adapters) against the real TLS upstream."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import requests
from urllib3.exceptions import EmptyPoolError, ReadTimeoutError

import poolclient.adapters
from poolclient import PoolTimeoutError, Registry, Settings
from tests.helpers import other_ca_file, wait_for

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture
def env_bundles(monkeypatch: pytest.MonkeyPatch) -> str:
    """REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE point at the system bundle, as on this host."""
    if not os.path.exists(SYSTEM_BUNDLE):
        pytest.skip(f"no system CA bundle at {SYSTEM_BUNDLE}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)
    return SYSTEM_BUNDLE


def conn_id(response: requests.Response) -> int:
    """The upstream connection a response came on."""
    assert response.status_code == 200, response.text
    return int(response.json()["connection"])


def test_registry_ca_bundle_wins_over_env_bundles(registry, upstream, env_bundles):
    """With REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE set to the system bundle, a registry session
    still trusts POOLCLIENT_CA_BUNDLE, with or without an explicit verify=True."""
    # The environment really is in force: plain requests follows it, and fails.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(upstream.url + "/plain", timeout=5)
    with registry.session() as session:
        assert session.merge_environment_settings(upstream.url, {}, None, True, None)[
            "verify"] == env_bundles
        assert session.get(upstream.url + "/a").status_code == 200
        assert session.get(upstream.url + "/b", verify=True).status_code == 200
    totals = registry.stats().totals()
    assert (totals["requests"], totals["errors"]) == (2, 0)


def test_registry_with_another_ca_rejects_upstream_even_with_verify_true(
    upstream, env_bundles, tmp_path
):
    """A registry whose default trust is another CA fails TLS for verify=True and the
    environment's bundle alike; the caller's own verify=<upstream's CA> connects, and
    verify=False still does."""
    registry = Registry(Settings(ca_bundle=other_ca_file(str(tmp_path)), maxsize=2))
    try:
        with registry.session() as session:
            for verify in (True, None, env_bundles):
                kwargs = {} if verify is None else {"verify": verify}
                with pytest.raises(requests.exceptions.SSLError):
                    session.get(upstream.url + "/x", **kwargs)
            assert session.get(upstream.url + "/own", verify=upstream.ca).status_code == 200
            assert session.get(upstream.url + "/y", verify=False).status_code == 200
        assert upstream.stats()["requests"] == 2
    finally:
        registry.close()


@pytest.mark.parametrize("env", ["env-bundles", "no-env-bundles"])
def test_without_ca_bundle_requests_verify_semantics_are_kept(upstream, monkeypatch, env):
    """With no ca_bundle, verify=<upstream CA> connects and verify=True (the environment's
    bundle or certifi) fails, even after a verified connection to the same origin exists."""
    if env == "env-bundles":
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
        monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)
    else:
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    registry = Registry(Settings(maxsize=2))
    try:
        with registry.session() as session:
            assert session.get(upstream.url + "/ok", verify=upstream.ca).status_code == 200
            with pytest.raises(requests.exceptions.SSLError):
                session.get(upstream.url + "/no", verify=True)
            with pytest.raises(requests.exceptions.SSLError):
                session.get(upstream.url + "/no")
        assert upstream.stats()["requests"] == 1
    finally:
        registry.close()


def test_session_close_leaves_shared_pools_open(registry, upstream):
    """After Session.close(), a new session's request reuses the same upstream connection."""
    first = registry.session()
    conn = conn_id(first.get(upstream.url + "/1"))
    first.close()
    with registry.session() as second:
        assert conn_id(second.get(upstream.url + "/2")) == conn
    seen = upstream.stats()
    assert len(seen["connections"]) == 1
    assert seen["open"] == 1
    assert registry.stats().totals()["connections_opened"] == 1


def test_adapter_close_leaves_shared_pools_open(registry, upstream):
    """After PoolAdapter.close() (as a library closing its own adapter), the shared
    connection stays open and the next session reuses it."""
    adapter = registry.adapter()
    session = requests.Session()
    session.mount("https://", adapter)
    conn = conn_id(session.get(upstream.url + "/1"))
    adapter.close()
    session.close()
    assert len(registry.stats().pools) == 1
    with registry.session() as other:
        assert conn_id(other.get(upstream.url + "/2")) == conn
    # The closed adapter itself still works: it looks the pools up on every send.
    assert conn_id(session.get(upstream.url + "/3")) == conn
    seen = upstream.stats()
    assert len(seen["connections"]) == 1
    assert seen["open"] == 1


def test_sessions_share_connections_but_not_cookies(registry, upstream):
    """A cookie set on session A is sent by A and not by session B, although both requests
    travel on the same pooled connection."""
    with registry.session() as a, registry.session() as b:
        a.cookies.set("token", "secret-of-a")
        ra = a.get(upstream.url + "/a")
        rb = b.get(upstream.url + "/b")
        assert "token=secret-of-a" in ra.request.headers.get("Cookie", "")
        assert "Cookie" not in rb.request.headers
        assert len(b.cookies) == 0
        assert conn_id(rb) == conn_id(ra)


def test_a_session_per_request_opens_one_connection(registry, upstream):
    """Fifty short-lived sessions, one request each, share one upstream connection."""
    conns = set()
    for i in range(50):
        with registry.session() as session:
            conns.add(conn_id(session.get(f"{upstream.url}/{i}")))
    assert len(conns) == 1
    seen = upstream.stats()
    assert (len(seen["connections"]), seen["requests"]) == (1, 50)
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["reused"]) == (1, 50, 49)


def test_a_session_is_a_requests_session_in_everything_but_its_adapters(registry):
    """Every attribute requests.Session() sets (its __attrs__, what pickling keeps) is
    equal, and fresh per session, in .session(), which does not run Session.__init__."""
    plain, pooled, other = requests.Session(), registry.session(), registry.session()
    for name in requests.Session.__attrs__:
        if name == "adapters":
            continue
        mine, theirs = getattr(pooled, name), getattr(plain, name)
        if name == "cookies":
            mine, theirs = (list(mine), type(mine)), (list(theirs), type(theirs))
        elif name == "hooks":
            mine, theirs = sorted(mine), sorted(theirs)
        assert mine == theirs, name
        if isinstance(getattr(pooled, name), (dict, list)) or name in ("cookies", "headers"):
            assert getattr(pooled, name) is not getattr(other, name), name
    assert set(vars(pooled)) ^ set(vars(plain)) == {"deadline", "shared_adapter"}
    assert list(pooled.adapters) == list(plain.adapters)  # the order requests matches in


def test_sessions_share_one_adapter_and_build_no_pool_manager(registry, monkeypatch):
    """.session() per request mounts the process's one PoolAdapter; no HTTPAdapter or
    PoolManager is constructed for it, and closing it leaves that adapter working."""
    import urllib3

    from poolclient.adapters import PoolAdapter

    first = registry.session()
    built: list[str] = []
    for cls in (requests.adapters.HTTPAdapter, urllib3.PoolManager):
        init = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, _init=init, _n=cls.__name__,
                            **k: (built.append(_n), _init(self, *a, **k))[1])
    sessions = [registry.session() for _ in range(3)]
    first.close()
    assert built == []
    adapters = {id(a) for s in [first, *sessions] for a in s.adapters.values()}
    assert len(adapters) == 1
    assert isinstance(sessions[0].adapters["https://"], PoolAdapter)


def test_request_without_timeout_gets_the_registrys_read_timeout(upstream):
    """read_timeout=0.5 applies to a session request given no timeout: /slow?seconds=2
    fails with a read timeout well before the upstream answers."""
    registry = Registry(Settings(ca_bundle=upstream.ca, read_timeout=0.5))
    try:
        with registry.session() as session:
            started = time.monotonic()
            with pytest.raises((requests.exceptions.ReadTimeout,
                                requests.exceptions.ConnectionError)) as caught:
                session.get(upstream.url + "/slow?seconds=2")
            elapsed = time.monotonic() - started
        exc = caught.value
        assert isinstance(exc, requests.exceptions.ReadTimeout) or any(
            isinstance(arg, ReadTimeoutError) for arg in exc.args), repr(exc)
        assert elapsed < 1.5
        assert registry.stats().totals()["errors"] == 1
    finally:
        registry.close()


def test_explicit_timeout_overrides_the_registrys(upstream):
    """A timeout given to the request wins over the registry's shorter read_timeout."""
    registry = Registry(Settings(ca_bundle=upstream.ca, read_timeout=0.2))
    try:
        with registry.session() as session:
            r = session.get(upstream.url + "/slow?seconds=0.5", timeout=5)
        assert r.status_code == 200
        assert registry.stats().totals()["errors"] == 0
    finally:
        registry.close()


def test_pool_timeout_through_a_session(upstream):
    """maxsize=1, pool_timeout=0.3: while another thread holds the only connection, a
    session request fails with PoolTimeoutError (an EmptyPoolError) and a wait is counted."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=0.3))
    errors: list[BaseException] = []
    statuses: list[int] = []

    def hold() -> None:
        try:
            with registry.session() as session:
                statuses.append(session.get(upstream.url + "/slow?seconds=2").status_code)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        def holding() -> bool:
            if errors:
                raise errors[0]
            return registry.stats().totals()["in_use"] == 1

        wait_for(holding, 10, "the holder to check out the only connection")
        with registry.session() as session:
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError) as caught:
                session.get(upstream.url + "/waiter")
            elapsed = time.monotonic() - started
        assert isinstance(caught.value, EmptyPoolError)
        assert caught.value.maxsize == 1
        assert 0.25 <= elapsed < 1.5
        totals = registry.stats().totals()
        assert totals["waits"] >= 1
        assert totals["errors"] >= 1
        assert totals["connections_opened"] == 1
    finally:
        holder.join(10)
        registry.close()
    assert not errors
    assert statuses == [200]
    assert upstream.stats()["requests"] == 1  # the waiter never reached the upstream


def test_request_and_session_share_one_pool_per_origin(registry, upstream):
    """registry.request() and a registry session to the same origin share one pool, so one
    connection serves both and maxsize bounds them together."""
    r = registry.request("GET", upstream.url + "/raw")
    assert r.status == 200
    with registry.session() as session:
        second = conn_id(session.get(upstream.url + "/session"))
    assert len(registry.stats().pools) == 1
    assert second == int(json.loads(r.data)["connection"])
    assert len(upstream.stats()["connections"]) == 1


def test_pool_keys_are_worked_out_once_per_origin_and_settings(registry, upstream):
    """Repeated calls find their pool without urllib3's key normaliser: once for
    .request(), once for requests' (other) pool settings, then never again."""
    pools = registry._pools()
    made = []
    normalise = pools.key_fn_by_scheme["https"]
    pools.key_fn_by_scheme["https"] = lambda context: made.append(1) or normalise(context)
    for i in range(5):
        assert registry.request("GET", f"{upstream.url}/{i}").status == 200
        with registry.session() as session:
            assert session.get(f"{upstream.url}/s{i}").status_code == 200
    assert len(made) == 2
    assert len(registry.stats().pools) == 1
    assert len(upstream.stats()["connections"]) == 1


def test_plain_http_origin_has_one_pool_whatever_verify_says():
    """For http:// the TLS arguments requests adds never split one origin into several pools."""
    import http.server


    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    reg = Registry(Settings(maxsize=2))
    try:
        reg.request("GET", url)
        with reg.session() as s:
            s.get(url)
            s.get(url, verify=False)
            s.trust_env = False
            s.get(url)
        (pool,) = reg.stats().pools
        assert (pool.requests, pool.connections_opened) == (4, 1)
    finally:
        reg.close()
        server.shutdown()
        server.server_close()


PROXY_ENVIRONMENTS = {
    "none": {},
    "https_proxy": {"HTTPS_PROXY": "http://proxy.test:3128"},
    "lower wins": {"HTTPS_PROXY": "http://upper.test:1", "https_proxy": "http://lower.test:2"},
    "no_proxy host": {"https_proxy": "http://proxy.test:3128", "NO_PROXY": "api.test,other"},
    "no_proxy domain": {"https_proxy": "http://proxy.test:3128", "no_proxy": ".test"},
    "no_proxy cidr": {"https_proxy": "http://proxy.test:3128", "no_proxy": "127.0.0.0/8"},
    "no_proxy port": {"https_proxy": "http://proxy.test:3128", "no_proxy": "api.test:8443"},
    "cgi": {"HTTP_PROXY": "http://proxy.test:3128", "REQUEST_METHOD": "GET"},
    "all_proxy": {"ALL_PROXY": "socks5://proxy.test:1080"},
}
URLS = ["https://api.test/items?x=1", "https://api.test:8443/", "https://127.0.0.1:9/a/b",
        "http://api.test", "https://user:pw@api.test/p", "https://other/?q=/x"]


def clean_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)


@pytest.mark.parametrize("bundles", [True, False])
@pytest.mark.parametrize("env", list(PROXY_ENVIRONMENTS))
def test_session_environment_settings_are_requests_own(registry, monkeypatch, env, bundles):
    """Proxies and CA bundle from the environment come out as requests' own Session works
    them out, for every URL, with the proxy variables read once per change."""
    clean_proxy_environment(monkeypatch)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if bundles:
            monkeypatch.setenv(name, f"/bundles/{name}.pem")
        else:
            monkeypatch.delenv(name, raising=False)
    for name, value in PROXY_ENVIRONMENTS[env].items():
        monkeypatch.setenv(name, value)
    plain = requests.Session()
    with registry.session() as pooled:
        for url in URLS:
            for verify, proxies in ((True, {}), (None, {"https": "http://mine:1"}),
                                    ("/ca.pem", {})):
                theirs = plain.merge_environment_settings(url, dict(proxies), None, verify,
                                                          None)
                for _ in range(2):  # the second from what was kept
                    mine = pooled.merge_environment_settings(url, dict(proxies), None, verify,
                                                             None)
                    assert mine == theirs, (url, verify, proxies)


def test_session_sees_a_proxy_variable_set_after_its_first_request(registry, monkeypatch):
    """The environment is read once while it stays the same, and again once it changes."""
    clean_proxy_environment(monkeypatch)
    monkeypatch.setattr(poolclient.adapters, "_seen", ({}, {}))  # what earlier tests kept
    reads: list[str] = []
    real = requests.utils.get_environ_proxies
    monkeypatch.setattr(requests.utils, "get_environ_proxies",
                        lambda url, no_proxy=None: reads.append(url) or real(url, no_proxy))
    url = "https://api.test/items"
    with registry.session() as session:
        for path in ("/items", "/items/2", "/other?x=1"):
            settings = session.merge_environment_settings(
                "https://api.test" + path, {}, None, True, None)
            assert settings["proxies"] == {}
        assert reads == ["https://api.test/items"]  # one read for the host
        monkeypatch.setenv("https_proxy", "http://proxy.test:3128")
        assert session.merge_environment_settings(url, {}, None, True, None)["proxies"] == {
            "https": "http://proxy.test:3128"}
        monkeypatch.setenv("no_proxy", "api.test")
        assert session.merge_environment_settings(url, {}, None, True, None)["proxies"] == {}
        session.trust_env = False
        monkeypatch.delenv("no_proxy")
        assert session.merge_environment_settings(url, {}, None, True, None)["proxies"] == {}


# (session headers, session params, request headers, request params): each way a merge can
# go, the plain one (nothing on either side to merge or drop) first.
MERGES = [
    (None, None, None, None),
    ({"X-Session": "s"}, {"s": "1"}, None, None),
    ({"Accept-Encoding": None}, {"s": None}, None, None),  # dropped by the merge
    (None, None, {"X-Call": "c"}, {"c": "2"}),
    ({"X-Session": "s"}, {"s": "1"}, {"X-Session": "call", "X-Other": None}, [("c", "2")]),
    (None, {"s": "1"}, None, "raw=1"),
    ({"X-Session": "s"}, {"s": "1"}, [], ""),  # empty, not mappings: the session's unused
]


@pytest.mark.parametrize("merge", MERGES, ids=range(len(MERGES)))
def test_prepared_requests_are_requests_own(registry, merge):
    """A .session() prepares each request as requests' own Session does, however the
    session's and the request's headers and params merge; the caller's Request is left as
    it was."""
    session_headers, session_params, headers, params = merge
    plain = requests.Session()
    with registry.session() as pooled:
        for session in (plain, pooled):
            session.headers.update(session_headers or {})
            session.params.update(session_params or {})
            session.cookies.set("jar", "1")
        for url in ("https://api.test/items", "https://api.test/items?x=1#f"):
            prepared = []
            for session in (plain, pooled):
                request = requests.Request("GET", url, headers=headers, params=params,
                                           cookies={"call": "2"})
                before = vars(request).copy()
                p = session.prepare_request(request)
                assert vars(request) == before
                prepared.append((p.method, p.url, list(p.headers.items()), p.body,
                                 sorted(p.hooks)))
            assert prepared[0] == prepared[1], url


def test_a_plain_session_request_skips_requests_protocol_checks(registry, upstream,
                                                               monkeypatch):
    """Where nothing is to merge, a .session() request reaches requests' merge_setting with
    one side None: none of its to_key_val_list calls (each an isinstance check against a
    typing Protocol, slow before Python 3.12) for headers, params or proxies, where
    requests' own Session makes them; a session with headers of its own merges them as
    requests does."""
    calls: list[object] = []
    real = requests.sessions.to_key_val_list
    monkeypatch.setattr(requests.sessions, "to_key_val_list",
                        lambda value: calls.append(value) or real(value))
    with requests.Session() as plain:
        plain.get(upstream.url + "/headers", verify=upstream.ca).raise_for_status()
    assert calls  # six in requests 2.34
    del calls[:]
    with registry.session() as pooled:
        answer = pooled.get(upstream.url + "/headers")
        assert answer.json()["headers"]["User-Agent"].startswith("python-requests/")
        assert calls == []
        pooled.headers["X-Team"] = "bench"
        answer = pooled.get(upstream.url + "/headers", headers={"X-Call": "1"})
    seen = answer.json()["headers"]
    assert (seen["X-Team"], seen["X-Call"]) == ("bench", "1")
    assert len(calls) == 2  # the headers' merge, requests' way
