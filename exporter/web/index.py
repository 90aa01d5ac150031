"""A store's tasks sorted for the pages: per state, by task id; derived, never rebuilt.

One :class:`StoreIndex` describes one immutable :class:`~exporter.model.StoreView` at one
time. The next one is derived from it: the records that changed are found by identity
(the poller replaces a record whole when anything in it changes), only they are classified
again, and only the state lists they leave or join are copied. So a page over 100,000
tasks pays for what changed since the last page, not for the fleet (docs/design.md,
"Status pages").
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress
from operator import is_not

from exporter.model import StoreView, TaskRecord
from exporter.web.states import IN_PROGRESS, PROBLEMS_FIRST, RANK, STUCK, classify, stuck_at

#: The rank of a task that is not there (added since, or removed).
ABSENT = -1
_IN_PROGRESS = RANK[IN_PROGRESS]
_STUCK = RANK[STUCK]
_RANKS = len(PROBLEMS_FIRST)


@dataclass(frozen=True, slots=True)
class StoreIndex:
    """The tasks of one store view at ``now``: their state ranks and, per rank, sorted ids.

    ``entries`` maps a task id to its record and rank (:data:`~exporter.web.states.RANK`);
    ``groups[rank]`` lists the task ids of that rank in sorted order. ``heap`` holds
    ``(stuck_at, task_id)`` of in-progress tasks (possibly stale entries, checked when
    popped), so turning stuck with time costs only the tasks that do.
    """

    view: StoreView
    now: float
    entries: dict[str, tuple[TaskRecord, int]]
    groups: tuple[list[str], ...]
    heap: list[tuple[float, str]]

    @property
    def name(self) -> str:
        """The store's name."""
        return self.view.name

    def count(self, rank: int) -> int:
        """Tasks of the store in the state of this rank."""
        return len(self.groups[rank])

    @property
    def next_change(self) -> float:
        """The earliest time a task turns stuck without a new record (inf: none)."""
        return self.heap[0][0] if self.heap else math.inf

    def current(self, view: StoreView, now: float) -> bool:
        """This index still describes ``view`` at ``now``."""
        return view is self.view and now < self.next_change


def build(view: StoreView, now: float) -> StoreIndex:
    """The index of a store seen for the first time: every task classified and sorted."""
    entries: dict[str, tuple[TaskRecord, int]] = {}
    groups: list[list[str]] = [[] for _ in range(_RANKS)]
    heap: list[tuple[float, str]] = []
    stuck_after = view.stuck_after
    for task in view.tasks:
        rank = RANK[classify(task, stuck_after, now)]
        entries[task.task_id] = (task, rank)
        groups[rank].append(task.task_id)
        if rank == _IN_PROGRESS:
            heap.append((stuck_at(task, stuck_after), task.task_id))
    for ids in groups:
        ids.sort()
    heapq.heapify(heap)
    return StoreIndex(view, now, entries, tuple(groups), heap)


def derive(
    prev: StoreIndex, view: StoreView, now: float
) -> tuple[StoreIndex, list[tuple[str, int]]]:
    """The index of ``view`` at ``now``, from ``prev``; and each (task id, old rank) whose
    rank changed (``ABSENT``: the task was not there before)."""
    if view.stuck_after != prev.view.stuck_after:
        changed: Iterable[tuple[str, TaskRecord | None]] = _all_changes(prev, view)
    elif view is prev.view:
        changed = ()
    else:
        changed = _changes(prev, view)
    entries = prev.entries
    groups = list(prev.groups)
    copied = [False] * _RANKS
    heap = prev.heap
    heap_copied = False
    moves: list[tuple[str, int]] = []
    stuck_after = view.stuck_after

    def move(task_id: str, old: int, new: int) -> None:
        for rank in (old, new):
            if rank != ABSENT and not copied[rank]:
                groups[rank] = list(groups[rank])
                copied[rank] = True
        if old != ABSENT:
            ids = groups[old]
            del ids[bisect_left(ids, task_id)]
        if new != ABSENT:
            insort(groups[new], task_id)
        moves.append((task_id, old))

    for task_id, task in changed:
        if entries is prev.entries:
            entries = dict(prev.entries)
        old_entry = entries.get(task_id)
        old = ABSENT if old_entry is None else old_entry[1]
        if task is None:
            del entries[task_id]
            new = ABSENT
        else:
            new = RANK[classify(task, stuck_after, now)]
            entries[task_id] = (task, new)
            if new == _IN_PROGRESS:
                if not heap_copied:
                    heap, heap_copied = list(heap), True
                heapq.heappush(heap, (stuck_at(task, stuck_after), task_id))
        if new != old:
            move(task_id, old, new)
    # Time: in-progress tasks whose stuck time has come (entries may be stale: checked).
    while heap and heap[0][0] <= now:
        if not heap_copied:
            heap, heap_copied = list(heap), True
        when, task_id = heapq.heappop(heap)
        entry = entries.get(task_id)
        if entry is None or entry[1] != _IN_PROGRESS or stuck_at(entry[0], stuck_after) != when:
            continue
        if classify(entry[0], stuck_after, now) == STUCK:
            if entries is prev.entries:
                entries = dict(prev.entries)
            entries[task_id] = (entry[0], _STUCK)
            move(task_id, _IN_PROGRESS, _STUCK)
        else:  # rounding: now - since is a hair below stuck_after; look again later
            later = max(math.nextafter(when, math.inf), math.nextafter(now, math.inf))
            heapq.heappush(heap, (later, task_id))
    if heap_copied and len(heap) > 2 * len(groups[_IN_PROGRESS]) + 64:
        heap = [(stuck_at(entries[i][0], stuck_after), i) for i in groups[_IN_PROGRESS]]
        heapq.heapify(heap)
    return StoreIndex(view, now, entries, tuple(groups), heap), moves


def _changes(prev: StoreIndex, view: StoreView) -> list[tuple[str, TaskRecord | None]]:
    """Records of ``view`` that are not those of ``prev`` (None: the task went away)."""
    old, new = prev.view.tasks, view.tasks
    if len(old) == len(new):
        # The poller keeps its tasks in insertion order: with none added or removed, a
        # record at the same place is the same task, and the changed places are found in C.
        places = list(compress(range(len(new)), map(is_not, old, new)))
        if all(old[i].task_id == new[i].task_id for i in places):
            return [(new[i].task_id, new[i]) for i in places]
    entries = prev.entries
    changed: list[tuple[str, TaskRecord | None]] = []
    seen: set[str] = set()
    for task in new:
        seen.add(task.task_id)
        entry = entries.get(task.task_id)
        if entry is None or entry[0] is not task:
            changed.append((task.task_id, task))
    changed.extend((task_id, None) for task_id in entries.keys() - seen)
    return changed


def _all_changes(prev: StoreIndex, view: StoreView) -> list[tuple[str, TaskRecord | None]]:
    """Every task, for a new ``stuck_after`` (a reload): all are classified again."""
    present = {task.task_id for task in view.tasks}
    gone: list[tuple[str, TaskRecord | None]] = [(i, None) for i in prev.entries.keys() - present]
    return [*((task.task_id, task) for task in view.tasks), *gone]
