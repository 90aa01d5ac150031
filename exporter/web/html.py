"""The status page's HTML: summary per store and state, filters, one page of task rows.

Plain HTML and CSS, no script: every link and the filter form work without JavaScript.
Every string from the API or the configuration goes through :func:`esc` (control
characters made visible, then HTML-escaped); links are built from URL-quoted parts.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlencode

from exporter.model import TaskRecord, TaskSnapshot
from exporter.web.index import StoreIndex
from exporter.web.listing import Page, Row
from exporter.web.query import DEFAULT_HTML_LIMIT
from exporter.web.states import (
    FAILING,
    PROBLEMS,
    PROBLEMS_FIRST,
    UNKNOWN_STATUS,
    age_seconds,
)
from exporter.web.text import eta, format_age, int_text, progress, ratio, visible

PAGE_REFRESH_SECONDS = 30
#: Failed files a row shows; the task's own page shows every kept one.
ROW_FAILURES = 3
#: Stores with problems the summary lists one by one; the rest are a count.
SUMMARY_STORES = 50

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em 1.5em;color:#222}
h1{margin:.2em 0 .3em}h2{margin:1.2em 0 .4em;font-size:1.25em}
a{color:#0b57a4}table{border-collapse:collapse;margin-bottom:1em}
th,td{border-bottom:1px solid #ddd;padding:.3em .55em;text-align:left;vertical-align:top}
td{white-space:nowrap}td.wrap{white-space:normal;min-width:16em;max-width:40em}
td.id{white-space:normal;min-width:15em}
table.tasks{width:100%}summary{cursor:pointer}
th{background:#f4f4f4}.muted{color:#777}ul{margin:0;padding-left:1.2em}code{font-size:.92em;font-family:ui-monospace,Menlo,Consolas,monospace}
.num{text-align:right;font-variant-numeric:tabular-nums}.z{color:#bbb}
.bar{background:#e0e0e0;width:8em;height:.9em;display:inline-flex;vertical-align:middle}
.bar span{height:100%;display:block}.ok-seg{background:#2e7d32}.fail-seg{background:#c62828}
.grey-seg{background:#9e9e9e}.failed{color:#c62828;font-weight:600}
.state{display:inline-block;padding:.1em .5em;border-radius:.8em;color:#fff;white-space:nowrap}
.s-not_polled{background:#9e9e9e}.s-in_progress{background:#1565c0}
.s-stuck{background:#ef8f00;color:#222}.s-completed{background:#2e7d32}
.s-completed_with_failures{background:#6a1b9a}.s-failing{background:#c62828}
.s-unknown_status{background:#5d4037}
tr.r-failing td{background:#fdecea}tr.r-stuck td{background:#fff4e0}
tr.g th{background:#fff;border-bottom:2px solid #bbb;padding-top:.9em}
.label{display:inline-block;background:#eef;border-radius:.3em;padding:0 .3em;margin:.1em}
table.summary td.n a{font-weight:600;text-decoration:none}
table.summary tr.all td{border-bottom:2px solid #bbb;font-weight:600}
table.summary tr.rest td{color:#555}table.summary tr td.z{color:#bbb}
table.summary th.st{text-align:right}
form.filters{background:#f7f7f7;border:1px solid #ddd;padding:.5em .7em;margin:.5em 0 1em}
form.filters label{margin-right:1em;white-space:nowrap}form.filters input[type=text]{width:12em}
form.filters .states label{margin-right:.4em}.nav{margin:.6em 0}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.3em 1.2em;margin:.5em 0}
dl.facts dt{color:#555}dl.facts dd{margin:0}
"""

STATE_TEXT = {
    "not_polled": "not polled yet",
    "in_progress": "in progress",
    "stuck": "stuck",
    "completed": "completed",
    "completed_with_failures": "completed with failures",
    "failing": "failing",
    "unknown_status": "unknown status",
}


def esc(text: str) -> str:
    """``text`` made visible and HTML-escaped (for element text and quoted attributes)."""
    return escape(visible(text))


def head(title: str, refresh: bool = True) -> str:
    """The document's start: charset, refresh, title, style."""
    meta = f"<meta http-equiv='refresh' content='{PAGE_REFRESH_SECONDS}'>" if refresh else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"{meta}<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
    )


