"""An httpx-style request sent through a registry's urllib3 pools, and urllib3's answer and
errors given back in the package's own terms.

httpx and httpx2 share one transport contract (``handle_request(request) -> Response``,
``close()``), but each checks its own classes: httpx2's client asserts that a response
stream is an ``httpx2.SyncByteStream``, and the Anthropic SDK refuses any object whose class
comes from ``httpx``. So the logic lives here, importing neither, and :mod:`.httpx` and
:mod:`.httpx2` bind it to their package's classes.

What goes where:

- the request's method, target and header lines go to urllib3 as they are, in order, with
  repeats; its body goes as bytes when it is in memory already (so that a stale keep-alive
  connection may be retried, see :mod:`poolclient.retry`), otherwise as the stream itself,
  chunked when httpx framed it so, never read whole first;
- ``extensions["timeout"]``: ``connect`` and ``read`` become urllib3's, ``pool`` the wait for
  a connection; a ``None`` takes the registry's setting, because every wait is bounded
  here; ``write`` has no urllib3 counterpart (the send is timed with ``connect``). The
  transport's deadline bounds everything up to the status line; each read of the body
  after it waits up to the read timeout;
- redirects and ``Content-Encoding`` are left to httpx, which follows and decodes them:
  urllib3 is asked for neither;
- the response body is handed on as urllib3 reads it off the socket (``read1``), so a
  server-sent event reaches the caller when it arrives;
- urllib3's and poolclient's errors become the package's own (:func:`mapped_error`), which
  the SDKs' retries and error classes are built on.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    LocationValueError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from .. import retry
from ..config import non_negative_int, positive_seconds

if TYPE_CHECKING:
    from types import ModuleType

    from urllib3.response import BaseHTTPResponse

    from ..pool import CountedPool
    from ..registry import Registry

_CHUNK = 65536  # the most one read hands on; less when less has arrived
_VERSIONS = {10: b"HTTP/1.0", 11: b"HTTP/1.1", 20: b"HTTP/2"}


class HeaderLines(MutableMapping[str, str]):
    """Request header lines in their order, repeats kept, behaving as the mapping urllib3
    documents for ``headers`` (its ``HTTPHeaderDict``): names case-insensitive, a repeated
    name's values joined by ``", "``, setting a name replaces its lines (where its first
    one was), deleting one removes them all. urllib3 sends what ``items()`` gives, the lines
    themselves: no copy, since that is every request's path. Code between the transport and
    urllib3 may change the headers: OpenTelemetry's urllib3 instrumentation copies them and
    sets ``traceparent``, another wrapper of ``urlopen`` may set its own."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        self.lines = lines

    def __getitem__(self, name: str) -> str:
        folded = _folded(name)
        values = [value for key, value in self.lines if key.lower() == folded]
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name: str, value: str) -> None:
        folded = name.lower()
        lines = self.lines
        for i, (key, _) in enumerate(lines):
            if key.lower() == folded:
                lines[i] = (name, value)
                lines[i + 1:] = [line for line in lines[i + 1:] if line[0].lower() != folded]
                return
        lines.append((name, value))

    def __delitem__(self, name: str) -> None:
        folded = _folded(name)
        kept = [line for line in self.lines if line[0].lower() != folded]
        if len(kept) == len(self.lines):
            raise KeyError(name)
        self.lines[:] = kept

    def __contains__(self, name: object) -> bool:
        folded = _folded(name)
        return any(key.lower() == folded for key, _ in self.lines)

    def __iter__(self) -> Iterator[str]:
        # Each name once, as first written (urllib3's request() folds them to see which
        # framing headers were given).
        names: dict[str, str] = {}
        for key, _ in self.lines:
            folded = key.lower()
            if folded not in names:
                names[folded] = key
        return iter(names.values())

    def __len__(self) -> int:
        return len({key.lower() for key, _ in self.lines})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        mine = {key.lower(): self[key] for key in self}
        return mine == {str(key).lower(): other[key] for key in other}

    def __repr__(self) -> str:
        return f"HeaderLines({self.lines!r})"

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        return self.lines

    def copy(self) -> HeaderLines:
        return HeaderLines(list(self.lines))


