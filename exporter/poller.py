"""Due tasks, per-store budget, single-flight and the scrape deadline (contract section 6).

A scrape calls :meth:`Poller.refresh`: every watched task that is due is put on its store's
queue (least recently attempted first), and the scrape waits until those tasks have been
fetched or its deadline passes. Each store has one dispatcher thread that starts queued
requests while the store's token bucket, ``max_concurrency`` and any 429 pause allow, so the
budget is shared by all scrapes and a refresh goes on in the background after the scrape
that started it has answered. A task is queued or in flight at most once (single-flight).
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.client import FetchResult, StoreClient
from exporter.clock import Clock, SystemClock
from exporter.config import Config, StoreConfig
from exporter.discovery import TaskFiles
from exporter.model import (
    DURATION_BUCKETS,
    ERROR_CODES,
    SKIP_REASONS,
    StoreView,
    TaskState,
)

log = logging.getLogger("exporter.poller")


@dataclass
class StoreStats:
    """A store's counters and histogram; they survive reloads while the store stays."""

    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_CODES, 0))
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_count: int = 0
    duration_sum: float = 0.0

    def observe(self, result: FetchResult) -> None:
        """Count one request."""
        self.requests[result.code] = self.requests.get(result.code, 0) + 1
        if not result.ok:
            self.errors[result.code] = self.errors.get(result.code, 0) + 1
        self.duration_count += 1
        self.duration_sum += result.duration
        for i, bound in enumerate(DURATION_BUCKETS):
            if result.duration <= bound:
                self.buckets[i] += 1


