"""The status page and its JSON: one state per task, each with its own look, never a 500.

The state function is checked on hand-made task states; the page and the JSON both on
hand-made views (every state, hostile values) and through the WSGI app with the simulator
(pages refresh due tasks first; a task that answered once and then fails is failing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from exporter.demo.simulator import Reply, Simulator
from exporter.model import (
    ExporterView,
    FailedFile,
    ReloadStatus,
    StoreView,
    TaskRecord,
    TaskSnapshot,
)
from exporter.web.pages import (
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    FAILING,
    IN_PROGRESS,
    NOT_POLLED,
    STATES,
    STUCK,
    UNKNOWN_STATUS,
    classify,
    format_age,
    ratio,
    render_html,
    render_json,
    visible,
)
from exporter.web.routes import App
from tests.helpers import config_yaml, make_exporter, write, wsgi

NOW = 1_800_000_000.0
STUCK_AFTER = 900.0


def snap(total: int, finished: int, status: int, failed: int = 0) -> TaskSnapshot:
    failures = tuple(FailedFile(f"https://img/{i}.png", "download failed") for i in range(failed))
    return TaskSnapshot(
        total=total,
        finished=finished,
        status=status,
        succeeded=finished - failed,
        failed=failed,
        failures=failures,
    )


def polled(task_id: str, snapshot: TaskSnapshot, progress_age: float = 5.0) -> TaskRecord:
    return TaskRecord(
        "shop",
        task_id,
        snapshot=snapshot,
        poll_success=True,
        last_code="200",
        last_success=NOW - 3,
        last_progress=NOW - progress_age,
        completed_at=NOW - 60 if snapshot.completed else None,
    )


# One task in each state, keyed by the state it must have.
EXAMPLES: dict[str, TaskRecord] = {
    NOT_POLLED: TaskRecord("shop", "t-new"),
    IN_PROGRESS: polled("t-moving", snap(10, 4, 1)),
    STUCK: polled("t-stuck", snap(10, 4, 1), progress_age=STUCK_AFTER + 1),
    COMPLETED: polled("t-done", snap(6, 6, 0)),
    COMPLETED_WITH_FAILURES: polled("t-done-failed", snap(40, 40, 0, failed=13)),
    FAILING: TaskRecord(
        "shop",
        "t-404",
        poll_success=False,
        last_code="404",
        last_error_code="404",
        last_error="task not found",
    ),
    UNKNOWN_STATUS: polled("t-seven", snap(10, 10, 7), progress_age=STUCK_AFTER * 10),
}


def view(*tasks: TaskRecord, **fields: Any) -> ExporterView:
    store = StoreView("shop", tuple(tasks), (), (), (), (), 0, 0.0, stuck_after=STUCK_AFTER)
    return ExporterView((store,), NOW, "1.2.3", ReloadStatus(True, NOW), **fields)


def rows(page: str) -> dict[str, str]:
    """Task id -> the HTML of its table row."""
    found = re.findall(r'<tr class="r-[a-z_]+">.*?</tr>', page)
    return {re.search(r"<code>([^<]*)</code>", row).group(1): row for row in found}  # type: ignore[union-attr]


def json_tasks(text: str) -> dict[str, dict[str, Any]]:
    data = json.loads(text)
    return {task["task_id"]: task for task in data["tasks"]}


# --- the state function ------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_each_example_has_its_state(state: str) -> None:
    assert classify(EXAMPLES[state], STUCK_AFTER, NOW) == state


def test_examples_cover_every_state() -> None:
    assert set(EXAMPLES) == set(STATES)


def test_failing_wins_over_the_last_known_data() -> None:
    for state in (IN_PROGRESS, STUCK, UNKNOWN_STATUS):
        task = polled("t", EXAMPLES[state].snapshot)  # type: ignore[arg-type]
        task = replace(
            task, last_progress=EXAMPLES[state].last_progress, poll_success=False, last_code="500"
        )
        assert classify(task, STUCK_AFTER, NOW) == FAILING


def test_stuck_follows_the_store_threshold() -> None:
    task = polled("t", snap(10, 4, 1), progress_age=120)
    assert classify(task, 121, NOW) == IN_PROGRESS
    assert classify(task, 120, NOW) == STUCK
    task = replace(task, last_progress=float("nan"))
    assert classify(task, 1, NOW) == IN_PROGRESS


def test_never_attempted_is_not_polled_even_with_poll_success_false() -> None:
    task = TaskRecord("shop", "t", poll_success=False, last_code=None)
    assert classify(task, STUCK_AFTER, NOW) == NOT_POLLED


# --- page and JSON, per state --------------------------------------------------------------


def test_json_carries_each_state() -> None:
    tasks = json_tasks(render_json(view(*EXAMPLES.values())))
    for state, task in EXAMPLES.items():
        assert tasks[task.task_id]["state"] == state


@pytest.mark.parametrize("state", STATES)
def test_page_marks_each_state(state: str) -> None:
    page = render_html(view(*EXAMPLES.values()))
    row = rows(page)[EXAMPLES[state].task_id]
    assert f'class="r-{state}"' in row
    assert f'class="state s-{state}"' in row


def test_each_state_has_its_own_colour() -> None:
    page = render_html(view())
    colours = {s: re.search(rf"\.s-{s}\{{background:(#[0-9a-f]+)", page) for s in STATES}
    assert all(colours.values()), colours
    values = {s: m.group(1) for s, m in colours.items() if m}
    assert len(set(values.values())) == len(STATES)
    assert values[NOT_POLLED] == "#9e9e9e"  # neutral grey, not an error
    assert values[FAILING] == "#c62828"  # red
    assert values[STUCK] == "#ef8f00"  # amber


def test_completed_with_failures_shows_failed_files_in_red() -> None:
    page = render_html(view(EXAMPLES[COMPLETED_WITH_FAILURES], EXAMPLES[COMPLETED]))
    failed_row = rows(page)["t-done-failed"]
    assert re.search(r'class="fail-seg" style="width:32\.5%"', failed_row)  # 13 of 40
    assert re.search(r'class="ok-seg" style="width:67\.5%"', failed_row)
    assert '<td class="failed">13</td>' in failed_row
    assert "completed with failures" in failed_row
    assert "fail-seg" not in rows(page)["t-done"]


def test_unknown_status_is_never_ok() -> None:
    page = render_html(view(EXAMPLES[UNKNOWN_STATUS]))
    row = rows(page)["t-seven"]
    assert "unknown status 7" in row
    assert "s-completed" not in row and ">ok<" not in row and "stuck" not in row


def test_not_polled_is_neutral() -> None:
    row = rows(render_html(view(EXAMPLES[NOT_POLLED])))["t-new"]
    assert "not polled yet" in row and "no data yet" in row
    assert "failing" not in row


def test_page_shows_progress_age_labels_shard_and_refreshes_itself() -> None:
    task = polled("t-moving", snap(10, 4, 1), progress_age=200)
    task = replace(task, labels=(("source", "catalogue.csv"), ("importer", "nightly sync")))
    page = render_html(view(task, shard=1, total_shards=3, stores_owned=5, stores_other=9))
    assert "<meta http-equiv='refresh' content='30'>" in page
    row = rows(page)["t-moving"]
    assert "3m 20s ago" in row  # last progress
    assert "source=catalogue.csv" in row and "importer=nightly sync" in row
    assert "Shard 1 of 3" in page and "5 stores here, 9 on other shards" in page
    data = json.loads(render_json(view(task, shard=1, total_shards=3)))
    assert (data["shard"], data["total_shards"]) == (1, 3)
    [store] = data["stores"]
    assert store["stuck_after_seconds"] == STUCK_AFTER
    [item] = data["tasks"]
    assert item["labels"] == {"source": "catalogue.csv", "importer": "nightly sync"}
    assert item["last_progress_age_seconds"] == 200


def test_control_characters_are_escaped_visibly() -> None:
    task = polled("t", snap(3, 3, 0, failed=1))
    hostile = "a\x00b\x1b[31mc\u202ed\ud800e\x7f"
    assert task.snapshot is not None
    failures = (FailedFile(hostile, hostile),)
    snapshot = TaskSnapshot(total=3, finished=3, status=0, succeeded=2, failed=1, failures=failures)
    task = replace(task, snapshot=snapshot, labels=(("note", "x\ny"),))
    page = render_html(view(task))
    for raw in ("\x00", "\x1b", "\u202e", "\ud800", "\x7f", "x\ny"):
        assert raw not in page
    assert "a\\u0000b\\u001b[31mc\\u202ed\\ud800e\\u007f" in page
    assert "note=x\\u000ay" in page
    page.encode()  # no lone surrogate left
    assert visible("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_huge_numbers_never_break_the_pages() -> None:
    huge = 10**5000
    tasks = [
        polled(
            "t-huge-finished",
            TaskSnapshot(total=1, finished=huge, status=1, succeeded=huge, failed=0),
        ),
        polled(
            "t-huge-total", TaskSnapshot(total=huge, finished=3, status=1, succeeded=3, failed=0)
        ),
        polled(
            "t-huge-status",
            TaskSnapshot(total=3, finished=1, status=huge, succeeded=1, failed=huge),
        ),
    ]
    tasks[0] = replace(tasks[0], last_progress=float("inf"))
    tasks[1] = replace(tasks[1], last_success=float("nan"))
    page = render_html(view(*tasks))
    assert "~10^5000" in page and "unknown status ~10^5000" in page
    data = json_tasks(render_json(view(*tasks)))
    assert data["t-huge-finished"]["data"]["progress_ratio"] == 1.0
    assert data["t-huge-total"]["data"]["progress_ratio"] == 0.0
    assert data["t-huge-status"]["state"] == UNKNOWN_STATUS
    assert data["t-huge-finished"]["last_progress_timestamp"] is None
    assert data["t-huge-total"]["data_age_seconds"] is None


def test_ratio_and_age_helpers() -> None:
    assert ratio(1, 4) == 0.25 and ratio(5, 4) == 1.0 and ratio(1, 0) == 0.0
    assert ratio(10**400, 10**401) == pytest.approx(0.1)
    assert format_age(0) == "0s" and format_age(59.9) == "59s" and format_age(60) == "1m"
    assert format_age(3725) == "1h 2m" and format_age(90000) == "1d 1h"
    assert format_age(float("inf")) == "never" and format_age(None) == "never"


# --- through the app, with the simulator ---------------------------------------------------


@pytest.fixture
def app(sim: Simulator, tmp_path: Path) -> Iterator[App]:
    sim.add_task("t-moving", total=10, finished=4)
    sim.add_task("t-done", total=2, finished=2, status=0)
    sim.add_task("t-seven", total=5, finished=5, status=7)
    failures = [{"origin_link": f"https://img/{i}", "reason": "bad\x00byte"} for i in range(13)]
    sim.add_task("t-failed", total=40, finished=40, status=0, failure_list=failures)
    ids = ["t-moving", "t-done", "t-seven", "t-failed", "t-404"]
    text = config_yaml(sim.url, ids, requests_per_second=100, min_poll_interval="0s")
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    yield App(exporter)
    exporter.close()


@pytest.mark.parametrize("path", ["/", "/api/v1/tasks"])
def test_pages_refresh_before_answering(app: App, sim: Simulator, path: str) -> None:
    """Opened first, before any scrape, a page already shows the API's answers."""
    code, _, body = wsgi(app, path)
    assert code == 200
    assert sim.count("t-moving") >= 1
    if path == "/":
        page = body.decode()
        found = rows(page)
        assert "4/10" in found["t-moving"]
        assert not any("not polled yet" in row for row in found.values())
    else:
        states = {k: v["state"] for k, v in json_tasks(body.decode()).items()}
        assert states == {
            "t-moving": IN_PROGRESS,
            "t-done": COMPLETED,
            "t-seven": UNKNOWN_STATUS,
            "t-failed": COMPLETED_WITH_FAILURES,
            "t-404": FAILING,
        }