def _folded(name: object) -> object:
    # A name that is not a string is in no header line (and ``in`` must not raise for it).
    return name.lower() if isinstance(name, str) else None


class Transport:
    """The transport, bound to a package by a subclass that names it in ``package`` and
    gives its response stream class in ``stream_class``.

    :param registry: whose pools carry the requests: looked up on every request, so a
        transport (and the client holding it) made before a fork works in the child, on
        the child's pools.
    :param deadline: seconds a call may take until its response arrives (pool wait,
        connects, retries, the wait for the status line); ``POOLCLIENT_DEADLINE`` by
        default. Raise it for calls that are slow to answer, such as a long LLM completion
        that is not streamed.
    :param connect_retries: times a connection that could not be opened is tried again
        within one call (nothing was sent); ``POOLCLIENT_CONNECT_RETRIES`` by default. The
        SDKs' own retries (``max_retries``) come on top.
    """

    package: ClassVar[ModuleType]
    stream_class: ClassVar[type[ResponseStream]]

    def __init__(self, registry: Registry, *, deadline: float | None = None,
                 connect_retries: int | None = None) -> None:
        self.registry = registry
        settings = registry.settings
        self.deadline = settings.deadline if deadline is None else _checked(
            "deadline", deadline, positive_seconds)
        self.retries = None if connect_retries is None else retry.policy(
            settings, connect=_checked("connect_retries", connect_retries, non_negative_int))
        self._timeouts: dict[tuple[object, object], retry.ValidatedTimeout] = {}

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.package.__name__} on {self.registry!r} "
                f"deadline {self.deadline}>")

    def handle_request(self, request: Any) -> Any:
        package = self.package
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise package.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'.", request=request)
        lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        framing = {key.lower(): value.lower() for key, value in lines
                   if key.lower() in ("content-length", "transfer-encoding")}
        chunked = "chunked" in framing.get("transfer-encoding", "")
        body: Any = None
        if framing:
            stream = request.stream
            body = b"".join(stream) if isinstance(stream, package.ByteStream) else stream
        timeouts = request.extensions.get("timeout") or {}
        timeout = self._timeout(timeouts)
        started = retry.begin(self.deadline)
        try:
            pool = self.registry.connection_from_host(url.raw_host.decode("ascii"), url.port,
                                                      scheme)
            response = pool.urlopen(
                request.method, url.raw_path.decode("ascii"), body=body,
                headers=HeaderLines(lines), retries=self.retries, redirect=False,
                assert_same_host=False, timeout=timeout, pool_timeout=timeouts.get("pool"),
                preload_content=False, decode_content=False, chunked=chunked)
        except Exception as exc:
            mapped = mapped_error(package, exc, request, reading=False)
            if mapped is None:
                raise
            raise mapped from exc
        finally:
            if started is not None:
                retry.end(started)
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            # The deadline ends with the status line; the wait for it was cut to what was
            # left, but each read of the body (a stream's next event) gets the read timeout.
            sock.settimeout(timeout.read_timeout)
        return package.Response(
            status_code=response.status,
            headers=_response_lines(response),
            stream=self.stream_class(package, request, pool, response),  # type: ignore[arg-type]
            extensions={"http_version": _VERSIONS.get(response.version, b"HTTP/1.1"),
                        "reason_phrase": response.reason.encode("latin-1", "replace")
                        if response.reason else b""},
        )

    def close(self) -> None:
        """Nothing: the pools are the registry's, shared by every client in the process.

        The SDKs close their client (and so this) on ``with``, ``close()`` and garbage
        collection; the pools close with the worker (``worker_exit``).
        """

    def _timeout(self, timeout: Mapping[str, float | None]) -> retry.ValidatedTimeout:
        key = (timeout.get("connect"), timeout.get("read"))
        found = self._timeouts.get(key)
        if found is None:
            settings = self.registry.settings
            found = retry.ValidatedTimeout(
                connect=settings.connect_timeout if key[0] is None else key[0],
                read=settings.read_timeout if key[1] is None else key[1])
            if len(self._timeouts) >= 64:  # a client per timeout would grow it without end
                self._timeouts.clear()
            self._timeouts[key] = found
        return found


