"""Registered tasks in the poller (docs/task-api.md): a third source of watched ids,
waited-for tasks polled first, and registrations kept in the state file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
