"""A yes/no question before anything destructive (cancel, delete, requeue that drops scores)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    """y answers yes; n or escape answers no. Enter is no answer: a key pressed out of habit
    (or held from the screen before) must not confirm anything destructive. No focusable
    buttons, so the letter keys always reach these bindings."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, yes: str = "yes"):
        super().__init__(id="confirm")
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static(Text(self.question), id="confirm-question")
            yield Static(
                Text.assemble(
                    ("y", "bold"), f": {self.yes}    ", ("n", "bold"), "/esc: keep as is"
                ),
                id="confirm-keys",
            )

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
