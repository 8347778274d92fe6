"""Sync calls made on a running asyncio event loop's thread: named, or refused.

An ASGI worker runs every request of the process on one event loop; under gunicorn's
``asgi`` worker its heartbeat runs there too. A sync call made on that thread (``.request()``,
a ``.session()``, a sync SDK client inside an ``async def`` handler) stops all of them until
it returns, and a slow upstream gets the worker killed after ``--timeout``. The sync pools
call :func:`check` once per attempt; what it does is ``POOLCLIENT_LOOP_CALLS``:

- ``warn`` (default): a WARNING on the ``poolclient`` logger, once per call site, naming
  the site (the first frame outside poolclient, the HTTP packages and the SDKs: the line of
  the app that made the call) and the async way to make it;
- ``error``: :class:`~poolclient.errors.LoopBlockingError` before anything is sent (CI);
- ``off``: nothing.

A thread without a running loop (Starlette and FastAPI run plain ``def`` endpoints in a
thread pool; ``asyncio.to_thread``; a gthread worker) is never affected.

The check is on every request's path, so its common case is two lookups: asyncio not
imported at all, or asyncio's C ``_get_running_loop()`` answering ``None``. This module
imports asyncio never (it only reads ``sys.modules``) and urllib3 never.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .errors import LoopBlockingError

log = logging.getLogger("poolclient")

# Packages whose frames are the machinery of a call, not the app's: the site named is the
# first frame outside them. SDKs wrap their calls in several layers of their own (openai's
# retry loop, botocore's event system); the user knows the line that called the SDK.
INTERNAL = frozenset({
    "poolclient", "urllib3", "requests", "requests_toolbelt", "httpx", "httpx2", "httpcore",
    "httpcore2", "openai", "anthropic", "botocore", "boto3", "s3transfer", "stripe", "twilio",
    "google", "googleapiclient", "google_auth_httplib2", "kubernetes", "elasticsearch",
    "elastic_transport", "opensearchpy", "hvac", "cloudant", "ibmcloudant",
    "ibm_cloud_sdk_core", "tenacity", "backoff", "functools", "contextlib",
})
_ASYNC_SDKS = {"openai": "openai.AsyncOpenAI", "anthropic": "anthropic.AsyncAnthropic"}

_running_loop: Callable[[], object] | None = None  # asyncio's, once asyncio is imported
_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def check(pool: object) -> None:
    """Called by the sync pools before each attempt: act on a running loop in this thread."""
    running = _running_loop
    if running is None:
        asyncio = sys.modules.get("asyncio")
        if asyncio is None:  # nothing imported asyncio: no loop can be running
            return
        running = _remember(asyncio)
    if running() is not None:
        _on_loop(pool)


def _remember(asyncio: Any) -> Callable[[], object]:
    global _running_loop
    _running_loop = asyncio._get_running_loop  # the C accelerator's: a thread-state read
    return _running_loop


def mode_for(pool: object) -> str:
    """``POOLCLIENT_LOOP_CALLS`` for ``pool``: its registry's, as the registry set it on the
    pool; else the process-global registry's; else the environment's."""
    mode = getattr(pool, "loop_calls", None)
    if isinstance(mode, str):
        return mode
    registry = sys.modules.get("poolclient.registry")
    default = getattr(registry, "_default", None)
    if default is not None:
        return str(default.settings.loop_calls)
    from .config import Settings

    return Settings.from_env().loop_calls


def _on_loop(pool: object) -> None:
    mode = mode_for(pool)
    if mode == "off":
        return
    frame, packages = call_site(sys._getframe(2))
    site = describe(frame)
    origin = _origin(pool)
    if mode == "error":
        raise LoopBlockingError(site, origin)
    key = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("?", 0)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "poolclient: a blocking HTTP call to %s on the thread of a running asyncio event "
        "loop, at %s: every request of this worker (and gunicorn's heartbeat under -k asgi) "
        "waits until it returns. %s (warned once per call site; POOLCLIENT_LOOP_CALLS=error "
        "makes it an error, off silences it)", origin, site, advice(packages))


def call_site(frame: FrameType | None) -> tuple[FrameType | None, set[str]]:
    """The first frame from ``frame`` outwards whose module is not in :data:`INTERNAL`, and
    the internal packages passed on the way (the outermost frame if all are internal)."""
    passed: set[str] = set()
    last = frame
    while frame is not None:
        top = str(frame.f_globals.get("__name__", "")).partition(".")[0]
        if top not in INTERNAL:
            return frame, passed
        passed.add(top)
        last, frame = frame, frame.f_back
    return last, passed


def describe(frame: FrameType | None) -> str:
    """``path:line in function``, the path relative to the working directory when under it."""
    if frame is None:
        return "an unknown site"
    path = frame.f_code.co_filename
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        relative = path
    if not relative.startswith(os.pardir):
        path = relative
    return f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"


def advice(packages: set[str]) -> str:
    """The async way to make a call that went through ``packages``."""
    client = "httpx2.AsyncClient(transport=registry.httpx2_async_transport())"
    sdks = [name for pkg, name in _ASYNC_SDKS.items() if pkg in packages]
    if sdks:
        client = f"{' / '.join(sdks)}(http_client={client})"
    return (f"Make it async with {client}, or run it in a thread: await "
            "asyncio.to_thread(...), or a plain def endpoint (Starlette and FastAPI run "
            "those in a thread pool).")


def _origin(pool: object) -> str:
    scheme = getattr(pool, "scheme", None) or "http"
    host = getattr(pool, "host", None) or "?"
    port = getattr(pool, "port", None)
    host = f"[{host}]" if ":" in str(host) else str(host)
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def forget_warnings() -> None:
    """Warn again at sites already warned about (tests)."""
    with _warned_lock:
        _warned.clear()
