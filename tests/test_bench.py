"""``make bench`` keeps working: one short round of every contender under real gunicorn,
nginx and wrk, with the figures that do not depend on speed asserted (handshakes counted by
nginx, errors, requests answered); and the report's pure functions on known input."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bench import burst, callgrind, report, run, scenarios

pytestmark = pytest.mark.slow  # real servers: pytest -m slow runs these alone

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:8100/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.01ms    2.09ms  30.12ms   72.00%
  Latency Distribution
     50%  850.00us
     75%    6.96ms
     90%    8.42ms
     99%    1.02s
  26712 requests in 10.01s, 3.75MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   2669.12
"""


def test_parse_wrk_reads_latency_units_and_every_error():
    got = run.parse_wrk(WRK_OUTPUT)
    assert got == {"requests": 26712, "seconds": 10.01, "rps": 2669.12, "p50_ms": 0.85,
                   "p99_ms": 1020.0, "errors": 8}


def _run(name: str, round_: int, rps: float, handshakes: int = 4, scenario: str = "a",
         **extra: object) -> dict[str, object]:
    return {"contender": name, "round": round_, "scenario": scenario,
            "requests": int(rps * 10), "seconds": 10.0, "rps": rps, "p50_ms": 1.0,
            "p99_ms": 2.0, "errors": 0, "upstream_requests": int(rps * 10),
            "handshakes": handshakes, "resumed": 0, "cpu_s": rps / 1000,
            "rss_kib": [50 * 1024, 52 * 1024], **extra}


def _verdicts(found: list[dict[str, object]]) -> dict[str, object]:
    return {str(t["target"]): t["met"] for t in found}


def test_ratios_are_taken_within_each_round_then_the_median():
    """A slow round slows every contender: per-round ratios cancel it, a ratio of medians
    would not."""
    base, pc = run.BASELINE, report.REQUEST
    runs = [_run(base, 0, 1000), _run(pc, 0, 1010),
            _run(base, 1, 2000), _run(pc, 1, 2020),
            _run(base, 2, 500), _run(pc, 2, 2000)]
    found = report.groups(runs, base)
    rows = {r["contender"]: r for r in found["a"]}
    assert rows[pc]["ratio"] == pytest.approx(1.01)
    assert rows[pc]["rps"] == 2000 and rows[base]["rps"] == 1000
    assert rows[pc]["rss_mib"] == pytest.approx(51.0)
    verdicts = _verdicts(report.targets(found, 8))
    assert verdicts[f"(a) {pc} >= 0.96x bare urllib3 req/s (median of rounds)"] is True
    assert verdicts[f"(a) {pc}: TLS handshakes <= workers x threads = 8 over each whole "
                    "run"] is True
    callgrind = [t for t in report.targets(found, 8) if "instructions" in t["target"]]
    assert callgrind[0]["met"] is None  # not measured: said so, not passed
    slow = report.groups([_run(base, 0, 1000), _run(pc, 0, 940, handshakes=9)], base)
    found_slow = report.targets(slow, 8, {"calls": 10, "ratio": 1.03,
                                          "per_request": {pc: 1030, base: 1000}})
    assert [t["met"] for t in found_slow if t["target"].startswith("(a)")
            and pc in t["target"]] == [False, False, False]
    assert all(t["regression"] for t in found_slow[:2])


def test_reconnect_targets_pair_rounds_and_count_handshakes_per_100_requests():
    base, pc, ses, shared = run.BASELINE, report.REQUEST, report.SESSION, report.SHARED
    runs = []
    for round_, slow in ((0, 1.0), (1, 0.5)):  # round 1: the machine at half speed
        runs += [_run(base, round_, 2000 * slow), _run(pc, round_, 2000 * slow),
                 _run(base, round_, 1000 * slow, scenario="b", handshakes=100 * slow + 8),
                 _run(pc, round_, 1800 * slow, scenario="b", handshakes=180 * slow + 9),
                 _run(shared, round_, 500 * slow, scenario="b"),
                 _run(ses, round_, 650 * slow, scenario="b")]
    found = report.groups(runs, base)
    assert list(found) == ["b", "a"]  # realistic scenarios first
    assert report.tax(found, pc, "b") == pytest.approx(0.9)
    verdicts = _verdicts(report.targets(found, 8))
    assert verdicts[f"(b) {pc} >= 1.4x {base} req/s"] is True
    assert verdicts[f"(b) {ses} >= 1.4x {shared} req/s"] is False  # 1.3x
    assert verdicts[f"(b) {pc}: its req/s in (b) over its own in (a) >= 0.85"] is True
    # 180 + 9 handshakes for 18,000 requests: one more than requests/100 + 8.
    assert verdicts[f"(b) {pc}: TLS handshakes <= requests/100 + workers x threads (8) in "
                    "every run"] is False
    assert verdicts[f"(b) {base}: TLS handshakes <= requests/100 + workers x threads (8) in "
                    "every run"] is True
    assert verdicts[f"(b) {pc}: RSS per worker at most bare urllib3's"] is True
    assert "| poolclient .request() | 0.900 |" in report.tax_table(found)


