"""Nothing typed is lost: a preset asks before replacing typed axes, edits of a saved concept
are kept like a new concept's, unsaved forms survive quitting the app, and a concept's class word
replaces the default subject in the prompts."""

from __future__ import annotations

from tests.tui import SIZE, wait_for, write_png
from tui.app import MtpApp


def name(app) -> str:
    return type(app.screen).__name__


async def open_sweep(pilot, app):
    await pilot.press("f4")
    await wait_for(pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep")
    return app.screen


async def test_preset_asks_before_replacing_typed_axes(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        sweep = await open_sweep(pilot, app)
        fields = sweep._fields
        # An untouched form takes a preset without a question.
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: fields["final_step"].value == "10,20,25,30,40,end")
        assert name(app) == "SweepScreen"
        fields["layers"].value = "{0,2,4},mid+2,up_blocks.3,10-15"
        fields["start_step"].value = "4-50 (+5)"
        await wait_for(pilot, lambda: sweep.app.sweep_draft["fields"]["start_step"] == "4-50 (+5)")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: name(app) == "ConfirmScreen", what="preset asks")
        assert "{0,2,4},mid+2" in str(app.screen.question)
        await pilot.press("enter")  # enter is no answer
        await pilot.pause()
        assert name(app) == "ConfirmScreen"
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is sweep)
        assert fields["layers"].value == "{0,2,4},mid+2,up_blocks.3,10-15"
        assert fields["start_step"].value == "4-50 (+5)"
        # The menu shows the preset that is really applied, not the refused one.
        assert sweep.query_one("#preset").value.startswith("final step")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: name(app) == "ConfirmScreen")
        await pilot.press("y")
        await wait_for(pilot, lambda: fields["layers"].value == "encoder,decoder")
        assert fields["start_step"].value == "4"


async def test_edits_of_a_saved_concept_are_kept_like_a_new_one(store, tmp_path):
    from store.queries import get_concept, save_concept

    model = store.home.models / "local-sd"
    model.mkdir(parents=True)
    images = [write_png(tmp_path / f"dog{i}.png", color=(i * 90, 40, 40)) for i in range(2)]
    concept = save_concept(
        store, "rex", token="sks", class_word="dog", ref_images=images, base_model=str(model)
    )
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.action_open("concept", concept_id=concept.id)
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        screen = app.screen
        status = screen.query_one("#concept-status")
        await wait_for(pilot, lambda: len(screen.images) == 2, what="concept loaded")
        screen.query(".thumb").first().focus()
        await pilot.press("delete")
        await wait_for(pilot, lambda: len(screen.images) == 1)
        assert "unsaved" in str(status.content)  # no longer "editing"/"saved"
        assert (app.concept_draft or {}).get("concept_id") == concept.id
        await pilot.press("escape")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        await pilot.press("f3")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen" and app.screen is not screen)
        again = app.screen
        assert again.concept_id == concept.id and len(again.images) == 1
        assert "unsaved" in str(again.query_one("#concept-status").content)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.concept_draft is None, what="saved")
    assert len(get_concept(store, concept.id).ref_images) == 1


async def test_unsaved_forms_survive_quitting_the_app(store, tmp_path):
    image = write_png(tmp_path / "dog.png")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        sweep = await open_sweep(pilot, app)
        sweep._fields["name"].value = "half built"
        sweep._fields["layers"].value = "{0,2,4}"
        sweep.query_one("#target_prompts").text = "a dog on the moon"
        await wait_for(pilot, lambda: app.sweep_draft["fields"]["layers"] == "{0,2,4}")
        await pilot.press("f3")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        app.screen.query_one("#input-name").value = "corgi"
        app.screen.add_image(image)
        await wait_for(pilot, lambda: (app.concept_draft or {}).get("images") == [image])
        await pilot.press("ctrl+q")
    assert store.home.drafts_path.is_file()

    again = MtpApp(store)
    async with again.run_test(size=SIZE) as pilot:
        sweep = await open_sweep(pilot, again)
        assert sweep._fields["name"].value == "half built"
        assert sweep._fields["layers"].value == "{0,2,4}"
        assert sweep.query_one("#target_prompts").text == "a dog on the moon"
        assert "unsaved form is back" in str(sweep.query_one("#sweep-status").content)
        await pilot.press("f3")
        await wait_for(pilot, lambda: name(again) == "ConceptScreen")
        concept = again.screen
        assert concept.query_one("#input-name").value == "corgi" and concept.images == [image]


async def test_a_concepts_class_word_replaces_the_default_subject(store):
    from store.queries import save_concept

    model = store.home.models / "local-sd"
    model.mkdir(parents=True)
    corgi = save_concept(store, "corgi", token="sks", class_word="corgi", base_model=str(model))
    cat = save_concept(store, "tom", token="<new1>", class_word="cat", base_model=str(model))
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        sweep = await open_sweep(pilot, app)
        targets = sweep.query_one("#target_prompts")
        assert targets.text == "a photo of a dog on the beach"
        sweep.query_one("#concept").value = corgi.id
        await wait_for(pilot, lambda: targets.text == "a photo of sks corgi on the beach")
        sweep.query_one("#concept").value = cat.id
        await wait_for(pilot, lambda: targets.text == "a photo of <new1> cat on the beach")
        assert sweep._fields["source_prompt"].value == "a photo of a cat"
        # Prompts the user wrote stay as written.
        targets.text = "a photo of <new1> cat in the snow"
        sweep.query_one("#concept").value = corgi.id
        await wait_for(pilot, lambda: sweep._fields["source_prompt"].value == "a photo of a corgi")
        assert targets.text == "a photo of <new1> cat in the snow"


async def test_the_builder_refuses_a_taken_or_numeric_name_under_the_name_field(store):
    from tests.tui import seed_experiment

    seed_experiment(store, name="taken")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        sweep = await open_sweep(pilot, app)
        sweep._fields["model"].value = str(store.home.models / "fake-sd")
        for typed, message in (
            ("taken", "exists already"),
            ("12", "would read as an experiment id"),
        ):
            sweep._fields["name"].value = typed
            await pilot.press("ctrl+s")
            field = sweep.query_one("#field-name")
            await wait_for(pilot, lambda: message in str(field.error), what=message)
            assert "Nothing saved" in str(sweep.query_one("#sweep-status").content)
