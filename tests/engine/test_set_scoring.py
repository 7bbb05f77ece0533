"""Set consistency scores (clip_i_set, dino_set, dreamsim_set): mean pairwise similarity among a
set's images, on the tiny offline CLIP/DINO; written by the worker for whole sets and by
`mtp score` over every image of a set."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sqlmodel import select

pytest.importorskip("torch")

from engine.scoring import Scorer, pairwise_means  # noqa: E402
from store.models import Run, Score  # noqa: E402
from store.paths import Home  # noqa: E402


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return Scorer.for_home(Home.resolve(tmp_path_factory.mktemp("set-scoring")), demo=True)


def _noise(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _by_metric(rows):
    return {d["metric"]: d["value"] for d in rows}


def test_identical_images_are_perfectly_consistent(scorer):
    im = _noise(1)
    out = scorer.set_scores([im, im.copy(), im.copy()])
    for rows in out:
        values = _by_metric(rows)
        assert set(values) == {"clip_i_set", "dino_set"}
        assert values["clip_i_set"] == pytest.approx(1.0, abs=1e-5)
        assert values["dino_set"] == pytest.approx(1.0, abs=1e-5)


def test_mean_pairwise_formula_by_hand_on_three_images(scorer):
    import torch

    images = [_noise(10), _noise(11), _noise(12)]
    out = scorer.set_scores(images)
    feats = scorer._encode_clip_images(images)  # normalised embeddings
    c = lambda i, j: float(torch.dot(feats[i], feats[j]))  # noqa: E731
    by_hand = [
        (c(0, 1) + c(0, 2)) / 2,
        (c(1, 0) + c(1, 2)) / 2,
        (c(2, 0) + c(2, 1)) / 2,
    ]
    got = [_by_metric(rows)["clip_i_set"] for rows in out]
    assert got == pytest.approx(by_hand, abs=1e-6)
    # not all equal: each image's own pairs
    assert max(got) - min(got) > 1e-6
    rows = out[0]
    assert {r["backbone"] for r in rows if r["metric"] == "clip_i_set"} == {scorer.clip_backbone}


def test_distance_is_one_minus_cosine_and_a_single_image_has_no_pair():
    import torch

    feats = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    cos = pairwise_means(feats)
    dist = pairwise_means(feats, distance=True)
    r = 2**-0.5
    assert cos == pytest.approx([(0 + r) / 2, (0 + r) / 2, (r + r) / 2])
    assert dist == pytest.approx([1 - v for v in cos])


def test_a_set_of_one_image_gets_no_set_score(scorer):
    assert scorer.set_scores([_noise(3)]) == [[]]


def _set_experiment(store):
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    spec = ExperimentSpec(
        model="fake-model",
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach", "a dog in the snow", "a red dog"],
        num_steps=2,
        width=64,
        height=64,
        seeds="0",
        start_step="1",
        method="masactrl,consistent_sa",
    )
    return save_experiment(store, "sets", spec, queue=True)


def _scores(store, exp_id, metric):
    with store.session() as s:
        return {
            sc.run_id: sc.value
            for sc in s.exec(
                select(Score)
                .join(Run, Run.id == Score.run_id)
                .where(Run.experiment_id == exp_id, Score.metric == metric)
            )
        }


def test_worker_and_rescore_write_set_scores_on_set_runs_only(store, scorer):
    from engine.backends.fake import FakeBackend
    from engine.rescore import Rescorer
    from engine.worker import Worker, WorkerConfig
    from store import queue as q
    from store.scoring import request_scoring

    class Score_:
        """The engine's scorer shape: callable per batch, plus set_scores."""

        def __call__(self, images, texts, source, refs):
            return scorer.score(images, texts, source, refs)

        def set_scores(self, images):
            return scorer.set_scores(images)

    exp = _set_experiment(store)
    Worker(
        store,
        FakeBackend(),
        WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, max_batch=2),
        score=Score_(),
        worker_id="gen",
    ).run()
    with store.session() as s:
        runs = {r.id: r for r in s.exec(select(Run).where(Run.experiment_id == exp.id))}
    assert {r.status for r in runs.values()} == {"done"}
    got = _scores(store, exp.id, "clip_i_set")
    set_runs = {i for i, r in runs.items() if r.method == "consistent_sa"}
    assert set(got) == set_runs and len(set_runs) == 6
    # the fake paints flat colours from the prompt: recompute one set by hand from its files
    one = next(r for r in runs.values() if r.method == "consistent_sa" and not r.is_baseline)
    members = sorted(
        (r for r in runs.values() if r.group_key == one.group_key), key=lambda r: r.prompt_index
    )
    images = [Image.open(store.home.root / m.image_path).convert("RGB") for m in members]
    expected = [_by_metric(x)["clip_i_set"] for x in scorer.set_scores(images)]
    assert [got[m.id] for m in members] == pytest.approx(expected, abs=1e-6)

    # `mtp score --rescore` computes them again from the stored images, whole sets only
    with store.write() as s:
        for sc in s.exec(select(Score).where(Score.metric == "clip_i_set")):
            s.delete(sc)
    q.register_worker(store, "cpu", "scorer")
    request_scoring(store, exp.id, "clip", rescore=True)
    from engine.scoring import scored_text

    assert Rescorer(store, "scorer", lambda families: scorer, scored_text).run_one()
    again = _scores(store, exp.id, "clip_i_set")
    assert again == pytest.approx(got, abs=1e-6)


