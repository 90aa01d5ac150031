"""Store files: stores: only, main defaults and {store}, isolation, duplicates, watching."""

from __future__ import annotations

import logging
import os
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli import check_config
from exporter.config import Config, StoreDefaults, parse_config, parse_store_file
from exporter.config.watch import StoreFiles
from tests.helpers import make_exporter, wait_until, write

TOKEN = "A-token-of-twenty-chars"
ENV = {"TOKEN": TOKEN}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A main file with defaults using {store}, a stores.d directory and token files."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "stores.d").mkdir()
    for name in ("acme", "beta", "gamma"):
        (tmp_path / "secrets" / name).write_text(f"{name}-token-0123456789\n")
    write(
        tmp_path / "config.yaml",
        textwrap.dedent(
            """\
            store_files: ["stores.d/*.yaml"]
            defaults:
              timeout: 2s
              access_token_file: "secrets/{store}"
              task_id_files: ["tasks/{store}/*.txt"]
            stores:
              - {name: main, domain: main.example.com, access_token_env: TOKEN}
            """
        ),
    )
    write(tmp_path / "stores.d" / "a.yaml", "stores:\n- {name: acme, domain: acme.example.com}\n")
    write(
        tmp_path / "stores.d" / "b.yaml",
        "stores:\n- {name: beta, domain: beta.example.com, timeout: 3s}\n"
        "- {name: gamma, domain: gamma.example.com, task_id_files: [own.txt]}\n",
    )
    return tmp_path


def load(fleet: Path) -> Config:
    return parse_config((fleet / "config.yaml").read_text(), str(fleet / "config.yaml"), ENV)


def settle(files: StoreFiles, clock: Clock) -> bool:
    """Two checks a second apart: what a changed file needs to be applied."""
    assert files.refresh(force=True) is False  # seen once: not applied yet
    clock.now += 1.0
    return files.refresh(force=True)


def watcher(fleet: Path, clock: Clock | None = None) -> StoreFiles:
    files = StoreFiles(load(fleet), environ=ENV, clock=clock or Clock())
    files.refresh(force=True)
    return files


def test_store_files_apply_main_defaults_and_the_store_placeholder(fleet: Path) -> None:
    config = load(fleet)
    assert config.store_files == (f"{fleet}/stores.d/*.yaml",)
    assert [s.name for s in config.stores] == ["main"]
    files = watcher(fleet)
    acme, beta, gamma = files.stores
    assert (acme.name, acme.timeout, beta.timeout) == ("acme", 2.0, 3.0)
    assert acme.token.ref == f"{fleet}/secrets/acme"
    assert acme.token.value == "acme-token-0123456789"
    assert beta.token.value == "beta-token-0123456789"
    assert acme.task_id_files == (f"{fleet}/tasks/acme/*.txt",)
    assert gamma.task_id_files == (f"{fleet}/stores.d/own.txt",)  # its own: relative to it
    assert (files.invalid, files.errors) == (0, ())


def test_main_file_stores_use_the_placeholder_too(tmp_path: Path) -> None:
    (tmp_path / "tok-x").write_text(TOKEN)
    text = "defaults: {access_token_file: 'tok-{store}'}\nstores:\n- {name: x, domain: x.com}\n"
    (store,) = parse_config(text, environ={}, base_dir=str(tmp_path)).stores
    assert store.token.ref == str(tmp_path / "tok-x")


def test_a_missing_placeholder_token_file_names_the_store(tmp_path: Path) -> None:
    text = (
        "defaults: {access_token_file: 'tok-{store}'}\n"
        "stores:\n- {name: x, domain: x.com}\n- {name: y, domain: y.com}\n"
    )
    with pytest.raises(Exception) as info:
        parse_config(text, environ={}, base_dir=str(tmp_path))
    assert str(info.value).splitlines() == [
        f'config.yaml: stores[0]: access_token_file from defaults: cannot read "{tmp_path}/tok-x": '
        "No such file or directory",
        f'config.yaml: stores[1]: access_token_file from defaults: cannot read "{tmp_path}/tok-y": '
        "No such file or directory",
    ]


