"""One scheduler thread, one timer heap across stores, and a bounded pool of fetch workers.

The poller puts due tasks on their store's queue and calls :meth:`Scheduler.kick`. A store
whose budget allows a request now goes on the ready queue, and one idle fetch worker is
woken; a store that must wait (token bucket, 429 pause) gets one entry on the timer heap at
its next possible start, and the scheduler thread wakes at the earliest entry only. So the
number of threads does not grow with stores or tasks, and only stores with work wake up
(docs/design.md, "The scheduler").

Everything here runs under the poller's lock, except the request itself.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable

from exporter.clock import Clock
from exporter.model import CONNECTION_ERROR
from exporter.polling.client import FetchResult, StoreClient
from exporter.polling.store import Store, Watched

log = logging.getLogger(__name__)

#: Fetch workers at most: requests in flight across all stores of one process.
FETCH_WORKERS = 32
#: The share of the fetch workers one store may hold at once (docs/design.md, "The
#: scheduler"): a store whose API stalls holds its requests until their deadline, and the
#: other half of the workers still serves every other store.
STORE_SHARE = 0.5
#: Seconds between two housekeeping runs (task files, forgetting) without scrapes.
HOUSEKEEPING_PERIOD = 1.0


class Scheduler:
    """The timer heap, the ready queue and the fetch workers (daemon threads)."""

    def __init__(
        self,
        lock: threading.Lock,
        clock: Clock,
        *,
        fetched: Callable[[Store, Watched, FetchResult], None],
        housekeeping: Callable[[], None],
        changed: Callable[[], None],
        workers: int = FETCH_WORKERS,
        housekeeping_every: float = HOUSEKEEPING_PERIOD,
    ) -> None:
        self.lock = lock
        self.clock = clock
        self._fetched = fetched
        self._changed = changed
        self._housekeeping = housekeeping
        self.max_workers = max(1, workers)
        self.store_cap = max(1, int(self.max_workers * STORE_SHARE))
        self._period = housekeeping_every
        self._timers: list[tuple[float, int, Store]] = []
        self._seq = itertools.count()
        self._ready: deque[Store] = deque()
        self._wake = threading.Condition(lock)  # the scheduler thread waits here
        self._work = threading.Condition(lock)  # idle fetch workers wait here
        self._idle = 0  # workers waiting and not yet notified
        self.workers: list[threading.Thread] = []
        self.stopped = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        self._thread.start()

    # ---- called with the lock held ---------------------------------------------------

    def kick(self, store: Store, now: float) -> None:
        """Make ``store`` start what it may now, or wake it when its budget allows."""
        if store.removed or store.ready or self.stopped:
            return
        if store.in_flight >= min(store.config.max_concurrency, self.store_cap):
            return  # a finishing request of the store kicks it again
        queued = store.head() is not None
        timed = store.next_timed()
        if not queued and timed is None:
            return
        start = store.bucket.next_start(now)
        if not queued:
            start = max(start, timed or now)  # a timed poll waits for its time
        if start > now:
            self._set_timer(store, start)
            return
        store.ready = True
        self._ready.append(store)
        if self._idle:
            self._idle -= 1
            self._work.notify()
        elif len(self.workers) < self.max_workers:
            worker = threading.Thread(
                target=self._worker, name=f"fetch-{len(self.workers)}", daemon=True
            )
            self.workers.append(worker)
            worker.start()

    def _may_start(self, store: Store, now: float) -> bool:
        """A task of ``store`` is queued (or a timed poll is due), and neither its
        ``max_concurrency`` nor its share of the workers is taken."""
        return store.in_flight < self.store_cap and store.can_start_more(now)

    def _set_timer(self, store: Store, when: float) -> None:
        if store.timer is not None and store.timer <= when:
            return
        store.timer = when
        entry = (when, next(self._seq), store)
        heapq.heappush(self._timers, entry)
        if self._timers[0] is entry:
            self._wake.notify()

    def stop(self) -> None:
        """Start no more requests; requests in flight are abandoned (daemon threads)."""
        self.stopped = True
        self._wake.notify_all()
        self._work.notify_all()

    # ---- threads ------------------------------------------------------------------------

    def _run(self) -> None:
        """The scheduler thread: fire due timers; run housekeeping every period."""
        housekeeping_at = self.clock.monotonic() + self._period
        while True:
            with self.lock:
                while True:
                    if self.stopped:
                        return
                    now = self.clock.monotonic()
                    timers = self._timers
                    while timers and timers[0][0] <= now:
                        when, _, store = heapq.heappop(timers)
                        if store.timer == when:
                            store.timer = None
                            self.kick(store, now)
                    if now >= housekeeping_at:
                        break
                    wake = housekeeping_at if not timers else min(timers[0][0], housekeeping_at)
                    self.clock.wait(self._wake, wake - now)
            try:
                self._housekeeping()  # without the lock: it reads task files
            except Exception as exc:  # a bug must not stop the timers of every store
                log.error("housekeeping failed", extra={"err": exc})
            housekeeping_at = self.clock.monotonic() + self._period

    def _next_job(self) -> tuple[Store, Watched, StoreClient] | None:
        """Wait for a store that may start a request now and start it (lock held)."""
        while not self.stopped:
            if not self._ready:
                self._idle += 1
                self._work.wait()
                continue
            store = self._ready.popleft()
            store.ready = False
            now = self.clock.monotonic()
            if store.removed or not self._may_start(store, now):
                self.kick(store, now)  # a timed poll not due yet: its timer
                continue
            start = store.bucket.next_start(now)
            if start > now:  # another store's request took the time: wait for the budget
                self._set_timer(store, start)
                continue
            task = store.take(now)
            store.bucket.take()
            store.in_flight += 1
            task.queued = False
            task.in_flight = True
            task.last_attempt = now
            self.kick(store, now)  # its next request goes to another worker
            return store, task, store.client
        return None

    def _worker(self) -> None:
        """A fetch worker: one request at a time, for any store."""
        while True:
            with self.lock:
                job = self._next_job()
            if job is None:
                return
            store, task, client = job
            try:
                result = client.fetch(task.record.task_id)
            except Exception as exc:  # a bug must not wedge the task as in flight forever
                log.error("unexpected error while polling", extra={"store": store.name, "err": exc})
                result = FetchResult(CONNECTION_ERROR, None, 0.0, f"internal error: {exc}")
            with self.lock:
                if self.stopped:
                    return
                store.in_flight -= 1
                try:
                    self._fetched(store, task, result)
                except Exception as exc:  # a bug must not wedge the task or kill the worker
                    task.in_flight = False
                    log.error("cannot record a poll", extra={"store": store.name, "err": exc})
                self.kick(store, self.clock.monotonic())
            self._changed()  # without the lock: it may read the poller (state file)
