"""``shoplazza-upload-task``: the task API's client (docs/task-api.md).

Importers register the upload tasks they create, remove them, read them and wait for
them::

    shoplazza-upload-task --url http://exporter:9877 add acme 300b5e33 --label source=a.csv
    shoplazza-upload-task --url 'http://exporter-{shard}.exporter:9877' --total-shards 3 \\
        wait acme 300b5e33 --timeout 2h

Exit status: 0 done (``wait``: every task completed without failed files), 1 a task
completed with failed files or the wait timed out, 2 usage, 3 the exporter could not be
reached or refused the request. Errors are one line on stderr; nothing a flag holds (a
password, a URL's credentials) is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import certifi
import urllib3
from urllib3.util import create_urllib3_context

from exporter import __version__
from exporter.config import parse_duration
from exporter.sharding import owner

PROGRAM = "shoplazza-upload-task"
DEFAULT_URL = "http://localhost:9877"
URL_ENV = "SHOPLAZZA_UPLOAD_TASK_URL"  # the --url default when set
MAX_BATCH = 1000
WAIT_CHUNK = 30.0  # seconds one waiting request asks for (the exporter allows 300)
DONE = frozenset({"completed", "completed_with_failures"})
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
_LABEL_RE = re.compile(r"\A([^=]+)=(.*)\Z", re.S)


class Failure(Exception):
    """A one-line error and the exit status it means."""

    def __init__(self, message: str, status: int = EXIT_UNREACHABLE) -> None:
        super().__init__(message)
        self.status = status


def _shown(url: str) -> str:
    """``url`` without credentials, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class Answer:
    """An exporter's answer: status, reason phrase and body."""

    status: int
    reason: str
    body: bytes


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """Verification against --ca-file (else certifi's bundle), the client certificate."""
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    try:
        context.load_verify_locations(cafile=args.ca_file or certifi.where())
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise Failure(f"cannot load --ca-file {args.ca_file}: {exc.__class__.__name__}") from None
    if args.cert_file:
        try:
            context.load_cert_chain(args.cert_file, args.key_file)
        except (OSError, ValueError) as exc:
            raise Failure(
                f"cannot load --cert-file/--key-file {args.cert_file}: {exc.__class__.__name__}"
            ) from None
    return context


