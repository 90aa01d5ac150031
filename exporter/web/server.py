"""The exporter's own HTTP server: a small, hardened WSGI server on the standard library.

Why not ``wsgiref.simple_server.make_server``: its listen backlog is 5, it has no read
timeout and no connection limit, it answers one-word request lines as HTTP/0.9, it prints
tracebacks to stderr, and TLS on its listening socket would make ``accept()`` do every
handshake serially. This module keeps wsgiref's request parsing and WSGI handler but owns
the socket, the accept loop and one daemon thread per connection:

- each connection has a socket timeout and a deadline for its TLS handshake plus request
  head (``request_timeout``), so idle or slow clients are dropped;
- at most ``max_connections`` connections are served at once; beyond that a new
  connection gets ``503`` (plain HTTP) or is closed (TLS) at once;
- TLS sockets are wrapped after ``accept()`` and the handshake runs in the connection's
  thread, with the ``SSLContext`` of the current web configuration (so rotated
  certificates apply to new connections);
- basic auth and extra response headers from the web configuration apply to every path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import ipaddress
import logging
import re
import selectors
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast
from wsgiref.handlers import SimpleHandler

from exporter import __version__
from exporter.web.auth import BasicAuthVerifier
from exporter.web.webconfig import WebConfigWatcher

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

__all__ = ["REALM", "ExporterServer", "parse_listen_address"]

LOGGER_NAME = "exporter.web.server"
REALM = "shoplazza-upload-exporter"
SERVER_SOFTWARE = f"shoplazza-upload-exporter/{__version__}"

_LISTEN_BACKLOG = 512
_MAX_REQUEST_LINE = 65536
_WRITE_CHUNK = 64 * 1024
_LINGER_SECONDS = 1.0
_DRAIN_SECONDS = 0.5
_LINGER_BYTES = 1 << 20
_ACCEPT_BACKOFF_SECONDS = 0.05
_BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 20\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
    b"too many connections"
)
_PLAIN_ON_TLS_RESPONSE = (
    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 49\r\nConnection: close\r\n\r\n"
    b"Client sent an HTTP request to an HTTPS server.\r\n"
)
_HOST_RE = re.compile(r"[A-Za-z0-9._-]*")


def parse_listen_address(value: str) -> tuple[str, int]:
    """Parse ``[HOST]:PORT`` (``:9877``, ``127.0.0.1:0``, ``[::1]:9877``) into host and port."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(
                f"invalid listen address {value!r}: expected [IPV6]:PORT, e.g. [::1]:9877"
            )
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(
                f"invalid listen address {value!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {value!r}: expected [HOST]:PORT, e.g. :9877")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {value!r}: put an IPv6 address in brackets, "
                "e.g. [::1]:9877"
            )
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"invalid listen address {value!r}: invalid host {host!r}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"invalid listen address {value!r}: port must be a number 0-65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid listen address {value!r}: port must be a number 0-65535")
    return host, port


def _bind(host: str, port: int) -> socket.socket:
    """Create the listening socket; "" means every interface, dual-stack when possible."""
    if host == "":
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(
                    ("::", port),
                    family=socket.AF_INET6,
                    backlog=_LISTEN_BACKLOG,
                    dualstack_ipv6=True,
                )
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
        return socket.create_server(("0.0.0.0", port), backlog=_LISTEN_BACKLOG)
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    last: OSError | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            return socket.create_server(sockaddr, family=family, backlog=_LISTEN_BACKLOG)
        except OSError as exc:
            last = exc
    raise last if last is not None else OSError(f"cannot resolve {host!r}")


