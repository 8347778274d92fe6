"""The OpenAI and Anthropic SDKs under real gunicorn ``--preload``, their clients built at
import in the master on ``get_registry().httpx2_transport()``, one call made there before
the fork. The upstream counts the connections and which process wrote on each."""

from __future__ import annotations

import json

import pytest
import urllib3

from tests.helpers import (
    Upstream,
    assert_workers_own_connections,
    load,
    refused_url,
    start_upstream,
    wait_for,
)

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

pytest.importorskip("openai")
pytest.importorskip("anthropic")

PATHS = ("/openai", "/openai-stream", "/anthropic", "/anthropic-stream")


@pytest.fixture
def stalling(upstream: Upstream):
    """A second upstream signed by the same CA, for the call that stalls: it holds its side
    of the connection open for 30 s, so this test's upstream can be seen to close all."""
    server = start_upstream(upstream.directory)
    yield server
    server.stop()


def test_sdk_clients_built_at_import_under_preload(gunicorn, upstream: Upstream,
                                                  stalling: Upstream):
    """16 clients, 1,200 calls, plain and streamed: no errors, at most workers x threads
    connections, none written by two processes, the master's closed before the fork."""
    workers, threads = 2, 4
    env = {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
           "MASTER_CALLS": "1", "REFUSED_URL": refused_url(), "STALL_URL": stalling.url}
    server = gunicorn(["-w", str(workers), "--threads", str(threads), "-k", "gthread",
                       "--preload", "tests.apps.sdk_app:app"], env)
    worker_pids = server.worker_pids()

    outcomes = load(server.url, clients=16, seconds=120, paths=PATHS, requests=1200)
    assert outcomes == {200: 1200}, outcomes

    assert_workers_own_connections(server, upstream, worker_pids, 1200,
                                   bound=workers * threads)

    # A stalled upstream and a refused one: the SDK's own errors, answered 502, and the
    # workers that made those calls are still the same processes.
    with urllib3.PoolManager(retries=False) as http:
        for path, error in (("/openai-stalled", "APITimeoutError"),
                            ("/openai-refused", "APIConnectionError")):
            r = http.request("GET", server.url + path, timeout=30)
            assert (r.status, json.loads(r.data)["error"]) == (502, error)
    assert server.worker_pids() == worker_pids
    server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 10, "upstream connections to close")
