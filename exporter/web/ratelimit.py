"""The web configuration's ``rate_limit``: one token bucket over all requests, as
exporter-toolkit has it (Go's ``rate.NewLimiter(rate.Every(interval), burst)``).

The bucket holds ``burst`` tokens and earns one every ``interval``; a request takes one, or
is answered ``429 Too Many Requests`` when there is none. Every request counts, whatever
its path or credentials, the probes too (as in exporter-toolkit: set the limit above what
Prometheus and the probes need).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RequestLimiter"]


class RequestLimiter:
    """A thread-safe token bucket: ``allow()`` takes a token if there is one."""

    def __init__(
        self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if interval <= 0 or burst < 1:
            raise ValueError("interval must be > 0 and burst >= 1")
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = clock()

    def allow(self) -> bool:
        """Take a token: True, or False when the bucket is empty."""
        with self._lock:
            now = self._clock()
            earned = max(now - self._stamp, 0.0) / self.interval
            self._tokens = min(float(self.burst), self._tokens + earned)
            self._stamp = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def retry_after(self) -> int:
        """Whole seconds until the next token (for ``Retry-After``), at least 1."""
        with self._lock:
            missing = max(1.0 - self._tokens, 0.0) * self.interval
        return max(int(-(-missing // 1)), 1)
