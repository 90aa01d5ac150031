"""Polling semantics (docs/design.md, "The model") against the simulator's own leaky bucket."""

from __future__ import annotations

import contextlib
import email.utils
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.clock import ScaledClock
from exporter.demo.simulator import Reply, Simulator
from exporter.polling.poller import QUEUE_AHEAD
from exporter.web.routes import App
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    FakeClock,
    config_yaml,
    make_exporter,
    registry_of,
    sample,
    scheduler_quiet,
    scrape,
    store_yaml,
    wait_until,
    write,
)


def skipped(exporter: Exporter, reason: str, store: str = "shop") -> float:
    value = registry_of(exporter).get_sample_value(
        "shoplazza_exporter_polls_skipped_total", {"store": store, "reason": reason}
    )
    assert value is not None
    return value


def test_completed_task_fetched_exactly_once(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("done", total=2, finished=2, status=0)
    sim.add_task("busy", total=5, finished=1)
    text = config_yaml(sim.url, ["done", "busy"], min_poll_interval=0, requests_per_second=1000)
    path = write(tmp_path / "c.yaml", text)
    exporter = make_exporter(path)
    for _ in range(20):
        exporter.poller.refresh(5)
    assert sim.count("done") == 1
    assert sim.count("busy") == 20
    exporter.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"task_id": "someone-elses-task", "total": 2, "finished": 2, "status": 0}',
        b'{"code": "Success", "data": {"task_id": "x", "total": 2, "finished": 2, "status": 0}}',
        b'{"task_id": "busy", "total": 2, "finished": 2, "status": 1, "status": 0}',
    ],
)
def test_a_wrong_answer_never_completes_a_task(sim: Simulator, tmp_path: Path, body: bytes) -> None:
    sim.add_task("busy", total=5, finished=1)
    sim.script("busy", Reply(status=200, body=body))
    text = config_yaml(sim.url, ["busy"], min_poll_interval=0, requests_per_second=1000)
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    try:
        for _ in range(3):
            exporter.poller.refresh(5)
        assert sim.count("busy") == 3  # still polled: the wrong answer completed nothing
        metrics = scrape(App(exporter))
        labels = {"store": "shop", "task_id": "busy"}
        assert sample(metrics, "shoplazza_upload_task_completed", **labels) == 0
        assert sample(metrics, "shoplazza_upload_task_files_finished", **labels) == 1
        errors = sample(
            metrics, "shoplazza_api_errors_total", store="shop", code="invalid_response"
        )
        assert errors == 1
    finally:
        exporter.close()


def test_every_fetch_of_a_task_ends_the_scrape_that_waits_for_it(
    sim: Simulator, tmp_path: Path
) -> None:
    """A task fetched again and again: each scrape answers when its fetch is done."""
    sim.add_task("busy", total=5, finished=1)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["busy"], min_poll_interval=0))
    exporter = make_exporter(path)
    try:
        for _ in range(5):
            exporter.poller.refresh(2)
        assert sim.count("busy") == 5
        assert skipped(exporter, "deadline") == 0  # no scrape ran out its deadline
        text = scrape(App(exporter))
        # success counts in requests_total only, never in errors_total
        assert sample(text, "shoplazza_api_requests_total", store="shop", code="200") == 6
        assert sample(text, "shoplazza_api_errors_total", store="shop", code="200") is None
    finally:
        exporter.close()


def test_rapid_scrapes_fetch_once_per_min_poll_interval(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("busy", total=5, finished=1)
    clock = FakeClock()
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["busy"], min_poll_interval="5s"))
    exporter = make_exporter(path, clock=clock)
    for _ in range(10):  # 10 scrapes, one a second: fetches at t=0 and t=5 only
        exporter.poller.refresh(5)
        clock.advance(1)
    assert sim.count("busy") == 2
    for _ in range(10):  # 10 scrapes within the same instant: none is due again
        exporter.poller.refresh(5)
    assert sim.count("busy") == 3
    exporter.close()


