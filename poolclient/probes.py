"""Readiness: the upstream checks behind ``/readyz``, run through the pools and cached.

``/livez`` needs nothing here: it answers without any I/O, so a slow or dead upstream can
never get a worker restarted (Kubernetes restarts on liveness; an upstream shared by every
pod would restart them all). ``/readyz`` runs the GETs of ``POOLCLIENT_READY_URLS`` at most
once per ``POOLCLIENT_READY_CACHE`` seconds per process; concurrent probes wait for the one
that is checking instead of checking again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from urllib3.exceptions import HTTPError
from urllib3.util import Retry

from .errors import PoolClientError
from .redact import redact

if TYPE_CHECKING:
    from .registry import Registry


@dataclass(frozen=True)
class Check:
    """One upstream check, in the ``application/health+json`` check-object shape."""

    url: str
    ok: bool
    milliseconds: float
    at: str
    output: str = ""

    def as_dict(self) -> dict[str, object]:
        document: dict[str, object] = {
            "componentId": redact(self.url),
            "componentType": "component",
            "observedValue": round(self.milliseconds, 1),
            "observedUnit": "ms",
            "status": "pass" if self.ok else "fail",
            "time": self.at,
        }
        if self.output:
            document["output"] = self.output
        return document


class Readiness:
    """Cached upstream checks for one process (built lazily with its pools)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._checks: tuple[Check, ...] = ()

    def checks(self, registry: Registry) -> tuple[Check, ...]:
        """The checks, run again when the cached ones are older than the cache period.

        One round takes at most ``POOLCLIENT_READY_TIMEOUT`` in all, and a probe that
        finds another one checking waits at most that long, then answers the last result:
        probes can never pile up on a slow upstream and hold every worker thread.
        """
        settings = registry.settings
        urls = [u for u in settings.ready_urls.split(",") if u]
        if not urls:
            return ()
        if not self._lock.acquire(timeout=settings.ready_timeout):
            return self._checks
        try:
            if time.monotonic() - self._checked_at >= settings.ready_cache:
                end = time.monotonic() + settings.ready_timeout
                self._checks = tuple(_check(registry, url, end) for url in urls)
                self._checked_at = time.monotonic()
            return self._checks
        finally:
            self._lock.release()


def _check(registry: Registry, url: str, end: float) -> Check:
    started = time.monotonic()
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if end - started <= 0:
        return Check(url, False, 0.0, at, "not checked: POOLCLIENT_READY_TIMEOUT was spent "
                                          "on the checks before it")
    try:
        response = registry.request("GET", url, deadline=end - started,
                                    retries=Retry(total=0, redirect=False, read=False))
        ok, output = response.status < 500, ("" if response.status < 500
                                            else f"answered {response.status}")
    except (HTTPError, OSError, PoolClientError) as exc:
        ok, output = False, redact(f"{type(exc).__name__}: {exc}")
    return Check(url, ok, (time.monotonic() - started) * 1000, at, output)
