"""Clocks: the real one, and one sped up for tests and benchmarks.

The poller takes its time from a :class:`Clock`; so does the simulator's leaky bucket. A
:class:`ScaledClock` shared by both runs an hour of budget in a minute, honestly: every
wait lasts its scaled length, only CPU work is not sped up.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Time source of the poller."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def wait(self, cond: threading.Condition, timeout: float | None) -> None: ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going back."""
        return time.monotonic()

    def time(self) -> float:
        """Unix time."""
        return time.time()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on ``cond`` (held) for a notification or ``timeout`` seconds."""
        cond.wait(timeout)


class ScaledClock:
    """Real time sped up ``speed`` times, starting at Unix time ``wall``."""

    def __init__(self, speed: float, wall: float = 1_800_000_000.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._origin = time.monotonic()
        self._wall = wall
        self._event = threading.Event()  # never set: an interruptible sleep

    def monotonic(self) -> float:
        """Scaled seconds since the clock was made."""
        return (time.monotonic() - self._origin) * self.speed

    def time(self) -> float:
        """Scaled Unix time."""
        return self._wall + self.monotonic()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        """Wait on ``cond`` (held) for a notification or ``timeout`` scaled seconds."""
        cond.wait(None if timeout is None else max(timeout, 0.0) / self.speed)

    def real(self, seconds: float) -> float:
        """Real seconds that ``seconds`` scaled seconds take."""
        return seconds / self.speed

    def sleep_until(self, when: float) -> None:
        """Block until the clock reads ``when`` (at once when already past)."""
        while (remaining := when - self.monotonic()) > 0:
            self._event.wait(remaining / self.speed)
