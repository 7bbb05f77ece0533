"""Run detail: source and target, their masks, per-word attention maps, scores and every
parameter; `[` / `]` step through the experiment's grid. Compare puts two runs side by side."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import Header, Static

from .. import keymap
from ..safe import assemble, plain, rich
from ..widgets.artifact_image import ArtifactImage, array_to_image
from ..widgets.footer import Footer
from ._common import StoreScreen, duration, fmt

PARAMS = (
    "experiment_id",
    "grid_index",
    "status",
    "is_baseline",
    "method",
    "model",
    "source_prompt",
    "source_image",
    "invert",
    "inversion_guidance",
    "target_prompt",
    "seed",
    "num_steps",
    "guidance",
    "width",
    "height",
    "layers",
    "start_step",
    "final_step",
    "skip_interval",
    "mask_mode",
    "mask_layers",
    "mask_words",
    "mask_threshold",
    "mask_timing",
    "weights_kind",
    "weights_path",
    "token",
    "class_word",
    "attempts",
    "worker_id",
    "duration_s",
    "tags",
    "notes",
    "marked",
)


@dataclass
class Browse:
    """Where a run detail was opened from: `[`/`]` walk the runs browser's own list."""

    filt: object
    sort: str
    descending: bool
    position: int  # 0-based index of the shown run in that list


@dataclass
class RunBundle:
    run: object | None
    scores: dict = field(default_factory=dict)
    maps: dict = field(default_factory=dict)  # word -> 2D array
    maps_note: str = ""
    members: list = field(default_factory=list)  # a set method's set, in prompt order ([]: none)


def load_bundle(store, run_id: int) -> RunBundle:
    from store.queries import get_run, run_scores

    run = get_run(store, run_id)
    if run is None:
        return RunBundle(None)
    from store.queries import set_runs

    bundle = RunBundle(
        run, run_scores(store, [run.id]).get(run.id, {}), members=set_runs(store, run)
    )
    path = store.home.resolve_artifact(run.maps_path)
    if path is None:
        bundle.maps_note = "no attention maps recorded"
    elif not path.is_file():
        bundle.maps_note = f"missing: {path}"
    else:
        try:
            import numpy as np

            with np.load(path) as npz:
                bundle.maps = {k: npz[k] for k in npz.files}
        except Exception as exc:  # a half-written npz while the engine works must not crash
            bundle.maps_note = f"unreadable maps: {exc}"
    return bundle


def params_table(run, scores: dict) -> Table:
    table = Table(show_header=False, box=None, expand=True, padding=(0, 1))
    table.add_column(style="dim", no_wrap=True)
    table.add_column()
    for k, v in sorted(scores.items()):
        table.add_row(rich(k), Text(f"{v:.4f}", style="bold"))
    from store.models import param_value

    for name in PARAMS:
        value = param_value(run, name) if hasattr(run, name) else None
        shown = duration(value) if name == "duration_s" and value else fmt(value)
        table.add_row(name, rich(shown, multiline=name == "notes"))
        if name == "method" and getattr(run, "method_params", ""):
            import json

            for k, v in json.loads(run.method_params).items():
                table.add_row(rich(f"  {k}"), rich(fmt(v)))
    return table


