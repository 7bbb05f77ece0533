"""Screens follow the engines without F5; destructive keys ask first; bulk actions act on the
marked runs; experiments can be deleted (with their files) or archived."""

from __future__ import annotations

from sqlmodel import select

from store.models import Experiment, Run, Score
from tests.tui import SIZE, add_scores, seed_experiment, wait_for, write_png
from tui.app import MtpApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.runs import RunsScreen


def name(app) -> str:
    return type(app.screen).__name__


def finish_elsewhere(home, run_id: int) -> None:
    """What an engine does: its own connection, its own process's Store, a committed write."""
    from store.db import Store

    other = Store(home)
    try:
        with other.write() as s:
            run = s.get(Run, run_id)
            run.status, run.duration_s = "done", 1.5
            s.add(run)
            s.add(Score(run_id=run_id, metric="clip_t", backbone="test", value=0.31))
    finally:
        other.close()


async def test_runs_and_detail_show_a_run_finished_by_another_connection_without_f5(store):
    exp = seed_experiment(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        first = screen.runs[0]
        assert first.status == "queued"
        finish_elsewhere(store.home, first.id)
        await wait_for(
            pilot, lambda: screen.runs[0].status == "done", timeout=5, what="live runs table"
        )
        assert "0.3100" in [str(c) for c in screen.query_one("DataTable").get_row_at(0)]

        await pilot.press("enter")
        await wait_for(
            pilot, lambda: name(app) == "RunDetailScreen" and app.screen.bundle is not None
        )
        detail = app.screen
        second = screen.runs[1] if detail.run_id != screen.runs[1].id else screen.runs[2]
        detail.load(second.id)
        await wait_for(pilot, lambda: detail.bundle.run.id == second.id)
        finish_elsewhere(store.home, second.id)
        await wait_for(
            pilot,
            lambda: detail.bundle.run.status == "done" and detail.bundle.scores,
            timeout=5,
            what="live run detail",
        )


async def test_results_regroup_when_scores_arrive(store):
    exp = seed_experiment(store)
    app = MtpApp(store)
    app.experiment_id = exp.id
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("e")
        await wait_for(
            pilot, lambda: name(app) == "ResultsScreen" and app.screen._counts is not None
        )
        results = app.screen
        assert not results.rows
        add_scores(store, exp.id)
        await wait_for(pilot, lambda: results.rows, timeout=6, what="results filled by themselves")


async def test_cancel_on_home_asks_first(store):
    exp = seed_experiment(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "16 queued" in str(app.screen.question)
        await pilot.press("n")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        with store.session() as s:
            assert {r.status for r in s.exec(select(Run))} == {"queued"}
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        with store.session() as s:
            assert {r.status for r in s.exec(select(Run))} == {"cancelled"}


async def test_delete_experiment_removes_runs_scores_and_artifacts(store):
    keep = seed_experiment(store, name="keep")
    exp = seed_experiment(store, name="gone")
    runs = add_scores(store, exp.id)
    folders = [store.home.run_dir(r.id) for r in runs]
    for f in folders:
        write_png(f / "target.png")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id is not None)
        table = app.screen.query_one("#experiments")
        table.move_cursor(row=table.get_row_index(str(exp.id)))
        await pilot.press("D")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("escape")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        assert all(f.exists() for f in folders)
        await pilot.press("D")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(
            pilot, lambda: str(exp.id) not in [r.value for r in table.rows], what="row gone"
        )
    with store.session() as s:
        assert s.get(Experiment, exp.id) is None and s.get(Experiment, keep.id) is not None
        assert not list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
        assert not list(s.exec(select(Score)))
    assert not any(f.exists() for f in folders)


async def test_archive_hides_the_experiment_and_keeps_its_runs(store):
    exp = seed_experiment(store, name="old")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("A")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        table = app.screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 0, what="archived experiment left Home")
    with store.session() as s:
        assert s.get(Experiment, exp.id).status == "archived"
        assert {r.status for r in s.exec(select(Run))} == {"cancelled"}


async def test_bulk_actions_act_on_the_marked_runs(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)  # all done and scored
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        table = screen.query_one("DataTable")
        marked = []
        for row in (0, 2, 5):
            table.move_cursor(row=row)
            marked.append(screen.runs[row].id)
            await pilot.press("m")
            await wait_for(pilot, lambda: screen.runs[row].marked, what=f"row {row} marked")
        table.move_cursor(row=1)  # the cursor is elsewhere: the marked set still wins

        await pilot.press("t", *"best", "enter")
        await wait_for(
            pilot, lambda: sum("best" in r.tags for r in screen.runs) == 3, what="tags on marked"
        )

        # Requeue of done runs discards scores: asked first; no keeps everything.
        await pilot.press("R")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ConfirmScreen), what="requeue confirmation"
        )
        assert "3 marked runs" in app.screen.question and "scores" in app.screen.question
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen)
        with store.session() as s:
            assert {r.status for r in s.exec(select(Run))} == {"done"}
        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(
            pilot, lambda: sum(r.status == "queued" for r in screen.runs) == 3, what="requeued"
        )
        with store.session() as s:
            queued = {r.id for r in s.exec(select(Run).where(Run.status == "queued"))}
            assert not list(s.exec(select(Score).where(Score.run_id.in_(marked))))
        assert queued == set(marked)

        await pilot.press("ctrl+x")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ConfirmScreen), what="cancel confirmation"
        )
        await pilot.press("y")
        await wait_for(
            pilot, lambda: sum(r.status == "cancelled" for r in screen.runs) == 3, what="cancelled"
        )
        with store.session() as s:
            assert {r.id for r in s.exec(select(Run).where(Run.status == "cancelled"))} == set(
                marked
            )

        await pilot.press("U")
        await wait_for(pilot, lambda: not any(r.marked for r in screen.runs), what="unmarked")


async def test_detail_brackets_follow_the_browsers_filter_and_sort(store):
    exp = seed_experiment(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id, filter_text="seed=1"))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        screen.set_sort("final_step")
        await wait_for(
            pilot, lambda: screen.sort == "final_step" and screen.runs[0].final_step == 0
        )
        shown = [r.id for r in screen.runs]
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: name(app) == "RunDetailScreen" and app.screen.bundle is not None
        )
        detail = app.screen
        seen = [detail.bundle.run.id]
        for _ in range(len(shown) - 1):
            await pilot.press("right_square_bracket")
            await wait_for(pilot, lambda: detail.bundle.run.id != seen[-1], what="next in the list")
            seen.append(detail.bundle.run.id)
        assert seen == shown


async def test_e_from_a_filtered_runs_list_opens_that_experiments_results(store):
    first = seed_experiment(store, name="first")
    second = seed_experiment(store, name="second")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id is not None)
        app.experiment_id = first.id  # Home's cursor is on another experiment
        app.push_screen(RunsScreen())
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        await pilot.press("slash", *f"exp={second.id}", "enter")
        await wait_for(pilot, lambda: app.screen.total == second.run_count)
        await pilot.press("e")
        await wait_for(pilot, lambda: name(app) == "ResultsScreen")
        assert app.screen.experiment_id == second.id
