"""How soon the exporter sees a completion, on the same API budget: predictive polling
against least-recently-polled-first (round-robin) only.

One store, the real poller (``Poller``, its scheduler and client) against the real
simulator, whose leaky bucket enforces Shoplazza's 2 requests a second. Tasks progress
along scripted trajectories: steady rates, rates that double, halve or pause mid-task,
tasks that never progress (stuck), and completed tasks that sit idle. One scraper calls
``Poller.refresh`` every ``--interval`` seconds with the deadline of a 10 s scrape
timeout, as ``App.metrics`` does before rendering.

Per scenario and policy it reports when each completion was seen after it happened
(``completed_at`` in the exporter minus the moment the simulated task completed),
p50/p95/max, the 429s, the requests per minute, the oldest data age among the tasks in
progress at each scrape (against the round-robin floor: tasks in progress / rate, at
least ``min_poll_interval``), requests per stuck task, and how far the exported estimate
was from the real completion a given time before it.

Time is simulated with a :class:`~exporter.clock.ScaledClock` shared by the simulator and
the poller (``--speed`` times faster than real time); CPU work is not sped up, so a busy
machine adds a little to every figure.

Usage::

    .venv/bin/python -m bench.completion [--minutes 10] [--speed 20] [--scenario all]
        [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import (
    TOKEN,
    TOKEN_ENV,
    WALL_START,
    Report,
    add_output_flags,
    config_text,
    emit,
    fmt_int,
    fmt_seconds,
    markdown_table,
    percentile,
)
from exporter.clock import ScaledClock
from exporter.config import load_config
from exporter.demo.simulator import SimTask, Simulator
from exporter.polling.poller import Poller

RATE = 2.0  # the store's budget and the simulator's leak rate, requests per second
#: The exporter's burst, a little below the API's bucket capacity (10), as
#: docs/performance.md advises: with both at 10, network jitter makes the odd 429.
BURST = 8
SCRAPE_TIMEOUT_DEADLINE = 9.5  # X-Prometheus-Scrape-Timeout-Seconds: 10
#: How long before its completion an exported estimate is judged (seconds).
HORIZONS = (60.0, 30.0, 10.0)


@dataclass
class Trajectory:
    """A task's progress: a piecewise constant rate (files/s) from t=0, until ``total``."""

    total: int
    # (from simulated second, rate multiplier); the first starts at 0.
    profile: list[tuple[float, float]]
    base: float = 0.0  # files per second at multiplier 1
    done_at: float = math.inf  # simulated second it completes (inf: never)

    def integral(self, t: float) -> float:
        """Multiplier-seconds from 0 to ``t``."""
        acc = 0.0
        for i, (start, mult) in enumerate(self.profile):
            end = self.profile[i + 1][0] if i + 1 < len(self.profile) else math.inf
            if t <= start:
                break
            acc += (min(t, end) - start) * mult
        return acc

    def finished(self, t: float) -> int:
        """Files finished at simulated second ``t``."""
        if t >= self.done_at:
            return self.total
        return min(self.total - 1, int(self.base * self.integral(t) + 1e-9))

    @classmethod
    def completing_at(cls, total: int, profile: list[tuple[float, float]], at: float) -> Trajectory:
        """A trajectory of ``profile`` scaled so that it completes at second ``at``."""
        trajectory = cls(total, profile)
        trajectory.base = total / trajectory.integral(at)
        trajectory.done_at = at
        return trajectory


@dataclass(frozen=True)
class Scenario:
    """One workload: its tasks and the store's settings."""

    name: str
    title: str
    in_progress: int
    changing: bool
    stuck: int
    idle: int
    min_poll_interval: float


SCENARIOS = {
    "steady": Scenario("steady", "100 tasks, steady rates", 100, False, 0, 200, 10.0),
    "changing": Scenario(
        "changing", "100 tasks, rates change mid-task, 10 stuck", 100, True, 10, 200, 10.0
    ),
    "under-budget": Scenario(
        "under-budget", "10 tasks, min_poll_interval 10s (under budget)", 10, False, 0, 20, 10.0
    ),
}


def trajectories(s: Scenario, start: float, end: float, seed: int) -> dict[str, Trajectory]:
    """The scenario's tasks: in-progress ones complete spread from ``start`` to ``end``."""
    rng = random.Random(seed)
    tasks: dict[str, Trajectory] = {}
    for i in range(s.in_progress):
        at = start + (end - start) * (i + 0.5) / s.in_progress
        total = rng.choice((50, 200, 1000, 5000))
        profile = [(0.0, 1.0)]
        if s.changing:
            change = rng.uniform(0.3, 0.95) * at
            kind = i % 4
            if kind == 0:
                profile.append((change, 2.0))  # speeds up
            elif kind == 1:
                profile.append((change, 0.5))  # slows down
            elif kind == 2:
                pause = rng.uniform(20.0, 90.0)
                profile += [(change, 0.0), (change + pause, 1.0)]  # pauses, then goes on
                at = max(at, change + pause + 10.0)
            else:
                profile.append((change, rng.choice((0.7, 1.5))))  # drifts
        tasks[f"run-{i:03d}"] = Trajectory.completing_at(total, profile, min(at, end))
    for i in range(s.stuck):
        tasks[f"stuck-{i:03d}"] = Trajectory(100, [(0.0, 0.0)], base=0.0)
    return tasks


