"""Keys that find and keys that destroy: the sort dialog and the file tree find what is typed,
`m` marks and moves on, destructive keys are control keys, Tab starts at the concept's Name."""

from __future__ import annotations

from tests.tui import SIZE, add_scores, seed_experiment, wait_for, write_png
from tui.app import MtpApp
from tui.screens.runs import RunsScreen


def name(app) -> str:
    return type(app.screen).__name__


async def runs_screen(pilot, app, exp):
    app.push_screen(RunsScreen(experiment_id=exp.id))
    await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
    return app.screen


async def test_sort_dialog_finds_the_column_typed(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot, app, exp)
        await pilot.press("s")
        await wait_for(pilot, lambda: name(app) == "PickScreen")
        picker = app.screen
        await pilot.press(*"fin")
        values = [v for v, _ in picker.items]
        assert picker.query_one("OptionList").highlighted == values.index("final_step")
        assert "find: fin" in str(picker.query_one("Label").content)
        await pilot.press("backspace", "backspace", "backspace", *"clip_i")
        assert picker.query_one("OptionList").highlighted == values.index("score:clip_i_ref")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.sort == "score:clip_i_ref")


async def test_m_marks_and_moves_down_and_x_never_cancels(store):
    exp = seed_experiment(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        screen = await runs_screen(pilot, app, exp)
        table = screen.query_one("DataTable")
        first = screen.current.id
        await pilot.press("m")
        await wait_for(pilot, lambda: table.cursor_row == 1 and any(r.marked for r in screen.runs))
        assert [r.id for r in screen.runs if r.marked] == [first]
        await pilot.press("m")
        await wait_for(pilot, lambda: table.cursor_row == 2)
        await wait_for(pilot, lambda: sum(r.marked for r in screen.runs) == 2)
        await pilot.press("X")  # a shift away from x (export): no longer cancel
        await pilot.pause()
        assert name(app) == "RunsScreen"
        await pilot.press("ctrl+x")
        await wait_for(pilot, lambda: name(app) == "ConfirmScreen", what="cancel asks")
        assert "2 marked runs" in app.screen.question
        await pilot.press("n")


async def test_concept_tab_starts_at_name_and_the_tree_finds_files(store, tmp_path):
    from tui.widgets.find import TypedPrefix

    TypedPrefix.pause_s = 1e9  # no timing in tests: every letter extends the search
    try:
        folder = tmp_path / "refs"
        for stem in ("apple", "corgi", "cat", "dog"):
            write_png(folder / f"{stem}.png")
        from tui.screens.concept import ConceptScreen

        app = MtpApp(store)
        async with app.run_test(size=SIZE) as pilot:
            app.push_screen(ConceptScreen(start_dir=folder))
            await wait_for(pilot, lambda: name(app) == "ConceptScreen")
            screen = app.screen
            tree = screen.query_one("#tree")
            await wait_for(pilot, lambda: len(tree.root.children) == 4, what="file tree")
            chain = [w.id for w in screen.focus_chain]
            assert chain.index("input-name") < chain.index("input-token") < chain.index("tree")
            assert chain[0] == "input-name"
            tree.focus()
            await pilot.press(*"cat")
            await pilot.pause()
            assert app.screen is screen  # c and e did not switch screens
            assert str(tree.cursor_node.label) == "cat.png"
            await pilot.press("enter")
            await wait_for(pilot, lambda: [p.name for p in screen.images] == ["cat.png"])
    finally:
        TypedPrefix.pause_s = 1.0
