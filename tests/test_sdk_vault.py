"""HashiCorp Vault's hvac, unchanged, on ``Registry.session()``, against the TLS upstream
speaking Vault's HTTP API (``app/stubs/vault.py``). The documented line builds the client
once, at import (it holds the token, which a login renews for every thread)::

    session = pool.session()
    session.verify = "/etc/vault/ca.pem"       # not Client(verify=...): see below
    vault = hvac.Client(url=VAULT_ADDR, token=token, session=session)

The trap: given a session, hvac copies ``session.verify`` over its own ``verify=`` (and
``VAULT_CACERT``) whenever the session's is truthy, and a new session's is ``True``. So
``hvac.Client(verify=ca, session=s)`` verifies with the default trust, and Vault's private CA
must be set on the session.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import requests

hvac = pytest.importorskip("hvac")

from poolclient import Registry, Settings  # noqa: E402
from tests.helpers import other_ca_file, refused_url  # noqa: E402

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class StampPid(requests.auth.AuthBase):
    """Puts the sending process's pid on each request, when it is sent (a client built at
    import in gunicorn's master sends from the workers). hvac passes no ``auth=``, so the
    session's is used; Vault's token travels in ``X-Vault-Token``."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["X-Client-Pid"] = str(os.getpid())
        return r


def make_client(url: str, registry: Registry, ca: str | None, **kw) -> hvac.Client:
    """The documented line, with the pid stamp."""
    session = registry.session()
    if ca is not None:
        session.verify = ca
    session.auth = StampPid()
    return hvac.Client(url=url, token="s.test", session=session, **kw)


def read(client: hvac.Client, path: str = "app") -> dict:
    return client.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)


@pytest.fixture(autouse=True)
def machine_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)  # as the machine sets it
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)


def test_calls_reuse_one_connection(upstream, registry):
    client = make_client(upstream.url, registry, upstream.ca)
    for _ in range(3):
        secret = read(client)
        assert secret["data"]["data"] == {"username": "app", "password": "s3cr3t"}
        assert secret["data"]["metadata"]["version"] == 1
        health = client.sys.read_health_status(method="GET")
        assert (health["initialized"], health["sealed"]) == (True, False)
    assert client.sys.read_health_status(method="HEAD").status_code == 200
    seen = upstream.stats()
    assert seen["requests"] == 7 and seen["methods"] == {"GET": 6, "HEAD": 1}
    assert [c["pids"] for c in seen["connections"]] == [[str(os.getpid())]]
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 7, 0)


def test_vault_errors_are_hvacs_own_and_keep_the_connection(upstream, registry):
    client = make_client(upstream.url, registry, upstream.ca)
    with pytest.raises(hvac.exceptions.InvalidPath):
        read(client, "missing")
    client.token = None
    with pytest.raises(hvac.exceptions.Forbidden, match="permission denied"):
        read(client)
    client.token = "s.test"
    assert read(client)["data"]["data"]["username"] == "app"
    assert len(upstream.stats()["connections"]) == 1


def test_one_client_shared_by_threads(upstream, registry):
    """The documented line at import: one client, 8 threads x 10 reads."""
    client = make_client(upstream.url, registry, upstream.ca)
    failures: list[BaseException] = []
    done: list[int] = []

    def calls() -> None:
        try:
            for _ in range(10):
                done.append(read(client)["data"]["metadata"]["version"])
        except Exception as exc:  # noqa: BLE001 - counted, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert done == [1] * 80
    seen = upstream.stats()
    assert seen["requests"] == 80
    assert 1 <= len(seen["connections"]) <= registry.maxsize == 4
    totals = registry.stats().totals()
    assert (totals["requests"], totals["in_use"]) == (80, 0)
    assert totals["connections_opened"] == len(seen["connections"])


def test_close_closes_nothing_shared(upstream, registry):
    """``client.adapter.close()`` (hvac's own: it closes its session) leaves the shared
    connection open, for the same client and the next one."""
    for _ in range(2):
        client = make_client(upstream.url, registry, upstream.ca)
        read(client)
        client.adapter.close()
        assert read(client)["data"]["data"]["username"] == "app"
    assert registry.stats().totals()["connections_opened"] == 1
    seen = upstream.stats()
    assert (seen["requests"], seen["open"], len(seen["connections"])) == (4, 1, 1)


def test_refused_is_the_requests_connection_error_hvac_raises(registry):
    """hvac has no connection error of its own: it lets requests' through."""
    client = make_client(refused_url(), registry, None)
    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        read(client)
    assert not isinstance(raised.value, requests.exceptions.SSLError)


@pytest.fixture
def pinned_elsewhere(tmp_path) -> Iterator[Registry]:
    """``POOLCLIENT_CA_BUNDLE`` = a CA that did not sign the upstream."""
    registry = Registry(Settings(ca_bundle=other_ca_file(str(tmp_path)), maxsize=4,
                                 connect_retries=0))
    yield registry
    registry.close()


def test_the_vault_ca_on_the_session_is_honoured_under_another_pin(upstream,
                                                                    pinned_elsewhere):
    client = make_client(upstream.url, pinned_elsewhere, upstream.ca)
    assert read(client)["data"]["data"]["username"] == "app"
    assert client.adapter._kwargs["verify"] == upstream.ca


@pytest.mark.parametrize("how", ["verify=", "VAULT_CACERT"])
def test_trap_the_clients_verify_is_overridden_by_the_sessions(upstream, pinned_elsewhere,
                                                              monkeypatch, how):
    """hvac takes ``session.verify`` (``True`` on a new session) over its own ``verify=``
    and over ``VAULT_CACERT``: the call verifies with the default trust (the pin) and fails."""
    session = pinned_elsewhere.session()
    if how == "verify=":
        client = hvac.Client(url=upstream.url, token="s.test", verify=upstream.ca,
                             session=session)
    else:
        monkeypatch.setattr(hvac.v1, "VAULT_CACERT", upstream.ca)  # read at hvac's import
        client = hvac.Client(url=upstream.url, token="s.test", session=session)
    assert client.adapter._kwargs["verify"] is True
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        read(client)
    assert upstream.stats()["requests"] == 0
