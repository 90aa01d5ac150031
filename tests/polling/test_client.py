"""The API client against the simulator: every outcome classified into its code."""

from __future__ import annotations

import email.utils
import gc
import gzip
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import __version__
from exporter.config import TokenSource, parse_config
from exporter.demo.simulator import Reply, Simulator
from exporter.model import INVALID_RESPONSE, FailedFile
from exporter.polling.client import (
    MAX_BODY_BYTES,
    InvalidResponse,
    StoreClient,
    parse_retry_after,
    parse_task,
)
from exporter.polling.redaction import KEPT, Redactor
from exporter.polling.transport import Transport
from tests.helpers import TOKEN, TOKEN_ENV, config_yaml, free_port, make_exporter


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


@pytest.mark.parametrize("status", [200, 401, 403, 422])
def test_2025_06_error_body_keeps_its_message(
    sim: Simulator, client: StoreClient, status: int
) -> None:
    body = b'{"code": "InvalidAccessToken", "message": "access token expired at 12:00"}'
    sim.script("t1", Reply(status=status, body=body))
    result = client.fetch("t1")
    assert not result.ok
    if status == 200:
        assert result.detail == (
            "wrapped response without a data object"
            " (InvalidAccessToken: access token expired at 12:00)"
        )
    else:
        assert result.detail == f"HTTP {status}: InvalidAccessToken: access token expired at 12:00"


def test_lone_surrogates_from_the_api_are_replaced(sim: Simulator, client: StoreClient) -> None:
    sim.task("t1").failure_list.append({"origin_link": "\ud800x", "reason": "a\udfffb"})
    sim.script("t1", Reply(status=422, body=b'{"error": "bad \\ud83d"}'))
    assert client.fetch("t1").detail == "HTTP 422: bad \ufffd"
    snap = client.fetch("t1").snapshot
    assert snap is not None
    assert snap.failures[-1] == FailedFile("\ufffdx", "a\ufffdb")


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (502, b"<html>Bad Gateway</html>", "HTTP 502 Bad Gateway"),
        (503, b"[1, 2]", "HTTP 503 Service Unavailable"),
        (400, b'{"errors": []}', "HTTP 400 Bad Request"),
        (400, b'{"error": "' + b"e" * 300 + b'"}', "HTTP 400: " + "e" * 200),
        (401, b'{"code": "C", "message": "' + b"m" * 300 + b'"}', "HTTP 401: C: " + "m" * 200),
        (404, b'{"message": "no such task"}', "HTTP 404: no such task"),
    ],
)
def test_error_detail_texts(
    sim: Simulator, client: StoreClient, status: int, body: bytes, detail: str
) -> None:
    sim.script("t1", Reply(status=status, body=body))
    assert client.fetch("t1").detail == detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[1]", "expected a JSON object, got list"),
        (b'{"finished": 1, "status": 1}', "total: missing"),
        (b'{"total": 1, "finished": -2, "status": 1}', "finished: negative value int -2"),
        (b'{"total": 1, "finished": 1, "status": "x"}', "status: expected a non-negative integer"),
        (b'{"total": 1, "finished": 1, "status": 1, "failure_list": 3}', "failure_list: expected"),
        (b'{"total": 1e308, "finished": 1, "status": 1}', "total is not an exact integer (1e+308"),
        (b'{"total": 9.1e15, "finished": 1, "status": 1}', "total is not an exact integer (91000"),
        (b'{"total": 1e400, "finished": 1, "status": 1}', "total is out of range (1e400)"),
        (b'{"total": ' + b"7" * 5000 + b', "finished": 1, "status": 1}', "total has 5000 digits"),
        (b'{"total": 1, "finished": -' + b"7" * 99 + b', "status": 1}', "finished has 99 digits"),
        (b'{"total": 1, "finished": 1, "status": NaN}', "body is not JSON: NaN is not a JSON"),
        (b'{"total": 1, "finished": 1, "status": 1, "x": -Infinity}', "body is not JSON: -Inf"),
        (b"[" * 100_000 + b"]" * 100_000, "body nests too deep"),
        (b'{"code": "Success"}', "wrapped response without a data object (Success)"),
    ],
)
def test_invalid_response_details(
    sim: Simulator, client: StoreClient, body: bytes, detail: str
) -> None:
    sim.script("t1", Reply(status=200, body=body))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE and result.detail.startswith(detail)


