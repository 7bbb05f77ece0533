"""The app's Score action (results and runs screens, palette): it queues a score request for an
engine and starts a score-only engine when none runs; it never imports torch."""

from __future__ import annotations

from sqlmodel import select

from tests.tui import SIZE, add_scores, seed_experiment, wait_for
from tui.app import MtpApp


def _requests(store):
    from store.models import ScoreRequest

    with store.session() as s:
        return list(s.exec(select(ScoreRequest)))


def _with_images(store, exp_id):
    """Runs done with an image (add_scores leaves them without one): CLIP scored, DINO not."""
    from store.models import Run

    with store.write() as s:
        for r in s.exec(select(Run).where(Run.experiment_id == exp_id)):
            r.image_path = f"artifacts/run-{r.id}/target.png"
            s.add(r)


def _fake_launch(monkeypatch):
    from engine import launch

    started = []
    monkeypatch.setattr(launch, "engine_running", lambda *a, **k: [])
    monkeypatch.setattr(launch, "start_engine", lambda home, **kw: started.append(kw) or 4242)
    return started


async def test_results_score_key_queues_a_request_and_starts_a_score_only_engine(
    store, monkeypatch
):
    exp = seed_experiment(store)
    add_scores(store, exp.id)
    _with_images(store, exp.id)
    started = _fake_launch(monkeypatch)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("e")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ResultsScreen")
        shown = {b.id: b for b in app.screen.BINDINGS}
        assert shown["results.score"].show and shown["results.score"].description == "Score"
        await pilot.press("S")
        await wait_for(pilot, lambda: len(_requests(store)) == 1, what="a score request")
        await pilot.pause(1.2)
        assert "scoring" in app.sub_title  # progress shown in the header
    (req,) = _requests(store)
    assert req.experiment_id == exp.id and req.metrics == "clip,dino" and not req.rescore
    assert started and "--score-only" in started[0]["extra_args"]


async def test_runs_score_key_and_palette_entry(store, monkeypatch):
    from tui.commands import COMMANDS

    exp = seed_experiment(store)
    add_scores(store, exp.id)
    _with_images(store, exp.id)
    _fake_launch(monkeypatch)
    assert any(method == "score_experiment" for _t, _h, method, _a in COMMANDS)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("r")
        await wait_for(
            pilot, lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded
        )
        await pilot.press("S")
        await wait_for(pilot, lambda: len(_requests(store)) == 1, what="a score request")
        await pilot.press("S")  # a second press adds no second open request
        await pilot.pause(0.3)
        assert len(_requests(store)) == 1


async def test_score_key_says_so_when_nothing_lacks_a_score(store, monkeypatch):
    from store.models import Run, Score

    exp = seed_experiment(store)
    add_scores(store, exp.id)
    _with_images(store, exp.id)
    with store.write() as s:  # DINO too: nothing left to score
        for r in s.exec(select(Run).where(Run.experiment_id == exp.id)):
            s.add(Score(run_id=r.id, metric="dino_ref", backbone="test", value=0.5))
    started = _fake_launch(monkeypatch)
    app = MtpApp(store)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.experiment_id == exp.id)
        await pilot.press("f7")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ResultsScreen")
        await pilot.press("S")
        await wait_for(
            pilot,
            lambda: any("nothing to score" in str(n.message) for n in app._notifications),
            what="nothing to score",
        )
        assert not any("queued" in str(n.message) for n in app._notifications)
    assert _requests(store) == [] and started == []
