"""F7 reopens the results screen as it was left (building its widgets again was most of its
opening time), but never shows less than a new screen would: it follows Home's experiment and
reloads when the store moved while it was away."""

from __future__ import annotations

from sqlmodel import select

from store.models import Run, Score
from tests.tui import SIZE, add_scores, seed_experiment, wait_for
from tui.app import MtpApp
from tui.screens.results import ResultsScreen


def name(app) -> str:
    return type(app.screen).__name__


async def open_results(pilot):
    await pilot.press("f7")
    await wait_for(
        pilot,
        lambda: (
            isinstance(pilot.app.screen, ResultsScreen)
            and pilot.app.screen.rows
            and pilot.app.screen.grid_shown
        ),
        what="results with grid",
    )
    return pilot.app.screen


async def test_reopened_results_keep_their_choices_and_reload_only_on_changes(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    app.experiment_id = exp.id
    async with app.run_test(size=SIZE) as pilot:
        results = await open_results(pilot)
        first_axis = results.by
        results.action_next_axis()
        await wait_for(
            pilot,
            lambda: results.by != first_axis and results.rows and results.rows.by == results.by,
            what="second axis",
        )
        chosen, rows = results.by, results.rows
        await pilot.press("f2")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")

        assert await open_results(pilot) is results
        await pilot.pause(0.3)
        assert results.by == chosen and results.rows is rows  # nothing changed: nothing reloaded

        # Scores changing while the screen was away: the reopened table shows them.
        await pilot.press("f2")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        with store.write() as s:
            for score in s.exec(
                select(Score)
                .join(Run, Run.id == Score.run_id)
                .where(Run.experiment_id == exp.id, Score.metric == "clip_t")
            ):
                score.value += 1.0
                s.add(score)
        await pilot.press("f7")
        await wait_for(
            pilot, lambda: results.rows is not rows and results.rows.by == chosen, what="reload"
        )
        assert all(r.metrics["clip_t"].mean > 1.0 for r in results.rows)


async def test_reopened_results_follow_homes_experiment(store):
    first = seed_experiment(store, name="first")
    second = seed_experiment(store, name="second")
    add_scores(store, first.id)
    add_scores(store, second.id)
    app = MtpApp(store)
    app.experiment_id = first.id
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id is not None)
        app.experiment_id = first.id
        results = await open_results(pilot)
        results.action_next_axis()
        await pilot.press("f2")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        # Home's cursor moves to the other experiment, as a user moves it. Setting
        # app.experiment_id by hand raced Home's own reload on resume, which put its cursor's
        # experiment back: under load the test then saw the first experiment.
        table = app.screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 2, what="home lists both")
        table.move_cursor(row=table.get_row_index(str(second.id)), animate=False)
        await wait_for(pilot, lambda: app.experiment_id == second.id, what="home on second")
        await pilot.press("f7")
        await wait_for(
            pilot,
            lambda: (
                results.experiment_id == second.id
                and results.rows
                and "second" in str(results.query_one("#results-title").render())
            ),
            what="second experiment",
        )
        assert app.screen is results
        assert (
            results.by == "final_step"
        )  # that experiment's first axis, not the choice made on the first
