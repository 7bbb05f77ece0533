"""The sweep builder's method field: choosing a method shows its own parameter fields with the
authors' defaults, a swept parameter counts in the run total, and queueing makes sets."""

from __future__ import annotations

from collections import Counter

from sqlmodel import select

from tests.tui import SIZE, wait_for
from tui.app import MtpApp


def name(app) -> str:
    return type(app.screen).__name__


async def test_method_field_shows_its_parameters_and_queues_sets(store):
    from store.models import Run
    from store.sweep.methods import METHODS

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        # MasaCtrl (the default) has no own parameters: nothing shown
        assert not sweep.query(".method-params")
        sweep.query_one("#input-name").value = "compare"
        sweep.query_one("#input-model").value = "tiny"
        sweep.query_one("#input-num_steps").value = "10"
        sweep.query_one("#input-start_step").value = "1"
        sweep.query_one(
            "#target_prompts"
        ).text = "a dog on the beach\na dog in the snow\na dog in a car"
        sweep.query_one("#input-mask_words").value = "dog"
        sweep.query_one("#input-mask_threshold").value = "otsu"
        sweep.query_one("#input-method").value = "masactrl,consistory"
        await wait_for(
            pilot,
            lambda: sweep.query("#input-method_params--consistory--draws"),
            what="parameter fields",
        )
        group = sweep.query_one(".method-params")
        assert group.display
        # what the shared axes mean for this method, under its heading
        assert "mask: subject masks" in " ".join(str(w.content) for w in group.query("Static"))
        fields = {f.field_name: f for f in group.query("Field")}
        assert set(fields) == {f"method_params.consistory.{p.name}" for p in METHODS["consistory"]}
        assert fields["method_params.consistory.n_anchors"].value == "2"  # the authors'
        assert fields["method_params.consistory.mask_dropout"].value == "0.5"
        sweep.query_one("#input-method_params--consistory--mask_dropout").value = "0,0.5"
        # 1 seed: masactrl 3 prompts x (baseline + 1); consistory baseline set + 2 sets of 3
        await wait_for(
            pilot, lambda: sweep.last_count == 6 + 9, what=f"count (got {sweep.last_count})"
        )
        # a value out of range is shown under its own field
        sweep.query_one("#input-method_params--consistory--n_anchors").value = "4"
        await wait_for(
            pilot,
            lambda: "at most the set size" in fields["method_params.consistory.n_anchors"].error,
            what="n_anchors error",
        )
        sweep.query_one("#input-method_params--consistory--n_anchors").value = "2"
        await wait_for(pilot, lambda: sweep.last_count == 15, what="valid again")

        # masactrl alone hides them; choosing consistory again brings back what was typed
        sweep.query_one("#input-method").value = "masactrl"
        await wait_for(pilot, lambda: not group.display, what="hidden")
        await wait_for(pilot, lambda: sweep.last_count == 6, what="masactrl count")
        sweep.query_one("#input-method").value = "masactrl,consistory"
        await wait_for(pilot, lambda: group.display and sweep.last_count == 15, what="back")
        assert fields["method_params.consistory.mask_dropout"].value == "0,0.5"

        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="queued, runs shown")
    with store.session() as s:
        runs = list(s.exec(select(Run)))
    assert Counter(r.method for r in runs) == {"masactrl": 6, "consistory": 9}
    sets = Counter(r.group_key for r in runs if r.method == "consistory")
    assert sorted(sets.values()) == [3, 3, 3]
    assert {
        r.method_params for r in runs if r.method == "consistory" and not r.is_baseline
    } and all(
        '"n_anchors": 2' in r.method_params
        for r in runs
        if r.method == "consistory" and not r.is_baseline
    )


def _done_consistory_sets(store):
    """A queued consistory experiment whose runs are done with an image and a mask each."""
    from store import queue
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec
    from tests.tui import write_png

    exp = save_experiment(
        store,
        "sets",
        ExperimentSpec(
            model="tiny",
            target_prompts=["a dog on the beach", "a dog in the snow", "a dog in a car"],
            num_steps=10,
            start_step="1",
            method="masactrl,consistory",
            mask_words="dog",
            mask_threshold="otsu",
        ),
        queue=True,
    )
    while batch := queue.claim_group(store, "w:1:cpu"):
        results = []
        for r in batch:
            image = f"artifacts/run-{r.id}/target.png"
            write_png(store.home.root / image, (20 * r.prompt_index, 100, 50))
            mask = None
            if r.mask_mode != "off":
                mask = f"artifacts/run-{r.id}/mask_target.png"
                write_png(store.home.root / mask, (255, 255, 255))
            results.append(
                {
                    "run_id": r.id,
                    "duration_s": 0.1,
                    "scores": [],
                    "image_path": image,
                    "mask_path": mask,
                }
            )
        queue.complete_runs(store, "w:1:cpu", results)
    return exp


