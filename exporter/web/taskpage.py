"""``GET /tasks/{store}/{task_id}``: one task's whole story, every kept failed file included."""

from __future__ import annotations

import time
from html import escape
from urllib.parse import urlencode

from exporter.model import MAX_KEPT_FAILURES, ExporterView, StoreView, TaskRecord
from exporter.web.html import (
    PAGE_REFRESH_SECONDS,
    ago,
    badge,
    bar,
    dashboard_href,
    esc,
    head,
    labels_html,
    status_text,
)
from exporter.web.states import age_seconds, finite
from exporter.web.text import eta, format_age, int_text, progress

#: Links from the task page back to the others (it is two levels below the base).
ROOT = "../../"


def _when(stamp: float | None, now: float) -> str:
    stamp = finite(stamp)
    if stamp is None:
        return "never"
    try:
        utc = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))
    except (OverflowError, OSError, ValueError):
        utc = "far away"
    return f"{ago(age_seconds(stamp, now))} <span class='muted'>({utc})</span>"


def task_page(
    view: ExporterView,
    store: StoreView,
    task: TaskRecord,
    state: str,
    dashboard_url: str | None,
) -> str:
    """The page of one task: its state, data, times, last error and every kept failed file."""
    now = view.now
    snap = task.snapshot
    store_link = escape(f"{ROOT}?{urlencode({'store': store.name})}")
    facts = [
        ("Store", f"<a href='{store_link}'>{esc(store.name)}</a>"),
        ("Task id", f"<code>{esc(task.task_id)}</code>"),
        ("State", badge(state, task) + eta(task.estimated_completion, now)),
        ("Watched through", esc(task.source)),
    ]
    if task.labels:
        facts.append(("Labels", labels_html(task)))
    if snap is None:
        facts.append(("Data", "<span class='muted'>no data yet</span>"))
    else:
        failed_cls = "failed" if snap.failed else ""
        facts += [
            ("Progress", f"{bar(snap)} {progress(snap) * 100:.1f}%"),
            ("Finished / total", f"{int_text(snap.finished)} / {int_text(snap.total)}"),
            ("Succeeded", int_text(snap.succeeded)),
            ("Failed", f"<span class='{failed_cls}'>{int_text(snap.failed)}</span>"),
            ("Status", status_text(snap)),
        ]
    facts += [
        ("Last progress", _when(task.last_progress, now)),
        ("Last successful poll", _when(task.last_success, now)),
    ]
    if task.completed_at is not None:
        facts.append(("Completed", _when(task.completed_at, now)))
    polled = "succeeded" if task.poll_success else "failed" if task.last_code else "not yet"
    facts.append(("Last poll", polled))
    if task.last_error_code or task.last_error:
        error = esc(task.last_error_code or "")
        if task.last_error:
            error += f" <span class='muted'>{esc(task.last_error)}</span>"
        facts.append(("Last error", error))
    facts.append(("Stuck after", f"{format_age(store.stuck_after)} without progress"))
    if dashboard_url:
        link = escape(dashboard_href(dashboard_url, store.name, task.task_id))
        facts.append(("Dashboard", f"<a href='{link}'>this task in Grafana</a>"))
    parts = [
        head(f"Task {task.task_id} of {store.name}"),
        f"<p><a href='{ROOT}'>&larr; All tasks</a> &middot; <a href='{store_link}'>"
        f"Store {esc(store.name)}</a> &middot; <span class='muted'>refreshes every "
        f"{PAGE_REFRESH_SECONDS} s</span></p>",
        f"<h1>Task <code>{esc(task.task_id)}</code></h1>",
        "<dl class='facts'>",
        *(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts),
        "</dl>",
    ]
    if snap is not None and (snap.failures or snap.failed):
        kept = len(snap.failures)
        parts.append(f"<h2 class='failed'>{int_text(snap.failed)} failed files</h2>")
        if snap.failed > kept:
            parts.append(
                f"<p class='muted'>The API reported {int_text(snap.failed)}; the exporter keeps "
                f"the first {MAX_KEPT_FAILURES:,}, all {kept:,} of them shown here.</p>"
            )
        parts.append("<table><tr><th class='num'>#</th><th>File</th><th>Reason</th></tr>")
        parts.extend(
            f"<tr><td class='num muted'>{i}</td><td class='wrap'><code>{esc(f.origin_link)}</code>"
            f"</td><td class='wrap'>{esc(f.reason)}</td></tr>"
            for i, f in enumerate(snap.failures, 1)
        )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def not_found_page(store: str, task_id: str) -> str:
    """The 404 of a task page: what was asked, and the way back."""
    return (
        head("Task not found", refresh=False)
        + f"<p><a href='{ROOT}'>&larr; All tasks</a></p><h1>Task not found</h1>"
        f"<p>No task <code>{esc(task_id)}</code> is watched in store <code>{esc(store)}</code>"
        " on this shard.</p></body></html>"
    )
