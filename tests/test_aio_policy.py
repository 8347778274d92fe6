"""The origins' policy in the async pools, against the real TLS upstream: the same breaker,
budget and stall detection as the sync pools, shared with them per origin and process,
and the SDKs' own errors for what it refuses or aborts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from poolclient import Registry, Settings
from poolclient.resilience import PolicySettings
from tests.helpers import Upstream, refused_url

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("httpcore2")


def make(upstream: Upstream | None = None, **policy: object) -> Registry:
    settings = Settings(ca_bundle=upstream.ca if upstream else None, maxsize=4,
                        read_timeout=30, deadline=60)
    return Registry(settings, default_maxsize=4,
                    policy=PolicySettings(**policy))  # type: ignore[arg-type]


def client(reg: Registry) -> Any:
    return httpx2.AsyncClient(transport=reg.httpx2_async_transport(), timeout=None)


def test_gateway_errors_open_the_breaker_for_both_kinds_of_pool(upstream: Upstream):
    """Five 503s through the async pool open the origin's breaker: the next async call is
    refused before any socket as httpx2's ConnectError, and so is a sync call to the same
    origin: one breaker per origin and process, whichever pool asks."""
    reg = make(upstream)
    http = client(reg)

    async def main() -> None:
        for _ in range(5):
            assert (await http.get(upstream.url + "/status/503")).status_code == 503
        with pytest.raises(httpx2.ConnectError, match="circuit"):
            await http.get(upstream.url + "/items")
        (pool,) = reg.stats().pools
        assert (pool.in_use, pool.requests) == (0, 5)

    try:
        asyncio.run(main())
        with pytest.raises(Exception, match="circuit") as caught:
            reg.request("GET", upstream.url + "/items")
        assert type(caught.value).__name__ == "CircuitOpenError"
        assert upstream.stats()["requests"] == 5  # nothing after the breaker opened
        (snap,) = reg.stats().policies
        assert snap.breaker is not None and snap.breaker.state == "open"
        assert snap.refused["open"] == 2
    finally:
        reg.close()


def test_the_sdk_gets_api_connection_error_while_the_breaker_is_open(upstream: Upstream):
    openai = pytest.importorskip("openai")
    reg = make(upstream)
    sdk = openai.AsyncOpenAI(api_key="k", base_url=upstream.url + "/v1", max_retries=0,
                             http_client=client(reg))
    http = client(reg)

    async def main() -> None:
        assert (await sdk.chat.completions.create(model="m", messages=[])).choices
        for _ in range(5):  # the origin answers 503 five times: its breaker opens
            assert (await http.get(upstream.url + "/status/503")).status_code == 503
        with pytest.raises(openai.APIConnectionError):
            await sdk.chat.completions.create(model="m", messages=[])

    try:
        asyncio.run(main())
        assert upstream.stats()["requests"] == 6
    finally:
        reg.close()


def test_a_stalled_call_is_aborted_as_a_read_timeout(upstream: Upstream):
    """Once GET /slow has a history of quick answers, a call the upstream holds for 30 s
    is aborted by the watchdog (its socket shut down): httpx2's ReadTimeout, not the
    answer the upstream would give at 30 s; the connection is not pooled again, and the
    next call is answered."""
    reg = make(upstream, stall_floor=0.5)
    http = client(reg)
    stalled = uuid.uuid4().hex

    async def main() -> Any:
        for _ in range(25):
            assert (await http.get(upstream.url + "/slow?seconds=0")).status_code == 200
        with pytest.raises(httpx2.ReadTimeout, match="stall"):
            await http.get(upstream.url + "/slow?seconds=30",
                           headers={"X-Request-Id": stalled})
        assert (await http.get(upstream.url + "/items")).status_code == 200
        return reg.stats()

    try:
        snapshot = asyncio.run(main())
    finally:
        reg.close()
    assert upstream.stats()["received"][stalled] == 1
    (pool,) = snapshot.pools
    (policy,) = snapshot.policies
    assert policy.stalled == 1 and policy.in_flight == 0
    assert pool.in_use == 0 and pool.connections_opened == 2


def test_connect_retries_draw_on_the_budget():
    """A refused origin, 5 connect retries allowed per call: the budget (its floor of 1
    a second, nothing else to earn it) lets only some of them happen, and the caller
    gets httpx2's ConnectError as with no retry left."""
    reg = Registry(Settings(connect_retries=5, backoff=0), default_maxsize=4,
                   policy=PolicySettings(breaker=False))
    http = client(reg)
    url = refused_url()

    async def main() -> Any:
        for _ in range(3):
            with pytest.raises(httpx2.ConnectError):
                await http.get(url)
        return reg.stats()

    try:
        snapshot = asyncio.run(main())
    finally:
        reg.close()
    (pool,) = snapshot.pools
    (policy,) = snapshot.policies
    assert policy.refused["budget"] >= 1
    assert pool.retried < 3 * 5  # without the budget: 5 retries a call
