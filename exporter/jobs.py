"""A job with its own thread, run on request; callers wait for it with a deadline.

Reading files (globs, task id files, store files) must never hold a scrape past its
deadline nor the thread that acts on signals (docs/design.md, "Rules for files"): the
work runs on a daemon thread of its own, a scrape asks for a run and waits at most its
budget, then answers with what memory holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class OnDemand:
    """Runs ``job`` on a daemon thread whenever asked (and every ``period`` s if set).

    Requests made while a run is under way are served by the next run, so a caller that
    waits for its request sees the files as they were when it asked, or later.
    """

    def __init__(self, job: Callable[[], None], name: str, period: float | None = None) -> None:
        self._job = job
        self._period = period
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self) -> int:
        """Ask for a run; returns the number to wait for."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float) -> bool:
        """Wait at most ``timeout`` real seconds for run ``ticket`` to end; True if it did."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._done < ticket and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._done >= ticket

    def run_within(self, timeout: float) -> bool:
        """Ask for a run and wait at most ``timeout`` s for it; True when it ended in time."""
        return self.wait(self.request(), timeout)

    def stop(self) -> None:
        """Run no more; a run under way is abandoned (daemon thread)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._requested == self._done and not self._stopped:
                    if not self._cond.wait(self._period) and self._period is not None:
                        self._requested += 1  # the periodic run
                if self._stopped:
                    return
                ticket = self._requested
            try:
                self._job()
            except Exception as exc:  # a bug must not stop every later run
                log.error("background job failed", extra={"job": self._thread.name, "err": exc})
            with self._cond:
                self._done = ticket
                self._cond.notify_all()
