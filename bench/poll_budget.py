"""Upstream cost and freshness of the exporter's polling, against the naive strategy.

Runs the real exporter (``Exporter``: configuration, poller with the default budget,
registry; ``App`` served by ``ExporterServer`` on loopback) against the real simulator,
whose leaky bucket enforces Shoplazza's limit, then runs the naive strategy (every task on
every scrape, concurrently, no budget, no memory) against a fresh simulator with the same
settings and the same scrape schedule. Prints the parameters and a markdown table:
upstream requests and 429s per hour, oldest in-progress data age, scrape latency p50/p99.

Time is simulated: a :class:`~exporter.clock.ScaledClock` shared by the simulator's bucket
and the exporter (or the naive scrapers) runs ``--speed`` times faster than real time, so
an hour takes a minute. Only waits are sped up, CPU work is not; :data:`LATENCY_NOTE` says
how scrape latency is measured despite that, :data:`NAIVE_NOTE` why the naive strategy
runs slower and shorter.

Usage::

    .venv/bin/python -m bench.poll_budget [--in-progress 100] [--completed 1000] [--hours 1]
        [--speed 60] [--scrapers 2] [--interval 15] [--scrape-timeout 10]
        [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import math
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    WALL_START,
    Report,
    Workload,
    add_output_flags,
    config_text,
    emit,
    fmt_int,
    fmt_seconds,
    make_workload,
    markdown_table,
    percentile,
)
from exporter.app import Exporter
from exporter.clock import ScaledClock
from exporter.config import StoreConfig, load_config
from exporter.demo.simulator import Simulator
from exporter.polling.client import StoreClient
from exporter.web.routes import App, scrape_deadline
from exporter.web.server import ExporterServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: The Accept header Prometheus 2.x sends (it gets OpenMetrics), and gzip like Prometheus.
PROMETHEUS_HEADERS = {
    "Accept": (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    ),
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.53.0 (bench.poll_budget)",
}
LAST_SUCCESS = "shoplazza_upload_task_last_success_timestamp_seconds"
_LAST_SUCCESS = re.compile(
    rb"^" + LAST_SUCCESS.encode() + rb'\{[^}\n]*?task_id="([^"]*)"[^}\n]*\} (\S+)',
    re.MULTILINE,
)

LATENCY_NOTE = """\
Scrape latency is in simulated seconds, measured in parts, because the sped-up clock makes
waits (budget, leaky bucket, upstream latency, deadline) last their simulated length but
does not speed up CPU work (1 ms of real work would count as `speed` ms). During the window
the scrapers call `Poller.refresh` with the scrape deadline, as `App.metrics` does before
rendering, and read the data ages from `Poller.views()`, so that rendering does not eat the
CPU the simulation needs; their wait is the last row. (`--scrape-mode http` scrapes
/metrics?name[]=...last_success... over HTTP instead: the same refresh, little rendering.)
For the exporter's latency, full Prometheus scrapes (every family, OpenMetrics, gzip, over
HTTP through ExporterServer and the real App) follow the window, in steady state, one every
interval/scrapers; their time in `Poller.refresh` on the simulated clock is the wait (the
first one is not counted: it primes the App's render-time estimate, which earlier scrapes
would have set). Then, polling stopped, as many full scrapes that skip the refresh time the
rendering + HTTP in real seconds. A scrape's latency is a wait plus a rendering. The naive
strategy's latency is the time its requests take; it renders nothing."""

NAIVE_NOTE = """\
The naive strategy runs slower and over a shorter window than the exporter: it sends
hundreds of requests per scrape and, sped up 60 times, the benchmark's own CPU (Python
client and simulator in one process) could not send them as fast as a real client would,
which would understate its cost. At its speed the CPU still slows it a little: compare
the requests per scrape with the ideal in the notes. It keeps no memory, so its per-hour
figures hold from the first scrape on; its data ages grow with its window (a task without
data counts from the start of the window)."""


