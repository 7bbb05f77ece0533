"""80x24: tables show whole columns chosen by priority (no number cut at the edge, scores before
ids), instead of the first columns and a horizontal scroll."""

from __future__ import annotations

from tests.tui import add_scores, seed_experiment, wait_for
from tui.app import MtpApp
from tui.screens.runs import RunsScreen

SMALL = (80, 24)


def fits(table) -> bool:
    return table.virtual_size.width <= table.scrollable_content_region.width


async def test_home_progress_is_never_cut_at_80x24(store):
    exp = seed_experiment(store, name="a long experiment name that cannot fit at all here")
    app = MtpApp(store)
    async with app.run_test(size=SMALL) as pilot:
        table = app.screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 1)
        await pilot.pause()
        keys = [c.value for c in table.columns]
        assert {"id", "done", "status", "name"} <= set(keys)
        assert fits(table), (table.virtual_size, table.scrollable_content_region)
        assert str(table.get_cell(str(exp.id), "done")) == f"0/{exp.run_count}"


async def test_runs_table_keeps_scores_before_ids_at_80x24(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=SMALL) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        table = app.screen.query_one("DataTable")
        await pilot.pause()
        keys = [c.value for c in table.columns]
        assert {"id", "status", "clip_t", "clip_i_ref", "final_step"} <= set(keys)
        assert "experiment_id" not in keys and "tags" not in keys
        assert fits(table)
        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: "target_prompt" in [c.value for c in table.columns])


async def test_results_table_shows_both_alignments_whole(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    app.experiment_id = exp.id
    for size in ((120, 40), SMALL):
        async with app.run_test(size=size) as pilot:
            await pilot.press("f7")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "ResultsScreen")
            table = app.screen.query_one("#results-table")
            await wait_for(pilot, lambda: table.row_count > 0, what="results table")
            await pilot.pause()
            labels = [str(c.label) for c in table.columns.values()]
            assert any(lb.startswith("clip_t") for lb in labels), labels
            assert any(lb.startswith("clip_i_ref") for lb in labels), labels
            assert fits(table), (size, table.virtual_size, table.scrollable_content_region)
        app = MtpApp(store)
        app.experiment_id = exp.id
