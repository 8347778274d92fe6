"""urllib3's exceptions as outcomes, for the sync pools (which alone import this module).

Order matters: urllib3's ``NewConnectionError`` derives from ``ConnectTimeoutError`` and
poolclient's ``DeadlineExceededError`` from ``ReadTimeoutError``, so the more particular
class is tested first. What urllib3 wrapped (``MaxRetryError.reason``, a
``ProtocolError``'s original error) is judged, not the wrapper.
"""

from __future__ import annotations

import http.client
import ssl

from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from ..errors import PoolClientError
from ..retry import DeadlineExceededError
from .errors import StalledError
from .outcomes import Outcome

# The upstream's end of the connection went away before or while it answered.
_GONE = (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError,
         BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def outcome(exc: BaseException) -> Outcome:
    """The outcome of an attempt that raised ``exc`` (with urllib3's wrapping undone)."""
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, ProtocolError) and len(exc.args) > 1 and isinstance(
            exc.args[1], BaseException):
        exc = exc.args[1]  # ProtocolError("Connection aborted.", RemoteDisconnected(...))
    if isinstance(exc, StalledError):
        return Outcome.STALLED
    if isinstance(exc, DeadlineExceededError):
        return Outcome.DEADLINE
    if isinstance(exc, (PoolClientError, EmptyPoolError)):  # PoolTimeoutError, refusals
        return Outcome.REFUSED
    if isinstance(exc, NewConnectionError):  # NameResolutionError too
        return Outcome.CONNECT_ERROR
    if isinstance(exc, ConnectTimeoutError):
        return Outcome.CONNECT_TIMEOUT
    if isinstance(exc, _GONE):
        return Outcome.NO_RESPONSE
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.CONNECT_ERROR
    if isinstance(exc, (SSLError, ssl.SSLError, ssl.CertificateError)):
        return Outcome.TLS_ERROR
    if isinstance(exc, (Urllib3TimeoutError, TimeoutError)):
        return Outcome.TIMEOUT
    if isinstance(exc, (ProtocolError, http.client.HTTPException, OSError)):
        return Outcome.NO_RESPONSE
    return Outcome.OTHER
