"""/livez, /readyz and Server-Timing, in process and under real gunicorn."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import urllib3
import webtest

from poolclient import PoolClientMiddleware, Registry, Settings
from poolclient.render import health_document
from poolclient.stats import PoolSnapshot, RegistrySnapshot
from tests.helpers import ROOT, Upstream, refused_url, wait_for


def calling_app(url: str, times: int):
    """A WSGI app that calls ``url`` ``times`` times through environ['http.pool']."""
    def app(environ, start_response):
        for _ in range(times):
            environ["http.pool"].request("GET", url)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return app


def test_livez_never_touches_the_upstream(upstream: Upstream):
    """/livez answers pass with no pool created and nothing sent, even when readiness
    checks are configured."""
    reg = Registry(Settings(ca_bundle=upstream.ca, ready_urls=upstream.url + "/ready"))
    app = webtest.TestApp(PoolClientMiddleware(calling_app(upstream.url, 1), registry=reg))
    for _ in range(5):
        res = app.get("/livez", extra_environ={"REMOTE_ADDR": "203.0.113.9"})
        assert res.content_type == "application/health+json"
        assert res.json == {"status": "pass"}
    assert reg.stats().pools == ()
    assert upstream.stats()["requests"] == 0


def test_readyz_checks_are_cached_and_details_limited(upstream: Upstream):
    """Two /readyz within the cache period cost one upstream GET; outsiders see only the
    status; insiders see the check with the URL's secrets masked."""
    ready = upstream.url + "/ready?key=SECRET"
    reg = Registry(Settings(ca_bundle=upstream.ca, ready_urls=ready, ready_cache=60))
    app = webtest.TestApp(PoolClientMiddleware(calling_app(upstream.url, 0), registry=reg))
    outside = app.get("/readyz", extra_environ={"REMOTE_ADDR": "203.0.113.9"})
    inside = app.get("/readyz", extra_environ={"REMOTE_ADDR": "127.0.0.1"})
    assert outside.json == {"status": "pass"}
    (check,) = inside.json["checks"]["upstream:responseTime"]
    assert check["status"] == "pass" and check["observedUnit"] == "ms"
    assert check["componentId"].endswith("/ready?key=***")
    assert "SECRET" not in inside.text
    assert upstream.stats()["requests"] == 1


def test_readyz_fails_with_503_naming_the_cause():
    """An unreachable ready URL: 503 health+json with status fail and the error."""
    reg = Registry(Settings(ready_urls=refused_url() + "/ready", ready_timeout=1))
    app = webtest.TestApp(PoolClientMiddleware(calling_app("", 0), registry=reg))
    res = app.get("/readyz", extra_environ={"REMOTE_ADDR": "127.0.0.1"}, expect_errors=True)
    assert res.status_int == 503
    assert res.json["status"] == "fail"
    (check,) = res.json["checks"]["upstream:responseTime"]
    assert check["status"] == "fail" and "refused" in check["output"].lower()


def test_health_warns_when_a_pool_is_full():
    """A pool with every connection in use makes /health warn (still 2xx)."""
    full = PoolSnapshot(scheme="https", host="h", port=443, maxsize=2, connections_opened=2,
                        requests=2, reused=0, in_use=2, idle=0, waits=1, discarded=0,
                        errors=0, expired=0, retired=0, retried=0)
    doc = health_document(RegistrySnapshot(pid=1, pools=(full,)))
    assert doc["status"] == "warn"
    assert doc["checks"]["h:443:connections"][0]["status"] == "warn"  # type: ignore[index]


def test_server_timing_counts_this_requests_calls(upstream: Upstream, registry: Registry):
    """With server_timing on, each response says how many upstream calls it made and
    their total time; off, no header."""
    on = webtest.TestApp(PoolClientMiddleware(calling_app(upstream.url + "/x", 3),
                                              registry=registry, server_timing=True))
    header = on.get("/any").headers["Server-Timing"]
    match = re.fullmatch(r'upstream;dur=(\d+\.\d);desc="3 calls"', header)
    assert match and float(match.group(1)) > 0
    assert on.get("/livez").headers.get("Server-Timing") is None
    off = webtest.TestApp(PoolClientMiddleware(calling_app(upstream.url + "/x", 1),
                                               registry=registry, server_timing=False))
    assert "Server-Timing" not in off.get("/any").headers


