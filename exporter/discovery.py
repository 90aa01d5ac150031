"""Task ids discovered from ``task_id_files``: globs re-evaluated, files re-read on change."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from exporter.config import expand_task_id_files, read_task_id_file

log = logging.getLogger("exporter.discovery")

_Stamp = tuple[int, int, int]


class TaskFiles:
    """The ids listed in one store's ``task_id_files``, re-read only when a file changes."""

    def __init__(
        self,
        store: str,
        patterns: Sequence[str],
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.patterns = tuple(patterns)
        self.min_interval = min_interval
        self._clock = clock
        self._checked: float | None = None
        self._files: dict[str, tuple[_Stamp, tuple[str, ...]]] = {}
        self.ids: frozenset[str] = frozenset()

    def refresh(self, force: bool = False) -> bool:
        """Re-check the files (at most once per ``min_interval``); True when the ids changed."""
        if not self.patterns:
            return False
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < self.min_interval:
            return False
        self._checked = now
        files: dict[str, tuple[_Stamp, tuple[str, ...]]] = {}
        for path in expand_task_id_files(self.patterns):
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished between glob and stat: it simply lists nothing now
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            known = self._files.get(path)
            if known is not None and known[0] == stamp:
                files[path] = known
                continue
            listed, warnings = read_task_id_file(path)
            for warning in warnings:
                log.warning("skipping task id line", extra={"store": self.store, "err": warning})
            files[path] = (stamp, tuple(listed))
        self._files = files
        ids = frozenset(task_id for _, known_ids in files.values() for task_id in known_ids)
        changed = ids != self.ids
        self.ids = ids
        return changed