@dataclass(frozen=True)
class Params:
    """What one benchmark run simulates."""

    in_progress: int
    completed: int
    hours: float
    speed: float
    naive_hours: float
    naive_speed: float
    scrapers: int
    interval: float
    offset: float
    scrape_timeout: float
    rate: float
    bucket: int
    latency: float
    naive_workers: int
    render_samples: int
    scrape_mode: str

    @property
    def timeout_header(self) -> str:
        """The X-Prometheus-Scrape-Timeout-Seconds value the scrapers send."""
        return f"{self.scrape_timeout:g}"

    @property
    def deadline(self) -> float:
        """The scrape deadline the exporter derives from the timeout header."""
        return scrape_deadline(self.timeout_header)


@dataclass
class ScrapeResult:
    """One scrape as its scraper saw it (simulated seconds from the phase start)."""

    scraper: int
    start: float
    wait: float  # spent waiting for upstream: in refresh, or on the naive requests
    oldest_age: float  # max over in-progress tasks of (answer time - last success)
    missing: int  # in-progress tasks without data yet (their age counts from the start)
    lateness: float  # how late the scrape started against its schedule


@dataclass
class PhaseResult:
    """What one strategy cost and delivered."""

    name: str
    speed: float
    window: float  # simulated seconds
    real_seconds: float
    requests: int
    throttled: int
    succeeded: int
    scrapes: list[ScrapeResult]
    # Full scrapes after the window: (their wait, simulated s; a render, real s).
    full: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def per_hour(self, count: float) -> float:
        """``count`` over the window, scaled to an hour."""
        return count * 3600.0 / self.window

    @property
    def latencies(self) -> list[float]:
        """Scrape latencies: of the full scrapes if any, else of the scrapes' waits."""
        if self.full:
            return [wait + rest for wait, rest in self.full]
        return [s.wait for s in self.scrapes]

    @property
    def warm_at(self) -> float:
        """When a scrape first had data for every in-progress task (inf: never)."""
        return min((s.start for s in self.scrapes if s.missing == 0), default=math.inf)


# ---- shared ----------------------------------------------------------------------------


def _simulator(p: Params, workload: Workload, clock: ScaledClock) -> Simulator:
    sim = Simulator(
        tokens=(TOKEN,),
        rate_limit=p.rate,
        bucket_capacity=p.bucket,
        latency=clock.real(p.latency),
        clock=clock.monotonic,
        max_records=1000,
    )
    for task_id in workload.ids:
        busy = task_id in workload.in_progress
        sim.add_task(task_id, total=100, finished=40 if busy else 100, status=1 if busy else 0)
    return sim


def _schedule(p: Params, window: float) -> list[list[float]]:
    """Each scraper's planned scrape times (simulated seconds from the phase start)."""
    plans = []
    for i in range(p.scrapers):
        first = 1.0 + i * p.offset
        count = max(0, math.ceil((window - first) / p.interval))
        plans.append([first + k * p.interval for k in range(count)])
    return plans


def _run_scrapers(
    plans: list[list[float]], scrape: Callable[[int, int, float], ScrapeResult]
) -> list[ScrapeResult]:
    """One thread per scraper runs its plan; results sorted by start."""
    results: list[ScrapeResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            for k, planned in enumerate(plans[i]):
                result = scrape(i, k, planned)
                with lock:
                    results.append(result)
        except Exception as exc:
            with lock:
                errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(i,), name=f"scraper-{i}", daemon=True)
        for i in range(len(plans))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"a scraper failed: {errors[0]!r}") from errors[0]
    return sorted(results, key=lambda r: r.start)


def _oldest(
    last: Callable[[str], float | None], workload: Workload, now: float, since: float
) -> tuple[float, int]:
    """(oldest in-progress data age, in-progress tasks without data) given last successes."""
    oldest = 0.0
    missing = 0
    for task_id in workload.in_progress:
        at = last(task_id)
        if at is None:
            missing += 1
            at = since
        oldest = max(oldest, now - at)
    return oldest, missing


# ---- exporter ------------------------------------------------------------------------


