"""The WSGI app: /metrics, /, /api/v1/tasks, /tasks/{store}/{task_id}, /-/healthy, /-/ready,
/-/reload."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from html import escape
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from exporter.jobs import OnDemand
from exporter.metrics.exposition import Body, Exposition
from exporter.model import ExporterView
from exporter.web.listing import CursorExpired, Listing
from exporter.web.pages import render_html, render_json
from exporter.web.query import DEFAULT_HTML_LIMIT, DEFAULT_JSON_LIMIT, QueryError, parse_query
from exporter.web.states import classify
from exporter.web.taskapi import PREFIX as TASK_API_PREFIX
from exporter.web.taskapi import TaskApi, TaskApiPort
from exporter.web.taskpage import not_found_page, task_page

# A person opening a page sees fresh data at once: the pages refresh due tasks first, like
# a scrape with this deadline (docs/design.md, "Status pages").
PAGE_REFRESH_DEADLINE = 2.0
# Seconds between two updates of the pages' indexes in the background.
PAGE_WARM_PERIOD = 5.0
# From this many watched tasks the pages' indexes are kept warm even before a page is asked
# for: a cold first page would take over a tenth of a second (docs/performance.md#pages).
WARM_FROM_TASKS = 20_000

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("exporter.web.routes")

DEFAULT_SCRAPE_TIMEOUT = 10.0
# The background render (App._warm) looks every WARM_EVERY s and renders when the tasks
# not rendered yet would cost a scrape at least WARM_FROM s.
WARM_EVERY = 1.0
WARM_FROM = 0.2
MAX_SCRAPE_TIMEOUT = 120.0
DEADLINE_MARGIN = 0.5
MIN_DEADLINE = 0.1
# A decimal number in ASCII, as Prometheus writes the header ("10", "9.5"); float() alone
# would also take "nan", "inf", "1_0" and non-ASCII digits.
_TIMEOUT_RE = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class ExporterPort(Protocol):
    """What the web part may ask of the running exporter (docs/design.md, "The read path")."""

    def refresh(self, timeout: float) -> None:
        """Fetch due tasks, waiting at most ``timeout`` seconds."""

    def view(self) -> ExporterView:
        """A consistent copy of what the exporter knows."""

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration: (ok, message)."""

    @property
    def ready(self) -> bool:
        """A valid configuration is loaded."""


Handler = Callable[["WSGIEnvironment"], tuple[str, list[tuple[str, str]], bytes | Body]]


def scrape_deadline(header: str | None) -> float:
    """Seconds a scrape may take: the Prometheus timeout header minus 0.5 s, at least 0.1 s.

    A value that is not a finite positive number means "no header" (10 s); values above
    120 count as 120, so a hostile header cannot make a scrape wait out a long 429 pause.
    """
    text = (header or "").strip(" \t")
    if not _TIMEOUT_RE.fullmatch(text):
        return DEFAULT_SCRAPE_TIMEOUT
    timeout = min(float(text), MAX_SCRAPE_TIMEOUT)  # "1e400" is inf here: above 120 too
    if not timeout > 0:
        return DEFAULT_SCRAPE_TIMEOUT
    return max(timeout - DEADLINE_MARGIN, MIN_DEADLINE)


_QVALUE_RE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def accepts_gzip(header: str | None) -> bool:
    """True if ``Accept-Encoding`` allows gzip (RFC 9110 section 12.5.3).

    The q-value of ``gzip`` (or ``x-gzip``) decides; without one, that of ``*``. ``q=0``
    (``0.0``, ``0.000``) forbids. A malformed q-value makes its entry not count, so a
    garbled header means identity, which every client can read.
    """
    if not header:
        return False
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = (part.strip(" \t") for part in item.split(";"))
        coding = coding.lower()
        if not coding:
            continue
        weight: float | None = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip(" \t").lower() == "q":
                value = value.strip(" \t")
                weight = float(value) if _QVALUE_RE.fullmatch(value) else None
        if weight is None:
            continue
        if coding == "x-gzip":
            coding = "gzip"
        weights[coding] = min(weights.get(coding, weight), weight)  # repeated: the lower
    weight = weights.get("gzip", weights.get("*", 0.0))
    return weight > 0


def _text(status: str, body: str) -> tuple[str, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "text/plain; charset=utf-8")], body.encode()


_HTML = [("Content-Type", "text/html; charset=utf-8")]
_JSON = [("Content-Type", "application/json")]
_TASK_PATH = re.compile(r"/tasks/([A-Za-z0-9_.-]{1,64})/([A-Za-z0-9_-]{1,128})")


def _query_status(exc: QueryError) -> str:
    return "410 Gone" if isinstance(exc, CursorExpired) else "400 Bad Request"


def _error_html(status: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    body = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{escape(status)}</title></head><body><h1>{escape(status)}</h1>"
        f"<p>{escape(message)}</p><p><a href='?'>The first page, without filters</a></p>"
        "</body></html>"
    )
    return status, list(_HTML), body.encode()


