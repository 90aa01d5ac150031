"""Waiters of the task API: many ``GET ...?wait=`` requests at once (docs/task-api.md).

An exporter (in this process, its real HTTP server on loopback) watches one registered
task in progress on the simulator; N clients each send ``GET
/api/v1/stores/shop/tasks/w?wait=120s``. While they wait, ``/metrics`` and ``/-/healthy``
are timed and the process's threads counted; then the task completes on the simulator,
and the time from the poll that saw it to each waiter's answer is measured.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    Report,
    add_output_flags,
    emit,
    markdown_table,
    percentile,
)
from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.web.routes import App
from exporter.web.server import ExporterServer


def _timed(url: str, count: int) -> list[float]:
    session = requests.Session()
    took = []
    for _ in range(count):
        start = time.perf_counter()
        answer = session.get(url, timeout=10)
        took.append(time.perf_counter() - start)
        assert answer.status_code == 200
    return took


def main(argv: list[str] | None = None) -> int:
    """Print probe latencies, threads and wake-up delays with N waiters."""
    parser = argparse.ArgumentParser(prog="python -m bench.taskapi", description=__doc__)
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=50, help="timed requests per endpoint")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ[TOKEN_ENV] = TOKEN
    with Simulator(tokens=(TOKEN,)) as sim, tempfile.TemporaryDirectory() as tmp:
        sim.add_task("w", total=10, finished=5)
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"state_file: {tmp}/state.json\nstores:\n  - name: shop\n    base_url: {sim.url}\n"
            f"    access_token_env: {TOKEN_ENV}\n    min_poll_interval: 1s\n"
        )
        exporter = Exporter(str(config))
        exporter.start()
        app = App(exporter, enable_task_api=True)
        server = ExporterServer(app, "127.0.0.1:0")
        server.start()
        assert app.task_api is not None
        hub = app.task_api.hub
        polled: list[float] = []
        notify = hub.notify

        def seen(store: str, task_id: str) -> None:
            polled.append(time.perf_counter())
            notify(store, task_id)

        exporter.on_task_polled(seen)
        base = f"http://127.0.0.1:{server.address[1]}"
        assert requests.put(base + "/api/v1/stores/shop/tasks/w", timeout=10).status_code == 201
        idle_metrics = _timed(base + "/metrics", args.probes)
        idle_healthy = _timed(base + "/-/healthy", args.probes)
        threads_before = threading.active_count()
        head = b"GET /api/v1/stores/shop/tasks/w?wait=120s HTTP/1.1\r\nHost: b\r\n\r\n"
        socks = []
        for _ in range(args.waiters):
            sock = socket.create_connection(("127.0.0.1", server.address[1]))
            sock.sendall(head)
            socks.append(sock)
        deadline = time.monotonic() + 60
        while hub.waiting < args.waiters and time.monotonic() < deadline:
            time.sleep(0.01)
        waiting = hub.waiting
        busy_metrics = _timed(base + "/metrics", args.probes)
        busy_healthy = _timed(base + "/-/healthy", args.probes)
        busy_ready = _timed(base + "/-/ready", args.probes)
        threads_waiting = threading.active_count()
        polled.clear()
        sim.add_task("w", total=10, finished=10, status=0)
        selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        answered: list[float] = []
        deadline = time.monotonic() + 60
        while len(answered) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if ready.recv(65536).startswith(b"HTTP/1.1 200"):
                    answered.append(time.perf_counter())
                selector.unregister(ready)
        for sock in socks:
            sock.close()
        server.shutdown()
        exporter.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    poll = polled[-1] if polled else float("nan")
    delays = [t - poll for t in answered]

    def ms(values: list[float]) -> tuple[str, str]:
        return f"{percentile(values, 0.5) * 1000:.1f} ms", f"{max(values) * 1000:.1f} ms"

    rows = [
        ["/metrics, no waiter", *ms(idle_metrics)],
        ["/-/healthy, no waiter", *ms(idle_healthy)],
        [f"/metrics, {waiting:,} waiting", *ms(busy_metrics)],
        [f"/-/healthy, {waiting:,} waiting", *ms(busy_healthy)],
        [f"/-/ready, {waiting:,} waiting", *ms(busy_ready)],
        [f"answers after the completing poll ({len(answered):,} of {len(socks):,})", *ms(delays)],
    ]
    table = markdown_table(["request", "median", "max"], rows)
    setup = (
        f"{args.waiters:,} connections each waiting on `GET ...?wait=120s` for one task "
        f"(in this process, loopback); {args.probes} timed requests per probe. Threads: "
        f"{threads_before} before the waiters, {threads_waiting} while they wait."
    )
    emit(Report("taskapi", "Task API waiters", f"{setup}\n\n{table}"), parser, args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