def test_masactrl_prompt_sets_of_a_study_unit_get_set_scores_across_batches(store, scorer):
    """In a study the suite makes a unit's prompts one set: MasaCtrl's targets of one seed and
    configuration are scored as a set once its last image is committed (here over batches of 2),
    and `mtp score --rescore` computes the same values from the files."""
    from pathlib import Path

    from engine.backends.fake import FakeBackend
    from engine.rescore import Rescorer
    from engine.scoring import scored_text
    from engine.worker import Worker, WorkerConfig
    from store import queue as q
    from store.models import Experiment
    from store.scoring import request_scoring
    from store.studies.create import create_study
    from store.studies.suites import store_suite
    from store.suites import ParsedSuite, ParsedUnit
    from store.sweep.spec import ExperimentSpec

    class Score_:
        def __call__(self, images, texts, source, refs):
            return scorer.score(images, texts, source, refs)

        def set_scores(self, images):
            return scorer.set_scores(images)

    unit = ParsedUnit(
        name="dogs",
        group="animals",
        subject_prompt="a photo of a dog",
        prompts=("a dog on the beach", "a dog in the snow", "a red dog"),
        subject_words=("dog",),
    )
    store_suite(
        store,
        ParsedSuite(layout="consistory", name="s", units=(unit,), prompt_rule="", source=Path(".")),
    )
    spec = ExperimentSpec(
        model="fake-model",
        num_steps=4,
        width=64,
        height=64,
        seeds="0,1",
        start_step="1",
        final_step="2,end",
    )
    study, total = create_study(store, "st", "s", spec, queue=True)
    assert total == 2 * 3 * 3  # seeds x prompts x (baseline + 2 configurations)
    Worker(
        store,
        FakeBackend(),
        WorkerConfig(once=True, heartbeat_s=0.2, poll_s=0.05, max_batch=2),
        score=Score_(),
        worker_id="gen",
    ).run()
    with store.session() as s:
        exp_id = s.exec(select(Experiment.id).where(Experiment.study_id == study.id)).one()
        runs = {r.id: r for r in s.exec(select(Run).where(Run.experiment_id == exp_id))}
    got = _scores(store, exp_id, "clip_i_set")
    assert set(got) == set(runs)  # every image is in a complete prompt set
    sets: dict = {}
    for r in runs.values():
        key = (r.seed, r.is_baseline, r.final_step)
        sets.setdefault(key, []).append(r)
    assert len(sets) == 6 and all(len(v) == 3 for v in sets.values())
    members = sorted(sets[(1, False, 2)], key=lambda r: r.prompt_index)
    images = [Image.open(store.home.root / m.image_path).convert("RGB") for m in members]
    expected = [_by_metric(x)["clip_i_set"] for x in scorer.set_scores(images)]
    assert [got[m.id] for m in members] == pytest.approx(expected, abs=1e-6)

    with store.write() as s:
        for sc in s.exec(select(Score).where(Score.metric == "clip_i_set")):
            s.delete(sc)
    q.register_worker(store, "cpu", "scorer")
    request_scoring(store, exp_id, "clip", rescore=True)
    assert Rescorer(store, "scorer", lambda families: scorer, scored_text).run_one()
    assert _scores(store, exp_id, "clip_i_set") == pytest.approx(got, abs=1e-6)
