"""Instructions per request of bare urllib3 and poolclient's ``.request()``, counted by
valgrind's callgrind: the steadier figure of issue 16's no-regression bar (at most 1.02x).

Each contender app of ``bench/contenders.py`` (``.request()`` wrapped in the middleware, with
multiprocess metrics on, as under gunicorn's hooks; the pools sized to 4, as for a gthread
worker) runs in its own process under ``valgrind --tool=callgrind --instr-atstart=no``,
calling the ideal nginx upstream (keep-alive that never ends, the system bundle plus the
test CA) from one thread. Imports and a warm-up run uninstrumented; ``callgrind_control -i
on`` then counts exactly the ``calls`` requests that follow, and ``-i off`` stops before the
process ends. Counts vary by well under 1 % run to run (the network's timing changes which
branches run).

    python -m bench.callgrind [--calls 2000] [--pair session|openai]    # starts its own nginx

``--pair session`` counts one shared ``requests.Session`` against ``.session()`` per request;
``--pair openai`` the OpenAI client on httpx2's own pool against the same client on
poolclient's transport (issue 13's CPU per call, as instructions).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import BASELINE, OPENAI_POOLED, OPENAI_SHARED, REQUEST, SESSION, SHARED

if TYPE_CHECKING:
    from bench.run import Upstream

# name in the report: (app in bench/contenders.py, wrapped in poolclient's middleware)
MEASURED = {
    BASELINE: ("bare_urllib3", False),
    REQUEST: ("poolclient_request", True),
    SHARED: ("shared_session", False),
    SESSION: ("poolclient_session", True),
    OPENAI_SHARED: ("openai_shared", False),
    OPENAI_POOLED: ("openai_poolclient", True),
}
# What each comparison sets against what: issue 16's bar, its .session() peer, and issue
# 13's CPU per call as instructions (the same calls, one process, no other load on the cores).
PAIRS = {"request": (BASELINE, REQUEST), "session": (SHARED, SESSION),
         "openai": (OPENAI_SHARED, OPENAI_POOLED)}
# An OpenAI call costs about eight requests' instructions: fewer of them count as much.
SDK_SHARE = 4
WARMUP = 200
# Seconds per process here besides its calls (valgrind's start, imports, the warm-up),
# and per instrumented call: for bench.run's estimate.
START_S, PER_CALL_S, SDK_PER_CALL_S = 25.0, 0.012, 0.1


def available() -> bool:
    return bool(shutil.which("valgrind") and shutil.which("callgrind_control"))


def estimate(calls: int) -> float:
    if not calls:
        return 0.0
    # One process per contender of each pair.
    return (len(MEASURED) * START_S
            + 2 * (calls * PER_CALL_S + sdk_calls(calls) * SDK_PER_CALL_S))


def sdk_calls(calls: int) -> int:
    """OpenAI calls counted when ``calls`` requests are."""
    return max(1, calls // SDK_SHARE)


def totals(text: str) -> int:
    """The instruction count of a callgrind output file: its ``totals:`` line (``summary:``
    counts only what was collected before the last dump, 0 with instrumentation toggled)."""
    found = [int(m.group(1)) for m in re.finditer(r"^(?:totals|summary):\s+(\d+)", text, re.M)]
    if not found or not max(found):
        raise SystemExit("bench: no instructions counted in callgrind's output")
    return max(found)


def _wait_line(proc: subprocess.Popen[str], expected: str, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline().strip()
    if line != expected or time.monotonic() > deadline:
        proc.kill()
        raise SystemExit(f"bench: callgrind child said {line!r}, not {expected!r}")


def _control(pid: int, switch: str) -> None:
    subprocess.run(["callgrind_control", "-i", switch, str(pid)], check=True,
                   capture_output=True, timeout=60)


def count(name: str, upstream: Upstream, calls: int, work: Path) -> int:
    """Instructions of ``calls`` requests of contender ``name``, in its own process."""
    attr = MEASURED[name][0]
    out = work / f"callgrind.{attr}.out"
    go, end = work / f"go.{attr}", work / f"end.{attr}"
    metrics = work / f"metrics.{attr}"
    metrics.mkdir(exist_ok=True)
    env = {**os.environ, "BENCH_UPSTREAM": upstream.url, "BENCH_CA": upstream.bundle,
           "POOLCLIENT_CA_BUNDLE": upstream.bundle, "PROMETHEUS_MULTIPROC_DIR": str(metrics),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", "bench.callgrind", "--child", name, "--calls", str(calls),
         "--go", str(go), "--end", str(end)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_line(proc, "ready", 300)
        _control(proc.pid, "on")
        go.touch()
        _wait_line(proc, "done", 600)
        _control(proc.pid, "off")
        end.touch()
        if proc.wait(120) != 0:
            raise SystemExit(f"bench: the callgrind run of {name} failed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return totals(out.read_text())


def compare(upstream: Upstream, calls: int, work: Path, pair: str = "request") -> dict[str, Any]:
    """Instructions per call of the two contenders of ``pair`` (:data:`PAIRS`), and the
    second's over the first's."""
    baseline, subject = PAIRS[pair]
    per = {name: count(name, upstream, calls, work) / calls for name in (baseline, subject)}
    return {"calls": calls, "per_request": per, "ratio": per[subject] / per[baseline]}


def summary(found: dict[str, Any]) -> str:
    baseline, subject = found["per_request"]
    lines = [f"callgrind, instructions per call ({found['calls']} calls, one thread):"]
    for name, value in found["per_request"].items():
        lines.append(f"  {name:44} {value:12,.0f}")
    lines.append(f"  {subject} / {baseline}: {found['ratio']:.4f}x")
    return "\n".join(lines)


def _child(name: str, calls: int, go: Path, end: Path) -> int:
    import poolclient
    from bench import contenders  # reads the upstream from the environment
    from bench.profile import _environ, _start_response

    attr, hooked = MEASURED[name]
    poolclient.configure(default_maxsize=4)
    app = getattr(contenders, attr)
    if hooked:
        app = poolclient.PoolClientMiddleware(app)

    def call() -> None:
        for chunk in app(_environ(), _start_response):
            assert chunk

    for _ in range(WARMUP):
        call()
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    for _ in range(calls):
        call()
    print("done", flush=True)
    while not end.exists():
        time.sleep(0.005)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="request")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--end", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.calls, args.go, args.end)
    if not available():
        raise SystemExit("bench: valgrind (with callgrind_control) is not installed")
    from bench.run import upstream as nginx_upstream

    with tempfile.TemporaryDirectory(prefix="poolclient-callgrind-") as tmp:
        with nginx_upstream(Path(tmp)) as upstream:
            print(summary(compare(upstream, args.calls, Path(tmp), args.pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
