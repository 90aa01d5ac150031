"""Tests for exporter.web.server's connections: deadlines, keep-alive, pipelining, shedding,
workers and shutdown, on real sockets on loopback."""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import trustme

from exporter.web.server import ExporterServer
from tests.web.serving import (
    TLS,
    app,
    client_context,
    held_app,
    is_closed,
    keep_alive_client,
    raise_fd_limit,
    raw_exchange,
    read_response,
    request,
    wait_for,
    web_config,
)

# -- connection handling ---------------------------------------------------------------


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
    server = make_server(request_timeout=1.0)
    # A slowloris: one header byte every 0.1 s never finishes the head; the deadline from
    # its first byte (not a per-read timeout, not one restarted by every byte) drops it.
    slow = socket.create_connection(server.address, timeout=5)
    slow.sendall(b"G")
    first_byte = time.monotonic()
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(20)]
    partial = socket.create_connection(server.address, timeout=5)
    partial.sendall(b"GET /metrics HTTP/1.1\r\n")
    try:
        wait_for(lambda: server.active_connections == 22)  # every one accepted and held
        closed_at = None
        while closed_at is None and time.monotonic() - first_byte < 4 * server.request_timeout:
            if is_closed(slow, timeout=0.1):
                closed_at = time.monotonic()
            else:
                with contextlib.suppress(OSError):
                    slow.send(b"X")
        assert closed_at is not None, "the trickling client still holds its connection"
        assert closed_at - first_byte < server.request_timeout + 0.5
        for sock in [*idle, partial]:
            assert is_closed(sock)
        wait_for(lambda: server.active_connections == 0)
        assert request(server)[0] == 200
    finally:
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


def test_shedding_warns_once_per_period_not_once_per_connection(
    make_server: Callable[..., ExporterServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter.web.server")
    server = make_server(max_connections=2)
    clients = [keep_alive_client(server) for _ in range(6)]  # each past the cap sheds one
    try:
        assert all(is_closed(sock) for sock in clients[:4])  # the four sheds happened
        shed = [r for r in caplog.records if "too many connections" in r.getMessage()]
        assert len(shed) == 1  # a flood of connections does not flood the log
    finally:
        for sock in clients:
            sock.close()


def test_a_bad_request_over_tls_is_answered_and_the_connection_closed(
    make_server: Callable[..., ExporterServer], tls_dir: Path, ca: trustme.CA
) -> None:
    server = make_server(web_config(tls_dir, TLS))
    raw = socket.create_connection(server.address, timeout=3)
    with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /\r\n\r\n")  # HTTP/0.9: 400, then the server closes
        answer = b""
        with contextlib.suppress(ssl.SSLError, ConnectionResetError):
            while chunk := tls.recv(65536):  # a socket the server forgot: TimeoutError
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    wait_for(lambda: server.active_connections == 0)


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


def test_at_the_cap_with_every_connection_answering_a_new_one_is_refused() -> None:
    """Two connections, both answering (held in the app): none is idle or slow, so none is
    shed. A third connection is closed unanswered, and both held requests get their 200."""
    entered = threading.Semaphore(0)
    release = threading.Event()
    server = ExporterServer(
        held_app("/slow", entered, release), "127.0.0.1:0", max_connections=2, workers=2
    )
    server.start()
    outcome: list[tuple[int, bytes]] = []
    clients = [
        threading.Thread(target=lambda: outcome.append(request(server, "/slow")[::2]))
        for _ in range(2)
    ]
    try:
        for client in clients:
            client.start()
        assert entered.acquire(timeout=5) and entered.acquire(timeout=5)  # both answering
        assert server.active_connections == 2
        # a probe has its own workers: were a held connection shed, it would be answered
        probe = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        refused = raw_exchange(server, probe)
    finally:
        release.set()
        for client in clients:
            client.join(timeout=5)
        server.shutdown()
    assert outcome == [(200, b"done\n")] * 2
    assert refused == b""


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


def test_expect_100_continue(make_server: Callable[..., ExporterServer]) -> None:
    server = make_server()
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        buffer = bytearray()
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(65536)
        assert buffer.startswith(b"HTTP/1.1 100 ")  # go on: the body is welcome
        del buffer[: buffer.index(b"\r\n\r\n") + 4]
        sock.sendall(b"hello")
        head, body = read_response(sock, buffer)
        assert head.startswith(b"HTTP/1.1 405 ") and body == b"method not allowed\n"
