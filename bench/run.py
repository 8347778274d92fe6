"""``make bench``: every way of calling an upstream from gunicorn, under the same load, against
upstreams that behave as real ones do (issue 16, ``bench/scenarios.py``).

One nginx on loopback (certificates made here, with trustme) with one TLS server per
upstream behaviour: keep-alive that never ends, that ends after 100 or 1,000 requests, that
ends after 5 s idle. One gunicorn per contender run with the same workers and threads; wrk
for the load, or ``bench/burst.py``'s bursts and idle gaps for scenario (d). Every scenario
but ``a-ca`` verifies against the system bundle plus the test CA. The contenders
(``bench/contenders.py``) and the scenarios run interleaved, each round in another order, so
that a slow stretch of the machine falls on all of them; the report gives medians over
rounds and, per round, ratios to bare urllib3 in the same scenario. Then ``bench/callgrind.py``
counts instructions per request of bare urllib3 and ``.request()`` in one process.

Two kinds of app (``--kinds``, both by default): the WSGI apps of ``bench/contenders.py``
under gthread workers, and the ASGI apps of ``bench/asgi_contenders.py`` under gunicorn's
own ASGI worker (``-k asgi``, issue 23), both with the same workers, load and upstreams,
interleaved in the same rounds. Each kind has a report of its own (``docs/bench.*`` and
``docs/bench-asgi.*``, and a block of the README each), so that a run of one kind leaves the
other's as it was.

What each run measures, and where:

- req/s, p50 and p99 latency: wrk's;
- TLS handshakes: counted by nginx, one per connection it accepted (its access log carries
  the connection serial and the request's number on it), from gunicorn's start to its stop,
  so a worker's first connections count too;
- CPU seconds per 1,000 requests: the gunicorn master and workers, from ``/proc``, over the
  load only;
- RSS per worker: ``VmRSS`` of each gunicorn worker just before it is stopped;
- for (d), the latency of each client's first request after an idle gap (``bench/burst.py``).

Usage: ``python -m bench.run [--rounds 5] [--duration 10] [--scenarios b,c,d,a,a-ca]
[--kinds wsgi,asgi] [--only NAME] [--out docs] [--readme README.md] [--callgrind 2000]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
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
from typing import Any, TypeVar

from bench import callgrind, nginx, report, scenarios
from bench.nginx import Server
from bench.scenarios import SCENARIOS, Scenario

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
# The ASGI apps in bench/asgi_contenders.py, served under gunicorn -k asgi.
ASGI_CONTENDERS = {
    report.HTTPX_PER_REQUEST: ("httpx_per_request", False),
    report.ANCHOR: ("httpx2_lifespan", False),
    report.AIOHTTP: ("aiohttp_lifespan", False),
    report.ASYNC_POOLED: ("poolclient_async", True),
    report.ASYNC_OPENAI_SHARED: ("openai_async_default", False),
    report.ASYNC_OPENAI_POOLED: ("openai_async_poolclient", True),
}
BASELINE = "bare urllib3 PoolManager"


@dataclass(frozen=True)
class Kind:
    """How one kind of app is served: its module of apps and gunicorn's worker class."""

    key: str
    module: str
    worker_class: str
    contenders: dict[str, tuple[str, bool]]


KINDS = {k.key: k for k in (Kind("wsgi", "bench.contenders", "gthread", CONTENDERS),
                            Kind("asgi", "bench.asgi_contenders", "asgi", ASGI_CONTENDERS))}


def kind_of(name: str) -> Kind:
    return next(k for k in KINDS.values() if name in k.contenders)


