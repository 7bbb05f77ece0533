"""A study's leaderboard: every configuration over the suite's independent units.

The unit is the suite's unit (a ConsiStory+ prompt set, a DreamBench subject): a configuration's
value on a unit is the mean over that unit's (prompt, seed) images, and only when every image of
that configuration in that unit is scored (a partial unit would be another unit). Per metric a
row shows the mean over units with a seeded percentile bootstrap interval over units (2000
resamples, seed 0); the paired difference to the reference configuration over the units both
have, its bootstrap interval and a two-sided Wilcoxon signed-rank p, Holm-adjusted across the
configurations compared; a breakdown by the units' group (superclass, class word); the Pareto
front of text alignment against consistency (DreamSim lower is better). Every number follows
from the study's runs CSV (`export_study_runs_csv`); README "Leaderboard" gives the formulas.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from ..db import Store
from ..errors import InputError
from ..models import Experiment, Run, Score, Study, Suite, SuiteUnit
from ..sweep.spec import CONTROL_COLUMNS
from .aggregate import iter_rows, lower_is_better
from .leaderboard_stats import PairedResult, holm, mean_interval, paired_difference, pareto_front

# What defines a configuration: everything a study sweeps besides the unit, prompt and seed.
# Not the mask words: they are each unit's subject noun, the same setting on every unit.
CONFIG_COLUMNS = (
    "method",
    "method_params",
    "is_baseline",
    *(c for c in CONTROL_COLUMNS if c != "mask_words"),
    "inversion_guidance",
)
TEXT_METRIC = "clip_t"
# Per layout: the metrics its papers report, the consistency metric of the Pareto front first.
LAYOUT_METRICS = {
    "consistory": ("clip_t", "clip_i_set", "dreamsim_set", "dino_set"),
    "dreambench": ("clip_t", "clip_i_ref", "dino_ref", "dreamsim_ref"),
    "mtp": ("clip_t", "clip_i_set", "clip_i_ref", "dino_ref", "dreamsim_set", "dreamsim_ref"),
}
UNIT_WORD = {"consistory": "set", "dreambench": "subject", "mtp": "unit"}
SEED, RESAMPLES, LEVEL = 0, 2000, 0.95
INTERVAL_TEXT = "95% percentile bootstrap over units (2000 resamples, seed 0)"
TEST_TEXT = "two-sided Wilcoxon signed-rank over units, Holm-adjusted across configurations"


@dataclass
class MetricStat:
    mean: float
    low: float
    high: float
    n: int


@dataclass
class BoardRow:
    key: tuple
    label: str
    method: str
    is_baseline: bool
    runs: int  # runs of this configuration in the study, any status
    stats: dict[str, MetricStat] = field(default_factory=dict)
    paired: dict[str, PairedResult] = field(default_factory=dict)
    p_holm: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, tuple[float, int]]] = field(default_factory=dict)
    pareto: bool = False
    is_reference: bool = False

    def value(self, metric: str) -> float:
        st = self.stats.get(metric)
        return st.mean if st else float("nan")


@dataclass
class Leaderboard:
    study: str
    suite: str
    layout: str
    unit_word: str
    units: list[str]
    unit_groups: list[str]
    metrics: list[str]
    backbones: dict[str, str]
    rows: list[BoardRow]
    reference: str
    consistency_metric: str | None
    interval_text: str = INTERVAL_TEXT
    test_text: str = TEST_TEXT

    @property
    def groups(self) -> list[str]:
        return sorted(set(self.unit_groups))

    def row(self, label: str) -> BoardRow:
        return find_row(self.rows, label)


def find_row(rows: list[BoardRow], ref: str) -> BoardRow:
    """A configuration by label (any case) or by its number in the table (`#2`, 1-based)."""
    text = (ref or "").strip()
    if text.lstrip("#").isdigit():
        i = int(text.lstrip("#")) - 1
        if 0 <= i < len(rows):
            return rows[i]
    for r in rows:
        if r.label.lower() == text.lower():
            return r
    known = "; ".join(f"#{i + 1} {r.label}" for i, r in enumerate(rows))
    raise InputError(f"no configuration {text!r} in this study (configurations: {known})")


# ---------------------------------------------------------------------------- labels
def _params(raw: str) -> dict[str, str]:
    try:
        params = json.loads(raw) if raw else {}
    except ValueError:
        return {"params": raw}
    return {f"param:{k}": f"{k}={v}" for k, v in sorted(params.items())}


def _parts(key: tuple) -> dict[str, str]:
    c = dict(zip(CONFIG_COLUMNS, key))
    if c["is_baseline"]:
        return {}
    mask = ""
    if c["mask_mode"] and c["mask_mode"] != "off":
        thr = "otsu" if c["mask_threshold"] is None else f"{c['mask_threshold']:g}"
        mask = f"mask {c['mask_mode']} {c['mask_layers']} thr={thr} {c['mask_timing']}"
    return {
        **_params(c["method_params"]),
        "layers": c["layers"],
        "steps": f"steps {c['start_step']}-{c['final_step']}",
        "skip": f"skip {c['skip_interval']}",
        "mask": mask,
        "inversion": "" if c["inversion_guidance"] is None else f"inv {c['inversion_guidance']:g}",
    }


def config_labels(keys: list[tuple]) -> list[str]:
    """Short unique labels: the method (`baseline` for its no-control rows), then only the parts
    that differ between that method's configurations."""
    parts = [_parts(k) for k in keys]
    methods = [str(k[0]) for k in keys]
    out = []
    for i, key in enumerate(keys):
        if key[2]:
            out.append(f"{methods[i]} baseline")
            continue
        same = [parts[j] for j in range(len(keys)) if methods[j] == methods[i] and not keys[j][2]]
        names = sorted({n for p in same for n in p})
        varying = [n for n in names if len({p.get(n, "") for p in same}) > 1]
        order = [n for n in parts[i] if n in varying]
        out.append(" ".join([methods[i]] + [parts[i][n] for n in order if parts[i][n]]))
    # configurations still alike (they differ only in what labels leave out): number them
    seen: Counter = Counter(out)
    count: Counter = Counter()
    for i, text in enumerate(out):
        if seen[text] > 1:
            count[text] += 1
            out[i] = f"{text} ({count[text]})"
    return out


