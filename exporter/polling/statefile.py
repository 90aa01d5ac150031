"""The state file: last known task data kept across restarts, written atomically.

Reading trusts nothing (docs/design.md, "State file"): an entry that is off-shape (a
count above 2^53, a NaN time, a foreign type) is logged and skipped alone; a file that is
not ours is logged and ignored whole. Writing records the outcome (``last_write_ok``),
logs only when it changes, and drops the entries of tasks no longer configured once they
have been unwatched for the retention time.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from exporter.config import STORE_NAME_RE, TASK_ID_RE, Labels
from exporter.config.files import read_regular
from exporter.config.labels import labels_problem
from exporter.model import (
    MAX_EXACT_INTEGER,
    MAX_KEPT_FAILURES,
    TASK_FIELDS,
    FailedFile,
    TaskRecord,
    TaskSnapshot,
)

log = logging.getLogger("exporter.polling.statefile")

FORMAT = "shoplazza-upload-exporter/state"
VERSION = 1
# How long the state of a task that is no longer configured is kept when
# forget_completed_after is 0 (docs/design.md, "State file": pruning).
DEFAULT_RETENTION = 7 * 24 * 3600.0
# Longest text field read back (an error detail is far shorter).
MAX_TEXT = 4096
# Entries of the first state files had no "poll_success": they were all successes.
LEGACY_DEFAULTS: dict[str, object] = {"poll_success": True}

Key = tuple[str, str]
Snapshot = Callable[[], tuple[list[TaskRecord], dict[Key, float]]]
#: Tasks registered through the task API: (store, task_id, labels) (docs/task-api.md).
Registration = tuple[str, str, Labels]


def retention_for(forget_completed_after: float) -> float:
    """Seconds an unwatched task's state is kept: ``forget_completed_after``, or 7 days."""
    return forget_completed_after if forget_completed_after > 0 else DEFAULT_RETENTION


#: The declared fields kept in the state file (exporter/model.py, ``TASK_FIELDS``).
KEPT = tuple(f for f in TASK_FIELDS if f.spec.state is not None)


def _to_json(kind: str, value: Any) -> Any:
    """A field's value as the state file holds it."""
    if kind == "failures":
        return [[f.origin_link, f.reason] for f in value]
    return value


def _task_to_json(task: TaskRecord, last_watched: float | None) -> dict[str, Any]:
    assert task.snapshot is not None
    entry: dict[str, Any] = {"store": task.store, "task_id": task.task_id}
    for spec_field in KEPT:
        entry[cast(str, spec_field.spec.state)] = _to_json(
            spec_field.spec.kind, spec_field.get(task)
        )
    if last_watched is not None:
        entry["last_watched"] = last_watched
    return entry


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    if isinstance(value, int) and abs(value) > MAX_EXACT_INTEGER:
        raise ValueError("number out of range")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _key(store: object, task_id: object) -> Key:
    if not isinstance(store, str) or not STORE_NAME_RE.match(store):
        raise ValueError("store is not a store name")
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise ValueError("task_id is not a task id")
    return store, task_id


def _from_json(kind: str, key: str, value: object) -> Any:
    """A field's value read back from the state file; ValueError when it cannot be trusted."""
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer from 0 to 2^53")
        if not 0 <= value <= MAX_EXACT_INTEGER:
            raise ValueError(f"{key}: expected an integer from 0 to 2^53")
        return value
    if kind == "time":
        return _number(value)
    if kind == "flag":
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return value
    if kind == "code":
        if value is not None and not (isinstance(value, str) and len(value) <= 64):
            raise ValueError(f"{key} must be a short string")
        return value
    if kind == "text":
        if not (isinstance(value, str) and len(value) <= MAX_TEXT):
            raise ValueError(f"{key} must be a string of at most {MAX_TEXT} characters")
        return value
    if kind == "failures":
        if not isinstance(value, list) or not all(
            isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f)
            for f in value
        ):
            raise ValueError(f"{key} is not a list of [origin_link, reason]")
        return tuple(FailedFile(a, b) for a, b in value[:MAX_KEPT_FAILURES])
    raise ValueError(f"{key}: a {kind} field cannot be kept in the state file")


