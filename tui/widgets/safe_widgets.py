"""Textual's text-showing controls, made to show user text safe (tui.safe).

Input, TextArea, Select and DirectoryTree draw their text as given: an ESC in a pasted value, a
loaded draft, a concept's name or a file's name went to the terminal, and Select options and
tree labels given as str are read as markup (a name like `[/]` raised MarkupError and took the
screen down). These subclasses escape controls in what they hold (values loaded, typed and
pasted) and take labels literally; they behave like Textual's otherwise (CSS rules for `Input`,
`TextArea`, `Select`, `DirectoryTree` match them)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DirectoryTree, Input, Select, TextArea

from store.safe_text import safe_text

from ..safe import rich, safe_rich


class SafeInput(Input):
    """A one-line value: a pasted or loaded control character is held as its escape."""

    def validate_value(self, value: str) -> str:
        return safe_text(value)


class SafeTextArea(TextArea):
    """Several lines (tab and newline kept); every edit, typed or pasted, and every load."""

    def __init__(self, text: str = "", **kwargs):
        super().__init__(safe_text(text, multiline=True), **kwargs)

    def load_text(self, text: str) -> None:
        super().load_text(safe_text(text, multiline=True))

    def edit(self, edit):
        edit.text = safe_text(edit.text, multiline=True)
        return super().edit(edit)


def _label(label):
    if isinstance(label, str):
        return rich(label)
    if isinstance(label, Text):
        return safe_rich(label)
    return label


class SafeSelect(Select):
    """Option labels (concept names, axis values) taken literally and shown safe."""

    def __init__(self, options=(), **kwargs):
        super().__init__([(_label(label), value) for label, value in options], **kwargs)

    def set_options(self, options) -> None:
        super().set_options([(_label(label), value) for label, value in options])


class SafeDirectoryTree(DirectoryTree):
    """File and folder names are whatever the disk holds: shown safe, never read as markup."""

    def process_label(self, label) -> Text:
        return super().process_label(rich(label) if isinstance(label, str) else safe_rich(label))
