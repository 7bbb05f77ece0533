"""`mtp score` end to end: runs made without scores, then scored by the detached score-only
engine the command starts; a second call adds nothing; images keep their bytes."""

from __future__ import annotations

import hashlib

from sqlmodel import select

from engine.backends.fake import FakeBackend
from engine.launch import engine_running
from engine.worker import Worker, WorkerConfig
from store.models import Run, RunStatus, Score
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec
from tui.cli.main import main as mtp


def test_mtp_score_scores_existing_images_once(store, capsys):
    spec = ExperimentSpec(
        model="fake-model",
        source_prompt="a photo of a dog",
        target_prompts=["a dog on a beach"],
        num_steps=2,
        width=64,
        height=64,
        seeds="0,1",
        start_step="1",
        final_step="end",
        baseline=True,
    )
    exp = save_experiment(store, "fs", spec, queue=True)
    Worker(
        store, FakeBackend(), WorkerConfig(once=True, heartbeat_s=0.2), worker_id="gen"
    ).run()  # --no-score
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
    assert runs and {r.status for r in runs} == {RunStatus.DONE}
    before = {
        r.id: hashlib.sha256((store.home.root / r.image_path).read_bytes()).hexdigest()
        for r in runs
    }

    home = str(store.home.root)
    assert mtp(["--home", home, "score", "fs", "--demo", "--timeout", "280"]) == 0
    out = capsys.readouterr().out
    assert f"done: {len(runs)} run(s) scored" in out
    with store.session() as s:
        scores = list(s.exec(select(Score)))
    per_run = {}
    for sc in scores:
        per_run.setdefault(sc.run_id, set()).add(sc.metric)
    assert per_run == {
        r.id: {"clip_t", "clip_i_src", "dino_src"} for r in runs
    }  # no concept: no refs

    assert mtp(["--home", home, "score", str(exp.id), "--demo", "--timeout", "280"]) == 0
    assert "nothing to score" in capsys.readouterr().out
    with store.session() as s:
        assert [x.id for x in s.exec(select(Score))] == [x.id for x in scores]
    after = {
        r.id: hashlib.sha256((store.home.root / r.image_path).read_bytes()).hexdigest()
        for r in runs
    }
    assert after == before
    import time

    deadline = time.monotonic() + 30
    while engine_running(store.home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_running(store.home)  # the score-only engine exits by itself (--once)


def test_mtp_score_refuses_unknown_metrics(store, capsys):
    spec = ExperimentSpec(
        model="fake-model",
        source_prompt="a dog",
        target_prompts=["a dog"],
        num_steps=2,
        width=64,
        height=64,
        seeds="0",
        start_step="1",
        final_step="end",
        baseline=False,
    )
    save_experiment(store, "x", spec, queue=True)
    assert (
        mtp(["--home", str(store.home.root), "score", "x", "--metric", "lpips", "--no-wait"]) == 2
    )
    assert "lpips" in capsys.readouterr().err
