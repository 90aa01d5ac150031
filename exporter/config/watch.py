"""Files the exporter watches while it runs: task id files and store files.

Globs are re-evaluated and files re-read only when their ``stat`` changes, so a check is
cheap enough to run every second and on every scrape, with a thousand files
(docs/design.md, "Configuration").
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from exporter.config import Config, StoreConfig, StoreFile, parse_store_file
from exporter.config.kit import quoted
from exporter.config.labels import LineProblem, parse_task_line
from exporter.config.model import Labels
from exporter.config.stores import shared_budget_warnings

log = logging.getLogger("exporter.config.watch")

_Stamp = tuple[int, int, int] | None
_MAX_LINE_WARNINGS = 20
_BOM = b"\xef\xbb\xbf"


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


# --- task id files -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFile:
    """What one task id file lists: ids in order, the labels of those that carry some."""

    ids: tuple[str, ...] = ()
    labels: Mapping[str, Labels] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def read_task_file(path: str) -> TaskFile:
    """Read ``id [name=value]...`` lines ('#' comments); a bad line is skipped alone."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return TaskFile(warnings=(f"{path}: cannot read: {exc.strerror or exc}",))
    except ValueError:
        return TaskFile(warnings=(f"{path}: cannot read: invalid path",))
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    ids: dict[str, None] = {}
    labels: dict[str, Labels] = {}
    warnings: list[str] = []
    bad = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            parsed = parse_task_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = "not valid UTF-8"
        except LineProblem as exc:
            problem = str(exc)
        else:
            if parsed is not None and parsed[0] not in ids:
                ids[parsed[0]] = None
                if parsed[1]:
                    labels[parsed[0]] = parsed[1]
            continue
        bad += 1
        if bad <= _MAX_LINE_WARNINGS:
            warnings.append(f"{path}:{number}: {problem}")
    if bad > _MAX_LINE_WARNINGS:
        warnings.append(f"{path}: {bad - _MAX_LINE_WARNINGS} more invalid lines skipped")
    return TaskFile(tuple(ids), labels, tuple(warnings))


def read_task_id_file(path: str) -> tuple[list[str], list[str]]:
    """Read one id a line ('#' comments, blank lines ignored); return (ids, warnings)."""
    listed = read_task_file(path)
    return list(listed.ids), list(listed.warnings)


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
    """The ids (and labels) listed in one store's ``task_id_files``, re-read on change."""

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
        self._files: dict[str, tuple[_Stamp, TaskFile]] = {}
        self.ids: frozenset[str] = frozenset()
        self.labels: dict[str, Labels] = {}

    def refresh(self, force: bool = False) -> bool:
        """Re-check the files (at most once per ``min_interval``); True if ids or labels changed."""
        if not self.patterns:
            return False
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < self.min_interval:
            return False
        self._checked = now
        files: dict[str, tuple[_Stamp, TaskFile]] = {}
        for path in expand_task_id_files(self.patterns):
            stamp = _stamp(path)
            if stamp is None:
                continue  # vanished between glob and stat: it simply lists nothing now
            known = self._files.get(path)
            if known is not None and known[0] == stamp:
                files[path] = known
                continue
            listed = read_task_file(path)
            for warning in listed.warnings:
                log.warning("skipping task id line", extra={"store": self.store, "err": warning})
            files[path] = (stamp, listed)
        self._files = files
        labels: dict[str, Labels] = {}
        for _, listed in files.values():  # sorted paths: the first file naming a task wins
            for task_id, task_labels in listed.labels.items():
                labels.setdefault(task_id, task_labels)
        ids = frozenset(task_id for _, listed in files.values() for task_id in listed.ids)
        changed = ids != self.ids or labels != self.labels
        self.ids, self.labels = ids, labels
        return changed


# --- store files ---------------------------------------------------------------------------


@dataclass
class _Entry:
    """One store file: its latest reading and the last version that was accepted."""

    stamps: tuple[tuple[str, _Stamp], ...]  # the file, then the token and CA files it read
    parsed: StoreFile
    good: StoreFile | None
    errors: tuple[str, ...] = ()  # as last logged


