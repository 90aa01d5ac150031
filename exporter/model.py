"""The in-memory model every part shares: task data, task records, store views.

The client produces :class:`TaskSnapshot` values, the poller keeps :class:`TaskRecord` per
watched task and hands out :class:`StoreView` copies; the collector and the status pages
read only these types, so they depend on neither the client nor the poller (docs/design.md,
"Module map").
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

# The ``code`` label values that are not an HTTP status.
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
INVALID_RESPONSE = "invalid_response"
# The largest integer a float holds exactly (2^53): task counts above it are invalid.
MAX_EXACT_INTEGER = 2**53
# Failed files kept per task for the status page, the JSON API and the logs.
MAX_KEPT_FAILURES = 1000

ERROR_CODES = (
    *("400", "401", "403", "404", "429", "500", "502", "503", "504"),
    *(TIMEOUT, CONNECTION_ERROR, INVALID_RESPONSE),
)
SKIP_REASONS = ("rate_limited", "backoff", "deadline")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True, slots=True)
class FailedFile:
    """One entry of ``failure_list``, reduced to what a person needs to act on it."""

    origin_link: str
    reason: str


# ---- the per-task fields, each declared once --------------------------------------------
#
# Every per-task value is one dataclass field below, and its metadata says everything else
# about it: the gauge it feeds, its state-file key, its JSON key (docs/design.md, "The
# model"). The metric families, the state file and the JSON derive from
# :data:`TASK_FIELDS`; the /metrics cache compares task records by identity. Adding a
# field is one declaration here, plus its parsing in the client (for API data).

Kind = Literal["count", "time", "flag", "code", "text", "failures", "labels"]
Shown = Literal["data", "always", "completed", "known"]


@dataclass(frozen=True, slots=True)
class Spec:
    """How one per-task field is exported, kept and shown.

    ``kind`` names its codec: ``count`` (an integer from 0 to 2^53), ``time`` (Unix
    seconds or None), ``flag`` (bool), ``code`` (a short string or None), ``text``,
    ``failures`` (failed files), ``labels`` (context labels). ``gauge``/``help``: the
    per-task gauge it feeds, exported always, once the task has data, once it is
    completed, or while the value is known (not None) (``shown``). ``state``/``json``:
    its key in the state file and in the JSON (None: not there). A field of
    :class:`TaskSnapshot` lives under ``data`` in the JSON.
    """

    kind: Kind
    gauge: str | None = None
    help: str = ""
    shown: Shown = "data"
    state: str | None = None
    json: str | None = None


def per_task(default: Any, kind: Kind, **spec: Any) -> Any:
    """A dataclass field declared with its :class:`Spec` (the one place a field is named)."""
    return field(default=default, metadata={"spec": Spec(kind, **spec)})


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """The parsed state of one upload task as the API last reported it."""

    total: int = per_task(
        0, "count", gauge="shoplazza_upload_task_files",
        help="Files in the upload task (the API's total).", state="total", json="total",
    )  # fmt: skip
    finished: int = per_task(
        0, "count", gauge="shoplazza_upload_task_files_finished",
        help="Files of the upload task processed so far.", state="finished", json="finished",
    )  # fmt: skip
    succeeded: int = per_task(
        0, "count", gauge="shoplazza_upload_task_files_succeeded",
        help="Files stored successfully (success_list length).",
        state="succeeded", json="succeeded",
    )  # fmt: skip
    failed: int = per_task(
        0, "count", gauge="shoplazza_upload_task_files_failed",
        help="Files that failed (failure_list length).", state="failed", json="failed",
    )  # fmt: skip
    status: int = per_task(
        1, "count", gauge="shoplazza_upload_task_status",
        help="Raw task status: 0 completed, 1 in progress.", state="status", json="status",
    )  # fmt: skip
    failures: tuple[FailedFile, ...] = per_task(
        (), "failures", state="failures", json="failed_files"
    )

    @property
    def completed(self) -> bool:
        """True when the API reports ``status`` 0."""
        return self.status == 0

    @property
    def progress_ratio(self) -> float:
        """``finished/total``, capped at 1; when total is 0, 1 if completed else 0."""
        if self.total <= 0:
            return 1.0 if self.completed else 0.0
        # The API may report finished > total: exported as is, but a ratio above 1 means
        # nothing (docs/design.md, "Values from outside").
        return min(self.finished / self.total, 1.0)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What the exporter knows of one watched task: an immutable record, replaced whole on
    every change, so a reader may cache on its identity."""

    store: str
    task_id: str
    snapshot: TaskSnapshot | None = None
    last_progress: float | None = per_task(
        None, "time", gauge="shoplazza_upload_task_last_progress_timestamp_seconds",
        help="Unix time when finished or status last changed (first sight counts).",
        state="last_progress", json="last_progress_timestamp",
    )  # fmt: skip
    last_success: float | None = per_task(
        None, "time", gauge="shoplazza_upload_task_last_success_timestamp_seconds",
        help="Unix time of the last successful poll of the task.",
        state="last_success", json="last_success_timestamp",
    )  # fmt: skip
    completed_at: float | None = per_task(
        None, "time", gauge="shoplazza_upload_task_completed_timestamp_seconds",
        help="Unix time the task was first seen completed (only for completed tasks).",
        shown="completed", state="completed_at", json="completed_timestamp",
    )  # fmt: skip
    estimated_completion: float | None = per_task(
        None, "time", gauge="shoplazza_upload_task_estimated_completion_timestamp_seconds",
        help="Unix time the task is expected to complete, from its progress so far "
        "(absent without an estimate).",
        shown="known", state="estimated_completion", json="estimated_completion_timestamp",
    )  # fmt: skip
    poll_success: bool = per_task(
        False, "flag", gauge="shoplazza_upload_task_poll_success",
        help="1 if the last poll of this task succeeded, else 0.",
        shown="always", state="poll_success", json="poll_success",
    )  # fmt: skip
    last_code: str | None = per_task(None, "code", state="last_code", json="last_code")
    last_error_code: str | None = per_task(
        None, "code", state="last_error_code", json="last_error_code"
    )
    last_error: str = per_task("", "text", state="last_error", json="last_error")
    # Context labels (a task_ids entry or a task file line); shown by the info gauge.
    labels: tuple[tuple[str, str], ...] = per_task((), "labels", json="labels")
    # Where the task came from: "config" (task_ids), "file" (task_id_files) or "api" (the
    # task API, docs/task-api.md); set again from those sources at every start.
    source: str = per_task("config", "text", json="source")
    # Restored from a state file that lacked one of the snapshot's fields (written by an
    # older version): fetched once more even when completed, so no field stays at its
    # default for good.
    refetch: bool = False

    @property
    def completed(self) -> bool:
        """The API reported the task completed (and its data is whole)."""
        return self.snapshot is not None and self.snapshot.completed and not self.refetch


