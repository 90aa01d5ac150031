"""Log lines: one event a line, control characters escaped, in logfmt and JSON."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.demo.simulator import Reply, Simulator
from exporter.logs import setup_logging
from tests.helpers import TOKEN, ExporterProcess, config_yaml, make_exporter, write

HOSTILE = "bad\x00thing \x1b[31mred\x1b[0m\nts=x level=error msg=forged\r\x7f\x85\u2028\u2029 end"
RAW_UNSAFE = ["\x00", "\x1b", "\n", "\r", "\x7f", "\x85", "\u2028", "\u2029"]


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    yield logging.getLogger("exporter.test"), stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_control_characters_are_escaped(
    logger: tuple[logging.Logger, io.StringIO], fmt: str
) -> None:
    log, stream = logger
    setup_logging("info", fmt, stream)
    log.warning("poll failed: %s", HOSTILE, extra={"err": HOSTILE, "lone": "a\ud800b"})
    (line,) = lines_of(stream)
    for char in [*RAW_UNSAFE, "\ud800"]:
        assert char not in line
    assert "\\u0000" in line and "\\u001b[31m" in line and "\\u2028" in line
    assert "\\ud800" in line
    line.encode("utf-8")  # no lone surrogate left to break the stream
    if fmt == "json":
        fields = json.loads(line)
        assert fields["err"] == HOSTILE and fields["lone"] == "a\ud800b"
        assert fields["msg"] == f"poll failed: {HOSTILE}"
    else:
        assert ' err="bad\\u0000thing \\u001b[31mred' in line
        assert "\\u000ats=x level=error msg=forged\\u000d" in line


FORMAT_CHARS = "\u202e\u200b\ufeff\u2066\u00ad\U000e0001"  # Cf: RLO, ZWSP, BOM, LRI, SHY, tag


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_format_characters_are_escaped(
    logger: tuple[logging.Logger, io.StringIO], fmt: str
) -> None:
    """U+202E makes "exe.txt" of "\u202etxt.exe": a line must read as it holds."""
    log, stream = logger
    setup_logging("info", fmt, stream)
    text = f"file {FORMAT_CHARS} é 中 \u00a0 🙂 end"
    log.warning("failed: %s", text, extra={"reason": text})
    (line,) = lines_of(stream)
    assert not any(c in line for c in FORMAT_CHARS)
    assert "\\u202e\\u200b\\ufeff\\u2066\\u00ad\\udb40\\udc01 é 中 \u00a0 🙂 end" in line
    if fmt == "json":
        assert json.loads(line)["reason"] == text


def test_logfmt_keeps_plain_values_bare(logger: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = logger
    setup_logging("info", "logfmt", stream)
    log.info("plain", extra={"store": "acme", "quote": 'say "hi"', "slash": "a\\b"})
    (line,) = lines_of(stream)
    assert ' store=acme quote="say \\"hi\\"" slash="a\\\\b"' in line


@settings(max_examples=300, deadline=None)
@given(
    st.text() | st.text(st.characters(categories=["Cf", "Cc", "Zl", "Zp", "Ll"])),
    st.sampled_from(["logfmt", "json"]),
)
def test_any_text_gives_one_encodable_line(text: str, fmt: str) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("info", fmt, stream)
        logging.getLogger("exporter.test").warning(text, extra={"err": text})
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    (line,) = lines_of(stream)
    assert not any(c in line for c in RAW_UNSAFE)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in line)
    line.encode("utf-8")
    if fmt == "json":
        assert json.loads(line)["err"] == text


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_api_control_characters_never_reach_the_log_raw(
    sim: Simulator, tmp_path: Path, fmt: str
) -> None:
    sim.add_task(
        "files",
        total=2,
        finished=2,
        status=1,
        failure_list=[{"origin_link": "http://img/\x00a.jpg", "reason": HOSTILE}],
    )
    error = json.dumps({"error": HOSTILE}).encode()
    sim.behave("broken", Reply(status=422, body=error))
    cfg = write(tmp_path / "c.yaml", config_yaml(sim.url, ["files", "broken"]))
    proc = ExporterProcess(["--config.file", cfg, "--log.format", fmt], tmp_path)
    try:
        proc.wait_ready()
        assert proc.get("/metrics").status_code == 200
        raw = proc.log_path.read_bytes()
        while b"upload task file failed" not in raw or b"poll failed" not in raw:
            assert proc.get("/metrics").status_code == 200  # bounded by the request timeout
            raw = proc.log_path.read_bytes()
            assert len(raw) < 1_000_000
    finally:
        assert proc.stop() == 0
    raw = proc.log_path.read_bytes()
    for char in RAW_UNSAFE:
        if char != "\n":  # one event a line: checked below, by parsing every line
            assert char.encode() not in raw, char
    lines = raw.decode("utf-8").splitlines()
    events = [line for line in lines if "bad\\u0000thing" in line]
    assert len(events) >= 2  # the failed file and the failed poll, each on one line
    if fmt == "json":
        parsed = [json.loads(line) for line in lines]
        reasons = [p.get("reason") for p in parsed] + [p.get("err") for p in parsed]
        assert HOSTILE in reasons
        assert any(p.get("err") == f"HTTP 422: {HOSTILE}" for p in parsed)
    else:
        assert all(line.startswith("ts=") for line in lines)


def test_token_absent_from_the_rate_limited_line(
    logger: tuple[logging.Logger, io.StringIO], sim: Simulator, tmp_path: Path
) -> None:
    _, stream = logger
    setup_logging("debug", "logfmt", stream)
    sim.add_task("t1", total=2, finished=1)
    echo = json.dumps({"error": f"too many requests for access-token {TOKEN}"}).encode()
    sim.script("t1", Reply(status=429, body=echo, headers={"Retry-After": "1", "X-Token": TOKEN}))
    exporter = make_exporter(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"])))
    try:
        exporter.refresh(5)
    finally:
        exporter.close()
    assert sim.count("t1", status=429) == 1
    lines = stream.getvalue().splitlines()
    assert any("rate limited" in line for line in lines)
    assert any("poll failed" in line and "<redacted>" in line for line in lines)
    assert TOKEN not in stream.getvalue()
