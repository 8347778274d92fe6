"""Resilience: what keeps one failing upstream from taking a whole worker down.

Per origin, per process (each gunicorn worker decides for itself, as Envoy, gRPC and
Finagle do; see ``../shared/research/resilience.md``), one :class:`OriginPolicy` holds:

- a circuit breaker (:mod:`.breaker`): fail fast while the origin is failing, one jittered
  probe at a time to find out when it is back;
- a bulkhead: while the origin is degraded, at most a share of the worker's concurrency
  in flight to it, the rest refused at once; a healthy origin is never limited;
- a retry budget (:mod:`.budget`): every kind of retry within ~20 % of first attempts;
- stall detection (:mod:`.stall`): calls waiting far longer than their route's own recent
  calls did are named, for the pool to abort;
- its addresses (:mod:`.addresses`): least-connected choice, ejection, refresh times.

Pure logic, an injectable clock and random source, no I/O and no urllib3 or httpcore2
import (except :mod:`.urllib3_outcomes` and :mod:`.httpcore_outcomes`, imported by the one
pool that needs each). How a pool uses it, around one call::

    call = policy.admit(route_key(method, path))  # may raise CircuitOpenError,
    with call:                                   #   BulkheadFullError (before any wait)
        conn = pool_checkout()                   # the pool's own wait
        call.attempt()
        if conn is new:                          # connect over policy.candidates()
            for i, address in enumerate(addresses := call.candidates()):
                timeout = connect_share(left, len(addresses) - i)
                ok -> call.connected(address); fail -> call.connect_failed(address)
        call.on_abort = lambda: shutdown(conn.sock)
        try:
            send; status = read_status_line()
        except Exception as exc:
            call.failed(outcome(exc))            # the attempt's verdict
            call.stall_error() or exc is raised; or, when a retry is allowed:
            call.retry(RetryReason.CONNECT, exc) # may raise RetryBudgetExhaustedError
            ... call.attempt() again
        call.response(status)                    # the verdict: 502/503/504 fail
        body: call.reading() before each wait on the upstream, call.progress() after
    # call.done() when the response is released (the with block, or the stream's close)

A watchdog (a thread for the sync pools, a task per loop for the async ones) calls
``policy.sweep()`` a few times a second and shuts down each returned call's socket
(``call.on_abort``); it also resolves names when ``policy.start_refresh()`` says so and
reports :meth:`~OriginPolicy.resolved`. A pool closing a connection reports
:meth:`~OriginPolicy.disconnected`; one reusing an idle connection asks
:meth:`~OriginPolicy.usable` first.
"""

from __future__ import annotations

from .addresses import AddressState, connect_share
from .breaker import BreakerState
from .call import Call
from .errors import (
    BulkheadFullError,
    CircuitOpenError,
    RefusedError,
    RetryBudgetExhaustedError,
    StalledError,
)
from .outcomes import Outcome, Refusal, RetryReason
from .policy import OriginPolicy, PolicySink
from .settings import PolicySettings
from .snapshot import AddressSnapshot, BreakerSnapshot, BudgetSnapshot, PolicySnapshot
from .stall import route_key

__all__ = [
    "AddressSnapshot",
    "AddressState",
    "BreakerSnapshot",
    "BreakerState",
    "BudgetSnapshot",
    "BulkheadFullError",
    "Call",
    "CircuitOpenError",
    "OriginPolicy",
    "Outcome",
    "PolicySettings",
    "PolicySink",
    "PolicySnapshot",
    "Refusal",
    "RefusedError",
    "RetryBudgetExhaustedError",
    "RetryReason",
    "StalledError",
    "connect_share",
    "route_key",
]
