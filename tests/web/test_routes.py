"""The WSGI app's routes, status page and JSON API, called without a socket."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import __version__
from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.web import routes
from exporter.web.routes import App, scrape_deadline
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    config_yaml,
    make_exporter,
    scrape,
    wait_until,
    write,
    wsgi,
)

HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def app(sim: Simulator, tmp_path: Path) -> Iterator[App]:
    failures = [{"origin_link": f"http://img/{i}.jpg", "reason": "timeout"} for i in range(25)]
    failures[0] = {"origin_link": HOSTILE, "reason": f"bad {HOSTILE}"}
    sim.add_task("t1", total=50, finished=30, failure_list=failures)
    sim.add_task("done", total=2, finished=2, status=0)
    text = config_yaml(sim.url, ["t1", "done", "gone"], requests_per_second=100)
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    yield App(exporter)
    exporter.close()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        *((None, 10.0), ("", 10.0), ("1", 0.5), ("15", 14.5), ("0.3", 0.1), ("0", 10.0)),
        *(("-4", 10.0), ("abc", 10.0), ("nan", 10.0), ("inf", 10.0), ("-inf", 10.0)),
        *((" 5 ", 4.5), ("9.5", 9.0), (".5", 0.1), ("1e1", 9.5), ("0e5", 10.0)),
        # above 120 counts as 120, however it is written
        *(("120", 119.5), ("121", 119.5), ("1e9", 119.5), ("1e308", 119.5), ("1e400", 119.5)),
        # not ASCII decimal numbers: no header
        *(("1_0", 10.0), ("\u0661\u0660", 10.0), ("+5", 10.0), ("5s", 10.0), ("0x10", 10.0)),
        *(("1e", 10.0), ("NaN", 10.0), ("Infinity", 10.0), ("5\x00", 10.0), ("1" * 500, 119.5)),
        *(("1e-300", 0.1), ("0.0", 10.0), ("10,20", 10.0)),
    ],
)
def test_scrape_deadline(header: str | None, expected: float) -> None:
    assert scrape_deadline(header) == expected


def test_health_and_ready(app: App) -> None:
    assert wsgi(app, "/-/healthy")[0::2] == (200, b"OK\n")
    assert wsgi(app, "/-/ready")[0] == 200


def test_not_ready_without_configuration(tmp_path: Path) -> None:
    app = App(Exporter(str(tmp_path / "absent.yaml")))
    assert wsgi(app, "/-/ready")[0] == 503
    assert wsgi(app, "/-/healthy")[0] == 200
    assert wsgi(app, "/metrics")[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/metrics/extra", 404),
        ("POST", "/metrics", 405),
        ("DELETE", "/", 405),
        ("GET", "/-/reload", 405),
        ("PUT", "/-/healthy", 405),
        ("BREW", "/metrics", 405),
        ("HEAD", "/metrics", 200),
    ],
)
def test_routes(app: App, method: str, path: str, status: int) -> None:
    code, headers, body = wsgi(app, path, method=method)
    assert code == status
    if status == 405:
        assert "Allow" in headers
    if method == "HEAD":
        assert body == b"" and int(headers["Content-Length"]) > 0


def test_reload_ok(app: App) -> None:
    code, _, body = wsgi(app, "/-/reload", method="POST")
    assert code == 200 and b"reloaded" in body


def test_gzip_when_accepted(app: App) -> None:
    _, headers, body = wsgi(app, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert b"shoplazza_upload_task_files" in gzip.decompress(body)


def test_name_filter(app: App) -> None:
    _, _, body = wsgi(app, "/metrics?name[]=shoplazza_exporter_watched_tasks")
    assert b"shoplazza_exporter_watched_tasks{" in body
    assert b"shoplazza_upload_task_files{" not in body


def test_status_page(app: App) -> None:
    scrape(app)
    code, headers, body = wsgi(app, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert __version__ in page
    assert "href='./metrics'" in page
    assert "30/50" in page and "60.0%" in page
    assert "t1" in page and "done" in page and "gone" in page
    assert "404" in page  # the unknown task's last error code
    # a row shows the first 3 failed files and links to the task's page for the others
    assert "http://img/2.jpg" in page and "http://img/3.jpg" not in page
    assert 'and 22 more: <a href="tasks/shop/t1">all on the task page</a>' in page


def test_status_page_escapes_api_strings(app: App) -> None:
    scrape(app)
    page = wsgi(app, "/")[2].decode()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_json_api(app: App) -> None:
    scrape(app)
    code, headers, body = wsgi(app, "/api/v1/tasks")
    assert code == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert data["version"] == __version__
    [store] = data["stores"]
    assert store["store"] == "shop"
    tasks = {t["task_id"]: t for t in data["tasks"]}
    t1 = tasks["t1"]
    assert t1["poll_success"] is True and t1["last_code"] == "200"
    assert t1["data"]["total"] == 50 and t1["data"]["finished"] == 30
    assert t1["data"]["failed"] == 25 and len(t1["data"]["failed_files"]) == 25
    assert t1["data"]["failed_files"][0] == {"origin_link": HOSTILE, "reason": f"bad {HOSTILE}"}
    assert tasks["done"]["data"]["completed"] is True
    assert tasks["gone"]["data"] is None
    assert tasks["gone"]["last_error_code"] == "404"
    assert tasks["gone"]["poll_success"] is False


def test_token_never_in_pages(app: App) -> None:
    scrape(app)
    for path in ("/", "/api/v1/tasks", "/metrics"):
        assert TOKEN.encode() not in wsgi(app, path)[2]
    assert TOKEN_ENV  # the token came from this variable


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [("gzip", True), ("gzip;q=0, identity", False), ("*;q=0", False), ("gzip;q=0.000", False)],
)
def test_metrics_gzip_follows_accept_encoding_q_values(
    app: App, accept_encoding: str, gzipped: bool
) -> None:
    status, headers, body = wsgi(app, "/metrics", headers={"Accept-Encoding": accept_encoding})
    assert status == 200
    assert (headers.get("Content-Encoding") == "gzip") is gzipped
    assert int(headers["Content-Length"]) == len(body)
    assert b"shoplazza_upload_task" in (gzip.decompress(body) if gzipped else body)


def test_task_page_shows_every_kept_failed_file_escaped(app: App) -> None:
    scrape(app)
    code, headers, body = wsgi(app, "/tasks/shop/t1")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert all(f"http://img/{i}.jpg" in page for i in range(1, 25))  # all 25, not 3 or 20
    assert page.count("<td class='wrap'><code>") == 25
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "30 / 50" in page and '<span class="state s-in_progress">in progress</span>' in page
    assert "href='../../'" in page and "Grafana" not in page  # no dashboard configured
    assert wsgi(app, "/tasks/shop/t1", method="HEAD")[2] == b""
    assert wsgi(app, "/tasks/shop/t1", method="POST")[0] == 405


@pytest.mark.parametrize(
    "path",
    ["/tasks/shop/nope", "/tasks/elsewhere/t1", "/tasks/shop", "/tasks/shop/t1/x", "/tasks/"],
)
def test_task_page_of_an_unknown_task_is_404(app: App, path: str) -> None:
    code, _, body = wsgi(app, path)
    assert code == 404, path
    if path.count("/") == 3:  # a task page's path: the page says what was not found
        assert b"Task not found" in body


def test_task_page_links_to_grafana_when_a_dashboard_is_configured(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("t1", total=2, finished=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    try:
        for template, link in [
            (
                "https://g.example/d/x?orgId=1",
                "https://g.example/d/x?orgId=1&amp;var-store=shop&amp;var-task_id=t1",
            ),
            (
                "https://g.example/d/x?s={store}&t={task_id}",
                "https://g.example/d/x?s=shop&amp;t=t1",
            ),
        ]:
            page = wsgi(App(exporter, dashboard_url=template), "/tasks/shop/t1")[2].decode()
            assert f"<a href='{link}'>this task in Grafana</a>" in page
            index = wsgi(App(exporter, dashboard_url=template), "/")[2].decode()
            assert "Grafana dashboard</a>" in index
    finally:
        exporter.close()


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("state=done", "state: 'done' is not a state; one of failing, stuck"),
        ("store=a/b", "store: 'a/b' is not a store name"),
        ("label=source", "label: 'source' is not name=value"),
        ("label=1x=y", "label: '1x=y' is not name=value"),
        ("q=a.b", "q: 'a.b' is not part of a task id"),
        ("limit=0", "limit: '0' is not a number from 1 to 10000"),
        ("limit=10001", "limit: '10001' is not a number from 1 to 10000"),
        ("limit=1e3", "limit: '1e3' is not a number"),
        ("limit=%D9%A1", "limit: '\u0661' is not a number"),
        ("sate=failing", "unknown parameter 'sate'"),
        ("store=a&store=b", "store: given more than once"),
        ("q=%ff", "query string is not valid"),
    ],
)
def test_invalid_filters_are_a_clear_400(app: App, query: str, message: str) -> None:
    code, headers, body = wsgi(app, "/api/v1/tasks?" + query)
    assert code == 400 and headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]
    code, headers, body = wsgi(app, "/?" + query)
    assert code == 400 and headers["Content-Type"].startswith("text/html")
    assert "400 Bad Request" in body.decode()


def test_empty_filter_values_count_as_absent(app: App) -> None:
    scrape(app)
    plain = json.loads(wsgi(app, "/api/v1/tasks")[2])
    empty = json.loads(wsgi(app, "/api/v1/tasks?store=&q=&label=&state=&after=")[2])
    assert [t["task_id"] for t in empty["tasks"]] == [t["task_id"] for t in plain["tasks"]]
    assert wsgi(app, "/?store=&q=&label=&state=")[0] == 200


def test_the_pages_indexes_are_kept_warm_off_the_requests(app: App) -> None:
    """A person's first page finds the indexes built: the background keeps them up to date."""
    from tests.helpers import wait_until

    scrape(app)  # the tasks have data
    view = app.exporter.view()
    assert app.listing._fleet is None  # nothing built yet: no page was asked for
    app.warm_pages_once_used()  # as a first page does
    app.keep_pages_warm(period=0.01)
    wait_until(lambda: bool(app.listing._indexes), timeout=5)
    assert {s.name for s in view.stores} <= set(app.listing._indexes)


