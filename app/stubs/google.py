"""The few endpoints of Google's APIs that the google-auth tests call:

- ``POST /oauth2/v4/token``: an OAuth 2.0 token endpoint (a refresh-token grant, as
  ``google.oauth2.credentials.Credentials.refresh`` sends it): ``{"access_token":
  "fresh-N", "expires_in": 3600, "token_type": "Bearer"}``, N counting up from 1; a body
  without ``grant_type`` is a 400 ``invalid_request``;
- ``GET /storage/v1/b/{bucket}``: the bucket's metadata, as Cloud Storage's JSON API
  answers it, with ``"token"``: the bearer token it was called with (so a test sees which
  one arrived);
- ``GET /storage/v1/b/{bucket}/o``: its objects (two).

The storage endpoints need ``Authorization: Bearer <token>``: none, or a token that
starts with ``expired``, is a 401 (google-auth then refreshes and tries again).
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import parse_qs

from app.stubs import answer_json

TOKEN_PATH = "/oauth2/v4/token"
_STORAGE = "/storage/v1/b/"
_issued = itertools.count(1)  # shared by the upstream's threads: next() is atomic


def handles(path: str) -> bool:
    return path == TOKEN_PATH or path.startswith(_STORAGE)


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one API request on ``handler`` (an ``app.upstream.Handler``)."""
    if path == TOKEN_PATH:
        form = parse_qs(body.decode("utf-8", "replace"))
        if "grant_type" not in form:
            _json(handler, 400, {"error": "invalid_request",
                                 "error_description": "grant_type missing"})
            return
        _json(handler, 200, {"access_token": f"fresh-{next(_issued)}", "expires_in": 3600,
                             "token_type": "Bearer"})
        return
    auth = handler.headers.get("Authorization", "")
    token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
    if not token or token.startswith("expired"):
        _json(handler, 401, {"error": {"code": 401, "message": "Invalid Credentials",
                                       "errors": [{"reason": "authError"}]}},
              [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')])
        return
    bucket, _, rest = path[len(_STORAGE):].partition("/")
    if rest == "o":
        items = [{"kind": "storage#object", "bucket": bucket, "name": name, "size": "3"}
                 for name in ("a.txt", "b.txt")]
        _json(handler, 200, {"kind": "storage#objects", "items": items})
    elif not rest:
        _json(handler, 200, {"kind": "storage#bucket", "id": bucket, "name": bucket,
                             "location": "EU", "storageClass": "STANDARD", "token": token})
    else:
        _json(handler, 404, {"error": {"code": 404, "message": "Not Found"}})


def _json(handler: Any, status: int, document: object,
          headers: list[tuple[str, str]] | None = None) -> None:
    answer_json(handler, status, document, headers or (), "application/json; charset=UTF-8")
