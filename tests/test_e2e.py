"""End to end: the installed console script as a process, the simulator as Shoplazza."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter.demo.simulator import Reply, Simulator
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    ExporterProcess,
    config_yaml,
    exporter_command,
    sample,
    wait_until,
    write,
)


@pytest.fixture
def procs() -> Iterator[list[ExporterProcess]]:
    started: list[ExporterProcess] = []
    yield started
    for proc in started:
        proc.stop(signal.SIGKILL)


def start(procs: list[ExporterProcess], tmp: Path, *args: str, **env: str) -> ExporterProcess:
    proc = ExporterProcess(list(args), tmp, env)
    procs.append(proc)
    proc.wait_ready()
    return proc


def metrics(proc: ExporterProcess) -> str:
    response = proc.get("/metrics")
    assert response.status_code == 200
    return response.text


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [*exporter_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, TOKEN_ENV: TOKEN, **(env or {})},
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert "shoplazza-upload-exporter, version" in result.stdout + result.stderr


def test_config_check_exit_codes(tmp_path: Path, sim: Simulator) -> None:
    good = write(tmp_path / "good.yaml", config_yaml(sim.url, ["t1"]))
    result = run(
        "--config.file", good, "--config.check", env={"SUE_TEST_TOKEN": "x-token-of-16-chars"}
    )
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    # the token variable unset: a configuration error
    result = run("--config.file", good, "--config.check", env={"SUE_TEST_TOKEN": ""})
    assert result.returncode != 0
    bad = write(
        tmp_path / "bad.yaml",
        "stores:\n  - name: a\n    domain: x.example.com\n    access_token_file: /nonexistent\n"
        "    task_ids: [ok, ../x]\n    timeot: 5s\n",
    )
    result = run("--config.file", bad, "--config.check")
    assert result.returncode != 0
    assert 'bad.yaml: stores[0].task_ids[1]: invalid task id "../x"' in result.stderr
    assert "stores[0].timeot" in result.stderr and "stores[0].access_token_file" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run("--config.file", str(tmp_path / "absent.yaml"), "--config.check")
    assert missing.returncode != 0 and "absent.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_example_config_passes_check() -> None:
    from tests.helpers import ROOT

    result = run(
        "--config.file",
        str(ROOT / "config.example.yaml"),
        "--config.check",
        env={
            "SHOPLAZZA_ACME_TOKEN": "x-token-of-16-chars",
            "SHOPLAZZA_SANDBOX_TOKEN": "y-token-of-16-chars",
        },
    )
    assert result.returncode == 0, result.stderr


def test_invalid_config_at_start_is_fatal(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "stores: []\n")
    result = run("--config.file", bad, "--web.listen-address", "127.0.0.1:0")
    assert result.returncode != 0
    assert "bad.yaml" in result.stderr and "Traceback" not in result.stderr


def test_scrape_promtool_and_no_token_leak(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("t1", total=3, finished=2, failure_list=[{"origin_link": "o", "reason": "r"}])
    sim.add_task("t2", total=1, finished=1, status=0)
    sim.script("t2", Reply(status=500))
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2", "t3"]))
    proc = start(procs, tmp_path, "--config.file", cfg, "--log.level", "debug")
    text = metrics(proc)
    assert sample(text, "shoplazza_upload_task_files_finished", task_id="t1") == 2
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="t2") == 0
    assert sample(text, "shoplazza_api_errors_total", code="500") == 1
    assert sample(text, "shoplazza_api_errors_total", code="404") == 1
    promtool = shutil.which("promtool")
    assert promtool
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert lint.returncode == 0 and lint.stdout + lint.stderr == ""
    for path in ("/", "/api/v1/tasks", "/metrics"):
        assert TOKEN not in proc.get(path).text
    assert sim.requests[0].token == TOKEN
    assert proc.stop() == 0
    log = proc.log()
    assert TOKEN not in log
    assert "Traceback" not in log
    assert "poll failed" in log


def test_sigterm_exits_promptly_with_requests_in_flight(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("slow", total=3)
    sim.behave("slow", Reply(latency=30))
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["slow"], timeout="60s"))
    proc = start(procs, tmp_path, "--config.file", cfg)
    response = proc.get("/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "1"})
    assert response.status_code == 200
    assert sim.in_flight == 1
    # a scrape without the header waits up to 10 s; SIGTERM comes while it waits
    sim.add_task("later", total=3)
    sim.behave("later", Reply(latency=30))
    write(tmp_path / "c.yaml", config_yaml(sim.url, ["slow", "later"], timeout="60s"))
    assert requests.post(proc.url + "/-/reload", timeout=5).status_code == 200
    answers: list[int] = []
    waiter = threading.Thread(target=lambda: answers.append(proc.get("/metrics").status_code))
    waiter.start()
    assert sim.wait_for(lambda s: s.count("later") == 1, timeout=5)  # the scrape is waiting
    began = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 2.0
    waiter.join(timeout=5)
    assert answers == [200]  # answered from memory, not dropped


def test_sigint_exits_zero(procs: list[ExporterProcess], sim: Simulator, tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, []))
    proc = start(procs, tmp_path, "--config.file", cfg)
    assert proc.stop(signal.SIGINT) == 0
    assert "Traceback" not in proc.log()


def test_json_logs(procs: list[ExporterProcess], sim: Simulator, tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["gone"]))
    proc = start(procs, tmp_path, "--config.file", cfg, "--log.format", "json")
    metrics(proc)
    proc.stop()
    lines = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
    assert any(line["msg"] == "poll failed" and line["code"] == "404" for line in lines)
    assert all({"ts", "level", "msg"} <= set(line) for line in lines)


def test_demo_serves_live_task_metrics(procs: list[ExporterProcess], tmp_path: Path) -> None:
    proc = start(procs, tmp_path, "--demo")
    deadline = time.monotonic() + 10

    def demo_ready() -> bool:
        text = metrics(proc)
        completed = sample(
            text, "shoplazza_upload_task_completed", task_id="demo-catalogue-complete"
        )
        failing = sample(text, "shoplazza_upload_task_poll_success", task_id="demo-missing-404")
        return completed == 1 and failing == 0

    wait_until(demo_ready, timeout=max(deadline - time.monotonic(), 0.1), interval=0.5)
    text = metrics(proc)
    assert (
        sample(text, "shoplazza_upload_task_files_failed", task_id="demo-variants-failing") or 0
    ) > 0
    assert sample(text, "shoplazza_upload_task_completed", task_id="demo-images-stuck") == 0
    assert proc.stop() == 0
    out = proc.stdout
    assert f"open http://127.0.0.1:{proc.port}/" in out


def test_demo_page_shows_each_state_and_the_context_labels(
    procs: list[ExporterProcess], tmp_path: Path
) -> None:
    """The demo's tasks reach their states on /api/v1/tasks: stuck after its 5 s."""
    proc = start(procs, tmp_path, "--demo")

    def states() -> dict[str, tuple[str, int]]:
        body = proc.get("/api/v1/tasks").json()
        return {
            t["task_id"]: (t["state"], (t["data"] or {}).get("failed", 0)) for t in body["tasks"]
        }

    def reached() -> bool:
        now = states()
        variants, failed = now["demo-variants-failing"]
        return (
            now["demo-catalogue-complete"][0] == "completed"
            and now["demo-images-stuck"][0] == "stuck"
            and now["demo-missing-404"][0] == "failing"
            and variants in ("in_progress", "completed_with_failures")
            and failed > 0  # it accumulates failed files (completes after 20 s)
        )

    wait_until(reached, timeout=20, interval=0.5)
    labels = {t["task_id"]: t["labels"] for t in proc.get("/api/v1/tasks").json()["tasks"]}
    assert labels["demo-images-stuck"] == {"source": "images-stuck.csv"}
    page = proc.get("/").text
    assert "stuck" in page and "images-stuck.csv" in page
    info = sample(
        metrics(proc),
        "shoplazza_upload_task_info",
        task_id="demo-images-stuck",
        source="images-stuck.csv",
    )
    assert info == 1
    assert proc.stop() == 0


