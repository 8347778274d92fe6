"""Issue 24, item 4: an origin's addresses, in the sync pools and the async pools.

One upstream listens on three loopback addresses (``--hosts 3``) with a certificate that
covers the name ``svc.poolclient.test``; each registry resolves that name with a resolver
the test controls (the gunicorn case, ``test_balance_gunicorn.py``, uses /etc/hosts and
getaddrinfo). Connections and requests are counted where they arrive, by the address the
upstream accepted them on.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import urllib3

from poolclient import Registry, Settings
from poolclient.resilience import PolicySettings
from tests.helpers import Upstream, start_upstream, wait_for

NAME = "svc.poolclient.test"


class Names:
    """A resolver: each name's addresses, changed by the test; every lookup counted."""

    def __init__(self, **names: list[str]) -> None:
        self.names = {name.replace("_", "."): list(a) for name, a in names.items()}
        self.lookups = 0
        self.lock = threading.Lock()

    def set(self, name: str, addresses: list[str]) -> None:
        with self.lock:
            self.names[name] = list(addresses)

    def __call__(self, host: str, port: int) -> list[str]:
        with self.lock:
            self.lookups += 1
            if host not in self.names:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return list(self.names[host])


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    server = start_upstream(str(tmp_path_factory.mktemp("three")), "--hosts", "3",
                            "--name", NAME)
    yield server
    server.stop()


@pytest.fixture
def names(three: Upstream) -> Names:
    return Names(**{NAME: three.hosts(3)})


def registry_for(three: Upstream, names: Names, **policy: Any) -> Registry:
    return Registry(Settings(ca_bundle=three.ca, maxsize=12), resolver=names,
                    policy=PolicySettings.from_env({}, **policy))


def url(three: Upstream, path: str = "/echo") -> str:
    return f"https://{NAME}:{three.port}{path}"


def by_address(three: Upstream, since: int = 0) -> tuple[Counter[str], Counter[str]]:
    """Connections and requests per address the upstream accepted on, for its connections
    numbered above ``since``."""
    conns, requests = Counter[str](), Counter[str]()
    for conn in three.stats()["connections"]:
        if conn["id"] > since:
            address = str(conn["local"]).rsplit(":", 1)[0]
            conns[address] += 1
            requests[address] += conn["requests"]
    return conns, requests


def last_id(three: Upstream) -> int:
    return max((c["id"] for c in three.stats()["connections"]), default=0)


def policy_of(registry: Registry, three: Upstream) -> Any:
    return registry.policy("https", NAME, three.port)


# --- sync pools -------------------------------------------------------------------------


def test_new_connections_go_to_the_least_connected_address(three: Upstream, names: Names):
    """Nine connections held open at once: three on each address, none left out, whatever
    order the resolver gave (urllib3 would have put all nine on the first)."""
    since = last_id(three)
    registry = registry_for(three, names)
    try:
        held = [registry.request("GET", url(three), preload_content=False) for _ in range(9)]
        assert all(r.status == 200 for r in held)
        conns, _ = by_address(three, since)
        assert sorted(conns.values()) == [3, 3, 3], conns
        snapshot = {a.address: a.connections
                    for a in policy_of(registry, three).snapshot().addresses}
        assert snapshot == dict.fromkeys(three.hosts(3), 3)
        for r in held:
            r.drain_conn()
            r.release_conn()
    finally:
        registry.close()
    assert names.lookups == 1  # the first connect resolved; nothing was due again since


def test_a_first_burst_waits_for_the_first_resolution(three: Upstream, names: Names):
    """Nine threads connect at once to an origin never resolved: one resolves, the others
    wait for its answer rather than connect to whatever getaddrinfo gives first."""
    gate = threading.Event()

    def slow_names(host: str, port: int) -> list[str]:
        gate.wait(10)
        return names(host, port)

    since = last_id(three)
    registry = Registry(Settings(ca_bundle=three.ca, maxsize=12, connect_retries=0),
                        resolver=slow_names)
    held: list[Any] = []
    lock = threading.Lock()

    def call() -> None:
        response = registry.request("GET", url(three), preload_content=False)
        with lock:
            held.append(response)

    threads = [threading.Thread(target=call) for _ in range(9)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: names.lookups == 0 and policy_of(registry, three).resolving, 10)
        gate.set()
        for t in threads:
            t.join()
        assert [r.status for r in held] == [200] * 9
        conns, _ = by_address(three, since)
        assert sorted(conns.values()) == [3, 3, 3], conns
        assert names.lookups == 1
        for r in held:
            r.drain_conn()
            r.release_conn()
    finally:
        gate.set()
        registry.close()