class TimedApp:
    """WSGI middleware timing ``Poller.refresh`` inside each tagged /metrics request.

    A scraper tags its request with ``X-Bench-Scrape: <id>``; the time the refresh took,
    on the simulated clock and in real seconds, is kept under that id until the scraper
    pops it. With ``skip_refresh`` set, /metrics only renders memory (to time rendering).
    """

    def __init__(self, app: App, exporter: Exporter, clock: ScaledClock) -> None:
        self.app = app
        self.skip_refresh = False
        self._local = threading.local()
        self._lock = threading.Lock()
        self._timings: dict[str, tuple[float, float]] = {}
        refresh = exporter.poller.refresh

        def timed_refresh(timeout: float) -> None:
            if self.skip_refresh:
                self._local.timing = (0.0, 0.0)
                return
            start, real = clock.monotonic(), time.perf_counter()
            try:
                refresh(timeout)
            finally:
                self._local.timing = (clock.monotonic() - start, time.perf_counter() - real)

        exporter.poller.refresh = timed_refresh  # type: ignore[method-assign]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Call the app; remember the refresh time of a tagged request."""
        self._local.timing = None
        body = self.app(environ, start_response)  # App renders eagerly: refresh is done
        tag = environ.get("HTTP_X_BENCH_SCRAPE")
        timing = self._local.timing
        if tag and timing is not None:
            with self._lock:
                self._timings[tag] = timing
        return body

    def pop(self, tag: str) -> tuple[float, float]:
        """(simulated, real) seconds the tagged request spent in refresh."""
        with self._lock:
            return self._timings.pop(tag)


def full_scrapes(
    session: requests.Session,
    url: str,
    headers: dict[str, str],
    timed: TimedApp,
    clock: ScaledClock,
    p: Params,
) -> list[tuple[float, float, int]]:
    """``p.render_samples + 1`` full Prometheus scrapes, one every interval / scrapers.

    Returns (refresh seconds on the simulated clock, rest of the request in real seconds,
    body size) per scrape: the wait and the rendering (plus HTTP) of a real scrape.
    """
    results = []
    step = p.interval / p.scrapers
    next_at = clock.monotonic()
    for k in range(p.render_samples + 1):
        clock.sleep_until(next_at)
        next_at += step
        tag = f"full:{k}"
        real = time.perf_counter()
        response = session.get(url, headers={**headers, "X-Bench-Scrape": tag}, timeout=120)
        size = len(response.content)
        real = time.perf_counter() - real
        if response.status_code != 200:
            raise RuntimeError(f"/metrics answered {response.status_code}")
        wait_sim, wait_real = timed.pop(tag)
        results.append((wait_sim, max(real - wait_real, 0.0), size))
    return results