def test_first_request_after_a_gap_is_compared_with_every_peer():
    base, pc = run.BASELINE, report.REQUEST
    runs = [_run(base, 0, 1000, scenario="d", first_ms=[30.0] * 31 + [80.0]),
            _run(report.SHARED, 0, 800, scenario="d", first_ms=[2.0] * 32),
            _run(pc, 0, 1000, scenario="d", first_ms=[1.0] * 31 + [5.0])]
    found = report.groups(runs, base)
    row = {r["contender"]: r for r in found["d"]}[pc]
    assert (row["first_n"], row["first_p50_ms"], row["first_p99_ms"]) == (32, 1.0, 5.0)
    target = next(t for t in report.targets(found, 8) if t["target"].startswith(f"(d) {pc}"))
    assert target["met"] is False and "2.00 ms" in target["figure"]  # the shared Session's
    assert "| 1.00 | 5.00 | 32 |" in report.table(found["d"], bursts=True)


def test_an_old_bench_json_renders_as_the_small_ca_scenario(tmp_path):
    """docs/bench.json from before issue 16: no scenario, no RSS; shown as (a-ca), n/a."""
    old = [{k: v for k, v in _run(run.BASELINE, 0, 1000).items()
            if k not in ("scenario", "rss_kib")}]
    found = report.groups(old, run.BASELINE)
    assert list(found) == ["a-ca"]
    assert report.table(found["a-ca"]).endswith("| 0% | 0.100 | n/a |")
    raw = {"meta": {"command": "make bench", "date": "today", "machine": "m", "python": "3",
                    "openssl": "o", "versions": "v", "nginx": "n", "wrk": "w", "setup": "s"},
           "runs": old, "workers": 2, "threads": 4, "duration": 10}
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BLOCK_START}\n{report.BLOCK_END}\n")
    report.render(raw, run.BASELINE, tmp_path, readme)
    block = readme.read_text().split(report.BLOCK_START)[1].split(report.BLOCK_END)[0]
    assert block.strip() and block.strip() in (tmp_path / "bench.md").read_text()


def test_burst_schedule_percentiles_and_callgrind_totals():
    assert burst.schedule(10.0, 1.0, 2, 6.0, 1.0) == [(10.0, 11.0), (17.0, 18.0),
                                                      (24.0, 25.0)]
    assert burst.percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert burst.percentile(list(range(1, 101)), 99) == 99
    assert callgrind.totals("events: Ir\nsummary: 0\n\ntotals: 1234567\n") == 1234567
    with pytest.raises(SystemExit):
        callgrind.totals("events: Ir\nsummary: 0\n")


def test_scenarios_upstreams_and_the_static_app():
    assert scenarios.parse("a,b") == ["b", "a"] and scenarios.parse("") == list(
        scenarios.SCENARIOS)
    with pytest.raises(ValueError, match="unknown scenario"):
        scenarios.parse("z")
    servers = scenarios.servers()
    assert servers["kr100"].keepalive() == "        keepalive_requests 100;\n"
    assert servers["idle5"].keepalive() == "        keepalive_timeout 5s;\n"
    assert servers["ideal"].keepalive() == ""
    names = list(run.CONTENDERS)
    keys = ["b", "a"]
    assert run.STATIC not in run.contenders_in("b", names, keys)
    assert run.contenders_in("a", names, keys) == names
    assert run.contenders_in("b", names, ["b"]) == names
    # The ASGI apps run in every scenario but (a-ca), the WSGI figures' continuation,
    # unless nothing else was asked for.
    both = names + list(run.ASGI_CONTENDERS)
    assert run.contenders_in("b", both, ["b", "a-ca"]) == both  # (b): the static app's too
    assert run.contenders_in("a-ca", both, ["b", "a-ca"]) == names[1:]
    asgi = list(run.ASGI_CONTENDERS)
    assert run.contenders_in("a-ca", asgi, ["a-ca"]) == asgi


