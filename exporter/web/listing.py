"""Listings of the fleet's tasks: problems first, filtered, paged by a cursor that holds.

The order of a listing is (state rank, store, task id), ranks in
:data:`~exporter.web.states.PROBLEMS_FIRST`. A *pass* is the sequence of pages from a first
page (no cursor) on. Its cursor names the generation the first page was served at and the
last row's place; the next page continues strictly after that place, in the order the
tasks had at that generation. A task that changed state since is found in the journal of
rank changes and kept at its old place, so a pass never returns a task twice and never
skips one that existed throughout (docs/design.md, "Status pages", proves it).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

from exporter.model import ExporterView, TaskRecord
from exporter.web.index import ABSENT, StoreIndex, build, derive
from exporter.web.query import Query, QueryError
from exporter.web.states import PROBLEMS_FIRST, RANK

#: How long a pass stays exact after its first page, unless the journal fills up first.
PASS_LIFETIME = 3600.0
#: Rank changes the journal keeps (about 100 bytes each), whatever their age.
MAX_JOURNAL = 250_000
_RANKS = len(PROBLEMS_FIRST)
_STORE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TASK_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class CursorExpired(QueryError):
    """The pass a cursor belongs to can no longer be continued exactly (answered 410)."""


@dataclass(frozen=True)
class Fleet:
    """The index of every store of one view, sorted by store name, at generation ``gen``."""

    view: ExporterView
    gen: int
    names: tuple[str, ...]
    stores: tuple[StoreIndex, ...]

    def store(self, name: str) -> StoreIndex | None:
        """The index of the store called ``name``, if this view has it."""
        at = bisect_left(self.names, name)
        return self.stores[at] if at < len(self.names) and self.names[at] == name else None

    def totals(self) -> list[int]:
        """Tasks per rank, over every store."""
        return [sum(index.count(rank) for index in self.stores) for rank in range(_RANKS)]


@dataclass(frozen=True, slots=True)
class Row:
    """One task on a page: its place in the pass (``rank``), its store and record, and its
    current ``state`` (which differs from the rank's when it changed during the pass)."""

    rank: int
    index: StoreIndex
    task: TaskRecord
    state: str


@dataclass(frozen=True)
class Page:
    """One page of a listing: its rows, the cursor of the next page (None: the last one)."""

    fleet: Fleet
    query: Query
    rows: list[Row]
    next: str | None
    continued: bool  # a page after the first of its pass


@dataclass
class _Chunk:
    gen: int
    when: float
    moved: dict[str, dict[str, int]]  # store -> task id -> rank before this generation
    appeared: tuple[str, ...]  # stores indexed from nothing at this generation
    size: int


class Listing:
    """The indexes of the last view, the journal of rank changes, and pages over them.

    Memory is bounded by the tasks (one index per store) and the journal (at most
    :data:`MAX_JOURNAL` changes, none older than :data:`PASS_LIFETIME`); nothing is kept
    per request or per pass.
    """

    def __init__(
        self,
        lifetime: float = PASS_LIFETIME,
        max_journal: int = MAX_JOURNAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._lifetime = lifetime
        self._max_journal = max_journal
        self._clock = clock
        self._epoch = secrets.token_hex(4)  # cursors of another process are not ours
        self._gen = 0
        self._floor = 0  # passes that started before this generation have expired
        self._indexes: dict[str, StoreIndex] = {}
        self._fleet: Fleet | None = None
        self._journal: deque[_Chunk] = deque()
        self._journal_size = 0

    def fleet(self, view: Callable[[], ExporterView]) -> Fleet:
        """The fleet's indexes brought up to the view ``view()`` returns (taken under the
        lock, so views are applied in the order they were taken)."""
        with self._lock:
            return self._update(view())

    def page(self, view: Callable[[], ExporterView], query: Query) -> Page:
        """The rows ``query`` asks for; :class:`QueryError` or :class:`CursorExpired` for a
        cursor that is not valid."""
        with self._lock:
            fleet = self._update(view())
            if query.after:
                start, place = self._decode(query.after)
                moved, appeared = self._since(start)
            else:
                start, place, moved, appeared = fleet.gen, None, {}, set()
        rows = list(_select(fleet, query, place, moved, appeared, query.limit + 1))
        more = len(rows) > query.limit
        del rows[query.limit :]
        cursor = None
        if more:
            last = rows[-1]
            cursor = self._encode(start, (last.rank, last.index.name, last.task.task_id))
        return Page(fleet, query, rows, cursor, query.after is not None)

    # --- keeping the indexes and the journal ---------------------------------------------

    def _update(self, view: ExporterView) -> Fleet:
        now = view.now
        indexes: dict[str, StoreIndex] = {}
        moved: dict[str, dict[str, int]] = {}
        appeared: list[str] = []
        for store in view.stores:
            prev = self._indexes.get(store.name)
            if prev is None:
                indexes[store.name] = build(store, now)
                appeared.append(store.name)
            elif prev.current(store, now):
                indexes[store.name] = prev
            else:
                index, moves = derive(prev, store, now)
                indexes[store.name] = index
                if moves:
                    first: dict[str, int] = {}
                    for task_id, old in moves:
                        first.setdefault(task_id, old)
                    moved[store.name] = first
        fleet = self._fleet
        same = fleet is not None and len(indexes) == len(fleet.stores)
        if same and fleet is not None:
            same = all(indexes.get(i.name) is i for i in fleet.stores)
        if moved or appeared or not same:
            if moved or appeared:
                self._gen += 1
                size = sum(map(len, moved.values())) + len(appeared)
                self._journal.append(_Chunk(self._gen, self._clock(), moved, tuple(appeared), size))
                self._journal_size += size
            self._prune()
            names = tuple(sorted(indexes))
            fleet = Fleet(view, self._gen, names, tuple(indexes[n] for n in names))
        else:
            assert fleet is not None
            fleet = Fleet(view, self._gen, fleet.names, fleet.stores)
        self._indexes = indexes
        self._fleet = fleet
        return fleet

    def _prune(self) -> None:
        oldest = self._clock() - self._lifetime
        while self._journal and (
            self._journal_size > self._max_journal or self._journal[0].when < oldest
        ):
            chunk = self._journal.popleft()
            self._journal_size -= chunk.size
            self._floor = chunk.gen

    def _since(self, start: int) -> tuple[dict[str, dict[str, int]], set[str]]:
        """Per store, each task whose rank changed after generation ``start`` and its rank
        then (``ABSENT``: it was not there); and the stores indexed anew since."""
        moved: dict[str, dict[str, int]] = {}
        appeared: set[str] = set()
        for chunk in self._journal:
            if chunk.gen <= start:
                continue
            appeared.update(chunk.appeared)
            for store, tasks in chunk.moved.items():
                known = moved.setdefault(store, {})
                for task_id, rank in tasks.items():
                    known.setdefault(task_id, rank)
        return moved, appeared

    # --- cursors ---------------------------------------------------------------------------

    def _encode(self, start: int, place: tuple[int, str, str]) -> str:
        raw = json.dumps([self._epoch, start, *place], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _decode(self, cursor: str) -> tuple[int, tuple[int, str, str]]:
        bad = QueryError("after: not a cursor of this listing (take it from a page's next link)")
        if len(cursor) > 400:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            epoch, start, rank, store, task_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise bad from None
        if not (
            isinstance(epoch, str)
            and type(start) is int
            and type(rank) is int
            and isinstance(store, str)
            and isinstance(task_id, str)
            and 0 <= rank < _RANKS
            and _STORE_RE.fullmatch(store)
            and _TASK_RE.fullmatch(task_id)
        ):
            raise bad
        if epoch != self._epoch:
            raise CursorExpired(
                "after: this listing is gone (the exporter restarted); open the first page again"
            )
        if not 0 < start <= self._gen:
            raise bad
        if start < self._floor:
            raise CursorExpired(
                "after: this listing started too long ago to continue exactly; "
                "open the first page again"
            )
        return start, (rank, store, task_id)


def _select(
    fleet: Fleet,
    query: Query,
    place: tuple[int, str, str] | None,
    moved: dict[str, dict[str, int]],
    appeared: set[str],
    want: int,
) -> Iterator[Row]:
    """Up to ``want`` rows after ``place``, in the pass's order (see the module docstring)."""
    ranks = {RANK[s] for s in query.states} if query.states else set(range(_RANKS))
    stores = fleet.stores
    if query.store is not None:
        one = fleet.store(query.store)
        stores = (one,) if one is not None else ()
    stores = tuple(s for s in stores if s.name not in appeared)
    labels, q = query.labels, query.q
    # Per store, the tasks that changed rank during the pass, sorted, under their old rank.
    extra: dict[tuple[int, str], list[str]] = {}
    for store, tasks in moved.items():
        for task_id, rank in tasks.items():
            if rank != ABSENT:
                extra.setdefault((rank, store), []).append(task_id)
    for sorted_ids in extra.values():
        sorted_ids.sort()
    for rank in range(_RANKS):
        if place is not None and rank < place[0]:
            continue
        at_place = place is not None and rank == place[0]
        first = bisect_left([s.name for s in stores], place[1]) if at_place and place else 0
        for index in stores[first:]:
            name = index.name
            after = place[2] if at_place and place and name == place[1] else None
            base = index.groups[rank] if rank in ranks else ()
            more = extra.get((rank, name), ())
            changed = moved.get(name)
            if not more and not changed:
                # Nothing of this store changed rank during the pass: its list is the order.
                start = bisect_right(base, after) if after is not None else 0
                if not labels and q is None:
                    ids: Iterable[str] = base[start : start + want]
                elif q is not None:
                    ids = (i for i in islice(base, start, None) if q in i)
                else:
                    ids = islice(base, start, None)
                for task_id in ids:
                    task = index.entries[task_id][0]
                    if labels and not _has_labels(task, labels):
                        continue
                    yield Row(rank, index, task, PROBLEMS_FIRST[rank])
                    want -= 1
                    if want <= 0:
                        return
                continue
            for task_id in _merged(base, more, after):
                if changed and task_id in changed and rank != changed[task_id]:
                    continue  # listed under the rank it had when the pass started
                entry = index.entries.get(task_id)
                if entry is None or entry[1] not in ranks:
                    continue
                task = entry[0]
                if q is not None and q not in task_id:
                    continue
                if labels and not _has_labels(task, labels):
                    continue
                yield Row(rank, index, task, PROBLEMS_FIRST[entry[1]])
                want -= 1
                if want <= 0:
                    return


def _merged(base: Sequence[str], more: Sequence[str], after: str | None) -> Iterator[str]:
    """The ids of two sorted lists in order, each once, strictly after ``after``."""
    i = bisect_right(base, after) if after is not None else 0
    j = bisect_right(more, after) if after is not None else 0
    while i < len(base) or j < len(more):
        if j >= len(more) or (i < len(base) and base[i] < more[j]):
            yield base[i]
            i += 1
        elif i >= len(base) or more[j] < base[i]:
            yield more[j]
            j += 1
        else:
            yield base[i]
            i += 1
            j += 1


def _has_labels(task: TaskRecord, wanted: tuple[tuple[str, str], ...]) -> bool:
    have = dict(task.labels)
    return all(have.get(name, "") == value for name, value in wanted)
