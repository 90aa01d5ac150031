"""The task API: importers register, remove, read and wait for tasks over HTTP.

``/api/v1/stores/{store}/tasks[/{task_id}]`` (docs/task-api.md). Writes are refused with
403 unless the exporter runs with ``--web.enable-task-api``. Validation reuses the
configuration's rules (exporter/config/labels.py, ``TASK_ID_RE``). A registration is
answered only once it is on disk (the state file, fsynced with its directory).

``GET ...?wait=`` holds no thread: the worker that ran the app leaves a coroutine in the
environ (:data:`ANSWER_LATER`), the server runs it on its event loop, and the poller's
threads wake it through :class:`WaitHub` (``loop.call_soon_threadsafe``) when they poll the
task. Nothing an answer or a log line says comes from a request header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import parse_qs

from exporter.config import STORE_NAME_RE, TASK_ID_RE, Labels, parse_duration
from exporter.config.kit import quoted
from exporter.config.labels import label_name_problem, label_value_problem, labels_problem
from exporter.model import TaskRecord
from exporter.web.pages import COMPLETED, COMPLETED_WITH_FAILURES, classify, task_json

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

log = logging.getLogger("exporter.web.taskapi")

PREFIX = "/api/v1/stores/"
MAX_BODY = 64 * 1024
MAX_BATCH = 1000
MAX_WAIT = 300.0
#: The environ key under which a request leaves the coroutine that answers it later.
ANSWER_LATER = "exporter.answer_later"
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
_TASK_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_DONE = frozenset({COMPLETED, COMPLETED_WITH_FAILURES})
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Result = tuple[str, list[tuple[str, str]], bytes]
Registered = list[tuple[str, bool, TaskRecord | None]]


@runtime_checkable
class TaskApiPort(Protocol):
    """What the task API asks of the running exporter."""

    def store_owner(self, store: str) -> int | None:
        """The shard serving ``store`` (this one's index when here); None when unknown."""

    @property
    def shard_index(self) -> int:
        """This process's shard."""

    def register_tasks(self, store: str, items: list[tuple[str, Labels]]) -> Registered | str:
        """Register all or none (a str says why none); durable when it returns a list."""

    def persist(self) -> bool:
        """Write the registrations to the state file now; False when that failed."""

    def unregister_task(self, store: str, task_id: str) -> str:
        """``removed``, ``not_registered`` or ``configured``."""

    def task(self, store: str, task_id: str) -> tuple[TaskRecord, float] | None:
        """A watched task's record and its store's stuck_after, or None."""

    def add_waiter(self, store: str, task_id: str) -> None:
        """Someone waits for the task (it is polled before the others)."""

    def remove_waiter(self, store: str, task_id: str) -> None:
        """A wait ended."""

    def view_task(self, store: str, task_id: str) -> None:
        """Someone looks at the task (it is polled before the others when due)."""

    def wall_time(self) -> float:
        """Unix time now."""

    def on_task_polled(self, callback: Callable[[str, str], None]) -> None:
        """Have ``callback(store, task_id)`` called when a waited-for task was polled."""

    def count_task_api(self, method: str, code: int) -> None:
        """Count one answered request of the task API."""


class _Invalid(ValueError):
    """A request the API refuses: its status and the text of ``{"error": ...}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def _answer(status: int, payload: object | None) -> Result:
    body = b"" if payload is None else json.dumps(payload, indent=1).encode()
    headers = [] if payload is None else [("Content-Type", "application/json")]
    return f"{status} {_REASONS.get(status, 'Unknown')}", headers, body


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {quoted(key, 64)} given twice")
        result[key] = value
    return result


def _labels(value: object) -> Labels:
    """``{"name": "value", ...}`` checked like a task_ids entry's labels."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("labels must be an object of strings")
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"label {quoted(name, 64)}: the value must be a string")
        problem = label_name_problem(name) or label_value_problem(name, text)
        if problem is not None:
            raise ValueError(problem)
        pairs.append((name, text))
    problem = labels_problem(pairs)
    if problem is not None:
        raise ValueError(problem)
    return tuple(sorted(pairs))


def _task_id_problem(task_id: object) -> str | None:
    if not isinstance(task_id, str):
        return "the task id must be a string"
    if not TASK_ID_RE.match(task_id):
        return f"invalid task id {quoted(task_id, 64)} (use [A-Za-z0-9_-], at most 128)"
    return None


