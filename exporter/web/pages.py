"""The status pages' values as text, and the JSON of ``/api/v1/tasks``, from memory.

Each task has exactly one state (:func:`~exporter.web.states.classify`, docs/design.md
"Status pages"); the pages give each state its own look and the JSON carries it as
``"state"``. Nothing here may raise on a stored value: huge integers, non-finite times and
control characters from the API are all rendered as text, never as an error. The HTML
lives in :mod:`exporter.web.html` (the listing) and :mod:`exporter.web.taskpage` (one task).
"""

from __future__ import annotations

import json
from typing import Any, cast

from exporter.model import TASK_FIELDS, ExporterView, StoreView, TaskRecord, TaskSnapshot
from exporter.web.html import listing_page
from exporter.web.listing import Listing, Page
from exporter.web.query import DEFAULT_HTML_LIMIT, DEFAULT_JSON_LIMIT, Query
from exporter.web.states import (
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    FAILING,
    IN_PROGRESS,
    NOT_POLLED,
    PROBLEMS_FIRST,
    STATES,
    STUCK,
    UNKNOWN_STATUS,
    age_seconds,
    classify,
    finite,
)
from exporter.web.text import format_age, json_int, progress, ratio, visible

__all__ = [
    "COMPLETED",
    "COMPLETED_WITH_FAILURES",
    "FAILING",
    "IN_PROGRESS",
    "NOT_POLLED",
    "PROBLEMS_FIRST",
    "STATES",
    "STUCK",
    "UNKNOWN_STATUS",
    "classify",
    "format_age",
    "ratio",
    "render_html",
    "render_json",
    "task_json",
    "visible",
]

# --- JSON -----------------------------------------------------------------------------


def _json_value(kind: str, value: Any) -> Any:
    """A declared field's value in the JSON (exporter/model.py, ``TASK_FIELDS``)."""
    if kind == "count":
        return json_int(value)
    if kind == "time":
        return finite(value)
    if kind == "text":
        return value or None
    if kind == "failures":
        return [{"origin_link": f.origin_link, "reason": f.reason} for f in value]
    if kind == "labels":
        return dict(value)
    return value  # flag, code


_SNAPSHOT_JSON = tuple(f for f in TASK_FIELDS if f.on_snapshot and f.spec.json)
_TASK_JSON = tuple(f for f in TASK_FIELDS if not f.on_snapshot and f.spec.json)


def _snapshot_json(task: TaskRecord, snap: TaskSnapshot) -> dict[str, Any]:
    data = {cast(str, f.spec.json): _json_value(f.spec.kind, f.get(task)) for f in _SNAPSHOT_JSON}
    data["completed"] = snap.completed
    data["progress_ratio"] = progress(snap)
    return data


def task_json(
    task: TaskRecord, store: str, stuck_after: float, now: float, state: str | None = None
) -> dict[str, Any]:
    """One task as the JSON shows it, here and in the task API's answers (``state``: when
    the caller knows it already)."""
    item: dict[str, Any] = {
        "store": store,
        "task_id": task.task_id,
        "state": state or classify(task, stuck_after, now),
    }
    for spec_field in _TASK_JSON:
        item[cast(str, spec_field.spec.json)] = _json_value(
            spec_field.spec.kind, spec_field.get(task)
        )
    item["last_progress_age_seconds"] = age_seconds(task.last_progress, now)
    item["data_age_seconds"] = age_seconds(task.last_success, now)
    item["data"] = None if task.snapshot is None else _snapshot_json(task, task.snapshot)
    return item


def _as_page(view: ExporterView | Page, limit: int) -> Page:
    """A view alone is shown as the first page of an unfiltered listing."""
    if isinstance(view, Page):
        return view
    return Listing().page(lambda: view, Query(limit=limit))


def render_json(source: ExporterView | Page) -> str:
    """One page of tasks, problems first, each with its state, data, errors and failed files.

    ``stores`` holds the stores of the page's tasks (their ``stuck_after_seconds``),
    ``counts`` the tasks per state of the stores the query selects, ``next`` the cursor of
    the next page (null on the last one).
    """
    page = _as_page(source, DEFAULT_JSON_LIMIT)
    view = page.fleet.view
    now = view.now
    stores: dict[str, StoreView] = {}
    tasks = []
    for row in page.rows:
        store = row.index.view
        stores.setdefault(store.name, store)
        tasks.append(task_json(row.task, store.name, store.stuck_after, now, row.state))
    selected = page.fleet.stores
    if page.query.store is not None:
        one = page.fleet.store(page.query.store)
        selected = (one,) if one is not None else ()
    counts = {
        state: sum(index.count(rank) for index in selected)
        for rank, state in enumerate(PROBLEMS_FIRST)
    }
    return json.dumps(
        {
            "version": view.version,
            "generated_timestamp": finite(now),
            "shard": view.shard,
            "total_shards": view.total_shards,
            "counts": counts,
            "stores": [
                {"store": s.name, "stuck_after_seconds": finite(s.stuck_after)}
                for s in stores.values()
            ],
            "tasks": tasks,
            "next": page.next,
        },
        separators=(",", ":"),
    )


def render_html(
    source: ExporterView | Page, dashboard_url: str | None = None, metrics_href: str = "metrics"
) -> str:
    """The status page: summary, filters, then one page of tasks, problems first. Its links
    are relative, so they work under any ``--web.external-url`` path (``metrics_href``:
    the link to ``--web.telemetry-path``)."""
    return listing_page(_as_page(source, DEFAULT_HTML_LIMIT), dashboard_url, metrics_href)
