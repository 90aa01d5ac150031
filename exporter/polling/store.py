"""One store as the poller keeps it: its tasks, queue, budget (token bucket, 429 pause),
counters, and the poll intervals of its tasks.

These are plain values the poller keeps under its lock (docs/design.md, "The scheduler"):
:class:`TokenBucket` says when the next request of a store may start, :class:`StoreStats`
counts what the requests yielded, :func:`poll_interval` is a task's interval after its
consecutive failures and :func:`pause_after_429` the pause a 429 asks for.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from exporter.config import StoreConfig
from exporter.config.watch import TaskFiles
from exporter.model import DURATION_BUCKETS, ERROR_CODES, SKIP_REASONS, StoreView, TaskRecord
from exporter.polling.client import StoreClient
from exporter.polling.estimate import Progress

#: Longest interval a failing task backs off to, unless ``min_poll_interval`` is longer.
MAX_BACKOFF = 300.0
#: Bounds of the pause after a 429, whatever ``Retry-After`` says.
MIN_PAUSE = 1.0
MAX_PAUSE = 600.0


def poll_interval(min_poll_interval: float, failures: int) -> float:
    """Seconds between polls of a task after ``failures`` consecutive failed polls.

    ``min_poll_interval`` x 2^(failures-1), at most :data:`MAX_BACKOFF` (or
    ``min_poll_interval`` when that is longer); ``min_poll_interval`` without failures.
    """
    if failures <= 0:
        return min_poll_interval
    cap = max(MAX_BACKOFF, min_poll_interval)
    # 2^(failures-1) is bounded before multiplying: a task failing for days must not
    # overflow a float (2^1100), and 2^30 x any positive interval is already over the cap.
    return min(min_poll_interval * float(2 ** min(failures - 1, 30)), cap)


def pause_after_429(retry_after: float | None) -> float:
    """Seconds a store pauses after a 429: ``Retry-After`` clamped to [1 s, 10 min]."""
    if retry_after is None or retry_after != retry_after:  # absent or NaN
        return MIN_PAUSE
    return min(max(retry_after, MIN_PAUSE), MAX_PAUSE)


class TokenBucket:
    """At most ``burst + rate * t`` starts in any window of t seconds, and a 429 pause."""

    __slots__ = ("burst", "paused_until", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now
        self.paused_until = 0.0

    def configure(self, rate: float, burst: int) -> None:
        """Adopt new settings; tokens already earned stay, up to the new burst."""
        self.rate = rate
        self.burst = float(burst)
        self.tokens = min(self.tokens, self.burst)

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill, up to ``burst``."""
        elapsed = max(now - self.stamp, 0.0)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.stamp = now

    def next_start(self, now: float) -> float:
        """The earliest time a request could start (``now`` when it can start at once)."""
        self.refill(now)
        start = max(now, self.paused_until)
        if self.tokens < 1:
            start = max(start, now + (1 - self.tokens) / self.rate)
        return start

    def take(self) -> None:
        """Spend one token (after :meth:`next_start` said now)."""
        self.tokens -= 1

    def paused(self, now: float) -> bool:
        """True during a 429 pause."""
        return self.paused_until > now

    def pause(self, now: float, seconds: float) -> None:
        """Start no request before ``now + seconds`` (a longer pause already set stays)."""
        self.paused_until = max(self.paused_until, now + seconds)

    def allowance(self, now: float) -> int:
        """Requests that could start at ``now`` on the balance alone: 0 while paused."""
        if self.paused(now):
            return 0
        self.refill(now)
        return int(self.tokens)

    def short_reason(self, now: float) -> str | None:
        """Why no request can start now: ``backoff``, ``rate_limited``, or None."""
        if self.paused(now):
            return "backoff"
        self.refill(now)
        if self.tokens < 1:
            return "rate_limited"
        return None


