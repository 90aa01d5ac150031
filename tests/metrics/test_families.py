"""Every contract metric with its name, type, labels and value, rendered from memory."""

from __future__ import annotations

import dataclasses
import platform
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.app import Exporter
from exporter.build import REVISION
from exporter.demo.simulator import Reply, Simulator
from exporter.model import ERROR_CODES
from exporter.web.routes import App
from tests.helpers import (
    CONTRACT_METRICS,
    TASK_DATA_METRICS,
    FakeClock,
    config_yaml,
    make_exporter,
    sample,
    scrape,
    write,
    wsgi,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def exporter(sim: Simulator, tmp_path: Path, clock: FakeClock) -> Iterator[Exporter]:
    sim.add_task(
        "t1",
        total=4,
        finished=3,
        success_list=[{"file_uri": "f", "origin_link": "o", "upload_link": "u"}] * 2,
        failure_list=[{"origin_link": "http://img/x.jpg", "reason": "bad"}],
    )
    sim.add_task("t0", total=0, finished=0, status=0)
    sim.add_task("empty", total=0, finished=0, status=1)
    ids = ["t1", "t0", "empty", "missing"]
    text = config_yaml(sim.url, ids, min_poll_interval="10s", requests_per_second=100)
    exp = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
    yield exp
    exp.close()


# Metrics added with the exposition work, by type (labels are checked in the tests below).
NEW_METRICS = {
    "shoplazza_upload_task_completed_timestamp_seconds": "gauge",
    "shoplazza_upload_task_info": "gauge",
    "shoplazza_exporter_store_files_invalid": "gauge",
    "shoplazza_exporter_state_file_last_write_successful": "gauge",
    "shoplazza_exporter_web_config_last_reload_successful": "gauge",
    "shoplazza_exporter_shard_info": "gauge",
    "shoplazza_exporter_stores": "gauge",
}


def types_of(text: str) -> dict[str, str]:
    return {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE")
    }


def test_registering_calls_no_api(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=1)
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    assert sim.count() == 0
    exporter.close()


def test_every_contract_metric_with_its_type(exporter: Exporter) -> None:
    text = scrape(App(exporter))
    found = types_of(text)
    for name, kind in CONTRACT_METRICS.items():
        assert found.get(name) == kind, name


def test_task_values(exporter: Exporter, clock: FakeClock) -> None:
    text = scrape(App(exporter))
    labels = {"store": "shop", "task_id": "t1"}
    expected = {
        "shoplazza_upload_task_files": 4,
        "shoplazza_upload_task_files_finished": 3,
        "shoplazza_upload_task_files_succeeded": 2,
        "shoplazza_upload_task_files_failed": 1,
        "shoplazza_upload_task_status": 1,
        "shoplazza_upload_task_completed": 0,
        "shoplazza_upload_task_progress_ratio": 0.75,
        "shoplazza_upload_task_last_progress_timestamp_seconds": clock.time(),
        "shoplazza_upload_task_last_success_timestamp_seconds": clock.time(),
        "shoplazza_upload_task_poll_success": 1,
    }
    for name, value in expected.items():
        assert sample(text, name, **labels) == pytest.approx(value), name


def test_progress_ratio_for_zero_total(exporter: Exporter) -> None:
    text = scrape(App(exporter))
    assert sample(text, "shoplazza_upload_task_progress_ratio", task_id="t0") == 1
    assert sample(text, "shoplazza_upload_task_completed", task_id="t0") == 1
    assert sample(text, "shoplazza_upload_task_progress_ratio", task_id="empty") == 0


def test_only_poll_success_before_first_success(exporter: Exporter) -> None:
    text = scrape(App(exporter))
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="missing") == 0
    for name in TASK_DATA_METRICS:
        assert sample(text, name, task_id="missing") is None, name


def test_last_values_kept_after_failure(
    exporter: Exporter, sim: Simulator, clock: FakeClock
) -> None:
    app = App(exporter)
    scrape(app)
    first = clock.time()
    sim.behave("t1", Reply(status=503))
    clock.advance(11)
    text = scrape(app)
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="t1") == 0
    assert sample(text, "shoplazza_upload_task_files_finished", task_id="t1") == 3
    assert sample(text, "shoplazza_upload_task_last_success_timestamp_seconds", task_id="t1") == (
        pytest.approx(first)
    )
    assert sample(text, "shoplazza_api_errors_total", code="503") == 1


