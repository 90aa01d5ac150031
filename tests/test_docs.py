"""The documentation holds together: links resolve, figures come from the benchmarks.

- every relative link and ``#anchor`` in README.md and docs/*.md points at a file that
  exists and, for a Markdown file, at one of its headings (GitHub's slugs);
- docs/performance.md has one section per benchmark in bench/, each written by the
  benchmark (``--write-docs``): a heading, the command, the date, a table;
- every link to a section of docs/performance.md (``performance.md#`` and a name) in the
  code, the tests, the deployment files or the docs names a section that exists.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bench.common
from bench import store_files
from bench.common import Report, replace_section, section
from tests.helpers import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
PERFORMANCE = ROOT / "docs" / "performance.md"
BENCHES = sorted(
    path.stem for path in (ROOT / "bench").glob("*.py") if path.stem not in ("__init__", "common")
)
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_SECTION = re.compile(
    r"^<!-- bench:([\w-]+) -->\n(.*?)^<!-- /bench:\1 -->$", re.MULTILINE | re.DOTALL
)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", _FENCE.sub("", text), re.MULTILINE):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[str]:
    """The targets of a Markdown text's links and images, outside code."""
    return _LINK.findall(_CODE_SPAN.sub("", _FENCE.sub("", text)))


def test_slug_follows_github() -> None:
    assert slug("Many stores: store files") == "many-stores-store-files"
    assert slug("`/metrics` at scale") == "metrics-at-scale"
    assert slug("ShoplazzaUploadTaskStuck") == "shoplazzauploadtaskstuck"
    assert slug("Poll budget") == "poll-budget"
    assert anchors("# A\n## B\n```\n# not a heading\n```\n## B\n") == {"a", "b", "b-1"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text("utf-8")):
            broken.append(f"{target}: no heading with the anchor #{anchor}")
    assert not broken, "\n".join(broken)


def bench_sections() -> dict[str, str]:
    return dict(_SECTION.findall(PERFORMANCE.read_text(encoding="utf-8")))


def test_every_benchmark_has_a_section_written_by_it() -> None:
    sections = bench_sections()
    assert set(BENCHES) <= set(sections), f"no section for {set(BENCHES) - set(sections)}"
    for name, body in sections.items():
        module = name.split("-", 1)[0]  # fleet-tls: bench/fleet.py --tls
        assert module in BENCHES, f"section {name}: no bench/{module}.py"
        assert re.match(r"## \S", body), f"section {name} has no heading"
        command = re.search(
            r"^Command: `\.venv/bin/python -m bench\.(\w+)(?: [^`]*)?`$", body, re.M
        )
        assert command and command.group(1) == module, f"section {name} names no command"
        assert "--write-docs" in command.group(0) or "--markdown" in command.group(0)
        assert re.search(r"^Date: \d{4}-\d{2}-\d{2} \(", body, re.M), f"{name} has no date"
        assert re.search(r"^\| .* \|$\n^\| -+", body, re.M), f"section {name} has no table"


def test_every_cited_performance_anchor_exists() -> None:
    cited: dict[str, set[str]] = {}
    for folder in ("exporter", "bench", "tests", "deploy", "docs", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".yml", ".sh", ""):
                for anchor in re.findall(r"performance\.md#([\w-]+)", path.read_text("utf-8")):
                    cited.setdefault(anchor, set()).add(str(path.relative_to(ROOT)))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for anchor in re.findall(r"performance\.md#([\w-]+)", readme):
        cited.setdefault(anchor, set()).add("README.md")
    assert {"fleet", "render"} <= set(cited)
    known = anchors(PERFORMANCE.read_text(encoding="utf-8"))
    missing = {anchor: files for anchor, files in cited.items() if anchor not in known}
    assert not missing, missing


def test_replace_section_replaces_only_its_own() -> None:
    doc = (
        "# P\n\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n"
        "\n<!-- bench:b -->\nb\n<!-- /bench:b -->\n"
    )
    new = "<!-- bench:a -->\nnew a\n<!-- /bench:a -->"
    assert replace_section(doc, "a", new) == doc.replace("old a", "new a")
    assert replace_section(doc, "c", "<!-- bench:c -->\nc\n<!-- /bench:c -->") == (
        doc + "\n<!-- bench:c -->\nc\n<!-- /bench:c -->\n"
    )
    # a name that is a prefix of another's does not take its section
    doc2 = "<!-- bench:fleet-tls -->\nt\n<!-- /bench:fleet-tls -->\n"
    assert replace_section(doc2, "fleet", "F").startswith(doc2.rstrip("\n"))


def test_section_names_command_date_and_what_differs() -> None:
    report = Report("fleet", "Fleet over HTTPS", "| a |\n| -: |\n| 1 |", variant="tls")
    when = datetime(2026, 1, 2, tzinfo=UTC)
    text = section(report, ["--tls", "--scenario", "5000x2"], ["--scenario", "--tls"], when)
    assert text.startswith("<!-- bench:fleet-tls -->\n## Fleet over HTTPS\n")
    assert "Command: `.venv/bin/python -m bench.fleet --tls --scenario 5000x2`" in text
    assert "Date: 2026-01-02 (" in text
    assert "Not the default run: --scenario, --tls differ" in text
    assert text.endswith("| 1 |\n\n<!-- /bench:fleet-tls -->")


def test_write_docs_replaces_the_benchmarks_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real (tiny) run of bench.store_files with --write-docs."""
    target = tmp_path / "performance.md"
    target.write_text(
        "# Performance\n\n<!-- bench:store_files -->\nold\n<!-- /bench:store_files -->\n\nafter\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(bench.common, "PERFORMANCE_MD", target)
    store_files.main(["--files", "3", "--rounds", "1", "--write-docs"])
    text = target.read_text(encoding="utf-8")
    (body,) = [body for name, body in _SECTION.findall(text) if name == "store_files"]
    assert "old" not in body and text.endswith("\nafter\n")
    assert (
        "Command: `.venv/bin/python -m bench.store_files --files 3 --rounds 1 --write-docs`" in body
    )
    assert "| first read (parse all, read all tokens) |" in body
    assert body.strip() in capsys.readouterr().out
