import numpy as np
import pytest
from PIL import Image

from store.demo import seed_demo
from store.models import Run, Score
from store.queries import (
    InputError,
    RunFilter,
    add_tag,
    check_image,
    counts_by_status,
    duplicate_experiment,
    experiment_by_ref,
    get_run,
    list_experiments,
    list_runs,
    neighbour_run,
    queue_experiment,
    save_concept,
    save_experiment,
    update_runs,
)
from store.sweep.spec import ExperimentSpec


def _png(path, size=16):
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(path)
    return path


def test_concept_round_trip_copies_reference_images(store, tmp_path):
    refs = [_png(tmp_path / "a.png"), _png(tmp_path / "b.png")]
    c = save_concept(
        store, "corgi", token="<new1>", class_word="dog", ref_images=refs, base_model="org/model"
    )
    assert len(c.ref_images) == 2
    for rel in c.ref_images:
        copied = store.home.resolve_artifact(rel)
        assert copied.is_file() and store.home.concepts in copied.parents
    refs[0].unlink()  # the originals can go: the data folder holds its own copies
    assert store.home.resolve_artifact(c.ref_images[0]).is_file()


@pytest.mark.parametrize(
    "kw,fragment",
    [
        (dict(name=""), "needs a name"),
        (dict(base_model="/nowhere/model"), "does not exist"),
        (dict(weights_kind="lora", weights_path="/nowhere/w.safetensors"), "does not exist"),
        (dict(weights_kind="magic"), "not one of"),
    ],
)
def test_bad_concepts_are_rejected_and_write_nothing(store, kw, fragment):
    args = dict(name="x", base_model="org/model")
    args.update(kw)
    with pytest.raises(InputError, match=fragment):
        save_concept(store, **args)
    assert list_experiments(store) == []


