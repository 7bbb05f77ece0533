"""Nothing shown is stale: deleted experiments and runs leave the screens that showed them, the
footer names what p does now, old stopped engines stop filling the workers table, and status
lines about the past go away."""

from __future__ import annotations

from datetime import timedelta

from tests.tui import SIZE, seed_experiment, wait_for
from tui.app import MtpApp
from tui.screens.runs import RunsScreen


def name(app) -> str:
    return type(app.screen).__name__


async def test_runs_browser_leaves_a_deleted_experiment(store):
    from store.queries import delete_experiment

    keep = seed_experiment(store, name="keep")
    gone = seed_experiment(store, name="gone")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=gone.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        assert {r.experiment_id for r in screen.runs} == {gone.id}
        delete_experiment(store, gone.id)  # as another process would
        await wait_for(
            pilot,
            lambda: (
                screen.experiment_id is None and {r.experiment_id for r in screen.runs} == {keep.id}
            ),
            what="all experiments",
        )
        assert "all experiments" in str(screen.query_one("#runs-status").content)


async def test_run_detail_drops_a_deleted_runs_images(store):
    from store.queries import RunFilter, delete_experiment, list_runs
    from tui.screens.run_detail import RunDetailScreen

    exp = seed_experiment(store)
    rows, _ = list_runs(store, RunFilter(experiment_id=exp.id), limit=1)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunDetailScreen(rows[0].id))
        await wait_for(pilot, lambda: name(app) == "RunDetailScreen" and app.screen.bundle)
        screen = app.screen
        delete_experiment(store, exp.id)
        screen.action_refresh()
        await wait_for(
            pilot,
            lambda: "does not exist" in str(screen.query_one("#detail-title").content),
            what="deleted",
        )
        await wait_for(
            pilot,
            lambda: all(
                "run deleted" in str(w.query_one(".placeholder").content)
                for w in screen.query("ArtifactImage")
            ),
            what="images cleared",
        )
        assert screen.bundle is None and str(screen.query_one("#detail-info").content) == ""


async def test_footer_says_resume_while_paused(store):
    from store.queue import set_paused

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)

        def footer_keys():
            return {b.binding.description for b in app.screen.active_bindings.values()}

        assert "Pause" in footer_keys() and "Resume" not in footer_keys()
        await pilot.press("p")
        await wait_for(pilot, lambda: "Resume" in footer_keys(), what="Resume shown")
        assert "Pause" not in footer_keys()
        await pilot.press("p")
        await wait_for(pilot, lambda: "Pause" in footer_keys(), what="Pause again")
        set_paused(store, True)  # paused elsewhere (mtp queue pause): the footer follows
        app.screen.refresh_data()
        await wait_for(pilot, lambda: "Resume" in footer_keys(), what="follows the store")


async def test_long_stopped_engines_leave_the_workers_table(store):
    from store.models import Worker, utcnow

    now = utcnow()
    with store.write() as s:
        s.add(Worker(id="h:1:cpu", host="h", status="running", heartbeat_at=now))
        s.add(Worker(id="h:2:cpu", host="h", status="stopped", heartbeat_at=now))
        for i in range(5):
            s.add(
                Worker(
                    id=f"h:{10 + i}:cpu",
                    host="h",
                    status="stopped",
                    heartbeat_at=now - timedelta(days=3),
                )
            )
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#workers")
        await wait_for(pilot, lambda: table.row_count == 3, what="workers listed")
        keys = [r.value for r in table.rows]
        assert keys == ["h:1:cpu", "h:2:cpu", "stopped"]
        assert "+5 stopped earlier" in str(table.get_row("stopped"))
        assert "engines: 1 working" in str(app.screen.query_one("#queue-status").content)


async def test_form_is_back_line_goes_once_the_user_edits(store):
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await wait_for(pilot, lambda: name(app) == "SweepScreen" and app.screen._ready)
        sweep = app.screen
        sweep._fields["name"].value = "kept"
        await wait_for(pilot, lambda: app.sweep_draft["fields"]["name"] == "kept")
        await pilot.press("escape")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        await pilot.press("f4")
        status = sweep.query_one("#sweep-status")
        await wait_for(pilot, lambda: "is back" in str(status.content), what="back line")
        sweep._fields["name"].input.focus()
        await pilot.press("x")
        await wait_for(pilot, lambda: "is back" not in str(status.content), what="cleared")
        assert sweep._fields["name"].value == "keptx"