def test_an_unused_origin_is_resolved_by_its_next_connect_not_in_the_background(
        three: Upstream, names: Names):
    """The watchdog resolves only origins with connections: after the last one closes, the
    name is left alone (a process that called a thousand hosts once must not resolve them
    every few seconds), and the next connect resolves it first, so it goes where the name
    points now."""
    first, second = three.hosts(2)
    names.set(NAME, [first])
    registry = registry_for(three, names, dns_refresh=0.2)
    try:
        policy = policy_of(registry, three)
        assert registry.request("GET", url(three)).status == 200
        registry.close()  # no connection left (the policies stay; later calls get new pools)
        assert sum(a.connections for a in policy.snapshot().addresses) == 0
        wait_for(policy.refresh_due, 10)  # due, and nobody resolving it
        assert registry.origins().refresh_due() == 0  # the watchdog's check: not in use
        lookups = names.lookups
        names.set(NAME, [second])
        since = last_id(three)
        assert registry.request("GET", url(three)).status == 200
        assert names.lookups == lookups + 1
        assert set(by_address(three, since)[0]) == {second}
    finally:
        registry.close()


def test_closed_connections_are_no_longer_counted(three: Upstream, names: Names):
    registry = registry_for(three, names)
    try:
        registry.request("GET", url(three))
        registry.connection_from_host(NAME, three.port, "https").close()
        assert {a.connections for a in policy_of(registry, three).snapshot().addresses} == {0}
    finally:
        registry.close()


def test_the_certificate_is_checked_against_the_name(tmp_path, names: Names):
    """Only the TCP connect goes to the chosen address: TLS still verifies the host name."""
    other = start_upstream(str(tmp_path), "--hosts", "3")  # its certificate: no NAME
    try:
        registry = Registry(Settings(ca_bundle=other.ca, connect_retries=0), resolver=Names(
            **{NAME: other.hosts(3)}))
        with pytest.raises(urllib3.exceptions.SSLError, match="svc.poolclient.test"):
            registry.request("GET", f"https://{NAME}:{other.port}/echo", retries=False)
        registry.close()
    finally:
        other.stop()
    del names


def test_an_address_gone_from_the_name_gets_no_more_requests(three: Upstream, names: Names):
    """Connections on all three, then the name loses one address: after the next
    resolution (a watchdog's, off the request path) its idle connections are closed when
    next taken, no new one goes there, and no call fails."""
    registry = registry_for(three, names, dns_refresh=0.2)
    first, second, third = three.hosts(3)
    try:
        held = [registry.request("GET", url(three), preload_content=False) for _ in range(6)]
        for r in held:
            r.drain_conn()
            r.release_conn()
        names.set(NAME, [first, second])
        policy = policy_of(registry, three)
        wait_for(lambda: {a.address: a.state for a in policy.snapshot().addresses}.get(third)
                 in ("gone", None), timeout=10)
        since = last_id(three)
        before = by_address(three)[1][third]
        statuses = [registry.request("GET", url(three)).status for _ in range(40)]
        held = [registry.request("GET", url(three), preload_content=False) for _ in range(6)]
        statuses += [r.status for r in held]
        for r in held:
            r.drain_conn()
            r.release_conn()
        assert statuses == [200] * 46
        assert by_address(three)[1][third] == before  # not one more request
        assert third not in by_address(three, since)[0]
        assert third not in {a.address for a in policy.snapshot().addresses}
    finally:
        registry.close()


def test_a_refused_address_is_skipped_then_ejected(three: Upstream, names: Names):
    """An address nothing listens on (127.0.9.9): the connect moves on to a live address
    in the same call, as a retry on another address, and after three failures the address
    is ejected; no call fails."""
    dead = "127.0.9.9"
    names.set(NAME, [dead, *three.hosts(2)])
    registry = registry_for(three, names)
    try:
        policy = policy_of(registry, three)
        held = []
        for _ in range(12):
            held.append(registry.request("GET", url(three), preload_content=False))
        assert [r.status for r in held] == [200] * 12
        for r in held:
            r.drain_conn()
            r.release_conn()
        snap = policy.snapshot()
        states = {a.address: a.state for a in snap.addresses}
        assert states[dead] == "ejected"
        assert snap.budget.retried["other_address"] >= 3
        assert registry.stats().pools[0].errors == 0
    finally:
        registry.close()


