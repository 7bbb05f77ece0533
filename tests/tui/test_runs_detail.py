"""Runs browser filter/sort/page and the run detail's images, masks and maps."""

from __future__ import annotations

import numpy as np

from store.queries import update_runs
from tests.tui import SIZE, add_scores, seed_experiment, wait_for, write_png
from tui.app import MtpApp
from tui.screens.run_detail import CompareScreen, RunDetailScreen
from tui.screens.runs import RunsScreen, parse_filter


def test_parse_filter_reads_every_kind_of_term():
    f = parse_filter(
        'status=failed,done seed=1 final_step=20 tag=good marked=1 exp=3 "on the beach"'
    )
    assert list(f.statuses) == ["failed", "done"] and f.equals == {"seed": 1, "final_step": 20}
    assert (
        f.tag == "good" and f.marked is True and f.experiment_id == 3 and f.text == "on the beach"
    )


async def test_runs_browser_filter_sort_page(store):
    exp = seed_experiment(store)  # 2 prompts x 2 seeds x (1 + 3) = 16 runs
    runs = add_scores(store, exp.id)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        assert screen.total == len(runs) == 16

        await pilot.press("slash")
        await pilot.press(*"seed=1 snow")
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.total == 4, what="filtered total")
        assert all(r.seed == 1 and "snow" in r.target_prompt for r in screen.runs)
        assert screen.query_one("DataTable").row_count == 4

        screen.filter_text = ""
        screen.set_sort("score:clip_t")  # best first
        await wait_for(
            pilot,
            lambda: screen.total == 16 and screen.runs[0].id == max(r.id for r in runs),
            what="sorted by clip_t",
        )
        screen.set_sort("score:clip_t")  # again: ascending
        await wait_for(
            pilot, lambda: screen.runs[0].id == min(r.id for r in runs), what="ascending"
        )

        # Sort by a column picked by name with `s`, so sorting needs no invisible column cursor.
        from tui.screens.pick import PickScreen

        await pilot.press("s")
        await wait_for(pilot, lambda: isinstance(app.screen, PickScreen), what="sort picker")
        picker = app.screen
        picker.query_one("OptionList").highlighted = [v for v, _ in picker.items].index(
            "final_step"
        )
        await pilot.press("enter")
        await wait_for(
            pilot, lambda: screen.sort == "final_step" and screen.runs[0].final_step == 0
        )

        # Mark and tag the row under the cursor.
        await pilot.press("m")
        await wait_for(pilot, lambda: screen.runs[0].marked)
        await pilot.press("t")
        await pilot.press(*"keep", "enter")
        await wait_for(pilot, lambda: screen.runs[0].tags == "keep", what="tag")
        await pilot.press("slash", *"tag=keep", "enter")
        await wait_for(pilot, lambda: screen.total == 1, what="tag filter")


async def test_runs_paging_happens_in_sql(store, monkeypatch):
    import tui.screens.runs as runs_mod

    monkeypatch.setattr(runs_mod, "PAGE", 5)
    exp = seed_experiment(store)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        screen = app.screen
        first = [r.id for r in screen.runs]
        assert len(first) == 5
        await pilot.press("greater_than_sign")
        await wait_for(pilot, lambda: screen.runs and screen.runs[0].id not in first, what="page 2")
        assert screen.page_offset == 5 and len(screen.runs) == 5


async def test_run_detail_shows_images_masks_and_maps(store):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    from store.queries import list_runs

    (run, other, *_), _ = list_runs(store)
    folder = store.home.run_dir(run.id)
    write_png(folder / "target.png", (250, 10, 10))
    write_png(folder / "source.png", (10, 250, 10))
    write_png(folder / "mask_target.png", (255, 255, 255))
    write_png(folder / "mask_source.png", (0, 0, 0))
    np.savez(folder / "maps.npz", dog=np.random.rand(16, 16), beach=np.random.rand(16, 16))
    rel = lambda name: str((folder / name).relative_to(store.home.root))  # noqa: E731
    with store.write() as s:
        from store.models import Run

        r = s.get(Run, run.id)
        r.image_path, r.source_image_path = rel("target.png"), rel("source.png")
        r.mask_path, r.source_mask_path, r.maps_path = (
            rel("mask_target.png"),
            rel("mask_source.png"),
            rel("maps.npz"),
        )
        r.status, r.error = "failed", "CUDA out of memory [while decoding]"
        s.add(r)
        o = s.get(Run, other.id)
        o.image_path = (
            "artifacts/run-999/target.png"  # recorded but gone: a placeholder, not a crash
        )
        s.add(o)

    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunDetailScreen(run.id))
        await wait_for(
            pilot, lambda: isinstance(app.screen, RunDetailScreen) and app.screen.bundle is not None
        )
        screen = app.screen
        ids = ("#img-source", "#img-target", "#img-source-mask", "#img-target-mask", "#img-map")
        await wait_for(
            pilot, lambda: all(screen.query_one(i).has_picture for i in ids), what="all pictures"
        )
        assert "dog" in screen.query_one("#img-map").caption
        await pilot.press("w")
        assert "beach" in screen.query_one("#img-map").caption
        assert "out of memory" in str(screen.query_one("#detail-error").content)

        await pilot.press("right_square_bracket")
        await wait_for(pilot, lambda: screen.run_id == other.id, what="next run")
        target = screen.query_one("#img-target")
        await wait_for(pilot, lambda: "missing" in str(target.query_one(".placeholder").content))
        assert not screen.query_one("#img-map").has_picture
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: screen.run_id == run.id, what="previous run")

        await pilot.press("b")  # this run against its no-control baseline
        await wait_for(
            pilot,
            lambda: (
                isinstance(app.screen, CompareScreen)
                and "baseline" in str(app.screen.query_one("#compare-title").content)
            ),
        )


async def test_compare_two_marked_runs(store):
    exp = seed_experiment(store)
    from store.queries import list_runs

    runs, _ = list_runs(store)
    update_runs(store, [runs[1].id, runs[2].id], marked=True)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunsScreen(experiment_id=exp.id))
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        await pilot.press("v")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        title = app.screen.query_one("#compare-title")
        await wait_for(pilot, lambda: f"run {runs[1].id} vs run {runs[2].id}" in str(title.content))


async def test_detail_says_a_done_run_is_not_scored_and_why(store):
    """Scoring that failed leaves the run done with its images; the app says so."""
    from store.models import Run

    exp = seed_experiment(store)
    runs = add_scores(store, exp.id)
    with store.write() as s:
        run = s.get(Run, runs[0].id)
        run.score_error = "reference image concepts/1/00-corgi.png: no such file"
        s.add(run)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        app.push_screen(RunDetailScreen(runs[0].id))
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, RunDetailScreen) and app.screen.bundle,
            what="detail",
        )
        text = str(app.screen.query_one("#detail-error").content)
        assert "not scored" in text and "00-corgi.png: no such file" in text
