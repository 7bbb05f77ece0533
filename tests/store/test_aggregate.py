"""Aggregates per parameter value, checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from sqlmodel import select

from store.models import Concept, Experiment, Run, Score
from store.queries import InputError
from store.report.aggregate import AggregateRow, Stat, aggregate, mark_pareto, scale_value, stat

B32 = "ViT-B-32/openai"


def make_experiment(store, name="exp", concepts=1) -> tuple[int, list[int]]:
    with store.write() as s:
        exp = Experiment(name=name, status="done")
        s.add(exp)
        ids = []
        for i in range(concepts):
            c = Concept(name=f"{name}-concept{i}", token="<new1>", class_word="dog")
            s.add(c)
            s.flush()
            ids.append(c.id)
        s.flush()
        return exp.id, ids


def add_runs(
    store, experiment_id, runs: list[dict], scores: list[dict[str, float]], backbone=B32
) -> list[int]:
    """Insert runs (column dicts) and per run a {metric: value} dict of scores; returns run ids."""
    ids = []
    with store.write() as s:
        for i, (cols, sc) in enumerate(zip(runs, scores)):
            run = Run(
                experiment_id=experiment_id,
                status=cols.pop("status", "done"),
                grid_index=cols.pop("grid_index", i),
                **cols,
            )
            s.add(run)
            s.flush()
            ids.append(run.id)
            for metric, value in sc.items():
                s.add(
                    Score(
                        run_id=run.id,
                        metric=metric,
                        backbone=backbone,
                        value=value,
                        scored_text="a photo of a dog" if metric == "clip_t" else None,
                    )
                )
    return ids


# Sweep order 25, 10, 40 (not numeric) with 2 prompts x 2 seeds each, plus one baseline per cell.
CLIP_T = {25: [0.30, 0.32, 0.28, 0.30], 10: [0.25, 0.27, 0.26, 0.26], 40: [0.24, 0.23, 0.25, 0.24]}
CLIP_I = {25: [0.80, 0.84, 0.82, 0.82], 10: [0.85, 0.87, 0.86, 0.86], 40: [0.84, 0.84, 0.84, 0.84]}
BASE_T, BASE_I = [0.33, 0.35, 0.31, 0.33], [0.70, 0.72, 0.68, 0.70]


def seed_sweep(store, name="sweep"):
    exp_id, (concept,) = make_experiment(store, name)
    runs, scores = [], []
    grid = 0
    for cell in range(4):  # (prompt, seed)
        prompt, seed = divmod(cell, 2)
        runs.append(
            dict(
                is_baseline=True,
                final_step=0,
                prompt_index=prompt,
                seed=seed,
                concept_id=concept,
                target_prompt=f"prompt {prompt}",
                grid_index=grid,
            )
        )
        scores.append({"clip_t": BASE_T[cell], "clip_i_ref": BASE_I[cell], "clip_i_src": 0.9})
        grid += 1
        for value in (25, 10, 40):
            runs.append(
                dict(
                    final_step=value,
                    prompt_index=prompt,
                    seed=seed,
                    concept_id=concept,
                    target_prompt=f"prompt {prompt}",
                    grid_index=grid,
                )
            )
            scores.append(
                {
                    "clip_t": CLIP_T[value][cell],
                    "clip_i_ref": CLIP_I[value][cell],
                    "clip_i_src": 0.9,
                }
            )
            grid += 1
    add_runs(store, exp_id, runs, scores)
    return exp_id


def test_stat_matches_hand_computation():
    st = stat([0.30, 0.32, 0.28, 0.30])
    assert st.n == 4
    assert st.mean == pytest.approx(0.30)
    assert st.std == pytest.approx(math.sqrt(0.0008 / 3))
    assert st.sem == pytest.approx(math.sqrt(0.0008 / 3) / 2)
    # With one value std/SEM are undefined (NaN, shown as "–"), not a real-looking 0.
    one = stat([0.5])
    assert (one.n, one.mean) == (1, 0.5) and math.isnan(one.std) and math.isnan(one.sem)


def test_aggregate_per_value_in_sweep_order_with_baseline_first(store):
    exp_id = seed_sweep(store)
    rows = aggregate(store, exp_id, "final_step")
    assert [r.label for r in rows] == ["baseline", "25", "10", "40"]
    base = rows[0]
    assert base.is_baseline and base.value is None and base.n_runs == 4
    assert base.metrics["clip_t"].mean == pytest.approx(0.33)
    r25 = rows[1]
    assert r25.n_runs == 4 and r25.n_concepts == 1
    assert r25.metrics["clip_t"].mean == pytest.approx(0.30)
    assert r25.metrics["clip_t"].std == pytest.approx(math.sqrt(0.0008 / 3))
    assert r25.metrics["clip_t"].sem == pytest.approx(math.sqrt(0.0008 / 3) / 2)
    assert r25.metrics["clip_i_ref"].mean == pytest.approx(0.82)
    assert rows[3].metrics["clip_i_ref"].std == pytest.approx(
        0.0, abs=1e-6
    )  # sums in SQL: ~1e-8 noise
    assert r25.backbones["clip_t"] == B32
    assert list(r25.metrics) == ["clip_t", "clip_i_ref", "clip_i_src"]


def test_pareto_flags_on_the_sweep(store):
    rows = aggregate(store, seed_sweep(store), "final_step")
    # 25 -> (0.30, 0.82), 10 -> (0.26, 0.86), 40 -> (0.24, 0.84) is beaten by 10 on both axes.
    assert {r.label: r.pareto for r in rows} == {
        "baseline": False,
        "25": True,
        "10": True,
        "40": False,
    }


def test_pareto_known_set():
    def row(label, x, y):
        return AggregateRow(
            "v", label, False, 1, 1, {"clip_t": Stat(1, x, 0, 0), "clip_i_src": Stat(1, y, 0, 0)}
        )

    rows = [
        row("a", 1, 5),
        row("b", 2, 4),
        row("c", 2, 3),
        row("d", 3, 1),
        row("e", 1, 5),
        row("f", 0.5, 0.5),
    ]
    mark_pareto(rows)
    # c is dominated by b (equal x, lower y); duplicates a/e do not dominate each other.
    assert [r.value for r in rows if r.pareto] == ["a", "b", "d", "e"]


def test_image_axis_falls_back_to_source():
    rows = [
        AggregateRow(
            "v", 1, False, 1, 1, {"clip_t": Stat(1, 0.2, 0, 0), "clip_i_src": Stat(1, 0.9, 0, 0)}
        ),
        AggregateRow(
            "v", 2, False, 1, 1, {"clip_t": Stat(1, 0.3, 0, 0), "clip_i_src": Stat(1, 0.8, 0, 0)}
        ),
    ]
    mark_pareto(rows)
    assert all(r.pareto for r in rows)


def test_several_concepts_are_averaged_per_concept_first(store):
    exp_id, (a, b) = make_experiment(store, "multi", concepts=2)
    add_runs(
        store,
        exp_id,
        [
            dict(final_step=10, concept_id=a, seed=0),
            dict(final_step=10, concept_id=a, seed=1),
            dict(final_step=10, concept_id=b, seed=0),
        ],
        [{"clip_t": 0.2}, {"clip_t": 0.4}, {"clip_t": 0.5}],
    )
    (row,) = aggregate(store, exp_id, "final_step")
    assert row.n_runs == 3 and row.n_concepts == 2
    st = row.metrics["clip_t"]
    assert st.n == 2
    assert st.mean == pytest.approx(0.4)  # mean of (0.3, 0.5), not of (0.2, 0.4, 0.5)
    assert st.std == pytest.approx(math.sqrt(0.02))


def test_scales():
    assert scale_value(0.3, "raw") == 0.3
    assert scale_value(0.3, "100") == pytest.approx(30.0)
    assert scale_value(0.3, "clipscore") == pytest.approx(0.75)
    assert scale_value(-0.1, "clipscore") == 0.0
    with pytest.raises(ValueError):
        scale_value(0.3, "percent")


def test_clipscore_scale_clips_before_averaging(store):
    exp_id, _ = make_experiment(store, "neg")
    add_runs(
        store,
        exp_id,
        [dict(final_step=10), dict(final_step=10)],
        [{"clip_t": -0.2}, {"clip_t": 0.4}],
    )
    (row,) = aggregate(store, exp_id, "final_step", scale="clipscore")
    assert row.metrics["clip_t"].mean == pytest.approx((0.0 + 1.0) / 2)


def test_backbone_choice(store):
    exp_id, _ = make_experiment(store, "bb")
    add_runs(
        store,
        exp_id,
        [dict(final_step=10, seed=0), dict(final_step=10, seed=1)],
        [{"clip_t": 0.2}, {"clip_t": 0.4}],
    )
    with store.write() as s:
        run_id = s.exec(
            Run.__table__.select().with_only_columns(Run.__table__.c.id).limit(1)
        ).scalar()
        s.add(Score(run_id=run_id, metric="clip_t", backbone="ViT-L-14/openai", value=0.9))
    (row,) = aggregate(store, exp_id, "final_step")
    assert row.backbones["clip_t"] == B32 and row.metrics["clip_t"].mean == pytest.approx(0.3)
    # ViT-L-14 scored one of the two planned runs: its one complete cell is compared, and the
    # table says the other cell was dropped.
    rows = aggregate(store, exp_id, "final_step", backbone="ViT-L-14/openai")
    (row,) = rows
    assert row.metrics["clip_t"].mean == pytest.approx(0.9) and row.metrics["clip_t"].n == 1
    assert rows.dropped["clip_t"].startswith("1 of 2 cells dropped")


def test_other_backbone_scores_never_reach_a_row(store):
    """Per metric only the chosen backbone counts: a value only the other backbone scored, and the
    other backbone's extra scores of a counted run, change neither rows, n, order nor flags."""
    exp_id, _ = make_experiment(store, "bb2")
    ids = add_runs(
        store,
        exp_id,
        [
            dict(final_step=20, grid_index=0),
            dict(final_step=20, grid_index=1, seed=1),
            dict(final_step=10, grid_index=2),
            dict(final_step=30, grid_index=3),
        ],
        [
            {"clip_t": 0.2, "clip_i_ref": 0.7},
            {"clip_t": 0.4, "clip_i_ref": 0.9},
            {"clip_t": 0.3},
            {},
        ],
    )
    with store.write() as s:
        s.add(Score(run_id=ids[0], metric="clip_t", backbone="ViT-L-14/openai", value=0.9))
        s.add(Score(run_id=ids[3], metric="clip_t", backbone="ViT-L-14/openai", value=0.1))
    rows = aggregate(store, exp_id, "final_step", cells="all")
    # final_step=30 has only a ViT-L-14 score: with B32 chosen it has nothing to show.
    assert [r.value for r in rows] == [20, 10]
    r20, r10 = rows
    assert r20.metrics["clip_t"].n == 2 and r20.metrics["clip_t"].mean == pytest.approx(0.3)
    assert r10.metrics["clip_t"].n == 1 and "clip_i_ref" in r10.missing
    assert {r.backbones["clip_t"] for r in rows} == {B32}