def test_readyz_follows_the_upstream_down_and_back(gunicorn, upstream: Upstream):
    """Under gunicorn, /readyz (cache 1 s) turns 503 within the cache period after the
    upstream dies, and back to 200 when it returns; /livez stays 200 throughout and the
    example app's responses carry Server-Timing, also in the access log."""
    server = gunicorn(["-w", "2", "--threads", "2"],
                      {"UPSTREAM_URL": upstream.url, "POOLCLIENT_CA_BUNDLE": upstream.ca,
                       "POOLCLIENT_READY_URLS": upstream.url + "/ready",
                       "POOLCLIENT_READY_CACHE": "1", "POOLCLIENT_READY_TIMEOUT": "1"})

    def status(path: str) -> int:
        with urllib3.PoolManager(retries=False) as http:
            return http.request("GET", server.url + path, headers={"Connection": "close"},
                                timeout=10).status

    with urllib3.PoolManager(retries=False) as http:
        r = http.request("GET", server.url + "/upstream/items")
    assert r.status == 200
    assert re.fullmatch(r'upstream;dur=[\d.]+;desc="1 call"', r.headers["Server-Timing"])
    assert status("/readyz") == 200
    upstream.kill()
    killed = time.monotonic()
    wait_for(lambda: status("/readyz") == 503, 10, "/readyz to fail")
    assert time.monotonic() - killed < 1 + 1 + 1  # cache + check timeout + polling
    assert status("/livez") == 200
    upstream.restart()
    wait_for(lambda: all(status("/readyz") == 200 for _ in range(4)), 10, "/readyz to pass")
    server.stop()
    assert re.search(r'"GET /upstream/items HTTP/1.1" 200 .* upstream="upstream;dur=[\d.]+;'
                     r'desc=\\?"1 call\\?""', server.log()), server.log()[-2000:]


def test_server_timing_counts_calls_a_generator_makes(upstream: Upstream, registry: Registry):
    """A generator app calls upstream and start_response only when iterated: still
    counted."""
    def generator_app(environ, start_response):
        environ["http.pool"].request("GET", upstream.url + "/x")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"ok"

    app = webtest.TestApp(PoolClientMiddleware(generator_app, registry=registry,
                                               server_timing=True))
    assert app.get("/any").headers["Server-Timing"].endswith('desc="1 call"')


def test_serve_endpoints_false_leaves_the_paths_to_the_app(registry: Registry):
    """POOLCLIENT_SERVE_ENDPOINTS=false: /metrics, /health, /livez, /readyz reach the app."""
    reg = Registry(Settings(serve_endpoints=False))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app's own " + environ["PATH_INFO"].encode()]

    test_app = webtest.TestApp(PoolClientMiddleware(app, registry=reg))
    for path in ("/metrics", "/health", "/livez", "/readyz"):
        assert test_app.get(path).text == f"app's own {path}"


def test_one_readiness_round_is_bounded_by_the_ready_timeout(upstream: Upstream):
    """Three URLs that each take 2 s, POOLCLIENT_READY_TIMEOUT=1: the round ends in about
    1 s; the checks it had no time for say so."""
    slow = upstream.url + "/slow?seconds=2"
    reg = Registry(Settings(ca_bundle=upstream.ca, ready_urls=",".join([slow] * 3),
                            ready_timeout=1))
    try:
        started = time.monotonic()
        checks = reg.ready()
        assert time.monotonic() - started < 2
        assert [c.ok for c in checks] == [False, False, False]
        assert "not checked" in checks[2].output
    finally:
        reg.close()


def test_metrics_refuse_when_prometheus_was_imported_too_early(tmp_path):
    """prometheus-client imported before PROMETHEUS_MULTIPROC_DIR was set: /metrics answers
    500 saying so, instead of an empty page that looks right."""
    code = (
        "import os, prometheus_client, webtest\n"
        f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
        "from poolclient import PoolClientMiddleware, Registry, Settings\n"
        "app = webtest.TestApp(PoolClientMiddleware(lambda e, s: [], registry=Registry()))\n"
        "r = app.get('/metrics', expect_errors=True)\n"
        "print(r.status_int, r.text)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.startswith("500 prometheus-client was imported before")