class Store:
    """One store's watched tasks, queue, budget and dispatcher."""

    def __init__(self, config: StoreConfig, client: StoreClient, now: float) -> None:
        self.config = config
        self.client = client
        self.tasks: dict[str, TaskState] = {}
        self.stats = StoreStats()
        self.queue: list[tuple[float, int, TaskState]] = []
        self.tokens = float(config.burst)
        self.token_time = now
        self.paused_until = 0.0
        self.in_flight = 0
        self.removed = False
        self.files: TaskFiles | None = None
        self.thread: threading.Thread | None = None

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill, up to ``burst``."""
        elapsed = max(now - self.token_time, 0.0)
        rate = self.config.requests_per_second
        self.tokens = min(float(self.config.burst), self.tokens + elapsed * rate)
        self.token_time = now

    def next_start(self, now: float) -> float:
        """The earliest time a queued request could start, concurrency aside."""
        self.refill(now)
        start = max(now, self.paused_until)
        if self.tokens < 1:
            start = max(start, now + (1 - self.tokens) / self.config.requests_per_second)
        return start

    def skip_reason(self, task: TaskState, now: float) -> str:
        """Why a due task is not fetched yet (contract: rate_limited, backoff, deadline)."""
        if task.in_flight:
            return "deadline"
        if self.paused_until > now:
            return "backoff"
        self.refill(now)
        if self.tokens < 1:
            return "rate_limited"
        return "deadline"


_CLIENT_KEYS = ("base_url", "token", "api_version", "timeout", "max_concurrency", "tls")


class Poller:
    """Keeps task state and fetches due tasks under each store's budget."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        client_factory: Callable[[StoreConfig], StoreClient] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self._client_factory = client_factory or StoreClient
        self._on_change = on_change
        self.cond = threading.Condition(threading.Lock())
        self.stores: dict[str, Store] = {}
        self.forget_after = 0.0
        # (store, task_id) -> state restored from the state file, used when a task appears.
        self.restored: dict[tuple[str, str], TaskState] = {}
        # (store, task_id) -> completion time of tasks dropped by forget_completed_after.
        self.forgotten: dict[tuple[str, str], float] = {}
        self._seq = itertools.count()
        self._stopped = False

    # ---- configuration -------------------------------------------------------------

    def apply_config(self, config: Config) -> None:
        """Watch what ``config`` lists; stores and tasks that stay keep their state."""
        with self.cond:
            self.forget_after = config.forget_completed_after
            now = self.clock.monotonic()
            wanted = {store.name: store for store in config.stores}
            for name in list(self.stores):
                if name not in wanted:
                    self.stores.pop(name).removed = True
            for name, store_config in wanted.items():
                store = self.stores.get(name)
                if store is None:
                    store = Store(store_config, self._client_factory(store_config), now)
                    self.stores[name] = store
                elif any(
                    getattr(store.config, key) != getattr(store_config, key) for key in _CLIENT_KEYS
                ):
                    store.client = self._client_factory(store_config)
                if store.config.burst != store_config.burst:
                    store.tokens = min(store.tokens, float(store_config.burst))
                store.config = store_config
                if store.files is None or store.files.patterns != store_config.task_id_files:
                    store.files = TaskFiles(
                        name, store_config.task_id_files, clock=self.clock.monotonic
                    )
                store.files.refresh(force=True)
                self._sync_tasks(store)
                if store.thread is None and not self._stopped:
                    store.thread = threading.Thread(
                        target=self._dispatch, args=(store,), name=f"dispatch-{name}", daemon=True
                    )
                    store.thread.start()
            self.cond.notify_all()
        self._changed()

    def _sync_tasks(self, store: Store) -> None:
        files = store.files.ids if store.files else frozenset()
        target = set(store.config.task_ids) | files
        for task_id in list(store.tasks):
            if task_id not in target:
                task = store.tasks.pop(task_id)
                task.queued = False  # the dispatcher drops it when it reaches the queue head
        for task_id in sorted(target):
            key = (store.config.name, task_id)
            if task_id in store.tasks or key in self.forgotten:
                continue
            restored = self.restored.pop(key, None)
            store.tasks[task_id] = restored or TaskState(store.config.name, task_id)
        for key in [k for k in self.forgotten if k[0] == store.config.name and k[1] not in target]:
            del self.forgotten[key]

    def restore(self, tasks: Iterable[TaskState], forgotten: dict[tuple[str, str], float]) -> None:
        """Seed state loaded from the state file (call before the first apply_config)."""
        with self.cond:
            for task in tasks:
                task.queued = task.in_flight = False
                task.last_attempt = None
                self.restored[(task.store, task.task_id)] = task
            self.forgotten.update(forgotten)

    # ---- scrape ----------------------------------------------------------------------

    def refresh(self, timeout: float) -> None:
        """Fetch due tasks, waiting at most ``timeout`` seconds; the rest go on in background."""
        with self.cond:
            now = self.clock.monotonic()
            deadline = now + timeout
            self._discover()  # ids added to task files are polled on this very scrape
            waiting: list[tuple[Store, TaskState, int]] = []
            for store in self.stores.values():
                interval = store.config.min_poll_interval
                for task in store.tasks.values():
                    if task.completed:
                        continue
                    due = task.last_attempt is None or now - task.last_attempt >= interval
                    if task.queued or (task.in_flight and due):
                        waiting.append((store, task, task.attempts))  # shared, not re-sent
                    elif due and not task.in_flight:
                        self._enqueue(store, task)
                        waiting.append((store, task, task.attempts))
            if waiting:
                self.cond.notify_all()
            while waiting:
                waiting = [w for w in waiting if w[1].attempts == w[2] and w[1].pending]
                now = self.clock.monotonic()
                if (
                    not waiting
                    or now >= deadline
                    or self._stopped
                    or self._hopeless(waiting, deadline, now)
                ):
                    break
                self.clock.wait(self.cond, deadline - now)
            now = self.clock.monotonic()
            for store, task, _ in waiting:
                reason = store.skip_reason(task, now)
                store.stats.skipped[reason] += 1

    def _hopeless(
        self, waiting: list[tuple[Store, TaskState, int]], deadline: float, now: float
    ) -> bool:
        """True when no waited-for request is in flight and none can start by the deadline."""
        for store, task, _ in waiting:
            if task.in_flight or store.next_start(now) < deadline:
                return False
        return True

    def _enqueue(self, store: Store, task: TaskState) -> None:
        priority = float("-inf") if task.last_attempt is None else task.last_attempt
        task.queued = True
        heapq.heappush(store.queue, (priority, next(self._seq), task))

    def _discover(self) -> None:
        for store in self.stores.values():
            if store.files is not None and store.files.refresh():
                self._sync_tasks(store)

    def _forget(self) -> None:
        if self.forget_after <= 0:
            return
        wall = self.clock.time()
        dropped = False
        for store in self.stores.values():
            for task_id, task in list(store.tasks.items()):
                done = task.completed_at
                if done is not None and task.completed and wall - done >= self.forget_after:
                    del store.tasks[task_id]
                    self.forgotten[(store.config.name, task_id)] = done
                    log.info(
                        "forgetting completed task", extra={"store": task.store, "task_id": task_id}
                    )
                    dropped = True
        if dropped:
            self._changed()

    # ---- dispatch --------------------------------------------------------------------

    def _dispatch(self, store: Store) -> None:
        with self.cond:
            while not self._stopped and not store.removed:
                now = self.clock.monotonic()
                timeout: float | None = None
                while store.queue and not store.queue[0][2].queued:
                    heapq.heappop(store.queue)  # dropped from the watch list meanwhile
                if store.queue and store.in_flight < store.config.max_concurrency:
                    start = store.next_start(now)
                    if start <= now:
                        _, _, task = heapq.heappop(store.queue)
                        store.tokens -= 1
                        store.in_flight += 1
                        task.queued = False
                        task.in_flight = True
                        task.last_attempt = now
                        threading.Thread(
                            target=self._fetch,
                            args=(store, store.client, task),
                            name=f"fetch-{store.config.name}",
                            daemon=True,
                        ).start()
                        continue
                    timeout = start - now
                self.clock.wait(self.cond, timeout)

    def _fetch(self, store: Store, client: StoreClient, task: TaskState) -> None:
        try:
            result = client.fetch(task.task_id)
        except Exception as exc:  # a bug must not wedge the task as in flight forever
            log.error("unexpected error while polling", extra={"store": task.store, "err": exc})
            result = FetchResult("connection_error", None, 0.0, f"internal error: {exc}")
        with self.cond:
            store.in_flight -= 1
            store.stats.observe(result)
            if result.code == "429":
                pause = result.retry_after if result.retry_after is not None else 1.0
                store.paused_until = max(store.paused_until, self.clock.monotonic() + pause)
                log.warning(
                    "rate limited by the API, pausing the store",
                    extra={"store": task.store, "seconds": round(pause, 3)},
                )
            self._record(task, result)
            self.cond.notify_all()
        self._changed()

    def _record(self, task: TaskState, result: FetchResult) -> None:
        repeated = task.last_code == result.code
        task.in_flight = False
        task.attempts += 1
        task.last_code = result.code
        task.poll_success = result.ok
        task.last_error = result.detail
        snapshot = result.snapshot
        if snapshot is None:
            task.last_error_code = result.code
            # The first failure with a given code is a warning; its repeats are debug noise.
            log.log(
                logging.DEBUG if repeated else logging.WARNING,
                "poll failed",
                extra={
                    "store": task.store,
                    "task_id": task.task_id,
                    "code": result.code,
                    "err": result.detail,
                },
            )
            return
        wall = self.clock.time()
        previous = task.snapshot
        task.last_success = wall
        if (
            previous is None
            or previous.finished != snapshot.finished
            or previous.status != snapshot.status
        ):
            task.last_progress = wall
        if snapshot.completed and task.completed_at is None:
            task.completed_at = wall
        elif not snapshot.completed:
            task.completed_at = None
        unlisted = snapshot.failed - len(snapshot.failures)
        if unlisted > 0 and (previous is None or previous.failed < snapshot.failed):
            log.warning(
                "more failed files than are kept: counted, not listed",
                extra={
                    "store": task.store,
                    "task_id": task.task_id,
                    "failed": snapshot.failed,
                    "listed": len(snapshot.failures),
                },
            )
        seen = set(previous.failures) if previous else set()
        for failure in snapshot.failures:
            if failure not in seen:
                seen.add(failure)
                log.warning(
                    "upload task file failed",
                    extra={
                        "store": task.store,
                        "task_id": task.task_id,
                        "origin_link": failure.origin_link,
                        "reason": failure.reason,
                    },
                )
        task.snapshot = snapshot

    # ---- reading -----------------------------------------------------------------------

    def view(self) -> list[StoreView]:
        """A consistent copy of every store, for the collector and the status pages."""
        with self.cond:
            # Forgetting only changes what is shown (completed tasks are never fetched), so
            # it happens here, where every scrape and status page reads memory.
            self._discover()
            self._forget()
            return [
                StoreView(
                    name=name,
                    tasks=tuple(copy.copy(t) for t in store.tasks.values()),
                    requests=tuple(sorted(store.stats.requests.items())),
                    errors=tuple(sorted(store.stats.errors.items())),
                    skipped=tuple(store.stats.skipped.items()),
                    buckets=tuple(store.stats.buckets),
                    duration_count=store.stats.duration_count,
                    duration_sum=store.stats.duration_sum,
                )
                for name, store in self.stores.items()
            ]

    def persistent_state(self) -> tuple[list[TaskState], dict[tuple[str, str], float]]:
        """Tasks with data, and forgotten tasks, for the state file."""
        with self.cond:
            tasks = [
                copy.copy(t)
                for store in self.stores.values()
                for t in store.tasks.values()
                if t.snapshot is not None
            ]
            tasks.extend(t for t in self.restored.values() if t.snapshot is not None)
            return tasks, dict(self.forgotten)

    def watched_keys(self) -> set[tuple[str, str]]:
        """(store, task_id) of every configured task of the stores served, forgotten included.

        The state file drops the entries of other tasks after a while (docs/design.md,
        "State file": pruning).
        """
        with self.cond:
            keys = {
                (name, task_id) for name, store in self.stores.items() for task_id in store.tasks
            }
            keys.update(key for key in self.forgotten if key[0] in self.stores)
            return keys

    def stop(self) -> None:
        """Stop dispatching; requests in flight are abandoned."""
        with self.cond:
            self._stopped = True
            self.cond.notify_all()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
