"""Benchmark suite parsers (store.suites): ConsiStory+ YAML, DreamBench folders, mtp's YAML.

Expected prompts are written out by hand; every malformed variant checks the ``file:line:``
and the problem in the one SuiteError a file raises."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from store.errors import InputError
from store.suites import (
    CONSISTORY,
    DEMO_SUITES,
    DREAMBENCH,
    MTP,
    ParsedSuite,
    ParsedUnit,
    SuiteError,
    detect_layout,
    read_suite,
)


def write(path: Path, text: str, *, newline: str = "\n", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = textwrap.dedent(text).replace("\n", newline)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    return path


def png(path: Path, colour=(200, 30, 30), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def problems(exc: pytest.ExceptionInfo[SuiteError]) -> list[str]:
    return str(exc.value).splitlines()


def assert_problem(exc, where: str, *fragments: str) -> None:
    """Some line of the error starts with ``where`` (``file:line:``) and holds every fragment."""
    lines = problems(exc)
    hits = [line for line in lines if line.startswith(where) and all(f in line for f in fragments)]
    assert hits, f"no line {where!r} with {fragments} in:\n" + "\n".join(lines)


# ================================================================== ConsiStory+
CONSISTORY_TEXT = """\
animals:
- concept_token: fox
  settings:
  - in the snow
  - reading   a book
  style: A watercolor   painting of
  subject: A red fox
- settings: [on a beach, in a park, at night]
  subject: a  corgi
humans:
- style: A photo of
  subject: an old sailor
  settings:
  - on a boat
  - by the sea
