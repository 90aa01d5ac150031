"""Shared test helpers: configs pointing at the simulator, a fake clock, WSGI calls."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import requests
from prometheus_client import CollectorRegistry

from exporter.app import Exporter
from exporter.config import StoreConfig
from exporter.metrics.families import family_collectors
from exporter.polling.client import StoreClient
from exporter.polling.poller import Poller
from exporter.web.routes import App

# Every metric the exporter exports, with its type (README "Metrics").
CONTRACT_METRICS: dict[str, str] = {
    "shoplazza_upload_task_files": "gauge",
    "shoplazza_upload_task_files_finished": "gauge",
    "shoplazza_upload_task_files_succeeded": "gauge",
    "shoplazza_upload_task_files_failed": "gauge",
    "shoplazza_upload_task_status": "gauge",
    "shoplazza_upload_task_completed": "gauge",
    "shoplazza_upload_task_progress_ratio": "gauge",
    "shoplazza_upload_task_last_progress_timestamp_seconds": "gauge",
    "shoplazza_upload_task_last_success_timestamp_seconds": "gauge",
    "shoplazza_upload_task_poll_success": "gauge",
    "shoplazza_api_requests_total": "counter",
    "shoplazza_api_errors_total": "counter",
    "shoplazza_api_request_duration_seconds": "histogram",
    "shoplazza_exporter_polls_skipped_total": "counter",
    "shoplazza_exporter_watched_tasks": "gauge",
    "shoplazza_exporter_config_last_reload_successful": "gauge",
    "shoplazza_exporter_config_last_reload_success_timestamp_seconds": "gauge",
    "shoplazza_exporter_build_info": "gauge",
}
# Labelled store and task_id; only poll_success exists before a task's first success.
TASK_METRICS = frozenset(m for m in CONTRACT_METRICS if m.startswith("shoplazza_upload_task_"))
TASK_DATA_METRICS = TASK_METRICS - {"shoplazza_upload_task_poll_success"}
# Labelled store only, as sample names (histogram series included).
STORE_METRICS = frozenset(
    {
        "shoplazza_api_requests_total",
        "shoplazza_api_errors_total",
        *(f"shoplazza_api_request_duration_seconds_{s}" for s in ("bucket", "sum", "count")),
        "shoplazza_exporter_polls_skipped_total",
        "shoplazza_exporter_watched_tasks",
    }
)
GLOBAL_METRICS = frozenset(
    m for m in CONTRACT_METRICS if m.startswith("shoplazza_exporter_") and m not in STORE_METRICS
)

TOKEN = "sim-token-5ecret-value"
TOKEN_ENV = "SUE_TEST_TOKEN"
ROOT = Path(__file__).resolve().parent.parent


def store_yaml(
    name: str, url: str, task_ids: Iterable[str] = (), *, token_env: str = TOKEN_ENV, **keys: Any
) -> str:
    """One store entry of a configuration, as YAML text."""
    lines = [
        f"  - name: {name}",
        f"    base_url: {url}",
        f"    access_token_env: {token_env}",
        f"    task_ids: [{', '.join(task_ids)}]",
    ]
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def config_yaml(url: str, task_ids: Iterable[str] = (), *, top: str = "", **keys: Any) -> str:
    """A one-store configuration named ``shop`` pointing at ``url``."""
    return top + "stores:\n" + store_yaml("shop", url, task_ids, **keys)


def write(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` and return the path as a string."""
    path.write_text(text, encoding="utf-8")
    return str(path)


class FakeClock:
    """A clock tests move by hand; waits poll the condition briefly in real time."""

    def __init__(self, start: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self.wall_offset = wall - start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def time(self) -> float:
        with self._lock:
            return self.now + self.wall_offset

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        if timeout is None or timeout > 0:
            cond.wait(0.005)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def make_exporter(
    config_path: str,
    *,
    clock: Any = None,
    environ: Mapping[str, str] | None = None,
    client_factory: Callable[[StoreConfig], StoreClient] | None = None,
) -> Exporter:
    """An started in-process exporter (no HTTP server) with the test token in its env."""
    env = {TOKEN_ENV: TOKEN} if environ is None else dict(environ)
    exporter = Exporter(config_path, environ=env, clock=clock, client_factory=client_factory)
    exporter.start()
    # The start leaves task id files to the discovery thread; tests see them read.
    assert exporter.files_read(30)
    return exporter


def wsgi(
    app: Callable[..., Iterable[bytes]],
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    *,
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """Call the WSGI app directly (with a request ``body``); returns (status, headers, body)."""
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "CONTENT_TYPE": "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
    }
    for key, value in (headers or {}).items():
        if key.lower() == "content-type":
            environ["CONTENT_TYPE"] = value
        else:
            environ["HTTP_" + key.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(hdrs)
        return lambda data: None

    answer = b"".join(app(environ, start_response))
    return seen["status"], seen["headers"], answer


def scrape(app: App, timeout: float | None = None) -> str:
    """GET /metrics through the WSGI app, optionally with a scrape timeout header."""
    headers = {} if timeout is None else {"X-Prometheus-Scrape-Timeout-Seconds": str(timeout)}
    status, _, body = wsgi(app, "/metrics", headers=headers)
    assert status == 200
    return body.decode()


def registry_of(exporter: Exporter) -> CollectorRegistry:
    """A registry of the exporter's metric families, for ``get_sample_value``."""
    registry = CollectorRegistry()
    for collector in family_collectors(exporter.view):
        registry.register(collector)
    return registry


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition, or None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        threading.Event().wait(interval)


def scheduler_quiet(poller: Poller) -> bool:
    """True when no store waits for a fetch worker, every worker waits for work and no
    timer is due: whatever a refresh, a reply or a clock step set going has started and
    ended, so a check that a request did *not* start cannot pass before it would have.

    Meant for a :class:`FakeClock`; reads the scheduler's internals under the poller's lock.
    """
    scheduler = poller.scheduler
    with poller.cond:
        now = poller.clock.monotonic()
        timers = scheduler._timers
        return (
            not scheduler._ready
            and scheduler._idle == len(scheduler.workers)
            and not (timers and timers[0][0] <= now)
        )


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exporter_command() -> list[str]:
    """The installed console script (falls back to ``python -m exporter``)."""
    script = Path(sys.executable).parent / "shoplazza-upload-exporter"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "exporter"]


class ExporterProcess:
    """The exporter as a subprocess, its stderr collected in a file."""

    def __init__(self, args: list[str], tmp: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"exporter-{self.port}.log"
        self.stdout = ""
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, TOKEN_ENV: TOKEN, **(env or {})}
        self.proc = subprocess.Popen(
            [*exporter_command(), "--web.listen-address", f"127.0.0.1:{self.port}", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=full_env,
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}: {self.log()}")
            try:
                return requests.get(self.url + "/-/healthy", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 15), **kwargs)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int | None = None) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout and not self.proc.stdout.closed:
            self.stdout = self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode
