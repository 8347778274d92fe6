"""Per-request upstream timing: the calls one WSGI request made, for a Server-Timing header.

The middleware starts a collection in the context the application (and the iteration of
its response) runs in; every request attempt the pools make there adds its duration.
Context variables keep concurrent requests, threads and greenlets apart.
"""

from __future__ import annotations

from contextvars import ContextVar

_calls: ContextVar[list[float] | None] = ContextVar("poolclient_calls", default=None)


def start() -> list[float]:
    """Begin a collection in the current context (for a caller that runs several steps in
    one ``contextvars.Context``); the list it returns fills as attempts end."""
    calls: list[float] = []
    _calls.set(calls)
    return calls


def record(seconds: float) -> None:
    """Add one attempt to the current collection, if any."""
    calls = _calls.get()
    if calls is not None:
        calls.append(seconds)


def server_timing(calls: list[float]) -> str:
    """The Server-Timing value: total upstream time in ms and how many attempts."""
    n = len(calls)
    return f'upstream;dur={sum(calls) * 1000:.1f};desc="{n} call{"" if n == 1 else "s"}"'