"""


def test_consistory_parses_with_the_authors_rule(tmp_path):
    path = write(tmp_path / "bench.yaml", CONSISTORY_TEXT)
    suite = read_suite(path)
    assert isinstance(suite, ParsedSuite)
    assert (suite.layout, suite.name, suite.source) == (CONSISTORY, "bench", path)
    assert suite.prompt_rule == "{style} {subject} {setting}"
    assert [u.name for u in suite.units] == ["animals-1", "animals-2", "humans-1"]
    fox, corgi, sailor = suite.units
    assert fox == ParsedUnit(
        name="animals-1",
        group="animals",
        subject_prompt="A watercolor painting of A red fox",
        prompts=(
            "A watercolor painting of A red fox in the snow",
            "A watercolor painting of A red fox reading a book",
        ),
        references=(),
        token="",
        class_word="",
        live=False,
        subject_words=("A", "red", "fox"),
        line=2,
    )
    # no style: the prompt starts with the subject, no stray space
    assert corgi.subject_prompt == "a corgi"
    assert corgi.prompts == ("a corgi on a beach", "a corgi in a park", "a corgi at night")
    assert (corgi.group, corgi.line) == ("animals", 8)
    assert sailor.prompts == (
        "A photo of an old sailor on a boat",
        "A photo of an old sailor by the sea",
    )
    assert (sailor.group, sailor.line, sailor.subject_words) == (
        "humans",
        11,
        ("an", "old", "sailor"),
    )


def test_consistory_custom_prompt_rule(tmp_path):
    path = write(tmp_path / "bench.yaml", CONSISTORY_TEXT)
    suite = read_suite(path, prompt_rule="{subject}, {setting}. {style}")
    assert suite.prompt_rule == "{subject}, {setting}. {style}"
    assert suite.units[0].prompts == (
        "A red fox, in the snow. A watercolor painting of",
        "A red fox, reading a book. A watercolor painting of",
    )
    # the subject prompt stays "{style} {subject}" whatever the rule
    assert suite.units[0].subject_prompt == "A watercolor painting of A red fox"
    assert read_suite(path, prompt_rule="{setting}").units[2].prompts == ("on a boat", "by the sea")


@pytest.mark.parametrize(
    "rule, fragment",
    [
        ("{style} {subject}", "lacks the placeholder {setting}"),
        ("{style} {subject} {scene}", "unknown placeholder {scene}"),
        ("{} {setting}", "unknown placeholder {}"),
        ("{subject.upper} {setting}", "unknown placeholder {subject.upper}"),
        ("{subject!r} {setting}", "bare"),
        ("{subject {setting}", "not a valid template"),
    ],
)
def test_consistory_prompt_rule_is_checked(tmp_path, rule, fragment):
    path = write(tmp_path / "bench.yaml", CONSISTORY_TEXT)
    with pytest.raises(SuiteError, match=re.escape(fragment)):
        read_suite(path, prompt_rule=rule)


@pytest.mark.parametrize(
    "text, line, fragments",
    [
        # a set without subject
        ("animals:\n- style: a photo of\n  settings: [a, b]\n", 2, ["animals-1", "no 'subject'"]),
        # a set without settings
        ("animals:\n- subject: a fox\n", 2, ["animals-1", "no 'settings'"]),
        # empty settings
        ("animals:\n- subject: a fox\n  settings: []\n", 3, ["'settings' is empty"]),
        # a setting that is not text
        (
            "animals:\n- subject: a fox\n  settings:\n  - in the snow\n  - 42\n",
            5,
            ["animals-1", "setting 2 must be text, not the number 42"],
        ),
        # fewer than 2 settings
        (
            "animals:\n- subject: a fox\n  settings: [in the snow]\n",
            3,
            ["only 1 scene", "2 or more"],
        ),
        # a duplicate key in a set
        (
            "animals:\n- subject: a fox\n  settings: [a, b]\n  subject: a cat\n",
            4,
            ["duplicate key 'subject'", "first on line 2"],
        ),
        # a duplicate superclass
        (
            "animals:\n- subject: a fox\n  settings: [a, b]\nanimals: []\n",
            4,
            ["duplicate key 'animals'", "first on line 1"],
        ),
        # a style that is not text
        (
            "animals:\n- subject: a fox\n  style: [a, b]\n  settings: [a, b]\n",
            3,
            ["'style' must be text, not a list"],
        ),
        # a set that is not a mapping
        ("animals:\n- a fox in the snow\n", 2, ["animals-1", "must be a mapping"]),
        # a superclass that is not a list of sets
        ("animals:\n- subject: a\n  settings: [a, b]\nhumans: a sailor\n", 4, ["'humans'"]),
        # a misspelt key
        (
            "animals:\n- subject: a fox\n  setting: [a, b]\n",
            3,
            ["unknown key 'setting'", "style, subject, settings, concept_token"],
        ),
        # not YAML
        ("animals:\n- subject: [a fox\n  settings: [a, b]\n", 3, ["not valid YAML"]),
    ],
)
def test_consistory_malformed(tmp_path, text, line, fragments):
    path = write(tmp_path / "bench.yaml", text)
    with pytest.raises(SuiteError) as exc:
        read_suite(path, layout=CONSISTORY)
    assert_problem(exc, f"{path}:{line}:", *fragments)
    assert isinstance(exc.value, InputError)


def test_consistory_not_a_mapping(tmp_path):
    path = write(tmp_path / "bench.yaml", "- a\n- b\n")
    with pytest.raises(SuiteError) as exc:
        read_suite(path, layout=CONSISTORY)
    assert_problem(exc, f"{path}:1:", "mapping of superclass -> list of sets", "not a list")


def test_consistory_collects_every_problem(tmp_path):
    text = """\
    animals:
    - subject: a fox
      settings: [in the snow]
    - settings: [a, b]
    - subject: a cat
      settings: [a, 3]
    """
    path = write(tmp_path / "bench.yaml", text)
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    lines = problems(exc)
    assert [line.split(":")[1] for line in lines] == ["3", "4", "6"]
    assert "animals-2: no 'subject'" in lines[1]
    assert [(p[1]) for p in exc.value.problems] == [3, 4, 6]


def test_problems_are_capped(tmp_path):
    sets = "".join(f"- subject: s{i}\n  settings: [only]\n" for i in range(30))
    path = write(tmp_path / "bench.yaml", "animals:\n" + sets)
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    lines = problems(exc)
    assert len(lines) == 21
    assert lines[-1] == f"{path}: ... and 10 more problems"
    assert len(exc.value.problems) == 30


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_consistory_crlf_and_bom(tmp_path, newline, bom):
    path = write(tmp_path / "bench.yaml", CONSISTORY_TEXT, newline=newline, bom=bom)
    suite = read_suite(path)
    assert suite.units[0].prompts[1] == "A watercolor painting of A red fox reading a book"
    assert [u.line for u in suite.units] == [2, 8, 11]
    # line numbers still right in errors
    bad = write(
        tmp_path / "bad.yaml", "animals:\n- subject: a\n  settings: [x]\n", newline=newline, bom=bom
    )
    with pytest.raises(SuiteError) as exc:
        read_suite(bad)
    assert_problem(exc, f"{bad}:3:", "only 1 scene")


def test_not_utf8_and_empty(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_bytes(b"animals:\n- subject: caf\xe9\n")
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:2:", "not UTF-8")
    empty = write(tmp_path / "empty.yaml", "")
    with pytest.raises(SuiteError, match="empty"):
        read_suite(empty)
    with pytest.raises(SuiteError, match="no such file"):
        read_suite(tmp_path / "missing.yaml")


def test_yaml_aliases_and_tags(tmp_path):
    shared = """\
    animals:
    - subject: a fox
      settings: &scenes [in the snow, in a park]
    - subject: a cat
      settings: *scenes
    """
    suite = read_suite(write(tmp_path / "a.yaml", shared))
    assert suite.units[1].prompts == ("a cat in the snow", "a cat in a park")
    path = write(
        tmp_path / "b.yaml", "animals:\n- subject: !!python/name:os.system x\n  settings: [a, b]\n"
    )
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:2:", "cannot read this value")
    recursive = write(tmp_path / "c.yaml", "animals: &a\n- *a\n")
    with pytest.raises(SuiteError, match="recursive alias"):
        read_suite(recursive)


# ================================================================== DreamBench
TABLE = """\
Classes

