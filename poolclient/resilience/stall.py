"""What "no progress for too long" means for one origin: judged against its own calls.

A stall is a call in flight that has made no progress (no byte sent or received, no status
line) for longer than its route's calls usually wait at most. Each clean attempt leaves one
sample, its longest wait without progress (for a plain call, the time to its status line;
for a stream, the longest gap between chunks). The limit for a route is
``factor`` x the 99th percentile of its last :data:`SAMPLES` samples, at least ``floor``,
at most ``cap`` x the call's read timeout. So an LLM route whose calls take 30 s is
allowed 2 minutes (within the cap), and an API that answers in 5 ms is allowed the floor.

Per route (method and path shape, :func:`route_key`), not per origin: one host often serves
quick calls and slow ones (embeddings and completions), and a percentile over the mix
would make the rare slow route's normal calls look stalled. A route with fewer than
:data:`MIN_SAMPLES` samples is not judged: without a history, only the read timeout applies.
"""

from __future__ import annotations

import math

from .settings import PolicySettings

SAMPLES = 100
MIN_SAMPLES = 20
MAX_ROUTES = 64  # per origin; the route first seen is forgotten first


def route_key(method: str, path: str) -> str:
    """``"POST /v1/chat/completions"``: the method and the path's first four segments,
    without the query, those that look like ids as ``*`` (all digits, or a digit in more
    than three characters: ``42`` and ``thread_ab12`` are ids, ``v1`` is not)."""
    path = path.split("?", 1)[0]
    segments = [
        "*" if segment.isdigit() or (len(segment) > 3 and any(c.isdigit() for c in segment))
        else segment
        for segment in path.split("/")[1:5]
    ]
    return f"{method.upper()} /{'/'.join(segments)}"


class RouteLatency:
    """The last :data:`SAMPLES` longest waits of one route's clean attempts."""

    __slots__ = ("_samples", "_next", "_p99")

    def __init__(self) -> None:
        self._samples: list[float] = []
        self._next = 0
        self._p99: float | None = None  # cached until the next sample

    def add(self, seconds: float) -> None:
        if len(self._samples) < SAMPLES:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % SAMPLES
        self._p99 = None

    def __len__(self) -> int:
        return len(self._samples)

    def p99(self) -> float | None:
        """The 99th percentile (nearest rank), or ``None`` with too few samples to judge."""
        if len(self._samples) < MIN_SAMPLES:
            return None
        if self._p99 is None:
            ordered = sorted(self._samples)
            self._p99 = ordered[math.ceil(0.99 * len(ordered)) - 1]
        return self._p99


class Latencies:
    """An origin's routes and their samples; no lock, its owner holds one."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        # A plain dict, oldest first: cheaper on every call than an LRU order.
        self._routes: dict[str, RouteLatency] = {}

    def add(self, route: str, seconds: float) -> None:
        found = self._routes.get(route)
        if found is None:
            if len(self._routes) >= MAX_ROUTES:
                del self._routes[next(iter(self._routes))]
            found = self._routes[route] = RouteLatency()
        found.add(seconds)

    def limit(self, route: str, read_timeout: float | None) -> float | None:
        """Seconds without progress that make a call on ``route`` a stall; ``None`` when it
        cannot be judged (too few samples, or a read timeout too short to leave room
        under its cap for the floor)."""
        found = self._routes.get(route)
        p99 = None if found is None else found.p99()
        if p99 is None:
            return None
        s = self.settings
        limit = max(s.stall_floor, s.stall_factor * p99)
        if read_timeout is not None:
            cap = s.stall_cap * read_timeout
            if cap < s.stall_floor:
                return None
            limit = min(limit, cap)
        return limit

    def routes(self) -> dict[str, tuple[int, float | None]]:
        """Each route's sample count and 99th percentile (for /health)."""
        return {route: (len(lat), lat.p99()) for route, lat in self._routes.items()}
