"""The per-task lines of /metrics, written directly (docs/design.md, "Exposition").

prometheus_client's encoders spend most of a second on 10,000 tasks building and escaping
samples one by one. The per-task gauges are most of a scrape, so they are written here as
the encoders would write them (labels sorted by name, values through prometheus_client's
``floatToGoString``, label values escaped the same way), a segment of tasks at a time, and
only when a task record of the segment was replaced (records are immutable: the cache
compares them by identity). ``tests/metrics/test_exposition.py``
checks the bytes against the encoders.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.metrics.families import (
    INFO_NAME,
    TASK_GAUGES,
    go_float,
    label_value,
    task_labels,
    task_values,
)
from exporter.model import TaskRecord

# Tasks per cached segment: a change re-renders at most this many tasks of a store.
SEGMENT = 64
TASK_NAMES = tuple(name for name, _ in TASK_GAUGES)


def escape(value: str) -> str:
    """A label value escaped as prometheus_client does (backslash, newline, double quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def render_segment(store: str, tasks: Sequence[TaskRecord]) -> tuple[bytes, ...]:
    """The lines of ``tasks`` for each family of ``TASK_GAUGES`` (b"" where none)."""
    lines: list[list[str]] = [[] for _ in TASK_NAMES]
    store_label = escape(label_value(store))
    names = TASK_NAMES
    for task in tasks:
        base = f'{{store="{store_label}",task_id="{escape(label_value(task.task_id))}"}} '
        for i, value in enumerate(task_values(task)):
            if value is None:
                continue
            text = go_float(value)
            if names[i] == INFO_NAME:
                labels = ",".join(
                    f'{k}="{escape(v)}"' for k, v in sorted(task_labels(store, task).items())
                )
                lines[i].append(f"{{{labels}}} {text}\n")
            else:
                lines[i].append(base + text + "\n")
    return tuple(
        (name + name.join(family)).encode("utf-8") if family else b""
        for name, family in zip(TASK_NAMES, lines, strict=True)
    )
