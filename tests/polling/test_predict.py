"""Predictive polling and waited-for tasks (docs/design.md, "Predictive polling").

Property: whatever the predictions, prioritized tasks, 429s and failures, the requests the
simulator sees keep the store's bucket (``burst + rate * t``), ``max_concurrency``,
single-flight, the 429 pause and the failure backoff, and a completed task is never fetched
again. Time is a fake clock the test moves; requests are real HTTP to the simulator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.clock import ScaledClock
from exporter.config import load_config
from exporter.demo.simulator import Reply, SimTask, Simulator
from exporter.polling.estimate import Progress
from exporter.polling.poller import Poller
from exporter.polling.store import Watched, poll_interval
from tests.helpers import TOKEN, TOKEN_ENV, FakeClock, config_yaml, wait_until, write

MIN_INTERVAL = 5.0
RATE = 0.5  # a round of 5 tasks (10 s) is longer than MIN_INTERVAL: predictions reach past it
RETRY_AFTER = 3
EPS = 1e-6

# A step: what happens, to which task, then how far the clock moves.
Step = tuple[str, int, float]
steps_strategy = st.lists(
    st.tuples(
        st.sampled_from(["refresh", "refresh", "prioritize", "429", "500", "nothing"]),
        st.integers(0, 4),
        st.sampled_from([0.0, 0.3, 1.0, 2.5, 6.0]),
    ),
    min_size=4,
    max_size=40,
)


def linear(rate: float, total: int) -> Callable[[SimTask, float], None]:
    """Progress of ``rate`` files a second on the simulator's clock; completes at total."""

    def progress(task: SimTask, elapsed: float) -> None:
        task.finished = min(total, int(rate * max(elapsed, 0.0)))
        task.status = 0 if task.finished >= total else 1

    return progress


def settle(poller: Poller, sim: Simulator, clock: FakeClock) -> None:
    """Wait (real time) until nothing more can start at the fake clock's time."""

    def quiet() -> bool:
        with poller.cond:
            now = clock.monotonic()
            for store in poller.stores.values():
                if store.in_flight or store.ready:
                    return False
                if store.can_start_more(now) and store.bucket.next_start(now) <= now:
                    return False
        return sim.in_flight == 0

    wait_until(quiet, timeout=10)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=steps_strategy,
    burst=st.integers(1, 3),
    concurrency=st.integers(1, 3),
    rates=st.lists(st.sampled_from([0.0, 0.5, 2.0, 8.0]), min_size=5, max_size=5),
)
def test_predictions_keep_every_limit(
    tmp_path: Path, steps: list[Step], burst: int, concurrency: int, rates: list[float]
) -> None:
    clock = FakeClock()
    totals = [20] * 5
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic) as sim:
        sim.latency = 0.002  # requests overlap in real time while the fake clock stands
        ids = [f"t{i}" for i in range(5)]
        for task_id, rate, total in zip(ids, rates, totals, strict=True):
            sim.add_task(task_id, total=total, progress=linear(rate, total))
        text = config_yaml(
            sim.url,
            ids,
            min_poll_interval=f"{MIN_INTERVAL:g}s",
            requests_per_second=RATE,
            burst=burst,
            max_concurrency=concurrency,
        )
        poller = Poller(clock=clock, workers=4)
        try:
            poller.apply_config(load_config(write(tmp_path / "c.yaml", text), {TOKEN_ENV: TOKEN}))
            for action, k, advance in steps:
                if action == "refresh":
                    poller.refresh(0)
                elif action == "prioritize":
                    poller.prioritize("shop", ids[k])
                elif action == "429":
                    sim.script(ids[k], Reply(429, headers={"Retry-After": str(RETRY_AFTER)}))
                elif action == "500":
                    sim.script(ids[k], Reply(500))
                settle(poller, sim, clock)
                clock.advance(advance)
                settle(poller, sim, clock)
            records = sim.requests
            max_in_flight = sim.max_in_flight
            max_task_in_flight = sim.max_task_in_flight
        finally:
            poller.stop()
    starts = sorted(r.clock_at for r in records)
    for i, j in itertools.combinations(range(len(starts)), 2):
        assert j - i + 1 <= burst + RATE * (starts[j] - starts[i]) + EPS, "bucket broken"
    assert max_in_flight <= concurrency
    assert max_task_in_flight <= 1  # single-flight
    for r in records:
        if r.status == 429:
            assert not [
                s for s in starts if r.clock_at + EPS < s < r.clock_at + RETRY_AFTER - EPS
            ], "a request started during a 429 pause"
    for task_id, rate, total in zip(ids, rates, totals, strict=True):
        mine = [r for r in records if r.task_id == task_id]
        failures = 0
        for before, after in itertools.pairwise(mine):
            failures = failures + 1 if before.status != 200 else 0
            if failures:
                gap = after.clock_at - before.clock_at
                assert gap >= poll_interval(MIN_INTERVAL, failures) - EPS, "backoff broken"
        done_at = math.inf if rate == 0 else total / rate
        seen_done = [
            r.clock_at for r in mine if r.status == 200 and r.clock_at - sim_origin(sim) >= done_at
        ]
        if seen_done:
            assert mine[-1].clock_at == seen_done[0], "a completed task was fetched again"


