"""Shared pieces of the benchmarks: the workload, percentiles, tables.

The sped-up clock is :class:`exporter.clock.ScaledClock`: shared by the simulator's leaky
bucket and the exporter's poller, it lets an hour of polling run in a minute. Waits on it
are simulated faithfully; CPU work is not sped up, so a millisecond of real work counts as
``speed`` milliseconds of simulated time.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Access token the benchmark simulators accept and the exporter sends.
TOKEN = "bench-token-not-a-secret"
#: Environment variable the generated configuration reads the token from.
TOKEN_ENV = "BENCH_SHOPLAZZA_TOKEN"
#: Unix time the scaled clocks start at.
WALL_START = 1_800_000_000.0


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
