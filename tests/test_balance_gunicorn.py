"""Issue 24, item 4, under real gunicorn (``-w 2 --threads 6 -k gthread``, defaults but
``POOLCLIENT_MAX_LIFETIME=10``): one name in /etc/hosts, resolved by getaddrinfo as any app
would, its addresses changed under load.

One upstream listens on four loopback addresses (``--hosts 4``) with a certificate for
the name; it records each connection with the address it accepted it on, which is what
is counted. 12 clients call ``/bslow`` (a 20 ms upstream call) so that every thread of both
workers is busy. /etc/hosts is restored whatever happens. About a minute.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import Upstream, start_upstream, wait_for
from tests.test_resilience_gunicorn import Clients, Record

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

HOSTS_FILE = "/etc/hosts"
NAME = f"pc-{os.getpid()}.poolclient.test"
APP = "tests.apps.two_origins:app"


@pytest.fixture
def hosts_file() -> Iterator[Callable[[list[str]], None]]:
    """``point(addresses)``: /etc/hosts gives NAME those addresses (nothing: none). The file
    is rewritten in place (it may be a bind mount) and restored byte for byte."""
    with open(HOSTS_FILE, "rb") as f:
        original = f.read()

    def point(addresses: list[str]) -> None:
        lines = "".join(f"{address} {NAME}\n" for address in addresses)
        with open(HOSTS_FILE, "wb") as f:
            f.write(original + (b"" if original.endswith(b"\n") else b"\n") + lines.encode())

    try:
        yield point
    finally:
        with open(HOSTS_FILE, "wb") as f:
            f.write(original)


@pytest.fixture
def four(tmp_path) -> Iterator[Upstream]:
    server = start_upstream(str(tmp_path / "certs"), "--hosts", "4", "--name", NAME)
    yield server
    server.stop()


def per_address(upstream: Upstream, since: int = 0) -> tuple[Counter[str], Counter[str], int]:
    """New connections and requests per address, for connections numbered above
    ``since``; and the last connection's number."""
    conns, requests, last = Counter[str](), Counter[str](), since
    for conn in upstream.stats()["connections"]:
        last = max(last, conn["id"])
        if conn["id"] > since:
            address = str(conn["local"]).rsplit(":", 1)[0]
            conns[address] += 1
            requests[address] += conn["requests"]
    return conns, requests, last


def requests_on(upstream: Upstream, address: str) -> int:
    return per_address(upstream)[1][address]


def test_addresses_share_the_load_and_follow_the_name(gunicorn, four: Upstream, hosts_file,
                                                      record_property):
    h0, h1, h2, h3 = four.hosts(4)
    hosts_file([h0, h1, h2])
    base = f"https://{NAME}:{four.port}"
    server = gunicorn(["-w", "2", "--threads", "6", "-k", "gthread", APP],
                      {"A_URL": base, "B_URL": base, "POOLCLIENT_CA_BUNDLE": four.ca,
                       "POOLCLIENT_MAX_LIFETIME": "10"})
    workers = server.worker_pids()
    record = Record()
    clients = Clients(server, record)
    figures: dict[str, object] = {}
    try:
        clients.start(12, lambda: "/bslow")
        # Three addresses: new connections within 20 % of even.
        wait_for(lambda: sum(per_address(four)[0].values()) >= 12, 20, "the first connections")
        time.sleep(6)
        conns, requests, _ = per_address(four)
        figures["three_connections"] = dict(conns)
        figures["three_requests"] = dict(requests)

        # One address leaves the name: within a resolution (5 s) and a checkout its
        # traffic stops; nothing fails.
        hosts_file([h0, h1])
        removed_at = time.monotonic()
        wait_for(lambda: not any(c["open"] for c in four.stats()["connections"]
                                 if str(c["local"]).startswith(h2 + ":")
                                 or str(c["local"]) == h2), 20, "h2's connections to close")
        figures["removed_left_after_s"] = round(time.monotonic() - removed_at, 1)
        h2_then = requests_on(four, h2)

        # Two addresses: each at least 30 % of the requests.
        _, _, since = per_address(four)
        two_before = per_address(four)[1]
        time.sleep(6)
        two_after = per_address(four)[1]
        two = {a: two_after[a] - two_before[a] for a in (h0, h1, h2)}
        figures["two_requests"] = two
        figures["h2_requests_after_it_left"] = requests_on(four, h2) - h2_then

        # An address joins the name: with connections 10 s old at most, it gets traffic
        # within 20 s.
        hosts_file([h0, h1, h3])
        added_at = time.monotonic()
        wait_for(lambda: per_address(four)[1][h3] > 0, 30, "the new address to get traffic")
        figures["added_reached_after_s"] = round(time.monotonic() - added_at, 1)
    finally:
        clients.join()
    statuses = Counter(status for _, _, status in record.calls.get("/bslow", []))
    calls = sum(statuses.values())
    figures["calls"] = calls
    figures["failed"] = calls - statuses[200]
    record_property("figures", figures)
    print(json.dumps(figures))

    even = sum(conns.values()) / 3
    assert set(conns) == {h0, h1, h2}, figures
    assert all(abs(n - even) <= 0.2 * even for n in conns.values()), figures
    total_two = two[h0] + two[h1]
    assert two[h2] == 0 and figures["h2_requests_after_it_left"] == 0, figures
    assert min(two[h0], two[h1]) >= 0.3 * total_two, figures
    assert figures["added_reached_after_s"] <= 20, figures  # type: ignore[operator]
    assert calls > 1000 and figures["failed"] <= 0.01 * calls, figures  # type: ignore[operator]
    assert server.worker_pids() == workers
