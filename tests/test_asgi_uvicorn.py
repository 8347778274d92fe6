"""The same ASGI apps under real gunicorn with uvicorn's worker
(``-k uvicorn_worker.UvicornWorker``): the checks of :mod:`tests.test_asgi_gunicorn`.

uvicorn's worker has no ``worker.state``: the hooks wrap the app in poolclient's ASGI
middleware, which puts the registry in each scope's state. uvicorn does not cancel a
request's task when its caller hangs up, so only the route that watches for the
disconnect is tried here.
"""

from __future__ import annotations

import pytest

from tests.helpers import Upstream, wait_for
from tests.test_asgi_gunicorn import (
    Start,
    assert_health_equals_server,
    check_example,
    check_sdk_app,
    check_streams,
    sdk_upstreams,
    start_example,
    start_sdk_app,
)

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

pytest.importorskip("uvicorn_worker")

UVICORN = ["-k", "uvicorn_worker.UvicornWorker"]


def test_sdk_clients_built_at_import_under_uvicorn_preload(gunicorn: Start,
                                                          upstream: Upstream):
    """UvicornWorker -w 2 --preload, the SDK clients built at import and used in the
    master: 16 clients, 1,000 calls, no errors; per pool kind at most MAXSIZE connections a
    worker, none written by two processes, the master's closed before the fork; /health of
    each worker equal to the server's count; APITimeoutError and APIConnectionError."""
    with sdk_upstreams(upstream) as (sync, stalling):
        server = start_sdk_app(gunicorn, UVICORN, upstream, sync, stalling)
        check_sdk_app(server, upstream, sync, stalling)
        server.stop()
    wait_for(lambda: upstream.stats()["open"] == 0, 15, "upstream connections to close")


def test_sse_first_event_and_client_disconnect_under_uvicorn(gunicorn: Start,
                                                            upstream: Upstream):
    """A caller hanging up mid-stream: cancelled, counted, its connection closed at the
    upstream; the first event reaches the caller before the upstream ends the stream."""
    with sdk_upstreams(upstream) as (sync, stalling):
        server = start_sdk_app(gunicorn, UVICORN, upstream, sync, stalling)
        check_streams(server, upstream, server_cancels=False)


def test_fastapi_example_under_uvicorn(gunicorn: Start, upstream: Upstream):
    """app.asgi_example's routes and error table under uvicorn's worker."""
    check_example(start_example(gunicorn, UVICORN, upstream), upstream)


def test_fastapi_example_health_counts_under_uvicorn(gunicorn: Start, upstream: Upstream):
    """The same calls, then /health's pools against the upstream's record."""
    server = start_example(gunicorn, UVICORN, upstream)
    check_example(server, upstream)
    assert_health_equals_server(server, upstream)