def test_parallel_scrapes_share_in_flight_fetches(sim: Simulator, tmp_path: Path) -> None:
    ids = [f"t{i}" for i in range(6)]
    for task_id in ids:
        sim.add_task(task_id, total=5, finished=1)
    sim.latency = 0.3
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ids, min_poll_interval="1m"))
    exporter = make_exporter(path)
    app = App(exporter)
    threads = [threading.Thread(target=scrape, args=(app, 5)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sim.count() == len(ids)
    assert all(sim.count(task_id) == 1 for task_id in ids)
    exporter.close()


def test_budget_respected_and_every_task_refreshed(tmp_path: Path) -> None:
    """40 tasks, 2 req/s, burst 4, a scrape every second: no 429, oldest-first rotation."""
    clock = ScaledClock(speed=4)
    with Simulator(tokens=(TOKEN,), rate_limit=2, bucket_capacity=5, clock=clock.monotonic) as sim:
        ids = [f"task-{i:02d}" for i in range(40)]
        for task_id in ids:
            sim.add_task(task_id, total=100, finished=1)
        text = config_yaml(
            sim.url, ids, min_poll_interval=0, requests_per_second=2, burst=4, max_concurrency=4
        )
        exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
        start = clock.monotonic()
        first_seen: dict[str, float] = {}
        for second in range(1, 31):
            exporter.poller.refresh(0.5)
            now = clock.monotonic() - start
            for r in sim.requests:
                if r.task_id is not None:
                    first_seen.setdefault(r.task_id, now)
            if second == 10:
                # within 10 s at most burst + rate * t requests, and none throttled
                assert sim.count() <= 4 + 2 * 10
                assert sim.throttled == 0
            clock.sleep_until(start + second)
        elapsed = clock.monotonic() - start
        assert sim.count() <= 4 + 2 * elapsed + 1
        assert sim.throttled == 0
        assert set(first_seen) == set(ids)
        # every task was refreshed within active tasks / rate (+ a scrape of slack)
        assert max(first_seen.values()) <= (40 - 4) / 2 + 2
        # least recently attempted first: the second round follows the first round's order
        order = [r.task_id for r in sim.requests]
        assert len(set(order[:40])) == 40
        errors = registry_of(exporter).get_sample_value(
            "shoplazza_api_errors_total", {"store": "shop", "code": "429"}
        )
        assert errors == 0
        assert skipped(exporter, "rate_limited") > 0
        exporter.close()


def test_background_refresh_continues_and_stops_without_scrapes(tmp_path: Path) -> None:
    clock = ScaledClock(speed=8)
    with Simulator(tokens=(TOKEN,), rate_limit=2, bucket_capacity=5, clock=clock.monotonic) as sim:
        ids = [f"t{i}" for i in range(12)]
        for task_id in ids:
            sim.add_task(task_id, total=3, finished=1)
        text = config_yaml(sim.url, ids, min_poll_interval="1m", requests_per_second=2, burst=2)
        exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
        exporter.poller.refresh(0.2)  # answers long before all 12 are fetched
        assert sim.count() < 12
        assert sim.wait_for(lambda s: s.count() == 12, timeout=10)
        assert sim.throttled == 0
        # nothing is polled when nobody scrapes
        clock.sleep_until(clock.monotonic() + 10)
        assert sim.count() == 12
        exporter.close()


def test_retry_after_seconds_pauses_the_store(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=3, finished=1)
    sim.add_task("t2", total=3, finished=1)
    clock = FakeClock()
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2"], min_poll_interval=0))
    exporter = make_exporter(path, clock=clock)
    sim.script("t1", Reply(status=429, headers={"Retry-After": "3"}))
    exporter.poller.refresh(0.05)  # t1 gets 429; t2 started in the same wave
    wait_until(lambda: scheduler_quiet(exporter.poller))
    count = sim.count()
    clock.advance(1)
    exporter.poller.refresh(0.05)  # paused: no request starts
    wait_until(lambda: scheduler_quiet(exporter.poller))  # nor in the background
    assert sim.count() == count
    assert skipped(exporter, "backoff") == 2
    clock.advance(1.9)
    exporter.poller.refresh(0.05)
    wait_until(lambda: scheduler_quiet(exporter.poller))
    assert sim.count() == count
    clock.advance(0.2)  # 3.1 s after the 429
    exporter.poller.refresh(0.05)
    assert sim.count() == count + 2
    exporter.close()


def test_a_later_shorter_429_does_not_shorten_the_pause(sim: Simulator, tmp_path: Path) -> None:
    """Two requests of one store in flight: the first gets a 429 with ``Retry-After: 60``;
    the second is answered 10 s later with ``Retry-After: 2``. The store stays paused 60 s."""
    sim.add_task("t1", total=3, finished=1)
    sim.add_task("t2", total=3, finished=1)
    sim.script("t1", Reply(status=429, headers={"Retry-After": "60"}))
    sim.script("t2", Reply(status=429, headers={"Retry-After": "2"}, latency=1.0))  # after t1's
    clock = FakeClock()
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2"], min_poll_interval=0))
    exporter = make_exporter(path, clock=clock)
    poller = exporter.poller

    def errors_429() -> int:
        return dict(poller.views()[0].errors).get("429", 0)

    try:
        poller.refresh(0)  # starts both, waits for neither
        wait_until(lambda: errors_429() == 1)  # t1's 429 at 0: paused until 60
        clock.advance(10)
        wait_until(lambda: errors_429() == 2)  # t2's 429 at 10 asks for 12 only
        wait_until(lambda: scheduler_quiet(poller))
        assert sim.count() == 2
        clock.advance(10)
        poller.refresh(5)  # at 20: still paused, no request starts
        wait_until(lambda: scheduler_quiet(poller))
        assert sim.count() == 2
        assert skipped(exporter, "backoff") == 2
        clock.advance(40.5)
        poller.refresh(5)  # at 60.5: the pause is over
        assert (sim.count("t1"), sim.count("t2")) == (2, 2)
    finally:
        exporter.close()


@pytest.mark.parametrize(
    ("retry_after", "still_paused_at", "resumed_at"),
    [
        # an HTTP date 3 to 4 s from now (the header has whole seconds)
        (lambda: email.utils.formatdate(time.time() + 4, usegmt=True), 2.0, 4.5),
        (lambda: None, 0.5, 1.1),  # absent: 1 s
    ],
    ids=["http-date", "absent"],
)
def test_retry_after_other_forms_pause_the_store(
    sim: Simulator,
    tmp_path: Path,
    retry_after: Callable[[], str | None],
    still_paused_at: float,
    resumed_at: float,
) -> None:
    sim.add_task("t1", total=3, finished=1)
    clock = FakeClock()
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], min_poll_interval=0))
    exporter = make_exporter(path, clock=clock)
    value = retry_after()
    sim.script("t1", Reply(status=429, headers={} if value is None else {"Retry-After": value}))
    exporter.poller.refresh(0.05)
    clock.advance(still_paused_at)
    exporter.poller.refresh(0.05)
    wait_until(lambda: scheduler_quiet(exporter.poller))  # nothing started in the background
    assert sim.count("t1") == 1
    clock.advance(resumed_at - still_paused_at)
    exporter.poller.refresh(0.05)
    assert sim.count("t1") == 2
    exporter.close()


