"""The benchmark's report: pure functions from the runs of ``bench.run`` to a table, the
targets of issue 5, a Markdown page and a plot. Nothing here starts a process or times
anything, so a report can be re-rendered from ``docs/bench.json``::

    python -m bench.report docs/bench.json docs
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BLOCK_START = "<!-- bench:start (written by make bench) -->"
BLOCK_END = "<!-- bench:end -->"

REQUEST = "poolclient .request()"
SESSION = "poolclient .session() per request"
SHARED = "shared requests.Session"
PER_REQUEST = "requests Session per request"
OPENAI_POOLED = "OpenAI client on poolclient's transport"
OPENAI_SHARED = "OpenAI module-level client (httpx2's pool)"
OPENAI_PER_REQUEST = "OpenAI client per request"


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(runs: Sequence[Mapping[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per contender, in the order first run: medians over rounds, and the median
    of each round's req/s ratio to ``baseline`` in that same round."""
    names = list(dict.fromkeys(r["contender"] for r in runs))
    base = {r["round"]: r["rps"] for r in runs if r["contender"] == baseline}
    rows = []
    for name in names:
        mine = [r for r in runs if r["contender"] == name]
        ratios = [r["rps"] / base[r["round"]] for r in mine if base.get(r["round"])]
        upstream = [r for r in mine if r["upstream_requests"]]
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
            "handshakes_per_10k": _median([r["handshakes"] / r["upstream_requests"] * 10_000
                                           for r in upstream]) if upstream else None,
            "resumed": sum(r["resumed"] for r in mine),
            "cpu_per_1k": _median([r["cpu_s"] / r["requests"] * 1000 for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            "per_round": {r["round"]: r["rps"] for r in mine},
        })
    return rows


def _row(rows: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["contender"] == name), None)


def _paired_ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Median over rounds of a's req/s over b's in the same round."""
    return _median([rps / b["per_round"][n] for n, rps in a["per_round"].items()
                    if b["per_round"].get(n)])


def targets(rows: Sequence[Mapping[str, Any]], connections: int,
            duration: float) -> list[dict[str, Any]]:
    """The targets a load run decides (issues 5 and 13), each with its figure and verdict."""
    found = []
    request, session = _row(rows, REQUEST), _row(rows, SESSION)
    shared, per_request = _row(rows, SHARED), _row(rows, PER_REQUEST)
    if request is not None and request["ratio"] is not None:
        found.append({"target": ".request() >= 1.0x bare urllib3 req/s (below 0.95x: a "
                                "regression)",
                      "figure": f"{request['ratio']:.3f}x", "met": request["ratio"] >= 1.0,
                      "regression": request["ratio"] < 0.95})
    if session is not None and shared is not None:
        ratio = _paired_ratio(session, shared)
        found.append({"target": ".session() per request >= 1.0x one shared requests.Session",
                      "figure": f"{ratio:.3f}x", "met": ratio >= 1.0, "regression": False})
    pooled = _row(rows, OPENAI_POOLED)
    for other, most, wording in ((_row(rows, OPENAI_SHARED), 1.0, "no more than"),
                                 (_row(rows, OPENAI_PER_REQUEST), 0.5, "at most half")):
        if pooled is not None and other is not None:
            ratio = pooled["cpu_per_1k"] / other["cpu_per_1k"]
            found.append({"target": f"{OPENAI_POOLED}: CPU per call {wording} the "
                                    f"{other['contender']}'s",
                          "figure": f"{pooled['cpu_per_1k']:.3f} against "
                                    f"{other['cpu_per_1k']:.3f} s per 1k ({ratio:.2f}x)",
                          "met": ratio <= most, "regression": False})
    for row in (request, session, pooled):
        if row is None:
            continue
        scale = "" if duration == 10 else f" (runs of {duration:g} s)"
        found.append({"target": f"{row['contender']}: upstream TLS handshakes per 10 s run <= "
                                f"workers x threads = {connections}{scale}",
                      "figure": f"{row['handshakes']} (most in a run)",
                      "met": row["handshakes"] <= connections, "regression": False})
    if per_request is not None and per_request["handshakes_per_10k"] is not None:
        per = per_request["handshakes_per_10k"]
        found.append({"target": "versus one handshake per request for a Session per request",
                      "figure": f"{per:,.0f} per 10,000 requests", "met": per >= 9_900,
                      "regression": False})
    return found


def target_lines(found: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"- {'met' if t['met'] else 'NOT MET'}: {t['target']}: {t['figure']}"
            for t in found]


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The Markdown table of medians (the README shows this one)."""
    lines = ["| contender | req/s | vs bare urllib3 | p50 ms | p99 ms | "
             "TLS handshakes per 10k req | CPU s per 1k req |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {r['rps']:,.0f} | {_num(r['ratio'], '.2f')}x | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{_num(r['handshakes_per_10k'], ',.1f')} | {r['cpu_per_1k']:.3f} |")
    return "\n".join(lines)


