"""Tests for exporter.web.server: listening, requests, TLS, auth, rotation, the scrape header.

Real sockets on loopback, a trivial WSGI app (tests/web/serving.py), trustme PKI.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.model import ExporterView
from exporter.web.routes import App
from exporter.web.server import REALM, ExporterServer, parse_listen_address
from exporter.web.webconfig import WebConfigError
from tests.helpers import config_yaml, make_exporter, write
from tests.web.serving import (
    HASH,
    MTLS,
    PASSWORD,
    TLS,
    FakeClock,
    app,
    basic,
    client_context,
    raw_exchange,
    request,
    wait_for,
    web_config,
    write_atomic,
)

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


# -- TLS -------------------------------------------------------------------------------


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
    server = make_server(web_config(tmp_path, config), refusal_delay=0)
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


# -- the scrape-timeout header, through the real server and app ----------------------------


class RecordingExporter:
    """The real exporter, recording the deadline each scrape asks ``refresh`` for."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.timeouts: list[float] = []

    def refresh(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.exporter.refresh(timeout)

    def view(self) -> ExporterView:
        return self.exporter.view()

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