def test_many_new_tasks_are_rendered_off_the_scrape_path(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks added since the last render are rendered in the background (App._warm): the
    next scrape finds them cached, and until then its refresh leaves room for them."""
    monkeypatch.setattr(routes, "WARM_FROM", 0.0)
    monkeypatch.setattr(routes, "WARM_EVERY", 0.05)
    ids = [f"t{n}" for n in range(500)]
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ids)))
    try:
        app = App(exporter)
        view = exporter.view()
        assert app.exposition.estimate(view) > 0  # never rendered: a first render costs
        app._start_warmer()  # as the first scrape does
        wait_until(lambda: app.exposition.unrendered(exporter.view()) == 0)
        assert app.exposition.estimate(exporter.view()) == 0
    finally:
        exporter.close()


def test_pages_are_kept_warm_once_used_or_when_the_tasks_are_many(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter only scraped builds no page index, unless a cold page would be slow."""
    import exporter.web.routes as routes

    sim.add_task("t1", total=2, finished=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    try:
        app = App(exporter)
        scrape(app)
        assert app.warm_pages_step() is False and not app.listing._indexes
        monkeypatch.setattr(routes, "WARM_FROM_TASKS", 1)  # as with a large fleet
        assert app.warm_pages_step() is True and app.listing._indexes
        monkeypatch.undo()
        used = App(exporter)
        assert used.warm_pages_step() is False
        assert wsgi(used, "/")[0] == 200  # a page asked for: warm from now on
        used.listing._indexes.clear()
        assert used.warm_pages_step() is True and used.listing._indexes
    finally:
        exporter.close()
