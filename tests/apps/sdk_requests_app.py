"""A WSGI app on the three requests-based SDKs, each plugged in as the README documents:

- Stripe and Vault (hvac) clients built at import, on ``get_registry().session()``: under
  ``--preload`` in gunicorn's master, before the fork, as a module-level client usually is;
- Twilio's client built per request, on ``environ['http.pool'].session()``.

Routes (each one SDK call, stamped with the calling process's pid, ``X-Client-Pid``):
``GET /stripe`` (retrieve a customer), ``/vault`` (a KV v2 read), ``/twilio`` (send an SMS).
``MASTER_CALLS=N``: N rounds of the three at import (in the master under ``--preload``).

``UPSTREAM_URL`` is the API base of all three, ``UPSTREAM_CA`` the CA that Stripe
(``stripe.ca_bundle_path``) and Vault (``session.verify``) verify with; Twilio verifies with
the default trust, ``POOLCLIENT_CA_BUNDLE``.
"""

import json
import os

import hvac
import requests
import stripe
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

import poolclient

UPSTREAM = os.environ["UPSTREAM_URL"]
CA = os.environ["UPSTREAM_CA"]
ACCOUNT_SID = "AC" + "1" * 32


class StampPid(requests.auth.AuthBase):
    """The sending process's pid, read when each request is prepared."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["X-Client-Pid"] = str(os.getpid())
        return r


pool = poolclient.get_registry()

stripe.ca_bundle_path = CA  # Stripe's CA file, a module global (its bundled one by default)
payments = stripe.StripeClient(
    "sk_test_123", http_client=stripe.RequestsClient(session=pool.session()),
    base_addresses={"api": UPSTREAM}, max_network_retries=0)

vault_session = pool.session()
vault_session.verify = CA  # hvac takes the session's verify over its own
vault_session.auth = StampPid()
vault = hvac.Client(url=UPSTREAM, token="s.test", session=vault_session)


def sms_client(registry: poolclient.Registry) -> TwilioClient:
    h = TwilioHttpClient(pool_connections=False)
    h.session = registry.session()
    h.session.headers["X-Client-Pid"] = str(os.getpid())
    client = TwilioClient(ACCOUNT_SID, "auth-token", http_client=h)
    client.api.base_url = UPSTREAM
    return client


def call(path: str, registry: poolclient.Registry) -> str:
    if path == "/stripe":
        customer = payments.v1.customers.retrieve(
            "cus_123", options={"headers": {"X-Client-Pid": str(os.getpid())}})
        return customer.id
    if path == "/vault":
        secret = vault.secrets.kv.v2.read_secret_version(path="app",
                                                         raise_on_deleted_version=True)
        return secret["data"]["data"]["username"]
    if path == "/twilio":
        message = sms_client(registry).messages.create(to="+15558675310",
                                                       from_="+15017122661", body="hi")
        return message.status
    raise LookupError(path)


for _ in range(int(os.environ.get("MASTER_CALLS", "0"))):
    for route in ("/stripe", "/vault", "/twilio"):
        call(route, pool)


def app(environ, start_response):
    try:
        status, document = "200 OK", {"text": call(environ["PATH_INFO"], environ["http.pool"])}
    except LookupError:
        status, document = "404 Not Found", {"error": "no such route"}
    except (stripe.StripeError, hvac.exceptions.VaultError, TwilioException,
            requests.RequestException) as exc:
        status, document = "502 Bad Gateway", {"error": type(exc).__name__}
    body = json.dumps({**document, "pid": os.getpid()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
