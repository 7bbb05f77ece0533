"""The study commands of `mtp` and the Leaderboard screen, as a new user meets them."""

from __future__ import annotations

import numpy as np
from sqlmodel import select

from store.models import Experiment, Run, Score
from tests.tui import wait_for
from tui.app import MtpApp
from tui.cli.main import main
from tui.screens.leaderboard import ConfigGridScreen, LeaderboardScreen


def _mtp(store, *args) -> int:
    return main(["--home", str(store.home.root), *args])


def _score_all(store, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with store.write() as s:
        for r in s.exec(select(Run).join(Experiment).where(Experiment.study_id.is_not(None))):
            r.status = "done"
            s.add(r)
            for metric in ("clip_t", "clip_i_set"):
                s.add(Score(run_id=r.id, metric=metric, backbone="bb", value=float(rng.random())))


def test_cli_import_study_leaderboard_export(store, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("animals:\n  - style: x\n    subject: a fox\n    settings: []\n")
    assert _mtp(store, "suite", "import", str(bad)) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:4:" in err
    assert _mtp(store, "suite", "import", "demo") == 0
    out = capsys.readouterr().out
    assert "consistory-demo (consistory, 4 units" in out and "dreambench-demo (dreambench" in out
    args = ["--model", "tiny", "--steps", "10", "--size", "64", "--start-step", "2"]
    assert (
        _mtp(store, "study", "create", "s", "--suite", "consistory-demo", *args, "--dry-run") == 0
    )
    assert capsys.readouterr().out.strip() == "24 runs over 4 units"
    assert (
        _mtp(
            store,
            "study",
            "create",
            "s",
            "--suite",
            "consistory-demo",
            "--method",
            "consistent_sa,consistory",
            "--seeds",
            "0,1",
            *args,
            "--queue",
        )
        == 0
    )
    assert "study 1: s (96 runs, queued)" in capsys.readouterr().out
    assert _mtp(store, "study", "show", "s") == 0
    assert "0/96 done, 96 queued; ETA unknown" in capsys.readouterr().out
    _score_all(store)
    assert _mtp(store, "study", "leaderboard", "s", "--groups") == 0
    out = capsys.readouterr().out
    assert "4 sets (the unit)" in out and "reference: consistent_sa baseline" in out
    assert "bootstrap" in out and "Wilcoxon" in out and "[animals]" in out
    assert _mtp(store, "study", "leaderboard", "s", "--reference", "no such") == 2
    assert "configurations: #1 consistent_sa baseline" in capsys.readouterr().err
    folder = tmp_path / "out"
    folder.mkdir()
    assert _mtp(store, "study", "export", "s", "--to", str(folder), "--grid", "#2") == 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "s-grid.png",
        "s-leaderboard.csv",
        "s-leaderboard.png",
        "s-leaderboard.tex",
        "s-runs.csv",
    ]
    assert _mtp(store, "study", "cancel", "s") == 0  # everything is done: nothing to cancel
    assert "cancelled 0 queued run(s)" in capsys.readouterr().out


async def test_leaderboard_screen_at_80x24(store):
    assert _mtp(store, "suite", "import", "demo") == 0
    assert (
        _mtp(
            store,
            "study",
            "create",
            "s",
            "--suite",
            "consistory-demo",
            "--model",
            "tiny",
            "--steps",
            "10",
            "--size",
            "64",
            "--final-step",
            "6,end",
            "--queue",
        )
        == 0
    )
    _score_all(store)
    app = MtpApp(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("l")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, LeaderboardScreen) and app.screen.board is not None,
            what="the leaderboard",
        )
        screen = app.screen
        table = screen.query_one("#leaderboard-table")
        assert table.row_count == 3  # baseline, final 6, final end
        header = [str(c.label) for c in table.columns.values()]
        assert "clip_t [95%]" in header and "clip_i_set [95%]" in header  # intervals fit 80 cols
        assert "[" in str(table.get_row_at(1)[2])
        assert screen.board.reference == "masactrl baseline"
        await pilot.press("down", "b")
        await wait_for(
            pilot, lambda: screen.board.reference == "masactrl steps 4-6", what="new reference"
        )
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.sort_metric == "clip_t", what="sorted")
        await pilot.press("g")  # the first superclass's breakdown
        await wait_for(pilot, lambda: screen.group == "animals", what="a group")
        header = [str(c.label) for c in table.columns.values()]
        assert "clip_t (animals)" in header and "n=2" in str(table.get_row_at(0)[2])
        await pilot.press("g", "g")  # things, then every set again
        await wait_for(pilot, lambda: screen.group is None, what="all units")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfigGridScreen), what="the grid")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back")
        await pilot.press("ctrl+s")  # the same four files as `mtp study export`
        exports = store.home.exports
        await wait_for(
            pilot,
            lambda: (
                sorted(p.name for p in exports.glob("s-*"))
                == [
                    "s-leaderboard.csv",
                    "s-leaderboard.png",
                    "s-leaderboard.tex",
                    "s-runs.csv",
                ]
            ),
            what="the exports",
        )
        # R requeues the study's failed runs, after asking
        with store.write() as s:
            run = s.exec(select(Run).order_by(Run.id)).first()
            run.status = "failed"
            s.add(run)
            failed_id = run.id
        await pilot.press("R")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="ask")
        await pilot.press("y")
        with store.session() as s:
            await wait_for(
                pilot, lambda: s.get(Run, failed_id, populate_existing=True).status == "queued"
            )
