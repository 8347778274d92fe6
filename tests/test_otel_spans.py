"""What a pool did for one request, on its client span (poolclient.integrations.otel,
SpanEvents): the pool wait, a new connection (its handshake, TLS resumed or not) against a
reused one, the stale-connection resend and the async connect retry; for the async pools,
which no OpenTelemetry instrumentation covers, poolclient's own client span, with the trace
context sent once. And each connection's age at close, as http.client.connection.duration.
Spans from the SDK's in-memory exporter, counts from the real TLS upstream."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from poolclient import Registry, Settings
from poolclient.stats import publish_all
from tests.helpers import refused_url, wait_for

httpx2 = pytest.importorskip("httpx2")
trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor  # noqa: E402
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

from poolclient.integrations import otel  # noqa: E402


@pytest.fixture
def spans() -> Iterator[tuple[Any, InMemorySpanExporter]]:
    """A tracer provider with an in-memory exporter; poolclient's span events on for the
    pools made in the test, off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = trace_sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.enable_spans(True, provider)
    try:
        yield provider, exporter
    finally:
        otel.enable_spans(None)
        provider.shutdown()


@pytest.fixture
def urllib3_spans(spans) -> Iterator[InMemorySpanExporter]:
    provider, exporter = spans
    URLLib3Instrumentor().instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        URLLib3Instrumentor().uninstrument()


def client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


def events(span: Any, name: str | None = None) -> list[Any]:
    return [e for e in span.events if name is None or e.name == name]


def test_sync_spans_show_the_wait_and_new_or_reused_connections(urllib3_spans, upstream):
    """Two calls in a row: the first opens a connection (its handshake timed, a full TLS
    handshake), the second reuses it. Then a pool of one held by a stream: the next call
    waits for it. Each span: one wait event, one attempt event saying new or reused."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=5))
    try:
        for _ in range(2):
            assert registry.request("GET", upstream.url + "/x").status == 200
        held = registry.request("GET", upstream.url + "/x", preload_content=False)
        waiter = threading.Thread(target=registry.request, args=("GET", upstream.url + "/x"))
        waiter.start()
        wait_for(lambda: registry.stats().totals()["waits"] == 1, 10, "the caller to wait")
        held.read()
        held.release_conn()
        waiter.join()
        found = client_spans(urllib3_spans)
        found.sort(key=lambda s: s.start_time)
        seen = upstream.stats()
        assert seen["requests"] == len(found) == 4 and len(seen["connections"]) == 1
        assert [[e.name for e in s.events] for s in found] == [
            [otel.EVENT_WAIT, otel.EVENT_OPENED, otel.EVENT_ATTEMPT]] + [
            [otel.EVENT_WAIT, otel.EVENT_ATTEMPT]] * 3
        assert [events(s, otel.EVENT_ATTEMPT)[0].attributes["poolclient.connection.reused"]
                for s in found] == [False, True, True, True]
        opened = events(found[0], otel.EVENT_OPENED)[0].attributes
        assert opened["tls.resumed"] is False
        assert opened["poolclient.connection.handshake.duration"] > 0
        waits = [events(s, otel.EVENT_WAIT)[0].attributes["poolclient.pool.wait.duration"]
                 for s in found]
        assert waits[3] > 0  # the one that waited for the held connection
        assert all(s.instrumentation_scope.name.endswith("urllib3") for s in found)
    finally:
        registry.close()


def test_a_stale_connection_resent_is_one_span_with_a_retry_event(urllib3_spans, upstream):
    """The upstream closes the idle connection without a byte (/drop-next): the pool
    sends the GET again on a new connection, inside the same client span, which says so."""
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=1, pool_timeout=5))
    try:
        assert registry.request("GET", upstream.url + "/drop-next").status == 200
        urllib3_spans.clear()
        assert registry.request("GET", upstream.url + "/x").status == 200
        [span] = client_spans(urllib3_spans)
        assert [e.name for e in span.events] == [
            otel.EVENT_WAIT, otel.EVENT_RETRY, otel.EVENT_ATTEMPT, otel.EVENT_OPENED,
            otel.EVENT_ATTEMPT]
        assert events(span, otel.EVENT_RETRY)[0].attributes == {
            "poolclient.retry.reason": "stale"}
        assert [e.attributes["poolclient.connection.reused"]
                for e in events(span, otel.EVENT_ATTEMPT)] == [True, False]
        # The new connection resumed the first one's TLS session.
        assert events(span, otel.EVENT_OPENED)[0].attributes["tls.resumed"] is True
        seen = upstream.stats()
        assert len(seen["connections"]) == 2 and registry.stats().totals()["retried"] == 1
    finally:
        registry.close()


def _lines(response: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(response.content)["lines"]]


def traceparent(span: Any) -> str:
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"


def test_async_calls_get_a_client_span_of_their_own(spans, upstream):
    """No instrumentation covers the async transports: each call gets poolclient's client
    span, whose trace context is the one traceparent the upstream receives; events as the
    sync pools'. A second call reuses the connection."""
    _, exporter = spans
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, pool_timeout=5))

    async def main() -> list[Any]:
        async with httpx2.AsyncClient(transport=registry.httpx2_async_transport()) as client:
            return [await client.get(upstream.url + "/header-lines") for _ in range(2)]

    try:
        responses = asyncio.run(main())
        found = client_spans(exporter)
        assert len(found) == 2 == upstream.stats()["requests"]
        for span, response in zip(found, responses, strict=True):
            assert span.instrumentation_scope.name == otel.TRACER
            assert span.name == "GET"
            assert span.attributes["http.response.status_code"] == 200
            assert span.attributes["server.port"] == upstream.port
            sent = [v for k, v in _lines(response) if k.lower() == "traceparent"]
            assert sent == [traceparent(span)]
        assert [[e.name for e in s.events] for s in found] == [
            [otel.EVENT_OPENED, otel.EVENT_ATTEMPT, otel.EVENT_WAIT],
            [otel.EVENT_ATTEMPT, otel.EVENT_WAIT]]
        assert [events(s, otel.EVENT_ATTEMPT)[0].attributes["poolclient.connection.reused"]
                for s in found] == [False, True]
        assert events(found[0], otel.EVENT_OPENED)[0].attributes["tls.resumed"] is False
        assert len(upstream.stats()["connections"]) == 1
    finally:
        registry.close()


