"""Command line: flags, logging, wiring, signals (README "Running it")."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Sequence
from contextlib import ExitStack
from types import FrameType

from exporter import __version__
from exporter.app import Exporter
from exporter.config import ConfigError, load_config
from exporter.config.watch import StoreFiles
from exporter.errors import LoadError
from exporter.logs import LEVELS, setup_logging
from exporter.runtime import (
    limit_malloc_arenas,
    raise_open_files_limit,
    return_large_buffers_to_the_system,
)
from exporter.sharding import Shard
from exporter.web.routes import App
from exporter.web.server import ExporterServer
from exporter.web.webconfig import WebConfigError, load_web_config

log = logging.getLogger("exporter")

PROGRAM = "shoplazza-upload-exporter"
DEFAULT_LISTEN = ":9877"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, Prometheus style (README "Running it")."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Prometheus exporter for Shoplazza upload-file tasks."
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="configuration file (default: config.yaml)",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULT_LISTEN,
        metavar="[HOST]:PORT",
        help=f"address to listen on (default: {DEFAULT_LISTEN})",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="exporter-toolkit web configuration file: TLS and basic auth",
    )
    add(
        "--web.dashboard-url",
        dest="dashboard_url",
        default=None,
        metavar="URL",
        help="Grafana dashboard the pages link each task to; {store} and {task_id} in it are "
        "replaced, else var-store and var-task_id are added to its query",
    )
    add(
        "--log.level",
        dest="log_level",
        default="info",
        choices=list(LEVELS),
        help="minimum level of logged events (default: info)",
    )
    add(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log line format (default: logfmt)",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration (token files included) and exit",
    )
    add(
        "--shard",
        dest="shard",
        type=int,
        default=0,
        metavar="N",
        help="the shard this process serves, 0 <= N < M (default: 0)",
    )
    add(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        metavar="M",
        help="processes the stores are spread over by rendezvous hashing (default: 1)",
    )
    add(
        "--demo",
        action="store_true",
        help="run against an embedded Shoplazza API simulator; needs no configuration",
    )
    add("--version", action="version", version=f"{PROGRAM}, version {__version__}")
    return parser


def _is_web_url(text: str) -> bool:
    parts = urllib.parse.urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and text.isprintable()


def link_web_config_health(exporter: Exporter, server: ExporterServer) -> None:
    """Let the exporter report whether the last (re)load of the web configuration worked."""
    watcher = server.web_config
    if watcher is not None:
        exporter.web_config_status = lambda: watcher.last_reload_successful


def _print_errors(errors: Sequence[str]) -> None:
    for line in errors:
        print(line, file=sys.stderr)


def check_config(path: str, web_config_file: str | None) -> int:
    """``--config.check``: 0 when the configuration, its store files and web config are valid."""
    try:
        config = load_config(path)
        if web_config_file:
            load_web_config(web_config_file)
    except LoadError as exc:
        _print_errors(exc.errors)
        return 1
    files = StoreFiles(config, clock=time.monotonic, quiet=True)
    files.refresh(force=True)
    _print_errors((*config.warnings, *files.warnings))
    if files.errors:
        _print_errors(files.errors)
        return 1
    stores = (*config.stores, *files.stores)
    tasks = sum(len(store.task_ids) for store in stores)
    print(f"{path}: configuration is valid: {len(stores)} stores, {tasks} task ids listed")
    return 0


def _demo_config(directory: str, base_url: str, token: str, task_ids: Sequence[str]) -> str:
    token_file = os.path.join(directory, "token")
    with open(token_file, "w", encoding="utf-8") as fh:
        fh.write(token)
    path = os.path.join(directory, "config.yaml")
    ids = "".join(
        f"      - {{id: {task_id}, labels: {{source: {task_id.removeprefix('demo-')}.csv}}}}\n"
        for task_id in task_ids
    )
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(
            "# Written by --demo: the exporter watching the embedded simulator.\n"
            "stores:\n"
            "  - name: demo\n"
            f"    base_url: {base_url}\n"
            f"    access_token_file: {token_file}\n"
            "    min_poll_interval: 1s\n"
            "    timeout: 2s\n"
            "    stuck_after: 5s  # the demo's stuck task turns amber quickly\n"
            "    task_ids:\n" + ids
        )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dashboard_url is not None and not _is_web_url(args.dashboard_url):
        parser.error(f"--web.dashboard-url {args.dashboard_url!r}: want an http:// or https:// URL")
    if not 0 <= args.shard < args.total_shards:
        parser.error(  # exits 2, like every usage error
            f"--shard {args.shard} --total-shards {args.total_shards}: want 0 <= N < M"
        )
    setup_logging(args.log_level, args.log_format)
    if args.config_check:
        return check_config(args.config_file, args.web_config_file)
    # Before any thread starts or any file is parsed (docs/design.md, "Exposition").
    return_large_buffers_to_the_system()
    limit_malloc_arenas()
    # Handlers first: a SIGTERM or SIGHUP during start-up must not kill the process
    # with the default action; it is acted on once the server runs.
    signals = _Signals()
    signal.signal(signal.SIGTERM, signals.on_stop)
    signal.signal(signal.SIGINT, signals.on_stop)
    signal.signal(signal.SIGHUP, signals.on_hup)
    with ExitStack() as stack:
        config_file = args.config_file
        if args.demo:
            from exporter.demo.simulator import Simulator
            from exporter.demo.tasks import DEMO_TOKEN, add_demo_tasks

            sim = Simulator(tokens=(DEMO_TOKEN,)).start()
            stack.callback(sim.stop)
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="sue-demo-"))
            config_file = _demo_config(directory, sim.url, DEMO_TOKEN, add_demo_tasks(sim))
            log.info("demo simulator started", extra={"url": sim.url})
        return _serve(args, config_file, stack, signals)


def _serve(args: argparse.Namespace, config_file: str, stack: ExitStack, signals: _Signals) -> int:
    exporter = Exporter(config_file, shard=Shard(args.shard, args.total_shards))
    try:
        exporter.start()
    except ConfigError as exc:
        _print_errors(exc.errors)
        return 1
    stack.callback(exporter.close)
    raise_open_files_limit()  # before the server sizes its connection limit from it
    try:
        app = App(exporter, dashboard_url=args.dashboard_url)
        server = ExporterServer(app, args.listen_address, args.web_config_file)
    except WebConfigError as exc:
        _print_errors(exc.errors)
        return 1
    except (ValueError, OSError) as exc:
        print(f"{PROGRAM}: cannot listen on {args.listen_address}: {exc}", file=sys.stderr)
        return 1
    link_web_config_health(exporter, server)
    server.start()
    host, port = server.address
    scheme = "https" if server.tls else "http"
    shown = f"[{host}]" if ":" in host else host or "localhost"
    if host in ("", "0.0.0.0", "::"):
        shown = "localhost"
    log.info(
        "listening",
        extra={"version": __version__, "address": f"{host}:{port}", "config": config_file},
    )
    if args.demo:
        print(f"Demo running: open {scheme}://{shown}:{port}/ (metrics at /metrics)", flush=True)
    while True:
        signals.wake.wait()
        signals.wake.clear()
        if signals.terminate:
            break
        if signals.reload:
            signals.reload = False
            exporter.reload()
            if server.web_config is not None:
                server.web_config.check()
    log.info("shutting down")
    exporter.close()  # scrapes waiting on the API answer from memory now; once only
    server.shutdown()
    return 0


class _Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; the main thread does the work."""

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.terminate = False
        self.reload = False

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: stop."""
        self.terminate = True
        self.wake.set()

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: reload."""
        self.reload = True
        self.wake.set()