def test_a_run_holds_one_score_per_metric_and_backbone(store, tmp_path):
    from sqlalchemy.exc import IntegrityError

    from store.report.export import export_runs_csv

    exp_id, _ = make_experiment(store, "rescored")
    ids = add_runs(
        store,
        exp_id,
        [dict(final_step=10), dict(final_step=10)],
        [{"clip_t": 0.2}, {"clip_t": 0.4}],
    )
    with pytest.raises(IntegrityError):
        with store.write() as s:
            s.add(Score(run_id=ids[0], metric="clip_t", backbone=B32, value=0.6))
    (row,) = aggregate(store, exp_id, "final_step")
    # both runs are in one (prompt, seed) cell: n = 1 cell, the mean of 2 runs
    assert row.n_runs == 2 and row.metrics["clip_t"].n == 1 and row.runs_per_cell == (2, 2)
    assert row.metrics["clip_t"].mean == pytest.approx(0.3)
    text = export_runs_csv(store, exp_id, "r.csv", folder=tmp_path).read_text()
    assert ",0.2," in text and "0.6" not in text


def test_stats_from_sql_sums_match_two_pass():
    from store.report.aggregate import stat_from_sums

    values = [0.31, 0.29, 0.35, 0.27, 0.33]
    exact, summed = (
        stat(values),
        stat_from_sums(len(values), sum(values), sum(v * v for v in values)),
    )
    assert summed.n == exact.n and summed.mean == pytest.approx(exact.mean)
    assert summed.std == pytest.approx(exact.std, rel=1e-6) and summed.sem == pytest.approx(
        exact.sem, rel=1e-6
    )


