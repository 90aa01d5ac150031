"""Checks added with the amended configuration rules: each failed on the code before them.

Token length, the state file's directory, stores sharing one API budget, ``stuck_after``,
task context labels in ``task_ids``, and the error hierarchy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import (
    Config,
    ConfigError,
    LoadError,
    StoreFileError,
    TokenSource,
    read_token,
)
from exporter.errors import WebConfigError
from exporter.web.webconfig import WebConfigError as WebConfigErrorFromWeb
from tests.config import test_config as config_tests

LONG = "A-token-of-twenty-chars"
ENV = {"TOKEN": LONG, "SHORT": "fifteen-chars-x", "EXACT": "sixteen-chars-xx"}


def parse(text: str, base_dir: Path) -> Config:
    return config_tests.parse(text, base_dir, ENV)


def errors(text: str, base_dir: Path) -> list[str]:
    return config_tests.errors(text, base_dir, ENV)


def one_store(extra: str = "", top: str = "") -> str:
    return top + "stores:\n- name: a\n  domain: a.com\n  access_token_env: TOKEN\n" + extra


# --- the error hierarchy ----------------------------------------------------------------


def test_one_base_catches_every_file_error() -> None:
    for kind in (ConfigError, StoreFileError, WebConfigError):
        with pytest.raises(LoadError) as info:
            raise kind(["x.yaml: a: b", "x.yaml: c: d"])
        assert info.value.errors == ["x.yaml: a: b", "x.yaml: c: d"]
        assert str(info.value) == "x.yaml: a: b\nx.yaml: c: d"
    assert issubclass(StoreFileError, ConfigError)
    assert not issubclass(WebConfigError, ConfigError)
    assert WebConfigErrorFromWeb is WebConfigError  # still importable where it was


# --- tokens under 16 characters -------------------------------------------------------------


def test_short_tokens_are_configuration_errors(tmp_path: Path) -> None:
    (tmp_path / "short").write_text("short-token\n")
    text = """
    stores:
      - {name: a, domain: a.com, access_token_env: SHORT}
      - {name: b, domain: b.com, access_token_file: short}
      - {name: c, domain: c.com, access_token: abcdefgh}
      - {name: d, domain: d.com, access_token_env: EXACT}
    """
    assert errors(text, tmp_path) == [
        "config.yaml: stores[0].access_token_env: the token in environment variable SHORT is "
        "too short to be a Shoplazza access token (15 characters, at least 16 expected)",
        f'config.yaml: stores[1].access_token_file: the token in file "{tmp_path}/short" is '
        "too short to be a Shoplazza access token (11 characters, at least 16 expected)",
        "config.yaml: stores[2].access_token: the inline token is too short to be a Shoplazza "
        "access token (8 characters, at least 16 expected)",
    ]


def test_a_token_rotated_to_a_short_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("tiny\n")
    with pytest.raises(ConfigError) as info:
        read_token(TokenSource("file", str(path), LONG))
    assert info.value.errors == [
        f'access token: the token in file "{path}" is too short to be a Shoplazza access '
        "token (4 characters, at least 16 expected)"
    ]
    assert "tiny" not in str(info.value)


# --- the state file's directory -------------------------------------------------------------


def test_state_file_directory_must_exist(tmp_path: Path) -> None:
    assert errors(one_store(top="state_file: missing/state.json\n"), tmp_path) == [
        f'config.yaml: state_file: directory "{tmp_path}/missing" does not exist'
    ]


def test_state_file_must_not_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    assert errors(one_store(top="state_file: state\n"), tmp_path) == [
        f'config.yaml: state_file: "{tmp_path}/state" is a directory'
    ]


def test_state_file_directory_must_be_writable(tmp_path: Path) -> None:
    # /proc refuses new files even to root, whom mode bits would not stop
    [line] = errors(one_store(top="state_file: /proc/sue-state.json\n"), tmp_path)
    assert line.startswith('config.yaml: state_file: directory "/proc" is not writable: ')


def test_state_file_in_a_writable_directory_is_accepted(tmp_path: Path) -> None:
    config = parse(one_store(top="state_file: state.json\n"), tmp_path)
    assert config.state_file == str(tmp_path / "state.json")
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


# --- stores sharing one budget --------------------------------------------------------------


def test_two_stores_with_one_domain_get_a_warning(tmp_path: Path) -> None:
    text = """
    stores:
      - {name: a, domain: acme.myshoplaza.com, access_token_env: TOKEN}
      - {name: b, domain: other.myshoplaza.com, access_token_env: TOKEN}
      - {name: c, domain: ACME.myshoplaza.com, access_token_env: TOKEN}
      - {name: d, base_url: "http://127.0.0.1:8080/", access_token_env: TOKEN}
      - {name: e, base_url: "http://127.0.0.1:8080", access_token_env: TOKEN}
    """
    config = parse(text, tmp_path)
    assert config.warnings == (
        'config.yaml: stores[2]: store "c" uses the same API address '
        '(https://ACME.myshoplaza.com) as store "a": Shoplazza counts their requests against '
        "one budget",
        'config.yaml: stores[4]: store "e" uses the same API address (http://127.0.0.1:8080) '
        'as store "d": Shoplazza counts their requests against one budget',
    )


# --- stuck_after ----------------------------------------------------------------------------


def test_stuck_after_per_store_and_in_defaults(tmp_path: Path) -> None:
    text = """
    defaults: {stuck_after: 1h}
    stores:
      - {name: a, domain: a.com, access_token_env: TOKEN}
      - {name: b, domain: b.com, access_token_env: TOKEN, stuck_after: 90s}
    """
    a, b = parse(text, tmp_path).stores
    assert (a.stuck_after, b.stuck_after) == (3600.0, 90.0)
    (default,) = parse(one_store(), tmp_path).stores
    assert default.stuck_after == 900.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0s", "must be > 0, got 0s"),
        ("soon", 'invalid duration "soon" (use e.g. "500ms", "5s", "1m30s", "24h", "1d" or a '
         "number of seconds)"),
        ("[1]", 'expected a duration such as "5s" or "1m30s", got a list'),
    ],
)  # fmt: skip
def test_bad_stuck_after(tmp_path: Path, value: str, message: str) -> None:
    assert errors(one_store(f"  stuck_after: {value}\n"), tmp_path) == [
        f"config.yaml: stores[0].stuck_after: {message}"
    ]
    assert errors(one_store(top=f"defaults: {{stuck_after: {value}}}\n"), tmp_path) == [
        f"config.yaml: defaults.stuck_after: {message}"
    ]


# --- task context labels in task_ids --------------------------------------------------------


def test_task_ids_may_carry_labels(tmp_path: Path) -> None:
    text = one_store(
        "  task_ids:\n"
        "    - plain-1\n"
        "    - {id: t-2, labels: {source: catalogue.csv, importer: nightly sync, n: 7}}\n"
        "    - {id: 0123}\n"
        "    - {id: t-2, labels: {source: other}}\n"
    )
    config = parse(text, tmp_path)
    (store,) = config.stores
    assert store.task_ids == ("plain-1", "t-2", "0123")
    assert store.task_labels == (
        ("t-2", (("importer", "nightly sync"), ("n", "7"), ("source", "catalogue.csv"))),
    )
    assert config.warnings == (
        'config.yaml: stores[0].task_ids[3].id: duplicate task id "t-2" (also at '
        "stores[0].task_ids[1].id), ignored",
    )


def test_bad_task_labels_are_errors_with_their_key_path(tmp_path: Path) -> None:
    nine = ", ".join(f"l{i}: v" for i in range(9))
    text = one_store(
        "  task_ids:\n"
        "    - {id: a, labels: {store: x, __meta: y, 1bad: z, ok: [1], long: " + "v" * 257 + "}}\n"
        "    - {id: b, labels: {" + nine + "}}\n"
        "    - {id: ../c, labels: {fine: yes}}\n"
        "    - {labels: {a: b}, colour: red}\n"
        "    - {id: d, labels: [a]}\n"
        '    - {id: e, labels: {task_id: x, ctl: "a\\tb"}}\n'
    )
    assert errors(text, tmp_path) == [
        'config.yaml: stores[0].task_ids[0].labels.store: label name "store" is reserved',
        'config.yaml: stores[0].task_ids[0].labels.__meta: label name "__meta" is reserved',
        'config.yaml: stores[0].task_ids[0].labels.1bad: invalid label name "1bad" (use '
        "[a-zA-Z_][a-zA-Z0-9_]*)",
        "config.yaml: stores[0].task_ids[0].labels.ok: expected a label value string, got a list",
        "config.yaml: stores[0].task_ids[0].labels.long: label long: value longer than 256 "
        "characters",
        "config.yaml: stores[0].task_ids[1].labels: too many labels (9, at most 8)",
        "config.yaml: stores[0].task_ids[2].labels.fine: expected a label value string, got "
        "boolean true",
        'config.yaml: stores[0].task_ids[2].id: invalid task id "../c"',
        "config.yaml: stores[0].task_ids[3].colour: unknown key",
        "config.yaml: stores[0].task_ids[3].id: missing: a task entry needs an id",
        "config.yaml: stores[0].task_ids[4].labels: expected a mapping, got a list",
        'config.yaml: stores[0].task_ids[5].labels.task_id: label name "task_id" is reserved',
        "config.yaml: stores[0].task_ids[5].labels.ctl: label ctl: value holds control characters",
    ]
