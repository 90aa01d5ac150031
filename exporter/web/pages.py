"""The status page ``/`` and its JSON twin ``/api/v1/tasks``, rendered from memory.

Each task has exactly one state (:func:`classify`, docs/design.md "Status pages"); the
page gives each state its own look and the JSON carries it as ``"state"``. Nothing here
may raise on a stored value: huge integers, non-finite times and control characters from
the API are all rendered as text, never as an error.
"""

from __future__ import annotations

import json
import math
import unicodedata
from html import escape
from typing import Any, cast

from exporter.model import TASK_FIELDS, ExporterView, StoreView, TaskRecord, TaskSnapshot

HTML_FAILURES_PER_TASK = 20
FAILURES_SHOWN_OPEN = 5
PAGE_REFRESH_SECONDS = 30

NOT_POLLED = "not_polled"
IN_PROGRESS = "in_progress"
STUCK = "stuck"
COMPLETED = "completed"
COMPLETED_WITH_FAILURES = "completed_with_failures"
FAILING = "failing"
UNKNOWN_STATUS = "unknown_status"
STATES = (
    NOT_POLLED,
    IN_PROGRESS,
    STUCK,
    COMPLETED,
    COMPLETED_WITH_FAILURES,
    FAILING,
    UNKNOWN_STATUS,
)

# Integers beyond this many bits are shown as an order of magnitude, never converted to
# float or to a decimal string of thousands of digits (both can raise).
_MAX_EXACT_BITS = 64


def classify(task: TaskRecord, stuck_after: float, now: float) -> str:
    """The one state of a task; ``failing`` wins when several apply."""
    if not task.poll_success and task.last_code is not None:
        return FAILING
    snap = task.snapshot
    if snap is None:
        return NOT_POLLED
    if snap.status == 0:
        return COMPLETED_WITH_FAILURES if snap.failed > 0 else COMPLETED
    if snap.status != 1:
        return UNKNOWN_STATUS
    age = _age_seconds(task.last_progress, now)
    if age is not None and age >= stuck_after:
        return STUCK
    return IN_PROGRESS


def _finite(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value


def _age_seconds(since: float | None, now: float) -> float | None:
    since = _finite(since)
    if since is None or not math.isfinite(now):
        return None
    return max(now - since, 0.0)


def ratio(part: int, whole: int) -> float:
    """``part/whole`` between 0 and 1, whatever the sizes (no OverflowError)."""
    if whole <= 0 or part <= 0:
        return 0.0
    if part >= whole:
        return 1.0
    shift = max(whole.bit_length() - 60, 0)  # both fit a float after the same shift
    return (part >> shift) / max(whole >> shift, 1)


def _json_int(value: int) -> int | str:
    return value if value.bit_length() <= _MAX_EXACT_BITS else _int_text(value)


def _int_text(value: int) -> str:
    if value.bit_length() <= _MAX_EXACT_BITS:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}~10^{math.floor(math.log10(abs(value)))}"