@dataclass(frozen=True, slots=True)
class TaskField:
    """One declared per-task field: its name, its owner, its default and its :class:`Spec`."""

    name: str
    on_snapshot: bool  # a field of TaskSnapshot (API data), else of TaskRecord
    default: Any
    spec: Spec

    def get(self, task: TaskRecord) -> Any:
        """The field's value in ``task`` (the default when it has no data yet)."""
        if self.on_snapshot:
            return self.default if task.snapshot is None else getattr(task.snapshot, self.name)
        return getattr(task, self.name)


def _declared(cls: type, on_snapshot: bool) -> tuple[TaskField, ...]:
    return tuple(
        TaskField(f.name, on_snapshot, f.default, f.metadata["spec"])
        for f in fields(cls)
        if "spec" in f.metadata
    )


#: Every per-task field in declaration order: the snapshot's (API data), then the task's.
TASK_FIELDS: tuple[TaskField, ...] = (*_declared(TaskSnapshot, True), *_declared(TaskRecord, False))


@dataclass(frozen=True, slots=True)
class StoreView:
    """A consistent copy of one store for rendering."""

    name: str
    tasks: tuple[TaskRecord, ...]
    requests: tuple[tuple[str, int], ...]
    errors: tuple[tuple[str, int], ...]
    skipped: tuple[tuple[str, int], ...]
    buckets: tuple[int, ...]
    duration_count: int
    duration_sum: float
    stuck_after: float = 900.0
    registered: int = 0  # tasks registered through the task API (docs/task-api.md)


@dataclass
class ReloadStatus:
    """Outcome of the last configuration (re)load."""

    successful: bool = False
    last_success: float = 0.0


@dataclass(frozen=True)
class ExporterView:
    """Everything a scrape or a status page shows, copied out of the running exporter.

    The web part reads the exporter only through this (and ``refresh``, ``reload``,
    ``ready``): docs/design.md, "The read path".
    """

    stores: tuple[StoreView, ...]
    now: float  # Unix time the view was taken
    version: str
    reload: ReloadStatus
    shard: int = 0
    total_shards: int = 1
    stores_owned: int = 0  # configured stores this process serves
    stores_other: int = 0  # configured stores another shard serves
    store_files_invalid: int = 0
    state_file_ok: bool | None = None  # None: no state_file configured
    web_config_ok: bool | None = None  # None: no --web.config.file
    # Task API requests answered: ((method, code), count) pairs (docs/task-api.md).
    task_api_requests: tuple[tuple[tuple[str, str], int], ...] = ()
