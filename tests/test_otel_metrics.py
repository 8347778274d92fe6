"""poolclient's OpenTelemetry metrics (poolclient.integrations.otel): what the SDK's reader
collects equals what the pools and the real TLS upstream counted; the same arrives through
the OTLP/HTTP exporter at a receiver on loopback; and a process that configures no meter
provider never imports the module, its pools reporting as before."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3

from poolclient import PoolTimeoutError, Registry, Settings, metrics
from poolclient import inherited as inherited_module
from poolclient.stats import publish_all
from tests.helpers import ROOT, Upstream, refused_url

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from poolclient.integrations import otel  # noqa: E402

Points = dict[tuple[str, tuple[tuple[str, Any], ...]], Any]


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """An SDK meter provider with an in-memory reader, enabled for the pools made in the
    test; disabled again afterwards."""
    found = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[found])
    otel.enable(provider)
    try:
        yield found
    finally:
        otel.disable()
        provider.shutdown()


def collected(reader: InMemoryMetricReader) -> Points:
    """{(metric name, sorted attributes): value, or (count, sum) for a histogram} of the
    poolclient meter, every waiting batch published first."""
    publish_all()
    data = reader.get_metrics_data()
    points: Points = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != otel.METER:
                continue
            for metric in scope.metrics:
                for p in metric.data.data_points:
                    key = (metric.name, tuple(sorted(p.attributes.items())))
                    points[key] = (p.count, p.sum) if hasattr(p, "count") else p.value
    return points


def origin(upstream: Upstream) -> tuple[tuple[str, Any], ...]:
    return (("server.address", "127.0.0.1"), ("server.port", upstream.port),
            ("url.scheme", "https"))


def with_(attrs: tuple[tuple[str, Any], ...], **extra: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({**dict(attrs), **{k.replace("_", "."): v for k, v in extra.items()}}
                        .items()))


def test_the_readers_values_are_the_pools_and_the_upstreams(reader, upstream: Upstream):
    """Three calls, then two streams held open: open connections active 2 and idle 0, two
    active requests and streams, the pool's limit; once both are read, 0 and 2. Counters
    and histograms equal the upstream's counts of requests and connections."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=2))
    try:
        for _ in range(3):
            assert registry.request("GET", upstream.url + "/x").status == 200
        held = [registry.request("GET", upstream.url + "/x", preload_content=False)
                for _ in range(2)]
        at = origin(upstream)
        points = collected(reader)
        totals = registry.stats().totals()
        assert (totals["in_use"], totals["idle"], totals["streaming"]) == (2, 0, 2)
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="active"))] == 2
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="idle"))] == 0
        assert points[("http.client.active_requests", at)] == 2
        assert points[("poolclient.connections.streaming", at)] == 2
        assert points[("poolclient.connections.limit", at)] == 4
        for response in held:
            response.read()
            response.release_conn()

        points = collected(reader)
        seen = upstream.stats()
        assert seen["requests"] == 5 and len(seen["connections"]) == 2
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="active"))] == 0
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="idle"))] == 2 == registry.stats(
                       ).totals()["idle"]
        assert points[("http.client.active_requests", at)] == 0
        assert points[("poolclient.requests", at)] == seen["requests"]
        assert points[("poolclient.connections.opened", at)] == len(seen["connections"])
        assert points[("poolclient.requests.reused", at)] == 3
        assert points[("http.client.request.duration", at)][0] == seen["requests"]
        assert points[("poolclient.pool.wait.duration", at)][0] == seen["requests"]
        assert ("poolclient.errors", with_(at, error_type="connect")) not in points
    finally:
        registry.close()


def test_a_collection_takes_the_batches_still_waiting(reader, upstream: Upstream):
    """The reader's collection hands over what the requests did first, as a scrape does:
    without it, a burst shorter than PUBLISH_EVERY reached the SDK as its first batch
    alone (1 request against the pool's 5) until the publisher thread's turn."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=2))
    try:
        for _ in range(5):
            assert registry.request("GET", upstream.url + "/x").status == 200
        data = reader.get_metrics_data()  # no publish_all() first
        assert data is not None
        requests = [p.value for rm in data.resource_metrics for sm in rm.scope_metrics
                    if sm.scope.name == otel.METER for m in sm.metrics
                    if m.name == "poolclient.requests" for p in m.data.data_points]
        assert requests == [5] == [upstream.stats()["requests"]]
    finally:
        registry.close()


def test_refusals_waits_and_errors(reader, upstream: Upstream):
    """A pool of one held by a stream: the next caller waits, then is refused
    (pool_timeout); a refused connection is a connect error; each is counted once."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=0.2))
    try:
        held = registry.request("GET", upstream.url + "/x", preload_content=False)
        with pytest.raises(PoolTimeoutError):
            registry.request("GET", upstream.url + "/x")
        held.read()
        held.release_conn()
        bad = refused_url()
        with pytest.raises(urllib3.exceptions.NewConnectionError):
            registry.request("GET", bad, retries=False)
        points = collected(reader)
        at = origin(upstream)
        assert points[("poolclient.pool.waits", at)] == 1 == registry.stats().totals()["waits"]
        assert points[("poolclient.errors", with_(at, error_type="pool_timeout"))] == 1
        refused = (("server.address", "127.0.0.1"), ("server.port", int(bad.rsplit(":", 1)[1])),
                   ("url.scheme", "https"))
        assert points[("poolclient.errors", with_(refused, error_type="connect"))] == 1
        assert points[("poolclient.requests", at)] == upstream.stats()["requests"] == 1
    finally:
        registry.close()


