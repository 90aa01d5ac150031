"""The web configuration's ``rate_limit`` and ``auth_excluded_paths``, over real HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from exporter.web.ratelimit import RequestLimiter
from exporter.web.server import ExporterServer
from tests.web.serving import HASH, PASSWORD, FakeClock, basic, request, web_config


def test_bucket_refills_one_token_per_interval_up_to_burst() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(interval=0.5, burst=2, clock=clock)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    assert limiter.retry_after() == 1
    clock.now += 0.5
    assert [limiter.allow() for _ in range(2)] == [True, False]
    clock.now += 60  # a long pause earns no more than burst
    assert [limiter.allow() for _ in range(3)] == [True, True, False]


def test_rate_limit_counts_every_request_and_answers_429(
    tmp_path: Path, make_server: Callable[..., ExporterServer]
) -> None:
    # One token an hour: after the burst nothing refills during the test.
    path = web_config(
        tmp_path,
        "rate_limit: {interval: 1h, burst: 3}\n"
        "http_server_config: {headers: {X-Content-Type-Options: nosniff}}\n",
    )
    server = make_server(path)
    # A 404 takes a token like any request.
    assert [request(server, p)[0] for p in ("/metrics", "/nope", "/metrics")] == [200, 404, 200]
    status, headers, body = request(server, "/metrics")
    assert status == 429
    assert body == b"Too Many Requests\n"
    assert headers["Retry-After"] == "3600"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert request(server, "/-/healthy")[0] == 429  # the probes count too, as in the toolkit


def test_rate_limit_comes_before_authentication(
    tmp_path: Path, make_server: Callable[..., ExporterServer]
) -> None:
    path = web_config(
        tmp_path, f"basic_auth_users: {{alice: '{HASH}'}}\nrate_limit: {{interval: 1h, burst: 1}}\n"
    )
    server = make_server(path)
    assert request(server, "/metrics")[0] == 401  # refused, yet it took the token
    assert request(server, "/metrics", headers=basic("alice", PASSWORD))[0] == 429


def test_auth_excluded_paths_are_served_without_credentials(
    tmp_path: Path, make_server: Callable[..., ExporterServer]
) -> None:
    path = web_config(
        tmp_path, f"basic_auth_users: {{alice: '{HASH}'}}\nauth_excluded_paths: [/metrics]\n"
    )
    server = make_server(path)
    assert request(server, "/metrics")[0] == 200
    assert request(server, "/metrics", headers=basic("alice", b"wrong"))[0] == 200
    assert request(server, "/nope")[0] == 401
    assert request(server, "/metrics/")[0] == 401  # exact paths, no prefixes
    assert request(server, "/metrics?x=1")[0] == 200  # the path, whatever the query
    assert request(server, "/nope", headers=basic("alice", PASSWORD))[0] == 404
