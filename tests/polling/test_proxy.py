"""Requests through a real forward proxy (proxy.py from PyPI, started by the tests).

The proxy's access log shows what went through it (``GET host:port/path`` for plain http,
``CONNECT host:port`` for a tunnel); proxy.py writes a line when the client's connection
closes, so a test closes its client before reading it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from exporter.config import parse_config
from exporter.demo.simulator import Simulator
from exporter.polling.client import StoreClient
from exporter.polling.transport import Transport
from exporter.web.routes import App
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    config_yaml,
    free_port,
    make_exporter,
    scrape,
    wait_until,
    write,
    wsgi,
)

USER = "proxy-user"
PASSWORD = "pr0xy-Pa55word-never-shown"


class ForwardProxy:
    """proxy.py as a subprocess on a free loopback port; ``auth``: ``user:password``."""

    def __init__(self, workdir: Path, auth: str = "") -> None:
        self.log = workdir / "proxy.log"
        port_file = workdir / "proxy.port"
        args = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"]
        args += ["--port-file", str(port_file), "--log-file", str(self.log)]
        args += ["--threaded", "--num-workers", "1", "--num-acceptors", "1"]
        if auth:
            args += ["--basic-auth", auth]
        self.proc = subprocess.Popen(  # its own group: its workers end with it
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_until(lambda: port_file.exists() and port_file.read_text().strip() != "")
        self.port = int(port_file.read_text().split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def saw(self, text: str) -> bool:
        """Whether the access log has a line with ``text``."""
        return self.log.exists() and text in self.log.read_text(errors="replace")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    server = ForwardProxy(tmp_path_factory.mktemp("proxy"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    server = ForwardProxy(tmp_path_factory.mktemp("auth-proxy"), f"{USER}:{PASSWORD}")
    yield server
    server.stop()


@pytest.fixture
def tls_sim(tls_dir: Path) -> Iterator[Simulator]:
    """The simulator over HTTPS with a certificate of the session's test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    with Simulator(tokens=(TOKEN,), tls=context) as sim:
        yield sim


def client_for(
    url: str,
    environ: dict[str, str] | None = None,
    *,
    transport: Transport | None = None,
    **keys: Any,
) -> StoreClient:
    env = {TOKEN_ENV: TOKEN, **(environ or {})}
    config = parse_config(config_yaml(url, ["t1"], **keys), environ=env)
    return StoreClient(config.stores[0], transport=transport)


def with_auth(url: str, user: str, password: str) -> str:
    return url.replace("http://", f"http://{user}:{password}@")


def test_plain_http_goes_through_the_proxy(sim: Simulator, proxy: ForwardProxy) -> None:
    sim.add_task("plain1", total=2, finished=1)
    client = client_for(sim.url, proxy_url=proxy.url)
    try:
        result = client.fetch("plain1")
    finally:
        client.close()
    assert result.code == "200" and result.snapshot is not None
    assert sim.requests[-1].token == TOKEN
    wait_until(lambda: proxy.saw(f"GET 127.0.0.1:{sim.port}/openapi/2022-01/file/task/plain1"))


def test_https_goes_through_connect_with_the_store_ca(
    tls_sim: Simulator, tls_dir: Path, proxy: ForwardProxy
) -> None:
    tls_sim.add_task("t1", total=2, finished=1)
    client = client_for(
        tls_sim.url, proxy_url=proxy.url, tls_config=f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    )
    try:
        result = client.fetch("t1")
    finally:
        client.close()
    assert result.code == "200" and result.snapshot is not None
    assert tls_sim.requests[-1].token == TOKEN
    wait_until(lambda: proxy.saw(f"CONNECT 127.0.0.1:{tls_sim.port}"))


