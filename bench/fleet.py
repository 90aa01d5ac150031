"""A fleet of stores in one process: threads, memory, first round and steady scrapes.

Runs the exporter as a user would (its command line, a subprocess) against the simulator
(in this process, no rate limit: the exporter's per-store budgets are what is measured),
with ``--stores`` stores of ``--tasks`` tasks each (one task in ten in progress), the
default budget per store (2 req/s, burst 10, max_concurrency 4) and a ``min_poll_interval``
of an hour, so that after the first round nothing is due. Reads the exporter's threads and
RSS from /proc while it works. Prints a markdown table per scenario:

- threads and RSS: idle after start, peak, at the end; and RSS once every task is polled,
  before the first full /metrics (what polling holds, apart from rendering);
- first round: from the first scrape until every task has been fetched once, against the
  floor the budgets set (per store: tokens beyond the burst at the store's rate, and
  ``max_concurrency`` waves of upstream latency) and the floor of the fetch worker pool
  (requests x latency / workers);
- steady scrapes: full /metrics over one kept-alive connection, nothing due, p50/p99.

Usage::

    .venv/bin/python -m bench.fleet [--scenario 1000x10 --scenario 5000x2] [--latency 0.05]
        [--scrapes 20] [--hosts distinct|one] [--tls] [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    Report,
    add_output_flags,
    emit,
    fmt_int,
    fmt_seconds,
    markdown_table,
    percentile,
)
from exporter.demo.simulator import Simulator
from exporter.polling.scheduler import FETCH_WORKERS

RATE, BURST, CONCURRENCY = 2.0, 10, 4  # the default budget of a store


@dataclass(frozen=True)
class Scenario:
    """``stores`` stores of ``tasks`` tasks each."""

    stores: int
    tasks: int

    @property
    def total(self) -> int:
        """Tasks in the fleet."""
        return self.stores * self.tasks

    @property
    def label(self) -> str:
        """How the column is headed."""
        return f"{fmt_int(self.stores)} stores x {self.tasks} tasks"


def parse_scenario(text: str) -> Scenario:
    """``STORESxTASKS``, e.g. ``1000x10``."""
    stores, sep, tasks = text.partition("x")
    if not sep or not stores.isdigit() or not tasks.isdigit() or min(int(stores), int(tasks)) < 1:
        raise argparse.ArgumentTypeError(f"want STORESxTASKS such as 1000x10, got {text!r}")
    return Scenario(int(stores), int(tasks))


class ProcWatch:
    """Samples a process's threads and RSS from /proc/<pid>/status every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_threads = 0
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> tuple[int, int]:
        """(threads, RSS in bytes) now; (0, 0) once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        except OSError:
            return 0, 0
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        threads = int(fields.get("Threads", "0").strip())
        rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        return threads, rss

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            threads, rss = self.read()
            self.max_threads = max(self.max_threads, threads)
            self.max_rss = max(self.max_rss, rss)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _config(port: int, scenario: Scenario, distinct: bool, tls: bool) -> tuple[str, list[str]]:
    lines = ["stores:"]
    ids: list[str] = []
    for s in range(scenario.stores):
        store = [f"s{s:05d}-{t}" for t in range(scenario.tasks)]
        ids.extend(store)
        # 127.0.0.0/8 is all loopback on Linux: a host of its own per store, as real
        # stores have (each its own shop domain), or all stores on one host
        host = f"127.{s // 62500}.{s // 250 % 250}.{s % 250 + 1}" if distinct else "127.0.0.1"
        lines += [
            f"  - name: s{s:05d}",
            f"    base_url: {'https' if tls else 'http'}://{host}:{port}",
            f"    access_token_env: {TOKEN_ENV}",
            f"    task_ids: {json.dumps(store)}",
            "    min_poll_interval: 1h",
        ]
        if tls:  # the certificate names localhost only, not the 5,000 addresses
            lines.append("    tls_config: {insecure_skip_verify: true}")
    return "\n".join(lines) + "\n", ids


def _budget_floor(scenario: Scenario, latency: float) -> float:
    """The first round's length if only the per-store budgets limited it."""
    tokens = max(scenario.tasks - BURST, 0) / RATE
    waves = math.ceil(scenario.tasks / CONCURRENCY) * latency
    return max(tokens, waves)


def _server_tls() -> ssl.SSLContext:
    """A server context with a certificate from a throwaway authority."""
    import trustme

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(context)
    return context


