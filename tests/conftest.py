"""Shared fixtures. The upstream always runs in its own process, so forks and gunicorn
workers in the tests never share a Python process with the server they count against."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from poolclient import Registry, Settings
from tests.helpers import Upstream, gunicorn_starter, start_upstream


def _started(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Upstream]:
    server = start_upstream(str(tmp_path_factory.mktemp(name)))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A fresh TLS upstream per test, so its connection record is the test's alone."""
    yield from _started(tmp_path_factory, "upstream")


@pytest.fixture
def other_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """A second one, signed by a CA of its own."""
    yield from _started(tmp_path_factory, "other")


@pytest.fixture
def registry(upstream: Upstream) -> Iterator[Registry]:
    """A registry that trusts the upstream's CA (and nothing else)."""
    reg = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=2))
    try:
        yield reg
    finally:
        reg.close()


@pytest.fixture
def gunicorn(tmp_path) -> Iterator:
    """Start real gunicorns with ``-c gunicorn.conf.py`` (``start(args, env)``); all are
    stopped afterwards."""
    yield from gunicorn_starter(tmp_path)
