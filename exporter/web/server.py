"""The exporter's HTTP(S) server: asyncio accepts and holds connections, h11 parses them,
a few worker threads run the WSGI app (docs/design.md, "The HTTP server").

- Thousands of idle or slow connections cost a socket and a little memory each, not a
  thread; the app keeps answering ``/metrics`` and ``/-/healthy`` (probes have their own
  workers, so scrapes waiting on the API cannot hold them up).
- Every phase of a connection has a deadline (``exporter.web.connection``); kept-alive
  connections close after ``idle_timeout`` (2 minutes) without a request.
- At ``max_connections`` (by default what the open-files limit leaves), a new connection
  makes room by closing the longest-idle one; the server never answers 503 for it.
- TLS: the first bytes are peeked off the loop's accept path; a TLS ClientHello gets the
  handshake (with the ``SSLContext`` of the web configuration in force at that moment, so
  rotated certificates apply to new connections; bounded by ``ssl_handshake_timeout``),
  plain HTTP gets a plain ``400``. mTLS and the SAN allow-list apply per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import h11

from exporter import __version__
from exporter.web.auth import AuthPool, BasicAuthVerifier, Check
from exporter.web.connection import SHEDDABLE, Connection, Phase
from exporter.web.listen import bind, parse_listen_address
from exporter.web.middleware import (
    REALM,
    WebConfigMiddleware,
    rate_limited,
    too_many_checks,
    unauthorized,
    unsent_full,
)
from exporter.web.ratelimit import RequestLimiter
from exporter.web.taskapi import ANSWER_LATER, AnswerLater
from exporter.web.webconfig import RateLimit, WebConfigWatcher
from exporter.web.wsgi import Answer, Workers, build_environ, call_app

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["REALM", "ExporterServer", "default_max_connections", "parse_listen_address"]

LOGGER_NAME = "exporter.web.server"
SERVER_SOFTWARE = f"shoplazza-upload-exporter/{__version__}"
_DRAIN_SECONDS = 0.5
_ACCEPT_BATCH = 64
_ACCEPT_BACKOFF_SECONDS = 0.05
_WARN_EVERY_SECONDS = 10.0
_RESERVED_FILES = 128  # for the API client, the state file, logs
#: Bytes of unfinished requests (heads and bodies being read), for the whole process, above
#: which a connection holding more than 16 KiB of them is refused.
INCOMING_BUDGET = 16 << 20
#: Seconds before wrong credentials (or a full queue of password checks) are answered.
REFUSAL_DELAY = 1.0
#: Bytes of answers written but not yet read by their clients, for the whole process,
#: above which new requests wait (docs/design.md, "Rules for abuse: the server").
UNSENT_BUDGET = 48 << 20


def default_max_connections() -> int:
    """The open-files limit less a reserve for everything else the process opens."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(int(soft) - _RESERVED_FILES, 16)


