"""mtp's own suite layout: one YAML file (also described in ``store/suites/SCHEMA.md``)::

    suite: my-lab-set          # name (optional; default the file's stem)
    prompt_rule: "{subject} {setting}"   # optional template, placeholders {subject} {setting}
    units:
      - name: fox              # required, unique, [A-Za-z0-9_.-]+
        group: animals         # optional breakdown label (default "")
        subject: a red fox     # required subject text
        settings: [in the snow, reading a book]   # required, 2+ scene texts
        references: [refs/fox1.png]   # optional, relative to the YAML's folder, validated
        token: sks             # optional identifier (one word)
        class_word: fox        # optional class noun

Each image's prompt is ``prompt_rule`` formatted with the unit's subject and one setting,
whitespace collapsed; ``{setting}`` is required, ``{subject}`` optional. A ``prompt_rule``
given to ``read_suite`` overrides the file's. Unknown keys, at the top or in a unit, are
errors (a misspelt key would otherwise be dropped silently).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..images import image_problem
from .lines import YList, YMap, describe, settings_field, text_field, unknown_keys
from .model import MTP, ParsedSuite, ParsedUnit, Problems, collapse, template_problem, words_of

DEFAULT_RULE = "{subject} {setting}"
PLACEHOLDERS = ("subject", "setting")
REQUIRED_PLACEHOLDERS = ("setting",)
TOP_KEYS = ("suite", "prompt_rule", "units")
UNIT_KEYS = ("name", "group", "subject", "settings", "references", "token", "class_word")
NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def parse(
    source: Path, doc: Any, problems: Problems, *, prompt_rule: str | None = None
) -> ParsedSuite:
    """The suite in ``doc`` (loaded by ``lines.load_yaml`` from ``source``); the caller has
    checked ``prompt_rule``. Raises SuiteError with every problem of the file."""
    if not isinstance(doc, YMap):
        problems.add(
            getattr(doc, "line", 1),
            f"an mtp suite is a mapping with 'units' (and optional 'suite', 'prompt_rule'), "
            f"not {describe(doc)}",
        )
        raise problems.error()
    unknown_keys(doc, TOP_KEYS, problems, "suite")
    name = text_field(doc, "suite", problems, "suite") or source.stem
    rule = prompt_rule
    if rule is None:
        rule = DEFAULT_RULE
        file_rule = text_field(doc, "prompt_rule", problems, "suite")
        if file_rule is not None:
            problem = template_problem(file_rule, PLACEHOLDERS, REQUIRED_PLACEHOLDERS)
            if problem:
                problems.add(doc.line_of("prompt_rule"), problem)
            else:
                rule = file_rule
    units = _units(source, doc, rule, problems)
    problems.check()
    return ParsedSuite(layout=MTP, name=name, units=tuple(units), prompt_rule=rule, source=source)


def _units(source: Path, doc: YMap, rule: str, problems: Problems) -> list[ParsedUnit]:
    if "units" not in doc:
        problems.add(doc.line, "suite: no 'units' (a list of units)")
        return []
    entries = doc["units"]
    if not isinstance(entries, YList):
        problems.add(
            doc.line_of("units"), f"suite: 'units' must be a list of units, not {describe(entries)}"
        )
        return []
    if not entries:
        problems.add(doc.line_of("units"), "suite: 'units' is empty")
        return []
    folder = Path(os.path.abspath(source)).parent
    first_line: dict[str, int] = {}
    units = []
    for index, (entry, line) in enumerate(zip(entries, entries.lines), 1):
        if not isinstance(entry, YMap):
            problems.add(line, f"unit {index}: must be a mapping, not {describe(entry)}")
            continue
        unit = _unit(entry, index, folder, rule, problems)
        if unit is None:
            continue
        if unit.name in first_line:
            problems.add(
                entry.line_of("name"),
                f"unit {unit.name!r}: duplicate name (first on line {first_line[unit.name]})",
            )
            continue
        first_line[unit.name] = entry.line_of("name")
        units.append(unit)
    return units


def _unit(
    entry: YMap, index: int, folder: Path, rule: str, problems: Problems
) -> ParsedUnit | None:
    where = f"unit {index}"
    name = text_field(entry, "name", problems, where, required=True)
    if name is not None:
        if not NAME_RE.fullmatch(name):
            problems.add(
                entry.line_of("name"),
                f"{where}: name {name!r} may only use letters, digits, '_', '.' and '-'",
            )
            name = None
        else:
            where = f"unit {name!r}"
    unknown_keys(entry, UNIT_KEYS, problems, where)
    group = text_field(entry, "group", problems, where) or ""
    subject = text_field(entry, "subject", problems, where, required=True)
    settings = settings_field(entry, problems, where)
    references = _references(entry, folder, problems, where)
    token = text_field(entry, "token", problems, where) or ""
    if token and len(token.split()) != 1:
        problems.add(entry.line_of("token"), f"{where}: 'token' must be one word, not {token!r}")
    class_word = text_field(entry, "class_word", problems, where) or ""
    if name is None or subject is None or settings is None or references is None:
        return None
    return ParsedUnit(
        name=name,
        group=group,
        subject_prompt=collapse(subject),
        prompts=tuple(collapse(rule.format(subject=subject, setting=s)) for s in settings),
        references=references,
        token=token,
        class_word=collapse(class_word),
        subject_words=words_of(subject),
        line=entry.line,
    )


def _references(
    entry: YMap, folder: Path, problems: Problems, where: str
) -> tuple[Path, ...] | None:
    if "references" not in entry or entry["references"] is None:
        return ()
    value = entry["references"]
    if not isinstance(value, YList):
        problems.add(
            entry.line_of("references"),
            f"{where}: 'references' must be a list of image paths, not {describe(value)}",
        )
        return None
    paths: list[Path] = []
    ok = True
    for i, (item, line) in enumerate(zip(value, value.lines), 1):
        if not isinstance(item, str) or not item.strip():
            problems.add(line, f"{where}: reference {i} must be a path, not {describe(item)}")
            ok = False
            continue
        path = Path(os.path.abspath(folder / Path(item.strip()).expanduser()))
        problem = image_problem(path)
        if problem:
            problems.add(line, f"{where}: reference {i}: {problem}")
            ok = False
        else:
            paths.append(path)
    return tuple(paths) if ok else None
