"""The per-request cost of poolclient's counters: the :class:`~poolclient.stats.PoolStats`
calls that poolclient's pool makes for one request on a reused connection, replayed with no
sink, with the Prometheus sink keeping values in memory, and (``--prometheus-multiproc``)
with the sink writing prometheus-client's multiprocess files, as under gunicorn.

Use it to check the project's target (counters cost at most 2 us per request) and to see
which call costs what. The calls and their arguments are recorded from a real request (the
``stats_calls`` fixture), so this follows ``poolclient/pool.py`` without being edited.
Server-Timing is off, as by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from poolclient import metrics
from poolclient.stats import PoolStats

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Bound = list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]

# Sequences timed one call at a time, for the breakdown; a few tenths of a second at most.
BREAKDOWN_ROUNDS = 20000
# Requests per batch in the busy case: a pool serving a thousand requests while it never
# goes quiet (poolclient's sink publishes when a pool goes quiet, or after a while).
BATCH = 1000


def _stats(sink: str) -> PoolStats:
    origin = ("https", "127.0.0.1", 8443)
    return PoolStats(8, None if sink == "none" else metrics.pool_sink(*origin))


def _bind(target: object, calls: list[Call]) -> Bound:
    return [(getattr(target, name), args, kwargs) for name, args, kwargs in calls]


def _replay(bound: Bound) -> Callable[[], None]:
    def replay() -> None:
        for call, args, kwargs in bound:
            call(*args, **kwargs)

    return replay


def _nothing(*args: Any, **kwargs: Any) -> None:
    pass


class _Null:
    """Answers every method with one that does nothing: what replaying alone costs."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def label(call: Call) -> str:
    """``checked_out(t)``: the call with its arguments, times shown as ``t``."""
    name, args, kwargs = call
    shown = ["t" if isinstance(a, float) else repr(a) for a in args]
    shown += [f"{k}={'t' if isinstance(v, float) else repr(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(shown)})"


def _per_call_ns(bound: Bound, hold: Bound | None, release: Bound | None) -> list[float]:
    """Each call's own time inside the sequence, in ns, net of reading the clock: the
    sequence runs as a whole, so state that one call leaves for the next stays real. Under
    ``hold``/``release`` (busy), one more figure: letting the other connection go at the
    end of each batch, per request of the batch."""
    clock = time.perf_counter_ns
    spent: list[list[int]] = [[] for _ in bound]
    empty: list[int] = []
    ends: list[int] = []
    for _ in range(BREAKDOWN_ROUNDS // BATCH):
        if hold is not None:
            _replay(hold)()
        for _ in range(BATCH):
            for times, (call, args, kwargs) in zip(spent, bound, strict=True):
                start = clock()
                call(*args, **kwargs)
                times.append(clock() - start)
            start = clock()
            _nothing()
            empty.append(clock() - start)
        if release is not None:
            start = clock()
            _replay(release)()
            ends.append(clock() - start)
    base = _trimmed_mean(empty)
    figures = [round(_trimmed_mean(times) - base, 1) for times in spent]
    if ends:
        figures.append(round((sum(ends) / len(ends) - base) / BATCH, 1))
    return figures


def _trimmed_mean(values: list[int]) -> float:
    # The mean of the fastest 99 %: interrupts and preemption land in the slowest samples,
    # while a median would also hide work a call does only every few times.
    kept = sorted(values)[: max(1, len(values) * 99 // 100)]
    return sum(kept) / len(kept)


@pytest.mark.parametrize("load", ["alone", "busy"])
def test_request(
    benchmark: BenchmarkFixture,
    sink_kind: str,
    sink_info: dict[str, str],
    stats_calls: dict[str, list[Call]],
    load: str,
) -> None:
    """``alone``: the only request on its pool, which goes quiet after each return.
    ``busy``: batches of :data:`BATCH` requests while another request holds a connection,
    which it then returns: whatever a pool defers while busy is paid inside the round."""
    calls = stats_calls["request"]
    stats = _stats(sink_kind)
    bound = _bind(stats, calls)
    one = _replay(bound)
    if load == "alone":
        hold = release = None
        target, per_round = one, 1
    else:
        hold, release = _bind(stats, stats_calls["checkout"]), _bind(stats, stats_calls["checkin"])
        target, per_round = _batch(one, _replay(hold), _replay(release)), BATCH
    benchmark.group = f"counters: one request, {load}"
    benchmark.extra_info.update(sink_info, case="counters", call="request", load=load,
                                requests_per_round=per_round,
                                sequence=[label(call) for call in calls],
                                per_call_ns=_per_call_ns(bound, hold, release))
    benchmark(target)


def _batch(one: Callable[[], None], hold: Callable[[], None],
           release: Callable[[], None]) -> Callable[[], None]:
    def batch() -> None:
        hold()
        for _ in range(BATCH):
            one()
        release()

    return batch


@pytest.mark.usefixtures("measured_once")
def test_replay_alone(benchmark: BenchmarkFixture, stats_calls: dict[str, list[Call]]) -> None:
    """The same replay against methods that do nothing, subtracted in the report."""
    benchmark.group = "counters: reference"
    benchmark.extra_info.update(sink="n/a", case="counters", call="replay")
    benchmark(_replay(_bind(_Null(), stats_calls["request"])))
