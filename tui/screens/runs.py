"""Runs browser: one SQL page at a time, so 100k runs filter, sort and page instantly."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.content import Content
from textual.message import Message
from textual.widgets import DataTable, Header, Input, Static

from store.models import param_value
from store.safe_text import safe_text

from .. import keymap
from ..safe import assemble, plain
from ..widgets.fast_table import FastTable
from ..widgets.footer import Footer
from ..widgets.safe_widgets import SafeInput
from ._common import StoreScreen, duration, fmt

PAGE = 50  # more than a tall terminal shows; a smaller page paints faster
LOADING_AFTER_S = 0.15
SCORES = ("clip_t", "clip_i_ref", "dino_ref")
# (column key, header, sort name)
COLUMNS = (
    [
        ("id", "id", "id"),
        ("experiment_id", "exp", "id"),
        ("status", "status", "status"),
        ("marked", "*", "id"),
        ("method", "method", "method"),
        ("target_prompt", "target prompt", "target_prompt"),
        ("seed", "seed", "seed"),
        ("layers", "layers", "layers"),
        ("start_step", "start", "start_step"),
        ("final_step", "final", "final_step"),
        ("skip_interval", "skip", "skip_interval"),
        ("mask_mode", "mask", "mask_mode"),
        ("mask_threshold", "thr", "mask_threshold"),
    ]
    + [(s, s, f"score:{s}") for s in SCORES]
    + [
        ("duration_s", "time", "duration_s"),
        ("tags", "tags", "id"),
    ]
)
SORT_BY_KEY = {key: sort for key, _, sort in COLUMNS}
# What stays when the terminal is narrow (lower first): the run, its state and its scores, then
# the swept values; the prompt shortens to fit; ids of experiments, times and tags go first.
PRIORITY = {
    "status": 0,
    "id": 1,
    "marked": 2,
    "clip_t": 3,
    "clip_i_ref": 4,
    "dino_ref": 5,
    # which method made the run: what a comparison of methods sorts and filters by first
    "method": 6,
    "final_step": 6,
    "start_step": 7,
    "layers": 8,
    "seed": 9,
    "target_prompt": 10,
    "skip_interval": 11,
    "mask_mode": 12,
    "mask_threshold": 13,
    "experiment_id": 14,
    "duration_s": 15,
    "tags": 16,
}


def marked_ids(store, filt) -> list[int]:
    """Ids of the marked runs among those this filter selects (every page, not just this one)."""
    from dataclasses import replace

    from store.queries import run_ids

    return run_ids(store, replace(filt, marked=True))


def parse_filter(text: str, experiment_id: int | None = None):
    """The runs filter grammar (store.runfilter): `status=failed seed=1 final>5 thr=otsu beach`."""
    from store.runfilter import parse_filter as parse

    return parse(text, experiment_id)


def filter_error_text(exc) -> Text:
    """A filter error on one line, the character where reading stopped shown reversed (the
    status line is one line high; the CLI prints the same error with a caret under it)."""
    text, pos = getattr(exc, "text", None), getattr(exc, "pos", None)
    message = getattr(exc, "message", None) or str(exc)
    out = Text("✗ filter: " + safe_text(message), style="bold red")
    if isinstance(text, str) and isinstance(pos, int) and 0 <= pos <= len(text):
        out.append("  ")
        out.append(safe_text(text[:pos]))
        out.append(safe_text(text[pos : pos + 1]) or " ", style="reverse red")
        out.append(safe_text(text[pos + 1 :]))
    return out


class RunsScreen(StoreScreen):
    BINDINGS = keymap.bindings("runs")
    KEY_SCOPE = "runs"
    live = True  # a run an engine finishes shows up without F5
    KEPT = True  # F6 brings it back as it was left (MtpApp.make_screen); see retarget

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Page(Message):
        runs: list
        scores: dict
        total: int
        offset: int
        error: Any = None
        token: Any = 0
        marked: int = 0
        gone: int | None = None  # the experiment shown was deleted

    def __init__(self, experiment_id: int | None = None, filter_text: str = ""):
        super().__init__(id="runs")
        self.experiment_id = experiment_id
        self.filter_text = filter_text
        self.sort = "id"
        self.descending = False
        self.page_offset = 0
        self.total = 0
        self.runs: list = []
        self._token = 0
        self._shown = -1  # the token of the page on screen
        self._retargeted = False
        self._page_cells: list[list[str]] | None = (
            None  # what the table shows, to skip identical pages
        )
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield SafeInput(
            self.filter_text,
            placeholder="filter: words, status=failed, seed=1, final>5, thr=otsu, clip_t>0.3, tag=x, "
            "exp=all, final_step=20 ... (enter applies, escape closes)",
            id="filter-bar",
        )
        yield Static("", id="runs-status")
        yield FastTable(id="runs-table", cursor_type="cell", zebra_stripes=True)
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self._shown_columns: list | None = None  # (key, width) as laid out now
        for key, label, _ in COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        if self.experiment_id is not None:
            self.app.experiment_id = self.experiment_id
        self.reload()

    def on_screen_resume(self) -> None:
        if self.loaded:
            self.reload(keep_cursor=not self._retargeted)
        self._retargeted = False

    def retarget(self, experiment_id: int | None = None, filter_text: str = "") -> None:
        """Show these runs instead (the kept screen reopened from Home or the sweep builder)."""
        self.experiment_id, self.filter_text, self.page_offset = experiment_id, filter_text, 0
        if experiment_id is not None:
            self.app.experiment_id = experiment_id
        self._retargeted = True
        if self.is_mounted:
            self.query_one("#filter-bar", Input).value = filter_text
            if self.is_current and self.loaded:
                self.on_screen_resume()

    def on_store_changed(self) -> None:
        if self.loaded:
            self.reload(keep_cursor=True, quiet=True)

    @property
    def run_filter(self):
        return parse_filter(self.filter_text, self.experiment_id)

    # ------------------------------------------------------------------ loading
    def reload(self, keep_cursor: bool = False, quiet: bool = False) -> None:
        self._token += 1
        self._keep_cursor = keep_cursor
        try:
            filt = parse_filter(self.filter_text, self.experiment_id)
        except Exception as exc:
            self._status(filter_error_text(exc))
            return
        if not quiet:  # a live refresh must not flash "loading..." every second
            # Only a slow page says so: painting "loading..." first would cost a fast page a frame.
            self.set_timer(LOADING_AFTER_S, partial(self._still_loading, self._token))
        self._load(filt, self.sort, self.descending, self.page_offset, self._token)

    def _fit(self, table, page: list[list[str]]) -> list[list[str]]:
        """The columns that fit the table's width, whole (a number is never cut), by PRIORITY;
        the prompt shortens to fit. Columns are rebuilt only when that choice changes."""
        from ..widgets.columns import Col, fit_columns

        cols = [
            Col(key, label, PRIORITY.get(key, 99), flex=key == "target_prompt", min_width=24)
            for key, label, _ in COLUMNS
        ]
        keys = [key for key, _, _ in COLUMNS]
        rows = [dict(zip(keys, cells, strict=True)) for cells in page]
        width = table.size.width or self.app.size.width
        shown = [(c.key, w) for c, w in fit_columns(cols, rows, width - 2)]  # a scrollbar
        if shown != self._shown_columns:
            self._shown_columns = shown
            self._page_cells = None
            table.clear(columns=True)
            labels = {key: label for key, label, _ in COLUMNS}
            for key, w in shown:
                table.add_column(labels[key], key=key, width=w)
        index = {key: i for i, key in enumerate(keys)}
        return [[cells[index[key]] for key, _ in shown] for cells in page]

    def on_resize(self, event) -> None:
        super().on_resize(event)
        if self.loaded and self.runs:
            self.reload(keep_cursor=True, quiet=True)

    def _still_loading(self, token: int) -> None:
        if self._token == token and self._shown != token:
            self._status(plain("loading..."))

    def _status(self, text: Content | Text) -> None:
        self.query_one("#runs-status", Static).update(
            text, layout=False
        )  # one line, fixed size (app.tcss)

    @work(thread=True, exclusive=True, group="runs-page")
    def _load(self, filt, sort, descending, offset, token) -> None:
        from store.queries import get_experiment, list_runs, run_scores

        try:
            if (
                filt.experiment_id is not None
                and get_experiment(self.store, filt.experiment_id) is None
            ):
                page = self.Page([], {}, 0, offset, None, token)
                page.gone = filt.experiment_id
                self.post_message(page)
                return
            runs, total = list_runs(
                self.store, filt, sort=sort, descending=descending, offset=offset, limit=PAGE
            )
            scores = run_scores(self.store, [r.id for r in runs])
            marked = len(marked_ids(self.store, filt))
        except Exception as exc:
            self.post_message(self.Page([], {}, 0, offset, exc, token))
            return
        self.post_message(self.Page(runs, scores, total, offset, None, token, marked))

    def on_runs_screen_page(self, message: Page) -> None:
        if message.token != self._token:
            return
        self._shown = message.token
        if message.error is not None:
            self._status(plain(message.error, "red"))
            return
        if message.gone is not None:
            # Deleted (here or by another process) while shown: every experiment's runs
            # instead of an empty page that only a filter edit could leave.
            if self.experiment_id == message.gone:
                self.experiment_id = None
                if self.app.experiment_id == message.gone:
                    self.app.experiment_id = None
                self.notify(f"experiment {message.gone} no longer exists: showing all runs")
                self.reload()
            else:  # named by the filter: say so where the filter is shown
                self._status(
                    f"[red]experiment {message.gone} does not exist[/] (/ to change the filter)"
                )
            return
        table = self.query_one(DataTable)
        cursor = table.cursor_coordinate
        self.runs, self.total = message.runs, message.total
        page = []
        for run in message.runs:
            sc = message.scores.get(run.id, {})
            cells = []
            for key, _, _ in COLUMNS:
                if key in SCORES:
                    cells.append(f"{sc[key]:.4f}" if key in sc else "")
                elif key == "marked":
                    cells.append("*" if run.marked else "")
                elif key == "duration_s":
                    cells.append(duration(run.duration_s) if run.duration_s else "")
                elif key == "layers" and run.is_baseline:
                    cells.append("baseline")
                else:
                    cells.append(fmt(param_value(run, key)))
            page.append(cells)
        page = self._fit(table, page)
        if (
            page != self._page_cells
        ):  # a live refresh or a return usually finds the same page: no repaint
            self._page_cells = page
            table.clear()
            # Text cells skip markup parsing: faster, and prompts like "a [b] c" stay literal;
            # prompts, tags and layers are shown safe (controls escaped).
            table.add_rows(
                [Text(safe_text(c), no_wrap=True, overflow="ellipsis") for c in cells]
                for cells in page
            )
            table.settle()  # column widths before the first paint of this page
            if self._keep_cursor and table.row_count:
                table.move_cursor(
                    row=min(cursor.row, table.row_count - 1),
                    column=min(cursor.column, len(table.columns) - 1),
                    animate=False,
                )
        elif not self._keep_cursor and table.row_count:
            table.move_cursor(row=0, column=0, animate=False)
        self.loaded = True
        end = message.offset + len(message.runs)
        filt = self._safe_filter()
        exp = filt.experiment_id if filt is not None else self.experiment_id
        where = f"exp {exp}" if exp is not None else "all experiments"
        arrow = "desc" if self.descending else "asc"
        marked = (
            [(f"  {message.marked} marked", "b"), " (t/N/R/^x act on them, U unmarks)"]
            if message.marked
            else []
        )
        self._status(
            assemble(
                f"runs {message.offset + 1 if self.runs else 0}-{end} of {self.total} ({where})"
                f"  sort: {self.sort} {arrow} (s)  filter: {self.filter_text or '-'}",
                *marked,
            )
        )

    # ------------------------------------------------------------------ filter, sort, page
    def action_filter(self) -> None:
        bar = self.query_one("#filter-bar", Input)
        bar.add_class("visible")
        bar.focus()

    @on(Input.Submitted, "#filter-bar")
    def _apply_filter(self, event: Input.Submitted) -> None:
        from store.queries import InputError

        try:
            parse_filter(event.value.strip(), self.experiment_id)
        except InputError as exc:
            # Not applied: the bar stays open on the text, the status line marks where
            # reading stopped (the table keeps the last good filter).
            self._status(filter_error_text(exc))
            pos = getattr(exc, "pos", None)
            if isinstance(pos, int):
                event.input.cursor_position = pos
            return
        self.filter_text = event.value.strip()
        self.page_offset = 0
        filt = self._safe_filter()
        if filt is not None and filt.experiment_id is not None:
            self.app.experiment_id = filt.experiment_id  # e (results) follows what is shown
        event.input.remove_class("visible")
        self.query_one(DataTable).focus()
        self.reload()

    def key_escape(self, event) -> None:
        bar = self.query_one("#filter-bar", Input)
        if bar.has_focus:
            event.stop()
            bar.remove_class("visible")
            self.query_one(DataTable).focus()

    def set_sort(self, sort: str) -> None:
        if sort == self.sort:
            self.descending = not self.descending
        else:
            self.sort, self.descending = sort, sort.startswith("score:")  # best scores first
        self.page_offset = 0
        self.reload()

    def action_sort(self) -> None:
        """Pick the sort column by name; picking the current one flips the direction."""
        from .pick import PickScreen

        items, seen = [], set()
        for key, label, sort in COLUMNS:
            if sort in seen or (sort == "id" and key != "id"):
                continue
            seen.add(sort)
            arrow = (
                (" (desc, again: asc)" if self.descending else " (asc, again: desc)")
                if sort == self.sort
                else ""
            )
            items.append((sort, f"{label}{arrow}"))

        def done(sort: str | None) -> None:
            if sort:
                self.set_sort(sort)

        self.app.push_screen(PickScreen("Sort runs by", items, self.sort), done)

    def action_results(self) -> None:
        filt = self._safe_filter()
        exp = (
            filt.experiment_id
            if filt is not None and filt.experiment_id is not None
            else self.experiment_id
        )
        if exp is None and self.current is not None:
            exp = self.current.experiment_id
        if exp is not None:
            self.app.experiment_id = exp
        self.app.action_open(
            "results", experiment_id=exp
        ) if exp is not None else self.app.action_open("results")

    def _safe_filter(self):
        try:
            return self.run_filter
        except Exception:
            return None

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        self.set_sort(SORT_BY_KEY[event.column_key.value])

    def action_page(self, direction: int) -> None:
        new = self.page_offset + direction * PAGE
        if 0 <= new < max(self.total, 1):
            self.page_offset = new
            self.reload()

    def action_score(self) -> None:
        run = self.current if self.experiment_id is None else None
        self.app.score_experiment(self.experiment_id if run is None else run.experiment_id)

    def action_refresh(self) -> None:
        self.reload(keep_cursor=True)

    def action_cursor_down(self) -> None:
        self.query_one(DataTable).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(DataTable).action_cursor_up()

    def action_top(self) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=0, column=table.cursor_coordinate.column)

    def action_bottom(self) -> None:
        table = self.query_one(DataTable)
        table.move_cursor(row=max(table.row_count - 1, 0), column=table.cursor_coordinate.column)

    # ------------------------------------------------------------------ the run under the cursor
    @property
    def current(self):
        table = self.query_one(DataTable)
        if not table.row_count or not self.runs:
            return None
        return self.runs[min(table.cursor_coordinate.row, len(self.runs) - 1)]

    @on(DataTable.CellSelected)
    def action_open_run(self) -> None:
        run = self.current
        filt = self._safe_filter()
        if run is not None:
            from .run_detail import Browse, RunDetailScreen

            # [ and ] in the detail walk this list: same filter, same sort.
            position = self.page_offset + self.query_one(DataTable).cursor_coordinate.row
            browse = (
                Browse(filt, self.sort, self.descending, position) if filt is not None else None
            )
            self.app.push_screen(RunDetailScreen(run.id, browse=browse))

    def action_mark(self) -> None:
        from store.queries import update_runs

        run = self.current
        if run is not None:
            update_runs(self.store, [run.id], marked=not run.marked)
            # Then on to the next run, so m m m marks a stretch (as file managers do).
            self.query_one(DataTable).action_cursor_down()
            self.reload(keep_cursor=True)

    def targets(self) -> tuple[list[int], str]:
        """The runs an action applies to: the marked ones under the current filter when there
        are any, else the run under the cursor; and how to name them."""
        filt = self._safe_filter()
        marked = marked_ids(self.store, filt) if filt is not None else []
        if marked:
            return marked, f"{len(marked)} marked runs"
        run = self.current
        return ([run.id], f"run {run.id}") if run is not None else ([], "")

    def action_unmark_all(self) -> None:
        from store.queries import update_runs

        filt = self._safe_filter()
        marked = marked_ids(self.store, filt) if filt is not None else []
        if marked:
            update_runs(self.store, marked, marked=False)
            self.notify(f"unmarked {len(marked)} runs")
            self.reload(keep_cursor=True)

    def action_tag(self) -> None:
        ids, what = self.targets()
        if not ids:
            return
        from .prompt import PromptScreen

        def done(tag: str | None) -> None:
            from store.queries import add_tag

            if tag:
                n = add_tag(self.store, ids, tag)
                self.notify(f"tagged {n} of {what} with {tag!r}")
                self.reload(keep_cursor=True)

        self.app.push_screen(PromptScreen(f"Tag for {what}"), done)

    def action_note(self) -> None:
        ids, what = self.targets()
        if not ids:
            return
        from .prompt import PromptScreen

        current = self.current.notes if len(ids) == 1 and self.current is not None else ""

        def done(note: str | None) -> None:
            from store.queries import update_runs

            if note is not None:
                update_runs(self.store, ids, notes=note)
                self.notify(f"note saved on {what}")

        self.app.push_screen(PromptScreen(f"Note for {what}", current), done)

    def action_requeue(self) -> None:
        ids, what = self.targets()
        if not ids:
            return
        from store import queue
        from store.queries import counts_by_run_status

        counts = counts_by_run_status(self.store, ids)
        finished = sum(counts.get(st, 0) for st in ("done", "failed", "cancelled"))
        if not finished:
            self.notify(f"nothing to requeue: {what} not finished yet")
            return

        def requeue() -> None:
            n = queue.requeue_runs(self.store, ids)
            self.notify(f"re-queued {n} of {what}")
            self.reload(keep_cursor=True)

        done = counts.get("done", 0)
        if done:
            self.app.confirm(
                f"Requeue {what}?\n{done} of them are done: their scores and images are "
                f"discarded and made again.",
                requeue,
                yes="requeue",
            )
        else:
            requeue()

    def action_cancel(self) -> None:
        ids, what = self.targets()
        if not ids:
            return
        from store import queue
        from store.queries import counts_by_run_status

        counts = counts_by_run_status(self.store, ids)
        open_runs = counts.get("queued", 0) + counts.get("running", 0)
        if not open_runs:
            self.notify(f"nothing to cancel: {what} already finished")
            return

        def cancel() -> None:
            n = queue.cancel_runs(self.store, ids)
            self.notify(
                f"cancelled {n['cancelled']}; {n['requested']} running stop after their step"
            )
            self.reload(keep_cursor=True)

        self.app.confirm(
            f"Cancel {what}?\n{counts.get('queued', 0)} queued are cancelled now, "
            f"{counts.get('running', 0)} running stop after their current step.",
            cancel,
            yes="cancel them",
        )

    def action_compare(self) -> None:
        """Two marked runs on this page side by side; else the cursor run against its baseline."""
        from .run_detail import CompareScreen

        marked = [r for r in self.runs if r.marked]
        if len(marked) == 2:
            self.app.push_screen(CompareScreen(marked[0].id, marked[1].id))
        elif self.current is not None:
            self.app.push_screen(CompareScreen(self.current.id, None))
