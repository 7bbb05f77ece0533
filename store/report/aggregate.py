"""Scores of an experiment aggregated per value of one swept parameter (torch-free).

One statistical unit per table, stated with the table (``Aggregate.unit_text``) and in the
summary CSV:
- several concepts: each concept's runs (prompts x seeds) are averaged first, and n, mean, std
  (sample, ddof=1) and SEM = std / sqrt(n) are taken over those concept means, so a concept
  with more prompts does not outweigh the others;
- one concept, or grouping by concept: the statistics are over runs (prompts x seeds), and the
  table says so.
A value reached by only some concepts, or a metric missing for some, keeps the same unit over
the concepts present and is flagged (``AggregateRow.missing``); with n = 1 std and SEM are
undefined (NaN, shown as "–"), never a fake 0.
Baseline runs (control off) form a separate row, one per value when grouping by a base setting
(seed, prompt, concept...): a baseline pooled over seeds is not the reference of one seed.
Scales are defined per metric (``METRICS``): Custom Diffusion's 2.5*max(cos, 0) is a text
alignment (CLIPScore) convention and never touches CLIP-I, DINO or DreamSim.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, literal, or_, select

from store.db import Store
from store.models import RUN_PARAM_COLUMNS, Concept, Run, Score

TEXT_METRIC = "clip_t"
IMAGE_METRICS = ("clip_i_ref", "clip_i_src")  # the first one present is the image-alignment axis
SCALES = ("raw", "100", "clipscore")
METRIC_ORDER = (
    "clip_t",
    "clip_i_ref",
    "clip_i_src",
    "dino_ref",
    "dino_src",
    "dreamsim_ref",
    "dreamsim_src",
    "dreamsim",
    "clip_i_set",
    "dino_set",
    "dreamsim_set",
)
GROUPABLE = tuple(c for c in RUN_PARAM_COLUMNS if c != "is_baseline") + (
    "prompt_index",
    "concept_id",
)
# Settings shared by a run and its baseline: grouping by one of these splits the baseline too.
BASE_AXES = (
    # a set method's baselines carry that method, so grouping by method splits baselines too
    "method",
    "target_prompt",
    "prompt_index",
    "seed",
    "concept_id",
    "source_prompt",
    "num_steps",
    "guidance",
    "width",
    "height",
    "model",
    "inversion_guidance",
)
UNDEFINED = "\u2013"  # how an undefined std/SEM is shown


@dataclass(frozen=True)
class ScaleDef:
    formula: str
    source: str


SCALE_DEFS = {
    "raw": ScaleDef("cos", "DreamBench / raw cosine"),
    "100": ScaleDef("100*cos", "torchmetrics-style percent"),
    "clipscore": ScaleDef(
        "2.5*max(cos,0)", "CLIPScore as in Custom Diffusion (text alignment only)"
    ),
}


@dataclass(frozen=True)
class MetricDef:
    """What a metric compares and which scales its definition admits (others leave it raw)."""

    compares: str
    scales: tuple[str, ...] = ("raw",)


_COSINE = ("raw", "100")
METRICS: dict[str, MetricDef] = {
    "clip_t": MetricDef(
        "target image vs target prompt (token replaced by class word)", ("raw", "100", "clipscore")
    ),
    "clip_i_ref": MetricDef("target image vs concept reference images", _COSINE),
    "clip_i_src": MetricDef("target image vs source image", _COSINE),
    "dino_ref": MetricDef("target image vs concept reference images", _COSINE),
    "dino_src": MetricDef("target image vs source image", _COSINE),
    "clip_i_set": MetricDef("image vs the other images of its set (mean over pairs)", _COSINE),
    "dino_set": MetricDef("image vs the other images of its set (mean over pairs)", _COSINE),
}


def metric_def(metric: str) -> MetricDef:
    """The definition of ``metric``; metrics without an entry (e.g. ``dreamsim``, a distance)
    are never scaled, and what they compare is read from their ``_ref``/``_src`` suffix."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.endswith("_ref"):
        return MetricDef("target image vs concept reference images")
    if metric.endswith("_src"):
        return MetricDef("target image vs source image")
    if metric.endswith("_set"):
        return MetricDef("image vs the other images of its set (mean over pairs)")
    return MetricDef("see the metric's definition")


def applied_scale(metric: str, scale: str) -> str:
    """The scale actually applied to ``metric`` when ``scale`` is asked for."""
    check_scale(scale)
    return scale if scale in metric_def(metric).scales else "raw"


def check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale: {scale!r} is not one of {', '.join(SCALES)}")


