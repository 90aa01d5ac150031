"""Files the exporter watches while it runs: task id files and store files.

Globs are re-evaluated and files re-read only when their ``stat`` changes, so a check is
cheap enough to run every second and on every scrape, with a thousand files
(docs/design.md, "Configuration").
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from exporter.config import Config, StoreConfig, StoreFile, parse_store_file
from exporter.config.files import MAX_WALK_ENTRIES, Matches, expand, open_regular, read_regular
from exporter.config.kit import quoted
from exporter.config.labels import LineProblem, parse_task_line
from exporter.config.model import Labels
from exporter.config.stores import shared_budget_warnings

log = logging.getLogger("exporter.config.watch")

_Stamp = tuple[int, int, int] | None
_MAX_LINE_WARNINGS = 20
_BOM = b"\xef\xbb\xbf"
# Bytes of a task id file split, and ids copied, per C call: a split or a set of a million
# holds the GIL, and so the probes, for tenths of a second (docs/design.md, "Rules for files").
_BLOCK_BYTES = 1 << 20
_BLOCK_IDS = 20_000


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


_TOKEN_LINE = "holds an access token, not a task id"
_PLAIN_LINE = re.compile(rb"[ \t]*([A-Za-z0-9_-]{1,128})[ \t\r]*")
# Bytes before the end already read that must be unchanged for an append to be read alone.
_CHECK_BYTES = 4096


class _Listing:
    """One task id file as read so far: the complete lines, and the unterminated last one.

    When the file only grew (same inode, longer, the bytes before the old end unchanged)
    only what was appended is read (docs/design.md, "Rules for files").
    """

    __slots__ = ("bad", "check", "ident", "ids", "labels", "lines", "offset", "size", "tail")

    def __init__(self) -> None:
        self.ident: tuple[int, int] | None = None  # (st_dev, st_ino)
        self.size = 0  # bytes read
        self.offset = 0  # end of the last complete line
        self.check = b""  # the last bytes read, up to _CHECK_BYTES
        self.lines = 0  # complete lines read
        self.bad = 0  # lines skipped so far
        self.ids: dict[str, None] = {}
        self.labels: dict[str, Labels] = {}
        self.tail: tuple[str, Labels] | None = None  # the entry of an unterminated last line

    def all_ids(self) -> list[str]:
        """The ids in file order, the unterminated last line's included."""
        ids = list(self.ids)
        if self.tail is not None and self.tail[0] not in self.ids:
            ids.append(self.tail[0])
        return ids

    def label_of(self, task_id: str) -> Labels | None:
        found = self.labels.get(task_id)
        if found is None and task_id not in self.ids and self.tail and self.tail[0] == task_id:
            return self.tail[1] or None
        return found


def _pause() -> None:
    """Between two blocks: let the server's threads have the GIL at once."""
    time.sleep(0)


def _split_lines(data: bytes) -> Iterator[bytes]:
    """``data.split(b"\\n")`` a block of at most about _BLOCK_BYTES at a time."""
    start = 0
    while len(data) - start > _BLOCK_BYTES:
        end = data.find(b"\n", start + _BLOCK_BYTES)
        if end < 0:
            break
        yield from data[start:end].split(b"\n")
        start = end + 1
        _pause()
    yield from data[start:].split(b"\n")


