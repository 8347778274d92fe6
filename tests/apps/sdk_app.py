"""A WSGI app whose OpenAI and Anthropic clients are built at import, on
``get_registry().httpx2_transport()``: under ``--preload`` in gunicorn's master, before the
fork, as a module-level client usually is.

- ``GET /openai``, ``/openai-stream``, ``/anthropic``, ``/anthropic-stream``: one call each,
  stamped with the calling process's pid (``X-Client-Pid``), answering the text;
- ``GET /openai-stalled``, ``/openai-refused``: one call to an upstream that never answers
  (read timeout 0.5 s) or refuses, answering 502 with the SDK's error class;
- ``MASTER_CALLS=N``: N plain OpenAI calls at import (in the master under ``--preload``).
"""

import json
import os

import anthropic
import httpx2
import openai

import poolclient

UPSTREAM = os.environ["UPSTREAM_URL"]
MESSAGES = [{"role": "user", "content": "ping"}]

transport = poolclient.get_registry().httpx2_transport()
gpt = openai.OpenAI(base_url=UPSTREAM + "/v1", api_key="test", max_retries=0,
                    http_client=httpx2.Client(transport=transport))
claude = anthropic.Anthropic(base_url=UPSTREAM, api_key="test", max_retries=0,
                             http_client=httpx2.Client(transport=transport))
failing = {
    "/openai-stalled": gpt.with_options(
        base_url=os.environ.get("STALL_URL", UPSTREAM) + "/stall/v1", timeout=0.5),
    "/openai-refused": gpt.with_options(base_url=os.environ.get("REFUSED_URL", "") + "/v1"),
}


def _pid() -> dict[str, str]:
    return {"X-Client-Pid": str(os.getpid())}


def call(path: str) -> str:
    if path in failing:
        failing[path].chat.completions.create(model="m", messages=MESSAGES)
        return ""
    if path == "/openai":
        done = gpt.chat.completions.create(model="m", messages=MESSAGES, extra_headers=_pid())
        return done.choices[0].message.content or ""
    if path == "/openai-stream":
        chunks = gpt.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                             extra_headers=_pid())
        return "".join(c.choices[0].delta.content or "" for c in chunks)
    if path == "/anthropic":
        message = claude.messages.create(model="m", max_tokens=5, messages=MESSAGES,
                                         extra_headers=_pid())
        return message.content[0].text
    with claude.messages.stream(model="m", max_tokens=5, messages=MESSAGES,
                                extra_headers=_pid()) as stream:
        return "".join(stream.text_stream)


for _ in range(int(os.environ.get("MASTER_CALLS", "0"))):
    call("/openai")


def app(environ, start_response):
    try:
        status, document = "200 OK", {"text": call(environ["PATH_INFO"])}
    except (openai.APIError, anthropic.APIError) as exc:
        status, document = "502 Bad Gateway", {"error": type(exc).__name__}
    body = json.dumps({**document, "pid": os.getpid()}).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]
