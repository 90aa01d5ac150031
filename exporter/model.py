"""The in-memory model every part shares: task data, task state, store views.

The client produces :class:`TaskSnapshot` values, the poller keeps :class:`TaskState` per
watched task and hands out :class:`StoreView` copies; the collector and the status pages
read only these types, so they depend on neither the client nor the poller (docs/design.md,
"Module map").
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """The parsed state of one upload task as the API last reported it."""

    total: int
    finished: int
    status: int
    succeeded: int
    failed: int
    failures: tuple[FailedFile, ...] = ()

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


@dataclass(slots=True)
class TaskState:
    """What the exporter knows of one watched task."""

    store: str
    task_id: str
    snapshot: TaskSnapshot | None = None
    poll_success: bool = False
    last_code: str | None = None
    last_error_code: str | None = None
    last_error: str = ""
    last_attempt: float | None = None  # monotonic start of the last request
    last_success: float | None = None  # Unix time
    last_progress: float | None = None  # Unix time
    completed_at: float | None = None  # Unix time
    attempts: int = 0  # finished attempts
    queued: bool = False
    in_flight: bool = False
    labels: tuple[tuple[str, str], ...] = ()  # context labels (task_ids entry or task file)

    @property
    def pending(self) -> bool:
        """Queued or in flight."""
        return self.queued or self.in_flight

    @property
    def completed(self) -> bool:
        """The API reported the task completed."""
        return self.snapshot is not None and self.snapshot.completed


@dataclass(frozen=True, slots=True)
class StoreView:
    """A consistent copy of one store for rendering."""

    name: str
    tasks: tuple[TaskState, ...]
    requests: tuple[tuple[str, int], ...]
    errors: tuple[tuple[str, int], ...]
    skipped: tuple[tuple[str, int], ...]
    buckets: tuple[int, ...]
    duration_count: int
    duration_sum: float
    stuck_after: float = 900.0
    # Grows whenever anything this view shows changes; -1: not tracked (never cache on it).
    revision: int = -1


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
