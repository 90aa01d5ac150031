"""The simulator's values: a simulated task, a scripted reply, a recorded request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Body shapes the simulator can answer with.
SHAPES = ("flat", "wrapped")


@dataclass
class SimTask:
    """A simulated upload-file task; mutable (tests may change fields under ``sim.lock``)."""

    task_id: str
    total: int
    finished: int = 0
    status: int = 1  # 0 completed, 1 in progress
    success_list: list[dict[str, str]] = field(default_factory=list)
    failure_list: list[dict[str, str]] = field(default_factory=list)
    origin_list: list[str] = field(default_factory=list)
    #: Called (under the simulator's lock) before each answer built from this task with the
    #: seconds since the simulator started (by its clock); may mutate the task.
    progress: Callable[[SimTask, float], None] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat (API 2022-01) JSON object of this task."""
        return {
            "task_id": self.task_id,
            "total": self.total,
            "finished": self.finished,
            "status": self.status,
            "success_list": [dict(item) for item in self.success_list],
            "failure_list": [dict(item) for item in self.failure_list],
            "origin_list": list(self.origin_list),
        }


@dataclass
class Reply:
    """A scripted answer: one-shot (:meth:`Simulator.script`) or sticky (:meth:`Simulator.behave`).

    ``body=None`` means the task's normal JSON body for a 2xx status (``{"errors": ["task not
    found"]}`` when the task does not exist) and ``{"errors": ["<reason phrase>"]}`` for any
    other status. ``body_size`` streams that many bytes of a large JSON object
    (``{"pad": "xxx..."}``) in 64 KiB chunks without building it in memory; ``chunked``
    sends the body without ``Content-Length`` (chunked for HTTP/1.1 clients, else
    close-delimited). ``drip`` sends the body one byte at a time, that many seconds apart
    (a slow or hostile upstream); ``head_drip`` does the same with the status line and
    headers.
    """

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    body_size: int | None = None
    chunked: bool = False
    content_type: str = "application/json"
    drip: float = 0.0
    head_drip: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the simulator saw it, with the status it decided to answer."""

    method: str
    path: str
    task_id: str | None
    token: str | None
    headers: dict[str, str]
    at: float  # time.monotonic() at arrival
    status: int
    clock_at: float = 0.0  # the simulator's clock at arrival (a test's fake or sped-up time)


def check_shape(shape: str) -> None:
    """Raise ValueError for a body shape the simulator does not know."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}, expected one of {', '.join(SHAPES)}")
