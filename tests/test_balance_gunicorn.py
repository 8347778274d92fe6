"""Issue 24, item 4, under real gunicorn (``-w 2 --threads 6 -k gthread``, defaults but
``POOLCLIENT_MAX_LIFETIME=10``): one name in /etc/hosts, resolved by getaddrinfo as any app
would, its addresses changed under load.

Four upstream processes, one per loopback address, share a port, a CA and a certificate
for the name; each records its connections and their requests, which is what is
counted. 12 clients call ``/bslow`` (a 20 ms upstream call) so that every thread of both
workers is busy. /etc/hosts is restored whatever happens. The name's addresses: three; one
removed; one added; then one of them killed (SIGKILL) while still in the name. 35 s.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import urllib3

from app.upstream import loopback_hosts
from tests.helpers import health_by_worker, start_upstream, wait_for
from tests.test_resilience_gunicorn import Clients, Record

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

HOSTS_FILE = "/etc/hosts"
NAME = f"pc-{os.getpid()}.poolclient.test"
APP = "tests.apps.two_origins:app"


@pytest.fixture
def hosts_file() -> Iterator[Callable[[list[str]], None]]:
    """``point(addresses)``: /etc/hosts gives NAME those addresses (nothing: none). The file
    is rewritten in place (it may be a bind mount) and restored byte for byte."""
    if not os.access(HOSTS_FILE, os.W_OK):  # CI and make test here run as root
        pytest.skip(f"changing a name's addresses needs write access to {HOSTS_FILE}")
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


class Fleet:
    """One upstream process per loopback address, all on one port, one CA, a certificate
    for NAME: so that one address can die (SIGKILL) while the others serve."""

    def __init__(self, directory: str, n: int) -> None:
        first = start_upstream(directory, "--name", NAME)
        self.port = first.port
        self.ca = first.ca
        self.hosts = loopback_hosts(n)
        self.servers = [first] + [start_upstream(directory, "--host", host, "--name", NAME,
                                                 port=self.port)
                                  for host in self.hosts[1:]]

    def stats(self) -> list[dict]:
        """Each server's record, by address (a killed one's is gone with it: empty)."""
        return [s.stats() if s.proc.poll() is None else {"connections": []}
                for s in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                server.stop()


@pytest.fixture
def four(tmp_path) -> Iterator[Fleet]:
    fleet = Fleet(str(tmp_path / "certs"), 4)
    yield fleet
    fleet.stop()


def per_address(fleet: Fleet) -> tuple[Counter[str], Counter[str]]:
    """Connections and requests per address, as the servers recorded them."""
    conns, requests = Counter[str](), Counter[str]()
    for host, record in zip(fleet.hosts, fleet.stats(), strict=True):
        for conn in record["connections"]:
            conns[host] += 1
            requests[host] += conn["requests"]
    return conns, requests


def requests_on(fleet: Fleet, address: str) -> int:
    return per_address(fleet)[1][address]


def open_on(fleet: Fleet, address: str) -> int:
    record = fleet.servers[fleet.hosts.index(address)].stats()
    return sum(1 for c in record["connections"] if c["open"])


def test_addresses_share_the_load_and_follow_the_name(gunicorn, four: Fleet, hosts_file,
                                                      record_property):
    h0, h1, h2, h3 = four.hosts
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
        # A new connection per call, so that the calls spread over both workers (a
        # keep-alive connection stays with the worker that accepted it).
        clients.start(12, lambda: "/bslow", fresh=True)
        # Three addresses: new connections within 20 % of even.
        wait_for(lambda: sum(per_address(four)[0].values()) >= 12, 20, "the first connections")
        time.sleep(4)  # load, not synchronisation: what is measured is what 4 s of it did
        conns, requests = per_address(four)
        figures["three_connections"] = dict(conns)
        figures["three_requests"] = dict(requests)

        # One address leaves the name: within a resolution (5 s) and a checkout its
        # connections close; after that it gets no request, and nothing fails.
        hosts_file([h0, h1])
        removed_at = time.monotonic()
        wait_for(lambda: open_on(four, h2) == 0, 20, "h2's connections to close")
        figures["removed_left_after_s"] = round(time.monotonic() - removed_at, 1)
        h2_then = requests_on(four, h2)

        # Two addresses: each at least 30 % of the requests.
        two_before = per_address(four)[1]
        time.sleep(4)
        two_after = per_address(four)[1]
        two = {a: two_after[a] - two_before[a] for a in (h0, h1, h2)}
        figures["two_requests"] = two
        figures["h2_requests_after_it_left"] = requests_on(four, h2) - h2_then

        # An address joins the name: with connections 10 s old at most, it gets traffic
        # within 20 s.
        hosts_file([h0, h1, h3])
        added_at = time.monotonic()
        wait_for(lambda: requests_on(four, h3) > 0, 30, "the new address to get traffic")
        figures["added_reached_after_s"] = round(time.monotonic() - added_at, 1)

        # One address dies (SIGKILL: its connections reset, its port refuses) while still
        # in the name: at most 1 % of the calls from then on fail.
        time.sleep(1)
        killed_at = time.monotonic()
        four.servers[four.hosts.index(h1)].kill()
        time.sleep(6)
        ended_at = time.monotonic()
    finally:
        clients.join()
    calls = record.calls.get("/bslow", [])
    statuses = Counter(status for _, _, status in calls)
    after_kill = [status for started, _, status in calls if killed_at <= started < ended_at]
    figures["calls"] = len(calls)
    figures["failed"] = len(calls) - statuses[200]
    figures["calls_after_kill"] = len(after_kill)
    figures["failed_after_kill"] = sum(1 for status in after_kill if status != 200)
    # Each failure: when it started, in seconds from the kill, and its status.
    figures["failures"] = [(round(started - killed_at, 2), status)
                           for started, _, status in calls if status != 200]
    docs = health_by_worker(server, server.worker_pids())
    figures["h1_after_kill"] = [a["state"] for doc in docs.values() for o in doc["origins"]
                                for a in o["addresses"] if a["address"] == h1]
    figures["addresses_by_worker"] = {
        pid: {a["address"]: (a["state"], a["connections"])
              for o in doc["origins"] for a in o["addresses"]} for pid, doc in docs.items()}
    metrics = urllib3.request("GET", server.url + "/metrics", timeout=10).data.decode()
    figures["dns_refreshes"] = family_sum(metrics, "poolclient_dns_refreshes_total",
                                          'result="success"')
    figures["ejections"] = family_sum(metrics, "poolclient_ejections_total")
    record_property("figures", figures)
    print(json.dumps(figures))

    even = sum(conns.values()) / 3
    assert set(conns) == {h0, h1, h2}, figures
    assert all(abs(n - even) <= 0.2 * even for n in conns.values()), figures
    total_two = two[h0] + two[h1]
    assert two[h2] == 0 and figures["h2_requests_after_it_left"] == 0, figures
    assert min(two[h0], two[h1]) >= 0.3 * total_two, figures
    assert figures["added_reached_after_s"] <= 20, figures  # type: ignore[operator]
    assert len(after_kill) > 300, figures
    assert figures["failed_after_kill"] <= 0.01 * len(after_kill), figures  # type: ignore[operator]
    assert figures["failed"] <= 0.01 * len(calls), figures  # type: ignore[operator]
    assert server.worker_pids() == workers
    assert all(by_worker for by_worker in figures["addresses_by_worker"].values()), figures  # type: ignore[attr-defined]
    # The killed address holds no connection in either worker (ejected once a worker
    # failed three connects to it, else merely unused: the others had room).
    assert all(by_worker[h1][1] == 0 for by_worker in figures["addresses_by_worker"].values()  # type: ignore[attr-defined]
               if h1 in by_worker), figures
    # Summed over both workers: a resolution every 5 s or so in each.
    assert figures["dns_refreshes"] >= 6, figures  # type: ignore[operator]


def family_sum(text: str, name: str, having: str = "") -> float:
    """The sum of a Prometheus family's samples (those whose labels contain ``having``)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and having in line)


