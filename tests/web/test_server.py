"""Tests for exporter.web.server: real sockets on loopback, a trivial WSGI app, trustme PKI."""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme

from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.model import ExporterView
from exporter.web.routes import App
from exporter.web.server import REALM, ExporterServer, parse_listen_address
from exporter.web.webconfig import WebConfigError
from tests.helpers import config_yaml, make_exporter, write

PASSWORD = b"s3cret"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """/metrics answers text, /boom raises, anything else 404; non-GET 405."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("kaboom")
    if environ["REQUEST_METHOD"] != "GET":
        start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
        return [b"method not allowed\n"]
    if path == "/metrics":
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
        return [b"up 1\n"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        pause.wait(0.01)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@pytest.fixture
def make_server() -> Iterator[Callable[..., ExporterServer]]:
    servers: list[ExporterServer] = []

    def make(web_config_file: str | None = None, **kwargs: Any) -> ExporterServer:
        server = ExporterServer(app, "127.0.0.1:0", web_config_file, **kwargs)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.shutdown()


def request(
    server: ExporterServer,
    path: str = "/metrics",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    host, port = server.address
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=context)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.msg, response.read()
    finally:
        conn.close()


def raw_exchange(server: ExporterServer, data: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(server.address, timeout=5) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def basic(user: str, password: bytes) -> dict[str, str]:
    token = base64.b64encode(user.encode() + b":" + password).decode()
    return {"Authorization": f"Basic {token}"}


# -- listen address --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":9877", ("", 9877)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:9877", ("::1", 9877)),
        ("[::]:80", ("::", 80)),
        ("localhost:9877", ("localhost", 9877)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_address(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9877", "expected [HOST]:PORT"),
        ("localhost", "expected [HOST]:PORT"),
        (":", "port must be a number"),
        (":http", "port must be a number"),
        (":65536", "port must be a number"),
        (":-1", "port must be a number"),
        ("::1:9877", "IPv6 address in brackets"),
        ("[::1]", "expected [IPV6]:PORT"),
        ("[nothost]:80", "is not an IPv6 address"),
        ("bad host:80", "invalid host"),
    ],
)
def test_parse_listen_address_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_listen_address(value)


def test_address_in_use_is_raised_at_construction(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server()
    with pytest.raises(OSError):
        ExporterServer(app, f"127.0.0.1:{server.address[1]}")


def test_empty_host_listens_on_all_interfaces() -> None:
    server = ExporterServer(app, ":0")
    server.start()
    try:
        host, port = server.address
        assert host in ("::", "0.0.0.0")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        if host == "::":  # dual-stack: IPv6 loopback too
            with socket.create_connection(("::1", port), timeout=5):
                pass
    finally:
        server.shutdown()


def test_invalid_web_config_at_start_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: plaintext\n")
    with pytest.raises(WebConfigError, match=r"web\.yml: basic_auth_users\.alice: not a bcrypt"):
        ExporterServer(app, "127.0.0.1:0", str(path))


# -- plain HTTP ------------------------------------------------------------------------


def test_plain_http(make_server: Callable[..., ExporterServer]) -> None:
    server = make_server()
    status, headers, body = request(server)
    assert (status, body) == (200, b"up 1\n")
    assert "Python" not in headers.get("Server", "")
    assert request(server, "/nope")[0] == 404
    assert request(server, "/metrics", method="POST")[0] == 405
    assert request(server, "/metrics", method="BREW")[0] == 405  # the app decides, not a 501


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"GET\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"\r\n",
            b"431",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/9.9\r\n\r\n", b"505"),
    ],
    ids=["garbage", "http09-one-word", "long-line", "many-headers", "huge-header", "version"],
)
def test_malformed_requests_get_4xx(
    make_server: Callable[..., ExporterServer], data: bytes, status: bytes
) -> None:
    server = make_server()
    answer = raw_exchange(server, data)
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:100]
    assert b"Python" not in answer
    assert request(server)[0] == 200


def test_http09_request_is_refused_at_once(make_server: Callable[..., ExporterServer]) -> None:
    answer = raw_exchange(make_server(), b"GET /metrics\r\n")  # no headers will follow
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"HTTP/0.9 requests are not supported)\n")


def test_handler_error_is_logged_not_printed(
    make_server: Callable[..., ExporterServer],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.ERROR, logger="exporter.web.server")
    server = make_server()
    assert request(server, "/boom")[0] == 500
    wait_for(lambda: any("kaboom" in str(getattr(r, "err", "")) for r in caplog.records))
    assert request(server)[0] == 200
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert all(r.exc_info is None for r in caplog.records)


# -- connection handling ---------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def test_idle_connections_do_not_block_metrics(make_server: Callable[..., ExporterServer]) -> None:
    # More than the 1,100 idle connections that made the thread-per-connection server
    # answer 503; both ends live in this process, hence two descriptors each.
    count = 1500
    raise_fd_limit(2 * count + 256)
    server = make_server()
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(count)]
    try:
        wait_for(lambda: server.active_connections == count)
        for path in ("/metrics", "/-/healthy") * 3:
            started = time.monotonic()
            assert request(server, path)[0] in (200, 404)
            assert time.monotonic() - started < 1.0
        wait_for(lambda: server.active_connections == count)  # none had to be shed
    finally:
        for sock in idle:
            sock.close()


def test_idle_and_slow_clients_are_dropped(make_server: Callable[..., ExporterServer]) -> None:
    server = make_server(request_timeout=0.5)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(20)]
    partial = socket.create_connection(server.address, timeout=5)
    partial.sendall(b"GET /metrics HTTP/1.1\r\n")
    # A slowloris: one header byte every 0.1 s never finishes the head; the deadline
    # (not just the per-read timeout) must drop it.
    slow = socket.create_connection(server.address, timeout=5)
    stop = threading.Event()

    def trickle() -> None:
        with_errors = False
        while not stop.wait(0.1) and not with_errors:
            try:
                slow.send(b"X")
            except OSError:
                with_errors = True

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        started = time.monotonic()
        wait_for(lambda: server.active_connections == 0, timeout=5)
        assert time.monotonic() - started < 3.0
        for sock in [*idle, partial]:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""
        assert request(server)[0] == 200
    finally:
        stop.set()
        feeder.join(timeout=2)
        for sock in [*idle, partial, slow]:
            sock.close()


def test_shutdown_is_prompt_with_idle_clients() -> None:
    server = ExporterServer(app, "127.0.0.1:0")
    server.start()
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(20)]
    try:
        wait_for(lambda: server.active_connections == 20)
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=1)
        wait_for(lambda: server.active_connections == 0, timeout=2)
    finally:
        for sock in idle:
            sock.close()


def test_shutdown_without_start_and_twice() -> None:
    server = ExporterServer(app, "127.0.0.1:0")
    started = time.monotonic()
    server.shutdown()
    server.shutdown()
    assert time.monotonic() - started < 1.0


def test_serve_forever_blocks_until_shutdown() -> None:
    server = ExporterServer(app, "127.0.0.1:0")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert request(server)[0] == 200
    server.shutdown()
    thread.join(timeout=2)
    assert not thread.is_alive()


# -- TLS -------------------------------------------------------------------------------


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


def web_config(directory: Path, text: str) -> str:
    path = directory / "web.yml"
    write_atomic(path, text)
    return str(path)


TLS = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
MTLS = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"


def test_tls(make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA) -> None:
    server = make_server(web_config(tls_dir, TLS))
    assert server.tls
    status, _, body = request(server, context=client_context(ca))
    assert (status, body) == (200, b"up 1\n")
    with pytest.raises(ssl.SSLError):  # our CA is not trusted by an empty context
        request(server, context=ssl.create_default_context(cafile=None, cadata=None, capath=None))


def test_tls_handshake_does_not_block_other_clients(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    server = make_server(web_config(tls_dir, TLS))
    silent = socket.create_connection(server.address, timeout=5)  # never sends a ClientHello
    try:
        answer = raw_exchange(server, b"GET /metrics HTTP/1.0\r\n\r\n")  # plain HTTP on TLS
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert answer.endswith(b"Client sent an HTTP request to an HTTPS server.\r\n")
        assert request(server, context=client_context(ca))[0] == 200
    finally:
        silent.close()


def test_mutual_tls(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    server = make_server(web_config(tls_dir, MTLS))
    good = ca.issue_cert("prometheus.example")
    assert request(server, context=client_context(ca, good))[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(server, context=client_context(ca))  # no client certificate
    stranger = trustme.CA().issue_cert("prometheus.example")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(server, context=client_context(ca, stranger))  # cert from another CA
    assert request(server, context=client_context(ca, good))[0] == 200


def test_client_allowed_sans(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    config = MTLS + "  client_allowed_sans: [prometheus.example]\n"
    server = make_server(web_config(tls_dir, config))
    assert (
        request(server, context=client_context(ca, ca.issue_cert("prometheus.example")))[0] == 200
    )
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        request(server, context=client_context(ca, ca.issue_cert("other.example")))


# -- basic auth and rotation -----------------------------------------------------------


def test_basic_auth_protects_every_path(
    make_server: Callable[..., ExporterServer], tmp_path: Path
) -> None:
    config = f"basic_auth_users:\n  alice: {HASH}\nhttp_server_config:\n  headers:\n"
    config += "    X-Content-Type-Options: nosniff\n"
    server = make_server(web_config(tmp_path, config))
    for path in ("/metrics", "/", "/-/healthy", "/nope"):
        status, headers, _ = request(server, path)
        assert status == 401
        assert headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = request(server, headers=basic("alice", PASSWORD))
    assert (status, body) == (200, b"up 1\n")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert request(server, "/nope", headers=basic("alice", PASSWORD))[0] == 404
    for bad in (
        basic("alice", b"wrong"),
        basic("mallory", PASSWORD),
        basic("alice", b"p" * 100),
        {"Authorization": "Basic %%%"},
        {"Authorization": "Bearer token"},
    ):
        assert request(server, headers=bad)[0] == 401


def test_web_config_rotation_while_running(
    make_server: Callable[..., ExporterServer],
    tls_dir: Path,
    ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    path = web_config(tls_dir, TLS + f"basic_auth_users:\n  alice: {HASH}\n")
    server = make_server(path, clock=clock)
    trust = client_context(ca)
    assert request(server, headers=basic("alice", PASSWORD), context=trust)[0] == 200

    # New user replaces the old one.
    web_config(tls_dir, TLS + f"basic_auth_users:\n  bob: {HASH}\n")
    clock.now += 1.5
    assert request(server, headers=basic("bob", PASSWORD), context=trust)[0] == 200
    assert request(server, headers=basic("alice", PASSWORD), context=trust)[0] == 401

    # New certificate from another CA is served to new connections.
    other_ca = trustme.CA()
    leaf = other_ca.issue_cert("localhost", "127.0.0.1")
    write_atomic(tls_dir / "cert.pem", leaf.cert_chain_pems[0].bytes())
    write_atomic(tls_dir / "key.pem", leaf.private_key_pem.bytes())
    clock.now += 1.5
    new_trust = client_context(other_ca)
    assert request(server, headers=basic("bob", PASSWORD), context=new_trust)[0] == 200
    with pytest.raises(ssl.SSLError):
        request(server, headers=basic("bob", PASSWORD), context=trust)

    # An invalid rewrite is logged and the last good configuration stays.
    caplog.set_level(logging.ERROR)
    web_config(tls_dir, TLS + "basic_auth_users:\n  carol: not-a-hash\n")
    clock.now += 1.5
    assert request(server, headers=basic("bob", PASSWORD), context=new_trust)[0] == 200
    assert any("keeping the last good one" in r.getMessage() for r in caplog.records)
    assert server.web_config is not None
    assert server.web_config.last_reload_successful is False  # the exporter's gauge reads it

    web_config(tls_dir, TLS + f"basic_auth_users:\n  bob: {HASH}\n")
    clock.now += 1.5
    assert request(server, headers=basic("bob", PASSWORD), context=new_trust)[0] == 200
    assert server.web_config.last_reload_successful is True


def test_tls_handshake_has_a_deadline(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    server = make_server(web_config(tls_dir, TLS), request_timeout=0.5)
    silent = socket.create_connection(server.address, timeout=5)
    try:
        wait_for(lambda: server.active_connections == 1)
        wait_for(lambda: server.active_connections == 0, timeout=3)
        assert request(server, context=client_context(ca))[0] == 200
    finally:
        silent.close()


def test_concurrent_requests(make_server: Callable[..., ExporterServer]) -> None:
    server = make_server()
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(10):
            status = request(server)[0]
            with lock:
                results.append(status)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == [200] * 200


def test_shutdown_lets_a_request_in_flight_finish() -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        entered.set()
        release.wait(5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done\n"]

    server = ExporterServer(slow_app, "127.0.0.1:0")
    server.start()
    outcome: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: outcome.append(request(server)[::2]))
    client.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        client.join(timeout=5)
    assert outcome == [(200, b"done\n")]


# -- keep-alive, pipelining, shedding ------------------------------------------------------


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """Read one response with a Content-Length body off ``sock``: (head, body)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a full response: {bytes(buffer)!r}")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    buffer[:] = rest
    while len(buffer) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed in the body")
        buffer += chunk
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


