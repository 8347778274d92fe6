"""poolclient.response: header blocks read without the email parser give the message the
parser gives, and a response begins as http.client's does."""

from __future__ import annotations

import email.parser
import http.client
import io
from typing import Any

import pytest
import urllib3

from poolclient import response
from poolclient.pool import CountedHTTPSConnectionPool, _counting
from poolclient.response import FastHeaderResponse, parse_lines

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

    monkeypatch.setattr(response, "_parsed", refuse)
    assert _state(parse_lines(lines)) == expected


@pytest.mark.parametrize("lines", NOT_PLAIN.values(), ids=NOT_PLAIN.keys())
def test_any_other_block_goes_to_the_email_parser(
        lines: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[int] = []
    parsed = response._parsed
    monkeypatch.setattr(response, "_parsed", lambda lines: used.append(1) or parsed(lines))
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


def test_poolclients_connections_use_it_and_another_response_class_is_kept() -> None:
    pool = CountedHTTPSConnectionPool("127.0.0.1", 443)
    assert pool.ConnectionCls.response_class is FastHeaderResponse

    class Own(http.client.HTTPResponse):
        pass

    class WithOwn(urllib3.connection.HTTPConnection):
        response_class = Own

    assert _counting(WithOwn).response_class is Own
    assert _counting(urllib3.connection.HTTPConnection).response_class is FastHeaderResponse

    class NoResponseClass:  # as urllib3's HTTP/2 connection
        def __init__(self, host: str, port: int) -> None:
            pass

    assert issubclass(_counting(NoResponseClass), NoResponseClass)
