"""Cost of a steady /metrics scrape at scale, side by side with prometheus_client's generic path.

For each workload (1,000 stores x 10 tasks, and one store with 1k, 10k and 100k tasks; 90 %
completed, every tenth task with failed files) it:

1. writes a state file with the tasks' last known data and a configuration pointing at the
   simulator (which serves the 10 % in progress), and starts the real exporter as a child
   process (``python -m exporter``) on loopback, so its RSS is the exporter's alone;
2. scrapes until every task has data, then times steady scrapes (nothing due, no request to
   the API: checked) over HTTP, a new connection each, as text, OpenMetrics and OpenMetrics
   with gzip; ``/-/healthy`` gives the HTTP floor;
3. in this process, with the same tasks loaded from the same state file: times
   prometheus_client's generic path (``generate_latest`` over the same families, from
   ``exporter.metrics.families.family_collectors``) and the exporter's cached render alone,
   and measures
   with tracemalloc the bytes per task of the task records and of the render cache.

What a scrape costs beyond the render (HTTP, the poller's refresh and ``view()``) is the
difference between the HTTP figure and the render figure. Usage::

    .venv/bin/python -m bench.render [--tasks 1000,10000,100000] [--scrapes 20]
        [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    WALL_START,
    Report,
    add_output_flags,
    emit,
    markdown_table,
    percentile,
)
from exporter.app import TRIM_INTERVAL
from exporter.demo.simulator import Simulator
from exporter.metrics.exposition import Exposition, default_collectors
from exporter.metrics.families import family_collectors
from exporter.model import (
    DURATION_BUCKETS,
    ERROR_CODES,
    SKIP_REASONS,
    ExporterView,
    FailedFile,
    ReloadStatus,
    StoreView,
    TaskRecord,
    TaskSnapshot,
)
from exporter.polling.statefile import dump_state, load_state, write_atomically

ROOT = Path(__file__).resolve().parent.parent
TEXT, OPENMETRICS = "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0"
FORMATS = (
    ("text", TEXT, False),
    ("OpenMetrics", OPENMETRICS, False),
    ("OM+gzip", OPENMETRICS, True),
)


@dataclass
class Workload:
    """Stores and their task ids; which tasks are in progress."""

    name: str
    stores: dict[str, list[str]]
    in_progress: set[str]

    @property
    def tasks(self) -> int:
        """How many tasks."""
        return sum(len(ids) for ids in self.stores.values())


@dataclass
class Result:
    """The figures of one workload."""

    workload: Workload
    http: dict[str, list[float]]  # format -> seconds per scrape
    healthy: list[float]
    render: dict[str, list[float]]  # in process, cached render alone
    generic: list[float]  # generate_latest over the same families
    body: int
    rss: int  # KiB, exporter process, after the scrapes
    hwm: int  # KiB, peak
    settled: int  # KiB, after one housekeeping round (memory given back) and one more scrape
    state_bytes: float  # tracemalloc, per task
    cache_bytes: float  # tracemalloc, per task


def make_workload(name: str, stores: int, per_store: int) -> Workload:
    """``stores`` stores of ``per_store`` tasks; every tenth task in progress."""
    ids = {f"s{s:04d}": [f"{s:04d}{t:020x}" for t in range(per_store)] for s in range(stores)}
    busy = {task_id for tasks in ids.values() for i, task_id in enumerate(tasks) if i % 10 == 3}
    return Workload(name, ids, busy)


def tasks_of(workload: Workload) -> list[TaskRecord]:
    """The last known state of every task, as the state file keeps it."""
    out = []
    for store, ids in workload.stores.items():
        for i, task_id in enumerate(ids):
            busy = task_id in workload.in_progress
            failures = tuple(
                FailedFile(f"https://img.example.com/{task_id}/{n}.jpg", "timeout")
                for n in range(5 if i % 10 == 0 else 0)
            )
            snap = TaskSnapshot(
                total=100,
                finished=40 if busy else 100,
                status=1 if busy else 0,
                succeeded=95,
                failed=len(failures),
                failures=failures,
            )
            out.append(
                TaskRecord(
                    store,
                    task_id,
                    snap,
                    poll_success=True,
                    last_code="200",
                    last_success=WALL_START + i,
                    last_progress=WALL_START + i / 2,
                    completed_at=None if busy else WALL_START + i,
                )
            )
    return out


def config(workload: Workload, url: str, state: Path) -> str:
    """One store entry per store; the budget is big and nothing is due once polled."""
    lines = [f"state_file: {state}", "stores:"]
    for store, ids in workload.stores.items():
        lines += [
            f"  - name: {store}",
            f"    base_url: {url}",
            f"    access_token_env: {TOKEN_ENV}",
            f"    task_ids: [{', '.join(ids)}]",
            "    min_poll_interval: 24h",
            "    requests_per_second: 10000",
            "    burst: 10000",
            "    max_concurrency: 16",
        ]
    return "\n".join(lines) + "\n"


def get(port: int, path: str, accept: str = "", gzipped: bool = False) -> tuple[float, bytes]:
    """One request on a new connection: (seconds, body)."""
    headers = {"Accept": accept, "X-Prometheus-Scrape-Timeout-Seconds": "10"}
    if gzipped:
        headers["Accept-Encoding"] = "gzip"
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    took = time.perf_counter() - start
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}")
    return took, body


def timed(action: Callable[[], object], count: int) -> list[float]:
    """Seconds of ``count`` calls after one warm-up."""
    action()
    out = []
    for _ in range(count):
        gc.collect()
        start = time.perf_counter()
        action()
        out.append(time.perf_counter() - start)
    return out


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def views_of(workload: Workload, tasks: list[TaskRecord]) -> ExporterView:
    """The exporter's view of ``tasks``, stores with zero counters."""
    by_store: dict[str, list[TaskRecord]] = {store: [] for store in workload.stores}
    for task in tasks:
        by_store[task.store].append(task)
    stores = tuple(
        StoreView(
            store,
            tuple(items),
            (("200", len(items)),),
            tuple((c, 0) for c in ERROR_CODES),
            tuple((r, 0) for r in SKIP_REASONS),
            (0,) * len(DURATION_BUCKETS),
            0,
            0.0,
        )
        for store, items in by_store.items()
    )
    return ExporterView(
        stores, WALL_START, "bench", ReloadStatus(True, WALL_START), stores_owned=len(stores)
    )