def _parse_lines(
    listing: _Listing,
    data: bytes,
    path: str,
    secrets: AbstractSet[str],
    warnings: list[str],
) -> list[str]:
    """Add the lines of ``data`` (from ``listing.offset``) to ``listing``; the new ids."""
    if listing.size == len(data) and data.startswith(_BOM):  # read from the start
        data = data[len(_BOM) :]
    new: list[str] = []
    listing.tail = None
    last = data.count(b"\n")
    for position, raw in enumerate(_split_lines(data)):
        number = listing.lines + position + 1
        problem: str | None = None
        parsed: tuple[str, Labels] | None = None
        plain = _PLAIN_LINE.fullmatch(raw)  # the common line, a bare id: no parsing
        if plain is not None and not (secrets and plain[1].decode("ascii") in secrets):
            task_id = plain[1].decode("ascii")
            if position == last:
                listing.tail = (task_id, ())
                new.append(task_id)
            elif task_id not in listing.ids:
                listing.ids[task_id] = None
                new.append(task_id)
            continue
        try:
            line = raw.decode("utf-8")
            if secrets and line.strip() in secrets:
                problem = _TOKEN_LINE
            else:
                parsed = parse_task_line(line)
                if parsed is not None and parsed[0] in secrets:
                    problem = _TOKEN_LINE
        except UnicodeDecodeError:
            problem = "not valid UTF-8"
        except LineProblem as exc:
            problem = exc.reason  # never the line itself: the file may hold anything
        if problem is None:
            if parsed is None:
                continue
            if position == last:
                listing.tail = parsed
                new.append(parsed[0])
            elif parsed[0] not in listing.ids:
                listing.ids[parsed[0]] = None
                if parsed[1]:
                    listing.labels[parsed[0]] = parsed[1]
                new.append(parsed[0])
            continue
        if position < last:
            listing.bad += 1
        if len(warnings) < _MAX_LINE_WARNINGS:
            warnings.append(f"{path}:{number}: {problem}")
    listing.lines += last
    return new


def _read_listing(
    path: str, known: _Listing | None, secrets: AbstractSet[str]
) -> tuple[_Listing, list[str] | None, list[str], _Stamp]:
    """(listing, ids the appended lines add or None when read whole, warnings, stamp)."""
    warnings: list[str] = []
    try:
        fd = open_regular(path)
    except OSError as exc:
        return _Listing(), None, [f"{path}: cannot read: {exc.strerror or exc}"], None
    except ValueError:
        return _Listing(), None, [f"{path}: cannot read: invalid path"], None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        ident, size = (st.st_dev, st.st_ino), st.st_size
        appended = (
            known is not None
            and known.ident == ident
            and size > known.size
            and os.pread(handle.fileno(), len(known.check), known.size - len(known.check))
            == known.check
        )
        if appended and known is not None:
            listing, start = known, known.offset
        else:
            listing, start = _Listing(), 0
        handle.seek(start)
        data = handle.read(max(size - start, 0))  # what fstat saw: later bytes come next time
        size = start + len(data)
        keep = min(size, _CHECK_BYTES)
        check = os.pread(handle.fileno(), keep, size - keep)
    listing.ident, listing.size, listing.check = ident, size, check
    listing.offset = start + data.rfind(b"\n") + 1
    bad_before = listing.bad
    new = _parse_lines(listing, data, path, secrets, warnings)
    skipped = listing.bad - bad_before
    if skipped > _MAX_LINE_WARNINGS:
        warnings.append(f"{path}: {skipped - _MAX_LINE_WARNINGS} more invalid lines skipped")
    return listing, (new if appended else None), warnings, (st.st_mtime_ns, size, st.st_ino)


def read_task_file(path: str, secrets: AbstractSet[str] = frozenset()) -> TaskFile:
    """Read ``id [name=value]...`` lines ('#' comments); a bad line is skipped alone."""
    listing, _, warnings, _ = _read_listing(path, None, secrets)
    ids = listing.all_ids()
    labels = {task_id: found for task_id in ids if (found := listing.label_of(task_id))}
    return TaskFile(tuple(ids), labels, tuple(warnings))


def read_task_id_file(path: str) -> tuple[list[str], list[str]]:
    """Read one id a line ('#' comments, blank lines ignored); return (ids, warnings)."""
    listed = read_task_file(path)
    return list(listed.ids), list(listed.warnings)


def expand_task_id_files(patterns: Sequence[str]) -> list[str]:
    """The regular files the globs match inside their bases, sorted, each once (bounded)."""
    return list(expand(tuple(patterns)).files)


def _same_ids(ids: set[str], other: set[str]) -> bool:
    """``ids == other``, compared a block per C call."""
    if len(ids) != len(other):
        return False
    each = iter(ids)
    while block := list(itertools.islice(each, _BLOCK_IDS)):
        if not other.issuperset(block):
            return False
        _pause()
    return True


