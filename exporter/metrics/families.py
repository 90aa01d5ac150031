"""Metric families from an :class:`ExporterView`; it knows no HTTP (docs/design.md, "Exposition").

Everything the exporter shows of itself and its tasks is defined here once, as
prometheus_client families: gauges per task, counters and a histogram per store
(``CounterMetricFamily`` / ``HistogramMetricFamily``) and the exporter-wide gauges.
:func:`family_collectors` yields them for a registry, one collector per family (``name[]``
filters go through ``restricted_registry``); :mod:`exporter.metrics.exposition` writes the
per-task gauges directly and caches every part, byte-identical to what the encoders make
of these families.

Every value passes :func:`number` and every label value :func:`label_value` first, so no
stored value (an integer of a thousand digits, NaN, a lone surrogate) can make rendering
raise (docs/design.md, "Exposition").

A sample of what it yields::

    # HELP shoplazza_upload_task_files Files in the upload task (the API's total).
    # TYPE shoplazza_upload_task_files gauge
    shoplazza_upload_task_files{store="acme",task_id="300b5e33"} 3.0
    # HELP shoplazza_api_errors_total Requests that did not yield valid task data, ...
    # TYPE shoplazza_api_errors_total counter
    shoplazza_api_errors_total{code="429",store="acme"} 0.0
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter.build import build_labels
from exporter.model import (
    DURATION_BUCKETS,
    TASK_FIELDS,
    ExporterView,
    StoreView,
    TaskField,
    TaskRecord,
)

# (name, help, type) of the per-store families, in exposition order.
STORE_FAMILIES: tuple[tuple[str, str, str], ...] = (
    (
        "shoplazza_api_requests",
        "Requests sent to the Shoplazza API, by HTTP status or failure kind.",
        "counter",
    ),
    (
        "shoplazza_api_errors",
        "Requests that did not yield valid task data, by HTTP status or failure kind.",
        "counter",
    ),
    (
        "shoplazza_api_request_duration_seconds",
        "Duration of requests to the Shoplazza API.",
        "histogram",
    ),
    (
        "shoplazza_exporter_polls_skipped",
        "Due task polls a scrape answered without, by reason.",
        "counter",
    ),
    ("shoplazza_exporter_watched_tasks", "Upload tasks watched per store.", "gauge"),
    (
        "shoplazza_exporter_registered_tasks",
        "Upload tasks registered through the task API per store.",
        "gauge",
    ),
)

# (name, help) of the exporter-wide gauges, in exposition order.
GLOBAL_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "shoplazza_exporter_config_last_reload_successful",
        "1 if the last configuration reload succeeded, else 0.",
    ),
    (
        "shoplazza_exporter_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration reload.",
    ),
    ("shoplazza_exporter_build_info", "Build information; always 1."),
    (
        "shoplazza_exporter_store_files_invalid",
        "Store files whose last read failed (their last good version stays in use).",
    ),
    (
        "shoplazza_exporter_state_file_last_write_successful",
        "1 if the last write of the state file succeeded, else 0.",
    ),
    (
        "shoplazza_exporter_web_config_last_reload_successful",
        "1 if the last load of the web configuration file succeeded, else 0.",
    ),
    ("shoplazza_exporter_shard_info", "This process's shard; always 1."),
    (
        "shoplazza_exporter_stores",
        'Configured stores: owned="true" served by this process, "false" by another shard.',
    ),
)

# (name, help, labels) of the exporter-wide counters, after the gauges.
GLOBAL_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "shoplazza_exporter_task_api_requests",
        "Requests of the task API answered, by method and HTTP status.",
        ("method", "code"),
    ),
)

# Context label names that cannot be shown as such are left out (docs/design.md, "Exposition").
_LABEL_NAME = re.compile(r"(?!__)[a-zA-Z_][a-zA-Z0-9_]*\Z")
# prometheus_client's own number formatting ("3.0", "1.7958836822220578e+09", "NaN", "+Inf").
go_float = cast(Callable[[float], str], _untyped_float_to_go)
_BOUNDS = (*(go_float(b) for b in DURATION_BUCKETS), "+Inf")


def number(value: object) -> float:
    """Any stored value as a float, never raising: huge integers become ±Inf, junk NaN."""
    if type(value) is float:
        return value
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float range
        return math.inf if value > 0 else -math.inf  # type: ignore[operator]
    except (TypeError, ValueError):
        return math.nan


def label_value(value: object) -> str:
    """Any stored value as a label value that encodes to UTF-8 (lone surrogates become '?')."""
    text = value if type(value) is str else str(value)
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def task_labels(store: str, task: TaskRecord) -> dict[str, str]:
    """The labels of the info gauge: context labels, then ``store`` and ``task_id`` (they win)."""
    labels = {
        sys.intern(k): sys.intern(label_value(v))
        for k, v in task.labels
        if type(k) is str and _LABEL_NAME.match(k)
    }
    labels["store"] = label_value(store)
    labels["task_id"] = label_value(task.task_id)
    return labels


INFO_NAME = "shoplazza_upload_task_info"


@dataclass(frozen=True, slots=True)
class TaskGauge:
    """One per-task gauge: its name, help, and its value for a task (None: not exported)."""

    name: str
    help: str
    value: Callable[[TaskRecord], float | None]


def _field_gauge(spec_field: TaskField) -> TaskGauge:
    """The gauge a declared field feeds (exporter/model.py, ``TASK_FIELDS``)."""
    spec = spec_field.spec
    assert spec.gauge is not None
    get = spec_field.get
    convert: Callable[[Any], float] = (
        (lambda v: 1.0 if v else 0.0) if spec.kind == "flag" else number
    )

    def value(task: TaskRecord) -> float | None:
        if spec.shown == "always":
            return convert(get(task))
        if spec.shown == "known":
            raw = get(task)
            return None if raw is None else convert(raw)
        snap = task.snapshot
        if snap is None:  # before the first success only the "always" gauges (and info)
            return None
        if spec.shown == "completed":
            raw = get(task)
            return convert(raw) if snap.completed and raw is not None else None
        return convert(get(task))

    return TaskGauge(spec.gauge, spec.help, value)


def _completed(task: TaskRecord) -> float | None:
    snap = task.snapshot
    return None if snap is None else (1.0 if snap.completed else 0.0)


def _progress_ratio(task: TaskRecord) -> float | None:
    snap = task.snapshot
    if snap is None:
        return None
    try:
        return number(snap.progress_ratio)
    except (ArithmeticError, TypeError, ValueError):  # e.g. huge ints: their quotient overflows
        total, finished = number(snap.total), number(snap.finished)
        return min(finished / total, 1.0) if math.isfinite(total) and total > 0 else math.nan


def _gauges(on_snapshot: bool) -> tuple[TaskGauge, ...]:
    return tuple(
        _field_gauge(f) for f in TASK_FIELDS if f.on_snapshot == on_snapshot and f.spec.gauge
    )


#: The per-task gauges in exposition order: the declared fields' gauges (the snapshot's,
#: then two derived from it, then the task's), and the info gauge last.
TASK_GAUGE_DEFS: tuple[TaskGauge, ...] = (
    *_gauges(on_snapshot=True),
    TaskGauge(
        "shoplazza_upload_task_completed",
        "1 when the task is completed (status 0), else 0.",
        _completed,
    ),
    TaskGauge(
        "shoplazza_upload_task_progress_ratio",
        "finished/total; when total is 0, 1 if completed else 0.",
        _progress_ratio,
    ),
    *_gauges(on_snapshot=False),
    TaskGauge(INFO_NAME, "1 for every watched task, with its context labels.", lambda _: 1.0),
)
#: (name, help) of the per-task gauges, in exposition order.
TASK_GAUGES: tuple[tuple[str, str], ...] = tuple((g.name, g.help) for g in TASK_GAUGE_DEFS)


def task_values(task: TaskRecord) -> tuple[float | None, ...]:
    """The value of each gauge of ``TASK_GAUGES`` for one task; None where none is exported."""
    return tuple(gauge.value(task) for gauge in TASK_GAUGE_DEFS)


def task_families(stores: Iterable[StoreView], only: int | None = None) -> list[Metric]:
    """The per-task gauges as prometheus_client families (``only``: that one alone)."""
    families: list[Metric] = [GaugeMetricFamily(name, doc) for name, doc in TASK_GAUGES]
    wanted = range(len(families)) if only is None else (only,)
    for view in stores:
        store = label_value(view.name)
        for task in view.tasks:
            base = {"store": store, "task_id": label_value(task.task_id)}
            values = task_values(task)
            for i in wanted:
                value = values[i]
                if value is not None:
                    labels = task_labels(view.name, task) if families[i].name == INFO_NAME else base
                    families[i].add_sample(families[i].name, labels, value)
    return families if only is None else [families[only]]


def store_families(view: StoreView) -> list[Metric]:
    """The counters, histogram and gauge of one store."""
    store = label_value(view.name)
    doc = {name: (name, help_) for name, help_, _ in STORE_FAMILIES}
    requests = CounterMetricFamily(*doc["shoplazza_api_requests"], labels=("store", "code"))
    errors = CounterMetricFamily(*doc["shoplazza_api_errors"], labels=("store", "code"))
    duration = HistogramMetricFamily(
        *doc["shoplazza_api_request_duration_seconds"], labels=("store",)
    )
    skipped = CounterMetricFamily(
        *doc["shoplazza_exporter_polls_skipped"], labels=("store", "reason")
    )
    watched = GaugeMetricFamily(*doc["shoplazza_exporter_watched_tasks"], labels=("store",))
    registered = GaugeMetricFamily(*doc["shoplazza_exporter_registered_tasks"], labels=("store",))
    for family, counts in ((requests, view.requests), (errors, view.errors)):
        for code, count in counts:
            family.add_metric((store, label_value(code)), number(count))
    for reason, count in view.skipped:
        skipped.add_metric((store, label_value(reason)), number(count))
    buckets = [(b, number(c)) for b, c in zip(_BOUNDS, view.buckets, strict=False)]
    if len(buckets) == len(DURATION_BUCKETS):  # a view with the wrong shape shows no histogram
        buckets.append(("+Inf", number(view.duration_count)))
        duration.add_metric((store,), buckets, number(view.duration_sum))
    watched.add_metric((store,), len(view.tasks))
    registered.add_metric((store,), number(view.registered))
    return [requests, errors, duration, skipped, watched, registered]


def all_store_families(stores: Iterable[StoreView], only: int | None = None) -> list[Metric]:
    """The per-store families of every store, merged family by family (``only``: one)."""
    merged = [Metric(name, doc, kind) for name, doc, kind in STORE_FAMILIES]
    for view in stores:
        for i, family in enumerate(store_families(view)):
            if only is None or i == only:
                merged[i].samples.extend(family.samples)
    return merged if only is None else [merged[only]]


def global_families(view: ExporterView) -> list[Metric]:
    """The exporter-wide gauges; the state-file and web-config ones only when configured."""
    (reload_ok, reload_ts, build, invalid, state_ok, web_ok, shard, stores) = [
        GaugeMetricFamily(name, doc) for name, doc in GLOBAL_GAUGES
    ]
    reload_ok.add_sample(reload_ok.name, {}, 1.0 if view.reload.successful else 0.0)
    reload_ts.add_sample(reload_ts.name, {}, number(view.reload.last_success))
    build.add_sample(build.name, build_labels(label_value(view.version)), 1.0)
    invalid.add_sample(invalid.name, {}, number(view.store_files_invalid))
    shard_labels = {
        "shard": label_value(view.shard),
        "total_shards": label_value(view.total_shards),
    }
    shard.add_sample(shard.name, shard_labels, 1.0)
    stores.add_sample(stores.name, {"owned": "true"}, number(view.stores_owned))
    stores.add_sample(stores.name, {"owned": "false"}, number(view.stores_other))
    families = [reload_ok, reload_ts, build, invalid]
    for family, ok in ((state_ok, view.state_file_ok), (web_ok, view.web_config_ok)):
        if ok is not None:
            family.add_sample(family.name, {}, 1.0 if ok else 0.0)
            families.append(family)
    counters = []
    for (name, doc, labels), counts in zip(GLOBAL_COUNTERS, (view.task_api_requests,), strict=True):
        counter = CounterMetricFamily(name, doc, labels=labels)
        for key, count in counts:
            counter.add_metric(tuple(label_value(k) for k in key), number(count))
        counters.append(counter)
    return [*families, shard, stores, *counters]


def described() -> list[Metric]:
    """Every family this module can yield, without samples (for ``describe()``)."""
    return [
        *(GaugeMetricFamily(name, doc) for name, doc in TASK_GAUGES),
        *(Metric(name, doc, kind) for name, doc, kind in STORE_FAMILIES),
        *(GaugeMetricFamily(name, doc) for name, doc in GLOBAL_GAUGES),
        *(CounterMetricFamily(name, doc) for name, doc, _ in GLOBAL_COUNTERS),
    ]


class FamilyCollector(Collector):
    """One metric family, for a registry that serves ``name[]`` filters.

    prometheus_client's ``restricted_registry`` asks only the collectors whose
    ``describe()`` names a wanted metric: with one collector per family a filter builds the
    families it shows, not 140,000 samples of a fleet (docs/design.md, "Exposition").
    """

    def __init__(self, views: Callable[[], ExporterView | None], index: int) -> None:
        self._views = views
        self._index = index
        self._family = described()[index]

    def describe(self) -> Iterable[Metric]:
        """This family by name only."""
        return [self._family]

    def collect(self) -> Iterator[Metric]:
        """This family from a view of memory."""
        view = self._views()
        if view is None:
            return
        index, tasks, stores = self._index, len(TASK_GAUGES), len(STORE_FAMILIES)
        if index < tasks:
            yield from task_families(view.stores, only=index)
        elif index < tasks + stores:
            yield from all_store_families(view.stores, only=index - tasks)
        else:
            yield from (f for f in global_families(view) if f.name == self._family.name)


def family_collectors(views: Callable[[], ExporterView | None]) -> list[FamilyCollector]:
    """One collector per family, in exposition order."""
    return [FamilyCollector(views, i) for i in range(len(described()))]