def test_a_wrong_ca_fails_through_the_proxy_too(
    tls_sim: Simulator, tmp_path: Path, proxy: ForwardProxy
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    tls_sim.add_task("t1", total=2, finished=1)
    client = client_for(tls_sim.url, proxy_url=proxy.url, tls_config=f'{{ca_file: "{other}"}}')
    try:
        result = client.fetch("t1")
    finally:
        client.close()
    assert result.code == "connection_error" and result.detail.startswith("TLS error")
    assert tls_sim.requests == []
    wait_until(lambda: proxy.saw(f"CONNECT 127.0.0.1:{tls_sim.port}"))


def test_verify_and_skip_verify_never_share_a_tunnel(
    tls_sim: Simulator, tmp_path: Path, proxy: ForwardProxy
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    tls_sim.add_task("t1", total=2, finished=1)
    transport = Transport(pool_size=4)
    try:
        skip = client_for(
            tls_sim.url,
            transport=transport,
            proxy_url=proxy.url,
            tls_config="{insecure_skip_verify: true}",
        )
        assert skip.fetch("t1").code == "200"  # its tunnel is kept alive
        strict = client_for(
            tls_sim.url,
            transport=transport,
            proxy_url=proxy.url,
            tls_config=f'{{ca_file: "{other}"}}',
        )
        assert strict.fetch("t1").code == "connection_error"
        assert transport.hosts == 2
        assert skip.release() is True and transport.hosts == 0  # both: one store name
    finally:
        transport.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_are_sent_and_wrong_ones_fail(
    scheme: str, sim: Simulator, tls_sim: Simulator, tls_dir: Path, auth_proxy: ForwardProxy
) -> None:
    origin = sim if scheme == "http" else tls_sim
    origin.add_task("t1", total=2, finished=1)
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    outcomes = {}
    for name, url in [
        ("right", with_auth(auth_proxy.url, USER, PASSWORD)),
        ("wrong", with_auth(auth_proxy.url, USER, "not-" + PASSWORD)),
        ("none", auth_proxy.url),
    ]:
        client = client_for(origin.url, proxy_url=f'"{url}"', tls_config=tls)
        try:
            outcomes[name] = client.fetch("t1")
        finally:
            client.close()
    assert outcomes["right"].code == "200"
    assert len(origin.requests) == 1
    for name in ("wrong", "none"):
        result = outcomes[name]
        if scheme == "http":  # the proxy's own answer
            assert result.code == "407"
        else:  # the tunnel was refused
            assert result.code == "connection_error" and "407" in result.detail
        assert PASSWORD not in result.detail


def test_proxy_credentials_never_in_logs_pages_or_metrics(
    sim: Simulator, auth_proxy: ForwardProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim.add_task("t1", total=2, finished=1)
    wrong = "wr0ng-" + PASSWORD
    secrets = [PASSWORD, wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode()]
    url = with_auth(auth_proxy.url, USER, wrong)
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(
        write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], proxy_url=url))
    )
    try:
        app = App(exporter)
        wait_until(lambda: 'code="407"' in scrape(app))
        bodies = [wsgi(app, path)[2].decode() for path in ("/", "/api/v1/tasks", "/metrics")]
        bodies += [wsgi(app, "/tasks/shop/t1")[2].decode()]
    finally:
        exporter.close()
    # Each record with its extra fields, as the exporter's log formats show them.
    logged = "\n".join(" ".join(map(str, vars(r).values())) for r in caplog.records)
    assert "HTTP 407" in logged  # the failed poll was logged
    for text in [*bodies, logged]:
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_from_environment(
    scheme: str, sim: Simulator, tls_sim: Simulator, tls_dir: Path, proxy: ForwardProxy
) -> None:
    origin = sim if scheme == "http" else tls_sim
    origin.add_task("env1", total=2, finished=1)
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    variable = "HTTPS_PROXY" if scheme == "https" else "http_proxy"
    client = client_for(
        origin.url, {variable: proxy.url}, proxy_from_environment="true", tls_config=tls
    )
    try:
        assert client.fetch("env1").code == "200"
    finally:
        client.close()
    seen = "CONNECT 127.0.0.1" if scheme == "https" else "GET 127.0.0.1"
    wait_until(lambda: proxy.saw(f"{seen}:{origin.port}"))


def test_no_proxy_exempts_a_host_from_the_environment_proxy(
    tls_sim: Simulator, tls_dir: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a proxied request fails
    tls_sim.add_task("t1", total=2, finished=1)
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    results = {}
    for no_proxy in ("", "example.com, 127.0.0.0/8", f"127.0.0.1:{tls_sim.port + 1}"):
        env = {"HTTPS_PROXY": dead, "NO_PROXY": no_proxy}
        client = client_for(tls_sim.url, env, proxy_from_environment="true", tls_config=tls)
        try:
            results[no_proxy] = client.fetch("t1").code
        finally:
            client.close()
    assert results == {
        "": "connection_error",
        "example.com, 127.0.0.0/8": "200",
        f"127.0.0.1:{tls_sim.port + 1}": "connection_error",  # another port
    }


def test_the_environment_is_not_used_by_default(tls_sim: Simulator, tls_dir: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    tls_sim.add_task("t1", total=2, finished=1)
    env = {"HTTPS_PROXY": dead, "https_proxy": dead}
    os_env = dict(os.environ)
    client = client_for(tls_sim.url, env, tls_config=f'{{ca_file: "{tls_dir / "ca.pem"}"}}')
    try:
        os.environ.update(env)  # nor the process's own
        assert client.fetch("t1").code == "200"
    finally:
        os.environ.clear()
        os.environ.update(os_env)
        client.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_dead_proxy_is_a_connection_error(
    scheme: str, sim: Simulator, tls_sim: Simulator, tls_dir: Path
) -> None:
    origin = sim if scheme == "http" else tls_sim
    origin.add_task("t1", total=2, finished=1)
    dead = f"http://127.0.0.1:{free_port()}"
    client = client_for(
        origin.url, proxy_url=dead, tls_config=f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    )
    try:
        result = client.fetch("t1")
    finally:
        client.close()
    assert result.code == "connection_error"
    assert origin.requests == []


@pytest.fixture
def dripping_proxy() -> Iterator[str]:
    """A proxy that answers every request (CONNECT included) with a head that never ends,
    a byte every 50 ms: socket timeouts never fire, only the request's deadline can."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            data = b"HTTP/1.1 200 Connection established\r\n" + b"X-Wait: yes\r\n" * 10_000
            for byte in data:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stalling_proxy_times_out_at_the_store_timeout(
    scheme: str, sim: Simulator, tls_sim: Simulator, tls_dir: Path, dripping_proxy: str
) -> None:
    origin = sim if scheme == "http" else tls_sim
    origin.add_task("t1", total=2, finished=1)
    client = client_for(
        origin.url,
        proxy_url=dripping_proxy,
        timeout="1s",
        tls_config=f'{{ca_file: "{tls_dir / "ca.pem"}"}}',
    )
    start = time.monotonic()
    try:
        result = client.fetch("t1")
    finally:
        client.close()
    elapsed = time.monotonic() - start
    assert result.code == "timeout", result
    assert 1.0 <= elapsed < 5.0  # cut by the deadline, not by a socket timeout
