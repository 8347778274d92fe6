"""The Stripe SDK, unchanged, on ``Registry.session()``, against the TLS upstream speaking
Stripe's wire format (``app/stubs/stripe.py``). The documented line builds the client once,
at import, as Stripe means it to be used::

    payments = stripe.StripeClient(key, http_client=stripe.RequestsClient(session=pool.session()))

Stripe's ``RequestsClient`` shares a session it is given between all threads (its own
default is one ``requests.Session`` per thread); the session's connections are the
registry's, looked up per request, so the one client is safe under ``--preload``. Stripe
verifies with its own CA file (``stripe.ca_bundle_path``), passed as ``verify=`` on every
request: poolclient honours it, in a pool of its own, whatever ``POOLCLIENT_CA_BUNDLE`` pins.

The three requests SDKs (Stripe, Vault, Twilio) under real gunicorn together are tested at
the end of this file (``tests/apps/sdk_requests_app.py``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

stripe = pytest.importorskip("stripe")
hvac = pytest.importorskip("hvac")
pytest.importorskip("twilio")

from twilio.http.http_client import TwilioHttpClient  # noqa: E402
from twilio.rest import Client as TwilioClient  # noqa: E402

from poolclient import Registry  # noqa: E402
from tests.helpers import (  # noqa: E402
    Upstream,
    assert_workers_own_connections,
    load,
    other_ca_file,
    refused_url,
    wait_for,
)

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pid() -> dict[str, str]:
    """Stripe's per-request headers: the calling process's pid, for the upstream's record."""
    return {"headers": {"X-Client-Pid": str(os.getpid())}}


def make_client(base: str, registry: Registry, **kw) -> stripe.StripeClient:
    """The documented line, pointed at ``base``."""
    return stripe.StripeClient(
        "sk_test_123", http_client=stripe.RequestsClient(session=registry.session()),
        base_addresses={"api": base}, **kw)


