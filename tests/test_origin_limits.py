"""POOLCLIENT_ORIGIN_LIMITS: one origin's pool sized and timed apart from the others."""

from __future__ import annotations

import pytest

from poolclient import ConfigError, PoolTimeoutError, Registry, Settings
from tests.helpers import start_upstream


def test_one_origin_gets_its_own_maxsize_and_pool_timeout(tmp_path):
    upstream = start_upstream(str(tmp_path), "--hosts", "2")
    slow, fast = upstream.hosts(2)
    port = upstream.port
    registry = Registry(Settings(ca_bundle=upstream.ca, maxsize=4, pool_timeout=5,
                                 origin_limits=f"https://{slow}:{port} maxsize=1 "
                                               "pool_timeout=0.2"))
    try:
        held = registry.request("GET", f"https://{slow}:{port}/held", preload_content=False)
        with pytest.raises(PoolTimeoutError) as raised:
            registry.request("GET", f"https://{slow}:{port}/next")
        assert raised.value.waited is not None and raised.value.maxsize == 1
        others = [registry.request("GET", f"https://{fast}:{port}/x", preload_content=False)
                  for _ in range(4)]  # the other origin: POOLCLIENT_MAXSIZE, 4
        for response in [held, *others]:
            response.release_conn()
        sizes = {p.host: p.maxsize for p in registry.stats().pools}
        assert sizes == {slow: 1, fast: 4}
    finally:
        registry.close()
        upstream.stop()


@pytest.mark.parametrize("value", ["https://h maxsize=0", "https://h", "ftp://h maxsize=1",
                                   "https://h size=2", "https://h pool_timeout=-1"])
def test_a_bad_entry_stops_startup_naming_the_setting(value):
    with pytest.raises(ConfigError, match="POOLCLIENT_ORIGIN_LIMITS"):
        Settings.from_env({"POOLCLIENT_ORIGIN_LIMITS": value})


def test_entries_are_normalised():
    settings = Settings(origin_limits="HTTPS://API.example maxsize=32; http://[::1]:8080 "
                                      "pool_timeout=30")
    assert settings.origin_limits == ("https://api.example:443 maxsize=32; "
                                      "http://[::1]:8080 pool_timeout=30")
    assert settings.limits_by_origin == {("https", "api.example", 443): {"maxsize": 32},
                                         ("http", "::1", 8080): {"pool_timeout": 30.0}}
