"""Running the WSGI app off the event loop: the environ of a request, the call, the workers.

The loop never runs the app (docs/design.md, "The HTTP server"): a complete request goes
to a small pool of daemon threads, which call the app, collect its answer and hand it back.
Daemon threads, not ``ThreadPoolExecutor``: that one joins its threads at interpreter exit,
so a request in flight would delay the exit that SIGTERM asks for.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

    from _typeshed import OptExcInfo

__all__ = ["Answer", "Workers", "build_environ", "call_app"]

_INTERNAL_ERROR = b"Internal Server Error\n"


@dataclass(frozen=True)
class Answer:
    """What the app answered: status code and reason, headers, the whole body.

    The body is kept as the chunks the app returned, never joined: a chunk shared by
    several answers (the rendered /metrics of one moment) stays one object in memory
    however many connections still have it to send (docs/design.md, "Rules for abuse:
    the server"). ``keep`` is what the app returned, held until the answer is sent, so
    that what keeps a shared chunk findable lives exactly as long.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes | tuple[bytes, ...]
    keep: object = None

    @property
    def chunks(self) -> tuple[bytes, ...]:
        """The body's chunks, in order."""
        return (self.body,) if isinstance(self.body, bytes) else self.body

    @property
    def size(self) -> int:
        """Bytes of body."""
        return sum(map(len, self.chunks))


class _LogStream(io.TextIOBase):
    """``wsgi.errors``: what an application writes there goes to the logger, line by line."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self._logger.error("application error output", extra={"err": line})
        return len(text)


def build_environ(
    request: h11.Request,
    body: bytes,
    *,
    server: tuple[str, int],
    client: tuple[str, int],
    https: bool,
    logger: logging.Logger,
    software: str,
) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of a request h11 parsed."""
    target = request.target.decode("iso-8859-1")
    path, _, query = target.partition("?")
    if "://" in path:  # absolute-form: keep the path only
        path = urllib.parse.urlsplit(path).path or "/"
    env: dict[str, Any] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_NAME": server[0] or "localhost",
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "SERVER_SOFTWARE": software,
        "SCRIPT_NAME": "",
        "REQUEST_METHOD": request.method.decode("ascii"),
        "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"),
        "QUERY_STRING": query,
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if https else "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": _LogStream(logger),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if https:
        env["HTTPS"] = "on"
    for raw_name, raw_value in request.headers:  # h11 gives lower-case names
        name = raw_name.decode("ascii")
        if "_" in name:  # would be indistinguishable from "-" in the CGI name
            continue
        value = raw_value.decode("iso-8859-1").strip()
        if name == "content-type":
            env["CONTENT_TYPE"] = value
            continue
        if name in ("content-length", "transfer-encoding"):
            continue
        key = "HTTP_" + name.replace("-", "_").upper()
        env[key] = f"{env[key]},{value}" if key in env else value
    return env


def call_app(app: WSGIApplication, environ: dict[str, Any], logger: logging.Logger) -> Answer:
    """Call the app and collect its answer; an exception becomes a logged 500, no traceback."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2]) if exc_info[1] else RuntimeError()
        started[:] = [(status, list(headers))]
        return _no_write

    try:
        result = app(environ, start_response)
        try:
            body = tuple(c if type(c) is bytes else bytes(c) for c in result if c)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        if not started:
            raise RuntimeError("the application did not call start_response")
        status, headers = started[0]
        code, _, reason = status.partition(" ")
        return Answer(int(code), reason, headers, body, keep=result)
    except Exception as exc:
        logger.error(
            "error handling request",
            extra={
                "method": environ.get("REQUEST_METHOD", "?"),
                "path": environ.get("PATH_INFO", "?"),
                "err": f"{type(exc).__name__}: {exc}",
            },
        )
        return Answer(
            500,
            "Internal Server Error",
            [("Content-Type", "text/plain; charset=utf-8")],
            _INTERNAL_ERROR,
        )


def _no_write(data: bytes) -> object:
    raise RuntimeError("the write() callable is not supported; return the body instead")


class Workers:
    """A fixed set of daemon threads running submitted calls in order."""

    def __init__(self, count: int, name: str, logger: logging.Logger) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._logger = logger
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
            for i in range(count)
        ]
        self._started = False

    def start(self) -> None:
        """Start the threads (once)."""
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on a worker thread."""
        self._queue.put(fn)

    def stop(self) -> None:
        """Let the threads end after what they run now; does not wait for them."""
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            if fn is None:
                return
            try:
                fn()
            except Exception as exc:  # call_app catches the app's; this is a bug of ours
                self._logger.error("worker error", extra={"err": f"{type(exc).__name__}: {exc}"})
