"""Tests for exporter.config: exact error messages, defaults, tokens, durations, task id files."""

from __future__ import annotations

import os
import string
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.config import (
    STORE_NAME_RE,
    TASK_ID_RE,
    Config,
    ConfigError,
    StoreConfig,
    TLSConfig,
    TokenSource,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    read_token,
)
from exporter.config.watch import expand_task_id_files, read_task_id_file
from exporter.demo.simulator import Simulator
from exporter.demo.tasks import DEMO_TOKEN, add_demo_tasks

SECRET = "s3cr3t-T0KEN-value-4f9a2c"  # long and mixed, like a real token
OTHER = "other-token-value-0042"
ENV = {"SHOPLAZZA_TOKEN": SECRET, "EMPTY_TOKEN": "   ", "OTHER_TOKEN": OTHER}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A config directory holding a token file, an empty token file and a CA bundle."""
    (tmp_path / "token").write_text(SECRET + "\n")
    (tmp_path / "empty-token").write_text("\n  \n")
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "not-a-ca.pem").write_text("hello\n")
    return tmp_path


def parse(text: str, confdir: Path, environ: dict[str, str] | None = None) -> Config:
    return parse_config(
        textwrap.dedent(text), environ=ENV if environ is None else environ, base_dir=str(confdir)
    )


def errors(text: str, confdir: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, confdir, environ)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


MINIMAL = """
stores:
  - name: acme
    domain: acme.myshoplaza.com
    access_token_env: SHOPLAZZA_TOKEN