def test_unreadable_image_is_rejected_with_path_and_reason(store, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        check_image(bad)
    with pytest.raises(InputError, match="broken.png"):
        save_concept(store, "c", ref_images=[bad], base_model="org/model")
    with pytest.raises(InputError, match="no such file"):
        check_image(tmp_path / "missing.png")


def test_draft_then_queue_then_duplicate(store):
    spec = ExperimentSpec(target_prompts=["a", "b"], seeds="0-2", final_step="10,20")
    exp = save_experiment(store, "fs", spec)
    assert exp.status == "draft" and counts_by_status(store, exp.id) == {}
    exp = queue_experiment(store, exp.id)
    assert exp.status == "queued" and counts_by_status(store, exp.id) == {"queued": exp.run_count}
    assert exp.run_count == 2 * 3 * (1 + 2)
    with pytest.raises(InputError, match="already queued"):
        queue_experiment(store, exp.id)
    copy = duplicate_experiment(store, exp.id)
    assert copy.status == "draft" and copy.spec_json == exp.spec_json and copy.id != exp.id
    assert experiment_by_ref(store, "fs").id == exp.id
    assert experiment_by_ref(store, str(copy.id)).id == copy.id


def test_bad_sweep_writes_nothing(store):
    from store.sweep.grammar import SweepError

    with pytest.raises(SweepError):
        save_experiment(store, "bad", ExperimentSpec(final_step="4-"), queue=True)
    assert list_experiments(store) == [] and counts_by_status(store) == {}


def test_paging_filtering_sorting_in_sql(store):
    spec = ExperimentSpec(
        target_prompts=["a dog on the beach", "a dog in snow"],
        seeds="0-4",
        layers="encoder,decoder",
        final_step="10,20,30",
    )
    exp = save_experiment(store, "grid", spec, queue=True)
    all_rows, total = list_runs(store, RunFilter(experiment_id=exp.id), limit=1000)
    assert total == exp.run_count == len(all_rows) == 2 * 5 * (1 + 6)
    page1, t = list_runs(
        store,
        RunFilter(experiment_id=exp.id, equals={"layers": "decoder"}),
        sort="final_step",
        descending=True,
        limit=7,
    )
    assert t == 2 * 5 * 3 and len(page1) == 7
    assert all(r.layers == "decoder" for r in page1)
    assert [r.final_step for r in page1] == sorted((r.final_step for r in page1), reverse=True)
    page2, _ = list_runs(
        store,
        RunFilter(experiment_id=exp.id, equals={"layers": "decoder"}),
        sort="final_step",
        descending=True,
        offset=7,
        limit=7,
    )
    assert not {r.id for r in page1} & {r.id for r in page2}
    snow, t = list_runs(store, RunFilter(experiment_id=exp.id, text="snow", baseline=False))
    assert t == 5 * 6 and all("snow" in r.target_prompt for r in snow)
    with pytest.raises(InputError):
        list_runs(store, sort="drop table")


def test_sort_by_score_and_tags(store):
    exp = save_experiment(
        store, "s", ExperimentSpec(final_step="10,20,30", baseline=False), queue=True
    )
    runs, _ = list_runs(store, RunFilter(experiment_id=exp.id))
    with store.write() as s:
        for value, run in zip([0.2, 0.9, 0.5], runs):
            s.add(Score(run_id=run.id, metric="clip_t", backbone="b", value=value))
    ranked, _ = list_runs(
        store, RunFilter(experiment_id=exp.id), sort="score:clip_t", descending=True
    )
    assert [r.id for r in ranked] == [runs[1].id, runs[2].id, runs[0].id]
    assert add_tag(store, [runs[0].id], "keep") == 1
    assert add_tag(store, [runs[0].id, runs[1].id], "keep") == 1  # not added twice
    assert add_tag(store, [runs[0].id], "best") == 1
    assert get_run(store, runs[0].id).tags == "keep,best"
    assert list_runs(store, RunFilter(tag="best"))[1] == 1
    update_runs(store, [runs[2].id], notes="odd", marked=True)
    assert list_runs(store, RunFilter(marked=True))[0][0].notes == "odd"
    with pytest.raises(InputError):
        update_runs(store, [runs[0].id], status="done")


def test_neighbours_follow_grid_order(store):
    exp = save_experiment(store, "n", ExperimentSpec(final_step="10,20,30"), queue=True)
    runs, _ = list_runs(store, RunFilter(experiment_id=exp.id), sort="id")
    assert neighbour_run(store, runs[1], +1).id == runs[2].id
    assert neighbour_run(store, runs[1], -1).id == runs[0].id
    assert neighbour_run(store, runs[0], -1) is None


def test_demo_seed_is_idempotent(store):
    c1, e1 = seed_demo(store)
    c2, e2 = seed_demo(store)
    assert (c1.id, e1.id) == (c2.id, e2.id)
    assert len(c1.ref_images) == 3 and e1.status == "queued"
    assert {row.experiment.status for row in list_experiments(store)} == {"queued", "draft"}


def test_run_columns_hold_every_parameter(store):
    exp = save_experiment(
        store,
        "cols",
        ExperimentSpec(
            mask_mode="auto",
            mask_words="dog",
            mask_threshold="otsu",
            target_prompts=["a dog"],
            baseline=False,
        ),
        queue=True,
    )
    run = list_runs(store, RunFilter(experiment_id=exp.id))[0][0]
    assert isinstance(run, Run)
    assert (run.mask_mode, run.mask_words, run.mask_threshold, run.layers) == (
        "auto",
        "dog",
        None,
        "decoder",
    )
    assert (run.start_step, run.final_step, run.skip_interval, run.num_steps) == (4, 50, 1, 50)


def test_experiment_state_says_what_its_runs_do():
    """Home showed a running experiment as "queued" and a fully failed one as "done"."""
    from store.models import Experiment
    from store.queries import ExperimentRow

    def state(status="queued", **counts):
        return ExperimentRow(Experiment(name="x", status=status), counts).state

    assert state(queued=3, running=1, done=2) == "running"
    assert state(queued=3, done=2) == "queued"
    assert state("done", done=4) == "done"
    assert state("done", done=3, failed=1) == "partial"
    assert state("done", failed=4) == "failed"
    assert state("done", cancelled=4) == "cancelled"
    assert state("done", failed=1, cancelled=3) == "failed"
    assert state("draft") == "draft"
    assert state("archived", done=4) == "archived"
