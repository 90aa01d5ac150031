"""Tests of the Shoplazza API simulator (exporter/demo/simulator.py), against the real server."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.demo.simulator import RecordedRequest, Reply, Simulator
from exporter.demo.tasks import DEMO_MISSING_TASK, DEMO_TOKEN, add_demo_tasks

TOKEN = "sim-token"
AUTH = {"access-token": TOKEN}
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as s:
        yield s


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def get(
    sim: Simulator,
    task_id: str,
    *,
    token: str | None = TOKEN,
    version: str = "2022-01",
    session: requests.Session | None = None,
    **kwargs: Any,
) -> requests.Response:
    headers = {} if token is None else {"access-token": token}
    getter = session.get if session is not None else requests.get
    return getter(
        sim.task_url(task_id, version),
        headers=headers,
        timeout=5,
        allow_redirects=False,
        **kwargs,
    )


def in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run fn in a daemon thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except Exception as exc:
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# -- shapes, routing, auth --------------------------------------------------------------


def test_flat_shape_body(sim: Simulator) -> None:
    success = [{"file_uri": "u", "origin_link": "o", "upload_link": "l"}]
    failure = [{"origin_link": "o2", "reason": "download timeout"}]
    sim.add_task(
        "t1", 3, 2, success_list=success, failure_list=failure, origin_list=["o", "o2", "o3"]
    )
    r = get(sim, "t1")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.json() == {
        "task_id": "t1",
        "total": 3,
        "finished": 2,
        "status": 1,
        "success_list": success,
        "failure_list": failure,
        "origin_list": ["o", "o2", "o3"],
    }


def test_wrapped_shape_and_per_task_override(sim: Simulator) -> None:
    sim.add_task("t1", 5, 5, 0)
    sim.add_task("t2", 1)
    sim.shape = "wrapped"
    body = get(sim, "t1", version="2025-06").json()
    assert body["code"] == "Success"
    assert body["data"]["task_id"] == "t1"
    assert body["data"]["status"] == 0
    assert body["data"]["success_list"] == []
    sim.set_shape("t2", "flat")
    assert get(sim, "t2").json()["task_id"] == "t2"
    sim.shape = "flat"
    sim.set_shape("t1", "wrapped")
    assert "data" in get(sim, "t1").json()
    sim.set_shape("t1", None)
    assert get(sim, "t1").json()["task_id"] == "t1"
    with pytest.raises(ValueError):
        sim.set_shape("t1", "nested")
    with pytest.raises(ValueError):
        Simulator(shape="nested")


def test_task_changes_show_in_next_answer(sim: Simulator) -> None:
    task = sim.add_task("t1", 4)
    assert get(sim, "t1").json()["finished"] == 0
    with sim.lock:
        task.finished = 4
        task.status = 0
    body = get(sim, "t1").json()
    assert (body["finished"], body["status"]) == (4, 0)
    assert sim.task("t1") is task
    sim.remove_task("t1")
    assert get(sim, "t1").status_code == 404
    sim.remove_task("t1")  # unknown: ignored
    with pytest.raises(KeyError):
        sim.task("t1")


def test_auth_401_records_token(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    r = get(sim, "t1", token="wrong")
    assert r.status_code == 401
    assert r.json() == {"error": "Invalid access token"}
    assert get(sim, "t1", token=None).status_code == 401
    assert [(q.token, q.status) for q in sim.requests] == [("wrong", 401), (None, 401)]
    sim.set_tokens("new-1", "new-2")
    assert get(sim, "t1").status_code == 401
    assert get(sim, "t1", token="new-2").status_code == 200
    assert sim.tokens == frozenset({"new-1", "new-2"})
    assert sim.count(status=401) == 3


def test_unknown_task_and_path_404(sim: Simulator) -> None:
    r = get(sim, "nope")
    assert r.status_code == 404
    assert r.json() == {"errors": ["task not found"]}
    for path in ("/", "/openapi/2022-01/file/task/", "/openapi/20 22/file/task/x", "/x/y"):
        r = requests.get(sim.url + path, headers=AUTH, timeout=5)
        assert r.status_code == 404, path
        assert r.json() == {"errors": ["Not Found"]}
    assert sim.requests[-1].task_id is None
    assert sim.requests[0].task_id == "nope"


def test_any_version_string_routes(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    for version in ("2022-01", "2025-06", "v1.2_beta"):
        assert get(sim, "t1", version=version).status_code == 200
    r = requests.get(sim.task_url("t1") + "?x=1", headers=AUTH, timeout=5)
    assert r.status_code == 200


def test_non_get_405(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        r = requests.request(method, sim.task_url("t1"), headers=AUTH, data=b"{}", timeout=5)
        assert r.status_code == 405, method
        assert r.headers["Allow"] == "GET"
    r = requests.head(sim.task_url("t1"), headers=AUTH, timeout=5)
    assert r.status_code == 405
    assert [q.method for q in sim.requests] == ["POST", "PUT", "DELETE", "PATCH", "HEAD"]


# -- scripted and sticky replies ------------------------------------------------------


def test_script_one_shot_then_normal(sim: Simulator) -> None:
    sim.add_task("t1", 2, 1)
    sim.script(
        "t1",
        Reply(status=429, headers={"Retry-After": "3"}),
        Reply(status=500, body=b'{"error": "boom"}'),
        Reply(status=302, headers={"Location": "http://127.0.0.2/elsewhere"}),
        Reply(status=200, body=b"not json", content_type="text/plain"),
        Reply(status=200),
    )
    assert sim.pending("t1") == 5
    r = get(sim, "t1")
    assert (r.status_code, r.headers["Retry-After"]) == (429, "3")
    assert r.json() == {"errors": ["Too Many Requests"]}
    r = get(sim, "t1")
    assert (r.status_code, r.json()) == (500, {"error": "boom"})
    r = get(sim, "t1")
    assert (r.status_code, r.headers["Location"]) == (302, "http://127.0.0.2/elsewhere")
    r = get(sim, "t1")
    assert (r.status_code, r.headers["Content-Type"], r.content) == (200, "text/plain", b"not json")
    r = get(sim, "t1", token="wrong")  # a scripted reply answers before the auth check
    assert (r.status_code, r.json()["finished"]) == (200, 1)
    assert sim.pending("t1") == 0
    assert get(sim, "t1", token="wrong").status_code == 401
    assert get(sim, "t1").status_code == 200
    assert [q.status for q in sim.requests] == [429, 500, 302, 200, 200, 401, 200]
    sim.script("t1", Reply(status=503), Reply(status=503))
    sim.clear_script("t1")
    assert get(sim, "t1").status_code == 200


def test_script_for_unknown_task(sim: Simulator) -> None:
    sim.script("ghost", Reply(status=200))
    r = get(sim, "ghost")
    assert (r.status_code, r.json()) == (200, {"errors": ["task not found"]})


def test_behave_sticky_and_clear(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    sim.add_task("t2", 1)
    sim.behave("t1", Reply(status=503))
    sim.script("t1", Reply(status=404))
    assert get(sim, "t1").status_code == 404  # scripted first
    for _ in range(3):
        assert get(sim, "t1").status_code == 503
    assert get(sim, "t2").status_code == 200  # only that task
    sim.behave("t1", None)
    assert get(sim, "t1").status_code == 200
    assert sim.count("t1", 503) == 3
    assert sim.count("t1") == 5
    assert sim.count(status=200) == 2


# -- latency and shutdown -------------------------------------------------------------


def test_latency_global_and_per_reply(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    sim.latency = 0.2
    t0 = time.monotonic()
    assert get(sim, "t1").status_code == 200
    assert time.monotonic() - t0 >= 0.2
    sim.latency = 0.0
    sim.script("t1", Reply(latency=0.2))
    t0 = time.monotonic()
    assert get(sim, "t1").status_code == 200
    assert time.monotonic() - t0 >= 0.2
    t0 = time.monotonic()
    assert get(sim, "t1").status_code == 200
    assert time.monotonic() - t0 < 0.2


def test_client_timeout_on_slow_answer(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    sim.behave("t1", Reply(latency=30))
    with pytest.raises(requests.Timeout):
        requests.get(sim.task_url("t1"), headers=AUTH, timeout=0.2)
    assert sim.count("t1", 200) == 1  # recorded with the status it was going to answer


def test_stop_returns_promptly_while_request_sleeps() -> None:
    sim = Simulator(latency=60).start()
    sim.add_task("t1", 1)
    idle = requests.Session()
    sim.latency = 0
    assert get(sim, "t1", session=idle).status_code == 200  # an idle keep-alive connection
    sim.latency = 60
    thread, out = in_thread(lambda: get(sim, "t1"))
    assert sim.wait_for(lambda s: s.in_flight == 1, timeout=5)
    t0 = time.monotonic()
    sim.stop()
    assert time.monotonic() - t0 < 1.0
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), requests.ConnectionError)
    with pytest.raises(requests.ConnectionError):
        requests.get(sim.task_url("t1"), headers=AUTH, timeout=2)
    sim.stop()  # idempotent
    idle.close()


def test_max_in_flight() -> None:
    with Simulator() as sim:
        sim.add_task("t1", 1)
        sim.behave("t1", Reply(latency=60))
        threads = [in_thread(lambda: get(sim, "t1"))[0] for _ in range(5)]
        assert sim.wait_for(lambda s: s.in_flight == 5, timeout=5)
        assert sim.max_in_flight == 5
        sim.behave("t1", None)
        sim.reset_records()
        assert sim.max_in_flight == 5  # still in flight
        assert sim.requests == []
    for t in threads:
        t.join(timeout=5)
        assert not t.is_alive()
    assert sim.in_flight == 0


def test_wait_for_times_out() -> None:
    with Simulator() as sim:
        t0 = time.monotonic()
        assert not sim.wait_for(lambda s: s.count() > 0, timeout=0.2)
        assert time.monotonic() - t0 >= 0.2


def test_keep_alive() -> None:
    with Simulator() as sim:
        sim.add_task("t1", 1)
        conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
        try:
            for _ in range(3):
                conn.request("GET", "/openapi/2022-01/file/task/t1", headers=AUTH)
                resp = conn.getresponse()
                assert resp.status == 200
                assert resp.read()
                assert resp.getheader("Connection") != "close"
            conn.request("GET", "/openapi/2022-01/file/task/t1", headers={"access-token": "x"})
            resp = conn.getresponse()
            assert resp.status == 401
            resp.read()
            sock = conn.sock
            assert sock is not None
            conn.request("GET", "/openapi/2022-01/file/task/t1", headers=AUTH)
            assert conn.getresponse().status == 200
            assert conn.sock is sock  # the same connection throughout
        finally:
            conn.close()


# -- big bodies -----------------------------------------------------------------------

BIG = 11 * 1024 * 1024


@pytest.mark.parametrize("chunked", [False, True])
def test_big_body_streamed(sim: Simulator, chunked: bool) -> None:
    sim.add_task("t1", 1)
    sim.script("t1", Reply(body_size=BIG, chunked=chunked))
    with requests.get(sim.task_url("t1"), headers=AUTH, stream=True, timeout=10) as r:
        assert r.status_code == 200
        if chunked:
            assert "Content-Length" not in r.headers
            assert r.headers["Transfer-Encoding"] == "chunked"
        else:
            assert int(r.headers["Content-Length"]) == BIG
        received = 0
        first = b""
        for chunk in r.iter_content(256 * 1024):
            first = first or chunk
            received += len(chunk)
    assert received == BIG > 10 * 1024 * 1024
    assert first.startswith(b'{"pad": "xxx')
    assert get(sim, "t1").json()["task_id"] == "t1"  # normal again


def test_big_body_client_disconnects(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    sim.behave("t1", Reply(body_size=64 * 1024 * 1024))
    for _ in range(3):
        with requests.get(sim.task_url("t1"), headers=AUTH, stream=True, timeout=5) as r:
            assert len(r.raw.read(128 * 1024)) == 128 * 1024
        # closing the response mid-body drops the connection
    assert sim.wait_for(lambda s: s.in_flight == 0, timeout=5)
    sim.behave("t1", None)
    assert get(sim, "t1").status_code == 200


def test_http10_client_gets_close_delimited_body(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    sim.script("t1", Reply(body=b'{"a": 1}', chunked=True))
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(
            b"GET /openapi/2022-01/file/task/t1 HTTP/1.0\r\naccess-token: sim-token\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length" not in head.lower()
    assert body == b'{"a": 1}'


# -- rate limiting --------------------------------------------------------------------


def test_leaky_bucket() -> None:
    clock = FakeClock()
    with Simulator(rate_limit=2.0, bucket_capacity=3, retry_after="1", clock=clock) as sim:
        sim.add_task("t1", 1)
        with requests.Session() as s:
            assert [get(sim, "t1", session=s).status_code for _ in range(5)] == [
                200,
                200,
                200,
                429,
                429,
            ]
            r = get(sim, "t1", session=s)
            assert r.status_code == 429
            assert r.headers["Retry-After"] == "1"
            assert r.json() == {"errors": ["Too Many Requests"]}
            assert sim.throttled == 3
            clock.advance(0.5)  # one request leaks out
            assert get(sim, "t1", session=s).status_code == 200
            assert get(sim, "t1", session=s).status_code == 429
            clock.advance(10)  # empty again: full capacity
            assert [get(sim, "t1", session=s).status_code for _ in range(4)] == [
                200,
                200,
                200,
                429,
            ]
            assert sim.throttled == 5
            assert sim.count(status=429) == 5
            # the bucket counts before scripted replies and auth
            sim.script("t1", Reply(status=500))
            assert get(sim, "t1", session=s, token="bad").status_code == 429
            clock.advance(0.5)
            assert get(sim, "t1", session=s, token="bad").status_code == 500
            sim.reset_records()
            assert (sim.throttled, sim.count()) == (0, 0)


def test_bucket_without_retry_after_and_unlimited() -> None:
    clock = FakeClock()
    with Simulator(rate_limit=1.0, bucket_capacity=1, clock=clock) as sim:
        assert get(sim, "x").status_code == 404
        r = get(sim, "x")
        assert r.status_code == 429
        assert "Retry-After" not in r.headers
    with Simulator() as sim:
        sim.add_task("t1", 1)
        with requests.Session() as s:
            assert all(get(sim, "t1", session=s).status_code == 200 for _ in range(30))
        assert sim.throttled == 0


# -- recording ------------------------------------------------------------------------


def test_recorded_request_fields(sim: Simulator) -> None:
    sim.add_task("t1", 1)
    before = time.monotonic()
    requests.get(
        sim.task_url("t1"),
        headers={**AUTH, "User-Agent": "shoplazza-upload-exporter/0.1.0"},
        timeout=5,
    )
    (req,) = sim.requests
    assert isinstance(req, RecordedRequest)
    assert req.method == "GET"
    assert req.path == "/openapi/2022-01/file/task/t1"
    assert req.task_id == "t1"
    assert req.token == TOKEN
    assert req.status == 200
    assert req.headers["User-Agent"] == "shoplazza-upload-exporter/0.1.0"
    assert before <= req.at <= time.monotonic()
    with pytest.raises(AttributeError):
        req.status = 500  # type: ignore[misc]
    copy = sim.requests
    copy.clear()
    assert sim.count() == 1


# -- demo -----------------------------------------------------------------------------


def test_demo_tasks_progress_with_clock() -> None:
    clock = FakeClock()
    with Simulator(tokens=[DEMO_TOKEN], clock=clock) as sim:
        ids = add_demo_tasks(sim)
        assert ids == [
            "demo-catalogue-complete",
            "demo-images-stuck",
            "demo-variants-failing",
            DEMO_MISSING_TASK,
        ]
        with requests.Session() as s:

            def body(task_id: str) -> dict[str, Any]:
                r = get(sim, task_id, token=DEMO_TOKEN, session=s)
                assert r.status_code == 200
                data: dict[str, Any] = r.json()
                return data

            done = body("demo-catalogue-complete")
            assert (done["total"], done["finished"], done["status"]) == (6, 0, 1)
            clock.advance(1.0)
            done = body("demo-catalogue-complete")
            assert (done["finished"], done["status"], len(done["success_list"])) == (2, 1, 2)
            clock.advance(2.0)
            done = body("demo-catalogue-complete")
            assert (done["finished"], done["status"], len(done["success_list"])) == (6, 0, 6)
            assert len(done["origin_list"]) == 6
            item = done["success_list"][0]
            assert set(item) == {"file_uri", "origin_link", "upload_link"}

            stuck = body("demo-images-stuck")
            assert (stuck["total"], stuck["finished"], stuck["status"]) == (10, 4, 1)
            assert len(stuck["success_list"]) == 4

            failing = body("demo-variants-failing")  # 3 s in: 6 files finished
            assert (failing["total"], failing["finished"], failing["status"]) == (40, 6, 1)
            assert len(failing["failure_list"]) == 2
            assert len(failing["success_list"]) == 4
            failure = failing["failure_list"][0]
            assert failure["origin_link"].startswith("https://")
            assert failure["reason"] == "download timeout"
            clock.advance(3.0)
            failing = body("demo-variants-failing")
            assert (failing["finished"], len(failing["failure_list"])) == (12, 4)
            clock.advance(60)
            failing = body("demo-variants-failing")
            assert (failing["finished"], failing["status"]) == (40, 0)
            assert len(failing["failure_list"]) == 13
            assert len(failing["success_list"]) == 27

            stuck = body("demo-images-stuck")
            assert (stuck["finished"], stuck["status"]) == (4, 1)
            done = body("demo-catalogue-complete")
            assert (done["finished"], done["status"]) == (6, 0)

            r = get(sim, DEMO_MISSING_TASK, token=DEMO_TOKEN, session=s)
            assert r.status_code == 404


def test_demo_follows_real_clock_by_default() -> None:
    with Simulator(tokens=[DEMO_TOKEN]) as sim:
        add_demo_tasks(sim)
        with requests.Session() as s:

            def finished() -> int:
                r = get(sim, "demo-catalogue-complete", token=DEMO_TOKEN, session=s)
                value: int = r.json()["finished"]
                return value

            assert finished() == 0
            # one file every 0.5 s: poll the server until it shows, with a deadline
            deadline = time.monotonic() + 3
            pause = threading.Event()
            while finished() == 0 and time.monotonic() < deadline:
                pause.wait(0.05)
            assert finished() >= 1
        assert 0.5 <= sim.elapsed() < 3


def test_progress_callback_error_is_500(sim: Simulator) -> None:
    def broken(task: Any, elapsed: float) -> None:
        raise RuntimeError("oops")

    sim.add_task("t1", 1, progress=broken)
    assert get(sim, "t1").status_code == 500
    assert get(sim, "t1").status_code == 500


# -- command line ---------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_main_standalone(sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.demo", "--demo", "--tasks", "3", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.strip().rsplit(" ", 1)[-1]
        headers = {"access-token": DEMO_TOKEN}
        r = requests.get(f"{url}/openapi/2022-01/file/task/task-2", headers=headers, timeout=5)
        assert (r.status_code, r.json()["finished"], r.json()["status"]) == (200, 2, 1)
        r = requests.get(
            f"{url}/openapi/2022-01/file/task/demo-images-stuck", headers=headers, timeout=5
        )
        assert r.json()["finished"] == 4
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            assert "Traceback" not in proc.stderr.read()
            proc.stderr.close()


@pytest.mark.parametrize("size", [0, 5, 11, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 9, 200_003])
@pytest.mark.parametrize("chunked", [False, True])
def test_body_size_exact(sim: Simulator, size: int, chunked: bool) -> None:
    sim.script("t1", Reply(body_size=size, chunked=chunked))
    r = get(sim, "t1")
    assert len(r.content) == size
    if size >= 11:
        assert r.json()["pad"] == "x" * (size - 11)
    else:
        assert r.content == b"x" * size


def test_max_records_keeps_newest_but_counts_all() -> None:
    with Simulator(max_records=3) as sim, requests.Session() as s:
        for i in range(5):
            get(sim, f"t{i}", session=s)
        assert [r.task_id for r in sim.requests] == ["t2", "t3", "t4"]
        assert sim.count() == 5
        assert sim.count(status=404) == 5
        assert sim.count("t0") == 1


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sim = Simulator("::1").start()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with sim:
        sim.add_task("t1", 1)
        assert sim.url.startswith("http://[::1]:")
        assert get(sim, "t1").status_code == 200
