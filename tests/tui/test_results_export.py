"""Results screen (aggregate table, plot, grid) and the export dialog writing files."""

from __future__ import annotations

import importlib.util

import pytest

from tests.tui import SIZE, add_scores, seed_experiment, wait_for
from tui.app import MtpApp
from tui.screens.export import ExportScreen
from tui.screens.results import ResultsScreen


async def test_results_table_and_plot(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.experiment_id = exp.id
        await pilot.press("e")
        await wait_for(
            pilot, lambda: isinstance(app.screen, ResultsScreen) and app.screen.rows, what="results"
        )
        screen = app.screen
        assert screen.by == "final_step"  # the swept axis comes first
        table = screen.query_one("DataTable")
        assert table.row_count == 4  # baseline + 10, 15, end
        # Cells are Text (user text shown safe, never markup): compared as their plain text.
        labels = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        # after label, n, runs/cell
        assert labels[0] == "baseline" and "±" in str(table.get_row_at(1)[3])
        assert any(str(table.get_row_at(i)[-1]) == "*" for i in range(table.row_count))
        await pilot.press("a")
        await wait_for(pilot, lambda: screen.by != "final_step" and screen.rows, what="next axis")


@pytest.mark.skipif(
    importlib.util.find_spec("store.report.export") is None,
    reason="store.report.export not integrated yet",
)
async def test_export_writes_files(store, tmp_path):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    out = tmp_path / "exports"
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.experiment_id = exp.id
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        screen = app.screen
        screen.query_one("#export-folder").value = str(out)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(screen.results) == 4, timeout=30, what="export results")
    results = {kind: (path, ok) for kind, path, ok in screen.results}
    for kind in ("runs", "summary", "plot"):
        path, ok = results[kind]
        assert ok, path
        assert (out / path.split("/")[-1]).is_file()
    assert "baseline" in (out / results["summary"][0].split("/")[-1]).read_text()
    # The grid needs run images; with none on disk it may fail, but it must report, not crash.
    assert results["grid"][0]


async def test_results_state_unit_and_grid_pins(store):
    from textual.widgets import Select

    from tests.store.test_grid_axes import make_axes_sweep

    exp_id = make_axes_sweep(store)
    add_scores(store, exp_id)
    app = MtpApp(store)
    # Wide enough for every column: narrower tables drop columns by priority (test_narrow).
    async with app.run_test(size=(220, 50)) as pilot:
        app.experiment_id = exp_id
        await pilot.press("e")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, ResultsScreen) and app.screen.grid_layout,
            timeout=20,
            what="results with grid",
        )
        screen = app.screen
        unit = str(screen.query_one("#results-unit").content)
        # formerly "n = runs": the unit is the (prompt, seed) cell, and the table says so
        assert "(prompt, seed) cells" in unit and "SEM over cells" in unit and "scale raw" in unit
        assert "n = 6 (prompt, seed) cells, each the mean of 8 runs" in unit
        heads = [str(c.label) for c in screen.query_one("DataTable").columns.values()]
        assert "n cells" in heads and "runs/cell" in heads
        assert any("vs baseline [95% CI]" in h for h in heads)
        # the comparison's options: every run, and a paired column against a chosen value
        screen.query_one("#cells", Select).value = "all"
        await wait_for(pilot, lambda: screen.rows.cells == "all", timeout=20, what="all runs")
        value = next(r.label for r in screen.rows if not r.is_baseline)
        screen.query_one("#versus", Select).value = value
        await wait_for(
            pilot, lambda: screen.rows.reference == value, timeout=20, what="paired vs a value"
        )
        heads = [str(c.label) for c in screen.query_one("DataTable").columns.values()]
        assert any(f"vs {value} [95% CI]" in h for h in heads)
        assert screen.grid_layout.pins["seed"] == "0"  # the default pin, and it is shown
        assert "seed=0" in str(screen.query_one("#results-grid-caption").content)
        screen.query_one("#grid-pin-axis", Select).value = "seed"
        await pilot.pause(0.1)
        screen.query_one("#grid-pin-value", Select).value = "2"
        await wait_for(
            pilot,
            lambda: screen.grid_layout.pins.get("seed") == "2",
            timeout=20,
            what="seed pinned",
        )
        assert "seed=2" in str(screen.query_one("#results-grid-caption").content)
        screen.query_one("#grid-seeds", Select).value = "each"
        await wait_for(
            pilot, lambda: "seed" not in screen.grid_layout.pins, timeout=20, what="row per seed"
        )
        assert "one row per seed" in str(screen.query_one("#results-grid-caption").content)
        screen.query_one("#grid-z", Select).value = "start_step"
        await wait_for(
            pilot, lambda: screen.grid_layout.z == "start_step", timeout=20, what="z axis"
        )