def test_progress_timestamp_moves_only_on_change(
    exporter: Exporter, sim: Simulator, clock: FakeClock
) -> None:
    app = App(exporter)
    scrape(app)
    first = clock.time()
    clock.advance(11)
    text = scrape(app)  # same data: progress time stays, success time moves
    name = "shoplazza_upload_task_last_progress_timestamp_seconds"
    assert sample(text, name, task_id="t1") == pytest.approx(first)
    assert sample(
        text, "shoplazza_upload_task_last_success_timestamp_seconds", task_id="t1"
    ) == pytest.approx(first + 11)
    sim.task("t1").finished = 4
    clock.advance(11)
    text = scrape(app)
    assert sample(text, name, task_id="t1") == pytest.approx(first + 22)
    clock.advance(11)
    sim.task("t1").status = 0
    text = scrape(app)
    assert sample(text, name, task_id="t1") == pytest.approx(first + 33)
    assert sample(text, "shoplazza_upload_task_completed", task_id="t1") == 1


def test_counters_increase_across_scrapes(
    exporter: Exporter, sim: Simulator, clock: FakeClock
) -> None:
    app = App(exporter)
    text = scrape(app)
    assert sample(text, "shoplazza_api_requests_total", store="shop", code="200") == 3
    assert sample(text, "shoplazza_api_requests_total", store="shop", code="404") == 1
    assert sample(text, "shoplazza_api_errors_total", store="shop", code="404") == 1
    assert sample(text, "shoplazza_api_request_duration_seconds_count", store="shop") == 4
    clock.advance(11)
    text = scrape(app)  # t0 is completed: not fetched again
    assert sample(text, "shoplazza_api_requests_total", store="shop", code="200") == 5
    assert sample(text, "shoplazza_api_errors_total", store="shop", code="404") == 2
    assert sample(text, "shoplazza_api_request_duration_seconds_count", store="shop") == 7
    assert sim.count("t0") == 1


def test_request_duration_histogram_sums_and_buckets(exporter: Exporter, sim: Simulator) -> None:
    """Every request lands in the buckets its duration reaches, and in the sum."""
    sim.latency = 0.05  # each answer takes at least 50 ms
    text = scrape(App(exporter))
    count = sample(text, "shoplazza_api_request_duration_seconds_count", store="shop")
    assert count == 4
    total = sample(text, "shoplazza_api_request_duration_seconds_sum", store="shop")
    assert total is not None and 4 * 0.05 <= total < 4 * 10.0
    bucket = "shoplazza_api_request_duration_seconds_bucket"
    assert sample(text, bucket, store="shop", le="0.025") == 0
    assert sample(text, bucket, store="shop", le="+Inf") == count


def test_invalid_200_counts_as_invalid_response_in_both(exporter: Exporter, sim: Simulator) -> None:
    sim.behave("t1", Reply(status=200, body=b"<html>maintenance</html>"))
    text = scrape(App(exporter))
    assert sample(text, "shoplazza_api_requests_total", code="invalid_response") == 1
    assert sample(text, "shoplazza_api_errors_total", code="invalid_response") == 1
    assert sample(text, "shoplazza_api_requests_total", code="200") == 2  # t0 and empty


def test_error_and_skip_counters_start_at_zero(sim: Simulator, tmp_path: Path) -> None:
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, [])))
    text = scrape(App(exporter))
    for code in ERROR_CODES:
        assert sample(text, "shoplazza_api_errors_total", store="shop", code=code) == 0
    assert len(ERROR_CODES) == 12
    for reason in ("rate_limited", "backoff", "deadline"):
        assert sample(text, "shoplazza_exporter_polls_skipped_total", reason=reason) == 0
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 0
    exporter.close()


def test_exporter_wide_gauges(exporter: Exporter, clock: FakeClock) -> None:
    text = scrape(App(exporter))
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 4
    build = {"version": __version__, "python_version": platform.python_version()}
    assert sample(text, "shoplazza_exporter_build_info", **build) == 1
    assert sample(text, "shoplazza_exporter_build_info", revision=REVISION) == 1
    assert sample(text, "shoplazza_exporter_config_last_reload_successful") == 1
    assert sample(
        text, "shoplazza_exporter_config_last_reload_success_timestamp_seconds"
    ) == pytest.approx(clock.time())


