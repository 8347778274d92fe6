"""http.client's header lines, written and read for less when they are plain.

When to look here: a request's or a response's headers come out wrong, or cost more than
they should. Everything else on the wire is http.client's and urllib3's, unchanged.

- **Read.** ``http.client`` hands every response's header block to :mod:`email.parser`,
  built for mail: for nginx's six header lines that is one instruction in six of a whole
  ``.request()`` (callgrind, ``make bench``'s ideal upstream). Almost every response has
  plain lines, ``name: value``, nothing folded, nothing a mail parser would read on for (a
  ``multipart/`` or ``message/`` type). For those, :func:`parse_lines` builds the same
  :class:`http.client.HTTPMessage` the parser would, attribute for attribute; anything else
  goes to the parser. Whatever reads the headers (urllib3's ``assert_header_parsing``,
  ``HTTPHeaderDict``, the httpx transports) cannot tell the two apart. The status line, the
  framing (chunked, length, close) and the body stay http.client's; with ``debuglevel``
  set, all of it does.
- **Written.** urllib3 checks each request header for its skip marker, then http.client
  encodes and checks each value on its own: 1.5 us a line, and an SDK call sends 17. A
  plain line (an ASCII name, one ``str`` value without CR or LF) is checked by one pattern
  and written byte for byte as http.client writes it; anything else goes their way, to
  the same checks and errors.
- **Sent.** urllib3 writes the header block, then the body: two TLS records, two system
  calls, and an upstream woken twice for one request, where an SDK's JSON body is a few
  hundred bytes. A connected socket given a ``bytes`` body up to one TLS record (16 KiB)
  gets both in one write, as ``http.client``'s own ``request()`` does; the bytes are the
  same.

``tests/test_wire.py`` holds both equal to the long way.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import TYPE_CHECKING, Any

from urllib3.util import SKIP_HEADER

if TYPE_CHECKING:
    from urllib3.connection import HTTPConnection as _Connection
else:
    _Connection = object

# A token, a colon, a value without CR or LF, the line end: RFC 9112's field line without
# obs-fold. The email parser splits lines at a lone CR as well, so a value holding one is
# not plain.
_PLAIN = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*)\r?\n")
# Types the email parser reads a body for (an empty one here), leaving defects to see.
_READ_ON = re.compile(rb"content-type:[ \t]*(multipart|message)/", re.IGNORECASE)
# A request line http.client would write as it is: its legal name (ASCII checked apart),
# a value it would not refuse, narrowed to one without CR or LF.
_SENDABLE = re.compile(r"[^:\s][^:\r\n]*: [^\r\n]*")
_STARTED = "Request-started"  # http.client's state between putrequest and endheaders
_JOINED = 2**14  # the largest body sent in one write with its header block


class PlainMessage(http.client.HTTPMessage):
    """The message :func:`parse_lines` makes: ``get`` (and so ``[]``) and ``items`` return a
    plain ASCII value as it is, without the email policy's fetch, which for such a value
    returns it unchanged (compat32 only wraps a value holding surrogates, which no ASCII
    string does) after three calls; every response reads its headers this way (urllib3
    copies ``items()``), so this is 15 or more calls less a request."""

    def items(self) -> list[tuple[str, Any]]:
        fetch = self.policy.header_fetch_parse
        return [(key, value) if value.__class__ is str and value.isascii()
                else (key, fetch(key, value))
                for key, value in self._headers]  # type: ignore[attr-defined]

    def get(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        for key, value in self._headers:  # type: ignore[attr-defined]
            if key.lower() == name:
                if value.__class__ is str and value.isascii():
                    return value
                return self.policy.header_fetch_parse(key, value)
        return failobj


def parse_lines(lines: list[bytes]) -> http.client.HTTPMessage:
    """The message of a header block, ``lines`` as ``http.client`` reads them (the last is
    the empty line, or ``b""`` at the end of the stream)."""
    message = PlainMessage()
    for line in lines[:-1]:
        plain = _PLAIN.fullmatch(line)
        if plain is None or _READ_ON.match(line):
            return _parsed(lines)
        # As the email parser's compat32 policy keeps it: spaces and tabs after the colon
        # go, those at the end of the value stay.
        message.set_raw(plain[1].decode("latin-1"), plain[2].decode("latin-1"))
    if lines and lines[-1] not in (b"\r\n", b"\n", b""):
        return _parsed(lines)
    message.set_payload("")
    return message


def _parsed(lines: list[bytes]) -> http.client.HTTPMessage:
    text = b"".join(lines).decode("iso-8859-1")
    return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)


class FastHeaderResponse(http.client.HTTPResponse):
    """``http.client.HTTPResponse`` whose :meth:`begin` reads the header block with
    :func:`parse_lines`."""

    def begin(self) -> None:
        if self.headers is not None:  # already begun
            return
        if self.debuglevel > 0:  # http.client prints what it reads
            super().begin()
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            http.client._read_headers(self.fp)  # the 100's, unused
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = parse_lines(http.client._read_headers(self.fp))
        self._frame()

    def _frame(self) -> None:
        # http.client's rules, in its order: chunked wins over a length; a bad or negative
        # length is none; no body after 1xx, 204, 304 or HEAD; no length and not chunked
        # means the body ends when the connection does.
        coding = self.headers.get("transfer-encoding")
        self.chunked = coding is not None and coding.lower() == "chunked"
        if self.chunked:
            self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                pass
            else:
                if self.length < 0:
                    self.length = None
        status = self.status
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or (
                100 <= status < 200) or self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


class PlainHeaderLines(_Connection):
    """What poolclient's connections take from here: :meth:`putheader`, and
    :class:`FastHeaderResponse` as their ``response_class``."""

    response_class = FastHeaderResponse
    _hold_next = False  # the next send() is the header block: hold it for the body
    _held: bytes | None = None
    _joins_body = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A class that sends its own way keeps its way: botocore's waits for a 100 Continue
        # between the header block and the body, urllib3's HTTP/2 one writes frames.
        # (A mixin without them yet is judged again in the class that has them.)
        stock = http.client.HTTPConnection
        cls._joins_body = cls.send is PlainHeaderLines.send and all(
            getattr(cls, name, getattr(stock, name)) is getattr(stock, name)
            for name in ("_send_output", "endheaders"))

    def request(self, method: str, url: str, body: Any = None,
                headers: Any = None, **options: Any) -> None:
        # Only on a connected socket: a first send that connects (http.client's auto_open)
        # stays the plain one.
        if (type(body) is bytes and 0 < len(body) <= _JOINED and self.sock is not None
                and self._joins_body):
            self._hold_next = True
        try:
            super().request(method, url, body, headers, **options)
        finally:
            self._hold_next = False
            held, self._held = self._held, None
        if held is not None:  # no body was sent after all
            super().send(held)

    def send(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if type(data) is bytes:
                data = held + data
            else:
                super().send(held)
        elif self._hold_next and type(data) is bytes:
            self._hold_next = False
            self._held = data
            return
        super().send(data)

    def putheader(self, header: str, *values: str) -> None:  # type: ignore[override]  # as urllib3
        if len(values) == 1 and type(header) is str and header.isascii():
            value = values[0]
            if (type(value) is str and value != SKIP_HEADER
                    and getattr(self, "_HTTPConnection__state", None) == _STARTED):
                if _SENDABLE.fullmatch(f"{header}: {value}"):
                    # Encoded apart, as http.client does: the same error for a value
                    # beyond latin-1.
                    self._output(  # type: ignore[attr-defined]
                        header.encode() + b": " + value.encode("latin-1"))
                    return
        super().putheader(header, *values)
