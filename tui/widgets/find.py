"""Type-to-find for lists and the file tree: letters typed on them move to the first item whose
label starts with what was typed (then the first that contains it), instead of reaching the
screen's letter keys."""

from __future__ import annotations

import time

from .safe_widgets import SafeDirectoryTree

# Letters typed within this many seconds of the last one extend the search; later ones start
# a new one (as file managers do).
FIND_PAUSE_S = 1.0


def find_index(labels: list[str], typed: str, start: int = 0) -> int | None:
    """The first label (from `start`, wrapping) starting with `typed`, else containing it."""
    if not typed or not labels:
        return None
    typed = typed.lower()
    order = [(start + i) % len(labels) for i in range(len(labels))]
    for test in (str.startswith, str.__contains__):
        for i in order:
            if test(labels[i].lower(), typed):
                return i
    return None


class TypedPrefix:
    """What was typed so far; `add` returns the new search text."""

    pause_s = FIND_PAUSE_S  # class-wide, so tests can make every pause "short"

    def __init__(self) -> None:
        self.text, self._at = "", 0.0

    def add(self, char: str) -> str:
        now = time.monotonic()
        self.text = (self.text if now - self._at < self.pause_s else "") + char
        self._at = now
        return self.text

    def back(self) -> str:
        self.text = self.text[:-1]
        return self.text


class FindTree(SafeDirectoryTree):
    """A file tree that finds a file by its first letters; letters never switch screens."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._typed = TypedPrefix()

    def on_key(self, event) -> None:
        char = event.character
        if not char or not char.isprintable() or char == " " or len(char) != 1:
            return  # space, enter and arrows stay the tree's own keys
        event.stop()  # a typed letter belongs to the search, not to screen navigation
        event.prevent_default()
        typed = self._typed.add(char)
        labels = [str(self.get_node_at_line(i).label) for i in range(self.last_line + 1)]
        # A new search starts below the cursor (the same letter again goes to the next match).
        start = self.cursor_line + (1 if len(typed) == 1 else 0)
        index = find_index(labels, typed, start)
        if index is not None:
            self.move_cursor_to_line(index)
