"""The web flags end to end, with the real programs: the exporter as a subprocess, several
listeners, systemd's sockets through ``systemd-socket-activate`` and serving under a
sub-path behind nginx (scripts/test.sh installs both; docs/web.md)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import bcrypt
import pytest
import requests

from exporter.demo.simulator import Simulator
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    ExporterProcess,
    config_yaml,
    exporter_command,
    free_port,
    wait_until,
    write,
)

PASSWORD = "prometheus-password"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def program(name: str) -> str:
    """An external program the test command installs; its absence is a failure, not a skip."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/test.sh installs it)")
    return found


@pytest.fixture
def config(sim: Simulator, tmp_path: Path) -> str:
    sim.add_task("t1", total=4, finished=1)
    return write(tmp_path / "config.yaml", config_yaml(sim.url, ["t1"]))


def _exposed_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_listen_addresses_telemetry_path_and_no_exporter_metrics(
    config: str, tmp_path: Path
) -> None:
    second = free_port()
    exporter = ExporterProcess(
        [
            "--config.file",
            config,
            "--web.listen-address",
            f"127.0.0.1:{second}",  # a second time: both listen, not only the last
            "--web.telemetry-path",
            "/internal/metrics",
            "--web.disable-exporter-metrics",
        ],
        tmp_path,
    )
    try:
        exporter.wait_ready()
        for url in (exporter.url, f"http://127.0.0.1:{second}"):
            response = requests.get(url + "/internal/metrics", timeout=15)
            assert response.status_code == 200, url
            names = _exposed_names(response.text)
            assert "shoplazza_exporter_build_info" in names
            assert not {n for n in names if n.startswith(("process_", "python_"))}, names
            assert requests.get(url + "/metrics", timeout=15).status_code == 404
        assert "href='./internal/metrics'" in exporter.get("/").text
    finally:
        assert exporter.stop() == 0
    listening = re.findall(r'msg=listening .*address="?([0-9.:]+)', exporter.log())
    assert listening == [f"127.0.0.1:{exporter.port}", f"127.0.0.1:{second}"], exporter.log()


def test_exporter_metrics_are_on_by_default(config: str, tmp_path: Path) -> None:
    exporter = ExporterProcess(["--config.file", config], tmp_path)
    try:
        exporter.wait_ready()
        names = _exposed_names(exporter.get("/metrics").text)
        assert "process_cpu_seconds_total" in names
        assert "python_info" in names
    finally:
        exporter.stop()


def test_systemd_socket_activation(config: str, tmp_path: Path) -> None:
    """systemd-socket-activate listens, starts the exporter at the first connection and
    passes both sockets (LISTEN_FDS=2); the exporter serves on them, binding nothing."""
    activate = program("systemd-socket-activate")
    ports = [free_port(), free_port()]
    log_path = tmp_path / "activate.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                activate,
                *(f"--listen=127.0.0.1:{port}" for port in ports),
                f"--setenv={TOKEN_ENV}",  # it passes on only the variables it is told
                "--",
                *exporter_command(),
                "--web.systemd-socket",
                "--web.listen-address=127.0.0.1:1",  # ignored with systemd's sockets
                "--config.file",
                config,
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, TOKEN_ENV: TOKEN},
        )
    try:
        wait_until(lambda: log_path.read_text().count("Listening on") == 2, timeout=10)
        # The first connection starts the exporter; it waits in the socket's queue.
        for port in ports:
            response = requests.get(f"http://127.0.0.1:{port}/-/healthy", timeout=30)
            assert response.text == "OK\n"
        response = requests.get(f"http://127.0.0.1:{ports[1]}/metrics", timeout=30)
        assert "shoplazza_upload_task_files{" in response.text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    log_text = log_path.read_text()
    assert code == 0, log_text
    assert "Execing " in log_text  # the exporter ran as the activated process
    assert "LISTEN_FDS" not in log_text


def test_systemd_socket_without_sockets_is_a_clear_error(config: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    result = subprocess.run(
        [*exporter_command(), "--web.systemd-socket", "--config.file", config],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, TOKEN_ENV: TOKEN},
    )
    assert result.returncode == 1
    assert "no sockets passed by systemd (LISTEN_FDS is not set)" in result.stderr
    assert "Traceback" not in result.stderr


