"""The DreamBench layout (DreamBooth, CVPR 2023: github.com/google/dreambooth, ``dataset/``):
a folder with one subfolder of reference images per subject and ``prompts_and_classes.txt``::

    Classes

    subject_name,class
    backpack,backpack
    bear_plushie,stuffed animal
    dog,dog

    Prompts

    Object Prompts

    prompt_list = [
    'a {0} {1} in the jungle'.format(unique_token, class_token),
    ...
    ]

    Live Subject Prompts

    prompt_list = [
    'a {0} {1} wearing a red hat'.format(unique_token, class_token),
    ...
    ]

The file is read line by line, never evaluated: a template is one quoted string followed by
``.format(unique_token, class_token)``, and only ``{0}`` (the token) and ``{1}`` (the class
word) may appear in it. Live subjects get the live list, all others the object list. The
authors' live subjects are the dogs and cats (README: "9 out of these subjects are live
subjects (dogs and cats)"), so live is decided by class: ``LIVE_CLASSES`` = cat, dog
(``live_classes`` overrides). Each subject: token = the identifier (default ``sks``),
prompts = ``template.format(identifier, class_word)`` with whitespace collapsed, references =
the image files of its folder sorted by name (every one must pass ``store.images``' check).
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..images import file_problem, image_problem
from .lines import read_text
from .model import DREAMBENCH, ParsedSuite, ParsedUnit, Problems, collapse, words_of

TABLE_FILE = "prompts_and_classes.txt"
LIVE_CLASSES = frozenset({"cat", "dog"})
RULE = "DreamBench templates '...'.format(unique_token, class_token): {0} token, {1} class word"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

OBJECT, LIVE = "object", "live"
_HEADINGS = {
    "classes": "classes",
    "prompts": "prompts",
    "object prompts": OBJECT,
    "live subject prompts": LIVE,
}
_LIST_TITLE = {OBJECT: "Object Prompts", LIVE: "Live Subject Prompts"}
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_OPEN_RE = re.compile(r"prompt_list\s*=\s*\[")
_ENTRY_RE = re.compile(
    r"""(?P<quote>['"])(?P<body>(?:\\.|(?!(?P=quote)).)*)(?P=quote)"""
    r"""\s*\.\s*format\s*\((?P<args>[^()]*)\)\s*,?\s*(?P<close>\])?"""
)
_ESCAPES = {"n": "\n", "t": "\t"}


@dataclass
class _Row:
    name: str
    class_word: str
    line: int


@dataclass
class _Template:
    text: str
    line: int


def parse(
    source: Path,
    folder: Path,
    *,
    identifier: str = "sks",
    live_classes: Iterable[str] | None = None,
) -> ParsedSuite:
    """The DreamBench suite in ``folder`` (``source`` is the path the user gave)."""
    table = folder / TABLE_FILE
    problems = Problems(table)
    text = read_text(table)
    rows, lists = _read_table(text, problems)
    live_set = (
        LIVE_CLASSES
        if live_classes is None
        else frozenset(collapse(c).lower() for c in live_classes)
    )
    templates = {kind: _templates(entries, problems) for kind, entries in lists.items()}
    if not rows:
        problems.add(None, "no subjects: expected a 'subject_name,class' table under 'Classes'")

    def kind_of(row: _Row) -> str:
        return LIVE if row.class_word.lower() in live_set else OBJECT

    needed = {kind_of(row) for row in rows}
    if not lists:
        problems.add(None, "no prompt lists: expected 'Object Prompts' and 'Live Subject Prompts'")
    else:
        for kind in sorted(needed - set(lists)):
            who = "live subjects" if kind == LIVE else "object subjects"
            problems.add(None, f"no '{_LIST_TITLE[kind]}' prompt list (needed by the {who})")
    root = Path(os.path.abspath(folder))
    units = []
    for row in rows:
        references = _references(root / row.name, row, problems)
        kind = kind_of(row)
        chosen = templates.get(kind)  # None: missing or unusable (reported)
        if references is None or chosen is None:
            continue
        units.append(
            ParsedUnit(
                name=row.name,
                group=row.class_word,
                subject_prompt=f"{identifier} {row.class_word}",
                prompts=tuple(collapse(t.format(identifier, row.class_word)) for t in chosen),
                references=references,
                token=identifier,
                class_word=row.class_word,
                live=kind == LIVE,
                subject_words=words_of(row.class_word),
                line=row.line,
            )
        )
    problems.check()
    return ParsedSuite(
        layout=DREAMBENCH, name=root.name, units=tuple(units), prompt_rule=RULE, source=source
    )


def _read_table(text: str, problems: Problems) -> tuple[list[_Row], dict[str, list[_Template]]]:
    """The subject rows and the prompt lists (by kind) of ``prompts_and_classes.txt``."""
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    lists: dict[str, list[_Template]] = {}
    list_lines: dict[str, int] = {}
    entry_count = 0  # entries (usable or not) of the list being read
    section = "classes"
    heading: str | None = None  # the prompt list the next `prompt_list = [` opens
    current: list[_Template] | None = None  # the list being read
    open_line = 0
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if current is not None:
            if not line:
                continue
            if line == "]":
                _close(entry_count, open_line, problems)
                current = None
                continue
            entry_count += 1
            match = _ENTRY_RE.fullmatch(line)
            if not match:
                problems.add(
                    number,
                    f"expected a template like 'a {{0}} {{1}} in the snow'.format(unique_token, "
                    f"class_token), or ] to end the list, not {line!r}",
                )
                continue
            args = "".join(match["args"].split())
            if args != "unique_token,class_token":
                problems.add(
                    number,
                    f"a template must end in .format(unique_token, class_token), "
                    f"not .format({match['args'].strip()})",
                )
            else:
                body = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), match["body"])
                current.append(_Template(body, number))
            if match["close"]:
                _close(entry_count, open_line, problems)
                current = None
            continue
        if not line or line.startswith("#"):
            continue
        kind = _HEADINGS.get(line.rstrip(":").lower())
        if kind is not None:
            section = "classes" if kind == "classes" else "prompts"
            heading = kind if kind in (OBJECT, LIVE) else None
            continue
        if _OPEN_RE.fullmatch(line):
            if heading is None:
                problems.add(
                    number,
                    "a prompt list must follow an 'Object Prompts' or 'Live Subject Prompts' line",
                )
                current = []  # read (and check) it anyway
            elif heading in lists:
                problems.add(
                    number,
                    f"a second '{_LIST_TITLE[heading]}' list (the first on line "
                    f"{list_lines[heading]})",
                )
                current = []
            else:
                current = lists[heading] = []
                list_lines[heading] = number
            open_line, entry_count, heading = number, 0, None
            continue
        if section == "classes":
            _row(line, number, rows, seen, problems)
            continue
        problems.add(number, f"unexpected line {line!r}")
    if current is not None:
        problems.add(open_line, "the prompt list is not closed with ]")
    return rows, lists


