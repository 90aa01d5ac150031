"""Helpers of the server tests: a trivial WSGI app, raw and http.client requests, TLS."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme

from exporter.web.server import ExporterServer

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


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


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