async def test_export_dialog_takes_the_grid_choices_of_results(store, tmp_path):
    from textual.widgets import Select

    from tests.store.test_grid_axes import make_axes_sweep

    exp_id = make_axes_sweep(store)
    add_scores(store, exp_id)
    out = tmp_path / "exports"
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.experiment_id = exp_id
        await pilot.press("e")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, ResultsScreen) and app.screen.grid_layout,
            timeout=20,
            what="results with grid",
        )
        results = app.screen
        results.query_one("#grid-pin-axis", Select).value = "seed"
        await pilot.pause(0.1)
        results.query_one("#grid-pin-value", Select).value = "1"
        await wait_for(
            pilot, lambda: results.grid_layout.pins.get("seed") == "1", timeout=20, what="pin"
        )
        # the table's choices travel too: every run, paired against a chosen value
        results.query_one("#cells", Select).value = "all"
        await wait_for(pilot, lambda: results.rows.cells == "all", timeout=20, what="all runs")
        value = next(r.label for r in results.rows if not r.is_baseline)
        results.query_one("#versus", Select).value = value
        await wait_for(pilot, lambda: results.rows.reference == value, timeout=20, what="versus")
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        screen = app.screen
        assert screen.grid_options["pins"]["seed"] == "1"
        assert "seed=1" in str(screen.query_one("#export-grid-note").content)
        screen.query_one("#export-folder").value = str(out)
        for kind in ("runs", "plot"):
            screen.query_one(f"#kind-{kind}").value = False
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(screen.results) == 2, timeout=30, what="exports")
    done = {kind: (path, ok) for kind, path, ok in screen.results}
    path, ok = done["grid"]
    assert ok, path
    assert (out / path.split("/")[-1]).is_file()
    import csv

    path, ok = done["summary"]
    assert ok, path
    with open(out / path.split("/")[-1], newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert {line["cells"] for line in lines} == {"all"}
    assert {line["paired_against"] for line in lines} >= {value}


async def test_a_second_export_keeps_the_first(store, tmp_path):
    exp = seed_experiment(store, name="two words")
    add_scores(store, exp.id)
    out = tmp_path / "exports"
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.experiment_id = exp.id
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        screen = app.screen
        screen.query_one("#export-folder").value = str(out)
        for box in ("#kind-summary", "#kind-plot", "#kind-grid"):
            screen.query_one(box).value = False
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(screen.results) == 1, timeout=30, what="first")
        await pilot.press("ctrl+s")
        await wait_for(
            pilot,
            lambda: len(screen.results) == 1 and screen.results[0][1].endswith("-2.csv"),
            timeout=30,
            what="second",
        )
    assert sorted(p.name for p in out.iterdir()) == ["two_words-runs-2.csv", "two_words-runs.csv"]


async def test_export_results_stay_reachable_at_80x24(store, tmp_path):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        app.experiment_id = exp.id
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
        screen = app.screen
        screen.query_one("#export-folder").value = str(tmp_path / "out")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(screen.results) == 4, timeout=30, what="export results")
        box = screen.query_one("#export-box")
        log = screen.query_one("#export-log")
        # The last result line (the grid) is inside the box's visible region, scrolled to.
        await wait_for(
            pilot,
            lambda: log.region.bottom <= box.region.bottom and log.region.height >= 4,
            what="results visible",
        )
        assert box.max_scroll_y >= 0 and "grid" in str(log.content)
