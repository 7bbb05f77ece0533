"""The worker loop in process: batching, OOM halving, errors, cancel/requeue, artifacts, and one
end-to-end pass on the real tiny pipeline."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlmodel import select

from engine.backends.base import RunError
from engine.backends.diffusion import PipelineBackend
from engine.backends.fake import FakeBackend, fake_score
from engine.worker import Worker, WorkerConfig
from store import queue as q
from store.models import Experiment, ExperimentStatus, Run, RunStatus, Score
from store.queries import save_experiment
from store.sweep.spec import ExperimentSpec

# Each test that uses `home` or `store` runs on SQLite and on a real PostgreSQL server (tests/conftest.py).
DB_BACKENDS = ("sqlite", "postgresql")


def make_exp(store, name="exp", model="fake-model", **kw) -> Experiment:
    base = dict(
        model=model,
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="1",
        final_step="end",
        baseline=False,
    )
    base.update(kw)
    return save_experiment(store, name, ExperimentSpec(**base), queue=True)


def make_exp_model_gone(store, name, folder, **kw) -> Experiment:
    """Queued while its model folder existed (the builder refuses a missing one), then removed."""
    import shutil

    folder.mkdir(parents=True)
    exp = make_exp(store, name, model=str(folder), **kw)
    shutil.rmtree(folder)
    return exp


def runs_of(store, exp_id=None) -> list[Run]:
    with store.session() as s:
        stmt = select(Run).order_by(Run.id)
        if exp_id is not None:
            stmt = stmt.where(Run.experiment_id == exp_id)
        return list(s.exec(stmt))


def drain(store, backend, **cfg) -> Worker:
    config = WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, **cfg)
    w = Worker(store, backend, config, score=fake_score, worker_id=f"test:{id(backend)}")
    w.run()
    return w


def assert_complete(store, run: Run, masked: bool = False) -> None:
    assert run.status == RunStatus.DONE, run.error
    for col in ("image_path", "source_image_path") + (
        ("mask_path", "source_mask_path", "maps_path") if masked else ()
    ):
        rel = getattr(run, col)
        assert rel and not Path(rel).is_absolute(), col
        assert (store.home.root / rel).is_file(), col
    with store.session() as s:
        assert len(s.exec(select(Score).where(Score.run_id == run.id)).all()) >= 1


def test_eight_controls_with_one_source_are_one_batch(store):
    exp = make_exp(store, start_step="0,1", final_step="2,3", skip_interval="1,2")  # 8 configs
    backend = FakeBackend()
    w = drain(store, backend, max_batch=8)
    assert len(backend.calls) == 1 and len(backend.calls[0][1]) == 8
    assert len(backend.loads) == 1
    runs = runs_of(store, exp.id)
    assert len(runs) == 8
    for r in runs:
        assert_complete(store, r)
        assert r.attempts == 1 and r.duration_s is not None
    with store.session() as s:
        assert s.get(Experiment, exp.id).status == ExperimentStatus.DONE
    assert w.stats["done"] == 8


def test_model_is_reused_across_groups_and_switched_only_when_needed(store):
    make_exp(store, "a1", model="model-a", seeds="0,1,2")
    make_exp(store, "b", model="model-b", seeds="0,1")
    make_exp(store, "a2", model="model-a", seeds="3")
    backend = FakeBackend()
    drain(store, backend)
    assert [k.model for k in backend.loads] == ["model-a", "model-b"]
    assert len(backend.calls) == 6


def test_out_of_memory_halves_the_batch(store):
    exp = make_exp(store, start_step="0,1", final_step="2,3", skip_interval="1,2", seeds="0,1")
    backend = FakeBackend(oom_above=2)
    drain(store, backend, max_batch=8)
    # The second group starts at the batch size that fitted instead of failing again.
    assert [len(ids) for _src, ids in backend.calls] == [8, 4, 2, 2, 2, 2] + [2, 2, 2, 2]
    for r in runs_of(store, exp.id):
        assert_complete(store, r)


def test_out_of_memory_at_batch_one_fails_with_a_clear_message(store):
    exp = make_exp(store, final_step="2,3")
    drain(store, FakeBackend(oom_above=0), max_batch=8)
    runs = runs_of(store, exp.id)
    assert {r.status for r in runs} == {RunStatus.FAILED}
    assert all("out of memory even with a batch of 1" in r.error for r in runs)


def test_missing_model_fails_its_runs_and_the_worker_goes_on(store):
    bad = make_exp_model_gone(
        store, "bad", store.home.root / "nowhere" / "missing-model", final_step="2,3"
    )
    good = make_exp(store, "good", model="model-ok")
    drain(store, FakeBackend())
    assert {r.status for r in runs_of(store, bad.id)} == {RunStatus.FAILED}
    assert all("/nowhere/missing-model not found" in r.error for r in runs_of(store, bad.id))
    assert {r.status for r in runs_of(store, good.id)} == {RunStatus.DONE}


def test_generation_errors_fail_only_their_batch(store):
    bad = make_exp(store, "nan", target_prompts=["nan please"], seeds="0")
    boom = make_exp(store, "boom", target_prompts=["explode"], seeds="1")
    good = make_exp(store, "good", seeds="2")
    backend = FakeBackend(
        fail={
            "nan please": RunError("latents became NaN/inf at step 2 of 4"),
            "explode": KeyError("surprise"),
        }
    )
    drain(store, backend)
    assert runs_of(store, bad.id)[0].error == "latents became NaN/inf at step 2 of 4"
    assert runs_of(store, boom.id)[0].error == "KeyError: 'surprise'"
    assert runs_of(store, good.id)[0].status == RunStatus.DONE


def test_unreadable_source_image_fails_with_its_path(store, tmp_path):
    # A bad source image is refused at creation, so break the stored copy after.
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "red").save(good)
    exp = make_exp(store, source_image=str(good), invert=True)
    (run,) = runs_of(store, exp.id)
    broken = store.home.root / run.source_image
    broken.write_bytes(b"not a png")
    drain(store, FakeBackend())
    (run,) = runs_of(store, exp.id)
    assert run.status == RunStatus.FAILED and str(broken) in run.error


def test_invalid_control_fails_that_run_only(store):
    exp = make_exp(store, final_step="2,3")
    with store.write() as s:  # a layer set the model does not have, as an old database might hold
        r = s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id)).first()
        r.layers = "40-50"
        s.add(r)
    drain(store, FakeBackend())
    a, b = runs_of(store, exp.id)
    assert a.status == RunStatus.FAILED and "layers" in a.error
    assert b.status == RunStatus.DONE


def test_masked_runs_write_masks_and_maps(store):
    exp = make_exp(store, mask_mode="auto", mask_words="dog", mask_threshold="0.5")
    drain(store, FakeBackend())
    (run,) = runs_of(store, exp.id)
    assert_complete(store, run, masked=True)
    with np.load(store.home.root / run.maps_path) as maps:
        assert "dog" in maps.files
    assert Image.open(store.home.root / run.mask_path).mode == "L"


def test_cancel_while_running_then_requeue(store):
    exp = make_exp(store, final_step="2,3", num_steps=40)
    backend = FakeBackend(step_s=0.02)
    worker = Worker(
        store,
        backend,
        WorkerConfig(poll_s=0.05, heartbeat_s=0.1, cancel_check_s=0.02),
        score=fake_score,
        worker_id="w-cancel",
    )
    t = threading.Thread(target=worker.run)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not any(r.status == RunStatus.RUNNING for r in runs_of(store, exp.id)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # The heartbeat thread reports progress of the running batch.
        while not q.list_workers(store)[0].step:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert q.list_workers(store)[0].total_steps == 40
        q.cancel_experiment(store, exp.id)
        while any(r.status == RunStatus.RUNNING for r in runs_of(store, exp.id)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        worker.stop()
        t.join(10)
    runs = runs_of(store, exp.id)
    assert {r.status for r in runs} == {RunStatus.CANCELLED}
    assert backend.calls and all(not r.image_path for r in runs)  # aborted before any image
    assert q.list_workers(store)[0].status == q.WorkerStatus.STOPPED

    assert q.requeue(store, exp.id) == 2
    drain(store, FakeBackend())
    assert {r.status for r in runs_of(store, exp.id)} == {RunStatus.DONE}


def test_stop_releases_the_claim(store):
    exp = make_exp(store, final_step="2,3", num_steps=200)
    worker = Worker(
        store,
        FakeBackend(step_s=0.01),
        WorkerConfig(poll_s=0.05, heartbeat_s=0.1),
        worker_id="w-stop",
    )
    t = threading.Thread(target=worker.run)
    t.start()
    deadline = time.monotonic() + 20
    while not any(r.status == RunStatus.RUNNING for r in runs_of(store, exp.id)):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.stop()
    t.join(10)
    runs = runs_of(store, exp.id)
    assert {(r.status, r.attempts, r.worker_id) for r in runs} == {(RunStatus.QUEUED, 0, None)}


def test_two_workers_in_threads_run_each_of_sixty_runs_once(home):
    from store.db import Store

    setup = Store(home)
    for i in range(10):  # 10 groups of 7 runs
        make_exp(setup, f"e{i}", seeds=str(i), start_step="0,1,2", final_step="3,4", baseline=True)
    setup.close()
    backends = [FakeBackend(step_s=0.001), FakeBackend(step_s=0.001)]
    stores = [Store(home), Store(home)]
    workers = [
        Worker(
            st,
            b,
            WorkerConfig(once=True, max_batch=4, poll_s=0.01, heartbeat_s=0.05),
            score=fake_score,
            worker_id=f"w{i}",
        )
        for i, (st, b) in enumerate(zip(stores, backends))
    ]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    generated = [rid for b in backends for _src, ids in b.calls for rid in ids]
    runs = runs_of(stores[0])
    assert len(runs) == 70
    assert sorted(generated) == sorted(r.id for r in runs)  # each exactly once
    assert all(b.calls for b in backends)  # both took part
    assert {r.status for r in runs} == {RunStatus.DONE}
    for st in stores:
        st.close()


# ---------------------------------------------------------------- the real tiny pipeline
def test_real_tiny_pipeline_end_to_end(store, tiny_model_dir):
    ok = make_exp(
        store,
        "tiny",
        model=str(tiny_model_dir),
        num_steps=3,
        start_step="0",
        final_step="2,end",
        mask_mode="off,auto",
        mask_threshold="0.5",
        baseline=True,
    )
    missing = make_exp_model_gone(
        store, "missing", tiny_model_dir.parent / "no-such-model", num_steps=3
    )
    from engine.cli import LazyScorer

    backend = PipelineBackend("cpu", home=store.home)
    worker = Worker(
        store,
        backend,
        WorkerConfig(once=True, heartbeat_s=0.2),
        worker_id="real",
        score=LazyScorer(store.home, demo=True, device="cpu"),
    )
    worker.run()
    runs = runs_of(store, ok.id)
    assert len(runs) == 5
    assert worker.stats["generate_calls"] == 1  # the five targets shared one source pass
    for r in runs:
        assert_complete(store, r, masked=r.mask_mode == "auto")
        with Image.open(store.home.root / r.image_path) as im:
            assert im.size == (64, 64)
    with store.session() as s:
        metrics = {sc.metric for sc in s.exec(select(Score).where(Score.run_id == runs[0].id))}
    assert {"clip_t", "clip_i_src"} <= metrics
    (m,) = runs_of(store, missing.id)
    assert m.status == RunStatus.FAILED and "no-such-model" in m.error and "not found" in m.error


def test_unreadable_reference_image_leaves_the_run_done_and_not_scored(store, tmp_path):
    from store.queries import save_concept

    img = tmp_path / "ref.png"
    Image.new("RGB", (16, 16), (200, 100, 0)).save(img)
    concept = save_concept(store, "corgi", token="sks", class_word="dog", ref_images=[img])
    copied = store.home.root / concept.ref_images[0]
    copied.write_bytes(b"truncated")  # the copy in the data folder went bad after saving
    spec = ExperimentSpec(
        model="fake-model",
        source_prompt="a photo of sks dog",
        target_prompts=["sks dog"],
        num_steps=4,
        width=64,
        height=64,
        seeds="0",
        start_step="1",
        baseline=False,
    )
    exp = save_experiment(store, "refs", spec, concept_id=concept.id, queue=True)
    drain(store, FakeBackend())
    (run,) = runs_of(store, exp.id)
    # The image is good, so the run is done with it; only scoring it failed.
    assert run.status == RunStatus.DONE and run.error is None
    assert (store.home.root / run.image_path).is_file()
    assert str(copied) in run.score_error and run.score_error.startswith("reference image")


def test_a_model_that_failed_to_load_is_not_retried_in_the_same_session(store, monkeypatch):
    """Each batch of an unloadable hub model used to ask the hub again (~24 s of retries)."""
    import engine.pipeline as pipeline
    from engine.backends.base import LoadKey, ModelUnavailable

    calls = []

    def failing_load(model, **_kw):
        calls.append(model)
        raise pipeline.ModelNotFound(
            f"model {model!r} is neither a local folder nor a reachable hub model"
        )

    monkeypatch.setattr(pipeline, "load_pipeline", failing_load)
    backend = PipelineBackend("cpu", home=store.home)
    for _ in range(3):
        with pytest.raises(ModelUnavailable, match="neither a local folder"):
            backend.load(LoadKey("org/unreachable"))
    assert calls == ["org/unreachable"]


def test_tiny_model_name_resolves_under_home_without_demo(store, monkeypatch):
    """Demo experiments name the model "tiny": any engine finds (or builds) it in home/models."""
    import engine.tiny as tiny

    monkeypatch.setattr(tiny, "ensure_tiny_pipeline", lambda models: models / "tiny-sd")
    backend = PipelineBackend("cpu", home=store.home)
    assert backend._resolve_model("tiny") == str(store.home.models / "tiny-sd")
    assert backend._resolve_model("org/model") == "org/model"