class Client:
    """Requests to the exporter serving each store (``{shard}`` URLs, one 421 followed).

    urllib3 only (a runtime dependency of the exporter): no redirect is followed and no
    request retried; the only second request is the 421 hop to the owner shard.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        parts = urllib.parse.urlsplit(args.url)
        self.headers: dict[str, str] = {"User-Agent": f"{PROGRAM}/{__version__}"}
        user: str | None = args.basic_auth_user
        password = ""
        if user is not None:
            password = _read_password(args.basic_auth_password_file)
        elif parts.username is not None:  # http://user:password@host: basic auth too
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        netloc = parts.netloc.rpartition("@")[2]  # credentials go in the header only
        self.url: str = urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")
        self.total: int = args.total_shards or 1
        context = _tls_context(args) if parts.scheme == "https" else None
        self.pool = urllib3.PoolManager(num_pools=4, ssl_context=context)

    def base(self, store: str, shard: int | None = None) -> str:
        """The exporter URL serving ``store`` (``shard``: the one a 421 named)."""
        if "{shard}" not in self.url:
            return self.url
        if shard is None:
            shard = owner(store, self.total)
        return self.url.replace("{shard}", str(shard))

    def call(
        self,
        method: str,
        store: str,
        path: str,
        *,
        body: object | None = None,
        timeout: float = 30.0,
    ) -> Answer:
        """One request; a 421 is followed once when the URL has ``{shard}``."""
        shard: int | None = None
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode("utf-8")
        for _ in range(2):
            quoted = urllib.parse.quote(store, safe="")
            url = self.base(store, shard) + f"/api/v1/stores/{quoted}/tasks{path}"
            try:
                response = self.pool.request(
                    method,
                    url,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
                    retries=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise Failure(f"cannot reach {_shown(url)}: {_reason(exc)}") from None
            answer = Answer(response.status, response.reason or "", response.data)
            if answer.status != 421 or "{shard}" not in self.url or shard is not None:
                return answer
            shard = _json(answer).get("shard")
            if not isinstance(shard, int) or isinstance(shard, bool):
                return answer
        return answer


def _q(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    errors = urllib3.exceptions
    if isinstance(exc, errors.SSLError):
        return "TLS error (check --ca-file, --cert-file, --key-file)"
    if isinstance(exc, errors.NewConnectionError | errors.NameResolutionError):
        return "connection failed"  # a subclass of ConnectTimeoutError, looked at first
    if isinstance(exc, errors.TimeoutError):
        return "timed out"
    if isinstance(exc, errors.ProtocolError):
        return "connection failed"
    return type(exc).__name__


def _read_password(path: str | None) -> str:
    if path is None:
        raise Failure("--basic-auth-user needs --basic-auth-password-file", EXIT_USAGE)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().rstrip("\r\n")
    except (OSError, UnicodeError) as exc:
        raise Failure(f"cannot read the password file {path}: {exc.__class__.__name__}") from None


def _json(answer: Answer) -> dict[str, Any]:
    try:
        data = json.loads(answer.body)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return {}
    return data if isinstance(data, dict) else {}


def _refused(answer: Answer, what: str) -> Failure:
    error = _json(answer).get("error")
    detail = error if isinstance(error, str) else answer.reason or "no reason given"
    if answer.status == 401:
        detail = "unauthorized (check --basic-auth-user and --basic-auth-password-file)"
    return Failure(f"{what}: {answer.status} {detail[:300]}")


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        match = _LABEL_RE.match(pair)
        if match is None:
            raise Failure(f"--label {pair!r}: use name=value", EXIT_USAGE)
        labels[match.group(1)] = match.group(2)
    return labels


# ---- commands ----------------------------------------------------------------------------


def add(client: Client, store: str, ids: Sequence[str], labels: dict[str, str]) -> int:
    """Register ``ids`` (one PUT, or batches of up to 1,000)."""
    created = 0
    if len(ids) == 1:
        answer = client.call("PUT", store, "/" + _q(ids[0]), body={"labels": labels})
        if answer.status not in (200, 201):
            raise _refused(answer, f"add {store}/{ids[0]}")
        created = answer.status == 201
    else:
        for start in range(0, len(ids), MAX_BATCH):
            chunk = ids[start : start + MAX_BATCH]
            body = {"tasks": [{"id": task_id, "labels": labels} for task_id in chunk]}
            answer = client.call("POST", store, "", body=body)
            if answer.status != 200:
                raise _refused(answer, f"add to {store}")
            results = _json(answer).get("tasks", [])
            created += sum(1 for r in results if isinstance(r, dict) and r.get("status") == 201)
    print(f"registered {len(ids)} tasks on store {store} ({int(created)} newly watched)")
    return EXIT_OK


def remove(client: Client, store: str, ids: Sequence[str]) -> int:
    """Stop watching registered tasks."""
    for task_id in ids:
        answer = client.call("DELETE", store, "/" + _q(task_id))
        if answer.status != 204:
            raise _refused(answer, f"remove {store}/{task_id}")
    print(f"removed {len(ids)} tasks from store {store}")
    return EXIT_OK


def get(client: Client, store: str, task_id: str) -> int:
    """Print the task as JSON."""
    answer = client.call("GET", store, "/" + _q(task_id))
    if answer.status != 200:
        raise _refused(answer, f"get {store}/{task_id}")
    print(json.dumps(_json(answer), indent=1))
    return EXIT_OK


def wait(client: Client, store: str, ids: Sequence[str], timeout: float) -> int:
    """Wait until every task is completed, or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    states: dict[str, dict[str, Any]] = {}
    pending = list(dict.fromkeys(ids))
    progress = sys.stderr.isatty()

    def fetch(task_id: str, seconds: float) -> dict[str, Any]:
        query = f"?wait={max(int(seconds * 1000), 1)}ms" if seconds > 0 else ""
        answer = client.call("GET", store, "/" + _q(task_id) + query, timeout=seconds + 30)
        if answer.status != 200:
            raise _refused(answer, f"wait {store}/{task_id}")
        return _json(answer)

    while True:
        for task_id in list(pending):  # a cheap look at each, then a long wait on one
            states[task_id] = fetch(task_id, 0)
            if states[task_id].get("state") in DONE:
                pending.remove(task_id)
        if progress:
            _progress(states, len(ids))
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        task_id = pending[0]
        states[task_id] = fetch(task_id, min(remaining, WAIT_CHUNK))
        if states[task_id].get("state") in DONE:
            pending.remove(task_id)
    if progress:
        sys.stderr.write("\n")
    failed = sum(_failed(s) for s in states.values())
    done = len(set(ids)) - len(pending)
    print(f"{done}/{len(set(ids))} tasks completed on store {store}, {failed} failed files")
    if pending:
        print(f"{PROGRAM}: timed out waiting for: {' '.join(pending[:20])}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def _failed(state: dict[str, Any]) -> int:
    data = state.get("data")
    value = data.get("failed") if isinstance(data, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _progress(states: dict[str, dict[str, Any]], total: int) -> None:
    done = sum(1 for s in states.values() if s.get("state") in DONE)
    failed = sum(_failed(s) for s in states.values())
    sys.stderr.write(f"\r{done}/{total} tasks done, {failed} failed files so far\033[K")
    sys.stderr.flush()


# ---- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The flags and commands."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM, description="Register upload tasks with shoplazza-upload-exporter."
    )
    add_flag = parser.add_argument
    add_flag(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the exporter (default: ${URL_ENV}, else {DEFAULT_URL}); {{shard}} is "
        "replaced by the shard serving the store (with --total-shards)",
    )
    add_flag(
        "--total-shards",
        type=int,
        default=None,
        metavar="M",
        help="shards of the exporter fleet, for a --url with {shard}",
    )
    add_flag("--basic-auth-user", metavar="USER")
    add_flag("--basic-auth-password-file", metavar="PATH")
    add_flag("--ca-file", metavar="PATH", help="CA certificates to verify the exporter with")
    add_flag("--cert-file", metavar="PATH", help="client certificate (mutual TLS)")
    add_flag("--key-file", metavar="PATH", help="client certificate's key")
    add_flag("--version", action="version", version=f"{PROGRAM}, version {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adding = commands.add_parser("add", help="register tasks")
    adding.add_argument("store")
    adding.add_argument("ids", nargs="+", metavar="ID")
    adding.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")
    removing = commands.add_parser("remove", help="stop watching registered tasks")
    removing.add_argument("store")
    removing.add_argument("ids", nargs="+", metavar="ID")
    waiting = commands.add_parser("wait", help="wait until the tasks are completed")
    waiting.add_argument("store")
    waiting.add_argument("ids", nargs="+", metavar="ID")
    waiting.add_argument("--timeout", default="2h", help="give up after this long (default 2h)")
    getting = commands.add_parser("get", help="print a task as JSON")
    getting.add_argument("store")
    getting.add_argument("id", metavar="ID")
    return parser


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)  # exits 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if "{shard}" in args.url and not args.total_shards:
        _usage(parser, "a --url with {shard} needs --total-shards")
    if args.total_shards is not None and not 1 <= args.total_shards <= 1000:
        _usage(parser, "--total-shards must be from 1 to 1000")
    if bool(args.cert_file) != bool(args.key_file):
        _usage(parser, "--cert-file and --key-file go together")
    if urllib.parse.urlsplit(args.url).scheme not in ("http", "https"):
        _usage(parser, "--url must start with http:// or https://")
    try:
        client = Client(args)
        if args.command == "add":
            return add(client, args.store, args.ids, _labels(args.label))
        if args.command == "remove":
            return remove(client, args.store, args.ids)
        if args.command == "get":
            return get(client, args.store, args.id)
        try:
            timeout = parse_duration(args.timeout)
        except ValueError as exc:
            _usage(parser, f"--timeout: {exc}")
        return wait(client, args.store, args.ids, timeout)
    except Failure as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