def task_href(root: str, store: str, task_id: str) -> str:
    """The link to a task's own page, relative to ``root`` (the exporter's base)."""
    return f"{root}tasks/{quote(store, safe='')}/{quote(task_id, safe='')}"


def dashboard_href(template: str, store: str, task_id: str) -> str:
    """The Grafana link of a task: ``{store}``/``{task_id}`` in ``template`` replaced, or
    ``var-store``/``var-task_id`` added to its query (docs/design.md, "Status pages")."""
    if "{store}" in template or "{task_id}" in template:
        return template.replace("{store}", quote(store, safe="")).replace(
            "{task_id}", quote(task_id, safe="")
        )
    joiner = "&" if "?" in template else "?"
    return template + joiner + urlencode({"var-store": store, "var-task_id": task_id})


def badge(state: str, task: TaskRecord) -> str:
    """The state's coloured words; failing names the code, unknown status the number."""
    text = STATE_TEXT[state]
    if state == UNKNOWN_STATUS and task.snapshot is not None:
        text = f"unknown status {int_text(task.snapshot.status)}"
    if state == FAILING:
        text = f"failing ({esc(task.last_code or '')})"
    return f'<span class="state s-{state}">{text}</span>'


def bar(snap: TaskSnapshot) -> str:
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


def status_text(snap: TaskSnapshot) -> str:
    """The raw status with its meaning."""
    if snap.status == 0:
        return "0 (completed)"
    if snap.status == 1:
        return "1 (in progress)"
    return f"unknown status {int_text(snap.status)}"


def labels_html(task: TaskRecord) -> str:
    """The task's context labels as small tags."""
    return "".join(f'<span class="label">{esc(k)}={esc(v)}</span>' for k, v in task.labels)


def ago(seconds: float | None) -> str:
    """``3m 20s ago``, or ``never``."""
    return "never" if seconds is None else format_age(seconds) + " ago"


def _row_failures(snap: TaskSnapshot, href: str) -> str:
    shown = snap.failures[:ROW_FAILURES]
    if not shown and snap.failed <= 0:
        return ""
    items = "".join(f"<li><code>{esc(f.origin_link)}</code> {esc(f.reason)}</li>" for f in shown)
    if snap.failed > len(shown):
        more = int_text(snap.failed - len(shown))
        link = f'<a href="{href}">all on the task page</a>'
        items += f'<li class="muted">and {more} more: {link}</li>'
    opened = " open" if snap.failed <= ROW_FAILURES else ""
    summary = f'<summary class="failed">{int_text(snap.failed)} failed files</summary>'
    return f"<details{opened}>{summary}<ul>{items}</ul></details>"


def task_row(row: Row, now: float) -> str:
    """One task of the listing as a table row (the status in words is in its state; the
    task's page has the rest, its Grafana link included)."""
    task, state, store = row.task, row.state, row.index.name
    href = escape(task_href("", store, task.task_id))
    labels = labels_html(task)
    ident = f'<a href="{href}"><code>{esc(task.task_id)}</code></a>'
    ident += f" <span class='muted'>{esc(task.source)}</span>"
    if labels:
        ident += f"<br>{labels}"
    snap = task.snapshot
    if snap is None:
        cells = '<td colspan="3" class="muted">no data yet</td>'
        failures = ""
    else:
        failed_cls = ' class="failed"' if snap.failed else ""
        cells = (
            f"<td>{bar(snap)} {progress(snap) * 100:.1f}%</td>"
            f'<td class="num">{int_text(snap.finished)}/{int_text(snap.total)}</td>'
            f"<td{failed_cls}>{int_text(snap.failed)}</td>"
        )
        failures = _row_failures(snap, href)
    last_error = esc(task.last_error_code or "")
    if task.last_error:
        last_error += f'<br><span class="muted">{esc(task.last_error[:200])}</span>'
    return (
        f'<tr class="r-{state}"><td>{esc(store)}</td><td class="id">{ident}</td>'
        f"<td>{badge(state, task)}{eta(task.estimated_completion, now)}</td>{cells}"
        f"<td>{ago(age_seconds(task.last_progress, now))}</td>"
        f"<td>{ago(age_seconds(task.last_success, now))}</td>"
        f'<td class="wrap">{last_error}{failures}</td></tr>'
    )


