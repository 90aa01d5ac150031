"""The per-task field table (exporter/model.py, ``TASK_FIELDS``): every declared field is
kept across a restart and shows in the next scrape, derived from its one declaration."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from exporter.metrics.exposition import Exposition
from exporter.metrics.families import TASK_GAUGES
from exporter.model import (
    DURATION_BUCKETS,
    TASK_FIELDS,
    ExporterView,
    FailedFile,
    ReloadStatus,
    StoreView,
    TaskField,
    TaskRecord,
    TaskSnapshot,
)
from exporter.polling.statefile import dump_state, read_state
from exporter.web.pages import render_json
from tests.helpers import config_yaml, make_exporter, write

# A value unlike the default, per kind of field.
CHANGED: dict[str, Any] = {
    "count": 7,
    "time": 1_800_000_123.5,
    "flag": True,
    "code": "503",
    "text": "the API said no",
    "failures": (FailedFile("https://img.example.com/a.jpg", "timeout"),),
    "labels": (("source", "catalogue.csv"),),
}
# Fields that come from the configuration, not from polling: never kept, set again at start.
FROM_CONFIGURATION = {"labels", "source"}


def base_task() -> TaskRecord:
    """A completed task with data, every field at a value a change can be told from."""
    return TaskRecord(
        store="shop",
        task_id="t1",
        snapshot=TaskSnapshot(total=3, finished=3, succeeded=3, failed=0, status=0),
        poll_success=False,
        last_progress=1_800_000_000.0,
        last_success=1_800_000_001.0,
        completed_at=1_800_000_002.0,
    )


def with_value(task: TaskRecord, spec_field: TaskField, value: Any) -> TaskRecord:
    if spec_field.on_snapshot:
        assert task.snapshot is not None
        return dataclasses.replace(
            task, snapshot=dataclasses.replace(task.snapshot, **{spec_field.name: value})
        )
    return dataclasses.replace(task, **{spec_field.name: value})


def view_of(task: TaskRecord) -> ExporterView:
    store = StoreView(
        name="shop",
        tasks=(task,),
        requests=(),
        errors=(),
        skipped=(),
        buckets=(0,) * len(DURATION_BUCKETS),
        duration_count=0,
        duration_sum=0.0,
    )
    return ExporterView(stores=(store,), now=1_800_000_100.0, version="t", reload=ReloadStatus())


def ids(spec_field: TaskField) -> str:
    return spec_field.name


def test_every_field_is_declared_with_a_kind_the_codecs_know() -> None:
    assert {f.spec.kind for f in TASK_FIELDS} <= set(CHANGED)
    names = [f.name for f in TASK_FIELDS]
    assert len(names) == len(set(names))
    gauges = [f.spec.gauge for f in TASK_FIELDS if f.spec.gauge]
    assert set(gauges) <= {name for name, _ in TASK_GAUGES}


@pytest.mark.parametrize("spec_field", TASK_FIELDS, ids=ids)
def test_a_field_survives_a_restart_through_the_state_file(
    spec_field: TaskField, tmp_path: Path
) -> None:
    if spec_field.name in FROM_CONFIGURATION:
        assert spec_field.spec.state is None  # set from the configuration at every start
        return
    assert spec_field.spec.state is not None, f"{spec_field.name} is not kept across restarts"
    task = with_value(base_task(), spec_field, CHANGED[spec_field.spec.kind])
    path = tmp_path / "state.json"
    path.write_text(dump_state([task], {}))
    [restored] = read_state(str(path)).tasks
    assert spec_field.get(restored) == spec_field.get(task) != spec_field.get(base_task())
    assert restored == task  # nothing else lost, nothing to fetch again


@pytest.mark.parametrize("spec_field", TASK_FIELDS, ids=ids)
def test_a_change_to_a_field_shows_in_the_next_scrape(spec_field: TaskField) -> None:
    exposition = Exposition(extra=())
    before = base_task()
    after = with_value(before, spec_field, CHANGED[spec_field.spec.kind])
    shown = False
    if spec_field.spec.gauge or spec_field.spec.kind == "labels":  # labels: the info gauge
        first = exposition.render(view_of(before), "", None, False)[1]
        second = exposition.render(view_of(after), "", None, False)[1]
        assert first != second
        shown = True
    if spec_field.spec.json:
        key = spec_field.spec.json
        old, new = (json.loads(render_json(view_of(t)))["tasks"][0] for t in (before, after))
        where = (lambda item: item["data"]) if spec_field.on_snapshot else (lambda item: item)
        assert where(old)[key] != where(new)[key]
        shown = True
    assert shown, f"{spec_field.name} is neither exported nor shown"


@pytest.mark.parametrize(
    "spec_field", [f for f in TASK_FIELDS if f.on_snapshot and f.spec.state], ids=ids
)
def test_an_older_state_file_without_a_data_field_fetches_the_task_once_more(
    spec_field: TaskField, sim: Any, tmp_path: Path
) -> None:
    """A completed task restored without one of its data fields is fetched once, not
    exported with that field at its default for good."""
    sim.add_task("t1", total=3, finished=3, status=0)
    entry = json.loads(dump_state([base_task()], {}))
    del entry["tasks"][0][spec_field.spec.state]
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(entry))
    text = config_yaml(sim.url, ["t1"], top=f"state_file: {state_file}\n")
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    exporter.poller.refresh(5)
    exporter.poller.refresh(5)
    assert sim.count("t1") == 1  # fetched again once, then completed for good
    [task] = exporter.view().stores[0].tasks
    assert task.completed and not task.refetch
    exporter.close()


def test_a_whole_state_file_entry_fetches_a_completed_task_never(sim: Any, tmp_path: Path) -> None:
    sim.add_task("t1", total=3, finished=3, status=0)
    state_file = tmp_path / "state.json"
    state_file.write_text(dump_state([base_task()], {}))
    text = config_yaml(sim.url, ["t1"], top=f"state_file: {state_file}\n")
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    exporter.poller.refresh(5)
    assert sim.count("t1") == 0
    exporter.close()
