"""Pure functions from snapshots to documents; no I/O, no clocks, no globals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .stats import RegistrySnapshot

if TYPE_CHECKING:
    from .probes import Check

HEALTH_JSON = "application/health+json"


def health_document(
    snapshot: RegistrySnapshot, settings: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The ``/health`` body (``application/health+json``): this worker's pid, its pools,
    their totals, and a ``connections`` check per pool that warns when every connection is
    in use."""
    checks = {
        f"{pool.host}:{pool.port}:connections": [{
            "componentId": f"{pool.scheme}://{pool.host}:{pool.port}",
            "componentType": "component",
            "observedValue": pool.in_use,
            "observedUnit": f"in use of {pool.maxsize}",
            "status": "warn" if pool.in_use >= pool.maxsize else "pass",
        }]
        for pool in snapshot.pools
    }
    warn = any(c[0]["status"] == "warn" for c in checks.values())
    document: dict[str, object] = {
        "status": "warn" if warn else "pass",
        "pid": snapshot.pid,
        "pools": [pool.as_dict() for pool in snapshot.pools],
        "totals": snapshot.totals(),
        "checks": checks,
    }
    if settings is not None:
        document["settings"] = dict(settings)
    return document


def readiness_document(checks: Iterable[Check], *, details: bool) -> dict[str, object]:
    """The ``/readyz`` body: pass unless a check failed; the checks only with ``details``."""
    checks = tuple(checks)
    document: dict[str, object] = {
        "status": "fail" if any(not c.ok for c in checks) else "pass"}
    if details and checks:
        document["checks"] = {"upstream:responseTime": [c.as_dict() for c in checks]}
    return document


def json_bytes(document: object) -> bytes:
    """Compact, stable JSON (sorted keys) as UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