def test_one_store_paused_does_not_pause_another(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("a1", total=3, finished=1)
    sim.add_task("b1", total=3, finished=1)
    clock = FakeClock()
    text = (
        "stores:\n"
        + store_yaml("a", sim.url, ["a1"], min_poll_interval=0, requests_per_second=1, burst=1)
        + store_yaml("b", sim.url, ["b1"], min_poll_interval=0)
    )
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    sim.script("a1", Reply(status=429, headers={"Retry-After": "60"}))
    for _ in range(5):
        exporter.poller.refresh(0.05)
        wait_until(lambda: scheduler_quiet(exporter.poller))  # nothing started in the background
        assert sim.count("a1") == 1
        clock.advance(1)
    assert sim.count("b1") == 5
    assert skipped(exporter, "backoff", "a") == 4
    assert skipped(exporter, "backoff", "b") == 0
    exporter.close()


def test_scrape_deadline_answers_from_memory_and_next_scrape_has_data(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("slow", total=4, finished=3)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["slow"], min_poll_interval="1m"))
    exporter = make_exporter(path)
    app = App(exporter)
    sim.script("slow", Reply(latency=3.0))
    start = time.monotonic()
    text = scrape(app, timeout=1)  # X-Prometheus-Scrape-Timeout-Seconds: 1
    assert time.monotonic() - start < 1.0
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="slow") == 0
    assert sample(text, "shoplazza_upload_task_files_finished", task_id="slow") is None
    assert skipped(exporter, "deadline") == 1
    # the fetch goes on in the background and serves the next scrape
    wait_until(lambda: sim.count("slow") == 1 and sim.in_flight == 0, timeout=10)
    wait_until(lambda: exporter.view().stores[0].tasks[0].snapshot is not None, timeout=5)
    text = scrape(app, timeout=1)  # not due again (1m): from memory
    assert sample(text, "shoplazza_upload_task_files_finished", task_id="slow") == 3
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="slow") == 1
    assert sim.count("slow") == 1
    exporter.close()