def run(
    scenario: Scenario, latency: float, scrapes: int, tmp: Path, distinct: bool, tls: bool
) -> dict[str, str]:
    """One scenario; returns its figures by row name."""
    # Distinct hosts need a simulator on every loopback address (0.0.0.0: on this
    # machine's other addresses too, for the few minutes of the run).
    bind = "0.0.0.0" if distinct else "127.0.0.1"
    server_tls = _server_tls() if tls else None
    with Simulator(bind, tokens=(TOKEN,), latency=latency, max_records=1, tls=server_tls) as sim:
        text, ids = _config(sim.port, scenario, distinct, tls)
        for i, task_id in enumerate(ids):
            if i % 10 == 0:
                sim.add_task(task_id, total=100, finished=40)
            else:
                sim.add_task(task_id, total=100, finished=100, status=0)
        path = tmp / f"fleet-{scenario.stores}x{scenario.tasks}.yaml"
        path.write_text(text, encoding="utf-8")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(tmp / "exporter.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(path),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--log.level",
                "error",
            ],
            env={**os.environ, TOKEN_ENV: TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=_raise_nofile,  # the exporter holds a connection per store
        )
        session = requests.Session()
        try:
            started = time.monotonic()
            _wait(lambda: _healthy(session, url), 120, proc)
            ready_after = time.monotonic() - started
            watch = ProcWatch(proc.pid)
            idle_threads, idle_rss = watch.read()
            headers = {"X-Prometheus-Scrape-Timeout-Seconds": "10"}
            t0 = time.monotonic()
            # a scrape of one small family: the same refresh, little rendering
            tiny = {"name[]": "shoplazza_exporter_build_info"}
            session.get(url + "/metrics", params=tiny, headers=headers, timeout=60)
            first_scrape = time.monotonic() - t0
            if not sim.wait_for(lambda s: s.count() >= len(ids) and s.in_flight == 0, 600):
                raise RuntimeError(f"first round incomplete: {sim.count()} of {len(ids)}")
            first_round = time.monotonic() - t0
            _, round_rss = watch.read()  # polled, before any full /metrics was rendered
            polled = _wait(lambda: _polled(session, url) >= len(ids), 60, proc)
            latencies: list[float] = []
            size = series = 0
            for _ in range(scrapes + 1):
                t = time.monotonic()
                body = session.get(url + "/metrics", headers=headers, timeout=60).content
                latencies.append(time.monotonic() - t)
                size = len(body)
            series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            latencies = latencies[1:]  # the first one after the round renders every store anew
            end_threads, end_rss = watch.read()
            watch.stop()
            extra = sim.count() - len(ids)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
            session.close()
    return {
        "tasks": fmt_int(scenario.total),
        "start until healthy": fmt_seconds(ready_after),
        "threads idle / peak / end": f"{idle_threads} / {watch.max_threads} / {end_threads}",
        "RSS idle / peak / end": (
            f"{_mb(idle_rss)} / {_mb(max(watch.max_rss, end_rss))} / {_mb(end_rss)}"
        ),
        "RSS after the first round, before full scrapes": _mb(round_rss),
        "first scrape (starts the round)": fmt_seconds(first_scrape),
        "first round: every task fetched once": fmt_seconds(first_round),
        "  floor set by the budgets": fmt_seconds(_budget_floor(scenario, latency)),
        "  floor of the worker pool": fmt_seconds(len(ids) * latency / FETCH_WORKERS),
        "every task exported, from the first scrape": fmt_seconds(first_round + polled),
        "steady scrape p50 / p99 (nothing due)": (
            f"{fmt_seconds(percentile(latencies, 50))} / {fmt_seconds(percentile(latencies, 99))}"
        ),
        "  body": f"{size / 1e6:.1f} MB",
        "  series": fmt_int(series),
        "requests beyond one per task": fmt_int(extra),
    }


def _mb(value: int) -> str:
    return f"{value / 1e6:.0f} MB"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(session: requests.Session, url: str) -> bool:
    try:
        return session.get(url + "/-/healthy", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _polled(session: requests.Session, url: str) -> int:
    """Tasks whose last poll succeeded, from /metrics."""
    params = {"name[]": "shoplazza_upload_task_poll_success"}
    body = session.get(url + "/metrics", params=params, timeout=60).text
    return sum(
        1
        for line in body.splitlines()
        if line.startswith("shoplazza_upload_task_poll_success{") and line.endswith(" 1.0")
    )


def _wait(predicate: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> float:
    """Poll ``predicate`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode}")
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"condition not met within {timeout} s")
        threading.Event().wait(0.1)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument(
        "--scenario",
        type=parse_scenario,
        action="append",
        help="STORESxTASKS, repeatable (1000x10 and 5000x2)",
    )
    parser.add_argument("--latency", type=float, default=0.05, help="upstream latency, s (0.05)")
    parser.add_argument("--scrapes", type=int, default=20, help="steady scrapes timed (20)")
    parser.add_argument(
        "--hosts",
        choices=("one", "distinct"),
        default="distinct",
        help="every store on one API host, or each on its own loopback address (distinct)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="HTTPS to the API (the simulator with a throwaway certificate; the exporter "
        "skips verification, as the certificate cannot name every loopback address)",
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.latency < 0 or args.scrapes < 1:
        parser.error("--latency must be >= 0 and --scrapes >= 1")
    scenarios = args.scenario or [Scenario(1000, 10), Scenario(5000, 2)]
    _raise_nofile()  # the simulator holds one connection per store
    columns: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fleet-") as tmp:
        for scenario in scenarios:
            print(f"running {scenario.label} ...", file=sys.stderr)
            columns.append(
                run(
                    scenario,
                    args.latency,
                    args.scrapes,
                    Path(tmp),
                    args.hosts == "distinct",
                    args.tls,
                )
            )
    setup = (
        f"Per store: {RATE:g} req/s, burst {BURST}, max_concurrency {CONCURRENCY}, "
        f"min_poll_interval 1h; one task in ten in progress; upstream latency "
        f"{args.latency:g} s; {FETCH_WORKERS} fetch workers at most; API hosts: "
        f"{'one per store' if args.hosts == 'distinct' else 'one for all stores'}, "
        f"{'HTTPS' if args.tls else 'plain HTTP'}; "
        f"{os.cpu_count()} CPUs shared with the simulator."
    )
    rows = [[name, *(c[name] for c in columns)] for name in columns[0]]
    table = markdown_table(["figure", *(s.label for s in scenarios)], rows)
    # HTTPS has a section of its own beside the plain-HTTP one
    title, variant = ("Fleet over HTTPS", "tls") if args.tls else ("Fleet", "")
    emit(Report("fleet", title, f"{setup}\n\n{table}", variant), parser, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