def run_exporter(p: Params, workload: Workload, tmp: Path) -> PhaseResult:
    """The real exporter and default budget, scraped by ``p.scrapers`` threads."""
    window = p.hours * 3600.0
    clock = ScaledClock(p.speed)
    real_start = time.monotonic()
    with _simulator(p, workload, clock) as sim:
        path = tmp / "exporter.yaml"
        path.write_text(config_text(sim.url, workload.ids), encoding="utf-8")
        exporter = Exporter(str(path), environ={TOKEN_ENV: TOKEN}, clock=clock)
        exporter.start()
        timed = TimedApp(App(exporter), exporter, clock)
        server = ExporterServer(timed, "127.0.0.1:0", request_timeout=60.0)
        server.start()
        url = f"http://127.0.0.1:{server.address[1]}/metrics"
        headers = {**PROMETHEUS_HEADERS, "X-Prometheus-Scrape-Timeout-Seconds": p.timeout_header}
        sessions = [requests.Session() for _ in range(p.scrapers)]
        for session in sessions:
            session.trust_env = False
        t0 = clock.monotonic()

        def scrape_refresh(i: int, k: int, planned: float) -> ScrapeResult:
            clock.sleep_until(t0 + planned)
            start = clock.monotonic()
            # What App.metrics does before rendering (which it leaves its render-time
            # estimate out of the deadline for; nothing is rendered here).
            exporter.poller.refresh(p.deadline)
            end = clock.monotonic()
            seen = {
                task.task_id: task.last_success
                for view in exporter.view().stores
                for task in view.tasks
                if task.task_id in workload.in_progress
            }
            oldest, missing = _oldest(seen.get, workload, WALL_START + end, WALL_START + t0)
            return ScrapeResult(i, start - t0, end - start, oldest, missing, start - t0 - planned)

        def scrape_http(i: int, k: int, planned: float) -> ScrapeResult:
            clock.sleep_until(t0 + planned)
            tag = f"{i}:{k}"
            start = clock.monotonic()
            response = sessions[i].get(
                url,
                params={"name[]": LAST_SUCCESS},
                headers={**headers, "X-Bench-Scrape": tag},
                timeout=120,
            )
            body = response.content
            if response.status_code != 200:
                raise RuntimeError(f"/metrics answered {response.status_code}")
            wait, _ = timed.pop(tag)
            seen: dict[str, float] = {}
            for match in _LAST_SUCCESS.finditer(body):
                value = float(match.group(2))
                if math.isfinite(value):
                    seen[match.group(1).decode()] = value
            now = WALL_START + start + wait
            oldest, missing = _oldest(seen.get, workload, now, WALL_START + t0)
            return ScrapeResult(i, start - t0, wait, oldest, missing, start - t0 - planned)

        scrape = scrape_http if p.scrape_mode == "http" else scrape_refresh
        try:
            scrapes = _run_scrapers(_schedule(p, window), scrape)
            clock.sleep_until(t0 + window)
            requests_sent, throttled = sim.count(), sim.throttled
            succeeded = sim.count(status=200)
            views = exporter.view().stores
            full = full_scrapes(sessions[0], url, headers, timed, clock, p)
            exporter.poller.stop()
            # Rendering alone, polling stopped: the load of a 60 times faster poller and
            # simulator would slow it down (in production they make 2 requests a second).
            timed.skip_refresh = True
            render = []
            for _ in range(p.render_samples):
                real = time.perf_counter()
                response = sessions[0].get(url, headers=headers, timeout=120)
                response.raise_for_status()
                render.append(time.perf_counter() - real)
        finally:
            exporter.close()
            server.shutdown()
            for session in sessions:
                session.close()
    # The first full scrape only primes the App's render-time estimate.
    waits = [wait for wait, _, _ in full[1:]]
    result = PhaseResult(
        "exporter",
        p.speed,
        window,
        time.monotonic() - real_start,
        requests_sent,
        throttled,
        succeeded,
        scrapes,
        [(wait, render[i % len(render)]) for i, wait in enumerate(waits)],
    )
    codes = {code: n for view in views for code, n in view.requests}
    skipped = {reason: n for view in views for reason, n in view.skipped if n}
    result.notes += [
        f"scrapes via {'HTTP (name[] filter)' if p.scrape_mode == 'http' else 'Poller.refresh'}",
        "its own request counts by code: "
        + ", ".join(f"{code}: {fmt_int(n)}" for code, n in sorted(codes.items())),
        "due polls a scrape answered without (fetched later, in the background): "
        + (", ".join(f"{r}: {fmt_int(n)}" for r, n in skipped.items()) or "none"),
        f"a full scrape at the end: {full[-1][2]:,} bytes of OpenMetrics before gzip",
        "rendering + HTTP of the full scrapes under the sped-up polling load (not used): "
        + _pair([rest for _, rest, _ in full[1:]]),
    ]
    return result


# ---- naive -----------------------------------------------------------------------------


