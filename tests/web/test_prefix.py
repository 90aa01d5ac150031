"""--web.telemetry-path, --web.disable-exporter-metrics, --web.external-url and
--web.route-prefix, through the WSGI app (the reverse proxy is in tests/test_flags.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.web.prefix import Prefixes, RoutePrefix, parse_prefixes
from exporter.web.routes import App, check_telemetry_path
from tests.helpers import config_yaml, make_exporter, write, wsgi


@pytest.fixture
def exporter(sim: Simulator, tmp_path: Path) -> Iterator[Exporter]:
    sim.add_task("t1", total=4, finished=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    yield exporter
    exporter.close()


def test_telemetry_path_moves_the_metrics_and_the_page_link(exporter: Exporter) -> None:
    app = App(exporter, telemetry_path="/internal/metrics")
    status, _, body = wsgi(app, "/internal/metrics")
    assert status == 200
    assert b"shoplazza_upload_task_files{" in body
    assert wsgi(app, "/metrics")[0] == 404
    assert "href='./internal/metrics'" in wsgi(app, "/")[2].decode()


@pytest.mark.parametrize("path", ["metrics", "//evil", "/", "/-/healthy", "/api/v1/tasks", "/m?x"])
def test_telemetry_path_must_be_a_free_absolute_path(path: str) -> None:
    with pytest.raises(ValueError, match=r"--web\.telemetry-path"):
        check_telemetry_path(path)


def test_disable_exporter_metrics_leaves_out_process_and_python(exporter: Exporter) -> None:
    full = wsgi(App(exporter), "/metrics")[2].decode()
    assert "\nprocess_cpu_seconds_total " in full or "\npython_info{" in full
    lean = wsgi(App(exporter, exporter_metrics=False), "/metrics")[2].decode()
    lines = [line for line in lean.splitlines() if not line.startswith("#")]
    assert lines
    assert all(line.startswith("shoplazza_") for line in lines), lines
    assert "shoplazza_exporter_build_info{" in lean


@pytest.mark.parametrize(
    ("external", "route", "expected"),
    [
        (None, None, Prefixes("", "")),
        ("http://example.com", None, Prefixes("", "")),
        ("https://example.com/up/", None, Prefixes("/up", "/up")),
        ("https://example.com/a/b", None, Prefixes("/a/b", "/a/b")),
        ("https://example.com/up/", "/", Prefixes("", "/up")),  # the proxy strips the path
        (None, "/inner/", Prefixes("/inner", "")),
    ],
)
def test_parse_prefixes(external: str | None, route: str | None, expected: Prefixes) -> None:
    assert parse_prefixes(external, route) == expected


@pytest.mark.parametrize(
    ("external", "route", "message"),
    [
        ("example.com/up", None, "--web.external-url 'example.com/up': must be an absolute"),
        ("ftp://example.com/", None, "must be an absolute http:// or https:// URL"),
        ("http://example.com/up?x=1", None, "no query or fragment"),
        (None, "up", "--web.route-prefix 'up': must be a path starting with a single '/'"),
        (None, "//up", "must be a path starting with a single '/'"),
        (None, "/a b", "must be a plain path"),
    ],
)
def test_bad_prefixes_are_usage_errors(
    external: str | None, route: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_prefixes(external, route)


def test_route_prefix_serves_every_page_under_it(exporter: Exporter) -> None:
    app = RoutePrefix(App(exporter), parse_prefixes("https://example.com/up/", None))
    for path in ("/up/", "/up/metrics", "/up/api/v1/tasks", "/up/-/healthy", "/up/-/ready"):
        assert wsgi(app, path)[0] == 200, path
    for path in ("/metrics", "/-/healthy", "/upx/metrics", "/up/nope"):
        assert wsgi(app, path)[0] == 404, path
    assert wsgi(app, "/up/-/reload", method="POST")[0] == 200


@pytest.mark.parametrize(
    ("external", "route", "path", "location"),
    [
        ("https://example.com/up/", None, "/up", "/up/"),
        ("https://example.com/up/", None, "/", "/up/"),
        ("https://example.com/up/", None, "/up?state=failing", "/up/?state=failing"),
        # The proxy maps /outer/ to /inner/: redirects go where the browser can follow.
        ("https://example.com/outer/", "/inner", "/inner", "/outer/"),
    ],
)
def test_prefix_without_slash_redirects_to_the_landing_page(
    exporter: Exporter, external: str, route: str | None, path: str, location: str
) -> None:
    app = RoutePrefix(App(exporter), parse_prefixes(external, route))
    status, headers, _ = wsgi(app, path)
    assert (status, headers["Location"]) == (302, location)


def test_links_carry_the_external_path_in_script_name(exporter: Exporter) -> None:
    seen: dict[str, str] = {}

    def probe(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.update(script=environ["SCRIPT_NAME"], path=environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b""]

    wsgi(RoutePrefix(probe, parse_prefixes("https://example.com/up/", "/")), "/metrics")
    assert seen == {"script": "/up", "path": "/metrics"}
