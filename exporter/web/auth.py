"""HTTP basic auth against bcrypt hashes, as the exporter-toolkit web configuration has them.

Timing does not tell users apart: an unknown user costs a bcrypt check like a wrong
password, and names are compared in constant time. Outcomes are cached, so a scrape does
not pay bcrypt (tens of milliseconds) every time, and the checks run on their own bounded
pool (:class:`AuthPool`), so wrong passwords cannot take the threads that answer probes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import bcrypt

#: What ``htpasswd -nB`` and bcrypt libraries make: $2y$, $2b$ or $2a$, a cost, 53 chars.
BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DUMMY_HASH = "$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"


def parse_basic_auth(header: str | None) -> tuple[str, bytes] | None:
    """Split an ``Authorization: Basic ...`` value into user and password, None if invalid."""
    if not header:
        return None
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(param.strip().encode("ascii"), validate=True)
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        return None


@dataclass(frozen=True)
class Check:
    """A bcrypt check still to be made: the outcome of these credentials is not cached."""

    user: str
    password: bytes
    hashed: str | None  # None: unknown user, checked against a dummy hash of the same cost
    key: tuple[str, bytes, str]


class BasicAuthVerifier:
    """Checks basic-auth credentials against bcrypt hashes, caching outcomes.

    Timing: an unknown user costs a bcrypt check like a wrong password (against a dummy
    hash of the same cost), and user names are compared with ``hmac.compare_digest``.
    The cache key is (user, sha256(password), hash), so a changed hash or password misses.
    Successes and failures are kept apart, each least recently used out: a flood of new
    wrong passwords can never evict the right one, so the right password costs one bcrypt
    check once (docs/design.md, "Rules for abuse: the server"); a wrong one repeated costs
    one check too.

    :meth:`lookup` is cheap and answers from the cache (or refuses malformed credentials);
    what it cannot answer it returns as a :class:`Check` for :meth:`run`, which the server
    runs on its own bcrypt thread, never on the threads that answer requests.
    """

    def __init__(self, cache_size: int = 256, failure_cache_size: int = 4096) -> None:
        self._good: OrderedDict[tuple[str, bytes, str], None] = OrderedDict()
        self._bad: OrderedDict[tuple[str, bytes, str], None] = OrderedDict()
        self._size = cache_size
        self._bad_size = failure_cache_size
        self._lock = threading.Lock()

    def lookup(self, users: Mapping[str, str], authorization: str | None) -> str | Check | None:
        """The user if the credentials are known good, None if refused (missing, malformed,
        known wrong), else the :class:`Check` that decides."""
        creds = parse_basic_auth(authorization)
        if creds is None:
            return None
        user, password = creds
        wanted = user.encode("utf-8")
        hashed: str | None = None
        for name, candidate in users.items():
            if hmac.compare_digest(name.encode("utf-8"), wanted):
                hashed = candidate
        if hashed is None:
            costs = [h[4:6] for h in users.values()] or ["10"]
            dummy = _DUMMY_HASH[:4] + max(costs) + _DUMMY_HASH[6:]
            key = (user, hashlib.sha256(password).digest(), dummy)
        else:
            key = (user, hashlib.sha256(password).digest(), hashed)
        with self._lock:
            if key in self._good:
                self._good.move_to_end(key)
                return user
            if key in self._bad:
                self._bad.move_to_end(key)
                return None
        return Check(user, password, hashed, key)

    def run(self, check: Check) -> str | None:
        """Make the bcrypt check (tens of milliseconds of CPU) and cache its outcome."""
        ok = _checkpw(check.password, check.key[2]) and check.hashed is not None
        with self._lock:
            cache, size = (self._good, self._size) if ok else (self._bad, self._bad_size)
            cache[check.key] = None
            cache.move_to_end(check.key)
            while len(cache) > size:
                cache.popitem(last=False)
        return check.user if ok else None

    def verify(self, users: Mapping[str, str], authorization: str | None) -> str | None:
        """The authenticated user name, or None (missing, malformed or wrong credentials)."""
        verdict = self.lookup(users, authorization)
        return self.run(verdict) if isinstance(verdict, Check) else verdict


class AuthPool:
    """The threads that run bcrypt checks, with a bounded queue fair between clients.

    At most ``max_pending`` checks wait, at most ``per_client`` of them from one client
    address; :meth:`submit` refuses beyond that (the server answers 429), so wrong passwords
    sent as fast as possible cost a fixed amount of memory and at most ``threads x duty``
    cores: after a check, a thread idles for as long as ``duty`` asks (by default as long
    as the check took, so half a core). Clients take turns (round robin by address), so one
    flooding address delays another's first check by one check, not by the flood's queue.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        threads: int = 1,
        max_pending: int = 16,
        per_client: int = 4,
        duty: float = 0.5,
        name: str = "exporter-bcrypt",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self._logger = logger
        self.duty = duty
        self._clock = clock
        self.max_pending = max_pending
        self.per_client = per_client
        self._queues: OrderedDict[str, deque[Callable[[], None]]] = OrderedDict()
        self._pending = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        self._started = False
        self.thread_names = frozenset(t.name for t in self._threads)

    @property
    def pending(self) -> int:
        """Checks waiting for a thread."""
        return self._pending

    def start(self) -> None:
        """Start the threads (once)."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        """Let the threads end after the check they run now; does not wait."""
        with self._cond:
            self._stopping = True
            self._stopped.set()
            self._cond.notify_all()

    def submit(self, client: str, fn: Callable[[], None]) -> bool:
        """Queue ``fn`` for a bcrypt thread; False (not queued) when the queue is full."""
        with self._cond:
            queue = self._queues.get(client)
            if self._pending >= self.max_pending or (
                queue is not None and len(queue) >= self.per_client
            ):
                return False
            if queue is None:
                queue = self._queues[client] = deque()
            queue.append(fn)
            self._pending += 1
            self._cond.notify()
            return True

    def _take(self) -> Callable[[], None] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            client, queue = next(iter(self._queues.items()))
            fn = queue.popleft()
            self._pending -= 1
            del self._queues[client]
            if queue:  # its next check waits behind every other client's
                self._queues[client] = queue
            return fn

    def _run(self) -> None:
        while (fn := self._take()) is not None:
            started = self._clock()
            try:
                fn()
            except Exception as exc:  # a bug of ours: keep the thread
                self._logger.error(
                    "bcrypt worker error", extra={"err": f"{type(exc).__name__}: {exc}"}
                )
            rest = (self._clock() - started) * (1 - self.duty) / self.duty
            if rest > 0:  # idle, so that checks take at most ``duty`` of a core
                self._idle(rest)

    def _idle(self, seconds: float) -> None:
        self._stopped.wait(seconds)


def _checkpw(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password, hashed.encode("ascii"))
    except ValueError:  # bcrypt 5: passwords over 72 bytes; or a hash it cannot use
        return False