def test_main_file_may_have_no_stores_with_store_files(tmp_path: Path) -> None:
    assert parse_config("store_files: [x/*.yaml]\n", base_dir=str(tmp_path)).stores == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["{f}: empty store file (it must hold stores:)"]),
        ("- a\n", ["{f}: expected a mapping with stores: at the top level, got a list"]),
        ("defaults: {}\n", ["{f}: defaults: unknown key", "{f}: stores: missing: a store file "
                            "holds stores:"]),
        ("stores: [\n", None),
        ("stores: {a: 1}\n", ["{f}: stores: expected a list of stores, got a mapping"]),
        ("stores:\n- {name: z, domain: z.com, timeot: 1s, access_token_env: TOKEN}\n",
         ["{f}: stores[0].timeot: unknown key (did you mean timeout?)"]),
        ("stores:\n- {name: z, domain: z.com}\n",
         ['{f}: stores[0]: access_token_file from defaults: cannot read "{d}/secrets/z": '
          "No such file or directory"]),
        ("stores:\n- {name: z, domain: z.com, access_token_env: TOKEN}\n- {name: z, "
         "domain: y.com, access_token_env: TOKEN}\n",
         ['{f}: stores[1].name: duplicate store name "z" (first at stores[0])']),
    ],
)  # fmt: skip
def test_store_file_errors_have_file_and_key_path(
    fleet: Path, text: str, expected: list[str] | None
) -> None:
    path = fleet / "stores.d" / "c.yaml"
    path.write_text(text)
    result = parse_store_file(str(path), load(fleet).defaults, ENV)
    assert result.stores == () and not result.ok
    if expected is None:
        assert result.errors[0].startswith(f"{path}: invalid YAML: ")
    else:
        assert list(result.errors) == [line.format(f=path, d=fleet) for line in expected]


