"""What counts as a failure, the two pools' exception mappings (real urllib3 and
httpcore2 exceptions), and the refusals' mapping by requests and the httpx transports."""

from __future__ import annotations

import asyncio
import http.client
import pickle
import ssl

import httpx
import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from poolclient.errors import PoolClientError
from poolclient.pool import PoolTimeoutError
from poolclient.resilience import (
    BulkheadFullError,
    CircuitOpenError,
    Outcome,
    RetryBudgetExhaustedError,
    RetryReason,
    StalledError,
)
from poolclient.resilience.httpcore_outcomes import outcome as httpcore_outcome
from poolclient.resilience.urllib3_outcomes import outcome as urllib3_outcome
from poolclient.retry import DeadlineExceededError

ORIGIN = "https://a.example:443"


@pytest.mark.parametrize(("status", "expected"), [
    (200, Outcome.SUCCESS), (204, Outcome.SUCCESS), (400, Outcome.SUCCESS),
    (404, Outcome.SUCCESS), (429, Outcome.SUCCESS), (500, Outcome.SUCCESS),
    (502, Outcome.GATEWAY_ERROR), (503, Outcome.GATEWAY_ERROR), (504, Outcome.GATEWAY_ERROR),
])
def test_only_gateway_statuses_fail(status: int, expected: Outcome) -> None:
    assert Outcome.of_status(status) is expected


def test_failures_and_connect_failures() -> None:
    failures = {o for o in Outcome if o.failure}
    assert failures == {Outcome.GATEWAY_ERROR, Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT,
                        Outcome.TLS_ERROR, Outcome.NO_RESPONSE, Outcome.TIMEOUT,
                        Outcome.STALLED}
    assert {o for o in Outcome if o.connect_failure} == {
        Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT, Outcome.TLS_ERROR}


def _new_conn_error() -> NewConnectionError:
    return NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "expected"), [
    (_new_conn_error(), Outcome.CONNECT_ERROR),
    (NameResolutionError("h", None, OSError("x")), Outcome.CONNECT_ERROR),  # type: ignore[arg-type]
    (ConnectTimeoutError(None, "timed out"), Outcome.CONNECT_TIMEOUT),
    (MaxRetryError(None, "/", _new_conn_error()), Outcome.CONNECT_ERROR),  # type: ignore[arg-type]
    (SSLError(ssl.SSLCertVerificationError("bad cert")), Outcome.TLS_ERROR),
    (ssl.SSLError("handshake"), Outcome.TLS_ERROR),
    (ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed")),
     Outcome.NO_RESPONSE),
    (ProtocolError("Connection aborted.", ConnectionResetError()), Outcome.NO_RESPONSE),
    (ssl.SSLEOFError("eof"), Outcome.NO_RESPONSE),
    (http.client.BadStatusLine("xx"), Outcome.NO_RESPONSE),
    (ReadTimeoutError(None, "/", "Read timed out."), Outcome.TIMEOUT),  # type: ignore[arg-type]
    (TimeoutError("timed out"), Outcome.TIMEOUT),
    (DeadlineExceededError(None, "/"), Outcome.DEADLINE),
    (PoolTimeoutError(None, ORIGIN, 4, 5.0), Outcome.REFUSED),
    (CircuitOpenError(ORIGIN, 1.0, 1.0), Outcome.REFUSED),
    (StalledError(ORIGIN, 3.0, 2.0), Outcome.STALLED),
    (ValueError("bad url"), Outcome.OTHER),
])
def test_urllib3_exceptions(exc: BaseException, expected: Outcome) -> None:
    assert urllib3_outcome(exc) is expected