def _close(count: int, open_line: int, problems: Problems) -> None:
    """Report the list being closed if it had no entries."""
    if count == 0:
        problems.add(open_line, "the prompt list is empty")


def _row(
    line: str, number: int, rows: list[_Row], seen: dict[str, int], problems: Problems
) -> None:
    name, comma, class_word = (part.strip() for part in line.partition(","))
    if name.lower() == "subject_name" and class_word.lower() == "class":
        return  # the table's header
    if not comma or not class_word:
        problems.add(number, f"subject {name!r} has no class (expected subject_name,class)")
        return
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        problems.add(
            number,
            f"subject name {name!r} must be a folder name of letters, digits, '_', '.' and '-'",
        )
        return
    if "," in class_word or "{" in class_word or "}" in class_word:
        problems.add(number, f"subject {name!r}: class {class_word!r} must be plain words")
        return
    if name in seen:
        problems.add(number, f"duplicate subject {name!r} (first on line {seen[name]})")
        return
    seen[name] = number
    rows.append(_Row(name, collapse(class_word), number))


def _templates(entries: list[_Template], problems: Problems) -> list[str] | None:
    """The checked template texts, None when any is unusable (each reported)."""
    ok = True
    for entry in entries:
        try:
            fields = [
                (name, spec, conv)
                for _lit, name, spec, conv in string.Formatter().parse(entry.text)
                if name is not None
            ]
        except ValueError as exc:
            problems.add(entry.line, f"template {entry.text!r} is not a valid template ({exc})")
            ok = False
            continue
        for name, spec, conv in fields:
            if name not in ("0", "1") or spec or conv:
                shown = (
                    "{" + name + ("!" + conv if conv else "") + (":" + spec if spec else "") + "}"
                )
                problems.add(
                    entry.line,
                    f"template {entry.text!r} has the placeholder {shown}; only {{0}} "
                    f"(the token) and {{1}} (the class word) are allowed",
                )
                ok = False
    return [e.text for e in entries] if ok else None


def _references(folder: Path, row: _Row, problems: Problems) -> tuple[Path, ...] | None:
    where = f"subject {row.name!r}"
    if not folder.is_dir():
        problem = file_problem(folder, "a folder of reference images")
        if problem is None:
            problem = "is a file, not a folder of reference images"
        elif problem == "no such file":
            problem = "no such folder"
        problems.add(row.line, f"{where}: reference folder {folder}: {problem}")
        return None
    try:
        names = sorted(
            entry.name
            for entry in os.scandir(folder)
            if not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        )
    except OSError as exc:
        problems.add(row.line, f"{where}: cannot list {folder} ({exc.strerror or exc})")
        return None
    if not names:
        problems.add(
            row.line,
            f"{where}: {folder} holds no reference images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))} files)",
        )
        return None
    paths = [folder / name for name in names]
    bad = [(p, image_problem(p)) for p in paths]
    bad = [(p, why) for p, why in bad if why]
    for _path, why in bad:
        problems.add(row.line, f"{where}: reference {why}")
    return None if bad else tuple(paths)