class RunDetailScreen(StoreScreen):
    BINDINGS = keymap.bindings("detail")
    KEY_SCOPE = "detail"
    live = True  # a running run's images and scores appear as the engine commits them

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Loaded(Message):
        bundle: RunBundle

    def __init__(self, run_id: int, browse: Browse | None = None):
        super().__init__(id="detail")
        self.run_id = run_id
        self.browse = browse
        self.bundle: RunBundle | None = None
        self.word_index = 0

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading...", id="detail-title")
        with VerticalScroll(id="detail-body"):
            with Horizontal(classes="images"):
                yield ArtifactImage("source", id="img-source")
                yield ArtifactImage("target", id="img-target")
            with Horizontal(classes="images"):
                yield ArtifactImage("source mask", id="img-source-mask")
                yield ArtifactImage("target mask", id="img-target-mask")
                yield ArtifactImage("attention map", id="img-map")
            # A set method's run: every image of its set and each image's subject mask
            # (filled in by _show_set; empty, and no height, for MasaCtrl's runs).
            yield Vertical(id="detail-set")
            yield Static("", id="detail-error")
            yield Static("", id="detail-info")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.load(self.run_id)

    @work(thread=True, exclusive=True, group="detail")
    def load(self, run_id: int) -> None:
        self.post_message(self.Loaded(load_bundle(self.store, run_id)))

    def on_run_detail_screen_loaded(self, message: Loaded) -> None:
        bundle = message.bundle
        run = bundle.run
        if run is None:
            self.query_one("#detail-title", Static).update(
                plain(f"run {self.run_id} does not exist (deleted?)", "red")
            )
            # Nothing of the run that was shown may stay on screen as if it still existed.
            self.bundle = None
            for image in self.query(ArtifactImage):
                image.show_image(None, "run deleted")
            self.query_one("#detail-error", Static).update("")
            self.query_one("#detail-info", Static).update("")
            return
        from store.sweep.spec import controlled_steps

        self.bundle, self.run_id, self.word_index = bundle, run.id, 0
        kind = (
            "baseline (no control)"
            if run.is_baseline
            else f"layers {run.layers}, "
            + controlled_steps(run.start_step, run.final_step, run.skip_interval, run.num_steps)
        )
        self.query_one("#detail-title", Static).update(
            assemble(
                (f"run {run.id}", "b"),
                f" [{run.status}]  {run.target_prompt!r}  seed {run.seed}  {kind}",
            )
        )
        resolve = self.store.home.resolve_artifact
        for wid, rel in (
            ("#img-source", run.source_image_path),
            ("#img-target", run.image_path),
            ("#img-source-mask", run.source_mask_path),
            ("#img-target-mask", run.mask_path),
        ):
            self.query_one(wid, ArtifactImage).show_path(resolve(rel))
        self._show_map()
        self._show_set(bundle)
        problems = (
            [assemble(("error:", "b red"), " ", run.error, multiline=True)] if run.error else []
        )
        if run.score_error:  # done with its images, but scoring failed (`mtp score` / S retries)
            problems.append(
                assemble(("not scored:", "b yellow"), " ", run.score_error, multiline=True)
            )
        self.query_one("#detail-error", Static).update(Content("\n").join(problems))
        self.query_one("#detail-info", Static).update(params_table(run, bundle.scores))

    def _show_set(self, bundle: RunBundle) -> None:
        box = self.query_one("#detail-set", Vertical)
        shown = tuple((m.id, m.image_path, m.mask_path) for m in bundle.members)
        if getattr(self, "_set_shown", None) == shown:
            return  # the same set with the same files: keep the widgets
        self._set_shown = shown
        box.remove_children()
        if not bundle.members:
            return
        run = bundle.run
        resolve = self.store.home.resolve_artifact
        images, masks = [], []
        from store.safe_text import safe_text

        lines = Text(f"set of {len(bundle.members)} images ({run.method})\n", style="bold")
        for m in bundle.members:
            mark = "*" if m.id == run.id else " "
            lines.append(
                safe_text(f"{mark}#{m.prompt_index} run {m.id} [{m.status}] {m.target_prompt!r}")
                + "\n"
            )
            lines.append(
                f"    {safe_text(resolve(m.image_path) or '(no image yet)')}\n", style="dim"
            )
            if m.mask_path:
                lines.append(f"    mask {safe_text(resolve(m.mask_path))}\n", style="dim")
            image = ArtifactImage(f"{mark}#{m.prompt_index} run {m.id}")
            images.append((image, resolve(m.image_path)))
            if m.mask_path:
                masks.append((ArtifactImage(f"#{m.prompt_index} mask"), resolve(m.mask_path)))
        box.mount(Static(lines, classes="set-list"))
        box.mount(Horizontal(*(w for w, _ in images), classes="images set-images"))
        if masks:
            box.mount(Horizontal(*(w for w, _ in masks), classes="images set-masks"))
        # Decoded once mounted: a thumbnail worker needs its widget in the DOM.
        self.call_after_refresh(lambda: [w.show_path(p) for w, p in images + masks])

    def _show_map(self) -> None:
        image = self.query_one("#img-map", ArtifactImage)
        words = list(self.bundle.maps) if self.bundle else []
        if not words:
            image.set_caption("attention map")
            image.show_image(None, self.bundle.maps_note if self.bundle else "")
            return
        word = words[self.word_index % len(words)]
        image.set_caption(f"attention: {word!r} (w: next of {len(words)})")
        image.show_image(array_to_image(self.bundle.maps[word]))

    def action_next_word(self) -> None:
        if self.bundle and self.bundle.maps:
            self.word_index += 1
            self._show_map()

    def action_step(self, direction: int) -> None:
        if not self.bundle or not self.bundle.run:
            return
        from store.queries import list_runs, neighbour_run

        if self.browse is not None:
            b = self.browse
            position = b.position + direction
            rows = (
                list_runs(
                    self.store,
                    b.filt,
                    sort=b.sort,
                    descending=b.descending,
                    offset=position,
                    limit=1,
                )[0]
                if position >= 0
                else []
            )
            other = rows[0] if rows else None
            if other is not None:
                b.position = position
        else:
            other = neighbour_run(self.store, self.bundle.run, direction)
        if other is None:
            self.notify("no more runs this way")
            return
        self.load(other.id)

    def action_refresh(self) -> None:
        self.load(self.run_id)

    def on_store_changed(self) -> None:
        self._reload_if_changed(self.run_id)

    @staticmethod
    def _state(run) -> tuple:
        return (
            run.status,
            run.finished_at,
            run.image_path,
            run.tags,
            run.notes,
            run.marked,
            run.error,
            run.score_error,
        )

    @work(thread=True, exclusive=True, group="detail-watch")
    def _reload_if_changed(self, run_id: int) -> None:
        """Engines commit all the time; reread images and maps only when this run moved."""
        from store.queries import get_run

        run = get_run(self.store, run_id)
        shown = self.bundle.run if self.bundle else None
        if run is None or shown is None or self._state(run) != self._state(shown):
            self.post_message(self.Loaded(load_bundle(self.store, run_id)))

    def action_compare_baseline(self) -> None:
        if self.bundle and self.bundle.run:
            self.app.push_screen(CompareScreen(self.bundle.run.id, None))


