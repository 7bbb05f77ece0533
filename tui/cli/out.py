"""How `mtp` prints: every line through store.safe_text, so a name, prompt, tag, note, file
name or error text never writes a raw control, escape, bidi or invisible character to the
terminal (or to a file a terminal will show). Single-line fields (names, prompts, tags) are
made one line where they are formatted (`one`), so a newline in a name cannot forge an output
line; `echo` keeps newlines and tabs, as multi-line texts (tracebacks, notes) need them."""

from __future__ import annotations

import sys

from store.safe_text import safe_text


def echo(*parts: object, file=None, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
    """print(), with every part shown safe."""
    print(
        *(safe_text(p, multiline=True) for p in parts),
        file=sys.stdout if file is None else file,
        sep=sep,
        end=end,
        flush=flush,
    )


def one(value: object) -> str:
    """A single-line field (a name, a prompt, a tag) shown safe on one line."""
    return safe_text(value)
