"""The status page ``/`` and its JSON twin ``/api/v1/tasks``, rendered from memory."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from exporter.config import format_duration
from exporter.model import ExporterView, TaskState

HTML_FAILURES_PER_TASK = 20


def _task_json(task: TaskState, now: float) -> dict[str, Any]:
    snap = task.snapshot
    data: dict[str, Any] = {
        "task_id": task.task_id,
        "poll_success": task.poll_success,
        "last_code": task.last_code,
        "last_error_code": task.last_error_code,
        "last_error": task.last_error or None,
        "last_success_timestamp": task.last_success,
        "last_progress_timestamp": task.last_progress,
        "data_age_seconds": None if task.last_success is None else max(now - task.last_success, 0),
        "completed_timestamp": task.completed_at,
        "data": None,
    }
    if snap is not None:
        data["data"] = {
            "total": snap.total,
            "finished": snap.finished,
            "succeeded": snap.succeeded,
            "failed": snap.failed,
            "status": snap.status,
            "completed": snap.completed,
            "progress_ratio": snap.progress_ratio,
            "failed_files": [
                {"origin_link": f.origin_link, "reason": f.reason} for f in snap.failures
            ],
        }
    return data


def render_json(view: ExporterView) -> str:
    """Per store and task: last known data, last error code, failed files."""
    views, version, now = view.stores, view.version, view.now
    return json.dumps(
        {
            "version": version,
            "generated_timestamp": now,
            "stores": [
                {"store": v.name, "tasks": [_task_json(t, now) for t in v.tasks]} for v in views
            ],
        },
        indent=1,
    )


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.bar{background:#eee;width:10em;height:.9em;display:inline-block}
.fill{background:#2e7d32;height:100%}.err{color:#b71c1c}.ok{color:#2e7d32}
.muted{color:#777}ul{margin:0;padding-left:1.2em}code{font-size:90%}
"""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return format_duration(round(max(seconds, 0.0))) + " ago"


def _task_row(task: TaskState, now: float) -> str:
    e = escape
    snap = task.snapshot
    poll = (
        '<span class="ok">ok</span>'
        if task.poll_success
        else f'<span class="err">failing ({e(task.last_code or "not polled yet")})</span>'
    )
    last_error = e(task.last_error_code or "")
    if snap is None:
        cells = '<td colspan="4" class="muted">no data yet</td>'
        failures = ""
    else:
        pct = snap.progress_ratio * 100
        status = "completed" if snap.completed else "in progress" if snap.status == 1 else ""
        cells = (
            f'<td><span class="bar"><span class="fill" style="width:{pct:.1f}%;display:block">'
            f"</span></span> {pct:.1f}%</td>"
            f"<td>{snap.finished}/{snap.total}</td>"
            f'<td class="{"err" if snap.failed else ""}">{snap.failed}</td>'
            f"<td>{snap.status} {e(status)}</td>"
        )
        shown = snap.failures[:HTML_FAILURES_PER_TASK]
        items = "".join(f"<li><code>{e(f.origin_link)}</code> {e(f.reason)}</li>" for f in shown)
        more = snap.failed - len(shown)
        if more > 0:
            items += f'<li class="muted">and {more} more</li>'
        failures = f"<ul>{items}</ul>" if items else ""
    age = None if task.last_success is None else now - task.last_success
    return (
        f"<tr><td><code>{e(task.task_id)}</code></td>{cells}<td>{_age(age)}</td>"
        f"<td>{poll}</td><td>{last_error}</td><td>{failures}</td></tr>"
    )


def render_html(view: ExporterView) -> str:
    """A page a person reads at a glance: one table per store, one row per task."""
    views, version, now = view.stores, view.version, view.now
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<title>Shoplazza upload exporter</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Shoplazza upload exporter</h1>",
        f"<p>Version {escape(version)} &middot; <a href='metrics'>Metrics</a> &middot; ",
        "<a href='api/v1/tasks'>Tasks as JSON</a> &middot; <a href='-/healthy'>Health</a></p>",
    ]
    if not views:
        parts.append("<p class='muted'>No stores configured.</p>")
    for sv in views:
        parts.append(f"<h2>Store {escape(sv.name)} ({len(sv.tasks)} tasks)</h2>")
        if not sv.tasks:
            parts.append("<p class='muted'>No tasks watched.</p>")
            continue
        parts.append(
            "<table><tr><th>Task</th><th>Progress</th><th>Finished/total</th><th>Failed</th>"
            "<th>Status</th><th>Data age</th><th>Last poll</th><th>Last error</th>"
            "<th>Failed files</th></tr>"
        )
        parts.extend(_task_row(task, now) for task in sv.tasks)
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