def test_concurrent_scrape_during_slow_fetch_sends_no_second_request(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("slow", total=4, finished=3)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["slow"], min_poll_interval=0))
    exporter = make_exporter(path)
    sim.script("slow", Reply(latency=1.5))
    exporter.poller.refresh(0.2)
    exporter.poller.refresh(0.2)  # due (interval 0) but in flight: shared, not re-sent
    assert sim.count("slow") == 1
    assert skipped(exporter, "deadline") == 2
    exporter.close()


def test_max_concurrency_gives_waves(sim: Simulator, tmp_path: Path) -> None:
    ids = [f"t{i:02d}" for i in range(20)]
    for task_id in ids:
        sim.add_task(task_id, total=3, finished=1)
    sim.latency = 0.2
    text = config_yaml(
        sim.url, ids, max_concurrency=10, requests_per_second=100, burst=20, timeout="5s"
    )
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    start = time.monotonic()
    exporter.poller.refresh(9)
    elapsed = time.monotonic() - start
    assert sim.count() == 20
    assert sim.max_in_flight == 10
    starts = sorted(r.at for r in sim.requests)
    waves = 1 + sum(1 for a, b in itertools.pairwise(starts) if b - a > 0.1)
    assert waves == 2
    assert elapsed < 2.0  # twenty waves would take 4 s
    exporter.close()


def test_least_recently_attempted_first_including_failing(sim: Simulator, tmp_path: Path) -> None:
    ids = ["a", "b", "c", "d"]
    for task_id in ids[:3]:
        sim.add_task(task_id, total=3, finished=1)
    # "d" is unknown: it fails with 404 every time, and must still get its turn
    clock = FakeClock()
    text = config_yaml(sim.url, ids, min_poll_interval=0, requests_per_second=1, burst=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    for step in range(12):
        if step:
            clock.advance(1)  # not after the last scrape: its timer would start a 13th
        exporter.poller.refresh(0.6)
    wait_until(lambda: scheduler_quiet(exporter.poller))
    order = [r.task_id or "" for r in sim.requests]
    assert len(order) == 12
    assert sorted(order[:4]) == ids
    assert order[4:8] == order[:4] and order[8:12] == order[:4]
    exporter.close()


def test_skip_reason_rate_limited(sim: Simulator, tmp_path: Path) -> None:
    ids = [f"t{i}" for i in range(5)]
    for task_id in ids:
        sim.add_task(task_id, total=3, finished=1)
    clock = FakeClock()
    text = config_yaml(sim.url, ids, requests_per_second=1, burst=2)
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    exporter.poller.refresh(0.5)
    wait_until(lambda: scheduler_quiet(exporter.poller))  # the 3 skipped wait for the budget
    assert sim.count() == 2
    assert skipped(exporter, "rate_limited") == 3
    assert skipped(exporter, "deadline") == 0
    exporter.close()


def test_in_flight_task_not_due_is_neither_waited_for_nor_counted(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("slow", total=4, finished=3)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["slow"], min_poll_interval="10s"))
    exporter = make_exporter(path)
    sim.script("slow", Reply(latency=3.0))
    exporter.poller.refresh(0.3)  # due (never attempted): waited for, then skipped
    assert skipped(exporter, "deadline") == 1
    start = time.monotonic()
    for _ in range(3):  # attempted 0.3 s ago: not due, served from memory at once
        exporter.poller.refresh(5.0)
    assert time.monotonic() - start < 2.0
    assert skipped(exporter, "deadline") == 1
    assert sim.count("slow") == 1
    exporter.close()