@dataclass(frozen=True)
class Stat:
    n: int
    mean: float
    std: float  # sample standard deviation; NaN when n == 1 (undefined)
    sem: float  # NaN when n == 1

    @property
    def sem_text(self) -> str:
        return fmt_number(self.sem)


def fmt_number(value: float | None, digits: int = 4) -> str:
    if value is None or math.isnan(value):
        return UNDEFINED
    return f"{value:.{digits}f}"


@dataclass
class AggregateRow:
    by: str
    value: Any  # the parameter value; None for a pooled baseline row
    is_baseline: bool
    n_runs: int
    n_concepts: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)  # metric -> backbone used
    pareto: bool = False
    # metric -> what is missing in this row: concept names (concept unit) or "k of K runs"
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.is_baseline:
            return "baseline" if self.value is None else f"baseline {self.by}={_fmt(self.value)}"
        return _fmt(self.value)

    @property
    def incomplete(self) -> str:
        """What this row lacks, e.g. "clip_i_ref: concept B | all metrics: ..."; empty when complete."""
        by_gap: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for metric, gap in self.missing.items():
            by_gap[tuple(gap)].append(metric)
        parts = []
        for gap, metrics in by_gap.items():
            which = (
                "all metrics"
                if set(metrics) >= set(self.metrics) | set(self.missing)
                else ", ".join(metrics)
            )
            parts.append(f"{which}: {', '.join(gap)}")
        return " | ".join(parts)

    def mean(self, metric: str | None) -> float | None:
        st = self.metrics.get(metric) if metric else None
        return st.mean if st else None


class Aggregate(list):
    """The rows of one table plus what a reader needs to interpret them."""

    def __init__(
        self,
        rows: Iterable[AggregateRow] = (),
        by: str = "",
        unit: str = "runs",
        unit_text: str = "",
        scale: str = "raw",
        concepts: dict[Any, str] | None = None,
    ):
        super().__init__(rows)
        self.by, self.unit, self.unit_text, self.scale = by, unit, unit_text, scale
        self.concepts = concepts or {}

    @property
    def metrics(self) -> list[str]:
        out: list[str] = []
        for r in self:
            out += [m for m in list(r.metrics) + list(r.missing) if m not in out]
        return sorted(out, key=_metric_key)

    def scale_of(self, metric: str) -> str:
        return applied_scale(metric, self.scale)

    @property
    def image_metric(self) -> str | None:
        return image_metric(self)

    def describe(self) -> list[str]:
        """Lines stating unit, scale and references, for screens and file headers."""
        lines = [f"unit: {self.unit_text}"]
        scaled = [m for m in self.metrics if self.scale_of(m) != "raw"]
        if self.scale != "raw":
            lines.append(
                f"scale {self.scale} ({SCALE_DEFS[self.scale].formula}) on "
                f"{', '.join(scaled) or 'no metric'}; other metrics unscaled"
            )
        else:
            lines.append("scale: raw cosine")
        img = self.image_metric
        if img:
            lines.append(f"image alignment = {img}: {metric_def(img).compares}")
        return lines


def _metric_key(m: str):
    return (METRIC_ORDER.index(m) if m in METRIC_ORDER else 99, m)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "-" if value is None else str(value)


def scale_value(value: float, scale: str, metric: str | None = None) -> float:
    """raw cosine (DreamBench), 100*cos (torchmetrics), 2.5*max(cos, 0) (Custom Diffusion / CLIPScore).
    With ``metric``, a scale the metric's definition does not admit leaves the value raw."""
    check_scale(scale)
    if metric is not None:
        scale = applied_scale(metric, scale)
    if scale == "raw":
        return value
    if scale == "100":
        return 100.0 * value
    return 2.5 * max(value, 0.0)


