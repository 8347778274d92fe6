"""OpenTelemetry metrics of the pools, named as OpenTelemetry's semantic conventions name
HTTP client connection metrics, through OpenTelemetry's metrics API; and events on each
request's client span saying what its pool did.

Nothing to call: where the process has a global meter provider configured (as
``opentelemetry-instrument`` configures one, or the app with ``set_meter_provider``) when a
pool is made, the pool reports here too, beside Prometheus (:func:`poolclient.metrics
.pool_sink`); :func:`enable` names another provider. Where OpenTelemetry's metrics API was
never imported, or no provider is set, this module is not imported: the check is made once
per new pool, never per request.

What is measured, attributes ``server.address``, ``server.port`` and ``url.scheme`` on each:

- from the pools' state when the reader collects (every registry of the process, sync and
  async pools summed per origin): ``http.client.open_connections`` (``http.connection.state``
  ``active`` or ``idle``), ``http.client.active_requests`` (requests holding a connection;
  callers still waiting for one are in ``poolclient.pool.waits``),
  ``poolclient.connections.streaming``, ``poolclient.connections.limit`` (the pool's
  maxsize) and ``poolclient.inherited_connections`` (by ``network.peer.address`` and
  ``network.peer.port``: connections a worker inherited that no pool owns);
- from the pools' events (per request in batches, handed over at each collection, as a
  Prometheus scrape does, and otherwise within :data:`~poolclient.stats.PUBLISH_EVERY`):
  ``http.client.request.duration`` (per attempt, retries included, in seconds),
  ``http.client.connection.duration`` (each connection's age when the pool, or the
  process, closed it, sync and async), ``poolclient.pool.wait.duration``, and the counters
  ``poolclient.requests``, ``poolclient.requests.reused``, ``poolclient.requests.retried``,
  ``poolclient.pool.waits``, ``poolclient.connections.opened``,
  ``poolclient.connections.closed`` (``poolclient.close.reason``: expired, retired,
  discarded, unread, ...) and ``poolclient.errors`` (``error.type``: connect, tls, timeout,
  protocol, pool_timeout, deadline, other).

Under gunicorn, pools made in the master (``--preload``) report nothing here: the SDK's
state at the fork is copied into every worker (:func:`poolclient.gunicorn.in_master`).

Spans (:class:`SpanEvents`), where a tracer provider is configured (or
:func:`enable_spans`): each request's client span gets events for what its pool did:
``poolclient.pool.wait`` (every checkout, with the wait), ``poolclient.connection.opened``
(a new connection: its handshake time, ``tls.resumed``), ``poolclient.request.sent`` (each
attempt, ``poolclient.connection.reused`` true or false), ``poolclient.retry`` (the stale
resend, an async connect retry) and ``poolclient.refused`` (the resilience policy refused
the call: ``poolclient.refusal.reason`` open, overflow or budget). The sync pools' client span is
OpenTelemetry's urllib3 (or requests) instrumentation's; the async pools make their own
(scope ``poolclient``, the trace context sent in the request) unless the request already
carries one, from an instrumented httpx client, whose span then gets the events. (A sync
call the policy refuses never reaches urllib3, whose instrumentation makes no span for it:
its event goes on the span current then, the caller's.)

The meter is named ``poolclient``: where OpenTelemetry's own urllib3 or httpx
instrumentation reports ``http.client.request.duration`` too, its instrumentation scope
tells the two apart (theirs is per call, ours per attempt on the wire).
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import SpanKind, StatusCode

from .. import _fork, inherited
from ..stats import publish_all

if TYPE_CHECKING:
    import httpcore2

    from ..stats import Batch, PoolSnapshot

METER = "poolclient"
# OpenTelemetry's advice for http.client.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0)
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# OpenTelemetry's advice for http.client.connection.duration, in seconds.
CONNECTION_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                      120.0, 300.0)

# The span events of one request (SpanEvents), on the client span current when the pool
# acts: OpenTelemetry's urllib3 instrumentation's (sync pools), httpx's where a client is
# instrumented, else poolclient's own (async pools).
EVENT_WAIT = "poolclient.pool.wait"  # each checkout: poolclient.pool.wait.duration (s)
EVENT_OPENED = "poolclient.connection.opened"  # a new connection: handshake, tls.resumed
EVENT_ATTEMPT = "poolclient.request.sent"  # each attempt: poolclient.connection.reused
EVENT_RETRY = "poolclient.retry"  # poolclient.retry.reason: stale or connect
# The resilience policy's refusals of a call (poolclient.refusal.reason: open, overflow or
# budget, as the policy names them), told through PoolStats.refused.
EVENT_REFUSED = "poolclient.refused"
TRACER = "poolclient"

_Origin = tuple[str, str, int]  # scheme, host, port


class _Instruments:
    """The instruments of one meter provider."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter(METER, _version())
        self.provider = provider
        self.duration = meter.create_histogram(
            "http.client.request.duration", unit="s",
            description="Duration of HTTP client requests (per attempt on a connection).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.wait = meter.create_histogram(
            "poolclient.pool.wait.duration", unit="s",
            description="Time a request waited for a connection from its pool.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS)
        self.requests = meter.create_counter(
            "poolclient.requests", unit="{request}",
            description="Requests sent (attempts, retries included).")
        self.reused = meter.create_counter(
            "poolclient.requests.reused", unit="{request}",
            description="Requests sent on a connection that had carried one before.")
        self.retried = meter.create_counter(
            "poolclient.requests.retried", unit="{request}",
            description="Requests sent again after a reused connection died unanswered.")
        self.waits = meter.create_counter(
            "poolclient.pool.waits", unit="{request}",
            description="Requests that found every connection of their pool in use and "
                        "waited.")
        self.opened = meter.create_counter(
            "poolclient.connections.opened", unit="{connection}",
            description="TCP (and TLS) connections established.")
        self.closed = meter.create_counter(
            "poolclient.connections.closed", unit="{connection}",
            description="Connections closed by the pool, by reason.")
        self.errors = meter.create_counter(
            "poolclient.errors", unit="{attempt}", description="Failed attempts, by kind.")
        self.connection_duration = meter.create_histogram(
            "http.client.connection.duration", unit="s",
            description="The duration of the successfully established outbound HTTP "
                        "connections.",
            explicit_bucket_boundaries_advisory=CONNECTION_BUCKETS)
        meter.create_observable_up_down_counter(
            "http.client.open_connections", [_open_connections], unit="{connection}",
            description="Number of outbound HTTP connections that are currently active or "
                        "idle on the client.")
        meter.create_observable_up_down_counter(
            "http.client.active_requests", [_active_requests], unit="{request}",
            description="Number of active HTTP requests.")
        meter.create_observable_up_down_counter(
            "poolclient.connections.streaming", [_streaming], unit="{connection}",
            description="Connections held by responses whose body is still being read.")
        meter.create_observable_gauge(
            "poolclient.connections.limit", [_limit], unit="{connection}",
            description="The most connections a pool keeps to its origin in this process.")
        meter.create_observable_up_down_counter(
            "poolclient.inherited_connections", [_inherited], unit="{connection}",
            description="TCP connections a worker inherited that no pool owns (a client "
                        "used in gunicorn's master before the fork), by peer.")


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("poolclient")
    except importlib.metadata.PackageNotFoundError:
        return ""


class OTelSink:
    """One pool's :class:`~poolclient.stats.EventSink`: its events as measurements, with the
    pool's attributes made once."""

    def __init__(self, instruments: _Instruments, origin: _Origin) -> None:
        self._instruments = instruments
        self._attributes = _attributes(origin)
        self._by_kind: dict[str, dict[str, Any]] = {}
        self._by_reason: dict[str, dict[str, Any]] = {}

    def publish(self, batch: Batch) -> None:
        i, attributes = self._instruments, self._attributes
        if batch.requests:
            i.requests.add(batch.requests, attributes)
        if batch.reused:
            i.reused.add(batch.reused, attributes)
        if batch.waited:
            i.waits.add(batch.waited, attributes)
        for seconds in batch.durations:
            i.duration.record(seconds, attributes)
        for seconds in batch.waits:
            i.wait.record(seconds, attributes)

    def opened(self) -> None:
        self._instruments.opened.add(1, self._attributes)

    def failed(self, kind: str) -> None:
        attributes = self._by_kind.get(kind)
        if attributes is None:
            attributes = self._by_kind[kind] = {**self._attributes, "error.type": kind}
        self._instruments.errors.add(1, attributes)

    def closed(self, reason: str) -> None:
        attributes = self._by_reason.get(reason)
        if attributes is None:
            attributes = self._by_reason[reason] = {**self._attributes,
                                                    "poolclient.close.reason": reason}
        self._instruments.closed.add(1, attributes)

    def retried(self) -> None:
        self._instruments.retried.add(1, self._attributes)

    def ended(self, seconds: float) -> None:
        self._instruments.connection_duration.record(seconds, self._attributes)


# --- spans: what the pool did for one request, as events on its client span -----------


def _event(name: str, attributes: dict[str, Any]) -> None:
    span = otel_trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


class SpanEvents:
    """A pool's :class:`~poolclient.stats.RequestEvents`: events on the span current when
    the pool acts (no span of its own: the client span is the instrumentation's), or
    nothing where none records."""

    def waited(self, seconds: float) -> None:
        _event(EVENT_WAIT, {"poolclient.pool.wait.duration": seconds})

    def opened(self, seconds: float, resumed: bool | None) -> None:
        attributes: dict[str, Any] = {"poolclient.connection.handshake.duration": seconds}
        if resumed is not None:
            attributes["tls.resumed"] = resumed
        _event(EVENT_OPENED, attributes)

    def attempted(self, reused: bool) -> None:
        _event(EVENT_ATTEMPT, {"poolclient.connection.reused": reused})

    def retried(self, reason: str) -> None:
        _event(EVENT_RETRY, {"poolclient.retry.reason": reason})

    def refused(self, reason: str) -> None:
        _event(EVENT_REFUSED, {"poolclient.refusal.reason": reason})

    def start(self, request: httpcore2.Request, scheme: str, host: str,
              port: int) -> ClientCall:
        """An async pool's call (there is no instrumentation of httpcore2, nor of
        poolclient's httpx transports): its own client span, the trace context sent in
        its headers, unless the request carries one already (an instrumented httpx
        client made the client span and sent it: the events go on that span)."""
        if any(name.lower() == b"traceparent" for name, _ in request.headers):
            return ClientCall(None, None)
        method = request.method.decode("ascii", "replace")
        target = request.url.target.decode("ascii", "replace")
        port_part = "" if port == (443 if scheme == "https" else 80) else f":{port}"
        span = _tracer().start_span(method, kind=SpanKind.CLIENT, attributes={
            "http.request.method": method, "server.address": host, "server.port": port,
            "url.full": f"{scheme}://{host}{port_part}{target.split('?', 1)[0]}",
            "url.scheme": scheme})
        context = otel_trace.set_span_in_context(span)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        request.headers.extend((k.encode("latin-1"), v.encode("latin-1"))
                               for k, v in carrier.items())
        return ClientCall(span, otel_context.attach(context))


class ClientCall:
    """One async call's own client span (``span`` ``None`` where the request came with a
    trace context): current while the request is sent, ended when its response is done
    with, or when the call fails."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: object) -> None:
        self.span = span
        self.token = token

    def sent(self, status: int, waited: float) -> None:
        _event(EVENT_WAIT, {"poolclient.pool.wait.duration": waited})
        if self.span is not None:
            self.span.set_attribute("http.response.status_code", status)
            if status >= 400:
                self.span.set_attribute("error.type", str(status))
                self.span.set_status(StatusCode.ERROR)
        self._detach()

    def failed(self, exc: BaseException) -> None:
        if self.span is not None:
            self.span.set_attribute("error.type", type(exc).__qualname__)
            self.span.record_exception(exc)
            self.span.set_status(StatusCode.ERROR, str(exc))
        self._detach()
        self.finished()

    def finished(self) -> None:
        if self.span is not None:
            self.span.end()
            self.span = None

    def _detach(self) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None


_span_events = SpanEvents()
_spans_enabled: bool | None = None  # None: as the global tracer provider says
_tracer_provider: otel_trace.TracerProvider | None = None  # None: the global one


def _tracer() -> otel_trace.Tracer:
    return otel_trace.get_tracer(TRACER, _version(), _tracer_provider)


def request_events() -> SpanEvents | None:
    """The span events for a new pool: where spans are enabled, or (by default) where a
    global tracer provider is configured."""
    if _spans_enabled is None:
        name = type(otel_trace.get_tracer_provider()).__name__
        return None if name in ("ProxyTracerProvider", "NoOpTracerProvider") else _span_events
    return _span_events if _spans_enabled else None


def enable_spans(enabled: bool | None = True,
                 tracer_provider: otel_trace.TracerProvider | None = None) -> None:
    """Pools made from here on tell their requests' spans what they did (``True``), or
    not (``False``), or as the global tracer provider says (``None``, the default: where
    one is configured). The events go on whatever span is current, of any provider;
    poolclient's own client spans (async pools) come from ``tracer_provider``, by default
    the global one."""
    global _spans_enabled, _tracer_provider
    _spans_enabled = enabled
    _tracer_provider = tracer_provider


_instruments: _Instruments | None = None
_made: dict[MeterProvider, _Instruments] = {}
_lock = threading.Lock()


def enable(meter_provider: MeterProvider | None = None) -> None:
    """Report to ``meter_provider`` (the global one by default) from now on: pools made from
    here on send it their events, and the state of every pool is observed at collection.
    Called for you on the first pool made once a global provider is configured; call it
    yourself to use another provider."""
    global _instruments
    provider = meter_provider or otel_metrics.get_meter_provider()
    with _lock:
        made = _made.get(provider)
        if made is None:  # once per provider: its observed instruments stay registered
            made = _made[provider] = _Instruments(provider)
        _instruments = made


def disable() -> None:
    """Pools made from here on report to OpenTelemetry no more (until :func:`enable`). The
    observed instruments stay with their provider, which OpenTelemetry cannot take back."""
    global _instruments
    with _lock:
        _instruments = None


def configured() -> bool:
    """Whether a meter provider is set globally: not the API's stand-in that waits for one,
    nor its no-op."""
    name = type(otel_metrics.get_meter_provider()).__name__
    return name not in ("_ProxyMeterProvider", "NoOpMeterProvider")


def pool_sink(scheme: str, host: str, port: int) -> OTelSink | None:
    """The sink for a new pool: ``None`` unless enabled or a global provider is set."""
    if _instruments is None:
        if not configured():
            return None
        enable()
    instruments = _instruments
    return None if instruments is None else OTelSink(instruments, (scheme, host, port))


# --- observed at collection: the pools' state, from every registry's snapshot ----------


def _attributes(origin: _Origin) -> dict[str, Any]:
    scheme, host, port = origin
    return {"server.address": host, "server.port": port, "url.scheme": scheme}


def _pools() -> Iterator[PoolSnapshot]:
    for registry in list(_fork._registries):
        stats = getattr(registry, "stats", None)
        if stats is not None:
            yield from stats().pools


def _by_origin(field: str) -> Counter[_Origin]:
    totals: Counter[_Origin] = Counter()
    for pool in _pools():
        totals[(pool.scheme, pool.host, pool.port)] += getattr(pool, field)
    return totals


def _observations(totals: Counter[_Origin], **extra: str) -> list[Observation]:
    return [Observation(value, {**_attributes(origin), **extra})
            for origin, value in totals.items()]


def _open_connections(options: CallbackOptions) -> Iterable[Observation]:
    # The first observed instrument made, so the first callback of every collection, and
    # the SDK runs the callbacks before it collects the counters and histograms: what the
    # requests did is handed over first, as a Prometheus scrape does. Otherwise an export
    # lags the pools by up to PUBLISH_EVERY, and the export that follows a burst shorter
    # than that carries the burst's first batch alone (a worker's poolclient.requests of 1
    # against 174 in its /health, under gunicorn: not the fork, the batches' lag).
    publish_all()
    active, idle = Counter[_Origin](), Counter[_Origin]()
    for pool in _pools():
        origin = (pool.scheme, pool.host, pool.port)
        active[origin] += pool.in_use
        idle[origin] += pool.idle
    return (_observations(active, **{"http.connection.state": "active"})
            + _observations(idle, **{"http.connection.state": "idle"}))


def _active_requests(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(_by_origin("in_use"))


def _streaming(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(_by_origin("streaming"))


def _limit(options: CallbackOptions) -> Iterable[Observation]:
    limits: dict[_Origin, int] = {}
    for pool in _pools():
        origin = (pool.scheme, pool.host, pool.port)
        limits[origin] = max(limits.get(origin, 0), pool.maxsize)
    return _observations(Counter(limits))


def _inherited(options: CallbackOptions) -> Iterable[Observation]:
    peers = Counter(connection.peer for connection in inherited.found())
    observations = []
    for peer, n in peers.items():
        address, _, port = peer.rpartition(":")
        observations.append(Observation(n, {"network.peer.address": address.strip("[]"),
                                            "network.peer.port": int(port)}))
    return observations
