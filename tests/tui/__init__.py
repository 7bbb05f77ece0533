"""Helpers shared by the TUI pilot tests: a seeded store, artifact files, waiting on workers."""

from __future__ import annotations

import asyncio
import time

SIZE = (120, 40)


async def wait_for(pilot, condition, timeout: float = 10.0, what: str = "condition"):
    """Let thread workers and message handlers run until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while True:
        await pilot.pause(0.05)
        try:
            if condition():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def write_png(path, color=(200, 120, 40), size=32):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def seed_experiment(store, name="exp", **axes):
    """A queued experiment on a fake local model folder (nothing here runs it)."""
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    model = store.home.models / "fake-sd"
    model.mkdir(parents=True, exist_ok=True)
    spec = ExperimentSpec(
        model=str(model),
        num_steps=20,
        target_prompts=["a dog on the beach", "a dog in snow"],
        seeds="0,1",
        layers="decoder",
        start_step="4",
        final_step="10,15,end",
    )
    for k, v in axes.items():
        setattr(spec, k, v)
    return save_experiment(store, name, spec, queue=True)


def add_scores(store, experiment_id):
    """Deterministic scores: clip_t rises with run id, clip_i_ref falls."""
    from sqlmodel import select

    from store.models import Run, Score

    with store.write() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == experiment_id)))
        for r in runs:
            r.status = "done"
            r.duration_s = 2.0
            s.add(r)
            s.add(Score(run_id=r.id, metric="clip_t", backbone="test", value=0.2 + r.id / 1000))
            s.add(Score(run_id=r.id, metric="clip_i_ref", backbone="test", value=0.9 - r.id / 1000))
    return runs
