"""The shared session: per-host pools, releases that never cut a request, stores kept apart."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from urllib3.connection import HTTPSConnection

from exporter.config import parse_config
from exporter.demo.simulator import Reply, Simulator
from exporter.polling.client import StoreClient
from exporter.polling.transport import Deadline, Transport, origin_of
from tests.helpers import TOKEN, TOKEN_ENV, free_port, store_yaml
from tests.polling.test_client import https_api  # noqa: F401 - the fixture


def shared_client(transport: Transport, url: str, name: str = "shop", **keys: Any) -> StoreClient:
    text = "stores:\n" + store_yaml(name, url, ["t1"], **keys)
    config = parse_config(text, environ={TOKEN_ENV: TOKEN})
    return StoreClient(config.stores[0], transport=transport)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://Acme.MyShoplaza.com", ("https", "acme.myshoplaza.com", 443)),
        ("HTTP://127.0.0.1:8080/prefix", ("http", "127.0.0.1", 8080)),
        ("http://[::1]:9000", ("http", "::1", 9000)),
        ("http://example.com", ("http", "example.com", 80)),
    ],
)
def test_origin_of(url: str, origin: tuple[str, str, int]) -> None:
    assert origin_of(url) == origin


def test_origin_matches_the_pool_urllib3_keys(sim: Simulator) -> None:
    """A host written in capitals still finds (and releases) the pool it used."""
    sim.add_task("t1", total=2, finished=1)
    transport = Transport(pool_size=4)
    url = sim.url.replace("127.0.0.1", "LocalHost")
    client = shared_client(transport, url)
    assert client.fetch("t1").code == "200"
    assert transport.holds(origin_of(url)) and transport.hosts == 1
    assert client.release()
    assert not transport.holds(origin_of(url)) and transport.hosts == 0
    assert client.fetch("t1").code == "200"  # a new pool, a new connection
    transport.close()


def test_an_answer_setting_a_cookie_never_reaches_another_request(sim: Simulator) -> None:
    """One session serves every store: a cookie one store's answer sets is not kept."""
    sim.add_task("t1", total=2, finished=1)
    sim.script("t1", Reply(headers={"Set-Cookie": "sid=store-a-secret; Path=/"}))
    transport = Transport(pool_size=4)
    first, second = shared_client(transport, sim.url), shared_client(transport, sim.url)
    assert first.fetch("t1").code == "200"
    assert second.fetch("t1").code == "200" and first.fetch("t1").code == "200"
    assert [r.headers.get("Cookie") for r in sim.requests] == [None, None, None]
    transport.close()