def markdown(rows: Sequence[Mapping[str, Any]], found: Sequence[Mapping[str, Any]],
             meta: Mapping[str, str]) -> str:
    """``docs/bench.md``: what ran, where, the table, the spread, the targets."""
    rounds = max((r["rounds"] for r in rows), default=0)
    spread = "\n".join(f"| {r['contender']} | {r['rps_min']:,.0f} | {r['rps_max']:,.0f} | "
                       f"{r['handshakes']} | {r['resumed']} | {r['errors']} |" for r in rows)
    return f"""# Benchmark: calling an upstream from gunicorn

Written by `{meta['command']}` on {meta['date']}; medians of {rounds} interleaved rounds.

- machine: {meta['machine']}
- Python {meta['python']}, {meta['openssl']}; {meta['versions']}; nginx {meta['nginx']}, \
wrk {meta['wrk']}
- {meta['setup']}

{table(rows)}

"vs bare urllib3" is the median over rounds of each round's ratio, so a slow stretch of the
machine, which falls on every contender of that round, cancels. Handshakes are counted by
the upstream (one per connection it accepted) over the whole run, gunicorn's start included;
CPU is gunicorn's (master and workers) during the load.

![req/s and p99 latency per contender](bench.png)

## Spread and counts

| contender | req/s min | req/s max | most handshakes in a run | resumed | errors |
|---|---:|---:|---:|---:|---:|
{spread}

## Targets (issues 5 and 13)

{chr(10).join(target_lines(found))}
"""


def replace_block(text: str, block: str) -> str:
    """``text`` with what stands between the benchmark markers replaced by ``block``."""
    start, end = text.find(BLOCK_START), text.find(BLOCK_END)
    if start < 0 or end < start:
        raise SystemExit(f"bench: README has no '{BLOCK_START}' ... '{BLOCK_END}' block")
    return text[:start + len(BLOCK_START)] + "\n" + block + "\n" + text[end:]


def plot(rows: Sequence[Mapping[str, Any]], meta: Mapping[str, str], path: Path) -> None:
    """A PNG of req/s (bars at the median, lines from min to max) and p99 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["contender"] for r in rows]
    rps = [r["rps"] for r in rows]
    spread = [[r["rps"] - r["rps_min"] for r in rows], [r["rps_max"] - r["rps"] for r in rows]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    y = range(len(rows))
    colours = ["#4c72b0" if n.startswith("poolclient") else "#999999" for n in names]
    left.barh(y, rps, xerr=spread, color=colours, capsize=3)
    for i, r in enumerate(rows):
        ratio = "" if r["ratio"] is None else f"  {r['ratio']:.2f}x"
        left.text(r["rps_max"], i, f" {r['rps']:,.0f}{ratio}", va="center", fontsize=8)
    left.set_yticks(list(y), names)
    left.invert_yaxis()
    left.set_xlabel("requests per second (median; line: min to max over rounds)")
    left.set_xlim(0, max(r["rps_max"] for r in rows) * 1.3)
    right.barh(y, [r["p99_ms"] for r in rows], color=colours)
    for i, r in enumerate(rows):
        per = r["handshakes_per_10k"]
        note = "" if per is None else f"  {per:,.0f} handshakes/10k"
        right.text(r["p99_ms"], i, f" {r['p99_ms']:.1f} ms{note}", va="center", fontsize=8)
    right.set_xlabel("p99 latency, ms (median over rounds)")
    right.set_xlim(0, max(r["p99_ms"] for r in rows) * 1.8)
    fig.suptitle(f"{meta['setup']}\n{meta['machine']}; {meta['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Re-render the report from a ``bench.json`` into a folder."""
    from bench.run import BASELINE

    source, out = Path(argv[0]), Path(argv[1])
    raw = json.loads(source.read_text())
    rows = summarize(raw["runs"], BASELINE)
    found = targets(rows, raw["workers"] * raw["threads"], raw["duration"])
    (out / "bench.md").write_text(markdown(rows, found, raw["meta"]) + "\n")
    plot(rows, raw["meta"], out / "bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