subject_name,class
backpack,backpack
dog,dog
bear_plushie,stuffed animal

Prompts

Object Prompts

prompt_list = [
'a {0} {1} in the jungle'.format(unique_token, class_token),
'a red {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a red hat'.format(unique_token, class_token),
'a {0} {1} in a chef outfit'.format(unique_token, class_token),
'a wet {0} {1}'.format(unique_token, class_token)
]
"""


def dreambench(
    root: Path, table: str = TABLE, subjects=("backpack", "dog", "bear_plushie"), **kw
) -> Path:
    write(root / "prompts_and_classes.txt", table, **kw)
    for i, name in enumerate(subjects):
        png(root / name / "01.png", (40 * i, 100, 100))
        png(root / name / "00.png", (40 * i, 200, 100))
    return root


def test_dreambench_parses(tmp_path):
    root = dreambench(tmp_path / "dataset")
    (root / "dog" / "notes.txt").write_text("not an image")
    png(root / "dog" / "10.png")
    png(root / "dog" / "a.png")
    suite = read_suite(root)
    assert (suite.layout, suite.name, suite.source) == (DREAMBENCH, "dataset", root)
    backpack, dog, bear = suite.units
    assert backpack == ParsedUnit(
        name="backpack",
        group="backpack",
        subject_prompt="sks backpack",
        prompts=("a sks backpack in the jungle", "a red sks backpack"),
        references=(root / "backpack" / "00.png", root / "backpack" / "01.png"),
        token="sks",
        class_word="backpack",
        live=False,
        subject_words=("backpack",),
        line=4,
    )
    assert dog.live and dog.line == 5
    assert dog.prompts == (
        "a sks dog wearing a red hat",
        "a sks dog in a chef outfit",
        "a wet sks dog",
    )
    assert [p.name for p in dog.references] == ["00.png", "01.png", "10.png", "a.png"]
    assert all(p.is_absolute() for p in dog.references)
    assert not bear.live
    assert bear.prompts == ("a sks stuffed animal in the jungle", "a red sks stuffed animal")
    assert (bear.group, bear.class_word, bear.subject_words) == (
        "stuffed animal",
        "stuffed animal",
        ("stuffed", "animal"),
    )


def test_dreambench_identifier_live_classes_and_relative_path(tmp_path, monkeypatch):
    dreambench(tmp_path / "dataset")
    monkeypatch.chdir(tmp_path)
    suite = read_suite(
        "dataset/prompts_and_classes.txt", identifier="zwx", live_classes={"Stuffed Animal"}
    )
    backpack, dog, bear = suite.units
    assert suite.source == Path("dataset/prompts_and_classes.txt")
    assert backpack.prompts == ("a zwx backpack in the jungle", "a red zwx backpack")
    assert not dog.live and dog.prompts == ("a zwx dog in the jungle", "a red zwx dog")
    assert bear.live and bear.prompts[0] == "a zwx stuffed animal wearing a red hat"
    assert bear.token == "zwx" and bear.subject_prompt == "zwx stuffed animal"
    assert bear.references[0] == tmp_path / "dataset" / "bear_plushie" / "00.png"
    with pytest.raises(SuiteError, match="one word"):
        read_suite("dataset", identifier="two words")
    with pytest.raises(SuiteError, match="no prompt rule"):
        read_suite("dataset", prompt_rule="{subject} {setting}")


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_dreambench_crlf_and_bom(tmp_path, newline, bom):
    root = dreambench(tmp_path / "db", newline=newline, bom=bom)
    suite = read_suite(root)
    assert [u.line for u in suite.units] == [4, 5, 6]
    assert suite.units[1].prompts[2] == "a wet sks dog"


def table_with(old: str, new: str) -> str:
    assert old in TABLE
    return TABLE.replace(old, new)


@pytest.mark.parametrize(
    "table, line, fragments",
    [
        # a row with no class
        (table_with("dog,dog", "dog"), 5, ["subject 'dog' has no class"]),
        (table_with("dog,dog", "dog, "), 5, ["subject 'dog' has no class"]),
        # a duplicate subject
        (
            table_with("bear_plushie,stuffed animal", "dog,dog"),
            6,
            ["duplicate subject 'dog'", "first on line 5"],
        ),
        # a template with a placeholder other than {0}/{1}
        (table_with("'a red {0} {1}'", "'a red {0} {2}'"), 14, ["placeholder {2}", "only {0}"]),
        (table_with("'a wet {0} {1}'", "'a wet {token} {1}'"), 22, ["placeholder {token}"]),
        (table_with("'a red {0} {1}'", "'a red {0} {1!r}'"), 14, ["placeholder {1!r}"]),
        # not .format(unique_token, class_token)
        (
            table_with(
                "'a red {0} {1}'.format(unique_token, class_token)",
                "'a red {0} {1}'.format(class_token)",
            ),
            14,
            ["must end in .format(unique_token, class_token)"],
        ),
        (
            table_with("'a red {0} {1}'.format(unique_token, class_token)", "a red sks dog"),
            14,
            ["expected a template"],
        ),
        # an unexpected line among the prompts
        (
            table_with("Live Subject Prompts", "Live Prompts"),
            17,
            ["unexpected line 'Live Prompts'"],
        ),
        # a list not closed
        (TABLE.rstrip().rstrip("]"), 19, ["not closed with ]"]),
        # an empty list
        (
            table_with(
                "'a {0} {1} in the jungle'.format(unique_token, class_token),\n'a red {0} {1}'.format(unique_token, class_token)\n",
                "",
            ),
            12,
            ["the prompt list is empty"],
        ),
    ],
    ids=[
        "no-class",
        "empty-class",
        "duplicate",
        "placeholder-2",
        "placeholder-name",
        "conversion",
        "format-args",
        "not-a-template",
        "unexpected-line",
        "unclosed",
        "empty-list",
    ],
)
def test_dreambench_malformed_table(tmp_path, table, line, fragments):
    root = dreambench(tmp_path / "db", table)
    with pytest.raises(SuiteError) as exc:
        read_suite(root)
    assert_problem(exc, f"{root / 'prompts_and_classes.txt'}:{line}:", *fragments)


def test_dreambench_missing_prompt_lists(tmp_path):
    live_only_missing = TABLE.split("Live Subject Prompts")[0]
    root = dreambench(tmp_path / "a", live_only_missing)
    with pytest.raises(SuiteError) as exc:
        read_suite(root)
    assert_problem(
        exc, f"{root / 'prompts_and_classes.txt'}:", "no 'Live Subject Prompts' prompt list"
    )
    # objects only: the live list is not needed
    objects = read_suite(root, live_classes=())
    assert [u.live for u in objects.units] == [False, False, False]
    none = TABLE.split("Prompts")[0]
    root = dreambench(tmp_path / "b", none)
    with pytest.raises(SuiteError) as exc:
        read_suite(root)
    assert_problem(exc, f"{root / 'prompts_and_classes.txt'}:", "no prompt lists")
    root = dreambench(tmp_path / "c", "Classes\n\nsubject_name,class\n")
    with pytest.raises(SuiteError, match="no subjects"):
        read_suite(root)


def test_dreambench_folder_problems(tmp_path):
    root = dreambench(tmp_path / "db", subjects=("backpack",))  # dog and bear_plushie missing
    (root / "bear_plushie").mkdir()
    (root / "bear_plushie" / "readme.txt").write_text("x")
    table = root / "prompts_and_classes.txt"
    with pytest.raises(SuiteError) as exc:
        read_suite(root)
    assert_problem(exc, f"{table}:5:", "subject 'dog'", "no such folder")
    assert_problem(exc, f"{table}:6:", "subject 'bear_plushie'", "holds no reference images")
    assert len(problems(exc)) == 2


def test_dreambench_unreadable_image_is_named(tmp_path):
    root = dreambench(tmp_path / "db")
    bad = root / "dog" / "02.jpg"
    bad.write_bytes(b"not a jpeg at all")
    png(root / "backpack" / "tiny.png", size=(4, 4))
    (root / "bear_plushie" / "00.png").unlink()
    (root / "bear_plushie" / "01.png").unlink()
    (root / "bear_plushie").rmdir()
    (root / "bear_plushie").write_text("a file")
    table = root / "prompts_and_classes.txt"
    with pytest.raises(SuiteError) as exc:
        read_suite(root)
    assert_problem(exc, f"{table}:5:", "subject 'dog'", str(bad), "not a readable image")
    assert_problem(exc, f"{table}:4:", "tiny.png", "not a usable image shape")
    assert_problem(exc, f"{table}:6:", "is a file, not a folder")


# ================================================================== mtp YAML
def mtp_suite(tmp_path: Path, text: str, **kw) -> Path:
    png(tmp_path / "refs" / "fox1.png")
    png(tmp_path / "refs" / "fox2.png", (0, 0, 200))
    return write(tmp_path / "lab.yaml", text, **kw)


MTP_TEXT = """\
suite: my-lab-set
prompt_rule: "a photo of {subject}, {setting}"
units:
  - name: fox
    group: animals
    subject: a red  fox
    settings: [in the snow, reading a book]
    references: [refs/fox2.png, refs/fox1.png]
    token: sks
    class_word: fox
  - name: chair.v2
    subject: a wooden chair
    settings:
      - in a garden
      - in a kitchen
      - on the moon