class StoreFiles:
    """The stores held by the files ``store_files`` matches, each file isolated from the others.

    A file with any error (its own, or a store name defined earlier: the main file first,
    then the files in sorted path order) keeps its last good version and counts in
    ``invalid``; at start such a file contributes no stores (docs/design.md,
    "Configuration").
    """

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float],
        min_interval: float = 1.0,
        quiet: bool = False,
    ) -> None:
        self._environ = environ
        self._quiet = quiet  # --config.check prints errors itself
        self._clock = clock
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._checked: float | None = None
        self._warned: set[str] = set()
        self.config = config
        self.stores: tuple[StoreConfig, ...] = ()
        self.errors: tuple[str, ...] = ()  # every error of the files invalid now
        self.warnings: tuple[str, ...] = ()  # of the files in force, and shared budgets
        self.invalid = 0

    def configure(self, config: Config) -> None:
        """A new main configuration: every file is read again at the next refresh."""
        with self._lock:
            self.config = config
            self._checked = None
            for entry in self._entries.values():
                entry.stamps = ()

    def refresh(self, force: bool = False) -> bool:
        """Look for changes (at most once per ``min_interval``); True when the stores changed."""
        if not self._lock.acquire(blocking=force):
            return False  # another thread is looking right now
        try:
            now = self._clock()
            if not force and self._checked is not None and now - self._checked < self.min_interval:
                return False
            self._checked = now
            self._read(expand_task_id_files(self.config.store_files))
            return self._combine()
        finally:
            self._lock.release()

    def _read(self, paths: Sequence[str]) -> None:
        entries: dict[str, _Entry] = {}
        for path in paths:
            entry = self._entries.get(path)
            if entry is not None and all(_stamp(file) == stamp for file, stamp in entry.stamps):
                entries[path] = entry
                continue
            stamp = _stamp(path)  # before reading: a write meanwhile is seen next time
            parsed = parse_store_file(path, self.config.defaults, self._environ)
            # An invalid file is also read again when a token or CA file it names changes
            # (a missing token file appears); a valid one is not: the client re-reads
            # rotated tokens itself.
            deps = () if parsed.ok else parsed.files_read
            stamps = ((path, stamp), *((file, _stamp(file)) for file in deps))
            if entry is None:
                entry = _Entry(stamps, parsed, None)
            entry.stamps, entry.parsed = stamps, parsed
            entries[path] = entry
        for path in self._entries.keys() - entries.keys():
            log.info("store file gone, its stores are no longer watched", extra={"file": path})
        self._entries = entries

    def _combine(self) -> bool:
        config = self.config
        names = {
            store.name: f"{config.source} stores[{i}]" for i, store in enumerate(config.stores)
        }
        stores: list[StoreConfig] = []
        where: list[tuple[str, StoreConfig]] = []
        errors: list[str] = []
        warnings: list[str] = []
        invalid = 0
        for path, entry in sorted(self._entries.items()):
            parsed, problems = entry.parsed, list(entry.parsed.errors)
            for i, store in enumerate(parsed.stores):
                if store.name in names:
                    problems.append(
                        f"{path}: stores[{i}].name: duplicate store name {quoted(store.name)} "
                        f"(first at {names[store.name]})"
                    )
            if not problems:
                entry.good = parsed
                warnings.extend(parsed.warnings)
            if not self._quiet:
                self._log(path, entry, tuple(problems))
            if problems:
                invalid += 1
                errors.extend(problems)
            kept = entry.good.stores if entry.good is not None else ()
            for i, store in enumerate(kept):
                if store.name not in names:
                    names[store.name] = f"{path} stores[{i}]"
                    stores.append(store)
                    where.append((f"{path}: stores[{i}]", store))
        changed = tuple(stores) != self.stores
        if changed or errors != list(self.errors):
            main = [(f"{config.source}: stores[{i}]", s) for i, s in enumerate(config.stores)]
            shared = shared_budget_warnings(main + where)
            warnings += [line for line in shared if line not in config.warnings]
            for warning in warnings:
                if warning not in self._warned and not self._quiet:
                    log.warning("store file warning", extra={"err": warning})
            self._warned = set(warnings)
            self.warnings = tuple(warnings)
        self.invalid, self.errors, self.stores = invalid, tuple(errors), tuple(stores)
        return changed

    @staticmethod
    def _log(path: str, entry: _Entry, problems: tuple[str, ...]) -> None:
        if problems == entry.errors:
            return
        if problems:
            for line in problems:
                log.error(
                    "store file invalid, keeping its last good version",
                    extra={"file": path, "err": line},
                )
        else:
            log.info("store file loaded", extra={"file": path, "stores": len(entry.parsed.stores)})
        entry.errors = problems