def run_naive(p: Params, workload: Workload, tmp: Path) -> PhaseResult:
    """Every task on every scrape, ``p.naive_workers`` at a time, no budget, no memory."""
    window = p.naive_hours * 3600.0
    clock = ScaledClock(p.naive_speed)
    real_start = time.monotonic()
    with _simulator(p, workload, clock) as sim:
        path = tmp / "naive.yaml"
        path.write_text(config_text(sim.url, workload.ids), encoding="utf-8")
        store: StoreConfig = load_config(str(path), {TOKEN_ENV: TOKEN}).stores[0]
        # One client per scraper, each pooling max_concurrency (4) connections; durations
        # and timeouts on the real clock, as a naive exporter would have them.
        clients = [StoreClient(store) for _ in range(p.scrapers)]
        # Per scraper: when the answer of each task's last successful fetch it got arrived.
        last_ok: list[dict[str, float]] = [{} for _ in range(p.scrapers)]
        pools: list[concurrent.futures.ThreadPoolExecutor] = []
        pools_lock = threading.Lock()
        t0 = clock.monotonic()

        def scrape(i: int, k: int, planned: float) -> ScrapeResult:
            clock.sleep_until(t0 + planned)
            start = clock.monotonic()
            deadline = start + p.deadline
            client = clients[i]

            def fetch(task_id: str) -> tuple[str, bool, float]:
                result = client.fetch(task_id)
                return task_id, result.ok, clock.monotonic()

            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=p.naive_workers, thread_name_prefix=f"naive-{i}"
            )
            with pools_lock:
                pools.append(pool)
            futures = [pool.submit(fetch, task_id) for task_id in workload.ids]
            done, _ = concurrent.futures.wait(
                futures, timeout=clock.real(max(deadline - clock.monotonic(), 0.0))
            )
            end = clock.monotonic()
            # Answer now: requests not started are dropped, those in flight finish unseen.
            pool.shutdown(wait=False, cancel_futures=True)
            for future in done:
                task_id, ok, at = future.result()
                if ok:
                    last_ok[i][task_id] = at
            oldest, missing = _oldest(last_ok[i].get, workload, end, t0)
            return ScrapeResult(i, start - t0, end - start, oldest, missing, start - t0 - planned)

        try:
            scrapes = _run_scrapers(_schedule(p, window), scrape)
            clock.sleep_until(t0 + window)
            requests_sent, throttled = sim.count(), sim.throttled
            succeeded = sim.count(status=200)
        finally:
            with pools_lock:
                for pool in pools:
                    pool.shutdown(wait=True, cancel_futures=True)
            for client in clients:
                client.close()
    result = PhaseResult(
        "naive",
        p.naive_speed,
        window,
        time.monotonic() - real_start,
        requests_sent,
        throttled,
        succeeded,
        scrapes,
    )
    if scrapes:
        ideal = len(workload.ids)
        if p.latency > 0:
            ideal = min(ideal, math.ceil(p.naive_workers * p.deadline / p.latency))
        result.notes.append(
            f"requests per scrape: {requests_sent / len(scrapes):,.0f} of {len(workload.ids):,} "
            f"tasks (ideal with no CPU cost: {ideal:,}; the rest are not started by the "
            "deadline)"
        )
    return result


# ---- report ----------------------------------------------------------------------------


def _ages(phase: PhaseResult, after: float) -> tuple[str, str]:
    ages = [s.oldest_age for s in phase.scrapes if s.start >= after]
    return fmt_seconds(percentile(ages, 50)), fmt_seconds(max(ages, default=math.nan))


def _window(phase: PhaseResult) -> str:
    hours = phase.window / 3600
    span = f"{hours:g} h" if hours >= 1 else f"{phase.window / 60:g} min"
    return f"{span} at {phase.speed:g}x ({phase.real_seconds:.0f} s real)"


def _pair(values: list[float]) -> str:
    return f"{fmt_seconds(percentile(values, 50))} / {fmt_seconds(percentile(values, 99))}"