def _count_cell(count: int, params: dict[str, str] | None) -> str:
    if count == 0:
        return '<td class="num z">0</td>'
    text = f"{count:,}"
    if params is None:
        return f'<td class="num">{text}</td>'
    return f'<td class="num n"><a href="?{escape(urlencode(params))}">{text}</a></td>'


def summary(page: Page) -> str:
    """Tasks per state per store: all stores, then stores with problems, the rest counted."""
    fleet = page.fleet
    problem_ranks = [r for r, s in enumerate(PROBLEMS_FIRST) if s in PROBLEMS]
    heads = "".join(
        f'<th class="st"><span class="state s-{s}">{STATE_TEXT[s]}</span></th>'
        for s in PROBLEMS_FIRST
    )
    out = [f'<table class="summary"><tr><th>Store</th>{heads}<th class="st">total</th></tr>']
    totals = fleet.totals()
    cells = "".join(
        _count_cell(n, {"state": s}) for n, s in zip(totals, PROBLEMS_FIRST, strict=True)
    )
    out.append(
        f'<tr class="all"><td>All {_stores(len(fleet.stores))}</td>{cells}'
        f"{_count_cell(sum(totals), {})}</tr>"
    )
    troubled = [i for i in fleet.stores if any(i.count(r) for r in problem_ranks)]
    for index in troubled[:SUMMARY_STORES]:
        name = index.name
        counts = [index.count(r) for r in range(len(PROBLEMS_FIRST))]
        cells = "".join(
            _count_cell(n, {"store": name, "state": s})
            for n, s in zip(counts, PROBLEMS_FIRST, strict=True)
        )
        link = escape(urlencode({"store": name}))
        out.append(
            f'<tr><td><a href="?{link}">{esc(name)}</a></td>{cells}'
            f"{_count_cell(sum(counts), {'store': name})}</tr>"
        )
    if len(troubled) > SUMMARY_STORES:
        hidden = troubled[SUMMARY_STORES:]
        out.append(_rest_row(f"{len(hidden):,} more with problems", hidden))
    calm = [i for i in fleet.stores if not any(i.count(r) for r in problem_ranks)]
    if calm and troubled:
        out.append(_rest_row(f"{_stores(len(calm))} without problems", calm))
    out.append("</table>")
    return "".join(out)


def _stores(count: int) -> str:
    return f"{count:,} store{'' if count == 1 else 's'}"


def _rest_row(title: str, stores: list[StoreIndex]) -> str:
    counts = [sum(i.count(r) for i in stores) for r in range(len(PROBLEMS_FIRST))]
    cells = "".join(_count_cell(n, None) for n in counts)
    return f'<tr class="rest"><td>{title}</td>{cells}{_count_cell(sum(counts), None)}</tr>'


def filter_form(page: Page) -> str:
    """The filters as a GET form (works without JavaScript)."""
    query = page.query
    boxes = "".join(
        f'<label><input type="checkbox" name="state" value="{s}"'
        f"{' checked' if s in query.states else ''}> "
        f'<span class="state s-{s}">{STATE_TEXT[s]}</span></label>'
        for s in PROBLEMS_FIRST
    )
    labels = [f"{k}={v}" for k, v in query.labels] or [""]
    label_inputs = "".join(
        f'<label>Label <input type="text" name="label" placeholder="name=value" '
        f'value="{esc(v)}"></label>'
        for v in labels
    )
    limit = (
        f'<input type="hidden" name="limit" value="{query.limit}">'
        if query.limit != DEFAULT_HTML_LIMIT
        else ""
    )
    return (
        '<form class="filters" method="get" action="">'
        f'<div class="states">{boxes}</div><div style="margin-top:.4em">'
        f'<label>Store <input type="text" name="store" value="{esc(query.store or "")}"></label>'
        f"{label_inputs}"
        f'<label>Task id contains <input type="text" name="q" value="{esc(query.q or "")}">'
        f"</label>{limit}<button type='submit'>Apply</button> <a href='?'>Clear</a></div></form>"
    )


def _shard_text(page: Page) -> str:
    view = page.fleet.view
    if view.total_shards <= 1:
        return "Shard 0 of 1 (this process serves every store)"
    return (
        f"Shard {view.shard} of {view.total_shards} (shards 0..{view.total_shards - 1}): "
        f"{view.stores_owned} stores here, {view.stores_other} on other shards"
    )


