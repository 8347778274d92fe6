"""Connections a worker inherits that no poolclient pool owns (``poolclient.inherited``):
found from /proc without touching them, and named by every gunicorn worker."""

from __future__ import annotations

import socket

import pytest
import urllib3

from poolclient import inherited
from tests.helpers import Gunicorn, Upstream, health_by_worker, wait_for


def test_scan_finds_established_connections_and_touches_nothing(upstream: Upstream,
                                                                monkeypatch):
    monkeypatch.setattr(inherited, "_found", ())  # what this test's scan keeps, undone after
    with socket.create_connection(("127.0.0.1", upstream.port)) as conn, \
            socket.create_server(("127.0.0.1", 0)) as listener:
        found = inherited.scan()
        mine = [c for c in found if c.fd == conn.fileno()]
        assert mine == [inherited.Inherited(f"127.0.0.1:{upstream.port}", conn.fileno())]
        assert all(c.fd != listener.fileno() for c in found)  # listening: not a connection
        assert inherited.found() == found
        conn.sendall(b"")  # still open and usable: nothing was done to it


@pytest.mark.parametrize(("hex_address", "v6", "peer"), [
    ("0100007F", False, "127.0.0.1:443"),
    ("0000000000000000FFFF00000100007F", True, "127.0.0.1:443"),  # v4-mapped
    ("00000000000000000000000001000000", True, "[::1]:443"),
])
def test_peer_addresses_from_the_kernels_table(hex_address, v6, peer):
    assert inherited._peer(hex_address, 443, v6) == peer


def _preloaded(gunicorn, upstream: Upstream, **env: str):
    return gunicorn(["-w", "2", "--threads", "2", "-k", "gthread", "--preload",
                     "tests.apps.leaky_app:app"],
                    {"UPSTREAM_URL": upstream.url, "UPSTREAM_CA": upstream.ca, **env})


def test_each_worker_names_a_session_used_at_import(gunicorn, upstream: Upstream):
    """A requests.Session used at import under --preload: each worker logs one WARNING
    naming the upstream, lists it in /health, and /metrics counts it for both."""
    server = _preloaded(gunicorn, upstream)
    peer = f"127.0.0.1:{upstream.port}"
    workers = server.worker_pids()
    for pid in workers:
        wait_for(lambda pid=pid: f"process {pid} inherited a TCP connection to {peer}"
                 in server.log(), 10, f"worker {pid}'s warning")
    assert server.log().count(f"inherited a TCP connection to {peer}") == 2
    health = health_by_worker(server, workers)
    for doc in health.values():
        assert [c["peer"] for c in doc["inherited_connections"]] == [peer]
        assert doc["status"] == "warn"
    with urllib3.PoolManager() as http:
        text = http.request("GET", server.url + "/metrics").data.decode()
    assert f'poolclient_inherited_connections{{peer="{peer}"}} 2.0' in text
    assert upstream.stats()["requests"] == 1  # the import's own call; nothing touched it


def test_inherited_fail_stops_the_boot(upstream: Upstream, tmp_path):
    """POOLCLIENT_INHERITED=fail: the worker does not boot, and gunicorn stops with its
    boot-error status (3), the log saying why. (One worker: when two fail at once,
    gunicorn 27 meets the second failure while halting for the first and exits 1.)"""
    server = Gunicorn(["-w", "1", "--preload", "tests.apps.leaky_app:app"],
                      {"UPSTREAM_URL": upstream.url, "UPSTREAM_CA": upstream.ca,
                       "POOLCLIENT_INHERITED": "fail"}, str(tmp_path / "gunicorn.log"))
    try:
        code = server.proc.wait(timeout=60)
        log = server.log()
    finally:
        server.stop()
    assert code == 3, log
    assert "InheritedConnectionError" in log and "Worker failed to boot" in log
    assert f"127.0.0.1:{upstream.port} (fd " in log


def test_a_preloaded_app_on_the_registry_inherits_nothing(gunicorn, upstream: Upstream):
    """The same under --preload with the calls made through poolclient (closed before the
    fork): no warning."""
    server = gunicorn(["-w", "2", "--threads", "2", "-k", "gthread", "--preload",
                       "tests.apps.pidrelay:app"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
                       "MASTER_CALLS": "2"})
    health = health_by_worker(server, server.worker_pids())
    assert all(doc["inherited_connections"] == [] for doc in health.values())
    assert "inherited a TCP connection" not in server.log()
