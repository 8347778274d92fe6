"""POOLCLIENT_LOOP_CALLS: a sync call on a running event loop's thread is warned about once
per call site (warn), refused before anything is sent (error), or let through (off); calls
from threads without a running loop are never touched. Counted at the upstream."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

import poolclient.registry as registry_module
from poolclient import Registry, Settings, configure, loopcheck
from poolclient.errors import LoopBlockingError, PoolClientError
from tests.helpers import ROOT, Upstream

THIS_FILE = "tests/test_loopcheck.py"


@pytest.fixture
def global_registry(upstream: Upstream) -> Iterator[object]:
    """configure(loop_calls=...) for one test; the process-global registry restored after."""
    saved = registry_module._default
    made: list[Registry] = []

    def make(mode: str) -> Registry:
        made.append(configure(Settings(ca_bundle=upstream.ca, loop_calls=mode)))
        return made[-1]

    loopcheck.forget_warnings()
    yield make
    for registry in made:
        registry.close()
    registry_module._default = saved
    loopcheck.forget_warnings()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "poolclient" and "running asyncio event loop" in r.getMessage()]


def test_warn_once_per_call_site_naming_the_site(global_registry, upstream, caplog):
    """Three calls from one line and one from another, all in an async def on the loop:
    two WARNINGs, each naming this file, its line and the function, plus the async way;
    all four calls reach the upstream."""
    caplog.set_level(logging.WARNING, logger="poolclient")
    registry = global_registry("warn")

    async def handler() -> list[int]:
        lines = []
        for _ in range(3):
            lines.append(sys._getframe().f_lineno + 1)
            registry.request("GET", upstream.url + "/a")
        lines.append(sys._getframe().f_lineno + 1)
        registry.request("GET", upstream.url + "/b")
        return lines

    lines = asyncio.run(handler())
    found = warnings_of(caplog)
    assert len(found) == 2, found
    assert f"{THIS_FILE}:{lines[0]} in handler" in found[0]
    assert f"{THIS_FILE}:{lines[3]} in handler" in found[1]
    for message in found:
        assert f"https://127.0.0.1:{upstream.port}" in message
        assert "registry.httpx2_async_transport()" in message
        assert "asyncio.to_thread" in message
    assert upstream.stats()["requests"] == 4


def test_site_is_the_callers_line_through_requests(global_registry, upstream, caplog):
    """Through a requests Session on the pools the site named is still the app's line,
    not a frame of requests or poolclient."""
    caplog.set_level(logging.WARNING, logger="poolclient")
    registry = global_registry("warn")

    async def view() -> int:
        with registry.session() as s:
            line = sys._getframe().f_lineno + 1
            s.get(upstream.url + "/c", verify=upstream.ca)
        return line

    line = asyncio.run(view())
    (message,) = warnings_of(caplog)
    assert f"{THIS_FILE}:{line} in view" in message


def test_error_raises_before_anything_is_sent(global_registry, upstream, caplog):
    """error: LoopBlockingError (a PoolClientError) naming the site and origin; the
    upstream saw neither a connection nor a request; no warning is logged."""
    registry = global_registry("error")

    async def handler() -> int:
        line = sys._getframe().f_lineno + 2
        with pytest.raises(LoopBlockingError) as info:
            registry.request("GET", upstream.url + "/a")
        assert isinstance(info.value, PoolClientError)
        assert info.value.site == f"{THIS_FILE}:{line} in handler"
        assert info.value.origin == f"https://127.0.0.1:{upstream.port}"
        assert "POOLCLIENT_LOOP_CALLS=error" in str(info.value)
        return line

    asyncio.run(handler())
    seen = upstream.stats()
    assert seen["requests"] == 0 and seen["connections"] == []
    assert warnings_of(caplog) == []


def test_off_lets_the_call_through_silently(global_registry, upstream, caplog):
    caplog.set_level(logging.WARNING, logger="poolclient")
    registry = global_registry("off")

    async def handler() -> int:
        return registry.request("GET", upstream.url + "/a").status

    assert asyncio.run(handler()) == 200
    assert warnings_of(caplog) == []
    assert upstream.stats()["requests"] == 1


def test_threads_without_a_loop_are_never_touched(global_registry, upstream, caplog):
    """Even with error: asyncio.to_thread from the loop, and a plain thread while another
    thread runs a loop, both call through (Starlette's def endpoints are this case)."""
    caplog.set_level(logging.WARNING, logger="poolclient")
    registry = global_registry("error")
    statuses: list[int] = []
    loop_running = threading.Event()
    stop = threading.Event()

    async def spin() -> None:
        loop_running.set()
        while not stop.is_set():
            await asyncio.sleep(0.01)

    other = threading.Thread(target=asyncio.run, args=(spin(),))
    other.start()
    try:
        assert loop_running.wait(10)
        statuses.append(registry.request("GET", upstream.url + "/plain").status)
    finally:
        stop.set()
        other.join()

    async def handler() -> int:
        r = await asyncio.to_thread(registry.request, "GET", upstream.url + "/thread")
        return r.status

    statuses.append(asyncio.run(handler()))
    assert statuses == [200, 200]
    assert warnings_of(caplog) == []
    assert upstream.stats()["requests"] == 2


def test_a_pools_own_setting_wins_over_the_global_one(global_registry):
    """mode_for reads the pool's loop_calls first (set by its registry), then the
    process-global registry's."""
    global_registry("off")
    assert loopcheck.mode_for(SimpleNamespace(loop_calls="error")) == "error"
    assert loopcheck.mode_for(SimpleNamespace()) == "off"


def test_sdk_frames_are_skipped_and_the_advice_names_its_async_client():
    """A call made through an SDK's own frames (here a function compiled as module
    openai._base_client) is attributed to the caller, and the advice names AsyncOpenAI."""
    namespace = {"__name__": "openai._base_client"}
    exec(compile("def create(inner):\n    return inner()\n", "openai/_base_client.py",
                 "exec"), namespace)

    def site() -> tuple[str, set[str]]:  # read while the frames are live, as the pools do
        frame, packages = loopcheck.call_site(sys._getframe(1))
        return loopcheck.describe(frame), packages

    def caller() -> tuple[str, set[str], int]:
        line = sys._getframe().f_lineno + 1
        described, packages = namespace["create"](site)
        return described, packages, line

    described, packages, line = caller()
    assert described == f"{THIS_FILE}:{line} in caller"
    assert packages == {"openai"}
    assert "openai.AsyncOpenAI(http_client=httpx2.AsyncClient(" in loopcheck.advice(packages)


def test_setting_is_validated_like_the_others():
    assert Settings.from_env({"POOLCLIENT_LOOP_CALLS": " Error "}).loop_calls == "error"
    with pytest.raises(ValueError, match="POOLCLIENT_LOOP_CALLS='sometimes'.*warn, error or off"):
        Settings.from_env({"POOLCLIENT_LOOP_CALLS": "sometimes"})


def test_the_check_imports_no_asyncio():
    """Without asyncio imported, check() returns without importing it (the sync path of a
    WSGI worker stays asyncio-free)."""
    code = ("import sys, poolclient.loopcheck as c; c.check(object()); "
            "print('asyncio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