class TaskFiles:
    """The ids (and labels) listed in one store's ``task_id_files``, re-read on change.

    After :meth:`refresh`, ``added`` holds the ids that appended lines added when that is
    all that changed (None: anything may have changed), so a watcher of a file of a
    million lines pays for what is appended, not for the file.
    """

    def __init__(
        self,
        store: str,
        patterns: Sequence[str],
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float],
        secrets: Callable[[], AbstractSet[str]] | None = None,
    ) -> None:
        self.store = store
        self.patterns = tuple(patterns)
        self.min_interval = min_interval
        self._clock = clock
        self._secrets = secrets or frozenset
        self._checked: float | None = None
        self._files: dict[str, tuple[_Stamp, _Listing]] = {}
        self._skipped: tuple[tuple[str, str], ...] = ()
        self._truncated = False
        self.ids: set[str] = set()
        self.labels: dict[str, Labels] = {}
        self.added: frozenset[str] | None = None

    def refresh(self, force: bool = False) -> bool:
        """Re-check the files (at most once per ``min_interval``); True if ids or labels changed."""
        if not self.patterns:
            return False
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < self.min_interval:
            return False
        self._checked = now
        matches = expand(self.patterns)
        self._report(matches)
        secrets = self._secrets()
        files: dict[str, tuple[_Stamp, _Listing]] = {}
        whole = set(self._files) != set(matches.files)
        added: list[tuple[str, _Listing]] = []
        for path in matches.files:
            stamp = _stamp(path)
            if stamp is None:
                whole = True
                continue  # vanished between glob and stat: it simply lists nothing now
            known = self._files.get(path)
            if known is not None and known[0] == stamp:
                files[path] = known
                continue
            had_tail = known is not None and known[1].tail is not None
            listing, new, warnings, read = _read_listing(path, known[1] if known else None, secrets)
            for warning in warnings:
                log.warning("skipping task id line", extra={"store": self.store, "err": warning})
            files[path] = (read or stamp, listing)
            if new is None or had_tail:
                whole = True  # read whole, or its unterminated last line may have changed
            else:
                added.extend((task_id, listing) for task_id in new)
        self._files = files
        if not whole and all(
            task_id not in self.ids or listing.label_of(task_id) is None
            for task_id, listing in added
        ):
            fresh = {task_id for task_id, _ in added if task_id not in self.ids}
            for task_id, listing in added:
                found = listing.label_of(task_id)
                if task_id in fresh and found:
                    self.labels.setdefault(task_id, found)
            self.ids |= fresh
            self.added = frozenset(fresh)
            return bool(fresh)
        labels: dict[str, Labels] = {}
        ids: set[str] = set()
        for _, listing in files.values():  # sorted paths: the first file naming a task wins
            for task_id, task_labels in listing.labels.items():
                labels.setdefault(task_id, task_labels)
            listed = iter(listing.ids)
            while block := list(itertools.islice(listed, _BLOCK_IDS)):
                ids.update(block)  # a block per C call
                _pause()
            if listing.tail is not None:
                ids.add(listing.tail[0])
                if listing.tail[1] and listing.tail[0] not in listing.ids:
                    labels.setdefault(listing.tail[0], listing.tail[1])
        changed = not _same_ids(ids, self.ids) or labels != self.labels
        self.ids, self.labels, self.added = ids, labels, None
        return changed

    def in_order(self, among: AbstractSet[str] | None = None) -> Iterator[str]:
        """The listed ids (those in ``among`` when given) in file order, files in sorted
        path order; an id listed twice comes twice. A generator: never one long C call over
        a million ids (the poller adds them a chunk at a time)."""
        for _, listing in list(self._files.values()):
            for task_id in listing.all_ids():
                if among is None or task_id in among:
                    yield task_id

    def _report(self, matches: Matches) -> None:
        """Log skipped paths and a cut-short walk once, when that starts."""
        for path, reason in matches.skipped:
            if (path, reason) not in self._skipped:
                log.warning(
                    "skipping task id file",
                    extra={"store": self.store, "file": path, "err": reason},
                )
        self._skipped = matches.skipped
        if matches.truncated and not self._truncated:
            log.warning(
                "task id file globs cut short: too many directory entries",
                extra={"store": self.store, "limit": MAX_WALK_ENTRIES},
            )
        self._truncated = matches.truncated