class _SocketReader(io.RawIOBase):
    """Raw reader on a socket: a timeout per read and, until ``end_head()``, a deadline."""

    def __init__(self, sock: socket.socket, timeout: float, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._deadline: float | None = deadline

    def readable(self) -> bool:
        return True

    def end_head(self) -> None:
        """The request head is in: from now on only the per-read timeout applies."""
        self._deadline = None

    def readinto(self, buffer: Any) -> int:
        timeout = self._timeout
        if self._deadline is not None:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request head not received in time")
            timeout = min(timeout, remaining)
        self._sock.settimeout(timeout)
        return self._sock.recv_into(buffer)


class _SocketWriter(io.BufferedIOBase):
    """Unbuffered writer: ``sendall`` in chunks, so the timeout bounds each chunk, not the body."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._sock.settimeout(self._timeout)
        for start in range(0, len(view), _WRITE_CHUNK):
            self._sock.sendall(view[start : start + _WRITE_CHUNK])
        return len(view)


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
                self._logger.error("wsgi.errors: %s", line)
        return len(text)


class _WSGIHandler(SimpleHandler):
    """wsgiref's handler, with our Server header and errors routed to the logger."""

    server_software = SERVER_SOFTWARE
    request_handler: _RequestHandler

    def log_exception(self, exc_info: OptExcInfo) -> None:
        exc = exc_info[1]
        env: dict[str, Any] = getattr(self, "environ", None) or {}
        self.request_handler.logger.error(
            "error handling %s %s: %s: %s",
            env.get("REQUEST_METHOD", "?"),
            env.get("PATH_INFO", "?"),
            type(exc).__name__,
            exc,
        )

    def cleanup_headers(self) -> None:
        super().cleanup_headers()
        headers = getattr(self, "headers", None)  # wsgiref.headers.Headers, untyped here
        if headers is not None:
            headers["Connection"] = "close"  # one request per connection

    def close(self) -> None:
        try:
            status = str(getattr(self, "status", None) or "").split(" ", 1)[0]
            self.request_handler.log_request(status, getattr(self, "bytes_sent", 0))
        finally:
            super().close()


class _RequestHandler(BaseHTTPRequestHandler):
    """Reads and answers one request (HTTP/1.0 semantics: the connection closes after it)."""

    default_request_version = "HTTP/1.0"
    server_version = "shoplazza-upload-exporter"
    sys_version = ""

    def __init__(
        self,
        conn: socket.socket,
        client_address: tuple[str, int],
        server: ExporterServer,
        reader: _SocketReader,
        state: _Conn,
    ) -> None:
        # BaseRequestHandler.__init__ would call setup/handle/finish at once; we set up
        # the streams ourselves and the connection thread calls handle().
        self.request = conn
        self.connection = conn
        self.client_address = client_address
        self.rfile = io.BufferedReader(reader)
        self.wfile = _SocketWriter(conn, server.request_timeout)
        self.logger = server.logger
        self._server = server
        self._reader = reader
        self._state = state
        self.requestline = ""
        self.request_version = ""
        self.command = ""

    def version_string(self) -> str:
        return SERVER_SOFTWARE

    def log_message(self, format: str, *args: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s %s", self.address_string(), format % args)

    def handle(self) -> None:
        raw = self.rfile.readline(_MAX_REQUEST_LINE + 1)
        if not raw:
            return
        self.raw_requestline = raw
        if len(raw) > _MAX_REQUEST_LINE:
            self.send_error(414)
            return
        if len(raw.split()) == 2:  # "GET /": HTTP/0.9 would wait for headers that never come
            self.requestline = raw.decode("iso-8859-1").rstrip("\r\n")
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return
        if not self.parse_request():
            return
        self._reader.end_head()
        self._state.idle = False  # from here on shutdown() lets the response finish
        handler = _WSGIHandler(
            self.rfile,
            cast("Any", self.wfile),
            _LogStream(self.logger),
            self._environ(),
            multithread=True,
        )
        handler.request_handler = self
        handler.run(self._server.wsgi_app)

    def _environ(self) -> dict[str, Any]:
        host, port = self._server.address
        path, _, query = self.path.partition("?")
        env: dict[str, Any] = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_NAME": host or "localhost",
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,
            "SCRIPT_NAME": "",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path, "iso-8859-1"),
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_TYPE": self.headers.get("content-type", ""),
            "CONTENT_LENGTH": self.headers.get("content-length", ""),
        }
        if isinstance(self.connection, ssl.SSLSocket):
            env["HTTPS"] = "on"
        for name, value in self.headers.items():
            if "_" in name:  # would be indistinguishable from "-" in the CGI name
                continue
            key = "HTTP_" + name.replace("-", "_").upper()
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            value = value.strip()
            env[key] = f"{env[key]},{value}" if key in env else value
        return env


