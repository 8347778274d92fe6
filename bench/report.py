"""The benchmark's report: pure functions from the runs of ``bench.run`` to tables (one row
group per scenario), the targets of issues 5, 13 and 16 (the WSGI apps) and 23 (the ASGI
apps), a Markdown page and a plot. Nothing here starts a process or times anything, so a
report can be re-rendered from ``docs/bench.json`` (one written before issue 16, without
scenarios, reads as ``a-ca``) or ``docs/bench-asgi.json``::

    python -m bench.report docs/bench.json docs [README.md]

Each kind of app has a report of its own (:data:`KINDS`): its own files and its own block in
the README, so that a run of one kind (``bench.run --kinds asgi``) leaves the other's report
as it was.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.burst import percentile
from bench.scenarios import SCENARIOS

BLOCK_START = "<!-- bench:start (written by make bench) -->"
BLOCK_END = "<!-- bench:end -->"

STATIC = "static (no upstream)"
BASELINE = "bare urllib3 PoolManager"
REQUEST = "poolclient .request()"
SESSION = "poolclient .session() per request"
SHARED = "shared requests.Session"
PER_REQUEST = "requests Session per request"
OPENAI_POOLED = "OpenAI client on poolclient's transport"
OPENAI_SHARED = "OpenAI module-level client (httpx2's pool)"
OPENAI_PER_REQUEST = "OpenAI client per request"
# Contenders that keep connections: at most one per thread while the upstream keeps them.
POOLED = (SHARED, BASELINE, REQUEST, SESSION, OPENAI_SHARED, OPENAI_POOLED)
# Who each poolclient contender is measured against in (d).
PEERS = {REQUEST: (PER_REQUEST, SHARED, BASELINE), SESSION: (PER_REQUEST, SHARED, BASELINE),
         OPENAI_POOLED: (OPENAI_PER_REQUEST, OPENAI_SHARED)}
OLD = "a-ca"  # what a bench.json without scenarios measured

# The ASGI contenders (bench/asgi_contenders.py, gunicorn -k asgi).
HTTPX_PER_REQUEST = "httpx.AsyncClient per request"
ANCHOR = "httpx2.AsyncClient made in lifespan"
AIOHTTP = "aiohttp ClientSession made in lifespan"
ASYNC_POOLED = "httpx2.AsyncClient on poolclient's transport"
ASYNC_OPENAI_SHARED = "AsyncOpenAI made in lifespan (httpx2's pool)"
ASYNC_OPENAI_POOLED = "AsyncOpenAI on poolclient's transport"
POOLCLIENT = (REQUEST, SESSION, OPENAI_POOLED, ASYNC_POOLED, ASYNC_OPENAI_POOLED)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def scenario_of(run: Mapping[str, Any]) -> str:
    return str(run.get("scenario") or OLD)


def summarize(runs: Sequence[Mapping[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per contender of one scenario's runs, in the order first run: medians over
    rounds, and the median of each round's req/s ratio to ``baseline`` in that round."""
    names = list(dict.fromkeys(r["contender"] for r in runs))
    base = {r["round"]: r["rps"] for r in runs if r["contender"] == baseline}
    rows = []
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        ratios = [r["rps"] / base[r["round"]] for r in mine if base.get(r["round"])]
        upstream = [r for r in mine if r["upstream_requests"]]
        rss = [sum(r["rss_kib"]) / len(r["rss_kib"]) / 1024 for r in mine if r.get("rss_kib")]
        first = [ms for r in mine for ms in (r.get("first_ms") or ())]
        handshakes = sum(r["handshakes"] for r in mine)
        resumed = sum(r["resumed"] for r in mine)
        rows.append({
            "contender": name,
            "rounds": len(mine),
            "rps": _median([r["rps"] for r in mine]),
            "rps_min": min(r["rps"] for r in mine),
            "rps_max": max(r["rps"] for r in mine),
            "ratio": _median(ratios) if ratios else None,
            "p50_ms": _median([r["p50_ms"] for r in mine]),
            "p99_ms": _median([r["p99_ms"] for r in mine]),
            "handshakes": max(r["handshakes"] for r in mine),
            # Most handshakes in a run beyond one per 100 upstream requests.
            "handshakes_over_100": max(r["handshakes"] - r["upstream_requests"] / 100
                                       for r in mine),
            "handshakes_per_10k": _median([r["handshakes"] / r["upstream_requests"] * 10_000
                                           for r in upstream]) if upstream else None,
            "resumed": resumed,
            "resumed_rate": resumed / handshakes if handshakes else None,
            "cpu_per_1k": _median([r["cpu_s"] / r["requests"] * 1000 for r in mine]),
            "upstream_cpu_per_1k": _per_1k(mine, "upstream_cpu_s"),
            "load_cpu_per_1k": _per_1k(mine, "load_cpu_s"),
            "rss_mib": _median(rss) if rss else None,
            # (d): every round's firsts after a gap, pooled (a run has clients x gaps).
            "first_n": len(first),
            "first_p50_ms": percentile(first, 50) if first else None,
            "first_p99_ms": percentile(first, 99) if first else None,
            "errors": sum(r["errors"] for r in mine),
            "per_round": {r["round"]: r["rps"] for r in mine},
        })
    return rows


