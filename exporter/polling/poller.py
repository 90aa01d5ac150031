"""Due tasks, per-store budget, single-flight and the scrape deadline (docs/design.md).

A scrape calls :meth:`Poller.refresh`: every watched task that is due is put on its store's
queue (least recently attempted first). The scrape waits for the due tasks the store's
budget allows when it starts (its token balance, outside any 429 pause), until they are
fetched or its deadline passes; the other due tasks are counted as skipped and fetched in
the background. Requests are started by :class:`~exporter.polling.scheduler.Scheduler` (one timer
heap, a bounded pool of fetch workers) while each store's token bucket, ``max_concurrency``
and any 429 pause allow. A task is queued or in flight at most once (single-flight).

Reading (:meth:`Poller.view`) only reads memory: task files are re-read and completed tasks
forgotten in :meth:`Poller.refresh` and on the scheduler's housekeeping timer. Each change
of what a store shows replaces the affected :class:`TaskRecord` (never changed in place once
handed out) and drops the store's cached view, so an unchanged store hands out the same
immutable view, and readers cache on its identity (docs/design.md, "The read path").
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

from exporter.clock import Clock, SystemClock
from exporter.config import Config, StoreConfig
from exporter.config.watch import TaskFiles
from exporter.jobs import OnDemand
from exporter.model import StoreView, TaskRecord
from exporter.polling.client import FetchResult, StoreClient
from exporter.polling.estimate import Progress
from exporter.polling.scheduler import FETCH_WORKERS, HOUSEKEEPING_PERIOD, Scheduler
from exporter.polling.store import Store, Watched, pause_after_429, poll_interval
from exporter.polling.transport import Transport

# A store with nothing due for this long closes its connections (see _release_if_idle).
IDLE_RELEASE = 60.0
# Seconds a store that left the configuration keeps its tasks' state and counters: if it
# comes back by then it goes on where it was (docs/design.md, "Rules for files").
DEPARTED_GRACE = 600.0
# Share of a scrape's time it may wait for the task files to be looked at.
DISCOVERY_SHARE = 0.5
# New ids from appended lines watched per hold of the lock: scrapes get it in between.
ADD_CHUNK = 2000
# Appended ids sorted in one call at most; more are added in file order (a sort of a
# million ids holds the GIL, and so the probes, for seconds).
SORT_AT_ONCE = 10_000
# Due tasks a store queues beyond its token balance at a time; more as the queue drains.
QUEUE_AHEAD = 256
# Predictive polling (docs/design.md, "Predictive polling"). A predicted poll lands this
# long after the estimated completion (an estimate is as often early as late)...
PREDICT_LAG = 0.5
# ... and, when the previous one came too early, at least RETRY_BASE x 2^(n-1) s after it.
RETRY_BASE = 1.0
# Predicted polls of a task between two regular ones, at most.
MAX_PREDICTED = 4
# Predicted polls are planned only this long after a scrape looked at the store: nothing
# is polled when nobody scrapes (or waits).
INTEREST = 120.0
# Seconds a task stays first in line after someone asked for it (Poller.prioritize).
PRIORITY_HOLD = 60.0

log = logging.getLogger("exporter.polling.poller")

_CLIENT_KEYS = ("base_url", "token", "api_version", "timeout", "max_concurrency", "tls")
_Labels = tuple[tuple[str, str], ...]
# Slack when comparing a store's next due time with now: a due check is never skipped for
# a rounding difference between ``last + interval`` and ``now - last``.
_EPSILON = 1e-6


def _labels(configured: _Labels | None, listed: _Labels | None) -> _Labels:
    """A task's context labels: its task file's, overridden by its ``task_ids`` entry's."""
    if not listed:
        return tuple(configured or ())
    if not configured:
        return tuple(listed)
    merged = dict(listed)
    merged.update(configured)
    return tuple(merged.items())


