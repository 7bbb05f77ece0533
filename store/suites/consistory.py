"""The ConsiStory+ benchmark layout (1Prompt1Story, ICLR 2025: github.com/byliutao/1Prompt1Story,
``resource/consistory+.yaml``): a YAML mapping superclass -> list of sets::

    animals:
    - concept_token: phoenix          # optional, unused here
      settings:                       # the scenes: one image each, 2 or more
      - rising from a fiery ashes
      - soaring through a glowing sky
      style: A fiery and majestic illustration of
      subject: A phoenix with bright orange feathers

The authors' prompt rule, which is the default here: ``resource/gen_benchmark.py``, ``main()``
builds ``id_prompt = f'{instance["style"]} {instance["subject"]}'`` and passes
``instance["settings"]`` as the frame prompts; ``unet/utils.py``,
``movement_gen_story_slide_windows()`` then prompts each image with
``f'{id_prompt} {movement}'`` (and saves it as ``f'{id_prompt} {frame_prompt_express}.jpg'``).
So an image's prompt is ``"{style} {subject} {setting}"``; whitespace is collapsed after
formatting (so a set without ``style`` gets no leading space).

Units are named ``<superclass>-<n>``, n counting the sets of a superclass from 1 (``animals-3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lines import YList, YMap, describe, settings_field, text_field, unknown_keys
from .model import CONSISTORY, ParsedSuite, ParsedUnit, Problems, collapse, words_of

DEFAULT_RULE = "{style} {subject} {setting}"
PLACEHOLDERS = ("style", "subject", "setting")
REQUIRED_PLACEHOLDERS = ("setting",)
SET_KEYS = ("style", "subject", "settings", "concept_token")


def parse(
    source: Path, doc: Any, problems: Problems, *, prompt_rule: str | None = None
) -> ParsedSuite:
    """The suite in ``doc`` (loaded by ``lines.load_yaml`` from ``source``); the caller has
    checked ``prompt_rule``. Raises SuiteError with every problem of the file."""
    rule = prompt_rule if prompt_rule is not None else DEFAULT_RULE
    units: list[ParsedUnit] = []
    if not isinstance(doc, YMap):
        problems.add(
            getattr(doc, "line", 1),
            f"a ConsiStory+ file is a mapping of superclass -> list of sets, not {describe(doc)}",
        )
    elif not doc:
        problems.add(doc.line, "no superclasses: the file is an empty mapping")
    else:
        for superclass, sets in doc.items():
            units.extend(_superclass(doc, superclass, sets, rule, problems))
    problems.check()
    return ParsedSuite(
        layout=CONSISTORY,
        name=source.stem,
        units=tuple(units),
        prompt_rule=rule,
        source=source,
    )


def _superclass(
    doc: YMap, superclass: Any, sets: Any, rule: str, problems: Problems
) -> list[ParsedUnit]:
    line = doc.line_of(superclass)
    if not isinstance(superclass, str) or not superclass.strip():
        problems.add(line, f"a superclass must be a name, not {describe(superclass)}")
        return []
    if not isinstance(sets, YList):
        problems.add(
            line, f"superclass {superclass!r}: must be a list of sets, not {describe(sets)}"
        )
        return []
    if not sets:
        problems.add(line, f"superclass {superclass!r}: has no sets")
        return []
    units = []
    for index, (entry, entry_line) in enumerate(zip(sets, sets.lines), 1):
        name = f"{superclass}-{index}"
        if not isinstance(entry, YMap):
            problems.add(
                entry_line,
                f"set {name}: must be a mapping with style, subject and settings, "
                f"not {describe(entry)}",
            )
            continue
        unit = _set(entry, name, superclass, rule, problems)
        if unit is not None:
            units.append(unit)
    return units


def _set(entry: YMap, name: str, group: str, rule: str, problems: Problems) -> ParsedUnit | None:
    where = f"set {name}"
    unknown_keys(entry, SET_KEYS, problems, where)
    style = entry.get("style")
    if style is None:  # absent or empty: the prompt starts with the subject
        style = ""
    elif not isinstance(style, str):
        problems.add(
            entry.line_of("style"), f"{where}: 'style' must be text, not {describe(style)}"
        )
    subject = text_field(entry, "subject", problems, where, required=True)
    settings = settings_field(entry, problems, where)
    text_field(entry, "concept_token", problems, where)
    if subject is None or settings is None or not isinstance(style, str):
        return None
    return ParsedUnit(
        name=name,
        group=group,
        subject_prompt=collapse(f"{style} {subject}"),
        prompts=tuple(
            collapse(rule.format(style=style, subject=subject, setting=s)) for s in settings
        ),
        subject_words=words_of(subject),
        line=entry.line,
    )