class CompareScreen(StoreScreen):
    """Two runs side by side; with one run given, the other is its no-control baseline."""

    BINDINGS = [b for b in keymap.bindings("detail") if b.id == "detail.refresh"]

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Loaded(Message):
        bundles: list[RunBundle]
        note: str = ""

    def __init__(self, run_a: int, run_b: int | None):
        super().__init__(id="compare")
        self.run_a, self.run_b = run_a, run_b

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("loading...", id="compare-title")
        with VerticalScroll():
            with Horizontal(classes="images"):
                yield ArtifactImage("A", id="cmp-a")
                yield ArtifactImage("B", id="cmp-b")
            with Horizontal(id="cmp-info"):
                yield Static("", id="cmp-info-a")
                yield Static("", id="cmp-info-b")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        note = ""
        b = self.run_b
        if b is None:
            from store.queries import baseline_of

            b = baseline_of(self.store, self.run_a)
            if b == self.run_a:
                b, note = None, "A is itself a baseline (no control)"
            else:
                note = "B is the no-control baseline of A" if b else "A has no baseline run"
        bundles = [load_bundle(self.store, self.run_a)] + (
            [load_bundle(self.store, b)] if b else []
        )
        self.post_message(self.Loaded(bundles, note))

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        ids = [b.run.id for b in message.bundles if b.run]
        self.query_one("#compare-title", Static).update(
            Text(
                "compare "
                + " vs ".join(f"run {i}" for i in ids)
                + (f"  ({message.note})" if message.note else "")
            )
        )
        for bundle, img_id, info_id, label in zip(
            message.bundles, ("#cmp-a", "#cmp-b"), ("#cmp-info-a", "#cmp-info-b"), "AB"
        ):
            if bundle.run is None:
                continue
            image = self.query_one(img_id, ArtifactImage)
            image.set_caption(f"{label}: run {bundle.run.id}")
            image.show_path(self.store.home.resolve_artifact(bundle.run.image_path))
            self.query_one(info_id, Static).update(params_table(bundle.run, bundle.scores))

    def action_refresh(self) -> None:
        self.load()
