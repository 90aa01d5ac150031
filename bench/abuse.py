"""The exporter under abuse: do probes and scrapes keep answering, does memory stay bounded?

Server scenarios start the real exporter as a child process (``python -m exporter``)
watching a store of ``--tasks`` tasks (10,000 by default) known from a state file, on the
built-in simulator (so nothing is due and a scrape makes no API request), then, from this
process:

1. measure a quiet moment (probe latency, RSS);
2. start their abuse in another process and, for ``--seconds``, time ``/-/healthy`` and
   ``/-/ready`` every 50 ms on a new connection each (as a kubelet probes) and a gzip
   OpenMetrics scrape every second on one kept-alive connection (as Prometheus scrapes,
   with a 10 s scrape timeout header), sampling the exporter's RSS every 0.2 s;
3. stop the abuse and the exporter.

Server scenarios (one function each, in :data:`SCENARIOS`; add yours there):

- ``baseline``: no abuse;
- ``slow heads``: clients trickling request heads (2 KiB every 0.2 s) toward the head
  limit, reconnecting whenever the server closes them;
- ``wrong passwords``: basic auth on (bcrypt cost 10), 32 clients sending new wrong
  passwords as fast as they can; probes and scrapes send the right one;
- ``non-reading clients``: 60 clients sending ``GET /metrics`` (plain text, the largest
  body) and never reading the answer;
- ``huge task file``: the exporter starts watching one store whose task id file has
  ``--lines`` lines (1,000,000); probes start with the process, so the figures say when
  ``/-/healthy`` and ``/-/ready`` first answer 200, how probes fare while the file is first
  read, and how long the first scrape takes (sent as soon as the server answers).

File scenarios (in this process, :data:`FILE_SCENARIOS`):

- ``symlink loop``: links ``a -> .`` and ``b -> .`` under a ``**`` glob: how long one walk
  takes and what it matched (the walk never enters a directory through a link);
- ``million lines``: a task id file of ``--lines`` lines watched by one store of a poller:
  the first reading, one appended line (what the discovery thread does each second), and a
  scrape (2 s budget) while a tenth more lines are appended and read.

The rules (docs/design.md, "Rules for abuse: the server" and "Rules for files"): probes
answer within 100 ms, 60 non-reading clients leave the exporter under 150 MB, reading files
never holds a scrape past its deadline. Usage::

    .venv/bin/python -m bench.abuse [--tasks 10000] [--seconds 15] [--lines 1000000]
        [--only NAME ...] [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import math
import multiprocessing
import os
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

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    Report,
    add_output_flags,
    emit,
    markdown_table,
    percentile,
)
from bench.render import config, make_workload, proc_status, socket_port, tasks_of, wait_ready
from exporter.config import parse_config
from exporter.config.watch import expand_task_id_files
from exporter.demo.simulator import Simulator
from exporter.polling.poller import Poller
from exporter.polling.statefile import dump_state, write_atomically

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "prometheus", b"right-password"
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
PROBE_EVERY = 0.05
SCRAPE_EVERY = 1.0
SCRAPE_HEADERS = {
    "Accept": OPENMETRICS,
    "Accept-Encoding": "gzip",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}


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
#: The server scenario that measures a start, not an abuse (:func:`huge_task_file`).
HUGE_START = "huge task file"


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one server scenario measured."""

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


def scrape_every_second(
    target: Target,
    figures: Figures,
    done: threading.Event,
    first: list[tuple[float, str]] | None = None,
) -> None:
    """Until ``done``: a gzip OpenMetrics scrape each second on one kept-alive connection.

    ``first``, when given, receives the first scrape's duration and outcome.
    """
    headers = {**target.headers, **SCRAPE_HEADERS}
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
    while not done.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", "/metrics", headers=headers)
            response = conn.getresponse()
            response.read()
            outcome = str(response.status)
        except OSError as exc:
            outcome = type(exc).__name__
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=15)
        took = time.perf_counter() - started
        if outcome == "200":
            figures.scrapes.append(took)
        else:
            figures.scrape_failures[outcome] += 1
        if first is not None and not first:
            first.append((took, outcome))
        done.wait(SCRAPE_EVERY)
    conn.close()


def sample_rss(pid: int, figures: Figures, done: threading.Event) -> None:
    """Until ``done``: the process's RSS every 0.2 s, the largest kept."""
    while not done.is_set():
        with contextlib.suppress(OSError, KeyError):
            figures.rss_max = max(figures.rss_max, rss_mib(pid))
        done.wait(0.2)


def probe_once(target: Target, path: str, figures: Figures) -> int:
    """One probe on a new connection; its time counts when it answered 200. Its status, or 0."""
    try:
        took, status = probe(target, path)
    except OSError as exc:
        figures.probe_failures[type(exc).__name__] += 1
        return 0
    if status == 200:
        figures.probes.append(took)
    else:
        figures.probe_failures[str(status)] += 1
    return status


def measure(target: Target, name: str, scenario: Scenario, seconds: float) -> Figures:
    figures = Figures(name, rss_before=rss_mib(target.pid))
    context = multiprocessing.get_context("fork")
    stop, out = context.Event(), context.Queue()
    attacker = context.Process(target=run_abuse, args=(scenario, target, stop, out))
    attacker.start()
    time.sleep(2.0)  # let the abuse ramp up (it has no signal for "up to speed")
    done = threading.Event()
    helpers = [
        threading.Thread(target=scrape_every_second, args=(target, figures, done), daemon=True),
        threading.Thread(target=sample_rss, args=(target.pid, figures, done), daemon=True),
    ]
    for thread in helpers:
        thread.start()
    end = time.monotonic() + seconds
    paths = ("/-/healthy", "/-/ready")
    n = 0
    while time.monotonic() < end:
        n += 1
        probe_once(target, paths[n % 2], figures)
        done.wait(PROBE_EVERY)
    done.set()
    stop.set()
    for thread in helpers:
        thread.join(20)
    figures.abuse = Counter(out.get(timeout=60))
    attacker.join(20)
    return figures


def start_exporter(
    config_path: Path, port: int, web_config: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "exporter",
        f"--config.file={config_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=error",
    ]
    if web_config is not None:
        cmd.append(f"--web.config.file={web_config}")
    env = {**os.environ, TOKEN_ENV: TOKEN}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


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
        web = None
        if auth:
            hashed = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=10)).decode()
            web = tmp / "web.yml"
            web.write_text(f"basic_auth_users:\n  {USER}: {hashed}\n", encoding="utf-8")
            headers["Authorization"] = basic(USER, PASSWORD)
        child = start_exporter(path, port, web)
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


@dataclass
class Start:
    """What the start with a huge task id file measured, in seconds after the process
    started (NaN: never within the run)."""

    lines: int
    answered: float = float("nan")  # first HTTP answer of any status
    healthy: float = float("nan")
    ready: float = float("nan")
    first_scrape: float = float("nan")
    first_scrape_status: str = "not sent"
    refused: int = 0  # probes refused before the server listened
    during_read: list[float] = field(default_factory=list)  # probes answered before ready
    after_ready: list[float] = field(default_factory=list)  # probes answered after ready


def huge_task_file(lines: int, seconds: float, tmp: Path) -> tuple[Figures, Start]:
    """Start the exporter on a task id file of ``lines`` lines, probing from its start.

    Probes (every 50 ms, a new connection each, alternating ``/-/healthy`` and
    ``/-/ready``) start with the process; the first scrape is sent as soon as the server
    answers anything, then one each second; the run ends ``seconds`` after ``/-/ready``
    (at most 300 s after the start).
    """
    figures = Figures(HUGE_START)
    start = Start(lines)
    ids = tmp / "tasks" / "ids.txt"
    ids.parent.mkdir()
    with ids.open("w", encoding="utf-8") as handle:
        for i in range(lines):
            handle.write(f"{i:024x}\n")
    with Simulator(tokens=(TOKEN,)) as sim:
        path = tmp / "config.yaml"
        path.write_text(
            "stores:\n"
            "  - name: shop\n"
            f"    base_url: {sim.url}\n"
            f"    access_token_env: {TOKEN_ENV}\n"
            f"    task_id_files: ['{ids}']\n"
            "    min_poll_interval: 1h\n",
            encoding="utf-8",
        )
        with socket_port() as port:
            pass
        child = start_exporter(path, port)
        began = time.perf_counter()
        target = Target(port, child.pid, {}, lines)
        done = threading.Event()
        first: list[tuple[float, str]] = []
        scraper = threading.Thread(
            target=scrape_every_second, args=(target, figures, done, first), daemon=True
        )
        sampler = threading.Thread(target=sample_rss, args=(child.pid, figures, done))
        sampler.start()
        try:
            n = 0
            while time.perf_counter() - began < 300 and child.poll() is None:
                n += 1
                path_ = ("/-/healthy", "/-/ready")[n % 2]
                sent = time.perf_counter()
                before = len(figures.probes)
                status = probe_once(target, path_, figures)
                at = sent - began
                if status == 0:
                    if math.isnan(start.answered):
                        start.refused += 1
                else:
                    if math.isnan(start.answered):
                        start.answered = at
                        with contextlib.suppress(OSError, KeyError):
                            figures.rss_before = rss_mib(child.pid)
                        scraper.start()  # Prometheus scrapes a target once it answers
                    if status == 200 and path_ == "/-/healthy" and math.isnan(start.healthy):
                        start.healthy = at
                    if status == 200 and path_ == "/-/ready" and math.isnan(start.ready):
                        start.ready = at
                    if len(figures.probes) > before:
                        answered = figures.probes[-1]
                        (
                            start.during_read if math.isnan(start.ready) else start.after_ready
                        ).append(answered)
                if (
                    not math.isnan(start.ready)
                    and time.perf_counter() - began > start.ready + seconds
                ):
                    break
                done.wait(PROBE_EVERY)
        finally:
            done.set()
            if scraper.is_alive():
                scraper.join(20)
            sampler.join(20)
            child.terminate()
            child.wait(timeout=30)
    if first:
        start.first_scrape, start.first_scrape_status = first[0]
    return figures, start


