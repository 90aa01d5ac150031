"""The state file: round trip, atomic replacement, and every corrupt form ignored."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.config import ConfigError
from exporter.demo.simulator import Simulator
from exporter.model import FailedFile, TaskRecord, TaskSnapshot
from exporter.polling.statefile import (
    FORMAT,
    StateWriter,
    dump_state,
    load_state,
    read_state,
    retention_for,
    write_atomically,
)
from tests.helpers import FakeClock, config_yaml, make_exporter, store_yaml, wait_until, write


def task(task_id: str = "t1", status: int = 1) -> TaskRecord:
    snap = TaskSnapshot(
        total=10,
        finished=4,
        status=status,
        succeeded=3,
        failed=1,
        failures=(FailedFile("http://a/1.jpg", "timeout"),),
    )
    return TaskRecord(
        "shop",
        task_id,
        snapshot=snap,
        poll_success=True,
        last_code="200",
        last_success=1_800_000_000.5,
        last_progress=1_799_999_000.0,
        completed_at=1_800_000_000.5 if status == 0 else None,
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(dump_state([task("a"), task("b", status=0)], {("shop", "gone"): 12.5}))
    tasks, forgotten = load_state(str(path))
    assert [(t.task_id, t.snapshot) for t in tasks] == [
        ("a", task("a").snapshot),
        ("b", task("b", status=0).snapshot),
    ]
    assert tasks[1].completed_at == 1_800_000_000.5
    assert tasks[0].last_progress == 1_799_999_000.0 and tasks[0].poll_success
    assert forgotten == {("shop", "gone"): 12.5}


def test_missing_file_is_empty_state(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "absent.json")) == ([], {})


def good_state() -> dict[str, object]:
    return json.loads(dump_state([task()], {}))  # type: ignore[no-any-return]


GOOD = dump_state([task()], {})  # compact JSON, as the exporter writes it
CORRUPT = {
    "not json": "{oops",
    "empty": "",
    "a list": "[]",
    "foreign": json.dumps({"some": "other program"}),
    "deep nesting": "[" * 200_000 + "]" * 200_000,
    "not utf-8": b"\xff\xfe\x00",
    "future version": json.dumps({**good_state(), "version": 99}),
    "tasks not a list": json.dumps({**good_state(), "tasks": {}}),
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_state_is_logged_and_ignored(
    tmp_path: Path, content: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="exporter.polling.statefile"):
        assert load_state(str(path)) == ([], {})
    assert "state file" in caplog.text


HUGE = 10**400
BAD_ENTRIES: dict[str, tuple[str, object]] = {
    # (key, value) set in the first task entry; the second entry stays good.
    "NaN timestamp": ("last_progress", "NaN"),
    "infinite timestamp": ("last_progress", "1e999"),
    "huge integer timestamp": ("last_success", HUGE),
    "negative total": ("total", -1),
    "bool total": ("total", True),
    "total above 2^53": ("total", 2**53 + 1),
    "finished of 400 digits": ("finished", HUGE),
    "status of 400 digits": ("status", HUGE),
    "succeeded of 400 digits": ("succeeded", HUGE),
    "string count": ("failed", "3"),
    "float count": ("total", 3.5),
    "bad failures": ("failures", [[1, "x"]]),
    "failures not a list": ("failures", {"a": "b"}),
    "store not a name": ("store", "a b\n"),
    "task id not an id": ("task_id", "../x"),
    "task id not a string": ("task_id", 7),
    "poll_success not a bool": ("poll_success", "yes"),
    "last_code not a string": ("last_code", 200),
    "last_watched not a number": ("last_watched", "yesterday"),
}


@pytest.mark.parametrize("change", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_bad_task_entry_is_skipped_alone_and_logged(
    tmp_path: Path, change: tuple[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    key, value = change
    data = json.loads(dump_state([task("bad"), task("good")], {("shop", "gone"): 5.0}))
    data["tasks"][0][key] = value
    text = json.dumps(data).replace('"NaN"', "NaN").replace('"1e999"', "1e999")
    path = tmp_path / "state.json"
    path.write_text(text)
    with caplog.at_level(logging.ERROR, logger="exporter.polling.statefile"):
        tasks, forgotten = load_state(str(path))
    assert [t.task_id for t in tasks] == ["good"]
    assert forgotten == {("shop", "gone"): 5.0}
    assert [getattr(r, "entry", None) for r in caplog.records] == ["tasks[0]"]


@pytest.mark.parametrize(
    "entry",
    [["s", "t", 1e308 * 10], ["s", "t"], ["s", "t", None], ["s", "t", HUGE], ["s", 5, 1.0], 7],
    ids=["infinite", "short", "no time", "huge", "id not a string", "not a list"],
)
def test_bad_forgotten_entry_is_skipped_alone(
    tmp_path: Path, entry: object, caplog: pytest.LogCaptureFixture
) -> None:
    data = {**good_state(), "forgotten": [entry, ["s", "kept", 2.0]]}
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data).replace("Infinity", "1e999"))
    with caplog.at_level(logging.ERROR, logger="exporter.polling.statefile"):
        tasks, forgotten = load_state(str(path))
    assert [t.task_id for t in tasks] == ["t1"]
    assert forgotten == {("s", "kept"): 2.0}
    assert [getattr(r, "entry", None) for r in caplog.records] == ["forgotten[0]"]


def test_write_is_atomic_by_rename(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("old")
    inode = path.stat().st_ino
    write_atomically(str(path), json.dumps({"format": FORMAT}))
    assert json.loads(path.read_text()) == {"format": FORMAT}
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_writer_flushes_on_close_and_skips_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    tasks = [task()]
    writer = StateWriter(str(path), lambda: (tasks, {}), interval=3600)
    writer.flush()
    first = path.stat().st_ino
    writer.flush()  # same content: no new file
    assert path.stat().st_ino == first
    tasks.append(task("t2"))
    writer.close()  # the change is written at close, whatever the interval
    assert [t.task_id for t in load_state(str(path))[0]] == ["t1", "t2"]


def test_write_failures_logged_when_the_outcome_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "dir"
    tasks = [task()]
    writer = StateWriter(str(directory / "state.json"), lambda: (tasks, {}), interval=3600)

    def outcome() -> bool | None:
        return writer.last_write_ok

    assert outcome() is None  # no attempt yet
    with caplog.at_level(logging.INFO, logger="exporter.polling.statefile"):
        for _ in range(5):  # the directory is missing: fails every time, logged once
            writer.flush()
        assert outcome() is False
        assert [r.getMessage() for r in caplog.records] == ["cannot write state file"]
        directory.mkdir()
        writer.flush()  # same content, but the last write failed: written now
        assert outcome() is True
        writer.flush()
        directory.rename(tmp_path / "away")
        tasks.append(task("t2"))
        writer.flush()
        writer.flush()
        (tmp_path / "away").rename(directory)
        writer.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "cannot write state file",
        "state file written again",
        "cannot write state file",
        "state file written again",
    ]
    assert outcome() is True
    assert [t.task_id for t in load_state(str(directory / "state.json"))[0]] == ["t1", "t2"]


def test_failed_write_is_retried_by_the_writer_thread(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    writer = StateWriter(str(directory / "state.json"), lambda: ([task()], {}), interval=0.01)
    writer.mark_dirty()
    wait_until(lambda: writer.last_write_ok is False)
    directory.mkdir()  # no new change marks the state dirty: the retry writes it
    wait_until(lambda: writer.last_write_ok is True)
    writer.close()


class WallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_unwatched_entries_dropped_after_the_retention(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    clock = WallClock()
    watched = {("shop", "a"), ("shop", "f")}
    tasks = [task("a"), task("b")]
    forgotten = {("shop", "f"): 1.0, ("old", "g"): 2.0}
    writer = StateWriter(
        str(path),
        lambda: (list(tasks), dict(forgotten)),
        interval=3600,
        watched=lambda: watched,
        retention=100,
        clock=clock,
    )
    writer.flush()
    data = json.loads(path.read_text())
    assert [t.get("last_watched") for t in data["tasks"]] == [None, clock.now]
    assert data["forgotten"] == [["old", "g", 2.0, clock.now], ["shop", "f", 1.0]]
    clock.now += 99
    writer.flush()
    assert {t.task_id for t in load_state(str(path))[0]} == {"a", "b"}
    clock.now += 1
    writer.flush()
    assert [t.task_id for t in load_state(str(path))[0]] == ["a"]
    assert load_state(str(path))[1] == {("shop", "f"): 1.0}
    clock.now += 1000
    writer.flush()  # still in memory, still not written back
    assert [t.task_id for t in load_state(str(path))[0]] == ["a"]
    watched.add(("shop", "b"))  # configured again: its state is kept
    writer.flush()
    assert {t.task_id for t in load_state(str(path))[0]} == {"a", "b"}
    writer.close()


def test_last_watched_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    clock = WallClock()
    start = clock.now

    def writer() -> StateWriter:
        return StateWriter(
            str(path),
            lambda: ([task("b")], {}),
            interval=3600,
            watched=lambda: (),
            retention=100,
            last_watched=read_state(str(path)).last_watched,
            clock=clock,
        )

    first = writer()
    first.close()
    clock.now += 60  # a restart: the time it was last watched comes from the file
    second = writer()
    second.flush()
    assert json.loads(path.read_text())["tasks"][0]["last_watched"] == start
    clock.now += 40
    second.close()
    assert load_state(str(path))[0] == []


@pytest.mark.parametrize(("forget", "kept"), [(0.0, 7 * 24 * 3600.0), (600.0, 600.0)])
def test_retention_is_forget_completed_after_or_seven_days(forget: float, kept: float) -> None:
    assert retention_for(forget) == kept


def add_done_and_busy(sim: Simulator, tmp_path: Path) -> Path:
    """Tasks "done" (completed) and "busy" in the simulator; returns a state file path."""
    sim.add_task("done", total=2, finished=2, status=0)
    sim.add_task("busy", total=3, finished=1)
    return tmp_path / "state.json"


def test_exporter_drops_state_of_a_removed_store_after_seven_days(
    sim: Simulator, tmp_path: Path
) -> None:
    state = add_done_and_busy(sim, tmp_path)
    top = f"state_file: {state}\n"
    one = store_yaml("one", sim.url, ["done"])
    both = top + "stores:\n" + one + store_yaml("two", sim.url, ["busy"])
    cfg = write(tmp_path / "c.yaml", both)
    clock = FakeClock()
    exporter = make_exporter(cfg, clock=clock)
    exporter.refresh(5)
    exporter.close()
    assert {t.task_id for t in load_state(str(state))[0]} == {"done", "busy"}
    write(tmp_path / "c.yaml", top + "stores:\n" + one)
    exporter = make_exporter(cfg, clock=clock)  # a restart without store "two"
    try:
        assert exporter.state_writer is not None
        exporter.state_writer.flush()
        saved = json.loads(state.read_text())["tasks"]
        assert {t["task_id"]: t.get("last_watched") for t in saved} == {
            "done": None,
            "busy": clock.time(),
        }
        clock.advance(7 * 24 * 3600 - 1)
        exporter.state_writer.flush()
        assert {t.task_id for t in load_state(str(state))[0]} == {"done", "busy"}
        clock.advance(1)
        exporter.state_writer.flush()
        assert [t.task_id for t in load_state(str(state))[0]] == ["done"]
    finally:
        exporter.close()


def test_exporter_view_reports_state_file_health(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("a", total=2, finished=1)
    directory = tmp_path / "dir"
    directory.mkdir()
    cfg = write(
        tmp_path / "c.yaml", config_yaml(sim.url, ["a"], top=f"state_file: {directory}/s\n")
    )
    exporter = make_exporter(cfg)
    try:
        wait_until(lambda: exporter.view().state_file_ok is True)
        directory.rename(tmp_path / "away")
        exporter.refresh(5)  # a change to write: the write fails
        wait_until(lambda: exporter.view().state_file_ok is False)
        (tmp_path / "away").rename(directory)
        wait_until(lambda: exporter.view().state_file_ok is True)  # retried, no new change
    finally:
        exporter.close()
    no_state = write(tmp_path / "d.yaml", config_yaml(sim.url, ["a"]))
    other = make_exporter(no_state)
    try:
        assert other.view().state_file_ok is None
    finally:
        other.close()


def test_forgotten_stays_forgotten_across_reload_and_restart(
    sim: Simulator, tmp_path: Path
) -> None:
    from exporter.web.routes import App
    from tests.helpers import scrape

    state = add_done_and_busy(sim, tmp_path)
    top = f"forget_completed_after: 1m\nstate_file: {state}\n"
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["done", "busy"], top=top))
    clock = FakeClock()

    def shown(exporter: Exporter) -> bool:
        text = scrape(App(exporter))  # a scrape, as Prometheus does it, then the pages' view
        ids = {t.task_id for store in exporter.view().stores for t in store.tasks}
        return "done" in ids or 'task_id="done"' in text

    exporter = make_exporter(cfg, clock=clock)
    try:
        exporter.refresh(5)
        assert shown(exporter)
        clock.advance(61)
        assert not shown(exporter)  # forgotten
        assert exporter.reload()[0]
        clock.advance(3600)
        exporter.refresh(5)
        assert not shown(exporter)
    finally:
        exporter.close()
    assert sim.count("done") == 1
    restarted = make_exporter(cfg, clock=clock)
    try:
        restarted.refresh(5)
        assert not shown(restarted)
        assert sim.count("done") == 1 and sim.count("busy") >= 2
    finally:
        restarted.close()


# --- the state file is data too (docs/design.md, "Rules for files") ------------------------


def test_a_symlinked_state_file_has_its_target_replaced_and_the_link_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / "persistent").mkdir()
    target = tmp_path / "persistent" / "state.json"
    target.write_text("{}")
    link = tmp_path / "state.json"
    link.symlink_to(target)
    write_atomically(str(link), dump_state([task()], {}))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert load_state(str(target))[0] == [task()]
    assert not [p for p in (tmp_path / "persistent").iterdir() if p.name.startswith(".state-")]


def test_the_directory_is_fsynced_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        synced.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomically(str(tmp_path / "state.json"), "{}")
    assert synced == ["file", "rename", "dir"]


@pytest.mark.parametrize(
    "text", ['{"format": "shoplazza-upload-exporter/state", "version": 1, "tas', "not json", "[]"]
)
def test_an_unusable_state_file_is_kept_as_corrupt_before_a_new_one_is_written(
    sim: Simulator, tmp_path: Path, text: str
) -> None:
    sim.add_task("a", total=2, finished=1)
    state = tmp_path / "state.json"
    (tmp_path / "state.json.corrupt").write_text("an older copy")
    state.write_text(text)
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["a"], top=f"state_file: {state}\n"))
    exporter = make_exporter(cfg)
    try:
        exporter.refresh(5)
        assert exporter.state_writer is not None
        exporter.state_writer.flush()
        assert [t.task_id for t in load_state(str(state))[0]] == ["a"]
    finally:
        exporter.close()
    assert (tmp_path / "state.json.corrupt").read_text() == text  # one copy, the latest


def test_a_second_process_on_one_state_file_refuses_to_start(
    sim: Simulator, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["a"], top=f"state_file: {state}\n"))
    first = make_exporter(cfg)
    try:
        with pytest.raises(ConfigError) as info:
            make_exporter(cfg)
        assert info.value.errors == [
            f"{cfg}: state_file: state file {state} is in use by another process "
            f"(lock {state}.lock is held); run one process per state file"
        ]
        link = tmp_path / "link.json"
        link.symlink_to(state)  # another name for the same file: the same lock
        other = write(tmp_path / "d.yaml", config_yaml(sim.url, top=f"state_file: {link}\n"))
        with pytest.raises(ConfigError):
            make_exporter(other)
    finally:
        first.close()
    make_exporter(cfg).close()  # free again once the first one stopped