def test_unknown_parameter_and_empty_experiment(store):
    exp_id, _ = make_experiment(store, "empty")
    assert aggregate(store, exp_id, "final_step") == []
    with pytest.raises(InputError):
        aggregate(store, exp_id, "id; drop table run")


# ---------------------------------------------------------------- honest aggregates
def unbalanced(store):
    """Two concepts; final_step 20 reached by concept A only; clip_i_ref missing for concept B
    (no reference images). Two seeds per cell, one baseline per concept and seed."""
    exp_id, (a, b) = make_experiment(store, "unbalanced", concepts=2)
    runs, scores = [], []

    def add(concept, seed, values, final_step=None):
        cols = dict(concept_id=concept, seed=seed, prompt_index=0, target_prompt="a dog")
        cols.update(
            dict(is_baseline=True, final_step=0)
            if final_step is None
            else dict(final_step=final_step)
        )
        runs.append(cols)
        scores.append(values)

    add(a, 0, {"clip_t": 0.40, "clip_i_ref": 0.60})
    add(a, 1, {"clip_t": 0.36, "clip_i_ref": 0.62})
    add(b, 0, {"clip_t": 0.30})
    add(b, 1, {"clip_t": 0.28})
    add(a, 0, {"clip_t": 0.30, "clip_i_ref": 0.80, "dino_ref": 0.50}, 10)
    add(a, 1, {"clip_t": 0.34, "clip_i_ref": 0.84, "dino_ref": 0.60}, 10)
    add(b, 0, {"clip_t": 0.26}, 10)
    add(b, 1, {"clip_t": 0.22}, 10)
    add(a, 0, {"clip_t": 0.20, "clip_i_ref": 0.90}, 20)
    add(a, 1, {"clip_t": 0.24, "clip_i_ref": 0.86}, 20)
    add_runs(store, exp_id, runs, scores)
    return exp_id