def stat(values: Sequence[float]) -> Stat:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Stat(n, mean, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(n, mean, std, std / math.sqrt(n))


def stat_from_sums(n: int, total: float, squares: float) -> Stat:
    """Stat from n, sum and sum of squares. Cancellation costs ~1e-8 absolute on the std of
    cosines, far below any difference worth reporting."""
    mean = total / n
    if n < 2:
        return Stat(n, mean, math.nan, math.nan)
    std = math.sqrt(max(0.0, (squares - total * mean) / (n - 1)))
    return Stat(n, mean, std, std / math.sqrt(n))


def scaled_sql(expr, scale: str, metric=None):
    """``scale_value`` as a SQL expression, so scaling happens before any averaging. ``metric``:
    a metric name, or a SQL column holding it, so only metrics that admit the scale are scaled."""
    check_scale(scale)
    if scale == "raw":
        return expr
    scaled = expr * 100.0 if scale == "100" else case((expr > 0, expr * 2.5), else_=literal(0.0))
    if metric is None:
        return scaled
    if isinstance(metric, str):
        return scaled if applied_scale(metric, scale) == scale else expr
    admitted = [m for m, d in METRICS.items() if scale in d.scales]
    # OR of equalities, not IN: an expanding IN cannot run through the raw cursor of iter_rows.
    return case((or_(*(metric == m for m in admitted)), scaled), else_=expr)


def check_by(by: str) -> None:
    from store.queries import InputError

    if by not in GROUPABLE:
        raise InputError(f"--by: cannot group by {by!r}; choose one of {', '.join(GROUPABLE)}")


def image_metric(rows: Iterable[AggregateRow]) -> str | None:
    present = {m for r in rows for m in r.metrics}
    return next((m for m in IMAGE_METRICS if m in present), None)


def mark_pareto(
    rows: list[AggregateRow],
    x_metric: str = TEXT_METRIC,
    y_metric: str | None = None,
    exclude_incomplete: bool = False,
) -> None:
    """Flag the non-baseline rows no other row beats on both text and image alignment."""
    y_metric = y_metric or image_metric(rows)
    points = [
        (r, r.mean(x_metric), r.mean(y_metric))
        for r in rows
        if not r.is_baseline
        and not (exclude_incomplete and (x_metric in r.missing or y_metric in r.missing))
    ]
    points = [(r, x, y) for r, x, y in points if x is not None and y is not None]
    for r in rows:
        r.pareto = False
    for r, x, y in points:
        r.pareto = not any(
            ox >= x and oy >= y and (ox > x or oy > y) for o, ox, oy in points if o is not r
        )


def iter_rows(store: Store, q, size: int = 10_000) -> Iterator[list]:
    """Result tuples of a Core query in chunks. On SQLite the compiled statement runs on the DBAPI
    cursor: SQLAlchemy's per-value result processing was half the time of a 100k-run export."""
    if not store.is_sqlite:
        with store.engine.connect() as conn:
            for chunk in conn.execution_options(stream_results=True).execute(q).partitions(size):
                yield [tuple(row) for row in chunk]
        return
    compiled = q.compile(dialect=store.engine.dialect)
    params = [compiled.params[name] for name in compiled.positiontup]
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(str(compiled), params)
        while chunk := cur.fetchmany(size):
            yield chunk
        cur.close()
    finally:
        raw.close()


def _pick_backbones(store: Store, experiment_id: int, prefer: str | None) -> dict[str, str]:
    """Per metric, the preferred backbone when it scored that metric, else the most used one."""
    q = (
        select(Score.metric, Score.backbone, func.count())
        .join(Run, Run.id == Score.run_id)
        .where(Run.experiment_id == experiment_id)
        .group_by(Score.metric, Score.backbone)
    )
    counts: dict[str, Counter] = defaultdict(Counter)
    with store.session() as s:
        for metric, backbone, n in s.execute(q):
            counts[metric][backbone] = n
    return _choose_backbones(counts, prefer)


def _choose_backbones(counts: Mapping[str, Counter], prefer: str | None) -> dict[str, str]:
    out = {}
    for metric, c in counts.items():
        if prefer and prefer in c:
            out[metric] = prefer
        else:
            out[metric] = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    return out


def _concept_names(store: Store, ids: Iterable[Any]) -> dict[Any, str]:
    ids = set(ids)
    with store.session() as s:
        names = {
            cid: name
            for cid, name in s.execute(
                select(Concept.id, Concept.name).where(
                    Concept.id.in_([i for i in ids if i is not None])
                )
            )
        }
    return {i: names.get(i, "(no concept)" if i is None else f"concept {i}") for i in ids}


def unit_for(by: str, n_concepts: int) -> tuple[str, str]:
    """(unit, sentence) for a table grouped by ``by`` over ``n_concepts`` scored concepts."""
    if by == "concept_id":
        return "runs", "per concept: mean over its runs (prompts x seeds); SEM over runs; n = runs"
    if n_concepts > 1:
        return "concepts", (
            "mean over concepts of per-concept means (each over prompts x seeds); "
            "SEM over concepts; n = concepts"
        )
    return "runs", "one concept: mean over runs (prompts x seeds); SEM over runs; n = runs"


def aggregate(
    store: Store, experiment_id: int, by: str, scale: str = "raw", backbone: str | None = None
) -> Aggregate:
    """Baseline row(s) first (if any), then one row per value of ``by`` in sweep order."""
    check_by(by)
    check_scale(scale)  # validates the name before any work
    param = getattr(Run, by)
    v = scaled_sql(Score.value, scale, metric=Score.metric)
    # Sums per (value, concept, metric, backbone) in SQL: one pass, 30 rows back instead of 500k
    # (Python-side loops took 4x longer on a 100k-run sweep). Grouping by backbone too lets the
    # backbone counts come from the same pass instead of a second join over every score.
    q = (
        select(
            Run.is_baseline,
            param,
            Run.concept_id,
            Score.metric,
            Score.backbone,
            func.count(),
            func.sum(v),
            func.sum(v * v),
            func.min(Run.grid_index),
        )
        .join(Score, Score.run_id == Run.id)
        .where(Run.experiment_id == experiment_id)
        .group_by(Run.is_baseline, param, Run.concept_id, Score.metric, Score.backbone)
    )
    groups = [row for chunk in iter_rows(store, q) for row in chunk]
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in groups:
        counts[row[3]][row[4]] += row[5]
    backbones = _choose_backbones(counts, backbone)
    if not backbones:
        return Aggregate(by=by, unit_text=unit_for(by, 0)[1], scale=scale)
    split_baseline = by in BASE_AXES
    # key -> concept -> metric -> [n, sum, sum of squares]
    sums: dict[Any, dict[Any, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[Any, int] = {}
    for is_base, value, concept, metric, used, n, s1, s2, grid_index in groups:
        if used != backbones[metric]:
            continue
        key = ("__baseline__", value if split_baseline else None) if is_base else ("value", value)
        acc = sums[key][concept].setdefault(metric, [0, 0.0, 0.0])
        acc[0] += n
        acc[1] += s1
        acc[2] += s2
        order[key] = min(order.get(key, grid_index), grid_index)

    concepts = _concept_names(store, {c for per in sums.values() for c in per})
    unit, unit_text = unit_for(by, len(concepts))
    all_metrics = sorted(
        {m for per in sums.values() for c in per.values() for m in c}, key=_metric_key
    )
    rows = Aggregate(by=by, unit=unit, unit_text=unit_text, scale=scale, concepts=concepts)
    for key in sorted(sums, key=lambda k: (k[0] != "__baseline__", order[k])):
        per_concept = sums[key]
        metrics: dict[str, Stat] = {}
        missing: dict[str, list[str]] = {}
        for metric in all_metrics:
            accs = {c: per[metric] for c, per in per_concept.items() if metric in per}
            if unit == "concepts":
                absent = [concepts[c] for c in concepts if c not in accs]
                if absent:
                    missing[metric] = sorted(absent)
                if accs:
                    metrics[metric] = stat([s1 / n for n, s1, _ in accs.values()])
            elif accs:
                n, s1, s2 = (sum(a[i] for a in accs.values()) for i in range(3))
                metrics[metric] = stat_from_sums(int(n), s1, s2)
        is_base = key[0] == "__baseline__"
        n_runs = max(sum(c[m][0] for c in per_concept.values() if m in c) for m in metrics)
        rows.append(
            AggregateRow(
                by=by,
                value=key[1],
                is_baseline=is_base,
                n_runs=n_runs,
                n_concepts=len(per_concept),
                metrics=metrics,
                backbones={m: backbones[m] for m in metrics},
                missing=missing,
            )
        )
    if unit == "runs":
        _flag_short_rows(rows, all_metrics)
    # A row averaged over fewer concepts is not comparable on the same footing: flagged, not ranked.
    mark_pareto(rows, exclude_incomplete=unit == "concepts")
    return rows


def _flag_short_rows(rows: list[AggregateRow], metrics: list[str]) -> None:
    """With runs as the unit, a row whose metric has fewer runs than the fullest row of its kind
    (sweep values, or baselines) is flagged: failed, unscored or not yet run. Rows that are
    concepts (grouping by concept) may differ in size by design: only an absent metric is flagged."""
    for is_base in (False, True):
        kind = [r for r in rows if r.is_baseline == is_base]
        for metric in metrics:
            full = max((r.metrics[metric].n for r in kind if metric in r.metrics), default=0)
            for r in kind:
                have = r.metrics[metric].n if metric in r.metrics else 0
                if have == 0 or (have < full and r.by != "concept_id"):
                    r.missing[metric] = [
                        f"{have} of {full} runs" if r.by != "concept_id" else "no runs"
                    ]
