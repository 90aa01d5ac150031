"""The task API over real HTTP (docs/task-api.md): register, batch, remove, read, wait."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.app import Exporter
from exporter.demo.simulator import Simulator
from exporter.polling import statefile
from exporter.polling.statefile import read_state
from exporter.sharding import Shard, owner
from exporter.web.routes import App
from exporter.web.server import ExporterServer
from tests.helpers import TOKEN, TOKEN_ENV, sample, store_yaml, wait_until, write


class Served:
    def __init__(self, exporter: Exporter, server: ExporterServer, app: App) -> None:
        self.exporter = exporter
        self.server = server
        self.app = app
        self.base = f"http://127.0.0.1:{server.address[1]}"

    def url(self, store: str = "shop", task_id: str | None = None) -> str:
        tail = "" if task_id is None else f"/{task_id}"
        return f"{self.base}/api/v1/stores/{store}/tasks{tail}"


@contextlib.contextmanager
def serve(
    tmp_path: Path,
    sim: Simulator,
    *,
    writes: bool = True,
    state: bool = True,
    stores: str | None = None,
    shard: Shard | None = None,
    request_timeout: float = 10.0,
    **keys: Any,
) -> Iterator[Served]:
    os.environ.setdefault(TOKEN_ENV, TOKEN)  # token files re-read through the environment
    top = f"state_file: {tmp_path / 'state.json'}\n" if state else ""
    text = top + "stores:\n" + (stores or store_yaml("shop", sim.url, ["c1"], **keys))
    exporter = Exporter(
        write(tmp_path / "config.yaml", text), environ={TOKEN_ENV: TOKEN}, shard=shard
    )
    exporter.start()
    app = App(exporter, enable_task_api=writes)
    server = ExporterServer(app, "127.0.0.1:0", request_timeout=request_timeout)
    server.start()
    try:
        yield Served(exporter, server, app)
    finally:
        server.shutdown()
        exporter.close()


def registered_on_disk(tmp_path: Path) -> set[tuple[str, str]]:
    return {(s, t) for s, t, _ in read_state(str(tmp_path / "state.json")).registered}


def test_put_registers_once_durably_and_get_shows_the_source(tmp_path: Path, sim: Any) -> None:
    sim.add_task("t1", total=3, finished=1)
    with serve(tmp_path, sim) as s:
        first = requests.put(s.url(task_id="t1"), json={"labels": {"importer": "nightly"}})
        assert first.status_code == 201
        # on disk before the answer: the state file is read right after, no waiting
        assert registered_on_disk(tmp_path) == {("shop", "t1")}
        assert first.json()["labels"] == {"importer": "nightly"}
        assert first.json()["source"] == "api"
        again = requests.put(s.url(task_id="t1"), json={"labels": {"importer": "other"}})
        assert again.status_code == 200 and again.json()["labels"] == {"importer": "other"}
        got = requests.get(s.url(task_id="t1"))
        assert got.status_code == 200 and got.json()["source"] == "api"
        assert requests.get(s.url(task_id="c1")).json()["source"] == "config"
        listed = requests.get(s.base + "/api/v1/tasks").json()["tasks"]
        assert sorted((t["task_id"], t["source"]) for t in listed) == [
            ("c1", "config"),
            ("t1", "api"),
        ]
        assert "api" in requests.get(s.base + "/").text  # the page shows the source
        metrics = requests.get(s.base + "/metrics").text
        assert sample(metrics, "shoplazza_exporter_registered_tasks", store="shop") == 1
        assert sample(metrics, "shoplazza_upload_task_info", task_id="t1", importer="other") == 1
        assert (
            sample(metrics, "shoplazza_exporter_task_api_requests_total", method="PUT", code="201")
            == 1
        )


def test_writes_are_refused_with_403_unless_enabled(tmp_path: Path, sim: Any) -> None:
    with serve(tmp_path, sim, writes=False) as s:
        for method in ("PUT", "DELETE"):
            answer = requests.request(method, s.url(task_id="t1"))
            assert answer.status_code == 403
            assert "--web.enable-task-api" in answer.json()["error"]
        assert requests.post(s.url(), json={"tasks": [{"id": "t1"}]}).status_code == 403
        assert requests.get(s.url(task_id="c1")).status_code == 200  # reads stay on
        assert requests.get(s.url(task_id="t1")).status_code == 404
        assert s.exporter.poller.registered == {}


def test_delete_answers_204_404_and_409(tmp_path: Path, sim: Any) -> None:
    with serve(tmp_path, sim) as s:
        assert requests.put(s.url(task_id="t1")).status_code == 201
        assert requests.delete(s.url(task_id="t1")).status_code == 204
        assert registered_on_disk(tmp_path) == set()
        assert requests.get(s.url(task_id="t1")).status_code == 404
        assert requests.delete(s.url(task_id="t1")).status_code == 404
        assert requests.delete(s.url(task_id="c1")).status_code == 409
        assert requests.get(s.url(task_id="c1")).status_code == 200


def test_a_batch_registers_all_with_one_write_or_none(
    tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[str] = []
    real = statefile.write_atomically

    def counting(path: str, text: str) -> None:
        writes.append(path)
        real(path, text)

    monkeypatch.setattr(statefile, "write_atomically", counting)
    with serve(tmp_path, sim) as s:
        wait_until(lambda: s.exporter.state_writer is not None and bool(writes))
        writes.clear()
        tasks = [{"id": f"b{i}", "labels": {"n": str(i)}} for i in range(1000)]
        answer = requests.post(s.url(), json={"tasks": tasks})
        assert answer.status_code == 200
        assert [t["status"] for t in answer.json()["tasks"]] == [201] * 1000
        assert len(writes) == 1  # one state-file write for the batch
        assert len(registered_on_disk(tmp_path)) == 1000
        bad = [{"id": "new1"}, {"id": "../x"}, {"id": "new2", "labels": {"task_id": "x"}}]
        refused = requests.post(s.url(), json={"tasks": bad})
        assert refused.status_code == 422
        assert [e["index"] for e in refused.json()["invalid"]] == [1, 2]
        assert requests.get(s.url(task_id="new1")).status_code == 404  # nothing registered
        too_many = requests.post(s.url(), json={"tasks": [{"id": f"x{i}"} for i in range(1001)]})
        assert too_many.status_code == 422


def test_the_limit_of_registered_tasks_is_named(tmp_path: Path, sim: Any) -> None:
    with serve(tmp_path, sim, max_registered_tasks=2) as s:
        assert requests.post(s.url(), json={"tasks": [{"id": "a"}, {"id": "b"}]}).ok
        refused = requests.put(s.url(task_id="c"))
        assert refused.status_code == 422
        assert "max_registered_tasks" in refused.json()["error"]
        assert "2" in refused.json()["error"]
        assert requests.put(s.url(task_id="a")).status_code == 200  # already there: fine


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"Content-Type": "text/plain"}, b'{"labels": {}}', 415),
        ({}, b'{"labels": {}}', 415),
        ({"Content-Type": "application/json"}, b"x" * (64 * 1024 + 1), 413),
        ({"Content-Type": "application/json"}, b"{not json", 400),
        ({"Content-Type": "application/json"}, b'{"labels": {}, "labels": {}}', 400),
        ({"Content-Type": "application/json"}, b"[" * 5000 + b"]" * 5000, 400),
        ({"Content-Type": "application/json"}, b'{"labels": {"a": 1}}', 422),
        ({"Content-Type": "application/json"}, b'{"labels": {"store": "x"}}', 422),
        ({"Content-Type": "application/json"}, b'{"other": 1}', 422),
    ],
)
def test_hostile_bodies_get_a_4xx_and_change_nothing(
    tmp_path: Path, sim: Any, headers: dict[str, str], body: bytes, status: int
) -> None:
    with serve(tmp_path, sim) as s:
        answer = requests.put(s.url(task_id="t1"), data=body, headers=headers)
        assert answer.status_code == status, answer.text
        assert "error" in answer.json()
        assert s.exporter.poller.registered == {}
        assert not any(h.lower().startswith("access-control-") for h in answer.headers)


def test_paths_ids_and_stores(tmp_path: Path, sim: Any) -> None:
    other = next(f"s{i}" for i in range(100) if owner(f"s{i}", 3) == 2)
    mine = next(f"s{i}" for i in range(100) if owner(f"s{i}", 3) == 0)
    stores = store_yaml(mine, sim.url) + store_yaml(other, sim.url)
    with serve(tmp_path, sim, stores=stores, shard=Shard(0, 3)) as s:
        misdirected = requests.put(s.url(other, "t1"))
        assert misdirected.status_code == 421
        assert misdirected.json()["shard"] == 2 and "error" in misdirected.json()
        assert requests.put(s.url("nowhere", "t1")).status_code == 404
        assert requests.put(s.url(mine, "bad.id")).status_code == 422
        assert requests.put(s.url(mine, "t1")).status_code == 201
        assert requests.get(s.base + f"/api/v1/stores/{mine}/other").status_code == 404
        assert requests.patch(s.url(mine, "t1")).status_code == 405
        preflight = requests.options(s.url(mine, "t1"), headers={"Origin": "https://evil"})
        assert preflight.status_code == 405
        assert not any(h.lower().startswith("access-control-") for h in preflight.headers)


def test_a_body_never_finished_is_cut_by_the_deadline(tmp_path: Path, sim: Any) -> None:
    with serve(tmp_path, sim, request_timeout=0.5) as s:
        with socket.create_connection(("127.0.0.1", s.server.address[1]), timeout=5) as conn:
            conn.sendall(
                b"PUT /api/v1/stores/shop/tasks/t1 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            assert conn.recv(100) == b""  # closed by the server, nothing answered
        assert s.exporter.poller.registered == {}


def test_no_header_value_reaches_an_answer_or_a_log_line(
    tmp_path: Path, sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Sekr1t-header-value-42"
    caplog.set_level(logging.DEBUG)
    with serve(tmp_path, sim) as s:
        answers = [
            requests.put(
                s.url(task_id="t1"),
                data=b"{}",
                headers={"Content-Type": secret, "Authorization": f"Bearer {secret}"},
            ),
            requests.put(s.url(task_id="bad!"), headers={"X-Token": secret}),
            requests.put(s.url(store="nowhere", task_id="t1"), headers={"Cookie": secret}),
        ]
    for answer in answers:
        assert answer.status_code in (404, 415, 422)
        assert secret not in answer.text and secret not in str(answer.headers)
    assert secret not in caplog.text


def test_a_waiter_is_answered_when_its_task_completes(tmp_path: Path, sim: Any) -> None:
    sim.add_task("t1", total=2, finished=1)
    with serve(tmp_path, sim, min_poll_interval="100ms") as s:
        assert requests.put(s.url(task_id="t1")).status_code == 201
        result: dict[str, Any] = {}

        def wait() -> None:
            result["answer"] = requests.get(s.url(task_id="t1") + "?wait=60s", timeout=30)

        waiter = threading.Thread(target=wait)
        waiter.start()
        wait_until(lambda: s.app.task_api is not None and s.app.task_api.hub.waiting == 1)
        sim.add_task("t1", total=2, finished=2, status=0)
        waiter.join(30)
        answer = result["answer"]
        assert answer.status_code == 200 and answer.json()["state"] == "completed"
        assert s.app.task_api is not None and s.app.task_api.hub.waiting == 0


def test_a_wait_ends_with_the_task_as_it_is(tmp_path: Path, sim: Any) -> None:
    sim.add_task("t1", total=2, finished=1)
    with serve(tmp_path, sim) as s:
        requests.put(s.url(task_id="t1"))
        answer = requests.get(s.url(task_id="t1") + "?wait=300ms", timeout=10)
        assert answer.status_code == 200 and answer.json()["state"] == "in_progress"
        assert requests.get(s.url(task_id="t1") + "?wait=soon").status_code == 400


def test_waiters_hold_no_thread(tmp_path: Path, sim: Any) -> None:
    """200 waiting requests: the thread count does not move and the probes answer."""
    sim.add_task("t1", total=2, finished=1)
    with serve(tmp_path, sim) as s:
        requests.put(s.url(task_id="t1"))
        requests.get(s.base + "/metrics")  # every lazily started thread is up
        threads = threading.active_count()
        socks = []
        head = b"GET /api/v1/stores/shop/tasks/t1?wait=60s HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(200):
            conn = socket.create_connection(("127.0.0.1", s.server.address[1]))
            conn.sendall(head)
            socks.append(conn)
        assert s.app.task_api is not None
        hub = s.app.task_api.hub
        wait_until(lambda: hub.waiting == 200)
        assert threading.active_count() <= threads  # none more (a finished one may be gone)
        assert requests.get(s.base + "/-/healthy", timeout=2).status_code == 200
        assert requests.get(s.base + "/metrics", timeout=2).status_code == 200
        sim.add_task("t1", total=2, finished=2, status=0)
        for conn in socks:
            conn.settimeout(30)
            assert conn.recv(20).startswith(b"HTTP/1.1 200")
            conn.close()


def test_hostile_input_through_the_wsgi_app_never_answers_500(tmp_path: Path, sim: Any) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.helpers import wsgi

    with serve(tmp_path, sim) as s:
        app = s.app

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
            tail=st.text(max_size=80),
            body=st.one_of(
                st.binary(max_size=300),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: (
                        st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
                    ),
                    max_leaves=20,
                ).map(lambda v: json.dumps(v).encode()),
            ),
            json_type=st.booleans(),
        )
        def check(method: str, tail: str, body: bytes, json_type: bool) -> None:
            before = {k: dict(v) for k, v in s.exporter.poller.registered.items()}
            headers = {"Content-Type": "application/json"} if json_type else {}
            status, hdrs, _ = wsgi(
                app, "/api/v1/stores/" + tail, method, body=body, headers=headers
            )
            assert status < 500
            assert not any(h.lower().startswith("access-control-") for h in hdrs)
            if status >= 400:
                assert s.exporter.poller.registered == before

        check()
