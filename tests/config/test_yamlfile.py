"""The strict YAML loader: libyaml for speed, the pure-Python loader for error messages."""

from __future__ import annotations

import pytest
import yaml

from exporter.config import yamlfile
from exporter.config.yamlfile import YamlError, YamlInt, load_yaml

DOC = """
stores:
  - name: a
    burst: 0x10
    task_ids: [t1, {id: t2, labels: {source: "x y"}}]
    timeout: 1m30s
    flag: yes
"""


def test_libyaml_parses_when_pyyaml_has_it() -> None:
    assert (yamlfile._FastLoader is not yamlfile.StrictLoader) == yaml.__with_libyaml__


def test_both_loaders_build_the_same_values() -> None:
    fast = yaml.load(DOC, Loader=yamlfile._FastLoader)
    slow = yaml.load(DOC, Loader=yamlfile.StrictLoader)
    assert fast == slow == load_yaml(DOC)
    burst = fast["stores"][0]["burst"]
    assert isinstance(burst, YamlInt) and burst == 16 and burst.text == "0x10"


@pytest.mark.parametrize("loader", [yamlfile._FastLoader, yamlfile.StrictLoader])
def test_both_loaders_refuse_duplicate_keys(loader: type) -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match='duplicate key "name"'):
        yaml.load("name: a\nname: b\n", Loader=loader)


def test_a_refused_document_gets_the_pure_python_message() -> None:
    with pytest.raises(YamlError) as info:
        load_yaml("a: [" * 1001)
    assert str(info.value) == "nested too deeply"


def test_values_come_back_compacted_with_every_type_and_alias_intact() -> None:
    """load_yaml returns a fresh copy of the parsed values: the same types, the integer's
    text, and aliases still one object (docs/design.md, "Configuration")."""
    text = "a: 0123\nb: &x [1, {k: v}]\nc: *x\nd: 2020-01-02\ne: !!binary aGk=\nf: !!set {p, q}\n"
    parsed = yaml.load(text, Loader=yamlfile._FastLoader)
    data = load_yaml(text)
    assert isinstance(data, dict) and data == parsed
    assert isinstance(data["a"], YamlInt) and data["a"].text == "0123" and data["a"] == 0o123
    assert data["b"] is data["c"]
    assert {type(v) for v in data.values()} == {type(v) for v in parsed.values()}


def test_values_too_deep_to_copy_are_kept_as_parsed() -> None:
    deep: list[object] = []
    inner = deep
    for _ in range(200_000):
        inner.append([])
        inner = inner[0]  # type: ignore[assignment]
    assert yamlfile._compact(deep) is deep
    shallow = {"k": [1, 2]}
    copy = yamlfile._compact(shallow)
    assert copy == shallow and copy is not shallow
