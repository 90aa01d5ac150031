"""Task ids discovered from ``task_id_files``: globs re-evaluated, files re-read on change."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Sequence

from exporter.config import TASK_ID_RE
from exporter.config.yamlfile import quoted

log = logging.getLogger("exporter.discovery")

_Stamp = tuple[int, int, int]
_MAX_LINE_WARNINGS = 20


def read_task_id_file(path: str) -> tuple[list[str], list[str]]:
    """Read one id a line ('#' comments, blank lines ignored); return (ids, warnings)."""
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except OSError as exc:
        return [], [f"{path}: cannot read: {exc.strerror or exc}"]
    except UnicodeDecodeError:
        return [], [f"{path}: cannot read: not valid UTF-8"]
    except ValueError:
        return [], [f"{path}: cannot read: invalid path"]
    ids: dict[str, None] = {}
    warnings: list[str] = []
    bad = 0
    for number, line in enumerate(text.split("\n"), start=1):
        task_id = line.split("#", 1)[0].strip()
        if not task_id:
            continue
        if TASK_ID_RE.match(task_id):
            ids.setdefault(task_id)
            continue
        bad += 1
        if bad <= _MAX_LINE_WARNINGS:
            warnings.append(f"{path}:{number}: invalid task id {quoted(task_id)}")
    if bad > _MAX_LINE_WARNINGS:
        warnings.append(f"{path}: {bad - _MAX_LINE_WARNINGS} more invalid lines skipped")
    return list(ids), warnings


def expand_task_id_files(patterns: Sequence[str]) -> list[str]:
    """Expand glob patterns ("**" included) to the files they match, sorted, each once."""
    found: set[str] = set()
    for pattern in patterns:
        try:
            matches = glob.glob(pattern, recursive=True)
            found.update(os.path.normpath(m) for m in matches if os.path.isfile(m))
        except (OSError, ValueError):
            continue
    return sorted(found)


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