def test_unbalanced_concepts_keep_one_unit_and_flag_gaps(store):
    # every scored run (cells="all"): rows keep what they have and are flagged
    rows = aggregate(store, unbalanced(store), "final_step", cells="all")
    assert rows.unit == "concepts" and "each concept over its cells" in rows.unit_text
    assert "n = concepts" in rows.unit_text
    base, r10, r20 = rows
    assert [r.label for r in rows] == ["baseline", "10", "20"]
    # Baseline clip_t: concept means A (0.40+0.36)/2 = 0.38, B (0.30+0.28)/2 = 0.29 -> mean 0.335,
    # std = sqrt(2 * 0.045^2 / 1) = 0.0636396, SEM = std / sqrt(2) = 0.045.
    assert base.metrics["clip_t"].n == 2
    assert base.metrics["clip_t"].mean == pytest.approx(0.335)
    assert base.metrics["clip_t"].std == pytest.approx(math.sqrt(2 * 0.045**2))
    assert base.metrics["clip_t"].sem == pytest.approx(0.045)
    # final_step 10, clip_t: A 0.32, B 0.24 -> 0.28, SEM 0.04 over the two concepts (not over 4 runs:
    # run-level SEM would be std(0.30, 0.34, 0.26, 0.22) / 2 = 0.0258).
    assert r10.metrics["clip_t"].n == 2 and r10.n_runs == 4 and r10.n_concepts == 2
    assert r10.metrics["clip_t"].mean == pytest.approx(0.28)
    assert r10.metrics["clip_t"].sem == pytest.approx(0.04)
    # clip_i_ref exists for A only: its mean over one concept, SEM undefined, B named as missing.
    ci = r10.metrics["clip_i_ref"]
    assert (
        ci.n == 1 and ci.mean == pytest.approx(0.82) and math.isnan(ci.sem) and math.isnan(ci.std)
    )
    assert r10.missing["clip_i_ref"] == ["unbalanced-concept1", "2 of 4 planned runs"]
    assert "clip_t" not in r10.missing
    assert "unbalanced-concept1" in r10.incomplete and "clip_i_ref" in r10.incomplete
    # final_step 20 reached by A only: still concept unit (n = 1, SEM undefined), not a run-level
    # SEM of 0.02 over A's two seeds; every metric flags B.
    t20 = r20.metrics["clip_t"]
    assert t20.n == 1 and t20.mean == pytest.approx(0.22) and math.isnan(t20.sem)
    assert r20.missing["clip_t"] == r20.missing["clip_i_ref"] == ["unbalanced-concept1"]
    assert r20.missing["dino_ref"] == [
        "unbalanced-concept0",
        "unbalanced-concept1",
        "0 of 2 planned runs",
    ]
    # Incomplete rows are not ranked against complete ones.
    assert not r20.pareto and not r10.pareto


def test_clipscore_scales_text_alignment_only(store):
    exp_id = unbalanced(store)
    raw = aggregate(store, exp_id, "final_step", cells="all")
    rows = aggregate(store, exp_id, "final_step", scale="clipscore", cells="all")
    r10 = rows[1]
    # clip_t: A 2.5 * (0.30, 0.34) -> 0.80, B 2.5 * (0.26, 0.22) -> 0.60; mean 0.70, SEM 0.10.
    assert r10.metrics["clip_t"].mean == pytest.approx(0.70)
    assert r10.metrics["clip_t"].sem == pytest.approx(0.10)
    # CLIP-I and DINO keep their raw cosines.
    assert r10.metrics["clip_i_ref"].mean == pytest.approx(0.82)
    assert r10.metrics["dino_ref"].mean == pytest.approx(0.55)
    for old, new in zip(raw, rows):
        for m in ("clip_i_ref", "dino_ref"):
            if m in old.metrics:
                assert new.metrics[m].mean == pytest.approx(old.metrics[m].mean)
    assert rows.scale_of("clip_t") == "clipscore" and rows.scale_of("clip_i_ref") == "raw"
    assert rows.scale_of("dino_ref") == "raw" and rows.scale_of("dreamsim") == "raw"
    assert scale_value(0.4, "clipscore", metric="clip_i_ref") == 0.4
    assert scale_value(0.4, "clipscore", metric="dreamsim") == 0.4
    assert scale_value(0.4, "clipscore", metric="clip_t") == pytest.approx(1.0)
    assert any("clipscore" in line and "clip_t" in line for line in rows.describe())


