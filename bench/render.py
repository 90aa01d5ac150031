"""Per-scrape cost of /metrics for many tasks: time, throughput and memory, per format.

Fills a real exporter with ``--tasks`` tasks (10 % in progress, every tenth with failed
files) by polling them from the simulator once with a big budget, then scrapes /metrics
through the WSGI ``App`` (no HTTP server, no network) with nothing due, so each scrape is
the refresh bookkeeping plus rendering: the exporter's own per-scrape CPU cost. Prints a
markdown table: scrapes/second, ms per scrape (p50/p99), body size and peak memory for the
Prometheus text format, OpenMetrics, and OpenMetrics with gzip (what Prometheus asks for).

Usage::

    .venv/bin/python -m bench.render [--tasks 10000] [--scrapes 10]
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    config_text,
    fmt_int,
    make_workload,
    markdown_table,
    percentile,
)
from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.web.routes import App

#: (name, Accept, Accept-Encoding) of each measured format.
FORMATS = (
    ("text 0.0.4", "text/plain;version=0.0.4", ""),
    ("OpenMetrics 1.0", "application/openmetrics-text;version=1.0.0", ""),
    ("OpenMetrics 1.0 + gzip", "application/openmetrics-text;version=1.0.0", "gzip"),
)


@dataclass
class FormatResult:
    """Timings and memory of one format."""

    name: str
    times: list[float]  # seconds per scrape
    size: int  # body bytes as sent
    peak: int  # bytes allocated at the peak of one scrape, above the level before it


def scrape(app: App, accept: str, encoding: str) -> bytes:
    """GET /metrics through the WSGI app; returns the body (raises unless 200)."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/metrics",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
        "HTTP_ACCEPT": accept,
        "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS": "10",
    }
    if encoding:
        environ["HTTP_ACCEPT_ENCODING"] = encoding
    status: list[str] = []

    def start_response(code: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(code)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"/metrics answered {status}")
    return body


def fill(exporter: Exporter, expected: int) -> float:
    """Poll every task once (the config's budget is big); returns the seconds it took."""
    start = time.perf_counter()
    for _ in range(100):  # bounded: each round waits at most 60 s
        exporter.poller.refresh(60)
        with_data = sum(
            1 for view in exporter.views().stores for t in view.tasks if t.snapshot is not None
        )
        if with_data >= expected:
            return time.perf_counter() - start
    raise RuntimeError(f"only {with_data} of {expected} tasks got data")


def measure(app: App, scrapes: int) -> list[FormatResult]:
    """Time ``scrapes`` scrapes per format (after one warm-up), then one under tracemalloc."""
    results = []
    for name, accept, encoding in FORMATS:
        body = scrape(app, accept, encoding)  # warm-up
        times = []
        for _ in range(scrapes):
            gc.collect()
            start = time.perf_counter()
            body = scrape(app, accept, encoding)
            times.append(time.perf_counter() - start)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        scrape(app, accept, encoding)
        peak = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        results.append(FormatResult(name, times, len(body), peak))
    return results


def _parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(
        prog="python -m bench.render",
        description="Per-scrape time and memory of /metrics for many tasks, per format.",
    )
    a.add_argument("--tasks", type=int, default=10_000, help="watched tasks (10000)")
    a.add_argument("--scrapes", type=int, default=10, help="timed scrapes per format (10)")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.tasks < 1 or args.scrapes < 1:
        print("error: --tasks and --scrapes must be >= 1", file=sys.stderr)
        return 2
    logging.getLogger("exporter").setLevel(logging.ERROR)
    in_progress = max(1, args.tasks // 10)
    workload = make_workload(in_progress, args.tasks - in_progress)
    with tempfile.TemporaryDirectory(prefix="render-") as tmp, Simulator(tokens=(TOKEN,)) as sim:
        for i, task_id in enumerate(workload.ids):
            busy = task_id in workload.in_progress
            failures = [
                {"origin_link": f"https://img.example.com/{task_id}/{n}.jpg", "reason": "timeout"}
                for n in range(5 if i % 10 == 0 else 0)
            ]
            sim.add_task(
                task_id,
                total=100,
                finished=40 if busy else 100,
                status=1 if busy else 0,
                failure_list=failures,
            )
        path = Path(tmp) / "render.yaml"
        # Big budget to fill quickly; a long min_poll_interval so nothing is due afterwards.
        text = config_text(
            sim.url,
            workload.ids,
            requests_per_second=10_000,
            burst=10_000,
            max_concurrency=16,
            min_poll_interval="24h",
        )
        path.write_text(text, encoding="utf-8")
        exporter = Exporter(str(path), environ={TOKEN_ENV: TOKEN})
        exporter.start()
        try:
            print(f"filling {args.tasks:,} tasks from the simulator ...", file=sys.stderr)
            fill_seconds = fill(exporter, len(workload.ids))
            requests_before = sim.count()
            app = App(exporter)
            print(f"timing {args.scrapes} scrapes per format ...", file=sys.stderr)
            results = measure(app, args.scrapes)
            if sim.count() != requests_before:
                raise RuntimeError("a scrape polled the API; the figures would include it")
        finally:
            exporter.close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    rows = []
    for r in results:
        total = sum(r.times)
        rows.append(
            [
                r.name,
                f"{len(r.times) / total:.2f}" if total else "inf",
                f"{percentile(r.times, 50) * 1000:,.0f}",
                f"{percentile(r.times, 99) * 1000:,.0f}",
                f"{r.size / 1024:,.0f} KiB",
                f"{r.peak / 2**20:,.1f} MiB",
            ]
        )
    header = ["format", "scrapes/s", "ms p50", "ms p99", "body", "peak alloc/scrape"]
    lines = [
        "# /metrics render benchmark (bench.render)",
        "",
        "Parameters:",
        f"- {len(workload.ids):,} tasks in one store ({len(workload.in_progress):,} in progress, "
        f"every tenth with 5 failed files), filled from the simulator in {fill_seconds:.1f} s",
        f"- {args.scrapes} timed scrapes per format after one warm-up, one at a time, through "
        "the WSGI App (refresh with nothing due + render; no HTTP)",
        f"- Python {platform.python_version()} on {platform.machine()}",
        "",
        markdown_table(header, rows),
        "",
        "- peak alloc/scrape: Python allocations at the peak of one scrape above the level "
        "before it (tracemalloc, one extra scrape, not timed)",
        f"- process peak RSS (ru_maxrss) at the end: {fmt_int(maxrss / 1024)} MiB, "
        f"simulator and its {args.tasks:,} tasks included",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
