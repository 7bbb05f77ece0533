"""Leaderboard (F9, l): a study's configurations over the suite's units, with intervals.

The table comes from `store.report.leaderboard` in a thread worker; `s` sorts by the next
metric, `g` shows each group's means in turn (superclass, class word), `b` makes the row under
the cursor the reference of the paired columns, `o` picks
another study, enter opens the configuration's images as a labelled grid (one row per unit),
ctrl+s writes CSV, LaTeX, PNG and the runs CSV to the exports folder; ctrl+x cancels the
study's runs and R requeues its failed and cancelled ones (both ask first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Static

from .. import keymap
from ..safe import plain
from ..widgets.fast_table import FastTable
from ._common import StoreScreen


def _num(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.3f}"


def _p(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return "<.001" if v < 0.001 else f"{v:.3f}"


def board_cells(board, group: str | None = None) -> tuple[list[str], list[list[str]], list[int]]:
    """Column labels, the rows' cells and each column's priority (lower: kept at 80 columns).
    With ``group``: that group's means (over its units) instead of the intervals."""
    labels = ["#", "configuration"]
    prio = [0, 1]
    diff_m = board.consistency_metric or (board.metrics[0] if board.metrics else None)
    for k, m in enumerate(board.metrics):
        labels.append(f"{m} [95%]" if group is None else f"{m} ({group})")
        prio.append(2 + k)
    if group is not None:
        rows = []
        for i, row in enumerate(board.rows):
            cells = [str(i + 1), ("R " if row.is_reference else "") + row.label]
            for m in board.metrics:
                mean, n = row.groups.get(group, {}).get(m, (float("nan"), 0))
                cells.append(f"{_num(mean)} n={n}")
            rows.append(cells)
        return labels, rows, prio
    if diff_m:
        labels += [f"Δ{diff_m}", "p holm"]
        prio += [10, 11]
    labels.append("P")
    prio.append(1)
    rows = []
    for i, row in enumerate(board.rows):
        mark = "R " if row.is_reference else ""
        cells = [str(i + 1), mark + row.label]
        for m in board.metrics:
            st = row.stats.get(m)
            cells.append(
                "-"
                if st is None or not math.isfinite(st.mean)
                else f"{_num(st.mean)} [{_num(st.low)},{_num(st.high)}]"
            )
        if diff_m:
            pr = row.paired.get(diff_m)
            cells.append("" if pr is None else f"{pr.mean_diff:+.4f}")
            cells.append(_p(row.p_holm.get(diff_m)))
        cells.append("*" if row.pareto else "")
        rows.append(cells)
    return labels, rows, prio