def test_failed_files_beyond_the_kept_list_are_logged_as_a_count(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter.model import MAX_KEPT_FAILURES

    many = [{"origin_link": f"http://img/{i}.jpg", "reason": "r"} for i in range(1005)]
    sim.add_task("big", total=2000, finished=1005, failure_list=many)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["big"]))
    exporter = make_exporter(path)
    with caplog.at_level(logging.WARNING, logger="exporter.polling.poller"):
        exporter.poller.refresh(5)
    listed = [r for r in caplog.records if r.getMessage() == "upload task file failed"]
    assert len(listed) == MAX_KEPT_FAILURES
    [summary] = [r for r in caplog.records if "counted, not listed" in r.getMessage()]
    assert summary.__dict__["failed"] == 1005
    assert (
        registry_of(exporter).get_sample_value(
            "shoplazza_upload_task_files_failed", {"store": "shop", "task_id": "big"}
        )
        == 1005
    )
    exporter.close()


@contextlib.contextmanager
def scaled_store(
    tmp_path: Path, speed: float, tasks: int, **keys: Any
) -> Iterator[tuple[ScaledClock, Simulator, Exporter]]:
    """A store of ``tasks`` in-progress tasks on a simulator sharing a sped-up clock."""
    clock = ScaledClock(speed=speed)
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic) as sim:
        ids = [f"t{i}" for i in range(tasks)]
        for task_id in ids:
            sim.add_task(task_id, total=5, finished=1)
        text = config_yaml(sim.url, ids, **keys)
        exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
        try:
            yield clock, sim, exporter
        finally:
            exporter.close()


def test_scrape_waits_only_for_what_the_balance_allows_at_its_start(tmp_path: Path) -> None:
    """10 due tasks, burst 3, 1 req/s: the scrape answers after 3, the rest go on behind it."""
    keys = {"min_poll_interval": "1m", "requests_per_second": 1, "burst": 3}
    with scaled_store(tmp_path, 10, 10, **keys) as (clock, sim, exporter):
        start = clock.monotonic()
        exporter.poller.refresh(8)  # a deadline the budget could fill with 8 more requests
        took = clock.monotonic() - start
        assert sim.count() == 3
        assert took < 2.0  # answered once the three it could start were done
        assert skipped(exporter, "rate_limited") == 7
        assert skipped(exporter, "deadline") == 0
        # every task due at the scrape's start is still fetched, in the background, in budget
        assert sim.wait_for(lambda s: s.count() == 10, timeout=5)
        starts = sorted(r.at for r in sim.requests)  # real seconds
        assert (starts[-1] - starts[0]) * clock.speed >= 7 * 0.9  # 7 more at 1 req/s
        assert sim.throttled == 0


def test_scrape_of_a_paused_store_waits_for_nothing(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=3, finished=1)
    clock = ScaledClock(speed=10)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], min_poll_interval=0))
    exporter = make_exporter(path, clock=clock)
    sim.script("t1", Reply(status=429, headers={"Retry-After": "60"}))
    exporter.poller.refresh(5)
    start = clock.monotonic()
    exporter.poller.refresh(120)  # paused for a minute: no budget at its start, no wait
    assert clock.monotonic() - start < 5.0
    assert skipped(exporter, "backoff") == 1
    wait_until(lambda: scheduler_quiet(exporter.poller))  # nothing started in the background
    assert sim.count("t1") == 1
    exporter.close()