def test_kinds_select_their_apps_and_worker_class():
    assert run.parse_kinds("") == run.parse_kinds("all") == ["wsgi", "asgi"]
    assert run.parse_kinds("asgi,wsgi") == ["wsgi", "asgi"]
    with pytest.raises(ValueError, match="unknown kind"):
        run.parse_kinds("rsgi")
    assert run.kind_of(report.ASYNC_POOLED).worker_class == "asgi"
    assert run.kind_of(report.REQUEST).module == "bench.contenders"
    assert not set(run.CONTENDERS) & set(run.ASGI_CONTENDERS)
    # Every app named exists in its module, and the poolclient ones run under the hooks.
    import bench.asgi_contenders as apps

    for name, (app, hooked) in run.ASGI_CONTENDERS.items():
        assert callable(getattr(apps, app)), name
        assert hooked == (name in report.POOLCLIENT), name
    with pytest.raises(SystemExit):  # an ASGI app outside --kinds wsgi: refused at once
        run.main(["--kinds", "wsgi", "--only", report.ANCHOR, "--readme", ""])


def test_asgi_targets_compare_the_async_pools_with_the_lifespan_client():
    """Issue 23: CPU per call in every scenario, and the first request after a gap in (d),
    against one httpx2.AsyncClient made in lifespan."""
    anchor, mine = report.ANCHOR, report.ASYNC_POOLED
    runs = [_run(anchor, 0, 1000, scenario="b"), _run(mine, 0, 1100, scenario="b"),
            _run(anchor, 0, 1000, scenario="d", first_ms=[20.0] * 16),
            _run(mine, 0, 900, scenario="d", first_ms=[10.0] * 15 + [25.0])]
    # CPU: 1 s per 1,000 requests each (cpu_s = rps / 1000 over 10 s): no more in (b);
    # in (d) the pools used the same CPU for fewer requests.
    runs[3]["cpu_s"] = 1.0
    found = report.groups(runs, anchor)
    assert {r["contender"]: r["ratio"] for r in found["b"]} == {anchor: 1.0, mine: 1.1}
    verdicts = _verdicts(report.asgi_targets(found))
    assert verdicts == {
        f"(b) {mine}: CPU per call no more than the {anchor}'s": True,
        f"(d) {mine}: CPU per call no more than the {anchor}'s": False,
        f"(d) {mine}: p99 of the first request after a gap below the {anchor}'s": False,
    }
    assert "| contender | req/s | vs httpx2 in lifespan |" in report.table(
        found["b"], against=report.KINDS["asgi"].against)


def test_each_kind_writes_its_own_report_and_readme_block(tmp_path):
    """An ASGI run writes bench-asgi.* and its README block, and leaves the WSGI ones."""
    asgi = report.KINDS["asgi"]
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BLOCK_START}\nWSGI table\n{report.BLOCK_END}\n"
                      f"{asgi.start}\n{asgi.end}\n")
    meta = {"command": "c", "date": "d", "machine": "m", "python": "3", "openssl": "o",
            "versions": "v", "nginx": "n", "wrk": "w", "setup": "gunicorn -k asgi"}
    raw = {"meta": meta, "kind": "asgi", "workers": 2, "threads": 1, "duration": 1,
           "runs": [_run(report.ANCHOR, 0, 1000, scenario="b", kind="asgi"),
                    _run(report.ASYNC_POOLED, 0, 1200, scenario="b", kind="asgi")]}
    text = report.render(raw, None, tmp_path, readme)
    assert f"- met: (b) {report.ASYNC_POOLED}: CPU per call" in text
    assert not (tmp_path / "bench.md").exists() and (tmp_path / "bench-asgi.png").exists()
    page = (tmp_path / "bench-asgi.md").read_text()
    assert page.startswith("# Benchmark: calling an upstream from gunicorn's ASGI worker")
    assert "callgrind" not in page and "(issue 23)" in page
    written = readme.read_text()
    assert "WSGI table" in written and f"| {report.ASYNC_POOLED} | 1,200 | 1.20x |" in written
    block = written.split(asgi.start)[1].split(asgi.end)[0].strip()
    assert block in page


