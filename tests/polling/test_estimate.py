"""The completion estimate: a line through a task's recent progress (docs/design.md,
"Predictive polling")."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from exporter.polling.estimate import MIN_STALL, WINDOW, Progress

T0 = 1_800_000_000.0


def fed(points: Sequence[tuple[float, int]], total: int = 100) -> Progress:
    progress = Progress()
    for at, finished in points:
        progress.observe(T0 + at, finished, total)
    return progress


def test_steady_progress_is_extrapolated_to_the_total() -> None:
    progress = fed([(0, 10), (10, 20), (20, 30)])  # 1 file a second
    assert progress.estimate() == pytest.approx(T0 + 90)


def test_one_point_or_no_progress_gives_no_estimate() -> None:
    assert fed([(0, 10)]).estimate() is None
    assert fed([(0, 10), (10, 10), (20, 10)]).estimate() is None  # never moved
    assert Progress().estimate() is None


def test_accelerating_progress_follows_the_recent_rate() -> None:
    # 1 file/s for 100 s, then 4 files/s: the window keeps the last points only
    points = [(float(t), t) for t in range(0, 101, 20)]
    points += [(100.0 + t, 100 + 4 * t) for t in range(20, 201, 20)]
    progress = fed(points, total=2000)
    eta = progress.estimate()
    assert eta is not None
    truth = T0 + 300 + (2000 - 900) / 4
    assert abs(eta - truth) < 0.05 * (truth - T0 - 300)


def test_a_pause_pushes_the_estimate_out_then_drops_it() -> None:
    base = [(0, 10), (10, 20), (20, 30)]
    steady = fed(base).estimate()
    paused = fed([*base, (40, 30)]).estimate()  # 20 s without a change
    assert steady is not None and paused is not None and paused > steady + 20
    long_pause = fed([*base, (20 + MIN_STALL + 1, 30)])
    assert long_pause.stalled() and long_pause.estimate() is None  # not progressing
    resumed = fed([*base, (20 + MIN_STALL + 1, 30), (20 + MIN_STALL + 11, 40)])
    assert resumed.estimate() is not None  # moving again


def test_regressing_progress_starts_the_history_over() -> None:
    progress = fed([(0, 10), (10, 20), (20, 30), (30, 5)])
    assert list(progress.points) == [(T0 + 30, 5)]
    assert progress.estimate() is None  # until it moves again
    progress.observe(T0 + 40, 15, 100)
    assert progress.estimate() == pytest.approx(T0 + 40 + 85)


def test_a_changed_total_starts_the_history_over() -> None:
    progress = fed([(0, 10), (10, 20)])
    progress.observe(T0 + 20, 30, 200)
    assert progress.estimate() is None


def test_a_clock_stepping_back_starts_the_history_over() -> None:
    progress = fed([(0, 10), (10, 20), (20, 30)])
    progress.observe(T0 - 3600, 40, 100)  # the wall clock was set back an hour
    assert progress.estimate() is None
    progress.observe(T0 - 3590, 50, 100)
    assert progress.estimate() == pytest.approx(T0 - 3590 + 50)


def test_a_clock_stepping_forward_delays_the_estimate_once() -> None:
    progress = fed([(0, 10), (10, 20)])
    progress.observe(T0 + 20 + 3600, 30, 100)  # one poll after an hour's step
    late = progress.estimate()
    assert late is not None and late > T0 + 3600 + 100  # the rate looks slow
    progress.observe(T0 + 3630, 40, 100)
    progress.observe(T0 + 3640, 50, 100)
    assert progress.estimate() is not None


def test_finished_equal_total_but_not_completed_is_expected_now() -> None:
    progress = fed([(0, 90), (10, 100)])
    assert progress.estimate() == pytest.approx(T0 + 10)


def test_history_older_than_the_window_is_dropped() -> None:
    points = [(float(t), t // 10) for t in range(0, int(WINDOW) * 2, 60)]
    progress = fed(points, total=10_000)
    assert progress.points[-1][0] - progress.points[0][0] <= WINDOW


def test_a_restart_rebuilds_the_estimate_from_the_saved_point() -> None:
    """The state file keeps last_progress and finished: one more poll gives a rate."""
    restored = Progress.seeded(T0 + 20, 30, 100)
    assert restored.estimate() is None
    restored.observe(T0 + 40, 50, 100)
    assert restored.estimate() == pytest.approx(T0 + 40 + 50)
    assert Progress.seeded(None, 0, 100).estimate() is None