def test_baseline_split_by_base_setting(store):
    rows = aggregate(store, unbalanced(store), "seed")
    bases = [r for r in rows if r.is_baseline]
    assert [r.label for r in bases] == ["baseline seed=0", "baseline seed=1"]
    # seed 0: A 0.40, B 0.30 -> 0.35; seed 1: A 0.36, B 0.28 -> 0.32 (pooled it would be 0.335).
    assert bases[0].metrics["clip_t"].mean == pytest.approx(0.35)
    assert bases[1].metrics["clip_t"].mean == pytest.approx(0.32)
    assert all(r.n_runs == 2 for r in bases)
    # Grouping by a control axis keeps one pooled baseline.
    assert [
        r.label for r in aggregate(store, seed_sweep(store, "other"), "final_step") if r.is_baseline
    ] == ["baseline"]


def test_one_concept_states_cells_as_the_unit(store):
    # formerly "n = runs": runs sharing a (prompt, seed) are not independent
    rows = aggregate(store, seed_sweep(store), "final_step")
    assert rows.unit == "cells" and "n = cells" in rows.unit_text
    assert "(prompt, seed) cells" in rows.unit_text
    assert rows[1].n_text == "n = 4 (prompt, seed) cells, each the mean of 1 run"
    assert all(not r.missing for r in rows)
    by_concept = aggregate(store, unbalanced(store), "concept_id")
    assert by_concept.unit == "cells" and "per concept" in by_concept.unit_text
    # Concept B has no clip_i_ref at all: flagged; its clip_t is over its two (prompt, seed) cells.
    b = next(
        r
        for r in by_concept
        if not r.is_baseline and by_concept.concepts[r.value] == "unbalanced-concept1"
    )
    assert b.metrics["clip_t"].n == 2
    assert b.missing["clip_i_ref"] == ["no runs"]


def test_rows_lacking_runs_are_compared_over_common_cells_or_flagged(store):
    """A cancelled run leaves its cell incomplete: by default that cell is dropped from every row
    (and the table says so); with cells="all" the short row is flagged and off the front."""
    exp_id, _ = make_experiment(store, "short")
    add_runs(
        store,
        exp_id,
        [
            dict(final_step=10, seed=0),
            dict(final_step=10, seed=1),
            dict(final_step=20, seed=0),
            dict(final_step=20, seed=1, status="cancelled"),
        ],
        [
            {"clip_t": 0.2, "clip_i_ref": 0.5},
            {"clip_t": 0.4, "clip_i_ref": 0.5},
            {"clip_t": 0.5, "clip_i_ref": 0.4},
            {},
        ],
    )
    rows = aggregate(store, exp_id, "final_step")
    r10, r20 = rows
    # seed 1 is incomplete in row 20: both rows over seed 0 only
    assert r10.metrics["clip_t"].mean == pytest.approx(0.2) and r10.metrics["clip_t"].n == 1
    assert r20.metrics["clip_t"].mean == pytest.approx(0.5)
    assert rows.dropped["clip_t"] == "1 of 2 cells dropped, incomplete in final_step=20 (1)"
    assert not r20.missing and r20.lacks["clip_t"] == "1 of 2 planned runs"
    assert r10.pareto and r20.pareto  # compared on the same cells, neither dominates
    r10, r20 = aggregate(store, exp_id, "final_step", cells="all")
    assert not r10.missing and r20.missing["clip_t"] == ["1 of 2 planned runs"]
    assert r10.metrics["clip_t"].mean == pytest.approx(0.3) and r10.metrics["clip_t"].n == 2
    assert math.isnan(r20.metrics["clip_t"].sem)
    assert r10.pareto and not r20.pareto


# ---------------------------------------------------------------- the cell as the unit
# One concept; final_step 10/20 grouped, start_step 2/4 also swept; prompts 0/1 x seeds 0/1.
# (final, prompt, seed) -> clip_t at start 2, start 4 (None: the run was cancelled)
CELL_T = {
    (10, 0, 0): (0.30, 0.34),  # cell mean 0.32
    (10, 0, 1): (0.26, 0.30),  # 0.28
    (10, 1, 0): (0.20, 0.22),  # 0.21
    (10, 1, 1): (0.25, 0.27),  # 0.26
    (20, 0, 0): (0.28, 0.30),  # 0.29
    (20, 0, 1): (0.24, 0.26),  # 0.25
    (20, 1, 0): (0.18, None),  # 0.18 from one run of two: incomplete
    (20, 1, 1): (0.22, 0.28),  # 0.25
}
CELL_BASE = {(0, 0): 0.35, (0, 1): 0.31, (1, 0): 0.25, (1, 1): 0.30}


