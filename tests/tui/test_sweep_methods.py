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
        await wait_for(pilot, lambda: sweep.query(".method-params"), what="parameter fields")
        group = sweep.query_one(".method-params")
        assert group.display
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
