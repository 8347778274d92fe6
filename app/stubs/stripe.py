"""The few endpoints of the Stripe API that ``tests/test_sdk_stripe.py`` calls, answered as
Stripe answers them (JSON objects with ``"object"``, errors as ``{"error": {...}}``).

- ``GET /v1/customers/ID``: the customer ID; ``cus_missing`` is a 404 ``resource_missing``;
- ``POST /v1/customers``: a new customer ``cus_new`` with the form's ``email`` and ``name``;
- without ``Authorization: Bearer sk_...``: 401, as Stripe answers an unknown key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from app.stubs import answer_json

MISSING = "cus_missing"


def handles(path: str) -> bool:
    return path == "/v1/customers" or (path.startswith("/v1/customers/")
                                       and path.count("/") == 3)


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one Stripe API request on ``handler`` (an ``app.upstream.Handler``)."""
    if not handler.headers.get("Authorization", "").startswith("Bearer sk_"):
        _json(handler, 401, _error("invalid_request_error", "Invalid API Key provided"))
        return
    if path == "/v1/customers":
        if handler.command != "POST":
            _json(handler, 405, _error("invalid_request_error", "Unrecognized request URL"))
            return
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        _json(handler, 200, _customer("cus_new", form.get("email"), form.get("name")))
        return
    customer = path.rsplit("/", 1)[1]
    if customer == MISSING:
        _json(handler, 404, _error("invalid_request_error", f"No such customer: '{customer}'",
                                   code="resource_missing", param="id"))
        return
    _json(handler, 200, _customer(customer, "jenny@example.com", "Jenny Rosen"))


def _customer(customer: str, email: str | None, name: str | None) -> dict[str, Any]:
    return {"id": customer, "object": "customer", "created": 1700000000, "email": email,
            "name": name, "livemode": False, "metadata": {}, "balance": 0,
            "currency": None, "delinquent": False, "description": None}


def _error(kind: str, message: str, **extra: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **extra}}


def _json(handler: Any, status: int, document: object) -> None:
    answer_json(handler, status, document, [("Request-Id", "req_test")])
