"""No outside value can make an endpoint answer 500 (docs/design.md, "Values from outside").

Arbitrary API answers (any JSON types, sizes and nesting, integers up to 10^1000, unicode and
control characters, raw bytes) go through the real path: simulator -> client -> poller ->
state file -> every endpoint. Arbitrary header values go to /metrics. Every answer must be
200, and a sample of the /metrics outputs must pass ``promtool check metrics``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.demo.simulator import Reply, Simulator
from exporter.web.routes import App
from tests.helpers import FakeClock, config_yaml, make_exporter, sample, scrape, write, wsgi

# Hypothesis warns when an example's repr is large (bodies of nested JSON): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EXAMPLES = 500
PROMTOOL_CHECKS = 24  # distinct /metrics outputs handed to promtool per test


# ---- strategies ------------------------------------------------------------------------

texts = st.text(max_size=12) | st.sampled_from(["\x00", "\x1b[31m", "a\nb", "\u2028", "\ud800"])
integers = (
    st.integers(min_value=-3, max_value=20)
    | st.integers(min_value=2**53 - 2, max_value=2**53 + 2)
    | st.integers(min_value=-(10**1000), max_value=10**1000)
    | st.just(10**1000)
)
numeric_strings = st.from_regex(r"\A[0-9]{1,25}\Z") | st.just("1" + "0" * 400)
scalars = (
    st.none() | st.booleans() | integers | st.floats() | texts | numeric_strings | st.just(1e308)
)
keys = st.sampled_from(
    [
        *("total", "finished", "status", "success_list", "failure_list", "origin_list"),
        *("code", "data", "error", "errors", "message", "origin_link", "reason", "file_uri"),
    ]
) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=16,
)
counts = integers | numeric_strings | json_values
failures = st.lists(
    st.fixed_dictionaries({"origin_link": texts, "reason": texts}) | json_values, max_size=4
)
task_bodies = st.fixed_dictionaries(
    {},
    optional={
        "total": counts,
        "finished": counts,
        "status": integers | st.sampled_from([0, 1, 1, 7]),
        "success_list": st.lists(json_values, max_size=3) | json_values,
        "failure_list": failures | json_values,
        "origin_list": st.lists(texts, max_size=3) | json_values,
        "code": texts,
        "message": texts,
        "extra": json_values,
    },
)
plausible = st.fixed_dictionaries(
    {
        "total": st.integers(min_value=0, max_value=2**53),
        "finished": st.integers(min_value=0, max_value=2**53),
        "status": st.sampled_from([0, 1, 1, 2, 2**53]),
    },
    optional={"failure_list": failures},
)
objects = (
    task_bodies
    | plausible
    | st.builds(lambda d: {"code": "Success", "data": d}, task_bodies | plausible)
    | json_values
)
bodies = st.one_of(
    st.tuples(objects, st.booleans()).map(
        lambda v: json.dumps(v[0], ensure_ascii=v[1]).encode("utf-8", "surrogatepass")
    ),
    st.binary(max_size=40),
)
statuses = st.sampled_from([200, 200, 200, 200, 201, 302, 400, 401, 404, 422, 500, 503])
phases = st.lists(st.tuples(statuses, bodies), min_size=1, max_size=2)

header_values = st.text(alphabet=st.characters(max_codepoint=255), max_size=20) | st.sampled_from(
    [
        *("1e308", "1e400", "-1e400", "nan", "inf", "-inf", "-1", "0", "0.0", "1e-400"),
        *("\u0661\u0662", "1_0", " 10 ", "10\x00", "9" * 400, "0x10", "4.5"),
    ]
)
accepts = header_values | st.sampled_from(
    [
        OPENMETRICS,
        "application/openmetrics-text",
        "application/openmetrics-text; version=0.0.1",
        "application/openmetrics-text; version=9",
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "application/openmetrics-text;;;=",
    ]
)
encodings = header_values | st.sampled_from(["gzip", "GZIP", "gzip;q=0", "br, gzip", "identity"])


# ---- checks ----------------------------------------------------------------------------


class Outputs:
    """/metrics outputs kept for promtool: the first of each kind, up to a bound."""

    def __init__(self, limit: int = PROMTOOL_CHECKS) -> None:
        self.limit = limit
        self.kept: dict[frozenset[str], str] = {}
        self.lock = threading.Lock()

    def add(self, text: str) -> None:
        kind = frozenset(line.split(" ")[0] for line in text.splitlines() if line[:1] != "#")
        with self.lock:
            if kind not in self.kept and len(self.kept) < self.limit:
                self.kept[kind] = text

    def check_with_promtool(self) -> None:
        promtool = shutil.which("promtool")
        assert promtool, "promtool is needed: scripts/test.sh installs Debian's prometheus"
        assert self.kept

        def check(text: str) -> tuple[int, bytes, str]:
            run = subprocess.run(
                [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
            )
            return run.returncode, run.stdout + run.stderr, text

        with ThreadPoolExecutor(max_workers=2) as pool:
            for code, output, text in pool.map(check, self.kept.values()):
                assert code == 0 and not output.strip(), (output, text[:3000])


def get(app: App, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    status, sent, body = wsgi(app, path, headers=headers)
    assert status == 200, (path, headers, body[:500])
    if sent.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return status, body


def every_endpoint(app: App, outputs: Outputs) -> None:
    """/metrics in both formats, / and /api/v1/tasks all answer 200 with sound bodies."""
    _, text = get(app, "/metrics")
    outputs.add(text.decode())
    _, open_metrics = get(app, "/metrics", {"Accept": OPENMETRICS})
    assert open_metrics.endswith(b"# EOF\n")
    _, page = get(app, "/")
    page.decode("utf-8")
    _, data = get(app, "/api/v1/tasks")
    json.loads(data)


@pytest.fixture
def outputs() -> Outputs:
    return Outputs()


def run_examples(test: Callable[..., None], examples: int = EXAMPLES) -> None:
    settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(test)()


# ---- tests -----------------------------------------------------------------------------


def test_arbitrary_api_answers_never_break_an_endpoint(
    sim: Simulator, tmp_path: Path, outputs: Outputs
) -> None:
    sim.add_task("steady", total=3, finished=1)
    state = tmp_path / "state.json"
    plain = config_yaml(sim.url, ["t1", "steady"])
    cfg = write(tmp_path / "c.yaml", plain)
    with_state = write(tmp_path / "s.yaml", f"state_file: {state}\n" + plain)
    seen = {"restarts": 0}

    @given(phases, st.booleans())
    def check(answers: list[tuple[int, bytes]], restart: bool) -> None:
        state.unlink(missing_ok=True)
        # The state file (fsync on every write) only where it is read back: a restart.
        clock = FakeClock()  # one fetch per phase: the first /metrics; the rest render
        exporter = make_exporter(with_state if restart else cfg, clock=clock)
        try:
            app = App(exporter)
            for status, body in answers:
                sim.behave("t1", Reply(status=status, body=body, headers={"Location": "/x"}))
                clock.advance(3600)  # due again, whatever the backoff
                every_endpoint(app, outputs)
        finally:
            exporter.close()
        if restart:  # whatever was accepted is written and read back without harm
            seen["restarts"] += 1
            again = make_exporter(with_state)
            try:
                every_endpoint(App(again), outputs)
            finally:
                again.close()

    try:
        run_examples(check)
    finally:
        sim.behave("t1", None)
    assert seen["restarts"] > 0
    outputs.check_with_promtool()


def test_arbitrary_headers_never_break_metrics(
    sim: Simulator, tmp_path: Path, outputs: Outputs
) -> None:
    sim.add_task("ok", total=5, finished=2, failure_list=[{"origin_link": "a", "reason": "\x00"}])
    sim.behave("bad", Reply(status=200, body=b'{"total": 1' + b"0" * 400 + b', "finished": 1}'))
    # Due at every scrape: the header's deadline is waited on, not only parsed.
    cfg = write(
        tmp_path / "c.yaml",
        config_yaml(
            sim.url,
            ["ok", "bad", "missing"],
            min_poll_interval="0s",
            requests_per_second=10000,
            burst=10000,
        ),
    )
    exporter = make_exporter(cfg)
    try:
        app = App(exporter)
        first = scrape(app)
        assert sample(first, "shoplazza_api_errors_total", code="invalid_response") == 1

        @given(header_values, accepts, encodings)
        def check(timeout: str, accept: str, encoding: str) -> None:
            headers = {
                "X-Prometheus-Scrape-Timeout-Seconds": timeout,
                "Accept": accept,
                "Accept-Encoding": encoding,
            }
            _, body = get(app, "/metrics", headers)
            text = body.decode()
            if not text.endswith("# EOF\n"):
                outputs.add(text)

        run_examples(check)
    finally:
        exporter.close()
    outputs.check_with_promtool()


def test_arbitrary_state_files_never_break_an_endpoint(
    sim: Simulator, tmp_path: Path, outputs: Outputs
) -> None:
    state = tmp_path / "state.json"
    cfg = write(
        tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2"], top=f"state_file: {state}\n")
    )
    sim.behave("t1", Reply(status=503))
    sim.behave("t2", Reply(status=503))
    entry = st.fixed_dictionaries(
        {
            "store": st.sampled_from(["shop", "other"]) | texts,
            "task_id": st.sampled_from(["t1", "t2"]) | texts,
            "total": counts,
            "finished": counts,
            "status": counts,
            "succeeded": counts,
            "failed": counts,
        },
        optional={
            "failures": st.lists(st.lists(texts, max_size=3), max_size=3) | json_values,
            "poll_success": json_values,
            "last_code": json_values,
            "last_success": json_values | st.floats(),
            "last_progress": json_values | st.floats(),
            "completed_at": json_values | st.floats(),
            "last_watched": json_values | st.floats(),
        },
    )
    files = st.fixed_dictionaries(
        {"format": st.just("shoplazza-upload-exporter/state"), "version": st.just(1)},
        optional={
            "tasks": st.lists(entry, max_size=3) | json_values,
            "forgotten": st.lists(st.lists(json_values, max_size=4), max_size=3) | json_values,
        },
    )

    @given(files)
    def check(content: dict[str, Any]) -> None:
        state.write_text(json.dumps(content))
        exporter: Exporter = make_exporter(cfg)
        try:
            every_endpoint(App(exporter), outputs)
        finally:
            exporter.close()

    run_examples(check, 150)
    outputs.check_with_promtool()
