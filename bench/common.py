"""Shared pieces of the benchmarks: the workload, percentiles, tables, the report.

The sped-up clock is :class:`exporter.clock.ScaledClock`: shared by the simulator's leaky
bucket and the exporter's poller, it lets an hour of polling run in a minute. Waits on it
are simulated faithfully; CPU work is not sped up, so a millisecond of real work counts as
``speed`` milliseconds of simulated time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

#: Access token the benchmark simulators accept and the exporter sends.
TOKEN = "bench-token-not-a-secret"
#: Environment variable the generated configuration reads the token from.
TOKEN_ENV = "BENCH_SHOPLAZZA_TOKEN"
#: Unix time the scaled clocks start at.
WALL_START = 1_800_000_000.0
ROOT = Path(__file__).resolve().parent.parent
#: Where the figures live: one section per benchmark, between markers (see ``section``).
PERFORMANCE_MD = ROOT / "docs" / "performance.md"


@dataclass(frozen=True)
class Workload:
    """Task ids in configuration order and which of them are in progress."""

    ids: tuple[str, ...]
    in_progress: frozenset[str]

    @property
    def completed(self) -> int:
        """How many tasks are completed."""
        return len(self.ids) - len(self.in_progress)


def make_workload(in_progress: int, completed: int, seed: int = 20240601) -> Workload:
    """Random 24-hex-digit task ids (like Shoplazza's), sorted; in-progress ones at random.

    Sorting random ids spreads the in-progress tasks through the configuration order,
    which is the order the exporter first fetches them in and the naive strategy submits
    them in.
    """
    rng = random.Random(seed)
    ids: set[str] = set()
    while len(ids) < in_progress + completed:
        ids.add(f"{rng.getrandbits(96):024x}")
    ordered = sorted(ids)
    busy = frozenset(rng.sample(ordered, in_progress))
    return Workload(tuple(ordered), busy)


def config_text(url: str, ids: Iterable[str], **keys: object) -> str:
    """A one-store (``shop``) exporter configuration pointing at ``url``, as YAML."""
    lines = [
        "stores:",
        "  - name: shop",
        f"    base_url: {url}",
        f"    access_token_env: {TOKEN_ENV}",
        f"    task_ids: {json.dumps(list(ids))}",  # JSON is YAML; quoted ids stay strings
    ]
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table with padded columns (first column left, others right aligned)."""
    body = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * widths[0], *("-" * (w - 1) + ":" for w in widths[1:])]
    return "\n".join([line(body[0]), line(rule), *(line(row) for row in body[1:])])


def fmt_int(value: float) -> str:
    """A count with thousands separators."""
    return f"{round(value):,}"


def fmt_seconds(value: float) -> str:
    """Seconds with a precision that suits their size; "n/a" for NaN."""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "never"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 100:
        return f"{value:.1f} s"
    return f"{value:,.0f} s"


@dataclass(frozen=True)
class Report:
    """What a benchmark found: its module name, the section's title, and markdown.

    ``body`` holds the set-up in words and the tables; headings in it are level 3, under
    the section's level-2 ``title``. A ``variant`` (``"tls"``) gets a section of its own.
    """

    bench: str  # the module in bench/: "fleet" for bench/fleet.py
    title: str
    body: str
    variant: str = ""

    @property
    def key(self) -> str:
        """The section's name in its markers: ``fleet``, ``fleet-tls``."""
        return f"{self.bench}-{self.variant}" if self.variant else self.bench


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """``--markdown`` and ``--write-docs``, the same for every benchmark."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "--markdown",
        action="store_true",
        help="print the results as this benchmark's section of docs/performance.md "
        "(heading, command, date, tables)",
    )
    group.add_argument(
        "--write-docs",
        action="store_true",
        help="--markdown, and replace this benchmark's section in docs/performance.md",
    )


def _commit() -> str:
    """The checked-out commit, "+ local changes" when the measured code differs; "" without git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "exporter", "bench", "pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + (" + local changes" if dirty else "")


def command_line(name: str, argv: Sequence[str]) -> str:
    """The command that ran benchmark ``name`` with ``argv``, as a shell would take it."""
    return shlex.join([".venv/bin/python", "-m", f"bench.{name}", *argv])


def section(
    report: Report, argv: Sequence[str], changed: Sequence[str] = (), now: datetime | None = None
) -> str:
    """The report as a section of docs/performance.md, markers included.

    ``changed`` names the options whose values differ from the defaults: a smaller (or
    other) run than the default one says so.
    """
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    commit = _commit()
    machine = (
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
        + (f", commit {commit}" if commit else "")
    )
    return "\n".join(
        [
            f"<!-- bench:{report.key} -->",
            f"## {report.title}",
            "",
            f"Command: `{command_line(report.bench, argv)}`",
            "",
            f"Date: {when} ({machine}).",
            "",
            *(
                [
                    f"Not the default run: {', '.join(changed)} differ from their defaults "
                    f"(`python -m bench.{report.bench} --help`).",
                    "",
                ]
                if changed
                else []
            ),
            report.body.strip(),
            "",
            f"<!-- /bench:{report.key} -->",
        ]
    )


def replace_section(document: str, name: str, text: str) -> str:
    """``document`` with the section of benchmark ``name`` replaced by ``text``.

    The section runs from ``<!-- bench:NAME -->`` to ``<!-- /bench:NAME -->``; a document
    without one gets ``text`` appended at its end.
    """
    pattern = re.compile(
        rf"^<!-- bench:{re.escape(name)} -->$.*?^<!-- /bench:{re.escape(name)} -->$",
        re.MULTILINE | re.DOTALL,
    )
    if pattern.search(document):
        return pattern.sub(lambda _: text, document, count=1)
    return document.rstrip("\n") + "\n\n" + text + "\n"


def emit(
    report: Report,
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    argv: Sequence[str] | None,
) -> None:
    """Print the report (as a docs section with ``--markdown``); write it with ``--write-docs``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not (args.markdown or args.write_docs):
        print(f"# {report.title} (bench.{report.bench})\n\n{report.body.strip()}")
        return
    defaults = vars(parser.parse_args([]))
    changed = [
        "--" + key.replace("_", "-")
        for key, value in vars(args).items()
        if key not in ("markdown", "write_docs") and value != defaults.get(key)
    ]
    text = section(report, argv, changed)
    print(text)
    if args.write_docs:
        old = PERFORMANCE_MD.read_text(encoding="utf-8") if PERFORMANCE_MD.exists() else ""
        PERFORMANCE_MD.write_text(replace_section(old, report.key, text), encoding="utf-8")
        print(f"wrote section {report.key} of {PERFORMANCE_MD}", file=sys.stderr)
