"""Redaction of a token, whole or any run of 12 of its characters, from API text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.demo.simulator import Reply, Simulator
from exporter.logs import setup_logging
from exporter.polling.redaction import REDACTED, WINDOW, Redactor
from exporter.web.routes import App
from tests.helpers import TOKEN, config_yaml, make_exporter, write, wsgi

# Echoes that gave the token away before: all but one character, its middle, its start.
PARTS = {
    "all but the last": TOKEN[:-1],
    "all but the first": TOKEN[1:],
    "the middle": TOKEN[4:-4],
    "the first 12": TOKEN[:12],
    "the last 12": TOKEN[-12:],
}


def naive(token: str, text: str) -> str:
    """The definition, slowly: every character inside a 12-run of the token is redacted."""
    windows = {token[i : i + WINDOW] for i in range(len(token) - WINDOW + 1)}
    covered = [False] * len(text)
    for start in range(len(text) - WINDOW + 1):
        if text[start : start + WINDOW] in windows:
            covered[start : start + WINDOW] = [True] * WINDOW
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
@pytest.mark.parametrize("around", [("", ""), ("token=", "."), ("x" * 5, "y" * 7)])
def test_every_run_of_12_is_redacted(part: str, around: tuple[str, str]) -> None:
    before, after = around
    assert Redactor(TOKEN).clean(before + part + after) == before + REDACTED + after


def test_runs_of_11_are_left_alone() -> None:
    redactor = Redactor(TOKEN)
    for start in range(len(TOKEN) - 10):
        text = f"id {TOKEN[start : start + 11]} ok"
        assert redactor.clean(text) == text


def test_two_echoes_and_a_stitched_one() -> None:
    redactor = Redactor(TOKEN)
    text = f"a {TOKEN} b {TOKEN[3:17]} c"
    assert redactor.clean(text) == f"a {REDACTED} b {REDACTED} c"
    assert redactor.clean(TOKEN + TOKEN) == REDACTED  # touching runs are one


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter than 12"):
        Redactor("x" * 11)


@settings(max_examples=300, deadline=None)
@given(
    token=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=40),
    pieces=st.lists(
        st.one_of(
            st.text(st.sampled_from("ab-_=/xyz0123"), max_size=20),
            st.tuples(st.integers(0, 40), st.integers(0, 40)),
        ),
        max_size=8,
    ),
)
def test_same_as_the_definition(token: str, pieces: list[str | tuple[int, int]]) -> None:
    """Random texts made of noise and slices of the token redact as the naive definition."""
    text = "".join(p if isinstance(p, str) else token[p[0] : p[0] + p[1]] for p in pieces)
    assert Redactor(token).clean(text) == naive(token, text)


@pytest.mark.parametrize("part", PARTS.values(), ids=PARTS.keys())
def test_partial_echoes_never_reach_logs_pages_or_json(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture, part: str
) -> None:
    """An API echoing part of the token: not in the log lines, the page, the JSON."""
    sim.add_task("t1", total=3, finished=1)
    sim.add_task("t2", total=3, finished=1)
    sim.task("t2").failure_list.append(
        {"origin_link": f"https://img/{part}.jpg", "reason": f"bad token {part}"}
    )
    echo = json.dumps({"error": f"invalid access-token {part}"}).encode()
    sim.behave("t1", Reply(status=401, body=echo))
    exporter = make_exporter(
        write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2"], min_poll_interval=0))
    )
    caplog.set_level(logging.DEBUG)
    try:
        exporter.refresh(5)
        app = App(exporter)
        shown = [wsgi(app, path)[2].decode() for path in ("/", "/api/v1/tasks")]
        sim.behave("t1", Reply(status=302, headers={"Location": f"http://evil/?t={part}"}))
        exporter.refresh(5)
        shown.append(wsgi(app, "/api/v1/tasks")[2].decode())
    finally:
        exporter.close()
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert f"invalid access-token {REDACTED}" in logged
    assert f"redirect to 'http://evil/?t={REDACTED}'" in logged
    escaped = REDACTED.replace("<", "&lt;").replace(">", "&gt;")
    assert f"bad token {escaped}" in shown[0] and f"bad token {REDACTED}" in shown[1]
    assert f"invalid access-token {REDACTED}" in shown[1] and f"/{REDACTED}.jpg" in shown[1]
    assert f"?t={REDACTED}" in shown[2]
    for text in (logged, *shown):
        assert not leaks(text)


def leaks(text: str) -> bool:
    """Any run of 12 of the token's characters in ``text``."""
    return any(TOKEN[i : i + WINDOW] in text for i in range(len(TOKEN) - WINDOW + 1))


def test_redaction_runs_on_every_text_through_the_logging_formatter(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The formatted stderr lines, not only the records, are free of the echo."""
    sim.add_task("t1", total=3, finished=1)
    echo = json.dumps({"error": f"invalid access-token {TOKEN[:-1]}"}).encode()
    sim.behave("t1", Reply(status=401, body=echo))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("debug", "json")
    try:
        exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
        try:
            exporter.refresh(5)
        finally:
            exporter.close()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert f"invalid access-token {REDACTED}" in err
    assert not leaks(err)
