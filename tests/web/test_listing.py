"""Listings for fleets: the derived index, problems-first order, filters, and the cursor.

The cursor's promise is checked with hypothesis: paging through ``/api/v1/tasks`` while
tasks are added, change state (progress, stuck by time, complete, fail, recover) and are
forgotten never returns a task twice in one pass and never skips one that existed (and
matched the filters) throughout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.model import (
    ExporterView,
    FailedFile,
    ReloadStatus,
    StoreView,
    TaskRecord,
    TaskSnapshot,
)
from exporter.web.index import build, derive
from exporter.web.listing import Listing
from exporter.web.query import Query
from exporter.web.routes import App
from exporter.web.states import PROBLEMS_FIRST, STATES, classify
from tests.helpers import wsgi

NOW = 1_800_000_000.0
STUCK_AFTER = 100.0

# --- a fleet in memory, changed by hand -------------------------------------------------

Labels = tuple[tuple[str, str], ...]
KINDS = ("new", "moving", "done", "done_failed", "failing", "seven")


def record(store: str, task_id: str, kind: str, now: float, labels: Labels = ()) -> TaskRecord:
    """A task record of a kind; ``moving`` tasks last progressed at ``now``."""
    if kind == "new":
        return TaskRecord(store, task_id, labels=labels)
    if kind == "failing":
        return TaskRecord(store, task_id, poll_success=False, last_code="500", labels=labels)
    status = {"moving": 1, "done": 0, "done_failed": 0, "seven": 7}[kind]
    failed = 2 if kind == "done_failed" else 0
    failures = tuple(FailedFile(f"https://img/{i}", "timeout") for i in range(failed))
    snap = TaskSnapshot(
        total=10, finished=5, status=status, succeeded=5 - failed, failed=failed, failures=failures
    )
    return TaskRecord(
        store, task_id, snapshot=snap, poll_success=True, last_code="200",
        last_progress=now, last_success=now, labels=labels,
    )  # fmt: skip


@dataclass
class Fleet:
    """What the poller would hold: stores of task records, views rebuilt on change only."""

    now: float = NOW
    stores: dict[str, dict[str, TaskRecord]] = field(default_factory=dict)
    views: dict[str, StoreView] = field(default_factory=dict)

    def put(self, store: str, task_id: str, kind: str, labels: Labels = ()) -> None:
        self.stores.setdefault(store, {})[task_id] = record(store, task_id, kind, self.now, labels)
        self.views.pop(store, None)

    def forget(self, store: str, task_id: str) -> None:
        if self.stores.get(store, {}).pop(task_id, None) is not None:
            self.views.pop(store, None)

    def view(self) -> ExporterView:
        out = []
        for name in self.stores:
            if name not in self.views:
                tasks = tuple(self.stores[name].values())
                self.views[name] = StoreView(name, tasks, (), (), (), (), 0, 0.0, STUCK_AFTER)
            out.append(self.views[name])
        return ExporterView(tuple(out), self.now, "1.2.3", ReloadStatus(True, NOW))

    def states(self) -> dict[tuple[str, str], str]:
        return {
            (s, t): classify(r, STUCK_AFTER, self.now)
            for s, tasks in self.stores.items()
            for t, r in tasks.items()
        }

    # Exporter port: what App asks of the exporter.
    def refresh(self, timeout: float) -> None:
        pass

    def reload(self) -> tuple[bool, str]:
        return True, "reloaded"

    @property
    def ready(self) -> bool:
        return True


# --- the index derived step by step equals the index built from scratch ------------------

STORE_IDS = [f"t{i:02d}" for i in range(12)]
step = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(STORE_IDS), st.sampled_from(KINDS)),
    st.tuples(st.just("forget"), st.sampled_from(STORE_IDS), st.just("")),
    st.tuples(st.just("wait"), st.just(""), st.sampled_from(["30", "99.5", "100", "250"])),
    st.tuples(st.just("same"), st.just(""), st.just("")),
)


def apply(fleet: Fleet, op: tuple[str, str, str], store: str = "shop") -> None:
    kind, task_id, arg = op
    if kind == "put":
        fleet.put(store, task_id, arg)
    elif kind == "forget":
        fleet.forget(store, task_id)
    elif kind == "wait":
        fleet.now += float(arg)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(STORE_IDS), st.sampled_from(KINDS))),
    st.lists(step, max_size=40),
)
def test_derived_index_equals_a_fresh_one(start: list[tuple[str, str]], steps: list[Any]) -> None:
    fleet = Fleet()
    for task_id, kind in start:
        fleet.put("shop", task_id, kind)
    fleet.stores.setdefault("shop", {})
    [view] = fleet.view().stores
    index = build(view, fleet.now)
    for op in steps:
        apply(fleet, op)
        [view] = fleet.view().stores
        before = {t: r for t, (_, r) in index.entries.items()}
        index, moves = derive(index, view, fleet.now)
        fresh = build(view, fleet.now)
        assert index.groups == fresh.groups
        assert {t: r for t, (_, r) in index.entries.items()} == {
            t: r for t, (_, r) in fresh.entries.items()
        }
        # each change is reported once with the rank the task had before
        reported = dict(moves[::-1])
        after = {t: r for t, (_, r) in index.entries.items()}
        changed = {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}
        assert changed <= reported.keys()
        for task_id in changed:
            assert reported[task_id] == before.get(task_id, -1)


# --- the cursor holds while things change -------------------------------------------------

STORES = ("a-shop", "b-shop", "c-shop")
TASKS = [f"t{i:02d}" for i in range(16)]
change = st.one_of(
    st.tuples(
        st.just("put"), st.sampled_from(STORES), st.sampled_from(TASKS), st.sampled_from(KINDS)
    ),
    st.tuples(st.just("forget"), st.sampled_from(STORES), st.sampled_from(TASKS), st.just("")),
    st.tuples(st.just("wait"), st.just(""), st.just(""), st.sampled_from(["40", "100", "300"])),
)


def fetch(app: App, params: list[tuple[str, str]]) -> dict[str, Any]:
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    code, _, body = wsgi(app, "/api/v1/tasks?" + query)
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.lists(
        st.tuples(st.sampled_from(STORES), st.sampled_from(TASKS), st.sampled_from(KINDS))
    ),
    between=st.lists(st.lists(change, max_size=6), max_size=30),
    limit=st.integers(1, 7),
    states=st.sets(st.sampled_from(STATES), max_size=3),
    store=st.sampled_from([None, *STORES]),
)
def test_a_pass_returns_each_task_at_most_once_and_every_lasting_one(
    start: list[tuple[str, str, str]],
    between: list[list[tuple[str, str, str, str]]],
    limit: int,
    states: set[str],
    store: str | None,
) -> None:
    run_pass(start, between, limit, states, store)


def run_pass(
    start: list[tuple[str, str, str]],
    between: list[list[tuple[str, str, str, str]]],
    limit: int,
    states: set[str],
    store: str | None,
) -> None:
    """Pages through one pass, changing the fleet between pages; checks the promise."""
    fleet = Fleet()
    for s, t, kind in start:
        fleet.put(s, t, kind)
    app = App(fleet)
    base = [("limit", str(limit)), *(("state", s) for s in sorted(states))]
    if store:
        base.append(("store", store))

    def matches() -> set[tuple[str, str]]:
        return {
            key
            for key, state in fleet.states().items()
            if (not states or state in states) and (store is None or key[0] == store)
        }

    lasting = matches()  # present and matching at every moment of the pass
    seen: list[tuple[str, str]] = []
    data = fetch(app, base)
    pages = 0
    while True:
        pages += 1
        present = fleet.states()
        for task in data["tasks"]:
            key = (task["store"], task["task_id"])
            assert key in present and task["state"] == present[key]  # live data
            assert not states or task["state"] in states
            seen.append(key)
        assert len(data["tasks"]) <= limit
        if data["next"] is None:
            break
        for op, s, t, arg in between[pages - 1] if pages - 1 < len(between) else ():
            if op == "put":
                fleet.put(s, t, arg)
            elif op == "forget":
                fleet.forget(s, t)
            else:
                fleet.now += float(arg)
            lasting &= matches()
        data = fetch(app, [*base, ("after", data["next"])])
    assert len(seen) == len(set(seen)), "a task came twice in one pass"
    assert lasting <= set(seen), f"skipped: {sorted(lasting - set(seen))}"


def test_a_task_added_during_a_pass_waits_for_the_next_one() -> None:
    """Listed at its state when first seen, it could come again after a change of state."""
    run_pass(
        start=[("a-shop", "t00", "failing"), ("a-shop", "t05", "done")],
        between=[[("put", "a-shop", "t01", "failing")], [("put", "a-shop", "t01", "done")]],
        limit=1,
        states=set(),
        store=None,
    )


def test_first_pages_list_problems_first_by_store_then_task_id() -> None:
    fleet = Fleet()
    kinds = ["done", "moving", "failing", "done_failed", "seven", "new"]
    for i, kind in enumerate(kinds * 3):
        fleet.put(STORES[i % 3], f"t{17 - i:02d}", kind)  # ids not in configuration order
    fleet.now += STUCK_AFTER / 2
    fleet.put("b-shop", "t99", "moving")  # recent: in progress; the others are stuck by then
    fleet.now += STUCK_AFTER * 0.6
    app = App(fleet)
    data = fetch(app, [])
    order = [(t["state"], t["store"], t["task_id"]) for t in data["tasks"]]
    assert order == sorted(order, key=lambda o: (PROBLEMS_FIRST.index(o[0]), o[1], o[2]))
    assert [o[0] for o in order][:3] == ["failing"] * 3
    assert {o[0] for o in order} == set(STATES)
    again = fetch(app, [])
    assert again["tasks"] == data["tasks"]  # a refresh does not reshuffle


def test_filters_combine_with_and() -> None:
    fleet = Fleet()
    fleet.put("a-shop", "alpha-1", "failing", (("source", "feed.csv"),))
    fleet.put("a-shop", "alpha-2", "failing", (("source", "other.csv"),))
    fleet.put("a-shop", "beta-1", "failing", (("source", "feed.csv"),))
    fleet.put("b-shop", "alpha-3", "failing", (("source", "feed.csv"),))
    fleet.put("a-shop", "alpha-4", "done", (("source", "feed.csv"),))
    fleet.put("a-shop", "alpha-5", "seven", (("source", "feed.csv"), ("team", "x")))
    app = App(fleet)

    def ids(*params: tuple[str, str]) -> list[str]:
        return [t["task_id"] for t in fetch(app, list(params))["tasks"]]

    assert ids(
        ("store", "a-shop"), ("state", "failing"), ("label", "source=feed.csv"), ("q", "alpha")
    ) == ["alpha-1"]
    assert ids(
        ("state", "failing"), ("state", "unknown_status"), ("q", "alpha"), ("store", "a-shop")
    ) == [
        "alpha-1",
        "alpha-2",
        "alpha-5",
    ]
    assert ids(("label", "source=feed.csv"), ("label", "team=x")) == ["alpha-5"]
    assert ids(("label", "team=")) == [
        "alpha-1",
        "alpha-2",
        "beta-1",
        "alpha-3",
        "alpha-4",
    ]  # no team label
    assert ids(("q", "ta-")) == ["beta-1"]
    assert ids(("store", "nowhere")) == []
    data = fetch(app, [("store", "a-shop"), ("state", "failing"), ("state", "completed")])
    assert data["counts"]["failing"] == 3 and data["counts"]["completed"] == 1


def test_expired_and_foreign_cursors_are_gone_garbage_is_a_bad_request() -> None:
    fleet = Fleet()
    for i in range(5):
        fleet.put("a-shop", f"t{i}", "moving")
    clock = [0.0]
    listing = Listing(lifetime=60.0, clock=lambda: clock[0])
    page = listing.page(fleet.view, Query(limit=2))
    assert page.next is not None
    fleet.put("a-shop", "t0", "done")
    listing.page(fleet.view, Query(limit=2, after=page.next))  # fine: the journal has it
    clock[0] = 61.0
    fleet.put("a-shop", "t1", "done")  # a new journal entry; the old one is now too old
    app = App(fleet)
    app.listing = listing
    code, _, body = wsgi(app, f"/api/v1/tasks?limit=2&after={page.next}")
    assert code == 410 and b"too long ago" in body
    other = Listing().page(fleet.view, Query(limit=2)).next
    code, _, body = wsgi(app, f"/api/v1/tasks?after={other}")
    assert code == 410 and b"restarted" in body
    code, _, body = wsgi(app, f"/?after={other}")
    assert code == 410 and b"open the first page again" in body and b"href='?'" in body
    for bad in ("x", "eyJ4IjoxfQ", "W10", page.next[:-3] + "AAA", "a" * 500):
        code, _, body = wsgi(app, f"/api/v1/tasks?after={bad}")
        assert code == 400 and json.loads(body)["error"].startswith("after:"), bad
