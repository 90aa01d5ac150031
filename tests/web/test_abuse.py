"""The server under abuse (docs/design.md, "Rules for abuse: the server"): request
smuggling, wrong-password floods, clients that do not read, Accept-Encoding q-values.

Mechanisms are tested here; the figures (probe latency, RSS) come from ``bench/abuse.py``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporter.web.auth import AuthPool
from exporter.web.routes import accepts_gzip
from exporter.web.server import ExporterServer
from tests.web.serving import (
    HASH,
    PASSWORD,
    basic,
    raw_exchange,
    read_response,
    request,
    wait_for,
    web_config,
)

BIG = b"x" * (16 << 20)  # larger than what loopback's socket buffers absorb


class Recorder:
    """A WSGI app: /big answers BIG (the same object each time), /fresh a new 16 MiB body,
    the probes ``OK``; anything else ``ok``. Records every request it runs."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.ran if p == path)

    def __call__(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        with self.lock:
            self.ran.append((environ["REQUEST_METHOD"], path))
        start("200 OK", [("Content-Type", "text/plain")])
        if path == "/big":
            return [BIG]
        if path == "/fresh":
            return [bytes(len(BIG))]
        return [b"OK\n" if path.startswith("/-/") else b"ok\n"]


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[ExporterServer, Recorder]]]:
    servers: list[ExporterServer] = []

    def make(web_config_file: str | None = None, **kwargs: Any) -> tuple[ExporterServer, Recorder]:
        recorder = Recorder()
        server = ExporterServer(recorder, "127.0.0.1:0", web_config_file, **kwargs)
        servers.append(server)
        server.start()
        return server, recorder

    yield make
    for server in servers:
        server.shutdown()


