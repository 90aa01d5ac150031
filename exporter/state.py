"""The state file: last known task data kept across restarts, written atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from exporter.model import FailedFile, TaskSnapshot, TaskState

log = logging.getLogger("exporter.state")

FORMAT = "shoplazza-upload-exporter/state"
VERSION = 1


def _task_to_json(task: TaskState) -> dict[str, Any]:
    snap = task.snapshot
    assert snap is not None
    return {
        "store": task.store,
        "task_id": task.task_id,
        "total": snap.total,
        "finished": snap.finished,
        "status": snap.status,
        "succeeded": snap.succeeded,
        "failed": snap.failed,
        "failures": [[f.origin_link, f.reason] for f in snap.failures],
        "poll_success": task.poll_success,
        "last_code": task.last_code,
        "last_success": task.last_success,
        "last_progress": task.last_progress,
        "completed_at": task.completed_at,
    }


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a number")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


def _task_from_json(item: object) -> TaskState:
    if not isinstance(item, dict):
        raise ValueError("task entry is not an object")
    failures = item.get("failures", [])
    if not isinstance(failures, list) or not all(
        isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in failures
    ):
        raise ValueError("failures is not a list of [origin_link, reason]")
    store, task_id, last_code = item.get("store"), item.get("task_id"), item.get("last_code")
    if not isinstance(store, str) or not isinstance(task_id, str):
        raise ValueError("store and task_id must be strings")
    if last_code is not None and not isinstance(last_code, str):
        raise ValueError("last_code must be a string")
    snapshot = TaskSnapshot(
        total=_count(item.get("total")),
        finished=_count(item.get("finished")),
        status=_count(item.get("status")),
        succeeded=_count(item.get("succeeded")),
        failed=_count(item.get("failed")),
        failures=tuple(FailedFile(origin_link=a, reason=b) for a, b in failures),
    )
    return TaskState(
        store=store,
        task_id=task_id,
        snapshot=snapshot,
        poll_success=bool(item.get("poll_success", True)),
        last_code=last_code,
        last_success=_number(item.get("last_success")),
        last_progress=_number(item.get("last_progress")),
        completed_at=_number(item.get("completed_at")),
    )


def dump_state(tasks: list[TaskState], forgotten: dict[tuple[str, str], float]) -> str:
    """The state file's text."""
    return json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "tasks": [_task_to_json(t) for t in tasks],
            "forgotten": [[s, t, when] for (s, t), when in sorted(forgotten.items())],
        },
        separators=(",", ":"),
    )


def load_state(path: str) -> tuple[list[TaskState], dict[tuple[str, str], float]]:
    """Read the state file; a missing, corrupt or foreign file yields nothing (logged)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return [], {}
    except (OSError, ValueError, RecursionError) as exc:
        log.error("ignoring unreadable state file", extra={"path": path, "err": exc})
        return [], {}
    try:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a shoplazza-upload-exporter state file")
        if data.get("version") != VERSION:
            raise ValueError(f"unsupported state file version {data.get('version')!r}")
        items, gone = data.get("tasks", []), data.get("forgotten", [])
        if not isinstance(items, list) or not isinstance(gone, list):
            raise ValueError("tasks and forgotten must be arrays")
        tasks = [_task_from_json(item) for item in items]
        forgotten: dict[tuple[str, str], float] = {}
        for entry in gone:
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ValueError("forgotten entries must be [store, task_id, time]")
            store, task_id, when = entry
            if not isinstance(store, str) or not isinstance(task_id, str):
                raise ValueError("forgotten entries must be [store, task_id, time]")
            when = _number(when)
            if when is None:
                raise ValueError("forgotten entries need a completion time")
            forgotten[(store, task_id)] = when
    except ValueError as exc:
        log.error("ignoring invalid state file", extra={"path": path, "err": exc})
        return [], {}
    log.info("loaded state file", extra={"path": path, "tasks": len(tasks)})
    return tasks, forgotten


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateWriter:
    """Writes the state file after changes (at most once per ``interval``) and on close."""

    def __init__(
        self,
        path: str,
        snapshot: Callable[[], tuple[list[TaskState], dict[tuple[str, str], float]]],
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._interval = interval
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_text: str | None = None
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        self._thread.start()

    def mark_dirty(self) -> None:
        """Note that the state changed; it is written soon."""
        self._dirty.set()

    def flush(self) -> None:
        """Write now if the content changed."""
        with self._lock:
            text = dump_state(*self._snapshot())
            if text == self._last_text:
                return
            try:
                write_atomically(self.path, text)
            except OSError as exc:
                log.error("cannot write state file", extra={"path": self.path, "err": exc})
                return
            self._last_text = text

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            self.flush()
            self._stop.wait(self._interval)

    def close(self) -> None:
        """Stop the writer thread and write a last time."""
        self._stop.set()
        self._dirty.set()
        self.flush()
