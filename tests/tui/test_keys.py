"""Keys reach what the user is looking at: space works on every form control of every form,
letters typed on a form control never navigate, and F-keys switch screens from anywhere (a text
area's own F6/F7 selections included). No private Textual hook is overridden for this."""

from __future__ import annotations

from tests.tui import SIZE, add_scores, seed_experiment, wait_for
from tui.app import MtpApp


def name(app) -> str:
    return type(app.screen).__name__


async def space_on(pilot, widget) -> None:
    widget.focus()
    await pilot.pause()
    await pilot.press("space")
    await pilot.pause()


async def check_select_opens(pilot, select) -> None:
    assert not select.expanded
    await space_on(pilot, select)
    await wait_for(pilot, lambda: select.expanded, what=f"space opens {select.id}")
    await pilot.press("escape")
    await wait_for(pilot, lambda: not select.expanded, what=f"escape closes {select.id}")


async def check_checkbox_ticks(pilot, box) -> None:
    before = box.value
    await space_on(pilot, box)
    await wait_for(pilot, lambda: box.value is (not before), what=f"space ticks {box.id}")
    await space_on(pilot, box)
    await wait_for(pilot, lambda: box.value is before, what=f"space unticks {box.id}")


def test_the_app_overrides_no_private_binding_hook():
    # Overriding App._check_bindings swallowed every key a focused control binds itself.
    assert "_check_bindings" not in MtpApp.__dict__


async def test_space_on_every_form_control_of_the_sweep_builder(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: name(app) == "SweepScreen" and app.screen._ready)
        sweep = app.screen
        await check_checkbox_ticks(pilot, sweep.query_one("#baseline"))
        await check_select_opens(pilot, sweep.query_one("#concept"))
        await check_select_opens(pilot, sweep.query_one("#preset"))
        await space_on(pilot, sweep.query_one("#save-draft"))
        await wait_for(
            pilot,
            lambda: "sav" in str(sweep.query_one("#sweep-status").content),
            what="space presses Save draft",
        )
        assert app.screen is sweep


async def test_space_on_every_form_control_of_the_concept_editor(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f3")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        screen = app.screen
        await check_select_opens(pilot, screen.query_one("#weights_kind"))
        await space_on(pilot, screen.query_one("#save"))
        await wait_for(
            pilot,
            lambda: "sav" in str(screen.query_one("#concept-status").content),
            what="space presses Save concept",
        )


async def test_space_on_every_form_control_of_export_and_results(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    app.experiment_id = exp.id
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f7")
        await wait_for(pilot, lambda: name(app) == "ResultsScreen")
        results = app.screen
        await wait_for(pilot, lambda: results.grid_layout, what="results loaded")
        for select in results.query("Select"):
            if select.display and select.region.height:
                await check_select_opens(pilot, select)
        await pilot.press("f8")
        await wait_for(pilot, lambda: name(app) == "ExportScreen")
        export = app.screen
        for box in export.query("Checkbox"):
            await check_checkbox_ticks(pilot, box)
        await check_select_opens(pilot, export.query_one("#export-axis"))
        await space_on(pilot, export.query_one("#export-close"))
        await wait_for(pilot, lambda: name(app) == "ResultsScreen", what="space presses Close")


async def test_letters_on_form_controls_stay_in_the_form_everywhere(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    app.experiment_id = exp.id
    async with app.run_test(size=SIZE) as pilot:
        # Results: its own letters (a: next axis, o: pick experiment) and the app's yield to a
        # focused select.
        await pilot.press("f7")
        await wait_for(pilot, lambda: name(app) == "ResultsScreen")
        results = app.screen
        await wait_for(pilot, lambda: results.grid_layout, what="results loaded")
        axis = results.by
        results.query_one("#grid-x").focus()
        for key in ("a", "o", "r", "h", "x", "question_mark"):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is results, f"{key!r} on a select left Results"
        assert results.by == axis
        # The concept editor: letters typed in a field are text.
        await pilot.press("f3")
        await wait_for(pilot, lambda: name(app) == "ConceptScreen")
        concept = app.screen
        concept.query_one("#input-name").focus()
        await pilot.press(*"rehearsal x")
        assert app.screen is concept
        assert concept.query_one("#input-name").value == "rehearsal x"
        # ...and without a form control focused the letters navigate again.
        results.query_one("#grid-x").blur()
        await pilot.press("f7")
        await wait_for(pilot, lambda: name(app) == "ResultsScreen")
        app.set_focus(None)
        await pilot.press("h")
        await wait_for(pilot, lambda: name(app) == "HomeScreen", what="h with nothing focused")


async def test_function_keys_win_in_the_target_prompts_box(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: name(app) == "SweepScreen" and app.screen._ready)
        sweep = app.screen
        targets = sweep.query_one("#target_prompts")
        targets.text = "a dog on the moon\na dog in the snow"
        for key, screen in (("f6", "RunsScreen"), ("f7", "ResultsScreen")):
            targets.focus()
            await pilot.pause()
            await pilot.press(key)
            await wait_for(pilot, lambda: name(app) == screen, what=f"{key} from the text area")
            await pilot.press("f4")
            await wait_for(pilot, lambda: app.screen is sweep)
            # F6/F7 are TextArea's select line / select all: nothing may be selected, so typing
            # next cannot replace the prompts.
            assert targets.selected_text == ""
        targets.focus()
        await pilot.press("x")
        assert "a dog on the moon" in targets.text and "a dog in the snow" in targets.text


async def test_function_keys_leave_a_dialog(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        answers = []
        app.confirm("Delete everything?", lambda: answers.append("yes"))
        await wait_for(pilot, lambda: name(app) == "ConfirmScreen")
        await pilot.press("f6")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="F6 out of a dialog")
        assert answers == []
        await pilot.press("f1")
        await wait_for(pilot, lambda: name(app) == "HelpScreen")
        await pilot.press("f1")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="F1 closes help")


def test_keymap_refuses_a_character_for_a_priority_key(tmp_path):
    import json

    import pytest

    from tui import keymap

    (tmp_path / "keymap.json").write_text(json.dumps({"app.runs": "u"}))
    with pytest.raises(ValueError, match="app.runs"):
        keymap.load_overrides(tmp_path)
    (tmp_path / "keymap.json").write_text(json.dumps({"app.runs_letter": "u", "app.runs": "f9"}))
    assert keymap.load_overrides(tmp_path) == {"app.runs_letter": "u", "app.runs": "f9"}
