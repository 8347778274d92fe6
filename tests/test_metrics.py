"""/metrics: names, labels and values against golden text in process, and summed over every
gunicorn worker against the upstream's own count, across worker restarts."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import threading

import urllib3
import webtest
from prometheus_client.parser import text_string_to_metric_families

from poolclient import PoolClientMiddleware, Registry, Settings, metrics
from poolclient import stats as stats_module
from poolclient.stats import PoolStats
from tests.helpers import Upstream, health_by_worker, load, wait_for


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on a fresh connection: {(sample name, sorted labels): value}."""
    with urllib3.PoolManager(retries=False) as http:
        r = http.request("GET", url + "/metrics", headers={"Connection": "close"})
    assert r.status == 200, r.data
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.data.decode())
            for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, v2) in ls for k, v2 in labels.items()))


# --- golden text, in process -----------------------------------------------------------

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "metrics.txt")


def test_golden_text_in_process():
    """A known sequence of pool events, through PoolStats as the pools report them, renders
    exactly the lines of tests/golden/metrics.txt (checked by hand: 3 requests, 1 reused,
    1 retried, 2 connections, 1 expired, 1 closed unread, waits of 0 and 0.75 s, requests of
    20 ms, 3 ms and 0.2 s, one timeout, 1 idle, 0 in use and 0 streaming at the end)."""
    sink = metrics.pool_sink("https", "golden.example", 443)
    assert sink is not None
    idle = [0]  # what the pool's queue would hold
    stats = PoolStats(4, sink, lambda: idle[0])
    stats.opened()
    stats.checked_out(0.0)
    stats.attempted(False, 0.02)
    idle[0] = 1
    stats.checked_in()
    stats.waited()
    stats.checked_out(0.75)
    idle[0] = 0
    stats.attempted(True, 0.003)
    stats.failed("timeout")
    stats.expired_one()
    stats.retried_one()
    stats.opened()
    stats.attempted(False, 0.2)
    stats.streamed()
    stats.unread_one()
    idle[0] = 1
    stats.checked_in(streamed=True)
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain; version=")
    lines = sorted(line for line in body.decode().splitlines()
                   if 'host="golden.example"' in line and "_created" not in line)
    with open(GOLDEN) as f:
        assert lines == f.read().splitlines()


class _Recorder:
    """A sink that keeps the batches it is given."""

    def __init__(self) -> None:
        self.batches: list = []

    def publish(self, batch) -> None:
        self.batches.append(batch)

    def opened(self) -> None: ...
    def failed(self, kind: str) -> None: ...
    def closed(self, reason: str) -> None: ...
    def retried(self) -> None: ...