"""


def test_mtp_parses(tmp_path):
    path = mtp_suite(tmp_path, MTP_TEXT)
    suite = read_suite(path)
    assert (suite.layout, suite.name, suite.prompt_rule) == (
        MTP,
        "my-lab-set",
        "a photo of {subject}, {setting}",
    )
    fox, chair = suite.units
    assert fox == ParsedUnit(
        name="fox",
        group="animals",
        subject_prompt="a red fox",
        prompts=("a photo of a red fox, in the snow", "a photo of a red fox, reading a book"),
        references=(tmp_path / "refs" / "fox2.png", tmp_path / "refs" / "fox1.png"),
        token="sks",
        class_word="fox",
        live=False,
        subject_words=("a", "red", "fox"),
        line=4,
    )
    assert chair.prompts == (
        "a photo of a wooden chair, in a garden",
        "a photo of a wooden chair, in a kitchen",
        "a photo of a wooden chair, on the moon",
    )
    assert (chair.group, chair.references, chair.token, chair.line) == ("", (), "", 11)


def test_mtp_default_and_custom_rule(tmp_path):
    text = MTP_TEXT.replace('prompt_rule: "a photo of {subject}, {setting}"\n', "").replace(
        "suite: my-lab-set\n", ""
    )
    path = mtp_suite(tmp_path, text)
    suite = read_suite(path)
    assert (suite.name, suite.prompt_rule) == ("lab", "{subject} {setting}")
    assert suite.units[0].prompts == ("a red fox in the snow", "a red fox reading a book")
    custom = read_suite(mtp_suite(tmp_path, MTP_TEXT), prompt_rule="{setting}: {subject}")
    assert custom.prompt_rule == "{setting}: {subject}"
    assert custom.units[1].prompts[2] == "on the moon: a wooden chair"
    with pytest.raises(SuiteError, match=re.escape("unknown placeholder {style}")):
        read_suite(path, prompt_rule="{style} {subject} {setting}")


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_mtp_crlf_and_bom(tmp_path, newline, bom):
    suite = read_suite(mtp_suite(tmp_path, MTP_TEXT, newline=newline, bom=bom))
    assert [u.line for u in suite.units] == [4, 11]
    assert suite.name == "my-lab-set"


@pytest.mark.parametrize(
    "old, new, line, fragments",
    [
        (
            "suite: my-lab-set",
            "suites: my-lab-set",
            1,
            ["unknown key 'suites'", "known: suite, prompt_rule, units"],
        ),
        (
            "    token: sks",
            "    tokn: sks",
            9,
            ["unit 'fox'", "unknown key 'tokn'", "name, group, subject, settings"],
        ),
        ("  - name: chair.v2\n", "  - group: x\n", 11, ["unit 2: no 'name'"]),
        ("name: chair.v2", "name: my chair", 11, ["name 'my chair' may only use"]),
        ("name: chair.v2", "name: fox", 11, ["duplicate name", "first on line 4"]),
        ("[in the snow, reading a book]", "[in the snow]", 7, ["unit 'fox'", "only 1 scene"]),
        (
            "subject: a wooden chair",
            "subject: [a, chair]",
            12,
            ["'subject' must be text, not a list"],
        ),
        ("refs/fox1.png]", "refs/nope.png]", 8, ["reference 2", "nope.png", "no such file"]),
        (
            '"a photo of {subject}, {setting}"',
            '"a photo of {subject}"',
            2,
            ["lacks the placeholder {setting}"],
        ),
        ("token: sks", "token: s k s", 9, ["'token' must be one word"]),
        (
            "      - in a kitchen",
            "      - {in: a kitchen}",
            15,
            ["setting 2 must be text, not a mapping"],
        ),
        ("    group: animals", "    group: 3", 5, ["'group' must be text, not the number 3"]),
    ],
)
def test_mtp_malformed(tmp_path, old, new, line, fragments):
    assert old in MTP_TEXT
    path = mtp_suite(tmp_path, MTP_TEXT.replace(old, new, 1))
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:{line}:", *fragments)


def test_mtp_units_shape(tmp_path):
    path = write(tmp_path / "a.yaml", "suite: x\nunits: a fox\n")
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:2:", "'units' must be a list of units")
    path = write(tmp_path / "b.yaml", "suite: x\n")
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:1:", "no 'units'")
    path = write(tmp_path / "c.yaml", "units:\n  - a fox\n")
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:2:", "unit 1: must be a mapping")


def test_mtp_bad_reference_image(tmp_path):
    path = mtp_suite(tmp_path, MTP_TEXT)
    (tmp_path / "refs" / "fox1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SuiteError) as exc:
        read_suite(path)
    assert_problem(exc, f"{path}:8:", "reference 2", "fox1.png", "not a readable image")


# ================================================================== detection, demos
def test_detection(tmp_path):
    db = dreambench(tmp_path / "db")
    assert detect_layout(db) == DREAMBENCH
    assert detect_layout(db / "prompts_and_classes.txt") == DREAMBENCH
    assert detect_layout(write(tmp_path / "c.yaml", CONSISTORY_TEXT)) == CONSISTORY
    assert detect_layout(mtp_suite(tmp_path, MTP_TEXT)) == MTP
    # a file with only mtp's other keys is still mtp (and says what is missing)
    assert detect_layout(write(tmp_path / "m.yaml", "suite: x\n")) == MTP
    (tmp_path / "empty").mkdir()
    with pytest.raises(SuiteError, match="without prompts_and_classes.txt"):
        read_suite(tmp_path / "empty")
    for text, what in [
        ("just text\n", "'just text'"),
        ("a: 1\nb: two\n", "a mapping without lists"),
        ("{}\n", "an empty mapping"),
        ("- a\n- b\n", "a list"),
    ]:
        path = write(tmp_path / "x.yaml", text)
        with pytest.raises(SuiteError) as exc:
            read_suite(path)
        assert_problem(exc, f"{path}:1:", f"cannot tell the suite layout of {what}", "DreamBench")


def test_forced_layout(tmp_path):
    path = write(tmp_path / "c.yaml", CONSISTORY_TEXT)
    with pytest.raises(SuiteError, match=re.escape("unknown suite layout 'consistory+'")):
        read_suite(path, layout="consistory+")
    with pytest.raises(SuiteError) as exc:
        read_suite(path, layout=MTP)
    assert_problem(exc, f"{path}:1:", "unknown key 'animals'")
    with pytest.raises(SuiteError, match="folder with prompts_and_classes.txt"):
        read_suite(path, layout=DREAMBENCH)
    with pytest.raises(SuiteError, match="a folder, not a consistory YAML file"):
        read_suite(dreambench(tmp_path / "db"), layout=CONSISTORY)


def test_demo_suites_parse():
    assert set(DEMO_SUITES) == {"consistory-demo", "dreambench-demo"}
    consistory = read_suite(DEMO_SUITES["consistory-demo"])
    assert consistory.layout == CONSISTORY
    assert sorted({u.group for u in consistory.units}) == ["animals", "things"]
    assert len(consistory.units) == 4 and all(len(u.prompts) == 3 for u in consistory.units)
    assert consistory.units[0].prompts[0] == "a photo of a corgi on the beach"
    bench = read_suite(DEMO_SUITES["dreambench-demo"])
    assert bench.layout == DREAMBENCH
    assert {u.name: u.live for u in bench.units} == {"backpack": False, "cat": True, "dog": True}
    assert bench.units[0].prompts == (
        "a sks backpack in the snow",
        "a sks backpack on the beach",
        "a red sks backpack",
    )
    for unit in bench.units:
        assert len(unit.references) == 2 and len(unit.prompts) == 3
        for ref in unit.references:
            with Image.open(ref) as im:
                assert im.size == (64, 64)
    # distinguishable references: no two subjects share an image
    assert len({ref.read_bytes() for u in bench.units for ref in u.references}) == 6
    assert (Path(DEMO_SUITES["consistory-demo"]).parent.parent / "SCHEMA.md").is_file()
