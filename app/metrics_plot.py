"""Scrape a running service's ``/metrics`` for a while and plot what the pools did.

The picture in the README comes from this, run against the example service under load;
``deploy/grafana-dashboard.json`` shows the same series in Grafana.

Run: ``python -m app.metrics_plot --url http://127.0.0.1:8000 --seconds 30 --out docs/metrics.png``
(needs ``poolclient[plot]``: matplotlib). Prints the last scrape's totals as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import urllib3
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Series:
    """Totals over every worker and origin, one row per scrape."""

    t: list[float] = field(default_factory=list)
    requests: list[float] = field(default_factory=list)
    reused: list[float] = field(default_factory=list)
    opened: list[float] = field(default_factory=list)
    in_use: list[float] = field(default_factory=list)
    idle: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)

    def add(self, t: float, samples: dict[str, float]) -> None:
        self.t.append(t)
        self.requests.append(samples.get("poolclient_requests_total", 0.0))
        self.reused.append(samples.get("poolclient_requests_reused_total", 0.0))
        self.opened.append(samples.get("poolclient_connections_opened_total", 0.0))
        self.in_use.append(samples.get("in_use", 0.0))
        self.idle.append(samples.get("idle", 0.0))
        self.errors.append(samples.get("poolclient_errors_total", 0.0))


def scrape(url: str, http: urllib3.PoolManager) -> dict[str, float]:
    """One scrape summed by sample name (connections split by state)."""
    r = http.request("GET", url.rstrip("/") + "/metrics", headers={"Connection": "close"},
                     timeout=10)
    if r.status != 200:
        raise SystemExit(f"{url}/metrics answered {r.status}: {r.data[:200]!r}")
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(r.data.decode()):
        for s in family.samples:
            key = s.labels["state"] if s.name == "poolclient_connections" else s.name
            sums[key] = sums.get(key, 0.0) + s.value
    return sums


def record(url: str, seconds: float, interval: float = 0.5,
           during: Callable[[], None] | None = None) -> Series:
    """Scrape every ``interval`` for ``seconds``; ``during`` runs once after the first."""
    series = Series()
    started = time.monotonic()
    with urllib3.PoolManager(retries=False) as http:
        while True:
            now = time.monotonic() - started
            series.add(now, scrape(url, http))
            if during is not None and len(series.t) == 1:
                during()
            if now >= seconds:
                return series
            time.sleep(interval)  # the sampling period, not synchronisation


def plot(series: Series, out: str, title: str) -> None:
    """Four panels: request rate, reuse, connections opened, connections by state."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rate(values: list[float]) -> list[float]:
        return [0.0] + [(b - a) / max(t2 - t1, 1e-9) for a, b, t1, t2 in
                        zip(values, values[1:], series.t, series.t[1:], strict=False)]

    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    requests = rate(series.requests)
    reused = rate(series.reused)
    axes[0][0].plot(series.t, requests, label="requests/s")
    axes[0][0].plot(series.t, rate(series.errors), label="errors/s", color="tab:red")
    axes[0][0].set_title("upstream requests per second")
    axes[0][1].plot(series.t, [100 * u / r if r else 0 for u, r in zip(reused, requests,
                                                                         strict=True)])
    axes[0][1].set_ylim(0, 105)
    axes[0][1].set_title("requests on a reused connection (%)")
    axes[1][0].plot(series.t, series.opened, drawstyle="steps-post")
    axes[1][0].set_title("connections opened (total)")
    axes[1][1].stackplot(series.t, series.in_use, series.idle, labels=["in use", "idle"])
    axes[1][1].set_title("connections now, all workers")
    for ax in (axes[0][0], axes[1][1]):
        ax.legend(loc="upper left")
    for ax in axes[1]:
        ax.set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", default="docs/metrics.png")
    parser.add_argument("--title", default="poolclient pools under load (from /metrics)")
    args = parser.parse_args(argv)
    series = record(args.url, args.seconds, args.interval)
    plot(series, args.out, args.title)
    print(json.dumps({"requests": series.requests[-1], "reused": series.reused[-1],
                      "connections_opened": series.opened[-1], "errors": series.errors[-1],
                      "out": args.out}))


if __name__ == "__main__":
    main()
