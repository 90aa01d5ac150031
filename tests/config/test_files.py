"""Files another party writes: bounded globs, paths kept inside, appends read alone."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.cli import check_config
from exporter.config import ConfigError, parse_config
from exporter.config.files import glob_base
from exporter.config.watch import TaskFiles, expand_task_id_files
from tests.helpers import TOKEN, TOKEN_ENV, make_exporter, write

SECRET = "Token-from-the-stores-secret-file"


def finishes(work: Callable[[], object], timeout: float = 20.0) -> object:
    """``work()``'s result; fails (instead of hanging the suite) when it never ends."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "never finished"
    return out[0]


def files(pattern: str, secrets: frozenset[str] = frozenset()) -> TaskFiles:
    watcher = TaskFiles("shop", [pattern], clock=lambda: 0.0, secrets=lambda: secrets)
    watcher.refresh(force=True)
    return watcher


def test_a_loop_of_links_under_double_star_costs_nothing(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("t-a\n")
    (tmp_path / "sub" / "b.txt").write_text("t-b\n")
    os.symlink(".", tmp_path / "a")
    os.symlink(".", tmp_path / "b")
    found = finishes(lambda: expand_task_id_files([f"{tmp_path}/**/*.txt"]))
    assert found == [f"{tmp_path}/a.txt", f"{tmp_path}/sub/b.txt"]


def test_glob_base_is_the_part_before_the_first_wildcard() -> None:
    assert glob_base("/var/run/tasks/*.txt") == "/var/run/tasks"
    assert glob_base("/var/run/tasks/**/x/*.txt") == "/var/run/tasks"
    assert glob_base("/var/[[]odd]/*.txt") == "/var/[odd]"  # glob.escape'd: literal
    assert glob_base("/var/run/tasks.txt") == "/var/run"
    assert glob_base("/*.txt") == "/"


def test_links_that_leave_the_base_are_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "shop").write_text(SECRET + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "ok.txt").write_text("good-1\n")
    os.symlink("../secrets/shop", tasks / "token.txt")
    os.symlink("/proc/self/environ", tasks / "environ.txt")
    caplog.set_level(logging.DEBUG)
    watcher = files(f"{tasks}/*.txt")
    assert watcher.ids == {"good-1"}
    skipped = {vars(r)["file"]: vars(r)["err"] for r in caplog.records if "file" in vars(r)}
    assert skipped == {
        f"{tasks}/token.txt": "resolves outside the directory its glob starts from",
        f"{tasks}/environ.txt": "resolves outside the directory its glob starts from",
    }
    assert SECRET not in caplog.text


def test_kubernetes_configmap_links_stay_inside_and_follow_updates(tmp_path: Path) -> None:
    mount = tmp_path / "upload-tasks"
    mount.mkdir()

    def publish(version: str, text: str) -> None:
        """What the kubelet does: a new timestamped directory, ..data swapped atomically."""
        (mount / version).mkdir()
        (mount / version / "ids.txt").write_text(text)
        os.symlink(version, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    publish("..2024_01_01_00_00_00.1", "t1\nt2\n")
    os.symlink("..data/ids.txt", mount / "ids.txt")
    watcher = files(f"{mount}/*.txt")
    assert watcher.ids == {"t1", "t2"}
    publish("..2024_01_01_00_05_00.2", "t2\nt3\n")
    assert watcher.refresh(force=True) is True
    assert watcher.ids == {"t2", "t3"}
    deep = files(f"{mount}/**/*.txt")  # hidden ..dirs are not walked: each id once
    assert deep.ids == {"t2", "t3"}


def test_a_fifo_or_a_device_is_never_opened(tmp_path: Path) -> None:
    (tmp_path / "ok.txt").write_text("good-1\n")
    os.mkfifo(tmp_path / "fifo.txt")
    os.symlink("/dev/zero", tmp_path / "zero.txt")
    watcher = finishes(lambda: files(f"{tmp_path}/*.txt"))
    assert isinstance(watcher, TaskFiles) and watcher.ids == {"good-1"}


def test_a_skipped_line_is_logged_with_file_line_and_reason_never_its_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("good-1\nSECRET=hunter2 is not an id\n../etc/passwd\n")
    caplog.set_level(logging.WARNING)
    watcher = files(f"{tmp_path}/*.txt")
    assert watcher.ids == {"good-1"}
    errs = [vars(r)["err"] for r in caplog.records]
    assert errs == [
        f"{path}:2: invalid task id (use [A-Za-z0-9_-], 1 to 128 characters)",
        f"{path}:3: invalid task id (use [A-Za-z0-9_-], 1 to 128 characters)",
    ]
    assert "hunter2" not in caplog.text and "passwd" not in caplog.text


def test_a_line_equal_to_a_configured_token_is_never_a_task_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ids.txt").write_text(f"good-1\n{TOKEN}\n  {TOKEN}  # pasted\n")
    path = write(
        tmp_path / "c.yaml",
        "stores:\n"
        f"  - {{name: shop, base_url: 'http://127.0.0.1:9', access_token_env: {TOKEN_ENV},\n"
        "     task_id_files: ['tasks/*.txt']}\n",
    )
    caplog.set_level(logging.DEBUG)
    exporter = make_exporter(path)
    try:
        (store,) = exporter.view().stores
        assert [task.task_id for task in store.tasks] == ["good-1"]
    finally:
        exporter.close()
    assert TOKEN not in caplog.text


def test_appended_lines_are_read_alone(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"t{i}\n" for i in range(1000)))
    watcher = files(f"{tmp_path}/*.txt")
    assert len(watcher.ids) == 1000 and watcher.added is None  # read whole
    with path.open("a") as handle:
        handle.write("new-1\nnew-2 source=x\n")
    assert watcher.refresh(force=True) is True
    added: object = watcher.added  # (mypy keeps the narrowing of the first assert)
    assert added == {"new-1", "new-2"}  # what the appended lines add, nothing more
    assert len(watcher.ids) == 1002 and watcher.labels["new-2"] == (("source", "x"),)
    # an unterminated last line grows: its id is the whole line, the partial one goes
    with path.open("a") as handle:
        handle.write("par")
    watcher.refresh(force=True)
    assert "par" in watcher.ids
    with path.open("a") as handle:
        handle.write("tial\n")
    watcher.refresh(force=True)
    assert "partial" in watcher.ids and "par" not in watcher.ids


