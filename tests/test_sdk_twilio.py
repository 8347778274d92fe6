"""Twilio's SDK, unchanged, on ``Registry.session()``, against the TLS upstream speaking
Twilio's REST API (``app/stubs/twilio.py``). The documented line builds the client per
request (about 30 us; a client keeps ``last_request``/``last_response`` per instance, and
its maintainers do not call it thread-safe, twilio-python#580)::

    h = TwilioHttpClient(pool_connections=False)   # no Session of its own to throw away
    h.session = environ["http.pool"].session()
    sms = twilio.rest.Client(account_sid, auth_token, http_client=h)

Twilio passes ``verify=None`` to requests, so its trust is the registry's default trust
(``POOLCLIENT_CA_BUNDLE``); ``session.verify`` counts only where neither
``REQUESTS_CA_BUNDLE`` nor ``CURL_CA_BUNDLE`` is set (requests lets those win over it).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator

import pytest
import requests

pytest.importorskip("twilio")

from twilio.base.exceptions import TwilioException, TwilioRestException  # noqa: E402
from twilio.http.http_client import TwilioHttpClient  # noqa: E402
from twilio.rest import Client  # noqa: E402

from poolclient import Registry, Settings  # noqa: E402
from tests.helpers import other_ca_file, refused_url  # noqa: E402

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
SID = "AC" + "1" * 32
TO, FROM = "+15558675310", "+15017122661"


def make_client(base: str, registry: Registry, verify: bool | str | None = None) -> Client:
    """The documented line, pointed at ``base`` (Twilio's ``Api`` domain has a
    ``base_url``, ``https://api.twilio.com``), stamped with the pid of the process."""
    h = TwilioHttpClient(pool_connections=False)
    h.session = registry.session()
    h.session.headers["X-Client-Pid"] = str(os.getpid())
    if verify is not None:
        h.session.verify = verify
    client = Client(SID, "auth-token", http_client=h)
    client.api.base_url = base
    return client


def send(client: Client, body: str = "hello"):
    return client.messages.create(to=TO, from_=FROM, body=body)


@pytest.fixture(autouse=True)
def machine_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)  # as the machine sets it
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)


def test_per_request_clients_reuse_one_connection(upstream, registry):
    for n in range(3):
        message = send(make_client(upstream.url, registry), f"hello {n}")
        assert (message.sid, message.status, message.body) == ("SM" + "0" * 32, "queued",
                                                               f"hello {n}")
        assert (message.to, message.from_, message.account_sid) == (TO, FROM, SID)
        assert message.date_created.year == 2024
    seen = upstream.stats()
    assert seen["requests"] == 3 and seen["methods"] == {"POST": 3}
    assert [c["pids"] for c in seen["connections"]] == [[str(os.getpid())]]
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["requests"], totals["in_use"]) == (1, 3, 0)


def test_per_request_clients_in_threads_each_see_their_own_response(upstream, registry):
    """8 threads x 10 messages, a client each: each client's ``last_response`` is its own
    call's, over at most ``maxsize`` shared connections."""
    failures: list[BaseException] = []
    bodies: list[str] = []

    def calls(n: int) -> None:
        try:
            for i in range(10):
                client = make_client(upstream.url, registry)
                message = send(client, f"{n}-{i}")
                last = client.http_client._test_only_last_response
                assert message.body == json.loads(last.text)["body"] == f"{n}-{i}"
                bodies.append(message.body)
        except Exception as exc:  # noqa: BLE001 - counted, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=calls, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert sorted(bodies) == sorted(f"{n}-{i}" for n in range(8) for i in range(10))
    seen = upstream.stats()
    assert seen["requests"] == 80
    assert 1 <= len(seen["connections"]) <= registry.maxsize == 4
    assert registry.stats().totals()["connections_opened"] == len(seen["connections"])


def test_closing_the_session_closes_nothing_shared(upstream, registry):
    """Twilio's sync client has no close of its own; closing the session it was given (what
    code that cleans up does) leaves the shared connection open."""
    for _ in range(2):
        client = make_client(upstream.url, registry)
        send(client)
        client.http_client.session.close()
        assert send(client).status == "queued"
    assert registry.stats().totals()["connections_opened"] == 1
    seen = upstream.stats()
    assert (seen["requests"], seen["open"], len(seen["connections"])) == (4, 1, 1)


def test_refused_is_the_requests_connection_error_twilio_raises(registry):
    """Twilio wraps no transport error: requests' own reaches the caller."""
    with pytest.raises(requests.exceptions.ConnectionError) as raised:
        send(make_client(refused_url(), registry))
    assert not isinstance(raised.value, (requests.exceptions.SSLError, TwilioException))


def test_an_api_error_is_twilios_and_keeps_the_connection(upstream, registry):
    wrong = make_client(upstream.url, registry)
    wrong.auth = ("AC" + "9" * 32, "auth-token")  # credentials of another account
    with pytest.raises(TwilioRestException) as raised:
        send(wrong)
    assert (raised.value.status, raised.value.code) == (401, 20003)
    assert send(make_client(upstream.url, registry)).status == "queued"
    assert len(upstream.stats()["connections"]) == 1


def test_trust_is_the_default_trust_whatever_session_verify_says(upstream, registry, tmp_path):
    """With ``REQUESTS_CA_BUNDLE`` set, requests takes it over ``session.verify``, and
    poolclient takes that bundle for the default trust: the pin (the upstream's CA)."""
    client = make_client(upstream.url, registry, verify=other_ca_file(str(tmp_path)))
    assert send(client).status == "queued"


@pytest.fixture
def pinned_elsewhere(tmp_path) -> Iterator[Registry]:
    """``POOLCLIENT_CA_BUNDLE`` = a CA that did not sign the upstream."""
    registry = Registry(Settings(ca_bundle=other_ca_file(str(tmp_path)), maxsize=4,
                                 connect_retries=0))
    yield registry
    registry.close()


def test_session_verify_counts_without_the_bundle_variables(upstream, pinned_elsewhere,
                                                           monkeypatch):
    """Without ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``, ``session.verify`` is what
    Twilio's requests verify with, in a pool of its own; left ``True``, the pin."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE")
    assert send(make_client(upstream.url, pinned_elsewhere, verify=upstream.ca)).body == "hello"
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        send(make_client(upstream.url, pinned_elsewhere))
    assert upstream.stats()["requests"] == 1
