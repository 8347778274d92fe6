"""The one endpoint of Twilio's REST API that ``tests/test_sdk_twilio.py`` calls, answered
as Twilio answers it.

- ``POST /2010-04-01/Accounts/SID/Messages.json`` (send an SMS), with HTTP Basic auth whose
  user is SID: 201 and the queued message, its ``to``, ``from`` and ``body`` the form's;
- wrong or missing credentials: 401 with Twilio's error document (code 20003), which the
  SDK raises as ``TwilioRestException``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import parse_qs

from app.stubs import answer_json

PREFIX = "/2010-04-01/Accounts/"
SUFFIX = "/Messages.json"
DATE = "Mon, 01 Jan 2024 00:00:00 +0000"


def handles(path: str) -> bool:
    return (path.startswith(PREFIX) and path.endswith(SUFFIX)
            and path.count("/") == 4 and len(path) > len(PREFIX) + len(SUFFIX))


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one Twilio API request on ``handler`` (an ``app.upstream.Handler``)."""
    account = path[len(PREFIX):-len(SUFFIX)]
    if _basic_user(handler.headers.get("Authorization", "")) != account:
        _json(handler, 401, {"code": 20003, "message": "Authenticate", "status": 401,
                             "more_info": "https://www.twilio.com/docs/errors/20003"})
        return
    if handler.command != "POST":
        _json(handler, 405, {"code": 20004, "message": "Method not allowed", "status": 405,
                             "more_info": "https://www.twilio.com/docs/errors/20004"})
        return
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    sid = "SM" + "0" * 32
    _json(handler, 201, {
        "sid": sid, "account_sid": account, "api_version": "2010-04-01",
        "to": form.get("To"), "from": form.get("From"), "body": form.get("Body"),
        "status": "queued", "direction": "outbound-api", "num_segments": "1",
        "num_media": "0", "price": None, "price_unit": "USD", "error_code": None,
        "error_message": None, "messaging_service_sid": None,
        "date_created": DATE, "date_updated": DATE, "date_sent": None,
        "uri": f"{PREFIX}{account}/Messages/{sid}.json", "subresource_uris": {},
    })


def _basic_user(header: str) -> str | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return None


def _json(handler: Any, status: int, document: object) -> None:
    answer_json(handler, status, document)
