"""Pure functions from snapshots to documents; no I/O, no clocks, no globals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .stats import RegistrySnapshot

if TYPE_CHECKING:
    from .inherited import Inherited
    from .probes import Check

HEALTH_JSON = "application/health+json"


def health_document(
    snapshot: RegistrySnapshot, settings: Mapping[str, object] | None = None,
    inherited: Iterable[Inherited] = (),
) -> dict[str, object]:
    """The ``/health`` body (``application/health+json``): this worker's pid, its pools,
    their totals, a ``connections`` check per pool that warns when every connection is
    in use, and the connections it inherited that no pool owns (a warning too)."""
    shared = [conn.as_dict() for conn in inherited]
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
    warn = any(c[0]["status"] == "warn" for c in checks.values()) or bool(shared)
    document: dict[str, object] = {
        "status": "warn" if warn else "pass",
        "pid": snapshot.pid,
        "pools": [pool.as_dict() for pool in snapshot.pools],
        "totals": snapshot.totals(),
        "checks": checks,
        "inherited_connections": shared,
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