def _caused(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


httpcore2 = pytest.importorskip("httpcore2")


@pytest.mark.parametrize(("exc", "expected"), [
    (httpcore2.ConnectError("refused"), Outcome.CONNECT_ERROR),
    (_caused(httpcore2.ConnectError("tls"), ssl.SSLCertVerificationError("bad")),
     Outcome.TLS_ERROR),
    (httpcore2.ConnectTimeout("t"), Outcome.CONNECT_TIMEOUT),
    (httpcore2.ReadTimeout("t"), Outcome.TIMEOUT),
    (httpcore2.WriteTimeout("t"), Outcome.TIMEOUT),
    (httpcore2.RemoteProtocolError("Server disconnected without sending a response."),
     Outcome.NO_RESPONSE),
    (httpcore2.ReadError("reset"), Outcome.NO_RESPONSE),
    (httpcore2.PoolTimeout("p"), Outcome.REFUSED),
    (BulkheadFullError(ORIGIN, 2, 2), Outcome.REFUSED),
    (StalledError(ORIGIN, 3.0, 2.0), Outcome.STALLED),
    (asyncio.CancelledError(), Outcome.CANCELLED),
    (httpcore2.LocalProtocolError("bad header"), Outcome.OTHER),
])
def test_httpcore2_exceptions(exc: BaseException, expected: Outcome) -> None:
    assert httpcore_outcome(exc) is expected


REFUSALS = [
    CircuitOpenError(ORIGIN, 12.5, 4.25, "timeout"),
    CircuitOpenError(ORIGIN, 12.5, 1.0, "timeout", probing=True),
    BulkheadFullError(ORIGIN, 2, 2),
    RetryBudgetExhaustedError(ORIGIN, RetryReason.CONNECT, None),
]


@pytest.mark.parametrize("err", REFUSALS, ids=lambda e: type(e).__name__)
def test_refusals_are_poolclient_connection_errors_that_pickle(err: Exception) -> None:
    assert isinstance(err, PoolClientError) and isinstance(err, ConnectionError)
    assert ORIGIN in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)
    assert vars(again) == vars(err)


def test_circuit_open_says_which_origin_and_until_when() -> None:
    err = CircuitOpenError(ORIGIN, 12.5, 4.25, "timeout")
    assert (err.origin, err.open_until, err.retry_after) == (ORIGIN, 12.5, 4.25)
    assert str(err) == (f"{ORIGIN}: circuit open after timeout, calls refused for 4.2 s "
                        "more (POOLCLIENT_BREAKER)")


class _Refusing(requests.adapters.HTTPAdapter):
    """An adapter whose pool refuses as a wired pool's urlopen would."""

    def __init__(self, err: Exception) -> None:
        super().__init__()
        self.err = err

    def get_connection_with_tls_context(self, *args: object, **kwargs: object) -> object:
        err = self.err

        class Pool:
            def urlopen(self, *a: object, **k: object) -> object:
                raise err

        return Pool()


@pytest.mark.parametrize("err", REFUSALS, ids=lambda e: type(e).__name__)
def test_requests_raises_a_refusal_as_connection_error(err: Exception) -> None:
    session = requests.Session()
    session.mount("https://", _Refusing(err))
    with pytest.raises(requests.ConnectionError) as caught:
        session.get("https://a.example/")
    assert caught.value.args[0] is err


@pytest.mark.parametrize("err", REFUSALS, ids=lambda e: type(e).__name__)
def test_the_httpx_transports_raise_a_refusal_as_connect_error(err: Exception) -> None:
    from poolclient.integrations._httpx_family import mapped_error

    mapped = mapped_error(httpx, err, httpx.Request("GET", "https://a.example/"),
                          reading=False)
    assert isinstance(mapped, httpx.ConnectError)


def test_the_httpx_transports_raise_a_stall_as_read_timeout() -> None:
    from poolclient.integrations._httpx_family import mapped_error
    from poolclient.pool import StalledReadTimeoutError

    stalled = StalledReadTimeoutError(None, "/", StalledError(ORIGIN, 3.0, 2.0))
    mapped = mapped_error(httpx, stalled, httpx.Request("GET", "https://a.example/"),
                          reading=True)
    assert isinstance(mapped, httpx.ReadTimeout)