def sim_origin(sim: Simulator) -> float:
    """The simulator's clock reading at its start (its ``elapsed()`` counts from there)."""
    return sim._started_at


def test_a_completion_is_seen_well_before_the_round_robin_floor(tmp_path: Path) -> None:
    """60 tasks at 1 req/s: round-robin sees a completion up to a minute late; the poll at
    the predicted moment sees it within seconds. Sped-up clock, real HTTP."""
    clock = ScaledClock(speed=10)
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic, rate_limit=1.0) as sim:
        ids = [f"busy{i:02d}" for i in range(59)]
        for task_id in ids:
            sim.add_task(task_id, total=10_000, progress=linear(1.0, 10_000))  # never done
        # completes at second 130 of the simulator, two rounds of the queue in
        sim.add_task("target", total=1300, progress=linear(10.0, 1300))
        ids.append("target")
        text = config_yaml(sim.url, ids, min_poll_interval="1s", requests_per_second=1, burst=1)
        poller = Poller(clock=clock)
        try:
            poller.apply_config(load_config(write(tmp_path / "c.yaml", text), {TOKEN_ENV: TOKEN}))
            floor = len(ids) / 1.0  # round-robin: each task once a minute
            done = sim._started_at + 130.0
            while clock.monotonic() < done + floor:
                poller.refresh(5)
                [view] = poller.views()
                target = next(t for t in view.tasks if t.task_id == "target")
                if target.completed:
                    break
                clock.sleep_until(clock.monotonic() + 5)
            assert target.completed and target.completed_at is not None
            seen_after = target.completed_at - (clock.time() - clock.monotonic() + done)
            assert seen_after < floor / 4, f"seen {seen_after:.1f} s after the completion"
            assert sim.throttled == 0
        finally:
            poller.stop()


def test_a_waited_for_task_is_polled_first_and_without_scrapes(tmp_path: Path) -> None:
    """Behind a queue of 20 due tasks at 1 req/s, the prioritized task goes next; later it
    is polled again every min_poll_interval though nobody scrapes."""
    clock = FakeClock()
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic) as sim:
        ids = [f"t{i:02d}" for i in range(20)]
        for task_id in ids:
            sim.add_task(task_id, total=100, finished=1)
        text = config_yaml(sim.url, ids, min_poll_interval="5s", requests_per_second=1, burst=1)
        poller = Poller(clock=clock, workers=2)
        try:
            poller.apply_config(load_config(write(tmp_path / "c.yaml", text), {TOKEN_ENV: TOKEN}))
            poller.refresh(0)  # queues all 20; the first one starts on the burst token
            settle(poller, sim, clock)
            assert poller.prioritize("shop", "t19")  # last in the queue
            clock.advance(1.0)  # one token: for the waited-for task
            settle(poller, sim, clock)
            assert [r.task_id for r in sim.requests][-1] == "t19"
            for _ in range(3):  # no scrape: its timed polls come every 5 s
                clock.advance(5.0)
                settle(poller, sim, clock)
            assert sim.count("t19") >= 4
            assert not poller.prioritize("shop", "unknown")
        finally:
            poller.stop()