# -- files ----------------------------------------------------------------------------------

Row = list[str]


def symlink_loop(root: Path, lines: int) -> list[Row]:
    """A loop of directory links under ``**``: one walk."""
    (root / "sub").mkdir()
    (root / "ids.txt").write_text("t1\n")
    (root / "sub" / "more.txt").write_text("t2\n")
    os.symlink(".", root / "a")
    os.symlink(".", root / "b")
    started = time.perf_counter()
    found = expand_task_id_files([f"{root}/**/*.txt"])
    took = time.perf_counter() - started
    return [
        ["symlink loop", "one walk of `**/*.txt` with `a -> .` and `b -> .`", ms(took, 2)],
        ["symlink loop", "files matched (ids.txt, sub/more.txt)", str(len(found))],
    ]


def _peak_rss_reset() -> None:
    """Reset this process's peak RSS (VmHWM), where the kernel allows it."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def million_lines(root: Path, lines: int) -> list[Row]:
    """A task id file of ``lines`` lines read by a poller, then appends."""
    path = root / "ids.txt"
    with path.open("w") as handle:
        for i in range(lines):
            handle.write(f"task-{i:08d}\n")
    parsed = parse_config(
        "stores:\n"
        "  - name: shop\n"
        "    base_url: http://127.0.0.1:9\n"
        f"    access_token: {TOKEN}\n"
        "    min_poll_interval: 1h\n"
        f"    task_id_files: ['{root}/*.txt']\n",
        environ={},
    )
    _peak_rss_reset()
    rss_before = proc_status(os.getpid())["VmRSS"] / 1024
    poller = Poller(housekeeping_every=3600.0)  # the appends below are read by this script
    started = time.perf_counter()
    poller.apply_config(parsed)
    first = time.perf_counter() - started
    rss_first = proc_status(os.getpid())["VmHWM"] / 1024
    watched = sum(len(view.tasks) for view in poller.views())
    time.sleep(max(0.0, 1.1 - first))  # a task file is looked at once a second at most
    with path.open("a") as handle:
        handle.write("appended-1\n")
    started = time.perf_counter()
    poller._discover()  # what the discovery thread does each second
    one = time.perf_counter() - started
    watched_after = sum(len(view.tasks) for view in poller.views())
    more = lines // 10
    with path.open("a") as handle:
        for i in range(more):
            handle.write(f"more-{i:08d}\n")
    store = poller.stores["shop"]
    store.active.clear()  # nothing due: the scrape's own time is the discovery wait alone
    time.sleep(1.1)  # a task file is looked at once a second at most
    started = time.perf_counter()
    poller.refresh(2.0)
    scrape = time.perf_counter() - started
    with poller.cond:
        read = len(store.tasks) - watched_after
    poller.stop()
    name = f"{lines:,}-line task file"
    return [
        [name, f"first reading ({watched:,} tasks watched)", seconds_text(first)],
        [
            name,
            "RSS of this process: before / peak after the first reading",
            f"{rss_before:.0f} / {rss_first:.0f} MiB",
        ],
        [name, f"one appended line read and watched ({watched_after:,} tasks)", ms(one, 2)],
        [
            name,
            f"a scrape (2 s budget) while {more:,} appended lines are read "
            f"({read:,} of them watched when it answered)",
            ms(scrape),
        ],
    ]


FILE_SCENARIOS: list[tuple[str, Callable[[Path, int], list[Row]]]] = [
    ("symlink loop", symlink_loop),
    ("million lines", million_lines),
]


# -- report ---------------------------------------------------------------------------------


def ms(seconds: float, digits: int = 0) -> str:
    return f"{seconds * 1000:,.{digits}f} ms" if seconds == seconds else "n/a"


def seconds_text(value: float) -> str:
    return f"{value:.2f} s" if value == value else "never"


def failures(counter: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counter.items())) or "none"


def server_table(results: list[Figures]) -> str:
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
        "scrape max",
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
            ms(max(f.scrapes, default=float("nan"))),
            failures(f.scrape_failures),
            f"{f.rss_before:.0f} MiB",
            f"{f.rss_max:.0f} MiB",
            failures(f.abuse),
        ]
        for f in results
    ]
    return markdown_table(header, rows)


def start_table(start: Start, figures: Figures) -> str:
    def spread(values: list[float]) -> str:
        if not values:
            return "none answered"
        return (
            f"{len(values)}: p50 {ms(percentile(values, 50))}, p99 {ms(percentile(values, 99))}, "
            f"max {ms(max(values))}, {sum(1 for v in values if v > 0.1)} > 100 ms"
        )

    rows = [
        ["server answers (first HTTP answer, any status)", seconds_text(start.answered)],
        ["`/-/healthy` answers 200", seconds_text(start.healthy)],
        ["`/-/ready` answers 200", seconds_text(start.ready)],
        ["probes refused before the server listened", str(start.refused)],
        ["probes answered 200 before ready", spread(start.during_read)],
        ["probes answered 200 after ready", spread(start.after_ready)],
        [
            "first scrape (sent at the first answer, 10 s timeout header)",
            f"{seconds_text(start.first_scrape)} ({start.first_scrape_status})",
        ],
        [
            "RSS at the first answer / peak",
            f"{figures.rss_before:.0f} / {figures.rss_max:.0f} MiB",
        ],
    ]
    return markdown_table(["after the process started", "figure"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks watched (10000)")
    parser.add_argument(
        "--seconds", type=float, default=15.0, help="measured per server scenario (15)"
    )
    parser.add_argument(
        "--lines", type=int, default=1_000_000, help="lines of the huge task id file (1000000)"
    )
    names = [name for name, _, _ in SCENARIOS] + [HUGE_START] + [n for n, _ in FILE_SCENARIOS]
    parser.add_argument(
        "--only", action="append", choices=names, help="run only this scenario (repeatable)"
    )
    add_output_flags(parser)
    args = parser.parse_args(argv)
    chosen = set(args.only or names)
    results: list[Figures] = []
    for name, scenario, auth in SCENARIOS:
        if name not in chosen:
            continue
        with tempfile.TemporaryDirectory() as tmp, exporter(args.tasks, Path(tmp), auth) as target:
            results.append(measure(target, name, scenario, args.seconds))
        print(f"  {name} measured", file=sys.stderr)
    start: tuple[Figures, Start] | None = None
    if HUGE_START in chosen:
        with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
            start = huge_task_file(args.lines, args.seconds, Path(tmp))
        results.append(start[0])
        print(f"  {HUGE_START} measured", file=sys.stderr)
    file_rows: list[Row] = []
    for name, scenario_ in FILE_SCENARIOS:
        if name not in chosen:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
            file_rows += scenario_(Path(tmp), args.lines)
        print(f"  {name} measured", file=sys.stderr)
    parts = []
    if results:
        parts += [
            "### Server",
            "",
            f"The exporter as a child process; {args.tasks:,} tasks known from a state file "
            f"(on the simulator, nothing due) except in `{HUGE_START}`, where one store "
            f"watches a task id file of {args.lines:,} lines. During {args.seconds:g} s per "
            f"scenario: probes every {PROBE_EVERY * 1000:.0f} ms (`/-/healthy` and "
            "`/-/ready` in turn, a new connection each), a gzip OpenMetrics scrape every "
            f"{SCRAPE_EVERY:.0f} s on one kept-alive connection (10 s scrape timeout "
            "header), RSS sampled every 0.2 s. Probe times count probes answered 200; a "
            "refused connection or another status is a probe failure; in "
            f"`{HUGE_START}` the window starts with the process and ends {args.seconds:g} s "
            "after `/-/ready`, and RSS before is the RSS at the server's first answer. Bounds "
            "(docs/design.md): probes within 100 ms, RSS under 150 MB with 60 "
            "non-reading clients.",
            "",
            server_table(results),
            "",
        ]
    if start is not None:
        parts += [
            f"### Start with a {args.lines:,}-line task id file",
            "",
            "Probes start with the process; the first scrape is sent as soon as the "
            "server answers anything. Times are after the process started.",
            "",
            start_table(start[1], start[0]),
            "",
        ]
    if file_rows:
        parts += [
            "### Files",
            "",
            "In this process, on the exporter's own classes (`expand_task_id_files`, `Poller`).",
            "",
            markdown_table(["scenario", "figure", "value"], file_rows),
            "",
        ]
    emit(Report("abuse", "Abuse", "\n".join(parts)), parser, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