def parse_kinds(text: str) -> list[str]:
    """``"asgi"`` or ``"wsgi,asgi"`` (or ``"all"``/empty) to kinds, in :data:`KINDS`' order."""
    wanted = [k.strip() for k in text.split(",") if k.strip()]
    if not wanted or wanted == ["all"]:
        return list(KINDS)
    unknown = [k for k in wanted if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown kind {unknown}; choose from {list(KINDS)}")
    return [k for k in KINDS if k in wanted]
# What a run costs besides its load (gunicorn's start and stop, the counting), measured here:
# for the estimate printed at the start.
OVERHEAD_S = 3.0


@dataclass
class Run:
    """One contender's run in one round."""

    contender: str
    round: int
    scenario: str
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
    rss_kib: list[int]  # each worker's VmRSS just before it was stopped
    first_ms: list[float] | None = None  # (d): each first request after an idle gap
    # The rest of the machine's work during the load, on the same cores: nginx's (master
    # and worker), and the load generator's (wrk, or bench/burst.py).
    upstream_cpu_s: float | None = None
    load_cpu_s: float | None = None
    kind: str = "wsgi"  # which report: KINDS


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
    """The nginx every contender calls, one TLS server per upstream behaviour, and its
    count of what they did."""

    directory: Path
    servers: dict[str, Server]
    ca: str  # the test CA alone
    bundle: str  # the system bundle plus the test CA
    marks: int = 0

    @property
    def url(self) -> str:
        """The ideal server's (keep-alive that never ends)."""
        return self.url_for("ideal")

    def url_for(self, server: str) -> str:
        return f"https://127.0.0.1:{self.servers[server].port}/"

    def ca_for(self, scenario: Scenario) -> str:
        return self.bundle if scenario.bundle else self.ca

    def pid(self) -> int:
        """nginx's master process (its worker is its child)."""
        return int((self.directory / "nginx.pid").read_text())

    def offset(self) -> int:
        log = self.directory / "access.log"
        return log.stat().st_size if log.exists() else 0

    def counted_since(self, offset: int, server: str = "ideal") -> tuple[int, int, int]:
        """Requests, handshakes (connections) and resumed handshakes on ``server`` since
        ``offset``.

        nginx logs a request after answering it, so a client can be done before the
        last line is written; one more request, whose line comes after every earlier
        one's (one nginx worker, one event at a time), marks the end."""
        self.marks += 1
        mark = f"/mark/{self.marks}"
        port = self.servers[server].port
        context = ssl.create_default_context(cafile=self.ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        conn.request("GET", mark)
        conn.getresponse().read()
        conn.close()

        def logged() -> list[nginx.Line]:
            lines = nginx.read_log(self.directory, offset)
            return lines if any(line.uri == mark for line in lines) else []

        lines = wait_until(logged, 15, "nginx's access log")
        calls = [line for line in lines
                 if line.port == port and not line.uri.startswith("/mark/")]
        handshakes = [line for line in calls if line.number == 1]
        return len(calls), len(handshakes), sum(line.resumed for line in handshakes)


@contextmanager
def upstream(directory: Path) -> Iterator[Upstream]:
    servers = scenarios.servers()
    with nginx.nginx(directory, list(servers.values())) as ca:
        bundle = scenarios.write_bundle(ca, directory / "bundle.pem")
        yield Upstream(directory, servers, str(ca), str(bundle))


def worker_rss(pid: int) -> list[int]:
    """VmRSS in KiB of each child of ``pid`` (gunicorn's workers), by pid."""
    try:
        children = sorted(int(c) for c in
                          Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []
    found = []
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if match:
            found.append(int(match.group(1)))
    return found


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


@dataclass(frozen=True)
class Load:
    """How long each run loads: wrk's ``duration``; (d)'s bursts and gaps."""

    duration: float = 10.0
    gaps: int = 2
    gap: float = 6.0
    burst: float = 1.0
    warmup: float = 1.0

    def seconds(self, scenario: Scenario) -> float:
        if scenario.bursts:
            return self.warmup + self.gaps * (self.gap + self.burst)
        return self.duration


def _load(scenario: Scenario, load: Load, port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/"
    if scenario.bursts:
        done = subprocess.run(
            [sys.executable, "-m", "bench.burst", url, "--clients", str(CLIENTS),
             "--gaps", str(load.gaps), "--gap", f"{load.gap:g}", "--burst", f"{load.burst:g}",
             "--warmup", f"{load.warmup:g}"], capture_output=True, text=True, check=True,
            cwd=ROOT)
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    wrk = subprocess.run(["wrk", "-t2", f"-c{CLIENTS}", f"-d{load.duration:g}s", "--latency",
                          url], capture_output=True, text=True, check=True)
    return dict(parse_wrk(wrk.stdout))


def run_one(name: str, round_: int, upstream: Upstream, load: Load | float, work: Path,
            scenario: Scenario | None = None) -> Run:
    if not isinstance(load, Load):
        load = Load(duration=load)
    scenario = scenario or SCENARIOS["a-ca"]
    kind = kind_of(name)
    app, hooked = kind.contenders[name]
    port = nginx.free_port()
    ca = upstream.ca_for(scenario)
    env = {**os.environ, "BENCH_UPSTREAM": upstream.url_for(scenario.server), "BENCH_CA": ca,
           "BENCH_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(WORKERS),
           "GUNICORN_THREADS": str(THREADS), "BENCH_WORKER_CLASS": kind.worker_class,
           "BENCH_ERRORLOG": str(work / "gunicorn.log"),
           "POOLCLIENT_CA_BUNDLE": ca, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # poolclient's hooks make their own
    if hooked:
        env["BENCH_HOOKS"] = "poolclient"
    offset = upstream.offset()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bench" / "gunicorn.conf.py"),
         f"{kind.module}:{app}"], env=env, cwd=ROOT)
    try:
        # One answer from each worker is not guaranteed, but a worker that is still
        # booting only delays the first requests; its CPU is read before the load starts.
        wait_until(lambda: server.poll() is not None or _answers(port), 30, f"gunicorn ({app})")
        if server.poll() is not None:
            raise SystemExit(f"bench: gunicorn for {app} exited; see {work / 'gunicorn.log'}")
        wait_until(lambda: len(Path(f"/proc/{server.pid}/task/{server.pid}/children")
                               .read_text().split()) == WORKERS, 30, "gunicorn's workers")
        cpu_before, upstream_before = cpu_seconds(server.pid), cpu_seconds(upstream.pid())
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator's, after
        result = _load(scenario, load, port)
        cpu = cpu_seconds(server.pid) - cpu_before
        upstream_cpu = cpu_seconds(upstream.pid()) - upstream_before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        rss = worker_rss(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    upstream_requests, handshakes, resumed = upstream.counted_since(offset, scenario.server)
    return Run(contender=name, round=round_, scenario=scenario.key,
               requests=int(result["requests"]), seconds=result["seconds"],
               rps=result["rps"], p50_ms=result["p50_ms"], p99_ms=result["p99_ms"],
               errors=int(result["errors"]), upstream_requests=upstream_requests,
               handshakes=handshakes, resumed=resumed, cpu_s=round(cpu, 3), rss_kib=rss,
               first_ms=result.get("first_ms"), upstream_cpu_s=round(upstream_cpu, 3),
               load_cpu_s=round(load_cpu, 3), kind=kind.key)


STATIC = "static (no upstream)"


def contenders_in(key: str, names: list[str], keys: list[str]) -> list[str]:
    """The contenders run in scenario ``key``: all of ``names``, but the static app (it
    calls no upstream, so every scenario would measure the same) only in (a), or in the
    first scenario when (a) is not run; and the ASGI apps not in (a-ca), which exists to
    continue the WSGI apps' figures from before issue 16, unless it is the only one."""
    home = "a" if "a" in keys else keys[0]
    return [n for n in names if (n != STATIC or key == home)
            and not (key == "a-ca" and len(keys) > 1 and n in ASGI_CONTENDERS)]


def estimate(names: list[str], keys: list[str], rounds: int, load: Load,
             callgrind_calls: int) -> float:
    """Seconds the whole run should take here."""
    per_round = sum((load.seconds(SCENARIOS[k]) + OVERHEAD_S) * len(contenders_in(k, names, keys))
                    for k in keys)
    return rounds * per_round + callgrind.estimate(callgrind_calls)


def round_order(names: list[str], round_: int) -> list[str]:
    """The contenders of one round: forwards, then backwards, rotated by one every two
    rounds, so that no contender always runs first, or always right after another."""
    if not names:  # a scenario none of the chosen kinds runs ((a-ca) with KINDS=asgi)
        return []
    shift = round_ // 2 % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if round_ % 2 else order


PACKAGES = {
    "wsgi": ("poolclient", "gunicorn", "urllib3", "requests", "prometheus-client", "httpx2",
             "openai"),
    "asgi": ("poolclient", "gunicorn", "starlette", "httpcore2", "httpx2", "httpx", "aiohttp",
             "openai", "prometheus-client"),
}


def machine(command: str, kind: str = "wsgi") -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    versions = {name: metadata.version(name) for name in PACKAGES[kind]}
    workers = (f"gunicorn gthread, {WORKERS} workers x {THREADS} threads" if kind == "wsgi"
               else f"gunicorn -k asgi (asyncio), {WORKERS} workers")
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
        "setup": f"{workers}; wrk 2 threads, {CLIENTS} connections (bursts: {CLIENTS} "
                 "clients); nginx TLS upstream, 1 worker",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of wrk's load per run")
    parser.add_argument("--scenarios", default="all",
                        help=f"comma-separated, from {','.join(SCENARIOS)} (default all)")
    parser.add_argument("--kinds", default="all",
                        help=f"comma-separated, from {','.join(KINDS)} (default all): the WSGI "
                             "apps under gthread workers, the ASGI apps under -k asgi")
    parser.add_argument("--gaps", type=int, default=2, help="(d): idle gaps per run")
    parser.add_argument("--gap", type=float, default=6.0,
                        help="(d): seconds of each idle gap (the upstream's keep-alive "
                             "timeout is 5 s)")
    parser.add_argument("--callgrind", type=int, default=2000, metavar="CALLS",
                        help="requests per contender under valgrind's callgrind (0: none); "
                             "WSGI apps only")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the report goes")
    parser.add_argument("--readme", default=str(ROOT / "README.md"),
                        help="README whose benchmark blocks are replaced ('' for none)")
    parser.add_argument("--only", action="append", default=[], help="a contender (repeatable)")
    args = parser.parse_args(argv)
    try:
        keys = scenarios.parse(args.scenarios)
        kinds = parse_kinds(args.kinds)
    except ValueError as e:
        parser.error(str(e))
    every = [n for k in kinds for n in KINDS[k].contenders]
    names = args.only or every
    unknown = [n for n in names if n not in every]
    if unknown or args.rounds < 1 or args.duration <= 0 or args.gaps < 1:
        parser.error(f"unknown contender {unknown} (of --kinds {','.join(kinds)}); choose "
                     f"from {every}" if unknown
                     else "--rounds, --duration and --gaps must be positive")
    if args.gap <= 5:
        parser.error("--gap must be longer than the upstream's keep-alive timeout, 5 s")
    kinds = [k for k in kinds if any(kind_of(n).key == k for n in names)]
    readme = Path(args.readme) if args.readme else None
    if readme is not None:  # said now, not after the whole run
        text = readme.read_text()
        missing = [f"{report.KINDS[k].start} ... {report.KINDS[k].end}" for k in kinds
                   if not report.has_block(text, report.KINDS[k].start, report.KINDS[k].end)]
        if missing:
            parser.error(f"{readme} has no block {' nor '.join(missing)} for the report "
                         "(--readme '' for none)")
    load = Load(duration=args.duration, gaps=args.gaps, gap=args.gap)
    calls = args.callgrind if callgrind.available() and "wsgi" in kinds else 0
    if args.callgrind and "wsgi" in kinds and not calls:
        print("bench: valgrind not found: no instruction counts", file=sys.stderr)
    command = os.environ.get("BENCH_COMMAND") or "python -m bench.run " + " ".join(
        sys.argv[1:] if argv is None else argv)
    seconds = estimate(names, keys, args.rounds, load, calls)
    print(f"bench: {len(names)} contenders ({','.join(kinds)}) x {len(keys)} scenarios "
          f"({','.join(keys)}) x {args.rounds} rounds, {args.duration:g} s each ((d): "
          f"{load.seconds(SCENARIOS['d']):g} s); estimate {seconds / 60:.0f} min", flush=True)
    started = time.monotonic()
    runs: list[Run] = []
    counts: dict[str, Any] | None = None
    sdk_counts: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="poolclient-bench-") as tmp:
        work = Path(tmp)
        with upstream(work) as nginx_upstream:
            for round_ in range(args.rounds):
                for key in round_order(keys, round_):
                    for name in round_order(contenders_in(key, names, keys), round_):
                        run = run_one(name, round_, nginx_upstream, load, work, SCENARIOS[key])
                        runs.append(run)
                        print(f"round {round_ + 1}/{args.rounds} {key:4} {name:44} "
                              f"{run.rps:8.1f} req/s  p99 {run.p99_ms:7.2f} ms  "
                              f"handshakes {run.handshakes:5} ({run.resumed} resumed)  "
                              f"errors {run.errors}", flush=True)
            if calls:
                counts = callgrind.compare(nginx_upstream, calls, work)
                print(callgrind.summary(counts), flush=True)
                sdk_counts = callgrind.compare(nginx_upstream, callgrind.sdk_calls(calls),
                                               work, "openai")
                print(callgrind.summary(sdk_counts), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wall = f"{(time.monotonic() - started) / 60:.1f} min"
    for kind in kinds:
        meta = machine(command, kind)
        meta["bundle"] = (f"{scenarios.system_bundle()} "
                          f"({scenarios.certificates(scenarios.system_bundle())} certificates) "
                          f"plus the test CA")
        meta["wall"] = wall if len(kinds) == 1 else f"{wall} for both kinds"
        mine = [r for r in runs if r.kind == kind]
        raw = {"meta": meta, "kind": kind, "runs": [asdict(r) for r in mine],
               "workers": WORKERS, "threads": THREADS if kind == "wsgi" else 1,
               "duration": args.duration, "gaps": args.gaps, "gap": args.gap,
               "clients": CLIENTS,
               "scenarios": {k: asdict(SCENARIOS[k]) for k in keys
                             if any(r.scenario == k for r in mine)},
               "callgrind": counts if kind == "wsgi" else None,
               "callgrind_sdk": sdk_counts if kind == "wsgi" else None}
        stem = report.KINDS[kind].stem
        (out / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
        print(report.render(raw, None, out, readme))
    failed = [r for r in runs if r.errors]
    if failed:
        print(f"bench: {len(failed)} runs had errors", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
