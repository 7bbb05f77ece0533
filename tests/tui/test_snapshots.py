"""Every screen at 120x40 and at 80x24, as SVG snapshots (pytest-textual-snapshot).

Deterministic by construction: a fixed data folder path (paths show in the header and the
export dialog), the demo data set with fixed scores, no engine (no heartbeats or ages), a
file tree rooted at a committed folder, and no images (no run has artifacts, and the concept
screen is opened empty), so nothing depends on the terminal's image protocol.
Regenerate after an intended change: pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.tui import add_scores, wait_for

SNAPSHOT_HOME = Path("/tmp/mtp-snapshot-home")
FILES = Path("tests/tui/snapshot_files")  # relative: the path is shown, and checkouts differ
SIZES = {"120x40": (120, 40), "80x24": (80, 24)}


@pytest.fixture
def demo_app(monkeypatch):
    from textual.widgets import Input, TextArea

    from store.db import Store

    # A blinking text cursor is drawn or not depending on when the screenshot is taken (two
    # sweep snapshots failed that way under load): snapshots show it steadily on.
    for widget in (Input, TextArea):
        monkeypatch.setattr(widget.__dict__["cursor_blink"], "_default", False)
    from store.demo import seed_demo
    from store.paths import Home
    from tui.app import MtpApp

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    shutil.rmtree(SNAPSHOT_HOME, ignore_errors=True)
    store = Store(Home.resolve(SNAPSHOT_HOME))
    _concept, exp = seed_demo(store)
    add_scores(store, exp.id)
    app = MtpApp(store, demo=True)
    yield app, exp
    store.close()
    shutil.rmtree(SNAPSHOT_HOME, ignore_errors=True)


def _name(app) -> str:
    return type(app.screen).__name__


async def _home(pilot):
    from store.queries import list_experiments

    shown = len(list_experiments(pilot.app.store))  # every demo experiment
    await wait_for(
        pilot, lambda: pilot.app.screen.query_one("#experiments").row_count == shown, what="home"
    )


async def _concept(pilot):
    from tui.screens.concept import ConceptScreen

    await _home(pilot)
    pilot.app.push_screen(ConceptScreen(start_dir=FILES))
    await wait_for(pilot, lambda: _name(pilot.app) == "ConceptScreen", what="concept")
    await wait_for(
        pilot, lambda: len(pilot.app.screen.query_one("#tree").root.children) == 2, what="file tree"
    )


async def _sweep(pilot):
    await _home(pilot)
    await pilot.press("f4")
    await wait_for(
        pilot,
        lambda: _name(pilot.app) == "SweepScreen" and pilot.app.screen.last_count,
        what="sweep",
    )


async def _runs(pilot):
    await _home(pilot)
    await pilot.press("f6")
    await wait_for(
        pilot, lambda: _name(pilot.app) == "RunsScreen" and pilot.app.screen.loaded, what="runs"
    )


async def _detail(pilot):
    await _runs(pilot)
    await pilot.press("enter")
    await wait_for(
        pilot,
        lambda: _name(pilot.app) == "RunDetailScreen" and pilot.app.screen.bundle,
        what="detail",
    )


async def _compare(pilot):
    await _runs(pilot)
    await pilot.press("j", "v")
    await wait_for(
        pilot,
        lambda: (
            _name(pilot.app) == "CompareScreen"
            and "vs" in str(pilot.app.screen.query_one("#compare-title").content)
        ),
        what="compare",
    )


async def _queued_experiment(pilot):
    """Put Home's cursor on the queued demo experiment (the drafts have no results)."""
    from store.queries import list_experiments

    await _home(pilot)
    (queued,) = [
        r.experiment.id for r in list_experiments(pilot.app.store) if r.experiment.status != "draft"
    ]
    table = pilot.app.screen.query_one("#experiments")
    table.move_cursor(row=table.get_row_index(str(queued)), animate=False)
    await wait_for(pilot, lambda: pilot.app.experiment_id == queued, what="the queued experiment")


async def _results(pilot):
    await _queued_experiment(pilot)
    await pilot.press("f7")
    await wait_for(
        pilot,
        lambda: _name(pilot.app) == "ResultsScreen" and pilot.app.screen.grid_shown,
        what="results",
    )


async def _export(pilot):
    await _results(pilot)
    await pilot.press("f8")
    await wait_for(pilot, lambda: _name(pilot.app) == "ExportScreen", what="export")


async def _help(pilot):
    await _runs(pilot)
    await pilot.press("f1")
    await wait_for(pilot, lambda: _name(pilot.app) == "HelpScreen", what="help")


async def _confirm(pilot):
    await _queued_experiment(pilot)
    await pilot.press("D")
    await wait_for(pilot, lambda: _name(pilot.app) == "ConfirmScreen", what="confirm")


async def _leaderboard(pilot):
    """A two-configuration study over the ConsiStory+ demo suite with fixed scores."""
    import numpy as np
    from sqlmodel import select

    from store.models import Experiment, Run, Score
    from store.studies.create import create_study
    from store.studies.suites import import_suite
    from store.suites import DEMO_SUITES
    from store.sweep.spec import ExperimentSpec

    await _home(pilot)
    store = pilot.app.store
    import_suite(store, DEMO_SUITES["consistory-demo"], base_model="tiny")
    spec = ExperimentSpec(model="tiny", num_steps=10, width=64, height=64, seeds="0,1")
    spec.final_step = "6,end"
    study, _ = create_study(store, "bench", "consistory-demo", spec, queue=True)
    rng = np.random.default_rng(0)
    with store.write() as s:
        runs = s.exec(select(Run).join(Experiment).where(Experiment.study_id == study.id))
        for r in sorted(runs, key=lambda r: r.id):
            r.status = "done"
            s.add(r)
            for metric in ("clip_t", "clip_i_set"):
                s.add(Score(run_id=r.id, metric=metric, backbone="bb", value=float(rng.random())))
    await pilot.press("f9")
    await wait_for(
        pilot,
        lambda: _name(pilot.app) == "LeaderboardScreen" and pilot.app.screen.board is not None,
        what="leaderboard",
    )


SCREENS = {
    "home": _home,
    "concept": _concept,
    "sweep": _sweep,
    "runs": _runs,
    "detail": _detail,
    "compare": _compare,
    "results": _results,
    "export": _export,
    "help": _help,
    "confirm": _confirm,
    "leaderboard": _leaderboard,
}


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshot(snap_compare, demo_app, screen, size):
    app, _exp = demo_app

    async def settled(pilot):
        await SCREENS[screen](pilot)
        await pilot.pause(0.3)  # let the last worker's message and any refresh land

    assert snap_compare(app, terminal_size=SIZES[size], run_before=settled)