def non_reader(server: ExporterServer, path: str, count: int = 1) -> socket.socket:
    """A client that sends ``count`` pipelined GETs and never reads (small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(server.address)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * count)
    return sock


# -- item 11: request smuggling ---------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"transfer-encoding: chunked\r\ncontent-length: 0\r\n",
    ],
)
def test_smuggled_request_is_refused_and_never_runs(
    serve: Callable[..., tuple[ExporterServer, Recorder]], framing: bytes
) -> None:
    server, recorder = serve(idle_timeout=1.0)
    smuggled = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    answer = raw_exchange(
        server, b"POST /metrics HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + smuggled
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"Connection: close" in answer
    assert recorder.ran == []


def test_one_framing_is_still_served(serve: Callable[..., tuple[ExporterServer, Recorder]]) -> None:
    server, recorder = serve()
    chunked = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    chunked += b"Connection: close\r\n\r\n0\r\n\r\n"
    assert raw_exchange(server, chunked).startswith(b"HTTP/1.1 200 ")
    assert recorder.ran == [("POST", "/-/reload")]


# -- item 18: Accept-Encoding q-values --------------------------------------------------


@pytest.mark.parametrize(
    ("header", "gzip"),
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("gzip, deflate, br", True),
        ("identity", False),
        ("deflate", False),
        ("gzip;q=0, identity", False),
        ("gzip; q=0", False),
        ("gzip;Q=0", False),
        ("gzip;q=0.0", False),
        ("gzip;q=0.000", False),
        ("gzip;q=0.001", True),
        ("gzip;q=1.000", True),
        ("gzip;q=0.5, identity;q=1", True),
        ("*", True),
        ("*;q=0", False),
        ("*;q=0, identity", False),
        ("*, gzip;q=0", False),
        ("gzip;q=0, *", False),
        ("identity, *;q=0.1", True),
        ("gzip, gzip;q=0", False),  # said twice: the lower
        ("gzip;q=abc", False),  # malformed: the entry does not count
        ("gzip;q=2", False),
        ("gzip;q=0.0001", False),
        ("gzip;q=-1", False),
        ("gzip;q=", False),
        ("gzipped", False),
        ("not-gzip", False),
        (" gzip ; q=1 ", True),
    ],
)
def test_accepts_gzip(header: str | None, gzip: bool) -> None:
    assert accepts_gzip(header) is gzip


# -- item 4: wrong passwords never take the threads that answer -------------------------


@pytest.fixture
def auth_config(tmp_path: Path) -> str:
    return web_config(tmp_path, f"basic_auth_users:\n  alice: {HASH}\n")


def test_bcrypt_runs_only_on_its_own_threads(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
    auth_config: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []
    real = bcrypt.checkpw

    def recording(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.current_thread().name)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", recording)
    server, _ = serve(auth_config, refusal_delay=0)
    for path in ("/-/healthy", "/-/ready", "/metrics"):
        assert request(server, path, headers=basic("alice", PASSWORD))[0] == 200
        for i in range(3):
            assert request(server, path, headers=basic("alice", f"{path}{i}".encode()))[0] == 401
        assert request(server, path, headers=basic("mallory", PASSWORD))[0] == 401
    # right (once), nine wrong passwords, one unknown user: each checked once, then cached
    assert len(threads) == 11
    assert set(threads) <= server.auth_pool.thread_names


def test_probes_answer_while_the_bcrypt_queue_is_full(
    serve: Callable[..., tuple[ExporterServer, Recorder]], auth_config: str
) -> None:
    pool = AuthPool(logging.getLogger("test"), max_pending=2, per_client=2)
    server, recorder = serve(auth_config, auth_pool=pool, refusal_delay=0)
    assert request(server, "/metrics", headers=basic("alice", PASSWORD))[0] == 200  # cached
    started, release = threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    assert pool.submit("test", blocker)
    assert started.wait(5)
    waiting = []
    for i in range(2):  # two new wrong passwords wait for the busy bcrypt thread
        sock = socket.create_connection(server.address, timeout=5)
        header = basic("alice", f"wrong{i}".encode())["Authorization"]
        sock.sendall(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\r\n".encode()
        )
        waiting.append(sock)
    wait_for(lambda: pool.pending == 2)
    # The queue is full: another new password is refused at once, not queued.
    status, headers, _ = request(server, "/metrics", headers=basic("alice", b"more"))
    assert status == 429 and headers["Retry-After"] == "1"
    # Known credentials need no bcrypt thread: probes and scrapes answer meanwhile.
    for path in ("/-/healthy", "/-/ready", "/metrics"):
        assert request(server, path, headers=basic("alice", PASSWORD))[0] == 200
    assert request(server, "/-/healthy")[0] == 401  # no credentials: no check either
    assert pool.pending == 2
    release.set()
    for sock in waiting:
        head, _ = read_response(sock, bytearray())
        assert head.startswith(b"HTTP/1.1 401 ")
        sock.close()
    assert recorder.count("/metrics") == 2  # the two right ones; no wrong one ran


def test_wrong_credentials_are_answered_late(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
    auth_config: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client guessing passwords gets one answer per connection and ``refusal_delay``, so
    it cannot keep the loop busy with refusals; missing credentials are answered at once."""
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    server, _ = serve(auth_config, refusal_delay=60)
    guesser = socket.create_connection(server.address, timeout=5)
    header = basic("alice", b"wrong")["Authorization"]
    guesser.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: {header}\r\n\r\n".encode())
    wait_for(lambda: len(checks) == 1)
    # checked after the wrong one on the same bcrypt thread: once this is answered, the
    # wrong one has been decided too
    assert request(server, "/metrics", headers=basic("alice", PASSWORD))[0] == 200
    assert request(server, "/-/healthy")[0] == 401  # no credentials: at once
    guesser.setblocking(False)
    with pytest.raises(BlockingIOError):
        guesser.recv(1)  # the wrong password is still unanswered
    guesser.close()


def test_bcrypt_threads_idle_for_their_duty() -> None:
    """After a check that took t, a thread idles t x (1 - duty) / duty: at most ``duty`` of a
    core goes to bcrypt however many wrong passwords arrive."""
    now = [0.0]
    idled: list[float] = []
    done = threading.Event()

    class Recording(AuthPool):
        def _idle(self, seconds: float) -> None:
            idled.append(seconds)
            if len(idled) == 2:
                done.set()

    pool = Recording(logging.getLogger("test"), duty=0.25, clock=lambda: now[0])

    def check(took: float) -> Callable[[], None]:
        def run() -> None:
            now[0] += took

        return run

    pool.start()
    try:
        assert pool.submit("a", check(0.1))
        assert pool.submit("a", check(0.2))
        assert done.wait(5)
    finally:
        pool.stop()
    assert idled == pytest.approx([0.3, 0.6])


def test_auth_pool_is_bounded_and_fair() -> None:
    pool = AuthPool(logging.getLogger("test"), max_pending=4, per_client=2)
    order: list[str] = []
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    def job(name: str) -> Callable[[], None]:
        def run() -> None:
            order.append(name)
            if len(order) == 4:
                done.set()

        return run

    pool.start()
    try:
        assert pool.submit("z", blocker)
        assert started.wait(5)
        assert pool.submit("a", job("a1"))
        assert pool.submit("a", job("a2"))
        assert not pool.submit("a", job("a3"))  # two per client
        assert pool.submit("b", job("b1"))
        assert pool.submit("c", job("c1"))
        assert not pool.submit("d", job("d1"))  # four in all
        assert pool.pending == 4
        release.set()
        assert done.wait(5)
        assert order == ["a1", "b1", "c1", "a2"]  # clients take turns
    finally:
        pool.stop()


