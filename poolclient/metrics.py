"""Prometheus metrics of the pools, summed over every gunicorn worker.

Use it by installing ``poolclient[prometheus]``: every pool then reports its events to the
families below, labelled ``scheme``, ``host`` and ``port``, and ``GET /metrics`` (see
:mod:`poolclient.middleware`) answers the Prometheus text format. Without prometheus-client
nothing here imports it and pools report only to their own counters.

Under gunicorn each worker is a process of its own, so the values live in prometheus-client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``; the hooks in :mod:`poolclient.gunicorn`
create it, wipe it at start and mark dead workers) and whichever worker answers a scrape sums
every worker's files. Counters and histograms keep the values of workers that have exited, so
totals equal what the upstream saw; gauges count live workers only. Without the variable, the
values stay in this process.

prometheus-client chooses its storage when it is first imported, so this module imports it
lazily: in a gunicorn worker that is after the fork, with the variable set by the master.
"""

from __future__ import annotations

import bisect
import importlib.util
import os
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inherited import Inherited
    from .stats import Batch, EventSink

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("scheme", "host", "port")
INSTALL_HINT = "/metrics needs prometheus-client: pip install 'poolclient[prometheus]'"

# Seconds: pool waits are usually nothing, sometimes up to the pool timeout; requests span
# loopback (sub-millisecond) to slow upstreams.
WAIT_BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0)

_families: dict[str, Any] | None = None
_local_registry: Any = None
_lock = threading.Lock()


def available() -> bool:
    """Whether prometheus-client is installed (checked without importing it)."""
    return importlib.util.find_spec("prometheus_client") is not None


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _make_families() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    global _local_registry
    # In multiprocess mode the files are the registry: a scrape collects them afresh, and
    # registering here would put our families on the caller's default registry too.
    registry = None
    if not multiprocess():
        _local_registry = registry = CollectorRegistry(auto_describe=True)

    def counter(name: str, doc: str, *extra: str) -> Any:
        return Counter(name, doc, (*LABELS, *extra), registry=registry)

    return {
        "requests": counter("poolclient_requests", "Requests sent (attempts, retries included)."),
        "reused": counter("poolclient_requests_reused",
                          "Requests sent on a connection that had carried one before."),
        "retried": counter("poolclient_requests_retried",
                           "Requests sent again after a reused connection died unanswered."),
        "opened": counter("poolclient_connections_opened",
                          "TCP (and TLS) connections established."),
        "closed": counter("poolclient_connections_closed",
                          "Connections closed by the pool, by reason.", "reason"),
        "errors": counter("poolclient_errors", "Failed attempts, by kind.", "kind"),
        "waits": counter("poolclient_pool_waits",
                         "Callers that found every connection in use and waited."),
        "connections": Gauge("poolclient_connections", "Connections now, by state.",
                             (*LABELS, "state"), registry=registry,
                             multiprocess_mode="livesum"),
        "streaming": Gauge("poolclient_connections_streaming",
                           "Connections in use held by responses whose body is still being "
                           "read (streams: SSE, downloads).", LABELS, registry=registry,
                           multiprocess_mode="livesum"),
        "inherited": Gauge("poolclient_inherited_connections",
                           "TCP connections a worker inherited that no pool owns (a client "
                           "used in the master before the fork), by peer.", ("peer",),
                           registry=registry, multiprocess_mode="livesum"),
        "wait": Histogram("poolclient_pool_wait_seconds", "Time to get a connection.",
                          LABELS, registry=registry, buckets=WAIT_BUCKETS),
        "duration": Histogram("poolclient_request_duration_seconds",
                              "Time from sending a request to its response (body included "
                              "when preloaded), per attempt.", LABELS, registry=registry,
                              buckets=DURATION_BUCKETS),
        # The origins' policies (poolclient.resilience); addresses never as labels.
        "breaker_open": Gauge("poolclient_breaker_open",
                              "Workers whose circuit breaker for the origin is not closed "
                              "(open, or half-open with its probe out).", LABELS,
                              registry=registry, multiprocess_mode="livesum"),
        "transitions": counter("poolclient_breaker_transitions",
                               "Circuit breaker state changes, by the state entered.", "to"),
        "refused": counter("poolclient_refused",
                           "Calls and retries refused by the policy, by reason (open, "
                           "overflow, budget).", "reason"),
        "policy_retries": counter("poolclient_retries",
                                  "Retries the retry budget allowed, by reason (connect, "
                                  "other_address, stale).", "reason"),
        "stalls": counter("poolclient_stalls",
                          "Calls aborted because they made no progress for far longer than "
                          "their route's recent calls."),
        "ejections": counter("poolclient_ejections",
                             "Addresses of the origin ejected after failed connects."),
        "dns_refreshes": counter("poolclient_dns_refreshes",
                                 "Resolutions of the origin's name, by result.", "result"),
    }