# -- behind a reverse proxy ---------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/client_body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    # The path stays: the exporter runs with --web.external-url .../exporter/.
    location /exporter {{ proxy_pass http://127.0.0.1:{keeps}; proxy_redirect off; }}
    # The path is stripped: --web.external-url .../stripped/ --web.route-prefix /.
    location /stripped/ {{ proxy_pass http://127.0.0.1:{strips}/; proxy_redirect off; }}
  }}
}}
"""


@pytest.fixture
def proxied(config: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, ExporterProcess]]]:
    """nginx in front of two exporters, one per way of mapping a sub-path."""
    nginx = program("nginx")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    exporters: dict[str, ExporterProcess] = {}
    web: dict[str, list[str]] = {
        "exporter": ["/exporter/-/healthy", "/exporter/-/ready"],
        "stripped": ["/-/healthy", "/-/ready"],  # paths as the exporter receives them
    }
    nginx_proc: subprocess.Popen[bytes] | None = None
    try:
        for name, route in (("exporter", []), ("stripped", ["--web.route-prefix", "/"])):
            web_file = write(
                tmp_path / f"web-{name}.yml",
                f"basic_auth_users: {{prometheus: '{HASH}'}}\n"
                f"auth_excluded_paths: [{', '.join(web[name])}]\n",
            )
            exporters[name] = ExporterProcess(
                [
                    "--config.file",
                    config,
                    "--web.config.file",
                    web_file,
                    "--web.external-url",
                    f"{base}/{name}/",
                    *route,
                ],
                tmp_path,
            )
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp_path,
                port=port,
                keeps=exporters["exporter"].port,
                strips=exporters["stripped"].port,
            )
        )
        nginx_proc = subprocess.Popen(
            [nginx, "-e", str(tmp_path / "nginx-error.log"), "-p", str(tmp_path), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            assert nginx_proc is not None and nginx_proc.poll() is None, (
                tmp_path / "nginx-error.log"
            ).read_text()
            try:
                requests.get(base + "/", timeout=1)
            except requests.ConnectionError:
                return False
            return all(
                requests.get(f"{base}/{name}/-/ready", timeout=1).status_code == 200
                for name in exporters
            )

        wait_until(up, timeout=20)
        yield base, exporters
    finally:
        if nginx_proc is not None:
            nginx_proc.terminate()
            nginx_proc.wait(timeout=10)
        for exporter in exporters.values():
            exporter.stop()


@pytest.mark.parametrize("name", ["exporter", "stripped"])
def test_pages_links_redirects_and_probes_behind_a_reverse_proxy(
    proxied: tuple[str, dict[str, ExporterProcess]], name: str
) -> None:
    base, _ = proxied
    auth = ("prometheus", PASSWORD)
    # The probes answer without credentials (auth_excluded_paths), under the prefix.
    for probe in ("/-/healthy", "/-/ready"):
        assert requests.get(f"{base}/{name}{probe}", timeout=15).status_code == 200
    assert requests.get(f"{base}/{name}/metrics", timeout=15).status_code == 401

    # The sub-path without its slash lands on the landing page (a redirect under the
    # external path: from the exporter with the path kept, from nginx when stripped).
    landing = requests.get(f"{base}/{name}", auth=auth, timeout=15)
    assert landing.status_code == 200
    assert landing.url == f"{base}/{name}/"
    assert landing.history and landing.history[0].headers["Location"] in (
        f"/{name}/",
        f"{base}/{name}/",
    )

    # Every link of the page works through the proxy.
    links = re.findall(r"href='([^']+)'", landing.text)
    assert {"./metrics", "api/v1/tasks", "-/healthy"} <= set(links), links
    for link in links:
        url = urljoin(landing.url, link)
        assert url.startswith(f"{base}/{name}/"), url
        assert requests.get(url, auth=auth, timeout=15).status_code == 200, url
    metrics = requests.get(f"{base}/{name}/metrics", auth=auth, timeout=15).text
    assert "shoplazza_upload_task_files{" in metrics
    tasks = requests.get(f"{base}/{name}/api/v1/tasks", auth=auth, timeout=15).json()
    assert tasks


def test_the_exporter_redirects_its_root_to_the_prefix(
    proxied: tuple[str, dict[str, ExporterProcess]],
) -> None:
    _, exporters = proxied
    direct = exporters["exporter"]  # the route prefix is /exporter: / is not a page
    answer = requests.get(
        direct.url + "/", auth=("prometheus", PASSWORD), timeout=15, allow_redirects=False
    )
    assert (answer.status_code, answer.headers["Location"]) == (302, "/exporter/")
    assert requests.get(direct.url + "/metrics", timeout=15).status_code in (401, 404)
    assert requests.get(direct.url + "/exporter/-/healthy", timeout=15).status_code == 200
