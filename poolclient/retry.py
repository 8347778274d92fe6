"""What is retried, how long to wait between tries, and the deadline that bounds it all.

Three rules, each enforced in one place:

- **A failure to connect is retried, whatever the method**: nothing was sent. That is
  urllib3's ``Retry(connect=N)``, with the backoff below (:func:`policy`).
- **A request is never sent twice, except once, on a fresh connection, when a reused
  connection failed before any response and the method is idempotent** (the stale
  keep-alive case, where the upstream closed the connection while it sat idle). That
  decision needs to know whether the connection was reused, which only the pool knows: see
  ``CountedPool._make_request``. A POST is never resent.
- **Every retry is within the origin's retry budget** (``POOLCLIENT_RETRY_BUDGET``, see
  :mod:`poolclient.resilience`): a connect retry asks for it in :meth:`PolicyRetry.increment`,
  before its backoff, and the stale keep-alive resend in ``CountedPool._make_request``. A
  refused retry raises what the attempt would have raised with no retries left.
- **One call has one deadline**: pool wait, connects, retries, backoff and reads together.
  ``Registry.request`` and ``PooledSession.request`` start it; each wait then starts with
  its timeout cut to what is left (:func:`bounded`): the wait for a connection
  (``CountedPool._get_conn``), the connect and the send (``_validate_conn``), the wait for
  the response (the connection's ``getresponse``). Socket timeouts apply per read, so a
  body trickled in slowly is bounded per read only.
  The deadline travels in a context variable because requests gives an adapter no way to
  pass per-call state to a pool; context variables are per thread and per greenlet, so
  concurrent calls never see each other's.
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar, Token
from itertools import takewhile
from typing import TYPE_CHECKING, Any

from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util import Retry, Timeout

from .errors import PoolClientError
from .resilience import RefusedError, RetryReason

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self
    from urllib3.connectionpool import ConnectionPool
    from urllib3.response import BaseHTTPResponse

    from .config import Settings
    from .resilience import Call

# RFC 9110, section 9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})

_deadline: ContextVar[float | None] = ContextVar("poolclient_deadline", default=None)
#: The policy's handle of the call under way in this context (set by ``CountedPool.urlopen``
#: for the length of the call, read by its retries): per thread and greenlet, as above.
current_call: ContextVar[Call | None] = ContextVar("poolclient_call", default=None)


class DeadlineExceededError(ReadTimeoutError, PoolClientError):
    """The call's deadline (``POOLCLIENT_DEADLINE``) passed before a response arrived.

    A subclass of urllib3's ``ReadTimeoutError``, so requests raises it as
    ``requests.exceptions.ReadTimeout``.
    """

    def __init__(self, pool: ConnectionPool | None, url: str, last_error: object = None) -> None:
        self.last_error = last_error
        after = f"; last error: {last_error}" if last_error is not None else ""
        super().__init__(pool, url,  # type: ignore[arg-type]
                         f"deadline passed before a response (POOLCLIENT_DEADLINE){after}")

    def __reduce__(self) -> tuple[type[DeadlineExceededError], tuple[None, str | None, object]]:
        return (type(self), (None, self.url, self.last_error))


class deadline:  # noqa: N801 - used as a function: ``with deadline(seconds):``
    """Give the calls inside a deadline ``seconds`` from now, unless one is running already
    (a redirect or a retry belongs to the call that started it).

    A class rather than a generator, which costs about twice as much to enter and leave.
    The two places every ``.request()`` passes, ``Registry.request`` and
    ``CountedPool.urlopen``, call :func:`begin` and :func:`end` themselves: one call each
    instead of three.
    """

    __slots__ = ("seconds", "_token")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._token: Token[float | None] | None = None

    def __enter__(self) -> None:
        self._token = begin(self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            end(self._token)
            self._token = None


def begin(seconds: float | None) -> Token[float | None] | None:
    """Start a deadline ``seconds`` from now unless one is running (or ``seconds`` is
    ``None``); what :func:`end` takes, ``None`` when nothing was started."""
    if seconds is None or _deadline.get() is not None:
        return None
    return _deadline.set(time.monotonic() + seconds)


def end(started: Token[float | None]) -> None:
    """End the deadline :func:`begin` started."""
    _deadline.reset(started)


def remaining() -> float | None:
    """Seconds left to the current call's deadline (may be negative); ``None`` if none."""
    end = _deadline.get()
    return None if end is None else end - time.monotonic()