def visible(text: str) -> str:
    """``text`` with control, format and surrogate characters written as ``\\uXXXX``."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " " or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
        elif ord(char) > 0xFFFF:
            out.append(f"\\U{ord(char):08x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _e(text: str) -> str:
    return escape(visible(text))


def format_age(seconds: float | None) -> str:
    """A short age such as ``45s``, ``3m 20s``, ``2h 5m`` or ``4d 1h``; ``never`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "never"
    total = int(max(seconds, 0.0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


# --- JSON -----------------------------------------------------------------------------


def _json_value(kind: str, value: Any) -> Any:
    """A declared field's value in the JSON (exporter/model.py, ``TASK_FIELDS``)."""
    if kind == "count":
        return _json_int(value)
    if kind == "time":
        return _finite(value)
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
    data["progress_ratio"] = (
        ratio(snap.finished, snap.total) if snap.total else float(snap.completed)
    )
    return data


def _task_json(task: TaskRecord, store: StoreView, now: float) -> dict[str, Any]:
    item: dict[str, Any] = {
        "task_id": task.task_id,
        "state": classify(task, store.stuck_after, now),
    }
    for spec_field in _TASK_JSON:
        item[cast(str, spec_field.spec.json)] = _json_value(
            spec_field.spec.kind, spec_field.get(task)
        )
    item["last_progress_age_seconds"] = _age_seconds(task.last_progress, now)
    item["data_age_seconds"] = _age_seconds(task.last_success, now)
    item["data"] = None if task.snapshot is None else _snapshot_json(task, task.snapshot)
    return item


def render_json(view: ExporterView) -> str:
    """Per store and task: state, last known data, last error code, failed files."""
    now = view.now
    return json.dumps(
        {
            "version": view.version,
            "generated_timestamp": _finite(now),
            "shard": view.shard,
            "total_shards": view.total_shards,
            "stores": [
                {
                    "store": store.name,
                    "stuck_after_seconds": _finite(store.stuck_after),
                    "tasks": [_task_json(task, store, now) for task in store.tasks],
                }
                for store in view.stores
            ],
        },
        indent=1,
    )


# --- HTML -----------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
td{white-space:nowrap}td.wrap{white-space:normal;min-width:16em}summary{cursor:pointer}
th{background:#f4f4f4}.muted{color:#777}ul{margin:0;padding-left:1.2em}code{font-size:90%}
.bar{background:#e0e0e0;width:8em;height:.9em;display:inline-flex;vertical-align:middle}
.bar span{height:100%;display:block}.ok-seg{background:#2e7d32}.fail-seg{background:#c62828}
.grey-seg{background:#9e9e9e}.failed{color:#c62828;font-weight:600}
.state{display:inline-block;padding:.1em .5em;border-radius:.8em;color:#fff;white-space:nowrap}
.s-not_polled{background:#9e9e9e}.s-in_progress{background:#1565c0}
.s-stuck{background:#ef8f00;color:#222}.s-completed{background:#2e7d32}
.s-completed_with_failures{background:#6a1b9a}.s-failing{background:#c62828}
.s-unknown_status{background:#5d4037}
tr.r-failing td{background:#fdecea}tr.r-stuck td{background:#fff4e0}
.label{display:inline-block;background:#eef;border-radius:.3em;padding:0 .3em;margin:.1em}
"""

_STATE_TEXT = {
    NOT_POLLED: "not polled yet",
    IN_PROGRESS: "in progress",
    STUCK: "stuck",
    COMPLETED: "completed",
    COMPLETED_WITH_FAILURES: "completed with failures",
    FAILING: "failing",
    UNKNOWN_STATUS: "unknown status",
}


def _bar(snap: TaskSnapshot) -> str:
    """Succeeded files green, failed files red, the rest of ``finished`` grey."""
    if snap.total <= 0:
        done = 1.0 if snap.completed else 0.0
        return (
            f'<span class="bar"><span class="ok-seg" style="width:{done * 100:.1f}%"></span></span>'
        )
    failed = ratio(min(snap.failed, snap.finished), snap.total)
    finished = ratio(snap.finished, snap.total)
    ok = ratio(min(snap.succeeded, snap.finished), snap.total)
    ok = min(ok, max(finished - failed, 0.0))
    other = max(finished - failed - ok, 0.0)
    segments = [
        ("ok-seg", ok, "succeeded"),
        ("fail-seg", failed, "failed"),
        ("grey-seg", other, ""),
    ]
    spans = "".join(
        f'<span class="{cls}" style="width:{part * 100:.1f}%" title="{title}"></span>'
        for cls, part, title in segments
        if part > 0
    )
    return f'<span class="bar">{spans}</span>'


def _status_text(snap: TaskSnapshot) -> str:
    if snap.status == 0:
        return "0 (completed)"
    if snap.status == 1:
        return "1 (in progress)"
    return f"unknown status {_int_text(snap.status)}"


def _failures(snap: TaskSnapshot) -> str:
    shown = snap.failures[:HTML_FAILURES_PER_TASK]
    items = "".join(f"<li><code>{_e(f.origin_link)}</code> {_e(f.reason)}</li>" for f in shown)
    more = snap.failed - len(shown)
    if more > 0:
        items += f'<li class="muted">and {_int_text(more)} more</li>'
    if not items:
        return ""
    # A few are shown at once; a long list is one click away, so rows stay readable.
    opened = " open" if snap.failed <= FAILURES_SHOWN_OPEN else ""
    summary = f'<summary class="failed">{_int_text(snap.failed)} failed files</summary>'
    return f"<details{opened}>{summary}<ul>{items}</ul></details>"


def _task_row(task: TaskRecord, store: StoreView, now: float) -> str:
    state = classify(task, store.stuck_after, now)
    text = _STATE_TEXT[state]
    snap = task.snapshot
    if state == UNKNOWN_STATUS and snap is not None:
        text = f"unknown status {_int_text(snap.status)}"
    if state == FAILING:
        text = f"failing ({_e(task.last_code or '')})"
    labels = "".join(f'<span class="label">{_e(k)}={_e(v)}</span>' for k, v in task.labels)
    ident = f"<code>{_e(task.task_id)}</code>" + (f"<br>{labels}" if labels else "")
    if snap is None:
        cells = '<td colspan="4" class="muted">no data yet</td>'
        failures = ""
    else:
        pct = (ratio(snap.finished, snap.total) if snap.total else float(snap.completed)) * 100
        failed_cls = ' class="failed"' if snap.failed else ""
        cells = (
            f"<td>{_bar(snap)} {pct:.1f}%</td>"
            f"<td>{_int_text(snap.finished)}/{_int_text(snap.total)}</td>"
            f"<td{failed_cls}>{_int_text(snap.failed)}</td>"
            f"<td>{_status_text(snap)}{_eta(task.estimated_completion, now)}</td>"
        )
        failures = _failures(snap)
    progress_age = _age_seconds(task.last_progress, now)
    data_age = _age_seconds(task.last_success, now)
    last_error = _e(task.last_error_code or "")
    if task.last_error:
        last_error += f'<br><span class="muted">{_e(task.last_error[:200])}</span>'
    return (
        f'<tr class="r-{state}"><td>{ident}</td>'
        f'<td><span class="state s-{state}">{text}</span></td>{cells}'
        f"<td>{_ago(progress_age)}</td><td>{_ago(data_age)}</td>"
        f'<td class="wrap">{last_error}{failures}</td></tr>'
    )


def _eta(when: float | None, now: float) -> str:
    """The estimated completion as a line under the status ("" without an estimate)."""
    when = _finite(when)
    if when is None:
        return ""
    left = when - now
    text = f"in {format_age(left)}" if left >= 0 else f"{format_age(-left)} overdue"
    return f'<br><span class="muted">ETA {text}</span>'


def _ago(seconds: float | None) -> str:
    return "never" if seconds is None else format_age(seconds) + " ago"


def _shard_text(view: ExporterView) -> str:
    if view.total_shards <= 1:
        return "Shard 0 of 1 (this process serves every store)"
    return (
        f"Shard {view.shard} of {view.total_shards} (shards 0..{view.total_shards - 1}): "
        f"{view.stores_owned} stores here, {view.stores_other} on other shards"
    )


def render_html(view: ExporterView) -> str:
    """A page a person reads at a glance: one table per store, one row per task."""
    now = view.now
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{PAGE_REFRESH_SECONDS}'>",
        "<title>Shoplazza upload exporter</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Shoplazza upload exporter</h1>",
        f"<p>Version {_e(view.version)} &middot; <a href='metrics'>Metrics</a> &middot; ",
        "<a href='api/v1/tasks'>Tasks as JSON</a> &middot; <a href='-/healthy'>Health</a></p>",
        f"<p class='shard'>{_e(_shard_text(view))} &middot; ",
        f"<span class='muted'>refreshes every {PAGE_REFRESH_SECONDS} s</span></p>",
    ]
    if not view.stores:
        parts.append("<p class='muted'>No stores on this shard.</p>")
    for store in view.stores:
        parts.append(f"<h2>Store {_e(store.name)} ({len(store.tasks)} tasks)</h2>")
        if not store.tasks:
            parts.append("<p class='muted'>No tasks watched.</p>")
            continue
        parts.append(
            "<table><tr><th>Task</th><th>State</th><th>Progress</th><th>Finished/total</th>"
            "<th>Failed</th><th>Status</th><th>Last progress</th><th>Data age</th>"
            "<th>Last error, failed files</th></tr>"
        )
        parts.extend(_task_row(task, store, now) for task in store.tasks)
        parts.append("</table>")
    stuck = sorted({format_age(store.stuck_after) for store in view.stores})
    parts.append(
        "<p class='muted'>Stuck: in progress with no progress for "
        f"{_e(', '.join(stuck) or format_age(900))} (the store's stuck_after). "
        "Failed files are shown in red in the bar and the Failed column.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)
