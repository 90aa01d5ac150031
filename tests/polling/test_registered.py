"""Registered tasks in the poller (docs/task-api.md): a third source of watched ids,
waited-for tasks polled first, and registrations kept in the state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.polling.statefile import read_state
from tests.helpers import FakeClock, config_yaml, make_exporter, wait_until, write


def test_a_waited_for_task_is_polled_before_the_others(tmp_path: Path, sim: Any) -> None:
    clock = FakeClock()
    ids = [f"t{i}" for i in range(10)]
    for task_id in ids:
        sim.add_task(task_id, total=3, finished=1)
    text = config_yaml(sim.url, ids, requests_per_second=1, burst=1, max_concurrency=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    exporter.poller.refresh(0)  # queues all ten; the budget starts one
    wait_until(lambda: sim.count() == 1)
    exporter.poller.add_waiter("shop", "t9")
    clock.advance(1.0)  # one more token
    wait_until(lambda: sim.count() == 2)
    assert [r.task_id for r in sim.requests] == ["t0", "t9"]
    exporter.close()


def test_a_waited_for_task_is_polled_without_scrapes(tmp_path: Path, sim: Any) -> None:
    clock = FakeClock()
    sim.add_task("t1", total=3, finished=1)
    text = config_yaml(sim.url, [], min_poll_interval="5s")
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    assert exporter.register_tasks("shop", [("t1", ())]) != []
    told: list[tuple[str, str]] = []
    exporter.on_task_polled(lambda store, task_id: told.append((store, task_id)))
    exporter.add_waiter("shop", "t1")  # never polled: due at once
    wait_until(lambda: sim.count("t1") == 1)
    wait_until(lambda: told == [("shop", "t1")])
    clock.advance(5.0)  # due again; the housekeeping timer queues it, no scrape needed
    wait_until(lambda: sim.count("t1") == 2)
    exporter.remove_waiter("shop", "t1")
    clock.advance(10.0)
    clock.advance(1.0)
    assert sim.count("t1") == 2  # nobody waits, nobody scrapes: nothing is polled
    exporter.close()


def test_registrations_survive_a_restart_and_reloads(tmp_path: Path, sim: Any) -> None:
    sim.add_task("t1", total=3, finished=3, status=0)
    state = tmp_path / "state.json"
    config = write(tmp_path / "c.yaml", config_yaml(sim.url, ["c1"], top=f"state_file: {state}\n"))
    exporter = make_exporter(config)
    exporter.register_tasks("shop", [("t1", (("importer", "nightly"),))])
    assert exporter.persist()
    exporter.poller.refresh(5)
    assert sim.count("t1") == 1
    assert exporter.reload()[0]
    assert exporter.task("shop", "t1") is not None  # a reload keeps it
    exporter.close()
    assert read_state(str(state)).registered == [("shop", "t1", (("importer", "nightly"),))]
    again = make_exporter(config)
    found = again.task("shop", "t1")
    assert found is not None
    record, _ = found
    assert record.source == "api" and record.labels == (("importer", "nightly"),)
    assert record.completed
    again.poller.refresh(5)
    assert sim.count("t1") == 1  # completed: never fetched again
    again.close()


def test_registrations_of_a_store_that_left_follow_its_grace(tmp_path: Path, sim: Any) -> None:
    """A store that leaves keeps its registered tasks for DEPARTED_GRACE s (back by then:
    still watched, not fetched again); then they are dropped, and the tasks' saved data
    follows the state file's retention of unconfigured tasks. Registrations in the state
    file of a store not configured at start get the same grace."""
    from exporter.polling.poller import DEPARTED_GRACE
    from exporter.polling.statefile import load_state
    from tests.helpers import store_yaml

    clock = FakeClock()
    sim.add_task("t1", total=3, finished=3, status=0)
    state = tmp_path / "state.json"
    top = f"state_file: {state}\nforget_completed_after: 2h\nstores:\n"
    both = top + store_yaml("shop", sim.url, ["c1"]) + store_yaml("other", sim.url, ["c2"])
    alone = top + store_yaml("other", sim.url, ["c2"])
    config = write(tmp_path / "c.yaml", both)
    exporter = make_exporter(config, clock=clock)

    def registered() -> set[tuple[str, str]]:
        assert exporter.state_writer is not None
        exporter.state_writer.flush()
        return {(s, t) for s, t, _ in read_state(str(state)).registered}

    def saved() -> set[str]:
        assert exporter.state_writer is not None
        exporter.state_writer.flush()
        return {t.task_id for t in load_state(str(state))[0]}

    try:
        exporter.register_tasks("shop", [("t1", ())])
        exporter.poller.refresh(5)
        assert sim.count("t1") == 1
        write(tmp_path / "c.yaml", alone)
        assert exporter.reload()[0]
        clock.advance(DEPARTED_GRACE - 1)
        exporter.poller.housekeeping()
        assert registered() == {("shop", "t1")}  # within the grace
        write(tmp_path / "c.yaml", both)
        assert exporter.reload()[0]  # back: still watched, completed, not fetched again
        found = exporter.task("shop", "t1")
        assert found is not None and found[0].source == "api" and found[0].completed
        exporter.poller.refresh(5)
        assert sim.count("t1") == 1
        write(tmp_path / "c.yaml", alone)
        assert exporter.reload()[0]  # leaves for good
        clock.advance(DEPARTED_GRACE - 1)
        exporter.poller.housekeeping()
        assert registered() == {("shop", "t1")}
        clock.advance(1)
        exporter.poller.housekeeping()
        assert registered() == set()  # dropped with the store ...
        assert "t1" in saved()  # ... its saved data stays for the retention (2h)
        write(tmp_path / "c.yaml", both)
        assert exporter.reload()[0]
        assert exporter.task("shop", "t1") is None  # back after the grace: not registered
        write(tmp_path / "c.yaml", alone)
        assert exporter.reload()[0]
        clock.advance(2 * 3600)
        exporter.poller.housekeeping()
        assert "t1" not in saved()
    finally:
        exporter.close()

    # At start, registrations of a store the configuration does not name: the same grace.
    sim.add_task("t2", total=3, finished=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", both), clock=clock)
    try:
        exporter.register_tasks("shop", [("t2", ())])
        assert exporter.persist()
    finally:
        exporter.close()
    exporter = make_exporter(write(tmp_path / "c.yaml", alone), clock=clock)
    try:
        assert registered() == {("shop", "t2")}
        clock.advance(DEPARTED_GRACE)
        exporter.poller.housekeeping()
        assert registered() == set()
    finally:
        exporter.close()


@pytest.mark.parametrize(
    "path", ["/api/v1/stores/shop/tasks/t9", "/tasks/shop/t9"], ids=["api", "page"]
)
def test_a_viewed_task_is_polled_before_the_others(tmp_path: Path, sim: Any, path: str) -> None:
    """A GET of one task, or its page, puts it at the head of its store's queue when due,
    still within the store's budget (here one request a second)."""
    from exporter.web.routes import App
    from tests.helpers import wsgi

    clock = FakeClock()
    ids = [f"t{i}" for i in range(10)]
    for task_id in ids:
        sim.add_task(task_id, total=3, finished=1)
    text = config_yaml(sim.url, ids, requests_per_second=1, burst=1, max_concurrency=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    try:
        exporter.poller.refresh(0)  # queues all ten; the budget starts one
        wait_until(lambda: sim.count() == 1)
        status, _, _ = wsgi(App(exporter), path)
        assert status == 200
        assert sim.count() == 1  # no token: the view waits for the budget like any poll
        clock.advance(1.0)  # one more token
        wait_until(lambda: sim.count() == 2)
        assert [r.task_id for r in sim.requests] == ["t0", "t9"]
    finally:
        exporter.close()
