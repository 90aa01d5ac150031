"""Task id files: one bad line is skipped alone (bytes included), lines may carry labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import watch
from exporter.config.labels import LineProblem, parse_task_line
from exporter.config.watch import TaskFiles, read_task_file, read_task_id_file

ID = "300b5e33-3ac5-41c5-9819-7e2e8aad6a98"


def test_a_line_that_is_not_utf8_is_skipped_alone(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbfgood-1\nbad-\xff\xfe-2\ngood-3 # caf\xc3\xa9\n\xc3\n")
    ids, warnings = read_task_id_file(str(path))
    assert ids == ["good-1", "good-3"]
    assert warnings == [f"{path}:2: not valid UTF-8", f"{path}:4: not valid UTF-8"]


def test_labels_after_the_id(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(
        f'{ID} source=catalogue.csv importer="nightly sync"  # from the importer\n'
        "plain\n"
        'quoted k="a \\"b\\" # c" e=\n'
        "bad-1 store=x\n"
        "bad-2 k=v k=w\n"
        f"bad-3 {' '.join(f'l{i}=v' for i in range(9))}\n"
        f"bad-4 long={'v' * 257}\n"
        'bad-5 k="open\n'
        "bad-6 =v\n"
        f"{ID} source=again\n",
        encoding="utf-8",
    )
    listed = read_task_file(str(path))
    assert listed.ids == (ID, "plain", "quoted")
    assert dict(listed.labels) == {
        ID: (("importer", "nightly sync"), ("source", "catalogue.csv")),
        "quoted": (("e", ""), ("k", 'a "b" # c')),
    }
    labels_rule = (
        "invalid labels (names [a-zA-Z_][a-zA-Z0-9_]*, not store, task_id or __*; "
        "at most 8; values at most 256 characters without control characters)"
    )
    syntax = 'invalid label (use name=value or name="a value")'
    # The reason, never the line: a file another party writes may hold anything.
    assert listed.warnings == (
        *(f"{path}:{n}: {labels_rule}" for n in (4, 5, 6, 7)),
        f"{path}:8: {syntax}",
        f"{path}:9: {syntax}",
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   # only a comment", None),
        ("abc", ("abc", ())),
        ("abc#comment", ("abc", ())),
        ("abc\r", ("abc", ())),
        ("abc _x=1 A=2", ("abc", (("A", "2"), ("_x", "1")))),
        ('abc k="tab\\\\path"', ("abc", (("k", "tab\\path"),))),
    ],
)
def test_parse_task_line(line: str, expected: object) -> None:
    assert parse_task_line(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("two ids", 'invalid task id "two ids"'),
        ("../x k=v", 'invalid task id "../x"'),
        ("a __x=1", 'label name "__x" is reserved'),
        ("a task_id=1", 'label name "task_id" is reserved'),
        ("a k=\x01", "label k: value holds control characters"),
        ('a k="x"y', 'invalid label "k=\\"x\\"y" (use name=value or name="a value")'),
    ],
)
def test_bad_task_lines(line: str, message: str) -> None:
    with pytest.raises(LineProblem) as info:
        parse_task_line(line)
    assert str(info.value) == message


def test_task_files_expose_labels_and_notice_label_changes(tmp_path: Path) -> None:
    now = [0.0]
    (tmp_path / "a.txt").write_text("t1 source=a\nt2\n")
    (tmp_path / "b.txt").write_text("t1 source=b\nt3 team=x\n")
    files = TaskFiles("shop", [f"{tmp_path}/*.txt"], clock=lambda: now[0])
    assert files.refresh() is True
    assert files.ids == {"t1", "t2", "t3"}
    assert files.labels == {"t1": (("source", "a"),), "t3": (("team", "x"),)}
    (tmp_path / "b.txt").write_text("t1 source=b\nt3 team=y\n")
    now[0] += 1.0
    assert files.refresh() is True  # same ids, other labels: a change
    assert files.labels["t3"] == (("team", "y"),)
    now[0] += 1.0
    assert files.refresh() is False


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120) | st.sampled_from(['a k="v" #', 'a k="\\\\', "a k=v=w", "a  k=v\t"]))
def test_any_line_gives_an_entry_or_a_line_problem(line: str) -> None:
    try:
        parsed = parse_task_line(line)
    except LineProblem as exc:
        assert "\n" not in str(exc)
    else:
        assert parsed is None or (parsed[0] and len(parsed[1]) <= 8)


def test_a_big_file_is_split_and_gathered_a_block_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never one split or set of the whole file: each holds the GIL, and the probes."""
    path = tmp_path / "ids.txt"
    lines = [f"id-{n:04d}" if n % 7 else f"id-{n:04d} k=v{n}  # c" for n in range(1000)]
    lines[10], lines[500] = "bad id", "# a comment"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\nid-0003\nlast")
    whole = read_task_file(str(path))
    files = TaskFiles("shop", [str(path)], clock=lambda: 0.0)
    files.refresh(force=True)
    pauses: list[None] = []
    monkeypatch.setattr(watch, "_pause", lambda: pauses.append(None))
    monkeypatch.setattr(watch, "_BLOCK_BYTES", 64)
    monkeypatch.setattr(watch, "_BLOCK_IDS", 7)
    assert read_task_file(str(path)) == whole
    assert len(pauses) >= len(path.read_bytes()) // 80
    pauses.clear()
    blocks = TaskFiles("shop", [str(path)], clock=lambda: 0.0)
    blocks.refresh(force=True)
    assert (blocks.ids, blocks.labels) == (files.ids, files.labels)
    assert len(blocks.ids) == 998 + 1  # the bad line and the comment skipped, "last" added
    assert len(pauses) >= len(path.read_bytes()) // 80 + 1000 // 7
