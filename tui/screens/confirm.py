"""A yes/no question before anything destructive (cancel, delete, requeue that drops scores)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from ..safe import assemble, plain


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
            # The question names what is at stake (an experiment's name): shown safe, literally.
            yield Static(plain(self.question, multiline=True), id="confirm-question")
            yield Static(
                assemble(("y", "bold"), f": {self.yes}    ", ("n", "bold"), "/esc: keep as is"),
                id="confirm-keys",
            )

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
