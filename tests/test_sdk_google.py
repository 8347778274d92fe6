"""google-auth, unchanged, on the registry's pools: ``AuthorizedHttp(credentials,
http=pool.pool_manager())`` (urllib3) and ``AuthorizedSession`` with ``auth_request=`` on a
``pool.session()`` and ``pool.adapter()`` mounted (requests). Against the real TLS upstream
answering a Cloud Storage endpoint and an OAuth 2.0 token endpoint
(``app/stubs/google.py``): the API calls and the token refreshes both go through the pools.
Under real gunicorn ``--preload`` at the end."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
import urllib3

google_auth = pytest.importorskip("google.auth")

import google.auth.exceptions  # noqa: E402
import google.oauth2.credentials  # noqa: E402
from google.auth.transport.requests import AuthorizedSession, Request  # noqa: E402
from google.auth.transport.urllib3 import AuthorizedHttp  # noqa: E402

from poolclient import Registry  # noqa: E402
from tests.helpers import Upstream, health_by_worker, load, wait_for  # noqa: E402

BUCKET = "/storage/v1/b/bucket"


def refreshing(upstream: Upstream, token: str | None = None
               ) -> google.oauth2.credentials.Credentials:
    """User credentials whose refresh POSTs a refresh-token grant to the upstream, through
    the request object google-auth hands them (the transport's)."""
    return google.oauth2.credentials.Credentials(
        token=token, refresh_token="refresh", client_id="id", client_secret="secret",
        token_uri=upstream.url + "/oauth2/v4/token")


def bucket(response: Any) -> dict[str, Any]:
    status = getattr(response, "status", None) or response.status_code
    assert status == 200, status
    return json.loads(response.data) if hasattr(response, "data") else response.json()


def pooled_session(registry: Registry, credentials: Any) -> AuthorizedSession:
    session = AuthorizedSession(credentials, auth_request=Request(registry.session()))
    session.mount("https://", registry.adapter())
    return session


def test_authorized_http_with_a_static_token(upstream, registry):
    authed = AuthorizedHttp(google.oauth2.credentials.Credentials(token="t"),
                            http=registry.pool_manager())
    for _ in range(3):
        assert bucket(authed.request("GET", upstream.url + BUCKET))["token"] == "t"
    objects = json.loads(authed.request("GET", upstream.url + BUCKET + "/o").data)
    assert [o["name"] for o in objects["items"]] == ["a.txt", "b.txt"]
    seen = upstream.stats()
    assert seen["requests"] == 4 and len(seen["connections"]) == 1
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests, pool.in_use) == (1, 4, 0)


def test_authorized_http_refreshes_through_the_pools(upstream, registry):
    """No token yet: refreshed before the first call. An expired one: the 401, a refresh,
    the call again. Every request on the one pooled connection."""
    authed = AuthorizedHttp(refreshing(upstream), http=registry.pool_manager())
    assert bucket(authed.request("GET", upstream.url + BUCKET))["token"].startswith("fresh-")
    stale = AuthorizedHttp(refreshing(upstream, token="expired-1"),
                           http=registry.pool_manager())
    assert bucket(stale.request("GET", upstream.url + BUCKET))["token"].startswith("fresh-")
    seen = upstream.stats()
    # POST token, GET; GET (401), POST token, GET.
    assert seen["methods"] == {"POST": 2, "GET": 3}
    assert len(seen["connections"]) == 1
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 5, 0)


@pytest.mark.parametrize("manager", ["pooled", "a plain PoolManager"])
def test_the_finalizers_clear_closes_nothing_shared(upstream, registry, manager):
    """``AuthorizedHttp.__del__`` calls ``clear()`` on the manager it was given: on the
    pools, two clients in turn share one connection, still open; on a plain PoolManager
    (the control), the finalizer closes it."""
    for _ in range(2):
        http = (registry.pool_manager() if manager == "pooled"
                else urllib3.PoolManager(ca_certs=upstream.ca))
        authed = AuthorizedHttp(google.oauth2.credentials.Credentials(token="t"), http=http)
        bucket(authed.request("GET", upstream.url + BUCKET))
        del authed, http
        gc.collect()
    seen = upstream.stats()
    if manager == "pooled":
        assert (len(seen["connections"]), seen["open"]) == (1, 1)
        assert registry.stats().pools[0].connections_opened == 1
    else:
        assert len(seen["connections"]) == 2
        wait_for(lambda: upstream.stats()["open"] == 0, 5, "the finalizer to close them")


