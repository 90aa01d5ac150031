"""One HTTP/1.1 connection on the event loop: h11 parses, a deadline bounds every phase.

Phases (docs/design.md, "The HTTP server")::

    NEW  --first byte-->  HEAD  --head parsed-->  BODY  --body read-->  BUSY (app in a worker)
     ^ accepted            | request_timeout       | request_timeout      |
     | (TLS: after the     v                       v                      v answer written
     |  handshake)        close                  close              IDLE (keep-alive) or CLOSING

``NEW`` has a deadline of ``request_timeout`` from the accept (the TLS handshake included),
``IDLE`` one of ``idle_timeout`` from the last answer, ``HEAD`` and ``BODY`` one of
``request_timeout`` from their first byte, so a slowloris cannot hold a connection by
trickling bytes. ``BUSY`` has no read deadline (reading is paused, pipelined requests wait
in h11's buffer); an answer the client does not read is dropped after ``request_timeout``
without progress. ``NEW`` and ``IDLE`` (and ``CLOSING``) connections are the first the
server sheds when it runs out of room; ``BUSY`` ones are never shed.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import h11

from exporter.web.wsgi import Answer

__all__ = ["MAX_HEADERS", "MAX_HEAD_BYTES", "MAX_REQUEST_LINE", "Connection", "Hub", "Phase"]

MAX_REQUEST_LINE = 65536
MAX_HEAD_BYTES = 96 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 1 << 20
#: An answer is written a slice at a time, the next when the client has read the last:
#: what a connection holds beyond the answer itself stays under two slices.
WRITE_SLICE = 16 * 1024
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1 << 20
_CLIENT_ERRORS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    505: "HTTP Version Not Supported",
}
_MALFORMED_LINE = "malformed request line (HTTP/0.9 requests are not supported)\n"
PLAIN_ON_TLS_BODY = "Client sent an HTTP request to an HTTPS server.\r\n"


class Phase(enum.Enum):
    """Where a connection is; see the module docstring."""

    NEW = "new"
    IDLE = "idle"
    HEAD = "head"
    BODY = "body"
    BUSY = "busy"
    CLOSING = "closing"
    CLOSED = "closed"


_READING = frozenset({Phase.HEAD, Phase.BODY})
#: A connection may hold this much of an unfinished request whatever the others hold.
INCOMING_FREE = 16 * 1024

#: Phases the server may shed, first choice, in the order they were entered.
SHEDDABLE = frozenset({Phase.NEW, Phase.IDLE, Phase.CLOSING})


class Hub(Protocol):
    """What a connection needs from its server."""

    loop: asyncio.AbstractEventLoop
    request_timeout: float
    idle_timeout: float
    logger: logging.Logger
    stopping: bool
    software: str
    incoming: int  # bytes of unfinished requests, all connections
    incoming_budget: int

    def phase_changed(self, conn: Connection, old: Phase, new: Phase) -> None:
        """Book-keeping: shedding order, busy count, forgetting closed connections."""

    def dispatch(self, conn: Connection, request: h11.Request, body: bytes) -> None:
        """Run the app for a complete request; the answer comes back via ``respond``."""

    def hold(self, chunks: tuple[bytes, ...]) -> None:
        """An answer's chunks wait to be sent (the process-wide budget of unsent bytes)."""

    def release(self, chunks: tuple[bytes, ...]) -> None:
        """Those chunks are sent, or their connection is gone."""


def error_response(status: int, text: str) -> bytes:
    """A complete ``Connection: close`` answer for a request that cannot be served."""
    body = text.encode("utf-8", "replace")
    reason = _CLIENT_ERRORS.get(status, "Bad Request")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


def san_allowed(peer: dict[str, Any], allowed: Iterable[str]) -> bool:
    """True if a subjectAltName of the verified peer certificate is in ``allowed``."""
    wanted = {_normalize_san(s) for s in allowed}
    for kind, value in peer.get("subjectAltName", ()):
        if kind == "IP Address":
            value = _normalize_san(value)
        if value in wanted:
            return True
    return False


