"""The HTTP server under many connections: probe and scrape latency, keep-alive and TLS.

Starts the real exporter as a process (``python -m exporter``, which raises its own
open-files limit) watching 100 tasks on the built-in simulator, then, from this process:

1. opens 0, 1,000 and 10,000 idle connections (each made one request and is kept alive,
   as Prometheus and load balancers leave them), and at each level times ``/metrics`` and
   ``/-/healthy``, each on a new connection, as a kubelet probe comes;
2. times a scrape on one kept-alive connection against a new connection each time, over
   plain HTTP and over TLS, which shows what a handshake per scrape costs.

Prints markdown tables of p50/p99 latency. Client and server are separate processes, so
10,000 connections cost each of them 10,000 descriptors; this process raises its own
open-files limit to the hard limit first.

Usage::

    .venv/bin/python -m bench.connections [--idle 0,1000,10000] [--requests 200]
        [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trustme

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    Report,
    add_output_flags,
    config_text,
    emit,
    fmt_int,
    markdown_table,
    percentile,
)
from exporter.demo.simulator import Simulator

TASKS = 100


def raise_open_files_limit() -> int:
    """This process holds the client ends: as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def exporter_process(config: str, web_config: str | None, port: int) -> Iterator[int]:
    """The exporter as a subprocess, serving on ``port`` until the block ends."""
    args = [sys.executable, "-m", "exporter", "--config.file", config]
    args += ["--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn"]
    if web_config:
        args += ["--web.config.file", web_config]
    proc = subprocess.Popen(args, env={**os.environ, TOKEN_ENV: TOKEN})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the exporter did not start") from None
                time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Client:
    """Requests to the exporter, plain or TLS, on a kept-alive or a new connection."""

    def __init__(self, port: int, context: ssl.SSLContext | None) -> None:
        self.port = port
        self.context = context
        self._kept: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.context is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        return http.client.HTTPSConnection("localhost", self.port, timeout=30, context=self.context)

    def get(self, path: str, *, keep_alive: bool) -> float:
        """Seconds for one GET, reading the whole body; raises unless the answer is 200."""
        started = time.perf_counter()
        conn = self._kept if keep_alive and self._kept is not None else self._connect()
        conn.request("GET", path, headers={"X-Prometheus-Scrape-Timeout-Seconds": "10"})
        response = conn.getresponse()
        response.read()
        took = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status}")
        if keep_alive:
            self._kept = conn
        else:
            conn.close()
        return took


def open_idle(port: int, count: int, into: list[socket.socket]) -> float:
    """Open connections that each make one request and stay idle; seconds it took."""
    started = time.monotonic()
    request = b"GET /-/healthy HTTP/1.1\r\nHost: bench\r\n\r\n"
    batch = 200
    while len(into) < count:
        opened: list[socket.socket] = []
        for _ in range(min(batch, count - len(into) - len(opened))):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(request)
            opened.append(sock)
        for sock in opened:
            data = b""
            while b"OK\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("an idle connection was closed while opening")
                data += chunk
        into.extend(opened)
    return time.monotonic() - started


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (nothing to read, no EOF)."""
    count = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            if sock.recv(1):
                count += 1  # unexpected data, but open
        except BlockingIOError:
            count += 1
        except OSError:
            pass
        sock.setblocking(True)
    return count


def resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` in MiB (Linux), NaN elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timed(fn: Callable[[], float], count: int) -> tuple[float, float]:
    samples = [fn() for _ in range(count)]
    return percentile(samples, 50), percentile(samples, 99)


def ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--idle", default="0,1000,10000", help="idle connection counts")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per cell")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.idle.split(",")]
    limit = raise_open_files_limit()
    body = [
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, open-files limit "
        f"{limit}; the exporter as a process watching {TASKS} tasks on the simulator, "
        f"the client in another; {args.requests} requests per cell.\n"
    ]
    with Simulator(tokens=(TOKEN,)) as sim, tempfile.TemporaryDirectory() as tmp:
        ids = [f"task{i:04d}" for i in range(TASKS)]
        for i, task_id in enumerate(ids):
            sim.add_task(task_id, total=100, finished=i % 100, status=0 if i % 2 else 1)
        config = Path(tmp, "config.yaml")
        config.write_text(config_text(sim.url, ids, requests_per_second=1000, burst=1000))
        ca = trustme.CA()
        leaf = ca.issue_cert("localhost")
        leaf.cert_chain_pems[0].write_to_path(str(Path(tmp, "cert.pem")))
        leaf.private_key_pem.write_to_path(str(Path(tmp, "key.pem")))
        web = Path(tmp, "web.yml")
        web.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
        trust = ssl.create_default_context()
        ca.configure_trust(trust)

        port = free_port()
        rows = []
        with exporter_process(str(config), None, port) as pid:
            client = Client(port, None)
            client.get("/metrics", keep_alive=False)  # first fetch of every task
            idle: list[socket.socket] = []
            try:
                for level in levels:
                    opening = open_idle(port, level, idle)
                    metrics = timed(lambda: client.get("/metrics", keep_alive=False), args.requests)
                    healthy = timed(
                        lambda: client.get("/-/healthy", keep_alive=False), args.requests
                    )
                    alive = still_open(idle)
                    rss = resident_mib(pid)
                    rows.append(
                        [
                            fmt_int(level),
                            fmt_int(alive),
                            ms(metrics[0]),
                            ms(metrics[1]),
                            ms(healthy[0]),
                            ms(healthy[1]),
                            f"{opening:.1f} s",
                            f"{rss:.0f} MiB",
                        ]
                    )
                    print(f"  {level} idle connections measured", file=sys.stderr)
            finally:
                for sock in idle:
                    sock.close()
        body.append("### Latency with idle connections (new connection per request, plain HTTP)\n")
        body.append(
            markdown_table(
                [
                    "idle connections",
                    "still open after",
                    "/metrics p50",
                    "/metrics p99",
                    "/-/healthy p50",
                    "/-/healthy p99",
                    "time to open them",
                    "exporter RSS",
                ],
                rows,
            )
        )

        rows = []
        for name, web_config, context in (("plain HTTP", None, None), ("TLS", str(web), trust)):
            port = free_port()
            with exporter_process(str(config), web_config, port):
                tls_client = Client(port, context)
                tls_client.get("/metrics", keep_alive=False)
                kept = timed(partial(tls_client.get, "/metrics", keep_alive=True), args.requests)
                new = timed(partial(tls_client.get, "/metrics", keep_alive=False), args.requests)
            rows.append([name, ms(kept[0]), ms(kept[1]), ms(new[0]), ms(new[1])])
        body.append("\n### /metrics on a kept-alive connection vs a new connection each time\n")
        body.append(
            markdown_table(
                [
                    "",
                    "kept alive p50",
                    "kept alive p99",
                    "new connection p50",
                    "new connection p99",
                ],
                rows,
            )
        )
    emit(Report("connections", "Connections", "\n".join(body)), parser, args, argv)


if __name__ == "__main__":
    main()
