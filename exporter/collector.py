"""Metric families from the poller's memory (contract section 5); it knows no HTTP.

The per-task families are most of a scrape (ten series per task), and prometheus_client's
encoders spend most of a second on 10,000 tasks escaping label values that the
configuration has already restricted to ``[A-Za-z0-9_.-]``. So :func:`render_task_families`
writes them directly in either exposition format, and the registry path
(:class:`TaskCollector`) builds the same families as ``Metric`` objects for everything else.

A sample of what it yields::

    # HELP shoplazza_upload_task_files Files in the upload task (the API's total).
    # TYPE shoplazza_upload_task_files gauge
    shoplazza_upload_task_files{store="acme",task_id="300b5e33"} 3.0
    # TYPE shoplazza_upload_task_poll_success gauge
    shoplazza_upload_task_poll_success{store="acme",task_id="300b5e33"} 1.0
    # TYPE shoplazza_api_errors_total counter
    shoplazza_api_errors_total{code="429",store="acme"} 0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import cast

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter import __version__
from exporter.model import DURATION_BUCKETS, ExporterView, StoreView, TaskState

# (name, help, value of a snapshot) for the per-task gauges that need data.
_TASK_GAUGES: tuple[tuple[str, str], ...] = (
    ("shoplazza_upload_task_files", "Files in the upload task (the API's total)."),
    ("shoplazza_upload_task_files_finished", "Files of the upload task processed so far."),
    ("shoplazza_upload_task_files_succeeded", "Files stored successfully (success_list length)."),
    ("shoplazza_upload_task_files_failed", "Files that failed (failure_list length)."),
    ("shoplazza_upload_task_status", "Raw task status: 0 completed, 1 in progress."),
    ("shoplazza_upload_task_completed", "1 when the task is completed (status 0), else 0."),
    (
        "shoplazza_upload_task_progress_ratio",
        "finished/total; when total is 0, 1 if completed else 0.",
    ),
    (
        "shoplazza_upload_task_last_progress_timestamp_seconds",
        "Unix time when finished or status last changed (first sight counts).",
    ),
    (
        "shoplazza_upload_task_last_success_timestamp_seconds",
        "Unix time of the last successful poll of the task.",
    ),
)
_POLL_SUCCESS = (
    "shoplazza_upload_task_poll_success",
    "1 if the last poll of this task succeeded, else 0.",
)


def _task_values(task: TaskState) -> tuple[float, ...] | None:
    """The values of the data gauges, in ``_TASK_GAUGES`` order; None before any data."""
    snap = task.snapshot
    if snap is None:
        return None
    nan = math.nan
    return (
        snap.total,
        snap.finished,
        snap.succeeded,
        snap.failed,
        snap.status,
        1.0 if snap.completed else 0.0,
        snap.progress_ratio,
        task.last_progress if task.last_progress is not None else nan,
        task.last_success if task.last_success is not None else nan,
    )


def task_families(views: Iterable[StoreView]) -> Iterator[Metric]:
    """The per-task gauges as ``Metric`` objects."""
    families = [Metric(name, doc, "gauge") for name, doc in _TASK_GAUGES]
    poll = Metric(*_POLL_SUCCESS, "gauge")
    for view in views:
        for task in view.tasks:
            labels = {"store": view.name, "task_id": task.task_id}
            poll.samples.append(
                Sample(poll.name, labels, 1.0 if task.poll_success else 0.0, None, None)
            )
            values = _task_values(task)
            if values is None:
                continue
            for family, value in zip(families, values, strict=True):
                family.samples.append(Sample(family.name, labels, float(value), None, None))
    yield from families
    yield poll


# prometheus_client's own number formatting ("3.0", "1.7958836822220578e+09", "NaN").
_fmt = cast(Callable[[float], str], _untyped_float_to_go)


def _label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def render_task_families(views: Iterable[StoreView], names: Collection[str] | None = None) -> str:
    """The per-task gauges as exposition text, the same in 0.0.4 and OpenMetrics 1.0.

    For gauges both formats (as prometheus_client writes them) have HELP then TYPE, the same
    label escaping and number formatting; OpenMetrics' final ``# EOF`` is the encoder's.
    """
    all_gauges = (*_TASK_GAUGES, _POLL_SUCCESS)
    wanted = [i for i, (name, _) in enumerate(all_gauges) if names is None or name in names]
    if not wanted:
        return ""
    lines: list[list[str]] = [[] for _ in all_gauges]
    poll = len(_TASK_GAUGES)
    for view in views:
        store = _label(view.name)
        for task in view.tasks:
            labels = f'{{store="{store}",task_id="{_label(task.task_id)}"}} '
            lines[poll].append(labels + ("1.0" if task.poll_success else "0.0"))
            values = _task_values(task)
            if values is not None:
                for i, value in enumerate(values):
                    lines[i].append(labels + _fmt(value))
    out: list[str] = []
    for i in wanted:
        name, doc = all_gauges[i]
        out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
        if lines[i]:
            out.append(name + f"\n{name}".join(lines[i]) + "\n")
    return "".join(out)


def store_families(view: ExporterView) -> Iterator[Metric]:
    """Per-store counters, histogram and gauges, and the exporter-wide gauges."""
    views, reload_status, version = view.stores, view.reload, view.version
    requests = Metric(
        "shoplazza_api_requests",
        "Requests sent to the Shoplazza API, by HTTP status or failure kind.",
        "counter",
    )
    errors = Metric(
        "shoplazza_api_errors",
        "Requests that did not yield valid task data, by HTTP status or failure kind.",
        "counter",
    )
    duration = Metric(
        "shoplazza_api_request_duration_seconds",
        "Duration of requests to the Shoplazza API.",
        "histogram",
    )
    skipped = Metric(
        "shoplazza_exporter_polls_skipped",
        "Due task polls a scrape answered without, by reason.",
        "counter",
    )
    watched = Metric("shoplazza_exporter_watched_tasks", "Upload tasks watched per store.", "gauge")
    for sv in views:
        store = {"store": sv.name}
        for code, count in sv.requests:
            requests.add_sample("shoplazza_api_requests_total", {**store, "code": code}, count)
        for code, count in sv.errors:
            errors.add_sample("shoplazza_api_errors_total", {**store, "code": code}, count)
        for reason, count in sv.skipped:
            skipped.add_sample(
                "shoplazza_exporter_polls_skipped_total", {**store, "reason": reason}, count
            )
        bucket = "shoplazza_api_request_duration_seconds_bucket"
        for bound, count in zip(DURATION_BUCKETS, sv.buckets, strict=True):
            duration.add_sample(bucket, {**store, "le": repr(float(bound))}, count)
        duration.add_sample(bucket, {**store, "le": "+Inf"}, sv.duration_count)
        duration.add_sample(
            "shoplazza_api_request_duration_seconds_count", store, sv.duration_count
        )
        duration.add_sample("shoplazza_api_request_duration_seconds_sum", store, sv.duration_sum)
        watched.add_sample(watched.name, store, len(sv.tasks))
    yield from (requests, errors, duration, skipped, watched)
    reload_ok = Metric(
        "shoplazza_exporter_config_last_reload_successful",
        "1 if the last configuration reload succeeded, else 0.",
        "gauge",
    )
    reload_ok.add_sample(reload_ok.name, {}, 1.0 if reload_status.successful else 0.0)
    reload_ts = Metric(
        "shoplazza_exporter_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration reload.",
        "gauge",
    )
    reload_ts.add_sample(reload_ts.name, {}, reload_status.last_success)
    info = Metric("shoplazza_exporter_build_info", "Build information; always 1.", "gauge")
    info.add_sample(info.name, {"version": version}, 1.0)
    yield from (reload_ok, reload_ts, info)


class TaskCollector(Collector):
    """Yields every contract metric from a fresh :class:`StoreView` list."""

    def __init__(self, views: Callable[[], ExporterView], version: str = __version__) -> None:
        self._views = views
        self.version = version

    def describe(self) -> Iterable[Metric]:
        """Nothing to describe up front: registering must not call the API."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Render the poller's memory."""
        view = self._views()
        yield from task_families(view.stores)
        yield from store_families(view)
