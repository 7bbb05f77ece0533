"""A claimed group of a set method runs as one set through generate_set, never split.

The Run.method / method_params columns come with the store's migration; until then these tests
hand the worker runs that carry them (`_WithMethod`), as the store will.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")

from engine.backends.diffusion import PipelineBackend  # noqa: E402
from engine.backends.fake import (
    FakeBackend,  # noqa: E402
    fake_score,  # noqa: E402
)
from engine.worker import Worker, WorkerConfig  # noqa: E402
from store.models import RunStatus  # noqa: E402
from tests.engine.test_worker import make_exp, runs_of  # noqa: E402

PROMPTS = ["a corgi on a beach", "a corgi in the snow", "a corgi reading a book"]


class _WithMethod:
    def __init__(self, run, method, params):
        self._run, self.method, self.method_params = run, method, params

    def __getattr__(self, name):
        return getattr(self._run, name)


def _as_method(monkeypatch, method, params=""):
    import engine.worker as worker

    original = worker.claim_group

    def claim(*args, **kwargs):
        return [_WithMethod(r, method, params) for r in original(*args, **kwargs)]

    monkeypatch.setattr(worker, "claim_group", claim)


def test_a_set_is_never_split_out_of_memory_fails_it_whole(store, monkeypatch):
    exp = make_exp(store, target_prompts=PROMPTS, start_step="0")
    _as_method(monkeypatch, "consistent_sa")
    backend = FakeBackend(oom_above=2)
    Worker(
        store,
        backend,
        WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, max_batch=8),
        score=fake_score,
        worker_id="set-oom",
    ).run()
    runs = runs_of(store, exp.id)
    assert len(runs) == 3 and [len(ids) for _s, ids in backend.calls] == [3]
    assert {r.status for r in runs} == {RunStatus.FAILED}
    assert all("never split" in r.error for r in runs)


def test_a_set_runs_through_generate_set_on_the_real_pipeline(store, tiny_sdxl_dir, monkeypatch):
    import torch

    from engine.methods import generate_set
    from engine.methods.sets import set_latents
    from engine.tiny_sdxl import load_tiny_sdxl_pipeline

    exp = make_exp(
        store,
        model=str(tiny_sdxl_dir),
        target_prompts=PROMPTS,
        start_step="0",
        num_steps=3,
        source_prompt="a photo of a corgi",
        mask_mode="auto",
        mask_words="corgi",
    )
    params = json.dumps({"mask_dropout": 0.0, "inject": False})
    _as_method(monkeypatch, "consistory", params)
    backend = PipelineBackend("cpu", home=store.home)
    worker = Worker(
        store,
        backend,
        WorkerConfig(once=True, heartbeat_s=0.2),
        score=fake_score,
        worker_id="set-real",
    )
    worker.run()
    runs = runs_of(store, exp.id)
    assert [r.status for r in runs] == [RunStatus.DONE] * 3, [r.error for r in runs]
    assert worker.stats["generate_calls"] == 1  # the group is one set
    assert all(r.mask_path for r in runs)  # each image's subject mask
    # the same set from Python, from the latents of each run's prompt_index
    pipe = load_tiny_sdxl_pipeline(tiny_sdxl_dir)
    lat = set_latents(pipe, 3, runs[0].seed, 64, 64, indices=[r.prompt_index for r in runs])
    res = generate_set(
        pipe,
        [r.target_prompt for r in runs],
        method="consistory",
        params=json.loads(params),
        subject_words=["corgi"],
        seed=runs[0].seed,
        num_steps=3,
        guidance=runs[0].guidance,
        latents=lat,
    )
    from PIL import Image

    for r, image in zip(runs, res.images):
        with Image.open(store.home.root / r.image_path) as im:
            assert torch.equal(
                torch.as_tensor(list(im.convert("RGB").getdata())),
                torch.as_tensor(list(image.convert("RGB").getdata())),
            )