class ExporterServer:
    """The exporter's HTTP(S) server; binds at construction, serves after ``start()``.

    ``listen_address`` is one ``[HOST]:PORT`` or several (one listening socket each);
    ``sockets`` are listening sockets made elsewhere (systemd's), used instead.
    ``probe_paths`` are the request paths answered by the probes' own workers.
    """

    def __init__(
        self,
        app: WSGIApplication,
        listen_address: str | Sequence[str],
        web_config_file: str | None = None,
        *,
        sockets: Sequence[socket.socket] = (),
        probe_paths: Iterable[str] = ("/-/healthy", "/-/ready"),
        logger: logging.Logger | None = None,
        request_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        max_connections: int | None = None,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
        unsent_budget: int = UNSENT_BUDGET,
        auth_pool: AuthPool | None = None,
        refusal_delay: float = REFUSAL_DELAY,
        incoming_budget: int = INCOMING_BUDGET,
    ) -> None:
        if request_timeout <= 0 or idle_timeout <= 0:
            raise ValueError("request_timeout and idle_timeout must be > 0")
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections or default_max_connections()
        self.software = SERVER_SOFTWARE
        self.stopping = False
        self._watcher = WebConfigWatcher(web_config_file, clock=clock) if web_config_file else None
        self.wsgi_app: WSGIApplication = (
            WebConfigMiddleware(app, self._watcher) if self._watcher is not None else app
        )
        self._probe_paths = frozenset(path.encode("ascii") for path in probe_paths)
        self._socks = list(sockets) or self._bind(
            [listen_address] if isinstance(listen_address, str) else listen_address
        )
        for sock in self._socks:
            sock.setblocking(False)
        self._addresses: list[tuple[str, int]] = [
            (str(name[0]), int(name[1])) for name in (sock.getsockname() for sock in self._socks)
        ]
        self.loop = asyncio.new_event_loop()
        self._workers = Workers(workers, "exporter-http", self.logger)
        self._probe_workers = Workers(2, "exporter-http-probe", self.logger)
        self._verifier = BasicAuthVerifier()
        self.auth_pool = auth_pool or AuthPool(self.logger)
        self._clock = clock
        # The rate_limit bucket of the web configuration in force (a change starts a new one).
        self._limit: tuple[RateLimit | None, RequestLimiter | None] = (None, None)
        self.unsent_budget = unsent_budget
        self.refusal_delay = refusal_delay
        self.incoming = 0
        self.incoming_budget = incoming_budget
        self.unsent = 0  # bytes held by answers not yet sent, each shared chunk once
        self._held: dict[int, list[Any]] = {}  # id(chunk): [chunk, holders]
        self._answers_held = 0
        # Requests waiting for room in the budget, oldest first, with their deadline timer.
        self._waiting: dict[Connection, tuple[dict[str, Any], asyncio.TimerHandle]] = {}
        self._conns: set[Connection] = set()
        self._local: dict[Connection, tuple[str, int]] = {}
        self._sheddable: dict[Connection, None] = {}  # insertion order: longest idle first
        self._busy = 0
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._quiet = threading.Event()  # stopping, and no answer under way
        self._loop_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = -1e9
        # ?wait= requests of the task API, answered from the loop when they end.
        self._waits: set[asyncio.Task[tuple[int, str, bytes]]] = set()

    @staticmethod
    def _bind(addresses: Sequence[str]) -> list[socket.socket]:
        """One listening socket per address, all or none (ValueError, OSError)."""
        parsed = [parse_listen_address(address) for address in addresses]
        if not parsed:
            raise ValueError("no listen address")
        socks: list[socket.socket] = []
        try:
            for host, port in parsed:
                socks.append(bind(host, port))
        except OSError:
            for sock in socks:
                sock.close()
            raise
        return socks

    @property
    def address(self) -> tuple[str, int]:
        """The first bound host and port (port 0 resolved)."""
        return self._addresses[0]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound host and port, in the order of the listen addresses."""
        return list(self._addresses)

    @property
    def tls(self) -> bool:
        """True if the current web configuration serves TLS."""
        return self._watcher is not None and self._watcher.current().tls is not None

    @property
    def web_config(self) -> WebConfigWatcher | None:
        """The web configuration watcher, if ``--web.config.file`` was given."""
        return self._watcher

    @property
    def answers_unsent(self) -> int:
        """Answers written but not yet read by their clients (held in the budget)."""
        return self._answers_held

    @property
    def requests_waiting(self) -> int:
        """Requests waiting for room in the budget of unsent bytes."""
        return len(self._waiting)

    @property
    def active_connections(self) -> int:
        """Connections held right now (in a handshake, idle, reading or answering)."""
        return len(self._conns)

    def start(self) -> None:
        """Serve in a daemon thread and return at once."""
        thread = threading.Thread(target=self.serve_forever, name="exporter-http", daemon=True)
        self._thread = thread
        thread.start()

    def serve_forever(self) -> None:
        """Run the event loop until ``shutdown()`` and the answers under way are written."""
        with self._lock:
            if self._started or self._closed:
                raise RuntimeError("server already started or shut down")
            self._started = True
        self._workers.start()
        self._probe_workers.start()
        self.auth_pool.start()
        loop = self.loop
        loop.set_exception_handler(self._loop_error)
        try:
            for sock in self._socks:
                loop.add_reader(sock.fileno(), self._accept, sock)
            loop.run_forever()
        finally:
            for conn in list(self._conns):
                conn.close_now()
            loop.run_until_complete(asyncio.sleep(0))  # let the transports close
            loop.close()
            self._loop_done.set()

    def shutdown(self) -> None:
        """Stop accepting, close idle connections, give answers under way up to 0.5 s."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if not started:
            for sock in self._socks:
                sock.close()
            self.loop.close()
            return
        try:
            self.loop.call_soon_threadsafe(self._stop)
        except RuntimeError:  # the loop already ended
            return
        self._quiet.wait(_DRAIN_SECONDS)
        self._workers.stop()
        self._probe_workers.stop()
        self.auth_pool.stop()
        if self._quiet.is_set():
            self._loop_done.wait(0.5)

    def __enter__(self) -> ExporterServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- on the loop -----------------------------------------------------------------------

    def _stop(self) -> None:
        self.stopping = True
        for sock in self._socks:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for conn in list(self._conns):
            if conn.phase is not Phase.BUSY:
                conn.close_now()
        for task in list(self._waits):  # waits answer at once (503)
            task.cancel()
        self._check_quiet()

    def _check_quiet(self) -> None:
        if self.stopping and self._busy == 0:
            self._quiet.set()
            if not self._conns:
                self.loop.stop()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        fields = {"err": f"{type(exc).__name__}: {exc}" if exc else context.get("message")}
        if isinstance(exc, OSError | ssl.SSLError | asyncio.CancelledError):
            self.logger.debug("connection error", extra=fields)
        else:
            self.logger.error("event loop error", extra=fields)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_SECONDS:
            self._last_warning = now
            self.logger.warning(
                message,
                extra={"connections": len(self._conns), "max_connections": self.max_connections},
            )

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if not self._shed():
                        self._warn(f"cannot accept connections: {exc.strerror}")
                    self._pause_accepting(listener)  # the shed socket closes on the next turn
                elif exc.errno != errno.ECONNABORTED:
                    self.logger.error("accept failed", extra={"err": str(exc)})
                return
            if len(self._conns) >= self.max_connections and not self._shed():
                self._warn("every connection is answering a request, refusing new ones")
                sock.close()
                continue
            self._start_connection(sock, addr)

    def _pause_accepting(self, listener: socket.socket) -> None:
        """The process is out of file descriptors: let closing sockets go first."""
        fd = listener.fileno()
        self.loop.remove_reader(fd)

        def resume() -> None:
            if not self.stopping:
                self.loop.add_reader(fd, self._accept, listener)

        self.loop.call_later(_ACCEPT_BACKOFF_SECONDS, resume)

    def _shed(self) -> bool:
        """Close the longest-idle connection (else the slowest reader); False if none."""
        victim = next(iter(self._sheddable), None)
        if victim is None:
            slow = [c for c in self._conns if c.phase in (Phase.HEAD, Phase.BODY)]
            victim = min(slow, key=lambda c: c.since, default=None)
        if victim is None:
            return False
        self._warn("too many connections, closing the longest idle ones")
        victim.close_now()
        return True

    def phase_changed(self, conn: Connection, old: Phase, new: Phase) -> None:
        """Book-keeping for shedding, draining and counting (called by the connection)."""
        if old in SHEDDABLE:
            self._sheddable.pop(conn, None)
        if new in SHEDDABLE:
            self._sheddable[conn] = None
        if old is Phase.BUSY:
            self._busy -= 1
        elif new is Phase.BUSY:
            self._busy += 1
        if new is Phase.CLOSED:
            self._conns.discard(conn)
            self._local.pop(conn, None)
        if self.stopping:
            self._check_quiet()

    def _start_connection(self, sock: socket.socket, addr: Any) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = (str(addr[0]), int(addr[1]))
        context: ssl.SSLContext | None = None
        sans: tuple[str, ...] = ()
        if self._watcher is not None:
            config, context = self._watcher.snapshot()
            sans = config.tls.client_allowed_sans if config.tls else ()
        conn = Connection(self, client, self.loop.time(), allowed_sans=sans)
        if len(self._socks) > 1:  # which listener took it, for SERVER_NAME and SERVER_PORT
            with contextlib.suppress(OSError):
                self._local[conn] = sock.getsockname()[:2]
        self._conns.add(conn)
        self._sheddable[conn] = None
        if context is None:
            self._connect(conn, sock, None)
            return
        fd = sock.fileno()

        def cancel() -> None:
            self.loop.remove_reader(fd)
            sock.close()

        conn.cancel_pending = cancel
        self.loop.add_reader(fd, self._peek, conn, sock, context)

    def _peek(self, conn: Connection, sock: socket.socket, context: ssl.SSLContext) -> None:
        """The first bytes decide: a TLS handshake record, or plain HTTP on the TLS port."""
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            first = b""
        self.loop.remove_reader(sock.fileno())
        if not first:
            conn.close_now()
            return
        if first == b"\x16":
            self._connect(conn, sock, context)
        elif first.isalpha():
            conn.plain_on_tls = True
            self._connect(conn, sock, None)
        else:
            conn.close_now()

    def _connect(
        self, conn: Connection, sock: socket.socket, context: ssl.SSLContext | None
    ) -> None:
        remaining = max(conn.accepted + self.request_timeout - self.loop.time(), 0.01)
        if context is None:
            coro = self.loop.connect_accepted_socket(lambda: conn, sock)
        else:
            coro = self.loop.connect_accepted_socket(
                lambda: conn,
                sock,
                ssl=context,
                ssl_handshake_timeout=remaining,
                ssl_shutdown_timeout=min(self.request_timeout, 5.0),
            )
        task = self.loop.create_task(coro)

        def cancel() -> None:
            task.cancel()

        conn.cancel_pending = cancel
        task.add_done_callback(lambda t: self._connected(conn, t))

    def _connected(self, conn: Connection, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            conn.close_now()
            return
        exc = task.exception()
        if exc is not None:
            if conn.transport is None:
                reason = getattr(exc, "reason", None) or exc
                self.logger.debug(
                    "TLS handshake failed", extra={"client": conn.client[0], "err": str(reason)}
                )
                conn.cancel_pending = None
                conn.close_now()
            return

    def _answer_later(self, conn: Connection, answer: Answer, later: AnswerLater) -> None:
        """Run a waiting request's coroutine on the loop (``?wait=`` of the task API): it
        holds no worker thread (docs/task-api.md). The app's headers stay."""
        headers = [(n, v) for n, v in answer.headers if n.lower() != "content-length"]
        task = self.loop.create_task(later())
        self._waits.add(task)

        def done(task: asyncio.Task[tuple[int, str, bytes]]) -> None:
            self._waits.discard(task)
            if task.cancelled():  # shutting down: the client may ask again
                reply = Answer(503, "Service Unavailable", headers, b'{"error": "shutting down"}')
            elif (exc := task.exception()) is not None:
                self.logger.error("error answering a wait", extra={"err": repr(exc)})
                reply = Answer(500, "Internal Server Error", headers, b'{"error": "internal"}')
            else:
                status, reason, body = task.result()
                reply = Answer(status, reason, headers, body)
            conn.respond(reply)

        task.add_done_callback(done)

    def dispatch(self, conn: Connection, request: h11.Request, body: bytes) -> None:
        """Hand a complete request to the workers; the answer is written on the loop.

        With basic auth on, the credentials are checked first, here: known ones (right or
        wrong) from the cache at once, others on the bcrypt pool, whose bounded queue
        answers 429 when full; a wrong password never takes a worker (docs/design.md,
        "Rules for abuse: the server"). Probes then go to their own workers; anything else
        waits while the answers not yet sent exceed the budget.
        """
        environ = build_environ(
            request,
            body,
            server=self._local.get(conn, self._addresses[0]),
            client=conn.client,
            https=conn.https,
            logger=self.logger,
            software=self.software,
        )
        probe = request.target.split(b"?", 1)[0] in self._probe_paths
        config = self._watcher.current() if self._watcher is not None else None
        if config is None:
            self._admit(conn, environ, probe)
            return
        # exporter-toolkit's order: the rate limit counts every request, then basic auth
        # for every path but auth_excluded_paths (docs/web.md).
        limiter = self._limiter(config.rate_limit)
        if limiter is not None and not limiter.allow():
            self._refuse(conn, rate_limited(config.headers, limiter.retry_after()))
            return
        if not config.needs_auth(environ.get("PATH_INFO") or "/"):
            self._admit(conn, environ, probe)
            return
        verdict = self._verifier.lookup(config.basic_auth_users, environ.get("HTTP_AUTHORIZATION"))
        if isinstance(verdict, Check):
            loop = self.loop

            def check() -> None:
                user = self._verifier.run(verdict)
                with contextlib.suppress(RuntimeError):  # the loop has ended
                    loop.call_soon_threadsafe(self._checked, conn, environ, probe, user)

            if not self.auth_pool.submit(conn.client[0], check):
                self._refuse(conn, too_many_checks(config.headers), self.refusal_delay)
            return
        self._checked(conn, environ, probe, verdict)

    def _checked(
        self, conn: Connection, environ: dict[str, Any], probe: bool, user: str | None
    ) -> None:
        if conn.phase is not Phase.BUSY:
            return  # closed meanwhile
        if user is None:
            config = self._watcher.current() if self._watcher is not None else None
            given = "HTTP_AUTHORIZATION" in environ  # wrong, not missing: the client waits
            answer = unauthorized(config.headers if config else {})
            self._refuse(conn, answer, self.refusal_delay if given else 0.0)
            return
        environ["REMOTE_USER"] = user
        environ.pop("HTTP_AUTHORIZATION", None)
        self._admit(conn, environ, probe)

    def _limiter(self, limit: RateLimit | None) -> RequestLimiter | None:
        """The bucket of ``limit`` (the loop's thread only: no lock needed)."""
        if self._limit[0] != limit:
            bucket = RequestLimiter(limit.interval, limit.burst, self._clock) if limit else None
            self._limit = (limit, bucket)
        return self._limit[1]

    def _refuse(self, conn: Connection, answer: Answer, delay: float = 0.0) -> None:
        """Answer without the app, on a later turn of the loop (no recursion through
        pipelined requests). Refused credentials are answered after ``delay``: a client
        guessing passwords then sends one request per connection and second, not as many
        as the loop can parse (docs/design.md, "Rules for abuse: the server")."""
        if delay > 0:
            self.loop.call_later(delay, conn.respond, answer)
        else:
            self.loop.call_soon(conn.respond, answer)

    def _admit(self, conn: Connection, environ: dict[str, Any], probe: bool) -> None:
        """Run the request now, or (not a probe, budget spent) when answers have drained."""
        if probe or (self.unsent < self.unsent_budget and not self._waiting):
            self._run(conn, environ, probe)
            return
        timer = self.loop.call_later(self.request_timeout, self._waited_too_long, conn)
        self._waiting[conn] = (environ, timer)

    def _waited_too_long(self, conn: Connection) -> None:
        if self._waiting.pop(conn, None) is not None and conn.phase is Phase.BUSY:
            self._warn("answers not read by their clients fill the budget, refusing requests")
            config = self._watcher.current() if self._watcher is not None else None
            conn.respond(unsent_full(config.headers if config else {}))

    def _admit_waiting(self) -> None:
        while self._waiting and self.unsent < self.unsent_budget:
            conn = next(iter(self._waiting))
            environ, timer = self._waiting.pop(conn)
            timer.cancel()
            if conn.phase is Phase.BUSY:
                self._run(conn, environ, False)

    def hold(self, chunks: tuple[bytes, ...]) -> None:
        """Count an answer's chunks as unsent; a chunk several answers share counts once."""
        self._answers_held += 1
        for chunk in chunks:
            entry = self._held.get(id(chunk))
            if entry is None:
                self._held[id(chunk)] = [chunk, 1]
                self.unsent += len(chunk)
            else:
                entry[1] += 1

    def release(self, chunks: tuple[bytes, ...]) -> None:
        """An answer is sent (or dropped): its chunks no longer count once nobody holds them."""
        self._answers_held -= 1
        for chunk in chunks:
            entry = self._held[id(chunk)]
            entry[1] -= 1
            if entry[1] == 0:
                del self._held[id(chunk)]
                self.unsent -= len(chunk)
        if self._waiting:
            self._admit_waiting()

    def _run(self, conn: Connection, environ: dict[str, Any], probe: bool) -> None:
        loop = self.loop

        def run() -> None:
            answer = call_app(self.wsgi_app, environ, self.logger)
            later = environ.get(ANSWER_LATER)
            with contextlib.suppress(RuntimeError):  # the loop has ended
                if later is not None and answer.status == 200:
                    loop.call_soon_threadsafe(self._answer_later, conn, answer, later)
                else:
                    loop.call_soon_threadsafe(conn.respond, answer)

        (self._probe_workers if probe else self._workers).submit(run)