# --- store files ---------------------------------------------------------------------------


@dataclass
class _Entry:
    """One store file: its latest reading and the last version that was accepted."""

    stamps: tuple[tuple[str, _Stamp], ...]  # the file, then the token and CA files it read
    parsed: StoreFile
    good: StoreFile | None
    errors: tuple[str, ...] = ()  # as last logged
    digest: bytes = b""  # of the content parsed
    pending: tuple[bytes, float] | None = None  # new content, and when it was first seen


# A changed store file is applied once its content stayed the same this long (two checks).
STABLE_AFTER = 1.0


class StoreFiles:
    """The stores held by the files ``store_files`` matches, each file isolated from the others.

    A file with any error (its own, or a store name defined earlier: the main file first,
    then the files in sorted path order) keeps its last good version and counts in
    ``invalid``; at start such a file contributes no stores (docs/design.md,
    "Configuration"). After the first reading, a file whose content changed is applied only
    once that content was the same at two checks :data:`STABLE_AFTER` seconds apart, so a
    file rewritten in place is never applied half-written (docs/design.md, "Rules for
    files").
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
        self._started = False  # the first reading applies at once: nothing to protect yet
        self._skipped: tuple[tuple[str, str], ...] = ()
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
            matches = expand(self.config.store_files)
            for path, reason in matches.skipped:
                if (path, reason) not in self._skipped and not self._quiet:
                    log.warning("skipping store file", extra={"file": path, "err": reason})
            self._skipped = matches.skipped
            self._read(matches.files, now)
            self._started = True
            return self._combine()
        finally:
            self._lock.release()

    def _read(self, paths: Sequence[str], now: float) -> None:
        entries: dict[str, _Entry] = {}
        for path in paths:
            entry = self._entries.get(path)
            if (
                entry is not None
                and entry.pending is None
                and all(_stamp(file) == stamp for file, stamp in entry.stamps)
            ):
                entries[path] = entry
                continue
            stamp = _stamp(path)  # before reading: a write meanwhile is seen next time
            try:
                content: bytes | None = read_regular(path)
            except (OSError, ValueError):
                content = None  # parse_store_file says why
            digest = hashlib.sha256(content).digest() if content is not None else b""
            if content is not None and not self._stable(entry, digest, now):
                if entry is None:
                    entry = _Entry(((path, stamp),), StoreFile(path), None)
                if entry.pending is None or entry.pending[0] != digest:
                    entry.pending = (digest, now)
                entries[path] = entry
                continue
            parsed = parse_store_file(path, self.config.defaults, self._environ, content)
            # An invalid file is also read again when a token or CA file it names changes
            # (a missing token file appears); a valid one is not: the client re-reads
            # rotated tokens itself.
            deps = () if parsed.ok else parsed.files_read
            stamps = ((path, stamp), *((file, _stamp(file)) for file in deps))
            if entry is None:
                entry = _Entry(stamps, parsed, None)
            entry.stamps, entry.parsed = stamps, parsed
            entry.digest, entry.pending = digest, None
            entries[path] = entry
        for path in self._entries.keys() - entries.keys():
            log.info("store file gone, its stores are no longer watched", extra={"file": path})
        self._entries = entries

    def _stable(self, entry: _Entry | None, digest: bytes, now: float) -> bool:
        """Whether content with ``digest`` may be applied now."""
        if not self._started or self._quiet:
            return True  # the first reading, or --config.check: nothing to protect
        if entry is not None and entry.digest == digest and entry.pending is None:
            return True  # the same content: touched, or read again for a new default
        if entry is not None and entry.pending is not None and entry.pending[0] == digest:
            return now - entry.pending[1] >= STABLE_AFTER
        return False

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