async def test_run_detail_shows_the_method_its_parameters_and_the_whole_set(store):
    from store.models import Run
    from tui.screens.run_detail import CompareScreen, RunDetailScreen

    exp = _done_consistory_sets(store)
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
    one = next(
        r for r in runs if r.method == "consistory" and not r.is_baseline and r.prompt_index == 1
    )
    members = sorted(
        (r for r in runs if r.group_key == one.group_key), key=lambda r: r.prompt_index
    )
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunDetailScreen(one.id))
        await wait_for(
            pilot,
            lambda: len(app.screen.query(".set-images ArtifactImage")) == 3,
            what="the set's images",
        )
        screen = app.screen
        listing = str(screen.query_one(".set-list").content)
        for m in members:
            assert f"run {m.id} [done] {m.target_prompt!r}" in listing
            assert str(store.home.root / m.image_path) in listing
            assert str(store.home.root / m.mask_path) in listing
        assert len(screen.query(".set-masks ArtifactImage")) == 3
        await wait_for(
            pilot,
            lambda: all(w.has_picture for w in screen.query(".set-images ArtifactImage")),
            what="thumbnails decoded",
        )
        info = screen.query_one("#detail-info").content
        rows = [[str(c) for c in col.cells] for col in info.columns]
        params = dict(zip(rows[0], rows[1]))
        assert params["method"] == "consistory" and params["  n_anchors"] == "2"
        # its baseline is the plain generation of the same image of the set
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        await wait_for(
            pilot, lambda: "baseline" in str(app.screen.query_one("#compare-title").content)
        )
        title = str(app.screen.query_one("#compare-title").content)
        base = next(
            r for r in runs if r.method == "consistory" and r.is_baseline and r.prompt_index == 1
        )
        assert f"run {one.id} vs run {base.id}" in title


async def test_runs_table_has_a_method_column_and_filters_on_it(store):
    from tui.screens.runs import RunsScreen

    exp = _done_consistory_sets(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        table = screen.query_one("DataTable")
        assert "method" in [str(c.label) for c in table.columns.values()]
        await pilot.press("slash")
        await pilot.press(*"method=consistory")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.total == 6, what="filtered by method")
        assert {r.method for r in screen.runs} == {"consistory"}
        column = [str(c.label) for c in table.columns.values()].index("method")
        assert {str(table.get_row_at(i)[column]) for i in range(table.row_count)} == {"consistory"}


def test_filter_on_a_text_column_reads_its_value_as_text():
    from tui.screens.runs import parse_filter

    # every str column: SQLModel reports its python type as object
    f = parse_filter("method=consistory layers=decoder")
    assert f.equals == {"method": "consistory", "layers": "decoder"}


async def test_a_draft_keeps_the_method_parameters(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        sweep.query_one("#input-method").value = "consistent_sa"
        await wait_for(
            pilot,
            lambda: sweep.query("#input-method_params--consistent_sa--sa_rate_high"),
            what="parameter fields",
        )
        sweep.query_one("#input-method_params--consistent_sa--sa_rate_high").value = "0.5,1"
        await wait_for(
            pilot,
            lambda: (
                (app.sweep_draft or {})
                .get("fields", {})
                .get("method_params.consistent_sa.sa_rate_high")
                == "0.5,1"
            ),
            what="draft kept",
        )
        draft = app.sweep_draft
        sweep._reset_form()  # the defaults: MasaCtrl, parameters back to the authors'
        await pilot.pause()
        field = sweep._fields["method_params.consistent_sa.sa_rate_high"]
        assert field.value == "0.5" and not sweep.query_one(".method-params").display
        sweep.restore(draft)
        await pilot.pause()
        assert field.value == "0.5,1" and sweep.query_one(".method-params").display
        spec = sweep.read_spec()
        assert spec.method == "consistent_sa"
        assert spec.method_params["consistent_sa"]["sa_rate_high"] == "0.5,1"
