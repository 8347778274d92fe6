"""Real forks against the real TLS upstream: a child never touches what its parent owns.

The upstream is the witness. Every request carries ``X-Client-Pid``, so its record shows
which process wrote on which TCP connection; a connection written by two processes, or a
parent connection the child shut down, shows up there (and in the parent's next request).
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

import poolclient.registry as registry_module
from poolclient import Registry
from poolclient.gunicorn import worker_exit
from tests.helpers import Upstream, wait_for

# Python 3.12+ warns when forking a process that has threads; these tests fork on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")

FORKS = ["os.fork", "multiprocessing"]


def get(registry: Registry, upstream: Upstream, path: str = "/") -> dict[str, Any]:
    """GET ``path`` through ``registry`` as this process; the upstream's JSON answer."""
    r = registry.request("GET", upstream.url + path, headers={"X-Client-Pid": str(os.getpid())})
    assert r.status == 200, r.data
    return json.loads(r.data)


def connections(upstream: Upstream) -> dict[int, dict[str, Any]]:
    """The upstream's connection record, by connection id."""
    return {c["id"]: c for c in upstream.stats()["connections"]}


@dataclass
class Child:
    """How a forked child ended: its pid, exit code, and what its body returned or raised."""

    pid: int
    exitcode: int | None
    result: Any = None
    error: str | None = None


def _child_main(body: Callable[[], Any], write_fd: int) -> int:
    # Runs in the child: report through the pipe, never raise into pytest's machinery.
    code = 1
    try:
        out = {"result": body()}
        code = 0
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        out = {"error": "".join(traceback.format_exception(exc))[-8000:]}
    try:
        os.write(write_fd, json.dumps(out).encode()[:60000])
    except BaseException:  # noqa: BLE001 - the exit code still tells the parent
        code = 1
    return code


def run_child(body: Callable[[], Any], how: str = "os.fork", timeout: float = 20.0) -> Child:
    """Run ``body`` in a forked child (``os.fork`` or multiprocessing 'fork'); wait for it."""
    read_fd, write_fd = os.pipe()
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            os._exit(_child_main(body, write_fd))
        os.close(write_fd)
        status: list[int] = []

        def reaped() -> bool:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status.append(os.waitstatus_to_exitcode(raw))
            return bool(done)

        try:
            wait_for(reaped, timeout, f"child {pid} to exit")
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            raise
        exitcode: int | None = status[0]
    else:
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=lambda: os._exit(_child_main(body, write_fd)))
        proc.start()
        os.close(write_fd)
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()
            os.close(read_fd)
            raise AssertionError(f"child {proc.pid} did not exit within {timeout} s")
        assert proc.pid is not None
        pid, exitcode = proc.pid, proc.exitcode
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    out = json.loads(data) if data else {}
    return Child(pid=pid, exitcode=exitcode, result=out.get("result"), error=out.get("error"))


def assert_ok(child: Child) -> Any:
    """The child exited 0; its body's result."""
    assert child.exitcode == 0, f"child exited {child.exitcode}:\n{child.error}"
    return child.result


@pytest.mark.parametrize("how", FORKS)
def test_child_uses_its_own_connection_and_parent_keeps_its_own(registry, upstream, how):
    """A child's requests go on a new connection written only by it; the parent's connection
    A is written only by the parent and is reused after the child exits."""
    parent = str(os.getpid())
    conn_a = get(registry, upstream)["connection"]

    def child() -> dict[str, Any]:
        ids = [get(registry, upstream)["connection"] for _ in range(3)]
        return {"ids": ids, "pid": os.getpid(), "totals": registry.stats().totals()}

    out = assert_ok(run_child(child, how))
    child_ids = set(out["ids"])
    assert len(child_ids) == 1, "the child's three requests did not share one connection"
    (conn_b,) = child_ids
    assert conn_b != conn_a
    assert out["totals"]["connections_opened"] == 1
    assert out["totals"]["requests"] == 3

    seen = connections(upstream)
    assert seen[conn_a]["pids"] == [parent]
    assert seen[conn_b]["pids"] == [str(out["pid"])]
    assert seen[conn_b]["requests"] == 3

    # The child never used, shut down or unwrapped A: the parent reuses it, and succeeds.
    assert get(registry, upstream)["connection"] == conn_a
    seen = connections(upstream)
    assert set(seen) == {conn_a, conn_b}
    assert seen[conn_a]["requests"] == 2
    assert seen[conn_a]["pids"] == [parent]
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests, pool.reused) == (1, 2, 1)
    # The child's own connection died with it.
    wait_for(lambda: not connections(upstream)[conn_b]["open"], 10, "the child's connection")


