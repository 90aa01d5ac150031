"""A Shoplazza OpenAPI simulator: a real HTTP server on loopback.

It answers ``GET /openapi/{version}/file/task/{task_id}`` the way Shoplazza's
"Get Upload File Task" endpoint does (flat 2022-01 bodies or wrapped
``{"code": "Success", "data": {...}}`` bodies), checks the ``access-token`` header,
can rate limit with a leaky bucket, add latency, stream huge bodies and play scripted
answers per task. Every request is recorded so that tests can check what arrived.

It serves the exporter's ``--demo`` mode (see :func:`add_demo_tasks`) and the test
suite, and runs standalone with ``python -m exporter.demo``. Standard library only.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import http
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEMO_MISSING_TASK",
    "DEMO_TOKEN",
    "SHAPES",
    "RecordedRequest",
    "Reply",
    "SimTask",
    "Simulator",
    "add_demo_tasks",
    "main",
]

#: Token the demo simulator accepts (``--demo`` in the exporter and here).
DEMO_TOKEN = "demo-token-not-a-secret"  # 16+ characters, as config requires
#: The demo task id that is never added, so it answers 404.
DEMO_MISSING_TASK = "demo-missing-404"
#: Body shapes the simulator can answer with.
SHAPES = ("flat", "wrapped")

_ROUTE = re.compile(r"^/openapi/([0-9A-Za-z._-]+)/file/task/([^/]+)$")
_CHUNK = 64 * 1024
_EPSILON = 1e-9


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
    (a slow or hostile upstream).
    """

    status: int = 200
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float = 0.0
    body_size: int | None = None
    chunked: bool = False
    content_type: str = "application/json"
    drip: float = 0.0


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


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _errors(*messages: str) -> bytes:
    return _json({"errors": list(messages)})


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _padding(size: int) -> Iterator[bytes]:
    """Yield ``size`` bytes of ``{"pad": "xxx..."}`` (just ``x``s when too small) in chunks."""
    head, tail = b'{"pad": "', b'"}'
    if size < len(head) + len(tail):
        head, tail = b"", b""
    middle = size - len(head) - len(tail)
    block = b"x" * _CHUNK
    pending = head
    while middle > 0:
        n = min(middle, _CHUNK - len(pending))
        middle -= n
        chunk = pending + (block if n == _CHUNK else block[:n])
        pending = b""
        if middle == 0 and len(chunk) + len(tail) <= _CHUNK:
            chunk, tail = chunk + tail, b""
        yield chunk
    if pending or tail:
        yield pending + tail


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], sim: Simulator) -> None:
        self.sim = sim
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow in sandboxes.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that go away are normal here."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"
    server_version = "ShoplazzaSimulator/1.0"
    timeout = 60.0  # idle keep-alive connections; stop() shuts them down anyway

    def version_string(self) -> str:
        return self.server_version

    @property
    def sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):  # small answers go out at once (no Nagle delay)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sim._register(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            self.close_connection = True

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.sim._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request log line."""

    def handle_one_request(self) -> None:
        """Route every method through :meth:`Simulator._handle` (405 for all but GET)."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except TimeoutError:
            self.close_connection = True
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        self.sim._handle(self, self.command)
        self.wfile.flush()


