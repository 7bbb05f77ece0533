"""Home: concepts, experiments with progress, the queue and its workers; engine control."""
from __future__ import annotations

from dataclasses import dataclass, field

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Footer, Header, Static

from .. import keymap
from ._common import Missing, StoreScreen, age, optional

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


def best_points(store, experiment_ids: list[int]) -> dict[int, tuple[int, float, float]]:
    """The run with the highest CLIP-T + CLIP-I per experiment: always on the Pareto front."""
    if not experiment_ids:
        return {}
    from sqlalchemy import case, func
    from sqlmodel import col, select

    from store.models import Run, Score

    t = func.avg(case((Score.metric == "clip_t", Score.value)))
    i = func.avg(case((Score.metric == "clip_i_ref", Score.value)))
    q = (select(Run.experiment_id, Run.id, t, i).join(Score, Score.run_id == Run.id)
         .where(col(Run.experiment_id).in_(experiment_ids), Run.is_baseline == False)  # noqa: E712
         .group_by(Run.id))
    out: dict[int, tuple[int, float, float]] = {}
    with store.session() as s:
        for exp_id, run_id, tv, iv in s.exec(q):
            if tv is None or iv is None:
                continue
            if exp_id not in out or tv + iv > out[exp_id][1] + out[exp_id][2]:
                out[exp_id] = (run_id, tv, iv)
    return out


def collect(store, best_cache: dict) -> HomeData:
    from store.queries import list_concepts, list_experiments

    data = HomeData(concepts=list_concepts(store), experiments=list_experiments(store))
    # Scores only change when runs finish: recompute the best points when done counts move.
    key = tuple((r.experiment.id, r.done) for r in data.experiments)
    if best_cache.get("key") != key:
        best_cache["key"] = key
        best_cache["value"] = best_points(store, [r.experiment.id for r in data.experiments if r.done])
    data.best = best_cache["value"]
    try:
        queue = optional("store.queue")
        data.workers = list(queue.list_workers(store))
        data.paused = bool(queue.is_paused(store))
    except Missing as exc:
        data.notes.append(str(exc))
    try:
        launch = optional("engine.launch")
        data.engines = list(launch.engine_running(store.home.root))
    except Missing as exc:
        data.notes.append(str(exc))
    except Exception as exc:  # a stale pid file must not break the home screen
        data.notes.append(f"engine status unknown: {exc}")
    return data


class HomeScreen(StoreScreen):
    BINDINGS = keymap.bindings("home")

    class Refreshed(Message):
        def __init__(self, data: HomeData):
            super().__init__()
            self.data = data

    def __init__(self):
        super().__init__(id="home")
        self._best_cache: dict = {}
        self.data: HomeData | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        if self.app.demo:
            from store.demo import DEMO_BANNER

            yield Static(DEMO_BANNER + "  Press S to start the demo engine.", id="demo-banner")
        yield Static("loading...", id="queue-status")
        with Horizontal(id="home-top"):
            with Vertical(id="concepts-pane"):
                yield Static("Concepts  [dim](enter: edit, c: new)[/]", classes="pane-title")
                yield DataTable(id="concepts", cursor_type="row", zebra_stripes=True)
            with Vertical(id="experiments-pane"):
                yield Static("Experiments  [dim](enter: runs, e: results, E: edit/duplicate)[/]",
                             classes="pane-title")
                yield DataTable(id="experiments", cursor_type="row", zebra_stripes=True)
        yield Static("Workers", classes="pane-title")
        yield DataTable(id="workers", cursor_type="row")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#concepts", DataTable).add_columns("id", "name", "token", "refs")
        self.query_one("#experiments", DataTable).add_columns(
            "id", "name", "status", "done/N", "failed", "running", "best (T, I)", "tags")
        self.query_one("#workers", DataTable).add_columns(
            "device", "status", "run", "step", "it/s", "heartbeat", "id")
        self.query_one("#experiments", DataTable).focus()
        self.refresh_data()
        self.set_interval(REFRESH_S, self.refresh_data)

    def on_screen_resume(self) -> None:
        self.refresh_data()

    @work(thread=True, exclusive=True, group="home-refresh")
    def refresh_data(self) -> None:
        self.post_message(self.Refreshed(collect(self.store, self._best_cache)))

    def on_home_screen_refreshed(self, message: Refreshed) -> None:
        self.data = data = message.data
        parts = []
        if data.paused is not None:
            parts.append("[b red]queue PAUSED[/] (p: resume)" if data.paused else "[green]queue running[/] (p: pause)")
        if data.engines is not None:
            parts.append(f"engines: {len(data.engines)} running" if data.engines else "engines: none (S: start)")
        queued = sum(r.counts.get("queued", 0) for r in data.experiments)
        running = sum(r.counts.get("running", 0) for r in data.experiments)
        parts.append(f"{queued} queued, {running} running")
        parts += [f"[yellow]{n}[/]" for n in data.notes]
        self.query_one("#queue-status", Static).update("  |  ".join(parts))

        self._fill("#concepts", [
            (str(c.id), (c.id, c.name, c.token, len(c.ref_images))) for c in data.concepts])
        rows = []
        for r in data.experiments:
            e = r.experiment
            best = data.best.get(e.id)
            best_txt = f"#{best[0]} {best[1]:.3f}, {best[2]:.3f}" if best else "-"
            total = r.total or e.run_count
            rows.append((str(e.id), (e.id, e.name, e.status, f"{r.done}/{total}", r.failed or "",
                                     r.counts.get("running", 0) or "", best_txt, e.tags)))
        self._fill("#experiments", rows)
        wrows = []
        for w in data.workers or []:
            step = f"{w.step}/{w.total_steps}" if w.total_steps else "-"
            its = f"{w.its_per_s:.2f}" if w.its_per_s else "-"
            wrows.append((w.id, (w.device, w.status, w.current_run_id or "-", step, its, age(w.heartbeat_at), w.id)))
        if data.workers is None:
            wrows = [("-", ("store.queue not available", "", "", "", "", "", ""))]
        self._fill("#workers", wrows)
        self._sync_experiment()

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

    def action_open_experiment(self) -> None:
        exp_id = self._selected("#experiments")
        if exp_id is not None:
            self.app.experiment_id = exp_id
            self.app.action_open("runs", experiment_id=exp_id)

    def action_toggle_pause(self) -> None:
        self.app.toggle_pause()
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
        from store.grammar import SweepError
        from store.queries import InputError, queue_experiment

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
        try:
            n = getattr(optional("store.queue"), fn)(self.store, exp_id)
        except Missing as exc:
            self.notify(str(exc), severity="error")
            return
        self.notify(done.format(n=n if isinstance(n, int) else "the"))
        self.refresh_data()

    def action_requeue_experiment(self) -> None:
        self._queue_call("requeue", "re-queued {n} failed/cancelled runs")

    def action_cancel_experiment(self) -> None:
        self._queue_call("cancel_experiment", "cancelled {n} runs")


def _default_device() -> str:
    import shutil

    return "cuda" if shutil.which("nvidia-smi") else "cpu"
