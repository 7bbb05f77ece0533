"""The method axis: expansion into sets, group keys, baselines, refusals, the schema-4 migration
and the queue's whole-set claims."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter, defaultdict

import pytest
from sqlmodel import select

from store.sweep.grammar import SweepError
from store.sweep.methods import METHODS, decode_params, sweep_params
from store.sweep.spec import ExperimentSpec, expand, group_key

PROMPTS = ["a dog on the beach", "a dog in the snow", "a dog in a car"]


def spec(**kw) -> ExperimentSpec:
    base = dict(
        model="tiny",
        target_prompts=list(PROMPTS),
        num_steps=10,
        seeds="0,1",
        layers="decoder",
        start_step="1",
        final_step="end",
        mask_words="dog",
        mask_threshold="otsu",
    )
    base.update(kw)
    return ExperimentSpec(**base)


def test_masactrl_rows_and_keys_are_unchanged_by_the_method_axis():
    old = spec(method="masactrl")
    rows = expand(old)
    # P prompts x S seeds x (baseline + 1 control)
    assert len(rows) == 3 * 2 * 2
    assert {r["method"] for r in rows} == {"masactrl"} and {r["method_params"] for r in rows} == {
        ""
    }
    for r in rows:
        # The key hashes only the shared-source settings, as before methods existed.
        assert r["group_key"] == group_key({k: v for k, v in r.items() if k != "method"})


def test_a_set_method_makes_one_set_per_seed_and_config_with_its_baseline_set():
    rows = expand(
        spec(method="consistory", method_params={"consistory": {"mask_dropout": "0,0.5"}})
    )
    # per seed: a baseline set + 2 parameter values, each a set of 3 prompts
    assert len(rows) == 2 * (1 + 2) * 3
    sets = defaultdict(list)
    for r in rows:
        sets[r["group_key"]].append(r)
    assert len(sets) == 2 * 3
    for members in sets.values():
        assert [m["prompt_index"] for m in members] == [0, 1, 2]
        assert [m["target_prompt"] for m in members] == PROMPTS
        one = {(m["seed"], m["is_baseline"], m["method_params"], m["mask_words"]) for m in members}
        assert len(one) == 1  # a set shares everything but its prompt
    baselines = [ms for ms in sets.values() if ms[0]["is_baseline"]]
    assert len(baselines) == 2  # one per seed
    for ms in baselines:
        assert all(m["method"] == "consistory" and m["mask_mode"] == "off" for m in ms)
        assert all(m["layers"] == "" and m["method_params"] == "" for m in ms)
    dropouts = Counter(
        decode_params("consistory", r["method_params"])["mask_dropout"]
        for r in rows
        if not r["is_baseline"]
    )
    assert dropouts == {0.0: 6, 0.5: 6}
    controlled = [r for r in rows if not r["is_baseline"]]
    assert {r["mask_mode"] for r in controlled} == {"auto"}
    assert {r["mask_threshold"] for r in controlled} == {None}  # Otsu, the authors' threshold


def test_three_methods_side_by_side_count_and_keys():
    rows = expand(spec(method="masactrl,consistent_sa,consistory"))
    by = Counter(r["method"] for r in rows)
    assert by == {"masactrl": 12, "consistent_sa": 12, "consistory": 12}
    keys = defaultdict(set)
    for r in rows:
        keys[r["method"]].add(r["group_key"])
    # masactrl: one source pass per seed (all prompts read it); set methods: 2 sets per seed
    assert len(keys["masactrl"]) == 2 and len(keys["consistent_sa"]) == 4
    assert not keys["consistent_sa"] & keys["consistory"]  # distinct methods never share a set
    sa = [r for r in rows if r["method"] == "consistent_sa"]
    assert {r["mask_mode"] for r in sa} == {"off"}  # no mask knob
    assert json.loads(next(r for r in sa if not r["is_baseline"])["method_params"]) == json.loads(
        sweep_params("consistent_sa")[0]
    )
    assert [r["grid_index"] for r in rows] == list(range(len(rows)))


def test_a_swept_layer_axis_makes_more_sets():
    rows = expand(spec(method="consistent_sa", layers="decoder,up_blocks.3", seeds="0"))
    assert len({r["group_key"] for r in rows}) == 3  # baseline + one per layer set
    assert len(rows) == 9


@pytest.mark.parametrize(
    "kw, field, words",
    [
        (dict(method="consistent_sa", mask_mode="auto"), "mask_mode", "no subject mask"),
        (dict(method="consistory", mask_words="-"), "mask_words", "subject word"),
        (dict(method="consistory", mask_threshold="0.3"), "mask_threshold", "otsu"),
        (dict(method="consistory", mask_words="cat"), "mask_words", "'cat' not in the prompt"),
        (dict(method="consistent_sa", target_prompts=["a dog"]), "target_prompts", "at least 2"),
        (
            dict(method="consistory", method_params={"consistory": {"n_anchors": "4"}}),
            "method_params.consistory.n_anchors",
            "at most the set size",
        ),
        (
            dict(method="consistent_sa", method_params={"consistent_sa": {"id_length": "5"}}),
            "method_params.consistent_sa.id_length",
            "at most the set size",
        ),
        (
            dict(method="consistory", method_params={"consistory": {"mask_dropout": "0,2"}}),
            "method_params.consistory.mask_dropout",
            "above the maximum",
        ),
        (
            dict(method="consistory", method_params={"consistory": {"bogus": "1"}}),
            "method_params.consistory",
            "unknown parameter 'bogus'",
        ),
        (dict(method="masactrl,storydiffusion"), "method", "'storydiffusion' is not one of"),
        (
            dict(method="consistory", source_image="/x.png", invert=True),
            "source_image",
            "no source image",
        ),
    ],
)
def test_combinations_that_mean_nothing_are_refused_naming_the_field(kw, field, words):
    with pytest.raises(SweepError) as err:
        expand(spec(**kw))
    assert err.value.field == field
    assert words in str(err.value)


def test_a_mask_setting_used_by_one_method_is_not_refused_for_another():
    # masactrl takes the mask and the numeric threshold; consistent_sa ignores the mask axes and
    # consistory thresholds with Otsu: together they mean something.
    rows = expand(
        spec(method="masactrl,consistent_sa,consistory", mask_mode="auto", mask_threshold="0.2")
    )
    masa = [r for r in rows if r["method"] == "masactrl" and not r["is_baseline"]]
    assert {r["mask_threshold"] for r in masa} == {0.2}
    assert {
        r["mask_threshold"] for r in rows if r["method"] == "consistory" and not r["is_baseline"]
    } == {None}
    assert {r["mask_mode"] for r in rows if r["method"] == "consistent_sa"} == {"off"}


def test_spec_json_round_trips_method_and_params_and_lists_are_sweeps():
    s = spec(method="consistory", method_params={"consistory": {"mask_dropout": [0, 0.5]}})
    back = ExperimentSpec.from_json(s.to_json())
    assert back.method == "consistory" and back.method_params == s.method_params
    assert len(expand(back)) == len(
        expand(spec(method="consistory", method_params={"consistory": {"mask_dropout": "0,0.5"}}))
    )
    # Old spec files without the fields still load (MasaCtrl).
    old = ExperimentSpec.from_json({"target_prompts": PROMPTS})
    assert old.method == "masactrl" and old.method_params == {}


def test_every_method_has_its_authors_defaults_in_canonical_json():
    for method in METHODS:
        texts = sweep_params(method)
        assert len(texts) == 1
        if METHODS[method]:
            assert json.loads(texts[0]) == {p.name: p.default for p in METHODS[method]}


def test_version_3_database_gains_the_method_columns(home):
    from store.db import SCHEMA_VERSION, Store
    from store.models import Run
    from tests.tui import seed_experiment

    store = Store(home)
    seed_experiment(store)
    store.close()
    con = sqlite3.connect(home.root / "mtp.db")
    cols = [
        r[1]
        for r in con.execute("PRAGMA table_info(run)")
        if r[1] not in ("method", "method_params", "score_error", "session_id")
    ]
    # SQLite cannot drop an indexed column: copy the table without it (the FK columns too).
    con.execute(f"CREATE TABLE run_v3 AS SELECT {', '.join(cols)} FROM run")
    con.execute("DROP TABLE run")
    con.execute("ALTER TABLE run_v3 RENAME TO run")
    con.execute("ALTER TABLE run ADD COLUMN score_error TEXT")
    con.execute("ALTER TABLE run ADD COLUMN session_id INTEGER")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    n = con.execute("select count(*) from run").fetchone()[0]
    con.close()
    store = Store(home)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        with store.session() as s:
            runs = list(s.exec(select(Run)))
        assert len(runs) == n > 0
        assert {(r.method, r.method_params) for r in runs} == {("masactrl", "")}
    finally:
        store.close()


def test_a_set_is_claimed_whole_whatever_max_batch_says(store):
    from store import queue
    from store.models import Run
    from store.queries import save_experiment

    exp = save_experiment(
        store,
        "sets",
        spec(method="masactrl,consistory", seeds="0", baseline=False),
        queue=True,
    )
    claimed = []
    while batch := queue.claim_group(store, "w:1:cpu", max_batch=2):
        claimed.append(batch)
        queue.complete_runs(
            store, "w:1:cpu", [{"run_id": r.id, "duration_s": 0.1, "scores": []} for r in batch]
        )
    sets = [b for b in claimed if b[0].method == "consistory"]
    assert len(sets) == 1 and [r.prompt_index for r in sets[0]] == [0, 1, 2]
    # MasaCtrl's 3 targets of one source still follow max_batch
    assert sorted(len(b) for b in claimed if b[0].method == "masactrl") == [1, 2]
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
    assert Counter(r.status for r in runs) == {"done": len(runs)} and len(runs) == 3 + 3


def test_results_and_grids_group_by_method(store):
    from store import queue
    from store.queries import save_experiment
    from store.report.aggregate import aggregate
    from store.report.grid_plan import plan_grid
    from store.sweep.spec import swept_axes

    s = spec(
        method="masactrl,consistory",
        seeds="0",
        method_params={"consistory": {"mask_dropout": "0,0.5"}},
    )
    assert {"method", "method_params"} <= set(swept_axes(s))
    exp = save_experiment(store, "by-method", s, queue=True)
    while batch := queue.claim_group(store, "w:1:cpu"):
        queue.complete_runs(
            store,
            "w:1:cpu",
            [
                {
                    "run_id": r.id,
                    "duration_s": 0.1,
                    "scores": [
                        {"metric": "clip_t", "backbone": "b", "value": 0.1 * (1 + r.prompt_index)}
                    ],
                }
                for r in batch
            ],
        )
    agg = aggregate(store, exp.id, "method")
    rows = {(r.is_baseline, r.value): r.n_runs for r in agg}
    # baselines split by method too: each method's baseline is its own plain generation
    assert rows == {
        (True, "masactrl"): 3,
        (True, "consistory"): 3,
        (False, "masactrl"): 3,
        (False, "consistory"): 6,
    }
    plan = plan_grid(store, exp.id, y="method", x="target_prompt")
    assert plan is not None and plan.y.name == "method"
    assert {k[1] for k in plan.row_keys if k[0] == "value"} == {"masactrl", "consistory"}
    # method_params pins only the methods that have parameters: masactrl still fills its row
    assert len(plan.axes["method_params"].values) == 2 and "method_params" in plan.pins
    cells = plan.panels[0].cells
    for method in ("masactrl", "consistory"):
        row = [cells.get((("value", method), ("value", i))) for i in range(3)]
        assert all(r is not None and r["method"] == method for r in row), method


def test_a_set_with_a_run_charged_by_engine_deaths_is_still_claimed_whole(store):
    from store import queue
    from store.models import Run
    from store.queries import save_experiment

    save_experiment(
        store, "charged", spec(method="consistent_sa", seeds="0", baseline=False), queue=True
    )
    with store.write() as s:
        run = s.exec(select(Run).where(Run.prompt_index == 1)).one()
        run.crashes = 1  # MasaCtrl would claim such a run alone
        s.add(run)
    batch = queue.claim_group(store, "w:1:cpu", max_batch=1)
    assert sorted(r.prompt_index for r in batch) == [0, 1, 2]