def test_an_instrumented_async_client_keeps_one_span_and_one_traceparent(spans, upstream):
    """An httpx2 client instrumented by OpenTelemetry made the client span and sent its
    context: poolclient makes no second span, sends nothing more, and puts its events on
    that span."""
    provider, exporter = spans
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, pool_timeout=5))

    async def main() -> Any:
        async with httpx2.AsyncClient(transport=registry.httpx2_async_transport()) as client:
            HTTPX2ClientInstrumentor.instrument_client(client, tracer_provider=provider)
            try:
                return await client.get(upstream.url + "/header-lines")
            finally:
                HTTPX2ClientInstrumentor.uninstrument_client(client)

    try:
        response = asyncio.run(main())
        [span] = client_spans(exporter)
        assert span.instrumentation_scope.name != otel.TRACER
        assert [v for k, v in _lines(response) if k.lower() == "traceparent"] == [
            traceparent(span)]
        assert [e.name for e in span.events] == [
            otel.EVENT_OPENED, otel.EVENT_ATTEMPT, otel.EVENT_WAIT]
    finally:
        registry.close()


def test_async_connect_retries_and_failures_on_the_span(spans):
    """A refused connect, tried again by the async pool: retry events (reason connect) on
    the call's own span, which ends in error."""
    _, exporter = spans
    registry = Registry(Settings(connect_retries=2, backoff=0.001))
    url = refused_url()

    async def main() -> None:
        async with httpx2.AsyncClient(transport=registry.httpx2_async_transport()) as client:
            with pytest.raises(httpx2.ConnectError):
                await client.get(url)
            assert registry.stats().totals()["retried"] == 2

    try:
        asyncio.run(main())
        [span] = client_spans(exporter)
        assert [e.attributes for e in events(span, otel.EVENT_RETRY)] == [
            {"poolclient.retry.reason": "connect"}] * 2
        assert span.status.status_code.name == "ERROR"
    finally:
        registry.close()


