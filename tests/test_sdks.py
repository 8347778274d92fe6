"""The OpenAI and Anthropic SDKs, unchanged, on ``Registry.httpx2_transport()``, against the
real TLS upstream speaking their wire formats (JSON, and server-sent events for streams;
``app/stubs/llm.py``). In process here; under real gunicorn in ``test_sdks_gunicorn.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
httpx2 = pytest.importorskip("httpx2")

from poolclient import PoolClientMiddleware, Registry  # noqa: E402
from tests.helpers import refused_url  # noqa: E402

MESSAGES = [{"role": "user", "content": "ping"}]


@pytest.fixture
def http_client(registry: Registry) -> Iterator:
    with httpx2.Client(transport=registry.httpx2_transport()) as client:
        yield client


def make_openai(base: str, http_client, **kw):
    return openai.OpenAI(base_url=base + "/v1", api_key="test", http_client=http_client, **kw)


def make_anthropic(base: str, http_client, **kw):
    return anthropic.Anthropic(base_url=base, api_key="test", http_client=http_client, **kw)


def test_openai_plain_and_streamed_reuse_one_connection(upstream, http_client, registry):
    client = make_openai(upstream.url, http_client)
    for _ in range(3):
        done = client.chat.completions.create(model="m", messages=MESSAGES)
        assert done.choices[0].message.content == "pong"
        chunks = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "pong"
    seen = upstream.stats()
    assert seen["requests"] == 6 and len(seen["connections"]) == 1
    totals = registry.stats().totals()
    assert (totals["connections_opened"], totals["unread"], totals["in_use"]) == (1, 0, 0)


def test_anthropic_plain_and_streamed_reuse_one_connection(upstream, http_client, registry):
    client = make_anthropic(upstream.url, http_client)
    for _ in range(3):
        message = client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
        assert message.content[0].text == "pong"
        with client.messages.stream(model="m", max_tokens=5, messages=MESSAGES) as stream:
            assert "".join(stream.text_stream) == "pong"
    seen = upstream.stats()
    assert seen["requests"] == 6 and len(seen["connections"]) == 1
    assert registry.stats().totals()["connections_opened"] == 1


def test_first_streamed_token_arrives_before_the_stream_ends(upstream, http_client, registry):
    """The upstream sends the first chunk, then waits for a gate only this test opens."""
    client = make_openai(upstream.url + "/gate/token", http_client)
    chunks = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first = next(iter(chunks))
    assert first.choices[0].delta.role == "assistant"
    assert registry.stats().totals()["streaming"] == 1
    upstream.open_gate("token")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "pong"
    assert registry.stats().totals()["streaming"] == 0


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_stalled_upstream_is_the_sdks_timeout_error(upstream, http_client, sdk):
    make = make_openai if sdk == "openai" else make_anthropic
    client = make(upstream.url + "/stall", http_client, timeout=0.5, max_retries=0)
    error = openai.APITimeoutError if sdk == "openai" else anthropic.APITimeoutError
    started = time.monotonic()
    with pytest.raises(error):
        if sdk == "openai":
            client.chat.completions.create(model="m", messages=MESSAGES)
        else:
            client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
    # The read timeout's doing: the stall lasts 30 s (app/stubs/llm.STALL_SECONDS).
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_refused_is_the_sdks_connection_error(http_client, sdk):
    make = make_openai if sdk == "openai" else make_anthropic
    client = make(refused_url(), http_client, max_retries=0)
    error = openai.APIConnectionError if sdk == "openai" else anthropic.APIConnectionError
    with pytest.raises(error) as raised:
        if sdk == "openai":
            client.chat.completions.create(model="m", messages=MESSAGES)
        else:
            client.messages.create(model="m", max_tokens=5, messages=MESSAGES)
    assert not isinstance(raised.value, (openai.APITimeoutError, anthropic.APITimeoutError))


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_5xx_then_200_goes_through_the_sdks_retry(upstream, http_client, sdk):
    make = make_openai if sdk == "openai" else make_anthropic
    client = make(upstream.url + f"/flaky/{sdk}", http_client, max_retries=1)
    if sdk == "openai":
        text = client.chat.completions.create(model="m", messages=MESSAGES)
        assert text.choices[0].message.content == "pong"
    else:
        assert client.messages.create(model="m", max_tokens=5,
                                      messages=MESSAGES).content[0].text == "pong"
    assert upstream.stats()["requests"] == 2  # the 500, then the retry


def test_sdk_close_closes_nothing_shared(upstream, registry):
    for _ in range(2):
        with make_openai(upstream.url, httpx2.Client(
                transport=registry.httpx2_transport())) as client:
            client.chat.completions.create(model="m", messages=MESSAGES)
    assert registry.stats().totals()["connections_opened"] == 1
    assert upstream.stats()["open"] == 1


def test_health_and_metrics_show_a_stream_in_progress(upstream, http_client, registry):
    """/health of this process, and /metrics, while one SSE stream holds a connection."""
    import json

    from webtest import TestApp

    web = TestApp(PoolClientMiddleware(lambda environ, start: [], registry),
                  extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    client = make_openai(upstream.url + "/gate/seen", http_client)
    chunks = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    next(iter(chunks))
    (pool,) = json.loads(web.get("/health").body)["pools"]
    assert (pool["in_use"], pool["streaming"]) == (1, 1)
    port = upstream.port
    assert (f'poolclient_connections_streaming{{host="127.0.0.1",port="{port}",'
            f'scheme="https"}} 1.0') in web.get("/metrics").text
    upstream.open_gate("seen")
    list(chunks)
    assert json.loads(web.get("/health").body)["pools"][0]["streaming"] == 0
