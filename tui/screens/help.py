"""Help (f1 / ?): the keys of the screen underneath and the global ones, with binding ids."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from .. import keymap
from ..safe import rich

SCOPES = {
    "HomeScreen": "home",
    "ConceptScreen": "concept",
    "SweepScreen": "sweep",
    "RunsScreen": "runs",
    "RunDetailScreen": "detail",
    "CompareScreen": "detail",
    "ResultsScreen": "results",
    "ExportScreen": "export",
}


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close", id="help.close")]

    def __init__(self, under=None):
        super().__init__(id="help")
        self.scope = SCOPES.get(type(under).__name__)

    def compose(self) -> ComposeResult:
        table = Table(title="Keys (remap by id in <home>/keymap.json)", expand=True)
        for col in ("keys", "action", "id"):
            table.add_column(col)
        for scope in [s for s in (self.scope, "app") if s]:
            table.add_section()
            for keys, desc, bid in keymap.describe(scope):
                # Keys and ids may come from the user's keymap.json: taken literally, shown safe.
                table.add_row(rich(keys.replace("_", " ")), rich(desc), rich(bid))
        text = (
            "\nctrl+p: command palette.  In tables: j/k move, g/G top/bottom, enter opens.\n"
            "Sweep grammar: 20,25,50 | 4-50 (+5) | 0.1-0.5 [5] | encoder,decoder | {0,2,4} | up_blocks.3\n"
            "Runs filter (/): words search prompts/tags/notes/errors; status=failed seed=1 "
            "final>5 final=end thr=otsu clip_t>=0.3 tag=good marked=1 exp=3"
        )
        with VerticalScroll(id="help-body"):
            yield Static(table)
            yield Static(text)