@dataclass
class Result:
    """One scenario under one policy."""

    scenario: Scenario
    policy: str
    seen: list[float]  # seconds from each completion to the exporter seeing it
    unseen: int
    requests: int
    throttled: int
    minutes: float
    ages: list[float]  # oldest in-progress data age, per scrape
    age_ratio: list[float]  # that over the round-robin floor at the scrape
    floor: float  # round-robin floor at the start
    stuck_requests: float  # requests per stuck task
    busy_requests: float  # requests per in-progress task (until it completed)
    eta_errors: dict[float, list[float]] = field(default_factory=dict)


def run(s: Scenario, policy: str, args: argparse.Namespace) -> Result:
    """One run: the scenario against the poller with ``policy``.

    The first ``--warmup`` seconds see no completion (every task gets its first poll);
    then the completions spread over ``--minutes`` (the last 20 s without any).
    """
    minutes, speed, interval = args.minutes, args.speed, args.interval
    warmup = args.warmup
    window = warmup + minutes * 60.0
    plans = trajectories(s, warmup, window - 20.0, args.seed)
    clock = ScaledClock(speed, wall=WALL_START)
    sim = Simulator(
        tokens=(TOKEN,), rate_limit=RATE, bucket_capacity=10, clock=clock.monotonic, max_records=1
    )

    def progress_of(plan: Trajectory) -> Callable[[SimTask, float], None]:
        def progress(task: SimTask, elapsed: float) -> None:
            task.finished = plan.finished(elapsed)
            task.status = 0 if elapsed >= plan.done_at else 1

        return progress

    for task_id, plan in plans.items():
        sim.add_task(task_id, total=plan.total, progress=progress_of(plan))
    idle = [f"idle-{i:03d}" for i in range(s.idle)]
    for task_id in idle:
        sim.add_task(task_id, total=10, finished=10, status=0)
    ids = [*plans, *idle]
    poller = Poller(clock=clock)
    poller.predictive = policy == "predictive"
    # ETA samples: per task, (simulated second, estimate in simulated seconds).
    estimates: dict[str, list[tuple[float, float]]] = {task_id: [] for task_id in plans}
    ages: list[float] = []
    ratios: list[float] = []
    with sim, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exporter.yaml"
        path.write_text(
            config_text(sim.url, ids, min_poll_interval=f"{s.min_poll_interval:g}s", burst=BURST),
            encoding="utf-8",
        )
        poller.apply_config(load_config(str(path), {TOKEN_ENV: TOKEN}))
        origin = clock.time() - sim.elapsed()
        # simulated second t of the tasks is wall time origin + t
        t0 = clock.monotonic()
        next_at = t0 + 1.0
        counted = 0
        try:
            while clock.monotonic() - t0 < window:
                clock.sleep_until(next_at)
                next_at += interval
                poller.refresh(SCRAPE_TIMEOUT_DEADLINE)
                now = clock.time()
                t = now - origin
                oldest = 0.0
                active = 0
                [view] = poller.views()
                for task in view.tasks:
                    traj = plans.get(task.task_id)
                    if traj is None:
                        continue
                    if task.estimated_completion is not None:
                        estimates[task.task_id].append((t, task.estimated_completion - origin))
                    if t < traj.done_at:
                        active += 1
                        since = task.last_success if task.last_success is not None else WALL_START
                        oldest = max(oldest, now - since)
                if t < warmup:
                    counted = sim.count()  # requests are counted after the warm-up
                elif active:
                    ages.append(oldest)
                    ratios.append(oldest / max(active / RATE, s.min_poll_interval, interval))
            [view] = poller.views()
            requests = sim.count() - counted
            per_task = {tid: sim.count(tid) for tid in plans}
            throttled = sim.throttled
        finally:
            poller.stop()
    seen: list[float] = []
    unseen = 0
    for task in view.tasks:
        traj = plans.get(task.task_id)
        if traj is None or math.isinf(traj.done_at):
            continue
        if task.completed_at is None:
            unseen += 1
        else:
            seen.append(task.completed_at - origin - traj.done_at)
    stuck = [n for tid, n in per_task.items() if plans[tid].done_at == math.inf]
    busy = [n for tid, n in per_task.items() if plans[tid].done_at != math.inf]
    errors: dict[float, list[float]] = {h: [] for h in HORIZONS}
    for task_id, samples in estimates.items():
        done = plans[task_id].done_at
        for horizon in HORIZONS:
            before = [eta for at, eta in samples if at <= done - horizon]
            if before:
                errors[horizon].append(before[-1] - done)
    return Result(
        scenario=s,
        policy=policy,
        seen=seen,
        unseen=unseen,
        requests=requests,
        throttled=throttled,
        minutes=minutes,
        ages=ages,
        age_ratio=ratios,
        floor=max(s.in_progress + s.stuck, 1) / RATE,
        stuck_requests=sum(stuck) / len(stuck) if stuck else math.nan,
        busy_requests=sum(busy) / len(busy) if busy else math.nan,
        eta_errors=errors,
    )


