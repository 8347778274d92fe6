"""What an attempt came to, as the policy sees it, and why a request is sent again.

The pools map their own exceptions to an :class:`Outcome` (:mod:`.urllib3_outcomes` for the
sync pools, :mod:`.httpcore_outcomes` for the async ones), so the policy never sees a
urllib3 or httpcore2 class. Which outcomes count against an origin follows Envoy's split of
gateway and local-origin errors: what says the upstream (or the path to it) is unwell
counts; what the caller, the pool or the deadline did does not. In particular the pool's
own refusals never count (Envoy #25487: an overflowing pool must not open a breaker, or a
busy worker would cut itself off a healthy upstream).
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """How one attempt ended; ``failure`` says whether it counts against the origin."""

    SUCCESS = "success"  # a status line other than 502, 503, 504 (4xx and 429 included)
    GATEWAY_ERROR = "gateway_error"  # 502, 503 or 504
    CONNECT_ERROR = "connect_error"  # refused, unreachable, reset while connecting
    CONNECT_TIMEOUT = "connect_timeout"
    TLS_ERROR = "tls_error"  # handshake or certificate failure
    NO_RESPONSE = "no_response"  # reset or end of stream before the status line
    TIMEOUT = "timeout"  # a read (or write) timed out
    STALLED = "stalled"  # aborted by the policy: no progress for far longer than usual
    # Never failures:
    REFUSED = "refused"  # the pool's own: pool timeout, open circuit, bulkhead, budget
    DEADLINE = "deadline"  # the call's deadline (the caller's budget, not the upstream's)
    CANCELLED = "cancelled"  # the caller went away (a task cancelled, a client gone)
    OTHER = "other"  # a local error: bad URL, a bug; nothing to say about the upstream

    @property
    def failure(self) -> bool:
        """Whether it counts against the origin's breaker."""
        return self in _FAILURES

    @property
    def connect_failure(self) -> bool:
        """Whether it counts against the address connected to (ejection)."""
        return self in _CONNECT_FAILURES

    @classmethod
    def of_status(cls, status: int) -> Outcome:
        """The outcome of a response with ``status``: only gateway errors are failures.

        A 500 is the application's answer (often to this very request), a 429 is pushback
        the caller should honour, and neither says the upstream is unreachable; 502, 503
        and 504 are what proxies and load balancers answer when it is.
        """
        return cls.GATEWAY_ERROR if status in (502, 503, 504) else cls.SUCCESS


_FAILURES = frozenset({
    Outcome.GATEWAY_ERROR, Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT, Outcome.TLS_ERROR,
    Outcome.NO_RESPONSE, Outcome.TIMEOUT, Outcome.STALLED,
})
_CONNECT_FAILURES = frozenset({Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT, Outcome.TLS_ERROR})


class RetryReason(enum.Enum):
    """Why a request is sent again; every one of them draws on the same retry budget."""

    CONNECT = "connect"  # the connection could not be opened (nothing was sent)
    OTHER_ADDRESS = "other_address"  # the same, moved to another of the origin's addresses
    STALE = "stale"  # a reused keep-alive connection died before any answer


class Refusal(enum.Enum):
    """Why the policy refused a call or a retry (the ``reason`` label of refusals)."""

    OPEN = "open"  # the origin's circuit is open (or half-open with its probe out)
    OVERFLOW = "overflow"  # the origin is degraded and holds its share of the worker
    BUDGET = "budget"  # the retry budget is spent
