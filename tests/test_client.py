"""The API client against the simulator: every outcome classified into its code."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import __version__
from exporter.client import (
    MAX_BODY_BYTES,
    InvalidResponse,
    StoreClient,
    parse_retry_after,
    parse_task,
)
from exporter.config import parse_config
from exporter.demo.simulator import Reply, Simulator
from exporter.model import INVALID_RESPONSE
from tests.helpers import TOKEN, TOKEN_ENV, config_yaml, free_port


def client_for(url: str, **keys: Any) -> StoreClient:
    config = parse_config(config_yaml(url, ["t1"], **keys), environ={TOKEN_ENV: TOKEN})
    return StoreClient(config.stores[0])


@pytest.fixture
def client(sim: Simulator) -> StoreClient:
    sim.add_task(
        "t1",
        total=3,
        finished=2,
        success_list=[{"file_uri": "u", "origin_link": "o", "upload_link": "l"}] * 2,
        failure_list=[{"origin_link": "http://img/a.jpg", "reason": "download timeout"}],
        origin_list=["a", "b", "c"],
    )
    return client_for(sim.url, timeout="1s")


@pytest.mark.parametrize("shape", ["flat", "wrapped"])
def test_both_shapes_parse(sim: Simulator, client: StoreClient, shape: str) -> None:
    sim.set_shape("t1", shape)
    result = client.fetch("t1")
    assert result.code == "200" and result.ok
    snap = result.snapshot
    assert snap is not None
    assert (snap.total, snap.finished, snap.status, snap.succeeded, snap.failed) == (3, 2, 1, 2, 1)
    assert snap.failures[0].origin_link == "http://img/a.jpg"
    assert snap.failures[0].reason == "download timeout"


def test_request_carries_contract_headers(sim: Simulator, client: StoreClient) -> None:
    client.fetch("t1")
    request = sim.requests[-1]
    assert request.path == "/openapi/2022-01/file/task/t1"
    assert request.token == TOKEN
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == f"shoplazza-upload-exporter/{__version__}"


def test_api_version_in_url(sim: Simulator) -> None:
    sim.add_task("t1", total=1)
    client_for(sim.url, api_version='"2025-06"').fetch("t1")
    assert sim.requests[-1].path == "/openapi/2025-06/file/task/t1"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422, 429, 500, 502, 503, 504])
@pytest.mark.parametrize(
    "body", [b'{"error": "bad thing"}', b'{"errors": ["bad", "thing"]}', b"<html>oops</html>"]
)
def test_error_statuses_are_their_code(
    sim: Simulator, client: StoreClient, status: int, body: bytes
) -> None:
    sim.script("t1", Reply(status=status, body=body))
    result = client.fetch("t1")
    assert result.code == str(status)
    assert not result.ok
    assert TOKEN not in result.detail


def test_error_detail_quotes_api_message(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(status=422, body=b'{"errors": ["task id malformed"]}'))
    assert "task id malformed" in client.fetch("t1").detail


def test_wrong_token_is_401(sim: Simulator, client: StoreClient) -> None:
    sim.set_tokens("another")
    assert client.fetch("t1").code == "401"


def test_unknown_task_is_404(client: StoreClient) -> None:
    assert client.fetch("nope").code == "404"


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"[1, 2, 3]",
        b'"just a string"',
        b"{}",
        b'{"total": 3, "finished": 1}',
        b'{"total": "three", "finished": 1, "status": 1}',
        b'{"total": 3, "finished": -1, "status": 1}',
        b'{"total": 3.5, "finished": 1, "status": 1}',
        b'{"total": true, "finished": 1, "status": 1}',
        b'{"total": null, "finished": 1, "status": 1}',
        b'{"total": 3, "finished": 1, "status": 1, "failure_list": "none"}',
        b'{"total": 3, "finished": 1, "status": 1, "success_list": {"a": 1}}',
        b'{"total": 3, "finished": 1, "status": 1, "origin_list": 5}',
        b'{"code": "Success"}',
        b'{"code": "Success", "data": null}',
        b'{"code": "Success", "data": [1]}',
        b'{"code": "Success", "data": {"total": 1}}',
        b'{"total": "3 ", "finished": 1, "status": 1}',
        b'{"total": "-3", "finished": 1, "status": 1}',
        b'{"total": 1e400, "finished": 1, "status": 1}',
        b"[" * 100000 + b"]" * 100000,
    ],
)
def test_off_shape_200_is_invalid_response(
    sim: Simulator, client: StoreClient, body: bytes
) -> None:
    sim.script("t1", Reply(status=200, body=body))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE
    assert not result.ok


def test_numeric_strings_and_missing_lists_accepted(sim: Simulator, client: StoreClient) -> None:
    body = b'{"total": "3", "finished": "2", "status": "0", "success_list": null}'
    sim.script("t1", Reply(status=200, body=body))
    result = client.fetch("t1")
    assert result.snapshot is not None
    assert (result.snapshot.total, result.snapshot.finished, result.snapshot.status) == (3, 2, 0)
    assert result.snapshot.succeeded == 0 and result.snapshot.failed == 0
    assert result.snapshot.completed


def test_unknown_status_value_kept(sim: Simulator, client: StoreClient) -> None:
    sim.task("t1").status = 7
    result = client.fetch("t1")
    assert result.snapshot is not None and result.snapshot.status == 7
    assert not result.snapshot.completed


def test_non_2xx_success_code_counts_as_status(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(status=204, body=b""))
    assert client.fetch("t1").code == INVALID_RESPONSE


def test_slow_answer_beyond_timeout(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(latency=3.0))
    start = time.monotonic()
    result = client.fetch("t1")
    assert result.code == "timeout"
    assert time.monotonic() - start < 2.5


def test_connection_refused() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}")
    result = client.fetch("t1")
    assert result.code == "connection_error"
    assert TOKEN not in result.detail


def test_redirect_not_followed_and_token_never_travels(sim: Simulator, client: StoreClient) -> None:
    with Simulator(tokens=("x",)) as other:
        other.add_task("t1", total=1)
        location = other.task_url("t1")
        for status in (301, 302, 307, 308):
            sim.script("t1", Reply(status=status, headers={"Location": location}))
            result = client.fetch("t1")
            assert result.code == str(status)
            assert not result.ok
        assert other.count() == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_limit_refused(sim: Simulator, client: StoreClient, chunked: bool) -> None:
    sim.script("t1", Reply(status=200, body_size=MAX_BODY_BYTES + 1024 * 1024, chunked=chunked))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE
    assert "exceeds" in result.detail


def test_body_just_under_limit_is_parsed(sim: Simulator, client: StoreClient) -> None:
    body = json.dumps({"total": 1, "finished": 1, "status": 0, "pad": "x" * (1024 * 1024)})
    sim.script("t1", Reply(status=200, body=body.encode()))
    assert client.fetch("t1").ok


def test_invalid_task_id_never_reaches_url(client: StoreClient) -> None:
    for bad in ("../x", "a/b", "a?b", "", "x" * 129, "a b"):
        with pytest.raises(ValueError):
            client.url(bad)


def test_retry_after_forms() -> None:
    assert parse_retry_after(None) == 1.0
    assert parse_retry_after("") == 1.0
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("100000") == 600.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after("soon") == 1.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_429_carries_retry_after(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(status=429, headers={"Retry-After": "4"}))
    result = client.fetch("t1")
    assert result.code == "429" and result.retry_after == 4.0


def test_token_file_rotation_used_from_next_request(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=1)
    token_file = tmp_path / "token"
    token_file.write_text("first-token-0000001\n")
    sim.set_tokens("first-token-0000001", "second-token-000002")
    text = f"stores:\n  - name: s\n    base_url: {sim.url}\n    access_token_file: {token_file}\n"
    client = StoreClient(parse_config(text).stores[0])
    client.fetch("t1")
    token_file.write_text("second-token-000002\n")
    client.fetch("t1")
    token_file.unlink()  # mid-rotation: the last good token keeps working
    client.fetch("t1")
    assert [r.token for r in sim.requests] == [
        "first-token-0000001",
        "second-token-000002",
        "second-token-000002",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("total", "finished", "status"),
                    *("success_list", "failure_list", "origin_list", "code", "data", "x"),
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_parser_raises_only_invalid_response(value: object) -> None:
    try:
        snap = parse_task(value)
    except InvalidResponse:
        return
    assert snap.total >= 0 and snap.finished >= 0 and snap.status >= 0
    assert snap.failed >= len(snap.failures)


def test_arbitrary_bytes_never_crash(sim: Simulator, client: StoreClient) -> None:
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=200))
    def check(body: bytes) -> None:
        sim.script("t1", Reply(status=200, body=body))
        result = client.fetch("t1")
        assert result.code in ("200", INVALID_RESPONSE)

    check()


@pytest.fixture
def https_api(tls_dir: Path) -> Iterator[str]:
    """An HTTPS endpoint answering every path with a valid task body."""
    from exporter.web.server import ExporterServer

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"total": 2, "finished": 1, "status": 1}']

    web = tls_dir / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n")
    server = ExporterServer(app, "127.0.0.1:0", str(web))
    server.start()
    yield f"https://127.0.0.1:{server.address[1]}"
    server.shutdown()


def test_tls_verified_with_ca_file(https_api: str, tls_dir: Path) -> None:
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    assert client_for(https_api, tls_config=tls).fetch("t1").code == "200"


def test_tls_unknown_ca_refused(https_api: str) -> None:
    result = client_for(https_api).fetch("t1")
    assert result.code == "connection_error"
    assert "SSL" in result.detail or "certificate" in result.detail.lower()


def test_tls_insecure_skip_verify(https_api: str) -> None:
    client = client_for(https_api, tls_config="{insecure_skip_verify: true}")
    assert client.fetch("t1").code == "200"


def test_api_text_echoing_the_token_is_redacted(sim: Simulator, client: StoreClient) -> None:
    echo = f'{{"error": "invalid access-token {TOKEN}"}}'.encode()
    sim.script("t1", Reply(status=401, body=echo))
    sim.script("t1", Reply(status=302, headers={"Location": f"http://evil.example/?t={TOKEN}"}))
    for _ in range(2):
        result = client.fetch("t1")
        assert TOKEN not in result.detail and "<redacted>" in result.detail
    sim.task("t1").failure_list.append({"origin_link": f"http://x/{TOKEN}", "reason": TOKEN})
    result = client.fetch("t1")
    assert result.snapshot is not None
    shown = " ".join(f"{f.origin_link} {f.reason}" for f in result.snapshot.failures)
    assert TOKEN not in shown and "<redacted>" in shown


def test_dripping_body_times_out_at_the_request_timeout(
    sim: Simulator, client: StoreClient
) -> None:
    sim.script("t1", Reply(drip=0.2))  # ~150 bytes at 5 a second: 30 s if left alone
    result = client.fetch("t1")
    assert result.code == "timeout"
    assert result.duration < 1.0 + 0.5  # the store's timeout is 1 s
    assert client.fetch("t1").code == "200"  # the pool recovers


def test_declared_length_over_limit_refused_without_reading(
    sim: Simulator, client: StoreClient
) -> None:
    # The server claims 11 MiB but sends 2 bytes and waits: reading would end in a timeout.
    lie = {"Content-Length": str(MAX_BODY_BYTES + 1024 * 1024)}
    sim.script("t1", Reply(status=200, body=b"{}", headers=lie))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE
    assert "exceeds" in result.detail


def test_endless_chunked_body_is_not_held(sim: Simulator, client: StoreClient) -> None:
    import tracemalloc

    sim.script("t1", Reply(status=200, body_size=200 * 1024 * 1024, chunked=True))
    tracemalloc.start()
    try:
        result = client.fetch("t1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.code == INVALID_RESPONSE
    assert peak < 2 * MAX_BODY_BYTES + 4 * 1024 * 1024  # not 200 MiB