"""


def store(extra: str) -> str:
    """The minimal config with `extra` lines added to its store."""
    return MINIMAL + textwrap.indent(textwrap.dedent(extra), "    ")


def flow(fields: str) -> str:
    """A config whose only store is the flow mapping {fields}."""
    return f"stores:\n- {{{fields}}}\n"


TOKEN = "access_token_env: SHOPLAZZA_TOKEN"
ONE_OF_TOKENS = "set only one of access_token_file / access_token_env / access_token"
BAD_DURATION = '(use e.g. "500ms", "5s", "1m30s", "24h", "1d" or a number of seconds)'
NO_SUCH_FILE = "No such file or directory"

# (id, config text, expected errors without the leading "config.yaml: ")
BAD_CONFIGS: list[tuple[str, str, list[str]]] = [
    ("empty", "", ["empty configuration"]),
    ("only comments", "# nothing\n", ["empty configuration"]),
    (
        "not yaml",
        "stores: [\n",
        [
            "invalid YAML: line 2, column 1: expected the node content, "
            "but found '<stream end>' (while parsing a flow node)"
        ],
    ),
    (
        "tab indentation",
        "stores:\n\t- name: a\n",
        [
            "invalid YAML: line 2, column 1: found character '\\t' that cannot start any "
            "token (while scanning for the next token)"
        ],
    ),
    (
        "duplicate yaml key",
        "stores: []\nstores: []\n",
        [
            'invalid YAML: line 2, column 1: found duplicate key "stores" '
            "(while constructing a mapping at line 1, column 1)"
        ],
    ),
    (
        "impossible date",
        "when: 2020-13-45\n",
        ["invalid YAML: line 1, column 7: invalid timestamp value (quote it to make it a string)"],
    ),
    (
        "nul character",
        "stores: [\0]\n",
        [
            "invalid YAML: unacceptable character #x0000 at position 9: "
            "special characters are not allowed"
        ],
    ),
    ("deep nesting", "[" * 5000 + "]" * 5000, ["invalid YAML: nested too deeply"]),
    (
        "two documents",
        "a: 1\n---\nb: 2\n",
        [
            "invalid YAML: line 2, column 1: but found another document "
            "(expected a single document in the stream at line 1, column 1)"
        ],
    ),
    ("top level list", "- a\n- b\n", ["expected a mapping at the top level, got a list"]),
    ("top level string", "hello\n", ['expected a mapping at the top level, got string "hello"']),
    ("stores missing", "state_file: x\n", ["stores: missing: at least one store is required"]),
    ("stores empty", "stores: []\n", ["stores: at least one store is required"]),
    ("stores null", "stores:\n", ["stores: expected a list of stores, got null"]),
    ("stores mapping", "stores: {a: 1}\n", ["stores: expected a list of stores, got a mapping"]),
    ("store not mapping", "stores: [acme]\n", ['stores[0]: expected a mapping, got string "acme"']),
    (
        "unknown top key",
        MINIMAL + "forget_completed: 1h\n",
        ["forget_completed: unknown key (did you mean forget_completed_after?)"],
    ),
    (
        "unknown store key",
        store("timeot: 5s"),
        ["stores[0].timeot: unknown key (did you mean timeout?)"],
    ),
    ("unknown key, no guess", store("colour: blue"), ["stores[0].colour: unknown key"]),
    (
        "odd key",
        store("'a b': 1\n7: 1"),
        ['stores[0]."a b": unknown key', "stores[0].7: unknown key"],
    ),
    (
        "unknown defaults key",
        "defaults: {retries: 3}\n" + MINIMAL,
        ["defaults.retries: unknown key"],
    ),
    (
        "store key in defaults",
        "defaults: {domain: x.com, task_ids: [a]}\n" + MINIMAL,
        [
            "defaults.domain: not allowed in defaults (set it in each store)",
            "defaults.task_ids: not allowed in defaults (set it in each store)",
        ],
    ),
    (
        "unknown tls key",
        store("tls_config: {insecure: true}"),
        ["stores[0].tls_config.insecure: unknown key (did you mean insecure_skip_verify?)"],
    ),
    (
        "defaults not mapping",
        "defaults: [1]\n" + MINIMAL,
        ["defaults: expected a mapping, got a list"],
    ),
    (
        "burst string",
        store("burst: ten"),
        ['stores[0].burst: expected an integer >= 1, got string "ten"'],
    ),
    (
        "burst float",
        store("burst: 2.5"),
        ["stores[0].burst: expected an integer >= 1, got number 2.5"],
    ),
    ("burst zero", store("burst: 0"), ["stores[0].burst: must be >= 1, got 0"]),
    (
        "burst huge",
        store("burst: 0x1000000000"),
        ["stores[0].burst: must be at most 100000, got 0x1000000000"],
    ),
    (
        "max_concurrency bool",
        store("max_concurrency: true"),
        ["stores[0].max_concurrency: expected an integer >= 1, got boolean true"],
    ),
    (
        "max_concurrency negative",
        store("max_concurrency: -1"),
        ["stores[0].max_concurrency: must be >= 1, got -1"],
    ),
    (
        "rps bool",
        store("requests_per_second: true"),
        ["stores[0].requests_per_second: expected a number > 0, got boolean true"],
    ),
    (
        "rps zero",
        store("requests_per_second: 0"),
        ["stores[0].requests_per_second: must be > 0, got 0"],
    ),
    (
        "rps nan",
        store("requests_per_second: .nan"),
        ["stores[0].requests_per_second: must be > 0, got nan"],
    ),
    (
        "rps string",
        store('requests_per_second: "2"'),
        ['stores[0].requests_per_second: expected a number > 0, got string "2"'],
    ),
    (
        "bad duration",
        store("timeout: 5 seconds"),
        [f'stores[0].timeout: invalid duration "5 seconds" {BAD_DURATION}'],
    ),
    (
        "fractional unit",
        store("timeout: 1.5s"),
        [f'stores[0].timeout: invalid duration "1.5s" {BAD_DURATION}'],
    ),
    (
        "duration bool",
        store("min_poll_interval: yes"),
        [
            'stores[0].min_poll_interval: expected a duration such as "5s" or "1m30s", '
            "got boolean true"
        ],
    ),
    (
        "duration null",
        store("timeout:"),
        ['stores[0].timeout: expected a duration such as "5s" or "1m30s", got null'],
    ),
    ("timeout zero", store("timeout: 0s"), ["stores[0].timeout: must be > 0, got 0s"]),
    (
        "negative interval",
        store("min_poll_interval: -1"),
        ["stores[0].min_poll_interval: a duration must not be negative, got -1"],
    ),
    (
        "duration too long",
        store("min_poll_interval: 11y"),
        ["stores[0].min_poll_interval: must be at most 10y"],
    ),
    (
        "infinite duration",
        MINIMAL + "forget_completed_after: .inf\n",
        ["forget_completed_after: a duration must be finite, got inf"],
    ),
    (
        "bad forget",
        MINIMAL + "forget_completed_after: soon\n",
        [f'forget_completed_after: invalid duration "soon" {BAD_DURATION}'],
    ),
    (
        "bad api version",
        store('api_version: "../admin"'),
        ['stores[0].api_version: invalid API version "../admin" (use [A-Za-z0-9._-])'],
    ),
    (
        "dotdot api version",
        store('api_version: ".."'),
        ['stores[0].api_version: invalid API version ".." (use [A-Za-z0-9._-])'],
    ),
    (
        "api version list",
        store("api_version: []"),
        ['stores[0].api_version: expected a string such as "2022-01", got a list'],
    ),
    (
        "duplicate store",
        MINIMAL + "  - {name: acme, domain: b.com, access_token_env: OTHER_TOKEN}\n",
        ['stores[1].name: duplicate store name "acme" (first at stores[0])'],
    ),
    (
        "bad store name",
        flow(f"name: 'a b', domain: x.com, {TOKEN}"),
        ['stores[0].name: invalid store name "a b" (use [A-Za-z0-9_.-], 1 to 64)'],
    ),
    (
        "store name missing",
        flow(f"domain: x.com, {TOKEN}"),
        ["stores[0].name: missing: every store needs a name"],
    ),
    (
        "store name list",
        flow(f"name: [a], domain: x.com, {TOKEN}"),
        ["stores[0].name: expected a string, got a list"],
    ),
    (
        "bad task id",
        store("task_ids: [ok-1, abc, ../x]"),
        ['stores[0].task_ids[2]: invalid task id "../x"'],
    ),
    (
        "task id newline",
        store('task_ids: ["abc\\n"]'),
        ['stores[0].task_ids[0]: invalid task id "abc\\n"'],
    ),
    (
        "task id sexagesimal",
        store("task_ids: [1:30]"),
        ['stores[0].task_ids[0]: invalid task id "1:30"'],
    ),
    (
        "task id bool",
        store("task_ids: [yes]"),
        ["stores[0].task_ids[0]: expected a task id string, got boolean true"],
    ),
    (
        "task id null",
        store("task_ids: [a, ~]"),
        ["stores[0].task_ids[1]: expected a task id string, got null"],
    ),
    (
        "task id float",
        store("task_ids: [1.5]"),
        ["stores[0].task_ids[0]: expected a task id string, got number 1.5"],
    ),
    (
        "task id mapping without id",
        store("task_ids: [{a: b}]"),
        [
            "stores[0].task_ids[0].a: unknown key",
            "stores[0].task_ids[0].id: missing: a task entry needs an id",
        ],
    ),
    (
        "task ids string",
        store("task_ids: abc"),
        ['stores[0].task_ids: expected a list of task ids, got string "abc"'],
    ),
    (
        "task id too long",
        store("task_ids: [" + "a" * 129 + "]"),
        ['stores[0].task_ids[0]: invalid task id "' + "a" * 100 + '..."'],
    ),
    (
        "task_id_files string",
        store("task_id_files: ids.txt"),
        ['stores[0].task_id_files: expected a list of glob patterns, got string "ids.txt"'],
    ),
    (
        "task_id_files items",
        store("task_id_files: ['', 3]"),
        [
            'stores[0].task_id_files[0]: expected a file name or glob, got string ""',
            "stores[0].task_id_files[1]: expected a file name or glob, got integer 3",
        ],
    ),
    (
        "domain and base_url",
        store("base_url: https://x.com"),
        ["stores[0]: set only one of domain / base_url, not both"],
    ),
    (
        "neither domain nor base_url",
        flow(f"name: a, {TOKEN}"),
        ["stores[0]: missing domain or base_url: set exactly one of them"],
    ),
    (
        "domain is a url",
        flow(f"name: a, domain: 'https://x.com', {TOKEN}"),
        ['stores[0].domain: expected a host name, not a URL, got "https://x.com" (use base_url)'],
    ),
    (
        "bad domain",
        flow(f"name: a, domain: 'x_y..com', {TOKEN}"),
        ['stores[0].domain: invalid host name "x_y..com"'],
    ),
    (
        "domain bad port",
        flow(f"name: a, domain: 'x.com:70000', {TOKEN}"),
        ['stores[0].domain: invalid host name "x.com:70000"'],
    ),
    (
        "domain number",
        flow(f"name: a, domain: 5, {TOKEN}"),
        ["stores[0].domain: expected a host name, got integer 5"],
    ),
    (
        "base_url ftp",
        flow(f"name: a, base_url: 'ftp://x.com', {TOKEN}"),
        ['stores[0].base_url: invalid URL "ftp://x.com": it is not an http:// or https:// URL'],
    ),
    (
        "base_url no scheme",
        flow(f"name: a, base_url: 'x.com', {TOKEN}"),
        ['stores[0].base_url: invalid URL "x.com": it is not an http:// or https:// URL'],
    ),
    (
        "base_url no host",
        flow(f"name: a, base_url: 'http://:80/', {TOKEN}"),
        ['stores[0].base_url: invalid URL "http://:80/": no host'],
    ),
    (
        "base_url query",
        flow(f"name: a, base_url: 'http://x.com/?a=1', {TOKEN}"),
        ['stores[0].base_url: invalid URL "http://x.com/?a=1": a query or fragment is not allowed'],
    ),
    (
        "base_url space",
        flow(f"name: a, base_url: 'http://x .com', {TOKEN}"),
        ['stores[0].base_url: invalid URL "http://x .com": spaces or control characters'],
    ),
    (
        "base_url port",
        flow(f"name: a, base_url: 'http://x.com:99999', {TOKEN}"),
        ['stores[0].base_url: invalid URL "http://x.com:99999": Port out of range 0-65535'],
    ),
    (
        "base_url credentials",
        flow(f"name: a, base_url: 'http://u:p@x.com', {TOKEN}"),
        [
            'stores[0].base_url: invalid URL "http://u:p@x.com": '
            "credentials in a URL are not supported"
        ],
    ),
    (
        "two token keys",
        store("access_token_file: token"),
        [f"stores[0]: {ONE_OF_TOKENS}, not access_token_file and access_token_env"],
    ),
    (
        "no token key",
        flow("name: a, domain: x.com"),
        [
            "stores[0]: missing access token: set one of access_token_file / access_token_env / "
            "access_token (here or in defaults)"
        ],
    ),
    (
        "two token keys in defaults",
        "defaults: {access_token: x, access_token_env: X}\n" + flow("name: a, domain: x.com"),
        [f"defaults: {ONE_OF_TOKENS}, not access_token_env and access_token"],
    ),
    (
        "missing token file",
        flow("name: a, domain: x.com, access_token_file: /nonexistent/tok"),
        [f'stores[0].access_token_file: cannot read "/nonexistent/tok": {NO_SUCH_FILE}'],
    ),
    (
        "token file is a directory",
        flow("name: a, domain: x.com, access_token_file: /"),
        ['stores[0].access_token_file: cannot read "/": Is a directory'],
    ),
    (
        "unset token env",
        flow("name: a, domain: x.com, access_token_env: NOPE"),
        ["stores[0].access_token_env: environment variable NOPE is not set"],
    ),
    (
        "empty token env",
        flow("name: a, domain: x.com, access_token_env: EMPTY_TOKEN"),
        ["stores[0].access_token_env: environment variable EMPTY_TOKEN is empty"],
    ),
    (
        "bad env name",
        flow("name: a, domain: x.com, access_token_env: 'A=B'"),
        ['stores[0].access_token_env: invalid environment variable name "A=B"'],
    ),
    (
        "token given as the token file",
        flow("name: a, domain: x.com, access_token_file: AbCdEf1234567890XyZw"),
        [
            "stores[0].access_token_file: this looks like a token itself; give the name of a file "
            "holding it"
        ],
    ),
    (
        "lower-case hex token given as the token file",
        flow("name: a, domain: x.com, access_token_file: 0123456789abcdef0123456789abcdef"),
        [
            "stores[0].access_token_file: this looks like a token itself; give the name of a file "
            "holding it"
        ],
    ),
    (
        "long inline token with a space",
        flow("name: a, domain: x.com, access_token: 'AbCdEf1234567890XyZw AbCdEf1234567890'"),
        ["stores[0].access_token: the inline token contains spaces or non-printable characters"],
    ),
    (
        "token given as the token variable",
        flow("name: a, domain: x.com, access_token_env: AbCdEf-1234567890-XyZw"),
        [
            "stores[0].access_token_env: this looks like a token itself; give the name of a "
            "variable holding it"
        ],
    ),
    (
        "token not a string",
        flow("name: a, domain: x.com, access_token: 12345"),
        ["stores[0].access_token: expected a non-empty string, got integer"],
    ),
    (
        "inline token with space",
        flow("name: a, domain: x.com, access_token: 'ab cd'"),
        ["stores[0].access_token: the inline token contains spaces or non-printable characters"],
    ),
    (
        "defaults token broken, reported once",
        "defaults: {access_token_env: NOPE}\n"
        + flow("name: a, domain: x.com")
        + "- {name: b, domain: y.com}\n",
        ["defaults.access_token_env: environment variable NOPE is not set"],
    ),
    (
        "defaults token wrong type, though unused",
        "defaults: {access_token_file: 5}\n" + MINIMAL,
        ["defaults.access_token_file: expected a non-empty string, got integer"],
    ),
    (
        "missing ca_file",
        store("tls_config: {ca_file: /nonexistent/ca.pem}"),
        [f'stores[0].tls_config.ca_file: cannot read "/nonexistent/ca.pem": {NO_SUCH_FILE}'],
    ),
    (
        "tls not mapping",
        store("tls_config: yes"),
        ["stores[0].tls_config: expected a mapping, got boolean true"],
    ),
    (
        "insecure not bool",
        store("tls_config: {insecure_skip_verify: 'no'}"),
        ['stores[0].tls_config.insecure_skip_verify: expected true or false, got string "no"'],
    ),
    (
        "state_file type",
        MINIMAL + "state_file: [a]\n",
        ["state_file: expected a file name, got a list"],
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [case[1:] for case in BAD_CONFIGS], ids=[case[0] for case in BAD_CONFIGS]
)
def test_bad_config(confdir: Path, text: str, expected: list[str]) -> None:
    assert errors(text, confdir) == ["config.yaml: " + line for line in expected]


def test_errors_naming_the_config_directory(confdir: Path) -> None:
    text = """
    stores:
      - {name: a, domain: a.com, access_token_file: empty-token}
      - {name: b, domain: b.com, access_token_file: missing-token}
      - name: c
        domain: c.com
        access_token_env: SHOPLAZZA_TOKEN
        tls_config: {ca_file: not-a-ca.pem}
    """
    assert errors(text, confdir) == [
        f'config.yaml: stores[0].access_token_file: file "{confdir}/empty-token" is empty',
        f'config.yaml: stores[1].access_token_file: cannot read "{confdir}/missing-token": '
        + NO_SUCH_FILE,
        f'config.yaml: stores[2].tls_config.ca_file: cannot load CA certificates from "{confdir}'
        '/not-a-ca.pem": NO_CERTIFICATE_OR_CRL_FOUND',
    ]


def test_all_errors_reported_at_once(confdir: Path) -> None:
    text = """
    defaults:
      timeout: forever
      colour: red
    stores:
      - name: acme
        domain: acme.myshoplaza.com
        access_token_env: UNSET
        task_ids: [good, "../x", good]
        burst: 0
      - name: acme
        base_url: "ftp://x"
        access_token_file: token
        max_concurency: 3
      - name: "bad name!"
    forget_completed_after: -1s
    extra: 1
    """
    assert errors(text, confdir) == [
        "config.yaml: extra: unknown key",
        "config.yaml: defaults.colour: unknown key",
        f'config.yaml: defaults.timeout: invalid duration "forever" {BAD_DURATION}',
        "config.yaml: stores[0].access_token_env: environment variable UNSET is not set",
        'config.yaml: stores[0].task_ids[1]: invalid task id "../x"',
        "config.yaml: stores[0].burst: must be >= 1, got 0",
        'config.yaml: stores[1].name: duplicate store name "acme" (first at stores[0])',
        "config.yaml: stores[1].max_concurency: unknown key (did you mean max_concurrency?)",
        'config.yaml: stores[1].base_url: invalid URL "ftp://x": it is not an http:// or '
        "https:// URL",
        'config.yaml: stores[2].name: invalid store name "bad name!" (use [A-Za-z0-9_.-], 1 to 64)',
        "config.yaml: stores[2]: missing domain or base_url: set exactly one of them",
        "config.yaml: stores[2]: missing access token: set one of access_token_file / "
        "access_token_env / access_token (here or in defaults)",
        f'config.yaml: forget_completed_after: invalid duration "-1s" {BAD_DURATION}',
    ]


def test_source_prefixes_every_message(confdir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("stores: [1, 2]\n", source="/etc/exporter/x.yml", base_dir=str(confdir))
    assert info.value.errors == [
        "/etc/exporter/x.yml: stores[0]: expected a mapping, got integer 1",
        "/etc/exporter/x.yml: stores[1]: expected a mapping, got integer 2",
    ]


# --- good configurations ------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults(confdir: Path) -> None:
    config = parse(MINIMAL, confdir)
    assert config == Config(
        stores=(
            StoreConfig(
                name="acme",
                base_url="https://acme.myshoplaza.com",
                token=TokenSource("env", "SHOPLAZZA_TOKEN", SECRET),
                task_ids=(),
                task_id_files=(),
                api_version="2022-01",
                timeout=5.0,
                min_poll_interval=10.0,
                requests_per_second=2.0,
                burst=10,
                max_concurrency=4,
                tls=TLSConfig(ca_file=None, insecure_skip_verify=False),
            ),
        ),
        forget_completed_after=0.0,
        state_file=None,
        source="config.yaml",
        warnings=(),
    )


def test_full_config_with_defaults_merging(confdir: Path) -> None:
    text = """
    defaults:
      api_version: "2025-06"
      timeout: 2s
      min_poll_interval: 1m
      requests_per_second: 1.5
      burst: 3
      max_concurrency: 2
      access_token_file: token
      tls_config: {insecure_skip_verify: true}
    stores:
      - name: acme
        domain: acme.myshoplaza.com:8443
      - name: beta.shop_2
        base_url: "http://127.0.0.1:8080/prefix/"
        access_token_env: OTHER_TOKEN
        timeout: 500ms
        burst: 20
        tls_config: {ca_file: ca.pem}
        task_ids: [b-1, b_2]
    forget_completed_after: 1d
    state_file: state/tasks.json
    """
    (confdir / "state").mkdir()
    config = parse(text, confdir)
    acme, beta = config.stores
    assert acme.base_url == "https://acme.myshoplaza.com:8443"
    assert acme.token == TokenSource("file", str(confdir / "token"), SECRET)
    assert (acme.api_version, acme.timeout, acme.min_poll_interval) == ("2025-06", 2.0, 60.0)
    assert (acme.requests_per_second, acme.burst, acme.max_concurrency) == (1.5, 3, 2)
    assert acme.tls == TLSConfig(ca_file=None, insecure_skip_verify=True)
    # the store's own token key wins over the defaults' one, which is not even needed
    assert beta.token == TokenSource("env", "OTHER_TOKEN", OTHER)
    assert beta.base_url == "http://127.0.0.1:8080/prefix"
    assert (beta.timeout, beta.burst, beta.max_concurrency) == (0.5, 20, 2)
    assert beta.tls == TLSConfig(ca_file=str(confdir / "ca.pem"), insecure_skip_verify=False)
    assert beta.task_ids == ("b-1", "b_2")
    assert config.forget_completed_after == 86400.0
    assert config.state_file == str(confdir / "state" / "tasks.json")
    assert config.warnings == (
        "config.yaml: defaults.tls_config.insecure_skip_verify: TLS certificates will not be "
        "verified",
    )


def test_defaults_token_is_only_read_when_a_store_uses_it(confdir: Path) -> None:
    text = "defaults: {access_token_env: UNSET}\n" + flow("name: a, domain: x.com, " + TOKEN)
    assert parse(text, confdir).stores[0].token.ref == "SHOPLAZZA_TOKEN"


def test_defaults_token_applies_to_stores_without_token_keys(confdir: Path) -> None:
    text = """
    defaults: {access_token_env: OTHER_TOKEN}
    stores:
      - {name: a, domain: a.com}
      - {name: b, domain: b.com, access_token_file: token}
    """
    a, b = parse(text, confdir).stores
    assert a.token == TokenSource("env", "OTHER_TOKEN", OTHER)
    assert b.token == TokenSource("file", str(confdir / "token"), SECRET)


def test_relative_paths_resolve_against_the_config_file(confdir: Path) -> None:
    sub = confdir / "etc"
    sub.mkdir()
    (sub / "tok").write_text("  tok-en-long-enough-1 \n")
    (sub / "config.yaml").write_text(
        "stores:\n"
        "- name: a\n"
        "  domain: a.com\n"
        "  access_token_file: tok\n"
        "  task_id_files: [ids/*.txt, /abs/*.txt, ids/*.txt]\n"
        "state_file: ../state.json\n"
    )
    config = load_config(str(sub / "config.yaml"), environ={})
    assert config.source == str(sub / "config.yaml")
    (store_config,) = config.stores
    assert store_config.token == TokenSource("file", str(sub / "tok"), "tok-en-long-enough-1")
    assert store_config.token.describe() == f"file {sub}/tok"
    assert store_config.task_id_files == (f"{sub}/ids/*.txt", "/abs/*.txt")
    assert config.state_file == str(confdir / "state.json")


def test_task_id_file_patterns_escape_the_config_directory(tmp_path: Path) -> None:
    odd = tmp_path / "conf[1]"
    (odd / "ids").mkdir(parents=True)
    (odd / "ids" / "a.txt").write_text("abc\n")
    config = parse_config(
        flow(f"name: a, domain: a.com, {TOKEN}, task_id_files: [ids/*.txt]"),
        environ=ENV,
        base_dir=str(odd),
    )
    assert expand_task_id_files(config.stores[0].task_id_files) == [str(odd / "ids" / "a.txt")]


def test_task_ids_written_as_numbers_keep_their_text(confdir: Path) -> None:
    config = parse(store("task_ids: [12345, 0123, 0x1F, 1_000, '42', abc, abc]"), confdir)
    assert config.stores[0].task_ids == ("12345", "0123", "0x1F", "1_000", "42", "abc")
    assert config.warnings == (
        'config.yaml: stores[0].task_ids[6]: duplicate task id "abc" (also at '
        "stores[0].task_ids[5]), ignored",
    )


def test_null_lists_and_sections_mean_empty(confdir: Path) -> None:
    text = (
        MINIMAL + "    task_ids:\n    task_id_files:\n    tls_config:\ndefaults:\nstate_file: ''\n"
    )
    (store_config,) = parse(text, confdir).stores
    assert (store_config.task_ids, store_config.task_id_files) == ((), ())
    assert store_config.tls == TLSConfig()


def test_numbers_and_names_in_odd_yaml_forms(confdir: Path) -> None:
    text = flow(
        f"name: 2024, domain: a.com, {TOKEN}, api_version: 2025, timeout: 1.5, "
        "min_poll_interval: 0, requests_per_second: 1, burst: 012"
    )
    (store_config,) = parse(text, confdir).stores
    assert (store_config.name, store_config.api_version) == ("2024", "2025")
    assert (store_config.timeout, store_config.min_poll_interval) == (1.5, 0.0)
    assert store_config.requests_per_second == 1.0
    assert isinstance(store_config.requests_per_second, float)
    assert store_config.burst == 10
    assert type(store_config.burst) is int


def test_anchors_and_merge_keys(confdir: Path) -> None:
    text = """
    stores:
      - &base
        name: a
        domain: a.com
        access_token_env: SHOPLAZZA_TOKEN
        task_ids: &ids [t1, t2]
      - <<: *base
        name: b
        task_ids: *ids
    """
    a, b = parse(text, confdir).stores
    assert (a.name, b.name, b.base_url, b.task_ids) == ("a", "b", "https://a.com", ("t1", "t2"))


def test_inline_token_is_allowed_with_a_warning(confdir: Path) -> None:
    config = parse(flow(f"name: a, domain: a.com, access_token: ' {SECRET} '"), confdir)
    assert config.stores[0].token == TokenSource("inline", "", SECRET)
    assert config.stores[0].token.describe() == "inline"
    assert config.warnings == (
        "config.yaml: stores[0].access_token: inline tokens are discouraged; use "
        "access_token_file or access_token_env",
    )


def test_the_token_never_shows(confdir: Path) -> None:
    good = parse(flow(f"name: a, domain: a.com, access_token: {SECRET}"), confdir)
    for shown in (repr(good), str(good), repr(good.stores[0].token), str(good.stores[0].token)):
        assert SECRET not in shown
    bad_texts = [
        flow(f"name: a, domain: a.com, access_token: '{SECRET} x'"),
        flow(f"name: a, domain: a.com, access_token: [{SECRET}]"),
        flow(f"name: a, domain: a.com, acces_token: {SECRET}"),
        f"stores:\n- name: a\n  access_token: '{SECRET}\n",  # the YAML error is at that line
        f"stores:\n- name: a\n  access_token: {SECRET}\n  access_token: {SECRET}\n",
        f"stores:\n- name: a\n  access_token: !!int {SECRET}\n",
        f"stores:\n- name: a\n  access_token: !!bool {SECRET}\n",
        f"stores:\n- name: a\n  access_token: !!float {SECRET}\n",
        flow(f"name: a, domain: a.com, access_token_file: {SECRET}"),
        flow(f"name: a, domain: a.com, access_token_env: {SECRET}"),
    ]
    for text in bad_texts:
        with pytest.raises(ConfigError) as info:
            parse(text, confdir)
        assert SECRET not in str(info.value)
        assert SECRET[:8] not in str(info.value)


def test_example_config_parses() -> None:
    environ = {"SHOPLAZZA_ACME_TOKEN": SECRET, "SHOPLAZZA_SANDBOX_TOKEN": DEMO_TOKEN}
    config = load_config(str(REPO / "config.example.yaml"), environ=environ)
    assert [s.name for s in config.stores] == ["acme", "sandbox"]
    acme, sandbox = config.stores
    assert acme.base_url == "https://acme.myshoplaza.com"
    assert acme.token == TokenSource("env", "SHOPLAZZA_ACME_TOKEN", SECRET)
    assert acme.timeout == 10.0
    assert acme.task_id_files == (str(REPO / "upload-tasks" / "acme" / "*.txt"),)
    assert acme.stuck_after == 900.0
    assert acme.task_labels == (
        (
            "4c1d2e3f-0000-4a5b-8c9d-0123456789ab",
            (("importer", "nightly sync"), ("source", "catalogue.csv")),
        ),
    )
    assert config.store_files == (str(REPO / "stores.d" / "*.yaml"),)
    assert sandbox.base_url == "http://127.0.0.1:8080"
    assert sandbox.token == TokenSource("env", "SHOPLAZZA_SANDBOX_TOKEN", DEMO_TOKEN)
    # The tasks the simulator's demo has (it answers 200 for them: tests/test_examples.py).
    assert set(sandbox.task_ids) < set(add_demo_tasks(Simulator()))
    assert config.forget_completed_after == 86400.0
    assert config.warnings == ()


def test_example_config_needs_its_token() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(REPO / "config.example.yaml"), environ={})
    assert len(info.value.errors) == 2
    assert "SHOPLAZZA_ACME_TOKEN is not set" in info.value.errors[0]
    assert "SHOPLAZZA_SANDBOX_TOKEN is not set" in info.value.errors[1]


def test_load_config_file_problems(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors == [f"{missing}: cannot read: {NO_SUCH_FILE}"]
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert info.value.errors == [f"{tmp_path}: cannot read: Is a directory"]
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"stores: [caf\xe9]\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(latin1))
    assert info.value.errors == [f"{latin1}: not valid UTF-8 (byte 12)"]


def test_config_error_is_an_exception_with_lines() -> None:
    error = ConfigError(["a: one", "a: two"])
    assert isinstance(error, Exception)
    assert error.errors == ["a: one", "a: two"]
    assert str(error) == "a: one\na: two"


# --- tokens at run time -------------------------------------------------------------------


def test_read_token_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token-0123456\n")
    source = TokenSource("file", str(path), "first-token-0123456")
    assert read_token(source) == "first-token-0123456"
    path.write_text("second-token-0123456")
    assert read_token(source) == "second-token-0123456"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        read_token(source)
    assert info.value.errors == [f'access token: file "{path}" is empty']
    path.unlink()
    with pytest.raises(ConfigError) as info:
        read_token(source)
    assert info.value.errors == [f'access token: cannot read "{path}": {NO_SUCH_FILE}']


def test_read_token_env_and_inline() -> None:
    assert read_token(TokenSource("env", "T", "old"), environ={"T": f" {OTHER} "}) == OTHER
    with pytest.raises(ConfigError) as info:
        read_token(TokenSource("env", "T", "old"), environ={})
    assert info.value.errors == ["access token: environment variable T is not set"]
    assert read_token(TokenSource("inline", "", "abc")) == "abc"


# --- names and durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc", True),
        ("A-b_9", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("../x", False),
        ("a.b", False),
        ("abc\n", False),
        ("a b", False),
        ("é", False),
    ],
)
def test_task_id_re(value: str, ok: bool) -> None:
    assert bool(TASK_ID_RE.match(value)) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("acme", True),
        ("a.b-c_d", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("a b", False),
        ("a/b", False),
        ("acme\n", False),
    ],
)
def test_store_name_re(value: str, ok: bool) -> None:
    assert bool(STORE_NAME_RE.match(value)) is ok


@pytest.mark.parametrize(
    ("text", "seconds", "formatted"),
    [
        ("500ms", 0.5, "500ms"),
        ("5s", 5.0, "5s"),
        ("1m30s", 90.0, "1m30s"),
        ("90s", 90.0, "1m30s"),
        ("24h", 86400.0, "1d"),
        ("1d", 86400.0, "1d"),
        ("1w", 604800.0, "1w"),
        ("1y", 31536000.0, "1y"),
        ("1h0m5s", 3605.0, "1h5s"),
        ("1y2w3d4h5m6s7ms", 33019506.007, "1y2w3d4h5m6s7ms"),
        ("0s", 0.0, "0s"),
        ("0", 0.0, "0s"),
        ("2.5", 2.5, "2s500ms"),
        (" 5m ", 300.0, "5m"),
        (7, 7.0, "7s"),
        (0.25, 0.25, "250ms"),
    ],
)
def test_durations(text: object, seconds: float, formatted: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(seconds) == formatted


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", f'invalid duration "" {BAD_DURATION}'),
        ("5", None),
        ("1h1h", f'invalid duration "1h1h" {BAD_DURATION}'),
        ("1s1m", f'invalid duration "1s1m" {BAD_DURATION}'),
        ("-5s", f'invalid duration "-5s" {BAD_DURATION}'),
        ("5S", f'invalid duration "5S" {BAD_DURATION}'),
        ("1" * 70 + "s", f'invalid duration "{"1" * 70}s" {BAD_DURATION}'),
        (True, 'expected a duration such as "5s" or "1m30s", got boolean true'),
        (None, 'expected a duration such as "5s" or "1m30s", got null'),
        ([5], 'expected a duration such as "5s" or "1m30s", got a list'),
        (-1, "a duration must not be negative, got -1"),
        (-0.5, "a duration must not be negative, got -0.5"),
        (float("nan"), "a duration must be finite, got nan"),
        (10**400, "duration is too large"),
    ],
)
def test_bad_durations(value: object, message: str | None) -> None:
    if message is None:
        assert parse_duration(value) == 5.0
        return
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_format_duration_edges() -> None:
    assert format_duration(0.0001) == "0.0001s"
    assert format_duration(-90) == "-1m30s"
    assert format_duration(float("inf")) == "inf"
    assert format_duration(1.0004) == "1s"


@given(st.integers(min_value=0, max_value=10**13))
def test_format_then_parse_round_trips(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == seconds


# --- task id files ------------------------------------------------------------------------


def test_read_task_id_file(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text(
        "\ufeff# uploads of Monday\n"
        "abc-1\n"
        "\n"
        "   abc-2   # the big one\r\n"
        "../etc/passwd\n"
        "abc-1\n"
        "two ids\n"
        "\t\n"
        "#abc-3\n"
        "abc_4"
    )
    ids, warnings = read_task_id_file(str(path))
    assert ids == ["abc-1", "abc-2", "abc_4"]
    bad_id = "invalid task id (use [A-Za-z0-9_-], 1 to 128 characters)"
    assert warnings == [f"{path}:5: {bad_id}", f"{path}:7: {bad_id}"]  # never the line


def test_read_task_id_file_problems(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.txt")
    assert read_task_id_file(missing) == ([], [f"{missing}: cannot read: {NO_SUCH_FILE}"])
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    assert read_task_id_file(str(binary)) == ([], [f"{binary}:1: not valid UTF-8"])
    many = tmp_path / "many.txt"
    many.write_text("bad id\n" * 25 + "ok\n")
    ids, warnings = read_task_id_file(str(many))
    assert ids == ["ok"]
    assert len(warnings) == 21
    assert warnings[0] == f"{many}:1: invalid task id (use [A-Za-z0-9_-], 1 to 128 characters)"
    assert warnings[-1] == f"{many}: 5 more invalid lines skipped"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert read_task_id_file(str(empty)) == ([], [])


def test_expand_task_id_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "deep").mkdir()
    for name in ("a/1.txt", "a/2.txt", "a/deep/3.txt", "a/skip.csv", "a/.hidden.txt"):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "a" / "dir.txt").mkdir()
    patterns = [f"{tmp_path}/a/*.txt", f"{tmp_path}/a/**/*.txt", f"{tmp_path}/a/1.txt", "\0"]
    assert expand_task_id_files(patterns) == [
        f"{tmp_path}/a/1.txt",
        f"{tmp_path}/a/2.txt",
        f"{tmp_path}/a/deep/3.txt",
    ]
    assert expand_task_id_files([f"{tmp_path}/none/*.txt"]) == []


# --- robustness ---------------------------------------------------------------------------

_CONFIG_KEYS = [
    "defaults",
    "stores",
    "forget_completed_after",
    "state_file",
    "name",
    "domain",
    "base_url",
    "access_token_file",
    "access_token_env",
    "access_token",
    "task_ids",
    "task_id_files",
    "api_version",
    "timeout",
    "min_poll_interval",
    "requests_per_second",
    "burst",
    "max_concurrency",
    "tls_config",
    "ca_file",
    "insecure_skip_verify",
    "stuck_after",
    "store_files",
    "id",
    "labels",
    "<<",
]
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["5s", "0", "-1", "acme", "a.com", "http://x", "SHOPLAZZA_TOKEN", "/", ""])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_CONFIG_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
_YAMLISH = st.text(
    alphabet=st.sampled_from(
        list(string.printable) + list("\u00e9\u2028\ufeff\x00[]{}:-#&*!|>'\"%@`")
    ),
    max_size=200,
)
_BASE_DIR = tempfile.gettempdir()
# CONFIG_FUZZ_EXAMPLES=20000 pytest tests/config/test_config.py -k structure  searches harder
_FUZZ = settings(
    max_examples=int(os.environ.get("CONFIG_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _parse_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, environ=ENV, base_dir=_BASE_DIR)
    except ConfigError as exc:
        assert exc.errors
        assert all(line.startswith("config.yaml: ") and "\n" not in line for line in exc.errors)
        assert SECRET not in str(exc)
    else:
        assert config.stores
        assert SECRET not in repr(config)


@_FUZZ
@given(_YAMLISH)
@example("a: 2020-13-45")
@example("[" * 2000)
@example("x: &a [*a]\nstores: *a\n")
@example("? [a]\n: 1\n")
@example("stores: !!binary 'ab'\n")
@example("stores: [{name: a, domain: a.com, access_token: !!set {a}}]\n")
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    _parse_or_config_error(text)


@_FUZZ
@given(_VALUES)
def test_any_structure_gives_a_config_or_a_config_error(data: Any) -> None:
    _parse_or_config_error(yaml.safe_dump(data))


@_FUZZ
@given(
    st.dictionaries(st.sampled_from(_CONFIG_KEYS), _VALUES, max_size=4),
    st.lists(st.dictionaries(st.sampled_from(_CONFIG_KEYS), _VALUES, max_size=8), max_size=3),
)
def test_config_shaped_structures_give_a_config_or_a_config_error(
    defaults: dict[str, Any], stores: list[dict[str, Any]]
) -> None:
    data = {"defaults": defaults, "stores": stores}
    _parse_or_config_error(yaml.safe_dump(data))
    valid = {"name": "s", "domain": "a.com", "access_token_env": "SHOPLAZZA_TOKEN"}
    _parse_or_config_error(yaml.safe_dump({"stores": [{**valid, **s} for s in stores]}))


def test_working_directory_is_not_used(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    config = parse(flow("name: a, domain: a.com, access_token_file: token"), confdir)
    assert config.stores[0].token.ref == os.path.join(confdir, "token")