def test_flat_body_with_a_code_key_is_flat(sim: Simulator, client: StoreClient) -> None:
    for body in (
        b'{"code": "Success", "total": 3, "finished": 1, "status": 1}',
        b'{"code": "Success", "status": 1, "finished": 1, "total": 3, "data": null}',
    ):
        sim.script("t1", Reply(status=200, body=body))
        snap = client.fetch("t1").snapshot
        assert snap is not None and (snap.total, snap.finished) == (3, 1)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"origin_link": "o", "file_uri": "f", "reason": "r"}, FailedFile("o", "r")),
        ({"file_uri": "f", "url": "u", "error": "e"}, FailedFile("f", "e")),
        ({"url": "u", "error_message": "em", "message": "m"}, FailedFile("u", "em")),
        ({"message": "m", "msg": "g"}, FailedFile("", "m")),
        ({"msg": "g", "errors": ["x"]}, FailedFile("", "g")),
        ({"errors": ["x", "é"]}, FailedFile("", '["x", "é"]')),
        ({"reason": "", "error": "second"}, FailedFile("", "second")),
        ({"reason": {"why": "ü"}}, FailedFile("", '{"why": "ü"}')),
        ("http://img/plain.jpg", FailedFile("http://img/plain.jpg", "")),
        (None, FailedFile("", "")),
        (7, FailedFile("7", "")),
    ],
)
def test_failed_file_entry_shapes(
    sim: Simulator, client: StoreClient, entry: object, expected: FailedFile
) -> None:
    body = {"total": 1, "finished": 1, "status": 0, "failure_list": [entry]}
    sim.script("t1", Reply(status=200, body=json.dumps(body).encode()))
    snap = client.fetch("t1").snapshot
    assert snap is not None and snap.failures == (expected,)


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


HUGE = "1" + "0" * 400


@pytest.mark.parametrize("key", ["total", "finished", "status"])
@pytest.mark.parametrize(
    "value",
    ["9007199254740993", '"9007199254740993"', HUGE, f'"{HUGE}"', "1e300", "1e16"],
    ids=["2^53+1", "2^53+1-string", "10^400", "10^400-string", "1e300", "1e16"],
)
def test_integer_above_2_53_is_invalid_response(
    sim: Simulator, client: StoreClient, key: str, value: str
) -> None:
    fields = {"total": "5", "finished": "3", "status": "1", key: value}
    body = "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"
    for wrapped in (body, '{"code":"Success","data":' + body + "}"):
        sim.script("t1", Reply(status=200, body=wrapped.encode()))
        result = client.fetch("t1")
        assert result.code == INVALID_RESPONSE
        assert key in result.detail and len(result.detail) < 200


def test_integer_of_exactly_2_53_is_accepted(sim: Simulator, client: StoreClient) -> None:
    limit = 9007199254740992
    body = f'{{"total": {limit}, "finished": "{limit}", "status": 1}}'
    sim.script("t1", Reply(status=200, body=body.encode()))
    snap = client.fetch("t1").snapshot
    assert snap is not None and snap.total == snap.finished == limit


def test_finished_above_total_kept_but_ratio_capped(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(status=200, body=b'{"total": 2, "finished": 5, "status": 1}'))
    snap = client.fetch("t1").snapshot
    assert snap is not None and (snap.total, snap.finished) == (2, 5)
    assert snap.progress_ratio == 1.0


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