class ResponseStream:
    """A response body as urllib3 reads it, closed without a half-read connection going
    back to the pool (:meth:`~poolclient.pool.CountedPool.release_unread`)."""

    def __init__(self, package: ModuleType, request: Any, pool: CountedPool,
                 response: BaseHTTPResponse) -> None:
        self.package = package
        self.request = request
        self.pool = pool
        self.response = response

    def __iter__(self) -> Iterator[bytes]:
        read1 = self.response.read1
        try:
            while chunk := read1(_CHUNK, decode_content=False):
                yield chunk
        except Exception as exc:
            mapped = mapped_error(self.package, exc, self.request, reading=True)
            if mapped is None:
                raise
            raise mapped from exc

    def close(self) -> None:
        self.pool.release_unread(self.response)


def mapped_error(package: ModuleType, exc: Exception, request: Any,
                 reading: bool) -> Exception | None:
    """The package's exception for ``exc``, raised while sending ``request`` (or, with
    ``reading``, while reading its response body); ``None`` when it is not one of
    urllib3's or poolclient's (an upload stream's own error, say), to be raised as it is."""
    cause: BaseException = exc
    if isinstance(exc, MaxRetryError) and exc.reason is not None:
        cause = exc.reason
    name = _error_name(cause, reading)
    if name is None:
        return None
    return getattr(package, name)(str(cause), request=request)  # type: ignore[no-any-return]


def _error_name(exc: BaseException, reading: bool) -> str | None:
    if isinstance(exc, EmptyPoolError):  # poolclient's PoolTimeoutError too
        return "PoolTimeout"
    if isinstance(exc, NewConnectionError):  # before: it derives from ConnectTimeoutError
        return "ConnectError"
    if isinstance(exc, ConnectTimeoutError):
        return "ConnectTimeout"
    if isinstance(exc, (ReadTimeoutError, TimeoutError)):  # poolclient's deadline too
        return "ReadTimeout"
    if isinstance(exc, ProxyError):
        return "ProxyError"
    if isinstance(exc, (SSLError, ssl.SSLError, ssl.CertificateError)):
        return "ReadError" if reading else "ConnectError"
    if isinstance(exc, LocationValueError):  # URLSchemeUnknown, LocationParseError
        return "UnsupportedProtocol"
    if isinstance(exc, ProtocolError):
        cause = exc.args[1] if len(exc.args) > 1 else None
        # HTTPException first: the server's "disconnected without a response" is both.
        if isinstance(cause, http.client.HTTPException) or cause is None:
            return "RemoteProtocolError"
        if isinstance(cause, BrokenPipeError) and not reading:
            return "WriteError"
        return "ReadError"
    if isinstance(exc, (http.client.HTTPException, OSError)):
        return "ReadError" if reading else "ConnectError"
    return None


def _response_lines(response: BaseHTTPResponse) -> list[tuple[bytes, bytes]]:
    # http.client's message keeps every line in the order received (urllib3's headers
    # group repeats by name); latin-1 gives back the bytes it decoded. ``raw_items``, not
    # ``items``: the email policy's per-header fetch only undoes surrogate escapes, which
    # http.client's latin-1 decoding never makes, and costs two calls a header line.
    original = getattr(response, "_original_response", None)
    lines = original.msg.raw_items() if original is not None else response.headers.items()
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in lines]


def _checked(name: str, value: object, validator: Any) -> Any:
    try:
        return validator(value)
    except ValueError as exc:
        raise ValueError(f"{name}={value!r}: {exc}") from None