# -- item 5: answers not yet sent are bounded for the whole process ----------------------


def test_non_reading_clients_share_one_body(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
) -> None:
    server, _ = serve()
    socks = [non_reader(server, "/big") for _ in range(4)]
    try:
        wait_for(lambda: server.answers_unsent == 4)
        # Four answers wait for their clients; the body they hold is one object, counted once.
        assert len(BIG) <= server.unsent < len(BIG) + 4096
        assert request(server, "/-/healthy")[0] == 200
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: server.answers_unsent == 0)
    assert server.unsent == 0


def test_a_client_that_does_not_read_holds_one_answer(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
) -> None:
    server, recorder = serve()
    sock = non_reader(server, "/fresh", count=5)
    try:
        wait_for(lambda: server.unsent >= len(BIG))
        # a round trip through the loop and a worker, time for a wrong next request to run
        assert request(server, "/-/healthy")[0] == 200
        assert recorder.count("/fresh") == 1
        wait_for(lambda: server.answers_unsent == 1)  # the probe's, a moment after it was read
        assert server.unsent < 2 * len(BIG)
    finally:
        sock.close()
    wait_for(lambda: server.unsent == 0)


def test_requests_wait_while_the_budget_is_spent(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
) -> None:
    server, recorder = serve(unsent_budget=1 << 20)
    holder = non_reader(server, "/fresh")
    try:
        wait_for(lambda: server.unsent >= len(BIG))
        waiter = socket.create_connection(server.address, timeout=5)
        waiter.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: server.requests_waiting == 1)
        # Probes never wait for room.
        assert request(server, "/-/healthy")[0] == 200
        assert request(server, "/-/ready")[0] == 200
        assert recorder.count("/metrics") == 0
    finally:
        holder.close()  # its answer is dropped: room again
    head, body = read_response(waiter, bytearray())
    assert head.startswith(b"HTTP/1.1 200 ") and body == b"ok\n"
    waiter.close()
    assert recorder.count("/metrics") == 1


def test_a_request_that_waits_too_long_gets_503(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
) -> None:
    server, recorder = serve(unsent_budget=1 << 20, request_timeout=0.5)
    spent = (bytes(2 << 20),)
    server.loop.call_soon_threadsafe(server.hold, spent)  # as if an answer waited to be read
    wait_for(lambda: server.unsent >= len(spent[0]))
    status, headers, _ = request(server, "/metrics")
    assert status == 503 and headers["Retry-After"] == "1"
    assert request(server, "/-/healthy")[0] == 200
    assert recorder.count("/metrics") == 0
    server.loop.call_soon_threadsafe(server.release, spent)
    wait_for(lambda: server.unsent == 0)
    assert request(server, "/metrics")[0] == 200


# -- beyond: unfinished requests are bounded for the whole process -----------------------


def test_unfinished_requests_are_bounded_for_the_whole_process(
    serve: Callable[..., tuple[ExporterServer, Recorder]],
) -> None:
    server, recorder = serve(incoming_budget=64 * 1024)
    part = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + (b"X-Pad: " + b"a" * 1990 + b"\r\n") * 10
    slow = []
    for _ in range(3):  # three slow heads of 20 KiB: under the budget, all kept
        sock = socket.create_connection(server.address, timeout=5)
        sock.sendall(part)
        slow.append(sock)
    wait_for(lambda: server.incoming == 3 * len(part))
    fourth = socket.create_connection(server.address, timeout=5)
    fourth.sendall(part)  # over the budget, and holding more than 16 KiB: refused
    head, _ = read_response(fourth, bytearray())
    assert head.startswith(b"HTTP/1.1 431 ")
    fourth.close()
    wait_for(lambda: server.incoming == 3 * len(part))  # the refused one's no longer count
    # A probe's few hundred bytes are served even now.
    assert request(server, "/-/healthy")[0] == 200
    slow[0].sendall(b"\r\n")  # one slow head completes: it is served and no longer counts
    head, _ = read_response(slow[0], bytearray())
    assert head.startswith(b"HTTP/1.1 200 ")
    wait_for(lambda: server.incoming == 2 * len(part))
    for sock in slow:
        sock.close()
    wait_for(lambda: server.incoming == 0)
    assert recorder.count("/metrics") == 1
