"""Pure functions from snapshots to documents; no I/O, no clocks, no globals."""

from __future__ import annotations

import json
from collections.abc import Mapping

from .stats import RegistrySnapshot


def health_document(
    snapshot: RegistrySnapshot, settings: Mapping[str, object] | None = None
) -> dict[str, object]:
    """The ``/health`` body: this worker's pid, its pools and their totals."""
    document: dict[str, object] = {
        "status": "pass",
        "pid": snapshot.pid,
        "pools": [pool.as_dict() for pool in snapshot.pools],
        "totals": snapshot.totals(),
    }
    if settings is not None:
        document["settings"] = dict(settings)
    return document


def json_bytes(document: object) -> bytes:
    """Compact, stable JSON (sorted keys) as UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