@pytest.mark.parametrize("how", FORKS)
def test_child_that_never_uses_the_registry_leaves_parent_connection_open(
    registry, upstream, how
):
    """A child that garbage-collects and calls close() leaves the parent's connection open on
    the server and reusable by the parent; the inherited pools are buried, not finalized."""
    conn_a = get(registry, upstream)["connection"]
    inherited = weakref.ref(registry._state)  # type: ignore[arg-type]

    def child() -> dict[str, Any]:
        gc.collect()
        closed = registry.close()
        gc.collect()
        buried = inherited()
        # Buried, never finalized in the child; its copies of idle descriptors released.
        fds = [c.sock.fileno() for p in buried.live_pools() for c in p.pool.queue if c]
        return {"closed": closed, "buried": buried is not None, "fds": fds}

    out = assert_ok(run_child(child, how))
    assert out == {"closed": False, "buried": True, "fds": [-1]}

    seen = connections(upstream)
    assert list(seen) == [conn_a]
    assert seen[conn_a]["open"] is True
    assert get(registry, upstream)["connection"] == conn_a
    seen = connections(upstream)
    assert list(seen) == [conn_a]
    assert seen[conn_a]["requests"] == 2
    assert seen[conn_a]["open"] is True


def test_fork_while_another_thread_holds_the_registry_lock(registry, upstream):
    """A child forked while a thread holds registry._lock gets a fresh lock from the at-fork
    handler, makes its requests and exits 0 in time."""
    conn_a = get(registry, upstream)["connection"]
    held_lock = registry._lock
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with registry._lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert holding.wait(5)
        assert held_lock.locked()

        def child() -> dict[str, Any]:
            fresh = registry._lock is not held_lock and not registry._lock.locked()
            return {"fresh_lock": fresh, "conn": get(registry, upstream)["connection"]}

        out = assert_ok(run_child(child, "os.fork", timeout=15))
    finally:
        release.set()
        holder.join(5)
    assert not holder.is_alive()
    assert out["fresh_lock"] is True
    assert out["conn"] != conn_a
    assert get(registry, upstream)["connection"] == conn_a


@pytest.mark.parametrize("how", FORKS)
def test_pid_check_rebuilds_pools_when_the_at_fork_handler_was_skipped(registry, upstream, how):
    """With the parent's state and lock put back (as after a fork that ran no at-fork
    handler), the child's pid check builds new pools and never uses the inherited ones."""
    parent = str(os.getpid())
    conn_a = get(registry, upstream)["connection"]
    inherited_state = registry._state
    inherited_lock = registry._lock
    assert inherited_state is not None
    (inherited_pool,) = inherited_state.live_pools()

    def child() -> dict[str, Any]:
        handler_ran = registry._state is None
        registry._state, registry._lock = inherited_state, inherited_lock  # "skipped" handler
        conn = get(registry, upstream)["connection"]
        state = registry._state
        assert state is not None
        return {
            "handler_ran": handler_ran,
            "conn": conn,
            "new_state": state is not inherited_state and state.pid == os.getpid(),
            "inherited_requests": inherited_pool.stats.snapshot("", "", 0).requests,
            "inherited_pool_open": inherited_pool.pool is not None,
            "pid": os.getpid(),
        }

    out = assert_ok(run_child(child, how))
    assert out["handler_ran"] is True
    assert out["new_state"] is True
    assert out["conn"] != conn_a
    assert out["inherited_requests"] == 1  # only the parent's request, none of the child's
    assert out["inherited_pool_open"] is True

    seen = connections(upstream)
    assert seen[conn_a]["pids"] == [parent]
    assert seen[out["conn"]]["pids"] == [str(out["pid"])]
    assert get(registry, upstream)["connection"] == conn_a
    assert connections(upstream)[conn_a]["requests"] == 2


