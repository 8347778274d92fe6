"""poolclient under OpenTelemetry's own instrumentations (urllib3, requests, httpx, httpx2),
as ``opentelemetry-instrument`` turns them on: every way into poolclient sends and answers
exactly what it does without them, apart from the spans and the one ``traceparent`` line.

Each way is called three times against the real TLS upstream, whose ``/header-lines``
answers the request's header lines as they arrived: before the instrumentation is on, with
it on, and after it is off again. The SDK's in-memory exporter holds the spans. What must
hold: the same lines arrived each time but for ``traceparent``, which arrives once, with
the trace and span of the client span that sent it, exactly when an instrumentation made
one; one client span per upstream call (two nested in one trace where both httpx's and
urllib3's are on a client); the three calls on one connection, as without OpenTelemetry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import requests
from urllib3 import HTTPHeaderDict

from poolclient import Registry
from poolclient.integrations._httpx_family import HeaderLines
from tests.helpers import Upstream

httpx2 = pytest.importorskip("httpx2")
trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.instrumentation.httpx import (  # noqa: E402
    HTTPX2ClientInstrumentor,
    HTTPXClientInstrumentor,
)
from opentelemetry.instrumentation.requests import RequestsInstrumentor  # noqa: E402
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind  # noqa: E402

Lines = list[tuple[str, str]]

# --- HeaderLines: the mapping urllib3 documents ----------------------------------------


def test_header_lines_behave_as_urllib3s_header_dict() -> None:
    """Every mapping operation on HeaderLines answers what urllib3's HTTPHeaderDict answers
    for the same lines, while items() stays the lines to send, order and repeats kept."""
    start = [("Accept", "a/b"), ("X-Rep", "1"), ("Host", "h"), ("x-rep", "2")]
    lines, reference = HeaderLines(list(start)), HTTPHeaderDict()
    for name, value in start:
        reference.add(name, value)

    def same() -> None:
        assert dict(lines) == dict(reference)
        assert len(lines) == len(reference)
        assert list(lines) == list(reference)
        assert lines == reference
        for name in ("accept", "X-REP", "host", "traceparent", "missing"):
            assert (name in lines) == (name in reference)
            assert lines.get(name) == reference.get(name)

    same()
    assert lines["x-rep"] == "1, 2"
    assert lines.items() is lines.lines  # what urllib3 writes: the lines themselves
    assert 3 not in lines and lines.get(b"host") is None  # not a name: nothing raised

    for target in (lines, reference):
        target["TRACEPARENT"] = "00-aa-bb-01"  # new: appended
        target["traceparent"] = "00-cc-dd-01"  # again: replaced, not repeated
        target["X-Rep"] = "3"  # a repeated name: one line left, where its first was
        assert target.setdefault("accept", "other") == "a/b"
        assert target.setdefault("X-New", "n") == "n"
        del target["HOST"]
    same()
    assert lines.lines == [("Accept", "a/b"), ("X-Rep", "3"), ("traceparent", "00-cc-dd-01"),
                           ("X-New", "n")]
    with pytest.raises(KeyError):
        del lines["host"]
    with pytest.raises(KeyError):
        lines["host"]
    copied = lines.copy()
    copied["X-Copy"] = "1"
    assert "x-copy" not in lines and copied["x-copy"] == "1"
    lines.update({"x-rep": "4"}, Accept="c/d")
    assert lines.lines[:2] == [("Accept", "c/d"), ("x-rep", "4")]  # in place
    assert lines.pop("x-new") == "n" and "x-new" not in lines


# --- every way in, under each instrumentation --------------------------------------------

PROVIDER = trace_sdk.TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))

INSTRUMENTORS: dict[str, Any] = {
    "urllib3": URLLib3Instrumentor(),
    "requests": RequestsInstrumentor(),
    "httpx": HTTPXClientInstrumentor(),
    "httpx2": HTTPX2ClientInstrumentor(),
}
SCOPE = "opentelemetry.instrumentation."
VOLATILE = {"x-amz-date", "authorization", "amz-sdk-invocation-id"}  # botocore: per call


@contextmanager
def instrumented(names: tuple[str, ...]) -> Iterator[None]:
    """The named instrumentations on, with the in-memory exporter's provider; off again
    afterwards, whatever happened (those turned on so far)."""
    on: list[Any] = []
    try:
        for name in names:
            instrumentor = INSTRUMENTORS[name]
            assert not instrumentor.is_instrumented_by_opentelemetry, f"{name} was left on"
            instrumentor.instrument(tracer_provider=PROVIDER)
            on.append(instrumentor)
        yield
    finally:
        for instrumentor in reversed(on):
            instrumentor.uninstrument()


def _lines(payload: Any) -> Lines:
    if isinstance(payload, (bytes, str)):
        payload = json.loads(payload)
    return [(name, value) for name, value in payload["lines"]]


def way(name: str, registry: Registry, upstream: Upstream) -> tuple[Callable[[], Lines], Any]:
    """A call through ``name`` that GETs /header-lines, and the httpx client it uses (else
    None). Clients are made once, before any instrumentation, as an app makes them at
    import."""
    url = upstream.url + "/header-lines"
    if name == "request":
        def call() -> Lines:
            r = registry.request("GET", url)
            assert r.status == 200
            return _lines(r.data)
        return call, None
    if name in ("session", "adapter"):
        if name == "session":
            session = registry.session()
        else:
            session = requests.Session()
            session.mount("https://", registry.adapter())

        def call() -> Lines:
            r = session.get(url)
            assert r.status_code == 200
            return _lines(r.content)
        return call, None
    if name == "pool_manager":
        manager = registry.pool_manager()

        def call() -> Lines:
            r = manager.request("GET", url)
            assert r.status == 200
            return _lines(r.data)
        return call, None
    if name in ("httpx", "httpx2"):
        package = httpx if name == "httpx" else httpx2
        transport = (registry.httpx_transport() if name == "httpx"
                     else registry.httpx2_transport())
        client = package.Client(transport=transport)

        def call() -> Lines:
            r = client.get(url, headers=[("X-Rep", "1"), ("X-Rep", "2")])
            assert r.status_code == 200
            return _lines(r.content)
        return call, client
    if name == "elastic":
        elasticsearch = pytest.importorskip("elasticsearch")
        from poolclient.integrations.elastic import PooledNode

        es = elasticsearch.Elasticsearch(upstream.url, node_class=PooledNode.on(registry),
                                         ca_certs=upstream.ca)

        def call() -> Lines:
            # The transport the client's API calls go through (the product check of
            # the API layer aside: /header-lines is not Elasticsearch).
            response = es.transport.perform_request("GET", "/header-lines")
            assert response.meta.status == 200
            return _lines(response.body)
        return call, None
    if name == "opensearch":
        opensearchpy = pytest.importorskip("opensearchpy")
        from poolclient.integrations.opensearch import PooledConnection

        client = opensearchpy.OpenSearch(upstream.url, ca_certs=upstream.ca,
                                         connection_class=PooledConnection.on(registry))

        def call() -> Lines:
            return _lines(client.transport.perform_request("GET", "/header-lines"))
        return call, None
    if name == "botocore":
        boto3 = pytest.importorskip("boto3")
        from botocore.config import Config

        from poolclient.integrations.botocore import use_registry

        s3 = use_registry(boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1").client(
                "s3", endpoint_url=upstream.url, verify=upstream.ca,
                config=Config(s3={"addressing_style": "path"},
                              retries={"mode": "standard", "total_max_attempts": 1})),
            registry)

        def call() -> Lines:
            # GetBucketPolicy hands back its body as it came: GET /header-lines?policy.
            return _lines(s3.get_bucket_policy(Bucket="header-lines")["Policy"])
        return call, None
    raise AssertionError(name)


WAYS = ["request", "session", "adapter", "pool_manager", "httpx", "httpx2", "elastic",
        "opensearch", "botocore"]


def expected_scopes(instrumentation: str, name: str) -> list[str]:
    """The instrumentations whose client spans one call makes, outermost first.

    OpenTelemetry's httpx instrumentation wraps httpx's own ``HTTPTransport`` class (a
    transport of ours is left alone) unless the client is instrumented by
    ``instrument_client``; requests' turns urllib3's off under its own span.
    """
    if instrumentation == "httpx_client+urllib3":
        return ["httpx", "urllib3"]  # httpx2's spans are named by the httpx module too
    if instrumentation == "httpx_client":
        return ["httpx"]
    if instrumentation == "requests" or (instrumentation == "all"
                                         and name in ("session", "adapter")):
        return ["requests"] if name in ("session", "adapter") else []
    if instrumentation in ("urllib3", "all"):
        return ["urllib3"]
    return []  # httpx and httpx2, globally: not on our transports


CASES = [pytest.param(i, w, id=f"{i}-{w}")
         for i in ("urllib3", "requests", "httpx", "all") for w in WAYS]
CASES += [pytest.param(i, w, id=f"{i}-{w}") for i in ("httpx_client", "httpx_client+urllib3")
          for w in ("httpx", "httpx2")]


@pytest.mark.parametrize(("instrumentation", "name"), CASES)
def test_every_way_in_behaves_the_same_under_instrumentation(
        instrumentation: str, name: str, registry: Registry, upstream: Upstream) -> None:
    call, client = way(name, registry, upstream)
    names = {"all": ("urllib3", "requests", "httpx", "httpx2"), "httpx_client": (),
             "httpx_client+urllib3": ("urllib3",)}.get(instrumentation, (instrumentation,))
    EXPORTER.clear()

    before = call()
    assert not EXPORTER.get_finished_spans()
    with instrumented(names):
        instrumentor = HTTPXClientInstrumentor if name == "httpx" else HTTPX2ClientInstrumentor
        if instrumentation.startswith("httpx_client"):
            instrumentor.instrument_client(client, tracer_provider=PROVIDER)
        try:
            during = call()
        finally:
            if instrumentation.startswith("httpx_client"):
                instrumentor.uninstrument_client(client)
    spans = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.CLIENT]
    after = call()

    # Without the instrumentation, before and after: the same lines, no trace context.
    assert _comparable(before) == _comparable(after)
    assert not [v for k, v in after if k.lower() == "traceparent"]
    assert len(EXPORTER.get_finished_spans()) == len(spans)  # nothing after: all off

    # With it: the same lines but for traceparent, sent once, by the innermost span.
    scopes = expected_scopes(instrumentation, name)
    assert [s.instrumentation_scope.name for s in spans] == [
        SCOPE + scope for scope in reversed(scopes)]  # inner spans end first
    sent = [v for k, v in during if k.lower() == "traceparent"]
    assert _comparable([line for line in during if line[0].lower() != "traceparent"]) == \
        _comparable(before)
    if not spans:
        assert sent == []
    else:
        inner = spans[0].get_span_context()
        assert sent == [f"00-{inner.trace_id:032x}-{inner.span_id:016x}-{inner.trace_flags:02x}"]
        assert len({s.context.trace_id for s in spans}) == 1  # one tree
        for child, parent in zip(spans, spans[1:], strict=False):
            assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert any(str(upstream.port) in str(v) for v in spans[-1].attributes.values())
        assert all(s.status.is_ok or s.status.status_code.name == "UNSET" for s in spans)

    # Three calls, one connection, in the pools and at the upstream.
    seen = upstream.stats()
    assert seen["requests"] == 3 and len(seen["connections"]) == 1
    totals = registry.stats().totals()
    assert (totals["requests"], totals["connections_opened"], totals["reused"]) == (3, 1, 2)
    assert totals["errors"] == totals["in_use"] == 0


def _comparable(lines: Lines) -> Lines:
    """The lines with the values that change per call (botocore's signature) blanked."""
    return [(k, "" if k.lower() in VOLATILE else v) for k, v in lines]
