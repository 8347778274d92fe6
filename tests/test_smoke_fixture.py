def test_registry_request_is_counted_at_both_ends(registry, upstream):
    """Three requests through the registry open one connection, as the upstream counts it."""
    for _ in range(3):
        r = registry.request("GET", upstream.url + "/x")
        assert r.status == 200
    seen = upstream.stats()
    assert seen["requests"] == 3
    assert len(seen["connections"]) == 1
    (pool,) = registry.stats().pools
    assert (pool.requests, pool.connections_opened, pool.reused) == (3, 1, 2)