class LeaderboardScreen(StoreScreen):
    BINDINGS = keymap.bindings("leaderboard")
    KEY_SCOPE = "leaderboard"
    live = True

    @dataclass(eq=False)
    class Built(Message):
        board: Any
        progress: str
        error: str

    def __init__(self, study_id: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.study_id = study_id
        self.board: Any = None
        self.reference: str | None = None
        self.sort_metric: str | None = None
        self.group: str | None = None  # a group's breakdown instead of the whole suite
        self._progress = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="leaderboard-box"):
            yield Static("", id="leaderboard-head")
            yield FastTable(id="leaderboard-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="leaderboard-note")
        yield Footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.title = "Leaderboard"
        self.query_one("#leaderboard-table", FastTable).focus()
        if self.study_id is None:
            self._first_study()
        else:
            self.load()

    @work(thread=True, exclusive=True, group="leaderboard")
    def _first_study(self) -> None:
        from store.studies.create import list_studies

        studies = list_studies(self.store)
        self.app.call_from_thread(self._set_study, studies[0].id if studies else None)

    def _set_study(self, study_id: int | None) -> None:
        self.study_id = study_id
        if study_id is None:
            self.query_one("#leaderboard-head", Static).update(
                plain(
                    "No study yet: mtp suite import FILE, then mtp study create NAME --suite S ..."
                )
            )
            return
        self.load()

    def load(self) -> None:
        if self.study_id is not None:
            if self.board is None:
                # a large study takes a second or two the first time
                self.query_one("#leaderboard-head", Static).update(
                    plain("computing the leaderboard...")
                )
            self._build(self.study_id, self.reference, self.sort_metric)

    @work(thread=True, exclusive=True, group="leaderboard")
    def _build(self, study_id: int, reference: str | None, sort: str | None) -> None:
        from store.errors import MtpError
        from store.report.memo import cached_leaderboard
        from store.studies.progress import study_progress

        try:
            # kept per change token: reopening the screen on an unchanged study is instant
            board = cached_leaderboard(self.store, study_id, reference, sort)
            progress = study_progress(self.store, study_id).line()
            self.post_message(self.Built(board, progress, ""))
        except MtpError as exc:
            self.post_message(self.Built(None, "", str(exc)))

    def on_leaderboard_screen_built(self, message: LeaderboardScreen.Built) -> None:
        if message.error:
            self.notify(message.error, severity="error")
            return
        self.board = message.board
        self._progress = message.progress
        self._show(message.progress)

    def _show(self, progress: str) -> None:
        from ..widgets.columns import Col, fit_columns

        board = self.board
        head = self.query_one("#leaderboard-head", Static)
        head.update(
            Content(" · ").join(
                [
                    plain(f"{board.study} on {board.suite}"),
                    plain(f"{len(board.units)} {board.unit_word}s (the unit)"),
                    plain(progress),
                ]
            )
        )
        self.query_one("#leaderboard-note", Static).update(
            plain(
                f"{board.interval_text}; Δ vs R ({board.reference}): {board.test_text}; "
                f"P: Pareto front of clip_t vs {board.consistency_metric}"
            )
        )
        table = self.query_one("#leaderboard-table", FastTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        if self.group not in (None, *board.groups):
            self.group = None
        labels, rows, prio = board_cells(board, self.group)
        cols = [
            Col(str(i), label, p, flex=(i == 1), min_width=20)
            for i, (label, p) in enumerate(zip(labels, prio, strict=True))
        ]
        dicts = [{str(i): c for i, c in enumerate(cells)} for cells in rows]
        width = table.size.width or self.app.size.width
        fitted = fit_columns(cols, dicts, width - 2)
        shown = [int(c.key) for c, _ in fitted] or [0, 1]
        widths = {int(c.key): w for c, w in fitted}
        for i in shown:
            table.add_column(labels[i], width=widths.get(i))
        for cells in rows:
            table.add_row(*[cells[i] for i in shown])
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))

    def on_store_changed(self) -> None:
        self.load()

    # ---------------------------------------------------------------- actions
    def _row(self):
        if self.board is None or not self.board.rows:
            return None
        i = self.query_one("#leaderboard-table", FastTable).cursor_row
        return self.board.rows[i] if 0 <= i < len(self.board.rows) else None

    def action_next_sort(self) -> None:
        if self.board is None or not self.board.metrics:
            return
        metrics = self.board.metrics
        i = metrics.index(self.sort_metric) + 1 if self.sort_metric in metrics else 0
        self.sort_metric = metrics[i] if i < len(metrics) else None
        self.notify(f"sorted by {self.sort_metric or 'configuration order'}")
        self.load()

    def action_next_group(self) -> None:
        """All units, then each group's breakdown (superclass, class word) in turn."""
        if self.board is None:
            return
        views = [None, *self.board.groups]
        self.group = views[(views.index(self.group) + 1) % len(views)]
        self.notify(f"showing {self.group or 'every ' + self.board.unit_word}")
        self._show(self._progress)

    def action_set_reference(self) -> None:
        row = self._row()
        if row is None:
            return
        self.reference = row.label
        self.load()

    def action_pick_study(self) -> None:
        from store.studies.create import list_studies

        from .pick import PickScreen

        items = [(str(s.id), s.name) for s in list_studies(self.store)]
        if not items:
            self.notify("no study yet: mtp study create NAME --suite S ...")
            return

        def chosen(value: str | None) -> None:
            if value:
                self.study_id, self.reference, self.sort_metric = int(value), None, None
                self.load()

        self.app.push_screen(PickScreen("Study", items, str(self.study_id)), chosen)

    def action_open_grid(self) -> None:
        row = self._row()
        if row is None or self.study_id is None:
            return
        self.app.push_screen(ConfigGridScreen(self.study_id, self.board, row))

    def on_data_table_row_selected(self, event) -> None:
        event.stop()
        self.action_open_grid()

    def action_export(self) -> None:
        if self.board is not None and self.study_id is not None:
            self._export(self.study_id, self.board)

    @work(thread=True, group="leaderboard-export")
    def _export(self, study_id: int, board) -> None:
        from store.errors import MtpError
        from store.report.leaderboard_export import export_study

        try:
            made = export_study(self.store, study_id, board)
        except (MtpError, OSError) as exc:
            self.app.call_from_thread(self.notify, f"export failed: {exc}", severity="error")
            return
        names = ", ".join(p.name for p in made)
        self.app.call_from_thread(self.notify, f"wrote {names} to {made[0].parent}")

    def action_cancel_study(self) -> None:
        if self.study_id is None or self.board is None:
            return
        study_id, name = self.study_id, self.board.study

        def yes() -> None:
            from store.studies.create import cancel_study

            res = cancel_study(self.store, study_id)
            self.notify(
                f"cancelled {res['cancelled']} queued run(s); {res['requested']} running run(s) "
                "stop at their next step"
            )

        self.app.confirm(f"Cancel every queued and running run of study {name!r}?", yes, "cancel")

    def action_requeue_study(self) -> None:
        if self.study_id is None or self.board is None:
            return
        study_id, name = self.study_id, self.board.study

        def yes() -> None:
            from store.studies.create import requeue_study

            n = requeue_study(self.store, study_id, ("failed", "cancelled"))
            self.notify(f"requeued {n} failed or cancelled run(s)")

        self.app.confirm(
            f"Requeue the failed and cancelled runs of study {name!r}?", yes, "requeue"
        )

    def action_refresh(self) -> None:
        self.load()


class ConfigGridScreen(ModalScreen[None]):
    """One configuration's images, a row per unit and a column per prompt (one seed)."""

    BINDINGS = [Binding("escape", "dismiss", "Close", id="grid.close")]

    def __init__(self, study_id: int, board, row):
        super().__init__()
        self.study_id, self.board, self.row = study_id, board, row

    def compose(self) -> ComposeResult:
        from ..widgets.artifact_image import ArtifactImage

        with Vertical(id="config-grid-box"):
            yield ArtifactImage(
                caption=f"{self.row.label}: every {self.board.unit_word}", id="config-grid"
            )
        yield Footer()

    def on_mount(self) -> None:
        self._draw_grid()

    @work(thread=True)
    def _draw_grid(self) -> None:
        import io

        from PIL import Image

        from store.report.leaderboard_export import render_config_grid

        buf = io.BytesIO()
        seed = render_config_grid(self.app.store, self.study_id, self.board, self.row, buf)
        buf.seek(0)
        image = Image.open(buf)
        image.load()
        self.app.call_from_thread(self._shown, image, seed)

    def _shown(self, image, seed) -> None:
        from ..widgets.artifact_image import ArtifactImage

        widget = self.query_one("#config-grid", ArtifactImage)
        widget.set_caption(f"{self.row.label}: every {self.board.unit_word}, seed {seed}")
        widget.show_image(image)