def test_connection_duration_from_the_pools_own_ages(upstream):
    """http.client.connection.duration: one point per connection a pool closed, sync and
    async, as many as the upstream saw closed."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.enable(provider)
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=2, pool_timeout=5))
    try:
        held = [registry.request("GET", upstream.url + "/x", preload_content=False)
                for _ in range(2)]
        for response in held:
            response.read()
            response.release_conn()

        async def main() -> None:
            transport = registry.httpx2_async_transport()
            async with httpx2.AsyncClient(transport=transport) as client:
                assert (await client.get(upstream.url + "/x")).status_code == 200
            await registry.aclose()

        asyncio.run(main())
        registry.close()
        publish_all()
        wait_for(lambda: not any(c["open"] for c in upstream.stats()["connections"]), 10,
                 "the upstream to see every connection closed")
        data = reader.get_metrics_data()
        counts = [p.count for rm in data.resource_metrics for sm in rm.scope_metrics
                  if sm.scope.name == otel.METER for m in sm.metrics
                  if m.name == "http.client.connection.duration" for p in m.data.data_points]
        assert sum(counts) == len(upstream.stats()["connections"]) == 3
    finally:
        registry.close()
        otel.disable()
        provider.shutdown()


def test_a_refusal_is_told_to_the_span(spans):
    """The resilience policy's refusals reach the current span through PoolStats.refused,
    named as the policy names them."""
    from poolclient.resilience import Refusal
    from poolclient.stats import PoolStats

    provider, exporter = spans
    stats = PoolStats(4)
    with provider.get_tracer("test").start_as_current_span("call", kind=SpanKind.CLIENT):
        stats.refused(Refusal.OPEN.value)
        stats.refused(Refusal.BUDGET.value)
    [span] = client_spans(exporter)
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        (otel.EVENT_REFUSED, {"poolclient.refusal.reason": "open"}),
        (otel.EVENT_REFUSED, {"poolclient.refusal.reason": "budget"})]
    otel.enable_spans(False)
    assert PoolStats(4).events is None


def test_an_open_breaker_refusal_is_an_event_on_the_calls_span(spans, urllib3_spans,
                                                               upstream):
    """Five 503s open the origin's breaker; the next calls are refused before any socket.
    An async call's own client span says why. A sync call is refused in the pool before
    urllib3's instrumentation starts its span: the event goes on the span current then,
    here the handler's."""
    from poolclient.resilience import PolicySettings

    provider, _ = spans
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=5),
                        policy=PolicySettings())
    try:
        for _ in range(5):
            assert registry.request("GET", upstream.url + "/status/503",
                                    retries=False).status == 503
        urllib3_spans.clear()
        with provider.get_tracer("test").start_as_current_span("handler"), \
                pytest.raises(Exception, match="circuit"):
            registry.request("GET", upstream.url + "/x")

        async def main() -> None:
            async with httpx2.AsyncClient(
                    transport=registry.httpx2_async_transport()) as client:
                with pytest.raises(httpx2.ConnectError, match="circuit"):
                    await client.get(upstream.url + "/x")

        asyncio.run(main())
        handler, own = sorted(urllib3_spans.get_finished_spans(), key=lambda s: s.start_time)
        assert (handler.name, own.instrumentation_scope.name) == ("handler", otel.TRACER)
        assert own.kind is SpanKind.CLIENT and own.status.status_code.name == "ERROR"
        for span in (handler, own):
            assert [e.attributes for e in events(span, otel.EVENT_REFUSED)] == [
                {"poolclient.refusal.reason": "open"}]
        assert upstream.stats()["requests"] == 5
    finally:
        registry.close()
