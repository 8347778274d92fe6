"""The upstreams ``make bench`` runs every contender against (issue 16): one nginx with one
TLS server per upstream behaviour, and the CA file the contenders verify with.

- ``b``: ``keepalive_requests 100``, Apache's default (``MaxKeepAliveRequests 100``); wrk;
- ``c``: ``keepalive_requests 1000``, nginx's default; wrk;
- ``d``: ``keepalive_timeout 5s`` (Node.js and Apache close idle connections after 5 s), with
  bursts separated by longer idle gaps (``bench/burst.py``);
- ``a``: keep-alive that never ends, the ideal upstream; wrk;
- ``a-ca``: the same, trusting only the one-certificate test CA: the figures before issue 16.

Every scenario but ``a-ca`` verifies against the system's bundle (about 145 roots, as a real
deployment does) with the test CA appended, given as ``BENCH_CA`` and
``POOLCLIENT_CA_BUNDLE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.nginx import Server

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str  # the row group's heading
    stands_for: str  # the upstream behaviour it stands for
    server: str  # which Server of SERVERS
    bundle: bool = True  # system bundle + test CA; False: the test CA alone
    bursts: bool = False  # bench/burst.py's bursts and idle gaps instead of wrk


SERVERS = {
    "ideal": dict(),
    "kr100": dict(keepalive_requests=100),
    "kr1000": dict(keepalive_requests=1000),
    "idle5": dict(keepalive_timeout="5s"),
}

# In the report's order: the realistic upstreams first.
SCENARIOS = {s.key: s for s in (
    Scenario("b", "(b) keep-alive ends after 100 requests",
             "Apache's default MaxKeepAliveRequests 100 (nginx keepalive_requests 100)",
             "kr100"),
    Scenario("c", "(c) keep-alive ends after 1,000 requests",
             "nginx's default keepalive_requests 1000", "kr1000"),
    Scenario("d", "(d) bursts after idle gaps longer than the keep-alive timeout",
             "Node.js and Apache closing idle connections after 5 s (nginx keepalive_timeout "
             "5s)", "idle5", bursts=True),
    Scenario("a", "(a) ideal upstream: keep-alive never ends",
             "an upstream that never closes a connection", "ideal"),
    Scenario("a-ca", "(a) ideal upstream, test CA only (the figures before issue 16)",
             "the same, verifying against the one-certificate test CA", "ideal",
             bundle=False),
)}


def servers() -> dict[str, Server]:
    """One nginx Server per upstream behaviour (TLS 1.2 and 1.3, ECDSA, as before)."""
    return {name: Server(name, "TLSv1.2 TLSv1.3", **settings)  # type: ignore[arg-type]
            for name, settings in SERVERS.items()}


def system_bundle() -> Path:
    """The system's CA bundle, else certifi's."""
    if os.path.exists(SYSTEM_BUNDLE):
        return Path(SYSTEM_BUNDLE)
    import certifi

    return Path(certifi.where())


def write_bundle(test_ca: Path, out: Path) -> Path:
    """``out``: the system bundle, then the test CA, in one PEM file."""
    roots = system_bundle().read_bytes()
    out.write_bytes(roots.rstrip(b"\n") + b"\n" + test_ca.read_bytes())
    return out


def certificates(path: Path) -> int:
    return path.read_text().count("-----BEGIN CERTIFICATE-----")


def parse(text: str) -> list[str]:
    """``"a,b"`` (or ``"all"``/empty) to scenario keys, in the report's order."""
    wanted = [k.strip() for k in text.split(",") if k.strip()]
    if not wanted or wanted == ["all"]:
        return list(SCENARIOS)
    unknown = [k for k in wanted if k not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown}; choose from {list(SCENARIOS)}")
    return [k for k in SCENARIOS if k in wanted]
