"""When will an upload task complete? A line through its recent progress.

:class:`Progress` keeps, per task, the points where ``finished`` was first seen at a new
value (Unix time, files finished), at most :data:`POINTS` of them and none older than
:data:`WINDOW` before the newest, plus the time of the latest successful poll. The rate is
the slope of the line from the oldest kept point to the latest poll, and the estimate is
where that line reaches ``total`` (docs/design.md, "Predictive polling"):

- a pause lowers the rate poll after poll (the latest poll moves on, ``finished`` does
  not); a pause much longer than the task's usual gap between changes (:data:`STALL`
  times it, and at least :data:`MIN_STALL` seconds) means "not progressing": no estimate;
- progress that goes back, a ``total`` that changes, or a clock that steps back restart
  the history at the new point (no estimate until the next change);
- a task whose ``finished`` reached ``total`` but is not completed yet is expected now.

Plain values, no locking: the poller keeps one per watched task in progress under its lock
(none for a completed task; a list, not a deque: an empty deque takes 760 bytes).
"""

from __future__ import annotations

#: Progress points kept per task.
POINTS = 6
#: Seconds of history kept before the newest point (at least two points stay).
WINDOW = 900.0
#: A pause this many times the mean gap between changes means "not progressing".
STALL = 4.0
#: ... and never less than this many seconds.
MIN_STALL = 60.0


class Progress:
    """A task's recent progress points and its completion estimate."""

    __slots__ = ("points", "polled", "total")

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []  # oldest first, at most POINTS
        self.polled: float | None = None  # Unix time of the latest successful poll
        self.total: int | None = None

    @classmethod
    def seeded(cls, at: float | None, finished: int, total: int) -> Progress:
        """History rebuilt after a restart: one point (when ``finished`` was last seen changed)."""
        progress = cls()
        if at is not None:
            progress.observe(at, finished, total)
        return progress

    def observe(self, at: float, finished: int, total: int) -> None:
        """Add what a successful poll at Unix time ``at`` saw."""
        points = self.points
        if (
            not points
            or total != self.total
            or finished < points[-1][1]
            or self.polled is None
            or at < self.polled
        ):
            points.clear()  # first sight, regressing progress, new total, clock stepped back
            points.append((at, finished))
        elif finished != points[-1][1]:
            points.append((at, finished))
            if len(points) > POINTS:
                del points[0]
            while len(points) > 2 and at - points[0][0] > WINDOW:
                del points[0]
        self.total = total
        self.polled = at

    def rate(self) -> float | None:
        """Files per second over the kept history; None without progress to measure."""
        points = self.points
        if len(points) < 2 or self.polled is None:
            return None
        first_at, first = points[0]
        span = self.polled - first_at
        done = points[-1][1] - first
        if span <= 0 or done <= 0:
            return None
        return done / span

    def stalled(self) -> bool:
        """No change for much longer than the task's usual gap between changes."""
        points = self.points
        if len(points) < 2 or self.polled is None:
            return False
        gap = (points[-1][0] - points[0][0]) / (len(points) - 1)
        return self.polled - points[-1][0] > max(STALL * gap, MIN_STALL)

    def estimate(self) -> float | None:
        """Unix time the task should complete; None when there is no estimate."""
        rate = self.rate()
        if rate is None or self.polled is None or self.total is None or self.stalled():
            return None
        remaining = self.total - self.points[-1][1]
        return self.polled + max(remaining, 0) / rate