# A socket timeout of 0 would make the socket non-blocking rather than time out at once.
_SPENT = 0.001


#: The current call's deadline (``time.monotonic()`` seconds), ``None`` if none: the bound
#: method, a frame less than a function on every request's path.
deadline_end = _deadline.get


def bounded(seconds: float | None, now: float | None = None) -> float | None:
    """A wait's timeout, ``seconds`` (``None`` for none), cut to what is left of the current
    call's deadline (at least 1 ms: a wait that starts too late times out at once).

    Cut when each wait starts rather than once per attempt into a ``Timeout`` with a total:
    tighter (the send, and a slow connect, count against the read), and without the copy
    and the arithmetic urllib3 does for a total: 9,000 instructions (1.1%) less a request,
    measured with callgrind. ``now``: ``time.monotonic()``, if the caller has just read it.
    """
    end = _deadline.get()
    if end is None:
        return seconds
    left = end - (time.monotonic() if now is None else now)
    if isinstance(seconds, (int, float)) and seconds <= left:
        return seconds
    return left if left > _SPENT else _SPENT


class ValidatedTimeout(Timeout):
    """urllib3's ``Timeout``, its values validated once, when it is made.

    urllib3 copies the pool's timeout twice a request (in ``urlopen`` and again in
    ``_make_request``, so that each attempt times itself), and each ``Timeout`` made
    validates its three values anew. A copy cannot change them, so here it takes them as
    they are and resets only the clock: 4,000 instructions (0.5%) less a request
    through the registry, measured with callgrind.
    """

    def clone(self) -> ValidatedTimeout:
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy._start_connect = None  # the one piece of state: each copy times its attempt
        return copy


class PolicyRetry(Retry):
    """urllib3's ``Retry`` with full-jitter backoff that never sleeps past the deadline.

    Full jitter (a uniform draw up to the exponential ceiling) spreads the retries of many
    workers that all lost the same upstream at once, instead of bunching them.
    """

    def get_backoff_time(self) -> float:
        errors = len(list(takewhile(lambda h: h.redirect_location is None,
                                    reversed(self.history))))
        if errors == 0:
            return 0.0
        ceiling = min(self.backoff_max, self.backoff_factor * 2 ** (errors - 1))
        delay = random.uniform(0.0, ceiling)
        left = remaining()
        return delay if left is None else max(0.0, min(delay, left))

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        """urllib3's count, then, for a connect retry of a call the policy admitted, the
        origin's retry budget: refused, the call fails as if no retry were left (a
        ``MaxRetryError`` of the connect error), before any backoff."""
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if (error is not None and response is None and self.connect is not None
                and new.connect is not None and new.connect < self.connect):
            call = current_call.get()
            if call is not None:
                try:
                    call.retry(RetryReason.CONNECT, error)
                except RefusedError as refused:
                    raise MaxRetryError(_pool, url, error) from refused  # type: ignore[arg-type]
        return new


def policy(settings: Settings, **overrides: Any) -> PolicyRetry:
    """The retry policy of every call through the registry."""
    options: dict[str, Any] = {
        "total": None,
        "connect": settings.connect_retries,
        # False: a read error is raised as itself, as requests' own default does, so that
        # requests turns a read timeout into ReadTimeout.
        "read": False,
        "other": 0,
        "status": 0,
        "redirect": 5,
        "backoff_factor": settings.backoff,
        "backoff_max": max(settings.backoff * 8, 0.0),
    }
    options.update(overrides)
    return PolicyRetry(**options)
