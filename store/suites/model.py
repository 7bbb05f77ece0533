"""What a benchmark suite parses into (plain frozen dataclasses, no database) and its error.

Every parser collects the problems of one file into a ``Problems`` list and raises one
``SuiteError`` at the end, each problem on its own line as ``file:line: text`` (``file: text``
where no line is known), so a user fixes a whole file in one round instead of one typo a run.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError

CONSISTORY = "consistory"
DREAMBENCH = "dreambench"
MTP = "mtp"
LAYOUTS = (CONSISTORY, DREAMBENCH, MTP)

# More than this many problems in one file: the rest are counted, not listed.
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class ParsedUnit:
    """One subject of a suite: a set of prompts to generate consistently, with references."""

    name: str  # unique within the suite
    group: str  # breakdown label: ConsiStory+ superclass, DreamBench class word, mtp `group`
    subject_prompt: str  # the subject as prompt text ("{style} {subject}", "sks dog", ...)
    prompts: tuple[str, ...]  # one full image prompt per image
    references: tuple[Path, ...] = ()  # absolute paths of reference images
    token: str = ""  # the identifier (DreamBench, mtp), else ""
    class_word: str = ""  # the class noun (DreamBench, mtp), else ""
    live: bool = False  # DreamBench: a live subject (got the live prompt list)
    subject_words: tuple[str, ...] = ()  # the subject's words, for attention masks
    line: int = 0  # source line of the unit (1-based)


@dataclass(frozen=True)
class ParsedSuite:
    layout: str  # one of LAYOUTS
    name: str
    units: tuple[ParsedUnit, ...]
    prompt_rule: str  # the rule text used to build the prompts
    source: Path  # the path given to read_suite


class SuiteError(InputError):
    """A suite file or folder mtp cannot use; the message lists every problem found.

    ``problems`` holds them as (file, line or None, text) for a caller that shows them itself.
    """

    def __init__(self, message: str, problems: tuple[tuple[str, int | None, str], ...] = ()):
        super().__init__(message)
        self.problems = problems


@dataclass
class Problems:
    """The problems found in one file, raised together by ``check``."""

    source: str | os.PathLike[str]
    items: list[tuple[int | None, str]] = field(default_factory=list)

    def add(self, line: int | None, text: str) -> None:
        self.items.append((line, text))

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> SuiteError:
        where = os.fspath(self.source)
        ordered = sorted(self.items, key=lambda item: item[0] or 0)
        shown = [
            f"{where}:{line}: {text}" if line else f"{where}: {text}" for line, text in ordered
        ][:MAX_PROBLEMS]
        if len(ordered) > MAX_PROBLEMS:
            shown.append(f"{where}: ... and {len(ordered) - MAX_PROBLEMS} more problems")
        return SuiteError("\n".join(shown), tuple((where, line, text) for line, text in ordered))

    def check(self) -> None:
        """Raise the collected problems as one SuiteError, if there are any."""
        if self.items:
            raise self.error()


def fail(source: str | os.PathLike[str], line: int | None, text: str) -> SuiteError:
    """A SuiteError for a single problem (to raise)."""
    problems = Problems(source)
    problems.add(line, text)
    return problems.error()


def collapse(text: str) -> str:
    """``text`` with runs of whitespace made one space, none at the ends."""
    return " ".join(text.split())


def words_of(text: str) -> tuple[str, ...]:
    """The words of ``text``, punctuation at their ends stripped (for token masks)."""
    stripped = (w.strip(string.punctuation) for w in text.split())
    return tuple(w for w in stripped if w)


def template_problem(rule: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> str | None:
    """Why ``rule`` is not a usable ``str.format`` template over ``allowed`` names, or None.

    Only bare ``{name}`` fields are accepted: no ``{}``, no ``{0}`` where names are expected, no
    attribute or index access, conversion or format spec (so formatting can never reach into
    an object)."""
    names = ", ".join("{" + n + "}" for n in allowed)
    try:
        parsed = list(string.Formatter().parse(rule))
    except ValueError as exc:
        return f"prompt rule {rule!r} is not a valid template ({exc}; write {{{{ and }}}} for literal braces)"
    seen: set[str] = set()
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in allowed:
            shown = "{" + name + "}"
            return f"prompt rule {rule!r} has an unknown placeholder {shown} (known: {names})"
        if spec or conversion:
            return f"prompt rule {rule!r}: write the placeholder {{{name}}} bare (no !conversion or :format)"
        seen.add(name)
    for name in required:
        if name not in seen:
            return f"prompt rule {rule!r} lacks the placeholder {{{name}}}"
    return None
