"""The one state of a task on the pages, and the order the pages list them in.

:func:`classify` decides (docs/design.md, "Status pages"); :data:`PROBLEMS_FIRST` is the
order of the listings and of the summary's columns: what needs a person comes first.
"""

from __future__ import annotations

import math

from exporter.model import TaskRecord

NOT_POLLED = "not_polled"
IN_PROGRESS = "in_progress"
STUCK = "stuck"
COMPLETED = "completed"
COMPLETED_WITH_FAILURES = "completed_with_failures"
FAILING = "failing"
UNKNOWN_STATUS = "unknown_status"
STATES = (
    NOT_POLLED,
    IN_PROGRESS,
    STUCK,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    FAILING,
    UNKNOWN_STATUS,
)
#: The listing order: problems first, then what is moving, then what is done.
PROBLEMS_FIRST = (
    FAILING,
    STUCK,
    UNKNOWN_STATUS,
    COMPLETED_WITH_FAILURES,
    IN_PROGRESS,
    NOT_POLLED,
    COMPLETED,
)
#: A state's place in :data:`PROBLEMS_FIRST`.
RANK = {state: rank for rank, state in enumerate(PROBLEMS_FIRST)}
#: States a store is listed first for in the summary.
PROBLEMS = frozenset({FAILING, STUCK, UNKNOWN_STATUS, COMPLETED_WITH_FAILURES})


def finite(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None."""
    if value is None or not math.isfinite(value):
        return None
    return value


def age_seconds(since: float | None, now: float) -> float | None:
    """Seconds from ``since`` to ``now`` (at least 0); None when either is not finite."""
    since = finite(since)
    if since is None or not math.isfinite(now):
        return None
    return max(now - since, 0.0)


def classify(task: TaskRecord, stuck_after: float, now: float) -> str:
    """The one state of a task; ``failing`` wins when several apply."""
    if not task.poll_success and task.last_code is not None:
        return FAILING
    snap = task.snapshot
    if snap is None:
        return NOT_POLLED
    if snap.status == 0:
        return COMPLETED_WITH_FAILURES if snap.failed > 0 else COMPLETED
    if snap.status != 1:
        return UNKNOWN_STATUS
    age = age_seconds(task.last_progress, now)
    if age is not None and age >= stuck_after:
        return STUCK
    return IN_PROGRESS


def stuck_at(task: TaskRecord, stuck_after: float) -> float:
    """When an in-progress task turns stuck if nothing changes (inf: never)."""
    since = finite(task.last_progress)
    if since is None:
        return math.inf
    return since + stuck_after
