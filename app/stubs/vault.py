"""The few endpoints of HashiCorp Vault's HTTP API that ``tests/test_sdk_vault.py`` calls,
answered as Vault answers them (``Content-Type: application/json``, errors as
``{"errors": [...]}``, which hvac turns into its exception classes).

- ``GET /v1/secret/data/app``: a KV version 2 read of the secret ``app``; any other name
  under ``/v1/secret/data/`` is a 404 (hvac's ``InvalidPath``);
- ``GET`` or ``HEAD /v1/sys/health``: an initialized, unsealed, active node (no token
  needed, as in Vault);
- a secret read without ``X-Vault-Token``: 403 ``permission denied`` (hvac's ``Forbidden``).
"""

from __future__ import annotations

from typing import Any

from app.stubs import answer_json

SECRET = {"username": "app", "password": "s3cr3t"}


def handles(path: str) -> bool:
    return path == "/v1/sys/health" or (path.startswith("/v1/secret/data/")
                                        and len(path) > len("/v1/secret/data/"))


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Any) -> None:
    """Answer one Vault API request on ``handler`` (an ``app.upstream.Handler``)."""
    if path == "/v1/sys/health":
        _json(handler, 200, {"initialized": True, "sealed": False, "standby": False,
                             "performance_standby": False, "server_time_utc": 1700000000,
                             "version": "1.17.0", "cluster_name": "vault-cluster-test",
                             "cluster_id": "00000000-0000-0000-0000-000000000000"})
        return
    if not handler.headers.get("X-Vault-Token"):
        _json(handler, 403, {"errors": ["permission denied"]})
        return
    if path.rsplit("/", 1)[1] != "app" or handler.command != "GET":
        _json(handler, 404, {"errors": []})
        return
    _json(handler, 200, {
        "request_id": "11111111-2222-3333-4444-555555555555", "lease_id": "",
        "renewable": False, "lease_duration": 0, "wrap_info": None, "warnings": None,
        "auth": None, "mount_type": "kv",
        "data": {"data": SECRET,
                 "metadata": {"created_time": "2024-01-01T00:00:00.000000Z",
                              "custom_metadata": None, "deletion_time": "",
                              "destroyed": False, "version": 1}},
    })


def _json(handler: Any, status: int, document: object) -> None:
    answer_json(handler, status, document)