def test_no_netrc_and_no_proxy_from_the_environment(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc entry for the API host is never sent; proxy variables are not followed."""
    sim.add_task("t1", total=2, finished=1)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = Transport(pool_size=4)
    assert shared_client(transport, sim.url).fetch("t1").code == "200"
    assert [r.headers.get("Authorization") for r in sim.requests] == [None]
    transport.close()


def test_release_never_closes_a_pool_with_a_request_in_flight(sim: Simulator) -> None:
    """Another store of the same host has a request in flight: its pool stays."""
    sim.add_task("t1", total=2, finished=1)
    transport = Transport(pool_size=4)
    idle, busy = shared_client(transport, sim.url), shared_client(transport, sim.url)
    assert idle.fetch("t1").code == "200"
    sim.script("t1", Reply(latency=1.0))  # in flight long enough to try a release
    results: list[str] = []
    worker = threading.Thread(target=lambda: results.append(busy.fetch("t1").code))
    worker.start()
    try:
        assert sim.wait_for(lambda s: s.in_flight == 1, 10)
        assert not idle.release()  # busy's request is in flight on this host
        assert idle.holds_connections and transport.hosts == 1
    finally:
        worker.join(10)
    assert results == ["200"]
    assert idle.release() and transport.hosts == 0
    transport.close()


def test_a_host_pool_stays_while_another_store_of_the_host_uses_it(sim: Simulator) -> None:
    """Stores behind one host (a proxy): one going idle does not cut the others' connections."""
    sim.add_task("t1", total=2, finished=1)
    transport = Transport(pool_size=4)
    idle = shared_client(transport, sim.url, name="idle")
    busy = shared_client(transport, sim.url, name="busy")
    assert idle.fetch("t1").code == "200" and busy.fetch("t1").code == "200"
    assert not idle.release() and transport.hosts == 1
    assert busy.fetch("t1").code == "200"
    assert busy.release() and transport.hosts == 0
    assert not idle.release()  # nothing left to close
    transport.close()


def test_hosts_beyond_the_bound_close_the_least_recently_used() -> None:
    """Pools are bounded; a host whose pool was closed still polls, and releasing it is
    harmless."""
    transport = Transport(pool_size=2, max_hosts=2)
    with (
        Simulator(tokens=(TOKEN,)) as a,
        Simulator(tokens=(TOKEN,)) as b,
        Simulator(tokens=(TOKEN,)) as c,
    ):
        clients = []
        for sim in (a, b, c):
            sim.add_task("t1", total=2, finished=1)
            clients.append(shared_client(transport, sim.url))
        for _ in range(2):
            assert [client.fetch("t1").code for client in clients] == ["200"] * 3
            assert transport.hosts == 2
        assert not transport.holds(origin_of(a.url))  # the least recently used, closed
        assert not clients[0].release()  # nothing left to close, and no error
        assert [client.fetch("t1").code for client in clients] == ["200"] * 3
    transport.close()


def test_tls_settings_of_one_store_never_reach_another_on_the_same_host(
    https_api: str,  # noqa: F811 - the fixture
) -> None:
    """A store that skips verification opens a pool; a verifying store still verifies."""
    transport = Transport(pool_size=4)
    lax = shared_client(transport, https_api, tls_config="{insecure_skip_verify: true}")
    strict = shared_client(transport, https_api)
    assert lax.fetch("t1").code == "200"
    result = strict.fetch("t1")
    assert result.code == "connection_error"
    assert result.detail.startswith("TLS error: certificate verify failed: ")
    assert lax.fetch("t1").code == "200"
    transport.close()


@pytest.fixture
def https_sim(tls_dir: Path) -> Iterator[Simulator]:
    """The simulator speaking HTTPS with a certificate for 127.0.0.1 and localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    with Simulator(tokens=(TOKEN,), tls=context) as sim:
        sim.add_task("t1", total=2, finished=1)
        yield sim


def test_the_simulator_speaks_https(https_sim: Simulator, tls_dir: Path) -> None:
    assert https_sim.url.startswith("https://127.0.0.1:")
    transport = Transport(pool_size=4)
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    assert shared_client(transport, https_sim.url, tls_config=tls).fetch("t1").code == "200"
    plain = shared_client(transport, https_sim.url.replace("https:", "http:"))
    assert plain.fetch("t1").code == "connection_error"  # no TLS, no answer
    transport.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_connections_share_one_tls_context_per_ca_file(https_sim: Simulator, tls_dir: Path) -> None:
    """urllib3 would make (and load CAs into) a context per connection: ~0.9 MB each."""
    transport = Transport(pool_size=4)
    ca = str(tls_dir / "ca.pem")
    other = https_sim.url.replace("127.0.0.1", "localhost")  # another host, same server
    used = []
    for url, verify in ((https_sim.url, ca), (other, ca), (https_sim.url, False), (other, False)):
        for _ in range(2):  # a new connection, then a kept-alive one
            with transport.exchange(
                url + "/openapi/2022-01/file/task/t1",
                headers={"access-token": TOKEN},
                verify=verify,
                deadline=Deadline(5),
                user="a",
            ) as response:
                assert response.status == 200
                connection = response.connection
                assert isinstance(connection, HTTPSConnection)
                assert isinstance(connection.sock, ssl.SSLSocket)
                used.append(connection.sock.context)
                response.read()
    assert transport.hosts == 4  # two hosts, each verified and not
    assert len({id(context) for context in used}) == 2  # one per CA file, one lax
    assert set(map(id, transport.contexts())) == {id(context) for context in used}
    assert transport.tls_context(ca) in used and transport.tls_context(False) in used
    transport.close()


def test_a_changed_ca_file_applies_to_new_connections(https_sim: Simulator, tls_dir: Path) -> None:
    transport = Transport(pool_size=4)
    ca_file = tls_dir / "mine.pem"
    ca_file.write_bytes((tls_dir / "ca.pem").read_bytes())
    client = shared_client(transport, https_sim.url, tls_config=f'{{ca_file: "{ca_file}"}}')
    assert client.fetch("t1").code == "200"
    trustme.CA().cert_pem.write_to_path(str(ca_file))  # rotated to another authority
    client.release()  # the next request opens a new connection
    result = client.fetch("t1")
    assert result.code == "connection_error"
    assert result.detail.startswith("TLS error: certificate verify failed")
    ca_file.unlink()
    client.release()
    result = client.fetch("t1")  # a failed request, not a crash
    assert result.code == "connection_error" and str(ca_file) in result.detail
    ca_file.write_bytes((tls_dir / "ca.pem").read_bytes())
    client.release()
    assert client.fetch("t1").code == "200"
    transport.close()
