"""``make bench``: every way of calling an upstream from gunicorn, under the same load.

One nginx TLS upstream with keep-alive on loopback (certificates made here, with trustme),
one gunicorn per contender run with the same workers and threads, wrk for the load. The
contenders (``bench/contenders.py``) run interleaved, each round in another order, so that
a slow stretch of the machine falls on all of them; the report gives medians over rounds and,
per round, ratios to bare urllib3.

What each run measures, and where:

- req/s, p50 and p99 latency: wrk's;
- TLS handshakes: counted by nginx, one per connection it accepted (its access log carries
  the connection serial and the request's number on it), from gunicorn's start to its stop,
  so a worker's first connections count too;
- CPU seconds per 1,000 requests: the gunicorn master and workers, from ``/proc``, over the
  load only.

Usage: ``python -m bench.run [--rounds 5] [--duration 10] [--out docs]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TypeVar

from bench import nginx, report
from bench.nginx import Server

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
WORKERS, THREADS, CLIENTS = 2, 4, 16


# name in the report: (app in bench/contenders.py, served under poolclient's hooks)
CONTENDERS = {
    "static (no upstream)": ("static", False),
    "requests Session per request": ("session_per_request", False),
    "shared requests.Session": ("shared_session", False),
    "bare urllib3 PoolManager": ("bare_urllib3", False),
    "poolclient .request()": ("poolclient_request", True),
    "poolclient .session() per request": ("poolclient_session", True),
    "OpenAI client per request": ("openai_per_request", False),
    "OpenAI module-level client (httpx2's pool)": ("openai_shared", False),
    "OpenAI client on poolclient's transport": ("openai_poolclient", True),
}
BASELINE = "bare urllib3 PoolManager"


@dataclass
class Run:
    """One contender's run in one round."""

    contender: str
    round: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    upstream_requests: int
    handshakes: int
    resumed: int
    cpu_s: float


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll ``predicate`` until it answers something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (answer := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return answer


def _answers(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@dataclass
class Upstream:
    """The nginx every contender calls, and its count of what they did."""

    directory: Path
    server: Server
    ca: str
    marks: int = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}/"

    def offset(self) -> int:
        log = self.directory / "access.log"
        return log.stat().st_size if log.exists() else 0

    def counted_since(self, offset: int) -> tuple[int, int, int]:
        """Requests, handshakes (connections) and resumed handshakes since ``offset``.

        nginx logs a request after answering it, so a client can be done before the
        last line is written; one more request, whose line comes after every earlier
        one's (one nginx worker, one event at a time), marks the end."""
        self.marks += 1
        mark = f"/mark/{self.marks}"
        context = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=context,
                                           timeout=5)
        conn.request("GET", mark)
        conn.getresponse().read()
        conn.close()

        def logged() -> list[nginx.Line]:
            lines = nginx.read_log(self.directory, offset)
            return lines if any(line.uri == mark for line in lines) else []

        lines = wait_until(logged, 15, "nginx's access log")
        calls = [line for line in lines if not line.uri.startswith("/mark/")]
        handshakes = [line for line in calls if line.number == 1]
        return len(calls), len(handshakes), sum(line.resumed for line in handshakes)