def test_reload_by_signal_and_http(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    for task_id in ("a", "b", "c"):
        sim.add_task(task_id, total=10, finished=1)
    cfg = tmp_path / "c.yaml"
    write(cfg, config_yaml(sim.url, ["a", "b"], min_poll_interval=0))
    proc = start(procs, tmp_path, "--config.file", str(cfg))
    sim.task("a").finished = 5
    text = metrics(proc)
    progress_a = sample(text, "shoplazza_upload_task_last_progress_timestamp_seconds", task_id="a")
    requests_before = sample(text, "shoplazza_api_requests_total", code="200") or 0
    # SIGHUP with a good config: b removed, c added, a keeps its state
    write(cfg, config_yaml(sim.url, ["a", "c"], min_poll_interval=0))
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: sample(metrics(proc), "shoplazza_upload_task_poll_success", task_id="c") == 1
    )
    text = metrics(proc)
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="b") is None
    assert sample(text, "shoplazza_upload_task_last_progress_timestamp_seconds", task_id="a") == (
        progress_a
    )
    assert (sample(text, "shoplazza_api_requests_total", code="200") or 0) > requests_before
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 2
    # SIGHUP with a bad config: logged, old config serves, gauge 0
    write(cfg, "stores:\n  - name: shop\n    burst: many\n")
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: sample(metrics(proc), "shoplazza_exporter_config_last_reload_successful") == 0
    )
    assert sample(metrics(proc), "shoplazza_upload_task_poll_success", task_id="c") == 1
    assert "stores[0].burst" in proc.log()
    # HTTP reload, bad then good
    response = requests.post(proc.url + "/-/reload", timeout=10)
    assert response.status_code == 500 and "stores[0].burst" in response.text
    write(cfg, config_yaml(sim.url, ["a"], min_poll_interval=0))
    response = requests.post(proc.url + "/-/reload", timeout=10)
    assert response.status_code == 200
    text = metrics(proc)
    assert sample(text, "shoplazza_exporter_config_last_reload_successful") == 1
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="c") is None
    assert (sample(text, "shoplazza_api_requests_total", code="200") or 0) > requests_before
    # a store removed altogether disappears from /metrics
    write(cfg, config_yaml(sim.url, ["a"]).replace("name: shop", "name: other"))
    assert requests.post(proc.url + "/-/reload", timeout=10).status_code == 200
    text = metrics(proc)
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") is None
    assert sample(text, "shoplazza_api_errors_total", store="shop", code="404") is None
    assert proc.stop() == 0


