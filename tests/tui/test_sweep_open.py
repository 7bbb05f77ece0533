"""What the sweep builder's fast open must not break: a restored form shows its own values,
real resizes still re-lay the form out, a restored draft is checked once, and the footer
follows binding changes while skipping rebuilds that would show the same keys."""

from __future__ import annotations

from tests.tui import SIZE, wait_for
from tui.app import MtpApp


def _sweep(app):
    screen = app.screen
    return screen if type(screen).__name__ == "SweepScreen" and screen._ready else None


async def test_a_restored_form_shows_the_parse_of_its_own_values(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app), what="sweep screen")
        app.screen.query_one("#input-final_step").value = "10,20,end"
        await wait_for(
            pilot,
            lambda: (app.sweep_draft or {}).get("fields", {}).get("final_step") == "10,20,end",
            what="draft kept",
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="home")
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app) and app.screen.last_count, what="sweep again")
        sweep = app.screen
        # Fields parse their first (default) value as they are built; the restored value must
        # replace that, not be skipped as already checked.
        info = str(sweep.query_one("#field-final_step .field-info").content)
        assert "3 values: 10, 20, end" in info
        assert sweep.focused is sweep.query_one("#input-name")


async def test_resizing_the_open_builder_still_collapses_and_restores_the_side_pane(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app) and app.screen.last_count, what="sweep screen")
        sweep = app.screen
        assert sweep.query_one("#sweep-side").region.width == 44
        await pilot.resize_terminal(80, 24)
        await wait_for(
            pilot,
            lambda: sweep.has_class("narrow") and sweep.query_one("#sweep-side").region.width == 80,
            what="side pane below the form",
        )
        await pilot.resize_terminal(*SIZE)
        await wait_for(
            pilot,
            lambda: (
                not sweep.has_class("narrow") and sweep.query_one("#sweep-side").region.width == 44
            ),
            what="side pane back",
        )


async def test_a_reopened_form_is_checked_once_not_once_per_field(store):
    from store.sweep.spec import expand

    typed = {
        "seeds": "0-3",
        "layers": "encoder,decoder",
        "start_step": "0,4",
        "final_step": "10,end",
        "skip_interval": "1,2",
        "num_steps": "30",
        "guidance": "5",
    }
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app), what="sweep screen")
        for name, text in typed.items():
            app.screen.query_one(f"#input-{name}").value = text
        await wait_for(
            pilot,
            lambda: (app.sweep_draft or {}).get("fields", {}).get("guidance") == "5",
            what="draft kept",
        )
        await pilot.pause(0.3)
        checks_before = app.screen._token
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="home")
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app) and app.screen.last_count, what="sweep again")
        sweep = app.screen
        await pilot.pause(0.3)
        assert sweep.last_count == len(expand(sweep.read_spec()))
        assert {name: sweep.query_one(f"#input-{name}").value for name in typed} == typed
        # Coming back checks the whole form once (concepts and engines may have changed), not
        # once per field.
        assert sweep._token - checks_before <= 2 < len(typed)


async def test_clearing_the_form_shows_the_defaults_and_their_count(store):
    from store.sweep.spec import ExperimentSpec, expand

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app) and app.screen.last_count, what="sweep screen")
        sweep = app.screen
        default_count = sweep.last_count
        sweep.query_one("#input-seeds").value = "0-9"
        await wait_for(pilot, lambda: sweep.last_count == 10 * default_count, what="ten seeds")
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="confirm")
        await pilot.press("y")
        await wait_for(
            pilot, lambda: app.screen is sweep and sweep.last_count == default_count, what="cleared"
        )
        assert sweep.query_one("#input-seeds").value == ExperimentSpec().seeds
        assert "1 value: 0" in str(sweep.query_one("#field-seeds .field-info").content)
        assert default_count == len(expand(ExperimentSpec()))
        await pilot.pause(
            0.2
        )  # back from the dialog is not a reopen: the builder says what happened
        assert "form cleared" in str(sweep.query_one("#sweep-status").content)


