"""The policy's refusals: raised before any pool wait or socket, never retried by
poolclient, never counted as the upstream's failure.

Every refusal is a :class:`~poolclient.errors.PoolClientError` and a builtin
``ConnectionError`` (an ``OSError``): a connection that was not made. That is what makes
the callers' stacks map them without knowing them:

- requests: ``HTTPAdapter.send`` turns an ``OSError`` raised by ``urlopen`` into
  ``requests.exceptions.ConnectionError``. The sync pool must raise them from its own
  ``urlopen`` *before* urllib3's retry loop, which would otherwise wrap an ``OSError`` in
  ``ProtocolError`` and might retry it.
- httpx and httpx2 through poolclient's transports: an ``OSError`` raised before the request
  was sent becomes ``ConnectError`` (``_httpx_family``), and so the SDKs' (openai,
  anthropic) ``APIConnectionError``, which they retry with their own backoff.
- the async transports: the same ``ConnectError``.

:class:`StalledError` is the odd one: the request was sent and its answer stopped coming,
which is a timeout to the caller.
"""

from __future__ import annotations

from ..errors import PoolClientError
from .outcomes import Refusal, RetryReason


class RefusedError(PoolClientError, ConnectionError):
    """The policy refused a call to ``origin`` (``reason``: open, overflow, budget);
    ``retry_after`` is how many seconds a caller should wait before trying again (0 if
    unknown), what the example app sends as ``Retry-After`` with its 503."""

    reason = Refusal.OPEN

    def __init__(self, origin: str, message: str, retry_after: float = 0.0) -> None:
        self.origin = origin
        self.detail = message
        self.retry_after = retry_after
        super().__init__(f"{origin}: {message}")

    def __reduce__(self) -> tuple[type[RefusedError], tuple[object, ...]]:
        return (type(self), (self.origin, self.detail, self.retry_after))


class CircuitOpenError(RefusedError):
    """The origin's circuit breaker is open, or half-open with its one probe out: the call
    was refused at once. ``open_until`` is the policy clock's time it half-opens (a
    monotonic time); ``retry_after`` the seconds left until then (1 while a probe is out);
    ``last_failure`` the outcome that last counted against the origin."""

    reason = Refusal.OPEN

    def __init__(self, origin: str, open_until: float, retry_after: float,
                 last_failure: str | None = None, probing: bool = False) -> None:
        self.open_until = open_until
        self.last_failure = last_failure
        self.probing = probing
        cause = f" after {last_failure}" if last_failure else ""
        state = ("circuit half-open, its probe still out" if probing
                 else f"circuit open{cause}, calls refused for {retry_after:.1f} s more")
        super().__init__(origin, f"{state} (POOLCLIENT_BREAKER)", retry_after)

    def __reduce__(self) -> tuple[type[RefusedError], tuple[object, ...]]:
        return (type(self), (self.origin, self.open_until, self.retry_after,
                             self.last_failure, self.probing))


class BulkheadFullError(RefusedError):
    """The origin is degraded (breaker not closed, or calls to it stalled) and already
    holds ``limit`` calls, its share of the worker (POOLCLIENT_BULKHEAD_SHARE): refused at
    once instead of queued, so it cannot take the worker's last threads."""

    reason = Refusal.OVERFLOW

    def __init__(self, origin: str, in_flight: int, limit: int) -> None:
        self.in_flight = in_flight
        self.limit = limit
        super().__init__(
            origin,
            f"degraded and {in_flight} calls in flight, its limit {limit} "
            "(POOLCLIENT_BULKHEAD_SHARE)",
            1.0,
        )

    def __reduce__(self) -> tuple[type[RefusedError], tuple[object, ...]]:
        return (type(self), (self.origin, self.in_flight, self.limit))


class RetryBudgetExhaustedError(RefusedError):
    """A retry (``retry_reason``) was refused: the origin's retries in the window already
    reach their share of first attempts (POOLCLIENT_RETRY_BUDGET_RATIO) plus the floor.
    ``last_error`` is the failed attempt's own error, also the ``__cause__`` when a pool
    raises this ``from`` it; a pool may as well raise ``last_error`` itself."""

    reason = Refusal.BUDGET

    def __init__(self, origin: str, retry_reason: RetryReason,
                 last_error: BaseException | None = None) -> None:
        self.retry_reason = retry_reason
        self.last_error = last_error
        last = f"; last error: {last_error}" if last_error is not None else ""
        super().__init__(
            origin,
            f"{retry_reason.value} retry refused, retry budget spent "
            f"(POOLCLIENT_RETRY_BUDGET_RATIO){last}",
            1.0,
        )

    def __reduce__(self) -> tuple[type[RefusedError], tuple[object, ...]]:
        return (type(self), (self.origin, self.retry_reason, self.last_error))


class StalledError(PoolClientError):
    """A call in flight made no progress (no byte, no status line) for ``waited`` seconds,
    ``threshold`` being what the origin's own recent calls justify
    (POOLCLIENT_STALL_FACTOR times their 99th percentile, within the floor and cap); the
    pool shut its socket down to free the thread or task.

    The request was sent, so poolclient never sends it again. To the caller it is a read
    timeout: the sync pool raises it as a subclass of urllib3's ``ReadTimeoutError``
    (:class:`poolclient.pool.StalledReadTimeoutError`: ``requests.exceptions.ReadTimeout``,
    and ``ReadTimeout`` through poolclient's httpx transports, the SDKs'
    ``APITimeoutError``); the async pools raise theirs as their read timeout.

    Deliberately not an ``OSError`` (nor the builtin ``TimeoutError``, which is one):
    requests turns every ``OSError`` raised by a pool into ``ConnectionError`` before it
    looks for urllib3's ``ReadTimeoutError``, and urllib3 wraps one in ``ProtocolError``.
    """

    def __init__(self, origin: str, waited: float, threshold: float) -> None:
        self.origin = origin
        self.waited = waited
        self.threshold = threshold
        super().__init__(
            f"{origin}: no progress for {waited:.1f} s, stalled (its calls' usual longest "
            f"wait makes {threshold:.1f} s the limit; POOLCLIENT_STALL_DETECTION)"
        )

    def __reduce__(self) -> tuple[type[StalledError], tuple[str, float, float]]:
        return (type(self), (self.origin, self.waited, self.threshold))