@pytest.mark.parametrize(("worker", "app", "path"), [
    (["-k", "gevent", "--worker-connections", "6"], APP, "/bslow"),
    (["-k", "asgi"], "app.asgi_example:app", "/upstream/slow?seconds=0.02"),
], ids=["gevent", "asgi"])
def test_other_workers_spread_their_connections(gunicorn, four: Fleet, hosts_file,
                                                record_property, worker, app, path):
    """The same choice under ``-k gevent`` (greenlets, gevent's resolver, the watchdog a
    greenlet) and under ``-k asgi`` (the async pools, the first resolution in the loop's
    executor): three addresses, new connections within 20 % of even, nothing fails."""
    h0, h1, h2, _ = four.hosts
    hosts_file([h0, h1, h2])
    base = f"https://{NAME}:{four.port}"
    server = gunicorn(["-w", "2", *worker, app],
                      {"A_URL": base, "B_URL": base, "UPSTREAM_URL": base,
                       "POOLCLIENT_CA_BUNDLE": four.ca, "POOLCLIENT_MAXSIZE": "6"})
    record = Record()
    clients = Clients(server, record)
    try:
        clients.start(12, lambda: path, fresh=True)
        wait_for(lambda: sum(per_address(four)[0].values()) >= 12, 20, "the first connections")
        time.sleep(3)  # load, not synchronisation
    finally:
        clients.join()
    conns, requests = per_address(four)
    statuses = Counter(status for calls in record.calls.values() for _, _, status in calls)
    figures = {"connections": dict(conns), "requests": dict(requests),
               "statuses": dict(statuses)}
    record_property("figures", figures)
    print(json.dumps(figures))
    even = sum(conns.values()) / 3
    assert set(conns) == {h0, h1, h2}, figures
    assert all(abs(n - even) <= 0.2 * even for n in conns.values()), figures
    assert set(statuses) == {200}, figures