class Simulator:
    """The Shoplazza API simulator. Use as a context manager or call start()/stop().

    Per request, in this order: the request is recorded; the leaky bucket (when
    ``rate_limit`` is set) may answer 429; a queued one-shot reply of the task, else its
    sticky reply, answers; else the ``access-token`` is checked (401) and the task looked
    up (404 or 200). ``latency`` plus the reply's latency delays every answer; stop()
    interrupts those waits.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens: Iterable[str] = ("sim-token",),
        shape: str = "flat",
        rate_limit: float | None = None,
        bucket_capacity: int = 10,
        retry_after: str | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        max_records: int | None = None,
    ) -> None:
        _check_shape(shape)
        self.host = host
        self.port = port
        self.lock = threading.RLock()
        self._cond = threading.Condition(self.lock)
        self._tokens: frozenset[str] = frozenset(tokens)
        self.shape = shape
        #: Leak rate of the bucket in requests/second; None: no rate limit. Settable.
        self.rate_limit = rate_limit
        self.bucket_capacity = bucket_capacity
        self.retry_after = retry_after
        self.latency = latency
        self._clock = clock
        self._started_at = clock()
        self._level = 0.0
        self._level_at: float | None = None
        self._tasks: dict[str, SimTask] = {}
        self._shapes: dict[str, str] = {}
        self._scripts: dict[str, collections.deque[Reply]] = {}
        self._sticky: dict[str, Reply] = {}
        #: Only the newest max_records requests are kept (None: all); count() sees all.
        self._records: collections.deque[RecordedRequest] = collections.deque(maxlen=max_records)
        self._counts: collections.Counter[tuple[str | None, int]] = collections.Counter()
        self._throttled = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind, start serving in a daemon thread and return self."""
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = _Server((self.host, self.port), self)
        self._server = server
        self.port = int(server.server_address[1])
        with self.lock:
            self._started_at = self._clock()
            self._level = 0.0
            self._level_at = None
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"shoplazza-simulator:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: abandon sleeping requests, close every connection. Idempotent."""
        server = self._server
        if server is None:
            return
        self._stop_event.set()
        with self.lock:
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            _shutdown_socket(conn)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None and not self._stop_event.is_set()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (valid once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def task_url(self, task_id: str, api_version: str = "2022-01") -> str:
        """Full URL of a task's endpoint."""
        return f"{self.url}/openapi/{api_version}/file/task/{task_id}"

    def elapsed(self) -> float:
        """Seconds since start (by the simulator's clock): what ``progress`` callbacks get."""
        return self._clock() - self._started_at

    # -- tasks and behaviour -----------------------------------------------------------

    def add_task(
        self,
        task_id: str,
        total: int,
        finished: int = 0,
        status: int = 1,
        *,
        success_list: list[dict[str, str]] | None = None,
        failure_list: list[dict[str, str]] | None = None,
        origin_list: list[str] | None = None,
        progress: Callable[[SimTask, float], None] | None = None,
    ) -> SimTask:
        """Add (or replace) a task and return it."""
        task = SimTask(
            task_id=task_id,
            total=total,
            finished=finished,
            status=status,
            success_list=list(success_list or []),
            failure_list=list(failure_list or []),
            origin_list=list(origin_list or []),
            progress=progress,
        )
        with self.lock:
            self._tasks[task_id] = task
        return task

    def task(self, task_id: str) -> SimTask:
        """The task with this id (KeyError when unknown)."""
        with self.lock:
            return self._tasks[task_id]

    def tasks(self) -> list[str]:
        """Ids of the known tasks."""
        with self.lock:
            return list(self._tasks)

    def remove_task(self, task_id: str) -> None:
        """Forget a task (it answers 404 from now on); unknown ids are ignored."""
        with self.lock:
            self._tasks.pop(task_id, None)

    @property
    def tokens(self) -> frozenset[str]:
        with self.lock:
            return self._tokens

    def set_tokens(self, *tokens: str) -> None:
        """Replace the accepted access tokens (none: every request gets 401)."""
        with self.lock:
            self._tokens = frozenset(tokens)

    def set_shape(self, task_id: str, shape: str | None) -> None:
        """Answer this task in ``shape`` ("flat" or "wrapped"); None: follow ``self.shape``."""
        with self.lock:
            if shape is None:
                self._shapes.pop(task_id, None)
            else:
                _check_shape(shape)
                self._shapes[task_id] = shape

    def script(self, task_id: str, *replies: Reply) -> None:
        """Queue one-shot replies for this task, consumed in order before normal behaviour."""
        with self.lock:
            self._scripts.setdefault(task_id, collections.deque()).extend(replies)

    def pending(self, task_id: str) -> int:
        """How many scripted one-shot replies of this task are still queued."""
        with self.lock:
            return len(self._scripts.get(task_id, ()))

    def clear_script(self, task_id: str | None = None) -> None:
        """Drop queued one-shot replies of one task (None: of all tasks)."""
        with self.lock:
            if task_id is None:
                self._scripts.clear()
            else:
                self._scripts.pop(task_id, None)

    def behave(self, task_id: str, reply: Reply | None) -> None:
        """Answer every request of this task with ``reply`` (after scripted ones); None clears."""
        with self.lock:
            if reply is None:
                self._sticky.pop(task_id, None)
            else:
                self._sticky[task_id] = reply

    def body(self, task_id: str, shape: str | None = None) -> dict[str, Any]:
        """The JSON object the task would be answered with now (without calling progress)."""
        with self.lock:
            task = self._tasks[task_id]
            return self._shaped(task, shape or self._shapes.get(task_id, self.shape))

    # -- records -----------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        with self.lock:
            return list(self._records)

    def count(self, task_id: str | None = None, status: int | None = None) -> int:
        """Requests since start or reset_records(), optionally of one task and/or one status.

        A request is recorded before its answer is sent, so it is counted by the time the
        client sees the answer (in_flight drops only after the answer is written).
        """
        with self.lock:
            return sum(
                n
                for (tid, st), n in self._counts.items()
                if (task_id is None or tid == task_id) and (status is None or st == status)
            )

    @property
    def throttled(self) -> int:
        """How many 429s the leaky bucket produced."""
        with self.lock:
            return self._throttled

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        with self.lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The highest number of requests handled at the same time."""
        with self.lock:
            return self._max_in_flight

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate(self)`` holds (checked on each request start and finish,
        and every 50 ms); return whether it did within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if predicate(self):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))

    def reset_records(self) -> None:
        """Forget recorded requests, the throttled count and max_in_flight."""
        with self.lock:
            self._records.clear()
            self._counts.clear()
            self._throttled = 0
            self._max_in_flight = self._in_flight

    # -- request handling (called from handler threads) --------------------------------

    def _register(self, conn: socket.socket) -> None:
        with self.lock:
            stopping = self._stop_event.is_set()
            if not stopping:
                self._connections.add(conn)
        if stopping:
            _shutdown_socket(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self.lock:
            self._connections.discard(conn)

    def _handle(self, h: _Handler, method: str) -> None:
        arrived = time.monotonic()
        with self.lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._cond.notify_all()
        try:
            _discard_request_body(h)
            token = h.headers.get("access-token")
            match = _ROUTE.match(urlsplit(h.path).path)
            task_id = unquote(match.group(2)) if match else None
            with self.lock:
                answer = self._decide(method, match is not None, task_id, token)
                self._records.append(
                    RecordedRequest(
                        method=method,
                        path=h.path,
                        task_id=task_id,
                        token=token,
                        headers=dict(h.headers.items()),
                        at=arrived,
                        status=answer.status,
                    )
                )
                self._counts[(task_id, answer.status)] += 1
                delay = max(0.0, self.latency) + max(0.0, answer.latency)
            if (delay > 0 and self._stop_event.wait(delay)) or self._stop_event.is_set():
                h.close_connection = True  # abandoned: the client sees the connection close
                return
            self._send(h, answer, method)
        except OSError:
            h.close_connection = True
        finally:
            with self.lock:
                self._in_flight -= 1
                self._cond.notify_all()

    def _decide(self, method: str, routed: bool, task_id: str | None, token: str | None) -> Reply:
        """Pick the answer; called with the lock held."""
        if method != "GET":
            return Reply(405, _errors("Method Not Allowed"), headers={"Allow": "GET"})
        if not routed or task_id is None:
            return Reply(404, _errors("Not Found"))
        if self.rate_limit is not None:
            now = self._clock()
            if self._level_at is not None:
                self._level = max(0.0, self._level - (now - self._level_at) * self.rate_limit)
            self._level_at = now
            if self._level + 1 > self.bucket_capacity + _EPSILON:
                self._throttled += 1
                headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
                return Reply(429, _errors("Too Many Requests"), headers=headers)
            self._level += 1
        queue = self._scripts.get(task_id)
        if queue:
            reply = queue.popleft()
            if not queue:
                del self._scripts[task_id]
            return self._from_reply(reply, task_id)
        sticky = self._sticky.get(task_id)
        if sticky is not None:
            return self._from_reply(sticky, task_id)
        if token is None or token not in self._tokens:
            return Reply(401, _json({"error": "Invalid access token"}))
        task = self._tasks.get(task_id)
        if task is None:
            return Reply(404, _errors("task not found"))
        return self._task_answer(task)

    def _task_answer(self, task: SimTask) -> Reply:
        if task.progress is not None:
            try:
                task.progress(task, self.elapsed())
            except Exception as exc:  # a broken callback must not kill the handler thread
                return Reply(500, _errors(f"progress callback failed: {exc!r}"))
        shape = self._shapes.get(task.task_id, self.shape)
        return Reply(200, _json(self._shaped(task, shape)))

    @staticmethod
    def _shaped(task: SimTask, shape: str) -> dict[str, Any]:
        data = task.to_dict()
        return {"code": "Success", "data": data} if shape == "wrapped" else data

    def _from_reply(self, reply: Reply, task_id: str) -> Reply:
        """The scripted reply as sent: its own copy, the body filled in when left out."""
        answer = dataclasses.replace(reply, headers=dict(reply.headers))
        if reply.body is None and reply.body_size is None:
            if 200 <= reply.status < 300:
                task = self._tasks.get(task_id)
                if task is None:
                    answer.body = _errors("task not found")
                else:
                    answer.body = self._task_answer(task).body
            else:
                answer.body = _errors(_phrase(reply.status))
        return answer

    def _send(self, h: _Handler, answer: Reply, method: str) -> None:
        chunks: Iterable[bytes]
        if answer.body_size is not None:
            size = max(0, answer.body_size)
            chunks = _padding(size)
        else:
            body = answer.body or b""
            size = len(body)
            step = 1 if answer.drip > 0 else _CHUNK
            chunks = (body[i : i + step] for i in range(0, size, step))
        h.send_response(answer.status)
        given = {k.lower() for k in answer.headers}
        if "content-type" not in given:
            h.send_header("Content-Type", answer.content_type)
        for name, value in answer.headers.items():
            h.send_header(name, value)
        chunked = answer.chunked and h.request_version == "HTTP/1.1"
        if method == "HEAD" or not answer.chunked:
            if "content-length" not in given:
                h.send_header("Content-Length", "0" if method == "HEAD" else str(size))
        elif chunked:
            h.send_header("Transfer-Encoding", "chunked")
        else:  # close-delimited body for HTTP/1.0 clients
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if method == "HEAD":
            return
        try:
            for chunk in chunks:
                if self._stop_event.is_set():
                    h.close_connection = True
                    return
                if not chunk:
                    continue
                if chunked:
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                else:
                    h.wfile.write(chunk)
                if answer.drip > 0 and self._stop_event.wait(answer.drip):
                    h.close_connection = True
                    return
            if chunked:
                h.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            h.close_connection = True  # the client went away mid-body: fine


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}, expected one of {', '.join(SHAPES)}")


def _shutdown_socket(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _discard_request_body(h: _Handler) -> None:
    if h.headers.get("Transfer-Encoding"):
        h.close_connection = True  # not worth decoding: just do not reuse the connection
        return
    length = h.headers.get("Content-Length")
    if not length:
        return
    try:
        remaining = int(length)
    except ValueError:
        h.close_connection = True
        return
    if remaining > 1024 * 1024:
        h.close_connection = True
        return
    while remaining > 0:
        data = h.rfile.read(min(remaining, _CHUNK))
        if not data:
            break
        remaining -= len(data)


# -- demo ------------------------------------------------------------------------------

#: Seconds per finished file in the progressing demo tasks.
DEMO_STEP = 0.5
_DEMO_REASONS = ("download timeout", "unsupported image format", "image larger than 20 MB")


def _origin(task_id: str, i: int) -> str:
    return f"https://images.example.com/{task_id}/{i:03d}.jpg"


def _success(task_id: str, i: int) -> dict[str, str]:
    return {
        "file_uri": f"shoplazza://files/{task_id}/{i:03d}",
        "origin_link": _origin(task_id, i),
        "upload_link": f"https://img.staticdj.com/{task_id}/{i:03d}.jpg",
    }


def _failure(task_id: str, i: int) -> dict[str, str]:
    return {
        "origin_link": _origin(task_id, i),
        "reason": _DEMO_REASONS[(i // 3 - 1) % len(_DEMO_REASONS)],
    }


def _fill(task: SimTask, finished: int, fail_every: int | None) -> None:
    """Set ``finished`` and rebuild the lists: file i (1-based) fails when fail_every | i."""
    finished = max(0, min(task.total, finished))
    task.finished = finished
    task.success_list = []
    task.failure_list = []
    for i in range(1, finished + 1):
        if fail_every is not None and i % fail_every == 0:
            task.failure_list.append(_failure(task.task_id, i))
        else:
            task.success_list.append(_success(task.task_id, i))
    task.status = 0 if finished >= task.total else 1


def _progressing(step: float, fail_every: int | None) -> Callable[[SimTask, float], None]:
    def progress(task: SimTask, elapsed: float) -> None:
        finished = int(max(0.0, elapsed) / step + _EPSILON)
        if finished != task.finished or (finished >= task.total) != (task.status == 0):
            _fill(task, max(finished, task.finished), fail_every)

    return progress


def add_demo_tasks(sim: Simulator) -> list[str]:
    """Add the demo tasks to ``sim`` and return their ids plus :data:`DEMO_MISSING_TASK`.

    - ``demo-catalogue-complete``: 6 files, one finished every 0.5 s, completed after 3 s;
    - ``demo-images-stuck``: 10 files, 4 finished, in progress forever;
    - ``demo-variants-failing``: 40 files, one finished every 0.5 s, every third one fails;
    - ``demo-missing-404``: never added, so it answers 404.

    Progress follows the simulator's clock (seconds since ``start()``).
    """
    ids: list[str] = []

    def add(task_id: str, total: int, fail_every: int | None, moving: bool, done: int) -> None:
        task = sim.add_task(
            task_id,
            total,
            origin_list=[_origin(task_id, i) for i in range(1, total + 1)],
            progress=_progressing(DEMO_STEP, fail_every) if moving else None,
        )
        _fill(task, done, fail_every)
        ids.append(task_id)

    add("demo-catalogue-complete", 6, None, True, 0)
    add("demo-images-stuck", 10, None, False, 4)
    add("demo-variants-failing", 40, 3, True, 0)
    ids.append(DEMO_MISSING_TASK)
    return ids


# -- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter.demo",
        description="Run the Shoplazza upload-file-task API simulator.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument(
        "--token",
        action="append",
        default=None,
        help=f"accepted access token, repeatable (sim-token; {DEMO_TOKEN} with --demo)",
    )
    p.add_argument("--demo", action="store_true", help="add the demo tasks")
    p.add_argument(
        "--tasks", type=int, default=0, metavar="N", help="add N in-progress tasks task-0.."
    )
    p.add_argument("--rate-limit", type=float, default=None, help="leak rate, requests/second")
    p.add_argument("--bucket", type=int, default=10, help="leaky bucket capacity (10)")
    p.add_argument("--retry-after", default=None, help="Retry-After value on 429s")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--shape", choices=SHAPES, default="flat", help="body shape (flat)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; return the exit status."""
    args = _parser().parse_args(argv)
    if args.tasks < 0:
        print("--tasks must be >= 0", file=sys.stderr)
        return 2
    tokens = args.token or [DEMO_TOKEN if args.demo else "sim-token"]
    sim = Simulator(
        args.host,
        args.port,
        tokens=tokens,
        shape=args.shape,
        rate_limit=args.rate_limit,
        bucket_capacity=args.bucket,
        retry_after=args.retry_after,
        latency=args.latency,
        max_records=10_000,
    )
    ids: list[str] = []
    if args.demo:
        ids.extend(add_demo_tasks(sim))
    for i in range(args.tasks):
        sim.add_task(f"task-{i}", 100, i % 100, 1)
    try:
        sim.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda _signum, _frame: done.set())
    try:
        print(f"Shoplazza API simulator listening on {sim.url}", flush=True)
        print(f"tokens: {', '.join(tokens)}", flush=True)
        if ids:
            print(f"demo tasks: {', '.join(ids)}", flush=True)
        if args.tasks:
            print(f"tasks: task-0 .. task-{args.tasks - 1}", flush=True)
        print(f"try: curl -H 'access-token: {tokens[0]}' {sim.task_url('<task_id>')}", flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
