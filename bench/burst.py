"""Bursty load for scenario (d): bursts of requests separated by idle gaps longer than the
upstream's keep-alive timeout, with the latency of every request and which were the first
after a gap (wrk cannot tell those apart).

``clients`` concurrent HTTP/1.1 clients (asyncio, one process) each send requests one after
another, keeping their connection to gunicorn alive when it allows (the bench's gunicorn
closes after each response, so that the load spreads over both workers). Schedule: a warm-up
burst (the pools fill), then ``gaps`` times an idle gap of ``gap`` seconds and a burst of
``burst`` seconds. A client's first request in each burst after a gap is a *first after a
gap*: with the upstream's connections closed by then (nginx's ``keepalive_timeout 5s``),
or expired by the client's own idle timeout, it is the one that waits for a reconnect.

    python -m bench.burst URL [--clients 16] [--gaps 2] [--gap 6] [--burst 1]

prints one JSON object: requests, errors, seconds (of bursts), rps, p50_ms, p99_ms (every
request) and first_ms (the latencies of the firsts after a gap, in ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return float(ordered[int(rank) - 1])


def schedule(start: float, warmup: float, gaps: int, gap: float,
             burst: float) -> list[tuple[float, float]]:
    """(start, end) of each burst: the warm-up, then one after each gap."""
    bursts = [(start, start + warmup)]
    for _ in range(gaps):
        begin = bursts[-1][1] + gap
        bursts.append((begin, begin + burst))
    return bursts


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, every request
    first: list[float] = field(default_factory=list)  # seconds, firsts after a gap
    errors: int = 0


class _Client:
    def __init__(self, host: str, port: int, target: str) -> None:
        self.host, self.port = host, port
        self.request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                        f"User-Agent: bench-burst\r\n\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> bool:
        """One request and its whole response; ``True`` for a 200."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, lines[0].startswith("HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        if length:
            await self.reader.readexactly(length)
        if close:
            self.close()
        return status == 200

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one_client(client: _Client, bursts: list[tuple[float, float]], tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    for index, (begin, end) in enumerate(bursts):
        await asyncio.sleep(max(0.0, begin - loop.time()))
        first = index > 0
        while loop.time() < end:
            started = time.perf_counter()
            try:
                ok = await asyncio.wait_for(client.get(), 30)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                client.close()
                ok = False
            took = time.perf_counter() - started
            if not ok:
                tally.errors += 1
            tally.latencies.append(took)
            if first:
                tally.first.append(took)
                first = False
    client.close()


async def load(url: str, clients: int, gaps: int, gap: float, burst: float,
               warmup: float) -> dict[str, object]:
    parts = urlsplit(url)
    target = parts.path or "/"
    loop = asyncio.get_running_loop()
    bursts = schedule(loop.time() + 0.05, warmup, gaps, gap, burst)
    tally = Tally()
    await asyncio.gather(*(
        _one_client(_Client(parts.hostname or "127.0.0.1", parts.port or 80, target),
                    bursts, tally) for _ in range(clients)))
    seconds = sum(end - begin for begin, end in bursts)
    return {"requests": len(tally.latencies), "errors": tally.errors,
            "seconds": round(seconds, 3), "rps": round(len(tally.latencies) / seconds, 2),
            "p50_ms": round(percentile(tally.latencies, 50) * 1000, 3),
            "p99_ms": round(percentile(tally.latencies, 99) * 1000, 3),
            "first_ms": [round(t * 1000, 3) for t in tally.first]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--gaps", type=int, default=2, help="idle gaps, each then a burst")
    parser.add_argument("--gap", type=float, default=6.0, help="seconds of each idle gap")
    parser.add_argument("--burst", type=float, default=1.0, help="seconds of each burst")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of the first burst")
    args = parser.parse_args(argv)
    result = asyncio.run(load(args.url, args.clients, args.gaps, args.gap, args.burst,
                              args.warmup))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
