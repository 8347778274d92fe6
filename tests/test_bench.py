"""``make bench`` keeps working: one short round of every contender under real gunicorn,
nginx and wrk, with the figures that do not depend on speed asserted (handshakes counted by
nginx, errors, requests answered); and the report's pure functions on known input."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bench import report, run

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


def _run(name: str, round_: int, rps: float, handshakes: int = 4) -> dict[str, object]:
    return {"contender": name, "round": round_, "requests": int(rps * 10), "seconds": 10.0,
            "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0,
            "upstream_requests": int(rps * 10), "handshakes": handshakes, "resumed": 0,
            "cpu_s": rps / 1000}


def test_ratios_are_taken_within_each_round_then_the_median():
    """A slow round slows every contender: per-round ratios cancel it, a ratio of medians
    would not."""
    base, pc = run.BASELINE, report.REQUEST
    runs = [_run(base, 0, 1000), _run(pc, 0, 1010),
            _run(base, 1, 2000), _run(pc, 1, 2020),
            _run(base, 2, 500), _run(pc, 2, 2000)]
    rows = {r["contender"]: r for r in report.summarize(runs, base)}
    assert rows[pc]["ratio"] == pytest.approx(1.01)
    assert rows[pc]["rps"] == 2000 and rows[base]["rps"] == 1000
    found = report.targets(list(rows.values()), 8, 10)
    assert [t["met"] for t in found] == [True, True]  # ratio, handshakes
    slow = report.summarize([_run(base, 0, 1000), _run(pc, 0, 940, handshakes=9)], base)
    verdicts = report.targets(slow, 8, 10)
    assert verdicts[0]["regression"] and not verdicts[0]["met"] and not verdicts[1]["met"]


def test_every_contender_runs_first_and_after_each_other_across_rounds():
    names = list(run.CONTENDERS)
    orders = [run.round_order(names, r) for r in range(2 * len(names))]
    assert all(sorted(order) == sorted(names) for order in orders)
    assert {order[0] for order in orders} == set(names)
    follows = {pair for order in orders for pair in zip(order, order[1:], strict=False)}
    assert {(names[3], names[4]), (names[4], names[3])} <= follows


def test_readme_block_is_replaced_between_its_markers():
    text = f"intro\n{report.BLOCK_START}\nold table\n{report.BLOCK_END}\nrest\n"
    assert report.replace_block(text, "new") == (
        f"intro\n{report.BLOCK_START}\nnew\n{report.BLOCK_END}\nrest\n")
    with pytest.raises(SystemExit, match="bench:start"):
        report.replace_block("no markers", "new")


def test_readme_shows_the_committed_report():
    """The README's table is the one docs/bench.md was written with."""
    with open(os.path.join(run.ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(run.ROOT, "docs", "bench.md")) as f:
        page = f.read()
    block = readme.split(report.BLOCK_START, 1)[1].split(report.BLOCK_END, 1)[0].strip()
    assert block.startswith("| contender |")
    assert block in page


@pytest.mark.skipif(shutil.which("wrk") is None, reason="make test installs wrk")
def test_one_short_round_of_every_contender(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{report.BLOCK_START}\n{report.BLOCK_END}\n")
    assert run.main(["--rounds", "1", "--duration", "1", "--out", str(tmp_path),
                     "--readme", str(readme)]) == 0
    raw = json.loads((tmp_path / "bench.json").read_text())
    runs = {r["contender"]: r for r in raw["runs"]}
    assert list(runs) == list(run.CONTENDERS)
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in runs.values())
    connections = run.WORKERS * run.THREADS
    # Counted by nginx: the static app never calls it; the pooled ones open at most one
    # connection per thread; a Session per request opens one per request.
    assert runs["static (no upstream)"]["upstream_requests"] == 0
    for name in ("bare urllib3 PoolManager", report.REQUEST, report.SESSION,
                 report.OPENAI_POOLED, report.OPENAI_SHARED):
        assert 0 < runs[name]["handshakes"] <= connections, name
        assert runs[name]["upstream_requests"] >= runs[name]["requests"]
    for name in (report.PER_REQUEST, report.OPENAI_PER_REQUEST):
        per_request = runs[name]
        assert per_request["handshakes"] == per_request["upstream_requests"] > connections
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    page = (tmp_path / "bench.md").read_text()
    assert report.table(report.summarize(raw["runs"], run.BASELINE)) in page
    assert "| poolclient .request() |" in readme.read_text()
