"""Real gunicorn under OpenTelemetry's auto-instrumentation, as ``opentelemetry-instrument
gunicorn -c gunicorn.conf.py`` runs it (the distro configures the SDK from OTEL_* variables
and turns every instrumentation on), exporting OTLP/HTTP to a receiver on loopback that
decodes the protobuf: under load, no errors, one client span per upstream call with the
pool's events, and each worker's pool metrics equal to its /health; also when the master
called the upstream and exported before the fork."""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.helpers import (
    Upstream,
    gunicorn_starter,
    health_by_worker,
    load,
    wait_for,
)

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.instrumentation.urllib3")
pytest.importorskip("opentelemetry.instrumentation.auto_instrumentation")

from google.protobuf.message import DecodeError  # noqa: E402
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (  # noqa: E402
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span  # noqa: E402

from poolclient.integrations import otel  # noqa: E402

INSTRUMENT = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")

class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    lock: threading.Lock
    undecodable = 0
    metrics: list[ExportMetricsServiceRequest]
    traces: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kinds = {"/v1/metrics": (ExportMetricsServiceRequest, self.metrics),
                 "/v1/traces": (ExportTraceServiceRequest, self.traces)}
        found = kinds.get(self.path)
        if found is not None:
            message = found[0]()
            try:
                message.ParseFromString(body)
            except DecodeError:  # two processes' exports on one connection, say
                with self.lock:
                    type(self).undecodable += 1
                found = None
            else:
                with self.lock:
                    found[1].append(message)  # type: ignore[arg-type]
        self.send_response(200 if found is not None else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    handler: Any = type("Receiver", (_Receiver,), {"lock": threading.Lock(), "metrics": [],
                                                   "traces": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def client_spans(receiver: Any) -> list[Span]:
    with receiver.lock:
        traces = list(receiver.traces)
    return [span for request in traces for resource in request.resource_spans
            for scope in resource.scope_spans for span in scope.spans
            if span.kind == Span.SPAN_KIND_CLIENT]


def latest_by_pid(receiver: Any) -> dict[int, tuple[int, dict[tuple[str, tuple], float]]]:
    """Each worker's latest export of poolclient's meter: {pid: (collection time in ns,
    {(metric, sorted attributes): value})}."""
    with receiver.lock:
        exports = list(receiver.metrics)
    latest: dict[int, tuple[int, dict[tuple[str, tuple], float]]] = {}
    for request in exports:
        for resource in request.resource_metrics:
            pid = next((int(_value(a.value)) for a in resource.resource.attributes
                        if a.key == "process.pid"), 0)
            for scope in resource.scope_metrics:
                if scope.scope.name != "poolclient":
                    continue
                points: dict[tuple[str, tuple], float] = {}
                at = 0
                for metric in scope.metrics:
                    kind = metric.WhichOneof("data")
                    for p in getattr(metric, kind).data_points:
                        attrs = tuple(sorted((a.key, _value(a.value)) for a in p.attributes))
                        value = p.count if kind == "histogram" else (p.as_int or p.as_double)
                        points[(metric.name, attrs)] = value
                        at = max(at, p.time_unix_nano)
                if at >= latest.get(pid, (0, {}))[0]:
                    latest[pid] = (at, points)
    return latest


def summed(points: dict[tuple[str, tuple], float], name: str, **attrs: Any) -> float:
    return sum(v for (n, a), v in points.items()
               if n == name and all((k, v2) in a for k, v2 in attrs.items()))


@pytest.fixture
def instrumented_gunicorn(tmp_path) -> Iterator[Any]:
    """gunicorn as ``opentelemetry-instrument gunicorn -c gunicorn.conf.py ...`` starts it."""
    yield from gunicorn_starter(tmp_path, (INSTRUMENT,))


def events(span: Span, name: str) -> list[dict[str, Any]]:
    return [{a.key: _value(a.value) for a in e.attributes} for e in span.events
            if e.name == name]


@pytest.mark.parametrize("master_calls", [0, 2])
def test_under_opentelemetry_instrument(receiver, instrumented_gunicorn, upstream: Upstream,
                                        master_calls: int):
    """The issue's Done-when, as a new user runs it: ``opentelemetry-instrument`` (the
    distro's configuration, every instrumentation on) around ``gunicorn -c gunicorn.conf.py
    -w 2 --threads 4 --preload``, serving the relay and an OpenAI client on the httpx2
    transport, exporting OTLP/HTTP to the receiver.

    With ``master_calls``, the app calls the upstream at import, in the master, whose SDK
    then exports (spans, and metrics) before the fork: no worker may write on the master's
    exporter connection, nor count the master's calls as its own."""
    env = {
        "MASTER_CALLS": str(master_calls),
        "UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
        "OTEL_SERVICE_NAME": "poolclient-test",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process",  # process.pid, per worker
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    server = instrumented_gunicorn(["-w", "2", "--threads", "4", "--preload",
                                    "tests.apps.otel_app:application"], env)
    workers = server.worker_pids()

    # Under load (new client connections each call, so both workers take part: rounds
    # until each has served some), no errors.
    sent, outcomes = 0, Counter()
    for _ in range(5):
        outcomes += load(server.url, clients=8, seconds=60, requests=100,
                         paths=("/upstream/items", "/openai"),
                         headers={"Connection": "close"})
        sent += 100
        health = health_by_worker(server, workers)
        if all(h["totals"]["requests"] for h in health.values()):
            break
    assert outcomes == {200: sent}, outcomes
    assert all(h["totals"]["requests"] for h in health.values()), "a worker served nothing"
    seen = upstream.stats()
    assert seen["requests"] == sent + master_calls

    # One client span per upstream call (OpenTelemetry's urllib3 instrumentation's, under
    # the OpenAI SDK too), each telling its pool wait and whether its connection was new
    # (with its handshake) or reused: new ones as many as the upstream's connections.
    wait_for(lambda: len(client_spans(receiver)) >= seen["requests"], 20,
             "every client span at the receiver")
    spans = client_spans(receiver)
    assert len(spans) == seen["requests"]
    assert len({span.span_id for span in spans}) == len(spans)
    assert all(len(events(span, otel.EVENT_WAIT)) == 1 for span in spans)
    attempts = [events(span, otel.EVENT_ATTEMPT) for span in spans]
    assert all(len(a) == 1 for a in attempts)
    new = [span for span, [a] in zip(spans, attempts, strict=True)
           if not a["poolclient.connection.reused"]]
    assert len(new) == len(seen["connections"])
    assert all(len(events(span, otel.EVENT_OPENED)) == 1 for span in new)
    assert sum(len(events(span, otel.EVENT_OPENED)) for span in spans) == len(new)

    # Each worker's pool metrics, as exported (process.pid tells the workers apart),
    # come to equal its /health; polled, the exports being periodic.
    health = health_by_worker(server, workers)

    def exported(pid: int) -> dict[str, float]:
        points = latest_by_pid(receiver).get(pid, (0, {}))[1]
        return {"idle": summed(points, "http.client.open_connections",
                               **{"http.connection.state": "idle"}),
                "in_use": summed(points, "http.client.open_connections",
                                 **{"http.connection.state": "active"}),
                "requests": summed(points, "poolclient.requests"),
                "connections_opened": summed(points, "poolclient.connections.opened")}

    def expected(pid: int) -> dict[str, float]:
        return {k: health[pid]["totals"][k] for k in ("idle", "in_use", "requests",
                                                       "connections_opened")}

    try:
        wait_for(lambda: all(exported(pid) == expected(pid) for pid in workers), 20,
                 "every worker's exported pool metrics equal to its /health")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {[(exported(p), expected(p)) for p in workers]}") \
            from None
    assert all(expected(pid)["in_use"] == 0 < expected(pid)["idle"] for pid in workers)
    assert sum(expected(pid)["requests"] for pid in workers) == sent
    assert sum(expected(pid)["connections_opened"] for pid in workers) == len(
        seen["connections"]) - (1 if master_calls else 0)
    assert receiver.undecodable == 0
    assert ("inherited a TCP connection" in server.log()) is False
