"""poolclient.wire: header blocks read without the email parser give the message the
parser gives, a response begins as http.client's does, and request header lines written
the short way are the bytes (and the errors) of the long way."""

from __future__ import annotations

import email.parser
import http.client
import io
import socket
from typing import Any

import pytest
import urllib3

from poolclient import wire
from poolclient.pool import CountedHTTPSConnectionPool, _counting
from poolclient.wire import FastHeaderResponse, parse_lines

PLAIN = {
    "repeats and order": [b"Server: nginx\r\n", b"Set-Cookie: a=1\r\n", b"X-B: 2\r\n",
                          b"set-cookie: b=2\r\n", b"\r\n"],
    "spaces and tabs": [b"X-A:\t \tv  \t\r\n", b"X-B:v\r\n", b"X-C: a: b ,c \r\n", b"\r\n"],
    "empty value": [b"X-Empty:\r\n", b"X-Space: \r\n", b"\r\n"],
    "LF only": [b"Content-Length: 3\n", b"Connection: close\n", b"\n"],
    "ended by the stream": [b"Content-Type: application/json\r\n", b""],
    "no header lines": [b"\r\n"],
    "latin-1 and token punctuation": [b"X-!#$%&'*+.^_`|~9: caf\xe9\r\n", b"\r\n"],
}
NOT_PLAIN = {
    "folded": [b"X-A: one\r\n", b"  two\r\n", b"\r\n"],
    "no colon": [b"Server: nginx\r\n", b"garbage line\r\n", b"X-B: 1\r\n", b"\r\n"],
    "space before the colon": [b"X-A : 1\r\n", b"\r\n"],
    "lone CR": [b"X-A: 1\r2\r\n", b"\r\n"],
    "empty name": [b": 1\r\n", b"\r\n"],
    "first line continued": [b" X-A: 1\r\n", b"\r\n"],
    "from line": [b"From nobody\r\n", b"X-A: 1\r\n", b"\r\n"],
    "multipart": [b"Content-Type: multipart/mixed; boundary=x\r\n", b"\r\n"],
    "message": [b"content-type:  Message/rfc822\r\n", b"\r\n"],
    "no end": [b"X-A: 1\r\n", b"X-B: 2"],
}


def _parser(lines: list[bytes]) -> http.client.HTTPMessage:
    # What http.client.parse_headers does with the lines it read.
    text = b"".join(lines).decode("iso-8859-1")
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)  # type: ignore[no-any-return]


def _state(message: http.client.HTTPMessage) -> dict[str, Any]:
    found = dict(vars(message))
    found["defects"] = [type(d) for d in message.defects]
    if isinstance(message._payload, list):  # message/rfc822: the parts, compared alike
        found["_payload"] = [_state(part) for part in message._payload]
    return found


@pytest.mark.parametrize("lines", PLAIN.values(), ids=PLAIN.keys())
def test_a_plain_block_gives_the_parsers_message_without_the_parser(
        lines: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _state(_parser(lines))

    def refuse(lines: list[bytes]) -> http.client.HTTPMessage:
        raise AssertionError("the email parser was used for a plain block")

    monkeypatch.setattr(wire, "_parsed", refuse)
    assert _state(parse_lines(lines)) == expected


@pytest.mark.parametrize("lines", PLAIN.values(), ids=PLAIN.keys())
def test_a_plain_blocks_message_reads_as_the_parsers(lines: list[bytes]) -> None:
    # PlainMessage's get and items skip the email policy's fetch for ASCII values only.
    ours, theirs = parse_lines(lines), _parser(lines)
    for message in (ours, theirs):  # a value the fetch does change: surrogates
        message["X-Surrogate"] = "caf\udce9"
    assert ours.items() == theirs.items()
    for name in ("server", "SET-COOKIE", "x-a", "x-empty", "content-length",
                 "X-!#$%&'*+.^_`|~9", "x-surrogate", "absent"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "default") == theirs.get(name, "default")
        assert ours[name] == theirs[name]
        assert type(ours.get(name)) is type(theirs.get(name))


@pytest.mark.parametrize("lines", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_any_other_block_goes_to_the_email_parser(
        lines: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[int] = []
    parsed = wire._parsed
    monkeypatch.setattr(wire, "_parsed", lambda lines: used.append(1) or parsed(lines))
    assert _state(parse_lines(lines)) == _state(_parser(lines))
    assert used == [1]


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))  # type: ignore[arg-type]


RESPONSES = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET"),
    "chunked wins over a length": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n"
                                   b"Content-Length: 9\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "GET"),
    "no length: read to close": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nhello", "GET"),
    "bad length": (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nhello", "GET"),
    "negative length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello", "GET"),
    "close asked": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\n"
                    b"hello", "GET"),
    "HTTP/1.0 keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                            b"Content-Length: 5\r\n\r\nhello", "GET"),
    "HTTP/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET"),
    "100 first": (b"HTTP/1.1 100 Continue\r\nX-Skipped: 1\r\n\r\n"
                  b"HTTP/1.1 201 Created \r\nContent-Length: 2\r\n\r\nok", "POST"),
    "204": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", "GET"),
    "304": (b"HTTP/1.1 304 Not Modified\r\n\r\n", "GET"),
    "HEAD": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
    "folded header": (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok",
                      "GET"),
}
FIELDS = ("code", "status", "reason", "version", "chunked", "chunk_left", "length",
          "will_close")


