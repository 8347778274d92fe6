"""Test helpers: a real TLS upstream in its own process, and a real gunicorn."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trustme
import urllib3

from app.upstream import loopback_hosts

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
    directory: str = ""
    args: tuple[str, ...] = ()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        """The upstream's record of connections and requests (control calls not counted)."""
        with urllib3.PoolManager(ca_certs=self.ca, retries=False) as http:
            r = http.request("GET", self.url + "/_upstream/stats", timeout=5)
        return json.loads(r.data)

    def open_gate(self, name: str) -> None:
        """Let the streams waiting on gate ``name`` go on (``app/stubs/llm.py``)."""
        with urllib3.PoolManager(ca_certs=self.ca, retries=False) as http:
            assert http.request("POST", f"{self.url}/_upstream/gate/{name}").status == 200

    def hosts(self, n: int) -> list[str]:
        """The first ``n`` addresses it listens on (the main one first), from ``--hosts``."""
        started = int(self.args[self.args.index("--hosts") + 1]) if "--hosts" in self.args else 1
        assert n <= started, f"the upstream listens on {started} host(s), not {n}"
        return loopback_hosts(n, urlsplit(self.url).hostname or "127.0.0.1")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._close_pipe()

    def kill(self) -> None:
        """SIGKILL: no cleanup in the upstream; the kernel closes its sockets."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_pipe()

    def restart(self) -> None:
        """Kill it (if still running) and start it again on the same port, with the same CA
        and options: clients that trust ``ca`` keep working."""
        self.kill()
        fresh = start_upstream(self.directory, *self.args, port=self.port)
        self.url, self.proc = fresh.url, fresh.proc

    def _close_pipe(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_upstream(directory: str, *args: str, port: int | None = None) -> Upstream:
    """Start ``python -m app.upstream`` with the CA of ``directory`` (made there if missing)
    and extra flags ``args``; on ``port`` (it can be a killed upstream's) or a free one."""
    command = [sys.executable, "-m", "app.upstream", "--certs", directory, *args]
    if port is not None:
        command += ["--port", str(port)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("https://"), f"upstream did not start: {url!r}"
    return Upstream(url=url, ca=os.path.join(directory, "ca.pem"), proc=proc,
                    directory=directory, args=args)


def sockets_to(pid: int, port: int) -> int:
    """How many TCP sockets process ``pid`` holds whose remote port is ``port`` (listening
    sockets aside), from its /proc fd links and /proc/PID/net/tcp{,6}."""
    inodes: set[str] = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue  # closed since listdir
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
        for row in rows:
            fields = row.split()
            # local, remote ("HEXADDR:HEXPORT"), state ("0A" is LISTEN), ..., inode
            remote, state, inode = fields[2], fields[3], fields[9]
            if (inode in inodes and state != "0A"
                    and int(remote.rsplit(":", 1)[1], 16) == port):
                count += 1
    return count


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


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
    """A real gunicorn started with the project's ``gunicorn.conf.py``; ``wrapper`` goes
    before the interpreter (``opentelemetry-instrument``, say)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: str,
                 wrapper: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # Each gunicorn gets its own metrics directory unless the test names one.
        full_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        full_env.update(env)
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
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


def gunicorn_starter(tmp_path: Any, wrapper: tuple[str, ...] = ()
                     ) -> Iterator[Callable[[list[str], dict[str, str]], Gunicorn]]:
    """What the ``gunicorn`` fixtures yield: ``start(args, env)`` starts one and waits for
    its workers; every one started is stopped afterwards."""
    started: list[Gunicorn] = []

    def start(args: list[str], env: dict[str, str]) -> Gunicorn:
        server = Gunicorn(args, env, str(tmp_path / f"gunicorn-{len(started)}.log"), wrapper)
        started.append(server)
        server.wait_ready(workers=int(args[args.index("-w") + 1]))
        return server

    yield start
    for server in started:
        server.stop()


def load(url: str, clients: int, seconds: float, paths: tuple[str, ...] = ("/",),
         headers: dict[str, str] | None = None, requests: int | None = None) -> Counter:
    """``clients`` keep-alive clients calling ``url`` for ``seconds`` (or, given
    ``requests``, until that many are sent, ``seconds`` then only a cap); outcomes counted."""
    deadline = time.monotonic() + seconds
    totals: Counter = Counter()
    lock = threading.Lock()
    tickets = itertools.count()  # next() on it is atomic: no two clients take the same one

    def client(n: int) -> None:
        seen: Counter = Counter()
        with urllib3.PoolManager(maxsize=1, retries=False) as http:
            i = n
            while time.monotonic() < deadline:
                if requests is not None and next(tickets) >= requests:
                    break
                path = paths[i % len(paths)]
                i += 1
                try:
                    r = http.request("GET", url + path, timeout=30, headers=headers)
                    seen[r.status] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is a counted outcome
                    seen[type(exc).__name__] += 1
        with lock:
            totals.update(seen)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return totals


def health_by_worker(server: Gunicorn, workers: set[int]) -> dict[int, dict]:
    """``/health`` from every worker: asked on fresh connections until each has answered."""
    found: dict[int, dict] = {}

    def all_seen() -> bool:
        with urllib3.PoolManager(retries=False) as http:
            r = http.request("GET", server.url + "/health", headers={"Connection": "close"})
        doc = json.loads(r.data)
        found[doc["pid"]] = doc
        return workers <= set(found)

    wait_for(all_seen, 20, "every worker to answer /health")
    return {pid: found[pid] for pid in workers}


def assert_workers_own_connections(server: Gunicorn, upstream: Upstream, workers: set[int],
                                   requests: int, master_requests: int = 1,
                                   bound: int = 8) -> dict[int, dict]:
    """After a load on a ``--preload``'ed app whose master made ``master_requests`` calls at
    import, what the upstream and the workers say: no connection written by two processes,
    the master's on one connection closed before the fork, at most ``bound`` carrying the
    workers' ``requests``, and ``/health`` summed over the workers equal to that (no
    errors, nothing unread, streaming or in use, nothing inherited). Their /health."""
    conns = upstream.stats()["connections"]
    assert all(len(c["pids"]) == 1 for c in conns), "a connection was written by two processes"
    master = [c for c in conns if c["pids"] == [str(server.proc.pid)]]
    assert [c["requests"] for c in master] == [master_requests] and not master[0]["open"]
    in_workers = [c for c in conns if c not in master]
    assert {int(c["pids"][0]) for c in in_workers} <= workers
    assert 1 <= len(in_workers) <= bound
    assert sum(c["requests"] for c in in_workers) == requests
    health = health_by_worker(server, workers)
    totals = [h["totals"] for h in health.values()]
    assert sum(t["requests"] for t in totals) == requests
    assert sum(t["connections_opened"] for t in totals) == len(in_workers)
    assert all(t["errors"] == t["unread"] == t["streaming"] == t["in_use"] == 0
               for t in totals)
    assert all(h["inherited_connections"] == [] for h in health.values())
    return health


def assert_calls_bounded(upstream: Upstream, registry: Any, gate: str,
                         call: Callable[[], object], expected: object) -> None:
    """Six ``call()``s at once through ``registry`` (maxsize 4), each held at the upstream's
    ``gate``: four reach the upstream, two wait for a connection; once the gate opens, all
    six answer ``expected``, over four connections."""
    results: list[object] = []

    def one() -> None:
        try:
            results.append(call())
        except Exception as exc:  # noqa: BLE001 - a failure is a counted outcome
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    wait_for(lambda: upstream.stats()["requests"] == 4, what="four calls at the gate")
    wait_for(lambda: registry.stats().totals()["waits"] == 2, what="two callers waiting")
    assert registry.stats().totals()["in_use"] == 4
    assert upstream.stats()["requests"] == 4  # the other two are still waiting
    upstream.open_gate(gate)
    for t in threads:
        t.join()
    assert results == [expected] * 6
    assert len(upstream.stats()["connections"]) == 4
    assert registry.stats().pools[0].maxsize == 4