def cell_sweep(store, name="cells"):
    exp_id, (concept,) = make_experiment(store, name)
    runs, scores = [], []
    for (prompt, seed), value in CELL_BASE.items():
        runs.append(
            dict(is_baseline=True, final_step=0, start_step=0, prompt_index=prompt, seed=seed)
        )
        scores.append({"clip_t": value, "clip_i_ref": 0.5})
    for (final, prompt, seed), values in CELL_T.items():
        for start, value in zip((2, 4), values):
            runs.append(
                dict(
                    final_step=final,
                    start_step=start,
                    prompt_index=prompt,
                    seed=seed,
                    status="done" if value is not None else "cancelled",
                )
            )
            scores.append({} if value is None else {"clip_t": value, "clip_i_ref": 0.5})
    for r in runs:
        r.update(concept_id=concept, target_prompt=f"prompt {r['prompt_index']}")
    add_runs(store, exp_id, runs, scores)
    return exp_id


def test_cells_are_averaged_first_and_compared_over_common_cells(store):
    rows = aggregate(store, cell_sweep(store), "final_step")
    base, r10, r20 = rows
    assert [r.label for r in rows] == ["baseline", "10", "20"]
    # cell (prompt 1, seed 0) lost a run in row 20: dropped from every row
    assert rows.dropped["clip_t"] == "1 of 4 cells dropped, incomplete in final_step=20 (1)"
    # row 10 over cells 0.32, 0.28, 0.26 (each the mean of start 2 and start 4)
    t = r10.metrics["clip_t"]
    assert (t.n, t.mean, t.std, t.sem) == pytest.approx(
        (3, 0.2866667, 0.0305505, 0.0176383), abs=1e-6
    )
    assert r10.n_text == "n = 3 (prompt, seed) cells, each the mean of 2 runs"
    assert r10.n_runs == 6 and r10.n_cells == 3
    t = r20.metrics["clip_t"]
    assert (t.n, t.mean, t.sem) == pytest.approx((3, 0.2633333, 0.0133333), abs=1e-6)
    assert base.metrics["clip_t"].mean == pytest.approx(0.32)
    assert base.n_text == "n = 3 (prompt, seed) cells, each the mean of 1 run"
    # paired with the baseline over the same cells: differences -0.03, -0.03, -0.04;
    # 95% interval -0.0333 +- t(0.975, 2) = 4.3027 times SEM 0.0033333
    p = r10.paired["clip_t"]
    assert p.against == "baseline" and p.n == 3
    assert (p.mean, p.std, p.sem, p.low, p.high) == pytest.approx(
        (-0.0333333, 0.0057735, 0.0033333, -0.0476755, -0.0189912), abs=1e-6
    )
    p = r20.paired["clip_t"]  # -0.06, -0.06, -0.05
    assert (p.mean, p.low, p.high) == pytest.approx((-0.0566667, -0.0710088, -0.0423245), abs=1e-6)
    assert "clip_t" not in base.paired
    assert rows.reference == "baseline"
    assert any("Student's t" in line for line in rows.describe())
    # compared on the same cells, the short row is complete: eligible for the front
    assert not r20.missing and r20.lacks["clip_t"] == "7 of 8 planned runs"


def test_all_runs_mode_flags_the_short_row(store):
    rows = aggregate(store, cell_sweep(store), "final_step", cells="all")
    _base, r10, r20 = rows
    # row 10 over its four cells 0.32, 0.28, 0.21, 0.26
    t = r10.metrics["clip_t"]
    assert (t.n, t.mean, t.std, t.sem) == pytest.approx((4, 0.2675, 0.0457347, 0.0228674), abs=1e-6)
    # row 20: 0.29, 0.25, 0.18 (one run), 0.25
    assert r20.metrics["clip_t"].mean == pytest.approx(0.2425)
    assert r20.runs_per_cell == (1, 2)
    assert r20.n_text == "n = 4 (prompt, seed) cells, each the mean of 1-2 runs"
    assert r20.missing["clip_t"] == ["7 of 8 planned runs"] and not r20.pareto


def test_sem_over_runs_understates_the_cell_sem(store):
    from store.report.aggregate import sem_over_runs

    exp_id = cell_sweep(store)
    rows = aggregate(store, exp_id, "final_step", cells="all")
    # the former unit: SEM over the 8 runs of row 10 is 0.016119 (std of the eight values / sqrt 8)
    assert sem_over_runs(store, exp_id, "final_step")["final_step=10"] == pytest.approx(
        0.016119, abs=1e-6
    )
    assert rows[1].metrics["clip_t"].sem == pytest.approx(0.0228674, abs=1e-6)