@dataclass(slots=True)
class StoreStats:
    """A store's counters and histogram; they survive reloads while the store stays."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CODES, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0

    def observe(self, code: str, ok: bool, duration: float) -> None:
        """Count one request."""
        self.requests[code] = self.requests.get(code, 0) + 1
        if not ok:
            self.errors[code] = self.errors.get(code, 0) + 1
        self.duration_count += 1
        self.duration_sum += duration
        for i, bound in enumerate(DURATION_BUCKETS):
            if duration <= bound:
                self.buckets[i] += 1


class Watched:
    """One watched task: its published state and what scheduling needs."""

    __slots__ = (
        "attempts",
        "by_prediction",
        "failures",
        "in_flight",
        "last_attempt",
        "predicted",
        "priority_until",
        "progress",
        "queued",
        "rank",
        "record",
        "timed",
    )

    def __init__(self, record: TaskRecord) -> None:
        # Published: never changed in place once handed out, replaced on every change.
        self.record = record
        self.queued = False
        self.in_flight = False
        self.last_attempt: float | None = None  # monotonic start of the last request
        self.attempts = 0  # finished attempts
        self.failures = 0  # consecutive failed polls
        self.rank: tuple[float, int] = (0.0, 0)  # queue order: last attempt, then arrival
        # Predictive polling (docs/design.md, "Predictive polling"): the progress history
        # (rebuilt from the record after a restart; None until a poll sees the task in
        # progress, and again once it is completed: a fleet's tasks are mostly completed),
        # the live entry on the store's timed heap (when, seq, predicted?), predicted polls
        # since the last regular one, whether the request in flight is a predicted one, and
        # until when someone waits for it.
        snap = record.snapshot
        self.progress: Progress | None = (
            Progress.seeded(record.last_progress, snap.finished, snap.total)
            if snap is not None and not record.completed
            else None
        )
        self.timed: tuple[float, int, bool] | None = None
        self.predicted = 0
        self.by_prediction = False
        self.priority_until = float("-inf")

    @property
    def pending(self) -> bool:
        """Queued or in flight."""
        return self.queued or self.in_flight


class Store:
    """One store's watched tasks, queue, budget, counters and cached view."""

    __slots__ = (
        "active",
        "backlog",
        "bucket",
        "client",
        "config",
        "files",
        "in_flight",
        "interest",
        "next_due",
        "queue",
        "ready",
        "removed",
        "stats",
        "tasks",
        "timed",
        "timer",
        "view",
    )

    def __init__(self, config: StoreConfig, client: StoreClient, now: float) -> None:
        self.config = config
        self.client = client
        self.tasks: dict[str, Watched] = {}
        self.active: dict[str, Watched] = {}  # not completed: the ones a scrape may fetch
        self.stats = StoreStats()
        self.queue: list[tuple[float, int, Watched]] = []
        # Polls at a set time, ahead of the queue: predicted completions and waited-for
        # tasks (when, seq, task); an entry is live while it is its task's ``timed``.
        self.timed: list[tuple[float, int, Watched]] = []
        self.interest = float("-inf")  # monotonic time of the last scrape that looked
        self.bucket = TokenBucket(config.requests_per_second, config.burst, now)
        self.in_flight = 0
        self.backlog = False  # due tasks left unqueued (Poller._refill queues them later)
        self.removed = False
        self.files: TaskFiles | None = None
        self.ready = False  # on the scheduler's ready queue
        self.timer: float | None = None  # when of its live timer heap entry
        self.view: StoreView | None = None
        # No task of the store is due before this (monotonic); -inf: look at every scrape.
        # Lets a steady scrape of a fleet skip the stores with nothing due at a glance.
        self.next_due = float("-inf")

    @property
    def name(self) -> str:
        """The store's name."""
        return self.config.name

    def push(self, task: Watched) -> None:
        """Queue ``task`` (already marked queued) at its rank."""
        heapq.heappush(self.queue, (*task.rank, task))

    def head(self) -> Watched | None:
        """The next queued task, dropping entries of tasks no longer queued at that rank."""
        queue = self.queue
        while queue and not (queue[0][2].queued and queue[0][:2] == queue[0][2].rank):
            heapq.heappop(queue)
        return queue[0][2] if queue else None

    def arm(self, task: Watched, when: float, seq: int, predicted: bool) -> None:
        """Poll ``task`` at ``when`` ahead of the queue; replaces its earlier timed poll."""
        task.timed = (when, seq, predicted)
        heapq.heappush(self.timed, (when, seq, task))

    def next_timed(self) -> float | None:
        """When the earliest live timed poll is due, dropping dead entries; None: none."""
        timed = self.timed
        while timed:
            when, seq, task = timed[0]
            live = task.timed is not None and task.timed[:2] == (when, seq)
            if live and not task.in_flight and self.active.get(task.record.task_id) is task:
                return when
            heapq.heappop(timed)  # replaced, in flight (it is being polled), completed, gone
            if live:
                task.timed = None
        return None

    def can_start_more(self, now: float) -> bool:
        """A task is queued or a timed poll is due, and ``max_concurrency`` is not reached."""
        if self.in_flight >= self.config.max_concurrency:
            return False
        if self.head() is not None:
            return True
        when = self.next_timed()
        return when is not None and when <= now

    def take(self, now: float) -> Watched:
        """The task to poll next (after :meth:`can_start_more`): a due timed poll first."""
        when = self.next_timed()
        if when is not None and when <= now:
            _, _, task = heapq.heappop(self.timed)
            assert task.timed is not None
            task.by_prediction = task.timed[2]
            task.timed = None
            task.queued = False  # its queue entry, if any, is dropped at the head
            return task
        self.head()
        _, _, task = heapq.heappop(self.queue)
        task.by_prediction = False
        return task