def test_every_contender_runs_first_and_after_each_other_across_rounds():
    names = list(run.CONTENDERS)
    orders = [run.round_order(names, r) for r in range(2 * len(names))]
    assert all(sorted(order) == sorted(names) for order in orders)
    assert {order[0] for order in orders} == set(names)
    follows = {pair for order in orders for pair in zip(order, order[1:], strict=False)}
    assert {(names[3], names[4]), (names[4], names[3])} <= follows


def test_readme_block_is_replaced_between_its_markers(tmp_path):
    text = f"intro\n{report.BLOCK_START}\nold table\n{report.BLOCK_END}\nrest\n"
    assert report.replace_block(text, "new") == (
        f"intro\n{report.BLOCK_START}\nnew\n{report.BLOCK_END}\nrest\n")
    with pytest.raises(SystemExit, match="bench:start"):
        report.replace_block("no markers", "new")
    # A README without the block a kind needs is refused before anything runs.
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit):
        run.main(["--kinds", "asgi", "--readme", str(readme), "--out", str(tmp_path)])
    assert not (tmp_path / "bench-asgi.json").exists()


def test_readme_shows_the_committed_report():
    """The README's figures are the ones docs/bench.md was written with (whatever the
    layout: the block is report.readme_block, which the page contains whole); the same for
    the ASGI apps' block and docs/bench-asgi.md, once the README has that block."""
    with open(os.path.join(run.ROOT, "README.md")) as f:
        readme = f.read()
    for kind, row in (("wsgi", "| poolclient .request() |"),
                      ("asgi", f"| {report.ASYNC_POOLED} |")):
        marks = report.KINDS[kind]
        if kind == "asgi" and not report.has_block(readme, marks.start, marks.end):
            continue
        with open(os.path.join(run.ROOT, "docs", f"{marks.stem}.md")) as f:
            page = f.read()
        block = readme.split(marks.start, 1)[1].split(marks.end, 1)[0].strip()
        assert "| contender |" in block and row in block
        assert block in page


# poolclient's pool size in a worker without threads (gunicorn -k asgi): connections per
# origin at most.
ASYNC_MAXSIZE = 10
POOLED = ("bare urllib3 PoolManager", report.REQUEST, report.SESSION, report.OPENAI_POOLED,
          report.OPENAI_SHARED, report.SHARED)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="make test installs wrk")
def test_one_short_round_of_every_contender(tmp_path):
    """Scenario (b), nginx closing each connection after 100 requests: counted by nginx,
    the pooled contenders open one connection per 100 requests, plus one per thread."""
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BLOCK_START}\n{report.BLOCK_END}\n")
    assert run.main(["--kinds", "wsgi", "--rounds", "1", "--duration", "1", "--scenarios",
                     "b", "--callgrind", "0", "--out", str(tmp_path), "--readme",
                     str(readme)]) == 0
    assert not (tmp_path / "bench-asgi.json").exists()
    raw = json.loads((tmp_path / "bench.json").read_text())
    runs = {r["contender"]: r for r in raw["runs"]}
    assert list(runs) == list(run.CONTENDERS)
    assert all(r["scenario"] == "b" for r in runs.values())
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in runs.values())
    assert all(len(r["rss_kib"]) == run.WORKERS and min(r["rss_kib"]) > 10_000
               for r in runs.values())
    connections = run.WORKERS * run.THREADS
    # The static app never calls nginx; a Session per request opens one connection per
    # request; the pooled ones one per 100 requests (nginx closes it) plus one per thread.
    assert runs["static (no upstream)"]["upstream_requests"] == 0
    # Every run counts the other work on the machine's cores: wrk's always, nginx's when
    # the contender calls it.
    assert all(r["load_cpu_s"] > 0 for r in runs.values())
    assert all(r["upstream_cpu_s"] > 0 for name, r in runs.items()
               if name != "static (no upstream)")
    for name in POOLED:
        r = runs[name]
        assert r["upstream_requests"] >= r["requests"], name
        assert 0 < r["handshakes"] <= r["upstream_requests"] / 100 + connections, name
    for name in (report.PER_REQUEST, report.OPENAI_PER_REQUEST):
        per_request = runs[name]
        assert per_request["handshakes"] == per_request["upstream_requests"] > connections
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    page = (tmp_path / "bench.md").read_text()
    assert report.readme_block(report.groups(raw["runs"], run.BASELINE)) in page
    assert "| poolclient .request() |" in readme.read_text()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="make test installs wrk")
