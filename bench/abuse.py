"""The exporter under abuse: do probes and scrapes keep answering, does memory stay bounded?

Each scenario starts the real exporter as a child process (``python -m exporter``) watching
a store of ``--tasks`` tasks (10,000 by default) known from a state file, on the built-in
simulator (so nothing is due and a scrape makes no API request), then, from this process:

1. measures a quiet moment (probe latency, RSS);
2. starts its abuse in background threads and, for ``--seconds``, times ``/-/healthy`` and
   ``/-/ready`` every 50 ms on a new connection each (as a kubelet probes) and a gzip
   OpenMetrics scrape every second on one kept-alive connection (as Prometheus scrapes),
   sampling the exporter's RSS every 0.2 s;
3. stops the abuse and the exporter.

Scenarios (one function each, in :data:`SCENARIOS`; add yours there):

- ``baseline``: no abuse;
- ``slow heads``: clients trickling request heads (2 KiB every 0.2 s) toward the head
  limit, reconnecting whenever the server closes them;
- ``wrong passwords``: basic auth on (bcrypt cost 10), 32 clients sending new wrong
  passwords as fast as they can; probes and scrapes send the right one;
- ``non-reading clients``: 60 clients sending ``GET /metrics`` (plain text, the largest
  body) and never reading the answer.

The rules (docs/design.md, "Rules for abuse: the server"): probes answer within 100 ms,
60 non-reading clients leave the exporter under 150 MB. Usage::

    .venv/bin/python -m bench.abuse [--tasks 10000] [--seconds 15] [--only NAME] [--markdown]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from bench.common import TOKEN, TOKEN_ENV, markdown_table, percentile
from bench.render import config, make_workload, proc_status, socket_port, tasks_of, wait_ready
from exporter.demo.simulator import Simulator
from exporter.polling.statefile import dump_state, write_atomically

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "prometheus", b"right-password"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
PROBE_EVERY = 0.05
SCRAPE_EVERY = 1.0


def basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


@dataclass
class Target:
    """The exporter under test: where it listens, its pid, the headers a legitimate client
    sends."""

    port: int
    pid: int
    headers: dict[str, str]
    tasks: int


@dataclass
class Abuse:
    """A running abuse, in a process of its own (its threads would otherwise compete with
    the measuring thread for this process's GIL): threads stop when ``stop`` is set;
    ``counts`` is what they saw."""

    stop: Any
    counts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def count(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def spawn(self, fn: Callable[[], None], n: int = 1) -> None:
        for _ in range(n):
            thread = threading.Thread(target=fn, daemon=True)
            self.threads.append(thread)
            thread.start()


Scenario = Callable[[Target, Abuse], None]


# -- scenarios ------------------------------------------------------------------------------


def baseline(target: Target, abuse: Abuse) -> None:
    """No abuse: the reference figures."""


def slow_heads(target: Target, abuse: Abuse, clients: int = 300) -> None:
    """Clients sending a request head 2 KiB every 0.2 s, never finishing it."""

    def run() -> None:
        socks: list[socket.socket | None] = [None] * clients
        pad = b"X-Pad: " + b"a" * 2040 + b"\r\n"
        while not abuse.stop.is_set():
            for i, sock in enumerate(socks):
                try:
                    if sock is None:
                        sock = socket.create_connection(("127.0.0.1", target.port), timeout=5)
                        sock.setblocking(False)
                        sock.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                        socks[i] = sock
                        abuse.count("connections opened")
                    sock.send(pad)
                    abuse.count("head bytes sent", len(pad))
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    if sock is not None:
                        sock.close()
                    socks[i] = None
                    abuse.count("closed by the server")
            abuse.stop.wait(0.2)
        for sock in socks:
            if sock is not None:
                sock.close()

    abuse.spawn(run)


def wrong_passwords(target: Target, abuse: Abuse, clients: int = 32) -> None:
    """32 clients sending new wrong passwords as fast as they can."""

    def run() -> None:
        n = 0
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        while not abuse.stop.is_set():
            n += 1
            header = basic(USER, f"wrong-{threading.get_ident()}-{n}".encode())
            try:
                conn.request("GET", "/metrics", headers={"Authorization": header})
                response = conn.getresponse()
                response.read()
                abuse.count(str(response.status))
            except OSError:
                abuse.count("errors")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        conn.close()

    abuse.spawn(run, clients)


def non_readers(target: Target, abuse: Abuse, clients: int = 60) -> None:
    """60 clients sending ``GET /metrics`` (plain text) and never reading the answer."""

    def run() -> None:
        socks = []
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", target.port))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(sock)
            abuse.count("clients")
        abuse.stop.wait()
        for sock in socks:
            sock.close()

    abuse.spawn(run)


SCENARIOS: list[tuple[str, Scenario, bool]] = [  # name, function, basic auth on
    ("baseline", baseline, False),
    ("slow heads", slow_heads, False),
    ("wrong passwords", wrong_passwords, True),
    ("non-reading clients", non_readers, False),
]


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one scenario measured."""

    name: str
    probes: list[float] = field(default_factory=list)
    probe_failures: Counter[str] = field(default_factory=Counter)
    scrapes: list[float] = field(default_factory=list)
    scrape_failures: Counter[str] = field(default_factory=Counter)
    rss_before: float = 0.0
    rss_max: float = 0.0
    abuse: Counter[str] = field(default_factory=Counter)


def probe(target: Target, path: str, timeout: float = 5.0) -> tuple[float, int]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=target.headers)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    return time.perf_counter() - started, response.status


def rss_mib(pid: int) -> float:
    return proc_status(pid)["VmRSS"] / 1024


