"""Which layout a suite path is in.

- a folder holding ``prompts_and_classes.txt`` (or that file itself): DreamBench;
- a YAML mapping with any of mtp's top-level keys (``units``, ``suite``, ``prompt_rule``): mtp;
- a YAML mapping whose values include a list (superclass -> list of sets): ConsiStory+;
- anything else: SuiteError saying what each layout looks like.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import mtp_yaml
from .dreambench import TABLE_FILE
from .lines import YList, YMap, describe, load_yaml
from .model import CONSISTORY, DREAMBENCH, LAYOUTS, MTP, Problems, fail

_EXPECTED = (
    "expected an mtp suite (a YAML mapping with 'units:'), a ConsiStory+ file (a YAML mapping "
    f"superclass: list of sets) or a DreamBench folder (with {TABLE_FILE}); "
    f"or pass the layout ({', '.join(LAYOUTS)})"
)


def dreambench_folder(source: Path) -> Path | None:
    """The DreamBench folder ``source`` names (the folder or its table file), else None."""
    if source.is_dir():
        return source
    if source.name == TABLE_FILE:
        return source.parent
    return None


def detect_layout(path: str | Path) -> str:
    """The layout of the suite at ``path`` (one of LAYOUTS), else SuiteError."""
    return inspect(Path(path))[0]


def inspect(source: Path) -> tuple[str, Any, Problems | None]:
    """(layout, YAML document, its load problems); the document is None for DreamBench."""
    folder = dreambench_folder(source)
    if folder is not None:
        if not (folder / TABLE_FILE).is_file():
            raise fail(
                source,
                None,
                f"a folder without {TABLE_FILE}: a DreamBench folder needs one "
                "(a YAML suite is given as its file)",
            )
        return DREAMBENCH, None, None
    problems = Problems(source)
    doc = load_yaml(source, problems)
    return yaml_layout(doc, problems), doc, problems


def yaml_layout(doc: Any, problems: Problems) -> str:
    """MTP or CONSISTORY for a loaded YAML document, else SuiteError (with ``problems``)."""
    if isinstance(doc, YMap):
        if any(key in doc for key in mtp_yaml.TOP_KEYS):
            return MTP
        if any(isinstance(value, YList) for value in doc.values()):
            return CONSISTORY
        what = "an empty mapping" if not doc else "a mapping without lists"
    else:
        what = describe(doc)
    problems.add(getattr(doc, "line", 1), f"cannot tell the suite layout of {what}: {_EXPECTED}")
    raise problems.error()