def test_task_id_files_followed_without_reload(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    for task_id in ("f1", "f2", "f3"):
        sim.add_task(task_id, total=3, finished=1)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "a.txt").write_text("f1\n# a comment\n\nbad/id\n")
    cfg = write(
        tmp_path / "c.yaml",
        config_yaml(sim.url, [], task_id_files=f'["{tasks_dir}/*.txt"]', min_poll_interval=0),
    )
    proc = start(procs, tmp_path, "--config.file", cfg)
    text = metrics(proc)
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="f1") == 1
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 1
    assert f"{tasks_dir}/a.txt:4" in proc.log()
    # the importer appends an id and creates another file
    with open(tasks_dir / "a.txt", "a") as fh:
        fh.write("f2  # trailing comment\n")
    (tasks_dir / "b.txt").write_text("f3\n")
    wait_until(lambda: sample(metrics(proc), "shoplazza_exporter_watched_tasks") == 3, timeout=10)
    # rapid scrapes (interval 0) spend the budget: f3 may come from the background
    wait_until(
        lambda: sample(metrics(proc), "shoplazza_upload_task_poll_success", task_id="f3") == 1,
        timeout=10,
    )
    # ids removed are dropped
    (tasks_dir / "b.txt").unlink()
    (tasks_dir / "a.txt").write_text("f2\n")
    wait_until(lambda: sample(metrics(proc), "shoplazza_exporter_watched_tasks") == 1, timeout=10)
    # a rewrite may be read half done (f2 gone, then back as a new task): it is fetched
    # again when the budget that the rapid scrapes spent allows it
    wait_until(
        lambda: sample(metrics(proc), "shoplazza_upload_task_poll_success", task_id="f2") == 1,
        timeout=10,
    )
    text = metrics(proc)
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="f1") is None
    assert proc.stop() == 0