def test_histogram_buckets_are_cumulative(exporter: Exporter) -> None:
    text = scrape(App(exporter))
    family = next(
        f
        for f in text_string_to_metric_families(text)
        if f.name == "shoplazza_api_request_duration_seconds"
    )
    buckets = [s.value for s in family.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)
    assert buckets[-1] == 4


def test_openmetrics_when_asked(exporter: Exporter) -> None:
    status, headers, body = wsgi(
        App(exporter), "/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    assert b"shoplazza_api_requests_total{" in body


def test_promtool_check_metrics_clean(exporter: Exporter, sim: Simulator) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: scripts/test.sh installs Debian's prometheus"
    sim.script("t1", Reply(status=429))
    text = scrape(App(exporter))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_failed_reload_keeps_serving_and_sets_gauge(exporter: Exporter, tmp_path: Path) -> None:
    app = App(exporter)
    scrape(app)
    (tmp_path / "c.yaml").write_text("stores: [oops\n")
    status, _, body = wsgi(app, "/-/reload", method="POST")
    assert status == 500
    assert b"invalid YAML" in body
    text = scrape(app)
    assert sample(text, "shoplazza_exporter_config_last_reload_successful") == 0
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 4


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        *((Reply(status=s, body=b'{"error": "x"}'), str(s)) for s in (400, 401, 403, 404, 422)),
        *((Reply(status=s, body=b'{"errors": ["x"]}'), str(s)) for s in (429, 500, 502, 503)),
        (Reply(status=504, body=b"<html>gateway</html>", content_type="text/html"), "504"),
        (Reply(status=302, headers={"Location": "http://127.0.0.1:1/"}), "302"),
        (Reply(status=200, body=b"not json"), "invalid_response"),
        (Reply(status=200, body=b'{"total": "x", "finished": 1, "status": 1}'), "invalid_response"),
        (Reply(status=200, body_size=11 * 1024 * 1024), "invalid_response"),
        (Reply(latency=3.0), "timeout"),
    ],
)
def test_each_failure_is_counted_with_its_code(
    sim: Simulator, tmp_path: Path, reply: Reply, code: str
) -> None:
    sim.add_task("t1", total=4, finished=2)
    text = config_yaml(sim.url, ["t1"], min_poll_interval=0, timeout="1s")
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    app = App(exporter)
    scrape(app)  # a good poll first: its values must survive the failure
    sim.script("t1", reply)
    out = scrape(app)
    assert sample(out, "shoplazza_api_requests_total", code=code) == 1
    assert sample(out, "shoplazza_api_errors_total", code=code) == 1
    assert sample(out, "shoplazza_api_requests_total", code="200") == 1
    assert sample(out, "shoplazza_upload_task_poll_success", task_id="t1") == 0
    assert sample(out, "shoplazza_upload_task_files_finished", task_id="t1") == 2
    exporter.close()


def test_connection_refused_is_counted(tmp_path: Path) -> None:
    from tests.helpers import free_port

    text = config_yaml(f"http://127.0.0.1:{free_port()}", ["t1"])
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    out = scrape(App(exporter))
    assert sample(out, "shoplazza_api_errors_total", code="connection_error") == 1
    assert sample(out, "shoplazza_upload_task_poll_success", task_id="t1") == 0
    exporter.close()


def test_name_filter_on_counters_and_histograms(exporter: Exporter) -> None:
    app = App(exporter)
    scrape(app)
    for name in ("shoplazza_api_requests_total", "shoplazza_api_request_duration_seconds_count"):
        status, _, body = wsgi(app, f"/metrics?name[]={name}")
        assert status == 200
        text = body.decode()
        assert {line.split("{")[0] for line in text.splitlines() if line[0] != "#"} == {name}
        assert sample(text, name, store="shop") is not None
    status, _, body = wsgi(
        app, "/metrics?name[]=shoplazza_api_requests_total&name[]=process_resident_memory_bytes"
    )
    assert sample(body.decode(), "shoplazza_api_requests_total", code="200") == 3
    assert (sample(body.decode(), "process_resident_memory_bytes") or 0) > 0