class WaitHub:
    """Futures of waiting requests per task, woken from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[tuple[str, str], list[asyncio.Future[None]]] = {}

    def future(self, key: tuple[str, str]) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`notify` of ``key`` (call on the loop)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.setdefault(key, []).append(future)
        return future

    def discard(self, key: tuple[str, str], future: asyncio.Future[None]) -> None:
        """Forget a future that timed out."""
        with self._lock:
            futures = self._waiting.get(key)
            if futures and future in futures:
                futures.remove(future)
                if not futures:
                    del self._waiting[key]

    def notify(self, store: str, task_id: str) -> None:
        """The task was polled or dropped: wake its waiters (any thread, never blocks)."""
        with self._lock:
            futures = self._waiting.pop((store, task_id), [])
        for future in futures:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                future.get_loop().call_soon_threadsafe(_resolve, future)

    @property
    def waiting(self) -> int:
        """Futures not resolved yet."""
        with self._lock:
            return sum(len(f) for f in self._waiting.values())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class TaskApi:
    """Routes ``/api/v1/stores/...``; runs on a worker thread except the waits."""

    def __init__(self, exporter: TaskApiPort, *, writes: bool) -> None:
        self.exporter = exporter
        self.writes = writes
        self.hub = WaitHub()
        exporter.on_task_polled(self.hub.notify)

    def __call__(self, environ: WSGIEnvironment) -> Result:
        """Answer one request (the WSGI app calls it for paths under :data:`PREFIX`)."""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        try:
            status, headers, body = self._route(environ, method)
        except _Invalid as exc:
            status, headers, body = _answer(exc.status, {"error": str(exc), **exc.extra})
            if exc.status == 405:
                headers.append(("Allow", exc.extra.pop("allow", "")))
        if ANSWER_LATER not in environ:
            self.exporter.count_task_api(method, int(status.split(" ", 1)[0]))
        return status, headers, body

    def _route(self, environ: WSGIEnvironment, method: str) -> Result:
        path = str(environ.get("PATH_INFO", ""))[len(PREFIX) :]
        parts = path.split("/")
        if len(parts) not in (2, 3) or parts[1] != "tasks" or not STORE_NAME_RE.match(parts[0]):
            raise _Invalid(404, "no such endpoint of the task API")
        store = parts[0]
        task_id = parts[2] if len(parts) == 3 else None
        allowed = _TASK_METHODS if task_id is not None else frozenset({"POST"})
        if method not in allowed:
            exc = _Invalid(405, "method not allowed")
            exc.extra["allow"] = ", ".join(sorted(allowed))
            raise exc
        if method not in ("GET", "HEAD") and not self.writes:
            raise _Invalid(
                403, "the task API's writes are off: start the exporter with --web.enable-task-api"
            )
        if task_id is not None and (problem := _task_id_problem(task_id)):
            raise _Invalid(422, problem)
        owner = self.exporter.store_owner(store)
        if owner is None:
            raise _Invalid(404, f"unknown store {quoted(store)}")
        if owner != self.exporter.shard_index:
            raise _Invalid(421, f"store {store} is served by shard {owner}", shard=owner)
        if method == "POST":
            return self._batch(environ, store)
        assert task_id is not None
        if method == "PUT":
            return self._put(environ, store, task_id)
        if method == "DELETE":
            return self._delete(store, task_id)
        return self._get(environ, store, task_id)

    # -- writes ---------------------------------------------------------------------------

    def _body(self, environ: WSGIEnvironment, required: bool) -> object:
        """The request's JSON body (None when absent and not required)."""
        stream = environ["wsgi.input"]
        data = stream.read(MAX_BODY + 1)
        if len(data) > MAX_BODY:
            raise _Invalid(413, f"the body is over {MAX_BODY} bytes")
        if not data and not required:
            return None
        media = str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise _Invalid(415, "the body must be JSON, sent with Content-Type: application/json")
        try:
            return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (ValueError, RecursionError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
            raise _Invalid(400, f"the body is not valid JSON: {detail[:200]}") from None

    def _register(self, store: str, items: list[tuple[str, Labels]]) -> Registered:
        results = self.exporter.register_tasks(store, items)
        if isinstance(results, str):
            raise _Invalid(422, results)
        if not self.exporter.persist():
            raise _Invalid(
                503,
                "registered in memory, but the state file could not be written (see the "
                "exporter's log); the registration is lost on restart: retry",
            )
        return results

    def _put(self, environ: WSGIEnvironment, store: str, task_id: str) -> Result:
        body = self._body(environ, required=False)
        labels: Labels = ()
        if body is not None:
            if not isinstance(body, dict) or set(body) - {"labels"}:
                raise _Invalid(422, 'the body must be {"labels": {...}} or empty')
            try:
                labels = _labels(body.get("labels"))
            except ValueError as exc:
                raise _Invalid(422, str(exc)) from None
        [(_, created, record)] = self._register(store, [(task_id, labels)])
        return _answer(201 if created else 200, self._task_payload(store, task_id, record))

    def _batch(self, environ: WSGIEnvironment, store: str) -> Result:
        body = self._body(environ, required=True)
        if not isinstance(body, dict) or set(body) != {"tasks"}:
            raise _Invalid(422, 'the body must be {"tasks": [{"id": "...", "labels": {...}}]}')
        entries = body["tasks"]
        if not isinstance(entries, list):
            raise _Invalid(422, '"tasks" must be an array')
        if len(entries) > MAX_BATCH:
            raise _Invalid(422, f"at most {MAX_BATCH} tasks a request, got {len(entries)}")
        items: list[tuple[str, Labels]] = []
        invalid: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            try:
                if not isinstance(entry, dict) or "id" not in entry:
                    raise ValueError('an entry must be {"id": "...", "labels": {...}}')
                if extra := set(entry) - {"id", "labels"}:
                    raise ValueError(f"unknown key {quoted(sorted(extra)[0], 64)}")
                task_id = entry["id"]
                if problem := _task_id_problem(task_id):
                    raise ValueError(problem)
                if task_id in seen:
                    raise ValueError(f"task id given twice (also at index {seen[task_id]})")
                seen[task_id] = index
                items.append((task_id, _labels(entry.get("labels"))))
            except ValueError as exc:
                invalid.append({"index": index, "error": str(exc)})
        if invalid:
            raise _Invalid(
                422, f"{len(invalid)} invalid entries, nothing registered", invalid=invalid
            )
        results = self._register(store, items) if items else []
        return _answer(
            200,
            {
                "store": store,
                "tasks": [
                    {
                        "task_id": task_id,
                        "result": "created" if created else "updated",
                        "status": 201 if created else 200,
                        "source": None if record is None else record.source,
                    }
                    for task_id, created, record in results
                ],
            },
        )

    def _delete(self, store: str, task_id: str) -> Result:
        outcome = self.exporter.unregister_task(store, task_id)
        if outcome == "configured":
            raise _Invalid(
                409, "the task is watched through the configuration or a task file; remove it there"
            )
        if outcome == "not_registered":
            raise _Invalid(404, "the task was not registered through the API")
        if not self.exporter.persist():
            raise _Invalid(503, "removed in memory, but the state file could not be written")
        return _answer(204, None)

    # -- reads ----------------------------------------------------------------------------

    def _task_payload(
        self, store: str, task_id: str, record: TaskRecord | None, stuck_after: float = 900.0
    ) -> dict[str, Any]:
        if record is None:  # completed and forgotten (forget_completed_after)
            return {"store": store, "task_id": task_id, "state": "forgotten", "source": "api"}
        found = self.exporter.task(store, task_id)
        if found is not None:
            record, stuck_after = found
        return task_json(record, store, stuck_after, self.exporter.wall_time())

    def _get(self, environ: WSGIEnvironment, store: str, task_id: str) -> Result:
        found = self.exporter.task(store, task_id)
        if found is None:
            raise _Invalid(404, "the task is not watched")
        values = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        wait = 0.0
        if "wait" in values:
            try:
                wait = min(parse_duration(values["wait"][-1]), MAX_WAIT)
            except ValueError as exc:
                raise _Invalid(400, f"wait: {exc}") from None
        record, stuck_after = found
        if wait > 0 and classify(record, stuck_after, self.exporter.wall_time()) not in _DONE:
            method = str(environ.get("REQUEST_METHOD", "GET")).upper()
            environ[ANSWER_LATER] = lambda: self._wait(method, store, task_id, wait)
        else:
            self.exporter.view_task(store, task_id)  # the next look finds it fresh
        return _answer(200, self._task_payload(store, task_id, record, stuck_after))

    async def _wait(
        self, method: str, store: str, task_id: str, seconds: float
    ) -> tuple[int, str, bytes]:
        """On the event loop: the answer once the task is done, or when the wait ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        key = (store, task_id)
        self.exporter.add_waiter(store, task_id)
        try:
            while True:
                future = self.hub.future(key)  # before looking: a poll meanwhile wakes it
                found = self.exporter.task(store, task_id)
                remaining = deadline - loop.time()
                done = found is not None and (
                    classify(found[0], found[1], self.exporter.wall_time()) in _DONE
                )
                if found is None or done or remaining <= 0:
                    self.hub.discard(key, future)
                    break
                try:
                    await asyncio.wait_for(future, remaining)
                except TimeoutError:
                    self.hub.discard(key, future)
        finally:
            self.exporter.remove_waiter(store, task_id)
        if found is None:
            status, _, body = _answer(404, {"error": "the task is no longer watched"})
        else:
            status, _, body = _answer(200, self._task_payload(store, task_id, *found))
        code = int(status.split(" ", 1)[0])
        self.exporter.count_task_api(method, code)
        return code, _REASONS[code], body


AnswerLater = Callable[[], Coroutine[Any, Any, tuple[int, str, bytes]]]
