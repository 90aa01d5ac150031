"""Command line: flags, logging, wiring, signals (README "Installing")."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
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
from exporter.web.listen import systemd_sockets
from exporter.web.prefix import Prefixes, RoutePrefix, parse_prefixes
from exporter.web.routes import App, check_telemetry_path
from exporter.web.server import ExporterServer
from exporter.web.webconfig import WebConfigError, load_web_config

log = logging.getLogger("exporter")

PROGRAM = "shoplazza-upload-exporter"
DEFAULT_LISTEN = ":9877"
# Shards at most: each process hashes every store name once per shard (README "Sharding").
MAX_SHARDS = 1000
# Seconds from SIGTERM to exit at most, whatever a thread is doing (README "Running it").
EXIT_DEADLINE = 1.5


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, Prometheus style (README "Installing")."""
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
        action="append",
        default=None,
        metavar="[HOST]:PORT",
        help=f"address to listen on; repeat for several (default: {DEFAULT_LISTEN})",
    )
    add(
        "--web.systemd-socket",
        dest="systemd_socket",
        action="store_true",
        help="serve on the sockets systemd passes (LISTEN_FDS) instead of --web.listen-address",
    )
    add(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        metavar="PATH",
        help="path under which to expose metrics (default: /metrics)",
    )
    add(
        "--web.disable-exporter-metrics",
        dest="disable_exporter_metrics",
        action="store_true",
        help="leave out the exporter process's own process_* and python_* metrics",
    )
    add(
        "--web.external-url",
        dest="external_url",
        default=None,
        metavar="URL",
        help="the URL under which users reach the exporter (e.g. behind a reverse proxy); "
        "its path prefixes links and redirects",
    )
    add(
        "--web.route-prefix",
        dest="route_prefix",
        default=None,
        metavar="PATH",
        help="prefix of the paths the exporter serves (default: the path of "
        "--web.external-url; '/' when the proxy strips it)",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        metavar="PATH",
        help="exporter-toolkit web configuration file: TLS and basic auth",
    )
    add(
        "--web.enable-task-api",
        dest="enable_task_api",
        action="store_true",
        help="accept task registrations over HTTP (PUT/POST/DELETE /api/v1/stores/...); "
        "reads are always on (docs/task-api.md)",
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
        help=f"processes the stores are spread over by rendezvous hashing, at most {MAX_SHARDS} "
        "(default: 1)",
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


def warn_unauthenticated_writes(server: ExporterServer) -> None:
    """With the task API's writes on, say so when nothing authenticates a client."""
    watcher = server.web_config
    config = watcher.current() if watcher is not None else None
    if config is not None and (
        config.basic_auth_users
        or (config.tls is not None and config.tls.client_auth_type == "RequireAndVerifyClientCert")
    ):
        return
    log.warning(
        "the task API accepts writes without authentication: anyone who reaches the port can "
        "register and remove tasks (set basic_auth_users or client certificates in "
        "--web.config.file)"
    )


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
    if args.total_shards > MAX_SHARDS:
        parser.error(f"--total-shards {args.total_shards}: at most {MAX_SHARDS}")
    args.listen_address = args.listen_address or [DEFAULT_LISTEN]
    try:
        args.prefixes = parse_prefixes(args.external_url, args.route_prefix)
        check_telemetry_path(args.telemetry_path)
    except ValueError as exc:
        parser.error(str(exc))
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
            args.enable_task_api = True  # the quick start registers a task (README)
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
    stack.callback(exporter.close)
    started = _in_background(exporter.start, "start", signals)
    if signals.stopping():
        _exit_soon()
        return 0  # stopped while starting: whatever the start was reading is abandoned
    if isinstance(started, ConfigError):
        _print_errors(started.errors)
        return 1
    if isinstance(started, BaseException):
        raise started
    raise_open_files_limit()  # before the server sizes its connection limit from it
    try:
        server = _make_server(args, exporter)
    except WebConfigError as exc:
        _print_errors(exc.errors)
        return 1
    except (ValueError, OSError) as exc:
        where = "systemd's sockets" if args.systemd_socket else " ".join(args.listen_address)
        print(f"{PROGRAM}: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1
    link_web_config_health(exporter, server)
    if args.enable_task_api:
        warn_unauthenticated_writes(server)
    server.start()
    for host, port in server.addresses:
        log.info(
            "listening",
            extra={"version": __version__, "address": f"{host}:{port}", "config": config_file},
        )
    if args.demo:
        host, port = server.address
        scheme = "https" if server.tls else "http"
        shown = f"[{host}]" if ":" in host else host or "localhost"
        if host in ("", "0.0.0.0", "::"):
            shown = "localhost"
        base = f"{scheme}://{shown}:{port}{args.prefixes.route}"
        print(f"Demo running: open {base}/ (metrics at {args.telemetry_path})", flush=True)
    reloading = threading.Lock()  # one SIGHUP reload at a time, off the main thread
    while True:
        signals.wait()
        if signals.stopping():
            break
        if signals.reload and reloading.acquire(blocking=False):
            signals.reload = False
            threading.Thread(
                target=_reload, args=(exporter, server, reloading), name="reload", daemon=True
            ).start()
    log.info("shutting down")
    _exit_soon()
    exporter.close()  # scrapes waiting on the API answer from memory now; once only
    server.shutdown()
    return 0


def _reload(exporter: Exporter, server: ExporterServer, done: threading.Lock) -> None:
    """SIGHUP: reload the configuration and the web configuration."""
    try:
        exporter.reload()
        if server.web_config is not None:
            server.web_config.check()
    finally:
        done.release()


def _in_background(work: Callable[[], object], name: str, signals: _Signals) -> object:
    """Run ``work`` on a daemon thread until it ends or a stop signal comes.

    The main thread only waits, so it acts on SIGTERM at once (Python runs signal handlers
    in the main thread only, between bytecodes): a start-up reading a huge or hostile file
    never delays the exit (docs/design.md, "Rules for files"). Returns what ``work``
    returned or the exception it raised; None when stopped first.
    """
    outcome: list[object] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the main thread
            outcome.append(exc)
        finished.set()
        signals.wake.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while not finished.is_set() and not signals.terminate:
        signals.wait()
    if signals.reload and not signals.terminate:
        signals.reload = False  # the configuration just read is the current one
    return outcome[0] if outcome else None


def _exit_soon() -> None:
    """Exit within EXIT_DEADLINE s whatever a thread holds (a lock, a file being read)."""

    def hard_exit() -> None:
        log.error("shutdown took too long, exiting now")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    timer = threading.Timer(EXIT_DEADLINE, hard_exit)
    timer.daemon = True
    timer.start()


def _make_server(args: argparse.Namespace, exporter: Exporter) -> ExporterServer:
    """The HTTP server of the flags: paths, listeners, web configuration."""
    prefixes: Prefixes = args.prefixes
    app = App(
        exporter,
        telemetry_path=args.telemetry_path,
        exporter_metrics=not args.disable_exporter_metrics,
        enable_task_api=args.enable_task_api,
        dashboard_url=args.dashboard_url,
    )
    app.keep_pages_warm()
    sockets = systemd_sockets() if args.systemd_socket else []
    return ExporterServer(
        RoutePrefix(app, prefixes),
        args.listen_address,
        args.web_config_file,
        sockets=sockets,
        probe_paths=[prefixes.path("/-/healthy"), prefixes.path("/-/ready")],
    )


#: Seconds between two looks of the main thread at the signal flags.
SIGNAL_POLL = 0.1


class _Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; the main thread does the work.

    The handlers only set flags. Python runs a handler in the main thread between two
    bytecodes, possibly while that thread holds the lock inside ``wake.wait()``: a handler
    that called ``wake.set()`` there would wait for that lock forever and the process would
    ignore SIGTERM. So the main thread looks at the flags every :data:`SIGNAL_POLL`
    seconds; other threads still wake it at once with ``wake.set()``.
    """

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.terminate = False
        self.reload = False

    def wait(self) -> None:
        """Sleep until woken by a thread or for at most :data:`SIGNAL_POLL` seconds."""
        self.wake.wait(SIGNAL_POLL)
        self.wake.clear()

    def stopping(self) -> bool:
        """A stop signal came (a call: the flag changes under the reader's feet)."""
        return self.terminate

    def on_stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: stop (a flag only, see the class)."""
        self.terminate = True

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: reload (a flag only, see the class)."""
        self.reload = True
