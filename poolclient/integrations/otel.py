"""OpenTelemetry metrics of the pools, named as OpenTelemetry's semantic conventions name
HTTP client connection metrics, through OpenTelemetry's metrics API.

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
- from the pools' events (per request in batches, at most :data:`~poolclient.stats
  .PUBLISH_EVERY` late, as for Prometheus): ``http.client.request.duration`` (per attempt,
  retries included, in seconds), ``poolclient.pool.wait.duration``, and the counters
  ``poolclient.requests``, ``poolclient.requests.reused``, ``poolclient.requests.retried``,
  ``poolclient.pool.waits``, ``poolclient.connections.opened``,
  ``poolclient.connections.closed`` (``poolclient.close.reason``: expired, retired,
  discarded, unread, ...) and ``poolclient.errors`` (``error.type``: connect, tls, timeout,
  protocol, pool_timeout, deadline, other).

The meter is named ``poolclient``: where OpenTelemetry's own urllib3 or httpx
instrumentation reports ``http.client.request.duration`` too, its instrumentation scope
tells the two apart (theirs is per call, ours per attempt on the wire).
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from .. import _fork, inherited

if TYPE_CHECKING:
    from ..stats import Batch, PoolSnapshot

METER = "poolclient"
# OpenTelemetry's advice for http.client.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0)
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_Origin = tuple[str, str, int]  # scheme, host, port


class _Instruments:
    """The instruments of one meter provider."""

    def __init__(self, provider: MeterProvider) -> None:
        try:
            version = importlib.metadata.version("poolclient")
        except importlib.metadata.PackageNotFoundError:
            version = ""
        meter = provider.get_meter(METER, version)
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