@pytest.fixture
def stripe_trusts(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stripe's CA file (a module global, read at every request) set to the upstream's CA."""
    monkeypatch.setattr(stripe, "ca_bundle_path", upstream.ca)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)  # as the machine sets it
    yield


def test_calls_reuse_one_connection(upstream, registry, stripe_trusts):
    client = make_client(upstream.url, registry)
    for n in range(3):
        customer = client.v1.customers.retrieve("cus_123", options=pid())
        assert isinstance(customer, stripe.Customer)
        assert (customer.id, customer.email) == ("cus_123", "jenny@example.com")
        created = client.v1.customers.create({"email": f"c{n}@example.com"}, options=pid())
        assert (created.id, created.email) == ("cus_new", f"c{n}@example.com")
    seen = upstream.stats()
    assert seen["requests"] == 6 and seen["methods"] == {"GET": 3, "POST": 3}
    assert [c["pids"] for c in seen["connections"]] == [[str(os.getpid())]]
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 6, 0)


def test_stripe_errors_are_its_own_and_keep_the_connection(upstream, registry, stripe_trusts):
    client = make_client(upstream.url, registry, max_network_retries=0)
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve("cus_missing")
    assert (raised.value.http_status, raised.value.code) == (404, "resource_missing")
    with pytest.raises(stripe.AuthenticationError):
        stripe.StripeClient("rk_wrong", http_client=stripe.RequestsClient(
            session=registry.session()), base_addresses={"api": upstream.url},
            max_network_retries=0).v1.customers.retrieve("cus_123")
    assert client.v1.customers.retrieve("cus_123").id == "cus_123"
    assert len(upstream.stats()["connections"]) == 1


def test_one_client_shared_by_threads(upstream, registry, stripe_trusts):
    """The documented line at import: one client, one session, 8 threads x 10 calls."""
    client = make_client(upstream.url, registry)
    failures: list[BaseException] = []
    ids: list[str] = []

    def calls(n: int) -> None:
        try:
            for i in range(10):
                ids.append(client.v1.customers.retrieve(f"cus_{n}_{i}", options=pid()).id)
        except Exception as exc:  # noqa: BLE001 - counted, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert sorted(ids) == sorted(f"cus_{n}_{i}" for n in range(8) for i in range(10))
    seen = upstream.stats()
    assert seen["requests"] == 80
    assert 1 <= len(seen["connections"]) <= registry.maxsize == 4
    totals = registry.stats().totals()
    assert (totals["requests"], totals["in_use"]) == (80, 0)
    assert totals["connections_opened"] == len(seen["connections"])


def test_close_closes_nothing_shared(upstream, registry, stripe_trusts):
    """``RequestsClient.close()`` (Stripe's own) closes the session it was given: the
    shared connection stays open, for the same client and for the next one."""
    for _ in range(2):
        http_client = stripe.RequestsClient(session=registry.session())
        client = stripe.StripeClient("sk_test_123", http_client=http_client,
                                     base_addresses={"api": upstream.url})
        client.v1.customers.retrieve("cus_123")
        http_client.close()
        assert client.v1.customers.retrieve("cus_123").id == "cus_123"
    assert registry.stats().totals()["connections_opened"] == 1
    seen = upstream.stats()
    assert (seen["requests"], seen["open"], len(seen["connections"])) == (4, 1, 1)


def test_refused_is_stripes_connection_error(registry, stripe_trusts):
    client = make_client(refused_url(), registry, max_network_retries=0)
    with pytest.raises(stripe.APIConnectionError) as raised:
        client.v1.customers.retrieve("cus_123")
    assert raised.value.should_retry  # a connect error: Stripe's retries would take it
    assert "Could not verify" not in str(raised.value)


def test_stripes_ca_is_honoured_under_another_pin(upstream, stripe_trusts, tmp_path,
                                                  monkeypatch):
    """``POOLCLIENT_CA_BUNDLE`` pins a CA that did not sign the upstream: Stripe's own CA
    file (here the upstream's) is what its requests verify with, in a pool of its own."""
    monkeypatch.setenv("POOLCLIENT_CA_BUNDLE", other_ca_file(str(tmp_path)))
    registry = Registry()
    try:
        client = make_client(upstream.url, registry, max_network_retries=0)
        assert client.v1.customers.retrieve("cus_123", options=pid()).id == "cus_123"
        assert client.v1.customers.create({"email": "a@example.com"}).id == "cus_new"
        # The pin is still the default trust: a plain session call to the same upstream
        # fails its certificate check.
        with registry.session() as s, pytest.raises(Exception, match="CERTIFICATE_VERIFY"):
            s.get(upstream.url + "/v1/customers/cus_123")
        assert len(upstream.stats()["connections"]) == 1
    finally:
        registry.close()


def test_stripes_bundled_ca_is_not_replaced_by_the_pin(upstream, registry, monkeypatch):
    """The registry pins the upstream's CA; Stripe still verifies with its bundled CA file,
    which did not sign the upstream: Stripe's SSL error, never a silent swap of trust."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    assert stripe.ca_bundle_path.endswith(os.path.join("stripe", "data",
                                                       "ca-certificates.crt"))
    client = make_client(upstream.url, registry, max_network_retries=0)
    with pytest.raises(stripe.APIConnectionError, match="Could not verify Stripe's SSL"):
        client.v1.customers.retrieve("cus_123")
    assert upstream.stats()["requests"] == 0


def test_the_three_sdks_share_one_pool(upstream, registry, stripe_trusts):
    """With the pin and the CA the SDKs name being one file, Stripe (``ca_bundle_path``),
    Vault (``session.verify``) and Twilio (the default trust) share one pool and its bound."""
    make_client(upstream.url, registry).v1.customers.retrieve("cus_123")
    vault_session = registry.session()
    vault_session.verify = upstream.ca
    vault = hvac.Client(url=upstream.url, token="s.test", session=vault_session)
    assert vault.secrets.kv.v2.read_secret_version(
        path="app", raise_on_deleted_version=True)["data"]["data"]["username"] == "app"
    h = TwilioHttpClient(pool_connections=False)
    h.session = registry.session()
    sms = TwilioClient("AC123", "token", http_client=h)
    sms.api.base_url = upstream.url
    assert sms.messages.create(to="+15558675310", from_="+15017122661", body="hi").body == "hi"
    assert len(registry.stats().pools) == 1
    assert len(upstream.stats()["connections"]) == 1


PATHS = ("/stripe", "/vault", "/twilio")


def test_requests_sdks_under_gunicorn_preload(gunicorn, upstream: Upstream):
    """Stripe and Vault clients built at import in the master, Twilio's per request; one call
    of each in the master; then 16 clients, 600 calls: all 200, at most workers x threads
    connections, none written by two processes, the master's closed before the fork."""
    workers, threads, calls = 2, 4, 600
    env = {"UPSTREAM_URL": upstream.url, "UPSTREAM_CA": upstream.ca,
           "POOLCLIENT_CA_BUNDLE": upstream.ca, "REQUESTS_CA_BUNDLE": SYSTEM_BUNDLE,
           "MASTER_CALLS": "1"}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_requests_app:app"], env)
    worker_pids = server.worker_pids()

    outcomes = load(server.url, clients=16, seconds=120, paths=PATHS, requests=calls)
    assert outcomes == {200: calls}, (outcomes, server.log()[-3000:])

    # One GET to Stripe, one to Vault, one POST to Twilio, on the master's one connection.
    health = assert_workers_own_connections(server, upstream, worker_pids, calls,
                                            master_requests=3, bound=workers * threads)
    methods = upstream.stats()["methods"]
    assert sum(methods.values()) == calls + 3 and methods["POST"] > 1
    # One pool per worker that served (a worker may have served none): the SDKs share it.
    assert all(len(h["pools"]) <= 1 for h in health.values()), "the SDKs split the pool"
    server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")