def _nav(page: Page) -> str:
    links = []
    if page.continued:
        links.append(f"<a href='{escape(page.query.url(None, DEFAULT_HTML_LIMIT))}'>First page</a>")
    if page.next:
        links.append(
            f"<a href='{escape(page.query.url(page.next, DEFAULT_HTML_LIMIT))}'>"
            f"Next {page.query.limit:,} tasks &rarr;</a>"
        )
    return f"<p class='nav'>{' &middot; '.join(links)}</p>" if links else ""


def _dashboard_link(template: str | None) -> str:
    if not template:
        return ""
    if "{store}" in template or "{task_id}" in template:
        template = template.split("?", 1)[0]
    return f" &middot; <a href='{escape(template)}'>Grafana dashboard</a>"


def listing_page(page: Page, dashboard_url: str | None, metrics_href: str = "metrics") -> str:
    """The whole status page for one page of a listing."""
    view = page.fleet.view
    now = view.now
    query = page.query
    api = "api/v1/tasks" + (
        "?" + urlencode(query.params(page.query.after, DEFAULT_HTML_LIMIT))
        if query.filtered or query.after
        else ""
    )
    parts = [
        head("Shoplazza upload exporter"),
        "<h1>Shoplazza upload exporter</h1>",
        f"<p>Version {esc(view.version)} &middot; <a href='{escape(metrics_href)}'>Metrics</a> "
        "&middot; ",
        f"<a href='{escape(api)}'>These tasks as JSON</a> &middot; <a href='-/healthy'>Health</a>",
        _dashboard_link(dashboard_url),
        f" &middot; {esc(_shard_text(page))} &middot; ",
        f"<span class='muted'>refreshes every {PAGE_REFRESH_SECONDS} s</span></p>",
    ]
    if not page.fleet.stores:
        parts.append("<p class='muted'>No stores on this shard.</p>")
    else:
        parts.append("<h2>Summary</h2>" + summary(page))
    parts.append(filter_form(page))
    parts.append(_listing(page, now))
    stuck = sorted({format_age(s.view.stuck_after) for s in page.fleet.stores})
    parts.append(
        "<p class='muted'>Problems first: failing, stuck, unknown status, completed with "
        "failures, then in progress, not polled yet, completed; by store and task id within "
        "a state. Stuck: in progress with no progress for "
        f"{esc(', '.join(stuck) or format_age(900))} (the store's stuck_after). "
        "Failed files are shown in red in the bar and the Failed column.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)


def _count_text(page: Page) -> str:
    count = len(page.rows)
    if page.next:
        return f"{count:,} on this page, more on the next."
    if page.continued:
        return f"{count:,} on this page, the last."
    return f"{count:,} task{'s' if count != 1 else ''}."


def _listing(page: Page, now: float) -> str:
    query = page.query
    store = page.fleet.store(query.store) if query.store else None
    if query.store and store is None:
        return f"<p class='muted'>No store named {esc(query.store)} on this shard.</p>"
    if not page.rows:
        what = "match these filters" if query.filtered else "are watched"
        more = " on this page" if page.continued else ""
        return f"<h2>Tasks</h2><p class='muted'>No tasks {what}{more}.</p>{_nav(page)}"
    scope = "" if not query.filtered else " matching the filters"
    parts = [
        f"<h2>Tasks{scope}</h2>",
        f"<p class='muted'>{_count_text(page)}</p>",
        "<table class='tasks'><tr><th>Store</th><th>Task</th><th>State</th><th>Progress</th>"
        "<th>Finished/total</th><th>Failed</th><th>Last progress</th>"
        "<th>Data age</th><th>Last error, failed files</th></tr>",
    ]
    group = -1
    for row in page.rows:
        if row.rank != group:
            group = row.rank
            state = PROBLEMS_FIRST[group]
            parts.append(
                f'<tr class="g"><th colspan="9"><span class="state s-{state}">'
                f"{STATE_TEXT[state]}</span></th></tr>"
            )
        parts.append(task_row(row, now))
    parts.append("</table>")
    parts.append(_nav(page))
    return "".join(parts)