#: Paths of the app's own pages, which ``--web.telemetry-path`` may not take.
FIXED_PATHS = ("/", "/api/v1/tasks", "/-/healthy", "/-/ready", "/-/reload")


def check_telemetry_path(path: str) -> str:
    """``--web.telemetry-path``: an absolute path that no other page uses (ValueError)."""
    if not path.startswith("/") or path.startswith("//") or "?" in path or "#" in path:
        raise ValueError(f"--web.telemetry-path {path!r}: must be a path starting with '/'")
    if path in FIXED_PATHS:
        raise ValueError(f"--web.telemetry-path {path!r}: taken by another page")
    return path


class App:
    """Routes requests to the exporter's endpoints.

    ``telemetry_path`` serves the metrics (``--web.telemetry-path``); ``exporter_metrics``
    False leaves out prometheus_client's ``process_*`` and ``python_*`` families
    (``--web.disable-exporter-metrics``); ``dashboard_url`` is the Grafana dashboard the
    pages link each task to (``--web.dashboard-url``).
    """

    def __init__(
        self,
        exporter: ExporterPort,
        *,
        telemetry_path: str = "/metrics",
        exporter_metrics: bool = True,
        enable_task_api: bool = False,
        dashboard_url: str | None = None,
    ) -> None:
        self.exporter = exporter
        self.dashboard_url = dashboard_url
        # The pages were asked for (their indexes are then kept warm, see keep_pages_warm).
        self._pages_used = False
        # Indexes of the last view and the journal the page cursors rely on.
        self.listing = Listing()
        self.exposition = Exposition(extra=None if exporter_metrics else ())
        # Reads of the task API always; writes with --web.enable-task-api (docs/task-api.md).
        self.task_api: TaskApi | None = None
        if isinstance(exporter, TaskApiPort):
            self.task_api = TaskApi(exporter, writes=enable_task_api)
        self._render_seconds = 0.0
        # Renders many new tasks in the background (see _warm); started by the first scrape.
        self._warmer: OnDemand | None = None
        self._warmer_lock = threading.Lock()
        self.telemetry_path = check_telemetry_path(telemetry_path)
        self.routes: dict[str, tuple[frozenset[str], Handler]] = {
            telemetry_path: (frozenset({"GET", "HEAD"}), self.metrics),
            "/": (frozenset({"GET", "HEAD"}), self.index),
            "/api/v1/tasks": (frozenset({"GET", "HEAD"}), self.tasks),
            "/-/healthy": (frozenset({"GET", "HEAD"}), self.healthy),
            "/-/ready": (frozenset({"GET", "HEAD"}), self.ready),
            "/-/reload": (frozenset({"POST", "PUT"}), self.reload),
        }

    def warm_pages_once_used(self) -> None:
        """A page was asked for: the pages are in use, so keep their indexes warm."""
        self._pages_used = True

    def warm_pages_step(self) -> bool:
        """Bring the pages' indexes up to date if they are worth keeping warm: the pages
        are in use, or the tasks are so many that a cold first page would be slow. True
        when it did."""
        if not self.exporter.ready:
            return False
        view = self.exporter.view()
        if not self._pages_used and sum(len(s.tasks) for s in view.stores) < WARM_FROM_TASKS:
            return False
        self.listing.fleet(lambda: view)
        return True

    def keep_pages_warm(self, period: float = PAGE_WARM_PERIOD) -> threading.Thread:
        """Call :meth:`warm_pages_step` every ``period`` seconds, off the requests.

        The first page of a fleet builds an index of every task (classified and sorted);
        later ones only apply what changed. Doing that here keeps a person's page as fast
        as a steady one, however much changed meanwhile (docs/design.md, "Status pages");
        an unchanged view costs one identity check per store. A daemon thread, for the
        process's life.
        """

        def run() -> None:
            while True:
                time.sleep(period)
                try:
                    self.warm_pages_step()
                except Exception as exc:  # keep warming; the pages report their own errors
                    log.error("building the pages' indexes failed", extra={"err": repr(exc)})

        thread = threading.Thread(target=run, name="pages-warm", daemon=True)
        thread.start()
        return thread

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        route = self.routes.get(path)
        if route is None and path.startswith("/tasks/"):
            route = (frozenset({"GET", "HEAD"}), self.task)
        body: bytes | Body
        if route is None and self.task_api is not None and path.startswith(TASK_API_PREFIX):
            status, headers, body = self.task_api(environ)
        elif route is None:
            status, headers, body = _text("404 Not Found", "404 page not found\n")
        elif method not in route[0]:
            status, headers, body = _text("405 Method Not Allowed", "method not allowed\n")
            headers.append(("Allow", ", ".join(sorted(route[0]))))
        else:
            status, headers, body = route[1](environ)
        size = len(body) if isinstance(body, bytes) else sum(map(len, body))
        headers.append(("Content-Length", str(size)))
        start_response(status, headers)
        if method == "HEAD":
            return [b""]
        # A Body goes out as it is: its chunks stay shared with other answers.
        return body if isinstance(body, Body) else [body]

    def metrics(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes | Body]:
        """Refresh due tasks within the scrape deadline, then render memory."""
        deadline = scrape_deadline(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"))
        self._start_warmer()
        # Waiting for the API leaves room for rendering, which is slow with many tasks: the
        # last renders' time, and the estimated cost of tasks never rendered yet (the first
        # render of a huge store), so even a first scrape answers by its deadline.
        render = self._render_seconds + self.exposition.estimate(self.exporter.view())
        self.exporter.refresh(max(deadline - render, MIN_DEADLINE / 2))
        started = time.monotonic()
        params = parse_qs(environ.get("QUERY_STRING", ""))
        names = frozenset(params["name[]"]) if "name[]" in params else None
        gzipped = accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING"))
        # Incremental and cached, byte-identical to prometheus_client (docs/design.md,
        # "Exposition"); it cannot raise on any stored value.
        content_type, body = self.exposition.render_body(
            self.exporter.view(), environ.get("HTTP_ACCEPT", ""), names, gzipped
        )
        headers = [("Content-Type", content_type)]
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        # The estimate follows the last renders, rising at once and falling slowly.
        took = time.monotonic() - started
        self._render_seconds = max(took, 0.8 * self._render_seconds + 0.2 * took)
        return "200 OK", headers, body

    def _start_warmer(self) -> None:
        with self._warmer_lock:
            if self._warmer is None:
                self._warmer = OnDemand(self._warm, "render-warmup", period=WARM_EVERY)

    def _warm(self) -> None:
        """Render in the background when many tasks were added since the last render (a
        task file's first reading): a scrape then finds them cached (docs/design.md,
        "Exposition")."""
        view = self.exporter.view()
        if self.exposition.estimate(view) >= WARM_FROM:
            self.exposition.warm(view)

    def index(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """The status page, after refreshing due tasks like a scrape (2 s deadline)."""
        try:
            query = parse_query(environ.get("QUERY_STRING", ""), DEFAULT_HTML_LIMIT)
        except QueryError as exc:
            return _error_html("400 Bad Request", str(exc))
        self.warm_pages_once_used()
        self.exporter.refresh(PAGE_REFRESH_DEADLINE)
        try:
            page = self.listing.page(self.exporter.view, query)
        except QueryError as exc:
            return _error_html(_query_status(exc), str(exc))
        html = render_html(page, self.dashboard_url, "." + self.telemetry_path)
        return "200 OK", list(_HTML), html.encode()

    def tasks(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """The status page's data as JSON, after the same refresh."""
        try:
            query = parse_query(environ.get("QUERY_STRING", ""), DEFAULT_JSON_LIMIT)
            self.warm_pages_once_used()
            self.exporter.refresh(PAGE_REFRESH_DEADLINE)
            page = self.listing.page(self.exporter.view, query)
        except QueryError as exc:
            body = json.dumps({"error": str(exc)})
            return _query_status(exc), list(_JSON), body.encode()
        return "200 OK", list(_JSON), render_json(page).encode()

    def task(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """One task's page with every kept failed file; 404 for a task not watched here."""
        path = environ.get("PATH_INFO") or ""
        match = _TASK_PATH.fullmatch(path)
        if match is None:
            return _text("404 Not Found", "404 page not found\n")
        store_name, task_id = match.groups()
        if isinstance(self.exporter, TaskApiPort):
            self.exporter.view_task(store_name, task_id)  # ahead of the others when due
        self.exporter.refresh(PAGE_REFRESH_DEADLINE)
        fleet = self.listing.fleet(self.exporter.view)
        index = fleet.store(store_name)
        entry = index.entries.get(task_id) if index is not None else None
        if index is None or entry is None:
            return "404 Not Found", list(_HTML), not_found_page(store_name, task_id).encode()
        task, _ = entry
        state = classify(task, index.view.stuck_after, fleet.view.now)
        html = task_page(fleet.view, index.view, task, state, self.dashboard_url)
        return "200 OK", list(_HTML), html.encode()

    def healthy(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """Liveness: 200 while the process serves."""
        return _text("200 OK", "OK\n")

    def ready(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """Readiness: 200 once a valid configuration is loaded."""
        if self.exporter.ready:
            return _text("200 OK", "OK\n")
        return _text("503 Service Unavailable", "no valid configuration loaded\n")

    def reload(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
        """Reload the configuration: 200, or 500 with the errors (the old one stays)."""
        ok, message = self.exporter.reload()
        if ok:
            return _text("200 OK", message + "\n")
        return _text("500 Internal Server Error", message + "\n")
