"""The fault-injection suite: real gunicorn workers against a TLS upstream that misbehaves
on purpose (``app.upstream``: idle close, drop, reset, garbage, stall, kill and restart,
expired certificate, a thousand hosts).

Every figure that matters is counted where it happens and asserted: requests the upstream
received (by request id), answers the clients got, sockets each process holds (read from
/proc), and the pools' own counters.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import pytest
import urllib3

from tests.helpers import (
    Gunicorn,
    Upstream,
    health_by_worker,
    load,
    open_fds,
    other_ca_file,
    refused_url,
    sockets_to,
    start_upstream,
    wait_for,
)

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

CALLER = "tests.apps.caller:app"


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, float, dict]:
    """One GET on a fresh connection: status, JSON body, seconds taken, response headers."""
    started = time.monotonic()
    with urllib3.PoolManager(retries=False) as http:
        r = http.request("GET", url, timeout=30,
                         headers={"Connection": "close", **(headers or {})})
    return r.status, json.loads(r.data), time.monotonic() - started, dict(r.headers)


def env_for(upstream: Upstream, **extra: str) -> dict[str, str]:
    return {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca, **extra}


def calls(server: Gunicorn, *urls: str, **params: str) -> tuple[int, dict]:
    """The caller app's /calls: its answer's status and JSON."""
    query = urlencode([("url", u) for u in urls] + list(params.items()))
    status, body, _, _ = get(f"{server.url}/calls?{query}")
    return status, body


def only_health(server: Gunicorn) -> dict:
    (health,) = health_by_worker(server, server.worker_pids()).values()
    return health


# --- stale keep-alive ------------------------------------------------------------------


@pytest.mark.parametrize("idle_timeout", [None, "0.9"], ids=["default-idle-timeout",
                                                             "idle-timeout-0.9"])
def test_upstream_closing_idle_connections_after_1s(gunicorn, tmp_path, idle_timeout,
                                                     record_property):
    """The upstream closes keep-alive connections idle for 1 s; calls come 0.95-1.2 s apart,
    so each reuse races the close. Every call succeeds, and the upstream answered each
    exactly once. With POOLCLIENT_IDLE_TIMEOUT=0.9 the pool never even tries: each call
    gets a new connection (expired by the pool, or seen closed), and nothing is retried."""
    upstream = start_upstream(str(tmp_path / "up"), "--idle-close", "1")
    try:
        env = env_for(upstream)
        if idle_timeout:
            env["POOLCLIENT_IDLE_TIMEOUT"] = idle_timeout
        server = gunicorn(["-w", "1", "--threads", "2"], env)
        statuses = []
        for i in range(7):
            if i:
                time.sleep(random.uniform(0.95, 1.2))  # the spacing under test
            statuses.append(get(f"{server.url}/upstream/items?i={i}")[0])
        assert statuses == [200] * 7
        seen = upstream.stats()
        answered = seen["requests"] - seen["dropped"]
        assert answered == 7
        totals = only_health(server)["totals"]
        assert totals["errors"] == 0
        record_property("figures", {k: totals[k] for k in (
            "requests", "connections_opened", "expired", "retried", "errors")})
        if idle_timeout:
            assert (totals["connections_opened"], totals["retried"]) == (7, 0)
            assert seen["dropped"] == 0
    finally:
        upstream.stop()


@pytest.mark.parametrize("via", ["request", "session"])
def test_post_on_a_dead_connection_reaches_the_upstream_once(gunicorn, upstream, via):
    """The upstream drops the next request on the pooled connection without a byte of
    answer. A POST fails as 502 JSON and the upstream received it once; a GET in the same
    situation succeeds, sent again once on a new connection."""
    server = gunicorn(["-w", "1", "--threads", "1", CALLER], env_for(upstream))
    post_id, get_id = uuid.uuid4().hex, uuid.uuid4().hex
    status, body = calls(server, upstream.url + "/drop-next", via=via)
    assert (status, body["status"]) == (200, 200)
    status, body = calls(server, upstream.url + "/orders", method="POST", id=post_id, via=via)
    assert status == 502 and "error" in body
    calls(server, upstream.url + "/drop-next", via=via)
    status, body = calls(server, upstream.url + "/items", id=get_id, via=via)
    assert (status, body["status"]) == (200, 200)
    seen = upstream.stats()
    assert seen["received"][post_id] == 1
    assert seen["received"][get_id] == 2  # dropped once, answered once
    assert seen["duplicates"] == [get_id]
    totals = only_health(server)["totals"]
    assert totals["retried"] == 1


# --- timeouts and exhaustion -----------------------------------------------------------


def test_slow_upstream_is_504_within_the_read_timeout_then_recovers(gunicorn, upstream,
                                                                    record_property):
    """5 s upstream, POOLCLIENT_READ_TIMEOUT=1: 504 JSON in under 3 s, received once; the
    next call succeeds."""
    server = gunicorn(["-w", "1", "--threads", "2"],
                      env_for(upstream, POOLCLIENT_READ_TIMEOUT="1"))
    status, body, elapsed, _ = get(server.url + "/upstream/slow?seconds=5")
    assert status == 504 and "timed out" in body["error"]
    record_property("figures", {"seconds_to_504": round(elapsed, 3)})
    assert elapsed < 3
    assert upstream.stats()["requests"] == 1
    status, body, _, _ = get(server.url + "/upstream/items")
    assert status == 200 and body["path"] == "/items"


def test_exhausted_pool_is_503_with_retry_after_and_counted(gunicorn, upstream,
                                                            record_property):
    """POOLCLIENT_MAXSIZE=1, POOLCLIENT_POOL_TIMEOUT=0.5, four concurrent 2 s calls: one
    succeeds, the others get 503 JSON with Retry-After in under 1.8 s; /health counts the
    waits."""
    server = gunicorn(["-w", "1", "--threads", "4"],
                      env_for(upstream, POOLCLIENT_MAXSIZE="1", POOLCLIENT_POOL_TIMEOUT="0.5"))
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: get(server.url + "/upstream/slow?seconds=2"),
                              range(4)))
    assert sorted(r[0] for r in results) == [200, 503, 503, 503]
    for status, body, elapsed, headers in results:
        if status == 503:
            assert elapsed < 1.8
            assert headers["Retry-After"] == "1"
            assert "no upstream connection free" in body["error"]
    totals = only_health(server)["totals"]
    record_property("figures", {"seconds_to_503": sorted(round(r[2], 3) for r in results
                                                         if r[0] == 503),
                                "waits": totals["waits"]})
    assert totals["waits"] >= 3
    assert upstream.stats()["requests"] == 1


# --- recovery --------------------------------------------------------------------------


def test_upstream_killed_and_restarted_under_load(gunicorn, upstream, record_property):
    """Eight clients keep calling while the upstream is SIGKILLed and restarted on the same
    port: while it is down, 502 JSON, then 503 JSON once the workers' circuit breakers open
    (issue 24); after the restart, refusals (503) only until each breaker's probe succeeds,
    then every request succeeds; never a broken answer."""
    server = gunicorn(["-w", "2", "--threads", "4"], env_for(upstream))
    workers = server.worker_pids()
    outcomes: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        with urllib3.PoolManager(maxsize=1, retries=False) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = http.request("GET", server.url + "/upstream/items",
                                          timeout=30).status
                except urllib3.exceptions.HTTPError:
                    status = -1
                with lock:
                    outcomes.append((started, status))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(outcomes) > 200, 20, "load before the kill")
        upstream.kill()
        wait_for(lambda: any(s == 502 for _, s in outcomes[-50:]), 10, "502s while it is down")
        upstream.restart()
        restarted = time.monotonic()
        # The breakers (open at most POOLCLIENT_BREAKER_OPEN=5 s the first time) let a
        # probe through, and once it succeeds every call does: 300 in a row.
        wait_for(lambda: len(outcomes) > 300 and outcomes[-1][0] > restarted and all(
            s == 200 for t0, s in outcomes[-300:] if t0 > restarted) and sum(
            1 for t0, s in outcomes[-300:] if t0 > restarted) == 300, 60,
            "300 successes in a row after the restart")
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = Counter(s for t0, s in outcomes if t0 > restarted)
    before = Counter(s for t0, s in outcomes if t0 <= restarted)
    record_property("figures", {"before_restart": dict(before), "after_restart": dict(after)})
    assert set(after) <= {200, 503} and after[200] >= 300, after
    assert before[502] > 0 and -1 not in before  # down: 502 JSON, never a broken answer
    assert server.worker_pids() == workers  # no worker died on the way


FAULTS = [
    pytest.param("/upstream/reset", "connection broke", id="reset-mid-response"),
    pytest.param("/upstream/garbage", "connection broke", id="garbage"),
]


@pytest.mark.parametrize(("path", "cause"), FAULTS)
def test_broken_answers_are_502_json_and_leak_nothing(gunicorn, upstream, path, cause):
    """Reset mid-response and garbage instead of HTTP: 502 JSON naming the cause, the
    worker stays up, no connection stays checked out or open, the next call succeeds.
    (Garbage before a status line is a failure to the circuit breaker, which would open
    at the fifth in a row: the test's five stay under POOLCLIENT_BREAKER_FAILURES=6.)"""
    server = gunicorn(["-w", "1", "--threads", "2"],
                      env_for(upstream, POOLCLIENT_BREAKER_FAILURES="6"))
    (pid,) = server.worker_pids()
    assert get(server.url + "/upstream/warm")[0] == 200
    fds = open_fds(pid)
    for _ in range(5):
        status, body, _, _ = get(server.url + path)
        assert status == 502 and cause in body["error"], body
    assert server.worker_pids() == {pid}
    assert open_fds(pid) <= fds
    assert sockets_to(pid, upstream.port) <= 1
    health = only_health(server)
    assert health["totals"]["in_use"] == 0 and health["totals"]["errors"] == 5
    assert health["totals"]["retried"] == 0
    assert upstream.stats()["requests"] == 6  # each sent once
    assert get(server.url + "/upstream/after")[0] == 200


def test_refused_and_tls_failures_are_502_json(gunicorn, tmp_path):
    """Refused, untrusted certificate, expired certificate: 502 JSON naming each, the
    worker stays up."""
    expired = start_upstream(str(tmp_path / "expired"), "--cert-expired")
    try:
        cases = [
            ({"UPSTREAM_URL": refused_url()}, "refused"),
            ({"UPSTREAM_URL": expired.url, "POOLCLIENT_CA_BUNDLE": expired.ca},
             "certificate has expired"),
            ({"UPSTREAM_URL": expired.url,
              "POOLCLIENT_CA_BUNDLE": other_ca_file(str(tmp_path))},
             "certificate verify failed"),
        ]
        for env, cause in cases:
            server = gunicorn(["-w", "1", "--threads", "2"], env)
            pids = server.worker_pids()
            status, body, _, _ = get(server.url + "/upstream/items")
            assert status == 502 and cause in body["error"], body
            assert server.worker_pids() == pids
            server.stop()
        # Its own record, read without verification (the certificate is expired).
        with urllib3.PoolManager(cert_reqs="CERT_NONE", retries=False) as http:
            record = json.loads(http.request("GET", expired.url + "/_upstream/stats").data)
        assert record["requests"] == 0  # nothing was sent over an unverified channel
    finally:
        expired.stop()


# --- workers ---------------------------------------------------------------------------


def test_gevent_two_workers_32_clients_bounded(gunicorn, upstream):
    """gevent, two workers, POOLCLIENT_MAXSIZE=4, 32 concurrent clients: no errors, at most
    2 x 4 upstream connections, each used by one process."""
    server = gunicorn(["-w", "2", "-k", "gevent", "--worker-connections", "100"],
                      env_for(upstream, POOLCLIENT_MAXSIZE="4"))
    outcomes = load(server.url, clients=32, seconds=4, paths=("/upstream/items",))
    assert set(outcomes) == {200}, outcomes
    seen = upstream.stats()
    assert 1 <= len(seen["connections"]) <= 8
    assert seen["requests"] == outcomes[200]
    health = health_by_worker(server, server.worker_pids()).values()
    assert sum(h["totals"]["connections_opened"] for h in health) == len(seen["connections"])
    assert sum(h["totals"]["waits"] for h in health) > 0  # 32 callers, 8 connections
    assert all(h["maxsize"] == 4 for h in health)


def test_max_requests_recycling_under_load(gunicorn, upstream, record_property):
    """--max-requests 300 under load: workers are replaced, no request fails, the master
    never holds an upstream socket, and afterwards the upstream's open connections are at
    most workers x maxsize."""
    server = gunicorn(["-w", "2", "--threads", "4", "--max-requests", "300",
                       "--max-requests-jitter", "30"], env_for(upstream))
    first = server.worker_pids()
    master_sockets: list[int] = []
    stop = threading.Event()

    def watch_master() -> None:
        while not stop.is_set():
            master_sockets.append(sockets_to(server.proc.pid, upstream.port))
            stop.wait(0.05)

    watcher = threading.Thread(target=watch_master)
    watcher.start()
    try:
        outcomes = load(server.url, clients=8, seconds=120, paths=("/upstream/items",),
                        headers={"Connection": "close"}, requests=2000)
    finally:
        stop.set()
        watcher.join()
    record_property("figures", {"outcomes": dict(outcomes),
                                "restarts": server.log().count("Autorestarting worker"),
                                "master_socket_samples": len(master_sockets)})
    assert outcomes == {200: 2000}, outcomes  # several generations of workers
    assert "Autorestarting worker" in server.log()
    assert server.worker_pids() != first
    assert len(master_sockets) >= 5 and set(master_sockets) == {0}  # sampled throughout
    wait_for(lambda: upstream.stats()["open"] <= 2 * 4, 10, "recycled workers' connections "
             "to close")


def test_thousand_hosts_bounded_pools_and_descriptors(gunicorn, tmp_path, record_property):
    """10,000 requests over 1,000 loopback hosts with POOLCLIENT_MAX_HOSTS=50: each worker
    keeps at most 50 pools and 50 x maxsize upstream sockets; descriptors stay bounded."""
    upstream = start_upstream(str(tmp_path / "up"), "--hosts", "1000")
    try:
        server = gunicorn(["-w", "2", "--threads", "2", CALLER],
                          env_for(upstream, POOLCLIENT_MAX_HOSTS="50"))
        workers = server.worker_pids()
        baseline = {pid: open_fds(pid) for pid in workers}

        def host_batch(index: int) -> int:
            query = urlencode({"port": upstream.port, "total": 1000, "index": index,
                               "count": 10})
            status, body, _, _ = get(f"{server.url}/hosts?{query}")
            assert status == 200, body
            return int(body["ok"])

        with ThreadPoolExecutor(4) as ex:
            ok = sum(ex.map(host_batch, range(1000)))
        assert ok == 10_000
        seen = upstream.stats()
        assert seen["requests"] == 10_000 and seen["hosts_seen"] == 1000
        for pid, health in health_by_worker(server, workers).items():
            record_property(f"worker-{pid}", {
                "pools": len(health["pools"]), "sockets": sockets_to(pid, upstream.port),
                "fds_before": baseline[pid], "fds_after": open_fds(pid),
                "connections_opened": health["totals"]["connections_opened"]})
            assert len(health["pools"]) <= 50
            assert sockets_to(pid, upstream.port) <= 50 * 2
            assert open_fds(pid) <= baseline[pid] + 50 * 2
    finally:
        upstream.stop()


# --- secrets and isolation -------------------------------------------------------------


def test_secrets_stay_out_of_health_and_logs(gunicorn, upstream):
    """A URL with user:password, a query token and an Authorization header, with every
    logger at DEBUG: the worker's log shows the calls (masked) and none of the secrets;
    /health shows none either."""
    secret_url = upstream.url.replace("https://", "https://alice:PW-SECRET-1@") + \
        "/items?access_token=TOKEN-SECRET-2"
    server = gunicorn(["-w", "1", "--threads", "2", CALLER],
                      env_for(upstream, CALLER_DEBUG_LOG="1", SECRET_URL=secret_url,
                              SECRET_AUTH="Bearer HEADER-SECRET-3"))
    status, body, _, _ = get(server.url + "/secret")
    assert (status, body) == (200, {"statuses": [200, 200]})
    health = json.dumps(only_health(server))
    server.stop()
    log = server.log()
    assert "/items?access_token=*** HTTP/1.1" in log  # the request lines were logged
    for secret in ("PW-SECRET-1", "TOKEN-SECRET-2", "HEADER-SECRET-3"):
        assert secret not in log and secret not in health


def test_cookies_never_cross_callers(gunicorn, upstream):
    """Caller A's session receives a cookie and sends it back; caller B, on the same worker
    and the same pooled connection, sends none."""
    server = gunicorn(["-w", "1", "--threads", "1", CALLER], env_for(upstream))
    status, a = calls(server, upstream.url + "/set-cookie?name=user&value=alice",
                      upstream.url + "/headers", via="session")
    assert status == 200 and a["body"]["headers"].get("Cookie") == "user=alice"
    for via in ("session", "request"):
        status, b = calls(server, upstream.url + "/headers", via=via)
        assert status == 200 and "Cookie" not in b["body"]["headers"]
    assert len(upstream.stats()["connections"]) == 1


@pytest.mark.parametrize("via", ["request", "session"])
def test_redirect_to_another_host_drops_authorization(gunicorn, upstream, via):
    """A redirect to another host (localhost, same upstream) arrives without Authorization;
    a same-host redirect keeps it (so the header really was sent)."""
    server = gunicorn(["-w", "1", "--threads", "1", CALLER], env_for(upstream))
    same = upstream.url + "/redirect?" + urlencode({"to": upstream.url + "/headers"})
    other_host = upstream.url.replace("127.0.0.1", "localhost")
    cross = upstream.url + "/redirect?" + urlencode({"to": other_host + "/headers"})
    _, kept = calls(server, same, via=via, auth="Bearer redirect-secret")
    _, dropped = calls(server, cross, via=via, auth="Bearer redirect-secret")
    lower = {k.lower(): v for k, v in kept["body"]["headers"].items()}
    assert lower.get("authorization") == "Bearer redirect-secret"
    assert "authorization" not in {k.lower() for k in dropped["body"]["headers"]}
    assert dropped["body"]["headers"]["Host"].startswith("localhost")


def test_health_access_under_gunicorn(gunicorn, upstream):
    """POOLCLIENT_STATS_ALLOW empty and a token: /health is 403 from loopback without the
    token, 200 with it; HEAD works; other methods get 405."""
    token = "gunicorn-stats-token-0123"
    server = gunicorn(["-w", "1"], env_for(upstream, POOLCLIENT_STATS_ALLOW="",
                                           POOLCLIENT_STATS_TOKEN=token))
    assert get(server.url + "/health")[0] == 403
    status, body, _, _ = get(server.url + "/health", {"Authorization": f"Bearer {token}"})
    assert status == 200 and body["settings"]["POOLCLIENT_STATS_TOKEN"] == "***"
    with urllib3.PoolManager(retries=False) as http:
        head = http.request("HEAD", server.url + "/health",
                            headers={"Authorization": f"Bearer {token}"})
        post = http.request("POST", server.url + "/health")
    assert (head.status, head.data) == (200, b"")
    assert post.status == 405