def test_authorized_session_calls_and_refreshes_on_the_pools(upstream, registry):
    """The refresh (``auth_request=`` on ``.session()``) and the calls (``.adapter()``
    mounted) share the pool; closing the session, and its Request's finalizer closing the
    auth session, close nothing shared."""
    for _ in range(2):
        session = pooled_session(registry, refreshing(upstream))
        assert bucket(session.get(upstream.url + BUCKET))["token"].startswith("fresh-")
        listing = session.get(upstream.url + BUCKET + "/o").json()
        assert len(listing["items"]) == 2
        session.close()
        del session
        gc.collect()
    seen = upstream.stats()
    assert seen["methods"] == {"POST": 2, "GET": 4}
    assert (len(seen["connections"]), seen["open"]) == (1, 1)
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 6, 0)


def test_authorized_session_retries_a_401_after_a_refresh(upstream, registry):
    session = pooled_session(registry, refreshing(upstream, token="expired-2"))
    assert bucket(session.get(upstream.url + BUCKET))["token"].startswith("fresh-")
    assert upstream.stats()["methods"] == {"GET": 2, "POST": 1}
    assert registry.stats().totals()["connections_opened"] == 1


def test_without_auth_request_the_refresh_is_off_the_pools(upstream, registry, monkeypatch):
    """Why ``auth_request=`` matters: AuthorizedSession refreshes through a
    ``requests.Session`` of its own otherwise, with its own connections and trust (certifi
    here, which does not know the upstream's CA): the refresh fails and the pools saw
    nothing."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    session = AuthorizedSession(refreshing(upstream))
    session.mount("https://", registry.adapter())
    with pytest.raises(google.auth.exceptions.TransportError) as raised:
        session.get(upstream.url + BUCKET)
    assert "/oauth2/v4/token" in str(raised.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
    assert registry.stats().totals()["requests"] == 0
    assert upstream.stats()["requests"] == 0


PATHS = ("/gcs/urllib3", "/gcs/requests")


def test_clients_built_at_import_under_preload(gunicorn, upstream: Upstream):
    """The app's AuthorizedHttp and AuthorizedSession are built in gunicorn's master on
    ``get_registry()``; the AuthorizedHttp refreshes its token and calls there before the
    fork (tests/apps/sdk_k8s_google_app.py). 8 clients, 400 calls."""
    workers, threads = 2, 4
    env = {"UPSTREAM_URL": upstream.url, "K8S_CA": upstream.ca,
           "POOLCLIENT_CA_BUNDLE": upstream.ca, "MASTER_CALLS": "gcs"}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_k8s_google_app:app"], env)
    worker_pids = server.worker_pids()

    outcomes = load(server.url, clients=8, seconds=120, paths=PATHS, requests=400)
    assert outcomes == {200: 400}, outcomes

    seen = upstream.stats()
    conns = seen["connections"]
    assert all(len(c["pids"]) == 1 for c in conns), "a connection was written by two processes"
    master = [c for c in conns if c["pids"] == [str(server.proc.pid)]]
    assert [c["requests"] for c in master] == [2] and not master[0]["open"]  # token, GET
    in_workers = [c for c in conns if c not in master]
    assert {int(c["pids"][0]) for c in in_workers} <= worker_pids
    assert len(in_workers) <= workers * threads
    # The AuthorizedHttp's token came over the fork; each worker refreshes the session's.
    refreshes = seen["methods"]["POST"] - 1
    assert seen["methods"]["GET"] == 401 and 1 <= refreshes <= workers * threads
    assert sum(c["requests"] for c in in_workers) == 400 + refreshes

    health = health_by_worker(server, worker_pids)
    totals = [h["totals"] for h in health.values()]
    assert sum(t["requests"] for t in totals) == 400 + refreshes
    assert sum(t["connections_opened"] for t in totals) == len(in_workers)
    assert all(t["errors"] == t["unread"] == t["in_use"] == 0 for t in totals)
    server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")