def test_paired_against_a_chosen_value(store):
    rows = aggregate(store, cell_sweep(store), "final_step", versus="20")
    base, r10, r20 = rows
    assert rows.reference == "20" and not r20.paired
    p = r10.paired["clip_t"]  # 0.03, 0.03, 0.01
    assert p.against == "20"
    assert (p.mean, p.sem, p.low, p.high) == pytest.approx(
        (0.0233333, 0.0066667, -0.005351, 0.0520177), abs=1e-6
    )
    assert base.paired["clip_t"].mean == pytest.approx((0.06 + 0.06 + 0.05) / 3)
    with pytest.raises(InputError, match="no value '30'"):
        aggregate(store, cell_sweep(store, "cells2"), "final_step", versus="30")


def test_concept_unit_pairs_concept_means(store):
    rows = aggregate(store, unbalanced(store), "final_step", cells="all")
    r10 = rows[1]
    # A: (0.30-0.40, 0.34-0.36) -> -0.06; B: (0.26-0.30, 0.22-0.28) -> -0.05; t(0.975, 1) = 12.706
    p = r10.paired["clip_t"]
    assert p.n == 2
    assert (p.mean, p.sem, p.low, p.high) == pytest.approx(
        (-0.055, 0.005, -0.118531, 0.008531), abs=1e-6
    )
    assert r10.n_text.startswith("n = 2 concepts, each the mean of its (prompt, seed) cells")


def test_grouping_by_seed_matches_rows_on_prompts(store):
    rows = aggregate(store, cell_sweep(store), "seed")
    bases = [r for r in rows if r.is_baseline]
    assert [r.label for r in bases] == ["baseline seed=0", "baseline seed=1"]
    s0 = next(r for r in rows if not r.is_baseline and r.value == 0)
    # seed 0 cells are prompts: prompt 0 -> mean of 10/20 x start 2/4 = (0.30+0.34+0.28+0.30)/4;
    # prompt 1 is incomplete (a cancelled run) and dropped from every seed's row
    assert s0.metrics["clip_t"].n == 1
    assert s0.metrics["clip_t"].mean == pytest.approx((0.30 + 0.34 + 0.28 + 0.30) / 4)
    assert s0.n_text == "n = 1 (prompt) cells, each the mean of 4 runs"
    assert s0.paired["clip_t"].against == "baseline seed=0"
    assert s0.paired["clip_t"].mean == pytest.approx((0.30 + 0.34 + 0.28 + 0.30) / 4 - 0.35)


def test_t_quantile_matches_tables():
    from store.report.aggregate import t_quantile

    # Student's t table, two-sided 95%
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (11, 2.2010), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)


def planned_sweep(store, name="planned", **spec_fields):
    """A queued experiment from a real spec (so its planned expansion is known)."""
    from store.queries import save_experiment
    from store.sweep.spec import ExperimentSpec

    spec = ExperimentSpec(
        target_prompts=["a photo of a dog", "a dog on grass"],
        seeds="0,1",
        start_step="2",
        final_step="10,20",
        num_steps=30,
        **spec_fields,
    )
    exp = save_experiment(store, name, spec, queue=True)
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id)))
    return exp.id, runs


def finish(store, run, values):
    with store.write() as s:
        r = s.get(Run, run.id)
        r.status = "done"
        s.add(r)
        for metric, value in values.items():
            s.add(Score(run_id=run.id, metric=metric, backbone=B32, value=value))


def test_completeness_is_judged_against_the_planned_grid(store):
    """Two rows each lose a different run (7... here 3 of 4): neither is the fullest row, both are
    short of the plan. A run deleted from the database still counts as planned."""
    exp_id, runs = planned_sweep(store)
    assert len(runs) == 12  # per (prompt, seed): a baseline, final 10, final 20
    values = {}
    for i, run in enumerate(runs):
        values[run.id] = 0.2 + 0.01 * i
    lost_10 = next(r for r in runs if r.final_step == 10 and r.prompt_index == 0 and r.seed == 1)
    lost_20 = next(r for r in runs if r.final_step == 20 and r.prompt_index == 1 and r.seed == 0)
    for run in runs:
        if run.id != lost_10.id and run.id != lost_20.id:
            finish(store, run, {"clip_t": values[run.id], "clip_i_ref": 0.5})
    with store.write() as s:  # the run of row 20 is gone from the record altogether
        s.delete(s.get(Run, lost_20.id))
    rows = aggregate(store, exp_id, "final_step")
    assert rows.plan == "the experiment's planned grid"
    base, r10, r20 = rows
    assert r10.lacks["clip_t"] == r20.lacks["clip_t"] == "3 of 4 planned runs"
    assert rows.dropped["clip_t"] == (
        "2 of 4 cells dropped, incomplete in final_step=10 (1), final_step=20 (1)"
    )
    # both rows over the same two cells: (prompt 0, seed 0) and (prompt 1, seed 1)
    keep = [(0, 0), (1, 1)]
    for row, final in ((r10, 10), (r20, 20)):
        want = [
            values[r.id] for r in runs if r.final_step == final and (r.prompt_index, r.seed) in keep
        ]
        assert row.metrics["clip_t"].n == 2
        assert row.metrics["clip_t"].mean == pytest.approx(sum(want) / 2)
    all_rows = aggregate(store, exp_id, "final_step", cells="all")
    assert all(not r.pareto for r in all_rows if r.lacks)
    assert all_rows[1].missing["clip_t"] == ["3 of 4 planned runs"]


