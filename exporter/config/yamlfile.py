"""Strict YAML for the configuration and web configuration files.

Duplicate keys are errors (YAML would silently keep the last one), integers remember how
they were written (task id ``0123`` stays ``"0123"``), and error messages never quote the
offending source line or value: a line of a configuration file may hold a token.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Hashable
from typing import Any

import yaml


class YamlError(ValueError):
    """The text is not valid YAML; the message says where and why, quoting no value."""


class YamlInt(int):
    """An int that remembers how it was written."""

    text: str


def quoted(text: str, limit: int = 100) -> str:
    """``text`` as a JSON string for messages, cut after ``limit`` characters."""
    return json.dumps(text if len(text) <= limit else text[:limit] + "...")


class _Strict:
    """Rejects duplicate mapping keys and keeps the text of integers (a loader mixin)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        """Build a mapping, refusing a key given twice (merge keys aside)."""
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                shown = quoted(key) if isinstance(key, str) else getattr(key, "text", repr(key))
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {shown}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc, no-any-return]

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Build a value; an impossible one is reported by its kind, not its text."""
        try:
            return super().construct_object(node, deep=deep)  # type: ignore[misc]
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            # e.g. "2020-13-45" resolves to an impossible date; the exception's own text
            # may quote the value (a token, perhaps), so only say which kind failed
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid {kind} value (quote it to make it a string)", node.start_mark
            ) from None


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    assert isinstance(node, yaml.ScalarNode)
    result = YamlInt(loader.construct_yaml_int(node))
    result.text = str(node.value)
    return result


class StrictLoader(_Strict, yaml.SafeLoader):
    """The pure-Python strict loader: its error messages are the ones users see."""


# libyaml's parser, when PyYAML was built with it, reads a fleet's configuration several
# times faster and leaves far less freed memory behind (docs/performance.md#design-measurements);
# its error messages differ, so a file it refuses is read again by StrictLoader for the
# message (docs/design.md, "Configuration").
_CLoader: Any = getattr(yaml, "CSafeLoader", None)
_FastLoader: Any = type("_FastLoader", (_Strict, _CLoader), {}) if _CLoader else StrictLoader

for _loader in {StrictLoader, _FastLoader}:
    _loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def describe(exc: BaseException) -> str:
    """Describe a YAML error without the source snippet (the line may hold a token)."""
    if isinstance(exc, yaml.MarkedYAMLError) and (exc.problem or exc.context):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        text = f"{where}{exc.problem or exc.context}"
        if exc.problem and exc.context:
            cmark, at = exc.context_mark, ""
            if cmark is not None and mark is not None and cmark.line != mark.line:
                at = f" at line {cmark.line + 1}, column {cmark.column + 1}"
            text += f" ({exc.context}{at})"
        return text
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.reader.ReaderError):
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "?")
        return f"unacceptable character #x{code:04x} at position {exc.position}: {exc.reason}"
    return f"cannot be parsed ({type(exc).__name__})"  # str(exc) might quote a value


def load_yaml(text: str | bytes) -> object:
    """Parse one YAML document strictly; raises YamlError."""
    if _FastLoader is not StrictLoader:
        try:
            return _compact(yaml.load(text, Loader=_FastLoader))
        except Exception:  # read again below, for the established message
            pass
    try:
        return _compact(yaml.load(text, Loader=StrictLoader))
    except Exception as exc:  # PyYAML also raises ValueError, RecursionError, ...
        raise YamlError(describe(exc)) from None


def _compact(data: object) -> object:
    """``data`` again, made afresh once everything the parser allocated is freed.

    PyYAML builds a node (with two marks) for every scalar before the values, several times
    the memory of the values, and the values, made among the nodes, kept most of that
    memory from going back to the system (docs/performance.md#design-measurements). A
    pickle of the values is one buffer; with the values freed, the allocator returns the
    emptied arenas, and the copy is made densely. The buffer is made here, from our own
    objects, and never leaves this function.
    """
    try:
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, RecursionError, TypeError, ValueError):
        return data  # nested too deeply for pickle: kept as parsed
    del data
    return pickle.loads(blob)  # our own bytes, made just above
