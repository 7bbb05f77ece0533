"""Export dialog: runs CSV, summary CSV, trade-off plot PNG and image grid PNG into a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from .. import keymap
from ..safe import assemble, plain
from ..widgets.quiet import FormButton
from ..widgets.safe_widgets import SafeInput, SafeSelect
from .results import axes_for

# (checkbox id, label, export function, file suffix, needs an axis)
KINDS = [
    ("runs", "Runs CSV (every run, parameter and score)", "export_runs_csv", ".csv", False),
    ("summary", "Summary CSV (mean/std/SEM per axis value)", "export_summary_csv", ".csv", True),
    ("plot", "Trade-off plot PNG", "export_plot_png", ".png", True),
    ("grid", "Image grid PNG", "export_grid_png", ".png", True),
]


def run_exports(
    store,
    experiment_id: int,
    folder: Path,
    by: str,
    kinds: list[str],
    grid_options: dict | None = None,
    table_options: dict | None = None,
) -> list[tuple[str, str, bool]]:
    """(kind, path or error, ok) per requested export; one failure does not stop the others.
    ``grid_options``: x, z, pins, seeds of the image grid (as chosen on the Results screen);
    ``table_options``: cells and versus of the table (summary; cells also for the plot)."""
    from store.report import export

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for kind, _, fn, suffix, needs_axis in KINDS:
        if kind not in kinds:
            continue
        try:
            name = export.default_name(
                store, experiment_id, kind, suffix, by if needs_axis else None, folder=folder
            )
            args = (store, experiment_id, by, name) if needs_axis else (store, experiment_id, name)
            extra: dict = {}
            layouts: list = []
            if kind == "grid":
                extra = dict(grid_options or {}, on_layout=layouts.append)
            elif kind == "summary":
                extra = {k: v for k, v in (table_options or {}).items() if v is not None}
            elif kind == "plot" and (table_options or {}).get("cells"):
                extra = {"cells": table_options["cells"]}
            path = getattr(export, fn)(*args, folder=folder, **extra)
            note = ""
            if layouts and layouts[0].n_missing:
                note = f" ({layouts[0].n_missing} cells without image)"
            out.append((kind, str(path) + note, True))
        except Exception as exc:  # report per file: a grid may fail while the CSVs succeed
            out.append((kind, f"{type(exc).__name__}: {exc}", False))
    return out


class ExportScreen(ModalScreen):
    # A modal screen cuts off the app's bindings, so help is repeated here.
    BINDINGS = keymap.bindings("export") + [
        Binding("escape", "dismiss", "Close", id="export.close"),
        Binding("f1", "app.help", "Help", id="export.help"),
    ]

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Done(Message):
        results: list[tuple[str, str, bool]]
        error: str = ""

    def __init__(self, experiment_id: int | None = None):
        super().__init__(id="export")
        self.experiment_id = experiment_id
        self.results: list[tuple[str, str, bool]] = []
        self.grid_options: dict = {}
        self.table_options: dict = {}  # cells and versus, as chosen on the Results screen
        self.results_axis: str | None = None

    @property
    def store(self):
        return self.app.store

    def compose(self) -> ComposeResult:
        # Scrolls when the results list outgrows a small terminal (80x24 hid the last lines).
        with VerticalScroll(id="export-box"):
            yield Label(
                plain(f"Export experiment {self.experiment_id}")
                if self.experiment_id is not None
                else plain("No experiment selected: pick one on Home first", "yellow"),
                id="export-title",
            )
            yield Label("Folder")
            yield SafeInput(str(self.store.home.exports), id="export-folder", compact=True)
            yield Label("Group by (summary, plot, grid)")
            yield SafeSelect([], id="export-axis", allow_blank=True, prompt="axis", compact=True)
            yield Static("", id="export-grid-note")
            for kind, label, *_ in KINDS:
                yield Checkbox(label, True, id=f"kind-{kind}", compact=True)
            with Horizontal(id="export-buttons"):
                yield FormButton("Export (ctrl+s)", id="export-go", variant="primary", compact=True)
                yield FormButton("Close (esc)", id="export-close", compact=True)
            yield Static("", id="export-log")

    def _apply_size(self, size) -> None:
        from ._common import SHORT_HEIGHT

        self.set_class(size.height < SHORT_HEIGHT, "short")

    def on_resize(self, event) -> None:
        self._apply_size(event.size)

    def on_mount(self) -> None:
        self._apply_size(self.app.size)
        if self.experiment_id is not None:
            from store.queries import get_experiment

            exp = get_experiment(self.store, self.experiment_id)
            if exp is not None:
                axes = axes_for(exp.spec_json)
                self._take_results_choices()
                select = self.query_one("#export-axis", Select)
                select.set_options([(a, a) for a in axes])
                select.value = self.results_axis if self.results_axis in axes else axes[0]
                self._show_grid_note()
                self.query_one("#export-title", Label).update(
                    assemble("Export ", (exp.name, "b"), f" (#{exp.id})")
                )
        self.query_one("#export-go", Button).focus()

    def _take_results_choices(self) -> None:
        """Opened over Results for the same experiment: export the grid as shown there."""
        from .results import ResultsScreen

        below = next(
            (s for s in reversed(self.app.screen_stack[:-1]) if isinstance(s, ResultsScreen)), None
        )
        if below is not None and below.experiment_id == self.experiment_id:
            self.results_axis = below.by
            self.grid_options = below._grid_options()
            self.table_options = {"cells": below.cells, "versus": below.versus}

    def _show_grid_note(self) -> None:
        o = self.grid_options
        parts = [f"{k}={o[k]}" for k in ("x", "z", "seeds") if o.get(k)]
        pins = ", ".join(f"{a}={v}" for a, v in (o.get("pins") or {}).items())
        text = (
            "Grid as chosen on Results: " + ", ".join(parts + ([f"pinned {pins}"] if pins else []))
            if parts or pins
            else "Grid: rows = the axis above; other axes pinned to the first run's values"
        )
        self.query_one("#export-grid-note", Static).update(
            plain(text + " (pins are printed on the grid)")
        )

    @on(Select.Changed, "#export-axis")
    def _axis_changed(self, event: Select.Changed) -> None:
        # Results' grid choices belong to its axis; another axis starts from the defaults.
        if self.results_axis is not None and event.value != self.results_axis:
            # the paired reference is a value of Results' axis; the cells choice holds for any
            self.table_options = {"cells": self.table_options.get("cells")}
        if self.results_axis is not None and event.value != self.results_axis and self.grid_options:
            self.grid_options = {}
            self._show_grid_note()

    @on(Button.Pressed, "#export-close")
    def _close(self) -> None:
        self.dismiss()

    @on(Button.Pressed, "#export-go")
    def action_export(self) -> None:
        log = self.query_one("#export-log", Static)
        if self.experiment_id is None:
            log.update(plain("no experiment selected", "red"))
            return
        by = self.query_one("#export-axis", Select).value
        kinds = [k for k, *_ in KINDS if self.query_one(f"#kind-{k}", Checkbox).value]
        folder = Path(self.query_one("#export-folder", Input).value).expanduser()
        log.update("exporting...")
        self._export(folder, by if isinstance(by, str) else "final_step", kinds)

    @work(thread=True, exclusive=True, group="export")
    def _export(self, folder: Path, by: str, kinds: list[str]) -> None:
        try:
            results = run_exports(
                self.store,
                self.experiment_id,
                folder,
                by,
                kinds,
                self.grid_options,
                self.table_options,
            )
        except OSError as exc:
            self.post_message(self.Done([], f"folder {folder}: {exc}"))
            return
        self.post_message(self.Done(results))

    def on_export_screen_done(self, message: Done) -> None:
        self.results = message.results
        log = self.query_one("#export-log", Static)
        if message.error:
            log.update(plain(message.error, "red"))
            return
        log.update(
            Content("\n").join(
                plain(f"✓ {k}: {p}", "green") if ok else plain(f"✗ {k}: {p}", "red")
                for k, p, ok in message.results
            )
        )
        # The results are the newest lines: bring the last one into view once laid out.
        box = self.query_one("#export-box", VerticalScroll)
        self.call_after_refresh(box.scroll_end, animate=False)
