"""The simulator's HTTP plumbing: its server, its request handler and body helpers."""

from __future__ import annotations

import contextlib
import http
import json
import socket
import socketserver
import ssl
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from exporter.demo.simulator import Simulator

CHUNK = 64 * 1024


def json_body(obj: object) -> bytes:
    """``obj`` as compact JSON bytes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def errors_body(*messages: str) -> bytes:
    """A Shoplazza error body: ``{"errors": [...]}``."""
    return json_body({"errors": list(messages)})


def phrase(status: int) -> str:
    """The reason phrase of an HTTP status, or "Error"."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def padding(size: int) -> Iterator[bytes]:
    """Yield ``size`` bytes of ``{"pad": "xxx..."}`` (just ``x``s when too small) in chunks."""
    head, tail = b'{"pad": "', b'"}'
    if size < len(head) + len(tail):
        head, tail = b"", b""
    middle = size - len(head) - len(tail)
    block = b"x" * CHUNK
    pending = head
    while middle > 0:
        n = min(middle, CHUNK - len(pending))
        middle -= n
        chunk = pending + (block if n == CHUNK else block[:n])
        pending = b""
        if middle == 0 and len(chunk) + len(tail) <= CHUNK:
            chunk, tail = chunk + tail, b""
        yield chunk
    if pending or tail:
        yield pending + tail


class SimServer(ThreadingHTTPServer):
    """The simulator's threading HTTP server (one daemon thread a connection)."""

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], sim: Simulator, tls: ssl.SSLContext | None = None
    ) -> None:
        self.sim = sim
        self.tls = tls
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, SimHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, the handshake happens in the connection's own thread."""
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow in sandboxes.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that go away are normal here."""


class SimHandler(BaseHTTPRequestHandler):
    """Hands every request to its simulator; HTTP/1.1 with keep-alive."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"
    server_version = "ShoplazzaSimulator/1.0"
    timeout = 60.0  # idle keep-alive connections; stop() shuts them down anyway

    def version_string(self) -> str:
        return self.server_version

    @property
    def sim(self) -> Simulator:
        return cast(SimServer, self.server).sim

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


def shutdown_socket(conn: socket.socket) -> None:
    """Shut a socket down both ways, whatever state it is in."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def discard_request_body(h: SimHandler) -> None:
    """Read and drop a small request body so the connection can be reused."""
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
        data = h.rfile.read(min(remaining, CHUNK))
        if not data:
            break
        remaining -= len(data)