def _abs_p(values: Sequence[float], q: float) -> float:
    return percentile([abs(v) for v in values], q)


def report(results: list[Result], args: argparse.Namespace) -> Report:
    """The markdown section: set-up, then one table per scenario."""
    lines = [
        f"One store, {RATE:g} req/s budget (burst {BURST}) against the simulator's leaky bucket "
        f"({RATE:g} req/s, capacity 10). One scraper refreshes every {args.interval:g} s with "
        f"a {SCRAPE_TIMEOUT_DEADLINE:g} s deadline; {args.minutes:g} simulated minutes per "
        f"run after a {args.warmup:g} s warm-up (every task polled once, no completion), sped "
        f"up {args.speed:g} times; in-progress tasks complete spread over the run (totals "
        "of 50 to 5,000 files). `round-robin` is least recently polled first "
        "only (`Poller.predictive = False`); `predictive` adds a poll at each task's "
        'estimated completion (docs/design.md, "Predictive polling").',
        "",
        "*Seen*: the exporter's `completed_at` minus the moment the task completed. *Age*: "
        "the oldest `last_success` age among tasks in progress, per scrape; *age / floor*: "
        "that over the round-robin floor then (tasks in progress / rate, at least "
        "`min_poll_interval` and the scrape interval: a task is queued only by a scrape). "
        "Requests per minute count after the warm-up; the budget is "
        f"{RATE * 60:g}/min. *ETA error*: the exported estimate a given time before the "
        "completion minus the completion (absolute, p50 / p95).",
    ]
    for name in dict.fromkeys(r.scenario.name for r in results):
        rows = [r for r in results if r.scenario.name == name]
        s = rows[0].scenario
        lines += [
            "",
            f"### {s.title}",
            "",
            f"{s.in_progress} in progress, {s.stuck} stuck, {s.idle} completed and idle; "
            f"`min_poll_interval: {s.min_poll_interval:g}s`; round-robin floor at the start "
            f"{fmt_seconds(rows[0].floor)}.",
            "",
        ]
        header = [
            "policy",
            "seen p50",
            "seen p95",
            "seen max",
            "unseen",
            "429s",
            "requests/min",
            "age p50",
            "age max",
            "age / floor max",
            "req/stuck task",
            "req/busy task",
        ]
        table = []
        for r in rows:
            table.append(
                [
                    r.policy,
                    fmt_seconds(percentile(r.seen, 50)),
                    fmt_seconds(percentile(r.seen, 95)),
                    fmt_seconds(max(r.seen, default=math.nan)),
                    fmt_int(r.unseen),
                    fmt_int(r.throttled),
                    f"{r.requests / r.minutes:.1f}",
                    fmt_seconds(percentile(r.ages, 50)),
                    fmt_seconds(max(r.ages, default=math.nan)),
                    f"{max(r.age_ratio, default=math.nan):.2f}",
                    "n/a" if math.isnan(r.stuck_requests) else f"{r.stuck_requests:.1f}",
                    f"{r.busy_requests:.1f}",
                ]
            )
        lines.append(markdown_table(header, table))
        eta = [r for r in rows if r.policy == "predictive"]
        if eta:
            lines += ["", "ETA error (predictive run):", ""]
            lines.append(
                markdown_table(
                    ["before completion", "tasks", "p50", "p95", "max"],
                    [
                        [
                            f"{h:g} s",
                            fmt_int(len(errs)),
                            fmt_seconds(_abs_p(errs, 50)),
                            fmt_seconds(_abs_p(errs, 95)),
                            fmt_seconds(max((abs(e) for e in errs), default=math.nan)),
                        ]
                        for h, errs in eta[0].eta_errors.items()
                    ],
                )
            )
    return Report("completion", "Completion seen: predictive polling", "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the scenarios under both policies and print (or write) the report."""
    parser = argparse.ArgumentParser(prog="python -m bench.completion", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes (10)")
    parser.add_argument("--speed", type=float, default=20.0, help="time speed-up (20)")
    parser.add_argument(
        "--warmup", type=float, default=180.0, help="seconds before the first completion (180)"
    )
    parser.add_argument("--interval", type=float, default=15.0, help="scrape interval (15 s)")
    parser.add_argument(
        "--scenario", choices=[*SCENARIOS, "all"], default="all", help="which workload (all)"
    )
    parser.add_argument(
        "--policy",
        choices=["round-robin", "predictive", "both"],
        default="both",
        help="which scheduling (both)",
    )
    parser.add_argument("--seed", type=int, default=21, help="random seed (21)")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    scenarios = list(SCENARIOS.values()) if args.scenario == "all" else [SCENARIOS[args.scenario]]
    policies = ["round-robin", "predictive"] if args.policy == "both" else [args.policy]
    results = []
    for s in scenarios:
        for policy in policies:
            results.append(run(s, policy, args))
    emit(report(results, args), parser, args, argv)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