def test_new_metrics_from_a_running_exporter(exporter: Exporter, clock: FakeClock) -> None:
    text = scrape(App(exporter))
    done = "shoplazza_upload_task_completed_timestamp_seconds"
    assert types_of(text)[done] == "gauge"
    assert sample(text, done, task_id="t0") == pytest.approx(clock.time())
    assert sample(text, done, task_id="t1") is None  # in progress
    assert sample(text, done, task_id="missing") is None  # no data
    for task_id in ("t1", "t0", "empty", "missing"):
        assert sample(text, "shoplazza_upload_task_info", store="shop", task_id=task_id) == 1
    assert (sample(text, "process_resident_memory_bytes") or 0) > 0
    assert sample(text, "shoplazza_exporter_shard_info", shard="0", total_shards="1") == 1
    assert sample(text, "shoplazza_exporter_store_files_invalid") == 0
    assert "shoplazza_exporter_state_file_last_write_successful" not in text  # no state_file
    assert "shoplazza_exporter_web_config_last_reload_successful" not in text


def test_new_metrics_from_the_view_fields() -> None:
    from exporter.metrics.exposition import Exposition
    from exporter.model import ExporterView, ReloadStatus, StoreView, TaskRecord, TaskSnapshot

    labelled = TaskRecord("acme", "t1", TaskSnapshot(total=4, finished=4, status=0, succeeded=4,
                         failed=0), poll_success=True, completed_at=1e9,
                         labels=(("source", "cat.csv"), ("importer", "nightly sync")))  # fmt: skip
    running = TaskRecord("acme", "t2", TaskSnapshot(total=4, finished=1, status=1, succeeded=1,
                        failed=0), poll_success=True, completed_at=5.0)  # fmt: skip
    store = StoreView("acme", (labelled, running), (), (), (), (0,) * 12, 0, 0.0)
    base = ExporterView((store,), 0.0, "9", ReloadStatus(True, 1.0), shard=1, total_shards=3,
                        stores_owned=4, stores_other=8, store_files_invalid=2)  # fmt: skip
    for state_ok, web_ok in ((None, None), (True, False), (False, True)):
        view = dataclasses.replace(base, state_file_ok=state_ok, web_config_ok=web_ok)
        text = Exposition(extra=()).render(view, "", None, False)[1].decode()
        done = "shoplazza_upload_task_completed_timestamp_seconds"
        assert sample(text, done, task_id="t1") == 1e9
        assert sample(text, done, task_id="t2") is None  # only completed tasks
        info = "shoplazza_upload_task_info"
        assert sample(text, info, task_id="t1", source="cat.csv", importer="nightly sync") == 1
        assert sample(text, info, task_id="t2") == 1
        assert sample(text, "shoplazza_exporter_shard_info", shard="1", total_shards="3") == 1
        assert sample(text, "shoplazza_exporter_stores", owned="true") == 4
        assert sample(text, "shoplazza_exporter_stores", owned="false") == 8
        assert sample(text, "shoplazza_exporter_store_files_invalid") == 2
        if state_ok is not None:
            assert set(NEW_METRICS.items()) <= set(types_of(text).items())
        for name, ok in (
            ("shoplazza_exporter_state_file_last_write_successful", state_ok),
            ("shoplazza_exporter_web_config_last_reload_successful", web_ok),
        ):
            assert sample(text, name) == (None if ok is None else float(ok)), name
            assert (f"# TYPE {name} gauge" in text) == (ok is not None), name


def test_huge_stored_numbers_render_as_infinities_and_a_capped_ratio() -> None:
    """Values beyond a float never raise: ±Inf, and a ratio from the converted numbers."""
    import math

    from exporter.metrics.families import TASK_GAUGES, number, task_values
    from exporter.model import TaskRecord, TaskSnapshot

    assert number(10**400) == math.inf and number(-(10**400)) == -math.inf
    assert number(7) == 7.0 and math.isnan(number("x"))

    def ratio(total: int, finished: int) -> float | None:
        snap = TaskSnapshot(total=total, finished=finished, status=1, succeeded=0, failed=0)
        task = TaskRecord(store="s", task_id="t", poll_success=True, snapshot=snap)
        values = dict(zip((name for name, _ in TASK_GAUGES), task_values(task), strict=True))
        return values["shoplazza_upload_task_progress_ratio"]

    assert ratio(3, 10**400) == 1.0  # the quotient overflows: Inf / 3, capped at 1
    assert ratio(10**400, 3) == 0.0  # no overflow: the snapshot's own ratio
    overflowing = ratio(10**400, 10**800)  # total converts to Inf: no ratio
    assert overflowing is not None and math.isnan(overflowing)
