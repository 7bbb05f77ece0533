"""Suites in the database, studies over them, and the leaderboard recomputed by hand from the
study's runs CSV (small, unbalanced examples; scipy's Wilcoxon as the independent check)."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import numpy as np
import pytest
from sqlmodel import select

from store.errors import InputError
from store.models import Concept, Experiment, Run, Score, SuiteUnit
from store.report.leaderboard import build_leaderboard
from store.report.leaderboard_export import (
    board_latex,
    bold_rows,
    export_board_csv,
    export_study_runs_csv,
)
from store.studies.create import create_study, study_experiments
from store.studies.progress import study_progress
from store.studies.suites import import_suite, suite_units
from store.suites import DEMO_SUITES
from store.sweep.spec import ExperimentSpec

DB_BACKENDS = ("sqlite", "postgresql")

SUITE = """\
animals:
  - style: A watercolor of
    subject: a fox
    settings: [in the snow, reading a book, on a boat]
  - style: A photo of
    subject: a dog
    settings: [at the beach, in a park]
things:
  - style: A sketch of
    subject: a red car
    settings: [on a bridge, in the rain, at night]
"""


def template(**axes) -> ExperimentSpec:
    spec = ExperimentSpec(
        model="tiny", num_steps=10, width=64, height=64, seeds="0,1", start_step="2"
    )
    for k, v in axes.items():
        setattr(spec, k, v)
    return spec


@pytest.fixture
def suite(store, tmp_path):
    path = tmp_path / "cplus.yaml"
    path.write_text(SUITE)
    return import_suite(store, path, name="cplus")


def test_import_stores_units_in_order_with_the_authors_prompts(store, suite):
    units = suite_units(store, suite.id)
    assert [(u.name, u.group_name) for u in units] == [
        ("animals-1", "animals"),
        ("animals-2", "animals"),
        ("things-1", "things"),
    ]
    assert units[0].prompts == [
        "A watercolor of a fox in the snow",
        "A watercolor of a fox reading a book",
        "A watercolor of a fox on a boat",
    ]
    assert units[2].subject_prompt == "A sketch of a red car"
    with pytest.raises(InputError, match="exists already"):
        import_suite(store, suite.source, name="CPLUS")


def test_a_malformed_suite_writes_nothing(store, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("animals:\n  - style: x\n    subject: a fox\n    settings: [only one]\n")
    with pytest.raises(InputError, match=r"bad.yaml:\d+:"):
        import_suite(store, bad)
    with store.session() as s:
        assert s.exec(select(SuiteUnit)).first() is None


def test_dreambench_subjects_become_concepts_with_copied_references(store):
    suite = import_suite(store, DEMO_SUITES["dreambench-demo"], base_model="tiny")
    units = suite_units(store, suite.id)
    assert {u.name for u in units} == {"backpack", "cat", "dog"}
    with store.session() as s:
        concepts = {c.id: c for c in s.exec(select(Concept))}
    for u in units:
        c = concepts[u.concept_id]
        assert (c.token, c.class_word) == ("sks", u.group_name)
        assert len(c.ref_images) == 2
        for rel in c.ref_images:  # copies inside the data folder, not the package's files
            assert (store.home.root / rel).is_file()
    live = {u.name for u in units if u.live}
    assert live == {"cat", "dog"}


def test_a_study_is_one_experiment_per_unit_with_the_same_grid_and_seeds(store, suite):
    study, total = create_study(
        store, "s1", "cplus", template(final_step="6,end", method="masactrl"), queue=True
    )
    exps = study_experiments(store, study.id)
    assert [e.name for e in exps] == ["s1/animals-1", "s1/animals-2", "s1/things-1"]
    with store.session() as s:
        runs = list(s.exec(select(Run).join(Experiment).where(Experiment.study_id == study.id)))
    assert len(runs) == total == sum(e.run_count for e in exps)
    # per unit: every configuration has exactly the unit's (prompt, seed) cells
    cells = defaultdict(set)
    for r in runs:
        config = (r.is_baseline, r.layers, r.start_step, r.final_step)
        cells[(r.experiment_id, config)].add((r.prompt_index, r.seed))
    by_exp = defaultdict(list)
    for (exp_id, _), c in cells.items():
        by_exp[exp_id].append(c)
    for sets in by_exp.values():
        assert len(sets) == 3  # baseline, final 6, final end
        assert all(c == sets[0] for c in sets)
    # MasaCtrl's source is the unit's subject prompt
    assert {r.source_prompt for r in runs if r.experiment_id == exps[2].id} == {
        "A sketch of a red car"
    }
    with pytest.raises(InputError, match="exists already"):
        create_study(store, "S1", "cplus", template(), queue=True)


def test_a_grid_one_unit_cannot_take_writes_nothing(store, suite):
    with pytest.raises(InputError, match="unit 'animals-1'"):
        create_study(store, "bad", "cplus", template(final_step="20"), queue=True)
    with store.session() as s:
        assert s.exec(select(Experiment)).first() is None


def test_consistory_gets_the_subject_noun_as_mask_word_and_otsu(store, suite):
    study, _ = create_study(store, "cs", "cplus", template(method="consistory"), queue=True)
    with store.session() as s:
        runs = list(
            s.exec(
                select(Run)
                .join(Experiment)
                .where(Experiment.study_id == study.id, Run.is_baseline == False)  # noqa: E712
            )
        )
    words = {r.experiment_id: r.mask_words for r in runs}
    assert sorted(set(words.values())) == ["car", "dog", "fox"]
    assert {r.mask_threshold for r in runs} == {None}


def _score(store, study_id, value_of):
    """Mark every run done and score it with value_of(run) per metric (None: not scored)."""
    with store.write() as s:
        runs = list(s.exec(select(Run).join(Experiment).where(Experiment.study_id == study_id)))
        for r in runs:
            r.status = "done"
            s.add(r)
            for metric in ("clip_t", "clip_i_set"):
                v = value_of(r, metric)
                if v is not None:
                    s.add(Score(run_id=r.id, metric=metric, backbone="bb", value=v))


def _read_runs_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_the_leaderboard_equals_a_hand_computation_from_the_runs_csv(store, suite, tmp_path):
    from scipy.stats import wilcoxon

    study, _ = create_study(
        store, "hand", "cplus", template(final_step="6,8,end", seeds="0,1,2"), queue=True
    )
    rng = np.random.default_rng(7)
    noise = {}

    def value_of(run, metric):
        key = (run.id, metric)
        noise.setdefault(key, float(rng.normal(0, 0.05)))
        shift = {6: 0.0, 8: 0.02, 10: 0.05}[run.final_step] if not run.is_baseline else -0.03
        # one cell of one configuration unscored: that unit is incomplete for that configuration
        if run.final_step == 8 and run.prompt_index == 1 and run.seed == 2 and not run.is_baseline:
            if run.experiment_id == min(e.id for e in study_experiments(store, study.id)):
                return None
        return 0.3 + shift + noise[key] + (0.01 * run.prompt_index if metric == "clip_t" else 0)

    _score(store, study.id, value_of)
    board = build_leaderboard(store, study.id)
    out = export_study_runs_csv(store, study.id, "runs.csv", folder=tmp_path)
    rows = _read_runs_csv(out)
    assert len(rows) == sum(e.run_count for e in study_experiments(store, study.id))

    # By hand: a unit's value is the mean over its cells, only when every cell is scored.
    unit_values: dict = defaultdict(dict)
    cells = defaultdict(list)
    for r in rows:
        cells[(r["configuration"], r["unit"])].append(r["clip_t"])
    for (config, unit), values in cells.items():
        if all(v != "" for v in values):
            unit_values[config][unit] = sum(float(v) for v in values) / len(values)
    units = ["animals-1", "animals-2", "things-1"]
    assert board.reference == "masactrl baseline"
    assert [r.label for r in board.rows] == [
        "masactrl baseline",
        "masactrl steps 2-6",
        "masactrl steps 2-8",
        "masactrl steps 2-10",
    ]
    ref = unit_values["masactrl baseline"]
    for row in board.rows:
        have = [unit_values[row.label][u] for u in units if u in unit_values[row.label]]
        st = row.stats["clip_t"]
        assert st.n == len(have)
        assert st.mean == pytest.approx(np.mean(have), abs=1e-12)
        # seeded percentile bootstrap over units, as README states it
        x = np.array(have)
        idx = np.random.default_rng(0).integers(0, len(x), size=(2000, len(x)))
        low, high = np.quantile(x[idx].mean(axis=1), [0.025, 0.975])
        assert (st.low, st.high) == (pytest.approx(low), pytest.approx(high))
        if row.is_reference:
            continue
        both = [u for u in units if u in unit_values[row.label] and u in ref]
        d = np.array([unit_values[row.label][u] - ref[u] for u in both])
        pr = row.paired["clip_t"]
        assert pr.n == len(both) and pr.mean_diff == pytest.approx(d.mean())
        expected_p = wilcoxon(d, zero_method="wilcox", correction=False).pvalue
        assert pr.p == pytest.approx(expected_p)
    # the incomplete unit is left out of "steps 2-8" only
    assert board.row("masactrl steps 2-8").stats["clip_t"].n == 2
    assert board.row("masactrl steps 2-10").stats["clip_t"].n == 3
    # Holm across the three comparisons, by hand
    ps = [board.rows[i].paired["clip_t"].p for i in (1, 2, 3)]
    order = np.argsort(ps)
    adj, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * ps[i]))
        adj[i] = running
    assert [board.rows[i].p_holm["clip_t"] for i in (1, 2, 3)] == pytest.approx(adj)
    # per-superclass breakdown: the mean of that group's unit values
    things = board.row("masactrl steps 2-10").groups["things"]["clip_t"]
    assert things == (pytest.approx(unit_values["masactrl steps 2-10"]["things-1"]), 1)


def test_leaderboard_csv_and_latex(store, suite, tmp_path):
    study, _ = create_study(store, "tex", "cplus", template(final_step="6,end"), queue=True)

    def value_of(run, metric):
        # far apart: the last configuration is best on clip_t by a wide margin
        base = {True: 0.1, False: 0.2 if run.final_step == 6 else 0.9}[bool(run.is_baseline)]
        return base + 0.001 * run.seed + 0.002 * run.prompt_index

    _score(store, study.id, value_of)
    board = build_leaderboard(store, study.id, reference="#2")
    assert board.reference == "masactrl steps 2-6"
    best = [r.label for r in board.rows].index("masactrl steps 2-10")
    assert bold_rows(board, "clip_t") == {best}
    tex = board_latex(board)
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\textbf{" in tex.splitlines()[7 + best]
    out = export_board_csv(store, board, "lb.csv", folder=tmp_path)
    rows = _read_runs_csv(out)
    assert [r["configuration"] for r in rows] == [r.label for r in board.rows]
    assert float(rows[best]["clip_t_mean"]) == pytest.approx(board.rows[best].stats["clip_t"].mean)


def test_bold_only_when_the_interval_separates(store, suite):
    study, _ = create_study(store, "near", "cplus", template(final_step="6,end"), queue=True)
    rng = np.random.default_rng(1)
    _score(store, study.id, lambda run, m: 0.3 + float(rng.normal(0, 0.05)))
    board = build_leaderboard(store, study.id)
    assert bold_rows(board, "clip_t") == set()
    assert r"\textbf" not in board_latex(board)


def test_latex_escapes_labels(store, suite):
    from store.report.leaderboard_export import latex_escape

    assert latex_escape("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"
    assert "\x1b" not in latex_escape("evil\x1b[2J")


def test_progress_counts_and_eta(store, suite):
    study, total = create_study(store, "p", "cplus", template(), queue=True)
    p = study_progress(store, study.id)
    assert (p.total, p.done, p.remaining) == (total, 0, total)
    assert p.eta_s is None and "unknown" in p.eta_text()
    with store.write() as s:
        runs = list(s.exec(select(Run).join(Experiment).where(Experiment.study_id == study.id)))
        from store.db import db_now

        now = db_now(s)
        from datetime import timedelta

        for k, r in enumerate(runs[:4]):
            r.status = "done"
            r.finished_at = now - timedelta(seconds=60 - 10 * k)  # 4 done over the last minute
            s.add(r)
    p = study_progress(store, study.id)
    assert p.done == 4 and p.remaining == total - 4
    # the window's rate: 4 runs since the first of them finished, ~60 s ago
    assert p.eta_s == pytest.approx((total - 4) * 60 / 4, rel=0.1)
    assert not math.isnan(p.eta_s)


def test_unknown_names_list_the_known_ones(store, suite):
    from store.studies.create import study_by_ref
    from store.studies.suites import suite_by_ref

    with pytest.raises(InputError, match=r"suite 'nope' does not exist \(suites: cplus\)"):
        suite_by_ref(store, "nope")
    with pytest.raises(InputError, match=r"\(studies: none yet: mtp study create\)"):
        study_by_ref(store, "#7")
    create_study(store, "s7", "cplus", template(), queue=False)
    assert study_by_ref(store, "S7").name == "s7" and suite_by_ref(store, "#1").name == "cplus"