# ---------------------------------------------------------------------------- gathering
def config_key(values) -> tuple:
    """A configuration's key from its CONFIG_COLUMNS values as read (SQLite gives 0/1 for
    is_baseline)."""
    key = tuple(values)
    i = CONFIG_COLUMNS.index("is_baseline")
    return key[:i] + (bool(key[i]),) + key[i + 1 :]


def pick_backbone(counts: dict[str, int], prefer: str | None = None) -> str:
    """One backbone per metric (scores of different backbones are not comparable): the one
    asked for when present, else the most used (then by name)."""
    return prefer if prefer in counts else max(counts, key=lambda b: (counts[b], b))


def _study_suite(store: Store, study_id: int) -> tuple[Study, Suite, list[SuiteUnit]]:
    with store.session() as s:
        study = s.get(Study, study_id)
        if study is None:
            raise InputError(f"study {study_id} does not exist")
        suite = s.get(Suite, study.suite_id)
        assert suite is not None
        units = list(
            s.execute(
                select(SuiteUnit).where(SuiteUnit.suite_id == suite.id).order_by(SuiteUnit.position)
            ).scalars()
        )
    return study, suite, units


def _run_query(study_id: int):
    cols = [Run.id, Experiment.unit_id] + [getattr(Run, c) for c in CONFIG_COLUMNS]
    return (
        select(*cols)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Experiment.study_id == study_id)
        .order_by(Run.id)  # configurations in grid order, on every database
    )


def _score_query(lo: int, hi: int, metrics: tuple[str, ...]):
    # By run id range (ix_score_run), no join: runs in the range but outside the study are
    # dropped by the id -> configuration arrays.
    return select(Score.run_id, Score.metric, Score.backbone, Score.value).where(
        Score.run_id >= lo, Score.run_id <= hi, Score.metric.in_(metrics)
    )