def test_a_black_holed_address_costs_only_its_share(three: Upstream, names: Names):
    """An address whose listen queue is full (connects hang, as behind a black hole) ahead
    of a live one: with a deadline equal to the connect timeout, the call still succeeds,
    which it cannot if the first address took the whole timeout (urllib3 #2055)."""
    hole, live = "127.0.9.10", three.hosts(1)[0]
    listener = socket.socket()
    listener.bind((hole, three.port))
    listener.listen(0)
    fillers = []
    registry = Registry(Settings(ca_bundle=three.ca, connect_timeout=3.0, connect_retries=0),
                        resolver=names, policy=PolicySettings.from_env({}, dns_refresh=0.2))
    policy = policy_of(registry, three)

    def addresses() -> dict[str, Any]:
        return {a.address: a for a in policy.snapshot().addresses}

    try:
        for _ in range(4):  # fill the accept queue: further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((hole, three.port))
            fillers.append(filler)
        names.set(NAME, [hole])
        with pytest.raises(urllib3.exceptions.ConnectTimeoutError):  # a black hole indeed
            registry.request("GET", url(three), retries=False)
        # One connection on the live address, held (the origin has no connection, so this
        # connect resolves the name first); then the hole joins the name with none, so the
        # next new connection tries the hole first (least-connected).
        names.set(NAME, [live])
        held = registry.request("GET", url(three), preload_content=False)
        assert set(addresses()) == {live}
        names.set(NAME, [hole, live])  # the watchdog resolves it: the origin is in use
        wait_for(lambda: set(addresses()) == {hole, live}, 10)
        assert registry.request("GET", url(three), deadline=3.0).status == 200
        assert addresses()[hole].failures == 1  # tried first, and given up in time
        assert addresses()[live].connections == 2
        held.drain_conn()
        held.release_conn()
    finally:
        registry.close()
        for filler in fillers:
            filler.close()
        listener.close()


def test_balance_off_connects_as_urllib3_does(three: Upstream, names: Names):
    """POOLCLIENT_BALANCE=false: no resolver call, the name resolved by getaddrinfo; here a
    name getaddrinfo does not know fails as urllib3's NameResolutionError."""
    registry = registry_for(three, names, balance=False)
    try:
        with pytest.raises(urllib3.exceptions.NameResolutionError):
            registry.request("GET", url(three), retries=False)
        assert names.lookups == 0
        assert policy_of(registry, three).snapshot().addresses == ()
    finally:
        registry.close()


def test_a_name_that_does_not_resolve_is_urllib3s_error(three: Upstream):
    registry = registry_for(three, Names())
    try:
        with pytest.raises(urllib3.exceptions.NameResolutionError):
            registry.request("GET", url(three), retries=False)
    finally:
        registry.close()


# --- async pools ------------------------------------------------------------------------


def test_async_connections_spread_and_leave_a_gone_address(three: Upstream, names: Names):
    registry = registry_for(three, names, dns_refresh=0.2)
    first, second, third = three.hosts(3)
    since = last_id(three)

    async def hold(client: httpx2.AsyncClient, n: int) -> list[int]:
        answers = await asyncio.gather(*(client.get(url(three, "/slow?seconds=0.3"))
                                         for _ in range(n)))
        return [a.status_code for a in answers]

    async def main() -> tuple[list[int], Any, list[int]]:
        async with httpx2.AsyncClient(transport=registry.httpx2_async_transport()) as client:
            statuses = await hold(client, 9)
            spread = by_address(three, since)[0]
            names.set(NAME, [first, second])
            policy = policy_of(registry, three)
            while {a.address: a.state for a in policy.snapshot().addresses}.get(
                    third) not in ("gone", None):
                await asyncio.sleep(0.05)
            later = last_id(three)
            before = by_address(three)[1][third]
            statuses += await hold(client, 9)
            statuses += [(await client.get(url(three))).status_code for _ in range(20)]
            after = by_address(three)[1][third]
            assert third not in by_address(three, later)[0]
            return statuses, spread, [before, after]

    try:
        statuses, spread, third_requests = asyncio.run(main())
    finally:
        registry.close()
    assert statuses == [200] * 38
    assert sorted(spread.values()) == [3, 3, 3], spread
    assert third_requests[0] == third_requests[1]


def test_a_closed_loops_connections_are_no_longer_counted(three: Upstream, names: Names):
    """A loop that ended with its client open: its pools are dropped (descriptors released,
    nothing written), and their connections leave the addresses' counts."""
    registry = registry_for(three, names)

    async def main() -> None:
        client = httpx2.AsyncClient(transport=registry.httpx2_async_transport())
        assert (await client.get(url(three))).status_code == 200  # left open on purpose

    try:
        asyncio.run(main())
        policy = policy_of(registry, three)
        assert sum(a.connections for a in policy.snapshot().addresses) == 1
        registry.close()
        assert sum(a.connections for a in policy.snapshot().addresses) == 0
    finally:
        registry.close()


def test_a_pool_through_a_proxy_leaves_the_connect_to_urllib3(three: Upstream, names: Names):
    """Through a proxy the connection's peer is the proxy: the origin's addresses must not
    replace it, so such a pool's connections are never balanced."""
    from urllib3.util import parse_url

    from poolclient.pool import CountedHTTPSConnectionPool

    registry = registry_for(three, names)
    try:
        policy = policy_of(registry, three)
        direct = CountedHTTPSConnectionPool(NAME, three.port)
        proxied = CountedHTTPSConnectionPool(NAME, three.port,
                                             _proxy=parse_url("http://127.0.0.1:9"))
        direct.policy = proxied.policy = policy
        assert direct._new_conn().policy is policy
        assert proxied._new_conn().policy is None
    finally:
        registry.close()