def test_app_page_shows_the_states(app: App) -> None:
    page = wsgi(app, "/")[2].decode()
    found = rows(page)
    assert "s-in_progress" in found["t-moving"]
    assert "s-completed" in found["t-done"]
    assert "unknown status 7" in found["t-seven"]
    assert "fail-seg" in found["t-failed"] and "bad\\u0000byte" in found["t-failed"]
    assert "failing (404)" in found["t-404"]
    assert "\x00" not in page


def test_task_that_answered_once_then_fails_is_failing(app: App, sim: Simulator) -> None:
    assert json_tasks(wsgi(app, "/api/v1/tasks")[2].decode())["t-moving"]["state"] == IN_PROGRESS
    sim.behave("t-moving", Reply(status=500))
    before = sim.count("t-moving", status=500)
    page = wsgi(app, "/")[2].decode()
    assert sim.count("t-moving", status=500) > before
    row = rows(page)["t-moving"]
    assert "s-failing" in row and "failing (500)" in row
    assert "4/10" in row  # the last known data stays visible
    task = json_tasks(wsgi(app, "/api/v1/tasks")[2].decode())["t-moving"]
    assert task["state"] == FAILING and task["data"]["finished"] == 4


def test_hostile_api_answers_never_make_the_pages_fail(app: App, sim: Simulator) -> None:
    """Whatever the client makes of them (data or invalid_response), the pages answer 200."""
    huge = b'{"total": 1, "finished": 1' + b"0" * 400 + b', "status": 1}'
    nul = b'{"total": 2, "finished": 2, "status": 0, "failure_list": '
    nul += b'[{"origin_link": "a\\u0000b", "reason": "r\\u001b[2J"}]}'
    sim.behave("t-moving", Reply(body=huge))
    sim.behave("t-done", Reply(body=nul))
    for path in ("/", "/api/v1/tasks"):
        code, _, body = wsgi(app, path)
        assert code == 200, path
        assert b"\x00" not in body and b"\x1b" not in body
    page = wsgi(app, "/")[2].decode()
    assert "a\\u0000b" in page and "r\\u001b[2J" in page