def build_leaderboard(
    store: Store,
    study_id: int,
    *,
    reference: str | None = None,
    metrics: tuple[str, ...] | None = None,
    backbone: str | None = None,
) -> Leaderboard:
    """The table of a study, computed from its runs and scores (see the module docstring)."""
    study, suite, units = _study_suite(store, study_id)
    wanted = metrics or LAYOUT_METRICS.get(suite.layout, LAYOUT_METRICS["mtp"])
    unit_index = {u.id: i for i, u in enumerate(units)}
    config_index: dict[tuple, int] = {}
    run_ids: list[int] = []
    run_cfg: list[int] = []
    run_unit: list[int] = []
    for chunk in iter_rows(store, _run_query(study_id)):
        for row in chunk:
            ui = unit_index.get(row[1])
            if ui is None:
                continue
            run_ids.append(row[0])
            run_cfg.append(config_index.setdefault(config_key(row[2:]), len(config_index)))
            run_unit.append(ui)
    keys = list(config_index)
    n_c, n_u = len(keys), len(units)
    # run id -> configuration and unit, as arrays indexed by id (ids are dense per study)
    ids_arr = np.asarray(run_ids, dtype=np.int64)
    lo = int(ids_arr.min()) if ids_arr.size else 0
    span = int(ids_arr.max()) - lo + 1 if ids_arr.size else 0
    cfg_of = np.full(span, -1, dtype=np.int64)
    unit_of = np.full(span, -1, dtype=np.int64)
    cfg_of[ids_arr - lo] = run_cfg
    unit_of[ids_arr - lo] = run_unit
    # planned images per (configuration, unit): a unit counts only when all of them are scored
    want = np.zeros((n_c, n_u))
    np.add.at(want, (np.asarray(run_cfg, dtype=np.int64), np.asarray(run_unit, dtype=np.int64)), 1)
    by_metric: dict[str, dict[str, list[tuple[int, float]]]] = {}
    if span:
        for chunk in iter_rows(store, _score_query(lo, lo + span - 1, tuple(wanted))):
            for run_id, metric, bb, value in chunk:
                by_metric.setdefault(metric, {}).setdefault(bb, []).append((run_id, value))
    backbones: dict[str, str] = {}
    sums: dict[str, np.ndarray] = {}
    for metric in wanted:
        per_bb = by_metric.get(metric)
        if not per_bb:
            continue
        # the id range may hold other experiments' runs: only the study's count and are used
        arrays = {}
        for b, pairs in per_bb.items():
            raw_ids, raw_vals = zip(*pairs)
            arrays[b] = (
                np.asarray(raw_ids, dtype=np.int64) - lo,
                np.asarray(raw_vals, dtype=np.float64),
            )
        counts = {b: int((cfg_of[ids] >= 0).sum()) for b, (ids, _) in arrays.items()}
        counts = {b: n for b, n in counts.items() if n}
        if not counts:
            continue
        bb = pick_backbone(counts, backbone)
        backbones[metric] = bb
        ids, vals = arrays[bb]
        ci, ui = cfg_of[ids], unit_of[ids]
        ok = (ci >= 0) & (ui >= 0) & np.isfinite(vals)
        total = np.zeros((n_c, n_u))
        count = np.zeros((n_c, n_u))
        np.add.at(total, (ci[ok], ui[ok]), vals[ok])
        np.add.at(count, (ci[ok], ui[ok]), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / count
        mean[(count == 0) | (count < want)] = np.nan
        sums[metric] = mean
    present = [m for m in wanted if m in sums]
    labels = config_labels(keys)
    runs_per_config = Counter(run_cfg)
    rows = [
        BoardRow(
            key=k,
            label=labels[i],
            method=str(k[0]),
            is_baseline=bool(k[2]),
            runs=runs_per_config.get(i, 0),
        )
        for i, k in enumerate(keys)
    ]
    groups = [u.group_name or "-" for u in units]
    in_group = {g: np.array([x == g for x in groups], dtype=bool) for g in sorted(set(groups))}
    for i, row in enumerate(rows):
        for m in present:
            v = sums[m][i]
            have = v[np.isfinite(v)]
            mean, low, high = mean_interval(have, seed=SEED, resamples=RESAMPLES, level=LEVEL)
            row.stats[m] = MetricStat(mean, low, high, int(have.size))
            for g, members in in_group.items():
                sel = members & np.isfinite(v)
                row.groups.setdefault(g, {})[m] = (
                    float(v[sel].mean()) if sel.any() else float("nan"),
                    int(sel.sum()),
                )
    ref_row = _pick_reference(rows, reference if reference is not None else study.reference)
    if ref_row is not None:
        ref_row.is_reference = True
        r = rows.index(ref_row)
        for m in present:
            pvals = []
            compared = []
            for i, row in enumerate(rows):
                if i == r:
                    continue
                a, b = sums[m][i], sums[m][r]
                both = np.isfinite(a) & np.isfinite(b)
                if both.sum() == 0:
                    continue
                res = paired_difference(
                    a[both], b[both], seed=SEED, resamples=RESAMPLES, level=LEVEL
                )
                row.paired[m] = res
                compared.append(row)
                pvals.append(res.p)
            for row, adj in zip(compared, holm(np.array(pvals, dtype=float))):
                row.p_holm[m] = float(adj)
    consistency = next((m for m in present if m != TEXT_METRIC), None)
    if TEXT_METRIC in present and consistency is not None:
        x = np.array([row.value(TEXT_METRIC) for row in rows])
        y = np.array([row.value(consistency) for row in rows])
        front = pareto_front(x, y, y_higher_better=not lower_is_better(consistency))
        for row, on in zip(rows, front):
            row.pareto = bool(on)
    return Leaderboard(
        study=study.name,
        suite=suite.name,
        layout=suite.layout,
        unit_word=UNIT_WORD.get(suite.layout, "unit"),
        units=[u.name for u in units],
        unit_groups=groups,
        metrics=present,
        backbones=backbones,
        rows=rows,
        reference=ref_row.label if ref_row else "",
        consistency_metric=consistency,
    )


def _pick_reference(rows: list[BoardRow], ref: str | None) -> BoardRow | None:
    """The given configuration, else MasaCtrl's baseline (plain generation), else the first
    baseline, else the first row."""
    if not rows:
        return None
    if ref:
        return find_row(rows, ref)
    for r in rows:
        if r.is_baseline and r.method == "masactrl":
            return r
    return next((r for r in rows if r.is_baseline), rows[0])


def sort_rows(board: Leaderboard, metric: str | None, descending: bool | None = None) -> None:
    """Order rows by a metric's mean (best first by the metric's direction), unscored last."""
    if metric is None:
        return
    desc = (not lower_is_better(metric)) if descending is None else descending

    def key(row: BoardRow) -> tuple[int, float]:
        v = row.value(metric)
        if not np.isfinite(v):
            return (1, 0.0)
        return (0, -v if desc else v)

    board.rows.sort(key=key)


def run_table(store: Store, study_id: int) -> list[dict[str, Any]]:
    """One dict per run of the study with its unit, configuration and scores (the runs CSV);
    per metric the backbone `build_leaderboard` picks."""
    _study, _suite, units = _study_suite(store, study_id)
    by_id = {u.id: u for u in units}
    keys: dict[tuple, int] = {}
    runs: list[tuple] = []
    q = (
        select(
            Run.id,
            Experiment.unit_id,
            Run.prompt_index,
            Run.seed,
            Run.status,
            *[getattr(Run, c) for c in CONFIG_COLUMNS],
        )
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Experiment.study_id == study_id)
        .order_by(Run.id)
    )
    for chunk in iter_rows(store, q):
        for row in chunk:
            keys.setdefault(config_key(row[5:]), len(keys))
            runs.append(row)
    labels = config_labels(list(keys))
    read: dict[tuple[str, str], dict[int, float]] = {}
    q2 = (
        select(Score.run_id, Score.metric, Score.backbone, Score.value)
        .join(Run, Run.id == Score.run_id)
        .join(Experiment, Experiment.id == Run.experiment_id)
        .where(Experiment.study_id == study_id)
    )
    for chunk in iter_rows(store, q2):
        for run_id, metric, bb, value in chunk:
            read.setdefault((metric, bb), {})[run_id] = value
    scores: dict[int, dict[str, float]] = {}
    for metric in sorted({m for m, _ in read}):
        counts = {bb: len(v) for (m, bb), v in read.items() if m == metric}
        for run_id, value in read[(metric, pick_backbone(counts))].items():
            scores.setdefault(run_id, {})[metric] = value
    out = []
    for row in runs:
        unit = by_id.get(row[1])
        out.append(
            {
                "run_id": row[0],
                "unit": unit.name if unit else "",
                "group": unit.group_name if unit else "",
                "configuration": labels[keys[config_key(row[5:])]],
                "prompt_index": row[2],
                "seed": row[3],
                "status": row[4],
                **{c: v for c, v in zip(CONFIG_COLUMNS, row[5:])},
                **scores.get(row[0], {}),
            }
        )
    return out