def report(p: Params, workload: Workload, phases: list[PhaseResult]) -> Report:
    """The parameters, the markdown table and the notes."""
    budget = p.rate * 3600
    lines = [
        "Parameters:",
        f"- tasks: {len(workload.in_progress):,} in progress + {workload.completed:,} completed "
        f"= {len(workload.ids):,} in one store; in-progress ones spread through the config order",
        f"- simulator: leaky bucket {p.rate:g} req/s, capacity {p.bucket}, 429 without "
        f"Retry-After; upstream latency {p.latency:g} s per answer",
        "- exporter: real Exporter, default budget (requests_per_second 2, burst 10, "
        "min_poll_interval 10s, max_concurrency 4, timeout 5s)",
        f"- naive: every task on every scrape in config order, {p.naive_workers} requests at a "
        "time (StoreClient), no budget, no memory; answers when all are done or at the scrape "
        "deadline, dropping requests not started",
        f"- scrapes: {p.scrapers} scrapers every {p.interval:g} s, {p.offset:g} s apart, scrape "
        f"timeout {p.scrape_timeout:g} s (deadline {p.deadline:g} s)",
        f"- simulated time: exporter {p.hours:g} h at {p.speed:g}x, naive "
        f"{p.naive_hours * 60:g} min at {p.naive_speed:g}x; per-hour figures are counts "
        "over the window scaled to an hour; times are simulated seconds except rendering",
        "",
    ]
    names = {"exporter": "exporter (budgeted)", "naive": "naive (every task, every scrape)"}
    header = ["figure", *(names.get(ph.name, ph.name) for ph in phases)]
    rows: list[list[str]] = []

    def row(label: str, cell: Callable[[PhaseResult], str]) -> None:
        rows.append([label, *(cell(ph) for ph in phases)])

    def half(ph: PhaseResult) -> float:
        return ph.window / 2

    row("simulated window", _window)
    row("scrapes", lambda ph: fmt_int(len(ph.scrapes)))
    row("upstream requests per hour", lambda ph: fmt_int(ph.per_hour(ph.requests)))
    row(f"  vs the {budget:,.0f}/h budget", lambda ph: f"{ph.per_hour(ph.requests) / budget:.2f}x")
    row("429 responses per hour", lambda ph: fmt_int(ph.per_hour(ph.throttled)))
    row("successful fetches per hour", lambda ph: fmt_int(ph.per_hour(ph.succeeded)))
    row("oldest in-progress data age p50 / max", lambda ph: " / ".join(_ages(ph, -math.inf)))
    row("  same, second half of the window", lambda ph: " / ".join(_ages(ph, half(ph))))
    row(
        "every in-progress task had data after",
        lambda ph: fmt_seconds(ph.warm_at) if math.isfinite(ph.warm_at) else "never",
    )
    row(
        "in-progress tasks without data at the end",
        lambda ph: fmt_int(ph.scrapes[-1].missing if ph.scrapes else 0),
    )
    row("scrape latency p50 / p99", lambda ph: _pair(ph.latencies))
    row(
        "  of which waiting for upstream p50 / p99",
        lambda ph: _pair([w for w, _ in ph.full]) if ph.full else "(all of it)",
    )
    row(
        "  of which rendering + HTTP (real time) p50 / p99",
        lambda ph: _pair([r for _, r in ph.full]) if ph.full else "not rendered",
    )
    row(
        f"  over the {p.scrape_timeout:g} s scrape timeout",
        lambda ph: f"{sum(v > p.scrape_timeout for v in ph.latencies)} of {len(ph.latencies)}",
    )
    row(
        "waiting for upstream p50 / p99, every scrape",
        lambda ph: _pair([s.wait for s in ph.scrapes]),
    )
    lines.append(markdown_table(header, rows))
    lines.append("")
    lines.append("Notes:")
    for ph in phases:
        late = max((s.lateness for s in ph.scrapes), default=0.0)
        notes = [*ph.notes, f"latest scrape start against the schedule: {late:.2f} s"]
        lines.append(f"- {ph.name}: " + "; ".join(notes))
    lines.append(
        "- data age: at each scrape, max over in-progress tasks of (answer time - time of the "
        "last successful fetch the scraper received); a task without data counts from the "
        "start of the window; p50 and max over the scrapes"
    )
    if any(ph.full for ph in phases):
        lines.append(
            f"- exporter latency: {p.render_samples} full scrapes at the end of the window "
            "(see below)"
        )
    lines += ["", LATENCY_NOTE, "", NAIVE_NOTE]
    return Report("poll_budget", "Poll budget", "\n".join(lines))


