"""Reading suite files: text checks, and a safe YAML loader that keeps line numbers.

``load_yaml`` composes the document with PyYAML's safe loader (``yaml.compose``, no Python
tags) and builds plain values from the node tree: mappings become ``YMap`` (a dict that knows
the line of itself and of each key), sequences ``YList`` (a list that knows
each item's line); scalars are built by the safe constructor. Duplicate keys, which
``yaml.safe_load`` silently overwrites, are problems with both lines. An alias is built once
and shared, so an alias bomb stays as small as its text, and a recursive alias is refused.
Lines are 1-based.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..images import file_problem
from .model import Problems, fail

# A suite file is text of a few hundred KiB at most (ConsiStory+ is 80 KiB).
MAX_SUITE_BYTES = 16 * 1024 * 1024

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YMap(dict[Any, Any]):
    """A YAML mapping: ``line`` of the mapping, ``key_lines`` of each key."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        """The line of ``key`` (of the mapping itself when the key is absent)."""
        return self.key_lines.get(key, self.line)


class YList(list[Any]):
    """A YAML sequence: ``line`` of the sequence, ``lines[i]`` of item ``i``."""

    def __init__(self, line: int) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


def describe(value: Any) -> str:
    """What a YAML value is, for messages (``a list``, ``the number 3``, ``true``...)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):  # YAML reads yes/no/on/off unquoted as true/false
        return f"{'true' if value else 'false'} (quote words such as yes, no, on, off)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value)
    return f"a {type(value).__name__} ({value})"


def read_text(path: Path) -> str:
    """The text of the suite file ``path``: a regular file of UTF-8 text (a BOM is dropped,
    CRLF and CR line ends become LF), else SuiteError."""
    problem = file_problem(path, "a suite file")
    if problem:
        raise fail(path, None, problem)
    try:
        size = os.stat(path).st_size
        if size > MAX_SUITE_BYTES:
            raise fail(
                path, None, f"too large for a suite file ({size} bytes, at most {MAX_SUITE_BYTES})"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise fail(path, None, f"cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise fail(
            path, line, f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_yaml(path: Path, problems: Problems) -> Any:
    """The YAML document in ``path`` as plain values (``YMap``, ``YList``, scalars).

    Raises SuiteError for what stops reading (not a file, not UTF-8, not YAML, empty); adds
    the rest (duplicate keys, unsupported tags) to ``problems`` and goes on."""
    text = read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise fail(path, mark.line + 1 if mark else None, f"not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise fail(path, None, f"not valid YAML: {exc}") from None
    except RecursionError:
        raise fail(path, None, "not a usable suite: nested too deeply") from None
    if root is None:
        raise fail(path, None, "the file is empty")
    builder = _Builder(problems)
    try:
        return builder.build(root)
    except RecursionError:
        raise fail(path, None, "not a usable suite: nested too deeply") from None


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Builder:
    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.constructor = yaml.SafeLoader("")
        self.built: dict[int, Any] = {}
        self.active: set[int] = set()

    def build(self, node: Node) -> Any:
        key = id(node)
        if key in self.built:
            return self.built[key]
        if key in self.active:
            self.problems.add(_line(node), "a recursive alias (an anchor used inside itself)")
            return None
        self.active.add(key)
        try:
            value = self._build(node)
        finally:
            self.active.discard(key)
        self.built[key] = value
        return value

    def _build(self, node: Node) -> Any:
        line = _line(node)
        if isinstance(node, ScalarNode):
            try:
                return self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                self.problems.add(line, f"cannot read this value: {problem}")
                return None
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                self.problems.add(line, f"unsupported YAML tag {node.tag!r}")
            seq = YList(line)
            for item in node.value:
                seq.append(self.build(item))
                seq.lines.append(_line(item))
            return seq
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                self.problems.add(line, f"unsupported YAML tag {node.tag!r}")
            mapping = YMap(line)
            for key_node, value_node in node.value:
                key_line = _line(key_node)
                if key_node.tag == _MERGE_TAG:
                    self.problems.add(key_line, "merge keys (<<) are not supported")
                    continue
                if not isinstance(key_node, ScalarNode):
                    self.problems.add(key_line, "a key must be plain text, not a list or mapping")
                    continue
                key = self.build(key_node)
                if key in mapping:
                    self.problems.add(
                        key_line,
                        f"duplicate key {key!r} (first on line {mapping.key_lines[key]})",
                    )
                    continue
                mapping[key] = self.build(value_node)
                mapping.key_lines[key] = key_line
            return mapping
        self.problems.add(line, "unsupported YAML node")  # pragma: no cover - no other kinds
        return None


# ------------------------------------------------------------------ field checks
def text_field(
    mapping: YMap, key: str, problems: Problems, where: str, *, required: bool = False
) -> str | None:
    """``mapping[key]`` as stripped text, None (with a problem) when absent but required, not
    text, or empty; None without one when absent and optional."""
    if key not in mapping:
        if required:
            problems.add(mapping.line, f"{where}: no '{key}'")
        return None
    value = mapping[key]
    line = mapping.line_of(key)
    if not isinstance(value, str):
        problems.add(line, f"{where}: '{key}' must be text, not {describe(value)}")
        return None
    if not value.strip():
        problems.add(line, f"{where}: '{key}' is empty")
        return None
    return value.strip()


def settings_field(
    mapping: YMap, problems: Problems, where: str, key: str = "settings"
) -> tuple[str, ...] | None:
    """``mapping[key]``: a list of 2 or more non-empty scene texts, else None with problems."""
    if key not in mapping:
        problems.add(mapping.line, f"{where}: no '{key}' (a list of 2 or more scene prompts)")
        return None
    value = mapping[key]
    line = mapping.line_of(key)
    if not isinstance(value, YList):
        problems.add(
            line, f"{where}: '{key}' must be a list of scene prompts, not {describe(value)}"
        )
        return None
    settings: list[str] = []
    ok = True
    for i, (item, item_line) in enumerate(zip(value, value.lines), 1):
        if not isinstance(item, str):
            problems.add(item_line, f"{where}: setting {i} must be text, not {describe(item)}")
            ok = False
        elif not item.strip():
            problems.add(item_line, f"{where}: setting {i} is empty")
            ok = False
        else:
            settings.append(item.strip())
    if not value:
        problems.add(line, f"{where}: '{key}' is empty (a consistency set needs 2 or more)")
        return None
    if len(value) < 2:
        problems.add(
            line, f"{where}: '{key}' has only 1 scene; a consistency set needs 2 or more images"
        )
        return None
    return tuple(settings) if ok else None


def unknown_keys(mapping: YMap, known: tuple[str, ...], problems: Problems, where: str) -> None:
    """A problem for every key of ``mapping`` not in ``known`` (naming the known ones)."""
    for key in mapping:
        if key not in known:
            problems.add(
                mapping.line_of(key),
                f"{where}: unknown key {key!r} (known: {', '.join(known)})",
            )
