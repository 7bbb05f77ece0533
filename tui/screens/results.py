"""Results: for one experiment and one swept axis, mean ± SEM per value with Pareto flags, the
text-vs-image alignment trade-off plotted in the terminal, and the image grid preview.

The line under the title states the table's statistical unit, the scale and what image alignment
compares against; rows missing a concept or runs are marked. The grid's rows follow the table's
axis; its columns, optional panels (z), pinned values and seed layout are chosen in the selects
above it, and the pins it used are printed with it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import DataTable, Header, Select, Static
from textual_plotext import PlotextPlot

from store.safe_text import safe_text

from .. import keymap
from ..safe import assemble, cell, plain
from ..widgets.artifact_image import ArtifactImage
from ..widgets.footer import Footer
from ..widgets.safe_widgets import SafeSelect
from ._common import StoreScreen

# Live refreshes wait this many load-times after a load: a running engine finishes runs every few
# seconds, and regrouping a 100k-run sweep holds the GIL for about a second each time.
LIVE_COOLDOWN = 4.0
FALLBACK_AXES = ("final_step", "layers", "start_step", "skip_interval", "seed", "target_prompt")


def axes_for(spec_json: str) -> list[str]:
    """The swept axes first (what the researcher varied), then the other groupable columns."""
    from store.sweep.spec import ExperimentSpec, swept_axes

    try:
        swept = swept_axes(ExperimentSpec.from_json(spec_json))
    except Exception:
        swept = []
    # Seeds and prompts are replicates to average over, so the control axes come first.
    rename = {"seeds": "seed"}
    swept = [rename.get(a, a) for a in swept]
    out = [a for a in swept if a not in ("seed", "target_prompt")] + [
        a for a in swept if a in ("seed", "target_prompt")
    ]
    return out + [a for a in FALLBACK_AXES if a not in out]


class ResultsScreen(StoreScreen):
    BINDINGS = keymap.bindings("results")
    KEY_SCOPE = "results"
    live = True  # new scores regroup the table, the plot and the grid by themselves
    KEPT = True  # F7 reopens this screen as it was left (see on_screen_resume)

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Loaded(Message):
        experiment: Any = None
        axes: list = field(default_factory=list)
        rows: Any = ()
        grid: Any = None
        grid_note: str = ""
        error: str = ""
        by: str = ""
        shown: Any = None  # set once the table is painted, so the worker may go on to the grid
        layout: Any = None  # the grid when it was ready at once (unchanged since last drawn)
        versus_reset: bool = False  # the chosen reference was gone: compared with the baseline

        def __post_init__(self) -> None:
            super().__post_init__()
            self.axes = list(self.axes)

    def __init__(self, experiment_id: int | None = None, by: str | None = None):
        super().__init__(id="results")
        self.experiment_id = experiment_id
        self.by = by
        self.axes: list[str] = []
        self.rows: list = []
        # The grid's own choices; its rows are always the table's axis (self.by).
        self.grid_x: str | None = None
        self.grid_z: str | None = None
        self.pins: dict[str, str] = {}
        self.seeds: str | None = None
        self.pin_axis: str | None = None
        self.grid_layout = None
        self._counts: dict | None = None  # run counts by status at the last load
        self._loaded_token: str | None = None  # the store's change token when the last load began
        self._resumed = False
        self._quiet_until = 0.0  # no live reload before this (time.monotonic)
        self._deferred = None  # the timer of a live check put off until then
        self.grid_shown = False
        # The table's comparison: over the cells complete in every row, or every run; the paired
        # column against the baseline (None) or one value of the axis.
        self.cells = "common"
        self.versus: str | None = None

    def compose(self) -> ComposeResult:
        # Aggregating takes about as long as mounting these widgets, so it starts first and the
        # two overlap. Its Loaded message is handled only after Mount, when the widgets exist.
        if self.experiment_id is None:
            self.experiment_id = self.app.experiment_id
        if self.experiment_id is not None:
            self._load(self.experiment_id, self.by, self._grid_options())
        yield Header()
        with Horizontal(id="results-head"):
            yield Static("", id="results-title")
            yield SafeSelect([], prompt="axis", id="axis", allow_blank=True, compact=True)
            yield SafeSelect(
                [("common cells", "common"), ("all runs", "all")],
                id="cells",
                value="common",
                allow_blank=False,
                compact=True,
            )
            yield SafeSelect([], prompt="vs baseline", id="versus", compact=True)
        yield Static("", id="results-unit")
        with Horizontal(id="results-body"):
            with Vertical(id="results-left"):
                yield DataTable(id="results-table", cursor_type="row", zebra_stripes=True)
                with Horizontal(classes="grid-controls"):
                    yield Static("grid x", classes="grid-label")
                    yield SafeSelect([], prompt="default", id="grid-x", compact=True)
                    yield Static("z", classes="grid-label")
                    yield SafeSelect([], prompt="none", id="grid-z", compact=True)
                    yield SafeSelect(
                        [("seed pinned", "pinned"), ("row per seed", "each")],
                        id="grid-seeds",
                        value="pinned",
                        allow_blank=False,
                        compact=True,
                    )
                with Horizontal(classes="grid-controls"):
                    yield Static("pin", classes="grid-label")
                    yield SafeSelect([], prompt="axis", id="grid-pin-axis", compact=True)
                    yield Static("=", classes="grid-label")
                    yield SafeSelect([], prompt="value", id="grid-pin-value", compact=True)
                yield Static("", id="results-grid-caption")
                yield ArtifactImage("image grid", id="results-grid")
            with Vertical(id="results-right"):
                yield PlotextPlot(id="results-plot")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        self._show_loading()  # compose started the first load

    def reload(self) -> None:
        if self._show_loading():
            self._load(self.experiment_id, self.by, self._grid_options())

    def _show_loading(self) -> bool:
        title = self.query_one("#results-title", Static)
        if self.experiment_id is None:
            title.update(plain("No experiment selected: press o to pick one.", "yellow"))
            return False
        title.update(f"experiment {self.experiment_id}: loading...")
        return True

    def _grid_options(self) -> dict:
        """The grid choices, less any that collide with the table's axis (then the default applies)."""
        taken = {self.by, self.grid_x, self.grid_z}
        x = self.grid_x if self.grid_x != self.by else None
        z = self.grid_z if self.grid_z not in (self.by, x) else None
        pins = {
            a: v
            for a, v in self.pins.items()
            if a not in taken and not (a == "seed" and self.seeds == "each")
        }
        seeds = self.seeds if "seed" not in taken else None
        return dict(x=x, z=z, pins=pins, seeds=seeds)

    def retarget(self, experiment_id: int | None = None) -> None:
        """Opened for an experiment (from the runs browser) while kept."""
        if experiment_id is not None:
            self.app.experiment_id = experiment_id
            if experiment_id != self.experiment_id:
                self._show_experiment(experiment_id, None)

    def _show_experiment(self, experiment_id: int, by: str | None) -> None:
        self.experiment_id, self.by = experiment_id, by
        self.versus = None
        self.grid_x = self.grid_z = self.seeds = self.pin_axis = None
        self.pins = {}
        if self.is_mounted:
            self.reload()

    def on_screen_resume(self) -> None:
        # Reopened (not first shown): follow Home's experiment, and reload only when the store
        # moved since the last load, so a reopened screen never shows less than a new one would.
        if not self._resumed:
            self._resumed = True
            return
        chosen = self.app.experiment_id
        if chosen is not None and chosen != self.experiment_id:
            self._show_experiment(chosen, None)
        elif self.experiment_id is not None:
            self._reload_if_moved()

    @work(thread=True, exclusive=True, group="results-watch")
    def _reload_if_moved(self) -> None:
        if self.store.change_token() != self._loaded_token:
            self.post_message(self.Stale())

    def on_store_changed(self) -> None:
        if self.experiment_id is None:
            return
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            if self._deferred is None:
                self._deferred = self.set_timer(wait, self._after_quiet)
            return
        self._reload_if_changed(self.experiment_id)

    def _after_quiet(self) -> None:
        self._deferred = None
        if (
            self.experiment_id is not None and self.is_current
        ):  # a suspended screen checks on resume
            self._reload_if_changed(self.experiment_id)

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Stale(Message):
        pass

    @work(thread=True, exclusive=True, group="results-watch")
    def _reload_if_changed(self, experiment_id: int) -> None:
        """Aggregating is the costly part: redo it only when this experiment's runs moved."""
        from store.queries import counts_by_status

        if counts_by_status(self.store, experiment_id) != self._counts:
            self.post_message(self.Stale())

    def on_results_screen_stale(self, _message) -> None:
        self.reload()

    def action_pick_experiment(self) -> None:
        from store.queries import list_experiments

        from .pick import PickScreen

        items = [
            (
                str(r.experiment.id),
                f"#{r.experiment.id} {r.experiment.name}  [{r.state}, {r.done}/{r.total} done]",
            )
            for r in list_experiments(self.store)
            if r.experiment.status != "draft"
        ]
        if not items:
            self.notify("no queued experiments yet")
            return

        def done(value: str | None) -> None:
            if value:
                self.experiment_id = self.app.experiment_id = int(value)
                self.by = None
                self.versus = None
                self.reload()

        current = str(self.experiment_id) if self.experiment_id is not None else None
        self.app.push_screen(PickScreen("Results of experiment", items, current), done)

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class LoadBegun(Message):
        """What a load started from (the worker thread never writes the screen's attributes)."""

        token: str
        counts: dict

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class LoadEnded(Message):
        quiet_until: float  # no live reload before this (time.monotonic)

    def on_results_screen_load_begun(self, message: LoadBegun) -> None:
        self._loaded_token, self._counts = message.token, message.counts

    def on_results_screen_load_ended(self, message: LoadEnded) -> None:
        self._quiet_until = message.quiet_until

    @work(thread=True, exclusive=True, group="results")
    def _load(self, experiment_id: int, by: str | None, grid_options: dict | None = None) -> None:
        start = time.monotonic()
        try:
            self._load_now(experiment_id, by, grid_options)
        finally:
            quiet = time.monotonic() + LIVE_COOLDOWN * (time.monotonic() - start)
            self.post_message(self.LoadEnded(quiet))

    def _load_now(self, experiment_id: int, by: str | None, grid_options: dict | None) -> None:
        from store.queries import counts_by_status, get_experiment

        self.post_message(
            self.LoadBegun(self.store.change_token(), counts_by_status(self.store, experiment_id))
        )

        exp = get_experiment(self.store, experiment_id)
        if exp is None:
            self.post_message(self.Loaded(error=f"experiment {experiment_id} does not exist"))
            return
        axes = axes_for(exp.spec_json)
        by = by if by in axes else axes[0]
        # Reopening the screen, cycling axes or a live refresh that found nothing new reuse the
        # table and grid computed under the same change token (identical to recomputing).
        from store.queries import InputError
        from store.report.memo import cached_aggregate as aggregate
        from store.report.memo import cached_render_grid as render_grid

        cells, versus = self.cells, self.versus
        reset = False
        try:
            try:
                rows = aggregate(self.store, experiment_id, by, cells=cells, versus=versus)
            except InputError:
                if versus is None:
                    raise
                # the chosen reference is gone (another axis, a deleted value): the baseline
                reset = True
                rows = aggregate(self.store, experiment_id, by, cells=cells)
        except Exception as exc:
            self.post_message(self.Loaded(exp, axes, error=f"aggregate failed: {exc}", by=by))
            return
        options = dict(grid_options or {})
        # A grid drawn since the last change comes with the table: one paint, no second pass.
        kept = (
            render_grid(self.store, experiment_id, by, only_cached=True, **options)
            if rows
            else None
        )
        if kept is not None:
            self.post_message(self.Loaded(exp, axes, rows, by=by, layout=kept, versus_reset=reset))
            return
        # The table and the plot first: the image grid reads every run and image and comes after.
        shown = threading.Event()
        self.post_message(
            self.Loaded(
                exp,
                axes,
                rows,
                None,
                "rendering the image grid..."
                if rows
                else "no finished runs yet: the grid appears as runs complete",
                by=by,
                shown=shown,
                versus_reset=reset,
            )
        )
        if not rows:
            return
        # Planning the grid holds the GIL for a second on a big sweep, which would keep the event
        # loop from painting the table: start it once the table is on screen (bounded, so a screen
        # closed meanwhile never stalls the worker).
        shown.wait(timeout=2.0)

        grid, note, layout = None, "", None
        try:
            try:
                layout = render_grid(self.store, experiment_id, by, **options)
            except InputError as exc:  # a pin from another axis choice: show the defaults, say why
                layout = render_grid(
                    self.store, experiment_id, by, x=options.get("x"), z=options.get("z")
                )
                note = f"grid choices reset: {exc}"
            grid = layout.image
        except Exception as exc:  # a missing image or a run still running: the table still shows
            note = f"no grid: {exc}"
        self.post_message(self.Grid(experiment_id, by, grid, note, layout))

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Grid(Message):
        experiment_id: int
        by: str
        grid: Any
        note: str
        layout: Any

    def on_results_screen_grid(self, message: Grid) -> None:
        if (message.experiment_id, message.by) != (self.experiment_id, self.by):
            return
        self._show_grid(message.grid, message.note, message.layout)

    def _show_grid(self, grid, note: str, layout) -> None:
        self.grid_shown = True
        self._fill_grid_controls(layout)
        caption = list(layout.caption) if layout else []
        lines = [plain(c) for c in caption]
        if note and grid is not None:
            lines.append(plain(note, "yellow"))
        self.query_one("#results-grid-caption", Static).update(Content("\n").join(lines))
        self.query_one("#results-grid", ArtifactImage).show_image(grid, note or "no grid yet")

    def on_results_screen_loaded(self, message: Loaded) -> None:
        title = self.query_one("#results-title", Static)
        exp = message.experiment
        if exp is None:
            title.update(plain(message.error, "red"))
            return
        if message.versus_reset:
            self.versus = None
        self.by, self.axes, self.rows = message.by, message.axes, message.rows
        select = self.query_one("#axis", Select)
        with select.prevent(Select.Changed):
            select.set_options([(a, a) for a in self.axes])
            select.value = self.by
        values = [r.label for r in self.rows if not r.is_baseline]
        self._set_select("#versus", values, self.versus)
        done = f"{len(self.rows)} groups" if self.rows else "no scored runs yet"
        title.update(
            assemble(
                (exp.name, "b"),
                f" (#{exp.id}) by ",
                (self.by, "b"),
                f": {done}",
                (f"  {message.error}" if message.error else "", "red"),
            )
        )
        self._fill_table()
        self._show_unit()
        if not self.rows:
            self.query_one("#results-grid-caption", Static).update("")
        plot = self.query_one(PlotextPlot)
        from store.report.plots import draw_tradeoff

        try:
            plot.plt.clear_figure()
            draw_tradeoff(
                plot.plt, self.rows, by=self.by, title=f"text vs image alignment by {self.by}"
            )
        except Exception as exc:  # a plot failure leaves the table usable
            plot.plt.clear_figure()
            plot.plt.title(safe_text(f"plot failed: {exc}"))
        plot.refresh()
        if message.layout is not None:
            self._show_grid(message.layout.image, "", message.layout)
        else:
            self.query_one("#results-grid", ArtifactImage).show_image(
                message.grid, message.grid_note or "no grid yet"
            )
        if message.shown is not None:
            self.call_after_refresh(message.shown.set)

    def on_resize(self, event) -> None:
        super().on_resize(event)
        if self.rows:  # which columns fit depends on the width
            self.call_after_refresh(self._fill_table)

    def _fill_table(self) -> None:
        from store.report.aggregate import fmt_number, lower_is_better

        table = self.query_one(DataTable)
        table.clear(columns=True)
        metrics: list[str] = getattr(self.rows, "metrics", None) or []
        unit = getattr(self.rows, "unit", "runs")
        scale = getattr(self.rows, "scale_of", lambda m: "raw")
        # Headers no wider than their "0.2085 ± 0.0032" cells, so two metrics fit a half screen.
        heads = [
            f"{m} ±sem"
            + ("" if scale(m) == "raw" else f" [{scale(m)}]")
            + (" (distance)" if lower_is_better(m) else "")
            for m in metrics
        ]
        ref = getattr(self.rows, "reference", "") or "ref"
        diffs = [f"{m} Δ vs {ref} [95% CI]" for m in metrics]
        # "n" counts the unit the SEM is over (concepts or cells), so the two always agree.
        labels = [self.by, f"n {unit}", "runs/cell", *heads, *diffs, "missing", "P"]  # P: Pareto
        rows = []
        for r in self.rows:
            lo, hi = r.runs_per_cell
            cells = [r.label, str(r.n_unit), str(lo) if lo == hi else f"{lo}-{hi}"]
            for m in metrics:
                st = r.metrics.get(m)
                cells.append(f"{fmt_number(st.mean)} ± {fmt_number(st.sem)}" if st else "–")
            for m in metrics:
                p = r.paired.get(m)
                cells.append(p.text if p else "")
            cells.append(f"! {r.incomplete}" if r.incomplete else "")
            cells.append("*" if r.pareto else "")
            rows.append(cells)
        # Whole columns by priority (a mean±sem is never cut at the pane's edge): the axis
        # value, n, the Pareto mark and the first metrics first, then the paired differences;
        # "missing" only matters when some row is incomplete.
        from ..widgets.columns import Col, fit_columns

        incomplete = any(r.incomplete for r in self.rows)
        k = len(metrics)
        prio = (
            [0, 1, 3 + k]
            + [3 + i for i in range(k)]
            + [4 + k + i for i in range(k)]
            + [2 if incomplete else 50, 2]
        )
        cols = [
            Col(str(i), label, p) for i, (label, p) in enumerate(zip(labels, prio, strict=True))
        ]
        dicts = [{str(i): c for i, c in enumerate(cells)} for cells in rows]
        width = table.size.width or self.app.size.width // 2
        shown = [int(c.key) for c, _ in fit_columns(cols, dicts, width - 2)] or list(range(2))
        table.add_columns(*[labels[i] for i in shown])
        for cells in rows:
            # the label may be a prompt: shown safe, literally
            table.add_row(*[cell(cells[i]) for i in shown])

    def _show_unit(self) -> None:
        # The short form: the full definitions are in the summary CSV and README "Statistics".
        brief = getattr(self.rows, "brief", None)
        lines = brief() if brief and self.rows else []
        flagged = sum(1 for r in self.rows if r.incomplete)
        shown = [plain(line) for line in lines]
        if flagged:
            shown.append(
                plain(f"{flagged} rows incomplete (see 'missing'; never on the front)", "yellow")
            )
        self.query_one("#results-unit", Static).update(Content(" · ").join(shown))

    def _fill_grid_controls(self, layout) -> None:
        self.grid_layout = layout
        if layout is None:
            return
        axes = list(dict.fromkeys(list(layout.axes) + [layout.columns]))
        self.grid_x = layout.columns
        self._set_select("#grid-x", [a for a in axes if a != self.by], layout.columns)
        self._set_select(
            "#grid-z", [a for a in layout.axes if a not in (self.by, layout.columns)], layout.z
        )
        pinnable = list(layout.pin_choices)
        if self.pin_axis not in pinnable:
            self.pin_axis = pinnable[0] if pinnable else None
        self._set_select("#grid-pin-axis", pinnable, self.pin_axis)
        self._fill_pin_values()

    def _fill_pin_values(self) -> None:
        layout = self.grid_layout
        values = layout.pin_choices.get(self.pin_axis, []) if layout and self.pin_axis else []
        current = layout.pins.get(self.pin_axis) if layout and self.pin_axis else None
        self._set_select("#grid-pin-value", values, current)

    def _set_select(self, selector: str, options: list[str], value: str | None) -> None:
        select = self.query_one(selector, Select)
        with select.prevent(Select.Changed):
            select.set_options([(o, o) for o in options])
            if value in options:
                select.value = value
            else:
                select.clear()

    @on(Select.Changed, "#grid-x")
    def _grid_x(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.grid_x:
            self.grid_x = event.value
            self.reload()

    @on(Select.Changed, "#grid-z")
    def _grid_z(self, event: Select.Changed) -> None:
        value = event.value if isinstance(event.value, str) else None
        if value != self.grid_z:
            self.grid_z = value
            self.reload()

    @on(Select.Changed, "#grid-pin-axis")
    def _grid_pin_axis(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.pin_axis = event.value
            self._fill_pin_values()

    @on(Select.Changed, "#grid-pin-value")
    def _grid_pin_value(self, event: Select.Changed) -> None:
        if (
            self.pin_axis
            and isinstance(event.value, str)
            and self.pins.get(self.pin_axis) != event.value
        ):
            self.pins[self.pin_axis] = event.value
            if self.pin_axis == "seed":
                self.seeds = None
            self.reload()

    @on(Select.Changed, "#grid-seeds")
    def _grid_seeds(self, event: Select.Changed) -> None:
        seeds = "each" if event.value == "each" else None
        if seeds != self.seeds:
            self.seeds = seeds
            self.reload()

    @on(Select.Changed, "#axis")
    def _axis(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.by:
            self.by = event.value
            self.versus = None
            self.reload()

    @on(Select.Changed, "#cells")
    def _cells(self, event: Select.Changed) -> None:
        if event.value in ("common", "all") and event.value != self.cells:
            self.cells = event.value
            self.reload()

    @on(Select.Changed, "#versus")
    def _versus(self, event: Select.Changed) -> None:
        value = event.value if isinstance(event.value, str) else None
        if value != self.versus:
            self.versus = value
            self.reload()

    def action_next_axis(self) -> None:
        if self.axes:
            i = self.axes.index(self.by) if self.by in self.axes else -1
            self.by = self.axes[(i + 1) % len(self.axes)]
            self.versus = None
            self.reload()

    def action_score(self) -> None:
        self.app.score_experiment(self.experiment_id)

    def action_refresh(self) -> None:
        self.reload()

    def action_top(self) -> None:
        self.query_one(DataTable).move_cursor(row=0)

    def action_bottom(self) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=max(table.row_count - 1, 0))

    def action_cursor_down(self) -> None:
        self.query_one(DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(DataTable).action_cursor_up()