class Poller:
    """Keeps the record of every task and fetches due tasks under each store's budget."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        client_factory: Callable[[StoreConfig], StoreClient] | None = None,
        on_change: Callable[[], None] | None = None,
        workers: int = FETCH_WORKERS,
        housekeeping_every: float = HOUSEKEEPING_PERIOD,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        # One session and pool manager for every store (docs/design.md, "HTTP client").
        self.transport = Transport(pool_size=workers)
        self._client_factory = client_factory or functools.partial(
            StoreClient, transport=self.transport
        )
        self._on_change = on_change
        self._lock = threading.Lock()
        self.cond = threading.Condition(self._lock)  # scrapes wait here for their fetches
        self._discovery = threading.Lock()  # one task file reader at a time, off the lock
        self.stores: dict[str, Store] = {}
        self.forget_after = 0.0
        # (store, task_id) -> the record restored from the state file, used when a task appears.
        self.restored: dict[tuple[str, str], TaskRecord] = {}
        # (store, task_id) -> completion time of tasks dropped by forget_completed_after.
        self.forgotten: dict[tuple[str, str], float] = {}
        # Stores that left the configuration: (store, when it left); kept DEPARTED_GRACE s.
        self.departed: dict[str, tuple[Store, float]] = {}
        # Configured access tokens: a task file line equal to one is never a task id.
        self.secrets: frozenset[str] = frozenset()
        self._seq = itertools.count()
        self._stopped = False
        # The task API (docs/task-api.md): store -> task_id -> labels of registered tasks,
        # kept while their store is away; (store, task_id) -> requests waiting for it, and
        # the callback told (lock held) when a waited-for task was polled or dropped.
        self.registered: dict[str, dict[str, _Labels]] = {}
        # Stores with registrations that this process does not serve (they left the
        # configuration, or were in the state file only): since when; the registrations
        # are dropped DEPARTED_GRACE s later, as the store's state is.
        self._registrations_left: dict[str, float] = {}
        self.waited: dict[tuple[str, str], int] = {}
        self.on_task: Callable[[str, str], None] | None = None
        # False: no predicted polls, least recently polled first only (bench.completion
        # compares both; waited-for tasks still go first).
        self.predictive = True
        self.scheduler = Scheduler(
            self._lock,
            self.clock,
            fetched=self._fetched,
            housekeeping=self.housekeeping,
            changed=self._changed,
            workers=workers,
            housekeeping_every=housekeeping_every,
        )
        # Task files are read on a thread of their own: a scrape waits for them only so long.
        self._discoverer = OnDemand(self._discover, "discovery")
        self._watches_files = False
        self._first_read = 0  # the discovery run that reads the task files first (start)

    # ---- configuration -------------------------------------------------------------

    def apply_config(self, config: Config, *, read_files: bool = True) -> None:
        """Watch what ``config`` lists; stores and tasks that stay keep their state.

        ``read_files`` False (the start): task id files are not read here but by the
        discovery thread, which adds their ids a chunk at a time, so the exporter answers
        while a huge file is read (docs/design.md, "Rules for files"); see
        :meth:`files_read`.
        """
        with self._discovery:
            with self._lock:
                known = {name: store.files for name, store in self.stores.items()}
                known.update((name, gone.files) for name, (gone, _) in self.departed.items())
            files: dict[str, TaskFiles | None] = {}
            for store_config in config.stores:  # file reads, without the lock
                if not store_config.task_id_files:
                    files[store_config.name] = None  # a fleet's stores often list ids only
                    continue
                found = known.get(store_config.name)
                if found is None or found.patterns != store_config.task_id_files:
                    found = TaskFiles(
                        store_config.name,
                        store_config.task_id_files,
                        clock=self.clock.monotonic,
                        secrets=lambda: self.secrets,
                    )
                if read_files:
                    found.refresh(force=True)
                files[store_config.name] = found
            with self._lock:
                self._apply(config, files)
        if not read_files and self._watches_files:
            self._first_read = self._discoverer.request()
        self._changed()

    def files_read(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for the first reading of the task files; True if done."""
        return self._discoverer.wait(self._first_read, timeout)

    def _apply(self, config: Config, files: dict[str, TaskFiles | None]) -> None:
        self.forget_after = config.forget_completed_after
        now = self.clock.monotonic()
        wanted = {store.name: store for store in config.stores}
        for name in list(self.stores):
            if name not in wanted:
                gone = self.stores.pop(name)
                gone.removed = True
                gone.client.release()  # its host's idle connections, unless in use
                for watched in gone.tasks.values():
                    watched.queued = False
                self.departed[name] = (gone, now)  # not shown nor polled, but remembered
                log.info("store left the configuration", extra={"store": name})
        targets: dict[str, set[str]] = {}
        for name, store_config in wanted.items():
            store = self.stores.get(name)
            back = self.departed.pop(name, None) if store is None else None
            if back is not None:  # back within the grace: counters and tasks go on
                store = back[0]
                store.removed = False
                store.next_due = float("-inf")
                self.stores[name] = store
                self._touch(store)
            if store is None:
                store = Store(store_config, self._client_factory(store_config), now)
                self.stores[name] = store
                self._touch(store)
            else:
                if any(
                    getattr(store.config, key) != getattr(store_config, key) for key in _CLIENT_KEYS
                ):
                    store.client.release()  # the old host, when base_url changed
                    store.client = self._client_factory(store_config)
                if store.config != store_config:
                    self._touch(store)  # stuck_after, labels: what its view shows
                    store.next_due = float("-inf")  # min_poll_interval may have changed
                store.bucket.configure(store_config.requests_per_second, store_config.burst)
            store.config = store_config
            store.files = files[name]
            targets[name] = self._sync_tasks(store)
            self.scheduler.kick(store, now)  # max_concurrency may have grown
        self._drop_forgotten(targets)
        for name in self.registered:
            if name in wanted:
                self._registrations_left.pop(name, None)
            else:
                self._registrations_left.setdefault(name, now)
        self._watches_files = any(store.files is not None for store in self.stores.values())
        self.cond.notify_all()

    def _sync_tasks(self, store: Store) -> set[str]:
        """Watch the store's configured, listed and registered ids; returns them."""
        listed = store.files.ids if store.files else frozenset()
        listed_labels: dict[str, _Labels] = getattr(store.files, "labels", None) or {}
        configured_labels = dict(store.config.task_labels)
        registered = self.registered.get(store.name, {})
        configured = set(store.config.task_ids)
        target = configured | listed | registered.keys()
        changed = False
        for task_id in [t for t in store.tasks if t not in target]:
            store.tasks.pop(task_id).queued = False  # its queue entry is dropped at the head
            store.active.pop(task_id, None)
            changed = True
        # Known ids in any order, new ones sorted: a million ids are never sorted at once
        # (one C call that would hold the GIL, and the probes, for seconds).
        new = [task_id for task_id in target if task_id not in store.tasks]
        for task_id in itertools.chain((t for t in target if t in store.tasks), sorted(new)):
            labels = _labels(configured_labels.get(task_id), listed_labels.get(task_id))
            if task_id in registered:
                labels = _labels(labels, registered[task_id])
            source = "config" if task_id in configured else "file" if task_id in listed else "api"
            changed = self._watch_task(store, task_id, labels, source) or changed
        if changed:
            self._touch(store)
        return target

    def _add_listed(self, store: Store, added: Iterable[str]) -> None:
        """Watch ids that lines appended to a task file added: their cost, not the file's."""
        listed_labels: dict[str, _Labels] = getattr(store.files, "labels", None) or {}
        configured_labels = dict(store.config.task_labels)
        changed = False
        for task_id in added:
            if task_id not in store.tasks:
                labels = _labels(configured_labels.get(task_id), listed_labels.get(task_id))
                changed = self._watch_task(store, task_id, labels, "file") or changed
        if changed:
            self._touch(store)

    def _watch_task(self, store: Store, task_id: str, labels: _Labels, source: str) -> bool:
        """Watch ``task_id`` with these labels and source (lock held); True if that changed."""
        task = store.tasks.get(task_id)
        if task is not None:
            if task.record.labels != labels or task.record.source != source:
                task.record = dataclasses.replace(task.record, labels=labels, source=source)
                return True
            return False
        key = (store.name, task_id)
        if key in self.forgotten:
            return False
        restored = self.restored.pop(key, None)
        if restored is not None:
            record = dataclasses.replace(restored, labels=labels, source=source)
        else:
            record = TaskRecord(store.name, task_id, labels=labels, source=source)
        task = Watched(record)
        store.tasks[task_id] = task
        if not record.completed:
            store.active[task_id] = task
            store.next_due = float("-inf")
            if key in self.waited:
                self._prioritize(store, task, self.clock.monotonic())
        return True

    def _drop_forgotten(self, targets: dict[str, set[str]]) -> None:
        """Forget that a task was forgotten once its store no longer lists it."""
        for key in [k for k in self.forgotten if k[0] in targets and k[1] not in targets[k[0]]]:
            del self.forgotten[key]

    def restore(self, tasks: Iterable[TaskRecord], forgotten: dict[tuple[str, str], float]) -> None:
        """Seed state loaded from the state file (call before the first apply_config)."""
        with self._lock:
            for task in tasks:
                self.restored[(task.store, task.task_id)] = task
            self.forgotten.update(forgotten)

    # ---- scrape ----------------------------------------------------------------------

    def refresh(self, timeout: float) -> None:
        """Fetch due tasks, waiting at most ``timeout`` seconds; the rest go on in background."""
        # Ids added to task files are polled on this very scrape, when the files can be
        # looked at in part of its time; a slow file system or a huge file is left to the
        # discovery thread, and the scrape answers with what memory holds.
        if self._watches_files:
            started = self.clock.monotonic()
            self._discoverer.run_within(timeout * DISCOVERY_SHARE)
            timeout = max(timeout - (self.clock.monotonic() - started), 0.0)
        with self._lock:
            dropped = self._forget()
            now = self.clock.monotonic()
            deadline = now + timeout
            waiting: list[tuple[Store, Watched, int]] = []
            for store in self.stores.values():
                store.interest = now
                if store.active and store.next_due <= now + _EPSILON:
                    waiting.extend(self._due(store, now))
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
                reason = "deadline" if task.in_flight else store.bucket.short_reason(now)
                store.stats.skipped[reason or "deadline"] += 1
                self._touch(store)
        if dropped:
            self._changed()

    def _due(self, store: Store, now: float) -> list[tuple[Store, Watched, int]]:
        """Queue the store's due tasks; return those this scrape waits for, count the rest.

        The scrape waits for the due tasks in flight and for as many queued ones, in queue
        order, as the store's token balance allows now; none while a 429 pause lasts.
        Only that balance plus QUEUE_AHEAD tasks are queued at once: the queue is filled
        again as it drains (:meth:`_refill`), so a million due tasks cost a scrape a scan,
        not a million queue entries (docs/design.md, "The scheduler").
        """
        allowance = store.bucket.allowance(now)
        queued, waiting, left = self._queue_due(store, now, allowance + QUEUE_AHEAD)
        if not queued:
            return waiting
        due = len(queued) + left
        if due > allowance:
            queued.sort(key=lambda t: t.rank)
            reason = "backoff" if store.bucket.paused(now) else "rate_limited"
            store.stats.skipped[reason] += due - allowance
            self._touch(store)
            del queued[allowance:]
        waiting.extend((store, task, task.attempts) for task in queued)
        self.scheduler.kick(store, now)
        return waiting

    def _queue_due(
        self, store: Store, now: float, limit: int
    ) -> tuple[list[Watched], list[tuple[Store, Watched, int]], int]:
        """Queue up to ``limit`` more due tasks of the store, never attempted first (in
        watch order), then least recently attempted (lock held). Returns the queued due
        tasks (earlier ones included), the due tasks in flight, and how many due tasks
        were left unqueued (the store then has a backlog)."""
        waiting: list[tuple[Store, Watched, int]] = []
        queued: list[Watched] = []
        fresh: list[Watched] = []  # due, never attempted: in watch order
        again: list[Watched] = []  # due, attempted before
        min_interval = store.config.min_poll_interval
        next_due = float("inf")
        for task in store.active.values():
            if task.queued:
                queued.append(task)  # queued by an earlier scrape: shared, not re-sent
                continue
            last = task.last_attempt
            if last is not None:
                interval = poll_interval(min_interval, task.failures)
                if now - last < interval:
                    next_due = min(next_due, last + interval)
                    continue
            if task.in_flight:
                waiting.append((store, task, task.attempts))
                continue
            (fresh if last is None else again).append(task)
        room = max(limit - len(queued), 0)
        chosen = fresh[:room]
        if len(chosen) < room:
            rest = room - len(chosen)
            if len(again) > rest:
                chosen += heapq.nsmallest(rest, again, key=lambda t: t.last_attempt or 0.0)
            else:
                chosen += again
        left = len(fresh) + len(again) - len(chosen)
        store.backlog = left > 0
        for task in chosen:
            last = task.last_attempt
            task.queued = True
            task.rank = (float("-inf") if last is None else last, next(self._seq))
            store.push(task)
            queued.append(task)
        # Until then no scrape needs to look at this store's tasks (see Store.next_due).
        store.next_due = float("-inf") if queued or waiting or left else next_due
        return queued, waiting, left

    def _refill(self, store: Store, now: float) -> None:
        """Queue more of a store's backlog once its queue runs low (lock held): what the
        scrapes left unqueued is still fetched in the background, within the budget."""
        if store.backlog and not store.removed and len(store.queue) < QUEUE_AHEAD // 2:
            self._queue_due(store, now, QUEUE_AHEAD)
            self.scheduler.kick(store, now)

    def _hopeless(
        self, waiting: list[tuple[Store, Watched, int]], deadline: float, now: float
    ) -> bool:
        """True when no waited-for request is in flight and none can start by the deadline."""
        for store, task, _ in waiting:
            if task.in_flight or store.bucket.next_start(now) < deadline:
                return False
        return True

    # ---- housekeeping: task files and forgetting, never on a read ---------------------

    def housekeeping(self) -> None:
        """Have task files looked at, forget old completed tasks (the timer's job)."""
        if self._watches_files:
            self._discoverer.request()  # on its own thread: never holds up the timers
        with self._lock:
            dropped = self._forget()
            expired = self._expire_departed()
            self._poll_waited()
        if dropped or expired:
            self._changed()

    def _expire_departed(self) -> bool:
        """Drop the stores that left more than DEPARTED_GRACE s ago, and their registered
        tasks; keep their saved state.

        Their tasks' data goes back to the saved state (as if read from the state file), so
        the state file keeps it for the retention of unconfigured tasks, completed and
        forgotten tasks alike.
        """
        now = self.clock.monotonic()
        expired = [
            name for name, (_, left) in self.departed.items() if now - left >= DEPARTED_GRACE
        ]
        for name in expired:
            gone, _ = self.departed.pop(name)
            for task_id, task in gone.tasks.items():
                if task.record.snapshot is not None:
                    self.restored[(name, task_id)] = task.record
            log.info("forgetting a store that left the configuration", extra={"store": name})
        # Its registrations too (and those of a store the state file alone named): the
        # tasks' saved data stays for the state file's retention of unconfigured tasks.
        ended = [
            name
            for name, left in self._registrations_left.items()
            if now - left >= DEPARTED_GRACE and name not in self.stores
        ]
        for name in ended:
            del self._registrations_left[name]
            dropped = self.registered.pop(name, {})
            log.info(
                "dropping the registered tasks of a store that left the configuration",
                extra={"store": name, "tasks": len(dropped)},
            )
        return bool(expired or ended)

    def _discover(self) -> None:
        with self._discovery:
            with self._lock:
                watched = [(s, s.files) for s in self.stores.values() if s.files is not None]
            changed = [(s, files) for s, files in watched if files.refresh()]  # without the lock
            if not changed:
                return
            first: list[tuple[Store, TaskFiles]] = []
            with self._lock:
                targets: dict[str, set[str]] = {}
                for store, files in changed:
                    if store.removed or store.files is not files or files.added is not None:
                        continue
                    if self._first_listing(store, files):
                        first.append((store, files))
                        continue
                    targets[store.name] = self._sync_tasks(store)
                self._drop_forgotten(targets)
            for store, files in changed:  # lines appended: only those, a chunk per lock hold
                if files.added is not None and len(files.added) <= SORT_AT_ONCE:
                    self._add_chunks(store, files, iter(sorted(files.added)))
                elif files.added is not None:  # many: in file order, never sorted at once
                    self._add_chunks(store, files, files.in_order(files.added))
            for store, files in first:  # the file's first reading: in file order, a chunk at a time
                self._add_chunks(store, files, files.in_order())
                with self._lock:
                    if not store.removed and store.files is files:
                        self._settle_first(store, files)

    def _first_listing(self, store: Store, files: TaskFiles) -> bool:
        """True when the store watches no task from its files yet and they list many
        (lock held): the start, or files that listed nothing. Their ids are then added a
        chunk per lock hold, in file order, like appended lines (docs/design.md, "Rules
        for files"), instead of in one hold of the lock for the whole file.
        """
        if len(files.ids) <= ADD_CHUNK:
            return False
        others = len(store.config.task_ids) + len(self.registered.get(store.name, ()))
        return len(store.tasks) <= others and all(
            task.record.source != "file" for task in store.tasks.values()
        )

    def _add_chunks(self, store: Store, files: TaskFiles, ids: Iterator[str]) -> None:
        """Watch ``ids`` from the store's files, ADD_CHUNK per hold of the lock."""
        while chunk := list(itertools.islice(ids, ADD_CHUNK)):
            with self._lock:
                if store.removed or store.files is not files:
                    return
                self._add_listed(store, chunk)

    def _settle_first(self, store: Store, files: TaskFiles) -> None:
        """After a first listing: the labels and source of ids also configured or
        registered, and forgotten tasks no longer listed (lock held; cost: those alone)."""
        registered = self.registered.get(store.name, {})
        changed = False
        for task_id in {*store.config.task_ids, *registered} & files.ids:
            labels, source = self._sources(store, task_id)
            changed = self._watch_task(store, task_id, labels, source) or changed
        if changed:
            self._touch(store)
        listed = files.ids
        for key in [k for k in self.forgotten if k[0] == store.name]:
            task_id = key[1]
            kept = (listed, store.tasks, registered, store.config.task_ids)
            if all(task_id not in ids for ids in kept):
                del self.forgotten[key]

    def _forget(self) -> bool:
        if self.forget_after <= 0:
            return False
        wall = self.clock.time()
        dropped = False
        for store in self.stores.values():
            if len(store.active) == len(store.tasks):
                continue  # nothing completed
            for task_id, task in list(store.tasks.items()):
                done = task.record.completed_at
                if done is not None and task.record.completed and wall - done >= self.forget_after:
                    del store.tasks[task_id]
                    store.active.pop(task_id, None)
                    self.forgotten[(store.name, task_id)] = done
                    log.info(
                        "forgetting completed task", extra={"store": store.name, "task_id": task_id}
                    )
                    self._touch(store)
                    dropped = True
        return dropped

    # ---- results ---------------------------------------------------------------------

    def _fetched(self, store: Store, task: Watched, result: FetchResult) -> None:
        """Record one request's outcome (lock held, called by a fetch worker)."""
        store.stats.observe(result.code, result.ok, result.duration)
        if result.code == "429":
            pause = pause_after_429(result.retry_after)
            store.bucket.pause(self.clock.monotonic(), pause)
            log.warning(
                "rate limited by the API, pausing the store",
                extra={"store": store.name, "seconds": round(pause, 3)},
            )
        task.in_flight = False
        task.attempts += 1
        task.failures = 0 if result.ok else task.failures + 1
        if task.last_attempt is not None:
            interval = poll_interval(store.config.min_poll_interval, task.failures)
            store.next_due = min(store.next_due, task.last_attempt + interval)
        state = self._record(task.record, result)
        if result.snapshot is not None:
            eta = self._estimate(task, state)
            if eta != state.estimated_completion:
                state = dataclasses.replace(state, estimated_completion=eta)
        if state != task.record:
            task.record = state
        task_id = state.task_id
        if store.tasks.get(task_id) is task and state.completed:
            store.active.pop(task_id, None)
        elif store.tasks.get(task_id) is task:
            self._plan(store, task, result.ok)
        self._touch(store)
        self._refill(store, self.clock.monotonic())
        self._release_if_idle(store, self.clock.monotonic())
        self.cond.notify_all()
        self._tell_waiters(store.name, task_id)

    def _estimate(self, task: Watched, state: TaskRecord) -> float | None:
        """Add a successful poll to the task's progress; its completion estimate (Unix time)."""
        snap = state.snapshot
        assert snap is not None and state.last_success is not None
        if snap.completed:
            task.progress = None  # no estimate to make: the history goes (memory per task)
            return None
        progress = task.progress
        if progress is None:
            progress = task.progress = Progress()
        progress.observe(state.last_success, snap.finished, snap.total)
        return progress.estimate()

    def _plan(self, store: Store, task: Watched, ok: bool) -> None:
        """Arm the task's next timed poll: at its predicted completion, or when it is due
        again if someone waits for it (docs/design.md, "Predictive polling")."""
        if task.by_prediction:
            task.predicted += 1
        else:
            task.predicted = 0  # a regular poll: predictions may start over
        task.by_prediction = False
        task.timed = None  # planned afresh from this result (a failure backs off first)
        now = self.clock.monotonic()
        last = task.last_attempt if task.last_attempt is not None else now
        when: float | None = None
        predicted = False
        eta = task.record.estimated_completion
        if (
            self.predictive
            and ok
            and eta is not None
            and task.predicted < MAX_PREDICTED
            and (now - store.interest <= INTEREST or task.priority_until > now)
        ):
            at = now + (eta - self.clock.time()) + PREDICT_LAG
            at = max(at, now + RETRY_BASE * 2.0 ** max(task.predicted - 1, 0))
            # Beyond a round of the queue the next regular poll refines the estimate first.
            horizon = max(store.config.min_poll_interval, len(store.active) / store.bucket.rate)
            if at - now <= horizon:
                when, predicted = at, True
        if task.priority_until > now:
            due = last + poll_interval(store.config.min_poll_interval, task.failures)
            if when is None or due < when:
                when, predicted = due, False
        if when is not None:
            store.arm(task, when, next(self._seq), predicted)
            self.scheduler.kick(store, now)

    def prioritize(self, store_name: str, task_id: str, seconds: float = PRIORITY_HOLD) -> bool:
        """Poll the task before the others, whenever it is due, for ``seconds``.

        For the task API's ``?wait=`` and a task's own page: the task is polled as soon as
        its interval (``min_poll_interval``, backoff after failures) allows, ahead of the
        store's queue and even without scrapes, within the store's budget, plus at its
        predicted completion. False when the task is not watched or already completed.
        """
        with self._lock:
            store = self.stores.get(store_name)
            task = store.active.get(task_id) if store is not None else None
            if store is None or task is None:
                return False
            self._prioritize(store, task, self.clock.monotonic(), seconds)
            return True

    def _release_if_idle(self, store: Store, now: float) -> None:
        """Close the store's connections when nothing of it is due for ``IDLE_RELEASE`` s.

        A fleet's stores are mostly idle (completed tasks are never fetched again): a
        kept-alive connection of theirs would hold a socket (and a TLS session) for nothing,
        often one the server closed long ago (docs/design.md, "HTTP client"). A store that
        polls often keeps its connection.
        """
        if store.in_flight or store.head() is not None or store.next_timed() is not None:
            return
        min_interval = store.config.min_poll_interval
        for task in store.active.values():
            last = task.last_attempt
            if task.pending or last is None:
                return
            if last + poll_interval(min_interval, task.failures) - now < IDLE_RELEASE:
                return
        store.client.release()

    def _record(self, old: TaskRecord, result: FetchResult) -> TaskRecord:
        """The task's record after ``result``, logging what a person should know."""
        snapshot = result.snapshot
        store, task_id = old.store, old.task_id
        if snapshot is None:
            # The first failure with a given code is a warning; its repeats are debug noise.
            log.log(
                logging.DEBUG if old.last_code == result.code else logging.WARNING,
                "poll failed",
                extra={
                    "store": store,
                    "task_id": task_id,
                    "code": result.code,
                    "err": result.detail,
                },
            )
            return dataclasses.replace(
                old,
                refetch=False,
                poll_success=False,
                last_code=result.code,
                last_error_code=result.code,
                last_error=result.detail,
            )
        wall = self.clock.time()
        previous = old.snapshot
        progressed = (
            previous is None
            or previous.finished != snapshot.finished
            or previous.status != snapshot.status
        )
        completed_at = old.completed_at
        if snapshot.completed and completed_at is None:
            completed_at = wall
        elif not snapshot.completed:
            completed_at = None
        unlisted = snapshot.failed - len(snapshot.failures)
        if unlisted > 0 and (previous is None or previous.failed < snapshot.failed):
            log.warning(
                "more failed files than are kept: counted, not listed",
                extra={
                    "store": store,
                    "task_id": task_id,
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
                        "store": store,
                        "task_id": task_id,
                        "origin_link": failure.origin_link,
                        "reason": failure.reason,
                    },
                )
        return dataclasses.replace(
            old,
            refetch=False,
            snapshot=snapshot,
            poll_success=True,
            last_code=result.code,
            last_error=result.detail,
            last_success=wall,
            last_progress=wall if progressed else old.last_progress,
            completed_at=completed_at,
        )

    # ---- the task API (docs/task-api.md) ----------------------------------------------

    def restore_registered(self, registered: Iterable[tuple[str, str, _Labels]]) -> None:
        """Seed the registered tasks from the state file (before the first apply_config)."""
        with self._lock:
            for store, task_id, labels in registered:
                self.registered.setdefault(store, {})[task_id] = labels

    def registrations(self) -> list[tuple[str, str, _Labels]]:
        """Every registered task, for the state file."""
        with self._lock:
            return [
                (store, task_id, labels)
                for store, tasks in self.registered.items()
                for task_id, labels in tasks.items()
            ]

    def _sources(self, store: Store, task_id: str) -> tuple[_Labels, str]:
        """A task's merged labels and its source (lock held)."""
        listed = store.files.ids if store.files else frozenset()
        listed_labels: dict[str, _Labels] = getattr(store.files, "labels", None) or {}
        labels = _labels(dict(store.config.task_labels).get(task_id), listed_labels.get(task_id))
        api = self.registered.get(store.name, {}).get(task_id)
        if api is not None:
            labels = _labels(labels, api)
        if task_id in store.config.task_ids:
            return labels, "config"
        return labels, "file" if task_id in listed else "api"

    def register(
        self, store_name: str, items: list[tuple[str, _Labels]]
    ) -> list[tuple[str, bool, TaskRecord | None]] | str:
        """Register ``items`` (task_id, labels) all at once, or none: (task_id, newly
        watched, record or None when forgotten) each, or why not (the store's limit).

        KeyError when this process does not serve the store.
        """
        with self._lock:
            store = self.stores[store_name]
            current = self.registered.get(store_name, {})
            adding = {task_id for task_id, _ in items} - current.keys()
            limit = store.config.max_registered_tasks
            if len(current) + len(adding) > limit:
                return (
                    f"store {store_name} holds at most {limit} registered tasks "
                    f"(max_registered_tasks): {len(current)} registered, {len(adding)} more asked"
                )
            entry = self.registered.setdefault(store_name, {})
            results: list[tuple[str, bool, TaskRecord | None]] = []
            for task_id, labels in items:
                created = task_id not in store.tasks
                entry[task_id] = labels
                merged, source = self._sources(store, task_id)
                self._watch_task(store, task_id, merged, source)
                task = store.tasks.get(task_id)
                created = created and task is not None
                results.append((task_id, created, None if task is None else task.record))
            self._touch(store)
        self._changed()
        return results

    def unregister(self, store_name: str, task_id: str) -> str:
        """Stop watching a registered task: ``removed``, ``not_registered`` or ``configured``.

        KeyError when this process does not serve the store.
        """
        with self._lock:
            store = self.stores[store_name]
            if self._sources(store, task_id)[1] != "api":
                return "configured"
            registered = self.registered.get(store_name, {})
            if registered.pop(task_id, None) is None:
                return "not_registered"
            if not registered:
                del self.registered[store_name]
            task = store.tasks.pop(task_id, None)
            if task is not None:
                task.queued = False
                store.active.pop(task_id, None)
                self._touch(store)
            self.forgotten.pop((store_name, task_id), None)
            self._tell_waiters(store_name, task_id)
        self._changed()
        return "removed"

    def task(self, store_name: str, task_id: str) -> tuple[TaskRecord, float] | None:
        """A watched task's record and its store's ``stuck_after``; None when not watched."""
        with self._lock:
            store = self.stores.get(store_name)
            task = store.tasks.get(task_id) if store is not None else None
            if store is None or task is None:
                return None
            return task.record, store.config.stuck_after

    def add_waiter(self, store_name: str, task_id: str) -> None:
        """Someone waits for the task: it is polled before the others when due."""
        with self._lock:
            key = (store_name, task_id)
            self.waited[key] = self.waited.get(key, 0) + 1
            store = self.stores.get(store_name)
            task = store.tasks.get(task_id) if store is not None else None
            if store is not None and task is not None and not task.record.completed:
                self._prioritize(store, task, self.clock.monotonic())

    def view_task(self, store_name: str, task_id: str) -> None:
        """Someone looks at the task (its page, a GET of it): polled before the others when
        due, once (a waiter's task is queued so each time it is due)."""
        self.prioritize(store_name, task_id)

    def remove_waiter(self, store_name: str, task_id: str) -> None:
        """A wait ended."""
        with self._lock:
            key = (store_name, task_id)
            left = self.waited.get(key, 0) - 1
            if left > 0:
                self.waited[key] = left
            else:
                self.waited.pop(key, None)

    def _prioritize(
        self, store: Store, task: Watched, now: float, seconds: float = PRIORITY_HOLD
    ) -> None:
        """Arm the task's poll at the moment it is due, ahead of its store's queue (lock
        held). It still waits for the store's budget (token bucket, 429 pause,
        ``max_concurrency``); only its place changes (docs/design.md, "Predictive polling").
        """
        task.priority_until = max(task.priority_until, now + seconds)
        if task.in_flight or self._stopped:
            return  # its result arms the next one
        last = task.last_attempt
        due = now
        if last is not None:
            due = max(now, last + poll_interval(store.config.min_poll_interval, task.failures))
        if task.timed is None or task.timed[0] > due:
            store.arm(task, due, next(self._seq), False)
        self.scheduler.kick(store, now)

    def _poll_waited(self) -> None:
        """Queue the waited-for tasks that are due (each second, without any scrape)."""
        if not self.waited:
            return
        now = self.clock.monotonic()
        for store_name, task_id in list(self.waited):
            store = self.stores.get(store_name)
            task = store.active.get(task_id) if store is not None else None
            if store is not None and task is not None and not task.pending:
                self._prioritize(store, task, now)

    def _tell_waiters(self, store_name: str, task_id: str) -> None:
        if self.on_task is not None and (store_name, task_id) in self.waited:
            self.on_task(store_name, task_id)

    # ---- reading -----------------------------------------------------------------------

    def views(self) -> list[StoreView]:
        """Every store as it is now, for the collector and the status pages.

        Pure: it reads memory only. A store's view is built once per change
        and handed out until the next change; its task records are never changed in place.
        """
        with self._lock:
            return [store.view or self._build_view(store) for store in self.stores.values()]

    def _build_view(self, store: Store) -> StoreView:
        stats = store.stats
        view = StoreView(
            name=store.name,
            tasks=tuple(task.record for task in store.tasks.values()),
            requests=tuple(sorted(stats.requests.items())),
            errors=tuple(sorted(stats.errors.items())),
            skipped=tuple(stats.skipped.items()),
            buckets=tuple(stats.buckets),
            duration_count=stats.duration_count,
            duration_sum=stats.duration_sum,
            stuck_after=store.config.stuck_after,
            registered=len(self.registered.get(store.name, ())),
        )
        store.view = view
        return view

    def _touch(self, store: Store) -> None:
        """Something the store's view shows changed: the cached view is dropped."""
        store.view = None

    def persistent_state(self) -> tuple[list[TaskRecord], dict[tuple[str, str], float]]:
        """Tasks with data, and forgotten tasks, for the state file."""
        with self._lock:
            stores = [*self.stores.values(), *(gone for gone, _ in self.departed.values())]
            tasks = [
                task.record
                for store in stores
                for task in store.tasks.values()
                if task.record.snapshot is not None
            ]
            tasks.extend(t for t in self.restored.values() if t.snapshot is not None)
            return tasks, dict(self.forgotten)

    def watched_keys(self) -> set[tuple[str, str]]:
        """(store, task_id) of every configured task of the stores served, forgotten included.

        The state file drops the entries of other tasks after a while (docs/design.md,
        "State file": pruning).
        """
        with self.cond:
            stores = {**self.stores, **{name: gone for name, (gone, _) in self.departed.items()}}
            keys = {(name, task_id) for name, store in stores.items() for task_id in store.tasks}
            keys.update(key for key in self.forgotten if key[0] in stores)
            return keys

    def stop(self) -> None:
        """Stop polling; requests in flight are abandoned. Calling it again does nothing."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self.scheduler.stop()
            self._discoverer.stop()
            self.cond.notify_all()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