class _Conn:
    """A connection being served: its current socket (plain or TLS) and phase."""

    __slots__ = ("idle", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle = True  # still waiting for the TLS handshake or the request head


def _handshake(conn: ssl.SSLSocket, deadline: float) -> None:
    """Run the TLS handshake on a non-blocking socket, bounded by ``deadline``."""
    conn.setblocking(False)
    with selectors.DefaultSelector() as sel:
        while True:
            try:
                conn.do_handshake()
                return
            except ssl.SSLWantReadError:
                events = selectors.EVENT_READ
            except ssl.SSLWantWriteError:
                events = selectors.EVENT_WRITE
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("TLS handshake not completed in time")
            sel.register(conn, events)
            ready = sel.select(remaining)
            sel.unregister(conn)
            if not ready:
                raise TimeoutError("TLS handshake not completed in time")


def _san_allowed(peer: dict[str, Any], allowed: Iterable[str]) -> bool:
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


class ExporterServer:
    """The exporter's HTTP(S) server; binds at construction, serves after ``start()``."""

    def __init__(
        self,
        app: WSGIApplication,
        listen_address: str,
        web_config_file: str | None = None,
        *,
        logger: logging.Logger | None = None,
        request_timeout: float = 10.0,
        max_connections: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be > 0")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._app = app
        self._watcher = (
            WebConfigWatcher(web_config_file, clock=clock, logger=self.logger)
            if web_config_file
            else None
        )
        self._auth = BasicAuthVerifier()
        host, port = parse_listen_address(listen_address)
        self._sock = _bind(host, port)
        self._sock.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)  # notified when a connection ends
        self._conns: set[_Conn] = set()
        self._stop = threading.Event()
        self._loop_done = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last_busy_warning = -1e9
        self._tls_seen = self._watcher is not None and self._watcher.ssl_context() is not None
        self._address: tuple[str, int] = self._sock.getsockname()[:2]

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (port 0 resolved)."""
        return self._address

    @property
    def tls(self) -> bool:
        """True if the current web configuration serves TLS."""
        return self._watcher is not None and self._watcher.current().tls is not None

    @property
    def web_config(self) -> WebConfigWatcher | None:
        """The web configuration watcher, if ``--web.config.file`` was given."""
        return self._watcher

    @property
    def active_connections(self) -> int:
        """Connections being served right now."""
        with self._lock:
            return len(self._conns)

    def start(self) -> None:
        """Serve in a daemon thread and return at once."""
        thread = threading.Thread(target=self.serve_forever, name="exporter-http", daemon=True)
        self._thread = thread
        thread.start()

    def serve_forever(self) -> None:
        """Accept connections until ``shutdown()``."""
        with self._lock:
            if self._loop_thread is not None or self._closed:
                raise RuntimeError("server already started or shut down")
            self._loop_thread = threading.current_thread()
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._sock, selectors.EVENT_READ)
                sel.register(self._wake_r, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in sel.select(timeout=1.0):
                        if key.fileobj is self._sock and not self._stop.is_set():
                            self._accept_ready()
        finally:
            self._loop_done.set()

    def shutdown(self) -> None:
        """Stop accepting, close the listening socket and drop idle connections."""
        self._stop.set()
        with self._lock:
            loop = self._loop_thread
            self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if loop is not None and loop is not threading.current_thread():
            self._loop_done.wait(timeout=1.0)
        self._sock.close()
        with self._lock:
            idle = [c.sock for c in self._conns if c.idle]
        for sock in idle:
            # The base-class method: wakes the reader without touching TLS state.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=0.5)
        # Responses under way (a scrape answering from memory) get a moment to finish.
        deadline = time.monotonic() + _DRAIN_SECONDS
        with self._drained:
            while any(not c.idle for c in self._conns) and time.monotonic() < deadline:
                self._drained.wait(max(deadline - time.monotonic(), 0.0))
        if self._loop_done.is_set() or loop is None:
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> ExporterServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- accepting -----------------------------------------------------------------------

    def _accept_ready(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._warn_busy(f"cannot accept connections: {exc.strerror}")
                    self._stop.wait(_ACCEPT_BACKOFF_SECONDS)
                elif exc.errno != errno.ECONNABORTED and not self._stop.is_set():
                    self.logger.error("accept failed: %s", exc)
                return
            conn = _Conn(sock)
            with self._lock:
                busy = len(self._conns) >= self.max_connections
                if not busy:
                    self._conns.add(conn)
            if busy:
                self._reject(sock)
                continue
            accepted = time.monotonic()
            try:
                threading.Thread(
                    target=self._serve_connection,
                    args=(conn, addr, accepted),
                    name="exporter-http-conn",
                    daemon=True,
                ).start()
            except RuntimeError as exc:  # cannot start a new thread
                with self._lock:
                    self._conns.discard(conn)
                self._warn_busy(f"cannot start a connection thread: {exc}")
                self._reject(sock)

    def _reject(self, sock: socket.socket) -> None:
        self._warn_busy(f"more than {self.max_connections} connections, refusing new ones")
        try:
            sock.setblocking(False)
            if not self._tls_seen:  # a TLS client could not read a plain answer
                sock.send(_BUSY_RESPONSE)
        except OSError:
            pass
        finally:
            sock.close()

    def _warn_busy(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_busy_warning >= 10.0:
            self._last_busy_warning = now
            self.logger.warning("%s", message)

    # -- one connection ------------------------------------------------------------------

    def _serve_connection(self, conn: _Conn, addr: Any, accepted: float) -> None:
        deadline = accepted + self.request_timeout
        client = (str(addr[0]), int(addr[1]))
        complete = False
        try:
            conn.sock.settimeout(self.request_timeout)
            if self._watcher is not None:
                config, context = self._watcher.snapshot()
                self._tls_seen = context is not None
                if context is not None:
                    tls_sock = context.wrap_socket(
                        conn.sock, server_side=True, do_handshake_on_connect=False
                    )
                    conn.sock = tls_sock
                    _handshake(tls_sock, deadline)
                    sans = config.tls.client_allowed_sans if config.tls else ()
                    if sans and not _san_allowed(tls_sock.getpeercert() or {}, sans):
                        self.logger.info(
                            "%s: client certificate has no allowed SAN, closing", client[0]
                        )
                        return
            reader = _SocketReader(conn.sock, self.request_timeout, deadline)
            _RequestHandler(conn.sock, client, self, reader, conn).handle()
            complete = True
        except TimeoutError as exc:
            self.logger.debug("%s: connection closed: %s", client[0], exc or "timed out")
        except ssl.SSLError as exc:
            self.logger.debug("%s: TLS handshake failed: %s", client[0], exc.reason or exc)
            if exc.reason == "HTTP_REQUEST":  # plain HTTP on the TLS port: say so, in plain
                with contextlib.suppress(OSError):
                    socket.socket.sendall(conn.sock, _PLAIN_ON_TLS_RESPONSE)
        except OSError as exc:
            self.logger.debug("%s: connection error: %s", client[0], exc)
        except Exception as exc:
            self.logger.error(
                "%s: error serving connection: %s: %s", client[0], type(exc).__name__, exc
            )
        finally:
            self._close(conn.sock, linger=complete)
            with self._drained:
                self._conns.discard(conn)
                self._drained.notify_all()

    def _close(self, sock: socket.socket, *, linger: bool) -> None:
        """Close, first draining what the client still sends so it gets our answer, not RST."""
        try:
            if linger and not self._stop.is_set():
                end = time.monotonic() + min(_LINGER_SECONDS, self.request_timeout)
                if isinstance(sock, ssl.SSLSocket):
                    sock.settimeout(max(0.01, end - time.monotonic()))
                    sock = sock.unwrap()
                socket.socket.shutdown(sock, socket.SHUT_WR)
                drained = 0
                while drained < _LINGER_BYTES:
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        break
                    sock.settimeout(remaining)
                    data = socket.socket.recv(sock, 65536)
                    if not data:
                        break
                    drained += len(data)
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    def wsgi_app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """The application with the web configuration's basic auth and headers applied."""
        if self._watcher is None:
            return self._app(environ, start_response)
        config = self._watcher.current()
        extra = list(config.headers.items())
        if config.basic_auth_users:
            user = self._auth.verify(config.basic_auth_users, environ.get("HTTP_AUTHORIZATION"))
            if user is None:
                start_response(
                    "401 Unauthorized",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("WWW-Authenticate", f'Basic realm="{REALM}"'),
                        *extra,
                    ],
                )
                return [b"Unauthorized\n"]
            environ["REMOTE_USER"] = user
            environ.pop("HTTP_AUTHORIZATION", None)
        if not extra:
            return self._app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            present = {name.lower() for name, _ in headers}
            headers = headers + [(n, v) for n, v in extra if n.lower() not in present]
            return start_response(status, headers, exc_info)

        return self._app(environ, start_with_headers)
