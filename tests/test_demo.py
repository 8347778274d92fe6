"""``make run`` (``python -m app.demo``): the example service, stopped by a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, Upstream, free_port, wait_for

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

WORKERS = 2


def _answers(port: int) -> bool:
    """Whether gunicorn on ``port`` answers GET /livez with 200 and then closes the
    connection. Connection: close, so that no idle keep-alive connection holds up a graceful
    stop; read to the end, because the worker's main thread closes it only once back in its
    loop: until then it may still be in ``ThreadPoolExecutor.submit()`` (starting the
    thread that answered), holding the pool's lock, and gthread's SIGINT and SIGQUIT handler
    (``tpool.shutdown()``, which takes that lock) would deadlock there."""
    request = b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(request)
            while chunk := s.recv(65536):
                answer += chunk
    except OSError:  # refused, reset or timed out
        return False
    return answer.startswith(b"HTTP/1.1 200 ")


def _caught(pid: int) -> set[int]:
    """The signals process ``pid`` has a handler for, from SigCgt in /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        (mask,) = (int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _workers_booted(master: int) -> bool:
    """Whether gunicorn's ``master`` has all its workers, each with its own signal handlers.

    /livez answers as soon as one worker is up, while the master may still be forking the
    next. A new worker runs the master's handlers, inherited with the fork, until
    ``Worker.init_signals()``: they only queue the signal in the worker's copy of the
    master's queue, so a SIGINT or SIGQUIT it gets then is lost, and the master's stop
    waits graceful_timeout (30 s) for it. A worker's own handlers catch SIGINT and SIGQUIT
    but not SIGHUP, which the master's catch."""
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            pids = [int(pid) for pid in f.read().split()]
        caught = [_caught(pid) for pid in pids]
    except FileNotFoundError:
        return False  # a worker gone since the listing: look again
    return len(pids) == WORKERS and all(
        {signal.SIGINT, signal.SIGQUIT} <= c and signal.SIGHUP not in c for c in caught)


@pytest.mark.parametrize(("to", "signum"), [("demo", signal.SIGINT), ("demo", signal.SIGTERM),
                                            ("group", signal.SIGINT)])
def test_a_signal_stops_gunicorn_and_the_demo(upstream: Upstream, to: str, signum: int):
    """Ctrl-C in a terminal sends SIGINT to every process of the group; kill or a supervisor
    may signal the demo's process alone. Either way gunicorn stops, then the demo."""
    port = free_port()
    env = {**os.environ, "UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "PORT": str(port), "WEB_CONCURRENCY": str(WORKERS)}
    demo = subprocess.Popen([sys.executable, "-m", "app.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: _answers(port), 30, "the demo's gunicorn")
        with open(f"/proc/{demo.pid}/task/{demo.pid}/children") as f:
            (master,) = (int(pid) for pid in f.read().split())
        # Signal a gunicorn at rest: no worker still booting (see _workers_booted), none
        # still dispatching the request above (see _answers).
        wait_for(lambda: _workers_booted(master), 30, "gunicorn's workers to boot")
        if to == "group":
            os.killpg(demo.pid, signum)
        else:
            demo.send_signal(signum)
        assert demo.wait(timeout=30) == 0
        assert not os.path.exists(f"/proc/{master}")  # reaped by the demo: gone
        assert not _answers(port)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_make_run_serves_the_asgi_example(upstream: Upstream, signum: int):
    """``make run APP=app.asgi_example:app``: gunicorn's ASGI worker serves the FastAPI
    relay, whose call goes through an async pool (``/health``: kind "async", one request,
    as the upstream counts); a signal to the demo stops gunicorn, then the demo."""
    import json

    import urllib3

    port = free_port()
    env = {**os.environ, "UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "PORT": str(port), "WEB_CONCURRENCY": str(WORKERS)}
    env.pop("GUNICORN_WORKER_CLASS", None)
    demo = subprocess.Popen([sys.executable, "-m", "app.demo", "app.asgi_example:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _answers(port), 30, "the demo's gunicorn")
        with open(f"/proc/{demo.pid}/task/{demo.pid}/children") as f:
            (master,) = (int(pid) for pid in f.read().split())
        url = f"http://127.0.0.1:{port}"
        with urllib3.PoolManager(retries=False) as http:
            r = http.request("GET", url + "/upstream/hello?x=1",
                             headers={"Connection": "close"})
            assert r.status == 200
            assert (r.json()["path"], r.json()["query"]) == ("/hello", "x=1")
            assert r.headers["Server"].startswith("gunicorn/asgi")  # -k asgi, not gthread

            def health_with_pools() -> dict | None:  # the worker that relayed the call
                doc = json.loads(http.request("GET", url + "/health",
                                              headers={"Connection": "close"}).data)
                return doc if doc["pools"] else None

            served_by = wait_for(health_with_pools, 20, "/health of the relaying worker")
        (pool,) = served_by["pools"]
        assert (pool["kind"], pool["port"], pool["requests"]) == ("async", upstream.port, 1)
        assert upstream.stats()["requests"] == 1
        wait_for(lambda: _workers_booted(master), 30, "gunicorn's workers to boot")
        demo.send_signal(signum)
        assert demo.wait(timeout=30) == 0
        assert not os.path.exists(f"/proc/{master}")
        assert not _answers(port)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
