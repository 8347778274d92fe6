"""pytest plugin for ``make peer``: one JSON line per test phase, to ``$PEER_RECORD``.

Loaded with ``-p record`` into urllib3's and requests' own test runs (``tests/peer/run.py``
puts this folder on ``PYTHONPATH``). Lines are appended as the run goes, so a run that dies
half-way still leaves what it did. Each line: ``nodeid``, ``when`` (setup, call, teardown,
or collect), ``outcome`` (passed, failed, skipped, xfailed, xpassed) and, for a failure, the
first lines of its message (the assertion or the exception).
"""

from __future__ import annotations

import json
import os
from typing import Any

_path = os.environ.get("PEER_RECORD")
_out: Any = open(_path, "a", encoding="utf-8") if _path else None  # noqa: SIM115


def _message(report: Any) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        text = f"{crash.message} ({os.path.basename(crash.path)}:{crash.lineno})"
    elif isinstance(longrepr, tuple):  # a skip: (path, lineno, reason)
        text = str(longrepr[2])
    else:
        text = str(longrepr)
    return text[:2000]


def _write(nodeid: str, when: str, outcome: str, message: str) -> None:
    if _out is None or _out.closed:
        return
    _out.write(json.dumps({"nodeid": nodeid, "when": when, "outcome": outcome,
                           "message": message}) + "\n")
    _out.flush()


def pytest_runtest_logreport(report: Any) -> None:
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    _write(report.nodeid, report.when, outcome,
           _message(report) if outcome in ("failed", "skipped") else "")


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        _write(report.nodeid, "collect", "failed", _message(report))


def pytest_unconfigure(config: Any) -> None:
    if _out is not None:
        _out.close()