def test_closed_connections_by_reason_and_inherited_ones(reader, upstream, monkeypatch):
    """A stream closed unread closes its connection (reason unread); a worker's inherited
    connections are observed by peer."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, pool_timeout=2))
    try:
        response = registry.request("GET", upstream.url + "/gate/cut/sse?events=3",
                                    preload_content=False)
        response.read1(5)  # the first event's start; the rest waits at the gate
        registry._pools().live_pools()[0].release_unread(response)
        upstream.open_gate("cut")
        monkeypatch.setattr(inherited_module, "found", lambda: (
            inherited_module.Inherited("10.1.2.3:5432", 7),
            inherited_module.Inherited("10.1.2.3:5432", 8),
            inherited_module.Inherited("[::1]:6379", 9)))
        points = collected(reader)
        unread = registry.stats().totals()["unread"]
        at = origin(upstream)
        key = ("poolclient.connections.closed", with_(at, poolclient_close_reason="unread"))
        assert points[key] == unread == 1
        assert points[("poolclient.inherited_connections",
                       (("network.peer.address", "10.1.2.3"),
                        ("network.peer.port", 5432)))] == 2
        assert points[("poolclient.inherited_connections",
                       (("network.peer.address", "::1"), ("network.peer.port", 6379)))] == 1
    finally:
        registry.close()


# --- end to end: the OTLP/HTTP exporter, a receiver on loopback ------------------------


class _Receiver(BaseHTTPRequestHandler):
    """OTLP/HTTP's metrics endpoint: each protobuf export decoded and kept."""

    exports: list[ExportMetricsServiceRequest]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        if self.path == "/v1/metrics" and self.headers["Content-Type"] == \
                "application/x-protobuf":
            self.exports.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[ExportMetricsServiceRequest]]]:
    exports: list[ExportMetricsServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"exports": exports})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/metrics", exports
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _otlp_points(exports: list[ExportMetricsServiceRequest]) -> Points:
    """The last export's poolclient points, as collected() gives them."""
    points: Points = {}
    for resource in exports[-1].resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != otel.METER:
                continue
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                for p in getattr(metric, kind).data_points:
                    attrs = tuple(sorted(
                        (a.key, getattr(a.value, a.value.WhichOneof("value")))
                        for a in p.attributes))
                    if kind == "histogram":
                        points[(metric.name, attrs)] = (p.count, p.sum)
                    else:
                        points[(metric.name, attrs)] = p.as_int or p.as_double
    return points


def test_otlp_http_export_reaches_a_receiver(upstream: Upstream, receiver):
    """The SDK's OTLP/HTTP exporter, flushed, delivers protobuf whose poolclient points
    equal the pools' and the upstream's counts."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    endpoint, exports = receiver
    exporting = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint),
                                              export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[exporting])
    otel.enable(provider)
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=2))
    try:
        for _ in range(4):
            assert registry.request("GET", upstream.url + "/x").status == 200
        publish_all()
        assert provider.force_flush(timeout_millis=10_000)
        assert exports, "nothing reached the receiver"
        points = _otlp_points(exports)
        seen = upstream.stats()
        at = origin(upstream)
        assert points[("poolclient.requests", at)] == seen["requests"] == 4
        assert points[("poolclient.connections.opened", at)] == len(seen["connections"]) == 1
        assert points[("http.client.request.duration", at)][0] == 4
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="idle"))] == 1
        assert points[("http.client.open_connections",
                       with_(at, http_connection_state="active"))] == 0
    finally:
        registry.close()
        otel.disable()
        provider.shutdown()


# --- without a meter provider: nothing imported, nothing changed -----------------------

CHILD = r"""
import json, sys
import poolclient
from poolclient import metrics
step = sys.argv[1]
if step in ("api", "provider"):
    import opentelemetry.metrics
if step == "provider":
    from opentelemetry.sdk.metrics import MeterProvider
    opentelemetry.metrics.set_meter_provider(MeterProvider())
pool = poolclient.Registry(poolclient.Settings()).connection_from_host("127.0.0.1", 9, "https")
sink = pool.stats.sink
print(json.dumps({
    "sink": type(sink).__name__,
    "sinks": [type(s).__name__ for s in getattr(sink, "sinks", ())],
    "otel_api": "opentelemetry.metrics" in sys.modules,
    "poolclient_otel": "poolclient.integrations.otel" in sys.modules,
}))
"""


@pytest.mark.parametrize(("step", "expected"), [
    ("none", {"sink": "PrometheusSink", "sinks": [], "otel_api": False,
              "poolclient_otel": False}),
    ("api", {"sink": "PrometheusSink", "sinks": [], "otel_api": True,
             "poolclient_otel": False}),
    ("provider", {"sink": "FanOut", "sinks": ["PrometheusSink", "OTelSink"], "otel_api": True,
                  "poolclient_otel": True}),
])
def test_only_a_configured_provider_brings_the_module_in(step: str, expected: dict):
    """In a fresh process: without OpenTelemetry, or with its API imported but no provider
    set, a pool's sink is Prometheus' alone (its request path as before) and the module is
    never imported; with a provider set, both sinks get the events."""
    out = subprocess.run([sys.executable, "-c", CHILD, step], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == expected


def test_without_prometheus_the_otel_sink_alone(reader, monkeypatch):
    monkeypatch.setattr(metrics, "available", lambda: False)
    assert type(metrics.pool_sink("https", "example.test", 443)).__name__ == "OTelSink"
    otel.disable()
    assert metrics.pool_sink("https", "example.test", 443) is None
