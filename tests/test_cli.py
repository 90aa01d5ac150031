"""The command line's start-up chores: the open-files limit, the web-config health hook."""

from __future__ import annotations

import logging
import os
import platform
import resource
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.cli import link_web_config_health, main
from exporter.demo.simulator import Simulator
from exporter.runtime import (
    limit_malloc_arenas,
    raise_open_files_limit,
    release_free_memory,
    return_large_buffers_to_the_system,
)
from exporter.web.routes import App
from exporter.web.server import ExporterServer
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    config_yaml,
    exporter_command,
    free_port,
    make_exporter,
    wait_until,
    write,
)


def test_raise_open_files_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    if low == hard:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise")
    caplog.set_level(logging.INFO, logger="exporter")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    [record] = [r for r in caplog.records if r.getMessage() == "open files limit raised"]
    assert vars(record)["previous"] == low and vars(record)["limit"] == hard


def _lower_soft_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def _healthy(port: int, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the exporter exited"
    try:
        return requests.get(f"http://127.0.0.1:{port}/-/healthy", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _open_files_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-files line in /proc/PID/limits")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc (Linux)")
def test_exporter_raises_its_open_files_limit_at_start(sim: Simulator, tmp_path: Path) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise")
    config = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"]))
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *exporter_command(),
                "--config.file",
                config,
                "--web.listen-address",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, TOKEN_ENV: TOKEN},
            preexec_fn=_lower_soft_limit,
        )
        try:
            wait_until(lambda: _healthy(port, proc), 15)
            soft, hard_text = _open_files_limit(proc.pid)
            assert soft == hard_text != "256"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
    text = log_path.read_text()
    assert "open files limit raised" in text and "previous=256" in text


def test_web_config_health_reaches_the_exporter_view(sim: Simulator, tmp_path: Path) -> None:
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    web = tmp_path / "web.yml"
    web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    plain = ExporterServer(App(exporter), "127.0.0.1:0")
    server = ExporterServer(App(exporter), "127.0.0.1:0", str(web))
    try:
        link_web_config_health(exporter, plain)
        assert exporter.view().web_config_ok is None  # no --web.config.file
        link_web_config_health(exporter, server)
        assert exporter.view().web_config_ok is True
        web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: maybe\n")
        assert server.web_config is not None
        server.web_config.check()  # what SIGHUP or the next connection does
        assert exporter.view().web_config_ok is False  # the old one still serves
        web.write_text("http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n")
        server.web_config.check()
        assert exporter.view().web_config_ok is True
    finally:
        plain.shutdown()
        server.shutdown()
        exporter.close()


def test_large_buffers_go_back_to_the_system_on_glibc() -> None:
    # mallopt exists only in glibc; elsewhere the call must be a harmless no-op.
    expected = platform.libc_ver()[0] == "glibc"
    assert return_large_buffers_to_the_system() is expected
    assert release_free_memory() is expected


def test_threads_share_two_malloc_arenas_unless_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = platform.libc_ver()[0] == "glibc"
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is expected
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the operator's choice wins
    assert limit_malloc_arenas() is False


def test_total_shards_above_1000_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from exporter.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--total-shards", "100000000", "--config.file", "/nonexistent.yaml"])
    assert info.value.code == 2
    assert "--total-shards 100000000: at most 1000" in capsys.readouterr().err


def test_a_loop_of_links_neither_stops_the_start_nor_delays_sigterm(
    sim: Simulator, tmp_path: Path
) -> None:
    """Links ``a -> .`` and ``b -> .`` under a ``**`` glob: the exporter serves, then stops."""
    from tests.helpers import ExporterProcess, store_yaml

    sim.add_task("t1", total=2, finished=1)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "ids.txt").write_text("t1\n")
    os.symlink(".", tasks / "a")
    os.symlink(".", tasks / "b")
    cfg = write(
        tmp_path / "c.yaml",
        "stores:\n" + store_yaml("shop", sim.url, task_id_files="['tasks/**/*.txt']"),
    )
    proc = ExporterProcess(["--config.file", cfg], tmp_path)
    try:
        proc.wait_ready(timeout=20)
        assert 'task_id="t1"' in proc.get("/metrics").text
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=2) == 0  # within 2 s of SIGTERM (README "Running it")
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "url", ["ftp://grafana/d/x", "grafana.example.com/d/x", "https://", "https://g/\x00"]
)
def test_dashboard_url_must_be_a_web_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--web.dashboard-url", url, "--config.check"])
    assert exc.value.code == 2
    assert "--web.dashboard-url" in capsys.readouterr().err


def test_a_signal_handler_takes_no_lock_the_main_thread_may_hold() -> None:
    """Python runs a handler in the main thread, possibly inside ``wake.wait()`` with that
    event's lock held: a handler that needed the lock would wait for it forever, and the
    process would ignore SIGTERM. Here the handlers run while their thread holds it."""
    from exporter.cli import _Signals

    signals = _Signals()
    done = threading.Event()

    def interrupted_inside_wait() -> None:
        lock: Any = signals.wake._cond  # type: ignore[attr-defined]  # Event.wait's lock
        with lock:
            signals.on_hup(signal.SIGHUP, None)
            signals.on_stop(signal.SIGTERM, None)
        done.set()

    threading.Thread(target=interrupted_inside_wait, daemon=True).start()
    assert done.wait(timeout=5), "a signal handler waited for a lock its thread holds"
    assert signals.stopping() and signals.reload
    signals.wait()  # the main loop sees the flags within SIGNAL_POLL, woken or not