@contextmanager
def upstream(directory: Path) -> Iterator[Upstream]:
    server = nginx.Server("upstream", "TLSv1.2 TLSv1.3")
    with nginx.nginx(directory, [server]) as ca:
        yield Upstream(directory, server, str(ca))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of ``pid`` and its children now alive (gunicorn's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    except OSError:
        pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests, seconds, req/s, p50/p99 in ms and errors from ``wrk --latency``."""
    done = re.search(r"(\d+) requests in ([\d.]+)(s|m)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not (done and p50 and p99 and rps):
        raise SystemExit(f"bench: cannot read wrk's output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(bad.group(1)) if bad else 0
    seconds = float(done.group(2)) * (60 if done.group(3) == "m" else 1)
    return {"requests": int(done.group(1)), "seconds": seconds, "rps": float(rps.group(1)),
            "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)), "errors": errors}


def run_one(name: str, round_: int, upstream: Upstream, duration: float, work: Path) -> Run:
    app, hooked = CONTENDERS[name]
    port = nginx.free_port()
    env = {**os.environ, "BENCH_UPSTREAM": upstream.url, "BENCH_CA": upstream.ca,
           "BENCH_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(WORKERS),
           "GUNICORN_THREADS": str(THREADS), "BENCH_ERRORLOG": str(work / "gunicorn.log"),
           "POOLCLIENT_CA_BUNDLE": upstream.ca, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # poolclient's hooks make their own
    if hooked:
        env["BENCH_HOOKS"] = "poolclient"
    offset = upstream.offset()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bench" / "gunicorn.conf.py"),
         f"bench.contenders:{app}"], env=env, cwd=ROOT)
    try:
        # One answer from each worker is not guaranteed, but a worker that is still
        # booting only delays the first requests; its CPU is read before the load starts.
        wait_until(lambda: server.poll() is not None or _answers(port), 30, f"gunicorn ({app})")
        if server.poll() is not None:
            raise SystemExit(f"bench: gunicorn for {app} exited; see {work / 'gunicorn.log'}")
        wait_until(lambda: len(Path(f"/proc/{server.pid}/task/{server.pid}/children")
                               .read_text().split()) == WORKERS, 30, "gunicorn's workers")
        cpu_before = cpu_seconds(server.pid)
        wrk = subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{duration:g}s", "--latency",
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             check=True)
        cpu = cpu_seconds(server.pid) - cpu_before
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    load = parse_wrk(wrk.stdout)
    upstream_requests, handshakes, resumed = upstream.counted_since(offset)
    return Run(contender=name, round=round_, requests=int(load["requests"]),
               seconds=load["seconds"], rps=load["rps"], p50_ms=load["p50_ms"],
               p99_ms=load["p99_ms"], errors=int(load["errors"]),
               upstream_requests=upstream_requests, handshakes=handshakes, resumed=resumed,
               cpu_s=round(cpu, 3))


def round_order(names: list[str], round_: int) -> list[str]:
    """The contenders of one round: forwards, then backwards, rotated by one every two
    rounds, so that no contender always runs first, or always right after another."""
    shift = round_ // 2 % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if round_ % 2 else order


def machine(command: str) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    versions = {name: metadata.version(name) for name in
                ("poolclient", "gunicorn", "urllib3", "requests", "prometheus-client",
                 "httpx2", "openai")}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                   f"{os.cpu_count()} CPUs ({cpu})",
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "nginx": nginx.version().split("/", 1)[-1],
        "wrk": wrk.split("[", 1)[0].strip().split(" ", 1)[-1],
        "setup": f"gunicorn gthread, {WORKERS} workers x {THREADS} threads; wrk 2 threads, "
                 f"{CLIENTS} connections; nginx TLS upstream with keep-alive, 1 worker",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the report goes")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="README whose benchmark block is replaced ('' for none)")
    parser.add_argument("--only", action="append", default=[], help="a contender (repeatable)")
    args = parser.parse_args(argv)
    names = args.only or list(CONTENDERS)
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or args.rounds < 1 or args.duration <= 0:
        parser.error(f"unknown contender {unknown}; choose from {list(CONTENDERS)}" if unknown
                     else "--rounds and --duration must be positive")
    command = os.environ.get("BENCH_COMMAND") or "python -m bench.run " + " ".join(
        sys.argv[1:] if argv is None else argv)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="poolclient-bench-") as tmp:
        work = Path(tmp)
        with upstream(work) as nginx_upstream:
            for round_ in range(args.rounds):
                for name in round_order(names, round_):
                    run = run_one(name, round_, nginx_upstream, args.duration, work)
                    runs.append(run)
                    print(f"round {round_ + 1}/{args.rounds}  {name:36} {run.rps:9.1f} req/s  "
                          f"p99 {run.p99_ms:7.2f} ms  handshakes {run.handshakes:5}  "
                          f"errors {run.errors}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine(command)
    raw = {"meta": meta, "runs": [asdict(r) for r in runs],
           "workers": WORKERS, "threads": THREADS, "duration": args.duration}
    (out / "bench.json").write_text(json.dumps(raw, indent=1) + "\n")
    rows = report.summarize(raw["runs"], BASELINE)
    targets = report.targets(rows, WORKERS * THREADS, args.duration)
    (out / "bench.md").write_text(report.markdown(rows, targets, meta) + "\n")
    report.plot(rows, meta, out / "bench.png")
    if args.readme:
        readme = Path(args.readme)
        readme.write_text(report.replace_block(readme.read_text(), report.table(rows)))
    print(report.table(rows))
    print("\n".join(report.target_lines(targets)))
    failed = [r for r in runs if r.errors]
    if failed:
        print(f"bench: {len(failed)} runs had errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