def groups(runs: Sequence[Mapping[str, Any]], baseline: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of each scenario that ran, in the report's order (realistic ones first)."""
    keys = [k for k in SCENARIOS if any(scenario_of(r) == k for r in runs)]
    return {k: summarize([r for r in runs if scenario_of(r) == k], baseline) for k in keys}


def _row(rows: Sequence[Mapping[str, Any]] | None, name: str) -> Mapping[str, Any] | None:
    return next((r for r in rows or () if r["contender"] == name), None)


def _paired_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float | None:
    """Median over rounds of a's req/s over b's in the same round."""
    ratios = [rps / b["per_round"][n] for n, rps in a["per_round"].items()
              if b["per_round"].get(n)]
    return _median(ratios) if ratios else None


def tax(found: Mapping[str, Sequence[Mapping[str, Any]]], name: str, key: str) -> float | None:
    """``name``'s req/s in scenario ``key`` over its own in (a), paired by round."""
    mine, ideal = _row(found.get(key), name), _row(found.get("a"), name)
    return _paired_ratio(mine, ideal) if mine and ideal else None


def _target(text: str, figure: str, met: bool | None, regression: bool = False
            ) -> dict[str, Any]:
    return {"target": text, "figure": figure, "met": met, "regression": regression}


def _at_least(found: Mapping[str, Sequence[Mapping[str, Any]]], key: str, mine: str,
              peer: str, most: float) -> dict[str, Any] | None:
    a, b = _row(found.get(key), mine), _row(found.get(key), peer)
    ratio = _paired_ratio(a, b) if a and b else None
    if ratio is None:
        return None
    return _target(f"({key[0]}) {mine} >= {most:g}x {peer} req/s", f"{ratio:.3f}x",
                   ratio >= most)


def targets(found: Mapping[str, Sequence[Mapping[str, Any]]], connections: int,
            callgrind: Mapping[str, Any] | None = None,
            callgrind_sdk: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The targets the runs decide, each with its figure and verdict (``met`` is ``None``
    where the figure was not measured)."""
    out: list[dict[str, Any]] = []

    def add(item: dict[str, Any] | None) -> None:
        if item is not None:
            out.append(item)

    # (b) and (c): the reconnect tax.
    add(_at_least(found, "b", REQUEST, BASELINE, 1.4))
    add(_at_least(found, "b", SESSION, SHARED, 1.4))
    ratio = tax(found, REQUEST, "b")
    if ratio is not None:
        add(_target(f"(b) {REQUEST}: its req/s in (b) over its own in (a) >= 0.85",
                    f"{ratio:.3f}", ratio >= 0.85))
    add(_at_least(found, "c", REQUEST, BASELINE, 1.0))
    add(_at_least(found, "c", SESSION, SHARED, 1.0))
    # (d): the first request after an idle gap.
    for name, peers in PEERS.items():
        mine = _row(found.get("d"), name)
        others = [r for r in (_row(found.get("d"), p) for p in peers)
                  if r and r["first_p99_ms"] is not None]
        if mine and mine["first_p99_ms"] is not None and others:
            best = min(others, key=lambda r: r["first_p99_ms"])
            add(_target(f"(d) {name}: p99 of the first request after a gap below every "
                        f"peer's ({', '.join(peers)})",
                        f"{mine['first_p99_ms']:.2f} ms against {best['first_p99_ms']:.2f} ms "
                        f"({best['contender']}, the lowest peer)",
                        mine["first_p99_ms"] < best["first_p99_ms"]))
    # Memory after (b).
    mine, base = _row(found.get("b"), REQUEST), _row(found.get("b"), BASELINE)
    if mine and base and mine["rss_mib"] is not None and base["rss_mib"] is not None:
        add(_target(f"(b) {REQUEST}: RSS per worker at most bare urllib3's",
                    f"{mine['rss_mib']:.1f} against {base['rss_mib']:.1f} MiB",
                    mine["rss_mib"] <= base["rss_mib"]))
    # (a): the no-regression bar, req/s and instructions.
    for key in ("a", OLD):
        mine = _row(found.get(key), REQUEST)
        if mine and mine["ratio"] is not None:
            add(_target(f"({key}) {REQUEST} >= 0.96x bare urllib3 req/s (median of rounds)",
                        f"{mine['ratio']:.3f}x", mine["ratio"] >= 0.96, mine["ratio"] < 0.96))
    if found.get("a") or found.get(OLD):
        if callgrind:
            ratio = callgrind["ratio"]
            per = callgrind["per_request"]
            add(_target(f"(a) {REQUEST} <= 1.02x bare urllib3's instructions per request "
                        f"(callgrind, {callgrind['calls']} requests, one process)",
                        f"{ratio:.4f}x ({per[REQUEST]:,.0f} against {per[BASELINE]:,.0f})",
                        ratio <= 1.02, ratio > 1.02))
        else:
            add(_target(f"(a) {REQUEST} <= 1.02x bare urllib3's instructions per request "
                        "(callgrind)", "not measured", None))
    # Handshakes, counted by nginx, for every pooled contender.
    for key in ("b", "a", OLD):
        for name in POOLED:
            row = _row(found.get(key), name)
            if row is None:
                continue
            if key == "b":
                add(_target(f"(b) {name}: TLS handshakes <= requests/100 + workers x threads "
                            f"({connections}) in every run",
                            f"{row['handshakes_over_100']:+.0f} over requests/100 (most in "
                            "a run)", row["handshakes_over_100"] <= connections))
            else:
                add(_target(f"({key}) {name}: TLS handshakes <= workers x threads = "
                            f"{connections} over each whole run",
                            f"{row['handshakes']} (most in a run)",
                            row["handshakes"] <= connections))
    # Issue 13: the OpenAI client on poolclient's transport, in the ideal case.
    ideal = found.get(OLD) or found.get("a")
    pooled = _row(ideal, OPENAI_POOLED)
    for other, most, wording in ((_row(ideal, OPENAI_SHARED), 1.0, "no more than"),
                                 (_row(ideal, OPENAI_PER_REQUEST), 0.5, "at most half")):
        if pooled is not None and other is not None:
            ratio = pooled["cpu_per_1k"] / other["cpu_per_1k"]
            add(_target(f"{OPENAI_POOLED}: CPU per call {wording} the {other['contender']}'s",
                        f"{pooled['cpu_per_1k']:.3f} against {other['cpu_per_1k']:.3f} s per "
                        f"1k ({ratio:.2f}x)", ratio <= most))
    if callgrind_sdk:  # the same comparison counted in instructions: no noise from the cores
        ratio = callgrind_sdk["ratio"]
        per = callgrind_sdk["per_request"]
        add(_target(f"{OPENAI_POOLED}: instructions per call no more than the "
                    f"{OPENAI_SHARED}'s (callgrind, {callgrind_sdk['calls']} calls, one process)",
                    f"{ratio:.4f}x ({per[OPENAI_POOLED]:,.0f} against "
                    f"{per[OPENAI_SHARED]:,.0f})", ratio <= 1.0))
    return out


def asgi_targets(found: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Issue 23's targets: poolclient's async pools against the httpx2.AsyncClient made in
    lifespan, CPU per call in every scenario that ran (medians over rounds) and the p99 of
    the first request after an idle gap in (d)."""
    out: list[dict[str, Any]] = []
    for key, rows in found.items():
        mine, anchor = _row(rows, ASYNC_POOLED), _row(rows, ANCHOR)
        if mine is None or anchor is None:
            continue
        ratio = mine["cpu_per_1k"] / anchor["cpu_per_1k"]
        out.append(_target(f"({key}) {ASYNC_POOLED}: CPU per call no more than the {ANCHOR}'s",
                           f"{mine['cpu_per_1k']:.3f} against {anchor['cpu_per_1k']:.3f} s per "
                           f"1k ({ratio:.2f}x)", ratio <= 1.0))
        if SCENARIOS[key].bursts and mine["first_p99_ms"] is not None \
                and anchor["first_p99_ms"] is not None:
            out.append(_target(f"({key}) {ASYNC_POOLED}: p99 of the first request after a gap "
                               f"below the {ANCHOR}'s",
                               f"{mine['first_p99_ms']:.2f} ms against "
                               f"{anchor['first_p99_ms']:.2f} ms",
                               mine["first_p99_ms"] < anchor["first_p99_ms"]))
    return out


@dataclass(frozen=True)
class Kind:
    """One kind of app's report: its baseline, files, README block and targets."""

    key: str
    baseline: str  # the ratio column's denominator, paired by round
    against: str  # the baseline as the ratio column names it
    stem: str  # docs/<stem>.json, .md and .png
    start: str  # the README block's markers
    end: str
    title: str
    issues: str
    targets: Callable[[Mapping[str, Sequence[Mapping[str, Any]]], Mapping[str, Any]],
                      list[dict[str, Any]]]
    notes: str = ""  # said on the page after the explanation of the columns


KINDS = {k.key: k for k in (
    Kind("wsgi", BASELINE, "bare urllib3", "bench", BLOCK_START, BLOCK_END,
         "Benchmark: calling an upstream from gunicorn", "issues 5, 13 and 16",
         lambda found, raw: targets(found, raw["workers"] * raw["threads"],
                                    raw.get("callgrind"), raw.get("callgrind_sdk"))),
    Kind("asgi", ANCHOR, "httpx2 in lifespan", "bench-asgi",
         "<!-- bench-asgi:start (written by make bench) -->", "<!-- bench-asgi:end -->",
         "Benchmark: calling an upstream from gunicorn's ASGI worker", "issue 23",
         lambda found, raw: asgi_targets(found),
         "\n\nThe ASGI apps (`bench/asgi_contenders.py`, Starlette) run under `gunicorn -k "
         "asgi` on the asyncio loop, one event loop per worker, so no threads; their upstream "
         "scenarios are the WSGI apps' but (a-ca), whose figures only continue the WSGI "
         "apps' from before issue 16."),
)}


def target_lines(found: Sequence[Mapping[str, Any]]) -> list[str]:
    verdict = {True: "met", False: "NOT MET", None: "not measured"}
    return [f"- {verdict[t['met']]}: {t['target']}: {t['figure']}" for t in found]


def _counted(calls: Mapping[str, Any] | None) -> str:
    if not calls:
        return "not measured"
    return "; ".join(f"{name} {value:,.0f}" for name, value in calls["per_request"].items()) \
        + f"; ratio {calls['ratio']:.4f}x ({calls['calls']} calls each)"


def _per_1k(runs: Sequence[Mapping[str, Any]], field: str) -> float | None:
    # Runs recorded before the field existed have none.
    values = [r[field] / r["requests"] * 1000 for r in runs if r.get(field) is not None]
    return _median(values) if values else None


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def table(rows: Sequence[Mapping[str, Any]], bursts: bool = False,
          against: str = "bare urllib3") -> str:
    """The Markdown table of one scenario's medians; ``against``: the baseline's name in the
    ratio column's heading."""
    if bursts:
        head = ["| contender | first after a gap: p50 ms | p99 ms | n | req/s in bursts | "
                "p99 ms, all | TLS handshakes per 10k req | resumed | CPU s per 1k req | "
                "RSS MiB per worker |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines = [f"| {r['contender']} | {_num(r['first_p50_ms'], '.2f')} | "
                 f"{_num(r['first_p99_ms'], '.2f')} | {r['first_n']} | {r['rps']:,.0f} | "
                 f"{r['p99_ms']:.2f} | {_num(r['handshakes_per_10k'], ',.1f')} | "
                 f"{_num(r['resumed_rate'], '.0%')} | {r['cpu_per_1k']:.3f} | "
                 f"{_num(r['rss_mib'], '.1f')} |" for r in rows]
        return "\n".join(head + lines)
    head = [f"| contender | req/s | vs {against} | p50 ms | p99 ms | "
            "TLS handshakes per 10k req | resumed | CPU s per 1k req | RSS MiB per worker |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines = [f"| {r['contender']} | {r['rps']:,.0f} | {_num(r['ratio'], '.2f')}x | "
             f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
             f"{_num(r['handshakes_per_10k'], ',.1f')} | {_num(r['resumed_rate'], '.0%')} | "
             f"{r['cpu_per_1k']:.3f} | {_num(r['rss_mib'], '.1f')} |" for r in rows]
    return "\n".join(head + lines)


def tax_table(found: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """Each contender's req/s in (b) and (c) over its own in (a): the reconnect tax."""
    if "a" not in found or not ({"b", "c"} & set(found)):
        return ""
    lines = ["| contender | (b) / (a) | (c) / (a) |", "|---|---:|---:|"]
    for row in found["a"]:
        name = row["contender"]
        if name == STATIC:
            continue
        lines.append(f"| {name} | {_num(tax(found, name, 'b'), '.3f')} | "
                     f"{_num(tax(found, name, 'c'), '.3f')} |")
    return "\n".join(lines)


def readme_block(found: Mapping[str, Sequence[Mapping[str, Any]]],
                 against: str = "bare urllib3") -> str:
    """What the README shows between its markers (``docs/bench.md`` has it too): one table
    per scenario, the realistic upstreams first, and the reconnect tax."""
    parts = []
    for key, rows in found.items():
        scenario = SCENARIOS[key]
        parts.append(f"**{scenario.title}**: {scenario.stands_for}.\n\n"
                     f"{table(rows, scenario.bursts, against)}")
    taxed = tax_table(found)
    if taxed:
        parts.append("**Reconnect tax**: req/s in (b) and (c) over the contender's own in "
                     "(a), paired by round.\n\n" + taxed)
    return "\n\n".join(parts)


def markdown(found: Mapping[str, Sequence[Mapping[str, Any]]],
             verdicts: Sequence[Mapping[str, Any]], meta: Mapping[str, str],
             raw: Mapping[str, Any] | None = None, kind: Kind | None = None) -> str:
    """``docs/bench.md`` (or the ASGI apps' ``docs/bench-asgi.md``): what ran, where, the
    tables, the spread, the targets."""
    raw = raw or {}
    kind = kind or KINDS["wsgi"]
    rounds = max((r["rounds"] for rows in found.values() for r in rows), default=0)
    spread = "\n".join(
        f"| {key} | {r['contender']} | {r['rps_min']:,.0f} | {r['rps_max']:,.0f} | "
        f"{r['cpu_per_1k']:.3f} | {_num(r['upstream_cpu_per_1k'], '.3f')} | "
        f"{_num(r['load_cpu_per_1k'], '.3f')} | "
        f"{r['handshakes']} | {r['resumed']} | {r['errors']} |"
        for key, rows in found.items() for r in rows)
    bundle = meta.get("bundle", "n/a")
    gaps = (f"{raw['gaps']} idle gaps of {raw['gap']:g} s per run, each then a 1 s burst, "
            "after a 1 s warm-up burst" if raw.get("gaps") else "n/a")
    counted = "\n\n".join(_counted(raw.get(key)) for key in ("callgrind", "callgrind_sdk")
                          if key == "callgrind" or raw.get(key))
    instructions = (f"## Instructions per call (callgrind)\n\n{counted}\n\n"
                    if kind.key == "wsgi" else "")
    return f"""# {kind.title}

Written by `{meta['command']}` on {meta['date']}; medians of {rounds} interleaved rounds\
{f" ({meta['wall']} in all)" if meta.get('wall') else ""}.

- machine: {meta['machine']}
- Python {meta['python']}, {meta['openssl']}; {meta['versions']}; nginx {meta['nginx']}, \
wrk {meta['wrk']}
- {meta['setup']}
- trust: {bundle} (scenario a-ca: the test CA alone)
- (d): {gaps}; bench/burst.py

{readme_block(found, kind.against)}

"vs {kind.against}" is the median over rounds of each round's ratio in the same scenario, so a
slow stretch of the machine, which falls on every contender of that round, cancels.
Handshakes are counted by the upstream (one per connection it accepted) over the whole run,
gunicorn's start included, and "resumed" is the share of them nginx resumed
(`$ssl_session_reused`). CPU is gunicorn's (master and workers) during the load; RSS is
each worker's VmRSS just before it was stopped, averaged over the workers. For (d), "first
after a gap" is each client's first request after each idle gap, pooled over the rounds
(n of them).{kind.notes}

![req/s per contender and scenario; (d): p99 of the first request after a gap]({kind.stem}.png)

{instructions}## Spread and counts

| scenario | contender | req/s min | req/s max | CPU s per 1k req: gunicorn | nginx | \
load generator | most handshakes in a run | resumed | errors |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{spread}

The three share the machine's cores: nginx's and the load generator's CPU per request are
what a contender cannot change, and they bound how far its req/s can rise above another's
when its own CPU per request falls.

## Targets ({kind.issues})

{chr(10).join(target_lines(verdicts))}
"""


def has_block(text: str, start_marker: str = BLOCK_START, end_marker: str = BLOCK_END
              ) -> bool:
    start, end = text.find(start_marker), text.find(end_marker)
    return 0 <= start < end


def replace_block(text: str, block: str, start_marker: str = BLOCK_START,
                  end_marker: str = BLOCK_END) -> str:
    """``text`` with what stands between the benchmark markers replaced by ``block``."""
    if not has_block(text, start_marker, end_marker):
        raise SystemExit(f"bench: README has no '{start_marker}' ... '{end_marker}' block")
    start, end = text.find(start_marker), text.find(end_marker)
    return text[:start + len(start_marker)] + "\n" + block + "\n" + text[end:]


def plot(found: Mapping[str, Sequence[Mapping[str, Any]]], meta: Mapping[str, str],
         path: Path) -> None:
    """A PNG with one panel per scenario, side by side: req/s (bars at the median, lines
    from min to max over rounds), or for (d) the p99 of the first request after a gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["contender"] for rows in found.values() for r in rows))
    fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found) + 3.2, 5.2),
                             sharey=True, squeeze=False)
    y = range(len(names))
    for ax, (key, rows) in zip(axes[0], found.items(), strict=True):
        scenario = SCENARIOS[key]
        by_name = {r["contender"]: r for r in rows}
        colours = ["#4c72b0" if n in POOLCLIENT else "#999999" for n in names]
        if scenario.bursts:
            values = [(by_name[n]["first_p99_ms"] or 0.0) if n in by_name else 0.0
                      for n in names]
            ax.barh(y, values, color=colours)
            for i, v in enumerate(values):
                if names[i] in by_name and v:
                    ax.text(v, i, f" {v:.1f}", va="center", fontsize=7)
            ax.set_xlabel("ms, p99 of the first request\nafter an idle gap (lower is better)",
                          fontsize=8)
            ax.set_xlim(0, max(values + [1.0]) * 1.45)
        else:
            values = [by_name[n]["rps"] if n in by_name else 0.0 for n in names]
            low = [v - by_name[n]["rps_min"] if n in by_name else 0.0
                   for n, v in zip(names, values, strict=True)]
            high = [by_name[n]["rps_max"] - v if n in by_name else 0.0
                    for n, v in zip(names, values, strict=True)]
            ax.barh(y, values, xerr=[low, high], color=colours, capsize=2)
            for i, n in enumerate(names):
                if n in by_name:
                    r = by_name[n]
                    ratio = "" if r["ratio"] is None else f" {r['ratio']:.2f}x"
                    ax.text(r["rps_max"], i, f" {r['rps']:,.0f}{ratio}", va="center",
                            fontsize=7)
            ax.set_xlabel("req/s (median; line: min to max)", fontsize=8)
            ax.set_xlim(0, max(values + [1.0]) * 1.6)
        ax.set_title(scenario.title.replace(": ", ":\n", 1) if len(scenario.title) > 40
                     else scenario.title, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_yticks(list(y), names, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{meta['setup']}\n{meta['machine']}; {meta['date']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render(raw: Mapping[str, Any], baseline: str | None, out: Path,
           readme: Path | None) -> str:
    """Write the kind's page and plot (``bench.md`` and ``bench.png``, or
    ``bench-asgi.*``) into ``out`` and its block of the README from a ``bench.json``'s
    contents (``raw["kind"]``, the WSGI apps' when absent); answer the text for the
    console. ``baseline``: the ratios' denominator, the kind's own when ``None``."""
    kind = KINDS[raw.get("kind", "wsgi")]
    found = groups(raw["runs"], baseline or kind.baseline)
    verdicts = kind.targets(found, raw)
    (out / f"{kind.stem}.md").write_text(markdown(found, verdicts, raw["meta"], raw, kind)
                                         + "\n")
    plot(found, raw["meta"], out / f"{kind.stem}.png")
    block = readme_block(found, kind.against)
    if readme is not None:
        readme.write_text(replace_block(readme.read_text(), block, kind.start, kind.end))
    return block + "\n\n" + "\n".join(target_lines(verdicts))


def main(argv: list[str]) -> int:
    """Re-render the report from a ``bench.json`` (or ``bench-asgi.json``) into a folder
    (and a README's block)."""
    source, out = Path(argv[0]), Path(argv[1])
    readme = Path(argv[2]) if len(argv) > 2 else None
    print(render(json.loads(source.read_text()), None, out, readme))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