def _get_families() -> dict[str, Any]:
    global _families
    if _families is None:
        with _lock:
            if _families is None:
                _families = _make_families()
    return _families


class PrometheusSink:
    """One pool's :class:`~poolclient.stats.EventSink`: its labelled children, looked up
    once, and each batch written in as few writes as it can be (each is a lock and, under
    gunicorn, an mmap store)."""

    def __init__(self, families: dict[str, Any], labels: tuple[str, str, str]) -> None:
        self._requests = families["requests"].labels(*labels)
        self._reused = families["reused"].labels(*labels)
        self._retried = families["retried"].labels(*labels)
        self._opened = families["opened"].labels(*labels)
        self._closed = {reason: families["closed"].labels(*labels, reason)
                        for reason in ("expired", "retired", "discarded", "unread",
                                      "cancelled", "abandoned")}
        self._errors = families["errors"]
        self._labels = labels
        self._waits = families["waits"].labels(*labels)
        self._idle = families["connections"].labels(*labels, "idle")
        self._in_use = families["connections"].labels(*labels, "in_use")
        self._streaming = families["streaming"].labels(*labels)
        self._wait = families["wait"].labels(*labels)
        self._duration = families["duration"].labels(*labels)

    def publish(self, batch: Batch) -> None:
        if batch.requests:
            self._requests.inc(batch.requests)
        if batch.reused:
            self._reused.inc(batch.reused)
        if batch.waited:
            self._waits.inc(batch.waited)
        if batch.in_use:
            self._in_use.inc(batch.in_use)
        if batch.idle:
            self._idle.inc(batch.idle)
        if batch.streaming:
            self._streaming.inc(batch.streaming)
        _observe_all(self._wait, batch.waits)
        _observe_all(self._duration, batch.durations)

    def opened(self) -> None:
        self._opened.inc()

    def failed(self, kind: str) -> None:
        self._errors.labels(*self._labels, kind).inc()

    def closed(self, reason: str) -> None:
        self._closed[reason].inc()

    def retried(self) -> None:
        self._retried.inc()

    def ended(self, seconds: float) -> None:
        pass  # connection ages: OpenTelemetry's http.client.connection.duration only


def _observe_all(child: Any, values: list[float]) -> None:
    """``child.observe(v)`` for each value, in one write per bucket used and one for the sum.

    That needs the child's own values, which prometheus-client keeps in ``_upper_bounds``,
    ``_buckets`` and ``_sum`` (the layout of every release since 0.4); where they are
    missing each value goes through ``observe()``, which is only slower.
    """
    if len(values) < 2 or not hasattr(child, "_sum"):
        for value in values:
            child.observe(value)
        return
    bounds, buckets = child._upper_bounds, child._buckets
    counts = [0] * len(buckets)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, n in zip(buckets, counts, strict=True):
        if n:
            bucket.inc(n)
    child._sum.inc(sum(values))


def pool_sink(scheme: str, host: str, port: int) -> EventSink | None:
    """The sink for a new pool: Prometheus' with prometheus-client, OpenTelemetry's where a
    meter provider is configured (:mod:`poolclient.integrations.otel`), both, or ``None``."""
    sinks: list[EventSink] = []
    if available():
        sinks.append(PrometheusSink(_get_families(), (scheme, host, str(port))))
    otel = _otel_sink(scheme, host, port)
    if otel is not None:
        sinks.append(otel)
    if len(sinks) > 1:
        return FanOut(sinks)
    return sinks[0] if sinks else None