# --- the summary at a fleet's scale -------------------------------------------------------


def fleet_view(stores: int, troubled: dict[int, TaskRecord]) -> ExporterView:
    """``stores`` stores of two tasks (one completed, one in progress); store i of
    ``troubled`` has that task as well."""
    views = []
    for i in range(stores):
        name = f"store-{i:04d}"
        tasks = [
            replace(EXAMPLES[COMPLETED], store=name),
            replace(EXAMPLES[IN_PROGRESS], store=name),
        ]
        if i in troubled:
            tasks.append(replace(troubled[i], store=name))
        views.append(StoreView(name, tuple(tasks), (), (), (), (), 0, 0.0, STUCK_AFTER))
    return ExporterView(tuple(views), NOW, "1.2.3", ReloadStatus(True, NOW))


def summary_rows(page: str) -> list[str]:
    table = page.split('<table class="summary">', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr.*?</tr>", table)


def test_summary_of_a_thousand_stores_lists_the_troubled_ones_and_counts_the_rest() -> None:
    troubled = {7: EXAMPLES[FAILING], 420: EXAMPLES[STUCK], 999: EXAMPLES[COMPLETED_WITH_FAILURES]}
    page = render_html(fleet_view(1000, troubled))
    found = summary_rows(page)
    assert len(found) == 1 + 1 + 3 + 1  # header, all stores, the troubled, the rest
    assert "All 1,000 stores" in found[1]
    assert [re.search(r">(store-\d+)</a>", r).group(1) for r in found[2:5]] == [  # type: ignore[union-attr]
        "store-0007",
        "store-0420",
        "store-0999",
    ]
    assert "997 stores without problems" in found[5] and "1,994" in found[5]  # 997 x 2 tasks
    # each count links to the filtered view
    assert '<a href="?state=failing">1</a>' in found[1]
    assert '<a href="?state=completed">1,000</a>' in found[1]
    assert '<a href="?store=store-0007&amp;state=failing">1</a>' in found[2]
    assert '<a href="?store=store-0420&amp;state=stuck">1</a>' in found[3]
    # every state keeps its colour and words in the header
    for state in STATES:
        assert f'<span class="state s-{state}">' in found[0]
    assert len(page.encode()) < 300_000


def test_summary_lists_at_most_fifty_troubled_stores() -> None:
    page = render_html(fleet_view(300, {i: EXAMPLES[FAILING] for i in range(0, 300, 3)}))
    found = summary_rows(page)
    assert len(found) == 1 + 1 + 50 + 1 + 1
    assert "50 more with problems" in found[-2]
    assert "200 stores without problems" in found[-1]


def test_one_store_without_problems_has_no_rest_row() -> None:
    found = summary_rows(render_html(view(EXAMPLES[COMPLETED])))
    assert len(found) == 2 and "All 1 store<" in found[1]


def test_the_page_and_the_json_show_the_eta() -> None:
    """A task with an estimate shows "ETA in ..." (or overdue) under its status, and its
    JSON carries estimated_completion_timestamp; without one, neither."""
    ahead = replace(polled("t-ahead", snap(10, 4, 1)), estimated_completion=NOW + 150)
    late = replace(polled("t-late", snap(10, 9, 1)), estimated_completion=NOW - 30)
    plain = polled("t-plain", snap(10, 4, 1))
    page = rows(render_html(view(ahead, late, plain)))
    assert "ETA in 2m 30s" in page["t-ahead"]
    assert "ETA 30s overdue" in page["t-late"]
    assert "ETA" not in page["t-plain"]
    tasks = json_tasks(render_json(view(ahead, plain)))
    assert tasks["t-ahead"]["estimated_completion_timestamp"] == NOW + 150
    assert tasks["t-plain"]["estimated_completion_timestamp"] is None
