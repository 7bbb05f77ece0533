"""Home: concepts, experiments with progress, the queue and its workers; engine control."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import DataTable, Header, Static

from .. import keymap
from ..safe import assemble, plain
from ..widgets.fast_table import FastTable
from ..widgets.footer import Footer
from ._common import StoreScreen, age

REFRESH_S = 2.0


@dataclass
class HomeData:
    concepts: list = field(default_factory=list)
    experiments: list = field(default_factory=list)  # ExperimentRow
    best: dict = field(default_factory=dict)  # experiment id -> (run id, clip_t, clip_i_ref)
    workers: list | None = None  # None: store.queue missing
    paused: bool | None = None
    engines: list | None = None
    notes: list = field(default_factory=list)
    db_now: object = None  # the database's clock when the workers were read (ages use it)


# A stopped (or dead) engine stays listed this long after its last heartbeat, then only counts.
STOPPED_SHOWN_S = 600
GONE = ("stopped", "dead")


# (key, header, priority: lower stays longest) of Home's experiments table.
EXPERIMENT_COLUMNS = [
    ("id", "id", 0),
    ("name", "name", 4),
    ("status", "status", 2),
    ("done", "done/N", 1),
    ("failed", "failed", 3),
    ("running", "running", 5),
    ("best", "best (T, I)", 6),
    ("tags", "tags", 7),
]


def _cut(value, width: int):
    """A text cell shortened to `width` with an ellipsis (only the name column ever needs it)."""
    from rich.text import Text

    text = str(value)
    if len(text) <= width:
        return value
    return Text(text, no_wrap=True, overflow="ellipsis")


def visible_workers(workers) -> tuple[list, int]:
    """The workers Home lists (every live one, stopped ones for a while) and how many stopped
    ones it leaves out: a host that restarted engines for weeks would otherwise fill the table."""
    if not workers:
        return [], 0
    now = datetime.now(UTC)
    shown = []
    for w in workers:
        beat = w.heartbeat_at
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if w.status not in GONE or beat is None or (now - beat).total_seconds() < STOPPED_SHOWN_S:
            shown.append(w)
    return shown, len(workers) - len(shown)


def collect(store) -> HomeData:
    from engine import launch
    from store import queue
    from store.queries import list_concepts, list_experiments

    data = HomeData(concepts=list_concepts(store), experiments=list_experiments(store))
    data.workers = list(queue.list_workers(store))
    data.db_now = queue.database_now(store)  # heartbeat ages by the clock that wrote them
    data.paused = bool(queue.is_paused(store))
    try:
        data.engines = list(launch.engine_running(store.home.root))
    except Exception as exc:  # a stale pid file must not break the home screen
        data.notes.append(f"engine status unknown: {exc}")
    return data


class HomeScreen(StoreScreen):
    BINDINGS = keymap.bindings("home")
    KEY_SCOPE = "home"

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Refreshed(Message):
        data: HomeData

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class BestPoints(Message):
        key: tuple
        best: dict

    def __init__(self):
        super().__init__(id="home")
        self._best_key: tuple | None = None
        self._best: dict = {}
        self.data: HomeData | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        if self.app.demo:
            from store.demo import DEMO_BANNER

            yield Static(DEMO_BANNER, id="demo-banner")
        yield Static("loading...", id="queue-status")

        yield Static(plain(self.app.store.where), id="where-label")
        with Horizontal(id="home-top"):
            with Vertical(id="concepts-pane"):
                yield Static("Concepts  [dim](enter: edit, c: new)[/]", classes="pane-title")
                yield FastTable(id="concepts", cursor_type="row", zebra_stripes=True)
            with Vertical(id="experiments-pane"):
                yield Static(
                    "Experiments  [dim](enter: runs, e: results, E: edit/duplicate, D: delete)[/]",
                    classes="pane-title",
                )
                yield FastTable(id="experiments", cursor_type="row", zebra_stripes=True)
        yield Static("Workers", classes="pane-title")
        yield FastTable(id="workers", cursor_type="row")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#concepts", DataTable).add_columns("id", "name", "token", "refs")
        self._exp_columns: list | None = None  # (key, width) as laid out now
        self.query_one("#workers", DataTable).add_columns(
            "host", "device", "status", "run", "step", "it/s", "heartbeat", "slurm job", "id"
        )
        self.query_one("#experiments", DataTable).focus()
        # The first load is synchronous (tens of ms even on 100k runs, and WAL reads never wait
        # on an engine's writes) so the first frame already has data; a worker would be starved
        # of the GIL by that very first paint.
        self.on_home_screen_refreshed(self.Refreshed(collect(self.store)))
        self.set_interval(REFRESH_S, self.refresh_data)

    def on_screen_resume(self) -> None:
        if self.data is not None:  # back from another screen, not the first show
            self.refresh_data()

    @work(thread=True, exclusive=True, group="home-refresh")
    def refresh_data(self) -> None:
        self.post_message(self.Refreshed(collect(self.store)))

    @work(thread=True, exclusive=True, group="home-best")
    def _compute_best(self, key: tuple, experiment_ids: list[int]) -> None:
        from store.queries import best_points

        self.post_message(self.BestPoints(key, best_points(self.store, experiment_ids)))

    def on_home_screen_best_points(self, message: BestPoints) -> None:
        self._best_key, self._best = message.key, message.best
        if self.data is not None:
            self.data.best = self._best
            self.on_home_screen_refreshed(self.Refreshed(self.data))

    def on_home_screen_refreshed(self, message: Refreshed) -> None:
        was_paused = self.data.paused if self.data is not None else None
        self.data = data = message.data
        if data.paused != was_paused:  # paused by `mtp queue pause` or another app, too
            self.refresh_bindings()
        # Scores only change when runs finish: recompute best points when done counts move,
        # after the table is up, since it reads every score.
        key = tuple((r.experiment.id, r.done) for r in data.experiments)
        data.best = self._best
        if key != self._best_key:
            self._best_key = key
            self._compute_best(key, [r.experiment.id for r in data.experiments if r.done])
        parts: list[Content] = []
        if data.paused is not None:
            parts.append(
                assemble(("queue PAUSED", "b red"), " (p: resume)")
                if data.paused
                else assemble(("queue running", "green"), " (p: pause)")
            )
        shown_workers, hidden = visible_workers(data.workers)
        if data.workers is not None:
            # Counted from the same read as the workers table below, so the two always agree.
            live = [w for w in data.workers if w.status not in GONE]
            parts.append(
                f"engines: {len(live)} working"
                if live
                else "engines: none (S: start)"
                if not data.engines
                else f"engines: {len(data.engines)} starting"
            )
        elif data.engines is not None:
            parts.append(
                plain(
                    f"engines: {len(data.engines)} running"
                    if data.engines
                    else "engines: none (S: start)"
                )
            )
        queued = sum(r.counts.get("queued", 0) for r in data.experiments)
        running = sum(r.counts.get("running", 0) for r in data.experiments)
        parts.append(plain(f"{queued} queued, {running} running"))
        parts += [plain(n, "yellow") for n in data.notes]
        self.query_one("#queue-status", Static).update(Content("  |  ").join(parts))
        if self.app.demo:
            from store.demo import DEMO_BANNER

            hint = (
                "  The demo engine is running."
                if data.engines
                else "  Press S to start the demo engine."
            )
            self.query_one("#demo-banner", Static).update(DEMO_BANNER + hint)

        self._fill(
            "#concepts",
            [(str(c.id), (c.id, c.name, c.token, len(c.ref_images))) for c in data.concepts],
        )
        rows = []
        for r in data.experiments:
            e = r.experiment
            best = data.best.get(e.id)
            best_txt = f"#{best[0]} {best[1]:.3f}, {best[2]:.3f}" if best else "-"
            total = r.total or e.run_count
            rows.append(
                (
                    str(e.id),
                    (
                        e.id,
                        e.name,
                        r.state,
                        f"{r.done}/{total}",
                        r.failed or "",
                        r.counts.get("running", 0) or "",
                        best_txt,
                        e.tags,
                    ),
                )
            )
        self._fill("#experiments", self._fit_experiments(rows))
        from engine.slurm import job_label

        wrows = []
        prev_host = None
        for w in shown_workers:  # sorted by host: the host is named once per group
            step = f"{w.step}/{w.total_steps}" if w.total_steps else "-"
            its = f"{w.its_per_s:.2f}" if w.its_per_s else "-"
            host = w.host if w.host != prev_host else ""
            prev_host = w.host
            # A paused engine (disk full, read-only folder) says why right in its status cell.
            status = f"{w.status}: {w.message}" if w.status == "paused" else w.status
            wrows.append(
                (
                    w.id,
                    (
                        host,
                        w.device,
                        status,
                        w.current_run_id or "-",
                        step,
                        its,
                        age(w.heartbeat_at, data.db_now),
                        job_label(w),
                        w.id,
                    ),
                )
            )
        if hidden:
            wrows.append(
                ("stopped", ("", "", f"+{hidden} stopped earlier", "", "", "", "", "mtp workers"))
            )
        if data.workers is None:
            wrows = [("-", ("store.queue not available", "", "", "", "", "", "", "", ""))]
        self._fill("#workers", wrows)
        self._sync_experiment()

    def _fit_experiments(self, rows: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
        """Only the columns that fit the pane, whole: progress is never cut to a wrong number
        (`100/1` for 100/100 at 80x24); the name shortens, low-priority columns go."""
        from ..widgets.columns import Col, fit_columns

        cols = [Col(k, label, prio, flex=k == "name") for k, label, prio in EXPERIMENT_COLUMNS]
        keys = [c.key for c in cols]
        dicts = [dict(zip(keys, map(str, cells), strict=True)) for _, cells in rows]
        table = self.query_one("#experiments", DataTable)
        width = table.size.width or max(20, self.app.size.width - 40)
        shown = [(c.key, w) for c, w in fit_columns(cols, dicts, width - 2)]
        if shown != self._exp_columns:
            self._exp_columns = shown
            table.clear(columns=True)
            labels = {k: label for k, label, _ in EXPERIMENT_COLUMNS}
            for key, w in shown:
                table.add_column(labels[key], key=key, width=w)
        index = {k: i for i, k in enumerate(keys)}
        return [(key, tuple(_cut(cells[index[k]], w) for k, w in shown)) for key, cells in rows]

    def on_resize(self, event) -> None:
        super().on_resize(event)
        if self.data is not None:
            self.call_after_refresh(self.on_home_screen_refreshed, self.Refreshed(self.data))

    def _fill(self, selector: str, rows: list[tuple[str, tuple]]) -> None:
        """Replace rows in place, keeping the cursor on the same row key across refreshes."""
        table = self.query_one(selector, DataTable)
        keep = None
        if table.row_count:
            try:
                keep = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
            except Exception:
                keep = None
        table.clear()
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if keep is not None:
            try:
                table.move_cursor(row=table.get_row_index(keep), animate=False)
            except Exception:
                pass

    # ------------------------------------------------------------------ selection
    def _selected(self, selector: str) -> int | None:
        table = self.query_one(selector, DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return int(key) if key and key.isdigit() else None

    def _sync_experiment(self) -> None:
        exp_id = self._selected("#experiments")
        if exp_id is not None:
            self.app.experiment_id = exp_id

    @on(DataTable.RowHighlighted, "#experiments")
    def _highlighted(self, _event) -> None:
        self._sync_experiment()

    @on(DataTable.RowSelected, "#concepts")
    def _edit_concept(self, event: DataTable.RowSelected) -> None:
        self.app.action_open("concept", concept_id=int(event.row_key.value))

    @on(DataTable.RowSelected, "#experiments")
    def _open_runs(self, event: DataTable.RowSelected) -> None:
        self.action_open_experiment()

    # ------------------------------------------------------------------ actions
    def action_cursor_down(self) -> None:
        if isinstance(self.focused, DataTable):
            self.focused.action_cursor_down()

    def action_cursor_up(self) -> None:
        if isinstance(self.focused, DataTable):
            self.focused.action_cursor_up()

    def action_refresh(self) -> None:
        self.refresh_data()

    def action_top(self) -> None:
        if isinstance(self.focused, DataTable):
            self.focused.move_cursor(row=0)

    def action_bottom(self) -> None:
        if isinstance(self.focused, DataTable):
            self.focused.move_cursor(row=max(self.focused.row_count - 1, 0))

    def action_open_experiment(self) -> None:
        exp_id = self._selected("#experiments")
        if exp_id is not None:
            self.app.experiment_id = exp_id
            self.app.action_open("runs", experiment_id=exp_id)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause_queue", "resume_queue"):
            paused = bool(self.data is not None and self.data.paused)
            if (action == "resume_queue") != paused:
                return False  # the other one of the pair is the one p does now
        return super().check_action(action, parameters)

    def action_pause_queue(self) -> None:
        self.action_toggle_pause()

    def action_resume_queue(self) -> None:
        self.action_toggle_pause()

    def action_toggle_pause(self) -> None:
        paused = self.app.toggle_pause()
        if self.data is not None and paused is not None:
            self.data.paused = paused
            self.refresh_bindings()  # the footer says Resume/Pause at once
        self.refresh_data()

    def action_start_engine(self) -> None:
        self.app.start_engine("cpu" if self.app.demo else _default_device())
        self.refresh_data()

    def action_stop_engine(self) -> None:
        self.app.stop_engine()
        self.refresh_data()

    def action_edit_experiment(self) -> None:
        """A draft opens as is; a queued experiment is duplicated first (its runs are history)."""
        exp_id = self._selected("#experiments")
        if exp_id is None:
            return
        from store.queries import InputError, duplicate_experiment, get_experiment

        exp = get_experiment(self.store, exp_id)
        if exp is None:
            return
        if exp.status != "draft":
            try:
                exp = duplicate_experiment(self.store, exp_id)
            except InputError as exc:
                self.notify(str(exc), severity="error")
                return
            self.notify(f"duplicated as draft #{exp.id} {exp.name!r}")
        self.app.action_open("sweep", experiment_id=exp.id)

    def action_queue_experiment(self) -> None:
        exp_id = self._selected("#experiments")
        if exp_id is None:
            return
        from store.queries import InputError, queue_experiment
        from store.sweep.grammar import SweepError

        try:
            exp = queue_experiment(self.store, exp_id)
        except (InputError, SweepError) as exc:
            self.notify(str(exc), severity="error", timeout=8)
            return
        self.notify(f"queued {exp.run_count} runs of {exp.name!r}")
        self.refresh_data()

    def _queue_call(self, fn: str, done: str) -> None:
        exp_id = self._selected("#experiments")
        if exp_id is None:
            return
        from store import queue

        n = getattr(queue, fn)(self.store, exp_id)
        self.notify(done.format(n=n if isinstance(n, int) else "the"))
        self.refresh_data()

    def action_requeue_experiment(self) -> None:
        self._queue_call("requeue", "re-queued {n} failed/cancelled runs")

    def _selected_row(self):
        exp_id = self._selected("#experiments")
        rows = self.data.experiments if self.data else []
        return next((r for r in rows if r.experiment.id == exp_id), None)

    def action_cancel_experiment(self) -> None:
        row = self._selected_row()
        if row is None:
            return
        open_runs = row.counts.get("queued", 0) + row.counts.get("running", 0)
        if not open_runs:
            self.notify(f"{row.experiment.name!r} has no queued or running runs")
            return

        def cancel() -> None:
            from store import queue

            n = queue.cancel_experiment(self.store, row.experiment.id)
            self.notify(
                f"cancelled {n['cancelled']} queued runs; {n['requested']} running runs stop after their step"
            )
            self.refresh_data()

        self.app.confirm(
            f"Cancel experiment #{row.experiment.id} {row.experiment.name!r}?\n"
            f"{row.counts.get('queued', 0)} queued runs are cancelled now, "
            f"{row.counts.get('running', 0)} running runs stop after their current step.",
            cancel,
            yes="cancel them",
        )

    def action_delete_experiment(self) -> None:
        row = self._selected_row()
        if row is None:
            return

        def delete() -> None:
            from store.queries import InputError, delete_experiment

            try:
                n = delete_experiment(self.store, row.experiment.id)
            except InputError as exc:
                self.notify(str(exc), severity="error", timeout=8)
                return
            self.notify(f"deleted {row.experiment.name!r} and its {n} runs")
            self.refresh_data()

        self.app.confirm(
            f"Delete experiment #{row.experiment.id} {row.experiment.name!r}?\n"
            f"Its {row.total} runs, their scores and their images are removed for good. "
            f"(A: archive hides it and keeps everything.)",
            delete,
            yes="delete",
        )

    def action_archive_experiment(self) -> None:
        row = self._selected_row()
        if row is None:
            return

        def archive() -> None:
            from store.queries import InputError, archive_experiment

            try:
                archive_experiment(self.store, row.experiment.id)
            except InputError as exc:
                self.notify(str(exc), severity="error", timeout=8)
                return
            self.notify(
                f"archived {row.experiment.name!r} (mtp experiment archive --undo brings it back)"
            )
            self.refresh_data()

        queued = row.counts.get("queued", 0)
        self.app.confirm(
            f"Archive experiment #{row.experiment.id} {row.experiment.name!r}?\n"
            f"It leaves Home; runs, scores and images stay"
            + (f", and its {queued} queued runs are cancelled." if queued else "."),
            archive,
            yes="archive",
        )


def _default_device() -> str:
    import shutil

    return "cuda" if shutil.which("nvidia-smi") else "cpu"