def run_abuse(scenario: Scenario, target: Target, stop: Any, out: Any) -> None:
    """In the abuse process: run the scenario until ``stop``, then report its counts."""
    abuse = Abuse(stop)
    scenario(target, abuse)
    stop.wait()
    for thread in abuse.threads:
        thread.join(20)
    out.put(dict(abuse.counts))


def measure(target: Target, name: str, scenario: Scenario, seconds: float) -> Figures:
    figures = Figures(name, rss_before=rss_mib(target.pid))
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    attacker = context.Process(target=run_abuse, args=(scenario, target, stop, out))
    attacker.start()
    time.sleep(2.0)  # let the abuse ramp up (it has no signal for "up to speed")
    done = threading.Event()

    def scraper() -> None:
        headers = {
            **target.headers,
            "Accept": OPENMETRICS,
            "Accept-Encoding": "gzip",
            "X-Prometheus-Scrape-Timeout-Seconds": "10",
        }
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
        while not done.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/metrics", headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    figures.scrapes.append(time.perf_counter() - started)
                else:
                    figures.scrape_failures[str(response.status)] += 1
            except OSError as exc:
                figures.scrape_failures[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
            done.wait(SCRAPE_EVERY)
        conn.close()

    def sampler() -> None:
        while not done.is_set():
            figures.rss_max = max(figures.rss_max, rss_mib(target.pid))
            done.wait(0.2)

    helpers = [threading.Thread(target=fn, daemon=True) for fn in (scraper, sampler)]
    for thread in helpers:
        thread.start()
    end = time.monotonic() + seconds
    paths = ("/-/healthy", "/-/ready")
    n = 0
    while time.monotonic() < end:
        n += 1
        try:
            took, status = probe(target, paths[n % 2])
            if status == 200:
                figures.probes.append(took)
            else:
                figures.probe_failures[str(status)] += 1
        except OSError as exc:
            figures.probe_failures[type(exc).__name__] += 1
        done.wait(PROBE_EVERY)
    done.set()
    stop.set()
    for thread in helpers:
        thread.join(20)
    figures.abuse = Counter(out.get(timeout=60))
    attacker.join(20)
    return figures


@contextlib.contextmanager
def exporter(tasks: int, tmp: Path, auth: bool) -> Iterator[Target]:
    """The exporter as a child process, ``tasks`` tasks known from a state file."""
    workload = make_workload(f"abuse{tasks}", 1, tasks)
    state = tmp / "state.json"
    write_atomically(str(state), dump_state(tasks_of(workload), {}))
    headers: dict[str, str] = {}
    with Simulator(tokens=(TOKEN,)) as sim:
        for task_id in workload.in_progress:
            sim.add_task(task_id, total=100, finished=40, status=1)
        path = tmp / "config.yaml"
        path.write_text(config(workload, sim.url, state), encoding="utf-8")
        with socket_port() as port:
            pass
        cmd = [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={path}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ]
        if auth:
            hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=10)).decode()
            web = tmp / "web.yml"
            web.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n", encoding="utf-8")
            cmd.append(f"--web.config.file={web}")
            headers["Authorization"] = basic(USER, PASSWORD)
        env = {**os.environ, TOKEN_ENV: TOKEN}
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        try:
            target = Target(port, child.pid, headers, tasks)
            if auth:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # wait_ready knows no credentials
                    with contextlib.suppress(OSError):
                        if probe(target, "/-/ready")[1] == 200:
                            break
                    time.sleep(0.1)  # polling a child process that has no other signal
            else:
                wait_ready(port, child)
            for _ in range(50):  # bounded: until every task in progress has been fetched
                probe(target, "/metrics", timeout=60)
                if sim.count() >= len(workload.in_progress):
                    break
            yield target
        finally:
            child.terminate()
            child.wait(timeout=30)


# -- report ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds == seconds else "n/a"


def failures(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"


def report(results: list[Figures], markdown: bool) -> str:
    header = [
        "scenario",
        "probes",
        "probe p50",
        "probe p99",
        "probe max",
        "probes > 100 ms",
        "probe failures",
        "scrapes",
        "scrape p50",
        "scrape p99",
        "scrape failures",
        "RSS before",
        "RSS max",
        "what the abuse saw",
    ]
    rows = [
        [
            f.name,
            str(len(f.probes)),
            ms(percentile(f.probes, 50)),
            ms(percentile(f.probes, 99)),
            ms(max(f.probes, default=float("nan"))),
            str(sum(1 for p in f.probes if p > 0.1)),
            failures(f.probe_failures),
            str(len(f.scrapes)),
            ms(percentile(f.scrapes, 50)),
            ms(percentile(f.scrapes, 99)),
            failures(f.scrape_failures),
            f"{f.rss_before:.0f} MiB",
            f"{f.rss_max:.0f} MiB",
            failures(f.abuse),
        ]
        for f in results
    ]
    if markdown:
        return markdown_table(header, rows)
    return "\n\n".join(
        "\n".join(f"{name:>18}: {value}" for name, value in zip(header, row, strict=True))
        for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks watched")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured per scenario")
    parser.add_argument("--only", action="append", help="run only this scenario (repeatable)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.only or s[0] in args.only]
    print(
        f"# bench.abuse: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{args.tasks:,} tasks, {args.seconds:.0f} s per scenario, probes every "
        f"{PROBE_EVERY * 1000:.0f} ms (new connection each), a gzip scrape every "
        f"{SCRAPE_EVERY:.0f} s\n"
    )
    results = []
    for name, scenario, auth in chosen:
        with tempfile.TemporaryDirectory() as tmp, exporter(args.tasks, Path(tmp), auth) as target:
            results.append(measure(target, name, scenario, args.seconds))
        print(f"  {name} measured", file=sys.stderr)
    print(report(results, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
