"""Per-request upstream timing: the calls one WSGI request made, for a Server-Timing header.

The middleware opens a collection around the application; every request attempt the pools
make in that thread (or greenlet) adds its duration. Context variables keep concurrent
requests apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_calls: ContextVar[list[float] | None] = ContextVar("poolclient_calls", default=None)


@contextmanager
def collect() -> Iterator[list[float]]:
    """The durations (seconds) of the upstream attempts made inside the block."""
    calls: list[float] = []
    token = _calls.set(calls)
    try:
        yield calls
    finally:
        _calls.reset(token)


def record(seconds: float) -> None:
    """Add one attempt to the current collection, if any."""
    calls = _calls.get()
    if calls is not None:
        calls.append(seconds)


def server_timing(calls: list[float]) -> str:
    """The Server-Timing value: total upstream time in ms and how many attempts."""
    n = len(calls)
    return f'upstream;dur={sum(calls) * 1000:.1f};desc="{n} call{"" if n == 1 else "s"}"'