def test_dreamsim_is_a_distance_everywhere(store, tmp_path):
    import csv

    from store.report.aggregate import best_row, lower_is_better
    from store.report.export import export_summary_csv
    from store.report.plots import axis_name, tradeoff_points

    exp_id, _ = make_experiment(store, "ds")
    # final 10: CLIP-T 0.30, DreamSim 0.20 (closer); final 20: CLIP-T 0.30, DreamSim 0.40
    add_runs(
        store,
        exp_id,
        [dict(final_step=10), dict(final_step=20)],
        [
            {"clip_t": 0.30, "clip_i_ref": 0.8, "dreamsim_ref": 0.20},
            {"clip_t": 0.30, "clip_i_ref": 0.8, "dreamsim_ref": 0.40},
        ],
    )
    rows = aggregate(store, exp_id, "final_step")
    assert lower_is_better("dreamsim_ref") and lower_is_better("dreamsim_set")
    assert not lower_is_better("clip_i_ref")
    assert best_row(rows, "dreamsim_ref").value == 10 and best_row(rows, "clip_t") is not None
    # on CLIP-T vs DreamSim only final 10 is on the front: 0.20 is better than 0.40
    info = tradeoff_points(rows, "clip_t", "dreamsim_ref")
    assert [p.label for p in info.sweep if p.pareto] == ["10"]
    mark_pareto(rows, "clip_t", "dreamsim_ref")
    assert [r.value for r in rows if r.pareto] == [10]
    assert "lower = more similar" in axis_name("dreamsim_ref")
    assert "distance" in axis_name("dreamsim_set")
    assert any("DreamSim distance" in line for line in rows.describe())
    out = export_summary_csv(store, exp_id, "final_step", "d.csv", folder=tmp_path)
    with open(out, newline="") as fh:
        line = next(csv.DictReader(fh))
    assert "1-cos" in line["dreamsim_ref_scale"] and "cos)" not in line["dreamsim_ref_scale"]
    assert line["dreamsim_ref_direction"] == "distance: lower = more similar"
    assert line["clip_t_direction"] == "similarity: higher = more similar"


def test_concept_unit_over_common_cells(store):
    """final_step 20 was reached by concept A only: by default every row is compared over A's
    cells (B's dropped everywhere, and said), so the rows stay comparable and unflagged."""
    rows = aggregate(store, unbalanced(store), "final_step")
    base, r10, r20 = rows
    assert rows.dropped["clip_t"] == "2 of 4 cells dropped, incomplete in final_step=20 (2)"
    # clip_t over A only: baseline (0.40 + 0.36) / 2, final 10 (0.30 + 0.34) / 2, final 20
    # (0.20 + 0.24) / 2; one concept each: n = 1, SEM undefined
    assert base.metrics["clip_t"].mean == pytest.approx(0.38)
    assert r10.metrics["clip_t"].mean == pytest.approx(0.32)
    assert r20.metrics["clip_t"].mean == pytest.approx(0.22)
    assert r10.metrics["clip_t"].n == r10.n_concepts == 1
    assert math.isnan(r10.metrics["clip_t"].sem)
    assert not r10.missing.get("clip_t") and not r20.missing.get("clip_t")
    # the paired difference over A: (0.30 - 0.40 + 0.34 - 0.36) / 2
    assert r10.paired["clip_t"].mean == pytest.approx(-0.06) and r10.paired["clip_t"].n == 1


def test_a_dreamsim_only_image_axis_ranks_lower_as_better(store):
    exp_id, _ = make_experiment(store, "ds-only")
    # equal CLIP-T; DreamSim 0.2 (closer) at final 10 beats 0.4 at final 20
    add_runs(
        store,
        exp_id,
        [dict(final_step=10), dict(final_step=20)],
        [{"clip_t": 0.3, "dreamsim_ref": 0.2}, {"clip_t": 0.3, "dreamsim_ref": 0.4}],
    )
    rows = aggregate(store, exp_id, "final_step")
    assert rows.image_metric == "dreamsim_ref"
    assert [r.value for r in rows if r.pareto] == [10]
