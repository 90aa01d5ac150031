"""The demo's tasks: one completes, one gets stuck, one accumulates failures, one is 404."""

from __future__ import annotations

from collections.abc import Callable

from exporter.demo.simulator import SimTask, Simulator

__all__ = ["DEMO_MISSING_TASK", "DEMO_REGISTER_TASK", "DEMO_STEP", "DEMO_TOKEN", "add_demo_tasks"]

#: Token the demo simulator accepts (``--demo`` in the exporter and here).
DEMO_TOKEN = "demo-token-not-a-secret"
#: The demo task id that is never added, so it answers 404.
DEMO_MISSING_TASK = "demo-missing-404"
#: A demo task the configuration does not list: the README's quick start registers it
#: through the task API (docs/task-api.md).
DEMO_REGISTER_TASK = "demo-import-42"
_EPSILON = 1e-9

#: Seconds per finished file in the progressing demo tasks.
DEMO_STEP = 0.5
_DEMO_REASONS = ("download timeout", "unsupported image format", "image larger than 20 MB")


def _origin(task_id: str, i: int) -> str:
    return f"https://images.example.com/{task_id}/{i:03d}.jpg"


def _success(task_id: str, i: int) -> dict[str, str]:
    return {
        "file_uri": f"shoplazza://files/{task_id}/{i:03d}",
        "origin_link": _origin(task_id, i),
        "upload_link": f"https://img.staticdj.com/{task_id}/{i:03d}.jpg",
    }


def _failure(task_id: str, i: int) -> dict[str, str]:
    return {
        "origin_link": _origin(task_id, i),
        "reason": _DEMO_REASONS[(i // 3 - 1) % len(_DEMO_REASONS)],
    }


def _fill(task: SimTask, finished: int, fail_every: int | None) -> None:
    """Set ``finished`` and rebuild the lists: file i (1-based) fails when fail_every | i."""
    finished = max(0, min(task.total, finished))
    task.finished = finished
    task.success_list = []
    task.failure_list = []
    for i in range(1, finished + 1):
        if fail_every is not None and i % fail_every == 0:
            task.failure_list.append(_failure(task.task_id, i))
        else:
            task.success_list.append(_success(task.task_id, i))
    task.status = 0 if finished >= task.total else 1


def _progressing(step: float, fail_every: int | None) -> Callable[[SimTask, float], None]:
    def progress(task: SimTask, elapsed: float) -> None:
        finished = int(max(0.0, elapsed) / step + _EPSILON)
        if finished != task.finished or (finished >= task.total) != (task.status == 0):
            _fill(task, max(finished, task.finished), fail_every)

    return progress


def add_demo_tasks(sim: Simulator) -> list[str]:
    """Add the demo tasks to ``sim`` and return their ids plus :data:`DEMO_MISSING_TASK`.

    - ``demo-catalogue-complete``: 6 files, one finished every 0.5 s, completed after 3 s;
    - ``demo-images-stuck``: 10 files, 4 finished, in progress forever;
    - ``demo-variants-failing``: 40 files, one finished every 0.5 s, every third one fails;
    - ``demo-missing-404``: never added, so it answers 404;
    - ``demo-import-42`` (:data:`DEMO_REGISTER_TASK`): 8 files, completed after 4 s, not
      in the returned ids: the quick start registers it through the task API.

    Progress follows the simulator's clock (seconds since ``start()``).
    """
    ids: list[str] = []

    def add(task_id: str, total: int, fail_every: int | None, moving: bool, done: int) -> None:
        task = sim.add_task(
            task_id,
            total,
            origin_list=[_origin(task_id, i) for i in range(1, total + 1)],
            progress=_progressing(DEMO_STEP, fail_every) if moving else None,
        )
        _fill(task, done, fail_every)
        ids.append(task_id)

    add("demo-catalogue-complete", 6, None, True, 0)
    add("demo-images-stuck", 10, None, False, 4)
    add("demo-variants-failing", 40, 3, True, 0)
    ids.append(DEMO_MISSING_TASK)
    add(DEMO_REGISTER_TASK, 8, None, True, 0)
    ids.remove(DEMO_REGISTER_TASK)
    return ids
