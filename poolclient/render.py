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
    # One entry per pool; an origin may have a sync pool and an async one per event loop.
    checks: dict[str, list[dict[str, object]]] = {}
    for pool in snapshot.pools:
        checks.setdefault(f"{pool.host}:{pool.port}:connections", []).append({
            "componentId": f"{pool.scheme}://{pool.host}:{pool.port}",
            "componentType": "component",
            "kind": pool.kind,
            "observedValue": pool.in_use,
            "observedUnit": f"in use of {pool.maxsize}",
            "status": "warn" if pool.in_use >= pool.maxsize else "pass",
        })
    warn = any(c["status"] == "warn" for entries in checks.values() for c in entries)
    warn = warn or bool(shared)
    document: dict[str, object] = {
        "status": "warn" if warn else "pass",
        "pid": snapshot.pid,
        "pools": [pool.as_dict() for pool in snapshot.pools],
        "totals": snapshot.totals(),
        "checks": checks,
        "inherited_connections": shared,
        "abandoned_connections": snapshot.abandoned,
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
