"""Scoring without regenerating (issue 10 items 3, 4, 8): runs that could not be scored keep
their images, `mtp score` requests are worked by an engine, idempotent, and runs record the
engine session that made them."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from sqlmodel import select

from engine.backends.fake import FakeBackend
from engine.rescore import Rescorer
from engine.worker import Worker, WorkerConfig
from store import queue as q
from store.models import EngineSession, Run, RunStatus, Score, ScoreRequestStatus
from store.queries import save_concept, save_experiment
from store.scoring import claim_score_request, request_scoring, runs_to_score
from store.sweep.spec import ExperimentSpec

ROOT = Path(__file__).resolve().parents[2]


def _experiment(store, tmp_path, seeds="0,1", name="fs"):
    ref = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(ref)
    concept = save_concept(store, f"corgi-{name}", token="sks", class_word="dog", ref_images=[ref])
    spec = ExperimentSpec(model="fake-model", source_prompt="a photo of sks dog",
                          target_prompts=["a sks dog doing tasks", "sks dogs on a beach"], num_steps=3, width=64,
                          height=64, seeds=seeds, start_step="1", final_step="2,end", baseline=True)
    return save_experiment(store, name, spec, concept_id=concept.id, queue=True)


def _generate(store, score=None):
    w = Worker(store, FakeBackend(), WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05), score=score,
               worker_id="gen")
    w.run()
    return w


def _runs(store, exp_id):
    with store.session() as s:
        return list(s.exec(select(Run).where(Run.experiment_id == exp_id).order_by(Run.id)))


def _scores(store, exp_id):
    with store.session() as s:
        return list(s.exec(select(Score).join(Run, Run.id == Score.run_id).where(Run.experiment_id == exp_id)
                           .order_by(Score.id)))


def _image_bytes(store, runs):
    out = {}
    for r in runs:
        for rel in (r.image_path, r.source_image_path):
            out[rel] = hashlib.sha256((store.home.root / rel).read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny_scorer(tmp_path_factory):
    pytest.importorskip("torch")
    from engine.scoring import Scorer
    from store.paths import Home

    return Scorer.for_home(Home.resolve(tmp_path_factory.mktemp("scorer-home")), demo=True)


def _rescorer(store, scorer, worker_id="scorer"):
    from engine.scoring import scored_text

    q.register_worker(store, "cpu", worker_id)
    return Rescorer(store, worker_id, lambda families: scorer, scored_text)


# ---------------------------------------------------------------- scoring fails later: images stay
def test_scoring_failure_keeps_runs_done_with_their_images(store, tmp_path):
    exp = _experiment(store, tmp_path, seeds="0")

    def broken(images, texts, source, refs):
        raise RuntimeError("CLIP weights vanished")

    _generate(store, score=broken)
    runs = _runs(store, exp.id)
    assert runs and {r.status for r in runs} == {RunStatus.DONE}
    for r in runs:
        assert (store.home.root / r.image_path).is_file() and (store.home.root / r.source_image_path).is_file()
        assert "CLIP weights vanished" in r.score_error and r.error is None
    assert _scores(store, exp.id) == []


# ---------------------------------------------------------------- mtp score's engine side
def test_rescoring_scores_every_done_run_once_and_leaves_images_untouched(store, tmp_path, tiny_scorer):
    exp = _experiment(store, tmp_path)
    _generate(store, score=None)  # like mtp-engine --no-score
    runs = _runs(store, exp.id)
    before = _image_bytes(store, runs)
    assert _scores(store, exp.id) == []

    req, created = request_scoring(store, exp.id)
    assert created
    again, created = request_scoring(store, exp.id)
    assert not created and again.id == req.id  # an open identical request is not duplicated
    rescorer = _rescorer(store, tiny_scorer)
    assert rescorer.run_one()
    assert not rescorer.run_one()  # nothing else queued

    metrics = {"clip_t", "clip_i_ref", "clip_i_src", "dino_ref", "dino_src"}
    first = _scores(store, exp.id)
    by_run: dict[int, set] = {}
    for sc in first:
        by_run.setdefault(sc.run_id, set()).add(sc.metric)
        assert sc.backbone in tiny_scorer.backbones.values()
    assert by_run == {r.id: metrics for r in runs}
    text = {sc.run_id: sc.scored_text for sc in first if sc.metric == "clip_t"}
    assert {text[r.id] for r in runs if r.target_prompt == "a sks dog doing tasks"} == {"a dog doing tasks"}
    from store.scoring import get_request

    done = get_request(store, req.id)
    assert done.status == ScoreRequestStatus.DONE and done.total == done.scored == len(runs)
    assert _image_bytes(store, _runs(store, exp.id)) == before
    assert {r.status for r in _runs(store, exp.id)} == {RunStatus.DONE}

    # A second request finds nothing to do and writes nothing.
    req2, _ = request_scoring(store, exp.id)
    assert rescorer.run_one()
    assert get_request(store, req2.id).total == 0
    assert [(s.id, s.value) for s in _scores(store, exp.id)] == [(s.id, s.value) for s in first]

    # --rescore replaces every score of the family (new rows, same count, same values).
    req3, _ = request_scoring(store, exp.id, ("clip",), rescore=True)
    assert rescorer.run_one()
    third = _scores(store, exp.id)
    assert get_request(store, req3.id).scored == len(runs)
    old_clip = {(s.run_id, s.metric): (s.id, s.value) for s in first if s.metric.startswith("clip")}
    new_clip = {(s.run_id, s.metric): (s.id, s.value) for s in third if s.metric.startswith("clip")}
    assert old_clip.keys() == new_clip.keys() and len(third) == len(first)
    assert all(new_clip[k][0] != old_clip[k][0] for k in old_clip)
    assert all(new_clip[k][1] == pytest.approx(old_clip[k][1], abs=1e-6) for k in old_clip)
    assert _image_bytes(store, _runs(store, exp.id)) == before


def test_not_scored_runs_are_scored_later_and_lose_their_reason(store, tmp_path, tiny_scorer):
    exp = _experiment(store, tmp_path, seeds="0")
    _generate(store, score=lambda *a: (_ for _ in ()).throw(RuntimeError("offline")))
    assert all(r.score_error for r in _runs(store, exp.id))
    request_scoring(store, exp.id)
    assert _rescorer(store, tiny_scorer).run_one()
    assert all(r.score_error is None for r in _runs(store, exp.id))


def test_a_missing_image_is_reported_per_run_and_the_rest_are_scored(store, tmp_path, tiny_scorer):
    exp = _experiment(store, tmp_path, seeds="0")
    _generate(store)
    runs = _runs(store, exp.id)
    (store.home.root / runs[0].image_path).unlink()
    req, _ = request_scoring(store, exp.id)
    assert _rescorer(store, tiny_scorer).run_one()
    after = {r.id: r for r in _runs(store, exp.id)}
    assert str(store.home.root / runs[0].image_path) in after[runs[0].id].score_error
    assert after[runs[0].id].status == RunStatus.DONE and after[runs[0].id].image_path == runs[0].image_path
    assert all(after[r.id].score_error is None for r in runs[1:])
    from store.scoring import get_request

    assert get_request(store, req.id).failed == 1


def test_a_request_held_by_a_dead_engine_is_taken_over(store, tmp_path):
    exp = _experiment(store, tmp_path, seeds="0")
    q.register_worker(store, "cpu", "dead:1:cpu", pid=2 ** 22 + 7)  # no such pid on this host
    q.register_worker(store, "cpu", "alive")
    req, _ = request_scoring(store, exp.id)
    assert claim_score_request(store, "dead:1:cpu").id == req.id
    assert claim_score_request(store, "alive", stale_after_s=3600).id == req.id


def test_scorer_that_cannot_load_fails_the_request_with_its_message(store, tmp_path):
    from engine.scoring import ScorerUnavailable, scored_text

    exp = _experiment(store, tmp_path, seeds="0")
    _generate(store)
    req, _ = request_scoring(store, exp.id, ("dreamsim",))

    def unavailable(families):
        raise ScorerUnavailable("DreamSim weights are not in /x: missing ensemble_lora")

    q.register_worker(store, "cpu", "s")
    assert Rescorer(store, "s", unavailable, scored_text).run_one()
    from store.scoring import get_request

    got = get_request(store, req.id)
    assert got.status == ScoreRequestStatus.FAILED and "ensemble_lora" in got.error
    assert {r.status for r in _runs(store, exp.id)} == {RunStatus.DONE}


def test_runs_to_score_only_counts_the_engines_own_backbone(store, tmp_path):
    exp = _experiment(store, tmp_path, seeds="0")
    _generate(store)
    runs = _runs(store, exp.id)
    from store.scoring import save_scores

    save_scores(store, [{"run_id": r.id, "scores": [{"metric": "clip_t", "backbone": "open_clip:old", "value": 0.3}]}
                        for r in runs])
    req, _ = request_scoring(store, exp.id, ("clip",))
    assert len(runs_to_score(store, req, {"clip": "open_clip:old"})) == 0
    assert len(runs_to_score(store, req, {"clip": "open_clip:new"})) == len(runs)


# ---------------------------------------------------------------- engine session record
def test_runs_link_one_engine_session_per_loaded_model(store, tmp_path):
    from engine.provenance import library_versions

    exp = _experiment(store, tmp_path, seeds="0,1")
    _generate(store)
    runs = _runs(store, exp.id)
    assert {r.session_id for r in runs} != {None} and len({r.session_id for r in runs}) == 1
    with store.session() as s:
        (sess,) = s.exec(select(EngineSession)).all()
    assert sess.model == "fake-model" and sess.backend == "fake" and sess.worker_id == "gen"
    assert sess.versions == library_versions() and sess.torch_version == library_versions().get("torch", "")
    assert sess.mtp_version.startswith(library_versions()["mtp"])


def test_diffusers_session_records_unet_hash_dtype_and_device(store, tiny_model_dir):
    pytest.importorskip("torch")
    from engine.backends.diffusion import PipelineBackend
    from engine.scoring import weights_digest

    spec = ExperimentSpec(model=str(tiny_model_dir), source_prompt="a photo of a dog", target_prompts=["a dog"],
                          num_steps=2, width=64, height=64, seeds="0", start_step="0", final_step="end",
                          baseline=False)
    exp = save_experiment(store, "tiny", spec, queue=True)
    Worker(store, PipelineBackend("cpu", home=store.home), WorkerConfig(once=True, heartbeat_s=0.2),
           worker_id="tiny").run()
    (run,) = _runs(store, exp.id)
    with store.session() as s:
        sess = s.get(EngineSession, run.session_id)
    unet = next(Path(tiny_model_dir, "unet").glob("diffusion_pytorch_model*"))
    assert sess.model_hash == weights_digest(unet, 64)
    assert sess.dtype == "torch.float32" and sess.device == "cpu" and sess.backend == "diffusers"


def test_runs_csv_carries_the_session(store, tmp_path):
    import csv

    from store.report.export import export_runs_csv

    exp = _experiment(store, tmp_path, seeds="0")
    _generate(store)
    out = export_runs_csv(store, exp.id, "runs.csv", folder=tmp_path)
    rows = list(csv.DictReader(open(out)))
    assert rows and all(r["session_model"] == "fake-model" and r["session_backend"] == "fake" for r in rows)
    for col in ("session_torch_version", "session_diffusers_version", "session_transformers_version",
                "session_open_clip_version", "session_mtp_version", "session_dtype", "session_device",
                "session_model_revision", "session_model_hash", "score_error"):
        assert col in rows[0]


# ---------------------------------------------------------------- the engine refuses at start
def test_engine_refuses_at_start_without_scoring_weights_and_keeps_the_queue(store, tmp_path):
    exp = _experiment(store, tmp_path, seeds="0")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("MTP_ENGINE_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "--home", str(store.home.root), "--once",
                           "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4
    err = proc.stderr
    assert "ViT-B-32-quickgelu/openai" in err and "--no-score" in err and "cache" in err
    runs = _runs(store, exp.id)
    assert {r.status for r in runs} == {RunStatus.QUEUED}  # nothing generated, nothing failed
    assert all(r.image_path is None for r in runs)
