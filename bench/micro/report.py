"""Run the microbenchmarks and write ``docs/micro.md`` from their pytest-benchmark JSON.

Use it when the figures in ``docs/micro.md`` should be redone (after a change to the pools or
the counters, or on another machine)::

    .venv/bin/python bench/micro/report.py                # both runs, then docs/micro.md
    .venv/bin/python bench/micro/report.py a.json b.json  # only the page, from saved runs

Two pytest runs are needed because prometheus-client chooses where its values live when it
is first imported: one run keeps them in memory, the other (``--prometheus-multiproc``)
writes the multiprocess files a gunicorn deployment uses. The page records the machine, the
versions and both commands, and is meant to be committed as generated.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "micro.md"
# pytest-benchmark's own round limits, written out so the page states what they were; the
# whole of both runs stays well under two minutes on two CPUs.
PYTEST = ["-m", "pytest", "bench/micro", "-p", "no:cacheprovider", "--benchmark-only", "-q",
          "--benchmark-max-time=1.0", "--benchmark-min-rounds=5"]
RUNS: tuple[tuple[str, list[str]], ...] = (
    ("memory", []), ("multiprocess", ["--prometheus-multiproc"]))
# Inherited settings that would change what runs: CA bundles (the benchmarks must not depend
# on them) and a multiprocess directory (the first run is the in-memory one).
SCRUBBED = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PROMETHEUS_MULTIPROC_DIR",
            "prometheus_multiproc_dir")
TARGET_US = 2.0  # the project's budget for the counters of one request
SINKS = ("none", "memory", "multiprocess")
SINK_NAMES = {"none": "no sink", "memory": "Prometheus, in memory",
              "multiprocess": "Prometheus, multiprocess files"}
LOADS = ("alone", "busy")
RUN_NAMES = {"memory": "In-memory run", "multiprocess": "Multiprocess run",
             "absent": "Run without prometheus-client"}

Record = dict[str, Any]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="*", type=Path,
                        help="pytest-benchmark JSON files to render; none: run the benchmarks")
    parser.add_argument("--out", type=Path, default=PAGE, help=f"default: {PAGE}")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="where the runs' JSON goes (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.json:
        page = render([_load(path) for path in args.json], produced_by=None)
    elif args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        page = render(run(args.keep), produced_by=_invocation())
    else:
        with tempfile.TemporaryDirectory(prefix="poolclient-micro-") as directory:
            page = render(run(Path(directory)), produced_by=_invocation())
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def run(json_dir: Path) -> list[dict[str, Any]]:
    """Both pytest runs, from the repository root; their JSON documents."""
    env = {key: value for key, value in os.environ.items() if key not in SCRUBBED}
    documents = []
    for name, extra in RUNS:
        out = json_dir / f"{name}.json"
        command = [sys.executable, *PYTEST, *extra, f"--benchmark-json={out}"]
        print("+", shlex.join(command), flush=True)
        subprocess.run(command, cwd=REPO, env=env, check=True)
        documents.append(_load(out))
    return documents


def _load(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        document: dict[str, Any] = json.load(f)
    if "poolclient_bench" not in document:
        raise SystemExit(f"{path}: not written by bench/micro (no poolclient_bench section)")
    return document


def _invocation() -> str:
    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    return shlex.join([_python(), script, *sys.argv[1:]])


def _python() -> str:
    path = os.path.relpath(sys.executable, REPO)
    return sys.executable if path.startswith("..") else path


def records(documents: Iterable[dict[str, Any]]) -> list[Record]:
    """One flat dict per benchmark: its ``extra_info`` plus its statistics in seconds."""
    return [{**bench["extra_info"], "stats": bench["stats"], "name": bench["name"],
             "options": bench["options"],
             "sink_mode": document["poolclient_bench"]["sink_mode"]}
            for document in documents for bench in document["benchmarks"]]


def find(rows: list[Record], **match: object) -> Record | None:
    found = [row for row in rows if all(row.get(key) == value for key, value in match.items())]
    if len(found) > 1:
        names = ", ".join(row["name"] for row in found)
        raise SystemExit(f"more than one benchmark matches {match}: {names}")
    return found[0] if found else None


def render(documents: list[dict[str, Any]], produced_by: str | None) -> str:
    rows = records(documents)
    lines = [
        "# Microbenchmarks",
        "",
        "What poolclient's pools and counters cost per request, next to urllib3's own pool,",
        "with no network: connections are made beforehand and never connected to anything",
        "(`bench/micro/`, pytest-benchmark). Generated by `bench/micro/report.py` from a",
        "real run; do not edit by hand, run it again.",
        "",
        *_provenance(documents, produced_by),
        "",
        *_checkout(rows),
        "",
        *_counters(rows),
        "",
        *_contention(rows),
        "",
        *_method(rows),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _provenance(documents: list[dict[str, Any]], produced_by: str | None) -> list[str]:
    first = documents[0]["poolclient_bench"]
    commit = documents[0].get("commit_info", {})
    versions = ", ".join(f"{name} {version}" for name, version in first["versions"].items())
    revision = commit.get("id", "unknown")[:12]
    lines = [
        "## Where and how",
        "",
        f"- Machine: {first['uname']}, {first['processor']}, {first['cpu_count']} CPUs "
        f"({first['cpus_usable']} usable)",
        f"- Python: {first['python']} (thread switch interval "
        f"{first['switch_interval_s'] * 1000:g} ms)",
        f"- Versions: {versions}",
        f"- Source: commit {revision}, run {documents[0].get('datetime', '?')}",
    ]
    if produced_by:
        lines.append(f"- Produced by: `{produced_by}` (from `{first['cwd']}`), which ran:")
    else:
        lines.append("- Runs:")
    for document in documents:
        info = document["poolclient_bench"]
        lines.append(f"  - `{info['command']}` (Prometheus values: {info['sink_mode']})")
    modified = sorted({path for document in documents
                       for path in document["poolclient_bench"].get("modified") or []})
    known = all(document["poolclient_bench"].get("modified") is not None
                for document in documents)
    if modified:
        lines.append("- Measured: the working tree, whose "
                     + ", ".join(f"`{path}`" for path in modified)
                     + " differed from that commit")
    elif known:
        lines.append("- Measured: `poolclient/` as in that commit")
    loads = [f"{_fmt(start)} / {_fmt(end)}" for document in documents
             for start, end in [document["poolclient_bench"].get("load_1min", [None, None])]]
    lines.append(f"- Load average (1 min) at the start / end of each run: {', '.join(loads)}"
                 f" on {first['cpus_usable']} CPUs; above about 1, other processes shared"
                 " the CPUs with the benchmarks")
    return lines


def _us(row: Record | None, key: str = "median", per: float = 1.0) -> float | None:
    return None if row is None else float(row["stats"][key]) * 1e6 / per


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def _checkout(rows: list[Record]) -> list[str]:
    lines = [
        "## 1. Checkout and return",
        "",
        "`_get_conn()` then `_put_conn()` on a pool of 8 connections (`block=True`, pool",
        "timeout 5 s), one thread. *open*: each connection holds one end of a local",
        "socketpair, so both pools run their liveness poll and poolclient its reuse path",
        "(idle accounting, lifetime checks), as for a kept-alive connection; *unconnected*: never",
        "had a socket, so both pools close it again on every checkout. poolclient's pool is",
        "set up as the registry sets it up (default idle timeout and max lifetime).",
        "",
        "| connections | pool | counters' sink | median us | IQR us | rounds | / urllib3 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for state in ("open", "unconnected"):
        base = _us(find(rows, case="checkout", pool="urllib3", state=state))
        variants = [("urllib3", "n/a"), *(("poolclient", sink) for sink in SINKS)]
        for pool, sink in variants:
            row = find(rows, case="checkout", pool=pool, sink=sink, state=state)
            if row is None:
                continue
            median = _us(row)
            lines.append(
                f"| {state} | {pool} | {SINK_NAMES.get(sink, sink)} | {_fmt(median)} | "
                f"{_fmt(_us(row, 'iqr'))} | {row['stats']['rounds']} | "
                f"{_ratio(median, base)} |")
    return lines


def _counters(rows: list[Record]) -> list[str]:
    replay = _us(find(rows, case="counters", call="replay"))
    found = [row for row in rows if row.get("case") == "counters" and row.get("call") == "request"]
    if not found:
        return ["## 2. Counters per request", "", "Not measured in these runs."]
    sequence: list[str] = found[0]["sequence"]
    loads = [load for load in LOADS if any(row["load"] == load for row in found)]

    def net(row: Record | None) -> float | None:
        value = None if row is None else _us(row, per=float(row["requests_per_round"]))
        return None if value is None else value - (replay or 0.0)

    lines = [
        "## 2. Counters per request",
        "",
        "The `PoolStats` calls poolclient's pool makes for one GET on a reused connection,",
        "recorded from a real request through `urlopen` (answered over a socketpair) and",
        "replayed with the recorded arguments: "
        + ", ".join(f"`{call}`" for call in sequence) + ".",
        "*alone*: the only request on its pool, which is quiet after every return; *busy*:",
        f"rounds of {_batch_size(found)} requests while another request holds a connection, "
        "which it returns",
        "at the end of the round (so what a busy pool defers is paid inside the round).",
        "Medians per request, net of replaying the same calls on methods that do nothing",
        f"({_fmt(replay, 3)} us). Target: at most {TARGET_US:g} us per request.",
        "",
        "| counters' sink | " + " | ".join(f"{load}, us | target" for load in loads) + " |",
        "|---|" + "---:|---|" * len(loads),
    ]
    for sink in SINKS:
        cells = []
        for load in loads:
            value = net(find(found, sink=sink, load=load))
            verdict = ("-" if value is None else "met" if value <= TARGET_US
                       else f"missed by {value - TARGET_US:.2f} us")
            cells += [_fmt(value), verdict]
        if any(cell != "-" for cell in cells):
            lines.append(f"| {SINK_NAMES[sink]} | " + " | ".join(cells) + " |")
    columns = [(sink, load) for sink in SINKS for load in loads
               if find(found, sink=sink, load=load) is not None]
    lines += [
        "",
        "Each call's own time inside the sequence (us; each call timed with",
        "`perf_counter_ns` around it, net of an empty timing, over "
        "20,000 sequences, slowest 1 % dropped):",
        "",
        "| call | " + " | ".join(f"{SINK_NAMES[sink]}, {load}" for sink, load in columns)
        + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for i, call in enumerate(sequence):
        cells = []
        for sink, load in columns:
            row = find(found, sink=sink, load=load)
            cells.append(_fmt(None if row is None else row["per_call_ns"][i] / 1000))
        lines.append(f"| `{call}` | " + " | ".join(cells) + " |")
    ends = []
    sums = []
    for sink, load in columns:
        row = find(found, sink=sink, load=load)
        figures: list[float] = [] if row is None else row["per_call_ns"]
        extra = figures[len(sequence):]
        ends.append(_fmt(extra[0] / 1000) if extra else "-")
        sums.append(_fmt(sum(figures) / 1000) if figures else "-")
    if any(end != "-" for end in ends):
        lines.append("| end of a busy round: the other request's return, per request | "
                     + " | ".join(ends) + " |")
    lines.append("| sum | " + " | ".join(sums) + " |")
    return lines


def _batch_size(found: list[Record]) -> int:
    return max((int(row["requests_per_round"]) for row in found), default=1)


def _contention(rows: list[Record]) -> list[str]:
    found = [row for row in rows if row.get("case") == "contention"]
    if not found:
        return ["## 3. Contention on one pool", "", "Not measured in these runs."]
    checkouts = int(found[0]["checkouts"])
    lines = [
        "## 3. Contention on one pool",
        "",
        f"N threads share one pool of {found[0]['maxsize']} open connections (`block=True`). "
        "Each round is",
        f"{checkouts} checkouts and returns split evenly among them, started together (a",
        "barrier, then an event); creating the threads is not timed. Every round runs each",
        "pool of its pytest run once, in rotating order, so load from elsewhere falls on all",
        "of them alike, and each run has its own urllib3 baseline. Cells: round time /",
        "checkouts, in us per checkout; ratios are poolclient's over urllib3's.",
    ]
    for mode in ("memory", "multiprocess", "absent"):
        run = [row for row in found if row["sink_mode"] == mode]
        if not run:
            continue
        kinds = list(run[0]["contenders"])
        names = {kind: "urllib3" if info["pool"] == "urllib3"
                 else f"poolclient, {SINK_NAMES.get(info['sink'], info['sink'])}"
                 for kind, info in run[0]["contenders"].items()}
        for key, title in (("median", "median round (IQR of the rounds in parentheses)"),
                           ("min", "fastest round (the least disturbed)")):
            lines += ["", f"{RUN_NAMES[mode]}, {title}:", "",
                      *_contention_table(run, kinds, names, checkouts, key)]
    return lines


def _contention_table(run: list[Record], kinds: list[str], names: dict[str, str],
                      checkouts: int, key: str) -> list[str]:
    def per_checkout(seconds: list[float]) -> float | None:
        if not seconds:
            return None
        value = statistics.median(seconds) if key == "median" else min(seconds)
        return value * 1e6 / checkouts

    def cell(seconds: list[float]) -> str:
        value = per_checkout(seconds)
        if value is None or key != "median" or len(seconds) < 2:
            return _fmt(value)
        q1, _, q3 = statistics.quantiles(seconds, n=4)
        return f"{value:.2f} ({(q3 - q1) * 1e6 / checkouts:.2f})"

    heads = [names[kind] if kind == "urllib3" else f"{names[kind]} | / urllib3"
             for kind in kinds]
    lines = ["| threads | " + " | ".join(heads) + " |",
             "|---:|" + "---:|" * (2 * len(kinds) - ("urllib3" in kinds))]
    for row in sorted(run, key=lambda row: int(row["threads"])):
        contenders: dict[str, Any] = row["contenders"]
        base = per_checkout(contenders.get("urllib3", {}).get("seconds", []))
        cells = []
        for kind in kinds:
            seconds = contenders.get(kind, {}).get("seconds", [])
            cells.append(cell(seconds))
            if kind != "urllib3":
                cells.append(_ratio(per_checkout(seconds), base))
        lines.append(f"| {row['threads']} | " + " | ".join(cells) + " |")
    return lines


def _method(rows: list[Record]) -> list[str]:
    timed = (row["options"] for row in rows if row.get("case") == "counters")
    options: dict[str, Any] = next(timed, {})
    rounds = sorted({len(info["seconds"]) for row in rows if row.get("case") == "contention"
                     for info in row["contenders"].values()})
    gc = "off" if options.get("disable_gc") else "on"
    warmup = "on" if options.get("warmup") else "off"
    return [
        "## How to read these",
        "",
        "- Medians. pytest-benchmark calibrates how many calls make one round for the",
        f"  sub-microsecond cases; garbage collector {gc}, warm-up {warmup}, at most "
        f"{options.get('max_time', '?')} s",
        f"  and at least {options.get('min_rounds', '?')} rounds per case. Contention: "
        f"{'/'.join(str(r) for r in rounds) or '?'} timed rounds per",
        "  case, after one untimed warm-up round.",
        "- Single figures on a shared machine move by 10-20 % between runs; the ratios",
        "  move less. Contention with more threads than connections is dominated by the",
        "  interpreter's thread switching and varies most (see the IQRs).",
        "- The replayed times (the checkout's wait, the attempt's duration) are those of the",
        "  recorded request over a socketpair, well under a millisecond; Server-Timing is",
        "  off, as by default.",
        "- *multiprocess* means prometheus-client imported with `PROMETHEUS_MULTIPROC_DIR`",
        "  set, so every value change is written to a memory-mapped file under one",
        "  process-wide lock, as in a gunicorn worker with the hooks of",
        "  `poolclient.gunicorn`.",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