def in_process(workload: Workload, state: Path, scrapes: int, result: Result) -> None:
    """Generic path against the cached render, and tracemalloc bytes per task."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tasks, _ = load_state(str(state))
    view = views_of(workload, tasks)
    result.state_bytes = (tracemalloc.get_traced_memory()[0] - base) / workload.tasks
    base = tracemalloc.get_traced_memory()[0]
    exposition = Exposition()
    for _, accept, gzipped in FORMATS:
        exposition.render(view, accept, None, gzipped)
    result.cache_bytes = (tracemalloc.get_traced_memory()[0] - base) / workload.tasks
    tracemalloc.stop()
    for name, accept, gzipped in FORMATS:
        result.render[name] = timed(
            partial(exposition.render, view, accept, None, gzipped), scrapes
        )
    registry = CollectorRegistry()
    for collector in (*family_collectors(lambda: view), *default_collectors()):
        registry.register(collector)
    result.generic = timed(lambda: generate_latest(registry), max(3, scrapes // 4))


def run(workload: Workload, scrapes: int, tmp: Path) -> Result:
    """Measure one workload."""
    result = Result(workload, {}, [], {}, [], 0, 0, 0, 0, 0.0, 0.0)
    state = tmp / f"{workload.name}.state.json"
    tasks = tasks_of(workload)
    write_atomically(str(state), dump_state(tasks, {}))
    del tasks
    with Simulator(tokens=(TOKEN,)) as sim:
        for task_id in workload.in_progress:
            sim.add_task(task_id, total=100, finished=40, status=1)
        path = tmp / f"{workload.name}.yaml"
        path.write_text(config(workload, sim.url, state), encoding="utf-8")
        with socket_port() as port:
            pass
        env = {**os.environ, TOKEN_ENV: TOKEN}
        cmd = [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ]
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        try:
            wait_ready(port, child)
            for _ in range(50):  # bounded: fill the in-progress tasks
                get(port, "/metrics", TEXT)
                if sim.count() >= len(workload.in_progress):
                    break
            before = sim.count()
            for name, accept, gzipped in FORMATS:
                result.http[name] = timed(partial(get, port, "/metrics", accept, gzipped), scrapes)
            result.healthy = timed(lambda: get(port, "/-/healthy"), scrapes)
            result.body = len(get(port, "/metrics", TEXT)[1])
            if sim.count() != before:
                raise RuntimeError("a steady scrape polled the API; the figures would include it")
            status = proc_status(child.pid)
            result.rss, result.hwm = status["VmRSS"], status["VmHWM"]
            # The exporter gives unused allocator memory back every TRIM_INTERVAL seconds.
            time.sleep(TRIM_INTERVAL + 1.5)
            get(port, "/metrics", TEXT)
            result.settled = proc_status(child.pid)["VmRSS"]
        finally:
            child.terminate()
            child.wait(timeout=30)
    in_process(workload, state, scrapes, result)
    return result


class socket_port:
    """A free loopback port (closed again before the exporter binds it)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def wait_ready(port: int, child: subprocess.Popen[bytes]) -> None:
    """Until /-/ready answers 200 (at most 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the exporter exited with {child.returncode}")
        try:
            get(port, "/-/ready")
            return
        except (OSError, RuntimeError):
            time.sleep(0.1)  # polling a child process that has no other signal
    raise RuntimeError("the exporter did not become ready in 120 s")


def ms(values: list[float], q: float = 50) -> str:
    return f"{percentile(values, q) * 1000:,.1f}"


def report(results: list[Result], scrapes: int) -> Report:
    """The markdown report."""
    header = [
        "workload",
        "HTTP text",
        "HTTP OM",
        "HTTP OM+gzip",
        "gzip/plain",
        "render text",
        "generic",
        "HTTP/generic",
        "/-/healthy",
        "body",
        "RSS",
        "settled RSS",
        "peak RSS",
        "state B/task",
        "cache B/task",
    ]
    rows = []
    for r in results:
        generic = percentile(r.generic, 50)
        rows.append(
            [
                r.workload.name,
                ms(r.http["text"]),
                ms(r.http["OpenMetrics"]),
                ms(r.http["OM+gzip"]),
                f"{percentile(r.http['OM+gzip'], 50) / percentile(r.http['OpenMetrics'], 50):.2f}",
                ms(r.render["text"]),
                ms(r.generic),
                f"1/{generic / percentile(r.http['text'], 50):.0f}",
                ms(r.healthy),
                f"{r.body / 2**20:,.1f} MiB",
                f"{r.rss / 1024:,.0f} MiB",
                f"{r.settled / 1024:,.0f} MiB",
                f"{r.hwm / 1024:,.0f} MiB",
                f"{r.state_bytes:,.0f}",
                f"{r.cache_bytes:,.0f}",
            ]
        )
    body = "\n".join(
        [
            f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
            f"{scrapes} timed steady scrapes per format after one warm-up (ms p50). HTTP: the "
            "exporter as a child process, a new loopback connection per scrape, nothing due. "
            "render: the cached render alone, in this process. generic: prometheus_client's "
            "generate_latest over the same families. RSS: the exporter process after the "
            "scrapes (VmRSS, VmHWM); settled: after its next return of unused memory "
            f"({TRIM_INTERVAL:.0f} s housekeeping) and one more scrape. B/task: tracemalloc, "
            "task records (loaded from the state file) and render cache (all three formats).",
            "",
            markdown_table(header, rows),
            "",
            "p99 (ms): "
            + "; ".join(
                f"{r.workload.name}: HTTP text {ms(r.http['text'], 99)}, OM+gzip "
                f"{ms(r.http['OM+gzip'], 99)}, render {ms(r.render['text'], 99)}"
                for r in results
            ),
        ]
    )
    return Report("render", "Render", body)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument(
        "--tasks",
        default="1000,10000,100000",
        help="task counts of the one-store workloads (1000,10000,100000)",
    )
    parser.add_argument(
        "--fleet", default="1000x10", help="STORESxTASKS workload (1000x10; empty: none)"
    )
    parser.add_argument("--scrapes", type=int, default=20, help="timed scrapes per format (20)")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.tasks.split(",") if n]
        stores, per_store = (int(n) for n in (args.fleet or "1x1").lower().split("x"))
    except ValueError:
        print("error: --tasks is N[,N...] and --fleet STORESxTASKS", file=sys.stderr)
        return 2
    if args.scrapes < 1 or stores < 1 or per_store < 1 or any(n < 1 for n in sizes):
        print("error: counts must be >= 1", file=sys.stderr)
        return 2
    workloads = []
    if args.fleet:
        workloads.append(make_workload(f"{stores:,} stores x {per_store}", stores, per_store))
    workloads += [make_workload(f"1 store x {n:,}", 1, n) for n in sizes]
    results = []
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        for workload in workloads:
            print(f"measuring {workload.name} ...", file=sys.stderr)
            results.append(run(workload, args.scrapes, Path(tmp)))
    emit(report(results, args.scrapes), parser, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