def padded_task_body(size: int) -> bytes:
    """A valid task body of exactly ``size`` bytes."""
    head, tail = b'{"total": 1, "finished": 1, "status": 0, "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("chunked", [False, True])
def test_ten_mib_limit_is_exactly_ten_mib(
    sim: Simulator, client: StoreClient, chunked: bool
) -> None:
    # Literal sizes, not derived from MAX_BODY_BYTES: raising the limit must fail here.
    sim.script("t1", Reply(status=200, body=padded_task_body(10_485_761), chunked=chunked))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE and "exceeds" in result.detail
    sim.script("t1", Reply(status=200, body=padded_task_body(10_485_760), chunked=chunked))
    assert client.fetch("t1").ok


def test_body_just_under_limit_is_parsed(sim: Simulator, client: StoreClient) -> None:
    body = json.dumps({"total": 1, "finished": 1, "status": 0, "pad": "x" * (1024 * 1024)})
    sim.script("t1", Reply(status=200, body=body.encode()))
    assert client.fetch("t1").ok


def test_invalid_task_id_never_reaches_url(client: StoreClient) -> None:
    for bad in ("../x", "a/b", "a?b", "", "x" * 129, "a b"):
        with pytest.raises(ValueError):
            client.url(bad)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 1.0),
        ("", 1.0),
        ("7", 7.0),
        (" 7 ", 7.0),
        ("007", 7.0),
        ("600", 600.0),
        ("601", 600.0),
        ("100000", 600.0),
        ("9" * 5000, 600.0),  # int() refuses over 4300 digits; a float of it overflows
        ("0", 1.0),  # at least 1 s
        ("1", 1.0),
        # Anything but ASCII digits or an HTTP date is "absent": 1 s.
        ("-5", 1.0),
        ("+5", 1.0),
        ("2.5", 1.0),
        ("1e3", 1.0),
        ("1e309", 1.0),
        ("1_0", 1.0),
        ("\u0661\u0662", 1.0),  # Arabic-Indic digits: float() reads 12
        ("\uff11\uff12", 1.0),  # fullwidth digits
        ("nan", 1.0),
        ("inf", 1.0),
        ("soon", 1.0),
        ("5 s", 1.0),
        ("Mon, 01 Jan 99999 00:00:00 GMT", 1.0),
    ],
)
def test_retry_after_is_strict(header: str | None, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date() -> None:
    past = time.time() - 100_000  # the given "now" counts, not the clock
    assert 29 <= parse_retry_after(email.utils.formatdate(past + 30, usegmt=True), now=past) <= 31
    # A date without a time zone ("-0000") means nothing exact: 1 s.
    assert parse_retry_after("Sun, 06 Nov 2094 08:49:37 -0000") == 1.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 1.0
    assert parse_retry_after(email.utils.formatdate(now + 86400, usegmt=True), now=now) == 600.0


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_retry_after_never_raises_and_stays_in_range(header: str) -> None:
    assert 1.0 <= parse_retry_after(header) <= 600.0


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


def test_token_file_missing_is_warned_once_per_outage(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim.add_task("t1", total=1)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    text = f"stores:\n  - name: s\n    base_url: {sim.url}\n    access_token_file: {token_file}\n"
    client = StoreClient(parse_config(text).stores[0])

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "exporter.polling.client"]

    with caplog.at_level(logging.INFO, logger="exporter.polling.client"):
        assert client.fetch("t1").ok
        token_file.unlink()
        for _ in range(3):
            assert client.fetch("t1").ok  # the last good token
        assert messages() == ["cannot read the access token, using the last good one"]
        warning = next(r for r in caplog.records if r.name == "exporter.polling.client")
        err = str(getattr(warning, "err", ""))
        assert warning.levelno == logging.WARNING and str(token_file) in err
        assert getattr(warning, "store", None) == "s" and TOKEN not in err
        token_file.write_text(TOKEN)
        client.fetch("t1")
        client.fetch("t1")
        token_file.unlink()
        client.fetch("t1")
        client.fetch("t1")
    assert messages() == [
        "cannot read the access token, using the last good one",
        "access token readable again",
        "cannot read the access token, using the last good one",
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


def test_tls_unknown_ca_refused_with_a_clear_reason(https_api: str) -> None:
    result = client_for(https_api).fetch("t1")
    assert result.code == "connection_error"
    assert result.detail.startswith("TLS error: certificate verify failed: ")
    assert "Max retries" not in result.detail and "Pool" not in result.detail


def test_tls_to_a_plain_http_server_named(sim: Simulator) -> None:
    sim.add_task("t1", total=1)
    result = client_for(sim.url.replace("http://", "https://")).fetch("t1")
    assert result.code == "connection_error"
    assert result.detail.startswith("TLS error: ")
    assert "Max retries" not in result.detail


def test_connection_refused_names_the_cause() -> None:
    result = client_for(f"http://127.0.0.1:{free_port()}").fetch("t1")
    assert result.detail.startswith("NewConnectionError: ")
    assert result.detail.endswith("Connection refused")
    assert "Max retries" not in result.detail and " object at 0x" not in result.detail


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


def test_a_fleet_holds_a_bounded_number_of_redactors(sim: Simulator) -> None:
    """A redactor (about 5 KB) is made only for an answer with API text, shared by token,
    and at most KEPT are kept: one per store held 25 MB for 5,000 stores (bench.fleet)."""
    sim.add_task("t1", total=3, finished=3, status=0)
    store = client_for(sim.url).store
    transport = Transport(pool_size=4)

    def reader(token: str) -> Callable[[TokenSource], str]:
        return lambda _: token

    def redactors() -> int:
        gc.collect()
        return sum(isinstance(o, Redactor) for o in gc.get_objects())

    try:
        before = redactors()
        clients = [StoreClient(store, transport=transport) for _ in range(20)]
        assert all(c.fetch("t1").ok for c in clients)
        assert redactors() == before  # answers without text: none made
        # distinct tokens the simulator refuses: each answer has a text to redact
        clients = [
            StoreClient(store, transport=transport, token_reader=reader(f"{TOKEN}-{i:04d}"))
            for i in range(KEPT + 20)
        ]
        for c in clients:
            result = c.fetch("t1")
            assert result.code == "401" and result.detail
        assert redactors() <= KEPT
    finally:
        transport.close()


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


def test_reload_follows_a_changed_token_source_and_base_url(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=3, finished=1)
    file_token = "file-token-0123456789"
    sim.set_tokens(TOKEN, file_token)
    (tmp_path / "token").write_text(file_token + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config_yaml(sim.url, ["t1"], min_poll_interval="0s"))
    exporter = make_exporter(str(cfg))
    try:
        exporter.refresh(5)
        assert [r.token for r in sim.requests] == [TOKEN]
        text = f"stores:\n  - name: shop\n    base_url: {sim.url}\n"
        text += f"    access_token_file: {tmp_path / 'token'}\n    task_ids: [t1]\n"
        cfg.write_text(text + "    min_poll_interval: 0s\n")
        assert exporter.reload()[0]
        exporter.refresh(5)
        assert [r.token for r in sim.requests] == [TOKEN, file_token]
        with Simulator(tokens=(file_token,)) as other:
            other.add_task("t1", total=3, finished=2)
            cfg.write_text(text.replace(sim.url, other.url) + "    min_poll_interval: 0s\n")
            assert exporter.reload()[0]
            exporter.refresh(5)
            assert sim.count("t1") == 2
            assert [r.token for r in other.requests] == [file_token]
            task = exporter.view().stores[0].tasks[0]
            assert task.snapshot is not None and task.snapshot.finished == 2
    finally:
        exporter.close()


def test_every_outcome_has_a_real_duration(sim: Simulator, client: StoreClient) -> None:
    sim.script(
        "t1",
        Reply(status=200),
        Reply(status=200, body=b"not json"),
        Reply(status=200, body_size=10_485_761),
        Reply(status=500),
        Reply(status=429, headers={"Retry-After": "3"}),
        Reply(status=302, headers={"Location": "http://elsewhere/"}),
    )
    results = [client.fetch("t1") for _ in range(6)]
    assert [r.code for r in results] == [
        *("200", INVALID_RESPONSE, INVALID_RESPONSE, "500", "429", "302"),
    ]
    for result in results:
        assert 0 <= result.duration < 1.0  # the store's timeout is 1 s
    assert [r.retry_after for r in results] == [None, None, None, None, 3.0, None]
    refused = client_for(f"http://127.0.0.1:{free_port()}").fetch("t1")
    assert 0 <= refused.duration < 1.0


@pytest.mark.parametrize("status", [300, 301, 399])
def test_3xx_is_never_success_and_named_a_redirect(
    sim: Simulator, client: StoreClient, status: int
) -> None:
    sim.script("t1", Reply(status=status, headers={"Location": "http://x/"}))
    result = client.fetch("t1")
    assert result.code == str(status) and not result.ok
    assert result.detail == f"HTTP {status} redirect to 'http://x/' not followed"


def test_400_with_a_location_is_not_a_redirect(sim: Simulator, client: StoreClient) -> None:
    sim.script("t1", Reply(status=400, body=b'{"error": "bad"}', headers={"Location": "/x"}))
    assert client.fetch("t1").detail == "HTTP 400: bad"


def test_token_redacted_wherever_it_appears_alone(sim: Simulator, client: StoreClient) -> None:
    sim.task("t1").failure_list[:] = [
        {"origin_link": "http://img/clean.jpg", "reason": f"token {TOKEN} refused"},
        {"origin_link": f"http://img/{TOKEN}.jpg", "reason": "clean reason"},
    ]
    snap = client.fetch("t1").snapshot
    assert snap is not None
    assert snap.failures == (
        FailedFile("http://img/clean.jpg", "token <redacted> refused"),
        FailedFile("http://img/<redacted>.jpg", "clean reason"),
    )


def test_body_over_many_chunks_is_joined_exactly(sim: Simulator, client: StoreClient) -> None:
    links = [f"http://img/{i:05d}-{'abcdefgh' * 8}.jpg" for i in range(1500)]  # > 128 KiB
    task = sim.task("t1")
    task.failure_list[:] = [{"origin_link": link, "reason": "r"} for link in links]
    task.total = task.finished = 1500
    snap = client.fetch("t1").snapshot
    assert snap is not None and snap.failed == 1500
    assert [f.origin_link for f in snap.failures] == links[:1000]


def test_ca_file_of_another_authority_is_refused(https_api: str, tmp_path: Path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    result = client_for(https_api, tls_config=f'{{ca_file: "{other}"}}').fetch("t1")
    assert result.code == "connection_error" and result.detail.startswith("TLS error")


def test_numbers_beyond_any_int_or_float_in_texts_are_described(
    sim: Simulator, client: StoreClient
) -> None:
    body = b'{"total": 1, "finished": 1, "status": 0, "failure_list": [{"origin_link": '
    body += b"9" * 5000 + b', "reason": {"code": 1e999}}]}'
    sim.script("t1", Reply(status=200, body=body))
    snap = client.fetch("t1").snapshot
    assert snap is not None
    assert snap.failures == (
        FailedFile(
            "<a number that has 5000 digits>", '{"code": "<a number that is out of range (1e999)>"}'
        ),
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"total": 1, "finished": 1, "status": 1, "status": 0}',
        b'{"status": 0, "total": 1, "finished": 1, "status": 1}',
        b'{"code": "Success", "data": {"total": 1, "finished": 1, "status": 1, "status": 0}}',
        b'{"code": "Success", "data": {"total": 1, "finished": 1, "status": 0}, "data": {}}',
        b'{"total": 1, "finished": 1, "status": 0, "failure_list": [{"a": 1, "a": 2}]}',
        b'{"total": 1, "finished": 1, "status": 0, "x": [[{"y": {"z": 1, "z": 1}}]]}',
    ],
)
def test_a_key_repeated_in_one_object_is_invalid(
    sim: Simulator, client: StoreClient, body: bytes
) -> None:
    """Parsers disagree on repeated keys (Python keeps the last): never trusted either way."""
    sim.script("t1", Reply(status=200, body=body))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE and not result.ok
    assert "repeated in one object" in result.detail


def test_a_repeated_key_in_an_error_body_still_gives_the_status(
    sim: Simulator, client: StoreClient
) -> None:
    sim.script("t1", Reply(status=401, body=b'{"error": "a", "error": "b"}'))
    assert client.fetch("t1").detail == "HTTP 401 Unauthorized"


@pytest.mark.parametrize("shape", ["flat", "wrapped"])
def test_an_answer_for_another_task_never_completes_it(
    sim: Simulator, client: StoreClient, shape: str
) -> None:
    other = {"task_id": "someone-elses-task", "total": 3, "finished": 3, "status": 0}
    body = other if shape == "flat" else {"code": "Success", "data": other}
    sim.script("t1", Reply(status=200, body=json.dumps(body).encode()))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE and result.snapshot is None
    assert result.detail == "answer for another task: task_id str 'someone-elses-task'"
    sim.set_shape("t1", shape)
    snap = client.fetch("t1").snapshot  # the simulator's own answer names t1
    assert snap is not None and snap.status == 1


@pytest.mark.parametrize(
    "body",
    [
        {"code": "Success", "task_id": "other", "data": {"total": 1, "finished": 1, "status": 0}},
        {"task_id": 7, "total": 1, "finished": 1, "status": 0},
        {"task_id": ["t1"], "total": 1, "finished": 1, "status": 0},
        {"task_id": "T1", "total": 1, "finished": 1, "status": 0},
    ],
)
def test_any_task_id_but_the_one_asked_is_invalid(
    sim: Simulator, client: StoreClient, body: dict[str, Any]
) -> None:
    sim.script("t1", Reply(status=200, body=json.dumps(body).encode()))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE and result.detail.startswith("answer for another task")


@pytest.mark.parametrize("named", [None, "absent"])
def test_an_answer_naming_no_task_is_taken(
    sim: Simulator, client: StoreClient, named: str | None
) -> None:
    body: dict[str, Any] = {"total": 2, "finished": 2, "status": 0}
    if named != "absent":
        body["task_id"] = named
    sim.script("t1", Reply(status=200, body=json.dumps(body).encode()))
    snap = client.fetch("t1").snapshot
    assert snap is not None and snap.status == 0


def test_parse_task_checks_the_task_id_only_when_given() -> None:
    body = {"task_id": "a", "total": 1, "finished": 1, "status": 0}
    assert parse_task(body).status == 0
    assert parse_task(body, "a").status == 0
    with pytest.raises(InvalidResponse, match="another task"):
        parse_task(body, "b")


@pytest.mark.parametrize(
    ("length", "detail"),
    [
        ("9" * 5000, "declared body length of 5000 digits exceeds the limit"),
        ("\u00b2", "total: missing"),  # "²".isdigit() is True; int("²") raises
    ],
)
def test_a_content_length_of_any_text_is_classified(
    sim: Simulator, client: StoreClient, length: str, detail: str
) -> None:
    """A hostile Content-Length never raises out of fetch (it was counted as an internal
    connection_error, its text logged unredacted)."""
    sim.script(
        "t1", Reply(status=200, body=b"{}", headers={"Content-Length": length}, chunked=True)
    )
    result = client.fetch("t1")
    assert (result.code, result.detail) == (INVALID_RESPONSE, detail)


def test_a_redirect_location_is_bounded(sim: Simulator, client: StoreClient) -> None:
    """A 60 KB Location (one header line may be 64 KiB) is cut before logs and pages."""
    sim.script("t1", Reply(status=302, headers={"Location": "http://x/" + "a" * 60_000}))
    detail = client.fetch("t1").detail
    assert detail == "HTTP 302 redirect to 'http://x/" + "a" * 291 + "' not followed"


def test_a_trickled_answer_head_times_out_at_the_request_timeout(
    sim: Simulator, client: StoreClient
) -> None:
    """Socket timeouts restart with every byte: the head one byte every 0.3 s never trips
    them, and without a deadline on the whole request it would take ~20 s."""
    sim.script("t1", Reply(head_drip=0.3))
    result = client.fetch("t1")
    assert result.code == "timeout"
    assert 1.0 <= result.duration < 1.0 + 0.5  # the store's timeout is 1 s
    assert client.fetch("t1").code == "200"  # the pool recovers


def test_a_stalled_tls_answer_head_times_out(https_api_stalling: str, tls_dir: Path) -> None:
    """Over TLS the deadline cuts the connection too (the head never comes)."""
    tls = f'{{ca_file: "{tls_dir / "ca.pem"}"}}'
    client = client_for(https_api_stalling, timeout="1s", tls_config=tls)
    result = client.fetch("t1")
    assert result.code == "timeout" and 1.0 <= result.duration < 1.5


@pytest.fixture
def https_api_stalling(tls_dir: Path) -> Iterator[str]:
    """The simulator over HTTPS, trickling every answer's head one byte a second."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_dir / "cert.pem", tls_dir / "key.pem")
    with Simulator(tokens=(TOKEN,), tls=context) as sim:
        sim.add_task("t1", total=2, finished=1)
        sim.behave("t1", Reply(head_drip=1.0))
        yield sim.url


def test_gzip_answers_are_decoded(sim: Simulator, client: StoreClient) -> None:
    body = gzip.compress(b'{"total": 4, "finished": 3, "status": 1}')
    sim.script("t1", Reply(status=200, body=body, headers={"Content-Encoding": "gzip"}))
    snap = client.fetch("t1").snapshot
    assert snap is not None and (snap.total, snap.finished) == (4, 3)
    assert sim.requests[-1].headers.get("Accept-Encoding") == "gzip, deflate"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_undecodable_content_encoding_on_a_200_is_invalid_response(
    sim: Simulator, client: StoreClient, encoding: str
) -> None:
    sim.script("t1", Reply(status=200, body=b"plain text", headers={"Content-Encoding": encoding}))
    result = client.fetch("t1")
    assert result.code == INVALID_RESPONSE
    assert result.detail.startswith(f"body cannot be decoded (Content-Encoding: '{encoding}')")
    sim.script("t1", Reply(status=503, body=b"plain text", headers={"Content-Encoding": encoding}))
    assert client.fetch("t1").code == "503"  # an error answer keeps its status
    assert client.fetch("t1").ok


def test_a_compressed_body_over_the_limit_is_refused_without_being_held(
    sim: Simulator, client: StoreClient
) -> None:
    """256 MiB of JSON in 250 KB of gzip: decoded a piece at a time, refused past 10 MiB."""
    import tracemalloc

    bomb = gzip.compress(b'{"pad": "' + b" " * (256 << 20) + b'"}', compresslevel=9)
    sim.script("t1", Reply(status=200, body=bomb, headers={"Content-Encoding": "gzip"}))
    tracemalloc.start()
    try:
        result = client.fetch("t1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.code == INVALID_RESPONSE and "exceeds" in result.detail
    assert peak < 2 * MAX_BODY_BYTES + 4 * 1024 * 1024  # not 256 MiB