def test_a_broken_file_keeps_its_last_good_version(
    fleet: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    files = watcher(fleet, clock)
    before = files.stores
    caplog.set_level(logging.INFO, logger="exporter.config.watch")
    (fleet / "stores.d" / "b.yaml").write_text("stores:\n- {name: beta, domian: x}\n")
    clock.now += 0.2
    assert files.refresh() is False  # within the interval: not looked at
    assert settle(files, clock) is False  # broken: last good version kept
    assert files.stores == before and files.invalid == 1
    assert files.errors == (
        f"{fleet}/stores.d/b.yaml: stores[0].domian: unknown key (did you mean domain?)",
        f"{fleet}/stores.d/b.yaml: stores[0]: missing domain or base_url: set exactly one of them",
    )
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 2 and all(vars(r)["file"] == f"{fleet}/stores.d/b.yaml" for r in logged)
    assert files.refresh(force=True) is False
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # not again
    # fixed: its new version applies
    (fleet / "stores.d" / "b.yaml").write_text("stores:\n- {name: delta, base_url: 'http://d'}\n")
    (fleet / "secrets" / "delta").write_text("delta-token-0123456789")
    assert settle(files, clock) is True
    assert [s.name for s in files.stores] == ["acme", "delta"] and files.invalid == 0


def test_a_broken_file_at_start_contributes_nothing_until_fixed(fleet: Path) -> None:
    (fleet / "secrets" / "acme").unlink()
    clock = Clock()
    files = watcher(fleet, clock)
    assert [s.name for s in files.stores] == ["beta", "gamma"] and files.invalid == 1
    (fleet / "secrets" / "acme").write_text("acme-token-0123456789")  # only the token changes
    clock.now += 1.0
    assert files.refresh() is True
    assert [s.name for s in files.stores] == ["acme", "beta", "gamma"] and files.invalid == 0


def test_a_name_defined_twice_is_an_error_of_the_later_definition(fleet: Path) -> None:
    (fleet / "stores.d" / "0.yaml").write_text(
        "stores:\n- {name: main, domain: m.example.com, access_token_env: TOKEN}\n"
    )
    (fleet / "stores.d" / "c.yaml").write_text("stores:\n- {name: beta, domain: c.example.com}\n")
    files = watcher(fleet)
    assert [s.name for s in files.stores] == ["acme", "beta", "gamma"]
    assert files.invalid == 2
    assert files.errors == (
        f'{fleet}/stores.d/0.yaml: stores[0].name: duplicate store name "main" (first at '
        f"{fleet}/config.yaml stores[0])",
        f'{fleet}/stores.d/c.yaml: stores[0].name: duplicate store name "beta" (first at '
        f"{fleet}/stores.d/b.yaml stores[0])",
    )
    assert files.stores[1].base_url == "https://beta.example.com"


def test_files_that_appear_and_vanish(fleet: Path) -> None:
    clock = Clock()
    files = watcher(fleet, clock)
    os.unlink(fleet / "stores.d" / "a.yaml")
    clock.now += 1.0
    assert files.refresh() is True
    assert [s.name for s in files.stores] == ["beta", "gamma"]
    (fleet / "stores.d" / "z.yaml").write_text("stores: []\n")
    clock.now += 1.0
    assert settle(files, clock) is False  # an empty list of stores is valid, and changes nothing
    assert files.invalid == 0


def test_shared_domain_across_files_is_warned(fleet: Path) -> None:
    (fleet / "stores.d" / "c.yaml").write_text(
        "stores:\n- {name: other, domain: main.example.com, access_token_env: TOKEN}\n"
    )
    files = watcher(fleet)
    assert files.warnings == (
        f'{fleet}/stores.d/c.yaml: stores[0]: store "other" uses the same API address '
        '(https://main.example.com) as store "main": Shoplazza counts their requests against '
        "one budget",
    )


def test_config_check_reports_store_file_errors(
    fleet: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    assert check_config(str(fleet / "config.yaml"), None) == 0
    assert "configuration is valid: 4 stores" in capsys.readouterr().out
    (fleet / "stores.d" / "b.yaml").write_text("stores:\n- {name: beta, timeout: never}\n")
    assert check_config(str(fleet / "config.yaml"), None) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{fleet}/stores.d/b.yaml: stores[0]: missing domain or base_url: set exactly one of them",
        f'{fleet}/stores.d/b.yaml: stores[0].timeout: invalid duration "never" (use e.g. '
        '"500ms", "5s", "1m30s", "24h", "1d" or a number of seconds)',
    ]


def test_config_check_reports_a_state_file_in_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", TOKEN)
    path = write(
        tmp_path / "c.yaml",
        "state_file: /nonexistent/dir/state.json\n"
        "stores:\n- {name: a, domain: a.com, access_token_env: TOKEN}\n",
    )
    assert check_config(path, None) == 1
    assert capsys.readouterr().err == (
        f'{path}: state_file: directory "/nonexistent/dir" does not exist\n'
    )


def test_the_exporter_serves_store_file_stores_and_counts_invalid_files(fleet: Path) -> None:
    (fleet / "stores.d" / "c.yaml").write_text("stores: nope\n")
    exporter = make_exporter(str(fleet / "config.yaml"), environ=ENV)
    try:
        view = exporter.view()
        assert sorted(s.name for s in view.stores) == ["acme", "beta", "gamma", "main"]
        assert view.store_files_invalid == 1
        (fleet / "stores.d" / "c.yaml").write_text(
            "stores:\n- {name: new, domain: n.example.com, access_token_env: TOKEN}\n"
        )
        os.unlink(fleet / "stores.d" / "a.yaml")
        exporter.refresh(0.1)  # every scrape looks at the store files first
        view = exporter.view()
        assert sorted(s.name for s in view.stores) == ["beta", "gamma", "main"]  # new: unsettled
        wait_until(lambda: "new" in {s.name for s in exporter.view().stores}, timeout=5.0)
        view = exporter.view()
        assert sorted(s.name for s in view.stores) == ["beta", "gamma", "main", "new"]
        assert view.store_files_invalid == 0
        # nobody scrapes: the one-second timer notices the change by itself
        (fleet / "stores.d" / "d.yaml").write_text("stores: [1]\n")
        wait_until(lambda: exporter.view().store_files_invalid == 1, timeout=5.0)
    finally:
        exporter.close()


def test_a_name_taken_later_by_the_main_file_drops_the_file_version(fleet: Path) -> None:
    (fleet / "stores.d" / "c.yaml").write_text(
        "stores:\n- {name: zeta, domain: z.example.com, access_token_env: TOKEN}\n"
    )
    files = watcher(fleet)
    assert [s.name for s in files.stores] == ["acme", "beta", "gamma", "zeta"]
    main = fleet / "config.yaml"
    main.write_text(
        main.read_text() + "  - {name: zeta, domain: m.example.com, access_token_env: TOKEN}\n"
    )
    files.configure(load(fleet))
    files.refresh(force=True)
    names = [s.name for s in files.stores]
    assert names == ["acme", "beta", "gamma"]  # the main file's zeta wins; no name twice
    assert files.invalid == 1
    assert files.errors[0].startswith(f"{fleet}/stores.d/c.yaml: stores[0].name: duplicate store")


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    | st.sampled_from(["a.com", "TOKEN", "5s", "{store}", "x/{store}", "http://h"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from(["stores", "name", "domain", "base_url", "access_token_env",
                         "access_token_file", "task_ids", "task_id_files", "id", "labels",
                         "stuck_after", "timeout"]) | st.text(max_size=5),
        children,
        max_size=4,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_VALUES)
def test_any_store_file_gives_stores_or_errors(data: object) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "s.yaml"
        path.write_text(yaml.safe_dump(data))
        result = parse_store_file(str(path), StoreDefaults(base_dir=directory), ENV)
    assert result.ok != bool(result.errors)
    assert all(line.startswith(f"{path}: ") for line in result.errors)
    assert TOKEN not in repr(result)