def is_closed(sock: socket.socket, timeout: float = 3.0) -> bool:
    """True if the peer closes ``sock`` within ``timeout`` (it must send nothing)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def keep_alive_client(server: ExporterServer, path: str = "/metrics") -> socket.socket:
    """A connection that made one request and now sits idle, kept alive."""
    sock = socket.create_connection(server.address, timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _ = read_response(sock, bytearray())
    assert head.startswith(b"HTTP/1.1 200 ")
    return sock


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_keep_alive_reuses_one_connection(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA, tls: bool
) -> None:
    server = make_server(web_config(tls_dir, TLS) if tls else None)
    conn = (
        http.client.HTTPSConnection(
            "localhost", server.address[1], timeout=5, context=client_context(ca)
        )
        if tls
        else http.client.HTTPConnection(*server.address, timeout=5)
    )
    try:
        sockets = []
        for _ in range(3):
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"up 1\n")
            assert response.getheader("Connection") is None
            sockets.append(conn.sock)
        # no reconnect: with TLS, one handshake for the three requests
        assert sockets[0] is not None and all(s is sockets[0] for s in sockets)
        assert server.active_connections == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    "data",
    [
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n\r\n",
    ],
    ids=["connection-close", "http10"],
)
def test_connection_close_is_honoured(
    make_server: Callable[..., ExporterServer], data: bytes
) -> None:
    answer = raw_exchange(make_server(), data)  # returns once the server closes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close" in head
    assert body == b"up 1\n"


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    make_server: Callable[..., ExporterServer],
) -> None:
    assert ExporterServer(app, "127.0.0.1:0").idle_timeout >= 120  # the default: 2 minutes
    server = make_server(idle_timeout=0.3, request_timeout=30)
    sock = keep_alive_client(server)
    try:
        started = time.monotonic()
        assert is_closed(sock)
        assert time.monotonic() - started < 2.0  # idle_timeout, not request_timeout
        wait_for(lambda: server.active_connections == 0)
    finally:
        sock.close()


def test_pipelined_requests_are_answered_in_order(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server()
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        buffer = bytearray()
        first, second = read_response(sock, buffer), read_response(sock, buffer)
        assert first[0].startswith(b"HTTP/1.1 200 ") and first[1] == b"up 1\n"
        assert second[0].startswith(b"HTTP/1.1 404 ") and second[1] == b"not found\n"
        # HEAD: the head only, then the next answer follows on the same connection
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ")  # the test app takes GET only
        buffer[:] = rest
        fourth = read_response(sock, buffer)
        assert fourth[0].startswith(b"HTTP/1.1 200 ") and fourth[1] == b"up 1\n"


def test_shedding_closes_the_longest_idle_connection_first(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server(max_connections=4)
    idle = [keep_alive_client(server) for _ in range(4)]
    try:
        wait_for(lambda: server.active_connections == 4)
        idle.append(keep_alive_client(server))  # takes the place of idle[0]
        status = request(server, "/-/healthy")[0]  # of idle[1]; never a 503
        assert status == 404  # what the test app answers there: the request was served
        assert is_closed(idle[0]) and is_closed(idle[1])  # the two longest idle
        assert not any(is_closed(sock, timeout=0.2) for sock in idle[2:])
        assert server.active_connections <= 4
    finally:
        for sock in idle:
            sock.close()


def held_app(
    path: str, entered: threading.Semaphore, release: threading.Event
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """Answers ``done``; a request for ``path`` first signals ``entered``, then waits."""

    def held(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == path:
            entered.release()
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done\n"]

    return held


def test_a_connection_being_answered_is_never_shed() -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()
    server = ExporterServer(held_app("/slow", entered, release), "127.0.0.1:0", max_connections=2)
    server.start()
    outcome: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: outcome.append(request(server, "/slow")[::2]))
    client.start()
    try:
        assert entered.acquire(timeout=5)
        idle = keep_alive_client(server)
        assert request(server, "/-/healthy")[0] == 200  # sheds the idle one, not /slow
        assert is_closed(idle)
        idle.close()
    finally:
        release.set()
        client.join(timeout=5)
        server.shutdown()
    assert outcome == [(200, b"done\n")]


def test_probes_answer_while_every_worker_waits(
    make_server: Callable[..., ExporterServer],
) -> None:
    release = threading.Event()
    waiting = threading.Semaphore(0)
    server = ExporterServer(held_app("/metrics", waiting, release), "127.0.0.1:0", workers=2)
    server.start()
    scrapes = [threading.Thread(target=request, args=(server,)) for _ in range(3)]
    try:
        for thread in scrapes:
            thread.start()
        assert waiting.acquire(timeout=5) and waiting.acquire(timeout=5)  # both workers held
        for path in ("/-/healthy", "/-/ready"):
            started = time.monotonic()
            assert request(server, path)[0] == 200
            assert time.monotonic() - started < 1.0
    finally:
        release.set()
        for thread in scrapes:
            thread.join(timeout=5)
        server.shutdown()


def test_slow_request_body_is_dropped(make_server: Callable[..., ExporterServer]) -> None:
    server = make_server(request_timeout=0.5)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        started = time.monotonic()
        for _ in range(30):  # one byte every 0.1 s never completes the body in time
            if is_closed(sock, timeout=0.1):
                break
            with contextlib.suppress(OSError):
                sock.send(b"x")
        assert time.monotonic() - started < 2.0
    wait_for(lambda: server.active_connections == 0)


def test_answer_the_client_does_not_read_is_dropped() -> None:
    big = b"x" * (64 << 20)

    def big_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [big]

    server = ExporterServer(big_app, "127.0.0.1:0", request_timeout=0.5)
    server.start()
    try:
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
            wait_for(lambda: server.active_connections == 1)
            wait_for(lambda: server.active_connections == 0, timeout=5)
    finally:
        server.shutdown()


def test_verify_client_cert_if_given(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    config = TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.pem\n"
    server = make_server(web_config(tls_dir, config))
    assert request(server, context=client_context(ca))[0] == 200  # no certificate: fine
    good = ca.issue_cert("prometheus.example")
    assert request(server, context=client_context(ca, good))[0] == 200
    stranger = trustme.CA().issue_cert("prometheus.example")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        request(server, context=client_context(ca, stranger))  # given, but not verified


def test_shutdown_closes_kept_alive_connections(
    make_server: Callable[..., ExporterServer],
) -> None:
    server = make_server()
    idle = [keep_alive_client(server) for _ in range(5)]
    try:
        started = time.monotonic()
        server.shutdown()
        assert time.monotonic() - started < 1.0
        assert all(is_closed(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()


# -- the scrape-timeout header, through the real server and app ----------------------------


class RecordingExporter:
    """The real exporter, recording the deadline each scrape asks ``refresh`` for."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.timeouts: list[float] = []

    def refresh(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.exporter.refresh(timeout)

    def views(self) -> ExporterView:
        return self.exporter.views()

    def reload(self) -> tuple[bool, str]:
        return self.exporter.reload()

    @property
    def ready(self) -> bool:
        return self.exporter.ready


@pytest.mark.parametrize(
    ("value", "most"),
    [
        ("1e308", 119.5),
        ("1e9", 119.5),
        ("1e400", 119.5),
        ("9" * 400, 119.5),
        ("nan", 10.0),
        ("inf", 10.0),
        ("-1", 10.0),
        ("0", 10.0),
        ("1_0", 10.0),
        ("\u0661\u0660", 10.0),
        ("0x1p3", 10.0),
        ("4", 3.5),
    ],
)
def test_hostile_scrape_timeout_header(
    sim: Simulator, tmp_path: Path, value: str, most: float
) -> None:
    sim.add_task("t1", total=4, finished=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    port = RecordingExporter(exporter)
    server = ExporterServer(App(port), "127.0.0.1:0")
    server.start()
    try:
        conn = http.client.HTTPConnection(*server.address, timeout=15)
        conn.putrequest("GET", "/metrics")
        conn.putheader("X-Prometheus-Scrape-Timeout-Seconds", value.encode("utf-8"))
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status == 200
        assert b"shoplazza_upload_task_files" in body
        assert port.timeouts and all(0 < t <= most for t in port.timeouts), port.timeouts
    finally:
        server.shutdown()
        exporter.close()
