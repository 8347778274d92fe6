"""/metrics read by a real Prometheus server (Debian's ``prometheus``; ``make tools``
installs it), not only by prometheus-client's parser: it scrapes a real gunicorn with three
workers relaying to the real TLS upstream, and its HTTP API answers what the upstream
counted. The dashboard's expressions go through the same server's PromQL parser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import urllib3
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, Upstream, free_port, load, wait_for
from tests.test_metrics import scrape, total

BINARY = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    BINARY is None, reason="no prometheus binary on PATH or in /usr/bin: `make tools` "
                           "installs Debian's package prometheus")]

JOB = "poolclient"
# Series that exist only once their first event happened, which a healthy load never makes.
EVENT_SERIES = ("poolclient_errors_total", "poolclient_breaker_", "poolclient_refused_total",
                "poolclient_retries_total", "poolclient_stalls_total")
SCRAPE_INTERVAL = "200ms"
DASHBOARD = os.path.join(ROOT, "deploy", "grafana-dashboard.json")
# Grafana's own variables, as it fills them in before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: str

    def api(self, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        with urllib3.PoolManager(retries=False) as http:
            r = http.request("GET", self.url + path, fields=params, timeout=10)
        return r.status, json.loads(r.data)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector; fails on anything but success."""
        status, doc = self.api("/api/v1/query", query=expr)
        assert (status, doc["status"]) == (200, "success"), (expr, doc)
        assert doc["data"]["resultType"] == "vector", (expr, doc)
        return doc["data"]["result"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float:
        """The one value of an instant query."""
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def own_metrics(self) -> dict[str, float]:
        """Prometheus' own /metrics: {sample name: value summed over its series}."""
        with urllib3.PoolManager(retries=False) as http:
            text = http.request("GET", self.url + "/metrics", timeout=10).data.decode()
        sums: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return sums

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


@pytest.fixture
def prometheus(tmp_path) -> Iterator:
    """``prometheus(target_url)``: a Prometheus scraping ``target_url``'s /metrics every
    SCRAPE_INTERVAL, ready; stopped afterwards, whatever happened."""
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target.split('//', 1)[1]}']\n")
        port = free_port()
        log_path = str(tmp_path / "prometheus.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [BINARY, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log_path)
        started.append(server)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{server.log()}")
            try:
                with urllib3.PoolManager(retries=False) as http:
                    return http.request("GET", server.url + "/-/ready", timeout=1).status == 200
            except urllib3.exceptions.HTTPError:
                return False
        wait_for(ready, 30, "prometheus to be ready")
        return server

    try:
        yield start
    finally:
        for server in started:
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()


def test_prometheus_sums_equal_the_upstreams_counts(gunicorn, upstream: Upstream, prometheus):
    """Three gthread workers under a bounded load, scraped every 200 ms throughout: in the
    first scrape after every worker's last batch reached the files, Prometheus' sums of
    requests, durations and connections opened are the upstream's own counts; every scrape
    succeeded, and every sample was stored as a series of its own (none malformed, none
    duplicated, none dropped). Then the dashboard's expressions, through its parser."""
    server = gunicorn(["-w", "3", "--threads", "4"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca})
    prom = prometheus(server.url)
    wait_for(lambda: prom.query(f'up{{job="{JOB}"}} == 1'), 30, "a first successful scrape")

    outcomes = load(server.url, clients=12, seconds=60, paths=("/upstream/items",),
                    requests=600)
    assert outcomes == {200: 600}, outcomes
    seen = upstream.stats()
    assert seen["requests"] == 600
    port = str(upstream.port)
    # Each worker hands its last batch to the files within PUBLISH_EVERY: once /metrics
    # shows them all, any scrape that starts later reads the final values.
    wait_for(lambda: total(scrape(server.url), "poolclient_requests_total", port=port)
             == seen["requests"], 15, "every worker's requests in /metrics")
    published = time.time()
    wait_for(lambda: prom.value(f'timestamp(up{{job="{JOB}"}})') > published, 30,
             "a Prometheus scrape after the last batch was published")

    assert prom.value("sum(poolclient_requests_total)") == seen["requests"]
    assert prom.value("sum(poolclient_request_duration_seconds_count)") == seen["requests"]
    assert prom.value("sum(poolclient_connections_opened_total)") == len(seen["connections"])
    assert prom.value('sum(poolclient_connections{state="in_use"})') == 0
    assert prom.query("poolclient_errors_total") == []  # no failure, so no series
    by_origin = prom.query("sum by (scheme, host, port) (poolclient_requests_total)")
    assert [r["metric"] for r in by_origin] == [
        {"scheme": "https", "host": "127.0.0.1", "port": port}]

    # Every scrape of the run succeeded, and the target has no error to show.
    assert prom.value(f'min_over_time(up{{job="{JOB}"}}[5m])') == 1
    assert prom.value(f'count_over_time(up{{job="{JOB}"}}[5m])') > 1
    status, targets = prom.api("/api/v1/targets")
    assert status == 200
    (target,) = targets["data"]["activeTargets"]
    assert (target["health"], target["lastError"]) == ("up", ""), target

    # Every sample scraped is a series stored: none dropped as a duplicate or malformed.
    scraped = prom.value(f'scrape_samples_scraped{{job="{JOB}"}}')
    assert prom.value(f'scrape_samples_post_metric_relabeling{{job="{JOB}"}}') == scraped
    stored = prom.query(f'{{job="{JOB}", __name__!~"up|scrape_.*"}}')
    assert len(stored) == scraped
    names = {tuple(sorted(r["metric"].items())) for r in stored}
    assert len(names) == len(stored)
    ours = scrape(server.url)  # prometheus-client's parser: the same series
    assert len(ours) == scraped
    own = prom.own_metrics()
    for problem in ("prometheus_target_scrapes_sample_duplicate_timestamp_total",
                    "prometheus_target_scrapes_sample_out_of_order_total",
                    "prometheus_target_scrapes_sample_out_of_bounds_total",
                    "prometheus_target_scrapes_exceeded_sample_limit_total"):
        assert own.get(problem, 0.0) == 0, (problem, own.get(problem))

    _dashboard_expressions_are_valid_promql(prom)


def _dashboard_expressions_are_valid_promql(prom: Prometheus) -> None:
    """Each panel's expression, Grafana's variables filled in as Grafana does, is accepted
    by Prometheus' parser, and answers series after the load (errors and the resilience
    policy's series aside: a healthy upstream gives none of them, and those series appear
    at their first event). A broken expression is refused by the same parser: the check
    can fail."""
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        filled = expr
        for variable, value in GRAFANA_VARIABLES.items():
            filled = filled.replace(variable, value)
        assert "$" not in filled, f"a variable Grafana would not fill in: {expr}"
        result = prom.query(filled)
        if not any(series in expr for series in EVENT_SERIES):
            assert result, f"no series for {expr}"
    status, doc = prom.api("/api/v1/query", query="sum by (host (poolclient_requests_total)")
    assert (status, doc["status"], doc["errorType"]) == (400, "error", "bad_data")
    assert re.search(r"parse error", doc["error"]), doc