def test_failing_task_backs_off_and_recovers(sim: Simulator, tmp_path: Path) -> None:
    """Interval min_poll_interval x 2^(failures-1), at most 5 minutes; reset by a success."""
    sim.add_task("ok", total=5, finished=1)
    clock = FakeClock()
    text = config_yaml(sim.url, ["ok", "typo"], min_poll_interval="10s")
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    fetched_at: list[int] = []
    for second in range(0, 1300, 10):
        if second == 1000:
            sim.add_task("typo", total=5, finished=1)  # the id starts to answer
        before = sim.count("typo")
        exporter.poller.refresh(5)
        if sim.count("typo") > before:
            fetched_at.append(second)
        clock.advance(10)
    gaps = [b - a for a, b in itertools.pairwise(fetched_at)]
    # 404s: 10, 20, 40, 80, 160, then capped at 300; after the success at 1010: 10 s again
    assert gaps[:7] == [10, 20, 40, 80, 160, 300, 300]
    assert fetched_at[7] == 910 and fetched_at[8] == 1210
    assert gaps[-1] == 10 and gaps[-2] == 10
    assert sim.count("ok") == 130  # the working task kept its interval throughout
    exporter.close()


@pytest.mark.parametrize(("header", "pause"), [("0", 1.0), ("-5", 1.0)])
def test_retry_after_pause_is_at_least_a_second(
    sim: Simulator, tmp_path: Path, header: str, pause: float
) -> None:
    sim.add_task("t1", total=3, finished=1)
    clock = FakeClock()
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], min_poll_interval=0))
    exporter = make_exporter(path, clock=clock)
    sim.script("t1", Reply(status=429, headers={"Retry-After": header}))
    exporter.poller.refresh(0.05)
    clock.advance(pause - 0.1)
    exporter.poller.refresh(0.05)
    wait_until(lambda: scheduler_quiet(exporter.poller))  # nothing started in the background
    assert sim.count("t1") == 1
    assert skipped(exporter, "backoff") == 1
    clock.advance(0.2)
    exporter.poller.refresh(0.05)
    assert sim.count("t1") == 2
    exporter.close()


def test_forgotten_tasks_of_served_stores_count_as_watched(sim: Simulator, tmp_path: Path) -> None:
    """The state file keeps the mark of a forgotten task while its store is configured."""
    sim.add_task("live", total=5, finished=1)
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["live", "old"]))
    exporter = Exporter(path, environ={TOKEN_ENV: TOKEN})
    exporter.poller.restore([], {("shop", "old"): 1_700_000_000.0, ("gone", "x"): 1.0})
    exporter.start()
    try:
        assert exporter.poller.watched_keys() == {("shop", "live"), ("shop", "old")}
    finally:
        exporter.close()


def test_a_scrape_queues_what_the_budget_covers_plus_a_bounded_amount(
    sim: Simulator, tmp_path: Path
) -> None:
    """Many due tasks: a scrape queues its balance plus QUEUE_AHEAD, counts the rest as
    skipped, and the queue is filled again as it drains (docs/design.md, "The scheduler")."""
    ids = [f"t{n:04d}" for n in range(QUEUE_AHEAD * 3)]
    for task_id in ids:
        sim.add_task(task_id, total=2, finished=1)
    text = config_yaml(sim.url, ids, min_poll_interval=3600, requests_per_second=1, burst=4)
    clock = FakeClock()
    exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    try:
        poller = exporter.poller
        poller.refresh(0.0)
        with poller.cond:
            store = poller.stores["shop"]
            queued = sum(1 for task in store.active.values() if task.pending)
            assert queued <= 4 + QUEUE_AHEAD
            assert store.backlog
        assert skipped(exporter, "rate_limited") == len(ids) - 4
        for _ in range(QUEUE_AHEAD * 3):  # the budget refills: the backlog is fetched too
            clock.advance(1.0)
            if sum(sim.count(t) for t in ids) == len(ids):
                break
            wait_until(lambda: scheduler_quiet(poller))
        assert all(sim.count(task_id) == 1 for task_id in ids)
    finally:
        exporter.close()