def test_a_file_rewritten_longer_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("a-1\na-2\n")
    watcher = files(f"{tmp_path}/*.txt")
    with path.open("r+") as handle:  # same inode, longer, but the start changed
        handle.write("b-1\nb-2\nb-3\n")
    assert watcher.refresh(force=True) is True
    assert watcher.added is None and watcher.ids == {"b-1", "b-2", "b-3"}


@pytest.mark.parametrize("name", [".", ".."])
def test_store_names_dot_and_dotdot_are_errors(name: str) -> None:
    text = f"stores:\n- {{name: '{name}', domain: a.com, access_token_env: T}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={"T": TOKEN})
    assert info.value.errors == [
        f'config.yaml: stores[0].name: invalid store name "{name}" (not . or ..)'
    ]


def test_plain_http_to_a_host_that_is_not_loopback_is_warned() -> None:
    text = (
        "stores:\n"
        "- {name: a, base_url: 'http://api.example.com', access_token_env: T}\n"
        "- {name: b, base_url: 'http://127.0.0.2:8080', access_token_env: T}\n"
        "- {name: c, base_url: 'http://[::1]:8080', access_token_env: T}\n"
        "- {name: d, base_url: 'http://localhost:8080', access_token_env: T}\n"
        "- {name: e, base_url: 'https://api.example.com/x', access_token_env: T}\n"
    )
    config = parse_config(text, environ={"T": TOKEN})
    assert config.warnings == (
        "config.yaml: stores[0].base_url: plain http:// to api.example.com, which is not "
        "loopback: the access token travels in clear text",
    )


def test_config_check_ends_on_a_loop_of_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    (tmp_path / "stores.d").mkdir()
    os.symlink(".", tmp_path / "stores.d" / "a")
    os.symlink(".", tmp_path / "stores.d" / "b")
    path = write(
        tmp_path / "c.yaml",
        "store_files: ['stores.d/**/*.yaml']\n"
        f"stores:\n- {{name: s, domain: a.com, access_token_env: {TOKEN_ENV},"
        " task_id_files: ['stores.d/**/*.txt']}\n",
    )
    assert finishes(lambda: check_config(path, None)) == 0


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_state_file_that_is_a_fifo_or_a_device_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    state = tmp_path / "state.json"
    if kind == "fifo":
        os.mkfifo(state)
    else:
        os.symlink("/dev/zero", state)
    path = write(
        tmp_path / "c.yaml",
        "state_file: state.json\n"
        f"stores:\n- {{name: s, domain: a.com, access_token_env: {TOKEN_ENV}}}\n",
    )
    assert finishes(lambda: check_config(path, None)) == 1
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert capsys.readouterr().err == (
        f'{path}: state_file: "{state}" is {what}, not a regular file\n'
    )