def test_token_file_rotation(procs: list[ExporterProcess], sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=3, finished=1)
    sim.set_tokens("old-token-0000001", "new-token-0000002")
    token = tmp_path / "token"
    token.write_text("old-token-0000001\n")
    cfg = write(
        tmp_path / "c.yaml",
        f"stores:\n  - name: shop\n    base_url: {sim.url}\n    access_token_file: {token}\n"
        "    task_ids: [t1]\n    min_poll_interval: 0s\n",
    )
    proc = start(procs, tmp_path, "--config.file", cfg)
    metrics(proc)
    token.write_text("new-token-0000002\n")
    metrics(proc)
    assert [r.token for r in sim.requests] == ["old-token-0000001", "new-token-0000002"]
    assert "old-token-0000001" not in proc.log() and "new-token-0000002" not in proc.log()
    proc.stop()


def test_forget_completed_tasks(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("done", total=1, finished=1, status=0)
    sim.add_task("busy", total=3, finished=1)
    cfg = write(
        tmp_path / "c.yaml",
        config_yaml(sim.url, ["done", "busy"], top="forget_completed_after: 1s\n"),
    )
    proc = start(procs, tmp_path, "--config.file", cfg)
    assert sample(metrics(proc), "shoplazza_upload_task_completed", task_id="done") == 1
    wait_until(
        lambda: sample(metrics(proc), "shoplazza_upload_task_completed", task_id="done") is None,
        timeout=10,
        interval=0.2,
    )
    text = metrics(proc)
    assert sample(text, "shoplazza_exporter_watched_tasks", store="shop") == 1
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="busy") == 1
    assert "done" not in json.dumps(proc.get("/api/v1/tasks").json())
    assert sim.count("done") == 1
    proc.stop()


def test_state_file_survives_restart(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("done", total=2, finished=2, status=0)
    sim.add_task("busy", total=5, finished=1)
    state = tmp_path / "state.json"
    cfg = write(
        tmp_path / "c.yaml", config_yaml(sim.url, ["done", "busy"], top=f"state_file: {state}\n")
    )
    first = start(procs, tmp_path, "--config.file", cfg)
    text = metrics(first)
    progress = sample(text, "shoplazza_upload_task_last_progress_timestamp_seconds", task_id="busy")
    assert first.stop(signal.SIGTERM) == 0
    assert state.exists()
    assert sim.count("done") == 1
    second = start(procs, tmp_path, "--config.file", cfg)
    text = metrics(second)
    assert sim.count("done") == 1  # completed: not fetched again after the restart
    assert sample(text, "shoplazza_upload_task_completed", task_id="done") == 1
    assert sample(text, "shoplazza_upload_task_poll_success", task_id="done") == 1
    assert (
        sample(text, "shoplazza_upload_task_last_progress_timestamp_seconds", task_id="busy")
        == progress
    )
    assert sim.count("busy") == 2
    second.stop()


@pytest.mark.parametrize(
    "content", ["{not json", '{"some": "other program"}', "[]", '{"format": "x"}', ""]
)
def test_corrupt_state_file_is_ignored(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path, content: str
) -> None:
    sim.add_task("t1", total=2, finished=1)
    state = tmp_path / "state.json"
    state.write_text(content)
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], top=f"state_file: {state}\n"))
    proc = start(procs, tmp_path, "--config.file", cfg)
    assert sample(metrics(proc), "shoplazza_upload_task_poll_success", task_id="t1") == 1
    assert proc.stop() == 0
    assert "state file" in proc.log()
    assert "Traceback" not in proc.log()
    assert json.loads(state.read_text())["tasks"][0]["task_id"] == "t1"


