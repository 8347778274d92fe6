"""Pure functions from snapshots to documents; no I/O, no clocks, no globals."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .stats import RegistrySnapshot

if TYPE_CHECKING:
    from .inherited import Inherited
    from .probes import Check
    from .resilience import PolicySnapshot

HEALTH_JSON = "application/health+json"


def health_document(
    snapshot: RegistrySnapshot, settings: Mapping[str, object] | None = None,
    inherited: Iterable[Inherited] = (),
) -> dict[str, object]:
    """The ``/health`` body (``application/health+json``): this worker's pid, its pools,
    their totals, a ``connections`` check per pool that warns when every connection is
    in use, the connections it inherited that no pool owns (a warning too), and each
    origin's policy (:func:`policy_document`), with a ``breaker`` check per origin that
    warns while its circuit is not closed."""
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
    for policy in snapshot.policies:
        breaker = policy.breaker
        if breaker is None:
            continue
        rest = policy.origin.partition("://")[2]
        checks.setdefault(f"{rest}:breaker", []).append({
            "componentId": policy.origin,
            "componentType": "component",
            "observedValue": breaker.state,
            "status": "pass" if breaker.state == "closed" else "warn",
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
        "origins": [policy_document(p) for p in snapshot.policies],
    }
    if settings is not None:
        document["settings"] = dict(settings)
    return document


def policy_document(policy: PolicySnapshot) -> dict[str, object]:
    """One origin's policy in this worker: its breaker (state, seconds until it
    half-opens, why it last opened, recent failures), calls in flight and the bulkhead's
    limit (applied while degraded), refusals by reason, the retry budget, stalls, the
    stall detector's routes (samples, p99 seconds) and the addresses. ``null`` where a
    protection is turned off."""
    doc = policy.as_dict()
    doc["routes"] = {route: {"samples": n, "p99_s": p99}
                     for route, (n, p99) in policy.routes.items()}
    doc["addresses"] = list(doc["addresses"])  # type: ignore[call-overload]
    return doc


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
