"""``make bench``: every way of calling an upstream from gunicorn, under the same load.

One nginx TLS upstream with keep-alive on loopback (certificates made here, with trustme),
one gunicorn per contender run with the same workers and threads, wrk for the load. The
contenders (``bench/contenders.py``) run interleaved, each round in a rotated order, so that
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
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import trustme

from bench import report

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
}
BASELINE = "bare urllib3 PoolManager"


# Keep-alive long enough for any run: the upstream never closes a connection itself, so
# every handshake it counts is one the client chose to make.
NGINX_CONF = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    log_format conns '$connection $connection_requests $ssl_session_reused';
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/server.pem;
        ssl_certificate_key {dir}/server.key;
        ssl_session_cache shared:SSL:1m;
        keepalive_timeout 300s;
        keepalive_requests 1000000;
        access_log {dir}/access.log conns;
        location / {{
            default_type application/json;
            return 200 '{{"ok":true}}\\n';
        }}
    }}
}}
"""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _answers(port: int, scheme: str = "http", ca: str | None = None) -> bool:
    try:
        if scheme == "https":
            context = ssl.create_default_context(cafile=ca)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=5, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@dataclass
class Nginx:
    directory: Path
    port: int
    ca: str
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    @property
    def log(self) -> Path:
        return self.directory / "access.log"

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def connections_since(self, offset: int) -> tuple[int, int, int]:
        """Requests, connections (one handshake each) and resumed handshakes logged
        after ``offset``."""
        with self.log.open("rb") as f:
            f.seek(offset)
            lines = f.read().decode().split("\n")
        requests = handshakes = resumed = 0
        for line in filter(None, lines):
            _, on_connection, reused = line.split()
            requests += 1
            if on_connection == "1":
                handshakes += 1
                resumed += reused == "r"
        return requests, handshakes, resumed


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None:
        raise SystemExit("bench: nginx not found (make bench installs it: apt-get install "
                         "nginx-light)")
    return found


@contextmanager
def nginx_upstream(directory: Path) -> Iterator[Nginx]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(directory / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    for pem in cert.cert_chain_pems[1:]:
        with (directory / "server.pem").open("ab") as f:
            f.write(pem.bytes())
    (directory / "tmp").mkdir(exist_ok=True)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port))
    proc = subprocess.Popen([nginx_binary(), "-p", str(directory), "-c", str(conf),
                             "-g", "daemon off;"], stderr=subprocess.PIPE)
    upstream = Nginx(directory, port, str(directory / "ca.pem"), proc)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(port, "https", upstream.ca),
                   15, "nginx")
        if proc.poll() is not None:
            raise SystemExit(f"bench: nginx exited: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
                             )
        # nginx logs a request after answering it: wait for the probe's line, or it would
        # count in the first run.
        wait_until(lambda: upstream.log_size() > 0, 15, "nginx's access log")
        yield upstream
    finally:
        proc.terminate()
        proc.wait(10)


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


def run_one(name: str, round_: int, upstream: Nginx, duration: float, work: Path) -> Run:
    app, hooked = CONTENDERS[name]
    port = free_port()
    env = {**os.environ, "BENCH_UPSTREAM": upstream.url, "BENCH_CA": upstream.ca,
           "BENCH_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(WORKERS),
           "GUNICORN_THREADS": str(THREADS), "BENCH_ERRORLOG": str(work / "gunicorn.log"),
           "POOLCLIENT_CA_BUNDLE": upstream.ca, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # poolclient's hooks make their own
    if hooked:
        env["BENCH_HOOKS"] = "poolclient"
    offset = upstream.log_size()
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
    upstream_requests, handshakes, resumed = upstream.connections_since(offset)
    return Run(contender=name, round=round_, requests=int(load["requests"]),
               seconds=load["seconds"], rps=load["rps"], p50_ms=load["p50_ms"],
               p99_ms=load["p99_ms"], errors=int(load["errors"]),
               upstream_requests=upstream_requests, handshakes=handshakes, resumed=resumed,
               cpu_s=round(cpu, 3))


def machine(command: str) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    nginx = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    versions = {name: metadata.version(name) for name in
                ("poolclient", "gunicorn", "urllib3", "requests", "prometheus-client")}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": command,
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}, "
                   f"{os.cpu_count()} CPUs ({cpu})",
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "nginx": nginx.strip().split("/", 1)[-1],
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
        with nginx_upstream(work) as upstream:
            for round_ in range(args.rounds):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    run = run_one(name, round_, upstream, args.duration, work)
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