def test_one_short_round_of_every_asgi_contender(tmp_path):
    """The ASGI apps under gunicorn -k asgi, in scenario (b) for 1 s each: nginx counts a
    connection per request for the client made per request, and one per 100 requests plus
    at most one per concurrent call for the others (poolclient's: at most its pool size per
    worker); the WSGI report is left alone."""
    asgi = report.KINDS["asgi"]
    readme = tmp_path / "README.md"
    readme.write_text(f"{asgi.start}\n{asgi.end}\n")  # no WSGI block: none needed
    assert run.main(["--kinds", "asgi", "--rounds", "1", "--duration", "1", "--scenarios",
                     "b", "--out", str(tmp_path), "--readme", str(readme)]) == 0
    assert not (tmp_path / "bench.json").exists()
    raw = json.loads((tmp_path / "bench-asgi.json").read_text())
    runs = {r["contender"]: r for r in raw["runs"]}
    assert list(runs) == list(run.ASGI_CONTENDERS) and raw["kind"] == "asgi"
    assert raw["callgrind"] is None  # instruction counts are the WSGI apps' only
    assert all(r["kind"] == "asgi" and r["scenario"] == "b" for r in runs.values())
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in runs.values())
    assert all(r["upstream_requests"] >= r["requests"] for r in runs.values())
    assert all(len(r["rss_kib"]) == run.WORKERS and min(r["rss_kib"]) > 10_000
               for r in runs.values())
    # (at 60 ms of CPU a call, a loaded machine gives it only a dozen in the second)
    per_request = runs[report.HTTPX_PER_REQUEST]
    assert per_request["handshakes"] == per_request["upstream_requests"] > 0
    for name, r in runs.items():
        if name == report.HTTPX_PER_REQUEST:
            continue
        most = ASYNC_MAXSIZE if name in report.POOLCLIENT else run.CLIENTS
        assert 0 < r["handshakes"] <= r["upstream_requests"] / 100 + run.WORKERS * most, name
    assert f"| {report.ASYNC_POOLED} |" in readme.read_text()
    assert "gunicorn -k asgi (asyncio), 2 workers" in (tmp_path / "bench-asgi.md").read_text()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="make test installs wrk")
def test_bursts_after_idle_gaps(tmp_path):
    """Scenario (d), shortened to one gap: every client's first request after it is
    recorded; the idle connections are replaced (nginx closed them after 5 s), at most once
    per thread, and poolclient's new ones resume the TLS session of the old."""
    names = ["bare urllib3 PoolManager", report.REQUEST]
    argv = ["--rounds", "1", "--scenarios", "d", "--gaps", "1", "--gap", "5.5",
            "--callgrind", "0", "--out", str(tmp_path), "--readme", ""]
    assert run.main(argv + [arg for name in names for arg in ("--only", name)]) == 0
    runs = {r["contender"]: r for r in json.loads((tmp_path / "bench.json").read_text())
            ["runs"]}
    connections = run.WORKERS * run.THREADS
    for name in names:
        r = runs[name]
        assert r["errors"] == 0 and len(r["first_ms"]) == run.CLIENTS, name
        assert connections < r["handshakes"] <= 2 * connections, name
    assert runs[report.REQUEST]["resumed"] > 0
    assert runs["bare urllib3 PoolManager"]["resumed"] == 0


def test_the_sdk_pair_is_counted_in_instructions_too():
    def verdict(ratio):
        sdk = {"calls": 10, "ratio": ratio,
               "per_request": {report.OPENAI_SHARED: 100.0, report.OPENAI_POOLED: 100 * ratio}}
        found = report.targets({}, 8, None, sdk)
        line = next(t for t in found if "instructions per call" in t["target"])
        return line["met"]

    assert verdict(0.99) is True
    assert verdict(1.01) is False
    assert callgrind.PAIRS["openai"] == (report.OPENAI_SHARED, report.OPENAI_POOLED)
    assert callgrind.sdk_calls(2000) == 500