def _begun(cls: type[http.client.HTTPResponse], data: bytes, method: str
           ) -> http.client.HTTPResponse:
    found = cls(_Sock(data), method=method)  # type: ignore[arg-type]
    found.begin()
    return found


@pytest.mark.parametrize(("data", "method"), RESPONSES.values(), ids=RESPONSES.keys())
def test_a_response_begins_and_reads_as_http_clients_does(data: bytes, method: str) -> None:
    stock = _begun(http.client.HTTPResponse, data, method)
    fast = _begun(FastHeaderResponse, data, method)
    assert {f: getattr(fast, f) for f in FIELDS} == {f: getattr(stock, f) for f in FIELDS}
    assert _state(fast.msg) == _state(stock.msg)
    assert fast.read() == stock.read()
    fast.begin()  # a second begin reads nothing
    assert fast.status == stock.status


@pytest.mark.parametrize("data", [b"HTTP/2 200 OK\r\n\r\n", b"junk\r\n\r\n", b""],
                         ids=["unknown protocol", "bad status line", "nothing"])
def test_a_bad_status_line_raises_what_http_client_raises(data: bytes) -> None:
    with pytest.raises(http.client.HTTPException) as stock:
        _begun(http.client.HTTPResponse, data, "GET")
    with pytest.raises(http.client.HTTPException) as fast:
        _begun(FastHeaderResponse, data, "GET")
    assert (type(fast.value), str(fast.value)) == (type(stock.value), str(stock.value))


def test_too_many_header_lines_raise_as_in_http_client() -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="more than 100 headers"):
        _begun(FastHeaderResponse, data, "GET")


def test_poolclients_connections_use_both_and_a_class_with_its_own_keeps_it() -> None:
    pool = CountedHTTPSConnectionPool("127.0.0.1", 443)
    # (a subclass of it: it also tells the policy the status, poolclient.pool._JudgedResponse)
    assert issubclass(pool.ConnectionCls.response_class, FastHeaderResponse)

    class Own(http.client.HTTPResponse):
        pass

    class WithOwn(urllib3.connection.HTTPConnection):
        response_class = Own

    assert _counting(WithOwn).response_class is Own
    assert issubclass(_counting(urllib3.connection.HTTPConnection).response_class,
                      FastHeaderResponse)

    class Frames:  # as urllib3's HTTP/2 connection: no response class, its own putheader
        def putheader(self, header: str, *values: str) -> None:
            pass

    assert _counting(Frames).putheader is Frames.putheader
    assert _counting(WithOwn).putheader is wire.PlainHeaderLines.putheader


LINES: dict[str, tuple[Any, ...]] = {
    "plain": ("X-Stainless-Lang", "python"),
    "empty value": ("X-Empty", ""),
    "spaces kept": ("X-A", "  a b  "),
    "latin-1": ("X-A", "caf\xe9"),
    "a colon in the value": ("X-A", "b: c"),
    "space in the name": ("X A", "1"),
    "bytes name": (b"X-A", "1"),
    "bytes value": ("X-A", b"1"),
    "int value": ("Content-Length", 60),
    "two values": ("X-A", "1", "2"),
    "obs-fold value": ("X-A", "1\r\n 2"),
    "skipped, skippable": ("User-Agent", urllib3.util.SKIP_HEADER),
}
REFUSED: dict[str, tuple[Any, ...]] = {
    "CRLF in the value": ("X-A", "1\r\nX-B: 2"),
    "LF in the value": ("X-A", "1\n2"),
    "colon in the name": ("X:A", "1"),
    "space first in the name": (" X", "1"),
    "empty name": ("", "1"),
    "non-ASCII name": ("X-\xe9", "1"),
    "value beyond latin-1": ("X-A", "\u20ac"),
    "skipped, not skippable": ("X-A", urllib3.util.SKIP_HEADER),
}


