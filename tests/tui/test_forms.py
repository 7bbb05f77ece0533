"""Forms never lose what was typed: no crash on odd error texts, drafts survive leaving the
sweep builder, and letter keys typed on a form control never navigate away."""

from __future__ import annotations

from tests.tui import SIZE, seed_experiment, wait_for, write_png
from tui.app import MtpApp


def name(app) -> str:
    return type(app.screen).__name__


async def test_saving_a_concept_whose_image_was_deleted_reports_it_and_keeps_the_form(
    store, tmp_path
):
    # The failing steps: pick a reference image, delete the file, ctrl+s. The error text starts
    # with the image path, which used to become a CSS query and crash the app.
    image = write_png(tmp_path / "refs dir" / "my corgi [1].png")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen", what="concept screen")
        screen = app.screen
        screen.query_one("#input-name").value = "corgi"
        screen.add_image(image)
        await wait_for(pilot, lambda: len(screen.images) == 1, what="image added")
        image.unlink()
        await pilot.press("ctrl+s")
        await wait_for(
            pilot,
            lambda: "not saved" in str(screen.query_one("#concept-status").content),
            what="save refused",
        )
        assert app.is_running and name(app) == "ConceptScreen"
        assert "no such file" in str(screen.query_one("#concept-status").content)
        assert screen.query_one("#input-name").value == "corgi" and len(screen.images) == 1


async def test_sweep_error_naming_no_field_goes_to_the_status_line(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        from store.queries import InputError

        sweep.show_field_error(InputError("/tmp/a b/#x.png: no such file"))
        assert "no such file" in str(sweep.query_one("#sweep-status").content)


async def test_sweep_form_survives_escape_and_comes_back(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        sweep.query_one("#input-name").value = "half built"
        sweep.query_one("#input-final_step").value = "10,20,end"
        sweep.query_one("#target_prompts").text = "a dog in the snow\na dog on the moon"
        await wait_for(
            pilot,
            lambda: (app.sweep_draft or {}).get("fields", {}).get("final_step") == "10,20,end",
            what="draft kept",
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: name(app) == "HomeScreen", what="back home")
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep again"
        )
        again = app.screen
        assert again is sweep  # kept: reopening is a resume, the form as it was left
        assert again.query_one("#input-name").value == "half built"
        assert again.query_one("#input-final_step").value == "10,20,end"
        assert again.query_one("#target_prompts").text == "a dog in the snow\na dog on the moon"
        assert "unsaved form is back" in str(again.query_one("#sweep-status").content)


async def test_letter_keys_on_form_controls_do_not_navigate(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        sweep.query_one("#input-name").value = "76 runs"
        for widget_id in ("#baseline", "#queue", "#concept"):
            sweep.query_one(widget_id).focus()
            await pilot.pause()
            for key in ("r", "h", "c", "n", "e", "x", "question_mark"):
                await pilot.press(key)
                await pilot.pause()
                assert app.screen is sweep, f"{key!r} on {widget_id} left the form"
        assert sweep.query_one("#input-name").value == "76 runs"
        # ...while function keys still navigate from anywhere.
        sweep.query_one("#baseline").focus()
        await pilot.press("f6")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="F6 from a checkbox")


async def test_picking_a_concept_sets_the_source_prompt_from_its_class_word(store):
    from store.queries import save_concept

    model = store.home.models / "local-sd"
    model.mkdir(parents=True)
    concept = save_concept(store, "corgi", token="sks", class_word="corgi", base_model=str(model))
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        sweep.query_one("#concept").value = concept.id
        await wait_for(
            pilot,
            lambda: sweep.query_one("#input-source_prompt").value == "a photo of a corgi",
            what="source prompt from the class word",
        )
        assert sweep.query_one("#input-model").value == str(model)
        # Mask words must be in the source prompt too: "beach" is only in the target.
        sweep.query_one("#target_prompts").text = "a photo of sks corgi on the beach"
        sweep.query_one("#input-mask_mode").value = "auto"
        sweep.query_one("#input-mask_words").value = "beach"
        field = sweep.query_one("#field-mask_words")
        await wait_for(pilot, lambda: field.has_class("invalid"), what="mask word refused")
        assert "source prompt" in str(field.query_one(".field-info").content)
        sweep.query_one("#input-mask_words").value = "corgi"
        await wait_for(pilot, lambda: sweep.last_count is not None, what="queueable again")


async def test_missing_model_folder_is_refused_by_the_builder_like_the_concept_screen(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(
            pilot, lambda: name(app) == "SweepScreen" and app.screen._ready, what="sweep screen"
        )
        sweep = app.screen
        sweep.query_one("#input-model").value = str(store.home.root / "no-such-model")
        field = sweep.query_one("#field-model")
        await wait_for(pilot, lambda: field.has_class("invalid"), what="model refused")
        assert "does not exist" in str(field.query_one(".field-info").content)


async def test_concept_file_tree_goes_up_and_takes_a_typed_path(store, tmp_path):
    start = tmp_path / "a" / "b"
    start.mkdir(parents=True)
    image = write_png(tmp_path / "elsewhere" / "dog.png")
    from tui.screens.concept import ConceptScreen

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(ConceptScreen(start_dir=start))
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        screen = app.screen
        await pilot.press("ctrl+g")
        await wait_for(
            pilot, lambda: screen.query_one("#tree").path == tmp_path / "a", what="one folder up"
        )
        await pilot.press("ctrl+l")
        await pilot.press("ctrl+a", "ctrl+k")  # empty the path field, then type a folder
        await pilot.press(*str(image.parent), "enter")
        await wait_for(
            pilot, lambda: screen.query_one("#tree").path == image.parent, what="typed folder"
        )
        screen.query_one("#tree-path").value = str(image)
        screen.query_one("#tree-path").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.images == [image], what="typed image added")


async def test_results_picks_its_experiment_by_name(store):
    first = seed_experiment(store, name="first")
    second = seed_experiment(store, name="second")
    app = MtpApp(store)
    app.experiment_id = first.id
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f7")
        await wait_for(pilot, lambda: name(app) == "ResultsScreen")
        results = app.screen
        await pilot.press("o")
        await wait_for(pilot, lambda: name(app) == "PickScreen", what="experiment picker")
        picker = app.screen
        picker.query_one("OptionList").highlighted = [v for v, _ in picker.items].index(
            str(second.id)
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is results and results.experiment_id == second.id)
        assert app.experiment_id == second.id


async def test_concept_form_survives_escape_until_saved(store, tmp_path):
    image = write_png(tmp_path / "dog.png")
    model = store.home.models / "local-sd"
    model.mkdir(parents=True)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        screen = app.screen
        screen.query_one("#input-name").value = "corgi"
        screen.query_one("#input-base_model").value = str(model)
        screen.add_image(image)
        await wait_for(
            pilot, lambda: (app.concept_draft or {}).get("images") == [image], what="draft kept"
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        await pilot.press("c")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen" and app.screen is not screen)
        again = app.screen
        assert again.query_one("#input-name").value == "corgi" and again.images == [image]
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: again.concept_id is not None, what="saved")
        await wait_for(pilot, lambda: app.concept_draft is None, what="draft dropped once saved")
