"""httpcore2's exceptions as outcomes, for the async pools (which alone import this module).

httpcore2 raises its own classes with the socket's error as ``__cause__``
(``map_exceptions``); a TLS handshake failure is a ``ConnectError`` caused by an
``ssl.SSLError``, so the cause is looked at to tell it from a refused connection.
"""

from __future__ import annotations

import asyncio
import ssl

import httpcore2

from ..errors import PoolClientError
from .errors import RefusedError, StalledError
from .outcomes import Outcome


def outcome(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc``. A pool whose deadline fires through
    ``anyio.fail_after`` (a bare ``TimeoutError``) reports :attr:`Outcome.DEADLINE`
    itself: only it knows which timeout fired."""
    if isinstance(exc, asyncio.CancelledError):
        return Outcome.CANCELLED
    if isinstance(exc, StalledError):
        return Outcome.STALLED
    if isinstance(exc, (RefusedError, httpcore2.PoolTimeout)):
        return Outcome.REFUSED
    if isinstance(exc, PoolClientError):
        return Outcome.DEADLINE if isinstance(exc, TimeoutError) else Outcome.REFUSED
    if isinstance(exc, httpcore2.ConnectTimeout):
        return Outcome.CONNECT_TIMEOUT
    if isinstance(exc, httpcore2.ConnectError):
        tls = isinstance(exc.__cause__, (ssl.SSLError, ssl.CertificateError))
        return Outcome.TLS_ERROR if tls else Outcome.CONNECT_ERROR
    if isinstance(exc, (httpcore2.ReadTimeout, httpcore2.WriteTimeout, TimeoutError)):
        return Outcome.TIMEOUT
    if isinstance(exc, (httpcore2.RemoteProtocolError, httpcore2.ReadError,
                        httpcore2.WriteError, OSError)):
        return Outcome.NO_RESPONSE
    return Outcome.OTHER