def _written(cls: type[urllib3.connection.HTTPConnection], *line: Any,
             started: bool = True) -> list[bytes]:
    conn = cls("127.0.0.1", 1)
    if started:
        conn.putrequest("POST", "/v1/chat", skip_host=True, skip_accept_encoding=True)
    conn.putheader(*line)
    return list(conn._buffer)  # type: ignore[attr-defined]


OURS = _counting(urllib3.connection.HTTPConnection)


@pytest.mark.parametrize("line", LINES.values(), ids=LINES.keys())
def test_a_request_header_line_is_written_as_http_client_writes_it(line: tuple[Any, ...]
                                                                   ) -> None:
    assert _written(OURS, *line) == _written(urllib3.connection.HTTPConnection, *line)


@pytest.mark.parametrize("line", REFUSED.values(), ids=REFUSED.keys())
def test_a_refused_header_line_raises_what_http_client_raises(line: tuple[Any, ...]) -> None:
    with pytest.raises(Exception) as stock:
        _written(urllib3.connection.HTTPConnection, *line)
    with pytest.raises(Exception) as ours:
        _written(OURS, *line)
    assert (type(ours.value), str(ours.value)) == (type(stock.value), str(stock.value))


def test_a_header_line_outside_a_request_raises_as_http_clients() -> None:
    with pytest.raises(http.client.CannotSendHeader):
        _written(OURS, "X-A", "1", started=False)


def test_a_plain_header_line_skips_the_long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("http.client's putheader was used for a plain line")

    monkeypatch.setattr(http.client.HTTPConnection, "putheader", refuse)
    assert _written(OURS, "X-A", "1")[-1] == b"X-A: 1"


class _OwnSend(OURS):  # type: ignore[misc, valid-type]
    """Sends its own way, as botocore's connection does for ``Expect: 100-continue``."""

    def send(self, data: Any) -> None:
        super().send(data)


def _sent(cls: type[urllib3.connection.HTTPConnection], body: bytes,
          monkeypatch: pytest.MonkeyPatch, **options: Any) -> tuple[int, bytes]:
    """How many writes a connected ``cls`` makes for a POST of ``body``, and what arrives."""
    near, far = socket.socketpair()
    writes = []
    sendall = socket.socket.sendall
    with monkeypatch.context() as patched:
        patched.setattr(socket.socket, "sendall",
                        lambda sock, data, *flags: writes.append(len(data)) or sendall(
                            sock, data, *flags))
        conn = cls("127.0.0.1", 1)
        conn.sock = near
        conn.request("POST", "/v1/chat", body=body, headers={"X-A": "1"}, **options)
    near.shutdown(socket.SHUT_WR)
    received = b"".join(iter(lambda: far.recv(65536), b""))
    near.close()
    far.close()
    return len(writes), received


SENT = {
    "small body": (b'{"model":"m"}', {}),
    "chunked": (b'{"model":"m"}', {"chunked": True}),
    "one TLS record": (b"x" * 2**14, {}),
}


@pytest.mark.parametrize(("body", "options"), SENT.values(), ids=SENT.keys())
def test_a_small_body_goes_in_one_write_with_its_header_block(
        body: bytes, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    writes, received = _sent(OURS, body, monkeypatch, **options)
    stock_writes, stock_received = _sent(urllib3.connection.HTTPConnection, body,
                                         monkeypatch, **options)
    assert received == stock_received
    assert (writes, stock_writes) == (stock_writes - 1, 3 if options else 2)


@pytest.mark.parametrize("body", [b"", b"x" * (2**14 + 1)], ids=["empty", "beyond a record"])
def test_no_body_or_a_large_one_is_sent_as_urllib3_sends_it(
        body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _sent(OURS, body, monkeypatch) == _sent(
        urllib3.connection.HTTPConnection, body, monkeypatch)


def test_a_class_that_sends_its_own_way_keeps_the_two_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert not _OwnSend._joins_body
    assert _sent(_OwnSend, b"{}", monkeypatch) == _sent(
        urllib3.connection.HTTPConnection, b"{}", monkeypatch)