@pytest.mark.parametrize("fails", [False, True])
def test_a_predicted_poll_comes_before_the_interval_unless_a_failure_backs_off(
    tmp_path: Path, fails: bool
) -> None:
    """Task a finishes 1 file a second, 12 files: after polls at 0 s and 5 s it is expected
    at 12 s and polled then, sooner than min_poll_interval (10 s after its last poll would
    be 15 s). When its poll at 10 s fails, the failure's backoff (5 s) holds instead. (16
    tasks at 2 req/s: a round of the queue takes 8 s, so a prediction 7.5 s ahead is armed.)"""
    clock = FakeClock()
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic) as sim:
        sim.add_task("a", total=12, progress=linear(1.0, 12))
        ids = ["a", *(f"s{i:02d}" for i in range(15))]  # stuck ones: a round takes 8 s
        for task_id in ids[1:]:
            sim.add_task(task_id, total=10, finished=1)
        text = config_yaml(sim.url, ids, min_poll_interval="5s", requests_per_second=2, burst=20)
        poller = Poller(clock=clock, workers=2)
        try:
            poller.apply_config(load_config(write(tmp_path / "c.yaml", text), {TOKEN_ENV: TOKEN}))
            origin = clock.monotonic()
            for at in (0.0, 5.0, 10.0):
                clock.now = origin + at
                if at == 10.0 and fails:
                    sim.script("a", Reply(500))
                poller.refresh(0)
                settle(poller, sim, clock)
            assert sim.count("a") == 3
            [view] = poller.views()
            [a] = [t for t in view.tasks if t.task_id == "a"]
            assert a.estimated_completion == pytest.approx(clock.time() - 10 + 12, abs=0.01)
            clock.now = origin + 13.0  # the predicted moment (12 s + PREDICT_LAG) is past
            settle(poller, sim, clock)
            assert sim.count("a") == (3 if fails else 4)
            if not fails:
                [view] = poller.views()
                assert next(t for t in view.tasks if t.task_id == "a").completed
        finally:
            poller.stop()


def test_only_tasks_in_progress_keep_a_progress_history(tmp_path: Path) -> None:
    """A fleet's tasks are mostly completed: they hold no progress history (an empty deque
    each took 8 MB for 10,000 tasks in bench.fleet); a task in progress has one until a
    poll sees it completed, and one restored from the state file completed has none."""
    clock = FakeClock()
    with Simulator(tokens=(TOKEN,), clock=clock.monotonic) as sim:
        sim.add_task("done", total=10, finished=10, status=0)
        sim.add_task("busy", total=10, finished=4)
        text = config_yaml(sim.url, ["done", "busy"], min_poll_interval="5s")
        poller = Poller(clock=clock, workers=2)
        try:
            poller.apply_config(load_config(write(tmp_path / "c.yaml", text), {TOKEN_ENV: TOKEN}))
            tasks = poller.stores["shop"].tasks

            def progress(task_id: str) -> Progress | None:
                return tasks[task_id].progress

            assert progress("done") is None and progress("busy") is None
            poller.refresh(0)
            settle(poller, sim, clock)
            assert sim.count() == 2
            assert progress("done") is None
            busy = progress("busy")
            assert busy is not None and busy.points == [(busy.polled, 4)]
            sim.task("busy").finished, sim.task("busy").status = 10, 0
            clock.advance(5.0)
            poller.refresh(0)
            settle(poller, sim, clock)
            assert sim.count("busy") == 2 and tasks["busy"].record.completed
            assert progress("busy") is None
            assert Watched(tasks["busy"].record).progress is None  # as after a restart
        finally:
            poller.stop()
