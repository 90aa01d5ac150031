"""``shoplazza-upload-task`` as a subprocess against real exporter processes
(docs/task-api.md), one exporter and a three-shard fleet; and the exporter's process-level
promises: registrations survive SIGKILL, concurrent PUTs lose and duplicate nothing."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from exporter.sharding import owner
from tests.helpers import ExporterProcess, store_yaml, write

pytestmark = pytest.mark.timeout(120)


def client_command() -> list[str]:
    script = Path(sys.executable).parent / "shoplazza-upload-task"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter.taskclient"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*client_command(), *args], capture_output=True, text=True, timeout=timeout
    )


def start(tmp: Path, config: str, *extra: str) -> ExporterProcess:
    proc = ExporterProcess(["--config.file", config, "--web.enable-task-api", *extra], tmp)
    proc.wait_ready()
    return proc


@pytest.fixture
def exporter(tmp_path: Path, sim: Any) -> Iterator[ExporterProcess]:
    text = f"state_file: {tmp_path / 'state.json'}\nstores:\n" + store_yaml(
        "shop", sim.url, ["c1"], min_poll_interval="200ms"
    )
    proc = start(tmp_path, write(tmp_path / "config.yaml", text))
    yield proc
    proc.stop()


def test_add_get_wait_remove(exporter: ExporterProcess, sim: Any) -> None:
    sim.add_task("t1", total=2, finished=2, status=0)
    sim.add_task("t2", total=2, finished=2, status=0)
    url = ["--url", exporter.url]
    added = run(*url, "add", "shop", "t1", "t2", "--label", "importer=nightly")
    assert added.returncode == 0, added.stderr
    got = run(*url, "get", "shop", "t1")
    assert got.returncode == 0 and json.loads(got.stdout)["labels"] == {"importer": "nightly"}
    waited = run(*url, "wait", "shop", "t1", "t2", "--timeout", "30s")
    assert waited.returncode == 0, waited.stderr
    assert "2/2 tasks completed" in waited.stdout
    removed = run(*url, "remove", "shop", "t1")
    assert removed.returncode == 0
    assert run(*url, "get", "shop", "t1").returncode == 3


def test_exit_statuses(exporter: ExporterProcess, sim: Any, tmp_path: Path) -> None:
    failures = [{"origin_link": "https://x/a.jpg", "reason": "too large"}]
    sim.add_task("bad", total=2, finished=2, status=0, failure_list=failures)
    sim.add_task("slow", total=2, finished=1)
    url = ["--url", exporter.url]
    assert run(*url, "add", "shop", "bad", "slow").returncode == 0
    assert run(*url, "wait", "shop", "bad", "--timeout", "30s").returncode == 1
    timed_out = run(*url, "wait", "shop", "slow", "--timeout", "1s")
    assert timed_out.returncode == 1 and "timed out" in timed_out.stderr
    refused = run(*url, "add", "shop", "not/valid")
    assert refused.returncode == 3
    assert refused.stderr.count("\n") == 1 and "error:" in refused.stderr
    assert run(*url, "remove", "shop", "c1").returncode == 3  # 409: configured
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    closed = f"http://127.0.0.1:{port.getsockname()[1]}"
    port.close()
    unreachable = run("--url", closed, "get", "shop", "t1")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr
    assert run(*url, "add", "shop", "x", "--label", "novalue").returncode == 2
    assert run("--url", "http://h:{shard}", "get", "shop", "x").returncode == 2
    assert run(*url, "frobnicate").returncode == 2
    password = tmp_path / "password"
    password.write_text("hunter2-not-shown\n")
    auth = run(
        *url,
        "--basic-auth-user",
        "u",
        "--basic-auth-password-file",
        str(password),
        "get",
        "shop",
        "nope",
    )
    assert auth.returncode == 3 and "hunter2" not in auth.stderr + auth.stdout


def consecutive_ports() -> int:
    """A port ending in 0 whose next two ports are free too."""
    for base in range(23000, 60000, 10):
        try:
            for i in range(3):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports")


def test_three_shards(tmp_path: Path, sim: Any) -> None:
    stores = [f"s{i}" for i in range(12)]
    text = "stores:\n" + "".join(store_yaml(s, sim.url, min_poll_interval="200ms") for s in stores)
    config = write(tmp_path / "config.yaml", text)
    base = consecutive_ports()
    procs = []
    try:
        for shard in range(3):
            state = f"state_file: {tmp_path / f'state{shard}.json'}\n"
            shard_config = write(tmp_path / f"c{shard}.yaml", state + text)
            proc = ExporterProcess(
                [
                    "--config.file",
                    shard_config,
                    "--web.enable-task-api",
                    "--shard",
                    str(shard),
                    "--total-shards",
                    "3",
                    "--web.listen-address",
                    f"127.0.0.1:{base + shard}",
                ],
                tmp_path,
            )
            proc.port, proc.url = base + shard, f"http://127.0.0.1:{base + shard}"
            procs.append(proc)
        for proc in procs:
            proc.wait_ready()
        del config
        template = f"http://127.0.0.1:{base // 10}{{shard}}"
        for store in stores:
            sim.add_task(f"{store}-t", total=1, finished=1, status=0)
            added = run("--url", template, "--total-shards", "3", "add", store, f"{store}-t")
            assert added.returncode == 0, added.stderr
        # a wrong shard count: the 421 names the owner, the client follows it once
        moved = next(s for s in stores if owner(s, 2) != owner(s, 3))
        again = run("--url", template, "--total-shards", "2", "get", moved, f"{moved}-t")
        assert again.returncode == 0, again.stderr
        # a plain URL of the wrong shard: one line naming the owner, exit 3
        wrong = next(s for s in stores if owner(s, 3) != 0)
        plain = run("--url", procs[0].url, "add", wrong, "x1")
        assert plain.returncode == 3 and f"shard {owner(wrong, 3)}" in plain.stderr
        seen: dict[str, int] = {}
        for shard, proc in enumerate(procs):
            for task in proc.get("/api/v1/tasks").json()["tasks"]:
                assert owner(task["store"], 3) == shard
                seen[task["task_id"]] = seen.get(task["task_id"], 0) + 1
        assert seen == {f"{s}-t": 1 for s in stores}  # each on its owner, once
        waited = [
            run("--url", template, "--total-shards", "3", "wait", s, f"{s}-t", "--timeout", "30s")
            for s in stores[:3]
        ]
        assert [w.returncode for w in waited] == [0, 0, 0]
    finally:
        for proc in procs:
            proc.stop()


def test_registrations_survive_sigkill(exporter: ExporterProcess, tmp_path: Path) -> None:
    config = str(tmp_path / "config.yaml")
    session = requests.Session()
    for i in range(200):
        answer = session.put(f"{exporter.url}/api/v1/stores/shop/tasks/k{i}", timeout=10)
        assert answer.status_code == 201
    exporter.stop(signal.SIGKILL)  # right after the last answer
    again = start(tmp_path, config)
    try:
        tasks = again.get("/api/v1/tasks").json()["tasks"]
        registered = {t["task_id"] for t in tasks if t["source"] == "api"}
        assert registered == {f"k{i}" for i in range(200)}
    finally:
        again.stop()


def test_concurrent_puts_lose_and_duplicate_nothing(exporter: ExporterProcess) -> None:
    """1,000 PUTs from 50 clients over 500 ids (each id twice, by different clients)."""

    def client(n: int) -> list[tuple[str, int]]:
        session = requests.Session()
        results = []
        for j in range(20):
            task_id = f"p{(n * 20 + j) % 500}" if n < 25 else f"p{((n - 25) * 20 + j) % 500}"
            answer = session.put(f"{exporter.url}/api/v1/stores/shop/tasks/{task_id}", timeout=60)
            results.append((task_id, answer.status_code))
        return results

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        outcomes = [r for rs in pool.map(client, range(50)) for r in rs]
    assert len(outcomes) == 1000
    created = [t for t, code in outcomes if code == 201]
    updated = [t for t, code in outcomes if code == 200]
    assert sorted(created) == sorted({f"p{i}" for i in range(500)})  # one 201 per id
    assert len(updated) == 500
    tasks = exporter.get("/api/v1/tasks").json()["tasks"]
    ids = [t["task_id"] for t in tasks if t["source"] == "api"]
    assert sorted(ids) == sorted(f"p{i}" for i in range(500))


def test_the_readme_quick_start_registers_a_task(tmp_path: Path) -> None:
    from tests.helpers import ROOT, wait_until

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [line] = [x for x in readme.splitlines() if x.startswith(".venv/bin/shoplazza-upload-task")]
    demo = ExporterProcess(["--demo"], tmp_path)
    try:
        demo.wait_ready()
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "SHOPLAZZA_UPLOAD_TASK_URL": demo.url}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        command = line.replace(".venv/bin/", "", 1)  # the venv of this test run
        done = subprocess.run(
            command, shell=True, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr

        def completed() -> bool:  # /api/v1/tasks refreshes due tasks, like a scrape
            tasks = demo.get("/api/v1/tasks").json()["tasks"]
            task = {t["task_id"]: t for t in tasks}["demo-import-42"]
            return bool(task["source"] == "api" and task["state"] == "completed")

        wait_until(completed, timeout=20, interval=0.5)
        assert "demo-import-42" in demo.get("/").text
    finally:
        demo.stop()


def test_tls_client_certificate_and_basic_auth(
    tmp_path: Path, sim: Any, tls_dir: Path, ca: Any
) -> None:
    """--ca-file, --cert-file/--key-file and basic auth against a real TLS exporter that
    requires all of them; credentials in the URL are basic auth too, never printed."""
    import bcrypt

    client = ca.issue_cert("importer@example.com")
    client.cert_chain_pems[0].write_to_path(str(tls_dir / "client.pem"))
    client.private_key_pem.write_to_path(str(tls_dir / "client-key.pem"))
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    web = write(
        tmp_path / "web.yml",
        "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
        f"basic_auth_users:\n  importer: {hashed}\n",
    )
    sim.add_task("t1", total=2, finished=2, status=0)
    config = write(tmp_path / "config.yaml", "stores:\n" + store_yaml("shop", sim.url, ["c1"]))
    proc = ExporterProcess(
        ["--config.file", config, "--web.enable-task-api", "--web.config.file", web], tmp_path
    )
    try:
        url = f"https://127.0.0.1:{proc.port}"
        password = write(tmp_path / "password", "s3cret\n")
        certs = ["--ca-file", str(tls_dir / "ca.pem")]
        certs += ["--cert-file", str(tls_dir / "client.pem")]
        certs += ["--key-file", str(tls_dir / "client-key.pem")]
        auth = ["--basic-auth-user", "importer", "--basic-auth-password-file", password]

        def served() -> bool:
            assert proc.proc.poll() is None, proc.log()
            return run("--url", url, *certs, *auth, "get", "shop", "c1").returncode == 0

        from tests.helpers import wait_until

        wait_until(served, 15)
        added = run("--url", url, *certs, *auth, "add", "shop", "t1")
        assert added.returncode == 0, added.stderr
        inline = f"https://importer:s3cret@127.0.0.1:{proc.port}"
        got = run("--url", inline, *certs, "get", "shop", "t1")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["source"] == "api"
        untrusted = run("--url", url, *auth, "get", "shop", "t1")  # certifi's bundle
        assert untrusted.returncode == 3 and "TLS error" in untrusted.stderr
        no_cert = run("--url", url, *certs[:2], *auth, "get", "shop", "t1")
        assert no_cert.returncode == 3, no_cert.stderr
        no_password = run("--url", url, *certs, "get", "shop", "t1")
        assert no_password.returncode == 3 and "unauthorized" in no_password.stderr
        wrong = run("--url", inline.replace("s3cret", "wrong"), *certs, "get", "shop", "t1")
        assert wrong.returncode == 3 and "wrong" not in wrong.stderr + wrong.stdout
    finally:
        proc.stop()


def test_a_redirect_is_not_followed(tmp_path: Path) -> None:
    """Only a 421 leads to a second request (the owner shard); a 3xx is an answer."""
    import http.server
    import threading

    seen: list[str] = []

    class Redirects(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        answer = run("--url", url, "get", "shop", "t1")
        assert answer.returncode == 3 and "302" in answer.stderr
        assert seen == ["/api/v1/stores/shop/tasks/t1"]
    finally:
        server.shutdown()
        server.server_close()
