"""A Shoplazza OpenAPI simulator: a real HTTP server on loopback.

It answers ``GET /openapi/{version}/file/task/{task_id}`` the way Shoplazza's
"Get Upload File Task" endpoint does (flat 2022-01 bodies or wrapped
``{"code": "Success", "data": {...}}`` bodies), checks the ``access-token`` header,
can rate limit with a leaky bucket, add latency, stream huge bodies and play scripted
answers per task. Every request is recorded so that tests can check what arrived.

It serves the exporter's ``--demo`` mode (its tasks are in ``exporter.demo.tasks``) and
the test suite, and runs standalone with ``python -m exporter.demo``. Standard library only.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from exporter.demo.replies import SHAPES, RecordedRequest, Reply, SimTask, check_shape
from exporter.demo.wire import (
    CHUNK,
    SimHandler,
    SimServer,
    discard_request_body,
    errors_body,
    json_body,
    padding,
    phrase,
    shutdown_socket,
)

__all__ = [
    "SHAPES",
    "RecordedRequest",
    "Reply",
    "SimTask",
    "Simulator",
]


_ROUTE = re.compile(r"^/openapi/([0-9A-Za-z._-]+)/file/task/([^/]+)$")
_EPSILON = 1e-9


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
        tls: ssl.SSLContext | None = None,
    ) -> None:
        check_shape(shape)
        self.host = host
        self.port = port
        self.tls = tls  # a server context: the simulator speaks HTTPS
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
        self._task_in_flight: collections.Counter[str] = collections.Counter()
        self._max_task_in_flight = 0
        self._stop_event = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: SimServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind, start serving in a daemon thread and return self."""
        if self._server is not None:
            return self
        self._stop_event.clear()
        server = SimServer((self.host, self.port), self, self.tls)
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
            shutdown_socket(conn)
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
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

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
                check_shape(shape)
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

    @property
    def max_task_in_flight(self) -> int:
        """The most requests for one task handled at the same time (1: single-flight)."""
        with self.lock:
            return self._max_task_in_flight

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
            self._max_task_in_flight = max(self._task_in_flight.values(), default=0)

    # -- request handling (called from handler threads) --------------------------------

    def _register(self, conn: socket.socket) -> None:
        with self.lock:
            stopping = self._stop_event.is_set()
            if not stopping:
                self._connections.add(conn)
        if stopping:
            shutdown_socket(conn)

    def _unregister(self, conn: socket.socket) -> None:
        with self.lock:
            self._connections.discard(conn)

    def _handle(self, h: SimHandler, method: str) -> None:
        arrived = time.monotonic()
        task_id: str | None = None
        with self.lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._cond.notify_all()
        try:
            discard_request_body(h)
            token = h.headers.get("access-token")
            match = _ROUTE.match(urlsplit(h.path).path)
            task_id = unquote(match.group(2)) if match else None
            with self.lock:
                if task_id is not None:
                    self._task_in_flight[task_id] += 1
                    self._max_task_in_flight = max(
                        self._max_task_in_flight, self._task_in_flight[task_id]
                    )
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
                        clock_at=self._clock(),
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
                if task_id is not None and self._task_in_flight[task_id] > 0:
                    self._task_in_flight[task_id] -= 1
                    if not self._task_in_flight[task_id]:
                        del self._task_in_flight[task_id]
                self._cond.notify_all()

    def _decide(self, method: str, routed: bool, task_id: str | None, token: str | None) -> Reply:
        """Pick the answer; called with the lock held."""
        if method != "GET":
            return Reply(405, errors_body("Method Not Allowed"), headers={"Allow": "GET"})
        if not routed or task_id is None:
            return Reply(404, errors_body("Not Found"))
        if self.rate_limit is not None:
            now = self._clock()
            if self._level_at is not None:
                self._level = max(0.0, self._level - (now - self._level_at) * self.rate_limit)
            self._level_at = now
            if self._level + 1 > self.bucket_capacity + _EPSILON:
                self._throttled += 1
                headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
                return Reply(429, errors_body("Too Many Requests"), headers=headers)
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
            return Reply(401, json_body({"error": "Invalid access token"}))
        task = self._tasks.get(task_id)
        if task is None:
            return Reply(404, errors_body("task not found"))
        return self._task_answer(task)

    def _task_answer(self, task: SimTask) -> Reply:
        if task.progress is not None:
            try:
                task.progress(task, self.elapsed())
            except Exception as exc:  # a broken callback must not kill the handler thread
                return Reply(500, errors_body(f"progress callback failed: {exc!r}"))
        shape = self._shapes.get(task.task_id, self.shape)
        return Reply(200, json_body(self._shaped(task, shape)))

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
                    answer.body = errors_body("task not found")
                else:
                    answer.body = self._task_answer(task).body
            else:
                answer.body = errors_body(phrase(reply.status))
        return answer

    def _send(self, h: SimHandler, answer: Reply, method: str) -> None:
        chunks: Iterable[bytes]
        if answer.body_size is not None:
            size = max(0, answer.body_size)
            chunks = padding(size)
        else:
            body = answer.body or b""
            size = len(body)
            step = 1 if answer.drip > 0 else CHUNK
            chunks = (body[i : i + step] for i in range(0, size, step))
        given = {k.lower() for k in answer.headers}
        head: list[tuple[str, str]] = []
        if "content-type" not in given:
            head.append(("Content-Type", answer.content_type))
        head += answer.headers.items()
        chunked = answer.chunked and h.request_version == "HTTP/1.1"
        if method == "HEAD" or not answer.chunked:
            if "content-length" not in given:
                head.append(("Content-Length", "0" if method == "HEAD" else str(size)))
        elif chunked:
            head.append(("Transfer-Encoding", "chunked"))
        else:  # close-delimited body for HTTP/1.0 clients
            head.append(("Connection", "close"))
            h.close_connection = True
        if answer.head_drip > 0:
            if not self._drip_head(h, answer, head):
                return
        else:
            h.send_response(answer.status)
            for name, value in head:
                h.send_header(name, value)
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

    def _drip_head(self, h: SimHandler, answer: Reply, head: list[tuple[str, str]]) -> bool:
        """Send the status line and headers one byte every ``head_drip`` seconds; False
        when the client left or the simulator stops first."""
        lines = [f"{h.protocol_version} {answer.status} {phrase(answer.status)}"]
        lines += [f"{name}: {value}" for name, value in head]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            for i in range(len(data)):
                h.wfile.write(data[i : i + 1])
                if i + 1 < len(data) and self._stop_event.wait(answer.head_drip):
                    h.close_connection = True
                    return False
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            h.close_connection = True
            return False
        return True
