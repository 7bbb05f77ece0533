"""Every screen reachable by keyboard at 120x40; help, palette, keymap overrides; no torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.tui import SIZE, add_scores, seed_experiment, wait_for
from tui.app import MtpApp, build_parser


def name(app) -> str:
    return type(app.screen).__name__


async def test_every_screen_reachable_by_keyboard(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(
            pilot, lambda: app.experiment_id == exp.id, what="home selects the experiment"
        )
        # (keys, expected screen); function keys work even while a form input has focus.
        steps = [
            (["c"], "ConceptScreen"),
            (["f4"], "SweepScreen"),
            (["f6"], "RunsScreen"),
            (["enter"], "RunDetailScreen"),
            (["b"], "CompareScreen"),
            (["escape"], "RunDetailScreen"),
            (["escape"], "RunsScreen"),
            (["v"], "CompareScreen"),
            (["e"], "ResultsScreen"),
            (["x"], "ExportScreen"),
            (["f1"], "HelpScreen"),
            (["escape"], "ExportScreen"),
            (["escape"], "ResultsScreen"),
            (["h"], "HomeScreen"),
        ]
        for keys, expected in steps:
            await pilot.press(*keys)
            await wait_for(
                pilot,
                lambda: name(app) == expected,
                timeout=5,
                what=f"{keys} -> {expected} (at {name(app)})",
            )
            await pilot.pause(0.05)
        assert len(app.screen_stack) == 1


async def test_home_opens_draft_for_editing_and_duplicates_queued(store):
    exp = seed_experiment(store, name="queued one")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("E")
        await wait_for(pilot, lambda: name(app) == "SweepScreen" and app.screen._ready)
        assert app.screen.experiment_name == "queued one (copy)"
        assert app.screen.query_one("#input-final_step").value == "10,15,end"


async def test_command_palette_lists_main_actions(store):
    from tui.commands import COMMANDS

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: "CommandPalette" in name(app))
        await pilot.press(*"runs browser")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="palette opens runs")
    assert {"Runs browser", "New sweep", "Export", "Pause / resume queue"} <= {
        c[0] for c in COMMANDS
    }


async def test_keymap_override_from_home_folder(store):
    (store.home.root / "keymap.json").write_text(json.dumps({"app.runs_letter": "u"}))
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("u")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="remapped key")


async def test_pause_toggle_from_home(store):
    from store.queue import is_paused

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        await pilot.press("p")
        assert is_paused(store)
        await pilot.press("p")
        assert not is_paused(store)


@pytest.mark.subprocess
def test_help_works_without_starting_the_ui():
    out = subprocess.run(
        [sys.executable, "-m", "tui.app", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--demo" in out.stdout and "--home" in out.stdout
    assert build_parser().parse_args(["--demo"]).demo


@pytest.mark.subprocess
def test_tui_never_imports_torch(tmp_path):
    code = textwrap.dedent(f"""
        import asyncio, sys
        from store.db import Store
        from store.paths import Home
        from tui.app import MtpApp
        from tests.tui import seed_experiment, add_scores

        store = Store(Home.resolve({str(tmp_path / "home")!r}))
        exp = seed_experiment(store)
        add_scores(store, exp.id)

        async def main():
            app = MtpApp(store)
            async with app.run_test(size=(120, 40)) as pilot:
                app.experiment_id = exp.id
                for key in ["c", "f4", "f6", "enter", "e", "x"]:
                    await pilot.press(key)
                    await pilot.pause(0.1)
                await pilot.pause(0.5)

        asyncio.run(main())
        bad = sorted(m for m in ("torch", "diffusers", "transformers", "open_clip") if m in sys.modules)
        print("BAD", bad)
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BAD []" in out.stdout, out.stdout


@pytest.mark.subprocess
def test_sighup_exits_cleanly(tmp_path):
    """An SSH drop (SIGHUP) ends the app through App.exit, not a traceback."""
    code = textwrap.dedent(f"""
        import asyncio, os, signal
        from store.db import Store
        from store.paths import Home
        from tui.app import MtpApp

        store = Store(Home.resolve({str(tmp_path / "home")!r}))

        async def main():
            app = MtpApp(store)
            async with app.run_test(size=(120, 40)) as pilot:
                await pilot.pause(0.2)
                os.kill(os.getpid(), signal.SIGHUP)
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    if not app.is_running:
                        break
            print("EXITED", app.return_code)

        asyncio.run(main())
    """)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "EXITED" in out.stdout


async def test_runs_screen_comes_back_as_left_and_retargets(store):
    """F6 returns to the runs list as it was left (one screen, kept); Home's enter on an
    experiment shows that experiment's runs with a cleared filter, and F6 from a run detail
    uncovers the list instead of stacking a second one."""
    seed_experiment(store)
    other = seed_experiment(store, name="other")
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f6")
        await wait_for(pilot, lambda: name(app) == "RunsScreen" and app.screen.loaded, what="runs")
        runs = app.screen
        await pilot.press("slash", *"seed=1", "enter")
        await wait_for(
            pilot, lambda: runs.runs and all(r.seed == 1 for r in runs.runs), what="filtered"
        )
        await pilot.press("f2")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        await pilot.press("f6")
        await wait_for(pilot, lambda: name(app) == "RunsScreen")
        assert app.screen is runs and runs.filter_text == "seed=1"
        await wait_for(pilot, lambda: runs._shown == runs._token, what="reloaded on return")
        assert runs.runs and all(r.seed == 1 for r in runs.runs)

        await pilot.press("enter")
        await wait_for(pilot, lambda: name(app) == "RunDetailScreen", what="detail")
        await pilot.press("f6")
        await wait_for(pilot, lambda: name(app) == "RunsScreen", what="uncovered")
        assert app.screen is runs and len(app.screen_stack) == 2

        await pilot.press("f2")
        await wait_for(pilot, lambda: name(app) == "HomeScreen")
        table = app.screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 2, what="experiments listed")
        table.move_cursor(row=table.get_row_index(str(other.id)))
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: name(app) == "RunsScreen" and runs._shown == runs._token,
            what="runs of the other experiment",
        )
        assert (
            app.screen is runs
            and runs.filter_text == ""
            and runs.query_one("#filter-bar").value == ""
        )
        assert runs.runs and {r.experiment_id for r in runs.runs} == {other.id}
        assert app.experiment_id == other.id


async def test_a_kept_screen_is_moved_out_of_the_collectors_way(store, monkeypatch):
    """Kept screens live as long as the app: once built and loaded they are frozen, so later full
    collections (which landed inside screen opens) no longer walk their widgets."""
    import gc

    import tui.app as app_module

    monkeypatch.setattr(app_module, "SETTLE_AFTER_S", 1.5)
    seed_experiment(store)
    app = MtpApp(store)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("f6")
            await wait_for(pilot, lambda: name(app) == "RunsScreen", what="runs")
            runs = app.screen
            assert id(runs) in {id(o) for o in gc.get_objects()}  # not yet
            await wait_for(pilot, lambda: runs.loaded, what="loaded")
            await pilot.pause(2.0)
            assert id(runs) not in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
