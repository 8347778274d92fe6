"""Test helpers: a real TLS upstream in its own process, and a real gunicorn."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trustme
import urllib3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Upstream:
    """A running ``app.upstream`` process: its URL, the CA it is signed by, its record."""

    url: str
    ca: str
    proc: subprocess.Popen[str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        """The upstream's record of connections and requests (control calls not counted)."""
        with urllib3.PoolManager(ca_certs=self.ca, retries=False) as http:
            r = http.request("GET", self.url + "/_upstream/stats", timeout=5)
        return json.loads(r.data)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_upstream(directory: str) -> Upstream:
    """Start ``python -m app.upstream`` writing its CA into ``directory``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.upstream", "--certs", directory],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("https://"), f"upstream did not start: {url!r}"
    return Upstream(url=url, ca=os.path.join(directory, "ca.pem"), proc=proc)


def other_ca_file(directory: str) -> str:
    """A CA that signed nothing the upstream presents: trusting only it must fail."""
    path = os.path.join(directory, "other-ca.pem")
    trustme.CA().cert_pem.write_to_path(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused_url() -> str:
    """An https URL on a loopback port nobody listens on."""
    return f"https://127.0.0.1:{free_port()}"


class Gunicorn:
    """A real gunicorn started with the project's ``gunicorn.conf.py``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env}
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{self.port}", *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, workers: int = 1, timeout: float = 20.0) -> None:
        """Wait until gunicorn listens and ``workers`` workers have booted."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return False
            booted = self.log().count("Booting worker")
            return len(self.worker_pids()) == workers and booted >= workers
        wait_for(ready, timeout, f"gunicorn to listen with {workers} worker(s)")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def worker_pids(self) -> set[int]:
        """The master's live children, read from /proc."""
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as f:
            return {int(p) for p in f.read().split()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
