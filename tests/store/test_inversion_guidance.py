"""The inversion guidance setting on the store side: grid, group keys, checks, migration, export."""

from __future__ import annotations

import csv
import sqlite3

import pytest
from PIL import Image
from sqlmodel import select

from store.db import SCHEMA_VERSION, Store
from store.models import Run, Score
from store.queries import save_experiment
from store.report.aggregate import aggregate
from store.report.export import export_runs_csv
from store.sweep.grammar import SweepError
from store.sweep.spec import ExperimentSpec, expand, swept_axes


def spec(**kw):
    base = dict(
        source_prompt="a photo of a dog",
        source_image="/data/dog.png",
        target_prompts=["a dog on the beach", "a dog in the snow"],
        num_steps=50,
        seeds="0,1",
        final_step="20,end",
    )
    base.update(kw)
    return ExperimentSpec(**base)


def test_each_inversion_guidance_is_its_own_source_with_its_own_baselines():
    rows = expand(spec(inversion_guidance="1,7.5"))
    assert {r["inversion_guidance"] for r in rows} == {1.0, 7.5} and all(r["invert"] for r in rows)
    baselines = [
        (r["target_prompt"], r["seed"], r["inversion_guidance"]) for r in rows if r["is_baseline"]
    ]
    assert len(baselines) == len(set(baselines)) == 2 * 2 * 2
    keys = {}
    for r in rows:
        keys.setdefault((r["seed"], r["inversion_guidance"]), set()).add(r["group_key"])
    assert all(len(k) == 1 for k in keys.values())  # shared across prompts and control settings
    assert len({next(iter(k)) for k in keys.values()}) == 4
    assert "inversion_guidance" in swept_axes(spec(inversion_guidance="1,7.5"))


def test_default_is_one_and_the_setting_is_ignored_without_an_image():
    assert {r["inversion_guidance"] for r in expand(spec())} == {1.0}
    generated = spec(source_image=None)
    rows = expand(generated)
    assert {r["inversion_guidance"] for r in rows} == {None} and not any(r["invert"] for r in rows)
    generated.inversion_guidance = "7.5"
    assert expand(generated) == rows


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(inversion_guidance="0.5"), "below the minimum 1"),
        (dict(inversion_guidance="lots"), "not a number"),
        (dict(inversion_guidance="1,7.5", source_image=None), "image to invert"),
    ],
)
def test_bad_inversion_guidance_names_its_field(kw, message):
    with pytest.raises(SweepError, match=message) as info:
        expand(spec(**kw))
    assert info.value.field == "inversion_guidance"


def test_invert_without_an_image_is_refused():
    with pytest.raises(SweepError, match="needs an image") as info:
        expand(spec(source_image=None, invert=True))
    assert info.value.field == "source_image"


def test_older_specs_and_numbers_in_spec_files_load():
    old = ExperimentSpec.from_json({"source_image": "/data/dog.png", "seeds": "0"})
    assert old.inversion_guidance == "1"
    from_file = ExperimentSpec.from_json(
        {"source_image": "/data/dog.png", "seeds": "0", "inversion_guidance": 7.5}
    )
    assert {r["inversion_guidance"] for r in expand(from_file)} == {7.5}


def test_recorded_exported_and_groupable(store, tmp_path):
    img = tmp_path / "dog.png"
    Image.new("RGB", (16, 16), (120, 80, 40)).save(img)
    exp = save_experiment(
        store,
        "inv",
        spec(
            source_image=str(img),
            inversion_guidance="1,7.5",
            seeds="0",
            target_prompts=["a dog"],
            final_step="end",
        ),
        queue=True,
    )
    with store.write() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
        for r in runs:
            r.status = "done"
            s.add(
                Score(run_id=r.id, metric="clip_t", backbone="b", value=0.1 * r.inversion_guidance)
            )
    path = export_runs_csv(store, exp.id, "inv.csv")
    with open(path, newline="") as fh:
        exported = list(csv.DictReader(fh))
    assert sorted(float(r["inversion_guidance"]) for r in exported) == [1.0, 1.0, 7.5, 7.5]
    rows = aggregate(store, exp.id, "inversion_guidance")
    by_value = {row.value: row.mean("clip_t") for row in rows if not row.is_baseline}
    assert by_value == pytest.approx({1.0: 0.1, 7.5: 0.75})
    # Each inversion guidance inverts its own source: its baseline is its own too, never pooled.
    baselines = {row.value: row.mean("clip_t") for row in rows if row.is_baseline}
    assert baselines == pytest.approx({1.0: 0.1, 7.5: 0.75})


def test_schema_1_database_gains_the_column_and_old_inversions_read_as_one(home, tmp_path):
    s = Store(home)
    dog = tmp_path / "dog.png"  # source images are checked and copied when an experiment is saved
    Image.new("RGB", (16, 16)).save(dog)
    save_experiment(
        s,
        "generated",
        spec(
            source_image=None, seeds="0", target_prompts=["a dog"], final_step="end", baseline=False
        ),
        queue=True,
    )
    save_experiment(
        s,
        "inverted",
        spec(
            source_image=str(dog),
            seeds="0",
            target_prompts=["a dog"],
            final_step="end",
            baseline=False,
        ),
        queue=True,
    )
    s.close()
    # Make it what a schema-1 mtp wrote: no column, version 1.
    con = sqlite3.connect(home.db_path)
    con.execute("ALTER TABLE run DROP COLUMN inversion_guidance")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()

    s = Store(home)
    assert s.schema_version() == SCHEMA_VERSION >= 2
    with s.session() as sess:
        runs = {r.source_image is not None: r for r in sess.exec(select(Run))}
    assert runs[True].inversion_guidance == 1.0 and runs[True].invert
    assert runs[False].inversion_guidance is None
    s.close()
