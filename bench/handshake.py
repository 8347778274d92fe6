"""Reconnect cost: what opening an HTTPS connection costs the client, with and without TLS
session resumption, against a real nginx on loopback (offline: certificates made here).

For each server (TLS 1.3 and TLS 1.2; ECDSA P-256 and RSA-2048 certificates), interleaved
in rounds so that a slow stretch of the machine falls on every phase, each sample is one
GET and its body, timed on the wall clock and on this process's CPU clock:

- ``urllib3``: a new ``HTTPSConnection`` (urllib3 builds a context and loads ``ca_certs``
  on every connect), with only the test CA, then with the system bundle plus the test CA
  (what requests does with certifi);
- ``shared context``: the same with one ``SSLContext``, bundle loaded once, as
  ``ssl_context=``: a full handshake without the loading;
- ``resumed``: ``poolclient.tls``'s connection, which adds the pool's last session;
- ``pool reconnect``: a pool whose every request needs a new connection (the upstream
  answers ``Connection: close``): urllib3's pool, and one with ``poolclient.tls`` without
  and with resumption;
- ``reused``: one GET on a kept-alive connection.

nginx counts the handshakes and resumptions itself (``$ssl_session_reused`` is ``r`` in its
access log), per phase. Loopback has no round trip, so the times are the CPU time of client
and server; on a network add the TCP handshake's round trip and TLS's: one for TLS 1.3,
full or resumed, two for a full TLS 1.2 handshake and one for a resumed one.

One run (Python 3.11.7, OpenSSL 3.0.19, urllib3 2.8.0, nginx 1.22.1; 2 CPUs shared with a
test run, load about 9), median ms of 300, wall / client CPU:

| | TLS 1.3 ECDSA | TLS 1.2 ECDSA | TLS 1.3 RSA | TLS 1.2 RSA |
|---|---|---|---|---|
| urllib3, test CA only | 1.73 / 1.31 | 1.62 / 1.27 | 2.00 / 1.32 | 1.87 / 1.28 |
| urllib3, bundle (145 certs) | 19.25 / 18.77 | 19.14 / 18.71 | 19.46 / 18.70 | 19.49 / 18.79 |
| shared context, full | 1.30 / 0.91 | 1.23 / 0.90 | 1.55 / 0.91 | 1.48 / 0.91 |
| shared context, resumed | 1.29 / 0.94 | 0.96 / 0.79 | 1.23 / 0.90 | 0.94 / 0.77 |
| pool reconnect: urllib3 | 19.38 / 18.83 | 19.17 / 18.75 | 19.63 / 18.80 | 19.47 / 18.79 |
| pool reconnect: tls, no resumption | 1.37 / 0.97 | 1.30 / 0.95 | 1.64 / 0.98 | 1.55 / 0.97 |
| pool reconnect: tls | 1.32 / 0.97 | 1.00 / 0.83 | 1.30 / 0.95 | 0.97 / 0.80 |
| reused connection | 0.12 / 0.10 | 0.12 / 0.10 | 0.11 / 0.10 | 0.11 / 0.10 |

nginx counted 300 of 300 resumed with TLS 1.3 and 297 of 300 with TLS 1.2, whose sessions
live in its 1 MB session cache: the other phases' full handshakes evicted three (300 of
300 with a 20 MB cache). A context costs 0.12 ms to create, 17.9 ms with the bundle.

Usage: ``python -m bench.handshake [--samples 300] [--rounds 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import trustme
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.util.ssl_ import create_urllib3_context

from bench.nginx import Server, nginx, read_log, version
from poolclient.tls import PoolTLS, ResumingConnection, ResumingPool

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

@dataclass
class Phase:
    """One way of making a request, measured on one server."""

    server: str
    name: str
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    connections: int = 0  # counted by nginx
    resumed: int = 0  # counted by nginx

    def summary(self) -> dict[str, Any]:
        return {
            "server": self.server, "phase": self.name, "samples": len(self.wall_ms),
            "median_ms": _round(statistics.median(self.wall_ms)),
            "p90_ms": _round(_p90(self.wall_ms)),
            "cpu_median_ms": _round(statistics.median(self.cpu_ms)),
            "cpu_p90_ms": _round(_p90(self.cpu_ms)),
            "server_connections": self.connections, "server_resumed": self.resumed,
        }


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


def _round(value: float) -> float:
    return round(value, 3)


def count_handshakes(directory: Path, phases: dict[str, Phase]) -> None:
    """Fill each phase's connections and resumptions from nginx's access log (warm-up
    requests aside)."""
    for line in read_log(directory):
        uri = line.uri.removeprefix("/close")
        _, server, name, sample = uri.split("/")  # /<server>/<phase>/<sample>
        phase = phases.get(f"{server}/{name}")
        if phase is not None and line.number == 1 and not sample.startswith("warm"):
            phase.connections += 1
            phase.resumed += line.resumed


def _get(conn: HTTPSConnection, path: str) -> None:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status}")


class _Resuming(ResumingConnection, HTTPSConnection):
    pass


class _ResumingPool(ResumingPool, HTTPSConnectionPool):
    ConnectionCls = _Resuming


def phases_for(server: Server, ca: str, bundle: str) -> dict[str, Callable[[str], None]]:
    """Each phase as a function that makes one timed request to ``path``."""
    shared = create_urllib3_context()
    shared.load_verify_locations(bundle)
    tls = PoolTLS()
    kept = HTTPSConnection("127.0.0.1", server.port, ca_certs=ca)
    full_only = _ResumingPool("127.0.0.1", server.port, ca_certs=bundle, maxsize=1,
                              retries=False)
    full_only.tls.resume = False
    url_pools: dict[str, HTTPSConnectionPool] = {
        "pool-urllib3": HTTPSConnectionPool("127.0.0.1", server.port, ca_certs=bundle,
                                            maxsize=1, retries=False),
        "pool-tls-noresume": full_only,
        "pool-tls": _ResumingPool("127.0.0.1", server.port, ca_certs=bundle, maxsize=1,
                                  retries=False),
    }

    def new(make: Callable[[], HTTPSConnection]) -> Callable[[str], None]:
        def run(path: str) -> None:
            conn = make()
            try:
                _get(conn, path)
            finally:
                conn.close()
        return run

    def resumed() -> HTTPSConnection:
        conn = _Resuming("127.0.0.1", server.port, ca_certs=bundle)
        conn.tls = tls
        return conn

    def pool(name: str) -> Callable[[str], None]:
        def run(path: str) -> None:
            response = url_pools[name].request("GET", "/close" + path)
            if response.status != 200:
                raise SystemExit(f"GET {path}: {response.status}")
        return run

    return {
        "urllib3-ca": new(lambda: HTTPSConnection("127.0.0.1", server.port, ca_certs=ca)),
        "urllib3-bundle": new(
            lambda: HTTPSConnection("127.0.0.1", server.port, ca_certs=bundle)),
        "shared-context": new(
            lambda: HTTPSConnection("127.0.0.1", server.port, ssl_context=shared)),
        "resumed": new(resumed),
        "pool-urllib3": pool("pool-urllib3"),
        "pool-tls-noresume": pool("pool-tls-noresume"),
        "pool-tls": pool("pool-tls"),
        "reused": lambda path: _get(kept, path),
    }


def measure(servers: list[Server], ca: str, bundle: str, samples: int,
            rounds: int) -> dict[str, Phase]:
    phases: dict[str, Phase] = {}
    runners: dict[str, Callable[[str], None]] = {}
    for server in servers:
        for name, run in phases_for(server, ca, bundle).items():
            key = f"{server.name}/{name}"
            phases[key] = Phase(server.name, name)
            runners[key] = run
    for key, run in runners.items():  # warm-up: first connections, imports, caches
        for i in range(5):
            run(f"/{key}/warm{i}")
    per_round = max(1, samples // rounds)
    for r in range(rounds):
        order = list(runners)
        order = order[r % len(order):] + order[:r % len(order)]
        for key in order:
            run, phase = runners[key], phases[key]
            gc.collect()
            for i in range(per_round):
                wall, cpu = time.perf_counter(), time.process_time()
                run(f"/{key}/{r}-{i}")
                phase.cpu_ms.append((time.process_time() - cpu) * 1000)
                phase.wall_ms.append((time.perf_counter() - wall) * 1000)
    return phases


def context_costs(ca: str, bundle: str, samples: int) -> dict[str, float]:
    """Median ms of what urllib3 does before each handshake when given no context."""
    def median_ms(work: Callable[[], object]) -> float:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1000)
        return _round(statistics.median(times))

    def loaded(path: str) -> Callable[[], object]:
        return lambda: create_urllib3_context().load_verify_locations(path)

    return {
        "create_urllib3_context": median_ms(create_urllib3_context),
        "+ load test CA (1 cert)": median_ms(loaded(ca)),
        "+ load system bundle + CA": median_ms(loaded(bundle)),
        "+ load_default_certs()": median_ms(lambda: create_urllib3_context().load_default_certs()),
    }


def run(samples: int = 300, rounds: int = 10) -> dict[str, Any]:
    servers = [
        Server("tls13-ecdsa", "TLSv1.3", trustme.KeyType.ECDSA),
        Server("tls12-ecdsa", "TLSv1.2", trustme.KeyType.ECDSA),
        Server("tls13-rsa", "TLSv1.3", trustme.KeyType.RSA),
        Server("tls12-rsa", "TLSv1.2", trustme.KeyType.RSA),
    ]
    with tempfile.TemporaryDirectory(prefix="handshake-") as tmp:
        directory = Path(tmp)
        with nginx(directory, servers) as ca_path:
            ca = str(ca_path)
            bundle = str(directory / "bundle.pem")
            system = Path(SYSTEM_BUNDLE).read_bytes() if os.path.exists(SYSTEM_BUNDLE) else b""
            Path(bundle).write_bytes(system + ca_path.read_bytes())
            bundle_certs = Path(bundle).read_text().count("BEGIN CERTIFICATE")
            phases = measure(servers, ca, bundle, samples, rounds)
            contexts = context_costs(ca, bundle, 100)
        count_handshakes(directory, phases)
    nginx_version = version()
    return {
        "meta": {"python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
                 "urllib3": metadata.version("urllib3"), "nginx": nginx_version,
                 "cpus": os.cpu_count(), "bundle_certs": bundle_certs,
                 "samples": samples, "rounds": rounds},
        "phases": [p.summary() for p in phases.values()],
        "context_ms": contexts,
    }


def render(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"Python {meta['python']}, {meta['openssl']}, urllib3 {meta['urllib3']}, "
             f"{meta['nginx']}, {meta['cpus']} CPUs; bundle: {meta['bundle_certs']} "
             "certificates; loopback",
             "",
             "| server | phase | samples | median ms | p90 ms | CPU median ms | CPU p90 ms "
             "| nginx: connections | resumed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in result["phases"]:
        lines.append(f"| {p['server']} | {p['phase']} | {p['samples']} | {p['median_ms']} "
                     f"| {p['p90_ms']} | {p['cpu_median_ms']} | {p['cpu_p90_ms']} "
                     f"| {p['server_connections']} | {p['server_resumed']} |")
    lines += ["", "What urllib3 does per connect without a context (median ms):"]
    lines += [f"- {name}: {ms}" for name, ms in result["context_ms"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300, help="per phase and server")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--out", help="also write the Markdown page to this file")
    args = parser.parse_args(argv)
    result = run(args.samples, args.rounds)
    page = render(result)
    print(page)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.out:
        command = os.environ.get("BENCH_COMMAND") or "python -m bench.handshake " + " ".join(
            sys.argv[1:] if argv is None else argv)
        Path(args.out).write_text(f"# Reconnect cost: TLS handshakes\n\nWritten by "
                                  f"`{command}`; see bench/handshake.py for what each phase "
                                  f"is.\n\n{page}\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
