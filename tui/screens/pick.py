"""Pick one item from a short list by name (sort column, experiment), or None on escape."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from ..safe import plain


class PickScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="pick.cancel")]

    def __init__(self, title: str, items: list[tuple[str, str]], current: str | None = None):
        """`items`: (value, label) pairs; the list opens on `current`."""
        super().__init__(id="pick")
        from ..widgets.find import TypedPrefix

        self.title_text, self.items, self.current = title, items, current
        self._typed = TypedPrefix()

    def compose(self) -> ComposeResult:
        with Vertical(id="pick-box"):
            # Items name experiments: shown safe and literally, like the title.
            yield Label(plain(self.title_text + "  (type to find)"))
            yield OptionList(
                *[Option(plain(label), id=f"opt-{i}") for i, (_, label) in enumerate(self.items)],
                id="pick-list",
            )

    def on_key(self, event) -> None:
        """Typing finds an item by name (the label shows what was typed); backspace undoes."""
        from ..widgets.find import find_index

        option_list = self.query_one(OptionList)
        if event.key == "backspace" and self._typed.text:
            typed = self._typed.back()
        elif event.character and len(event.character) == 1 and event.character.isprintable():
            if event.character == " " and not self._typed.text:
                return
            typed = self._typed.add(event.character)
        else:
            return
        event.stop()
        event.prevent_default()
        self.query_one(Label).update(plain(self.title_text + (f"  find: {typed}" if typed else "")))
        labels = [label for _, label in self.items]
        index = find_index(labels, typed, 0)
        if index is not None:
            option_list.highlighted = index

    def on_mount(self) -> None:
        values = [v for v, _ in self.items]
        option_list = self.query_one(OptionList)
        if self.current in values:
            option_list.highlighted = values.index(self.current)
        option_list.focus()

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.items[event.option_index][0])

    def action_cancel(self) -> None:
        self.dismiss(None)