def test_state_of_another_pid_is_neither_used_nor_counted_nor_closed(registry, upstream):
    """In one process, a state stamped with another pid is ignored by stats() and close()
    and replaced by new pools on the next request."""
    conn_a = get(registry, upstream)["connection"]
    foreign = registry._state
    assert foreign is not None
    (foreign_pool,) = foreign.live_pools()
    foreign.pid = os.getpid() + 1_000_000  # what a fork without the handler looks like

    assert registry.stats().pools == ()
    assert registry.close() is False
    assert foreign_pool.pool is not None, "close() closed pools of another process"

    conn = get(registry, upstream)["connection"]
    assert registry._state is not foreign
    assert conn != conn_a
    (pool,) = registry.stats().pools
    assert (pool.connections_opened, pool.requests) == (1, 1)


@pytest.mark.parametrize("how", FORKS)
def test_close_in_child_leaves_parent_pools_alone(registry, upstream, how):
    """registry.close() in a child returns False, with or without the at-fork handler, and
    the parent's connection is still reused afterwards."""
    conn_a = get(registry, upstream)["connection"]
    inherited_state = registry._state
    assert inherited_state is not None
    (inherited_pool,) = inherited_state.live_pools()

    def child() -> dict[str, Any]:
        after_handler = registry.close()
        registry._state = inherited_state  # as if the handler had not run
        without_handler = registry.close()
        return {
            "after_handler": after_handler,
            "without_handler": without_handler,
            "inherited_pool_open": inherited_pool.pool is not None,
            "state_kept": registry._state is inherited_state,
        }

    out = assert_ok(run_child(child, how))
    assert out == {"after_handler": False, "without_handler": False,
                   "inherited_pool_open": True, "state_kept": True}
    assert registry._state is inherited_state
    assert get(registry, upstream)["connection"] == conn_a
    seen = connections(upstream)
    assert list(seen) == [conn_a]
    assert seen[conn_a]["open"] is True


def test_session_kept_across_fork_uses_the_childs_pools(registry, upstream):
    """A requests Session made in the parent and used in the child goes through the child's
    own pools: a new connection written only by the child."""
    session = registry.session()
    hdr = {"X-Client-Pid": str(os.getpid())}
    conn_a = session.get(upstream.url + "/", headers=hdr).json()["connection"]

    def child() -> dict[str, Any]:
        r = session.get(upstream.url + "/", headers={"X-Client-Pid": str(os.getpid())})
        return {"conn": r.json()["connection"], "pid": os.getpid()}

    out = assert_ok(run_child(child))
    assert out["conn"] != conn_a
    seen = connections(upstream)
    assert seen[out["conn"]]["pids"] == [str(out["pid"])]
    assert seen[conn_a]["pids"] == [hdr["X-Client-Pid"]]
    assert session.get(upstream.url + "/", headers=hdr).json()["connection"] == conn_a
    session.close()


def test_gunicorn_worker_exit_closes_only_in_the_owning_process(registry, upstream, monkeypatch):
    """worker_exit closes nothing when worker.pid is another process (gunicorn's master) and
    closes the pools when it is this process."""
    monkeypatch.setattr(registry_module, "_default", registry)
    conn_a = get(registry, upstream)["connection"]
    server = SimpleNamespace(log=None)

    worker_exit(server, SimpleNamespace(pid=os.getpid() + 1_000_000))
    assert len(registry.stats().pools) == 1
    assert get(registry, upstream)["connection"] == conn_a
    assert connections(upstream)[conn_a]["open"] is True

    worker_exit(server, SimpleNamespace(pid=os.getpid()))
    assert registry.stats().pools == ()
    assert registry._state is None
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "the closed pool's connection to end")


def test_fork_while_another_thread_holds_a_pool_queue_lock(registry, upstream):
    """A child forked while another thread holds an idle pool's queue lock does not hang in
    the at-fork handler (inherited pools are buried, never drained) and can make requests."""
    get(registry, upstream)
    (pool,) = registry._state.live_pools()  # type: ignore[union-attr]
    queue_lock = pool.pool.mutex
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with queue_lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(10)
    try:
        out = assert_ok(run_child(lambda: get(registry, upstream), "os.fork"))
    finally:
        release.set()
        holder.join(10)
    assert out["path"] == "/"
