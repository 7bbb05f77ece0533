"""Pilot tests of the main flows: concept -> sweep -> queue -> runs, and bad grammar."""

from __future__ import annotations

from sqlmodel import select

from store.models import Concept, Experiment, Run
from tests.tui import SIZE, wait_for, write_png
from tui.app import MtpApp


async def test_concept_sweep_queue_runs_appear(store, tmp_path):
    refs = tmp_path / "refs"
    good = write_png(refs / "corgi.png")
    bad = refs / "broken.png"
    bad.write_bytes(b"not an image at all")
    model = store.home.models / "local-sd"
    model.mkdir(parents=True)

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "ConceptScreen", what="concept screen"
        )
        screen = app.screen
        screen.start_dir = refs
        screen.query_one("#input-name").value = "corgi"
        screen.query_one("#input-token").value = "sks"
        screen.query_one("#input-class_word").value = "dog"
        screen.query_one("#input-base_model").value = str(model)
        screen.add_image(bad)
        await wait_for(
            pilot,
            lambda: "rejected" in str(screen.query_one("#concept-status").content),
            what="rejection of the broken file",
        )
        assert "not a readable image" in str(screen.query_one("#concept-status").content)
        screen.add_image(good)
        await wait_for(pilot, lambda: len(screen.images) == 1, what="the good image")
        await wait_for(pilot, lambda: screen.query_one(".thumb").has_picture, what="its thumbnail")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.concept_id is not None, what="concept saved")
        with store.session() as s:
            concept = s.exec(select(Concept)).one()
        assert concept.name == "corgi" and len(concept.ref_images) == 1

        await pilot.press("f4")  # the sweep builder, even with an input focused
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready,
            what="sweep screen",
        )
        sweep = app.screen
        sweep.query_one("#concept").value = concept.id
        sweep.query_one("#input-name").value = "corgi final step"
        sweep.query_one("#input-model").value = str(model)
        sweep.query_one("#input-num_steps").value = "30"
        sweep.query_one("#input-seeds").value = "0,1"
        sweep.query_one("#input-final_step").value = "10-20 (+5),end"
        # 1 prompt x 2 seeds x (1 baseline + 4 final steps)
        await wait_for(pilot, lambda: sweep.last_count == 10, what="live run count")
        assert "10 runs" in str(sweep.query_one("#sweep-summary").content)
        assert "10, 15, 20, end" in str(sweep.query_one("#field-final_step .field-info").content)
        await pilot.press("ctrl+r")
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded,
            what="runs browser after queueing",
        )
        with store.session() as s:
            exp = s.exec(select(Experiment)).one()
            runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
        assert exp.status == "queued" and len(runs) == exp.run_count == 10
        assert all(r.concept_id == concept.id and r.token == "sks" for r in runs)
        table = app.screen.query_one("DataTable")
        assert table.row_count == 10
        assert app.screen.total == 10


async def test_bad_grammar_shows_error_at_field_and_queues_nothing(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready,
            what="sweep screen",
        )
        sweep = app.screen
        sweep.query_one("#input-name").value = "broken"
        sweep.query_one("#input-model").value = "org/model"
        sweep.query_one("#input-layers").value = "decoder,,encoder"
        field = sweep.query_one("#field-layers")
        await wait_for(pilot, lambda: field.has_class("invalid"), what="layers error")
        assert "empty value" in str(field.query_one(".field-info").content)
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        assert field.has_class("invalid")
        assert type(app.screen).__name__ == "SweepScreen"

        # A cross-field error (final step past the step count) lands at final_step too.
        sweep.query_one("#input-layers").value = "decoder"
        sweep.query_one("#input-final_step").value = "20,80"
        final = sweep.query_one("#field-final_step")
        await wait_for(
            pilot,
            lambda: final.has_class("invalid") and not field.has_class("invalid"),
            what="final_step error",
        )
        assert "beyond" in str(final.query_one(".field-info").content)
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
        # A non-number in a base field is reported at that field.
        sweep.query_one("#input-final_step").value = "20"
        sweep.query_one("#input-guidance").value = "lots"
        guidance = sweep.query_one("#field-guidance")
        await wait_for(pilot, lambda: guidance.has_class("invalid"), what="guidance error")
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
    with store.session() as s:
        assert s.exec(select(Experiment)).all() == []
        assert s.exec(select(Run)).all() == []


async def test_preset_fills_axes(store):
    from store.sweep.spec import PRESETS

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready
        )
        await pilot.press("ctrl+t")
        await pilot.pause(0.2)
        first = next(iter(PRESETS.values()))
        for name, text in first.items():
            assert app.screen.query_one(f"#input-{name}").value == text


async def test_unreadable_source_image_is_refused_at_its_field(store, tmp_path):
    bad = tmp_path / "source.png"
    bad.write_text("not a picture")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("n")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready
        )
        sweep = app.screen
        sweep.query_one("#input-name").value = "inverted"
        sweep.query_one("#input-model").value = "org/model"
        sweep.query_one("#input-source_image").value = str(bad)
        field = sweep.query_one("#field-source_image")
        await wait_for(pilot, lambda: field.has_class("invalid"), what="source image error")
        assert "not a readable image" in str(field.query_one(".field-info").content)
        await pilot.press("ctrl+r")
        await pilot.pause(0.5)
    with store.session() as s:
        assert s.exec(select(Experiment)).all() == []