def _normalize_san(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _slices(chunks: tuple[bytes, ...]) -> Iterator[memoryview]:
    """The chunks in pieces of at most :data:`WRITE_SLICE` bytes, none copied."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), WRITE_SLICE):
            yield view[start : start + WRITE_SLICE]


def _smuggling(request: h11.Request) -> bool:
    """Both framings at once (RFC 9112 section 6.1): h11 would read the body as chunked and
    keep the connection, letting whatever follows the chunks run as a request of its own
    (docs/design.md, "Rules for abuse: the server"). Such a request is refused and its
    connection closed, so nothing after it runs."""
    names = {name for name, _ in request.headers}
    return b"content-length" in names and b"transfer-encoding" in names


class Connection(asyncio.Protocol):
    """The state of one client connection; all methods run on the event loop."""

    def __init__(
        self,
        hub: Hub,
        client: tuple[str, int],
        accepted: float,
        *,
        allowed_sans: tuple[str, ...] = (),
        plain_on_tls: bool = False,
    ) -> None:
        self.hub = hub
        self.client = client
        self.accepted = accepted
        self.since = accepted  # when the current phase began (loop time)
        self.phase = Phase.NEW
        self.https = False
        self.plain_on_tls = plain_on_tls
        self.cancel_pending: Callable[[], None] | None = None  # before a transport exists
        self.transport: asyncio.Transport | None = None
        self._sans = allowed_sans
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._line = bytearray()
        self._line_done = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._request: h11.Request | None = None
        self._sent_continue = False
        self._lingered = 0
        self._incoming = 0  # bytes of the request being read, in hub.incoming
        self._sending: Answer | None = None  # held (hub.hold) until written and drained
        self._slices: Iterator[memoryview] | None = None
        self._write_paused = False
        self._arm(accepted + hub.request_timeout)

    # -- phases and deadlines -------------------------------------------------------------

    def _set_phase(self, phase: Phase, deadline: float | None) -> None:
        old = self.phase
        if old is Phase.CLOSED:
            return
        self.phase = phase
        self.since = self.hub.loop.time()
        if self._incoming and phase not in _READING:  # complete, refused or closed
            self.hub.incoming -= self._incoming
            self._incoming = 0
        self._arm(deadline)
        if old is not phase:
            self.hub.phase_changed(self, old, phase)

    def _arm(self, deadline: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.hub.loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        reasons = {
            Phase.NEW: "no request in time",
            Phase.IDLE: "idle",
            Phase.HEAD: "request head not received in time",
            Phase.BODY: "request body not received in time",
        }
        if self.phase in reasons:
            self._debug("connection closed", reason=reasons[self.phase])
        self.close_now()

    def close_now(self) -> None:
        """Close at once, whatever is under way (shedding, shutdown, deadlines)."""
        if self.phase is Phase.CLOSED:
            return
        self._set_phase(Phase.CLOSED, None)
        if self._write_timer is not None:
            self._write_timer.cancel()
        if self._sending is not None:
            self.hub.release(self._sending.chunks)
            self._sending = self._slices = None
        if self.transport is not None:
            self.transport.abort()
        elif self.cancel_pending is not None:
            self.cancel_pending()

    def _debug(self, message: str, **fields: object) -> None:
        logger = self.hub.logger
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(message, extra={"client": self.client[0], **fields})

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A plain connection, or a TLS one whose handshake succeeded."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_SLICE, low=0)
        self.cancel_pending = None
        if self.phase is Phase.CLOSED:
            transport.abort()
            return
        if self.plain_on_tls:  # plain HTTP on the TLS port: say so, in plain
            transport.write(error_response(400, PLAIN_ON_TLS_BODY))
            self._linger()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        self.https = ssl_object is not None
        if self._sans and not san_allowed(transport.get_extra_info("peercert") or {}, self._sans):
            self.hub.logger.info(
                "client certificate has no allowed SAN, closing", extra={"client": self.client[0]}
            )
            self.close_now()
            return
        if self.hub.stopping:
            self.close_now()

    def data_received(self, data: bytes) -> None:
        """Bytes from the client: checked for the request line, then fed to h11."""
        if self.phase is Phase.CLOSING:
            self._lingered += len(data)
            if self._lingered > _LINGER_BYTES:
                self.close_now()
            return
        if self.phase is Phase.CLOSED:
            return
        if self.phase is Phase.NEW:  # the deadline from the accept stays
            self._set_phase(Phase.HEAD, self.accepted + self.hub.request_timeout)
        elif self.phase is Phase.IDLE:
            self._set_phase(Phase.HEAD, self.hub.loop.time() + self.hub.request_timeout)
        if self.phase in _READING and not self._count_incoming(len(data)):
            return
        if self.phase is Phase.HEAD and not self._line_done and not self._check_line(data):
            return
        self._h11.receive_data(data)
        self._process()

    def _count_incoming(self, size: int) -> bool:
        """Bytes of requests not yet complete are bounded for the whole process: over
        ``incoming_budget``, a connection holding more than :data:`INCOMING_FREE` of them
        is refused (probes and scrapes send a few hundred bytes, so they never are)."""
        hub = self.hub
        self._incoming += size
        hub.incoming += size
        if hub.incoming <= hub.incoming_budget or self._incoming <= INCOMING_FREE:
            return True
        status = 431 if self.phase is Phase.HEAD else 413
        self._fail(status, "too many bytes of unfinished requests in the server, retry later\n")
        return False

    def eof_received(self) -> bool:
        """The client half-closed: finish an answer under way, else close."""
        if self.phase is Phase.BUSY and not self.https:  # asyncio's TLS cannot half-close
            self._h11.receive_data(b"")
            return True  # keep the transport open to write the answer
        self.close_now()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is gone."""
        self.transport = None
        self.close_now()

    def pause_writing(self) -> None:
        """The client reads slower than we write: it gets ``request_timeout`` to catch up."""
        self._write_paused = True
        if self._write_timer is None:
            self._write_timer = self.hub.loop.call_later(
                self.hub.request_timeout, self._write_stalled
            )

    def resume_writing(self) -> None:
        """The client read everything written so far: write on."""
        self._write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._sending is not None:
            self._pump()

    def _write_stalled(self) -> None:
        self._write_timer = None
        self._debug("connection closed", reason="client does not read the answer")
        self.close_now()

    # -- reading a request ------------------------------------------------------------------

    def _check_line(self, data: bytes) -> bool:
        """Watch the request line as it arrives: too long is 414, one or two words 400.

        h11 waits for the whole head before it parses; an HTTP/0.9 line ("GET /") never
        gets one, so it is refused here as soon as its line ends.
        """
        start = 0
        while not self._line_done:
            end = data.find(b"\n", start)
            chunk = data[start:] if end < 0 else data[start:end]
            self._line += chunk[: MAX_REQUEST_LINE + 2 - len(self._line)]
            if len(self._line.rstrip(b"\r")) > MAX_REQUEST_LINE:
                self._fail(414, "request line too long\n")
                return False
            if end < 0:
                return True
            if self._line.strip():
                self._line_done = True
                if len(self._line.split()) < 3:
                    self._fail(
                        400, "malformed request line (HTTP/0.9 requests are not supported)\n"
                    )
                    return False
            else:
                self._line.clear()  # empty lines before a request line are allowed
            start = end + 1
        return True

    def _process(self) -> None:
        while self.phase in (Phase.HEAD, Phase.BODY):
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, f"{exc}\n")
                return
            if event is h11.NEED_DATA:
                if self._h11.they_are_waiting_for_100_continue and not self._sent_continue:
                    self._sent_continue = True
                    self._write(h11.InformationalResponse(status_code=100, headers=[]))
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if event.http_version not in (b"1.0", b"1.1"):
                    self._fail(505, "only HTTP/1.0 and HTTP/1.1 are supported\n")
                    return
                if len(event.headers) > MAX_HEADERS:
                    self._fail(431, f"more than {MAX_HEADERS} header fields\n")
                    return
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > MAX_HEAD_BYTES:  # h11 checks only a head still incomplete
                    self._fail(431, f"request head over {MAX_HEAD_BYTES} bytes\n")
                    return
                if _smuggling(event):
                    self._fail(400, "both Content-Length and Transfer-Encoding\n")
                    return
                self._request = event
                self._set_phase(Phase.BODY, self.hub.loop.time() + self.hub.request_timeout)
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > MAX_BODY_BYTES:
                    self._fail(413, f"request body over {MAX_BODY_BYTES} bytes\n")
                    return
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.close_now()
                return

    def _dispatch(self) -> None:
        request = self._request
        assert request is not None and self.transport is not None
        body = b"".join(self._body)
        self._body.clear()
        self._set_phase(Phase.BUSY, None)
        self.transport.pause_reading()
        self.hub.dispatch(self, request, body)

    def _fail(self, status: int, text: str) -> None:
        self._debug("bad request", status=status, err=text.strip())
        if self.transport is not None:
            self.transport.write(error_response(status, text))
        self._linger()

    # -- answering --------------------------------------------------------------------------

    def respond(self, answer: Answer) -> None:
        """Write the app's answer, then wait for the next request or close.

        The head goes out at once, the body a slice at a time as the client reads
        (:meth:`_pump`); the next request is read only once this answer is written and
        drained, so a client that does not read holds one answer, counted in the server's
        budget of unsent bytes (docs/design.md, "Rules for abuse: the server").
        """
        request = self._request
        if self.phase is not Phase.BUSY or self.transport is None or request is None:
            return  # closed meanwhile (shutdown, client gone)
        head = request.method == b"HEAD"
        headers = self._headers(answer, head)
        try:
            self._write(
                h11.Response(
                    status_code=answer.status,
                    headers=headers,
                    reason=answer.reason.encode("latin-1", "replace"),
                )
            )
        except h11.LocalProtocolError as exc:
            self.hub.logger.error("cannot send the answer", extra={"err": str(exc)})
            self.close_now()
            return
        with_body = not head and answer.status not in (204, 304)
        self._sending = answer
        self._slices = _slices(answer.chunks) if with_body else iter(())
        self.hub.hold(answer.chunks)
        self._pump()

    def _pump(self) -> None:
        """Write slices while the client keeps up; finish once all is written and read."""
        try:
            while self._slices is not None and not self._write_paused:
                piece = next(self._slices, None)
                if piece is None:
                    self._slices = None
                    self._write(h11.EndOfMessage())
                else:
                    # h11 takes any bytes-like data and copies the slice into bytes
                    self._write(h11.Data(data=piece))  # type: ignore[arg-type]
        except h11.LocalProtocolError as exc:
            self.hub.logger.error("cannot send the answer", extra={"err": str(exc)})
            self.close_now()
            return
        if self._slices is None and not self._write_paused and self._sending is not None:
            self._answered()

    def _answered(self) -> None:
        answer, request = self._sending, self._request
        assert answer is not None and request is not None and self.transport is not None
        self._sending = None
        self.hub.release(answer.chunks)
        self._debug(
            "request",
            method=request.method.decode("ascii", "replace"),
            path=request.target.decode("ascii", "replace"),
            status=answer.status,
            bytes=answer.size,
        )
        self._request = None
        if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
            self._linger()
            return
        self._h11.start_next_cycle()
        self._line.clear()
        self._line_done = False
        self._sent_continue = False
        self._body_size = 0
        self._set_phase(Phase.IDLE, self.hub.loop.time() + self.hub.idle_timeout)
        self.transport.resume_reading()
        if self._h11.trailing_data[0]:  # a pipelined request is already here
            self._set_phase(Phase.HEAD, self.hub.loop.time() + self.hub.request_timeout)
            self._process()

    def _headers(self, answer: Answer, head: bool) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = []
        length: str | None = None
        for name, value in answer.headers:
            lower = name.lower()
            if lower == "content-length":
                length = value
            elif lower not in ("connection", "transfer-encoding", "date", "server"):
                headers.append((name, value))
        if not head or length is None:
            length = str(answer.size) if answer.status not in (204, 304) else None
        if length is not None:
            headers.append(("Content-Length", length))
        headers.append(("Date", _http_date()))
        headers.append(("Server", self.hub.software))
        if self.hub.stopping:
            headers.append(("Connection", "close"))
        return headers

    def _write(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data and self.transport is not None:
            self.transport.write(data)

    def _linger(self) -> None:
        """Close after the answer; on TCP, read what the client still sends so it gets the
        answer rather than a reset."""
        transport = self.transport
        if transport is None or self.hub.stopping or not transport.can_write_eof():
            self._set_phase(Phase.CLOSED, None)
            if transport is not None:
                transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        deadline = self.hub.loop.time() + min(_LINGER_SECONDS, self.hub.request_timeout)
        self._set_phase(Phase.CLOSING, deadline)