async def test_a_small_form_is_counted_as_it_opens_and_a_big_one_in_a_thread(store, monkeypatch):
    from store.sweep.spec import ExperimentSpec, expand
    from tui.screens.sweep import SweepScreen

    threaded = []
    expand_in_thread = SweepScreen._expand

    def record(self, spec, token, *name_and_id):
        threaded.append(token)
        return expand_in_thread(self, spec, token, *name_and_id)

    monkeypatch.setattr(SweepScreen, "_expand", record)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app), what="sweep screen")
        sweep = app.screen
        assert sweep.last_count == len(expand(ExperimentSpec())) and threaded == []
        sweep.query_one("#input-seeds").value = "0-999"  # typing: always checked in a thread
        await wait_for(
            pilot, lambda: sweep.last_count == 1000 * len(expand(ExperimentSpec())), what="big grid"
        )
        assert threaded
        await pilot.press("escape")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="home")
        threaded.clear()
        await pilot.press("f4")  # the restored 2000-run form is too big to expand while opening
        await wait_for(pilot, lambda: _sweep(app) and app.screen.last_count, what="sweep again")
        assert threaded


async def test_kept_builder_starts_afresh_after_queueing_follows_edit_and_new_concepts(store):
    """The builder is built once: F4 after a queue starts from the defaults, Home's E loads that
    experiment into it, and a concept created meanwhile is offered without touching the form."""
    from store.queries import get_experiment, save_concept, save_experiment
    from store.sweep.spec import ExperimentSpec

    model = store.home.models / "local-sd"
    model.mkdir(parents=True)
    draft = save_experiment(
        store,
        "saved draft",
        ExperimentSpec(model=str(model), final_step="12,end", target_prompts=["a cat"]),
    )
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: _sweep(app), what="sweep screen")
        sweep = app.screen
        sweep.query_one("#input-name").value = "to the queue"
        sweep.query_one("#input-model").value = str(model)
        sweep.query_one("#input-final_step").value = "10,end"
        await wait_for(
            pilot,
            lambda: sweep.last_count and "to the queue" in str(app.sweep_draft),
            what="checked",
        )
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen", what="queued")
        await pilot.press("f4")
        await wait_for(pilot, lambda: app.screen is sweep and sweep._ready, what="the kept builder")
        defaults = ExperimentSpec()
        assert sweep.query_one("#input-name").value == "" and sweep.experiment_id is None
        assert sweep.query_one("#input-final_step").value == str(defaults.final_step)

        sweep.query_one(
            "#input-final_step"
        ).value = "30,end"  # typed, then another experiment edited
        await pilot.press("f2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="home")
        table = app.screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 2, what="experiments")
        table.move_cursor(row=table.get_row_index(str(draft.id)))
        await pilot.press("E")
        await wait_for(
            pilot,
            lambda: app.screen is sweep and sweep._ready and sweep.experiment_id == draft.id,
            what="the draft in the builder",
        )
        assert sweep.query_one("#input-name").value == "saved draft"
        assert sweep.query_one("#input-final_step").value == "12,end"
        assert get_experiment(store, draft.id).name == "saved draft"

        sweep.query_one("#input-seeds").value = "0-2"
        await wait_for(
            pilot, lambda: '"seeds": "0-2"' in str(app.sweep_draft).replace("'", '"'), what="kept"
        )
        concept = save_concept(store, "corgi", token="sks", class_word="dog", base_model=str(model))
        await pilot.press("f2")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="home")
        await pilot.press("f4")
        select = sweep.query_one("#concept")
        await wait_for(
            pilot,
            lambda: app.screen is sweep and any(v == concept.id for _, v in select._options),
            what="the new concept offered",
        )
        assert sweep.query_one("#input-seeds").value == "0-2" and sweep.experiment_id == draft.id
