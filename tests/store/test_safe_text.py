"""store.safe_text: user text shown with every terminal-active or hidden character escaped."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from store.safe_text import _VISIBLE_FORMAT, is_safe, safe_text

# The hostile corpus every boundary is tested with (tests/tui/test_hostile_text.py reuses it).
HOSTILE = [
    "\x1b]0;pwned\x07",  # OSC 0: window title
    "\x1b[2J\x1b[H",  # CSI 2J: clear the screen
    "\x1b]8;;file:///etc/passwd\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 hyperlink
    "ring\x07",  # BEL
    "c1\x9b31m",  # C1 CSI
    "abc\u202edcba",  # right-to-left override
    "zero\u200bwidth\u2060joined\ufeff",
    "tag\U000e0041\U000e0042",  # invisible tag characters
    "cr\roverwrite",
    "del\x7f",
]


def _unsafe_chars(text: str) -> set[str]:
    bad = set()
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\t\n":
            continue
        if cat in ("Cc", "Cs", "Zl", "Zp") or (cat == "Cf" and not _exempt(ch)):
            bad.add(ch)
    return bad


def _exempt(ch: str) -> bool:
    import re

    return re.fullmatch(f"[{_VISIBLE_FORMAT}]", ch) is not None


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_shown_not_emitted(text):
    out = safe_text(text)
    assert not _unsafe_chars(out), out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert is_safe(out) and not is_safe(text)
    assert safe_text(out) == out  # idempotent: a second boundary changes nothing


def test_escapes_are_readable():
    assert safe_text("\x1b]0;pwned\x07") == "\\x1b]0;pwned\\x07"
    assert safe_text("a\u202eb") == "a\\u202eb"
    assert safe_text("c1\x9b") == "c1\\x9b"
    assert safe_text("t\U000e0041") == "t\\U000e0041"
    assert safe_text("x\ud800") == "x\\ud800"  # a lone surrogate from an undecodable file name


def test_one_line_unless_multiline():
    assert safe_text("a\nb\tc") == "a\\nb\\tc"
    assert safe_text("a\nb\tc", multiline=True) == "a\nb\tc"
    # A carriage return would let text overwrite the line; a Windows line end is a newline.
    assert safe_text("a\r\nb\rc", multiline=True) == "a\nb\\rc"


def test_plain_text_is_returned_as_is():
    text = "a photo of <new1> dog [bold red]x[/] \\x1b über 犬 🐶 مرحبا"
    assert safe_text(text) is text
    assert safe_text(3) == "3" and safe_text(None) == "None"


def test_every_control_and_format_character_is_covered():
    """Every Cc, Cf (bar a few visible ones), Cs, Zl and Zp character of this Python's Unicode
    tables is escaped; a newer Unicode adding one fails here."""
    missed = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if (ch := chr(cp)) not in "\t\n" and _unsafe_chars(ch) and is_safe(ch)
    ]
    assert not missed, missed[:20]
