"""``make run`` (``python -m app.demo``): the example service, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import urllib3

from tests.helpers import ROOT, Upstream, free_port, wait_for


def _answers(url: str) -> bool:
    try:
        # Connection: close, so that no idle keep-alive connection holds up a graceful stop.
        return urllib3.request("GET", url, retries=False, timeout=2,
                               headers={"Connection": "close"}).status == 200
    except urllib3.exceptions.HTTPError:
        return False


@pytest.mark.parametrize(("to", "signum"), [("demo", signal.SIGINT), ("demo", signal.SIGTERM),
                                            ("group", signal.SIGINT)])
def test_a_signal_stops_gunicorn_and_the_demo(upstream: Upstream, to: str, signum: int):
    """Ctrl-C in a terminal sends SIGINT to every process of the group; kill or a supervisor
    may signal the demo's process alone. Either way gunicorn stops, then the demo."""
    port = free_port()
    env = {**os.environ, "UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "PORT": str(port)}
    demo = subprocess.Popen([sys.executable, "-m", "app.demo"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/livez"), 30, "the demo's gunicorn")
        with open(f"/proc/{demo.pid}/task/{demo.pid}/children") as f:
            (master,) = (int(pid) for pid in f.read().split())
        if to == "group":
            os.killpg(demo.pid, signum)
        else:
            demo.send_signal(signum)
        assert demo.wait(timeout=30) == 0
        assert not os.path.exists(f"/proc/{master}")  # reaped by the demo: gone
        assert not _answers(f"http://127.0.0.1:{port}/livez")
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
