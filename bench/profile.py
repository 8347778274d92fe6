"""CPU per request of each contender's request path, in one process, without gunicorn or wrk.

Use it to find what a change costs before ``make bench`` measures it under load: each
contender app (the poolclient ones wrapped in the middleware, as the gunicorn hooks wrap
them, with multiprocess metrics on, as under gunicorn) is called from one thread (or
``--threads N``, sharing the calls as a gthread worker's threads do) against the same nginx
TLS upstream as the benchmark, and the process's CPU time is divided by the calls.
``--profile NAME`` prints where one contender's time goes (cProfile, by own time).

    python -m bench.profile [--calls 3000] [--profile 'poolclient .request()'] [--scenario b]

``--scenario`` picks the upstream of one of ``make bench``'s scenarios (``bench/scenarios.py``;
default ``a-ca``, the ideal upstream and the test CA alone): ``b`` makes every 100th call
reconnect, so the reconnect's cost shows per request, as under load.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _environ() -> dict[str, Any]:
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per sample")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--profile", help="a contender to profile instead")
    parser.add_argument("--scenario", default="a-ca", help="whose upstream and CA (a, b, ...)")
    parser.add_argument("--only", action="append", default=[], help="a contender (repeatable)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads sharing each sample's calls, as a gthread worker's do")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="poolclient-profile-") as tmp:
        work = Path(tmp)
        (work / "metrics").mkdir()
        # Before anything imports prometheus-client: the values go to files, as under
        # gunicorn's hooks.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
        from bench.run import upstream as nginx_upstream
        from bench.scenarios import SCENARIOS

        scenario = SCENARIOS[args.scenario]
        with nginx_upstream(work) as upstream:
            ca = upstream.ca_for(scenario)
            os.environ.update(BENCH_UPSTREAM=upstream.url_for(scenario.server), BENCH_CA=ca,
                              POOLCLIENT_CA_BUNDLE=ca)
            return _measure(args)


def _measure(args: argparse.Namespace) -> int:
    import poolclient
    from bench import contenders  # reads the upstream from the environment
    from bench.run import BASELINE, CONTENDERS

    poolclient.configure(default_maxsize=4)
    names = [args.profile] if args.profile else (args.only or list(CONTENDERS))
    if not args.profile and BASELINE not in names:
        names.insert(0, BASELINE)
    apps = {}
    for name in names:
        attr, hooked = CONTENDERS[name]
        app = getattr(contenders, attr)
        apps[name] = poolclient.PoolClientMiddleware(app) if hooked else app

    def call(app: Any) -> None:
        for chunk in app(_environ(), _start_response):
            assert chunk

    for app in apps.values():  # connect, warm caches
        for _ in range(50):
            call(app)
    if args.profile:
        profiler = cProfile.Profile()
        app = apps[args.profile]
        profiler.enable()
        for _ in range(args.calls):
            call(app)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    samples: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.samples):  # interleaved, as the load benchmark is
        for name, app in apps.items():
            started = time.process_time()
            made = _run(call, app, args.calls, args.threads)
            samples[name].append((time.process_time() - started) / made * 1e6)
    base = statistics.median(samples[BASELINE])
    print(f"CPU per request, median of {args.samples} x {args.calls} calls "
          f"({args.threads} thread{'s' if args.threads > 1 else ''}):")
    for name, values in samples.items():
        us = statistics.median(values)
        print(f"  {name:36} {us:8.1f} us   {us / base:5.2f}x bare urllib3")
    return 0


def _run(call: Callable[[Any], None], app: Any, calls: int, threads: int) -> int:
    """The calls made: ``calls``, rounded down to a multiple of ``threads``."""
    if threads == 1:
        for _ in range(calls):
            call(app)
        return calls
    # Started together, so the threads contend for the GIL and the pool as a worker's do.
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        for _ in range(calls // threads):
            call(app)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return calls // threads * threads


if __name__ == "__main__":
    sys.exit(main())
