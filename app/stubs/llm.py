"""The few endpoints of the OpenAI and Anthropic APIs that the SDK tests call: JSON
answers, and server-sent events for streams.

- ``POST /v1/chat/completions`` (OpenAI): a completion whose text is ``pong``; with
  ``"stream": true``, one ``chat.completion.chunk`` event per word, then ``data: [DONE]``;
- ``POST /v1/messages`` (Anthropic): a message whose text is ``pong``; with
  ``"stream": true``, ``message_start`` ... ``message_stop``;
- ``GET /sse?events=N``: N plain events (``data: N``) for the httpx tests.

A path may start with one control prefix before ``/v1`` (or ``/sse``):

- ``/stall``: nothing is answered for 30 s (the client's read timeout fires first);
- ``/flaky/KEY``: the first request for KEY answers 500, later ones as usual;
- ``/gate/NAME``: a stream sends its first event, then waits until ``POST
  /_upstream/gate/NAME`` opens the gate (so a test can see that event arrive while the
  stream is still open), then the rest.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from app.stubs import answer_json

WORDS = ("po", "ng")
STALL_SECONDS = 30.0


class Gates:
    """Named events that streams wait on, opened by the test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._failed: set[str] = set()

    def event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def first_time(self, key: str) -> bool:
        """True once per key: the flaky prefix's first request."""
        with self._lock:
            if key in self._failed:
                return False
            self._failed.add(key)
            return True


def handles(path: str) -> bool:
    return _route(path)[1] in ("/v1/chat/completions", "/v1/messages", "/sse")


def _route(path: str) -> tuple[list[str], str]:
    """The control prefix's parts, and the API path after it."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part in ("v1", "sse"):
            return parts[1:i], "/" + "/".join(parts[i:])
    return [], path


def answer(handler: Any, path: str, query: dict[str, list[str]], body: bytes,
           gates: Gates) -> None:
    """Answer one API request on ``handler`` (an ``app.upstream.Handler``)."""
    control, api = _route(path)
    gate: threading.Event | None = None
    if control[:1] == ["stall"]:
        time.sleep(STALL_SECONDS)
        return
    if control[:1] == ["flaky"] and gates.first_time("/".join(control)):
        _json(handler, 500, {"error": {"message": "flaky", "type": "server_error"}})
        return
    if control[:1] == ["gate"]:
        gate = gates.event(control[1])
    request = json.loads(body) if body else {}
    if api == "/sse":
        count = int(query.get("events", ["3"])[0])
        _stream(handler, [(None, str(n)) for n in range(count)], gate)
    elif api == "/v1/chat/completions":
        if request.get("stream"):
            _stream(handler, [*_openai_chunks(request), (None, "[DONE]")], gate)
        else:
            _json(handler, 200, _openai_completion(request))
    elif request.get("stream"):
        _stream(handler, _anthropic_events(request), gate)
    else:
        _json(handler, 200, _anthropic_message(request))


def _json(handler: Any, status: int, document: object) -> None:
    answer_json(handler, status, document, [("x-request-id", "req_test")])


def _stream(handler: Any, events: list[tuple[str | None, str]],
            gate: threading.Event | None) -> None:
    """The events as ``text/event-stream``, one chunk each, as an API streams them."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for n, (name, data) in enumerate(events):
        if n == 1 and gate is not None:
            gate.wait(STALL_SECONDS)
        text = (f"event: {name}\n" if name else "") + f"data: {data}\n\n"
        chunk = text.encode()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    handler.wfile.write(b"0\r\n\r\n")


def _openai_completion(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
        "model": request.get("model", "test"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "".join(WORDS)}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def _openai_chunks(request: dict[str, Any]) -> list[tuple[str | None, str]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, str]:
        return None, json.dumps({
            "id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0,
            "model": request.get("model", "test"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    return [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": word}) for word in WORDS), chunk({}, "stop")]


def _anthropic_message(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_test", "type": "message", "role": "assistant",
        "model": request.get("model", "test"),
        "content": [{"type": "text", "text": "".join(WORDS)}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }


def _anthropic_events(request: dict[str, Any]) -> list[tuple[str | None, str]]:
    message = {**_anthropic_message(request), "content": [], "stop_reason": None}
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        *(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "text_delta", "text": word}})
          for word in WORDS),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 2},
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [(name, json.dumps(data)) for name, data in events]
