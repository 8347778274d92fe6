"""Integration: real gunicorn processes against the real TLS upstream on loopback.

The upstream, not the app, is the witness: it counts TCP connections and records which
process (``X-Client-Pid``) wrote each request on each of them.
"""

from __future__ import annotations

import json
import time

import pytest
import urllib3

from tests.helpers import Upstream, health_by_worker, load, other_ca_file, refused_url, wait_for

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

CASES = [
    pytest.param(["-w", "2", "--threads", "1", "-k", "sync"], 2, 1, 0, id="sync"),
    pytest.param(["-w", "2", "--threads", "4", "-k", "gthread"], 2, 4, 0, id="gthread"),
    pytest.param(["-w", "2", "--threads", "4", "-k", "gthread", "--preload"], 2, 4, 3,
                 id="gthread-preload-master-calls"),
]


@pytest.mark.parametrize(("args", "workers", "threads", "master_calls"), CASES)
def test_workers_bounded_and_never_share_a_connection(
    gunicorn, upstream: Upstream, args, workers, threads, master_calls
):
    """16 clients, 2,000 requests: no errors, at most workers x threads upstream connections, each
    written by one process only, /health agreeing with the upstream's own count."""
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "MASTER_CALLS": str(master_calls)}
    server = gunicorn([*args, "tests.apps.pidrelay:app"], env)
    worker_pids = server.worker_pids()
    assert len(worker_pids) == workers

    outcomes = load(server.url, clients=16, seconds=120, requests=2000)
    assert outcomes == {200: 2000}, outcomes

    seen = upstream.stats()
    conns = seen["connections"]
    assert all(len(c["pids"]) == 1 for c in conns), "a connection was written by two processes"
    master = str(server.proc.pid)
    master_conns = [c for c in conns if c["pids"] == [master]]
    worker_conns = [c for c in conns if c["pids"] != [master]]
    assert [c["requests"] for c in master_conns] == ([master_calls] if master_calls else [])
    # pre_fork closed the master's connection before the first worker was forked.
    assert not any(c["open"] for c in master_conns)
    assert {int(c["pids"][0]) for c in worker_conns} <= worker_pids
    assert len(worker_conns) <= workers * threads
    worker_requests = sum(c["requests"] for c in worker_conns)
    assert worker_requests == outcomes[200]

    health = health_by_worker(server, worker_pids)
    assert sum(h["totals"]["requests"] for h in health.values()) == worker_requests
    assert sum(h["totals"]["connections_opened"] for h in health.values()) == len(worker_conns)
    assert all(h["maxsize"] >= threads for h in health.values())
    assert all(h["totals"]["errors"] == 0 for h in health.values())

    server.stop()
    # worker_exit closed every worker's pool; the master's connection died with it.
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")


def test_cloudant_clients_built_per_request_reuse_connections(gunicorn, upstream: Upstream):
    """python-cloudant with adapter= and the IBM SDK on .session(), both built per request:
    at most workers x threads connections."""
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca}
    server = gunicorn(["-w", "2", "--threads", "4", "-k", "gthread",
                       "tests.apps.cloudant_app:app"], env)
    outcomes = load(server.url, clients=16, seconds=3, paths=("/classic", "/sdk"))
    assert set(outcomes) == {200}, outcomes
    seen = upstream.stats()
    assert seen["requests"] >= outcomes[200]
    assert len(seen["connections"]) <= 8
    assert all(len(c["pids"]) == 1 for c in seen["connections"])


def _get_json(url: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    with urllib3.PoolManager(retries=False) as http:
        r = http.request("GET", url, timeout=30)
    return r.status, json.loads(r.data), time.monotonic() - started


def test_example_app_refused_upstream_is_502_json_and_worker_lives(gunicorn):
    """A refused upstream answers 502 JSON naming the cause, well under the connect timeout,
    and the same workers keep serving."""
    server = gunicorn(["-w", "1", "--threads", "2"],
                      {"UPSTREAM_URL": refused_url(), "POOLCLIENT_CONNECT_TIMEOUT": "5"})
    pids = server.worker_pids()
    status, body, elapsed = _get_json(server.url + "/upstream/items")
    assert status == 502
    assert "refused" in body["error"].lower()
    assert elapsed < 5
    status, health, _ = _get_json(server.url + "/health")
    assert status == 200 and {health["pid"]} == pids == server.worker_pids()
    assert health["totals"]["errors"] >= 1


def test_example_app_untrusted_certificate_is_502_json(gunicorn, upstream: Upstream, tmp_path):
    """An upstream whose certificate the configured CA did not sign: 502 JSON saying the
    certificate failed verification; the worker stays up."""
    server = gunicorn(["-w", "1", "--threads", "2"],
                      {"UPSTREAM_URL": upstream.url,
                       "POOLCLIENT_CA_BUNDLE": other_ca_file(str(tmp_path))})
    pids = server.worker_pids()
    status, body, elapsed = _get_json(server.url + "/upstream/items")
    assert status == 502
    assert "certificate verify failed" in body["error"]
    assert elapsed < 5
    assert server.worker_pids() == pids
    assert upstream.stats()["requests"] == 0  # nothing was sent over an unverified channel


def test_example_app_relays_through_the_pool(gunicorn, upstream: Upstream):
    """The example app under gunicorn relays path, query and status, reusing connections."""
    server = gunicorn(["-w", "1", "--threads", "4"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    for i in range(5):
        status, body, _ = _get_json(server.url + f"/upstream/items?page={i}")
        assert status == 200 and body["path"] == "/items" and body["query"] == f"page={i}"
    status, body, _ = _get_json(server.url + "/upstream/status/404")
    assert status == 404 and body == {"status": 404}
    seen = upstream.stats()
    assert seen["requests"] == 6 and len(seen["connections"]) == 1


@pytest.mark.parametrize("hook, arity", [("on_starting", 1), ("pre_fork", 2),
                                         ("post_fork", 2), ("post_worker_init", 1),
                                         ("worker_exit", 2), ("child_exit", 2),
                                         ("on_exit", 1)])
def test_hooks_have_the_signatures_gunicorn_validates(hook, arity):
    """Each hook passes gunicorn's own arity validator."""
    from gunicorn.config import validate_callable

    import poolclient.gunicorn

    fn = getattr(poolclient.gunicorn, hook)
    assert validate_callable(arity)(fn) is fn


def test_deadline_at_or_above_the_worker_timeout_is_warned(gunicorn, upstream: Upstream):
    """POOLCLIENT_DEADLINE=40 or a 30 s readiness round with gunicorn's timeout 30: the
    master says so at start-up; the defaults give no warning."""
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca}
    warned = gunicorn(["-w", "1"], {**env, "POOLCLIENT_DEADLINE": "40",
                                    "POOLCLIENT_READY_URLS": upstream.url,
                                    "POOLCLIENT_READY_TIMEOUT": "30"})
    quiet = gunicorn(["-w", "1"], env)
    assert "POOLCLIENT_DEADLINE=40.0 is not below gunicorn's timeout=30" in warned.log()
    assert "POOLCLIENT_READY_TIMEOUT=30.0 is not below gunicorn's timeout=30" in warned.log()
    assert "is not below gunicorn's timeout" not in quiet.log()
