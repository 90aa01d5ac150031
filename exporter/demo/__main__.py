"""``python -m exporter.demo``: run the Shoplazza API simulator standalone."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from exporter.demo.simulator import SHAPES, Simulator
from exporter.demo.tasks import DEMO_TOKEN, add_demo_tasks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exporter.demo",
        description="Run the Shoplazza upload-file-task API simulator.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument(
        "--token",
        action="append",
        default=None,
        help=f"accepted access token, repeatable (default {DEMO_TOKEN})",
    )
    p.add_argument("--demo", action="store_true", help="add the demo tasks")
    p.add_argument(
        "--tasks", type=int, default=0, metavar="N", help="add N in-progress tasks task-0.."
    )
    p.add_argument("--rate-limit", type=float, default=None, help="leak rate, requests/second")
    p.add_argument("--bucket", type=int, default=10, help="leaky bucket capacity (10)")
    p.add_argument("--retry-after", default=None, help="Retry-After value on 429s")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    p.add_argument("--shape", choices=SHAPES, default="flat", help="body shape (flat)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; return the exit status."""
    args = _parser().parse_args(argv)
    if args.tasks < 0:
        print("--tasks must be >= 0", file=sys.stderr)
        return 2
    # One default, with or without --demo, long enough for the exporter (16 characters).
    tokens = args.token or [DEMO_TOKEN]
    sim = Simulator(
        args.host,
        args.port,
        tokens=tokens,
        shape=args.shape,
        rate_limit=args.rate_limit,
        bucket_capacity=args.bucket,
        retry_after=args.retry_after,
        latency=args.latency,
        max_records=10_000,
    )
    ids: list[str] = []
    if args.demo:
        ids.extend(add_demo_tasks(sim))
    for i in range(args.tasks):
        sim.add_task(f"task-{i}", 100, i % 100, 1)
    try:
        sim.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    done = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda _signum, _frame: done.set())
    try:
        print(f"Shoplazza API simulator listening on {sim.url}", flush=True)
        print(f"tokens: {', '.join(tokens)}", flush=True)
        if ids:
            print(f"demo tasks: {', '.join(ids)}", flush=True)
        if args.tasks:
            print(f"tasks: task-0 .. task-{args.tasks - 1}", flush=True)
        print(f"try: curl -H 'access-token: {tokens[0]}' {sim.task_url('<task_id>')}", flush=True)
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