def test_failed_files_logged_once(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    task = sim.add_task(
        "t1", total=5, finished=2, failure_list=[{"origin_link": "http://a/1.jpg", "reason": "r1"}]
    )
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"], min_poll_interval=0))
    proc = start(procs, tmp_path, "--config.file", cfg)
    metrics(proc)
    metrics(proc)
    task.failure_list.append({"origin_link": "http://a/2.jpg", "reason": "r2"})
    metrics(proc)
    proc.stop()
    log = proc.log()
    assert log.count("origin_link=http://a/1.jpg") == 1
    assert log.count("origin_link=http://a/2.jpg") == 1
    assert "store=shop task_id=t1" in log and "reason=r2" in log


def test_status_page_over_http(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path
) -> None:
    evil = "<script>alert(1)</script>"
    sim.add_task("t1", total=4, finished=1, failure_list=[{"origin_link": evil, "reason": evil}])
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"]))
    proc = start(procs, tmp_path, "--config.file", cfg)
    metrics(proc)
    page = proc.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text
    assert "1/4" in page.text
    data = proc.get("/api/v1/tasks").json()
    assert data["tasks"][0]["data"]["failed_files"][0]["reason"] == evil
    assert proc.get("/nope").status_code == 404
    assert requests.post(proc.url + "/metrics", timeout=5).status_code == 405
    assert proc.get("/-/ready").status_code == 200
    proc.stop()


def test_web_config_tls_and_basic_auth(
    procs: list[ExporterProcess], sim: Simulator, tmp_path: Path, tls_dir: Path
) -> None:
    import bcrypt

    ca_file = tls_dir / "ca.pem"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = write(
        tmp_path / "web.yml",
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n",
    )
    sim.add_task("t1", total=2, finished=1)
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"]))
    check = run("--config.file", cfg, "--web.config.file", web, "--config.check")
    assert check.returncode == 0, check.stderr
    proc = ExporterProcess(["--config.file", cfg, "--web.config.file", web], tmp_path)
    procs.append(proc)
    url = f"https://127.0.0.1:{proc.port}"

    def served() -> bool:
        assert proc.proc.poll() is None, proc.log()
        try:
            requests.get(url + "/-/healthy", verify=str(ca_file), timeout=1)
        except requests.RequestException:
            return False
        return True

    wait_until(served)
    for path in ("/metrics", "/", "/-/healthy", "/api/v1/tasks"):
        response = requests.get(url + path, verify=str(ca_file), timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        wrong = requests.get(url + path, verify=str(ca_file), auth=("prometheus", "x"), timeout=5)
        assert wrong.status_code == 401
    good = requests.get(
        url + "/metrics", verify=str(ca_file), auth=("prometheus", "s3cret"), timeout=5
    )
    assert good.status_code == 200
    assert sample(good.text, "shoplazza_upload_task_files_finished", task_id="t1") == 1
    with pytest.raises(requests.RequestException):
        requests.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5).raise_for_status()
    assert proc.stop() == 0


def test_invalid_web_config_at_start_is_fatal(sim: Simulator, tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, []))
    web = write(tmp_path / "web.yml", "basic_auth_users:\n  u: not-a-bcrypt-hash\ntls: 1\n")
    result = run("--config.file", cfg, "--web.config.file", web, "--web.listen-address", ":0")
    assert result.returncode != 0
    assert "web.yml" in result.stderr and "Traceback" not in result.stderr
    check = run("--config.file", cfg, "--web.config.file", web, "--config.check")
    assert check.returncode != 0 and "web.yml" in check.stderr


def test_a_fifo_state_file_is_refused_at_once_never_opened(sim: Simulator, tmp_path: Path) -> None:
    """A FIFO as state file would hold start-up until a writer came: it is a configuration
    error, reported at once without opening it (docs/design.md, "Rules for files")."""
    import os

    state = tmp_path / "state.fifo"
    os.mkfifo(state)
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, [], top=f"state_file: {state}\n"))
    proc = ExporterProcess(["--config.file", cfg], tmp_path)
    try:
        assert proc.proc.wait(timeout=10) == 1  # no writer ever opens the FIFO
    finally:
        proc.stop(signal.SIGKILL)
    assert "is a FIFO, not a regular file" in proc.log()
    assert "Traceback" not in proc.log()