def _otel_sink(scheme: str, host: str, port: int) -> EventSink | None:
    # Whoever configures a meter provider has imported OpenTelemetry's metrics API: where
    # it is not imported, or no provider is set (the API's stand-in or no-op), poolclient's
    # module is not imported either. Once per new pool, never per request.
    api = sys.modules.get("opentelemetry.metrics")
    if api is None:
        return None
    hooks = sys.modules.get("poolclient.gunicorn")
    if hooks is not None and hooks.in_master():
        return None  # its SDK's state is copied into every worker: see in_master()
    # (Already imported: enabled with a provider of its own, perhaps.)
    if "poolclient.integrations.otel" not in sys.modules and type(
            api.get_meter_provider()).__name__ in ("_ProxyMeterProvider", "NoOpMeterProvider"):
        return None
    from .integrations import otel

    return otel.pool_sink(scheme, host, port)


class FanOut:
    """An :class:`~poolclient.stats.EventSink` handing each event to several."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = tuple(sinks)

    def publish(self, batch: Batch) -> None:
        for sink in self.sinks:
            sink.publish(batch)

    def opened(self) -> None:
        for sink in self.sinks:
            sink.opened()

    def failed(self, kind: str) -> None:
        for sink in self.sinks:
            sink.failed(kind)

    def closed(self, reason: str) -> None:
        for sink in self.sinks:
            sink.closed(reason)

    def retried(self) -> None:
        for sink in self.sinks:
            sink.retried()

    def ended(self, seconds: float) -> None:
        for sink in self.sinks:
            sink.ended(seconds)


class PrometheusPolicySink:
    """One origin's :class:`~poolclient.resilience.PolicySink`. Policy events are rare
    (transitions, refusals, retries), so each is written as it happens, and a series is
    made only when its first event comes: a healthy origin adds nothing to /metrics."""

    def __init__(self, families: dict[str, Any], labels: tuple[str, str, str]) -> None:
        self._families = families
        self._labels = labels

    def _child(self, family: str, *extra: str) -> Any:
        return self._families[family].labels(*self._labels, *extra)

    def transition(self, state: str) -> None:
        self._child("transitions", state).inc()
        self._child("breaker_open").set(0 if state == "closed" else 1)

    def refused(self, reason: str) -> None:
        self._child("refused", reason).inc()

    def retried(self, reason: str) -> None:
        self._child("policy_retries", reason).inc()

    def ejected(self) -> None:
        self._child("ejections").inc()

    def refreshed(self, result: str) -> None:
        self._child("dns_refreshes", result).inc()

    def stalled(self) -> None:
        self._child("stalls").inc()


def policy_sink(scheme: str, host: str, port: int) -> PrometheusPolicySink | None:
    """The sink of a new origin policy: Prometheus' with prometheus-client, else ``None``."""
    if not available():
        return None
    return PrometheusPolicySink(_get_families(), (scheme, host, str(port)))


def inherited(connections: Sequence[Inherited]) -> None:
    """This process's inherited connections, by peer, as a live gauge."""
    gauge = _get_families()["inherited"]
    for peer, n in Counter(c.peer for c in connections).items():
        gauge.labels(peer).set(n)


def problem() -> str | None:
    """Why /metrics would be wrong in this process, if it would (checked per scrape)."""
    from prometheus_client import values

    files = getattr(values.ValueClass, "__name__", "MutexValue") != "MutexValue"
    if multiprocess() and not files:
        return ("prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was set, so "
                "this process's values are not in the shared files; with --preload, call "
                "poolclient.gunicorn.prepare_metrics_dir() in the gunicorn config")
    return None


def render() -> tuple[bytes, str]:
    """The exposition text of every process's pools, and its content type (this process's
    waiting batches published first; other workers' are at most PUBLISH_EVERY old)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from .stats import publish_all

    publish_all()

    if multiprocess():
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()  # per scrape, as prometheus-client's docs advise
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    _get_families()
    return generate_latest(_local_registry), CONTENT_TYPE_LATEST
