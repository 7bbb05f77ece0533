"""User text into the app's widgets: shown safe (store.safe_text: controls, escape sequences,
bidi and invisible characters as visible escapes) and never parsed as markup.

Textual and Rich strip only a few controls (BEL, BS, VT, FF, CR) from what they draw: an ESC in
a name went to the terminal as is (a window title, a cleared screen, a hyperlink). And a str
given to Static, Label, a DataTable cell, a Select option or a notification is read as markup,
so `[bold red]x[/]` in a name was drawn styled and `[link=file:///etc/passwd]` became a live
link (or, being invalid markup, an exception). So the rule in `tui/` is: user text only ever
reaches a widget as Content or Text built here (`plain`, `assemble`, `rich`, `cell`), never inside a
markup string, and the app's notify and titles (MtpApp) sanitise whatever they are given.
"""

from __future__ import annotations

from rich.text import Span, Text
from textual.content import Content

from store.safe_text import is_safe, safe_text


def plain(value: object, style: str = "", *, multiline: bool = False) -> Content:
    """`value` for a Static or Label: shown safe, taken literally (no markup), in `style`
    (a Textual style, as markup would give it: the colours match the rest of the app)."""
    return Content.styled(safe_text(value, multiline=multiline), style)


def assemble(*parts: object, multiline: bool = False) -> Content:
    """Content.assemble of str, (str, style) and Content parts, every str shown safe: program
    text and user text alike, so a caller cannot forget which part came from a user."""
    out = []
    for part in parts:
        if isinstance(part, Content):
            out.append(part)
        elif isinstance(part, tuple):
            out.append((safe_text(part[0], multiline=multiline), *part[1:]))
        else:
            out.append(safe_text(part, multiline=multiline))
    return Content.assemble(*out)


def rich(value: object, style: str = "", *, multiline: bool = False) -> Text:
    """`value` as a Rich Text, for what takes Rich renderables (Rich tables, tree labels,
    select options): shown safe, taken literally."""
    return Text(safe_text(value, multiline=multiline), style=style)


def cell(value: object) -> Text:
    """A one-line table cell: what DataTable makes of a plain str in a one-line row (not wrapped,
    no line end), minus the markup parsing, with the text shown safe."""
    return Text(safe_text(value), no_wrap=True, end="")


def safe_rich(text: Text, *, multiline: bool = False) -> Text:
    """A Text with its unsafe characters replaced by their escapes, styles kept."""
    if is_safe(text.plain, multiline=multiline):
        return text
    plain_text = text.plain
    cuts: list[int] = []
    for i, ch in enumerate(plain_text):
        if not is_safe(ch, multiline=multiline):
            cuts += [i, i + 1]
    pieces = text.divide(sorted(set(cuts)))
    out = text.blank_copy()
    for piece in pieces:
        if len(piece.plain) == 1 and not is_safe(piece.plain, multiline=multiline):
            shown = safe_text(piece.plain, multiline=multiline)
            piece = Text(shown, spans=[Span(0, len(shown), s.style) for s in piece.spans])
        out.append_text(piece)
    return out
