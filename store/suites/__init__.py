"""Consistent-generation benchmark suites, read into plain dataclasses (the caller stores them).

``read_suite(path)`` reads one of three layouts (``detect`` says which when ``layout`` is not
given), each in its module with its format and prompt rule:

- ``CONSISTORY`` (``consistory``): the ConsiStory+ YAML of 1Prompt1Story;
- ``DREAMBENCH`` (``dreambench``): the DreamBooth dataset folder with prompts_and_classes.txt;
- ``MTP`` (``mtp_yaml``, SCHEMA.md): mtp's own YAML.

Every problem of a file comes back in one ``SuiteError`` (an ``InputError``), one
``file:line: problem`` a line. ``DEMO_SUITES`` names the two small suites shipped for the tiny
demo model. Torch-free: stdlib, PyYAML and PIL only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from . import consistory, dreambench, mtp_yaml
from .detect import detect_layout, dreambench_folder, inspect
from .lines import load_yaml
from .model import (
    CONSISTORY,
    DREAMBENCH,
    LAYOUTS,
    MTP,
    ParsedSuite,
    ParsedUnit,
    Problems,
    SuiteError,
    fail,
    template_problem,
)

_DEMO = Path(__file__).resolve().parent / "demo"
DEMO_SUITES: dict[str, Path] = {
    "consistory-demo": _DEMO / "consistory-demo.yaml",
    "dreambench-demo": _DEMO / "dreambench-demo",
}

__all__ = [
    "CONSISTORY",
    "DEMO_SUITES",
    "DREAMBENCH",
    "LAYOUTS",
    "MTP",
    "ParsedSuite",
    "ParsedUnit",
    "SuiteError",
    "detect_layout",
    "read_suite",
]


def read_suite(
    path: str | os.PathLike[str],
    *,
    layout: str | None = None,
    prompt_rule: str | None = None,
    identifier: str = "sks",
    live_classes: Iterable[str] | None = None,
) -> ParsedSuite:
    """The suite at ``path``: a YAML file (ConsiStory+ or mtp) or a DreamBench folder.

    ``layout`` forces one of LAYOUTS instead of detecting it. ``prompt_rule`` replaces the
    layout's rule for building an image prompt: a template over ``{style}``, ``{subject}``,
    ``{setting}`` (ConsiStory+) or ``{subject}``, ``{setting}`` (mtp); ``{setting}`` is
    required; DreamBench prompts come from its own templates, so it takes none.
    ``identifier`` (DreamBench's unique token) and ``live_classes`` (class words given the
    live prompt list; default cat and dog) apply to DreamBench only.
    Raises SuiteError naming the file and line of every problem found.
    """
    source = Path(path)
    if layout is not None and layout not in LAYOUTS:
        raise SuiteError(f"unknown suite layout {layout!r} (known: {', '.join(LAYOUTS)})")
    if not isinstance(identifier, str) or len(identifier.split()) != 1 or "{" in identifier:
        raise SuiteError(f"the identifier must be one word, not {identifier!r}")
    if isinstance(live_classes, str):
        live_classes = (live_classes,)
    if layout is None:
        layout, doc, problems = inspect(source)
    elif layout == DREAMBENCH:
        doc, problems = None, None
    else:
        if source.is_dir():
            raise fail(source, None, f"a folder, not a {layout} YAML file")
        problems = Problems(source)
        doc = load_yaml(source, problems)
    if layout == DREAMBENCH:
        if prompt_rule is not None:
            raise SuiteError(
                "a DreamBench suite takes no prompt rule: its prompts come from the templates "
                f"in {dreambench.TABLE_FILE}"
            )
        folder = dreambench_folder(source)
        if folder is None:
            raise fail(
                source, None, f"the DreamBench layout is a folder with {dreambench.TABLE_FILE}"
            )
        return dreambench.parse(source, folder, identifier=identifier, live_classes=live_classes)
    module = consistory if layout == CONSISTORY else mtp_yaml
    if prompt_rule is not None:
        problem = template_problem(prompt_rule, module.PLACEHOLDERS, module.REQUIRED_PLACEHOLDERS)
        if problem:
            raise SuiteError(problem)
    assert problems is not None
    return module.parse(source, doc, problems, prompt_rule=prompt_rule)
