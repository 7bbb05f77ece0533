"""User text made safe to show: every character a terminal would act on, or that hides or
reorders text, is written as a visible escape (`\\x1b`, `\\u202e`) instead of being emitted.

Names, prompts, tags, notes, concept names, file names and error texts are typed (or pasted, or
read from disk) by people and go to terminals: the `mtp` CLI's output, the app's widgets and
titles, engine logs someone will `tail`, CSV files opened in a terminal. A raw ESC there can set
the window title, clear the screen, plant a hyperlink or (on some terminals) answer back with
keystrokes; bidi overrides and zero-width characters make one name read as another. So every
output boundary passes user text through `safe_text`, whatever else it does (markup escaping,
CSV formula quoting).

What is escaped: C0 controls (tab and newline only kept where a field is multi-line), DEL, C1
(U+0080-U+009F; U+009B alone is a CSI on some terminals), the surrogates a mis-decoded file name
carries, line/paragraph separators, bidi controls (U+061C, U+200E/F, U+202A-U+202E,
U+2066-U+2069), zero-width and other invisible format characters (U+00AD, U+180E,
U+200B-U+200D, U+2060-U+2064, U+206A-U+206F, U+FEFF, U+FFF9-U+FFFB) and tag characters
(U+E0000-U+E007F, invisible text smuggled inside visible text). Together that is every character
of Unicode categories Cc, Cf (bar the few visible ones listed in `_VISIBLE_FORMAT`), Cs, Zl and
Zp; a test checks that against the running Python's Unicode tables.

A backslash is not escaped, so `safe_text(safe_text(s)) == safe_text(s)`: shown text can be
sanitised again at the next boundary without growing.
"""

from __future__ import annotations

import logging
import re

# Format characters (category Cf) that render as a visible glyph or only join marks of their own
# script: left alone, so Arabic number signs and Egyptian hieroglyph joiners still show.
_VISIBLE_FORMAT = (
    "\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2"
    "\U000110bd\U000110cd\U00013430-\U0001345f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
)

_UNSAFE_CLASS = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 (bar tab, newline), DEL, C1
    "\u00ad\u061c\u180e"  # soft hyphen, Arabic letter mark, Mongolian vowel separator
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u2028-\u202e"  # line/paragraph separators, bidi embeddings and overrides
    "\u2060-\u2064\u2066-\u206f"  # word joiner, invisible operators, bidi isolates, deprecated
    "\ud800-\udfff"  # lone surrogates (undecodable bytes of a file name)
    "\ufeff\ufff9-\ufffb"  # BOM / zero-width no-break space, interlinear annotation
    "\U000e0000-\U000e007f"  # tag characters
)
# One line: tab and newline are escaped too (a name must not forge a second output line).
_UNSAFE_LINE = re.compile(f"[\t\n{_UNSAFE_CLASS}]")
# Several lines (notes, error texts): tab and newline pass; a carriage return never does (it
# lets text overwrite what was printed before it on the line).
_UNSAFE_MULTILINE = re.compile(f"[{_UNSAFE_CLASS}]")


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _visible(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: object, *, multiline: bool = False) -> str:
    """`value` as text that shows every control, bidi and invisible character as an escape.

    `multiline`: keep tab and newline (a Windows line end counts as a newline); otherwise
    they are escaped as well, so the result is exactly one line."""
    text = value if isinstance(value, str) else str(value)
    if multiline:
        if "\r\n" in text:
            text = text.replace("\r\n", "\n")
        pattern = _UNSAFE_MULTILINE
    else:
        pattern = _UNSAFE_LINE
    if pattern.search(text) is None:  # the usual case: no copy
        return text
    return pattern.sub(_visible, text)


def is_safe(value: str, *, multiline: bool = False) -> bool:
    """Whether `value` shows as it is (nothing `safe_text` would escape)."""
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE_LINE).search(value) is None


class SafeFormatter(logging.Formatter):
    """A log formatter whose lines are shown safe: log lines echo model names, file names,
    prompts and exception texts, and logs are read with `tail -f` in a terminal. Newlines and
    tabs stay (tracebacks)."""

    def format(self, record: logging.LogRecord) -> str:
        return safe_text(super().format(record), multiline=True)