def _task_from_json(item: object) -> tuple[TaskRecord, float | None]:
    """One task entry; a key it lacks (an older version's file) takes the field's default.

    A snapshot field it lacks marks the task for one more fetch (``refetch``): a completed
    task would otherwise export that default for good.
    """
    if not isinstance(item, dict):
        raise ValueError("task entry is not an object")
    store, task_id = _key(item.get("store"), item.get("task_id"))
    snapshot: dict[str, Any] = {}
    task: dict[str, Any] = {}
    refetch = False
    for spec_field in KEPT:
        key = cast(str, spec_field.spec.state)
        if key in item:
            value = _from_json(spec_field.spec.kind, key, item[key])
        else:
            value = LEGACY_DEFAULTS.get(key, spec_field.default)
            refetch = refetch or spec_field.on_snapshot
        (snapshot if spec_field.on_snapshot else task)[spec_field.name] = value
    state = TaskRecord(
        store=store, task_id=task_id, snapshot=TaskSnapshot(**snapshot), refetch=refetch, **task
    )
    return state, _number(item.get("last_watched"))


def _forgotten_from_json(entry: object) -> tuple[Key, float, float | None]:
    if not (isinstance(entry, list) and len(entry) in (3, 4)):
        raise ValueError("forgotten entries must be [store, task_id, time(, last_watched)]")
    key = _key(entry[0], entry[1])
    when = _number(entry[2])
    if when is None:
        raise ValueError("forgotten entries need a completion time")
    return key, when, _number(entry[3]) if len(entry) == 4 else None


def dump_state(
    tasks: list[TaskRecord],
    forgotten: dict[Key, float],
    last_watched: Mapping[Key, float] | None = None,
    registered: Collection[Registration] = (),
) -> str:
    """The state file's text; ``last_watched`` times are recorded for unwatched entries."""
    stamps = last_watched or {}

    def forgotten_entry(key: Key, when: float) -> list[object]:
        stamp = stamps.get(key)
        return [*key, when] if stamp is None else [*key, when, stamp]

    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "tasks": [_task_to_json(t, stamps.get((t.store, t.task_id))) for t in tasks],
        "forgotten": [forgotten_entry(k, w) for k, w in sorted(forgotten.items())],
    }
    if registered:  # older versions ignore the key: the file stays readable by them
        state["registered"] = [[s, t, dict(labels)] for s, t, labels in sorted(registered)]
    return json.dumps(state, separators=(",", ":"))


def _registered_from_json(entry: object) -> Registration:
    """One ``[store, task_id, {labels}]`` entry, checked like the configuration's."""
    if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], dict)):
        raise ValueError("registered entries must be [store, task_id, {labels}]")
    store, task_id = _key(entry[0], entry[1])
    pairs = tuple(sorted(entry[2].items()))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise ValueError("labels must map strings to strings")
    problem = labels_problem(pairs)
    if problem is not None:
        raise ValueError(problem)
    return store, task_id, pairs


@dataclass
class StateData:
    """What a state file held: tasks, forgotten tasks, and when unwatched ones were watched."""

    tasks: list[TaskRecord] = field(default_factory=list)
    forgotten: dict[Key, float] = field(default_factory=dict)
    last_watched: dict[Key, float] = field(default_factory=dict)
    registered: list[Registration] = field(default_factory=list)


