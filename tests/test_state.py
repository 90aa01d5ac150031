"""The state file: round trip, atomic replacement, and every corrupt form ignored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from exporter.model import FailedFile, TaskSnapshot, TaskState
from exporter.state import FORMAT, StateWriter, dump_state, load_state, write_atomically


def task(task_id: str = "t1", status: int = 1) -> TaskState:
    snap = TaskSnapshot(10, 4, status, 3, 1, (FailedFile("http://a/1.jpg", "timeout"),))
    return TaskState(
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
    "NaN timestamp": GOOD.replace("1799999000.0", "NaN"),
    "infinite timestamp": GOOD.replace("1799999000.0", "1e999"),
    "negative total": GOOD.replace('"total":10', '"total":-1'),
    "bool total": GOOD.replace('"total":10', '"total":true'),
    "bad failures": GOOD.replace('"failures":[[', '"failures":[[1,'),
    "infinite forgotten": json.dumps({**good_state(), "forgotten": [["s", "t", 1e308 * 10]]}),
    "short forgotten": json.dumps({**good_state(), "forgotten": [["s", "t"]]}),
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
    with caplog.at_level(logging.ERROR, logger="exporter.state"):
        assert load_state(str(path)) == ([], {})
    assert "state file" in caplog.text


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


def test_unwritable_state_file_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = StateWriter(str(tmp_path / "missing-dir" / "state.json"), lambda: ([task()], {}))
    with caplog.at_level(logging.ERROR, logger="exporter.state"):
        writer.close()
    assert "cannot write state file" in caplog.text