def test_requests_reach_the_sink_in_batches_at_most_once_a_second(monkeypatch):
    """Batches: the first return publishes; later ones within PUBLISH_EVERY wait for the
    publisher (scheduled once), whether or not the pool is quiet; a return after that
    publishes; publish_all() hands over what waits. Their sum is every event."""
    clock = [100.0]
    scheduled: list[PoolStats] = []
    monkeypatch.setattr(stats_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(stats_module, "_schedule", scheduled.append)
    sink = _Recorder()
    idle = [0]  # what the pool's queue would hold
    stats = PoolStats(4, sink, lambda: idle[0])
    stats.checked_out(0.0)
    stats.waited()
    stats.checked_out(0.5)
    stats.attempted(False, 0.01)
    stats.checked_in()  # the first return publishes: nothing was ever published
    assert len(sink.batches) == 1 and scheduled == []
    stats.checked_out(0.0)
    stats.attempted(True, 0.02)
    idle[0] = 2
    stats.checked_in()  # published 0 s ago: left for the publisher
    idle[0] = 1
    stats.checked_in()  # quiet, and still left for it, scheduled once
    assert len(sink.batches) == 1 and scheduled == [stats]
    clock[0] += stats_module.PUBLISH_EVERY
    stats.checked_out(0.0)
    stats.attempted(True, 0.03)
    stats.checked_in()  # a second has passed
    assert len(sink.batches) == 2
    stats.checked_out(0.0)
    stats.checked_in()
    assert len(sink.batches) == 2
    stats.publish()  # what the publisher thread does
    assert len(sink.batches) == 3
    assert sum(b.requests for b in sink.batches) == 3
    assert sum(b.reused for b in sink.batches) == 2
    assert sum(b.waited for b in sink.batches) == 1
    assert sum(b.in_use for b in sink.batches) == 0
    assert [b.idle for b in sink.batches] == [0, 1, 0]  # the queue's moves, read per batch
    assert sorted(w for b in sink.batches for w in b.waits) == [0.0, 0.0, 0.0, 0.0, 0.5]
    assert sorted(d for b in sink.batches for d in b.durations) == [0.01, 0.02, 0.03]


def test_the_publisher_thread_hands_over_waiting_batches(monkeypatch):
    """Without more requests, a waiting batch reaches the sink within PUBLISH_EVERY."""
    monkeypatch.setattr(stats_module, "PUBLISH_EVERY", 0.05)
    arrived = threading.Event()

    class Signalling(_Recorder):
        def publish(self, batch) -> None:
            super().publish(batch)
            if len(self.batches) == 2:
                arrived.set()

    sink = Signalling()
    stats = PoolStats(4, sink)
    for seconds in (0.01, 0.02):
        stats.checked_out(0.0)
        stats.attempted(False, seconds)
        stats.checked_in()  # the first publishes, the second waits
    assert arrived.wait(10), "the waiting batch was never published"
    assert [b.durations for b in sink.batches] == [[0.01], [0.02]]


def test_every_family_has_help_and_type():
    """Each family is declared with HELP and TYPE, counters as counters."""
    text = metrics.render()[0].decode()
    for name, kind in [("poolclient_requests_total", "counter"),
                       ("poolclient_connections_opened_total", "counter"),
                       ("poolclient_connections", "gauge"),
                       ("poolclient_errors_total", "counter"),
                       ("poolclient_pool_wait_seconds", "histogram"),
                       ("poolclient_request_duration_seconds", "histogram")]:
        assert f"# TYPE {name} {kind}" in text
        assert f"# HELP {name} " in text


def test_metrics_endpoint_through_the_middleware(registry: Registry, upstream: Upstream):
    """Real calls through a registry show up in /metrics under their origin's labels; the
    endpoint is limited like /health and HEAD has no body."""
    for _ in range(3):
        registry.request("GET", upstream.url + "/x")
    app = webtest.TestApp(PoolClientMiddleware(lambda e, s: [], registry=registry))
    res = app.get("/metrics", extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    port = str(upstream.port)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(res.text) for s in f.samples}
    assert total(samples, "poolclient_requests_total", port=port) == 3
    assert total(samples, "poolclient_connections_opened_total", port=port) == 1
    assert total(samples, "poolclient_connections", port=port, state="idle") == 1
    assert app.head("/metrics").body == b""
    assert app.get("/metrics", extra_environ={"REMOTE_ADDR": "8.8.8.8"},
                   expect_errors=True).status_int == 403


def test_without_prometheus_client_metrics_says_what_to_install(monkeypatch):
    """Without prometheus-client, /metrics answers 501 with one line naming the extra."""
    monkeypatch.setattr(metrics, "available", lambda: False)
    app = webtest.TestApp(PoolClientMiddleware(lambda e, s: [], registry=Registry(Settings())))
    res = app.get("/metrics", expect_errors=True)
    assert res.status_int == 501
    assert res.text.strip() == "/metrics needs prometheus-client: pip install " \
                               "'poolclient[prometheus]'"


# --- every gunicorn worker -------------------------------------------------------------


def test_six_scrapes_agree_with_the_upstream(gunicorn, upstream: Upstream):
    """Three gthread workers after a load run: six scrapes on fresh connections, whichever
    worker answers, all report the requests and connections the upstream logged."""
    server = gunicorn(["-w", "3", "--threads", "4"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    outcomes = load(server.url, clients=12, seconds=3, paths=("/upstream/items",))
    assert set(outcomes) == {200}, outcomes
    seen = upstream.stats()
    port = str(upstream.port)
    # Each worker hands its last requests to the files within PUBLISH_EVERY.
    wait_for(lambda: total(scrape(server.url), "poolclient_requests_total", port=port)
             == seen["requests"], 10, "every worker's requests in /metrics")
    for _ in range(6):
        samples = scrape(server.url)
        assert total(samples, "poolclient_requests_total", port=port) == seen["requests"]
        assert total(samples, "poolclient_connections_opened_total", port=port) == len(
            seen["connections"])
        assert total(samples, "poolclient_connections", port=port, state="in_use") == 0
        assert total(samples, "poolclient_request_duration_seconds_count",
                     port=port) == seen["requests"]
        assert total(samples, "poolclient_errors_total") == 0
    # The idle gauge, summed over the workers, is what each worker's queue holds.
    health = health_by_worker(server, server.worker_pids())
    assert total(scrape(server.url), "poolclient_connections", port=port, state="idle") == sum(
        h["totals"]["idle"] for h in health.values())


def test_multiprocess_directory_lifecycle_over_worker_restarts(gunicorn, upstream, tmp_path):
    """The directory named by PROMETHEUS_MULTIPROC_DIR is wiped at start; workers recycled
    by --max-requests keep their counters in the totals but drop their gauges; the
    directory (the user's own) stays after shutdown."""
    directory = tmp_path / "prom"
    directory.mkdir()
    dead_pid = _exited_pid()
    (directory / f"counter_{dead_pid}.db").write_bytes(b"left over from an earlier run")
    (directory / f"counter_{os.getpid()}.db").write_bytes(b"")  # a live process's: kept
    server = gunicorn(["-w", "2", "--threads", "2", "--max-requests", "100"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
                       "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert not (directory / f"counter_{dead_pid}.db").exists()
    assert (directory / f"counter_{os.getpid()}.db").exists()
    (directory / f"counter_{os.getpid()}.db").unlink()  # empty: not a file to collect
    first = server.worker_pids()
    outcomes = load(server.url, clients=4, seconds=4, paths=("/upstream/items",),
                    headers={"Connection": "close"})
    assert set(outcomes) == {200}, outcomes
    wait_for(lambda: not (first & server.worker_pids()), 10, "the first workers to be gone")
    seen = upstream.stats()
    port = str(upstream.port)
    wait_for(lambda: total(scrape(server.url), "poolclient_requests_total", port=port)
             == seen["requests"], 10, "every worker's requests in /metrics")
    samples = scrape(server.url)
    assert total(samples, "poolclient_requests_total", port=port) == seen["requests"]
    assert total(samples, "poolclient_connections_opened_total", port=port) == len(
        seen["connections"])

    def gauge_pids() -> set[int]:
        return {int(path.rsplit("_", 1)[1][:-3])
                for path in glob.glob(str(directory / "gauge_livesum_*.db"))}

    # A poll: the scrapes count as requests too, so a worker may be recycled right now,
    # and the master drops its gauges only after reaping it.
    wait_for(lambda: gauge_pids() <= server.worker_pids(), 10,
             "the master to drop every dead worker's gauges")
    assert total(samples, "poolclient_connections", port=port) <= 2 * 2
    server.stop()
    assert directory.is_dir()


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])  # noqa: S603, S607
    proc.wait()
    return proc.pid


def test_directory_made_by_poolclient_is_removed_on_exit(gunicorn, upstream: Upstream):
    """Without PROMETHEUS_MULTIPROC_DIR, gunicorn.conf.py makes one, and on_exit removes it."""
    server = gunicorn(["-w", "1"], {"UPSTREAM_URL": upstream.url,
                                    "POOLCLIENT_CA_BUNDLE": upstream.ca})
    match = re.search(r"poolclient: metrics of every worker in (\S+)", server.log())
    assert match, server.log()
    path = match.group(1)
    assert os.path.isdir(path)
    with urllib3.PoolManager(retries=False) as http:
        assert http.request("GET", server.url + "/upstream/x").status == 200
    assert total(scrape(server.url), "poolclient_requests_total") == 1
    server.stop()
    assert not os.path.exists(path)


# --- the dashboard and the picture -----------------------------------------------------

DASHBOARD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "deploy",
                         "grafana-dashboard.json")


def test_grafana_dashboard_queries_only_metrics_that_exist():
    """Every expression in deploy/grafana-dashboard.json names families and labels that
    /metrics really serves."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    sink = metrics.pool_sink("https", "dashboard.example", 443)
    assert sink is not None
    sink.failed("connect")  # so that the labelled families have a series
    sink.closed("expired")
    text = metrics.render()[0].decode()
    served = {s.name: set(s.labels) for f in text_string_to_metric_families(text)
              for s in f.samples}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    for expr in exprs:
        names = set(re.findall(r"\bpoolclient_\w+", expr))
        assert names and names <= set(served), (expr, names - set(served))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert any(label in served[n] for n in names), (expr, label)


def test_plot_from_a_real_run(gunicorn, upstream: Upstream, tmp_path):
    """app.metrics_plot scrapes a loaded gunicorn and writes a PNG; its last totals are the
    upstream's own counts."""
    from app.metrics_plot import plot, record
    from app.metrics_plot import scrape as scrape_totals

    server = gunicorn(["-w", "2", "--threads", "2"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})

    def during() -> None:
        outcomes = load(server.url, clients=4, seconds=1.5, paths=("/upstream/items",))
        assert set(outcomes) == {200}
        # The worker not answering a scrape publishes its last batch up to PUBLISH_EVERY
        # later: wait for it, so that the scrapes after this one see the final totals.
        sent = upstream.stats()["requests"]
        with urllib3.PoolManager(retries=False) as http:
            wait_for(lambda: scrape_totals(server.url, http).get(
                "poolclient_requests_total") == sent, 10, "every worker's batch published")

    series = record(server.url, seconds=2.0, interval=0.25, during=during)
    out = tmp_path / "metrics.png"
    plot(series, str(out), "test run")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seen = upstream.stats()
    assert series.requests[-1] == seen["requests"] > 0
    assert series.opened[-1] == len(seen["connections"])
    assert series.requests[0] == 0