def read_state(path: str) -> StateData:
    """Read the state file; what cannot be trusted is logged and skipped.

    A file that cannot be read or parsed at all is moved to ``<state_file>.corrupt`` (one
    copy, the latest) before a new one is written over it (docs/design.md, "State file").
    """
    report = log.error
    try:
        data = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return StateData()
    except (OSError, ValueError, RecursionError) as exc:
        report("ignoring unreadable state file", extra={"path": path, "err": exc})
        keep_corrupt(path)
        return StateData()
    problem = ""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        problem = "not a shoplazza-upload-exporter state file"
    elif data.get("version") != VERSION:
        problem = f"unsupported state file version {str(data.get('version'))[:20]!r}"
    elif not isinstance(data.get("tasks", []), list) or not isinstance(
        data.get("forgotten", []), list
    ):
        problem = "tasks and forgotten must be arrays"
    if problem:
        report("ignoring invalid state file", extra={"path": path, "err": problem})
        keep_corrupt(path)
        return StateData()
    state = StateData()
    registered = data.get("registered", [])
    for index, entry in enumerate(registered if isinstance(registered, list) else ()):
        try:
            state.registered.append(_registered_from_json(entry))
        except ValueError as exc:
            report(
                "ignoring an invalid state file entry",
                extra={"path": path, "entry": f"registered[{index}]", "err": exc},
            )
    for kind, items in (("tasks", data.get("tasks", [])), ("forgotten", data.get("forgotten", []))):
        for index, item in enumerate(items):
            try:
                if kind == "tasks":
                    task, stamp = _task_from_json(item)
                    key = (task.store, task.task_id)
                    state.tasks.append(task)
                else:
                    key, when, stamp = _forgotten_from_json(item)
                    state.forgotten[key] = when
            except ValueError as exc:
                report(
                    "ignoring an invalid state file entry",
                    extra={"path": path, "entry": f"{kind}[{index}]", "err": exc},
                )
                continue
            if stamp is not None:
                state.last_watched[key] = stamp
    log.info("loaded state file", extra={"path": path, "tasks": len(state.tasks)})
    return state


def load_state(path: str) -> tuple[list[TaskRecord], dict[Key, float]]:
    """Read the state file: (tasks, forgotten); a missing or foreign file yields nothing."""
    state = read_state(path)
    return state.tasks, state.forgotten


def keep_corrupt(path: str) -> None:
    """Move an unusable state file to ``<path>.corrupt`` (replacing an older copy)."""
    target = os.path.realpath(path)
    try:
        os.replace(target, target + ".corrupt")
        _fsync_directory(os.path.dirname(target))
    except OSError as exc:
        log.error("cannot keep the unusable state file aside", extra={"path": path, "err": exc})
        return
    log.warning("kept the unusable state file", extra={"path": target + ".corrupt"})


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``.

    A symlink is followed: its target is replaced and the link stays. The directory is
    fsynced after the rename, so the new file survives a crash.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


class StateFileInUse(Exception):
    """Another process holds the state file's lock."""