def _parser() -> argparse.ArgumentParser:
    a = argparse.ArgumentParser(
        prog="python -m bench.poll_budget",
        description=(
            "Upstream requests, 429s, data age and scrape latency of the exporter "
            "against the naive strategy, on the simulator, in simulated time."
        ),
    )
    a.add_argument("--in-progress", type=int, default=100, help="tasks in progress (100)")
    a.add_argument("--completed", type=int, default=1000, help="completed tasks (1000)")
    a.add_argument("--hours", type=float, default=1.0, help="simulated hours, exporter (1)")
    a.add_argument("--speed", type=float, default=60.0, help="time speed-up, exporter (60)")
    a.add_argument(
        "--naive-hours",
        type=float,
        default=None,
        help="simulated hours, naive strategy (4 min, at most --hours)",
    )
    a.add_argument("--naive-speed", type=float, default=6.0, help="time speed-up, naive (6)")
    a.add_argument("--scrapers", type=int, default=2, help="concurrent scrapers (2)")
    a.add_argument("--interval", type=float, default=15.0, help="scrape interval, s (15)")
    a.add_argument("--offset", type=float, default=5.0, help="offset between scrapers, s (5)")
    a.add_argument("--scrape-timeout", type=float, default=10.0, help="scrape timeout, s (10)")
    a.add_argument("--rate", type=float, default=2.0, help="simulator leak rate, req/s (2)")
    a.add_argument("--bucket", type=int, default=10, help="simulator bucket capacity (10)")
    a.add_argument("--latency", type=float, default=0.1, help="upstream latency, s (0.1)")
    a.add_argument("--naive-workers", type=int, default=4, help="naive concurrency (4)")
    a.add_argument(
        "--render-samples",
        type=int,
        default=20,
        help="full scrapes at the end of the exporter's window, for its latency (20)",
    )
    a.add_argument(
        "--scrape-mode",
        choices=("refresh", "http"),
        default="refresh",
        help="exporter scrapes: Poller.refresh + view (refresh) or /metrics?name[]= (http)",
    )
    a.add_argument(
        "--only", choices=("exporter", "naive"), default=None, help="run one strategy only"
    )
    add_output_flags(a)
    return a


def main(argv: list[str] | None = None) -> int:
    """Run both strategies and print the report; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    problems = []
    if args.in_progress < 1 or args.completed < 0:
        problems.append("--in-progress must be >= 1 and --completed >= 0")
    if min(args.hours, args.speed, args.naive_speed, args.interval, args.rate) <= 0:
        problems.append("--hours, --speed, --naive-speed, --interval and --rate must be > 0")
    if not 0 < args.scrape_timeout <= args.interval:
        problems.append("--scrape-timeout must be > 0 and at most --interval")
    if min(args.scrapers, args.bucket, args.naive_workers, args.render_samples) < 1:
        problems.append("--scrapers, --bucket, --naive-workers, --render-samples must be >= 1")
    if args.latency < 0 or args.offset < 0:
        problems.append("--latency and --offset must be >= 0")
    if args.naive_hours is not None and args.naive_hours <= 0:
        problems.append("--naive-hours must be > 0")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    p = Params(
        in_progress=args.in_progress,
        completed=args.completed,
        hours=args.hours,
        speed=args.speed,
        naive_hours=args.naive_hours if args.naive_hours is not None else min(args.hours, 1 / 15),
        naive_speed=args.naive_speed,
        scrapers=args.scrapers,
        interval=args.interval,
        offset=args.offset,
        scrape_timeout=args.scrape_timeout,
        rate=args.rate,
        bucket=args.bucket,
        latency=args.latency,
        naive_workers=args.naive_workers,
        render_samples=args.render_samples,
        scrape_mode=args.scrape_mode,
    )
    # The exporter logs every 429 pause and failed poll; the table counts them instead.
    logging.getLogger("exporter").setLevel(logging.ERROR)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    workload = make_workload(p.in_progress, p.completed)
    phases: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="poll-budget-") as tmp:
        if args.only in (None, "exporter"):
            real = p.hours * 3600 / p.speed
            print(f"exporter: {p.hours:g} h simulated, ~{real:.0f} s real", file=sys.stderr)
            phases.append(run_exporter(p, workload, Path(tmp)))
        if args.only in (None, "naive"):
            real = p.naive_hours * 3600 / p.naive_speed
            minutes = p.naive_hours * 60
            print(f"naive: {minutes:g} min simulated, ~{real:.0f} s real", file=sys.stderr)
            phases.append(run_naive(p, workload, Path(tmp)))
    emit(report(p, workload, phases), parser, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