class StateLock:
    """An exclusive ``flock`` on ``<state_file>.lock``, held while the process runs.

    Two processes on one state file would each spend the whole API budget and overwrite
    each other's file: the second one refuses to start (docs/design.md, "State file").
    The lock file sits beside the resolved state file, so two links to one file share it.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path) + ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateFileInUse(
                f"state file {path} is in use by another process (lock {self.path} is held); "
                "run one process per state file"
            ) from None
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another process take the state file (the lock file stays)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def fsync_directory(path: str) -> None:
    """fsync the directory holding ``path``: a rename is durable only after this."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateWriter:
    """Writes the state file after changes (at most once per ``interval``) and on close.

    ``last_write_ok`` is None before the first attempt, then the outcome of the last one. A
    failed write is retried every ``interval`` and logged only when the outcome changes.
    ``watched`` names the configured tasks; the others are dropped from the file once
    unwatched for ``retention`` seconds, counted from ``last_watched`` (as read from the
    file) or from when the writer first sees them unwatched.
    """

    def __init__(
        self,
        path: str,
        snapshot: Snapshot,
        interval: float = 1.0,
        *,
        watched: Callable[[], Collection[Key]] | None = None,
        retention: float = DEFAULT_RETENTION,
        last_watched: Mapping[Key, float] | None = None,
        clock: Callable[[], float] = time.time,
        registered: Callable[[], Collection[Registration]] | None = None,
    ) -> None:
        self.path = path
        self._registered = registered
        # Durable writes (flush_now): callers take a ticket, one write covers every ticket
        # taken before its snapshot (a group commit: a batch or a burst is one write).
        self._tickets = itertools.count(1)
        self._durable = 0
        self._durable_text: str | None = None
        self.retention = retention
        self.last_write_ok: bool | None = None
        self._snapshot = snapshot
        self._watched = watched
        self._clock = clock
        self._interval = interval
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_text: str | None = None
        # Unwatched entries: when they were last seen watched (from the file, else first
        # seen unwatched); entries dropped after the retention are not written again.
        self._unwatched_since = dict(last_watched or {})
        self._dropped: set[Key] = set()
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def mark_dirty(self) -> None:
        """Note that the state changed; it is written soon."""
        self._dirty.set()

    def flush(self) -> None:
        """Write now if the content changed (or the last write failed)."""
        with self._lock:
            self._write(durable=False)

    def flush_now(self) -> bool:
        """Write now, file and directory fsynced; True once on disk (docs/task-api.md).

        Blocks (call it from a worker thread, never the event loop). Everything changed
        before the call is in the file when it returns True; concurrent callers share one
        write.
        """
        ticket = next(self._tickets)
        with self._lock:
            if self._durable >= ticket and self.last_write_ok:
                return True
            covered = next(self._tickets)  # every ticket below is in the snapshot taken now
            if self._write(durable=True):
                self._durable = covered
                return True
            return False

    def _write(self, durable: bool) -> bool:
        """Write the current state (lock held); True when the file holds it."""
        tasks, forgotten = self._snapshot()
        stamps = self._prune(tasks, forgotten)
        registered = self._registered() if self._registered is not None else ()
        text = dump_state(tasks, forgotten, stamps, registered)
        unchanged = text == self._last_text and self.last_write_ok
        if unchanged and (not durable or text == self._durable_text):
            return True
        try:
            if text != self._last_text or not self.last_write_ok:
                write_atomically(self.path, text)
            if durable:
                fsync_directory(self.path)
        except OSError as exc:
            if self.last_write_ok is not False:
                log.error("cannot write state file", extra={"path": self.path, "err": exc})
            self.last_write_ok = False
            return False
        if self.last_write_ok is False:
            log.info("state file written again", extra={"path": self.path})
        self.last_write_ok = True
        self._last_text = text
        if durable:
            self._durable_text = text
        return True

    def _prune(self, tasks: list[TaskRecord], forgotten: dict[Key, float]) -> dict[Key, float]:
        """Drop long-unwatched entries from ``tasks`` and ``forgotten`` (in place)."""
        if self._watched is None:
            return {}
        watched = set(self._watched())
        now = self._clock()
        keys = {(t.store, t.task_id) for t in tasks} | set(forgotten)
        self._dropped -= watched  # configured again: its new state is kept
        since: dict[Key, float] = {}
        for key in keys - watched - self._dropped:
            stamp = self._unwatched_since.get(key, now)
            if now - stamp >= self.retention:
                self._dropped.add(key)
                log.info(
                    "dropping the saved state of a task no longer configured",
                    extra={"store": key[0], "task_id": key[1]},
                )
            else:
                since[key] = stamp
        self._unwatched_since = since
        if self._dropped:
            tasks[:] = [t for t in tasks if (t.store, t.task_id) not in self._dropped]
            for key in self._dropped & set(forgotten):
                del forgotten[key]
        return since

    def _next_prune(self) -> float:
        """Seconds until the next unwatched entry is due to be dropped (at most an hour)."""
        now = self._clock()
        due = (stamp + self.retention - now for stamp in self._unwatched_since.values())
        return min(max(min(due, default=3600.0), 0.0), 3600.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait(self._next_prune())
            if self._stop.is_set():
                return
            self._dirty.clear()
            self.flush()
            if self.last_write_ok is False:
                self._dirty.set()  # retried after the interval, logged only on change
            self._stop.wait(self._interval)

    def close(self) -> None:
        """Stop the writer thread and write a last time."""
        self._stop.set()
        self._dirty.set()
        self.flush()
